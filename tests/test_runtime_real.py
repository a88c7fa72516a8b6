"""The forward runtime on the real-valued layers real exporters write (issue 11): Brevitas CNV's
8-bit input Quant and first float conv, float first layers and heads (tamec.Linear, multi-channel
Conv). Each model runs with a native kernel for every op (no `evaluator:` step) and equals
onnxruntime or the QONNX executor (binary tensors bit for bit, floats within 1e-5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import tamec
from tamec.evaluator import Evaluator
from tamec.ops.conv import window
from tamec.runtime import kernels as K
from tests.helpers import model as make_model
from tests.helpers import ort_run
from tests.test_runtime_forward import BINARY, qonnx_outputs

DATA = Path(__file__).resolve().parent / "data"
CNV = DATA / "cnv_w1a1_8.onnx"
QONNX = "qonnx.custom_op.general"


def _no_fallback(sess: tamec.Session) -> None:
    text = str(sess.plan)
    assert "evaluator:" not in text, text


def _binary_equal(sess: tamec.Session, feeds: dict) -> int:
    """Every binary tensor the plan materializes equals the evaluator's; returns how many."""
    got = sess.plan.run(feeds, keep_all=True)
    ref = Evaluator(sess.graph).run(feeds, keep_all=True)
    n = 0
    for name, v in got.items():
        val = sess.graph.values[name]
        if val.const is None and val.domain.kind in BINARY:
            assert np.array_equal(v, ref[name]), name
            n += 1
    for o in sess.graph.outputs:
        np.testing.assert_allclose(got[o], ref[o], rtol=1e-5, atol=1e-5)
    return n


def test_cnv_runs_natively_and_equals_qonnx(tmp_path):
    """Brevitas CNV (QONNX export, width 8, symbolic batch): the 8-bit input Quant, the first float
    conv and the first FC after the Shape-computed flatten run natively, and the outputs equal
    the QONNX executor's at batch 1 and 3 (every binary tensor the evaluator's)."""
    sess = tamec.Session(str(CNV))
    _no_fallback(sess)
    kinds = sess.plan.kernels()
    first_conv = next(op for op in sess.graph.ops() if op.op_type == "Conv")
    assert kinds[first_conv.id].startswith("conv(BLAS)"), kinds[first_conv.id]
    rng = np.random.default_rng(0)
    xs = [rng.random((n, 3, 32, 32), dtype=np.float32) for n in (1, 3, 1)]
    xs.append(np.full((1, 3, 32, 32), 0.5, np.float32))  # 2x-1 = 0: the quantizer's zero
    inp = sess.graph.inputs[0]
    for x in xs[:2]:
        assert _binary_equal(sess, {inp: x}) >= 8
    got = np.concatenate([sess.run(None, {inp: x})[0] for x in xs])
    fixed = onnx.load(str(CNV))  # the QONNX executor reads a symbolic batch as 0: give it batch 1
    for vi in (fixed.graph.input[0], fixed.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, str(tmp_path / "cnv_b1.onnx"))
    singles = [x[i:i + 1] for x in xs for i in range(len(x))]
    np.testing.assert_allclose(got, qonnx_outputs(tmp_path / "cnv_b1.onnx", singles), rtol=1e-5, atol=1e-5)


def _quant_model(scale, zp, bits, signed, narrow, mode, c=5):
    q = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], domain=QONNX, signed=signed, narrow=narrow,
                         rounding_mode=mode)
    m = make_model([q], [("x", [1, c, 4])], [("y", [1, c, 4])],
                   {"s": np.asarray(scale, np.float32), "z": np.asarray(zp, np.float32),
                    "b": np.asarray(bits, np.float32)}, extra_opsets=[(QONNX, 1)])
    return m


@pytest.mark.parametrize("mode", ["ROUND", "FLOOR", "CEIL"])
@pytest.mark.parametrize("signed,narrow", [(1, 0), (1, 1), (0, 0)])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per-channel"])
def test_quant_runs_in_the_pointwise_chain_and_equals_qonnx(mode, signed, narrow, per_channel, tmp_path):
    """QONNX Quant (2..8 bits, every signed/narrow variant, three rounding modes, scalar or
    per-channel scale and zero point) runs in the pointwise kernel and equals the QONNX executor
    bit for bit, on half-way points, clamped values and NaN-free noise."""
    c = 5
    scale = np.array([0.25, 0.5, 0.125, 1.0, 0.0625], np.float32).reshape(1, c, 1) if per_channel else np.float32(0.25)
    zp = np.array([0, 1, -1, 2, 0], np.float32).reshape(1, c, 1) if per_channel else np.float32(1.0)
    m = _quant_model(scale, zp, 4 if per_channel else 8, signed, narrow, mode)
    path = tmp_path / "quant.onnx"
    onnx.save(m, str(path))
    sess = tamec.Session(str(path))
    _no_fallback(sess)
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-40, 40, (1, c, 4)).astype(np.float32),
          (rng.integers(-20, 20, (1, c, 4)) / 8 + 1 / 16).astype(np.float32),  # exact half-way points
          np.linspace(-3, 3, 4 * c, dtype=np.float32).reshape(1, c, 4)]
    got = np.concatenate([sess.run(None, {"x": x})[0] for x in xs])
    np.testing.assert_array_equal(got, qonnx_outputs(path, xs))


def _grid(rng, shape, step=0.125, lim=2.0):
    """Floats on a coarse dyadic grid: every sum of a few thousand products is exact in float32,
    so BLAS and onnxruntime agree whatever their summation order, and thresholds compare the same."""
    return (rng.integers(-int(lim / step), int(lim / step) + 1, shape) * step).astype(np.float32)


def _larq_mlp(k=100, h=70, classes=10, seed=0):
    """A Larq MLP as tf2onnx writes it: real input -> MatMul(real W) -> Add -> Mul/Add (BN) ->
    Sign(Add(Sign, 0.1)) -> MatMul(+-1) -> Add -> Mul/Add -> Sign(Add(Sign)) -> MatMul(real head)."""
    rng = np.random.default_rng(seed)
    inits = {"w1": _grid(rng, (k, h)), "b1": _grid(rng, h), "m1": rng.uniform(0.5, 1.5, h).astype(np.float32) *
             rng.choice([-1, 1], h).astype(np.float32), "a1": _grid(rng, h), "c": np.float32(0.1),
             "w2": rng.choice([-1.0, 1.0], (h, h)).astype(np.float32), "b2": _grid(rng, h),
             "m2": rng.uniform(0.5, 1.5, h).astype(np.float32), "a2": _grid(rng, h),
             "w3": _grid(rng, (h, classes)), "b3": _grid(rng, classes)}
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["t1"]), n("Add", ["t1", "b1"], ["t2"]), n("Mul", ["t2", "m1"], ["t3"]),
             n("Add", ["t3", "a1"], ["t4"]), n("Sign", ["t4"], ["t5"]), n("Add", ["t5", "c"], ["t6"]),
             n("Sign", ["t6"], ["t7"]), n("MatMul", ["t7", "w2"], ["t8"]), n("Add", ["t8", "b2"], ["t9"]),
             n("Mul", ["t9", "m2"], ["t10"]), n("Add", ["t10", "a2"], ["t11"]), n("Sign", ["t11"], ["t12"]),
             n("Add", ["t12", "c"], ["t13"]), n("Sign", ["t13"], ["t14"]), n("MatMul", ["t14", "w3"], ["t15"]),
             n("Add", ["t15", "b3"], ["y"])]
    return make_model(nodes, [("x", ["N", k])], [("y", ["N", classes])], inits)


def test_real_first_layer_and_head_of_an_mlp_run_natively():
    """A Larq-style MLP's real first layer (float MatMul + bias + BN + sign, written as packed bits)
    and its real head (binary input, float weights) run as BLAS GEMM steps, never in the
    evaluator, and equal onnxruntime bit for bit at batch 1 and 67."""
    m = _larq_mlp()
    sess = tamec.Session(m)
    _no_fallback(sess)
    kinds = sorted(set(sess.plan.kernels().values()))
    assert "sgemm(BLAS)+pointwise+threshold->bits" in kinds, kinds
    rng = np.random.default_rng(2)
    for n in (1, 67):
        x = _grid(rng, (n, 100))
        assert _binary_equal(sess, {"x": x}) >= 2
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])


@pytest.mark.parametrize("attrs", [dict(pads=[0, 0, 0, 0]), dict(pads=[1, 2, 1, 0], strides=[2, 1]),
                                   dict(auto_pad="SAME_UPPER"), dict(pads=[2, 1, 2, 1], dilations=[2, 2])],
                         ids=["valid", "pads-strides", "same", "dilated"])
@pytest.mark.parametrize("packed", [False, True], ids=["float-out", "bits-out"])
@pytest.mark.parametrize("cout", [7, 70])
def test_real_multichannel_conv_runs_natively(attrs, packed, cout):
    """A real Conv over 3 input channels with a bias, then BN -> Sign (read by a +-1 Conv as packed
    bits, or a graph output) or nothing, runs as float im2col + BLAS with the chain fused, and
    equals onnxruntime bit for bit at batch 1 and 5."""
    rng = np.random.default_rng(4)
    c, hw = 3, (9, 8)
    inits = {"w": _grid(rng, (cout, c, 3, 3)), "bias": _grid(rng, cout),
             "g": rng.uniform(0.5, 1.5, cout).astype(np.float32) * rng.choice([-1, 1], cout).astype(np.float32),
             "be": _grid(rng, cout), "mu": _grid(rng, cout), "v": np.full(cout, 0.25 - 1e-5, np.float32)}
    conv = helper.make_node("Conv", ["x", "w", "bias"], ["c"], kernel_shape=[3, 3], **attrs)
    nodes = [conv, helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "v"], ["z"]),
             helper.make_node("Sign", ["z"], ["s" if packed else "y"])]
    if packed:
        inits["w2"] = rng.choice([-1.0, 1.0], (4, cout, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Conv", ["s", "w2"], ["y"], kernel_shape=[1, 1]))
    m = make_model(nodes, [("x", ["N", c, *hw])], [("y", None)], inits)
    m = onnx.shape_inference.infer_shapes(m)
    sess = tamec.Session(m)
    _no_fallback(sess)
    assert sess.plan.kernels()[sess.graph.ops()[0].id].startswith("conv(BLAS)"), str(sess.plan)
    for n in (1, 5):
        x = _grid(rng, (n, c, *hw))
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])
    # the bare conv (no chain after it) is a graph output in NCHW
    bare = make_model([conv], [("x", ["N", c, *hw])], [("c", None)], {k: inits[k] for k in ("w", "bias")})
    sess = tamec.Session(onnx.shape_inference.infer_shapes(bare))
    _no_fallback(sess)
    x = _grid(rng, (2, c, *hw))
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(bare, {"x": x})[0])


def _larq_cnn(c1=32, c2=64, hw=28, classes=10, seed=0, sandwich=False):
    """A Larq CNN in the form tf2onnx writes it: NHWC input -> Transpose -> QuantConv(real input,
    latent weights behind ste_sign) -> BN as Mul/Add -> ste_sign -> QuantConv 'same' -> MaxPool ->
    BN -> Transpose to NHWC -> Reshape -> ste_sign -> QuantDense -> bias -> BN. With `sandwich`,
    as tf2onnx 1.17 wrote the peers' model: the input Transpose a Reshape, the first sign between
    Transpose(NCHW -> NHWC) and Transpose(NHWC -> NCHW), the pooled BN a BatchNormalization."""
    rng = np.random.default_rng(seed)
    f = np.float32

    def bn(c, shape):
        g = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c, p=[0.25, 0.75])
        mul = (g / np.sqrt(rng.uniform(2, 20, c) + 1e-3)).astype(f).reshape(shape)
        return mul, rng.normal(0, 0.5, c).astype(f).reshape(shape)

    h2 = (hw - 2) // 2
    i = {"w1": rng.normal(0, 1, (c1, 1, 3, 3)).astype(f), "b1": rng.normal(0, 0.1, c1).astype(f),
         "w2": rng.normal(0, 1, (c2, c1, 3, 3)).astype(f), "w3": rng.normal(0, 1, (h2 * h2 * c2, classes)).astype(f),
         "b3": rng.normal(0, 0.1, classes).astype(f), "c": np.array(0.1, f),
         "shape": np.array([-1, h2 * h2 * c2], np.int64)}
    i["m1"], i["a1"] = bn(c1, (c1, 1, 1))
    i["m2"], i["a2"] = bn(c2, (c2, 1, 1))
    i["m3"], i["a3"] = bn(classes, (classes,))
    n = helper.make_node

    def ste(x, y):
        return [n("Sign", [x], [y + "_s0"]), n("Add", [y + "_s0", "c"], [y + "_s1"]), n("Sign", [y + "_s1"], [y])]

    if sandwich:
        i["nchw"] = np.array([-1, 1, hw, hw], np.int64)
        i["g2"], i["be2"] = i["m2"].reshape(-1), i["a2"].reshape(-1)
        i["mu2"], i["v2"] = rng.normal(0, 3, c2).astype(f), rng.uniform(2, 20, c2).astype(f)
        head = [n("Reshape", ["input_1", "nchw"], ["t0"])]
        act1 = [n("Transpose", ["bn1"], ["bn1t"], perm=[0, 2, 3, 1])] + ste("bn1t", "q1t") + [
            n("Transpose", ["q1t"], ["q1"], perm=[0, 3, 1, 2])]
        bn2 = [n("BatchNormalization", ["p2", "g2", "be2", "mu2", "v2"], ["bn2"], epsilon=1e-3)]
    else:
        head = [n("Transpose", ["input_1"], ["t0"], perm=[0, 3, 1, 2])]
        act1 = ste("bn1", "q1")
        bn2 = [n("Mul", ["p2", "m2"], ["bn2m"]), n("Add", ["bn2m", "a2"], ["bn2"])]
    nodes = head + ste("w1", "w1q") + [
        n("Conv", ["t0", "w1q", "b1"], ["c1"], kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
        n("Mul", ["c1", "m1"], ["bn1m"]), n("Add", ["bn1m", "a1"], ["bn1"])] + act1 + ste("w2", "w2q") + [
        n("Conv", ["q1", "w2q"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("MaxPool", ["c2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2])] + bn2 + [
        n("Transpose", ["bn2"], ["t2"], perm=[0, 2, 3, 1]), n("Reshape", ["t2", "shape"], ["flat"])] + \
        ste("flat", "q2") + ste("w3", "w3q") + [
        n("MatMul", ["q2", "w3q"], ["d3"]), n("Add", ["d3", "b3"], ["d3b"]),
        n("Mul", ["d3b", "m3"], ["bn3m"]), n("Add", ["bn3m", "a3"], ["y"])]
    return make_model(nodes, [("input_1", ["unk__1", hw, hw, 1])], [("y", ["unk__2", classes])], i)


@pytest.mark.parametrize("sandwich", [False, True], ids=["transposed-input", "tf2onnx-1.17"])
def test_larq_cnn_runs_natively_with_pool_and_flatten_on_bits(sandwich):
    """The tf2onnx Larq CNN runs with no evaluator step: the NHWC input Transpose is a view, a sign
    between two Transposes is a threshold on NCHW bits, the binary conv -> MaxPool -> BN -> NHWC
    flatten -> sign is one kernel writing bits in the NHWC order the dense layer reads, and it
    equals onnxruntime at batch 1 and 9."""
    m = _larq_cnn(c1=8, c2=16, hw=12, sandwich=sandwich)
    sess = tamec.Session(m)
    _no_fallback(sess)
    kinds = set(sess.plan.kernels().values())
    assert "bconv+maxpool+threshold->bits" in kinds, str(sess.plan)
    assert ("conv1+pointwise+threshold->bits" if sandwich else "transpose(view)") in kinds, str(sess.plan)
    rng = np.random.default_rng(3)
    for n in (1, 9):
        x = rng.random((n, 12, 12, 1), dtype=np.float32)
        assert _binary_equal(sess, {"input_1": x}) >= 2
        np.testing.assert_allclose(sess.run(None, {"input_1": x})[0], ort_run(m, {"input_1": x})[0],
                                   rtol=1e-5, atol=1e-5)


def _pool_after_conv(pool, mul, add, tail, cout=70, c=5, hw=7):
    """Sign(x) -> Conv(+-1, pad 1) -> MaxPool -> Mul -> Add -> [Transpose -> Flatten] -> Sign ->
    a +-1 reader (Conv 1x1, or MatMul after the flatten)."""
    rng = np.random.default_rng(8)
    inits = {"w": rng.choice([-1.0, 1.0], (cout, c, 3, 3)).astype(np.float32), "mul": mul, "add": add}
    n = helper.make_node
    nodes = [n("Sign", ["x"], ["s"]), n("Conv", ["s", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("MaxPool", ["c"], ["p"], **pool), n("Mul", ["p", "mul"], ["pm"]), n("Add", ["pm", "add"], ["pa"])]
    win = window(pool, (hw, hw), pool["kernel_shape"])
    oh, ow = win.out
    if tail:
        inits["w2"] = rng.choice([-1.0, 1.0], (cout * oh * ow, 3)).astype(np.float32)
        nodes += [n("Transpose", ["pa"], ["t"], perm=[0, 2, 3, 1]), n("Flatten", ["t"], ["f"]),
                  n("Sign", ["f"], ["q"]), n("MatMul", ["q", "w2"], ["y"])]
    else:
        inits["w2"] = rng.choice([-1.0, 1.0], (3, cout, 1, 1)).astype(np.float32)
        nodes += [n("Sign", ["pa"], ["q"]), n("Conv", ["q", "w2"], ["y"], kernel_shape=[1, 1])]
    m = make_model(nodes, [("x", ["N", c, hw, hw])], [("y", None)], inits)
    return onnx.shape_inference.infer_shapes(m)


@pytest.mark.parametrize("tail", [False, True], ids=["nchw", "nhwc-flatten"])
@pytest.mark.parametrize("pool", [dict(kernel_shape=[2, 2], strides=[2, 2]),
                                  dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                  dict(kernel_shape=[2, 2], strides=[1, 1], ceil_mode=1)],
                         ids=["2x2", "3x3-pad", "overlap-ceil"])
def test_maxpool_between_binary_conv_and_threshold_is_exact_on_bits(pool, tail):
    """Binary conv -> MaxPool -> BN (gammas of both signs, zero gammas, biases that make every
    threshold land on an integer dot so Sign's tie 0 is reached) -> Sign runs as one kernel on
    bits and equals onnxruntime bit for bit (and the evaluator on every binary tensor)."""
    cout = 70
    rng = np.random.default_rng(9)
    mul = rng.choice([-1.5, -0.5, 0.0, 0.5, 2.0], cout).astype(np.float32).reshape(cout, 1, 1)
    add = (-mul.reshape(-1) * rng.integers(-6, 7, cout)).astype(np.float32).reshape(cout, 1, 1)
    m = _pool_after_conv(pool, mul, add, tail, cout)
    sess = tamec.Session(m)
    _no_fallback(sess)
    assert "bconv+maxpool+threshold->bits" in set(sess.plan.kernels().values()), str(sess.plan)
    for n in (1, 6):
        x = rng.choice([-1.0, 0.5, 1.0], (n, 5, 7, 7)).astype(np.float32)
        assert _binary_equal(sess, {"x": x}) >= 2
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])


def test_float_maxpool_and_transpose_run_natively():
    """A real conv -> MaxPool (float32, padded) -> Transpose (a copy) is native and equals
    onnxruntime; a NaN in the pooled window gives NaN, as numpy's maximum does."""
    rng = np.random.default_rng(6)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             n("Transpose", ["p"], ["y"], perm=[0, 2, 3, 1])]
    m = onnx.shape_inference.infer_shapes(
        make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", None)], {"w": _grid(rng, (6, 3, 3, 3))}))
    sess = tamec.Session(m)
    _no_fallback(sess)
    kinds = set(sess.plan.kernels().values())
    assert {"maxpool(float32)", "transpose(copy)"} <= kinds, kinds
    x = _grid(rng, (2, 3, 8, 8))
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])
    c = np.zeros((1, 1, 4, 4), np.float32)
    c[0, 0, 1, 1] = np.nan
    o = np.empty((1, 1, 2, 2), np.float32)
    K.maxpool_f32(c, np.array([4, 4, 2, 2, 2, 2, 1, 1, 0, 0, 2, 2], np.int64), o)
    assert np.isnan(o[0, 0, 0, 0]) and np.all(o.ravel()[1:] == 0)

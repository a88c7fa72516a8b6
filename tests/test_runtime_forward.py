"""The numba forward runtime (tamec.runtime: bits, kernels, plan) against the references: onnxruntime
on real outputs (within 1e-5), the reference evaluator bit for bit on every binary tensor the plan
materializes, numpy integer matmul for the xnor-popcount GEMM, and the input checks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import tamec
from tamec.errors import InputError, UsageError
from tamec.evaluator import Evaluator
from tests.conftest import MODELS, all_models, is_qonnx
from tests.helpers import model as make_model

BINARY = ("bipolar", "ternary", "bin01")


def probe_inputs(shape, n, rng) -> np.ndarray:
    """n inputs of `shape` (batch dim first): exact {0,1}, {0, 1/2, 1} (2x-1 hits the input
    quantizer's tie), constant images, +-1 images and uniform noise in [0,1) and [-1,1)."""
    shape = [d if isinstance(d, int) else 1 for d in shape]
    shape[0] = 1
    xs = []
    for k in range(n):
        kind = k % 6
        if kind == 0:
            x = rng.integers(0, 2, shape)
        elif kind == 1:
            x = rng.choice([0.0, 0.5, 1.0], shape)
        elif kind == 2:
            x = np.full(shape, [0.0, 0.5, 1.0][k % 3])
        elif kind == 3:
            x = rng.choice([-1.0, 1.0], shape)
        elif kind == 4:
            x = rng.random(shape)
        else:
            x = rng.uniform(-1, 1, shape)
        xs.append(x.astype(np.float32))
    return np.concatenate(xs)


def batches_of(sess: tamec.Session, x: np.ndarray) -> list[np.ndarray]:
    """Batch 1, 3 and > 64 where the batch dim is free; single samples where it is fixed to 1."""
    if sess.get_inputs()[0].shape[0] == 1:
        return [x[i:i + 1] for i in range(len(x))]
    return [x[:1], x[1:4], x[4:134], x[134:]]


def ort_outputs(path: Path, x: np.ndarray, batches) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: b})[0] for b in batches])


def qonnx_outputs(path: Path, batches) -> np.ndarray:
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m = onnx.load(str(path))
    for n in m.graph.node:  # the legacy Brevitas domain is the same op set under an older name
        if n.domain == "onnx.brevitas":
            n.domain = "qonnx.custom_op.general"
    w = ModelWrapper(m).transform(InferShapes())
    inp, out = m.graph.input[0].name, m.graph.output[0].name
    return np.concatenate([execute_onnx(w, {inp: b})[out] for b in batches])


@pytest.mark.parametrize("path", all_models())
def test_plan_equals_references(path):
    """On 300 inputs (batch 1, 3, 130 and the rest), the plan's outputs equal onnxruntime (or the
    QONNX executor) within 1e-5, and every binary tensor it materializes equals the evaluator's."""
    sess = tamec.Session(str(path))
    g = sess.graph
    inp = g.inputs[0]
    x = probe_inputs(g.values[inp].shape, 300, np.random.default_rng(11))
    batches = batches_of(sess, x)
    if len(batches) > 150:  # fixed batch 1: every sample is one run; 150 keep it quick
        batches = batches[:150]
        x = x[:150]
    ev = Evaluator(g)
    compared = set()
    outs = []
    for b in batches:
        got = sess.plan.run({inp: b}, keep_all=True)
        ref = ev.run({inp: b}, keep_all=True)
        for name, v in got.items():
            val = g.values[name]
            if val.const is None and val.domain.kind in BINARY:
                assert np.array_equal(v, ref[name]), f"binary tensor {name} differs in {int((v != ref[name]).sum())} places"
                compared.add(name)
        for o in g.outputs:
            np.testing.assert_allclose(got[o], ref[o], rtol=1e-5, atol=1e-5)
        (y,) = sess.run(None, {inp: b})
        np.testing.assert_array_equal(y, got[g.outputs[0]])
        outs.append(y)
    assert compared, "the plan materialized no binary tensor"
    y = np.concatenate(outs)
    if is_qonnx(path):
        ref = qonnx_outputs(path, batches[:40])
        y = y[:len(ref)]
    else:
        ref = ort_outputs(path, x, batches)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", all_models())
def test_plan_uses_packed_kernels(path):
    """Every binary Linear/Conv with +-1 weights runs as a bgemm/bconv on bits, and the printed
    plan names a kernel for every op of the graph."""
    sess = tamec.Session(str(path))
    kernels = sess.plan.kernels()
    ops = sess.graph.ops()
    assert set(kernels) == {op.id for op in ops}
    text = str(sess.plan)
    for op in ops:
        assert op.id in text or any(op.id in p[1] for s in sess.plan.steps for p in s.parts)
    for op in ops:
        if op.qualname in ("tamec.Linear", "Conv"):
            x, w = sess.graph.values[op.inputs[0]], sess.graph.values[op.inputs[1]]
            if x.domain.kind in ("bipolar", "ternary") and w.const is not None and w.domain.kind == "bipolar":
                assert kernels[op.id].startswith(("bgemm", "bconv")), (op.id, kernels[op.id])


def test_ties_keep_the_tie_value():
    """sign_ties.onnx: inputs reach thresholds exactly at tau; the plan writes the tie value
    there (0 for ONNX Sign), bit for bit as the evaluator."""
    sess = tamec.Session(str(MODELS / "sign_ties.onnx"))
    g = sess.graph
    x = probe_inputs(g.values["x"].shape, 200, np.random.default_rng(5))
    got = sess.plan.run({"x": x}, keep_all=True)
    ref = Evaluator(g).run({"x": x}, keep_all=True)
    ties = 0
    for op in g.ops():
        if op.qualname != "tamec.Threshold" or op.outputs[0] not in got:
            continue
        tau = np.asarray(op.attrs["tau"], np.float64)
        s = ref[op.inputs[0]].astype(np.float64)
        hit = s == (tau.reshape(1, -1) if tau.ndim else tau)
        ties += int(hit.sum())
        y = got[op.outputs[0]]
        assert np.array_equal(y, ref[op.outputs[0]])
        assert np.all(y[hit] == op.attrs["tie"])
    assert ties > 0, "the probe inputs hit no tie"


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
def _pack_rows(x: np.ndarray):
    from tamec.runtime.bits import pack

    n, k = x.shape
    cw = -(-k // 64)
    s = np.empty((n, 1, cw), np.uint64)
    m = np.empty((n, 1, cw), np.uint64)
    bad, zeros = pack(np.ascontiguousarray(x, np.float32).reshape(n, k, 1), s, m)
    assert bad == 0 and zeros == int((x == 0).sum())
    return s.reshape(n, cw), m.reshape(n, cw)


def _run_bgemm(x, w, mode=None, thr=None, bias=None, bias_int=True):
    """bgemm on packed x (N, K) and +-1 w (J, K); float outputs or packed threshold bits."""
    from tamec.runtime import kernels as K
    from tamec.runtime.bits import aligned, pack_weights, words
    from tamec.runtime.plan import _round

    n, k = x.shape
    j = w.shape[0]
    s, m = _pack_rows(x)
    kw = s.shape[1]
    wb = np.pad(w, [(0, 0), (0, kw * 64 - k)])
    wt = pack_weights(wb, K.COLS)
    wa = aligned(wt.size, np.uint64)
    wa[:] = wt
    jc = _round(j, K.COLS)
    js = _round(jc, 64)
    acc = aligned(4 * js, np.int64)
    tern = bool((x == 0).any())
    b = np.zeros(j) if bias is None else bias.astype(np.float64)
    bmode = K.BIAS_NONE if bias is None else (K.BIAS_INT if bias_int else K.BIAS_FLOAT)
    if thr is None:
        out = np.empty((n, j), np.float32)
        K.bgemm(s, m, tern, k, wa, jc, K.OUT_FLOAT, np.zeros(js, np.int64), np.zeros(js, np.int64),
                np.zeros((7, 1), np.uint64), b, bmode, np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64),
                out, acc)
        return out
    tlo, thi = thr.int_bounds(js, bias.astype(np.int64) if bias is not None else None)
    jw = words(j)
    os_, om = np.empty((n, jw), np.uint64), np.empty((n, jw), np.uint64)
    zeros = K.bgemm(s, m, tern, k, wa, jc, K.OUT_BITS, tlo, thi, thr.words(jw), b, bmode, os_, om,
                    np.zeros((1, 1), np.float32), acc)
    from tamec.runtime.bits import unpack

    out = np.empty((n, j, 1), np.float32)
    unpack(os_.reshape(n, 1, jw), om.reshape(n, 1, jw), True, out)
    return out.reshape(n, j), zeros


sizes = st.tuples(st.integers(1, 70), st.integers(1, 600), st.integers(1, 100))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes, st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_bgemm_equals_integer_matmul(size, ternary, seed):
    """xnor-popcount GEMM == numpy integer matmul, for sizes that are not multiples of 64 and
    ternary activations with zeros (bias: integer added exactly, float added in float32)."""
    n, k, j = size
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 0.0, 1.0] if ternary else [-1.0, 1.0], (n, k))
    w = rng.choice([-1.0, 1.0], (j, k))
    ref = x.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(_run_bgemm(x, w), ref.astype(np.float32))
    bi = rng.integers(-5, 6, j)
    np.testing.assert_array_equal(_run_bgemm(x, w, bias=bi), (ref + bi).astype(np.float32))
    bf = rng.normal(0, 3, j).astype(np.float32)
    np.testing.assert_array_equal(_run_bgemm(x, w, bias=bf, bias_int=False),
                                  ref.astype(np.float32) + bf)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes, st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_fused_threshold_equals_numpy(size, ternary, seed):
    """GEMM + threshold on the integer pre-activation == numpy's y = hi/lo/tie with per-channel
    tau (integers: ties; halves; NaN: constant tie; +-inf: constant), flip and bias."""
    from tamec.runtime.plan import _Thr

    n, k, j = size
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 0.0, 1.0] if ternary else [-1.0, 1.0], (n, k))
    w = rng.choice([-1.0, 1.0], (j, k))
    bias = rng.integers(-3, 4, j)
    dot = (x.astype(np.int64) @ w.astype(np.int64).T + bias).astype(np.float64)
    tau = rng.integers(-k, k + 1, j).astype(np.float64)
    tau[rng.random(j) < 0.3] += 0.5
    special = rng.random(j)
    tau[special < 0.05] = np.nan
    tau[(special >= 0.05) & (special < 0.1)] = np.inf
    tau[(special >= 0.1) & (special < 0.15)] = -np.inf
    flip = rng.random(j) < 0.4
    tie = float(rng.choice([-1.0, 0.0, 1.0]))
    thr = _Thr(tau, np.where(flip, -1.0, 1.0), np.where(flip, 1.0, -1.0), np.full(j, tie))
    got, zeros = _run_bgemm(x, w, thr=thr, bias=bias)
    with np.errstate(invalid="ignore"):
        up, down = np.where(flip, -1.0, 1.0), np.where(flip, 1.0, -1.0)
        ref = np.where(dot > tau, up, np.where(dot < tau, down, tie))
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    assert zeros == int((ref == 0).sum())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 200), st.integers(1, 9), st.integers(0, 2 ** 32 - 1))
def test_pack_unpack_roundtrip(n, c, s, seed):
    """pack then unpack returns the ternary tensor; the numpy reference packing agrees bit for bit."""
    from tamec.runtime.bits import pack, pack_np, unpack, words

    x = np.random.default_rng(seed).choice([-1.0, 0.0, 1.0], (n, c, s)).astype(np.float32)
    sp, mp = np.empty((n, s, words(c)), np.uint64), np.empty((n, s, words(c)), np.uint64)
    assert pack(x, sp, mp) == (0, int((x == 0).sum()))
    rs, rm = pack_np(x)
    np.testing.assert_array_equal(sp, rs)
    np.testing.assert_array_equal(mp, rm)
    out = np.empty_like(x)
    unpack(sp, mp, True, out)
    np.testing.assert_array_equal(out, x)


def test_popcount_is_the_cpu_instruction():
    """The popcount intrinsic counts bits of uint64 words (all 64 set, none, and random words)."""
    from numba import njit

    from tamec.runtime.bits import popcount

    @njit
    def count(a):
        t = 0
        for v in a:
            t += np.int64(popcount(v))
        return t

    words = np.random.default_rng(0).integers(0, 2 ** 63, 100, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    assert count(np.array([~np.uint64(0)], np.uint64)) == 64
    assert count(np.zeros(3, np.uint64)) == 0
    assert count(words) == sum(bin(int(v)).count("1") for v in words)


# ------------------------------------------------------------------------------------------------
# Small graphs: binary conv and max-pool geometries, thresholds on real inputs
# ------------------------------------------------------------------------------------------------
def _sign_conv_pool(conv_attrs, pool_attrs, cin=5, cout=70, hw=9, ternary=True, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.choice([-1.0, 1.0], (cout, cin, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Sign", ["x"], ["s"] if ternary else ["s0"])]
    if not ternary:  # Sign(x) + 0.5 > 0 -> bipolar via a second Sign
        nodes += [helper.make_node("Add", ["s0", "half"], ["s1"]), helper.make_node("Sign", ["s1"], ["s"])]
    nodes += [helper.make_node("MaxPool", ["s"], ["p"], **pool_attrs),
              helper.make_node("Conv", ["p", "w"], ["c"], **conv_attrs),
              helper.make_node("Sign", ["c"], ["y"])]
    return make_model(nodes, [("x", ["N", cin, hw, hw])], [("y", ["N", cout, "h", "w"])],
                      {"w": w, "half": np.array(0.5, np.float32)})


@pytest.mark.parametrize("conv_attrs,pool_attrs", [
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), dict(kernel_shape=[2, 2], strides=[2, 2])),
    (dict(kernel_shape=[3, 3], strides=[2, 1], dilations=[1, 2], pads=[0, 2, 1, 0]),
     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"), dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1])),
    (dict(kernel_shape=[3, 3]), dict(kernel_shape=[1, 1])),
])
@pytest.mark.parametrize("ternary", [True, False])
def test_bconv_and_maxpool_on_bits(conv_attrs, pool_attrs, ternary):
    """Sign -> MaxPool -> Conv(+-1) -> Sign with strides, dilations, pads, auto_pad and ceil_mode:
    max-pool and conv run on bits and equal the evaluator and onnxruntime."""
    from tests.helpers import ort_run

    m = _sign_conv_pool(conv_attrs, pool_attrs, ternary=ternary)
    sess = tamec.Session(m)
    kinds = set(sess.plan.kernels().values())
    assert "maxpool(bits)" in kinds and any(k.startswith("bconv") for k in kinds), str(sess.plan)
    rng = np.random.default_rng(1)
    x = rng.choice([-1.0, 0.0, 0.5, 1.0], (67, 5, 9, 9)).astype(np.float32)
    got = sess.plan.run({"x": x}, keep_all=True)
    ref = Evaluator(sess.graph).run({"x": x}, keep_all=True)
    for name in ("s", "p", "y"):
        assert np.array_equal(got[name], ref[name]), name
    np.testing.assert_array_equal(got["y"], ort_run(m, {"x": x})[0])


def test_real_first_conv_and_threshold_bits_equal_evaluator():
    """A real one-channel Conv (+ bias) -> BN -> Sign runs in one kernel with the evaluator's
    arithmetic: its sign bits equal the evaluator's on 300 noisy images."""
    rng = np.random.default_rng(2)
    inits = {"w": rng.normal(0, 0.5, (24, 1, 3, 3)).astype(np.float32), "b": rng.normal(0, 0.1, 24).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, 24).astype(np.float32), "be": rng.normal(0, 0.1, 24).astype(np.float32),
             "mu": rng.normal(0, 0.1, 24).astype(np.float32), "v": rng.uniform(0.1, 1, 24).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 0, 1, 2], strides=[1, 2]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "v"], ["z"]),
             helper.make_node("Sign", ["z"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"], kernel_shape=[1, 1])]
    inits["w2"] = rng.choice([-1.0, 1.0], (3, 24, 1, 1)).astype(np.float32)
    m = make_model(nodes, [("x", ["N", 1, 11, 10])], [("y", ["N", 3, "h", "w"])], inits)
    sess = tamec.Session(m)
    assert any(k.startswith("conv1") for k in sess.plan.kernels().values()), str(sess.plan)
    x = rng.normal(0, 1, (300, 1, 11, 10)).astype(np.float32)
    got = sess.plan.run({"x": x}, keep_all=True)
    ref = Evaluator(sess.graph).run({"x": x}, keep_all=True)
    sign = [n for n in got if sess.graph.values[n].domain.kind in BINARY and sess.graph.values[n].const is None]
    assert sign
    for n in sign:
        assert np.array_equal(got[n], ref[n]), n
    np.testing.assert_allclose(got["y"], ref["y"], atol=1e-5)


def test_float_threshold_bounds_are_exact():
    """Thresholds on float32 inputs compare exactly as float64(x) vs tau, at the neighbours of tau,
    for taus that float32 cannot represent, +-0, +-inf, NaN and values beyond float32's range."""
    from tamec.runtime.plan import _Thr

    taus = np.array([0.0, -0.0, 0.1, -0.1, 1 / 3, 1e-45, 3e38, 1e39, -1e39, np.inf, -np.inf, np.nan, 2.5])
    thr = _Thr(taus, np.ones_like(taus), -np.ones_like(taus), np.zeros_like(taus))
    dn, up = thr.float_bounds(taus.size)
    t32 = taus.astype(np.float32)
    probes = np.concatenate([t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf)),
                             np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4028235e38, -3.4028235e38], np.float32)])
    with np.errstate(invalid="ignore"):
        for i, t in enumerate(taus):
            x = probes.astype(np.float64)
            np.testing.assert_array_equal(probes >= up[i], x > t, err_msg=f"above, tau={t}")
            np.testing.assert_array_equal(probes <= dn[i], x < t, err_msg=f"below, tau={t}")


# ------------------------------------------------------------------------------------------------
# Session: engines and bad input
# ------------------------------------------------------------------------------------------------
def test_engines_agree_and_unknown_engine_is_refused():
    """engine='reference' (the evaluator) and the default numba plan return the same outputs."""
    path = str(MODELS / "mlp_sign.onnx")
    x = np.random.default_rng(0).random((70, 64), dtype=np.float32)
    a = tamec.Session(path).run(None, {"x": x})[0]
    b = tamec.Session(path, engine="reference").run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(UsageError):
        tamec.Session(path, engine="cuda")


@pytest.mark.parametrize("model", ["mlp_sign.onnx", "tfc_w1a1_qonnx.onnx", "cnn_sign.onnx"])
def test_bad_input_is_an_input_error_naming_it(model):
    """Wrong shape, wrong dtype, NaN, inf, missing and unknown names, non-arrays: InputError naming
    the input; nothing is cast (float64 and int inputs are refused, not converted)."""
    sess = tamec.Session(str(MODELS / model))
    arg = sess.get_inputs()[0]
    name = arg.name
    shape = [d if isinstance(d, int) else 70 for d in arg.shape]
    good = np.random.default_rng(0).random(shape, dtype=np.float32)
    sess.run(None, {name: good})
    bad_shape = np.zeros(shape[:-1] + [shape[-1] + 1], np.float32)
    for feed in ({name: good.astype(np.float64)}, {name: (good * 10).astype(np.int64)},
                 {name: bad_shape}, {name: good[None]}, {name: good.tolist()}):
        with pytest.raises(InputError, match=repr(name)):
            sess.run(None, feed)
    for value in (np.nan, np.inf, -np.inf):
        for where in (0, -1):
            x = good.copy()
            x.reshape(-1)[where] = value
            with pytest.raises(InputError, match="NaN or infinite") as e:
                sess.run(None, {name: x})
            assert repr(name) in str(e.value)
    with pytest.raises(InputError, match=repr(name)):
        sess.run(None, {})
    with pytest.raises(InputError, match="nope"):
        sess.run(None, {name: good, "nope": good})
    with pytest.raises(InputError, match="nope"):
        sess.run(["nope"], {name: good})


def test_plan_checks_finite_inputs_it_reads():
    """When the first kernel reads the input itself (the fused input layer), it is the check:
    NaN/inf anywhere in a batch of 130 is an InputError, and Session skips its own scan."""
    sess = tamec.Session(str(MODELS / "tfc_w1a1_qonnx.onnx"))
    assert sess.plan.finite_checked == frozenset(sess.graph.inputs)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    for value in (np.nan, np.inf):
        for where in (0, 400, -1):
            y = x.copy()
            y.reshape(-1)[where] = value
            with pytest.raises(InputError, match="NaN or infinite"):
                sess.plan.run({"x": y})


def test_noncontiguous_and_readonly_inputs_run():
    """A transposed (non-contiguous) view and a read-only array are valid feeds."""
    sess = tamec.Session(str(MODELS / "mlp_sign.onnx"))
    x = np.random.default_rng(0).random((64, 90), dtype=np.float32)
    ref = sess.run(None, {"x": np.ascontiguousarray(x.T)})[0]
    np.testing.assert_array_equal(sess.run(None, {"x": x.T})[0], ref)
    ro = np.ascontiguousarray(x.T)
    ro.flags.writeable = False
    np.testing.assert_array_equal(sess.run(None, {"x": ro})[0], ref)


def test_outputs_are_owned_by_the_caller():
    """A second run does not overwrite the arrays the first run returned (buffers are reused
    inside the plan, never handed out)."""
    sess = tamec.Session(str(MODELS / "tfc_w1a1_qonnx.onnx"))
    rng = np.random.default_rng(0)
    x1, x2 = (rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(2))
    y1 = sess.run(None, {"x": x1})[0]
    keep = y1.copy()
    sess.run(None, {"x": x2})
    np.testing.assert_array_equal(y1, keep)


def test_numba_cache_dir_is_honored():
    """The kernels are compiled with cache=True into NUMBA_CACHE_DIR (read-only installs work)."""
    tamec.Session(str(MODELS / "mlp_sign.onnx")).run(None, {"x": np.zeros((2, 64), np.float32)})
    from numba.core.config import CACHE_DIR

    cache = os.environ.get("NUMBA_CACHE_DIR")
    assert cache and CACHE_DIR == cache
    found = [p for p in Path(cache).rglob("*.nbi") if "kernels" in p.name or "bits" in p.name]
    assert found, f"no tamec kernel cache index under {cache}"


def test_plan_summary_is_printable():
    """str(plan) names the model and one line per step with its kernel; TFC's binary layers
    run as one bgemm chain."""
    sess = tamec.Session(str(MODELS / "tfc_w1a1_qonnx.onnx"))
    text = str(sess.plan)
    lines = text.splitlines()
    assert lines[0].startswith('plan for graph "main_graph": ') and "bgemm-chain x4" in lines[0]
    steps = [ln for ln in lines[1:] if ln.split()[0].isdigit()]
    assert len(steps) == len(sess.plan.steps)
    assert "pointwise+threshold->bits" in text  # the fused input layer is listed inside the chain


# ------------------------------------------------------------------------------------------------
# Issue 10 (1): Sign MLPs of every width, packed and dense thresholds
# ------------------------------------------------------------------------------------------------
_WIDTHS = [1, 63, 64, 65, 127, 128, 200, 784, 1024, 1025, 1100]


def _sign_mlp_weights(width, zero_weight, seed=0):
    """Weights and BatchNorm statistics (random running mean/var, gammas of both signs) of a Sign
    MLP 784-width-width-width-10; zero_weight puts one exact 0 in each weight, so Sign(W) is
    ternary, the layers run dense and every threshold reads a float pre-activation."""
    rng = np.random.default_rng(seed)
    dims = [784, width, width, width, 10]
    ws, bns = [], []
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        w = rng.normal(0, 1, (n, k)).astype(np.float32)
        if zero_weight:
            w[0, 0] = 0.0
        ws.append(w)
        if i < 3:
            bns.append([rng.uniform(-1.5, 1.5, n), rng.normal(0, 2, n), rng.normal(0, 3, n), rng.uniform(0.1, 4, n)])
    return ws, [[np.asarray(a, np.float32) for a in bn] for bn in bns]


def _sign_mlp_onnx(width, zero_weight):
    """The issue's model with onnx.helper: Sign(x - 0.5), Gemm(Sign(W), transB), BatchNorm, Sign;
    opset 17, dynamic batch."""
    ws, bns = _sign_mlp_weights(width, zero_weight)
    nodes = [helper.make_node("Sub", ["x", "half"], ["x0"]), helper.make_node("Sign", ["x0"], ["a0"])]
    inits = {"half": np.array(0.5, np.float32)}
    for i, w in enumerate(ws):
        inits[f"w{i}"] = w
        nodes += [helper.make_node("Sign", [f"w{i}"], [f"sw{i}"]),
                  helper.make_node("Gemm", [f"a{i}", f"sw{i}"], ["y" if i == 3 else f"mm{i}"], transB=1)]
        if i < 3:
            names = [f"{p}{i}" for p in "gbmv"]
            inits.update(zip(names, bns[i]))
            nodes += [helper.make_node("BatchNormalization", [f"mm{i}"] + names, [f"bn{i}"]),
                      helper.make_node("Sign", [f"bn{i}"], [f"a{i + 1}"])]
    return make_model(nodes, [("x", ["N", 784])], [("y", ["N", 10])], inits, opset=17)


def _check_session_equals_ort(m: onnx.ModelProto):
    from tests.helpers import ort_run

    sess = tamec.Session(m)
    rng = np.random.default_rng(3)
    for n in (1, 67):
        x = rng.uniform(0, 1, (n, 784)).astype(np.float32)
        x[:, :5] = 0.5  # Sign(0.5 - 0.5) = 0: the input's tie
        got = sess.plan.run({"x": x}, keep_all=True)
        ref = Evaluator(sess.graph).run({"x": x}, keep_all=True)
        binary = [v for v in got if sess.graph.values[v].domain.kind in BINARY and sess.graph.values[v].const is None]
        assert len(binary) >= 4, str(sess.plan)
        for v in binary:
            assert np.array_equal(got[v], ref[v]), v
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])


@pytest.mark.parametrize("zero_weight", [False, True], ids=["packed", "dense"])
@pytest.mark.parametrize("width", _WIDTHS)
def test_sign_mlp_of_any_width_equals_onnxruntime(width, zero_weight):
    """A Sign MLP 784-w-w-w-10 (BatchNorm with random statistics, opset 17, dynamic batch) runs in
    Session for every width, packed or with dense thresholds over > 64 channels, and equals
    onnxruntime bit for bit (and the evaluator on every binary tensor)."""
    m = _sign_mlp_onnx(width, zero_weight)
    if zero_weight:  # the path that crashed: a threshold over 784 (and width) channels, float out
        assert "pointwise+threshold->float32" in str(tamec.Session(m).plan)
    _check_session_equals_ort(m)


@pytest.mark.parametrize("zero_weight", [False, True], ids=["packed", "dense"])
@pytest.mark.parametrize("width", [65, 1024, 1100])
def test_torch_sign_mlp_of_any_width_equals_onnxruntime(width, zero_weight, tmp_path):
    """The same Sign MLP written by torch.onnx (TorchScript exporter, opset 17, dynamic batch)
    runs in Session and equals onnxruntime bit for bit."""
    torch = pytest.importorskip("torch")
    ws, bns = _sign_mlp_weights(width, zero_weight)

    class SignMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.ModuleList(torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for w in ws)
            self.bn = torch.nn.ModuleList(torch.nn.BatchNorm1d(len(bn[0])) for bn in bns)
            with torch.no_grad():
                for fc, w in zip(self.fc, ws):
                    fc.weight.copy_(torch.from_numpy(w))
                for m, (g, b, mu, v) in zip(self.bn, bns):
                    m.weight.copy_(torch.from_numpy(g)), m.bias.copy_(torch.from_numpy(b))
                    m.running_mean.copy_(torch.from_numpy(mu)), m.running_var.copy_(torch.from_numpy(v))

        def forward(self, x):
            x = torch.sign(x - 0.5)
            for i, fc in enumerate(self.fc):
                x = torch.nn.functional.linear(x, torch.sign(fc.weight))
                if i < len(self.bn):
                    x = torch.sign(self.bn[i](x))
            return x

    net = SignMLP().eval()
    path = tmp_path / "sign_mlp.onnx"
    torch.onnx.export(net, (torch.zeros(2, 784),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    _check_session_equals_ort(onnx.load(str(path)))


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("channels", [1, 64, 65, 130, 1025])
def test_real_conv_threshold_of_any_width_equals_onnxruntime(channels, packed):
    """A real one-channel Conv -> BN (random statistics, gammas of both signs) -> Sign with any
    channel count, its output a graph output (dense) or read by a +-1 Conv (packed), runs in
    its fused kernel and equals onnxruntime bit for bit."""
    from tests.helpers import ort_run

    rng = np.random.default_rng(5)
    c = channels
    inits = {"w": rng.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32), "g": rng.uniform(-1.5, 1.5, c).astype(np.float32),
             "be": rng.normal(0, 0.3, c).astype(np.float32), "mu": rng.normal(0, 0.3, c).astype(np.float32),
             "v": rng.uniform(0.1, 2, c).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "v"], ["z"]),
             helper.make_node("Sign", ["z"], ["s" if packed else "y"])]
    if packed:
        inits["w2"] = rng.choice([-1.0, 1.0], (3, c, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Conv", ["s", "w2"], ["y"], kernel_shape=[1, 1]))
    m = make_model(nodes, [("x", ["N", 1, 5, 6])], [("y", ["N", 3 if packed else c, 5, 6])], inits)
    sess = tamec.Session(m)
    assert any(k.startswith("conv1") for k in sess.plan.kernels().values()), str(sess.plan)
    x = rng.normal(0, 1, (9, 1, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])

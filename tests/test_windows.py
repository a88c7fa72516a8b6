"""Conv and pool windows (tamec/ops/conv.py) in every stage: auto_pad SAME_UPPER, SAME_LOWER,
VALID and explicit pads, with strides and dilations, give sound interval bounds, an exact MIP and
a runtime equal to onnxruntime (issue 10, failure 4)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import tamec
from tamec.evaluator import Evaluator
from tamec.lower.inference import decode, fix_inputs, lower_inference
from tamec.ir.mip import verify_mip
from tamec.solve import solve
from tests.helpers import model, ort_run
from tests.test_lowering import binary_cols, nogood, ties_and_margin

CONVS = {
    "same_upper": dict(auto_pad="SAME_UPPER"),
    "same_lower_stride": dict(auto_pad="SAME_LOWER", strides=[2, 1]),
    "same_upper_stride": dict(auto_pad="SAME_UPPER", strides=[1, 2]),
    "valid_dilated": dict(auto_pad="VALID", strides=[2, 1], dilations=[1, 2]),
    "pads": dict(pads=[1, 0, 2, 1], dilations=[1, 2]),
}
POOLS = {
    "same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower": dict(auto_pad="SAME_LOWER", strides=[1, 2]),
    "valid": dict(auto_pad="VALID", strides=[2, 1]),
}
HW = (9, 12)
# onnxruntime refuses dilations with SAME_* auto_pad on Conv, so dilations go with VALID and pads


def _real_cnn(conv, pool, seed=0):
    """x in [0,1]^(1x9x12) -> Conv(real, conv attrs, bias) -> BN -> Sign -> MaxPool(pool attrs)
    -> Conv(+-1, conv attrs) -> BN -> Sign -> Flatten -> MatMul head. The head's width is found
    by running the network once (the windows decide it)."""
    rng = np.random.default_rng(seed)
    c1, c2 = 3, 4
    inits = {"w1": rng.normal(0, 1, (c1, 1, 3, 2)).astype(np.float32), "b1": rng.normal(0, 0.3, c1).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (c2, c1, 2, 3)).astype(np.float32)}
    for i, c in ((1, c1), (2, c2)):
        inits.update({f"g{i}": rng.uniform(-1.5, 1.5, c), f"be{i}": rng.normal(0, 1, c),
                      f"mu{i}": rng.normal(0, 1, c), f"v{i}": rng.uniform(0.5, 2, c)})
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 2], **conv),
             helper.make_node("BatchNormalization", ["c1", "g1", "be1", "mu1", "v1"], ["z1"]),
             helper.make_node("Sign", ["z1"], ["a1"]),
             helper.make_node("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], **pool),
             helper.make_node("Conv", ["p", "w2"], ["c2"], kernel_shape=[2, 3], **conv),
             helper.make_node("BatchNormalization", ["c2", "g2", "be2", "mu2", "v2"], ["z2"]),
             helper.make_node("Sign", ["z2"], ["a2"]),
             helper.make_node("Flatten", ["a2"], ["f"])]
    inits = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    body = model(nodes, [("x", ["N", 1, *HW])], [("f", ["N", "F"])], inits)
    width = ort_run(body, {"x": np.zeros((1, 1, *HW), np.float32)})[0].shape[1]
    inits["wh"] = rng.normal(0, 1, (width, 2)).astype(np.float32)
    return model(nodes + [helper.make_node("MatMul", ["f", "wh"], ["y"])], [("x", ["N", 1, *HW])],
                 [("y", ["N", 2])], inits)


def _samples(n, rng):
    """Inputs in the box [0,1]: its corners' patterns, 0/1 images, halves and uniform noise."""
    xs = [np.zeros((1, 1, *HW)), np.ones((1, 1, *HW)), np.full((1, 1, *HW), 0.5),
          rng.integers(0, 2, (n, 1, *HW)), rng.uniform(0, 1, (n, 1, *HW))]
    return np.concatenate(xs).astype(np.float32)


CASES = [pytest.param(CONVS[c], POOLS[p], id=f"conv-{c}-pool-{p}")
         for c, p in [("same_upper", "same_upper"), ("same_lower_stride", "same_lower"),
                      ("same_upper_stride", "valid"), ("valid_dilated", "same_upper"), ("pads", "same_lower")]]


@pytest.mark.parametrize("conv,pool", CASES)
def test_bounds_contain_sampled_tensors(conv, pool):
    """With the input box [0,1], every tensor (the conv pre-activations included) gets finite
    interval bounds that contain its value on 200 sampled inputs."""
    mod = tamec.compile(_real_cnn(conv, pool), input_bounds=(0.0, 1.0))
    g = mod.graph
    vals = Evaluator(g).run({"x": _samples(100, np.random.default_rng(1))}, keep_all=True)
    pre = [op.inputs[0] for op in g.ops() if op.qualname == "tamec.Threshold"]
    assert len(pre) == 2
    for name in pre:
        lo, hi = g.values[name].bounds
        assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)), name
    for name, v in g.values.items():
        if v.bounds is not None and v.const is None and name in vals:
            lo, hi = v.bounds
            assert lo.shape == vals[name].shape[1:], name
            assert np.all(vals[name] >= lo) and np.all(vals[name] <= hi), name


@pytest.mark.parametrize("conv,pool", CASES)
def test_fixed_input_mip_decodes_to_network(conv, pool):
    """lower-mip works with auto_pad, and with the input fixed the MIP's solution decodes to the
    evaluator's tensors (binary exactly, real within 1e-5) and is the only one (a no-good row
    over every binary activation makes it infeasible). Inputs within the real thresholds'
    strict-side gap are skipped, as in test_lowering."""
    mod = tamec.compile(_real_cnn(conv, pool), input_bounds=(0.0, 1.0))
    g = mod.graph
    mip = lower_inference(g)
    verify_mip(mip)
    p = mip.assemble()
    gap = max([b.meta.get("eps_max", 0.0) for b in mip.blocks])
    cols = binary_cols(mip, p)
    xs = _samples(6, np.random.default_rng(2))
    ev = Evaluator(g)
    checked = 0
    for i in range(len(xs)):
        x = xs[i:i + 1]
        ref = ev.run({"x": x}, keep_all=True)
        if ties_and_margin(g, ref)[1] < 2 * gap:
            continue
        fixed = fix_inputs(mip, p, {"x": x})
        sol = solve(fixed)
        assert sol.status == "optimal", f"input {i}: {sol.status} {sol.message}"
        got = decode(mip, fixed, sol.x)
        assert "y" in got
        for name, val in got.items():
            r = ref[name].reshape(val.shape).astype(np.float64)
            if g.values[name].domain.is_integer:
                assert np.array_equal(val, r), f"input {i}: {name}"
            else:
                np.testing.assert_allclose(val, r, rtol=1e-5, atol=1e-5, err_msg=f"input {i}: {name}")
        assert solve(nogood(fixed, cols, np.round(sol.x[cols]))).status == "infeasible", f"input {i}"
        checked += 1
    assert checked >= len(xs) // 2, f"only {checked} of {len(xs)} inputs away from the gap"


@pytest.mark.parametrize("conv,pool", CASES)
def test_session_equals_onnxruntime(conv, pool):
    """Session on the real-input CNN equals onnxruntime (within 1e-5) and the evaluator on every
    binary tensor, with a batch of 203."""
    m = _real_cnn(conv, pool)
    sess = tamec.Session(m)
    x = _samples(100, np.random.default_rng(3))
    got = sess.plan.run({"x": x}, keep_all=True)
    ref = Evaluator(sess.graph).run({"x": x}, keep_all=True)
    for name in ("a1", "p", "a2"):
        assert np.array_equal(got[name], ref[name]), name
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("conv", list(CONVS.values()), ids=list(CONVS))
@pytest.mark.parametrize("pool", list(POOLS.values()), ids=list(POOLS))
def test_binary_conv_and_pools_equal_onnxruntime(conv, pool, pool_type):
    """Sign -> MaxPool/AveragePool (auto_pad) -> Conv(+-1, auto_pad, strides, dilations) on a
    ternary 11x11 image: Session equals onnxruntime (MaxPool: the bit kernels, and the Sign of
    the conv bit for bit; AveragePool: the real conv within 1e-5)."""
    rng = np.random.default_rng(4)
    cin, cout, hw = 5, 70, 11
    avg = pool_type == "AveragePool"
    extra = {"count_include_pad": 0} if avg else {}
    nodes = [helper.make_node("Sign", ["x"], ["s"]),
             helper.make_node(pool_type, ["s"], ["p"], kernel_shape=[2, 3], **pool, **extra),
             helper.make_node("Conv", ["p", "w"], ["c" if not avg else "y"], kernel_shape=[3, 2], **conv)]
    if not avg:
        nodes.append(helper.make_node("Sign", ["c"], ["y"]))
    m = model(nodes, [("x", ["N", cin, hw, hw])], [("y", ["N", cout, "h", "w"])],
              {"w": rng.choice([-1.0, 1.0], (cout, cin, 3, 2)).astype(np.float32)})
    sess = tamec.Session(m)
    x = rng.choice([-1.0, 0.0, 0.5, 1.0], (67, cin, hw, hw)).astype(np.float32)
    if avg:
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)
        return
    kinds = set(sess.plan.kernels().values())
    assert "maxpool(bits)" in kinds and any(k.startswith("bconv") for k in kinds), str(sess.plan)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ort_run(m, {"x": x})[0])

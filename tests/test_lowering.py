"""Inference-mode lowering (partition, lower-mip): the MIP's feasible set is the network's graph.

For fixed weights and a fixed input the MIP has exactly one feasible activation vector, the
reference evaluator's (every bundled model and TFC_1W1A, inputs that hit ties included); on tiny
networks every input is enumerated and the MIP with the input free has no solution the network
does not compute.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import pytest
import scipy.sparse as sp
from onnx import helper

import tamec
from tamec.errors import UnsupportedModelError
from tamec.evaluator import Evaluator
from tamec.ir.graph import BIPOLAR
from tamec.ir.mip import verify_mip
from tamec.lower.inference import decode, encode_value, fix_inputs, lower_inference, partition
from tamec.passmanager import DEFAULT_PIPELINE, run_pipeline
from tamec.solve import solve
from tests.conftest import all_models
from tests.helpers import all_bipolar, bipolar_dense_bn_sign, model
from tests.test_reference_equality import probe_inputs

QONNX = "qonnx.custom_op.general"
N_INPUTS = 8  # probe inputs per model: {0,1}, +-1, {0,1/2,1}, zeros, uniform, ... (ties included)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def bipolar_input(mod):
    """Declare the graph inputs bipolar, as a binarized upstream layer would make them."""
    for name in mod.graph.inputs:
        mod.graph.values[name].domain = BIPOLAR
    return mod


def with_row(p, coef_cols, coef, lo, hi=np.inf):
    """A copy of MILP `p` with rows `lo <= sum coef * x[cols] <= hi` (one row per line of coef)."""
    coef = np.atleast_2d(coef)
    r = np.repeat(np.arange(coef.shape[0]), coef.shape[1])
    c = np.tile(coef_cols, coef.shape[0])
    row = sp.csr_matrix((coef.reshape(-1), (r, c)), shape=(coef.shape[0], p.A.shape[1]))
    return dataclasses.replace(p, A=sp.vstack([p.A, row]).tocsr(), lo=np.r_[p.lo, np.broadcast_to(lo, coef.shape[0])],
                               hi=np.r_[p.hi, np.broadcast_to(hi, coef.shape[0])])


def nogood(p, cols, bits):
    """Exclude each 0/1 vector in `bits` (rows) on columns `cols`: Hamming distance >= 1 from it."""
    bits = np.atleast_2d(bits)
    coef = np.where(bits > 0.5, -1.0, 1.0)
    return with_row(p, cols, coef, 1.0 - bits.sum(1))


def binary_cols(mip, p, roles=("internal", "output")):
    """Columns of every binary variable whose group has one of `roles`."""
    return np.concatenate([p.col(b.name, v.name) for b in mip.blocks for v in b.vars
                           if v.kind == "binary" and v.role in roles])


def encode_all(mip, p, values: dict, k: int) -> np.ndarray:
    """The MILP solution vector of example k of the evaluator's `values` (every group encodes a value)."""
    z = np.full(p.A.shape[1], np.nan)
    for b in mip.blocks:
        for v in b.vars:
            assert v.encodes in values, f"group {b.name}.{v.name} encodes no evaluator value"
            z[p.col(b.name, v.name)] = encode_value(v, values[v.encodes][k])
    return z


def real_thresholds(g):
    """(pre-activation name, tau aligned with it) of every threshold on a real pre-activation."""
    out = []
    for op in g.ops():
        if op.qualname == "tamec.Threshold":
            tau = np.asarray(op.attrs["tau"], np.float64)
            rank = len(g.values[op.inputs[0]].shape)
            if tau.ndim:
                shape = [1] * rank
                shape[op.attrs["axis"]] = tau.size
                tau = tau.reshape(shape)
            out.append((op.inputs[0], tau, g.values[op.inputs[0]].domain.is_integer))
    return out


def ties_and_margin(g, ref) -> tuple[int, float]:
    """How many pre-activations equal tau exactly, and the smallest nonzero |s - tau| on real ones."""
    ties, margin = 0, np.inf
    for s, tau, integer in real_thresholds(g):
        d = np.abs(ref[s].astype(np.float64) - tau)
        ties += int(np.sum(d == 0))
        if not integer and np.any(d > 0):
            margin = min(margin, float(d[d > 0].min()))
    return ties, margin


# ------------------------------------------------------------------------------------------------
# every bundled model and TFC_1W1A: one input fixed -> one activation vector, the evaluator's
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def lowered(path: str, bipolar: bool = False):
    """Compile (with the input box [-1, 1], so that the probe inputs, +-1 images among them, lie
    inside it) and lower a model; cached for the module."""
    if bipolar:
        mod = run_pipeline(bipolar_input(tamec.load(path)), None)
    else:
        mod = tamec.compile(path, input_bounds=(-1.0, 1.0))
    mip = lower_inference(mod.graph)
    verify_mip(mip)
    return mod.graph, mip, mip.assemble()


def model_cases():
    from tests.conftest import MODELS

    cases = [pytest.param(str(p.values[0]), False, id=p.id, marks=p.marks) for p in all_models()]
    return cases + [pytest.param(str(MODELS / "sign_ties.onnx"), True, id="sign_ties-bipolar-input")]


@pytest.mark.parametrize("path,bipolar", model_cases())
def test_fixed_input_unique_activation(path, bipolar):
    """Input fixed: the MIP's solution decodes to the evaluator's tensors (binary exactly, real
    within 1e-5), and a Hamming-distance->=1 row over every binary activation makes it infeasible.

    Inputs within the strict-side gap of a real threshold (0 < |s - tau| < 2 e, e the gap the
    lowering used, Block.meta["eps_max"]) are skipped: the MIP excludes that gap by design
    (float64 vs the evaluator's float32 differ there too). Exact ties (s == tau) are kept."""
    g, mip, p = lowered(path, bipolar)
    (inp,) = g.inputs
    ev = Evaluator(g)
    rng = np.random.default_rng(7)
    if bipolar:
        xs = rng.choice([-1.0, 1.0], (N_INPUTS,) + tuple(g.values[inp].shape[1:])).astype(np.float32)
    else:
        xs = probe_inputs(g.values[inp].shape, rng)[:N_INPUTS]
    gap = max([b.meta.get("eps_max", 0.0) for b in mip.blocks])
    cols = binary_cols(mip, p)
    checked = ties = 0
    for i in range(len(xs)):
        x = xs[i:i + 1]
        ref = ev.run({inp: x}, keep_all=True)
        t, margin = ties_and_margin(g, ref)
        if margin < 2 * gap:
            continue
        fixed = fix_inputs(mip, p, {inp: x})
        sol = solve(fixed)
        assert sol.status == "optimal", f"input {i}: {sol.status} {sol.message}"
        got = decode(mip, fixed, sol.x)
        assert inp in got and all(o in got for o in g.outputs)
        for name, val in got.items():
            r = ref[name].reshape(val.shape).astype(np.float64)
            if g.values[name].domain.is_integer:
                assert np.array_equal(val, r), f"input {i}: {name} differs in {int((val != r).sum())} places"
            else:
                np.testing.assert_allclose(val, r, rtol=1e-5, atol=1e-5, err_msg=f"input {i}: {name}")
        # one row over all binary groups: infeasible iff no activation differs in any group
        other = solve(nogood(fixed, cols, np.round(sol.x[cols])))
        assert other.status == "infeasible", f"input {i}: a second activation vector ({other.status})"
        checked += 1
        ties += t
    assert checked >= N_INPUTS // 2, f"only {checked} of {N_INPUTS} inputs away from the gap"
    name = path.rsplit("/", 1)[-1]
    if name.startswith(("sign_ties", "tfc", "TFC")):
        assert ties > 0, "these inputs should hit thresholds exactly at tau"


# ------------------------------------------------------------------------------------------------
# tiny networks: every input enumerated
# ------------------------------------------------------------------------------------------------
def _bn_ties(rng, n, reachable, var_eps=1e-5, neg=0.3):
    """BN parameters whose threshold sits on a reachable pre-activation for most neurons (var =
    1 - eps so that var + eps == 1 in float32), some gammas negative (flips), one gamma 0."""
    gamma = rng.uniform(0.5, 1.5, n) * np.where(rng.random(n) < neg, -1, 1)
    gamma[-1] = 0.0  # a constant neuron
    mean = rng.choice(reachable, n).astype(np.float64)
    beta = np.zeros(n)
    var = np.full(n, 1 - var_eps)
    return [a.astype(np.float32) for a in (gamma, beta, mean, var)]


def tiny_one_layer():
    """8 bipolar inputs -> +-1 MatMul -> BN (ties, flips, a constant) -> ONNX Sign (ternary)."""
    k, n = 8, 6
    gamma = [1, -1, 0, 1, 1, -3]
    beta = [0, 0, 0.5, 0, 0.25, 0]
    mean = [2, -4, 0, 0.5, 0, 4]  # ties at s = 2, -4, 4 (even, reachable for k = 8)
    m = bipolar_dense_bn_sign(k=k, n=n, gamma=gamma, beta=beta, mean=mean, var=[1 - 1e-5] * n, seed=3)
    return m, k


def tiny_two_layer():
    """9 bipolar inputs -> Sign layer (ternary, ties) -> BN with negative gammas -> BipolarQuant
    (tie +1) -> Reshape -> MaxPool (an OR of bipolar bits) -> Flatten -> real head."""
    rng = np.random.default_rng(5)
    k, n1, n2 = 9, 6, 4
    g1, b1, m1, v1 = _bn_ties(rng, n1, [-3, -1, 1, 3])
    g2, b2, m2, v2 = _bn_ties(rng, n2, [-2, -1, 0, 1, 2], neg=0.6)
    inits = {"w1": rng.choice([-1.0, 1.0], (k, n1)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (n1, n2)).astype(np.float32),
             "w3": rng.normal(0, 1, (2, 3)).astype(np.float32), "b3": rng.normal(0, 1, 3).astype(np.float32),
             "g1": g1, "b1": b1, "m1": m1, "v1": v1, "g2": g2, "b2": b2, "m2": m2, "v2": v2,
             "one": np.array(1.0, np.float32), "shp": np.array([-1, 1, n2], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s1"], name="mm1"),
             helper.make_node("BatchNormalization", ["s1", "g1", "b1", "m1", "v1"], ["z1"], name="bn1"),
             helper.make_node("Sign", ["z1"], ["a1"], name="sign1"),
             helper.make_node("MatMul", ["a1", "w2"], ["s2"], name="mm2"),
             helper.make_node("BatchNormalization", ["s2", "g2", "b2", "m2", "v2"], ["z2"], name="bn2"),
             helper.make_node("BipolarQuant", ["z2", "one"], ["a2"], name="bq2", domain=QONNX),
             helper.make_node("Reshape", ["a2", "shp"], ["r2"], name="reshape"),
             helper.make_node("MaxPool", ["r2"], ["p2"], name="pool", kernel_shape=[2], strides=[2]),
             helper.make_node("Flatten", ["p2"], ["f2"], name="flatten"),
             helper.make_node("MatMul", ["f2", "w3"], ["s3"], name="mm3"),
             helper.make_node("Add", ["s3", "b3"], ["y"], name="bias")]
    return model(nodes, [("x", ["N", k])], [("y", ["N", 3])], inits, extra_opsets=[(QONNX, 1)]), k


def tiny_conv():
    """A 1x3x3 bipolar image -> Conv (+-1, 2x2, pad 1: the border reads zeros) -> BN -> Sign ->
    MaxPool 2x2 of a ternary tensor -> Flatten -> MatMul head."""
    rng = np.random.default_rng(11)
    c = 3
    g1, b1, m1, v1 = _bn_ties(rng, c, [-2, -1, 0, 1, 2])
    inits = {"w": rng.choice([-1.0, 1.0], (c, 1, 2, 2)).astype(np.float32),
             "g": g1, "b": b1, "m": m1, "v": v1, "w2": rng.normal(0, 1, (c * 4, 2)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["s"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[2, 2]),
             helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["z"], name="bn"),
             helper.make_node("Sign", ["z"], ["a"], name="sign"),
             helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="mm")]
    return model(nodes, [("x", ["N", 1, 3, 3])], [("y", ["N", 2])], inits, opset=13), 9


def tiny_transpose():
    """A 2x4 bipolar input -> Transpose -> MatMul on the 3-D tensor (a Kronecker-product weight)
    -> Add of a per-feature constant -> Sign -> Reshape -> MatMul head."""
    rng = np.random.default_rng(4)
    inits = {"w": rng.choice([-1.0, 1.0], (2, 3)).astype(np.float32),
             "c": np.array([0.0, -1.0, 1.0], np.float32), "shp": np.array([-1, 12], np.int64),
             "w2": rng.normal(0, 1, (12, 2)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w"], ["s"], name="mm"),
             helper.make_node("Add", ["s", "c"], ["z"], name="add"),
             helper.make_node("Sign", ["z"], ["a"], name="sign"),
             helper.make_node("Reshape", ["a", "shp"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return model(nodes, [("x", ["N", 2, 4])], [("y", ["N", 2])], inits), 8


@pytest.mark.parametrize("make", [tiny_one_layer, tiny_two_layer, tiny_conv, tiny_transpose],
                         ids=lambda f: f.__name__)
def test_tiny_network_mip_equals_network(make):
    """Over all 2^k bipolar inputs: (1) every network point (input, activations, output) is
    MIP-feasible; (2) each input fixed, the solve returns that point; (3) with the input free and
    a no-good cut excluding every network point, the MIP is infeasible (nothing else is
    feasible); (4) the min/max of every output element with the input free equal the
    enumeration's."""
    m, k = make()
    mod = run_pipeline(bipolar_input(tamec.load(m)), None)
    g = mod.graph
    mip = lower_inference(g)
    verify_mip(mip)
    p = mip.assemble()
    (inp,) = g.inputs
    X = all_bipolar(k).reshape((-1,) + tuple(g.values[inp].shape[1:]))
    ref = Evaluator(g).run({inp: X}, keep_all=True)
    Z = np.stack([encode_all(mip, p, ref, j) for j in range(len(X))])
    # (1) feasibility of every network point, checked directly
    assert np.all(Z >= p.lb - 1e-9) and np.all(Z <= p.ub + 1e-9)
    act = (p.A @ Z.T).T
    tol = 1e-5 * (1 + np.abs(np.where(np.isfinite(p.lo), p.lo, 0)))
    assert np.all(act >= p.lo - tol) and np.all(act <= p.hi + tol)
    # (2) each input fixed: the MIP computes the network
    outs = [o for o in g.outputs]
    for j in range(len(X)):
        sol = solve(fix_inputs(mip, p, {inp: X[j:j + 1]}))
        assert sol.status == "optimal"
        got = decode(mip, p, sol.x)
        for name, val in got.items():
            r = ref[name][j].astype(np.float64).reshape(val.shape)
            if g.values[name].domain.is_integer:
                assert np.array_equal(val, r), f"input {j}: {name}"
            else:
                np.testing.assert_allclose(val, r, rtol=1e-5, atol=1e-5)
    # (3) input free: nothing but the network's points
    cols = binary_cols(mip, p, roles=("input", "internal", "output"))
    cut = nogood(p, cols, Z[:, cols])
    res = solve(cut)
    assert res.status == "infeasible", f"the MIP admits a point the network never computes ({res.status})"
    # (4) extremes of each output element with the input free
    for o in outs:
        (blk, grp), *_ = mip.meta["outputs"][o]
        ocols = p.col(blk, grp) if len(mip.meta["outputs"][o]) == 1 else None
        vals = ref[o].reshape(len(X), -1).astype(np.float64)
        if ocols is None:  # a ternary output: p - n
            continue
        for e, c in enumerate(ocols):
            obj = np.zeros(p.A.shape[1])
            obj[c] = 1.0
            hi = solve(p, c=obj, sense="max")
            lo = solve(p, c=obj, sense="min")
            assert hi.status == lo.status == "optimal"
            np.testing.assert_allclose([lo.objective, hi.objective], [vals[:, e].min(), vals[:, e].max()],
                                       rtol=1e-5, atol=1e-5)


def test_tiny_ternary_output_extremes():
    """A network whose output is a ternary Sign: with the input free, each output element's
    reachable set {p - n} over the MIP equals the set the enumeration reaches."""
    m, k = tiny_one_layer()
    mod = run_pipeline(bipolar_input(tamec.load(m)), None)
    g = mod.graph
    mip = lower_inference(g)
    p = mip.assemble()
    X = all_bipolar(k)
    y = Evaluator(g).run({"x": X})["y"]
    (b, gp), (_, gn) = mip.meta["outputs"]["y"]
    cp, cn = p.col(b, gp), p.col(b, gn)
    for e in range(y.shape[1]):
        for level in (-1.0, 0.0, 1.0):
            q = dataclasses.replace(p, lb=p.lb.copy(), ub=p.ub.copy())
            want_p, want_n = float(level > 0), float(level < 0)
            q.lb[cp[e]] = max(q.lb[cp[e]], want_p)
            q.ub[cp[e]] = min(q.ub[cp[e]], want_p)
            q.lb[cn[e]] = max(q.lb[cn[e]], want_n)
            q.ub[cn[e]] = min(q.ub[cn[e]], want_n)
            feasible = bool(np.all(q.lb <= q.ub)) and solve(q).status == "optimal"
            assert feasible == bool(np.any(y[:, e] == level)), f"output {e} level {level}"


# ------------------------------------------------------------------------------------------------
# structure, passes, errors
# ------------------------------------------------------------------------------------------------
def test_partition_and_interfaces():
    """TFC-like cnn_sign: two binarized blocks and a head; the MaxPool sits in its consumer's
    block; links join each block's input copies to the producer's groups, with equal bounds."""
    from tests.conftest import MODELS

    g, mip, p = lowered(str(MODELS / "cnn_sign.onnx"))
    specs = partition(g)
    assert [s.kind for s in specs] == ["binarized", "binarized", "head"]
    qual = [[g.op(i).qualname for i in s.ops] for s in specs]
    assert qual[1][0] == "MaxPool" and qual[1][-1] == "tamec.Threshold" and qual[2][0] == "MaxPool"
    assert specs[1].inputs == specs[0].outputs == ["/Sign_output_0"]
    for ln in mip.links:
        s, d = mip.block(ln.src).group(ln.src_group), mip.block(ln.dst).group(ln.dst_group)
        assert s.encoding == d.encoding and np.array_equal(s.lb, d.lb) and np.array_equal(s.ub, d.ub)
        assert d.role == "input" and s.encodes == d.encodes
    (blk, grp), = mip.meta["inputs"]["x"]
    assert blk == "layer0" and mip.block(blk).group(grp).kind == "continuous"
    assert [gr for _, gr in mip.meta["values"]["/Sign_output_0"]] == ["/Sign_output_0+", "/Sign_output_0-"]
    bigm = [r for b in mip.blocks for r in b.rows if r.kind == "big-m"]
    assert bigm and all(r.big_m == "interval" and r.m is not None and r.m.size == r.size and r.origin for r in bigm)


def test_softmax_not_lowered():
    """A final Softmax is left out (argmax is order-preserving): the head ends at the logits, and
    meta["outputs"] maps the graph output to the logits' group."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
             helper.make_node("Sign", ["s"], ["a"], name="sign"),
             helper.make_node("MatMul", ["a", "w2"], ["logits"], name="head"),
             helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=-1)]
    m = model(nodes, [("x", ["N", 4])], [("prob", ["N", 2])],
              {"w": rng.choice([-1.0, 1.0], (4, 3)).astype(np.float32), "w2": np.ones((3, 2), np.float32)})
    mod = run_pipeline(bipolar_input(tamec.load(m)), None)
    specs = partition(mod.graph)
    assert specs[-1].kind == "head" and [mod.graph.op(i).op_type for i in specs[-1].not_lowered] == ["Softmax"]
    mip = lower_inference(mod.graph, specs)
    (blk, grp), = mip.meta["outputs"]["prob"]
    assert mip.block(blk).group(grp).encodes == "logits"
    assert mip.meta["not_lowered"][0]["op_type"] == "Softmax"


def test_passes_partition_lower_mip():
    """The partition and lower-mip passes: specs in reports, module.mip set and verified,
    per-block statistics; Module.copy copies the MIP."""
    from tests.conftest import MODELS

    mod = tamec.compile(str(MODELS / "mlp_sign.onnx"), list(DEFAULT_PIPELINE) + ["partition", "lower-mip"])
    assert mod.reports["partition"][0]["kind"] == "binarized" and "lowered" in mod.properties
    assert [b.name for b in mod.mip.blocks] == [d["name"] for d in mod.reports["partition"]]
    stats = mod.history[-1].stats
    assert stats["blocks"] == 3 and stats["big_m_rows"] > 0 and stats["max_m"] > 0
    per = stats["per_block"]["layer1"]
    assert per["binary"] == 64 * 2 * 2 and per["big_m_rows"] == 2 * 64 and per["seconds"] >= 0
    cp = mod.copy()
    assert cp.mip is not mod.mip and cp.mip.blocks[0] is not mod.mip.blocks[0]


def test_unbounded_preactivation_asks_for_input_bounds():
    """No bounds pass and a real first layer: the error names the threshold and asks for --input-bounds."""
    from tests.conftest import MODELS

    mod = tamec.compile(str(MODELS / "mlp_sign.onnx"), ["canonicalize", "binarize-weights", "fold-thresholds"])
    with pytest.raises(UnsupportedModelError, match="--input-bounds") as e:
        lower_inference(mod.graph)
    assert e.value.node and "Threshold" in str(e.value)


@pytest.mark.parametrize("where,op_type", [("block", "Tanh"), ("head", "Sigmoid")])
def test_unsupported_op_named(where, op_type):
    """An op the MIP lowering cannot encode (in a binarized block or in the head) is an error
    naming the op, its ONNX node and what is supported."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.choice([-1.0, 1.0], (4, 3)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (3, 2)).astype(np.float32)}
    if where == "block":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
                 helper.make_node(op_type, ["s"], ["t"], name="bad_node"),
                 helper.make_node("Sign", ["t"], ["y"], name="sign")]
        out = ("y", ["N", 3])
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
                 helper.make_node("Sign", ["s"], ["a"], name="sign"),
                 helper.make_node("MatMul", ["a", "w2"], ["h"], name="mm2"),
                 helper.make_node(op_type, ["h"], ["y"], name="bad_node")]
        out = ("y", ["N", 2])
    m = model(nodes, [("x", ["N", 4])], [out], inits)
    mod = run_pipeline(bipolar_input(tamec.load(m)), None)
    with pytest.raises(UnsupportedModelError, match=op_type) as e:
        partition(mod.graph)
    assert "bad_node" in str(e.value) and "tamec.Linear" in str(e.value)


def test_maxpool_of_real_tensor_rejected():
    """MaxPool of a real tensor is not an OR: rejected with the reason."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2]),
             helper.make_node("Sign", ["p"], ["y"], name="sign")]
    m = model(nodes, [("x", ["N", 1, 4])], [("y", ["N", 1, 3])])
    mod = tamec.compile(m)
    with pytest.raises(UnsupportedModelError, match="binary or ternary"):
        partition(mod.graph)


# ------------------------------------------------------------------------------------------------
# speed
# ------------------------------------------------------------------------------------------------
def lfc_model(widths=(784, 1024, 1024, 1024, 10), seed=0):
    """The LFC shape: MatMul with +-1 weights -> BN -> Sign, three times, then MatMul -> BN."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"w{i}"] = rng.choice([-1.0, 1.0], (a, b)).astype(np.float32)
        inits[f"g{i}"] = (rng.uniform(0.5, 1.5, b) * rng.choice([-1, 1], b, p=[0.25, 0.75])).astype(np.float32)
        inits[f"b{i}"] = rng.normal(0, 0.3, b).astype(np.float32)
        inits[f"m{i}"] = rng.normal(0, 3, b).astype(np.float32)
        inits[f"v{i}"] = rng.uniform(50, 200, b).astype(np.float32)
        last = i == len(widths) - 2
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"s{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("BatchNormalization", [f"s{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"],
                                      ["y" if last else f"z{i}"], name=f"bn{i}"))
        if not last:
            nodes.append(helper.make_node("Sign", [f"z{i}"], [f"a{i}"], name=f"sign{i}"))
            cur = f"a{i}"
    return model(nodes, [("x", ["N", widths[0]])], [("y", ["N", widths[-1]])], inits)


@pytest.mark.slow
def test_lfc_lowering_speed(capsys):
    """LFC size (784-1024-1024-1024-10): each layer lowers in well under a second (bound here
    generous: 5 s); the per-layer times are in Block.meta["seconds"] and printed."""
    mod = tamec.compile(lfc_model())
    t0 = time.perf_counter()
    mip = lower_inference(mod.graph)
    total = time.perf_counter() - t0
    verify_mip(mip)
    with capsys.disabled():
        print("\nLFC lowering: " + ", ".join(f"{b.name} {b.meta['seconds']:.3f}s" for b in mip.blocks)
              + f"; total {total:.3f}s")
    assert [b.meta["kind"] for b in mip.blocks] == ["binarized"] * 3 + ["head"]
    assert all(b.meta["seconds"] < 5.0 for b in mip.blocks)
    assert mip.block("layer1").group("a1+").size == 1024
    rows = mip.block("layer1").rows
    assert sum(r.A.nnz for r in rows if r.kind == "linear") == 2 * 1024 * 1024 + 1024


@pytest.mark.parametrize("attrs,wshape,xshape", [
    ({"strides": [2, 1], "pads": [1, 0, 0, 2]}, (4, 3, 3, 2), (3, 7, 6)),
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (2, 1, 2, 2), (1, 5, 5)),
    ({"group": 2, "strides": [2, 2]}, (4, 2, 3, 3), (4, 7, 7)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (3, 2, 2, 2), (2, 5, 4)),
    ({"pads": [1, 2], "strides": [3]}, (2, 2, 3), (2, 8)),
])
def test_conv_matrix_equals_evaluator(attrs, wshape, xshape):
    """The Toeplitz matrix of a Conv (pads, strides, dilations, groups, auto_pad, 1-D and 2-D)
    times a flattened input equals the evaluator's Conv."""
    from tamec.ir.graph import Graph, Op, Value
    from tamec.lower.inference import _conv_matrix

    rng = np.random.default_rng(1)
    w = rng.normal(size=wshape).astype(np.float64)
    x = rng.normal(size=(1,) + xshape)
    T, out_ex = _conv_matrix(w, attrs, xshape)
    g = Graph("conv", {"": 13})
    g.add_value(Value("x", (1,) + xshape, "float64"))
    g.add_const("w", w)
    g.add_value(Value("y", None, "float64"))
    g.add_op(Op("conv", "Conv", ["x", "w"], ["y"], dict(attrs, kernel_shape=list(wshape[2:]))))
    g.inputs, g.outputs = ["x"], ["y"]
    ref = Evaluator(g).run({"x": x})["y"]
    assert ref.shape[1:] == out_ex
    np.testing.assert_allclose(T @ x.reshape(-1), ref.reshape(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attrs,xshape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 4, 5)),
    ({"kernel_shape": [3, 2], "pads": [1, 1, 1, 0], "strides": [2, 1]}, (1, 5, 4)),
    ({"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]}, (1, 5, 5)),
    ({"kernel_shape": [2, 2], "dilations": [2, 1]}, (1, 5, 3)),
])
def test_pool_windows_equal_evaluator(attrs, xshape):
    """MaxPool windows (pads never win, strides, dilations, ceil_mode): the max over the window
    index lists equals the evaluator's MaxPool."""
    from tamec.ir.graph import Graph, Op, Value
    from tamec.lower.inference import _window_index

    rng = np.random.default_rng(2)
    x = rng.choice([-1.0, 0.0, 1.0], size=(1,) + xshape)
    out_sp, pos = _window_index(attrs, xshape[1:], attrs["kernel_shape"], bool(attrs.get("ceil_mode", 0)))
    flat = x[0].reshape(xshape[0], -1)
    vals = np.where(pos[None] >= 0, flat[:, np.maximum(pos, 0)], -np.inf).max(-1)
    g = Graph("pool", {"": 13})
    g.add_value(Value("x", (1,) + xshape, "float64"))
    g.add_value(Value("y", None, "float64"))
    g.add_op(Op("pool", "MaxPool", ["x"], ["y"], dict(attrs)))
    g.inputs, g.outputs = ["x"], ["y"]
    ref = Evaluator(g).run({"x": x})["y"]
    assert ref.shape[2:] == out_sp
    np.testing.assert_array_equal(vals.reshape(-1), ref.reshape(-1))


def test_lower_mip_training_mode():
    """lower-mip with mode "training" builds the training MIP of the graph's layer widths on the
    given data (weights free, one training block)."""
    from tamec.passmanager import PassContext

    m = bipolar_dense_bn_sign(k=4, n=3)
    mod = run_pipeline(bipolar_input(tamec.load(m)), None)
    x = all_bipolar(4)[:5]
    y = np.array([0, 1, 2, 0, 1])
    ctx = PassContext(options={"mode": "training", "data": (x, y)})
    mod = run_pipeline(mod, ["partition", "lower-mip"], ctx=ctx)
    (b,) = mod.mip.blocks
    assert b.mode == "training" and any(v.role == "weight" for v in b.vars)
    assert mod.history[-1].stats["mode"] == "training"

"""tame-check: every block of every bundled model (and TFC_1W1A) is certified nice and
semialgebraic; hand-made non-nice blocks (unbounded integer, Sin of an unbounded input, rounding
with an irrational coefficient, Log near 0) are rejected naming the node and the reason; with
require_nice the pass turns a not-nice report into a PassError."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import tamec
from tamec.errors import PassError
from tamec.ir.graph import REAL, Graph, Op, Value
from tamec.ir.mip import Block, VarGroup
from tamec.passmanager import PassContext, get_pass
from tamec.tame import R_AN, R_AN_EXP, R_EXP, SEMIALGEBRAIC, LOCAL, certify_block, join_structures
from tests.conftest import all_models

PIPELINE = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip,dualize,tame-check"


@pytest.fixture(scope="module")
def mlp():
    """mlp_sign compiled through tame-check (shared by the tampering tests)."""
    from tests.conftest import bundled_models

    path = next(p for p in bundled_models() if p.stem == "mlp_sign")
    return tamec.compile(str(path), PIPELINE)


@pytest.mark.parametrize("path", all_models())
def test_every_block_nice(path):
    """Every block is nice, semialgebraic, Lipschitz on the box, lists all its binaries with
    finite bounds, flags each threshold as discontinuous, and the report is plain JSON."""
    m = tamec.compile(str(path), PIPELINE)
    certs = m.reports["tame-check"]
    assert [c["block"] for c in certs] == [b.name for b in m.mip.blocks]
    json.dumps(certs)  # plain JSON-able
    for c, b in zip(certs, m.mip.blocks):
        assert c["verdict"] == "nice", (c["block"], c["reason"], c["node"])
        assert c["structure"] == SEMIALGEBRAIC
        assert c["rational_data"] is True
        assert c["lipschitz"] == "Lipschitz on the box"
        ints = {g["group"] for g in c["compactness"]["integer"]}
        assert ints == {v.name for v in b.vars if v.kind != "continuous"}
        assert all(g["finite"] for g in c["compactness"]["integer"])
        thresholds = [o for o in b.ops if m.graph.op(o).op_type == "Threshold"]
        assert sorted(d["op"] for d in c["discontinuous_ops"]) == sorted(thresholds)
        assert all("no conservative field" in d["note"] for d in c["discontinuous_ops"])
        pieces = c["nonsmooth_pieces"]
        assert pieces["total"] == sum(pieces["per_op_type"].values())
        assert (pieces["per_op_type"].get("tamec.Threshold", 0) > 0) == bool(thresholds)
    stats = m.history[-1].stats
    assert stats["blocks"] == stats["nice"] == len(certs)
    assert stats["structures"] == {SEMIALGEBRAIC: len(certs)}


def test_threshold_pieces_counted_per_neuron(mlp):
    """mlp_sign's ternary Sign has 3 pieces per neuron (64 neurons), the head none."""
    certs = {c["block"]: c for c in mlp.reports["tame-check"]}
    assert certs["layer0"]["nonsmooth_pieces"] == {"per_op_type": {"tamec.Threshold": 192}, "total": 192}
    assert certs["head"]["nonsmooth_pieces"]["total"] == 0


def _tampered(mlp):
    """The compiled mlp_sign with layer1's pre-activation group made an unbounded integer group."""
    mod = mlp.copy()
    b = mod.mip.block("layer1")
    v = b.group("/fc2/MatMul_output_0")
    v.kind = "integer"
    v.ub[:] = np.inf
    return mod, b


def test_unbounded_integer_rejected(mlp):
    """An integer group with an infinite bound makes the block not nice, naming group, value, node."""
    mod, b = _tampered(mlp)
    c = certify_block(mod.graph, b)
    assert c["verdict"] == "not nice"
    assert "/fc2/MatMul_output_0" in c["reason"] and "unbounded" in c["reason"] and "compact" in c["reason"]
    assert c["node"] == "/fc2/MatMul"
    assert c["compactness"]["compact"] is False
    assert c["lipschitz"] != "Lipschitz on the box"
    # the untouched block of the same module is still nice
    assert certify_block(mod.graph, mod.mip.block("layer0"))["verdict"] == "nice"


def test_pass_reports_then_require_nice_raises(mlp):
    """The pass reports a not-nice block without raising; require_nice=True makes it a PassError
    naming the block, the op, the node and the reason."""
    mod, _ = _tampered(mlp)
    p = get_pass("tame-check")
    res = p.run(mod, PassContext())
    verdicts = {c["block"]: c["verdict"] for c in res.module.reports["tame-check"]}
    assert verdicts == {"layer0": "nice", "layer1": "not nice", "head": "nice"}
    assert res.stats["nice"] == 2 and res.stats["not_nice"] == ["layer1"]
    with pytest.raises(PassError) as e:
        p.run(mod, PassContext(options={"require_nice": True}))
    msg = str(e.value)
    assert "layer1" in msg and "/fc2/MatMul" in msg and "unbounded" in msg
    assert e.value.node == "/fc2/MatMul" and e.value.op
    # a nice module passes require_nice
    assert p.run(mlp, PassContext(options={"require_nice": True})).stats["nice"] == 3


def _graph(*chain, x_bounds=None):
    """x -> op1 -> op2 ... : each chain item (op_type, node, attrs, const operand or None, out bounds)."""
    g = Graph("t")
    g.add_value(Value("x", ("N", 4), "float32", REAL,
                      bounds=None if x_bounds is None else (np.full(4, x_bounds[0]), np.full(4, x_bounds[1]))))
    g.inputs = ["x"]
    prev, ids = "x", []
    for k, (t, node, attrs, const, bounds) in enumerate(chain):
        ins = [prev]
        if const is not None:
            g.add_const(f"c{k}", np.asarray(const, np.float32))
            ins.append(f"c{k}")
        out = f"v{k}"
        g.add_value(Value(out, ("N", 4), "float32", REAL,
                          bounds=None if bounds is None else (np.full(4, bounds[0]), np.full(4, bounds[1]))))
        g.add_op(Op(f"op{k}", t, ins, [out], dict(attrs), "", (node,)))
        prev, ids = out, ids + [f"op{k}"]
    g.outputs = [prev]
    lo, hi = x_bounds or (-np.inf, np.inf)
    block = Block("b", ops=tuple(ids), vars=[VarGroup("x", (4,), "continuous", lo, hi, "input", "x")])
    return g, block


def test_erf_needs_a_proven_box():
    """Erf (analytic) of an unbounded input is rejected naming the node; on a finite box it is
    R_an, with Exp it is R_an,exp."""
    g, b = _graph(("Erf", "my_erf", {}, None, (-1, 1)))
    c = certify_block(g, b)
    assert c["verdict"] == "not nice" and c["node"] == "my_erf" and c["op"] == "op0"
    assert "Erf" in c["reason"] and "unbounded" in c["reason"] and "box" in c["reason"]
    g, b = _graph(("Erf", "my_erf", {}, None, (-1, 1)), x_bounds=(-3.0, 3.0))
    c = certify_block(g, b)
    assert c["verdict"] == "nice" and c["structure"] == R_AN
    g, b = _graph(("Exp", "e", {}, None, (0, 30)), ("Erf", "c", {}, None, (-1, 1)), x_bounds=(-3.0, 3.0))
    assert certify_block(g, b)["structure"] == R_AN_EXP


def test_log_needs_positive_input():
    """Log is R_exp only on (0, inf): bounds touching 0 are rejected, positive bounds accepted."""
    g, b = _graph(("Log", "lg", {}, None, None), x_bounds=(0.0, 1.0))
    c = certify_block(g, b)
    assert c["verdict"] == "not nice" and c["node"] == "lg" and "(0, inf)" in c["reason"]
    g, b = _graph(("Sigmoid", "s", {}, None, (0.1, 0.9)), ("Log", "lg", {}, None, None), x_bounds=(-2.0, 2.0))
    c = certify_block(g, b)
    assert c["verdict"] == "nice" and c["structure"] == R_EXP
    assert c["lipschitz"].startswith("not established")
    g, b = _graph(("Relu", "r", {}, None, (0, 1)), x_bounds=(-1.0, 1.0))
    b.meta["objective"] = "cross-entropy"  # a cross-entropy objective lifts a PL block to R_exp
    assert certify_block(g, b)["structure"] == R_EXP


def test_rounding_with_irrational_coefficient_rejected():
    """floor(c x) on a box: rational c is semialgebraic with 4 pieces per element and flagged
    discontinuous; the documented `irrational=1` flag on the Mul makes it not nice."""
    chain = [("Mul", "scale", {}, 3.0, (0, 3)), ("Floor", "fl", {}, None, (0, 3))]
    g, b = _graph(*chain, x_bounds=(0.0, 1.0))
    c = certify_block(g, b)
    assert c["verdict"] == "nice" and c["structure"] == SEMIALGEBRAIC
    assert c["nonsmooth_pieces"]["per_op_type"] == {"Floor": 16}
    assert [d["node"] for d in c["discontinuous_ops"]] == ["fl"]
    chain[0] = ("Mul", "scale", {"irrational": 1}, 3.0, (0, 3))
    g, b = _graph(*chain, x_bounds=(0.0, 1.0))
    c = certify_block(g, b)
    assert c["verdict"] == "not nice" and c["node"] == "fl"
    assert "irrational" in c["reason"] and "rational coefficients" in c["reason"]
    # rounding an unbounded input with a rational coefficient: only locally o-minimal, not nice
    g, b = _graph(("Floor", "fl", {}, None, None))
    c = certify_block(g, b)
    assert c["structure"] == LOCAL and c["nonsmooth_pieces"]["total"] is None and c["verdict"] == "not nice"


def test_unknown_op_and_nonfinite_constant_rejected():
    """An op outside the known definable primitives, and an inf constant, are not nice."""
    g, b = _graph(("MysteryOp", "mystery", {}, None, None), x_bounds=(0.0, 1.0))
    c = certify_block(g, b)
    assert c["verdict"] == "not nice" and c["node"] == "mystery" and "not known" in c["reason"]
    g, b = _graph(("Add", "add", {}, np.inf, None), x_bounds=(0.0, 1.0))
    c = certify_block(g, b)
    assert c["rational_data"] is False and c["verdict"] == "not nice"


def test_join_structures():
    """The join is the smallest structure containing all parts."""
    assert join_structures([]) == SEMIALGEBRAIC
    assert join_structures([SEMIALGEBRAIC, R_EXP]) == R_EXP
    assert join_structures([R_AN, SEMIALGEBRAIC]) == R_AN
    assert join_structures([R_AN, R_EXP]) == R_AN_EXP
    assert join_structures([R_AN_EXP, LOCAL]) == LOCAL


def _supported():
    from tamec.ops import QONNX_DOMAIN, QONNX_OPS, STANDARD_OPS, TAMEC_DOMAIN, TAMEC_OPS

    return ({("", t) for t in STANDARD_OPS} | {(QONNX_DOMAIN, t) for t in QONNX_OPS}
            | {(TAMEC_DOMAIN, t) for t in TAMEC_OPS})


def test_every_supported_op_has_a_tame_class_and_no_other_op_does():
    """The tame classification covers exactly the registry's ops: each supported op (CastLike,
    Mean, Quant, MultiThreshold, Trunc ... included) is known to op_structure, and ops tamec cannot
    import (Sin, Mod, Step, Tile, a QONNX-named standard op, ...) are "not known"."""
    from tamec.ops import QONNX_DOMAIN, REGISTRY, is_supported
    from tamec.tame import op_structure

    assert {(d.domain, d.op_type) for d in REGISTRY.values() if d.tame} == _supported()

    def known(domain, op_type):
        g = Graph("t")
        g.add_value(Value("x", ("N", 4), "float32", REAL, bounds=(np.full(4, 1.0), np.full(4, 2.0))))
        g.add_value(Value("y", ("N", 4), "float32", REAL))
        op = Op("op", op_type, ["x"], ["y"], {}, domain, ("n",))
        _, problem = op_structure(g, op)
        return problem is None or "not known" not in problem["reason"]

    for domain, op_type in sorted(_supported()):
        assert known(domain, op_type), f"{domain}.{op_type}"
    unsupported = [("", t) for t in "Sin Cos Mod Step Heaviside Tile Split Gelu PRelu Selu HardTanh ReduceMin".split()]
    unsupported += [(QONNX_DOMAIN, "Relu"), ("tamec", "Sign"), ("", "MultiThreshold")]
    for domain, op_type in unsupported:
        assert not is_supported(domain, op_type)
        assert not known(domain, op_type), f"{domain}.{op_type}"


def test_registry_refuses_an_op_without_a_known_tame_class_or_defined_twice():
    """An op enters the registry only with a tame class tame.py knows, and only once, so the
    classification cannot drift from what the importer accepts."""
    from tamec.ops import registry

    with pytest.raises(ValueError, match="unknown tame class"):
        registry.define("", "Sin", "smooth", "trigonometric")
    with pytest.raises(ValueError, match="defined twice"):
        registry.define("", "Relu", "piecewise", registry.PL)
    assert "Sin" not in registry.REGISTRY


def test_multilevel_quantizers_are_discontinuous_with_their_levels():
    """MultiThreshold (2 thresholds: 3 levels) and a 2-bit Quant (4 levels) are nice, listed as
    discontinuous, and counted with their levels per element."""
    from tamec.ops import QONNX_DOMAIN

    g, b = _graph(("Relu", "r", {}, None, (0, 1)), x_bounds=(-1.0, 1.0))
    g.add_const("t", np.zeros((4, 2), np.float32))
    for k, v in {"s": 0.5, "z": 0.0, "bw": 2.0}.items():
        g.add_const(k, np.array(v, np.float32))
    for name, op_type, ins in (("mt", "MultiThreshold", ["v0", "t"]), ("q", "Quant", ["v0", "s", "z", "bw"])):
        g.add_value(Value(f"y{name}", ("N", 4), "float32", REAL))
        g.add_op(Op(name, op_type, ins, [f"y{name}"], {}, QONNX_DOMAIN, (name,)))
    b = Block("b", ops=("op0", "mt", "q"), vars=b.vars)
    c = certify_block(g, b)
    assert c["verdict"] == "nice", c["reason"]
    assert [d["node"] for d in c["discontinuous_ops"]] == ["mt", "q"]
    per = c["nonsmooth_pieces"]["per_op_type"]
    assert per[f"{QONNX_DOMAIN}.MultiThreshold"] == 12 and per[f"{QONNX_DOMAIN}.Quant"] == 16


def test_tame_check_runs_after_dualize():
    """tame-check reads what dualize produced: a pipeline with tame-check before dualize is refused
    naming the missing `dualized`, and in the right order every block's `dual` field is feasible."""
    from tests.conftest import bundled_models

    path = str(next(p for p in bundled_models() if p.stem == "mlp_sign"))
    with pytest.raises(PassError, match="tame-check requires .*dualized"):
        tamec.compile(path, PIPELINE.replace("dualize,tame-check", "tame-check,dualize"))


def test_dual_infeasible_block_not_nice(mlp):
    """A block whose dualize report says a dual function is not dual feasible is not nice: the
    reason says so and names the Threshold's ONNX node; the pass's require_nice raises on it."""
    mod = mlp.copy()
    mod.reports["dualize"] = copy.deepcopy(mlp.reports["dualize"])  # Module.copy shares the reports
    rep = next(r for r in mod.reports["dualize"] if r["block"] == "layer1")
    key = rep["keys"][0]
    key["bb"]["-1"]["certificate"]["dual_feasible"].update(holds=False, worst_violation=2e4)
    rep["summary"]["dual_feasible"] = False
    thr = mod.graph.op(key["covers"][0]["op"])
    p = get_pass("tame-check")
    certs = {c["block"]: c for c in p.run(mod, PassContext()).module.reports["tame-check"]}
    c = certs["layer1"]
    assert c["verdict"] == "not nice"
    assert "dual is not feasible" in c["reason"] and c["op"] == thr.id and c["node"] == ", ".join(thr.origin)
    assert c["dual"]["feasible"] is False
    assert all(c["dual"]["feasible"] is True for c in mlp.reports["tame-check"] if c["block"] != "head")
    assert c["lipschitz"] != "Lipschitz on the box"
    assert certs["layer0"]["verdict"] == "nice"
    with pytest.raises(PassError, match="layer1 is not nice: the relaxation's dual is not feasible"):
        p.run(mod, PassContext(options={"require_nice": True}))


@pytest.mark.parametrize("op_type", ["Floor", "Round"])
def test_rounding_of_unbounded_input_not_nice(op_type):
    """Floor/Round of an unbounded input has infinitely many jumps: not nice, naming the node and
    the unbounded input; on a box it is nice (semialgebraic)."""
    g, b = _graph((op_type, "rnd", {}, None, None))
    c = certify_block(g, b)
    assert c["verdict"] == "not nice" and c["node"] == "rnd" and c["op"] == "op0"
    assert op_type in c["reason"] and "unbounded" in c["reason"] and "bounded box" in c["reason"]
    g, b = _graph((op_type, "rnd", {}, None, (-2, 2)), x_bounds=(-2.0, 2.0))
    assert certify_block(g, b)["verdict"] == "nice"


@pytest.mark.parametrize("op_type", ["Floor", "Sign"])
def test_jump_without_a_dual_is_not_lipschitz(op_type):
    """A nice semialgebraic block holding a Floor or a raw ONNX Sign (no folded Threshold whose
    rows a certified dual covers) keeps its jump: not certified Lipschitz, naming the node."""
    g, b = _graph(("Mul", "scale", {}, 3.0, (0, 3)), (op_type, "jump", {}, None, (-1, 3)), x_bounds=(0.0, 1.0))
    c = certify_block(g, b, {"block": "b", "rows": [], "keys": []})
    assert c["verdict"] == "nice" and c["structure"] == SEMIALGEBRAIC
    assert c["lipschitz"].startswith("not established") and "op1" in c["lipschitz"] and "jump" in c["lipschitz"]
    g, b = _graph(("Mul", "scale", {}, 3.0, (0, 3)), ("Relu", "r", {}, None, (0, 3)), x_bounds=(0.0, 1.0))
    assert certify_block(g, b, {"block": "b", "rows": [], "keys": []})["lipschitz"] == "Lipschitz on the box"


def test_threshold_with_uncovered_rows_is_not_lipschitz(mlp):
    """A Threshold counts as replaced by its dual only where dualize covers its rows: with one of
    layer1's Threshold row groups uncovered in the report, layer1 is no longer Lipschitz."""
    rep = next(r for r in mlp.reports["dualize"] if r["block"] == "layer1")
    block = mlp.mip.block("layer1")
    assert certify_block(mlp.graph, block, rep)["lipschitz"] == "Lipschitz on the box"
    thr = next(o for o in block.ops if mlp.graph.op(o).op_type == "Threshold")
    bad = copy.deepcopy(rep)
    row = next(r for r in bad["rows"] if any(g.name == r["rows"] and g.op == thr for g in block.rows))
    row["covered_by"] = None
    lip = certify_block(mlp.graph, block, bad)["lipschitz"]
    assert lip.startswith("not established") and thr in lip and "discontinuous" in lip

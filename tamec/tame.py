"""Tame-check analysis: is a MIP block *nice* (compact, definable, finitely many nonsmooth pieces)?

`certify_block(graph, block, dual)` returns a plain JSON-able certificate for one
`tamec.ir.mip.Block` whose `Block.ops` name ops of `graph`; `dual` is the block's dualize report
(`module.reports["dualize"]`: the pass runs after dualize, so it checks what dualize produced). The
other public functions compute one field each and take the same `(graph, block)` pair, so tests
can call them on hand-built graphs and blocks.

Fields of a certificate:
  structure          the smallest o-minimal structure covering the block's ops and its objective:
                     "semialgebraic" < "R_exp", "R_an (restricted to a proven box)" < "R_an,exp";
                     "locally o-minimal" when a rounding op acts on an unbounded input (infinitely
                     many jumps: not nice, the node is named);
  dual               the relaxation's dual, from the dualize report: "feasible" True (every dual
                     function of the block is certified dual feasible), False (a problem naming the
                     key's node: not nice) or None (no dual report, or no dual function in it);
  compactness        every integer/binary variable group with its bounds and where they come from;
  nonsmooth_pieces   pieces per op type (summed over neurons) and the total;
  discontinuous_ops  every definable but non-Lipschitz op (threshold/sign/step, rounding);
  rational_data      all constants are finite floats (a finite float is a rational number);
  verdict, reason, node, op, problems   "nice" or "not nice", with the first problem and all;
  lipschitz          "Lipschitz on the box" or why not: besides the structure and finite bounds,
                     every discontinuous op must be a Threshold whose rows dualize covers (its jump
                     is replaced by the certified dual surrogate); a Floor, a raw Sign, a quantizer
                     or a Threshold with uncovered rows keeps its jump, so no Lipschitz claim.

Mechanisms a test can set (a float file cannot express them, so they are flags):
  * an irrational coefficient: op attribute `irrational=1` on a rounding op (Floor/Ceil/Round)
    or on the op producing its input (e.g. the Mul by the constant), meaning "this coefficient
    stands for an irrational number";
  * a nonlinear objective: `block.meta["objective"]` naming the loss ("cross-entropy", "softmax",
    "log-sum-exp", "linear", ...); a linear `block.c` is semialgebraic.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tamec.ops import QONNX_DOMAIN, lookup
from tamec.ops import registry as R
from tamec.ops.threshold import ThresholdParams

SEMIALGEBRAIC = "semialgebraic"
R_EXP = "R_exp"
R_AN = "R_an (restricted to a proven box)"
R_AN_EXP = "R_an,exp"
LOCAL = "locally o-minimal"

# Each op's tame class is its registry entry's (tamec/ops): one definition, so the classes cover
# exactly the ops tamec imports.
STRUCTURE = {R.PL: SEMIALGEBRAIC, R.STEP: SEMIALGEBRAIC, R.POLY: SEMIALGEBRAIC, R.RATIONAL: SEMIALGEBRAIC,
             R.EXP: R_EXP, R.LOG: R_EXP, R.ANALYTIC: R_AN, R.ROUNDING: SEMIALGEBRAIC}


def tame_class(op) -> str | None:
    d = lookup(op)
    return None if d is None else d.tame


OBJECTIVES = {"linear": SEMIALGEBRAIC, "none": SEMIALGEBRAIC, "hinge": SEMIALGEBRAIC,
              "cross-entropy": R_EXP, "softmax": R_EXP, "log-sum-exp": R_EXP, "logistic": R_EXP}

JUMP_NOTE = "no conservative field across its jumps; the dual surrogate is used"


def node_name(op) -> str:
    """The ONNX node(s) an op came from, or its id when it has no provenance."""
    return ", ".join(op.origin) if op.origin else op.id


def join_structures(structs) -> str:
    """The smallest structure of the list: exp and an join to R_an,exp; local dominates."""
    s = set(structs)
    if LOCAL in s:
        return LOCAL
    exp, an = R_EXP in s or R_AN_EXP in s, R_AN in s or R_AN_EXP in s
    return R_AN_EXP if exp and an else R_EXP if exp else R_AN if an else SEMIALGEBRAIC


def _bounds(graph, name: str) -> tuple[float, float] | None:
    """(min lo, max hi) of a value: constants exactly, else Value.bounds, else its domain."""
    v = graph.values.get(name)
    if v is None:
        return None
    if v.const is not None:
        a = np.asarray(v.const, np.float64)
        return (float(np.min(a)), float(np.max(a))) if a.size else (0.0, 0.0)
    if v.bounds is not None:
        return float(np.min(v.bounds[0])), float(np.max(v.bounds[1]))
    lo, hi = v.domain.interval()
    return float(lo), float(hi)


def _finite(b) -> bool:
    return b is not None and math.isfinite(b[0]) and math.isfinite(b[1])


def _numel(graph, name: str) -> int:
    """Elements of a value for one example (batch dim dropped; symbolic dims count as 1)."""
    v = graph.values.get(name)
    if v is None or not v.shape:
        return 1
    return int(np.prod([d if isinstance(d, int) else 1 for d in v.shape[1:]], dtype=np.int64))


def _irrational(graph, op) -> bool:
    """The documented flag: `irrational` set on the op or on the producer of its first input."""
    if op.attrs.get("irrational"):
        return True
    p = graph.producer(op.inputs[0]) if op.inputs and op.inputs[0] else None
    return bool(p is not None and p.attrs.get("irrational"))


def _has_const_operand(graph, op) -> bool:
    return any(i and graph.values.get(i) is not None and graph.values[i].const is not None for i in op.inputs)


def op_structure(graph, op) -> tuple[str, dict | None]:
    """(structure of the op, problem or None). A problem is {op, node, reason}."""
    t = op.op_type
    cls = tame_class(op)
    where = {"op": op.id, "node": node_name(op), "op_type": op.qualname}
    x = op.inputs[0] if op.inputs else ""
    if cls is None:
        return SEMIALGEBRAIC, {**where, "reason": f"op type {op.qualname} is not known to be definable in an "
                               "o-minimal structure"}
    if cls == R.RATIONAL:
        den = op.inputs[1] if t == "Div" and len(op.inputs) > 1 else x
        b = _bounds(graph, den)
        if b is not None and b[0] <= 0 <= b[1]:
            return SEMIALGEBRAIC, {**where, "reason": f"division by %{den} whose bounds "
                                   f"[{b[0]:.6g}, {b[1]:.6g}] contain 0: a pole, not definable as a function there"}
        return SEMIALGEBRAIC, None
    if cls == R.LOG:
        b = _bounds(graph, x)
        if b is None or not b[0] > 0:
            lo = "unknown" if b is None else f"{b[0]:.6g}"
            return R_EXP, {**where, "reason": f"Log of %{x} whose lower bound {lo} is not > 0: "
                           "log is definable in R_exp only on (0, inf)"}
        return R_EXP, None
    if cls == R.ANALYTIC:
        b = _bounds(graph, x)
        if not _finite(b):
            return R_AN, {**where, "reason": f"{t} of %{x} with unbounded input {b}: analytic functions are "
                          "definable (in R_an) only restricted to a proven compact box; tighten its bounds"}
        return R_AN, None
    if cls == R.ROUNDING:
        if _irrational(graph, op):
            return LOCAL, {**where, "reason": f"{t} with an irrational coefficient (flag `irrational`): "
                           "rounding is locally o-minimal only with rational coefficients"}
        b = _bounds(graph, x)
        if not _finite(b):  # infinitely many jumps: definable only in a locally o-minimal structure
            return LOCAL, {**where, "reason": f"{t} of %{x} with unbounded input {b}: rounding is semilinear only "
                           "on a bounded box (unbounded, it has infinitely many jumps and is only locally "
                           "o-minimal); tighten the bounds of its input"}
        return SEMIALGEBRAIC, None
    return STRUCTURE[cls], None


def objective_structure(block) -> tuple[str, dict | None]:
    """Structure of the block's objective: a linear `c` is semialgebraic; `meta["objective"]`
    names a loss (see OBJECTIVES)."""
    name = block.meta.get("objective")
    if name is None:
        return SEMIALGEBRAIC, None
    s = OBJECTIVES.get(str(name))
    if s is None:
        return SEMIALGEBRAIC, {"op": "", "node": f"objective of block {block.name}", "op_type": "objective",
                               "reason": f"objective {name!r} is not known to be definable"}
    return s, None


def _block_ops(graph, block) -> list:
    return [graph.op(i) for i in block.ops]


def structure(graph, block) -> tuple[str, list[dict]]:
    """The smallest structure covering the block's ops and its objective, and the problems found."""
    structs, problems = [], []
    for op in _block_ops(graph, block):
        s, p = op_structure(graph, op)
        structs.append(s)
        if p:
            problems.append(p)
    s, p = objective_structure(block)
    structs.append(s)
    if p:
        problems.append(p)
    return join_structures(structs), problems


def compactness(graph, block) -> tuple[dict, list[dict]]:
    """Every integer/binary group with its bounds and their source, the pre-activation groups'
    bound sources, and a problem for each integer group with an infinite bound."""
    pre = {op.inputs[0] for op in _block_ops(graph, block) if tame_class(op) == R.STEP and op.inputs}
    ints, preacts, problems = [], [], []
    for v in block.vars:
        val = graph.values.get(v.encodes) if v.encodes else None
        lo = float(np.min(v.lb)) if v.size else 0.0
        hi = float(np.max(v.ub)) if v.size else 0.0
        entry = {"group": v.name, "kind": v.kind, "size": v.size, "lb": lo, "ub": hi, "role": v.role,
                 "encodes": v.encodes, "encoding": v.encoding}
        if v.kind != "continuous":
            finite = bool(np.all(np.isfinite(v.lb)) and np.all(np.isfinite(v.ub)))
            if v.kind == "binary" and finite and lo >= 0 and hi <= 1:
                src = "binary variable: {0,1}"
            elif val is not None and val.bounds is not None:
                src = f"Value.bounds of %{v.encodes} ({val.bounds_source or 'interval'})"
            elif val is not None and val.domain.is_integer:
                src = f"domain {val.domain} of %{v.encodes}"
            else:
                src = "variable bounds only"
            ints.append({**entry, "finite": finite, "source": src})
            if not finite:
                p = graph.producer(v.encodes) if v.encodes in graph.values else None
                problems.append({"op": p.id if p else "", "node": node_name(p) if p else f"%{v.encodes or v.name}",
                                 "op_type": p.qualname if p else "", "group": v.name, "value": v.encodes,
                                 "reason": f"integer variable group {v.name!r} (graph value %{v.encodes or '?'}) "
                                 f"is unbounded [{lo}, {hi}]: the feasible set is not compact"})
        elif v.encodes in pre:
            preacts.append({**entry, "finite": bool(np.all(np.isfinite(v.lb)) and np.all(np.isfinite(v.ub))),
                            "source": (val.bounds_source if val is not None and val.bounds_source else
                                       block.meta.get("big_m") or "interval")})
    return {"integer": ints, "pre_activation": preacts, "compact": not problems}, problems


def _pieces_per_element(graph, op) -> int | None:
    """Smooth pieces of one output element of a nonsmooth op (None: infinitely many); 0 if smooth."""
    t, cls = op.op_type, tame_class(op)
    if cls == R.STEP and op.domain == QONNX_DOMAIN and t != "BipolarQuant":
        return _levels(graph, op)
    if cls == R.STEP:
        out = graph.values.get(op.outputs[0])
        ternary = out is not None and out.domain.kind == "ternary"
        if op.qualname == "tamec.Threshold":
            p = ThresholdParams.of(op)
            ternary = ternary or (p.tie == p.tie and p.tie not in (p.lo, p.hi))
        return 3 if ternary else 2
    if t in ("Relu", "LeakyRelu", "PRelu", "Abs"):
        return 2
    if t in ("Clip", "HardTanh", "HardSigmoid"):
        return 3
    if t in ("Max", "Min"):
        return max(2, len([i for i in op.inputs if i]))
    if t in ("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"):
        k = op.attrs.get("kernel_shape")
        return int(np.prod(k)) if k is not None else 2
    if cls == R.ROUNDING:
        b = _bounds(graph, op.inputs[0])
        if not _finite(b):
            return None
        return int(math.floor(b[1]) - math.floor(b[0])) + 1
    return 0


def _levels(graph, op) -> int | None:
    """Output levels of a multi-level QONNX quantizer: thresholds + 1 (MultiThreshold), 2^bits
    (Quant: input 3, Trunc: output bit width, input 4); None when not constant."""
    if op.op_type == "MultiThreshold":
        v = graph.values.get(op.inputs[1]) if len(op.inputs) > 1 else None
        return None if v is None or v.const is None else int(np.asarray(v.const).shape[-1]) + 1
    k = 3 if op.op_type == "Quant" else 4
    v = graph.values.get(op.inputs[k]) if len(op.inputs) > k and op.inputs[k] else None
    if v is None or v.const is None:
        return None
    return 2 ** int(np.max(np.asarray(v.const)))


def nonsmooth_pieces(graph, block) -> dict:
    """Pieces summed over the neurons of each nonsmooth op type, and the total (None: infinite)."""
    per: dict[str, Any] = {}
    for op in _block_ops(graph, block):
        k = _pieces_per_element(graph, op)
        if k == 0:
            continue
        n = None if k is None else k * _numel(graph, op.outputs[0])
        prev = per.get(op.qualname, 0)
        per[op.qualname] = None if n is None or prev is None else prev + n
    total = None if any(v is None for v in per.values()) else sum(per.values())
    return {"per_op_type": per, "total": total}


def discontinuous_ops(graph, block) -> list[dict]:
    """Every definable op that is not Lipschitz, named with op id and ONNX node."""
    return [{"op": op.id, "node": node_name(op), "op_type": op.qualname, "note": JUMP_NOTE}
            for op in _block_ops(graph, block) if tame_class(op) in R.DISCONTINUOUS]


def rational_data(graph, block) -> bool:
    """True when every constant the block's ops read is a finite float (hence rational)."""
    for op in _block_ops(graph, block):
        for i in op.inputs:
            v = graph.values.get(i) if i else None
            if v is not None and v.const is not None:
                a = np.asarray(v.const)
                if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
                    return False
    return True


def dual_rows_covered(block, dual: dict | None) -> set[str]:
    """The block's row groups that the dualize report covers with dual functions (or constant bits)."""
    return {r["rows"] for r in (dual or {}).get("rows", []) if r.get("covered_by")}


def replaced_by_dual(graph, block, op, dual: dict | None) -> bool:
    """True for a Threshold of a dualized block whose rows dualize all covers: the dual surrogate
    replaces its jump (a Threshold with no rows has its bits fixed: no jump on the box)."""
    if op.qualname != "tamec.Threshold" or dual is None:
        return False
    rows = {r.name for r in block.rows if r.op == op.id}
    return rows <= dual_rows_covered(block, dual)


def dual_status(graph, block, dual: dict | None) -> tuple[dict, dict | None]:
    """(the `dual` field, problem or None): is every dual function of the block dual feasible?"""
    if dual is None:
        return {"feasible": None, "reason": "no dualize report for this block"}, None
    entries = [(k, m, g, e["certificate"]) for k in dual.get("keys", []) for m in ("lp", "bb", "chvatal")
               for g, e in k.get(m, {}).items() if "certificate" in e]
    if not entries:
        why = dual.get("reason") or dual.get("note") or "no dual function in the dualize report"
        return {"feasible": None, "reason": why}, None
    for k, m, g, c in entries:
        if not c["dual_feasible"]["holds"]:
            cov = (k.get("covers") or [{}])[0]
            op = graph.op(cov["op"]) if cov.get("op") in graph.nx.nodes else None
            where = {"op": op.id if op else "", "node": node_name(op) if op else f"block {block.name}",
                     "op_type": op.qualname if op else ""}
            worst = c["dual_feasible"].get("worst_violation")
            return ({"feasible": False, "duals": len(entries), "method": m, "g": g},
                    {**where, "reason": f"the relaxation's dual is not feasible: the {m} dual (g={g}) of a key of "
                     f"{where['node']} violates dual feasibility by {worst} (dualize certificate), so the "
                     "block's surrogate is not a certified dual function"})
    if dual.get("summary", {}).get("dual_feasible") is False:  # the summary and the keys disagree: say so
        return ({"feasible": False, "duals": len(entries)},
                {"op": "", "node": f"block {block.name}", "op_type": "",
                 "reason": "the dualize summary says dual_feasible False"})
    return {"feasible": True, "duals": len(entries), "how": "every dual function's certificate"}, None


def lipschitz(graph, block, struct: str, nice: bool, dual: dict | None = None) -> str:
    """'Lipschitz on the box' for a nice semialgebraic block whose surrogate is piecewise linear
    with finite bounds and whose every jump is replaced by a certified dual; else the reason."""
    if not nice:
        return "not established: the block is not nice"
    if struct != SEMIALGEBRAIC:
        return f"not established: structure {struct} is not semialgebraic piecewise-linear"
    for op in _block_ops(graph, block):
        if tame_class(op) in R.DISCONTINUOUS and not replaced_by_dual(graph, block, op, dual):
            return (f"not established: op {op.id} ({op.qualname}, node {node_name(op)}) is discontinuous and "
                    "no certified dual replaces it (only a Threshold whose rows dualize covers is)")
    for op in _block_ops(graph, block):
        if tame_class(op) in (R.POLY, R.RATIONAL) and not (op.op_type in ("Mul", "Div") and _has_const_operand(graph, op)):
            return f"not established: op {op.id} ({op.qualname}, node {node_name(op)}) is not piecewise linear"
    for v in block.vars:
        if not (np.all(np.isfinite(v.lb)) and np.all(np.isfinite(v.ub))):
            return f"not established: variable group {v.name!r} has infinite bounds"
    return "Lipschitz on the box"


def certify_block(graph, block, dual: dict | None = None) -> dict:
    """The full tame-check certificate of one block (plain JSON-able dict); `dual` is the block's
    dualize report (None: dual feasibility not checked, no jump counted as replaced)."""
    struct, problems = structure(graph, block)
    comp, cproblems = compactness(graph, block)
    problems = problems + cproblems
    dstat, dproblem = dual_status(graph, block, dual)
    if dproblem:
        problems.append(dproblem)
    rational = rational_data(graph, block)
    if not rational:
        problems.append({"op": "", "node": f"block {block.name}", "op_type": "",
                         "reason": "a constant is not a finite float (inf/NaN): data are not rational"})
    nice = not problems
    first = problems[0] if problems else {}
    return {"block": block.name, "structure": struct, "compactness": comp,
            "nonsmooth_pieces": nonsmooth_pieces(graph, block),
            "discontinuous_ops": discontinuous_ops(graph, block), "rational_data": rational, "dual": dstat,
            "verdict": "nice" if nice else "not nice", "reason": first.get("reason", ""),
            "node": first.get("node", ""), "op": first.get("op", ""), "problems": problems,
            "lipschitz": lipschitz(graph, block, struct, nice, dual)}

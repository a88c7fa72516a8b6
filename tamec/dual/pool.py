"""Dual functions of the OR/AND rows a binary MaxPool lowers to, one small MIP per output element.

tamec/lower/inference.py writes MaxPool of a bipolar/bin01 tensor as an OR of the window's bits
(y >= x_i, y <= sum x_i) and of a ternary tensor as an OR of the p bits and an AND of the n bits
(y+ >= p_i, y+ <= sum p_i, y- <= n_i, y- >= sum n_i - (k - 1), y+ + y- in [0, 1]). Every one of
those rows touches the bits of exactly one output element, so the rows separate per output
element j: a MIP in j's output bits y (1 or 2 binaries) whose right-hand side is affine in the
window's input bits x (the parameter, as the pre-activation is for a threshold neuron):

    A y >= d(x) = d0 + E x          (each row lo <= a y + e x <= hi gives a y >= lo - e x and
                                     -a y >= -hi + e x for its finite sides)

The rows are read from the block (not rebuilt from the lowering's formulas), so the dual covers
exactly the rows the MIP holds. Elements whose rows are equal (same window size, same padding
pattern, same encoding) share one key. Per key and upstream direction g = +1, -1 the objective is
g . (output level) in the bits (bipolar 2u - 1: 2g u; ternary p - n: g p - g n), and `lp` and
`bb` duals are built at the reference input x_ref = "the window's first element at the top level,
every other one at the bottom level" (a unique maximum, so the field says where the max routes),
and certified against the value function by enumeration on every window state (3^k ternary,
2^k binary, sampled beyond MAX_STATES) plus fractional inputs (where the LP relaxation has gaps).
At binary inputs the LP relaxation of an OR is exact (y's interval has integer ends), so both are
strong there; bb also closes the relaxation's gaps at fractional inputs.
"""
from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

from tamec.dual.certificate import certify
from tamec.dual.function import dual_function
from tamec.dual.problem import EnumProblem

ROUND = 9
MAX_STATES = 256  # window states enumerated for the minorant grid; sampled (seeded) beyond
TOP_BIT = {"pos": 1.0, "neg": 0.0, "bipolar": 1.0, "value": 1.0}  # the bit at the top level
BOTTOM_BIT = {"pos": 0.0, "neg": 1.0, "bipolar": 0.0, "value": 0.0}


def _cost(grp) -> float:
    """Coefficient of g in g . y for one output bit (bipolar 2u - 1; ternary p - n; bin01 u)."""
    return {"bipolar": 2.0, "neg": -1.0}.get(grp.encoding, 1.0)


def _out_groups(graph, block, op) -> list[str]:
    """The block's variable groups holding the MaxPool output (pos before neg)."""
    name = op.outputs[0]
    groups = block.meta.get("values", {}).get(name)
    if groups is None:
        groups = [v.name for v in block.vars if v.encodes == name and v.role != "input"]
    return list(groups)


def pool_specs(graph, block, op_id: str) -> tuple[list[dict], int]:
    """The unique per-output-element dual problems of MaxPool `op_id` in `block` (plain dicts)
    and the number of output elements."""
    op = graph.op(op_id)
    offs = block.offsets()
    col_group = np.empty(block.n_vars, object)
    for name, (a, b) in offs.items():
        col_group[a:b] = name
    groups = _out_groups(graph, block, op)
    n_out = block.group(groups[0]).size
    ycol_elem = np.full(block.n_vars, -1, np.int64)
    for gname in groups:
        a, b = offs[gname]
        ycol_elem[a:b] = np.arange(b - a)
    rgroups = [r for r in block.rows if r.op == op_id]
    R = sp.vstack([r.A for r in rgroups]).tocsr()
    lo = np.concatenate([r.lo for r in rgroups])
    hi = np.concatenate([r.hi for r in rgroups])
    rname = np.concatenate([[r.name] * r.size for r in rgroups])
    coo = R.tocoo()
    isy = ycol_elem[coo.col] >= 0
    row_elem = np.full(R.shape[0], -1, np.int64)
    row_elem[coo.row[isy]] = ycol_elem[coo.col[isy]]
    order = np.argsort(row_elem, kind="stable")
    starts = np.searchsorted(row_elem[order], np.arange(n_out + 1))
    lbv, ubv = block.lb(), block.ub()
    keys: dict[tuple, dict] = {}
    for j in range(n_out):
        rows = order[starts[j]:starts[j + 1]]
        sub = R[rows]
        ycols = [offs[gname][0] + j for gname in groups]
        xcols = sorted(set(sub.indices.tolist()) - set(ycols))
        Ay = sub[:, ycols].toarray()
        Ex = sub[:, xcols].toarray()
        A, d0, E = [], [], []
        for i in range(len(rows)):
            if np.isfinite(lo[rows[i]]):
                A.append(Ay[i]), d0.append(lo[rows[i]]), E.append(-Ex[i])
            if np.isfinite(hi[rows[i]]):
                A.append(-Ay[i]), d0.append(-hi[rows[i]]), E.append(Ex[i])
        A, E = np.array(A), np.array(E).reshape(len(d0), len(xcols))
        # window elements: an input column's offset inside its group (p and n bits of one
        # element share it); numbered 0.. in order of first appearance
        kinds = [block.group(col_group[c]).encoding for c in xcols]
        tpos = [c - offs[col_group[c]][0] for c in xcols]
        elem = {t: k for k, t in enumerate(dict.fromkeys(sorted(tpos)))}
        x_elem = [elem[t] for t in tpos]
        lb, ub = lbv[ycols].tolist(), ubv[ycols].tolist()
        cost = [_cost(block.group(gname)) for gname in groups]
        key = tuple(np.round(np.concatenate([A.ravel(), d0, E.ravel(), lb, ub, cost]), ROUND).tolist()) \
            + tuple(kinds) + tuple(x_elem)
        if key in keys:
            keys[key]["neurons"] += 1
            keys[key]["covers"][0]["elements"].append(j)
            continue
        keys[key] = {"kind": "maxpool",
                     "key": {"window": len(elem), "ternary": len(groups) == 2,
                             "encoding": block.group(groups[0]).encoding if len(groups) == 1 else "ternary",
                             "rows": len(d0), "params": len(xcols)},
                     "example": {"op": op_id, "element": j},
                     "neurons": 1, "A": A.tolist(), "d0": [float(v) for v in d0], "E": E.tolist(),
                     "x_kinds": kinds, "x_elem": x_elem, "lb": lb, "ub": ub, "cost": cost,
                     "covers": [{"op": op_id, "rows": sorted(set(rname[rows].tolist())), "elements": [j]}]}
    return list(keys.values()), n_out


def window_states(spec: dict, max_states: int = MAX_STATES, seed: int = 0) -> np.ndarray:
    """Input bit vectors x of every valid window state (each element top, bottom, or 0 for a
    ternary input), all of them up to max_states, else a seeded sample with both extremes."""
    kinds, x_elem = spec["x_kinds"], np.asarray(spec["x_elem"])
    k = int(x_elem.max()) + 1 if x_elem.size else 0
    ternary = "neg" in kinds
    levels = (1, 0, -1) if ternary else (1, -1)

    def bits(state):
        lv = np.asarray(state)[x_elem]
        return np.array([TOP_BIT[kd] if v == 1 else BOTTOM_BIT[kd] if v == -1 else 0.0
                         for kd, v in zip(kinds, lv)])

    total = len(levels) ** k
    if total <= max_states:
        states = list(itertools.product(levels, repeat=k))
    else:  # distinct random states plus both extremes, drawn digit by digit: 3^25 states never
        rng = np.random.default_rng(seed)  # have to exist as an index array
        top, bottom = (levels[0],) * k, (levels[-1],) * k
        picked: set = set()
        while len(picked) < max_states - 2:
            st = tuple(rng.choice(levels, k).tolist())
            if st != top and st != bottom:
                picked.add(st)
        states = [top, bottom] + sorted(picked)
    return np.unique(np.array([bits(s) for s in states]).reshape(-1, len(kinds)), axis=0)


def x_reference(spec: dict) -> np.ndarray:
    """The window's first element at the top level, every other one at the bottom level."""
    return np.array([TOP_BIT[kd] if e == 0 else BOTTOM_BIT[kd] for kd, e in zip(spec["x_kinds"], spec["x_elem"])])


def true_max(spec: dict, x: np.ndarray) -> float:
    """The MaxPool output level at window bits x (independent of the MIP rows: the oracle the
    tests compare with): max over elements of p - n (ternary), 2v - 1 (bipolar) or v (bin01)."""
    lv: dict[int, float] = {}
    for kd, e, v in zip(spec["x_kinds"], spec["x_elem"], x):
        add = {"pos": v, "neg": -v, "bipolar": 2 * v - 1, "value": v}[kd]
        lv[e] = lv.get(e, 0.0) + add
    return max(lv.values())


def _line(spec, x) -> np.ndarray:
    return np.asarray(spec["d0"], np.float64) + np.asarray(spec["E"], np.float64) @ np.asarray(x, np.float64)


def _entry(F, spec, x_ref, problem, grid) -> dict:
    cert = certify(F, problem, grid=grid)
    E, d0 = np.asarray(spec["E"], np.float64), np.asarray(spec["d0"], np.float64)
    pieces = [{"grad_x": (E.T @ p["pi"]).tolist(), "const": float(p["pi"] @ d0 + p["const"]), "pi": p["pi"].tolist(),
               "kappa": float(p["const"])} for p in F.pieces()]
    d = _line(spec, x_ref)
    return {"x_ref": x_ref.tolist(), "pieces": pieces, "field": (E.T @ F.field(d)).tolist(), "value": float(F(d)),
            "certificate": cert, "info": {k: v for k, v in F.info.items() if k != "tree"}}


def pool_key_duals(spec: dict, bb_depth: int = 4) -> dict:
    """lp and bb dual functions (certified) of one MaxPool key for g = +1 and g = -1."""
    A = np.asarray(spec["A"], np.float64)
    states = window_states(spec)
    rng = np.random.default_rng(0)
    frac = np.vstack([np.full((1, states.shape[1]), 0.5), rng.uniform(0, 1, (16, states.shape[1]))])
    x_ref = x_reference(spec)
    grid = np.array([_line(spec, x) for x in np.vstack([states, frac, x_ref[None, :]])])
    out = {"kind": "maxpool", "key": spec["key"], "example": spec["example"], "neurons": spec["neurons"],
           "covers": spec["covers"], "problem": {k: spec[k] for k in ("A", "d0", "E", "lb", "ub", "cost",
                                                                       "x_kinds", "x_elem")},
           "lp": {}, "bb": {}}
    for g in (1.0, -1.0):
        c = g * np.asarray(spec["cost"], np.float64)
        p = EnumProblem.build(c, A, _line(spec, x_ref), np.ones(A.shape[1], bool), spec["lb"], spec["ub"], ">=")
        tag = "+1" if g > 0 else "-1"
        F_lp = dual_function(c, A, p.b, p.integrality, p.lb, p.ub, ">=", method="lp", certify=False)
        out["lp"][tag] = _entry(F_lp, spec, x_ref, p, grid)
        F_bb = dual_function(c, A, p.b, p.integrality, p.lb, p.ub, ">=", method="bb", certify=False, depth=bb_depth)
        out["bb"][tag] = {"depth": bb_depth, **_entry(F_bb, spec, x_ref, p, grid)}
    return out

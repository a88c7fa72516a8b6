"""Dual functions of the MIP blocks of a lowered BNN, one small per-neuron MIP at a time.

The threshold part of a binarized block separates per neuron: neuron j is the MIP in its output
binaries y_j (u, or p/n for a ternary Sign) subject to the block's big-M rows, whose right-hand
side is affine in the pre-activation s_j (the parameter; s = the block's affine map of its inputs,
`b = B_x x + b0`, which chains the neuron's field to the block's inputs). Written as
">=" rows over the binaries only, with s' = s - tau:

    A y >= d(s') = d0 + s' e            (big-M lo: e = -1; big-M hi: e = +1; exclusive: e = 0)

Objective: the upstream gradient direction g . y in the binaries (bipolar y = 2u - 1 gives the
worked example's 2g u; ternary y = p - n gives g p - g n), for g = +1 and g = -1. Neurons with
the same rows, bounds and costs (i.e. the same L - tau, U - tau, lattice step and parity, tie
rule and ternary-ness) share their dual functions up to the shift s -> s - tau, so each unique
key is dualized once. Stable/constant neurons have no big-M row: their dual is F = const, field 0.

Per key and g, `key_duals` builds `dual_function(method="lp")` and `"bb"` at a reference point
s_ref (the side of tau where the LP relaxation has a gap, where the worked example's gradient
flows) and certifies each with `certify`, the value function computed exactly by enumerating the
1-2 binaries, on a grid of right-hand sides d(s') along the parametrization line. The pieces are
reported in the 1-D parametrization: phi(s') = min_k (slope_k s' + const_k), slope = pi . e.
With `chvatal=True`, keys whose data are integer (lattice pre-activations with tau on the
integers, e.g. TFC's hidden layers) also get a certified Chvatal dual at the integer s' next to
s_ref. Each key's report carries its `problem` (A, d0, e, bounds, costs: what `tamec.drivers.plot` needs
to redraw the value function) and `covers` (the block rows and neuron indices it stands for).

`block_specs` adds the MaxPool keys (tamec/dual/pool.py) and `row_coverage` says what covers each
row group of the block. Everything a worker gets is a plain dict of lists, so the map over keys
can run in another process (or on a Dask worker).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamec.dual.certificate import certify
from tamec.dual.function import dual_function
from tamec.dual.pool import pool_key_duals, pool_specs
from tamec.dual.problem import EnumProblem
from tamec.dual.srange import key_srange
from tamec.lower.inference import REL_EPS, lattice, threshold_states

ROUND = 9  # decimals of the dedupe key: rows equal to 1e-9 share a dual function


def _cost(grp) -> float:
    """Coefficient of g in g . y for one binary of the output group (y in terms of the binary)."""
    if grp.encoding == "bipolar":
        return 2.0  # y = 2u - 1
    if grp.encoding == "neg" or grp.name.endswith("#lt"):
        return -1.0  # y = p - n
    return 1.0  # bin01 u, ternary p, the s > tau indicator


def neuron_specs(graph, block) -> tuple[list[dict], dict]:
    """The unique per-neuron dual problems of `block` (plain dicts, picklable) and the block's
    neuron counts: {"neurons", "unstable", "stable", "thresholds"}."""

    offs = block.offsets()
    starts = sorted((a, b, name) for name, (a, b) in offs.items())
    col_group = np.empty(block.n_vars, object)
    for a, b, name in starts:
        col_group[a:b] = name
    thresholds = [o for o in block.ops if graph.op(o).op_type == "Threshold"]
    total = sum(int(np.prod([d for d in graph.values[graph.op(o).outputs[0]].shape[1:]], dtype=np.int64))
                for o in thresholds)
    keys: dict[tuple, dict] = {}
    unstable = 0
    for op_id in thresholds:
        rows = {r.name.rsplit(":", 1)[-1]: r for r in block.rows if r.op == op_id and r.kind in ("big-m", "exclusive")}
        lo, hi = rows.get("big-m-lo"), rows.get("big-m-hi")
        if lo is None or hi is None:
            continue  # every neuron stable or constant
        op = graph.op(op_id)
        excl = rows.get("exclusive")
        row_names = sorted(r.name for r in rows.values())
        states = {}
        for i in range(lo.size):
            cols, vals = lo.A[i].indices, lo.A[i].data
            hcols, hvals = hi.A[i].indices, hi.A[i].data
            groups = [block.group(col_group[c]) for c in cols]
            scol = [c for c, gr in zip(cols, groups) if gr.kind == "continuous"]
            bins = sorted((c for c, gr in zip(cols, groups) if gr.kind != "continuous"),
                          key=lambda c: (block.group(col_group[c]).encoding == "neg", c))
            sg = col_group[scol[0]]
            j = scol[0] - offs[sg][0]
            if sg not in states:
                sgrp = block.group(sg)
                states[sg] = threshold_states(op, graph.values[op.inputs[0]], sgrp.lb, sgrp.ub, 1e-6, REL_EPS)
            st = states[sg]
            tau = float(st.t0[j])
            lo_coef = dict(zip(cols, vals))
            hi_coef = dict(zip(hcols, hvals))
            A = [[lo_coef.get(c, 0.0) for c in bins], [-hi_coef.get(c, 0.0) for c in bins]]
            d0 = [float(lo.lo[i]) - tau, tau - float(hi.hi[i])]
            e = [-1.0, 1.0]
            if excl is not None and len(bins) == 2:
                k = bins[0] - offs[col_group[bins[0]]][0]
                A += [[1.0, 1.0], [-1.0, -1.0]]
                d0 += [float(excl.lo[k]), -float(excl.hi[k])]
                e += [0.0, 0.0]
            lb = [float(block.lb()[c]) for c in bins]
            ub = [float(block.ub()[c]) for c in bins]
            cost = [_cost(block.group(col_group[c])) for c in bins]
            L, U = float(st.L[j]) - tau, float(st.U[j]) - tau
            lat = lattice(graph.values[op.inputs[0]])
            key = tuple(np.round(np.concatenate([np.ravel(A), d0, e, lb, ub, cost, [L, U]]), ROUND).tolist())
            unstable += 1
            if key in keys:
                keys[key]["neurons"] += 1
                _cover(keys[key], op_id, row_names, int(j))
                continue
            # a, b (the reachable s next to tau on each side) as the rows wrote them: the M of each row
            flip = bool(st.gt_level[j] < st.lt_level[j])
            if len(bins) == 1:
                a, b = L + abs(lo_coef[bins[0]]), U - abs(hi_coef[bins[0]])
            else:  # ternary: s' >= a' g - (-L') l and s' <= U' g + b' l, g = p unless flipped
                gi, li = (bins[1], bins[0]) if flip else (bins[0], bins[1])
                a, b = -lo_coef[gi], -hi_coef[li]
            keys[key] = {
                "kind": "threshold", "covers": [],
                "key": {"L_minus_tau": L, "U_minus_tau": U, "a_minus_tau": float(a), "b_minus_tau": float(b),
                        "lattice": None if lat is None else {"origin": lat[0], "step": lat[1],
                                                              "tau_on_lattice": bool(st.can_tie[j] or
                                                                                     np.isnan(st.tau[j]))},
                        "tie": float(st.tie), "ternary": len(bins) == 2,
                        "flip": flip,
                        "jump": float(abs(st.gt_level[j] - st.lt_level[j]))},
                "example": {"op": op_id, "neuron": int(j), "tau": tau},
                "neurons": 1, "A": A, "d0": d0, "e": e, "lb": lb, "ub": ub, "cost": cost}
            _cover(keys[key], op_id, row_names, int(j))
    counts = {"neurons": total, "unstable": unstable, "stable": total - unstable, "thresholds": thresholds}
    return list(keys.values()), counts


def _cover(spec: dict, op_id: str, rows: list[str], j: int) -> None:
    """Record that `spec`'s dual covers element j of the rows `rows` of op `op_id`."""
    for c in spec["covers"]:
        if c["op"] == op_id:
            c["elements"].append(j)
            return
    spec["covers"].append({"op": op_id, "rows": rows, "elements": [j]})


def _line(spec, s) -> np.ndarray:
    return np.asarray(spec["d0"], np.float64) + float(s) * np.asarray(spec["e"], np.float64)


def _one_d(F, spec) -> list[dict]:
    """F's pieces along d(s') = d0 + s' e: slope pi . e and constant pi . d0 + kappa."""
    e, d0 = np.asarray(spec["e"]), np.asarray(spec["d0"])
    return [{"slope": float(p["pi"] @ e), "const": float(p["pi"] @ d0 + p["const"]), "pi": p["pi"].tolist(),
             "kappa": float(p["const"])} for p in F.pieces()]


def _entry(F, spec, s_ref, problem, grid) -> dict:
    cert = certify(F, problem, grid=grid)
    d = _line(spec, s_ref)
    return {"pieces": _one_d(F, spec), "field": float(F.field(d) @ np.asarray(spec["e"])),
            "value": float(F(d)), "certificate": cert, "info": {k: v for k, v in F.info.items() if k != "tree"}}


def _integer_data(spec: dict) -> bool:
    arr = np.concatenate([np.ravel(spec[k]) for k in ("A", "d0", "e", "cost", "lb", "ub")]).astype(np.float64)
    return bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))


def _chvatal_entry(spec, c, A, s_ref, line) -> dict:
    """A certified Chvatal dual at the integer s' next to s_ref on its side of tau (d(s') is then
    integer), or why there is none (data not integer; no feasible integer point there)."""
    if not _integer_data(spec):
        return {"skipped": "the per-neuron MIP has non-integer data (a real pre-activation or a tau off the "
                           "integers): Chvatal functions need integer A, d, c"}
    s_c = float(np.floor(s_ref) if s_ref > 0 else np.ceil(s_ref))
    p = EnumProblem.build(c, A, _line(spec, s_c), np.ones(A.shape[1], bool), spec["lb"], spec["ub"], ">=")
    if not np.isfinite(p.value()):
        return {"skipped": f"no feasible integer point at the integer s'={s_c:g} next to s_ref"}
    F = dual_function(c, A, p.b, p.integrality, p.lb, p.ub, ">=", method="chvatal", certify=False)
    grid = np.array([_line(spec, s) for s in sorted(set(np.round(line)) | {s_c})])
    cert = certify(F, p, grid=grid, samples=CHVATAL_SAMPLES)
    d = _line(spec, s_c)
    e = np.asarray(spec["e"], np.float64)
    return {"s_ref": s_c, "pieces": F.pieces(), "slope": float(F.field(d) @ e), "field": float(F.field(d) @ e),
            "value": float(F(d)), "certificate": cert, "info": dict(F.info)}


CHVATAL_SAMPLES = 40  # sampled subadditivity/monotonicity checks of a Chvatal dual (exact Fractions: slow)


SRANGE_DEPTHS = tuple(range(9))  # the depths K of the s-range duals the rules read (bb-mid:5 is the default)


def key_duals(spec: dict, bb_depth: int = 4, chvatal: bool = False, srange_depths=SRANGE_DEPTHS) -> dict:
    """lp and bb dual functions (certified) of one per-neuron key for g = +1 and g = -1, with
    `chvatal` a Chvatal dual too where the key's data are integer (lattice pre-activations), and
    the s-range duals (tamec/dual/srange.py) at every depth of `srange_depths`: the rules' duals."""
    A = np.asarray(spec["A"], np.float64)
    k = spec["key"]
    L, U, a, b = k["L_minus_tau"], k["U_minus_tau"], k["a_minus_tau"], k["b_minus_tau"]
    # reference points: the middle of each side of tau (the ends if the middle is off the set)
    cands = [(max(a, 0.0) + U) / 2.0, (L + min(b, 0.0)) / 2.0]
    line = sorted({L, (L + min(b, 0.0)) / 2.0, b, 0.0, a, (max(a, 0.0) + U) / 2.0, U, L - 1.0, U + 1.0})
    out = {"kind": "threshold", "key": k, "example": spec["example"], "neurons": spec["neurons"],
           "covers": spec.get("covers", []),
           "problem": {n: spec[n] for n in ("A", "d0", "e", "lb", "ub", "cost")}, "lp": {}, "bb": {}}
    for g in (1.0, -1.0):
        c = g * np.asarray(spec["cost"], np.float64)

        def prob(s):
            return EnumProblem.build(c, A, _line(spec, s), np.ones(A.shape[1], bool), spec["lb"], spec["ub"], ">=")

        best = None
        for s in cands:
            p = prob(s)
            z = p.value()
            if not np.isfinite(z):
                s = U if s > 0 else L
                p = prob(s)
                z = p.value()
            F = dual_function(c, A, p.b, p.integrality, p.lb, p.ub, ">=", method="lp", certify=False)
            gap = z - F(p.b)
            if best is None or gap > best[0] + 1e-12:
                best = (gap, s, p, F)
        _, s_ref, p, F_lp = best
        grid = np.array([_line(spec, s) for s in sorted(set(line) | {s_ref})])
        tag = "+1" if g > 0 else "-1"
        out["lp"][tag] = {"s_ref": s_ref, **_entry(F_lp, spec, s_ref, p, grid)}
        F_bb = dual_function(c, A, p.b, p.integrality, p.lb, p.ub, ">=", method="bb", certify=False, depth=bb_depth)
        out["bb"][tag] = {"s_ref": s_ref, "depth": bb_depth, **_entry(F_bb, spec, s_ref, p, grid)}
        if chvatal:
            out.setdefault("chvatal", {})[tag] = _chvatal_entry(spec, c, A, s_ref, line)
    out["srange"] = key_srange(out, srange_depths)
    return out


def keys_duals(specs: list[dict], bb_depth: int = 4, chvatal: bool = False,
               srange_depths=SRANGE_DEPTHS) -> list[dict]:
    """`key_duals` (threshold keys) or `pool_key_duals` (MaxPool keys) over a chunk of keys (the
    unit of work sent to an executor)."""
    return [pool_key_duals(s, bb_depth) if s.get("kind") == "maxpool" else
            key_duals(s, bb_depth, chvatal, srange_depths) for s in specs]


def block_specs(graph, block) -> tuple[list[dict], dict]:
    """Every unique dual problem of `block`, in the order of its ops: per-neuron threshold keys
    (`neuron_specs`) and per-output-element MaxPool keys (`tamec.dual.pool.pool_specs`), and the
    counts: {"neurons", "unstable", "stable", "thresholds", "pools", "pool_elements"}."""
    specs, counts = neuron_specs(graph, block)
    pools = [o for o in block.ops if graph.op(o).op_type == "MaxPool"]
    first_thr = min((block.ops.index(o) for o in counts["thresholds"]), default=len(block.ops))
    before, after, elements = [], [], 0
    for o in pools:
        ps, n = pool_specs(graph, block, o)
        elements += n
        (before if block.ops.index(o) < first_thr else after).extend(ps)
    return before + specs + after, {**counts, "pools": pools, "pool_elements": elements}


def row_coverage(graph, block, specs: list[dict]) -> tuple[list[dict], list[str]]:
    """Which dual (or which role) covers each row group of `block`, and the uncovered groups.

    Rows of a key's `covers` are covered by that key's duals (elements listed there; a threshold's
    rows of stable neurons fix constant bits: F = const); `<value>:def` rows are the affine map
    b = B_x x + b0 from the block's inputs to the duals' parameters (pre-activations, logits);
    `<op>:levels` rows map a threshold's indicator bits to its output levels (affine)."""
    covered: dict[str, dict] = {}
    for s in specs:
        for c in s["covers"]:
            for r in c["rows"]:
                ent = covered.setdefault(r, {"keys": 0, "elements": 0, "kind": s.get("kind", "threshold")})
                ent["keys"] += 1
                ent["elements"] += len(c["elements"])
    out, uncovered = [], []
    for r in block.rows:
        ent = {"rows": r.name, "kind": r.kind, "size": r.size}
        op_type = graph.op(r.op).op_type if r.op and r.op in graph.nx.nodes else ""
        if r.name in covered:
            cv = covered[r.name]
            ent["covered_by"] = f"{cv['kind']} keys ({cv['keys']} key(s), {cv['elements']} element(s))"
        elif op_type == "Threshold" and r.kind in ("big-m", "exclusive"):
            ent["covered_by"] = "constant bits (every neuron stable: F = const, field 0)"
        elif r.name.endswith(":def") and r.kind == "linear":
            ent["covered_by"] = "parametrization: the affine map b = B_x x + b0 of the duals' right-hand side"
        elif r.name.endswith(":levels") and op_type == "Threshold":
            ent["covered_by"] = "threshold output levels: affine in the indicator bits"
        else:
            ent["covered_by"] = None
            uncovered.append(r.name)
        out.append(ent)
    return out, uncovered


def block_summary(keys: list[dict]) -> dict:
    """minorant over every certificate, the share of strong bb (and chvatal) duals, the largest lp gap."""
    certs = [(m, e["certificate"]) for k in keys for m in ("lp", "bb", "chvatal") for e in k.get(m, {}).values()
             if "certificate" in e]
    bb = [c for m, c in certs if m == "bb"]
    ch = [c for m, c in certs if m == "chvatal"]
    lp_gaps = [c["gap"] for m, c in certs if m == "lp" and np.isfinite(c["gap"])]
    out = {"minorant": all(c["minorant"]["holds"] for _, c in certs),
           "dual_feasible": all(c["dual_feasible"]["holds"] for _, c in certs),
           "strong_bb_share": (sum(c["strong"] for c in bb) / len(bb)) if bb else None,
           "max_gap_lp": max(lp_gaps) if lp_gaps else 0.0}
    sr = [e["certificate"] for k in keys for d in k.get("srange", {}).values() for e in d.values()]
    if sr:  # the rules' duals: every depth, both signs, checked exactly
        out["srange"] = {"certified": all(c["holds"] for c in sr), "duals": len(sr),
                         "depths": sorted({int(d) for k in keys for d in k.get("srange", {})})}
    if ch:
        out["chvatal"] = len(ch)
        out["strong_chvatal_share"] = sum(c["strong"] for c in ch) / len(ch)
    return out

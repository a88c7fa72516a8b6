"""The branch-and-bound dual: F(d) = min over the leaves t of a tree of (pi_t d + kappa_t).

The tree is grown at d = b, best-first over HiGHS LPs: a node's LP solution is branched on its
most fractional integer column j (x_j <= floor(v) | x_j >= ceil(v)), until every leaf is integral,
infeasible, or pruned by bound (its LP value at b is already >= the best integral value), or a
limit is hit (`depth` branchings on a path, `max_nodes` LP solves).

Each leaf t keeps its box [lb_t, ub_t] and one affine piece below its LP value function:
  - feasible at b: the LP duals at b (tamec/dual/lp.py), so F_t(b) = LP_t(b);
  - infeasible at b: a Farkas piece pi0 + t y (phase-1 ray y, tamec/dual/lp.py) with t chosen so
    that F_t(b) sits just above the smallest feasible leaf value at b, so it never decides F(b);
  - a box with no integer point (bounds infeasible: infeasible for ALL d): dropped.

Why F is a minorant of z everywhere: the leaves' boxes partition the integer points of the root
box (floor/ceil branching loses none), so any x feasible for the MILP at any d lies in some leaf
t, whence F(d) <= F_t(d) <= LP_t(d) <= c x. F is concave and piecewise linear (a min of affine
functions), Lipschitz with constant max_t |pi_t|. At b, F(b) = min over feasible leaves of
LP_t(b); on a complete tree (no leaf stopped by a limit) that is z(b) up to the pruning
tolerance: strong at b. It is not subadditive in general (certify says so).
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from tamec.dual.problem import DualFunction, Problem
from tamec.dual.lp import LPSolver, affine_piece, farkas_piece, rounded_box
from tamec.errors import UsageError

LIMITS = ("depth", "max_nodes")
INT_TOL = 1e-6  # a value within this of an integer counts as integral (HiGHS's mip_feasibility_tolerance)


def bb_dual(problem: Problem, *, depth: int = 16, max_nodes: int = 500, prune_tol: float = 1e-9) -> DualFunction:
    """The branch-and-bound dual of `problem` at b, from a tree of at most `depth` levels and
    `max_nodes` LP solves; `F.info` says how many leaves of each kind and whether it is complete."""
    if depth < 0 or max_nodes < 1:
        raise UsageError(f"bb limits depth={depth}, max_nodes={max_nodes}", hint="use depth >= 0 and max_nodes >= 1")
    b = problem.b
    lb0, ub0 = rounded_box(problem)
    if np.any(lb0 > ub0):
        return DualFunction("bb", problem, [], info={"status": "empty box", "complete": True, "leaves": {}})
    solver = LPSolver(problem)
    ints = np.flatnonzero(problem.integrality)
    leaves: list[dict] = []  # {"kind", "lb", "ub", "depth", "value", "pi", "const"}
    incumbent = math.inf
    heap: list = []  # (LP value at b, tie counter, node) for nodes whose LP solution is fractional
    counter = 0

    def visit(lb, ub, level):
        """Solve a node's LP at b and file it: a leaf now, or an open node on the heap."""
        nonlocal incumbent, counter
        res = solver.solve(b, lb, ub)
        if res.status == "unbounded":
            raise UsageError("the LP relaxation is unbounded at b", hint="bound the variables")
        node = {"lb": lb, "ub": ub, "depth": level, "value": res.value}
        if res.status == "infeasible":
            leaves.append({**node, "kind": "infeasible"})
            return
        pi, kappa = affine_piece(problem, res.pi, lb, ub)
        if not np.isfinite(kappa):
            raise UsageError("HiGHS's LP duals are not dual feasible at a leaf", hint="rescale the problem")
        node.update(pi=pi, const=kappa)
        frac = np.abs(res.x[ints] - np.round(res.x[ints]))
        if frac.size == 0 or frac.max() <= INT_TOL:
            incumbent = min(incumbent, res.value)
            leaves.append({**node, "kind": "integral"})
            return
        k = int(np.argmax(frac))  # most fractional first; ties to the lowest column index
        node.update(branch=int(ints[k]), at=float(res.x[ints[k]]))
        counter += 1
        heapq.heappush(heap, (res.value, counter, node))

    visit(lb0, ub0, 0)
    while heap:
        value, _, node = heapq.heappop(heap)
        if value >= incumbent - prune_tol * (1.0 + abs(incumbent)):
            leaves.append({**node, "kind": "pruned"})
            continue
        if node["depth"] >= depth or solver.solves + 2 > max_nodes:
            leaves.append({**node, "kind": "limit"})
            continue
        j, v = node["branch"], node["at"]
        for lo, hi in ((node["lb"][j], math.floor(v)), (math.ceil(v), node["ub"][j])):
            if lo > hi:  # no integer value of x_j left: infeasible for all d, nothing to keep
                continue
            lb, ub = node["lb"].copy(), node["ub"].copy()
            lb[j], ub[j] = lo, hi
            visit(lb, ub, node["depth"] + 1)

    feasible = [t["value"] for t in leaves if t["kind"] != "infeasible"]
    # an infeasible leaf's piece sits just above the smallest feasible leaf value at b, so it never
    # decides F(b); with no feasible leaf (z(b) = +inf) any level is valid and lp.py picks one
    top = min(feasible) if feasible else None
    for t in leaves:
        if t["kind"] == "infeasible":
            level = None if top is None else top + 1e-6 * (1.0 + abs(top))
            t["pi"], t["const"] = farkas_piece(problem, solver, b, t["lb"], t["ub"], level)
    kinds = {k: sum(t["kind"] == k for t in leaves) for k in ("integral", "infeasible", "pruned", "limit")}
    info = {"complete": kinds["limit"] == 0, "leaves": kinds, "lp_solves": solver.solves,
            "incumbent": incumbent, "depth": depth, "max_nodes": max_nodes,
            "tree": [{"kind": t["kind"], "depth": t["depth"], "value": t["value"],
                      "lb": t["lb"].tolist(), "ub": t["ub"].tolist()} for t in leaves]}
    return DualFunction("bb", problem, _distinct(leaves), info=info)


def _distinct(leaves: list[dict]) -> list[dict]:
    """The leaves' pieces with equal gradients merged (the smallest constant is the only one the
    min can pick), in leaf order: the same F, fewer pieces."""
    out: list[dict] = []
    for t in leaves:
        for q in out:
            if np.array_equal(q["pi"], t["pi"]):
                q["const"] = min(q["const"], t["const"])
                break
        else:
            out.append({"pi": t["pi"], "const": t["const"]})
    return out

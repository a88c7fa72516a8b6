"""Solving MILPs and LPs with HiGHS (highspy), reporting everything it says.

Status, objective, dual bound, gap and node count are returned, never swallowed: a time or node
limit gives status "limit" with the best bound known, which callers turn into an `unknown`
answer rather than a wrong one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamec.errors import UsageError
from tamec.ir.mip import Milp



@dataclass
class Solution:
    """What HiGHS found. `objective` and `bound` are in the problem's own sense (max stays max)."""

    status: str
    x: np.ndarray | None
    objective: float | None
    bound: float | None
    gap: float | None
    nodes: int
    message: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "optimal"

    def to_json(self) -> dict:
        return {"status": self.status, "objective": self.objective, "bound": self.bound, "gap": self.gap,
                "nodes": self.nodes, "message": self.message, "seconds": self.seconds}


_QUIET = []


def _new_highs():
    """A Highs instance; the first one prints a banner on the C stdout, which would corrupt
    `--json` output, so that one is made with fd 1 pointed at /dev/null."""
    import os

    import highspy

    if _QUIET:
        return highspy.Highs()
    import sys

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    _QUIET.append(True)
    return h


def _highs_model(p: Milp, cost: np.ndarray, integ: np.ndarray, sense: str):
    import highspy

    h = _new_highs()
    h.setOptionValue("output_flag", False)
    inf = h.getInfinity()
    A = p.A.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = A.shape[1], A.shape[0]
    clip = lambda a: np.clip(np.asarray(a, np.float64), -inf, inf)  # noqa: E731
    lp.col_cost_ = cost
    lp.col_lower_, lp.col_upper_ = clip(p.lb), clip(p.ub)
    lp.row_lower_, lp.row_upper_ = clip(p.lo), clip(p.hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
    lp.sense_ = highspy.ObjSense.kMinimize if sense == "min" else highspy.ObjSense.kMaximize
    if np.any(integ):
        lp.integrality_ = [highspy.HighsVarType.kInteger if k else highspy.HighsVarType.kContinuous for k in integ]
    h.passModel(lp)
    return h


def solve(p: Milp, *, time_limit: float | None = None, node_limit: int | None = None,
          mip_rel_gap: float | None = None, relax: bool = False, c: np.ndarray | None = None,
          sense: str | None = None, start: np.ndarray | None = None) -> Solution:
    """Solve `p` (or its LP relaxation with `relax=True`), optionally with another objective
    `c` and `sense` ("min" or "max"), from a known feasible point `start` (a warm start: HiGHS
    then always has an incumbent to report)."""
    import time

    import highspy

    sense = sense or p.sense
    if sense not in ("min", "max"):
        raise UsageError(f"objective sense {sense!r}", hint="use 'min' or 'max'")
    cost = np.asarray(p.c if c is None else c, np.float64)
    integ = np.zeros_like(p.integrality) if relax else p.integrality
    if cost.size == 0:  # no columns: HiGHS refuses the model; the rows alone decide feasibility
        ok = bool(np.all(p.lo <= 0) and np.all(p.hi >= 0))
        return Solution("optimal" if ok else "infeasible", np.zeros(0), p.constant if ok else None,
                        p.constant if ok else None, 0.0 if ok else None, 0, "model has no variables")
    t0 = time.perf_counter()
    h = _highs_model(p, cost, integ, sense)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    if node_limit is not None and not relax:
        h.setOptionValue("mip_max_nodes", int(node_limit))
    if mip_rel_gap is not None and not relax:
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    if start is not None:
        sol0 = highspy.HighsSolution()
        sol0.col_value = np.asarray(start, np.float64)
        sol0.value_valid = True
        h.setSolution(sol0)
    h.run()
    ms = h.getModelStatus()
    M = highspy.HighsModelStatus
    status = {M.kOptimal: "optimal", M.kInfeasible: "infeasible", M.kUnbounded: "unbounded",
              M.kTimeLimit: "limit", M.kIterationLimit: "limit", M.kSolutionLimit: "limit",
              M.kInterrupt: "limit", M.kObjectiveBound: "limit", M.kObjectiveTarget: "limit"}.get(ms, "error")
    if ms == M.kUnboundedOrInfeasible:  # feasible => unbounded (rational data), else infeasible
        feas = solve(p, time_limit=time_limit, node_limit=node_limit, relax=relax, c=np.zeros_like(cost))
        status = {"optimal": "unbounded", "limit": "limit", "infeasible": "infeasible"}.get(feas.status, "error")
    info = h.getInfo()
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has_x else None
    obj = float(info.objective_function_value) + p.constant if has_x else None
    is_mip = bool(np.any(integ))
    if is_mip:
        bound = float(info.mip_dual_bound)
        bound = None if not np.isfinite(bound) or abs(bound) >= h.getInfinity() else bound + p.constant
        gap = float(info.mip_gap) if has_x and np.isfinite(info.mip_gap) else None
        nodes = int(info.mip_node_count)
    else:
        bound, gap, nodes = (obj if status == "optimal" else None), (0.0 if status == "optimal" else None), 0
    if status in ("unbounded", "infeasible"):
        x = obj = bound = gap = None  # a primal point of an unbounded model is no answer
    if status == "optimal" and bound is None:
        bound = obj
    return Solution(status, x, obj, bound, gap, nodes, h.modelStatusToString(ms), time.perf_counter() - t0)


def infeasible_row_groups(mod, relax: bool = True) -> list[tuple[str, str, str]]:
    """A minimal set of (block, row group, op) that together are infeasible (a deletion filter
    over row groups; the LP relaxation by default), or [] when the module is feasible."""
    from tamec.ir.mip import MipModule

    def feasible(keep: list[tuple[int, int]]) -> bool:
        blocks = []
        for bi, b in enumerate(mod.blocks):
            nb = b.copy()
            nb.rows = [r for ri, r in enumerate(b.rows) if (bi, ri) in keep]
            nb.c = None
            blocks.append(nb)
        p = MipModule(blocks, mod.links, mod.meta).assemble()
        return solve(p, relax=relax, c=np.zeros(p.A.shape[1])).status != "infeasible"

    keep = [(bi, ri) for bi, b in enumerate(mod.blocks) for ri in range(len(b.rows))]
    if feasible(keep):
        return []
    for item in list(keep):
        trial = [k for k in keep if k != item]
        if not feasible(trial):
            keep = trial
    return [(mod.blocks[bi].name, mod.blocks[bi].rows[ri].name, mod.blocks[bi].rows[ri].op) for bi, ri in keep]

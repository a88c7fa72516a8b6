"""Solving MILPs and LPs with HiGHS (through scipy.optimize), reporting everything it says.

Status, objective, dual bound, gap and node count are returned, never swallowed: a time or node
limit gives status "limit" with the best bound known, which callers turn into an `unknown`
answer rather than a wrong one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize as so

from tamec.errors import UsageError
from tamec.ir.mip import Milp

_STATUS = {0: "optimal", 1: "limit", 2: "infeasible", 3: "unbounded", 4: "error"}


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


def solve(p: Milp, *, time_limit: float | None = None, node_limit: int | None = None,
          mip_rel_gap: float | None = None, relax: bool = False, c: np.ndarray | None = None,
          sense: str | None = None) -> Solution:
    """Solve `p` (or its LP relaxation with `relax=True`), optionally with another objective
    `c` and `sense` ("min" or "max")."""
    import time

    sense = sense or p.sense
    if sense not in ("min", "max"):
        raise UsageError(f"objective sense {sense!r}", hint="use 'min' or 'max'")
    cost = np.asarray(p.c if c is None else c, np.float64)
    sgn = 1.0 if sense == "min" else -1.0
    integ = np.zeros_like(p.integrality) if relax else p.integrality
    options = {"presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    if node_limit is not None and not relax:
        options["node_limit"] = int(node_limit)
    if mip_rel_gap is not None and not relax:
        options["mip_rel_gap"] = float(mip_rel_gap)
    cons = [so.LinearConstraint(p.A, p.lo, p.hi)] if p.A.shape[0] else []
    t0 = time.perf_counter()
    res = so.milp(sgn * cost, constraints=cons, integrality=integ, bounds=so.Bounds(p.lb, p.ub), options=options)
    seconds = time.perf_counter() - t0
    status = _STATUS.get(res.status, "error")
    x = None if res.x is None else np.asarray(res.x)
    obj = None if res.fun is None else sgn * float(res.fun) + p.constant
    bound = getattr(res, "mip_dual_bound", None)
    if relax or bound is None:
        bound = obj if status == "optimal" else None
    else:
        bound = sgn * float(bound) + p.constant
    gap = getattr(res, "mip_gap", None)
    nodes = int(getattr(res, "mip_node_count", 0) or 0)
    if status == "limit" and x is None:
        obj = None
    return Solution(status, x, obj, bound, None if gap is None else float(gap), nodes, str(res.message), seconds)

"""Dual functions of a small MILP's value function, and the one entry point that builds them.

The value function of `Problem` is

    z(d) = min { c x : A x (== or >=) d, lb <= x <= ub, x_j integer where integrality_j }

as a function of the right-hand side d (+inf where infeasible). A dual function F is a minorant of
z (F(d) <= z(d) for every d) that is close to z at the problem's own right-hand side b.
`dual_function(..., method=)` builds one:

  lp       the dual of the LP relaxation: one affine piece pi d + kappa (tamec/dual/lp.py)
  bb       the min over the leaves of a branch-and-bound tree of each leaf's LP dual piece
           (tamec/dual/bb.py); concave, piecewise linear, strong at b for a complete tree
  chvatal  a Chvatal/Gomory function for pure-integer problems with integer data
           (tamec/dual/chvatal.py)

What F is proven to satisfy is in `F.certificate`, filled by `tamec.dual.certificate.certify`.
"""
from __future__ import annotations

from tamec.dual.bb import LIMITS, bb_dual
from tamec.dual.certificate import certify as run_certify
from tamec.dual.chvatal import chvatal_dual
from tamec.dual.lp import lp_dual
from tamec.dual.problem import CONSTRAINTS, METHODS, DualFunction, Problem, as_rhs  # noqa: F401  (API)
from tamec.errors import UsageError


def dual_function(c, A, b, integrality, lb=None, ub=None, constraint: str = "==", method: str = "lp",
                  certify: bool = True, **limits) -> DualFunction:
    """A dual function of `min c x : A x (constraint) d, lb <= x <= ub, x_I integer` at d = b,
    built by `method` ("lp", "bb" with depth=/max_nodes=, "chvatal" with max_cuts=/max_rounds=).
    With `certify` (default) `F.certificate` is filled by `tamec.dual.certificate.certify`
    (exact MILP solves on a grid of right-hand sides); pass False to build only."""
    F = _build(Problem.build(c, A, b, integrality, lb, ub, constraint), method, limits)
    if certify:
        run_certify(F)
    return F


def _build(problem: Problem, method: str, limits: dict) -> DualFunction:
    if method == "lp":
        if limits:
            raise UsageError(f"the lp dual takes no limits, got {sorted(limits)}", hint="drop them or use method='bb'")
        return lp_dual(problem)
    if method == "bb":
        if set(limits) - set(LIMITS):
            raise UsageError(f"unknown bb limits {sorted(set(limits) - set(LIMITS))}", hint=f"use {LIMITS}")
        return bb_dual(problem, **limits)
    if method == "chvatal":
        return chvatal_dual(problem, **limits)
    raise UsageError(f"unknown dual method {method!r}", hint=f"use one of {METHODS}")

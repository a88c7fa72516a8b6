"""The LP-relaxation dual: F(d) = pi d + kappa, one affine minorant of the value function.

For any multiplier pi (pi >= 0 on ">=" rows, free on "==" rows) weak duality gives, for EVERY d,

    LP(d) = min { c x : A x (==, >=) d, lb <= x <= ub }
          >= pi d + sum_j min_{lb_j <= x_j <= ub_j} r_j x_j,      r = c - A^T pi,

and the sum is kappa = sum_j min(r_j lb_j, r_j ub_j) (a zero r_j contributes 0 even against an
infinite bound). kappa does not depend on d, so F(d) = pi d + kappa is ONE affine piece below
LP(d) <= z(d) everywhere, provided kappa is finite: r_j >= 0 where ub_j = +inf and r_j <= 0 where
lb_j = -inf. The optimal row duals of the LP at b (HiGHS simplex) give such a pi with F(b) = LP(b).

Numerics: HiGHS's duals are feasible to its tolerance (1e-9 scaled). Negative multipliers on ">="
rows are clipped to 0 (which keeps weak duality exact), and a reduced cost of the wrong sign
against an infinite bound is counted as 0 when it is within 1e-9 * (1 + |c_j| + |a_j| |pi|) of 0:
that is the only place F can exceed the exact bound, by that reduced cost times |x_j| at the
optimum. A larger wrong-signed reduced cost makes the piece invalid, and it is refused.

An infeasible LP at d (phase 1): solve `min sum of artificials` (A x + s+ - s- = d, or
A x + s+ >= d); its row duals y (|y| <= 1, y >= 0 on ">=") give h(d) = y d + sum_j min_box(-(A^T y)_j
x_j), which is <= 0 wherever the LP is feasible (it is a minorant of the phase-1 value, which is 0
there) and > 0 at the infeasible d: y is a Farkas certificate. Starting from any dual-feasible pi0
(the row duals of the LP at d0 = A x0 for a point x0 of the box, where it is feasible), every
pi0 + t y with t >= 0 is dual feasible and its piece is >= (pi0 piece) + t h; `farkas_piece` picks
t = (level - pi0-piece(d)) / h(d), so the piece is valid for all d and reaches `level` at d.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamec.dual.problem import DualFunction, Problem
from tamec.errors import UsageError

RTOL = 1e-9  # HiGHS's default dual feasibility tolerance


@dataclass
class LPResult:
    """One LP solve: status "optimal" | "infeasible" | "unbounded"; x, value, pi when optimal."""

    status: str
    x: np.ndarray | None = None
    value: float | None = None
    pi: np.ndarray | None = None


def _lp_model(c, A, row_lo, row_hi, lb, ub):
    """A quiet HiGHS instance holding `min c x : row_lo <= A x <= row_hi, lb <= x <= ub`."""
    import highspy

    from tamec.solve import _new_highs

    h = _new_highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("presolve", "off")  # keeps infeasible/unbounded distinct and duals from simplex
    inf = h.getInfinity()
    A = np.asarray(A, np.float64)
    m, n = A.shape
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = np.asarray(c, np.float64)
    lp.col_lower_, lp.col_upper_ = np.clip(lb, -inf, inf), np.clip(ub, -inf, inf)
    lp.row_lower_, lp.row_upper_ = np.clip(row_lo, -inf, inf), np.clip(row_hi, -inf, inf)
    js, is_ = np.nonzero(A.T)  # column-wise order: for each column j, its rows i with A[i, j] != 0
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.concatenate([[0], np.cumsum(np.count_nonzero(A, axis=0))]).astype(np.int32)
    lp.a_matrix_.index_ = is_.astype(np.int32)
    lp.a_matrix_.value_ = A[is_, js]
    h.passModel(lp)
    return h


def _row_bounds(problem: Problem, d: np.ndarray):
    hi = d if problem.constraint == "==" else np.full(problem.m, np.inf)
    return d, hi


class LPSolver:
    """The LP relaxation of `problem` held in one HiGHS instance; each solve changes the
    right-hand side and the column bounds (a leaf of a branch-and-bound tree) and warm-starts."""

    def __init__(self, problem: Problem):
        self.problem = problem
        lo, hi = _row_bounds(problem, problem.b)
        self.h = _lp_model(problem.c, problem.A, lo, hi, problem.lb, problem.ub)
        self.solves = 0

    def solve(self, d: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> LPResult:
        """The LP at right-hand side d over the box [lb, ub]."""
        import highspy

        p, h = self.problem, self.h
        inf = h.getInfinity()
        lo, hi = _row_bounds(p, np.asarray(d, np.float64))
        h.changeRowsBounds(p.m, np.arange(p.m, dtype=np.int32), np.clip(lo, -inf, inf), np.clip(hi, -inf, inf))
        h.changeColsBounds(p.n, np.arange(p.n, dtype=np.int32), np.clip(lb, -inf, inf), np.clip(ub, -inf, inf))
        h.run()
        self.solves += 1
        M = highspy.HighsModelStatus
        ms = h.getModelStatus()
        if ms == M.kOptimal:
            sol = h.getSolution()
            return LPResult("optimal", np.array(sol.col_value), float(h.getInfo().objective_function_value),
                            np.array(sol.row_dual))
        if ms == M.kInfeasible:
            return LPResult("infeasible")
        if ms in (M.kUnbounded, M.kUnboundedOrInfeasible):
            # feasible => unbounded; decided on a fresh zero-cost copy
            f = _lp_model(np.zeros(p.n), p.A, lo, hi, lb, ub)
            f.run()
            return LPResult("unbounded" if f.getModelStatus() == M.kOptimal else "infeasible")
        raise UsageError(f"HiGHS stopped on the LP relaxation: {h.modelStatusToString(ms)}",
                         hint="check the problem data for huge or tiny coefficients")


def bound_terms(r: np.ndarray, lb: np.ndarray, ub: np.ndarray, scale: np.ndarray) -> float:
    """sum_j min over [lb_j, ub_j] of r_j x_j, with reduced costs within RTOL * scale of zero
    counted as zero against an infinite bound; -inf if some term is unbounded below."""
    tiny = np.abs(r) <= RTOL * scale
    total = 0.0
    for rj, lo, hi, t in zip(r, lb, ub, tiny):
        if rj > 0:
            total += rj * lo if np.isfinite(lo) else (0.0 if t else -np.inf)
        elif rj < 0:
            total += rj * hi if np.isfinite(hi) else (0.0 if t else -np.inf)
    return float(total)


def affine_piece(problem: Problem, pi, lb, ub, c=None) -> tuple[np.ndarray, float]:
    """(pi, kappa) with pi d + kappa <= LP(d) over the box [lb, ub] for every d (weak duality);
    kappa is -inf when pi is not dual feasible for that box."""
    pi = np.asarray(pi, np.float64).copy()
    if problem.constraint == ">=":
        pi = np.maximum(pi, 0.0)  # ">=" rows need pi >= 0; clipping HiGHS's -1e-12 keeps the bound exact
    c = problem.c if c is None else c
    pi += 0.0  # no -0.0
    r = c - problem.A.T @ pi
    scale = 1.0 + np.abs(c) + np.abs(problem.A).T @ np.abs(pi)
    return pi, bound_terms(r, lb, ub, scale)


def rounded_box(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """The column bounds with integer columns' bounds rounded inward (no integer point is lost)."""
    lb, ub = problem.lb.copy(), problem.ub.copy()
    I = problem.integrality
    lb[I] = np.ceil(lb[I] - 1e-9) + 0.0  # + 0.0: no -0.0 in printed boxes
    ub[I] = np.floor(ub[I] + 1e-9) + 0.0
    return lb, ub


def box_point(lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """A point of the (nonempty) box [lb, ub]: 0 clipped into it."""
    return np.clip(np.zeros_like(lb), lb, ub)


def farkas_piece(problem: Problem, solver: LPSolver, d: np.ndarray, lb, ub,
                 level: float | None = None) -> tuple[np.ndarray, float]:
    """An affine piece pi d' + kappa <= LP(d') over the box [lb, ub] for every d', with value
    >= level at d, where the LP is infeasible at d (phase-1 Farkas ray; see the module docstring).
    Without a level (z(d) = +inf, so any level is valid) it is one unit above max(0, pi0 piece at d)."""
    x0 = box_point(lb, ub)
    base = solver.solve(problem.A @ x0, lb, ub)
    if base.status != "optimal":
        raise UsageError("the LP relaxation is unbounded wherever it is feasible", hint="bound the variables")
    pi0, k0 = affine_piece(problem, base.pi, lb, ub)
    y, hk = phase1_ray(problem, d, lb, ub)
    g0, hd = float(pi0 @ d + k0), float(y @ d + hk)
    level = max(g0, 0.0) + 1.0 if level is None else level
    if not (np.isfinite(k0) and np.isfinite(hk)) or hd <= 0:
        raise UsageError("no valid Farkas certificate for an infeasible leaf LP",
                         hint="the LP is numerically borderline; rescale the problem")
    t = max(0.0, (level - g0) / hd)
    pi, kappa = affine_piece(problem, pi0 + t * y, lb, ub)
    return pi, kappa


def phase1_ray(problem: Problem, d: np.ndarray, lb, ub) -> tuple[np.ndarray, float]:
    """(y, const) with h(d') = y d' + const <= 0 wherever the LP over [lb, ub] is feasible and
    h(d) = the phase-1 infeasibility > 0: the row duals of `min sum of artificials`."""
    p = problem
    eye = np.eye(p.m)
    if p.constraint == "==":
        A1 = np.hstack([p.A, eye, -eye])
        na = 2 * p.m
    else:
        A1 = np.hstack([p.A, eye])
        na = p.m
    c1 = np.concatenate([np.zeros(p.n), np.ones(na)])
    lo, hi = _row_bounds(p, d)
    h = _lp_model(c1, A1, lo, hi, np.concatenate([lb, np.zeros(na)]), np.concatenate([ub, np.full(na, np.inf)]))
    h.run()
    y = np.array(h.getSolution().row_dual)
    # artificial columns make the terms (1 -+ y_i) s_i vanish exactly when |y| <= 1 (0 <= y <= 1 on >=)
    y = np.clip(y, 0.0 if p.constraint == ">=" else -1.0, 1.0)
    r = -p.A.T @ y
    return y, bound_terms(r, lb, ub, 1.0 + np.abs(p.A).T @ np.abs(y))


def lp_dual(problem: Problem) -> DualFunction:
    """The LP-relaxation dual at b: one affine piece pi d + kappa (integer bounds rounded inward)."""
    lb, ub = rounded_box(problem)
    if np.any(lb > ub):  # no point at all: z = +inf for every d, and so is F
        return DualFunction("lp", problem, [], info={"status": "empty box"})
    solver = LPSolver(problem)
    res = solver.solve(problem.b, lb, ub)
    if res.status == "unbounded":
        raise UsageError("the LP relaxation is unbounded at b", hint="bound the variables")
    if res.status == "optimal":
        pi, kappa = affine_piece(problem, res.pi, lb, ub)
        if not np.isfinite(kappa):
            raise UsageError("HiGHS's LP duals are not dual feasible", hint="rescale the problem")
    else:  # z(b) = +inf: any level is valid
        pi, kappa = farkas_piece(problem, solver, problem.b, lb, ub)
    info = {"status": res.status, "lp_value": res.value, "lp_solves": solver.solves}
    return DualFunction("lp", problem, [{"pi": pi, "const": kappa}], info=info)

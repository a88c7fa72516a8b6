"""The small MILP whose value function a dual function minorizes (`Problem`), and `DualFunction`,
the type every dual method returns. tamec/dual/function.py builds them."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable

import highspy
import numpy as np
import scipy.sparse as sp

from tamec.errors import UsageError
from tamec.ir.mip import Milp
from tamec.solve import _highs_model, solve

CONSTRAINTS = ("==", ">=")
METHODS = ("lp", "bb", "chvatal")


@dataclass
class Problem:
    """`min c x : A x (constraint) d, lb <= x <= ub, x_j integer where integrality_j` at d = b."""

    c: np.ndarray
    A: np.ndarray
    b: np.ndarray
    integrality: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    constraint: str = "=="

    @classmethod
    def build(cls, c, A, b, integrality, lb=None, ub=None, constraint: str = "==") -> "Problem":
        """Check shapes and types and fill defaults (lb = 0, ub = +inf): a Problem or a UsageError."""
        c = np.asarray(c, np.float64).ravel()
        n = c.size
        A = np.asarray(A, np.float64)
        if A.ndim == 1:  # one row
            A = A.reshape(1, -1)
        if A.ndim != 2 or A.shape[1] != n:
            raise UsageError(f"A has shape {A.shape}, expected (rows, {n}) for {n} costs",
                             hint="pass A as a dense (rows x columns) array")
        m = A.shape[0]
        b = np.atleast_1d(np.asarray(b, np.float64)).ravel()
        if b.size != m:
            raise UsageError(f"b has {b.size} entries, A has {m} rows", hint="give one right-hand side per row")
        integ = np.asarray(integrality)
        if integ.shape != (n,) or not np.all(np.isin(integ, (0, 1))):
            raise UsageError(f"integrality must be {n} booleans (or 0/1), got {integ!r}",
                             hint="mark integer columns with True, continuous ones with False")
        lb = np.zeros(n) if lb is None else np.broadcast_to(np.asarray(lb, np.float64), (n,)).copy()
        ub = np.full(n, np.inf) if ub is None else np.broadcast_to(np.asarray(ub, np.float64), (n,)).copy()
        if np.any(np.isnan(lb)) or np.any(np.isnan(ub)) or np.any(lb == np.inf) or np.any(ub == -np.inf):
            raise UsageError("variable bounds contain NaN or a wrong-way infinity", hint="use -inf <= lb, ub <= +inf")
        if constraint not in CONSTRAINTS:
            raise UsageError(f"constraint {constraint!r}", hint=f"use one of {CONSTRAINTS}")
        for name, arr in (("c", c), ("A", A), ("b", b)):
            if not np.all(np.isfinite(arr)):
                raise UsageError(f"{name} has non-finite entries", hint="dual functions need finite data")
        return cls(c, A, b, integ.astype(bool), lb, ub, constraint)

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def n(self) -> int:
        return self.A.shape[1]

    def milp(self, d=None):
        """The problem at right-hand side d (default b) as a `tamec.ir.mip.Milp` for `tamec.solve`."""
        d = self.b if d is None else as_rhs(d, self.m)
        hi = d.copy() if self.constraint == "==" else np.full(self.m, np.inf)
        return Milp(self.c.copy(), sp.csr_matrix(self.A), d.copy(), hi, self.lb.copy(), self.ub.copy(),
                    self.integrality.copy(), [f"x{j}" for j in range(self.n)], [f"r{i}" for i in range(self.m)], {})

    def value(self, d=None) -> float:
        """z(d) by an exact HiGHS MILP solve: gap tolerances 0, integrality tolerance 1e-9, and the
        answer polished (integer columns rounded and fixed, the continuous part re-solved as an LP)
        so that HiGHS's tolerances never report a value below the true minimum. +inf if
        infeasible, -inf if unbounded; a solver limit is an error, never a guess."""
        p = self.milp(d)
        h = _highs_model(p, p.c, p.integrality, "min")
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.0)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        h.run()
        ms = h.getModelStatus()
        if ms == highspy.HighsModelStatus.kOptimal:
            value = float(h.getInfo().objective_function_value)
            if not self.integrality.any():
                return value
            x = np.array(h.getSolution().col_value)
            I = self.integrality
            lb, ub = p.lb.copy(), p.ub.copy()
            lb[I] = ub[I] = np.round(x[I])
            res = solve(dataclasses.replace(p, lb=lb, ub=ub, integrality=np.zeros_like(I)))
            return float(res.objective) if res.status == "optimal" else value
        s = solve(p)  # sorts out infeasible / unbounded / unbounded-or-infeasible
        if s.status == "infeasible":
            return np.inf
        if s.status == "unbounded":
            return -np.inf
        raise UsageError(f"HiGHS could not solve the MILP at d={d}: {s.message}", hint="make the problem smaller")


def as_rhs(d, m: int) -> np.ndarray:
    """d as a float vector of length m (a scalar is accepted when m == 1)."""
    v = np.atleast_1d(np.asarray(d, np.float64))
    if v.shape != (m,):
        raise UsageError(f"right-hand side has shape {np.shape(d)}, expected ({m},)", hint="one value per row")
    return v


class DualFunction:
    """A dual function F of a Problem's value function.

    lp/bb: F(d) = min over pieces of (pi d + const), given as `pieces=[{"pi", "const"}, ...]`.
    Other methods (chvatal) either subclass and override `__call__`, `field`, `pieces`, or pass
    `evaluate=` (d -> float), `field_fn=` (d -> array) and `data=` (what `pieces()` returns).
    `info` holds how it was built (nodes, leaves, limits); `certificate` is filled by `certify`.
    """

    def __init__(self, method: str, problem: Problem, pieces: list[dict] | None = None, *,
                 evaluate: Callable | None = None, field_fn: Callable | None = None, data=None,
                 info: dict | None = None):
        self.method, self.problem = method, problem
        self.info = dict(info or {})
        self.certificate: dict = {}
        self._evaluate, self._field_fn, self._data = evaluate, field_fn, data
        if pieces is not None:
            m = problem.m
            self._pi = np.array([np.asarray(p["pi"], np.float64).reshape(m) for p in pieces]).reshape(-1, m)
            self._const = np.array([float(p["const"]) for p in pieces], np.float64)
        else:
            self._pi = self._const = None

    def affine(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(Pi, const) with F(d) = min_k Pi[k] d + const[k], or None when F is not min-of-affine."""
        return None if self._pi is None else (self._pi, self._const)

    def __call__(self, d) -> float | np.ndarray:
        """F(d) for one right-hand side (length m, or a scalar when m == 1); a (k, m) array of
        right-hand sides gives k values. No pieces at all means F = +inf (z is +inf everywhere)."""
        m = self.problem.m
        arr = np.asarray(d, np.float64)
        if arr.ndim == 2 and arr.shape[1] == m:
            return np.array([self(row) for row in arr]) if self._pi is None else self._min_affine(arr)
        v = as_rhs(arr, m)
        if self._pi is None:
            if self._evaluate is None:
                raise NotImplementedError(f"{type(self).__name__} must override __call__")
            return float(self._evaluate(v))
        return float(self._min_affine(v[None, :])[0])

    def _min_affine(self, D: np.ndarray) -> np.ndarray:
        if self._pi.shape[0] == 0:
            return np.full(D.shape[0], np.inf)
        return np.min(D @ self._pi.T + self._const[None, :], axis=1)

    def active(self, d, tol: float = 1e-9) -> np.ndarray:
        """Indices of the pieces attaining the min at d (within tol, relative to the value)."""
        v = as_rhs(d, self.problem.m)
        vals = self._pi @ v + self._const
        best = vals.min()
        return np.flatnonzero(vals <= best + tol * (1.0 + abs(best)))

    def field(self, d) -> np.ndarray:
        """An element of F's conservative field at d: the gradient of the first active piece, an
        element of Clarke's generalized gradient of the concave piecewise-linear F."""
        if self._pi is None:
            if self._field_fn is None:
                raise NotImplementedError(f"{type(self).__name__} must override field")
            return np.asarray(self._field_fn(as_rhs(d, self.problem.m)), np.float64)
        if self._pi.shape[0] == 0:
            return np.zeros(self.problem.m)
        return self._pi[self.active(d)[0]].copy()

    def pieces(self):
        """lp/bb: [{"pi": array(m), "const": float}, ...]; other methods: their own description."""
        if self._pi is None:
            return self._data
        return [{"pi": p.copy(), "const": float(k)} for p, k in zip(self._pi, self._const)]

    def __repr__(self) -> str:
        n = "?" if self._pi is None else self._pi.shape[0]
        return f"DualFunction(method={self.method!r}, m={self.problem.m}, pieces={n})"


@dataclass
class EnumProblem(Problem):
    """A Problem over a few bounded integer variables whose value z(d) is found by enumeration."""

    def value(self, d=None) -> float:
        """z(d) = min c y over the integer points of the box with A y >= d (exact; +inf if none)."""
        d = self.b if d is None else np.atleast_1d(np.asarray(d, np.float64))
        if getattr(self, "_pts", None) is None:  # the box's integer points, their rows and costs: once
            pts = np.array(list(itertools.product(*[range(int(lo), int(hi) + 1) for lo, hi in zip(self.lb, self.ub)])),
                           np.float64).reshape(-1, self.n)
            self._pts = (pts @ self.A.T, pts @ self.c)
        lhs, cost = self._pts
        ok = np.all(lhs >= d[None, :] - 1e-9, axis=1)
        return float(np.min(cost[ok])) if ok.any() else np.inf

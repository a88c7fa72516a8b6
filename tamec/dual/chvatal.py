"""Chvatal (Gomory) dual functions of pure-integer programs, in exact rational arithmetic.

For `min c x : A x (== or >=) d, 0 <= x <= ub, x integer` with integer A, b, c and ub, Gomory's
fractional cutting-plane algorithm builds a Chvatal function F with F(d) <= z(d) for every d, and
F(b) = z(b) when the loop ends with an integral LP optimum (F is then strong at b).

How (all in `fractions.Fraction`; no float is produced anywhere in the algorithm):
- The system is put in equality form: a surplus column per ">=" row, and for each finite ub_j a
  bound row `x_j + t_j = ub_j` (so every column, slacks included, is integral at integer points).
  A dense tableau simplex (two phases, Bland's rule) solves the LP relaxation.
- Each tableau row is `lam . (rows)` for a multiplier `lam` tracked with the tableau (the objective
  row is `lam = y`, the LP dual). A fractional row gives the cut with multipliers
  `w = -lam - floor(-lam)` in [0, 1): `sum_j ceil(w . col_j) x_j >= ceil(w . rhs)`. This is
  Gomory's fractional cut (same fractional parts), but its coefficients on earlier cut slacks are
  0 and its weights on earlier cuts are >= 0, which is what makes it a Chvatal-Gomory cut:
  layer k is `F_k(beta) = ceil(w_k . (beta, F_1(beta), ..., F_{k-1}(beta)))`.
- After a cut the old basis stays dual feasible; the dual simplex (Bland's rule) re-solves.
- The dual function is `F(d) = u . beta(d) + sum_k v_k F_k(beta(d))`, (u, v) the dual of the last
  basis (v >= 0), `beta(d) = (d, ub of the bounded columns)`. The last basis is always dual
  feasible, so F is a valid minorant even when a limit stops the loop; only strength needs the
  loop to end integral (`terminated`).

With every ub infinite, F(0) = 0, F(a_j) <= c_j (dual feasibility) and subadditivity hold exactly
(ceil layers with weights >= 0 on earlier layers and v >= 0). With finite ub the bound rows keep
their right-hand side ub: F is still a minorant of z, but those three are statements about the
extended function G(beta) (`ChvatalFunction.extended`), not about F (z itself need not satisfy
them then). `F.certificate["exact"]` records which.

Status: "integral" (strong at b), "limit" (max_rounds or max_cuts hit; still a minorant) or
"infeasible" (the LP with the cuts has no point: no integer point at b, z(b) = +inf). An LP
relaxation that is infeasible or unbounded at b is a UsageError.

F is discontinuous (ceil jumps), so it has no conservative field across its jumps; off them every
layer is locally constant, and the a.e. gradient is `u` restricted to the rows of d (`field`).
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

from tamec.dual.problem import DualFunction
from tamec.errors import UsageError

__all__ = ["chvatal_dual", "ChvatalFunction"]

# Cuts added per round (objective row first, then fractional rows by basic column). On 1000 random
# 1-3 row instances, 2 per round ended integral on all, 1 per round hit the 50-round limit on 0.4%
# and every fractional row per round needed ~60% more cuts.
CUTS_PER_ROUND = 2


# ---------------------------------------------------------------------------------------------
# Input: integer data, pure-integer, lb = 0
# ---------------------------------------------------------------------------------------------

def _integer(x, what: str) -> int:
    """`x` as a Python int, or a UsageError naming `what` when it is not an integer."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        if not math.isfinite(x):
            raise UsageError(f"{what} is {x}, not a finite integer",
                             hint="the Chvatal dual needs integer data")
        q = Fraction(x)  # exact: a binary float converts without rounding
        if q.denominator == 1:
            return int(q)
        raise UsageError(f"{what} = {x} is not an integer",
                         hint="the Chvatal dual needs integer A, b, c; scale the rows to integers "
                              "or use method='lp' or 'bb'")
    raise UsageError(f"{what} has type {type(x).__name__}, not a number")


def _senses(constraint, m: int) -> list[str]:
    if isinstance(constraint, str):
        constraint = [constraint] * m
    senses = [str(s) for s in constraint]
    if len(senses) != m:
        raise UsageError(f"constraint has {len(senses)} senses for {m} rows")
    for i, s in enumerate(senses):
        if s not in ("==", ">="):
            raise UsageError(f"row {i} has constraint {s!r}; the Chvatal dual takes '==' or '>='",
                             hint="write a '<=' row as '>=' with the row and its rhs negated")
    return senses


def _exact_data(problem):
    """(c, A, b, ub, senses) of `problem` as Python ints (ub None for +inf); rejects the rest."""
    A = np.asarray(problem.A, dtype=object)
    if A.ndim == 1:
        A = A.reshape(1, -1)
    if A.ndim != 2:
        raise UsageError(f"A has {A.ndim} dimensions, not 2")
    m, n = A.shape
    c = np.asarray(problem.c, dtype=object).reshape(-1)
    b = np.asarray(problem.b, dtype=object).reshape(-1)
    if c.size != n or b.size != m:
        raise UsageError(f"shapes disagree: A is {m}x{n}, c has {c.size}, b has {b.size}")
    integrality = np.asarray(problem.integrality).reshape(-1)
    if integrality.size != n:
        raise UsageError(f"integrality has {integrality.size} entries for {n} columns")
    cont = [j for j in range(n) if not bool(integrality[j])]
    if cont:
        raise UsageError(f"columns {cont} are continuous; the Chvatal dual is for pure-integer "
                         "problems", hint="use method='lp' or 'bb' for mixed-integer problems")
    lb = getattr(problem, "lb", None)
    lb = [0] * n if lb is None else list(np.asarray(lb, dtype=object).reshape(-1))
    ub = getattr(problem, "ub", None)
    ub = [None] * n if ub is None else list(np.asarray(ub, dtype=object).reshape(-1))
    if len(lb) != n or len(ub) != n:
        raise UsageError(f"lb/ub have {len(lb)}/{len(ub)} entries for {n} columns")
    for j in range(n):
        if lb[j] is None or _integer_or_inf(lb[j], f"lb[{j}]") != 0:
            raise UsageError(f"lb[{j}] = {lb[j]}; the Chvatal dual needs lb = 0 on every column",
                             hint="shift the column (x = lb + x') and move lb into b")
    ubs = []
    for j in range(n):
        u = None if ub[j] is None else _integer_or_inf(ub[j], f"ub[{j}]")
        if u is not None and u < 0:
            raise UsageError(f"ub[{j}] = {u} < lb = 0: the problem is infeasible")
        ubs.append(u)
    cc = [_integer(c[j], f"c[{j}]") for j in range(n)]
    AA = [[_integer(A[i, j], f"A[{i},{j}]") for j in range(n)] for i in range(m)]
    bb = [_integer(b[i], f"b[{i}]") for i in range(m)]
    return cc, AA, bb, ubs, _senses(getattr(problem, "constraint", "=="), m)


def _integer_or_inf(x, what: str):
    """An int, or None for +inf (an upper bound that is absent)."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral) and math.isinf(x) \
            and x > 0:
        return None
    return _integer(x, what)


# ---------------------------------------------------------------------------------------------
# Exact dense tableau
# ---------------------------------------------------------------------------------------------

class _Tableau:
    """Rows `T = E [M | rhs]` of the equality system M y = rhs (M grows by a row per cut).

    T: tableau rows (Fractions, rhs last); E: the multipliers of each row over the rows of M
    (so a tableau row is `E_i . rows`); basis: the basic column of each row; cost: column costs.
    """

    def __init__(self, T, E, basis, cost, width):
        self.T, self.E, self.basis, self.cost = T, E, basis, cost
        self.width = width  # rows of M (E's row length), kept even when every row was dropped

    def pivot(self, r: int, j: int) -> None:
        T, E = self.T, self.E
        p = T[r][j]
        T[r] = [t / p for t in T[r]]
        E[r] = [e / p for e in E[r]]
        for i in range(len(T)):
            f = T[i][j]
            if i != r and f != 0:
                T[i] = [a - f * b for a, b in zip(T[i], T[r])]
                E[i] = [a - f * b for a, b in zip(E[i], E[r])]
        self.basis[r] = j

    def reduced_costs(self) -> list[Fraction]:
        cb = [self.cost[k] for k in self.basis]
        ncol = len(self.cost)
        return [self.cost[j] - sum((cb[i] * self.T[i][j] for i in range(len(self.T))),
                                   Fraction(0)) for j in range(ncol)]

    def dual(self) -> list[Fraction]:
        """y = c_B E: the LP dual over the rows of M (also the objective row's multiplier)."""
        y = [Fraction(0)] * self.width
        for i, k in enumerate(self.basis):
            if self.cost[k] != 0:
                y = [a + self.cost[k] * e for a, e in zip(y, self.E[i])]
        return y

    def objective(self) -> Fraction:
        return sum((self.cost[k] * self.T[i][-1] for i, k in enumerate(self.basis)), Fraction(0))

    def primal(self) -> str:
        """Primal simplex with Bland's rule from a feasible basis: 'optimal' or 'unbounded'."""
        while True:
            rc = self.reduced_costs()
            basic = set(self.basis)
            enter = next((j for j in range(len(rc)) if j not in basic and rc[j] < 0), None)
            if enter is None:
                return "optimal"
            best = None
            for i, row in enumerate(self.T):
                if row[enter] > 0:
                    key = (row[-1] / row[enter], self.basis[i])
                    if best is None or key < best[0]:
                        best = (key, i)
            if best is None:
                return "unbounded"
            self.pivot(best[1], enter)

    def dual_simplex(self) -> str:
        """Dual simplex with the dual Bland rule from a dual-feasible basis: 'optimal'/'infeasible'."""
        while True:
            bad = [i for i, row in enumerate(self.T) if row[-1] < 0]
            if not bad:
                return "optimal"
            r = min(bad, key=lambda i: self.basis[i])
            rc = self.reduced_costs()
            best = None
            for j, t in enumerate(self.T[r][:-1]):
                if t < 0:
                    key = (rc[j] / -t, j)
                    if best is None or key < best:
                        best = key
            if best is None:
                return "infeasible"
            self.pivot(r, best[1])


# ---------------------------------------------------------------------------------------------
# Chvatal layers
# ---------------------------------------------------------------------------------------------

def _layers(layers, beta) -> list[int]:
    """The values F_1(beta), ..., F_K(beta) of the rounding layers (ints)."""
    vals: list[int] = []
    nb = len(beta)
    for lam in layers:
        arg = sum((lam[i] * beta[i] for i in range(nb)), Fraction(0))
        arg += sum((lam[nb + k] * vals[k] for k in range(len(vals))), Fraction(0))
        vals.append(math.ceil(arg))
    return vals


def _rational(x, what: str) -> Fraction:
    """An exact Fraction from an int, Fraction or (binary, hence exact) float."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, numbers.Rational):
        return Fraction(x)
    if isinstance(x, numbers.Real) and math.isfinite(x):
        return Fraction(x)
    raise UsageError(f"{what} = {x!r} is not a finite rational number")


class ChvatalFunction(DualFunction):
    """F(d) = u . beta(d) + sum_k v_k F_k(beta(d)), beta(d) = (d, ub of the bounded columns).

    `exact(d)` is exact (Fraction); `__call__` is its float. `terminated` is True when the cutting
    loop ended with an integral LP optimum, so that F(b) = z(b).
    """

    def __init__(self, problem, *, m, u, v, layers, bounds, rounds, status, lp_value, x):
        super().__init__("chvatal", problem, None,
                         info={"rounds": rounds, "cuts": len(layers), "status": status})
        self.m, self.u, self.v, self.layers, self.bounds = m, u, v, layers, bounds
        self.rounds, self.status, self.lp_value, self.x = rounds, status, lp_value, x
        self.terminated = status == "integral"
        self.certificate = {"structure": f"Chvatal function (rounding layers: {len(layers)})"}

    def _d(self, d) -> list[Fraction]:
        arr = np.asarray(d, dtype=object).reshape(-1)
        if arr.size != self.m:
            raise UsageError(f"d has {arr.size} entries, the problem has {self.m} rows")
        return [_rational(arr[i], f"d[{i}]") for i in range(self.m)]

    def _beta(self, d) -> list[Fraction]:
        return self._d(d) + [Fraction(u) for _, u in self.bounds]

    def extended(self, beta) -> Fraction:
        """G(beta) exactly, beta over the original rows then the bound rows x_j + t_j = ub_j."""
        beta = [_rational(x, "beta") for x in np.asarray(beta, dtype=object).reshape(-1)]
        if len(beta) != len(self.u):
            raise UsageError(f"beta has {len(beta)} entries, expected {len(self.u)}")
        vals = _layers(self.layers, beta)
        return (sum((a * x for a, x in zip(self.u, beta)), Fraction(0))
                + sum((a * x for a, x in zip(self.v, vals)), Fraction(0)))

    def exact(self, d) -> Fraction:
        """F(d) as an exact Fraction (d: ints, Fractions or floats, len m; scalar when m == 1)."""
        return self.extended(self._beta(d))

    def __call__(self, d):
        """float(F(d)); a (k, m) array of right-hand sides gives k values."""
        arr = np.asarray(d, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == self.m:
            return np.array([float(self.exact(row)) for row in arr])
        return float(self.exact(d))

    def pieces(self) -> dict:
        """u (over d's rows, then bound rows), v (>= 0), and each layer's multipliers, as strings."""
        return {"u": [str(a) for a in self.u], "v": [str(a) for a in self.v],
                "layers": [[str(a) for a in lam] for lam in self.layers],
                "bounds": [[j, ub] for j, ub in self.bounds]}

    def field(self, d) -> np.ndarray:
        """The a.e. gradient at d: u on d's rows (ceil layers are locally constant off their jumps,
        so the chain through them contributes 0).

        F is discontinuous where a layer's argument crosses an integer: no conservative field exists
        there (u is then the gradient of the piece holding d, valid on one side only);
        `on_jump(d)` says whether d may be such a point.
        """
        self._d(d)
        return np.array([float(a) for a in self.u[:self.m]])

    def on_jump(self, d) -> bool:
        """True when some layer's argument is an integer at d (a point where F may jump)."""
        beta = self._beta(d)
        nb = len(beta)
        vals: list[int] = []
        for lam in self.layers:
            arg = sum((lam[i] * beta[i] for i in range(nb)), Fraction(0))
            arg += sum((lam[nb + k] * vals[k] for k in range(len(vals))), Fraction(0))
            if arg.denominator == 1 and any(lam[:nb]):
                return True
            vals.append(math.ceil(arg))
        return False


# ---------------------------------------------------------------------------------------------
# Gomory's fractional algorithm
# ---------------------------------------------------------------------------------------------

def chvatal_dual(problem, *, max_rounds: int = 50, max_cuts: int = 200) -> ChvatalFunction:
    """The Chvatal dual function of a pure-integer problem with integer data (Gomory's cuts)."""
    for name, lim in (("max_rounds", max_rounds), ("max_cuts", max_cuts)):
        if isinstance(lim, bool) or not isinstance(lim, numbers.Integral) or lim < 0:
            raise UsageError(f"{name} = {lim!r} is not a nonnegative integer", hint="e.g. 50")
    c, A, b, ub, senses = _exact_data(problem)
    m, n = len(A), len(c)
    bounds = [(j, ub[j]) for j in range(n) if ub[j] is not None]
    nb = m + len(bounds)
    # Columns of the equality form as `base` vectors over the nb rows: x, surplus, bound slacks.
    base: list[list[int]] = []
    for j in range(n):
        col = [A[i][j] for i in range(m)] + [0] * len(bounds)
        for k, (jj, _) in enumerate(bounds):
            if jj == j:
                col[m + k] = 1
        base.append(col)
    for i in range(m):
        if senses[i] == ">=":
            base.append([-1 if r == i else 0 for r in range(nb)])
    for k in range(len(bounds)):
        base.append([1 if r == m + k else 0 for r in range(nb)])
    cost = [Fraction(x) for x in c] + [Fraction(0)] * (len(base) - n)
    beta_b = [Fraction(x) for x in b] + [Fraction(u) for _, u in bounds]

    tab = _phase_one(base, beta_b, nb)
    tab.cost = cost
    if tab.primal() == "unbounded":
        raise UsageError("the LP relaxation is unbounded, so no dual function is finite at b",
                         hint="bound the integer columns (ub) or check the sign of c")

    # Cut bookkeeping: a layer's multipliers run over the nb base rows then the earlier layers;
    # `colvals[j]` holds F_1..F_K at base column j (cut-slack columns get 0 in later cuts: see the
    # module docstring).
    layers: list[list[Fraction]] = []
    colvals: list[list[int]] = [[] for _ in base]
    rhs_vals: list[int] = []
    status, rounds = "limit", 0
    while True:
        if all(row[-1].denominator == 1 for row in tab.T):
            status = "integral"
            break
        if rounds >= max_rounds or len(layers) >= max_cuts:
            break
        rounds += 1
        added = _add_cuts(tab, layers, colvals, rhs_vals, base, beta_b, nb, max_cuts - len(layers))
        if not added:  # cannot happen with exact arithmetic; guard against an endless loop
            break
        if tab.dual_simplex() == "infeasible":
            status = "infeasible"  # no integer point at b: z(b) = +inf, F stays a valid minorant
            break

    y = tab.dual()
    u, v = y[:nb], y[nb:]
    x = [Fraction(0)] * len(tab.cost)
    for i, k in enumerate(tab.basis):
        x[k] = tab.T[i][-1]
    F = ChvatalFunction(problem, m=m, u=u, v=v, layers=layers, bounds=bounds, rounds=rounds,
                        status=status, lp_value=tab.objective(), x=x[:n])
    worst = _dual_feasibility(F, base, colvals, cost)
    assert all(a >= 0 for a in v) and worst <= 0, "the last basis is not dual feasible"  # a bug
    if status == "integral":
        assert F.extended(beta_b) == F.lp_value, "F(b) differs from the integral LP value"  # a bug
    F.certificate["exact"] = {
        "how": "exact (rational arithmetic)", "status": status, "terminated": F.terminated,
        "rounds": rounds, "cuts": len(layers), "bound_rows": len(bounds),
        "lp_value_at_b": str(F.lp_value), "F_b": str(F.extended(beta_b)),
        # The extended G(beta) is a Chvatal function: ceil layers with weights >= 0 on earlier
        # layers and v >= 0, so G(0) = 0 and G is subadditive on all of R^(rows + bound rows).
        "G0": True, "G_subadditive": "by construction",
        "G_dual_feasible": {"holds": True, "max_reduced_excess": str(worst),
                            "columns": len(base)},
        "note": ("F(d) = G(d, ub): F(0) = 0, subadditivity and F(a_j) <= c_j hold for F itself"
                 if not bounds else
                 "F(d) = G(d, ub) with bound rows fixed at ub: F is a minorant of z, but F(0) = 0, "
                 "subadditivity and F(a_j) <= c_j are statements about G, not about F"),
    }
    return F


def _phase_one(base, beta_b, nb) -> _Tableau:
    """A feasible basis of the equality form (artificials driven out, redundant rows dropped)."""
    ncol = len(base)
    T, E = [], []
    for i in range(nb):
        s = -1 if beta_b[i] < 0 else 1  # artificial columns need rhs >= 0
        T.append([Fraction(s * base[j][i]) for j in range(ncol)]
                 + [Fraction(int(r == i)) for r in range(nb)] + [s * beta_b[i]])
        E.append([Fraction(s if r == i else 0) for r in range(nb)])
    cost = [Fraction(0)] * ncol + [Fraction(1)] * nb
    tab = _Tableau(T, E, list(range(ncol, ncol + nb)), cost, nb)
    tab.primal()
    if tab.objective() > 0:
        raise UsageError("the LP relaxation is infeasible at b, so the problem has no integer point",
                         hint="check b and the constraint senses")
    keep = []
    for r in range(len(tab.T)):
        if tab.basis[r] >= ncol:
            j = next((j for j in range(ncol) if tab.T[r][j] != 0), None)
            if j is None:
                continue  # a redundant row: dropping it relaxes nothing
            tab.pivot(r, j)
        keep.append(r)
    tab.T = [tab.T[r][:ncol] + [tab.T[r][-1]] for r in keep]
    tab.E = [tab.E[r] for r in keep]
    tab.basis = [tab.basis[r] for r in keep]
    return tab


def _add_cuts(tab, layers, colvals, rhs_vals, base, beta_b, nb, budget) -> int:
    """Add Gomory cuts from the fractional rows (objective row first); returns how many."""
    sources = []
    z = tab.objective()
    if z.denominator != 1:
        sources.append(tab.dual())
    order = sorted(range(len(tab.T)), key=lambda i: tab.basis[i])
    sources += [list(tab.E[i]) for i in order if tab.T[i][-1].denominator != 1]
    sources = sources[:CUTS_PER_ROUND]  # snapshot: _add_cut widens the rows of E
    added, seen = 0, set()
    for lam in sources[:budget]:
        w = [-a - math.floor(-a) for a in lam]  # in [0, 1): nonnegative weights on earlier cuts
        key = tuple(w)
        if key in seen or not any(w):
            continue
        seen.add(key)
        _add_cut(tab, w, layers, colvals, rhs_vals, base, beta_b, nb)
        added += 1
    return added


def _add_cut(tab, w, layers, colvals, rhs_vals, base, beta_b, nb) -> None:
    """Append layer F_K = ceil(w . (beta, F_1..F_{K-1})) and its cut row with a surplus column."""
    K = len(layers)
    w = w + [Fraction(0)] * (nb + K - len(w))  # an earlier cut of this round has weight 0

    def layer_at(vec, prev):
        arg = sum((w[i] * vec[i] for i in range(nb)), Fraction(0))
        return math.ceil(arg + sum((w[nb + k] * prev[k] for k in range(K)), Fraction(0)))

    layers.append(w)
    ncol = len(tab.cost)
    coef = [Fraction(0)] * ncol
    for j in range(len(base)):
        colvals[j].append(layer_at(base[j], colvals[j]))
        coef[j] = Fraction(colvals[j][-1])
    rhs = layer_at(beta_b, rhs_vals)
    rhs_vals.append(rhs)
    # New row of M: coef . y - s = rhs, with s a new column (cost 0).
    tab.cost.append(Fraction(0))
    for row in tab.T:
        row.insert(-1, Fraction(0))
    for e in tab.E:
        e.append(Fraction(0))
    tab.width += 1
    row = coef + [Fraction(-1), Fraction(rhs)]
    e_new = [Fraction(0)] * (tab.width - 1) + [Fraction(1)]
    for i, k in enumerate(tab.basis):
        f = row[k]
        if f != 0:
            row = [a - f * t for a, t in zip(row, tab.T[i])]
            e_new = [a - f * e for a, e in zip(e_new, tab.E[i])]
    tab.T.append([-a for a in row])
    tab.E.append([-a for a in e_new])
    tab.basis.append(ncol)


def _dual_feasibility(F, base, colvals, cost) -> Fraction:
    """max_j G(col_j) - c_j over the columns of the equality form (<= 0: dual feasible), exactly."""
    worst = None
    for j in range(len(base)):
        g = (sum((a * x for a, x in zip(F.u, base[j])), Fraction(0))
             + sum((a * x for a, x in zip(F.v, colvals[j])), Fraction(0)))
        worst = g - cost[j] if worst is None else max(worst, g - cost[j])
    return Fraction(0) if worst is None else worst

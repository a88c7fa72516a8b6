"""The Chvatal (Gomory) dual function: exact, a minorant of the value function, strong at b."""
from __future__ import annotations

import itertools
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

import tamec.dual.chvatal as chv
from tamec.dual.function import Problem, dual_function
from tamec.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Brute force: z(d) exactly over the integer points of a box that is known to hold an optimum
# ---------------------------------------------------------------------------------------------


def _enumerator(P: Problem, dmax, box: int | None = None):
    """z(d) for every integer d <= dmax, by enumerating the integer points that can be optimal.

    Columns are boxed by ub, or (equality rows with a positive row i) by a_i x <= dmax_i, or
    (covering: A >= 0, c > 0) by x_j <= max_i ceil(dmax_i / a_ij), or by `box` given by the caller
    who proved it. Returns ints (None: infeasible).
    """
    A, dmax = P.A.astype(np.int64), np.asarray(dmax, np.int64)
    budget = [i for i in range(P.m) if P.constraint == "==" and np.all(A[i] > 0)]
    hi = []
    for j in range(P.n):
        if np.isfinite(P.ub[j]):
            hi.append(int(P.ub[j]))
        elif box is not None:
            hi.append(box)
        elif budget:
            hi.append(int(min(max(dmax[i], 0) // A[i, j] for i in budget)))
        else:
            assert P.constraint == ">=" and np.all(A >= 0) and np.all(P.c > 0), "no exact box"
            hi.append(max([-(-max(int(dmax[i]), 0) // int(A[i, j])) for i in range(P.m) if A[i, j] > 0],
                          default=0))
    X = np.zeros((1, 0), np.int64)
    for j in range(P.n):  # grow column by column, dropping points already over a budget row
        X = np.hstack([np.repeat(X, hi[j] + 1, axis=0),
                       np.tile(np.arange(hi[j] + 1), len(X))[:, None]])
        for i in budget:
            X = X[X @ A[i, :j + 1] <= dmax[i]]
    AX, cost = X @ A.T, X @ P.c.astype(np.int64)

    def z(d):
        d = np.asarray(d, np.int64)
        assert np.all(d <= dmax)
        ok = np.all(AX == d, axis=1) if P.constraint == "==" else np.all(AX >= d, axis=1)
        return int(cost[ok].min()) if ok.any() else None

    return z


def _random_problem(rng) -> Problem:
    """A 1-3 row, 2-5 column pure-integer problem whose optimum at any d lies in are boxed (see
    `_enumerator`), so enumeration is exact: one of four families."""
    m, n = int(rng.integers(1, 4)), int(rng.integers(2, 6))
    kind = int(rng.integers(0, 4))
    c = rng.integers(-3, 6, n)
    ub = None
    if kind == 0:  # equality rows, the first all positive: x_j <= d_0
        A = rng.integers(-3, 4, (m, n))
        A[0] = rng.integers(1, 4, n)
        cons, b = "==", A @ rng.integers(0, 3, n)
    elif kind == 3:  # the same with larger coefficients: deeper cuts, bigger fractions
        A, c = rng.integers(-9, 10, (m, n)), rng.integers(-9, 10, n)
        A[0] = rng.integers(4, 10, n)
        cons, b = "==", A @ rng.integers(0, 3, n)
    elif kind == 1:  # a box 0 <= x <= ub, any signs
        A, ub = rng.integers(-3, 4, (m, n)), rng.integers(1, 4, n)
        cons = ("==", ">=")[int(rng.integers(0, 2))]
        b = A @ rng.integers(0, ub + 1) - (rng.integers(0, 2, m) if cons == ">=" else 0)
    else:  # covering: A >= 0 with no zero row, c > 0, so x_j <= max_i d_i at an optimum
        A = rng.integers(0, 4, (m, n))
        A[np.arange(m), rng.integers(0, n, m)] += 1
        c, cons, b = rng.integers(1, 6, n), ">=", rng.integers(1, 7, m)
    return Problem.build(c, A, b, np.ones(n, bool), None, ub, cons)


def _extended_columns(P: Problem):
    """The columns of the equality form over (rows, bound rows) and their costs, as ints."""
    bounded = [j for j in range(P.n) if np.isfinite(P.ub[j])]
    m, nb = P.m, P.m + len(bounded)
    cols = []
    for j in range(P.n):
        col = [int(a) for a in P.A[:, j]] + [int(j == k) for k in bounded]
        cols.append((col, int(P.c[j])))
    if P.constraint == ">=":
        cols += [([-int(r == i) for r in range(nb)], 0) for i in range(m)]
    cols += [([int(r == m + k) for r in range(nb)], 0) for k in range(len(bounded))]
    return cols


def _beta(P: Problem, d):
    return [int(x) for x in d] + [int(P.ub[j]) for j in range(P.n) if np.isfinite(P.ub[j])]


def test_random_pure_integer_suite():
    """On 600 seeded instances: F(b) = z(b) exactly when the loop ends integral, F <= z on a box of
    integer d around b, F(0) = 0 and F(a_j) <= c_j (G on the equality form's columns with ub)."""
    rng = np.random.default_rng(20240604)
    runs, terminated, with_cuts = 600, 0, 0
    for _ in range(runs):
        P = _random_problem(rng)
        F = chv.chvatal_dual(P)
        b = P.b.astype(np.int64)
        r = 2 if P.m < 3 else 1
        z = _enumerator(P, b + r)
        terminated += F.terminated
        with_cuts += len(F.layers) > 0
        if F.terminated:
            assert F.exact(b) == z(b) == F.lp_value, (P, F.pieces())
        for off in itertools.product(range(-r, r + 1), repeat=P.m):
            d = b + np.array(off)
            zd = z(d)
            assert zd is None or F.exact(d) <= zd, (P, d, F.exact(d), zd, F.pieces())
        assert F.extended([0] * len(F.u)) == 0
        for col, cost in _extended_columns(P):
            assert F.extended(col) <= cost, (P, col, F.pieces())
        if np.all(np.isinf(P.ub)):  # the plain statements, no bound rows in the way
            assert F.exact(np.zeros(P.m, np.int64)) == 0
            for j in range(P.n):
                assert F.exact(P.A[:, j].astype(np.int64)) <= int(P.c[j])
        assert F.certificate["structure"] == f"Chvatal function (rounding layers: {len(F.layers)})"
    assert terminated >= 0.95 * runs, terminated
    assert with_cuts >= 0.2 * runs, with_cuts  # the suite exercises the cutting loop, not only LPs


def test_textbook_cut_x1_plus_x2_le_1():
    """max x1 + x2 s.t. 2x1 + 2x2 <= 3 (as min -x1 - x2, 2x1 + 2x2 + s = 3): the Gomory cut is
    ceil(d/2) applied to the row, i.e. x1 + x2 + s >= 2, which is x1 + x2 <= 1; F = z = -floor(d/2)."""
    F = dual_function([-1, -1, 0], [[2, 2, 1]], [3], [True] * 3, method="chvatal")
    assert F.terminated and F.status == "integral"
    assert F.pieces()["layers"] == [["1/2"]]
    cut = [int(np.ceil(Fraction(1, 2) * a)) for a in (2, 2, 1)], int(np.ceil(Fraction(3, 2)))
    assert cut == ([1, 1, 1], 2)
    assert F.pieces()["u"] == ["-1"] and F.pieces()["v"] == ["1"]
    assert F.exact(3) == -1 and F(3) == -1.0 and F.x == [1, 0, 1]
    for d in range(0, 21):
        assert F.exact(d) == -(d // 2)  # equal to the value function for every d >= 0
    assert F.on_jump(4) and not F.on_jump(3)  # ceil(d/2) jumps just after even d
    np.testing.assert_array_equal(F.field(3), [-1.0])  # a.e. gradient: u, the layer is flat


def test_textbook_gomory_wolsey():
    """Wolsey's example max 4x1 - x2 s.t. 7x1 - 2x2 <= 14, x2 <= 3, 2x1 - 2x2 <= 3: LP optimum
    59/7 at (20/7, 3), integer optimum 7 at (2, 1); the Chvatal dual is strong and a minorant."""
    c, A, b = [-4, 1], [[-7, 2], [0, -1], [-2, 2]], [-14, -3, -3]
    F = dual_function(c, A, b, [True, True], constraint=">=", method="chvatal")
    assert F.terminated and F.x == [2, 1] and F.exact(b) == -7
    assert len(F.layers) >= 1  # the LP optimum 59/7 is fractional: at least one cut was needed
    P = F.problem
    z = _enumerator(P, np.array(b) + 2, box=6)  # d >= b - 2: x2 <= 5, 7 x1 <= 16 + 2 x2
    for off in itertools.product(range(-2, 3), repeat=3):
        d = np.array(b) + off
        zd = z(d)
        assert zd is None or F.exact(d) <= zd, (d, F.exact(d), zd)
    for j in range(2):
        assert F.exact(P.A[:, j].astype(int)) <= c[j]


def test_everything_is_exact(monkeypatch):
    """The algorithm never makes a float: `float` is forbidden inside the module, every pivot
    leaves Fractions, and the result's data are Fractions or ints."""
    def no_float(*a, **k):
        raise AssertionError("float() called inside the exact algorithm")

    monkeypatch.setattr(chv, "float", no_float, raising=False)
    pivot = chv._Tableau.pivot
    pivots = []

    def checked(self, r, j):
        pivot(self, r, j)
        pivots.append(1)
        for row in self.T + self.E:
            assert all(type(a) is Fraction for a in row), row
        assert all(type(a) is Fraction for a in self.cost)

    monkeypatch.setattr(chv._Tableau, "pivot", checked)
    rng = np.random.default_rng(7)
    for _ in range(40):
        F = chv.chvatal_dual(_random_problem(rng))
        for a in F.u + F.v + [F.lp_value] + F.x + [x for lam in F.layers for x in lam]:
            assert type(a) is Fraction, (a, type(a))
        assert type(F.exact(F.problem.b.astype(np.int64))) is Fraction
        assert type(F.exact([Fraction(1, 3)] * F.problem.m)) is Fraction
    assert pivots


def test_limit_still_a_minorant_and_infeasible_b():
    """Stopped by a limit, F is still a minorant (the last basis is dual feasible) but not strong;
    with no integer point at b (2x1 + 2x2 = 3) the loop reports infeasible and F stays below z."""
    c, A, b = [-4, 1], [[-7, 2], [0, -1], [-2, 2]], [-14, -3, -3]
    F = dual_function(c, A, b, [True, True], constraint=">=", method="chvatal", max_rounds=0)
    assert not F.terminated and F.status == "limit" and F.exact(b) == Fraction(-59, 7)
    z = _enumerator(F.problem, np.array(b) + 2, box=6)
    for off in itertools.product(range(-2, 3), repeat=3):
        zd = z(np.array(b) + off)
        assert zd is None or F.exact(np.array(b) + off) <= zd
    G = dual_function([1, 1], [[2, 2]], [3], [True, True], method="chvatal")
    assert G.status == "infeasible" and not G.terminated
    for d in range(0, 12, 2):
        assert G.exact(d) <= d // 2  # z(d) = d/2 on even d, +inf on odd d


@pytest.mark.parametrize("kwargs, match", [
    (dict(c=[1, 0.5]), r"c\[1\] = 0.5 is not an integer"),
    (dict(A=[[2, 1.5]]), r"A\[0,1\] = 1.5 is not an integer"),
    (dict(b=[2.5]), r"b\[0\] = 2.5 is not an integer"),
    (dict(integrality=[True, False]), r"columns \[1\] are continuous"),
    (dict(lb=[0, 1]), r"lb\[1\] = 1.0; the Chvatal dual needs lb = 0"),
    (dict(ub=[3, 2.5]), r"ub\[1\] = 2.5 is not an integer"),
])
def test_rejects_non_integer_and_mixed(kwargs, match):
    """Non-integer data, continuous columns, lb != 0 and fractional ub get a UsageError naming them."""
    args = dict(c=[1, 1], A=[[2, 1]], b=[3], integrality=[True, True])
    args.update(kwargs)
    with pytest.raises(UsageError, match=match):
        dual_function(**args, method="chvatal")


def test_rejects_design_check_mixed_instance_and_bad_sense():
    """DESIGN's known check (x3, x4 continuous, -3/2 coefficient) and a '<=' row are refused."""
    with pytest.raises(UsageError, match="continuous"):
        dual_function([0.5, 0, 2, 1], [[1, -1.5, 1, -1]], [1], [True, True, False, False],
                      method="chvatal")
    bad = SimpleNamespace(c=[1, 1], A=[[1, 1]], b=[1], integrality=[True, True], lb=None, ub=None,
                          constraint="<=")
    with pytest.raises(UsageError, match="'<='"):
        chv.chvatal_dual(bad)
    with pytest.raises(UsageError, match="max_cuts"):
        dual_function([1, 1], [[2, 1]], [3], [True, True], method="chvatal", max_cuts=-1)


def test_redundant_rows_unbounded_and_infeasible_lp():
    """A duplicated row is dropped (F still exact at b and a minorant); an unbounded or infeasible
    LP relaxation at b is a UsageError saying which."""
    F = dual_function([1, 2, 0], [[2, 3, 1], [4, 6, 2]], [7, 14], [True] * 3, method="chvatal")
    z = _enumerator(F.problem, [9, 18])
    assert F.terminated and F.exact([7, 14]) == z([7, 14])
    for d in itertools.product(range(5, 10), range(10, 19)):
        assert z(d) is None or F.exact(d) <= z(d)
    np.testing.assert_array_equal(F([[7, 14], [0, 0]]), [float(z([7, 14])), 0.0])  # (k, m) rows
    with pytest.raises(UsageError, match="unbounded"):
        dual_function([-1, 1], [[1, -2]], [1], [True, True], method="chvatal")
    with pytest.raises(UsageError, match="infeasible at b"):
        dual_function([3, 5], [[1, 1]], [3], [True, True], ub=[1, 1], constraint=">=", method="chvatal")

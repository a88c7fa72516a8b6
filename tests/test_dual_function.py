"""Dual functions of small MILPs (lp, bb) and their certificates, against exact enumeration.

The oracle here is independent of HiGHS: integer parts are enumerated over their (bounded) box and
the continuous part (at most 2 columns, bounded) is solved by enumerating the vertices of its
polytope, so a certificate's claims are checked against the true value function.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tamec.dual.certificate import certify, default_grid
from tamec.dual.function import DualFunction, Problem
from tamec.errors import UsageError
from tamec.passes.dualize import dual_function

# The textbook instance (DESIGN.md): min x1/2 + 2 x3 + x4 : x1 - 3/2 x2 + x3 - x4 = d, x1, x2 in Z+.
TEXT_C, TEXT_A, TEXT_I = [0.5, 0.0, 2.0, 1.0], [[1.0, -1.5, 1.0, -1.0]], [True, True, False, False]
TEXT_Z = {-3: 0, -2.5: 1, -1.5: 0, -1: 1, 0: 0, 0.5: 1, 1: 0.5, 1.5: 1.5, 2: 1, 3: 1.5}
FINE = np.arange(-3.0, 3.0 + 1e-9, 0.25)


def text_z(d: float) -> float:
    """z(d) of the textbook instance by enumeration of x1, x2 <= 20 (x3 - x4 takes the rest)."""
    x1, x2 = np.meshgrid(np.arange(21), np.arange(21))
    r = d - x1 + 1.5 * x2
    return float(np.min(0.5 * x1 + np.where(r >= 0, 2 * r, -r)))


def enum_z(p: Problem, d) -> float:
    """z(d) by enumerating the integer box and the vertices of the continuous part's polytope."""
    d = np.atleast_1d(np.asarray(d, np.float64))
    I, C = np.flatnonzero(p.integrality), np.flatnonzero(~p.integrality)
    grids = [np.arange(p.lb[j], p.ub[j] + 1) for j in I]
    XI = np.array(list(itertools.product(*grids)), np.float64).reshape(-1, len(I))
    e = d[None, :] - XI @ p.A[:, I].T  # what the continuous part must cover, per integer point
    base = XI @ p.c[I]
    eq = p.constraint == "=="
    k = len(C)
    if k == 0:
        ok = np.all(np.abs(e) <= 1e-9, axis=1) if eq else np.all(e <= 1e-9, axis=1)
        return float(base[ok].min()) if ok.any() else np.inf
    AC, lbC, ubC = p.A[:, C], p.lb[C], p.ub[C]
    # constraint pool: rows (a x = e_i) and bounds (x_k = lb_k or ub_k); a vertex is k of them
    pool = [("row", i) for i in range(p.m)] + [("lb", q) for q in range(k)] + [("ub", q) for q in range(k)]
    best = np.full(len(XI), np.inf)
    for S in itertools.combinations(pool, k):
        M = np.array([AC[i] if kind == "row" else np.eye(k)[i] for kind, i in S])
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        R = np.stack([e[:, i] if kind == "row" else np.full(len(XI), (lbC if kind == "lb" else ubC)[i])
                      for kind, i in S], axis=1)
        X = np.linalg.solve(M, R.T).T
        lhs = X @ AC.T
        ok = np.all(X >= lbC - 1e-9, axis=1) & np.all(X <= ubC + 1e-9, axis=1)
        ok &= np.all(np.abs(lhs - e) <= 1e-9, axis=1) if eq else np.all(lhs >= e - 1e-9, axis=1)
        best = np.where(ok, np.minimum(best, base + X @ p.c[C]), best)
    return float(best.min())


def random_problem(seed: int, mixed: bool) -> Problem:
    """A small bounded problem whose right-hand side b is feasible (b = A x0, minus slack on >=)."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 4))
    nI = int(rng.integers(2, 5)) if mixed else int(rng.integers(2, 7))
    nC = int(rng.integers(1, 3)) if mixed else 0
    n = nI + nC
    A = rng.integers(-5, 6, size=(m, n)).astype(np.float64)
    c = rng.integers(-3, 8, size=n).astype(np.float64)
    top = {2: 7, 3: 5, 4: 4, 5: 3, 6: 2}[nI]  # at most 729 integer points to enumerate
    ub = rng.integers(1, top + 1, size=n).astype(np.float64)
    integ = np.r_[np.ones(nI, bool), np.zeros(nC, bool)]
    x0 = np.where(integ, rng.integers(0, ub + 1), rng.integers(0, 2 * ub + 1) / 2.0)
    constraint = "==" if seed % 2 == 0 else ">="
    b = A @ x0 - (rng.integers(0, 3, size=m) if constraint == ">=" else 0)
    return Problem.build(c, A, b, integ, 0.0, ub, constraint)


def make(p: Problem, method: str, **limits) -> DualFunction:
    return dual_function(p.c, p.A, p.b, p.integrality, p.lb, p.ub, p.constraint, method=method, **limits)


def slack(*v) -> float:
    return 1e-7 * (1.0 + max(abs(x) for x in v if np.isfinite(x)))


@pytest.mark.parametrize("b", sorted(TEXT_Z))
def test_textbook_bb_is_strong_minorant(b):
    """bb on the textbook instance: a minorant on [-3, 3] step 1/4 and equal to the listed z(b)."""
    assert text_z(b) == TEXT_Z[b]  # the oracle agrees with DESIGN.md
    F = dual_function(TEXT_C, TEXT_A, b, TEXT_I, method="bb", depth=20, max_nodes=400)
    assert F.info["complete"]
    for d in FINE:
        assert F(d) <= text_z(d) + 1e-9, (b, d)
    cert = certify(F, grid=FINE[:, None])
    assert cert["minorant"]["holds"] and cert["strong"]
    assert F(b) == pytest.approx(TEXT_Z[b], abs=1e-9)


def test_textbook_lp_gap_reported():
    """The lp dual is a minorant everywhere on the grid, and its reported gap is z(b) - F(b)."""
    gaps = {}
    for b, z in TEXT_Z.items():
        F = dual_function(TEXT_C, TEXT_A, b, TEXT_I, method="lp")
        assert all(F(d) <= text_z(d) + 1e-9 for d in FINE)
        cert = certify(F, grid=FINE[:, None])
        assert cert["minorant"]["holds"]
        assert cert["gap"] == pytest.approx(z - F(b), abs=1e-9)
        assert cert["strong"] == (abs(z - F(b)) <= 1e-7)
        gaps[b] = round(cert["gap"], 6)
    print("lp gaps on the textbook instance:", gaps)
    assert gaps[-2.5] == 1.0 and gaps[0] == 0.0  # LP value max(0, d/2): a gap of 1 at -2.5, none at 0


@pytest.mark.parametrize("mixed", [False, True], ids=["pure", "mixed"])
def test_random_certificates_never_lie(mixed):
    """On random bounded problems no certificate claims a property that enumeration refutes, lp
    and bb are minorants at random feasible right-hand sides, and complete bb trees are strong."""
    stats = {label: {"strong": 0, "complete": 0, "total": 0, "infeasible_leaves": 0} for label in ("bb", "bb-depth-2")}
    for seed in range(16):
        p = random_problem(seed + (100 if mixed else 0), mixed)
        grid = default_grid(p, max_grid=64, seed=seed)
        z = {tuple(d): enum_z(p, d) for d in grid}
        rng = np.random.default_rng(seed)
        I = p.integrality
        probes = []
        for _ in range(30):  # right-hand sides where z is finite, and some next to them
            x = np.where(I, rng.integers(0, p.ub + 1), rng.uniform(0, p.ub))
            probes.append(p.A @ x + (0 if p.constraint == "==" else rng.integers(-1, 1, p.m)))
        for label, method, limits in (("lp", "lp", {}), ("bb", "bb", {"depth": 30, "max_nodes": 2000}),
                                      ("bb-depth-2", "bb", {"depth": 2})):
            F = make(p, method, **limits)
            cert = certify(F, grid=grid, samples=50, seed=seed)
            assert cert["minorant"]["holds"], (seed, label, cert["minorant"])  # a theorem for lp and bb
            for d in grid:
                assert F(d) <= z[tuple(d)] + slack(F(d), z[tuple(d)]), (seed, label, d)
            for d in probes:
                zd = enum_z(p, d)
                assert F(d) <= zd + slack(F(d), zd), (seed, label, d)
            zb = z[tuple(p.b)]
            assert cert["gap"] == pytest.approx(zb - F(p.b), abs=1e-7)
            if cert["strong"]:
                assert abs(zb - F(p.b)) <= slack(zb)
            if cert["F0"]["holds"]:
                assert abs(F(np.zeros(p.m))) <= 1e-7
            if cert["dual_feasible"]["holds"]:
                for j in range(p.n):
                    a = p.A[:, j]
                    val = F(a) if I[j] else F(1e-6 * a) / 1e-6
                    assert val <= p.c[j] + 1e-5, (seed, label, j)
            sub = cert["subadditive"]
            if not sub["holds"]:  # an exact "no" comes with a witness that really breaks it
                x, y = np.array(sub["witness"]["x"]), np.array(sub["witness"]["y"])
                assert F(x + y) > F(x) + F(y)
            if method == "bb":
                st = stats[label]
                st["total"] += 1
                st["strong"] += cert["strong"]
                st["complete"] += F.info["complete"]
                st["infeasible_leaves"] += F.info["leaves"]["infeasible"]
                if F.info["complete"]:
                    assert cert["strong"], (seed, F.info["leaves"])
                d = probes[0] + 0.1
                g, h = F.field(d), 1e-7
                if len(F.active(d)) == 1:  # off the kinks the field is the gradient
                    fd = [(F(d + h * e) - F(d)) / h for e in np.eye(p.m)]
                    assert np.allclose(g, fd, atol=1e-4)
    for label, st in stats.items():
        print(f"{'mixed' if mixed else 'pure'} {label}: strong {st['strong']}/{st['total']}, complete trees "
              f"{st['complete']}, infeasible leaves (Farkas pieces) {st['infeasible_leaves']}")
    assert stats["bb"]["strong"] / stats["bb"]["total"] > 0.5


def test_shifted_dual_fails_its_certificate():
    """A strong bb dual shifted up by 1 is caught: not a minorant, F(0) != 0 (both ways of wrapping)."""
    F = dual_function(TEXT_C, TEXT_A, 0.5, TEXT_I, method="bb", depth=20)
    cert = certify(F, grid=FINE[:, None])
    assert cert["minorant"]["holds"] and cert["strong"] and cert["F0"]["holds"] and len(F.pieces()) > 1
    G = DualFunction("bb", F.problem, evaluate=lambda d: F(d) + 1.0, field_fn=F.field)
    H = DualFunction("bb", F.problem, [{"pi": q["pi"], "const": q["const"] + 1.0} for q in F.pieces()])
    for bad in (G, H):
        cert = certify(bad, grid=FINE[:, None])
        assert not cert["minorant"]["holds"] and cert["minorant"]["worst_violation"] > 0.5
        assert not cert["F0"]["holds"] and cert["F0"]["value"] == pytest.approx(1.0)
        assert not cert["strong"] and cert["gap"] == pytest.approx(-1.0)


def test_subadditivity_is_decided_honestly():
    """One gradient with constant 0 is subadditive (exact); two gradients are not, with a witness."""
    p = Problem.build(TEXT_C, TEXT_A, 0.0, TEXT_I)
    one = DualFunction("lp", p, [{"pi": [0.5], "const": 0.0}])
    two = DualFunction("bb", p, [{"pi": [0.5], "const": 0.0}, {"pi": [0.0], "const": 0.0}])
    c1, c2 = certify(one), certify(two)
    assert c1["subadditive"] == {**c1["subadditive"], "holds": True, "how": "exact"}
    assert c2["subadditive"]["holds"] is False and c2["subadditive"]["how"] == "exact"
    w = c2["subadditive"]["witness"]
    assert two(np.add(w["x"], w["y"])) > two(w["x"]) + two(w["y"])
    q = Problem.build([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0], [True, True], constraint=">=")
    down = DualFunction("lp", q, [{"pi": [1.0, -1.0], "const": 0.0}, {"pi": [1.0, 1.0], "const": 0.0}])
    nd = certify(down)["nondecreasing"]
    assert nd["required"] and not nd["holds"] and nd["how"] == "exact"
    d, e = np.array(nd["witness"]["d"]), np.array(nd["witness"]["step"])
    assert down(d + e) < down(d)


@pytest.mark.parametrize("L,U", [(-3.0, 5.0), (-7.0, 2.0)])
@pytest.mark.parametrize("g", [1.0, -1.0])
def test_neuron_lp_dual_field(L, U, g):
    """DESIGN.md's worked example: min 2 g u, s >= L (1 - u), s <= U u; dv/ds = 2g/|L| (g < 0,
    s < 0), 2g/U (g > 0, s > 0), else 0, read off the lp dual's field."""
    # rows as A u >= d(s): L u >= L - s and U u >= s, so dF/ds = field . (-1, 1)
    for s in np.arange(L + 0.25, U, 0.25):
        if abs(s) < 1e-12:
            continue
        F = dual_function([2 * g], [[L], [U]], [L - s, s], [True], 0.0, 1.0, ">=", method="lp")
        got = float(F.field([L - s, s]) @ [-1.0, 1.0])
        want = 2 * g / abs(L) if (g < 0 and s < 0) else 2 * g / U if (g > 0 and s > 0) else 0.0
        assert abs(got - want) <= 1e-9, (s, got, want)


def test_infeasible_b_lp_dual_uses_a_farkas_piece():
    """At an infeasible b the lp dual is still a minorant everywhere, and large at b."""
    p = Problem.build([1.0, 1.0], [[1.0, 1.0]], 5.0, [True, True], 0.0, 1.0)
    F = make(p, "lp")
    assert F.info["status"] == "infeasible" and np.isfinite(F(5.0))
    for d in np.arange(-3, 6.01, 0.25):
        assert F(d) <= enum_z(p, d) + 1e-9
    cert = certify(F)
    assert cert["minorant"]["holds"] and cert["z_b"] == np.inf and not cert["strong"]


def test_bad_arguments_are_usage_errors():
    """Wrong shapes, unknown methods and limits give a UsageError with a hint, not a traceback."""
    with pytest.raises(UsageError):
        dual_function([1.0, 2.0], [[1.0, 2.0, 3.0]], 1.0, [True, True])
    with pytest.raises(UsageError):
        dual_function([1.0], [[1.0]], 1.0, [True], method="magic")
    with pytest.raises(UsageError):
        dual_function([1.0], [[1.0]], 1.0, [True], method="bb", depht=3)
    with pytest.raises(UsageError):
        dual_function([1.0], [[1.0]], 1.0, [True], constraint="<=")


def test_chvatal_dispatch():
    """method="chvatal" reaches tamec/dual/chvatal.py, and its result can be certified."""
    pytest.importorskip("tamec.dual.chvatal")
    p = Problem.build([2.0, 3.0], [[2.0, 3.0]], 7.0, [True, True], 0.0, 4.0, ">=")
    F = make(p, "chvatal")
    assert isinstance(F, DualFunction) and F.method == "chvatal"
    assert F(p.b) <= enum_z(p, p.b) + 1e-9
    cert = certify(F, samples=50)
    assert cert["subadditive"]["how"] == "sampled" and cert["minorant"]["holds"]


def test_two_piece_dual_above_z_between_grid_points_fails_minorant():
    """A tent F = min(-4d - 9, 4d + 12) on the textbook instance at b = -2.5 is dual feasible and
    equal to z(-2.5) = 1, but F(-2.625) = 1.5 > z(-2.625) = 0.75 between the grid's points: the
    exact minorant check (one MILP) finds it, with a witness, and F is therefore not strong."""
    p = Problem.build(TEXT_C, TEXT_A, -2.5, TEXT_I)
    F = DualFunction("bb", p, [{"pi": [-4.0], "const": -9.0}, {"pi": [4.0], "const": 12.0}])
    assert F(-2.625) == 1.5 and text_z(-2.625) == 0.75 and F(-2.5) == text_z(-2.5) == 1.0
    cert = certify(F)
    mino = cert["minorant"]
    assert mino["holds"] is False, mino  # the grid b + {-1, -1/2, 0, 1/2, 1} missed it
    assert mino["how"] == "exact" and mino["method"] == "milp"
    w = mino["witness"]
    assert w["F"] > w["z"] + 0.5 and w["z"] == pytest.approx(text_z(w["d"][0]), abs=1e-9)
    assert F(w["d"]) == pytest.approx(w["F"])
    assert cert["dual_feasible"]["holds"]  # what the grid alone let through
    assert cert["strong"] is False and cert["gap"] == pytest.approx(0.0, abs=1e-9)
    # F(d) = 3d is far above z for d > 0, where the grid around b = -2.5 never looks; x is unbounded
    steep = certify(DualFunction("lp", p, [{"pi": [3.0], "const": 0.0}]))["minorant"]
    assert steep["holds"] is False and steep["witness"]["F"] > text_z(steep["witness"]["d"][0]) + 0.5


def test_exact_minorant_check_agrees_with_enumeration():
    """On random bounded problems the MILP minorant check of lp/bb duals shifted by +-0.3 says
    "not a minorant" exactly when enumeration over the integer points finds F(A x) > c x."""
    seen = {True: 0, False: 0}
    for seed in range(8):
        p = random_problem(seed, mixed=False)
        F = make(p, "bb", depth=2)
        I = np.arange(p.n)
        pts = np.array(list(itertools.product(*[np.arange(p.lb[j], p.ub[j] + 1) for j in I])), np.float64)
        for shift in (-0.3, 0.3):
            G = DualFunction("bb", p, [{"pi": q["pi"], "const": q["const"] + shift} for q in F.pieces()])
            mino = certify(G, samples=10)["minorant"]
            if p.constraint == "==":  # F <= z everywhere iff F(A x) <= c x at every point
                bad = bool(np.any(G(pts @ p.A.T) > pts @ p.c + 1e-7))
                assert mino["holds"] == (not bad), (seed, shift, mino)
            elif not mino["holds"]:  # ">=": a witness is real
                d = np.array(mino["witness"]["d"])
                assert G(d) > enum_z(p, d) + 1e-7
            assert mino["how"] == "exact"
            seen[mino["holds"]] += 1
    assert seen[True] and seen[False]

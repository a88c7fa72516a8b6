"""What a dual function is proven (or only observed) to satisfy: `certify(F, problem)`.

Each entry has `holds` and says `how`: "exact" is a proof (up to floating-point tolerance `tol`,
relative to the size of the numbers compared), "sampled" is a search for counterexamples that
found none among the stated number of samples, "grid" is exact at the listed right-hand sides only.

  F0             F(0) == 0.
  dual_feasible  the subadditive-dual conditions on the columns: F(a_j) <= c_j for integer
                 columns; for continuous columns the upper directional derivative
                 Fbar(a_j) = lim_{s->0+} F(s a_j) / s <= c_j; on ">=" problems also `nondecreasing`.
                 For F = min_k (pi_k d + const_k): Fbar(a) = min over the pieces active at 0 of
                 pi_k a when F(0) = 0 (+inf when F(0) > 0, -inf when F(0) < 0): exact.
  subadditive    F(x + y) <= F(x) + F(y) for all x, y in R^m. For min-of-affine F this is decided
                 exactly: if two pieces have gradients p != q, then with v = p - q and T large,
                 F(Tv) + F(-Tv) <= -T |v|^2 + const_p + const_q < F(0) (a witness is returned);
                 if all gradients equal, F = pi d + min const is subadditive iff min const >= 0.
                 So lp duals with kappa >= 0 are subadditive and bb duals with two gradients are not
                 (a concave F with F(0) = 0 and all const = 0 is SUPERadditive instead).
                 Other F (chvatal): sampled pairs.
  nondecreasing  F(d + s e_i) >= F(d) for s >= 0. Min-of-affine: exact (every piece with a negative
                 gradient entry is checked by an LP for being strictly the minimum somewhere: if it
                 is, F decreases there, a witness). Other F: sampled.
  minorant       F(d) <= z(d) for every d. `method` says how it was decided:
                 "milp" (how "exact"), for min-of-affine F: F <= z everywhere iff
                     max { t - c x : t <= pi_k d + const_k for every piece k, d = A x ("==") or
                           d <= A x (">="), lb <= x <= ub, x_I integer } <= 0,
                 one MILP solved by HiGHS (scipy.optimize.milp) within `milp_time_limit` seconds;
                 exact up to HiGHS's feasibility tolerances (a violation is re-checked at the
                 solver's point with F and an exact z(d), and returned as the witness);
                 "construction" (how "exact"), for a Chvatal function: the builder verified in
                 rational arithmetic that its last basis is dual feasible, which makes F a minorant
                 (tamec/dual/chvatal.py); the grid below is still searched for a counterexample;
                 "grid" (how "grid"), the named fallback when neither applies or HiGHS hit its
                 limit (`fallback` says why): F(d) <= z(d) on a grid of right-hand sides (default:
                 b plus offsets in {-1, -1/2, 0, 1/2, 1} per coordinate, at most `max_grid`
                 points, and d = 0), z from exact MILP solves (Problem.value).
                 Every method reports `worst_violation` and a `witness` {d, F, z} or None.
  gap, strong    gap = z(b) - F(b); strong when |gap| <= tol (1 + |z(b)|) and the minorant holds
                 exactly (a grid-only minorant never makes F strong).
"""
from __future__ import annotations

import itertools

import numpy as np

from tamec.dual.problem import DualFunction, Problem

OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def _slack(tol: float, *vals) -> float:
    """The tolerance for comparing numbers of the size of vals."""
    big = max([abs(v) for v in vals if np.isfinite(v)] + [0.0])
    return tol * (1.0 + big)


def default_grid(problem: Problem, max_grid: int = 625, seed: int = 0) -> np.ndarray:
    """b + offsets in {-1, -1/2, 0, 1/2, 1} per coordinate (a random subset of them, b kept, when
    there are more than max_grid), then d = 0."""
    m, b = problem.m, problem.b
    if len(OFFSETS) ** m <= max_grid:
        offs = np.array(list(itertools.product(OFFSETS, repeat=m)), np.float64)
    else:
        rng = np.random.default_rng(seed)
        offs = np.vstack([np.zeros((1, m)), rng.choice(OFFSETS, size=(max_grid - 1, m))])
    grid = np.vstack([b[None, :] + offs, np.zeros((1, m))])
    return np.unique(grid, axis=0)


def _minorant(F, problem, grid, tol) -> tuple[dict, dict]:
    zs = np.array([problem.value(d) for d in grid])
    fs = np.asarray(F(grid), np.float64)
    worst, witness, feasible = 0.0, None, int(np.sum(np.isfinite(zs)))
    for d, z, f in zip(grid, zs, fs):
        if z == np.inf:
            continue  # z = +inf: every F is below it
        viol = np.inf if z == -np.inf else f - z
        if viol > _slack(tol, z, f) and viol > worst:
            worst, witness = float(viol), {"d": d.tolist(), "F": float(f), "z": float(z)}
    res = {"holds": witness is None, "how": "grid", "method": "grid", "grid_size": int(len(grid)),
           "feasible_points": feasible, "worst_violation": worst, "witness": witness}
    return res, {tuple(d): z for d, z in zip(grid, zs)}


MILP_TIME_LIMIT = 10.0  # seconds per exact minorant check; past it the grid is the fallback


def _witness(F, problem, d) -> dict:
    d = np.asarray(d, np.float64)
    return {"d": d.tolist(), "F": float(F(d)), "z": float(problem.value(d))}


def _milp_minorant(F, problem, aff, tol, time_limit) -> tuple[dict | None, str]:
    """The exact check (module doc) for min-of-affine F: (result, "") or (None, why it fell back)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    Pi, K = aff
    A, c, n, m = problem.A, problem.c, problem.n, problem.m
    eq = problem.constraint == "=="
    if len(K) == 0:  # F = +inf: a minorant iff no x is feasible (z = +inf everywhere)
        I = problem.integrality
        empty = bool(np.any(problem.lb > problem.ub) or np.any(np.ceil(problem.lb[I]) > np.floor(problem.ub[I])))
        return {"holds": empty, "how": "exact", "method": "milp", "worst_violation": 0.0 if empty else np.inf,
                "witness": None, "reason": "F = +inf, minorant iff the feasible set is empty"}, ""
    # columns: x (n), d (m, ">=" only), t; minimize c x - t = -(F(d) - c x)
    nd = 0 if eq else m
    cost = np.r_[c, np.zeros(nd), -1.0]
    if eq:  # t - pi_k A x <= const_k
        rows = np.hstack([-(Pi @ A), np.ones((len(K), 1))])
        cons = [LinearConstraint(rows, -np.inf, K)]
    else:  # t - pi_k d <= const_k, d - A x <= 0
        rows = np.hstack([np.zeros((len(K), n)), -Pi, np.ones((len(K), 1))])
        link = np.hstack([-A, np.eye(m), np.zeros((m, 1))])
        cons = [LinearConstraint(rows, -np.inf, K), LinearConstraint(link, -np.inf, 0.0)]
    lb = np.r_[problem.lb, np.full(nd + 1, -np.inf)]
    ub = np.r_[problem.ub, np.full(nd + 1, np.inf)]
    integ = np.r_[problem.integrality.astype(int), np.zeros(nd + 1, int)]
    # The violation is capped (t - c x <= cap) so the MILP is bounded even where F - c x is not
    # (unbounded x, as in DESIGN.md's textbook instance): a maximum at the cap is a violation.
    cap = max(1.0, 1e-3 * (1.0 + float(np.max(np.abs(K))) + float(np.max(np.abs(c), initial=0.0))))
    cons.append(LinearConstraint(-cost[None, :], -np.inf, cap))
    opts = {"time_limit": time_limit, "mip_rel_gap": 0.0}
    res = milp(cost, constraints=cons, bounds=Bounds(lb, ub), integrality=integ, options=opts)
    out = {"how": "exact", "method": "milp", "solver": "HiGHS (scipy.optimize.milp)"}
    if res.status == 2:  # no feasible x: z = +inf everywhere
        return {**out, "holds": True, "worst_violation": 0.0, "witness": None, "max_value": -np.inf}, ""
    # on a limit, HiGHS's bound on min (c x - t) may still prove the maximum <= 0
    bound = getattr(res, "mip_dual_bound", None)
    proved = {**out, "holds": True, "worst_violation": 0.0, "witness": None,
              "max_value_bound": None if bound is None else float(-bound) + 0.0,
              "note": "HiGHS hit its limit; its bound proves the maximum <= 0"}
    bound_proves = res.status == 1 and bound is not None and np.isfinite(bound) and -bound <= _slack(tol, bound)
    if res.x is None:
        return (proved, "") if bound_proves else (None, f"HiGHS stopped without an answer: {res.message}")
    x = res.x[:n].copy()
    I = problem.integrality
    x[I] = np.round(x[I])
    d = A @ x if eq else np.minimum(res.x[n:n + m], A @ x)
    w = _witness(F, problem, d)
    viol = w["F"] - w["z"]
    if viol > _slack(tol, w["F"], w["z"]):
        return {**out, "holds": False, "worst_violation": float(viol), "witness": w,
                "max_value": float(-res.fun), "capped": bool(-res.fun >= cap - _slack(tol, cap))}, ""
    if res.status != 0:  # a limit: the incumbent shows no violation, only the bound can prove it
        return (proved, "") if bound_proves else (None, f"HiGHS hit its limit ({res.message}) before proving "
                                                        "the maximum <= 0")
    return {**out, "holds": True, "worst_violation": 0.0, "witness": None, "max_value": float(-res.fun) + 0.0}, ""


def _dir_derivative_at_0(F, a, aff) -> tuple[float, str]:
    """Fbar(a) = lim_{s->0+} F(s a) / s."""
    if aff is not None:
        Pi, K = aff
        if K.size == 0:
            return np.inf, "exact"
        k0 = K.min()
        if k0 > 1e-12:
            return np.inf, "exact"
        if k0 < -1e-12:
            return -np.inf, "exact"
        act = K <= k0 + 1e-12
        return float(np.min(Pi[act] @ a)), "exact"
    vals = [F(s * a) / s for s in (1e-3, 1e-5, 1e-7)]
    return float(vals[-1]), "sampled"


def _dual_feasible(F, problem, aff, tol) -> dict:
    A, c, I = problem.A, problem.c, problem.integrality
    out = {}
    worst, col = 0.0, None
    for j in np.flatnonzero(I):
        v = F(A[:, j]) - c[j]
        if v > _slack(tol, c[j]) and v > worst:
            worst, col = float(v), int(j)
    out["integer"] = {"holds": col is None, "worst_violation": worst, "column": col, "how": "exact",
                      "columns": int(I.sum())}
    worst, col, hows = 0.0, None, set()
    for j in np.flatnonzero(~I):
        fbar, how = _dir_derivative_at_0(F, A[:, j], aff)
        hows.add(how)
        v = fbar - c[j]
        if v > _slack(tol, c[j]) and v > worst:
            worst, col = float(v), int(j)
    out["continuous"] = {"holds": col is None, "worst_violation": worst, "column": col,
                         "how": "sampled" if "sampled" in hows else "exact", "columns": int((~I).sum())}
    return out


def _subadditive(F, problem, aff, tol, samples, rng) -> dict:
    m = problem.m
    if aff is not None:
        Pi, K = aff
        if K.size == 0:
            return {"holds": True, "how": "exact", "reason": "F = +inf"}
        # two distinct gradients p, q: x = T v, y = -T v with v = p - q breaks subadditivity
        for s, t in itertools.combinations(range(len(K)), 2):
            v = Pi[s] - Pi[t]
            if np.max(np.abs(v)) > 1e-9 * (1.0 + np.max(np.abs(Pi[s]))):
                T = (abs(K[s]) + abs(K[t]) + abs(K.min()) + 1.0) / float(v @ v) + 1.0
                x, y = T * v, -T * v
                viol = F(x + y) - F(x) - F(y)
                return {"holds": False, "how": "exact", "reason": "two pieces with different gradients",
                        "worst_violation": float(viol), "witness": {"x": x.tolist(), "y": y.tolist()}}
        k0 = float(K.min())
        holds = k0 >= -_slack(tol, k0)
        out = {"holds": holds, "how": "exact", "worst_violation": max(0.0, -k0),
               "reason": f"one gradient: F = pi d + {k0:g}, subadditive iff the constant is >= 0"}
        if not holds:  # F(0 + 0) = k0 > 2 k0 = F(0) + F(0)
            out["witness"] = {"x": [0.0] * m, "y": [0.0] * m}
        return out
    R = max(2.0, float(np.ceil(np.max(np.abs(problem.b)))) if m else 2.0)
    worst, witness = 0.0, None
    for k in range(samples):
        if k % 2 == 0:
            x, y = rng.integers(-R, R + 1, size=(2, m)).astype(np.float64)
        else:
            x, y = rng.uniform(-R, R, size=(2, m))
        fx, fy, fxy = F(x), F(y), F(x + y)
        viol = fxy - fx - fy
        if viol > _slack(tol, fx, fy, fxy) and viol > worst:
            worst, witness = float(viol), {"x": x.tolist(), "y": y.tolist()}
    return {"holds": witness is None, "how": "sampled", "samples": samples, "worst_violation": worst,
            "witness": witness}


def _nondecreasing(F, problem, aff, tol, samples, rng) -> dict:
    m = problem.m
    required = problem.constraint == ">="
    if aff is not None:
        from scipy.optimize import linprog

        Pi, K = aff
        for k in np.flatnonzero(np.min(Pi, axis=1, initial=0.0) < -tol) if len(K) else []:
            # is piece k strictly the minimum somewhere? max eps : Pi_k d + K_k + eps <= Pi_l d + K_l
            others = np.arange(len(K)) != k
            A_ub = np.hstack([Pi[k][None, :] - Pi[others], np.ones((others.sum(), 1))])
            res = linprog(np.r_[np.zeros(m), -1.0], A_ub=A_ub, b_ub=K[others] - K[k],
                          bounds=[(None, None)] * m + [(None, 1.0)], method="highs")
            if res.status == 0 and -res.fun > 1e-9:
                eps, d = -res.fun, res.x[:m]
                i = int(np.argmin(Pi[k]))
                step = eps / (2.0 * (1.0 + np.max(np.abs(Pi[:, i] - Pi[k, i]))))
                e = np.zeros(m)
                e[i] = step
                viol = F(d) - F(d + e)
                return {"required": required, "holds": False, "how": "exact", "worst_violation": float(viol),
                        "witness": {"d": d.tolist(), "step": e.tolist()}}
        return {"required": required, "holds": True, "how": "exact", "worst_violation": 0.0}
    R = max(2.0, float(np.ceil(np.max(np.abs(problem.b)))) if m else 2.0)
    worst, witness = 0.0, None
    for k in range(samples):
        d = rng.integers(-R, R + 1, size=m).astype(np.float64) if k % 2 == 0 else rng.uniform(-R, R, size=m)
        e = np.zeros(m)
        e[rng.integers(m)] = rng.choice([0.5, 1.0]) if k % 2 == 0 else rng.uniform(0, 1)
        f0, f1 = F(d), F(d + e)
        viol = f0 - f1
        if viol > _slack(tol, f0, f1) and viol > worst:
            worst, witness = float(viol), {"d": d.tolist(), "step": e.tolist()}
    return {"required": required, "holds": witness is None, "how": "sampled", "samples": samples,
            "worst_violation": worst, "witness": witness}


def _chvatal_construction(F) -> bool:
    """The Chvatal builder's own proof of minorance: its last basis checked dual feasible exactly."""
    ex = (getattr(F, "certificate", None) or {}).get("exact") or {}
    return bool((ex.get("G_dual_feasible") or {}).get("holds"))


def minorant(F, problem, aff, grid, tol, time_limit: float = MILP_TIME_LIMIT) -> tuple[dict, float]:
    """(the minorant entry, z(b)): the exact MILP check where it answers, else the named fallback.
    No timings in the entry: certificates are deterministic (the same for any worker count)."""
    fallback = "F is not a min of affine pieces"
    if aff is not None:
        res, fallback = _milp_minorant(F, problem, aff, tol, time_limit)
        if res is not None:
            return res, float(problem.value(problem.b))
    res, zmap = _minorant(F, problem, grid, tol)
    if _chvatal_construction(F) and res["holds"]:
        res = {**res, "how": "exact", "method": "construction",
               "reason": "Chvatal function whose last basis is dual feasible (checked in rational arithmetic); "
                         "the grid found no counterexample"}
    else:
        res["fallback"] = fallback
    return res, zmap[tuple(problem.b)]


def certify(F: DualFunction, problem: Problem | None = None, *, grid=None, samples: int = 200,
            tol: float = 1e-7, seed: int = 0, max_grid: int = 625,
            milp_time_limit: float = MILP_TIME_LIMIT) -> dict:
    """Check F against `problem` (default F.problem); the result is also merged into F.certificate
    (keeping what the builder put there, e.g. a Chvatal function's structure). `grid` is used
    only where the exact minorant check does not answer (see the module doc)."""
    problem = F.problem if problem is None else problem
    rng = np.random.default_rng(seed)
    m = problem.m
    aff = F.affine() if hasattr(F, "affine") else None
    grid = default_grid(problem, max_grid, seed) if grid is None else np.atleast_2d(np.asarray(grid, np.float64))
    if grid.shape[1] != m:
        grid = grid.reshape(-1, m)
    b = problem.b
    if not any(np.array_equal(g, b) for g in grid):
        grid = np.vstack([grid, b[None, :]])

    f0 = float(F(np.zeros(m)))
    cert: dict = {"method": getattr(F, "method", "?"), "tol": tol}
    cert["F0"] = {"holds": abs(f0) <= tol, "value": f0, "how": "exact"}
    cert["nondecreasing"] = _nondecreasing(F, problem, aff, tol, samples, rng)
    df = _dual_feasible(F, problem, aff, tol)
    nd = cert["nondecreasing"]
    df["holds"] = bool(df["integer"]["holds"] and df["continuous"]["holds"] and (nd["holds"] or not nd["required"]))
    df["worst_violation"] = max(df["integer"]["worst_violation"], df["continuous"]["worst_violation"],
                                nd["worst_violation"] if nd["required"] else 0.0)
    cert["dual_feasible"] = df
    cert["subadditive"] = _subadditive(F, problem, aff, tol, samples, rng)
    cert["minorant"], zb = minorant(F, problem, aff, grid, tol, milp_time_limit)
    fb = float(F(b))
    gap = zb - fb if np.isfinite(zb) or np.isfinite(fb) else np.nan
    cert["gap"] = float(gap)
    cert["z_b"], cert["F_b"] = float(zb), fb
    exact = cert["minorant"]["holds"] and cert["minorant"]["how"] == "exact"
    cert["strong"] = bool(exact and np.isfinite(gap) and abs(gap) <= _slack(tol, zb))
    if aff is not None:
        cert["concave"] = {"holds": True, "how": "exact", "reason": "a min of affine functions"}
        cert["pieces"] = int(len(aff[1]))
        cert["lipschitz"] = float(np.max(np.linalg.norm(aff[0], axis=1))) if len(aff[1]) else 0.0
    F.certificate = {**(getattr(F, "certificate", None) or {}), **cert}
    return cert

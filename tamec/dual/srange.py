"""The s-range branch-and-bound dual: the dual function the Threshold backward rules read.

A per-neuron key (tamec/dual/blocks.py) is the MIP in the output binaries y (u, or p/n for a
ternary Sign) with the rows `A y >= d0 + s e`, parametrized by the folded pre-activation
s = z - tau (z the integer popcount sum on hidden layers: the rows carry its parity-lattice gap,
the reachable s next to 0 being a > 0 and b < 0). Its value function is the step

    z_c(s) = min { c . y_v : v a binary vertex feasible at s }          (+inf where none is)

`tamec/dual/bb.py` branches on the binaries, so its tree is complete at depth 1 and its value is
that step (field 0). The rules instead branch on the continuous range [L, U] of s: bisecting it
K times around the threshold leaves a central leaf [L_K, U_K] (`tamec.ops.rules.leaf_bounds`,
outward to the lattice and never narrower than [b, a]) and outer leaves in which one vertex is
feasible. On each leaf the relaxation is the convex hull of the vertices' feasible segments
{(s, c . y_v) : s in I_v}; for one binary that is exactly the big-M LP with the leaf's M
(u_min = (s - b)/(U_K - b), ...). Its value, the lower convex envelope of the segments, is a
piecewise-linear function of s whose pieces are that leaf LP's dual pieces, and

    F_c(s) = envelope of the leaf holding s

is a minorant of z_c (each leaf relaxes the MIP on its part of the range). F_c is what the
depth-K rules differentiate: `lp-dual` / `bb-dual:K` use F for c = g cost (|g| F'_sign(g)),
`lp-mid` / `bb-mid:K` the mean of the lower bound F_{+cost} and the upper bound -F_{-cost}.

`srange_dual` builds F_c and `certify_srange` checks it EXACTLY (no sampling): F is affine on each
of its segments and z_c is constant on each vertex's interval, so F <= z_c holds iff it holds at
the ends of every (segment, vertex interval) intersection; per leaf the same check is the leaf
LP's dual feasibility. The field at a breakpoint is the mean of its one-sided slopes (an element
of their convex hull, the Clarke subdifferential); outside [L, U] the surrogate is extended by
constants, field 0.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from tamec.ops.rules import leaf_bounds

TOL = 1e-9  # relative slack of the exact checks (float64 arithmetic on data of size ~1e3)


def vertices(problem: dict, L: float, U: float) -> list[tuple[float, float, tuple]]:
    """(lo, hi, y) of every binary vertex y of the key's rows with its feasible interval of s
    inside [L, U] (an empty interval drops the vertex)."""
    A = np.asarray(problem["A"], np.float64)
    d0 = np.asarray(problem["d0"], np.float64)
    e = np.asarray(problem["e"], np.float64)
    lb, ub = problem["lb"], problem["ub"]
    out = []
    for y in itertools.product(*[range(int(round(a)), int(round(b)) + 1) for a, b in zip(lb, ub)]):
        slack = A @ np.asarray(y, np.float64) - d0  # row r: slack_r >= s e_r
        if np.any(slack[e == 0] < -TOL):
            continue
        lo = max([L] + [-slack[r] for r in np.flatnonzero(e < 0)])  # e = -1: s >= -slack
        hi = min([U] + [slack[r] for r in np.flatnonzero(e > 0)])   # e = +1: s <= slack
        if lo <= hi + TOL * (1 + abs(lo)):
            out.append((float(lo), float(max(lo, hi)), tuple(y)))
    return out


def _lower_hull(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of 2-D points, left to right (Andrew's monotone chain); among points
    with the same s only the lowest counts."""
    best: dict[float, float] = {}
    for x, v in pts:
        best[x] = min(v, best.get(x, np.inf))
    hull: list[tuple[float, float]] = []
    for p in sorted(best.items()):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # hull[-1] is not below the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


@dataclass
class SRangeDual:
    """F_c of one key: `segments` (s0, s1, value at s0, slope) left to right over [L, U],
    `leaves` [(lo, hi)], `vertices` [(lo, hi, y, cost)], `certificate` (certify_srange)."""

    depth: int
    cost: list
    L: float
    U: float
    leaves: list
    segments: list
    vertices: list
    certificate: dict = field(default_factory=dict)

    def __call__(self, s: float) -> float:
        s = float(np.clip(s, self.L, self.U))
        for s0, s1, v0, k in self.segments:
            if s0 <= s <= s1:
                return v0 + k * (s - s0)
        return float("inf")  # no feasible vertex anywhere: z = +inf, F may be too

    def breakpoints(self) -> np.ndarray:
        """The segment ends, sorted (what the runtime's table holds)."""
        return np.array([self.segments[0][0]] + [s1 for _, s1, _, _ in self.segments]) if self.segments \
            else np.zeros(0)

    def slopes(self) -> np.ndarray:
        return np.array([k for *_, k in self.segments])

    def field(self, s: float) -> float:
        """dF/ds at s: the slope of the segment holding s, the mean of the two one-sided slopes at
        a breakpoint (0 beyond [L, U]: the surrogate is constant there)."""
        bp, sl = self.breakpoints(), self.slopes()
        if bp.size == 0 or s < bp[0] or s > bp[-1]:
            return 0.0
        i = int(np.searchsorted(bp, s, side="left"))
        if i < bp.size and bp[i] == s:
            left = sl[i - 1] if i >= 1 else 0.0
            right = sl[i] if i < sl.size else 0.0
            return float(0.5 * (left + right))
        return float(sl[i - 1])

    def pieces(self) -> list[dict]:
        """The leaf LP dual pieces, JSON-ready: {lo, hi, slope, const} with F(s) = slope s + const."""
        return [{"lo": s0, "hi": s1, "slope": k, "const": v0 - k * s0} for s0, s1, v0, k in self.segments]


def central_leaf(key: dict, depth: int) -> tuple[float, float]:
    """[L_K, U_K] of the depth-K tree bisecting [L, U] around 0, as the rules define it, widened
    to the reachable points b < 0 < a next to the threshold (the lattice gap of the rows)."""
    L, U = key["L_minus_tau"], key["U_minus_tau"]
    a, b = key["a_minus_tau"], key["b_minus_tau"]
    lat = key.get("lattice")
    step = None if lat is None else float(lat["step"])
    # the lattice of s: a + k step (a is a reachable s on the lattice whenever the rows have a gap)
    LK, UK = leaf_bounds(L, U, depth, None if step is None else (np.float64(a), np.float64(step)))
    LK, UK = float(LK), float(UK)
    if L < b:
        LK = min(LK, b)
    if a < U:
        UK = max(UK, a)
    return max(LK, L), min(UK, U)


def srange_dual(key: dict, problem: dict, sign: float, depth: int) -> SRangeDual:
    """F_c of the key for c = sign * cost at branching depth K = `depth`, certified."""
    L, U = float(key["L_minus_tau"]), float(key["U_minus_tau"])
    cost = sign * np.asarray(problem["cost"], np.float64)
    verts = [(lo, hi, y, float(cost @ np.asarray(y, np.float64))) for lo, hi, y in vertices(problem, L, U)]
    LK, UK = central_leaf(key, depth)
    cuts = sorted({L, U} | ({LK, UK} if L < LK < U or L < UK < U else set()))
    leaves = [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)] or [(L, U)]
    segments = []
    for lo, hi in leaves:
        pts = []
        for vlo, vhi, _, cv in verts:
            p, q = max(lo, vlo), min(hi, vhi)
            if p <= q:
                pts += [(p, cv), (q, cv)]
        hull = _lower_hull(pts)
        segments += [(x0, x1, v0, (v1 - v0) / (x1 - x0)) for (x0, v0), (x1, v1) in zip(hull, hull[1:])]
        if len(hull) == 1 and not segments:
            segments.append((hull[0][0], hull[0][0], hull[0][1], 0.0))
    F = SRangeDual(depth, cost.tolist(), L, U, leaves, segments, [(lo, hi, list(y), c) for lo, hi, y, c in verts])
    F.certificate = certify_srange(F)
    return F


def certify_srange(F: SRangeDual) -> dict:
    """Exact checks of F: `minorant` (F <= z on every vertex interval), `dual_feasible` (per leaf,
    its pieces lie below every vertex segment in the leaf: the leaf LP's dual constraints),
    `covers` (the segments tile the leaves with no hole), `lipschitz` (the largest |slope|, finite)."""
    worst, where = -np.inf, None
    for s0, s1, v0, k in F.segments:
        for vlo, vhi, y, cv in F.vertices:
            p, q = max(s0, vlo), min(s1, vhi)
            if p > q:
                continue
            for s in (p, q):
                viol = v0 + k * (s - s0) - cv
                if viol > worst:
                    worst, where = viol, {"s": s, "vertex": y}
    ok = bool(worst <= TOL * (1.0 + max((abs(c) for *_, c in F.vertices), default=0.0)))
    per_leaf = ok  # the segments lie inside their leaves, so the same ends check each leaf's LP dual
    lip = max((abs(k) for *_, k in F.segments), default=0.0)
    ends = [F.segments[0][0]] + [s1 for _, s1, _, _ in F.segments] if F.segments else []
    tiled = bool(F.segments) and all(abs(F.segments[i][1] - F.segments[i + 1][0]) <= TOL * (1 + abs(ends[i + 1]))
                                     for i in range(len(F.segments) - 1))
    return {"method": "srange", "depth": F.depth, "check": "exact (1-D: segment ends x vertex intervals)",
            "minorant": {"holds": ok, "max_violation": float(worst) if np.isfinite(worst) else 0.0, "at": where},
            "dual_feasible": {"holds": per_leaf and bool(np.isfinite(lip))},
            "covers": tiled, "lipschitz": float(lip),
            "holds": bool(ok and per_leaf and np.isfinite(lip) and tiled)}


def key_srange(spec: dict, depths) -> dict:
    """{"K": {"+1": entry, "-1": entry}} for every depth K: the pieces, breakpoints, slopes and the
    certificate of F_{+cost} and F_{-cost} (JSON-ready, what the plan pass hands the runtime)."""
    out = {}
    for K in depths:
        ent = {}
        for tag, sign in (("+1", 1.0), ("-1", -1.0)):
            F = srange_dual(spec["key"], spec["problem"], sign, int(K))
            ent[tag] = {"pieces": F.pieces(), "breakpoints": F.breakpoints().tolist(), "slopes": F.slopes().tolist(),
                        "leaves": [list(lv) for lv in F.leaves], "certificate": F.certificate}
        out[str(int(K))] = ent
    return out

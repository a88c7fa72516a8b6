"""Backward rules for activation thresholds: four fields derived from block duals, two heuristics.

A threshold `y = up if s > 0, down if s < 0, tie if s == 0` of the pre-activation `s = x - tau`
(`up = hi, down = lo`, swapped where `flip`) is the MIP block `y = down + d u`, `d = up - down`,
`u` in {0, 1} with the big-M rows `s >= L (1 - u)` and `s <= U u`, where `[L, U]` are the proven
bounds of `s` (the `bounds` pass). Its LP relaxation leaves u in the interval

    [u_min(s), u_max(s)] = [max(0, s/U), min(1, 1 - s/L)]      (L < 0 < U).

With the upstream gradient `g = dloss/dy` the block's cost is `c u`, `c = d g` (the constant
`down g` does not move). The LP dual gives the LOWER dual bound min{c u : u in the interval} and
the UPPER one max{c u : u in the interval} (= minus the lower bound of -c). Each rule maps (s, g)
to `dloss/ds`:

  lp-dual     derivative of the lower dual bound  v_g(s) = min{ c u : u_min(s) <= u <= u_max(s) }
              (tamec/dual/lp.py on this block; the design's worked example):
                  dloss/ds = c / |L|   if c < 0 and L <= s < 0
                           = c / U     if c > 0 and 0 < s <= U
                           = 0         otherwise (s = 0: 0 is in the hull of the one-sided slopes).
              For a sign unit (d = 2, no flip) that is 2g/|L| (g < 0, s < 0), 2g/U (g > 0, s > 0).
  bb-dual:K   derivative of the branch-and-bound dual (tamec/dual/bb.py) of the depth-K tree that
              bisects the proven range of s around the threshold K times: the active leaf holding
              the threshold has bounds L_K = L / 2^K, U_K = U / 2^K (rounded outward to the lattice
              of s when the pre-activation is integer-valued, and never narrower than the nearest
              lattice point on each side); the LP dual of that leaf is the lp-dual formula with
              L_K, U_K; in every other leaf u is fixed, so the slope is 0. Its value v_K is
              continuous and piecewise linear, v_0 = v_g, and v_K tends to the step as K grows.
  lp-mid      derivative of the AVERAGE of the block's lower and upper LP dual bounds,
                  m(s) = (min_u c u + max_u c u) / 2 = c (u_min(s) + u_max(s)) / 2,
              i.e. the block's output taken at the centre of its relaxed interval: y = down + d
              (u_min + u_max) / 2, a FIXED continuous piecewise-linear function of s (down at L,
              the midpoint at 0, up at U) that does not depend on g:
                  dloss/ds = g d / (2 |L|)   if L <= s < 0
                           = g d / (2 U)     if 0 < s <= U
                           = g d (1/|L| + 1/U) / 4   at s = 0 (the mean of the one-sided slopes,
                                                     an element of their hull)
                           = 0               otherwise.
  bb-mid:K    the same on the active leaf of the depth-K branch-and-bound tree: lp-mid with the
              leaf bounds L_K, U_K of bb-dual:K (u is fixed in every other leaf). bb-mid:0 = lp-mid.
  ste         dloss/ds = g d / 2: the straight-through estimator (identity for a sign unit;
              BinaryConnect). A heuristic: it is not a conservative field of the sign network.
  ste-clip    dloss/ds = g d / 2 if |s| <= 1 else 0: the hardtanh window of BinaryNet / Larq. A
              heuristic too, not a conservative field of the sign network.

The four dual rules are the gradients (conservative fields) of Lipschitz, semialgebraic surrogates
in which each threshold outputs a point of its relaxed block: the primal u*(s) that attains the
lower bound (lp-dual, bb-dual:K; `relaxed_u`, which depends on the sign of c) or the centre of the
relaxed interval (lp-mid, bb-mid:K; `centre_u`, a fixed function of s). tests/test_conservative.py
checks that on paths. Outside the proven range the surrogates are extended by constants, so the
rules give 0 there. A neuron whose range lies on one side of 0 is stable (u fixed, slope 0); a
range that ends at 0 keeps the slope of its open side (L = 0 < U: c/U, resp. c/(2U), for s > 0;
L < 0 = U: c/|L|, resp. c/(2|L|), for s < 0), where the neuron can still move between tie and level.

Why the midpoint rules exist (issue 6's accuracy study: `python bench/accuracy.py` prints the
table these numbers come from). lp-dual, as specified, does not train. Descending the LOWER (optimistic)
dual bound, its field is non-zero only where it has the sign of s, so every step pulls
pre-activations towards their threshold, where the relaxation is cheapest. With s = gamma xhat +
beta after BatchNorm the gradient of gamma is then >= 0 for small beta: descent shrinks every
BatchNorm scale to ~0 within a few epochs (the bounds, refreshed per epoch, shrink with it) and
accuracy collapses (digits 85 %, MNIST-5k 66 %, against 98 % / 94 % for ste-clip); bb-dual:K has
the same sign structure inside its leaf. The mean of the lower and upper dual bounds is a fixed
surrogate: its field pushes s both ways (away from the threshold as well), so there is no drift and
there is a margin. On the depth-K leaf (at K = 5 about +-0.6, and +-1.5 for the first layer of
mnist_bnn, with the initial weights of the bundled models) it is the certified counterpart of the
hardtanh window, with window and slope taken from the proven bounds. bb-mid:5 trained close to
ste-clip in the sign-forward mode with batch-statistics BatchNorm (test accuracy digits 98.6 % vs
98.5 %, MNIST-5k 93.8 % vs 94.3 %) and is `tamec train`'s default (K chosen on a validation split,
see bench/accuracy.py). In today's default (surrogate forward, eval-mode BatchNorm on training-set
statistics recalibrated per epoch, 5 seeds) bb-mid:5 gets digits 96.85 +- 0.71 % vs ste-clip
(sign forward, same BatchNorm) 97.11 +- 0.48 %, MNIST-5k 91.04 +- 0.56 % vs 90.98 +- 0.32 %: equal
within one standard deviation, both about 1.5 (digits) and 3 (MNIST-5k) points below the
batch-statistics numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamec.errors import UsageError

RULES = ("lp-dual", "bb-dual", "lp-mid", "bb-mid", "ste", "ste-clip")
DEPTH_RULES = ("bb-dual", "bb-mid")  # the rules that take a depth K
MAX_DEPTH = 52  # 2^-52: below float64 resolution of any bound
HINT = "rules: lp-dual, bb-dual:K, lp-mid, bb-mid:K (K = 0, 1, 2, ...), and the heuristics ste, ste-clip"


@dataclass(frozen=True)
class Rule:
    """A parsed rule name: `kind` in RULES, `depth` K for bb-dual and bb-mid."""

    kind: str
    depth: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.depth}" if self.kind in DEPTH_RULES else self.kind

    @property
    def from_dual(self) -> bool:
        """True for the rules derived from a block dual (conservative fields of a surrogate)."""
        return self.kind in ("lp-dual", "bb-dual", "lp-mid", "bb-mid")

    @property
    def midpoint(self) -> bool:
        """True for lp-mid and bb-mid:K (the centre of the relaxed interval: a fixed surrogate)."""
        return self.kind in ("lp-mid", "bb-mid")

    @property
    def fixed_surrogate(self) -> bool:
        """True when the rule is the field of ONE network fixed by the bounds (not by the sign of
        the upstream gradient): lp-mid, bb-mid:K (centre surrogate), ste (identity), ste-clip
        (hardtanh). Those are the rules `tamec train` can train in surrogate mode."""
        return self.midpoint or self.kind in ("ste", "ste-clip")

    @property
    def leaf_depth(self) -> int:
        """K of the branch-and-bound leaf the rule reads (0 for lp-dual and lp-mid)."""
        return self.depth if self.kind in DEPTH_RULES else 0

    def __str__(self) -> str:
        return self.name


def parse_rule(spec) -> Rule:
    """`"lp-dual"`, `"bb-dual:K"`, `"lp-mid"`, `"bb-mid:K"` (K >= 0), `"ste"` or `"ste-clip"` -> Rule;
    UsageError otherwise."""
    if isinstance(spec, Rule):
        return spec
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    if kind not in RULES:
        raise UsageError(f"unknown backward rule {text!r}", hint=HINT)
    if kind not in DEPTH_RULES:
        if sep:
            raise UsageError(f"rule {kind} takes no argument, got {text!r}", hint=HINT)
        return Rule(kind)
    if not sep or not arg.strip().isdigit():
        raise UsageError(f"rule {text!r} needs a depth", hint=f"write {kind}:K with an integer K >= 0, e.g. {kind}:2")
    depth = int(arg)
    if depth > MAX_DEPTH:
        raise UsageError(f"{kind} depth {depth} is too deep", hint=f"use K <= {MAX_DEPTH}")
    return Rule(kind, depth)


def leaf_bounds(L, U, depth: int, lattice=None):
    """(L_K, U_K): bounds of s in the depth-K leaf holding the threshold (see the module doc).

    `lattice` = (origin, step) arrays when s only takes the values origin + k step."""
    L = np.asarray(L, np.float64)
    U = np.asarray(U, np.float64)
    if depth == 0:
        return L.copy(), U.copy()
    LK, UK = L / 2.0 ** depth, U / 2.0 ** depth
    if lattice is not None:
        o, st = (np.asarray(a, np.float64) for a in lattice)
        with np.errstate(invalid="ignore"):
            LK = o + np.floor((LK - o) / st + 1e-9) * st  # outward: the lattice point at or below
            UK = o + np.ceil((UK - o) / st - 1e-9) * st
            below = o + (np.ceil(-o / st - 1e-9) - 1) * st  # largest lattice point < 0
            above = o + (np.floor(-o / st + 1e-9) + 1) * st  # smallest lattice point > 0
        LK = np.where(np.isfinite(LK), np.minimum(LK, below), LK)
        UK = np.where(np.isfinite(UK), np.maximum(UK, above), UK)
        LK, UK = np.maximum(LK, L), np.minimum(UK, U)  # the leaf lies inside the root range
    return LK, UK


def coefficients(rule: Rule, L, U, d, lattice=None) -> dict[str, np.ndarray]:
    """Per-element constants of `rule` for bounds [L, U] of s and level gap d = up - down.

    Dual rules: `lwin`, `uwin` (the leaf [L_K, U_K]; an empty window on a side that cannot
    move), `kneg`, `kpos` the slopes on [L_K, 0) and (0, U_K] (lp-dual/bb-dual: d/|L_K| and d/U_K;
    lp-mid/bb-mid: half of that), `kmid` = (kneg + kpos) / 2 (the midpoint rules' slope at s = 0),
    `sgn` = sign(d), and `LK`, `UK`. Heuristics: `half` = d/2."""
    d = np.asarray(d, np.float64)
    if not rule.from_dual:
        half = np.where(np.isfinite(d), d / 2.0, 0.0)
        return {"half": half.astype(np.float32)}
    LK, UK = leaf_bounds(L, U, rule.leaf_depth, lattice)
    LK, UK = np.broadcast_arrays(LK, UK)
    scale = 0.5 if rule.midpoint else 1.0  # the centre of [u_min, u_max] moves at half the speed
    with np.errstate(divide="ignore", invalid="ignore"):
        neg_ok = (LK < 0) & (UK >= 0) & np.isfinite(LK)
        pos_ok = (UK > 0) & (LK <= 0) & np.isfinite(UK)
        kneg = np.where(neg_ok, scale * d / np.abs(LK), 0.0).astype(np.float32)
        kpos = np.where(pos_ok, scale * d / UK, 0.0).astype(np.float32)
    lwin = np.where(neg_ok, LK, 0.0)  # an empty window when the side cannot move
    uwin = np.where(pos_ok, UK, 0.0)
    kmid = np.float32(0.5) * (kneg + kpos)  # float32, as the kernels and the gradient graph use it
    return {"lwin": lwin, "uwin": uwin, "kneg": kneg, "kpos": kpos, "kmid": kmid,
            "sgn": np.sign(np.where(np.isfinite(d), d, 0.0)).astype(np.float32), "LK": LK, "UK": UK}


def relaxed_u(s, pattern, LK, UK):
    """The relaxed block's primal u*(s) in [0, 1] when sign(c) = `pattern` (+1 or -1): the argmin
    of v_g (or v_K with the leaf bounds): u_min(s) = clip(s/U_K, 0, 1) for c > 0, u_max(s) =
    clip(1 - s/L_K, 0, 1) for c < 0; 1 when L_K > 0 and 0 when U_K < 0 (stable). Its derivative is
    the lp-dual / bb-dual rule divided by d."""
    s = np.asarray(s, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(UK > 0, np.clip(s / UK, 0.0, 1.0), 0.0)
        dn = np.where(LK < 0, np.clip(1.0 - s / LK, 0.0, 1.0), 1.0)
    u = np.where(np.asarray(pattern) > 0, up, dn)
    return np.where(LK > 0, 1.0, np.where(UK < 0, 0.0, u))


def centre_u(s, LK, UK):
    """(u_min(s) + u_max(s)) / 2: the centre of the relaxed interval of u (the leaf's when L_K, U_K
    are leaf bounds), a fixed function of s; its derivative is the lp-mid / bb-mid rule over d."""
    return 0.5 * (relaxed_u(s, 1.0, LK, UK) + relaxed_u(s, -1.0, LK, UK))


def surrogate_constants(rule: Rule, co: dict) -> dict[str, np.ndarray]:
    """The fixed surrogate u(s) of `rule` (constants `co` of `coefficients`) in one clip form that
    the runtime and the gradient graph both evaluate in float64:
        u = min(hi, max(lo, (clip(a_up s + b_up, 0, 1) + clip(a_dn s + b_dn, 0, 1)) / 2)).
    lp-mid, bb-mid:K: a_up = 1/U_K, b_up = 0 (u_min), a_dn = -1/L_K, b_dn = 1 (u_max), each 0 on a
    side that cannot move; lo = 1 on stable-on (L_K > 0), hi = 0 on stable-off (U_K < 0): centre_u.
    (clip to [cmin, cmax] = [0, 1]). ste: u = (1 + s)/2 unclipped (a = b = 1/2, every clip bound
    infinite: y = s for a sign unit); ste-clip: the same clipped to [0, 1] (y = hardtanh(s))."""
    if rule.kind in ("ste", "ste-clip"):
        n = co["half"].shape
        lo, hi = (0.0, 1.0) if rule.kind == "ste-clip" else (-np.inf, np.inf)
        full = lambda v: np.full(n, v, np.float64)  # noqa: E731
        return {"a_up": full(0.5), "b_up": full(0.5), "a_dn": full(0.5), "b_dn": full(0.5),
                "lo": full(lo), "hi": full(hi), "cmin": lo, "cmax": hi}
    if not rule.midpoint:
        raise UsageError(f"the surrogate of {rule.name} depends on the sign of the upstream gradient",
                         hint="pass the sign pattern of c = d g per threshold")
    LK, UK = np.asarray(co["LK"], np.float64), np.asarray(co["UK"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_up = np.where((UK > 0) & np.isfinite(UK), 1.0 / UK, 0.0)
        a_dn = np.where((LK < 0) & np.isfinite(LK), -1.0 / LK, 0.0)
    return {"a_up": a_up, "b_up": np.zeros_like(a_up), "a_dn": a_dn, "b_dn": np.ones_like(a_dn),
            "lo": np.where(LK > 0, 1.0, 0.0), "hi": np.where(UK < 0, 0.0, 1.0), "cmin": 0.0, "cmax": 1.0}


def fixed_surrogate_u(rule: Rule, s, co: dict):
    """u(s) of the rule's fixed surrogate (surrogate_constants), float64."""
    c = surrogate_constants(rule, co)
    s = np.asarray(s, np.float64)
    up = np.clip(c["a_up"] * s + c["b_up"], c["cmin"], c["cmax"])
    dn = np.clip(c["a_dn"] * s + c["b_dn"], c["cmin"], c["cmax"])
    return np.minimum(c["hi"], np.maximum(c["lo"], 0.5 * (up + dn)))


def surrogate_u(rule: Rule, s, LK, UK, pattern=None):
    """The surrogate's u at s: `centre_u` for the midpoint rules, `relaxed_u` with the sign pattern
    of c for lp-dual / bb-dual (which need it: their surrogate depends on the sign of g)."""
    if rule.midpoint:
        return centre_u(s, LK, UK)
    if pattern is None:
        raise UsageError(f"the surrogate of {rule.name} depends on the sign of the upstream gradient",
                         hint="pass the sign pattern of c = d g per threshold")
    return relaxed_u(s, pattern, LK, UK)


def surrogate_value(rule: Rule, s, g, L, U, d, lattice=None):
    """The block value whose derivative the dual rule is: v(s) = c u*(s) (lp-dual, bb-dual:K: the
    lower dual bound) or c (u_min(s) + u_max(s)) / 2 (lp-mid, bb-mid:K: the mean of the lower and
    upper dual bounds), c = d g."""
    if not rule.from_dual:
        raise UsageError(f"rule {rule.name} is a heuristic: it has no value function",
                         hint="use lp-dual, bb-dual:K, lp-mid or bb-mid:K")
    c = np.asarray(d, np.float64) * np.asarray(g, np.float64)
    co = coefficients(rule, L, U, d, lattice)
    return c * surrogate_u(rule, s, co["LK"], co["UK"], np.sign(c))


# -- kernels: x (N, P) float32, per-element constants (P,); tau in float64 as tamec.Threshold ------


def shift_lattice(lat, tau):
    """The lattice of s = x - tau from the lattice (origin, step) of x."""
    if lat is None:
        return None
    o, st = lat
    return (o - tau, np.full(tau.shape, st))

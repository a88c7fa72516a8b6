"""The numba kernels of the Threshold backward rules; the rules themselves (their definitions,
constants and surrogates, read by the runtime and by the gradient-graph export alike) are in
tamec/ops/rules.py, re-exported here.

The function each rule is the conservative field of. Notation: the network N_r is the trained
graph with every activation threshold y = sign-like(s), s = x - tau, replaced by
y = down + d u_r(s), every other op unchanged (BatchNorm in eval mode with the statistics of the
epoch); [L, U] are the interval bounds of s proven for the epoch's parameters and statistics,
[L_K, U_K] their depth-K leaf (tamec/ops/rules.py leaf_bounds); the loss is the mean softmax
cross-entropy of N_r's logits, which is what `tamec train` reports in its default forward.
  lp-mid    the field of the loss of N_r with u_r = (u_min + u_max)/2 on [L, U] (centre_u): a
            Lipschitz piecewise-linear network that equals the BNN at every stable neuron
            (s outside [L, U] gives u_r = 0 or 1) and differs from it only inside [L, U].
  bb-mid:K  the same with [L_K, U_K]: N_r equals the BNN wherever s lies outside the leaf
            (about [L, U] / 2^K, widened outward to the lattice of s), so as K grows N_r tends
            to the BNN at every s != 0, and its loss to the BNN's loss on inputs with no tie.
  ste       the field of the loss of N_r with u_r = (1 + s)/2 unclipped: for a sign unit the
            identity y = s (a linear network, not a bound or a limit of the BNN).
  ste-clip  the same with u_r = clip((1 + s)/2, 0, 1): for a sign unit y = hardtanh(s); equals the
            BNN where |s| >= 1.
  lp-dual, bb-dual:K  the field of the LOWER dual bound c u*(s) of each block for a fixed sign of
            c = d g (relaxed_u): a lower bound of the block's cost, not one function of the weights
            once the sign of g varies between hidden neurons; trained only as the named heuristic
            `--forward sign-heuristic`.
With `--forward sign-heuristic` every rule is applied backward to the sign network's forward: the
returned gradient is then not the field of the reported (BNN) loss (tests/test_train_fields.py
and tests/test_conservative.py show the path test failing there for bb-mid, ste and ste-clip).

Two ways to get a dual rule's slopes:
  - closed form (`coefficients` + `backward`): from the interval bounds of the training graph's
    threshold input (the BN output on hidden layers). Not the certified block: it ignores the
    folded integer pre-activation's lattice gap. What GradProgram does without a plan.
  - from the plan (`plan_tables` + `table_backward`): the pieces of the block's certified s-range
    duals (tamec/dual/srange.py, computed by dualize, handed over by passes/plan.py), applied to
    the folded pre-activation z = (x - beta) / alpha; `table_surrogate` is the function whose
    field they are. What GradProgram.use_plan installs; tests/test_plan.py checks the field is
    F.field of the certified dual for every key of every bundled model.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from tamec.ops.rules import (DEPTH_RULES, HINT, MAX_DEPTH, RULES, Rule, centre_u, coefficients,  # noqa: F401
                             fixed_surrogate_u, leaf_bounds, parse_rule, relaxed_u, shift_lattice,
                             surrogate_constants, surrogate_u, surrogate_value)


@njit(cache=True)
def _dual_backward(x, g, tau, lwin, uwin, kneg, kpos, sgn, out):
    """lp-dual (tamec/dual/lp.py) and bb-dual:K (tamec/dual/bb.py, the active leaf's LP dual), with
    s = x - tau, c = g d (sign(c) = sign(g) sgn):
        dloss/ds = g d / |L_K|  if c < 0 and L_K <= s < 0;  g d / U_K  if c > 0 and 0 < s <= U_K;  else 0
    (kneg = d/|L_K|, kpos = d/U_K, windows [lwin, 0) and (0, uwin]; K = 0 is lp-dual)."""
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            s = np.float64(x[i, j]) - tau[j]
            gv = g[i, j]
            c = gv * sgn[j]
            # branch-free selects: the signs of s and g are random, branches would mispredict
            neg = (s < 0.0) & (c < 0.0) & (s >= lwin[j])
            pos = (s > 0.0) & (c > 0.0) & (s <= uwin[j])
            out[i, j] = gv * (kneg[j] * np.float32(neg) + kpos[j] * np.float32(pos))


@njit(cache=True)
def _mid_backward(x, g, tau, lwin, uwin, kneg, kpos, kmid, out):
    """lp-mid and bb-mid:K (the centre of the leaf's relaxed interval), with s = x - tau:
        dloss/ds = g d/(2|L_K|) on [L_K, 0),  g d/(2 U_K) on (0, U_K],  their mean at 0,  else 0
    (kneg = d/(2|L_K|), kpos = d/(2 U_K), kmid = (kneg + kpos)/2; windows [lwin, 0), (0, uwin])."""
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            s = np.float64(x[i, j]) - tau[j]
            neg = (s < 0.0) & (s >= lwin[j])  # branch-free selects, as in _dual_backward
            pos = (s > 0.0) & (s <= uwin[j])
            at0 = s == 0.0
            out[i, j] = g[i, j] * (kneg[j] * np.float32(neg) + kpos[j] * np.float32(pos) + kmid[j] * np.float32(at0))


@njit(cache=True)
def _ste_backward(x, g, tau, half, clip, out):
    """Heuristics, not fields of the sign network: ste  dloss/ds = g d/2 (identity for a sign unit);
    ste-clip  dloss/ds = g d/2 where |s| <= 1, else 0 (hardtanh window; BinaryNet, Larq)."""
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            if clip and abs(np.float64(x[i, j]) - tau[j]) > 1.0:
                out[i, j] = 0.0
            else:
                out[i, j] = g[i, j] * half[j]


@njit(cache=True)
def threshold_forward(x, tau, up, down, tie, out):
    """out = up where x > tau, down where x < tau, tie where equal (NaN tau: tie), compared in float64."""
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            v = np.float64(x[i, j])
            t = tau[j]
            if v > t:
                out[i, j] = up[j]
            elif v < t:
                out[i, j] = down[j]
            else:
                out[i, j] = tie[j]


@njit(cache=True)
def binarize_scalar(w, tau, up, down, tie, out):
    """The weight quantizer with one (tau, up, down, tie) for the whole tensor (flat arrays)."""
    for i in range(w.size):
        v = np.float64(w[i])
        out[i] = up if v > tau else (down if v < tau else tie)


def backward(rule: Rule, x, g, tau, co: dict) -> np.ndarray:
    """dloss/dx (= dloss/ds) for x, g of shape (N, P) float32 and the rule's constants `co`."""
    out = np.empty(x.shape, np.float32)
    if rule.midpoint:
        _mid_backward(x, g, tau, co["lwin"], co["uwin"], co["kneg"], co["kpos"], co["kmid"], out)
    elif rule.from_dual:
        _dual_backward(x, g, tau, co["lwin"], co["uwin"], co["kneg"], co["kpos"], co["sgn"], out)
    else:
        _ste_backward(x, g, tau, co["half"], rule.kind == "ste-clip", out)
    return out


# -- rules read from the plan: the certified s-range duals' pieces (tamec/dual/srange.py) ---------

PAD = 8  # breakpoints per neuron table (an s-range dual has at most 7: L, L_K, b, 0, a, U_K, U)


def plan_tables(rule: Rule, keys: list[dict], key_of: np.ndarray) -> dict[str, np.ndarray]:
    """Per-neuron tables of the certified pieces of `rule` (its depth K) for F_{+cost} and
    F_{-cost}: `bpp`/`bpn` breakpoints (P, PAD, +inf padded), `slp`/`sln` slopes (P, PAD - 1),
    `np_`/`nn` counts. A neuron with key -1 (stable) has no breakpoint: field 0. UsageError when
    the plan holds no dual at depth K."""
    depth = str(rule.leaf_depth)
    P = key_of.size
    out = {"bpp": np.full((P, PAD), np.inf), "bpn": np.full((P, PAD), np.inf),
           "slp": np.zeros((P, PAD - 1)), "sln": np.zeros((P, PAD - 1)),
           "np_": np.zeros(P, np.int64), "nn": np.zeros(P, np.int64),
           "vp": np.zeros((P, PAD)), "vn": np.zeros((P, PAD))}
    rows = {}
    for k in np.unique(key_of[key_of >= 0]):
        sr = keys[int(k)]["srange"]
        if depth not in sr:
            raise UsageError(f"rule {rule.name}: the plan has no certified s-range dual at depth {depth}",
                             hint=f"use a depth in {sorted(int(d) for d in sr)} or run dualize with srange_depths")
        rows[int(k)] = sr[depth]
    for j in np.flatnonzero(key_of >= 0):
        ent = rows[int(key_of[j])]
        for tag, bp, sl, cnt, val in (("+1", "bpp", "slp", "np_", "vp"), ("-1", "bpn", "sln", "nn", "vn")):
            b, s, pcs = ent[tag]["breakpoints"], ent[tag]["slopes"], ent[tag]["pieces"]
            out[bp][j, :len(b)] = b
            out[sl][j, :len(s)] = s
            out[cnt][j] = len(b)
            if pcs:  # F at the breakpoints, from the certified pieces (F = slope s + const per segment)
                out[val][j, :len(b)] = [pcs[0]["slope"] * b[0] + pcs[0]["const"]] + \
                    [q["slope"] * q["hi"] + q["const"] for q in pcs]
    return out


@njit(cache=True)
def _slope_at(s, bp, sl, nb):
    """The field of one s-range dual at s: the slope of the segment holding s, the mean of the two
    one-sided slopes at a breakpoint, 0 beyond the ends (tamec/dual/srange.py's SRangeDual.field)."""
    if nb == 0 or s < bp[0] or s > bp[nb - 1]:
        return 0.0
    for k in range(nb):
        if s == bp[k]:
            left = sl[k - 1] if k >= 1 else 0.0
            right = sl[k] if k < nb - 1 else 0.0
            return 0.5 * (left + right)
        if s < bp[k]:
            return sl[k - 1]
    return 0.0


@njit(cache=True)
def _table_backward(x, g, a, c0, lat_o, lat_st, tau, bpp, slp, np_, bpn, sln, nn, midpoint, snap, out):
    """dloss/dx from the certified pieces: z = a x + c0 (the folded pre-activation the block was
    certified on; snapped to its lattice origin + k step when lat_st > 0), s = z - tau, then
    dloss/ds = |g| F'_{sign g}(s) (lp-dual, bb-dual:K) or g (F'_+(s) - F'_-(s)) / 2 (lp-mid,
    bb-mid:K), times dz/dx = a. `snap` only where z really is on the lattice (a sign forward:
    binary inputs); a surrogate forward feeds real inputs, whose z is not snapped."""
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            z = a[j] * np.float64(x[i, j]) + c0[j]
            if snap and lat_st[j] > 0.0:
                z = lat_o[j] + np.round((z - lat_o[j]) / lat_st[j]) * lat_st[j]
            s = z - tau[j]
            gv = np.float64(g[i, j])
            if midpoint:
                f = gv * 0.5 * (_slope_at(s, bpp[j], slp[j], np_[j]) - _slope_at(s, bpn[j], sln[j], nn[j]))
            elif gv > 0.0:
                f = gv * _slope_at(s, bpp[j], slp[j], np_[j])
            elif gv < 0.0:
                f = -gv * _slope_at(s, bpn[j], sln[j], nn[j])
            else:
                f = 0.0
            out[i, j] = f * a[j]


def table_backward(rule: Rule, x, g, tab: dict, snap: bool = True) -> np.ndarray:
    """dloss/dx for x, g (N, P) float32 from a threshold's plan tables (`plan_tables` + the map)."""
    out = np.empty(x.shape, np.float32)
    _table_backward(x, g, tab["a"], tab["c0"], tab["lat_o"], tab["lat_st"], tab["tau"], tab["bpp"], tab["slp"],
                    tab["np_"], tab["bpn"], tab["sln"], tab["nn"], rule.midpoint, bool(snap), out)
    return out


def table_surrogate(rule: Rule, x, tab: dict, top, pattern=None) -> np.ndarray:
    """The surrogate output whose derivative `table_backward(..., snap=False)` is, for x (N, P):
    y = (F_+(s) - F_-(s)) / 2 (lp-mid, bb-mid:K) or F_+(s) / -F_-(s) where the sign of c is
    `pattern` +1 / -1 (lp-dual, bb-dual:K), shifted per neuron so that y = `top` (the threshold's
    output level at the top of its range) at the last breakpoint; constant beyond the range, and
    equal to `top` at a neuron with no dual (stable). For the training engineer's surrogate forward."""
    x = np.asarray(x, np.float64)
    s = x * tab["a"] + tab["c0"] - tab["tau"]
    out = np.empty(x.shape)
    for j in range(x.shape[1]):
        fp = _interp(s[:, j], tab["bpp"][j], tab["vp"][j], tab["np_"][j])
        fn = _interp(s[:, j], tab["bpn"][j], tab["vn"][j], tab["nn"][j])
        if rule.midpoint:
            v = 0.5 * (fp - fn)
        else:
            p = np.broadcast_to(np.asarray(pattern, np.float64), x.shape)[:, j]
            v = np.where(p > 0, fp, -fn)
        top_v = v if tab["np_"][j] == 0 else np.asarray(_ends(tab, j, rule, pattern, x.shape[0]))
        out[:, j] = v - top_v + np.broadcast_to(top, (x.shape[1],))[j]
    return out.astype(np.float32)


def _interp(s, bp, v, nb):
    return np.zeros_like(s) if nb == 0 else np.interp(s, bp[:nb], v[:nb])


def _ends(tab, j, rule, pattern, n):
    """The surrogate's value at the top of neuron j's range (before the shift)."""
    fp = tab["vp"][j][tab["np_"][j] - 1] if tab["np_"][j] else 0.0
    fn = tab["vn"][j][tab["nn"][j] - 1] if tab["nn"][j] else 0.0
    if rule.midpoint:
        return np.full(n, 0.5 * (fp - fn))
    p = np.broadcast_to(np.asarray(pattern, np.float64), (n, tab["a"].size))[:, j]
    return np.where(p > 0, fp, -fn)

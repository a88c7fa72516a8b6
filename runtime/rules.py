"""The numba kernels of the Threshold backward rules; the rules themselves (their definitions,
constants and surrogates, read by the runtime and by the gradient-graph export alike) are in
tamec/ops/rules.py, re-exported here."""
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

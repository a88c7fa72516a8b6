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
and tests/test_conservative.py show the path test failing there for bb-mid, ste and ste-clip)."""
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

"""Linear family: `tamec.Linear(x, W[, B])` (`y = x @ W^T + B`, W (N, K) and B (N,) constant;
exact int64 when x and W have integer domains), and the ONNX ops canonicalize folds into it."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import PL, define


def split_weight_bounds(iv, op, ins, apply, bias_shape=lambda b, nd: b):
    """Bounds of y = apply(x, W) + B over x in [lo, hi], apply linear in W: with W = W+ + W-,
    lo_y = apply(lo, W+) + apply(hi, W-) (and the mirror for hi). Weights or bias fed at run
    time: unbounded (None), which is sound."""
    w = iv.const(op.inputs[1])
    has_b = len(op.inputs) > 2 and op.inputs[2]
    if w is None or (has_b and iv.const(op.inputs[2]) is None):
        return None
    (lo, hi), w = ins[0], w.astype(np.float64)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    ylo, yhi = apply(lo, wp) + apply(hi, wn), apply(hi, wp) + apply(lo, wn)
    if has_b:
        b = bias_shape(iv.const(op.inputs[2]).astype(np.float64), ylo.ndim)
        ylo, yhi = ylo + b, yhi + b
    return ylo, yhi


def _bounds_linear(iv, op, ins):
    return split_weight_bounds(iv, op, ins, lambda x, w: x @ w.T)


define("tamec", "Linear", "linear", PL, arity=(2, 3), attrs={}, bounds=_bounds_linear,
       doc="y = x @ W^T + B; exact in int64 on integer domains")
define("", "MatMul", "linear", PL, doc="folded into tamec.Linear by canonicalize when W is constant")
define("", "Gemm", "linear", PL, doc="folded into tamec.Linear by canonicalize")

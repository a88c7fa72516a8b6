"""Linear family: `tamec.Linear(x, W[, B])` (`y = x @ W^T + B`, W (N, K) and B (N,) constant;
exact int64 when x and W have integer domains), and the ONNX ops canonicalize folds into it."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import PL, define


def _bounds_linear(iv, op, ins):
    w = iv.const(op.inputs[1])
    if w is None or (len(op.inputs) > 2 and op.inputs[2] and iv.const(op.inputs[2]) is None):
        return None  # parameters fed at run time: unbounded, which is sound
    (lo, hi), w = ins[0], w.astype(np.float64)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    ylo, yhi = lo @ wp.T + hi @ wn.T, hi @ wp.T + lo @ wn.T
    if len(op.inputs) > 2 and op.inputs[2]:
        b = iv.const(op.inputs[2]).astype(np.float64)
        ylo, yhi = ylo + b, yhi + b
    return ylo, yhi


define("tamec", "Linear", "linear", PL, arity=(2, 3), attrs={}, bounds=_bounds_linear,
       doc="y = x @ W^T + B; exact in int64 on integer domains")
define("", "MatMul", "linear", PL, doc="folded into tamec.Linear by canonicalize when W is constant")
define("", "Gemm", "linear", PL, doc="folded into tamec.Linear by canonicalize")

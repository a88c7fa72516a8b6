"""BatchNormalization (inference mode): a per-channel affine map `a (x - mean) + B`."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import PL, define


def affine(op, scale, bias, mean, var, ndim: int):
    """(a, mean, B) reshaped for an `ndim` input: y = a (x - mean) + B, a = scale / sqrt(var + eps)."""
    a = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + op.attrs.get("epsilon", 1e-5))
    sh = (-1,) + (1,) * (ndim - 2)
    return a.reshape(sh), np.asarray(mean, np.float64).reshape(sh), np.asarray(bias, np.float64).reshape(sh)


def _bounds_bn(iv, op, ins):
    params = [iv.const(i) for i in op.inputs[1:5]]
    if any(p is None for p in params):
        return None
    lo, hi = ins[0]
    a, mean, b = affine(op, *params, lo.ndim)
    y1, y2 = a * (lo - mean) + b, a * (hi - mean) + b
    return np.minimum(y1, y2), np.maximum(y1, y2)  # ends swapped where a < 0


define("", "BatchNormalization", "batchnorm", PL, bounds=_bounds_bn,
       doc="inference mode only; folded into Threshold tau by fold-thresholds")

"""Piecewise-linear elementwise ops: Relu, LeakyRelu, Clip (hardtanh), HardSigmoid, Max, Min, Abs.
Each is monotone per input (Abs: by cases), so its interval is the op on the ends."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import PL, define


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


def _bounds_abs(iv, op, ins):
    lo, hi = ins[0]
    return np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0)), np.maximum(np.abs(lo), np.abs(hi))


def _bounds_increasing_all(iv, op, ins):
    return iv.monotone(op, every_input=True)


for _t in ("Relu", "LeakyRelu", "Clip", "HardSigmoid"):
    define("", _t, "piecewise", PL, bounds=_bounds_monotone)
for _t in ("Max", "Min"):
    define("", _t, "piecewise", PL, bounds=_bounds_increasing_all)
define("", "Abs", "piecewise", PL, bounds=_bounds_abs)

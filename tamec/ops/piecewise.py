"""Piecewise-linear elementwise ops: Relu, LeakyRelu, Clip (hardtanh), HardSigmoid, Max, Min, Abs.
Each is monotone between its kinks, so its interval is the op on the ends and at the kinks
inside (Abs by cases)."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import PL, define


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


def _bounds_abs(iv, op, ins):
    lo, hi = ins[0]
    return np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0)), np.maximum(np.abs(lo), np.abs(hi))


def _bounds_kink_at_zero(iv, op, ins):
    """Relu, LeakyRelu: linear on each side of 0 (a negative alpha bends back: not monotone)."""
    return iv.monotone(op, kinks=(0.0,))


def _bounds_hardsigmoid(iv, op, ins):
    """max(0, min(1, alpha x + beta)): kinks where alpha x + beta is 0 or 1 (any sign of alpha)."""
    a, b = float(op.attrs.get("alpha", 0.2)), float(op.attrs.get("beta", 0.5))
    return iv.monotone(op, kinks=() if a == 0 else (-b / a, (1 - b) / a))


def _bounds_increasing_all(iv, op, ins):
    return iv.monotone(op, every_input=True)


define("", "Relu", "piecewise", PL, bounds=_bounds_kink_at_zero)
define("", "LeakyRelu", "piecewise", PL, bounds=_bounds_kink_at_zero)
define("", "Clip", "piecewise", PL, bounds=_bounds_monotone)
define("", "HardSigmoid", "piecewise", PL, bounds=_bounds_hardsigmoid)
for _t in ("Max", "Min"):
    define("", _t, "piecewise", PL, bounds=_bounds_increasing_all)
define("", "Abs", "piecewise", PL, bounds=_bounds_abs)

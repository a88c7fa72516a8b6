"""Elementwise arithmetic, comparison, logic and rounding ops (standard ONNX)."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import LOG, PL, POLY, RATIONAL, ROUNDING, STEP, define, define_all


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


def _bounds_increasing_all(iv, op, ins):
    return iv.monotone(op, every_input=True)


def _bounds_add(iv, op, ins):
    if len(ins) != 2:
        return None
    (l1, h1), (l2, h2) = ins
    return l1 + l2, h1 + h2


def _bounds_sub(iv, op, ins):
    if len(ins) != 2:
        return None
    (l1, h1), (l2, h2) = ins
    return l1 - h2, h1 - l2


def _products(l1, h1, l2, h2):
    p = np.stack(np.broadcast_arrays(l1 * l2, l1 * h2, h1 * l2, h1 * h2))
    return p.min(0), p.max(0)


def _bounds_mul(iv, op, ins):
    if len(ins) != 2:
        return None
    (l1, h1), (l2, h2) = ins
    return _products(l1, h1, l2, h2)


def _bounds_div(iv, op, ins):
    if len(ins) != 2:
        return None
    (l1, h1), (l2, h2) = ins
    if np.any((l2 <= 0) & (h2 >= 0)):
        return None  # division by an interval holding 0 is unbounded
    return _products(l1, h1, 1 / h2, 1 / l2)


def _bounds_neg(iv, op, ins):
    lo, hi = ins[0]
    return -hi, -lo


define("", "Add", "arith", PL, bounds=_bounds_add)
define("", "Sub", "arith", PL, bounds=_bounds_sub)
define("", "Neg", "arith", PL, bounds=_bounds_neg)
define("", "Sum", "arith", PL, bounds=_bounds_increasing_all)
define("", "Mean", "arith", PL, bounds=_bounds_increasing_all)
define("", "Mul", "arith", POLY, bounds=_bounds_mul, doc="piecewise linear when one side is constant")
define("", "Div", "arith", RATIONAL, bounds=_bounds_div, doc="a pole where the divisor's bounds hold 0")
define("", "Reciprocal", "arith", RATIONAL)
define("", "Pow", "arith", POLY)
define("", "Sqrt", "arith", POLY)
define("", "Log", "arith", LOG)
define_all("Floor Ceil Round", "arith", ROUNDING, bounds=_bounds_monotone)
define_all("Greater Less GreaterOrEqual LessOrEqual Equal", "compare", STEP)
define_all("Not And Or", "logic", PL, doc="boolean in, boolean out: piecewise constant on a discrete set")
define("", "Where", "logic", PL, doc="selects by a boolean condition")

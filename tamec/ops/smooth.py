"""Smooth real ops of the head and of activations: R_exp (exp, sigmoid, tanh, softplus, softmax,
ELU), semialgebraic Softsign, and Erf (analytic: definable only on a proven box)."""
from __future__ import annotations

import numpy as np

from tamec.ops.registry import ANALYTIC, EXP, POLY, define, define_all


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


def _bounds_unit(iv, op, ins):
    lo = ins[0][0]
    return np.zeros(lo.shape), np.ones(lo.shape)


define_all("Exp Sigmoid Tanh Softplus", "smooth", EXP, bounds=_bounds_monotone)
# alpha (exp(x) - 1) below 0, x above: monotone on each side of 0 (decreasing below for alpha < 0)
define("", "Elu", "smooth", EXP, bounds=lambda iv, op, ins: iv.monotone(op, kinks=(0.0,)))
define("", "Softmax", "smooth", EXP, bounds=_bounds_unit)
define("", "LogSoftmax", "smooth", EXP)
define("", "Softsign", "smooth", POLY, bounds=_bounds_monotone, doc="x / (1 + |x|): semialgebraic, no pole")
define("", "Erf", "smooth", ANALYTIC, bounds=_bounds_monotone)

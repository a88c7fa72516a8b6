"""Smooth real ops of the head and of activations: R_exp (exp, sigmoid, tanh, softplus, softmax,
ELU), semialgebraic Softsign, and Erf (analytic: definable only on a proven box)."""
from __future__ import annotations

from tamec.ops.registry import ANALYTIC, EXP, POLY, define, define_all


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


def _bounds_unit(iv, op, ins):
    lo = ins[0][0]
    import numpy as np

    return np.zeros(lo.shape), np.ones(lo.shape)


define_all("Exp Sigmoid Tanh Softplus Elu", "smooth", EXP, bounds=_bounds_monotone)
define("", "Softmax", "smooth", EXP, bounds=_bounds_unit)
define("", "LogSoftmax", "smooth", EXP)
define("", "Softsign", "smooth", POLY, bounds=_bounds_monotone, doc="x / (1 + |x|): semialgebraic, no pole")
define("", "Erf", "smooth", ANALYTIC, bounds=_bounds_monotone)

"""QONNX / FINN quantizers, imported from any of their four domains and filed under
`qonnx.custom_op.general`: BipolarQuant (+-scale, +1 at 0), Quant (integer quantizer; 1 bit is
checked for its degenerate sign/narrow variants by canonicalize), MultiThreshold, Trunc.
Quant and Trunc round, but clip to their bit width: finitely many levels, so a step (tame
class), like the other two. All are monotone in x for a fixed sign of their scales: the interval is the op on the two ends,
ordered, so a negative scale (decreasing) is as sound as a positive one."""
from __future__ import annotations

from tamec.ops.registry import STEP, define

QONNX_DOMAIN = "qonnx.custom_op.general"


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


define(QONNX_DOMAIN, "BipolarQuant", "qonnx", STEP, arity=(2, 2), attrs={}, bounds=_bounds_monotone)
define(QONNX_DOMAIN, "Quant", "qonnx", STEP, arity=(4, 4), bounds=_bounds_monotone,
       attrs={"signed": ("int", 1), "narrow": ("int", 0), "rounding_mode": ("str", "ROUND")})
define(QONNX_DOMAIN, "MultiThreshold", "qonnx", STEP, arity=(2, 2), bounds=_bounds_monotone,
       attrs={"out_scale": ("float", 1.0), "out_bias": ("float", 0.0), "out_dtype": ("str", ""),
              "data_layout": ("str", "NCHW")})
define(QONNX_DOMAIN, "Trunc", "qonnx", STEP, arity=(5, 6), bounds=_bounds_monotone,
       attrs={"rounding_mode": ("str", "FLOOR"), "signed": ("int", 1), "narrow": ("int", 0),
              "output_scale": ("float", None), "output_bit_width": ("float", None)})

"""Ops that move, select or cast data without arithmetic, and the shape computations exporters
write around them (Shape -> Gather -> Concat -> Reshape, Range, Size, ConstantOfShape)."""
from __future__ import annotations

from tamec.ops.registry import PL, STEP, define, define_all


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


define_all("Reshape Flatten Transpose Squeeze Unsqueeze Identity Dropout Gather Slice Expand Pad Cast",
           "shape", PL, bounds=_bounds_monotone)
define("", "Concat", "shape", PL, bounds=lambda iv, op, ins: iv.monotone(op, every_input=True))
define_all("CastLike Shape Size Range Constant ConstantOfShape", "shape", PL)
define_all("ReduceMean ReduceSum ReduceMax", "reduce", PL, bounds=_bounds_monotone)
# written by tamec's own gradient graphs (tamec/export/grad.py), so they must read back
define_all("OneHot ScatterElements", "shape", PL)
define("", "ArgMax", "reduce", STEP, doc="an index: piecewise constant, jumps where the maximum moves")

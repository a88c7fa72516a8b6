"""Pooling family: MaxPool (on binary tensors an exact OR), AveragePool, GlobalAveragePool.
Their windows are tamec.ops.conv.window's."""
from __future__ import annotations

from tamec.ops.registry import PL, define


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


for _t in ("MaxPool", "AveragePool", "GlobalAveragePool"):
    define("", _t, "pool", PL, bounds=_bounds_monotone)

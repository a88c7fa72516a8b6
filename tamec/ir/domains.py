"""Domain inference: which ops carry a finite domain from their inputs to their output.

Max-pooling, reshaping, slicing and concatenating never create new element values, so a ternary
tensor stays ternary through them; that is what lets `fold-thresholds` see the integer
pre-activation of a binary conv behind a MaxPool. `Where(c, a, b)` picks each element from a or
b, so it has their join: the standard form of a Threshold (nested Wheres over +-1 and 0
constants) is ternary or bipolar again when re-imported. Every other op keeps the domain it has.
"""
from __future__ import annotations

import numpy as np

from tamec.ir.graph import REAL, Domain, Graph

PRESERVING = frozenset("""MaxPool Reshape Flatten Transpose Squeeze Unsqueeze Identity Gather Slice Concat
Expand Dropout GlobalMaxPool Pad Max Min ReduceMax ReduceMin Tile SpaceToDepth DepthToSpace Where""".split())
MAX_SET = 4096


def join(domains: list[Domain]) -> Domain:
    """The smallest named domain holding every element of each of `domains`."""
    vals = []
    for d in domains:
        v = d.finite_values()
        if v is None or v.size > MAX_SET:
            return REAL
        vals.append(v)
    return Domain.of_array(np.concatenate(vals)) if vals else REAL


def _data_inputs(op) -> list[str]:
    """The inputs whose elements a value-preserving op copies to its output."""
    if op.op_type in ("Concat", "Max", "Min"):
        return [i for i in op.inputs if i]
    if op.op_type == "Where":  # the condition only chooses
        return op.inputs[1:3]
    return [op.inputs[0]]


def infer_domains(g: Graph, *, keep_declared: bool = False) -> int:
    """Give the outputs of value-preserving ops the join of their data inputs' domains; with
    `keep_declared`, only outputs still `real` (the importer keeps what a file declares)."""
    changed = 0
    for op in g.ops():
        if op.domain or op.op_type not in PRESERVING or len(op.outputs) < 1:
            continue
        if keep_declared and g.values[op.outputs[0]].domain.kind != "real":
            continue
        data = _data_inputs(op)
        doms = [g.values[i].domain for i in data]
        if op.op_type == "Pad":
            pad = g.const(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else None
            mode = op.attrs.get("mode", "constant")
            if mode == "constant":
                value = float(pad.reshape(-1)[0]) if pad is not None else float(op.attrs.get("value", 0.0))
                doms.append(Domain.of_array(np.array([value])))
        d = join(doms)
        out = g.values[op.outputs[0]]
        if d != out.domain and d.kind != "real":
            out.domain = d
            changed += 1
    return changed

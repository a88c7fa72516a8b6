"""Small rewrite helpers shared by the graph passes: evaluate one op, bypass an op, fold constants."""
from __future__ import annotations

import dataclasses

import numpy as np

from tamec.ir.graph import Domain, Graph, Op, Value
from tamec.ops import QUANTIZERS


def eval_op(g: Graph, op: Op, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Outputs of `op` alone, on its constant inputs plus `feeds` for the others, with the
    reference evaluator (so folding computes exactly what evaluation would)."""
    from tamec.evaluator import Evaluator

    feeds = dict(feeds or {})
    mini = Graph(f"{g.name}:{op.id}", g.opset)
    for name in op.inputs:
        if not name or name in mini.values:
            continue
        v = g.values[name]
        if name in feeds:
            a = np.asarray(feeds[name])
            mini.add_value(Value(name, tuple(a.shape), a.dtype.name, v.domain))
            mini.inputs.append(name)
        else:
            mini.add_value(dataclasses.replace(v, bounds=None))
    for o in op.outputs:
        mini.add_value(dataclasses.replace(g.values[o], bounds=None, const=None))
    mini.add_op(dataclasses.replace(op, inputs=list(op.inputs), outputs=list(op.outputs)))
    mini.outputs = list(op.outputs)
    res = Evaluator(mini).run(feeds)
    return [res[o] for o in op.outputs]


def bypass(g: Graph, op: Op, src: str) -> bool:
    """Remove single-output `op`, its consumers reading `src` instead. A graph output keeps its
    name: `src` (an op's result, same tensor) is renamed to it everywhere; returns False and
    leaves the graph alone when `src` is itself a graph input, output or constant."""
    out = op.outputs[0]
    if out in g.outputs:
        if g.producer(src) is None or src in g.outputs:
            return False
        outs = g.outputs
        g.remove_op(op.id, drop_outputs=False)
        g.replace_all_uses(out, src)  # consumers of the output too read src, renamed to it below
        g.outputs = [o for o in outs if o != out]
        g.remove_value(out)
        g.rename_value(src, out)
        g.outputs = outs
        return True
    g.replace_all_uses(out, src)
    g.remove_op(op.id)
    return True


def fold_constants(g: Graph, *, quantizers: bool) -> int:
    """Replace every op whose inputs are all constants by constants; quantizers only when
    `quantizers` (canonicalize keeps weight quantizers for binarize-weights). Returns the count."""
    folded = 0
    for op in g.ops():
        if op.op_type == "Shape" and not op.domain:
            shape = g.values[op.inputs[0]].shape
            if shape is None or not all(isinstance(d, int) for d in shape):
                continue
        elif not all(not i or g.values[i].const is not None for i in op.inputs):
            continue
        if not quantizers and (op.domain, op.op_type) in QUANTIZERS:
            continue
        if op.op_type == "Shape" and not op.domain:
            shape = np.array(g.values[op.inputs[0]].shape, dtype=np.int64)
            start, end = op.attrs.get("start", 0), op.attrs.get("end", None)
            results = [shape[start:end]]
        else:
            results = eval_op(g, op)
        outs = list(op.outputs)
        keep_names = [o for o in outs if o in g.outputs]
        g.remove_op(op.id, drop_outputs=False)
        for name, arr in zip(outs, results):
            v = g.values[name]
            v.const = np.asarray(arr)
            v.const.flags.writeable = False
            v.shape, v.dtype = tuple(v.const.shape), v.const.dtype.name
            v.domain = Domain.of_array(v.const)
            if not g.users(name) and name not in keep_names:
                g.remove_value(name)
        folded += 1
    return folded


def single_user(g: Graph, name: str) -> bool:
    """True when exactly one op reads `name` and it is not a graph output (safe to rewrite in place)."""
    return len(g.users(name)) == 1 and name not in g.outputs

"""plan: MIP IR -> a runtime-independent plan (kernel choice, bit layouts, backward rule sources).

Per block of the dualized, tame-checked module the plan says
  - `kernels`: per Linear/Conv, xnor-popcount on 64-bit words when its data input is binary
    (`words` = ceil(fan-in / 64)), float GEMM otherwise (the first layer, the head);
  - `thresholds`: per activation Threshold, its ONNX origin, the value z it thresholds (the folded
    integer pre-activation on hidden layers), its per-neuron tau, and for every neuron the index
    of its dual key (-1: stable, field 0);
  - `keys`: per key, the certified s-range duals (tamec/dual/srange.py) of dualize at every depth:
    the pieces, breakpoints and slopes the backward rules apply, not re-derived;
  - `certified` and `reasons`: a block gets a dual rule only if tame-check calls it nice and
    every certificate dualize wrote for it holds (minorant, dual feasible, s-range exact check).
    A failed block is planned with `rule_source: None`: the runtime refuses to train it with a
    dual rule unless the user names a heuristic fallback.
  - `certificate`: the citation `str(GradProgram)` and metrics.json print for the block's rule.

The plan is plain data in `module.reports["plan"]`: this pass imports nothing of the runtime
(DESIGN.md's arrows); `tamec.runtime.autograd.GradProgram.use_plan` consumes it.
"""
from __future__ import annotations

import numpy as np

from tamec.errors import PassError
from tamec.passes.base import Pass, register

WORD = 64  # bits per packed word (runtime/bits.py)


def _kernels(g, block) -> list[dict]:
    out = []
    for o in block.ops:
        op = g.op(o)
        if op.op_type not in ("Linear", "Conv"):
            continue
        v = g.values[op.inputs[0]]
        w = g.values[op.inputs[1]] if len(op.inputs) > 1 else None
        fan_in = None
        if w is not None and w.shape:  # Linear weights are (in, out), Conv weights (out, in, *kernel)
            fan_in = int(np.prod(w.shape[1:])) if op.op_type == "Conv" else int(w.shape[0])
        binary = v.domain is not None and v.domain.is_binary
        ent = {"op": o, "kernel": "xnor-popcount" if binary else "float-gemm", "input_binary": bool(binary),
               "input_domain": str(v.domain)}
        if binary and fan_in:
            ent.update(layout=f"bits packed {WORD} to a word, little-endian", words=-(-fan_in // WORD))
        out.append(ent)
    return out


def _reasons(rep: dict, tame: dict | None) -> list[str]:
    """Why the block's certificate fails (empty: it holds)."""
    why = []
    if tame is None:
        why.append("not tame-checked")
    elif tame.get("verdict") != "nice":
        why.append(f"not nice ({tame.get('reason') or tame.get('verdict')})")
    summ = rep.get("summary")
    if summ is not None:
        if not summ["minorant"]:
            why.append("a dual is not a minorant of the value function")
        if not summ["dual_feasible"]:
            why.append("a dual is not dual feasible")
        sr = summ.get("srange")
        thresholds = any(k.get("kind", "threshold") == "threshold" for k in rep.get("keys", []))
        if sr is None and thresholds:  # a MaxPool-only block has no threshold rule to read
            why.append("no s-range dual (run dualize with srange_depths)")
        elif sr is not None and not sr["certified"]:
            why.append("an s-range dual fails its exact check")
    return why


def block_plan(g, block, rep: dict, tame: dict | None) -> dict:
    """The plan entry of one block from its dualize report `rep` and tame-check certificate."""
    keys = rep.get("keys", [])
    thr = {}
    for k, key in enumerate(keys):
        for c in key.get("covers", []) if key.get("kind", "threshold") == "threshold" else []:
            ent = thr.setdefault(c["op"], {})
            for j in c["elements"]:
                ent[int(j)] = k
    thresholds = []
    for o in block.ops:
        op = g.op(o)
        if op.op_type != "Threshold" or (o not in thr and not _activation(g, op)):
            continue  # a weight quantizer has no backward rule
        shape = g.values[op.outputs[0]].shape
        n = int(np.prod([d for d in shape[1:]], dtype=np.int64))
        tau = np.broadcast_to(_per_channel(op.attrs["tau"], shape), (n,)).astype(np.float64)
        key_of = np.full(n, -1, np.int64)
        for j, k in thr.get(o, {}).items():
            key_of[j] = k
        thresholds.append({"op": o, "origin": list(op.origin), "input": op.inputs[0], "neurons": n,
                           "tau": tau.tolist(), "key_of": key_of.tolist()})
    why = _reasons(rep, tame)
    cite = f"dualize:{block.name} s-range duals K={rep['summary']['srange']['depths']} (exact check)" \
        if rep.get("summary", {}).get("srange") else f"dualize:{block.name}"
    return {"block": block.name, "kernels": _kernels(g, block), "thresholds": thresholds,
            # every key, in dualize's order (key_of indexes it); a MaxPool key carries no s-range dual
            "keys": [{"kind": k.get("kind", "threshold"), "key": k.get("key"), "neurons": k.get("neurons"),
                      "srange": k.get("srange", {})} for k in keys],
            "certified": not why, "reasons": why, "certificate": cite,
            "tame": None if tame is None else tame.get("verdict"),
            "rule_source": "s-range dual" if not why else None}


def _activation(g, op) -> bool:
    """A Threshold on data (not a weight quantizer): its input has a producer."""
    return g.producer(op.inputs[0]) is not None


def _per_channel(tau, shape) -> np.ndarray:
    """tau broadcast over one sample (per channel on axis 1 for conv activations)."""
    t = np.asarray(tau, np.float64)
    sample = tuple(shape[1:])
    if t.ndim == 0 or t.size == int(np.prod(sample)):
        return np.broadcast_to(t, sample).reshape(-1) if t.ndim == 0 else t.reshape(-1)
    return np.broadcast_to(t.reshape((-1,) + (1,) * (len(sample) - 1)), sample).reshape(-1)


@register
class Plan(Pass):
    name = "plan"
    description = "runtime plan: kernel choice, bit layouts, and per block the certified dual its backward rule reads"
    requires = frozenset({"dualized"})
    ensures = frozenset({"planned"})

    def rewrite(self, g, ctx, module):
        duals = module.reports.get("dualize")
        if duals is None:
            raise PassError("plan needs the dualize report", hint="run partition, lower-mip, dualize, tame-check first")
        tames = {t["block"]: t for t in module.reports.get("tame-check", [])}
        blocks = [block_plan(g, b, r, tames.get(b.name)) for b, r in zip(module.mip.blocks, duals)]
        module.reports["plan"] = {"blocks": blocks}
        return {"blocks": len(blocks), "certified": sum(b["certified"] for b in blocks),
                "refused": [b["block"] for b in blocks if not b["certified"]],
                "thresholds": sum(len(b["thresholds"]) for b in blocks)}

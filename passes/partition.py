"""partition: group the compiled graph's ops into MIP blocks, one per binarized layer (the ops up
to and including each Threshold) plus a head block (everything after the last threshold).

The graph is not changed: the blocks go to `module.reports["partition"]` as plain dicts (name,
kind, ops, inputs, outputs, not_lowered), which `lower-mip` reads. The rules and the set of ops
a block may hold are those of `tamec.lower.inference.partition`; any other op is an
UnsupportedModelError naming it, raised here rather than half-way through lowering.
"""
from __future__ import annotations

from tamec.lower.inference import partition
from tamec.passes.base import Pass, register


@register
class Partition(Pass):
    name = "partition"
    description = "group ops into MIP blocks: one per binarized layer, plus the head"
    requires = frozenset({"bounded"})
    ensures = frozenset({"partitioned"})

    def rewrite(self, g, ctx, module):
        specs = partition(g)
        module.reports["partition"] = [s.to_json() for s in specs]
        return {"blocks": len(specs), "binarized": sum(s.kind == "binarized" for s in specs),
                "head_ops": sum(len(s.ops) for s in specs if s.kind == "head"),
                "not_lowered": [i for s in specs for i in s.not_lowered]}

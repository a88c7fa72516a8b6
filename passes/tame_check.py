"""tame-check: certify every MIP block *nice* (compact, definable, finitely many nonsmooth pieces,
the relaxation's dual feasible).

It runs after dualize, on what dualize produced: the analysis `tamec.tame.certify_block` reads each
block's dualize report (`module.reports["dualize"]`), so a block whose dual functions are not
certified dual feasible is not nice, and only Thresholds whose rows the duals cover count as
replaced by a Lipschitz surrogate. This pass maps it over `module.mip.blocks` and stores the
certificates (plain dicts) in `module.reports["tame-check"]`. A block that is not nice is
reported, not raised, unless `ctx.options["require_nice"]` is true: then the first such block is a
PassError naming the block, the op, the ONNX node and the reason.
"""
from __future__ import annotations

from tamec.errors import PassError
from tamec.passes.base import Pass, register
from tamec.tame import certify_block


@register
class TameCheck(Pass):
    name = "tame-check"
    description = "certify each MIP block nice: o-minimal structure, compactness, dual feasibility, nonsmooth pieces"
    requires = frozenset({"lowered", "dualized"})
    ensures = frozenset({"tame-checked"})

    def rewrite(self, g, ctx, module):
        duals = {r["block"]: r for r in module.reports.get("dualize") or []}
        certs = [certify_block(g, b, duals.get(b.name)) for b in module.mip.blocks]
        module.reports["tame-check"] = certs
        bad = [c for c in certs if c["verdict"] != "nice"]
        if bad and ctx.options.get("require_nice"):
            c = bad[0]
            raise PassError(f"block {c['block']} is not nice: {c['reason']}", node=c["node"] or None,
                            op=c["op"] or None,
                            hint="fix the model or its bounds, or run without require_nice to get the report")
        structures: dict[str, int] = {}
        for c in certs:
            structures[c["structure"]] = structures.get(c["structure"], 0) + 1
        return {"blocks": len(certs), "nice": len(certs) - len(bad), "structures": structures,
                "not_nice": [c["block"] for c in bad],
                "lipschitz": sum(c["lipschitz"] == "Lipschitz on the box" for c in certs)}

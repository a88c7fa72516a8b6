"""lower-mip: the graph IR -> the MIP IR (`module.mip`), one block per partition block.

Modes (`ctx.options["mode"]`):
  inference (default)  weights fixed, inputs free in their box; the feasible set is exactly the
                       set of (input, activations, output) the network computes
                       (tamec/lower/inference.py has the encodings and the eps rule);
  training             weights are variables, the data `ctx.options["data"]` = (x, y) fixed
                       (tamec/lower/training.py; the widths come from the graph's Linear ops
                       or `ctx.options["arch"]`).
The result is checked with `verify_mip`; in inference mode the LP relaxation is solved once
(networks up to 10,000 variables, or `feasibility_check=True`) and an infeasible one is an error
naming the conflicting row groups and their graph ops. Statistics per block: variables by kind, rows, big-M
rows, the largest M and the lowering time; they also go to `module.reports["lower-mip"]`.
"""
from __future__ import annotations

import time

import numpy as np

from tamec.errors import UsageError
from tamec.ir.mip import verify_mip
from tamec.passes.base import Pass, register


FEASIBILITY_CHECK_VARS = 10_000


@register
class LowerMip(Pass):
    name = "lower-mip"
    description = "lower each block to a MIP (inference: weights fixed; training: weights free)"
    requires = frozenset({"partitioned"})
    ensures = frozenset({"lowered"})

    def rewrite(self, g, ctx, module):
        mode = ctx.options.get("mode", "inference")
        t0 = time.perf_counter()
        if mode == "inference":
            from tamec.lower.inference import BlockSpec, lower_inference

            specs = [BlockSpec.from_json(d) for d in module.reports.get("partition", [])] or None
            kw = {k: ctx.options[k] for k in ("eps", "rel_eps") if k in ctx.options}
            mip = lower_inference(g, specs, **kw)
        elif mode == "training":
            from tamec.lower.training import lower_training

            if "data" not in ctx.options:
                raise UsageError("training-mode lowering needs data", hint="pass (x, y) as options['data']")
            x, y = ctx.options["data"]
            arch = ctx.options.get("arch") or mlp_arch(g)
            kw = {k: ctx.options[k] for k in ("margin", "weights", "loss", "weight_penalty") if k in ctx.options}
            res = lower_training(arch, x, y, **kw)
            mip, layout = res if isinstance(res, tuple) else (res, None)
            if layout is not None:
                mip.meta["layout"] = layout
        else:
            raise UsageError(f"unknown lowering mode {mode!r}", hint="use 'inference' or 'training'")
        verify_mip(mip)
        n_vars = sum(b.n_vars for b in mip.blocks)
        check = ctx.options.get("feasibility_check", "auto")
        # one LP over the whole network: seconds for TFC, minutes for LFC-size, so "auto" skips
        # it above FEASIBILITY_CHECK_VARS (verify explains infeasibility itself when it meets it)
        checked = mode == "inference" and (check is True or (check == "auto" and n_vars <= FEASIBILITY_CHECK_VARS))
        if checked:
            _check_feasible(mip, module.source)
        module.mip = mip
        table = [block_stats(b) for b in mip.blocks]
        module.reports["lower-mip"] = table
        return {"mode": mode, "blocks": len(table), "vars": sum(r["vars"] for r in table),
                "feasibility_checked": checked,
                "rows": sum(r["rows"] for r in table), "big_m_rows": sum(r["big_m_rows"] for r in table),
                "max_m": max([r["max_m"] for r in table], default=0.0),
                "seconds": round(time.perf_counter() - t0, 4),
                "per_block": {r["block"]: {k: v for k, v in r.items() if k != "block"} for r in table}}


def _check_feasible(mip, source) -> None:
    """The network computes something for every input in its box, so an infeasible LP relaxation
    is a broken model or bounds: say which row groups (and graph ops) conflict."""
    from tamec.errors import ModelStructureError
    from tamec.solve import infeasible_row_groups, solve

    p = mip.assemble()
    if solve(p, relax=True, c=np.zeros(p.A.shape[1])).status != "infeasible":
        return
    rows = infeasible_row_groups(mip)
    raise ModelStructureError("the inference MIP is infeasible; conflicting rows: "
                              + "; ".join(f"{b}/{r} (op {op})" for b, r, op in rows),
                              file=source, node=rows[0][2] if rows else None,
                              hint="check the input bounds and the bounds pass report")


def mlp_arch(g) -> list[int]:
    """Layer widths [n0, n1, ..., nL] of a graph whose weighted layers are tamec.Linear ops."""
    lin = [op for op in g.ops() if op.qualname == "tamec.Linear"]
    if not lin or any(op.qualname == "Conv" for op in g.ops()):
        raise UsageError("training-mode lowering needs a fully connected network",
                         hint="pass the layer widths as options['arch']")
    ws = [g.const(op.inputs[1]).shape for op in lin]
    return [int(ws[0][1])] + [int(w[0]) for w in ws]


def block_stats(b) -> dict:
    """Variables by kind, rows, big-M rows, the largest M and the lowering time of one block."""
    kinds = {k: 0 for k in ("continuous", "binary", "integer")}
    for v in b.vars:
        kinds[v.kind] += v.size
    rows = sum(r.size for r in b.rows) + sum(r.size for r in b.indicators)
    bigm = [r for r in b.rows if r.kind == "big-m"]
    ms = [float(np.max(r.m)) for r in bigm if r.m is not None and r.size]
    return {"block": b.name, "kind": b.meta.get("kind", ""), "vars": b.n_vars, **kinds, "rows": rows,
            "big_m_rows": sum(r.size for r in bigm), "max_m": max(ms, default=0.0),
            "big_m_source": b.meta.get("big_m", ""), "seconds": round(float(b.meta.get("seconds", 0.0)), 4)}

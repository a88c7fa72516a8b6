"""dualize: per block, dual function(s) of the block's value function and their certificate.

The public `dual_function` (re-exported here) builds an LP, branch-and-bound or Chvatal dual
function of any small MILP (tamec/dual/function.py); `tamec.dual.certificate.certify` checks it.

The pass: for every block of the lowered module, `tamec.dual.blocks` splits the threshold part
into per-neuron MIPs (parametrized by the pre-activation), dedupes them by key and builds certified
`lp` and `bb` duals per key; the head block (affine, continuous) is exact. Keys are independent, so
they are mapped over a `concurrent.futures.Executor`: options `executor` ("processes", default, or
"threads"), `workers` (default 1: inline), `bb_depth` (default 4). The per-block reports go to
`module.reports["dualize"]`.
"""
from __future__ import annotations

import concurrent.futures as cf

from tamec.dual.blocks import block_summary, keys_duals, neuron_specs
from tamec.dual.function import DualFunction, dual_function
from tamec.errors import UsageError
from tamec.passmanager import Pass, register

__all__ = ["DualFunction", "dual_function", "Dualize"]

EXECUTORS = ("processes", "threads")


def _executor(kind: str, workers: int):
    """An Executor for `kind` with `workers` workers, or None to run inline."""
    if kind not in EXECUTORS:
        raise UsageError(f"executor {kind!r}", hint=f"use one of {EXECUTORS}")
    if workers < 1:
        raise UsageError(f"workers={workers}", hint="use workers >= 1")
    if kind == "threads":
        return cf.ThreadPoolExecutor(workers)
    return cf.ProcessPoolExecutor(workers) if workers > 1 else None


def _chunks(specs: list, size: int) -> list[list]:
    return [specs[i:i + size] for i in range(0, len(specs), size)]


@register
class Dualize(Pass):
    name = "dualize"
    description = "per block: certified lp and bb dual functions of its per-neuron MIPs"
    requires = frozenset({"lowered"})
    ensures = frozenset({"dualized"})

    def rewrite(self, g, ctx, module):
        depth = int(ctx.options.get("bb_depth", 4))
        workers = int(ctx.options.get("workers", 1))
        pool = _executor(ctx.options.get("executor", "processes"), workers)
        blocks = module.mip.blocks
        per_block = [neuron_specs(g, b) for b in blocks]
        # tasks: chunks of keys (blocks differ wildly in size; chunks keep the workers even)
        total = sum(len(s) for s, _ in per_block)
        size = max(1, -(-total // (4 * workers)))
        tasks = [(k, ch) for k, (specs, _) in enumerate(per_block) for ch in _chunks(specs, size)]
        results: list[list] = [[] for _ in blocks]
        bar = None
        if len(blocks) > 8:
            from tqdm import tqdm

            bar = tqdm(total=len(tasks), desc="dualize", unit="chunk", leave=False)
        try:
            if pool is None:
                outs = (keys_duals(ch, depth) for _, ch in tasks)
            else:
                outs = pool.map(keys_duals, [ch for _, ch in tasks], [depth] * len(tasks))
            for (k, _), out in zip(tasks, outs):
                results[k].extend(out)  # map keeps task order: the report does not depend on workers
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if pool is not None:
                pool.shutdown()
        reports = []
        for b, (specs, counts), keys in zip(blocks, per_block, results):
            rep = {"block": b.name, "neurons": counts["neurons"], "unstable": counts["unstable"],
                   "stable": {"count": counts["stable"], "dual": "F = const, field 0 (no big-M row)"},
                   "unique_keys": len(keys), "methods": ["lp", "bb"] if keys else []}
            if not counts["thresholds"]:
                rep.update(exact=True, reason="continuous affine block: LP dual is exact", methods=["lp"])
            elif keys:
                rep["bb_depth"] = depth
                rep["keys"] = keys
                rep["summary"] = block_summary(keys)
            reports.append(rep)
        module.reports["dualize"] = reports
        certs = [r["summary"] for r in reports if "summary" in r]
        return {"blocks": len(reports), "keys": sum(r["unique_keys"] for r in reports),
                "neurons": sum(r["unstable"] for r in reports), "workers": workers,
                "minorant": all(c["minorant"] for c in certs),
                "strong_bb_share": min((c["strong_bb_share"] for c in certs), default=None),
                "max_gap_lp": max((c["max_gap_lp"] for c in certs), default=0.0)}

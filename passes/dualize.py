"""dualize: per block, dual function(s) of the block's value function and their certificate.

The public `dual_function` (re-exported here) builds an LP, branch-and-bound or Chvatal dual
function of any small MILP (tamec/dual/function.py); `tamec.dual.certificate.certify` checks it.

The pass: for every block of the lowered module, `tamec.dual.blocks.block_specs` splits its
binary rows into small independent MIPs: the threshold part per neuron (parametrized by the
pre-activation) and a binary MaxPool's OR/AND rows per output element (parametrized by the window's
input bits, `tamec.dual.pool`); it dedupes them by key and builds certified `lp` and `bb` duals
per key (every key MIP has 1-2 binaries, so bb is always small enough). The report of each block
says which rows each key covers (`covers`) and what covers every row group (`rows`; the `def` rows
are the affine parametrization b = B_x x + b0); a block with no binary rows (the head of an MLP)
is exact. Keys are independent, so they are mapped over a `concurrent.futures.Executor`: options
`executor` ("processes", default, "threads", or "dask://HOST:PORT" for a Dask distributed
scheduler, `distributed` imported only then), `workers` (default 1: inline; a Dask cluster uses
its own workers), `dask_timeout` (seconds to reach the scheduler and find a worker, default 10),
`bb_depth` (default 4), `srange_depths` (default 0..8: the depths K of the s-range duals,
tamec/dual/srange.py, that the backward rules lp-dual/bb-dual:K/lp-mid/bb-mid:K read through
the `plan` pass), `chvatal` (default False: also a certified Chvatal dual for threshold keys
with integer data, in exact rational arithmetic, slow). The per-block reports go to
`module.reports["dualize"]`.
"""
from __future__ import annotations

import concurrent.futures as cf

from tamec.dual.blocks import SRANGE_DEPTHS, block_specs, block_summary, keys_duals, row_coverage
from tamec.dual.function import DualFunction, dual_function
from tamec.errors import UsageError
from tamec.passes.base import Pass, register

__all__ = ["DualFunction", "dual_function", "Dualize"]

EXECUTORS = ("processes", "threads", "dask://HOST:PORT")
DASK_HINT = 'pip install "tamec[dask]" (or pip install distributed)'


def dask_address(spec: str) -> str:
    """The scheduler address of `dask://HOST:PORT` (tcp://HOST:PORT); `dask://SCHEME://...`
    (e.g. an in-process `inproc://` cluster) is passed through."""
    rest = spec[len("dask://"):]
    if not rest:
        raise UsageError(f"executor {spec!r} names no scheduler",
                         hint="write dask://HOST:PORT, e.g. dask://127.0.0.1:8786")
    return rest if "://" in rest else "tcp://" + rest


def _dask(spec: str, timeout: float):
    """(Executor, Client, thread count) of the Dask scheduler `spec`: a UsageError naming the
    address when `distributed` is missing, the scheduler is unreachable or has no worker."""
    address = dask_address(spec)
    try:
        import distributed
    except ImportError:
        raise UsageError(f"executor {spec}: the Dask executor needs the 'distributed' package, which is not "
                         "installed", hint=DASK_HINT) from None
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise UsageError(f"executor {spec}: cannot reach a Dask scheduler at {address} ({e})",
                         hint="start one (`dask scheduler`, then `dask worker HOST:PORT`), check HOST:PORT, "
                              "or drop --executor to use local processes") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as e:
        client.close()
        raise UsageError(f"executor {spec}: the Dask scheduler at {address} has no worker ({e})",
                         hint="start one with `dask worker HOST:PORT`") from None
    threads = sum(client.nthreads().values())
    return client.get_executor(), client, max(1, threads)


def _executor(kind: str, workers: int, timeout: float = 10.0):
    """(Executor or None to run inline, Dask client or None, parallelism) for `kind`."""
    if workers < 1:
        raise UsageError(f"workers={workers}", hint="use workers >= 1")
    if isinstance(kind, str) and kind.startswith("dask://"):
        return _dask(kind, timeout)
    if kind not in EXECUTORS[:2]:
        raise UsageError(f"executor {kind!r}", hint=f"use one of {', '.join(EXECUTORS)}")
    if kind == "threads":
        return cf.ThreadPoolExecutor(workers), None, workers
    return (cf.ProcessPoolExecutor(workers) if workers > 1 else None), None, workers


def _chunks(specs: list, size: int) -> list[list]:
    return [specs[i:i + size] for i in range(0, len(specs), size)]


@register
class Dualize(Pass):
    name = "dualize"
    description = "per block: certified lp and bb dual functions of its per-neuron and per-MaxPool-output MIPs"
    requires = frozenset({"lowered"})
    ensures = frozenset({"dualized"})

    def rewrite(self, g, ctx, module):
        depth = int(ctx.options.get("bb_depth", 4))
        chvatal = bool(ctx.options.get("chvatal", False))
        sdepths = tuple(int(k) for k in ctx.options.get("srange_depths", SRANGE_DEPTHS))
        workers = int(ctx.options.get("workers", 1))
        kind = ctx.options.get("executor") or "processes"
        blocks = module.mip.blocks
        per_block = [block_specs(g, b) for b in blocks]
        from tqdm import tqdm

        pool, client, par = _executor(kind, workers, float(ctx.options.get("dask_timeout", 10.0)))
        bar = outs = None
        try:  # from here on the pool and the client are always shut down
            # tasks: chunks of keys (blocks differ wildly in size; chunks keep the workers even)
            total = sum(len(s) for s, _ in per_block)
            size = max(1, -(-total // (4 * par)))
            tasks = [(k, ch) for k, (specs, _) in enumerate(per_block) for ch in _chunks(specs, size)]
            results: list[list] = [[] for _ in blocks]
            if len(blocks) > 8:
                bar = tqdm(total=len(tasks), desc="dualize", unit="chunk", leave=False)
            if pool is None:
                outs = (keys_duals(ch, depth, chvatal, sdepths) for _, ch in tasks)
            else:
                outs = pool.map(keys_duals, [ch for _, ch in tasks], [depth] * len(tasks), [chvatal] * len(tasks),
                                [sdepths] * len(tasks))
            for (k, _), out in zip(tasks, outs):
                results[k].extend(out)  # map keeps task order: the report does not depend on workers
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if hasattr(outs, "close"):
                outs.close()  # a Dask result iterator cleans up in its finally: run it while the client lives
            if pool is not None:
                pool.shutdown()
            if client is not None:
                client.close()
        reports = []
        for b, (specs, counts), keys in zip(blocks, per_block, results):
            rows, uncovered = row_coverage(g, b, specs)
            rep = {"block": b.name, "neurons": counts["neurons"], "unstable": counts["unstable"],
                   "stable": {"count": counts["stable"], "dual": "F = const, field 0 (no big-M row)"},
                   "pool_elements": counts["pool_elements"],
                   "unique_keys": len(keys), "methods": ["lp", "bb"] if keys else [], "rows": rows,
                   "uncovered_rows": uncovered}
            if not counts["thresholds"] and not counts["pools"]:
                if b.meta.get("kinks"):  # binaries of Relu/Clip/Max...: the LP relaxation has a gap
                    rep["note"] = (f"{b.meta['kinks']} piecewise-linear kink binaries get no dual function "
                                   "(their rows are in uncovered_rows)")
                else:
                    rep.update(exact=True, reason="continuous affine block: LP dual is exact", methods=["lp"])
            if keys:
                rep["bb_depth"] = depth
                if any("certificate" in e for k in keys for e in k.get("chvatal", {}).values()):
                    rep["methods"] = ["lp", "bb", "chvatal"]
                rep["keys"] = keys
                rep["summary"] = block_summary(keys)
            reports.append(rep)
        module.reports["dualize"] = reports
        certs = [r["summary"] for r in reports if "summary" in r]
        return {"blocks": len(reports), "keys": sum(r["unique_keys"] for r in reports),
                "neurons": sum(r["unstable"] for r in reports),
                "pool_elements": sum(r["pool_elements"] for r in reports), "workers": par,
                "executor": kind if client is None else "dask",
                "uncovered_rows": sum(len(r["uncovered_rows"]) for r in reports),
                "minorant": all(c["minorant"] for c in certs),
                "srange_certified": all(c["srange"]["certified"] for c in certs if "srange" in c),
                "strong_bb_share": min((c["strong_bb_share"] for c in certs), default=None),
                "max_gap_lp": max((c["max_gap_lp"] for c in certs), default=0.0)}

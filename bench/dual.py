"""Dual-stage numbers for the issue-4 note: the certificates summary of TFC_1W1A, the share of
strong bb duals on the random suite of tests/test_dual_function.py, and the wall time of the
tame-check + dualize passes for TFC_1W1A and an LFC-size BNN (784-1024x3-10) with 1 and 2 workers.

    python bench/dual.py [--repeats 3] [--random-seeds 100] [--skip-lfc] [--chvatal]

Times: each model is compiled once up to lower-mip; then `tame-check` and `dualize` run
(`Pass.run`, as the pass manager runs them: module copy and change detection included, the IR
verifier not) `--repeats` times per worker count after one warm-up run (numba/HiGHS loading, the
first process pool); the table gives the best and the median. workers=2 uses the default
process executor (its start-up is in the time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import tamec  # noqa: E402
from tamec.passmanager import PassContext, get_pass  # noqa: E402

LOWERED = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip"
TFC = ROOT.parent / "shared" / "models" / "TFC_1W1A.onnx"


def _fmt(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def certificates_summary(module, chvatal: bool = False) -> None:
    """Per block: neurons, keys, methods, lp gaps, strong bb share, minorant, tame verdict/structure."""
    mod = get_pass("tame-check").run(module, PassContext()).module
    res = get_pass("dualize").run(mod, PassContext(options={"chvatal": chvatal}))
    dual = {r["block"]: r for r in res.module.reports["dualize"]}
    print("| block | neurons (unstable) | keys | methods | lp gap at s_ref: min / mean / max | lp strong | "
          "bb strong | chvatal strong | minorant, dual feasible | tame verdict | structure | nonsmooth pieces |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in mod.reports["tame-check"]:
        r = dual[c["block"]]
        ents = {m: [e["certificate"] for k in r.get("keys", []) for e in k.get(m, {}).values() if "certificate" in e]
                for m in ("lp", "bb", "chvatal")}
        gaps = [x["gap"] for x in ents["lp"] if np.isfinite(x["gap"])]
        share = {m: (f"{sum(x['strong'] for x in v)}/{len(v)}" if v else "-") for m, v in ents.items()}
        allc = [x for v in ents.values() for x in v]
        ok = "exact (affine)" if r.get("exact") else \
            f"{all(x['minorant']['holds'] for x in allc)}, {all(x['dual_feasible']['holds'] for x in allc)}"
        gap = "-" if not gaps else f"{min(gaps):.3g} / {statistics.mean(gaps):.3g} / {max(gaps):.3g}"
        print(f"| {c['block']} | {r['neurons']} ({r['unstable']}) | {r['unique_keys']} | {', '.join(r['methods'])} | "
              f"{gap} | {share['lp']} | {share['bb']} | {share['chvatal']} | {ok} | {c['verdict']} | {c['structure']} | "
              f"{c['nonsmooth_pieces']['total']} |")
    st = res.stats
    print(f"\ndualize stats: keys {st['keys']}, unstable neurons {st['neurons']}, uncovered rows {st['uncovered_rows']}, "
          f"minorant {st['minorant']}, strong bb share {st['strong_bb_share']}, max lp gap {st['max_gap_lp']:.6g}")


def random_suite(seeds: int) -> None:
    """Strong share of lp, bb (deep) and bb (depth 2) duals on random_problem(seed, mixed) as the
    test builds them: seeds 0..15 (pure) and 100..115 (mixed) certified as the test does (64-point
    minorant grid), then `seeds` of each certified at b only (strong needs z(b) alone; the
    minorant grid's exact MILP solves are what makes the test slow)."""
    from tamec.dual.certificate import certify, default_grid
    from tests.test_dual_function import make, random_problem

    print("| suite | problems | lp strong | bb strong (depth 30, 2000 nodes) | bb complete | bb depth 2 strong |")
    print("|---|---|---|---|---|---|")
    for n in (16, seeds) if seeds != 16 else (16,):
        for mixed in (False, True):
            cnt = {"lp": 0, "bb": 0, "complete": 0, "bb2": 0}
            for seed in range(n):
                p = random_problem(seed + (100 if mixed else 0), mixed)
                grid = default_grid(p, max_grid=64, seed=seed) if n == 16 else p.b[None, :]
                for label, method, limits in (("lp", "lp", {}), ("bb", "bb", {"depth": 30, "max_nodes": 2000}),
                                              ("bb2", "bb", {"depth": 2})):
                    F = make(p, method, **limits)
                    cert = certify(F, grid=grid, samples=50 if n == 16 else 10, seed=seed)
                    assert cert["minorant"]["holds"], (seed, label)
                    cnt[label] += cert["strong"]
                    if label == "bb":
                        cnt["complete"] += F.info["complete"]
            name = ("mixed" if mixed else "pure-integer") + (" (the test's seeds)" if n == 16 else " (more seeds)")
            print(f"| {name} | {n} | {cnt['lp']}/{n} | {cnt['bb']}/{n} ({cnt['bb'] / n:.0%}) | {cnt['complete']}/{n} | "
                  f"{cnt['bb2']}/{n} |")


def timing(name: str, module, repeats: int) -> None:
    """Wall time of tame-check + dualize with 1 and 2 workers (best and median of `repeats`)."""
    tc, du = get_pass("tame-check"), get_pass("dualize")

    def once(workers):
        t0 = time.perf_counter()
        mod = tc.run(module, PassContext()).module
        t1 = time.perf_counter()
        res = du.run(mod, PassContext(options={"workers": workers}))
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, res.stats

    for workers in (1, 2):
        once(workers)  # warm-up
        runs = [once(workers) for _ in range(repeats)]
        tot = [a + b for a, b, _ in runs]
        st = runs[0][2]
        best = min(range(len(runs)), key=lambda i: tot[i])
        print(f"| {name} | {st['neurons']} unstable, {st['keys']} keys | {workers} | {runs[best][0]:.2f} | "
              f"{runs[best][1]:.2f} | {tot[best]:.2f} | {statistics.median(tot):.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random-seeds", type=int, default=100)
    ap.add_argument("--skip-lfc", action="store_true")
    ap.add_argument("--chvatal", action="store_true", help="also Chvatal duals in the TFC summary (slow)")
    ap.add_argument("--timing-only", action="store_true", help="skip the certificates summary and the random suite")
    a = ap.parse_args()
    models = []
    if TFC.exists():
        t0 = time.perf_counter()
        models.append(("TFC_1W1A", tamec.compile(str(TFC), LOWERED)))
        print(f"TFC_1W1A lowered in {time.perf_counter() - t0:.1f} s")
        if not a.timing_only:
            print("\n## certificates summary, TFC_1W1A\n")
            certificates_summary(models[0][1], a.chvatal)
    if not a.timing_only:
        print("\n## random suite (tests/test_dual_function.py: random_problem)\n")
        random_suite(a.random_seeds)
    if not a.skip_lfc:
        from mip import lfc_model

        t0 = time.perf_counter()
        models.append(("LFC-size 784-1024x3-10", tamec.compile(lfc_model(), LOWERED)))
        print(f"\nLFC-size lowered in {time.perf_counter() - t0:.1f} s")
    print(f"\n## tame-check + dualize wall time (s); load average before: {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores\n")
    print("| model | dualized | workers | tame-check | dualize | total (best) | total (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, m in models:
        timing(name, m, a.repeats)


if __name__ == "__main__":
    main()

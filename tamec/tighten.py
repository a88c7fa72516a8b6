"""LP-based bound tightening of pre-activations, with bounds certified by dual points.

For each threshold layer in order, the network up to that layer is lowered to its inference MIP
(with the bounds known so far), relaxed to an LP, and every unstable pre-activation is minimized
and maximized with HiGHS. The bound used is not HiGHS's reported optimum but the value of a dual
point: for any row multipliers y, with r = c - A^T y,

    min c x  >=  sum_r (y_r lo_r if y_r > 0 else y_r hi_r) + sum_j (r_j lb_j if r_j > 0 else r_j ub_j)

over `lo <= A x <= hi, lb <= x <= ub` (weak duality in box form: every y is dual feasible). So
the bound is sound whatever the solver's accuracy or status; HiGHS's multipliers just make it
tight. Integer pre-activations are then rounded inward to their parity lattice.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.optimize as so
import scipy.sparse as sp

from tamec.ir.graph import Graph
from tamec.ir.mip import Milp
from tamec.ops.threshold import ThresholdParams


def dual_bound(p: Milp, c: np.ndarray, y: np.ndarray) -> float:
    """A certified lower bound on min c x over the LP relaxation of `p`, from multipliers y."""
    r = c - p.A.T @ y
    with np.errstate(invalid="ignore"):
        rows = np.where(y > 0, y * p.lo, np.where(y < 0, y * p.hi, 0.0))
        cols = np.where(r > 0, r * p.lb, np.where(r < 0, r * p.ub, 0.0))
    total = float(np.sum(rows) + np.sum(cols))
    return -np.inf if np.isnan(total) else total


class LpRelaxation:
    """One LP relaxation in the `linprog` form, solved repeatedly with different objectives."""

    def __init__(self, p: Milp):
        self.p = p
        A = p.A.tocsr()
        eq = np.isfinite(p.lo) & np.isfinite(p.hi) & (p.lo == p.hi)
        up = ~eq & np.isfinite(p.hi)
        dn = ~eq & np.isfinite(p.lo)
        self.eq, self.up, self.dn = np.flatnonzero(eq), np.flatnonzero(up), np.flatnonzero(dn)
        self.A_eq, self.b_eq = A[self.eq], p.lo[self.eq]
        self.A_ub = sp.vstack([A[self.up], -A[self.dn]]).tocsr()
        self.b_ub = np.r_[p.hi[self.up], -p.lo[self.dn]]
        self.bounds = np.c_[np.where(np.isfinite(p.lb), p.lb, None), np.where(np.isfinite(p.ub), p.ub, None)]

    def min_bound(self, c: np.ndarray, time_limit: float | None) -> float:
        """A certified lower bound on min c x (-inf when the LP gives no usable multipliers)."""
        opts = {"presolve": True}
        if time_limit:
            opts["time_limit"] = time_limit
        res = so.linprog(c, A_ub=self.A_ub if self.A_ub.shape[0] else None,
                         b_ub=self.b_ub if self.A_ub.shape[0] else None,
                         A_eq=self.A_eq if self.A_eq.shape[0] else None,
                         b_eq=self.b_eq if self.A_eq.shape[0] else None,
                         bounds=self.bounds, method="highs", options=opts)
        eq = getattr(getattr(res, "eqlin", None), "marginals", None)
        ub = getattr(getattr(res, "ineqlin", None), "marginals", None)
        if (self.A_eq.shape[0] and eq is None) or (self.A_ub.shape[0] and ub is None):
            return -np.inf  # stopped before HiGHS had multipliers: no certificate, no tightening
        y = np.zeros(self.p.A.shape[0])
        if self.A_eq.shape[0]:
            y[self.eq] = eq
        if self.A_ub.shape[0]:
            y[self.up] += ub[:self.up.size]
            y[self.dn] -= ub[self.up.size:]
        return dual_bound(self.p, c, y)


def tighten(g: Graph, overrides: dict, repropagate, *, time_limit_per_lp: float | None = 5.0,
            max_seconds: float | None = None, progress: bool = True) -> list[dict]:
    """Tighten the bounds of every threshold's pre-activation in `g`, layer by layer: the
    tightened pairs go into `overrides` and `repropagate()` refreshes every Value.bounds
    downstream before the next layer is lowered. Returns per-layer reports. `progress` shows a
    bar per neuron on stderr (a terminal only); Ctrl-C raises `tamec.errors.Interrupted` whose
    `partial` is the reports so far, the interrupted layer's saying how far it got."""
    from tamec.errors import Interrupted

    reports: list[dict] = []
    try:
        _tighten(g, overrides, repropagate, reports, time_limit_per_lp, max_seconds, progress)
    except KeyboardInterrupt:
        raise Interrupted(reports) from None
    return reports


def _tighten(g, overrides, repropagate, reports, time_limit_per_lp, max_seconds, progress) -> None:
    import sys

    from tqdm import tqdm

    from tamec.lower.inference import lower_inference, partition

    t_start = time.perf_counter()
    specs = partition(g)
    for k, spec in enumerate(specs):
        if spec.kind != "binarized":
            continue
        t = g.op(spec.ops[-1])
        pre = t.inputs[0]
        v = g.values[pre]
        if v.bounds is None:
            continue
        lo0, hi0 = (np.asarray(b, np.float64).copy() for b in v.bounds)
        rep = {"op": t.id, "neurons": int(lo0.size), "lps": 0, "seconds": 0.0, "skipped": ""}
        if k == 0 or (max_seconds is not None and time.perf_counter() - t_start > max_seconds):
            rep["skipped"] = "first layer: intervals are exact" if k == 0 else "time budget spent"
            reports.append(rep)
            continue
        t0 = time.perf_counter()
        mip = lower_inference(g, specs[:k + 1])
        p = mip.assemble()
        lp = LpRelaxation(p)
        (blk, grp), = mip.meta["values"][pre][:1]
        cols = p.col(blk, grp)
        tau = np.broadcast_to(_tau_of(t, lo0.shape), lo0.shape).reshape(-1)
        lo, hi = lo0.reshape(-1).copy(), hi0.reshape(-1).copy()
        unstable = ~((lo > tau) | (hi < tau) | ~np.isfinite(tau))
        bar = tqdm(np.flatnonzero(unstable), desc=f"tighten {t.id}", unit="neuron", file=sys.stderr, leave=False,
                   disable=None if progress else True)
        try:
            for j in bar:
                if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                    rep["skipped"] = f"time budget spent after {rep['lps'] // 2} of {int(unstable.sum())} neurons"
                    break
                c = np.zeros(p.A.shape[1])
                c[cols[j]] = 1.0
                lo[j] = max(lo[j], lp.min_bound(c, time_limit_per_lp))
                hi[j] = min(hi[j], -lp.min_bound(-c, time_limit_per_lp))
                rep["lps"] += 2
        except KeyboardInterrupt:
            rep["skipped"] = f"interrupted after {rep['lps'] // 2} of {int(unstable.sum())} neurons"
            rep["seconds"] = time.perf_counter() - t0
            reports.append(rep)
            raise
        finally:
            bar.close()
        d = v.domain
        if d.kind == "int":  # parity rounding: inward to the lattice
            lo = d.lo + np.ceil((lo - d.lo) / d.step - 1e-9) * d.step
            hi = d.lo + np.floor((hi - d.lo) / d.step + 1e-9) * d.step
        lo, hi = np.minimum(lo, hi0.reshape(-1)), np.maximum(hi, lo0.reshape(-1))
        lo, hi = np.maximum(lo, lo0.reshape(-1)), np.minimum(hi, hi0.reshape(-1))
        overrides[pre] = (lo.reshape(lo0.shape), hi.reshape(hi0.shape))
        repropagate()
        rep["seconds"] = time.perf_counter() - t0
        reports.append(rep)


def _tau_of(t, shape) -> np.ndarray:
    """The Threshold's tau, broadcastable against one example of `shape` (batch dim dropped)."""
    return ThresholdParams.of(t).aligned(len(shape) + 1)[0]

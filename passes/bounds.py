"""bounds: sound elementwise interval bounds for every tensor, from the input box.

Each op's rule is its registry entry's `bounds` (tamec/ops/; lo, hi per element, batch dim 1,
float64):
  Linear/Conv      split W = W+ + W-: lo = W+ lo_x + W- hi_x + b (and the mirror for hi).
  BatchNorm        per-channel affine a (x - mean) + B, ends swapped where a < 0.
  + - * /          interval arithmetic; division by an interval holding 0 is unbounded.
  Threshold        the set of levels each element can reach (lo, hi, tie) given x's bounds.
  monotone ops     Relu, Clip, pools, reshapes, quantizers, Sign, ...: the op on lo and on hi,
                   ordered (a decreasing quantizer, e.g. a negative scale, swaps them).
  anything else    unbounded, then clipped to the value's domain: sound, never guessed.
Real-valued results are widened by 1e-5 relative so that float32 evaluation stays inside.

Report, per threshold layer: neurons, stable neurons (the interval excludes tau, so the big-M
rows of the MIP are not needed), the largest big-M max(tau - L, U - tau) over unstable neurons,
and how many thresholds can tie (tau inside the interval and on the pre-activation's lattice).
With the option `tighten=lp` (`tamec compile --tighten lp`) every unstable pre-activation is
then tightened over the LP relaxation of the network's MIP up to its layer, with bounds
certified by dual points (tamec/tighten.py); the report shows interval and tightened numbers.
"""
from __future__ import annotations

import numpy as np

from tamec.ir.graph import Graph, Op
from tamec.rewrite import eval_op
from tamec.ops import lookup
from tamec.ops.threshold import ThresholdParams
from tamec.passes.base import Pass, input_box, register

WIDEN = 1e-5


def _widen(lo, hi):
    return lo - WIDEN * (1 + np.abs(lo)), hi + WIDEN * (1 + np.abs(hi))


class Intervals:
    def __init__(self, g: Graph):
        self.g = g
        self.b: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, name: str):
        c = self.g.const(name)
        if c is not None:
            c = c.astype(np.float64)
            return c, c
        return self.b.get(name)

    def const(self, name: str):
        return self.g.const(name)

    def op(self, op: Op) -> tuple[np.ndarray, np.ndarray] | None:
        """The op's registry bounds rule on its inputs' intervals (None: unbounded, sound)."""
        d = lookup(op)
        ins = [self.get(i) if i else None for i in op.inputs]
        if d is None or d.bounds is None or any(self.get(i) is None for i in op.inputs if i):
            return None
        return d.bounds(self, op, [b for b in ins if b is not None])

    def monotone(self, op: Op, every_input: bool = False, kinks=()):
        """The op on the lower ends and on the upper ends, ordered per element: sound for an op
        monotone in its data input (either direction), or increasing in every input
        (`every_input`). `kinks`: the points where an elementwise op of one data input may turn
        (monotone between them); it is also evaluated there, clamped into the interval. Any other
        non-constant input: unbounded."""
        g = self.g
        data = [i for i in op.inputs if i and g.const(i) is None]
        if not every_input and any(i != op.inputs[0] for i in data):
            return None
        lo = {i: self.get(i)[0] for i in data}
        hi = {i: self.get(i)[1] for i in data}
        # the bounds are float64: float constants of same-type ops (Max(x, c), Clip(x, lo, hi), ...)
        # are fed in float64 too, or the evaluator refuses the mixed types
        same = {i: c.astype(np.float64) for i in op.inputs
                if i and i not in lo and (c := g.const(i)) is not None and c.dtype.kind == "f"}
        points = [lo, hi] + [{i: np.clip(np.float64(k), lo[i], hi[i]) for i in data} for k in kinks]
        try:
            ys = [eval_op(g, op, {**same, **p})[0].astype(np.float64) for p in points]
        except Exception:  # noqa: BLE001  unbounded is always sound
            return None
        return np.minimum.reduce(ys), np.maximum.reduce(ys)


def threshold_report(op: Op, x_bounds, x_domain) -> dict:
    """Stable neurons, largest big-M and reachable ties of one threshold layer."""
    lo, hi = x_bounds
    tau = np.broadcast_to(ThresholdParams.of(op).aligned(lo.ndim)[0], lo.shape)
    with np.errstate(invalid="ignore"):
        stable = (lo > tau) | (hi < tau) | ~np.isfinite(tau)
        inside = (lo <= tau) & (tau <= hi)
        if x_domain.kind == "int":
            on_lattice = np.mod(tau - x_domain.lo, x_domain.step) == 0
        elif x_domain.is_integer:
            on_lattice = tau == np.round(tau)
        else:
            on_lattice = np.ones(tau.shape, bool)
    big_m = np.where(stable, 0, np.maximum(tau - lo, hi - tau))
    return {"op": op.id, "origin": list(op.origin), "neurons": int(lo.size), "stable": int(stable.sum()),
            "unstable": int((~stable).sum()), "max_big_m": float(big_m.max()) if big_m.size else 0.0,
            "can_tie": int((inside & on_lattice & np.isfinite(tau)).sum())}


def _batch_one(res, out) -> bool:
    """True when (lo, hi) have the value's shape with batch dim 1 and hold no NaN."""
    shape = out.shape or ()
    lo = np.asarray(res[0])
    if lo.ndim != len(shape) or (lo.ndim and lo.shape[0] != 1):
        return False
    if any(isinstance(d, int) and d != s for d, s in zip(shape[1:], lo.shape[1:])):
        return False
    return not (np.isnan(lo).any() or np.isnan(np.asarray(res[1])).any())


def propagate(g: Graph, ctx, overrides: dict | None = None) -> tuple[list[dict], int]:
    """Interval bounds for every value of `g` (stored on Value.bounds); `overrides` maps value
    names to tighter (lo, hi) pairs (no batch dim) that are intersected in as they are reached.
    Returns the per-threshold reports and the number of ops left unbounded."""
    overrides = overrides or {}
    iv = Intervals(g)
    for name in g.inputs:
        v = g.values[name]
        lo, hi = input_box(name, v, ctx)
        shape = tuple(1 if k == 0 or not isinstance(d, int) else d for k, d in enumerate(v.shape or ()))
        # the box may be per element (verify's eps-ball), given without the batch dim
        iv.b[name] = tuple(np.broadcast_to(np.asarray(b, np.float64), shape[1:]).reshape(shape).copy()
                           for b in (lo, hi))
    layers, unbounded = [], 0
    for op in g.ops():
        res = iv.op(op) if len(op.outputs) == 1 else None
        out = g.values[op.outputs[0]]
        if res is not None and not _batch_one(res, out):
            res = None  # the op moved or merged the batch dim (Flatten axis 0, ...): no per-sample box
        if res is not None:
            lo, hi = (np.asarray(r, np.float64) for r in res)
            if not out.domain.is_integer:
                lo, hi = _widen(lo, hi)
            dlo, dhi = out.domain.interval()
            lo, hi = np.maximum(lo, dlo), np.minimum(hi, dhi)
            if out.domain.is_integer:
                lo, hi = np.ceil(lo - 1e-9), np.floor(hi + 1e-9)
            if out.name in overrides:
                olo, ohi = overrides[out.name]
                lo, hi = np.maximum(lo, olo[None]), np.minimum(hi, ohi[None])
            iv.b[out.name] = (lo, hi)
        else:
            unbounded += 1
        if op.qualname == "tamec.Threshold" and iv.get(op.inputs[0]) is not None:
            layers.append(threshold_report(op, iv.get(op.inputs[0]), g.values[op.inputs[0]].domain))
    for name, (lo, hi) in iv.b.items():
        if lo.ndim >= 1 and lo.shape[0] == 1:  # stored without the batch dim (Value.bounds)
            v = g.values[name]
            v.bounds = (lo[0], hi[0])
            v.bounds_source = "lp-tightened" if name in overrides else "interval"
    return layers, unbounded


@register
class Bounds(Pass):
    name = "bounds"
    description = "interval bounds from the input box (+ LP tightening); stable neurons, big-M, ties"
    ensures = frozenset({"bounded"})

    def rewrite(self, g, ctx, module):
        layers, unbounded = propagate(g, ctx)
        stats = {"stable_neurons": sum(r["stable"] for r in layers), "neurons": sum(r["neurons"] for r in layers),
                 "layers": {r["op"]: {k: r[k] for k in ("neurons", "stable", "max_big_m", "can_tie")} for r in layers},
                 "unbounded_ops": unbounded}
        if ctx.options.get("tighten", "none") == "lp":
            from tamec.tighten import tighten

            overrides: dict = {}
            tight = tighten(g, overrides, lambda: propagate(g, ctx, overrides),
                            time_limit_per_lp=ctx.options.get("lp_time_limit", 5.0),
                            max_seconds=ctx.options.get("tighten_seconds"))
            after, _ = propagate(g, ctx, overrides)
            for r, a, t in zip(layers, after, tight):
                r.update({"stable_tightened": a["stable"], "max_big_m_tightened": a["max_big_m"],
                          "lps": t.get("lps", 0), "tighten_seconds": round(t.get("seconds", 0.0), 3),
                          "tighten_note": t.get("skipped", "")})
            stats["stable_neurons_tightened"] = sum(a["stable"] for a in after)
        module.reports["bounds"] = layers
        return stats

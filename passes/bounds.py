"""bounds: sound elementwise interval bounds for every tensor, from the input box.

Rules (lo, hi per element, batch dim 1, float64):
  Linear/Conv      split W = W+ + W-: lo = W+ lo_x + W- hi_x + b (and the mirror for hi).
  BatchNorm        per-channel affine a (x - mean) + B, ends swapped where a < 0.
  + - * /          interval arithmetic; division by an interval holding 0 is unbounded.
  Threshold        the set of levels each element can reach (lo, hi, tie) given x's bounds.
  piecewise linear Relu, LeakyRelu, Abs, HardSigmoid: the op at lo, at hi and at every kink inside
                   [lo, hi] (min and max over those points: exact for a piecewise-linear function,
                   whatever the sign of alpha; a negative alpha makes LeakyRelu and HardSigmoid
                   non-increasing, where "the op on lo and on hi" is wrong).
  monotone ops     Clip, Max, Min, pools, reshapes, quantizers, Sign, ...: the op on lo and on hi.
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
from tamec.ir.rewrite import eval_op
from tamec.passmanager import Pass, input_box, register

MONOTONE = frozenset("""Clip Sigmoid Tanh MaxPool AveragePool GlobalAveragePool Reshape
Flatten Transpose Squeeze Unsqueeze Identity Gather Slice Floor Ceil Round Exp Softsign Softplus
Elu Erf Expand Cast Concat Max Min Sum Mean ReduceMean ReduceSum ReduceMax Sign Dropout Pad BipolarQuant
Quant MultiThreshold Trunc""".split())
WIDEN = 1e-5


def kinks(op: Op) -> list[float]:
    """The points where an elementwise piecewise-linear unary op changes slope (ONNX defaults)."""
    if op.op_type in ("Relu", "LeakyRelu", "Abs"):
        return [0.0]
    if op.op_type == "HardSigmoid":  # max(0, min(1, alpha x + beta)): kinks where alpha x + beta is 0 or 1
        a, b = float(op.attrs.get("alpha", 0.2)), float(op.attrs.get("beta", 0.5))
        return [] if a == 0 else [-b / a, (1 - b) / a]
    raise KeyError(op.op_type)


PIECEWISE_UNARY = frozenset({"Relu", "LeakyRelu", "Abs", "HardSigmoid"})
SAME_TYPE = frozenset({"Max", "Min", "Clip", "Sum", "Mean", "Concat"})  # every operand of one float type


def _widen(lo, hi):
    return lo - WIDEN * (1 + np.abs(lo)), hi + WIDEN * (1 + np.abs(hi))


def _conv(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """Plain float64 NCHW convolution (2-D), for bounds only."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    group = int(attrs.get("group", 1))
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # n, c, oh, ow, kh, kw
    outs = []
    for gi in range(group):
        xs = win[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * (m // group):(gi + 1) * (m // group)]
        outs.append(np.einsum("ncyxij,mcij->nmyx", xs, ws, optimize=True))
    return np.concatenate(outs, axis=1)


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

    def op(self, op: Op) -> tuple[np.ndarray, np.ndarray] | None:
        g, q = self.g, op.qualname
        data = [i for i in op.inputs if i and g.const(i) is None]
        ins = [self.get(i) if i else None for i in op.inputs]
        if any(self.get(i) is None for i in data):
            return None
        params = [g.const(i) for i in op.inputs[1:]]
        if q in ("tamec.Linear", "Conv", "BatchNormalization") and any(
                p is None for i, p in zip(op.inputs[1:], params) if i):
            return None  # parameters fed at run time: unbounded, which is sound
        if q in ("tamec.Linear", "Conv"):
            (lo, hi), w = ins[0], g.const(op.inputs[1]).astype(np.float64)
            wp, wn = np.maximum(w, 0), np.minimum(w, 0)
            if q == "Conv":
                ylo = _conv(lo, wp, op.attrs) + _conv(hi, wn, op.attrs)
                yhi = _conv(hi, wp, op.attrs) + _conv(lo, wn, op.attrs)
            else:
                ylo, yhi = lo @ wp.T + hi @ wn.T, hi @ wp.T + lo @ wn.T
            if len(op.inputs) > 2 and op.inputs[2]:
                bias = g.const(op.inputs[2]).astype(np.float64)
                bias = bias.reshape((-1,) + (1,) * (ylo.ndim - 2)) if q == "Conv" else bias
                ylo, yhi = ylo + bias, yhi + bias
            return ylo, yhi
        if q == "BatchNormalization":
            (lo, hi) = ins[0]
            scale, bias, mean, var = (g.const(i).astype(np.float64) for i in op.inputs[1:5])
            a = scale / np.sqrt(var + op.attrs.get("epsilon", 1e-5))
            sh = (-1,) + (1,) * (lo.ndim - 2)
            a, mean, bias = a.reshape(sh), mean.reshape(sh), bias.reshape(sh)
            y1, y2 = a * (lo - mean) + bias, a * (hi - mean) + bias
            return np.minimum(y1, y2), np.maximum(y1, y2)
        if q in ("Add", "Sub", "Mul", "Div") and len(ins) == 2:
            (l1, h1), (l2, h2) = ins
            if q == "Add":
                return l1 + l2, h1 + h2
            if q == "Sub":
                return l1 - h2, h1 - l2
            if q == "Div":
                if np.any((l2 <= 0) & (h2 >= 0)):
                    return None
                l2, h2 = 1 / h2, 1 / l2
            p = np.stack(np.broadcast_arrays(l1 * l2, l1 * h2, h1 * l2, h1 * h2))
            return p.min(0), p.max(0)
        if q == "Neg":
            lo, hi = ins[0]
            return -hi, -lo
        if q in PIECEWISE_UNARY and len(data) == 1:
            (lo, hi), name = ins[0], data[0]
            # a piecewise-linear f takes its extremes over [lo, hi] at the ends or at a kink inside
            pts = [lo, hi] + [np.clip(k, lo, hi) for k in kinks(op)]
            try:
                ys = np.stack([eval_op(g, op, {name: p})[0].astype(np.float64) for p in pts])
            except Exception:  # noqa: BLE001  unbounded is always sound
                return None
            return ys.min(0), ys.max(0)
        if q == "tamec.Threshold":
            return self.threshold(op, ins[0])
        if q in ("Softmax",):
            shape = ins[0][0].shape
            return np.zeros(shape), np.ones(shape)
        if op.op_type in MONOTONE and (op.op_type not in ("BipolarQuant", "Quant") or
                                       np.all(g.const(op.inputs[1]) > 0)):
            # the bounds are float64: same-type ops (Max(x, c), Clip(x, lo, hi), ...) get their
            # float constants in float64 too, or the evaluator refuses the mixed types
            same = {i: c.astype(np.float64) for i in op.inputs if op.op_type in SAME_TYPE and i
                    and (c := g.const(i)) is not None and c.dtype.kind == "f"}
            feeds_lo = {**same, **{i: self.get(i)[0] for i in data}}
            feeds_hi = {**same, **{i: self.get(i)[1] for i in data}}
            try:
                lo = eval_op(g, op, feeds_lo)[0].astype(np.float64)
                hi = eval_op(g, op, feeds_hi)[0].astype(np.float64)
            except Exception:  # noqa: BLE001  unbounded is always sound
                return None
            return lo, hi
        return None

    def threshold(self, op: Op, x):
        lo, hi = x
        a = op.attrs
        tau = np.asarray(a["tau"], np.float64)
        if tau.ndim:
            shape = [1] * lo.ndim
            shape[a["axis"]] = tau.size
            tau = tau.reshape(shape)
            flip = np.asarray(a["flip"], bool).reshape(shape)
        else:
            flip = np.asarray(a["flip"], bool)
        up_lvl = np.where(flip, a["lo"], a["hi"])
        dn_lvl = np.where(flip, a["hi"], a["lo"])
        with np.errstate(invalid="ignore"):
            can_up, can_dn = hi > tau, lo < tau
            can_tie = ~(lo > tau) & ~(hi < tau)
        inf = np.inf
        ylo = np.minimum(np.minimum(np.where(can_up, up_lvl, inf), np.where(can_dn, dn_lvl, inf)),
                         np.where(can_tie, a["tie"], inf))
        yhi = np.maximum(np.maximum(np.where(can_up, up_lvl, -inf), np.where(can_dn, dn_lvl, -inf)),
                         np.where(can_tie, a["tie"], -inf))
        return ylo, yhi


def threshold_report(op: Op, x_bounds, x_domain) -> dict:
    """Stable neurons, largest big-M and reachable ties of one threshold layer."""
    lo, hi = x_bounds
    tau = np.asarray(op.attrs["tau"], np.float64)
    if tau.ndim:
        shape = [1] * lo.ndim
        shape[op.attrs["axis"]] = tau.size
        tau = tau.reshape(shape)
    tau = np.broadcast_to(tau, lo.shape)
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

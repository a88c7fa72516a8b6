"""fold-thresholds: bias, BatchNorm, TensorNorm and other per-channel affine ops + a threshold
become one `Threshold` on the integer pre-activation.

Restrictions, each with its reason:
- The pre-activation must be `Linear`/`Conv` of an integer-domain input and an integer constant
  weight: then it ranges over a finite lattice (step 2 with a fixed parity when the input is
  bipolar, since each term is +-w_j), and tau can be chosen exactly. Real-input layers keep
  their float affine ops: no exact integer tau exists for them.
- The affine chain (Add, Sub, Mul, Div, Neg by per-channel constants; BatchNormalization) is
  evaluated in float32 on every lattice point by the reference evaluator, exactly as the model
  computes it, instead of solving for tau in real arithmetic: a tau found algebraically can land
  one float rounding away from the model's own decision.
- Each channel's decision along the lattice must be monotone with at most one exact tie point;
  otherwise the threshold is left alone and counted under `not_folded`.

What comes out: tau is the tie point when one is reachable (the tie rule is carried unchanged),
else the midpoint between the last lattice point below and the first above (an integer on a
parity lattice, a half-integer on the unit lattice); `flip` where the chain's slope is negative
(gamma < 0); tau = -inf/+inf for constant neurons (gamma = 0 or unreachable tau) and NaN for a
neuron that always ties.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tamec.ir.domains import infer_domains
from tamec.ir.graph import Domain, Graph, Op
from tamec.rewrite import eval_op, single_user
from tamec.passes.base import Pass, register

AFFINE = ("Add", "Sub", "Mul", "Div", "Neg", "BatchNormalization")
MAX_GRID = 1 << 17


def preactivation_lattice(g: Graph, core: Op) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(lo_c, hi_c, step) of the bias-free integer pre-activation of Linear/Conv `core`, per
    output channel, or None when it is not integer-valued."""
    if core.qualname not in ("tamec.Linear", "Conv"):
        return None
    x, w = g.values[core.inputs[0]], g.const(core.inputs[1])
    if w is None or not x.domain.is_integer or not Domain.of_array(w).is_integer:
        return None
    xlo, xhi = x.domain.interval()
    wr = w.reshape(w.shape[0], -1).astype(np.float64)
    lo = np.minimum(wr * xlo, wr * xhi).sum(1)
    hi = np.maximum(wr * xlo, wr * xhi).sum(1)
    pads = core.attrs.get("pads", [0]) if core.op_type == "Conv" else [0]
    auto = core.attrs.get("auto_pad", "NOTSET")
    step = 1
    if x.domain.kind == "bipolar" and not any(pads) and auto in ("NOTSET", "VALID"):
        parity = np.mod(wr.sum(1), 2)
        if np.all(parity == parity[0]):
            step = 2  # every term is +-w_j, so s = sum w_j (mod 2)
    return lo, hi, step


@register
class FoldThresholds(Pass):
    name = "fold-thresholds"
    description = "fold bias/BatchNorm/TensorNorm + sign into Threshold with exact lattice tau"
    requires = frozenset({"weights-binarized"})
    ensures = frozenset({"thresholds-folded"})

    def rewrite(self, g, ctx, module):
        stats = {"folded": 0, "constant_neurons": 0, "flipped": 0, "tie_points": 0, "not_folded": {}}
        infer_domains(g)  # binarize-weights may have made new integer tensors
        for op in g.ops():
            if op.qualname in ("tamec.Linear", "Conv"):
                lat = preactivation_lattice(g, op)
                if lat is not None and not (len(op.inputs) > 2 and op.inputs[2]):
                    lo, hi, step = lat
                    g.values[op.outputs[0]].domain = Domain.integer(lo.min(), hi.max(), step)
        for op in g.ops():
            if op.qualname == "tamec.Threshold" and op.id in g.nx:
                why = self._fold(g, g.op(op.id), stats)
                if why:
                    stats["not_folded"][why] = stats["not_folded"].get(why, 0) + 1
        return stats

    def _fold(self, g: Graph, t: Op, stats: dict) -> str | None:
        chain, cur = [], t.inputs[0]
        while True:
            p = g.producer(cur)
            if p is None or p.domain or p.op_type not in AFFINE or not single_user(g, cur):
                break
            data = [i for i in p.inputs if i and g.const(i) is None]
            if len(data) != 1 or (p.op_type in ("Sub", "Div", "BatchNormalization") and data[0] != p.inputs[0]):
                break
            chain.insert(0, (p, data[0]))
            cur = data[0]
        core = g.producer(cur)
        if core is None:
            return "no Linear/Conv pre-activation"
        lat = preactivation_lattice(g, core)
        if lat is None:
            return "real-valued pre-activation"
        has_bias = len(core.inputs) > 2 and bool(core.inputs[2])
        if has_bias and not single_user(g, cur):
            return "biased pre-activation has other users"
        if not chain and not has_bias and t.attrs["tau"].ndim == 0 and t.attrs["tau"] == 0:
            return None  # already a threshold at 0 on the integer pre-activation
        lo_c, hi_c, step = lat
        C = lo_c.shape[0]
        start = lo_c.min()
        grid = np.arange(start, hi_c.max() + 0.5, step)
        if grid.size * C > MAX_GRID * 64 or grid.size > MAX_GRID:
            return "pre-activation range too large to enumerate"
        rank = len(g.values[cur].shape)
        axis = 1 if core.op_type == "Conv" else rank - 1
        shape = [1] * rank
        shape[0], shape[axis] = grid.size, C
        bshape = [1] * rank
        bshape[axis] = C
        s = np.broadcast_to(grid.reshape((-1,) + (1,) * (rank - 1)), shape).astype(np.float32)
        if has_bias:
            s = s + g.const(core.inputs[2]).reshape(bshape).astype(np.float32)
        for p, data in chain:
            s = eval_op(g, p, {data: s})[0]
        if s.shape != tuple(shape):
            return "affine constant not per-channel"
        tau_t = np.asarray(t.attrs["tau"], np.float64)
        tshape = [1] * rank
        if tau_t.ndim:
            tshape[t.attrs["axis"]] = tau_t.size
        tb = tau_t.reshape(tshape)
        with np.errstate(invalid="ignore"):
            cls = (s > tb).astype(np.int8) - (s < tb).astype(np.int8)
        if cls.shape != tuple(shape):
            return "threshold not per-channel"
        cls = cls.reshape(grid.size, C)
        flip_t = np.broadcast_to(np.asarray(t.attrs["flip"], bool).reshape(-1) if tau_t.ndim else
                                 np.asarray(t.attrs["flip"], bool), (C,))
        tau, flip = np.empty(C), np.empty(C, bool)
        for c in range(C):
            m = (grid >= lo_c[c]) & (grid <= hi_c[c])
            gc, k = grid[m], cls[m, c].astype(int)
            d = np.diff(k)
            if np.all(d >= 0):
                seq, flip[c] = k, flip_t[c]
            elif np.all(d <= 0):
                seq, flip[c] = -k, not flip_t[c]
            else:
                return "decision not monotone in the pre-activation"
            zeros = np.flatnonzero(seq == 0)
            if seq[0] == seq[-1]:  # constant neuron
                tau[c] = {1: -np.inf, -1: np.inf, 0: np.nan}[int(seq[0])]
                flip[c] = flip_t[c] if seq[0] != 0 else False
                stats["constant_neurons"] += 1
            elif len(zeros) == 1:
                tau[c] = gc[zeros[0]]
                stats["tie_points"] += 1
            elif len(zeros) == 0:
                i = np.flatnonzero(seq > 0)[0]
                tau[c] = (gc[i - 1] + gc[i]) / 2
            else:
                return "several tie points"
        stats["flipped"] += int(flip.sum())
        self._rewrite(g, t, chain, core, tau, flip, axis, has_bias, lat)
        stats["folded"] += 1
        return None

    @staticmethod
    def _rewrite(g, t, chain, core, tau, flip, axis, has_bias, lat) -> None:
        lo_c, hi_c, step = lat
        pre = core.outputs[0]
        origin = tuple(dict.fromkeys(t.origin + sum((p.origin for p, _ in chain), ())))
        out = t.outputs[0]
        g.remove_op(t.id, drop_outputs=False)
        for p, _ in reversed(chain):
            g.remove_op(p.id)
        if has_bias:
            origin = origin + core.origin
            new_pre = g.fresh_name(pre + ".int")
            g.add_value(dataclasses.replace(g.values[pre], name=new_pre, bounds=None))
            g.remove_op(core.id)
            g.add_op(Op(core.id, core.op_type, core.inputs[:2], [new_pre], dict(core.attrs), core.domain, core.origin))
            pre = new_pre
        g.values[pre].domain = Domain.integer(lo_c.min(), hi_c.max(), step)
        attrs = dict(t.attrs, tau=tau, flip=flip, axis=axis)
        g.add_op(Op(t.id, "Threshold", [pre], [out], attrs, t.domain, origin))

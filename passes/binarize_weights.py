"""binarize-weights: weight quantizers become binary constants; binary weights are typed as such.

Rewrite rules:
  fold     every op computed from constants only is evaluated, quantizers included (Sign,
           BipolarQuant, 1-bit Quant, Threshold on an initializer), so a weight behind its
           quantizer becomes one constant.
  type     a constant weight of Linear/Conv whose entries are all +-1 gets the `bipolar`
           domain ({-1,0,+1} gets `ternary`).
  scale    a weight equal to alpha_c * B with B in {-1,+1} and one alpha_c > 0 per output
           channel becomes B, followed by a per-channel `Mul` by alpha: the binary product
           stays exact integers and the scale is applied once in float.
"""
from __future__ import annotations

import numpy as np

from tamec.ir.graph import BIPOLAR, Domain, Op
from tamec.rewrite import fold_constants
from tamec.passes.base import Pass, register

WEIGHTED = ("tamec.Linear", "Conv")


def _factor_scale(w: np.ndarray) -> np.ndarray | None:
    """alpha (one per output channel) with w == alpha * sign(w), or None."""
    a = np.abs(w.reshape(w.shape[0], -1))
    alpha = a[:, 0]
    if not np.all(alpha > 0) or not np.all(a == alpha[:, None]):
        return None
    return alpha


@register
class BinarizeWeights(Pass):
    name = "binarize-weights"
    description = "fold weight quantizers; type +-1 weights bipolar; factor per-channel scales"
    requires = frozenset({"canonical"})
    ensures = frozenset({"weights-binarized"})

    def rewrite(self, g, ctx, module):
        stats = {"folded": fold_constants(g, quantizers=True), "binary_weights": 0, "binary_params": 0,
                 "ternary_weights": 0, "scales_factored": 0, "real_weights": 0}
        for op in g.ops():
            if op.qualname not in WEIGHTED or len(op.inputs) < 2:
                continue
            wname = op.inputs[1]
            w = g.const(wname)
            if w is None:
                continue
            dom = Domain.of_array(w)
            if dom.kind not in ("bipolar", "ternary") and w.dtype.kind == "f":
                alpha = _factor_scale(w)
                if alpha is not None and not np.all(alpha == 1):
                    self._split_scale(g, op, w, alpha)
                    stats["scales_factored"] += 1
                    wname, w, dom = op.inputs[1], g.const(op.inputs[1]), BIPOLAR
            if dom.kind == "bipolar":
                stats["binary_weights"] += 1
                stats["binary_params"] += int(w.size)
            elif dom.kind == "ternary":
                stats["ternary_weights"] += 1
            else:
                stats["real_weights"] += 1
            g.values[wname].domain = dom
        return stats

    @staticmethod
    def _split_scale(g, op: Op, w: np.ndarray, alpha: np.ndarray) -> None:
        """op(x, alpha*B, b) -> Mul(op(x, B, b/alpha), alpha), channel axis 1 (or last for Linear)."""
        bname = g.fresh_name(op.inputs[1] + ".sign")
        g.add_const(bname, np.sign(w).astype(w.dtype), BIPOLAR)
        inputs = [op.inputs[0], bname]
        if len(op.inputs) > 2 and op.inputs[2]:
            bias = g.const(op.inputs[2])
            if bias is None:
                raise AssertionError("non-constant bias")
            nb = g.fresh_name(op.inputs[2] + ".unscaled")
            g.add_const(nb, (bias / alpha).astype(bias.dtype))
            inputs.append(nb)
        out = op.outputs[0]
        v = g.values[out]
        mid = g.fresh_name(out + ".unscaled")
        g.add_value(type(v)(mid, v.shape, v.dtype, v.domain))
        shape = (-1,) if op.op_type == "Linear" else (-1,) + (1,) * (len(w.shape) - 2)
        aname = g.fresh_name(op.inputs[1] + ".alpha")
        g.add_const(aname, alpha.astype(w.dtype).reshape(shape))
        g.remove_op(op.id, drop_outputs=False)
        op.inputs, op.outputs = inputs, [mid]
        g.add_op(op)
        g.add_op(Op(g.fresh_name(op.id + ".scale"), "Mul", [mid, aname], [out], {}, "", op.origin), near=op.id)
        g.prune()

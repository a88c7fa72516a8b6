"""canonicalize: one spelling per idiom, so later passes match one pattern each.

Rewrite rules, applied until none fires:
  identity       Identity, inference-mode Dropout and same-type Cast disappear.
  fold           ops whose inputs are all constant become constants (weight quantizers are left
                 for binarize-weights; Shape of a static shape folds, which dissolves
                 Shape->Gather->Unsqueeze->Concat->Reshape flattening when the batch is fixed).
  flatten        Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) -> Flatten(x, axis=1)
                 when the batch dim is symbolic.
  linear         Gemm (transA=0) and MatMul with a static 2-D right operand, including the
                 Transpose+MatMul of Brevitas exports, become `tamec.Linear(x, W[, B])`.
  sign           ONNX Sign -> Threshold(tau=0, tie=0); BipolarQuant(x, s) ->
                 Threshold(tau=0, lo=-s, hi=s, tie=s); 1-bit Quant (zero point 0, power-of-two
                 scale) -> Threshold with the boundary and tie its rounding mode gives;
                 single-threshold MultiThreshold -> Threshold(tie=hi);
                 Where(Greater|Less|GreaterOrEqual|LessOrEqual(x, t), a, b) -> Threshold, also
                 with per-channel a, b (flip) and nested Wheres on the same x and t: tamec's own
                 standard form Where(x > t, hi, Where(x < t, lo, tie)) reads back as its Threshold;
                 Threshold(Cast(x) to float64) -> Threshold(x) (it compares in float64 anyway).
  ste            x + (T(x) - x) -> T(x): the straight-through idiom is recognized, never
                 evaluated (in float32 it is not always +-1).
  compose        T2(T1(x) op c) for scalar thresholds -> one Threshold on x with the levels T2
                 gives T1's three outputs: Larq's Sign(Add(Sign(x), c)) is Threshold(tie=+1).
Never changes a tie rule: every Threshold's `tie` is the value its source op gives at equality.
1-bit Quant variants whose integer range is a single point are degenerate (constant output):
they are reported in the statistics, not silently folded.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tamec.ir.domains import infer_domains
from tamec.ir.graph import Domain, Graph, Op
from tamec.rewrite import bypass, eval_op, fold_constants, single_user
from tamec.ops import QONNX_DOMAIN, TAMEC_DOMAIN
from tamec.passes.base import Pass, register


def scalar(g: Graph, name: str) -> float | None:
    c = g.const(name) if name else None
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


def is_static(g: Graph, name: str, _memo: dict | None = None) -> bool:
    """True when `name` is computed from constants only (a weight behind its quantizer)."""
    memo = {} if _memo is None else _memo
    if name not in memo:
        p = g.producer(name)
        memo[name] = g.values[name].const is not None or (
            p is not None and all(not i or is_static(g, i, memo) for i in p.inputs))
    return memo[name]


def make_threshold(g: Graph, old: Op, x: str, *, tau, lo, hi, tie, axis=1, flip=None,
                   origin=()) -> Op:
    """Replace single-output `old` by a Threshold on `x` writing the same output value."""
    tau = np.asarray(tau, dtype=np.float64)
    flip = np.zeros(tau.shape, bool) if flip is None else np.asarray(flip, bool)
    out = old.outputs[0]
    g.remove_op(old.id, drop_outputs=False)
    v = g.values[out]
    v.domain = Domain.of_array(np.array([lo, hi, tie]))
    op = Op(old.id, "Threshold", [x], [out], {"tau": tau, "flip": flip, "axis": int(axis), "lo": float(lo),
            "hi": float(hi), "tie": float(tie)}, TAMEC_DOMAIN, tuple(dict.fromkeys(old.origin + tuple(origin))))
    return g.add_op(op)


def _channel_axis(t: np.ndarray, rank: int | None) -> tuple[np.ndarray, int] | None:
    """A per-channel constant as (vector, axis) in an input of `rank`, or None."""
    if t.size == 1:
        return t.reshape(()), 1
    if rank is None or t.ndim > rank:
        return None
    shape = (1,) * (rank - t.ndim) + t.shape
    big = [k for k, d in enumerate(shape) if d != 1]
    return (t.reshape(-1), big[0]) if len(big) == 1 else None


_CMP = {"Greater": lambda s: s > 0, "GreaterOrEqual": lambda s: s >= 0,
        "Less": lambda s: s < 0, "LessOrEqual": lambda s: s <= 0}
_EXACT_IN_F64 = frozenset("float32 float16 bfloat16 int8 int16 int32 uint8 uint16 uint32 bool".split())


def _side_value(g: Graph, name: str, x: str, t: np.ndarray, side: int, top: bool = False):
    """The constant `name` holds wherever x is below (side -1), at (0) or above (+1) t; None when
    it is not decided by that alone. Only single-user values are looked through (`top`: the op
    being replaced), so the ops folded away feed nothing else."""
    c = g.const(name)
    if c is not None:
        return c.astype(np.float64)
    op = g.producer(name)
    if op is None or not (top or single_user(g, name)):
        return None
    if op.qualname == "Where":
        cmp = g.producer(op.inputs[0])
        if cmp is None or cmp.domain or cmp.op_type not in _CMP or cmp.inputs[0] != x \
                or not single_user(g, op.inputs[0]) or not _same_const(g.const(cmp.inputs[1]), t):
            return None
        if cmp.op_type.endswith("OrEqual") and np.isnan(t).any():
            return None  # x >= NaN is false, but a Threshold with a NaN tau gives its tie value
        return _side_value(g, op.inputs[1 if _CMP[cmp.op_type](side) else 2], x, t, side)
    if op.qualname == "tamec.Threshold" and op.inputs[0] == x:
        a = op.attrs
        rank = len(g.values[x].shape or ())
        if not rank or not _same_const(_per_axis(a["tau"], a["axis"], rank), t):
            return None
        f = _per_axis(a["flip"], a["axis"], rank)
        if side == 0:
            return np.asarray(a["tie"], np.float64)
        return np.where(f, a["lo"], a["hi"]) if side > 0 else np.where(f, a["hi"], a["lo"])
    return None


def _per_axis(a, axis: int, rank: int) -> np.ndarray:
    """A Threshold's scalar or per-channel attribute shaped to broadcast along `axis`."""
    a = np.asarray(a)
    return a if a.ndim == 0 else a.reshape((-1,) + (1,) * (rank - axis % rank - 1))


def _same_const(a, b) -> bool:
    """Equal constants up to broadcasting (a scalar tau equals a full tensor of it)."""
    if a is None:
        return False
    try:
        a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    except ValueError:
        return False
    return bool(np.array_equal(a, b, equal_nan=True))


def _along(v: np.ndarray, axis: int, rank: int | None) -> np.ndarray | None:
    """A constant that varies at most along `axis` of a rank-`rank` tensor, as a vector."""
    if v.size == 1:
        return v.reshape(-1)
    ca = _channel_axis(v, rank)
    if ca is None or ca[1] != axis % (rank or 1):
        return None
    return ca[0]


class Rules:
    def __init__(self, g: Graph, stats: dict):
        self.g, self.stats = g, stats

    def hit(self, rule: str) -> bool:
        self.stats[rule] = self.stats.get(rule, 0) + 1
        return True

    # identity ---------------------------------------------------------------------------------
    def identity(self, op: Op) -> bool:
        g = self.g
        if op.domain or op.op_type not in ("Identity", "Dropout", "Cast"):
            return False
        if op.op_type == "Dropout" and len(op.outputs) > 1 and op.outputs[1] and g.users(op.outputs[1]):
            return False
        if op.op_type == "Cast" and g.values[op.inputs[0]].dtype != g.values[op.outputs[0]].dtype:
            return False
        return bypass(g, op, op.inputs[0]) and self.hit("identity")

    # flatten ------------------------------------------------------------------------------------
    def flatten(self, op: Op) -> bool:
        g = self.g
        if op.domain or op.op_type != "Reshape" or g.const(op.inputs[1]) is not None:
            return False
        cat = g.producer(op.inputs[1])
        if cat is None or cat.op_type != "Concat" or len(cat.inputs) != 2:
            return False
        rest = g.const(cat.inputs[1])
        if rest is None or rest.reshape(-1).tolist() != [-1]:
            return False
        p = g.producer(cat.inputs[0])
        while p is not None and p.op_type in ("Unsqueeze", "Cast"):
            p = g.producer(p.inputs[0])
        if p is None or p.op_type != "Gather" or scalar(g, p.inputs[1]) != 0 or p.attrs.get("axis", 0) != 0:
            return False
        shape_op = g.producer(p.inputs[0])
        if shape_op is None or shape_op.op_type != "Shape" or shape_op.inputs[0] != op.inputs[0]:
            return False
        out = op.outputs[0]
        g.remove_op(op.id, drop_outputs=False)
        g.add_op(Op(op.id, "Flatten", [op.inputs[0]], [out], {"axis": 1}, "",
                    op.origin + cat.origin + p.origin + shape_op.origin))
        _known_shape(g, out, _flat_shape(g.values[op.inputs[0]].shape))
        return self.hit("flatten")

    # linear -------------------------------------------------------------------------------------
    def _weight(self, op: Op, b: str, transposed: bool) -> str | None:
        """A value holding W as (N, K) given the right operand `b` of x @ b (or b^T if transposed)."""
        g = self.g
        if not is_static(g, b):
            return None
        shape = g.values[b].shape
        if shape is None or len(shape) != 2:
            return None
        if transposed:
            return b
        c = g.const(b)
        if c is not None:
            name = g.fresh_name(b + ".T")
            g.add_const(name, np.ascontiguousarray(c.T))
            return name
        p = g.producer(b)
        if p.op_type == "Transpose" and not p.domain and list(p.attrs.get("perm", [1, 0])) == [1, 0]:
            return p.inputs[0]
        name = g.fresh_name(b + ".T")
        g.add_value(dataclasses.replace(g.values[b], name=name, shape=tuple(reversed(shape)), bounds=None))
        g.add_op(Op(g.fresh_name(op.id + ".T"), "Transpose", [b], [name], {"perm": [1, 0]}, "", op.origin),
                 near=op.id)
        return name

    def linear(self, op: Op) -> bool:
        g = self.g
        if op.domain or op.op_type not in ("Gemm", "MatMul"):
            return False
        x, b = op.inputs[0], op.inputs[1]
        xs = g.values[x].shape
        if xs is None or len(xs) < 2 or is_static(g, x):
            return False
        bias = ""
        if op.op_type == "Gemm":
            a = op.attrs
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or len(xs) != 2:
                return False
            if len(op.inputs) > 2 and op.inputs[2]:
                c = g.const(op.inputs[2])
                n = g.values[b].shape[1 - a.get("transB", 0)] if g.values[b].shape else None
                if c is None or n is None or c.size not in (1, n):
                    return False
                bias = g.fresh_name(op.inputs[2] + ".bias")
                g.add_const(bias, np.broadcast_to(c.reshape(-1) * np.float32(a.get("beta", 1.0)), (n,))
                            .astype(c.dtype).copy())
            w = self._weight(op, b, bool(a.get("transB", 0)))
        else:
            w = self._weight(op, b, False)
        if w is None:
            return False
        out = op.outputs[0]
        g.remove_op(op.id, drop_outputs=False)
        g.add_op(Op(op.id, "Linear", [x, w] + ([bias] if bias else []), [out], {}, TAMEC_DOMAIN, op.origin))
        ws = g.values[w].shape
        _known_shape(g, out, tuple(xs[:-1]) + (ws[0],) if ws is not None else None)
        return self.hit("linear")

    # sign-like ----------------------------------------------------------------------------------
    def sign(self, op: Op) -> bool:
        g = self.g
        if not op.domain and op.op_type == "Sign":
            make_threshold(g, op, op.inputs[0], tau=0.0, lo=-1.0, hi=1.0, tie=0.0)
            return self.hit("sign")
        if op.domain == QONNX_DOMAIN and op.op_type == "BipolarQuant":
            s = scalar(g, op.inputs[1])
            if s is None or not s > 0:
                return False
            make_threshold(g, op, op.inputs[0], tau=0.0, lo=-s, hi=s, tie=s)
            return self.hit("bipolar-quant")
        if op.domain == QONNX_DOMAIN and op.op_type == "Quant":
            return self.quant(op)
        if op.domain == QONNX_DOMAIN and op.op_type == "MultiThreshold":
            return self.multithreshold(op)
        if not op.domain and op.op_type == "Where":
            return self.where(op)
        return False

    def quant(self, op: Op) -> bool:
        g = self.g
        s, z, bw = (scalar(g, i) for i in op.inputs[1:4])
        if bw != 1 or s is None or z is None or is_static(g, op.inputs[0]):
            return False
        signed, narrow = int(op.attrs.get("signed", 1)), int(op.attrs.get("narrow", 0))
        if signed and narrow or not signed and narrow:  # integer range {0}: output is constant
            self.stats.setdefault("degenerate_quant", []).append(op.id)
            return False
        if z != 0 or not s > 0 or np.log2(s) != np.round(np.log2(s)):
            return False  # a non-power-of-two scale makes x/s round: keep the exact Quant
        v = np.arange(-8, 9, dtype=np.float64) * 0.25
        x = (v * s).astype(np.float32).reshape(-1, 1)
        y = eval_op(g, op, {op.inputs[0]: x})[0].reshape(-1).astype(np.float64)
        change = np.flatnonzero(np.diff(y) != 0)
        if len(change) != 1:
            return False
        i = int(change[0])
        k = i if (v[i] * 2).is_integer() else i + 1  # the boundary is the half-integer sample
        make_threshold(g, op, op.inputs[0], tau=v[k] * s, lo=y[0], hi=y[-1], tie=y[k])
        return self.hit("quant-1bit")

    def multithreshold(self, op: Op) -> bool:
        g = self.g
        t = g.const(op.inputs[1])
        if t is None or t.ndim != 2 or t.shape[1] != 1:
            return False
        scale, bias = float(op.attrs.get("out_scale", 1.0)), float(op.attrs.get("out_bias", 0.0))
        layout = op.attrs.get("data_layout", "NCHW")
        rank = len(g.values[op.inputs[0]].shape or ())
        axis = 1 if layout.startswith("NC") or rank == 2 else rank - 1
        tau = t[:, 0] if t.shape[0] > 1 else t.reshape(())
        make_threshold(g, op, op.inputs[0], tau=tau, lo=bias, hi=bias + scale, tie=bias + scale, axis=axis)
        return self.hit("multithreshold")

    def where(self, op: Op) -> bool:
        """Where(cmp(x, t), a, b) whose branches are constants, or Wheres and Thresholds deciding on
        the same x against the same t, is a function of (x < t, x = t, x > t) alone: one Threshold
        when it takes two levels (swapped per channel: flip) and one tie value. That covers the
        Where quantizer and tamec's own standard form of a Threshold (tamec/export/onnx.py)."""
        g = self.g
        cmp = g.producer(op.inputs[0])
        if cmp is None or cmp.domain or cmp.op_type not in _CMP or not single_user(g, op.inputs[0]):
            return False
        x, t = cmp.inputs
        tc = g.const(t)
        if tc is None or is_static(g, x):
            return False
        rank = len(g.values[x].shape or ()) or None
        tau = _channel_axis(tc.astype(np.float64), rank)
        if tau is None:
            return False
        sides = [_side_value(g, op.outputs[0], x, tc, side, top=True) for side in (-1, 0, 1)]
        if any(v is None for v in sides):
            return False
        try:
            below, at, above = (_along(np.broadcast_to(v, np.broadcast_shapes(*(np.shape(s) for s in sides))),
                                       tau[1], rank) for v in sides)
        except ValueError:
            return False
        if below is None or at is None or above is None:
            return False
        n = max(below.size, at.size, above.size, tau[0].size)
        below, at, above = (np.broadcast_to(v, (n,)) for v in (below, at, above))
        lo, hi = float(below[0]), float(above[0])
        flip = (below == hi) & (above == lo) & (lo != hi)
        if not np.all(flip | ((below == lo) & (above == hi))):
            return False
        src = g.producer(x)  # the domain of x before an exact cast (tamec's standard form casts)
        exact = src is not None and src.qualname == "Cast" and g.values[src.inputs[0]].dtype in _EXACT_IN_F64
        xdom = g.values[src.inputs[0] if exact else x].domain
        if np.all(at == at[0]):
            tie = float(at[0])
        elif not np.isnan(tau[0]).any() and not any(xdom.contains(v) for v in np.broadcast_to(tau[0], (n,))):
            tie = lo  # x never equals t: the tie value is never produced (a NaN t always gives it)
        else:
            return False
        tau_v = np.broadcast_to(tau[0], (n,)).copy() if flip.any() and tau[0].ndim == 0 else tau[0]
        make_threshold(g, op, x, tau=tau_v, lo=lo, hi=hi, tie=tie, axis=tau[1],
                       flip=flip if tau_v.ndim else flip.reshape(()), origin=cmp.origin)
        return self.hit("where-quantizer")

    def threshold_cast(self, op: Op) -> bool:
        """Threshold(Cast(x) to float64) -> Threshold(x): the Threshold compares in float64 already,
        and the cast of a float32/16 or small integer x is exact (tamec's standard form casts)."""
        g = self.g
        if op.qualname != "tamec.Threshold":
            return False
        cast = g.producer(op.inputs[0])
        if cast is None or cast.qualname != "Cast" or g.values[op.inputs[0]].dtype != "float64" \
                or g.values[cast.inputs[0]].dtype not in _EXACT_IN_F64:
            return False
        g.set_inputs(op.id, [cast.inputs[0]])
        return self.hit("threshold-cast")

    # straight-through idiom ----------------------------------------------------------------------
    def ste(self, op: Op) -> bool:
        g = self.g
        if op.domain or op.op_type != "Add":
            return False
        for x, d in (op.inputs, op.inputs[::-1]):
            sub = g.producer(d)
            if sub is None or sub.domain or sub.op_type != "Sub" or sub.inputs[1] != x:
                continue
            t = g.producer(sub.inputs[0])
            if t is not None and t.qualname == "tamec.Threshold" and t.inputs[0] == x:
                if bypass(g, op, sub.inputs[0]):
                    return self.hit("ste")
        return False

    # Threshold of (Threshold op c) -----------------------------------------------------------------
    def compose(self, op: Op) -> bool:
        g = self.g
        if op.qualname != "tamec.Threshold" or op.attrs["tau"].ndim:
            return False
        mid, u = None, op.inputs[0]
        p = g.producer(u)
        if p is not None and not p.domain and p.op_type in ("Add", "Sub", "Mul") and single_user(g, u):
            if scalar(g, p.inputs[1]) is None:
                return False
            mid, u = p, p.inputs[0]
            p = g.producer(u)
        if p is None or p.qualname != "tamec.Threshold":
            return False
        t1 = p
        w = np.array([[t1.attrs["lo"]], [t1.attrs["hi"]], [t1.attrs["tie"]]], dtype=np.float32)
        if mid is not None:
            w = eval_op(g, mid, {mid.inputs[0]: w})[0]
        lo, hi, tie = eval_op(g, op, {op.inputs[0]: w.astype(np.float32)})[0].reshape(-1).tolist()
        origin = (mid.origin if mid else ()) + t1.origin
        make_threshold(g, op, t1.inputs[0], tau=t1.attrs["tau"], flip=t1.attrs["flip"], axis=t1.attrs["axis"],
                       lo=lo, hi=hi, tie=tie, origin=origin)
        return self.hit("compose-threshold")


@register
class Canonicalize(Pass):
    name = "canonicalize"
    description = "fold constants, one spelling per idiom: Linear, Threshold, Flatten"
    ensures = frozenset({"canonical"})

    def rewrite(self, g, ctx, module):
        stats: dict = {}
        rules = Rules(g, stats)
        order = (rules.identity, rules.flatten, rules.linear, rules.sign, rules.ste, rules.compose,
                 rules.threshold_cast)
        for _ in range(64):
            changed = fold_constants(g, quantizers=False)
            stats["fold"] = stats.get("fold", 0) + changed
            for op in g.ops():
                if op.id not in g.nx:
                    continue  # removed by an earlier rule this sweep
                op = g.op(op.id)
                for rule in order:
                    if rule(op):
                        changed += 1
                        break
            changed += g.prune()
            if not changed:
                break
        stats["domains_inferred"] = infer_domains(g)
        if "degenerate_quant" in stats:
            stats["degenerate_quant"] = sorted(set(stats["degenerate_quant"]))
        return stats


def _flat_shape(shape) -> tuple | None:
    """Flatten(axis=1)'s output shape: (batch, product of the rest) when the rest is static."""
    if shape is None or len(shape) < 1 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return (shape[0], math.prod(shape[1:]))


def _known_shape(g, name: str, shape: tuple | None) -> None:
    """Give a rewritten op's output the shape ONNX inference could not (a Reshape computed from
    Shape(x), as exporters write Flatten with a symbolic batch), so later stages see its rank
    and static dims; dims inference did know are kept."""
    old = g.values[name].shape
    if shape is None or old is not None and len(old) != len(shape):
        return
    if old is not None:
        shape = tuple(d if isinstance(d, int) else n for d, n in zip(old, shape))
    if shape != old:
        g.values[name] = dataclasses.replace(g.values[name], shape=shape)

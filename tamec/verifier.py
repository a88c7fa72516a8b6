"""The graph-IR verifier, run after every pass: structure, op spec, shapes, domains, bounds.

The op rules are one declarative table, `SPEC` (tinygrad's `uop/spec.py` style): per op qualname
the input and output count, the required attributes, a cheap output-shape function and a domain
rule. Standard ONNX ops missing a count or attribute list take it from the ONNX schema at the
graph's opset; standard ops without a shape function are checked with ONNX's own node shape
inference when their input shapes are known. The first violation raises `VerificationError`
naming the op; the verifier never changes the graph.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tamec.errors import ModelStructureError, VerificationError
from tamec.ir.graph import Domain, Graph, Op, Value
from tamec.ir.text import DTYPES
from tamec.ops import QONNX_DOMAIN, REGISTRY, TAMEC_DOMAIN, attach, hook
from tamec.ops.conv import window

Shape = tuple | None
BIG_CONST = 1_000_000  # above this many elements a constant's domain is checked on a sample
_HINT = "a pass produced an inconsistent graph: this is a bug in tamec (or in a hand-written .tir)"


class _Bad(Exception):
    """A rule failed; `verify_graph` turns it into a VerificationError naming the op."""


def _fail(op: Op, msg: str, hint: str = _HINT):
    raise VerificationError(msg, node=op.id, op=op.qualname, hint=hint)


# -- shape helpers ---------------------------------------------------------------------------------

def _dim_eq(a, b) -> bool:
    """Two dims that may be equal: only two different ints contradict. Symbolic names are hints,
    not proofs of inequality: ONNX shape inference names one batch dim `unk__12` here and
    `unk__13` there."""
    return not (isinstance(a, int) and isinstance(b, int) and a != b)


def _bdim(dims: list):
    """Numpy broadcasting of one axis; symbolic dims are equal only by name."""
    ints = {d for d in dims if isinstance(d, int) and d != 1}
    if len(ints) > 1:
        raise _Bad(f"dims {sorted(ints)} do not broadcast")
    syms = {d for d in dims if isinstance(d, str)}
    if ints:
        return ints.pop()
    if len(syms) == 1 and None not in dims:
        return syms.pop()
    if syms or None in dims:
        return None  # different names (or unknown) may still agree at run time
    return 1


def broadcast(*shapes: Shape) -> Shape:
    """The numpy-broadcast shape of `shapes` (None if any is unknown); raises on a contradiction."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    return tuple(_bdim([s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0])
                 for i in range(rank))


def _prod(dims) -> int | None:
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def threshold_tau_shape(tau_shape: tuple, axis: int, x_shape: Shape) -> tuple:
    """The shape `tau` takes to broadcast against x along `axis`: () for one tau, (C, 1, ..., 1)
    for one per channel. Raises ValueError when tau does not fit x."""
    size = math.prod(tau_shape)
    if size == 1 and len(tau_shape) <= 1:
        return ()
    if len(tau_shape) != 1:
        raise ValueError(f"tau has shape {tuple(tau_shape)}; it must be a scalar or 1-D along axis")
    if x_shape is None:
        raise ValueError("tau is per channel but the rank of x is unknown")
    rank = len(x_shape)
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for x of rank {rank}")
    axis %= rank
    c = x_shape[axis]
    if isinstance(c, int) and c != size:
        raise ValueError(f"tau has {size} entries but x has {c} along axis {axis}")
    return (size,) + (1,) * (rank - axis - 1)


# -- shape rules: (op, input shapes, graph) -> expected output shapes (None = unknown) -------------

def _same(op, s, g):
    return [s[0]] * len(op.outputs)


def _bcast(op, s, g):
    return [broadcast(*[x for x, i in zip(s, op.inputs) if i])]


def _linear(op, s, g):
    x, w = s[0], s[1]
    if w is not None and len(w) != 2:
        raise _Bad(f"W has shape {w}; it must be (N, K)")
    if x is not None and len(x) < 1:
        raise _Bad("x is a scalar; it must have a last axis of size K")
    if x is None or w is None:
        return [None]
    if not _dim_eq(x[-1], w[1]):
        raise _Bad(f"x has K={x[-1]} on its last axis but W {w} has K={w[1]}")
    if len(s) > 2 and op.inputs[2] and s[2] is not None and (len(s[2]) != 1 or not _dim_eq(s[2][0], w[0])):
        raise _Bad(f"B has shape {s[2]}; it must be ({w[0]},)")
    return [x[:-1] + (w[0],)]


def _matmul(op, s, g):
    a, b = s
    if a is None or b is None:
        return [None]
    if not a or not b:
        raise _Bad("MatMul of a scalar")
    a2 = a if len(a) > 1 else (1,) + a
    b2 = b if len(b) > 1 else b + (1,)
    if not _dim_eq(a2[-1], b2[-2]):
        raise _Bad(f"inner dims differ: {a} @ {b}")
    out = broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [out]


def _gemm(op, s, g):
    a, b = s[0], s[1]
    if a is None or b is None:
        return [None]
    if len(a) != 2 or len(b) != 2:
        raise _Bad(f"Gemm needs 2-D A and B, got {a} and {b}")
    m, ka = (a[1], a[0]) if op.attrs.get("transA", 0) else a
    kb, n = (b[1], b[0]) if op.attrs.get("transB", 0) else b
    if not _dim_eq(ka, kb):
        raise _Bad(f"inner dims differ: A {a} and B {b} (transA={op.attrs.get('transA', 0)}, "
                   f"transB={op.attrs.get('transB', 0)})")
    if len(s) > 2 and op.inputs[2] and s[2] is not None and broadcast(s[2], (m, n)) != broadcast((m, n)):
        raise _Bad(f"C {s[2]} does not broadcast to ({m}, {n})")
    return [(m, n)]


def _conv(op, s, g):
    x, w = s[0], s[1]
    if x is None or w is None:
        return [None]
    if len(x) < 3 or len(w) != len(x):
        raise _Bad(f"Conv needs x (N, C, ...) and W of the same rank, got {x} and {w}")
    group = op.attrs.get("group", 1)
    if isinstance(x[1], int) and isinstance(w[1], int) and x[1] != w[1] * group:
        raise _Bad(f"x has {x[1]} channels but W {w} expects {w[1]} x group {group}")
    nsp = len(x) - 2
    k = op.attrs.get("kernel_shape", list(w[2:]))
    strides = op.attrs.get("strides", [1] * nsp)
    dil = op.attrs.get("dilations", [1] * nsp)
    pads = op.attrs.get("pads", [0] * 2 * nsp)
    out = []
    for i in range(nsp):  # per axis, so that a symbolic axis leaves the others known
        d = x[2 + i]
        if not isinstance(d, int) or not isinstance(k[i], int):
            out.append(None)
            continue
        axis = dict(op.attrs, pads=[pads[i], pads[i + nsp]], strides=[strides[i]], dilations=[dil[i]])
        try:
            out.append(window(axis, (d,), [k[i]]).out[0])
        except ValueError as e:
            raise _Bad(f"Conv {e}") from None
    return [(x[0], w[0], *out)]


def _count(dims) -> tuple[int, tuple] | None:
    """Element count of `dims` as (product of the int dims, sorted symbolic dims); None if unknown."""
    if any(d is None for d in dims):
        return None
    return math.prod(d for d in dims if isinstance(d, int)), tuple(sorted(d for d in dims if isinstance(d, str)))


def _reshape(op, s, g):
    x = s[0]
    target = g.const(op.inputs[1]) if len(op.inputs) > 1 else op.attrs.get("shape")  # opset < 5
    if target is None:
        return [None]
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    if sum(t == -1 for t in target) > 1:
        raise _Bad(f"shape {target} has more than one -1")
    if x is None:
        return [None] if -1 in target or 0 in target else [tuple(target)]
    allowzero = op.attrs.get("allowzero", 0)
    out = [x[i] if t == 0 and not allowzero and i < len(x) else t for i, t in enumerate(target)]
    # symbolic dims cancel by name: (N, 4, 3, 3) -> (N, -1) makes -1 = 36
    total, rest = _count(x), _count([d for d in out if d != -1])
    if total is None or rest is None or total[1] != rest[1]:
        return [tuple(None if d == -1 else d for d in out)]
    if -1 in out:
        if rest[0] == 0 or total[0] % rest[0]:
            raise _Bad(f"cannot reshape {x} to {tuple(target)}")
        out = [total[0] // rest[0] if d == -1 else d for d in out]
    elif total[0] != rest[0]:
        raise _Bad(f"cannot reshape {x} ({total[0]} elements) to {tuple(out)} ({rest[0]} elements)")
    return [tuple(out)]


def _flatten(op, s, g):
    x = s[0]
    if x is None:
        return [None]
    axis = op.attrs.get("axis", 1)
    if not -len(x) <= axis <= len(x):
        raise _Bad(f"axis {axis} is out of range for rank {len(x)}")
    axis += len(x) if axis < 0 else 0
    return [(_prod(x[:axis]), _prod(x[axis:]))]


def _transpose(op, s, g):
    x = s[0]
    if x is None:
        return [None]
    perm = list(op.attrs.get("perm", range(len(x) - 1, -1, -1)))
    if sorted(perm) != list(range(len(x))):
        raise _Bad(f"perm {perm} is not a permutation of the {len(x)} axes")
    return [tuple(x[p] for p in perm)]


def _threshold(op, s, g):
    try:
        threshold_tau_shape(np.shape(op.attrs["tau"]), int(op.attrs["axis"]), s[0])
    except ValueError as e:
        raise _Bad(f"tau is not broadcastable to x {s[0]}: {e}") from None
    return [s[0]]


def _batchnorm(op, s, g):
    x = s[0]
    if x is not None and len(x) >= 2:
        for name, p in zip(("scale", "B", "mean", "var"), s[1:5]):
            if p is not None and (len(p) != 1 or not _dim_eq(p[0], x[1])):
                raise _Bad(f"{name} has shape {p}; it must be ({x[1]},)")
    return [x] + [None] * (len(op.outputs) - 1)


# -- extra checks --------------------------------------------------------------------------------

def _finite_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
        and math.isfinite(float(x))


def _threshold_attrs(op: Op, g: Graph) -> None:
    tau, flip = np.asarray(op.attrs["tau"]), np.asarray(op.attrs["flip"])
    if tau.dtype.kind not in "fiu":
        raise _Bad(f"tau must be numeric, got dtype {tau.dtype}")
    if flip.shape != tau.shape:
        raise _Bad(f"flip has shape {flip.shape} but tau has {tau.shape}")
    if flip.dtype != np.bool_:
        raise _Bad(f"flip must be a bool tensor, got dtype {flip.dtype}")
    for k in ("lo", "hi", "tie"):
        if not _finite_number(op.attrs[k]):
            raise _Bad(f"{k}={op.attrs[k]!r} must be a finite number")
    if not isinstance(op.attrs["axis"], (int, np.integer)) or isinstance(op.attrs["axis"], bool):
        raise _Bad(f"axis={op.attrs['axis']!r} must be an int")


def _cast_attrs(op: Op, g: Graph) -> None:
    if op.attrs["to"] not in onnx.TensorProto.DataType.values():
        raise _Bad(f"to={op.attrs['to']!r} is not an ONNX data type")


# -- the spec table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """What one op type must look like. `n_in`/`n_out` are inclusive ranges (None: from the ONNX
    schema; the first n_in[0] inputs are required); `shape` maps input shapes to expected output
    shapes; `ints` says when its output may have an integer domain: 'keep' (data inputs `data`
    pass through, so their domains must fit in the output's), 'arith' (integer when every input
    is), 'int' (always integer), 'real' (never), '?' (not checked)."""

    n_in: tuple[int, int] | None = None
    n_out: tuple[int, int] | None = None
    attrs: tuple[str, ...] | None = None
    shape: Callable | None = None
    extra: Callable | None = None
    ints: str = "?"
    data: tuple[int, ...] | None = (0,)  # 'keep' inputs; None: all


_UNARY_KEEP = "Identity Dropout".split()
_UNARY_ARITH = "Relu Neg Abs".split()
_UNARY_INT = "Sign Floor Ceil Round Not".split()
_UNARY_REAL = ("Tanh Sigmoid Exp Log Sqrt Reciprocal Erf Softsign Softplus LeakyRelu Elu HardSigmoid "
               "Softmax LogSoftmax").split()
_BIN_ARITH = "Add Sub Mul Max Min Sum".split()
_BIN_INT = "Greater Less GreaterOrEqual LessOrEqual Equal And Or".split()
_BIN_REAL = "Div Pow Mean".split()

SPEC: dict[str, Rule] = {
    f"{TAMEC_DOMAIN}.Linear": Rule((2, 3), (1, 1), (), _linear, ints="arith"),
    f"{TAMEC_DOMAIN}.Threshold": Rule((1, 1), (1, 1), ("tau", "flip", "axis", "lo", "hi", "tie"),
                                      _threshold, _threshold_attrs, ints="int"),
    f"{QONNX_DOMAIN}.BipolarQuant": Rule((2, 2), (1, 1), (), _bcast, ints="int"),
    # scaled quantizers: integer or not depending on scale and bias, which the bounds pass knows
    f"{QONNX_DOMAIN}.Quant": Rule((4, 4), (1, 1), (), lambda op, s, g: [broadcast(*s[:3])]),
    f"{QONNX_DOMAIN}.MultiThreshold": Rule((2, 2), (1, 1), (), lambda op, s, g: [s[0]]),
    f"{QONNX_DOMAIN}.Trunc": Rule((5, 6), (1, 1), (), lambda op, s, g: [s[0]]),
    "MatMul": Rule(shape=_matmul, ints="arith"),
    "Gemm": Rule(shape=_gemm, ints="arith"),
    "Conv": Rule(shape=_conv, ints="arith"),
    "Reshape": Rule(shape=_reshape, ints="keep"),
    "Flatten": Rule(shape=_flatten, ints="keep"),
    "Transpose": Rule(shape=_transpose, ints="keep"),
    "BatchNormalization": Rule(shape=_batchnorm, ints="real"),
    "Cast": Rule(shape=_same, extra=_cast_attrs),
    "CastLike": Rule(shape=lambda op, s, g: [s[0]], data=(0,)),
    "Clip": Rule(shape=lambda op, s, g: [s[0]], ints="arith"),
    "Where": Rule(shape=_bcast, ints="keep", data=(1, 2)),
    **{t: Rule(shape=_same, ints="keep") for t in _UNARY_KEEP},
    **{t: Rule(shape=_same, ints="arith") for t in _UNARY_ARITH},
    **{t: Rule(shape=_same, ints="int") for t in _UNARY_INT},
    **{t: Rule(shape=_same, ints="real") for t in _UNARY_REAL},
    **{t: Rule(shape=_bcast, ints="arith") for t in _BIN_ARITH},
    **{t: Rule(shape=_bcast, ints="int") for t in _BIN_INT},
    **{t: Rule(shape=_bcast, ints="real") for t in _BIN_REAL},
    # shapes from ONNX's node inference; only their domain rules are spelled out here
    **{t: Rule(ints="keep") for t in "Squeeze Unsqueeze Expand Gather Slice MaxPool Pad Tile".split()},
    "Concat": Rule(ints="keep", data=None),
    **{t: Rule(ints="int") for t in "Shape Size ArgMax".split()},
    "ReduceSum": Rule(ints="arith"),
    "ReduceMax": Rule(ints="keep"),  # the max of values in a domain stays in it
    **{t: Rule(ints="real") for t in "ReduceMean AveragePool GlobalAveragePool".split()},
}


# The verify stage of the op registry: every op's rule (standard ops without one above are checked
# against their ONNX schema only).
for _q in sorted(REGISTRY):
    attach("verify", [_q], SPEC.get(_q, Rule()), how="rule" if _q in SPEC else "ONNX schema")


@functools.lru_cache(maxsize=None)
def _schema(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def _rule(op: Op, opset: int) -> tuple[Rule, onnx.defs.OpSchema | None]:
    rule = hook(op.qualname, "verify")
    if op.domain:
        if rule is None:
            _fail(op, f"unknown op {op.qualname}", hint="the graph IR only holds tamec, QONNX and standard ops")
        return rule, None
    schema = _schema(op.op_type, opset)
    if schema is None:
        _fail(op, f"{op.op_type} is not an ONNX op at opset {opset}")
    return rule or Rule(), schema


# -- checks -----------------------------------------------------------------------------------------

def _check_structure(g: Graph) -> list[Op]:
    try:
        order = g.ops()
    except ModelStructureError as e:
        raise VerificationError(e.message, node=e.node, hint=e.hint) from None
    produced: dict[str, str] = {}
    for op in order:
        for o in op.outputs:
            if not o or o not in g.values:
                _fail(op, f"output %{o} has no value")
            if o in produced:
                _fail(op, f"value %{o} is also produced by op {produced[o]!r}")
            produced[o] = op.id
            if g._producer.get(o) != op.id:
                _fail(op, f"producer map says %{o} comes from {g._producer.get(o)!r}")
    sources = set(g.inputs) | {n for n, v in g.values.items() if v.const is not None}
    for op in order:
        for i in op.inputs:
            if not i:
                continue
            if i not in g.values:
                _fail(op, f"input %{i} is never defined")
            if i not in produced and i not in sources:
                _fail(op, f"input %{i} is not produced by any op, not a constant and not a graph input")
            if op.id not in g._users.get(i, ()):
                _fail(op, f"the use list of %{i} does not list this op")
            if i in produced and not g.nx.has_edge(produced[i], op.id):
                _fail(op, f"no dependency edge from {produced[i]!r} (producer of %{i})")
    for name, users in g._users.items():
        for u in users:
            if u not in g.nx or name not in g.op(u).inputs:
                raise VerificationError(f"value %{name} lists consumer {u!r}, which does not read it",
                                        node=u, hint=_HINT)
    for name in g.inputs:
        if name not in g.values:
            raise VerificationError(f"graph input %{name} has no value", hint=_HINT)
        if name in produced:
            op = g.op(produced[name])
            _fail(op, f"graph input %{name} is also produced by this op")
    for name in g.outputs:
        if name not in g.values or (name not in produced and name not in sources):
            raise VerificationError(f"graph output %{name} is not produced by any op, not a constant "
                                    "and not a graph input", hint=_HINT)
    return order


def _check_counts(op: Op, rule: Rule, schema) -> None:
    n_in = rule.n_in or (schema.min_input, schema.max_input)
    n_out = rule.n_out or (schema.min_output, schema.max_output)
    if not n_in[0] <= len(op.inputs) <= n_in[1]:
        _fail(op, f"has {len(op.inputs)} inputs, expected {n_in[0]}..{n_in[1]}")
    if not n_out[0] <= len(op.outputs) <= n_out[1]:
        _fail(op, f"has {len(op.outputs)} outputs, expected {n_out[0]}..{n_out[1]}")
    missing = [k for k, i in enumerate(op.inputs[:n_in[0]]) if not i]
    if missing:
        _fail(op, f"required input #{missing[0]} is empty")
    required = rule.attrs if rule.attrs is not None else tuple(
        k for k, a in (schema.attributes.items() if schema else ()) if a.required)
    absent = [k for k in required if k not in op.attrs]
    if absent:
        _fail(op, f"missing required attribute(s) {', '.join(absent)}")


def _elem_type(dtype: str) -> int | None:
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        return None


def _onnx_shapes(op: Op, g: Graph, schema, shapes: list[Shape]) -> list[Shape] | None:
    """Output shapes from ONNX's own node inference; None when inputs are not fully known."""
    types, data = {}, {}
    for name, s in zip(op.inputs, shapes):
        if not name:
            continue
        v = g.values[name]
        et = _elem_type(v.dtype)
        if s is None or et is None:
            return None
        types[name] = helper.make_tensor_type_proto(et, list(s))
        if v.const is not None and v.const.size <= 4096:
            data[name] = numpy_helper.from_array(v.const, name)
    attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in op.attrs.items()}
    node = helper.make_node(op.op_type, op.inputs, op.outputs, **attrs)
    try:
        out = onnx.shape_inference.infer_node_outputs(schema, node, types, input_data=data)
    except onnx.shape_inference.InferenceError as e:
        raise _Bad(f"ONNX shape inference rejects it: {str(e).strip().splitlines()[-1]}") from None
    res = []
    for o in op.outputs:
        t = out.get(o)
        if t is None or not t.tensor_type.HasField("shape"):
            res.append(None)
            continue
        res.append(tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None
                         for d in t.tensor_type.shape.dim))
    return res


def _check_shapes(op: Op, g: Graph, rule: Rule, schema) -> None:
    shapes = [g.values[i].shape if i else None for i in op.inputs]
    if rule.shape is not None:
        expected = rule.shape(op, shapes, g)
    elif schema is not None:
        expected = _onnx_shapes(op, g, schema, shapes)
    else:
        return
    for o, e in zip(op.outputs, expected or ()):
        got = g.values[o].shape
        if e is None or got is None:
            continue
        if len(e) != len(got) or not all(_dim_eq(a, b) for a, b in zip(e, got)):
            raise _Bad(f"output %{o} is declared {_fmt(got)} but its inputs make it {_fmt(e)}")


def _fmt(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _subdomain(a: Domain, b: Domain) -> bool:
    """Every element of `a` lies in `b` (without listing a wide integer range)."""
    if b.kind == "real":
        return True
    if a.kind == "real":
        return False
    if a.kind == "int" and b.kind == "int":
        return a.lo >= b.lo and a.hi <= b.hi and (a.lo - b.lo) % b.step == 0 and \
            (a.step % b.step == 0 or a.lo == a.hi)
    if a.kind == "int" and (a.hi - a.lo) / a.step >= 3:
        return False  # more than 3 elements never fit a named domain
    return b.contains(a.finite_values())


def _members(d: Domain, a: np.ndarray) -> np.ndarray:
    """Elementwise `a in d`, vectorized (Domain.contains only answers for the whole array)."""
    a = np.asarray(a, dtype=np.float64)
    if d.kind == "real":
        return np.ones(a.shape, bool)
    if d.kind == "int":
        k = (a - d.lo) / d.step
        return (a >= d.lo) & (a <= d.hi) & (k == np.round(k))
    return np.isin(a, d.finite_values())


def _domain_of(g: Graph, name: str) -> Domain:
    v = g.values[name]
    return Domain.of_array(v.const) if v.const is not None and v.domain.kind == "real" else v.domain


def _check_op_domain(op: Op, g: Graph, rule: Rule) -> None:
    outs = [g.values[o] for o in op.outputs]
    if not outs or outs[0].domain.kind == "real":
        return
    out = outs[0]
    ints = rule.ints
    if op.qualname == "Cast":
        ints = "keep" if np.issubdtype(helper.tensor_dtype_to_np_dtype(op.attrs["to"]), np.floating) else "int"
    if op.qualname == "CastLike":  # the target type is the second input's
        ints = "keep" if "float" in g.values[op.inputs[1]].dtype else "int"
    ins = [i for i in op.inputs if i]
    if ints == "real":
        raise _Bad(f"output %{out.name} is declared {out.domain} but {op.op_type} computes real values")
    if ints == "arith":
        real = [i for i in ins if _domain_of(g, i).kind == "real"]
        if real:
            raise _Bad(f"output %{out.name} is declared {out.domain} but input %{real[0]} is real")
    if ints == "keep":
        data = ins if rule.data is None else [op.inputs[k] for k in rule.data if k < len(op.inputs)]
        for i in data:
            if i and not _subdomain(_domain_of(g, i), out.domain):
                raise _Bad(f"output %{out.name} is declared {out.domain} but input %{i} "
                           f"({_domain_of(g, i)}) passes through")
    if op.qualname == f"{TAMEC_DOMAIN}.Threshold":
        values = {float(op.attrs["lo"]), float(op.attrs["hi"])}
        tau = np.asarray(op.attrs["tau"], dtype=np.float64)
        xdom = _domain_of(g, op.inputs[0])
        if np.isnan(tau).any() or _members(xdom, tau).any():
            values.add(float(op.attrs["tie"]))  # some x can equal its tau: the tie value is reachable
        if not out.domain.contains(sorted(values)):
            raise _Bad(f"output %{out.name} is declared {out.domain} but the threshold yields "
                       f"{sorted(values)}")
    if op.qualname == "Sign":
        values = [-1.0, 1.0] + ([0.0] if _members(_domain_of(g, op.inputs[0]), 0.0) else [])
        if not out.domain.contains(values):
            raise _Bad(f"output %{out.name} is declared {out.domain} but Sign yields {values}")
    if op.qualname == f"{QONNX_DOMAIN}.BipolarQuant" and g.const(op.inputs[1]) is not None:
        s = np.asarray(g.const(op.inputs[1]), dtype=np.float64)
        if not out.domain.contains(np.concatenate([s.ravel(), -s.ravel()])):
            raise _Bad(f"output %{out.name} is declared {out.domain} but the scale makes it +-{np.unique(s)}")


def _const_in_domain(v: Value) -> bool:
    d = v.domain
    if d.kind == "real" or v.const.size == 0:
        return True
    a = v.const.reshape(-1)
    if a.size > BIG_CONST:
        # a full membership test costs a sort; the range check is one pass, the lattice a sample
        lo, hi = d.interval()
        if not (np.isfinite(a).all() and a.min() >= lo and a.max() <= hi):
            return False
        a = a[:: a.size // 100_000 + 1]
    return d.contains(a)


def _check_values(g: Graph, order: list[Op]) -> None:
    first_user: dict[str, Op] = {}
    for op in order:
        for i in op.inputs:
            first_user.setdefault(i, op)
    for name, v in g.values.items():
        op = g.producer(name) or first_user.get(name)
        where = {"node": op.id, "op": op.qualname} if op else {}
        if v.dtype not in DTYPES:
            raise VerificationError(f"value %{name} has unknown dtype {v.dtype!r}", hint=_HINT, **where)
        if v.const is not None and not _const_in_domain(v):
            raise VerificationError(f"constant %{name} holds values outside its declared domain {v.domain}",
                                    hint=_HINT, **where)
        if v.bounds is not None:
            msg = _bounds_problem(v)
            if msg:
                raise VerificationError(f"value %{name}: {msg}", hint=_HINT, **where)


def _bounds_problem(v: Value) -> str | None:
    lo, hi = (np.asarray(b, dtype=np.float64) for b in v.bounds)
    if np.isnan(lo).any() or np.isnan(hi).any():
        return "bounds contain NaN"
    target = tuple(v.shape[1:]) if v.shape else ()
    for name, b in (("lo", lo), ("hi", hi)):
        if b.ndim > len(target) or any(
                isinstance(t, int) and d not in (1, t) for d, t in zip(b.shape[::-1], target[::-1])):
            return f"bounds {name} of shape {b.shape} do not broadcast to {_fmt(target)} (shape without batch)"
    bad = lo > hi
    if bad.any():
        k = np.unravel_index(np.argmax(bad), bad.shape)
        return f"bounds lo > hi at {tuple(int(i) for i in k)}"
    dlo, dhi = v.domain.interval()
    if (lo < dlo).any() or (hi > dhi).any():
        return f"bounds [{lo.min()}..{hi.max()}] leave the domain {v.domain}"
    return None


def verify_graph(g: Graph) -> None:
    """Check every graph-IR invariant; raise VerificationError naming the first op that breaks one."""
    order = _check_structure(g)
    opset = g.opset.get("", onnx.defs.onnx_opset_version())
    for op in order:
        rule, schema = _rule(op, opset)
        _check_counts(op, rule, schema)
        try:
            if rule.extra is not None:
                rule.extra(op, g)
            _check_shapes(op, g, rule, schema)
            _check_op_domain(op, g, rule)
        except _Bad as e:
            _fail(op, str(e))
    _check_values(g, order)

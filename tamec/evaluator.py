"""Reference evaluator: runs a graph IR at any pipeline stage in numpy; the oracle every pass is
checked against.

Standard ops run through `onnx.reference` at the graph's opset, each as a one-node model built
once. Ops where that reference is wrong for an opset or too slow have their own numpy kernels
here:

- `BatchNormalization`: onnx.reference computes batch statistics whenever `momentum` is set
  (opset 9, as Brevitas exports it) and maps opset 7 to the `is_test`-era class; tamec evaluates
  inference mode, with ONNX Runtime's formula (`x * (scale / sqrt(var + eps)) + (bias - mean * ...)`).
- `Softmax`, `LogSoftmax`: onnx.reference has one class for all opsets, so before 13 it neither
  coerces to 2-D nor defaults `axis` to 1.
- `Squeeze`, `Unsqueeze` before 13: onnx.reference applies attribute axes one at a time, which
  is wrong for unsorted axes (`Unsqueeze(axes=[2, 0])`).
- `Conv`, `MatMul`, `Gemm`, `MaxPool`, `AveragePool`: speed (the reference pools loop in Python),
  and the exact integer path below.

Exactness: `Conv`, `MatMul`, `Gemm` and `tamec.Linear` on float tensors whose operands both have
integer domains compute the exact integer result, then cast it to the output dtype. The product
runs in float32 BLAS when `K * max|x| * max|w| < 2**24`, in float64 BLAS below `2**53` (every
partial sum is then an integer the type holds exactly, whatever the summation order), else in
int64. The operands are checked against their domains on the way in, so a pass that declares a
wrong domain is caught here, not hidden by truncation.

QONNX ops (`BipolarQuant`, `Quant`, `MultiThreshold`, `Trunc`) are numpy ports of
`qonnx.custom_op.general`, operation for operation, so they round the same way; tamec never
imports qonnx.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from tamec.errors import InputError, ModelStructureError, TamecError, UnsupportedModelError
from tamec.ir.graph import Graph, Op, Value
from tamec.ir.window import Window, offsets, pad_spatial, window
from tamec.ops import QONNX_DOMAIN, QONNX_DOMAINS, TAMEC_DOMAIN, is_supported, normalize_domain, supported_summary

Array = np.ndarray
Kernel = Callable[[list], list]  # inputs (None for an absent optional one) -> outputs
_EXACT_F32, _EXACT_F64 = 2.0 ** 24, 2.0 ** 53


@dataclass
class _Step:
    op: Op
    kernel: Kernel
    free: tuple[str, ...]  # values whose last reader is this op


class Evaluator:
    """Executes a `Graph` in numpy; kernels are prepared once in the constructor."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.opset = int(graph.opset.get("", onnx.defs.onnx_opset_version()))
        self._consts = {n: v.const for n, v in graph.values.items() if v.const is not None}
        ops = graph.ops()
        known = set(self._consts) | set(graph.inputs)
        last_use: dict[str, int] = {}
        for k, op in enumerate(ops):
            for i in op.inputs:
                if i and i not in known:
                    raise ModelStructureError(f"input {i!r} is neither a graph input, a constant "
                                              "nor produced by an earlier op", node=op.id, op=op.qualname)
                if i:
                    last_use[i] = k
            known.update(o for o in op.outputs if o)
        for o in graph.outputs:
            if o not in known:
                raise ModelStructureError(f"graph output {o!r} is never computed",
                                          hint="every output must be an input, a constant or an op result")
        keep = set(graph.outputs) | set(self._consts) | set(graph.inputs)
        frees: dict[int, list[str]] = {}
        for name, k in last_use.items():
            if name not in keep:
                frees.setdefault(k, []).append(name)
        self._steps = [_Step(op, self._prepare(op), tuple(frees.get(k, ()))) for k, op in enumerate(ops)]

    # -- preparation ----------------------------------------------------------------------------
    def _prepare(self, op: Op) -> Kernel:
        domain = normalize_domain(op.domain)
        if not is_supported(domain, op.op_type):
            raise UnsupportedModelError(
                f"op type {op.op_type!r} in domain {op.domain!r} has no evaluator kernel",
                node=op.id, op=op.qualname, hint=f"supported: {supported_summary()}")
        table = {"": _STANDARD, TAMEC_DOMAIN: _TAMEC, QONNX_DOMAIN: _QONNX}[domain]
        try:
            make = table.get(op.op_type)
            kernel = make(self, op) if make else None
            return kernel or _reference_kernel(self, op)
        except TamecError as e:
            raise e.at(node=op.id, op=op.qualname)
        except Exception as e:
            raise ModelStructureError(f"cannot prepare op: {type(e).__name__}: {e}", node=op.id,
                                      op=op.qualname, hint=_origin_hint(op)) from e

    def value(self, name: str) -> Value:
        """The graph's Value called `name`."""
        return self.graph.value(name)

    def fixed(self, name: str) -> Array | None:
        """A constant's data when no feed can override it (initializers listed as inputs can)."""
        v = self.graph.values.get(name)
        return None if v is None or name in self.graph.inputs else v.const

    def out_dtype(self, op: Op, k: int = 0, default=np.float32) -> np.dtype:
        """The declared numpy dtype of an op's k-th output (`default` if it has none usable)."""
        try:
            return np.dtype(self.graph.values[op.outputs[k]].dtype)
        except (KeyError, TypeError, IndexError):
            return np.dtype(default)

    # -- execution ------------------------------------------------------------------------------
    def run(self, feeds: dict[str, Array], *, keep_all: bool = False) -> dict[str, Array]:
        """Graph outputs by name; with `keep_all`, every value (inputs, constants, op results)."""
        env: dict[str, Array] = dict(self._consts)
        env.update(self._check_feeds(feeds))
        with np.errstate(all="ignore"):  # ONNX arithmetic is IEEE: inf and nan are results
            for step in self._steps:
                op = step.op
                args = [env[i] if i else None for i in op.inputs]
                try:
                    outs = step.kernel(args)
                except TamecError as e:
                    raise e.at(node=op.id, op=op.qualname)
                except Exception as e:
                    raise ModelStructureError(
                        f"op failed during evaluation: {type(e).__name__}: {e}", node=op.id,
                        op=op.qualname, hint=_origin_hint(op)) from e
                for name, val in zip(op.outputs, outs):
                    if name:
                        env[name] = np.asarray(val)
                if not keep_all:
                    for name in step.free:
                        env.pop(name, None)
        if keep_all:
            return env
        return {o: env[o] for o in self.graph.outputs}

    def _check_feeds(self, feeds: dict[str, Array]) -> dict[str, Array]:
        inputs = self.graph.inputs
        unknown = [n for n in feeds if n not in inputs]
        if unknown:
            raise InputError(f"feed {unknown[0]!r} is not a graph input",
                             hint=f"graph inputs are {', '.join(map(repr, inputs))}")
        out = {}
        for name in inputs:
            v = self.graph.values[name]
            if name not in feeds:
                if v.const is None:
                    raise InputError(f"missing input {name!r}", hint="feed every graph input")
                continue  # an initializer listed as input: its value is the default
            a = np.asarray(feeds[name])
            if _np_dtype(v.dtype) not in (None, a.dtype):
                raise InputError(f"input {name!r} has dtype {a.dtype}, the graph expects {v.dtype}",
                                 hint=f"cast it with .astype(np.{v.dtype})")
            if v.shape is not None and (a.ndim != len(v.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(v.shape, a.shape))):
                raise InputError(f"input {name!r} has shape {a.shape}, the graph expects "
                                 f"{tuple(v.shape)}", hint="symbolic dims may take any size")
            out[name] = a
        return out


def evaluate(graph: Graph, feeds: dict[str, Array], keep_all: bool = False) -> dict[str, Array]:
    """Build an `Evaluator` for `graph` and run it once."""
    return Evaluator(graph).run(feeds, keep_all=keep_all)


def _np_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:
        return None


def _origin_hint(op: Op) -> str:
    src = ", ".join(op.origin) if op.origin else "none recorded"
    return f"ONNX node(s): {src}; check the shapes and attributes the model gives this op"


# ------------------------------------------------------------------------------------------------
# onnx.reference delegation
# ------------------------------------------------------------------------------------------------
_ATTR_CAST = {AttributeProto.FLOAT: float, AttributeProto.INT: int, AttributeProto.STRING: str,
              AttributeProto.FLOATS: lambda v: [float(x) for x in v],
              AttributeProto.INTS: lambda v: [int(x) for x in v],
              AttributeProto.STRINGS: lambda v: [str(x) for x in v]}


def _onnx_attrs(op: Op, opset: int) -> list[AttributeProto]:
    """The op's IR attributes as AttributeProtos, typed by the op's schema at `opset`."""
    try:
        schema_attrs = onnx.defs.get_schema(op.op_type, opset, "").attributes
    except onnx.defs.SchemaError:
        schema_attrs = {}
    protos = []
    for name, val in op.attrs.items():
        if isinstance(val, np.ndarray):
            protos.append(helper.make_attribute(name, numpy_helper.from_array(val)))
            continue
        kind = schema_attrs[name].type if name in schema_attrs else None
        if kind in _ATTR_CAST:
            protos.append(helper.make_attribute(name, _ATTR_CAST[kind](val), attr_type=kind))
        else:
            protos.append(helper.make_attribute(name, val))
    return protos


def _elem_type(dtype: str) -> int:
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        return onnx.TensorProto.UNDEFINED


def _reference_kernel(ev: Evaluator, op: Op) -> Kernel:
    """Run `op` as a one-node model through onnx.reference; constant inputs become initializers."""
    from onnx.reference import ReferenceEvaluator  # imported lazily: it loads every op class

    ins = [f"i{k}" if n else "" for k, n in enumerate(op.inputs)]
    outs = [f"o{k}" if n else "" for k, n in enumerate(op.outputs)]
    node = helper.make_node(op.op_type, ins, outs, name=op.id)
    node.attribute.extend(_onnx_attrs(op, ev.opset))
    inits, graph_inputs, fed = [], [], []
    for k, name in enumerate(op.inputs):
        if not name:
            continue
        v, data = ev.value(name), ev.fixed(name)
        if data is not None:
            inits.append(numpy_helper.from_array(np.asarray(data), ins[k]))
        else:
            graph_inputs.append(helper.make_tensor_value_info(ins[k], _elem_type(v.dtype), None))
            fed.append(k)
    graph_outputs = [helper.make_tensor_value_info(o, _elem_type(ev.value(n).dtype), None)
                     for o, n in zip(outs, op.outputs) if n]
    model = helper.make_model(helper.make_graph([node], op.id, graph_inputs, graph_outputs, inits),
                              opset_imports=[helper.make_opsetid("", ev.opset)])
    sess = ReferenceEvaluator(model)
    positions = [k for k, n in enumerate(op.outputs) if n]

    def kernel(args):
        res = sess.run(None, {ins[k]: args[k] for k in fed})
        outs_full: list = [None] * len(op.outputs)
        for k, r in zip(positions, res):
            outs_full[k] = np.asarray(r)
        return outs_full

    return kernel


# ------------------------------------------------------------------------------------------------
# Integer-exact products
# ------------------------------------------------------------------------------------------------
def _exact_operands(ev: Evaluator, op: Op, a_idx: int, b_idx: int) -> tuple[float, float] | None:
    """max|a|, max|b| from the two operands' domains when both are integer on a float op, else None."""
    va, vb = ev.value(op.inputs[a_idx]), ev.value(op.inputs[b_idx])
    if not (va.domain.is_integer and vb.domain.is_integer):
        return None
    if np.dtype(va.dtype).kind != "f" or np.dtype(vb.dtype).kind != "f":
        return None  # integer tensors: numpy already computes in their own integer dtype
    ma = max(abs(x) for x in va.domain.interval())
    mb = max(abs(x) for x in vb.domain.interval())
    return ma, mb


def _check_domain(a: Array, v: Value) -> None:
    """Raise if `a` is not integral and inside `v`'s domain interval (a wrongly declared domain)."""
    if a.size == 0:
        return
    lo, hi = v.domain.interval()
    ok = bool(np.all(np.rint(a) == a)) and float(a.min()) >= lo and float(a.max()) <= hi
    if not ok:
        bad = a[(np.rint(a) != a) | (a < lo) | (a > hi)].ravel()[:3]
        raise ModelStructureError(
            f"value {v.name!r} is declared {v.domain} but holds {bad.tolist()}",
            hint="a pass declared a domain its values do not have")


def _exact_dtype(k: int, ma: float, mb: float) -> np.dtype:
    """The narrowest BLAS dtype in which every partial sum of K products is an integer it holds
    exactly (so any summation order is exact), else int64."""
    bound = k * ma * mb
    if bound < _EXACT_F32:
        return np.dtype(np.float32)
    return np.dtype(np.float64) if bound < _EXACT_F64 else np.dtype(np.int64)


def _matmul_exact(a: Array, b: Array, ma: float, mb: float) -> Array:
    """a @ b computed exactly (operands are integer-valued floats); float32, float64 or int64."""
    k = a.shape[-1]
    dt = _exact_dtype(k, ma, mb)
    return np.matmul(a.astype(dt), b.astype(dt))


def _add_exact(p: Array, c: Array) -> Array:
    """p + c for an integral bias c, kept exact: float32 products widen to float64 first."""
    if p.dtype == np.float32:
        p = p.astype(np.float64)
    return p + c.astype(p.dtype)


def _k_matmul(ev: Evaluator, op: Op) -> Kernel:
    exact = _exact_operands(ev, op, 0, 1)
    out_dt = ev.out_dtype(op)
    va, vb = ev.value(op.inputs[0]), ev.value(op.inputs[1])
    if exact is None:
        return lambda args: [np.matmul(args[0], args[1])]
    fb = ev.fixed(vb.name)
    if fb is not None:
        _check_domain(fb, vb)

    def kernel(args):
        a, b = args
        _check_domain(a, va)
        if fb is None:
            _check_domain(b, vb)
        return [_matmul_exact(a, b, *exact).astype(out_dt)]

    return kernel


def _k_gemm(ev: Evaluator, op: Op) -> Kernel:
    ta, tb = int(op.attrs.get("transA", 0)), int(op.attrs.get("transB", 0))
    alpha, beta = float(op.attrs.get("alpha", 1.0)), float(op.attrs.get("beta", 1.0))
    exact = _exact_operands(ev, op, 0, 1)
    out_dt = ev.out_dtype(op)
    va, vb = ev.value(op.inputs[0]), ev.value(op.inputs[1])
    has_c = len(op.inputs) > 2 and op.inputs[2] != ""
    c_int = has_c and ev.value(op.inputs[2]).domain.is_integer
    fb = ev.fixed(vb.name)
    if exact is not None and fb is not None:
        _check_domain(fb, vb)

    def kernel(args):
        a, b = args[0], args[1]
        a, b = (a.T if ta else a), (b.T if tb else b)
        c = args[2] if has_c else None
        if exact is None:
            y = np.matmul(a, b)
            if alpha != 1.0:
                y = y * y.dtype.type(alpha)
            if c is not None:
                y = y + (c if beta == 1.0 else c * c.dtype.type(beta))
            return [y.astype(a.dtype, copy=False)]
        _check_domain(a, va)
        if fb is None:
            _check_domain(b, vb)
        p = _matmul_exact(a, b, *exact)
        if c is not None and c_int and alpha == 1.0 and beta == 1.0:
            return [_add_exact(p, c).astype(out_dt)]  # bias joins the exact sum
        y = p.astype(out_dt)
        if alpha != 1.0:
            y = y * out_dt.type(alpha)
        if c is not None:
            y = y + (c if beta == 1.0 else c * c.dtype.type(beta)).astype(out_dt)
        return [y]

    return kernel


def _k_linear(ev: Evaluator, op: Op) -> Kernel:
    """tamec.Linear(x, W[, B]): y = x @ W^T + B; the exact integer product on integer domains."""
    vx, vw = ev.value(op.inputs[0]), ev.value(op.inputs[1])
    vb = ev.value(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else None
    out_dt = ev.out_dtype(op)
    exact = _exact_operands(ev, op, 0, 1)
    fw = ev.fixed(vw.name)
    wt = None if fw is None else np.ascontiguousarray(fw.T)
    if exact is not None and fw is not None:
        _check_domain(fw, vw)
    b_int = vb is not None and vb.domain.is_integer

    def kernel(args):
        x, w = args[0], args[1]
        t = wt if wt is not None else w.T
        b = args[2] if vb is not None else None
        if exact is None:
            y = np.matmul(x, t)
            if b is not None:
                y = y + b
            return [y.astype(out_dt, copy=False)]
        _check_domain(x, vx)
        if wt is None:
            _check_domain(w, vw)
        p = _matmul_exact(x, t, *exact)
        if b is not None and b_int:
            return [_add_exact(p, b).astype(out_dt)]
        y = p.astype(out_dt)
        return [y if b is None else y + b.astype(out_dt)]

    return kernel


# ------------------------------------------------------------------------------------------------
# Convolution and pooling: one windowing scheme, a strided slice per kernel offset
# ------------------------------------------------------------------------------------------------
# the windowing lives in tamec/ir/window.py, shared with bounds, lowering, runtime and verifier;
# the kernels below keep their short private names for it
_Window, _window, _pad_spatial, _offsets = Window, window, pad_spatial, offsets


def _k_conv(ev: Evaluator, op: Op) -> Kernel:
    group = int(op.attrs.get("group", 1))
    exact = _exact_operands(ev, op, 0, 1)
    out_dt = ev.out_dtype(op)
    vx, vw = ev.value(op.inputs[0]), ev.value(op.inputs[1])
    has_b = len(op.inputs) > 2 and op.inputs[2] != ""
    b_int = has_b and ev.value(op.inputs[2]).domain.is_integer
    fw = ev.fixed(vw.name)
    if exact is not None and fw is not None:
        _check_domain(fw, vw)

    def kernel(args):
        x, wt = args[0], args[1]
        b = args[2] if has_b else None
        kshape = list(op.attrs.get("kernel_shape") or wt.shape[2:])
        n, c = x.shape[:2]
        m, cg = wt.shape[:2]
        if c != cg * group or m % group:
            raise ValueError(f"input has {c} channels, weight {wt.shape} with group={group} needs {cg * group}")
        win = _window(op.attrs, x.shape[2:], kshape)
        if exact is not None:
            _check_domain(x, vx)
            if fw is None:
                _check_domain(wt, vw)
            dt = _exact_dtype(cg * math.prod(kshape), *exact)
        else:
            dt = np.result_type(x, wt)
        # channels first, so each offset's slice reshapes to one (G, Cg, N*P) operand
        xp = _pad_spatial(x.astype(dt, copy=False).swapaxes(0, 1), win, 0)
        wg = wt.astype(dt, copy=False).reshape(group, m // group, cg, *kshape)
        p = math.prod(win.out)
        acc = None
        for kidx, xs in _offsets(xp, win):
            term = np.matmul(wg[(...,) + kidx], xs.reshape(group, cg, n * p))
            acc = term if acc is None else np.add(acc, term, out=acc)
        y = acc.reshape(m, n, *win.out).swapaxes(0, 1)
        bshape = (1, m) + (1,) * len(win.out)
        if exact is not None and b is not None and b_int:
            return [np.ascontiguousarray(_add_exact(y, b.reshape(bshape)).astype(out_dt))]
        y = y.astype(out_dt if exact is not None else dt)
        if b is not None:
            y = y + b.reshape(bshape).astype(y.dtype, copy=False)
        return [np.ascontiguousarray(y)]

    return kernel


def _k_maxpool(ev: Evaluator, op: Op) -> Kernel | None:
    if len(op.outputs) > 1 and op.outputs[1]:
        return None  # Indices output: the (slow) reference implements storage_order
    ceil = bool(op.attrs.get("ceil_mode", 0))

    def kernel(args):
        x = args[0]
        win = _window(op.attrs, x.shape[2:], list(op.attrs["kernel_shape"]), ceil)
        low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        y = None
        for _, xs in _offsets(_pad_spatial(x, win, low), win):
            y = xs.copy() if y is None else np.maximum(y, xs, out=y)
        return [y]

    return kernel


def _k_avgpool(ev: Evaluator, op: Op) -> Kernel:
    ceil = bool(op.attrs.get("ceil_mode", 0))
    include_pad = bool(op.attrs.get("count_include_pad", 0))

    def kernel(args):
        x = args[0]
        win = _window(op.attrs, x.shape[2:], list(op.attrs["kernel_shape"]), ceil)
        # count: cells of each window inside the data (or inside data + explicit pads)
        inner = np.ones(x.shape[2:], dtype=x.dtype)
        if include_pad:
            inner = np.pad(inner, list(zip(win.head, win.tail)), constant_values=1)
            mask = np.pad(inner, [(0, e) for e in win.extra])
        else:
            mask = _pad_spatial(inner, win, 0, lead=0)
        y = cnt = None
        for (_, xs), (_, ms) in zip(_offsets(_pad_spatial(x, win, 0), win), _offsets(mask, win, 0)):
            y = xs.copy() if y is None else np.add(y, xs, out=y)
            cnt = ms.copy() if cnt is None else np.add(cnt, ms, out=cnt)
        return [y / cnt]

    return kernel


# ------------------------------------------------------------------------------------------------
# Ops whose onnx.reference class ignores the opset
# ------------------------------------------------------------------------------------------------
def _k_batchnorm(ev: Evaluator, op: Op) -> Kernel:
    if int(op.attrs.get("training_mode", 0)) or sum(1 for o in op.outputs if o) > 1:
        raise UnsupportedModelError("BatchNormalization in training mode", hint="export the model in eval mode")
    eps = float(op.attrs.get("epsilon", 1e-5))

    def kernel(args):
        x, scale, bias, mean, var = args[:5]
        # spatial=0 (opset < 9) gives per-activation parameters of shape (C, D1, ...)
        shape = (1, -1) + (1,) * (x.ndim - 2) if scale.ndim <= 1 else (1,) + scale.shape
        dt = x.dtype.type
        inv_std = dt(1) / np.sqrt(np.asarray(var, x.dtype) + dt(eps))
        new_scale = inv_std * np.asarray(scale, x.dtype)
        new_bias = np.asarray(bias, x.dtype) - np.asarray(mean, x.dtype) * new_scale
        return [x * new_scale.reshape(shape) + new_bias.reshape(shape)]

    return kernel


def _k_softmax(ev: Evaluator, op: Op, log: bool = False) -> Kernel:
    legacy = ev.opset < 13  # coerced 2-D: flatten from `axis` on, normalize over that block
    axis = int(op.attrs.get("axis", 1 if legacy else -1))

    def kernel(args):
        x = args[0]
        a = axis % x.ndim if x.ndim else 0
        z = x.reshape(math.prod(x.shape[:a]), -1) if legacy else x
        ax = -1 if legacy else a
        t = z - z.max(axis=ax, keepdims=True)
        e = np.exp(t)
        s = e.sum(axis=ax, keepdims=True)
        y = t - np.log(s) if log else e / s
        return [y.reshape(x.shape).astype(x.dtype, copy=False)]

    return kernel


def _axes(op: Op, args: list) -> tuple[int, ...] | None:
    """Axes from the attribute (before opset 13) or the second input."""
    if len(args) > 1 and args[1] is not None:
        return tuple(int(a) for a in np.asarray(args[1]).ravel())
    ax = op.attrs.get("axes")
    return None if ax is None else tuple(int(a) for a in np.asarray(ax).ravel())


def _k_unsqueeze(ev: Evaluator, op: Op) -> Kernel:
    def kernel(args):
        ax = _axes(op, args)
        if not ax:
            raise ValueError("Unsqueeze needs axes")
        return [np.expand_dims(args[0], ax)]
    return kernel


def _k_squeeze(ev: Evaluator, op: Op) -> Kernel:
    def kernel(args):
        ax = _axes(op, args)
        return [np.squeeze(args[0], axis=ax or None)]
    return kernel


_STANDARD: dict[str, Callable[[Evaluator, Op], Kernel | None]] = {
    "Conv": _k_conv, "MatMul": _k_matmul, "Gemm": _k_gemm, "MaxPool": _k_maxpool,
    "AveragePool": _k_avgpool, "BatchNormalization": _k_batchnorm, "Softmax": _k_softmax,
    "LogSoftmax": lambda ev, op: _k_softmax(ev, op, log=True),
    "Unsqueeze": _k_unsqueeze, "Squeeze": _k_squeeze,
}


# ------------------------------------------------------------------------------------------------
# tamec ops
# ------------------------------------------------------------------------------------------------
def _per_channel(a: Array, ndim: int, axis: int) -> Array:
    """Align a scalar or per-channel (or per-channel-and-beyond) tensor with `axis` of an ndim tensor."""
    a = np.asarray(a)
    if a.size == 1:
        return a.reshape(())
    axis %= ndim
    if a.ndim == 1:
        return a.reshape((-1,) + (1,) * (ndim - axis - 1))
    return a.reshape(a.shape + (1,) * (ndim - axis - a.ndim))


def _k_threshold(ev: Evaluator, op: Op) -> Kernel:
    """y = hi if x > tau, lo if x < tau, else tie; hi and lo swap where flip (see tamec.ops)."""
    if "tau" not in op.attrs or "tie" not in op.attrs:
        raise ModelStructureError("Threshold needs attributes tau and tie", hint="the tie rule is explicit")
    tau = np.asarray(op.attrs["tau"], dtype=np.float64)
    flip = np.asarray(op.attrs.get("flip", False), dtype=bool)
    axis = int(op.attrs.get("axis", 1))
    lo, hi = float(op.attrs.get("lo", -1.0)), float(op.attrs.get("hi", 1.0))
    tie = float(op.attrs["tie"])
    if flip.size not in (1, tau.size):
        raise ModelStructureError(f"Threshold flip has {flip.size} entries, tau {tau.size}")
    out_dt = ev.out_dtype(op)

    def kernel(args):
        x = args[0]
        t = _per_channel(tau, x.ndim, axis)
        f = _per_channel(np.broadcast_to(flip, tau.shape) if flip.size == 1 else flip.reshape(tau.shape),
                         x.ndim, axis)
        xf = x.astype(np.float64, copy=False)  # float32 -> float64 is exact: compare against f64 tau
        up, down = np.where(f, lo, hi), np.where(f, hi, lo)
        y = np.where(xf > t, up, np.where(xf < t, down, tie))
        return [np.broadcast_to(y, x.shape).astype(out_dt)]

    return kernel


_TAMEC = {"Linear": _k_linear, "Threshold": _k_threshold}


# ------------------------------------------------------------------------------------------------
# QONNX ops: ports of qonnx.custom_op.general, same numpy operations in the same order
# ------------------------------------------------------------------------------------------------
def _min_int(signed, narrow, bw):
    if signed and narrow:
        return -(2 ** (bw - 1)) + 1
    if signed:
        return -(2 ** (bw - 1))
    return 0 * bw


def _max_int(signed, narrow, bw):
    if not signed and not narrow:
        return (2 ** bw) - 1
    if not signed:
        return (2 ** bw) - 2
    return (2 ** (bw - 1)) - 1


def _rounding(mode: str):
    m = mode.upper()
    table = {"ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
             "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)), "DOWN": np.fix,
             "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
             "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5)}
    if m not in table:
        raise ModelStructureError(f"unknown rounding_mode {mode!r}", hint=f"use one of {', '.join(table)}")
    return table[m]


def _clamp(y, lo, hi):
    y = np.where(y > hi, np.asarray(hi).astype(y.dtype), y)
    return np.where(y < lo, np.asarray(lo).astype(y.dtype), y)


def _k_bipolar_quant(ev: Evaluator, op: Op) -> Kernel:
    out_dt = ev.out_dtype(op)

    def kernel(args):
        x, scale = np.asarray(args[0]), args[1]
        ones = np.ones(x.shape, dtype=x.dtype)
        return [np.asarray(np.where(x >= 0.0, ones, -ones) * scale).astype(out_dt, copy=False)]

    return kernel


def _k_quant(ev: Evaluator, op: Op) -> Kernel:
    for k in ("signed", "narrow"):
        if k not in op.attrs:
            raise ModelStructureError(f"Quant needs attribute {k!r}", hint="QONNX requires signed and narrow")
    signed, narrow = int(op.attrs["signed"]), int(op.attrs["narrow"])
    rnd = _rounding(str(op.attrs.get("rounding_mode", "ROUND")))
    out_dt = ev.out_dtype(op)

    def kernel(args):
        x, scale, zeropt, bw = (np.asarray(a) for a in args[:4])
        y = x / scale
        y = y + zeropt
        if bw == 1 and signed:  # qonnx: 1-bit signed Quant is bipolar, whatever `narrow` says
            ones = np.ones(y.shape, dtype=y.dtype)
            y = np.where(y >= 0.0, ones, -ones)
        else:
            y = rnd(_clamp(y, _min_int(signed, narrow, bw), _max_int(signed, narrow, bw)))
        y = (y - zeropt) * scale
        return [np.asarray(y).astype(np.float32).astype(out_dt, copy=False)]

    return kernel


def _k_multithreshold(ev: Evaluator, op: Op) -> Kernel:
    out_scale = op.attrs.get("out_scale", 1.0)
    out_bias = op.attrs.get("out_bias", 0.0)
    layout = str(op.attrs.get("data_layout", ""))
    out_dt = ev.out_dtype(op)

    def kernel(args):
        v, thr = args[0], args[1]
        lay = layout
        if not lay and v.ndim < 5:
            lay = {0: None, 1: None, 2: "NC", 3: "NWC", 4: "NCHW"}[v.ndim]
        cdim = (lay.index("C") if "C" in lay else 1) if lay is not None else 1
        vm = np.moveaxis(v.swapaxes(cdim, 1), 1, -1)  # channels last, thresholds broadcast per channel
        if thr.shape[0] not in (1, vm.shape[-1]):
            raise ValueError(f"thresholds {thr.shape} do not match {vm.shape[-1]} channels")
        ret = np.count_nonzero(vm[..., None] >= thr, axis=-1).astype(v.dtype)
        ret = np.moveaxis(ret, -1, 1)
        y = (out_scale if out_scale is not None else 1.0) * ret + (out_bias if out_bias is not None else 0.0)
        return [y.swapaxes(cdim, 1).astype(out_dt, copy=False)]

    return kernel


def _qonnx_opset(ev: Evaluator) -> int:
    """The QONNX domain's opset under any of its names (qonnx's default is 1)."""
    return max([int(ev.graph.opset[d]) for d in QONNX_DOMAINS if d in ev.graph.opset] or [1])


def _k_trunc(ev: Evaluator, op: Op) -> Kernel:
    """Trunc v1 (QONNX opset 1, 5 inputs) or v2 (opset >= 2, 6 inputs: output scale, clamping).
    qonnx picks the version by opset alone; an input count that disagrees is reported here."""
    rnd = _rounding(str(op.attrs.get("rounding_mode", "FLOOR")))
    narrow, signed = int(op.attrs.get("narrow", 0)), int(op.attrs.get("signed", 1))
    v2 = _qonnx_opset(ev) >= 2
    if len(op.inputs) != (6 if v2 else 5):
        raise ModelStructureError(
            f"Trunc v{2 if v2 else 1} (QONNX opset {_qonnx_opset(ev)}) takes {6 if v2 else 5} inputs, "
            f"this one has {len(op.inputs)}", hint="set the QONNX domain's opset to match the exporter")
    out_dt = ev.out_dtype(op)

    def kernel(args):
        x, scale, zeropt = args[0], args[1], args[2]
        y = np.round(x / scale + zeropt)
        if v2:
            out_scale, out_bw = args[4], args[5]
            tscale = 2 ** np.round(np.log2(out_scale / scale))
            y = rnd(_clamp(y / tscale, _min_int(signed, narrow, out_bw), _max_int(signed, narrow, out_bw)))
            y = (y - zeropt / tscale) * out_scale
        else:
            in_bw, out_bw = args[3], args[4]
            y = rnd(y / 2.0 ** (in_bw - out_bw))
            y = (y - zeropt) * scale
        return [np.asarray(y).astype(out_dt, copy=False)]

    return kernel


_QONNX = {"BipolarQuant": _k_bipolar_quant, "Quant": _k_quant, "MultiThreshold": _k_multithreshold,
          "Trunc": _k_trunc}

"""Graph IR -> ONNX: a faithful dump tamec re-imports, or standard ONNX onnxruntime runs.

Faithful (`standard=False`): one NodeProto per op, named by the op's stable id, in its own domain
(tamec's ops stay custom ops in `tamec`, QONNX ops in `qonnx.custom_op.general`), so the file
opens in Netron. Conventions a re-importer reads back:
- a node's doc_string is `origin=<JSON list of ONNX node names>` (the op's provenance);
- a value's doc_string (value_info, graph input/output or initializer) is `domain=<domain>` when
  the domain is not `real`, followed by ` bounds=[lo..hi]` (a summary) when the value has bounds;
- constants are initializers; every other value is typed (symbolic dims as dim_param, no shape
  when unknown); float attributes are ONNX FLOATs (float32), tensors keep their dtype.
  ONNX has no way to say "rank unknown" that its checker accepts on a graph input or output, so
  a graph whose inputs or outputs have unknown shapes exports but fails `onnx.checker`.

Standard (`standard=True`): only default-domain ops, at the graph's own opset (>= 9, where
`Where` appears), so every other standard op keeps its meaning:
- `tamec.Linear(x, W, B)` -> `Gemm(transB=1)` for 2-D x, else `MatMul(x, W^T) + B`; computed in
  float64 when an integer product could exceed float32's exact range;
- `tamec.Threshold` -> `Where(x > tau, hi', Where(x < tau, lo', tie))` with x cast to float64 and
  tau (f64) reshaped along `axis`; hi'/lo' swapped where `flip`. NaN tau compares false both
  ways (constant tie), +-inf tau gives constant lo/hi: the rule in tamec/ops.py, literally.
  When y's domain lacks the tie value (the verifier proved x never equals tau) it is
  `Where(x > tau, hi', lo')`, so every value the file computes lies in the domain it declares;
  `canonicalize` reads both forms back as the same Threshold;
- QONNX `BipolarQuant(x, s)` -> `Where(x >= 0, s, -s)` (`Not(x < 0)` below opset 12, which
  sends a NaN x to +s where QONNX gives -s);
- QONNX `Quant(x, s, z, bw)` with constant s, z, bw (bw >= 2 or unsigned) and round-half-even
  rounding -> `Mul(Sub(Round(Clip(Add(Div(x, s), z), min, max)), z), s)` in x's dtype, the
  evaluator's operations in its order (opset >= 11, for Round and Clip's min/max inputs);
- any other custom op raises UnsupportedModelError naming all of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from tamec.errors import UnsupportedModelError
from tamec.ir.graph import REAL, Domain, Graph, Op, Value
from tamec.ir.text import _scalar
from tamec.verifier import threshold_tau_shape
from tamec.ops import QONNX_DOMAIN, STANDARD_OPS, TAMEC_DOMAIN, attach, hook, require
from tamec.ops.threshold import ThresholdParams
from tamec.version import __version__

MIN_STANDARD_OPSET = 9  # Where, and Greater/Less on every numeric type
_F32_EXACT = 2.0 ** 24  # integers up to this add exactly in float32


def elem_type(dtype: str) -> int:
    """The ONNX TensorProto data type of a numpy dtype name."""
    special = {"bfloat16": TensorProto.BFLOAT16, "str": TensorProto.STRING}
    if dtype in special:
        return special[dtype]
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        raise UnsupportedModelError(f"dtype {dtype!r} has no ONNX equivalent") from None


def _value_doc(v: Value) -> str:
    parts = [] if v.domain.kind == "real" else [f"domain={v.domain}"]
    if v.bounds is not None:
        parts.append(f"bounds=[{_scalar(np.min(v.bounds[0]))}..{_scalar(np.max(v.bounds[1]))}]")
    return " ".join(parts)


def _value_info(v: Value) -> onnx.ValueInfoProto:
    vi = helper.make_tensor_value_info(v.name, elem_type(v.dtype), None if v.shape is None else list(v.shape))
    vi.doc_string = _value_doc(v)
    return vi


def _initializer(v: Value) -> TensorProto:
    t = numpy_helper.from_array(np.asarray(v.const), v.name)
    t.doc_string = _value_doc(v)
    return t


def attribute(op: Op, key: str, value) -> AttributeProto:
    """One attribute of `op` as an AttributeProto (bools as INT, empty lists as INTS)."""
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return helper.make_attribute(key, int(value))
    if isinstance(value, (int, float, str)):
        return helper.make_attribute(key, value)
    if isinstance(value, (list, tuple)):
        items = [x.item() if isinstance(x, np.generic) else x for x in value]
        if not items:
            return helper.make_attribute(key, [], attr_type=AttributeProto.INTS)
        if all(isinstance(x, np.ndarray) for x in items):
            return helper.make_attribute(key, [numpy_helper.from_array(x) for x in items])
        if all(isinstance(x, int) for x in items):  # bools are ints
            return helper.make_attribute(key, [int(x) for x in items])
        if all(isinstance(x, (int, float)) for x in items):
            return helper.make_attribute(key, [float(x) for x in items], attr_type=AttributeProto.FLOATS)
        if all(isinstance(x, str) for x in items):
            return helper.make_attribute(key, items)
    raise UnsupportedModelError(f"attribute {key}={value!r} has no ONNX attribute type",
                                node=op.id, op=op.qualname, hint="use ints, floats, strings or tensors")


def origin_doc(op: Op) -> str:
    """The doc_string carrying an op's provenance."""
    return "origin=" + json.dumps(list(op.origin))


class _Builder:
    """Collects nodes and initializers; hands out value and node names the graph does not use."""

    def __init__(self, g: Graph, opset: int):
        self.g, self.opset = g, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.taken = set(g.values)  # value names
        self.taken_nodes = set(g.nx.nodes)  # node names: ONNX keeps them apart from value names
        self.typed: list[Value] = []  # lowered intermediates whose domain the file must declare

    def declare(self, name: str, like: Value, dtype: str, domain: Domain) -> str:
        """Record that the fresh value `name` (shaped like `like`) lies in `domain`, so a re-import
        verifies the integer ops that read it (the verifier does not infer products)."""
        if name != like.name and domain.kind != "real":
            self.typed.append(Value(name, like.shape, dtype, domain))
        return name

    @staticmethod
    def _fresh(taken: set[str], base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}.{k}", k + 1
        taken.add(name)
        return name

    def fresh(self, base: str) -> str:
        return self._fresh(self.taken, base)

    def const(self, base: str, array) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: Op, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        """Add a standard node lowered from `op`; returns its output name (fresh unless `out`)."""
        out = out or self.fresh(f"{op.id}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._fresh(self.taken_nodes, f"{op.id}/{op_type}"),
                                           doc_string=origin_doc(op), **attrs))
        return out

    def cast(self, op: Op, name: str, src: str, dst: str, out: str | None = None) -> str:
        return name if src == dst and out is None else self.node(op, "Cast", [name], out, to=elem_type(dst))


# -- standard lowering -------------------------------------------------------------------------------

def _needs_f64(x: Value, w: Value) -> bool:
    """True when x @ W^T is an integer product float32 might round (partial sums past 2^24)."""
    if not (x.domain.is_integer and w.domain.is_integer) or w.shape is None:
        return False
    xmax = max(abs(b) for b in x.domain.interval())
    wmax = float(np.abs(w.const).max()) if w.const is not None and w.const.size else \
        max(abs(b) for b in w.domain.interval())
    return w.shape[1] * xmax * wmax >= _F32_EXACT


def _product_domain(x: Value, w: Value) -> Domain:
    """An integer domain holding x @ W^T when both are integer (the bias comes after), else real."""
    if not (x.domain.is_integer and w.domain.is_integer) or w.shape is None or not isinstance(w.shape[1], int):
        return REAL
    bound = w.shape[1] * max(abs(v) for v in x.domain.interval()) * max(abs(v) for v in w.domain.interval())
    return Domain.integer(-bound, bound) if float(bound).is_integer() else REAL


def _operand(b: _Builder, op: Op, name: str, dtype: str, transpose: bool = False) -> str:
    """`name` (a weight or bias) in `dtype`, transposed if asked: folded when it is a constant."""
    v = b.g.value(name)
    if v.const is not None:
        a = v.const.T if transpose else v.const
        return name if a is v.const and v.dtype == dtype else b.const(f"{name}/{op.id}", a.astype(dtype))
    name = b.cast(op, name, v.dtype, dtype)
    return b.node(op, "Transpose", [name], perm=[1, 0]) if transpose else name


def _lower_linear(b: _Builder, op: Op) -> None:
    g = b.g
    x, w = g.value(op.inputs[0]), g.value(op.inputs[1])
    bias = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] else None
    y = g.value(op.outputs[0])
    floating = np.issubdtype(np.dtype(x.dtype), np.floating)
    cdt = "float64" if not floating or _needs_f64(x, w) else x.dtype
    xin = b.declare(b.cast(op, x.name, x.dtype, cdt), x, cdt, x.domain)
    out = op.outputs[0] if cdt == y.dtype else None
    if x.shape is not None and len(x.shape) == 2:
        ins = [xin, _operand(b, op, w.name, cdt)]
        if bias is not None:
            ins.append(_operand(b, op, bias, cdt))
        elif b.opset < 11:  # Gemm's C became optional at opset 11
            ins.append(b.const(f"{op.id}/zero_bias", np.zeros(w.shape[0], cdt)))
        res = b.node(op, "Gemm", ins, out, transB=1)
    else:
        mm = b.node(op, "MatMul", [xin, _operand(b, op, w.name, cdt, transpose=True)],
                    None if bias is not None else out)
        if bias is not None:
            b.declare(mm, y, cdt, _product_domain(x, w))
        res = b.node(op, "Add", [mm, _operand(b, op, bias, cdt)], out) if bias is not None else mm
    if out is None:
        b.declare(res, y, cdt, y.domain)  # computed exactly, so y's domain before the cast
        b.cast(op, res, cdt, y.dtype, op.outputs[0])


def _lower_threshold(b: _Builder, op: Op) -> None:
    g = b.g
    x, y = g.value(op.inputs[0]), g.value(op.outputs[0])
    p = ThresholdParams.of(op)
    tau, flip = p.tau, p.flip
    try:
        shape = threshold_tau_shape(tau.shape, p.axis, x.shape)
    except ValueError as e:
        raise UnsupportedModelError(f"cannot broadcast tau: {e}", node=op.id, op=op.qualname,
                                    hint="give x a known shape before exporting") from None
    lo, hi, tie = (np.asarray(v, dtype=y.dtype) for v in (p.lo, p.hi, p.tie))
    if flip.any() and not flip.all():
        hi_eff, lo_eff = np.where(flip, lo, hi).reshape(shape), np.where(flip, hi, lo).reshape(shape)
    else:  # one flip for all channels: scalar constants
        hi_eff, lo_eff = (lo, hi) if flip.any() else (hi, lo)
    # compare in float64: tau is f64, and a float32 compare would round it
    xd = b.cast(op, x.name, x.dtype, "float64")
    tau_c = b.const(f"{op.id}/tau", tau.reshape(shape))
    gt = b.node(op, "Greater", [xd, tau_c])
    if y.domain.contains(tie):
        lt = b.node(op, "Less", [xd, tau_c])
        low = b.node(op, "Where", [lt, b.const(f"{op.id}/lo", lo_eff), b.const(f"{op.id}/tie", tie)])
    else:  # the verified domain proves x never equals tau: a tie branch would claim a value y lacks
        low = b.const(f"{op.id}/lo", lo_eff)
    b.node(op, "Where", [gt, b.const(f"{op.id}/hi", hi_eff), low], op.outputs[0])


def _lower_bipolar_quant(b: _Builder, op: Op) -> None:
    g = b.g
    x, s, y = g.value(op.inputs[0]), g.value(op.inputs[1]), g.value(op.outputs[0])
    zero = b.const(f"{op.id}/zero", np.zeros((), x.dtype))
    if b.opset >= 12:
        ge = b.node(op, "GreaterOrEqual", [x.name, zero])
    else:
        ge = b.node(op, "Not", [b.node(op, "Less", [x.name, zero])])
    if s.const is not None:
        pos = b.const(f"{op.id}/scale", s.const.astype(y.dtype))
        neg = b.const(f"{op.id}/neg_scale", -s.const.astype(y.dtype))
    else:
        pos = b.cast(op, s.name, s.dtype, y.dtype)
        neg = b.node(op, "Neg", [pos])
    b.node(op, "Where", [ge, pos, neg], op.outputs[0])


def _lower_quant(b: _Builder, op: Op) -> None:
    from tamec.evaluator import _max_int, _min_int  # the evaluator's integer range, not a copy

    g = b.g
    x = g.value(op.inputs[0])
    s, z, bw = (g.value(n).const for n in op.inputs[1:4])
    signed, narrow = int(op.attrs.get("signed", 1)), int(op.attrs.get("narrow", 0))
    mode = str(op.attrs.get("rounding_mode", "ROUND")).upper()
    why = None
    if s is None or z is None or bw is None:
        why = "scale, zero point and bit width must be constants"
    elif mode not in ("ROUND", "HALF_EVEN"):
        why = f"rounding_mode {mode} has no ONNX Round (it rounds half to even)"
    elif bw.size != 1 or (int(bw) == 1 and signed):
        why = "a per-tensor bit width >= 2 (1-bit signed Quant is bipolar: use BipolarQuant)"
    elif b.opset < 11:
        why = f"opset {b.opset} < 11 (Round, Clip with min/max inputs)"
    if why:
        raise UnsupportedModelError(f"cannot write Quant as standard ONNX: {why}", node=op.id, op=op.qualname,
                                    hint="export with standard=False (QONNX form kept)")
    dt = x.dtype
    n = int(bw)
    sc = b.const(f"{op.id}/scale", s.astype(dt))
    zp = b.const(f"{op.id}/zeropt", z.astype(dt))
    lo = b.const(f"{op.id}/min", np.asarray(_min_int(signed, narrow, n), dt))
    hi = b.const(f"{op.id}/max", np.asarray(_max_int(signed, narrow, n), dt))
    y = b.node(op, "Add", [b.node(op, "Div", [x.name, sc]), zp])
    y = b.node(op, "Round", [b.node(op, "Clip", [y, lo, hi])])
    b.node(op, "Mul", [b.node(op, "Sub", [y, zp]), sc], op.outputs[0])


# The export stage of the op registry: standard ops are written as they are; custom ops with a
# standard form get their lowering; the others keep their domain (standard=False only).
attach("export", sorted(STANDARD_OPS), None, how="as is")
attach("export", ["tamec.Linear"], _lower_linear, how="MatMul/Gemm (+ Cast for exact integers)")
attach("export", ["tamec.Threshold"], _lower_threshold, how="Greater/Less/Where in float64")
attach("export", [f"{QONNX_DOMAIN}.BipolarQuant"], _lower_bipolar_quant, how="GreaterOrEqual/Where")
attach("export", [f"{QONNX_DOMAIN}.Quant"], _lower_quant, how="Div/Add/Clip/Round/Sub/Mul")


# -- the model ------------------------------------------------------------------------------------

def _node(op: Op) -> onnx.NodeProto:
    n = helper.make_node(op.op_type, op.inputs, op.outputs, name=op.id, domain=op.domain,
                         doc_string=origin_doc(op))
    n.attribute.extend(attribute(op, k, op.attrs[k]) for k in sorted(op.attrs))
    return n


def to_onnx(graph: Graph, *, standard: bool = False, keep_domains=frozenset()) -> onnx.ModelProto:
    """`graph` as an ONNX model: faithful (custom ops kept) or, with `standard`, default-domain only
    except for the custom domains in `keep_domains` (the QONNX form keeps BipolarQuant)."""
    g = graph
    opset = g.opset.get("", 13)
    ops = g.ops()
    lowered = [op for op in ops if standard and op.domain and op.domain not in keep_domains]
    if lowered:
        require(lowered, "export", what="the standard-ONNX export",
                hint="export with standard=False (custom ops kept), or lower these ops first")
        if opset < MIN_STANDARD_OPSET:
            raise UnsupportedModelError(f"standard export of custom ops needs opset >= {MIN_STANDARD_OPSET}, "
                                        f"graph has {opset}", hint="raise the graph's opset first")
    b = _Builder(g, opset)
    lower = {id(op) for op in lowered}
    for op in ops:
        if id(op) in lower:
            hook(op.qualname, "export")(b, op)
        else:
            b.nodes.append(_node(op))

    # constants the emitted nodes read (a lowered Linear may read a transposed copy instead)
    used = {i for n in b.nodes for i in n.input if i in g.values} | set(g.outputs) | set(g.inputs)
    consts = [g.values[n] for n in sorted(used) if g.values[n].const is not None]
    io = set(g.inputs) | set(g.outputs)
    inner = [g.values[o] for op in ops for o in op.outputs if o not in io]
    onnx_graph = helper.make_graph(
        b.nodes, g.name,
        [_value_info(g.values[n]) for n in g.inputs],
        [_value_info(g.values[n]) for n in g.outputs],
        initializer=[_initializer(v) for v in consts] + b.inits,
        value_info=[_value_info(v) for v in inner + b.typed])

    domains = {"": opset}
    if not standard:
        domains.update({d: v for d, v in g.opset.items() if d not in ("", "ai.onnx")})
    domains.update({op.domain: g.opset.get(op.domain, 1) for op in ops if op.domain and id(op) not in lower})
    opsets = [helper.make_opsetid(d, v) for d, v in sorted(domains.items())]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="tamec",
                              producer_version=__version__)
    model.ir_version = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 4)
    return model


def save_onnx(graph: Graph, path, standard: bool = False) -> Path:
    """Write `to_onnx(graph, standard=standard)` to `path`; returns the path."""
    path = Path(path)
    onnx.save_model(to_onnx(graph, standard=standard), str(path))
    return path

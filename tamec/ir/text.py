"""Stable, diffable text form of the graph IR, and its parser.

One statement a line, ops in the graph's stable topological order:

    graph tfc opset(""=9, "onnx.brevitas"=1) {
      input %0 : f32[1,1,28,28] real
      const %38 : f32[64,784] bipolar = <sha256:1f0c2a9d7e11 n=50176 min=-1 max=1>
      %42 = MatMul(%37, %41) : f32[1,64] real @MatMul_16
      %t = tamec.Threshold(%s) {tau=tensor<f64[64]>[...], tie=1} : f32[1,64] bipolar @T_3 <- "BatchNormalization_17", "BipolarQuant_19"
      output %74
    }

`@ID` is the op's stable id; `<- ...` its ONNX provenance when that is not just the id. Constants
and tensor attributes of up to `inline` elements print as literals; larger ones as a digest, or,
with `full=True`, as base64 of their bytes so that `parse(print(g, full=True)) == g`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re

import numpy as np

from tamec.errors import ModelStructureError
from tamec.ir.graph import Domain, Graph, Op, Value

DTYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "int8": "i8", "int16": "i16",
          "int32": "i32", "int64": "i64", "uint8": "u8", "uint16": "u16", "uint32": "u32",
          "uint64": "u64", "bool": "bool", "bfloat16": "bf16", "str": "str"}
SHORT = {v: k for k, v in DTYPES.items()}
_NAME = re.compile(r"[A-Za-z0-9_.:/\-]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/\-]*\Z")  # what the tokenizer reads as one bare word
_DIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _name(n: str) -> str:
    return "%" + (n if _NAME.match(n) else json.dumps(n))


def _scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def _nested(a: np.ndarray) -> str:
    if a.ndim == 0:
        return _scalar(a.item())
    return "[" + ", ".join(_nested(x) for x in a) + "]"


def _array(a: np.ndarray, inline: int, full: bool) -> str:
    a = np.asarray(a)
    if a.size <= inline:
        return _nested(a)
    if full:
        return 'b64"' + base64.b64encode(np.ascontiguousarray(a).tobytes()).decode() + '"'
    digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]
    stats = f" min={_scalar(a.min())} max={_scalar(a.max())}" if a.dtype.kind in "biuf" else ""
    return f"<sha256:{digest} n={a.size}{stats}>"


def _type(shape, dtype: str) -> str:
    dims = "?" if shape is None else ",".join(
        str(d) if isinstance(d, int) or _DIM.match(d) else json.dumps(d) for d in shape)
    return f"{DTYPES.get(dtype, dtype)}[{dims}]"


def _tensor(a: np.ndarray, inline: int, full: bool) -> str:
    a = np.asarray(a)
    return f"tensor<{_type(a.shape, a.dtype.name)}>{_array(a, inline, full)}"


def _attr(v, inline: int, full: bool) -> str:
    if isinstance(v, np.ndarray):
        return _tensor(v, inline, full)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_attr(x, inline, full) for x in v) + "]"
    return _scalar(v)


def _vtype(v: Value, inline: int, full: bool) -> str:
    s = f"{_type(v.shape, v.dtype)} {v.domain}"
    if v.bounds is not None:
        lo, hi = v.bounds
        if full:
            s += f" bounds({_tensor(lo, inline, True)}, {_tensor(hi, inline, True)})"
        else:
            s += f" bounds[{_scalar(np.min(lo))}..{_scalar(np.max(hi))}]"
    return s


def print_graph(g: Graph, *, full: bool = False, inline: int = 16) -> str:
    """The text form of `g`; `full=True` spells out every constant so it parses back exactly."""
    opset = ", ".join(f"{json.dumps(k)}={v}" for k, v in sorted(g.opset.items()))
    lines = [f"graph {json.dumps(g.name)} opset({opset}) {{"]
    for name in g.inputs:
        lines.append(f"  input {_name(name)} : {_vtype(g.values[name], inline, full)}")
    used = {i for op in g.nx.nodes.values() for i in op["op"].inputs} | set(g.outputs)
    for name in sorted(n for n, v in g.values.items() if v.const is not None and n in used):
        v = g.values[name]
        lines.append(f"  const {_name(name)} : {_vtype(v, inline, full)} = {_array(v.const, inline, full)}")
    for op in g.ops():
        outs = ", ".join(_name(o) for o in op.outputs)
        ins = ", ".join(_name(i) if i else "%" + '""' for i in op.inputs)
        attrs = ""
        if op.attrs:
            attrs = " {" + ", ".join(f"{k}={_attr(op.attrs[k], inline, full)}" for k in sorted(op.attrs)) + "}"
        types = ", ".join(_vtype(g.values[o], inline, full) for o in op.outputs)
        origin = ""
        if op.origin != (op.id,):
            origin = " <- " + (", ".join(json.dumps(o) for o in op.origin) if op.origin else "()")
        lines.append(f"  {outs} = {op.qualname}({ins}){attrs} : {types} @{op.id if _IDENT.match(op.id) else json.dumps(op.id)}{origin}")
    for name in g.outputs:
        lines.append(f"  output {_name(name)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- parser ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<b64>b64"[A-Za-z0-9+/=]*")
  | (?P<digest><sha256:[^>]*>)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>-?(?:inf|nan|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))(?![A-Za-z0-9_])
  | (?P<var>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.:/\-]+))
  | (?P<arrow><-)
  | (?P<dots>\.\.)
  | (?P<id>[A-Za-z_][A-Za-z0-9_.:/\-]*)
  | (?P<punct>[\[\](){},=:@<>?])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, line: str, lineno: int):
        self.toks, self.i, self.lineno, self.line = [], 0, lineno, line
        pos = 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m:
                self.fail(f"cannot read {line[pos:pos + 20]!r}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group()))
            pos = m.end()

    def fail(self, msg: str):
        raise ModelStructureError(f"line {self.lineno}: {msg}: {self.line.strip()[:120]}",
                                  hint="fix the .tir text")

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def next(self):
        t = self.peek()
        if t[0] is None:
            self.fail("unexpected end of line")
        self.i += 1
        return t

    def expect(self, text: str):
        t = self.next()
        if t[1] != text:
            self.fail(f"expected {text!r}, got {t[1]!r}")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False

    def done(self) -> bool:
        return self.i >= len(self.toks)


def _num_value(s: str):
    if s in ("inf", "-inf", "nan"):
        return float(s)
    return float(s) if any(c in s for c in ".eE") else int(s)


def _parse_var(t: _Tokens) -> str:
    kind, text = t.next()
    if kind != "var":
        t.fail(f"expected a %value, got {text!r}")
    body = text[1:]
    return json.loads(body) if body.startswith('"') else body


def _parse_type(t: _Tokens):
    kind, text = t.next()
    if text not in SHORT:
        t.fail(f"unknown dtype {text!r}")
    dtype = SHORT[text]
    t.expect("[")
    shape: list | None = []
    if t.accept("?"):
        shape = None
    else:
        while not t.accept("]"):
            k, d = t.next()
            shape.append(int(d) if k == "num" else json.loads(d) if k == "str" else d)
            t.accept(",")
        return dtype, tuple(shape)
    t.expect("]")
    return dtype, shape


def _parse_domain(t: _Tokens) -> Domain:
    kind, text = t.next()
    if text != "int":
        try:
            return Domain(text)
        except ValueError:
            t.fail(f"unknown domain {text!r}")
    t.expect("[")
    lo = _num_value(t.next()[1])
    t.expect(":")
    hi = _num_value(t.next()[1])
    step = 1
    if t.accept(":"):
        step = int(t.next()[1])
    t.expect("]")
    return Domain.integer(lo, hi, step)


def _parse_nested(t: _Tokens):
    if t.accept("["):
        items = []
        while not t.accept("]"):
            items.append(_parse_nested(t))
            t.accept(",")
        return items
    kind, text = t.next()
    if kind == "num":
        return _num_value(text)
    if text in ("true", "false"):
        return text == "true"
    t.fail(f"expected a number, got {text!r}")


def _parse_array(t: _Tokens, dtype: str, shape) -> np.ndarray:
    kind, text = t.peek()
    if kind == "digest":
        t.fail("constant is elided as a digest; print with full=True to parse it back")
    if kind == "b64":
        t.next()
        a = np.frombuffer(base64.b64decode(text[4:-1]), dtype=np.dtype(dtype)).copy()
        return a.reshape(shape)
    return np.array(_parse_nested(t), dtype=np.dtype(dtype)).reshape(shape)


def _parse_tensor(t: _Tokens) -> np.ndarray:
    t.expect("<")
    dtype, shape = _parse_type(t)
    t.expect(">")
    return _parse_array(t, dtype, shape)


def _parse_attr(t: _Tokens):
    kind, text = t.peek()
    if text == "tensor":
        t.next()
        return _parse_tensor(t)
    if text == "[":
        t.next()
        items = []
        while not t.accept("]"):
            items.append(_parse_attr(t))
            t.accept(",")
        return items
    t.next()
    if kind == "str":
        return json.loads(text)
    if kind == "num":
        return _num_value(text)
    if text in ("true", "false"):
        return text == "true"
    t.fail(f"bad attribute value {text!r}")


def _parse_vtype(t: _Tokens, name: str) -> Value:
    dtype, shape = _parse_type(t)
    v = Value(name, shape, dtype, _parse_domain(t))
    if t.accept("bounds"):
        if t.peek()[1] == "[":
            t.fail("bounds are summarized; print with full=True to parse them back")
        t.expect("(")
        lo = _parse_attr(t)
        t.expect(",")
        hi = _parse_attr(t)
        t.expect(")")
        v.bounds = (lo, hi)
    return v


def parse_graph(text: str) -> Graph:
    """Parse the text form back into a Graph (the inverse of `print_graph(g, full=True)`)."""
    g: Graph | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        t = _Tokens(line, lineno)
        head = t.peek()[1]
        if head == "graph":
            t.next()
            name = json.loads(t.next()[1])
            t.expect("opset")
            t.expect("(")
            opset = {}
            while not t.accept(")"):
                dom = json.loads(t.next()[1])
                t.expect("=")
                opset[dom] = int(t.next()[1])
                t.accept(",")
            t.expect("{")
            g = Graph(name, opset)
            continue
        if g is None:
            t.fail("expected 'graph' first")
        if head == "}":
            break
        if head in ("input", "const"):
            t.next()
            name = _parse_var(t)
            t.expect(":")
            v = _parse_vtype(t, name)
            if head == "const":
                t.expect("=")
                v.const = _parse_array(t, v.dtype, v.shape)
            else:
                g.inputs.append(name)
            g.add_value(v)
        elif head == "output":
            t.next()
            g.outputs.append(_parse_var(t))
        else:
            outs = [_parse_var(t)]
            while t.accept(","):
                outs.append(_parse_var(t))
            t.expect("=")
            qual = t.next()[1]
            domain, _, op_type = qual.rpartition(".")
            t.expect("(")
            ins = []
            while not t.accept(")"):
                ins.append(_parse_var(t))
                t.accept(",")
            attrs = {}
            if t.accept("{"):
                while not t.accept("}"):
                    k = t.next()[1]
                    t.expect("=")
                    attrs[k] = _parse_attr(t)
                    t.accept(",")
            t.expect(":")
            vals = [_parse_vtype(t, outs[0])]
            while t.accept(","):
                vals.append(_parse_vtype(t, outs[len(vals)]))
            t.expect("@")
            kind, text_id = t.next()
            op_id = json.loads(text_id) if kind == "str" else text_id
            origin: tuple = (op_id,)
            if t.accept("<-"):
                if t.accept("("):
                    t.expect(")")
                    origin = ()
                else:
                    origin = (json.loads(t.next()[1]),)
                    while t.accept(","):
                        origin += (json.loads(t.next()[1]),)
            for v in vals:
                g.add_value(v)
            g.add_op(Op(op_id, op_type, ins, outs, attrs, domain, origin))
        if not t.done():
            t.fail(f"unexpected {t.peek()[1]!r}")
    if g is None:
        raise ModelStructureError("no 'graph' statement in text", hint="fix the .tir text")
    return g


# -- the MIP IR -----------------------------------------------------------------------------------
#
#   mip {
#     input %0 = dense0.0
#     block dense0 mode=inference ops=[op3, op4] inputs=[0] outputs=[t1] {
#       var 0 : continuous[784] role=input encodes=%0 encoding=value bounds=[0..1] fixed=0 sha256:...
#       rows op4 : big-m[128] nnz=100480 op=op4 origin=["Gemm_0"] big_m=interval max_m=785 sha256:...
#       objective min nnz=0 sha256:...
#     }
#     link dense0.t1 -> dense1.t1
#   }
#
# One line per variable group, row group and indicator group, each ending in a digest of all its
# numbers, so a diff of two dumps names exactly the groups a pass changed. Block headers hold only
# what the block is (mode, ops, interface), never counts derived from its rows.

def _mnum(x) -> str:
    """A number for summaries: integers without `.0`."""
    x = float(x)
    if math.isfinite(x) and x == round(x) and abs(x) < 1e15:
        return str(int(x))
    return _scalar(x)


def _bare(s: str) -> str:
    return s if _NAME.match(s) else json.dumps(s)


def _digest(*arrays) -> str:
    """sha256 prefix of the arrays' values (floats as float64 with -0.0 made 0.0, ints as int64)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        a = (a.astype(np.float64) + 0.0) if a.dtype.kind == "f" else a.astype(np.int64)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()[:12]


def _csr_arrays(A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of A in canonical form: duplicates summed, zeros dropped, sorted."""
    import scipy.sparse as sp

    A = sp.csr_matrix(A, dtype=np.float64, copy=True)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A.indptr, A.indices, A.data


def _origin(origin) -> str:
    return "[" + ", ".join(json.dumps(str(o)) for o in origin) + "]"


def _var_line(v) -> str:
    shape = ",".join(str(int(d)) for d in v.shape)
    bounds = f"[{_mnum(np.min(v.lb))}..{_mnum(np.max(v.ub))}]" if v.size else "[]"
    fixed = int(np.count_nonzero(v.lb == v.ub))
    enc = f" encodes={_name(v.encodes)}" if v.encodes else ""
    return (f"var {_bare(v.name)} : {v.kind}[{shape}] role={v.role}{enc} encoding={v.encoding} "
            f"bounds={bounds} fixed={fixed} {_digest(v.lb, v.ub)}")


def _rows_line(r) -> str:
    ptr, idx, data = _csr_arrays(r.A)
    s = f"rows {_bare(r.name)} : {r.kind}[{r.size}] nnz={data.size} op={_bare(r.op) if r.op else '-'}"
    s += f" origin={_origin(r.origin)}"
    if r.big_m:
        s += f" big_m={_bare(r.big_m)}"
    if r.m is not None and np.size(r.m):
        s += f" max_m={_mnum(np.max(r.m))}"
    return f"{s} {_digest(ptr, idx, data, r.lo, r.hi, np.asarray([] if r.m is None else r.m, np.float64))}"


def _ind_line(r) -> str:
    ptr, idx, data = _csr_arrays(r.A)
    on = np.unique(np.asarray(r.var)).size
    return (f"ind {_bare(r.name)} : indicator[{r.size}] nnz={data.size} switches={on} "
            f"op={_bare(r.op) if r.op else '-'} origin={_origin(r.origin)} "
            f"{_digest(r.var, r.value, ptr, idx, data, r.lo, r.hi)}")


def _objective_line(b) -> str:
    if b.c is None:
        return "objective none"
    c = np.asarray(b.c, np.float64)
    nz = c[c != 0]
    rng = f" c=[{_mnum(nz.min())}..{_mnum(nz.max())}]" if nz.size else ""
    return f"objective {b.sense} nnz={nz.size}{rng} {_digest(c)}"


def _interface(meta: dict, key: str) -> list[str]:
    items = meta.get(key)
    if not isinstance(items, dict):
        return []
    out = []
    for name, places in items.items():
        where = ", ".join(f"{_bare(str(b))}.{_bare(str(g))}" for b, g in places)
        out.append(f"  {key[:-1]} {_name(str(name))} = {where}")
    return out


def print_mip(mod) -> str:
    """The text form of a `tamec.ir.mip.MipModule`: stable, one line per group, diffable."""
    lines = ["mip {"]
    lines += _interface(mod.meta, "inputs") + _interface(mod.meta, "outputs")
    for b in mod.blocks:
        lines.append(f"  block {_bare(b.name)} mode={b.mode} ops=[{', '.join(_bare(o) for o in b.ops)}] "
                     f"inputs=[{', '.join(_bare(g) for g in b.inputs)}] "
                     f"outputs=[{', '.join(_bare(g) for g in b.outputs)}] {{")
        lines += ["    " + _var_line(v) for v in b.vars]
        lines += ["    " + _rows_line(r) for r in b.rows]
        lines += ["    " + _ind_line(r) for r in b.indicators]
        lines.append("    " + _objective_line(b))
        lines.append("  }")
    for ln in mod.links:
        lines.append(f"  link {_bare(ln.src)}.{_bare(ln.src_group)} -> {_bare(ln.dst)}.{_bare(ln.dst_group)}")
    lines.append("}")
    return "\n".join(lines) + "\n"

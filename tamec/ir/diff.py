"""What changed between two graph IRs, or between two of their text dumps, one line per change.

Ops are matched by stable id, values by name. Lines, in this order: graph header changes, ops
removed, added, changed; values removed, added, changed:

    ~ graph: outputs [%74] -> [%75]
    - op BatchNormalization_17
    + op T_3 tamec.Threshold(%42) {tie=1, ...} -> %t
    ~ op MatMul_16: inputs [%37, %41] -> [%37, %44]
    ~ op T_3: attr tie 0 -> 1
    ~ value %42: domain real -> int[-784:784:2]

`diff_text` reads the text form line by line without parsing constants, so dumps whose large
constants are elided as digests compare too; `diff_graphs` compares bounds exactly (digests of
large ones) where the default text form only prints their range.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

from tamec.errors import ModelStructureError
from tamec.ir.graph import Graph, Value
from tamec.ir.text import _NAME, _TOKEN, DTYPES, _array, _attr, _name, _tensor

_INLINE = 16  # the printer's default, so both sides render constants alike
# the printer's tokens, plus bare words: op ids like `/features.0/MatMul` print unquoted
_TOK = re.compile(_TOKEN.pattern + r"| (?P<word>[^\s,(){}\[\]<>=@%\"]+)", re.VERBOSE)
_OPEN, _CLOSE = "([{<", ")]}>"


@dataclass
class _Snapshot:
    """One graph as comparable strings: header fields, values by `%name`, ops by id (in print order)."""

    header: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str | None]] = field(default_factory=dict)
    ops: dict[str, dict] = field(default_factory=dict)


# -- from a Graph --------------------------------------------------------------------------------

def _value_fields(v: Value, const: str | None = None) -> dict[str, str | None]:
    bounds = None
    if v.bounds is not None:
        lo, hi = (np.asarray(b) for b in v.bounds)
        bounds = f"bounds({_tensor(lo, _INLINE, False)}, {_tensor(hi, _INLINE, False)})"
    dims = "?" if v.shape is None else ",".join(str(d) for d in v.shape)
    return {"shape": f"[{dims}]", "dtype": DTYPES.get(v.dtype, v.dtype), "domain": str(v.domain),
            "const": const, "bounds": bounds}


def _origin(origin: tuple) -> str:
    return ", ".join(json.dumps(o) for o in origin) if origin else "()"


def _snapshot_graph(g: Graph) -> _Snapshot:
    s = _Snapshot()
    s.header = {"name": json.dumps(g.name),
                "opset": "(" + ", ".join(f"{json.dumps(k)}={v}" for k, v in sorted(g.opset.items())) + ")",
                "inputs": _list(_name(n) for n in g.inputs), "outputs": _list(_name(n) for n in g.outputs)}
    for n in g.inputs:
        s.values[_name(n)] = _value_fields(g.values[n])
    used = {i for op in g.nx.nodes.values() for i in op["op"].inputs} | set(g.outputs)
    for n in sorted(n for n, v in g.values.items() if v.const is not None and n in used):
        s.values[_name(n)] = _value_fields(g.values[n], _array(g.values[n].const, _INLINE, False))
    for op in g.ops():
        s.ops[op.id] = {"type": op.qualname, "inputs": [_name(i) if i else '%""' for i in op.inputs],
                        "outputs": [_name(o) for o in op.outputs],
                        "attrs": {k: _attr(v, _INLINE, False) for k, v in sorted(op.attrs.items())},
                        "origin": _origin(op.origin)}
        for o in op.outputs:
            s.values[_name(o)] = _value_fields(g.values[o])
    return s


# -- from text -------------------------------------------------------------------------------------

class _Line:
    """One line's tokens with their spans, so fields are sliced verbatim from the line."""

    def __init__(self, line: str, lineno: int):
        self.line, self.lineno, self.toks = line, lineno, []
        pos = 0
        while pos < len(line):
            m = _TOK.match(line, pos)
            if not m:
                self.fail(f"cannot read {line[pos:pos + 20]!r}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group(), m.start(), m.end()))
            pos = m.end()

    def fail(self, msg: str):
        raise ModelStructureError(f"line {self.lineno}: {msg}: {self.line.strip()[:120]}",
                                  hint="diff_text reads the output of print_graph")

    def text(self, i: int) -> str:
        return self.toks[i][1] if i < len(self.toks) else ""

    def punct(self, i: int, chars: str) -> bool:
        return i < len(self.toks) and self.toks[i][0] == "punct" and self.toks[i][1] in chars

    def span(self, i: int, j: int) -> str:
        """The line's text from token i up to (not including) token j."""
        if i >= j:
            return ""
        return self.line[self.toks[i][2]:self.toks[j - 1][3]]

    def close(self, i: int) -> int:
        """Index just past the bracket group opening at token i."""
        depth = 0
        for j in range(i, len(self.toks)):
            if self.punct(j, _OPEN):
                depth += 1
            elif self.punct(j, _CLOSE):
                depth -= 1
                if depth == 0:
                    return j + 1
        self.fail("unbalanced brackets")

    def split(self, i: int, j: int, sep: str = ",") -> list[tuple[int, int]]:
        """Token ranges between depth-0 separators in [i, j)."""
        parts, start, k = [], i, i
        while k < j:
            if self.punct(k, _OPEN):
                k = self.close(k)
                continue
            if self.punct(k, sep):
                parts.append((start, k))
                start = k + 1
            k += 1
        if start < j:
            parts.append((start, j))
        return parts

    def find(self, i: int, text: str, kind: str = "punct") -> int:
        """The first depth-0 token `text` at or after i (len(toks) if none)."""
        k = i
        while k < len(self.toks):
            if self.toks[k][0] == kind and self.toks[k][1] == text:
                return k
            k = self.close(k) if self.punct(k, _OPEN) else k + 1
        return k


def _vtype(ln: _Line, i: int, j: int) -> dict[str, str | None]:
    """`f32[1,64] int[-8:8:2] bounds...` between tokens i and j, split into fields."""
    if not ln.punct(i + 1, "["):
        ln.fail("expected a type like f32[...]")
    k = ln.close(i + 1)
    d = ln.close(k + 1) if ln.text(k) == "int" and ln.punct(k + 1, "[") else k + 1
    return {"shape": ln.span(i + 1, k), "dtype": ln.text(i), "domain": ln.span(k, d), "const": None,
            "bounds": ln.span(d, j) or None}


def _snapshot_text(text: str) -> _Snapshot:
    s = _Snapshot()
    inputs, outputs = [], []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        ln = _Line(raw, lineno)
        head = ln.text(0)
        if head == "graph":
            s.header["name"] = ln.text(1)
            s.header["opset"] = ln.span(3, ln.close(3))
        elif head in ("input", "const"):
            eq = ln.find(3, "=") if head == "const" else len(ln.toks)
            fields = _vtype(ln, 3, eq)
            if head == "const":
                fields["const"] = ln.line[ln.toks[eq][3]:].strip()
            else:
                inputs.append(ln.text(1))
            s.values[ln.text(1)] = fields
        elif head == "output":
            outputs.append(ln.text(1))
        elif head != "}":
            _op_line(ln, s)
    s.header["inputs"], s.header["outputs"] = _list(inputs), _list(outputs)
    return s


def _op_line(ln: _Line, s: _Snapshot) -> None:
    eq = ln.find(0, "=")
    outs = [ln.text(a) for a, _ in ln.split(0, eq)]
    paren = eq + 2
    if not ln.punct(paren, "("):
        ln.fail("expected '(' after the op type")
    end = ln.close(paren)
    ins = [ln.text(a) for a, _ in ln.split(paren + 1, end - 1)]
    attrs = {}
    k = end
    if ln.punct(k, "{"):
        k = ln.close(k)
        for a, b in ln.split(end + 1, k - 1):
            attrs[ln.text(a)] = ln.span(a + 2, b)
    at = ln.find(k, "@")
    types = [_vtype(ln, a, b) for a, b in ln.split(k + 1, at)]
    arrow = ln.find(at, "<-", "arrow")
    id_text = ln.line[ln.toks[at][3]:ln.toks[arrow][2] if arrow < len(ln.toks) else len(ln.line)].strip()
    op_id = json.loads(id_text) if id_text.startswith('"') else id_text
    origin = ln.line[ln.toks[arrow][3]:].strip() if arrow < len(ln.toks) else json.dumps(op_id)
    s.ops[op_id] = {"type": ln.text(eq + 1), "inputs": ins, "outputs": outs,
                    "attrs": dict(sorted(attrs.items())), "origin": origin}
    for o, t in zip(outs, types):
        s.values[o] = t


# -- comparison --------------------------------------------------------------------------------------

def _list(items) -> str:
    return "[" + ", ".join(items) + "]"


def _op_id(op_id: str) -> str:
    return op_id if _NAME.match(op_id) else json.dumps(op_id)


def _op_summary(op: dict) -> str:
    attrs = " {" + ", ".join(f"{k}={v}" for k, v in op["attrs"].items()) + "}" if op["attrs"] else ""
    return f"{op['type']}({', '.join(op['inputs'])}){attrs} -> {', '.join(op['outputs'])}"


def _value_summary(v: dict) -> str:
    s = f"{v['dtype']}{v['shape']} {v['domain']}"
    s += f" {v['bounds']}" if v["bounds"] else ""
    return s + (f" = {v['const']}" if v["const"] is not None else "")


def _compare(a: _Snapshot, b: _Snapshot) -> list[str]:
    lines = [f"~ graph: {k} {a.header.get(k)} -> {b.header.get(k)}"
             for k in ("name", "opset", "inputs", "outputs") if a.header.get(k) != b.header.get(k)]
    lines += [f"- op {_op_id(i)}" for i in a.ops if i not in b.ops]
    lines += [f"+ op {_op_id(i)} {_op_summary(op)}" for i, op in b.ops.items() if i not in a.ops]
    for i, new in b.ops.items():
        old = a.ops.get(i)
        if old is None:
            continue
        head = f"~ op {_op_id(i)}:"
        for k in ("type", "inputs", "outputs"):
            if old[k] != new[k]:
                show = (lambda x: x) if k == "type" else _list
                lines.append(f"{head} {k} {show(old[k])} -> {show(new[k])}")
        for k in sorted(old["attrs"].keys() | new["attrs"].keys()):
            x, y = old["attrs"].get(k, "(none)"), new["attrs"].get(k, "(none)")
            if x != y:
                lines.append(f"{head} attr {k} {x} -> {y}")
        if old["origin"] != new["origin"]:
            lines.append(f"{head} origin {old['origin']} -> {new['origin']}")
    lines += [f"- value {n}" for n in a.values if n not in b.values]
    lines += [f"+ value {n}: {_value_summary(v)}" for n, v in b.values.items() if n not in a.values]
    for n, new in b.values.items():
        old = a.values.get(n)
        if old is None:
            continue
        for k in ("shape", "dtype", "domain", "const", "bounds"):
            if old[k] != new[k]:
                lines.append(f"~ value {n}: {k} {old[k] or '(none)'} -> {new[k] or '(none)'}")
    return lines


def diff_graphs(a: Graph, b: Graph) -> list[str]:
    """The changes from graph `a` to graph `b`, one line each, in a deterministic order."""
    return _compare(_snapshot_graph(a), _snapshot_graph(b))


def diff_text(a_text: str, b_text: str) -> list[str]:
    """The changes between two text dumps (digests allowed), in the same format as `diff_graphs`."""
    return _compare(_snapshot_text(a_text), _snapshot_text(b_text))


def snapshot_text(text: str) -> _Snapshot:
    """A text dump read into what `diff_text` compares: header, values by `%name`, ops by id with
    type, inputs, outputs, attributes and origin as printed (the HTML report draws from it)."""
    return _snapshot_text(text)


def diff_snapshots(a: _Snapshot, b: _Snapshot) -> tuple[list[str], dict[str, list[str]]]:
    """`diff_text`'s lines for two snapshots, and the ids of the ops removed, added and changed,
    decided by the same comparison as the lines (so a viewer highlights what `tamec diff` prints)."""
    ops = {"removed": [i for i in a.ops if i not in b.ops], "added": [i for i in b.ops if i not in a.ops],
           "changed": [i for i, op in b.ops.items() if i in a.ops and a.ops[i] != op]}
    return _compare(a, b), ops

"""Tensor-graph IR: typed values and ops on a networkx DiGraph.

A `Graph` holds `Value`s (name, shape, dtype, domain, optional constant and bounds) and `Op`s
(stable id, op type, op domain, input and output value names, attributes, ONNX provenance). The
DiGraph has one node per op and an edge producer -> consumer for every value between them; the op
lists its inputs in order, the edges only say who depends on whom. Ids and the order ops print in
are stable: each op carries a sort key, and ops a pass inserts take a key next to the op they
replace, so a pass that changes one op changes a few lines of the text form.

Values are SSA: a pass that changes what a tensor holds gives it a new name. `--check` relies on
that to name the first tensor that diverges.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np

from tamec.errors import ModelStructureError

Dim = int | str  # a symbolic dim is its name


@dataclass(frozen=True)
class Domain:
    """The set a tensor's elements lie in.

    `real`; `bipolar` {-1,+1}; `ternary` {-1,0,+1}; `bin01` {0,1}; `int` {lo, lo+step, ..., hi}
    (step 2 is the parity lattice of a sum of +-1 terms).
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    step: int = 1

    KINDS = ("real", "bipolar", "ternary", "bin01", "int")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown domain kind {self.kind!r}")

    @staticmethod
    def integer(lo: float, hi: float, step: int = 1) -> "Domain":
        return Domain("int", float(lo), float(hi), int(step))

    @property
    def is_integer(self) -> bool:
        return self.kind != "real"

    @property
    def is_binary(self) -> bool:
        return self.kind in ("bipolar", "bin01")

    def interval(self) -> tuple[float, float]:
        return {"real": (-math.inf, math.inf), "bipolar": (-1.0, 1.0), "ternary": (-1.0, 1.0),
                "bin01": (0.0, 1.0)}.get(self.kind, (self.lo, self.hi))

    def finite_values(self) -> np.ndarray | None:
        """The elements of a finite domain, sorted; None for `real`."""
        if self.kind == "real":
            return None
        if self.kind == "int":
            return np.arange(self.lo, self.hi + 0.5, self.step)
        return np.array({"bipolar": [-1.0, 1.0], "ternary": [-1.0, 0.0, 1.0],
                         "bin01": [0.0, 1.0]}[self.kind])

    def contains(self, a: np.ndarray) -> bool:
        a = np.asarray(a, dtype=np.float64)
        if self.kind == "real":
            return True
        if not np.all(np.isfinite(a)):
            return False
        if self.kind == "int":
            k = (a - self.lo) / self.step
            return bool(np.all((a >= self.lo) & (a <= self.hi) & (k == np.round(k))))
        return bool(np.all(np.isin(a, self.finite_values())))

    @staticmethod
    def of_array(a: np.ndarray) -> "Domain":
        """The tightest named domain holding every element of a constant."""
        a = np.asarray(a)
        if a.size == 0 or a.dtype.kind not in "biuf":
            return REAL
        x = a.astype(np.float64)
        if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
            return REAL
        vals = set(np.unique(x).tolist())
        for d in (BIPOLAR, BIN01, TERNARY):
            if vals <= set(d.finite_values().tolist()):
                return d
        return Domain.integer(min(vals), max(vals))

    def __str__(self) -> str:
        if self.kind != "int":
            return self.kind
        step = f":{self.step}" if self.step != 1 else ""
        return f"int[{_num(self.lo)}:{_num(self.hi)}{step}]"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


REAL, BIPOLAR, TERNARY, BIN01 = Domain("real"), Domain("bipolar"), Domain("ternary"), Domain("bin01")


@dataclass
class Value:
    """A tensor: name, shape (ints, or str for symbolic dims; None if unknown), numpy dtype
    name, domain, and for constants the data. `bounds` is an elementwise (lo, hi) pair set by the
    `bounds` pass, broadcastable to the shape without its batch dim."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str
    domain: Domain = REAL
    const: np.ndarray | None = None
    bounds: tuple[np.ndarray, np.ndarray] | None = None
    bounds_source: str = ""  # "interval" or "lp-tightened": where big-M values come from

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Value):
            return NotImplemented
        return (self.name, self.shape, self.dtype, self.domain) == (
            other.name, other.shape, other.dtype, other.domain) and _arr_eq(
            self.const, other.const) and _bounds_eq(self.bounds, other.bounds)


def _arr_eq(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _bounds_eq(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return _arr_eq(a[0], b[0]) and _arr_eq(a[1], b[1])


def _attr_eq(x, y) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and _arr_eq(x, y)
    if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
        return isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y) \
            and all(_attr_eq(a, b) for a, b in zip(x, y))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True  # an attribute equals itself, NaN included
    return type(x) is type(y) and x == y or (isinstance(x, (int, float)) and isinstance(y, (int, float))
                                             and not isinstance(x, bool) and not isinstance(y, bool) and x == y)


def attrs_equal(a: dict, b: dict) -> bool:
    """Attribute dicts equal value by value (arrays elementwise, NaN equal to NaN)."""
    return a.keys() == b.keys() and all(_attr_eq(a[k], b[k]) for k in a)


@dataclass
class Op:
    """One operation. `domain` is the ONNX op domain ('' standard, 'tamec' for tamec's own ops);
    `origin` names the ONNX nodes it was made from (provenance, kept through every rewrite)."""

    id: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    origin: tuple[str, ...] = ()

    @property
    def qualname(self) -> str:
        return f"{self.domain}.{self.op_type}" if self.domain else self.op_type

    def __eq__(self, other) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        return (self.id, self.op_type, self.inputs, self.outputs, self.domain, self.origin) == (
            other.id, other.op_type, other.inputs, other.outputs, other.domain, other.origin
        ) and attrs_equal(self.attrs, other.attrs)


class Graph:
    """Values and ops of one model. Mutate only through the methods, which keep the DiGraph,
    the producer map and the use lists in step."""

    def __init__(self, name: str = "graph", opset: dict[str, int] | None = None):
        self.name = name
        self.opset: dict[str, int] = dict(opset or {"": 13})
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.values: dict[str, Value] = {}
        self.nx = nx.DiGraph()
        self._producer: dict[str, str] = {}
        self._users: dict[str, list[str]] = {}
        self._key: dict[str, tuple] = {}
        self._next_key = 0

    # -- values -------------------------------------------------------------------------------
    def add_value(self, v: Value) -> Value:
        if v.name in self.values:
            raise ModelStructureError(f"value {v.name!r} defined twice", hint="names must be unique")
        if v.const is not None:
            v.const = np.asarray(v.const)
            v.const.flags.writeable = False  # constants are shared between graph copies
        self.values[v.name] = v
        self._users.setdefault(v.name, [])
        return v

    def value(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise ModelStructureError(f"value {name!r} is used but never defined") from None

    def const(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        return None if v is None else v.const

    def add_const(self, name: str, data: np.ndarray, domain: Domain | None = None) -> Value:
        data = np.asarray(data)
        return self.add_value(Value(name, tuple(data.shape), data.dtype.name,
                                    domain or Domain.of_array(data), const=data))

    def fresh_name(self, base: str) -> str:
        """A value or op name not used yet, derived deterministically from `base`."""
        if base not in self.values and base not in self.nx:
            return base
        k = 1
        while f"{base}.{k}" in self.values or f"{base}.{k}" in self.nx:
            k += 1
        return f"{base}.{k}"

    def remove_value(self, name: str) -> None:
        if self._users.get(name) or name in self._producer or name in self.outputs:
            raise ModelStructureError(f"value {name!r} is still in use")
        self.values.pop(name, None)
        self._users.pop(name, None)

    # -- ops ----------------------------------------------------------------------------------
    def add_op(self, op: Op, near: str | None = None) -> Op:
        """Insert `op`; its outputs must be values already added and not produced elsewhere.
        `near` names an op whose print position the new op should take (just after it)."""
        if op.id in self.nx:
            raise ModelStructureError(f"op id {op.id!r} used twice", node=op.id)
        for o in op.outputs:
            if o not in self.values:
                raise ModelStructureError(f"output {o!r} of op {op.id!r} has no value", node=op.id)
            if o in self._producer:
                raise ModelStructureError(
                    f"value {o!r} produced by both {self._producer[o]!r} and {op.id!r}", node=op.id)
        for i in op.inputs:
            if i and i not in self.values:
                raise ModelStructureError(f"input {i!r} of op {op.id!r} is never defined", node=op.id)
        if near is not None:
            base = self._key[near]
            k = 1
            while any(v[:len(base) + 1] == (*base, k) for v in self._key.values()):
                k += 1
            self._key[op.id] = (*base, k)
        else:
            self._key[op.id] = (self._next_key,)
            self._next_key += 1
        self.nx.add_node(op.id, op=op)
        for o in op.outputs:
            self._producer[o] = op.id
            for u in self._users.get(o, []):
                self.nx.add_edge(op.id, u)
        self._link_inputs(op)
        return op

    def _link_inputs(self, op: Op) -> None:
        for i in op.inputs:
            if not i:
                continue
            if op.id not in self._users[i]:
                self._users[i].append(op.id)
            if i in self._producer:
                self.nx.add_edge(self._producer[i], op.id)

    def _unlink_inputs(self, op: Op) -> None:
        for i in set(op.inputs):
            if not i:
                continue
            if op.id in self._users.get(i, []):
                self._users[i].remove(op.id)
            p = self._producer.get(i)
            if p is not None and self.nx.has_edge(p, op.id):
                self.nx.remove_edge(p, op.id)

    def remove_op(self, op_id: str, drop_outputs: bool = True) -> Op:
        op = self.op(op_id)
        self._unlink_inputs(op)
        for o in op.outputs:
            del self._producer[o]
        self.nx.remove_node(op_id)
        del self._key[op_id]
        if drop_outputs:
            for o in op.outputs:
                if not self._users.get(o) and o not in self.outputs:
                    self.values.pop(o, None)
                    self._users.pop(o, None)
        return op

    def set_inputs(self, op_id: str, inputs: list[str]) -> None:
        op = self.op(op_id)
        self._unlink_inputs(op)
        op.inputs = list(inputs)
        for i in op.inputs:
            if i and i not in self.values:
                raise ModelStructureError(f"input {i!r} of op {op_id!r} is never defined", node=op_id)
        self._link_inputs(op)

    def replace_all_uses(self, old: str, new: str) -> None:
        """Every consumer of `old` (and the graph outputs) reads `new` instead."""
        for u in list(self._users.get(old, [])):
            op = self.op(u)
            self.set_inputs(u, [new if i == old else i for i in op.inputs])
        self.outputs = [new if o == old else o for o in self.outputs]

    def rename_value(self, old: str, new: str) -> None:
        """Give value `old` the unused name `new` everywhere it appears."""
        if new in self.values:
            raise ModelStructureError(f"cannot rename {old!r} to {new!r}: name taken")
        v = self.values.pop(old)
        v.name = new
        self.values[new] = v
        users = self._users.pop(old, [])
        self._users[new] = users
        for u in users:
            op = self.op(u)
            op.inputs = [new if i == old else i for i in op.inputs]
        if old in self._producer:
            p = self._producer.pop(old)
            self._producer[new] = p
            op = self.op(p)
            op.outputs = [new if o == old else o for o in op.outputs]
        self.inputs = [new if i == old else i for i in self.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def op(self, op_id: str) -> Op:
        try:
            return self.nx.nodes[op_id]["op"]
        except KeyError:
            raise ModelStructureError(f"no op {op_id!r}") from None

    def producer(self, value: str) -> Op | None:
        p = self._producer.get(value)
        return None if p is None else self.nx.nodes[p]["op"]

    def users(self, value: str) -> list[Op]:
        return [self.nx.nodes[u]["op"] for u in sorted(self._users.get(value, []), key=self._key.get)]

    def ops(self) -> list[Op]:
        """Ops in a deterministic topological order (stable sort keys break ties)."""
        try:
            order = nx.lexicographical_topological_sort(self.nx, key=self._key.get)
            return [self.nx.nodes[n]["op"] for n in order]
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self.nx)
            raise ModelStructureError(
                "graph has a cycle through ops " + " -> ".join(a for a, _ in cycle),
                node=cycle[0][0], hint="ONNX graphs must be acyclic") from None

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.nx.nodes.values():
            q = op["op"].qualname
            counts[q] = counts.get(q, 0) + 1
        return dict(sorted(counts.items()))

    # -- whole-graph ----------------------------------------------------------------------------
    def copy(self) -> "Graph":
        """A copy safe to mutate; constant arrays are shared (they are read-only)."""
        g = Graph(self.name, self.opset)
        g.inputs, g.outputs = list(self.inputs), list(self.outputs)
        g.values = {k: dataclasses.replace(v) for k, v in self.values.items()}
        g.nx = nx.DiGraph()
        for n, data in self.nx.nodes(data=True):
            op = data["op"]
            g.nx.add_node(n, op=dataclasses.replace(op, inputs=list(op.inputs), outputs=list(op.outputs),
                                                     attrs=copy.copy(op.attrs)))
        g.nx.add_edges_from(self.nx.edges)
        g._producer = dict(self._producer)
        g._users = {k: list(v) for k, v in self._users.items()}
        g._key = dict(self._key)
        g._next_key = self._next_key
        return g

    def prune(self) -> int:
        """Drop ops and values nothing reaches the outputs through; return how many ops."""
        live_vals = set(self.outputs)
        live_ops: set[str] = set()
        for op in reversed(self.ops()):
            if any(o in live_vals for o in op.outputs):
                live_ops.add(op.id)
                live_vals.update(i for i in op.inputs if i)
        dead = [n for n in self.nx.nodes if n not in live_ops]
        for n in dead:
            self.remove_op(n)
        for name in list(self.values):
            if name not in live_vals and name not in self.inputs and not self._users.get(name) \
                    and name not in self._producer:
                self.values.pop(name)
                self._users.pop(name, None)
        return len(dead)

    def structurally_equal(self, other: "Graph") -> bool:
        return (self.name, self.opset, self.inputs, self.outputs) == (
            other.name, other.opset, other.inputs, other.outputs) and self.values == other.values \
            and self.ops() == other.ops()

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and self.structurally_equal(other)

    __hash__ = None  # mutable


def iter_consts(g: Graph) -> Iterable[Value]:
    return (v for v in g.values.values() if v.const is not None)

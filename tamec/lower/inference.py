"""Inference-mode lowering: the compiled graph IR -> a MipModule whose feasible set is exactly the
set of (input, activations, output) the network computes for inputs in their box.

Partition: one block per binarized layer, i.e. the ops from the previous block's output (or a
graph input) up to and including a `tamec.Threshold`; the ops in between may be `tamec.Linear`,
`Conv`, `Add`/`Sub`/`Mul`/`Div`/`Neg` by constants (`Add`/`Sub` of two affine tensors too),
`BatchNormalization`, reshapes (`Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`, `Identity`),
`Transpose`, `MaxPool` of a binary or ternary tensor, and the piecewise-linear ops `Relu`,
`LeakyRelu`, `Abs`, `Clip`, `HardSigmoid`, `Max`, `Min`. Then one head block: every op after the
last threshold (affine or piecewise linear). A `Softmax`/`LogSoftmax` whose output is a graph output is not
lowered: argmax is order-preserving, so the head ends at the logits (recorded in the specs and in
`MipModule.meta["not_lowered"]`; `meta["outputs"][graph output]` names the logits' groups).

Each block, for one example (batch dim dropped):
  affine chain   composed into one sparse map s = M x + c per pre-activation (scipy.sparse
                 products of per-op matrices: Linear W (Kronecker with I over leading dims),
                 Conv as a Toeplitz matrix from index arithmetic, BN/Add/Mul as diagonals,
                 reshapes as the identity, Transpose as a permutation). x is the input group's
                 tensor: bipolar 2v - 1, ternary p - n, else the variable itself. BatchNorm's
                 coefficients are computed as the evaluator (and ONNX Runtime) compute them, in
                 the tensor's dtype, then used in float64. Rows "linear": s - M x = c.
  threshold      per neuron, with [L, U] from Value.bounds of s and its lattice (int domains;
                 real s has none): `a` is the smallest reachable s on the upper side, `b` the
                 largest on the lower side. On a lattice those are the lattice points next to
                 tau, or tau itself on the side its tie value belongs to. For real s, the side
                 holding the tie is closed (s >= tau or s <= tau) and the strict side is
                 s >= tau + e or s <= tau - e with e = max(eps, rel_eps * (U - L)):
                 pre-activations strictly between tau and tau +- e are excluded from the
                 feasible set (a MIP has no strict inequalities). e grows with the neuron's
                 interval because a solver's integrality tolerance (HiGHS: 1e-6) lets a
                 big-M row slide by about 1e-6 * M; rel_eps = 1e-5 keeps the gap 10x wider, so
                 the strict side holds in the solutions HiGHS returns (with e = 1e-6 flat it
                 does not: the soundness tests see wrong tie sides). The e used is in
                 Block.meta["eps_max"].
                 Two-level outputs (bipolar, bin01) have one binary u (u = 1 iff the output is
                 the level 1) and big-M rows s - (a - L) z >= L, s - (U - b) z <= b with z the
                 upper-side indicator (z = u, or 1 - u where flip puts level 1 below tau).
                 Ternary outputs (ONNX Sign, tie 0) have binaries p (output +1) and n (-1),
                 p + n <= 1 ("exclusive"; = 1 where the tie is unreachable) and, with g / l the
                 indicators of s > tau / s < tau (p or n by flip), the two rows
                   s >= tau + (a - tau) g - (tau - L) l,   s <= tau + (U - tau) g - (tau - b) l
                 which are exact at the three states (tau, a.., ..b) and dominate the four
                 single-indicator big-M rows. Neurons whose reachable states give one level
                 (stable: the interval excludes tau; constant: tau NaN or +-inf) have their
                 output fixed by its bounds and no big-M row. An unstable neuron with an
                 infinite L or U is an UnsupportedModelError asking for --input-bounds.
  MaxPool        of a bipolar/bin01 tensor: an OR, y >= x_i and y <= sum x_i; of a ternary one:
                 max = +1 iff some element is +1 (OR of the p bits), -1 iff all are -1 (AND of
                 the n bits: n <= n_i, n >= sum n_i - (k - 1)). Padding never wins a max. Exact.
  piecewise      Relu, LeakyRelu, Abs, Clip, HardSigmoid, Max and Min are compositions of one
  linear         primitive, y = max(a, b) or min(a, b) elementwise with a, b affine: Relu max(x, 0),
                 LeakyRelu max(x, alpha x) (min for alpha > 1), Abs max(x, -x), Clip
                 min(max(x, lo), hi), HardSigmoid min(max(alpha x + beta, 0), 1), Max/Min folded
                 over their inputs (broadcast). With [L, U] the interval of d = a - b, read from
                 the bounds of the operands' groups (the values' bounds, as thresholds read
                 theirs): where the interval proves one side (L >= 0 or U <= 0 for max) the
                 element is stable, y = a or y = b by an equality row and no binary; else one
                 binary z per element (z = 1: y = a) and, for max, the hull rows y >= a, y >= b
                 with y <= a - L (1 - z), y <= b + U z (the mirror for min): exact, y is unique
                 at d = 0 too. An unstable element with an infinite L or U is an
                 UnsupportedModelError naming the node and asking for --input-bounds. The
                 intermediate of a two-kink op (Clip, HardSigmoid, Max/Min of 3+ inputs) is a
                 continuous group encoding no graph value. Block.meta counts "kinks" (binaries)
                 and "kinks_stable".
  head           every real (non-binary) tensor is a continuous group defined by equality rows.

Groups, links and meta follow the MIP-IR conventions (tamec/ir/mip.py): group V (or V+ and V-)
encodes graph value V; a block's inputs are copies of the producing block's groups, joined by
`Link`s; `meta["inputs"]`, `meta["outputs"]`, `meta["values"]` map graph names to the owning
(block, group) pairs (the producing block, or for graph inputs the first consuming block).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tamec.errors import InputError, ModelStructureError, UnsupportedModelError
from tamec.ir.graph import Graph, Op, Value
from tamec.ir.mip import Block, Link, Milp, MipModule, VarGroup
from tamec.ops import attach, require
from tamec.ops.conv import window
from tamec.ops.threshold import ThresholdParams

AFFINE_OPS = frozenset({"tamec.Linear", "Conv", "Add", "Sub", "Mul", "Div", "Neg", "BatchNormalization"})
RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# elementwise piecewise-linear ops: max/min of affine pieces, one binary per element that can
# cross a kink (see "piecewise linear" above)
PWL_OPS = frozenset({"Relu", "LeakyRelu", "Abs", "Clip", "HardSigmoid", "Max", "Min"})
BLOCK_OPS = AFFINE_OPS | RESHAPE_OPS | PWL_OPS | {"Transpose", "MaxPool", "tamec.Threshold"}
TAIL_OPS = frozenset({"Softmax", "LogSoftmax"})
# The lower-mip stage of the op registry.
attach("lower-mip", sorted(BLOCK_OPS - PWL_OPS - {"MaxPool"}), None, how="exact rows")
attach("lower-mip", sorted(PWL_OPS), None, how="a binary per kink (big-M), none where the bounds prove a side")
attach("lower-mip", ["MaxPool"], None, how="exact OR rows (binary/ternary input only)")
attach("lower-mip", sorted(TAIL_OPS), None, how="final op only: left out of the MIP (argmax-invariant)")
_BINARY_KINDS = ("bipolar", "bin01", "ternary")
# HiGHS accepts integrality violations up to 1e-6 (mip_feasibility_tolerance): u = 1e-6 moves a
# big-M row by 1e-6 * M, so a strict side closer to tau than that is not enforced in the
# solutions it returns. The gap is kept ten times wider.
REL_EPS = 1e-5


def _supported() -> str:
    return (", ".join(sorted(BLOCK_OPS)) + " (MaxPool of binary/ternary tensors only; Mul/Div by constants; "
            "Clip with constant min/max); Softmax/LogSoftmax only as the final op")


@dataclass
class BlockSpec:
    """One block of the partition: kind "binarized" (ends in a Threshold) or "head"; its ops (ids,
    topological order), its input and output values; on the last block, the final Softmax-like
    ops left out of the MIP (`not_lowered`: they read its outputs)."""

    name: str
    kind: str
    ops: list[str]
    inputs: list[str]
    outputs: list[str]
    not_lowered: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> "BlockSpec":
        return BlockSpec(**d)


# ------------------------------------------------------------------------------------------------
# partition
# ------------------------------------------------------------------------------------------------
def partition(graph: Graph) -> list[BlockSpec]:
    """One block per binarized layer (ops up to and including each Threshold), then a head block
    with everything after the last threshold; raises UnsupportedModelError on any op the MIP
    lowering cannot encode exactly."""
    g = graph
    ops = g.ops()
    tail = _tail_ops(g, ops)
    require([op for op in ops if op.id not in tail], "lower-mip", what="the MIP lowering",
            hint=f"the MIP lowering supports {_supported()}; remove or replace these ops, or stop the "
                 "pipeline before partition")
    groups: list[list[Op]] = [[]]
    for op in ops:
        if op.id in tail:
            continue
        _check_lowerable(g, op)
        groups[-1].append(op)
        if op.qualname == "tamec.Threshold":
            groups.append([])
    specs: list[BlockSpec] = []
    n_bin = len(groups) - 1
    for k, members in enumerate(groups):
        head = k == n_bin
        if head and not members:
            break
        specs.append(BlockSpec(f"layer{k}" if not head else "head", "head" if head else "binarized",
                               [op.id for op in members], [], []))
    if tail and specs:  # recorded on the last block: its outputs are the logits they read
        specs[-1].not_lowered = [op.id for op in ops if op.id in tail]
    where = {op_id: k for k, s in enumerate(specs) for op_id in s.ops}
    for k, s in enumerate(specs):
        seen = set()
        for op_id in s.ops:
            op = g.op(op_id)
            for i in op.inputs:
                if i and g.const(i) is None and where.get(_producer_id(g, i), -1) != k and i not in seen:
                    seen.add(i)
                    s.inputs.append(i)
        for op_id in s.ops:
            for o in g.op(op_id).outputs:
                if not o:
                    continue
                users = [u.id for u in g.users(o)]
                if o in g.outputs or any(where.get(u) != k for u in users):
                    s.outputs.append(o)
    return specs


def _producer_id(g: Graph, v: str) -> str | None:
    p = g.producer(v)
    return None if p is None else p.id


def _origin(op: Op) -> str:
    src = ", ".join(op.origin) if op.origin else "none recorded"
    return f"ONNX node(s): {src}; the MIP lowering supports {_supported()}"


def _tail_ops(g: Graph, ops: list[Op]) -> set[str]:
    """Softmax/LogSoftmax ops at the very end: their outputs are graph outputs nothing else reads."""
    return {op.id for op in ops if op.op_type in TAIL_OPS and not op.domain
            and all(o in g.outputs and not g.users(o) for o in op.outputs if o)}


def _check_lowerable(g: Graph, op: Op) -> None:
    q = op.qualname
    if q not in BLOCK_OPS:  # the registry's lower-mip stage: refused by name, with the ONNX node
        raise UnsupportedModelError(f"op {q} cannot be lowered to the MIP IR", node=op.id, op=q, hint=_origin(op))
    data = [i for i in op.inputs if i and g.const(i) is None]
    bad = None
    if not data:
        bad = "all its inputs are constants (run canonicalize, which folds them)"
    elif q in ("tamec.Linear", "Conv") and (len(data) != 1 or data[0] != op.inputs[0]):
        bad = "its weights and bias must be constants (inference mode: weights are fixed)"
    elif q in ("Mul", "Div") and len(data) != 1:
        bad = "a product of two variable tensors is not linear"
    elif q == "Div" and data[0] != op.inputs[0]:
        bad = "division by a variable tensor is not linear"
    elif q == "BatchNormalization" and (len(data) != 1 or data[0] != op.inputs[0]):
        bad = "its parameters must be constants"
    elif q == "MaxPool":
        if g.values[op.inputs[0]].domain.kind not in _BINARY_KINDS:
            bad = "MaxPool is lowered only on binary or ternary tensors (where it is an OR)"
        elif len(op.outputs) > 1 and op.outputs[1]:
            bad = "the Indices output of MaxPool is not supported"
    elif q == "Clip" and data != [op.inputs[0]]:
        bad = "its min and max must be constants"
    elif q in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Neg", "tamec.Threshold",
               "Relu", "LeakyRelu", "Abs", "HardSigmoid") and len(data) != 1:
        bad = "it needs exactly one variable input"
    if bad:
        raise UnsupportedModelError(f"op {q} cannot be lowered: {bad}", node=op.id, op=q, hint=_origin(op))


# ------------------------------------------------------------------------------------------------
# affine expressions over a block's variable groups
# ------------------------------------------------------------------------------------------------
@dataclass
class _Aff:
    """A tensor (flattened, one example) as sum_g parts[g] @ x_g + c; `view` = (materialized
    tensor, index map) when the tensor only re-indexes a materialized one; `ops`/`origin` are
    the ops folded into it (for row provenance)."""

    parts: dict[str, sp.csr_matrix]
    c: np.ndarray
    view: tuple[str, np.ndarray] | None = None
    ops: tuple[str, ...] = ()
    origin: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.c.size)

    def map(self, T: sp.spmatrix, d: np.ndarray | float = 0.0, op: Op | None = None, view=None) -> "_Aff":
        T = sp.csr_matrix(T)
        parts = {k: sp.csr_matrix(T @ m) for k, m in self.parts.items()}
        return _Aff(parts, T @ self.c + d, view, *_prov(self, op))


def _sub(a: _Aff, b: _Aff) -> _Aff:
    """a - b (same size)."""
    parts = dict(a.parts)
    for k, m in b.parts.items():
        parts[k] = parts[k] - m if k in parts else -m
    return _Aff(parts, a.c - b.c)


def _prov(e: _Aff, op: Op | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if op is None:
        return e.ops, e.origin
    return e.ops + (op.id,), tuple(dict.fromkeys(e.origin + op.origin))


@dataclass
class _Mat:
    """A tensor materialized as variable groups: encoding "value" (continuous/integer/bin01
    binary), "bipolar" (2v - 1) or "ternary" (groups p, n: p - n)."""

    name: str
    encoding: str
    groups: list[str]
    n: int

    def aff(self) -> _Aff:
        eye = sp.identity(self.n, format="csr")
        if self.encoding == "ternary":
            return _Aff({self.groups[0]: eye, self.groups[1]: -eye}, np.zeros(self.n), (self.name, np.arange(self.n)))
        if self.encoding == "bipolar":
            return _Aff({self.groups[0]: 2 * eye}, -np.ones(self.n), (self.name, np.arange(self.n)))
        return _Aff({self.groups[0]: eye}, np.zeros(self.n), (self.name, np.arange(self.n)))


def _ex_shape(v: Value) -> tuple[int, ...]:
    """The value's shape without its batch dim (ints only)."""
    if not v.shape:
        raise UnsupportedModelError(f"value %{v.name} has no batch dimension or unknown shape",
                                    hint="the MIP lowering needs every tensor's shape (batch dim first)")
    rest = tuple(v.shape[1:])
    if any(not isinstance(d, (int, np.integer)) for d in rest):
        raise UnsupportedModelError(f"value %{v.name} has symbolic dims {list(v.shape)} past the batch dim",
                                    hint="export the model with fixed sizes except the batch")
    return tuple(int(d) for d in rest)


def _size(v: Value) -> int:
    return int(np.prod(_ex_shape(v), dtype=np.int64))


def _encoding(v: Value) -> str:
    k = v.domain.kind
    return {"bipolar": "bipolar", "bin01": "bin01", "ternary": "ternary", "int": "int"}.get(k, "real")


def _per_elem(a, full_shape: tuple[int, ...], axis: int) -> np.ndarray:
    """A scalar or per-channel attribute along `axis` of the batched shape, one per element of
    one example (flattened), as the evaluator aligns it."""
    a = np.asarray(a)
    nd = len(full_shape)
    if a.size == 1:
        out = np.broadcast_to(a.reshape(()), full_shape)
    else:
        axis %= nd
        lead = (-1,) if a.ndim == 1 else a.shape
        al = a.reshape(lead + (1,) * (nd - axis - len(lead)))
        out = np.broadcast_to(al, full_shape)
    return np.ascontiguousarray(out[0]).reshape(-1)


def _const_elems(c: np.ndarray, out_ex: tuple[int, ...]) -> np.ndarray:
    """A constant operand broadcast to one example of the output (batch dim 1 in front)."""
    c = np.asarray(c, np.float64)
    full = (1,) + out_ex
    return np.ascontiguousarray(np.broadcast_to(c, full)[0]).reshape(-1)


def _broadcast_sel(in_ex: tuple[int, ...], out_ex: tuple[int, ...]) -> sp.csr_matrix | None:
    """The selection matrix that broadcasts a data tensor to the output shape (None if equal)."""
    if in_ex == out_ex:
        return None
    idx = np.broadcast_to(np.arange(int(np.prod(in_ex, dtype=np.int64))).reshape((1,) + in_ex), (1,) + out_ex)
    idx = np.ascontiguousarray(idx[0]).reshape(-1)
    n_in = int(np.prod(in_ex, dtype=np.int64))
    return sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n_in))


def _window_index(attrs: dict, in_sp: tuple[int, ...], kernel: list[int], ceil_mode: bool = False):
    """(out spatial shape, (P, K) array of the flat input spatial index each output position p
    reads at kernel offset k, or -1 in the padding), by ONNX's window rules (the evaluator's)."""

    w = window(attrs, in_sp, list(kernel), ceil_mode)
    nd = len(in_sp)
    o = np.indices(w.out).reshape(nd, -1)  # (nd, P)
    k = np.indices(kernel).reshape(nd, -1)  # (nd, K)
    st, dl, hd = (np.asarray(v).reshape(nd, 1, 1) for v in (w.strides, w.dilations, w.head))
    coord = o[:, :, None] * st - hd + k[:, None, :] * dl  # (nd, P, K)
    sizes = np.asarray(in_sp).reshape(nd, 1, 1)
    valid = np.all((coord >= 0) & (coord < sizes), axis=0)
    flat = np.ravel_multi_index(tuple(np.clip(coord, 0, sizes - 1)), in_sp)
    return tuple(w.out), np.where(valid, flat, -1)


def _conv_matrix(w: np.ndarray, attrs: dict, in_ex: tuple[int, ...]) -> tuple[sp.csr_matrix, tuple[int, ...]]:
    """Conv as a sparse (M*P) x (C*Q) Toeplitz matrix, built by index arithmetic."""
    m, cg = w.shape[:2]
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    c, in_sp = in_ex[0], tuple(in_ex[1:])
    group = int(attrs.get("group", 1))
    if c != cg * group or m % group:
        raise ModelStructureError(f"Conv weight {w.shape} with group={group} does not fit {c} input channels")
    out_sp, pos = _window_index(attrs, in_sp, kernel)
    P, K = pos.shape
    Q = int(np.prod(in_sp, dtype=np.int64))
    wk = w.reshape(m, cg, K).astype(np.float64)
    rows, cols, vals = [], [], []
    mm = np.arange(m)[:, None, None]
    cc = (mm // (m // group)) * cg + np.arange(cg)[None, :, None]  # absolute input channel, (m, cg, 1)
    pp = np.arange(P)[None, None, :]
    for kk in range(K):  # one kernel offset at a time keeps memory at M*Cg*P
        q = pos[:, kk][None, None, :]
        wv = wk[:, :, kk][:, :, None]
        ok = (q >= 0) & (wv != 0)
        ok = np.broadcast_to(ok, (m, cg, P))
        rows.append(np.broadcast_to(mm * P + pp, (m, cg, P))[ok])
        cols.append(np.broadcast_to(cc * Q + q, (m, cg, P))[ok])
        vals.append(np.broadcast_to(wv, (m, cg, P))[ok])
    T = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m * P, c * Q))
    return T, (m,) + out_sp


def _sel(idx: np.ndarray, n: int) -> sp.csr_matrix:
    """Rows picking entries `idx` of a length-n vector."""
    idx = np.asarray(idx, np.int64)
    return sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n))


def _diag(d: np.ndarray) -> sp.csr_matrix:
    return sp.diags(np.asarray(d, np.float64), format="csr")


# ------------------------------------------------------------------------------------------------
# one block
# ------------------------------------------------------------------------------------------------
class _BlockLowering:
    """Builds one inference Block from its spec."""

    def __init__(self, g: Graph, spec: BlockSpec, owners: dict, blocks: dict, eps: float, rel_eps: float,
                 bounds_source, float_slack: dict | None = None, float_grid: dict | None = None):
        self.g, self.spec, self.eps, self.rel_eps = g, spec, eps, rel_eps
        self.float_slack, self.float_grid = float_slack or {}, float_grid or {}
        self.owners, self.blocks = owners, blocks
        self.bounds_source = bounds_source
        self.block = Block(spec.name, "inference", tuple(spec.ops))
        self.env: dict[str, _Aff] = {}
        self.mats: dict[str, _Mat] = {}
        self.links: list[Link] = []
        self.produced: list[str] = []  # values this block owns (meta["values"])
        self.info: dict = {"kind": spec.kind, "neurons": 0, "stable": 0, "unstable": 0, "constant": 0}

    # -- variables --------------------------------------------------------------------------
    def _fresh(self, name: str) -> str:
        taken = {v.name for v in self.block.vars}
        if name not in taken:
            return name
        k = 1
        while f"{name}#{k}" in taken:
            k += 1
        return f"{name}#{k}"

    def _bounds(self, v: Value, n: int) -> tuple[np.ndarray, np.ndarray]:
        dlo, dhi = v.domain.interval()
        lo, hi = np.full(n, dlo, np.float64), np.full(n, dhi, np.float64)
        if v.bounds is not None:
            ex = _ex_shape(v)
            blo = np.broadcast_to(np.asarray(v.bounds[0], np.float64), ex).reshape(-1)
            bhi = np.broadcast_to(np.asarray(v.bounds[1], np.float64), ex).reshape(-1)
            lo, hi = np.maximum(lo, blo), np.minimum(hi, bhi)
        return lo, hi

    def new_mat(self, name: str, role: str, *, integer: bool = False, like: list[VarGroup] | None = None) -> _Mat:
        """Variable groups for value `name` by its domain (or copies of the groups `like`);
        `integer`: an int-domain value gets integer variables (graph inputs), else continuous."""
        v = self.g.values[name]
        n, shape = _size(v), _ex_shape(v)
        enc = _encoding(v)
        if like is not None:
            groups = []
            for src in like:
                gv = dataclasses.replace(src, lb=src.lb.copy(), ub=src.ub.copy(), role=role)
                self.block.add_vars(gv)
                groups.append(gv.name)
            enc_l = "ternary" if len(groups) == 2 else ("bipolar" if like[0].encoding == "bipolar" else "value")
            mat = _Mat(name, enc_l, groups, n)
        elif enc == "ternary":
            p, q = self._fresh(name + "+"), self._fresh(name + "-")
            self.block.add_vars(VarGroup(p, shape, "binary", 0, 1, role, name, "pos"))
            self.block.add_vars(VarGroup(q, shape, "binary", 0, 1, role, name, "neg"))
            mat = _Mat(name, "ternary", [p, q], n)
        elif enc in ("bipolar", "bin01"):
            gname = self._fresh(name)
            self.block.add_vars(VarGroup(gname, shape, "binary", 0, 1, role, name,
                                         "bipolar" if enc == "bipolar" else "value"))
            mat = _Mat(name, "bipolar" if enc == "bipolar" else "value", [gname], n)
        else:
            lo, hi = self._bounds(v, n)
            kind = "integer" if integer and enc == "int" else "continuous"
            if kind == "integer" and not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
                kind = "continuous"
            gname = self._fresh(name)
            self.block.add_vars(VarGroup(gname, shape, kind, lo, hi, role, name, "value"))
            mat = _Mat(name, "value", [gname], n)
        return mat

    def exclusive(self, mat: _Mat, lo, op: Op | None, name: str | None = None) -> None:
        p, q = mat.groups
        eye = sp.identity(mat.n, format="csr")
        self.block.add_rows(name or f"{mat.name}:exclusive", {p: eye, q: eye}, lo, 1.0, kind="exclusive",
                            op=op.id if op else "", origin=op.origin if op else ())

    # -- inputs -------------------------------------------------------------------------------
    def add_inputs(self) -> None:
        for name in self.spec.inputs:
            v = self.g.values[name]
            if name in self.owners:
                ob, ogroups = self.owners[name]
                src = [self.blocks[ob].group(gn) for gn in ogroups]
                mat = self.new_mat(name, "input", like=src)
                for s, d in zip(ogroups, mat.groups):
                    self.links.append(Link(ob, s, self.spec.name, d))
            else:  # a graph input (or a value nothing lowered produces): this block owns it
                mat = self.new_mat(name, "input", integer=True)
                if mat.encoding == "ternary":
                    self.exclusive(mat, 0.0, None)
                self.owners[name] = (self.spec.name, list(mat.groups))
                self.produced.append(name)
                if v.bounds is None and v.domain.kind == "real" and name in self.g.inputs:
                    self.info.setdefault("unbounded_inputs", []).append(name)
            self.mats[name] = mat
            self.env[name] = mat.aff()
            self.block.inputs += mat.groups

    # -- materializing ------------------------------------------------------------------------
    def materialize(self, name: str, role: str = "internal") -> _Mat:
        """Give value `name` its own groups, tied to its affine expression by equality rows."""
        if name in self.mats:
            return self.mats[name]
        e = self.env[name]
        mat = self.new_mat(name, role)
        d = _sub(mat.aff(), e)
        self.block.add_rows(f"{name}:def", d.parts, -d.c, -d.c, kind="linear", op=e.ops[-1] if e.ops else "",
                            origin=e.origin)
        if mat.encoding == "ternary":
            self.exclusive(mat, 0.0, None)
        self.mats[name] = mat
        self.env[name] = dataclasses.replace(mat.aff(), ops=e.ops, origin=e.origin)
        self.produced.append(name)
        return mat

    # -- ops ----------------------------------------------------------------------------------
    def run(self) -> Block:
        t0 = time.perf_counter()
        self.add_inputs()
        head = self.spec.kind == "head"
        for op_id in self.spec.ops:
            op = self.g.op(op_id)
            self.lower_op(op)
            out = op.outputs[0]
            if head and _encoding(self.g.values[out]) in ("real", "int") and out not in self.mats:
                self.materialize(out)
        for name in self.spec.outputs:
            mat = self.materialize(name)
            for gn in mat.groups:
                self.block.group(gn).role = "output" if self.block.group(gn).role != "input" else "input"
            self.block.outputs += [gn for gn in mat.groups if gn not in self.block.outputs]
        self.info["seconds"] = time.perf_counter() - t0
        self.block.meta.update(self.info)
        self.block.meta["values"] = {n: list(self.mats[n].groups) for n in self.produced}
        return self.block

    def lower_op(self, op: Op) -> None:
        g, q = self.g, op.qualname
        out = g.values[op.outputs[0]]
        try:
            if q == "tamec.Threshold":
                self.threshold(op)
                return
            if q == "MaxPool":
                self.maxpool(op)
                return
            if q in PWL_OPS:
                self.piecewise(op)
                return
            self.env[out.name] = self.affine(op, out)
        except (UnsupportedModelError, ModelStructureError) as e:
            raise e.at(node=op.id, op=q)

    def affine(self, op: Op, out: Value) -> _Aff:
        g, q = self.g, op.qualname
        out_ex = _ex_shape(out)
        n_out = int(np.prod(out_ex, dtype=np.int64))
        data = [i for i in op.inputs if i and g.const(i) is None]
        x = self.env[data[0]]
        in_ex = _ex_shape(g.values[data[0]])
        if q in RESHAPE_OPS:
            if x.size != n_out:
                raise ModelStructureError(f"{op.op_type} changes the size of one example ({x.size} -> {n_out})")
            return dataclasses.replace(x, ops=x.ops + (op.id,), origin=tuple(dict.fromkeys(x.origin + op.origin)))
        if q == "Transpose":
            perm = list(op.attrs.get("perm") or reversed(range(len(in_ex) + 1)))
            if perm[0] != 0:
                raise UnsupportedModelError("Transpose moves the batch dim", hint="only per-example transposes lower")
            idx = np.arange(x.size).reshape(in_ex).transpose([p - 1 for p in perm[1:]]).reshape(-1)
            view = None if x.view is None else (x.view[0], x.view[1][idx])
            return x.map(_sel(idx, x.size), 0.0, op, view)
        if q == "tamec.Linear":
            w = g.const(op.inputs[1]).astype(np.float64)
            r = x.size // w.shape[1]
            if r * w.shape[1] != x.size or r * w.shape[0] != n_out:
                raise ModelStructureError(f"Linear weight {w.shape} does not fit an example of shape {in_ex}")
            T = sp.csr_matrix(w) if r == 1 else sp.kron(sp.identity(r, format="csr"), sp.csr_matrix(w), format="csr")
            d = np.zeros(n_out)
            if len(op.inputs) > 2 and op.inputs[2]:
                d = np.tile(g.const(op.inputs[2]).astype(np.float64).reshape(-1), r)
            return x.map(T, d, op)
        if q == "Conv":
            w = g.const(op.inputs[1])
            T, shp = _conv_matrix(w, op.attrs, in_ex)
            if tuple(shp) != out_ex:
                raise ModelStructureError(f"Conv output shape {shp} differs from the declared {out_ex}")
            d = np.zeros(n_out)
            if len(op.inputs) > 2 and op.inputs[2]:
                d = np.repeat(g.const(op.inputs[2]).astype(np.float64).reshape(-1), n_out // shp[0])
            return x.map(T, d, op)
        if q == "BatchNormalization":
            if int(op.attrs.get("training_mode", 0)) or sum(1 for o in op.outputs if o) > 1:
                raise UnsupportedModelError("BatchNormalization in training mode", hint="export the model in eval mode")
            # the evaluator's (and ONNX Runtime's) formula, in the tensor's own dtype
            vdt = np.dtype(g.values[data[0]].dtype)
            dt = (vdt if vdt.kind == "f" else np.dtype(np.float32)).type
            scale, bias, mean, var = (np.asarray(g.const(i), dt) for i in op.inputs[1:5])
            inv_std = dt(1) / np.sqrt(var + dt(op.attrs.get("epsilon", 1e-5)))
            a = inv_std * scale
            b = bias - mean * a
            full = (1,) + out_ex
            if a.ndim <= 1:
                a_e, b_e = _per_elem(a, full, 1), _per_elem(b, full, 1)
            else:  # spatial=0: per-activation parameters (C, D1, ...)
                a_e, b_e = _const_elems(a[None], out_ex), _const_elems(b[None], out_ex)
            return x.map(_diag(a_e.astype(np.float64)), b_e.astype(np.float64), op)
        if q == "Neg":
            return x.map(-sp.identity(x.size, format="csr"), 0.0, op)
        # Add / Sub / Mul / Div
        sel = _broadcast_sel(in_ex, out_ex)
        xb = x if sel is None else x.map(sel)
        if len(data) == 2:  # Add/Sub of two affine tensors
            y = self.env[data[1]]
            sel2 = _broadcast_sel(_ex_shape(g.values[data[1]]), out_ex)
            yb = y if sel2 is None else y.map(sel2)
            sgn = 1.0 if op.op_type == "Add" else -1.0
            parts = dict(xb.parts)
            for k, m in yb.parts.items():
                parts[k] = parts[k] + sgn * m if k in parts else sgn * m
            return _Aff(parts, xb.c + sgn * yb.c, None, xb.ops + yb.ops + (op.id,),
                        tuple(dict.fromkeys(xb.origin + yb.origin + op.origin)))
        kname = [i for i in op.inputs if i and g.const(i) is not None][0]
        k = _const_elems(g.const(kname), out_ex)
        eye = sp.identity(n_out, format="csr")
        first = op.inputs[0] == data[0]
        if op.op_type == "Add":
            return xb.map(eye, k, op)
        if op.op_type == "Sub":
            return xb.map(eye, -k, op) if first else xb.map(-eye, k, op)
        if op.op_type == "Mul":
            return xb.map(_diag(k), 0.0, op)
        if np.any(k == 0):
            raise UnsupportedModelError("Div by a constant holding 0", hint="the model divides by zero")
        return xb.map(_diag(1.0 / k), 0.0, op)

    # -- MaxPool --------------------------------------------------------------------------------
    def maxpool(self, op: Op) -> None:
        g = self.g
        src, out = op.inputs[0], g.values[op.outputs[0]]
        e = self.env[src]
        if e.view is None:
            self.materialize(src)
            e = self.env[src]
        base, idx = e.view
        bm = self.mats[base]
        if out.domain.kind not in _BINARY_KINDS or _enc_of(out) != bm.encoding:
            raise UnsupportedModelError(f"MaxPool output domain {out.domain} does not match its input's encoding "
                                        f"{bm.encoding}")
        in_ex = _ex_shape(g.values[src])
        ceil = bool(op.attrs.get("ceil_mode", 0))
        out_sp, pos = _window_index(op.attrs, tuple(in_ex[1:]), list(op.attrs["kernel_shape"]), ceil)
        C = in_ex[0]
        P, K = pos.shape
        Q = int(np.prod(in_ex[1:], dtype=np.int64))
        if (C,) + out_sp != _ex_shape(out):
            raise ModelStructureError(f"MaxPool output shape {(C,) + out_sp} differs from the declared "
                                      f"{_ex_shape(out)}")
        mat = self.new_mat(out.name, "internal")
        self.mats[out.name] = mat
        self.produced.append(out.name)
        # every (output element, window element) pair that lies inside the input
        cc, pp, kk = np.meshgrid(np.arange(C), np.arange(P), np.arange(K), indexing="ij")
        q = pos[pp, kk]
        ok = q >= 0
        r = (cc * P + pp)[ok]
        src_el = idx[(cc * Q + np.maximum(q, 0))[ok]]  # element of the base tensor
        n_out, n_base = C * P, bm.n
        counts = np.bincount(r, minlength=n_out).astype(np.float64)
        if np.any(counts == 0):
            raise ModelStructureError("a MaxPool window lies entirely in the padding")
        pair = sp.csr_matrix((np.ones(r.size), (np.arange(r.size), r)), shape=(r.size, n_out))
        pick = sp.csr_matrix((np.ones(r.size), (np.arange(r.size), src_el)), shape=(r.size, n_base))
        summ = sp.csr_matrix((np.ones(r.size), (r, src_el)), shape=(n_out, n_base))
        eye = sp.identity(n_out, format="csr")
        info = {"op": op.id, "origin": op.origin}
        # OR on the "1" bits (bipolar/bin01 bits, or the p bits of a ternary tensor)
        y1, x1 = mat.groups[0], bm.groups[0]
        self.block.add_rows(f"{op.id}:or-ge", {y1: pair, x1: -pick}, 0.0, np.inf, kind="linear", **info)
        self.block.add_rows(f"{op.id}:or-le", {y1: eye, x1: -summ}, -np.inf, 0.0, kind="linear", **info)
        if mat.encoding == "ternary":  # max = -1 iff every element is -1: AND of the n bits
            y2, x2 = mat.groups[1], bm.groups[1]
            self.block.add_rows(f"{op.id}:and-le", {y2: pair, x2: -pick}, -np.inf, 0.0, kind="linear", **info)
            self.block.add_rows(f"{op.id}:and-ge", {y2: eye, x2: -summ}, 1.0 - counts, np.inf, kind="linear", **info)
            self.exclusive(mat, 0.0, op, f"{op.id}:exclusive")
        self.env[out.name] = dataclasses.replace(mat.aff(), ops=(op.id,), origin=op.origin)

    # -- piecewise-linear ops -------------------------------------------------------------------
    def piecewise(self, op: Op) -> None:
        """Relu, LeakyRelu, Abs, Clip, HardSigmoid, Max, Min as max/min of affine pieces."""
        g, t = self.g, op.op_type
        out = g.values[op.outputs[0]]
        out_ex = _ex_shape(out)
        ops = [self._operand(i, out_ex) for i in op.inputs if i]
        x = ops[0]
        n = x.size
        const = lambda v: _Aff({}, np.full(n, float(v)))  # noqa: E731
        if t == "Relu":
            steps = [("max", const(0.0))]
        elif t == "LeakyRelu":
            alpha = float(op.attrs.get("alpha", 0.01))
            steps = [("max" if alpha <= 1 else "min", x.map(alpha * sp.identity(n, format="csr")))]
        elif t == "Abs":
            steps = [("max", x.map(-sp.identity(n, format="csr")))]
        elif t == "HardSigmoid":
            alpha, beta = float(op.attrs.get("alpha", 0.2)), float(op.attrs.get("beta", 0.5))
            x = x.map(alpha * sp.identity(n, format="csr"), beta)
            steps = [("max", const(0.0)), ("min", const(1.0))]
        elif t == "Clip":
            lo, hi = self._clip_limits(op)
            steps = [(s, const(v)) for s, v in (("max", lo), ("min", hi)) if v is not None]
        else:  # Max / Min over every input, broadcast to the output
            steps = [(t.lower(), e) for e in ops[1:]]
        mat = self.new_mat(out.name, "internal")
        src = self._big_m_source(op, op.inputs[0])
        self.info.setdefault("big_m", src)
        acc = x
        for k, (sense, b) in enumerate(steps):
            last = k == len(steps) - 1
            acc = self._max_min(op, f"k{k}", sense, acc, b, mat if last else None, src)
        if not steps:  # Clip without limits, Max/Min of one input: y = x
            self._equal(op, "copy", mat.aff(), x, np.arange(n))
        self.mats[out.name] = mat
        self.produced.append(out.name)
        self.env[out.name] = dataclasses.replace(mat.aff(), ops=(op.id,), origin=op.origin)

    def _operand(self, name: str, out_ex: tuple[int, ...]) -> _Aff:
        """Input `name` of a piecewise op, broadcast to one example of its output: a constant, or
        the value's own group (so its bounds are the value's)."""
        c = self.g.const(name)
        if c is not None:
            return _Aff({}, _const_elems(c, out_ex))
        self.materialize(name)
        e = self.env[name]
        sel = _broadcast_sel(_ex_shape(self.g.values[name]), out_ex)
        return e if sel is None else e.map(sel)

    def _clip_limits(self, op: Op) -> tuple[float | None, float | None]:
        """Clip's min and max (inputs from opset 11, attributes before), None where absent."""
        if "min" in op.attrs or "max" in op.attrs:
            lo, hi = op.attrs.get("min"), op.attrs.get("max")
        else:
            ins = list(op.inputs[1:3]) + ["", ""]
            lo, hi = (self.g.const(i) if i else None for i in ins[:2])
        lo, hi = (None if v is None else float(np.asarray(v).reshape(-1)[0]) for v in (lo, hi))
        if lo is not None and hi is not None and lo > hi:
            lo = hi  # ONNX: every element is max when min > max; min(max(x, hi), hi) = hi
        return lo, hi

    def _interval(self, e: _Aff) -> tuple[np.ndarray, np.ndarray]:
        """Elementwise bounds of an affine expression from its groups' bounds."""
        lo, hi = e.c.astype(np.float64).copy(), e.c.astype(np.float64).copy()
        with np.errstate(invalid="ignore"):
            for gname, m in e.parts.items():
                grp = self.block.group(gname)
                pos, neg = m.maximum(0), m.minimum(0)
                pos.eliminate_zeros()
                neg.eliminate_zeros()
                lo += pos @ grp.lb + neg @ grp.ub
                hi += pos @ grp.ub + neg @ grp.lb
        return lo, hi

    def _rows_of(self, e: _Aff, idx: np.ndarray) -> tuple[dict, np.ndarray]:
        """(parts, constant) of the elements `idx` of expression `e`."""
        S = _sel(idx, e.size)
        return {k: sp.csr_matrix(S @ m) for k, m in e.parts.items()}, S @ e.c

    def _equal(self, op: Op, tag: str, y: _Aff, a: _Aff, idx: np.ndarray) -> None:
        if idx.size:
            parts, c = self._rows_of(_sub(y, a), idx)
            self.block.add_rows(f"{op.id}:{tag}", parts, -c, -c, kind="linear", op=op.id, origin=op.origin)

    def _max_min(self, op: Op, tag: str, sense: str, a: _Aff, b: _Aff, mat: _Mat | None, big_m: str) -> _Aff:
        """Rows making y = max(a, b) (sense "max") or min(a, b) elementwise; y is `mat`'s
        expression, or a new continuous group (an intermediate of the op) when `mat` is None."""
        n = a.size
        dlo, dhi = self._interval(_sub(a, b))
        alo, ahi = self._interval(a)
        blo, bhi = self._interval(b)
        if sense == "max":
            take_a, take_b = dlo >= 0, (dhi <= 0) & ~(dlo >= 0)
            ylo, yhi = np.maximum(alo, blo), np.maximum(ahi, bhi)
        else:
            take_a, take_b = dhi <= 0, (dlo >= 0) & ~(dhi <= 0)
            ylo, yhi = np.minimum(alo, blo), np.minimum(ahi, bhi)
        if mat is None:
            gname = self._fresh(f"{op.outputs[0]}#{tag}")
            self.block.add_vars(VarGroup(gname, (n,), "continuous", ylo, yhi, "internal", "", "value"))
            y = _Aff({gname: sp.identity(n, format="csr")}, np.zeros(n))
        else:
            y = mat.aff()
        unstable = np.flatnonzero(~take_a & ~take_b)
        self.info["kinks"] = self.info.get("kinks", 0) + int(unstable.size)
        self.info["kinks_stable"] = self.info.get("kinks_stable", 0) + int(n - unstable.size)
        self._equal(op, f"{tag}:stable-a", y, a, np.flatnonzero(take_a))
        self._equal(op, f"{tag}:stable-b", y, b, np.flatnonzero(take_b))
        if not unstable.size:
            return y
        L, U = dlo[unstable], dhi[unstable]
        if not (np.all(np.isfinite(L)) and np.all(np.isfinite(U))):
            bad = int(np.sum(~(np.isfinite(L) & np.isfinite(U))))
            raise UnsupportedModelError(
                f"the input of {op.op_type} has no finite bounds for {bad} element(s) that can cross its kink, so "
                "their big-M rows cannot be written", node=op.id, op=op.qualname,
                hint="give the input box with --input-bounds LO:HI (or name=LO:HI) and run the bounds pass")
        z = self._fresh(f"{op.outputs[0]}#{tag}:z")  # z = 1 where y = a
        self.block.add_vars(VarGroup(z, (unstable.size,), "binary", 0, 1, "internal", "", "value"))
        info = {"op": op.id, "origin": op.origin}
        pa, ca = self._rows_of(_sub(y, a), unstable)
        pb, cb = self._rows_of(_sub(y, b), unstable)
        if sense == "max":  # y >= a, y >= b; y <= a - L (1 - z); y <= b + U z
            self.block.add_rows(f"{op.id}:{tag}:hull-a", pa, -ca, np.inf, kind="linear", **info)
            self.block.add_rows(f"{op.id}:{tag}:hull-b", pb, -cb, np.inf, kind="linear", **info)
            self.block.add_rows(f"{op.id}:{tag}:big-m-a", {**pa, z: _diag(-L)}, -np.inf, -L - ca, kind="big-m",
                                big_m=big_m, m=-L, **info)
            self.block.add_rows(f"{op.id}:{tag}:big-m-b", {**pb, z: _diag(-U)}, -np.inf, -cb, kind="big-m",
                                big_m=big_m, m=U, **info)
        else:  # y <= a, y <= b; y >= a - U (1 - z); y >= b + L z
            self.block.add_rows(f"{op.id}:{tag}:hull-a", pa, -np.inf, -ca, kind="linear", **info)
            self.block.add_rows(f"{op.id}:{tag}:hull-b", pb, -np.inf, -cb, kind="linear", **info)
            self.block.add_rows(f"{op.id}:{tag}:big-m-a", {**pa, z: _diag(-U)}, -U - ca, np.inf, kind="big-m",
                                big_m=big_m, m=U, **info)
            self.block.add_rows(f"{op.id}:{tag}:big-m-b", {**pb, z: _diag(-L)}, -cb, np.inf, kind="big-m",
                                big_m=big_m, m=-L, **info)
        return y

    # -- Threshold ------------------------------------------------------------------------------
    def threshold(self, op: Op) -> None:
        sname, out = op.inputs[0], self.g.values[op.outputs[0]]
        sgrp = self.preactivation(op, sname)
        sg = self.block.group(sgrp)
        st = threshold_states(op, self.g.values[sname], sg.lb, sg.ub, self.eps, self.rel_eps,
                              self.float_slack.get(sname), self.float_grid.get(sname))
        self.info["threshold"] = op.id
        self.info["neurons"] += st.n
        self.info["big_m"] = big_m = self._big_m_source(op, sname)
        enc = _encoding(out)
        mat = self.new_mat(out.name, "internal")
        if enc in ("bipolar", "bin01"):
            const = self.two_level(op, st, sgrp, mat.groups[0], -1.0 if enc == "bipolar" else 0.0, big_m)
        else:
            if enc == "ternary":
                p, n = mat.groups
                levels = (st.gt_level, st.lt_level, np.full(st.n, st.tie))
            else:  # other levels: an internal indicator pair (g, l), the output their affine image
                p, n = self._fresh(out.name + "#gt"), self._fresh(out.name + "#lt")
                for gn in (p, n):
                    self.block.add_vars(VarGroup(gn, _ex_shape(out), "binary", 0, 1, "internal", "", "value"))
                eye = sp.identity(st.n, format="csr")
                self.block.add_rows(f"{op.id}:levels", {mat.groups[0]: eye, p: -_diag(st.gt_level - st.tie),
                                                        n: -_diag(st.lt_level - st.tie)},
                                    st.tie, st.tie, kind="linear", op=op.id, origin=op.origin)
                levels = (np.ones(st.n), -np.ones(st.n), np.zeros(st.n))
            const = self.three_state(op, st, sgrp, p, n, levels, big_m, strict_levels=enc == "ternary")
        if np.any(~const):
            self.info["eps_max"] = max(self.info.get("eps_max", 0.0), float(st.gap[~const].max()))
        self.info["unstable"] += int((~const).sum())
        self.info["constant"] += int((const & ~np.isfinite(st.tau)).sum())
        self.info["stable"] += int((const & np.isfinite(st.tau)).sum())
        self.mats[out.name] = mat
        self.produced.append(out.name)
        self.env[out.name] = dataclasses.replace(mat.aff(), ops=(op.id,), origin=op.origin)

    def _big_m_source(self, op: Op, sname: str) -> str:
        """Where the M of op's big-M rows come from: lower_inference's `bounds_source`, else the
        bounds of its input `sname` ("interval", "lp-tightened")."""
        src = getattr(self.g.values[sname], "bounds_source", "") or ""
        if isinstance(self.bounds_source, dict):
            src = self.bounds_source.get(sname) or self.bounds_source.get(op.id) or src
        elif self.bounds_source:
            src = self.bounds_source
        return src or "interval"

    def preactivation(self, op: Op, sname: str) -> str:
        """The continuous "value" group holding a threshold's input."""
        m0 = self.mats.get(sname)
        sval = self.g.values[sname]
        if m0 is not None and m0.encoding == "value" and self.block.group(m0.groups[0]).kind != "binary":
            return m0.groups[0]
        if m0 is None and _encoding(sval) in ("real", "int"):
            return self.materialize(sname).groups[0]
        # a binary tensor thresholded again: its value gets a group of its own
        e = self.env[sname]
        sgrp = self._fresh(sname + "#s")
        lo, hi = self._bounds(sval, e.size)
        self.block.add_vars(VarGroup(sgrp, _ex_shape(sval), "continuous", lo, hi, "internal", "", "value"))
        parts = {sgrp: sp.identity(e.size, format="csr")}
        for k, m in e.parts.items():
            parts[k] = -m
        self.block.add_rows(f"{sgrp}:def", parts, e.c, e.c, kind="linear", op=op.id, origin=op.origin)
        return sgrp

    def two_level(self, op: Op, st: "_States", sgrp: str, ug: str, zero: float, big_m: str) -> np.ndarray:
        """One binary u per neuron (u = 1 iff the output is the level 1); returns the constant mask."""
        n = st.n
        for lvl, can in ((st.gt_level, st.can_gt), (st.lt_level, st.can_lt), (np.full(n, st.tie), st.can_tie)):
            if np.any(can & (lvl != 1.0) & (lvl != zero)):
                raise UnsupportedModelError(f"threshold levels (lo {st.lo}, hi {st.hi}, tie {st.tie}) do not fit the "
                                            f"{'bipolar' if zero < 0 else 'bin01'} output",
                                            hint="a pass declared a wrong output domain")
        bgt, blt, btie = st.gt_level == 1.0, st.lt_level == 1.0, np.full(n, st.tie == 1.0)
        top = np.where(st.can_gt, bgt, np.where(st.can_tie, btie, blt))  # bit of the highest reachable state
        bot = np.where(st.can_lt, blt, np.where(st.can_tie, btie, bgt))  # ... and of the lowest
        const = top == bot
        if np.any(const & st.can_tie & (btie != top)):
            raise UnsupportedModelError("a threshold whose tie level differs from both sides is not monotone",
                                        node=op.id, hint="only monotone thresholds lower to one binary")
        grp = self.block.group(ug)
        grp.lb = np.where(const, top.astype(float), 0.0)
        grp.ub = np.where(const, top.astype(float), 1.0)
        idx = np.flatnonzero(~const)
        if not idx.size:
            return const
        self._need_finite(op, st, idx)
        tie_up = st.can_tie & (btie == top)  # the tie belongs to the upper side
        a = np.where(tie_up, st.t_lo, st.above)[idx]
        b = np.where(st.can_tie & ~tie_up, st.t_hi, st.below)[idx]
        L, U, pos = st.L[idx], st.U[idx], top[idx]
        S = _sel(idx, n)
        # z = upper-side indicator: s - (a - L) z >= L, s - (U - b) z <= b; z = u where the level
        # 1 is above tau, else z = 1 - u (substituted, so the rows stay over s and u)
        c1, c2 = np.where(pos, -(a - L), a - L), np.where(pos, -(U - b), U - b)
        info = {"op": op.id, "origin": op.origin, "kind": "big-m", "big_m": big_m}
        self.block.add_rows(f"{op.id}:big-m-lo", {sgrp: S, ug: _diag(c1) @ S}, np.where(pos, L, a), np.inf,
                            m=a - L, **info)
        self.block.add_rows(f"{op.id}:big-m-hi", {sgrp: S, ug: _diag(c2) @ S}, -np.inf, np.where(pos, b, U),
                            m=U - b, **info)
        return const

    def three_state(self, op: Op, st: "_States", sgrp: str, p: str, n: str, levels, big_m: str,
                    strict_levels: bool) -> np.ndarray:
        """Binaries p (level +1) and n (level -1) per neuron, p + n <= 1; returns the constant mask."""
        N = st.n
        lgt, llt, ltie = levels
        if strict_levels:
            for lvl, can in ((lgt, st.can_gt), (llt, st.can_lt), (ltie, st.can_tie)):
                if np.any(can & ~np.isin(lvl, (-1.0, 0.0, 1.0))):
                    raise UnsupportedModelError(f"threshold levels (lo {st.lo}, hi {st.hi}, tie {st.tie}) do not fit "
                                                "the ternary output", hint="a pass declared a wrong output domain")
        # the level every reachable state gives, where they agree: a constant neuron
        same = np.where(st.can_gt, lgt, np.where(st.can_tie, ltie, llt))
        const = (~st.can_gt | (lgt == same)) & (~st.can_lt | (llt == same)) & (~st.can_tie | (ltie == same))
        if np.any(~const & st.can_tie & (ltie != 0)) or np.any(~const & (lgt == llt)):
            raise UnsupportedModelError("a ternary threshold with a reachable nonzero tie or equal sides", node=op.id,
                                        hint="only ONNX Sign-like thresholds (tie 0) lower to p/n bits")
        g_is_p = lgt == 1.0  # the s > tau indicator g is p, else n (flip); l is the other one
        pg, ng = self.block.group(p), self.block.group(n)
        pg.lb = pg.ub = np.where(const, (same == 1.0).astype(float), 0.0)
        ng.lb = ng.ub = np.where(const, (same == -1.0).astype(float), 0.0)
        pg.ub, ng.ub = pg.ub.copy(), ng.ub.copy()
        # unstable neurons: free, except indicators of unreachable states (fixed 0)
        gt_off, lt_off = ~const & ~st.can_gt, ~const & ~st.can_lt
        pg.ub[~const] = 1.0
        ng.ub[~const] = 1.0
        pg.ub[(gt_off & g_is_p) | (lt_off & ~g_is_p)] = 0.0
        ng.ub[(gt_off & ~g_is_p) | (lt_off & g_is_p)] = 0.0
        eye = sp.identity(N, format="csr")
        self.block.add_rows(f"{op.id}:exclusive", {p: eye, n: eye}, np.where(~const & ~st.can_tie, 1.0, 0.0), 1.0,
                            kind="exclusive", op=op.id, origin=op.origin)
        idx = np.flatnonzero(~const)
        if not idx.size:
            return const
        self._need_finite(op, st, idx)
        tl, th, a, b, L, U, gp = (st.t_lo[idx], st.t_hi[idx], st.above[idx], st.below[idx], st.L[idx], st.U[idx],
                                  g_is_p[idx])
        S = _sel(idx, N)
        # s >= tl + (a - tl) g - (tl - L) l ;  s <= th + (U - th) g - (th - b) l  (tl = th = tau
        # unless float32 slack widens the tie to [tau - slack, tau + slack])
        cg_lo, cl_lo, cg_hi, cl_hi = -(a - tl), tl - L, -(U - th), th - b
        info = {"op": op.id, "origin": op.origin, "kind": "big-m", "big_m": big_m}
        self.block.add_rows(f"{op.id}:big-m-lo", {sgrp: S, p: _diag(np.where(gp, cg_lo, cl_lo)) @ S,
                                                  n: _diag(np.where(gp, cl_lo, cg_lo)) @ S},
                            tl, np.inf, m=tl - L, **info)
        self.block.add_rows(f"{op.id}:big-m-hi", {sgrp: S, p: _diag(np.where(gp, cg_hi, cl_hi)) @ S,
                                                  n: _diag(np.where(gp, cl_hi, cg_hi)) @ S},
                            -np.inf, th, m=U - th, **info)
        return const

    def _need_finite(self, op: Op, st: "_States", idx: np.ndarray) -> None:
        bad = idx[~(np.isfinite(st.L[idx]) & np.isfinite(st.U[idx]))]
        if bad.size:
            raise UnsupportedModelError(
                f"pre-activation %{op.inputs[0]} has no finite bounds for {bad.size} neuron(s) that can switch, so "
                "their big-M rows cannot be written", node=op.id, op=op.qualname,
                hint="give the input box with --input-bounds LO:HI (or name=LO:HI) and run the bounds pass")


@dataclass
class _States:
    """Per neuron of one threshold: tau, levels, bounds, the lattice neighbours of tau and which
    of the states s > tau (gt), s < tau (lt), s == tau (tie) are reachable."""

    n: int
    tau: np.ndarray
    t0: np.ndarray  # tau, 0 where not finite
    gt_level: np.ndarray
    lt_level: np.ndarray
    lo: float
    hi: float
    tie: float
    L: np.ndarray
    U: np.ndarray
    above: np.ndarray  # smallest reachable s > tau (lattice point, or tau + eps)
    below: np.ndarray  # largest reachable s < tau
    can_gt: np.ndarray
    can_lt: np.ndarray
    can_tie: np.ndarray
    gap: np.ndarray  # the eps actually used per neuron (0 on a lattice)
    t_lo: np.ndarray = None  # the tie state's range of the exact s: [t_lo, t_hi] (tau, or tau -+ float slack)
    t_hi: np.ndarray = None


def threshold_states(op: Op, sval: Value, L: np.ndarray, U: np.ndarray, eps: float,
                     rel_eps: float = 0.0, slack: np.ndarray | None = None,
                     grid: np.ndarray | None = None) -> _States:
    """Which states each neuron of Threshold `op` can reach with its input in [L, U]; a real
    pre-activation's strict side starts max(eps, rel_eps * (U - L)) away from tau.
    `slack` (per neuron, real s only) is a bound on the float32 rounding error of s: the exact s
    of a neuron the network puts above tau is >= tau - slack, below tau <= tau + slack, on the
    tie within slack of tau, so each state's range is widened by it (eps and rel_eps unused).
    `grid` (per neuron, real s only; nan or inf where none) is a dyadic step every reachable s is
    a multiple of, computed exactly by float32 (binary inputs): there s is on that lattice."""
    p = ThresholdParams.of(op)
    tau, up, down, _ = p.per_element((1,) + _ex_shape(sval))
    lo, hi, tie = p.lo, p.hi, p.tie
    fin = np.isfinite(tau)
    t0 = np.where(fin, tau, 0.0)
    lat = lattice(sval)
    L, U = np.asarray(L, np.float64), np.asarray(U, np.float64)
    width = U - L
    gap = np.maximum(eps, rel_eps * np.where(np.isfinite(width), width, 0.0))
    t_lo = t_hi = t0
    if lat is None and slack is not None:
        # a slack past the interval is no wider than "any state": keep the rows finite
        sl = np.broadcast_to(np.asarray(slack, np.float64), tau.shape)
        sl = np.minimum(sl, np.maximum(np.maximum(U - t0, t0 - L), 0.0))
        sl = np.where(fin & np.isfinite(sl), sl, 0.0)
        gap = np.zeros(tau.size)
        on, above, below, t_lo, t_hi = fin, t0 - sl, t0 + sl, t0 - sl, t0 + sl
    elif lat is None:
        on, above, below = fin, t0 + gap, t0 - gap
    if lat is None and grid is not None:
        q = np.broadcast_to(np.asarray(grid, np.float64), tau.shape)
        use = fin & np.isfinite(q) & (q > 0)
        qs = np.where(use, q, 1.0)
        k = t0 / qs
        on = np.where(use, k == np.round(k), on)
        above = np.where(use, qs * (np.floor(k) + 1), above)
        below = np.where(use, qs * (np.ceil(k) - 1), below)
        gap, t_lo, t_hi = np.where(use, 0.0, gap), np.where(use, t0, t_lo), np.where(use, t0, t_hi)
    if lat is not None:
        o, step = lat
        q = (t0 - o) / step
        on = fin & (q == np.round(q))
        above, below = o + step * (np.floor(q) + 1), o + step * (np.ceil(q) - 1)
        gap = np.zeros(tau.size)
    can_gt = (tau == -np.inf) | (fin & (above <= U))
    can_lt = (tau == np.inf) | (fin & (below >= L))
    can_tie = np.isnan(tau) | (on & (t_hi >= L) & (t_lo <= U))
    if np.any(~(can_gt | can_lt | can_tie)):
        raise ModelStructureError(f"pre-activation %{sval.name} can reach no value for some neurons "
                                  "(its bounds hold no lattice point)", node=op.id, op=op.qualname)
    return _States(tau.size, tau, t0, up, down, lo, hi, tie, L, U,
                   above, below, can_gt, can_lt, can_tie, gap, t_lo, t_hi)


def _enc_of(v: Value) -> str:
    return {"bipolar": "bipolar", "bin01": "value", "ternary": "ternary"}.get(v.domain.kind, "value")


def lattice(v: Value) -> tuple[float, float] | None:
    """(origin, step) of the lattice a pre-activation lies on; None for real values."""
    d = v.domain
    if d.kind == "int":
        return float(d.lo), float(d.step)
    return {"bipolar": (-1.0, 2.0), "ternary": (-1.0, 1.0), "bin01": (0.0, 1.0)}.get(d.kind)


# ------------------------------------------------------------------------------------------------
# the module
# ------------------------------------------------------------------------------------------------
def lower_inference(graph: Graph, specs: list[BlockSpec] | None = None, *, eps: float = 1e-6,
                    rel_eps: float = REL_EPS, bounds_source: str | dict | None = None,
                    float_slack: dict[str, np.ndarray] | None = None,
                    float_grid: dict[str, np.ndarray] | None = None) -> MipModule:
    """The inference MIP of `graph` (compiled and bounded): one Block per spec, links between
    them; see the module docstring for the encodings. The strict side of a threshold on a real
    pre-activation starts max(eps, rel_eps * (U - L)) away from tau; `bounds_source` overrides
    where the big-M values are said to come from (default: each Value's bounds_source, else
    "interval"). eps = rel_eps = 0 lets both sides meet at tau: at exact real ties the MIP then
    over-approximates the exact-arithmetic network. `float_slack` maps a threshold's input value
    to a per-neuron bound on its float32 rounding error (tamec.lower.float_error): a neuron within
    it of tau takes either side or the tie, so the MIP over-approximates the float32 network that
    runs, the safe side for verification proofs. `float_grid` maps a threshold's input to a
    per-neuron dyadic step where float32 computes it exactly from binary inputs: those neurons
    take the lattice's states, exactly (threshold_states)."""
    if not (eps >= 0 and rel_eps >= 0):
        raise ValueError("eps and rel_eps must be nonnegative")
    specs = partition(graph) if specs is None else [s if isinstance(s, BlockSpec) else BlockSpec.from_json(s)
                                                    for s in specs]
    owners: dict[str, tuple[str, list[str]]] = {}
    blocks: dict[str, Block] = {}
    mod = MipModule()
    values: dict[str, list] = {}
    for spec in specs:
        low = _BlockLowering(graph, spec, owners, blocks, eps, rel_eps, bounds_source, float_slack, float_grid)
        b = low.run()
        blocks[b.name] = b
        mod.blocks.append(b)
        mod.links += low.links
        for name in low.produced:
            if name not in owners or owners[name][0] == b.name:
                owners[name] = (b.name, list(low.mats[name].groups))
            values.setdefault(name, [(b.name, gn) for gn in low.mats[name].groups])
    not_lowered = [graph.op(i) for s in specs for i in s.not_lowered]
    outputs = {}
    for o in graph.outputs:
        src = o
        for op in not_lowered:
            if o in op.outputs:
                src = op.inputs[0]
        if src in values:
            outputs[o] = values[src]
    mod.meta = {"mode": "inference", "eps": eps, "rel_eps": rel_eps,
                "inputs": {i: values[i] for i in graph.inputs if i in values},
                "outputs": outputs, "values": values,
                "not_lowered": [{"op": op.id, "op_type": op.op_type, "input": op.inputs[0], "output": op.outputs[0]}
                                for op in not_lowered],
                "specs": [s.to_json() for s in specs]}
    return mod


# ------------------------------------------------------------------------------------------------
# solutions
# ------------------------------------------------------------------------------------------------
def decode(mod: MipModule, milp: Milp, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every lowered graph tensor's value in solution `x` of `milp` (assembled from `mod`), shaped
    like one example (batch dim dropped): bipolar 2v - 1, ternary p - n, binaries rounded."""
    x = np.asarray(x, np.float64)
    out = {}
    for name, groups in mod.meta["values"].items():
        blk = groups[0][0]
        if blk not in milp.columns:
            continue
        b = mod.block(blk)
        parts = {}
        for _, gn in groups:
            grp = b.group(gn)
            val = x[milp.col(blk, gn)]
            parts[grp.encoding] = np.round(val) if grp.kind != "continuous" else val
        if "pos" in parts:
            val = parts["pos"] - parts["neg"]
        elif "bipolar" in parts:
            val = 2 * parts["bipolar"] - 1
        else:
            val = parts["value"]
        shape = b.group(groups[0][1]).shape
        out[name] = val.reshape(shape)
    return out


def encode_value(grp: VarGroup, value: np.ndarray) -> np.ndarray:
    """The variables of group `grp` for a tensor value (one example, any shape of that size)."""
    v = np.asarray(value, np.float64).reshape(-1)
    if v.size != grp.size:
        raise InputError(f"value for group {grp.name} has {v.size} elements, the group {grp.size}")
    if grp.encoding == "bipolar":
        if not np.all(np.isin(v, (-1.0, 1.0))):
            raise InputError(f"{grp.encodes or grp.name} must be +-1")
        return (v + 1) / 2
    if grp.encoding in ("pos", "neg"):
        if not np.all(np.isin(v, (-1.0, 0.0, 1.0))):
            raise InputError(f"{grp.encodes or grp.name} must be in {{-1, 0, 1}}")
        return (v > 0 if grp.encoding == "pos" else v < 0).astype(np.float64)
    return v


def fix_inputs(mod: MipModule, milp: Milp, feeds: dict[str, np.ndarray]) -> Milp:
    """A copy of `milp` with the graph inputs in `feeds` fixed (lb = ub = the encoded value) in
    every block that holds a copy of them."""
    lb, ub = milp.lb.copy(), milp.ub.copy()
    for name, val in feeds.items():
        if name not in mod.meta["inputs"]:
            raise InputError(f"{name!r} is not a lowered graph input", hint="inputs: " + ", ".join(mod.meta["inputs"]))
        gnames = [gn for _, gn in mod.meta["inputs"][name]]
        for b in mod.blocks:
            if b.name not in milp.columns:
                continue
            for gn in gnames:
                if gn in milp.columns[b.name] and b.group(gn).encodes == name:
                    enc = encode_value(b.group(gn), val)
                    cols = milp.col(b.name, gn)
                    lb[cols] = ub[cols] = enc
    return dataclasses.replace(milp, lb=lb, ub=ub)

"""MIP IR: a `MipModule` of `Block`s, each a mixed-integer program over groups of variables.

Everything is vectorized: a `VarGroup` is a whole tensor of variables (one per element of a graph
value, flattened in C order, batch dim dropped) with bound arrays; a `RowGroup` is a scipy.sparse
block of rows `lo <= A x <= hi` over the block's variable vector, with provenance (graph op id,
ONNX nodes) and, for big-M rows, where M came from. Indicator rows (`if x_k == v then lo <= a x
<= hi`) are kept where they are the faithful form; solvers without indicators get them as big-M
rows through `Block.indicators_as_rows`.

Encodings of a graph tensor by a variable group (`VarGroup.encoding`):
  value    the variable is the tensor element itself (continuous, integer, or {0,1} binary);
  bipolar  a binary v with element = 2 v - 1 ({-1,+1} tensors);
  pos/neg  a ternary tensor t = p - n is two binary groups `<name>+` and `<name>-` with p + n <= 1.
Both ends of a link between blocks use the same encoding, so links are plain equalities.

Interfaces: `Block.inputs`/`outputs` name var groups. Seen from a block, its inputs are
parameters: `Block.rhs_map()` returns the block's own rows with the input columns moved to the
right-hand side, `lo - B_x x <= A' x' <= hi - B_x x`, i.e. `b = B_x x + b0` (weights are variables
in training mode and parameters `B_w` nowhere else, so inference blocks have `B_w = 0`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from tamec.errors import VerificationError

VAR_KINDS = ("continuous", "binary", "integer")
ROLES = ("input", "output", "internal", "weight")


@dataclass
class VarGroup:
    """A tensor of variables: one per element of graph value `encodes` (flattened, C order)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    lb: np.ndarray
    ub: np.ndarray
    role: str = "internal"
    encodes: str = ""
    encoding: str = "value"

    def __post_init__(self):
        n = int(np.prod(self.shape, dtype=np.int64))
        self.lb = np.broadcast_to(np.asarray(self.lb, np.float64), (n,)).copy()
        self.ub = np.broadcast_to(np.asarray(self.ub, np.float64), (n,)).copy()

    @property
    def size(self) -> int:
        return int(self.lb.size)


@dataclass
class RowGroup:
    """Rows `lo <= A x <= hi` over the block's variables. `kind` is linear, big-m, link, ball,
    objective-cut...; `big_m` says where the M of big-M rows came from (e.g. "interval",
    "lp-tightened") and `m` holds the M of each row."""

    name: str
    A: sp.csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    op: str = ""
    origin: tuple[str, ...] = ()
    kind: str = "linear"
    big_m: str = ""
    m: np.ndarray | None = None

    def __post_init__(self):
        self.A = sp.csr_matrix(self.A, dtype=np.float64)
        r = self.A.shape[0]
        self.lo = np.broadcast_to(np.asarray(self.lo, np.float64), (r,)).copy()
        self.hi = np.broadcast_to(np.asarray(self.hi, np.float64), (r,)).copy()

    @property
    def size(self) -> int:
        return int(self.A.shape[0])


@dataclass
class IndicatorGroup:
    """Rows `if x[var[k]] == value[k] then lo[k] <= A[k] x <= hi[k]`; `var` indexes binaries."""

    name: str
    var: np.ndarray
    value: np.ndarray
    A: sp.csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    op: str = ""
    origin: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.A.shape[0])


@dataclass
class Block:
    """One MIP: variables, rows, indicators, an objective `sense c x`, and its interface."""

    name: str
    mode: str = "inference"
    ops: tuple[str, ...] = ()
    vars: list[VarGroup] = field(default_factory=list)
    rows: list[RowGroup] = field(default_factory=list)
    indicators: list[IndicatorGroup] = field(default_factory=list)
    c: np.ndarray | None = None
    sense: str = "min"
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- variables ------------------------------------------------------------------------------
    def offsets(self) -> dict[str, tuple[int, int]]:
        out, k = {}, 0
        for v in self.vars:
            out[v.name] = (k, k + v.size)
            k += v.size
        return out

    @property
    def n_vars(self) -> int:
        return sum(v.size for v in self.vars)

    def group(self, name: str) -> VarGroup:
        for v in self.vars:
            if v.name == name:
                return v
        raise KeyError(f"block {self.name} has no variable group {name!r}")

    def add_vars(self, v: VarGroup) -> slice:
        """Append a group; existing row matrices gain zero columns. Returns its column slice."""
        start = self.n_vars
        self.vars.append(v)
        n = self.n_vars
        for r in self.rows:
            r.A = sp.csr_matrix((r.A.data, r.A.indices, r.A.indptr), shape=(r.A.shape[0], n))
        for r in self.indicators:
            r.A = sp.csr_matrix((r.A.data, r.A.indices, r.A.indptr), shape=(r.A.shape[0], n))
        return slice(start, n)

    def cols(self, name: str) -> np.ndarray:
        a, b = self.offsets()[name]
        return np.arange(a, b)

    def lb(self) -> np.ndarray:
        return np.concatenate([v.lb for v in self.vars]) if self.vars else np.zeros(0)

    def ub(self) -> np.ndarray:
        return np.concatenate([v.ub for v in self.vars]) if self.vars else np.zeros(0)

    def integrality(self) -> np.ndarray:
        return np.concatenate([np.full(v.size, 0 if v.kind == "continuous" else 1, np.uint8)
                               for v in self.vars]) if self.vars else np.zeros(0, np.uint8)

    # -- rows -----------------------------------------------------------------------------------
    def add_rows(self, name: str, parts: dict[str, sp.spmatrix | np.ndarray], lo, hi, **info) -> RowGroup:
        """Rows `lo <= sum_g parts[g] @ x_g <= hi`, each part a (rows x size of group g) matrix."""
        offs = self.offsets()
        n = self.n_vars
        mats = []
        rows = None
        for g, m in parts.items():
            m = sp.csr_matrix(m)
            rows = m.shape[0] if rows is None else rows
            a, b = offs[g]
            if m.shape != (rows, b - a):
                raise ValueError(f"part {g} of rows {name} has shape {m.shape}, expected ({rows}, {b - a})")
            m = m.tocoo()
            mats.append(sp.csr_matrix((m.data, (m.row, m.col + a)), shape=(rows, n)))
        A = sum(mats[1:], mats[0]).tocsr() if mats else sp.csr_matrix((0, n))
        A.sum_duplicates()
        r = RowGroup(name, A, lo, hi, **info)
        self.rows.append(r)
        return r

    def matrix(self, indicators_as_rows: bool = True) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """All rows stacked (indicators as big-M rows unless told otherwise)."""
        groups = list(self.rows) + (self.indicators_as_rows() if indicators_as_rows else [])
        if not groups:
            return sp.csr_matrix((0, self.n_vars)), np.zeros(0), np.zeros(0)
        return (sp.vstack([r.A for r in groups]).tocsr(), np.concatenate([r.lo for r in groups]),
                np.concatenate([r.hi for r in groups]))

    def indicators_as_rows(self) -> list[RowGroup]:
        """`x_k == v -> lo <= a x <= hi` as big-M rows, M from the variable bounds (finite)."""
        out = []
        lb, ub = self.lb(), self.ub()
        for ind in self.indicators:
            A = sp.csr_matrix(ind.A)
            pos, neg = A.maximum(0), A.minimum(0)
            amin = pos @ np.nan_to_num(lb, neginf=-1e12) + neg @ np.nan_to_num(ub, posinf=1e12)
            amax = pos @ np.nan_to_num(ub, posinf=1e12) + neg @ np.nan_to_num(lb, neginf=-1e12)
            # switch s = 1 when the indicator is active: s = x if v == 1 else 1 - x
            sel = sp.csr_matrix((np.ones(ind.size), (np.arange(ind.size), ind.var)), shape=(ind.size, self.n_vars))
            act = ind.value.astype(np.float64)
            sign = 2 * act - 1  # +1: s = x ; -1: s = 1 - x
            lo_m = np.where(np.isfinite(ind.lo), ind.lo - amin, 0.0)
            hi_m = np.where(np.isfinite(ind.hi), amax - ind.hi, 0.0)
            # a x >= lo - (lo - amin)(1 - s)  <=>  a x - lo_m * s >= amin   (s = x or 1 - x)
            lo_rows = A - sp.diags(lo_m * sign) @ sel
            hi_rows = A + sp.diags(hi_m * sign) @ sel
            lo_rhs = np.where(np.isfinite(ind.lo), amin + lo_m * (1 - act), -np.inf)
            hi_rhs = np.where(np.isfinite(ind.hi), amax - hi_m * (1 - act), np.inf)
            out.append(RowGroup(ind.name + ":lo", lo_rows, lo_rhs, np.inf, ind.op, ind.origin, "big-m", "variable bounds", lo_m))
            out.append(RowGroup(ind.name + ":hi", hi_rows, -np.inf, hi_rhs, ind.op, ind.origin, "big-m", "variable bounds", hi_m))
        return out

    def rhs_map(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray]:
        """(A', lo, hi, B_x, own_cols): the rows over the block's own variables with the input
        groups moved to the right-hand side: `lo - B_x x_in <= A' x' <= hi - B_x x_in`."""
        A, lo, hi = self.matrix()
        inp = np.concatenate([self.cols(g) for g in self.inputs]) if self.inputs else np.zeros(0, int)
        own = np.setdiff1d(np.arange(self.n_vars), inp)
        return A[:, own].tocsr(), lo, hi, A[:, inp].tocsr(), own

    def copy(self) -> "Block":
        return dataclasses.replace(
            self, vars=[dataclasses.replace(v, lb=v.lb.copy(), ub=v.ub.copy()) for v in self.vars],
            rows=[dataclasses.replace(r, A=r.A.copy(), lo=r.lo.copy(), hi=r.hi.copy()) for r in self.rows],
            indicators=[dataclasses.replace(r, A=r.A.copy()) for r in self.indicators],
            inputs=list(self.inputs), outputs=list(self.outputs), meta=dict(self.meta))


@dataclass
class Link:
    """Block `dst` group `dst_group` is the same tensor as block `src` group `src_group`."""

    src: str
    src_group: str
    dst: str
    dst_group: str


@dataclass
class Milp:
    """A flat MILP `min c x : lo <= A x <= hi, lb <= x <= ub, x_j integer where integrality_j`,
    with variable and row names (for MPS/LP files) and each block's column range."""

    c: np.ndarray
    A: sp.csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray
    var_names: list[str]
    row_names: list[str]
    columns: dict[str, dict[str, tuple[int, int]]]
    sense: str = "min"
    constant: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape

    def col(self, block: str, group: str) -> np.ndarray:
        a, b = self.columns[block][group]
        return np.arange(a, b)


@dataclass
class MipModule:
    """The blocks of one network and the links between them, in data-flow order."""

    blocks: list[Block] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r}")

    def copy(self) -> "MipModule":
        return MipModule([b.copy() for b in self.blocks], list(self.links), dict(self.meta))

    def assemble(self, blocks: list[str] | None = None) -> Milp:
        """One MILP of the named blocks (default all): block variables side by side, each block's
        rows, and a link equality per linked pair of groups. Objectives are summed."""
        chosen = [b for b in self.blocks if blocks is None or b.name in blocks]
        names = {b.name for b in chosen}
        cols, var_names, row_names = {}, [], []
        k = 0
        for b in chosen:
            cols[b.name] = {}
            for v in b.vars:
                cols[b.name][v.name] = (k, k + v.size)
                var_names += [f"{_safe(b.name)}.{_safe(v.name)}.{i}" for i in range(v.size)]
                k += v.size
        n = k
        mats, los, his = [], [], []
        for b in chosen:
            A, lo, hi = b.matrix()
            a0 = cols[b.name][b.vars[0].name][0] if b.vars else 0
            A = A.tocoo()
            mats.append(sp.csr_matrix((A.data, (A.row, A.col + a0)), shape=(A.shape[0], n)))
            los.append(lo)
            his.append(hi)
            for r in list(b.rows) + b.indicators_as_rows():
                row_names += [f"{_safe(b.name)}.{_safe(r.name)}.{i}" for i in range(r.size)]
        for ln in self.links:
            if ln.src in names and ln.dst in names:
                s, d = cols[ln.src][ln.src_group], cols[ln.dst][ln.dst_group]
                m = s[1] - s[0]
                if d[1] - d[0] != m:
                    raise VerificationError(f"link {ln} joins groups of sizes {m} and {d[1] - d[0]}")
                r = np.arange(m)
                L = sp.csr_matrix((np.r_[np.ones(m), -np.ones(m)], (np.r_[r, r], np.r_[np.arange(*d), np.arange(*s)])),
                                  shape=(m, n))
                mats.append(L)
                los.append(np.zeros(m))
                his.append(np.zeros(m))
                row_names += [f"link.{_safe(ln.dst)}.{_safe(ln.dst_group)}.{i}" for i in range(m)]
        A = sp.vstack(mats).tocsr() if mats else sp.csr_matrix((0, n))
        c = np.zeros(n)
        for b in chosen:
            if b.c is not None:
                a0 = cols[b.name][b.vars[0].name][0]
                c[a0:a0 + b.n_vars] += b.c if b.sense == "min" else -b.c
        lb = np.concatenate([b.lb() for b in chosen]) if chosen else np.zeros(0)
        ub = np.concatenate([b.ub() for b in chosen]) if chosen else np.zeros(0)
        integ = np.concatenate([b.integrality() for b in chosen]) if chosen else np.zeros(0, np.uint8)
        return Milp(c, A, np.concatenate(los) if los else np.zeros(0), np.concatenate(his) if his else np.zeros(0),
                    lb, ub, integ, var_names, row_names, cols)


def _safe(s: str) -> str:
    """A name MPS and LP files accept: no spaces, no leading digit troubles, ASCII."""
    out = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in s)
    return out if out and not out[0].isdigit() else "n" + out


def verify_mip(mod: MipModule) -> None:
    """Invariants of the MIP IR: kinds, finite bounds on integer variables, lb <= ub, row
    shapes, lo <= hi, links between existing groups of equal size and encoding."""
    for b in mod.blocks:
        n = b.n_vars
        seen = set()
        for v in b.vars:
            if v.name in seen:
                raise VerificationError(f"block {b.name}: variable group {v.name!r} defined twice")
            seen.add(v.name)
            if v.kind not in VAR_KINDS or v.role not in ROLES:
                raise VerificationError(f"block {b.name}: group {v.name} has kind {v.kind!r} role {v.role!r}")
            if np.any(v.lb > v.ub):
                raise VerificationError(f"block {b.name}: group {v.name} has lb > ub", node=v.encodes)
            if v.kind != "continuous" and not (np.all(np.isfinite(v.lb)) and np.all(np.isfinite(v.ub))):
                raise VerificationError(f"block {b.name}: integer group {v.name} is unbounded", node=v.encodes,
                                        hint="every integer variable needs finite bounds (run the bounds pass)")
            if v.kind == "binary" and (np.any(v.lb < 0) or np.any(v.ub > 1)):
                raise VerificationError(f"block {b.name}: binary group {v.name} has bounds outside [0, 1]")
        for r in list(b.rows) + list(b.indicators):
            if r.A.shape[1] != n:
                raise VerificationError(f"block {b.name}: rows {r.name} have {r.A.shape[1]} columns, block has {n}",
                                        node=r.op)
            if np.any(r.lo > r.hi) or np.any(np.isnan(r.lo)) or np.any(np.isnan(r.hi)):
                raise VerificationError(f"block {b.name}: rows {r.name} have lo > hi or NaN", node=r.op)
            if not np.all(np.isfinite(r.A.data)):
                raise VerificationError(f"block {b.name}: rows {r.name} have non-finite coefficients", node=r.op)
        for g in b.inputs + b.outputs:
            b.group(g)
    names = {b.name: b for b in mod.blocks}
    for ln in mod.links:
        if ln.src not in names or ln.dst not in names:
            raise VerificationError(f"link {ln} names a missing block")
        s, d = names[ln.src].group(ln.src_group), names[ln.dst].group(ln.dst_group)
        if s.size != d.size or s.encoding != d.encoding:
            raise VerificationError(f"link {ln}: sizes {s.size}/{d.size}, encodings {s.encoding}/{d.encoding}")

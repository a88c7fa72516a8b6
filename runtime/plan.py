"""The forward execution plan: `compile_plan(graph) -> Plan`, built once per compiled model.

The builder walks the graph's ops in order and picks one kernel per op (or per fused group):

- `bgemm`: tamec.Linear / Conv whose input is binary ({-1,+1} or {-1,0,+1}) and whose weight is
  a constant +-1 matrix: xnor-popcount GEMM on packed bits (Conv through packed im2col); when
  the result's only reader is a tamec.Threshold, the threshold is fused and the output is
  written as packed bits for the next binary layer.
- `pointwise`: chains of float32 Add/Sub/Mul/Div by per-channel constants and inference
  BatchNormalization and QONNX Quant (2+ bits), optionally ending in a tamec.Threshold (which then writes packed bits
  when a binary layer reads them, float32 otherwise); the real-input first layer's BN + sign
  and the real-valued head run here.
- `maxpool` on packed bits; Flatten/Reshape of packed bits as a view (the next binary Linear's
  weights are permuted to the channels-last bit order at plan time).
- `sgemm(BLAS)` / `conv(BLAS)`: real tamec.Linear, and real Conv over several input channels
  (float im2col first), as one float32 BLAS GEMM through numpy (the evaluator's own call, so the
  same sums), then the pointwise chain + threshold after it on the GEMM's channels-last rows,
  writing packed bits directly. BLAS rather than a numba GEMM: OpenBLAS's packed, cache-blocked
  sgemm is several times faster than a non-fast-math numba loop (which may not reorder the sums)
  at these sizes, and its float32 rows stay in a reused buffer that is read once.
- `pack` / `unpack`: conversions where a value is needed in the other form.
- `reshape` / `flatten`: numpy views.
- anything else: the reference evaluator's kernel for the op (BLAS for real Linear/Conv/Gemm,
  numpy or onnx.reference otherwise), so every supported model runs.

Weights are packed, thresholds turned into integer bounds and bit words, and every kernel bound
to its slots here, so `Plan.run` is a loop over prebound callables with no Python per element.
Buffers are reused between calls of the same batch size (per thread). `str(plan)` lists the
kernel chosen for every op.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from tamec.errors import InputError, ModelStructureError, TamecError
from tamec.evaluator import Evaluator, _max_int, _min_int
from tamec.ir.graph import Graph, Op, Value
from tamec.ops import REGISTRY, attach, has
from tamec.ops.conv import window
from tamec.ops.threshold import ThresholdParams
from tamec.runtime import kernels as K
from tamec.runtime.bits import WORD, aligned, pack, pack_weights, unpack, words

_F32 = np.dtype(np.float32)
_BIG = 2 ** 62
_EXACT = 2 ** 24  # |integer| below this is exact in float32: fused thresholds compare the same
_DUMMY_U = np.zeros((1, 1, 1), np.uint64)
_DUMMY_F = np.zeros((1, 1, 1), np.float32)
_DUMMY_U2 = np.zeros((1, 1), np.uint64)
_DUMMY_F2 = np.zeros((1, 1), np.float32)
_NO_CODES = np.zeros(0, np.int64)
_NO_F = np.zeros(1, np.float32)
_NO_CONSTS = np.zeros((0, 1), np.float32)


@dataclass(frozen=True)
class Packed:
    """How a binary value is stored as bit planes (N, S, CW): C channels (packed axis), S
    positions, `spatial` (H, W) or (), `shape` the logical shape without the batch dim,
    `ternary` whether it may hold zeros (then the mask plane is meaningful)."""

    C: int
    S: int
    spatial: tuple
    shape: tuple
    ternary: bool
    CW: int = 0  # words per position; 0: the default, _cw(C, S)
    hwc: bool = False  # a flat `shape` in channels-last order (f = s*C + c): a Transpose to NHWC, flattened

    def __post_init__(self):
        if not self.CW:
            object.__setattr__(self, "CW", _cw(self.C, self.S))


def _cw(c: int, s: int) -> int:
    """Words per position; a flat row is padded toward whole groups of 8 words (the GEMM's
    carry-save tree takes 8 words at a time; a few zero words cost less than a long tail)."""
    return _pad8(words(c)) if s == 1 else words(c)


def _pad8(w: int) -> int:
    """Words per GEMM row: a tail of 4+ words past the last group of 8 is padded to a group."""
    return _round(w, 8) if w >= 8 and w % 8 >= 4 else w


def _round(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass
class Step:
    """One entry of the plan: the kernel that runs, the ops it covers, what it reads and writes."""

    kernel: str
    ops: tuple[str, ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    detail: str = ""
    fn: Callable | None = None  # fn(env, arena); None for a view that needs no work
    parts: list = field(default_factory=list)  # (kernel, ops, reads, writes, detail) of fused layers
    pre: dict | None = None  # a pointwise->bits step's parameters, for fusing into a bgemm chain
    fresh: tuple = ()  # slots this step fills with a newly allocated array on every run
    expose: Callable | None = None  # expose(env, arena): put internal values in env (keep_all)
    checks: tuple = ()  # graph inputs this step's kernel checks for NaN/inf while reading them
    view: bool = False  # only reshapes (reads no element)

    def line(self, k: int) -> str:
        head = _fmt(f"{k:>3}", self.kernel, self.ops, self.reads, self.writes, self.detail)
        subs = [_fmt("   ", *p) for p in self.parts] if len(self.parts) > 1 else []
        return "\n".join([head] + subs)


def _fmt(k, kernel, ops, reads, writes, detail) -> str:
    ops_s = ",".join(ops)  # every op, so the summary says which kernel runs each one
    line = f"  {k}  {kernel:<26} {ops_s:<30} {', '.join(reads)} -> {', '.join(writes)}"
    return line + (f"  [{detail}]" if detail else "")


class Plan:
    """A compiled forward plan; `run(feeds)` returns the graph outputs by name."""

    def __init__(self, graph: Graph, steps: list[Step], env0: list, inputs: dict[str, int],
                 dense: dict[str, int], packed: dict[str, tuple[int, Packed]],
                 aliases: dict[str, tuple[str, ...]] | None = None):
        aliases = aliases or {}
        self.graph = graph
        self.steps = steps
        self._env0 = env0
        self._inputs = list(inputs.items())
        self._dense = dense
        self._packed = packed
        self._run = [(k, s.fn) for k, s in enumerate(steps) if s.fn is not None]
        self._fns = [fn for _, fn in self._run]
        # outputs written into a new array on every run need no copy (unless listed twice)
        fresh = {s for st in steps for s in st.fresh}
        dup = {o for o in graph.outputs if graph.outputs.count(o) > 1 or o in graph.inputs}
        self._outs = [(o, dense[o], dense[o] in fresh and o not in dup) for o in graph.outputs]
        self._tls = threading.local()
        # inputs a kernel checks for NaN/inf while reading them, when no other step reads them first
        readers: dict[str, list[Step]] = {}
        for st in steps:
            if st.fn is not None and not st.view:
                for r in st.reads:
                    readers.setdefault(r, []).append(st)
        self.finite_checked = frozenset(
            n for st in steps for n in st.checks
            if all(r is st for a in aliases.get(n, (n,)) for r in readers.get(a, [])))

    # -- execution --------------------------------------------------------------------------------
    def _arena(self) -> dict:
        a = getattr(self._tls, "arena", None)
        if a is None:
            a = self._tls.arena = {}
        return a

    def _start(self, feeds: dict) -> list:
        env = self._env0.copy()
        try:
            for name, slot in self._inputs:
                env[slot] = feeds[name]
        except KeyError as e:
            raise InputError(f"missing input {e.args[0]!r}", hint="feed every graph input") from None
        return env

    def run(self, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
        """Graph outputs by name (arrays the caller owns). Feeds must already be checked
        (Session.run does: names, dtypes, shapes, finite values). With `keep_all`, every value
        the plan materializes (packed ones unpacked), for comparison with the evaluator."""
        env = self._start(feeds)
        arena = self._arena()
        i = 0
        try:
            for fn in self._fns:
                fn(env, arena)
                i += 1
        except Exception as e:
            raise self._wrap(e, self._run[i][0]) from e
        out = {o: env[s] if fresh else np.array(env[s]) for o, s, fresh in self._outs}
        if keep_all:
            for st in self.steps:
                if st.expose is not None:
                    st.expose(env, arena)
            for name, s in self._dense.items():
                if env[s] is not None and name not in out:
                    out[name] = np.array(env[s])
            for name, (s, rep) in self._packed.items():
                if env[s] is not None and name not in out:
                    out[name] = _unpack_value(env[s], rep)
        return out

    def profile(self, feeds: dict[str, np.ndarray], repeats: int = 20) -> list[tuple[Step, float]]:
        """Median seconds of every step over `repeats` runs (after one warm-up run)."""
        times = [[] for _ in self._run]
        for r in range(repeats + 1):
            env = self._start(feeds)
            arena = self._arena()
            for j, (k, fn) in enumerate(self._run):
                t0 = time.perf_counter()
                fn(env, arena)
                if r:
                    times[j].append(time.perf_counter() - t0)
        return [(self.steps[k], float(np.median(t))) for (k, _), t in zip(self._run, times)]

    def _wrap(self, e: Exception, k: int) -> TamecError:
        st = self.steps[k]
        node = st.ops[0] if st.ops else None
        op = self.graph.op(node).qualname if node and node in self.graph.nx else None
        if isinstance(e, TamecError):
            return e.at(node=node, op=op)
        return ModelStructureError(f"plan step {k} ({st.kernel}) failed: {type(e).__name__}: {e}",
                                   node=node, op=op, hint="run with engine='reference' to compare")

    # -- description --------------------------------------------------------------------------------
    def kernels(self) -> dict[str, str]:
        """The kernel chosen for every op id (layers of a chained step by their own kernel)."""
        out = {op: s.kernel for s in self.steps for op in s.ops}
        for s in self.steps:
            for kernel, ops, *_ in s.parts:
                out.update({op: kernel for op in ops})
        return out

    def __str__(self) -> str:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.kernel] = counts.get(s.kernel, 0) + 1
        head = f'plan for graph "{self.graph.name}": {len(self.steps)} steps (' + ", ".join(
            f"{k} x{v}" for k, v in counts.items()) + ")"
        return "\n".join([head] + [s.line(k) for k, s in enumerate(self.steps)])

    __repr__ = __str__


def _unpack_value(val, rep: Packed) -> np.ndarray:
    s, m, _ = val
    n = s.shape[0]
    out = np.empty((n, rep.C, rep.S), np.float32)
    unpack(s, m, rep.ternary, out)
    return _logical(out, rep)


def _logical(out: np.ndarray, rep: Packed) -> np.ndarray:
    """Unpacked (N, C, S) values in the value's own shape (channels last for an `hwc` layout)."""
    n = out.shape[0]
    if rep.hwc:
        out = np.ascontiguousarray(out.transpose(0, 2, 1))
    return out.reshape((n,) + rep.shape)


def _buf(arena: dict, key, shape: tuple, dtype) -> np.ndarray:
    b = arena.get(key)
    if b is None or b.shape != shape:
        b = arena[key] = np.empty(shape, dtype)
    return b


# ------------------------------------------------------------------------------------------------
# Threshold parameters
# ------------------------------------------------------------------------------------------------
@dataclass
class _Thr:
    """A tamec.Threshold resolved per channel: tau, and the value (flip applied) above, below, at."""

    tau: np.ndarray  # float64 (C,)
    va: np.ndarray
    vb: np.ndarray
    vt: np.ndarray

    @property
    def packable(self) -> bool:
        vals = np.concatenate([self.va, self.vb, self.vt])
        return bool(np.all(np.isin(vals, (-1.0, 0.0, 1.0))))

    def can_zero(self, integer_input: bool) -> bool:
        """May the output hold 0? (a 0 value, or a tie to 0 that the input can reach)."""
        if np.any(self.va == 0) or np.any(self.vb == 0):
            return True
        tie0 = self.vt == 0
        if not integer_input:
            return bool(np.any(tie0))
        reach = np.isnan(self.tau) | (np.isfinite(self.tau) & (self.tau == np.floor(self.tau)))
        return bool(np.any(tie0 & reach))

    def words(self, cw: int) -> np.ndarray:
        """Bit words [Pa, Pb, Pt, Ma, Mb, Mt, valid] (7, cw) of the packed output."""
        c = self.tau.size
        pad = cw * WORD - c
        if pad < 0:  # a caller sized the words for another width: a bug, not a user error
            raise AssertionError(f"{cw} bit words cannot hold {c} channels")
        rows = [self.va > 0, self.vb > 0, self.vt > 0, self.va != 0, self.vb != 0, self.vt != 0,
                np.ones(c, bool)]
        bits = np.pad(np.stack(rows), [(0, 0), (0, pad)])
        by = np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")
        return np.ascontiguousarray(by).view("<u8").astype(np.uint64)

    def vals(self) -> np.ndarray:
        return np.stack([self.va, self.vb, self.vt]).astype(np.float32)

    def float_bounds(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """dn, up (float32, padded with NaN to n): for float32 x, x < tau <=> x <= dn and
        x > tau <=> x >= up, exactly as comparing float64(x) with tau."""
        t = self.tau
        with np.errstate(over="ignore", invalid="ignore"):
            t32 = t.astype(np.float32)
            t64 = t32.astype(np.float64)
            up = np.where(t64 > t, t32, np.nextafter(t32, np.float32(np.inf)))
            dn = np.where(t64 < t, t32, np.nextafter(t32, np.float32(-np.inf)))
        up[np.isnan(t) | (t == np.inf)] = np.nan  # nothing is above +inf or NaN
        dn[np.isnan(t) | (t == -np.inf)] = np.nan
        pad = np.full(n - t.size, np.nan, np.float32)
        return np.concatenate([dn, pad]).astype(np.float32), np.concatenate([up, pad]).astype(np.float32)

    def int_bounds(self, jp: int, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """tlo, thi (int64, padded to jp): for integer x + bias, below <=> x <= tlo, above <=>
        x >= thi, exactly as the float comparison of x + bias with tau."""
        t = self.tau
        b = np.zeros(t.size, np.int64) if bias is None else bias.astype(np.int64)
        tlo = np.full(jp, -_BIG, np.int64)
        thi = np.full(jp, _BIG, np.int64)
        with np.errstate(invalid="ignore"):
            fin = np.isfinite(t) & (np.abs(t) < _BIG / 4)
            hi_side = ~np.isnan(t) & ~fin & (t > 0)  # tau = +inf (or beyond every reachable x)
            lo_side = ~np.isnan(t) & ~fin & (t < 0)
        tf = np.where(fin, t, 0.0)
        tlo[:t.size] = np.where(fin, np.ceil(tf).astype(np.int64) - 1 - b, np.where(hi_side, _BIG, -_BIG))
        thi[:t.size] = np.where(fin, np.floor(tf).astype(np.int64) + 1 - b, np.where(lo_side, -_BIG, _BIG))
        return tlo, thi


def _threshold(op: Op, channels: int, rank: int) -> _Thr | None:
    """The threshold per channel along axis 1 of a rank-`rank` input, or None if not per-channel."""
    try:
        p = ThresholdParams.of(op)
    except TamecError:
        return None  # the evaluator fallback reports it
    per = p.per_channel(channels, rank)
    if per is None:
        return None
    tau_c, flip_c = per
    up, down = p.levels(flip_c)
    return _Thr(tau_c, up, down, np.full(channels, p.tie))


class _Fallback(Evaluator):
    """The reference evaluator's kernel preparation without preparing every op up front."""

    def __init__(self, graph: Graph):  # noqa: super().__init__ would build kernels for all ops
        import onnx

        self.graph = graph
        self.opset = int(graph.opset.get("", onnx.defs.onnx_opset_version()))
        self._consts = {n: v.const for n, v in graph.values.items() if v.const is not None}

    def kernel(self, op: Op):
        return self._prepare(op)


def _static(shape) -> tuple | None:
    """The non-batch dims when all are ints, else None."""
    if shape is None or len(shape) < 1 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(shape[1:])


# The runtime stage of the op registry: the kernels the builder may choose; every other supported
# op runs on the evaluator's kernel (its evaluate hook), so every model the importer accepts runs.
_QUANT = "qonnx.custom_op.general.Quant"
attach("runtime", ["tamec.Linear", "Conv"], None, how="bgemm on packed bits when binary, else BLAS GEMM + fused chain")
attach("runtime", ["tamec.Threshold"], None, how="fused in bgemm/pointwise, writes packed bits")
attach("runtime", ["MaxPool"], None, how="OR on packed bits when binary, else a float32 kernel")
attach("runtime", ["Transpose"], None, how="view when only size-1 axes move, else a numpy copy")
attach("runtime", ["Add", "Sub", "Mul", "Div", "BatchNormalization"], None, how="pointwise chain")
attach("runtime", [_QUANT], None, how="pointwise chain (2+ bits, constant scale and zero point)")
attach("runtime", ["Flatten", "Reshape", "Identity"], None, how="view")
attach("runtime", sorted(q for q in REGISTRY if not has(q, "runtime")), None, how="evaluator kernel")

_ROUNDING = {"ROUND": K.OP_ROUND, "HALF_EVEN": K.OP_ROUND, "FLOOR": K.OP_FLOOR, "CEIL": K.OP_CEIL}
_CHAIN_OPS = {"Add": (K.OP_ADD, K.OP_ADD), "Mul": (K.OP_MUL, K.OP_MUL), "Sub": (K.OP_SUB, K.OP_RSUB),
              "Div": (K.OP_DIV, K.OP_RDIV)}


class _Builder:
    def __init__(self, graph: Graph, fuse_input: bool = True):
        self.g = graph
        self.fuse_input = fuse_input
        self.ev = _Fallback(graph)
        self.outputs = set(graph.outputs)
        self.env0: list = []
        self.slot: dict[str, int] = {}  # dense slots
        self.pslot: dict[str, tuple[int, Packed]] = {}
        self.steps: list[Step] = []
        self.done: set[str] = set()
        self._binw: dict[str, np.ndarray | None] = {}
        self.segments: list[_Segment] = []
        self.segment_of: dict[str, _Segment] = {}  # packed value -> open segment whose last layer wrote it
        self.alias: dict[str, str] = {n: n for n in graph.inputs if graph.values[n].const is None}

    def _view_of(self, x: str, out: str) -> None:
        if x in self.alias:
            self.alias[out] = self.alias[x]

    def input_of(self, name: str) -> str | None:
        """The graph input `name` is (a reshaped view of), if any."""
        return self.alias.get(name)

    # -- slots ----------------------------------------------------------------------------------
    def _new_slot(self, init=None) -> int:
        self.env0.append(init)
        return len(self.env0) - 1

    def value(self, name: str) -> Value:
        return self.g.value(name)

    def fixed(self, name: str) -> np.ndarray | None:
        return self.ev.fixed(name) if name else None

    def dense(self, name: str) -> int:
        """Slot of the dense form of `name`, unpacking it first if only bits exist."""
        if name in self.slot:
            return self.slot[name]
        ps, rep = self.pslot[name]
        out = self.slot[name] = self._new_slot()
        key = ("unpack", name)

        def fn(env, arena):
            s, m, _ = env[ps]
            n = s.shape[0]
            o = _buf(arena, key, (n, rep.C, rep.S), np.float32)
            unpack(s, m, rep.ternary, o)
            env[out] = _logical(o, rep)

        self.steps.append(Step("unpack", (), (name,), (name,), f"{rep.C}x{rep.S} bits -> float32", fn))
        return out

    def packed(self, name: str) -> tuple[int, Packed] | None:
        """Slot and layout of the packed form of `name`, packing a dense binary value if needed."""
        if name in self.pslot:
            return self.pslot[name]
        v = self.value(name)
        dims = _static(v.shape)
        if v.domain.kind not in ("bipolar", "ternary") or v.dtype != "float32" or not dims:
            return None
        c, sp = dims[0], dims[1:]
        # ternary whatever the domain says: the zero count the pack returns picks the kernel at
        # run time, so a "bipolar" value that holds a 0 still multiplies exactly (as the evaluator)
        rep = Packed(c, math.prod(sp), sp if len(sp) == 2 else (), dims, True)
        src = self.dense(name)
        ps = self._new_slot()
        self.pslot[name] = (ps, rep)
        key = ("pack", name)

        def fn(env, arena):
            x = np.ascontiguousarray(env[src])
            n = x.shape[0]
            s = _buf(arena, key + ("s",), (n, rep.S, rep.CW), np.uint64)
            m = _buf(arena, key + ("m",), (n, rep.S, rep.CW), np.uint64)
            bad, z = pack(_f32(x).reshape(n, rep.C, rep.S), s, m)
            if bad:
                raise ModelStructureError(f"value {name!r} is declared {v.domain} but holds other values",
                                          hint="a pass declared a domain its values do not have")
            env[ps] = (s, m, z)

        self.steps.append(Step("pack", (), (name,), (name,), f"{c} ch x {rep.S} -> {rep.CW} words", fn))
        return self.pslot[name]

    # -- eligibility -----------------------------------------------------------------------------
    def bin_weight(self, name: str) -> np.ndarray | None:
        """A constant weight whose entries are all +-1, else None."""
        if name not in self._binw:
            w = self.fixed(name)
            ok = w is not None and w.dtype.kind == "f" and w.size > 0 and bool(np.all(np.abs(w) == 1))
            self._binw[name] = w if ok else None
        return self._binw[name]

    def gemm_ok(self, op: Op, name: str) -> bool:
        """Can `op` read `name` as packed bits (binary Linear/Conv, MaxPool, flat view)?"""
        if not op.inputs or op.inputs[0] != name or any(i == name for i in op.inputs[1:]):
            return False
        q = op.qualname
        if q == "tamec.Linear":
            return self.bin_weight(op.inputs[1]) is not None and self.value(op.outputs[0]).dtype == "float32"
        if q == "Conv":
            w = self.bin_weight(op.inputs[1])
            return w is not None and w.ndim == 4 and int(op.attrs.get("group", 1)) == 1 \
                and self.value(op.outputs[0]).dtype == "float32"
        if q == "MaxPool":
            return len([o for o in op.outputs if o]) == 1 and len(op.attrs.get("kernel_shape", ())) == 2
        if q in ("Flatten", "Reshape", "Identity"):
            return self.wants_packed(op.outputs[0])
        return False

    def wants_packed(self, name: str) -> bool:
        return any(self.gemm_ok(u, name) for u in self.g.users(name))

    def sole_user(self, name: str) -> Op | None:
        us = self.g.users(name)
        if len(us) != 1 or name in self.outputs:
            return None
        return us[0]

    def chain_link(self, op: Op) -> tuple[str, list[int], list[np.ndarray]] | None:
        """(x, codes, per-channel float32 constants) if `op` is a float32 pointwise op on x."""
        q = op.qualname
        if q not in _CHAIN_OPS and q not in ("BatchNormalization", _QUANT):
            return None
        out = self.value(op.outputs[0])
        if out.dtype != "float32" or len([o for o in op.outputs if o]) != 1:
            return None
        if q == _QUANT:
            return self.quant_link(op)
        if q == "BatchNormalization":
            if len(op.inputs) != 5 or int(op.attrs.get("training_mode", 0)):
                return None
            x = op.inputs[0]
            params = [self.fixed(i) for i in op.inputs[1:]]
            xv = self.value(x)
            dims = _static(xv.shape)
            if any(p is None or p.ndim > 1 for p in params) or xv.dtype != "float32" or not dims:
                return None
            scale, bias, mean, var = params
            c = dims[0]
            if any(p.size not in (1, c) for p in params):
                return None
            dt = np.float32  # the evaluator's formula, in the input's dtype, computed once here
            eps = float(op.attrs.get("epsilon", 1e-5))
            inv_std = dt(1) / np.sqrt(np.asarray(var, np.float32) + dt(eps))
            ns = inv_std * np.asarray(scale, np.float32)
            nb = np.asarray(bias, np.float32) - np.asarray(mean, np.float32) * ns
            return x, [K.OP_MUL, K.OP_ADD], [np.broadcast_to(ns, (c,)), np.broadcast_to(nb, (c,))]
        if len(op.inputs) != 2:
            return None
        a, b = op.inputs
        ca, cb = self.fixed(a), self.fixed(b)
        if (ca is None) == (cb is None):
            return None
        x, const, rev = (a, cb, False) if cb is not None else (b, ca, True)
        k = self.per_channel(x, const)
        if k is None:
            return None
        return x, [_CHAIN_OPS[q][1 if rev else 0]], [k]

    def per_channel(self, x: str, const: np.ndarray | None) -> np.ndarray | None:
        """`const` as one float32 per channel of the float32 value `x` (broadcast along axis 1),
        or None if it does not broadcast that way."""
        xv = self.value(x)
        dims = _static(xv.shape)
        if const is None or xv.dtype != "float32" or const.dtype != _F32 or not dims or const.ndim > len(xv.shape):
            return None
        full = (1,) * (len(xv.shape) - const.ndim) + const.shape
        c = dims[0]
        if len(full) < 2 or full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, c):
            return None
        return np.broadcast_to(const.reshape(-1), (c,))

    def quant_link(self, op: Op) -> tuple[str, list[int], list[np.ndarray]] | None:
        """QONNX Quant with constant float32 scale and zero point as the evaluator's operations:
        x / scale + zeropt, clamped to the bit width's integers, rounded, - zeropt, * scale."""
        x, sc, zp, bw = op.inputs
        scale, zero = self.per_channel(x, self.fixed(sc)), self.per_channel(x, self.fixed(zp))
        bits = self.fixed(bw)
        rnd = _ROUNDING.get(str(op.attrs.get("rounding_mode", "ROUND")).upper())
        if scale is None or zero is None or bits is None or bits.size != 1 or rnd is None \
                or not {"signed", "narrow"} <= set(op.attrs):
            return None
        signed, narrow, b = int(op.attrs["signed"]), int(op.attrs["narrow"]), float(bits.reshape(-1)[0])
        if b != int(b) or b < 2 or b > 24:  # 1 bit is a sign (canonicalize's Threshold)
            return None
        lo, hi = _min_int(signed, narrow, int(b)), _max_int(signed, narrow, int(b))
        c = scale.shape[0]
        full = lambda v: np.full(c, v, np.float32)  # noqa: E731
        codes = [K.OP_DIV, K.OP_ADD, K.OP_MIN, K.OP_MAX, rnd, K.OP_SUB, K.OP_MUL]
        return x, codes, [scale, zero, full(hi), full(lo), full(0), zero, scale]

    # -- build ----------------------------------------------------------------------------------
    def build(self) -> Plan:
        g = self.g
        for name, v in g.values.items():
            if v.const is not None:
                self.slot[name] = self._new_slot(v.const)
        inputs = {}
        for name in g.inputs:
            if name not in self.slot:
                self.slot[name] = self._new_slot()
            inputs[name] = self.slot[name]
        for op in g.ops():
            if op.id in self.done:
                continue
            try:
                handled = self.native(op)
            except TamecError as e:
                raise e.at(node=op.id, op=op.qualname)
            if not handled:
                self.fallback(op)
        for o in g.outputs:
            self.dense(o)
        needed = set(g.outputs) | {r for st in self.steps for r in st.reads}
        for seg in self.segments:
            seg.finalize(needed)
        aliases: dict[str, tuple[str, ...]] = {}
        for v, i in self.alias.items():
            aliases[i] = aliases.get(i, ()) + (v,)
        return Plan(g, self.steps, self.env0, inputs, self.slot, self.pslot, aliases)

    def native(self, op: Op) -> bool:
        q = op.qualname
        if q == "tamec.Linear":
            return self.gemm(op) or self.real_gemm(op)
        if q == "Conv":
            return self.gemm(op) or self.real_conv(op)
        if q == "MaxPool":
            return self.maxpool(op) or self.maxpool_f32(op)
        if q in ("Flatten", "Reshape", "Identity"):
            return self.reshape(op)
        if q == "Transpose":
            return self.pointwise(op) or self.transpose(op)
        if q == "tamec.Threshold" or self.chain_link(op) is not None:
            return self.pointwise(op)
        return False

    # -- fallback ---------------------------------------------------------------------------------
    def fallback(self, op: Op) -> None:
        kern = self.ev.kernel(op)
        ins = [self.dense(i) if i else -1 for i in op.inputs]
        outs = []
        for o in op.outputs:
            if o:
                self.slot[o] = self._new_slot()
                outs.append(self.slot[o])
            else:
                outs.append(-1)

        def fn(env, arena):
            with np.errstate(all="ignore"):  # ONNX arithmetic is IEEE: inf and nan are results
                res = kern([env[i] if i >= 0 else None for i in ins])
            for s, r in zip(outs, res):
                if s >= 0:
                    env[s] = np.asarray(r)

        self.steps.append(Step(f"evaluator:{op.op_type}", (op.id,), tuple(i for i in op.inputs if i),
                               tuple(o for o in op.outputs if o), "", fn))

    # -- views ------------------------------------------------------------------------------------
    def reshape(self, op: Op) -> bool:
        x, out = op.inputs[0] if op.inputs else "", op.outputs[0]
        if not x or len([o for o in op.outputs if o]) != 1:
            return False
        q = op.qualname
        got = self.pslot.get(x) or (self.packed(x) if self.wants_packed(out) else None)
        if got is not None and self.wants_packed(out):
            ps, rep = got
            if q == "Identity":
                self.pslot[out] = (ps, rep)
            else:
                dims = _static(self.value(out).shape)
                if dims is None or len(dims) != 1 or dims[0] != rep.C * rep.S:
                    return False
                self.pslot[out] = (ps, replace(rep, shape=dims))
            self.steps.append(Step("view(bits)", (op.id,), (x,), (out,), "no copy", None))
            return True
        if q == "Identity":
            src = self.dense(x)
            self.slot[out] = src
            self._view_of(x, out)
            self.steps.append(Step("view", (op.id,), (x,), (out,), "no copy", None))
            return True
        if q == "Flatten":
            axis = int(op.attrs.get("axis", 1))
            src = self.dense(x)
            dst = self.slot[out] = self._new_slot()

            def fn(env, arena):
                a = env[src]
                ax = axis + a.ndim if axis < 0 else axis
                env[dst] = a.reshape(math.prod(a.shape[:ax]), math.prod(a.shape[ax:]))

            self._view_of(x, out)
            self.steps.append(Step("flatten", (op.id,), (x,), (out,), f"axis={axis}", fn, view=True))
            return True
        shape = self.fixed(op.inputs[1]) if len(op.inputs) > 1 else None
        if shape is None or shape.ndim != 1 or shape.dtype.kind not in "iu":
            return False
        self._view_of(x, out)
        shp = [int(d) for d in shape]
        allowzero = int(op.attrs.get("allowzero", 0))
        src = self.dense(x)
        dst = self.slot[out] = self._new_slot()

        def fn(env, arena):
            a = env[src]
            tgt = [a.shape[i] if d == 0 and not allowzero and i < a.ndim else d for i, d in enumerate(shp)]
            env[dst] = a.reshape(tgt)

        self.steps.append(Step("reshape", (op.id,), (x,), (out,), str(shp), fn, view=True))
        return True

    def transpose(self, op: Op) -> bool:
        """Transpose of a dense value that keeps the batch axis first: a view when it only moves
        size-1 axes (tf2onnx's NHWC -> NCHW of a one-channel image), else one numpy copy."""
        x, out = op.inputs[0], op.outputs[0]
        xv = self.value(x)
        dims, odims = _static(xv.shape), _static(self.value(out).shape)
        rank = len(xv.shape) if xv.shape is not None else 0
        perm = [int(p) for p in op.attrs.get("perm", list(range(rank))[::-1])]
        if dims is None or odims is None or not perm or perm[0] != 0 or sorted(perm) != list(range(rank)):
            return False
        full = (0,) + dims
        moved = [p for p in perm[1:] if full[p] != 1]
        src = self.dense(x)
        dst = self.slot[out] = self._new_slot()
        if moved == sorted(moved):
            def fn(env, arena):
                a = env[src]
                env[dst] = a.reshape((a.shape[0],) + odims)

            self._view_of(x, out)
            self.steps.append(Step("transpose(view)", (op.id,), (x,), (out,), f"perm={perm}, size-1 axes only",
                                   fn, view=True))
        else:
            def fn(env, arena):
                env[dst] = np.ascontiguousarray(env[src].transpose(perm))

            st = Step("transpose(copy)", (op.id,), (x,), (out,), f"perm={perm}", fn)
            st.fresh = (dst,)
            self.steps.append(st)
        self.done.add(op.id)
        return True

    # -- pointwise chains and thresholds --------------------------------------------------------
    def gather(self, op: Op):
        """The pointwise chain starting at `op` and the threshold ending it (if any):
        (chain ops, codes, constants, threshold op or None, the chain's input)."""
        chain: list[Op] = []
        codes: list[int] = []
        consts: list[np.ndarray] = []
        cur = op
        x0 = None
        while True:
            link = self.chain_link(cur)
            if link is None:
                break
            x, cs, ks = link
            if chain and x != chain[-1].outputs[0]:
                break
            if not chain:
                x0 = x
            chain.append(cur)
            codes += cs
            consts += ks
            nxt = self.sole_user(cur.outputs[0])
            if nxt is None or nxt.id in self.done:
                break
            cur = nxt
        thr = None
        tail: list[Op] = []
        last = chain[-1].outputs[0] if chain else None
        if chain:
            u = self.sole_user(last)
            if u is not None and u.qualname == "tamec.Threshold" and u.inputs[0] == last:
                thr = u
            else:
                tail, thr = self.layout_tail(last)
        elif op.qualname == "tamec.Threshold":
            thr, x0 = op, op.inputs[0]
        elif op.qualname == "Transpose":
            tail, thr = self.layout_tail(op.inputs[0])
            x0 = op.inputs[0] if thr is not None else None
        return chain, codes, consts, thr, x0, tail

    def layout_tail(self, name: str) -> tuple[list[Op], Op | None]:
        """tf2onnx's layout ops around a Threshold with one tau for all elements (the next Larq
        layer's sign), which then moves before them (it is the same for every element):
        - Transpose(NCHW -> NHWC) -> Threshold -> Transpose(NHWC -> NCHW) (the sign between two
          convs): the bits are the usual NCHW planes of the last Transpose's output;
        - Transpose(NCHW -> NHWC) -> Flatten/Reshape to (N, H*W*C) -> Threshold (Flatten before a
          Dense): its bits in the `hwc` order are what the next binary Linear reads.
        ([], None) if `name` is not read so."""
        v = self.value(name)
        dims = _static(v.shape)
        tr = self.sole_user(name)
        if dims is None or len(dims) != 3 or tr is None or tr.qualname != "Transpose" \
                or [int(p) for p in tr.attrs.get("perm", ())] != [0, 2, 3, 1]:
            return [], None
        mid = self.sole_user(tr.outputs[0])
        back = self.sole_user(mid.outputs[0]) if mid is not None and mid.qualname == "tamec.Threshold" else None
        if back is not None and back.qualname == "Transpose" and mid.inputs[0] == tr.outputs[0] \
                and [int(p) for p in back.attrs.get("perm", ())] == [0, 3, 1, 2] and self._uniform(mid) \
                and self.wants_packed(back.outputs[0]):
            return [tr, back], mid
        fl = mid
        if fl is None or fl.qualname not in ("Flatten", "Reshape") or fl.inputs[0] != tr.outputs[0] \
                or _static(self.value(fl.outputs[0]).shape) != (math.prod(dims),) \
                or fl.qualname == "Flatten" and int(fl.attrs.get("axis", 1)) != 1:
            return [], None
        thr = self.sole_user(fl.outputs[0])
        if thr is None or thr.qualname != "tamec.Threshold" or thr.inputs[0] != fl.outputs[0]:
            return [], None
        if not self._uniform(thr) or not self.wants_packed(thr.outputs[0]):
            return [], None
        return [tr, fl], thr

    @staticmethod
    def _uniform(thr: Op) -> bool:
        """One tau and one flip for every element (so layout ops commute with the threshold)."""
        try:
            p = ThresholdParams.of(thr)
        except TamecError:
            return False
        return p.tau.size == 1 and p.flip.size == 1

    def pointwise(self, op: Op, conv: Op | None = None) -> bool:
        """A pointwise chain (+ threshold) from `op`; with `conv`, the real one-channel Conv whose
        only reader `op` is (None: no chain) runs first in the same kernel."""
        if op is not None:
            chain, codes, consts, thr, x0, tail = self.gather(op)
        else:
            chain, codes, consts, thr, x0, tail = [], [], [], None, None, []
        if conv is not None:
            if chain and x0 != conv.outputs[0] or not chain and thr is not None and thr.inputs[0] != conv.outputs[0]:
                chain, codes, consts, thr, tail = [], [], [], None, []
            x0 = conv.outputs[0]
        last = chain[-1].outputs[0] if chain else (x0 if conv is not None else None)
        if thr is None and not chain and conv is None:
            return False
        xv = self.value(x0)
        dims = _static(xv.shape)
        if xv.dtype != "float32" or not dims:
            return False
        c, sp = dims[0], dims[1:]
        S = math.prod(sp)
        t = None
        if thr is not None:
            t = _threshold(thr, c, len(xv.shape))
            if t is None or self.value(thr.outputs[0]).dtype != "float32" or tail and not t.packable:
                if not chain and conv is None:
                    return False
                thr, tail = None, []
        out = thr.outputs[0] if thr is not None else last
        nchw_tail = bool(tail) and tail[-1].qualname == "Transpose"  # NHWC sandwich: NCHW bits out
        if nchw_tail:
            out = tail[-1].outputs[0]
        bits = thr is not None and t.packable and self.wants_packed(out)
        codes_a = np.asarray(codes, np.int64) if codes else _NO_CODES
        consts_a = np.ascontiguousarray(np.stack(consts).astype(np.float32)) if consts else np.zeros((0, c), np.float32)
        rep = Packed(c, S, sp if len(sp) == 2 else (), dims, t.can_zero(False)) if bits else None
        if tail and not nchw_tail:
            rep = replace(rep, shape=(c * S,), hwc=True)
        cw = rep.CW if bits else 1
        dn, up = t.float_bounds(max(c, cw * WORD)) if t is not None else (_NO_F, _NO_F)
        # bit words only for packed output (OUT_BITS reads them); a float output has no words
        pw = t.words(cw) if bits else _DUMMY_U2
        vals = t.vals() if t is not None else np.zeros((3, c), np.float32)
        mode = K.OUT_BITS if bits else (K.OUT_FLOAT if thr is not None else K.OUT_CHAIN)
        names = [o.id for o in chain] + [o.id for o in tail] + ([thr.id] if thr is not None else [])
        if conv is not None:
            names.insert(0, conv.id)
            self.done.update(names)
            build = self._conv1 if conv.qualname == "Conv" and self._one_channel(conv) else self._sgemm
            return build(conv, names, out, rep, bits, mode, dims, codes_a, consts_a, dn, up, pw, vals,
                         [o.op_type for o in chain])
        src = self.dense(x0)
        dst = self._new_slot()
        key = ("pw", op.id)
        self.done.update(names)
        feed = self.input_of(x0)  # a graph input read here: the kernel checks it is finite
        if bits:
            self.pslot[out] = (dst, rep)

            def fn(env, arena):
                x = _f32(np.ascontiguousarray(env[src]))
                n = x.shape[0]
                s = _buf(arena, key + ("s",), (n, S, cw), np.uint64)
                m = _buf(arena, key + ("m",), (n, S, cw), np.uint64)
                z, bad = K.pointwise(x.reshape(n, c, S), codes_a, consts_a, mode, dn, up, pw, vals, s, m, _DUMMY_F)
                if bad and feed:
                    raise _nonfinite(feed)
                env[dst] = (s, m, z)
        else:
            self.slot[out] = dst
            oshape = dims

            def fn(env, arena):
                x = _f32(np.ascontiguousarray(env[src]))
                n = x.shape[0]
                o = np.empty((n, c, S), np.float32)  # fresh: dense results may be graph outputs
                _, bad = K.pointwise(x.reshape(n, c, S), codes_a, consts_a, mode, dn, up, pw, vals,
                                     _DUMMY_U, _DUMMY_U, o)
                if bad and feed:
                    raise _nonfinite(feed)
                env[dst] = o.reshape((n,) + oshape)

        kind = "pointwise" + ("+threshold" if thr is not None else "") + ("->bits" if bits else "->float32")
        desc = [f"{c} ch x {S}"]
        if codes:
            desc.append("chain " + ",".join(o.op_type for o in chain))
        if bits:
            desc.append("ternary out" if self.pslot[out][1].ternary else "bipolar out")
        step = Step(kind, tuple(names), (x0,), (out,), "; ".join(desc), fn)
        step.checks = (feed,) if feed else ()
        if not bits:
            step.fresh = (dst,)
        if bits:
            step.pre = dict(src=src, shape=(c, S), codes=codes_a, consts=consts_a, dn=dn, up=up, pw=pw,
                            slot=dst, rep=rep, feed=feed)
        self.steps.append(step)
        return True

    # -- real convolution and real Linear: float GEMM, then the pointwise chain fused ----------
    def real_conv(self, op: Op) -> bool:
        """Conv on a dense float32 image with constant float32 weights, with the pointwise chain
        and threshold after it fused in: one-channel images in their own kernel (the evaluator's
        arithmetic), several channels as float im2col + one BLAS GEMM (`_sgemm`)."""
        x = op.inputs[0]
        w = self.fixed(op.inputs[1]) if len(op.inputs) > 1 else None
        xv, ov = self.value(x), self.value(op.outputs[0])
        dims = _static(xv.shape)
        if w is None or w.dtype != _F32 or w.ndim != 4 or int(op.attrs.get("group", 1)) != 1 \
                or xv.dtype != "float32" or ov.dtype != "float32" or not dims or len(dims) != 3 \
                or dims[0] != w.shape[1]:
            return False
        if list(op.attrs.get("kernel_shape") or w.shape[2:]) != list(w.shape[2:]):
            return False
        return self._real_then_chain(op, w.shape[0])

    def real_gemm(self, op: Op) -> bool:
        """tamec.Linear of a dense float32 (N, K) value with constant float32 weights: one BLAS
        GEMM (numpy's, the evaluator's own call), then the pointwise chain (+ threshold) fused."""
        w = self.fixed(op.inputs[1])
        xv, ov = self.value(op.inputs[0]), self.value(op.outputs[0])
        dims = _static(xv.shape)
        if w is None or w.dtype != _F32 or w.ndim != 2 or xv.dtype != "float32" or ov.dtype != "float32" \
                or not dims or len(dims) != 1 or dims[0] != w.shape[1] or op.inputs[0] in op.inputs[1:]:
            return False
        return self._real_then_chain(op, w.shape[0])

    def _real_then_chain(self, op: Op, m: int) -> bool:
        b = self.fixed(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else None
        if len(op.inputs) > 2 and op.inputs[2] and (b is None or b.dtype != _F32 or b.size != m):
            return False
        if len([o for o in op.outputs if o]) != 1:
            return False
        u = self.sole_user(op.outputs[0])
        if u is not None and not (self.chain_link(u) is not None or u.qualname == "tamec.Threshold"):
            u = None
        return self.pointwise(u, conv=op)

    def _one_channel(self, conv: Op) -> bool:
        return self.fixed(conv.inputs[1]).shape[1] == 1

    def _sgemm(self, op, names, out, rep, bits, mode, dims, codes_a, consts_a, dn, up, pw, vals, chain_types):
        """The float GEMM step of a real Linear or multi-channel Conv. The GEMM writes channels-last
        rows (N*S, M) into a reused buffer (BLAS: see the module docstring for why), and
        `pointwise` reads each row as one position's channels, so for a threshold it writes the
        (N, S, CW) bit planes directly; the bias is the chain's first Add."""
        conv = op.qualname == "Conv"
        w = self.fixed(op.inputs[1])
        b = self.fixed(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else None
        m_ = w.shape[0]
        wt = np.ascontiguousarray(w.reshape(m_, -1).T)  # (K, M): rows @ wt is the evaluator's matmul
        if b is not None:
            codes_a = np.concatenate([[K.OP_ADD], codes_a]).astype(np.int64)
            consts_a = np.ascontiguousarray(np.vstack([b.reshape(1, m_).astype(np.float32), consts_a]))
        x_name = op.inputs[0]
        src = self.dense(x_name)
        dst = self._new_slot()
        key = ("sgemm", op.id)
        if conv:
            c_, h, wd = _static(self.value(x_name).shape)
            kh, kw = w.shape[2:]
            win = window(op.attrs, (h, wd), [kh, kw])
            oh, ow = win.out
            if (m_, oh, ow) != tuple(dims):
                raise ModelStructureError(f"Conv output {tuple(dims)} disagrees with its window {(m_, oh, ow)}")
            geom = np.array([h, wd, kh, kw, *win.strides, *win.dilations, win.head[0], win.head[1], oh, ow],
                            np.int64)
            S, kdim = oh * ow, c_ * kh * kw
        else:
            S, kdim = 1, w.shape[1]
        # a bare GEMM (+ bias): no pointwise pass; the bias as numpy's add, the evaluator's own
        plain = mode == K.OUT_CHAIN and codes_a.size == (b is not None)
        bias_row = b.reshape(1, m_).astype(np.float32) if b is not None else None

        def rows(env, arena):
            """The GEMM's (N*S, M) result (in a reused buffer unless it is the plain output)."""
            x = _f32(np.ascontiguousarray(env[src]))
            n = x.shape[0]
            if conv:
                a = _buf(arena, key + ("cols",), (kdim, n * S), np.float32)
                K.im2col_f32(x, geom, a)
                a = a.T  # BLAS reads the transposed operand in place
            else:
                a = x.reshape(n, kdim)
            y = np.empty((n * S, m_), np.float32) if plain else _buf(arena, key + ("y",), (n * S, m_), np.float32)
            np.matmul(a, wt, out=y)
            if plain and bias_row is not None:
                np.add(y, bias_row, out=y)
            return n, y

        if bits:
            self.pslot[out] = (dst, rep)
            cw = rep.CW

            def fn(env, arena):
                n, y = rows(env, arena)
                s = _buf(arena, key + ("s",), (n, S, cw), np.uint64)
                m = _buf(arena, key + ("m",), (n, S, cw), np.uint64)
                z, _ = K.pointwise(y.reshape(n * S, m_, 1), codes_a, consts_a, mode, dn, up, pw, vals,
                                   s.reshape(n * S, 1, cw), m.reshape(n * S, 1, cw), _DUMMY_F)
                env[dst] = (s, m, z)
        else:
            self.slot[out] = dst
            shape = tuple(dims)

            def fn(env, arena):
                n, y = rows(env, arena)
                if not plain:
                    o = np.empty((n * S, m_, 1), np.float32)
                    K.pointwise(y.reshape(n * S, m_, 1), codes_a, consts_a, mode, dn, up, pw, vals,
                                _DUMMY_U, _DUMMY_U, o)
                    y = o.reshape(n * S, m_)
                if conv:  # channels-last rows -> NCHW
                    y = np.ascontiguousarray(y.reshape(n, S, m_).transpose(0, 2, 1))
                env[dst] = y.reshape((n,) + shape)

        thr = len(names) > 1 + len(chain_types)
        kind = ("conv" if conv else "sgemm") + "(BLAS)" + ("+bias" if plain and b is not None else
                                                           "+pointwise" if chain_types or b is not None else "") \
            + ("+threshold" if thr else "") + ("->bits" if bits else "->float32")
        desc = [f"{kdim}->{m_}" + (f", {kh}x{kw} im2col, {h}x{wd} -> {oh}x{ow}" if conv else "")]
        if chain_types:
            desc.append("chain " + ",".join(chain_types))
        if bits:
            desc.append("ternary out" if rep.ternary else "bipolar out")
        step = Step(kind, tuple(names), (x_name,), (out,), "; ".join(desc), fn)
        if not bits:
            step.fresh = (dst,)
        self.steps.append(step)
        return True

    def _conv1(self, conv, names, out, rep, bits, mode, dims, codes_a, consts_a, dn, up, pw, vals, chain_types):
        w = self.fixed(conv.inputs[1])
        b = self.fixed(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        m_, _, kh, kw = w.shape
        xdims = _static(self.value(conv.inputs[0]).shape)
        h, wd = xdims[1:]
        win = window(conv.attrs, (h, wd), [kh, kw])
        oh, ow = win.out
        if (m_, oh, ow) != tuple(dims):
            raise ModelStructureError(f"Conv output {tuple(dims)} disagrees with its window {(m_, oh, ow)}")
        geom = np.array([h, wd, kh, kw, *win.strides, *win.dilations, win.head[0], win.head[1], oh, ow], np.int64)
        wt = np.ascontiguousarray(w.reshape(m_, kh * kw).T)
        bias = b.reshape(-1).astype(np.float32) if b is not None else np.zeros(m_, np.float32)
        has_b = b is not None
        src = self.dense(conv.inputs[0])
        dst = self._new_slot()
        key = ("conv1", conv.id)
        S = oh * ow
        if bits:
            self.pslot[out] = (dst, rep)
            cw = rep.CW

            def fn(env, arena):
                x = _f32(np.ascontiguousarray(env[src]))
                n = x.shape[0]
                s = _buf(arena, key + ("s",), (n, S, cw), np.uint64)
                m = _buf(arena, key + ("m",), (n, S, cw), np.uint64)
                z = K.conv1_pointwise(x.reshape(n, h, wd), wt, bias, has_b, geom, codes_a, consts_a, mode, dn, up,
                                      pw, vals, s, m, _DUMMY_F)
                env[dst] = (s, m, z)
        else:
            self.slot[out] = dst

            def fn(env, arena):
                x = _f32(np.ascontiguousarray(env[src]))
                n = x.shape[0]
                o = np.empty((n, m_, S), np.float32)
                K.conv1_pointwise(x.reshape(n, h, wd), wt, bias, has_b, geom, codes_a, consts_a, mode, dn, up,
                                  pw, vals, _DUMMY_U, _DUMMY_U, o)
                env[dst] = o.reshape((n,) + tuple(dims))

        kind = "conv1" + ("+pointwise" if chain_types else "") + ("+threshold" if len(names) > 1 + len(chain_types)
                                                                    else "") + ("->bits" if bits else "->float32")
        desc = [f"1->{m_} ch, {kh}x{kw}, {h}x{wd} -> {oh}x{ow}"]
        if chain_types:
            desc.append("chain " + ",".join(chain_types))
        if bits:
            desc.append("ternary out" if rep.ternary else "bipolar out")
        step = Step(kind, tuple(names), (conv.inputs[0],), (out,), "; ".join(desc), fn)
        if not bits:
            step.fresh = (dst,)
        self.steps.append(step)
        return True

    # -- binary GEMM: Linear and Conv -----------------------------------------------------------
    def gemm(self, op: Op) -> bool:
        conv = op.qualname == "Conv"
        x = op.inputs[0]
        if not self.gemm_ok(op, x):
            return False
        w = self.bin_weight(op.inputs[1])
        b_name = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] else None
        bias = None
        if b_name is not None:
            bias = self.fixed(b_name)
            if bias is None or bias.size not in (1, w.shape[0]):
                return False
        xdims = _static(self.value(x).shape)
        if x not in self.pslot and (xdims is None or len(xdims) != (3 if conv else 1)):
            return False
        got = self.packed(x)
        if got is None:
            return False
        ps, rep = got
        J = w.shape[0]
        kw_words = rep.S * rep.CW  # words per GEMM row
        if conv:
            if len(rep.spatial) != 2 or w.shape[1] != rep.C or rep.hwc:
                return False
            kh, kw = w.shape[2:]
            ks = list(op.attrs.get("kernel_shape") or [kh, kw])
            if ks != [kh, kw]:
                return False
            win = window(op.attrs, rep.spatial, [kh, kw])
            oh, ow = win.out
            padded = any(win.head) or any(win.tail)
            geom = np.array([rep.spatial[0], rep.spatial[1], kh, kw, *win.strides, *win.dilations,
                             win.head[0], win.head[1], oh, ow], np.int64)
            # weight bits in im2col order: tap (ky, kx), then channels padded to whole words
            wb = np.moveaxis(w, 1, 3)  # (J, kh, kw, C)
            wb = np.pad(wb, [(0, 0), (0, 0), (0, 0), (0, rep.CW * WORD - rep.C)]).reshape(J, -1)
            kw_words = kh * kw * rep.CW
            kw_words = _pad8(kw_words)
            kvalid = rep.C * kh * kw
            out_rep = Packed(J, oh * ow, (oh, ow), (J, oh, ow), False)
        else:
            kdim = w.shape[1]
            if len(rep.shape) != 1 or rep.shape[0] != kdim:
                return False
            # feature f = c*S + s (f = s*C + c for the hwc order) sits at bit s*CW*64 + c of the row
            wb = w.reshape(J, rep.S, rep.C) if rep.hwc else w.reshape(J, rep.C, rep.S).transpose(0, 2, 1)
            wb = np.pad(wb, [(0, 0), (0, 0), (0, rep.CW * WORD - rep.C)]).reshape(J, -1)
            kvalid, padded, geom = kdim, False, None
            out_rep = Packed(J, 1, (), (J,), False)
        jc = _round(J, K.COLS)  # computed columns; the accumulator rows hold whole words
        js = _round(jc, WORD)
        wb = np.pad(wb, [(0, 0), (0, kw_words * WORD - wb.shape[1])])
        wT = _aligned_copy(pack_weights(wb, K.COLS))
        bmode = K.BIAS_NONE
        bias_a = np.zeros(J, np.float64)
        if bias is not None:
            bias_a = np.broadcast_to(bias.reshape(-1), (J,)).astype(np.float64)
            bmode = K.BIAS_INT if self.value(b_name).domain.is_integer else K.BIAS_FLOAT
        # fuse the threshold that is the result's only reader
        out = op.outputs[0]
        thr = self.sole_user(out)
        t = None
        if thr is not None and thr.qualname == "tamec.Threshold" and bmode != K.BIAS_FLOAT \
                and self.value(thr.outputs[0]).dtype == "float32":
            t = _threshold(thr, J, 4 if conv else 2)
            bmax = float(np.abs(bias_a).max()) if bias is not None else 0.0
            if t is None or not t.packable or kvalid + bmax >= _EXACT:
                t = None
        pooled = None
        if t is None and conv and thr is not None and thr.qualname == "MaxPool" and bmode != K.BIAS_FLOAT:
            pooled = self.pool_threshold(thr, out_rep, kvalid, bias_a if bias is not None else None, js)
        fused = t is not None or pooled is not None
        if pooled is not None:
            tlo, thi, pw, pool_geom, map_words, final_rep, names, out = pooled
            names = (op.id,) + tuple(names)
            out_rep = Packed(J, out_rep.S, out_rep.spatial, out_rep.shape, True)
        elif fused:
            out_rep = Packed(out_rep.C, out_rep.S, out_rep.spatial, out_rep.shape, t.can_zero(True))
            tlo, thi = t.int_bounds(js, bias_a if bias is not None else None)
            pw = t.words(out_rep.CW)
            out = thr.outputs[0]
        else:
            tlo = thi = np.zeros(js, np.int64)
            pw = _DUMMY_U2
        dst = self._new_slot()
        key = ("gemm", op.id)
        tern_in = rep.ternary
        cw_in, jw = rep.CW, out_rep.CW
        if pooled is None:
            names = (op.id, thr.id) if fused else (op.id,)
        self.done.update(names)
        kind = ("bconv" if conv else "bgemm") + ("+threshold->bits" if fused else "->float32")
        if pooled is not None:
            kind = "bconv+maxpool+threshold->bits"
        detail = f"K={kvalid} ({kw_words} words{', im2col' if conv else ''}), J={J}"
        if rep.ternary:
            detail += ", ternary in"
        if fused:
            detail += ", ternary out" if (final_rep if pooled else out_rep).ternary else ", bipolar out"
        if pooled is not None:
            detail += f", pool {final_rep.spatial[0]}x{final_rep.spatial[1]} on bits"
        if not conv:
            layer = _Layer(kw_words, kvalid, wT, tlo, thi, pw if fused else np.zeros((7, 1), np.uint64),
                           bias_a, bmode, K.OUT_BITS if fused else K.OUT_FLOAT, J,
                           out_rep.CW if fused else 1, dst, out, out_rep if fused else None, names, kind, detail)
            seg = self.segment_of.pop(x, None)
            if seg is None:
                last = self.steps[-1] if self.steps else None
                pre = None
                if self.fuse_input and last is not None and last.pre is not None and last.pre["slot"] == ps:
                    pre = self.steps.pop()  # nothing ran in between: fuse it into the chain
                seg = _Segment(ps, rep, x, pre)
                self.segments.append(seg)
                self.steps.append(seg.step)
            seg.layers.append(layer)
            seg.step.ops += names
            seg.step.writes += (out,)
            if fused:
                self.pslot[out] = (dst, out_rep)
                self.segment_of[out] = seg
            else:
                self.slot[out] = dst
            return True
        chanmask = np.zeros(cw_in, np.uint64)
        for c in range(rep.C):
            chanmask[c // WORD] |= np.uint64(1) << np.uint64(c % WORD)
        oh_ow = out_rep.S
        wrow = rep.S * cw_in

        def rows_of(env, arena):
            s, m, z = env[ps]
            n = s.shape[0]
            if not conv:
                return n, s.reshape(n, wrow), m.reshape(n, wrow), tern_in and z > 0
            r = n * oh_ow
            cs = _buf(arena, key + ("cs",), (r, kw_words), np.uint64)
            cm = _buf(arena, key + ("cm",), (r, kw_words), np.uint64)
            t_ = tern_in and z > 0
            K.im2col(s, m, t_, geom, chanmask, cs, cm)
            return n, cs, cm, t_ or padded

        def bits_out(env, arena):
            """The rows through bgemm and its threshold, to packed bits in the arena (pooled or not)."""
            n, a, am, tern = rows_of(env, arena)
            r = a.shape[0]
            acc = _buf(arena, key + ("acc",), (4 * js,), np.int64)
            os_ = _buf(arena, key + ("s",), (r, jw), np.uint64)
            om = _buf(arena, key + ("m",), (r, jw), np.uint64)
            z = K.bgemm(a, am, tern, kvalid, wT, jc, K.OUT_BITS, tlo, thi, pw, bias_a, bmode,
                        os_, om, _DUMMY_F2, acc)
            return n, os_, om, z

        if pooled is not None:
            self.pslot[out] = (dst, final_rep)
            po = final_rep.S

            def fn(env, arena):
                n, os_, om, _ = bits_out(env, arena)
                ps_ = _buf(arena, key + ("ps",), (n, po, jw), np.uint64)
                pm = _buf(arena, key + ("pm",), (n, po, jw), np.uint64)
                z = K.maxpool_map(os_.reshape(n, oh_ow, jw), om.reshape(n, oh_ow, jw), pool_geom, map_words, ps_, pm)
                env[dst] = (ps_, pm, z)
        elif fused:
            self.pslot[out] = (dst, out_rep)

            def fn(env, arena):
                n, os_, om, z = bits_out(env, arena)
                env[dst] = (os_.reshape(n, oh_ow, jw), om.reshape(n, oh_ow, jw), z)
        else:
            self.slot[out] = dst

            def fn(env, arena):
                n, a, am, tern = rows_of(env, arena)
                r = a.shape[0]
                acc = _buf(arena, key + ("acc",), (4 * js,), np.int64)
                of = np.empty((r, J), np.float32)
                K.bgemm(a, am, tern, kvalid, wT, jc, K.OUT_FLOAT, tlo, thi, pw, bias_a, bmode,
                        _DUMMY_U2, _DUMMY_U2, of, acc)
                if conv:
                    of = np.ascontiguousarray(of.reshape(n, oh_ow, J).transpose(0, 2, 1)).reshape(
                        (n,) + out_rep.shape)
                env[dst] = of

        step = Step(kind, tuple(names), (x,), (out,), detail, fn)
        if not fused:
            step.fresh = (dst,)
        self.steps.append(step)
        return True

    def pool_threshold(self, pool: Op, conv_rep: Packed, k: int, bias: np.ndarray | None, js: int):
        """A binary conv's integer output -> MaxPool -> a monotone pointwise chain -> Threshold
        (Larq's QuantConv -> MaxPool -> BatchNorm -> sign), computed on bits without the float
        image. Per channel the chain and threshold are evaluated (in float32, as the plan's
        pointwise kernel) on every reachable integer dot d; where that state (below < tie <
        above) is monotone in d, the epilogue writes v = state - 1 (increasing) or 1 - state
        (decreasing), which is non-decreasing in d, so max-pool commutes with it: the pool is
        the ternary max on bits, and `maxpool_map` maps the pooled v to the threshold's values.
        Returns None where that does not hold exactly."""
        if len([o for o in pool.outputs if o]) != 1 or len(pool.attrs.get("kernel_shape", ())) != 2:
            return None
        po = pool.outputs[0]
        u = self.sole_user(po)
        if u is None:
            return None
        if u.qualname == "tamec.Threshold":
            chain, codes, consts, thr, x0, tail = [], [], [], u, po, []
        else:
            chain, codes, consts, thr, x0, tail = self.gather(u)
        pdims = _static(self.value(po).shape)
        nchw_tail = bool(tail) and tail[-1].qualname == "Transpose"
        out = tail[-1].outputs[0] if nchw_tail else thr.outputs[0] if thr is not None else None
        if thr is None or x0 != po or pdims is None or self.value(thr.outputs[0]).dtype != "float32" \
                or not self.wants_packed(out):
            return None
        J = conv_rep.C
        t = _threshold(thr, J, 4)
        if t is None or not t.packable:
            return None
        b = np.zeros(J, np.int64) if bias is None else bias.astype(np.int64)
        if k + int(np.abs(b).max()) >= _EXACT:
            return None
        d = np.arange(-k, k + 1, dtype=np.int64)
        v = (d[None, :] + b[:, None]).astype(np.float32)  # the conv's float32 output, exact
        consts_a = np.stack(consts).astype(np.float32) if consts else np.zeros((0, J), np.float32)
        with np.errstate(all="ignore"):
            v = _chain_np(codes, consts_a, v)
            vf, tau = v.astype(np.float64), t.tau[:, None]
            rank = np.where(vf > tau, 2, np.where(vf < tau, 0, 1))  # NaN tau: always the tie
        steps = np.diff(rank, axis=1)
        inc, dec = np.all(steps >= 0, axis=1), np.all(steps <= 0, axis=1)
        if not np.all(inc | dec):
            return None  # a non-monotone chain (NaN, c / x): max-pool does not commute
        enc = np.where(inc[:, None], rank - 1, 1 - rank)  # non-decreasing in d
        tlo = np.full(js, -_BIG, np.int64)
        thi = np.full(js, _BIG, np.int64)
        for j in range(J):
            neg, pos = d[enc[j] < 0], d[enc[j] > 0]
            if neg.size:
                tlo[j] = neg.max()
            if pos.size:
                thi[j] = pos.min()
        cw = conv_rep.CW
        ones = np.ones(J)
        encode = _Thr(np.zeros(J), ones, -ones, np.zeros(J)).words(cw)  # above +1, below -1, tie 0
        # pooled v -> value: +1 is "above" for increasing channels, "below" for decreasing ones
        vpos, vneg = np.where(inc, t.va, t.vb), np.where(inc, t.vb, t.va)
        mapped = _Thr(t.tau, vpos, vneg, t.vt)
        sp = conv_rep.spatial
        win = window(pool.attrs, sp, list(pool.attrs["kernel_shape"]), bool(pool.attrs.get("ceil_mode", 0)))
        oh, ow = win.out
        if (J, oh, ow) != tuple(pdims):
            return None
        geom = np.array([sp[0], sp[1], *win.kernel, *win.strides, *win.dilations, win.head[0], win.head[1], oh, ow],
                        np.int64)
        zero_ok = bool(np.any(enc == 0)) and bool(np.any(t.vt == 0)) or bool(np.any(vpos == 0) | np.any(vneg == 0))
        final = Packed(J, oh * ow, (oh, ow), (J, oh, ow), zero_ok)
        if tail and not nchw_tail:
            final = replace(final, shape=(J * oh * ow,), hwc=True)
        names = [pool.id] + [o.id for o in chain] + [o.id for o in tail] + [thr.id]
        return tlo, thi, encode, geom, mapped.words(cw), final, names, out

    # -- max-pool on bits -----------------------------------------------------------------------
    def maxpool(self, op: Op) -> bool:
        x, out = op.inputs[0], op.outputs[0]
        if not self.gemm_ok(op, x) or x not in self.pslot:
            return False
        ps, rep = self.pslot[x]
        if len(rep.spatial) != 2 or rep.hwc:
            return False
        win = window(op.attrs, rep.spatial, list(op.attrs["kernel_shape"]), bool(op.attrs.get("ceil_mode", 0)))
        oh, ow = win.out
        geom = np.array([rep.spatial[0], rep.spatial[1], *win.kernel, *win.strides, *win.dilations,
                         win.head[0], win.head[1], oh, ow], np.int64)
        out_rep = Packed(rep.C, oh * ow, (oh, ow), (rep.C, oh, ow), rep.ternary)
        dst = self._new_slot()
        self.pslot[out] = (dst, out_rep)
        key = ("pool", op.id)
        cw = rep.CW

        def fn(env, arena):
            s, m, z = env[ps]
            n = s.shape[0]
            os_ = _buf(arena, key + ("s",), (n, oh * ow, cw), np.uint64)
            om = _buf(arena, key + ("m",), (n, oh * ow, cw), np.uint64)
            K.maxpool(s, m, geom, os_, om)
            env[dst] = (os_, om, z)  # no zero in, no zero out: z > 0 still tells if the mask matters

        self.done.add(op.id)
        self.steps.append(Step("maxpool(bits)", (op.id,), (x,), (out,),
                               f"{rep.C} ch, {rep.spatial[0]}x{rep.spatial[1]} -> {oh}x{ow}", fn))
        return True


    def maxpool_f32(self, op: Op) -> bool:
        """Max-pool of a dense float32 image (no Indices output)."""
        x, out = op.inputs[0], op.outputs[0]
        xv = self.value(x)
        dims = _static(xv.shape)
        if xv.dtype != "float32" or dims is None or len(dims) != 3 or len([o for o in op.outputs if o]) != 1 \
                or len(op.attrs.get("kernel_shape", ())) != 2:
            return False
        c, h, w = dims
        win = window(op.attrs, (h, w), list(op.attrs["kernel_shape"]), bool(op.attrs.get("ceil_mode", 0)))
        oh, ow = win.out
        geom = np.array([h, w, *win.kernel, *win.strides, *win.dilations, win.head[0], win.head[1], oh, ow], np.int64)
        src = self.dense(x)
        dst = self.slot[out] = self._new_slot()

        def fn(env, arena):
            a = _f32(np.ascontiguousarray(env[src]))
            o = np.empty((a.shape[0], c, oh, ow), np.float32)
            K.maxpool_f32(a, geom, o)
            env[dst] = o

        self.done.add(op.id)
        st = Step("maxpool(float32)", (op.id,), (x,), (out,), f"{c} ch, {h}x{w} -> {oh}x{ow}", fn)
        st.fresh = (dst,)
        self.steps.append(st)
        return True


@dataclass
class _Layer:
    """One binary Linear layer of a chained bgemm step (arrays already packed for the kernel)."""

    kw: int
    k: int
    wT: np.ndarray
    tlo: np.ndarray
    thi: np.ndarray
    pw: np.ndarray
    bias: np.ndarray
    bmode: int
    mode: int
    J: int
    jw: int
    slot: int
    out: str
    rep: Packed | None
    ops: tuple
    kind: str
    detail: str


class _Segment:
    """Consecutive binary Linear layers, each reading the previous one's bits: one
    `bgemm_chain` call runs them all (no Python between layers; at batch 1 the call overhead is
    most of the time)."""

    def __init__(self, slot: int, rep: Packed, name: str, pre: Step | None = None):
        self.slot, self.rep, self.pre = slot, rep, pre
        self.layers: list[_Layer] = []
        if pre is not None:
            self.step = Step("bgemm", pre.ops, pre.reads, pre.writes, "", None)
        else:
            self.step = Step("bgemm", (), (name,), (), "", None)

    def outputs(self) -> list[str]:
        """Names of the packed values the chain writes, in the order of its planes."""
        return ([self.pre.writes[0]] if self.pre is not None else []) + [
            l.out for l in self.layers if l.mode == K.OUT_BITS]

    def finalize(self, needed: set[str]) -> None:
        ls = self.layers
        pre = self.pre.pre if self.pre is not None else None
        nl, nz = len(ls), len(ls) + (pre is not None)
        # int64 table: header, layer rows, integer bounds, op codes
        head = np.zeros(K.M_HEAD, np.int64)
        prog = np.zeros((nl, K.L_FIELDS), np.int64)
        ints, wbits, fconst, biases = [], [], [], []
        ioff = K.M_HEAD + prog.size
        woff = 0
        for i, l in enumerate(ls):  # weights first, each a whole number of cache lines
            wbits.append(l.wT)
            prog[i, K.L_WOFF] = woff
            woff += l.wT.size
        boff = 0
        for i, l in enumerate(ls):
            js = l.tlo.size
            prog[i, [K.L_KW, K.L_K, K.L_JC, K.L_JS, K.L_TOFF, K.L_POFF, K.L_JW, K.L_BOFF, K.L_BMODE,
                     K.L_MODE, K.L_TERN, K.L_J]] = [
                l.kw, l.k, l.wT.size // l.kw, js, ioff, woff, l.jw, boff, l.bmode, l.mode,
                int(bool(l.rep and l.rep.ternary)), l.J]
            ints += [l.tlo, l.thi]
            ioff += 2 * js
            wbits.append(l.pw.ravel())
            woff += l.pw.size
            biases.append(l.bias)
            boff += l.J
        head[K.M_L], head[K.M_PROG], head[K.M_ACC] = nl, K.M_HEAD, 4 * max(l.tlo.size for l in ls)
        if pre is not None:
            pc, p_s = pre["shape"]
            cw0 = pre["pw"].shape[1]
            codes = pre["codes"]
            head[[K.M_PRE, K.M_XC, K.M_NCODES, K.M_CODES, K.M_CW0, K.M_PW0]] = [1, pc, codes.size, ioff, cw0, woff]
            ints.append(codes)
            wbits.append(pre["pw"].ravel())
            nup = pre["dn"].size
            head[[K.M_CONSTS, K.M_DN, K.M_UP, K.M_NUP]] = [0, pre["consts"].size, pre["consts"].size + nup, nup]
            fconst = [pre["consts"].ravel(), pre["dn"], pre["up"]]
        meta = np.concatenate([head, prog.ravel()] + ints).astype(np.int64)
        wb = _aligned_copy(np.concatenate(wbits).astype(np.uint64))
        fc = np.concatenate(fconst).astype(np.float32) if fconst else _NO_F
        bf = np.concatenate(biases).astype(np.float64)
        acc_n = int(head[K.M_ACC])
        bits = [l for l in ls if l.mode == K.OUT_BITS]
        last = ls[-1] if ls[-1].mode == K.OUT_FLOAT else None
        in_slot, tern_in, w0 = self.slot, self.rep.ternary, self.rep.S * self.rep.CW
        key = ("chain", id(self))
        if pre is not None:
            p_src, p_feed, p_len = pre["src"], pre["feed"], pc * p_s
        stages = ([(pre["slot"], p_s, cw0)] if pre is not None else []) + [(l.slot, 1, l.jw) for l in bits]

        def bind(n):
            sizes = [2 * n * p * cw for _, p, cw in stages]
            body = _round(sum(sizes), 8)
            planes = aligned(body + acc_n + nz, np.uint64)
            views, off = [], 0
            for (slot, p, cw), size in zip(stages, sizes):
                h = size // 2
                views.append((slot, planes[off:off + h].reshape(n, p, cw), planes[off + h:off + size].reshape(n, p, cw)))
                off += size
            return n, planes, views, planes[body + acc_n:]

        def expose(env, arena):
            """Put every stage's bits in env (for keep_all), not just the ones read later."""
            b = arena.get(key)
            if b is not None:
                for k, (slot, vs, vm) in enumerate(b[2]):
                    env[slot] = (vs, vm, int(b[3][k]))

        # only values read outside the chain get their env slot set on every run
        keep = [k for k, v in enumerate(self.outputs()) if v in needed]
        fslot = last.slot if last is not None else -1
        jl = last.J if last is not None else 0
        if pre is None:
            def fn(env, arena):
                s, m, z = env[in_slot]
                n = s.shape[0]
                b = arena.get(key)
                if b is None or b[0] != n:
                    b = arena[key] = bind(n)
                of = np.empty((n, jl), np.float32)
                K.bgemm_chain(_DUMMY_F2, s.reshape(n, w0), m.reshape(n, w0), tern_in and z > 0, meta, wb, fc, bf,
                              b[1], of)
                for k in keep:
                    slot, vs, vm = b[2][k]
                    env[slot] = (vs, vm, int(b[3][k]))
                if fslot >= 0:
                    env[fslot] = of
        else:
            def fn(env, arena):
                x = env[p_src]
                if x.dtype != _F32 or not x.flags.c_contiguous:
                    x = _f32(np.ascontiguousarray(x))
                n = x.shape[0]
                if x.ndim != 2:
                    x = x.reshape(n, p_len)
                b = arena.get(key)
                if b is None or b[0] != n:
                    b = arena[key] = bind(n)
                of = np.empty((n, jl), np.float32)
                if K.bgemm_chain(x, _DUMMY_U2, _DUMMY_U2, tern_in, meta, wb, fc, bf, b[1], of) and p_feed:
                    raise _nonfinite(p_feed)
                for k in keep:
                    slot, vs, vm = b[2][k]
                    env[slot] = (vs, vm, int(b[3][k]))
                if fslot >= 0:
                    env[fslot] = of

        st = self.step
        st.fn = fn
        st.expose = expose
        st.checks = (pre["feed"],) if pre is not None and pre["feed"] else ()
        st.fresh = (last.slot,) if last is not None else ()
        reads = [self.step.reads[0] if pre is None else self.pre.writes[0]] + [l.out for l in ls[:-1]]
        st.parts = [(l.kind, l.ops, (r,), (l.out,), l.detail) for l, r in zip(ls, reads)]
        if pre is not None:
            st.parts.insert(0, (self.pre.kernel, self.pre.ops, self.pre.reads, self.pre.writes, self.pre.detail))
        st.kernel = ls[0].kind if len(st.parts) == 1 else f"bgemm-chain x{len(ls)}" + (" +input" if pre else "")
        st.detail = ls[0].detail if len(st.parts) == 1 else "one call, no Python between layers"


def _chain_np(codes, consts: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The pointwise op chain in numpy on float32 v (C, D), constants (L, C): the same float32
    operations as kernels._chain, for plan-time tables."""
    f32 = np.float32
    for k, c in zip(codes, consts):
        c = c[:, None]
        if k == K.OP_MUL:
            v = v * c
        elif k == K.OP_ADD:
            v = v + c
        elif k == K.OP_SUB:
            v = v - c
        elif k == K.OP_RSUB:
            v = c - v
        elif k == K.OP_DIV:
            v = v / c
        elif k == K.OP_RDIV:
            v = c / v
        elif k == K.OP_MIN:
            v = np.where(v > c, c, v)
        elif k == K.OP_MAX:
            v = np.where(v < c, c, v)
        elif k == K.OP_ROUND:
            v = np.rint(v)
        elif k == K.OP_FLOOR:
            v = np.floor(v)
        else:
            v = np.ceil(v)
        v = v.astype(f32, copy=False)
    return v


def _nonfinite(name: str) -> InputError:
    return InputError(f"input {name!r} holds NaN or infinite values", hint="feed finite values")


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned(a.size, a.dtype)
    out[:] = a.ravel()
    return out


def _f32(x: np.ndarray) -> np.ndarray:
    if x.dtype != _F32:
        raise ModelStructureError(f"a float32 value arrived as {x.dtype}",
                                  hint="a kernel produced another dtype than the graph declares")
    return x


def compile_plan(graph: Graph, fuse_input: bool = True) -> Plan:
    """Build the forward plan of a compiled graph (see the module docstring). `fuse_input=False`
    keeps a binary chain's input layer (pointwise -> bits) a step of its own (for profiling)."""
    return _Builder(graph, fuse_input).build()

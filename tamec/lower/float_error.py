"""A bound on the float32 rounding error of every real tensor the compiled network computes.

The inference MIP computes each pre-activation exactly (`s = M x + c` in float64 over real x);
the network that runs (onnxruntime, tamec.Session, the evaluator) computes it in float32, so a
neuron whose exact `s` lies just off its threshold can land on the other side, or on the tie, in
the network. `rounding_error(g)` returns per value name an elementwise bound `err` with
`|fl(v) - v| <= err` for every input in the bounded box, where `fl(v)` is the float32 value any
summation order (and FMA) gives and `v` the exact value of the same expression over the same
float32 input. It is the classic forward bound (Higham, "Accuracy and Stability of Numerical
Algorithms", 3.1): a K-term dot product plus bias has `|fl - exact| <= gamma_{K+1} * sum |w_i x_i|`
with `gamma_n = n u / (1 - n u)`, `u = 2^-24`; errors of the inputs propagate through |W|.

Values the MIP represents exactly are error free: graph inputs (the MIP ranges over the same
float32 points, and more), threshold outputs (their flips are what the MIP models, with the
pre-activation's error as slack) and integer tensors below 2^24 computed from error-free
integers. An op this module has no rule for gets `inf`: nothing downstream is then trusted.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tamec.ir.graph import Graph, Value

U32 = 2.0 ** -24  # unit roundoff of float32 (round to nearest)
EXACT_INT = 2.0 ** 24  # integers up to this are exact in float32
_PASS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
_LIPSCHITZ1 = frozenset({"Relu", "Abs", "Neg", "Clip"})  # |f(a) - f(b)| <= |a - b|, computed exactly


def gamma(n: int | np.ndarray) -> np.ndarray:
    """gamma_n = n u / (1 - n u) for float32."""
    nu = np.asarray(n, np.float64) * U32
    return nu / (1.0 - nu)


def _ex(v: Value) -> tuple[int, ...]:
    return tuple(int(d) for d in (v.shape or ())[1:])


def _mag(v: Value, n: int) -> np.ndarray:
    """max |v| per element over the box, from the bounds pass (inf where there are none)."""
    if v.const is not None:
        return np.abs(np.asarray(v.const, np.float64)).reshape(-1)
    if v.bounds is None:
        lo, hi = v.domain.interval()
        return np.full(n, max(abs(lo), abs(hi)))
    ex = _ex(v)
    lo, hi = (np.broadcast_to(np.asarray(b, np.float64), ex).reshape(-1) for b in v.bounds)
    return np.maximum(np.abs(lo), np.abs(hi))


def _affine_abs(g: Graph, op, x: Value) -> tuple[sp.csr_matrix, np.ndarray]:
    """|T| and |d| of a Linear/Conv op's per-example map y = T x + d."""
    from tamec.lower.inference import _conv_matrix

    out = g.values[op.outputs[0]]
    n_out = int(np.prod(_ex(out), dtype=np.int64))
    w = np.abs(np.asarray(g.const(op.inputs[1]), np.float64))
    if op.qualname == "tamec.Linear":
        r = int(np.prod(_ex(x), dtype=np.int64)) // w.shape[1]
        T = sp.kron(sp.identity(r, format="csr"), sp.csr_matrix(w), format="csr")
        d = np.zeros(n_out)
        if len(op.inputs) > 2 and op.inputs[2]:
            d = np.tile(np.abs(g.const(op.inputs[2]).astype(np.float64)).reshape(-1), r)
    else:
        T, _ = _conv_matrix(w, op.attrs, _ex(x))
        d = np.zeros(n_out)
        if len(op.inputs) > 2 and op.inputs[2]:
            d = np.repeat(np.abs(g.const(op.inputs[2]).astype(np.float64)).reshape(-1), n_out // int(w.shape[0]))
    return sp.csr_matrix(T), d


def _elems(c, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.abs(np.asarray(c, np.float64)), shape).reshape(-1)


def _op_error(g: Graph, op, err: dict) -> np.ndarray:
    out = g.values[op.outputs[0]]
    ex = _ex(out)
    n = int(np.prod(ex, dtype=np.int64))
    q = op.qualname
    data = [i for i in op.inputs if i and g.const(i) is None]
    if q == "tamec.Threshold" or (q == "MaxPool" and all(np.all(err[i] == 0) for i in data)):
        return np.zeros(n)
    if not data:
        return np.zeros(n)
    x = g.values[data[0]]
    ex_in = err[data[0]]
    if q in _PASS:
        return ex_in.copy()
    if q in ("tamec.Linear", "Conv"):
        T, d = _affine_abs(g, op, x)
        k = np.diff(T.indptr) + 1  # terms per output, the bias counted
        mag = _mag(x, T.shape[1]) + ex_in
        return T @ ex_in + gamma(k + 1) * (T @ mag + d)
    full = (1,) + ex
    if q == "BatchNormalization":
        dt = np.float32
        scale, bias, mean, var = (np.asarray(g.const(i), dt) for i in op.inputs[1:5])
        a = np.abs(scale / np.sqrt(var + dt(op.attrs.get("epsilon", 1e-5)))).astype(np.float64)
        shp = (-1,) + (1,) * (len(ex) - 1) if a.ndim == 1 else a.shape
        a_e = _elems(a.reshape(shp), ex)
        m_e, b_e = _elems(mean.reshape(shp), ex), _elems(bias.reshape(shp), ex)
        # (x - mean) / sqrt(var + eps) * scale + bias in any association: at most 6 roundings
        return a_e * ex_in + gamma(6) * (a_e * (_mag(x, n) + ex_in + m_e) + b_e) * 2
    if q in _LIPSCHITZ1 or q == "Transpose":
        e = ex_in if q != "Transpose" else np.full(n, ex_in.max(initial=0.0))
        return e.copy() if e.size == n else np.full(n, e.max(initial=0.0))
    if q in ("Add", "Sub", "Mul", "Div", "Max", "Min", "LeakyRelu"):
        vals, mags = [], []
        for i in (i for i in op.inputs if i):
            v = g.values[i]
            if v.const is None:
                ni = int(np.prod(_ex(v), dtype=np.int64))
                e, m = err[i].reshape((1,) + _ex(v)), _mag(v, ni).reshape((1,) + _ex(v))
            else:
                e, m = np.zeros(()), np.abs(np.asarray(v.const, np.float64))
            vals.append(np.broadcast_to(e, full).reshape(-1))
            mags.append(np.broadcast_to(m, full).reshape(-1))
        if q in ("Max", "Min"):
            return np.maximum.reduce(vals)
        if q == "LeakyRelu":
            return vals[0] * max(1.0, abs(op.attrs.get("alpha", 0.01))) + U32 * mags[0]
        if q in ("Add", "Sub"):
            return vals[0] + vals[1] + U32 * (mags[0] + vals[0] + mags[1] + vals[1])
        if q == "Mul":  # one factor is a constant (the lowering's rule): its error is 0
            return vals[0] * mags[1] + vals[1] * mags[0] + U32 * (mags[0] + vals[0]) * (mags[1] + vals[1])
        if len(data) == 1 and op.inputs[0] == data[0]:  # x / k: |k| >= kmin
            kmin = np.maximum(mags[1], 1e-300)
            return (vals[0] + U32 * (mags[0] + vals[0])) / kmin
    return np.full(n, np.inf)


def dyadic_step(a) -> np.ndarray:
    """The largest power of two dividing each finite float `a` (inf for 0): float32 values are dyadic."""
    a = np.abs(np.asarray(a, np.float64))
    m, e = np.frexp(a)  # a = m 2^e, m in [0.5, 1) with at most 53 bits
    mi = (m * 2.0 ** 53).astype(np.int64)
    tz = np.zeros(mi.shape, np.int64)
    nz = mi != 0
    low = mi[nz] & -mi[nz]  # the lowest set bit
    tz[nz] = np.log2(low.astype(np.float64)).astype(np.int64)
    return np.where(a == 0, np.inf, np.ldexp(1.0, (e - 53 + tz).astype(np.int32)))


def _grid_step(g: Graph, op, x: Value, step_in: np.ndarray) -> np.ndarray | None:
    """For a Linear/Conv of an input that takes only values on the dyadic grid `step_in`: the grid of
    its output per element where float32 computes it exactly (every product and partial sum fits 24
    bits: sum |terms| <= 2^24 * step), else nan; None for other ops."""
    if op.qualname not in ("tamec.Linear", "Conv"):
        return None
    T, d = _affine_abs(g, op, x)
    T = sp.csr_matrix(T)
    terms = dyadic_step(T.data) * step_in[T.indices]
    rows = np.repeat(np.arange(T.shape[0]), np.diff(T.indptr))
    q = np.full(T.shape[0], np.inf)
    np.minimum.at(q, rows, terms)
    q = np.minimum(q, dyadic_step(d))
    total = T @ _mag(x, T.shape[1]) + d
    return np.where(np.isfinite(q) & (total <= EXACT_INT * q), q, np.nan)


def rounding_error(g: Graph, grid_inputs: dict[str, np.ndarray] | None = None,
                   steps: dict | None = None) -> dict[str, np.ndarray]:
    """Per non-constant value of the compiled graph `g` (bounds pass run), the flattened
    per-example bound on |float32 value - exact value| over the input box. `grid_inputs` names
    inputs that take only their box ends (--norm bits), with those ends per element: a Linear or
    Conv of one is exact (error 0) where every product and partial sum is a float32 integer
    multiple of the row's dyadic step, and `steps` (when given) receives that step per element
    (nan where not exact): the values the pre-activation can take lie on that grid."""
    err: dict[str, np.ndarray] = {}
    grid: dict[str, np.ndarray] = {}
    for name in g.inputs:
        err[name] = np.zeros(int(np.prod(_ex(g.values[name]), dtype=np.int64)))
        if grid_inputs and name in grid_inputs:
            lo, hi = grid_inputs[name]
            grid[name] = np.minimum(dyadic_step(lo), dyadic_step(hi)).reshape(-1)
    for op in g.ops():
        try:
            e = _op_error(g, op, err)
        except (ValueError, TypeError, KeyError, IndexError):
            e = None  # a shape this bound does not follow: trust nothing downstream
        for o in op.outputs:
            if not o:
                continue
            v = g.values[o]
            n = int(np.prod(_ex(v), dtype=np.int64))
            eo = np.full(n, np.inf) if e is None or e.size != n else np.asarray(e, np.float64)
            if v.domain.is_integer and np.all(_mag(v, n) < EXACT_INT) and all(
                    np.all(err.get(i, 0.0) == 0) for i in op.inputs if i and g.const(i) is None):
                eo = np.zeros(n)  # integers from exact integers: float32 computes them exactly
            if o == op.outputs[0] and op.inputs and op.inputs[0] in grid and e is not None:
                q = _grid_step(g, op, g.values[op.inputs[0]], grid[op.inputs[0]])
                if q is not None and q.size == n and not np.all(np.isnan(q)):
                    grid[o] = np.where(np.isnan(q), np.inf, q)  # inf: off the grid (not exact)
                    eo = np.where(np.isnan(q), eo, 0.0)
                    if steps is not None:
                        steps[o] = q
            err[o] = eo
    return err

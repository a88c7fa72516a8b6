"""Numba kernels of the forward runtime (few compiled signatures; bit layouts in runtime/bits.py).

- `bgemm`: xnor-popcount GEMM of packed binary rows (bipolar, or ternary with a mask plane) with
  packed +-1 weights (blocks of 8 columns, K-major inside); exact integer dot products
  `dot = c - 2 * disagreements` (c = K for bipolar rows, the row's nonzero count for ternary
  ones), then a fused threshold that writes packed bits for the next binary layer, or float32
  outputs (+ bias). The inner blocks are runtime/simd.py's micro-kernels.
- `bgemm_chain`: consecutive binary Linear layers (and optionally the input layer's pointwise
  chain + threshold before them) in one call.
- `pointwise`: a chain of float32 elementwise ops with per-channel constants (Add/Sub/Mul/Div,
  inference BatchNorm), optionally followed by a threshold, writing packed bits or float32.
- `conv1_pointwise`: a real convolution of one-channel images (the usual first layer), then
  `pointwise` on its output channels.
- `im2col_f32`: the float patches of a real convolution with several input channels (then one
  BLAS GEMM, and `pointwise` on its channels-last rows writes the packed bits).
- `im2col`: the packed patches of a binary convolution (taps outside the image get a zero mask).
- `maxpool_map`: `maxpool` then a per-channel map of the pooled ternary value to a threshold's
  values (a binary conv -> MaxPool -> BN -> sign fused on bits; see plan.pool_threshold).
- `maxpool_f32`: max-pool of a float32 image (a pool between a conv and its BN, as Larq writes).
- `maxpool`: max-pool on packed planes: OR of sign bits; for ternary values the mask plane is
  the OR of the +1s with the AND of the masks.

Threshold semantics are tamec.ops's: above = x > tau, below = x < tau, else tie; each channel
maps the three cases to a value in {-1, 0, +1} (flip already applied), given as bit words
P = [Pa, Pb, Pt, Ma, Mb, Mt, valid] (sign bit / mask bit of the value for above, below, tie).
On integer pre-activations the comparison with the float64 tau becomes exact integer bounds
`below <=> dot <= tlo`, `above <=> dot >= thi`; on float32 inputs, float32 bounds
`below <=> x <= dn`, `above <=> x >= up` (the float32 neighbours of tau); NaN tau: neither
(the tie), +-inf: always one side. Float arithmetic follows numpy's float32 operation for
operation (no fast-math, no contraction), so results equal the reference evaluator's bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from tamec.runtime.bits import WORD, popcount
from tamec.runtime.simd import acc_block, fcmp_bits, thr_bits

# 4 rows x 8 columns per call keeps the carry-save state in registers and loads each weight
# vector once for 4 rows; leftover rows (batch 1) go 1 row x 32 columns.
_ACC4 = acc_block(4, 1, False)
_ACC4T = acc_block(4, 1, True)
_ACC1 = acc_block(1, 4, False)
_ACC1T = acc_block(1, 4, True)
COLS = 32  # weight columns are padded to a multiple of this

# layer table of bgemm_chain: one row per layer
(L_KW, L_K, L_JC, L_JS, L_WOFF, L_TOFF, L_POFF, L_JW, L_BOFF, L_BMODE, L_MODE, L_TERN, L_J) = range(13)
L_FIELDS = 13

# pointwise op codes (ROUND/FLOOR/CEIL ignore their constant row; MIN/MAX clamp like QONNX's
# _clamp: `c if t > c else t` keeps NaN, as numpy.where does)
OP_MUL, OP_ADD, OP_SUB, OP_RSUB, OP_DIV, OP_RDIV = 0, 1, 2, 3, 4, 5
OP_MIN, OP_MAX, OP_ROUND, OP_FLOOR, OP_CEIL = 6, 7, 8, 9, 10
# pointwise / bgemm output modes
OUT_BITS, OUT_FLOAT, OUT_CHAIN = 0, 1, 2
# bias modes of bgemm (the evaluator's two branches)
BIAS_NONE, BIAS_INT, BIAS_FLOAT = 0, 1, 2

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_opts)
def _epilogue_bits(acc, ia, c, jc, tlo, thi, pw, out_s, out_m, row):
    """Threshold one row of counts into packed sign/mask words; returns the zeros written."""
    zeros = 0
    for q in range(out_s.shape[1]):
        if q * WORD >= jc:  # padding words of the packed row
            out_s[row, q] = 0
            out_m[row, q] = 0
            continue
        below, above = thr_bits(acc, ia + q * WORD, c, tlo, thi, q * WORD)
        tie = ~(below | above)
        out_s[row, q] = (above & pw[0, q]) | (below & pw[1, q]) | (tie & pw[2, q])
        mw = (above & pw[3, q]) | (below & pw[4, q]) | (tie & pw[5, q])
        out_m[row, q] = mw
        zeros += np.int64(popcount(pw[6, q] & ~mw))
    return zeros


@njit(**_opts)
def _epilogue_float(acc, ia, c, bias, bmode, out_f, row):
    for j in range(out_f.shape[1]):
        dot = c - 2 * acc[ia + j]
        if bmode == BIAS_INT:
            out_f[row, j] = np.float32(dot + np.int64(bias[j]))
        elif bmode == BIAS_FLOAT:
            out_f[row, j] = np.float32(dot) + np.float32(bias[j])
        else:
            out_f[row, j] = np.float32(dot)


@njit(**_opts)
def _row_c(m, r, ternary, k):
    if not ternary:
        return np.int64(k)
    c = np.int64(0)
    for q in range(m.shape[1]):
        c += np.int64(popcount(m[r, q]))
    return c


@njit(**_opts)
def _epilogue(m, r, ternary, k, acc, ia, jc, mode, tlo, thi, pw, bias, bmode, out_s, out_m, out_f):
    c = _row_c(m, r, ternary, k)
    if mode == OUT_BITS:
        return _epilogue_bits(acc, ia, c, jc, tlo, thi, pw, out_s, out_m, r)
    _epilogue_float(acc, ia, c, bias, bmode, out_f, r)
    return 0


@njit(**_opts)
def bgemm(a, m, ternary, k, w, jc, mode, tlo, thi, pw, bias, bmode, out_s, out_m, out_f, acc):
    """Binary GEMM of packed rows a (R, KW) [mask m when `ternary`] with packed weights w (flat,
    blocks of 8 columns: word k of column jb+i at jb*KW + 8k + i; see bits.pack_weights), JC
    columns, a multiple of COLS; k = valid bits per row (bipolar rows). mode OUT_BITS:
    fused threshold (tlo, thi, pw) -> out_s/out_m (R, JW), returns the zeros written;
    OUT_FLOAT: out_f (R, J) float32 (+ bias). acc: int64 scratch of 4 rows of >= JC (a
    multiple of 64) entries."""
    rows, kw = a.shape
    js = acc.shape[0] // 4
    zeros = 0
    r = 0
    while r + 4 <= rows:
        if ternary:
            _ACC4T(a, m, r * kw, kw, w, 0, 8, 8 * kw, kw, acc, 0, js, jc // 8, 8 * kw)
        else:
            _ACC4(a, m, r * kw, kw, w, 0, 8, 8 * kw, kw, acc, 0, js, jc // 8, 8 * kw)
        for i in range(4):
            zeros += _epilogue(m, r + i, ternary, k, acc, i * js, jc, mode, tlo, thi, pw, bias, bmode,
                               out_s, out_m, out_f)
        r += 4
    while r < rows:
        if ternary:
            _ACC1T(a, m, r * kw, kw, w, 0, 8, 8 * kw, kw, acc, 0, js, jc // COLS, COLS * kw)
        else:
            _ACC1(a, m, r * kw, kw, w, 0, 8, 8 * kw, kw, acc, 0, js, jc // COLS, COLS * kw)
        # np.int64(0), not the literal 0: a literal argument makes Numba compile the callee once
        # more (a Literal[int](0) specialization), a cold-start cost of seconds
        zeros += _epilogue(m, r, ternary, k, acc, np.int64(0), jc, mode, tlo, thi, pw, bias, bmode,
                           out_s, out_m, out_f)
        r += 1
    return zeros


@njit(**_opts)
def _unary(k, v, u):
    """The clamp and rounding codes on one float32 value (QONNX Quant's operations)."""
    if k == OP_MIN:
        return u if v > u else v
    if k == OP_MAX:
        return u if v < u else v
    if k == OP_ROUND:
        return np.rint(v)  # half to even, as numpy.round
    if k == OP_FLOOR:
        return np.floor(v)
    return np.ceil(v)


@njit(**_opts)
def _chain(codes, consts, t):
    """Apply the op chain to one row t (float32, one value per channel) in place."""
    c_ = t.shape[0]
    for i in range(codes.shape[0]):
        k = codes[i]
        if k == OP_MUL:
            for c in range(c_):
                t[c] = t[c] * consts[i, c]
        elif k == OP_ADD:
            for c in range(c_):
                t[c] = t[c] + consts[i, c]
        elif k == OP_SUB:
            for c in range(c_):
                t[c] = t[c] - consts[i, c]
        elif k == OP_RSUB:
            for c in range(c_):
                t[c] = consts[i, c] - t[c]
        elif k == OP_DIV:
            for c in range(c_):
                t[c] = t[c] / consts[i, c]
        elif k == OP_RDIV:
            for c in range(c_):
                t[c] = consts[i, c] / t[c]
        else:
            for c in range(c_):
                t[c] = _unary(k, t[c], consts[i, c])


@njit(**_opts)
def _bit_of(words, c):
    return (words[c // WORD] >> np.uint64(c % WORD)) & np.uint64(1)


@njit(**_opts)
def pointwise(x, codes, consts, mode, dn, up, pw, vals, out_s, out_m, out_f):
    """x float32 (N, C, S) through the op chain (codes, consts (L, C) float32), then
    OUT_CHAIN: out_f (N, C, S) = chain(x); OUT_FLOAT: out_f = the threshold's values (vals
    float32 (3, C): above, below, tie); OUT_BITS: packed planes out_s/out_m (N, S, CW) from the
    bit words pw (7, CW). The threshold is `above <=> v >= up[c]`, `below <=> v <= dn[c]` in
    float32 (dn, up: the float32 neighbours of tau, NaN where never; length >= 64*CW).
    Returns (zeros written (OUT_BITS), NaN or infinite values read from x)."""
    n_, c_, p_ = x.shape
    if p_ > 1:
        return _pointwise_spatial(x, codes, consts, mode, dn, up, pw, vals, out_s, out_m, out_f)
    cw = out_s.shape[2]
    t = np.full(max(c_, cw * WORD), np.nan, np.float32)  # NaN padding compares false both ways
    zeros = 0
    bad = 0
    for n in range(n_):
        for c in range(c_):
            v = x[n, c, 0]
            t[c] = v
            bad += np.int64((v - v) != 0)  # NaN for inf and NaN: the input check, for free
        _chain(codes, consts, t[:c_])
        if mode == OUT_BITS:
            for q in range(cw):
                below, above = fcmp_bits(t, q * WORD, dn, up, q * WORD)
                tie = ~(below | above)
                out_s[n, 0, q] = (above & pw[0, q]) | (below & pw[1, q]) | (tie & pw[2, q])
                mw = (above & pw[3, q]) | (below & pw[4, q]) | (tie & pw[5, q])
                out_m[n, 0, q] = mw
                zeros += np.int64(popcount(pw[6, q] & ~mw))
        elif mode == OUT_CHAIN:
            for c in range(c_):
                out_f[n, c, 0] = t[c]
        else:
            for c in range(c_):
                v = t[c]
                out_f[n, c, 0] = vals[0, c] if v >= up[c] else (vals[1, c] if v <= dn[c] else vals[2, c])
    return zeros, bad


@njit(**_opts)
def _pointwise_spatial(x, codes, consts, mode, dn, up, pw, vals, out_s, out_m, out_f):
    """`pointwise` for S > 1, channel by channel so every inner loop runs along contiguous
    positions; bits are ORed into the (N, S, CW) planes one channel at a time."""
    n_, c_, p_ = x.shape
    t = np.empty(p_, np.float32)
    one = np.uint64(1)
    zeros = 0
    bad = 0
    if mode == OUT_BITS:
        out_s[:] = 0
        out_m[:] = 0
    for n in range(n_):
        for c in range(c_):
            for p in range(p_):
                v = x[n, c, p]
                t[p] = v
                bad += np.int64((v - v) != 0)
            _chain_scalar(codes, consts, c, t)
            if mode == OUT_CHAIN:
                for p in range(p_):
                    out_f[n, c, p] = t[p]
                continue
            lo = dn[c]
            hi = up[c]
            if mode == OUT_FLOAT:
                for p in range(p_):
                    out_f[n, c, p] = vals[0, c] if t[p] >= hi else (vals[1, c] if t[p] <= lo else vals[2, c])
                continue
            q = c // WORD
            sh = np.uint64(c % WORD)
            pa, pb, pt = _bit_of(pw[0], c), _bit_of(pw[1], c), _bit_of(pw[2], c)
            ma, mb, mt = _bit_of(pw[3], c), _bit_of(pw[4], c), _bit_of(pw[5], c)
            for p in range(p_):
                ab = np.uint64(t[p] >= hi)
                bl = np.uint64(t[p] <= lo)
                ti = (ab | bl) ^ one
                out_s[n, p, q] |= ((ab & pa) | (bl & pb) | (ti & pt)) << sh
                mbit = (ab & ma) | (bl & mb) | (ti & mt)
                out_m[n, p, q] |= mbit << sh
                zeros += np.int64(mbit ^ one)
    return zeros, bad


@njit(**_opts)
def _conv1_planes(x, n, wt, bias, has_bias, geom, codes, consts, planes):
    """Output planes (M, OH*OW) of `conv1_pointwise`'s convolution for image n, tap by tap
    (the same sums in the same order, vectorized along output rows), then the op chain."""
    h_, w_ = x.shape[1], x.shape[2]
    m_ = wt.shape[1]
    kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], \
        geom[8], geom[9], geom[10], geom[11]
    for m in range(m_):
        tap = 0
        for ky in range(kh):
            for kx in range(kw):
                wv = wt[tap, m]
                for oy in range(oh):
                    iy = oy * sh - ph + ky * dh
                    row = oy * ow
                    for ox in range(ow):
                        ix = ox * sw - pw_ + kx * dw
                        v = x[n, iy, ix] if 0 <= iy < h_ and 0 <= ix < w_ else np.float32(0.0)
                        if tap == 0:
                            planes[m, row + ox] = wv * v
                        else:
                            planes[m, row + ox] = planes[m, row + ox] + wv * v
                tap += 1
        if has_bias:
            for p in range(oh * ow):
                planes[m, p] = planes[m, p] + bias[m]
        _chain_scalar(codes, consts, m, planes[m])


@njit(**_opts)
def _chain_scalar(codes, consts, c, t):
    """The op chain on a run of values t of one channel c (constants are scalars here)."""
    for i in range(codes.shape[0]):
        k = codes[i]
        u = consts[i, c]
        if k == OP_MUL:
            for p in range(t.shape[0]):
                t[p] = t[p] * u
        elif k == OP_ADD:
            for p in range(t.shape[0]):
                t[p] = t[p] + u
        elif k == OP_SUB:
            for p in range(t.shape[0]):
                t[p] = t[p] - u
        elif k == OP_RSUB:
            for p in range(t.shape[0]):
                t[p] = u - t[p]
        elif k == OP_DIV:
            for p in range(t.shape[0]):
                t[p] = t[p] / u
        elif k == OP_RDIV:
            for p in range(t.shape[0]):
                t[p] = u / t[p]
        else:
            for p in range(t.shape[0]):
                t[p] = _unary(k, t[p], u)


@njit(**_opts)
def conv1_pointwise(x, wt, bias, has_bias, geom, codes, consts, mode, dn, up, pw, vals, out_s, out_m, out_f):
    """A real convolution of one-channel images x (N, H, W) with taps wt (KH*KW, M), then
    `pointwise` on its M channels at every output position (modes as there; S = OH*OW).

    Arithmetic as the reference evaluator's Conv with one input channel: one rounded product
    per tap, summed in tap order (row-major), then the bias; so the results are the same bits."""
    n_, h_, w_ = x.shape
    m_ = wt.shape[1]
    kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], \
        geom[8], geom[9], geom[10], geom[11]
    cw = out_s.shape[2]
    t = np.full(max(m_, cw * WORD), np.nan, np.float32)
    tm = t[:m_]
    # few channels: whole output planes first (vector loops along the row), then per position
    planes = np.empty((m_, oh * ow), np.float32) if m_ < 16 else np.empty((0, 0), np.float32)
    zeros = 0
    for n in range(n_):
        if m_ < 16:
            _conv1_planes(x, n, wt, bias, has_bias, geom, codes, consts, planes)
        for oy in range(oh):
            for ox in range(ow):
                p = oy * ow + ox
                if m_ < 16:
                    for m in range(m_):
                        t[m] = planes[m, p]  # the chain already ran on the planes
                else:
                    tap = 0
                    for ky in range(kh):
                        iy = oy * sh - ph + ky * dh
                        for kx in range(kw):
                            ix = ox * sw - pw_ + kx * dw
                            v = x[n, iy, ix] if 0 <= iy < h_ and 0 <= ix < w_ else np.float32(0.0)
                            if tap == 0:
                                for m in range(m_):
                                    t[m] = wt[0, m] * v
                            else:
                                for m in range(m_):
                                    t[m] = t[m] + wt[tap, m] * v
                            tap += 1
                    if has_bias:
                        for m in range(m_):
                            t[m] = t[m] + bias[m]
                    _chain(codes, consts, tm)
                if mode == OUT_BITS:
                    for q in range(cw):
                        below, above = fcmp_bits(t, q * WORD, dn, up, q * WORD)
                        tie = ~(below | above)
                        out_s[n, p, q] = (above & pw[0, q]) | (below & pw[1, q]) | (tie & pw[2, q])
                        mw = (above & pw[3, q]) | (below & pw[4, q]) | (tie & pw[5, q])
                        out_m[n, p, q] = mw
                        zeros += np.int64(popcount(pw[6, q] & ~mw))
                elif mode == OUT_CHAIN:
                    for m in range(m_):
                        out_f[n, m, p] = t[m]
                else:
                    for m in range(m_):
                        v = t[m]
                        out_f[n, m, p] = vals[0, m] if v >= up[m] else (vals[1, m] if v <= dn[m] else vals[2, m])
    return zeros


@njit(**_opts)
def im2col(s, m, ternary, geom, chanmask, out_s, out_m):
    """Packed patches: planes (N, H*W, CW) -> rows (N*OH*OW, KH*KW*CW), tap-major. geom =
    [H, W, KH, KW, stride_h, stride_w, dil_h, dil_w, pad_h, pad_w, OH, OW]. Taps outside the
    image get sign 0 and mask 0; inside, the mask is m (ternary) or `chanmask` (valid channels)."""
    h_, w_, kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom
    n_ = s.shape[0]
    cw = s.shape[2]
    for n in range(n_):
        for oy in range(oh):
            for ox in range(ow):
                r = (n * oh + oy) * ow + ox
                for ky in range(kh):
                    iy = oy * sh - ph + ky * dh
                    for kx in range(kw):
                        ix = ox * sw - pw_ + kx * dw
                        base = (ky * kw + kx) * cw
                        inside = 0 <= iy < h_ and 0 <= ix < w_
                        for q in range(cw):
                            if inside:
                                out_s[r, base + q] = s[n, iy * w_ + ix, q]
                                out_m[r, base + q] = m[n, iy * w_ + ix, q] if ternary else chanmask[q]
                            else:
                                out_s[r, base + q] = 0
                                out_m[r, base + q] = 0
                for q in range(kh * kw * cw, out_s.shape[1]):  # row padding to whole groups
                    out_s[r, q] = 0
                    out_m[r, q] = 0


@njit(**_opts)
def im2col_f32(x, geom, out):
    """Float patches of a real convolution, transposed: x (N, C, H, W) -> out (C*KH*KW, N*OH*OW),
    row (c, ky, kx) in the order of W.reshape(M, -1), column = output position; padded taps
    read 0. Each row is filled along output columns, a contiguous run of the image when the
    stride is 1 (so it vectorizes); `out.T @ W.T` is then one BLAS call (transposed operand, no
    copy) giving channels-last rows. geom as im2col's."""
    n_, c_, h_, w_ = x.shape
    kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], \
        geom[8], geom[9], geom[10], geom[11]
    zero = np.float32(0.0)
    for c in range(c_):
        for ky in range(kh):
            for kx in range(kw):
                row = (c * kh + ky) * kw + kx
                off = kx * dw - pw_
                # output columns ox whose tap 0 <= ox*sw + off < w_
                lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
                hi = max(lo, min(ow, (w_ - off + sw - 1) // sw))
                for n in range(n_):
                    for oy in range(oh):
                        base = (n * oh + oy) * ow
                        iy = oy * sh - ph + ky * dh
                        if iy < 0 or iy >= h_:
                            for ox in range(ow):
                                out[row, base + ox] = zero
                            continue
                        for ox in range(lo):
                            out[row, base + ox] = zero
                        for ox in range(lo, hi):
                            out[row, base + ox] = x[n, c, iy, ox * sw + off]
                        for ox in range(hi, ow):
                            out[row, base + ox] = zero


@njit(**_opts)
def maxpool(s, m, geom, out_s, out_m):
    """Max-pool on planes (N, H*W, CW) -> (N, OH*OW, CW); geom as im2col's. Padded taps are
    skipped (ONNX pads MaxPool with -inf). The max is +1 if any tap is +1, else 0 if any is 0:
    sign = OR of signs, mask = sign | AND of masks (also right for bipolar planes)."""
    h_, w_, kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom
    n_ = s.shape[0]
    cw = s.shape[2]
    full = ~np.uint64(0)
    for n in range(n_):
        for oy in range(oh):
            for ox in range(ow):
                o = oy * ow + ox
                for q in range(cw):
                    pos = np.uint64(0)
                    allm = full
                    for ky in range(kh):
                        iy = oy * sh - ph + ky * dh
                        if iy < 0 or iy >= h_:
                            continue
                        for kx in range(kw):
                            ix = ox * sw - pw_ + kx * dw
                            if ix < 0 or ix >= w_:
                                continue
                            pos |= s[n, iy * w_ + ix, q]
                            allm &= m[n, iy * w_ + ix, q]
                    out_s[n, o, q] = pos
                    out_m[n, o, q] = pos | allm


@njit(**_opts)
def maxpool_f32(x, geom, out):
    """Max-pool of float32 x (N, C, H, W) -> out (N, C, OH, OW); geom as im2col's. Padded taps
    are skipped (ONNX pads with -inf) and a NaN tap gives NaN (numpy.maximum, the evaluator's)."""
    n_, c_, h_, w_ = x.shape
    kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], \
        geom[8], geom[9], geom[10], geom[11]
    for n in range(n_):
        for c in range(c_):
            for oy in range(oh):
                for ox in range(ow):
                    v = -np.inf
                    for ky in range(kh):
                        iy = oy * sh - ph + ky * dh
                        if iy < 0 or iy >= h_:
                            continue
                        for kx in range(kw):
                            ix = ox * sw - pw_ + kx * dw
                            if ix < 0 or ix >= w_:
                                continue
                            t = x[n, c, iy, ix]
                            if t > v or t != t:
                                v = t
                            if v != v:
                                break
                    out[n, c, oy, ox] = v


@njit(**_opts)
def maxpool_map(s, m, geom, pw, out_s, out_m):
    """`maxpool`'s ternary max on planes (N, H*W, CW), then each channel's pooled value v in
    {+1, 0, -1} mapped to bits by the words pw (7, CW) = [P+, P-, P0, M+, M-, M0, valid] (the
    layout of a threshold's above/below/tie words). Returns the zeros written."""
    h_, w_, kh, kw, sh, sw, dh, dw, ph, pw_, oh, ow = geom
    n_ = s.shape[0]
    cw = s.shape[2]
    full = ~np.uint64(0)
    zeros = 0
    for n in range(n_):
        for oy in range(oh):
            for ox in range(ow):
                o = oy * ow + ox
                for q in range(cw):
                    pos = np.uint64(0)
                    allm = full
                    for ky in range(kh):
                        iy = oy * sh - ph + ky * dh
                        if iy < 0 or iy >= h_:
                            continue
                        for kx in range(kw):
                            ix = ox * sw - pw_ + kx * dw
                            if ix < 0 or ix >= w_:
                                continue
                            pos |= s[n, iy * w_ + ix, q]
                            allm &= m[n, iy * w_ + ix, q]
                    nz = pos | allm
                    neg = nz & ~pos
                    zer = ~nz
                    out_s[n, o, q] = (pos & pw[0, q]) | (neg & pw[1, q]) | (zer & pw[2, q])
                    mw = (pos & pw[3, q]) | (neg & pw[4, q]) | (zer & pw[5, q])
                    out_m[n, o, q] = mw
                    zeros += np.int64(popcount(pw[6, q] & ~mw))
    return zeros


# header of bgemm_chain's int64 table `meta` (then the layer rows, the bounds, the op codes)
(M_L, M_PRE, M_XC, M_NCODES, M_PROG, M_CODES, M_CW0, M_PW0, M_CONSTS, M_DN, M_UP, M_NUP, M_ACC) = range(13)
M_HEAD = 16


@njit(**_opts)
def bgemm_chain(x, a, m, ternary, meta, wbits, fconst, bflat, planes, out_f):
    """Consecutive binary Linear layers in one call (no Python between layers; few arguments,
    since at batch 1 Numba's per-argument dispatch cost is a visible share).

    Static data sits in four flat arrays described by the int64 table `meta` (header fields
    M_*, then the rows of the layer table (fields L_*), the integer bounds, the op codes): `wbits`
    (uint64: weights, threshold bit words), `fconst` (float32: input-chain constants and float
    bounds), `bflat` (float64 biases). With meta[M_PRE], stage 0 is `pointwise` (OUT_BITS) of
    float32 x (N, C*S), C = meta[M_XC]; else the first layer reads packed rows a, m (N, KW);
    `ternary`: the first layer's input may hold zeros. Each layer reads the previous stage's bits.
    `planes` (uint64) receives, per stage, the sign then the mask plane ((N, S, CW) each), then
    holds the accumulator scratch and one zero count per stage; a final OUT_FLOAT layer writes
    out_f (N, J). Returns the number of NaN/inf values read from x."""
    nl = meta[M_L]
    prog = meta[meta[M_PROG]:meta[M_PROG] + nl * L_FIELDS].reshape(nl, L_FIELDS)
    pre = meta[M_PRE] != 0
    nz = nl + (1 if pre else 0)
    end = planes.shape[0]
    zs = planes[end - nz:]
    acc = planes[end - nz - meta[M_ACC]:end - nz].view(np.int64)
    off = 0
    k0 = 0
    bad = 0
    if pre:
        n = x.shape[0]
        xc = meta[M_XC]
        p_ = x.shape[1] // xc
        cw = meta[M_CW0]
        nc = meta[M_NCODES]
        codes = meta[meta[M_CODES]:meta[M_CODES] + nc]
        consts = fconst[meta[M_CONSTS]:meta[M_CONSTS] + nc * xc].reshape(nc, xc)
        dn = fconst[meta[M_DN]:meta[M_DN] + meta[M_NUP]]
        up = fconst[meta[M_UP]:meta[M_UP] + meta[M_NUP]]
        pw0 = wbits[meta[M_PW0]:meta[M_PW0] + 7 * cw].reshape(7, cw)
        s3 = planes[:n * p_ * cw].reshape(n, p_, cw)
        m3 = planes[n * p_ * cw:2 * n * p_ * cw].reshape(n, p_, cw)
        # np.int64(OUT_BITS): the signature the plan's own pointwise steps compile, not a literal one
        z, bad = pointwise(x.reshape(n, xc, p_), codes, consts, np.int64(OUT_BITS), dn, up, pw0,
                           np.empty((3, 1), np.float32), s3, m3, np.empty((1, 1, 1), np.float32))
        zs[0] = z
        a = s3.reshape(n, p_ * cw)
        m = m3.reshape(n, p_ * cw)
        ternary = ternary and z > 0
        off = 2 * n * p_ * cw
        k0 = 1
    n = a.shape[0]
    for l in range(nl):
        kw = prog[l, L_KW]
        jc = prog[l, L_JC]
        js = prog[l, L_JS]
        jw = prog[l, L_JW]
        wo = prog[l, L_WOFF]
        to = prog[l, L_TOFF]
        po = prog[l, L_POFF]
        bo = prog[l, L_BOFF]
        w = wbits[wo:wo + kw * jc]
        pw = wbits[po:po + 7 * jw].reshape(7, jw)
        tlo = meta[to:to + js]
        thi = meta[to + js:to + 2 * js]
        bias = bflat[bo:bo + prog[l, L_J]]
        mode = prog[l, L_MODE]
        if mode == OUT_BITS:
            os_ = planes[off:off + n * jw].reshape(n, jw)
            om = planes[off + n * jw:off + 2 * n * jw].reshape(n, jw)
            z = bgemm(a, m, ternary, prog[l, L_K], w, jc, mode, tlo, thi, pw, bias, prog[l, L_BMODE],
                      os_, om, out_f, acc)
            zs[k0 + l] = z
            a = os_
            m = om
            ternary = prog[l, L_TERN] != 0 and z > 0
            off += 2 * n * jw
        else:
            bgemm(a, m, ternary, prog[l, L_K], w, jc, mode, tlo, thi, pw, bias, prog[l, L_BMODE],
                  a, a, out_f, acc)
            zs[k0 + l] = 0
    return bad

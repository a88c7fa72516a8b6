"""Bit packing of binary tensors: {-1,+1} and {-1,0,+1} values, 64 to a uint64 word.

Layout. A binary tensor seen as (N, C, S) (batch, channels = the reduction axis of the layer
that reads it, positions: 1 for a flat (N, K) tensor, H*W for an image) is stored as planes of
shape (N, S, CW) with CW = ceil(C / 64): bit `c % 64` of word `[n, s, c // 64]` is channel c at
position s (channels last, so a convolution tap or a dense row is a run of whole words).

- sign plane: bit set <=> the value is +1;
- mask plane (ternary tensors only): bit set <=> the value is nonzero; a 0 has sign bit 0.
Padding bits (channels C..64*CW-1) are 0 in both planes, so they never count in a popcount.

Weights are packed in blocks of 8 output columns, K-major inside a block: word k of column
8b+i sits at b*8*KW + 8k + i, so the GEMM's inner loop loads one vector of 8 columns per word
and a call streams one contiguous block.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

WORD = 64


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of a uint64 (compiles to the CPU's popcnt instruction)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def aligned(n: int, dtype, align: int = 64) -> np.ndarray:
    """An empty 1-D array of n elements whose data starts on an `align`-byte boundary (whole
    cache lines: a vector load that straddles two lines costs two)."""
    dt = np.dtype(dtype)
    buf = np.empty(n * dt.itemsize + align, np.uint8)
    off = -buf.ctypes.data % align
    return buf[off:off + n * dt.itemsize].view(dt)


def words(c: int) -> int:
    """Words holding c bits."""
    return -(-int(c) // WORD)


@njit(cache=True, nogil=True)
def pack(x, s, m):
    """Pack float32 x (N, C, S) into planes s, m (N, S, CW); returns (values outside {-1,0,1},
    zeros). The mask plane is always written."""
    n_, c_, p_ = x.shape
    cw = s.shape[2]
    bad = 0
    zeros = 0
    for n in range(n_):
        for p in range(p_):
            for w in range(cw):
                sw = np.uint64(0)
                mw = np.uint64(0)
                for b in range(min(WORD, c_ - w * WORD)):
                    v = x[n, w * WORD + b, p]
                    bit = np.uint64(1) << np.uint64(b)
                    if v == 1.0:
                        sw |= bit
                        mw |= bit
                    elif v == -1.0:
                        mw |= bit
                    elif v == 0.0:
                        zeros += 1
                    else:
                        bad += 1
                s[n, p, w] = sw
                m[n, p, w] = mw
    return bad, zeros


@njit(cache=True, nogil=True)
def unpack(s, m, ternary, out):
    """Planes s, m (N, S, CW) -> float32 out (N, C, S); m is read only when `ternary`."""
    n_, c_, p_ = out.shape
    for n in range(n_):
        for c in range(c_):
            w = c // WORD
            bit = np.uint64(1) << np.uint64(c % WORD)
            for p in range(p_):
                if ternary and (m[n, p, w] & bit) == 0:
                    out[n, c, p] = 0.0
                elif s[n, p, w] & bit:
                    out[n, c, p] = 1.0
                else:
                    out[n, c, p] = -1.0


def pack_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference packing of a {-1,0,1} array (N, C, S) -> (sign, mask) planes (N, S, CW)."""
    x = np.asarray(x)
    n, c, p = x.shape
    pad = words(c) * WORD - c
    xt = np.pad(np.moveaxis(x, 1, 2), [(0, 0), (0, 0), (0, pad)])
    return (_bits_to_words(xt > 0), _bits_to_words(xt != 0))


def _bits_to_words(b: np.ndarray) -> np.ndarray:
    """Boolean (..., 64*W) -> uint64 (..., W), bit i of word w = element 64*w + i."""
    by = np.packbits(b.astype(np.uint8), axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64)


def pack_weights(w_bits: np.ndarray, cols: int) -> np.ndarray:
    """Rows of +-1 weights laid out on bit positions, (J, 64*KW) with 0 at padding, -> flat
    uint64 in blocks of 8 columns: word k of column 8b+i at index b*8*KW + 8k + i (a GEMM call
    streams one contiguous block). Columns are padded with zero rows to a multiple of `cols`."""
    j, _ = w_bits.shape
    jc = -(-j // cols) * cols
    rows = np.zeros((jc, w_bits.shape[1] // WORD), np.uint64)
    rows[:j] = _bits_to_words(w_bits > 0)  # (JC, KW)
    kw = rows.shape[1]
    return np.ascontiguousarray(rows.reshape(jc // 8, 8, kw).transpose(0, 2, 1)).ravel()

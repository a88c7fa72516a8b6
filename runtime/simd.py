"""Vector micro-kernels for the binary GEMM, written as Numba intrinsics in portable LLVM IR.

Numba's auto-vectorizer keeps to 256-bit vectors on AVX-512 machines and cannot see the
Harley-Seal carry-save trick, so the inner block of the xnor-popcount GEMM is emitted here by
hand, as generic IR on `<8 x i64>` vectors: LLVM lowers it to zmm registers with `vpternlog`
carry-save adders and a `vpshufb` popcount on AVX-512, to pairs of ymm registers on AVX2, and to
whatever the target has elsewhere (no target-specific intrinsic is named, so the same source
compiles for any CPU LLVM knows; Numba's cache is per CPU anyway).

`acc_block(R, V, ternary)` makes an intrinsic that, for R rows of packed activations and 8*V
output columns of packed weights, accumulates the number of disagreeing bits:

    out[r, j] = sum_k popcount((a[r, k] ^ w[k, j]) & m[r, k])      (the "& m" only when ternary)

over k = 0..kw-1: groups of 8 words go through a Harley-Seal carry-save tree (7 CSAs and one
popcount per 8 words instead of 8 popcounts), the remaining words are counted one by one.
`thr_bits` turns 64 such counts into the below/above bit masks of a threshold, `fcmp_bits` does
the same for 64 float32 values.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_LANES = 8
_V = ir.VectorType(_I64, _LANES)


def _c(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def _ptr(context, builder, aryty, ary, off):
    """Pointer to element `off` of a C-contiguous array's flat data."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [off])


def _ctpop(builder, v):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V]), "llvm.ctpop.v8i64")
    return builder.call(fn, [v])


def _splat(builder, x):
    v = builder.insert_element(ir.Constant(_V, None), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V, None), ir.Constant(ir.VectorType(_I32, _LANES), [0] * _LANES))


def _vload(builder, p):
    return builder.load(builder.bitcast(p, _V.as_pointer()), align=8)


def _vstore(builder, v, p):
    builder.store(v, builder.bitcast(p, _V.as_pointer()), align=8)


def _csa(b, a, x, y):
    """Carry-save adder: (carry, sum) of three bit vectors; written so LLVM emits two vpternlog."""
    return b.or_(b.and_(a, x), b.and_(y, b.or_(a, x))), b.xor(b.xor(a, x), y)


def acc_block(rows: int, vecs: int, ternary: bool):
    """An intrinsic `f(a, m, ia, astride, w, iw, wstride, vstride, kw, out, io, ostride, nblk, bstride)`.

    Row r of the activations starts at flat index ia + r*astride of `a` (and `m`). For column
    block j < nblk (8*vecs columns each), weight vector v (8 columns) of word k sits at
    iw + j*bstride + k*wstride + v*vstride of `w`, and row r of the result (int64) at
    io + r*ostride + j*8*vecs of `out`. Looping over the blocks here, not in Python or Numba,
    keeps the per-block cost to zeroing the state."""

    @intrinsic
    def _acc(typingctx, a, m, ia, astride, w, iw, wstride, vstride, kw, out, io, ostride, nblk, bstride):
        sig = types.void(a, m, ia, astride, w, iw, wstride, vstride, kw, out, io, ostride, nblk, bstride)

        def codegen(context, builder, signature, args):
            b = builder
            a_, m_, ia_, ast_, w_, iw_, wst_, vst_, kw_, out_, io_, ost_, nblk_, bst_ = args
            ta = signature.args
            arow = [_ptr(context, b, ta[0], a_, b.add(ia_, b.mul(ast_, _c(r)))) for r in range(rows)]
            mrow = [_ptr(context, b, ta[1], m_, b.add(ia_, b.mul(ast_, _c(r)))) for r in range(rows)]
            zero = ir.Constant(_V, None)
            # per (row, vector): ones, twos, fours (carry-save state), eights count, tail count
            st = [[[cgutils.alloca_once_value(b, zero) for _ in range(5)] for _ in range(vecs)]
                  for _ in range(rows)]
            groups = b.udiv(kw_, _c(8))
            with cgutils.for_range(b, nblk_) as blk:
                wblk = _ptr(context, b, ta[4], w_, b.add(iw_, b.mul(blk.index, bst_)))
                obase = b.add(io_, b.mul(blk.index, _c(8 * vecs)))
                for row in st:
                    for vec in row:
                        for p in vec:
                            b.store(zero, p)

                def inputs(k):
                    """The xor (and mask) of row r's word k with every weight vector of word k."""
                    ws = [_vload(b, b.gep(wblk, [b.add(b.mul(k, wst_), b.mul(vst_, _c(v)))])) for v in range(vecs)]
                    res = []
                    for r in range(rows):
                        x = _splat(b, b.load(b.gep(arow[r], [k])))
                        mk = _splat(b, b.load(b.gep(mrow[r], [k]))) if ternary else None
                        res.append([b.and_(b.xor(wv, x), mk) if ternary else b.xor(wv, x) for wv in ws])
                    return res

                with cgutils.for_range(b, groups) as loop:
                    k0 = b.mul(loop.index, _c(8))
                    # the carry-save tree consumes inputs two words at a time, so few are live at once
                    state = {(r, v): [b.load(p) for p in st[r][v][:3]] for r in range(rows) for v in range(vecs)}
                    carry = {}
                    for i in range(0, 8, 2):
                        va, vb = inputs(b.add(k0, _c(i))), inputs(b.add(k0, _c(i + 1)))
                        for r in range(rows):
                            for v in range(vecs):
                                ones, twos, fours = state[r, v]
                                t, ones = _csa(b, ones, va[r][v], vb[r][v])
                                if i % 4 == 0:
                                    carry[r, v, "twos"] = t
                                else:
                                    f, twos = _csa(b, twos, carry[r, v, "twos"], t)
                                    if i == 2:
                                        carry[r, v, "fours"] = f
                                    else:
                                        eights, fours = _csa(b, fours, carry[r, v, "fours"], f)
                                        s_cnt = st[r][v][3]
                                        b.store(b.add(b.load(s_cnt), _ctpop(b, eights)), s_cnt)
                                state[r, v] = [ones, twos, fours]
                    for (r, v), vals in state.items():
                        for p, val in zip(st[r][v][:3], vals):
                            b.store(val, p)
                start = b.mul(groups, _c(8))
                with cgutils.for_range_slice(b, start, kw_, _c(1)) as (k, _):
                    vin = inputs(k)
                    for r in range(rows):
                        for v in range(vecs):
                            s_tail = st[r][v][4]
                            b.store(b.add(b.load(s_tail), _ctpop(b, vin[r][v])), s_tail)
                # the carry-save state holds bits only when a group of 8 ran: skip its popcounts else
                with b.if_then(b.icmp_unsigned(">", groups, _c(0))):
                    for r in range(rows):
                        for v in range(vecs):
                            s_ones, s_twos, s_fours, s_cnt, s_tail = st[r][v]
                            tot = b.shl(b.load(s_cnt), ir.Constant(_V, [3] * _LANES))
                            tot = b.add(tot, b.shl(_ctpop(b, b.load(s_fours)), ir.Constant(_V, [2] * _LANES)))
                            tot = b.add(tot, b.shl(_ctpop(b, b.load(s_twos)), ir.Constant(_V, [1] * _LANES)))
                            b.store(b.add(tot, b.add(_ctpop(b, b.load(s_ones)), b.load(s_tail))), s_tail)
                for r in range(rows):
                    orow = _ptr(context, b, ta[9], out_, b.add(obase, b.mul(ost_, _c(r))))
                    for v in range(vecs):
                        _vstore(b, b.load(st[r][v][4]), b.gep(orow, [_c(8 * v)]))
            return context.get_dummy_value()

        return sig, codegen

    return _acc


@intrinsic
def thr_bits(typingctx, acc, ia, c, tlo, thi, it):
    """(below, above) bit masks of 64 columns: dot = c - 2*acc[ia+i]; bit i of below is
    dot <= tlo[it+i], of above dot >= thi[it+i] (int64 arrays)."""
    sig = types.UniTuple(types.uint64, 2)(acc, ia, c, tlo, thi, it)

    def codegen(context, builder, signature, args):
        b = builder
        acc_, ia_, c_, tlo_, thi_, it_ = args
        ta = signature.args
        pa = _ptr(context, b, ta[0], acc_, ia_)
        pl = _ptr(context, b, ta[3], tlo_, it_)
        ph = _ptr(context, b, ta[4], thi_, it_)
        cv = _splat(b, c_)
        below, above = _c(0), _c(0)
        for v in range(8):
            off = [_c(8 * v)]
            dot = b.sub(cv, b.shl(_vload(b, b.gep(pa, off)), ir.Constant(_V, [1] * _LANES)))
            lo_m = b.zext(b.bitcast(b.icmp_signed("<=", dot, _vload(b, b.gep(pl, off))), ir.IntType(8)), _I64)
            hi_m = b.zext(b.bitcast(b.icmp_signed(">=", dot, _vload(b, b.gep(ph, off))), ir.IntType(8)), _I64)
            below = b.or_(below, b.shl(lo_m, _c(8 * v)))
            above = b.or_(above, b.shl(hi_m, _c(8 * v)))
        return context.make_tuple(b, signature.return_type, [below, above])

    return sig, codegen


_F = ir.FloatType()
_VF = ir.VectorType(_F, 16)


@intrinsic
def fcmp_bits(typingctx, t, it, dn, up, iu):
    """(below, above) bit masks of 64 float32 lanes: bit i of below is t[it+i] <= dn[iu+i], of
    above t[it+i] >= up[iu+i] (ordered compares: a NaN on either side sets neither)."""
    sig = types.UniTuple(types.uint64, 2)(t, it, dn, up, iu)

    def codegen(context, builder, signature, args):
        b = builder
        t_, it_, dn_, up_, iu_ = args
        ta = signature.args
        pt = b.bitcast(_ptr(context, b, ta[0], t_, it_), _VF.as_pointer())
        pd = b.bitcast(_ptr(context, b, ta[2], dn_, iu_), _VF.as_pointer())
        pu = b.bitcast(_ptr(context, b, ta[3], up_, iu_), _VF.as_pointer())
        below, above = _c(0), _c(0)
        for v in range(4):
            off = [ir.Constant(_I64, v)]
            x = b.load(b.gep(pt, off), align=4)
            lo_m = b.zext(b.bitcast(b.fcmp_ordered("<=", x, b.load(b.gep(pd, off), align=4)), ir.IntType(16)), _I64)
            hi_m = b.zext(b.bitcast(b.fcmp_ordered(">=", x, b.load(b.gep(pu, off), align=4)), ir.IntType(16)), _I64)
            below = b.or_(below, b.shl(lo_m, _c(16 * v)))
            above = b.or_(above, b.shl(hi_m, _c(16 * v)))
        return context.make_tuple(b, signature.return_type, [below, above])

    return sig, codegen

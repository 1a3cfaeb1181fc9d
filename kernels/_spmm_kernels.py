"""Numba loops behind ``memwall.kernels.spmm`` (pydata/sparse style: the kernels only loop).

Every kernel writes into a caller-allocated output and trusts its inputs completely: the public wrappers in
``spmm.py`` / ``formats.py`` have validated every index, shape and dtype before a kernel sees them (the
kernels run without bounds checks).

Conventions shared by all kernels
---------------------------------
* Weights are ``(rows, cols)`` = ``(out, in)``; the dense operand ``X`` is ``(cols, batch)`` row-major, so one
  stored weight updates one contiguous ``batch``-wide row of the output (an axpy the compiler vectorizes).
* ``data`` is always a flat 1-D array: float32, int8 (quantized; multiplied by ``scales``) or uint16 (the bit
  pattern of float16 values, decoded exactly in registers: Numba has no float16 type on the CPU).
* ``scales`` is a float32 array (per row for CSR / N:M, per stored block for BSR) or an empty array when the
  values are not quantized.  Float-activation kernels fold it into the weight: ``v = float32(q) * scale``,
  exactly what ``to_dense()`` computes, so the dense reference is the same matrix.
* Each parallel iteration owns whole output rows (or block rows): no two threads write the same element and
  every element's summation order is fixed, so 1 and 2 threads give bit-identical results.
* The N:M metadata is a little-endian bit stream per row: kept value ``t`` of a row has its position inside
  its group in bits ``[t*b, t*b + b)`` (bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._sched import fetch_add as _fetch_add

# 2**(e - 25) for the float16 exponent field e (e = 0: subnormals, 2**-24 per mantissa unit; e = 31: inf).
_H2F = np.array([2.0 ** (max(e, 1) - 25) for e in range(31)] + [np.inf], dtype=np.float32)


@njit
def _half_to_float(h):  # pragma: no cover - compiled
    """Exact float16 -> float32 of a uint16 bit pattern: +-(mantissa | implicit bit) * 2**(exp - 25)."""
    u = np.int32(h)
    e = (u >> 10) & 0x1F
    mant = (u & 0x3FF) | (((e + 31) >> 5) << 10)  # implicit leading 1 unless subnormal (e == 0)
    return np.float32(mant) * _H2F[e] * np.float32(1 - 2 * ((u >> 15) & 1))


def _f32(v):  # pragma: no cover - replaced by the overload below inside compiled code
    raise NotImplementedError


@overload(_f32)
def _f32_impl(v):
    """A stored weight as float32: float16 bit patterns (uint16) decoded exactly, int8/float32 converted.

    Takes a scalar, never an array: array arguments in inner loops cost reference-count traffic."""
    if v == types.uint16:
        return lambda v: _half_to_float(v)
    return lambda v: np.float32(v)


# ================================================================================================
# Register-blocked micro-kernels, emitted as LLVM IR (numba.extending.intrinsic + llvmlite; the same technique
# as kernels/_vnni.py).  Plain Numba loops keep the running output row in memory (LLVM cannot prove that
# ``out`` and ``X`` do not alias), stop at 256-bit vectors on this CPU and re-check aliasing before every
# short batch loop.  These micro-kernels hold a tile of float32 accumulators in vector registers
# (``<16 x float>``: one zmm each with AVX-512, legalised to narrower vectors on other CPUs), walk the stored
# values with explicit ``llvm.fma`` calls and store the tile once.
#
# Shared contract: arrays are C-contiguous and addressed through flat element offsets; a tile covers 16*nv
# consecutive columns of X / out (the wrapper pads the batch to a multiple of 16 columns and aligns X and out
# to 64 bytes, so a vector never straddles two cache lines); every accumulator sums its terms in a fixed
# order, so the result does not depend on the thread count.
# ================================================================================================
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VF = ir.VectorType(_F32, 16)
_ZERO_VF = ir.Constant(_VF, [0.0] * 16)
_SPLAT0 = ir.Constant(ir.VectorType(_I32, 16), [0] * 16)


class _Emit:
    """Small IR helpers bound to one builder."""

    def __init__(self, context, builder, signature, args):
        self.context, self.b, self.st, self.args = context, builder, signature.args, args
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VF, _VF]),
                                                  "llvm.fma.v16f32")

    def i64(self, k):
        """Argument k as int64."""
        return self.context.cast(self.b, self.args[k], self.st[k], types.int64)

    def f32(self, k):
        return self.context.cast(self.b, self.args[k], self.st[k], types.float32)

    def ptr(self, k, off=None):
        """Element pointer of array argument k (plus an int64 element offset)."""
        p = self.context.make_array(self.st[k])(self.context, self.b, self.args[k]).data
        return p if off is None else self.b.gep(p, [off])

    def c64(self, v):
        return ir.Constant(_I64, v)

    def load_index(self, ptr, q):
        """An int32/int64 (or uint8 metadata) element as int64."""
        v = self.b.load(self.b.gep(ptr, [q]))
        return v if v.type.width == 64 else self.b.sext(v, _I64)

    def value(self, ptr, q, dtype, scale=None):
        """A stored weight as float32: float32 as is, float16 bit patterns (uint16) widened exactly (vcvtph2ps),
        int8 converted and multiplied by its scale (``float32(q) * scale``, as ``to_dense`` computes)."""
        v = self.b.load(self.b.gep(ptr, [q]))
        if dtype == types.uint16:
            v = self.b.fpext(self.b.bitcast(v, ir.HalfType()), _F32)
        elif dtype == types.int8:
            v = self.b.sitofp(v, _F32)
        if scale is not None:
            v = self.b.fmul(v, scale)
        return v

    def splat(self, s):
        vec = self.b.insert_element(ir.Constant(_VF, ir.Undefined), s, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(vec, ir.Constant(_VF, ir.Undefined), _SPLAT0)

    def vload(self, fptr, off):
        return self.b.load(self.b.bitcast(self.b.gep(fptr, [off]), _VF.as_pointer()), align=4)

    def vstore(self, val, fptr, off):
        self.b.store(val, self.b.bitcast(self.b.gep(fptr, [off]), _VF.as_pointer()), align=4)

    def opaque(self, ptr):
        """``ptr`` through an empty inline asm: LLVM then addresses the loads from it as register + displacement.
        Folded base + index * scale operands are un-laminated into two uops per FMA on Intel cores, which made
        the issue width (not the FMA or load ports) the limit of the gather-style kernels."""
        fty = ir.FunctionType(ptr.type, [ptr.type])
        return self.b.call(ir.InlineAsm(fty, "", "=r,0", side_effect=False), [ptr])

    def axpy(self, acc, w, xp, row_off, nv):
        """acc[j] += w * X[row_off + 16 j] for j < nv (w already splatted)."""
        rp = self.opaque(self.b.gep(xp, [row_off]))
        return [self.b.call(self.fma, [w, self.vload(rp, self.c64(16 * j)), acc[j]]) for j in range(nv)]

    def gather_step(self, acc, dp, q, dtype, scale, xp, col, ldx, nv):
        """One stored value of a gather-style row (CSR, N:M): acc += data[q] (as float32, times ``scale`` for
        int8) * X row ``col`` (``col * ldx`` elements past ``xp``), nv vectors."""
        w = self.splat(self.value(dp, q, dtype, scale))
        return self.axpy(acc, w, xp, self.b.mul(col, ldx), nv)

    def blocks(self, prefix, names):
        """New basic blocks ``prefix_name`` for each of the space-separated ``names``, in order."""
        return [self.b.append_basic_block(f"{prefix}_{name}") for name in names.split()]

    def phis(self, n):
        return [self.b.phi(_VF) for _ in range(n)]

    def start_tile(self, init, op, offs):
        """Accumulators starting at 0 (init != 0) or at the stored tile ``op[offs[k]]``; returns them."""
        b = self.b
        bb_load = b.append_basic_block("tile_load")
        bb_zero = b.append_basic_block("tile_zero")
        bb_pre = b.append_basic_block("tile_pre")
        b.cbranch(b.icmp_signed("!=", init, self.c64(0)), bb_zero, bb_load)
        b.position_at_end(bb_load)
        loaded = [self.vload(op, o) for o in offs]
        b.branch(bb_pre)
        b.position_at_end(bb_zero)
        b.branch(bb_pre)
        b.position_at_end(bb_pre)
        start = self.phis(len(offs))
        for s, v in zip(start, loaded):
            s.add_incoming(v, bb_load)
            s.add_incoming(_ZERO_VF, bb_zero)
        return start


# One generator per sparsity format, each serving every value type (float32, float16 bit patterns, int8 x
# scale) through ``_Emit.value``; the formats' loop structures differ (cursor + panel limit, block strips,
# unrolled metadata decode), only their IR set-up lines look alike.


def _make_csr_row(nv):
    """``csr_row(out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init) -> consumed``.

    One output row segment ``out[o_off : o_off + 16*nv]`` accumulates ``v_q * X[col_q, x_off : x_off + 16*nv]``
    (flat: ``X[col_q * ldx + x_off + ...]``) for the entries ``q = 0, 1, ...`` (column ``idx[i_off + q]``, value
    ``data[d_off + q]``, times ``scale`` for int8 values) while ``q < n`` and the column is below ``klim`` (the
    end of the current panel; columns increase along a row).  ``init`` != 0: the sum starts from 0, else from
    the stored segment.  Returns the number of entries consumed.  Two register sets (even / odd entries, added
    at the end) keep 2*nv independent FMA chains in flight."""

    @intrinsic
    def csr_row(typingctx, out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init):
        sig = types.int64(out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init)
        scaled = data.dtype == types.int8

        def codegen(context, builder, signature, args):
            e = _Emit(context, builder, signature, args)
            b = builder
            op = e.ptr(0, e.i64(1))
            ldx_v, n_v, klim_v = e.i64(3), e.i64(9), e.i64(10)
            xp = e.ptr(2, e.i64(4))
            ip = e.ptr(5, e.i64(6))
            dp = e.ptr(7, e.i64(8))
            scale_v = e.f32(11) if scaled else None
            one = e.c64(1)
            offs = [e.c64(16 * j) for j in range(nv)]

            def step(acc, q, col):
                return e.gather_step(acc, dp, q, signature.args[7].dtype, scale_v, xp, col, ldx_v, nv)

            start = e.start_tile(e.i64(12), op, offs)
            bb_pre = b.basic_block
            h2, chk2, body2, h1, chk1, body1, done = e.blocks("csr", "h2 chk2 body2 h1 chk1 body1 done")
            b.branch(h2)
            # pairs of entries
            b.position_at_end(h2)
            q = b.phi(_I64)
            a0 = e.phis(nv)
            a1 = e.phis(nv)
            q.add_incoming(e.c64(0), bb_pre)
            for j in range(nv):
                a0[j].add_incoming(start[j], bb_pre)
                a1[j].add_incoming(_ZERO_VF, bb_pre)
            qn = b.add(q, one)
            b.cbranch(b.icmp_signed("<", qn, n_v), chk2, h1)
            b.position_at_end(chk2)
            c1 = e.load_index(ip, qn)
            b.cbranch(b.icmp_signed("<", c1, klim_v), body2, h1)
            b.position_at_end(body2)
            n0 = step(a0, q, e.load_index(ip, q))
            n1 = step(a1, qn, c1)
            q.add_incoming(b.add(q, e.c64(2)), body2)
            for j in range(nv):
                a0[j].add_incoming(n0[j], body2)
                a1[j].add_incoming(n1[j], body2)
            b.branch(h2)
            # at most one entry of this panel is left (the next pair did not fit)
            b.position_at_end(h1)
            b.cbranch(b.icmp_signed("<", q, n_v), chk1, done)
            b.position_at_end(chk1)
            c0 = e.load_index(ip, q)
            b.cbranch(b.icmp_signed("<", c0, klim_v), body1, done)
            b.position_at_end(body1)
            t0 = step(a0, q, c0)
            q1 = b.add(q, one)
            b.branch(done)
            b.position_at_end(done)
            qf = b.phi(_I64)
            af = e.phis(nv)
            for blk, qv, av in ((h1, q, a0), (chk1, q, a0), (body1, q1, t0)):
                qf.add_incoming(qv, blk)
                for j in range(nv):
                    af[j].add_incoming(av[j], blk)
            for j in range(nv):
                e.vstore(b.fadd(af[j], a1[j]), op, offs[j])
            return qf

        return sig, codegen

    return csr_row


def _make_bsr_strip(R, nv):
    """``bsr_strip(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)``.

    Rows ``rr0 .. rr0+R-1`` of one block row, 16*nv columns: ``R x nv`` accumulator vectors (tile row k at
    ``out[o_off + k*ldo]``) take the stored blocks ``p0 .. p1-1`` (block column ``idx[p]``, values
    ``data[(p*r + rr)*c + k]``, int8 times ``scales[p]``): for each of the c columns of a block, nv vectors of
    the X row ``idx[p]*c + k`` (``X[(..) * ldx + x_off]``) are loaded once and meet R broadcast weights.
    ``init`` != 0: start from 0, else from the stored tile."""

    @intrinsic
    def bsr_strip(typingctx, out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init):
        sig = types.void(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        scaled = data.dtype == types.int8

        def codegen(context, builder, signature, args):
            e = _Emit(context, builder, signature, args)
            b = builder
            dtype = signature.args[7].dtype
            op = e.ptr(0, e.i64(1))
            ldo_v, ldx_v = e.i64(2), e.i64(4)
            xp = e.ptr(3, e.i64(5))
            ip, dp = e.ptr(6), e.ptr(7)
            sp = e.ptr(8) if scaled else None
            p0_v, p1_v, r_v, c_v, rr0_v = e.i64(9), e.i64(10), e.i64(11), e.i64(12), e.i64(13)
            offs = [b.add(b.mul(ldo_v, e.c64(k)), e.c64(16 * j)) for k in range(R) for j in range(nv)]
            start = e.start_tile(e.i64(14), op, offs)
            bb_pre = b.basic_block
            hp, bp, hk, bk, pend, done = e.blocks("bsr", "hp bp hk bk pend done")
            b.branch(hp)
            # blocks
            b.position_at_end(hp)
            p = b.phi(_I64)
            acc = e.phis(R * nv)
            p.add_incoming(p0_v, bb_pre)
            for a, s in zip(acc, start):
                a.add_incoming(s, bb_pre)
            b.cbranch(b.icmp_signed("<", p, p1_v), bp, done)
            b.position_at_end(bp)
            xrow0 = b.mul(b.mul(e.load_index(ip, p), c_v), ldx_v)
            dbase = b.mul(b.add(b.mul(p, r_v), rr0_v), c_v)
            s_v = b.load(b.gep(sp, [p])) if scaled else None
            b.branch(hk)
            # columns of the block
            b.position_at_end(hk)
            k = b.phi(_I64)
            acck = e.phis(R * nv)
            k.add_incoming(e.c64(0), bp)
            for a, a0 in zip(acck, acc):
                a.add_incoming(a0, bp)
            b.cbranch(b.icmp_signed("<", k, c_v), bk, pend)
            b.position_at_end(bk)
            xrow = b.add(xrow0, b.mul(k, ldx_v))
            xv = [e.vload(xp, b.add(xrow, e.c64(16 * j))) for j in range(nv)]
            new = []
            for rr in range(R):
                q = b.add(b.add(dbase, b.mul(c_v, e.c64(rr))), k)
                w = e.splat(e.value(dp, q, dtype, s_v))
                new += [b.call(e.fma, [w, xv[j], acck[rr * nv + j]]) for j in range(nv)]
            k.add_incoming(b.add(k, e.c64(1)), bk)
            for a, v in zip(acck, new):
                a.add_incoming(v, bk)
            b.branch(hk)
            b.position_at_end(pend)
            p.add_incoming(b.add(p, e.c64(1)), pend)
            for a, v in zip(acc, acck):
                a.add_incoming(v, pend)
            b.branch(hp)
            b.position_at_end(done)
            for a, o in zip(acc, offs):
                e.vstore(a, op, o)
            return context.get_dummy_value()

        return sig, codegen

    return bsr_strip
def nm_period(n, m):
    """Kept values one unrolled step of the general N:M micro-kernel covers: a whole number of groups (``n``
    values each) whose positions fill a whole number of metadata bytes, at least 8 values (loop overhead).
    Returns 0 when the metadata fields are wider than 8 bits (m > 256) or the step would exceed 64 values:
    those shapes take the decode-then-CSR kernel (``nm_mm``)."""
    bits = int(m - 1).bit_length()
    if bits > 8:
        return 0
    per_byte = 8 // math.gcd(bits, 8) if bits else 1  # values that fill a whole number of bytes
    u = n * per_byte // math.gcd(n, per_byte)
    u *= -(-8 // u)
    return u if u <= 64 else 0


def _make_nm_row(nv):
    """``nm_row(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag)``: one N:M
    row segment, n = ``len(ntag)`` and m = ``len(mtag)`` fixed at compile time (the tags are tuples: their
    lengths are part of the type, so every (n, m) gets its own unrolled code).

    ``nvals`` kept values ``data[d_off ...]`` (a multiple of n) starting at a group boundary of the row whose
    metadata bit stream starts at byte ``meta[m_off]`` (the wrapper makes segment starts byte-aligned); value
    ``q`` sits in column ``(q // n) * m + pos_q`` relative to the segment's first column, whose X row starts at
    ``X[x_off]``.  Steps of ``nm_period(n, m)`` values decode their positions with constant byte offsets and
    shifts (fields straddling a byte are read as two bytes) beside the multiply-adds, in up to four register
    sets (4*nv FMA chains in flight); the last < period values go one at a time.  ``init`` as for ``csr_row``.
    Same value types as ``csr_row`` (float32, float16 bit patterns, int8 times ``scale``)."""

    @intrinsic
    def nm_row(typingctx, out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag):
        if not (isinstance(ntag, types.UniTuple) and isinstance(mtag, types.UniTuple)):
            return None
        n, m = ntag.count, mtag.count
        U = nm_period(n, m)
        if not (1 <= n <= m and U):
            return None
        bits = int(m - 1).bit_length()
        sig = types.void(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag)
        scaled = data.dtype == types.int8
        nsets = min(4, U)

        def codegen(context, builder, signature, args):
            e = _Emit(context, builder, signature, args)
            b = builder
            dtype = signature.args[5].dtype
            op = e.ptr(0, e.i64(1))
            ldx_v = e.i64(3)
            xp = e.ptr(2, e.i64(4))
            dp = e.ptr(5, e.i64(6))
            mp = e.ptr(7, e.i64(8))
            n_v = e.i64(9)
            scale_v = e.f32(10) if scaled else None
            mask = e.c64((1 << bits) - 1)
            offs = [e.c64(16 * j) for j in range(nv)]
            start = e.start_tile(e.i64(11), op, offs)
            bb_pre = b.basic_block
            hu, bodyu, h1, body1, done = e.blocks("nm", "hu bodyu h1 body1 done")

            def byte_at(mb, k):
                return b.zext(b.load(b.gep(mp, [b.add(mb, e.c64(k))])), _I64)

            def step(acc, q, c):
                return e.gather_step(acc, dp, q, dtype, scale_v, xp, c, ldx_v, nv)

            b.branch(hu)
            # whole steps: U values, positions at constant bit offsets from the byte mb
            b.position_at_end(hu)
            q = b.phi(_I64)
            mb = b.phi(_I64)
            cb = b.phi(_I64)
            sets = [e.phis(nv) for _ in range(nsets)]
            for v in (q, mb, cb):
                v.add_incoming(e.c64(0), bb_pre)
            for j in range(nv):
                sets[0][j].add_incoming(start[j], bb_pre)
                for s in sets[1:]:
                    s[j].add_incoming(_ZERO_VF, bb_pre)
            b.cbranch(b.icmp_signed("<=", b.add(q, e.c64(U)), n_v), bodyu, h1)
            b.position_at_end(bodyu)
            cur = list(sets)
            loaded = {}
            for t in range(U):
                bp = t * bits
                byte, sh = bp >> 3, bp & 7
                if bits == 0:
                    pos = None
                else:
                    if byte not in loaded:
                        loaded[byte] = byte_at(mb, byte)
                    field = loaded[byte]
                    if sh + bits > 8:
                        if byte + 1 not in loaded:
                            loaded[byte + 1] = byte_at(mb, byte + 1)
                        field = b.or_(field, b.shl(loaded[byte + 1], e.c64(8)))
                    pos = b.and_(b.lshr(field, e.c64(sh)), mask) if sh else b.and_(field, mask)
                c = b.add(cb, e.c64((t // n) * m))
                if pos is not None:
                    c = b.add(c, pos)
                k = t % nsets
                cur[k] = step(cur[k], b.add(q, e.c64(t)), c)
            q.add_incoming(b.add(q, e.c64(U)), bodyu)
            mb.add_incoming(b.add(mb, e.c64(U * bits // 8)), bodyu)
            cb.add_incoming(b.add(cb, e.c64(U // n * m)), bodyu)
            for s, nw in zip(sets, cur):
                for j in range(nv):
                    s[j].add_incoming(nw[j], bodyu)
            b.branch(hu)
            # the last values (fewer than a step), one at a time into set 0; a field is read as the byte it
            # starts in and the next one only where it straddles (never past the row's metadata)
            b.position_at_end(h1)
            t1 = b.phi(_I64)
            a1 = e.phis(nv)
            t1.add_incoming(q, hu)
            for j in range(nv):
                a1[j].add_incoming(sets[0][j], hu)
            b.cbranch(b.icmp_signed("<", t1, n_v), body1, done)
            b.position_at_end(body1)
            c = b.mul(b.udiv(t1, e.c64(n)), e.c64(m))
            if bits:
                bp = b.mul(t1, e.c64(bits))
                byte = b.lshr(bp, e.c64(3))
                sh = b.and_(bp, e.c64(7))
                lo = byte_at(byte, 0)
                straddle = b.icmp_unsigned(">", b.add(sh, e.c64(bits)), e.c64(8))
                hi = b.zext(b.load(b.gep(mp, [b.select(straddle, b.add(byte, e.c64(1)), byte)])), _I64)
                field = b.or_(lo, b.shl(hi, e.c64(8)))
                c = b.add(c, b.and_(b.lshr(field, sh), mask))
            n1 = step(a1, t1, c)
            t1.add_incoming(b.add(t1, e.c64(1)), body1)
            for j in range(nv):
                a1[j].add_incoming(n1[j], body1)
            b.branch(h1)
            b.position_at_end(done)
            for j in range(nv):
                tot = a1[j]
                for s in sets[1:]:
                    tot = b.fadd(tot, s[j])
                e.vstore(tot, op, offs[j])
            return context.get_dummy_value()

        return sig, codegen

    return nm_row


_csr_row = [None] + [_make_csr_row(nv) for nv in (1, 2, 3, 4)]
_bsr_strip = {(R, nv): _make_bsr_strip(R, nv) for R in (1, 2, 4) for nv in (1, 2, 3, 4)}
csr_row1, csr_row2, csr_row3, csr_row4 = _csr_row[1:]
_nm_row = [None] + [_make_nm_row(nv) for nv in (1, 2, 3, 4)]
nm_row1, nm_row2, nm_row3, nm_row4 = _nm_row[1:]
bsr_strip1_1, bsr_strip1_2, bsr_strip1_3, bsr_strip1_4 = (_bsr_strip[1, nv] for nv in (1, 2, 3, 4))
bsr_strip2_1, bsr_strip2_2, bsr_strip2_3, bsr_strip2_4 = (_bsr_strip[2, nv] for nv in (1, 2, 3, 4))
bsr_strip4_1, bsr_strip4_2, bsr_strip4_3, bsr_strip4_4 = (_bsr_strip[4, nv] for nv in (1, 2, 3, 4))


@njit(inline="always")
def _csr_seg(nv, out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init):  # pragma: no cover
    if nv == 4:
        return csr_row4(out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init)
    if nv == 3:
        return csr_row3(out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init)
    if nv == 2:
        return csr_row2(out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init)
    return csr_row1(out, o_off, X, ldx, x_off, idx, i_off, data, d_off, n, klim, scale, init)


@njit(inline="always")
def _nm_seg(nv, out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag,
            mtag):  # pragma: no cover - compiled
    if nv == 4:
        nm_row4(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag)
    elif nv == 3:
        nm_row3(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag)
    elif nv == 2:
        nm_row2(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag)
    else:
        nm_row1(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, ntag, mtag)


# The 2:4 names of earlier versions: 2:4 is nm_row with n = 2, m = 4 (one generator serves every n:m).
_T2, _T4 = (0, 0), (0, 0, 0, 0)


@njit(inline="always")
def _nm24_seg(nv, out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init):  # pragma: no cover
    _nm_seg(nv, out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, _T2, _T4)


def _nm24_row_alias(row):
    @njit(inline="always")
    def nm24_row(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init):  # pragma: no cover
        row(out, o_off, X, ldx, x_off, data, d_off, meta, m_off, nvals, scale, init, _T2, _T4)

    return nm24_row


nm24_row1, nm24_row2, nm24_row3, nm24_row4 = (_nm24_row_alias(r) for r in _nm_row[1:])


@njit(inline="always")
def _bsr_seg(R, nv, out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0,
             init):  # pragma: no cover - compiled
    if R == 4:
        if nv == 4:
            bsr_strip4_4(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        elif nv == 3:
            bsr_strip4_3(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        elif nv == 2:
            bsr_strip4_2(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        else:
            bsr_strip4_1(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
    elif R == 2:
        if nv == 4:
            bsr_strip2_4(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        elif nv == 3:
            bsr_strip2_3(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        elif nv == 2:
            bsr_strip2_2(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        else:
            bsr_strip2_1(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
    else:
        if nv == 4:
            bsr_strip1_4(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        elif nv == 3:
            bsr_strip1_3(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        elif nv == 2:
            bsr_strip1_2(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)
        else:
            bsr_strip1_1(out, o_off, ldo, X, ldx, x_off, idx, data, scales, p0, p1, r, c, rr0, init)


# ================================================================================================
# CSR.  X (cols, Bp) and out (rows, Bp) are C-contiguous, Bp a multiple of 16, both 64-byte aligned (the
# wrapper pads and aligns them); ``bounds`` splits the rows into chunks of about equal work (stored values +
# a per-row cost), which the threads take from a shared queue (``_fetch_add``).
# ================================================================================================
@njit(inline="always")
def _csr_chunk(r0, r1, cur, indptr, indices, data, scales, X, P, out):  # pragma: no cover - compiled
    B = X.shape[1]
    K = X.shape[0]
    has_scales = scales.shape[0] > 0
    for b0 in range(0, B, 64):
        nv = min(4, (B - b0) // 16)
        for i in range(r0, r1):
            cur[i - r0] = indptr[i]
        init = 1
        for k1 in range(P, K + P, P):
            for i in range(r0, r1):
                s = scales[i] if has_scales else np.float32(1.0)
                p = cur[i - r0]
                n = indptr[i + 1] - p
                cur[i - r0] = p + _csr_seg(nv, out, i * B + b0, X, B, b0, indices, p, data, p, n, k1, s, init)
            init = 0


@njit(parallel=True, cache=True)
def csr_mm(indptr, indices, data, scales, X, P, bounds, workers, out):  # pragma: no cover - compiled
    """out[i, :] = sum_p v_p * X[indices[p], :] over the stored entries of row i (float32 accumulation).

    Cache blocking: a chunk of rows (``bounds``) at a time; the reduction dimension is walked in panels of P
    rows of X (sized to stay in L1), each row resuming at its cursor; in each panel a row's register tile
    (``csr_row``) starts from the stored partial sums.  ``workers`` threads take chunks from a shared queue.
    The summation order of every element depends only on P (chosen from the shapes), never on the threads."""
    nch = bounds.shape[0] - 1
    rmax = 1
    for ch in range(nch):
        rmax = max(rmax, bounds[ch + 1] - bounds[ch])
    queue = np.zeros(1, np.int64)
    for _w in prange(workers):
        cur = np.empty(rmax, np.int64)
        ch = _fetch_add(queue, 0)
        while ch < nch:
            _csr_chunk(bounds[ch], bounds[ch + 1], cur, indptr, indices, data, scales, X, P, out)
            ch = _fetch_add(queue, 0)


@njit(parallel=True, fastmath=True, cache=True)
def csr_mv(indptr, indices, data, scales, x, out):  # pragma: no cover - compiled
    rows = indptr.shape[0] - 1
    has_scales = scales.shape[0] > 0
    for i in prange(rows):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        p = indptr[i]
        e = indptr[i + 1]
        while p + 2 <= e:
            a0 += _f32(data[p]) * x[indices[p]]
            a1 += _f32(data[p + 1]) * x[indices[p + 1]]
            p += 2
        if p < e:
            a0 += _f32(data[p]) * x[indices[p]]
        out[i] = (a0 + a1) * (scales[i] if has_scales else np.float32(1.0))


@njit(parallel=True, cache=True)
def csr_mm_int8(indptr, indices, data, w_scales, Xq, x_scales, out):  # pragma: no cover - compiled
    """INT8 x INT8: exact int32 sums per (row, column), then out = float32(acc) * (w_scale[i] * x_scale[b])."""
    rows = indptr.shape[0] - 1
    B = Xq.shape[1]
    nchunks = min(rows, 64)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        acc = np.empty(B, np.int32)
        for i in range(r0, r1):
            for b in range(B):
                acc[b] = 0
            for p in range(indptr[i], indptr[i + 1]):
                xo = indices[p]
                v = np.int32(data[p])
                for b in range(B):
                    acc[b] += v * np.int32(Xq[xo, b])
            ws = w_scales[i]
            for b in range(B):
                out[i, b] = np.float32(acc[b]) * (ws * x_scales[b])


# ================================================================================================
# BSR (values flat: block p, row rr, column k at (p * r + rr) * c + k); same X / out conventions as csr_mm.
# ================================================================================================
@njit(inline="always")
def _bsr_block_row(I, indptr, indices, data, scales, r, c, X, G, out):  # pragma: no cover - compiled
    B = X.shape[1]
    p0 = indptr[I]
    p1 = indptr[I + 1]
    for b0 in range(0, B, 64):
        nv = min(4, (B - b0) // 16)
        g0 = p0
        init = 1
        while True:
            g1 = min(p1, g0 + G)
            rr = 0
            while rr + 4 <= r:
                _bsr_seg(4, nv, out, (I * r + rr) * B + b0, B, X, B, b0, indices, data, scales, g0, g1, r, c, rr,
                         init)
                rr += 4
            if rr + 2 <= r:
                _bsr_seg(2, nv, out, (I * r + rr) * B + b0, B, X, B, b0, indices, data, scales, g0, g1, r, c, rr,
                         init)
                rr += 2
            if rr < r:
                _bsr_seg(1, nv, out, (I * r + rr) * B + b0, B, X, B, b0, indices, data, scales, g0, g1, r, c, rr,
                         init)
            init = 0
            g0 = g1
            if g0 >= p1:
                break


@njit(parallel=True, cache=True)
def bsr_mm(indptr, indices, data, scales, r, c, X, G, bounds, workers, out):  # pragma: no cover - compiled
    """Each block row: strips of 4 (then 2, 1) output rows x 64 columns in registers (``bsr_strip``) take the
    stored blocks in groups of G (a group's X rows stay in L1 while every strip of the block row passes over
    them; between groups a strip's partial sums go through the output rows).  Chunks of block rows
    (``bounds``) come from a shared queue.  Fixed order: blocks in storage order, columns of a block in order."""
    nch = bounds.shape[0] - 1
    queue = np.zeros(1, np.int64)
    for _w in prange(workers):
        ch = _fetch_add(queue, 0)
        while ch < nch:
            for I in range(bounds[ch], bounds[ch + 1]):
                _bsr_block_row(I, indptr, indices, data, scales, r, c, X, G, out)
            ch = _fetch_add(queue, 0)


@njit(parallel=True, fastmath=True, cache=True)
def bsr_mv(indptr, indices, data, scales, r, c, x, out):  # pragma: no cover - compiled
    nbr = indptr.shape[0] - 1
    has_scales = scales.shape[0] > 0
    for I in prange(nbr):
        for rr in range(r):
            acc = np.float32(0.0)
            for p in range(indptr[I], indptr[I + 1]):
                j0 = indices[p] * c
                q0 = (p * r + rr) * c
                part = np.float32(0.0)
                for k in range(c):
                    part += _f32(data[q0 + k]) * x[j0 + k]
                acc += part * (scales[p] if has_scales else np.float32(1.0))
            out[I * r + rr] = acc


@njit(parallel=True, cache=True)
def bsr_mm_int8(indptr, indices, data, w_scales, r, c, Xq, x_scales, out):  # pragma: no cover - compiled
    """Per stored block: exact int32 block product, then out += float32(acc) * (block_scale * x_scale[b])."""
    nbr = indptr.shape[0] - 1
    B = Xq.shape[1]
    for I in prange(nbr):
        acc = np.empty(r * B, np.int32)
        for rr in range(I * r, I * r + r):
            for b in range(B):
                out[rr, b] = 0.0
        for p in range(indptr[I], indptr[I + 1]):
            jb = indices[p] * c
            for q in range(r * B):
                acc[q] = 0
            for rr in range(r):
                q0 = (p * r + rr) * c
                for k in range(c):
                    v = np.int32(data[q0 + k])
                    xo = jb + k
                    for b in range(B):
                        acc[rr * B + b] += v * np.int32(Xq[xo, b])
            ws = w_scales[p]
            for rr in range(r):
                o0 = I * r + rr
                for b in range(B):
                    out[o0, b] += np.float32(acc[rr * B + b]) * (ws * x_scales[b])


# ================================================================================================
# N:M.  Float products with m <= 256 and an unroll step of at most 64 values (every n:m with m <= 16, SpMV
# included) run ``nm_mm_tiled`` (above).  The kernels here serve the rest and the INT8 x INT8 path: each row's
# columns are decoded from its metadata bit stream into a scratch buffer owned by the thread, then the same
# axpy loop as CSR.
# ================================================================================================
@njit(fastmath=True, inline="always")
def _nm_decode(meta, row_off, nmeta, t0, t1, n, m, bits, cols):  # pragma: no cover - compiled
    """cols[t - t0] = (t // n) * m + position of kept value t, for t in [t0, t1) with t0 a multiple of n
    (little-endian bit stream, ``bits`` per value)."""
    mask = (1 << bits) - 1
    g0 = t0 // n
    if bits == 0:
        for t in range(t0, t1):
            cols[t - t0] = (t // n) * m
        return
    if 8 % bits == 0:  # 1, 2, 4 or 8 bits: no value straddles a byte (2:4, 1:4, N:16 ...)
        for g in range(g0, (t1 + n - 1) // n):
            base = g * m
            for q in range(n):
                t = g * n + q
                if t < t1:
                    bp = t * bits
                    cols[t - t0] = base + ((np.int32(meta[row_off + (bp >> 3)]) >> (bp & 7)) & mask)
        return
    q = 0
    base = g0 * m
    bitpos = t0 * bits
    for t in range(t0, t1):
        byte = bitpos >> 3
        sh = bitpos & 7
        w = np.int32(meta[row_off + byte]) >> sh
        if sh + bits > 8 and byte + 1 < nmeta:
            w = w | (np.int32(meta[row_off + byte + 1]) << (8 - sh))
        cols[t - t0] = base + (w & mask)
        bitpos += bits
        q += 1
        if q == n:
            q = 0
            base += m


@njit(fastmath=True)
def _nm_decode_row(meta, row_off, nmeta, kr, n, m, bits, cols):  # pragma: no cover - compiled
    _nm_decode(meta, row_off, nmeta, 0, kr, n, m, bits, cols)


@njit(parallel=True, cache=True)
def nm_mm(data, meta, nmeta, kr, n, m, bits, scales, X, P, bounds, workers, out):  # pragma: no cover - compiled
    """General N:M, same blocking as csr_mm (P a multiple of m, so a panel holds exactly P/m*n kept values of
    each row).  The columns of one (row, panel) are decoded right before use into a small thread-owned buffer,
    then the CSR register micro-kernel runs over them."""
    B = X.shape[1]
    K = X.shape[0]
    has_scales = scales.shape[0] > 0
    per = P // m * n
    nch = bounds.shape[0] - 1
    queue = np.zeros(1, np.int64)
    for _w in prange(workers):
        cols = np.empty(max(per, 1), np.int32)
        ch = _fetch_add(queue, 0)
        while ch < nch:
            r0 = bounds[ch]
            r1 = bounds[ch + 1]
            for b0 in range(0, B, 64):
                nv = min(4, (B - b0) // 16)
                init = 1
                for k0 in range(0, K, P):
                    t0 = k0 // m * n
                    t1 = min(kr, t0 + per)
                    for i in range(r0, r1):
                        # inlined at compile time (a call taking the arrays would cost reference counting)
                        _nm_decode(meta, i * nmeta, nmeta, t0, t1, n, m, bits, cols)
                        s = scales[i] if has_scales else np.float32(1.0)
                        _csr_seg(nv, out, i * B + b0, X, B, b0, cols, 0, data, i * kr + t0, t1 - t0, K, s, init)
                    init = 0
            ch = _fetch_add(queue, 0)


@njit(parallel=True, cache=True)
def nm_mm_tiled(data, meta, bits, scales, X, P, bounds, workers, out, ntag, mtag):  # pragma: no cover - compiled
    """N:M with n = len(ntag), m = len(mtag) fixed at compile time: data (rows, kr), meta (rows, nmeta); the
    register micro-kernel ``nm_row`` decodes the positions beside its multiply-adds.  Panels of P rows of X, P a
    multiple of ``nm_period(n, m) // n * m`` (so every panel's segment starts on a metadata byte); chunks of
    rows (``bounds``) from a shared queue, as in csr_mm."""
    B = X.shape[1]
    K = X.shape[0]
    kr = data.shape[1]
    nmeta = meta.shape[1]
    n = len(ntag)
    m = len(mtag)
    has_scales = scales.shape[0] > 0
    nch = bounds.shape[0] - 1
    queue = np.zeros(1, np.int64)
    for _w in prange(workers):
        ch = _fetch_add(queue, 0)
        while ch < nch:
            r0 = bounds[ch]
            r1 = bounds[ch + 1]
            for b0 in range(0, B, 64):
                nv = min(4, (B - b0) // 16)
                init = 1
                for k0 in range(0, K, P):
                    t0 = k0 // m * n
                    t1 = min(kr, t0 + P // m * n)
                    for i in range(r0, r1):
                        s = scales[i] if has_scales else np.float32(1.0)
                        _nm_seg(nv, out, i * B + b0, X, B, k0 * B + b0, data, i * kr + t0, meta,
                                i * nmeta + (t0 * bits) // 8, t1 - t0, s, init, ntag, mtag)
                    init = 0
            ch = _fetch_add(queue, 0)


def nm24_mm(data, meta, scales, X, P, bounds, workers, out):
    """2:4 (the name of earlier versions): ``nm_mm_tiled`` with n = 2, m = 4; P is rounded up to the 16 columns
    of one unrolled step."""
    nm_mm_tiled(data, meta, 2, scales, X, -(-P // 16) * 16, bounds, workers, out, _T2, _T4)


@njit(parallel=True, fastmath=True, cache=True)
def nm_mv(data, meta, nmeta, kr, n, m, bits, scales, x, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    has_scales = scales.shape[0] > 0
    nchunks = min(rows, 256)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        cols = np.empty(kr, np.int64)
        for i in range(r0, r1):
            _nm_decode_row(meta, i * nmeta, nmeta, kr, n, m, bits, cols)
            voff = i * kr
            acc = np.float32(0.0)
            for t in range(kr):
                acc += _f32(data[voff + t]) * x[cols[t]]
            out[i] = acc * (scales[i] if has_scales else np.float32(1.0))


@njit(parallel=True, cache=True)
def nm_mm_int8(data, meta, nmeta, kr, n, m, bits, w_scales, Xq, x_scales, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    B = Xq.shape[1]
    nchunks = min(rows, 64)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        acc = np.empty(B, np.int32)
        cols = np.empty(kr, np.int64)
        for i in range(r0, r1):
            _nm_decode_row(meta, i * nmeta, nmeta, kr, n, m, bits, cols)
            for b in range(B):
                acc[b] = 0
            voff = i * kr
            for t in range(kr):
                xo = cols[t]
                v = np.int32(data[voff + t])
                for b in range(B):
                    acc[b] += v * np.int32(Xq[xo, b])
            ws = w_scales[i]
            for b in range(B):
                out[i, b] = np.float32(acc[b]) * (ws * x_scales[b])


# ================================================================================================
# activation sparsity: GEMV that skips zero entries of x
# ================================================================================================
@njit(cache=True)
def nonzero_entries(x, idx, val):  # pragma: no cover - compiled
    """Compress x: idx/val get the nonzero positions/values in increasing order; returns their count."""
    cnt = 0
    for j in range(x.shape[0]):
        v = x[j]
        if v != 0.0:
            idx[cnt] = j
            val[cnt] = v
            cnt += 1
    return cnt


@njit(parallel=True, fastmath=True, cache=True)
def gemv_skip_out_in(w, idx, val, cnt, out):  # pragma: no cover - compiled
    """w (out, K): y[i] = sum over nonzero x_j of w[i, j] * x_j (row-wise gathered dot product)."""
    rows = out.shape[0]
    for i in prange(rows):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        t = 0
        while t + 2 <= cnt:
            a0 += w[i, idx[t]] * val[t]
            a1 += w[i, idx[t + 1]] * val[t + 1]
            t += 2
        if t < cnt:
            a0 += w[i, idx[t]] * val[t]
        out[i] = a0 + a1


@njit(parallel=True, fastmath=True, cache=True)
def gemv_skip_in_out(wt, idx, val, cnt, out):  # pragma: no cover - compiled
    """wt (K, N) = W.T: y = sum over nonzero x_j of x_j * wt[j, :] (column-oriented; rows of wt with
    x_j == 0 are never read).  Each parallel chunk owns a slice of y, so there is no scatter race."""
    N = wt.shape[1]
    nchunks = max(1, min(64, N // 256))
    for ch in prange(nchunks):
        o0 = ch * N // nchunks
        o1 = (ch + 1) * N // nchunks
        for b in range(o0, o1):
            out[b] = 0.0
        t = 0
        while t + 4 <= cnt:
            r0 = idx[t]
            r1 = idx[t + 1]
            r2 = idx[t + 2]
            r3 = idx[t + 3]
            v0 = val[t]
            v1 = val[t + 1]
            v2 = val[t + 2]
            v3 = val[t + 3]
            for b in range(o0, o1):
                out[b] += (v0 * wt[r0, b] + v1 * wt[r1, b]) + (v2 * wt[r2, b] + v3 * wt[r3, b])
            t += 4
        while t < cnt:
            r0 = idx[t]
            v0 = val[t]
            for b in range(o0, o1):
                out[b] += v0 * wt[r0, b]
            t += 1

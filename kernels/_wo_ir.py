"""Weight-only INT4 micro-kernels in LLVM IR (zmm registers; used only when the CPU has AVX-512).

Numba's vectorizer stops at 256-bit vectors on this CPU and cannot keep a tile of accumulators in registers
across a runtime loop, so the inner loops of the weight-only INT4 GEMV and of the fused batched W4A16 GEMM are
written here directly in IR (``numba.extending.intrinsic`` + ``llvmlite.ir``, as in :mod:`._vnni`).

Nibble decoding (both kernels): 16 weight bytes are zero-extended to 16 int32 lanes; ``vpermps``
(``llvm.x86.avx512.permvar.sf.512``) looks up the low nibble in a 16-entry float table (it reads only the
low 4 bits of each index lane, so no mask is needed), a 4-bit right shift and a second lookup give the high
nibble.  The bytes are the offset-binary nibbles of ``PackedWeights`` (``u = v + 8`` in [0, 15]), the table
holds ``0.0 .. 15.0``: exact, and the ``-(zero_point + 8)`` term is applied per group by the caller.  16 bytes
hold the weights ``2i`` (low nibbles, ``xe``) and ``2i + 1`` (high nibbles, ``xo``) of 16 consecutive byte
positions ``i``: that is the *chunk order* of 32 consecutive inputs (16 even, then 16 odd) used below.

All kernels trust their inputs: the callers in :mod:`.gemm` check shapes, dtypes and that every 16-byte load
stays inside the packed row (``bytes per row % 16 == 0``).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_F32 = ir.FloatType()
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VF = ir.VectorType(_F32, 16)
_VI = ir.VectorType(_I32, 16)
_VB = ir.VectorType(_I8, 16)
_ZERO = ir.Constant(_VF, [0.0] * 16)
_TABLE = ir.Constant(_VF, [float(u) for u in range(16)])
_TABLE_SIGNED = ir.Constant(_VF, [float(u - 8) for u in range(16)])
_FOUR = ir.Constant(_VI, [4] * 16)
_SPLAT0 = ir.Constant(_VI, [0] * 16)


class _Em:
    """IR helpers bound to one builder and the intrinsic's arguments."""

    def __init__(self, context, builder, signature, args):
        self.c, self.b, self.st, self.args = context, builder, signature.args, args
        mod = builder.module
        self.fma_fn = cgutils.get_or_insert_function(mod, ir.FunctionType(_VF, [_VF, _VF, _VF]), "llvm.fma.v16f32")
        self.perm_fn = cgutils.get_or_insert_function(mod, ir.FunctionType(_VF, [_VF, _VI]),
                                                      "llvm.x86.avx512.permvar.sf.512")
        self.pf_fn = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")

    def i64(self, k):
        return self.c.cast(self.b, self.args[k], self.st[k], types.int64)

    def ptr(self, k, elem):
        ary = self.c.make_array(self.st[k])(self.c, self.b, self.args[k])
        return self.b.bitcast(ary.data, elem.as_pointer())

    @staticmethod
    def k(v):
        return ir.Constant(_I64, v)

    def fma(self, a, x, acc):
        return self.b.call(self.fma_fn, [a, x, acc])

    def splat(self, s):
        b = self.b
        v = b.insert_element(ir.Constant(_VF, ir.Undefined), s, ir.Constant(_I32, 0))
        return b.shuffle_vector(v, ir.Constant(_VF, ir.Undefined), _SPLAT0)

    def vload(self, fptr, off, align=4):
        return self.b.load(self.b.bitcast(self.b.gep(fptr, [off]), _VF.as_pointer()), align=align)

    def vstore(self, val, fptr, off, align=4):
        self.b.store(val, self.b.bitcast(self.b.gep(fptr, [off]), _VF.as_pointer()), align=align)

    def bytes16(self, ptr, off):
        """The 16 bytes at ptr + off as ``<16 x i8>`` (unaligned)."""
        return self.b.load(self.b.bitcast(self.b.gep(ptr, [off]), _VB.as_pointer()), align=1)

    def nibbles(self, qptr, off, table=_TABLE):
        """(low, high) nibbles of the 16 bytes at qptr + off looked up in ``table`` (0.0 .. 15.0 by default)."""
        b = self.b
        q = b.zext(self.bytes16(qptr, off), _VI)
        lo = b.call(self.perm_fn, [table, q])
        hi = b.call(self.perm_fn, [table, b.lshr(q, _FOUR)])
        return lo, hi

    def prefetch(self, i8ptr, off, locality=3):
        self.b.call(self.pf_fn, [self.b.gep(i8ptr, [off]), ir.Constant(_I32, 0), ir.Constant(_I32, locality),
                                 ir.Constant(_I32, 1)])

    def store_sums(self, vecs, optr):
        """``optr[r]`` = the horizontal sum of ``vecs[r]`` (one float per row)."""
        for r, v in enumerate(vecs):
            self.b.store(self.hsum(v), self.b.gep(optr, [self.k(r)]), align=4)

    def store_token_sums(self, vecs, optr, ldo, rows, tokens):
        """``optr[t*ldo + r]`` = the horizontal sum of ``vecs[r*tokens + t]`` (``ldo``: an i64 value)."""
        b = self.b
        for r in range(rows):
            for t in range(tokens):
                o = b.add(b.mul(ldo, self.k(t)), self.k(r))
                b.store(self.hsum(vecs[r * tokens + t]), b.gep(optr, [o]), align=4)

    def hsum(self, v):
        b = self.b
        width = 16
        while width > 1:
            half = width // 2
            lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
            hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(half, width))))
            v = b.fadd(lo, hi)
            width = half
        return b.extract_element(v, ir.Constant(_I32, 0))


class _Loop:
    """A counted loop ``for i in range(start, stop, step)`` with loop-carried values (phis)."""

    def __init__(self, b, name, start, stop, step, carried):
        self.b, self.step = b, step
        self.pre = b.basic_block
        self.head = b.append_basic_block(f"{name}_head")
        self.body = b.append_basic_block(f"{name}_body")
        self.exit = b.append_basic_block(f"{name}_exit")
        b.branch(self.head)
        b.position_at_end(self.head)
        self.i = b.phi(_I64)
        self.i.add_incoming(start, self.pre)
        self.vals = []
        for v in carried:
            p = b.phi(v.type)
            p.add_incoming(v, self.pre)
            self.vals.append(p)
        b.cbranch(b.icmp_signed("<", self.i, stop), self.body, self.exit)
        b.position_at_end(self.body)

    def close(self, new_vals):
        b = self.b
        nxt = b.add(self.i, ir.Constant(_I64, self.step))
        end = b.basic_block
        b.branch(self.head)
        self.i.add_incoming(nxt, end)
        for p, v in zip(self.vals, new_vals):
            p.add_incoming(v, end)
        b.position_at_end(self.exit)
        return self.vals


def make_int4_rows(rows: int, signed: bool = False, one_acc: bool = False):
    """An intrinsic ``f(q, q_off, nb, xe, xo, scale, s_off, ngroups, gb, pf, out, out_off)`` (INT4 GEMV rows).

    For ``r < rows``: ``out[out_off + r] = sum_g scale[s_off + r*ngroups + g] * sum_{i in group g}
    (xe[i] * lo(q[q_off + r*nb + i]) + xo[i] * hi(...))`` with groups of ``gb`` bytes (``gb % 16 == 0``,
    ``ngroups * gb == nb``).  The group sums stay vectors: ``tot = fma(splat(scale), group_acc, tot)``, one
    horizontal sum per row; the x vectors of a 16-byte step are loaded once for all ``rows`` rows.  ``pf``
    (bytes, 0: none): each row's line ``pf`` bytes ahead is prefetched into L2 once per group.  ``signed``: the
    nibbles are looked up as ``u - 8`` (the weight values themselves) instead of ``u``.  ``one_acc``: one
    accumulator per row and group (both FMAs of a step chained) instead of two.
    """
    table = _TABLE_SIGNED if signed else _TABLE

    @intrinsic
    def int4_rows(typingctx, q, q_off, nb, xe, xo, scale, s_off, ngroups, gb, pf, out, out_off):
        if not all(isinstance(t, types.Integer) for t in (q_off, nb, s_off, ngroups, gb, pf, out_off)):
            return None
        sig = types.void(q, q_off, nb, xe, xo, scale, s_off, ngroups, gb, pf, out, out_off)

        def codegen(context, builder, signature, args):
            e = _Em(context, builder, signature, args)
            b = builder
            q_off_v, nb_v, s_off_v, ng_v, gb_v, pf_v, o_off_v = (e.i64(i) for i in (1, 2, 6, 7, 8, 9, 11))
            qp = b.gep(e.ptr(0, _I8), [q_off_v])
            xep, xop = e.ptr(3, _F32), e.ptr(4, _F32)
            sp = b.gep(e.ptr(5, _F32), [s_off_v])
            op = b.gep(e.ptr(10, _F32), [o_off_v])
            rowq = [b.gep(qp, [b.mul(nb_v, e.k(r))]) for r in range(rows)]
            rows_s = [b.gep(sp, [b.mul(ng_v, e.k(r))]) for r in range(rows)]
            do_pf = b.icmp_signed("!=", pf_v, e.k(0))

            gl = _Loop(b, "i4g", e.k(0), ng_v, 1, [_ZERO] * rows)
            g = gl.i
            gstart = b.mul(g, gb_v)
            with b.if_then(do_pf):
                for r in range(rows):  # into L2 (prefetcht1): 5-9% faster than into L1 (cold 4096^2, 2 threads)
                    e.prefetch(rowq[r], b.add(gstart, pf_v), locality=2)
            na = 1 if one_acc else 2
            sl = _Loop(b, "i4s", gstart, b.add(gstart, gb_v), 16, [_ZERO] * (na * rows))
            i = sl.i
            xv_e = e.vload(xep, i)
            xv_o = e.vload(xop, i)
            acc = list(sl.vals)
            for r in range(rows):
                lo, hi = e.nibbles(rowq[r], i, table)
                if one_acc:
                    acc[r] = e.fma(xv_o, hi, e.fma(xv_e, lo, acc[r]))
                else:
                    acc[2 * r] = e.fma(xv_e, lo, acc[2 * r])
                    acc[2 * r + 1] = e.fma(xv_o, hi, acc[2 * r + 1])
            accs = sl.close(acc)
            tots = []
            for r in range(rows):
                s = b.load(b.gep(rows_s[r], [g]), align=4)
                a = accs[r] if one_acc else b.fadd(accs[2 * r], accs[2 * r + 1])
                tots.append(e.fma(e.splat(s), a, gl.vals[r]))
            e.store_sums(gl.close(tots), op)
            return context.get_dummy_value()

        return sig, codegen

    int4_rows.__name__ = f"int4_rows_{rows}"
    return int4_rows


def make_dequant4_panel(rows: int):
    """An intrinsic ``f(q, q_off, nb, b0, b1, gb, scale, zp8, s_off, ngroups, buf, ldb)``: dequantize bytes
    ``[b0, b1)`` of ``rows`` consecutive INT4 rows into a float32 panel in chunk order.

    ``buf[r*ldb + 2*(i - b0) + h]`` for byte ``i`` (16-byte steps; ``h`` 0: the 16 low nibbles of the step,
    1: the 16 high nibbles, i.e. ``buf`` row r holds 32 inputs per step in chunk order) =
    ``(nibble - zp8[g]) * scale[g]`` of row ``r``, group ``g = i // gb``.  ``b0``, ``b1`` and ``gb`` are multiples
    of 16; scale/zp8 rows are ``s_off + r*ngroups``."""

    @intrinsic
    def deq(typingctx, q, q_off, nb, b0, b1, gb, scale, zp8, s_off, ngroups, buf, ldb):
        if not all(isinstance(t, types.Integer) for t in (q_off, nb, b0, b1, gb, s_off, ngroups, ldb)):
            return None
        sig = types.void(q, q_off, nb, b0, b1, gb, scale, zp8, s_off, ngroups, buf, ldb)

        def codegen(context, builder, signature, args):
            e = _Em(context, builder, signature, args)
            b = builder
            q_off_v, nb_v, b0_v, b1_v, gb_v, s_off_v, ng_v, ldb_v = (e.i64(i) for i in (1, 2, 3, 4, 5, 8, 9, 11))
            qp = b.gep(e.ptr(0, _I8), [q_off_v])
            sp = b.gep(e.ptr(6, _F32), [s_off_v])
            zp = b.gep(e.ptr(7, _F32), [s_off_v])
            bp = e.ptr(10, _F32)
            # groups overlapping [b0, b1): g0 = b0 // gb .. (b1 - 1) // gb
            g0 = b.sdiv(b0_v, gb_v)
            g1 = b.add(b.sdiv(b.sub(b1_v, e.k(1)), gb_v), e.k(1))
            for r in range(rows):
                rq = b.gep(qp, [b.mul(nb_v, e.k(r))])
                rs = b.gep(sp, [b.mul(ng_v, e.k(r))])
                rz = b.gep(zp, [b.mul(ng_v, e.k(r))])
                rb = b.gep(bp, [b.sub(b.mul(ldb_v, e.k(r)), b.mul(b0_v, e.k(2)))])
                gl = _Loop(b, f"dq{r}g", g0, g1, 1, [])
                g = gl.i
                s = b.load(b.gep(rs, [g]), align=4)
                z = b.load(b.gep(rz, [g]), align=4)
                sv = e.splat(s)
                cv = e.splat(b.fmul(b.fneg(z), s))
                lo_b = b.mul(g, gb_v)
                hi_b = b.add(lo_b, gb_v)
                lo_b = b.select(b.icmp_signed("<", lo_b, b0_v), b0_v, lo_b)
                hi_b = b.select(b.icmp_signed(">", hi_b, b1_v), b1_v, hi_b)
                sl = _Loop(b, f"dq{r}s", lo_b, hi_b, 16, [])
                i = sl.i
                lo, hi = e.nibbles(rq, i)
                o = b.mul(i, e.k(2))
                e.vstore(e.fma(lo, sv, cv), rb, o)
                e.vstore(e.fma(hi, sv, cv), rb, b.add(o, e.k(16)))
                sl.close([])
                gl.close([])
            return context.get_dummy_value()

        return sig, codegen

    deq.__name__ = f"dequant4_panel_{rows}"
    return deq


def make_wo_tile(mr: int, nv: int):
    """An intrinsic ``f(w, w_off, ldw, xt, x_off, ldx, kc, c, c_off, ldc)``: the fused weight-only register tile.

    ``c[c_off + r*ldc + 16*v + l] += sum_{p < kc} w[w_off + r*ldw + p] * xt[x_off + p*ldx + 16*v + l]`` for
    ``r < mr`` output channels (rows of the dequantized weight panel ``w``) and ``16*nv`` tokens (columns of the
    transposed activations ``xt``); ``mr * nv`` zmm accumulators stay in registers for the whole ``kc`` loop,
    each weight is broadcast once per step and used for ``nv`` FMAs."""

    @intrinsic
    def tile(typingctx, w, w_off, ldw, xt, x_off, ldx, kc, c, c_off, ldc):
        if not all(isinstance(t, types.Integer) for t in (w_off, ldw, x_off, ldx, kc, c_off, ldc)):
            return None
        sig = types.void(w, w_off, ldw, xt, x_off, ldx, kc, c, c_off, ldc)

        def codegen(context, builder, signature, args):
            e = _Em(context, builder, signature, args)
            b = builder
            w_off_v, ldw_v, x_off_v, ldx_v, kc_v, c_off_v, ldc_v = (e.i64(i) for i in (1, 2, 4, 5, 6, 8, 9))
            wp = b.gep(e.ptr(0, _F32), [w_off_v])
            xp = b.gep(e.ptr(3, _F32), [x_off_v])
            cp = b.gep(e.ptr(7, _F32), [c_off_v])
            wrows = [b.gep(wp, [b.mul(ldw_v, e.k(r))]) for r in range(mr)]
            coffs = [[b.add(b.mul(ldc_v, e.k(r)), e.k(16 * v)) for v in range(nv)] for r in range(mr)]
            init = [e.vload(cp, coffs[r][v]) for r in range(mr) for v in range(nv)]
            lp = _Loop(b, "wot", e.k(0), kc_v, 1, init)
            p = lp.i
            xo = b.mul(p, ldx_v)
            xv = [e.vload(xp, b.add(xo, e.k(16 * v))) for v in range(nv)]
            acc = list(lp.vals)
            for r in range(mr):
                wb = e.splat(b.load(b.gep(wrows[r], [p]), align=4))
                for v in range(nv):
                    acc[r * nv + v] = e.fma(wb, xv[v], acc[r * nv + v])
            acc = lp.close(acc)
            for r in range(mr):
                for v in range(nv):
                    e.vstore(acc[r * nv + v], cp, coffs[r][v])
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"wo_tile_{mr}x{16 * nv}"
    return tile


_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
_NIB_MASK = ir.Constant(_VI, [0x0F0F0F0F] * 16)
_ZERO_I = ir.Constant(_VI, [0] * 16)
_F256 = ir.Constant(_VF, [256.0] * 16)


def make_int4_rows_a16(rows: int):
    """An intrinsic ``f(q, q_off, nb, xa, corr, sx, scale, s_off, ngroups, gb, pf, out, out_off)``: the INT4 GEMV of
    :func:`make_int4_rows` with 16-bit fixed-point activations, on the integer units (AVX-512 VNNI).

    The caller (:func:`memwall.kernels.gemm._a16_prep`) rounds each group of the token to ``v = h * 256 + l``
    (``|v| <= A16_QMAX``, ``h``, ``l`` int8, ``x ~ sx[g] * v``) and lays the parts out per 64-byte weight chunk ``c`` as
    ``xa[256c : 256c + 256] = [h of the even inputs | h of the odd | l of the even | l of the odd]`` (64 bytes each;
    byte ``j`` of a chunk holds inputs ``2(64c + j)`` (low nibble) and ``2(64c + j) + 1`` (high)).  Per row and
    chunk: one 64-byte load, the two nibble vectors (``and``, ``shift + and``; the offset-binary ``u`` in [0, 15])
    and four ``vpdpbusd`` (u8 nibbles x s8 parts) into two int32 accumulators; per group, ``d = 256 * acc_h +
    acc_l`` in float and ``tot += scale[r, g] * sx[g] * d``.  ``corr[32g : 32g + 32]`` starts ``acc_h`` and
    ``acc_l`` at ``-8 * sum h`` and ``-8 * sum l`` of group g (lane 0; the other lanes 0), so ``d`` is the dot
    product with the weights ``u - 8`` themselves.  Exact integer sums: ``|acc| < 2**31`` for groups below ~1M
    inputs, and the float conversion is exact below 2**24 (groups below ~8k inputs; float32 rounding beyond).
    ``gb % 64 == 0``; ``pf`` as in :func:`make_int4_rows`, per chunk."""

    @intrinsic
    def int4_rows_a16(typingctx, q, q_off, nb, xa, corr, sx, scale, s_off, ngroups, gb, pf, out, out_off):
        if not all(isinstance(t, types.Integer) for t in (q_off, nb, s_off, ngroups, gb, pf, out_off)):
            return None
        sig = types.void(q, q_off, nb, xa, corr, sx, scale, s_off, ngroups, gb, pf, out, out_off)

        def codegen(context, builder, signature, args):
            e = _Em(context, builder, signature, args)
            b = builder
            dot = cgutils.get_or_insert_function(b.module, ir.FunctionType(_VI, [_VI, _VI, _VI]), _VPDPBUSD)
            q_off_v, nb_v, s_off_v, ng_v, gb_v, pf_v, o_off_v = (e.i64(i) for i in (1, 2, 7, 8, 9, 10, 12))
            qp = b.gep(e.ptr(0, _I8), [q_off_v])
            xap = e.ptr(3, _I8)
            cp = e.ptr(4, _I32)
            sxp = e.ptr(5, _F32)
            sp = b.gep(e.ptr(6, _F32), [s_off_v])
            op = b.gep(e.ptr(11, _F32), [o_off_v])
            rowq = [b.gep(qp, [b.mul(nb_v, e.k(r))]) for r in range(rows)]
            rows_s = [b.gep(sp, [b.mul(ng_v, e.k(r))]) for r in range(rows)]
            do_pf = b.icmp_signed("!=", pf_v, e.k(0))

            def iload(ptr, off):
                return b.load(b.bitcast(b.gep(ptr, [off]), _VI.as_pointer()), align=1)

            gl = _Loop(b, "a16g", e.k(0), ng_v, 1, [_ZERO] * rows)
            g = gl.i
            gstart = b.mul(g, gb_v)
            c_h = b.load(b.bitcast(b.gep(cp, [b.mul(g, e.k(32))]), _VI.as_pointer()), align=4)
            c_l = b.load(b.bitcast(b.gep(cp, [b.add(b.mul(g, e.k(32)), e.k(16))]), _VI.as_pointer()), align=4)
            sl = _Loop(b, "a16c", gstart, b.add(gstart, gb_v), 64, [c_h] * rows + [c_l] * rows)
            i = sl.i
            with b.if_then(do_pf):
                for r in range(rows):  # into L2 as in make_int4_rows: +2.5% on average over L1 (10 interleaved runs)
                    e.prefetch(rowq[r], b.add(i, pf_v), locality=2)
            xo = b.mul(i, e.k(4))
            xeh, xoh, xel, xol = (iload(xap, b.add(xo, e.k(64 * s))) for s in range(4))
            acc = list(sl.vals)
            for r in range(rows):
                qv = iload(rowq[r], i)
                lo = b.and_(qv, _NIB_MASK)
                hi = b.and_(b.lshr(qv, _FOUR), _NIB_MASK)
                acc[r] = b.call(dot, [b.call(dot, [acc[r], lo, xeh]), hi, xoh])
                acc[rows + r] = b.call(dot, [b.call(dot, [acc[rows + r], lo, xel]), hi, xol])
            accs = sl.close(acc)
            sxg = b.load(b.gep(sxp, [g]), align=4)
            tots = []
            for r in range(rows):
                s = b.fmul(b.load(b.gep(rows_s[r], [g]), align=4), sxg)
                d = e.fma(b.sitofp(accs[r], _VF), _F256, b.sitofp(accs[rows + r], _VF))
                tots.append(e.fma(e.splat(s), d, gl.vals[r]))
            e.store_sums(gl.close(tots), op)
            return context.get_dummy_value()

        return sig, codegen

    int4_rows_a16.__name__ = f"int4_rows_a16_{rows}"
    return int4_rows_a16


def make_int4_rows_tokens(rows: int, tokens: int):
    """An intrinsic ``f(q, q_off, nb, xe, xo, ldx, scale, s_off, ngroups, gb, pf, out, out_off, ldo)``: the INT4
    GEMV of :func:`make_int4_rows` for ``tokens`` activation rows at once (few-token weight-only products).

    Each 16-byte step of a weight row is decoded once and used for every token:
    ``out[out_off + t*ldo + r] = sum_g scale[s_off + r*ngroups + g] * sum_{i in g} (xe[t*ldx + i] * lo + xo[t*ldx + i]
    * hi)`` for ``r < rows``, ``t < tokens`` (one vector accumulator per (row, token) and group, folded into a
    vector total with the broadcast group scale).  ``pf`` as in :func:`make_int4_rows` (into L2)."""

    @intrinsic
    def int4_rows_tok(typingctx, q, q_off, nb, xe, xo, ldx, scale, s_off, ngroups, gb, pf, out, out_off, ldo):
        if not all(isinstance(t, types.Integer) for t in (q_off, nb, ldx, s_off, ngroups, gb, pf, out_off, ldo)):
            return None
        sig = types.void(q, q_off, nb, xe, xo, ldx, scale, s_off, ngroups, gb, pf, out, out_off, ldo)

        def codegen(context, builder, signature, args):
            e = _Em(context, builder, signature, args)
            b = builder
            q_off_v, nb_v, ldx_v, s_off_v, ng_v, gb_v, pf_v, o_off_v, ldo_v = (
                e.i64(i) for i in (1, 2, 5, 7, 8, 9, 10, 12, 13))
            qp = b.gep(e.ptr(0, _I8), [q_off_v])
            xes = [b.gep(e.ptr(3, _F32), [b.mul(ldx_v, e.k(t))]) for t in range(tokens)]
            xos = [b.gep(e.ptr(4, _F32), [b.mul(ldx_v, e.k(t))]) for t in range(tokens)]
            sp = b.gep(e.ptr(6, _F32), [s_off_v])
            op = b.gep(e.ptr(11, _F32), [o_off_v])
            rowq = [b.gep(qp, [b.mul(nb_v, e.k(r))]) for r in range(rows)]
            rows_s = [b.gep(sp, [b.mul(ng_v, e.k(r))]) for r in range(rows)]
            do_pf = b.icmp_signed("!=", pf_v, e.k(0))
            nacc = rows * tokens
            gl = _Loop(b, "i4tg", e.k(0), ng_v, 1, [_ZERO] * nacc)
            g = gl.i
            gstart = b.mul(g, gb_v)
            with b.if_then(do_pf):
                for r in range(rows):
                    e.prefetch(rowq[r], b.add(gstart, pf_v), locality=2)
            sl = _Loop(b, "i4ts", gstart, b.add(gstart, gb_v), 16, [_ZERO] * nacc)
            i = sl.i
            acc = list(sl.vals)
            nibs = [e.nibbles(rowq[r], i) for r in range(rows)]
            for t in range(tokens):
                xv_e = e.vload(xes[t], i)
                xv_o = e.vload(xos[t], i)
                for r in range(rows):
                    a = e.fma(xv_e, nibs[r][0], acc[r * tokens + t])
                    acc[r * tokens + t] = e.fma(xv_o, nibs[r][1], a)
            accs = sl.close(acc)
            tots = []
            for r in range(rows):
                sv = e.splat(b.load(b.gep(rows_s[r], [g]), align=4))
                for t in range(tokens):
                    tots.append(e.fma(sv, accs[r * tokens + t], gl.vals[r * tokens + t]))
            e.store_token_sums(gl.close(tots), op, ldo_v, rows, tokens)
            return context.get_dummy_value()

        return sig, codegen

    int4_rows_tok.__name__ = f"int4_rows_{rows}x{tokens}tok"
    return int4_rows_tok


def make_int8_rows(rows: int, tokens: int = 1):
    """An intrinsic ``f(q, q_off, k, k16, x, ldx, pf, out, out_off, ldo)``: the weight-only INT8 GEMV's rows, for
    ``tokens`` activation rows at once.

    ``out[out_off + t*ldo + r] = sum_{i < k16} x[t*ldx + i] * q[q_off + r*k + i]`` for ``r < rows``, ``t < tokens``
    (``q`` int8, ``k`` bytes per row, ``k16 <= k`` a multiple of 16; the caller adds the tail ``[k16, k)``, the
    scale, zero point and bias).  Per 16-byte step and row: a sign-extending load (``vpmovsxbd``) and a
    conversion (``vcvtdq2ps``), then one FMA per token; the x vectors of a step are loaded once for all ``rows``
    rows.  ``pf`` (bytes, 0: none): each row's line ``pf`` bytes ahead is prefetched into L2 once per 64 bytes."""

    @intrinsic
    def int8_rows(typingctx, q, q_off, k, k16, x, ldx, pf, out, out_off, ldo):
        if not all(isinstance(t, types.Integer) for t in (q_off, k, k16, ldx, pf, out_off, ldo)):
            return None
        sig = types.void(q, q_off, k, k16, x, ldx, pf, out, out_off, ldo)

        def codegen(context, builder, signature, args):
            e = _Em(context, builder, signature, args)
            b = builder
            q_off_v, k_v, k16_v, ldx_v, pf_v, o_off_v, ldo_v = (e.i64(i) for i in (1, 2, 3, 5, 6, 8, 9))
            qp = b.gep(e.ptr(0, _I8), [q_off_v])
            xps = [b.gep(e.ptr(4, _F32), [b.mul(ldx_v, e.k(t))]) for t in range(tokens)]
            op = b.gep(e.ptr(7, _F32), [o_off_v])
            rowq = [b.gep(qp, [b.mul(k_v, e.k(r))]) for r in range(rows)]
            do_pf = b.icmp_signed("!=", pf_v, e.k(0))
            nacc = rows * tokens

            def step(i, acc):
                xv = [e.vload(xps[t], i) for t in range(tokens)]
                out_acc = list(acc)
                for r in range(rows):
                    wf = b.sitofp(b.sext(e.bytes16(rowq[r], i), _VI), _VF)
                    for t in range(tokens):
                        out_acc[r * tokens + t] = e.fma(xv[t], wf, acc[r * tokens + t])
                return out_acc

            k64 = b.mul(b.sdiv(k16_v, e.k(64)), e.k(64))
            cl = _Loop(b, "i8c", e.k(0), k64, 64, [_ZERO] * nacc)
            with b.if_then(do_pf):
                for r in range(rows):
                    e.prefetch(rowq[r], b.add(cl.i, pf_v), locality=2)
            acc = list(cl.vals)
            for s in range(4):
                acc = step(b.add(cl.i, e.k(16 * s)), acc)
            acc = cl.close(acc)
            tl = _Loop(b, "i8t", k64, k16_v, 16, acc)
            e.store_token_sums(tl.close(step(tl.i, list(tl.vals))), op, ldo_v, rows, tokens)
            return context.get_dummy_value()

        return sig, codegen

    int8_rows.__name__ = f"int8_rows_{rows}x{tokens}tok"
    return int8_rows

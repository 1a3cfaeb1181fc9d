"""AVX-512 VNNI micro-kernels emitted as LLVM IR through ``numba.extending.intrinsic``.

LLVM does not turn plain loops into ``vpdpbusd``, so the register-blocked INT8 micro-kernel of
:mod:`memwall.kernels.gemm` is written here directly in IR with ``llvmlite.ir``: ``MR`` rows x ``NV`` 16-lane
zmm column vectors of int32 accumulators live in registers for the whole K loop; each K step of 4 loads ``NV``
vectors of the packed B panel and broadcasts one 4-byte group of the packed A panel per row
(``llvm.x86.avx512.vpdpbusd.512``: u8 x s8 -> i32, four products summed per lane, wrapping add).

Layouts (all produced by the packing kernels of ``gemm``; the micro-kernel trusts them):

* packed A micro-panel, ``MR`` rows: ``[k4][MR][4]`` bytes, the A values offset by +128 (``a ^ 0x80``) so they are
  unsigned;
* packed B micro-panel, ``NR = 16 * NV`` columns: ``[k4][NR][4]`` signed bytes (column ``j`` of the panel, K
  values ``4*k4 .. 4*k4+3``);
* C: int32, row-major with leading dimension ``ldc`` (elements).

The +128 offset adds ``128 * sum_k b[k, j]`` to every output of column ``j``; the caller passes that
compensation (negated, as the initial accumulator) in ``init`` when ``first`` is true.  int32 addition wraps
modulo 2**32, so intermediate wrap-around cancels: the result is exact whenever the true sum fits int32 (the
caller checks the bound on K * max|a| * max|b|).

Nothing here is imported unless the CPU has AVX-512 VNNI (see :func:`memwall.kernels.cpu.has_avx512_vnni`).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_I8 = ir.IntType(8)
_V16 = ir.VectorType(_I32, 16)
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def _splat(builder, scalar):
    """Broadcast an i32 scalar to all 16 lanes (LLVM folds this into the {1to16} memory operand)."""
    undef = ir.Constant(_V16, ir.Undefined)
    vec = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, 16), [0] * 16)
    return builder.shuffle_vector(vec, undef, zeros)


def make_microkernel(mr: int, nv: int, a_rows: int | None = None):
    """An intrinsic ``mk(ap, a_off, bp, b_off, k4n, c, c_off, ldc, first, init, init_off)``.

    ``ap``/``bp``/``c``/``init`` are 1-D arrays (uint8 / int8 / int32 / int32); the offsets are element
    offsets; ``k4n`` the number of K groups of 4; when ``first`` != 0 the accumulators start from
    ``init[init_off : init_off + 16 * nv]`` (the same for every row), otherwise from the C tile.  The full
    ``mr x 16*nv`` tile is read/written: the caller handles edges.  ``a_rows`` (default ``mr``) is the row
    count of the packed A panel, so a narrower kernel can run over the first rows of a wider panel.
    """
    nr = 16 * nv
    a_rows = mr if a_rows is None else a_rows

    @intrinsic
    def mk(typingctx, ap, a_off, bp, b_off, k4n, c, c_off, ldc, first, init, init_off):
        ints = (a_off, b_off, k4n, c_off, ldc, first, init_off)
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(ap, a_off, bp, b_off, k4n, c, c_off, ldc, first, init, init_off)

        def codegen(context, builder, signature, args):
            (ap_v, a_off_v, bp_v, b_off_v, k4n_v, c_v, c_off_v, ldc_v, first_v, init_v, init_off_v) = args
            st = signature.args

            def i64(val, ty):
                return context.cast(builder, val, ty, types.int64)

            a_off_v, b_off_v, k4n_v = i64(a_off_v, st[1]), i64(b_off_v, st[3]), i64(k4n_v, st[4])
            c_off_v, ldc_v, init_off_v = i64(c_off_v, st[6]), i64(ldc_v, st[7]), i64(init_off_v, st[10])
            first_v = i64(first_v, st[8])

            a_data = builder.bitcast(context.make_array(st[0])(context, builder, ap_v).data, _I8.as_pointer())
            b_data = builder.bitcast(context.make_array(st[2])(context, builder, bp_v).data, _I8.as_pointer())
            c_data = builder.bitcast(context.make_array(st[5])(context, builder, c_v).data, _I32.as_pointer())
            i_data = builder.bitcast(context.make_array(st[9])(context, builder, init_v).data, _I32.as_pointer())
            a0 = builder.gep(a_data, [a_off_v])
            b0 = builder.gep(b_data, [b_off_v])
            c0 = builder.gep(c_data, [c_off_v])
            i0 = builder.gep(i_data, [init_off_v])
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), _VPDPBUSD)

            def vload(ptr_i32, elem_off):
                p = builder.gep(ptr_i32, [ir.Constant(_I64, elem_off)]) if isinstance(elem_off, int) else \
                    builder.gep(ptr_i32, [elem_off])
                return builder.load(builder.bitcast(p, _V16.as_pointer()), align=4)

            def vstore(val, ptr_i32, elem_off):
                p = builder.gep(ptr_i32, [elem_off])
                builder.store(val, builder.bitcast(p, _V16.as_pointer()), align=4)

            # --- initial accumulators: from init (first K block) or from C ---------------------------------
            entry_bb = builder.basic_block
            from_init_bb = builder.append_basic_block("mk_from_init")
            from_c_bb = builder.append_basic_block("mk_from_c")
            loop_pre_bb = builder.append_basic_block("mk_pre")
            header_bb = builder.append_basic_block("mk_header")
            body_bb = builder.append_basic_block("mk_body")
            exit_bb = builder.append_basic_block("mk_exit")
            del entry_bb
            is_first = builder.icmp_signed("!=", first_v, ir.Constant(_I64, 0))
            builder.cbranch(is_first, from_init_bb, from_c_bb)

            builder.position_at_end(from_init_bb)
            # the tile will only be written: fetch its lines for writing while the K loop runs
            pf = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")
            for r in range(mr):
                row_off = builder.mul(ldc_v, ir.Constant(_I64, r))
                for v in range(nv):
                    p = builder.bitcast(builder.gep(c0, [builder.add(row_off, ir.Constant(_I64, 16 * v))]),
                                        _I8.as_pointer())
                    builder.call(pf, [p, ir.Constant(_I32, 1), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            init_vals = [vload(i0, 16 * v) for v in range(nv)]
            init_acc = [[init_vals[v] for v in range(nv)] for _ in range(mr)]
            builder.branch(loop_pre_bb)

            builder.position_at_end(from_c_bb)
            c_acc = []
            for r in range(mr):
                row_off = builder.mul(ldc_v, ir.Constant(_I64, r))
                c_acc.append([vload(c0, builder.add(row_off, ir.Constant(_I64, 16 * v))) for v in range(nv)])
            builder.branch(loop_pre_bb)

            builder.position_at_end(loop_pre_bb)
            pre_acc = []
            for r in range(mr):
                row = []
                for v in range(nv):
                    phi = builder.phi(_V16)
                    phi.add_incoming(init_acc[r][v], from_init_bb)
                    phi.add_incoming(c_acc[r][v], from_c_bb)
                    row.append(phi)
                pre_acc.append(row)
            builder.branch(header_bb)

            # --- K loop -----------------------------------------------------------------------------------
            builder.position_at_end(header_bb)
            k_phi = builder.phi(_I64)
            k_phi.add_incoming(ir.Constant(_I64, 0), loop_pre_bb)
            acc_phi = []
            for r in range(mr):
                row = []
                for v in range(nv):
                    phi = builder.phi(_V16)
                    phi.add_incoming(pre_acc[r][v], loop_pre_bb)
                    row.append(phi)
                acc_phi.append(row)
            go = builder.icmp_signed("<", k_phi, k4n_v)
            builder.cbranch(go, body_bb, exit_bb)

            builder.position_at_end(body_bb)
            a_ptr = builder.bitcast(builder.gep(a0, [builder.mul(k_phi, ir.Constant(_I64, 4 * a_rows))]),
                                    _I32.as_pointer())
            b_ptr = builder.bitcast(builder.gep(b0, [builder.mul(k_phi, ir.Constant(_I64, 4 * nr))]), _I32.as_pointer())
            bvec = [vload(b_ptr, 16 * v) for v in range(nv)]
            new_acc = []
            for r in range(mr):
                a32 = builder.load(builder.gep(a_ptr, [ir.Constant(_I64, r)]), align=4)
                abc = _splat(builder, a32)
                new_acc.append([builder.call(fn, [acc_phi[r][v], abc, bvec[v]]) for v in range(nv)])
            k_next = builder.add(k_phi, ir.Constant(_I64, 1))
            body_end = builder.basic_block
            builder.branch(header_bb)
            k_phi.add_incoming(k_next, body_end)
            for r in range(mr):
                for v in range(nv):
                    acc_phi[r][v].add_incoming(new_acc[r][v], body_end)

            # --- store the tile ---------------------------------------------------------------------------
            builder.position_at_end(exit_bb)
            for r in range(mr):
                row_off = builder.mul(ldc_v, ir.Constant(_I64, r))
                for v in range(nv):
                    vstore(acc_phi[r][v], c0, builder.add(row_off, ir.Constant(_I64, 16 * v)))
            return context.get_dummy_value()

        return sig, codegen

    mk.__name__ = f"vnni_mk_{mr}x{nr}_a{a_rows}"
    return mk


_F32 = ir.FloatType()
_V16F = ir.VectorType(_F32, 16)
_V16B = ir.VectorType(_I8, 16)


@intrinsic
def int4_dot(typingctx, q, q_off, xe, xo, start, count):
    """``sum_{i < count} xe[start+i] * lo(q[q_off+i]) + xo[start+i] * hi(q[q_off+i])`` for offset-binary
    nibble bytes (lo = b & 15, hi = b >> 4), 16 bytes per step in zmm registers (explicit <16 x float> IR:
    Numba's auto-vectorizer stops at 256-bit vectors on this CPU).  ``count`` must be a multiple of 16."""
    if not all(isinstance(t, types.Integer) for t in (q_off, start, count)):
        return None
    sig = types.float32(q, q_off, xe, xo, start, count)

    def codegen(context, builder, signature, args):
        q_v, q_off_v, xe_v, xo_v, start_v, count_v = args
        st = signature.args
        q_off_v = context.cast(builder, q_off_v, st[1], types.int64)
        start_v = context.cast(builder, start_v, st[4], types.int64)
        count_v = context.cast(builder, count_v, st[5], types.int64)
        qd = builder.gep(builder.bitcast(context.make_array(st[0])(context, builder, q_v).data, _I8.as_pointer()),
                         [q_off_v])
        xed = builder.gep(builder.bitcast(context.make_array(st[2])(context, builder, xe_v).data,
                                          _F32.as_pointer()), [start_v])
        xod = builder.gep(builder.bitcast(context.make_array(st[3])(context, builder, xo_v).data,
                                          _F32.as_pointer()), [start_v])
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]),
                                             "llvm.fma.v16f32")
        pre = builder.basic_block
        header = builder.append_basic_block("i4_header")
        body = builder.append_basic_block("i4_body")
        done = builder.append_basic_block("i4_done")
        zero = ir.Constant(_V16F, [0.0] * 16)
        builder.branch(header)
        builder.position_at_end(header)
        i = builder.phi(_I64)
        a0 = builder.phi(_V16F)
        a1 = builder.phi(_V16F)
        i.add_incoming(ir.Constant(_I64, 0), pre)
        a0.add_incoming(zero, pre)
        a1.add_incoming(zero, pre)
        builder.cbranch(builder.icmp_signed("<", i, count_v), body, done)
        builder.position_at_end(body)
        b = builder.load(builder.bitcast(builder.gep(qd, [i]), _V16B.as_pointer()), align=1)
        b32 = builder.zext(b, _V16)
        lo = builder.uitofp(builder.and_(b32, ir.Constant(_V16, [15] * 16)), _V16F)
        hi = builder.uitofp(builder.lshr(b32, ir.Constant(_V16, [4] * 16)), _V16F)
        xev = builder.load(builder.bitcast(builder.gep(xed, [i]), _V16F.as_pointer()), align=4)
        xov = builder.load(builder.bitcast(builder.gep(xod, [i]), _V16F.as_pointer()), align=4)
        n0 = builder.call(fma, [xev, lo, a0])
        n1 = builder.call(fma, [xov, hi, a1])
        i_next = builder.add(i, ir.Constant(_I64, 16))
        end = builder.basic_block
        builder.branch(header)
        i.add_incoming(i_next, end)
        a0.add_incoming(n0, end)
        a1.add_incoming(n1, end)
        builder.position_at_end(done)
        acc = builder.fadd(a0, a1)
        # horizontal sum: halve 16 -> 8 -> 4 -> 2 -> 1
        width = 16
        while width > 1:
            half = width // 2
            lo_h = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
            hi_h = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(_I32, half), list(range(half, width))))
            acc = builder.fadd(lo_h, hi_h)
            width = half
        return builder.extract_element(acc, ir.Constant(_I32, 0))

    return sig, codegen


def _make_prefetch(locality: int, doc: str):
    @intrinsic
    def pf_intrinsic(typingctx, arr, off):
        if not isinstance(off, types.Integer):
            return None
        return types.void(arr, off), _prefetch_codegen(locality)

    pf_intrinsic.__doc__ = doc
    return pf_intrinsic


def _prefetch_codegen(locality: int):
    def codegen(context, builder, signature, args):
        arr_v, off_v = args
        st = signature.args
        off_v = context.cast(builder, off_v, st[1], types.int64)
        ary = context.make_array(st[0])(context, builder, arr_v)
        itemsize = context.get_abi_sizeof(context.get_data_type(st[0].dtype))
        p = builder.gep(builder.bitcast(ary.data, _I8.as_pointer()), [builder.mul(off_v, ir.Constant(_I64, itemsize))])
        pf = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")
        builder.call(pf, [p, ir.Constant(_I32, 0), ir.Constant(_I32, locality), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return codegen


prefetch = _make_prefetch(3, "Software prefetch (read, all cache levels: prefetcht0) of ``arr.ravel()[off]``.")
prefetch_l2 = _make_prefetch(2, "Software prefetch (read, L2 and below: prefetcht1) of ``arr.ravel()[off]``.")


@intrinsic
def store_nt16(typingctx, dst, dst_off, src, src_off):
    """Copy 16 four-byte elements ``src[src_off:src_off+16]`` to ``dst[dst_off:dst_off+16]`` with one
    non-temporal 64-byte store (no read-for-ownership of the destination line, no cache pollution).  The
    destination address must be 64-byte aligned (the caller checks); both arrays have 4-byte elements."""
    if not (isinstance(dst_off, types.Integer) and isinstance(src_off, types.Integer)):
        return None
    sig = types.void(dst, dst_off, src, src_off)

    def codegen(context, builder, signature, args):
        dst_v, dst_off_v, src_v, src_off_v = args
        st = signature.args
        dst_off_v = context.cast(builder, dst_off_v, st[1], types.int64)
        src_off_v = context.cast(builder, src_off_v, st[3], types.int64)
        dp = builder.bitcast(context.make_array(st[0])(context, builder, dst_v).data, _I32.as_pointer())
        sp = builder.bitcast(context.make_array(st[2])(context, builder, src_v).data, _I32.as_pointer())
        val = builder.load(builder.bitcast(builder.gep(sp, [src_off_v]), _V16.as_pointer()), align=4)
        store = builder.store(val, builder.bitcast(builder.gep(dp, [dst_off_v]), _V16.as_pointer()), align=64)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sfence(typingctx):
    """Order the preceding non-temporal stores before later stores (``sfence``)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen

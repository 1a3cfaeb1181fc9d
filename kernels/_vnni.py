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

"""Target-independent LLVM IR micro-kernel for the generic (no intrinsics) INT8 GEMM path.

The fallback path of :mod:`memwall.kernels.gemm` must run on any CPU, so it uses no ``llvm.x86.*`` call; it is
still written in IR (through ``numba.extending.intrinsic``) because Numba's auto-vectorizer neither register-
blocks a GEMM nor, on CPUs tuned to prefer 256-bit vectors, emits 512-bit code.  The product of int16 pairs,
``add(mul(sext even), mul(sext odd))`` on ``<32 x i16>`` -> ``<16 x i32>``, is the pattern LLVM's X86 backend
lowers to ``vpmaddwd`` (other targets get their own widening multiply-adds or plain vector code); the function
attribute ``"min-legal-vector-width"="512"`` keeps the 16-lane vectors whole on AVX-512 CPUs (elsewhere they are
split into legal halves).

Layouts (built by :mod:`memwall.kernels.gemm`; the micro-kernel trusts them):

* packed A micro-panel, ``a_rows`` rows: blocks of ``KB2`` K pairs, ``[block][a_rows][KB2]`` int32 words, each
  word two sign-extended int16 values ``(a[i, 2p], a[i, 2p + 1])`` (low half first);
* packed B micro-panel, ``NR = 16 * nv`` columns: ``[k2][NR][2]`` int16 (column ``j``, K values ``2*k2, 2*k2+1``);
* C: int32 tiles, leading dimension in elements.

Every product and pair sum is exact in int32 (|sum| <= 2 * 128 * 128); the accumulators wrap modulo 2**32 as
the VNNI path does, and the caller bounds K so the true result fits.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._vnni import TileCall, emit_blocked_k_loop

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_V16 = ir.VectorType(_I32, 16)
_V32H = ir.VectorType(_I16, 32)
_V32W = ir.VectorType(_I32, 32)
_WIDE = '"min-legal-vector-width"="512"'

#: K pairs per block of the packed A panel (each row's 64 bytes of a block contiguous)
KB2 = 16


def _mark_wide(function) -> None:
    """Let the X86 backend keep 512-bit vectors in this function (llvmlite only knows enum attributes, so the
    string attribute goes into the underlying set directly; it is printed verbatim)."""
    set.add(function.attributes, _WIDE)


def _madd(builder, a_pairs, b_pairs):
    """<16 x i32> sum of the even and odd int16 products: vpmaddwd where the target has it."""
    prod = builder.mul(builder.sext(a_pairs, _V32W), builder.sext(b_pairs, _V32W))
    even = builder.shuffle_vector(prod, prod, ir.Constant(_V16, list(range(0, 32, 2))))
    odd = builder.shuffle_vector(prod, prod, ir.Constant(_V16, list(range(1, 32, 2))))
    return builder.add(even, odd)


def make_madd_microkernel(mr: int, nv: int, a_rows: int | None = None):
    """An intrinsic ``mk(ap, a_off, bp, b_off, k2n, cin, cin_off, ldin, first, init, init_off, cout, cout_off,
    ldout)`` with the calling convention of :func:`memwall.kernels._vnni.make_microkernel` (element offsets;
    ``ap`` int32 words, ``bp`` int16, tiles int32; ``k2n`` K pairs; accumulators from ``init`` when ``first``
    != 0, else from ``cin``; the full ``mr x 16*nv`` tile is stored to ``cout``)."""
    nr = 16 * nv
    a_rows = mr if a_rows is None else a_rows

    @intrinsic
    def mk(typingctx, ap, a_off, bp, b_off, k2n, cin, cin_off, ldin, first, init, init_off, cout, cout_off, ldout):
        ints = (a_off, b_off, k2n, cin_off, ldin, first, init_off, cout_off, ldout)
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(ap, a_off, bp, b_off, k2n, cin, cin_off, ldin, first, init, init_off, cout, cout_off, ldout)

        def codegen(context, builder, signature, args):
            _mark_wide(builder.function)
            t = TileCall(context, builder, signature, args, _I32, _I16, mr, nv)
            c64, load = t.c64, t.vload
            incoming, loop_bbs = t.start("gmk")

            undef = ir.Constant(_V16, ir.Undefined)
            zeros = ir.Constant(_V16, [0] * 16)

            def step(a_ptr, b_ptr, u, accs):
                """One K pair (``u``: index inside the block, constant or value)."""
                if isinstance(u, int):
                    b_off, a_off = c64(u * nr * 2), c64(u)
                else:
                    b_off, a_off = builder.mul(u, c64(nr * 2)), u
                bvec = [load(b_ptr, builder.add(b_off, c64(32 * v)), _V32H) for v in range(nv)]
                out = []
                for r in range(mr):
                    w = builder.load(builder.gep(a_ptr, [builder.add(a_off, c64(KB2 * r))]), align=4)
                    splat = builder.shuffle_vector(builder.insert_element(undef, w, ir.Constant(_I32, 0)), undef, zeros)
                    a_pairs = builder.bitcast(splat, _V32H)
                    out.append([builder.add(accs[r][v], _madd(builder, a_pairs, bvec[v])) for v in range(nv)])
                return out

            rem_acc = emit_blocked_k_loop(builder, incoming, t.k_steps, KB2, t.a0, a_rows * KB2, t.b0, KB2 * nr * 2,
                                          step, loop_bbs)
            t.store(rem_acc)
            return context.get_dummy_value()

        return sig, codegen

    mk.__name__ = f"madd_mk_{mr}x{nr}_a{a_rows}"
    return mk

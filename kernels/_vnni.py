"""AVX-512 VNNI micro-kernels emitted as LLVM IR through ``numba.extending.intrinsic``.

LLVM does not turn plain loops into ``vpdpbusd``, so the register-blocked INT8 micro-kernel of
:mod:`memwall.kernels.gemm` is written here directly in IR with ``llvmlite.ir``: ``MR`` rows x ``NV`` 16-lane
zmm column vectors of int32 accumulators live in registers for the whole K loop; each K step of 4 loads ``NV``
vectors of the packed B panel and broadcasts one 4-byte group of the packed A panel per row
(``llvm.x86.avx512.vpdpbusd.512``: u8 x s8 -> i32, four products summed per lane, wrapping add).

Layouts (all produced by the packing kernels of ``gemm``; the micro-kernel trusts them):

* packed A micro-panel, ``MR`` rows: blocks of ``KB`` K groups, ``[block][MR][KB * 4]`` bytes (each row's 64 bytes
  of a block contiguous, so packing is a row-wise copy), the A values offset by +128 (``a ^ 0x80``) so they are
  unsigned;
* packed B micro-panel, ``NR = 16 * NV`` columns: ``[k4][NR][4]`` signed bytes (column ``j`` of the panel, K
  values ``4*k4 .. 4*k4+3``);
* C: int32, row-major with leading dimension ``ldc`` (elements).

The +128 offset adds ``128 * sum_k b[k, j]`` to every output of column ``j``; the caller passes that
compensation (negated, as the initial accumulator) in ``init`` when ``first`` is true.  int32 addition wraps
modulo 2**32, so intermediate wrap-around cancels: the result is exact whenever the true sum fits int32 (the
caller checks the bound on K * max|a| * max|b|).

The VNNI kernels are built only when the CPU has AVX-512 VNNI (see :func:`memwall.kernels.cpu.has_avx512_vnni`);
the module itself imports on any CPU (:mod:`._generic_ir` shares :func:`emit_blocked_k_loop`).
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


#: K groups of 4 per block of the packed A panel: each row's 64 bytes of a block are contiguous
KB = 16


#: basic blocks of :func:`emit_blocked_k_loop`, in order (the caller appends them, named with its own prefix)
K_LOOP_BLOCKS = ("pre", "blk_head", "blk_body", "rem_pre", "rem_head", "rem_body", "exit")


class TileCall:
    """The arguments and the frame that both INT8 micro-kernels (this module's and :mod:`._generic_ir`'s) share.

    The intrinsic's first 14 arguments are ``(ap, a_off, bp, b_off, k_steps, cin, cin_off, ldin, first, init,
    init_off, cout, cout_off, ldout)``: ``a0``/``b0`` point at A and B (elements of ``a_elem``/``b_elem``),
    ``ci0``/``i0``/``co0`` at the input tile, the initial row and the output tile (int32).  :meth:`start` emits
    the accumulators' start (from ``init`` when ``first`` != 0, else from the tile at ``cin``) and returns what
    :func:`emit_blocked_k_loop` takes; :meth:`store` writes the final tile to ``cout``."""

    def __init__(self, context, builder, signature, args, a_elem, b_elem, mr: int, nv: int):
        self.b, self.ctx, self.st, self.args, self.mr, self.nv = builder, context, signature.args, args, mr, nv
        self.a0 = builder.gep(self.data(0, a_elem), [self.i64(1)])
        self.b0 = builder.gep(self.data(2, b_elem), [self.i64(3)])
        self.k_steps, self.ldin, self.first, self.ldout = self.i64(4), self.i64(7), self.i64(8), self.i64(13)
        self.ci0 = builder.gep(self.data(5, _I32), [self.i64(6)])
        self.i0 = builder.gep(self.data(9, _I32), [self.i64(10)])
        self.co0 = builder.gep(self.data(11, _I32), [self.i64(12)])

    def i64(self, i):
        return self.ctx.cast(self.b, self.args[i], self.st[i], types.int64)

    def data(self, i, ty):
        return self.b.bitcast(self.ctx.make_array(self.st[i])(self.ctx, self.b, self.args[i]).data, ty.as_pointer())

    @staticmethod
    def c64(x):
        return ir.Constant(_I64, x)

    def vload(self, ptr, off, vty=None):
        """A vector (default ``<16 x i32>``) at element offset ``off`` (an int or an i64 value) from ``ptr``."""
        p = self.b.gep(ptr, [off if not isinstance(off, int) else self.c64(off)])
        return self.b.load(self.b.bitcast(p, (vty or _V16).as_pointer()), align=4)

    def start(self, prefix: str):
        """``(incoming, loop_bbs)`` for :func:`emit_blocked_k_loop` (basic blocks named ``prefix_...``)."""
        b, c64, mr, nv = self.b, self.c64, self.mr, self.nv
        from_init_bb = b.append_basic_block(f"{prefix}_from_init")
        from_c_bb = b.append_basic_block(f"{prefix}_from_c")
        loop_bbs = [b.append_basic_block(f"{prefix}_{name}") for name in K_LOOP_BLOCKS]
        b.cbranch(b.icmp_signed("!=", self.first, c64(0)), from_init_bb, from_c_bb)
        b.position_at_end(from_init_bb)
        init_vals = [self.vload(self.i0, 16 * v) for v in range(nv)]
        b.branch(loop_bbs[0])
        b.position_at_end(from_c_bb)
        c_acc = [[self.vload(self.ci0, b.add(b.mul(self.ldin, c64(r)), c64(16 * v))) for v in range(nv)]
                 for r in range(mr)]
        b.branch(loop_bbs[0])
        return [([init_vals] * mr, from_init_bb), (c_acc, from_c_bb)], loop_bbs

    def store(self, acc):
        """The ``mr x 16*nv`` tile ``acc`` to ``cout`` (leading dimension ``ldout``)."""
        b, c64 = self.b, self.c64
        for r in range(self.mr):
            row_off = b.mul(self.ldout, c64(r))
            for v in range(self.nv):
                b.store(acc[r][v], b.bitcast(b.gep(self.co0, [b.add(row_off, c64(16 * v))]), _V16.as_pointer()),
                        align=4)


def emit_blocked_k_loop(builder, incoming, k_steps, block, a0, a_block, b0, b_block, step, blocks, hook=None):
    """The register-blocked K loop of a micro-kernel (this module's and :mod:`._generic_ir`'s), emitted into
    ``blocks`` (basic blocks named as in :data:`K_LOOP_BLOCKS`, appended by the caller, the first still empty).

    ``incoming``: ``(accumulators, basic block)`` pairs that branch to ``pre``, where phis merge them (accumulators:
    ``mr`` rows of ``nv`` ``<16 x i32>`` values).  ``k_steps // block`` full blocks run unrolled: ``block`` calls of
    ``step(a_ptr, b_ptr, u, accs) -> accs`` with ``u`` a Python int, ``a_ptr``/``b_ptr`` advanced once per block
    by ``a_block``/``b_block`` elements from ``a0``/``b0``; a loop then takes the last ``k_steps % block`` steps
    (``u`` an i64 value).  ``hook(kb)``, if given, emits code at the start of every full block (``kb``: the block
    index, an i64 value).  Returns the final accumulators, the builder at the end of ``exit``.
    """
    pre_bb, blk_head, blk_body, rem_pre, rem_head, rem_body, exit_bb = blocks
    mr, nv = len(incoming[0][0]), len(incoming[0][0][0])

    def c64(x):
        return ir.Constant(_I64, x)

    def close_loop(phis, vals, bb):
        for r in range(mr):
            for v in range(nv):
                phis[r][v].add_incoming(vals[r][v], bb)

    def loop_phis(*pairs):
        phis = [[builder.phi(_V16) for _ in range(nv)] for _ in range(mr)]
        for vals, bb in pairs:
            close_loop(phis, vals, bb)
        return phis

    builder.position_at_end(pre_bb)
    acc = loop_phis(*incoming)
    nblk = builder.sdiv(k_steps, c64(block))
    builder.branch(blk_head)

    # --- full blocks, unrolled ------------------------------------------------------------------------------
    builder.position_at_end(blk_head)
    kb = builder.phi(_I64)
    kb.add_incoming(c64(0), pre_bb)
    blk_acc = loop_phis((acc, pre_bb))
    builder.cbranch(builder.icmp_signed("<", kb, nblk), blk_body, rem_pre)
    builder.position_at_end(blk_body)
    a_ptr = builder.gep(a0, [builder.mul(kb, c64(a_block))])
    b_ptr = builder.gep(b0, [builder.mul(kb, c64(b_block))])
    cur = blk_acc
    if hook is not None:
        hook(kb)
    for u in range(block):
        cur = step(a_ptr, b_ptr, u, cur)
    kb.add_incoming(builder.add(kb, c64(1)), builder.basic_block)
    close_loop(blk_acc, cur, builder.basic_block)
    builder.branch(blk_head)

    # --- the last k_steps % block steps -----------------------------------------------------------------------
    builder.position_at_end(rem_pre)
    rem = builder.sub(k_steps, builder.mul(nblk, c64(block)))
    a_last = builder.gep(a0, [builder.mul(nblk, c64(a_block))])
    b_last = builder.gep(b0, [builder.mul(nblk, c64(b_block))])
    builder.branch(rem_head)
    builder.position_at_end(rem_head)
    u = builder.phi(_I64)
    u.add_incoming(c64(0), rem_pre)
    rem_acc = loop_phis((blk_acc, rem_pre))
    builder.cbranch(builder.icmp_signed("<", u, rem), rem_body, exit_bb)
    builder.position_at_end(rem_body)
    cur = step(a_last, b_last, u, rem_acc)
    u.add_incoming(builder.add(u, c64(1)), builder.basic_block)
    close_loop(rem_acc, cur, builder.basic_block)
    builder.branch(rem_head)
    builder.position_at_end(exit_bb)
    return rem_acc


#: lines of a pending output tile that a micro-kernel call streams out per K block: a 6 x 64 int32 tile is 24
#: lines, a call of 64 groups 4 blocks (one line every ~32 cycles; 3 per block left half of them to a burst
#: after the K loop and measured 4% slower at 1024^3)
DRAIN_PER_BLOCK = 6


def make_microkernel(mr: int, nv: int, a_rows: int | None = None):
    """An intrinsic ``mk(ap, a_off, bp, b_off, k4n, cin, cin_off, ldin, first, init, init_off, cout, cout_off,
    ldout, dsrc, dsrc_off, ddst, ddst_off, lddst, ndrain, dnt)``.

    ``ap``/``bp``/``cin``/``init``/``cout`` are 1-D arrays (uint8 / int8 / int32 / int32 / int32); offsets are
    element offsets; ``k4n`` the number of K groups of 4.  The accumulators start from
    ``init[init_off : init_off + 16 * nv]`` (the same for every row) when ``first`` != 0, otherwise from the
    tile at ``cin`` (leading dimension ``ldin``); after the K loop the ``mr x 16*nv`` tile goes to ``cout``
    (leading dimension ``ldout``).  The full tile is read/written: the caller handles edges.  ``a_rows``
    (default ``mr``) is the row count of the packed A panel, so a narrower kernel can run over the first rows
    of a wider panel (``a_off + 64 * r`` selects row ``r``).

    The K loop is unrolled over one A block (``KB`` groups): every broadcast and B load is a constant
    displacement from two pointers that advance once per block; a remainder loop takes the last
    ``k4n % KB`` groups.

    Drain: the call also writes ``ndrain`` 64-byte lines of an earlier tile, waiting at ``dsrc[dsrc_off:]``
    (rows of ``16 * nv`` int32), to ``ddst[ddst_off:]`` (leading dimension ``lddst``): line ``l`` is 16 values of
    row ``l // nv``, ``DRAIN_PER_BLOCK`` lines at the start of each K block, the rest after the K loop;
    non-temporal stores when ``dnt`` != 0 (every destination row start 64-byte aligned: the caller checks),
    plain ones otherwise.  A tile's 24 stores in a burst at the end of its own call kept the fill buffers busy
    while the next call's loads missed L1 (measured: the whole int32 output cost 11-14% of a 1024^3 GEMM;
    streamed this way, 2 threads went 757 -> 833 Gop/s; with plain stores at 1000^3 and 1023^3, 654-675 ->
    744-751 Gop/s).
    """
    nr = 16 * nv
    a_rows = mr if a_rows is None else a_rows

    def codegen(context, builder, signature, args):
        t = TileCall(context, builder, signature, args, _I8, _I8, mr, nv)
        c64, vload = t.c64, t.vload
        ds0 = builder.gep(t.data(14, _I32), [t.i64(15)])
        dd0 = builder.gep(t.data(16, _I32), [t.i64(17)])
        ldd_v, nd_v, dnt_v = t.i64(18), t.i64(19), t.i64(20)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), _VPDPBUSD)

        def drain_line(line):
            row, vec = builder.udiv(line, c64(nv)), builder.urem(line, c64(nv))
            val = vload(ds0, builder.add(builder.mul(row, c64(nr)), builder.mul(vec, c64(16))))
            dst = builder.gep(dd0, [builder.add(builder.mul(row, ldd_v), builder.mul(vec, c64(16)))])
            with builder.if_else(builder.icmp_signed("!=", dnt_v, c64(0))) as (non_temporal, plain):
                with non_temporal:
                    store = builder.store(val, builder.bitcast(dst, _V16.as_pointer()), align=64)
                    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
                with plain:
                    builder.store(val, builder.bitcast(dst, _V16.as_pointer()), align=4)

        def drain_block(kb):
            for j in range(DRAIN_PER_BLOCK):
                line = builder.add(builder.mul(kb, c64(DRAIN_PER_BLOCK)), c64(j))
                with builder.if_then(builder.icmp_signed("<", line, nd_v)):
                    drain_line(line)

        incoming, loop_bbs = t.start("mk")

        pf_fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")

        def step(a_ptr, b_ptr, u, accs):
            """One K group of 4 (``u``: index inside the block, constant or value).  In an unrolled block, the
            first ``mr`` steps each prefetch one row's line of the next A block into L1 (measured +1-3% at 1024^3
            and 2048^3: the block's lines otherwise all miss L1 together at its first step)."""
            if isinstance(u, int):
                b_off, a_off = c64(u * nr * 4), c64(4 * u)
                if u < mr:
                    builder.call(pf_fn, [builder.gep(a_ptr, [c64(a_rows * 64 + 64 * u)]), ir.Constant(_I32, 0),
                                         ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            else:
                b_off, a_off = builder.mul(u, c64(nr * 4)), builder.mul(u, c64(4))
            bvec = [vload(b_ptr, builder.add(b_off, c64(64 * v))) for v in range(nv)]
            out = []
            for r in range(mr):
                p = builder.gep(a_ptr, [builder.add(a_off, c64(64 * r))])
                abc = _splat(builder, builder.load(builder.bitcast(p, _I32.as_pointer()), align=4))
                out.append([builder.call(fn, [accs[r][v], abc, bvec[v]]) for v in range(nv)])
            return out

        rem_acc = emit_blocked_k_loop(builder, incoming, t.k_steps, KB, t.a0, a_rows * 64, t.b0, KB * nr * 4, step,
                                      loop_bbs, drain_block)
        # --- the lines not drained in the blocks (fewer blocks than lines / DRAIN_PER_BLOCK) -------------------
        start = builder.mul(builder.sdiv(t.k_steps, c64(KB)), c64(DRAIN_PER_BLOCK))
        with cgutils.for_range(builder, builder.sub(nd_v, start)) as loop:  # none when nd_v <= start
            drain_line(builder.add(start, loop.index))

        t.store(rem_acc)
        return context.get_dummy_value()

    @intrinsic
    def mk(typingctx, ap, a_off, bp, b_off, k4n, cin, cin_off, ldin, first, init, init_off, cout, cout_off, ldout,
           dsrc, dsrc_off, ddst, ddst_off, lddst, ndrain, dnt):
        ints = (a_off, b_off, k4n, cin_off, ldin, first, init_off, cout_off, ldout, dsrc_off, ddst_off, lddst, ndrain,
                dnt)
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(ap, a_off, bp, b_off, k4n, cin, cin_off, ldin, first, init, init_off, cout, cout_off,
                         ldout, dsrc, dsrc_off, ddst, ddst_off, lddst, ndrain, dnt)
        return sig, codegen

    mk.__name__ = f"vnni_mk_{mr}x{nr}_a{a_rows}"
    return mk


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

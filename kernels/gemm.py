"""Quantized GEMM / GEMV: INT8 x INT8 -> INT32 (exact), fused dequantizing epilogues, INT4 weights.

Two implementations of the INT8 GEMM sit behind one validated wrapper:

``"vnni"``
    AVX-512 VNNI: ``vpdpbusd`` emitted as LLVM IR (see :mod:`memwall.kernels._vnni`), a register-blocked
    ``MR x NR`` micro-kernel over packed panels (A: ``MR`` rows, K grouped by 4, offset by +128 so it is
    unsigned; B: ``NR`` columns, K grouped by 4), threads over (row block, column panel) tasks.
``"generic"``
    No intrinsics (any CPU): the same tiling with a micro-kernel in target-independent IR over int16 K pairs
    (:mod:`memwall.kernels._generic_ir`; LLVM lowers it to ``vpmaddwd`` on AVX-512, or to ``vpdpwssd`` where the
    CPU has VNNI), exact int32 accumulation over the same packed B panels seen as int16 pairs.

The path is chosen at import from the CPU features and ``MEMWALL_ISA`` (:func:`memwall.kernels.config.requested_isa`),
and can be forced per call with ``path=``.

Exactness: every kernel accumulates in int32 with wrap-around arithmetic, which is exact whenever the true
result fits int32.  The wrappers guarantee that: when ``K * max|a| * max|b|`` may reach ``2**31`` they split K
into chunks whose int32 partial sums cannot overflow, add the chunks in int64 and return int64 (see
:func:`int8_gemm`).  Wrapped sums are never returned.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import config
from ._validate import as_array, check_choice, check_finite, check_int, check_positive, check_range
from ._generic_ir import KB2, make_madd_microkernel
from .cpu import has_avx512_vnni
from ._sched import chunk_workers, next_chunk, next_task, num_threads, task_queues
from .quant import _quantize_rows_int8

__all__ = [
    "PackedInt8",
    "pack_int8",
    "int8_gemm",
    "int8_gemm_dequant",
    "active_paths",
    "available_paths",
    "PackedWeights",
    "pack_weights",
    "pack_quantized",
    "quantized_linear",
    "int4_gemv",
    "int4_gemm",
]

# --- tile sizes ------------------------------------------------------------------------------------
#: rows of the VNNI micro-kernel (accumulators: MR x NV zmm registers).  6 x 64 (with KC4 = 64) measured 2-8%
#: faster than 12 x 32 at 1024^3 and 0-2% at 2048^3 (interleaved with NumPy, 2 threads; W8A8 with 1-128 tokens
#: 6-17% faster): per K step 6 broadcasts + 4 B loads for 24 vpdpbusd instead of 12 + 2, fewer instructions for
#: the front end that the two hyperthreads of a core share
MR = 6
#: 16-lane int32 vectors per micro-kernel row
NV = 4
#: columns of a packed B panel
NR = 16 * NV
#: K groups of 4 per micro-kernel call: the B chunk (KC4 * 4 * NR bytes = 16 KiB) stays in L1 while the
#: row block's A panels stream past it
KC4 = 64

_PATHS = ("vnni", "generic")


def available_paths() -> tuple[str, ...]:
    """The INT8 GEMM paths this CPU can run (``"generic"`` always)."""
    return _PATHS if has_avx512_vnni() else ("generic",)


def _default_path() -> str:
    req = config.requested_isa()
    if req == "generic":
        return "generic"
    if req == "vnni":
        if not has_avx512_vnni():
            raise RuntimeError("MEMWALL_ISA=vnni but this CPU lacks AVX-512 VNNI (avx512f/avx512bw/avx512vnni)")
        return "vnni"
    return "vnni" if has_avx512_vnni() else "generic"


_DEFAULT_PATH = _default_path()


def _resolve_path(path) -> str:
    if path is None:
        return _DEFAULT_PATH
    if not isinstance(path, str):
        raise TypeError(f"path: expected one of {_PATHS!r} or None, got {type(path).__name__}")
    check_choice(path, "path", _PATHS)
    if path == "vnni" and not has_avx512_vnni():
        raise ValueError("path: 'vnni' needs AVX-512 VNNI, which this CPU lacks; use 'generic' or None")
    return path


def active_paths() -> dict[str, str]:
    """Which implementation each kernel family uses by default on this host (for ``memwall info``)."""
    vnni = _DEFAULT_PATH == "vnni"
    return {
        "int8_gemm": (f"avx512-vnni (vpdpbusd {MR}x{NR} micro-kernel)" if vnni
                      else f"generic (int16-pair {MRG}x{NRG} IR micro-kernel, no intrinsics)"),
        "int8_epi": "fused dequant epilogue on the L1 tile",
        "int4_gemv": (f"zmm IR rows (vpermps nibble lookup, vector group sums), {_GEMV_RB} rows/task + prefetch, "
                      "per-thread row ranges with stealing" if vnni
                      else "numba (auto-vectorized)") + ", nibbles dequantized in registers; act_quant='int16': "
                     + ("A16 integer rows (nibbles x 16-bit fixed-point activations on vpdpbusd)" if vnni
                        else "activations rounded, then the float kernel"),
        "int4_gemm": ("W4A16: <= 12 tokens zmm GEMV-style IR (2 tokens per decoded step), then 16-channel panels "
                      "dequantized in L1 + zmm register tiles, BLAS blocks from 256 tokens" if vnni else
                      "W4A16: weight rows dequantized in L1, dot with every token") + "; W4A8 on the int8 path",
        "int8_wo": (f"W8A16: <= {WEIGHT_ONLY_W8_FEW_TOKENS} tokens zmm IR rows (vpmovsxbd + vcvtdq2ps, 2 tokens per "
                    f"pass), {_GEMV_RB} rows/task + prefetch, per-thread row ranges with stealing, then 16-channel "
                    f"INT8 panels + zmm register tiles, BLAS blocks from {WEIGHT_ONLY_FUSED_BLAS_TOKENS} tokens" if vnni
                    else "W8A16: numba row loop (one token), weight rows dequantized in L1 (few tokens), BLAS blocks "
                    f"from {WEIGHT_ONLY_BLAS_TOKENS} tokens"),
        "isa": config.requested_isa(),
    }


# ==================================================================================================
# packing
# ==================================================================================================
@njit(parallel=True, cache=True)
def _pack_b_kernel(b, nk_layout, out, comp, colsum):  # pragma: no cover - compiled
    """b (K, N) (or (N, K) when nk_layout) -> panels [npan][Kp4][NR][4]; colsum[j] = sum_k b[k, j] and
    comp[j] = -128 * colsum[j] (int32, wrapping)."""
    if nk_layout:
        n, k = b.shape
    else:
        k, n = b.shape
    kp4 = (k + 3) // 4
    npan = (n + NR - 1) // NR
    for jp in prange(npan):
        base = jp * kp4 * NR * 4
        for jj in range(NR):
            j = jp * NR + jj
            s = 0
            if j < n:
                for kk in range(k):
                    v = b[j, kk] if nk_layout else b[kk, j]
                    out[base + (kk >> 2) * NR * 4 + jj * 4 + (kk & 3)] = v
                    s += v
            comp[jp * NR + jj] = np.int32(-128 * s)
            if j < n:
                colsum[j] = s


class PackedInt8:
    """INT8 weights ``b`` (K, N) packed once into NR-column panels for :func:`int8_gemm`.

    Attributes: ``k``, ``n`` (logical shape of b), ``data`` (int8 panels ``[N/NR][ceil(K/4)][NR][4]``, zero
    padded), ``comp`` (int32, ``-128 * column sums``: the +128 offset compensation), ``max_abs`` (max |b|, for
    the overflow check), ``nbytes``.  Build it with :func:`pack_int8`; the constructor is not public API.
    """

    __slots__ = ("k", "n", "data", "comp", "colsum", "max_abs", "_hpanels")

    def __init__(self, k: int, n: int, data: np.ndarray, comp: np.ndarray, colsum: np.ndarray, max_abs: int):
        # O(1) structure checks: the kernels index these arrays without bounds checks, so a hand-built
        # object with short arrays must fail here, not read past them
        k = check_int(k, "k", minimum=0)
        n = check_int(n, "n", minimum=0)
        npan, kp4 = -(-n // NR), -(-k // 4)
        for arr, name, dt, size in ((data, "data", np.int8, npan * kp4 * NR * 4), (comp, "comp", np.int32, npan * NR),
                                    (colsum, "colsum", np.int64, n)):
            if not isinstance(arr, np.ndarray) or arr.dtype != dt or arr.ndim != 1 or not arr.flags.c_contiguous:
                raise TypeError(f"PackedInt8 {name}: expected a contiguous 1-D {np.dtype(dt).name} array "
                                "(build it with pack_int8)")
            if arr.size != size:
                raise ValueError(f"PackedInt8 {name}: expected {size} elements for k={k}, n={n}, got {arr.size} "
                                 "(build it with pack_int8)")
        max_abs = check_int(max_abs, "max_abs", minimum=0, maximum=128)
        self.k, self.n, self.data, self.comp, self.colsum, self.max_abs = k, n, data, comp, colsum, max_abs
        self._hpanels = None

    def pair_panels(self) -> np.ndarray:
        """The panels re-cut to ``NRG`` columns, as int16 K pairs ``[NR/NRG * N/NR][2*ceil(K/4)][NRG][2]``, for
        the generic (no-intrinsics) path; built on first use and kept (twice the bytes of ``data``)."""
        if self._hpanels is None:
            npan, kp4, sub = -(-self.n // NR), -(-self.k // 4), NR // NRG
            # [jp][k4][s][j][pair][2] -> [jp][s][k4][pair][j][2]: sub-panel jp * sub + s, K pair 2*k4 + pair
            h = self.data.reshape(npan, kp4, sub, NRG, 2, 2).transpose(0, 2, 1, 4, 3, 5).astype(np.int16)
            self._hpanels = h.reshape(-1)
        return self._hpanels

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.n)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.comp.nbytes)

    def __repr__(self) -> str:
        return f"PackedInt8(k={self.k}, n={self.n}, panels={(self.n + NR - 1) // NR}, nbytes={self.nbytes})"


def pack_int8(b, *, layout: str = "kn") -> PackedInt8:
    """Pack INT8 weights once for repeated :func:`int8_gemm` calls.

    Parameters
    ----------
    b : numpy.ndarray of int8
        ``(K, N)`` when ``layout="kn"`` (the B of ``a @ b``), or ``(N, K)`` when ``layout="nk"`` (weights as a
        PyTorch ``Linear`` stores them: (out, in)).  Non-contiguous views are copied.
    layout : {"kn", "nk"}

    Returns
    -------
    PackedInt8
        Reusable packed panels; ``int8_gemm(a, pack_int8(b))`` equals ``int8_gemm(a, b)``.
    """
    check_choice(layout, "layout", ("kn", "nk"))
    b = as_array(b, "b", dtype=np.int8, ndim=2)
    if layout == "kn":
        k, n = b.shape
    else:
        n, k = b.shape
    return _pack_checked(b, k, n, layout == "nk")


def _pack_checked(b: np.ndarray, k: int, n: int, nk: bool) -> PackedInt8:
    kp4 = (k + 3) // 4
    npan = (n + NR - 1) // NR
    data = np.zeros(npan * kp4 * NR * 4, dtype=np.int8)
    comp = np.zeros(npan * NR, dtype=np.int32)
    colsum = np.zeros(n, dtype=np.int64)
    if k and n:
        _pack_b_kernel(b, nk, data, comp, colsum)
    max_abs = int(np.abs(b.astype(np.int16)).max()) if b.size else 0
    return PackedInt8(k, n, data, comp, colsum, max_abs)


# ==================================================================================================
# INT8 GEMM kernels
# ==================================================================================================
@njit(inline="always")
def _store_tile(tile, ldt, r0, rows, c0, cols, n, c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk):
    """Write the int32 tile rows [r0, r0+rows) x cols [c0, c0+cols): raw (epi=0) or dequantized to float32.
    (Offsets are unsigned so that Numba emits no negative-index wraparound and the loops vectorize.)"""
    uc0 = np.uint64(c0)
    if epi == 0:
        for r in range(rows):
            off = np.uint64((r0 + r) * n + c0)
            toff = np.uint64(r * ldt)
            for jj in range(cols):
                u = np.uint64(jj)
                c[off + u] = tile[toff + u]
    elif has_zp == 0:
        for r in range(rows):
            off = np.uint64((r0 + r) * n + c0)
            toff = np.uint64(r * ldt)
            s_a = sa[r0 + r]
            for jj in range(cols):
                u = np.uint64(jj)
                out[off + u] = np.float32(tile[toff + u]) * (s_a * sb[uc0 + u]) + bias[uc0 + u]
    else:
        for r in range(rows):
            i = r0 + r
            off = np.uint64(i * n + c0)
            toff = np.uint64(r * ldt)
            s_a = sa[i]
            z_a = np.int64(za[i])
            r_a = np.int64(rsa[i])
            for jj in range(cols):
                u = np.uint64(jj)
                j = uc0 + u
                z_b = np.int64(zb[j])
                v = np.int64(tile[toff + u]) - z_a * csb[j] - z_b * r_a + kk * z_a * z_b
                out[off + u] = np.float32(v) * (s_a * sb[j]) + bias[j]


if has_avx512_vnni():
    from ._vnni import KB, make_microkernel, prefetch_l2, sfence, store_nt16

    _mk = make_microkernel(MR, NV)
    _mk1 = make_microkernel(1, NV, MR)  # one row of an MR panel: short edges and GEMV-like M

    @njit(inline="always")
    def _pack_a_panels(a8, m, k, ip0, ip1, k4_lo, k4n, nkb, abuf):  # pragma: no cover - compiled
        """Rows of A panels [ip0, ip1), K groups [k4_lo, k4_lo + k4n), +128 per byte, into abuf
        ``[panel][block][MR][64]`` (zero past K and past M).  Flat unsigned offsets: the copies vectorize."""
        kend = min(k, 4 * (k4_lo + k4n))
        flip = np.uint8(128)
        for ip in range(ip0, ip1):
            for kb in range(nkb):
                kk0 = 4 * k4_lo + 64 * kb
                full = min(64, max(0, kend - kk0))
                for r in range(MR):
                    o = np.uint64((((ip - ip0) * nkb + kb) * MR + r) * 64)
                    i = ip * MR + r
                    if i < m and full == 64:
                        src = np.uint64(i * k + kk0)
                        for j in range(64):
                            u = np.uint64(j)
                            abuf[o + u] = a8[src + u] ^ flip
                    else:
                        if i < m:
                            src = np.uint64(i * k + kk0)
                            for j in range(full):
                                u = np.uint64(j)
                                abuf[o + u] = a8[src + u] ^ flip
                        else:
                            full = 0
                        for j in range(full, 64):
                            abuf[o + np.uint64(j)] = 0

    @njit(parallel=True, cache=True)
    def _vnni_gemm_kernel(a8, bp, comp, m, n, k, kp4, k4_lo, k4_hi, mb_panels, jc_panels, kc4, nt, workers,
                          c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk):  # pragma: no cover
        """A @ B over K groups [k4_lo, k4_hi) (comp initialises each column); the result goes to c (int32,
        flat) or, with epi, is dequantized into out.

        a8 is A (M, K) row-major, flat uint8.  A task owns ``mb_panels`` A panels (a row block) x
        ``jc_panels`` B panels; ``workers`` threads take the tasks, their own range first
        (:func:`._sched.next_task`).  A task first packs its row block (+128 per byte,
        ``[panel][block][MR][64]``) into a buffer that then stays in its L2, and for each of its B panels walks
        K in chunks of ``kc4`` groups of 4 (the B chunk, kc4 * 4 * NR bytes, stays in L1) and, per chunk, every
        A panel.  Partial tiles wait in a per-task int32 buffer (cbuf) between chunks.  In the last chunk a
        full int32 tile waits in cbuf too, and the next micro-kernel call streams it out to c between its K
        blocks (the task's last tile at the task's end), with non-temporal stores where ``nt`` (c 64-byte
        aligned, n % 16 == 0).  An edge tile or a dequantized one is written right after its last micro-kernel
        call."""
        mpan = (m + MR - 1) // MR
        npan = (n + NR - 1) // NR
        nmb = (mpan + mb_panels - 1) // mb_panels
        njc = (npan + jc_panels - 1) // jc_panels
        ntask = nmb * njc
        k4n = k4_hi - k4_lo
        nkb = (k4n + KB - 1) // KB
        nw = min(workers, ntask)
        queue = task_queues(nw)
        for w in prange(nw):
            t, done = next_task(queue, w, nw, ntask, 0)
            pend = 0  # lines of a full tile waiting in cbuf[pend_src:] for c[pend_dst:] (written by the next call)
            pend_src = 0
            pend_dst = 0
            while t < ntask:
                mb = t // njc
                jc = t - mb * njc
                ip0 = mb * mpan // nmb  # nmb blocks of mpan // nmb or one more panels
                ip1 = (mb + 1) * mpan // nmb
                cbuf = np.empty((ip1 - ip0) * MR * NR, dtype=np.int32)
                abuf = np.empty((ip1 - ip0) * nkb * MR * 4 * KB, dtype=np.uint8)
                _pack_a_panels(a8, m, k, ip0, ip1, k4_lo, k4n, nkb, abuf)
                for jp in range(jc * jc_panels, min(npan, (jc + 1) * jc_panels)):
                    b_base = (jp * kp4 + k4_lo) * NR * 4
                    cols = min(NR, n - jp * NR)
                    for kc in range(0, k4n, kc4):
                        kn = min(kc4, k4n - kc)
                        first = 1 if kc == 0 else 0
                        last = kc + kc4 >= k4n
                        # the next B chunk (this panel's next K chunk, or the next panel's first) is fetched into
                        # L2 a few lines per A panel, so its first pass does not wait on DRAM
                        if not last:
                            nxt = b_base + (kc + kc4) * NR * 4
                            nxt_bytes = min(kc4, k4n - kc - kc4) * NR * 4
                        elif jp + 1 < min(npan, (jc + 1) * jc_panels):
                            nxt = ((jp + 1) * kp4 + k4_lo) * NR * 4
                            nxt_bytes = min(kc4, k4n) * NR * 4
                        else:
                            nxt = 0
                            nxt_bytes = 0
                        lines = (nxt_bytes + 63) // 64
                        per_ip = (lines + (ip1 - ip0) - 1) // (ip1 - ip0)
                        b_off = b_base + kc * NR * 4
                        for ip in range(ip0, ip1):
                            l0 = (ip - ip0) * per_ip
                            for ln in range(l0, min(lines, l0 + per_ip)):
                                prefetch_l2(bp, nxt + ln * 64)
                            a_base = ((ip - ip0) * nkb + kc // KB) * MR * 4 * KB
                            t_off = (ip - ip0) * MR * NR
                            rows = min(MR, m - ip * MR)
                            if rows > MR // 2:
                                _mk(abuf, a_base, bp, b_off, kn, cbuf, t_off, NR, first, comp, jp * NR,
                                    cbuf, t_off, NR, cbuf, pend_src, c, pend_dst, n, pend, nt)
                                pend = 0
                            else:  # a short edge panel: one row at a time instead of MR rows of padding
                                for r in range(rows):
                                    _mk1(abuf, a_base + 4 * KB * r, bp, b_off, kn, cbuf, t_off + r * NR, NR, first,
                                         comp, jp * NR, cbuf, t_off + r * NR, NR, cbuf, pend_src, c, pend_dst, n,
                                         pend, nt)
                                    pend = 0
                            if last and epi == 0 and rows == MR and cols == NR:
                                # a full int32 tile: the next call streams it out between its K blocks
                                pend = MR * NV
                                pend_src = t_off
                                pend_dst = ip * MR * n + jp * NR
                            elif last:
                                _store_tile(cbuf[t_off:], NR, ip * MR, rows, jp * NR, cols, n,
                                            c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk)
                if pend:  # the task's last tile, before its cbuf goes
                    if nt:
                        for ln in range(pend):
                            r = ln // NV
                            store_nt16(c, pend_dst + r * n + 16 * (ln - r * NV), cbuf,
                                       pend_src + r * NR + 16 * (ln - r * NV))
                    else:
                        _store_tile(cbuf[pend_src:], NR, pend_dst // n, MR, pend_dst % n, NR, n,
                                    c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk)
                    pend = 0
                t, done = next_task(queue, w, nw, ntask, done)
            if nt:
                sfence()


#: tile of the generic micro-kernel (int16 K pairs): 12 x 32 (its IR at 6 x 64 ran at 0.56x the speed)
MRG, NVG = 12, 2
NRG = 16 * NVG
#: generic path: K pairs per micro-kernel call (the int16 B chunk, KC2G * 2 * 2 * NRG bytes = 16 KiB, stays in L1)
KC2G = 128
_ZERO_INIT = np.zeros(NRG, dtype=np.int32)

_gmk = make_madd_microkernel(MRG, NVG)
_gmk1 = make_madd_microkernel(1, NVG, MRG)


@njit(inline="always")
def _pack_a_pairs(a8, m, k, ip0, ip1, k2_lo, k2n, nkb, abuf):  # pragma: no cover - compiled
    """Rows of A panels [ip0, ip1), K pairs [k2_lo, k2_lo + k2n), sign-extended to int16, into abuf (int16)
    ``[panel][block][MRG][2 * KB2]`` (zero past K and past M)."""
    kend = min(k, 2 * (k2_lo + k2n))
    w = 2 * KB2
    for ip in range(ip0, ip1):
        for kb in range(nkb):
            kk0 = 2 * k2_lo + w * kb
            full = min(w, max(0, kend - kk0))
            for r in range(MRG):
                o = np.uint64((((ip - ip0) * nkb + kb) * MRG + r) * w)
                i = ip * MRG + r
                if i >= m:
                    full = 0
                src = np.uint64(i * k + kk0)
                for j in range(full):
                    u = np.uint64(j)
                    abuf[o + u] = np.int16(a8[src + u])
                for j in range(full, w):
                    abuf[o + np.uint64(j)] = 0


@njit(parallel=True, cache=True)
def _generic_gemm_kernel(a8, bh, m, n, k, kp2, k2_lo, k2_hi, mb_panels, jc_panels, kc2, workers,
                         c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk):  # pragma: no cover - compiled
    """A @ B without intrinsics (:mod:`memwall.kernels._generic_ir`): the schedule of the VNNI kernel over int16
    pairs (tasks taken as there).  a8: A (M, K) flat int8; bh: B panels as int16 pairs
    ``[N/NRG][kp2][NRG][2]``; K pairs [k2_lo, k2_hi); exact int32 accumulation (wrapping), written to c or
    dequantized into out."""
    mpan = (m + MRG - 1) // MRG
    npan = (n + NRG - 1) // NRG
    nmb = (mpan + mb_panels - 1) // mb_panels
    njc = (npan + jc_panels - 1) // jc_panels
    k2n = k2_hi - k2_lo
    nkb = (k2n + KB2 - 1) // KB2
    ntask = nmb * njc
    nw = min(workers, ntask)
    queue = task_queues(nw)
    for w in prange(nw):
        t, done = next_task(queue, w, nw, ntask, 0)
        while t < ntask:
            mb = t // njc
            jc = t - mb * njc
            ip0 = mb * mpan // nmb
            ip1 = (mb + 1) * mpan // nmb
            cbuf = np.empty((ip1 - ip0) * MRG * NRG, dtype=np.int32)
            abuf = np.empty((ip1 - ip0) * nkb * MRG * 2 * KB2, dtype=np.int16)
            _pack_a_pairs(a8, m, k, ip0, ip1, k2_lo, k2n, nkb, abuf)
            a32 = abuf.view(np.int32)
            for jp in range(jc * jc_panels, min(npan, (jc + 1) * jc_panels)):
                cols = min(NRG, n - jp * NRG)
                for kc in range(0, k2n, kc2):
                    kn = min(kc2, k2n - kc)
                    first = 1 if kc == 0 else 0
                    last = kc + kc2 >= k2n
                    b_off = ((jp * kp2 + k2_lo + kc) * NRG) * 2
                    for ip in range(ip0, ip1):
                        a_base = ((ip - ip0) * nkb + kc // KB2) * MRG * KB2
                        t_off = (ip - ip0) * MRG * NRG
                        rows = min(MRG, m - ip * MRG)
                        if last and epi == 0 and rows == MRG and cols == NRG:
                            _gmk(a32, a_base, bh, b_off, kn, cbuf, t_off, NRG, first, _ZERO_INIT, 0,
                                 c, ip * MRG * n + jp * NRG, n)
                            continue
                        if rows > MRG // 2:
                            _gmk(a32, a_base, bh, b_off, kn, cbuf, t_off, NRG, first, _ZERO_INIT, 0,
                                 cbuf, t_off, NRG)
                        else:
                            for r in range(rows):
                                _gmk1(a32, a_base + KB2 * r, bh, b_off, kn, cbuf, t_off + r * NRG, NRG, first,
                                      _ZERO_INIT, 0, cbuf, t_off + r * NRG, NRG)
                        if last:
                            _store_tile(cbuf[t_off:], NRG, ip * MRG, rows, jp * NRG, cols, n,
                                        c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk)
            t, done = next_task(queue, w, nw, ntask, done)


_EMPTY_F32 = np.zeros(1, dtype=np.float32)
_EMPTY_I32 = np.zeros(1, dtype=np.int32)
_EMPTY_I64 = np.zeros(1, dtype=np.int64)


class _Epilogue:
    """Per-row (activation) and per-column (weight) dequantization parameters, broadcast to full length."""

    __slots__ = ("sa", "za", "rsa", "sb", "zb", "csb", "bias", "has_zp")

    def __init__(self, sa, za, rsa, sb, zb, csb, bias, has_zp):
        self.sa, self.za, self.rsa, self.sb, self.zb, self.csb, self.bias, self.has_zp = (
            sa, za, rsa, sb, zb, csb, bias, has_zp)


#: bytes of packed A a task keeps in L2 (the row block reused across the task's B panels)
A_BLOCK_BYTES = 512 * 1024
#: "rows" schedules row blocks sized for L2; "panels" gives each task one B panel and all rows
SCHEDULE = "rows"
#: at least this many tasks per thread, so that a core that runs slow can hand work to the other
#: (:func:`._sched.next_task`).  Measured interleaved with NumPy, 2 threads, with one shared queue: 3.5 -> 3.7x
#: at 1024^3 and 3.1 -> 3.8x at 2048^3 against one task per thread; 16 per thread re-reads B too often
TASKS_PER_THREAD = 4


def _vnni_schedule(mpan: int, npan: int, k4n: int, threads: int, mr: int = MR, nr: int = NR) -> tuple[int, int]:
    """(A panels per row block, B panels per task): row blocks that fit L2 (a multiple of the thread count, so
    that equal cores finish together), then at least ``TASKS_PER_THREAD`` tasks per thread from more row blocks
    when A is at least half as large as B (each row block re-reads B, from the cache at these sizes) or else from
    column chunks (each re-packs its row block of A: for a few rows against a large B, re-reading B from DRAM
    per row block cost W8A8 with 32 tokens a third of its speed)."""
    if SCHEDULE == "panels":
        nmb = max(1, min(mpan, -(-2 * threads // npan)))
        return -(-mpan // nmb), 1
    want = TASKS_PER_THREAD * threads
    per_panel = mr * 4 * max(k4n, 1)
    mb_target = max(1, A_BLOCK_BYTES // per_panel)
    nmb = -(-mpan // mb_target)
    nmb = -(-nmb // threads) * threads if nmb >= threads else nmb
    if nmb < want and 2 * mpan * mr >= npan * nr:
        nmb = want
    nmb = min(nmb, mpan)
    mb_panels = -(-mpan // nmb)
    nmb = -(-mpan // mb_panels)
    njc = 1
    if nmb < want:
        njc = min(npan, -(-want // nmb))
    return mb_panels, -(-npan // njc)


#: write full int32 output tiles with non-temporal stores (when the rows are 64-byte aligned)
NT_STORES = True


@njit(cache=True)
def _address(a):  # pragma: no cover - compiled
    """The address of a's data (~0.5 us; ``a.ctypes.data`` costs ~3 us)."""
    return a.ctypes.data


def _aligned_empty(size: int, dtype) -> np.ndarray:
    """np.empty(size, dtype) whose data starts on a 64-byte boundary (a view into a slightly larger buffer)."""
    itemsize = np.dtype(dtype).itemsize
    buf = np.empty(size + 64 // itemsize, dtype=dtype)
    skip = (-_address(buf) % 64) // itemsize
    return buf[skip:skip + size]


def _run(a: np.ndarray, pb: PackedInt8, path: str, k4_lo: int, k4_hi: int, comp: np.ndarray,
         epi: _Epilogue | None = None) -> np.ndarray:
    """a (M, K) times the packed panels over K groups [k4_lo, k4_hi): int32 (exact mod 2**32), or float32
    through the dequantizing epilogue when ``epi`` is given."""
    m = a.shape[0]
    n = pb.n
    kp4 = (pb.k + 3) // 4
    if epi is None:
        c, out = _aligned_empty(m * n, np.int32), _EMPTY_F32
        res = c
        args = (0, 0, _EMPTY_F32, _EMPTY_I32, _EMPTY_I64, _EMPTY_F32, _EMPTY_I32, _EMPTY_I64, _EMPTY_F32, 0)
    else:
        c, out = _EMPTY_I32, np.empty(m * n, dtype=np.float32)
        res = out
        args = (1, int(epi.has_zp), epi.sa, epi.za, epi.rsa, epi.sb, epi.zb, epi.csb, epi.bias, pb.k)
    if m == 0 or n == 0:
        return res.reshape(m, n)
    if k4_hi <= k4_lo:  # K == 0: every sum is empty
        a = np.zeros((m, 4), dtype=np.int8)
        pb = _pack_checked(np.zeros((4, n), dtype=np.int8), 4, n, False)
        kp4, k4_lo, k4_hi, comp = 1, 0, 1, pb.comp
    threads = max(1, num_threads())
    if path == "vnni":
        mpan, npan = (m + MR - 1) // MR, (n + NR - 1) // NR
        mb_panels, jc_panels = _vnni_schedule(mpan, npan, k4_hi - k4_lo, threads)
        nt = int(NT_STORES and epi is None and n % 16 == 0)  # c from _aligned_empty: 64-byte aligned
        _vnni_gemm_kernel(np.ascontiguousarray(a).reshape(-1).view(np.uint8), pb.data, comp, m, n, a.shape[1], kp4, k4_lo, k4_hi,
                          mb_panels, jc_panels, KC4, nt, threads, c, out, *args)
    else:
        mpan, npan = (m + MRG - 1) // MRG, (n + NRG - 1) // NRG
        # the A block holds int16: twice the bytes per K group of the VNNI path
        mb_panels, jc_panels = _vnni_schedule(mpan, npan, 2 * (k4_hi - k4_lo), threads, MRG, NRG)
        _generic_gemm_kernel(np.ascontiguousarray(a).reshape(-1), pb.pair_panels(), m, n, a.shape[1], 2 * kp4,
                             2 * k4_lo, 2 * k4_hi, mb_panels, jc_panels, KC2G, threads, c, out, *args)
    return res.reshape(m, n)


@njit(cache=True)
def _chunk_colsum_kernel(bp, n, kp4, k4_lo, k4_hi, out):  # pragma: no cover - compiled
    """out[j] = -128 * sum of packed column j over K groups [k4_lo, k4_hi) (int32, wrapping)."""
    npan = (n + NR - 1) // NR
    for jp in range(npan):
        for jj in range(NR):
            s = 0
            for k4 in range(k4_lo, k4_hi):
                q = (jp * kp4 + k4) * NR * 4 + 4 * jj
                s += np.int64(bp[q]) + np.int64(bp[q + 1]) + np.int64(bp[q + 2]) + np.int64(bp[q + 3])
            out[jp * NR + jj] = np.int32(-128 * s)


def _coerce_b(b, k: int) -> PackedInt8:
    if isinstance(b, PackedInt8):
        if b.k != k:
            raise ValueError(f"b: inner dimension mismatch, a has K={k} columns but packed b has K={b.k} rows")
        return b
    b = as_array(b, "b", dtype=np.int8, ndim=2)
    if b.shape[0] != k:
        raise ValueError(f"b: inner dimension mismatch, a is (M, {k}) but b is {b.shape} (expected ({k}, N))")
    return _pack_checked(b, k, b.shape[1], False)


def _gemm_exact(a: np.ndarray, pb: PackedInt8, path: str) -> np.ndarray:
    """int32 result, or int64 when K * max|a| * max|b| could exceed int32 (then K is split into safe chunks)."""
    k = pb.k
    kp4 = (k + 3) // 4
    bound = k * 128 * max(pb.max_abs, 1)
    max_a = 0
    if bound > config.INT32_MAX and a.size:
        max_a = int(np.abs(a.astype(np.int16)).max())
        bound = k * max_a * pb.max_abs
    if bound <= config.INT32_MAX:
        return _run(a, pb, path, 0, kp4, pb.comp)
    # widen: chunks of K whose int32 sums cannot overflow, accumulated in int64
    per_k = max(max_a * pb.max_abs, 1)
    chunk4 = max(1, (config.INT32_MAX // per_k) // 4)
    out = np.zeros((a.shape[0], pb.n), dtype=np.int64)
    comp = np.empty_like(pb.comp)
    for lo in range(0, kp4, chunk4):
        hi = min(kp4, lo + chunk4)
        _chunk_colsum_kernel(pb.data, pb.n, kp4, lo, hi, comp)
        out += _run(a, pb, path, lo, hi, comp)
    return out


def int8_gemm(a, b, *, path: str | None = None) -> np.ndarray:
    """Exact INT8 x INT8 matrix product ``a @ b`` with integer accumulation.

    Parameters
    ----------
    a : numpy.ndarray of int8, shape (M, K)
        Row-major activations (non-contiguous views are copied).
    b : numpy.ndarray of int8, shape (K, N), or PackedInt8
        Weights, raw (packed on every call) or packed once by :func:`pack_int8` (the fast, reusable form).
    path : {"vnni", "generic"} or None
        Kernel implementation; None picks the default of this host (``MEMWALL_ISA``, CPU features).

    Returns
    -------
    numpy.ndarray, shape (M, N)
        int32, bit-identical to ``(a.astype(int64) @ b.astype(int64))``.  When ``K * max|a| * max|b|`` exceeds
        ``2**31 - 1`` the int32 accumulation could wrap, so K is split into chunks that cannot, the chunks are
        summed in int64, and the result is **int64** (only possible for K > 131071).

    Raises
    ------
    TypeError
        ``a`` or ``b`` not an int8 array (or ``b`` not a PackedInt8).
    ValueError
        Not 2-D, inner dimensions differ, unknown ``path``.
    """
    p = _resolve_path(path)
    a = as_array(a, "a", dtype=np.int8, ndim=2)
    pb = _coerce_b(b, a.shape[1])
    return _gemm_exact(a, pb, p)


# ==================================================================================================
# fused dequantizing epilogue: a quantized Linear in one call
# ==================================================================================================
def _float_vec(v, name: str, length: int, *, positive: bool, default: float | None = None) -> np.ndarray:
    """A scalar or a (length,) array as float32 (length,); scales must be finite and > 0."""
    if v is None:
        if default is None:
            raise TypeError(f"{name}: expected a number or a 1-D array of length {length}, got None")
        return np.full(length, default, dtype=np.float32)
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a real number or a float array, got bool")
    # a scalar within float32 range (NaN fails the test): checked once, not per entry; anything else takes
    # the general path, which names the problem
    if isinstance(v, (int, float, np.integer, np.floating)) and -3.4e38 < v < 3.4e38:
        f = np.float32(v)
        if f > 0 or not positive:
            return np.full(length, f, dtype=np.float32)
    arr = as_array(v, name, dtype=np.float32, ndim=(0, 1), allow_convert=True)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got {arr.dtype.name}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 0:
        arr = np.full(length, arr, dtype=np.float32)
    elif arr.shape[0] != length:
        raise ValueError(f"{name}: expected a scalar or shape ({length},), got shape {arr.shape}")
    if positive:
        check_positive(arr, name)
    else:
        check_finite(arr, name)
    return np.ascontiguousarray(arr)


def _require_float(x, name: str) -> None:
    """Float arrays (any precision) only: integer data here is almost always the wrong argument."""
    kind = x.dtype.kind if isinstance(x, np.ndarray) else np.asarray(x).dtype.kind
    if kind != "f":
        dt = x.dtype.name if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{name}: expected a float array (float32; float16/float64 are converted), got {dt}")


def _int_vec(v, name: str, length: int) -> np.ndarray:
    """None, an integer or a (length,) integer array as int32 (length,)."""
    if v is None:
        return np.zeros(length, dtype=np.int32)
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer or an integer array, got bool")
    arr = np.asarray(v)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer zero points, got dtype {arr.dtype.name}")
    if arr.ndim not in (0, 1):
        raise ValueError(f"{name}: expected a scalar or a 1-D array, got shape {arr.shape}")
    check_range(arr, name, -(2**31), 2**31 - 1)
    if arr.ndim == 0:
        return np.full(length, int(arr), dtype=np.int32)
    if arr.shape[0] != length:
        raise ValueError(f"{name}: expected a scalar or shape ({length},), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def int8_gemm_dequant(a, b, a_scale, b_scale, *, a_zero_point=None, b_zero_point=None, bias=None,
                      path: str | None = None) -> np.ndarray:
    """INT8 GEMM with a fused dequantizing epilogue (a quantized ``Linear``): float32 result.

    ``out[i, j] = a_scale[i] * b_scale[j] * sum_k (a[i, k] - a_zp[i]) * (b[k, j] - b_zp[j]) + bias[j]``,
    computed as the exact int32 product plus integer zero-point corrections (int64), converted once to
    float32 while each output tile is still in L1.

    Parameters
    ----------
    a : int8 (M, K)
        Quantized activations (e.g. per-token, from :func:`memwall.kernels.quant.quantize_rows_int8`).
    b : int8 (K, N) or PackedInt8
        Quantized weights (pack once with :func:`pack_int8`; ``layout="nk"`` for (out, in) weights).
    a_scale : float or float array (M,)
        Per-tensor or per-row (per-token) scales, finite and > 0.
    b_scale : float or float array (N,)
        Per-tensor or per-column (per-output-channel) scales, finite and > 0.
    a_zero_point, b_zero_point : int, int array of length M / N, or None (symmetric)
    bias : float array (N,) or None
    path : {"vnni", "generic"} or None

    Returns
    -------
    float32 (M, N).
    """
    p = _resolve_path(path)
    a = as_array(a, "a", dtype=np.int8, ndim=2)
    m, k = a.shape
    pb = _coerce_b(b, k)
    n = pb.n
    sa = _float_vec(a_scale, "a_scale", m, positive=True)
    sb = _float_vec(b_scale, "b_scale", n, positive=True)
    za = _int_vec(a_zero_point, "a_zero_point", m)
    zb = _int_vec(b_zero_point, "b_zero_point", n)
    bias_v = _float_vec(bias, "bias", n, positive=False, default=0.0)
    return _dequant_product(a, pb, p, sa, za, sb, zb, bias_v)


def _dequant_product(a, pb, path, sa, za, sb, zb, bias_v, has_zp: bool | None = None) -> np.ndarray:
    """The dequantizing product; ``has_zp``: whether any zero point is nonzero (None: computed here)."""
    m, k = a.shape
    if has_zp is None:
        has_zp = bool(za.any() or zb.any())
    rsa = a.sum(axis=1, dtype=np.int64) if has_zp else _EMPTY_I64
    csb = pb.colsum if has_zp else _EMPTY_I64
    kp4 = (k + 3) // 4
    bound = k * 128 * max(pb.max_abs, 1)
    if bound > config.INT32_MAX and a.size:
        bound = k * int(np.abs(a.astype(np.int16)).max()) * pb.max_abs
    if bound <= config.INT32_MAX:
        epi = _Epilogue(sa, za, rsa, sb, zb, csb, bias_v, has_zp)
        return _run(a, pb, path, 0, kp4, pb.comp, epi)
    # exact int64 product (K split into safe chunks), epilogue in NumPy
    c = _gemm_exact(a, pb, path).astype(np.int64)
    if has_zp:
        z_a = za.astype(np.int64)[:, None]
        z_b = zb.astype(np.int64)[None, :]
        c = c - z_a * pb.colsum[None, :] - z_b * rsa[:, None] + k * z_a * z_b
    return (c.astype(np.float64) * (sa[:, None].astype(np.float64) * sb[None, :]) + bias_v).astype(np.float32)


# ==================================================================================================
# packed Linear weights: INT8 per channel, INT4 with group scales
# ==================================================================================================
class PackedWeights:
    """Quantized, packed weights of a ``Linear`` layer (``w`` float32 (out, in)), built by :func:`pack_weights`.

    Attributes
    ----------
    bits : 8 or 4
    out_features, in_features : N and K.
    group_size : K per scale (per output channel: ``group_size == in_features``).
    symmetric : zero points all 0 when True.
    scale : float32 (N,) for 8 bits, (N, K // group_size) for 4 bits.
    zero_point : int32, same shape as ``scale``.
    q8 : int8 (N, K) weights (8 bits) -- read by the weight-only GEMV;
    q4 : uint8 (N, ceil(K / 2)) two signed nibbles per byte (4 bits; element 2i in the low nibble; the
        :func:`memwall.kernels.quant.pack_int4` format).  Internally the kernels stream ``q4 ^ 0x88``
        (offset-binary nibbles ``v + 8`` in [0, 15]: no sign extension in the inner loop);
    int8 : PackedInt8 panels for the VNNI GEMM (8 bits; for 4 bits built on first W4A8 use).
    nbytes : bytes of the packed weights plus scales and zero points (what a GEMV streams).
    """

    def __init__(self, bits, n, k, group_size, symmetric, scale, zero_point, q8=None, q4=None, int8=None):
        # O(1) structure checks (built by pack_weights / pack_quantized; a hand-built object must not reach the
        # kernels with arrays shorter than (n, k) says)
        check_choice(bits, "bits", (8, 4))
        n, k = check_int(n, "n", minimum=0), check_int(k, "k", minimum=0)
        group_size = check_int(group_size, "group_size", minimum=1) if k else group_size
        if k and k % group_size:
            raise ValueError(f"group_size: {group_size} does not divide in_features={k}")
        sshape = (n,) if bits == 8 else (n, k // group_size if k else 0)
        for arr, name, dt in ((scale, "scale", np.float32), (zero_point, "zero_point", np.int32)):
            if not isinstance(arr, np.ndarray) or arr.dtype != dt or arr.shape != sshape:
                raise ValueError(f"PackedWeights {name}: expected {np.dtype(dt).name} of shape {sshape}")
        if bits == 8:
            if not isinstance(q8, np.ndarray) or q8.dtype != np.int8 or q8.shape != (n, k):
                raise ValueError(f"PackedWeights q8: expected int8 of shape {(n, k)} (build it with pack_weights)")
            if int8 is not None and (not isinstance(int8, PackedInt8) or (int8.k, int8.n) != (k, n)):
                raise ValueError(f"PackedWeights int8: expected PackedInt8 with k={k}, n={n}")
        elif not isinstance(q4, np.ndarray) or q4.dtype != np.uint8 or q4.shape != (n, (k + 1) // 2):
            raise ValueError(f"PackedWeights q4: expected uint8 of shape {(n, (k + 1) // 2)} (build it with "
                             "pack_weights)")
        self.bits, self.out_features, self.in_features = bits, n, k
        self.group_size, self.symmetric = group_size, symmetric
        self.scale, self.zero_point = scale, zero_point
        self.q8, self._int8 = q8, int8
        self._q4u = None if q4 is None else np.ascontiguousarray(q4 ^ np.uint8(0x88))
        self._group_comp = None
        self._zp_used = bool(zero_point.any())
        # INT4 kernels subtract (zero_point + 8) * sum(x over the group) once per group
        self._zp8 = (zero_point.astype(np.float32) + np.float32(8.0)) if bits == 4 else None

    @property
    def q4(self):
        """The packed INT4 weights in the documented two's-complement nibble format (None for 8 bits)."""
        return None if self._q4u is None else self._q4u ^ np.uint8(0x88)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def n_groups(self) -> int:
        return 1 if self.bits == 8 else self.scale.shape[1]

    @property
    def int8(self) -> PackedInt8:
        if self._int8 is None:
            from .quant import unpack_int4

            self._int8 = pack_int8(unpack_int4(self.q4, self.in_features), layout="nk")
        return self._int8

    @property
    def nbytes(self) -> int:
        w = self.q8 if self.bits == 8 else self._q4u
        zp = self.zero_point.nbytes if self._zp_used else 0
        return int(w.nbytes + self.scale.nbytes + zp)

    def dequantize(self) -> np.ndarray:
        """float32 (out, in) weights as the kernels see them."""
        if self.bits == 8:
            return ((self.q8.astype(np.float32) - self.zero_point[:, None]) * self.scale[:, None]).astype(np.float32)
        from .quant import unpack_int4

        q = unpack_int4(self.q4, self.in_features).astype(np.float32)
        g = self.group_size
        q = q.reshape(self.out_features, -1, g)
        return ((q - self.zero_point[:, :, None]) * self.scale[:, :, None]).reshape(self.shape).astype(np.float32)

    def __repr__(self) -> str:
        return (f"PackedWeights(bits={self.bits}, out={self.out_features}, in={self.in_features}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, nbytes={self.nbytes})")


def pack_weights(w, bits: int = 8, group_size: int | None = None, symmetric: bool = True) -> PackedWeights:
    """Quantize float32 ``Linear`` weights ``w`` (out, in) and pack them for :func:`quantized_linear`.

    Parameters
    ----------
    w : float array (out, in); other float dtypes converted, non-contiguous copied; must be finite.
    bits : 8 or 4
        8: per-output-channel INT8 scales (``group_size`` must be None or ``in``), packed for the VNNI
        GEMM (W8A8) and kept row-major for the weight-only GEMV.  4: INT4 with one scale (and zero point
        when asymmetric) per group of ``group_size`` input features (None: one group per output channel),
        two nibbles per byte (:func:`memwall.kernels.quant.pack_int4` order).
    group_size : int or None
        Must be > 0 and divide ``in``; for 4 bits it must be even unless it equals ``in``.
    symmetric : bool
        Symmetric (zero point 0) or asymmetric (min-max with zero points) quantization.

    Returns
    -------
    PackedWeights
    """
    from .quant import pack_int4, quantize

    if isinstance(bits, (bool, np.bool_)) or bits not in (8, 4):
        raise ValueError(f"bits: expected 8 or 4, got {bits!r}")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
    _require_float(w, "w")
    w = as_array(w, "w", dtype=np.float32, ndim=2, allow_convert=True)
    check_finite(w, "w")
    n, k = w.shape
    if n == 0 or k == 0:
        raise ValueError(f"w: expected a non-empty (out, in) matrix, got shape {w.shape}")
    if group_size is not None:
        group_size = check_int(group_size, "group_size", minimum=1)
        if k % group_size:
            raise ValueError(f"group_size: expected a divisor of in_features={k}, got {group_size}")
    if bits == 8:
        if group_size not in (None, k):
            raise ValueError(f"group_size: INT8 weights use one scale per output channel; expected None or {k}, "
                             f"got {group_size}")
        qt = quantize(w, bits=8, symmetric=bool(symmetric), axis=0)
        q8 = np.ascontiguousarray(qt.values)
        scale = np.ascontiguousarray(qt.scale.reshape(n), dtype=np.float32)
        zp = np.ascontiguousarray(qt.zero_point.reshape(n), dtype=np.int32)
        return PackedWeights(8, n, k, k, bool(symmetric), scale, zp, q8=q8, int8=pack_int8(q8, layout="nk"))
    g = k if group_size is None else group_size
    if g != k and g % 2:
        raise ValueError(f"group_size: INT4 groups must hold whole bytes (two nibbles); expected an even "
                         f"divisor of {k} or {k}, got {g}")
    qt = quantize(w, bits=4, symmetric=bool(symmetric), group_size=g)
    q4 = pack_int4(qt.values)
    scale = np.ascontiguousarray(qt.scale.reshape(n, k // g), dtype=np.float32)
    zp = np.ascontiguousarray(qt.zero_point.reshape(n, k // g), dtype=np.int32)
    return PackedWeights(4, n, k, g, bool(symmetric), scale, zp, q4=q4)


# ==================================================================================================
# weight-only kernels: GEMV (one token, bandwidth-bound) and blocked dequantization for batches
# ==================================================================================================
@njit(parallel=True, fastmath=True, cache=True)
def _int4_gemv_kernel(xe, xo, xgs, q4u, scale, zp8, bias, out, gb):  # pragma: no cover - compiled
    """out[j] = sum_g scale[j,g] * (sum_{i in g} xe[i]*lo(q4u[j,i]) + xo[i]*hi(q4u[j,i]) - zp8[j,g]*xgs[g]) + bias[j].

    ``q4u`` holds offset-binary nibbles (v + 8 in [0, 15]), so the inner loop only converts the byte, splits
    it exactly in float32 (hi = floor(b / 16), lo = b - 16 hi) and multiplies; the -8 and the zero point come back once per group through ``zp8 = zero_point + 8`` and
    the group sums ``xgs`` of x.  xe/xo are the even/odd entries of x so that byte i meets x[2i] (low nibble)
    and x[2i+1] (high nibble).  Rows are owned by one thread each and streamed once (bandwidth-bound)."""
    n = q4u.shape[0]
    ngroups = scale.shape[1]
    for j in prange(n):
        row = q4u[j]
        tot = np.float32(0.0)
        for g in range(ngroups):
            acc = np.float32(0.0)
            for i in range(g * gb, (g + 1) * gb):
                u = np.uint64(i)  # unsigned index: no negative-index wraparound select (keeps the loop vectorized)
                bf = np.float32(row[u])  # both nibbles split in float32 lanes (integer ops would widen to int64)
                hi = np.floor(bf * np.float32(0.0625))
                acc += xe[u] * (bf - np.float32(16.0) * hi) + xo[u] * hi
            tot += scale[j, g] * (acc - zp8[j, g] * xgs[g])
        out[j] = tot + bias[j]


#: ``act_quant="int16"``: each activation group is rounded to ``sx * v`` with ``sx = max|x_g| / A16_QMAX`` and an
#: integer ``|v| <= A16_QMAX``; the A16 GEMV splits ``v = 256 h + l`` into int8 parts, and 32384 is the largest
#: bound that keeps ``h`` in [-127, 127] for every ``l`` in [-128, 127]
A16_QMAX = 32384


@njit(fastmath=True, cache=True)
def _a16_prep(x, g, xa, corr, sx, xgs, xr):  # pragma: no cover - compiled
    """Round x (K,) to 16-bit fixed point per group of ``g`` inputs (:data:`A16_QMAX`, round half to even).

    Fills ``sx[gi]`` (float32 step ``max|x_g| / A16_QMAX``), ``xr`` (the rounded activations ``sx * v``,
    float32), ``xgs[gi] = sx * sum v`` and, for the VNNI kernel, the int8 parts of ``v = 256 h + l`` in ``xa``
    (per 64-byte weight chunk ``c``: ``[h even | h odd | l even | l odd]``, 64 bytes each; inputs ``2i`` and
    ``2i + 1`` at byte ``i % 64`` of chunk ``i // 64``; ``len(xa) >= 256 * ceil(K / 128)``) and
    ``corr[32 gi]``, ``corr[32 gi + 16]`` = ``-8 * sum h``, ``-8 * sum l`` (the weights' offset-binary -8).  x
    must be finite (the group maximum is taken on the bit patterns).  Loops laid out to vectorize (~6 us at
    K=4096)."""
    k = x.shape[0]
    v = np.zeros(len(xa) // 2, dtype=np.int32)
    qmax = np.float32(A16_QMAX)
    xi = x.view(np.int32)
    bits = np.zeros(1, dtype=np.int32)
    for gi in range(sx.shape[0]):
        lo = np.uint64(gi * g)
        hi = np.uint64(min(k, gi * g + g))
        # max |x| on the bit patterns: for finite floats without sign the integer order is the float order, and
        # the integer max reduction vectorizes (the float one does not: ~2x slower)
        mb = np.int32(0)
        for kk in range(lo, hi):  # unsigned indices: no negative-index wraparound, so the loops vectorize
            mb = max(mb, xi[kk] & np.int32(0x7FFFFFFF))
        bits[0] = mb
        m = bits.view(np.float32)[0]
        step = np.float32(np.float64(m) / A16_QMAX)
        inv = np.float32(1.0 / np.float64(step)) if step > 0 else np.float32(0.0)
        for kk in range(lo, hi):
            q = min(qmax, max(-qmax, np.rint(x[kk] * inv)))
            v[kk] = np.int32(q)
            xr[kk] = step * q
        sum_h = np.int32(0)  # |sums| <= 128 * g: int32 for any group below 16M inputs
        sum_l = np.int32(0)
        for kk in range(lo, hi):
            vi = v[kk]
            low = ((vi + np.int32(128)) & np.int32(255)) - np.int32(128)
            sum_h += (vi - low) >> np.int32(8)
            sum_l += low
        sx[gi] = step
        xgs[gi] = step * np.float32(256 * np.int64(sum_h) + np.int64(sum_l))
        # -8 * sum v = 256 * (-8 * sum h) + (-8 * sum l): the two accumulators' starting lane 0
        corr[32 * gi] = -8 * sum_h
        corr[32 * gi + 16] = -8 * sum_l
    for c in range(np.uint64(len(xa) // 256)):
        for j in range(np.uint64(64)):
            ve = v[np.uint64(128) * c + np.uint64(2) * j]
            vo = v[np.uint64(128) * c + np.uint64(2) * j + np.uint64(1)]
            le = ((ve + np.int32(128)) & np.int32(255)) - np.int32(128)
            lo_ = ((vo + np.int32(128)) & np.int32(255)) - np.int32(128)
            o = np.uint64(256) * c + j
            xa[o] = (ve - le) >> np.int32(8)
            xa[o + np.uint64(64)] = (vo - lo_) >> np.int32(8)
            xa[o + np.uint64(128)] = le
            xa[o + np.uint64(192)] = lo_


#: rows per GEMV task: concurrent DRAM streams per thread, and the x vectors of a step loaded once for all of
#: them.  With a static split, 8 rows were 6-12% faster than 4 (float path) and ~4% (A16); with the work ranges
#: below, 4 rows are faster (4096x4096 g128 cold, 2 threads, interleaved with NumPy, 3 runs: float path
#: 4.8-5.0x -> 5.0-5.5x, A16 5.3-5.5x -> 6.3x; 2 rows as 4)
_GEMV_RB = 4
#: software prefetch distance of the INT4 GEMV, in rows (one line per row and group, 32 KB ahead at K = 4096;
#: 8 and 24 rows measured within noise of 16)
_GEMV_PF_ROWS = 16
#: tasks per item of the INT4 GEMV's work ranges (:func:`._sched.next_task`): 16 rows.  Measured (8-row tasks)
#: cold at 4096^2, interleaved with NumPy, 2 threads, three runs: 5.0 / 5.2 / 5.4x with a static split in halves
#: (float activations, A16), 4.7 / 4.9 / 5.1x with one queue of 128-row items, 5.2 / 5.5 / 5.8x with these ranges
_GEMV_CHUNK = 4

if has_avx512_vnni():
    from ._wo_ir import make_int4_rows, make_int4_rows_a16

    # signed lookup (the table holds u - 8, the weight values) and one accumulator per row and group: measured
    # 7% faster than the unsigned table + zero-point term and two accumulators (interleaved, 2 threads)
    _int4_rows_blk = make_int4_rows(_GEMV_RB, signed=True, one_acc=True)
    _int4_rows_one = make_int4_rows(1, signed=True, one_acc=True)

    @njit(inline="always")
    def _gemv_rows_epilogue(out, j0, j1, has_zp, scale, zp8, xgs, bias):  # pragma: no cover - compiled
        """out[j] += bias[j] - sum_g scale[j, g] * zero_point[j, g] * xgs[g] for rows [j0, j1) (zero_point =
        zp8 - 8; the IR kernels' lookups or integer sums already hold the weights' -8 offset; an empty bias:
        none)."""
        has_bias = bias.shape[0] > 0
        for j in range(j0, j1):
            c = np.float32(0.0)
            if has_zp:
                for g in range(scale.shape[1]):
                    c += scale[j, g] * (zp8[j, g] - np.float32(8.0)) * xgs[g]
            out[j] = out[j] - c + (bias[j] if has_bias else np.float32(0.0))

    @njit(inline="always")
    def _first_nonfinite(x):  # pragma: no cover - compiled
        """Index of the first NaN/Inf of float32 x, or -1: an integer test of the exponent bits, which the
        kernels' fastmath cannot assume away."""
        xi = x.view(np.int32)
        m = np.int32(0)
        for i in range(np.uint64(xi.shape[0])):  # a max reduction (vectorizes), the search only when needed
            m = max(m, xi[i] & np.int32(0x7FFFFFFF))
        if m < np.int32(0x7F800000):
            return -1
        for i in range(xi.shape[0]):
            if (xi[i] & 0x7F800000) == 0x7F800000:
                return i
        return -1

    _a16_rows_blk = make_int4_rows_a16(_GEMV_RB)
    _a16_rows_one = make_int4_rows_a16(1)

    @njit(parallel=True, fastmath=True, cache=True)
    def _int4_gemv_zmm_kernel(x, g, q4u, scale, zp8, has_zp, bias, out, gb, a16, workers):  # pragma: no cover
        """INT4 GEMV rows in explicit zmm IR, one compiled call per token (the Python side between two GEMVs
        runs with the caches the weights evicted, so it stays small).

        Float activations (``a16 == 0``; ``gb % 16 == 0``, so ``nb % 16 == 0``): x is split into its even/odd
        entries and group sums (:func:`_gemv_split_kernel`, groups of ``g``) and the rows run on
        :func:`._wo_ir.make_int4_rows` (nibbles decoded by ``vpermps`` lookups of their signed values, group
        sums kept as vectors and scaled by a broadcast, one horizontal sum per row).  A16 (``a16 == 1``;
        ``gb % 64 == 0``): x is rounded by :func:`_a16_prep` (groups of ``g``) and the rows run on
        :func:`._wo_ir.make_int4_rows_a16` (nibbles x 16-bit fixed-point activations on ``vpdpbusd``).

        ``_GEMV_RB`` rows per task with a software prefetch ``_GEMV_PF_ROWS`` rows ahead; ``workers`` threads take
        ``_GEMV_CHUNK`` tasks at a time, from their own range of rows first (:func:`._sched.next_task`).
        Asymmetric weights (``has_zp``) subtract ``scale * zero_point * xgs`` (zero_point = zp8 - 8) per (row,
        group).  Returns -1, or the index of the first non-finite entry of x (then nothing is computed:
        :func:`_first_nonfinite`)."""
        bad = _first_nonfinite(x)
        if bad >= 0:
            return bad
        n, nb = q4u.shape
        ngroups = scale.shape[1]
        fl = 0 if a16 else 1
        xe = np.empty(nb * fl, dtype=np.float32)
        xo = np.empty(nb * fl, dtype=np.float32)
        xa = np.empty(4 * nb * (1 - fl), dtype=np.int8)
        corr = np.empty(32 * ngroups * (1 - fl), dtype=np.int32)
        for i in range(corr.shape[0]):  # not np.zeros: in a parallel kernel that is one more pool launch
            corr[i] = 0
        sx = np.empty(ngroups * (1 - fl), dtype=np.float32)
        xr = np.empty(x.shape[0] * (1 - fl), dtype=np.float32)
        xgs = np.empty(ngroups, dtype=np.float32)
        if a16:
            _a16_prep(x, g, xa, corr, sx, xgs, xr)
        else:
            _gemv_split_kernel(x, g, xe, xo, xgs)
        qf = q4u.reshape(n * nb)
        sf = scale.reshape(n * ngroups)
        nblk = n // _GEMV_RB
        ntask = nblk + 1
        nw = chunk_workers(ntask, _GEMV_CHUNK, workers)
        queue = task_queues(nw)
        for w in prange(nw):
            ta, tb, done = next_chunk(queue, w, nw, ntask, _GEMV_CHUNK, 0)
            while ta < ntask:
                for t in range(ta, tb):
                    j0 = t * _GEMV_RB
                    if t < nblk:
                        pf = _GEMV_PF_ROWS * nb if j0 + _GEMV_PF_ROWS + _GEMV_RB <= n else 0
                        if a16:
                            _a16_rows_blk(qf, j0 * nb, nb, xa, corr, sx, sf, j0 * ngroups, ngroups, gb, pf, out, j0)
                        else:
                            _int4_rows_blk(qf, j0 * nb, nb, xe, xo, sf, j0 * ngroups, ngroups, gb, pf, out, j0)
                        j1 = j0 + _GEMV_RB
                    else:
                        for j in range(j0, n):
                            if a16:
                                _a16_rows_one(qf, j * nb, nb, xa, corr, sx, sf, j * ngroups, ngroups, gb, 0, out, j)
                            else:
                                _int4_rows_one(qf, j * nb, nb, xe, xo, sf, j * ngroups, ngroups, gb, 0, out, j)
                        j1 = n
                    _gemv_rows_epilogue(out, j0, j1, has_zp, scale, zp8, xgs, bias)
                ta, tb, done = next_chunk(queue, w, nw, ntask, _GEMV_CHUNK, done)
        return -1


if has_avx512_vnni():
    from ._wo_ir import make_int8_rows

    _int8_rows_blk = make_int8_rows(_GEMV_RB)
    _int8_rows_one = make_int8_rows(1)
    _int8_rows_blk2 = make_int8_rows(_GEMV_RB, 2)
    _int8_rows_one2 = make_int8_rows(1, 2)

    @njit(parallel=True, fastmath=True, cache=True)
    def _int8_wo_rows_kernel(x, xs, q8, scale, zp, has_zp, bias, out, workers):  # pragma: no cover - compiled
        """out (M, N) = x (M, K) @ W^T + bias for INT8 weights and few tokens, on the zmm IR rows
        (:func:`._wo_ir.make_int8_rows`): ``_GEMV_RB`` rows per task, two tokens per pass over them (the rows stay
        in L1/L2 for the next pair), with the INT4 GEMV's work ranges and L2 prefetch ``_GEMV_PF_ROWS`` rows ahead
        (first pass).  The tail of each row past the last whole 16 bytes, the zero point (``xs``: token sums),
        scale and bias here."""
        m, k = x.shape
        n = q8.shape[0]
        k16 = k // 16 * 16
        qf = q8.reshape(n * k)
        xf = x.reshape(m * k)
        of = out.reshape(m * n)
        nblk = n // _GEMV_RB
        ntask = nblk + 1
        nw = chunk_workers(ntask, _GEMV_CHUNK, workers)
        queue = task_queues(nw)
        for w in prange(nw):
            ta, tb, done = next_chunk(queue, w, nw, ntask, _GEMV_CHUNK, 0)
            while ta < ntask:
                for t in range(ta, tb):
                    j0 = t * _GEMV_RB
                    j1 = min(n, j0 + _GEMV_RB)
                    for t0 in range(0, m, 2):
                        two = t0 + 2 <= m
                        xt = xf[t0 * k:]
                        if t < nblk:
                            pf = _GEMV_PF_ROWS * k if (t0 == 0 and j0 + _GEMV_PF_ROWS + _GEMV_RB <= n) else 0
                            if two:
                                _int8_rows_blk2(qf, j0 * k, k, k16, xt, k, pf, of, t0 * n + j0, n)
                            else:
                                _int8_rows_blk(qf, j0 * k, k, k16, xt, k, pf, of, t0 * n + j0, n)
                        else:
                            for j in range(j0, j1):
                                if two:
                                    _int8_rows_one2(qf, j * k, k, k16, xt, k, 0, of, t0 * n + j, n)
                                else:
                                    _int8_rows_one(qf, j * k, k, k16, xt, k, 0, of, t0 * n + j, n)
                    for j in range(j0, j1):
                        for tt in range(m):
                            acc = out[tt, j]
                            for i in range(k16, k):
                                acc += x[tt, i] * np.float32(q8[j, i])
                            if has_zp:
                                acc -= np.float32(zp[j]) * xs[tt]
                            out[tt, j] = scale[j] * acc + bias[j]
                ta, tb, done = next_chunk(queue, w, nw, ntask, _GEMV_CHUNK, done)


@njit(parallel=True, fastmath=True, cache=True)
def _int8_gemv_kernel(x, xs, q8, scale, zp, has_zp, bias, out):  # pragma: no cover - compiled
    """out[j] = scale[j] * (sum_k x[k] * q8[j, k] - zp[j] * sum(x)) + bias[j] (weight-only INT8, one token)."""
    n, k = q8.shape
    for j in prange(n):
        row = q8[j]
        acc = np.float32(0.0)
        for i in range(k):
            acc += x[i] * np.float32(row[i])
        if has_zp:
            acc -= np.float32(zp[j]) * xs
        out[j] = scale[j] * acc + bias[j]


#: output rows per task of the batched weight-only kernel (one float32 row buffer per task)
_WO_ROWS = 16


@njit(inline="always")
def _dequant4_row(q4row, scale_row, zp8_row, gb, k, w):  # pragma: no cover - compiled
    """float32 weights of one INT4 row (offset-binary nibbles, group scales, zero points + 8) into w."""
    nb = q4row.shape[0]
    for g in range(nb // gb):
        s = scale_row[g]
        z = zp8_row[g]
        for i in range(g * gb, (g + 1) * gb):
            u = np.uint64(i)
            bf = np.float32(q4row[u])
            hi = np.floor(bf * np.float32(0.0625))
            w[np.uint64(2) * u] = (bf - np.float32(16.0) * hi - z) * s
            w[np.uint64(2) * u + np.uint64(1)] = (hi - z) * s


@njit(inline="always")
def _dequant_weight_row(bits, q4u, q8, scale4, zp4, scale8, zp8, gb, j, k, w):  # pragma: no cover - compiled
    """w[:k] = float32 weight row j (INT4 with group scales / zero points, or INT8 per-channel)."""
    if bits == 4:
        _dequant4_row(q4u[j], scale4[j], zp4[j], gb, k, w)
    else:
        s = scale8[j]
        z = np.float32(zp8[j])
        for kk in range(k):
            w[kk] = (np.float32(q8[j, kk]) - z) * s


@njit(parallel=True, fastmath=True, cache=True)
def _weight_only_gemm_kernel(x, bits, q4u, q8, scale4, zp4, scale8, zp8, gb, bias, out):  # pragma: no cover
    """out (M, N) = x (M, K) @ W^T + bias for M > 1: each task dequantizes its weight rows one at a time
    into a float32 buffer (L1) and takes the dot products with every token, four tokens per pass."""
    m, k = x.shape
    n = out.shape[1]
    ntask = (n + _WO_ROWS - 1) // _WO_ROWS
    for t in prange(ntask):
        w = np.zeros(k + 2, dtype=np.float32)
        for j in range(t * _WO_ROWS, min(n, (t + 1) * _WO_ROWS)):
            _dequant_weight_row(bits, q4u, q8, scale4, zp4, scale8, zp8, gb, j, k, w)
            i0 = 0
            while i0 + 4 <= m:
                x0 = x[i0]
                x1 = x[i0 + 1]
                x2 = x[i0 + 2]
                x3 = x[i0 + 3]
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                s3 = np.float32(0.0)
                for kk in range(k):
                    wk = w[kk]
                    s0 += x0[kk] * wk
                    s1 += x1[kk] * wk
                    s2 += x2[kk] * wk
                    s3 += x3[kk] * wk
                out[i0, j] = s0 + bias[j]
                out[i0 + 1, j] = s1 + bias[j]
                out[i0 + 2, j] = s2 + bias[j]
                out[i0 + 3, j] = s3 + bias[j]
                i0 += 4
            for i in range(i0, m):
                xi = x[i]
                s0 = np.float32(0.0)
                for kk in range(k):
                    s0 += xi[kk] * w[kk]
                out[i, j] = s0 + bias[j]


@njit(parallel=True, cache=True)
def _dequant_rows_kernel(bits, q4u, q8, scale4, zp4, scale8, zp8, gb, r0, out):  # pragma: no cover - compiled
    """out[i] = dequantized weight row r0 + i (float32), for i in range(out.shape[0])."""
    rows, k = out.shape
    for i in prange(rows):
        w = np.empty(k + 2, dtype=np.float32)
        _dequant_weight_row(bits, q4u, q8, scale4, zp4, scale8, zp8, gb, r0 + i, k, w)
        for kk in range(k):
            out[i, kk] = w[kk]


#: output channels per dequantized weight panel of the fused batched INT4 kernel (two 8-row register tiles)
_WO_PANEL = 16
#: bytes of transposed activations (reduction slice x tokens) one K block of the fused kernel covers: they stay
#: in L1 while every weight panel of the thread passes
_WO_XT_BYTES = 16384
#: panels per super-block: the K loop runs over a super-block's panels (their output rows stay in L1/L2)
_WO_SUPER = 4
#: few-token kernel: tokens per pass (each decoded 16-byte weight step serves all of them) and rows per task
#: (measured 4096x4096 g128, 2 threads, interleaved: 4 rows x 2 tokens <= 3x4, 6x2, 5x2 < 2x4 < 1x8)
_WO_TOK = 2
_WO_TOK_ROWS = 4

if has_avx512_vnni():
    from ._vnni import prefetch as _prefetch
    from ._wo_ir import make_dequant4_panel, make_int4_rows_tokens, make_wo_tile

    _deq4_panel = make_dequant4_panel(_WO_PANEL)
    _deq4_row = make_dequant4_panel(1)
    _wo_tile_8x32 = make_wo_tile(8, 2)
    _wo_tile_16x16 = make_wo_tile(16, 1)

    @njit(inline="always")
    def _wo_panel_tiles(buf, ldb, xt, xo, mpad, kc, outt, c0):  # pragma: no cover - compiled
        """outt rows [c0, c0 + 16) += the dequantized panel ``buf`` (16 x kc, leading dimension ldb) @ the K block of
        ``xt`` at ``xo`` (kc x mpad): 8x32 register tiles across the tokens, a 16x16 one for an odd 16 left."""
        nv = mpad // 16
        j = 0
        while j + 2 <= nv:
            _wo_tile_8x32(buf, 0, ldb, xt, xo + 16 * j, mpad, kc, outt, c0 * mpad + 16 * j, mpad)
            _wo_tile_8x32(buf, 8 * ldb, ldb, xt, xo + 16 * j, mpad, kc, outt, (c0 + 8) * mpad + 16 * j, mpad)
            j += 2
        if j < nv:
            _wo_tile_16x16(buf, 0, ldb, xt, xo + 16 * j, mpad, kc, outt, c0 * mpad + 16 * j, mpad)

    @njit(inline="always")
    def _wo8_panel(qf, k, c0, n, k0, k1, kcb, scale, zp, buf, ldb):  # pragma: no cover - compiled
        """buf rows r < 16: ``(q - zp) * scale`` of INT8 weight row ``c0 + r`` over inputs [k0, k1) (zero rows
        past n), with a prefetch of each row's lines of the next K block."""
        kc = k1 - k0
        for r in range(_WO_PANEL):
            o = np.uint64(r * ldb)
            if c0 + r < n:
                sc = scale[c0 + r]
                zs = np.float32(zp[c0 + r]) * sc
                src = np.uint64((c0 + r) * k + k0)
                if k0 + kcb < k:  # this row's lines of the next K block
                    for ln in range(0, kcb, 64):
                        _prefetch(qf, src + np.uint64(kcb + ln))
                for i in range(np.uint64(kc)):
                    buf[o + i] = np.float32(qf[src + i]) * sc - zs
            else:
                for i in range(np.uint64(kc)):
                    buf[o + i] = np.float32(0.0)

    @njit(inline="always")
    def _wo4_panel(qf, nb, c0, n, b0, b1, kcb, gb, sf, zf, ng, buf, ldb):  # pragma: no cover - compiled
        """buf rows r < 16: the dequantized INT4 weight row ``c0 + r`` over bytes [b0, b1) (zero rows past n);
        a full panel prefetches its lines of the next K block."""
        if c0 + _WO_PANEL <= n:
            if b1 < nb:  # this panel's lines of the next K block (used after SUPER panels)
                for r in range(_WO_PANEL):
                    for ln in range(b1, min(nb, b1 + kcb), 64):
                        _prefetch(qf, (c0 + r) * nb + ln)
            _deq4_panel(qf, c0 * nb, nb, b0, b1, gb, sf, zf, c0 * ng, ng, buf, ldb)
        else:
            buf[:] = 0.0
            for r in range(n - c0):
                _deq4_row(qf, (c0 + r) * nb, nb, b0, b1, gb, sf, zf, (c0 + r) * ng, ng, buf[r * ldb:], ldb)

    @njit(parallel=True, fastmath=True, cache=True)
    def _wo_fused_kernel(xt, mpad, bits, q4u, q8, scale4, zp8_4, scale8, zp8, gb, kcb, nthr,
                         outt):  # pragma: no cover - compiled
        """outt (npad, mpad) += W (n, K) @ x^T for weight-only INT4 (``bits == 4``) or INT8 weights, fused: per K
        block of ``kcb`` bytes of the weight rows and panel of 16 output channels, the weights are dequantized
        into a small float32 panel (L1) and register tiles (:func:`._wo_ir.make_wo_tile`: 8 channels x 32 tokens
        or 16 x 16) multiply it with the transposed activations ``xt`` (mpad % 16 == 0).

        INT4 (q4u, group scales scale4, zero points + 8 zp8_4; gb % 16 == 0, nb % 16 == 0, kcb % 16 == 0): the
        nibbles are decoded by :func:`._wo_ir.make_dequant4_panel`; xt is (2 * nb, mpad) in chunk order.  INT8
        (q8, per-channel scale8 and zero points zp8): ``(q - zp) * scale`` in a vectorized loop; xt is (K, mpad).
        The other format's arrays are placeholders.  Tasks of ``_WO_SUPER`` panels (and their outt rows), taken by
        ``nthr`` threads from their own range first (:func:`._sched.next_task`); every output sums its terms in
        one fixed order, so the thread count does not change the bits."""
        four = bits == 4
        n = q4u.shape[0] if four else q8.shape[0]
        nbytes = q4u.shape[1] if four else q8.shape[1]  # bytes per weight row
        per = 2 if four else 1  # inputs per byte
        q4f = q4u.reshape(q4u.size)
        q8f = q8.reshape(q8.size)
        ng = scale4.shape[1]
        sf = scale4.reshape(scale4.size)
        zf = zp8_4.reshape(zp8_4.size)
        npan = (n + _WO_PANEL - 1) // _WO_PANEL
        ldb = per * kcb
        nsup = (npan + _WO_SUPER - 1) // _WO_SUPER
        queue = task_queues(nthr)
        for w in prange(nthr):
            buf = np.zeros(_WO_PANEL * ldb, dtype=np.float32)
            t, done = next_task(queue, w, nthr, nsup, 0)
            while t < nsup:
                s0 = t * _WO_SUPER
                for b0 in range(0, nbytes, kcb):
                    b1 = min(nbytes, b0 + kcb)
                    for p in range(s0, min(npan, s0 + _WO_SUPER)):
                        c0 = p * _WO_PANEL
                        if four:
                            _wo4_panel(q4f, nbytes, c0, n, b0, b1, kcb, gb, sf, zf, ng, buf, ldb)
                        else:
                            _wo8_panel(q8f, nbytes, c0, n, b0, b1, kcb, scale8, zp8, buf, ldb)
                        _wo_panel_tiles(buf, ldb, xt, per * b0 * mpad, mpad, per * (b1 - b0), outt, c0)
                t, done = next_task(queue, w, nthr, nsup, done)

    _int4_tok_rows = make_int4_rows_tokens(_WO_TOK_ROWS, _WO_TOK)
    _int4_tok_1 = make_int4_rows_tokens(1, 1)

    @njit(parallel=True, fastmath=True, cache=True)
    def _int4_tokens_kernel(xe, xo, xgs, q4u, scale, zp8, out, gb, workers):  # pragma: no cover - compiled
        """out (mpad, n) = x @ W^T (no bias) for few tokens: the GEMV kernel decoding each weight step once for
        ``_WO_TOK`` tokens (xe/xo: (mpad, nb) even/odd inputs, mpad % _WO_TOK == 0; xgs (mpad, ngroups)).
        ``_WO_TOK_ROWS`` rows per task (the x vectors of a step loaded once for all of them); gb % 16 == 0.  As
        in the one-token GEMV: ``workers`` threads take ``_GEMV_CHUNK`` tasks at a time from their own range of
        rows first (:func:`._sched.next_task`), and the first token pair prefetches each row's lines
        ``_GEMV_PF_ROWS`` rows ahead into L2 (was: a static split, 4 rows ahead into L1; cold 4096^2, 2 / 4
        tokens, 16 interleaved comparisons: within 1.5% in 11, 5% faster in 1, 14-23% faster in 4)."""
        n, nb = q4u.shape
        ngroups = scale.shape[1]
        mpad = xe.shape[0]
        qf = q4u.reshape(n * nb)
        sf = scale.reshape(n * ngroups)
        xef = xe.reshape(mpad * nb)
        xof = xo.reshape(mpad * nb)
        of = out.reshape(mpad * n)
        nblk = n // _WO_TOK_ROWS
        ntask = nblk + 1
        nw = chunk_workers(ntask, _GEMV_CHUNK, workers)
        queue = task_queues(nw)
        for w in prange(nw):
            ta, tb, done = next_chunk(queue, w, nw, ntask, _GEMV_CHUNK, 0)
            while ta < ntask:
                for t in range(ta, tb):
                    j0 = _WO_TOK_ROWS * t
                    j1 = min(n, j0 + _WO_TOK_ROWS)
                    for t0 in range(0, mpad, _WO_TOK):
                        if t < nblk:
                            pf = _GEMV_PF_ROWS * nb if (t0 == 0 and j0 + _GEMV_PF_ROWS + _WO_TOK_ROWS <= n) else 0
                            _int4_tok_rows(qf, j0 * nb, nb, xef[t0 * nb:], xof[t0 * nb:], nb, sf, j0 * ngroups,
                                           ngroups, gb, pf, of, t0 * n + j0, n)
                        else:
                            for tt in range(t0, t0 + _WO_TOK):
                                for j in range(j0, j1):
                                    _int4_tok_1(qf, j * nb, nb, xef[tt * nb:], xof[tt * nb:], nb, sf, j * ngroups,
                                                ngroups, gb, 0, of, tt * n + j, n)
                    for j in range(j0, j1):
                        for tt in range(mpad):
                            c = np.float32(0.0)
                            for g in range(ngroups):
                                c += scale[j, g] * zp8[j, g] * xgs[tt, g]
                            out[tt, j] -= c
                ta, tb, done = next_chunk(queue, w, nw, ntask, _GEMV_CHUNK, done)


def _wo_fused(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """x (M, K) float32 @ W^T for weight-only INT4 or INT8 on the fused AVX-512 path (:func:`_wo_fused_kernel`);
    INT4 needs ``bytes per row % 16 == 0`` and ``group bytes % 16 == 0`` (the caller checks)."""
    m, k = x.shape
    n = pw.out_features
    mpad = -(-m // 16) * 16
    if pw.bits == 4:
        nb = pw._q4u.shape[1]
        # activations transposed to (2 * nb, mpad) in chunk order: row 2i + 16h + l of step i (i % 16 == 0) is
        # input 2 * (i + l) + h (low nibbles of the step's 16 bytes first, then the high nibbles)
        xpad = np.zeros((mpad, 2 * nb), dtype=np.float32)
        xpad[:m, :k] = x
        xt = np.ascontiguousarray(xpad.reshape(mpad, nb // 16, 16, 2).transpose(1, 3, 2, 0)).reshape(-1)
        kcb = max(16, (_WO_XT_BYTES // (8 * mpad)) // 16 * 16)  # bytes of a weight row: 2 inputs each
        fmt = (pw._q4u, _EMPTY_I8_2D, pw.scale, pw._zp8, _EMPTY_F32, _EMPTY_I32, _group_bytes(pw))
    else:
        xt = np.zeros((k, mpad), dtype=np.float32)
        xt[:, :m] = x.T
        xt = xt.reshape(-1)
        kcb = max(16, (_WO_XT_BYTES // (4 * mpad)) // 16 * 16)
        fmt = (_EMPTY_U8_2D, pw.q8, _EMPTY_F32_2D, _EMPTY_F32_2D, pw.scale, pw.zero_point, 1)
    npad = -(-n // _WO_PANEL) * _WO_PANEL
    outt = np.zeros(npad * mpad, dtype=np.float32)
    nthr = max(1, min(num_threads(), npad // _WO_PANEL))
    _wo_fused_kernel(xt, mpad, pw.bits, *fmt, kcb, nthr, outt)
    y = outt.reshape(npad, mpad)[:n, :m].T + bias_v
    return np.ascontiguousarray(y, dtype=np.float32)


def _wo8_rows(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """x (M, K) float32 (C-contiguous) @ W^T + bias for INT8 weights and few tokens on the AVX-512 IR rows
    (:func:`_int8_wo_rows_kernel`)."""
    out = np.empty((x.shape[0], pw.out_features), dtype=np.float32)
    xs = x.sum(axis=1, dtype=np.float32)
    _int8_wo_rows_kernel(x, xs, pw.q8, pw.scale, pw.zero_point, pw._zp_used, bias_v, out, max(1, num_threads()))
    return out


def _wo4_tokens(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """x (M, K) float32 @ W^T for few tokens on the AVX-512 GEMV-style kernel (:func:`_int4_tokens_kernel`);
    needs ``group bytes % 16 == 0`` (the caller checks)."""
    m, k = x.shape
    n = pw.out_features
    nb = pw._q4u.shape[1]
    ng = pw.n_groups
    gb = nb if ng == 1 else pw.group_size // 2
    mpad = -(-m // _WO_TOK) * _WO_TOK
    xp = np.zeros((mpad, 2 * nb), dtype=np.float32)
    xp[:m, :k] = x
    xe = np.ascontiguousarray(xp[:, 0::2])
    xo = np.ascontiguousarray(xp[:, 1::2])
    xgs = xp[:, : ng * 2 * gb].reshape(mpad, ng, 2 * gb).sum(axis=2, dtype=np.float32)
    out = np.empty((mpad, n), dtype=np.float32)
    _int4_tokens_kernel(xe, xo, xgs, pw._q4u, pw.scale, pw._zp8, out, gb, max(1, num_threads()))
    y = out[:m]
    y += bias_v
    return y


#: tokens from which weight-only products dequantize blocks of weights and hand them to BLAS
WEIGHT_ONLY_BLAS_TOKENS = 16
#: INT4 weights on AVX-512: most tokens on the few-token GEMV-style kernel, and tokens from which blocks
#: dequantized for BLAS beat the fused kernel (4096x4096 g128, 2 threads, interleaved medians: tokens 5.1 ms vs
#: fused 5.4 ms at 12 tokens, fused 5.5 vs 6.4 at 16; fused 31 vs BLAS 43 ms at 128, 62 vs 60 at 256)
WEIGHT_ONLY_FEW_TOKENS = 12
WEIGHT_ONLY_FUSED_BLAS_TOKENS = 256
#: INT8 weights on AVX-512: up to this many tokens on the GEMV-style IR rows (:func:`_wo8_rows`, two tokens per
#: pass), then the fused panel kernel (below WEIGHT_ONLY_FUSED_BLAS_TOKENS).  Cold 4096x4096, 2 threads,
#: interleaved medians, rows vs fused: 2.84 vs 6.39 ms at 8 tokens, 5.55 vs 6.32 at 16, 7.15 vs 9.91 at 20, 8.57
#: vs 8.78 at 24, 12.4 vs 9.1 at 32 (the row-buffer kernel they replace took 3.1 / 4.1 / 6.9 ms at 2 / 4 / 8)
WEIGHT_ONLY_W8_FEW_TOKENS = 20
#: float32 bytes of one dequantized weight block on that path
_WO_BLOCK_BYTES = 16 << 20


def _weight_only_blas(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """Many tokens: dequantize row blocks of the weights (one parallel kernel each) and multiply with BLAS.

    The weights are then read once per block at the full GEMM rate of BLAS instead of once per four tokens by
    the row-buffer kernel; the price is the float32 block written and read back (L2/LLC sized)."""
    m = x.shape[0]
    n, k = pw.shape
    out = np.empty((m, n), dtype=np.float32)
    rows = max(1, min(n, _WO_BLOCK_BYTES // max(4 * k, 1)))
    buf = np.empty((rows, k), dtype=np.float32)
    gb = _group_bytes(pw) if pw.bits == 4 else 1
    for r0 in range(0, n, rows):
        blk = buf[: min(rows, n - r0)]
        if pw.bits == 4:
            _dequant_rows_kernel(4, pw._q4u, _EMPTY_I8_2D, pw.scale, pw._zp8, _EMPTY_F32, _EMPTY_I32, gb, r0, blk)
        else:
            _dequant_rows_kernel(8, _EMPTY_U8_2D, pw.q8, _EMPTY_F32_2D, _EMPTY_F32_2D, pw.scale, pw.zero_point,
                                 1, r0, blk)
        np.matmul(x, blk.T, out=out[:, r0:r0 + blk.shape[0]])
    out += bias_v
    return out


def _wo4_ir_ok(pw: PackedWeights) -> bool:
    """Whether the AVX-512 IR kernels can take these INT4 weights: the CPU has them (and ``MEMWALL_ISA`` does
    not force the generic path) and every 16-byte load stays inside one group of one packed row."""
    if _DEFAULT_PATH != "vnni":
        return False
    nb = pw._q4u.shape[1]
    gb = _group_bytes(pw)
    return nb % 16 == 0 and gb % 16 == 0


def _blocked_weight_only(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """x (M, K) float32 @ W^T for M > 1 (weight-only).

    INT4 on AVX-512 (:func:`_wo4_ir_ok`): up to ``WEIGHT_ONLY_FEW_TOKENS`` tokens on the GEMV-style kernel
    (:func:`_wo4_tokens`), then the fused dequantize-panel + register-tile GEMM (:func:`_wo_fused`), from
    ``WEIGHT_ONLY_FUSED_BLAS_TOKENS`` dequantized blocks handed to BLAS.  INT8 on AVX-512: the GEMV-style IR rows
    (:func:`_wo8_rows`) up to ``WEIGHT_ONLY_W8_FEW_TOKENS`` tokens, then the same fused kernel with INT8 panels
    (:func:`_wo_fused`), BLAS blocks from ``WEIGHT_ONLY_FUSED_BLAS_TOKENS``.  Otherwise (other CPUs, odd INT4
    group sizes): weight rows dequantized one by one inside the row-buffer kernel, or from
    ``WEIGHT_ONLY_BLAS_TOKENS`` tokens blocks handed to BLAS (:func:`_weight_only_blas`)."""
    m = x.shape[0]
    n, k = pw.shape
    if pw.bits == 4 and _wo4_ir_ok(pw):
        if m <= WEIGHT_ONLY_FEW_TOKENS:
            return _wo4_tokens(x, pw, bias_v)
        if m < WEIGHT_ONLY_FUSED_BLAS_TOKENS:
            return _wo_fused(x, pw, bias_v)
        return _weight_only_blas(x, pw, bias_v)
    if pw.bits == 8 and _DEFAULT_PATH == "vnni":
        if m <= WEIGHT_ONLY_W8_FEW_TOKENS:
            return _wo8_rows(x, pw, bias_v)
        if m < WEIGHT_ONLY_FUSED_BLAS_TOKENS:
            return _wo_fused(x, pw, bias_v)
        return _weight_only_blas(x, pw, bias_v)
    if m >= WEIGHT_ONLY_BLAS_TOKENS:
        return _weight_only_blas(x, pw, bias_v)
    out = np.empty((m, n), dtype=np.float32)
    if pw.bits == 4:
        gb = _group_bytes(pw)
        _weight_only_gemm_kernel(x, 4, pw._q4u, _EMPTY_I8_2D, pw.scale, pw._zp8, _EMPTY_F32, _EMPTY_I32,
                                 gb, bias_v, out)
    else:
        _weight_only_gemm_kernel(x, 8, _EMPTY_U8_2D, pw.q8, _EMPTY_F32_2D, _EMPTY_I32_2D, pw.scale,
                                 pw.zero_point, 1, bias_v, out)
    return out


_EMPTY_I8_2D = np.zeros((1, 1), dtype=np.int8)
_EMPTY_U8_2D = np.zeros((1, 1), dtype=np.uint8)
_EMPTY_F32_2D = np.zeros((1, 1), dtype=np.float32)
_EMPTY_I32_2D = np.zeros((1, 1), dtype=np.int32)


@njit(fastmath=True, cache=True)
def _gemv_split_kernel(x, g, xe, xo, xgs):  # pragma: no cover - compiled
    """xe/xo = even/odd entries of x (zero past its end), xgs[i] = sum of group i of x (g entries each).

    Unsigned indices and the odd tail apart, so both loops vectorize (~2 us at K=4096 instead of ~15)."""
    k = x.shape[0]
    half = np.uint64(k // 2)
    for i in range(half):
        xe[i] = x[np.uint64(2) * i]
        xo[i] = x[np.uint64(2) * i + np.uint64(1)]
    for i in range(half, np.uint64(xe.shape[0])):
        xe[i] = np.float32(0.0)
        xo[i] = np.float32(0.0)
    if k % 2:
        xe[half] = x[k - 1]
    for gi in range(xgs.shape[0]):
        s = np.float32(0.0)
        for kk in range(np.uint64(gi * g), np.uint64(min(k, (gi + 1) * g))):
            s += x[kk]
        xgs[gi] = s


def _group_bytes(pw: PackedWeights) -> int:
    """Packed bytes per INT4 weight group of a row (the whole row for one group)."""
    return pw._q4u.shape[1] if pw.n_groups == 1 else pw.group_size // 2


def _a16_group(pw: PackedWeights) -> int:
    """Inputs per activation group of the A16 rounding: the weight group, or the whole row for one group."""
    return pw.in_features if pw.n_groups == 1 else pw.group_size


def _round_a16(x2: np.ndarray, pw: PackedWeights) -> np.ndarray:
    """Every row of x2 (tokens, K) rounded to 16-bit fixed point per activation group, as float32."""
    g = _a16_group(pw)
    ng = -(-x2.shape[1] // g)
    xa, corr = np.empty(256 * (-(-x2.shape[1] // 128)), np.int8), np.zeros(32 * ng, np.int32)
    sx, xgs = np.empty(ng, np.float32), np.empty(ng, np.float32)
    out = np.empty_like(x2)
    for i in range(x2.shape[0]):
        _a16_prep(x2[i], g, xa, corr, sx, xgs, out[i])
    return out


#: a bias of length 0: the GEMV epilogues add none
_NO_BIAS = np.zeros(0, dtype=np.float32)


def _int4_gemv_vnni(x: np.ndarray, pw: PackedWeights, act_quant: str, bias_v: np.ndarray):
    """One token on the AVX-512 GEMV kernel of ``act_quant`` ("none": float activations, "int16": the A16
    kernel); None where it does not apply (no VNNI path, groups not whole 16- / 64-byte chunks) or x is not
    finite (the kernels check)."""
    gb = _group_bytes(pw)
    if _DEFAULT_PATH != "vnni":
        return None
    out = np.empty(pw.out_features, dtype=np.float32)
    if act_quant == "int16" and gb % 64 == 0:
        g, a16 = _a16_group(pw), 1
    elif act_quant == "none" and gb % 16 == 0:
        g, a16 = pw.group_size, 0
    else:
        return None
    bad = _int4_gemv_zmm_kernel(x, g, pw._q4u, pw.scale, pw._zp8, pw._zp_used, bias_v, out, gb, a16,
                                max(1, num_threads()))
    return out if bad < 0 else None


def _int4_gemv_a16(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """One token (finite x), activations rounded to 16-bit fixed point: the VNNI integer kernel where the groups
    span whole 64-byte chunks, else the float kernels on the rounded activations (the same numbers either way)."""
    y = _int4_gemv_vnni(x, pw, "int16", bias_v)
    return y if y is not None else _int4_gemv_raw(_round_a16(x[None], pw)[0], pw, bias_v)


def _int4_gemv_raw(x: np.ndarray, pw: PackedWeights, bias_v: np.ndarray) -> np.ndarray:
    """One token (finite x), float activations: the AVX-512 kernel, else the portable one."""
    y = _int4_gemv_vnni(x, pw, "none", bias_v)
    if y is not None:
        return y
    nb = pw._q4u.shape[1]
    g = pw.group_size
    out = np.empty(pw.out_features, dtype=np.float32)
    xe = np.empty(nb, dtype=np.float32)
    xo = np.empty(nb, dtype=np.float32)
    xgs = np.empty(pw.n_groups, dtype=np.float32)
    _gemv_split_kernel(x, g, xe, xo, xgs)  # one pass instead of five NumPy temporaries
    _int4_gemv_kernel(xe, xo, xgs, pw._q4u, pw.scale, pw._zp8, bias_v, out, _group_bytes(pw))
    return out


def _check_packed(packed, bits=None) -> PackedWeights:
    if not isinstance(packed, PackedWeights):
        raise TypeError(f"packed: expected the PackedWeights that pack_weights() returns, got {type(packed).__name__}")
    if bits is not None and packed.bits != bits:
        raise ValueError(f"packed: expected {bits}-bit weights, got {packed.bits}-bit")
    return packed


def _activations(x, k: int, finite: bool = True) -> tuple[np.ndarray, bool]:
    """x as float32 (tokens, K) and whether it was 1-D; ``finite``: raise on NaN/Inf here (False for callers
    whose kernel finds them itself, e.g. the INT8 activation quantizer)."""
    _require_float(x, "x")
    x = as_array(x, "x", dtype=np.float32, ndim=(1, 2), allow_convert=True)
    one = x.ndim == 1
    x2 = x.reshape(1, -1) if one else x
    if x2.shape[1] != k:
        raise ValueError(f"x: inner dimension mismatch, expected (tokens, {k}) for weights with in_features={k}, "
                         f"got shape {x.shape}")
    if finite:
        check_finite(x2, "x")
    return np.ascontiguousarray(x2), one


def int4_gemv(x, packed: PackedWeights, bias=None, *, act_quant: str = "none") -> np.ndarray:
    """One token through INT4 weights: ``W @ x``, the weights dequantized in registers.

    Parameters
    ----------
    x : float array (K,) (or (1, K))
    packed : PackedWeights with ``bits == 4``
    bias : float array (N,) or None
    act_quant : {"none", "int16"}
        ``"none"``: float32 activations, nibbles decoded to float32 (``vpermps`` lookups) and multiplied with
        FMAs.  ``"int16"`` (W4A16 with 16-bit activations): the token is first rounded to 16-bit fixed point
        per weight group (per row for one group): ``x ~ sx_g * v``, ``sx_g = max|x_g| / A16_QMAX``, integer
        ``|v| <= 32384`` (absolute error at most ``max|x_g| / 64768``, finer than FP16 for every entry within
        32x of its group's largest), and on AVX-512 VNNI (group bytes a multiple of 64, e.g. group_size 128)
        the products run exactly on the integer units (nibbles x int8 parts of v, ``vpdpbusd``), about twice
        the float path's weight rate.  The result is the float32 product of the dequantized weights with the
        rounded activations, on every CPU.

    Returns
    -------
    float32 (N,) (or (1, N) for 2-D x).  Streams the packed nibbles and scales once.
    """
    if (bias is None and type(x) is np.ndarray and type(packed) is PackedWeights and x.dtype == np.float32
            and x.ndim == 1 and x.flags.c_contiguous and packed.bits == 4 and x.shape[0] == packed.in_features):
        # the common call, checked in a few attribute tests (the kernel checks x is finite): after a GEMV the
        # weights have flushed the caches, and the full validation below costs ~10% of a 4096x4096 GEMV
        y = _int4_gemv_vnni(x, packed, act_quant, _NO_BIAS)
        if y is not None:
            return y
    pw = _check_packed(packed, 4)
    check_choice(act_quant, "act_quant", ("none", "int16"))
    x2, one = _activations(x, pw.in_features)
    if x2.shape[0] != 1:
        raise ValueError(f"x: int4_gemv takes one token, got {x2.shape[0]} rows (use int4_gemm)")
    bias_v = _float_vec(bias, "bias", pw.out_features, positive=False, default=0.0)
    y = (_int4_gemv_a16 if act_quant == "int16" else _int4_gemv_raw)(x2[0], pw, bias_v)
    return y if one else y.reshape(1, -1)


def int4_gemm(x, packed: PackedWeights, bias=None, *, act_quant: str = "none", path: str | None = None) -> np.ndarray:
    """Tokens through INT4 weights: float32 ``x (M, K) @ W^T`` -> float32 (M, N).

    ``act_quant="none"`` (W4A16-style weight-only): one token goes to :func:`int4_gemv`.  More tokens, on
    CPUs with AVX-512 (and group bytes a multiple of 16): up to ``WEIGHT_ONLY_FEW_TOKENS`` on a GEMV-style
    kernel that decodes each weight step once for two tokens, then a fused kernel that dequantizes panels of
    16 output channels into L1 and multiplies them in zmm register tiles, and from
    ``WEIGHT_ONLY_FUSED_BLAS_TOKENS`` dequantized blocks handed to BLAS.  Elsewhere each weight row is
    dequantized once into a float32 row buffer (L1) and dotted with every token (BLAS blocks from
    ``WEIGHT_ONLY_BLAS_TOKENS``).
    ``act_quant="int16"``: activations rounded to 16-bit fixed point per group first (see :func:`int4_gemv`;
    one token runs the integer A16 GEMV).
    ``act_quant="int8"`` (W4A8): activations quantized per token (symmetric INT8), INT4 weights widened to
    INT8 panels (built once and cached on ``packed``), exact int32 products per weight group on the GEMM
    path, group scales and zero points applied in float32.  Needs group_size % 4 == 0 (or one group).
    """
    pw = _check_packed(packed, 4)
    return quantized_linear(x, pw, bias, act_quant=act_quant, path=path)


def _w4a8(x2: np.ndarray, pw: PackedWeights, bias_v: np.ndarray, path: str) -> np.ndarray:
    xq, sx = _quantize_rows_int8(x2)  # raises on NaN/Inf in x2
    pb = pw.int8
    m = xq.shape[0]
    n, k = pw.shape
    if pw.n_groups == 1:
        return _dequant_product(xq, pb, path, sx, np.zeros(m, np.int32), pw.scale[:, 0].copy(),
                                pw.zero_point[:, 0].copy(), bias_v)
    g = pw.group_size
    if g % 4:
        raise ValueError(f"packed: W4A8 needs group_size divisible by 4 (K groups of 4 per VNNI step), got {g}")
    kp4 = (k + 3) // 4
    if pw._group_comp is None:
        comps = np.empty((pw.n_groups, pb.comp.shape[0]), dtype=np.int32)
        for gi in range(pw.n_groups):
            _chunk_colsum_kernel(pb.data, n, kp4, gi * g // 4, (gi + 1) * g // 4, comps[gi])
        pw._group_comp = comps
    acc = np.zeros((m, n), dtype=np.float32)
    xs = xq.reshape(m, pw.n_groups, g).sum(axis=2, dtype=np.int64) if pw._zp_used else None
    for gi in range(pw.n_groups):
        cg = _run(xq, pb, path, gi * g // 4, (gi + 1) * g // 4, pw._group_comp[gi])
        if xs is not None:
            cg = cg - pw.zero_point[None, :, gi] * xs[:, gi:gi + 1]
        acc += cg.astype(np.float32) * pw.scale[None, :, gi]
    return acc * sx[:, None] + bias_v


def quantized_linear(x, packed: PackedWeights, bias=None, *, act_quant: str | None = None,
                     path: str | None = None) -> np.ndarray:
    """A quantized ``Linear``: float32 activations (tokens, in) through packed weights -> float32 (tokens, out).

    Parameters
    ----------
    x : float array (tokens, in) or (in,)
    packed : PackedWeights from :func:`pack_weights`
    bias : float array (out,) or None
    act_quant : {"int8", "int16", "none"} or None
        ``"int8"``: activations quantized per token (dynamic symmetric INT8) -- W8A8 on INT8 weights (exact
        VNNI/generic GEMM with the fused dequantizing epilogue) or W4A8 on INT4 weights.  ``"int16"``: each
        token rounded to 16-bit fixed point per weight group (per row for one group), see :func:`int4_gemv`;
        one token through INT4 weights runs the integer A16 GEMV, anything else the float32 weight-only
        kernels on the rounded activations.  ``"none"``:
        weight-only (float32 activations: W8A16 / W4A16 style), one token on the bandwidth-tuned GEMV, more
        tokens with the weights dequantized once per call in L1-sized pieces and reused for every token (see
        :func:`int4_gemm` for the INT4 paths).  None: "int8" for 8-bit weights, "none" for 4-bit.
    path : {"vnni", "generic"} or None -- the INT8 GEMM implementation for the "int8" modes.

    Returns
    -------
    float32 (tokens, out), or (out,) for 1-D x.
    """
    pw = _check_packed(packed)
    if act_quant is None:
        act_quant = "int8" if pw.bits == 8 else "none"
    if (pw.bits == 4 and bias is None and act_quant in ("none", "int16") and type(x) is np.ndarray
            and x.dtype == np.float32 and x.flags.c_contiguous and x.shape[-1] == pw.in_features
            and (x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1))):
        y = _int4_gemv_vnni(x.reshape(-1), pw, act_quant, _NO_BIAS)  # one token: int4_gemv's type-checked entry
        if y is not None:
            return y if x.ndim == 1 else y.reshape(1, -1)
    check_choice(act_quant, "act_quant", ("int8", "int16", "none"))
    p = _resolve_path(path)
    x2, one = _activations(x, pw.in_features, finite=act_quant != "int8")
    n = pw.out_features
    bias_v = _float_vec(bias, "bias", n, positive=False, default=0.0)
    m = x2.shape[0]
    if m == 0:
        y = np.zeros((0, n), dtype=np.float32)
    elif act_quant == "int16":
        if m == 1 and pw.bits == 4:
            y = _int4_gemv_a16(x2[0], pw, bias_v).reshape(1, n)
        else:  # the same rounded activations through the float32 weight-only kernels
            y = quantized_linear(_round_a16(x2, pw), pw, bias_v, act_quant="none")
    elif act_quant == "int8":
        if pw.bits == 8:
            xq, sx = _quantize_rows_int8(x2)  # NaN/Inf in x2 (not checked by _activations here) raise in it
            y = _dequant_product(xq, pw.int8, p, sx, np.zeros(m, np.int32), pw.scale, pw.zero_point, bias_v,
                                 has_zp=pw._zp_used)
        else:
            y = _w4a8(x2, pw, bias_v, p)
    elif m == 1:
        if pw.bits == 4:
            y = _int4_gemv_raw(x2[0], pw, bias_v).reshape(1, n)
        elif _DEFAULT_PATH == "vnni":
            y = _wo8_rows(x2, pw, bias_v)
        else:
            y = np.empty(n, dtype=np.float32)
            xs = np.float32(x2[0].sum(dtype=np.float32))
            _int8_gemv_kernel(x2[0], xs, pw.q8, pw.scale, pw.zero_point, pw._zp_used, bias_v, y)
            y = y.reshape(1, n)
    else:
        y = _blocked_weight_only(x2, pw, bias_v)
    return y[0] if one else y


def pack_quantized(values, scale, zero_point=None, *, bits: int, group_size: int | None = None) -> PackedWeights:
    """Pack weights that are already quantized (e.g. by GPTQ/AWQ or :func:`memwall.kernels.quant.quantize`).

    Parameters
    ----------
    values : int8 array (out, in)
        INT8 values (bits=8) or INT4 values in [-8, 7] (bits=4; anything else is a ValueError).
    scale : float array
        bits=8: (out,) per output channel (or a scalar); bits=4: (out, in // group_size) (or (out,) for one
        group per channel).  Finite and > 0.
    zero_point : integer array of the scale's shape, or None (symmetric)
    bits : 8 or 4
    group_size : int or None (bits=4: > 0, dividing ``in``, even unless it equals ``in``; None = ``in``)

    Returns
    -------
    PackedWeights, as :func:`pack_weights` builds them; ``x ≈ (values - zero_point) * scale``.
    """
    from .quant import pack_int4

    if isinstance(bits, (bool, np.bool_)) or bits not in (8, 4):
        raise ValueError(f"bits: expected 8 or 4, got {bits!r}")
    values = as_array(values, "values", dtype=np.int8, ndim=2)
    n, k = values.shape
    if n == 0 or k == 0:
        raise ValueError(f"values: expected a non-empty (out, in) matrix, got shape {values.shape}")
    g = k if group_size is None else check_int(group_size, "group_size", minimum=1)
    if k % g:
        raise ValueError(f"group_size: expected a divisor of in_features={k}, got {g}")
    if bits == 8:
        if g != k:
            raise ValueError(f"group_size: INT8 weights use one scale per output channel; expected None or {k}, "
                             f"got {g}")
        sc = _float_vec(scale, "scale", n, positive=True)
        zp = _int_vec(zero_point, "zero_point", n)
        q8 = np.ascontiguousarray(values)
        return PackedWeights(8, n, k, k, not zp.any(), sc, zp, q8=q8, int8=pack_int8(q8, layout="nk"))
    if g != k and g % 2:
        raise ValueError(f"group_size: INT4 groups must hold whole bytes (two nibbles); expected an even "
                         f"divisor of {k} or {k}, got {g}")
    check_range(values, "values", -8, 7)
    ng = k // g
    sc = as_array(scale, "scale", dtype=np.float32, ndim=(1, 2), allow_convert=True).astype(np.float32, copy=False)
    if sc.shape not in ((n, ng),) + (((n,),) if ng == 1 else ()):
        raise ValueError(f"scale: expected shape ({n}, {ng}) for {n} rows and group_size={g}, got {sc.shape}")
    sc = np.ascontiguousarray(sc.reshape(n, ng))
    check_positive(sc, "scale")
    if zero_point is None:
        zp = np.zeros((n, ng), dtype=np.int32)
    else:
        zpa = np.asarray(zero_point)
        if zpa.dtype.kind not in "iu":
            raise TypeError(f"zero_point: expected integer zero points, got dtype {zpa.dtype.name}")
        if zpa.size != n * ng or zpa.ndim not in (1, 2) or (zpa.ndim == 2 and zpa.shape != (n, ng)):
            raise ValueError(f"zero_point: expected shape ({n}, {ng}), got {zpa.shape}")
        check_range(zpa, "zero_point", -8, 15)
        zp = np.ascontiguousarray(zpa.reshape(n, ng), dtype=np.int32)
    return PackedWeights(4, n, k, g, not zp.any(), sc, zp, q4=pack_int4(values))

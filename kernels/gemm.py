"""Quantized GEMM / GEMV: INT8 x INT8 -> INT32 (exact), fused dequantizing epilogues, INT4 weights.

Two implementations of the INT8 GEMM sit behind one validated wrapper:

``"vnni"``
    AVX-512 VNNI: ``vpdpbusd`` emitted as LLVM IR (see :mod:`memwall.kernels._vnni`), a register-blocked
    ``MR x NR`` micro-kernel over packed panels (A: ``MR`` rows, K grouped by 4, offset by +128 so it is
    unsigned; B: ``NR`` columns, K grouped by 4), threads over (row block, column panel) tasks.
``"generic"``
    Pure Numba loops, no intrinsics (any CPU); exact int32 accumulation over the same packed B panels.

The path is chosen at import from the CPU features and ``MEMWALL_ISA`` (:func:`memwall.kernels.config.requested_isa`),
and can be forced per call with ``path=``.

Exactness: every kernel accumulates in int32 with wrap-around arithmetic, which is exact whenever the true
result fits int32.  The wrappers guarantee that: when ``K * max|a| * max|b|`` may reach ``2**31`` they split K
into chunks whose int32 partial sums cannot overflow, add the chunks in int64 and return int64 (see
:func:`int8_gemm`).  Wrapped sums are never returned.
"""
from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange

from . import config
from ._validate import as_array, check_choice, check_finite, check_int, check_positive, check_range
from .cpu import has_avx512_vnni

__all__ = [
    "PackedInt8",
    "pack_int8",
    "int8_gemm",
    "int8_gemm_dequant",
    "active_paths",
    "available_paths",
]

# --- tile sizes ------------------------------------------------------------------------------------
#: rows of the VNNI micro-kernel (accumulators: MR x NV zmm registers)
MR = 12
#: 16-lane int32 vectors per micro-kernel row
NV = 2
#: columns of a packed B panel
NR = 16 * NV
#: largest number of K groups of 4 handled by one micro-kernel call (the C tile stays in L1 between calls)
KC4 = 1024

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
        "int8_gemm": "avx512-vnni (vpdpbusd micro-kernel)" if vnni else "generic (pure Numba)",
        "int8_gemm_dequant": "avx512-vnni + fused epilogue" if vnni else "generic + fused epilogue",
        "int4_gemv": "numba (in-register nibble dequant, bandwidth-bound)",
        "int4_gemm": "numba (panel dequant to float32)",
        "isa_request": config.requested_isa(),
    }


# ==================================================================================================
# packing
# ==================================================================================================
@njit(parallel=True, cache=True)
def _pack_b_kernel(b, nk_layout, out, comp):  # pragma: no cover - compiled
    """b (K, N) (or (N, K) when nk_layout) -> panels [npan][Kp4][NR][4]; comp[j] = -128 * sum_k b[k, j]."""
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


@njit(parallel=True, cache=True)
def _pack_a_kernel(a, out):  # pragma: no cover - compiled
    """a (M, K) int8 -> panels [mpan][Kp4][MR][4] of a + 128 (uint8); padding stays 0."""
    m, k = a.shape
    kp4 = (k + 3) // 4
    mpan = (m + MR - 1) // MR
    for ip in prange(mpan):
        base = ip * kp4 * MR * 4
        for r in range(MR):
            i = ip * MR + r
            if i < m:
                for kk in range(k):
                    out[base + (kk >> 2) * MR * 4 + r * 4 + (kk & 3)] = np.uint8(np.int32(a[i, kk]) + 128)


class PackedInt8:
    """INT8 weights ``b`` (K, N) packed once into NR-column panels for :func:`int8_gemm`.

    Attributes: ``k``, ``n`` (logical shape of b), ``data`` (int8 panels ``[N/NR][ceil(K/4)][NR][4]``, zero
    padded), ``comp`` (int32, ``-128 * column sums``: the +128 offset compensation), ``max_abs`` (max |b|, for
    the overflow check), ``nbytes``.  Build it with :func:`pack_int8`; the constructor is not public API.
    """

    __slots__ = ("k", "n", "data", "comp", "max_abs", "_fpanels")

    def __init__(self, k: int, n: int, data: np.ndarray, comp: np.ndarray, max_abs: int):
        self.k, self.n, self.data, self.comp, self.max_abs = k, n, data, comp, max_abs
        self._fpanels = None

    def float_panels(self) -> np.ndarray:
        """float32 copy of the panels for the generic (no-intrinsics) path, built on first use and kept."""
        if self._fpanels is None:
            kp4 = (self.k + 3) // 4
            fp = np.zeros(-(-self.n // NRG) * kp4 * 4 * NRG, dtype=np.float32)
            if self.n and kp4:
                _float_panels_kernel(self.data, self.n, kp4, fp)
            self._fpanels = fp
        return self._fpanels

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
    if k and n:
        _pack_b_kernel(b, nk, data, comp)
    max_abs = int(np.abs(b.astype(np.int16)).max()) if b.size else 0
    return PackedInt8(k, n, data, comp, max_abs)


# ==================================================================================================
# INT8 GEMM kernels
# ==================================================================================================
@njit(inline="always")
def _store_tile(tile, ldt, r0, rows, c0, cols, n, c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk):
    """Write the int32 tile rows [r0, r0+rows) x cols [c0, c0+cols): raw (epi=0) or dequantized to float32."""
    if epi == 0:
        for r in range(rows):
            off = (r0 + r) * n + c0
            for jj in range(cols):
                c[off + jj] = tile[r * ldt + jj]
    elif has_zp == 0:
        for r in range(rows):
            off = (r0 + r) * n + c0
            s_a = sa[r0 + r]
            for jj in range(cols):
                out[off + jj] = np.float32(tile[r * ldt + jj]) * (s_a * sb[c0 + jj]) + bias[c0 + jj]
    else:
        for r in range(rows):
            i = r0 + r
            off = i * n + c0
            s_a = sa[i]
            z_a = np.int64(za[i])
            r_a = np.int64(rsa[i])
            for jj in range(cols):
                j = c0 + jj
                z_b = np.int64(zb[j])
                v = np.int64(tile[r * ldt + jj]) - z_a * csb[j] - z_b * r_a + kk * z_a * z_b
                out[off + jj] = np.float32(v) * (s_a * sb[j]) + bias[j]


if has_avx512_vnni():
    from ._vnni import make_microkernel

    _mk = make_microkernel(MR, NV)

    @njit(parallel=True, cache=True)
    def _vnni_gemm_kernel(ap, bp, comp, m, n, kp4, k4_lo, k4_hi, mb_panels,
                          c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk):  # pragma: no cover
        """A @ B over K groups [k4_lo, k4_hi) (comp initialises each column), each MR x NR tile finished in
        an L1 buffer and then written to c (int32, flat) or, with epi, dequantized into out (float32, flat)."""
        mpan = (m + MR - 1) // MR
        npan = (n + NR - 1) // NR
        nmb = (mpan + mb_panels - 1) // mb_panels
        ntask = nmb * npan
        k4n = k4_hi - k4_lo
        for t in prange(ntask):
            mb = t // npan
            jp = t - mb * npan
            tile = np.empty(MR * NR, dtype=np.int32)
            b_base = (jp * kp4 + k4_lo) * NR * 4
            cols = min(NR, n - jp * NR)
            for ip in range(mb * mb_panels, min(mpan, (mb + 1) * mb_panels)):
                a_base = (ip * kp4 + k4_lo) * MR * 4
                for kc in range(0, k4n, KC4):
                    _mk(ap, a_base + kc * MR * 4, bp, b_base + kc * NR * 4, min(KC4, k4n - kc),
                        tile, 0, NR, 1 if kc == 0 else 0, comp, jp * NR)
                _store_tile(tile, NR, ip * MR, min(MR, m - ip * MR), jp * NR, cols, n, c, out, epi, has_zp,
                            sa, za, rsa, sb, zb, csb, bias, kk)


#: generic path: columns per float32 panel, rows per register block, K per exact float32 partial sum
NRG = 64
RBG = 4
#: |partial sum| <= KCG * 128 * 128 = 2**24: every float32 partial sum of INT8 products is an exact integer
KCG = 1024


@njit(parallel=True, cache=True)
def _float_panels_kernel(bp, n, kp4, out):  # pragma: no cover - compiled
    """int8 VNNI panels -> float32 panels [n/NRG][kp4*4][NRG] for the generic path (zero padded)."""
    npg = (n + NRG - 1) // NRG
    kp = kp4 * 4
    for g in prange(npg):
        for jj in range(NRG):
            j = g * NRG + jj
            if j < n:
                jp = j // NR
                jr = j - jp * NR
                for kk in range(kp):
                    out[(g * kp + kk) * NRG + jj] = np.float32(bp[(jp * kp4 + (kk >> 2)) * NR * 4 + jr * 4 + (kk & 3)])


@njit(parallel=True, fastmath=True, cache=True)
def _generic_gemm_kernel(af, bf, m, n, kp, k_lo, k_hi, mb_rows,
                         c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk):  # pragma: no cover - compiled
    """Pure-Numba A @ B without intrinsics: INT8 values held in float32, FMA partial sums over at most KCG
    K values (each an exact integer below 2**24, so reassociation is harmless), converted to int32 and
    summed with wrap-around (exact mod 2**32).  af: (m, kp) float32, zero padded; bf: float32 panels."""
    npg = (n + NRG - 1) // NRG
    nmb = (m + mb_rows - 1) // mb_rows
    ntask = nmb * npg
    for t in prange(ntask):
        mb = t // npg
        g = t - mb * npg
        facc = np.empty((RBG, NRG), dtype=np.float32)
        iacc = np.empty(RBG * NRG, dtype=np.int32)
        cols = min(NRG, n - g * NRG)
        for i0 in range(mb * mb_rows, min(m, (mb + 1) * mb_rows), RBG):
            rows = min(RBG, m - i0)
            iacc[:] = 0
            for kb in range(k_lo, k_hi, KCG):
                facc[:] = 0
                for k0 in range(kb, min(k_hi, kb + KCG), 4):
                    p = (g * kp + k0) * NRG
                    b0 = bf[p:p + NRG]
                    b1 = bf[p + NRG:p + 2 * NRG]
                    b2 = bf[p + 2 * NRG:p + 3 * NRG]
                    b3 = bf[p + 3 * NRG:p + 4 * NRG]
                    for r in range(rows):
                        ar = af[i0 + r]
                        a0 = ar[k0]
                        a1 = ar[k0 + 1]
                        a2 = ar[k0 + 2]
                        a3 = ar[k0 + 3]
                        fr = facc[r]
                        for jj in range(NRG):
                            fr[jj] += a0 * b0[jj] + a1 * b1[jj] + a2 * b2[jj] + a3 * b3[jj]
                for r in range(rows):
                    for jj in range(NRG):
                        iacc[r * NRG + jj] += np.int32(facc[r, jj])
            _store_tile(iacc, NRG, i0, rows, g * NRG, cols, n, c, out, epi, has_zp, sa, za, rsa, sb, zb, csb, bias, kk)


_EMPTY_F32 = np.zeros(1, dtype=np.float32)
_EMPTY_I32 = np.zeros(1, dtype=np.int32)
_EMPTY_I64 = np.zeros(1, dtype=np.int64)


class _Epilogue:
    """Per-row (activation) and per-column (weight) dequantization parameters, broadcast to full length."""

    __slots__ = ("sa", "za", "rsa", "sb", "zb", "csb", "bias", "has_zp")

    def __init__(self, sa, za, rsa, sb, zb, csb, bias, has_zp):
        self.sa, self.za, self.rsa, self.sb, self.zb, self.csb, self.bias, self.has_zp = (
            sa, za, rsa, sb, zb, csb, bias, has_zp)


def _run(a: np.ndarray, pb: PackedInt8, path: str, k4_lo: int, k4_hi: int, comp: np.ndarray,
         epi: _Epilogue | None = None) -> np.ndarray:
    """a (M, K) times the packed panels over K groups [k4_lo, k4_hi): int32 (exact mod 2**32), or float32
    through the dequantizing epilogue when ``epi`` is given."""
    m = a.shape[0]
    n = pb.n
    kp4 = (pb.k + 3) // 4
    if epi is None:
        c, out = np.empty(m * n, dtype=np.int32), _EMPTY_F32
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
    threads = max(1, get_num_threads())
    npan = (n + NR - 1) // NR
    if path == "vnni":
        mpan = (m + MR - 1) // MR
        ap = np.zeros(mpan * kp4 * MR * 4, dtype=np.uint8)
        _pack_a_kernel(a, ap)
        # enough tasks for every thread; as few row blocks as possible (each re-streams its B panel)
        nmb = max(1, min(mpan, -(-2 * threads // npan)))
        mb_panels = -(-mpan // nmb)
        _vnni_gemm_kernel(ap, pb.data, comp, m, n, kp4, k4_lo, k4_hi, mb_panels, c, out, *args)
    else:
        npg = (n + NRG - 1) // NRG
        nmb = max(1, min(-(-m // RBG), -(-2 * threads // npg)))
        mb_rows = -(-(-(-m // nmb)) // RBG) * RBG
        af = np.zeros((m, kp4 * 4), dtype=np.float32)
        af[:, :a.shape[1]] = a
        _generic_gemm_kernel(af, pb.float_panels(), m, n, kp4 * 4, 4 * k4_lo, 4 * k4_hi, mb_rows, c, out, *args)
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

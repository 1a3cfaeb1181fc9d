"""Sparse x dense products for :mod:`memwall.kernels.formats` (CSR, BSR, N:M; float32/float16/INT8 values).

Layouts
-------
* :func:`spmm` ``(A, X)``: ``A`` is the sparse weight ``(out, in)``, ``X`` dense ``(in, batch)`` (or 1-D
  ``(in,)``: SpMV), result ``A @ X`` float32 ``(out, batch)``.  ``A @ X`` on a format object calls it.
* :func:`spmm_t` ``(X, A)``: the Linear-layer layout ``X (batch, in) @ A.T -> (batch, out)``; computed as
  ``spmm(A, X.T).T`` (two O(batch * (in + out)) transposes around the same kernel).
* :func:`spmv` ``(A, x)``: batch 1.
* :func:`gemv_skip_zeros` ``(w, x)``: dense weight times an activation vector with many zeros (ReLU
  outputs); only the nonzero activations are visited, and the zero fraction is returned with the result.

Arithmetic
----------
Float values (float32, float16 decoded exactly, INT8 weights with float activations: ``float32(q) * scale``)
accumulate in float32 (``fastmath`` reassociation: results match a float64 reference within
``config.FLOAT32_RTOL``-style tolerances).  INT8 weights x INT8 activations (``X`` int8 with ``x_scale``)
accumulate exactly in int32, then a fused epilogue writes ``float32(acc) * (w_scale * x_scale[b])``
(per row for CSR / N:M; per stored block, summed in block order, for BSR).  The int32 sums are guarded:
the longest row (or block width) times 128 * 128 must stay below 2**31, else ValueError.

Every kernel parallelizes over output rows (block rows for BSR): each chunk of rows is computed by one
thread (the float mm kernels hand chunks out from a shared queue, so a thread that loses its core for a
while does not hold the others up), the summation order of every element is fixed, so results are
identical for any thread count and any assignment of chunks to threads.

The float mm kernels are register-tile micro-kernels emitted as LLVM IR (see ``_spmm_kernels``): a 1 x 64
(CSR, N:M) or 4 x 64 (BSR) float32 tile lives in zmm registers; the batch is processed 64 columns at a time,
padded to a multiple of 16 and 64-byte aligned (X copied when it is not).  The N:M kernel is unrolled for each
n:m (compiled on first use of that n:m and value type): positions are decoded with constant shifts beside the
multiply-adds, so 1:4, 2:8, 4:8 ... run at about the 2:4 rate per kept multiply-add; N:M SpMV uses it too
(x padded to 16 lanes).
"""
from __future__ import annotations

import math
import numbers
import time

import numpy as np

from . import _spmm_kernels as _k
from ._sched import num_threads
from ._validate import as_array, check_choice, check_int, check_positive
from .config import INT32_MAX, SPMM_PANEL_BYTES, SPMM_PANEL_MIN_NNZ
from .formats import BSRMatrix, CSRMatrix, NMSparseMatrix

__all__ = ["spmm", "spmm_t", "spmv", "gemv_skip_zeros", "SkipZerosResult", "crossover_sweep",
           "crossover_point"]

_FORMATS = (CSRMatrix, BSRMatrix, NMSparseMatrix)
_EMPTY_F32 = np.zeros(0, dtype=np.float32)


def _check_matrix(A) -> None:
    if not isinstance(A, _FORMATS):
        raise TypeError(f"A: expected a CSRMatrix, BSRMatrix or NMSparseMatrix, got {type(A).__name__}")


def _kernel_data(A) -> np.ndarray:
    """Flat view of the values the kernels read (float16 as its uint16 bit pattern)."""
    d = A.data.reshape(-1)
    return d.view(np.uint16) if d.dtype == np.float16 else d


def _operand(X, name: str) -> np.ndarray:
    """X as a C-contiguous float32 or int8 array (float16/float64 converted; other dtypes refused)."""
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
        if not (np.issubdtype(X.dtype, np.floating) or X.dtype == np.int8):
            raise TypeError(f"{name}: expected a float array (or int8 with x_scale), got {X.dtype.name}")
    if X.dtype == np.int8:
        return np.ascontiguousarray(X)
    if X.dtype not in (np.float32, np.float64, np.float16):
        raise TypeError(f"{name}: expected dtype float32 (float16/float64 are converted) or int8 with x_scale, "
                        f"got {X.dtype.name}")
    return np.ascontiguousarray(X, dtype=np.float32)


def _x_scales(x_scale, batch: int) -> np.ndarray:
    if x_scale is None:
        raise ValueError("x_scale: required for int8 activations (x ≈ x_q * x_scale)")
    if isinstance(x_scale, numbers.Real) and not isinstance(x_scale, (bool, np.bool_)):
        s = np.full(batch, x_scale, dtype=np.float32)
    else:
        s = as_array(x_scale, "x_scale", dtype=(np.float32, np.float64), ndim=(0, 1), allow_convert=True)
        s = np.ascontiguousarray(s, dtype=np.float32)
        if s.ndim == 0:
            s = np.full(batch, s, dtype=np.float32)
        elif s.shape[0] != batch:
            raise ValueError(f"x_scale: expected a scalar or {batch} scales (one per column of X), got "
                             f"{s.shape[0]}")
    check_positive(s, "x_scale")
    return s


def _int_guard(A) -> None:
    """Refuse INT8 x INT8 products whose int32 sums could overflow."""
    if isinstance(A, CSRMatrix):
        longest = int(np.diff(A.indptr).max()) if A.shape[0] else 0
    elif isinstance(A, BSRMatrix):
        longest = A.blocksize[1]
    else:
        longest = A.kr
    if longest * 128 * 128 > INT32_MAX:
        raise ValueError(f"A: a row sums {longest} int8 x int8 products; more than {INT32_MAX // (128 * 128)} "
                         "could overflow the int32 accumulator")


def spmm(A, X, *, x_scale=None) -> np.ndarray:
    """Sparse ``A (out, in)`` times dense ``X (in, batch)`` -> float32 ``(out, batch)``; 1-D X -> SpMV ``(out,)``.

    Parameters
    ----------
    A : CSRMatrix | BSRMatrix | NMSparseMatrix with float32, float16 or int8 values
    X : float32 array (in, batch) or (in,); float16/float64 are converted, non-contiguous input copied.
        int8 activations (quantized ``X ≈ X_q * x_scale``) take the exact int32 path and need int8 ``A``.
    x_scale : for int8 X only: a positive scalar or one scale per column of X (per token).

    Returns
    -------
    float32 array ``A @ X``.
    """
    _check_matrix(A)
    X = _operand(X, "X")
    if X.ndim not in (1, 2):
        raise ValueError(f"X: expected a 1-D or 2-D array, got shape {X.shape}")
    rows, cols = A.shape
    if X.shape[0] != cols:
        raise ValueError(f"X: inner dimensions differ: A is {A.shape}, X has {X.shape[0]} rows (expected {cols})")
    vec = X.ndim == 1
    if X.dtype == np.int8:
        if A.dtype != np.int8:
            raise TypeError(f"X: int8 activations need int8 weights (A holds {A.dtype.name}); pass float X")
        X2 = X.reshape(cols, 1) if vec else X
        xs = _x_scales(x_scale, X2.shape[1])
        _int_guard(A)
        out = np.zeros((rows, X2.shape[1]), dtype=np.float32)
        if out.size:
            _run_int8(A, X2, xs, out)
        return out.reshape(rows) if vec else out
    if x_scale is not None:
        raise ValueError("x_scale: only used with int8 X")
    data = _kernel_data(A)
    scales = A.scales if A.scales is not None else _EMPTY_F32
    # batch 1: N:M goes through the register micro-kernel too (x padded to one 16-lane column block: measured
    # 4096 x 4096 1:4, 1 thread, 29 ms with the scalar decode-then-dot kernel, far from the DRAM bound)
    nm_tiled = isinstance(A, NMSparseMatrix) and _k.nm_period(A.n, A.m) > 0
    if (vec or X.shape[1] == 1) and not nm_tiled:
        x = X.reshape(cols)
        out = np.zeros(rows, dtype=np.float32)
        if rows:
            if isinstance(A, CSRMatrix):
                _k.csr_mv(A.indptr, A.indices, data, scales, x, out)
            elif isinstance(A, BSRMatrix):
                _k.bsr_mv(A.indptr, A.indices, data, scales, A.blocksize[0], A.blocksize[1], x, out)
            else:
                _k.nm_mv(data, A.metadata.reshape(-1), A.metadata.shape[1], A.kr, A.n, A.m, A.bits, scales, x, out)
        return out if vec else out.reshape(rows, 1)
    if vec:
        return spmm(A, X.reshape(cols, 1)).reshape(rows)
    batch = X.shape[1]
    if rows == 0 or batch == 0 or cols == 0:
        return np.zeros((rows, batch), dtype=np.float32)
    Xp = _padded(X)
    out = _aligned_empty((rows, Xp.shape[1]))
    if isinstance(A, CSRMatrix):
        P = _panel_rows(Xp.shape[1], 1, A.density)
        work = A.indptr.astype(np.int64) + _ROW_COST * np.arange(rows + 1, dtype=np.int64)
        _k.csr_mm(A.indptr, A.indices, data, scales, Xp, P, _chunks(work, _CSR_ROW_CHUNK), _workers(), out)
    elif isinstance(A, BSRMatrix):
        r, c = A.blocksize
        G = max(1, _BSR_GROUP_BYTES // (4 * min(Xp.shape[1], 64) * c))
        work = A.indptr.astype(np.int64) * (r * c) + (_ROW_COST * r) * np.arange(rows // r + 1, dtype=np.int64)
        _k.bsr_mm(A.indptr, A.indices, data, scales, r, c, Xp, G, _chunks(work, max(1, _ROW_CHUNK // r)), _workers(),
                  out)
    else:
        work = np.arange(rows + 1, dtype=np.int64)
        bounds = _chunks(work, _ROW_CHUNK)
        step = _k.nm_period(A.n, A.m)
        if step:
            # n and m as tuple lengths: compile-time constants of the unrolled micro-kernel (one build per n:m)
            d2 = A.data.view(np.uint16) if A.data.dtype == np.float16 else A.data
            P = _panel_rows(Xp.shape[1], step // A.n * A.m, A.n / A.m, _NM_PANEL_MIN_KEPT)
            _k.nm_mm_tiled(d2, A.metadata, A.bits, scales, Xp, P, bounds, _workers(), out, (0,) * A.n, (0,) * A.m)
        else:  # m > 256 (positions wider than a byte) or an unroll step over 64 values: decode, then CSR
            _k.nm_mm(data, A.metadata.reshape(-1), A.metadata.shape[1], A.kr, A.n, A.m, A.bits, scales, Xp,
                     _panel_rows(Xp.shape[1], A.m), bounds, _workers(), out)
    return out if out.shape[1] == batch else np.ascontiguousarray(out[:, :batch])


# Kernel tuning (measured on the 2-core AVX-512 host, W 4096 x 4096, X 4096 x 64):
#: bytes of X one reduction panel covers (CSR / N:M) or one group of stored blocks covers (BSR): half of L1d.
_PANEL_BYTES = SPMM_PANEL_BYTES
#: bytes of X rows one group of stored BSR blocks covers (one 16-column block of a 64-wide batch: a strip's
#: partial sums pass through memory after every group; larger groups measured slower).
_BSR_GROUP_BYTES = 4096
#: rows per work chunk (chunks of about equal work, handed out to the threads from a queue).
#: More rows per chunk reuse each L1 panel of X longer; 64 rows of 64-float tiles still sit beside it in L1/L2.
_ROW_CHUNK = 64
#: the same for CSR (measured: 256 rows 8% faster than 64 at 90% and 65% sparsity, 512 no better)
_CSR_ROW_CHUNK = 256
#: fewest kept values of an N:M row per panel (measured, 4096 x 4096, batch 64: 1:4 and 2:8 ran ~1.4x faster
#: with panels of 128 rows = 32 kept values than with the 64 rows the panel bytes alone give; 2:4 and 4:8 keep 64)
_NM_PANEL_MIN_KEPT = 32
#: work of one output row in units of stored values (tile load/store, loop set-up) when balancing chunks.
_ROW_COST = 8
_ALIGN = 64


def _aligned_empty(shape) -> np.ndarray:
    """Uninitialised float32 C array whose data starts on a 64-byte boundary (a zmm load never straddles two
    cache lines when rows are multiples of 16 floats)."""
    n = int(np.prod(shape))
    buf = np.empty(n + _ALIGN // 4, dtype=np.float32)
    start = (-buf.ctypes.data % _ALIGN) // 4
    return buf[start:start + n].reshape(shape)


def _padded(X: np.ndarray) -> np.ndarray:
    """X (in, batch) float32 C-contiguous -> 64-byte aligned with the batch padded by zeros to a multiple of 16
    (X itself when it already is)."""
    k, b = X.shape
    bp = -(-b // 16) * 16
    if bp == b and X.ctypes.data % _ALIGN == 0:
        return X
    Xp = _aligned_empty((k, bp))
    Xp[:, :b] = X
    if bp != b:
        Xp[:, b:] = 0.0
    return Xp


def _workers() -> int:
    """Threads the mm kernels start (each takes chunks from a shared queue until none is left)."""
    return max(1, num_threads())


def _chunks(work: np.ndarray, rows_per_chunk: int) -> np.ndarray:
    """Boundaries (int64) of about ``len/rows_per_chunk`` row chunks of equal cumulative ``work`` (``work[i]`` =
    work of rows ``< i``, non-decreasing, ``work[0] == 0``)."""
    n = work.shape[0] - 1
    nch = max(1, -(-n // rows_per_chunk))
    b = np.searchsorted(work, np.linspace(0, work[-1], nch + 1), side="left").astype(np.int64)
    b[0], b[-1] = 0, n
    return np.maximum.accumulate(b)


def _panel_rows(batch: int, multiple: int, density: float = 1.0, min_nnz: int = SPMM_PANEL_MIN_NNZ) -> int:
    """Panel height P (rows of X, a multiple of ``multiple``): about _PANEL_BYTES of the (at most 64-column)
    batch slice a kernel pass covers, but at least enough columns that a row holds ~``min_nnz`` stored values
    per panel (very sparse rows: per-panel overhead dominates)."""
    P = (_PANEL_BYTES // (4 * min(max(batch, 1), 64))) // multiple * multiple
    if density > 0:
        P = max(P, int(math.ceil(min_nnz / density / multiple)) * multiple)
    return max(P, multiple)


def _run_int8(A, Xq, xs, out) -> None:
    Xf, of = Xq, out
    if isinstance(A, CSRMatrix):
        _k.csr_mm_int8(A.indptr, A.indices, A.data, A.scales, Xf, xs, of)
    elif isinstance(A, BSRMatrix):
        _k.bsr_mm_int8(A.indptr, A.indices, A.data.reshape(-1), A.scales, A.blocksize[0], A.blocksize[1], Xf, xs,
                       of)
    else:
        _k.nm_mm_int8(A.data.reshape(-1), A.metadata.reshape(-1), A.metadata.shape[1], A.kr, A.n, A.m, A.bits,
                      A.scales, Xf, xs, of)


def spmv(A, x, *, x_scale=None) -> np.ndarray:
    """Sparse matrix x vector: ``A (out, in) @ x (in,)`` -> float32 ``(out,)`` (see :func:`spmm`)."""
    _check_matrix(A)
    x = _operand(x, "x")
    if x.ndim != 1:
        raise ValueError(f"x: expected a 1-D array, got shape {x.shape}")
    return spmm(A, x, x_scale=x_scale)


def spmm_t(X, A, *, x_scale=None) -> np.ndarray:
    """The Linear-layer layout: ``X (batch, in) @ A.T`` -> float32 ``(batch, out)`` for a sparse weight
    ``A (out, in)``; 1-D X is one token.  For int8 X, ``x_scale`` is a scalar or one scale per row of X
    (per token).  Same kernels as :func:`spmm` (on ``X.T``)."""
    _check_matrix(A)
    X = _operand(X, "X")
    if X.ndim == 1:
        return spmm(A, X, x_scale=x_scale)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 1-D or 2-D array, got shape {X.shape}")
    if X.shape[1] != A.shape[1]:
        raise ValueError(f"X: inner dimensions differ: X is {X.shape}, A is {A.shape} (X.shape[1] must be "
                         f"{A.shape[1]})")
    return np.ascontiguousarray(spmm(A, np.ascontiguousarray(X.T), x_scale=x_scale).T)


# ================================================================================================
# activation sparsity
# ================================================================================================
class SkipZerosResult(tuple):
    """``(y, zero_fraction)`` with names: ``y`` float32 (out,), ``zero_fraction`` of x's entries that were 0
    (and therefore skipped)."""

    __slots__ = ()

    def __new__(cls, y, zero_fraction):
        return super().__new__(cls, (y, zero_fraction))

    @property
    def y(self) -> np.ndarray:
        return self[0]

    @property
    def zero_fraction(self) -> float:
        return self[1]


def gemv_skip_zeros(w, x, *, layout: str = "in_out") -> SkipZerosResult:
    """Dense weight times an activation vector, visiting only the nonzero activations (ReLU outputs).

    Parameters
    ----------
    w : float32 2-D weight.  ``layout="in_out"`` (default): ``w`` is ``(in, out)`` = the transposed Linear
        weight, traversed column-oriented (``y = sum_{x_j != 0} x_j * w[j, :]``): rows of ``w`` with a zero
        activation are never read, so time and weight traffic fall with the zero fraction.
        ``layout="out_in"``: ``w`` is ``(out, in)``; each output row is a dot product over the gathered nonzero
        activations (saves the multiply-adds, not the weight traffic).
    x : float32 1-D activations (in,); float16/float64 converted.

    Returns
    -------
    SkipZerosResult ``(y, zero_fraction)``: y float32 (out,) equal to ``W @ x``; zero_fraction = the fraction of
    x's entries that are exactly 0.
    """
    check_choice(layout, "layout", ("in_out", "out_in"))
    w = as_array(w, "w", dtype=(np.float32, np.float64, np.float16), ndim=2, allow_convert=True)
    w = np.ascontiguousarray(w, dtype=np.float32)
    x = _operand(x, "x")
    if x.dtype != np.float32:
        raise TypeError(f"x: expected float activations, got {x.dtype.name}")
    if x.ndim != 1:
        raise ValueError(f"x: expected a 1-D array, got shape {x.shape}")
    k, nout = (w.shape if layout == "in_out" else w.shape[::-1])
    if x.shape[0] != k:
        raise ValueError(f"x: expected {k} entries (the 'in' dimension of w with layout={layout!r}), got "
                         f"{x.shape[0]}")
    idx = np.empty(k, dtype=np.int64)
    val = np.empty(k, dtype=np.float32)
    cnt = int(_k.nonzero_entries(x, idx, val)) if k else 0
    out = np.zeros(nout, dtype=np.float32)
    if nout and cnt:
        if layout == "in_out":
            _k.gemv_skip_in_out(w, idx, val, cnt, out)
        else:
            _k.gemv_skip_out_in(w, idx, val, cnt, out)
    return SkipZerosResult(out, ((k - cnt) / k) if k else 0.0)


# ================================================================================================
# crossover sweep (used by benchmarks/bench_spmm.py and available to `memwall bench` / calibration)
# ================================================================================================
def _median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def crossover_point(sparsities, speedups) -> float | None:
    """Sparsity from which the format beats dense (speed-up >= 1) for every larger sparsity of the sweep:
    linear interpolation between the last point below 1 and the next one.  None if the sparsest point is still
    below 1 (it never beats dense for good); the smallest swept sparsity if it beats dense everywhere.
    """
    s = np.asarray(sparsities, dtype=np.float64)
    r = np.asarray(speedups, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, r = s[order], r[order]
    if r.size == 0:
        return None
    below = np.flatnonzero(r < 1.0)
    if below.size == 0:
        return float(s[0])
    i = int(below[-1])
    if i == r.size - 1:
        return None
    return float(s[i] + (1.0 - r[i]) * (s[i + 1] - s[i]) / (r[i + 1] - r[i]))


def crossover_sweep(shape=(4096, 4096), batch: int = 64, sparsities=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
                    repeats: int = 5, formats=("csr", "bsr16", "bsr32", "nm2:4"), seed: int = 0) -> list[dict]:
    """Time each sparse format against NumPy dense float32 matmul over a range of sparsities.

    Random weights (uniform random pattern for CSR, random blocks for BSR ``bsrR`` = R x R blocks, N:M at its
    fixed sparsity 1 - n/m), X float32 ``(in, batch)``; medians of ``repeats`` timed calls, the dense
    baseline timed right beside each sparse case.  Threads: whatever Numba/BLAS are set to.

    Returns
    -------
    list of dicts: ``format``, ``sparsity``, ``sparse_ms``, ``dense_ms``, ``speedup`` (dense / sparse) for every
    point, then one summary row per format with ``format``, ``crossover_sparsity`` (see
    :func:`crossover_point`; None = never beats dense in the sweep).
    """
    rows, cols = (check_int(shape[0], "shape[0]", minimum=1), check_int(shape[1], "shape[1]", minimum=1))
    batch = check_int(batch, "batch", minimum=1)
    repeats = check_int(repeats, "repeats", minimum=1)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    X = rng.standard_normal((cols, batch)).astype(np.float32)
    dense_fn = lambda: W @ X  # noqa: E731
    points: list[dict] = []
    summary: list[dict] = []
    for fmt in formats:
        fmt_points = []
        if fmt.startswith("nm"):
            n, m = (int(v) for v in fmt[2:].split(":"))
            A = NMSparseMatrix.from_dense(W, n, m)
            cases = [(1.0 - n / m, A)]
        else:
            cases = []
            for s in sparsities:
                if fmt == "csr":
                    keep = rng.random((rows, cols)) >= s
                    A = CSRMatrix.from_dense(W, mask=keep)
                elif fmt.startswith("bsr"):
                    b = int(fmt[3:])
                    if rows % b or cols % b:
                        raise ValueError(f"formats: block {b} does not divide shape {shape}")
                    bm = rng.random((rows // b, cols // b)) >= s
                    A = BSRMatrix.from_dense(W, (b, b), mask=bm)
                else:
                    raise ValueError(f"formats: unknown format {fmt!r} (csr, bsrR, nmN:M)")
                cases.append((float(s), A))
        for s, A in cases:
            t_sparse = _median_time(lambda: spmm(A, X), repeats)
            t_dense = _median_time(dense_fn, repeats)
            row = {"format": fmt, "sparsity": round(s, 4), "sparse_ms": t_sparse * 1e3, "dense_ms": t_dense * 1e3,
                   "speedup": t_dense / t_sparse}
            fmt_points.append(row)
        points += fmt_points
        summary.append({"format": fmt, "crossover_sparsity": crossover_point(
            [p["sparsity"] for p in fmt_points], [p["speedup"] for p in fmt_points])})
    return points + summary


# ------------------------------------------------------------------------------------------------
# `from memwall.kernels import spmm` must give the function, but Python binds the package attribute
# `spmm` to this submodule once it is imported.  Making the module itself callable (forwarding to the
# function) keeps both spellings working, whatever the import order.
# ------------------------------------------------------------------------------------------------
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402


class _CallableModule(_types.ModuleType):
    def __call__(self, A, X, *, x_scale=None):
        return spmm(A, X, x_scale=x_scale)


_sys.modules[__name__].__class__ = _CallableModule

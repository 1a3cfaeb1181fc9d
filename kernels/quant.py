"""Quantization: scales and zero points, INT8/INT4/ternary/binary quantize-dequantize, INT4 packing,
float-format emulation (FP16, BF16, TF32, FP8 E4M3/E5M2) and error metrics.

Every public function validates its inputs and calls a private ``@njit(cache=True)`` kernel.

Conventions
-----------
``x ≈ (values - zero_point) * scale`` with ``values = clip(rint(x / scale) + zero_point, qmin, qmax)``.
The division ``x / scale`` is done in float32 (``x`` float32, ``scale`` the stored float32 scale), ``rint``
rounds half to even (``np.rint``), and the clip saturates (never wraps).  Integer grids:

=========================  ==============  ====================================================
format                     values          scale rule (range = calibrated clipping range)
=========================  ==============  ====================================================
int8/int4, symmetric       [-(2^(b-1)-1),  ``amax / (2^(b-1)-1)``; zero point 0 (restricted,
                           2^(b-1)-1]      symmetric grid: -128 / -8 never produced)
int8/int4, asymmetric      [-2^(b-1),      ``(hi - lo) / (2^b - 1)`` with ``lo <= 0 <= hi``;
                           2^(b-1)-1]      ``zero_point = clip(qmin - rint(lo / scale))``
uint8/uint4, symmetric     [0, 2^b-1]      ``max(hi, 0) / (2^b - 1)``; zero point 0 (for
                                           non-negative data; negative values saturate to 0)
uint8/uint4, asymmetric    [0, 2^b-1]      as signed asymmetric, on the unsigned grid
ternary (bits="ternary")   {-1, 0, +1}     ``amax`` (threshold amax/2 for min-max; the
                                           percentile/MSE methods choose a smaller amax)
binary (bits="binary")     {-1, +1}        ``mean(|x|)`` (the least-squares scale for sign(x));
                                           ``x >= 0 -> +1``; the ``method`` is ignored; an
                                           all-zero unit gets FLT_MIN (0 is not on the grid)
=========================  ==============  ====================================================

Ternary and binary are symmetric and signed only.  ``QuantizedTensor.bits`` is 8, 4, 2 (ternary) or 1
(binary); ``QuantizedTensor.format`` names the grid.

Safe scales: a calibrated range of zero (an all-zero channel/group/tensor) gives ``scale = 1.0`` (the
values are then the zero point and dequantize to exactly 0); a positive scale below the smallest normal
float32 (``FLT_MIN`` = 1.1754944e-38) is raised to ``FLT_MIN`` so that ``1 / scale`` stays finite.  Scales
are computed in float64 and rounded once to float32.

INT4 packing: two values per byte along the last axis, element ``2i`` in the LOW nibble and ``2i+1`` in
the HIGH nibble, two's-complement nibbles for signed values; an odd length is padded with a 0 nibble.

Calibration: "minmax" (one fused pass that also refuses NaN/Inf), "percentile", and "mse" (the clipping
ratio of the min-max range, from a grid, that minimizes each unit's squared quantize-dequantize error).
:func:`quantize_rows_int8` is the fused fast path for dynamic per-token activations (W8A8).

Float formats (:func:`emulate_float`, :func:`float_format_table`): round-to-nearest-even on the float32
bits, gradual underflow; overflow gives inf (fp16, bf16, tf32, e5m2) or saturates to +-448 (fp8_e4m3, OCP
E4M3FN "satfinite"; ``saturate=False`` gives NaN instead), as torch 2.13's casts do.

Error metrics (:func:`mse`, :func:`max_abs_error`, :func:`sqnr_db`, :func:`quantization_error`) accumulate
in float64 over fixed chunks, so results do not depend on the thread count.  Inputs smaller than
``PARALLEL_MIN_ELEMENTS`` run on the calling thread only; every kernel gives identical results on 1 or N
threads (each thread owns its output rows/chunks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ._sched import call_serial, num_threads
from ._validate import as_array, check_choice, check_finite, check_fraction, check_int, check_positive, check_range

__all__ = [
    "QuantizedTensor",
    "quantize",
    "dequantize",
    "compute_scales",
    "quantize_rows_int8",
    "pack_int4",
    "unpack_int4",
    "emulate_float",
    "float_format_table",
    "FLOAT_FORMATS",
    "mse",
    "max_abs_error",
    "sqnr_db",
    "quantization_error",
]

#: Smallest normal float32; the floor for a positive scale.
FLT_MIN = float(np.finfo(np.float32).tiny)
#: Allowed ``bits`` values of :func:`quantize`.
ALLOWED_BITS = (8, 4, "ternary", "binary")
#: Calibration methods.
METHODS = ("minmax", "percentile", "mse")
#: Default percentile of the "percentile" method (of |x| when symmetric; p and 100-p of x otherwise).
DEFAULT_PERCENTILE = 99.9
#: Default number of clipping ratios tried by the "mse" method: r = i / grid for i = 1..grid.
DEFAULT_MSE_GRID = 100

_PER_TENSOR_CHUNK = 16384  # elements per parallel work item for per-tensor quantization
#: Below this many elements a parallel kernel runs on the calling thread only: waking the pool costs more
#: than the work (and, on a busy machine, a time slice per parallel region — milliseconds).
PARALLEL_MIN_ELEMENTS = 1 << 17


def _launch(kernel, n_elements, *args):
    """Call a parallel kernel, on one thread when the work is small (results do not depend on threads)."""
    if n_elements < PARALLEL_MIN_ELEMENTS:
        return call_serial(kernel, *args)
    return kernel(*args)


# ================================================================================================
# grids
# ================================================================================================
def _grid(bits, signed: bool, symmetric: bool) -> tuple[int, int, int, str]:
    """(nbits, qmin, qmax, format name) of a quantization grid; validates the combination."""
    if isinstance(bits, str):
        check_choice(bits, "bits", ALLOWED_BITS)
    elif isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or int(bits) not in (8, 4):
        raise ValueError(f"bits: expected one of {', '.join(map(repr, ALLOWED_BITS))}, got {bits!r}")
    if bits == "ternary" or bits == "binary":
        if not signed:
            raise ValueError(f"signed: {bits} quantization is signed only, got signed=False")
        if not symmetric:
            raise ValueError(f"symmetric: {bits} quantization is symmetric only, got symmetric=False")
        return (2, -1, 1, "ternary") if bits == "ternary" else (1, -1, 1, "binary")
    b = int(bits)
    if signed:
        if symmetric:
            return b, -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1, f"int{b}"
        return b, -(2 ** (b - 1)), 2 ** (b - 1) - 1, f"int{b}"
    return b, 0, 2**b - 1, f"uint{b}"


# ================================================================================================
# QuantizedTensor
# ================================================================================================
@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantized array: ``x ≈ (values - zero_point) * scale``.

    Attributes
    ----------
    values : int8 (signed grids) or uint8 (unsigned grids) array, same shape as the original, never packed.
    scale : float32 array; shape ``()`` per tensor, ``(x.shape[axis],)`` per channel, ``(rows, K // g)`` per
        group of ``g`` along the last axis of a 2-D array.
    zero_point : int32 array of the scale's shape (all zeros when symmetric).
    bits : 8, 4, 2 (ternary) or 1 (binary).
    axis : channel axis (non-negative) or None.
    group_size : group length along the last axis or None.
    signed, symmetric : the grid.
    format : "int8", "uint8", "int4", "uint4", "ternary" or "binary".
    """

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    axis: int | None = None
    group_size: int | None = None
    signed: bool = True
    symmetric: bool = True
    format: str = ""

    def __post_init__(self):
        v = self.values
        if not isinstance(v, np.ndarray) or v.dtype not in (np.int8, np.uint8):
            raise TypeError("values: expected an int8 or uint8 numpy.ndarray")
        if not isinstance(self.scale, np.ndarray) or self.scale.dtype != np.float32:
            raise TypeError("scale: expected a float32 numpy.ndarray")
        if not isinstance(self.zero_point, np.ndarray) or self.zero_point.dtype != np.int32:
            raise TypeError("zero_point: expected an int32 numpy.ndarray")
        if isinstance(self.bits, (bool, np.bool_)) or self.bits not in (8, 4, 2, 1):
            raise ValueError(f"bits: expected 8, 4, 2 (ternary) or 1 (binary), got {self.bits!r}")
        if self.group_size is not None:
            g = check_int(self.group_size, "group_size", minimum=1)
            if self.axis is not None:
                raise ValueError(f"axis: must be None when group_size is given, got {self.axis!r}")
            if v.ndim != 2 or v.shape[1] % g:
                raise ValueError(f"group_size: values must be 2-D with a last axis divisible by {g}, "
                                 f"got shape {v.shape}")
        elif self.axis is not None:
            check_int(self.axis, "axis", minimum=0, maximum=v.ndim - 1)
        want = _scale_shape(v.shape, self.axis, self.group_size)
        if self.scale.shape != want:
            raise ValueError(f"scale: expected shape {want} for values of shape {v.shape}, got {self.scale.shape}")
        if self.zero_point.shape != want:
            raise ValueError(f"zero_point: expected shape {want}, got {self.zero_point.shape}")
        check_positive(self.scale, "scale")
        if not self.format:
            object.__setattr__(self, "format", f"{'int' if v.dtype == np.int8 else 'uint'}{self.bits}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def qmin(self) -> int:
        """Smallest value of the grid."""
        if self.format in ("ternary", "binary"):
            return -1
        if self.values.dtype == np.uint8:
            return 0
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Largest value of the grid."""
        if self.format in ("ternary", "binary"):
            return 1
        return 2**self.bits - 1 if self.values.dtype == np.uint8 else 2 ** (self.bits - 1) - 1

    def dequantize(self) -> np.ndarray:
        """float32 array ``(values - zero_point) * scale`` (see :func:`dequantize`)."""
        return dequantize(self)

    def packed(self) -> np.ndarray:
        """The 4-bit values packed two per byte (:func:`pack_int4`); only for 4-bit (or smaller) grids."""
        if self.bits > 4:
            raise ValueError(f"packed: only 4-bit values can be packed, this tensor has bits={self.bits}")
        return pack_int4(self.values, signed=self.values.dtype == np.int8)


def _scale_shape(shape, axis, group_size) -> tuple[int, ...]:
    if group_size is not None:
        if len(shape) != 2:
            raise ValueError(f"values: group quantization needs a 2-D array, got shape {shape}")
        return (shape[0], shape[1] // group_size)
    if axis is not None:
        return (shape[axis],)
    return ()


# ================================================================================================
# scale computation
# ================================================================================================
@njit(cache=True)
def _scale_zp(lo, hi, qmin, qmax, symmetric, signed):
    """(float32-representable scale as float64, zero point) for the clipping range [lo, hi] (float64)."""
    if symmetric:
        if signed:
            amax = max(abs(lo), abs(hi))
        else:
            amax = max(hi, 0.0)
        s = amax / qmax
        zp = 0
    else:
        lo = min(lo, 0.0)
        hi = max(hi, 0.0)
        s = (hi - lo) / (qmax - qmin)
        zp = 0
    s32 = np.float32(s)
    if s32 == 0.0:
        s32 = np.float32(1.0)
    elif s32 < np.float32(1.1754943508222875e-38):
        s32 = np.float32(1.1754943508222875e-38)
    if not symmetric:
        z = qmin - np.rint(lo / np.float64(s32))
        if z < qmin:
            z = qmin
        if z > qmax:
            z = qmax
        zp = int(z)
    return s32, zp


@njit(cache=True)
def _scales_kernel(lo, hi, qmin, qmax, symmetric, signed, scale, zp):
    for i in range(lo.shape[0]):
        s, z = _scale_zp(lo[i], hi[i], qmin, qmax, symmetric, signed)
        scale[i] = s
        zp[i] = z


@njit(cache=True)
def _quant_one(v, s, z, qmin, qmax):
    """clip(rint(v / s) + z, qmin, qmax), all float32 (qmin/qmax passed as float32 keep it so)."""
    q = np.rint(v / s) + z
    return min(max(q, qmin), qmax)


@njit(cache=True)
def _sum_lanes(buf, n):
    """Sum of buf[:n] with 8 independent accumulators (fixed order: deterministic, and 8x the throughput of
    one float64 chain)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    n8 = n - n % 8
    for k in range(0, n8, 8):
        a0 += buf[k]
        a1 += buf[k + 1]
        a2 += buf[k + 2]
        a3 += buf[k + 3]
        a4 += buf[k + 4]
        a5 += buf[k + 5]
        a6 += buf[k + 6]
        a7 += buf[k + 7]
    tail = 0.0
    for k in range(n8, n):
        tail += buf[k]
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + tail


_MSE_BLOCK = 4096  # elements per squared-error buffer (stays in L1/L2)


@njit(cache=True)
def _block_sq_err(vals, s, zf, qmin_f, qmax_f, buf):
    """Sum over vals (a 1-D slice) of (dequantize(quantize(v)) - v)^2 in float64: the per-element loop
    vectorizes (no reduction in it; indices from 0), the sum uses fixed lanes."""
    n = vals.shape[0]
    for k in range(n):
        v = vals[k]
        q = _quant_one(v, s, zf, qmin_f, qmax_f)
        d = np.float64((q - zf) * s) - np.float64(v)
        buf[k] = d * d
    return _sum_lanes(buf, n)


@njit(parallel=True, cache=True)
def _mse_search_kernel(seg, lo, hi, qmin, qmax, symmetric, signed, ratios, best):
    """For each row of ``seg`` pick the clipping ratio (from ``ratios``, descending; ties keep the first)
    minimizing the squared error of quantize-dequantize (same float32 arithmetic as quantize/dequantize).
    One row per thread (many rows)."""
    n_seg, length = seg.shape
    nr = ratios.shape[0]
    qmin_f = np.float32(qmin)
    qmax_f = np.float32(qmax)
    for i in prange(n_seg):
        buf = np.empty(min(length, _MSE_BLOCK))
        row = seg[i]
        best_err = np.inf
        best_r = 1.0
        for j in range(nr):
            s, z = _scale_zp(lo[i] * ratios[j], hi[i] * ratios[j], qmin, qmax, symmetric, signed)
            zf = np.float32(z)
            err = 0.0
            for start in range(0, length, _MSE_BLOCK):
                err += _block_sq_err(row[start:min(length, start + _MSE_BLOCK)], s, zf, qmin_f, qmax_f, buf)
            if err < best_err:
                best_err = err
                best_r = ratios[j]
        best[i] = best_r


@njit(parallel=True, cache=True)
def _mse_blocks_kernel(seg, lo, hi, qmin, qmax, symmetric, signed, ratios, part):
    """Few long rows: part[i, b, j] = squared error of block b of row i at ratio j, one block per thread.
    Summing part over b in block order gives exactly the sums of _mse_search_kernel."""
    n_seg, length = seg.shape
    nr = ratios.shape[0]
    nblk = part.shape[1]
    qmin_f = np.float32(qmin)
    qmax_f = np.float32(qmax)
    for t in prange(n_seg * nblk):
        i = t // nblk
        b = t - i * nblk
        buf = np.empty(_MSE_BLOCK)
        start = b * _MSE_BLOCK
        stop = min(length, start + _MSE_BLOCK)
        for j in range(nr):
            s, z = _scale_zp(lo[i] * ratios[j], hi[i] * ratios[j], qmin, qmax, symmetric, signed)
            part[i, b, j] = _block_sq_err(seg[i, start:stop], s, np.float32(z), qmin_f, qmax_f, buf)


def _mse_best_ratios(seg, lo, hi, qmin, qmax, symmetric, signed, grid) -> np.ndarray:
    """Best clipping ratio per row of seg (see compute_scales, method "mse")."""
    n_seg, length = seg.shape
    ratios = np.arange(grid, 0, -1, dtype=np.float64) / grid
    best = np.empty(n_seg)
    seg = np.ascontiguousarray(seg)
    nblk = (length + _MSE_BLOCK - 1) // _MSE_BLOCK
    if n_seg < 2 * num_threads() and nblk > 1:
        part = np.empty((n_seg, nblk, grid))
        _launch(_mse_blocks_kernel, seg.size * grid, seg, lo, hi, qmin, qmax, symmetric, signed, ratios, part)
        err = np.zeros((n_seg, grid))
        for b in range(nblk):  # the same order of additions as the row kernel
            err += part[:, b, :]
        best[:] = ratios[np.argmin(err, axis=1)]  # argmin: first minimum = largest ratio
    else:
        _launch(_mse_search_kernel, seg.size * grid, seg, lo, hi, qmin, qmax, symmetric, signed, ratios, best)
    return best


def _segments(x: np.ndarray, axis, group_size) -> tuple[np.ndarray, tuple[int, ...]]:
    """A contiguous (S, L) view/copy whose rows are the calibration units, and the scale shape."""
    if group_size is not None:
        rows, k = x.shape
        return x.reshape(rows * (k // group_size), group_size), (rows, k // group_size)
    if axis is not None:
        c = x.shape[axis]
        moved = np.moveaxis(x, axis, 0)
        return np.ascontiguousarray(moved).reshape(c, x.size // c if c else 0), (c,)
    return x.reshape(1, -1), ()


@njit(parallel=True, cache=True)
def _minmax3_kernel(xi, lo, hi):
    """xi: float32 bits as int32 (A, C, B) -> per (a, c) min/max of the order-preserving integer key
    ``v ^ ((v >> 31) & 0x7FFFFFFF)`` (integer min/max vectorize; NaN/Inf land outside the finite keys)."""
    a_n, c_n, b_n = xi.shape
    for t in prange(a_n * c_n):
        a = t // c_n
        c = t - a * c_n
        row = xi[a, c]
        mn = np.int64(2147483647)
        mx = np.int64(-2147483648)
        for b in range(row.shape[0]):
            v = np.int64(row[b])
            k = v ^ ((v >> 31) & 0x7FFFFFFF)
            mn = min(mn, k)
            mx = max(mx, k)
        lo[a, c] = mn
        hi[a, c] = mx


@njit(parallel=True, cache=True)
def _minmax_cols_kernel(xi, lo, hi):
    """xi (A, C) -> per block of 64 rows and column c the min/max key (see _minmax3_kernel)."""
    a_n, c_n = xi.shape
    for blk in prange(lo.shape[0]):
        lo_b = lo[blk]
        hi_b = hi[blk]
        for c in range(c_n):
            lo_b[c] = 2147483647
            hi_b[c] = -2147483648
        for a in range(blk * 64, min(a_n, blk * 64 + 64)):
            row = xi[a]
            for c in range(c_n):
                v = np.int64(row[c])
                k = v ^ ((v >> 31) & 0x7FFFFFFF)
                lo_b[c] = min(lo_b[c], k)
                hi_b[c] = max(hi_b[c], k)


_KEY_FLT_MAX = 0x7F7FFFFF
_KEY_NEG_FLT_MAX = -0x7F800000  # key of -FLT_MAX (bits 0xFF7FFFFF)


def _keys_to_float(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.int64)
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).astype(np.int32).view(np.float32).astype(np.float64)


def _minmax_units(x: np.ndarray, axis, group_size) -> tuple[np.ndarray, np.ndarray]:
    """Per calibration unit (min, max) of x as float64, in one fused pass that also refuses NaN/Inf."""
    xi = x.view(np.int32)
    n = x.size
    v3 = _views3(x.shape, axis, group_size)
    if v3 is None:  # per tensor: partial results per chunk
        flat = xi.reshape(-1)
        body = (n // _PER_TENSOR_CHUNK) * _PER_TENSOR_CHUNK
        parts = []
        for piece in (flat[:body].reshape(-1, 1, _PER_TENSOR_CHUNK), flat[body:].reshape(1, 1, -1)):
            if piece.size:
                lo = np.empty(piece.shape[:2], np.int32)
                hi = np.empty(piece.shape[:2], np.int32)
                _launch(_minmax3_kernel, piece.size, piece, lo, hi)
                parts.append((lo.min(), hi.max()))
        if not parts:
            return np.zeros(1), np.zeros(1)
        klo = np.array([min(p[0] for p in parts)])
        khi = np.array([max(p[1] for p in parts)])
    else:
        a, c, b = v3
        if a * b == 0:  # empty units
            return np.zeros(c), np.zeros(c)
        if b == 1:
            nblk = (a + 63) // 64
            lo = np.empty((nblk, c), np.int32)
            hi = np.empty((nblk, c), np.int32)
            _launch(_minmax_cols_kernel, n, xi.reshape(a, c), lo, hi)
        else:
            lo = np.empty((a, c), np.int32)
            hi = np.empty((a, c), np.int32)
            _launch(_minmax3_kernel, n, xi.reshape(a, c, b), lo, hi)
        klo, khi = lo.min(axis=0), hi.max(axis=0)
    if klo.size and (klo.min() < _KEY_NEG_FLT_MAX or khi.max() > _KEY_FLT_MAX):
        check_finite(x, "x")  # raises, naming the first offending index
    return _keys_to_float(klo), _keys_to_float(khi)


def _ranges(seg, lo, hi, symmetric: bool, signed: bool, method: str, percentile: float):
    """Per-unit clipping range (lo, hi) as float64 arrays (lo/hi: the min-max range)."""
    if method != "percentile" or seg.shape[1] == 0:
        return lo, hi
    if symmetric and signed:
        amax = np.percentile(np.abs(seg), percentile, axis=1)
        return -amax, amax
    hi = np.percentile(seg, percentile, axis=1)
    lo = np.percentile(seg, 100.0 - percentile, axis=1)
    return lo.astype(np.float64), hi.astype(np.float64)


def _check_layout(x: np.ndarray, axis, group_size):
    """Validate axis/group_size against x; return (axis normalized, group_size)."""
    if group_size is not None:
        group_size = check_int(group_size, "group_size", minimum=1)
        if axis is not None:
            raise ValueError("axis: must be None when group_size is given (groups run along the last axis of a "
                             f"2-D array, one scale per (row, group)), got axis={axis!r}")
        if x.ndim != 2:
            raise ValueError(f"x: group quantization expects a 2-D array (rows, K), got shape {x.shape}")
        if x.shape[1] % group_size != 0:
            raise ValueError(f"group_size: K={x.shape[1]} (last axis of x) is not divisible by group_size={group_size}")
        return None, group_size
    if axis is not None:
        axis = check_int(axis, "axis")
        if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
            raise ValueError(f"axis: expected an axis in [{-x.ndim}, {x.ndim - 1}] for x of shape {x.shape}, "
                             f"got {axis}")
        axis = axis % x.ndim
    return axis, None


def _refuse_complex(x, name) -> None:
    """Complex input would be cast to real (imaginary part silently dropped): a TypeError instead."""
    if not isinstance(x, np.ndarray) and not isinstance(x, (str, bytes)):
        try:
            x = np.asarray(x)
        except Exception:  # noqa: BLE001 - as_array reports it, naming the argument
            return
    if isinstance(x, np.ndarray) and x.dtype.kind == "c":
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype.name}")


def _float_input(x, name, ndim=None) -> np.ndarray:
    """A C-contiguous float32 array from a float ndarray (float16/64 converted) or an array-like of numbers;
    integer/bool ndarrays are a TypeError (they are already quantized or not data)."""
    if isinstance(x, np.ndarray) and x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array (float32; float16/float64 are converted), got {x.dtype.name}")
    _refuse_complex(x, name)
    x = as_array(x, name, dtype=(np.float32, np.float64, np.float16), ndim=ndim, allow_convert=True)
    if x.dtype != np.float32:
        x = x.astype(np.float32, order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
    return x


def _prepare(x, bits, symmetric, axis, group_size, method, signed, kw):
    x = _float_input(x, "x")
    symmetric = bool(symmetric)
    signed = bool(signed)
    nbits, qmin, qmax, fmt = _grid(bits, signed, symmetric)
    check_choice(method, "method", METHODS)
    axis, group_size = _check_layout(x, axis, group_size)
    unknown = set(kw) - {"percentile", "grid"}
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))} (known: percentile, grid)")
    pct = check_fraction(kw.get("percentile", DEFAULT_PERCENTILE), "percentile", low=50.0, high=100.0)
    grid = check_int(kw.get("grid", DEFAULT_MSE_GRID), "grid", minimum=1, maximum=10000)
    return x, symmetric, signed, nbits, qmin, qmax, fmt, axis, group_size, pct, grid


def _compute(x, symmetric, signed, qmin, qmax, fmt, axis, group_size, method, pct, grid):
    lo, hi = _minmax_units(x, axis, group_size)  # also the NaN/Inf check
    sshape = _scale_shape(x.shape, axis, group_size)
    n_seg = lo.shape[0]
    if fmt == "binary":
        seg, _ = _segments(x, axis, group_size)
        if seg.shape[1]:
            mean_abs = np.abs(seg).mean(axis=1, dtype=np.float64)
        else:
            mean_abs = np.zeros(n_seg)
        # binary cannot represent 0: an all-zero unit gets the smallest scale, dequantizing to +-FLT_MIN
        mean_abs = np.where(mean_abs == 0.0, FLT_MIN, mean_abs)
        lo, hi = -mean_abs, mean_abs
    elif method != "minmax":
        seg, _ = _segments(x, axis, group_size)
        lo, hi = _ranges(seg, lo, hi, symmetric, signed, method, pct)
        if method == "mse" and seg.shape[1]:
            best = _mse_best_ratios(seg, lo, hi, qmin, qmax, symmetric, signed, grid)
            lo, hi = lo * best, hi * best
    scale = np.empty(n_seg, np.float32)
    zp = np.empty(n_seg, np.int32)
    _scales_kernel(np.ascontiguousarray(lo, dtype=np.float64), np.ascontiguousarray(hi, dtype=np.float64),
                   qmin, qmax, symmetric, signed, scale, zp)
    return scale.reshape(sshape), zp.reshape(sshape)


def compute_scales(x, bits=8, symmetric=True, axis=None, group_size=None, method="minmax", signed=True, **kw):
    """Scales and zero points for quantizing ``x`` (see the module docstring for the grids and rules).

    Parameters
    ----------
    x : float array (float32; float16/float64 are converted). NaN/Inf are refused.
    bits : 8, 4, "ternary" or "binary".
    symmetric : zero point 0 (True) or an affine grid with an int32 zero point (False).
    axis : None (per tensor) or the channel axis: one scale per index along it (either axis of a 2-D weight).
    group_size : g: one scale per (row, group of g consecutive entries of the last axis) of a 2-D x; the last
        dimension must be divisible by g.  Excludes ``axis``.
    method : "minmax" (the full range), "percentile" (keyword ``percentile=``, default 99.9: of |x| when
        symmetric signed, else the (100-p, p) percentiles of x), or "mse" (search the clipping ratio
        r = i/grid, i = grid..1 (keyword ``grid=``, default 100) of the min-max range minimizing the
        squared quantization error of each channel/group; ties keep the larger ratio).
    signed : signed (int8 values) or unsigned (uint8 values) grid.

    Returns
    -------
    (scale float32, zero_point int32): shape () per tensor, (x.shape[axis],) per channel,
    (rows, K // group_size) per group.
    """
    x, symmetric, signed, _, qmin, qmax, fmt, axis, group_size, pct, grid = _prepare(
        x, bits, symmetric, axis, group_size, method, signed, kw)
    return _compute(x, symmetric, signed, qmin, qmax, fmt, axis, group_size, method, pct, grid)


# ================================================================================================
# quantize / dequantize kernels
# ================================================================================================
@njit(parallel=True, cache=True)
def _quant3_kernel(x, scale, zp, qmin, qmax, binary, out):
    """x (A, C, B) float32, scale/zp (C,): one scale per middle index."""
    a_n, c_n, b_n = x.shape
    qmin_f = np.float32(qmin)
    qmax_f = np.float32(qmax)
    for t in prange(a_n * c_n):
        a = t // c_n
        c = t - a * c_n
        s = scale[c]
        z = np.float32(zp[c])
        xr = x[a, c]  # 1-D row views: with x[a, c, b] LLVM vectorized over the signed a/c index (gathers)
        orow = out[a, c]
        if binary:
            for b in range(b_n):
                orow[b] = 1 if xr[b] >= 0 else -1
        else:
            for b in range(b_n):
                orow[b] = _quant_one(xr[b], s, z, qmin_f, qmax_f)


@njit(parallel=True, cache=True)
def _quant_cols_kernel(x, scale, zp, qmin, qmax, binary, out):
    """x (A, C) float32, scale/zp (C,): one scale per column."""
    a_n, c_n = x.shape
    qmin_f = np.float32(qmin)
    qmax_f = np.float32(qmax)
    for a in prange(a_n):
        if binary:
            for c in range(c_n):
                out[a, c] = 1 if x[a, c] >= 0 else -1
        else:
            for c in range(c_n):
                out[a, c] = _quant_one(x[a, c], scale[c], np.float32(zp[c]), qmin_f, qmax_f)


@njit(parallel=True, cache=True)
def _dequant3_kernel(q, scale, zp, out):
    a_n, c_n, b_n = q.shape
    for t in prange(a_n * c_n):
        a = t // c_n
        c = t - a * c_n
        s = scale[c]
        z = zp[c]
        for b in range(b_n):
            out[a, c, b] = np.float32(np.int32(q[a, c, b]) - z) * s


@njit(parallel=True, cache=True)
def _dequant_cols_kernel(q, scale, zp, out):
    a_n, c_n = q.shape
    for a in prange(a_n):
        for c in range(c_n):
            out[a, c] = np.float32(np.int32(q[a, c]) - zp[c]) * scale[c]


def _views3(shape, axis, group_size):
    """How to see an array of ``shape`` as (A, C, B) with one scale per C index; None for per-tensor."""
    if group_size is not None:
        return (1, shape[0] * (shape[1] // group_size), group_size)
    if axis is not None:
        a = int(np.prod(shape[:axis], dtype=np.int64))
        b = int(np.prod(shape[axis + 1:], dtype=np.int64))
        return (a, shape[axis], b)
    return None


def _run_elementwise(kernel3, kernel_cols, src, dst, scale, zp, axis, group_size, *extra):
    """Apply a per-scale elementwise kernel to src -> dst (both C-contiguous, same shape)."""
    s_flat = np.ascontiguousarray(scale.reshape(-1))
    z_flat = np.ascontiguousarray(zp.reshape(-1))
    n = src.size
    v3 = _views3(src.shape, axis, group_size)
    if v3 is None:  # per tensor: chunk the flat array so that all threads work
        fs, fd = src.reshape(-1), dst.reshape(-1)
        body = (n // _PER_TENSOR_CHUNK) * _PER_TENSOR_CHUNK
        if body:
            _launch(kernel3, n, fs[:body].reshape(-1, 1, _PER_TENSOR_CHUNK), s_flat, z_flat, *extra,
                    fd[:body].reshape(-1, 1, _PER_TENSOR_CHUNK))
        if n - body:
            _launch(kernel3, 0, fs[body:].reshape(1, 1, -1), s_flat, z_flat, *extra, fd[body:].reshape(1, 1, -1))
        return
    a, c, b = v3
    if n == 0:
        return
    if b == 1:
        _launch(kernel_cols, n, src.reshape(a, c), s_flat, z_flat, *extra, dst.reshape(a, c))
    else:
        _launch(kernel3, n, src.reshape(a, c, b), s_flat, z_flat, *extra, dst.reshape(a, c, b))


def quantize(x, bits=8, symmetric=True, axis=None, group_size=None, method="minmax", signed=True,
             **kw) -> QuantizedTensor:
    """Quantize a float array to an integer grid: ``values = clip(rint(x / scale) + zero_point, qmin, qmax)``.

    Parameters are those of :func:`compute_scales` (bits 8/4/"ternary"/"binary", symmetric, axis for per-channel
    scales, group_size for per-group scales along the last axis of a 2-D x, method "minmax"/"percentile"/"mse",
    signed).  Rounding is half to even; values outside the grid saturate.

    Returns
    -------
    QuantizedTensor with ``values`` int8 (signed) or uint8 (unsigned) of x's shape, float32 ``scale`` and
    int32 ``zero_point``; ``x ≈ (values - zero_point) * scale``.

    Raises
    ------
    TypeError for a non-numeric x or unknown keyword; ValueError for NaN/Inf in x, bits outside
    {8, 4, "ternary", "binary"}, a bad axis, group_size <= 0 or not dividing K, an unknown method.
    """
    x, symmetric, signed, nbits, qmin, qmax, fmt, axis, group_size, pct, grid = _prepare(
        x, bits, symmetric, axis, group_size, method, signed, kw)
    scale, zp = _compute(x, symmetric, signed, qmin, qmax, fmt, axis, group_size, method, pct, grid)
    out = np.empty(x.shape, np.int8 if signed else np.uint8)
    _run_elementwise(_quant3_kernel, _quant_cols_kernel, x, out, scale, zp, axis, group_size,
                     qmin, qmax, fmt == "binary")
    return QuantizedTensor(out, scale, zp, nbits, axis, group_size, signed, symmetric, fmt)


def dequantize(q, scale=None, zero_point=None, *, axis=None, group_size=None) -> np.ndarray:
    """float32 ``(q - zero_point) * scale`` (the subtraction in int32, the product in float32).

    ``q`` is a :class:`QuantizedTensor` (then the other arguments must be omitted), or an int8/uint8 array
    with a float32-compatible ``scale`` of shape () (per tensor), ``(q.shape[axis],)`` (``axis=``) or
    ``(rows, K // group_size)`` (``group_size=``, 2-D q), and an optional integer ``zero_point`` of the scale's
    shape (default 0).  Scales must be finite and > 0.
    """
    if isinstance(q, QuantizedTensor):
        if scale is not None or zero_point is not None or axis is not None or group_size is not None:
            raise TypeError("dequantize: pass either a QuantizedTensor alone or "
                            "(q, scale, zero_point, axis/group_size)")
        qt = q
    else:
        q = as_array(q, "q", dtype=(np.int8, np.uint8))
        if scale is None:
            raise TypeError("scale: required when q is an array")
        scale = as_array(scale, "scale", dtype=np.float32, allow_convert=True)
        check_positive(scale, "scale")
        axis, group_size = _check_layout(q, axis, group_size)
        want = _scale_shape(q.shape, axis, group_size)
        if scale.shape != want:
            raise ValueError(f"scale: expected shape {want} for q of shape {q.shape}, got {scale.shape}")
        if zero_point is None:
            zero_point = np.zeros(want, np.int32)
        else:
            zero_point = as_array(np.asarray(zero_point) if np.isscalar(zero_point) else zero_point, "zero_point")
            if zero_point.dtype.kind not in "iu":
                raise TypeError(f"zero_point: expected an integer array, got {zero_point.dtype.name}")
            if zero_point.shape != want:
                raise ValueError(f"zero_point: expected shape {want}, got {zero_point.shape}")
            check_range(zero_point, "zero_point", -(2**31), 2**31 - 1)
            zero_point = zero_point.astype(np.int32)
        qt = QuantizedTensor(q, scale, zero_point, 8, axis, group_size,
                             q.dtype == np.int8, bool((zero_point == 0).all()))
    vals = qt.values if qt.values.flags.c_contiguous else qt.values.copy()
    out = np.empty(vals.shape, np.float32)
    _run_elementwise(_dequant3_kernel, _dequant_cols_kernel, vals, out, qt.scale, qt.zero_point,
                     qt.axis, qt.group_size)
    return out


# ================================================================================================
# dynamic per-row INT8 (activations)
# ================================================================================================
@njit(parallel=True, cache=True)
def _rows_int8_kernel(x, xu, q, scale, amax_bits):
    """One row per thread: max |x| on the integer bit patterns (an integer max reduction vectorizes; NaN/Inf
    show up as bits >= 0x7F800000), then q = clip(rint(x / s), -127, 127) while the row is in cache."""
    rows, k = x.shape
    amax_f = amax_bits.view(np.float32)
    bad = 0
    for i in prange(rows):
        m = np.uint32(0)
        for j in range(k):
            m = max(m, xu[i, j] & np.uint32(0x7FFFFFFF))
        if m >= np.uint32(0x7F800000):
            bad += 1
            scale[i] = np.float32(1.0)
            for j in range(k):
                q[i, j] = 0
            continue
        amax_bits[i] = m
        s = amax_f[i] / np.float32(127.0)
        if s == 0.0:
            s = np.float32(1.0)
        elif s < np.float32(1.1754943508222875e-38):
            s = np.float32(1.1754943508222875e-38)
        scale[i] = s
        for j in range(k):
            v = np.rint(x[i, j] / s)
            v = min(max(v, np.float32(-127.0)), np.float32(127.0))
            q[i, j] = np.int8(v)
    return bad


def quantize_rows_int8(x) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic symmetric per-row INT8 quantization (per-token activations for W8A8 GEMM), one fused pass.

    ``scale[i] = max|x[i]| / 127`` (float32; an all-zero row gets 1.0, a positive scale below FLT_MIN is
    raised to FLT_MIN) and ``q[i, j] = clip(rint(x[i, j] / scale[i]), -127, 127)``: identical to
    ``quantize(x, 8, axis=0)`` with ``symmetric=True, method="minmax"``.

    Parameters
    ----------
    x : 2-D float32 array (rows, K); other float dtypes are converted, non-contiguous input copied.

    Returns
    -------
    (q int8 (rows, K), scale float32 (rows,)).  NaN/Inf in x raise ValueError.
    """
    return _quantize_rows_int8(_float_input(x, "x", ndim=2))


def _quantize_rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_rows_int8` of an already validated float32 C-contiguous 2-D ``x`` (callers that have
    checked their activations skip a second validation pass)."""
    q = np.empty(x.shape, np.int8)
    scale = np.empty(x.shape[0], np.float32)
    if x.size == 0:
        scale[:] = 1.0
        return q, scale
    if _launch(_rows_int8_kernel, x.size, x, x.view(np.uint32), q, scale, np.empty(x.shape[0], np.uint32)):
        check_finite(x, "x")
    return q, scale


# ================================================================================================
# INT4 packing
# ================================================================================================
@njit(parallel=True, cache=True)
def _pack4_kernel(q, out):
    rows, n = q.shape
    nb = out.shape[1]
    half = n // 2
    for r in prange(rows):
        for i in range(half):
            lo = np.uint8(q[r, 2 * i]) & np.uint8(0x0F)
            hi = np.uint8(q[r, 2 * i + 1]) & np.uint8(0x0F)
            out[r, i] = lo | (hi << np.uint8(4))
        if nb > half:
            out[r, half] = np.uint8(q[r, n - 1]) & np.uint8(0x0F)


@njit(parallel=True, cache=True)
def _unpack4_kernel(p, n, signed, out):
    rows = p.shape[0]
    half = n // 2
    for r in prange(rows):
        for i in range(half):
            b = np.int32(p[r, i])
            lo = b & 0x0F
            hi = b >> 4
            if signed:
                lo = (lo ^ 8) - 8
                hi = (hi ^ 8) - 8
            out[r, 2 * i] = lo
            out[r, 2 * i + 1] = hi
        if n > 2 * half:
            lo = np.int32(p[r, half]) & 0x0F
            if signed:
                lo = (lo ^ 8) - 8
            out[r, n - 1] = lo


def pack_int4(q, signed=True) -> np.ndarray:
    """Pack 4-bit integers two per byte along the last axis.

    Element ``2i`` goes to the LOW nibble of byte ``i`` and element ``2i+1`` to the HIGH nibble (two's
    complement nibbles when ``signed``); an odd length is padded with a 0 nibble.

    Parameters
    ----------
    q : integer array with ndim >= 1; values in [-8, 7] (signed) or [0, 15] (unsigned) — anything else is a
        ValueError naming the first offending index (no wrap-around).
    signed : the value range to check.

    Returns
    -------
    uint8 array of shape ``q.shape[:-1] + (ceil(n / 2),)``.
    """
    q = as_array(q, "q")
    if q.dtype.kind not in "iu":
        raise TypeError(f"q: expected an integer array (int8 for signed, uint8 for unsigned), got {q.dtype.name}")
    if q.ndim < 1:
        raise ValueError(f"q: expected an array with at least 1 dimension, got shape {q.shape}")
    if signed:
        check_range(q, "q", -8, 7)
        q = q.astype(np.int8, copy=False)
    else:
        check_range(q, "q", 0, 15)
        q = q.astype(np.uint8, copy=False)
    n = q.shape[-1]
    lead = q.shape[:-1]
    out = np.empty(lead + ((n + 1) // 2,), np.uint8)
    if out.size:
        _launch(_pack4_kernel, q.size, q.reshape(-1, n), out.reshape(-1, out.shape[-1]))
    return out


def unpack_int4(p, n, signed=True) -> np.ndarray:
    """Inverse of :func:`pack_int4`: uint8 ``p`` of shape (..., ceil(n/2)) -> int8 (signed) or uint8 (..., n).

    ``n`` must satisfy ``ceil(n / 2) == p.shape[-1]``; the padding nibble of an odd ``n`` is ignored.
    """
    p = as_array(p, "p", dtype=np.uint8)
    if p.ndim < 1:
        raise ValueError(f"p: expected an array with at least 1 dimension, got shape {p.shape}")
    n = check_int(n, "n", minimum=0)
    if (n + 1) // 2 != p.shape[-1]:
        raise ValueError(f"n: expected ceil(n / 2) == p.shape[-1] = {p.shape[-1]}, got n={n}")
    lead = p.shape[:-1]
    out = np.empty(lead + (n,), np.int8 if signed else np.uint8)
    if out.size:
        _launch(_unpack4_kernel, out.size, p.reshape(-1, p.shape[-1]), n, bool(signed), out.reshape(-1, n))
    return out


# ================================================================================================
# float-format emulation
# ================================================================================================
def _fmt_info(name, e, m, bias, has_inf, nan, max_value, sat_default):
    min_normal = 2.0 ** (1 - bias)
    return {
        "name": name, "bits": 1 + e + m, "sign_bits": 1, "exponent_bits": e, "mantissa_bits": m,
        "exponent_bias": bias, "max": float(max_value), "min_normal": min_normal,
        "min_subnormal": 2.0 ** (1 - bias - m), "epsilon": 2.0**-m, "has_inf": has_inf, "nan": nan,
        "_saturate_default": sat_default,
    }


_IEEE_NAN = "exponent all ones, mantissa != 0"
#: Float formats emulated by :func:`emulate_float` (fp32 is the identity).
FLOAT_FORMATS = {
    "fp32": _fmt_info("fp32", 8, 23, 127, True, _IEEE_NAN, np.finfo(np.float32).max, False),
    "tf32": _fmt_info("tf32", 8, 10, 127, True, _IEEE_NAN, (2 - 2.0**-10) * 2.0**127, False),
    "bf16": _fmt_info("bf16", 8, 7, 127, True, _IEEE_NAN, (2 - 2.0**-7) * 2.0**127, False),
    "fp16": _fmt_info("fp16", 5, 10, 15, True, _IEEE_NAN, 65504.0, False),
    "fp8_e5m2": _fmt_info("fp8_e5m2", 5, 2, 15, True, _IEEE_NAN, 57344.0, False),
    "fp8_e4m3": _fmt_info("fp8_e4m3", 4, 3, 7, False, "S.1111.111 only (OCP E4M3FN: no inf)", 448.0, True),
}


@njit(parallel=True, cache=True)
def _emulate_kernel(xu, outu, drop, max_bits, emin, min_sub_bits, ovf_bits, inf_bits):
    """Round float32 bit patterns to ``23 - drop`` mantissa bits, nearest-even, branch-free (vectorizes).

    The rounding adds ``2^(d-1) - 1 + lsb`` to the magnitude bits and clears the low ``d`` bits; a carry
    moves into the exponent by itself.  ``d = drop`` for values in the target's normal range; below it
    (biased float32 exponent e < emin) the target's quantum is its smallest subnormal, so
    ``d = drop + emin - e``: 24 means |x| in [quantum/2, quantum) (-> one quantum unless exactly the tie),
    more means |x| < quantum/2 (-> 0).  For bf16/tf32 (emin = 1) float32 subnormals need no special case.
    ``ovf_bits``: result above ``max_bits``; ``inf_bits``: result for +-inf input; NaN stays NaN.
    """
    n = xu.shape[0]
    nchunks = (n + 4095) // 4096
    for ch in prange(nchunks):
        xs = xu[ch * 4096:min(n, ch * 4096 + 4096)]  # a loop from 0: provably non-negative indices vectorize
        os = outu[ch * 4096:min(n, ch * 4096 + 4096)]
        for i in range(xs.shape[0]):
            u = np.int64(xs[i])
            a = u & 0x7FFFFFFF
            e = max(a >> 23, 1)
            d = drop + (emin - min(e, emin))
            dd = min(d, 23)
            lsb = ((a | 0x800000) >> dd) & 1  # at d = 23 the kept bit is the implicit 1, not the exponent's
            r = (a + ((1 << (dd - 1)) - 1) + lsb) & ~((1 << dd) - 1)
            r = (min_sub_bits if (a & 0x7FFFFF) != 0 else 0) if d == 24 else r
            r = 0 if d > 24 else r
            r = ovf_bits if r > max_bits else r
            r = (inf_bits if a == 0x7F800000 else a) if a >= 0x7F800000 else r
            os[i] = np.uint32(r | (u & 0x80000000))


def emulate_float(x, fmt, saturate=None) -> np.ndarray:
    """Round float32 values to a narrower float format and return them as float32 (exactly representable).

    Rounding is to nearest, ties to even, on the float32 bit pattern; values in the target's subnormal
    range round to multiples of its smallest subnormal (gradual underflow, signed zeros kept).

    Formats: "fp16" (IEEE binary16), "bf16", "tf32" (8-bit exponent, 10-bit mantissa), "fp8_e5m2"
    (IEEE-like, with inf), "fp8_e4m3" (OCP E4M3FN: bias 7, max 448, no inf, NaN = S.1111.111), "fp32"
    (identity copy).  See :func:`float_format_table`.

    Overflow (a value that rounds above the format's max: |x| > max + ulp/2, or = max + ulp/2 when max has
    an odd mantissa):
      * ``saturate=False``: formats with inf give ±inf (IEEE); fp8_e4m3 gives NaN (the OCP non-saturating
        mode); ±inf inputs stay inf (NaN for e4m3).
      * ``saturate=True``: ±max (OCP/NVIDIA "satfinite"); ±inf inputs become ±max too.
      * default ``None``: True for fp8_e4m3 (the usual quantization choice, and what torch 2.13's
        ``float8_e4m3fn`` cast does, inf included), False for the others (as torch's float16, bfloat16 and
        ``float8_e5m2`` casts).
    NaN inputs stay NaN.

    Parameters
    ----------
    x : float array (float16/float64 are first converted to float32 — a float64 input is thus rounded twice).
    fmt : format name.
    saturate : None, True or False.

    Returns
    -------
    float32 array of x's shape.
    """
    check_choice(fmt, "fmt", tuple(FLOAT_FORMATS))
    x = _float_input(x, "x")
    info = FLOAT_FORMATS[fmt]
    if saturate is None:
        saturate = info["_saturate_default"]
    elif not isinstance(saturate, (bool, np.bool_)):
        raise TypeError(f"saturate: expected None, True or False, got {saturate!r}")
    if fmt == "fp32":
        return x.copy()
    out = np.empty(x.shape, np.float32)
    if x.size == 0:
        return out
    drop = 23 - info["mantissa_bits"]
    max_bits = int(np.float32(info["max"]).view(np.uint32))
    emin = int(np.float32(info["min_normal"]).view(np.uint32)) >> 23
    min_sub_bits = int(np.float32(info["min_subnormal"]).view(np.uint32)) if emin > 1 else 0
    if saturate:
        ovf = inf_res = max_bits
    elif info["has_inf"]:
        ovf = inf_res = 0x7F800000
    else:
        ovf = inf_res = 0x7FC00000  # NaN
    xf = x.reshape(-1)
    _launch(_emulate_kernel, xf.size, xf.view(np.uint32), out.reshape(-1).view(np.uint32), np.int64(drop),
            np.int64(max_bits), np.int64(emin), np.int64(min_sub_bits), np.int64(ovf), np.int64(inf_res))
    return out


def float_format_table() -> list[dict]:
    """One row per number format: name, bits, sign/exponent/mantissa bits, exponent bias, max, smallest normal
    and subnormal, epsilon (spacing just above 1; 1 for integers), whether it has inf, its NaN encodings.

    Float rows: fp32, tf32, bf16, fp16, fp8_e5m2, fp8_e4m3 (OCP E4M3FN).  Integer rows (int8, int4, uint8,
    uint4, ternary, binary) have exponent_bits 0, min_normal = min_subnormal = the smallest positive value
    (1, or None where 0/1 are not both representable), no inf, no NaN; their ``max`` is the largest integer.
    """
    rows = [{k: v for k, v in info.items() if not k.startswith("_")} for info in FLOAT_FORMATS.values()]
    ints = [("int8", 8, 1, 7, 127), ("int4", 4, 1, 3, 7), ("uint8", 8, 0, 8, 255), ("uint4", 4, 0, 4, 15),
            ("ternary", 2, 1, 1, 1), ("binary", 1, 1, 0, 1)]
    for name, bits, sbits, mbits, mx in ints:
        rows.append({
            "name": name, "bits": bits, "sign_bits": sbits, "exponent_bits": 0, "mantissa_bits": mbits,
            "exponent_bias": 0, "max": float(mx), "min_normal": 1.0 if name != "binary" else None,
            "min_subnormal": 1.0 if name != "binary" else None, "epsilon": 1.0 if name != "binary" else 2.0,
            "has_inf": False, "nan": "none",
        })
    return rows


# ================================================================================================
# error metrics
# ================================================================================================
_METRIC_CHUNK = 8192


@njit(parallel=True, cache=True)
def _err_partials(x, y, part_sq, part_max, part_sig):
    """Per fixed chunk: sum (x-y)^2, max |x-y|, sum x^2 in float64 (chunking is thread-count independent)."""
    n = x.shape[0]
    for ch in prange(part_sq.shape[0]):
        xs = x[ch * 8192:min(n, ch * 8192 + 8192)]
        ys = y[ch * 8192:min(n, ch * 8192 + 8192)]
        sq = 0.0
        mx = 0.0
        sig = 0.0
        for i in range(xs.shape[0]):
            xv = np.float64(xs[i])
            d = xv - np.float64(ys[i])
            sq += d * d
            ad = abs(d)
            if ad > mx or ad != ad:
                mx = ad
            sig += xv * xv
        part_sq[ch] = sq
        part_max[ch] = mx
        part_sig[ch] = sig


def _pair(x, y, xname="x", yname="y"):
    _refuse_complex(x, xname)
    _refuse_complex(y, yname)
    x = as_array(x, xname, dtype=(np.float32, np.float64, np.float16), allow_convert=True)
    y = as_array(y, yname, dtype=(np.float32, np.float64, np.float16), allow_convert=True)
    if x.shape != y.shape:
        raise ValueError(f"{yname}: expected the shape of {xname} {x.shape}, got {y.shape}")
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    if y.dtype == np.float16:
        y = y.astype(np.float32)
    x, y = x.reshape(-1), y.reshape(-1)
    n_chunks = (x.size + _METRIC_CHUNK - 1) // _METRIC_CHUNK
    ps, pm, pg = np.zeros(n_chunks), np.zeros(n_chunks), np.zeros(n_chunks)
    if x.size:
        _launch(_err_partials, x.size, x, y, ps, pm, pg)
    sq, mx, sig = float(ps.sum()), float(pm.max()) if n_chunks else 0.0, float(pg.sum())
    if not (math.isfinite(sq) and math.isfinite(sig) and math.isfinite(mx)):
        check_finite(x, xname)  # NaN/Inf inputs: raise naming the first one (finite overflow falls through)
        check_finite(y, yname)
    return x.size, sq, mx, sig


def mse(x, y) -> float:
    """Mean squared error ``mean((x - y)^2)`` in float64 (0.0 for empty arrays). Shapes must match."""
    n, sq, _, _ = _pair(x, y)
    return sq / n if n else 0.0


def max_abs_error(x, y) -> float:
    """``max |x - y|`` in float64 (0.0 for empty arrays). Shapes must match."""
    return _pair(x, y)[2]


def sqnr_db(x, y) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - y)^2)`` in dB, x the reference.

    ``inf`` when y equals x exactly (including empty and all-zero inputs); ``-inf`` when x is all zero but y
    is not.
    """
    _, sq, _, sig = _pair(x, y)
    if sq == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / sq)


def quantization_error(x, qt) -> dict:
    """Error of a quantized tensor against the original x: dict with "mse", "rmse", "max_abs_error",
    "sqnr_db" (see :func:`mse`, :func:`max_abs_error`, :func:`sqnr_db`) and "bits"."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt: expected a QuantizedTensor, got {type(qt).__name__}")
    y = qt.dequantize()
    n, sq, mx, sig = _pair(x, y, "x", "qt")
    m = sq / n if n else 0.0
    if sq == 0.0:
        snr = math.inf
    elif sig == 0.0:
        snr = -math.inf
    else:
        snr = 10.0 * math.log10(sig / sq)
    return {"mse": m, "rmse": math.sqrt(m), "max_abs_error": mx, "sqnr_db": snr, "bits": qt.bits}

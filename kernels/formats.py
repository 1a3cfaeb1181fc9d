"""Sparse weight formats: CSR, block-sparse (BSR) and N:M, with float32 / float16 / INT8 values.

Weights are ``(rows, cols) = (out, in)``; the reduction dimension is ``cols``.  Every format holds plain NumPy
arrays whose sizes are the exact byte model of the project (``nbytes_breakdown()``; the simulator's
``weight_bytes`` must agree with it):

============  ===================================================================================
format        arrays (idx = int32 when nnz / stored blocks and the column count are < 2**31, else int64)
============  ===================================================================================
CSR           ``data`` (nnz,), ``indices`` (nnz,) idx, ``indptr`` (rows+1,) idx, INT8: ``scales`` (rows,) f32
BSR r x c     ``data`` (nb, r, c), ``indices`` (nb,) idx, ``indptr`` (rows/r+1,) idx, INT8: ``scales`` (nb,) f32
N:M           ``data`` (rows, kr) with kr = cols/m*n, ``metadata`` uint8 (rows, ceil(kr*b/8)),
              b = ceil(log2 m) bits per kept value, INT8: ``scales`` (rows,) f32; no indices, no indptr
============  ===================================================================================

Values are float32, float16, or INT8 (symmetric, per row for CSR / N:M, per stored block for BSR, computed
by :func:`memwall.kernels.quant.quantize_rows_int8`: ``scale = max|kept| / 127``, ``q = rint(w / scale)``);
a quantized value means ``float32(q) * scale``.

N:M metadata: for each row a little-endian bit stream; kept value ``t`` (groups in order, kept values of a
group in increasing position) stores its position inside its group of ``m`` in bits ``[t*b, t*b+b)``; bit
``k`` of the stream is bit ``k % 8`` of byte ``k // 8``; unused bits of the last byte are 0.  2:4 therefore
packs four positions per byte, like the sparse tensor-core format.

Validation has two tiers (scipy.sparse style): constructors always run O(1) structure checks (dtypes,
lengths, ``indptr[0] == 0``, ``indptr[-1] == nnz``, block shape divides the matrix); with ``check=True`` (the
default for user arrays) a full scan checks index bounds, monotonic ``indptr``, sorted rows without duplicates,
distinct in-range N:M positions and finite values.  Our own converters (``from_dense``, ``from_scipy``) build
valid arrays and skip the scan.  Errors are ``ValueError`` naming the defect and the first offending position.
"""
from __future__ import annotations

import math

import numpy as np

from ._validate import as_array, check_fraction, check_int, check_positive

__all__ = ["CSRMatrix", "BSRMatrix", "NMSparseMatrix", "index_dtype", "VALUE_DTYPES"]

#: Accepted value dtypes of the sparse formats.
VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8))
_INT32_LIMIT = 2**31


def index_dtype(*largest) -> np.dtype:
    """int32 when every value the index arrays must hold (nnz, stored blocks, column count) is < 2**31,
    else int64 (the project's byte model)."""
    return np.dtype(np.int32) if max((int(v) for v in largest), default=0) < _INT32_LIMIT else np.dtype(np.int64)


def _value_dtype(value_dtype) -> np.dtype:
    if value_dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(value_dtype)
    except TypeError as exc:
        raise TypeError(f"value_dtype: expected float32, float16 or int8, got {value_dtype!r}") from exc
    if dt not in VALUE_DTYPES:
        raise TypeError(f"value_dtype: expected float32, float16 or int8, got {dt.name}")
    return dt


def _shape(shape) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise TypeError(f"shape: expected a pair (rows, cols), got {shape!r}")
    return (check_int(shape[0], "shape[0]", minimum=0), check_int(shape[1], "shape[1]", minimum=0))


def _blocksize(blocksize) -> tuple[int, int]:
    if not isinstance(blocksize, (tuple, list)) or len(blocksize) != 2:
        raise TypeError(f"blocksize: expected a pair (r, c) of positive integers, got {blocksize!r}")
    return (check_int(blocksize[0], "blocksize[0]", minimum=1), check_int(blocksize[1], "blocksize[1]", minimum=1))


def _dense_weights(w, name: str = "w") -> np.ndarray:
    """A finite 2-D float32 C-contiguous copy-or-view of ``w`` (float16/float64/integer input converted)."""
    if isinstance(w, np.ndarray) and not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)
                                          or w.dtype == np.bool_):
        raise TypeError(f"{name}: expected a real (float or integer) array, got dtype {w.dtype.name}")
    w = as_array(w, name, dtype=np.float32, ndim=2, allow_convert=True)
    if w.size and not np.isfinite(w).all():
        bad = np.argwhere(~np.isfinite(w))[0]
        raise ValueError(f"{name}: expected finite values, found {w[tuple(bad)]} at {tuple(int(b) for b in bad)}")
    return w


def _mask2d(mask, shape, name="mask") -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name}: expected a bool array, got dtype {mask.dtype.name}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {mask.shape}")
    return mask


def _check_finite_values(values: np.ndarray, name: str = "data") -> None:
    if values.dtype == np.int8 or values.size == 0:
        return
    ok = np.isfinite(values)
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        raise ValueError(f"{name}: expected finite values, found {values[tuple(bad)]} at "
                         f"{tuple(int(b) for b in bad)}")


def _quantize_rows(rows2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row INT8 (the quant helper's per-token quantizer)."""
    from .quant import quantize_rows_int8

    return quantize_rows_int8(rows2d)


def _cast_values(values: np.ndarray, dt: np.dtype, rows_of_values: np.ndarray | None, nrows: int):
    """float32 ``values`` (1-D) -> (values of dtype dt, scales or None).

    For INT8, ``rows_of_values`` maps each value to its scale group (row or block) and ``nrows`` is the number
    of groups; the per-group symmetric scale is max|v|/127 (quant.quantize_rows_int8 on the padded groups).
    """
    if dt == np.float32:
        return np.ascontiguousarray(values, dtype=np.float32), None
    if dt == np.float16:
        with np.errstate(over="ignore"):
            v16 = values.astype(np.float16)
        if v16.size and not np.isfinite(v16).all():
            bad = int(np.flatnonzero(~np.isfinite(v16))[0])
            raise ValueError(f"value_dtype: value {values[bad]} at stored position {bad} overflows float16")
        return v16, None
    # int8 with one scale per group: pad the ragged groups into a (groups, longest) matrix
    counts = np.bincount(rows_of_values, minlength=nrows) if values.size else np.zeros(nrows, np.int64)
    width = int(counts.max()) if nrows and values.size else 0
    starts = np.zeros(nrows + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    slot = np.arange(values.size, dtype=np.int64) - starts[rows_of_values] if values.size else np.zeros(0, np.int64)
    padded = np.zeros((nrows, max(width, 1)), dtype=np.float32)
    if values.size:
        padded[rows_of_values, slot] = values
    q, scales = _quantize_rows(padded)
    qv = q[rows_of_values, slot] if values.size else np.zeros(0, np.int8)
    return np.ascontiguousarray(qv, dtype=np.int8), np.ascontiguousarray(scales, dtype=np.float32)


def _check_values_and_scales(data, scales, nscales: int, where: str):
    """dtype of data, presence/shape/positivity of scales (O(1) except the scale positivity scan)."""
    if data.dtype not in VALUE_DTYPES:
        raise TypeError(f"data: expected dtype float32, float16 or int8, got {data.dtype.name}")
    if data.dtype == np.int8:
        if scales is None:
            raise ValueError(f"scales: INT8 values need one float32 scale per {where}")
        scales = as_array(scales, "scales", dtype=np.float32, ndim=1)
        if scales.shape[0] != nscales:
            raise ValueError(f"scales: expected {nscales} scales (one per {where}), got {scales.shape[0]}")
        check_positive(scales, "scales")
        return scales
    if scales is not None:
        raise ValueError(f"scales: only INT8 values take scales, data is {data.dtype.name}")
    return None


def _canon_index(arr, name: str, dt: np.dtype) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in (np.int32, np.int64):
        raise TypeError(f"{name}: expected dtype int32 or int64, got {arr.dtype.name}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype != dt:
        if dt == np.int32 and arr.size and (arr.max() >= _INT32_LIMIT or arr.min() < -_INT32_LIMIT):
            bad = int(np.flatnonzero((arr >= _INT32_LIMIT) | (arr < -_INT32_LIMIT))[0])
            raise ValueError(f"{name}: value {arr[bad]} at position {bad} is out of range")
        arr = arr.astype(dt)
    return np.ascontiguousarray(arr)


def _scan_compressed(indptr: np.ndarray, indices: np.ndarray, ncols: int, what: str) -> None:
    """Full scan: indptr monotone, indices in [0, ncols), strictly increasing within each row."""
    if indptr.size > 1:
        d = np.diff(indptr)
        if (d < 0).any():
            bad = int(np.flatnonzero(d < 0)[0])
            raise ValueError(f"indptr: not monotonic: indptr[{bad + 1}] = {indptr[bad + 1]} < "
                             f"indptr[{bad}] = {indptr[bad]}")
    if indices.size == 0:
        return
    out_of_range = (indices < 0) | (indices >= ncols)
    if out_of_range.any():
        p = int(np.flatnonzero(out_of_range)[0])
        row = int(np.searchsorted(indptr, p, side="right") - 1)
        raise ValueError(f"indices: {what} index {indices[p]} out of range [0, {ncols}) at position {p} "
                         f"(row {row})")
    if indices.size > 1:
        step = np.diff(indices)
        starts = np.zeros(indices.size, dtype=bool)
        inner = indptr[1:-1]
        starts[inner[(inner > 0) & (inner < indices.size)]] = True
        bad_mask = (step <= 0) & ~starts[1:]
        if bad_mask.any():
            p = int(np.flatnonzero(bad_mask)[0]) + 1
            row = int(np.searchsorted(indptr, p, side="right") - 1)
            kind = "duplicate" if indices[p] == indices[p - 1] else "unsorted"
            raise ValueError(f"indices: {kind} {what} index {indices[p]} at position {p} (row {row}): each row's "
                             f"indices must be strictly increasing")


class _SparseBase:
    """Shared behaviour: shape, nnz, density, nbytes, products."""

    format = "sparse"
    shape: tuple[int, int]
    data: np.ndarray
    scales: np.ndarray | None

    @property
    def dtype(self) -> np.dtype:
        """dtype of the stored values (float32, float16 or int8)."""
        return self.data.dtype

    @property
    def nnz(self) -> int:
        """Number of stored values (explicit zeros included)."""
        return int(self.data.size)

    @property
    def density(self) -> float:
        """nnz / (rows * cols) (0.0 for an empty matrix)."""
        total = self.shape[0] * self.shape[1]
        return self.nnz / total if total else 0.0

    @property
    def sparsity(self) -> float:
        """1 - density."""
        return 1.0 - self.density

    def nbytes_breakdown(self) -> dict[str, int]:
        """Bytes of each held array: keys values, indices, indptr, metadata, scales (0 where absent)."""
        parts = {"values": self.data.nbytes, "indices": 0, "indptr": 0, "metadata": 0, "scales": 0}
        for key, attr in (("indices", "indices"), ("indptr", "indptr"), ("metadata", "metadata")):
            arr = getattr(self, attr, None)
            if arr is not None:
                parts[key] = int(arr.nbytes)
        if self.scales is not None:
            parts["scales"] = int(self.scales.nbytes)
        return {k: int(v) for k, v in parts.items()}

    @property
    def nbytes(self) -> int:
        """Total bytes of the held arrays (= sum of :meth:`nbytes_breakdown`)."""
        return sum(self.nbytes_breakdown().values())

    def __matmul__(self, other):
        from .spmm import spmm

        return spmm(self, other)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.shape[0]}x{self.shape[1]} {self.data.dtype.name} "
                f"nnz={self.nnz} density={self.density:.3g} nbytes={self.nbytes}>")


# ================================================================================================
# CSR
# ================================================================================================
class CSRMatrix(_SparseBase):
    """Compressed sparse rows of an ``(out, in)`` weight matrix.

    Parameters
    ----------
    data : 1-D float32 / float16 / int8 array (nnz,)
    indices : 1-D int32/int64 column indices (nnz,), strictly increasing within each row
    indptr : 1-D int32/int64 (rows + 1,), ``indptr[0] == 0``, ``indptr[-1] == nnz``, non-decreasing
    shape : (rows, cols)
    scales : float32 (rows,), required for (and only for) int8 data: value = float32(q) * scales[row]
    check : run the full O(nnz) scan (default True; our own converters pass False).  ``check=False`` trusts
        the arrays completely (the kernels run without bounds checks): use it only for arrays known valid.

    Index arrays are stored in the dtype of the byte model (:func:`index_dtype`), converted if needed.
    """

    format = "csr"

    def __init__(self, data, indices, indptr, shape, *, scales=None, check: bool = True):
        self.shape = _shape(shape)
        rows, cols = self.shape
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data: expected a numpy.ndarray, got {type(data).__name__}")
        data = np.ascontiguousarray(data)
        if data.ndim != 1:
            raise ValueError(f"data: expected a 1-D array, got shape {data.shape}")
        nnz = data.shape[0]
        dt = index_dtype(nnz, cols)
        indices = _canon_index(indices, "indices", dt)
        indptr = _canon_index(indptr, "indptr", dt)
        if indices.shape[0] != nnz:
            raise ValueError(f"indices: expected {nnz} entries (one per value), got {indices.shape[0]}")
        if indptr.shape[0] != rows + 1:
            raise ValueError(f"indptr: expected {rows + 1} entries (rows + 1), got {indptr.shape[0]}")
        if indptr[0] != 0:
            raise ValueError(f"indptr: indptr[0] must be 0, got {indptr[0]}")
        if indptr[-1] != nnz:
            raise ValueError(f"indptr: indptr[-1] = {indptr[-1]} must equal nnz = {nnz}")
        self.scales = _check_values_and_scales(data, scales, rows, "row")
        if check:
            _scan_compressed(indptr, indices, cols, "column")
            _check_finite_values(data)
        self.data, self.indices, self.indptr = data, indices, indptr

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, w, *, threshold: float = 0.0, mask=None, sparsity: float | None = None,
                   value_dtype=np.float32) -> "CSRMatrix":
        """Keep the entries with ``|w| > threshold`` (default: the nonzeros), or where ``mask`` is True, or the
        largest ``(1 - sparsity)`` fraction by magnitude (:func:`memwall.kernels.prune.magnitude_mask`).

        ``value_dtype``: float32 (default), float16 or int8 (per-row symmetric scales).  Kept entries are
        stored even when zero (a mask keeps its zeros).
        """
        w = _dense_weights(w)
        dt = _value_dtype(value_dtype)
        keep = _keep_mask(w, threshold, mask, sparsity)
        rows_idx, cols_idx = np.nonzero(keep)
        vals = w[rows_idx, cols_idx]
        rows, cols = w.shape
        idt = index_dtype(vals.size, cols)
        indptr = np.zeros(rows + 1, dtype=idt)
        np.cumsum(np.bincount(rows_idx, minlength=rows), out=indptr[1:])
        data, scales = _cast_values(vals, dt, rows_idx, rows)
        return cls(data, cols_idx.astype(idt), indptr, w.shape, scales=scales, check=False)

    @classmethod
    def from_scipy(cls, s, *, value_dtype=None) -> "CSRMatrix":
        """From any ``scipy.sparse`` matrix/array (csr, csc, coo, bsr ...); duplicates are summed, rows sorted.

        ``value_dtype`` None keeps float32 (float64/integer data are converted to float32).
        """
        import scipy.sparse as sps

        if not sps.issparse(s):
            raise TypeError(f"s: expected a scipy.sparse matrix or array, got {type(s).__name__}")
        if s.ndim != 2:
            raise ValueError(f"s: expected a 2-D sparse matrix, got shape {s.shape}")
        if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
            raise TypeError(f"s: expected real values, got dtype {s.dtype.name}")
        c = sps.csr_matrix(s, copy=True)
        c.sum_duplicates()
        c.sort_indices()
        vals = np.asarray(c.data, dtype=np.float32)
        _check_finite_values(vals, "s.data")
        rows, cols = c.shape
        idt = index_dtype(vals.size, cols)
        indptr = c.indptr.astype(idt)
        row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(c.indptr))
        data, scales = _cast_values(vals, _value_dtype(value_dtype), row_of, rows)
        return cls(data, c.indices.astype(idt), indptr, c.shape, scales=scales, check=False)

    # -- conversion ------------------------------------------------------------------------------
    def row_of_values(self) -> np.ndarray:
        """Row index of every stored value (int64, length nnz)."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))

    def values_float32(self) -> np.ndarray:
        """Stored values as float32 (INT8: ``float32(q) * scale``, the value every kernel multiplies)."""
        if self.data.dtype == np.int8:
            return self.data.astype(np.float32) * self.scales[self.row_of_values()]
        return self.data.astype(np.float32)

    def to_dense(self) -> np.ndarray:
        """float32 (rows, cols) array."""
        out = np.zeros(self.shape, dtype=np.float32)
        out[self.row_of_values(), self.indices] = self.values_float32()
        return out

    def to_scipy(self):
        """``scipy.sparse.csr_matrix`` with float32 values (scipy has no float16; INT8 is dequantized)."""
        import scipy.sparse as sps

        return sps.csr_matrix((self.values_float32(), self.indices.copy(), self.indptr.copy()), shape=self.shape)


# ================================================================================================
# BSR
# ================================================================================================
class BSRMatrix(_SparseBase):
    """Block sparse rows: stored dense ``r x c`` blocks of an ``(out, in)`` matrix (``r | rows``, ``c | cols``).

    Parameters
    ----------
    data : float32 / float16 / int8 array (nb, r, c)
    indices : int32/int64 (nb,) block-column index of each stored block, strictly increasing per block row
    indptr : int32/int64 (rows/r + 1,)
    shape : (rows, cols)
    scales : float32 (nb,), one per stored block, required for (and only for) int8 data
    check : full scan (default True); ``check=False`` only for arrays known valid (no bounds checks later)
    """

    format = "bsr"

    def __init__(self, data, indices, indptr, shape, *, scales=None, check: bool = True):
        self.shape = _shape(shape)
        rows, cols = self.shape
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data: expected a numpy.ndarray, got {type(data).__name__}")
        if data.ndim != 3:
            raise ValueError(f"data: expected a 3-D array (blocks, r, c), got shape {data.shape}")
        data = np.ascontiguousarray(data)
        nb, r, c = data.shape
        if r < 1 or c < 1:
            raise ValueError(f"data: block shape must be at least 1x1, got {r}x{c}")
        if rows % r or cols % c:
            raise ValueError(f"blocksize: ({r}, {c}) does not divide the matrix shape {self.shape}")
        dt = index_dtype(nb, cols)
        indices = _canon_index(indices, "indices", dt)
        indptr = _canon_index(indptr, "indptr", dt)
        if indices.shape[0] != nb:
            raise ValueError(f"indices: expected {nb} entries (one per block), got {indices.shape[0]}")
        if indptr.shape[0] != rows // r + 1:
            raise ValueError(f"indptr: expected {rows // r + 1} entries (rows / r + 1), got {indptr.shape[0]}")
        if indptr[0] != 0:
            raise ValueError(f"indptr: indptr[0] must be 0, got {indptr[0]}")
        if indptr[-1] != nb:
            raise ValueError(f"indptr: indptr[-1] = {indptr[-1]} must equal the number of blocks {nb}")
        self.scales = _check_values_and_scales(data, scales, nb, "stored block")
        if check:
            _scan_compressed(indptr, indices, cols // c, "block-column")
            _check_finite_values(data)
        self.data, self.indices, self.indptr = data, indices, indptr
        self.blocksize = (r, c)

    @property
    def nblocks(self) -> int:
        """Number of stored blocks."""
        return int(self.data.shape[0])

    @classmethod
    def from_dense(cls, w, blocksize=(16, 16), *, threshold: float = 0.0, mask=None, sparsity: float | None = None,
                   score: str = "l1", value_dtype=np.float32) -> "BSRMatrix":
        """Keep the ``r x c`` blocks holding any ``|w| > threshold`` (default: the nonzero blocks), or the blocks
        where ``mask`` is True (a block mask of shape (rows/r, cols/c), or an element mask of w's shape: blocks
        with any True are kept and their masked-out entries zeroed), or the best ``1 - sparsity`` fraction of
        blocks by ``score`` (:func:`memwall.kernels.prune.block_mask`).

        ``value_dtype``: float32, float16 or int8 (one symmetric scale per stored block).
        """
        w = _dense_weights(w)
        r, c = _blocksize(blocksize)
        rows, cols = w.shape
        if rows % r or cols % c:
            raise ValueError(f"blocksize: ({r}, {c}) does not divide the matrix shape {w.shape}")
        dt = _value_dtype(value_dtype)
        R, C = rows // r, cols // c
        given = sum(x is not None for x in (mask, sparsity)) + (threshold != 0.0)
        if given > 1:
            raise ValueError("from_dense: give at most one of threshold, mask, sparsity")
        blocks = w.reshape(R, r, C, c).transpose(0, 2, 1, 3)  # (R, C, r, c) view
        if mask is not None:
            mask = np.asarray(mask) if not isinstance(mask, np.ndarray) else mask
            if mask.shape == (R, C):
                bmask = _mask2d(mask, (R, C))
            else:
                emask = _mask2d(mask, w.shape)
                w = np.where(emask, w, np.float32(0.0))
                blocks = w.reshape(R, r, C, c).transpose(0, 2, 1, 3)
                bmask = emask.reshape(R, r, C, c).any(axis=(1, 3))
        elif sparsity is not None:
            from .prune import block_mask

            sparsity = check_fraction(sparsity, "sparsity")
            bmask = block_mask(w, sparsity, (r, c), score).reshape(R, r, C, c)[:, 0, :, 0]
        else:
            threshold = check_fraction(threshold, "threshold", high=math.inf, include_high=False)
            bmask = (np.abs(blocks) > threshold).any(axis=(2, 3)) if w.size else np.zeros((R, C), bool)
        brow, bcol = np.nonzero(bmask)
        vals = np.ascontiguousarray(blocks[brow, bcol], dtype=np.float32)  # (nb, r, c)
        nb = vals.shape[0]
        idt = index_dtype(nb, cols)
        indptr = np.zeros(R + 1, dtype=idt)
        np.cumsum(np.bincount(brow, minlength=R), out=indptr[1:])
        flat, scales = _cast_values(vals.reshape(-1), dt, np.repeat(np.arange(nb, dtype=np.int64), r * c), nb)
        return cls(flat.reshape(nb, r, c), bcol.astype(idt), indptr, w.shape, scales=scales, check=False)

    @classmethod
    def from_scipy(cls, s, blocksize=None, *, value_dtype=None) -> "BSRMatrix":
        """From any ``scipy.sparse`` matrix; ``blocksize`` None keeps a bsr input's own block shape (other
        formats then need ``blocksize``).  Stored blocks are those scipy stores (csr/coo input: blocks with any
        stored entry)."""
        import scipy.sparse as sps

        if not sps.issparse(s):
            raise TypeError(f"s: expected a scipy.sparse matrix or array, got {type(s).__name__}")
        if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
            raise TypeError(f"s: expected real values, got dtype {s.dtype.name}")
        if blocksize is None:
            if s.format != "bsr":
                raise ValueError("blocksize: required unless s is a scipy bsr matrix")
            r, c = s.blocksize
        else:
            r, c = _blocksize(blocksize)
        rows, cols = s.shape
        if rows % r or cols % c:
            raise ValueError(f"blocksize: ({r}, {c}) does not divide the matrix shape {s.shape}")
        if s.format == "bsr" and tuple(s.blocksize) == (r, c):
            b = sps.bsr_matrix(s, copy=True)
        else:
            b = sps.csr_matrix(s).tobsr(blocksize=(r, c))
        b.sum_duplicates()
        b.sort_indices()
        vals = np.asarray(b.data, dtype=np.float32).reshape(-1, r, c)
        _check_finite_values(vals, "s.data")
        nb = vals.shape[0]
        idt = index_dtype(nb, cols)
        flat, scales = _cast_values(vals.reshape(-1), _value_dtype(value_dtype),
                                    np.repeat(np.arange(nb, dtype=np.int64), r * c), nb)
        return cls(flat.reshape(nb, r, c), b.indices.astype(idt), b.indptr.astype(idt), s.shape, scales=scales,
                   check=False)

    def values_float32(self) -> np.ndarray:
        """Stored blocks as float32 (nb, r, c) (INT8: ``float32(q) * block_scale``)."""
        if self.data.dtype == np.int8:
            return self.data.astype(np.float32) * self.scales[:, None, None]
        return self.data.astype(np.float32)

    def to_dense(self) -> np.ndarray:
        r, c = self.blocksize
        rows, cols = self.shape
        out = np.zeros((rows // r, cols // c, r, c), dtype=np.float32)
        brow = np.repeat(np.arange(rows // r, dtype=np.int64), np.diff(self.indptr))
        out[brow, self.indices] = self.values_float32()
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3).reshape(rows, cols))

    def to_scipy(self):
        """``scipy.sparse.bsr_matrix`` with float32 values (INT8 dequantized, float16 widened)."""
        import scipy.sparse as sps

        return sps.bsr_matrix((self.values_float32(), self.indices.copy(), self.indptr.copy()), shape=self.shape,
                              blocksize=self.blocksize)


# ================================================================================================
# N:M
# ================================================================================================
def nm_bits(m: int) -> int:
    """Metadata bits per kept value: ceil(log2(m)) (0 for m = 1)."""
    return int(m - 1).bit_length()


def _encode_positions(pos: np.ndarray, bits: int) -> np.ndarray:
    """(rows, kr) positions -> (rows, ceil(kr*bits/8)) uint8 little-endian bit streams."""
    rows, kr = pos.shape
    nbytes = (kr * bits + 7) // 8
    if bits == 0 or kr == 0:
        return np.zeros((rows, nbytes), dtype=np.uint8)
    bitarr = ((pos[:, :, None].astype(np.uint16) >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.ascontiguousarray(np.packbits(bitarr.reshape(rows, kr * bits), axis=1, bitorder="little"))


def _decode_positions(meta: np.ndarray, kr: int, bits: int) -> np.ndarray:
    """Inverse of :func:`_encode_positions`: (rows, kr) int64 positions."""
    rows = meta.shape[0]
    if bits == 0 or kr == 0:
        return np.zeros((rows, kr), dtype=np.int64)
    b = np.unpackbits(meta, axis=1, bitorder="little")[:, : kr * bits].reshape(rows, kr, bits).astype(np.int64)
    return (b << np.arange(bits, dtype=np.int64)).sum(axis=2)


class NMSparseMatrix(_SparseBase):
    """N:M structured sparsity along the reduction dimension (cols): ``n`` kept values in every group of ``m``
    consecutive columns of each row, with ``ceil(log2 m)``-bit position metadata per kept value.

    Parameters
    ----------
    data : float32 / float16 / int8 array (rows, kr), kr = cols / m * n; value t of a row belongs to group t // n
    metadata : uint8 array (rows, ceil(kr * b / 8)), b = ceil(log2 m) (see the module docstring for the bit order)
    shape : (rows, cols), ``m | cols``
    n, m : 1 <= n <= m
    scales : float32 (rows,), required for (and only for) int8 data
    check : full scan of the metadata (positions < m and distinct within each group, padding bits 0) and the
        values; ``check=False`` only for arrays known valid (the kernels trust every position)

    A group with fewer than ``n`` nonzeros stores explicit zeros at unused positions.
    """

    format = "nm"

    def __init__(self, data, metadata, shape, n: int = 2, m: int = 4, *, scales=None, check: bool = True):
        self.shape = _shape(shape)
        rows, cols = self.shape
        m = check_int(m, "m", minimum=1)
        n = check_int(n, "n", minimum=1)
        if n > m:
            raise ValueError(f"n: expected n <= m (keep n of every m), got n={n} > m={m}")
        if cols % m:
            raise ValueError(f"m: the number of columns ({cols}) must be a multiple of m={m}")
        self.n, self.m = n, m
        self.bits = nm_bits(m)
        kr = cols // m * n
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data: expected a numpy.ndarray, got {type(data).__name__}")
        data = np.ascontiguousarray(data)
        if data.shape != (rows, kr):
            raise ValueError(f"data: expected shape {(rows, kr)} (rows, cols/m*n), got {data.shape}")
        if not isinstance(metadata, np.ndarray):
            raise TypeError(f"metadata: expected a numpy.ndarray, got {type(metadata).__name__}")
        if metadata.dtype != np.uint8:
            raise TypeError(f"metadata: expected dtype uint8, got {metadata.dtype.name}")
        nmeta = (kr * self.bits + 7) // 8
        if metadata.shape != (rows, nmeta):
            raise ValueError(f"metadata: expected shape {(rows, nmeta)} (rows, ceil(kr*{self.bits}/8)), "
                             f"got {metadata.shape}")
        metadata = np.ascontiguousarray(metadata)
        self.scales = _check_values_and_scales(data, scales, rows, "row")
        if check:
            self._scan(metadata, kr)
            _check_finite_values(data)
        self.data, self.metadata = data, metadata
        self.kr = kr

    def _scan(self, metadata: np.ndarray, kr: int) -> None:
        rows = self.shape[0]
        n, m, bits = self.n, self.m, self.bits
        if rows == 0 or kr == 0:
            return
        pos = _decode_positions(metadata, kr, bits)
        if (pos >= m).any():
            i, t = np.argwhere(pos >= m)[0]
            raise ValueError(f"metadata: position {pos[i, t]} >= m={m} at row {i}, kept value {t} "
                             f"(group {t // n})")
        g = pos.reshape(rows, kr // n, n)
        if n > 1:
            s = np.sort(g, axis=2)
            dup = (np.diff(s, axis=2) == 0).any(axis=2)
            if dup.any():
                i, grp = np.argwhere(dup)[0]
                raise ValueError(f"metadata: repeated position in row {i}, group {grp} "
                                 f"(positions {g[i, grp].tolist()}); kept positions must be distinct")
        used = kr * bits
        if used % 8:
            pad = metadata[:, -1] >> (used % 8)
            if pad.any():
                i = int(np.flatnonzero(pad)[0])
                raise ValueError(f"metadata: padding bits of the last byte of row {i} must be 0")

    @classmethod
    def from_dense(cls, w, n: int = 2, m: int = 4, *, mask=None, value_dtype=np.float32) -> "NMSparseMatrix":
        """Keep ``n`` of every ``m`` along each row: the ``n`` largest ``|w|`` per group
        (:func:`memwall.kernels.prune.nm_mask`), or the True entries of an N:M ``mask`` (at most ``n`` per
        group; groups with fewer are padded with explicit zeros at their lowest unused positions).
        """
        w = _dense_weights(w)
        m = check_int(m, "m", minimum=1)
        n = check_int(n, "n", minimum=1)
        if n > m:
            raise ValueError(f"n: expected n <= m (keep n of every m), got n={n} > m={m}")
        rows, cols = w.shape
        if cols % m:
            raise ValueError(f"m: the number of columns ({cols}) must be a multiple of m={m}")
        dt = _value_dtype(value_dtype)
        G = cols // m
        if mask is None:
            from .prune import nm_mask

            keep = nm_mask(w, n, m) if w.size else np.zeros(w.shape, bool)
        else:
            keep = _mask2d(mask, w.shape)
            counts = keep.reshape(rows, G, m).sum(axis=2)
            if (counts > n).any():
                i, grp = np.argwhere(counts > n)[0]
                raise ValueError(f"mask: group {grp} of row {i} keeps {counts[i, grp]} > n={n} entries")
            # pad short groups: add the lowest unused positions (rank of False entries in the group)
            kg = keep.reshape(rows, G, m)
            need = n - counts
            free_rank = np.cumsum(~kg, axis=2) - 1  # 0-based rank among unused positions
            keep = (kg | (~kg & (free_rank < need[:, :, None]))).reshape(rows, cols)
        kr = G * n
        rows_idx, cols_idx = np.nonzero(keep)  # row-major: groups in order, positions increasing
        vals = w[rows_idx, cols_idx] * (np.asarray(mask)[rows_idx, cols_idx] if mask is not None else 1)
        vals = vals.astype(np.float32, copy=False)
        pos = (cols_idx % m).reshape(rows, kr)
        meta = _encode_positions(pos, nm_bits(m))
        data, scales = _cast_values(vals, dt, rows_idx, rows)
        return cls(data.reshape(rows, kr), meta, w.shape, n, m, scales=scales, check=False)

    @classmethod
    def from_scipy(cls, s, n: int = 2, m: int = 4, *, value_dtype=None) -> "NMSparseMatrix":
        """From a scipy.sparse matrix whose stored entries already satisfy N:M (at most ``n`` per group);
        raises ValueError naming the first group that keeps more."""
        import scipy.sparse as sps

        if not sps.issparse(s):
            raise TypeError(f"s: expected a scipy.sparse matrix or array, got {type(s).__name__}")
        c = sps.csr_matrix(s, copy=True)
        c.sum_duplicates()
        dense = c.toarray().astype(np.float32)
        mask = np.zeros(c.shape, dtype=bool)
        rows_idx = np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
        mask[rows_idx, c.indices] = True
        return cls.from_dense(dense, n, m, mask=mask, value_dtype=value_dtype if value_dtype is not None else np.float32)

    def positions(self) -> np.ndarray:
        """(rows, kr) int64 position of each kept value inside its group."""
        return _decode_positions(self.metadata, self.kr, self.bits)

    def columns(self) -> np.ndarray:
        """(rows, kr) int64 column of each kept value."""
        t = np.arange(self.kr, dtype=np.int64)
        return (t // self.n) * self.m + self.positions()

    def values_float32(self) -> np.ndarray:
        """(rows, kr) float32 values (INT8 dequantized with the row scales)."""
        if self.data.dtype == np.int8:
            return self.data.astype(np.float32) * self.scales[:, None]
        return self.data.astype(np.float32)

    def to_dense(self) -> np.ndarray:
        rows, cols = self.shape
        out = np.zeros((rows, cols), dtype=np.float32)
        if rows and self.kr:
            out[np.arange(rows)[:, None], self.columns()] = self.values_float32()
        return out

    def to_scipy(self):
        """``scipy.sparse.csr_matrix`` (float32) holding every kept value (explicit zeros included)."""
        import scipy.sparse as sps

        rows = self.shape[0]
        indptr = np.arange(rows + 1, dtype=np.int64) * self.kr
        return sps.csr_matrix((self.values_float32().ravel(), self.columns().ravel(), indptr), shape=self.shape)

    def nbytes_breakdown(self) -> dict[str, int]:
        parts = super().nbytes_breakdown()
        parts["metadata"] = int(self.metadata.nbytes)
        return parts


def _keep_mask(w: np.ndarray, threshold, mask, sparsity) -> np.ndarray:
    given = sum(x is not None for x in (mask, sparsity)) + (threshold != 0.0 if not isinstance(threshold, bool) else 1)
    if given > 1:
        raise ValueError("from_dense: give at most one of threshold, mask, sparsity")
    if mask is not None:
        return _mask2d(mask, w.shape)
    if sparsity is not None:
        from .prune import magnitude_mask

        sparsity = check_fraction(sparsity, "sparsity")
        return magnitude_mask(w, sparsity)
    threshold = check_fraction(threshold, "threshold", high=math.inf, include_high=False)
    return np.abs(w) > threshold

"""Sparse formats: construction, round trips (dense, scipy), exact byte counts, two-tier validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sps
from hypothesis import given
from hypothesis import strategies as st

from memwall.kernels import BSRMatrix, CSRMatrix, NMSparseMatrix
from memwall.kernels.formats import index_dtype


# ----------------------------------------------------------------------------------------------------------
# plain references
# ----------------------------------------------------------------------------------------------------------
def ref_quant_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per group (rows of a 2-D array): scale = max|v| / 127 (0 -> 1), q = rint(v / scale)."""
    v = values.astype(np.float32)
    amax = np.abs(v).max(axis=1) if v.shape[1] else np.zeros(v.shape[0], np.float32)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(v / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def ref_nm_keep(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """n largest |w| per group of m along the rows (ties -> lower index), by sorting each group."""
    rows, cols = w.shape
    keep = np.zeros_like(w, dtype=bool)
    for i in range(rows):
        for g in range(cols // m):
            grp = np.abs(w[i, g * m:(g + 1) * m])
            order = sorted(range(m), key=lambda j: (-grp[j], j))[:n]
            keep[i, g * m + np.array(order, dtype=int)] = True
    return keep


def idx_bytes(*largest) -> int:
    return 4 if max(largest, default=0) < 2**31 else 8


def contract_bytes(A) -> dict:
    """The byte model of contracts.md, computed from the format's parameters only."""
    item = A.data.dtype.itemsize
    rows, cols = A.shape
    q8 = A.data.dtype == np.int8
    if isinstance(A, CSRMatrix):
        idx = idx_bytes(A.nnz, cols)
        return {"values": A.nnz * item, "indices": A.nnz * idx, "indptr": (rows + 1) * idx, "metadata": 0,
                "scales": rows * 4 if q8 else 0}
    if isinstance(A, BSRMatrix):
        r, c = A.blocksize
        nb = A.nblocks
        idx = idx_bytes(nb, cols)
        return {"values": nb * r * c * item, "indices": nb * idx, "indptr": (rows // r + 1) * idx, "metadata": 0,
                "scales": nb * 4 if q8 else 0}
    kr = cols // A.m * A.n
    b = math.ceil(math.log2(A.m)) if A.m > 1 else 0
    return {"values": rows * kr * item, "indices": 0, "indptr": 0, "metadata": rows * math.ceil(kr * b / 8),
            "scales": rows * 4 if q8 else 0}


def held_bytes(A) -> int:
    total = A.data.nbytes
    for name in ("indices", "indptr", "metadata"):
        arr = getattr(A, name, None)
        if arr is not None:
            total += arr.nbytes
    if A.scales is not None:
        total += A.scales.nbytes
    return total


def sparse_w(rng, shape, density=0.3):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0
    return w


# ----------------------------------------------------------------------------------------------------------
# construction and round trips
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vdt", [np.float32, np.float16])
def test_csr_from_dense_roundtrip(rng, vdt):
    w = sparse_w(rng, (13, 17))
    A = CSRMatrix.from_dense(w, value_dtype=vdt)
    assert A.nnz == np.count_nonzero(w)
    assert A.data.dtype == vdt
    np.testing.assert_array_equal(A.to_dense(), w.astype(vdt).astype(np.float32))
    np.testing.assert_array_equal(A.to_scipy().toarray(), A.to_dense())
    assert A.indices.dtype == np.int32 and A.indptr.dtype == np.int32


def test_csr_threshold_mask_sparsity(rng):
    w = rng.standard_normal((10, 12)).astype(np.float32)
    A = CSRMatrix.from_dense(w, threshold=0.5)
    np.testing.assert_array_equal(A.to_dense(), np.where(np.abs(w) > 0.5, w, 0))
    mask = rng.random(w.shape) < 0.4
    mask[0] = True
    w[0, 3] = 0.0  # a kept zero is stored explicitly
    B = CSRMatrix.from_dense(w, mask=mask)
    assert B.nnz == mask.sum()
    np.testing.assert_array_equal(B.to_dense(), np.where(mask, w, 0))
    C = CSRMatrix.from_dense(w, sparsity=0.75)
    assert C.nnz == w.size - int(0.75 * w.size)
    kept = np.abs(C.to_dense()[C.to_dense() != 0])
    assert kept.min() >= np.sort(np.abs(w).ravel())[::-1][C.nnz - 1]


def test_csr_int8_values(rng):
    w = sparse_w(rng, (9, 20), 0.5)
    w[4] = 0  # an empty row gets scale 1
    A = CSRMatrix.from_dense(w, value_dtype="int8")
    assert A.data.dtype == np.int8 and A.scales.dtype == np.float32 and A.scales.shape == (9,)
    padded = np.zeros((9, 20), np.float32)
    for i in range(9):
        vals = w[i][w[i] != 0]
        padded[i, :vals.size] = vals
    q, s = ref_quant_groups(padded)
    np.testing.assert_array_equal(A.scales, s)
    deq = np.zeros_like(w)
    for i in range(9):
        cols = np.flatnonzero(w[i])
        deq[i, cols] = q[i, :cols.size].astype(np.float32) * s[i]
    np.testing.assert_array_equal(A.to_dense(), deq)
    assert np.abs(A.to_dense() - w).max() <= s.max() / 2 + 1e-7


@pytest.mark.parametrize("bs", [(4, 4), (1, 4), (16, 1), (2, 3), (8, 8)])
def test_bsr_from_dense_roundtrip(rng, bs):
    r, c = bs
    R, C = 3, 4
    bm = rng.random((R, C)) < 0.5
    w = rng.standard_normal((R * r, C * c)).astype(np.float32) * np.kron(bm, np.ones(bs, np.float32))
    A = BSRMatrix.from_dense(w, bs)
    assert A.nblocks == bm.sum() and A.blocksize == bs and A.data.shape == (bm.sum(), r, c)
    np.testing.assert_array_equal(A.to_dense(), w)
    S = A.to_scipy()
    assert S.format == "bsr" and tuple(S.blocksize) == bs
    np.testing.assert_array_equal(S.toarray(), w)
    B = BSRMatrix.from_dense(rng.standard_normal(w.shape).astype(np.float32), bs, mask=bm)
    assert B.nblocks == bm.sum()


def test_bsr_mask_and_sparsity_and_quant(rng):
    w = rng.standard_normal((8, 12)).astype(np.float32)
    emask = rng.random(w.shape) < 0.2
    A = BSRMatrix.from_dense(w, (4, 4), mask=emask)
    np.testing.assert_array_equal(A.to_dense()[~emask], 0)
    np.testing.assert_array_equal(A.to_dense()[emask], w[emask])
    B = BSRMatrix.from_dense(w, (4, 4), sparsity=0.5)
    assert B.nblocks == 3
    Q = BSRMatrix.from_dense(w, (2, 4), value_dtype=np.int8)
    q, s = ref_quant_groups(B.__class__.from_dense(w, (2, 4)).data.reshape(Q.nblocks, -1))
    np.testing.assert_array_equal(Q.scales, s)
    np.testing.assert_array_equal(Q.data.reshape(Q.nblocks, -1), q)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 2), (3, 8), (2, 3), (4, 16), (1, 1)])
def test_nm_from_dense(rng, n, m):
    w = rng.standard_normal((5, 4 * m)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, n, m)
    keep = ref_nm_keep(w, n, m)
    np.testing.assert_array_equal(A.to_dense(), np.where(keep, w, 0))
    assert A.data.shape == (5, 4 * n)
    assert A.metadata.dtype == np.uint8
    np.testing.assert_array_equal(A.to_scipy().toarray(), A.to_dense())
    assert A.nbytes_breakdown() == contract_bytes(A)


def test_nm_metadata_bit_order():
    # 2:4 row [a 0 b 0 | 0 c 0 d]: positions (0, 2), (1, 3) -> bits 00 10 01 11 little-endian = 0b11_01_10_00
    w = np.array([[1, 0, 2, 0, 0, 3, 0, 4]], np.float32)
    A = NMSparseMatrix.from_dense(w, 2, 4)
    assert A.metadata.tolist() == [[0b11011000]]
    np.testing.assert_array_equal(A.data, [[1, 2, 3, 4]])


def test_nm_mask_with_short_groups():
    w = np.array([[5, 6, 7, 8, 1, 2, 3, 4]], np.float32)
    mask = np.array([[False, False, True, False, False, False, False, False]])
    A = NMSparseMatrix.from_dense(w, 2, 4, mask=mask)
    np.testing.assert_array_equal(A.to_dense(), [[0, 0, 7, 0, 0, 0, 0, 0]])
    assert A.nnz == 4  # fixed storage: explicit zeros pad the groups
    with pytest.raises(ValueError, match="group 1 of row 0 keeps 3"):
        NMSparseMatrix.from_dense(w, 2, 4, mask=np.array([[1, 0, 0, 0, 1, 1, 1, 0]], bool))


def test_nm_int8_and_float16(rng):
    w = rng.standard_normal((6, 16)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, 2, 4, value_dtype=np.int8)
    ref = NMSparseMatrix.from_dense(w, 2, 4)
    q, s = ref_quant_groups(ref.data)
    np.testing.assert_array_equal(A.data, q)
    np.testing.assert_array_equal(A.scales, s)
    H = NMSparseMatrix.from_dense(w, 2, 4, value_dtype=np.float16)
    np.testing.assert_array_equal(H.to_dense(), ref.to_dense().astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("fmt", ["csr", "coo", "csc", "bsr"])
def test_from_scipy(rng, fmt):
    w = sparse_w(rng, (8, 12), 0.4)
    S = sps.csr_matrix(w).asformat(fmt) if fmt != "bsr" else sps.bsr_matrix(w, blocksize=(2, 3))
    A = CSRMatrix.from_scipy(S)
    np.testing.assert_array_equal(A.to_dense(), w)
    B = BSRMatrix.from_scipy(S, blocksize=(4, 4))
    np.testing.assert_array_equal(B.to_dense(), w)
    if fmt == "bsr":
        assert BSRMatrix.from_scipy(S).blocksize == (2, 3)


def test_from_scipy_duplicates_and_nm():
    coo = sps.coo_matrix((np.array([1.0, 2.0, 3.0]), (np.array([0, 0, 1]), np.array([1, 1, 6]))), shape=(2, 8))
    A = CSRMatrix.from_scipy(coo)
    np.testing.assert_array_equal(A.to_dense(), [[0, 3, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 3, 0]])
    N = NMSparseMatrix.from_scipy(coo, 2, 4)
    np.testing.assert_array_equal(N.to_dense(), A.to_dense())
    with pytest.raises(TypeError):
        CSRMatrix.from_scipy(np.eye(3))


# ----------------------------------------------------------------------------------------------------------
# bytes
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vdt", [np.float32, np.float16, np.int8])
def test_nbytes_match_arrays_and_contract(rng, vdt):
    w = sparse_w(rng, (16, 24), 0.3)
    for A in (CSRMatrix.from_dense(w, value_dtype=vdt), BSRMatrix.from_dense(w, (4, 8), value_dtype=vdt),
              BSRMatrix.from_dense(w, (16, 1), value_dtype=vdt), NMSparseMatrix.from_dense(w, 2, 4, value_dtype=vdt),
              NMSparseMatrix.from_dense(w, 3, 8, value_dtype=vdt)):
        parts = A.nbytes_breakdown()
        assert set(parts) == {"values", "indices", "indptr", "metadata", "scales"}
        assert parts == contract_bytes(A)
        assert A.nbytes == sum(parts.values()) == held_bytes(A)


def test_index_dtype_rule():
    assert index_dtype(2**31 - 1, 10) == np.int32
    assert index_dtype(10, 2**31) == np.int64
    assert index_dtype(2**31, 10) == np.int64
    # int64 arrays from the user are stored in the model's dtype
    A = CSRMatrix(np.ones(2, np.float32), np.array([0, 2], np.int64), np.array([0, 1, 2], np.int64), (2, 3))
    assert A.indices.dtype == np.int32 and A.indptr.dtype == np.int32


def test_density_and_repr(rng):
    w = np.zeros((4, 8), np.float32)
    w[0, 0] = 1
    A = CSRMatrix.from_dense(w)
    assert A.nnz == 1 and A.density == 1 / 32 and math.isclose(A.sparsity, 31 / 32)
    assert "CSRMatrix 4x8" in repr(A)


# ----------------------------------------------------------------------------------------------------------
# edge shapes (hypothesis)
# ----------------------------------------------------------------------------------------------------------
@given(rows=st.integers(0, 7), cols=st.integers(0, 9), density=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, 2**16))
def test_csr_hypothesis_roundtrip(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0
    A = CSRMatrix.from_dense(w)
    np.testing.assert_array_equal(A.to_dense(), w)
    again = CSRMatrix(A.data, A.indices, A.indptr, A.shape)  # full scan accepts our own arrays
    np.testing.assert_array_equal(again.to_dense(), w)
    np.testing.assert_array_equal(CSRMatrix.from_scipy(A.to_scipy()).to_dense(), w)
    assert A.nbytes == held_bytes(A) == sum(contract_bytes(A).values())


@given(R=st.integers(0, 4), C=st.integers(0, 4), r=st.integers(1, 5), c=st.integers(1, 5),
       density=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_bsr_hypothesis_roundtrip(R, C, r, c, density, seed):
    rng = np.random.default_rng(seed)
    bm = rng.random((R, C)) < density
    w = rng.standard_normal((R * r, C * c)).astype(np.float32) * np.kron(bm, np.ones((r, c), np.float32))
    A = BSRMatrix.from_dense(w, (r, c))
    np.testing.assert_array_equal(A.to_dense(), w)
    again = BSRMatrix(A.data, A.indices, A.indptr, A.shape)
    np.testing.assert_array_equal(again.to_dense(), w)
    assert A.nbytes == held_bytes(A) == sum(contract_bytes(A).values())


@given(rows=st.integers(0, 5), groups=st.integers(0, 4), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8), (2, 3),
                                                                              (5, 5)]),
       seed=st.integers(0, 2**16))
def test_nm_hypothesis_roundtrip(rows, groups, nm, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, groups * m)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, n, m)
    np.testing.assert_array_equal(A.to_dense(), np.where(ref_nm_keep(w, n, m), w, 0))
    again = NMSparseMatrix(A.data, A.metadata, A.shape, n, m)
    np.testing.assert_array_equal(again.to_dense(), A.to_dense())
    assert A.nbytes == held_bytes(A) == sum(contract_bytes(A).values())


# ----------------------------------------------------------------------------------------------------------
# validation: O(1) checks and the full scan, each naming the defect and the first position
# ----------------------------------------------------------------------------------------------------------
def _csr_args():
    return np.array([1, 2, 3], np.float32), np.array([0, 2, 1], np.int32), np.array([0, 2, 3], np.int32), (2, 3)


def test_csr_constructor_errors():
    d, i, p, shape = _csr_args()
    CSRMatrix(d, i, p, shape)
    with pytest.raises(ValueError, match=r"indptr\[0\] must be 0"):
        CSRMatrix(d, i, np.array([1, 2, 3], np.int32), shape)
    with pytest.raises(ValueError, match="must equal nnz"):
        CSRMatrix(d, i, np.array([0, 2, 2], np.int32), shape)
    with pytest.raises(ValueError, match="expected 3 entries"):
        CSRMatrix(d, i, np.array([0, 3], np.int32), shape)
    with pytest.raises(ValueError, match=r"not monotonic: indptr\[2\]"):
        CSRMatrix(np.ones(4, np.float32), np.array([0, 1, 2, 0], np.int32), np.array([0, 3, 1, 4], np.int32),
                  (3, 3))
    with pytest.raises(ValueError, match="index 3 out of range .* at position 1 \\(row 0\\)"):
        CSRMatrix(d, np.array([0, 3, 1], np.int32), p, shape)
    with pytest.raises(ValueError, match="index -1 out of range"):
        CSRMatrix(d, np.array([0, -1, 1], np.int32), p, shape)
    with pytest.raises(ValueError, match="unsorted column index 0 at position 1 \\(row 0\\)"):
        CSRMatrix(d, np.array([2, 0, 1], np.int32), p, shape)
    with pytest.raises(ValueError, match="duplicate column index 2 at position 1"):
        CSRMatrix(d, np.array([2, 2, 1], np.int32), p, shape)
    with pytest.raises(TypeError, match="indices: expected dtype int32 or int64"):
        CSRMatrix(d, i.astype(np.float64), p, shape)
    with pytest.raises(TypeError, match="data: expected dtype"):
        CSRMatrix(d.astype(np.float64), i, p, shape)
    with pytest.raises(ValueError, match="finite"):
        CSRMatrix(np.array([1, np.nan, 3], np.float32), i, p, shape)
    with pytest.raises(ValueError, match="scales: INT8 values need"):
        CSRMatrix(d.astype(np.int8), i, p, shape)
    with pytest.raises(ValueError, match="only INT8 values take scales"):
        CSRMatrix(d, i, p, shape, scales=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="scales: expected values > 0"):
        CSRMatrix(d.astype(np.int8), i, p, shape, scales=np.array([1, 0], np.float32))
    with pytest.raises(TypeError, match="shape"):
        CSRMatrix(d, i, p, (2,))
    # the scan is skippable (our own converters), the O(1) checks are not
    CSRMatrix(d, np.array([2, 0, 1], np.int32), p, shape, check=False)


def test_bsr_constructor_errors():
    data = np.ones((2, 2, 2), np.float32)
    BSRMatrix(data, np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32), (4, 4))
    with pytest.raises(ValueError, match="does not divide"):
        BSRMatrix(data, np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32), (4, 5))
    with pytest.raises(ValueError, match="block-column index 2 out of range"):
        BSRMatrix(data, np.array([0, 2], np.int32), np.array([0, 1, 2], np.int32), (4, 4))
    with pytest.raises(ValueError, match="duplicate block-column index 1 at position 1"):
        BSRMatrix(data, np.array([1, 1], np.int32), np.array([0, 2, 2], np.int32), (4, 4))
    with pytest.raises(ValueError, match="3-D"):
        BSRMatrix(np.ones((2, 4), np.float32), np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32), (4, 4))
    with pytest.raises(ValueError, match="one per stored block"):
        BSRMatrix(data.astype(np.int8), np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32), (4, 4),
                  scales=np.ones(3, np.float32))


def test_nm_constructor_errors():
    A = NMSparseMatrix.from_dense(np.arange(1, 17, dtype=np.float32).reshape(2, 8), 2, 4)
    NMSparseMatrix(A.data, A.metadata, A.shape, 2, 4)
    bad = A.metadata.copy()
    bad[1, 0] = 0b0101  # positions (1, 1) in row 1, group 0
    with pytest.raises(ValueError, match="repeated position in row 1, group 0"):
        NMSparseMatrix(A.data, bad, A.shape, 2, 4)
    with pytest.raises(ValueError, match="n <= m"):
        NMSparseMatrix(A.data, A.metadata, A.shape, 5, 4)
    with pytest.raises(ValueError, match="multiple of m"):
        NMSparseMatrix(A.data, A.metadata, (2, 8), 2, 3)
    with pytest.raises(ValueError, match="expected shape"):
        NMSparseMatrix(A.data[:, :3], A.metadata, A.shape, 2, 4)
    with pytest.raises(TypeError, match="uint8"):
        NMSparseMatrix(A.data, A.metadata.astype(np.int16), A.shape, 2, 4)
    # m = 3 uses 2 bits: position 3 is representable but out of range
    T = NMSparseMatrix.from_dense(np.ones((1, 6), np.float32), 1, 3)
    meta = T.metadata.copy()
    meta[0, 0] |= 0b11
    with pytest.raises(ValueError, match="position 3 >= m=3 at row 0, kept value 0"):
        NMSparseMatrix(T.data, meta, T.shape, 1, 3)
    meta = T.metadata.copy()
    meta[0, 0] |= 0b10000  # bit 4: beyond the 2 x 2 used bits
    with pytest.raises(ValueError, match="padding bits"):
        NMSparseMatrix(T.data, meta, T.shape, 1, 3)


def test_from_dense_bad_input(rng):
    w = rng.standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="sparsity"):
        CSRMatrix.from_dense(w, sparsity=1.5)
    with pytest.raises(ValueError, match="threshold"):
        CSRMatrix.from_dense(w, threshold=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        CSRMatrix.from_dense(w, threshold=float("nan"))
    with pytest.raises(ValueError, match="at most one"):
        CSRMatrix.from_dense(w, threshold=0.5, sparsity=0.5)
    with pytest.raises(TypeError, match="bool"):
        CSRMatrix.from_dense(w, mask=np.ones(w.shape, np.int32))
    with pytest.raises(ValueError, match="shape"):
        CSRMatrix.from_dense(w, mask=np.ones((4, 7), bool))
    with pytest.raises(TypeError, match="value_dtype"):
        CSRMatrix.from_dense(w, value_dtype=np.int16)
    with pytest.raises(ValueError, match="finite"):
        CSRMatrix.from_dense(np.array([[1.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        CSRMatrix.from_dense(np.ones(5, np.float32))
    with pytest.raises(TypeError):
        CSRMatrix.from_dense(np.ones((2, 2), complex))
    with pytest.raises(ValueError, match="does not divide"):
        BSRMatrix.from_dense(w, (3, 4))
    with pytest.raises(ValueError, match="blocksize"):
        BSRMatrix.from_dense(w, (0, 4))
    with pytest.raises(ValueError, match="n <= m"):
        NMSparseMatrix.from_dense(w, 3, 2)
    with pytest.raises(ValueError, match="multiple of m"):
        NMSparseMatrix.from_dense(w, 1, 3)
    with pytest.raises(ValueError, match="overflows float16"):
        CSRMatrix.from_dense(np.array([[1e6]], np.float32), value_dtype=np.float16)


def test_noncontiguous_input_is_copied(rng):
    w = rng.standard_normal((8, 16)).astype(np.float32)
    view = w[:, ::2]
    np.testing.assert_array_equal(CSRMatrix.from_dense(view).to_dense(), view)
    np.testing.assert_array_equal(NMSparseMatrix.from_dense(np.asfortranarray(w)).to_dense(),
                                  NMSparseMatrix.from_dense(w).to_dense())

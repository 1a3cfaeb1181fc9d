"""spmm / spmv / spmm_t / gemv_skip_zeros against plain NumPy references."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwall.kernels import BSRMatrix, CSRMatrix, NMSparseMatrix, spmm
from memwall.kernels.config import FLOAT32_RTOL
from memwall.kernels.spmm import crossover_point, crossover_sweep, gemv_skip_zeros, spmm_t, spmv


# ----------------------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------------------
def ref_float(A, X) -> np.ndarray:
    """float64 product of the matrix the format represents (to_dense is checked in test_formats)."""
    return A.to_dense().astype(np.float64) @ X.astype(np.float64)


def assert_close(got, want, A, X):
    """float32 accumulation in another order than the float64 reference: tolerance scaled by the terms."""
    assert got.dtype == np.float32
    scale = np.abs(A.to_dense()).astype(np.float64) @ np.abs(X.astype(np.float64))
    np.testing.assert_array_less(np.abs(got - want), FLOAT32_RTOL * scale + 1e-6)


def ref_int8_rows(A, Xq, xs) -> np.ndarray:
    """CSR / N:M INT8 x INT8: exact integer row sums, then float32(acc) * (w_scale[i] * x_scale[b])."""
    dense_q = np.zeros(A.shape, np.int64)
    if isinstance(A, CSRMatrix):
        rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
        dense_q[rows, A.indices] = A.data
    else:
        dense_q[np.arange(A.shape[0])[:, None], A.columns()] = A.data
    acc = dense_q @ Xq.astype(np.int64)
    assert np.abs(acc).max(initial=0) < 2**31
    factor = (A.scales[:, None] * xs[None, :]).astype(np.float32)
    return acc.astype(np.float32) * factor


def ref_int8_bsr(A, Xq, xs) -> np.ndarray:
    """BSR INT8 x INT8: exact int per block, float32(acc) * (block_scale * x_scale) summed in block order."""
    r, c = A.blocksize
    out = np.zeros((A.shape[0], Xq.shape[1]), np.float32)
    for I in range(A.shape[0] // r):
        for p in range(A.indptr[I], A.indptr[I + 1]):
            j = A.indices[p] * c
            acc = A.data[p].astype(np.int64) @ Xq[j:j + c].astype(np.int64)
            out[I * r:(I + 1) * r] += acc.astype(np.float32) * (A.scales[p] * xs).astype(np.float32)
    return out


def make_all(w, vdt=np.float32):
    return [CSRMatrix.from_dense(w, value_dtype=vdt),
            BSRMatrix.from_dense(w, (4, 4), value_dtype=vdt),
            BSRMatrix.from_dense(w, (2, 8), value_dtype=vdt),
            BSRMatrix.from_dense(w, (1, 4), value_dtype=vdt),
            BSRMatrix.from_dense(w, (16, 1), value_dtype=vdt),
            NMSparseMatrix.from_dense(w, 2, 4, value_dtype=vdt),
            NMSparseMatrix.from_dense(w, 1, 4, value_dtype=vdt),
            NMSparseMatrix.from_dense(w, 3, 8, value_dtype=vdt)]


def sparse_w(rng, shape, density=0.3):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0
    w[3] = 0  # an empty row
    return w


# ----------------------------------------------------------------------------------------------------------
# float paths
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vdt", [np.float32, np.float16, np.int8])
def test_spmm_every_format(rng, vdt):
    w = sparse_w(rng, (32, 48))
    X = rng.standard_normal((48, 37)).astype(np.float32)
    for A in make_all(w, vdt):
        want = ref_float(A, X)
        assert_close(spmm(A, X), want, A, X)
        assert_close(A @ X, want, A, X)
        x = X[:, 5].copy()
        y = spmm(A, x)
        assert y.shape == (32,)
        assert_close(y, want[:, 5], A, x)
        assert_close(spmv(A, x), want[:, 5], A, x)
        assert_close(spmm_t(X.T, A).T, want, A, X)  # (batch, in) @ A.T
        assert spmm_t(X.T, A).shape == (37, 32)


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 16, 64, 65])
def test_spmm_batch_sizes(rng, batch):
    w = sparse_w(rng, (32, 64), 0.5)
    X = rng.standard_normal((64, batch)).astype(np.float32)
    for A in make_all(w):
        assert_close(spmm(A, X), ref_float(A, X), A, X)


def test_spmm_long_rows_cross_panels(rng):
    # reduction dimension far larger than one L1 panel: rows resume at their cursor panel after panel
    w = sparse_w(rng, (40, 2048), 0.2)
    X = rng.standard_normal((2048, 64)).astype(np.float32)
    for A in (CSRMatrix.from_dense(w), NMSparseMatrix.from_dense(w, 2, 4), BSRMatrix.from_dense(w, (8, 16))):
        assert_close(spmm(A, X), ref_float(A, X), A, X)


def test_spmm_noncontiguous_and_converted_x(rng):
    w = sparse_w(rng, (16, 32))
    base = rng.standard_normal((32, 20)).astype(np.float32)
    for A in make_all(w):
        want = spmm(A, np.ascontiguousarray(base[:, ::2]))
        np.testing.assert_array_equal(spmm(A, base[:, ::2]), want)
        np.testing.assert_array_equal(spmm(A, np.asfortranarray(base[:, ::2])), want)
        np.testing.assert_array_equal(spmm(A, base[:, ::2].astype(np.float64)), want)
        np.testing.assert_array_equal(spmm(A, base[::-1, ::2][::-1]), want)


def test_threads_identical(rng):
    w = sparse_w(rng, (64, 96), 0.4)
    X = rng.standard_normal((96, 24)).astype(np.float32)
    Xq = rng.integers(-127, 128, (96, 24)).astype(np.int8)
    mats = make_all(w) + make_all(w, np.int8)
    before = numba.get_num_threads()
    try:
        results = []
        for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(nt)
            res = [spmm(A, X) for A in mats] + [spmm(A, X[:, 0]) for A in mats]
            res += [spmm(A, Xq, x_scale=0.5) for A in mats if A.dtype == np.int8]
            results.append(res)
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
    finally:
        numba.set_num_threads(before)


@given(rows=st.integers(0, 9), cols_groups=st.integers(0, 5), batch=st.integers(0, 6),
       density=st.sampled_from([0.0, 0.4, 1.0]), vdt=st.sampled_from([np.float32, np.float16, np.int8]),
       seed=st.integers(0, 2**16))
def test_spmm_hypothesis(rows, cols_groups, batch, density, vdt, seed):
    rng = np.random.default_rng(seed)
    cols = cols_groups * 4
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0
    X = rng.standard_normal((cols, batch)).astype(np.float32)
    mats = [CSRMatrix.from_dense(w, value_dtype=vdt), NMSparseMatrix.from_dense(w, 2, 4, value_dtype=vdt),
            NMSparseMatrix.from_dense(w, 1, 4, value_dtype=vdt)]
    if rows % 3 == 0:
        mats.append(BSRMatrix.from_dense(w, (3, 4), value_dtype=vdt))
    if rows % 2 == 0:
        mats.append(BSRMatrix.from_dense(w, (2, 2), value_dtype=vdt))
    for A in mats:
        got = spmm(A, X)
        assert got.shape == (rows, batch)
        assert_close(got, ref_float(A, X), A, X)
        xv = X[:, 0].copy() if batch else np.ones(cols, np.float32)
        assert_close(spmm(A, xv), ref_float(A, xv), A, xv)


def test_1x1_and_empty(rng):
    one = np.array([[2.5]], np.float32)
    for A in (CSRMatrix.from_dense(one), BSRMatrix.from_dense(one, (1, 1)), NMSparseMatrix.from_dense(one, 1, 1)):
        np.testing.assert_array_equal(spmm(A, np.array([[3.0, -1.0]], np.float32)), [[7.5, -2.5]])
    empty = np.zeros((0, 8), np.float32)
    for A in (CSRMatrix.from_dense(empty), BSRMatrix.from_dense(empty, (4, 4)), NMSparseMatrix.from_dense(empty)):
        assert spmm(A, np.ones((8, 3), np.float32)).shape == (0, 3)
        assert spmm(A, np.ones(8, np.float32)).shape == (0,)
    zero_cols = np.zeros((5, 0), np.float32)
    A = CSRMatrix.from_dense(zero_cols)
    np.testing.assert_array_equal(spmm(A, np.ones((0, 4), np.float32)), np.zeros((5, 4)))
    allzero = np.zeros((8, 8), np.float32)
    for A in make_all(np.zeros((16, 16), np.float32))[:1] + [NMSparseMatrix.from_dense(allzero)]:
        X = rng.standard_normal((A.shape[1], 5)).astype(np.float32)
        np.testing.assert_array_equal(spmm(A, X), np.zeros((A.shape[0], 5)))


def test_fully_dense(rng):
    w = rng.standard_normal((16, 16)).astype(np.float32)
    X = rng.standard_normal((16, 9)).astype(np.float32)
    for A in make_all(w)[:5]:
        assert A.density == 1.0
        assert_close(spmm(A, X), w.astype(np.float64) @ X, A, X)


# ----------------------------------------------------------------------------------------------------------
# INT8 x INT8 (exact integer accumulation + float32 epilogue)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_int8_exact(rng, batch):
    w = sparse_w(rng, (32, 64), 0.5)
    Xq = rng.integers(-128, 128, (64, batch)).astype(np.int8)
    xs = (rng.random(batch) + 0.01).astype(np.float32)
    for A in make_all(w, np.int8):
        got = spmm(A, Xq, x_scale=xs)
        want = ref_int8_bsr(A, Xq, xs) if isinstance(A, BSRMatrix) else ref_int8_rows(A, Xq, xs)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(spmm_t(np.ascontiguousarray(Xq.T), A, x_scale=xs), want.T)
    A = CSRMatrix.from_dense(w, value_dtype=np.int8)
    np.testing.assert_array_equal(spmm(A, Xq[:, 0], x_scale=float(xs[0])), ref_int8_rows(A, Xq[:, :1], xs[:1])[:, 0])
    np.testing.assert_array_equal(spmm(A, Xq, x_scale=0.25),
                                  ref_int8_rows(A, Xq, np.full(batch, 0.25, np.float32)))


def test_int8_extremes_exact():
    # all +-127/-128 products: the int32 path must not wrap
    w = np.full((4, 1024), 1.0, np.float32)
    A = CSRMatrix.from_dense(w, value_dtype=np.int8)  # all q = 127
    Xq = np.full((1024, 3), -128, np.int8)
    got = spmm(A, Xq, x_scale=1.0)
    np.testing.assert_array_equal(got, np.full((4, 3), np.float32(127 * -128 * 1024) * np.float32(A.scales[0])))


def test_int8_overflow_guard():
    w = np.ones((1, 140_000), np.float32)
    A = CSRMatrix.from_dense(w, value_dtype=np.int8)
    with pytest.raises(ValueError, match="overflow"):
        spmm(A, np.ones(140_000, np.int8), x_scale=1.0)


# ----------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------
def test_spmm_bad_input(rng):
    w = sparse_w(rng, (8, 16))
    A = CSRMatrix.from_dense(w)
    Q = CSRMatrix.from_dense(w, value_dtype=np.int8)
    X = rng.standard_normal((16, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="CSRMatrix, BSRMatrix or NMSparseMatrix"):
        spmm(w, X)
    with pytest.raises(ValueError, match="inner dimensions"):
        spmm(A, X[:15])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        spmm(A, X[:, :, None])
    with pytest.raises(TypeError, match="int32"):
        spmm(A, X.astype(np.int32))
    with pytest.raises(TypeError, match="complex"):
        spmm(A, X.astype(np.complex64))
    with pytest.raises(TypeError, match="int8 activations need int8 weights"):
        spmm(A, X.astype(np.int8), x_scale=1.0)
    with pytest.raises(ValueError, match="x_scale: required"):
        spmm(Q, X.astype(np.int8))
    with pytest.raises(ValueError, match="x_scale: expected a scalar or 4"):
        spmm(Q, X.astype(np.int8), x_scale=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="x_scale: expected values > 0"):
        spmm(Q, X.astype(np.int8), x_scale=-1.0)
    with pytest.raises(ValueError, match="only used with int8"):
        spmm(A, X, x_scale=1.0)
    with pytest.raises(ValueError, match="1-D"):
        spmv(A, X)
    with pytest.raises(ValueError, match="inner dimensions"):
        spmm_t(X, A)


# ----------------------------------------------------------------------------------------------------------
# activation sparsity
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nout,k", [(300, 200), (1, 7), (700, 64), (5, 0)])
def test_gemv_skip_zeros(rng, nout, k):
    W = rng.standard_normal((nout, k)).astype(np.float32)
    x = np.maximum(rng.standard_normal(k), 0).astype(np.float32)
    zero_frac = float((x == 0).mean()) if k else 0.0
    want = W.astype(np.float64) @ x
    tol = FLOAT32_RTOL * (np.abs(W).astype(np.float64) @ np.abs(x)) + 1e-6
    y, frac = gemv_skip_zeros(np.ascontiguousarray(W.T), x)
    np.testing.assert_array_less(np.abs(y - want), tol)
    assert frac == zero_frac
    res = gemv_skip_zeros(W, x, layout="out_in")
    np.testing.assert_array_less(np.abs(res.y - want), tol)
    assert res.zero_fraction == zero_frac


def test_gemv_skip_zeros_all_zero_and_errors(rng):
    W = rng.standard_normal((10, 6)).astype(np.float32)
    y, frac = gemv_skip_zeros(W.T.copy(), np.zeros(6, np.float32))  # (in=6, out=10)
    assert frac == 1.0 and not y.any() and y.shape == (10,)
    with pytest.raises(ValueError, match="expected 10 entries"):
        gemv_skip_zeros(W.T.copy(), np.zeros(6, np.float32), layout="out_in")
    with pytest.raises(ValueError, match="layout"):
        gemv_skip_zeros(W, np.zeros(6, np.float32), layout="cols")
    with pytest.raises(ValueError, match="1-D"):
        gemv_skip_zeros(W, np.zeros((6, 1), np.float32), layout="out_in")


# ----------------------------------------------------------------------------------------------------------
# crossover helpers
# ----------------------------------------------------------------------------------------------------------
def test_crossover_point():
    assert crossover_point([0.3, 0.5, 0.7], [0.5, 0.8, 1.2]) == pytest.approx(0.6)
    assert crossover_point([0.3, 0.5], [1.5, 2.0]) == 0.3
    assert crossover_point([0.3, 0.5], [0.5, 0.9]) is None
    assert crossover_point([0.7, 0.3, 0.5], [1.2, 0.5, 0.8]) == pytest.approx(0.6)
    # noisy sweep: the crossover is where it beats dense for good
    assert crossover_point([0.3, 0.5, 0.7, 0.9], [1.2, 0.8, 1.1, 1.5]) == pytest.approx(0.5 + 0.2 * 0.2 / 0.3)
    assert crossover_point([0.3, 0.5, 0.7], [1.2, 1.3, 0.9]) is None


def test_crossover_sweep_smoke():
    rows = crossover_sweep((64, 64), batch=4, sparsities=(0.5, 0.9), repeats=1, formats=("csr", "bsr16", "nm2:4"))
    pts = [r for r in rows if "speedup" in r]
    summary = [r for r in rows if "crossover_sparsity" in r]
    assert [p["format"] for p in pts] == ["csr", "csr", "bsr16", "bsr16", "nm2:4"]
    assert all(p["sparse_ms"] > 0 and p["dense_ms"] > 0 for p in pts)
    assert [s["format"] for s in summary] == ["csr", "bsr16", "nm2:4"]
    with pytest.raises(ValueError, match="unknown format"):
        crossover_sweep((8, 8), batch=1, sparsities=(0.5,), repeats=1, formats=("ell",))


# ----------------------------------------------------------------------------------------------------------
# register micro-kernel paths: batch chunks of 64 plus a remainder, aligned / unaligned X, many panels
# ----------------------------------------------------------------------------------------------------------
def _offset_copy(X, offset_floats):
    """X copied into a buffer starting ``offset_floats`` floats past a 64-byte boundary."""
    buf = np.empty(X.size + 32, np.float32)
    start = (-buf.ctypes.data % 64) // 4 + offset_floats
    out = buf[start:start + X.size].reshape(X.shape)
    out[...] = X
    return out


@pytest.mark.parametrize("batch", [32, 64, 130])
def test_spmm_alignment_and_wide_batches(rng, batch):
    w = sparse_w(rng, (24, 520), 0.3)
    X = rng.standard_normal((520, batch)).astype(np.float32)
    mats = [CSRMatrix.from_dense(w), BSRMatrix.from_dense(w, (8, 8)), BSRMatrix.from_dense(w, (3, 4)),
            NMSparseMatrix.from_dense(w, 2, 4), NMSparseMatrix.from_dense(w, 3, 8)]
    for A in mats:
        want = ref_float(A, X)
        got = spmm(A, _offset_copy(X, 0))
        assert_close(got, want, A, X)
        np.testing.assert_array_equal(spmm(A, _offset_copy(X, 3)), got)


def test_spmm_many_panels_every_format(rng):
    # a long reduction dimension (several L1 panels of X) for every format and value type
    w = sparse_w(rng, (20, 4096), 0.15)
    X = rng.standard_normal((4096, 48)).astype(np.float32)
    for vdt in (np.float32, np.float16, np.int8):
        for A in (CSRMatrix.from_dense(w, value_dtype=vdt), NMSparseMatrix.from_dense(w, 2, 4, value_dtype=vdt),
                  NMSparseMatrix.from_dense(w, 1, 4, value_dtype=vdt), BSRMatrix.from_dense(w, (4, 32), value_dtype=vdt)):
            assert_close(spmm(A, X), ref_float(A, X), A, X)


# ----------------------------------------------------------------------------------------------------------
# general N:M (register micro-kernel unrolled per n:m): odd group counts (a partial unroll step at the end of
# every row), rows 0 / 1 / odd, batch 1 / 7 / 33 (a 16-column remainder), long rows over several panels
# ----------------------------------------------------------------------------------------------------------
NM_CASES = [(1, 2), (1, 4), (2, 8), (4, 8), (3, 8)]


@pytest.mark.parametrize("n,m", NM_CASES)
def test_nm_general_float32(rng, n, m):
    for rows, groups, batch in [(0, 5, 7), (1, 1, 1), (7, 37, 33), (13, 3 * 64 + 5, 7), (3, 600, 70)]:
        w = rng.standard_normal((rows, groups * m)).astype(np.float32)
        X = rng.standard_normal((groups * m, batch)).astype(np.float32)
        A = NMSparseMatrix.from_dense(w, n, m)
        got = spmm(A, X)
        assert got.shape == (rows, batch)
        assert_close(got, ref_float(A, X), A, X)


@pytest.mark.parametrize("n,m,vdt", [(2, 8, np.float16), (4, 8, np.int8), (1, 4, np.float16), (3, 8, np.int8)])
def test_nm_general_value_types(rng, n, m, vdt):
    # float16 decoded exactly, int8 times its per-row scale: the dense reference is the same matrix (to_dense)
    w = rng.standard_normal((11, 101 * m)).astype(np.float32)
    X = rng.standard_normal((101 * m, 33)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, n, m, value_dtype=vdt)
    assert_close(spmm(A, X), ref_float(A, X), A, X)
    assert_close(spmm_t(X.T, A).T, ref_float(A, X), A, X)  # the Linear layout (batch, in) @ A.T


@pytest.mark.parametrize("n,m", [(2, 8), (3, 8)])
def test_nm_general_int8_exact(rng, n, m):
    w = rng.standard_normal((9, 45 * m)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, n, m, value_dtype=np.int8)
    Xq = rng.integers(-128, 128, (45 * m, 7)).astype(np.int8)
    xs = (rng.random(7) + 0.01).astype(np.float32)
    np.testing.assert_array_equal(spmm(A, Xq, x_scale=xs), ref_int8_rows(A, Xq, xs))


def test_nm_general_threads_identical(rng):
    w = rng.standard_normal((133, 40 * 8)).astype(np.float32)
    X = rng.standard_normal((40 * 8, 33)).astype(np.float32)
    mats = [NMSparseMatrix.from_dense(w, n, m) for n, m in NM_CASES]
    before = numba.get_num_threads()
    try:
        results = []
        for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(nt)
            results.append([spmm(A, X) for A in mats])
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
    finally:
        numba.set_num_threads(before)


def test_nm_wide_step_falls_back(rng):
    # 9:24 (5-bit positions, an unroll step would cover 72 values) takes the decode-then-CSR kernel
    from memwall.kernels._spmm_kernels import nm_period

    assert nm_period(9, 24) == 0 and nm_period(2, 4) > 0 and nm_period(1, 300) == 0
    w = rng.standard_normal((5, 24 * 7)).astype(np.float32)
    X = rng.standard_normal((24 * 7, 20)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, 9, 24)
    assert_close(spmm(A, X), ref_float(A, X), A, X)


#: N:M shapes that take the decode-then-CSR kernel (nm_mm): 5-bit positions straddling bytes (9:24), 8-bit
#: positions with an unroll step over 64 values (65:256), 9-bit positions (1:300, 3:512)
NM_DECODE_CASES = [(9, 24), (65, 256), (1, 300), (3, 512)]


@settings(max_examples=25, deadline=None)
@given(nm=st.sampled_from(NM_DECODE_CASES), rows=st.integers(0, 7), groups=st.integers(0, 5),
       batch=st.sampled_from([1, 3, 16, 70]), seed=st.integers(0, 2**16))
def test_nm_decode_then_csr_kernel_hypothesis(nm, rows, groups, batch, seed):
    from memwall.kernels._spmm_kernels import nm_period

    n, m = nm
    assert nm_period(n, m) == 0  # these shapes are the ones the tiled kernel refuses
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, groups * m)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0
    X = rng.standard_normal((groups * m, batch)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, n, m)
    got = spmm(A, X)
    assert got.shape == (rows, batch)
    assert_close(got, ref_float(A, X), A, X)


@given(nm=st.sampled_from(NM_CASES), rows=st.integers(0, 9), groups=st.integers(0, 70),
       batch=st.sampled_from([1, 2, 7, 16, 33]), seed=st.integers(0, 2**16))
def test_nm_general_hypothesis(nm, rows, groups, batch, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, groups * m)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0  # groups with fewer than n nonzeros store explicit zeros
    X = rng.standard_normal((groups * m, batch)).astype(np.float32)
    A = NMSparseMatrix.from_dense(w, n, m)
    got = spmm(A, X)
    assert got.shape == (rows, batch)
    assert_close(got, ref_float(A, X), A, X)

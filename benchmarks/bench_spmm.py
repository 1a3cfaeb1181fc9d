"""Sparse x dense products vs scipy.sparse and NumPy dense float32 matmul, plus the crossover sweep.

W 4096 x 4096 (out, in), X 4096 x 64 float32, all threads of the session (benchmarks/conftest.py pins
BLAS, Numba and torch to the same count).  Targets from the issue (same-run median ratios):

* CSR, 90% random sparsity: >= 4x scipy.sparse.csr_matrix @ X; CSR at 65%: beats dense (>= 1x).
* BSR 16x16 and 32x32, 90% block sparsity: >= 20x scipy.sparse.bsr_matrix @ X; at 40%: beats dense.
* 2:4: >= 1.3x dense.

The sweep (``memwall.kernels.spmm.crossover_sweep``) times every format against dense over sparsities and
reports the interpolated crossover sparsity in ``extra_info["table"]``:

    python benchmarks/report.py -k spmm
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from memwall.kernels import BSRMatrix, CSRMatrix, NMSparseMatrix, spmm
from memwall.kernels.spmm import crossover_sweep

ROWS = COLS = int(os.environ.get("MEMWALL_SPMM_N", "4096"))
BATCH = 64
FLOPS_DENSE = 2 * ROWS * COLS * BATCH


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20261128)
    W = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    X = rng.standard_normal((COLS, BATCH)).astype(np.float32)
    return rng, W, X


def _csr(rng, W, s):
    return CSRMatrix.from_dense(W, mask=rng.random(W.shape) >= s)


def _bsr(rng, W, s, b):
    return BSRMatrix.from_dense(W, (b, b), mask=rng.random((ROWS // b, COLS // b)) >= s)


def _mine(benchmark, group, A, X, targets):
    benchmark.group = group
    benchmark.extra_info.update(impl="memwall", ops=2 * A.nnz * BATCH, targets=targets)
    spmm(A, X)  # JIT warm-up outside the timing
    out = benchmark(spmm, A, X)
    ref = A.to_scipy() @ X
    assert np.allclose(out, ref, rtol=1e-3, atol=1e-2)


CASES = [("csr", 0.9, {"scipy": 4.0}), ("csr", 0.65, {"numpy": 1.0}),
         ("bsr16", 0.9, {"scipy": 20.0}), ("bsr16", 0.4, {"numpy": 1.0}),
         ("bsr32", 0.9, {"scipy": 20.0}), ("bsr32", 0.4, {"numpy": 1.0})]


def _group(fmt, s):
    return f"spmm {fmt} {ROWS}x{COLS}x{BATCH} sparsity={s}"


@pytest.fixture(scope="module")
def matrices(data):
    rng, W, X = data
    mats = {}
    for fmt, s, _ in CASES:
        mats[(fmt, s)] = _csr(rng, W, s) if fmt == "csr" else _bsr(rng, W, s, int(fmt[3:]))
    mats[("nm2:4", 0.5)] = NMSparseMatrix.from_dense(W, 2, 4)
    return mats


@pytest.mark.parametrize("fmt,s,targets", CASES, ids=[f"{f}-{s}" for f, s, _ in CASES])
def test_spmm_memwall(benchmark, data, matrices, fmt, s, targets):
    _mine(benchmark, _group(fmt, s), matrices[(fmt, s)], data[2], targets)


@pytest.mark.parametrize("fmt,s", [(f, s) for f, s, t in CASES if "scipy" in t])
def test_spmm_scipy(benchmark, data, matrices, fmt, s):
    S = matrices[(fmt, s)].to_scipy()
    X = data[2]
    benchmark.group = _group(fmt, s)
    benchmark.extra_info.update(impl="scipy", ops=2 * S.nnz * BATCH)
    benchmark.pedantic(lambda: S @ X, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("fmt,s", [(f, s) for f, s, _ in CASES] + [("nm2:4", 0.5)])
def test_spmm_dense_baseline(benchmark, data, fmt, s):
    _, W, X = data
    benchmark.group = _group(fmt, s)
    benchmark.extra_info.update(impl="numpy", ops=FLOPS_DENSE)
    benchmark(np.matmul, W, X)


def test_spmm_nm24_memwall(benchmark, data, matrices):
    _mine(benchmark, _group("nm2:4", 0.5), matrices[("nm2:4", 0.5)], data[2], {"numpy": 1.3})


def test_spmm_crossover_sweep(benchmark):
    """One sweep (each point: medians of 5 calls, dense timed beside it); the table carries every point and
    the interpolated crossover sparsity per format."""
    rows = benchmark.pedantic(
        crossover_sweep, kwargs=dict(shape=(ROWS, COLS), batch=BATCH, sparsities=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                                                                   0.95), repeats=5),
        rounds=1, iterations=1)
    benchmark.group = f"spmm crossover sweep {ROWS}x{COLS}x{BATCH}"
    benchmark.extra_info["impl"] = "sweep"
    benchmark.extra_info["table"] = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]

"""Pruning masks on a 4096 x 4096 float32 layer vs plain NumPy.

    python benchmarks/report.py -k bench_prune -- -o "python_files=bench_*.py"

(the `-o python_files=...` is needed while report.py/pytest only collect test_*.py files).

Baselines are the obvious NumPy code: magnitude by ``np.partition`` of ``|w|`` then a comparison (ties not
resolved to an exact count, so it does a little less than memwall), N:M by a stable ``argsort`` inside each
group, blocks by a reshape-sum and a stable ``argsort`` of the block scores.  No issue target exists for the
masks; memwall's own goal is to be at least as fast as NumPy (``targets = {"numpy": 1.0}``).
"""
from __future__ import annotations

import numpy as np
import pytest

from memwall.kernels import prune as P

ROWS = COLS = 4096
SPARSITY = 0.9


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(20261128).standard_normal((ROWS, COLS)).astype(np.float32)


def np_magnitude(w, s):
    a = np.abs(w)
    p = int(s * a.size)
    thr = np.partition(a.ravel(), p)[p]
    return a >= thr


def np_nm(w, n=2, m=4):
    g = np.abs(w).reshape(-1, m)
    order = np.argsort(-g, axis=1, kind="stable")[:, :n]
    mask = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(w.shape)


def np_block(w, s, r=16, c=16):
    rows, cols = w.shape
    scores = np.abs(w).reshape(rows // r, r, cols // c, c).sum(axis=(1, 3), dtype=np.float64).ravel()
    keep = scores.size - int(s * scores.size)
    kept = np.zeros(scores.size, dtype=bool)
    kept[np.argsort(-scores, kind="stable")[:keep]] = True
    kept = kept.reshape(rows // r, cols // c)
    return np.repeat(np.repeat(kept, r, axis=0), c, axis=1)


CASES = {
    "magnitude 90%": (lambda w: P.magnitude_mask(w, SPARSITY), lambda w: np_magnitude(w, SPARSITY)),
    "nm 2:4": (lambda w: P.nm_mask(w, 2, 4), np_nm),
    "block 16x16 l1 90%": (lambda w: P.block_mask(w, SPARSITY, (16, 16), "l1"), lambda w: np_block(w, SPARSITY)),
}


@pytest.mark.parametrize("impl", ["memwall", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_bench_mask(benchmark, weights, case, impl):
    fn = CASES[case][0 if impl == "memwall" else 1]
    benchmark.group = f"prune {case} {ROWS}x{COLS} fp32"
    benchmark.extra_info.update(impl=impl, bytes=weights.nbytes)
    if impl == "memwall":
        benchmark.extra_info.update(targets={"numpy": 1.0})
        ref = CASES[case][1](weights)
        mine = fn(weights)
        if case == "magnitude 90%":  # float32 Gaussians do tie: numpy's `>=` keeps every tie
            assert abs(int(mine.sum()) - int(ref.sum())) <= 100
        else:
            assert np.array_equal(mine, ref)
    fn(weights)
    benchmark.pedantic(fn, args=(weights,), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["memwall", "numpy"])
def test_bench_global_magnitude(benchmark, impl):
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal(s).astype(np.float32) * rng.lognormal() for s in
              [(1024, 1024), (4096, 1024), (1024, 4096), (3072, 768), (768, 3072)]]
    benchmark.group = "prune global magnitude 90%, 5 layers (14.7M)"
    benchmark.extra_info.update(impl=impl)
    if impl == "memwall":
        benchmark.extra_info.update(targets={"numpy": 1.0})
        fn = lambda: P.global_magnitude_masks(layers, SPARSITY)  # noqa: E731
    else:
        def fn():
            a = np.concatenate([np.abs(w).ravel() for w in layers])
            p = int(SPARSITY * a.size)
            thr = np.partition(a, p)[p]
            return [np.abs(w) >= thr for w in layers]
    fn()
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)

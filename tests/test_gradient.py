"""Gradient sparsification: selection vs NumPy references, encoding, error feedback conservation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwall.kernels import topk_sparsify
from memwall.kernels import gradient as G


# ----------------------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------------------
def ref_topk(g, k):
    """Positions (ascending) of the k largest |g|; among equal |g| the lower flat index wins."""
    a = np.abs(np.asarray(g, dtype=np.float64)).ravel()
    order = np.lexsort((np.arange(a.size), -a))  # primary: -|g|, secondary: index
    return np.sort(order[:k])


def ref_decode(indices, values, size):
    out = np.zeros(size, dtype=np.float64)
    np.add.at(out, np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float64))
    return out


def tie_heavy(rng, shape, dtype=np.float32):
    return (rng.integers(-4, 5, size=shape) * 0.25).astype(dtype)


shapes = st.one_of(
    st.tuples(st.integers(1, 9)),
    st.tuples(st.integers(1, 5), st.integers(1, 7)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5)),
    st.tuples(st.integers(4000, 20000)),  # large enough for the sampled fast path and several chunks
)


# ----------------------------------------------------------------------------------------------------------
# exact top-k
# ----------------------------------------------------------------------------------------------------------
@given(shape=shapes, seed=st.integers(0, 2**16), kfrac=st.floats(0.0, 1.0), ties=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_exact_topk_selects_the_k_largest(shape, seed, kfrac, ties, dtype):
    rng = np.random.default_rng(seed)
    g = tie_heavy(rng, shape, dtype) if ties else rng.standard_normal(shape).astype(dtype)
    n = g.size
    k = max(1, min(n, int(round(kfrac * n))))
    msg = topk_sparsify(g, k=k)
    np.testing.assert_array_equal(msg.indices, ref_topk(g, k))
    assert msg.indices.dtype == np.int32 and msg.values.dtype == np.float32
    np.testing.assert_array_equal(msg.values, g.ravel()[msg.indices].astype(np.float32))
    assert msg.k == k == msg.requested_k and msg.size == n and msg.shape == g.shape
    assert msg.threshold == np.sort(np.abs(g.ravel()))[n - k]


@pytest.mark.parametrize("k", [1, 7, 1000, 65_537, 299_999, 300_000])
def test_exact_topk_many_chunks_with_ties(rng, k):
    g = tie_heavy(rng, 300_000)
    np.testing.assert_array_equal(topk_sparsify(g, k=k).indices, ref_topk(g, k))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_radix_path_matches_reference(rng, dtype):
    # the radix-select path runs when the sample-guided guess fails: test it directly, ties across chunks
    for g in (tie_heavy(rng, 200_000, dtype), rng.standard_normal(200_000).astype(dtype),
              np.full(70_000, -2.5, dtype)):
        for k in (1, 333, g.size // 2, g.size):
            idx, thr = G._radix_topk(g, k, "raise", "g")
            np.testing.assert_array_equal(idx, ref_topk(g, k))
            assert thr == np.sort(np.abs(g))[g.size - k]


def test_exact_topk_does_not_depend_on_the_seed(rng):
    g = tie_heavy(rng, 150_000) * rng.standard_normal(150_000).astype(np.float32)
    expect = ref_topk(g, 1500)
    for seed in (0, 1, 12345, np.random.default_rng(7)):
        np.testing.assert_array_equal(topk_sparsify(g, k=1500, seed=seed).indices, expect)


def test_exact_topk_falls_back_when_the_sample_misses(rng, monkeypatch):
    g = rng.standard_normal(100_000).astype(np.float32)
    # a sample of huge values puts the guessed threshold above every entry: fewer than k gathered
    monkeypatch.setattr(G, "_sample_abs", lambda x, s, seed: np.full(s, 1e30, x.dtype))
    np.testing.assert_array_equal(topk_sparsify(g, k=500).indices, ref_topk(g, 500))


def test_exact_topk_spiky_gradient(rng):
    # zeros with a few large entries the sample is unlikely to see
    g = np.zeros(500_000, np.float32)
    pos = rng.choice(g.size, 40, replace=False)
    g[pos] = rng.standard_normal(40).astype(np.float32) * 100
    np.testing.assert_array_equal(topk_sparsify(g, k=40).indices, np.sort(pos))
    np.testing.assert_array_equal(topk_sparsify(g, k=100).indices, ref_topk(g, 100))


def test_negative_zero_and_ratio(rng):
    g = np.array([-0.0, 0.0, -1.0, 1.0, -0.0], np.float32)
    np.testing.assert_array_equal(topk_sparsify(g, k=3).indices, [0, 2, 3])
    x = rng.standard_normal(1000).astype(np.float32)
    assert topk_sparsify(x, ratio=0.29).k == 290  # floor with round-off guard
    assert topk_sparsify(x, ratio=1e-9).k == 1   # at least one entry
    assert topk_sparsify(x, ratio=1.0).k == 1000


def test_topk_same_for_one_and_two_threads(rng):
    import numba

    g = tie_heavy(rng, 400_000)
    before = numba.get_num_threads()
    out = []
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            out.append([topk_sparsify(g, k=5000).indices, topk_sparsify(g, k=5000, method="sampled").indices,
                        G._radix_topk(g, 5000, "raise", "g")[0]])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_noncontiguous_and_float16_inputs(rng):
    g = rng.standard_normal((300, 400)).astype(np.float32)
    view = g[::-1, ::3]
    np.testing.assert_array_equal(topk_sparsify(view, k=100).indices,
                                  topk_sparsify(np.ascontiguousarray(view), k=100).indices)
    h = rng.standard_normal(257).astype(np.float16)
    np.testing.assert_array_equal(topk_sparsify(h, k=10).indices, ref_topk(h.astype(np.float32), 10))


# ----------------------------------------------------------------------------------------------------------
# sampled and threshold selection
# ----------------------------------------------------------------------------------------------------------
@given(n=st.integers(1, 60_000), seed=st.integers(0, 2**16), density=st.sampled_from([0.001, 0.01, 0.1, 0.5]))
def test_sampled_sends_everything_above_its_threshold(n, seed, density):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32)
    k = max(1, int(density * n))
    msg = topk_sparsify(g, k=k, method="sampled", seed=seed)
    np.testing.assert_array_equal(msg.indices, np.flatnonzero(np.abs(g) >= np.float32(msg.threshold)))
    assert msg.requested_k == k and msg.k == msg.indices.size


def test_sampled_k_close_to_target(rng):
    n, k = 2_000_000, 2000
    # layers with very different gradient scales, as in a real model
    g = (rng.standard_normal(n) * np.repeat(rng.lognormal(0, 1, 50), n // 50)).astype(np.float32)
    ks = [topk_sparsify(g, k=k, method="sampled", seed=s).k for s in range(5)]
    assert all(0.7 * k <= x <= 1.3 * k for x in ks), ks
    # the default seed makes it reproducible
    np.testing.assert_array_equal(topk_sparsify(g, k=k, method="sampled").indices,
                                  topk_sparsify(g, k=k, method="sampled").indices)


@given(shape=shapes, seed=st.integers(0, 2**16), thr=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 100.0]))
def test_threshold_method_matches_numpy(shape, seed, thr):
    rng = np.random.default_rng(seed)
    g = tie_heavy(rng, shape)
    msg = topk_sparsify(g, method="threshold", threshold=thr)
    np.testing.assert_array_equal(msg.indices, np.flatnonzero(np.abs(g.ravel()) >= thr))
    assert msg.requested_k is None and msg.threshold == thr


# ----------------------------------------------------------------------------------------------------------
# encoding, decoding, compression ratio
# ----------------------------------------------------------------------------------------------------------
def test_encoding_bytes_and_ratio(rng):
    g = rng.standard_normal((64, 1000)).astype(np.float32)
    msg = topk_sparsify(g, ratio=0.001)
    assert msg.k == 64
    assert msg.nbytes == msg.indices.nbytes + msg.values.nbytes == 64 * 8
    assert msg.dense_nbytes == g.nbytes
    assert msg.compression_ratio == g.nbytes / (64 * 8)
    assert msg.density == 0.001
    dense = msg.to_dense()
    assert dense.shape == g.shape and dense.dtype == np.float32
    np.testing.assert_array_equal(dense.ravel()[msg.indices], g.ravel()[msg.indices])
    assert np.count_nonzero(dense) == 64
    # ResNet-50-sized gradient at 99.9% sparsity: well under 1 MB on the wire
    assert G.encoded_nbytes(25_600_000, 25_600) == 204_800
    assert G.encoded_nbytes(2**31, 10) == 10 * 12  # int64 indices past 2**31 entries


@pytest.mark.slow
def test_resnet50_sized_gradient_encodes_under_1mb(rng):
    g = rng.standard_normal(25_600_000).astype(np.float32)
    msg = topk_sparsify(g, ratio=0.001)
    assert msg.k == 25_600 and msg.nbytes == 204_800 < 1_000_000
    np.testing.assert_array_equal(msg.indices, np.sort(np.argpartition(np.abs(g), g.size - 25_600)[-25_600:]))


@given(size=st.integers(1, 50), nnz=st.integers(0, 80), seed=st.integers(0, 2**16),
       idt=st.sampled_from([np.int32, np.int64, np.uint16]), vdt=st.sampled_from([np.float32, np.float64]))
def test_decode_and_accumulate_match_add_at(size, nnz, seed, idt, vdt):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, size, nnz).astype(idt)  # duplicates on purpose
    vals = (rng.integers(-8, 9, nnz) / 4).astype(vdt)
    dense = G.decode(idx, vals, size)
    assert dense.dtype == vdt and dense.shape == (size,)
    np.testing.assert_array_equal(dense, ref_decode(idx, vals, size))
    base = (rng.integers(-8, 9, size) / 8).astype(np.float32)
    out = base.copy()
    assert G.accumulate_into(out, idx, vals) is out
    np.testing.assert_array_equal(out, base + ref_decode(idx, vals, size))


def test_decode_shapes_and_empty():
    assert G.decode(np.zeros(0, np.int32), np.zeros(0, np.float32), (2, 3)).shape == (2, 3)
    assert G.decode(np.zeros(0, np.int32), np.zeros(0, np.float32), 0).shape == (0,)
    e = topk_sparsify(np.zeros(0, np.float32), ratio=0.5)
    assert e.k == 0 and e.nbytes == 0 and e.to_dense().shape == (0,)


def test_decode_errors():
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 4\], found 5 at index \(1,\)"):
        G.decode(np.array([1, 5]), np.ones(2, np.float32), 5)
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 4\], found -1"):
        G.decode(np.array([-1]), np.ones(1, np.float32), 5)
    with pytest.raises(ValueError, match="indices, values: lengths differ"):
        G.decode(np.array([1, 2]), np.ones(3, np.float32), 5)
    with pytest.raises(TypeError, match="indices: expected an integer array"):
        G.decode(np.array([1.0]), np.ones(1, np.float32), 5)
    with pytest.raises(TypeError, match="values: expected dtype float32 or float64"):
        G.decode(np.array([1]), np.ones(1, np.int32), 5)
    with pytest.raises(ValueError, match="size: expected an integer >= 0"):
        G.decode(np.array([1]), np.ones(1, np.float32), -1)
    d = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="dense: expected a C-contiguous, writeable array"):
        G.accumulate_into(d[:, ::2], np.array([0]), np.ones(1, np.float32))
    with pytest.raises(TypeError, match="dense: expected dtype float32 or float64"):
        G.accumulate_into(np.zeros(4, np.int32), np.array([0]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 15\]"):
        G.accumulate_into(d, np.array([16]), np.ones(1, np.float32))


# ----------------------------------------------------------------------------------------------------------
# error feedback: nothing is lost
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_residual_conservation_exact_in_float64(rng, method):
    shape = (37, 53)
    ef = G.ErrorFeedback(shape, dtype=np.float64)
    total_g = np.zeros(shape)
    total_sent = np.zeros(shape)
    for step in range(60):
        # dyadic values: every float64 sum below is exact, so the conservation check can be ==
        g = (rng.integers(-2**10, 2**10, size=shape) / 2**8).astype(np.float32)
        msg = ef.step(g, ratio=0.02, method=method, seed=step)
        total_g += g
        total_sent += msg.to_dense().astype(np.float64)
        np.testing.assert_array_equal(total_sent + ef.residual, total_g)
    assert ef.steps == 60


def test_residual_float64_keeps_the_float32_rounding_of_sent_values(rng):
    n = 5000
    ef = G.ErrorFeedback(n, dtype=np.float64)
    for _ in range(20):
        g = rng.standard_normal(n)  # float64, not representable in float32
        before = ef.residual.copy()
        msg = ef.step(g, k=50)
        acc = before + g  # what the accumulator held before sending
        # sent (float32, widened) + residual reproduces it exactly: the rounding error stayed behind
        np.testing.assert_array_equal(msg.to_dense().astype(np.float64) + ef.residual, acc)
        np.testing.assert_array_equal(msg.indices, ref_topk(acc, 50))


def test_residual_float32_conserves_per_step_and_over_many_steps(rng):
    n = 4096
    ef = G.ErrorFeedback(n)  # float32 accumulator
    total_g = np.zeros(n)
    total_sent = np.zeros(n)
    steps = 200
    for _ in range(steps):
        g = rng.standard_normal(n).astype(np.float32)
        before = ef.residual.copy()
        msg = ef.step(g, ratio=0.01)
        acc = before + g  # float32 addition, as the accumulator does it
        np.testing.assert_array_equal(msg.to_dense() + ef.residual, acc)  # exact: entries are moved
        assert np.all(ef.residual[msg.indices] == 0)
        total_g += g
        total_sent += msg.to_dense()
    # over many steps only the float32 rounding of `residual + g` is lost: bounded by steps * eps * max|acc|
    bound = steps * np.finfo(np.float32).eps * max(1.0, float(np.abs(ef.residual).max()) + 4)
    assert np.abs(total_sent + ef.residual - total_g).max() <= bound


def test_dgc_momentum_correction(rng):
    shape = (300,)
    m = 0.5  # binary-exact momentum: the float64 reference is exact
    ef = G.ErrorFeedback(shape, dtype=np.float64, momentum=m)
    u = np.zeros(shape)
    v = np.zeros(shape)
    total_u = np.zeros(shape)
    total_sent = np.zeros(shape)
    for _ in range(40):
        g = (rng.integers(-64, 64, size=shape) / 16).astype(np.float32)
        u = m * u + g
        v = v + u
        total_u += u
        msg = ef.step(g, k=6)
        np.testing.assert_array_equal(msg.indices, ref_topk(v, 6))
        # sent as float32; a float64 accumulator keeps the rounding error (DGC zeroes it otherwise)
        v[msg.indices] -= v[msg.indices].astype(np.float32).astype(np.float64)
        u[msg.indices] = 0  # momentum factor masking
        total_sent += msg.to_dense()
        np.testing.assert_array_equal(ef.residual, v)
        np.testing.assert_array_equal(ef.velocity, u)
        np.testing.assert_array_equal(total_sent + ef.residual, total_u)


def test_error_feedback_nan_changes_nothing(rng):
    ef = G.ErrorFeedback(100)
    ef.step(rng.standard_normal(100).astype(np.float32), k=5)
    res = ef.residual.copy()
    g = rng.standard_normal(100).astype(np.float32)
    g[17] = np.nan
    with pytest.raises(ValueError, match="g: expected finite values, found nan at flat index 17"):
        ef.step(g, k=5)
    np.testing.assert_array_equal(ef.residual, res)
    assert ef.steps == 1
    with pytest.raises(ValueError, match="g: expected shape"):
        ef.step(np.zeros(99, np.float32), k=5)
    with pytest.raises(ValueError, match="nan: ErrorFeedback only supports"):
        ef.step(np.zeros(100, np.float32), k=5, nan="skip")
    with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
        G.ErrorFeedback(4, dtype=np.int32)
    with pytest.raises(ValueError, match="momentum: expected a value in"):
        G.ErrorFeedback(4, momentum=1.0)
    ef.reset()
    assert not ef.residual.any() and ef.steps == 0
    big = G.ErrorFeedback(4, dtype=np.float64)
    with pytest.raises(ValueError, match="g: the accumulated value at flat index 2 .* does not fit in float32"):
        big.step(np.array([1.0, 0.0, 1e300, 0.0]), k=1)
    assert not big.residual.any()


# ----------------------------------------------------------------------------------------------------------
# non-finite gradients and bad input
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,kw", [("exact", {"k": 3}), ("sampled", {"k": 3}), ("threshold", {"threshold": 0.5})])
@pytest.mark.parametrize("n", [50, 200_000])
def test_nan_raise_names_first_position_and_skip_excludes(rng, method, kw, n):
    g = rng.standard_normal(n).astype(np.float32)
    g[n - 7] = np.inf
    g[n - 9] = np.nan
    with pytest.raises(ValueError, match=f"g: expected finite values, found nan at flat index {n - 9}"):
        topk_sparsify(g, method=method, **kw)
    msg = topk_sparsify(g, method=method, nan="skip", **kw)
    assert np.isfinite(msg.values).all()
    assert n - 7 not in msg.indices and n - 9 not in msg.indices
    if method == "exact":
        clean = g.copy()
        clean[[n - 7, n - 9]] = 0
        np.testing.assert_array_equal(msg.indices, ref_topk(clean, 3))


def test_all_nonfinite_skip_sends_nothing():
    g = np.full(10, np.nan, np.float32)
    assert topk_sparsify(g, k=3, nan="skip").k == 0


def test_bad_arguments(rng):
    g = rng.standard_normal(10).astype(np.float32)
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        topk_sparsify(g, k=0)
    with pytest.raises(ValueError, match="k: expected an integer <= 10"):
        topk_sparsify(g, k=11)
    with pytest.raises(TypeError, match="k: expected an integer"):
        topk_sparsify(g, k=2.0)
    with pytest.raises(ValueError, match="k: expected 1 <= k <= size"):
        topk_sparsify(np.zeros(0, np.float32), k=1)
    with pytest.raises(ValueError, match=r"ratio: expected a value in \(0.0, 1.0\]"):
        topk_sparsify(g, ratio=0.0)
    with pytest.raises(ValueError, match=r"ratio: expected a value in \(0.0, 1.0\]"):
        topk_sparsify(g, ratio=1.5)
    with pytest.raises(ValueError, match="give exactly one of k"):
        topk_sparsify(g)
    with pytest.raises(ValueError, match="give exactly one of k"):
        topk_sparsify(g, k=1, ratio=0.5)
    with pytest.raises(ValueError, match="method: expected one of"):
        topk_sparsify(g, k=1, method="random")
    with pytest.raises(ValueError, match="threshold: method='threshold' needs threshold="):
        topk_sparsify(g, method="threshold")
    with pytest.raises(ValueError, match="threshold: only used by method='threshold'"):
        topk_sparsify(g, k=1, threshold=0.3)
    with pytest.raises(ValueError, match="threshold: expected a value in"):
        topk_sparsify(g, method="threshold", threshold=-1.0)
    with pytest.raises(ValueError, match="nan: expected one of"):
        topk_sparsify(g, k=1, nan="ignore")
    with pytest.raises(TypeError, match="g: expected dtype float32 or float64, got int64"):
        topk_sparsify(np.arange(10), k=1)
    with pytest.raises(TypeError, match="g: expected a numpy.ndarray"):
        topk_sparsify([1.0, 2.0], k=1)
    with pytest.raises(ValueError, match="sample_ratio: expected a value in"):
        topk_sparsify(g, k=1, method="sampled", sample_ratio=0.0)
    assert math.isinf(G.SparseGradient(np.zeros(0, np.int32), np.zeros(0, np.float32), 5, (5,), 0, 1, 0.0,
                                       "exact").compression_ratio)

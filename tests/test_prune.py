"""Pruning masks, schedules and the prune/fine-tune loop against plain NumPy references."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwall.kernels import block_mask, channel_mask, magnitude_mask, nm_mask
from memwall.kernels import prune as P


# ----------------------------------------------------------------------------------------------------------
# references: obviously correct, slow
# ----------------------------------------------------------------------------------------------------------
def ref_prune_count(s, n):
    # exact rational arithmetic on the decimal the test chose; the kernel's epsilon only absorbs round-off
    return min(n, int(math.floor(round(s * n, 6))))


def ref_keep_largest(scores, keep):
    """Keep the ``keep`` largest scores; ties keep the lower index (stable sort)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.lexsort((np.arange(scores.size), -scores))  # primary key -score, then the index
    out = np.zeros(scores.size, dtype=bool)
    out[order[:keep]] = True
    return out


def ref_magnitude(w, s):
    a = np.abs(w.astype(np.float64)).ravel()
    return ref_keep_largest(a, a.size - ref_prune_count(s, a.size)).reshape(w.shape)


def ref_nm(w, n, m):
    out = np.zeros(w.shape, dtype=bool)
    lead = int(np.prod(w.shape[:-1]))
    flat = w.reshape(lead, w.shape[-1])
    o = out.reshape(lead, w.shape[-1])
    for r in range(flat.shape[0]):
        for g in range(0, flat.shape[1], m):
            o[r, g:g + m] = ref_keep_largest(np.abs(flat[r, g:g + m]), n)
    return out


def ref_block_scores(w, r, c, score):
    rows, cols = w.shape
    b = np.abs(w.astype(np.float64)).reshape(rows // r, r, cols // c, c)
    if score == "l1":
        return b.sum(axis=(1, 3))
    if score == "l2":
        return (b * b).sum(axis=(1, 3))
    return b.max(axis=(1, 3))


def tie_heavy(rng, shape, dtype=np.float32):
    """Weights with many equal magnitudes (and both signs) so the tie rule matters."""
    return (rng.integers(-3, 4, size=shape) * 0.5).astype(dtype)


shapes = st.one_of(
    st.tuples(st.integers(0, 7)),
    st.tuples(st.integers(0, 9), st.integers(0, 13)),
    st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4)),
)
sparsities = st.sampled_from([0.0, 0.1, 0.25, 0.29, 0.5, 0.7, 0.9, 0.999, 1.0])


# ----------------------------------------------------------------------------------------------------------
# magnitude masks
# ----------------------------------------------------------------------------------------------------------
@given(shape=shapes, s=sparsities, seed=st.integers(0, 2**16), ties=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_magnitude_mask_matches_reference(shape, s, seed, ties, dtype):
    rng = np.random.default_rng(seed)
    w = tie_heavy(rng, shape, dtype) if ties else rng.standard_normal(shape).astype(dtype)
    mask = magnitude_mask(w, s)
    assert mask.dtype == np.bool_ and mask.shape == w.shape
    np.testing.assert_array_equal(mask, ref_magnitude(w, s))
    assert w.size - mask.sum() == ref_prune_count(s, w.size)


@pytest.mark.parametrize("s,dtype", [(0.0, np.float32), (0.3, np.float32), (0.5, np.float64),
                                     (0.875, np.float32), (0.999, np.float64), (1.0, np.float32)])
def test_magnitude_mask_many_chunks_with_ties(rng, s, dtype):
    # > 2**15 entries per chunk and many chunks: ties straddle chunk borders, so the tie prefix counts matter
    w = tie_heavy(rng, (700, 1001), dtype)
    mask = magnitude_mask(w, s)
    a = np.abs(w).ravel()
    keep = a.size - ref_prune_count(s, a.size)
    ref = np.zeros(a.size, bool)
    ref[np.argsort(-a, kind="stable")[:keep]] = True
    np.testing.assert_array_equal(mask.ravel(), ref)


@pytest.mark.parametrize("fake", ["high", "low", "zero"])
def test_magnitude_mask_when_the_sample_bracket_misses(rng, monkeypatch, fake):
    from memwall.kernels import gradient as G

    w = tie_heavy(rng, (300, 301)) * rng.standard_normal((300, 301)).astype(np.float32)
    expect = ref_magnitude(w, 0.37)
    value = {"high": 1e30, "low": 1e-30, "zero": 0.0}[fake]
    monkeypatch.setattr(G, "_sample_abs", lambda x, s, seed: np.full(s, value, x.dtype))
    np.testing.assert_array_equal(magnitude_mask(w, 0.37), expect)


def test_radix_mask_path_directly(rng):
    from memwall.kernels import gradient as G

    for w in (tie_heavy(rng, 200_001), rng.standard_normal(200_001), np.full(70_000, 0.5, np.float32)):
        for keep in (1, 777, w.size // 2, w.size - 1):
            np.testing.assert_array_equal(G._radix_keep_mask(w, keep), ref_keep_largest(np.abs(w), keep))


def test_magnitude_mask_counts_exact_under_round_off(rng):
    w = rng.standard_normal(100)
    # 0.29 * 100 == 28.999999999999996 in binary: still 29 pruned
    assert (~magnitude_mask(w, 0.29)).sum() == 29
    assert P.prune_count(0.29, 100) == 29
    assert P.prune_count(0.7, 10) == 7
    assert P.prune_count(1 / 3, 10) == 3


def test_magnitude_mask_noncontiguous_and_other_dtypes(rng):
    w = rng.standard_normal((40, 60)).astype(np.float32)
    view = w[::-1, ::3]
    np.testing.assert_array_equal(magnitude_mask(view, 0.6), magnitude_mask(np.ascontiguousarray(view), 0.6))
    wi = rng.integers(-50, 50, size=(7, 9))
    np.testing.assert_array_equal(magnitude_mask(wi, 0.4), ref_magnitude(wi, 0.4))
    wh = rng.standard_normal((5, 8)).astype(np.float16)
    np.testing.assert_array_equal(magnitude_mask(wh, 0.5), ref_magnitude(wh.astype(np.float32), 0.5))


def test_magnitude_mask_same_for_one_and_two_threads(rng):
    import numba

    w = tie_heavy(rng, (300, 700))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = magnitude_mask(w, 0.63)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = magnitude_mask(w, 0.63)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


@given(seed=st.integers(0, 2**16), s=sparsities, n_layers=st.integers(1, 4))
def test_global_magnitude_masks_match_concatenated_reference(seed, s, n_layers):
    rng = np.random.default_rng(seed)
    ws = [tie_heavy(rng, (int(rng.integers(0, 6)), int(rng.integers(1, 7)))) * rng.integers(1, 4)
          for _ in range(n_layers)]
    masks = P.global_magnitude_masks(ws, s)
    flat = np.concatenate([np.abs(w).ravel() for w in ws])
    ref = ref_keep_largest(flat, flat.size - ref_prune_count(s, flat.size))
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in masks]), ref)
    assert [m.shape for m in masks] == [w.shape for w in ws]


def test_global_masks_prune_the_small_layer_more(rng):
    big = rng.standard_normal((20, 20)) * 10
    small = rng.standard_normal((20, 20)) * 0.1
    m_big, m_small = P.global_magnitude_masks([big, small], 0.5)
    assert m_small.sum() < m_big.sum()
    assert (~m_big).sum() + (~m_small).sum() == 400


# ----------------------------------------------------------------------------------------------------------
# N:M masks
# ----------------------------------------------------------------------------------------------------------
@given(rows=st.integers(0, 9), groups=st.integers(0, 6), nm=st.sampled_from([(2, 4), (1, 4), (1, 2), (4, 8),
                                                                          (3, 4), (4, 4), (1, 1), (2, 16)]),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_nm_mask_matches_reference(rows, groups, nm, seed, ties):
    n, m = nm
    rng = np.random.default_rng(seed)
    shape = (rows, groups * m)
    w = tie_heavy(rng, shape) if ties else rng.standard_normal(shape).astype(np.float32)
    mask = nm_mask(w, n, m)
    np.testing.assert_array_equal(mask, ref_nm(w, n, m))
    if w.size:
        assert mask.reshape(rows, groups, m).sum(axis=2).min() == n
        assert mask.reshape(rows, groups, m).sum(axis=2).max() == n


def test_nm_mask_ties_keep_lower_index_and_default_is_2_4():
    w = np.array([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(nm_mask(w), [[True, True, False, False, True, True, False, False]])


def test_nm_mask_noncontiguous_and_nd(rng):
    w = rng.standard_normal((6, 16)).astype(np.float32)
    np.testing.assert_array_equal(nm_mask(w[::-2]), ref_nm(np.ascontiguousarray(w[::-2]), 2, 4))
    w3 = rng.standard_normal((2, 3, 8))
    np.testing.assert_array_equal(nm_mask(w3, 1, 4), ref_nm(w3, 1, 4))


def test_nm_mask_errors():
    w = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_mask(w)
    with pytest.raises(ValueError, match="n: expected n <= m"):
        nm_mask(np.zeros((4, 8)), n=5, m=4)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        nm_mask(np.zeros((4, 8)), n=0, m=4)
    with pytest.raises(TypeError, match="m: expected an integer"):
        nm_mask(np.zeros((4, 8)), n=2, m=4.0)


# ----------------------------------------------------------------------------------------------------------
# block masks
# ----------------------------------------------------------------------------------------------------------
@given(br=st.integers(0, 5), bc=st.integers(0, 5), block=st.sampled_from([(1, 1), (2, 2), (1, 4), (4, 1), (3, 2)]),
       score=st.sampled_from(["l1", "l2", "max"]), s=sparsities, seed=st.integers(0, 2**16), ties=st.booleans())
def test_block_mask_matches_reference(br, bc, block, score, s, seed, ties):
    r, c = block
    rng = np.random.default_rng(seed)
    shape = (br * r, bc * c)
    w = tie_heavy(rng, shape) if ties else rng.standard_normal(shape)
    mask = block_mask(w, s, blocksize=block, score=score)
    scores = ref_block_scores(w, r, c, score)
    kept = ref_keep_largest(scores, scores.size - ref_prune_count(s, scores.size)).reshape(scores.shape)
    np.testing.assert_array_equal(mask, np.kron(kept, np.ones((r, c), dtype=bool)).astype(bool).reshape(shape))
    np.testing.assert_allclose(P.block_scores(w, block, score), scores, rtol=1e-12)


def test_block_mask_errors():
    w = np.ones((8, 12), np.float32)
    with pytest.raises(ValueError, match=r"blocksize: \(5, 4\) must divide"):
        block_mask(w, 0.5, (5, 4))
    with pytest.raises(ValueError, match="score: expected one of"):
        block_mask(w, 0.5, (4, 4), score="l3")
    with pytest.raises(TypeError, match="blocksize"):
        block_mask(w, 0.5, 4)
    with pytest.raises(ValueError, match=r"blocksize\[1\]: expected an integer >= 1"):
        block_mask(w, 0.5, (4, 0))
    with pytest.raises(ValueError, match="w: expected a 2-D array"):
        block_mask(np.ones(8), 0.5, (2, 2))


# ----------------------------------------------------------------------------------------------------------
# channel masks
# ----------------------------------------------------------------------------------------------------------
@given(shape=st.sampled_from([(0, 3), (1, 1), (5, 7), (6, 3, 2, 2), (4,)]), axis=st.integers(-1, 1),
       s=sparsities, score=st.sampled_from(["l1", "l2", "max"]), seed=st.integers(0, 2**16))
def test_channel_mask_matches_reference(shape, axis, s, score, seed):
    rng = np.random.default_rng(seed)
    w = tie_heavy(rng, shape)
    if axis >= w.ndim:
        axis = 0
    ax = axis % w.ndim
    mask, kept = channel_mask(w, s, axis=axis, score=score)
    rest = int(np.prod([d for i, d in enumerate(w.shape) if i != ax]))
    a = np.abs(np.moveaxis(w, ax, 0).reshape(w.shape[ax], rest).astype(np.float64))
    sc = {"l1": a.sum(1), "l2": (a * a).sum(1), "max": a.max(1) if a.shape[1] else np.zeros(a.shape[0])}[score]
    ref_kept = ref_keep_largest(sc, sc.size - ref_prune_count(s, sc.size))
    np.testing.assert_array_equal(kept, np.flatnonzero(ref_kept))
    assert kept.dtype == np.int64
    expect = np.zeros(w.shape, bool)
    np.moveaxis(expect, ax, 0)[ref_kept] = True
    np.testing.assert_array_equal(mask, expect)


def test_channel_pruning_gives_a_smaller_equivalent_layer(rng):
    w1 = rng.standard_normal((16, 10))  # layer 1: 10 -> 16
    b1 = rng.standard_normal(16)
    w2 = rng.standard_normal((5, 16))   # layer 2: 16 -> 5
    x = rng.standard_normal((10, 3))
    mask, kept = channel_mask(w1, 0.25, axis=0)
    assert kept.size == 12
    y_masked = w2 @ np.maximum((w1 * mask) @ x + (b1 * mask[:, 0])[:, None], 0)
    small1, small2 = P.take_channels(w1, kept, 0), P.take_channels(w2, kept, 1)
    assert small1.shape == (12, 10) and small2.shape == (5, 12)
    y_small = small2 @ np.maximum(small1 @ x + b1[kept][:, None], 0)
    np.testing.assert_allclose(y_small, y_masked, rtol=1e-12, atol=1e-12)


def test_take_channels_errors(rng):
    w = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"kept_indices: expected values in \[0, 3\]"):
        P.take_channels(w, np.array([0, 4]), 0)
    with pytest.raises(TypeError, match="kept_indices: expected an integer array"):
        P.take_channels(w, np.array([0.0, 1.0]), 0)
    with pytest.raises(ValueError, match="axis: expected an integer <= 1"):
        channel_mask(w, 0.5, axis=2)


# ----------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------
def test_mask_stats_against_direct_sums(rng):
    w = rng.standard_normal((30, 20))
    mask = magnitude_mask(w, 0.7)
    st_ = P.mask_stats(w, mask)
    assert (st_.size, st_.kept, st_.pruned) == (600, 180, 420)
    assert st_.sparsity == 0.7
    np.testing.assert_allclose(st_.energy_removed, (w[~mask] ** 2).sum() / (w ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(st_.energy_kept + st_.energy_removed, 1.0)
    # magnitude pruning removes the least energy of any mask with the same count
    rand = np.zeros(600, bool)
    rand[rng.permutation(600)[:180]] = True
    assert P.mask_stats(w, rand.reshape(w.shape)).energy_removed > st_.energy_removed
    assert set(st_.to_dict()) >= {"sparsity", "energy_removed", "kept", "pruned", "size"}


def test_mask_stats_edge_cases():
    z = np.zeros((3, 3))
    assert P.mask_stats(z, np.zeros((3, 3), bool)).energy_removed == 0.0
    e = P.mask_stats(np.zeros((0, 4)), np.zeros((0, 4), bool))
    assert (e.size, e.sparsity, e.energy_removed) == (0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 3\)"):
        P.mask_stats(z, np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="mask: expected dtype bool"):
        P.mask_stats(z, np.ones((3, 3)))


# ----------------------------------------------------------------------------------------------------------
# schedules and the iterative loop
# ----------------------------------------------------------------------------------------------------------
def test_cubic_schedule_endpoints_formula_and_monotonicity():
    sch = P.GradualSchedule(initial_sparsity=0.1, final_sparsity=0.9, begin_step=10, end_step=110, frequency=10)
    assert sch(0) == 0.1 and sch(10) == 0.1
    assert sch(110) == 0.9 and sch(10_000) == 0.9
    # Zhu & Gupta: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))**3 on the grid t0 + j dt
    assert sch(60) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - 50 / 100) ** 3)
    assert sch(65) == sch(60)  # between pruning steps the target holds
    values = [sch(t) for t in range(0, 130)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert sch.pruning_steps() == list(range(20, 111, 10))
    assert P.cubic_sparsity(50, 0.0, 0.8, 0, 100) == pytest.approx(0.8 * (1 - 0.5 ** 3))


def test_cubic_schedule_errors():
    with pytest.raises(ValueError, match="initial_sparsity: expected <= final_sparsity"):
        P.GradualSchedule(0.9, 0.5)
    with pytest.raises(ValueError, match="end_step: expected an integer >= 11"):
        P.cubic_sparsity(5, 0.0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="final_sparsity: expected a value in"):
        P.cubic_sparsity(5, 0.0, 1.5, 0, 10)


def test_iterative_prune_keeps_pruned_weights_pruned(rng):
    ws = [rng.standard_normal((12, 10)), rng.standard_normal((8, 12)).astype(np.float32)]
    calls = []

    def finetune(weights, masks, step):
        calls.append(step)
        for w in weights:  # a fine-tune that touches every weight, pruned ones included
            w += 0.01 * rng.standard_normal(w.shape).astype(w.dtype)

    res = P.iterative_prune(ws, final_sparsity=0.75, steps=4, finetune_fn=finetune)
    assert calls == [1, 2, 3, 4]
    targets = [h["target"] for h in res.history]
    assert targets[-1] == 0.75 and all(b >= a for a, b in zip(targets, targets[1:]))
    for w, m, w0 in zip(res.weights, res.masks, ws):
        assert w.shape == m.shape == w0.shape
        assert np.all(w[~m] == 0)
        assert (~m).sum() == ref_prune_count(0.75, w.size)
    assert res.history[-1]["sparsity"] == pytest.approx(0.75)
    assert 0 < res.history[-1]["energy_removed"] < 1
    # inputs untouched
    assert np.count_nonzero(ws[0]) == ws[0].size


def test_iterative_prune_masks_are_nested_and_return_value_used(rng):
    w = rng.standard_normal((16, 16))
    seen = []

    def finetune(weights, masks, step):
        seen.append(masks[0].copy())
        return [weights[0] * 1.5 + 1.0]  # a new list: revives pruned entries unless re-masked

    res = P.iterative_prune(w, 0.5, 3, finetune, mask_fn=lambda x, s: block_mask(x, s, (4, 4)))
    for a, b in zip(seen, seen[1:]):
        assert not np.any(b & ~a)  # never revived
    assert np.all(res.weights[0][~res.masks[0]] == 0)
    assert (~res.masks[0]).sum() == 128
    res_g = P.iterative_prune([w, 3 * w], 0.5, 2, scope="global")
    assert sum((~m).sum() for m in res_g.masks) == 256


def test_iterative_prune_errors(rng):
    w = rng.standard_normal((4, 4))
    with pytest.raises(ValueError, match="mask_fn: expected a bool mask"):
        P.iterative_prune(w, 0.5, 2, mask_fn=lambda x, s: np.ones(3, bool))
    with pytest.raises(TypeError, match="finetune_fn"):
        P.iterative_prune(w, 0.5, 2, finetune_fn=3)
    with pytest.raises(ValueError, match="steps: expected an integer >= 1"):
        P.iterative_prune(w, 0.5, 0)
    with pytest.raises(ValueError, match="finetune_fn: returned an array of shape"):
        P.iterative_prune(w, 0.5, 1, finetune_fn=lambda ws, ms, s: [np.zeros((2, 2))])


# ----------------------------------------------------------------------------------------------------------
# bad input shared by every mask
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [-0.1, 1.01, float("nan"), float("inf")])
def test_sparsity_outside_unit_interval(s):
    w = np.ones((4, 4), np.float32)
    for fn in (lambda: magnitude_mask(w, s), lambda: block_mask(w, s, (2, 2)), lambda: channel_mask(w, s),
               lambda: P.global_magnitude_masks([w], s)):
        with pytest.raises(ValueError, match="sparsity: expected a value in"):
            fn()


def test_bad_weights():
    with pytest.raises(TypeError, match="sparsity: expected a real number"):
        magnitude_mask(np.ones(4), "0.5")
    with pytest.raises(TypeError, match="w: expected a real"):
        magnitude_mask(np.ones(4, dtype=np.complex64), 0.5)
    with pytest.raises(ValueError, match="w: expected finite values, found nan at flat index 2"):
        magnitude_mask(np.array([1.0, 2.0, np.nan, 4.0]), 0.5)
    for s in (0.0, 0.3, 0.9, 0.9999, 1.0):  # every selection path (trivial, bracketed, radix) detects them
        for n, pos in ((50, 7), (300_000, 123_457), (300_000, 299_999)):
            w = np.ones(n, np.float32)
            w[pos] = np.inf if pos % 2 else np.nan
            w[-1] = np.nan
            with pytest.raises(ValueError, match=f"w: expected finite values, found (nan|inf) at flat index {pos}$"):
                magnitude_mask(w, s)
    with pytest.raises(ValueError, match="w: expected finite values"):
        nm_mask(np.array([[1.0, np.inf, 0.0, 0.0]]))
    with pytest.raises(TypeError, match="weights: expected a list or tuple"):
        P.global_magnitude_masks(np.ones((2, 2)), 0.5)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected finite values"):
        P.global_magnitude_masks([np.ones(2), np.array([np.nan])], 0.5)

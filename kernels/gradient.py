"""Gradient sparsification for data-parallel training: top-k / threshold selection, error feedback, encoding.

Selection methods (:func:`topk_sparsify`)
    ``"exact"``      the ``k`` entries of largest ``|g|``; among equal ``|g|`` the lower flat index wins.
                     Selection works on the IEEE bit patterns of ``|g|`` (for non-negative floats the
                     unsigned bit pattern orders like the value; the sign bit is simply cleared, so no
                     ``|g|`` copy is made).  Fast path: a stratified sample gives a threshold just below the
                     k-th largest ``|g|`` with high probability; one parallel pass gathers the entries above
                     it and NumPy partitions only those (about 1.3 k candidates).  If the guess was too high
                     (fewer than k gathered), a radix select runs instead -- a 4096-bucket histogram of the
                     top 12 key bits per chunk, then a gather of the buckets at and above the k-th -- with
                     the same answer.
    ``"sampled"``    Deep Gradient Compression style: the threshold is estimated as the matching quantile of
                     ``|g|`` on a seeded random sample (stratified: one random run of up to 256 consecutive
                     entries from each of equal strata, 1% of the entries by default), then every entry with
                     ``|g| >= threshold`` is sent in one pass; the achieved ``k`` (``SparseGradient.k``) is
                     close to, not equal to, the requested one.
    ``"threshold"``  every entry with ``|g| >= threshold`` (``threshold=`` given).

Encoding
    :class:`SparseGradient` holds ``indices`` (int32 while the gradient has < 2**31 entries, else int64; sorted
    ascending) and ``values`` (float32, the signed selected entries); ``nbytes`` is what goes on the wire and
    ``compression_ratio`` = dense float32 bytes / encoded bytes.  :func:`decode` and :func:`accumulate_into`
    scatter-add them back (duplicates add up, as when summing the messages of several workers).

Error feedback (:class:`ErrorFeedback`)
    What is not sent is kept in a residual and added to the next step's gradient, so nothing is lost:
    after every step ``sum of decoded messages + residual == sum of gradients`` -- exactly per step (the
    selected entries are *moved* out of the accumulator; with a float64 accumulator the float32 rounding of a
    sent value stays in the residual), and across steps up to the accumulator's own rounding of ``residual +
    g`` (none at all for float64 with values that add exactly).  Optional DGC momentum correction
    accumulates velocity instead of raw gradients and masks the momentum of sent entries.

Non-finite gradients (NaN, +-Inf)
    ``nan="raise"`` (default): ``ValueError`` naming the first non-finite position; no state is changed.
    ``nan="skip"``: non-finite entries are never selected (they count as not sent; an error-feedback residual
    would keep them, so :class:`ErrorFeedback` only allows ``"raise"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ._validate import as_array, check_choice, check_fraction, check_int, check_range

__all__ = [
    "topk_sparsify",
    "topk_encode",
    "SparseGradient",
    "decode",
    "accumulate_into",
    "ErrorFeedback",
    "encoded_nbytes",
]

#: Default fraction of entries sampled by ``method="sampled"`` (DGC samples 0.1% - 1%).
SAMPLE_RATIO = 0.01
#: Minimum sample size of ``method="sampled"`` (the whole gradient when it is smaller).
SAMPLE_MIN = 4096
#: ``"sampled"`` enlarges its sample so that about this many sampled entries exceed the threshold ...
SAMPLE_HITS = 128
#: ... but never beyond this many entries for that reason.
SAMPLE_MAX = 1 << 20
#: Added before flooring ``ratio * size`` (binary round-off such as 0.29 * 100 = 28.999999999999996).
RATIO_ROUND_EPS = 1e-9

_BUCKET_BITS = 12
_NBUCKETS = 1 << _BUCKET_BITS
_MAX_CHUNKS = 64
_MIN_CHUNK = 1 << 15
_BRACKET_BLOCK = 32  # keys per block of the mask bracket pass
_SCAN_BLOCK = 64  # keys tested at once by the threshold gather (a hit in ~6% of blocks at 0.1%)
_METHODS = ("exact", "sampled", "threshold")
_NAN_POLICIES = ("raise", "skip")


# ----------------------------------------------------------------------------------------------------------
# key layout: |x| as an unsigned bit pattern
# ----------------------------------------------------------------------------------------------------------
def _key_params(dtype):
    """(key view dtype, sign-clearing mask, bucket shift, first non-finite key) for float32 / float64."""
    if dtype == np.float32:
        return np.uint32, np.uint32(0x7FFFFFFF), np.uint32(31 - _BUCKET_BITS), np.uint32(0x7F800000)
    return (np.uint64, np.uint64(0x7FFFFFFFFFFFFFFF), np.uint64(63 - _BUCKET_BITS),
            np.uint64(0x7FF0000000000000))


def _chunk_starts(n: int) -> np.ndarray:
    """Fixed chunking (independent of the thread count, so results never depend on it)."""
    nch = max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK))
    return (np.arange(nch + 1, dtype=np.int64) * n) // nch


@njit(parallel=True, cache=True)
def _hist_kernel(keys, absmask, shift, starts, hist):  # pragma: no cover - compiled
    nch = starts.shape[0] - 1
    nb = hist.shape[1]
    for c in prange(nch):
        # four interleaved sub-histograms break the store->load chain when neighbours share a bucket
        h = np.zeros((4, nb), dtype=np.int64)
        lo = starts[c]
        hi = starts[c + 1]
        i = lo
        while i + 4 <= hi:
            h[0, (keys[i] & absmask) >> shift] += 1
            h[1, (keys[i + 1] & absmask) >> shift] += 1
            h[2, (keys[i + 2] & absmask) >> shift] += 1
            h[3, (keys[i + 3] & absmask) >> shift] += 1
            i += 4
        while i < hi:
            h[0, (keys[i] & absmask) >> shift] += 1
            i += 1
        for b in range(nb):
            hist[c, b] = h[0, b] + h[1, b] + h[2, b] + h[3, b]


@njit(parallel=True, cache=True)
def _gather_range_kernel(keys, absmask, shift, lo_b, hi_b, starts, offs, out_idx, out_key):  # pragma: no cover
    """Entries whose bucket lies in [lo_b, hi_b): positions and keys, in index order per chunk."""
    nch = starts.shape[0] - 1
    for c in prange(nch):
        p = offs[c]
        for i in range(starts[c], starts[c + 1]):
            kk = keys[i] & absmask
            b = kk >> shift
            if b >= lo_b and b < hi_b:
                out_idx[p] = i
                out_key[p] = kk
                p += 1


@njit(cache=True)
def _finish_topk_kernel(cand_idx, cand_key, t, take_ties, out_idx):  # pragma: no cover - compiled
    """Keep candidates with key > t and the first ``take_ties`` with key == t (candidates in index order)."""
    p = 0
    ties = 0
    for j in range(cand_idx.shape[0]):
        kk = cand_key[j]
        if kk > t:
            out_idx[p] = cand_idx[j]
            p += 1
        elif kk == t and ties < take_ties:
            out_idx[p] = cand_idx[j]
            p += 1
            ties += 1
    return p


@njit(cache=True)
def _count_ge(v, absmask, t):  # pragma: no cover - compiled
    # a plain reduction over a slice: LLVM vectorizes it (inside a prange body the same loop does not)
    h = 0
    for i in range(v.shape[0]):
        h += np.int64((v[i] & absmask) >= t)
    return h


@njit(cache=True)
def _gather_ge_chunk(keys, absmask, t, nonfinite, lo, hi, out, p, end):  # pragma: no cover - compiled
    cnt = 0
    nb = 0
    for b in range(lo, hi, _SCAN_BLOCK):
        e = min(b + _SCAN_BLOCK, hi)
        if _count_ge(keys[b:e], absmask, t) == 0:  # most blocks hold no hit at top-k densities
            continue
        for i in range(b, e):
            kk = keys[i] & absmask
            if kk >= t:
                if kk < nonfinite:
                    if p < end:
                        out[p] = i
                        p += 1
                    cnt += 1
                else:
                    nb += 1
    return cnt, nb


@njit(parallel=True, cache=True)
def _gather_ge_direct_kernel(keys, absmask, t, nonfinite, starts, chunks, base, cap, out, counts,
                             bad):  # pragma: no cover - compiled
    """One pass over the listed chunks: positions with t <= key < nonfinite; chunk c writes at most ``cap[c]``
    of them from ``out[base[c]]`` on but counts them all (``counts[c]``); non-finite entries in ``bad[c]``.
    Blocks of ``_SCAN_BLOCK`` keys are first tested with a vectorized count and skipped when empty."""
    for j in prange(chunks.shape[0]):
        c = chunks[j]
        cnt, nb = _gather_ge_chunk(keys, absmask, t, nonfinite, starts[c], starts[c + 1], out, base[c],
                                   base[c] + cap[c])
        counts[c] = cnt
        bad[c] = nb


@njit(cache=True)
def _keys_at_kernel(keys, absmask, idx, out):  # pragma: no cover - compiled
    for j in range(idx.shape[0]):
        out[j] = keys[idx[j]] & absmask


@njit(cache=True)
def _gt_slice(v, absmask, t, o):  # pragma: no cover - compiled
    for i in range(v.shape[0]):
        o[i] = (v[i] & absmask) > t


@njit(parallel=True, cache=True)
def _gt_mask_kernel(keys, absmask, t, starts, out):  # pragma: no cover - compiled
    """out[i] = |x[i]| > t (branch-free; a separate function per chunk so that it vectorizes); ties at t are
    scattered in afterwards."""
    for c in prange(starts.shape[0] - 1):
        _gt_slice(keys[starts[c]:starts[c + 1]], absmask, t, out[starts[c]:starts[c + 1]])


@njit(cache=True)
def _count_gt(v, absmask, t):  # pragma: no cover - compiled
    h = 0
    for i in range(v.shape[0]):
        h += np.int64((v[i] & absmask) > t)
    return h


@njit(cache=True)
def _bracket_chunk(keys, absmask, t_lo, t_hi, nonfinite, lo, hi, out, p, end):  # pragma: no cover - compiled
    cnt = 0
    ab = 0
    nb = 0
    for b in range(lo, hi, _BRACKET_BLOCK):
        e = min(b + _BRACKET_BLOCK, hi)
        v = keys[b:e]
        c_lo = _count_ge(v, absmask, t_lo)
        c_hi = _count_gt(v, absmask, t_hi)
        c_nf = _count_ge(v, absmask, nonfinite)
        ab += c_hi - c_nf
        nb += c_nf
        if c_lo - c_hi > 0:
            for i in range(b, e):
                kk = keys[i] & absmask
                if kk >= t_lo and kk <= t_hi:
                    if p < end:
                        out[p] = i
                        p += 1
                    cnt += 1
    return cnt, ab, nb


@njit(parallel=True, cache=True)
def _bracket_kernel(keys, absmask, t_lo, t_hi, nonfinite, starts, chunks, base, cap, out, counts,
                    above):  # pragma: no cover - compiled
    """One pass over the listed chunks: count finite keys > t_hi per chunk (``above[c, 0]``; non-finite ones
    in ``above[c, 1]``), and gather positions with t_lo <= key <= t_hi into per-chunk slots (at most
    ``cap[c]`` written, all counted).  Blocks without bracket hits are settled by vectorized counts."""
    for j in prange(chunks.shape[0]):
        c = chunks[j]
        cnt, ab, nb = _bracket_chunk(keys, absmask, t_lo, t_hi, nonfinite, starts[c], starts[c + 1], out,
                                     base[c], base[c] + cap[c])
        counts[c] = cnt
        above[c, 0] = ab
        above[c, 1] = nb


@njit(cache=True)
def _gather_values_kernel(x, idx, out):  # pragma: no cover - compiled
    for j in range(idx.shape[0]):
        out[j] = x[idx[j]]


@njit(cache=True)
def _accumulate_kernel(dense, idx, vals):  # pragma: no cover - compiled
    # serial on purpose: duplicate indices must add up in a fixed order (no racing scatter-adds)
    for j in range(idx.shape[0]):
        dense[idx[j]] += vals[j]


def _histogram(keys, absmask, shift, starts) -> np.ndarray:
    hist = np.empty((starts.shape[0] - 1, _NBUCKETS), dtype=np.int64)
    _hist_kernel(keys, absmask, shift, starts, hist)
    return hist


def _first_nonfinite(x: np.ndarray) -> int:
    return int(np.flatnonzero(~np.isfinite(x))[0])


def _raise_nonfinite(x: np.ndarray, name: str, hint: bool = True):
    bad = _first_nonfinite(x)
    tail = " (pass nan='skip' to leave non-finite entries unsent)" if hint else ""
    raise ValueError(f"{name}: expected finite values, found {x[bad]} at flat index {bad}{tail}")


def _bucket_of_kth(tot: np.ndarray, k: int) -> tuple[int, int]:
    """Bucket holding the k-th largest key (1-based k <= tot.sum()) and the count strictly above it."""
    cum = np.cumsum(tot[::-1])
    j = int(np.searchsorted(cum, k))
    b = tot.shape[0] - 1 - j
    above = int(cum[j - 1]) if j > 0 else 0
    return b, above


# ----------------------------------------------------------------------------------------------------------
# selection cores (flat, contiguous float32/float64 input; already validated)
# ----------------------------------------------------------------------------------------------------------
def _candidate_threshold(x, cand_idx, need):
    """Keys of the candidate positions, the need-th largest key t among them, and how many entries equal to t
    must be kept (lowest positions first) so that exactly ``need`` are selected."""
    kdt, absmask, _, _ = _key_params(x.dtype)
    ncand = cand_idx.shape[0]
    cand_key = np.empty(ncand, dtype=kdt)
    _keys_at_kernel(x.view(kdt), absmask, cand_idx, cand_key)
    t = np.partition(cand_key, ncand - need)[ncand - need]
    return cand_key, t, need - int(np.count_nonzero(cand_key > t))


def _finish_from_candidates(x, cand_idx, k):
    """Exact top-k among candidate positions (ascending) known to contain it."""
    kdt = _key_params(x.dtype)[0]
    cand_key, t, take_ties = _candidate_threshold(x, cand_idx, k)
    out = np.empty(k, dtype=np.int64)
    got = _finish_topk_kernel(cand_idx, cand_key, t, take_ties, out)
    assert got == k
    return out, float(np.array(t, dtype=kdt).view(x.dtype))


def _exact_topk(x: np.ndarray, k: int, nan: str, name: str, seed=0, sample_ratio: float = SAMPLE_RATIO):
    """Indices (int64, ascending) of the k largest |x|, ties -> lower index; and the k-th largest |x|.

    Fast path: a sample gives a threshold that lies below the k-th largest |x| with high probability; one
    pass gathers the entries above it and NumPy partitions only those.  When the guess was too high (fewer
    than k gathered) or would gather too much, the radix-select path below runs instead -- same answer.
    """
    n = x.size
    s = _sample_size(n, sample_ratio, k)
    if s < n:
        sample = _sample_abs(x, s, seed)
        sample = sample[np.isfinite(sample)]
        ks = k * sample.size / n
        r = int(math.ceil(ks + 4.0 * math.sqrt(ks) + 16))
        if sample.size and r <= sample.size // 4:
            kdt = _key_params(x.dtype)[0]
            t_lo = np.partition(sample, sample.size - r)[sample.size - r]
            cand = _threshold_select(x, np.array(t_lo, dtype=x.dtype).view(kdt)[()], nan, name,
                                     expected=int(n * r / sample.size))
            if cand.shape[0] >= k:
                return _finish_from_candidates(x, cand, k)
    return _radix_topk(x, k, nan, name)


def _radix_topk(x: np.ndarray, k: int, nan: str, name: str):
    """Radix-select top-k: histogram of the top 12 key bits, gather the buckets at and above the k-th."""
    n = x.size
    kdt, absmask, shift, nonfinite = _key_params(x.dtype)
    keys = x.view(kdt)
    starts = _chunk_starts(n)
    hist = _histogram(keys, absmask, shift, starts)
    nf_b = int(nonfinite >> shift)
    if hist[:, nf_b:].any():
        if nan == "raise":
            _raise_nonfinite(x, name)
    tot = hist[:, :nf_b].sum(axis=0)
    finite = int(tot.sum())
    k = min(k, finite)
    if k == 0:
        return np.zeros(0, np.int64), math.nan
    b, _ = _bucket_of_kth(tot, k)
    counts = hist[:, b:nf_b].sum(axis=1)
    offs = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    ncand = int(offs[-1])
    cand_idx = np.empty(ncand, dtype=np.int64)
    cand_key = np.empty(ncand, dtype=kdt)
    _gather_range_kernel(keys, absmask, shift, kdt(b), kdt(nf_b), starts, offs, cand_idx, cand_key)
    t = np.partition(cand_key, ncand - k)[ncand - k]
    take_ties = k - int(np.count_nonzero(cand_key > t))
    out = np.empty(k, dtype=np.int64)
    got = _finish_topk_kernel(cand_idx, cand_key, t, take_ties, out)
    assert got == k
    return out, float(np.array(t, dtype=kdt).view(x.dtype))


def _gather_chunks(run, starts, expected: int) -> np.ndarray:
    """Drive a one-pass gather kernel: ``run(chunks, base, cap, out, counts)`` writes each listed chunk's
    hits (positions, in index order) from ``out[base[c]]`` on, at most ``cap[c]`` of them, and counts all.

    Slots are sized for ``expected`` hits spread evenly (x2, plus slack); only the chunks that overflow are
    scanned again, into slots of their exact size.  Returns the positions of all chunks, concatenated.
    """
    nch = starts.shape[0] - 1
    cap = np.minimum(starts[1:] - starts[:-1], 2 * (max(int(expected), 0) // nch) + 1024)
    base = np.zeros(nch, dtype=np.int64)
    np.cumsum(cap[:-1], out=base[1:])
    out = np.empty(int(cap.sum()), dtype=np.int64)
    counts = np.empty(nch, dtype=np.int64)
    run(np.arange(nch, dtype=np.int64), base, cap, out, counts)
    over = np.flatnonzero(counts > cap)
    src = [out] * nch
    if over.size:
        cap2 = np.zeros(nch, dtype=np.int64)
        cap2[over] = counts[over]
        base2 = np.zeros(nch, dtype=np.int64)
        np.cumsum(cap2[:-1], out=base2[1:])
        out2 = np.empty(int(cap2.sum()), dtype=np.int64)
        run(over.astype(np.int64), base2, cap2, out2, counts)
        for c in over:
            src[c] = out2
            base[c] = base2[c]
    return np.concatenate([src[c][base[c]:base[c] + counts[c]] for c in range(nch)])


def _threshold_select(x: np.ndarray, thr_key, nan: str, name: str, expected: int | None = None):
    """Indices (int64, ascending) of the entries with |x| >= the float whose bit pattern is ``thr_key``
    (non-finite entries excluded): one parallel pass (see :func:`_gather_chunks`)."""
    kdt, absmask, _, nonfinite = _key_params(x.dtype)
    keys = x.view(kdt)
    t = kdt(thr_key)
    starts = _chunk_starts(x.size)
    bad = np.zeros(starts.shape[0] - 1, dtype=np.int64)

    def run(chunks, base, cap, out, counts):
        _gather_ge_direct_kernel(keys, absmask, t, nonfinite, starts, chunks, base, cap, out, counts, bad)
        if nan == "raise" and bad.any():
            _raise_nonfinite(x, name)

    return _gather_chunks(run, starts, x.size // 64 if expected is None else expected)


def _sample_abs(x: np.ndarray, s: int, seed) -> np.ndarray:
    """|x| at ``s`` positions: the array is cut into equal strata and one random run of up to 256 consecutive
    entries is taken from each (cluster sampling: covers every part of the gradient, and reads whole cache
    lines instead of ``s`` random ones)."""
    n = x.size
    if s >= n:
        return np.abs(x)
    run = min(256, max(1, s // 64))
    nstrata = max(1, s // run)
    bounds = (np.arange(nstrata + 1, dtype=np.int64) * n) // nstrata
    width = bounds[1:] - bounds[:-1]
    run = int(min(run, width.min()))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    first = bounds[:-1] + rng.integers(0, width - run + 1)
    pos = (first[:, None] + np.arange(run, dtype=np.int64)[None, :]).reshape(-1)
    return np.abs(x[pos])


def _sample_size(n: int, sample_ratio: float, k: int) -> int:
    """max(SAMPLE_MIN, sample_ratio * n, enough for ~SAMPLE_HITS sampled entries above the threshold (at most
    SAMPLE_MAX)), at most n."""
    hits = min(SAMPLE_MAX, int(math.ceil(SAMPLE_HITS * n / max(k, 1))))
    return min(n, max(SAMPLE_MIN, int(math.ceil(sample_ratio * n)), hits))


def _mask_from_threshold(x, keys, absmask, starts, t, tie_pos) -> np.ndarray:
    out = np.empty(x.size, dtype=np.bool_)
    _gt_mask_kernel(keys, absmask, t, starts, out)
    out[tie_pos] = True
    return out


def _resolve_in_candidates(x, cand_idx, need):
    """Threshold key t (the need-th largest key among the candidates) and the tie positions to keep."""
    cand_key, t, take_ties = _candidate_threshold(x, cand_idx, need)
    return t, cand_idx[cand_key == t][:take_ties]


def _keep_largest_mask(x: np.ndarray, keep: int, name: str = "w", seed=0) -> np.ndarray:
    """Bool mask over the flat, finite, contiguous float array ``x``: the ``keep`` largest |x|, ties -> lower
    index (used by :func:`memwall.kernels.prune.magnitude_mask`).

    Fast path (two passes): a stratified sample brackets the threshold ``[t_lo, t_hi]``; one pass counts the
    entries above ``t_hi`` and gathers those inside the bracket, NumPy finds the exact threshold among them,
    and a branch-free pass writes ``|x| > t`` (the kept ties at ``t`` are scattered in by position).  When the
    bracket misses, the radix path (histogram of the top 12 key bits, gather of the threshold's bucket) finds
    the same threshold.
    """
    n = x.size
    if keep <= 0 or keep >= n:
        if n and not np.isfinite(x).all():
            _raise_nonfinite(x, name, hint=False)
        return np.full(n, keep > 0, dtype=np.bool_)
    kdt, absmask, shift, nonfinite = _key_params(x.dtype)
    keys = x.view(kdt)
    starts = _chunk_starts(n)
    nch = starts.shape[0] - 1
    s = min(n, max(SAMPLE_MIN, int(math.ceil(SAMPLE_RATIO * n))))
    if s < n // 4:
        sample = np.sort(_sample_abs(x, s, seed).view(kdt) & absmask)  # ascending keys
        r = keep * s / n  # rank from the top
        d = 4.0 * math.sqrt(r * (1.0 - keep / n)) + 16
        hi_pos = s - int(math.floor(r - d))  # key at rank r - d from the top (above the threshold)
        lo_pos = s - int(math.ceil(r + d))
        t_hi = sample[min(s - 1, max(0, hi_pos))] if r - d >= 1 else absmask
        t_lo = sample[max(0, lo_pos)] if lo_pos >= 0 else kdt(0)
        expected = int(n * (r + d - max(r - d, 0)) / s) + 1
        above = np.zeros((nch, 2), dtype=np.int64)

        def run(chunks, base, cap, out, counts):
            _bracket_kernel(keys, absmask, kdt(t_lo), kdt(t_hi), nonfinite, starts, chunks, base, cap, out,
                            counts, above)

        cand = _gather_chunks(run, starts, expected)
        if above[:, 1].any():
            _raise_nonfinite(x, name, hint=False)
        need = keep - int(above[:, 0].sum())
        if 1 <= need <= cand.shape[0]:
            t, tie_pos = _resolve_in_candidates(x, cand, need)
            return _mask_from_threshold(x, keys, absmask, starts, t, tie_pos)
    return _radix_keep_mask(x, keep, name)


def _radix_keep_mask(x: np.ndarray, keep: int, name: str = "w") -> np.ndarray:
    """The radix path of :func:`_keep_largest_mask` (1 <= keep < x.size)."""
    kdt, absmask, shift, nonfinite = _key_params(x.dtype)
    keys = x.view(kdt)
    starts = _chunk_starts(x.size)
    hist = _histogram(keys, absmask, shift, starts)
    if hist[:, int(nonfinite >> shift):].any():
        _raise_nonfinite(x, name, hint=False)
    b, above = _bucket_of_kth(hist.sum(axis=0), keep)
    counts = hist[:, b]
    offs = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    cand_idx = np.empty(int(offs[-1]), dtype=np.int64)
    cand_key = np.empty(int(offs[-1]), dtype=kdt)
    _gather_range_kernel(keys, absmask, shift, kdt(b), kdt(b + 1), starts, offs, cand_idx, cand_key)
    t, tie_pos = _resolve_in_candidates(x, cand_idx, keep - above)
    return _mask_from_threshold(x, keys, absmask, starts, t, tie_pos)


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def _index_dtype(size: int):
    return np.int32 if size < 2**31 else np.int64


def encoded_nbytes(size: int, k: int) -> int:
    """Bytes of an encoded message with ``k`` entries out of ``size``: k * (index bytes + 4)."""
    size = check_int(size, "size", minimum=0)
    k = check_int(k, "k", minimum=0, maximum=size)
    return k * (np.dtype(_index_dtype(size)).itemsize + 4)


@dataclass(frozen=True)
class SparseGradient:
    """An encoded sparse gradient.

    ``indices``: flat C-order positions, int32 (size < 2**31) or int64, ascending, no duplicates.
    ``values``: float32, the signed selected entries. ``size`` / ``shape``: of the dense gradient.
    ``k``: entries sent (achieved); ``requested_k``: what was asked (differs for ``"sampled"``).
    ``threshold``: the smallest ``|g|`` that qualifies (exact: the k-th largest |g|; sampled: the estimate;
    threshold: the given one). ``method``: how it was selected.
    """

    indices: np.ndarray
    values: np.ndarray
    size: int
    shape: tuple
    k: int
    requested_k: int | None
    threshold: float
    method: str

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: indices + values."""
        return int(self.indices.nbytes + self.values.nbytes)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense float32 gradient."""
        return 4 * self.size

    @property
    def density(self) -> float:
        return self.k / self.size if self.size else 0.0

    @property
    def compression_ratio(self) -> float:
        """dense float32 bytes / encoded bytes (inf when nothing is sent)."""
        return self.dense_nbytes / self.nbytes if self.nbytes else math.inf

    def to_dense(self) -> np.ndarray:
        """The dense float32 gradient with only the sent entries (shape ``self.shape``)."""
        return decode(self.indices, self.values, self.size).reshape(self.shape)


def _gradient(g, name: str = "g") -> np.ndarray:
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(g).__name__}")
    if g.dtype == np.float16:
        g = g.astype(np.float32)
    return as_array(g, name, dtype=(np.float32, np.float64))


def _resolve_k(size: int, k, ratio) -> int:
    if (k is None) == (ratio is None):
        raise ValueError("k, ratio: give exactly one of k (entries to send) or ratio (fraction to send)")
    if k is not None:
        return check_int(k, "k", minimum=1, maximum=max(size, 0)) if size else _k_empty(k)
    ratio = check_fraction(ratio, "ratio", include_low=False)
    if size == 0:
        return 0
    return max(1, min(size, int(math.floor(ratio * size + RATIO_ROUND_EPS))))


def _k_empty(k):
    check_int(k, "k")
    raise ValueError(f"k: expected 1 <= k <= size, but the gradient is empty (size 0); got k={k}")


def _select(x: np.ndarray, k: int, method: str, threshold, sample_ratio, seed, nan: str, name: str):
    """Core of topk_sparsify on a flat contiguous float array: (int64 indices, threshold used)."""
    if method == "exact":
        if x.size == 0:
            return np.zeros(0, np.int64), math.nan
        return _exact_topk(x, k, nan, name, seed, sample_ratio)
    kdt = _key_params(x.dtype)[0]
    if method == "threshold":
        thr = abs(float(threshold))
        key = np.array(thr, dtype=x.dtype).view(kdt)[()]
        return _threshold_select(x, key, nan, name), thr
    # sampled
    n = x.size
    if n == 0:
        return np.zeros(0, np.int64), math.nan
    sample = _sample_abs(x, _sample_size(n, sample_ratio, k), seed)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        if nan == "raise":
            _raise_nonfinite(x, name)
        return np.zeros(0, np.int64), math.nan
    ks = min(finite.size, max(1, int(round(k * finite.size / n))))
    thr = np.partition(finite, finite.size - ks)[finite.size - ks]
    key = np.array(thr, dtype=x.dtype).view(kdt)[()]
    return _threshold_select(x, key, nan, name, expected=int(n * ks / finite.size)), float(thr)


def topk_sparsify(g, k: int | None = None, ratio: float | None = None, method: str = "exact", *,
                  threshold: float | None = None, sample_ratio: float = SAMPLE_RATIO, seed=0,
                  nan: str = "raise") -> SparseGradient:
    """Select the entries of a gradient to send and encode them as (indices, values).

    Parameters
    ----------
    g : float32 / float64 array, any shape (float16 is converted; others are a TypeError)
        Positions are flat C-order indices.
    k : int in [1, g.size], optional
        Entries to send (``"exact"``: exactly k; ``"sampled"``: the target).
    ratio : float in (0, 1], optional
        Fraction to send instead of k: ``k = max(1, floor(ratio * g.size))`` (0 for an empty gradient).
    method : "exact" | "sampled" | "threshold"
        See the module doc. ``"threshold"`` needs ``threshold=`` and ignores k / ratio (leave them out).
    threshold : float >= 0, only for ``method="threshold"``: send every ``|g| >= threshold``.
    sample_ratio : float in (0, 1], fraction sampled by ``"sampled"`` (at least ``SAMPLE_MIN`` entries, and
        enough that about ``SAMPLE_HITS`` sampled entries pass the threshold, up to ``SAMPLE_MAX``).
    seed : seed or ``numpy.random.Generator`` for the sample (default 0: reproducible). ``"exact"`` also
        samples, to guess a threshold, but its result never depends on the seed (only its speed may).
    nan : "raise" | "skip"
        Non-finite gradients: ``ValueError`` naming the first position, or never select those entries.

    Returns
    -------
    SparseGradient with indices ascending (int32 while g.size < 2**31), float32 values, the achieved k,
    ``nbytes`` and ``compression_ratio``.  (float64 entries beyond the float32 range become +-inf in
    ``values``; :class:`ErrorFeedback` refuses to send them instead.)
    """
    x = _gradient(g)
    check_choice(method, "method", _METHODS)
    check_choice(nan, "nan", _NAN_POLICIES)
    sample_ratio = check_fraction(sample_ratio, "sample_ratio", include_low=False)
    if method == "threshold":
        if threshold is None:
            raise ValueError("threshold: method='threshold' needs threshold= (send every |g| >= threshold)")
        if k is not None or ratio is not None:
            raise ValueError("k, ratio: not used by method='threshold' (give threshold= only)")
        thr = check_fraction(threshold, "threshold", high=math.inf, include_high=False)
        kk = None
    else:
        if threshold is not None:
            raise ValueError(f"threshold: only used by method='threshold', not method={method!r}")
        kk = _resolve_k(x.size, k, ratio)
        thr = None
    flat = x.reshape(-1)
    idx, used = _select(flat, kk if kk is not None else 0, method, thr, sample_ratio, seed, nan, "g")
    vals = np.empty(idx.shape[0], dtype=np.float32)
    if idx.size:
        if flat.dtype == np.float32:
            _gather_values_kernel(flat, idx, vals)
        else:
            vals[:] = flat[idx]
    return SparseGradient(indices=idx.astype(_index_dtype(x.size), copy=False), values=vals, size=int(x.size),
                          shape=tuple(x.shape), k=int(idx.shape[0]), requested_k=kk, threshold=float(used),
                          method=method)


def topk_encode(g, k: int) -> SparseGradient:
    """Exact top-k encoding: ``topk_sparsify(g, k=k)`` (the name the communication benchmark looks for)."""
    return topk_sparsify(g, k=k)


def _size_arg(size) -> tuple[int, tuple]:
    if isinstance(size, (tuple, list)):
        shape = tuple(check_int(s, f"size[{i}]", minimum=0) for i, s in enumerate(size))
        return int(np.prod(shape, dtype=np.int64)), shape
    n = check_int(size, "size", minimum=0)
    return n, (n,)


def _sparse_args(indices, values, size: int):
    idx = as_array(indices, "indices", ndim=1)
    if not np.issubdtype(idx.dtype, np.integer) or idx.dtype == np.bool_:
        raise TypeError(f"indices: expected an integer array (int32 or int64), got dtype {idx.dtype.name}")
    vals = values
    if isinstance(vals, np.ndarray) and vals.dtype == np.float16:
        vals = vals.astype(np.float32)
    vals = as_array(vals, "values", dtype=(np.float32, np.float64), ndim=1)
    if idx.shape[0] != vals.shape[0]:
        raise ValueError(f"indices, values: lengths differ ({idx.shape[0]} != {vals.shape[0]})")
    check_range(idx, "indices", 0, size - 1)
    if idx.dtype not in (np.int32, np.int64):
        idx = idx.astype(np.int64)
    return idx, vals


def decode(indices, values, size) -> np.ndarray:
    """Dense gradient from an encoded one: zeros with ``values`` added at ``indices`` (duplicates add up).

    Parameters
    ----------
    indices : int array (any integer dtype), 1-D, each in [0, size)
    values : float32 / float64, 1-D, same length
    size : int, or a shape tuple for the result

    Returns
    -------
    ndarray of ``values.dtype`` (float32 for a SparseGradient), shape ``(size,)`` or the given shape.
    """
    n, shape = _size_arg(size)
    idx, vals = _sparse_args(indices, values, n)
    out = np.zeros(n, dtype=vals.dtype)
    if idx.size:
        _accumulate_kernel(out, idx, vals)
    return out.reshape(shape)


def accumulate_into(dense, indices, values) -> np.ndarray:
    """In place: ``dense.flat[indices] += values`` (duplicates add up, in order); returns ``dense``.

    ``dense`` must be a C-contiguous, writeable float32/float64 array (any shape; flat indices).  ``values``
    is cast to ``dense.dtype``.
    """
    if not isinstance(dense, np.ndarray):
        raise TypeError(f"dense: expected a numpy.ndarray, got {type(dense).__name__}")
    if dense.dtype not in (np.float32, np.float64):
        raise TypeError(f"dense: expected dtype float32 or float64, got {dense.dtype.name}")
    if not dense.flags.c_contiguous or not dense.flags.writeable:
        raise ValueError("dense: expected a C-contiguous, writeable array (it is updated in place)")
    idx, vals = _sparse_args(indices, values, dense.size)
    with np.errstate(over="ignore"):  # overflow is reported below, naming the value
        cast = vals.astype(dense.dtype, copy=False)
    if cast is not vals:
        lost = np.isfinite(vals) & ~np.isfinite(cast)
        if lost.any():
            bad = int(np.flatnonzero(lost)[0])
            raise ValueError(f"values: {vals[bad]} at position {bad} overflows dense's dtype {dense.dtype.name}")
    if idx.size:
        _accumulate_kernel(dense.reshape(-1), idx, cast)
    return dense


class ErrorFeedback:
    """Residual (error-feedback) accumulator for sparsified data-parallel gradients, optional DGC momentum.

    Without momentum, each :meth:`step` forms ``acc = residual + g``, selects from ``|acc|``, sends the
    selected entries as float32 and keeps everything else -- including, for a float64 accumulator, the float32
    rounding of the sent values -- as the new residual.  Hence after each step
    ``decode(sent) + residual == acc`` exactly, and over T steps ``sum(sent) + residual == sum(g)`` up to the
    rounding of the T additions ``residual + g`` in the accumulator dtype.

    With ``momentum=m`` (Deep Gradient Compression, Lin et al. 2018): ``u = m*u + g``; ``v = v + u``;
    select from ``|v|``; send ``v`` there; zero ``v`` (moved to the message) and ``u`` (momentum factor
    masking) at the sent positions. The invariant then reads ``sum(sent) + residual == sum(u_t)``.

    Parameters
    ----------
    shape : int or tuple, the gradient's shape
    dtype : float32 (default) or float64, the accumulator dtype
    momentum : float in [0, 1) or None
    """

    def __init__(self, shape, *, dtype=np.float32, momentum: float | None = None):
        _, self.shape = _size_arg(shape)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from exc
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype.name}")
        self.momentum = None if momentum is None else check_fraction(momentum, "momentum", include_high=False)
        self.residual = np.zeros(self.shape, dtype=self.dtype)
        self._scratch = np.zeros(self.shape, dtype=self.dtype)
        self.velocity = None if momentum is None else np.zeros(self.shape, dtype=self.dtype)
        self._scratch_u = None if momentum is None else np.zeros(self.shape, dtype=self.dtype)
        self.steps = 0

    def reset(self) -> None:
        """Forget the residual (and momentum)."""
        self.residual[...] = 0
        if self.velocity is not None:
            self.velocity[...] = 0
        self.steps = 0

    def step(self, g, k: int | None = None, ratio: float | None = None, method: str = "exact", **kw) -> SparseGradient:
        """Add ``g`` to the accumulator, select with :func:`topk_sparsify` (same ``k`` / ``ratio`` /
        ``method`` / ``threshold`` / ``sample_ratio`` / ``seed`` arguments), move the sent entries out of
        the accumulator and return the message. Non-finite ``g`` raises ``ValueError`` and changes nothing."""
        if kw.get("nan", "raise") != "raise":
            raise ValueError("nan: ErrorFeedback only supports nan='raise' (a residual cannot keep NaN)")
        x = _gradient(g)
        if x.shape != self.shape:
            raise ValueError(f"g: expected shape {self.shape} (the accumulator's), got {x.shape}")
        if self.momentum is None:
            acc = self._scratch
            np.add(self.residual, x, out=acc)
        else:
            u = self._scratch_u
            np.multiply(self.velocity, self.momentum, out=u)
            u += x
            acc = self._scratch
            np.add(self.residual, u, out=acc)
        msg = topk_sparsify(acc, k=k, ratio=ratio, method=method, **kw)  # raises before any state change
        if not np.isfinite(msg.values).all():
            bad = int(msg.indices[np.flatnonzero(~np.isfinite(msg.values))[0]])
            raise ValueError(f"g: the accumulated value at flat index {bad} ({acc.reshape(-1)[bad]}) does not fit "
                             f"in float32 and cannot be sent; nothing was changed")
        flat = acc.reshape(-1)
        idx = msg.indices
        if self.dtype == np.float32:
            flat[idx] = 0
        else:
            flat[idx] -= msg.values.astype(np.float64)  # exact (Sterbenz): keeps the float32 rounding error
        self._scratch, self.residual = self.residual, acc
        if self.momentum is not None:
            u.reshape(-1)[idx] = 0
            self._scratch_u, self.velocity = self.velocity, u
        self.steps += 1
        return msg

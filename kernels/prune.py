"""Pruning masks, their cost in weight energy, and gradual pruning schedules.

Every mask is a boolean array of the weight's shape with ``True`` = **kept**.

Exact sparsity targets
    A mask asked for sparsity ``s`` over ``N`` prunable units (entries, blocks or channels) prunes exactly
    ``floor(s * N + SPARSITY_ROUND_EPS)`` of them (the tiny epsilon only absorbs binary round-off such as
    ``0.29 * 100 = 28.999999999999996``).  ``s = 0`` keeps everything, ``s = 1`` prunes everything.

Deterministic ties
    Units are ranked by score (``|w|``, block norm, channel norm), largest first; among equal scores the
    **lower index is kept** (flat C-order index for entries, row-major block index for blocks).  The same rule
    decides N:M groups and top-k gradient selection (:mod:`memwall.kernels.gradient`), so the masks are
    reproducible bit for bit and identical for any thread count.

Speed
    Magnitude masks share the selection machinery of :mod:`memwall.kernels.gradient`: a sample brackets the
    threshold, one parallel pass counts/gathers around it, a branch-free pass writes the mask (radix-select
    fallback when the bracket misses).  N:M and block scores are parallel Numba loops over rows / block rows.

Accuracy proxy
    :func:`mask_stats` reports the achieved sparsity and the fraction of the squared weight magnitude
    (``sum w**2``) that a mask removes; the planner uses the latter as a cheap stand-in for accuracy loss.

NaN or Inf weights are refused (``ValueError`` naming the first position): a magnitude ranking of NaN has no
meaning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from numba import njit, prange

from ._validate import as_array, check_choice, check_finite, check_fraction, check_int

__all__ = [
    "magnitude_mask",
    "global_magnitude_masks",
    "block_mask",
    "nm_mask",
    "channel_mask",
    "take_channels",
    "mask_stats",
    "MaskStats",
    "cubic_sparsity",
    "GradualSchedule",
    "iterative_prune",
    "IterativePruneResult",
    "prune_count",
]

#: Added before flooring ``sparsity * N`` so that binary round-off does not lose a unit (see module doc).
#: (Kept here rather than in ``config.py`` to leave that shared file to its owner; see the report.)
SPARSITY_ROUND_EPS = 1e-9

_SCORES = ("l1", "l2", "max")


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------
def _weights(w, name: str = "w", ndim=None, finite: bool = True) -> np.ndarray:
    """A float32/float64 C-contiguous array (float16, bool, int8/int16 weights become float32, wider integers
    float64); finite (checked
    here unless ``finite=False``: the caller's selection pass then detects NaN/Inf itself)."""
    if isinstance(w, np.ndarray) and w.dtype not in (np.float32, np.float64):
        if np.issubdtype(w.dtype, np.integer) and w.dtype.itemsize >= 4:
            w = w.astype(np.float64)  # float32 would merge integers above 2**24 (ties -> a wrong ranking)
        elif w.dtype == np.float16 or np.issubdtype(w.dtype, np.integer) or w.dtype == np.bool_:
            w = w.astype(np.float32)
        else:
            raise TypeError(f"{name}: expected a real (float or integer) array, got dtype {w.dtype.name}")
    w = as_array(w, name, dtype=(np.float32, np.float64), ndim=ndim, allow_convert=True)
    if finite:
        check_finite(w, name)
    return w


def prune_count(sparsity: float, units: int) -> int:
    """Number of units a mask of ``sparsity`` prunes out of ``units``: ``floor(sparsity * units)`` (see module
    doc for the round-off epsilon).  ``sparsity`` must lie in [0, 1]."""
    sparsity = check_fraction(sparsity, "sparsity")
    units = check_int(units, "units", minimum=0)
    return min(units, int(math.floor(sparsity * units + SPARSITY_ROUND_EPS)))


def _keep_top_scores(scores: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask over the 1-D ``scores`` keeping the ``keep`` largest; ties keep the lower index.

    Small inputs (blocks, channels): a stable sort is simple and exact.
    """
    out = np.zeros(scores.shape[0], dtype=np.bool_)
    if keep > 0:
        order = np.argsort(-scores, kind="stable")
        out[order[:keep]] = True
    return out


# ----------------------------------------------------------------------------------------------------------
# unstructured magnitude masks
# ----------------------------------------------------------------------------------------------------------
def magnitude_mask(w, sparsity: float) -> np.ndarray:
    """Unstructured magnitude mask of one layer.

    Parameters
    ----------
    w : ndarray of float (any shape)
        The weights. float16 and integer weights are converted to float32; NaN/Inf are refused.
    sparsity : float in [0, 1]
        Fraction of entries to prune: exactly ``floor(sparsity * w.size)`` entries are pruned.

    Returns
    -------
    mask : ndarray of bool, shape ``w.shape``
        ``True`` where the weight is kept: the ``w.size - pruned`` entries of largest ``|w|``; among equal
        ``|w|`` the lower flat (C-order) index is kept.
    """
    w = _weights(w, finite=False)  # the selection raises on NaN/Inf, naming the first position
    n_prune = prune_count(sparsity, w.size)
    keep = w.size - n_prune
    from .gradient import _keep_largest_mask  # the shared selection machinery

    # the selection works on |w| through the sign-cleared bit patterns: no |w| copy is needed
    return _keep_largest_mask(w.reshape(-1), keep, "w").reshape(w.shape)


def global_magnitude_masks(weights: Sequence, sparsity: float) -> list[np.ndarray]:
    """Magnitude masks with one threshold across several layers (global unstructured pruning).

    Parameters
    ----------
    weights : sequence of float arrays
        The layers, any shapes. If any is float64 the ranking is done in float64, else in float32.
    sparsity : float in [0, 1]
        Fraction of *all* entries (summed over layers) to prune: exactly ``floor(sparsity * total)``.

    Returns
    -------
    masks : list of bool arrays, one per layer, same shapes. Ties in ``|w|`` keep the entry that comes first
    in (layer order, flat index) -- i.e. the ranking of the layers concatenated in order.
    """
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights: expected a list or tuple of arrays, got {type(weights).__name__}")
    arrays = [_weights(w, f"weights[{i}]") for i, w in enumerate(weights)]
    sparsity = check_fraction(sparsity, "sparsity")
    if not arrays:
        return []
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32
    flat = np.concatenate([a.reshape(-1) for a in arrays], dtype=dtype)  # signs are ignored by the selection
    keep = flat.size - prune_count(sparsity, flat.size)
    from .gradient import _keep_largest_mask

    mask = _keep_largest_mask(flat, keep)
    out, start = [], 0
    for a in arrays:
        out.append(mask[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


# ----------------------------------------------------------------------------------------------------------
# N:M masks
# ----------------------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _nm_mask_kernel(w, n, m, out):  # pragma: no cover - compiled
    rows, cols = w.shape
    groups = cols // m
    for r in prange(rows):
        for g in range(groups):
            base = g * m
            for j in range(m):
                aj = abs(w[r, base + j])
                rank = 0
                for i in range(m):
                    ai = abs(w[r, base + i])
                    if ai > aj or (ai == aj and i < j):
                        rank += 1
                out[r, base + j] = rank < n


def nm_mask(w, n: int = 2, m: int = 4) -> np.ndarray:
    """N:M structured mask: in every group of ``m`` consecutive entries along the LAST axis, keep ``n``.

    Parameters
    ----------
    w : ndarray of float, shape (out, in) (any ndim >= 1 is accepted: groups run along the last axis; reshape
        convolution weights to (out, in*kh*kw) first so groups lie along the reduction dimension)
    n, m : int, 1 <= n <= m
        Keep ``n`` of every ``m`` (2:4 is the sparse-tensor-core format). ``w.shape[-1] % m`` must be 0.

    Returns
    -------
    mask : bool array of ``w.shape``; in each group the ``n`` entries of largest ``|w|`` are kept, ties keep
    the lower index. Sparsity is exactly ``1 - n/m``.
    """
    w = _weights(w)
    m = check_int(m, "m", minimum=1)
    n = check_int(n, "n", minimum=1)
    if n > m:
        raise ValueError(f"n: expected n <= m (keep n of every m), got n={n} > m={m}")
    if w.ndim < 1:
        raise ValueError(f"w: expected an array with at least 1 dimension, got shape {w.shape}")
    cols = w.shape[-1]
    if cols % m:
        raise ValueError(f"w: the last dimension ({cols}) must be a multiple of m={m} for N:M groups")
    w2 = w.reshape(-1, cols) if w.size else w.reshape(int(np.prod(w.shape[:-1], dtype=np.int64)), cols)
    out = np.empty(w2.shape, dtype=np.bool_)
    if w2.size:
        _nm_mask_kernel(w2, n, m, out)
    return out.reshape(w.shape)


# ----------------------------------------------------------------------------------------------------------
# block masks
# ----------------------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _block_scores_kernel(w, r, c, score, out):  # pragma: no cover - compiled
    # score: 0 = l1, 1 = l2 (sum of squares; same ranking as the norm), 2 = max
    nbr, nbc = out.shape
    for br in prange(nbr):
        for bc in range(nbc):
            acc = 0.0
            for i in range(br * r, br * r + r):
                for j in range(bc * c, bc * c + c):
                    v = abs(np.float64(w[i, j]))
                    if score == 0:
                        acc += v
                    elif score == 1:
                        acc += v * v
                    elif v > acc:
                        acc = v
            out[br, bc] = acc


@njit(parallel=True, cache=True)
def _expand_blocks_kernel(kept, r, c, out):  # pragma: no cover - compiled
    nbr, nbc = kept.shape
    for br in prange(nbr):
        for i in range(br * r, br * r + r):
            for bc in range(nbc):
                v = kept[br, bc]
                for j in range(bc * c, bc * c + c):
                    out[i, j] = v


def _blocksize(blocksize, name="blocksize") -> tuple[int, int]:
    if not isinstance(blocksize, (tuple, list)) or len(blocksize) != 2:
        raise TypeError(f"{name}: expected a pair (r, c) of positive integers, got {blocksize!r}")
    return (check_int(blocksize[0], f"{name}[0]", minimum=1), check_int(blocksize[1], f"{name}[1]", minimum=1))


def block_scores(w, blocksize=(4, 4), score: str = "l1") -> np.ndarray:
    """Score of every ``r x c`` block of the 2-D ``w``: shape (rows/r, cols/c), float64.

    ``score``: ``"l1"`` sum of ``|w|``, ``"l2"`` sum of ``w**2`` (ranks like the L2 norm), ``"max"`` max ``|w|``.
    The block shape must divide the matrix (no padding: the sparse BSR format needs the same).
    """
    w = _weights(w, ndim=2)
    r, c = _blocksize(blocksize)
    check_choice(score, "score", _SCORES)
    rows, cols = w.shape
    if rows % r or cols % c:
        raise ValueError(f"blocksize: ({r}, {c}) must divide the matrix shape {w.shape} (no padding)")
    out = np.zeros((rows // r, cols // c), dtype=np.float64)
    if out.size:
        _block_scores_kernel(w, r, c, _SCORES.index(score), out)
    return out


def block_mask(w, sparsity: float, blocksize=(4, 4), score: str = "l1") -> np.ndarray:
    """Block-structured mask: prune whole ``r x c`` blocks of the lowest score.

    Parameters
    ----------
    w : 2-D float array (out, in)
    sparsity : float in [0, 1]
        Fraction of *blocks* pruned: exactly ``floor(sparsity * n_blocks)`` (so also that fraction of entries).
    blocksize : (r, c)
        Must divide ``w.shape`` (ValueError otherwise; pad the layer yourself if needed).
    score : "l1" | "l2" | "max"
        Block score; ties keep the lower row-major block index.

    Returns
    -------
    mask : bool array of ``w.shape``, constant on each block.
    """
    sparsity = check_fraction(sparsity, "sparsity")
    scores = block_scores(w, blocksize, score)
    r, c = _blocksize(blocksize)
    keep = scores.size - prune_count(sparsity, scores.size)
    kept = _keep_top_scores(scores.ravel(), keep).reshape(scores.shape)
    out = np.empty((scores.shape[0] * r, scores.shape[1] * c), dtype=np.bool_)
    if out.size:
        _expand_blocks_kernel(kept, r, c, out)
    return out


# ----------------------------------------------------------------------------------------------------------
# channel / filter masks
# ----------------------------------------------------------------------------------------------------------
def channel_scores(w, axis: int = 0, score: str = "l2") -> np.ndarray:
    """Score of every slice of ``w`` along ``axis`` (float64): ``"l1"``, ``"l2"`` (sum of squares) or ``"max"``."""
    w = _weights(w)
    if w.ndim < 1:
        raise ValueError(f"w: expected an array with at least 1 dimension, got shape {w.shape}")
    axis = check_int(axis, "axis", minimum=-w.ndim, maximum=w.ndim - 1) % w.ndim
    check_choice(score, "score", _SCORES)
    rest = int(np.prod(w.shape, dtype=np.int64)) // w.shape[axis] if w.shape[axis] else 0
    if w.shape[axis] == 0:
        return np.zeros(0, dtype=np.float64)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], rest).astype(np.float64)
    if moved.shape[1] == 0:
        return np.zeros(w.shape[axis], dtype=np.float64)
    a = np.abs(moved)
    if score == "l1":
        return a.sum(axis=1)
    if score == "l2":
        return (a * a).sum(axis=1)
    return a.max(axis=1)


def channel_mask(w, sparsity: float, axis: int = 0, score: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    """Structured channel/filter mask: prune whole slices of ``w`` along ``axis``.

    Parameters
    ----------
    w : float array, ndim >= 1 (Linear (out, in): axis 0 prunes output neurons, axis 1 input features;
        Conv (out, in, kh, kw): axis 0 prunes filters)
    sparsity : float in [0, 1]
        Fraction of channels pruned: exactly ``floor(sparsity * w.shape[axis])``.
    axis : int
        The channel axis (negative counts from the end).
    score : "l1" | "l2" | "max"
        Channel score (``"l2"``: sum of squares, ranks like the L2 norm). Ties keep the lower channel index.

    Returns
    -------
    mask : bool array of ``w.shape`` (whole channels True/False), usable with :func:`mask_stats`.
    kept_indices : int64 array, sorted ascending: the channels kept. ``take_channels(w, kept_indices, axis)``
        gives the smaller dense layer (and the next layer must drop the same input channels).
    """
    sparsity = check_fraction(sparsity, "sparsity")
    scores = channel_scores(w, axis, score)
    w = np.asarray(w)
    ax = axis % w.ndim
    keep = scores.size - prune_count(sparsity, scores.size)
    kept = _keep_top_scores(scores, keep)
    shape = [1] * w.ndim
    shape[ax] = w.shape[ax]
    mask = np.broadcast_to(kept.reshape(shape), w.shape).copy()
    return mask, np.flatnonzero(kept).astype(np.int64)


def take_channels(w, kept_indices, axis: int = 0) -> np.ndarray:
    """The smaller dense array holding only the ``kept_indices`` slices of ``w`` along ``axis`` (a copy).

    Use it on the pruned layer (its channel axis) and on the next layer (its input axis) with the same
    indices, e.g. ``W1' = take_channels(W1, kept, 0); b1' = b1[kept]; W2' = take_channels(W2, kept, 1)``.
    """
    w = as_array(w, "w")
    if w.ndim < 1:
        raise ValueError(f"w: expected an array with at least 1 dimension, got shape {w.shape}")
    axis = check_int(axis, "axis", minimum=-w.ndim, maximum=w.ndim - 1) % w.ndim
    idx = as_array(kept_indices, "kept_indices", ndim=1)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"kept_indices: expected an integer array, got dtype {idx.dtype.name}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= w.shape[axis]:
            raise ValueError(f"kept_indices: expected values in [0, {w.shape[axis] - 1}], got range [{lo}, {hi}]")
    return np.take(w, idx.astype(np.int64), axis=axis)


# ----------------------------------------------------------------------------------------------------------
# mask statistics (accuracy proxy)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskStats:
    """What a mask does to a weight tensor.

    ``size``: entries; ``kept`` / ``pruned``: counts; ``sparsity``: pruned / size (0 for an empty tensor);
    ``energy_removed``: sum of ``w**2`` over pruned entries / sum of ``w**2`` (0 when the weights are all zero)
    -- the planner's cheap accuracy-loss proxy; ``energy_kept`` = 1 - energy_removed.
    """

    size: int
    kept: int
    pruned: int
    sparsity: float
    energy_removed: float

    @property
    def energy_kept(self) -> float:
        return 1.0 - self.energy_removed

    def to_dict(self) -> dict:
        return {"size": self.size, "kept": self.kept, "pruned": self.pruned, "sparsity": self.sparsity,
                "energy_removed": self.energy_removed, "energy_kept": self.energy_kept}


def mask_stats(w, mask) -> MaskStats:
    """Achieved sparsity and fraction of squared weight magnitude removed by ``mask`` (``True`` = kept).

    ``w`` and ``mask`` must have the same shape; ``mask`` must be a bool array. Sums in float64.
    """
    w = _weights(w)
    mask = as_array(mask, "mask", dtype=np.bool_)
    if mask.shape != w.shape:
        raise ValueError(f"mask: expected shape {w.shape} (the weights' shape), got {mask.shape}")
    size = int(w.size)
    kept = int(np.count_nonzero(mask))
    sq = np.square(w, dtype=np.float64)
    total = float(sq.sum())
    if not math.isfinite(total):  # |w| near the float64 limit: the ratio is scale-free, so rescale first
        sq = np.square(w / np.abs(w).max(), dtype=np.float64)
        total = float(sq.sum())
    removed = float(sq[~mask].sum()) if size else 0.0
    return MaskStats(size=size, kept=kept, pruned=size - kept,
                     sparsity=(size - kept) / size if size else 0.0,
                     energy_removed=removed / total if total > 0 else 0.0)


# ----------------------------------------------------------------------------------------------------------
# gradual pruning
# ----------------------------------------------------------------------------------------------------------
def cubic_sparsity(step: int, initial_sparsity: float = 0.0, final_sparsity: float = 0.9,
                   begin_step: int = 0, end_step: int = 100, frequency: int = 1) -> float:
    """Zhu & Gupta (2017) gradual sparsity at ``step``:

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` with ``t0 = begin_step``,
    ``n * dt = end_step - begin_step``, ``dt = frequency``, and ``t`` rounded down to the pruning grid
    ``t0 + j * dt``.  Before ``begin_step`` it is ``s_i``, from ``end_step`` on ``s_f``; non-decreasing in
    ``step`` (``s_i <= s_f`` is required).
    """
    s_i = check_fraction(initial_sparsity, "initial_sparsity")
    s_f = check_fraction(final_sparsity, "final_sparsity")
    if s_i > s_f:
        raise ValueError(f"initial_sparsity: expected <= final_sparsity ({s_f}), got {s_i}")
    step = check_int(step, "step")
    begin_step = check_int(begin_step, "begin_step", minimum=0)
    end_step = check_int(end_step, "end_step", minimum=begin_step + 1)
    frequency = check_int(frequency, "frequency", minimum=1)
    if step <= begin_step:
        return s_i
    if step >= end_step:
        return s_f
    t = begin_step + ((step - begin_step) // frequency) * frequency
    if t <= begin_step:
        return s_i
    frac = (t - begin_step) / (end_step - begin_step)
    return min(s_f, max(s_i, s_f + (s_i - s_f) * (1.0 - frac) ** 3))


@dataclass(frozen=True)
class GradualSchedule:
    """A cubic sparsity ramp (see :func:`cubic_sparsity`); call it with a step to get the target sparsity."""

    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    begin_step: int = 0
    end_step: int = 100
    frequency: int = 1

    def __post_init__(self):
        cubic_sparsity(self.begin_step, self.initial_sparsity, self.final_sparsity, self.begin_step,
                       self.end_step, self.frequency)  # validates every field

    def __call__(self, step: int) -> float:
        return cubic_sparsity(step, self.initial_sparsity, self.final_sparsity, self.begin_step,
                              self.end_step, self.frequency)

    def pruning_steps(self) -> list[int]:
        """The steps at which the target changes: begin_step + j*frequency up to end_step (inclusive)."""
        steps = list(range(self.begin_step + self.frequency, self.end_step, self.frequency))
        return steps + [self.end_step]


@dataclass
class IterativePruneResult:
    """Outcome of :func:`iterative_prune`: final weights and masks, plus one history row per pruning step
    (``step``, ``target`` sparsity, achieved ``sparsity`` over all layers, ``energy_removed`` of the step's
    pre-fine-tune weights)."""

    weights: list[np.ndarray]
    masks: list[np.ndarray]
    history: list[dict] = field(default_factory=list)


def iterative_prune(weights, final_sparsity: float, steps: int, finetune_fn: Callable | None = None, *,
                    mask_fn: Callable | None = None, initial_sparsity: float = 0.0,
                    scope: str = "layer") -> IterativePruneResult:
    """Gradual prune -> fine-tune loop (Zhu & Gupta cubic ramp over ``steps`` pruning steps).

    At pruning step ``i = 1..steps`` the target is ``cubic_sparsity(i, initial_sparsity, final_sparsity, 0,
    steps)`` (so the last step reaches ``final_sparsity`` exactly).  Each layer is masked -- never reviving an
    entry pruned earlier (new mask AND old mask) -- the weights are zeroed where pruned, then
    ``finetune_fn(weights, masks, step)`` is called.  It may update the list of arrays in place or return a new
    list; afterwards the masks are re-applied, so pruned weights stay pruned whatever the fine-tune did.

    Parameters
    ----------
    weights : float array or list of float arrays (copied; the inputs are not modified)
    final_sparsity : float in [0, 1]
    steps : int >= 1, number of prune/fine-tune rounds
    finetune_fn : callable(weights, masks, step) -> list | None, optional
    mask_fn : callable(w, sparsity) -> bool mask, optional
        Per-layer mask function (default :func:`magnitude_mask`; e.g. ``lambda w, s: block_mask(w, s, (4, 4))``).
    initial_sparsity : float in [0, final_sparsity]
    scope : "layer" (each layer to the target) or "global" (one magnitude threshold across layers;
        ``mask_fn`` must then be left out)

    Returns
    -------
    IterativePruneResult (``weights`` and ``masks`` are lists, one entry per layer, also for a single array)
    """
    layers = [weights] if isinstance(weights, np.ndarray) else weights
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"weights: expected an array or a list of arrays, got {type(weights).__name__}")
    ws = [_weights(w, f"weights[{i}]").copy() for i, w in enumerate(layers)]
    final_sparsity = check_fraction(final_sparsity, "final_sparsity")
    initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
    steps = check_int(steps, "steps", minimum=1)
    check_choice(scope, "scope", ("layer", "global"))
    if finetune_fn is not None and not callable(finetune_fn):
        raise TypeError("finetune_fn: expected a callable(weights, masks, step) or None")
    if mask_fn is not None and not callable(mask_fn):
        raise TypeError("mask_fn: expected a callable(w, sparsity) -> bool mask or None")
    if scope == "global" and mask_fn is not None:
        raise ValueError("mask_fn: not supported with scope='global' (global pruning is by magnitude)")
    if mask_fn is None:
        mask_fn = magnitude_mask
    # validates initial <= final
    cubic_sparsity(0, initial_sparsity, final_sparsity, 0, steps)

    masks = [np.ones(w.shape, dtype=np.bool_) for w in ws]
    result = IterativePruneResult(weights=ws, masks=masks)
    for step in range(1, steps + 1):
        target = cubic_sparsity(step, initial_sparsity, final_sparsity, 0, steps)
        # pruned entries already hold 0, the smallest magnitude, so they are ranked first for pruning
        if scope == "global":
            new = global_magnitude_masks(ws, target)
        else:
            new = [mask_fn(w, target) for w in ws]
        for i, (w, m_new) in enumerate(zip(ws, new)):
            m_new = np.asarray(m_new)
            if m_new.dtype != np.bool_ or m_new.shape != w.shape:
                raise ValueError(f"mask_fn: expected a bool mask of shape {w.shape}, got {m_new.dtype} {m_new.shape}")
            masks[i] = masks[i] & m_new
        stats = [mask_stats(w, mk) for w, mk in zip(ws, masks)]
        totals = [float(np.square(w, dtype=np.float64).sum()) for w in ws]
        for w, mk in zip(ws, masks):
            w[~mk] = 0
        size = sum(s.size for s in stats)
        total = sum(totals)
        removed = sum(s.energy_removed * t for s, t in zip(stats, totals))
        result.history.append({
            "step": step,
            "target": target,
            "sparsity": (size - sum(s.kept for s in stats)) / size if size else 0.0,
            "energy_removed": removed / total if total > 0 else 0.0,
        })
        if finetune_fn is not None:
            returned = finetune_fn(ws, [mk.copy() for mk in masks], step)
            if returned is not None:
                if not isinstance(returned, (list, tuple)) or len(returned) != len(ws):
                    raise ValueError(f"finetune_fn: expected None or a list of {len(ws)} arrays, "
                                     f"got {type(returned).__name__}")
                ws = [_weights(w, f"finetune_fn result[{i}]").copy() for i, w in enumerate(returned)]
                for w, mk in zip(ws, masks):
                    if w.shape != mk.shape:
                        raise ValueError(f"finetune_fn: returned an array of shape {w.shape}, expected {mk.shape}")
            for w, mk in zip(ws, masks):
                w[~mk] = 0
        result.weights = ws
    result.masks = masks
    return result

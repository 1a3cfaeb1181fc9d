"""STREAM-style memory bandwidth of this machine, measured with Numba kernels.

``stream_bandwidth(nbytes, kind="triad", threads=None)`` runs McCalpin's STREAM copy (``a = b``) or triad
(``a = b + s * c``) over float64 arrays whose combined size is ``nbytes`` (pick a size far above the last
level cache for DRAM bandwidth, a small one for cache bandwidth) and returns the median bytes/s.  Bytes are
counted the STREAM way: 16 bytes per element for copy, 24 for triad (the write-allocate read is not
counted).  The GEMV benchmark compares its weight bytes/s with this, and calibration stores it in the host
profile.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
from numba import config as numba_config
from numba import get_num_threads, njit, prange, set_num_threads

from ._validate import check_choice, check_int

__all__ = ["stream_bandwidth", "read_bandwidth", "last_level_cache_bytes", "STREAM_KINDS"]

#: kernels and the bytes STREAM counts per element for each
STREAM_KINDS = {"copy": 16, "triad": 24}


@njit(parallel=True, cache=True)
def _copy_kernel(a, b, chunks):  # pragma: no cover - compiled
    n = a.shape[0]
    step = (n + chunks - 1) // chunks
    for t in prange(chunks):
        for i in range(t * step, min(n, (t + 1) * step)):
            a[i] = b[i]


@njit(parallel=True, cache=True)
def _triad_kernel(a, b, c, s, chunks):  # pragma: no cover - compiled
    n = a.shape[0]
    step = (n + chunks - 1) // chunks
    for t in prange(chunks):
        for i in range(t * step, min(n, (t + 1) * step)):
            a[i] = b[i] + s * c[i]


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (from /sys; 32 MiB when it cannot be read)."""
    import glob

    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path, encoding="utf-8") as fh:
                txt = fh.read().strip().upper()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(txt[-1:], 1)
        try:
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or 32 * 1024**2


@contextlib.contextmanager
def _numba_threads(threads: int | None):
    """Run the body with ``threads`` Numba threads (None: as set), restoring the setting afterwards."""
    old = get_num_threads()
    if threads is not None:
        set_num_threads(check_int(threads, "threads", minimum=1, maximum=numba_config.NUMBA_NUM_THREADS))
    try:
        yield get_num_threads()
    finally:
        if threads is not None:
            set_num_threads(old)


def _median_seconds(call, repeats: int) -> float:
    """Median wall time of ``call()`` over ``repeats`` timed runs after one warm-up run."""
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        call()
        if r:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def stream_bandwidth(nbytes: int | None = None, kind: str = "triad", threads: int | None = None,
                     repeats: int = 7) -> float:
    """Median STREAM bandwidth in bytes/s.

    Parameters
    ----------
    nbytes : int or None
        Combined size of the arrays (2 arrays for copy, 3 for triad).  None: 8x the last-level cache (at
        least 256 MiB), i.e. DRAM bandwidth.
    kind : {"copy", "triad"}
    threads : int or None
        Numba threads for the measurement (restored afterwards); None keeps the current setting.
    repeats : int >= 1
        Timed repetitions after one warm-up; the median is returned.
    """
    check_choice(kind, "kind", tuple(STREAM_KINDS))
    repeats = check_int(repeats, "repeats", minimum=1)
    if nbytes is None:
        nbytes = max(8 * last_level_cache_bytes(), 256 * 1024**2)
    nbytes = check_int(nbytes, "nbytes", minimum=1024)
    narr = 2 if kind == "copy" else 3
    n = max(1, nbytes // (8 * narr))
    with _numba_threads(threads) as nthreads:
        a = np.zeros(n)
        b = np.full(n, 1.0)
        c = np.full(n, 2.0)
        chunks = nthreads  # one contiguous chunk per thread: each streams its own range
        if kind == "copy":
            seconds = _median_seconds(lambda: _copy_kernel(a, b, chunks), repeats)
        else:
            seconds = _median_seconds(lambda: _triad_kernel(a, b, c, 3.0, chunks), repeats)
    return STREAM_KINDS[kind] * n / seconds


@njit(parallel=True, cache=True)
def _read_kernel(x, chunks, sweeps, out):  # pragma: no cover - compiled
    n = x.size
    per = (n + chunks - 1) // chunks
    for t in prange(chunks):
        lo = t * per
        hi = min(n, lo + per)
        acc = np.uint64(0)
        for s in range(sweeps):
            # the xor with the sweep number keeps every sweep a real pass (nothing to hoist)
            off = np.uint64(s)
            for i in range(lo, hi):
                # an unsigned index skips Numba's negative-index wraparound, which would turn the loads
                # into gathers (vpgatherqq) and measure the gather unit, not the memory
                acc ^= x[np.uintp(i)] + off
        out[t] = acc


def read_bandwidth(nbytes: int, threads: int | None = None, repeats: int = 5,
                   min_traffic: int = 256 * 1024**2) -> float:
    """Median read bandwidth in bytes/s over a working set of ``nbytes`` (all threads together).

    Each thread reads its own contiguous slice, sweeping it repeatedly inside one kernel call until about
    ``min_traffic`` bytes are read, so small (cache-sized) working sets measure the cache, not the call
    overhead.  Use a working set of about half a cache level per thread to measure that level.
    """
    nbytes = check_int(nbytes, "nbytes", minimum=1024)
    repeats = check_int(repeats, "repeats", minimum=1)
    n = max(1, nbytes // 8)
    sweeps = max(1, -(-check_int(min_traffic, "min_traffic", minimum=1) // (8 * n)))
    with _numba_threads(threads) as nthreads:
        x = np.arange(n, dtype=np.uint64)
        out = np.zeros(nthreads, dtype=np.uint64)
        seconds = _median_seconds(lambda: _read_kernel(x, nthreads, sweeps, out), repeats)
    return 8.0 * n * sweeps / seconds

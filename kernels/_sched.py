"""Work distribution of the parallel kernels: atomic counters that the threads take task numbers from.

A static schedule (``prange`` over the tasks) fixes each thread's share before the call starts, so the call
lasts as long as its slowest thread.  On a shared machine the two cores of this project's VM are slowed
independently (co-tenants on the cores' sibling hyperthreads: measured uncorrelated between the two vCPUs,
one below 80% of its median while the other ran above 90% in a quarter of 100 ms windows).

Two schemes, both built on :func:`fetch_add`:

* one shared queue (``fetch_add(queue, 0)``): a thread takes the next task when it is done with its last one;
* :func:`next_task`, per-thread ranges with stealing: thread ``w`` first takes the tasks of its own contiguous
  range, in order, then helps empty the others' ranges.  While no core runs slow, every thread streams through
  one contiguous range, as with a static split (the hardware and software prefetches keep running ahead);
  measured on the cold INT4 GEMV, a single queue of 128-row items lost 5% to a static split in calm phases,
  this scheme won 4-8% over it.

Usage inside a compiled kernel (``workers`` = the thread count, passed in by the caller)::

    queue = task_queues(workers)
    for w in prange(workers):
        t, done = next_task(queue, w, workers, ntask, 0)
        while t < ntask:
            ...                       # task t: writes only its own outputs, in a fixed order
            t, done = next_task(queue, w, workers, ntask, done)

Every task writes its own outputs in an order that does not depend on which thread runs it, so results stay
bit-identical for any thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_I64 = ir.IntType(64)


@intrinsic
def fetch_add(typingctx, counter, idx):
    """Atomically ``old = counter[idx]; counter[idx] += 1; return old`` (``counter``: an int64 array)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and isinstance(idx, types.Integer)):
        return None
    sig = types.int64(counter, idx)

    def codegen(context, builder, signature, args):
        counter_v, idx_v = args
        st = signature.args
        idx_v = context.cast(builder, idx_v, st[1], types.int64)
        ary = context.make_array(st[0])(context, builder, counter_v)
        ptr = builder.gep(builder.bitcast(ary.data, _I64.as_pointer()), [idx_v])
        return builder.atomic_rmw("add", ptr, ir.Constant(_I64, 1), "monotonic")

    return sig, codegen


#: int64 slots between two threads' counters: one 64-byte line each, so the owners' updates do not contend
_STRIDE = 8


@njit
def task_queues(workers):  # pragma: no cover - compiled
    """The counters of :func:`next_task` for ``workers`` threads (all zero: nothing taken).

    A plain call with a plain loop: inlined into a ``parallel=True`` kernel, ``np.zeros`` becomes a parallel
    loop of its own, one more thread-pool launch (~1.5 us) per call."""
    q = np.empty(_STRIDE * workers, np.int64)
    for i in range(q.shape[0]):
        q[i] = 0
    return q


@njit(inline="always")
def next_task(queue, w, workers, ntask, done):  # pragma: no cover - compiled
    """``(t, done)``: the next task of thread ``w`` out of ``ntask`` (``ntask`` when none is left).

    Range ``r`` holds tasks ``[r * ntask // workers, (r + 1) * ntask // workers)`` and counts in
    ``queue[_STRIDE * r]`` how many of them were taken.  Thread ``w`` takes from ranges ``w, w + 1, ...`` (mod
    ``workers``), moving on when one is empty; ``done`` (0 at the start) is how many it has found empty."""
    while done < workers:
        r = (w + done) % workers
        t = r * ntask // workers + fetch_add(queue, _STRIDE * r)
        if t < (r + 1) * ntask // workers:
            return t, done
        done += 1
    return ntask, done


@njit(inline="always")
def chunk_workers(ntask, chunk, workers):  # pragma: no cover - compiled
    """Threads worth starting for ``ntask`` tasks taken ``chunk`` at a time by :func:`next_chunk`."""
    return min(workers, (ntask + chunk - 1) // chunk)


@njit(inline="always")
def next_chunk(queue, w, workers, ntask, chunk, done):  # pragma: no cover - compiled
    """``(t0, t1, done)``: the next ``chunk`` consecutive tasks ``[t0, t1)`` of thread ``w`` (:func:`next_task` over
    the chunks of ``ntask`` tasks); ``t0 >= ntask`` when none is left.  Used as :func:`next_task` is (module
    docstring), with ``nw = chunk_workers(ntask, chunk, workers)`` threads and ``for t in range(t0, t1)`` per
    chunk (e.g. :func:`memwall.kernels.gemm._int4_gemv_zmm_kernel`)."""
    nchunk = (ntask + chunk - 1) // chunk
    ch, done = next_task(queue, w, workers, nchunk, done)
    return ch * chunk, min(ntask, (ch + 1) * chunk), done


# ------------------------------------------------------------------------------------------------
# thread count of the calling thread, cheaply
# ------------------------------------------------------------------------------------------------
_thread_fns = None


def _bind_thread_fns():
    """(get, set) of the calling thread's Numba thread count.  ``numba.get_num_threads`` /
    ``numba.set_num_threads`` take the pool's launch lock and check their argument on every call (~3 us and
    ~4 us here); once the pool runs, ``numba.np.ufunc.parallel`` holds the threading layer's own C functions
    (``_get_num_threads`` / ``_set_num_threads``, ~0.3 us), which the public ones call after their checks.
    Those are private names: when they are missing or disagree with the public function, the public
    functions are used."""
    n = numba.get_num_threads()  # starts the pool
    try:
        from numba.np.ufunc import parallel as _par

        get, put = _par._get_num_threads, _par._set_num_threads
        if callable(get) and callable(put) and int(get()) == n:
            return (lambda: int(get())), put
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    return numba.get_num_threads, numba.set_num_threads


def num_threads() -> int:
    """``numba.get_num_threads()`` of the calling thread (what its next parallel kernel uses), ~10x cheaper:
    the small kernels' wrappers asked for it several times per call."""
    global _thread_fns
    if _thread_fns is None:
        _thread_fns = _bind_thread_fns()
    return _thread_fns[0]()


def call_serial(kernel, *args):
    """``kernel(*args)`` on the calling thread only: the calling thread's Numba thread count is 1 for the
    call and restored after it (exceptions included), for ~1 us instead of ~14 us through the public
    functions."""
    old = num_threads()
    if old == 1:
        return kernel(*args)
    put = _thread_fns[1]
    put(1)
    try:
        return kernel(*args)
    finally:
        put(old)

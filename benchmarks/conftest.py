"""Benchmark settings: pin every thread pool so BLAS, torch and Numba do not fight over the 2 cores.

All benchmarks run with ``MEMWALL_BENCH_THREADS`` threads (default: all CPUs of this process) in each
library, one library at a time.  Ratios between a kernel and its baseline are computed from medians of the
same run (see ``benchmarks/report.py``).
"""
from __future__ import annotations

import os

# short OpenBLAS spin-wait, set before NumPy loads OpenBLAS (why: memwall.kernels.cpu)
from memwall.kernels.cpu import apply_thread_env_defaults  # noqa: E402 - stdlib-only module

apply_thread_env_defaults()

import pytest


def bench_threads() -> int:
    from memwall.kernels.cpu import cpu_count

    return int(os.environ.get("MEMWALL_BENCH_THREADS", cpu_count()))


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    import numba
    from threadpoolctl import threadpool_limits

    n = bench_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch  # noqa: F401 - optional peer

        torch.set_num_threads(n)
    except ImportError:
        pass
    with threadpool_limits(limits=n):
        yield n

"""CPU feature detection (what the JIT can target on this host)."""
from __future__ import annotations

import functools
import os
import platform


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """LLVM's names of the host CPU features that are enabled (e.g. ``avx512f``, ``avx512vnni``)."""
    try:
        import llvmlite.binding as llvm
    except ImportError:  # pragma: no cover - numba always ships llvmlite
        return frozenset()
    feats = llvm.get_host_cpu_features()
    return frozenset(name for name, on in feats.items() if on)


@functools.lru_cache(maxsize=1)
def host_cpu_name() -> str:
    """LLVM's name for the host CPU (e.g. ``znver4``)."""
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def has_avx512_vnni() -> bool:
    """True when the CPU has AVX-512 F/BW and AVX-512 VNNI (``vpdpbusd`` on zmm registers)."""
    f = host_features()
    return {"avx512f", "avx512bw", "avx512vnni"} <= f


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """Marketing name of the CPU from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: Thread-pool settings the CLI and the benchmarks apply (each only where the user has not set it).
#: ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS workers otherwise spin ~2**28 cycles (about 0.1 s) after every BLAS
#: call and steal the cores from the Numba kernel that runs next (measured: an INT8 GEMM right after a NumPy
#: matmul ran 2.5x slower); a short spin keeps BLAS as fast.  (``OMP_PROC_BIND`` was tried and rejected: it
#: binds the main thread to core 0, which every child process then inherits, and A/B runs showed no gain.)
THREAD_ENV_DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4"}


def apply_thread_env_defaults(env=None):
    """Set ``THREAD_ENV_DEFAULTS`` in ``env`` (default ``os.environ``) where unset; returns ``env``.

    Must run before NumPy loads OpenBLAS to take effect."""
    env = os.environ if env is None else env
    for key, value in THREAD_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env

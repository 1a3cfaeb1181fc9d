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

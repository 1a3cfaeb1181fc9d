"""One place for tolerances, limits and switches used by the kernels *and* their tests.

Environment variables (read once, at import):

``MEMWALL_ISA``
    ``auto`` (default) picks the fastest kernel path the CPU supports; ``generic`` forces the pure-Numba
    fallback (no explicit intrinsics); ``vnni`` demands the AVX-512 VNNI path and fails at import of the
    GEMM module when the CPU lacks it.  Tests run both paths by passing ``path=`` explicitly.
"""
from __future__ import annotations

import os

#: Allowed values of ``MEMWALL_ISA``.
ISA_CHOICES = ("auto", "generic", "vnni")


def requested_isa() -> str:
    """The kernel path asked for by ``MEMWALL_ISA`` (validated)."""
    value = os.environ.get("MEMWALL_ISA", "auto").strip().lower() or "auto"
    if value not in ISA_CHOICES:
        raise ValueError(f"MEMWALL_ISA={value!r}: expected one of {', '.join(ISA_CHOICES)}")
    return value


# --- integer accumulation limits -------------------------------------------------------------------
#: Largest value an int32 accumulator may hold.
INT32_MAX = 2**31 - 1

# --- float tolerances (kernels vs. float64 NumPy references) ---------------------------------------
#: Relative tolerance for float32 kernels whose summation order differs from the reference.
FLOAT32_RTOL = 1e-4
#: Absolute tolerance (scaled by sqrt(K) * max|a| * max|b| in tests) for float32 reductions.
FLOAT32_ATOL = 1e-5

# --- sparse x dense products (memwall.kernels.spmm) ------------------------------------------------------
#: Bytes of X (rows of the dense operand) one reduction panel of the CSR / N:M kernels covers (~half of L1d).
SPMM_PANEL_BYTES = 16384
#: Output rows a thread owns at a time in the panelled CSR / N:M kernels.
SPMM_ROW_CHUNK = 16
#: Fewest stored values per row a panel should hold on average (sparser rows get taller panels).
SPMM_PANEL_MIN_NNZ = 24

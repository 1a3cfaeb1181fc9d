"""memwall.kernels — fast Numba-JIT CPU kernels for compressed neural networks.

Quantization (``quant``), quantized GEMM/GEMV (``gemm``), sparse formats (``formats``) and their products
(``spmm``), pruning masks (``prune``) and gradient sparsification (``gradient``).  Every public function is a
validated wrapper over a private ``@njit(cache=True)`` kernel.

Names are resolved lazily from the submodules' ``__all__`` so that ``import memwall.kernels`` stays cheap
(Numba is imported only when a kernel is first used).
"""
from __future__ import annotations

import importlib

_SUBMODULES = ("quant", "gemm", "formats", "spmm", "prune", "gradient")


def _exports() -> dict[str, str]:
    table: dict[str, str] = {}
    for mod in _SUBMODULES:
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{mod}":
                continue
            raise
        for name in getattr(module, "__all__", ()):
            table.setdefault(name, mod)
    return table


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    table = _exports()
    if name not in table:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{table[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_exports()))

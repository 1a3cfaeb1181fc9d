"""Validation helpers for the public wrappers.

Every public kernel wrapper checks its inputs with these before a private ``@njit`` kernel sees them: the
kernels run without bounds checks, so a wrong dtype, shape, stride or index must become a ``TypeError`` /
``ValueError`` here that names the argument and what was expected.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

import numpy as np


def _dtype_names(dtypes) -> str:
    return " or ".join(np.dtype(d).name for d in dtypes)


def as_array(
    x,
    name: str,
    *,
    dtype=None,
    ndim: int | Iterable[int] | None = None,
    contiguous: bool = True,
    allow_convert: bool = False,
) -> np.ndarray:
    """Check that ``x`` is a NumPy array of the expected dtype and ndim; return a C-contiguous view or copy.

    dtype: one dtype or a tuple of accepted dtypes.  With ``allow_convert`` a non-array or a different
    *numeric* dtype is converted to the first accepted dtype (used for float inputs); otherwise a wrong dtype
    is a ``TypeError``.  Non-contiguous or negative-stride arrays are copied (never misread) when
    ``contiguous`` is set.
    """
    if (type(x) is np.ndarray and x.flags.c_contiguous and (dtype is None or (
            not isinstance(dtype, (tuple, list)) and x.dtype == dtype)) and (
            ndim is None or (x.ndim == ndim if isinstance(ndim, int) else (isinstance(ndim, tuple) and x.ndim in ndim)))):
        return x  # the common call, settled in a few attribute tests (the checks below cost ~3 us)
    if not isinstance(x, np.ndarray):
        if allow_convert and dtype is not None:
            try:
                x = np.asarray(x)
            except Exception as exc:  # noqa: BLE001 - re-raised with the argument name
                raise TypeError(f"{name}: expected an array-like of numbers, got {type(x).__name__}") from exc
        else:
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if dtype is not None:
        accepted = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, (tuple, list)) else (dtype,)))
        if x.dtype not in accepted:
            # complex is numeric to NumPy, but casting it to a real dtype drops the imaginary part silently
            if allow_convert and x.dtype.kind in "biuf":
                x = x.astype(accepted[0])
            else:
                raise TypeError(f"{name}: expected dtype {_dtype_names(accepted)}, got {x.dtype.name}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name}: expected a {want} array, got shape {x.shape}")
    if contiguous and not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int within [minimum, maximum]; bools and floats are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an integer <= {maximum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> object:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_fraction(value, name: str, *, low: float = 0.0, high: float = 1.0,
                   include_low: bool = True, include_high: bool = True) -> float:
    """A finite real number in the interval between ``low`` and ``high`` (ends included as asked)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value)
    ok = ok and (value >= low if include_low else value > low)
    ok = ok and (value <= high if include_high else value < high)
    if not ok:
        lb = "[" if include_low else "("
        rb = "]" if include_high else ")"
        raise ValueError(f"{name}: expected a value in {lb}{low}, {high}{rb}, got {value}")
    return value


def check_finite(x: np.ndarray, name: str) -> None:
    """No NaN or Inf anywhere in ``x``."""
    if x.size == 0 or x.dtype.kind in "biu":
        return
    if x.dtype.kind == "f" and np.isfinite(x.min()) and np.isfinite(x.max()):
        return  # min / max propagate NaN and reach +-Inf: two reductions, no temporary array
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.ravel()))[0]
        raise ValueError(f"{name}: expected finite values, found {x.ravel()[bad]} at flat index {bad}")


def check_positive(x: np.ndarray, name: str) -> None:
    """All entries finite and > 0 (scales)."""
    if x.size and x.dtype.kind == "f" and x.min() > 0 and x.max() < np.inf:
        return  # NaN fails both comparisons
    check_finite(x, name)
    if x.size and not (x > 0).all():
        bad = np.flatnonzero(~(x.ravel() > 0))[0]
        raise ValueError(f"{name}: expected values > 0, found {x.ravel()[bad]} at flat index {bad}")


def check_range(x: np.ndarray, name: str, low: int, high: int) -> None:
    """All integer entries within [low, high]; names the first offending position."""
    if x.size == 0:
        return
    lo, hi = x.min(), x.max()
    if lo < low or hi > high:
        bad = np.flatnonzero((x.ravel() < low) | (x.ravel() > high))[0]
        pos = np.unravel_index(bad, x.shape)
        raise ValueError(
            f"{name}: expected values in [{low}, {high}], found {x.ravel()[bad]} at index {tuple(int(p) for p in pos)}"
        )


def check_same(a: int, b: int, what: str) -> None:
    """Two dimensions that must agree (e.g. the inner dimension of a product)."""
    if a != b:
        raise ValueError(f"{what}: {a} != {b}")

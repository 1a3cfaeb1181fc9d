"""Shared test settings: seeded RNG, bounded hypothesis budgets, BLAS pinned to the Numba thread count."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# JIT compilation makes the first example slow; deadlines would only measure the compiler.
settings.register_profile(
    "memwall",
    deadline=None,
    max_examples=int(os.environ.get("MEMWALL_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("memwall")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every test is reproducible."""
    return np.random.default_rng(20261128)

"""Simulator throughput: layer-configuration estimates per second.

The issue asks for >= 1,000,000 layer-configuration estimates per second on 2 cores through the vectorized
path (:func:`memwall.simulator.roofline.estimate_gemm_arrays`, speedup against the default baseline
included).  ``ops`` in extra_info is the number of configurations per call, so the report's ``Gop/s``
column reads as "billions of configurations per second" (x 1000 = millions).  The scalar record path
(``estimate``, one explained record per call) is timed for reference in its own group; compare the
``Gop/s`` columns (configurations per second / 1e9).

    python -m pytest benchmarks/bench_simulator.py -o addopts= -m "" --benchmark-enable --benchmark-only \
        --benchmark-json=/tmp/sim.json && python benchmarks/report.py --json /tmp/sim.json

(pytest collects only ``test_*.py`` from a folder, so ``report.py -k simulator`` alone does not find this
file until the benchmark folder's configuration also collects ``bench_*.py``.)
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import memwall.simulator.roofline as roofline

from memwall.simulator.compression import Compression
from memwall.simulator.ops import GemmOp
from memwall.simulator.roofline import estimate, estimate_gemm_arrays

N_CONFIGS = 1_000_000


def _sweep(n: int, seed: int = 20261128) -> dict:
    """A mixed sweep: shapes, weight dtypes, all five formats, sparsities."""
    rng = np.random.default_rng(seed)
    fmts = np.array(["dense", "csr", "bsr:16x16", "nm:2:4", "channel"])
    fmt = fmts[rng.integers(0, len(fmts), n)]
    sp = np.where(np.isin(fmt, ["dense", "nm:2:4"]), 0.0, rng.random(n) * 0.95)
    return dict(
        m=rng.integers(1, 8192, n),
        n=rng.integers(1, 256, n) * 64,
        k=rng.integers(1, 256, n) * 64,
        weights=np.array(["fp16", "int8", "int4", "bf16"])[rng.integers(0, 4, n)],
        format=fmt,
        sparsity=sp,
    )


@pytest.mark.parametrize("device", ["a100-80gb", "epyc-genoa"])
def test_bench_vector_sweep(benchmark, device):
    sweep = _sweep(N_CONFIGS)
    estimate_gemm_arrays(device, **{k: v[:1000] for k, v in sweep.items()})  # warm tables, page in
    benchmark.group = f"simulator: {N_CONFIGS:,} mixed GEMM configs on {device}"
    benchmark.extra_info.update(impl="memwall", ops=N_CONFIGS)
    out = benchmark.pedantic(estimate_gemm_arrays, args=(device,), kwargs=sweep, rounds=5, iterations=1,
                             warmup_rounds=1)
    assert out["time_s"].shape == (N_CONFIGS,) and np.isfinite(out["speedup"]).all()
    benchmark.extra_info["configs_per_s_target"] = 1e6
    # CPU seconds of one call (all threads): on a shared machine the wall time mostly measures the neighbours
    t0 = time.process_time()
    estimate_gemm_arrays(device, **sweep)
    benchmark.extra_info["cpu_s_per_call"] = time.process_time() - t0


@pytest.mark.parametrize("device", ["a100-80gb", "epyc-genoa"])
def test_bench_vector_one_format(benchmark, device):
    """One config over a sweep of shapes (the crossover / trend use case): format codes, no string parsing."""
    rng = np.random.default_rng(7)
    m = rng.integers(1, 8192, N_CONFIGS)
    comp = Compression.parse("int4", group=128)
    benchmark.group = f"simulator: {N_CONFIGS:,} shapes, one config (int4 g128) on {device}"
    benchmark.extra_info.update(impl="memwall", ops=N_CONFIGS)
    benchmark.pedantic(estimate_gemm_arrays, args=(device, m, 4096, 4096), kwargs=dict(comp=comp), rounds=5,
                       iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device", ["a100-80gb", "epyc-genoa"])
def test_bench_scalar_records(benchmark, device):
    """The explained-record path, per call (same group as the vector sweep: the ratio is vector / scalar)."""
    n = 200
    sweep = _sweep(n, seed=3)
    cases = [(GemmOp("x", int(sweep["m"][i]), int(sweep["n"][i]), int(sweep["k"][i])),
              Compression.parse(str(sweep["weights"][i]), format=str(sweep["format"][i]),
                                sparsity=float(sweep["sparsity"][i])))
             for i in range(n)]

    def run():
        roofline._MEMO.clear()  # time the model, not the memo of repeated calls
        for op, comp in cases:
            estimate(device, op, comp)

    run()
    benchmark.group = f"simulator: {n} scalar estimate() records on {device}"
    benchmark.extra_info.update(impl="memwall", ops=n)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)

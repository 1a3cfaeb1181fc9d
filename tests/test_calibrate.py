"""Calibration writes a valid host profile atomically; validation's error arithmetic; published GPU cases."""
from __future__ import annotations

import json
import math

import pytest

from memwall.simulator import calibrate as cal
from memwall.simulator import validate as val
from memwall.simulator.cli import main
from memwall.simulator.devices import load_device, save_profile


def _fake_measurements(**over) -> dict:
    m = {
        "threads": 2, "caches": [
            {"name": "l1d", "level": 1, "bytes": 32 << 10, "instances": 2},
            {"name": "l2", "level": 2, "bytes": 1 << 20, "instances": 2},
            {"name": "llc", "level": 3, "bytes": 36 << 20, "instances": 1},
        ],
        "read_bw_l1d": 400e9, "read_bw_l2": 150e9, "read_bw_llc": 60e9, "read_bw_dram": 12e9,
        "triad_bw_dram": 11e9, "read_bw_dram_1thread": 8e9, "fp32_gemm_ops": 250e9, "fp64_gemm_ops": 120e9,
        "int8_gemm_ops": 1000e9, "call_overhead_s": 3e-6, "int4_gemv_bw": 10e9, "int4_gemv_weights_per_s": 10e9, "csr_ops": 20e9,
        "csr_dense_equiv_ops": 200e9, "bsr16_ops": 150e9, "bsr16_dense_equiv_ops": 600e9, "nm24_ops": 170e9,
        "nm24_dense_equiv_ops": 340e9, "fp32_gemm_ops_spmm_shape": 240e9, "dram_bytes": 24 << 30,
    }
    m.update(over)
    return m


def _saved(tmp_path, m, name="host.toml"):
    doc, comment = cal.profile_doc(m, cpu="Test CPU", date="2026-11-28", versions="numba x")
    return save_profile(doc, tmp_path / name, comment=comment)


def test_profile_doc_loads_with_measured_numbers(tmp_path):
    dev = _saved(tmp_path, _fake_measurements())
    assert dev.kind == "cpu"
    assert dev.peak("fp32") == pytest.approx(250e9)
    assert dev.peak("int8") == pytest.approx(1000e9)
    assert dev.efficiency.bsr_matrix_fraction == pytest.approx(150 / 250, rel=1e-5)
    assert dev.efficiency.nm_sparse_fraction == pytest.approx(170 / 250, rel=1e-5)
    assert [l.name for l in dev.memory_levels] == ["l1d", "l2", "llc", "dram"]
    assert dev.memory_levels[-1].bandwidth_bytes_per_s == pytest.approx(12e9)
    assert dev.efficiency.dram_bandwidth_fraction == 1.0
    # 250e9 / 10e9 = 25 peak ops per weight: 2 FMA ops + 3 conversion ops at 3 / 23 of the peak
    assert dev.efficiency.conversion_vector_fraction == pytest.approx(3 / 23, rel=1e-5)
    assert dev.efficiency.csr_vector_fraction == pytest.approx(20 / 250, rel=1e-5)
    assert dev.kernel_launch_s == pytest.approx(3e-6)
    assert dev.sources["compute.vector.fp32_dense_tops"].startswith(
        "measured by memwall calibrate on Test CPU, 2026-11-28, 2 threads")
    assert (tmp_path / "host.toml").read_text().startswith("# Host device profile written by `memwall calibrate`")


def test_host_sparse_kernels_are_modelled_with_their_measured_efficiency(tmp_path):
    """A CPU has no 2:4 units: the model runs our software N:M and BSR kernels at the calibrated fractions."""
    from memwall.simulator.compression import Compression
    from memwall.simulator.ops import GemmOp
    from memwall.simulator.roofline import estimate

    path = _saved(tmp_path, _fake_measurements()).path
    op = GemmOp("g", 64, 4096, 4096)  # compute-bound on this profile
    nm = estimate(path, op, Compression(weights="fp32", acts="fp32", format="nm", n=2, m=4))
    # kept multiply-adds (half) at 170 / 250 of the 250 Gop/s peak
    assert nm.time_by_roof["vector"] == pytest.approx(op.ops / 2 / 170e9, rel=1e-6)
    bsr = estimate(path, op, Compression(weights="fp32", acts="fp32", format="bsr", block=(16, 16), sparsity=0.75))
    assert bsr.time_by_roof["vector"] == pytest.approx(op.ops / 4 / 150e9, rel=1e-6)


def test_atomic_write_keeps_old_profile_on_interrupt(tmp_path, monkeypatch):
    from memwall.simulator import devices

    path = tmp_path / "host.toml"
    path.write_text("old")
    doc, comment = cal.profile_doc(_fake_measurements(), cpu="c", date="d", versions="v")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(devices.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_profile(doc, path, comment=comment)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["host.toml"]  # no temporary file left behind


def test_detect_caches_sizes_increase():
    caches = cal.detect_caches()
    assert caches and all(c["bytes"] > 0 and c["instances"] >= 1 for c in caches)
    per_instance = [c["bytes"] for c in caches]
    assert per_instance == sorted(per_instance)


def test_calibration_on_a_tiny_budget_writes_a_valid_profile(tmp_path):
    out = tmp_path / "sub" / "host.toml"
    res = cal.calibrate(out=out, quick=True, threads=2, _scale=8)
    assert out.exists() and res["path"] == str(out)
    dev = load_device(out)
    assert dev.id == "host" and dev.peak("fp32") > 0 and dev.peak("int8") > 0
    for key in ("read_bw_dram", "fp32_gemm_ops", "int8_gemm_ops", "int4_gemv_bw", "csr_ops"):
        assert math.isfinite(res["measured"][key]) and res["measured"][key] > 0
    # caches are faster than DRAM on any machine
    assert dev.memory_levels[0].bandwidth_bytes_per_s > dev.memory_levels[-1].bandwidth_bytes_per_s


def test_error_arithmetic_on_synthetic_cases():
    assert val.abs_pct_error(110.0, 100.0) == pytest.approx(0.10)
    assert val.abs_pct_error(80.0, 100.0) == pytest.approx(0.20)
    with pytest.raises(ValueError, match="measured"):
        val.abs_pct_error(1.0, 0.0)
    cases = [val.Case("a", "x", 100.0, 110.0), val.Case("b", "x", 100.0, 60.0), val.Case("c", "x", 100.0, 100.0),
             val.Case("d", "y", 10.0, 13.0)]
    s = val.summarize(cases)  # errors: x 0.1, 0.4, 0.0; y 0.3
    assert s["n"] == 4
    assert s["median_abs_error"] == pytest.approx(0.20)
    assert s["families"]["x"]["median_abs_error"] == pytest.approx(0.10)
    assert s["families"]["x"]["p90_abs_error"] == pytest.approx(0.34)  # 0.1 + 0.8 * (0.4 - 0.1)
    assert s["families"]["y"]["median_abs_error"] == pytest.approx(0.30)
    assert s["families"]["x"]["target_met"] and not s["families"]["y"]["target_met"]
    assert not s["target_met"]
    good = [val.Case("a", "x", 100.0, 105.0), val.Case("b", "y", 100.0, 90.0), val.Case("c", "y", 1.0, 1.2)]
    s = val.summarize(good)  # overall median 0.1 <= 0.15, y median 0.15 <= 0.25
    assert s["target_met"] and s["median_abs_error"] == pytest.approx(0.10)


def test_published_gpu_cases_have_sources_and_finite_errors():
    cases = val.gpu_cases()
    assert len(cases) >= 4
    for c in cases:
        assert c.source and c.measured > 0 and c.predicted > 0 and math.isfinite(c.error)


def test_validate_cli_gpu_only_json(capsys):
    assert main(["validate", "--gpu-only", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("median_abs_error", "p90_abs_error", "families", "gpu"):
        assert key in res
    assert res["gpu"]["cases"] and all("error" in c for c in res["gpu"]["cases"])

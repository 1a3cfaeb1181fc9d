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
    for key in ("read_bw_dram", "fp32_gemm_ops", "int8_gemm_ops", "int4_gemv_bw", "csr_ops",
                "quantize_elements_per_s"):
        assert math.isfinite(res["measured"][key]) and res["measured"][key] > 0
    assert res["timing"]["rounds"] == 3 and "min over interleaved rounds" in res["timing"]["statistic"]
    assert 0 < dev.efficiency.quantize_vector_fraction <= 1
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


def test_profile_doc_writes_the_calibrated_model_terms(tmp_path):
    dev = _saved(tmp_path, _fake_measurements(quantize_elements_per_s=5e9, blas_pack_fraction=0.4))
    # 4 ops per quantized element at 5e9 elements/s of the 250e9 fp32 peak
    assert dev.efficiency.quantize_vector_fraction == pytest.approx(4 * 5e9 / 250e9, rel=1e-9)
    assert dev.efficiency.blas_pack_bandwidth_fraction == pytest.approx(0.4, rel=1e-9)
    assert "memwall calibrate" in dev.sources["efficiency.blas_pack_bandwidth_fraction"]
    old = _saved(tmp_path, _fake_measurements(), name="old.toml")  # measurements without them: fields absent
    assert old.efficiency.quantize_vector_fraction is None and old.efficiency.blas_pack_bandwidth_fraction is None


def test_blas_peak_and_packing_are_recovered_from_two_products():
    peak, f, llc_bw, dram_bw, llc = 250e9, 0.5, 60e9, 20e9, 36 << 20
    sq_ops, w_sq = 2.0 * 2048**3, 4.0 * 2048 * 2048  # 16 MiB: LLC-resident
    sk_ops, w_sk = 2.0 * 64 * 4096 * 4096, 4.0 * 4096 * 4096  # 64 MiB: from DRAM
    t_sq = sq_ops / peak + w_sq / (llc_bw * f)
    t_sk = sk_ops / peak + w_sk / (dram_bw * f)
    got = cal._blas_peak_and_packing(sq_ops, t_sq, (2048, 2048, 2048), sk_ops, t_sk, w_sk, llc_bw, dram_bw, llc)
    assert got["fp32_gemm_ops"] == pytest.approx(peak, rel=1e-6)
    assert got["blas_pack_fraction"] == pytest.approx(f, rel=1e-6)
    # the skinny product no slower than its compute at the square GEMM's rate: nothing to attribute to packing
    got = cal._blas_peak_and_packing(sq_ops, 0.07, (2048, 2048, 2048), sk_ops, 0.9 * sk_ops * 0.07 / sq_ops, w_sk,
                                     llc_bw, dram_bw, llc)
    assert got["blas_pack_fraction"] is None and got["fp32_gemm_ops"] == pytest.approx(sq_ops / 0.07)


def test_interleaved_rounds_keep_the_minimum_and_rotate():
    order = []

    def sampler(name, values):
        it = iter(values)

        def fn():
            order.append(name)
            return next(it)

        return val.Sampler(fn)

    entries = {"a": sampler("a", [3.0, 1.0, 2.0]), "b": sampler("b", [5.0, 6.0, 4.0]),
               "c": val.Sampler(lambda: order.append("c") or 7.0, max_samples=1)}
    res = val.interleaved_times(entries, min_rounds=3, max_rounds=3)
    assert res["rounds"] == 3
    assert res["times"]["a"] == {"min_s": 1.0, "median_s": 2.0, "n": 3, "samples": [3.0, 1.0, 2.0]}
    assert res["times"]["b"]["min_s"] == 4.0 and res["times"]["b"]["median_s"] == 5.0
    assert res["times"]["c"]["n"] == 1  # an expensive sampler sits out later rounds
    assert order == ["a", "b", "c", "b", "a", "a", "b"]  # each round starts one entry later


def test_interleaved_rounds_stop_at_the_budget_after_the_minimum():
    ticks = iter(range(0, 10**6, 10))  # every clock reading is 10 s later
    res = val.interleaved_times({"x": val.Sampler(lambda: 1.0)}, min_rounds=2, max_rounds=50, budget_s=5,
                                clock=lambda: next(ticks))
    assert res["rounds"] == 2
    calls = []
    res = val.interleaved_times({"f": lambda: calls.append(1)}, min_time=0.0, min_rounds=4, max_rounds=4)
    t = res["times"]["f"]
    assert t["n"] == 4 and len(calls) == 8 and 0 < t["min_s"] <= t["median_s"]  # a warm-up call per sample


def test_interleaved_ratios_divide_medians_by_the_reference():
    samples = {"memwall": iter([1.0, 3.0, 2.0]), "numpy": iter([8.0, 4.0, 6.0]), "scipy": iter([2.0, 2.0, 2.0])}
    entries = {k: val.Sampler(lambda it=it: next(it)) for k, it in samples.items()}
    assert val.interleaved_ratios(entries, rounds=3) == {"numpy": 3.0, "scipy": 1.0}  # medians 2, 6, 2
    with pytest.raises(ValueError, match="ref"):
        val.interleaved_ratios({"numpy": lambda: None}, rounds=1)


def test_interleaved_rounds_reject_bad_input():
    with pytest.raises(TypeError, match="entries"):
        val.interleaved_times([lambda: None])
    with pytest.raises(TypeError, match=r"entries\['x'\]"):
        val.interleaved_times({"x": 3})
    with pytest.raises(ValueError, match="min_rounds"):
        val.interleaved_times({"x": lambda: None}, min_rounds=5, max_rounds=2)
    with pytest.raises(ValueError, match=r"entries\['x'\]"):
        val.interleaved_times({"x": val.Sampler(lambda: 0.0)})
    with pytest.raises(ValueError, match="max_samples"):
        val.Sampler(lambda: 1.0, max_samples=0)


def test_measured_crossover_arithmetic():
    from memwall.simulator import _host_sweep as H

    pts = [{"format": "dense", "sparsity": 0.0, "time_s": 0.010}]
    for name, _ in ((n, None) for _, n in H.CROSSOVER_FORMATS):
        pts += [{"format": name, "sparsity": 0.5, "time_s": 0.020}, {"format": name, "sparsity": 0.7, "time_s": 0.008},
                {"format": name, "sparsity": 0.9, "time_s": 0.004}]
    rows = H._crossover_rows({"points": pts})
    # speed-ups 0.5, 1.25, 2.5: crossing 1 at 0.5 + (1 - 0.5) * 0.2 / 0.75
    assert rows[0]["crossover"] == pytest.approx(0.5 + 0.5 * 0.2 / 0.75)
    assert pts[1]["speedup"] == pytest.approx(0.5)


def test_anchor_drift_against_the_calibrated_prediction(tmp_path):
    dev = _saved(tmp_path, _fake_measurements(blas_pack_fraction=0.5))
    anchor = {"id": "anchor", "m": 2048, "n": 2048, "k": 2048, "comp": {"weights": "fp32", "acts": "fp32"},
              "warm": True, "time_s": 0.0762, "median_s": 0.08}
    # compute at 250e9 + packing 16 MiB from the LLC at 60 GB/s x 0.5 + the 3 us call overhead
    predicted = 2 * 2048**3 / 250e9 + 4 * 2048 * 2048 / (60e9 * 0.5) + 3e-6
    row = val._anchor_rows(dev, [anchor])[0]
    assert row["calibrated"] == pytest.approx(predicted, rel=1e-6)
    assert row["drift"] == pytest.approx(0.0762 / predicted - 1, rel=1e-6)


def test_weight_only_fraction_from_the_w4a16_measurement():
    # 16 tokens x 4096 x 4096: product 2*16*4096^2 ops; dequantization 3 ops per weight at 0.25 of 250 Gop/s
    ops, deq = 2.0 * 16 * 4096 * 4096, 3.0 * 4096 * 4096 / (250e9 * 0.25)
    m = _fake_measurements(w4_gemm_shape=(16, 4096, 4096))
    m["w4_gemm_s"] = ops / (250e9 * 0.1) + deq + m["call_overhead_s"]  # product at 0.1 of the peak
    assert cal._weight_only_fraction(m, 0.25) == pytest.approx(0.1, rel=1e-9)
    m["w4_gemm_s"] = 0.5 * ops / 250e9  # faster than the peak allows: capped at 1
    assert cal._weight_only_fraction(m, 0.25) == 1.0


def test_csr_split_from_two_batches(tmp_path):
    nnz, c, rate = 1_000_000, 0.8e-9, 100e9
    t = {b: nnz * c + 2 * nnz * b / rate for b in (64, 16)}
    got = cal._csr_split(nnz, 64, t[64], 16, t[16])
    assert got["csr_nonzero_s"] == pytest.approx(c, rel=1e-9) and got["csr_mac_ops"] == pytest.approx(rate, rel=1e-9)
    assert cal._csr_split(nnz, 64, 1e-3, 16, 2e-3) == {}  # noise: slower at the smaller batch, nothing to split
    dev = _saved(tmp_path, _fake_measurements(csr_nonzero_s=c, csr_mac_ops=rate))
    assert dev.csr_nonzero_s == pytest.approx(c, rel=1e-9)
    assert dev.efficiency.csr_vector_fraction == pytest.approx(rate / 250e9, rel=1e-9)


def test_profile_doc_nm_kept_cost(tmp_path):
    dev = _saved(tmp_path, _fake_measurements(nm_kept_s=0.6e-9, nm_mac_ops=120e9))
    assert dev.nm_kept_s == pytest.approx(0.6e-9, rel=1e-9)
    assert dev.efficiency.nm_sparse_fraction == pytest.approx(120 / 250, rel=1e-9)
    assert "batch 64 and 16" in dev.sources["overhead.nm_kept_ns"]


def test_validate_calibrate_times_calibration_with_the_sweep_and_writes_the_profile(tmp_path, monkeypatch):
    """Joint mode on a tiny budget: calibration entries in the sweep's rounds, a valid profile at ``out``,
    predictions made with it; the calibration points stay out of the sweep's cases."""
    from memwall.simulator import _host_sweep as H

    small = [c for c in H.CASES if c[0] in ("gemm fp32 768^3", "bsr16 50% 3072x3072 b32")]
    monkeypatch.setattr(H, "selected_cases", lambda quick=False: small)
    seen = {}
    real_measure = H.measure

    def spy(**kw):
        seen.update(kw)
        return real_measure(**kw)

    monkeypatch.setattr(H, "measure", spy)
    out = tmp_path / "joint" / "host.toml"
    res = val.validate(quick=True, include_gpu=False, include_crossover=False, calibrate=True, out=out, _scale=8)
    cal_info = res["calibration"]
    assert cal_info["path"] == str(out) and cal_info["together"] is True
    assert cal_info["rounds"] == res["host"]["timing"]["rounds"] == 3  # one set of rounds for both
    assert {"sgemm", "int4_gemv", "read_bw_dram", "csr_b2"} <= {k.split(" ", 1)[1] for k in seen["extra_entries"]}
    assert seen["threads"] == cal_info["threads"] == res["host"]["timing"]["threads"]
    dev = load_device(out)
    assert dev.id == "host" and dev.peak("fp32") > 0 and dev.tiling.parallel_units == cal_info["threads"]
    assert "validate --calibrate" in out.read_text()
    assert res["host"]["device"] == str(out)
    assert [c["id"] for c in res["host"]["cases"]] == [c[0] for c in small]
    for c in res["host"]["cases"]:  # predicted with the profile just written
        spec = next(s for s in small if s[0] == c["id"])
        assert c["measured"] > 0 and math.isfinite(c["error"])
        assert c["predicted"] == pytest.approx(val._predict(dev, {
            "id": spec[0], "m": spec[3], "n": spec[4], "k": spec[5], "comp": H._comp(spec[2], spec[6]),
            "warm": spec[6].get("warm", False)}).time_s, rel=1e-12)
    assert len(res["host"]["anchors"]) == 2 and all(math.isfinite(a["drift"]) for a in res["host"]["anchors"])
    assert math.isfinite(res["median_abs_error"])


def test_validate_calibrate_refuses_another_device(capsys, tmp_path):
    rc = main(["validate", "--calibrate", "--device", "a100-40gb", "--out", str(tmp_path / "h.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and "--calibrate" in err and "a100-40gb" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.toml").exists()
    assert main(["validate", "--out", str(tmp_path / "h.toml")]) == 2  # --out only means something with it
    with pytest.raises(ValueError, match="device"):
        val.validate("a100-40gb", calibrate=True)

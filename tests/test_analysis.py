"""Analyses: model totals per phase, format crossover, memory-wall trend, compression tables."""
from __future__ import annotations

import math

import pytest

from memwall.simulator import analysis, roofline
from memwall.simulator.compression import Compression
from memwall.simulator.devices import load_device
from memwall.simulator.ops import GemmOp
from memwall.simulator.workload import Linear
from memwall.simulator.zoo import load_model

# datasheet figures (shared/reference/hardware.md): dense FP16 peak (ops/s), HBM bandwidth (bytes/s)
DATASHEET = {"p100": (21.2e12, 732e9), "v100": (125e12, 900e9), "a100-40gb": (312e12, 1555e9),
             "h100-sxm": (989.4e12, 3.35e12)}


# --------------------------------------------------------------------------------------------- trend
def test_trend_ridge_point_grows_from_p100_to_h100():
    pts = analysis.memory_wall_trend(model="alexnet")
    assert [p.device for p in pts] == ["p100", "v100", "a100-40gb", "h100-sxm"]
    ridges = [p.ridge_ops_per_byte for p in pts]
    assert all(a < b for a, b in zip(ridges, ridges[1:]))
    for p in pts:
        peak, bw = DATASHEET[p.device]
        assert p.ridge_ops_per_byte == pytest.approx(peak / bw, rel=0.02)
        assert 0 <= p.memory_bound_layers <= p.layers == 12
        assert 0.0 <= p.memory_bound_fraction <= 1.0 and 0.0 <= p.memory_bound_time_fraction <= 1.0
    # compute outgrew bandwidth: peak grew more than bandwidth from P100 to H100
    assert pts[-1].peak_ops_per_s / pts[0].peak_ops_per_s > pts[-1].dram_bandwidth / pts[0].dram_bandwidth


def test_trend_llm_decode_is_memory_bound_everywhere():
    pts = analysis.memory_wall_trend(["p100", "h100-sxm"], model="gpt2", phase="decode", context=256)
    for p in pts:
        assert p.memory_bound_fraction > 0.9


# ------------------------------------------------------------------------------------- model totals
def test_llama_decode_totals_and_physical_lower_bound():
    model = load_model("llama-2-7b")
    dev = load_device("a100-80gb")
    r = analysis.estimate_model(model, dev, batch=1, phase="decode", context=1024)
    assert r.params == 6_738_415_616
    assert r.phase == "decode" and r.step.seq == 1 and r.step.context == 1024
    # every linear weight (fp16, 2 bytes) must cross HBM once per token: a bound no estimate can beat
    linear_bytes = 2 * sum(l.params for l in model.layers if isinstance(l, Linear))
    assert r.time_s >= linear_bytes / dev.dram_bandwidth
    assert r.tokens == 1
    assert r.tokens_per_s == pytest.approx(1.0 / r.time_s)
    assert r.energy_per_token_j == pytest.approx(r.energy_j)
    assert r.ttft_s is None and r.images_per_s is None
    assert r.speedup == pytest.approx(1.0)
    assert math.fsum(l.time_s for l in r.layers) == pytest.approx(r.time_s)
    assert math.fsum(l.energy_j for l in r.layers) == pytest.approx(r.energy_j)
    assert r.macs == model.macs(r.step)
    assert r.memory_bound_fraction > 0.9
    assert r.bytes_by_level["hbm"] >= linear_bytes
    d = r.to_dict()
    for key in ("time_s", "tokens_per_s", "params", "energy_j", "speedup", "layers"):
        assert key in d
    assert len(d["layers"]) == len(r.layers) and {"name", "time_s", "bound"} <= set(d["layers"][0])


def test_weight_only_int4_speeds_up_memory_bound_decode():
    dev = "h100-sxm"
    base = analysis.estimate_model("llama-2-7b", dev, phase="decode", context=512)
    w4 = analysis.estimate_model("llama-2-7b", dev, Compression.parse(weights="int4", acts="fp16", group=128),
                                 phase="decode", context=512)
    assert w4.speedup > 1.5
    assert w4.baseline_time_s == pytest.approx(base.time_s)
    assert w4.bytes_by_level["hbm"] < 0.5 * base.bytes_by_level["hbm"]
    assert w4.energy_j < base.energy_j


def test_prefill_ttft_encoder_and_cnn_rates():
    r = analysis.estimate_model("gpt2", "a100-40gb", batch=2, seq=128, phase="prefill")
    assert r.tokens == 256 and r.ttft_s == r.time_s
    assert r.tokens_per_s == pytest.approx(256 / r.time_s)
    assert r.energy_per_token_j == pytest.approx(r.energy_j / 256)
    enc = analysis.estimate_model("bert-base", "v100", batch=4, seq=64)
    assert enc.ttft_s is None and enc.tokens_per_s == pytest.approx(256 / enc.time_s)
    cnn = analysis.estimate_model("resnet50", "h100-sxm", batch=8)
    assert cnn.tokens_per_s is None and cnn.energy_per_token_j is None
    assert cnn.images_per_s == pytest.approx(8 / cnn.time_s)
    assert cnn.energy_per_image_j == pytest.approx(cnn.energy_j / 8)
    assert cnn.macs == pytest.approx(8 * 4.09e9, rel=0.01)
    # a bigger batch amortises the weights: never less throughput per image
    cnn1 = analysis.estimate_model("resnet50", "h100-sxm", batch=1)
    assert cnn.images_per_s >= cnn1.images_per_s


def test_cpu_baseline_is_fp32():
    r = analysis.estimate_model("all-minilm-l6-v2", "epyc-genoa", seq=32)
    assert r.baseline == "fp32" and r.speedup == pytest.approx(1.0)


def test_layers_that_cannot_take_the_format_fall_back_with_a_note():
    r = analysis.estimate_model("resnet50", "a100-80gb", Compression.parse(format="nm:2:4"), batch=4)
    by = {l.name: l for l in r.layers}
    assert by["conv1"].compression == "fp16"  # K = 3*7*7 = 147 is not a multiple of 4
    assert any("conv1" in n and "nm:2:4" in n for n in by["conv1"].notes)
    assert by["layer1.0.conv2"].compression == "fp16 nm:2:4"
    assert any("fell back" in n for n in r.notes)


def test_a_config_that_fits_no_layer_is_an_error():
    with pytest.raises(ValueError, match="fits no layer"):
        analysis.estimate_model("llama-2-7b", "a100-80gb", Compression.parse(format="bsr:7x7", sparsity=0.5),
                                phase="decode", context=16)


def test_impossible_configs_raise():
    with pytest.raises(ValueError, match="int8"):
        analysis.estimate_model("gpt2", "p100", Compression.parse(weights="int8", acts="int8"), phase="decode",
                                context=8)
    with pytest.raises(ValueError, match="decode"):
        analysis.estimate_model("resnet50", "p100", phase="decode")
    with pytest.raises(ValueError, match="unknown model"):
        analysis.estimate_model("resnet-9000", "p100")
    with pytest.raises(ValueError, match="unknown device"):
        analysis.estimate_model("gpt2", "tpu-v9")


def test_per_layer_configs():
    int8 = Compression.parse(weights="int8", acts="fp16")
    r = analysis.estimate_model("alexnet", "a100-80gb", {"classifier.1": int8}, batch=1)
    by = {l.name: l for l in r.layers}
    assert by["classifier.1"].compression == "int8/fp16"
    assert by["features.0"].compression == "fp16"
    assert by["classifier.1"].speedup > 1.0  # batch-1 FC layer: memory-bound, half the bytes
    with pytest.raises(ValueError, match="unknown layer"):
        analysis.estimate_model("alexnet", "a100-80gb", {"fc9": int8})


def test_bound_class():
    dev = load_device("a100-80gb")
    assert analysis.bound_class("hbm", dev) == "memory"
    assert analysis.bound_class("l2", dev) == "memory"
    assert analysis.bound_class("tensor", dev) == "compute"
    assert analysis.bound_class("launch", dev) == "overhead"


# ----------------------------------------------------------------------------------------- crossover
def test_crossover_points_are_where_the_format_starts_to_win():
    dev = load_device("a100-80gb")
    res = analysis.format_crossover(dev, 1, 4096, 4096, formats=("csr", "bsr:16x16", "nm:2:4"))
    assert [c.format for c in res] == ["csr", "bsr:16x16", "nm:2:4"]
    op = GemmOp("g", m=1, n=4096, k=4096)
    for c in res:
        assert [t.target for t in c.targets] == ["dense", "int8", "int4"]
        assert (c.vs_dense, c.vs_int8, c.vs_int4) == tuple(t.sparsity for t in c.targets)
        for t in c.targets:
            assert t.sparsity is None or 0.0 <= t.sparsity < 1.0
            if c.format == "nm:2:4":
                assert t.sparsity in (None, 0.5)
                continue
            if t.sparsity is not None and t.sparsity > 0:
                comp = Compression.parse(weights="fp16", acts="fp16", format=c.format, sparsity=t.sparsity)
                assert roofline.estimate(dev, op, comp, baseline=comp).time_s < t.target_time_s
                below = Compression.parse(weights="fp16", acts="fp16", format=c.format,
                                          sparsity=max(0.0, t.sparsity - 2e-4))
                assert roofline.estimate(dev, op, below, baseline=below).time_s >= t.target_time_s
    csr = res[0]
    # CSR on vector units at batch 1: wins only when it moves fewer bytes; INT4 moves the fewest
    assert csr.vs_dense is not None
    assert csr.vs_int4 is None or csr.vs_int4 >= csr.vs_dense
    d = csr.to_dict()
    assert {"format", "vs_dense", "vs_int8", "vs_int4", "targets"} <= set(d)


def test_crossover_reports_formats_that_do_not_fit():
    res = analysis.format_crossover("h100-sxm", 8, 4095, 4095, formats=("bsr:16x16", "nm:2:4"), targets=("dense",))
    assert [c.vs_dense for c in res] == [None, None]
    assert all("not applicable" in c.note for c in res)
    assert res[0].vs_int8 is None  # not asked for
    with pytest.raises(ValueError, match="target"):
        analysis.format_crossover("h100-sxm", 8, 64, 64, targets=("int2",))
    with pytest.raises(ValueError, match="m"):
        analysis.format_crossover("h100-sxm", 0, 64, 64)


# ---------------------------------------------------------------------------------- report / points
def test_compression_table_rows():
    rows = analysis.compression_table("gpt2", "p100", batch=1, phase="decode", context=128)
    assert [r["option"] for r in rows] == [o for o, _ in analysis.REPORT_OPTIONS]
    base = rows[0]
    assert base["speedup"] == pytest.approx(1.0) and base["error"] is None
    by = {r["option"]: r for r in rows}
    assert by["int8 w8a8"]["error"] and "int8" in by["int8 w8a8"]["error"]  # P100 has no int8 units
    assert by["int8 weight-only"]["speedup"] > 1.0
    for r in rows:
        if r["error"] is None:
            assert r["time_s"] > 0 and r["energy_j"] > 0 and r["bound"] in ("memory", "compute", "overhead")


def test_roofline_points_are_under_the_roofs():
    dev = load_device("v100")
    pts = analysis.roofline_points("alexnet", dev, [("fp16", analysis.baseline_for(dev))], batch=2)
    top = max(max(u.dense.values()) for u in dev.units.values())
    assert pts and all(p["intensity"] > 0 and 0 < p["perf"] <= top for p in pts)
    assert len({p["layer"] for p in pts}) == len(pts)


def test_make_compression_inherits_the_baseline():
    gpu = analysis.make_compression(weights="int4", group=128, device="a100-80gb")
    assert (gpu.weights, gpu.acts, gpu.group_size) == ("int4", "fp16", 128)
    cpu = analysis.make_compression(format="csr", sparsity=0.9, device="epyc-genoa")
    assert (cpu.weights, cpu.acts, cpu.format) == ("fp32", "fp32", "csr")
    with pytest.raises(ValueError, match="valid dtypes"):
        analysis.make_compression(weights="int3")


# ---------------------------------------------------------------------------------------- generation
def test_generation_sums_the_decode_steps():
    g = analysis.estimate_generation("gpt2", "a100-80gb", prompt=100, new_tokens=40, samples=5)
    steps = [analysis.estimate_model("gpt2", "a100-80gb", phase="decode", context=c) for c in range(100, 140)]
    assert g.decode_time_s == pytest.approx(math.fsum(s.time_s for s in steps), rel=1e-3)
    assert g.decode_energy_j == pytest.approx(math.fsum(s.energy_j for s in steps), rel=1e-3)
    pre = analysis.estimate_model("gpt2", "a100-80gb", seq=100)
    assert g.ttft_s == pytest.approx(pre.time_s)
    assert g.time_s == pytest.approx(g.ttft_s + g.decode_time_s)
    assert g.tokens_per_s == pytest.approx(40 / g.time_s)
    assert g.speedup == pytest.approx(1.0)
    d = g.to_dict()
    assert all(isinstance(v, (int, float, str)) for v in d.values())
    with pytest.raises(ValueError, match="decoder"):
        analysis.estimate_generation("bert-base", "a100-80gb")
    with pytest.raises(ValueError, match="new_tokens"):
        analysis.estimate_generation("gpt2", "a100-80gb", new_tokens=0)


# ---------------------------------------------------------------------------------------- monotonicity
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15)
@given(fmt=st.sampled_from(["csr", "bsr:16x16", "channel"]), s1=st.floats(0.0, 0.98), ds=st.floats(0.0, 0.5),
       batch=st.integers(1, 64))
def test_more_sparsity_never_adds_model_bytes(fmt, s1, ds, batch):
    s2 = min(0.99, s1 + ds)
    dev = load_device("a100-40gb")
    est = analysis._Estimator(dev, False)  # shared memo: fast
    r1, r2 = (analysis.estimate_model("alexnet", dev, Compression.parse(format=fmt, sparsity=s), batch=batch,
                                      _estimator=est) for s in (s1, s2))
    for level in r1.bytes_by_level:
        assert r2.bytes_by_level[level] <= r1.bytes_by_level[level] * (1 + 1e-12)


# ------------------------------------------------------------------------------------- stored weights
def test_stored_weight_bytes_and_device_fit():
    # fp16: two bytes per parameter (tied LM head counted once, biases included)
    assert analysis.estimate_model("gpt2", "a100-80gb", seq=8).weight_bytes == 2 * 124_439_808
    big = analysis.estimate_model("llama-2-13b", "p100", phase="decode", context=64)
    assert big.weight_bytes == 2 * 13_015_864_320 and not big.fits_in_memory
    assert any("exceed" in n and "p100" in n for n in big.notes)
    w4 = analysis.estimate_model("llama-2-13b", "p100", Compression.parse(weights="int4", acts="fp16", group=128),
                                 phase="decode", context=64)
    assert w4.fits_in_memory and w4.weight_bytes < 0.3 * big.weight_bytes
    assert w4.to_dict()["fits_in_memory"] is True

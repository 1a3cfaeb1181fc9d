"""Roofline cost model: GEMMs computed on paper, the behaviours the issue names, monotonicity, and agreement of
the scalar records with the vectorized path."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memwall.simulator.roofline as R
from memwall.simulator.compression import Compression, weight_total_bytes
from memwall.simulator.devices import load_device
from memwall.simulator.ops import GemmOp, MemoryOp
from memwall.simulator.roofline import default_baseline, estimate, estimate_gemm_arrays, estimate_ops

A100 = "a100-80gb"
E16_7NM = 1.0e-12 * 7 / 45  # Horowitz fp16 (1.1 mul + 0.9 fp32 add) / 2 pJ per op, scaled 7/45


# ----------------------------------------------------------------------------------------------------------
# on paper (A100-80GB figures from its datasheet: 312 TFLOPS fp16 tensor, 2039 GB/s, 40 MiB L2, 192 KiB L1
# per SM, 108 SMs; profile efficiencies: tensor 0.869, HBM 0.834, caches 0.8; launch 5 us)
# ----------------------------------------------------------------------------------------------------------
def test_gemv_on_paper():
    e = estimate(A100, GemmOp("fc", 1, 4096, 4096), Compression())
    A = C = 1 * 4096 * 2
    W = 4096 * 4096 * 2
    hbm = A + W + C  # the whole GEMV fits the 40 MiB L2: compulsory traffic only
    l1 = A * (4096 // 64) + W + C  # 64-wide register tiles re-read the activation row 64 times
    assert e.bytes_by_level == {"l1_smem": l1, "l2": hbm, "hbm": hbm}
    t_hbm = hbm / (2039e9 * 0.834)
    assert e.time_by_roof["hbm"] == pytest.approx(t_hbm, rel=1e-12)
    assert e.time_by_roof["l2"] == pytest.approx(hbm / (7219e9 * 0.8), rel=1e-12)
    # tensor: m=1 pads to 16 rows; 32 output tiles split-K 3 ways -> 96 of 108 SMs busy
    t_tensor = 2 * 4096 * 4096 / (312e12 * 0.869 * (1 / 16) * (96 / 108))
    assert e.time_by_roof["tensor"] == pytest.approx(t_tensor, rel=1e-12)
    assert e.time_s == pytest.approx(t_hbm + 5e-6, rel=1e-12)
    assert e.bound == "hbm"
    assert e.ops == 2 * 4096 * 4096
    assert e.speedup == 1.0
    energy = (2 * 4096 * 4096 * E16_7NM + l1 * 12.72e-12 + hbm * 37.68e-12 + hbm * 104.88e-12
              + 54 * e.time_s)
    assert e.energy_j == pytest.approx(energy, rel=1e-9)
    assert sum(e.energy_by_component.values()) == pytest.approx(e.energy_j, rel=1e-12)
    assert any("memory-bound on hbm" in n for n in e.notes)


def test_big_gemm_on_paper():
    n = 8192
    e = estimate(A100, GemmOp("big", n, n, n), Compression())
    # 64 x 64 = 4096 tiles of 128x128 on 108 SMs: 38 waves, the last one partial
    t_tensor = 2 * n**3 / (312e12 * 0.869 * 4096 / (38 * 108))
    assert e.time_by_roof["tensor"] == pytest.approx(t_tensor, rel=1e-12)
    # each operand is 128 MiB: nothing fits the 40 MiB L2; tile side floor(sqrt(40 MiB / (2 x 2 B))) = 3238,
    # so A is re-read ceil(8192/3238) = 3 times and so is W
    op_bytes = n * n * 2
    assert e.bytes_by_level["hbm"] == 3 * op_bytes + 3 * op_bytes + op_bytes
    # L2 serves tiles of floor(sqrt(192 KiB / 4 B)) = 221 from each SM's L1: ceil(8192/221) = 38 re-reads
    assert e.bytes_by_level["l2"] == 38 * op_bytes + 38 * op_bytes + op_bytes
    assert e.bound == "tensor"
    assert e.time_s == pytest.approx(t_tensor + 5e-6, rel=1e-12)
    assert any("compute-bound" in x for x in e.notes)


def test_warm_weights_stay_in_l2():
    op = GemmOp("fc", 1, 2048, 2048)  # 8 MiB of fp16 weights < 40 MiB L2
    cold = estimate(A100, op)
    warm = estimate(A100, op, warm=True)
    assert cold.bytes_by_level["hbm"] == 2048 * 2048 * 2 + 2 * 2048 * 2
    assert warm.bytes_by_level["hbm"] == 2 * 2048 * 2
    assert warm.bytes_by_level["l2"] == cold.bytes_by_level["l2"]
    assert warm.time_s < cold.time_s
    assert any("resident in l2" in x for x in warm.notes)
    big = estimate(A100, GemmOp("fc", 1, 8192, 8192), warm=True)  # 128 MiB: does not fit
    assert big.bytes_by_level["hbm"] == 8192 * 8192 * 2 + 2 * 8192 * 2
    assert any("exceed l2" in x for x in big.notes)


def test_memory_op_on_paper():
    e = estimate(A100, MemoryOp("ln", 1_000_000, 1_000_000, ops_per_element=5.0, weight_elements=4096))
    b = 2_000_000 * 2 + 4096 * 2
    assert e.bytes_by_level == {"l1_smem": b, "l2": b, "hbm": b}
    assert e.time_s == pytest.approx(b / (2039e9 * 0.834) + 5e-6, rel=1e-12)
    assert e.ops == 5_000_000
    assert e.unit == "vector"


def test_tiny_op_is_launch_bound():
    e = estimate(A100, GemmOp("tiny", 4, 64, 64))
    assert e.bound == "launch"
    assert any("launch overhead" in x for x in e.notes)


# ----------------------------------------------------------------------------------------------------------
# behaviours the issue names
# ----------------------------------------------------------------------------------------------------------
def test_24_sparsity_memory_bound_at_batch_1_but_faster_when_compute_bound():
    c24 = Compression.parse("fp16", format="nm:2:4")
    small = estimate(A100, GemmOp("fc", 1, 4096, 4096), c24)
    assert small.bound == "hbm"
    assert any("2:4 gives no compute speedup here: memory-bound at batch 1" in x for x in small.notes)
    # bytes: half the values + 2-bit metadata = 0.5 + 0.125 of dense -> speedup from bytes only, < 1/0.625
    assert 1.0 < small.speedup < 1 / 0.625
    big = estimate(A100, GemmOp("fc", 8192, 4096, 4096), c24)
    assert big.bound == "tensor" and big.unit == "tensor"
    assert 1.2 < big.speedup < 2.0  # the sparse peak is 2x, its kernels reach a lower fraction of it


def test_24_without_sparse_units_runs_dense():
    e = estimate("v100", GemmOp("fc", 4096, 4096, 4096), Compression.parse("fp16", format="nm:2:4"))
    assert any("no 2:4 sparse" in x for x in e.notes)
    assert e.speedup <= 1.0 + 1e-9
    e = estimate(A100, GemmOp("fc", 4096, 4096, 4096), Compression.parse("fp16", format="nm:4:8"))
    assert any("does not map onto 2:4" in x for x in e.notes)


def test_w4a16_wins_memory_bound_and_loses_compute_bound():
    w4 = Compression.parse("int4", group=128)
    dec = estimate(A100, GemmOp("fc", 1, 4096, 4096), w4)
    assert dec.bound == "hbm" and dec.speedup > 2.0  # 3.9x fewer bytes, diluted by the 5 us launch
    pre = estimate(A100, GemmOp("fc", 8192, 4096, 4096), w4)
    assert pre.bound == "tensor"
    assert pre.speedup < 1.0  # dequantization on vector units adds to the fp16 product
    assert pre.time_by_roof["vector"] > 0
    assert any("converted to fp16 on vector units" in x for x in pre.notes)


def test_int8_w8a8_quantizes_activations():
    e = estimate(A100, GemmOp("fc", 4096, 4096, 4096), Compression.parse("int8", "int8"))
    assert e.compute_dtype == "int8" and e.unit == "tensor"
    assert e.time_by_roof["launch"] == pytest.approx(2 * 5e-6)  # GEMM + the quantization pass
    assert any("quantizing activations to int8 costs a pass" in x for x in e.notes)
    assert 1.5 < e.speedup < 2.0


def test_csr_runs_on_vector_units():
    e = estimate(A100, GemmOp("fc", 4096, 4096, 4096), Compression.parse("fp16", format="csr", sparsity=0.9))
    assert e.unit == "vector"
    assert e.time_by_roof["tensor"] == 0.0 and e.bound == "vector"
    assert any("unstructured CSR runs on vector units" in x for x in e.notes)
    assert e.speedup < 1.0  # 90% unstructured sparsity loses to dense tensor cores when compute-bound


def test_bsr_block_size_picks_the_unit():
    op = GemmOp("fc", 4096, 4096, 4096)
    assert estimate(A100, op, Compression.parse("fp16", format="bsr:16x16", sparsity=0.5)).unit == "tensor"
    e = estimate(A100, op, Compression.parse("fp16", format="bsr:8x8", sparsity=0.5))
    assert e.unit == "vector" and any("below the 16x16" in x for x in e.notes)


def test_channel_pruning_is_a_smaller_dense_gemm():
    op = GemmOp("fc", 8192, 8192, 8192)
    e = estimate(A100, op, Compression.parse("fp16", format="channel", sparsity=0.5))
    ref = estimate(A100, GemmOp("fc", 8192, 4096, 8192))
    assert e.time_s == pytest.approx(ref.time_s, rel=1e-12)
    assert e.ops == ref.ops == 2 * 8192 * 4096 * 8192
    assert 1.8 < e.speedup < 2.1


def test_impossible_configs_raise():
    op = GemmOp("fc", 16, 4096, 4096)
    with pytest.raises(ValueError, match="int4"):
        estimate("h100-sxm", op, Compression.parse("int4", "int4"))
    with pytest.raises(ValueError, match="int8"):
        estimate("p100", op, Compression.parse("int8", "int8"))
    with pytest.raises(ValueError, match="does not divide"):
        estimate(A100, GemmOp("fc", 16, 100, 96), Compression.parse(format="bsr:16x16", sparsity=0.5))
    with pytest.raises(ValueError, match="group_size"):
        estimate(A100, GemmOp("fc", 16, 96, 100), Compression.parse("int4", group=64))
    with pytest.raises(TypeError):
        estimate(A100, "fc", Compression())
    # fine: W4A4 on A100 computes on INT4 tensor cores; W4A8 on H100 computes in INT8
    assert estimate(A100, op, Compression.parse("int4", "int4")).compute_dtype == "int4"
    assert estimate("h100-sxm", op, Compression.parse("int4", "int8")).compute_dtype == "int8"


def test_float_dtypes_are_promoted_where_absent():
    e = estimate("epyc-genoa", GemmOp("fc", 64, 1024, 1024), Compression.parse("fp16"))
    assert e.compute_dtype == "fp32"
    assert any("fp16 is not native on epyc-genoa" in x for x in e.notes)
    assert estimate(A100, GemmOp("fc", 64, 1024, 1024), Compression.parse("fp8")).compute_dtype == "fp16"


def test_default_baselines():
    assert default_baseline(A100) == Compression("fp16", "fp16")
    assert default_baseline("epyc-genoa") == Compression("fp32", "fp32")
    assert estimate("epyc-genoa", GemmOp("fc", 64, 1024, 1024), "fp32").speedup == 1.0
    e = estimate(A100, GemmOp("fc", 64, 1024, 1024), "fp16", baseline="fp32")
    assert e.speedup > 1.0
    assert e.baseline_time_s == pytest.approx(estimate(A100, GemmOp("fc", 64, 1024, 1024), "fp32").time_s)


def test_attention_gemms_use_the_activation_dtype_for_both_operands():
    op = GemmOp("qk", 8, 512, 128, count=32, weight_operand=False, kind="attention_qk")
    e = estimate(A100, op, Compression.parse("int4", group=128))
    assert e.weight_bytes == 512 * 128 * 2 * 32 and e.weight_bytes_breakdown == {}
    assert e.compute_dtype == "fp16"


def test_small_shapes_are_less_efficient():
    big = estimate(A100, GemmOp("a", 8192, 8192, 8192))
    small = estimate(A100, GemmOp("b", 200, 8192, 8192))
    assert small.time_by_roof["tensor"] / small.ops > 1.05 * big.time_by_roof["tensor"] / big.ops


def test_estimate_ops_and_records():
    ops = [GemmOp("q", 16, 4096, 4096), GemmOp("o", 16, 4096, 4096), MemoryOp("ln", 65536, 65536, 5.0, 4096)]
    w4 = Compression.parse("int4", group=128)
    res = estimate_ops(A100, ops, {"q": w4})
    assert [r.name for r in res] == ["q", "o", "ln"]
    assert res[0].compression == w4.label and res[1].compression == "fp16"
    assert res[1].speedup == 1.0
    assert res[0].weight_bytes_breakdown["values"] == 4096 * 2048
    assert res[0].weight_bytes == weight_total_bytes(4096, 4096, w4)
    d = json.loads(json.dumps(res[0].to_dict()))
    for key in ("time_s", "bound", "energy_j", "speedup", "notes", "bytes_by_level", "time_by_roof"):
        assert key in d
    with pytest.raises(TypeError):
        estimate_ops(A100, [object()])
    assert estimate(A100, ops[0], {"weights": "int4", "group": 128}).compression == w4.label


def test_ridge_point_separates_memory_and_compute_bound():
    dev = load_device(A100)
    ridge = dev.ridge_point("fp16")  # ops per DRAM byte
    # a square fp16 GEMM of side s moves ~3 * 2 s^2 bytes and does 2 s^3 ops: intensity s / 3
    lo = estimate(A100, GemmOp("lo", 64, 64 * 8, 64 * 8))
    hi = estimate(A100, GemmOp("hi", 8192, 8192, 8192))
    assert lo.arithmetic_intensity < ridge < hi.arithmetic_intensity
    assert hi.bound == "tensor"


# ----------------------------------------------------------------------------------------------------------
# monotonicity
# ----------------------------------------------------------------------------------------------------------
def _faster_dram(dev, factor):
    lv = dev.memory_levels[-1]
    faster = dataclasses.replace(lv, bandwidth_bytes_per_s=lv.bandwidth_bytes_per_s * factor)
    return dataclasses.replace(dev, memory_levels=dev.memory_levels[:-1] + (faster,))


@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.floats(1.0, 8.0),
       st.sampled_from(["a100-80gb", "p100", "epyc-genoa"]),
       st.sampled_from(["fp16", "int4", "csr", "nm:2:4", "fp32"]))
def test_faster_memory_never_slows_a_layer(m, n16, k16, factor, dev_id, cfg):
    dev = load_device(dev_id)
    comp = {"fp16": Compression(), "int4": Compression.parse("int4", group=16), "fp32": Compression("fp32", "fp32"),
            "csr": Compression.parse("fp16", format="csr", sparsity=0.8),
            "nm:2:4": Compression.parse("fp16", format="nm:2:4")}[cfg]
    op = GemmOp("x", m, 16 * n16, 16 * k16)
    slow = estimate(dev, op, comp)
    fast = estimate(_faster_dram(dev, factor), op, comp)
    assert fast.time_s <= slow.time_s * (1 + 1e-12)
    if slow.bound == dev.dram.name:
        assert fast.time_s < slow.time_s or factor == 1.0


@given(st.integers(1, 4096), st.sampled_from(["csr", "bsr:16x16", "channel"]), st.floats(0, 0.99),
       st.floats(0, 0.99))
def test_more_sparsity_never_adds_bytes_or_time(m, fmt, s1, s2):
    lo, hi = sorted((s1, s2))
    op = GemmOp("x", m, 1024, 2048)
    a = estimate(A100, op, Compression.parse("fp16", format=fmt, sparsity=lo))
    b = estimate(A100, op, Compression.parse("fp16", format=fmt, sparsity=hi))
    for level in a.bytes_by_level:
        assert b.bytes_by_level[level] <= a.bytes_by_level[level]
    assert b.time_s <= a.time_s * (1 + 1e-12)
    assert b.energy_j <= a.energy_j * (1 + 1e-12)


# ----------------------------------------------------------------------------------------------------------
# the vector path agrees with the scalar records
# ----------------------------------------------------------------------------------------------------------
CONFIGS = [
    Compression(), Compression("fp32", "fp32"), Compression("bf16", "bf16"), Compression("tf32", "tf32"),
    Compression.parse("int4", group=128), Compression.parse("int4", group=64, zero_points=True),
    Compression.parse("int8", "int8"), Compression.parse("int8", scale_dtype="fp32"),
    Compression.parse("fp8", "fp8"), Compression.parse("fp16", format="csr", sparsity=0.7),
    Compression.parse("int8", "int8", format="csr", sparsity=0.95),
    Compression.parse("fp16", format="bsr:16x16", sparsity=0.5),
    Compression.parse("fp16", format="bsr:4x4", sparsity=0.3), Compression.parse("fp16", format="nm:2:4"),
    Compression.parse("int8", "int8", format="nm:2:4"), Compression.parse("fp16", format="nm:4:8"),
    Compression.parse("fp16", format="channel", sparsity=0.4),
]


@given(st.integers(0, 3000), st.integers(1, 40), st.integers(1, 40), st.integers(1, 3), st.booleans(),
       st.booleans(), st.sampled_from(range(len(CONFIGS))),
       st.sampled_from(["a100-80gb", "h100-sxm", "v100", "epyc-genoa"]))
def test_scalar_and_vector_paths_agree(m, n128, k128, count, wop, warm, ci, dev_id):
    comp = CONFIGS[ci]
    op = GemmOp("x", m, 16 * n128, 128 * k128, count=count, weight_operand=wop)
    try:
        e = estimate(dev_id, op, comp, warm=warm)
    except ValueError:
        with pytest.raises(ValueError):
            estimate_gemm_arrays(dev_id, [m], [op.n], [op.k], count=count, comp=comp, weight_operand=wop,
                                 warm=warm)
        return
    v = estimate_gemm_arrays(dev_id, [m], [op.n], [op.k], count=count, comp=comp, weight_operand=wop, warm=warm,
                             detail=True)
    assert v["time_s"][0] == pytest.approx(e.time_s, rel=1e-12)
    assert v["energy_j"][0] == pytest.approx(e.energy_j, rel=1e-12)
    assert v["bound"][0] == e.bound
    assert v["ops"][0] == e.ops
    assert v["weight_bytes"][0] == e.weight_bytes
    assert v["speedup"][0] == pytest.approx(e.speedup, rel=1e-12)
    for level, b in e.bytes_by_level.items():
        assert v[f"bytes_{level}"][0] == b
    if wop:
        assert e.weight_bytes == weight_total_bytes(op.n, op.k, comp) * count


def test_vector_path_over_mixed_arrays(rng):
    N = 200
    m = rng.integers(1, 2048, N)
    n = rng.integers(1, 32, N) * 32
    k = rng.integers(1, 32, N) * 32
    fmts = np.array(["dense", "csr", "bsr:16x16", "nm:2:4", "channel"])[rng.integers(0, 5, N)]
    sp = np.where(np.isin(fmts, ["dense", "nm:2:4"]), 0.0, rng.random(N) * 0.9)
    w = np.array(["fp16", "int8", "int4", "bf16"])[rng.integers(0, 4, N)]
    out = estimate_gemm_arrays(A100, m, n, k, weights=w, format=fmts, sparsity=sp)
    for i in range(0, N, 7):
        comp = Compression.parse(str(w[i]), format=str(fmts[i]), sparsity=float(sp[i]))
        e = estimate(A100, GemmOp("x", int(m[i]), int(n[i]), int(k[i])), comp)
        assert out["time_s"][i] == pytest.approx(e.time_s, rel=1e-12)
        assert out["bound"][i] == e.bound
        assert out["speedup"][i] == pytest.approx(e.speedup, rel=1e-12)


def test_vector_path_broadcasts_and_chunks(monkeypatch):
    out = estimate_gemm_arrays(A100, np.arange(1, 4)[:, None], [1024, 2048, 4096, 8192], 4096)
    assert out["time_s"].shape == (3, 4) and out["bound"].shape == (3, 4)
    ms = np.arange(1, 70001)  # more than one chunk: threads and chunk seams must not change results
    a = estimate_gemm_arrays(A100, ms, 4096, 4096, comp=Compression.parse("int4", group=128))
    monkeypatch.setattr(R, "_threads", lambda: 1)
    b = estimate_gemm_arrays(A100, ms, 4096, 4096, comp=Compression.parse("int4", group=128))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for i in (0, 32767, 32768, 65535, 69999):
        e = estimate(A100, GemmOp("x", int(ms[i]), 4096, 4096), Compression.parse("int4", group=128))
        assert a["time_s"][i] == pytest.approx(e.time_s, rel=1e-12)
    empty = estimate_gemm_arrays(A100, np.zeros(0, dtype=int), 16, 16)
    assert empty["time_s"].shape == (0,)
    assert "speedup" not in estimate_gemm_arrays(A100, 1, 16, 16, baseline=False)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(m=-1), ValueError, "m"),
    (dict(m=1.5), ValueError, "integer"),
    (dict(m=np.nan), ValueError, "finite"),
    (dict(sparsity=1.0, format="csr"), ValueError, "sparsity"),
    (dict(sparsity=0.5), ValueError, "dense format has no sparsity"),
    (dict(weights="int3"), ValueError, "valid"),
    (dict(format="coo"), ValueError, "valid formats"),
    (dict(format="bsr:16x16", n=100, sparsity=0.5), ValueError, "does not divide"),
    (dict(weights="int4", group_size=100), ValueError, "group_size"),
    (dict(weights="int4", acts="int4", device="h100-sxm"), ValueError, "int4"),
    (dict(weights=1.5), TypeError, "weights"),
])
def test_vector_path_errors(kwargs, exc, match):
    kw = dict(device=A100, m=16, n=1024, k=1024)
    kw.update(kwargs)
    with pytest.raises(exc, match=match):
        estimate_gemm_arrays(kw.pop("device"), kw.pop("m"), kw.pop("n"), kw.pop("k"), **kw)


def test_host_profile_estimates(tmp_path, monkeypatch):
    from pathlib import Path

    import memwall.simulator.devices as D

    p = tmp_path / "host.toml"
    p.write_text((Path(D.__file__).parent / "host-template.toml").read_text())
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(p))
    e = estimate("host", GemmOp("fc", 1, 1024, 1024), "fp32")
    assert e.device == "host-template" and e.bound == "dram" and math.isfinite(e.energy_j)


def test_energy_components_helper_matches_the_estimate():
    from memwall.simulator.energy import energy_components

    dev = load_device(A100)
    e = estimate(dev, GemmOp("fc", 512, 4096, 4096))
    comp = energy_components(dev, {"tensor": (e.ops, "fp16"), "vector": (0, "fp16")}, e.bytes_by_level, e.time_s)
    assert comp.keys() == e.energy_by_component.keys()
    for key, val in comp.items():
        assert val == pytest.approx(e.energy_by_component[key], rel=1e-12)


def test_repeated_estimates_are_memoised_and_equal():
    op = GemmOp("fc", 32, 1024, 1024)
    a = estimate(A100, op, "fp16")
    b = estimate(A100, op, Compression())
    assert a is b
    c = estimate(A100, op, "fp16", warm=True)
    assert c is not a


def test_csr_break_even_note():
    op = GemmOp("fc", 1, 4096, 4096)
    low = estimate(A100, op, Compression.parse("fp16", format="csr", sparsity=0.5))
    # fp16 values + int32 indices: 6 B per kept weight vs 2 B dense -> break-even at 1 - 2/6 = 66.7%
    assert any("break-even 66.7%" in x for x in low.notes) and low.speedup < 1
    high = estimate(A100, op, Compression.parse("fp16", format="csr", sparsity=0.8))
    assert not any("break-even" in x for x in high.notes) and high.speedup > 1


def test_vector_path_with_per_config_operands_and_warmth(rng):
    N = 64
    m = rng.integers(1, 512, N)
    wop = rng.random(N) < 0.5
    warm = rng.random(N) < 0.5
    cnt = rng.integers(1, 4, N)
    out = estimate_gemm_arrays(A100, m, 1024, 2048, count=cnt, weights="int4", group_size=128,
                               weight_operand=wop, warm=warm)
    for i in range(N):
        op = GemmOp("x", int(m[i]), 1024, 2048, count=int(cnt[i]), weight_operand=bool(wop[i]))
        e = estimate(A100, op, Compression.parse("int4", group=128), warm=bool(warm[i]))
        assert out["time_s"][i] == pytest.approx(e.time_s, rel=1e-12)
        assert out["dram_bytes"][i] == e.dram_bytes


# ----------------------------------------------------------------------------------------------------------
# calibrated host terms (optional profile fields): BLAS packing pass, activation-quantization rate.
# The host template: fp32 0.32 / int8 1.28 TOPS vector, vector_gemm_fraction 0.8, DRAM 20 GB/s x 0.9,
# LLC 32 MiB at 100 GB/s x 0.8, no conversion fraction (conversions at 0.8).
# ----------------------------------------------------------------------------------------------------------
def _template_with(tmp_path, name, **eff):
    from pathlib import Path

    import memwall.simulator.devices as D

    text = (Path(D.__file__).parent / "host-template.toml").read_text()
    headers = [ln for ln in text.splitlines() if ln.startswith("[")]
    assert headers[-1] == "[efficiency]"  # keys appended at the end land in it
    text += "".join(f"{k} = {v}\n" for k, v in eff.items())
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return load_device(p)


def test_blas_packing_pass_on_paper(tmp_path):
    plain = _template_with(tmp_path, "plain")
    dev = _template_with(tmp_path, "pack", blas_pack_bandwidth_fraction=0.5)
    fp32 = Compression(weights="fp32", acts="fp32")
    op = GemmOp("fc", 64, 4096, 4096)  # 64 MiB of weights, cold: streamed from DRAM at 18 GB/s
    t_main = 2 * 64 * 4096 * 4096 / (0.32e12 * 0.8)
    t_pack = 4096 * 4096 * 4 / (20e9 * 0.9 * 0.5)
    assert estimate(plain, op, fp32).time_by_roof["vector"] == pytest.approx(t_main, rel=1e-9)
    e = estimate(dev, op, fp32)
    assert e.time_by_roof["vector"] == pytest.approx(t_main + t_pack, rel=1e-9)
    assert any("packs" in n for n in e.notes)
    # warm weights that fit the LLC are packed from it (100 GB/s x 0.8)
    op2 = GemmOp("fc", 64, 2048, 2048)
    want = 2 * 64 * 2048 * 2048 / (0.32e12 * 0.8) + 2048 * 2048 * 4 / (100e9 * 0.8 * 0.5)
    assert estimate(dev, op2, fp32, warm=True).time_by_roof["vector"] == pytest.approx(want, rel=1e-9)
    # no packing for one token (GEMV), for quantized weights, for sparse formats, nor on shipped profiles
    for o, c in ((GemmOp("fc", 1, 4096, 4096), fp32), (op, Compression(weights="int8", acts="fp32")),
                 (op, Compression(weights="fp32", acts="fp32", format="csr", sparsity=0.5))):
        assert estimate(dev, o, c).time_by_roof["vector"] == estimate(plain, o, c).time_by_roof["vector"]
    assert load_device(A100).efficiency.blas_pack_bandwidth_fraction is None
    # the vector path agrees with the scalar one
    out = estimate_gemm_arrays(dev, np.array([1, 64]), 4096, 4096, weights="fp32", acts="fp32")
    assert out["time_s"][1] == pytest.approx(e.time_s, rel=1e-12)


def test_quantize_pass_at_its_calibrated_rate(tmp_path):
    plain = _template_with(tmp_path, "plain")
    dev = _template_with(tmp_path, "quant", quantize_vector_fraction=0.05)
    op = GemmOp("fc", 256, 1024, 1024)
    w8a8 = Compression(weights="int8", acts="int8")
    # 4 ops per activation element: at 0.05 of the fp32 peak when calibrated, else at the conversion
    # fraction (0.8) of the int8 vector peak (the compute dtype's)
    t_cal = 4 * 256 * 1024 / (0.32e12 * 0.05)
    t_default = 4 * 256 * 1024 / (1.28e12 * 0.8)
    diff = estimate(dev, op, w8a8).time_by_roof["vector"] - estimate(plain, op, w8a8).time_by_roof["vector"]
    assert diff == pytest.approx(t_cal - t_default, rel=1e-9)
    assert load_device(A100).efficiency.quantize_vector_fraction is None


def test_weight_only_product_at_its_calibrated_rate(tmp_path):
    plain = _template_with(tmp_path, "plain")
    dev = _template_with(tmp_path, "wo", weight_only_gemm_fraction=0.2)
    w4 = Compression(weights="int4", acts="fp32", group_size=128)
    op = GemmOp("fc", 32, 4096, 4096)
    # the product: 2 m n k at 0.2 of the 0.32 TOPS fp32 peak instead of 0.8 of it; dequantization unchanged
    diff = estimate(dev, op, w4).time_by_roof["vector"] - estimate(plain, op, w4).time_by_roof["vector"]
    ops = 2 * 32 * 4096 * 4096
    assert diff == pytest.approx(ops / (0.32e12 * 0.2) - ops / (0.32e12 * 0.8), rel=1e-9)
    # one token (the GEMV), float weights and W8A8 keep their own rates
    for o, c in ((GemmOp("fc", 1, 4096, 4096), w4), (op, Compression(weights="fp32", acts="fp32")),
                 (op, Compression(weights="int8", acts="int8"))):
        assert estimate(dev, o, c).time_s == estimate(plain, o, c).time_s


def test_weight_only_few_tokens_decode_per_token_pair(tmp_path):
    from memwall.kernels import gemm as G
    from memwall.simulator import roofline as R

    # the model describes the kernel that runs: its thresholds are the kernel's
    assert (R.WO_FEW_TOKENS, R.WO8_FEW_TOKENS, R.WO_TOKENS_PER_DECODE) == (
        G.WEIGHT_ONLY_FEW_TOKENS, G.WEIGHT_ONLY_W8_FEW_TOKENS, G._WO_TOK)
    plain = _template_with(tmp_path, "plain")
    dev = _template_with(tmp_path, "wo", weight_only_gemm_fraction=0.2)
    w4 = Compression(weights="int4", acts="fp32", group_size=128)
    op = GemmOp("fc", 8, 4096, 4096)
    # 8 tokens: the product at the plain rate, the weights decoded 4 times instead of once; 3 ops per INT4 weight
    # (convert, scale, unpack) at the conversion fraction (0.8 of the 0.32 TOPS fp32 peak in the template)
    diff = estimate(dev, op, w4).time_by_roof["vector"] - estimate(plain, op, w4).time_by_roof["vector"]
    assert diff == pytest.approx(3 * 3 * 4096 * 4096 / (0.32e12 * 0.8), rel=1e-9)
    # 13 tokens: the fused kernel, decoded once, product at 0.2 of the peak
    op13 = GemmOp("fc", 13, 4096, 4096)
    diff13 = estimate(dev, op13, w4).time_by_roof["vector"] - estimate(plain, op13, w4).time_by_roof["vector"]
    ops = 2 * 13 * 4096 * 4096
    assert diff13 == pytest.approx(ops / (0.32e12 * 0.2) - ops / (0.32e12 * 0.8), rel=1e-9)
    # the vector path agrees with the scalar one
    out = estimate_gemm_arrays(dev, np.array([8, 13]), 4096, 4096, weights="int4", acts="fp32", group_size=128)
    assert out["time_s"][0] == pytest.approx(estimate(dev, op, w4).time_s, rel=1e-12)
    assert out["time_s"][1] == pytest.approx(estimate(dev, op13, w4).time_s, rel=1e-12)
    # INT8 weight-only: GEMV-style passes up to 20 tokens (2 ops per INT8 weight: convert, scale), the
    # fused kernel's calibrated rate from 21
    w8 = Compression(weights="int8", acts="fp32")
    diff8 = estimate(dev, op, w8).time_by_roof["vector"] - estimate(plain, op, w8).time_by_roof["vector"]
    assert diff8 == pytest.approx(3 * 2 * 4096 * 4096 / (0.32e12 * 0.8), rel=1e-9)
    op21 = GemmOp("fc", 21, 4096, 4096)
    diff21 = estimate(dev, op21, w8).time_by_roof["vector"] - estimate(plain, op21, w8).time_by_roof["vector"]
    ops21 = 2 * 21 * 4096 * 4096
    assert diff21 == pytest.approx(ops21 / (0.32e12 * 0.2) - ops21 / (0.32e12 * 0.8), rel=1e-9)


def test_csr_cost_per_stored_nonzero(tmp_path):
    from pathlib import Path

    import memwall.simulator.devices as D

    text = (Path(D.__file__).parent / "host-template.toml").read_text()
    text = text.replace("kernel_launch_us = 2.0\n", "kernel_launch_us = 2.0\ncsr_nonzero_ns = 0.5\n")
    p = tmp_path / "nz.toml"
    p.write_text(text)
    dev, plain = load_device(p), _template_with(tmp_path, "plain")
    assert dev.csr_nonzero_s == pytest.approx(0.5e-9)
    op = GemmOp("fc", 32, 4096, 4096)
    csr = Compression(weights="fp32", acts="fp32", format="csr", sparsity=0.9)
    nnz = 4096 * 4096 - math.floor(0.9 * 4096 * 4096 + 1e-9)
    # multiply-adds at csr_vector_fraction 0.1 of 0.32 TOPS, plus 0.5 ns per stored nonzero
    assert estimate(plain, op, csr).time_by_roof["vector"] == pytest.approx(2 * 32 * nnz / 0.032e12, rel=1e-9)
    assert estimate(dev, op, csr).time_by_roof["vector"] == pytest.approx(2 * 32 * nnz / 0.032e12 + nnz * 0.5e-9,
                                                                          rel=1e-9)
    dense = Compression(weights="fp32", acts="fp32")
    assert estimate(dev, op, dense).time_s == estimate(plain, op, dense).time_s
    assert load_device(A100).csr_nonzero_s is None


def test_software_nm_cost_per_kept_weight(tmp_path):
    from pathlib import Path

    import memwall.simulator.devices as D

    base = (Path(D.__file__).parent / "host-template.toml").read_text() + "nm_sparse_fraction = 0.25\n"
    paths = []
    for name, extra in (("a", ""), ("b", "nm_kept_ns = 0.7\n")):
        p = tmp_path / f"{name}.toml"
        p.write_text(base.replace("kernel_launch_us = 2.0\n", "kernel_launch_us = 2.0\n" + extra))
        paths.append(p)
    plain, dev = load_device(paths[0]), load_device(paths[1])
    op = GemmOp("fc", 32, 4096, 4096)
    nm = Compression(weights="fp32", acts="fp32", format="nm", n=2, m=4)
    kept = 4096 * 2048
    # kept multiply-adds at 0.25 of 0.32 TOPS, plus 0.7 ns per kept weight
    assert estimate(plain, op, nm).time_by_roof["vector"] == pytest.approx(2 * 32 * kept / 0.08e12, rel=1e-9)
    assert estimate(dev, op, nm).time_by_roof["vector"] == pytest.approx(2 * 32 * kept / 0.08e12 + kept * 0.7e-9,
                                                                         rel=1e-9)
    assert load_device(A100).nm_kept_s is None

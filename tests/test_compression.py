"""Compression configs and the exact byte model: hand-computed cases, an independent reference, the kernels'
``nbytes_breakdown()``, monotonicity, and bad configs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwall.simulator.compression import (
    DTYPES,
    Compression,
    index_itemsize,
    kept_weight_elements,
    weight_bytes,
    weight_total_bytes,
)

KEYS = {"values", "indices", "indptr", "metadata", "scales", "zero_points"}


# ----------------------------------------------------------------------------------------------------------
# an independent, obviously-correct reference of the contract's byte model (plain integer Python)
# ----------------------------------------------------------------------------------------------------------
def ref_bytes(rows, cols, comp: Compression) -> int:
    w = comp.weights
    item = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}

    def vals(count):  # int4 packs two per byte
        return (count + 1) // 2 if w == "int4" else count * item[w]

    def pruned(s, n):
        return min(n, math.floor(s * n + 1e-9))

    quant = w in ("int8", "int4")
    if comp.format in ("dense", "channel"):
        kr = rows - (pruned(comp.sparsity, rows) if comp.format == "channel" else 0)
        v = kr * ((cols + 1) // 2) if w == "int4" else kr * cols * item[w]
        if comp.group_size:
            ns = kr * cols // comp.group_size
        else:
            ns = kr if quant else 0
        sb = {"fp32": 4, "fp16": 2, "bf16": 2}[comp.scale_dtype]
        return v + ns * sb * (2 if comp.zero_points else 1)
    if comp.format == "csr":
        nnz = rows * cols - pruned(comp.sparsity, rows * cols)
        idx = 4 if max(nnz, cols) < 2**31 else 8
        return vals(nnz) + nnz * idx + (rows + 1) * idx + (rows * 4 if quant else 0)
    if comp.format == "bsr":
        r, c = comp.block
        nblocks = (rows // r) * (cols // c)
        nb = nblocks - pruned(comp.sparsity, nblocks)
        idx = 4 if max(nb, cols) < 2**31 else 8
        return vals(nb * r * c) + nb * idx + (rows // r + 1) * idx + (nb * 4 if quant else 0)
    kr = cols // comp.m * comp.n
    b = (comp.m - 1).bit_length()
    v = rows * ((kr + 1) // 2) if w == "int4" else rows * kr * item[w]
    return v + rows * ((kr * b + 7) // 8) + (rows * 4 if quant else 0)


# ----------------------------------------------------------------------------------------------------------
# hand-computed cases
# ----------------------------------------------------------------------------------------------------------
def test_hand_computed_4096_square():
    R = C = 4096
    assert weight_bytes(R, C, Compression()) == {**dict.fromkeys(KEYS, 0), "values": 4096 * 4096 * 2}
    # W4 g128, fp16 scales: 4096 rows x 2048 packed bytes + 4096 x 32 scales x 2 B
    b = weight_bytes(R, C, Compression.parse("int4", group=128))
    assert b["values"] == 8_388_608 and b["scales"] == 262_144 and b["zero_points"] == 0
    b = weight_bytes(R, C, Compression.parse("int4", group=128, zero_points=True))
    assert b["zero_points"] == 262_144
    # W8 per-row fp32 scales
    b = weight_bytes(R, C, Compression.parse("int8", scale_dtype="fp32"))
    assert b["values"] == 16_777_216 and b["scales"] == 4096 * 4
    # CSR 90% fp16: 0.9 * 16777216 = 15099494.4 -> 15099494 pruned, nnz 1677722
    b = weight_bytes(R, C, Compression.parse("fp16", format="csr", sparsity=0.9))
    assert b == {**dict.fromkeys(KEYS, 0), "values": 3_355_444, "indices": 6_710_888, "indptr": 4097 * 4}
    # CSR int8: per-row float32 scales
    assert weight_bytes(R, C, Compression.parse("int8", "fp16", format="csr", sparsity=0.5))["scales"] == 4096 * 4
    # 2:4 fp16: 2048 kept per row, 2 bits each -> 512 metadata bytes per row
    b = weight_bytes(R, C, Compression.parse("fp16", format="nm:2:4"))
    assert b == {**dict.fromkeys(KEYS, 0), "values": 16_777_216, "metadata": 2_097_152}
    # BSR 16x16 at 75%: 65536 blocks, 16384 kept
    b = weight_bytes(R, C, Compression.parse("fp16", format="bsr:16x16", sparsity=0.75))
    assert b == {**dict.fromkeys(KEYS, 0), "values": 16384 * 256 * 2, "indices": 16384 * 4, "indptr": 257 * 4}
    # channel pruning 25% of 4096 output rows -> a dense 3072 x 4096
    b = weight_bytes(R, C, Compression.parse("fp16", format="channel", sparsity=0.25))
    assert b["values"] == 3072 * 4096 * 2
    assert kept_weight_elements(R, C, Compression.parse("fp16", format="channel", sparsity=0.25)) == 3072 * 4096


def test_index_width_switches_at_2_31():
    assert index_itemsize(2**31 - 1, 10) == 4
    assert index_itemsize(2**31, 10) == 8
    # 65536 x 65536 = 2**32 entries; at 25% sparsity nnz = 3 * 2**30 >= 2**31 -> int64 indices
    b = weight_bytes(65536, 65536, Compression.parse("fp16", format="csr", sparsity=0.25))
    assert b["indices"] == 3 * 2**30 * 8 and b["indptr"] == 65537 * 8
    b = weight_bytes(65536, 65536, Compression.parse("fp16", format="csr", sparsity=0.75))
    assert b["indices"] == 2**30 * 4


def test_int4_odd_cols_pad_a_nibble():
    assert weight_bytes(3, 5, Compression.parse("int4", scale_dtype="fp32"))["values"] == 3 * 3
    assert weight_bytes(3, 5, Compression.parse("int4", "fp16", format="csr", sparsity=0.0))["values"] == 8


# ----------------------------------------------------------------------------------------------------------
# the reference over many shapes and configs
# ----------------------------------------------------------------------------------------------------------
@st.composite
def configs(draw):
    fmt = draw(st.sampled_from(["dense", "csr", "bsr", "nm", "channel"]))
    w = draw(st.sampled_from(DTYPES))
    r = draw(st.sampled_from([1, 2, 4, 8, 16])) if fmt == "bsr" else 1
    c = draw(st.sampled_from([1, 2, 4, 8, 16])) if fmt == "bsr" else 1
    m = draw(st.sampled_from([2, 4, 8, 16])) if fmt == "nm" else 1
    n = draw(st.integers(1, m - 1)) if fmt == "nm" else None
    rows = r * draw(st.integers(0, 40))
    grouped = fmt in ("dense", "channel") and w in ("int8", "int4", "fp8")
    g = draw(st.sampled_from([None, 1, 2, 4, 8, 32])) if grouped else None
    unit = math.lcm(c, m, g or 1)
    cols = unit * draw(st.integers(0, 30))
    kw = dict(weights=w, acts="fp16", group_size=g, scale_dtype=draw(st.sampled_from(["fp32", "fp16", "bf16"])),
              zero_points=draw(st.booleans()) and w in ("int8", "int4"), format=fmt,
              sparsity=0.0 if fmt in ("dense", "nm") else draw(st.floats(0.0, 0.999)))
    if fmt == "bsr":
        kw["block"] = (r, c)
    if fmt == "nm":
        kw.update(n=n, m=m, sparsity=0.0)
    return rows, cols, Compression(**kw)


@given(configs())
def test_weight_bytes_match_the_reference(cfg):
    rows, cols, comp = cfg
    b = weight_bytes(rows, cols, comp)
    assert set(b) == KEYS
    assert all(isinstance(v, int) and v >= 0 for v in b.values())
    assert weight_total_bytes(rows, cols, comp) == sum(b.values()) == ref_bytes(rows, cols, comp)


@given(configs(), st.floats(0.0, 0.999), st.floats(0.0, 0.999))
def test_more_sparsity_never_adds_bytes(cfg, s1, s2):
    rows, cols, comp = cfg
    if comp.format not in ("csr", "bsr", "channel"):
        return
    lo, hi = sorted((s1, s2))
    more, less = comp.with_(sparsity=hi), comp.with_(sparsity=lo)
    assert weight_total_bytes(rows, cols, more) <= weight_total_bytes(rows, cols, less)
    assert kept_weight_elements(rows, cols, more) <= kept_weight_elements(rows, cols, less)


# ----------------------------------------------------------------------------------------------------------
# against the kernels' real format objects (when they exist)
# ----------------------------------------------------------------------------------------------------------
_NP_DTYPE = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}


@pytest.mark.parametrize("w", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("shape", [(16, 32), (48, 64), (7, 12)])
@pytest.mark.parametrize("fmt,sparsity", [("csr", 0.0), ("csr", 0.5), ("csr", 0.93), ("bsr:4x4", 0.5),
                                          ("bsr:1x4", 0.75), ("nm:2:4", 0.0), ("nm:1:4", 0.0), ("nm:3:8", 0.0)])
def test_bytes_equal_the_kernels_nbytes(rng, w, shape, fmt, sparsity):
    formats = pytest.importorskip("memwall.kernels.formats")
    rows, cols = shape
    comp = Compression.parse(w, "fp16" if w == "int8" else w, format=fmt, sparsity=sparsity)
    try:
        from memwall.simulator.compression import check_shape

        check_shape(rows, cols, comp)
    except ValueError:
        pytest.skip("shape not divisible by the block / M")
    dense = rng.standard_normal((rows, cols)).astype(np.float32)
    vd = _NP_DTYPE[w]
    if comp.format == "csr":
        obj = formats.CSRMatrix.from_dense(dense, sparsity=sparsity, value_dtype=vd)
    elif comp.format == "bsr":
        obj = formats.BSRMatrix.from_dense(dense, comp.block, sparsity=sparsity, value_dtype=vd)
    else:
        obj = formats.NMSparseMatrix.from_dense(dense, comp.n, comp.m, value_dtype=vd)
    mine = weight_bytes(rows, cols, comp)
    theirs = obj.nbytes_breakdown()
    assert {k: mine[k] for k in theirs} == theirs
    assert mine["zero_points"] == 0
    assert sum(mine.values()) == obj.nbytes


# ----------------------------------------------------------------------------------------------------------
# parsing, labels, bad configs
# ----------------------------------------------------------------------------------------------------------
def test_parse_and_labels():
    assert Compression.parse().label == "fp16"
    c = Compression.parse("int4", group="128")
    assert (c.weights, c.acts, c.group_size) == ("int4", "fp16", 128)
    assert c.label == "int4/fp16 g128"
    c = Compression.parse("fp16", format="nm:2:4")
    assert (c.n, c.m, c.sparsity, c.label) == (2, 4, 0.5, "fp16 nm:2:4")
    assert Compression.parse(format="nm").format_spec == "nm:2:4"
    assert Compression.parse(format="bsr").block == (16, 16)
    c = Compression.parse("int8", "int8", format="bsr:32x8", sparsity="0.5")
    assert c.block == (32, 8) and c.label == "int8 bsr:32x8 50%"
    assert Compression.parse("fp16", format="CSR", sparsity=0.9).label == "fp16 csr 90%"
    assert Compression.parse("int8", group="none").group_size is None
    d = Compression.parse("int4", group=64, zero_points=True).to_dict()
    assert d["format"] == "dense" and d["group_size"] == 64 and d["zero_points"] is True


@pytest.mark.parametrize("kwargs,match", [
    (dict(weights="int3"), "valid dtypes: fp32, tf32, fp16, bf16, fp8, int8, int4"),
    (dict(weights="fp16", acts="fp64"), "acts"),
    (dict(format="coo"), "valid formats: dense, csr, bsr:RxC, nm:N:M, channel"),
    (dict(format="bsr:16"), "bsr:RxC"),
    (dict(format="nm:4"), "nm:N:M"),
    (dict(format="nm:4:4"), "n < m"),
    (dict(format="csr", sparsity=1.0), r"\[0, 1\)"),
    (dict(format="csr", sparsity=-0.1), r"\[0, 1\)"),
    (dict(format="csr", sparsity=float("nan")), r"\[0, 1\)"),
    (dict(format="csr", sparsity="lots"), "sparsity"),
    (dict(format="dense", sparsity=0.5), "dense format has no sparsity"),
    (dict(format="nm:2:4", sparsity=0.3), "implies sparsity 0.5"),
    (dict(weights="fp16", group=128), "int8/int4/fp8"),
    (dict(weights="int4", group="abc"), "group"),
    (dict(weights="int4", group=-4), "group_size"),
    (dict(weights="int8", format="csr", group=64), "dense/channel"),
    (dict(weights="fp16", zero_points=True), "zero_points"),
    (dict(weights="int8", scale_dtype="int8"), "scale_dtype"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Compression.parse(**kwargs)


def test_shape_errors():
    with pytest.raises(ValueError, match="16x16 does not divide the 100x64"):
        weight_bytes(100, 64, Compression.parse(format="bsr:16x16"))
    with pytest.raises(ValueError, match="group_size: 128 does not divide K = 100"):
        weight_bytes(64, 100, Compression.parse("int4", group=128))
    with pytest.raises(ValueError, match="divisible by 4"):
        weight_bytes(64, 10, Compression.parse(format="nm:2:4"))
    with pytest.raises(ValueError, match="rows"):
        weight_bytes(-1, 10, Compression())
    with pytest.raises(TypeError):
        weight_bytes(4, 4, "fp16")


def test_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Compression().weights = "int8"

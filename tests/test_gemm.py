"""memwall.kernels.gemm against plain NumPy references (defined below).

Integer products are compared exactly with an int64 NumPy matmul; float paths (dequantizing epilogue,
quantized Linear, INT4 GEMV) against float64 references with the tolerances of ``memwall.kernels.config``,
scaled by the size of the terms summed.  Both INT8 GEMM paths (VNNI where the CPU has it, and the pure-Numba
fallback) are exercised, and thread counts 1 and 2 must give identical bits.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwall.kernels import config
from memwall.kernels import gemm as G
from memwall.kernels.membench import last_level_cache_bytes, read_bandwidth, stream_bandwidth
from memwall.kernels.quant import quantize_rows_int8

PATHS = G.available_paths()
# tile edges of both paths (same MR x NR tiles; the generic path steps K in pairs, VNNI in groups of 4)
EDGE_DIMS = sorted({0, 1, 2, 3, 4, 5, 7, G.MR - 1, G.MR, G.MR + 1, G.NR - 1, G.NR, G.NR + 1, 2 * G.NR + 1,
                    G.MRG - 1, G.MRG, G.MRG + 1, G.NRG - 1, G.NRG, G.NRG + 1})  # both paths' tiles


# ================================================================================================
# references
# ================================================================================================
def ref_int_gemm(a, b):
    """Exact integer product in int64."""
    return a.astype(np.int64) @ b.astype(np.int64)


def ref_dequant_gemm(a, b, sa, sb, za, zb, bias):
    """float64 ((a - za) * sa) @ ((b - zb) * sb) + bias."""
    af = (a.astype(np.float64) - np.asarray(za, np.float64).reshape(-1, 1)) * np.asarray(sa, np.float64).reshape(-1, 1)
    bf = (b.astype(np.float64) - np.asarray(zb, np.float64).reshape(1, -1)) * np.asarray(sb, np.float64).reshape(1, -1)
    return af @ bf + bias


def ref_unpack4(q4, k):
    """Two's-complement nibbles, element 2i in the low nibble of byte i (the documented order)."""
    lo = (q4 & 0x0F).astype(np.int16)
    hi = (q4 >> 4).astype(np.int16)
    lo = np.where(lo > 7, lo - 16, lo)
    hi = np.where(hi > 7, hi - 16, hi)
    out = np.empty((q4.shape[0], 2 * q4.shape[1]), np.int16)
    out[:, 0::2] = lo
    out[:, 1::2] = hi
    return out[:, :k]


def ref_weights(pw):
    """float64 (out, in) weights from the stored integers, scales and zero points."""
    n, k = pw.shape
    if pw.bits == 8:
        return (pw.q8.astype(np.float64) - pw.zero_point[:, None]) * pw.scale[:, None].astype(np.float64)
    q = ref_unpack4(pw.q4, k).astype(np.float64).reshape(n, -1, pw.group_size)
    return ((q - pw.zero_point[:, :, None]) * pw.scale[:, :, None].astype(np.float64)).reshape(n, k)


def assert_close(got, want, terms):
    """float32 kernels vs float64: error bounded by rtol * (sum of |terms|) + atol."""
    tol = config.FLOAT32_RTOL * terms + config.FLOAT32_ATOL
    err = np.abs(got.astype(np.float64) - want)
    assert got.dtype == np.float32
    assert np.all(err <= tol), f"max error {err.max()} (tolerance there {tol.ravel()[np.argmax(err)]})"


def rand_i8(rng, shape, extremes=True):
    x = rng.integers(-128, 128, size=shape, dtype=np.int16).astype(np.int8)
    if extremes and x.size:
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 8))] = -128
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 8))] = 127
    return x


# ================================================================================================
# INT8 GEMM: exactness
# ================================================================================================
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=25)
@given(m=st.sampled_from(EDGE_DIMS + [13, 30]), n=st.sampled_from(EDGE_DIMS + [70, 97]),
       k=st.sampled_from(EDGE_DIMS + [9, 63, 130]), seed=st.integers(0, 2**32 - 1))
def test_int8_gemm_exact_hypothesis(path, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a, b = rand_i8(rng, (m, k)), rand_i8(rng, (k, n))
    c = G.int8_gemm(a, b, path=path)
    assert c.dtype == np.int32 and c.shape == (m, n)
    np.testing.assert_array_equal(c, ref_int_gemm(a, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fill", [-128, 127])
def test_int8_gemm_extreme_values(path, fill):
    a = np.full((G.MR * 2 + 3, 257), fill, np.int8)
    b = np.full((257, G.NR * 2 + 5), -128, np.int8)
    np.testing.assert_array_equal(G.int8_gemm(a, b, path=path), ref_int_gemm(a, b))


@pytest.mark.parametrize("path", PATHS)
def test_packed_reuse_and_nk_layout(path, rng):
    w = rand_i8(rng, (45, 77))  # (out, in): PyTorch Linear layout
    pb = G.pack_int8(w, layout="nk")
    assert pb.shape == (77, 45) and pb.nbytes > 0
    for m in (1, 6, 31):
        a = rand_i8(rng, (m, 77))
        np.testing.assert_array_equal(G.int8_gemm(a, pb, path=path), ref_int_gemm(a, w.T))
    np.testing.assert_array_equal(G.int8_gemm(a, G.pack_int8(np.ascontiguousarray(w.T)), path=path),
                                  ref_int_gemm(a, w.T))


@pytest.mark.parametrize("path", PATHS)
def test_paths_agree_and_threads_identical(path, rng):
    a, b = rand_i8(rng, (50, 300)), rand_i8(rng, (300, 90))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        c1 = G.int8_gemm(a, b, path=path)
        y1 = G.int8_gemm_dequant(a, b, 0.01, 0.02, b_zero_point=3, path=path)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        c2 = G.int8_gemm(a, b, path=path)
        y2 = G.int8_gemm_dequant(a, b, 0.01, 0.02, b_zero_point=3, path=path)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(c1, ref_int_gemm(a, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [G.NR, 96, 4 * G.NR + 16])
def test_aligned_output_widths(path, n, rng):
    # widths that are multiples of 16 take the non-temporal store path for full tiles
    a, b = rand_i8(rng, (2 * G.MR + 5, 300)), rand_i8(rng, (300, n))
    c = G.int8_gemm(a, b, path=path)
    assert c.flags.c_contiguous and c.dtype == np.int32
    np.testing.assert_array_equal(c, ref_int_gemm(a, b))


@pytest.mark.parametrize("path", PATHS)
def test_noncontiguous_inputs_are_copied(path, rng):
    a_big, b_big = rand_i8(rng, (20, 60)), rand_i8(rng, (60, 40))
    a = a_big[::-1, ::2]  # negative and non-unit strides
    b = b_big[::2, ::-1]
    np.testing.assert_array_equal(G.int8_gemm(a, b, path=path), ref_int_gemm(a, b))
    bt = b_big.T[::-1]  # (40, 60) view, weights layout
    np.testing.assert_array_equal(G.int8_gemm(a_big[:, :60], G.pack_int8(bt, layout="nk"), path=path),
                                  ref_int_gemm(a_big, bt.T))


@pytest.mark.parametrize("path", PATHS)
def test_overflow_widens_instead_of_wrapping(path):
    k = 140_001  # K * 128 * 128 > 2**31 - 1
    a = np.full((2, k), -128, np.int8)
    b = np.full((k, 3), -128, np.int8)
    b[5, 1] = 127
    c = G.int8_gemm(a, b, path=path)
    want = ref_int_gemm(a, b)
    assert want.max() > config.INT32_MAX  # the case int32 cannot hold
    assert c.dtype == np.int64
    np.testing.assert_array_equal(c, want)
    # the same K with small values fits int32: no widening
    a1 = np.ones((2, k), np.int8)
    c1 = G.int8_gemm(a1, b, path=path)
    assert c1.dtype == np.int32
    np.testing.assert_array_equal(c1, ref_int_gemm(a1, b))
    # the epilogue follows the exact widened product
    y = G.int8_gemm_dequant(a, b, 1e-6, 1e-3, path=path)
    assert_close(y, ref_dequant_gemm(a, b, 1e-6, 1e-3, 0, 0, 0.0), np.abs(want) * 1e-9)


# ================================================================================================
# fused epilogue
# ================================================================================================
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=15)
@given(m=st.sampled_from([1, 3, G.MR + 1, 40]), n=st.sampled_from([1, 17, G.NR + 3]),
       k=st.sampled_from([1, 5, 64, 131]), per_channel=st.booleans(), zp=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_int8_gemm_dequant(path, m, n, k, per_channel, zp, seed):
    rng = np.random.default_rng(seed)
    a, b = rand_i8(rng, (m, k)), rand_i8(rng, (k, n))
    sa = rng.uniform(0.001, 0.1, m).astype(np.float32) if per_channel else np.float32(0.05)
    sb = rng.uniform(0.001, 0.1, n).astype(np.float32) if per_channel else np.float32(0.02)
    za = rng.integers(-20, 20, m) if zp else None
    zb = rng.integers(-20, 20, n) if zp else None
    bias = rng.standard_normal(n).astype(np.float32)
    y = G.int8_gemm_dequant(a, G.pack_int8(b), sa, sb, a_zero_point=za, b_zero_point=zb, bias=bias, path=path)
    want = ref_dequant_gemm(a, b, sa, sb, 0 if za is None else za, 0 if zb is None else zb, bias)
    terms = ref_dequant_gemm(np.abs(a.astype(np.int64) - (0 if za is None else za.reshape(-1, 1))),
                             np.abs(b.astype(np.int64) - (0 if zb is None else zb.reshape(1, -1))),
                             sa, sb, 0, 0, np.abs(bias))
    assert y.shape == (m, n)
    assert_close(y, want, terms)


# ================================================================================================
# quantized Linear: W8A8, W8 weight-only, W4A16, W4A8, GEMV
# ================================================================================================
def ref_round_a16(x, pw):
    """act_quant="int16" as documented: per group of the weights (the whole row for one group), step =
    float32(max|x_g| / 32384), v = round-half-even(x * float32(1 / step)) in float32, clipped to +-32384;
    returns the rounded activations step * v (float32) and the steps per input."""
    x = np.asarray(x, np.float32)
    k = x.shape[-1]
    g = k if pw.n_groups == 1 else pw.group_size
    out = np.empty_like(x)
    steps = np.empty_like(x)
    for lo in range(0, k, g):
        seg = x[..., lo:lo + g]
        step = (np.abs(seg).max(axis=-1, keepdims=True).astype(np.float64) / 32384).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(step > 0, (1.0 / step.astype(np.float64)), 0.0).astype(np.float32)
        v = np.clip(np.rint(seg * inv), -32384, 32384).astype(np.float32)
        out[..., lo:lo + g] = step * v
        steps[..., lo:lo + g] = step
    return out, steps


def _linear_reference(x, pw, bias, act_quant):
    w = ref_weights(pw)
    if act_quant == "int8":
        xq, sx = quantize_rows_int8(x)
        xr = xq.astype(np.float64) * sx[:, None]
    elif act_quant == "int16":
        xr = ref_round_a16(x, pw)[0].astype(np.float64)
    else:
        xr = x.astype(np.float64)
    return xr @ w.T + bias, np.abs(xr) @ np.abs(w).T + np.abs(bias)


@pytest.mark.parametrize("bits,group_size,symmetric", [(8, None, True), (8, None, False), (4, None, True),
                                                       (4, 32, False), (4, 64, True)])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("act_quant", ["int8", "int16", "none"])
def test_quantized_linear(bits, group_size, symmetric, tokens, act_quant, rng):
    n, k = 70, 256
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    pw = G.pack_weights(w, bits=bits, group_size=group_size, symmetric=symmetric)
    want, terms = _linear_reference(x, pw, bias, act_quant)
    for path in PATHS:
        y = G.quantized_linear(x, pw, bias, act_quant=act_quant, path=path)
        assert y.shape == (tokens, n)
        assert_close(y, want, terms)
    y1 = G.quantized_linear(x[0], pw, bias, act_quant=act_quant)  # 1-D activations -> 1-D output
    assert y1.shape == (n,)
    assert_close(y1, want[0], terms[0])
    # the packed weights approximate w
    assert np.abs(pw.dequantize() - w).max() <= np.abs(w).max() / (7 if bits == 4 else 127) + 1e-6


def test_quantized_linear_defaults(rng):
    w = rng.standard_normal((33, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    p8, p4 = G.pack_weights(w, bits=8), G.pack_weights(w, bits=4, group_size=16)
    np.testing.assert_array_equal(G.quantized_linear(x, p8), G.quantized_linear(x, p8, act_quant="int8"))
    np.testing.assert_array_equal(G.quantized_linear(x, p4), G.quantized_linear(x, p4, act_quant="none"))
    np.testing.assert_array_equal(G.int4_gemm(x, p4), G.quantized_linear(x, p4, act_quant="none"))
    np.testing.assert_array_equal(G.int4_gemv(x[1], p4), G.quantized_linear(x[1:2], p4)[0])
    assert p4.nbytes < p8.nbytes < w.nbytes


@pytest.mark.parametrize("k,group_size", [(63, None), (64, 2), (96, 6), (128, 128)])
def test_int4_gemv_odd_shapes(k, group_size, rng):
    w = rng.standard_normal((19, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    for sym in (True, False):
        pw = G.pack_weights(w, bits=4, group_size=group_size, symmetric=sym)
        want, terms = _linear_reference(x[None], pw, np.zeros(19), "none")
        assert_close(G.int4_gemv(x, pw), want[0], terms[0])
        assert_close(G.int4_gemm(np.stack([x, x]), pw), np.stack([want[0]] * 2), np.stack([terms[0]] * 2))


def test_pack_quantized_matches_given_values(rng):
    q = rng.integers(-8, 8, size=(10, 32)).astype(np.int8)
    q[0, :2] = (-8, 7)
    scale = rng.uniform(0.01, 0.1, (10, 4)).astype(np.float32)
    zp = rng.integers(-2, 3, (10, 4))
    pw = G.pack_quantized(q, scale, zp, bits=4, group_size=8)
    want = (q.reshape(10, 4, 8) - zp[:, :, None]) * scale[:, :, None].astype(np.float64)
    np.testing.assert_allclose(pw.dequantize(), want.reshape(10, 32), rtol=1e-6)
    x = rng.standard_normal(32).astype(np.float32)
    assert_close(G.int4_gemv(x, pw), want.reshape(10, 32) @ x, np.abs(want.reshape(10, 32)) @ np.abs(x))
    q8 = rng.integers(-128, 128, size=(6, 20)).astype(np.int8)
    p8 = G.pack_quantized(q8, np.full(6, 0.5, np.float32), bits=8)
    xi = rand_i8(rng, (4, 20))
    y = G.int8_gemm_dequant(xi, p8.int8, 1.0, p8.scale)
    np.testing.assert_allclose(y, ref_int_gemm(xi, q8.T) * 0.5, rtol=1e-6)


# ================================================================================================
# bad input
# ================================================================================================
def test_bad_input_int8_gemm(rng):
    a, b = rand_i8(rng, (4, 8)), rand_i8(rng, (8, 3))
    with pytest.raises(TypeError, match="a: expected dtype int8"):
        G.int8_gemm(a.astype(np.int16), b)
    with pytest.raises(TypeError, match="b: expected dtype int8"):
        G.int8_gemm(a, b.astype(np.float32))
    with pytest.raises(TypeError, match="a: expected a numpy.ndarray"):
        G.int8_gemm([[1, 2]], b)
    with pytest.raises(ValueError, match="a: expected a 2-D"):
        G.int8_gemm(a[0], b)
    with pytest.raises(ValueError, match="b: expected a 2-D"):
        G.int8_gemm(a, b[None])
    with pytest.raises(ValueError, match="b: inner dimension mismatch"):
        G.int8_gemm(a, b[:7])
    with pytest.raises(ValueError, match="b: inner dimension mismatch"):
        G.int8_gemm(a, G.pack_int8(b[:7]))
    with pytest.raises(ValueError, match="path"):
        G.int8_gemm(a, b, path="avx9000")
    with pytest.raises(TypeError, match="path"):
        G.int8_gemm(a, b, path=3)
    with pytest.raises(ValueError, match="layout"):
        G.pack_int8(b, layout="weird")


def test_bad_input_epilogue(rng):
    a, b = rand_i8(rng, (4, 8)), rand_i8(rng, (8, 3))
    for bad in (np.nan, np.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="a_scale"):
            G.int8_gemm_dequant(a, b, bad, 1.0)
        with pytest.raises(ValueError, match="b_scale"):
            G.int8_gemm_dequant(a, b, 1.0, np.array([1.0, bad, 1.0]))
    with pytest.raises(ValueError, match="b_scale: expected a scalar or shape \\(3,\\)"):
        G.int8_gemm_dequant(a, b, 1.0, np.ones(4))
    with pytest.raises(TypeError, match="b_zero_point"):
        G.int8_gemm_dequant(a, b, 1.0, 1.0, b_zero_point=np.ones(3))
    with pytest.raises(ValueError, match="bias"):
        G.int8_gemm_dequant(a, b, 1.0, 1.0, bias=np.array([0.0, np.nan, 1.0]))


def test_int8_activation_paths_refuse_nan_and_inf(rng):
    """W8A8 and W4A8 leave the NaN/Inf test of x to the INT8 quantizer: the same error, naming x and the entry."""
    w = rng.standard_normal((8, 32)).astype(np.float32)
    for bits, gs in ((8, None), (4, 8)):
        pw = G.pack_weights(w, bits=bits, group_size=gs)
        for v in (np.nan, np.inf, -np.inf):
            x = rng.standard_normal((3, 32)).astype(np.float32)
            x[1, 7] = v
            with pytest.raises(ValueError, match=f"x: expected finite values, found {v} at flat index 39"):
                G.quantized_linear(x, pw, act_quant="int8")
            with pytest.raises(ValueError, match="x: expected finite values"):
                G.quantized_linear(x[1], pw, act_quant="int8")


def test_epilogue_scalar_scales_equal_their_broadcast_arrays(rng):
    a, b = rand_i8(rng, (5, 40)), rand_i8(rng, (40, 7))
    for sa, sb, bias in ((0.25, 3, None), (np.float64(1e-3), np.float32(2.5), 1.5), (7, 0.5, -2)):
        want = G.int8_gemm_dequant(a, b, np.full(5, sa, np.float32), np.full(7, sb, np.float32),
                                   bias=None if bias is None else np.full(7, bias, np.float32))
        np.testing.assert_array_equal(G.int8_gemm_dequant(a, b, sa, sb, bias=bias), want)
    with pytest.raises(TypeError, match="a_scale: expected dtype float32, got object"):
        G.int8_gemm_dequant(a, b, 10**400, 1.0)
    with pytest.raises(ValueError, match="a_scale: expected finite values, found inf"), np.errstate(over="ignore"):
        G.int8_gemm_dequant(a, b, 1e39, 1.0)  # float64 1e39 becomes inf in float32 (NumPy warns; we raise)


def test_bad_input_weights_and_linear(rng):
    w = rng.standard_normal((8, 32)).astype(np.float32)
    for gs in (0, -4):
        with pytest.raises(ValueError, match="group_size"):
            G.pack_weights(w, bits=4, group_size=gs)
    with pytest.raises(ValueError, match="group_size: expected a divisor"):
        G.pack_weights(w, bits=4, group_size=5)
    with pytest.raises(TypeError, match="group_size"):
        G.pack_weights(w, bits=4, group_size=8.0)
    with pytest.raises(ValueError, match="bits"):
        G.pack_weights(w, bits=3)
    with pytest.raises(ValueError, match="w: expected finite"):
        G.pack_weights(np.where(w > 1, np.inf, w), bits=8)
    with pytest.raises(ValueError, match="w: expected a 2-D"):
        G.pack_weights(w[0], bits=8)
    with pytest.raises(TypeError, match="w: expected a float array"):
        G.pack_weights(w.astype(np.int8), bits=8)
    q = np.zeros((8, 32), np.int8)
    q[3, 4] = 8
    with pytest.raises(ValueError, match="values: expected values in \\[-8, 7\\]"):
        G.pack_quantized(q, np.ones((8, 4), np.float32), bits=4, group_size=8)
    with pytest.raises(ValueError, match="scale"):
        G.pack_quantized(np.zeros((8, 32), np.int8), np.full((8, 4), np.nan, np.float32), bits=4, group_size=8)
    pw = G.pack_weights(w, bits=4, group_size=8)
    with pytest.raises(ValueError, match="x: inner dimension mismatch"):
        G.quantized_linear(np.ones((2, 31), np.float32), pw)
    with pytest.raises(ValueError, match="x: expected finite"):
        G.quantized_linear(np.full((2, 32), np.nan, np.float32), pw)
    with pytest.raises(ValueError, match="x: expected a 1-D or 2-D"):
        G.quantized_linear(np.ones((1, 2, 32), np.float32), pw)
    with pytest.raises(TypeError, match="packed"):
        G.quantized_linear(np.ones((2, 32), np.float32), w)
    with pytest.raises(ValueError, match="act_quant"):
        G.quantized_linear(np.ones((2, 32), np.float32), pw, act_quant="fp8")
    with pytest.raises(ValueError, match="bias"):
        G.quantized_linear(np.ones((2, 32), np.float32), pw, bias=np.ones(9))
    with pytest.raises(ValueError, match="packed: expected 4-bit"):
        G.int4_gemv(np.ones(32, np.float32), G.pack_weights(w, bits=8))
    with pytest.raises(ValueError, match="one token"):
        G.int4_gemv(np.ones((2, 32), np.float32), pw)
    with pytest.raises(ValueError, match="group_size divisible by 4"):
        G.quantized_linear(np.ones((2, 32), np.float32), G.pack_weights(w, bits=4, group_size=2), act_quant="int8")
    # strided activations are copied, not misread
    x = rng.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(G.quantized_linear(x[::-2, ::2], pw), G.quantized_linear(x[::-2, ::2].copy(), pw))


# ================================================================================================
# paths, membench
# ================================================================================================
def test_active_paths():
    info = G.active_paths()
    assert {"int8_gemm", "int4_gemv", "int4_gemm", "int8_wo"} <= set(info)
    assert "generic" in PATHS
    assert info["int8_gemm"].startswith("avx512-vnni" if G._DEFAULT_PATH == "vnni" else "generic")


def test_stream_bandwidth_small():
    bw = stream_bandwidth(1 << 20, kind="copy", repeats=2)
    assert np.isfinite(bw) and bw > 0
    assert last_level_cache_bytes() > 0
    with pytest.raises(ValueError, match="kind"):
        stream_bandwidth(1 << 20, kind="scale")
    with pytest.raises(ValueError, match="nbytes"):
        stream_bandwidth(10)
    assert stream_bandwidth(1 << 20, kind="triad", threads=1, repeats=1) > 0
    with pytest.raises(ValueError, match="threads"):
        stream_bandwidth(1 << 20, threads=0)
    assert read_bandwidth(1 << 16, threads=1, repeats=2) > 0
    with pytest.raises(ValueError, match="nbytes"):
        read_bandwidth(100)


def test_isa_env_selects_default_path(monkeypatch):
    monkeypatch.setenv("MEMWALL_ISA", "generic")
    assert G._default_path() == "generic"
    monkeypatch.setenv("MEMWALL_ISA", "auto")
    assert G._default_path() == ("vnni" if "vnni" in PATHS else "generic")
    monkeypatch.setenv("MEMWALL_ISA", "bogus")
    with pytest.raises(ValueError, match="MEMWALL_ISA"):
        G._default_path()


def test_hand_built_packed_objects_are_checked():
    """The constructors are reachable; short arrays must be refused before a kernel reads past them."""
    with pytest.raises(ValueError, match="PackedInt8 data: expected"):
        G.PackedInt8(4096, 1 << 20, np.zeros(16, np.int8), np.zeros(16, np.int32), np.zeros(7, np.int64), 1)
    with pytest.raises(TypeError, match="PackedInt8 comp"):
        p = G.pack_int8(np.ones((8, 4), np.int8))
        G.PackedInt8(8, 4, p.data, p.comp.astype(np.int64), p.colsum, 1)
    with pytest.raises(ValueError, match="PackedWeights q8"):
        G.PackedWeights(8, 4, 4, 4, True, np.ones(4, np.float32), np.zeros(4, np.int32), q8=np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError, match="PackedWeights q4"):
        G.PackedWeights(4, 4, 4, 2, True, np.ones((4, 2), np.float32), np.zeros((4, 2), np.int32),
                        q4=np.zeros((2, 2), np.uint8))
    p = G.pack_int8(np.ones((8, 4), np.int8))  # a valid rebuild still works
    q = G.PackedInt8(p.k, p.n, p.data, p.comp, p.colsum, p.max_abs)
    np.testing.assert_array_equal(G.int8_gemm(np.ones((3, 8), np.int8), q), np.full((3, 4), 8, np.int32))


@pytest.mark.parametrize("bits,group", [(4, 32), (4, None), (8, None)])
def test_weight_only_many_tokens_blas_path_matches_reference(bits, group, monkeypatch):
    """From WEIGHT_ONLY_BLAS_TOKENS tokens the weights are dequantized in blocks and multiplied by BLAS."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((37, 96)).astype(np.float32)
    x = rng.standard_normal((G.WEIGHT_ONLY_BLAS_TOKENS + 3, 96)).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    pw = G.pack_weights(w, bits=bits, group_size=group, symmetric=False)
    monkeypatch.setattr(G, "_WO_BLOCK_BYTES", 10 * 96 * 4)  # several blocks, the last one short
    ref = x.astype(np.float64) @ pw.dequantize().astype(np.float64).T + bias
    y = G.quantized_linear(x, pw, bias, act_quant="none")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    few = G.quantized_linear(x[: G.WEIGHT_ONLY_BLAS_TOKENS - 1], pw, bias, act_quant="none")  # row-buffer path
    np.testing.assert_allclose(few, ref[: G.WEIGHT_ONLY_BLAS_TOKENS - 1], rtol=1e-4, atol=1e-4)


# ================================================================================================
# INT4 weight-only on AVX-512: GEMV row blocks, few-token kernel, fused panel GEMM (explicit IR)
# ================================================================================================
IR = G._DEFAULT_PATH == "vnni"
needs_ir = pytest.mark.skipif(not IR, reason="the IR weight-only kernels need AVX-512 (and MEMWALL_ISA != generic)")
# (in_features, group_size): several K blocks of the fused kernel with a short last one (k=320), one group per
# row, groups of 16 and 32 bytes, and a row of 16 bytes
IR_SHAPES = [(32, None), (64, 32), (96, 32), (256, 128), (320, 64), (512, 32)]


def _wo_case(rng, m, n, k, group, sym):
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, rng.integers(0, k)] *= 50.0  # an outlier feature, as real activations have
    bias = rng.standard_normal(n).astype(np.float32)
    pw = G.pack_weights(w, bits=4, group_size=group, symmetric=sym)
    want, terms = _linear_reference(x, pw, bias, "none")
    return x, pw, bias, want, terms


@needs_ir
@settings(max_examples=20)
@given(m=st.sampled_from([1, 2, 3, 5, 12, 13, 16, 17, 31, 33, 40]),
       n=st.sampled_from([1, 3, 15, 16, 17, 33, 64, 150]),
       shape=st.sampled_from(IR_SHAPES), sym=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_int4_weight_only_ir_paths_match_reference(m, n, shape, sym, seed):
    """Each IR path, called directly, and the dispatching quantized_linear against the float64 reference."""
    k, group = shape
    x, pw, bias, want, terms = _wo_case(np.random.default_rng(seed), m, n, k, group, sym)
    assert G._wo4_ir_ok(pw)
    for fn in (G._wo4_tokens, G._wo_fused):
        y = fn(x, pw, bias)
        assert y.shape == (m, n)
        assert_close(y, want, terms)
    assert_close(G.quantized_linear(x, pw, bias, act_quant="none"), want, terms)
    assert_close(G.int4_gemv(x[0], pw, bias), want[0], terms[0])


@needs_ir
def test_int4_weight_only_ir_threads_identical(rng):
    """Threads own disjoint rows / panels and every output sums in a fixed order: 1 and 2 threads agree bitwise."""
    x, pw, bias, want, terms = _wo_case(rng, 20, 150, 320, 64, False)
    p16 = G.pack_weights(rng.standard_normal((150, 256)).astype(np.float32), bits=4, group_size=128)  # A16 kernel
    before = numba.get_num_threads()
    outs = []
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            outs.append([G._wo4_tokens(x[:5], pw, bias), G._wo_fused(x, pw, bias), G.int4_gemv(x[0], pw, bias),
                         G.int4_gemv(x[0], pw, bias, act_quant="int16"), G.int4_gemv(x[1, :256], p16, act_quant="int16")])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert_close(outs[0][1], want, terms)


@needs_ir
@settings(max_examples=20)
@given(m=st.sampled_from([1, 2, 9, 13, 16, 17, 31, 33, 40]), n=st.sampled_from([1, 3, 15, 16, 17, 33, 70]),
       k=st.sampled_from([1, 7, 16, 63, 100, 256, 300, 1000]), sym=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_int8_weight_only_fused_matches_reference(m, n, k, sym, seed):
    """The fused INT8 weight-only kernel (any K, channels off the 16-panel, tokens off the 16-column tiles)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    pw = G.pack_weights(w, bits=8, symmetric=sym)
    want, terms = _linear_reference(x, pw, bias, "none")
    y = G._wo_fused(x, pw, bias)
    assert y.shape == (m, n)
    assert_close(y, want, terms)


@needs_ir
@settings(max_examples=30)
@given(n=st.sampled_from([1, 3, 4, 5, 16, 17, 33, 70, 101]),
       k=st.sampled_from([1, 15, 16, 17, 63, 64, 65, 100, 256, 1000]), m=st.sampled_from([1, 2, 3, 5, 20]),
       sym=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_int8_weight_only_rows_zmm_match_reference(n, k, m, sym, seed):
    """Few tokens through INT8 weights on the zmm IR rows (K off the 16- and 64-byte steps: the tail is summed
    apart; rows off the 4-row tasks; tokens in pairs and a last single one; prefetch on from 20 rows) against the
    float64 reference (and one token against the portable kernel); 1 and 2 threads give the same bits."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, rng.integers(0, k)] *= 50.0
    bias = rng.standard_normal(n).astype(np.float32)
    pw = G.pack_weights(w, bits=8, symmetric=sym)
    want, terms = _linear_reference(x, pw, bias, "none")
    portable = np.empty(n, np.float32)
    G._int8_gemv_kernel(x[0], np.float32(x[0].sum(dtype=np.float32)), pw.q8, pw.scale, pw.zero_point, pw._zp_used,
                        bias, portable)
    assert_close(portable, want[0], terms[0])
    before = numba.get_num_threads()
    outs = []
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            outs.append(G.quantized_linear(x, pw, bias, act_quant="none"))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0].shape == (m, n)
    assert_close(outs[0], want, terms)
    np.testing.assert_array_equal(G._wo8_rows(x, pw, bias), outs[0])


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, None)])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_weight_only_portable_paths_match_reference(bits, group, m, rng, monkeypatch):
    """The kernels other CPUs (and MEMWALL_ISA=generic) run for float activations: the portable GEMV, the
    row-buffer kernel below WEIGHT_ONLY_BLAS_TOKENS tokens, dequantized blocks for BLAS from it."""
    monkeypatch.setattr(G, "_DEFAULT_PATH", "generic")
    w = rng.standard_normal((37, 96)).astype(np.float32)
    x = rng.standard_normal((m, 96)).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    pw = G.pack_weights(w, bits=bits, group_size=group, symmetric=False)
    want, terms = _linear_reference(x, pw, bias, "none")
    y = G.quantized_linear(x, pw, bias, act_quant="none")
    assert y.shape == (m, 37)
    assert_close(y, want, terms)
    if m < G.WEIGHT_ONLY_BLAS_TOKENS and m > 1:  # the row-buffer kernel itself, against the BLAS blocks
        assert_close(G._weight_only_blas(x, pw, bias), want, terms)


@needs_ir
def test_int8_weight_only_dispatch_and_threads(rng, monkeypatch):
    """quantized_linear(act_quant="none") on 8-bit weights: GEMV-style IR rows, fused kernel, BLAS blocks by the
    token count; the fused kernel gives the same bits on 1 and 2 threads."""
    w = rng.standard_normal((40, 200)).astype(np.float32)
    x = rng.standard_normal((12, 200)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    pw = G.pack_weights(w, bits=8, symmetric=False)
    want, terms = _linear_reference(x, pw, bias, "none")
    monkeypatch.setattr(G, "WEIGHT_ONLY_W8_FEW_TOKENS", 3)
    monkeypatch.setattr(G, "WEIGHT_ONLY_FUSED_BLAS_TOKENS", 8)
    np.testing.assert_array_equal(G.quantized_linear(x[:3], pw, bias, act_quant="none"), G._wo8_rows(x[:3], pw, bias))
    np.testing.assert_array_equal(G.quantized_linear(x[:5], pw, bias, act_quant="none"), G._wo_fused(x[:5], pw, bias))
    np.testing.assert_array_equal(G.quantized_linear(x, pw, bias, act_quant="none"), G._weight_only_blas(x, pw, bias))
    for y in (G.quantized_linear(x[:3], pw, bias, act_quant="none"), G._weight_only_blas(x, pw, bias)[:3]):
        assert_close(y, want[:3], terms[:3])
    before = numba.get_num_threads()
    outs = []
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            outs.append(G._wo_fused(x, pw, bias))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert_close(outs[0], want, terms)


@needs_ir
def test_int4_weight_only_dispatch_by_token_count(rng, monkeypatch):
    """quantized_linear picks the few-token kernel, the fused kernel or BLAS blocks by the token count."""
    x, pw, bias, want, terms = _wo_case(rng, 9, 37, 256, 128, True)
    monkeypatch.setattr(G, "WEIGHT_ONLY_FEW_TOKENS", 3)
    monkeypatch.setattr(G, "WEIGHT_ONLY_FUSED_BLAS_TOKENS", 7)
    np.testing.assert_array_equal(G.quantized_linear(x[:3], pw, bias), G._wo4_tokens(x[:3], pw, bias))
    np.testing.assert_array_equal(G.quantized_linear(x[:6], pw, bias), G._wo_fused(x[:6], pw, bias))
    np.testing.assert_array_equal(G.quantized_linear(x, pw, bias), G._weight_only_blas(x, pw, bias))
    assert_close(G._weight_only_blas(x, pw, bias), want, terms)
    # groups whose bytes are not a multiple of 16 stay on the portable kernels
    odd = G.pack_weights(rng.standard_normal((5, 24)).astype(np.float32), bits=4, group_size=8)
    assert not G._wo4_ir_ok(odd)


# ================================================================================================
# A16: one token rounded to 16-bit fixed point, INT4 GEMV on the integer units
# ================================================================================================
@settings(max_examples=40)
@given(k=st.sampled_from([1, 2, 7, 63, 64, 127, 128, 129, 256, 384, 1000]), group=st.sampled_from([None, 2, 32, 128]),
       scale=st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 3e4]), seed=st.integers(0, 2**32 - 1))
def test_a16_rounding_matches_reference(k, group, scale, seed):
    """The rounding is bit-identical to the documented NumPy definition, within half a step of x, on the grid."""
    if group is not None and k % group:
        group = None
    rng = np.random.default_rng(seed)
    pw = G.pack_weights(rng.standard_normal((3, k)).astype(np.float32), bits=4, group_size=group)
    x = (rng.standard_normal((2, k)) * scale).astype(np.float32)
    x[0, rng.integers(0, k)] = scale * 40  # an outlier: the group's step follows it
    got = G._round_a16(x, pw)
    want, steps = ref_round_a16(x, pw)
    np.testing.assert_array_equal(got, want)
    # half a step, plus float32 rounding of x / step and of step * v
    assert np.all(np.abs(got.astype(np.float64) - x) <= steps.astype(np.float64) * 0.5 * (1 + 1e-3) + 2.0**-22 * np.abs(x))
    g64, s64 = got.astype(np.float64), steps.astype(np.float64)
    v = np.rint(np.divide(g64, s64, out=np.zeros_like(g64), where=s64 > 0))
    assert np.all(np.abs(v) <= G.A16_QMAX)
    assert np.all(np.abs(g64 - s64 * v) <= 2.0**-24 * np.abs(g64))  # step * v, rounded once to float32


# shapes on the VNNI A16 kernel (group bytes a multiple of 64) and on its float fallback
A16_SHAPES = [(128, 128), (256, 128), (384, 128), (512, 256), (128, None), (256, None), (640, 128),
              (96, 32), (200, None), (63, None), (256, 64)]


@settings(max_examples=30)
@given(n=st.sampled_from([1, 3, 4, 5, 7, 8, 9, 16, 17, 33]), shape=st.sampled_from(A16_SHAPES), sym=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_int4_gemv_a16_matches_reference(n, shape, sym, seed):
    """int4_gemv(act_quant="int16") against float64 weights @ the reference-rounded activations, and against the
    float-activation kernels run on those same rounded activations (the VNNI kernel's integer sums are exact)."""
    k, group = shape
    rng = np.random.default_rng(seed)
    x, pw, bias, _, _ = _wo_case(rng, 1, n, k, group, sym)
    want, terms = _linear_reference(x, pw, bias, "int16")
    y = G.int4_gemv(x[0], pw, bias, act_quant="int16")
    assert y.shape == (n,)
    assert_close(y, want[0], terms[0])
    # without bias: the lean entry (type checks only; the kernel checks x is finite), also from quantized_linear
    y0 = G.int4_gemv(x[0], pw, act_quant="int16")
    assert_close(y0, want[0] - bias, terms[0])
    np.testing.assert_array_equal(G.quantized_linear(x[:1], pw, act_quant="int16"), y0[None])
    np.testing.assert_array_equal(G.quantized_linear(x[0], pw, act_quant="none"), G.int4_gemv(x[0], pw))
    assert_close(G._int4_gemv_raw(G._round_a16(x, pw)[0], pw, bias), want[0], terms[0])
    np.testing.assert_array_equal(G.quantized_linear(x, pw, bias, act_quant="int16")[0], y)


@needs_ir
def test_int4_gemv_a16_large_group_sums_do_not_wrap(rng):
    """One group of 10240 inputs (VNNI kernel): x at the largest step everywhere and the extreme nibbles; the sum of
    v alone (8 * 32384 * 10240) exceeds int32, the kernel's split accumulators must not wrap."""
    k = 10240
    for fill in (7, -8):
        q = np.full((6, k), fill, np.int8)
        q[1::2, ::3] = -8 if fill == 7 else 7
        pw = G.pack_quantized(q, np.full(6, 0.01, np.float32), bits=4)
        assert pw._q4u.shape[1] % 64 == 0  # the integer kernel, not the fallback
        x = np.full(k, 2.5, np.float32)
        x[::7] = -2.5
        want = ref_weights(pw) @ ref_round_a16(x, pw)[0].astype(np.float64)
        assert_close(G.int4_gemv(x, pw, act_quant="int16"), want, np.abs(ref_weights(pw)) @ np.abs(x))


def test_a16_bad_input(rng):
    pw = G.pack_weights(rng.standard_normal((4, 128)).astype(np.float32), bits=4, group_size=128)
    with pytest.raises(ValueError, match="act_quant"):
        G.int4_gemv(np.ones(128, np.float32), pw, act_quant="int8")
    with pytest.raises(ValueError, match="act_quant"):
        G.quantized_linear(np.ones(128, np.float32), pw, act_quant="int4")
    for v in (np.nan, np.inf, -np.inf):
        bad = np.ones(128, np.float32)
        bad[5] = v
        with pytest.raises(ValueError, match="x"):
            G.int4_gemv(bad, pw, act_quant="int16")
        with pytest.raises(ValueError, match="x"):
            G.int4_gemv(bad, pw, np.zeros(4, np.float32), act_quant="int16")
        with pytest.raises(ValueError, match="x"):
            G.int4_gemv(bad, pw)
        for aq in ("none", "int16"):
            with pytest.raises(ValueError, match="x"):
                G.quantized_linear(bad[None], pw, act_quant=aq)


def test_int4_gemv_finite_check_reads_bit_patterns(rng):
    """The GEMV kernel's own NaN/Inf test (a max over the bit patterns, then a search) at the edges of the
    float32 range: the largest finite values and subnormals pass, every non-finite pattern (signed NaN, NaN
    with a payload, +-Inf, last position) is refused with the full validation's message."""
    pw = G.pack_weights(rng.standard_normal((8, 128)).astype(np.float32), bits=4, group_size=128)
    big = np.float32(np.finfo(np.float32).max)
    for edge in (big, -big, np.float32(1e-45), np.float32(-0.0)):
        x = np.zeros(128, np.float32)
        x[7] = edge
        for aq in ("none", "int16"):
            y = G.int4_gemv(x, pw, act_quant=aq)  # products may overflow to +-inf: not an input error
            assert y.shape == (8,)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7F800000, 0xFF800000], np.uint32)
    for bits in nans.view(np.float32):
        for pos in (0, 127):
            x = np.ones(128, np.float32)
            x[pos] = bits
            for aq in ("none", "int16"):
                with pytest.raises(ValueError, match=f"x: expected finite values, found .* at flat index {pos}"):
                    G.int4_gemv(x, pw, act_quant=aq)


def test_int4_gemv_generic_and_ir_kernels_agree(rng):
    """The portable GEMV kernel (other CPUs, MEMWALL_ISA=generic) and the default one on the same inputs."""
    x, pw, bias, want, terms = _wo_case(rng, 1, 37, 256, 32, False)
    nb = pw._q4u.shape[1]
    xe, xo = x[0, 0::2].copy(), x[0, 1::2].copy()
    xgs = x[0].reshape(pw.n_groups, -1).sum(axis=1, dtype=np.float32)
    out = np.empty(37, np.float32)
    G._int4_gemv_kernel(xe, xo, xgs, pw._q4u, pw.scale, pw._zp8, bias, out, nb // pw.n_groups)
    assert_close(out, want[0], terms[0])
    assert_close(G.int4_gemv(x[0], pw, bias), want[0], terms[0])


# ================================================================================================
# INT8 GEMM: K chunks and A blocks (several micro-kernel calls per tile)
# ================================================================================================
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,n", [(2 * G.MR + 7, 2 * G.NR), (2 * G.MR + 1, 2 * G.NR + 16), (G.MR + 5, 2 * G.NR + 6)])
def test_int8_gemm_k_chunks_and_edges(path, m, n, rng):
    # K spans several K chunks (4 * KC4 K values on the VNNI path, 2 * KC2G on the generic one), ends inside an
    # A block and off a multiple of 4; rows end in a full edge panel (7 rows), a one-row panel or 5 rows;
    # n % 16 == 0 takes the non-temporal stores, the other width the plain ones; 1 and 2 threads agree
    k = 4 * G.KC4 + 4 * 16 + 7 if path == "vnni" else 2 * G.KC2G + 2 * 16 + 5
    k = 2 * k + 1  # three chunks, the last a partial one
    a, b = rand_i8(rng, (m, k)), rand_i8(rng, (k, n))
    ref = ref_int_gemm(a, b)
    old = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            np.testing.assert_array_equal(G.int8_gemm(a, b, path=path), ref)
    finally:
        numba.set_num_threads(old)

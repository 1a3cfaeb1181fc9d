"""memwall.kernels.quant against plain NumPy references (defined below, written from the documented rules).

Integer results (quantized values, zero points, packed bytes) are compared exactly; float results
(scales, dequantized values, emulated floats) are compared bit-for-bit too, because the documented
arithmetic (float32 division, float64 scale computation rounded once) is reproducible in NumPy.
"""
from __future__ import annotations

import json
import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memwall.kernels import quant as Q

TINY = np.float32(np.finfo(np.float32).tiny)


# ================================================================================================
# references
# ================================================================================================
def ref_grid(bits, signed, symmetric):
    if bits == "ternary":
        return -1, 1
    if bits == "binary":
        return -1, 1
    if not signed:
        return 0, 2**bits - 1
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def ref_scale_zp(lo, hi, qmin, qmax, symmetric, signed):
    lo, hi = float(lo), float(hi)
    if symmetric:
        amax = max(abs(lo), abs(hi)) if signed else max(hi, 0.0)
        s = amax / qmax
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        s = (hi - lo) / (qmax - qmin)
    s32 = np.float32(s)
    if s32 == 0:
        s32 = np.float32(1.0)
    elif s32 < TINY:
        s32 = TINY
    zp = 0 if symmetric else int(min(max(qmin - np.rint(lo / float(s32)), qmin), qmax))
    return s32, zp


def ref_q(v, s, zp, qmin, qmax):
    """values for a float32 slice with one float32 scale."""
    v = np.asarray(v, np.float32)
    return np.clip(np.rint(v / np.float32(s)) + np.float32(zp), qmin, qmax)


def ref_units(x, axis, group_size):
    """List of (index, slice-array) calibration units and the scale shape."""
    if group_size is not None:
        rows, k = x.shape
        out = []
        for r in range(rows):
            for j in range(k // group_size):
                idx = (r, slice(j * group_size, (j + 1) * group_size))
                out.append(((r, j), idx))
        return out, (rows, k // group_size)
    if axis is not None:
        out = []
        for c in range(x.shape[axis]):
            idx = [slice(None)] * x.ndim
            idx[axis] = c
            out.append(((c,), tuple(idx)))
        return out, (x.shape[axis],)
    return [((), tuple(slice(None) for _ in range(x.ndim)))], ()


def ref_quantize(x, bits=8, symmetric=True, axis=None, group_size=None, method="minmax", signed=True,
                 percentile=Q.DEFAULT_PERCENTILE):
    x = np.asarray(x, np.float32)
    if axis is not None:
        axis %= x.ndim
    qmin, qmax = ref_grid(bits, signed, symmetric)
    units, sshape = ref_units(x, axis, group_size)
    scale = np.zeros(sshape, np.float32)
    zp = np.zeros(sshape, np.int32)
    vals = np.zeros(x.shape, np.int8 if signed else np.uint8)
    for sidx, idx in units:
        sl = x[idx]
        if bits == "binary":
            m = float(np.abs(sl.astype(np.float64)).mean()) if sl.size else 0.0
            m = m if m > 0 else float(TINY)  # documented: binary cannot represent 0
            s, z = ref_scale_zp(-m, m, qmin, qmax, True, True)
            vals[idx] = np.where(sl >= 0, 1, -1)
        else:
            if sl.size == 0:
                lo = hi = 0.0
            elif method == "percentile":
                if symmetric and signed:
                    hi = float(np.percentile(np.abs(sl).ravel(), percentile))
                    lo = -hi
                else:
                    hi = float(np.percentile(sl.ravel(), percentile))
                    lo = float(np.percentile(sl.ravel(), 100 - percentile))
            else:
                lo, hi = float(sl.min()), float(sl.max())
            s, z = ref_scale_zp(lo, hi, qmin, qmax, symmetric, signed)
            vals[idx] = ref_q(sl, s, z, qmin, qmax)
        scale[sidx] = s
        zp[sidx] = z
    return vals, scale, zp


def ref_dequantize(values, scale, zp, axis=None, group_size=None):
    q = values.astype(np.int32)
    if group_size is not None:
        s = np.repeat(scale, group_size, axis=1)
        z = np.repeat(zp, group_size, axis=1)
    elif axis is not None:
        shape = [1] * values.ndim
        shape[axis] = -1
        s, z = scale.reshape(shape), zp.reshape(shape)
    else:
        s, z = scale, zp
    return (q - z).astype(np.float32) * s


def ref_pack(q):
    q = np.asarray(q).astype(np.int64)
    n = q.shape[-1]
    out = np.zeros(q.shape[:-1] + ((n + 1) // 2,), np.uint8)
    for i in range(n):
        nib = (int_mask(q[..., i])).astype(np.uint8)
        if i % 2 == 0:
            out[..., i // 2] |= nib
        else:
            out[..., i // 2] |= nib << 4
    return out


def int_mask(v):
    return np.asarray(v) & 0xF


def ref_unpack(p, n, signed=True):
    out = np.zeros(p.shape[:-1] + (n,), np.int64)
    for i in range(n):
        b = p[..., i // 2].astype(np.int64)
        nib = (b >> 4) & 0xF if i % 2 else b & 0xF
        if signed:
            nib = np.where(nib >= 8, nib - 16, nib)
        out[..., i] = nib
    return out.astype(np.int8 if signed else np.uint8)


# --- float formats by enumeration --------------------------------------------------------------
FMT_PARAMS = {  # name: (exponent bits, mantissa bits, bias, ieee-like (inf + NaN at max exponent))
    "fp16": (5, 10, 15, True),
    "bf16": (8, 7, 127, True),
    "tf32": (8, 10, 127, True),
    "fp8_e5m2": (5, 2, 15, True),
    "fp8_e4m3": (4, 3, 7, False),
}


def enumerate_format(name):
    """All non-negative finite values of the format, ascending by code (index == code)."""
    e, m, bias, ieee = FMT_PARAMS[name]
    codes = np.arange(2 ** (e + m), dtype=np.int64)
    exp = codes >> m
    man = codes & (2**m - 1)
    vals = np.where(exp == 0, man * 2.0 ** (1 - bias - m), (1 + man / 2.0**m) * 2.0 ** (exp - bias))
    if ieee:
        vals = vals[exp < 2**e - 1]
    else:  # E4M3FN: only S.1111.111 is NaN
        vals = vals[:-1]
    return vals


def ref_emulate(x, name, saturate):
    """Nearest-even rounding by search on the enumerated grid, in float64."""
    grid = enumerate_format(name)
    e, m, bias, ieee = FMT_PARAMS[name]
    ulp_max = grid[-1] - grid[-2]
    ext = np.append(grid, grid[-1] + ulp_max)  # virtual next code = overflow
    a = np.abs(x.astype(np.float64))
    out = np.empty(x.shape, np.float64)
    finite = np.isfinite(a)
    af = np.where(finite, a, 0.0)
    idx = np.clip(np.searchsorted(ext, af, side="right") - 1, 0, len(ext) - 1)
    lo = ext[idx]
    hi = ext[np.minimum(idx + 1, len(ext) - 1)]
    dlo, dhi = af - lo, hi - af
    up = (dhi < dlo) | ((dhi == dlo) & (idx % 2 == 1))
    up &= idx < len(ext) - 1
    choice = np.where(up, idx + 1, idx)
    rounded = ext[choice]
    over = (choice == len(ext) - 1) | ~finite
    if saturate:
        over_val = grid[-1]
    else:
        over_val = np.inf if ieee else np.nan
    out = np.where(over, over_val, rounded)
    out = np.where(np.isnan(x), np.nan, out)
    return np.copysign(out, x.astype(np.float64)).astype(np.float32)


def random_floats(rng, n):
    """Random float32 bit patterns (no NaN) plus normal samples over many scales."""
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[~np.isnan(x)]
    y = (rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 6, n)).astype(np.float32)
    return np.concatenate([x, y])


def grid_probes(name):
    """Grid values, exact midpoints, and their float32 neighbours, both signs."""
    g = enumerate_format(name)
    if len(g) > 5000:
        sel = np.unique(np.concatenate([np.arange(0, 3000), np.arange(len(g) - 3000, len(g)),
                                        np.linspace(0, len(g) - 1, 3000).astype(int)]))
        g = g[sel]
    mids = (g[:-1] + g[1:]) / 2
    top = g[-1] + (g[-1] - g[-2]) / 2
    pts64 = np.concatenate([g, mids, [top, g[-1] * 2, 2 * top]])
    with np.errstate(over="ignore"):
        pts = pts64.astype(np.float32)
    pts = pts[pts.astype(np.float64) == pts64]  # drop probes beyond float32 (bf16/tf32 overflow points)
    pts = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(0))])
    return np.concatenate([pts, -pts])


def same_floats(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    assert a.shape == b.shape
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_array_equal(a.view(np.uint32)[~nan_a], b.view(np.uint32)[~nan_b])


# ================================================================================================
# quantize / dequantize
# ================================================================================================
CONFIGS = [
    dict(bits=8), dict(bits=4), dict(bits=8, symmetric=False), dict(bits=4, symmetric=False),
    dict(bits=8, signed=False), dict(bits=4, signed=False, symmetric=False),
    dict(bits=8, signed=False, symmetric=False),
    dict(bits="ternary"), dict(bits="binary"),
]
LAYOUTS = [dict(), dict(axis=0), dict(axis=1), dict(axis=-1), dict(group_size=4), dict(group_size=12)]


def check_against_ref(x, **kw):
    qt = Q.quantize(x, **kw)
    vals, scale, zp = ref_quantize(x, **kw)
    assert qt.values.dtype == vals.dtype
    np.testing.assert_array_equal(qt.values, vals)
    same_floats(qt.scale, scale)
    np.testing.assert_array_equal(qt.zero_point, zp)
    assert qt.scale.dtype == np.float32 and qt.zero_point.dtype == np.int32
    axis = None if kw.get("axis") is None else kw["axis"] % x.ndim
    same_floats(qt.dequantize(), ref_dequantize(vals, scale, zp, axis, kw.get("group_size")))
    return qt


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "tensor")
def test_quantize_matches_reference(rng, cfg, layout):
    x = (rng.standard_normal((9, 24)) * rng.uniform(0.1, 10, (9, 1))).astype(np.float32)
    x[3] = 0.0  # an all-zero row
    x[5, 7] = 40.0  # an outlier
    qt = check_against_ref(x, **cfg, **layout)
    assert qt.bits == {8: 8, 4: 4, "ternary": 2, "binary": 1}[cfg["bits"]]
    if not cfg.get("symmetric", True):
        assert qt.symmetric is False
    else:
        assert (qt.zero_point == 0).all()


@pytest.mark.parametrize("method", ["percentile", "minmax"])
@pytest.mark.parametrize("cfg", [dict(bits=8), dict(bits=4, symmetric=False), dict(bits=8, signed=False),
                                 dict(bits="ternary")])
def test_percentile_matches_reference(rng, method, cfg):
    x = rng.standard_t(3, (6, 128)).astype(np.float32)
    for layout in (dict(), dict(axis=0), dict(group_size=32)):
        check_against_ref(x, method=method, percentile=99.0, **cfg, **layout) if method == "percentile" else \
            check_against_ref(x, method=method, **cfg, **layout)


def test_percentile_clips_and_saturates(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    x[0], x[1] = 1000.0, -1000.0
    qt = Q.quantize(x, method="percentile", percentile=99.0)
    assert qt.values[0] == 127 and qt.values[1] == -127  # saturated, not wrapped
    assert qt.scale < 1000.0 / 127
    qa = Q.quantize(x, bits=4, symmetric=False, method="percentile", percentile=99.0)
    assert qa.values[0] == 7 and qa.values[1] == -8


@pytest.mark.parametrize("cfg", [dict(bits=8), dict(bits=4), dict(bits=4, symmetric=False),
                                 dict(bits=4, signed=False), dict(bits="ternary")])
@pytest.mark.parametrize("layout", [dict(axis=0), dict(axis=1), dict(group_size=16), dict()])
def test_mse_search_is_optimal_over_the_grid(rng, cfg, layout):
    x = rng.standard_t(4, (5, 48)).astype(np.float32)
    grid = 40
    qt = Q.quantize(x, method="mse", grid=grid, **cfg, **layout)
    qm = Q.quantize(x, method="minmax", **cfg, **layout)
    # brute force per unit: every clipping ratio r = i / grid of the min-max range
    qmin, qmax = ref_grid(cfg["bits"], cfg.get("signed", True), cfg.get("symmetric", True))
    axis = layout.get("axis")
    units, _ = ref_units(x, None if axis is None else axis % 2, layout.get("group_size"))
    deq = qt.dequantize()
    for sidx, idx in units:
        sl = x[idx].astype(np.float32)
        lo, hi = float(sl.min()), float(sl.max())
        best = math.inf
        for i in range(grid, 0, -1):
            r = i / grid
            s, z = ref_scale_zp(lo * r, hi * r, qmin, qmax, cfg.get("symmetric", True), cfg.get("signed", True))
            d = (ref_q(sl, s, z, qmin, qmax) - np.float32(z)).astype(np.float32) * s
            best = min(best, float(((d.astype(np.float64) - sl) ** 2).sum()))
        got = float(((deq[idx].astype(np.float64) - sl) ** 2).sum())
        assert got <= best * (1 + 1e-9) + 1e-30
        # the chosen range never exceeds the min-max range
        assert qt.scale[sidx] <= qm.scale[sidx] * (1 + 1e-6)
    assert Q.mse(x, qt.dequantize()) <= Q.mse(x, qm.dequantize())


@pytest.mark.parametrize("cfg", [dict(bits=4), dict(bits=8, symmetric=False)])
def test_mse_search_long_rows(rng, cfg):
    # few rows longer than the error block: the block-parallel search must find the brute-force optimum too
    for x, layout in ((rng.standard_t(3, 3 * 4096 + 5).astype(np.float32), dict()),
                      (rng.standard_t(3, (2, 9000)).astype(np.float32), dict(axis=0))):
        grid = 25
        qt = Q.quantize(x, method="mse", grid=grid, **cfg, **layout)
        qmin, qmax = ref_grid(cfg["bits"], True, cfg.get("symmetric", True))
        units, _ = ref_units(x, layout.get("axis"), None)
        deq = qt.dequantize()
        for sidx, idx in units:
            sl = x[idx]
            lo, hi = float(sl.min()), float(sl.max())
            errs = []
            for i in range(grid, 0, -1):
                s, z = ref_scale_zp(lo * i / grid, hi * i / grid, qmin, qmax, cfg.get("symmetric", True), True)
                d = (ref_q(sl, s, z, qmin, qmax) - np.float32(z)).astype(np.float32) * s
                errs.append(float(((d.astype(np.float64) - sl) ** 2).sum()))
            got = float(((deq[idx].astype(np.float64) - sl) ** 2).sum())
            assert got <= min(errs) * (1 + 1e-9)


def test_round_half_to_even_and_saturation():
    # amax = 127 -> scale exactly 1.0: x / scale is exact and the ties are visible
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0, -127.0, 3.49999], np.float32)
    qt = Q.quantize(x)
    assert qt.scale == np.float32(1.0)
    np.testing.assert_array_equal(qt.values, [0, 2, 2, 0, -2, -2, 126, 127, -127, 3])
    # asymmetric int8 on [-128, 127]: scale 1.0, zero point 0
    y = np.array([-128.0, 127.0, -127.5, 0.5], np.float32)
    qa = Q.quantize(y, symmetric=False)
    assert qa.scale == np.float32(1.0) and qa.zero_point == 0
    np.testing.assert_array_equal(qa.values, [-128, 127, -128, 0])


def test_zero_and_tiny_channels_get_safe_scales():
    x = np.zeros((3, 8), np.float32)
    x[1] = 1e-42  # subnormal: amax / 127 underflows below FLT_MIN
    x[2, 0] = -3.0e38
    x[2, 1] = 3.0e38
    for kw in (dict(axis=0), dict(axis=0, symmetric=False), dict(axis=0, signed=False), dict(group_size=4),
               dict(axis=0, bits="binary"), dict(axis=0, bits=4, method="mse")):
        qt = Q.quantize(x, **kw)
        assert np.isfinite(qt.scale).all() and (qt.scale > 0).all()
        assert np.isfinite(1.0 / qt.scale.astype(np.float32)).all()
        d = qt.dequantize()
        assert np.isfinite(d).all()
        if kw.get("bits") == "binary":  # 0 is not on the binary grid: the smallest scale instead
            assert qt.scale[0] == TINY
            np.testing.assert_array_equal(d[0], TINY)
        elif "group_size" not in kw:
            assert qt.scale[0] == 1.0
            np.testing.assert_array_equal(d[0], 0.0)
            assert qt.scale[1] == TINY
    check_against_ref(x, axis=0)
    check_against_ref(x, axis=0, symmetric=False)
    check_against_ref(x, group_size=2, bits=4, signed=False, symmetric=False)


@settings(max_examples=30)
@given(
    shape=st.tuples(st.integers(0, 7), st.integers(0, 9)),
    data=st.data(),
    cfg=st.sampled_from(CONFIGS),
    layout=st.sampled_from([dict(), dict(axis=0), dict(axis=1), "group"]),
)
def test_quantize_hypothesis(shape, data, cfg, layout):
    if layout == "group":
        g = data.draw(st.sampled_from([1, 2, 3]))
        shape = (shape[0], shape[1] - shape[1] % g)
        layout = dict(group_size=g)
    elems = st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([0.0, -0.0, 3.0e38, -3.0e38, 1e-40, 0.5, 2.5]))
    x = data.draw(hnp.arrays(np.float32, shape, elements=elems))
    check_against_ref(x, **cfg, **layout)


def test_quantize_nd_any_axis(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    for axis in (0, 1, 2, -2):
        check_against_ref(x, axis=axis)
        check_against_ref(x, axis=axis, bits=4, symmetric=False)
    check_against_ref(x)
    z = Q.quantize(np.float64(2.5))  # 0-d stays 0-d
    assert z.values.shape == () and z.values == 127 and z.dequantize().shape == ()
    big = rng.standard_normal(3 * 16384 + 77).astype(np.float32)  # per-tensor chunking + tail
    check_against_ref(big)
    check_against_ref(big, bits=4, symmetric=False, signed=False)


def test_noncontiguous_and_other_float_dtypes(rng):
    base = rng.standard_normal((10, 32)).astype(np.float32)
    for view in (base[:, ::2], base[::-1], base.T, base[::2, 1::3]):
        for kw in (dict(), dict(axis=1), dict(axis=0, bits=4)):
            a = Q.quantize(view, **kw)
            b = Q.quantize(np.ascontiguousarray(view), **kw)
            np.testing.assert_array_equal(a.values, b.values)
            same_floats(a.scale, b.scale)
    x64 = base.astype(np.float64)
    np.testing.assert_array_equal(Q.quantize(x64).values, Q.quantize(base).values)
    np.testing.assert_array_equal(Q.quantize(base.tolist(), axis=0).values, Q.quantize(base, axis=0).values)


def test_compute_scales_matches_quantize(rng):
    x = rng.standard_normal((8, 64)).astype(np.float32)
    for kw in (dict(), dict(axis=1, bits=4, symmetric=False), dict(group_size=32, method="mse"),
               dict(method="percentile", percentile=99.5, axis=0)):
        s, z = Q.compute_scales(x, **kw)
        qt = Q.quantize(x, **kw)
        same_floats(s, qt.scale)
        np.testing.assert_array_equal(z, qt.zero_point)


def test_dequantize_raw_arrays(rng):
    q = rng.integers(-128, 128, (6, 16)).astype(np.int8)
    s = rng.uniform(0.01, 1, (6, 4)).astype(np.float32)
    z = rng.integers(-5, 5, (6, 4)).astype(np.int32)
    same_floats(Q.dequantize(q, s, z, group_size=4), ref_dequantize(q, s, z, group_size=4))
    s1 = rng.uniform(0.01, 1, 16).astype(np.float32)
    same_floats(Q.dequantize(q, s1, axis=1), ref_dequantize(q, s1, np.zeros(16, np.int32), axis=1))
    u = rng.integers(0, 256, (5,)).astype(np.uint8)
    same_floats(Q.dequantize(u, np.float32(0.5), np.int32(128)), (u.astype(np.int32) - 128).astype(np.float32) * 0.5)
    same_floats(Q.dequantize(q[:, ::-1], s1, axis=1),
                ref_dequantize(q[:, ::-1].copy(), s1, np.zeros(16, np.int32), axis=1))


def test_quantized_tensor_contract(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    qt = Q.quantize(x, bits=4, group_size=4, symmetric=False)
    assert qt.values.shape == x.shape and qt.values.dtype == np.int8
    assert qt.scale.shape == (4, 2) and qt.zero_point.shape == (4, 2)
    assert (qt.bits, qt.axis, qt.group_size, qt.format) == (4, None, 4, "int4")
    assert (qt.qmin, qt.qmax) == (-8, 7)
    np.testing.assert_array_equal(unpack := Q.unpack_int4(qt.packed(), 8), qt.values)
    assert unpack.dtype == np.int8
    qs = Q.quantize(x, axis=-1)
    assert qs.axis == 1 and qs.scale.shape == (8,)
    qu = Q.quantize(np.abs(x), bits=8, signed=False)
    assert qu.values.dtype == np.uint8 and (qu.qmin, qu.qmax) == (0, 255) and qu.scale.shape == ()
    assert (Q.quantize(x, bits="ternary").qmin, Q.quantize(x, bits="ternary").qmax) == (-1, 1)
    assert Q.quantize(x).qmin == -127
    with pytest.raises(ValueError, match="scale: expected shape"):
        Q.QuantizedTensor(qt.values, np.ones((4,), np.float32), np.zeros((4,), np.int32), 4, None, 4)
    with pytest.raises(ValueError, match="scale: expected finite"):
        Q.QuantizedTensor(qt.values, np.full((4, 2), np.nan, np.float32), np.zeros((4, 2), np.int32), 4, None, 4)
    with pytest.raises(ValueError, match="group_size: values must be 2-D"):
        Q.QuantizedTensor(qt.values, qt.scale, qt.zero_point, 4, None, 3)
    with pytest.raises(ValueError, match="axis: expected an integer <= 1"):
        Q.QuantizedTensor(qt.values, np.ones(4, np.float32), np.zeros(4, np.int32), 8, 2)
    with pytest.raises(TypeError, match="values"):
        Q.QuantizedTensor(qt.values.astype(np.int16), qt.scale, qt.zero_point, 4, None, 4)


def test_error_metrics(rng):
    x = rng.standard_normal((7, 9000)).astype(np.float32)
    y = x + rng.standard_normal(x.shape).astype(np.float32) * 0.01
    d = x.astype(np.float64) - y.astype(np.float64)
    assert Q.mse(x, y) == pytest.approx(np.mean(d**2), rel=1e-12)
    assert Q.max_abs_error(x, y) == np.max(np.abs(d))
    ref_sqnr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(d**2))
    assert Q.sqnr_db(x, y) == pytest.approx(ref_sqnr, rel=1e-12)
    assert Q.sqnr_db(x, x) == math.inf
    assert Q.sqnr_db(np.zeros(3), np.ones(3)) == -math.inf
    assert Q.mse(np.zeros(0), np.zeros(0)) == 0.0
    qt = Q.quantize(x, axis=0)
    e = Q.quantization_error(x, qt)
    deq = qt.dequantize().astype(np.float64)
    assert e["mse"] == pytest.approx(np.mean((x - deq) ** 2), rel=1e-12)
    assert e["max_abs_error"] == np.max(np.abs(x - deq))
    assert e["rmse"] == pytest.approx(math.sqrt(e["mse"]))
    assert e["sqnr_db"] > 35 and e["bits"] == 8
    # 4-bit loses ~24 dB against 8-bit (6 dB/bit) on Gaussian data
    e4 = Q.quantization_error(x, Q.quantize(x, bits=4, axis=0))
    assert 15 < e["sqnr_db"] - e4["sqnr_db"] < 30


# ================================================================================================
# dynamic per-row INT8
# ================================================================================================
@settings(max_examples=25)
@given(shape=st.tuples(st.integers(0, 6), st.integers(0, 40)), data=st.data())
def test_quantize_rows_int8_hypothesis(shape, data):
    elems = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([0.0, 3.4e38, -3.4e38, 1e-42, 127.0, 0.5]))
    x = data.draw(hnp.arrays(np.float32, shape, elements=elems))
    q, s = Q.quantize_rows_int8(x)
    vals, scale, _ = ref_quantize(x, bits=8, axis=0)
    np.testing.assert_array_equal(q, vals)
    same_floats(s, scale)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (shape[0],)


def test_quantize_rows_int8_matches_quantize_and_rejects_nan(rng):
    x = rng.standard_normal((33, 257)).astype(np.float32)
    q, s = Q.quantize_rows_int8(x[:, ::-1])
    qt = Q.quantize(x[:, ::-1], axis=0)
    np.testing.assert_array_equal(q, qt.values)
    same_floats(s, qt.scale)
    x[4, 5] = np.nan
    with pytest.raises(ValueError, match="x: expected finite"):
        Q.quantize_rows_int8(x)
    x[4, 5] = np.inf
    with pytest.raises(ValueError, match="x: expected finite"):
        Q.quantize_rows_int8(x)
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        Q.quantize_rows_int8(x[0])
    with pytest.raises(TypeError, match="x"):
        Q.quantize_rows_int8(np.zeros((2, 2), np.int8))


# ================================================================================================
# INT4 packing
# ================================================================================================
@settings(max_examples=30)
@given(shape=st.tuples(st.integers(0, 5), st.integers(0, 11)), signed=st.booleans(), data=st.data())
def test_pack_unpack_hypothesis(shape, signed, data):
    lo, hi = (-8, 7) if signed else (0, 15)
    q = data.draw(hnp.arrays(np.int8 if signed else np.uint8, shape, elements=st.integers(lo, hi)))
    p = Q.pack_int4(q, signed=signed)
    assert p.dtype == np.uint8 and p.shape == shape[:-1] + ((shape[-1] + 1) // 2,)
    np.testing.assert_array_equal(p, ref_pack(q))
    u = Q.unpack_int4(p, shape[-1], signed=signed)
    assert u.dtype == q.dtype
    np.testing.assert_array_equal(u, q)
    np.testing.assert_array_equal(u, ref_unpack(p, shape[-1], signed))


def test_pack_nibble_order_documented():
    p = Q.pack_int4(np.array([1, -2, 7], np.int8))
    # element 0 low nibble, element 1 high nibble (-2 = 0xE), odd length padded with 0
    np.testing.assert_array_equal(p, np.array([0xE1, 0x07], np.uint8))
    np.testing.assert_array_equal(Q.pack_int4(np.array([[15, 0]], np.uint8), signed=False), [[0x0F]])
    np.testing.assert_array_equal(Q.unpack_int4(np.array([0x8F], np.uint8), 2), [-1, -8])
    np.testing.assert_array_equal(Q.unpack_int4(np.array([0x8F], np.uint8), 2, signed=False), [15, 8])
    # 3-D and non-contiguous input
    rng = np.random.default_rng(1)
    q = rng.integers(-8, 8, (3, 4, 9)).astype(np.int8)
    np.testing.assert_array_equal(Q.pack_int4(q[:, ::-1, ::2]), ref_pack(q[:, ::-1, ::2]))
    np.testing.assert_array_equal(Q.unpack_int4(Q.pack_int4(q), 9), q)
    wide = q.astype(np.int32)
    np.testing.assert_array_equal(Q.pack_int4(wide), ref_pack(q))


def test_pack_int4_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"q: expected values in \[-8, 7\], found 8 at index \(1,\)"):
        Q.pack_int4(np.array([0, 8], np.int8))
    with pytest.raises(ValueError, match=r"q: expected values in \[-8, 7\]"):
        Q.pack_int4(np.array([-9], np.int16))
    with pytest.raises(ValueError, match=r"q: expected values in \[0, 15\]"):
        Q.pack_int4(np.array([16], np.uint8), signed=False)
    with pytest.raises(ValueError, match=r"q: expected values in \[0, 15\]"):
        Q.pack_int4(np.array([-1], np.int8), signed=False)
    with pytest.raises(TypeError, match="q: expected an integer array"):
        Q.pack_int4(np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="q: expected an array with at least 1 dimension"):
        Q.pack_int4(np.array(3, np.int8))
    with pytest.raises(ValueError, match="n: expected ceil"):
        Q.unpack_int4(np.zeros((2, 3), np.uint8), 7)
    with pytest.raises(TypeError, match="p: expected dtype uint8"):
        Q.unpack_int4(np.zeros((2, 3), np.int8), 6)
    with pytest.raises(ValueError, match="n: expected an integer >= 0"):
        Q.unpack_int4(np.zeros((2, 0), np.uint8), -1)


# ================================================================================================
# float-format emulation
# ================================================================================================
def test_fp16_matches_numpy_cast(rng):
    x = random_floats(rng, 200_000)
    x = np.concatenate([x, grid_probes("fp16"), np.array([np.inf, -np.inf, 0.0, -0.0], np.float32)])
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    same_floats(Q.emulate_float(x, "fp16"), ref)


@pytest.mark.parametrize("fmt", ["bf16", "tf32", "fp8_e5m2", "fp8_e4m3", "fp16"])
@pytest.mark.parametrize("saturate", [None, True, False])
def test_float_emulation_matches_enumerated_grid(rng, fmt, saturate):
    x = np.concatenate([random_floats(rng, 50_000), grid_probes(fmt),
                        np.array([np.inf, -np.inf, 0.0, -0.0, np.nan], np.float32)])
    sat = (fmt == "fp8_e4m3") if saturate is None else saturate
    got = Q.emulate_float(x, fmt, saturate=saturate)
    assert got.dtype == np.float32 and got.shape == x.shape
    same_floats(got, ref_emulate(x, fmt, sat))


def test_float_emulation_rules_by_hand():
    e4 = Q.emulate_float
    x = np.array([448, 463.9, 464, 464.1, 1e6, np.inf, -np.inf, -1e6, 2.0**-9, 2.0**-10, 1.5 * 2.0**-9, -2.0**-11],
                 np.float32)
    same_floats(e4(x, "fp8_e4m3"),
                [448, 448, 448, 448, 448, 448, -448, -448, 2.0**-9, 0, 2.0**-8, -0.0])
    nan = np.nan
    same_floats(e4(x, "fp8_e4m3", saturate=False),
                [448, 448, 448, nan, nan, nan, nan, nan, 2.0**-9, 0, 2.0**-8, -0.0])
    y = np.array([57344, 61439, 61440, 65504, 65519.99, 65520, 2.0**-24, 2.0**-25, 2.0**-25 * 3], np.float32)
    same_floats(e4(y, "fp8_e5m2"), [57344, 57344, np.inf, np.inf, np.inf, np.inf, 0, 0, 2.0**-16 * 0])
    same_floats(e4(y, "fp16"), [57344, 61440, 61440, 65504, 65504, np.inf, 2.0**-24, 0, 2.0**-23])
    same_floats(e4(y, "fp16", saturate=True), [57344, 61440, 61440, 65504, 65504, 65504, 2.0**-24, 0, 2.0**-23])
    big = np.array([np.finfo(np.float32).max, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8], np.float32)
    same_floats(e4(big, "bf16"), [np.inf, 1.0, 1.0 + 2.0**-6])
    same_floats(e4(big, "bf16", saturate=True), [(2 - 2.0**-7) * 2.0**127, 1.0, 1.0 + 2.0**-6])
    same_floats(e4(np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11], np.float32), "tf32"), [1.0, 1 + 2.0**-9])
    # bf16 subnormals live among float32 subnormals: quantum 2^-133
    same_floats(e4(np.array([2.0**-133, 2.0**-134, 3 * 2.0**-134], np.float32), "bf16"), [2.0**-133, 0, 2.0**-132])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert e4(x, "fp8_e4m3").shape == (2, 3, 4)
    np.testing.assert_array_equal(e4(x, "fp32"), x)
    assert e4(np.zeros((0, 3), np.float32), "bf16").shape == (0, 3)
    same_floats(e4(x.astype(np.float64)[:, ::-1], "bf16"), x[:, ::-1])


def test_float_emulation_bad_input():
    with pytest.raises(ValueError, match="fmt: expected one of"):
        Q.emulate_float(np.zeros(3, np.float32), "fp4")
    with pytest.raises(TypeError, match="saturate"):
        Q.emulate_float(np.zeros(3, np.float32), "fp16", saturate="yes")
    with pytest.raises(TypeError, match="x: expected"):
        Q.emulate_float("abc", "fp16")


def test_float_format_table_facts():
    rows = {r["name"]: r for r in Q.float_format_table()}
    keys = {"name", "sign_bits", "exponent_bits", "mantissa_bits", "exponent_bias", "max", "min_normal",
            "min_subnormal", "epsilon", "has_inf", "nan"}
    for r in rows.values():
        assert keys <= set(r)
    facts = {  # (e, m, bias, max, min_normal, min_subnormal, eps, has_inf), from the format specs
        "fp32": (8, 23, 127, 3.4028234663852886e38, 2.0**-126, 2.0**-149, 2.0**-23, True),
        "tf32": (8, 10, 127, 3.4011621342146535e38, 2.0**-126, 2.0**-136, 2.0**-10, True),
        "bf16": (8, 7, 127, 3.3895313892515355e38, 2.0**-126, 2.0**-133, 2.0**-7, True),
        "fp16": (5, 10, 15, 65504.0, 2.0**-14, 2.0**-24, 2.0**-10, True),
        "fp8_e5m2": (5, 2, 15, 57344.0, 2.0**-14, 2.0**-16, 0.25, True),
        "fp8_e4m3": (4, 3, 7, 448.0, 2.0**-6, 2.0**-9, 0.125, False),
    }
    for name, (e, m, bias, mx, mn, ms, eps, inf) in facts.items():
        r = rows[name]
        assert (r["exponent_bits"], r["mantissa_bits"], r["exponent_bias"]) == (e, m, bias), name
        assert (r["max"], r["min_normal"], r["min_subnormal"], r["epsilon"], r["has_inf"]) == (mx, mn, ms, eps, inf)
        assert r["sign_bits"] == 1 and r["bits"] == 1 + e + m
    np.testing.assert_array_equal(np.finfo(np.float16).max, rows["fp16"]["max"])
    assert rows["int8"]["max"] == 127 and rows["int4"]["max"] == 7 and rows["int8"]["has_inf"] is False
    json.dumps(Q.float_format_table())  # serialisable for `memwall formats --json`


def test_cli_formats(capsys):
    from memwall.simulator import cli

    assert cli.main(["formats"]) == 0
    out = capsys.readouterr().out
    assert "fp8_e4m3" in out and "448" in out and "bf16" in out
    assert cli.main(["formats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in data["formats"]} >= {"fp16", "bf16", "tf32", "fp8_e4m3", "fp8_e5m2"}


# ================================================================================================
# threads, bad input
# ================================================================================================
def test_float_emulation_matches_torch_casts(rng):
    torch = pytest.importorskip("torch", reason="torch not installed: an optional independent reference")
    x = np.concatenate([random_floats(rng, 100_000), np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)])
    casts = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e5m2": torch.float8_e5m2,
             "fp8_e4m3": torch.float8_e4m3fn}
    for fmt, dt in casts.items():
        ref = torch.from_numpy(x).to(dt).to(torch.float32).numpy()
        same_floats(Q.emulate_float(x, fmt), ref)  # torch 2.13 saturates e4m3 (inf too), like our default


def test_thread_counts_give_identical_results(rng, monkeypatch):
    monkeypatch.setattr(Q, "PARALLEL_MIN_ELEMENTS", 0)  # small inputs would otherwise run on one thread
    x = rng.standard_t(3, (37, 160)).astype(np.float32)
    f = random_floats(rng, 30_000)
    q4 = rng.integers(-8, 8, (37, 33)).astype(np.int8)
    big = rng.standard_normal(70_000).astype(np.float32)

    def run():
        out = []
        for kw in (dict(axis=0, method="mse", bits=4), dict(group_size=32, method="mse", symmetric=False),
                   dict(), dict(axis=1)):
            qt = Q.quantize(x, **kw)
            out += [qt.values, qt.scale, qt.zero_point, qt.dequantize()]
        qt = Q.quantize(big)
        out += [qt.values, qt.dequantize()]
        qt = Q.quantize(big, bits=4, method="mse", grid=20)  # block-parallel search of one long row
        out += [qt.values, qt.scale]
        out += list(Q.quantize_rows_int8(x))
        out += [Q.emulate_float(f, "bf16"), Q.emulate_float(f, "fp8_e4m3"), Q.pack_int4(q4),
                Q.unpack_int4(Q.pack_int4(q4), 33)]
        out += [np.array([Q.mse(big, big * 1.01), Q.sqnr_db(big, big * 1.01), Q.max_abs_error(big, big * 1.01)])]
        return out

    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run()
    finally:
        numba.set_num_threads(old)
    for a, b in zip(one, two):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8))


BAD = [
    (lambda: Q.quantize(np.array([1.0, np.nan], np.float32)), ValueError, "x: expected finite"),
    (lambda: Q.quantize(np.array([1.0, np.inf], np.float32)), ValueError, "x: expected finite"),
    (lambda: Q.quantize(np.zeros(4, np.float32), bits=3), ValueError, "bits: expected one of"),
    (lambda: Q.quantize(np.zeros(4, np.float32), bits=True), ValueError, "bits: expected one of"),
    (lambda: Q.quantize(np.zeros(4, np.float32), bits="int2"), ValueError, "bits: expected one of"),
    (lambda: Q.quantize(np.zeros(4, np.float32), bits="ternary", symmetric=False), ValueError, "symmetric"),
    (lambda: Q.quantize(np.zeros(4, np.float32), bits="binary", signed=False), ValueError, "signed"),
    (lambda: Q.quantize(np.zeros((2, 8), np.float32), group_size=0), ValueError,
     "group_size: expected an integer >= 1"),
    (lambda: Q.quantize(np.zeros((2, 8), np.float32), group_size=-4), ValueError, "group_size"),
    (lambda: Q.quantize(np.zeros((2, 8), np.float32), group_size=3), ValueError, "group_size: K=8 .* not divisible"),
    (lambda: Q.quantize(np.zeros((2, 8), np.float32), group_size=2.0), TypeError, "group_size: expected an integer"),
    (lambda: Q.quantize(np.zeros(8, np.float32), group_size=2), ValueError, "x: group quantization expects a 2-D"),
    (lambda: Q.quantize(np.zeros((2, 8), np.float32), group_size=2, axis=0), ValueError, "axis: must be None"),
    (lambda: Q.quantize(np.zeros((2, 8), np.float32), axis=2), ValueError, "axis: expected an axis"),
    (lambda: Q.quantize(np.zeros((), np.float32), axis=0), ValueError, "axis"),
    (lambda: Q.quantize(np.zeros(4, np.float32), method="kl"), ValueError, "method: expected one of"),
    (lambda: Q.quantize(np.zeros(4, np.float32), method="percentile", percentile=20), ValueError, "percentile"),
    (lambda: Q.quantize(np.zeros(4, np.float32), method="mse", grid=0), ValueError, "grid"),
    (lambda: Q.quantize(np.zeros(4, np.float32), clip=3), TypeError, "unexpected keyword"),
    (lambda: Q.quantize(np.zeros(4, np.int8)), TypeError, "x: expected a float array"),
    (lambda: Q.quantize("abc"), TypeError, "x"),
    (lambda: Q.dequantize(np.zeros(4, np.int8), np.float32(np.nan)), ValueError, "scale: expected finite"),
    (lambda: Q.dequantize(np.zeros(4, np.int8), np.float32(np.inf)), ValueError, "scale: expected finite"),
    (lambda: Q.dequantize(np.zeros(4, np.int8), np.float32(0.0)), ValueError, "scale: expected values > 0"),
    (lambda: Q.dequantize(np.zeros(4, np.int8), np.ones(3, np.float32), axis=0), ValueError, "scale: expected shape"),
    (lambda: Q.dequantize(np.zeros(4, np.float32), np.float32(1)), TypeError, "q: expected dtype"),
    (lambda: Q.dequantize(np.zeros(4, np.int8)), TypeError, "scale: required"),
    (lambda: Q.dequantize(np.zeros((2, 4), np.int8), np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32),
                          group_size=2), TypeError, "zero_point: expected an integer"),
    (lambda: Q.dequantize(np.zeros((2, 4), np.int8), np.ones((2, 2), np.float32), group_size=3), ValueError,
     "group_size"),
    (lambda: Q.mse(np.zeros(3), np.zeros(4)), ValueError, "y: expected the shape"),
    (lambda: Q.sqnr_db(np.zeros(3), np.array([0, np.nan, 0])), ValueError, "y: expected finite"),
    (lambda: Q.quantization_error(np.zeros(3), np.zeros(3)), TypeError, "qt: expected a QuantizedTensor"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

"""Numba loops behind ``memwall.kernels.spmm`` (pydata/sparse style: the kernels only loop).

Every kernel writes into a caller-allocated output and trusts its inputs completely: the public wrappers in
``spmm.py`` / ``formats.py`` have validated every index, shape and dtype before a kernel sees them (the
kernels run without bounds checks).

Conventions shared by all kernels
---------------------------------
* Weights are ``(rows, cols)`` = ``(out, in)``; the dense operand ``X`` is ``(cols, batch)`` row-major, so one
  stored weight updates one contiguous ``batch``-wide row of the output (an axpy the compiler vectorizes).
* ``data`` is always a flat 1-D array: float32, int8 (quantized; multiplied by ``scales``) or uint16 (the bit
  pattern of float16 values, decoded exactly in registers: Numba has no float16 type on the CPU).
* ``scales`` is a float32 array (per row for CSR / N:M, per stored block for BSR) or an empty array when the
  values are not quantized.  Float-activation kernels fold it into the weight: ``v = float32(q) * scale``,
  exactly what ``to_dense()`` computes, so the dense reference is the same matrix.
* Each parallel iteration owns whole output rows (or block rows): no two threads write the same element and
  every element's summation order is fixed, so 1 and 2 threads give bit-identical results.
* The N:M metadata is a little-endian bit stream per row: kept value ``t`` of a row has its position inside
  its group in bits ``[t*b, t*b + b)`` (bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# 2**(e - 25) for the float16 exponent field e (e = 0: subnormals, 2**-24 per mantissa unit; e = 31: inf).
_H2F = np.array([2.0 ** (max(e, 1) - 25) for e in range(31)] + [np.inf], dtype=np.float32)


@njit
def _half_to_float(h):  # pragma: no cover - compiled
    """Exact float16 -> float32 of a uint16 bit pattern: +-(mantissa | implicit bit) * 2**(exp - 25)."""
    u = np.int32(h)
    e = (u >> 10) & 0x1F
    mant = (u & 0x3FF) | (((e + 31) >> 5) << 10)  # implicit leading 1 unless subnormal (e == 0)
    return np.float32(mant) * _H2F[e] * np.float32(1 - 2 * ((u >> 15) & 1))


def _f32(v):  # pragma: no cover - replaced by the overload below inside compiled code
    raise NotImplementedError


@overload(_f32)
def _f32_impl(v):
    """A stored weight as float32: float16 bit patterns (uint16) decoded exactly, int8/float32 converted.

    Takes a scalar, never an array: array arguments in inner loops cost reference-count traffic."""
    if v == types.uint16:
        return lambda v: _half_to_float(v)
    return lambda v: np.float32(v)


# ================================================================================================
# CSR.  X (cols, B) and out (rows, B) are indexed 2-D (X[j, b]): no array views in the inner loops (a view
# costs reference-count traffic on a cache line both threads share), and the wraparound check of the row
# index stays outside the vectorized batch loop.
# ================================================================================================
@njit(parallel=True, fastmath=True, cache=True)
def csr_mm(indptr, indices, data, scales, X, P, R, out):  # pragma: no cover - compiled
    """out[i, :] = sum_p v_p * X[indices[p], :] over the stored entries of row i (float32 accumulation).

    Cache blocking: a thread owns a chunk of R rows; the reduction dimension is walked in panels of P rows of
    X (sized to stay in L1), each row resuming at its cursor; every row still sums its entries in storage
    order, so the result does not depend on P, R or the thread count."""
    rows = indptr.shape[0] - 1
    B = X.shape[1]
    K = X.shape[0]
    has_scales = scales.shape[0] > 0
    nch = (rows + R - 1) // R
    for ch in prange(nch):
        r0 = ch * R
        r1 = min(rows, r0 + R)
        cur = np.empty(R, np.int64)
        for i in range(r0, r1):
            cur[i - r0] = indptr[i]
            for b in range(B):
                out[i, b] = 0.0
        for k1 in range(P, K + P, P):
            for i in range(r0, r1):
                s = scales[i] if has_scales else np.float32(1.0)
                p = cur[i - r0]
                e = indptr[i + 1]
                while p + 4 <= e and indices[p + 3] < k1:
                    x0 = indices[p]
                    x1 = indices[p + 1]
                    x2 = indices[p + 2]
                    x3 = indices[p + 3]
                    v0 = _f32(data[p]) * s
                    v1 = _f32(data[p + 1]) * s
                    v2 = _f32(data[p + 2]) * s
                    v3 = _f32(data[p + 3]) * s
                    for b in range(B):
                        out[i, b] += (v0 * X[x0, b] + v1 * X[x1, b]) + (v2 * X[x2, b] + v3 * X[x3, b])
                    p += 4
                while p < e and indices[p] < k1:
                    x0 = indices[p]
                    v0 = _f32(data[p]) * s
                    for b in range(B):
                        out[i, b] += v0 * X[x0, b]
                    p += 1
                cur[i - r0] = p


@njit(parallel=True, fastmath=True, cache=True)
def csr_mv(indptr, indices, data, scales, x, out):  # pragma: no cover - compiled
    rows = indptr.shape[0] - 1
    has_scales = scales.shape[0] > 0
    for i in prange(rows):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        p = indptr[i]
        e = indptr[i + 1]
        while p + 2 <= e:
            a0 += _f32(data[p]) * x[indices[p]]
            a1 += _f32(data[p + 1]) * x[indices[p + 1]]
            p += 2
        if p < e:
            a0 += _f32(data[p]) * x[indices[p]]
        out[i] = (a0 + a1) * (scales[i] if has_scales else np.float32(1.0))


@njit(parallel=True, cache=True)
def csr_mm_int8(indptr, indices, data, w_scales, Xq, x_scales, out):  # pragma: no cover - compiled
    """INT8 x INT8: exact int32 sums per (row, column), then out = float32(acc) * (w_scale[i] * x_scale[b])."""
    rows = indptr.shape[0] - 1
    B = Xq.shape[1]
    nchunks = min(rows, 64)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        acc = np.empty(B, np.int32)
        for i in range(r0, r1):
            for b in range(B):
                acc[b] = 0
            for p in range(indptr[i], indptr[i + 1]):
                xo = indices[p]
                v = np.int32(data[p])
                for b in range(B):
                    acc[b] += v * np.int32(Xq[xo, b])
            ws = w_scales[i]
            for b in range(B):
                out[i, b] = np.float32(acc[b]) * (ws * x_scales[b])


# ================================================================================================
# BSR (values flat: block p, row rr, column k at (p * r + rr) * c + k)
# ================================================================================================
@njit(parallel=True, fastmath=True, cache=True)
def bsr_mm(indptr, indices, data, scales, r, c, X, out):  # pragma: no cover - compiled
    nbr = indptr.shape[0] - 1
    B = X.shape[1]
    has_scales = scales.shape[0] > 0
    for I in prange(nbr):
        for rr in range(I * r, I * r + r):
            for b in range(B):
                out[rr, b] = 0.0
        for p in range(indptr[I], indptr[I + 1]):
            jb = indices[p] * c
            s = scales[p] if has_scales else np.float32(1.0)
            rr = 0
            while rr + 4 <= r:
                o0 = I * r + rr
                q0 = (p * r + rr) * c
                q1 = q0 + c
                q2 = q1 + c
                q3 = q2 + c
                k = 0
                while k + 4 <= c:
                    x0 = jb + k
                    a0 = _f32(data[q0 + k]) * s
                    a1 = _f32(data[q0 + k + 1]) * s
                    a2 = _f32(data[q0 + k + 2]) * s
                    a3 = _f32(data[q0 + k + 3]) * s
                    b0 = _f32(data[q1 + k]) * s
                    b1 = _f32(data[q1 + k + 1]) * s
                    b2 = _f32(data[q1 + k + 2]) * s
                    b3 = _f32(data[q1 + k + 3]) * s
                    c0 = _f32(data[q2 + k]) * s
                    c1 = _f32(data[q2 + k + 1]) * s
                    c2 = _f32(data[q2 + k + 2]) * s
                    c3 = _f32(data[q2 + k + 3]) * s
                    d0 = _f32(data[q3 + k]) * s
                    d1 = _f32(data[q3 + k + 1]) * s
                    d2 = _f32(data[q3 + k + 2]) * s
                    d3 = _f32(data[q3 + k + 3]) * s
                    for b in range(B):
                        y0 = X[x0, b]
                        y1 = X[x0 + 1, b]
                        y2 = X[x0 + 2, b]
                        y3 = X[x0 + 3, b]
                        out[o0, b] += (a0 * y0 + a1 * y1) + (a2 * y2 + a3 * y3)
                        out[o0 + 1, b] += (b0 * y0 + b1 * y1) + (b2 * y2 + b3 * y3)
                        out[o0 + 2, b] += (c0 * y0 + c1 * y1) + (c2 * y2 + c3 * y3)
                        out[o0 + 3, b] += (d0 * y0 + d1 * y1) + (d2 * y2 + d3 * y3)
                    k += 4
                while k < c:
                    x0 = jb + k
                    a0 = _f32(data[q0 + k]) * s
                    b0 = _f32(data[q1 + k]) * s
                    c0 = _f32(data[q2 + k]) * s
                    d0 = _f32(data[q3 + k]) * s
                    for b in range(B):
                        y0 = X[x0, b]
                        out[o0, b] += a0 * y0
                        out[o0 + 1, b] += b0 * y0
                        out[o0 + 2, b] += c0 * y0
                        out[o0 + 3, b] += d0 * y0
                    k += 1
                rr += 4
            while rr + 2 <= r:
                o0 = I * r + rr
                o1 = o0 + 1
                q0 = (p * r + rr) * c
                q1 = q0 + c
                k = 0
                while k + 4 <= c:
                    x0 = jb + k
                    x1 = x0 + 1
                    x2 = x0 + 2
                    x3 = x0 + 3
                    a0 = _f32(data[q0 + k]) * s
                    a1 = _f32(data[q0 + k + 1]) * s
                    a2 = _f32(data[q0 + k + 2]) * s
                    a3 = _f32(data[q0 + k + 3]) * s
                    b0 = _f32(data[q1 + k]) * s
                    b1 = _f32(data[q1 + k + 1]) * s
                    b2 = _f32(data[q1 + k + 2]) * s
                    b3 = _f32(data[q1 + k + 3]) * s
                    for b in range(B):
                        y0 = X[x0, b]
                        y1 = X[x1, b]
                        y2 = X[x2, b]
                        y3 = X[x3, b]
                        out[o0, b] += (a0 * y0 + a1 * y1) + (a2 * y2 + a3 * y3)
                        out[o1, b] += (b0 * y0 + b1 * y1) + (b2 * y2 + b3 * y3)
                    k += 4
                while k < c:
                    x0 = jb + k
                    a0 = _f32(data[q0 + k]) * s
                    b0 = _f32(data[q1 + k]) * s
                    for b in range(B):
                        out[o0, b] += a0 * X[x0, b]
                        out[o1, b] += b0 * X[x0, b]
                    k += 1
                rr += 2
            if rr < r:
                o0 = I * r + rr
                q0 = (p * r + rr) * c
                k = 0
                while k + 4 <= c:
                    x0 = jb + k
                    x1 = x0 + 1
                    x2 = x0 + 2
                    x3 = x0 + 3
                    a0 = _f32(data[q0 + k]) * s
                    a1 = _f32(data[q0 + k + 1]) * s
                    a2 = _f32(data[q0 + k + 2]) * s
                    a3 = _f32(data[q0 + k + 3]) * s
                    for b in range(B):
                        out[o0, b] += (a0 * X[x0, b] + a1 * X[x1, b]) + (a2 * X[x2, b] + a3 * X[x3, b])
                    k += 4
                while k < c:
                    x0 = jb + k
                    a0 = _f32(data[q0 + k]) * s
                    for b in range(B):
                        out[o0, b] += a0 * X[x0, b]
                    k += 1


@njit(parallel=True, fastmath=True, cache=True)
def bsr_mv(indptr, indices, data, scales, r, c, x, out):  # pragma: no cover - compiled
    nbr = indptr.shape[0] - 1
    has_scales = scales.shape[0] > 0
    for I in prange(nbr):
        for rr in range(r):
            acc = np.float32(0.0)
            for p in range(indptr[I], indptr[I + 1]):
                j0 = indices[p] * c
                q0 = (p * r + rr) * c
                part = np.float32(0.0)
                for k in range(c):
                    part += _f32(data[q0 + k]) * x[j0 + k]
                acc += part * (scales[p] if has_scales else np.float32(1.0))
            out[I * r + rr] = acc


@njit(parallel=True, cache=True)
def bsr_mm_int8(indptr, indices, data, w_scales, r, c, Xq, x_scales, out):  # pragma: no cover - compiled
    """Per stored block: exact int32 block product, then out += float32(acc) * (block_scale * x_scale[b])."""
    nbr = indptr.shape[0] - 1
    B = Xq.shape[1]
    for I in prange(nbr):
        acc = np.empty(r * B, np.int32)
        for rr in range(I * r, I * r + r):
            for b in range(B):
                out[rr, b] = 0.0
        for p in range(indptr[I], indptr[I + 1]):
            jb = indices[p] * c
            for q in range(r * B):
                acc[q] = 0
            for rr in range(r):
                q0 = (p * r + rr) * c
                for k in range(c):
                    v = np.int32(data[q0 + k])
                    xo = jb + k
                    for b in range(B):
                        acc[rr * B + b] += v * np.int32(Xq[xo, b])
            ws = w_scales[p]
            for rr in range(r):
                o0 = I * r + rr
                for b in range(B):
                    out[o0, b] += np.float32(acc[rr * B + b]) * (ws * x_scales[b])


# ================================================================================================
# N:M (values (rows, kr) flat; each row's columns decoded from its metadata bit stream into a scratch
# buffer owned by the thread, then the same axpy loop as CSR)
# ================================================================================================
@njit(fastmath=True)
def _nm_decode(meta, row_off, nmeta, t0, t1, n, m, bits, cols):  # pragma: no cover - compiled
    """cols[t - t0] = (t // n) * m + position of kept value t, for t in [t0, t1) with t0 a multiple of n
    (little-endian bit stream, ``bits`` per value)."""
    mask = (1 << bits) - 1
    g0 = t0 // n
    if bits == 0:
        for t in range(t0, t1):
            cols[t - t0] = (t // n) * m
        return
    if 8 % bits == 0:  # 1, 2, 4 or 8 bits: no value straddles a byte (2:4, 1:4, N:16 ...)
        for g in range(g0, (t1 + n - 1) // n):
            base = g * m
            for q in range(n):
                t = g * n + q
                if t < t1:
                    bp = t * bits
                    cols[t - t0] = base + ((np.int32(meta[row_off + (bp >> 3)]) >> (bp & 7)) & mask)
        return
    q = 0
    base = g0 * m
    bitpos = t0 * bits
    for t in range(t0, t1):
        byte = bitpos >> 3
        sh = bitpos & 7
        w = np.int32(meta[row_off + byte]) >> sh
        if sh + bits > 8 and byte + 1 < nmeta:
            w = w | (np.int32(meta[row_off + byte + 1]) << (8 - sh))
        cols[t - t0] = base + (w & mask)
        bitpos += bits
        q += 1
        if q == n:
            q = 0
            base += m


@njit(fastmath=True)
def _nm_decode_row(meta, row_off, nmeta, kr, n, m, bits, cols):  # pragma: no cover - compiled
    _nm_decode(meta, row_off, nmeta, 0, kr, n, m, bits, cols)


@njit(parallel=True, fastmath=True, cache=True)
def nm_mm(data, meta, nmeta, kr, n, m, bits, scales, X, P, R, out):  # pragma: no cover - compiled
    """Same blocking as csr_mm: chunks of R rows, panels of P columns (P a multiple of m, so a panel holds
    exactly P/m*n kept values of each row).  The columns of one (row, panel) are decoded right before use
    into a small thread-owned buffer."""
    rows = out.shape[0]
    B = X.shape[1]
    K = X.shape[0]
    has_scales = scales.shape[0] > 0
    per = P // m * n
    mask = (1 << bits) - 1
    fast = bits > 0 and 8 % max(bits, 1) == 0  # 1, 2, 4 or 8 bits: no value straddles a byte
    nch = (rows + R - 1) // R
    for ch in prange(nch):
        r0 = ch * R
        r1 = min(rows, r0 + R)
        cols = np.empty(per, np.int32)
        for i in range(r0, r1):
            for b in range(B):
                out[i, b] = 0.0
        for k0 in range(0, K, P):
            t0 = k0 // m * n
            t1 = min(kr, t0 + per)
            for i in range(r0, r1):
                # Decode this (row, panel) inline: a helper taking the arrays costs reference-count atomics per
                # call (on `meta`'s cache line, shared by the threads), which cost more than the decode itself.
                row_off = i * nmeta
                t24 = t0
                if n == 2 and m == 4:  # 2:4: one metadata byte = 2 groups = 4 columns, no divisions
                    while t24 + 4 <= t1:
                        byte = np.int32(meta[row_off + (t24 >> 2)])
                        base = t24 * 2
                        cols[t24 - t0] = base + (byte & 3)
                        cols[t24 - t0 + 1] = base + ((byte >> 2) & 3)
                        cols[t24 - t0 + 2] = base + 4 + ((byte >> 4) & 3)
                        cols[t24 - t0 + 3] = base + 4 + ((byte >> 6) & 3)
                        t24 += 4
                if t24 == t1:
                    pass
                elif bits == 0:
                    for g in range(t24 // n, t1 // n):
                        for q in range(n):
                            cols[g * n + q - t0] = g * m
                elif fast:
                    for g in range(t24 // n, t1 // n):
                        base = g * m
                        for q in range(n):
                            bp = (g * n + q) * bits
                            cols[g * n + q - t0] = base + ((np.int32(meta[row_off + (bp >> 3)]) >> (bp & 7)) & mask)
                else:
                    q = 0
                    base = (t24 // n) * m
                    bitpos = t24 * bits
                    for t in range(t24, t1):
                        byte = bitpos >> 3
                        sh = bitpos & 7
                        w = np.int32(meta[row_off + byte]) >> sh
                        if sh + bits > 8 and byte + 1 < nmeta:
                            w = w | (np.int32(meta[row_off + byte + 1]) << (8 - sh))
                        cols[t - t0] = base + (w & mask)
                        bitpos += bits
                        q += 1
                        if q == n:
                            q = 0
                            base += m
                s = scales[i] if has_scales else np.float32(1.0)
                voff = i * kr
                t = t0
                while t + 4 <= t1:
                    x0 = cols[t - t0]
                    x1 = cols[t - t0 + 1]
                    x2 = cols[t - t0 + 2]
                    x3 = cols[t - t0 + 3]
                    v0 = _f32(data[voff + t]) * s
                    v1 = _f32(data[voff + t + 1]) * s
                    v2 = _f32(data[voff + t + 2]) * s
                    v3 = _f32(data[voff + t + 3]) * s
                    for b in range(B):
                        out[i, b] += (v0 * X[x0, b] + v1 * X[x1, b]) + (v2 * X[x2, b] + v3 * X[x3, b])
                    t += 4
                while t < t1:
                    x0 = cols[t - t0]
                    v0 = _f32(data[voff + t]) * s
                    for b in range(B):
                        out[i, b] += v0 * X[x0, b]
                    t += 1


@njit(parallel=True, fastmath=True, cache=True)
def nm24_mm(data, meta, scales, X, P, R, out):  # pragma: no cover - compiled
    """2:4 special case of nm_mm: data (rows, kr) and meta (rows, kr/4) 2-D; the four columns of one metadata
    byte (two groups) are decoded in registers right beside their multiply-adds (no buffer, no divisions)."""
    rows = out.shape[0]
    B = X.shape[1]
    K = X.shape[0]
    kr = data.shape[1]
    has_scales = scales.shape[0] > 0
    per = P // 2
    nch = (rows + R - 1) // R
    for ch in prange(nch):
        r0 = ch * R
        r1 = min(rows, r0 + R)
        for i in range(r0, r1):
            for b in range(B):
                out[i, b] = 0.0
        for k0 in range(0, K, P):
            t0 = k0 // 2
            t1 = min(kr, t0 + per)
            for i in range(r0, r1):
                s = scales[i] if has_scales else np.float32(1.0)
                t = t0
                while t + 4 <= t1:
                    byte = np.int32(meta[i, t >> 2])
                    base = t * 2
                    x0 = base + (byte & 3)
                    x1 = base + ((byte >> 2) & 3)
                    x2 = base + 4 + ((byte >> 4) & 3)
                    x3 = base + 4 + ((byte >> 6) & 3)
                    v0 = _f32(data[i, t]) * s
                    v1 = _f32(data[i, t + 1]) * s
                    v2 = _f32(data[i, t + 2]) * s
                    v3 = _f32(data[i, t + 3]) * s
                    for b in range(B):
                        out[i, b] += (v0 * X[x0, b] + v1 * X[x1, b]) + (v2 * X[x2, b] + v3 * X[x3, b])
                    t += 4
                while t < t1:
                    byte = np.int32(meta[i, t >> 2])
                    x0 = (t >> 1) * 4 + ((byte >> ((t & 3) * 2)) & 3)
                    v0 = _f32(data[i, t]) * s
                    for b in range(B):
                        out[i, b] += v0 * X[x0, b]
                    t += 1


@njit(parallel=True, fastmath=True, cache=True)
def nm_mv(data, meta, nmeta, kr, n, m, bits, scales, x, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    has_scales = scales.shape[0] > 0
    nchunks = min(rows, 256)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        cols = np.empty(kr, np.int64)
        for i in range(r0, r1):
            _nm_decode_row(meta, i * nmeta, nmeta, kr, n, m, bits, cols)
            voff = i * kr
            acc = np.float32(0.0)
            for t in range(kr):
                acc += _f32(data[voff + t]) * x[cols[t]]
            out[i] = acc * (scales[i] if has_scales else np.float32(1.0))


@njit(parallel=True, cache=True)
def nm_mm_int8(data, meta, nmeta, kr, n, m, bits, w_scales, Xq, x_scales, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    B = Xq.shape[1]
    nchunks = min(rows, 64)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        acc = np.empty(B, np.int32)
        cols = np.empty(kr, np.int64)
        for i in range(r0, r1):
            _nm_decode_row(meta, i * nmeta, nmeta, kr, n, m, bits, cols)
            for b in range(B):
                acc[b] = 0
            voff = i * kr
            for t in range(kr):
                xo = cols[t]
                v = np.int32(data[voff + t])
                for b in range(B):
                    acc[b] += v * np.int32(Xq[xo, b])
            ws = w_scales[i]
            for b in range(B):
                out[i, b] = np.float32(acc[b]) * (ws * x_scales[b])


# ================================================================================================
# activation sparsity: GEMV that skips zero entries of x
# ================================================================================================
@njit(cache=True)
def nonzero_entries(x, idx, val):  # pragma: no cover - compiled
    """Compress x: idx/val get the nonzero positions/values in increasing order; returns their count."""
    cnt = 0
    for j in range(x.shape[0]):
        v = x[j]
        if v != 0.0:
            idx[cnt] = j
            val[cnt] = v
            cnt += 1
    return cnt


@njit(parallel=True, fastmath=True, cache=True)
def gemv_skip_out_in(w, idx, val, cnt, out):  # pragma: no cover - compiled
    """w (out, K): y[i] = sum over nonzero x_j of w[i, j] * x_j (row-wise gathered dot product)."""
    rows = out.shape[0]
    for i in prange(rows):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        t = 0
        while t + 2 <= cnt:
            a0 += w[i, idx[t]] * val[t]
            a1 += w[i, idx[t + 1]] * val[t + 1]
            t += 2
        if t < cnt:
            a0 += w[i, idx[t]] * val[t]
        out[i] = a0 + a1


@njit(parallel=True, fastmath=True, cache=True)
def gemv_skip_in_out(wt, idx, val, cnt, out):  # pragma: no cover - compiled
    """wt (K, N) = W.T: y = sum over nonzero x_j of x_j * wt[j, :] (column-oriented; rows of wt with
    x_j == 0 are never read).  Each parallel chunk owns a slice of y, so there is no scatter race."""
    N = wt.shape[1]
    nchunks = max(1, min(64, N // 256))
    for ch in prange(nchunks):
        o0 = ch * N // nchunks
        o1 = (ch + 1) * N // nchunks
        for b in range(o0, o1):
            out[b] = 0.0
        t = 0
        while t + 4 <= cnt:
            r0 = idx[t]
            r1 = idx[t + 1]
            r2 = idx[t + 2]
            r3 = idx[t + 3]
            v0 = val[t]
            v1 = val[t + 1]
            v2 = val[t + 2]
            v3 = val[t + 3]
            for b in range(o0, o1):
                out[b] += (v0 * wt[r0, b] + v1 * wt[r1, b]) + (v2 * wt[r2, b] + v3 * wt[r3, b])
            t += 4
        while t < cnt:
            r0 = idx[t]
            v0 = val[t]
            for b in range(o0, o1):
                out[b] += v0 * wt[r0, b]
            t += 1

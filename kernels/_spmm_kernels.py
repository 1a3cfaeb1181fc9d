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


def _wval(data, p):  # pragma: no cover - replaced by the overload below inside compiled code
    raise NotImplementedError


@overload(_wval)
def _wval_impl(data, p):
    """The stored weight ``data[p]`` as float32 (float16 bit patterns decoded, int8 converted)."""
    if isinstance(data, types.Array) and data.dtype == types.uint16:
        return lambda data, p: _half_to_float(data[p])
    return lambda data, p: np.float32(data[p])


@njit
def _scale_of(scales, i):  # pragma: no cover - compiled
    if scales.shape[0] == 0:
        return np.float32(1.0)
    return scales[i]


# ================================================================================================
# CSR
# ================================================================================================
@njit(parallel=True, fastmath=True, cache=True)
def csr_mm(indptr, indices, data, scales, X, out):  # pragma: no cover - compiled
    """out[i, :] = sum_p v_p * X[indices[p], :] over the stored entries of row i (float32 accumulation)."""
    rows = out.shape[0]
    B = X.shape[1]
    for i in prange(rows):
        o = out[i]
        for b in range(B):
            o[b] = 0.0
        s = _scale_of(scales, i)
        p = indptr[i]
        e = indptr[i + 1]
        while p + 4 <= e:
            x0 = X[indices[p]]
            x1 = X[indices[p + 1]]
            x2 = X[indices[p + 2]]
            x3 = X[indices[p + 3]]
            v0 = _wval(data, p) * s
            v1 = _wval(data, p + 1) * s
            v2 = _wval(data, p + 2) * s
            v3 = _wval(data, p + 3) * s
            for b in range(B):
                o[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])
            p += 4
        while p < e:
            x0 = X[indices[p]]
            v0 = _wval(data, p) * s
            for b in range(B):
                o[b] += v0 * x0[b]
            p += 1


@njit(parallel=True, fastmath=True, cache=True)
def csr_mv(indptr, indices, data, scales, x, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    for i in prange(rows):
        s = _scale_of(scales, i)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        p = indptr[i]
        e = indptr[i + 1]
        while p + 2 <= e:
            a0 += _wval(data, p) * x[indices[p]]
            a1 += _wval(data, p + 1) * x[indices[p + 1]]
            p += 2
        if p < e:
            a0 += _wval(data, p) * x[indices[p]]
        out[i] = (a0 + a1) * s


@njit(parallel=True, cache=True)
def csr_mm_int8(indptr, indices, data, w_scales, Xq, x_scales, out):  # pragma: no cover - compiled
    """INT8 x INT8: exact int32 sums per (row, column), then out = float32(acc) * (w_scale[i] * x_scale[b])."""
    rows = out.shape[0]
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
                xr = Xq[indices[p]]
                v = np.int32(data[p])
                for b in range(B):
                    acc[b] += v * np.int32(xr[b])
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
    for I in prange(nbr):
        for rr in range(r):
            o = out[I * r + rr]
            for b in range(B):
                o[b] = 0.0
        for p in range(indptr[I], indptr[I + 1]):
            j0 = indices[p] * c
            s = _scale_of(scales, p)
            rr = 0
            while rr + 2 <= r:
                o0 = out[I * r + rr]
                o1 = out[I * r + rr + 1]
                q0 = (p * r + rr) * c
                q1 = q0 + c
                k = 0
                while k + 4 <= c:
                    x0 = X[j0 + k]
                    x1 = X[j0 + k + 1]
                    x2 = X[j0 + k + 2]
                    x3 = X[j0 + k + 3]
                    a0 = _wval(data, q0 + k) * s
                    a1 = _wval(data, q0 + k + 1) * s
                    a2 = _wval(data, q0 + k + 2) * s
                    a3 = _wval(data, q0 + k + 3) * s
                    b0 = _wval(data, q1 + k) * s
                    b1 = _wval(data, q1 + k + 1) * s
                    b2 = _wval(data, q1 + k + 2) * s
                    b3 = _wval(data, q1 + k + 3) * s
                    for b in range(B):
                        y0 = x0[b]
                        y1 = x1[b]
                        y2 = x2[b]
                        y3 = x3[b]
                        o0[b] += (a0 * y0 + a1 * y1) + (a2 * y2 + a3 * y3)
                        o1[b] += (b0 * y0 + b1 * y1) + (b2 * y2 + b3 * y3)
                    k += 4
                while k < c:
                    x0 = X[j0 + k]
                    a0 = _wval(data, q0 + k) * s
                    b0 = _wval(data, q1 + k) * s
                    for b in range(B):
                        o0[b] += a0 * x0[b]
                        o1[b] += b0 * x0[b]
                    k += 1
                rr += 2
            if rr < r:
                o0 = out[I * r + rr]
                q0 = (p * r + rr) * c
                k = 0
                while k + 4 <= c:
                    x0 = X[j0 + k]
                    x1 = X[j0 + k + 1]
                    x2 = X[j0 + k + 2]
                    x3 = X[j0 + k + 3]
                    a0 = _wval(data, q0 + k) * s
                    a1 = _wval(data, q0 + k + 1) * s
                    a2 = _wval(data, q0 + k + 2) * s
                    a3 = _wval(data, q0 + k + 3) * s
                    for b in range(B):
                        o0[b] += (a0 * x0[b] + a1 * x1[b]) + (a2 * x2[b] + a3 * x3[b])
                    k += 4
                while k < c:
                    x0 = X[j0 + k]
                    a0 = _wval(data, q0 + k) * s
                    for b in range(B):
                        o0[b] += a0 * x0[b]
                    k += 1


@njit(parallel=True, fastmath=True, cache=True)
def bsr_mv(indptr, indices, data, scales, r, c, x, out):  # pragma: no cover - compiled
    nbr = indptr.shape[0] - 1
    for I in prange(nbr):
        for rr in range(r):
            acc = np.float32(0.0)
            for p in range(indptr[I], indptr[I + 1]):
                j0 = indices[p] * c
                q0 = (p * r + rr) * c
                part = np.float32(0.0)
                for k in range(c):
                    part += _wval(data, q0 + k) * x[j0 + k]
                acc += part * _scale_of(scales, p)
            out[I * r + rr] = acc


@njit(parallel=True, cache=True)
def bsr_mm_int8(indptr, indices, data, w_scales, r, c, Xq, x_scales, out):  # pragma: no cover - compiled
    """Per stored block: exact int32 block product, then out += float32(acc) * (block_scale * x_scale[b])."""
    nbr = indptr.shape[0] - 1
    B = Xq.shape[1]
    for I in prange(nbr):
        acc = np.empty((r, B), np.int32)
        for rr in range(r):
            for b in range(B):
                out[I * r + rr, b] = 0.0
        for p in range(indptr[I], indptr[I + 1]):
            j0 = indices[p] * c
            for rr in range(r):
                for b in range(B):
                    acc[rr, b] = 0
                q0 = (p * r + rr) * c
                for k in range(c):
                    v = np.int32(data[q0 + k])
                    xr = Xq[j0 + k]
                    for b in range(B):
                        acc[rr, b] += v * np.int32(xr[b])
            ws = w_scales[p]
            for rr in range(r):
                for b in range(B):
                    out[I * r + rr, b] += np.float32(acc[rr, b]) * (ws * x_scales[b])


# ================================================================================================
# N:M (values (rows, kr) flat; positions decoded from the metadata bit stream)
# ================================================================================================
@njit
def _nm_pos(meta, row_off, nmeta, bitpos, bits, mask):  # pragma: no cover - compiled
    byte = bitpos >> 3
    sh = bitpos & 7
    w = np.int32(meta[row_off + byte]) >> sh
    if sh + bits > 8 and byte + 1 < nmeta:
        w |= np.int32(meta[row_off + byte + 1]) << (8 - sh)
    return w & mask


@njit(parallel=True, fastmath=True, cache=True)
def nm_mm(data, meta, nmeta, kr, n, m, bits, scales, X, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    B = X.shape[1]
    mask = (1 << bits) - 1
    for i in prange(rows):
        o = out[i]
        for b in range(B):
            o[b] = 0.0
        s = _scale_of(scales, i)
        row_off = i * nmeta
        voff = i * kr
        # running position: kept value t, its slot q inside group g (base = g * m)
        t = 0
        q = 0
        base = 0
        while t + 4 <= kr:
            c0 = base + _nm_pos(meta, row_off, nmeta, t * bits, bits, mask)
            q += 1
            if q == n:
                q = 0
                base += m
            c1 = base + _nm_pos(meta, row_off, nmeta, (t + 1) * bits, bits, mask)
            q += 1
            if q == n:
                q = 0
                base += m
            c2 = base + _nm_pos(meta, row_off, nmeta, (t + 2) * bits, bits, mask)
            q += 1
            if q == n:
                q = 0
                base += m
            c3 = base + _nm_pos(meta, row_off, nmeta, (t + 3) * bits, bits, mask)
            q += 1
            if q == n:
                q = 0
                base += m
            x0 = X[c0]
            x1 = X[c1]
            x2 = X[c2]
            x3 = X[c3]
            v0 = _wval(data, voff + t) * s
            v1 = _wval(data, voff + t + 1) * s
            v2 = _wval(data, voff + t + 2) * s
            v3 = _wval(data, voff + t + 3) * s
            for b in range(B):
                o[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])
            t += 4
        while t < kr:
            c0 = base + _nm_pos(meta, row_off, nmeta, t * bits, bits, mask)
            q += 1
            if q == n:
                q = 0
                base += m
            x0 = X[c0]
            v0 = _wval(data, voff + t) * s
            for b in range(B):
                o[b] += v0 * x0[b]
            t += 1


@njit(parallel=True, fastmath=True, cache=True)
def nm_mv(data, meta, nmeta, kr, n, m, bits, scales, x, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    mask = (1 << bits) - 1
    for i in prange(rows):
        row_off = i * nmeta
        voff = i * kr
        acc = np.float32(0.0)
        q = 0
        base = 0
        for t in range(kr):
            col = base + _nm_pos(meta, row_off, nmeta, t * bits, bits, mask)
            acc += _wval(data, voff + t) * x[col]
            q += 1
            if q == n:
                q = 0
                base += m
        out[i] = acc * _scale_of(scales, i)


@njit(parallel=True, cache=True)
def nm_mm_int8(data, meta, nmeta, kr, n, m, bits, w_scales, Xq, x_scales, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    B = Xq.shape[1]
    mask = (1 << bits) - 1
    nchunks = min(rows, 64)
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        acc = np.empty(B, np.int32)
        for i in range(r0, r1):
            for b in range(B):
                acc[b] = 0
            row_off = i * nmeta
            voff = i * kr
            q = 0
            base = 0
            for t in range(kr):
                col = base + _nm_pos(meta, row_off, nmeta, t * bits, bits, mask)
                xr = Xq[col]
                v = np.int32(data[voff + t])
                for b in range(B):
                    acc[b] += v * np.int32(xr[b])
                q += 1
                if q == n:
                    q = 0
                    base += m
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
    """w (out, in): y[i] = sum over nonzero x_j of w[i, j] * x_j (row-wise gathered dot product)."""
    rows = w.shape[0]
    for i in prange(rows):
        wr = w[i]
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        t = 0
        while t + 2 <= cnt:
            a0 += wr[idx[t]] * val[t]
            a1 += wr[idx[t + 1]] * val[t + 1]
            t += 2
        if t < cnt:
            a0 += wr[idx[t]] * val[t]
        out[i] = a0 + a1


@njit(parallel=True, fastmath=True, cache=True)
def gemv_skip_in_out(wt, idx, val, cnt, out):  # pragma: no cover - compiled
    """wt (in, out) = W.T: y = sum over nonzero x_j of x_j * wt[j, :] (column-oriented; rows of wt with
    x_j == 0 are never read).  Each parallel chunk owns a slice of y, so there is no scatter race."""
    nout = wt.shape[1]
    nchunks = max(1, min(64, nout // 256))
    for ch in prange(nchunks):
        o0 = ch * nout // nchunks
        o1 = (ch + 1) * nout // nchunks
        for b in range(o0, o1):
            out[b] = 0.0
        t = 0
        while t + 4 <= cnt:
            r0 = wt[idx[t]]
            r1 = wt[idx[t + 1]]
            r2 = wt[idx[t + 2]]
            r3 = wt[idx[t + 3]]
            v0 = val[t]
            v1 = val[t + 1]
            v2 = val[t + 2]
            v3 = val[t + 3]
            for b in range(o0, o1):
                out[b] += (v0 * r0[b] + v1 * r1[b]) + (v2 * r2[b] + v3 * r3[b])
            t += 4
        while t < cnt:
            r0 = wt[idx[t]]
            v0 = val[t]
            for b in range(o0, o1):
                out[b] += v0 * r0[b]
            t += 1

"""Bad input at the public boundary of ``memwall.kernels``: a TypeError/ValueError whose message starts with
the argument's name -- never a crash, a wrap-around or a silently wrong answer (the kernels run without
bounds checks, so the wrappers are the only guard).

The table below was distilled from a fork-isolated fuzz pass over every public function and constructor
(wrong dtypes, ndims, empty/1x1 shapes, non-contiguous views, NaN/Inf, out-of-range integers, invalid raw
CSR/BSR/N:M arrays, bad sizes/fractions).  Each case runs in-process: all of them are refused before a
kernel sees the data, which also keeps this file fast.  The second half holds regression tests for the
bugs the pass found and fixed, plus a few "copied, not misread" and 1-vs-2-thread checks.
"""
from __future__ import annotations

import re

import numba
import numpy as np
import pytest

from memwall.kernels import formats, gemm, gradient, prune, quant, spmm

_R = np.random.default_rng(7)
X = _R.standard_normal((8, 16)).astype(np.float32)
I8 = _R.integers(-128, 128, (5, 12), dtype=np.int8)
B8 = _R.integers(-128, 128, (12, 7), dtype=np.int8)
D4 = np.array([1, 2, 3, 4], np.float32)
IX = np.array([0, 2, 1, 3], np.int32)
IP = np.array([0, 2, 4], np.int32)
BD = np.ones((2, 2, 2), np.float32)
BIX = np.array([0, 1], np.int32)
BIP = np.array([0, 1, 2], np.int32)
META = np.array([[0x04], [0x0E]], np.uint8)  # 2:4 positions (0, 1) and (2, 3): 2 bits each, low first
G = _R.standard_normal(1000).astype(np.float32)
NAN_X = np.where(X > 1, np.nan, X).astype(np.float32)


def _csr(data=D4, indices=IX, indptr=IP, shape=(2, 4), **kw):
    return formats.CSRMatrix(data, indices, indptr, shape, **kw)


def _bsr(data=BD, indices=BIX, indptr=BIP, shape=(4, 4), **kw):
    return formats.BSRMatrix(data, indices, indptr, shape, **kw)


def _nm(data=np.ones((2, 2), np.float32), metadata=META, shape=(2, 4), n=2, m=4, **kw):
    return formats.NMSparseMatrix(data, metadata, shape, n, m, **kw)


def _dq(**kw):
    args = dict(a_scale=np.ones(5, np.float32), b_scale=np.ones(7, np.float32))
    args.update(kw)
    return gemm.int8_gemm_dequant(I8, B8, args.pop("a_scale"), args.pop("b_scale"), **args)


# (id, call, exception type, argument name the message must start with)
CASES = [
    # ---- quant ----------------------------------------------------------------------------------
    ("quantize int64 x", lambda: quant.quantize(X.astype(np.int64)), TypeError, "x"),
    ("quantize bool x", lambda: quant.quantize(X > 0), TypeError, "x"),
    ("quantize object x", lambda: quant.quantize(X.astype(object)), TypeError, "x"),
    ("quantize complex x", lambda: quant.quantize(X.astype(np.complex64)), TypeError, "x"),
    ("quantize complex list", lambda: quant.quantize([1.0 + 2j, 3.0]), TypeError, "x"),
    ("quantize str x", lambda: quant.quantize("abc"), TypeError, "x"),
    ("quantize NaN", lambda: quant.quantize(NAN_X), ValueError, "x"),
    ("quantize Inf", lambda: quant.quantize(np.array([1.0, np.inf], np.float32)), ValueError, "x"),
    ("quantize group 0", lambda: quant.quantize(X, 4, group_size=0), ValueError, "group_size"),
    ("quantize group -1", lambda: quant.quantize(X, 4, group_size=-1), ValueError, "group_size"),
    ("quantize group not dividing", lambda: quant.quantize(X, 4, group_size=3), ValueError, "group_size"),
    ("quantize group float", lambda: quant.quantize(X, 4, group_size=2.0), TypeError, "group_size"),
    ("quantize group bool", lambda: quant.quantize(X, 4, group_size=True), TypeError, "group_size"),
    ("quantize group 1-D", lambda: quant.quantize(X[0], 4, group_size=2), ValueError, "x"),
    ("quantize axis 2", lambda: quant.quantize(X, 8, axis=2), ValueError, "axis"),
    ("quantize axis -3", lambda: quant.quantize(X, 8, axis=-3), ValueError, "axis"),
    ("quantize axis + group", lambda: quant.quantize(X, 4, axis=0, group_size=4), ValueError, "axis"),
    ("quantize bits 2", lambda: quant.quantize(X, 2), ValueError, "bits"),
    ("quantize bits True", lambda: quant.quantize(X, True), ValueError, "bits"),
    ("quantize bits 8.0", lambda: quant.quantize(X, 8.0), ValueError, "bits"),
    ("quantize method", lambda: quant.quantize(X, method="bogus"), ValueError, "method"),
    ("quantize percentile NaN", lambda: quant.quantize(X, method="percentile", percentile=float("nan")),
     ValueError, "percentile"),
    ("quantize grid 0", lambda: quant.quantize(X, method="mse", grid=0), ValueError, "grid"),
    ("quantize ternary asym", lambda: quant.quantize(X, "ternary", symmetric=False), ValueError, "symmetric"),
    ("quantize binary unsigned", lambda: quant.quantize(X, "binary", signed=False), ValueError, "signed"),
    ("quantize_rows_int8 3-D", lambda: quant.quantize_rows_int8(X[None]), ValueError, "x"),
    ("quantize_rows_int8 NaN", lambda: quant.quantize_rows_int8(NAN_X), ValueError, "x"),
    ("dequantize scale NaN", lambda: quant.dequantize(I8, np.full(5, np.nan, np.float32), axis=0), ValueError, "scale"),
    ("dequantize scale 0", lambda: quant.dequantize(I8, np.zeros(5, np.float32), axis=0), ValueError, "scale"),
    ("dequantize scale shape", lambda: quant.dequantize(I8, np.ones(4, np.float32), axis=0), ValueError, "scale"),
    ("dequantize no scale", lambda: quant.dequantize(I8), TypeError, "scale"),
    ("dequantize q int16", lambda: quant.dequantize(I8.astype(np.int16), 1.0), TypeError, "q"),
    ("dequantize zp float", lambda: quant.dequantize(I8, np.ones(5, np.float32), np.zeros(5), axis=0),
     TypeError, "zero_point"),
    ("dequantize zp > int32", lambda: quant.dequantize(I8, np.ones(5, np.float32), np.full(5, 2**40), axis=0),
     ValueError, "zero_point"),
    ("dequantize group 0", lambda: quant.dequantize(I8, np.ones((5, 3), np.float32), group_size=0),
     ValueError, "group_size"),
    ("QuantizedTensor scale shape", lambda: quant.QuantizedTensor(
        I8, np.ones(3, np.float32), np.zeros(3, np.int32), 8, axis=0), ValueError, "scale"),
    ("QuantizedTensor axis 5", lambda: quant.QuantizedTensor(
        I8, np.ones(5, np.float32), np.zeros(5, np.int32), 8, axis=5), ValueError, "axis"),
    ("QuantizedTensor bits 3", lambda: quant.QuantizedTensor(
        I8, np.ones(5, np.float32), np.zeros(5, np.int32), 3, axis=0), ValueError, "bits"),
    ("QuantizedTensor bits str", lambda: quant.QuantizedTensor(
        I8, np.ones(5, np.float32), np.zeros(5, np.int32), "x", axis=0), ValueError, "bits"),
    ("pack_int4 -9", lambda: quant.pack_int4(np.array([-9, 0], np.int8)), ValueError, "q"),
    ("pack_int4 8", lambda: quant.pack_int4(np.array([8, 0], np.int8)), ValueError, "q"),
    ("pack_int4 -128", lambda: quant.pack_int4(np.array([-128, 127], np.int8)), ValueError, "q"),
    ("pack_int4 int64 2**40", lambda: quant.pack_int4(np.array([2**40, 0])), ValueError, "q"),
    ("pack_int4 uint64 2**63+1", lambda: quant.pack_int4(np.array([2**63 + 1], np.uint64)), ValueError, "q"),
    ("pack_int4 unsigned -1", lambda: quant.pack_int4(np.array([-1, 0], np.int8), signed=False), ValueError, "q"),
    ("pack_int4 float", lambda: quant.pack_int4(np.zeros(2, np.float32)), TypeError, "q"),
    ("pack_int4 0-D", lambda: quant.pack_int4(np.array(3, np.int8)), ValueError, "q"),
    ("unpack_int4 n mismatch", lambda: quant.unpack_int4(np.zeros(2, np.uint8), 5), ValueError, "n"),
    ("unpack_int4 n -1", lambda: quant.unpack_int4(np.zeros(0, np.uint8), -1), ValueError, "n"),
    ("unpack_int4 int8 p", lambda: quant.unpack_int4(np.zeros(2, np.int8), 4), TypeError, "p"),
    ("emulate_float fmt", lambda: quant.emulate_float(X, "fp4"), ValueError, "fmt"),
    ("emulate_float saturate str", lambda: quant.emulate_float(X, "fp16", saturate="yes"), TypeError, "saturate"),
    ("emulate_float int x", lambda: quant.emulate_float(np.arange(3), "fp16"), TypeError, "x"),
    ("mse shape", lambda: quant.mse(X, X[:2]), ValueError, "y"),
    ("mse NaN", lambda: quant.mse(np.array([np.nan], np.float32), np.ones(1, np.float32)), ValueError, "x"),
    ("mse complex x", lambda: quant.mse(np.array([1j]), np.array([0.0])), TypeError, "x"),
    ("mse complex y list", lambda: quant.mse([0.0], [1j]), TypeError, "y"),
    ("sqnr_db complex", lambda: quant.sqnr_db(np.ones(2, np.complex128), np.ones(2)), TypeError, "x"),
    ("quantization_error qt", lambda: quant.quantization_error(X, X), TypeError, "qt"),
    # ---- gemm -----------------------------------------------------------------------------------
    ("int8_gemm a float32", lambda: gemm.int8_gemm(I8.astype(np.float32), B8), TypeError, "a"),
    ("int8_gemm a uint8", lambda: gemm.int8_gemm(I8.view(np.uint8), B8), TypeError, "a"),
    ("int8_gemm b int32", lambda: gemm.int8_gemm(I8, B8.astype(np.int32)), TypeError, "b"),
    ("int8_gemm a 1-D", lambda: gemm.int8_gemm(I8[0], B8), ValueError, "a"),
    ("int8_gemm inner dim", lambda: gemm.int8_gemm(I8, B8[:5]), ValueError, "b"),
    ("int8_gemm packed inner dim", lambda: gemm.int8_gemm(I8, gemm.pack_int8(B8.T.copy())), ValueError, "b"),
    ("int8_gemm list", lambda: gemm.int8_gemm(I8.tolist(), B8), TypeError, "a"),
    ("int8_gemm path", lambda: gemm.int8_gemm(I8, B8, path="avx"), ValueError, "path"),
    ("pack_int8 layout", lambda: gemm.pack_int8(B8, layout="x"), ValueError, "layout"),
    ("dequant a_scale NaN", lambda: _dq(a_scale=np.full(5, np.nan)), ValueError, "a_scale"),
    ("dequant a_scale 0", lambda: _dq(a_scale=0.0), ValueError, "a_scale"),
    ("dequant a_scale shape", lambda: _dq(a_scale=np.ones(4)), ValueError, "a_scale"),
    ("dequant b_scale bool", lambda: _dq(b_scale=True), TypeError, "b_scale"),
    ("dequant a_zero_point float", lambda: _dq(a_zero_point=np.ones(5)), TypeError, "a_zero_point"),
    ("dequant a_zero_point > int32", lambda: _dq(a_zero_point=2**40), ValueError, "a_zero_point"),
    ("dequant bias shape", lambda: _dq(bias=np.ones(3)), ValueError, "bias"),
    ("dequant bias NaN", lambda: _dq(bias=np.full(7, np.nan)), ValueError, "bias"),
    ("pack_weights bits 2", lambda: gemm.pack_weights(X, 2), ValueError, "bits"),
    ("pack_weights NaN", lambda: gemm.pack_weights(NAN_X), ValueError, "w"),
    ("pack_weights empty", lambda: gemm.pack_weights(np.zeros((0, 4), np.float32)), ValueError, "w"),
    ("pack_weights group 0", lambda: gemm.pack_weights(X, 4, 0), ValueError, "group_size"),
    ("pack_weights group 3", lambda: gemm.pack_weights(X, 4, 3), ValueError, "group_size"),
    ("pack_weights group odd", lambda: gemm.pack_weights(X, 4, 1), ValueError, "group_size"),
    ("pack_weights complex", lambda: gemm.pack_weights(X.astype(np.complex64)), TypeError, "w"),
    ("quantized_linear inner dim", lambda: gemm.quantized_linear(X[:, :5], gemm.pack_weights(X)), ValueError, "x"),
    ("quantized_linear packed", lambda: gemm.quantized_linear(X, X), TypeError, "packed"),
    ("quantized_linear act_quant", lambda: gemm.quantized_linear(X, gemm.pack_weights(X), act_quant="int4"),
     ValueError, "act_quant"),
    ("quantized_linear x NaN", lambda: gemm.quantized_linear(NAN_X, gemm.pack_weights(X)), ValueError, "x"),
    ("int4_gemv 8-bit weights", lambda: gemm.int4_gemv(X[0], gemm.pack_weights(X, 8)), ValueError, "packed"),
    ("int4_gemv two rows", lambda: gemm.int4_gemv(X[:2], gemm.pack_weights(X, 4, 8)), ValueError, "x"),
    ("pack_quantized int4 9", lambda: gemm.pack_quantized(np.full((2, 4), 9, np.int8), np.ones((2, 1)), bits=4),
     ValueError, "values"),
    ("pack_quantized zero_point 16", lambda: gemm.pack_quantized(
        np.zeros((2, 4), np.int8), np.ones((2, 1)), np.full((2, 1), 16), bits=4), ValueError, "zero_point"),
    ("pack_quantized scale NaN", lambda: gemm.pack_quantized(
        np.zeros((2, 4), np.int8), np.full((2, 1), np.nan), bits=4), ValueError, "scale"),
    # ---- formats: raw arrays given to the constructors ---------------------------------------------
    ("CSR index out of range", lambda: _csr(indices=np.array([0, 2, 1, 4], np.int32)), ValueError, "indices"),
    ("CSR negative index", lambda: _csr(indices=np.array([0, -2, 1, 3], np.int32)), ValueError, "indices"),
    ("CSR unsorted", lambda: _csr(indices=np.array([2, 0, 1, 3], np.int32)), ValueError, "indices"),
    ("CSR duplicate", lambda: _csr(indices=np.array([0, 0, 1, 3], np.int32)), ValueError, "indices"),
    ("CSR indptr not monotone", lambda: _csr(np.ones(4, np.float32), np.array([0, 1, 0, 1], np.int32),
                                             np.array([0, 3, 1, 4], np.int32), (3, 4)), ValueError, "indptr"),
    ("CSR indptr[-1] != nnz", lambda: _csr(indptr=np.array([0, 2, 3], np.int32)), ValueError, "indptr"),
    ("CSR indptr[0] != 0", lambda: _csr(indptr=np.array([1, 2, 4], np.int32)), ValueError, "indptr"),
    ("CSR indptr length", lambda: _csr(indptr=np.array([0, 4], np.int32)), ValueError, "indptr"),
    ("CSR indices int16", lambda: _csr(indices=IX.astype(np.int16)), TypeError, "indices"),
    ("CSR indices uint64", lambda: _csr(indices=IX.astype(np.uint64)), TypeError, "indices"),
    ("CSR indices list", lambda: _csr(indices=IX.tolist()), TypeError, "indices"),
    ("CSR indices 2-D", lambda: _csr(indices=IX.reshape(2, 2)), ValueError, "indices"),
    ("CSR indptr int64 2**40", lambda: _csr(indptr=np.array([0, 2**40, 4], np.int64)), ValueError, "indptr"),
    ("CSR data float64", lambda: _csr(data=D4.astype(np.float64)), TypeError, "data"),
    ("CSR int8 without scales", lambda: _csr(data=D4.astype(np.int8)), ValueError, "scales"),
    ("CSR scales count", lambda: _csr(data=D4.astype(np.int8), scales=np.ones(3, np.float32)), ValueError, "scales"),
    ("CSR scales NaN", lambda: _csr(data=D4.astype(np.int8), scales=np.full(2, np.nan, np.float32)),
     ValueError, "scales"),
    ("CSR data NaN", lambda: _csr(data=np.array([np.nan, 2, 3, 4], np.float32)), ValueError, "data"),
    ("CSR shape negative", lambda: _csr(shape=(2, -4)), ValueError, "shape[1]"),
    ("CSR shape 3-tuple", lambda: _csr(shape=(2, 4, 1)), TypeError, "shape"),
    ("CSR too few columns", lambda: _csr(shape=(2, 3)), ValueError, "indices"),
    ("CSR from_dense sparsity 1.5", lambda: formats.CSRMatrix.from_dense(X, sparsity=1.5), ValueError, "sparsity"),
    ("CSR from_dense mask int", lambda: formats.CSRMatrix.from_dense(X, mask=np.ones(X.shape, np.int8)),
     TypeError, "mask"),
    ("CSR from_dense fp16 overflow", lambda: formats.CSRMatrix.from_dense(X * 1e6, value_dtype=np.float16),
     ValueError, "value_dtype"),
    ("BSR index out of range", lambda: _bsr(indices=np.array([0, 2], np.int32)), ValueError, "indices"),
    ("BSR negative index", lambda: _bsr(indices=np.array([0, -1], np.int32)), ValueError, "indices"),
    ("BSR duplicate", lambda: _bsr(indices=np.array([1, 1], np.int32), indptr=np.array([0, 2, 2], np.int32)),
     ValueError, "indices"),
    ("BSR indptr[-1]", lambda: _bsr(indptr=np.array([0, 1, 1], np.int32)), ValueError, "indptr"),
    ("BSR block not dividing", lambda: _bsr(shape=(5, 4)), ValueError, "blocksize"),
    ("BSR data 2-D", lambda: _bsr(data=BD[0]), ValueError, "data"),
    ("BSR 0-wide block", lambda: _bsr(data=np.ones((2, 0, 2), np.float32)), ValueError, "data"),
    ("BSR from_dense blocksize 0", lambda: formats.BSRMatrix.from_dense(X, (0, 1)), ValueError, "blocksize[0]"),
    ("NM metadata dtype", lambda: _nm(metadata=META.astype(np.int8)), TypeError, "metadata"),
    ("NM metadata shape", lambda: _nm(metadata=META[:1]), ValueError, "metadata"),
    ("NM position >= m", lambda: _nm(metadata=np.full((2, 1), 0xFF, np.uint8), shape=(2, 3), m=3),
     ValueError, "metadata"),
    ("NM repeated position", lambda: _nm(metadata=np.zeros((2, 1), np.uint8)), ValueError, "metadata"),
    ("NM padding bits", lambda: _nm(np.ones((2, 1), np.float32), np.full((2, 1), 0xF0, np.uint8), n=1),
     ValueError, "metadata"),
    ("NM n > m", lambda: _nm(n=4, m=2), ValueError, "n"),
    ("NM m not dividing", lambda: _nm(shape=(2, 5)), ValueError, "m"),
    ("NM data shape", lambda: _nm(data=np.ones((2, 3), np.float32)), ValueError, "data"),
    # ---- spmm -----------------------------------------------------------------------------------
    ("spmm A dense", lambda: spmm.spmm(X, X), TypeError, "A"),
    ("spmm X int32", lambda: spmm.spmm(_csr(), np.ones((4, 3), np.int32)), TypeError, "X"),
    ("spmm X complex", lambda: spmm.spmm(_csr(), np.ones((4, 3), np.complex64)), TypeError, "X"),
    ("spmm X complex list", lambda: spmm.spmm(_csr(), [[1j]] * 4), TypeError, "X"),
    ("spmm X 3-D", lambda: spmm.spmm(_csr(), np.ones((1, 4, 3), np.float32)), ValueError, "X"),
    ("spmm X rows", lambda: spmm.spmm(_csr(), np.ones((3, 3), np.float32)), ValueError, "X"),
    ("spmm int8 X, float A", lambda: spmm.spmm(_csr(), np.ones((4, 3), np.int8), x_scale=1.0), TypeError, "X"),
    ("spmm x_scale NaN", lambda: spmm.spmm(_csr(data=D4.astype(np.int8), scales=np.ones(2, np.float32)),
                                           np.ones((4, 3), np.int8), x_scale=float("nan")), ValueError, "x_scale"),
    ("spmm x_scale count", lambda: spmm.spmm(_csr(data=D4.astype(np.int8), scales=np.ones(2, np.float32)),
                                             np.ones((4, 3), np.int8), x_scale=np.ones(5)), ValueError, "x_scale"),
    ("spmm x_scale with float X", lambda: spmm.spmm(_csr(), np.ones((4, 3), np.float32), x_scale=1.0),
     ValueError, "x_scale"),
    ("spmm_t inner dim", lambda: spmm.spmm_t(np.ones((4, 3), np.float32), _csr()), ValueError, "X"),
    ("spmv 2-D", lambda: spmm.spmv(_csr(), np.ones((4, 3), np.float32)), ValueError, "x"),
    ("gemv_skip_zeros x length", lambda: spmm.gemv_skip_zeros(X, np.ones(3, np.float32)), ValueError, "x"),
    ("gemv_skip_zeros layout", lambda: spmm.gemv_skip_zeros(X, np.ones(8, np.float32), layout="x"),
     ValueError, "layout"),
    # ---- prune ----------------------------------------------------------------------------------
    ("magnitude_mask object", lambda: prune.magnitude_mask(X.astype(object), 0.5), TypeError, "w"),
    ("magnitude_mask complex", lambda: prune.magnitude_mask(X.astype(np.complex64), 0.5), TypeError, "w"),
    ("magnitude_mask NaN", lambda: prune.magnitude_mask(NAN_X, 0.5), ValueError, "w"),
    ("magnitude_mask sparsity -0.1", lambda: prune.magnitude_mask(X, -0.1), ValueError, "sparsity"),
    ("magnitude_mask sparsity 1.5", lambda: prune.magnitude_mask(X, 1.5), ValueError, "sparsity"),
    ("magnitude_mask sparsity NaN", lambda: prune.magnitude_mask(X, float("nan")), ValueError, "sparsity"),
    ("magnitude_mask sparsity str", lambda: prune.magnitude_mask(X, "0.5"), TypeError, "sparsity"),
    ("magnitude_mask sparsity bool", lambda: prune.magnitude_mask(X, True), TypeError, "sparsity"),
    ("global_magnitude_masks ndarray", lambda: prune.global_magnitude_masks(X, 0.5), TypeError, "weights"),
    ("global_magnitude_masks NaN layer", lambda: prune.global_magnitude_masks([X, NAN_X], 0.5),
     ValueError, "weights[1]"),
    ("nm_mask N > M", lambda: prune.nm_mask(X, 4, 2), ValueError, "n"),
    ("nm_mask n 0", lambda: prune.nm_mask(X, 0, 4), ValueError, "n"),
    ("nm_mask m 0", lambda: prune.nm_mask(X, 2, 0), ValueError, "m"),
    ("nm_mask m not dividing", lambda: prune.nm_mask(X, 2, 3), ValueError, "w"),
    ("nm_mask 0-D", lambda: prune.nm_mask(np.float32(1.0)), ValueError, "w"),
    ("block_mask not dividing", lambda: prune.block_mask(X, 0.5, (3, 4)), ValueError, "blocksize"),
    ("block_mask blocksize 0", lambda: prune.block_mask(X, 0.5, (0, 4)), ValueError, "blocksize[0]"),
    ("block_mask blocksize scalar", lambda: prune.block_mask(X, 0.5, 4), TypeError, "blocksize"),
    ("block_mask 3-D", lambda: prune.block_mask(X[None], 0.5), ValueError, "w"),
    ("block_mask score", lambda: prune.block_mask(X, 0.5, (4, 4), "l3"), ValueError, "score"),
    ("channel_mask axis 2", lambda: prune.channel_mask(X, 0.5, 2), ValueError, "axis"),
    ("channel_mask axis None", lambda: prune.channel_mask(X, 0.5, None), TypeError, "axis"),
    ("take_channels negative", lambda: prune.take_channels(X, np.array([-1]), 0), ValueError, "kept_indices"),
    ("take_channels too large", lambda: prune.take_channels(X, np.array([8]), 0), ValueError, "kept_indices"),
    ("take_channels float", lambda: prune.take_channels(X, np.array([1.0]), 0), TypeError, "kept_indices"),
    ("take_channels uint64 2**63+1", lambda: prune.take_channels(X, np.array([2**63 + 1], np.uint64), 0),
     ValueError, "kept_indices"),
    ("mask_stats shape", lambda: prune.mask_stats(X, np.ones((8, 15), bool)), ValueError, "mask"),
    ("mask_stats int mask", lambda: prune.mask_stats(X, np.ones(X.shape, np.int8)), TypeError, "mask"),
    ("cubic_sparsity initial > final", lambda: prune.cubic_sparsity(5, 0.9, 0.5), ValueError, "initial_sparsity"),
    ("cubic_sparsity frequency 0", lambda: prune.cubic_sparsity(5, 0, 0.5, 0, 10, 0), ValueError, "frequency"),
    ("GradualSchedule end <= begin", lambda: prune.GradualSchedule(0, 0.5, 10, 10), ValueError, "end_step"),
    ("iterative_prune steps 0", lambda: prune.iterative_prune(X, 0.5, 0), ValueError, "steps"),
    ("iterative_prune mask_fn", lambda: prune.iterative_prune(X, 0.5, 2, mask_fn=lambda w, s: np.ones(3)),
     ValueError, "mask_fn"),
    ("iterative_prune finetune NaN", lambda: prune.iterative_prune(
        X, 0.5, 2, finetune_fn=lambda ws, ms, s: [np.full(X.shape, np.nan)]), ValueError, "finetune_fn"),
    ("prune_count units -1", lambda: prune.prune_count(0.5, -1), ValueError, "units"),
    # ---- gradient -------------------------------------------------------------------------------
    ("topk int64 g", lambda: gradient.topk_sparsify(G.astype(np.int64), k=1), TypeError, "g"),
    ("topk list g", lambda: gradient.topk_sparsify(G.tolist(), k=1), TypeError, "g"),
    ("topk NaN", lambda: gradient.topk_sparsify(np.where(G > 2, np.nan, G), k=1), ValueError, "g"),
    ("topk k 0", lambda: gradient.topk_sparsify(G, k=0), ValueError, "k"),
    ("topk k > size", lambda: gradient.topk_sparsify(G, k=1001), ValueError, "k"),
    ("topk k 10**20", lambda: gradient.topk_sparsify(G, k=10**20), ValueError, "k"),
    ("topk k float", lambda: gradient.topk_sparsify(G, k=2.0), TypeError, "k"),
    ("topk k on empty", lambda: gradient.topk_sparsify(np.zeros(0, np.float32), k=1), ValueError, "k"),
    ("topk ratio 0", lambda: gradient.topk_sparsify(G, ratio=0), ValueError, "ratio"),
    ("topk ratio 1.5", lambda: gradient.topk_sparsify(G, ratio=1.5), ValueError, "ratio"),
    ("topk ratio NaN", lambda: gradient.topk_sparsify(G, ratio=float("nan")), ValueError, "ratio"),
    ("topk k and ratio", lambda: gradient.topk_sparsify(G, k=1, ratio=0.1), ValueError, "k, ratio"),
    ("topk method", lambda: gradient.topk_sparsify(G, k=1, method="x"), ValueError, "method"),
    ("topk nan policy", lambda: gradient.topk_sparsify(G, k=1, nan="zero"), ValueError, "nan"),
    ("topk threshold -1", lambda: gradient.topk_sparsify(G, method="threshold", threshold=-1), ValueError, "threshold"),
    ("topk threshold NaN", lambda: gradient.topk_sparsify(G, method="threshold", threshold=float("nan")),
     ValueError, "threshold"),
    ("topk sample_ratio 0", lambda: gradient.topk_sparsify(G, k=1, method="sampled", sample_ratio=0),
     ValueError, "sample_ratio"),
    ("decode index = size", lambda: gradient.decode(np.array([5]), np.ones(1, np.float32), 5), ValueError, "indices"),
    ("decode index -1", lambda: gradient.decode(np.array([-1]), np.ones(1, np.float32), 5), ValueError, "indices"),
    ("decode uint64 2**63+1", lambda: gradient.decode(np.array([2**63 + 1], np.uint64), np.ones(1, np.float32), 5),
     ValueError, "indices"),
    ("decode float indices", lambda: gradient.decode(np.array([1.0]), np.ones(1, np.float32), 5), TypeError, "indices"),
    ("decode bool indices", lambda: gradient.decode(np.array([True]), np.ones(1, np.float32), 5), TypeError, "indices"),
    ("decode int values", lambda: gradient.decode(np.array([1]), np.array([1]), 5), TypeError, "values"),
    ("decode lengths", lambda: gradient.decode(np.array([1, 2]), np.ones(1, np.float32), 5), ValueError, "indices, values"),
    ("decode size -1", lambda: gradient.decode(np.zeros(0, np.int64), np.zeros(0, np.float32), -1), ValueError, "size"),
    ("decode shape -3", lambda: gradient.decode(np.array([0]), np.ones(1, np.float32), (2, -3)), ValueError, "size[1]"),
    ("accumulate_into int dense", lambda: gradient.accumulate_into(np.zeros(3, np.int64), np.array([0]), np.ones(1)),
     TypeError, "dense"),
    ("accumulate_into strided dense", lambda: gradient.accumulate_into(
        np.zeros(6, np.float32)[::2], np.array([0]), np.ones(1)), ValueError, "dense"),
    ("accumulate_into read-only dense", lambda: gradient.accumulate_into(
        np.broadcast_to(np.zeros(1, np.float32), (3,)), np.array([0]), np.ones(1)), ValueError, "dense"),
    ("accumulate_into index = size", lambda: gradient.accumulate_into(np.zeros(3), np.array([3]), np.ones(1)),
     ValueError, "indices"),
    ("accumulate_into float32 overflow", lambda: gradient.accumulate_into(
        np.zeros(3, np.float32), np.array([0]), np.array([1e300])), ValueError, "values"),
    ("ErrorFeedback shape -3", lambda: gradient.ErrorFeedback(-3), ValueError, "size"),
    ("ErrorFeedback dtype int32", lambda: gradient.ErrorFeedback(3, dtype=np.int32), TypeError, "dtype"),
    ("ErrorFeedback dtype name", lambda: gradient.ErrorFeedback(3, dtype="foo"), TypeError, "dtype"),
    ("ErrorFeedback momentum 1", lambda: gradient.ErrorFeedback(3, momentum=1.0), ValueError, "momentum"),
    ("ErrorFeedback step shape", lambda: gradient.ErrorFeedback(3).step(np.ones(4, np.float32), k=1), ValueError, "g"),
    ("ErrorFeedback step NaN", lambda: gradient.ErrorFeedback(2).step(np.array([np.nan, 1], np.float32), k=1),
     ValueError, "g"),
    ("ErrorFeedback nan=skip", lambda: gradient.ErrorFeedback(2).step(np.ones(2, np.float32), k=1, nan="skip"),
     ValueError, "nan"),
    ("ErrorFeedback float32 overflow", lambda: gradient.ErrorFeedback(2, dtype=np.float64).step(
        np.array([1e300, 1.0]), k=1), ValueError, "g"),
    ("encoded_nbytes k > size", lambda: gradient.encoded_nbytes(3, 4), ValueError, "k"),
    ("SparseGradient index out of range", lambda: gradient.SparseGradient(
        np.array([100]), np.ones(1, np.float32), 3, (3,), 1, 1, 0.0, "exact").to_dense(), ValueError, "indices"),
]


@pytest.mark.parametrize("call, exc, arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_argument(call, exc, arg):
    with pytest.raises(exc, match="^" + re.escape(arg) + r"(?!\w)"):
        call()


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------------------
# regression tests for the silent wrong answers found by the fuzz pass (all fixed)
# ------------------------------------------------------------------------------------------------
def test_integer_weights_above_2_24_are_ranked_exactly():
    # float32 merged 2**24 and 2**24 + 1: the tie rule then kept index 0, the SMALLER magnitude
    w = np.array([2**24, 2**24 + 1], np.int64)
    assert prune.magnitude_mask(w, 0.5).tolist() == [False, True]
    assert prune.magnitude_mask(w.astype(np.int32), 0.5).tolist() == [False, True]
    assert [m.tolist() for m in prune.global_magnitude_masks([w[:1], w[1:]], 0.5)] == [[False], [True]]


def test_mask_stats_huge_weights_give_a_finite_energy():
    # sum(w**2) overflowed float64: energy_removed came out as inf / inf = nan
    s = prune.mask_stats(np.array([1e200, 1e200, 2e200]), np.array([True, False, True]))
    assert s.energy_removed == pytest.approx(1 / 6)
    assert s.energy_kept == pytest.approx(5 / 6)


def test_accumulate_into_keeps_finite_values_and_nan():
    dense = np.zeros(3, np.float32)
    gradient.accumulate_into(dense, np.array([0, 2]), np.array([1.5, np.nan]))
    assert dense[0] == 1.5 and dense[1] == 0 and np.isnan(dense[2])
    # a refused update leaves dense untouched
    with pytest.raises(ValueError, match="^values"):
        gradient.accumulate_into(dense, np.array([1]), np.array([-1e39]))
    assert dense[1] == 0


def test_quantize_binary_and_per_channel_unchanged_by_row_views():
    # _quant3_kernel indexes 1-D row views (no gathers); compare with a NumPy reference
    x = np.random.default_rng(3).standard_normal((3, 4, 5)).astype(np.float32)
    qt = quant.quantize(x, 8, axis=1)
    s = qt.scale.reshape(1, 4, 1)
    ref = np.clip(np.rint(x / s), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(qt.values, ref)
    qb = quant.quantize(x, "binary", axis=1)
    np.testing.assert_array_equal(qb.values, np.where(x >= 0, 1, -1).astype(np.int8))


# ------------------------------------------------------------------------------------------------
# non-contiguous and negative-stride views are copied, never misread
# ------------------------------------------------------------------------------------------------
_VIEWS = {
    "negstride": lambda a: a[::-1, ::-1],
    "strided": lambda a: a[:, ::2],
    "fortran": np.asfortranarray,
}


@pytest.mark.parametrize("view", list(_VIEWS))
def test_views_match_contiguous_copies(view):
    rng = np.random.default_rng(11)
    make = _VIEWS[view]
    x = make(rng.standard_normal((6, 16)).astype(np.float32))
    xc = np.ascontiguousarray(x)
    np.testing.assert_array_equal(quant.quantize(x, 4, group_size=2).values, quant.quantize(xc, 4, group_size=2).values)
    np.testing.assert_array_equal(quant.quantize_rows_int8(x)[0], quant.quantize_rows_int8(xc)[0])
    np.testing.assert_array_equal(quant.emulate_float(x, "bf16"), quant.emulate_float(xc, "bf16"))
    np.testing.assert_array_equal(prune.magnitude_mask(x, 0.5), prune.magnitude_mask(xc, 0.5))
    np.testing.assert_array_equal(prune.nm_mask(x[:, :8]), prune.nm_mask(xc[:, :8]))
    np.testing.assert_array_equal(gradient.topk_sparsify(x, k=5).indices, gradient.topk_sparsify(xc, k=5).indices)
    q = make(rng.integers(-8, 8, (6, 16)).astype(np.int8))
    qc = np.ascontiguousarray(q)
    np.testing.assert_array_equal(quant.pack_int4(q), quant.pack_int4(qc))
    a = make(rng.integers(-128, 128, (6, 16), dtype=np.int8))
    b = rng.integers(-128, 128, (a.shape[1], 5), dtype=np.int8)
    ref = np.ascontiguousarray(a).astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(gemm.int8_gemm(a, b[::-1][::-1]), ref)
    A = formats.CSRMatrix.from_dense(np.where(np.abs(xc) > 1, xc, 0).T.copy())
    xs = make(rng.standard_normal((x.shape[0], 10)).astype(np.float32))
    np.testing.assert_allclose(spmm.spmm(A, xs), A.to_dense().astype(np.float64) @ xs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# one and two threads give identical results
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_one_and_two_threads_identical():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((512, 512)).astype(np.float32)  # above quant.PARALLEL_MIN_ELEMENTS
    a = rng.integers(-128, 128, (64, 256), dtype=np.int8)
    b = rng.integers(-128, 128, (256, 48), dtype=np.int8)
    w = np.where(np.abs(x) > 1, x, 0)
    A = formats.CSRMatrix.from_dense(w)

    def run():
        return [quant.quantize(x, 8).values, quant.quantize(x, 4, group_size=32, method="mse").scale,
                quant.mse(x, x * 1.01), prune.magnitude_mask(x, 0.7), prune.nm_mask(x),
                gradient.topk_sparsify(x, k=1000).indices, gemm.int8_gemm(a, b), spmm.spmm(A, x[:, :16])]

    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(2)
        two = run()
    finally:
        numba.set_num_threads(old)
    for r1, r2 in zip(one, two):
        np.testing.assert_array_equal(r1, r2)

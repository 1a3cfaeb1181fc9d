"""Roofline cost model over the memory hierarchy: time per roof, bound, energy, speedup — vectorized.

One formula set (:func:`_gemm_core`, :func:`_memory_core`) runs on NumPy arrays of configurations; the scalar
:func:`estimate` and :func:`estimate_ops` call the same code on batches and wrap the rows into explained
:class:`Estimate` records, so the scalar and vector paths agree by construction (and a test checks it).

The model of a GEMM ``count x (m x k) @ (k x n)`` whose (n x k) weight is compressed by a
:class:`~memwall.simulator.compression.Compression`:

Compute dtype and units
    The compute dtype is the wider of weights and activations (same width, different kinds: fp16/bf16 -> fp32,
    fp8/int8 -> fp16).  A float dtype the device lacks is promoted (fp8 -> fp16 -> fp32, bf16/tf32 -> fp32) with a
    conversion cost and a note; integer *activations* the device cannot compute are an error (INT4 activations
    need INT4 units).  No shipped device has a native mixed-precision product (such as INT4 x FP8 without
    converting the weights), so the profile schema has no key for one yet.  Dense and channel-pruned GEMMs run on
    the unit with the higher peak for the compute dtype (tensor cores / matrix engines when present).
    2:4-compatible N:M patterns run on the sparse tensor peak; other patterns, or a device without sparse units,
    run dense after decompression -- except on a device without a matrix unit (a CPU) whose profile gives
    ``nm_sparse_fraction``: there N:M runs as a software sparse kernel on vector units, the kept multiply-adds at
    that fraction of the vector peak, with no decompression (a calibrated host profile measures it with
    memwall's own 2:4 kernel). Unstructured CSR runs on vector units at ``csr_vector_fraction`` of the vector
    peak, plus ``csr_nonzero_ns`` per stored nonzero when the profile gives it (the per-nonzero index load and
    gather addressing a CSR kernel pays whatever the batch; calibration separates the two from two batches); the
    software N:M kernel likewise pays ``nm_kept_ns`` per kept weight (decoding its position).  BSR runs on the tensor unit at ``bsr_matrix_fraction`` when both block sides are >=
    ``matrix_min_block_elements``, else on vector units at an efficiency rising from ``csr_vector_fraction`` (1x1
    blocks) to ``vector_gemm_fraction`` (blocks of >= 64 elements) linearly in log2(block area); without a matrix
    unit the top of that ramp is ``bsr_matrix_fraction`` when the profile gives it (the measured software block
    kernel).

Vector work besides the main product (same SMs / cores: its time *adds* to the main unit's time; it runs at
``conversion_vector_fraction`` of the vector peak when the profile gives one, else ``vector_gemm_fraction``)
    * weight conversion (dequantization) per stored weight element per re-read of the weight tile, i.e.
      ``ceil(m / block_tile)`` times: int weights 2 ops (convert, scale) + 1 with zero points + 1 to unpack
      int4; float weights 1 op (convert), 2 with group scales.  This is why W4A16 can lose to FP16 when
      compute-bound at large batch.
    * activation conversion when the activation dtype is not the compute dtype: 1 op (float) or 2 (int; 3
      for int4) per element per ``ceil(n / block_tile)`` column blocks.
    * quantizing activations (int8 / int4 / fp8 acts) costs a separate pass: 4 vector ops per element, reading
      the activations in the high-precision dtype (fp16 on GPUs, fp32 on CPUs) and writing them quantized, and
      one more kernel launch.
    * decompressing a non-2:4 N:M weight to dense: 1 op per dense weight element per re-read.
    * the activation-quantization pass runs at ``quantize_vector_fraction`` of the fp32 vector peak when the
      profile gives one (a calibrated host profile measures memwall's per-token INT8 quantizer: max-abs,
      scale, round and clip per element are float work), else at the conversion fraction of the compute
      dtype's vector peak.
    * CPUs whose profile gives ``weight_only_gemm_fraction``: the product of a weight-only quantized GEMM
      with more than ``WO_FEW_TOKENS`` tokens (INT4 weights; ``WO8_FEW_TOKENS`` for INT8 weights; float
      activations) runs at that fraction of the vector peak -- the rate memwall's batched dequantizing kernel
      reaches (measured by calibrate) -- instead of the dense-GEMM fraction; its dequantization work is charged as
      above.  With 2 to ``WO_FEW_TOKENS`` (``WO8_FEW_TOKENS``) tokens memwall's INT4 (INT8) kernel makes GEMV-style
      passes: the product at the GEMV's rate and the weights decoded ``ceil(m / WO_TOKENS_PER_DECODE)`` times.
    * CPUs whose profile gives ``blas_pack_bandwidth_fraction``: a BLAS copies the weight operand of a dense
      float GEMM with more than one token into its packed panel layout before the product (GotoBLAS-style),
      a pass that does not overlap it: ``weight bytes / (bandwidth of the level the weights come from x
      fraction)`` — the LLC when they are resident (warm), else DRAM.  It is why a BLAS GEMM of a few
      tokens through a large weight runs far below the BLAS peak (calibration measures it as the time of a
      64-token product beyond its compute at the peak).

Efficiency that falls for small shapes
    ``efficiency = unit fraction (large GEMM) x padding x waves``: padding = (m / m padded to the unit
    granularity) x (n / n padded), with granularity ``matrix_min_block_elements`` on tensor units and 1 on
    vector units; waves = output tiles (``block_tile`` squared, times ``count``, times a split-K factor
    ``min(floor(P / tiles), ceil(k / block_tile))`` when tiles < P) over ``ceil(tiles / P) * P`` slots,
    P = ``parallel_units`` (SMs or cores): wave quantization.

Memory traffic per level (tiled GEMM)
    Bytes: activations in ``A = m k a``, out ``C = m n' a`` (``a`` = activation itemsize, ``n'`` kept output
    channels), weights ``W`` = exact compressed bytes (:func:`~memwall.simulator.compression.weight_bytes`),
    all times ``count``.  The traffic that level ``j`` serves uses the tile side ``T_j`` of the level above
    it (closer to compute): ``T_0`` = ``register_tile_elements`` for the smallest level, else
    ``T_j = floor(sqrt(cap_{j-1} / (2 a)))`` (two square operand tiles — of A and W — fit in one instance of
    the smaller level; the output tile accumulates in registers, as GPU and CPU GEMM kernels do).  Traffic
    ``= A ceil(n'/T) + W ceil(m/T) + C`` (each operand re-read once per tile of the other: weights per
    row-block of activations and vice versa), or compulsory ``A + W + C`` when one GEMM's
    working set fits that smaller level (per instance), or its weights or activations fit half of it.  Inner
    levels never see less traffic than outer ones.  ``warm=True``: weights that fit the last cache level
    (total capacity) are read from it, not from DRAM.  Each level's roof is traffic / (bandwidth x fraction),
    the DRAM fraction ``dram_bandwidth_fraction``, caches ``cache_bandwidth_fraction``.

Time, bound, energy, speedup
    ``time = max(memory roofs, tensor + vector) + launch overhead``; ``bound`` names the largest roof
    (``tensor`` or ``vector`` for compute — whichever contributes more — or ``launch`` when the fixed overhead
    exceeds every roof).  Energy (:mod:`~memwall.simulator.energy`): useful ops x energy/op(dtype) per unit
    + traffic x energy/byte per level + idle power x time.  Speedup = baseline time / time for the same op
    (baseline default :func:`default_baseline`: dense fp16 on GPUs, dense fp32 on CPUs).

Memory-only ops (:class:`~memwall.simulator.ops.MemoryOp`) stream their bytes through every level (no
reuse) and do ``ops_per_element`` vector ops per written element.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .compression import DTYPES, FORMATS, INT_DTYPES, ITEMSIZE, Compression, check_shape, weight_bytes
from .devices import Device, load_device
from .energy import energy_components  # noqa: F401  (re-exported helper; the vector path inlines the sums)
from .ops import GemmOp, MemoryOp

#: memwall's weight-only kernels on AVX-512 CPUs (``memwall.kernels.gemm``; a test keeps these equal to
#: ``WEIGHT_ONLY_FEW_TOKENS``, ``WEIGHT_ONLY_W8_FEW_TOKENS`` and ``_WO_TOK`` there): up to WO_FEW_TOKENS tokens
#: (INT4 weights) or WO8_FEW_TOKENS tokens (INT8) run GEMV-style passes that decode the weights once per
#: WO_TOKENS_PER_DECODE tokens; more tokens dequantize each weight panel once for all tokens.  Used for profiles
#: that describe memwall's kernels, i.e. give ``weight_only_gemm_fraction`` (calibrated hosts).
WO_FEW_TOKENS = 12
WO8_FEW_TOKENS = 20
WO_TOKENS_PER_DECODE = 2

__all__ = [
    "Estimate",
    "estimate",
    "estimate_ops",
    "estimate_gemm_arrays",
    "default_baseline",
    "compute_dtype",
    "roof_names",
]

_D = {d: i for i, d in enumerate(DTYPES)}
_F = {f: i for i, f in enumerate(FORMATS)}
_ITEM = np.array([ITEMSIZE[d] for d in DTYPES])
_IS_INT = np.array([d in INT_DTYPES for d in DTYPES])
_IS_QACT = np.array([d in ("int8", "int4", "fp8") for d in DTYPES])  # activations needing a quantization pass
_RANK = {"fp32": 5, "tf32": 4, "fp16": 3, "bf16": 3, "fp8": 2, "int8": 2, "int4": 1}
_PROMOTE = {"fp8": "fp16", "fp16": "fp32", "bf16": "fp32", "tf32": "fp32"}
_EPS = 1e-9
_INDEX_LIMIT = float(2**31)
_TENSOR, _VECTOR = 0, 1


def _default_dtype(dev) -> str:
    return "fp16" if dev.kind == "gpu" and dev.has_dtype("fp16") else "fp32"


def default_baseline(device) -> Compression:
    """Dense fp16 weights and activations on GPUs, dense fp32 on CPUs."""
    dt = _default_dtype(load_device(device))
    return Compression(weights=dt, acts=dt)


def compute_dtype(device, weights: str, acts: str) -> str:
    """The dtype a GEMM of ``weights`` x ``acts`` computes in on ``device`` (see the module doc).

    Raises ValueError when the activation dtype is an integer type the device cannot compute."""
    dev = load_device(device)
    for v, name in ((weights, "weights"), (acts, "acts")):
        if v not in DTYPES:
            raise ValueError(f"{name}: unknown dtype {v!r}; valid dtypes: {', '.join(DTYPES)}")
    if acts in INT_DTYPES and not dev.has_dtype(acts):
        raise ValueError(f"acts: {acts} activations need {acts} compute, which {dev.id} lacks "
                         f"(it computes: {', '.join(dev.dtypes)})")
    if weights == acts:
        c = weights
    elif _RANK[weights] != _RANK[acts]:
        c = weights if _RANK[weights] > _RANK[acts] else acts
    else:
        c = "fp32" if {weights, acts} == {"fp16", "bf16"} else "fp16"
    while not dev.has_dtype(c):
        if c not in _PROMOTE:
            raise ValueError(f"weights/acts {weights}/{acts}: {dev.id} has no {c} units "
                             f"(it computes: {', '.join(dev.dtypes)})")
        c = _PROMOTE[c]
    return c


def roof_names(device) -> tuple[str, ...]:
    """Names a ``bound`` can take on ``device``: its memory levels, ``tensor``, ``vector``, ``launch``."""
    dev = load_device(device)
    return tuple(lv.name for lv in dev.memory_levels) + ("tensor", "vector", "launch")


# ----------------------------------------------------------------------------------------------------------
# per-device lookup tables
# ----------------------------------------------------------------------------------------------------------
class _Tables:
    def __init__(self, dev: Device):
        self.dev = dev
        nd = len(DTYPES)
        self.ct = np.full((nd, nd), -1, dtype=np.int64)
        self.ct_err: dict[tuple[int, int], str] = {}
        for wi, w in enumerate(DTYPES):
            for ai, a in enumerate(DTYPES):
                try:
                    self.ct[wi, ai] = _D[compute_dtype(dev, w, a)]
                except ValueError as exc:
                    self.ct_err[(wi, ai)] = str(exc)
        self.ct_f = self.ct.ravel()
        tens = dev.units.get("tensor")
        vec = dev.units["vector"]
        self.t_dense = np.array([(tens.dense.get(d, 0.0) if tens else 0.0) for d in DTYPES])
        self.t_sparse = np.array([(tens.sparse.get(d, 0.0) if tens else 0.0) for d in DTYPES])
        self.v_dense = np.array([vec.dense.get(d, 0.0) for d in DTYPES])
        self.e_op = np.array([dev.energy_j_per_op[d] for d in DTYPES])
        # per compute dtype: the vector dtype of conversions (fp32 where the vector unit lacks it), whether the
        # tensor unit is the faster one, and the large-GEMM rate of the faster unit
        self.vdt = np.array([i if self.v_dense[i] > 0 else _D["fp32"] for i in range(len(DTYPES))])
        self.tensor_best = self.t_dense > self.v_dense
        eff = dev.efficiency
        self.f_tensor = eff.tensor_gemm_fraction or 0.0
        self.f_vector = eff.vector_gemm_fraction
        self.f_csr = eff.csr_vector_fraction
        self.f_bsr = eff.bsr_matrix_fraction or 0.0
        self.f_nm = eff.nm_sparse_fraction or 0.0
        # No matrix unit (CPUs): sparse formats run as software kernels on the vector units, each at its own
        # measured efficiency when the profile has one (a calibrated host profile does): N:M at
        # ``nm_sparse_fraction`` of the vector peak on the kept multiply-adds only, BSR with large blocks at
        # ``bsr_matrix_fraction`` instead of dense-GEMM efficiency.
        self.soft_sparse = tens is None
        self.f_nm_soft = self.f_nm if self.soft_sparse else 0.0
        self.f_bsr_top = self.f_bsr if (self.soft_sparse and self.f_bsr > 0) else self.f_vector
        # conversion work (dequantize, unpack, quantize activations) is not FMA work: its own fraction when known
        self.f_conv = eff.conversion_vector_fraction or self.f_vector
        # the activation-quantization pass (its own kernel: max-abs, scale, round, clip) at its own rate
        # (given: a fraction of the fp32 vector peak, the dtype the activations are quantized from on CPUs)
        self.q_rate = ((eff.quantize_vector_fraction * self.v_dense[_D["fp32"]])
                       if eff.quantize_vector_fraction and self.v_dense[_D["fp32"]] > 0 else 0.0)
        # CPUs: the BLAS packs the weight operand of a dense float GEMM (m > 1) before the product
        self.f_pack = eff.blas_pack_bandwidth_fraction or 0.0
        # CPUs: the batched weight-only path (int weights, float activations) at its measured efficiency
        self.f_wo = eff.weight_only_gemm_fraction or 0.0
        self.dense_rate = np.where(self.tensor_best, self.t_dense * self.f_tensor,
                                   self.v_dense[self.vdt] * self.f_vector)
        # conversion ops per element from dtype x (stored) to dtype c (computed): 0 when equal; int: convert +
        # scale (+1 to unpack int4); float: convert.  ``int_conv`` marks int->c (a zero point adds 1 op),
        # ``float_conv`` float->c (group scales add 1 op).
        nd = len(DTYPES)
        self.conv_base = np.zeros((nd, nd))
        self.int_conv = np.zeros((nd, nd))
        self.float_conv = np.zeros((nd, nd))
        for x in range(nd):
            for c in range(nd):
                if x == c:
                    continue
                if _IS_INT[x]:
                    self.conv_base[x, c] = 2.0 + (x == _D["int4"])
                    self.int_conv[x, c] = 1.0
                else:
                    self.conv_base[x, c] = 1.0
                    self.float_conv[x, c] = 1.0
        self.conv_base_f = self.conv_base.ravel()
        self.int_conv_f = self.int_conv.ravel()
        self.float_conv_f = self.float_conv.ravel()
        lv = dev.memory_levels
        self.nlev = len(lv)
        self.cap = np.array([x.capacity_bytes for x in lv])
        self.totcap = np.array([x.total_capacity_bytes for x in lv])
        self.bw = np.array([x.bandwidth_bytes_per_s * (eff.dram_bandwidth_fraction if i == len(lv) - 1
                                                       else eff.cache_bandwidth_fraction)
                            for i, x in enumerate(lv)])
        self.e_byte = np.array([x.energy_j_per_byte for x in lv])
        t = dev.tiling
        self.t_reg = float(t.register_tile_elements)
        self.t_blk = float(t.block_tile_elements)
        self.g_min = float(t.matrix_min_block_elements)
        self.P = float(t.parallel_units)
        self.launch = dev.kernel_launch_s
        self.csr_nz = dev.csr_nonzero_s or 0.0
        self.nm_kept = dev.nm_kept_s or 0.0
        self.idle = dev.idle_w
        self.hp_item = 2.0 if (dev.kind == "gpu" and dev.has_dtype("fp16")) else 4.0
        self.names = roof_names(dev)
        # tile side per (level, activation dtype): the register tile for the smallest level, else two
        # square operand tiles of the activation itemsize in one instance of the next smaller level
        self.tile = np.empty((self.nlev, len(DTYPES)))
        for j in range(self.nlev):
            for ai in range(len(DTYPES)):
                self.tile[j, ai] = (self.t_reg if j == 0
                                    else max(1.0, math.floor(math.sqrt(self.cap[j - 1] / (2.0 * _ITEM[ai])))))


_TABLES: dict[int, _Tables] = {}


def _tables(dev: Device) -> _Tables:
    t = _TABLES.get(id(dev))
    if t is None or t.dev is not dev:
        t = _Tables(dev)
        _TABLES[id(dev)] = t
    return t


# ----------------------------------------------------------------------------------------------------------
# the vectorized core
# ----------------------------------------------------------------------------------------------------------
def _cdiv(a, b):
    return np.ceil(a / b)


def _sel(cond, a, b):
    """``np.where(cond, a, b)`` for finite values, branch-free (np.where is ~8x slower than arithmetic on
    random masks): ``a * cond + b * ~cond`` is exact because each product is x * 1 or x * 0."""
    if np.ndim(cond) == 0:
        return a if cond else b
    return a * cond + b * ~cond


def _weight_bytes_arrays(fmt, w, rows, cols, sp, group, sbytes, zp, br, bc, nmn, nmm):
    """Exact weight bytes (the compression module's byte model) on arrays; returns (total, kept_rows, kept).
    Formulas of formats absent from ``fmt`` are skipped; present ones are combined by exact masked sums."""
    item = _ITEM[w]
    is4 = w == _D["int4"]
    quant = _IS_INT[w]
    total = rows * cols
    # dense / channel
    is_ch = fmt == _F["channel"]
    krows = rows - is_ch * np.minimum(rows, np.floor(sp * rows + _EPS)) if is_ch.any() else rows
    dense_vals = _sel(is4, krows * np.ceil(cols / 2), krows * cols * item)
    has_g = group > 0
    nscales = has_g * (krows * np.floor(cols / np.maximum(group, 1.0))) + (~has_g & quant) * krows
    dense_b = dense_vals + nscales * sbytes * (1.0 + zp)
    is_csr = fmt == _F["csr"]
    is_bsr = fmt == _F["bsr"]
    is_nm = fmt == _F["nm"]
    any_csr, any_bsr, any_nm = is_csr.any(), is_bsr.any(), is_nm.any()
    if not (any_csr or any_bsr or any_nm):
        return dense_b, krows, krows * cols
    is_dense = ~(is_csr | is_bsr | is_nm)
    wb = dense_b * is_dense
    kept = (krows * cols) * is_dense
    if any_csr:
        nnz = total - np.minimum(total, np.floor(sp * total + _EPS))
        idx = 4.0 + 4.0 * (np.maximum(nnz, cols) >= _INDEX_LIMIT)
        csr_b = _sel(is4, np.ceil(nnz / 2), nnz * item) + (nnz + rows + 1) * idx + quant * (rows * 4.0)
        wb = wb + csr_b * is_csr
        kept = kept + nnz * is_csr
    if any_bsr:
        brr = np.maximum(br, 1.0)
        bcc = np.maximum(bc, 1.0)
        nbr = np.floor(rows / brr)
        nblocks = nbr * np.floor(cols / bcc)
        nb = nblocks - np.minimum(nblocks, np.floor(sp * nblocks + _EPS))
        idx = 4.0 + 4.0 * (np.maximum(nb, cols) >= _INDEX_LIMIT)
        bvals = nb * brr * bcc
        bsr_b = _sel(is4, np.ceil(bvals / 2), bvals * item) + (nb + nbr + 1) * idx + quant * (nb * 4.0)
        wb = wb + bsr_b * is_bsr
        kept = kept + bvals * is_bsr
    if any_nm:
        mm = np.maximum(nmm, 1.0)
        kr = np.floor(cols / mm) * nmn
        bits = np.maximum(1.0, np.ceil(np.log2(np.maximum(mm, 2.0))))
        nm_b = (_sel(is4, rows * np.ceil(kr / 2), rows * kr * item) + rows * np.ceil(kr * bits / 8)
                + quant * (rows * 4.0))
        wb = wb + nm_b * is_nm
        kept = kept + (rows * kr) * is_nm
    return wb, krows, kept


def _gemm_core(T: _Tables, m, n, k, count, w, a, fmt, sp, group, sbytes, zp, br, bc, nmn, nmm, wop, warm,
               time_only=False):
    """All arrays broadcast to one shape; returns a dict of arrays (see estimate_gemm_arrays).  Selections are
    exact masked sums (see :func:`_sel`): every term is finite."""
    # --- dtypes -------------------------------------------------------------------------------------
    w_eff = _sel(wop, w, a)
    fmt = fmt * wop  # the dense format (code 0) for activation x activation products
    c = T.ct_f[w_eff * len(DTYPES) + a]
    if (c < 0).any():
        i = int(np.flatnonzero(np.broadcast_to(c, np.broadcast(c, w_eff, a).shape) < 0)[0])
        raise ValueError(T.ct_err[(int(np.broadcast_to(w_eff, np.shape(c)).flat[i]),
                                   int(np.broadcast_to(a, np.shape(c)).flat[i]))])
    a_item = _ITEM[a]
    # --- weights ------------------------------------------------------------------------------------
    wb1, n_out, kept1 = _weight_bytes_arrays(fmt, w_eff, n, k, sp, group, sbytes, zp, br, bc, nmn, nmm)
    wb1 = _sel(wop, wb1, n * k * a_item)
    A1 = m * k * a_item
    C1 = m * n_out * a_item
    A, W, C = A1 * count, wb1 * count, C1 * count
    qact = _IS_QACT[a]
    Q = qact * (m * k * (T.hp_item + a_item) * count)
    # --- traffic per level --------------------------------------------------------------------------
    L = T.nlev
    traffic = [None] * L
    rW_last = None
    ws1 = A1 + wb1 + C1
    small1 = np.minimum(A1, wb1)
    for j in range(L):
        tile = T.tile[j][a]
        rA = np.maximum(1.0, np.ceil(n_out / tile))
        rW = np.maximum(1.0, np.ceil(m / tile))
        if j > 0:  # compulsory traffic when one GEMM's working set (or one operand) fits the smaller level
            cap = T.cap[j - 1]
            tiled = (ws1 > cap) & (small1 > cap / 2)
            rA = np.maximum(1.0, rA * tiled)
            rW = np.maximum(1.0, rW * tiled)
        traffic[j] = A * rA + W * rW + C + Q
        rW_last = rW
    resident = warm & (wb1 <= T.totcap[L - 2])
    traffic[L - 1] = traffic[L - 1] - resident * (W * rW_last)
    for j in range(L - 2, -1, -1):
        traffic[j] = np.maximum(traffic[j], traffic[j + 1])
    # --- compute ------------------------------------------------------------------------------------
    td, ts = T.t_dense[c], T.t_sparse[c]
    vdt = T.vdt[c]
    vpeak = T.v_dense[vdt]
    is_csr = fmt == _F["csr"]
    is_bsr = fmt == _F["bsr"]
    is_nm = fmt == _F["nm"]
    any_csr, any_bsr, any_nm = bool(is_csr.any()), bool(is_bsr.any()), bool(is_nm.any())
    useful = 2.0 * m * kept1 * count
    use_tensor = T.tensor_best[c]
    peak = T.dense_rate[c]
    wo_few = np.zeros((), dtype=bool)
    if T.f_wo > 0:  # weight-only quantized GEMM with more than one token: the dequantizing kernel's own rate
        wo = wop & _IS_INT[w_eff] & ~_IS_INT[a] & (m >= 2) & ~use_tensor & ((fmt == _F["dense"]) | (fmt == _F["channel"]))
        # up to WO_FEW_TOKENS tokens memwall runs GEMV-style passes instead (product at the GEMV's rate; the
        # weights are decoded once per WO_TOKENS_PER_DECODE tokens: see reuse_w below)
        few4 = (w_eff == _D["int4"]) & (m <= WO_FEW_TOKENS)
        wo_few = wo & (few4 | ((w_eff == _D["int8"]) & (m <= WO8_FEW_TOKENS)))
        peak = _sel(wo & ~wo_few, T.v_dense[T.vdt[c]] * T.f_wo, peak)
    work = useful
    nm_sparse = np.zeros((), dtype=bool)
    t_nm_kept = 0.0
    if any_nm:
        q4 = nmm * 0.25
        nm_compat = (((nmm == 2) | (nmm == 4)) & (2 * nmn <= nmm)) | ((q4 == np.floor(q4)) & (nmn <= 2) & (nmm > 0))
        nm_sparse = is_nm & nm_compat & (ts > 0)
        use_tensor = use_tensor | nm_sparse
        peak = _sel(nm_sparse, ts * T.f_nm, peak)
        work = _sel(is_nm, 2.0 * m * n_out * k * count, work)  # dense-equivalent at the sparse peak
        if T.f_nm_soft > 0:  # software N:M kernel on vector units: kept multiply-adds at its own efficiency
            nm_soft = is_nm & ~nm_sparse
            use_tensor = use_tensor & ~nm_soft
            peak = _sel(nm_soft, vpeak * T.f_nm_soft, peak)
            work = _sel(nm_soft, useful, work)
            nm_sparse = nm_sparse | nm_soft  # no decompression pass below
            if T.nm_kept > 0:  # per kept weight: its position decoded from the metadata, whatever the batch
                t_nm_kept = nm_soft * (kept1 * count * T.nm_kept)
    if any_bsr:
        bsr_tensor = is_bsr & (td > 0) & (np.minimum(br, bc) >= T.g_min)
        blk_eff = T.f_csr + (T.f_bsr_top - T.f_csr) * np.minimum(1.0, np.log2(np.maximum(br * bc, 1.0)) / 6.0)
        use_tensor = (use_tensor & ~is_bsr) | bsr_tensor
        peak = _sel(is_bsr, _sel(bsr_tensor, td * T.f_bsr, vpeak * blk_eff), peak)
    if any_csr:
        use_tensor = use_tensor & ~is_csr
        peak = _sel(is_csr, vpeak * T.f_csr, peak)
    t_nz = (is_csr * (kept1 * count * T.csr_nz)) if (any_csr and T.csr_nz > 0) else 0.0 * m
    g = 1.0 + (T.g_min - 1.0) * use_tensor
    mm_ = np.maximum(m, 1.0)
    nn_ = np.maximum(n_out, 1.0)
    pad = (mm_ / (np.ceil(mm_ / g) * g)) * (nn_ / (np.ceil(nn_ / g) * g))  # 1 on vector units (g = 1)
    tiles = np.ceil(mm_ / T.t_blk) * np.ceil(nn_ / T.t_blk) * np.maximum(count, 1.0)
    split = np.maximum(1.0, np.minimum(np.floor(T.P / tiles), np.ceil(np.maximum(k, 1.0) / T.t_blk)))
    tiles = tiles * split
    waves = np.ceil(tiles / T.P) * T.P
    shape_eff = pad * tiles / waves
    t_main = work / np.maximum(peak * shape_eff, 1e-300) + t_nz + t_nm_kept
    # vector work besides the main product
    reuse_w = np.maximum(1.0, np.ceil(m / T.t_blk))
    reuse_w = _sel(wo_few, np.ceil(m / WO_TOKENS_PER_DECODE), reuse_w)
    reuse_a = np.maximum(1.0, np.ceil(n_out / T.t_blk))
    wc = w_eff * len(DTYPES) + c  # flat (stored dtype, compute dtype) index: 1-D takes are cheaper
    deq_per = T.conv_base_f[wc] + zp * T.int_conv_f[wc] + (group > 0) * T.float_conv_f[wc]
    deq_ops = _sel(wop, kept1, n * k) * count * reuse_w * deq_per
    conv_ops = m * k * count * reuse_a * T.conv_base_f[a * len(DTYPES) + c]
    quant_ops = qact * (4.0 * m * k * count)
    conv_extra = deq_ops + conv_ops
    if any_nm:  # decompressing a non-2:4 N:M weight to dense
        conv_extra = conv_extra + (is_nm & ~nm_sparse) * (n * k * count * reuse_w)
    extra = conv_extra + quant_ops
    t_extra = conv_extra / (vpeak * T.f_conv) + quant_ops / (T.q_rate if T.q_rate > 0 else vpeak * T.f_conv)
    if T.f_pack > 0:  # BLAS packing pass over the (float, dense) weights, read from where they reside
        blas = wop & ~_IS_INT[w_eff] & ((fmt == _F["dense"]) | (fmt == _F["channel"])) & (m >= 2)
        src_bw = _sel(resident, T.bw[L - 2], T.bw[L - 1])
        t_pack = blas * (W / (src_bw * T.f_pack))
        t_extra = t_extra + t_pack
    else:
        t_pack = 0.0 * m
    t_tensor = t_main * use_tensor
    t_vector = t_main * ~use_tensor + t_extra
    t_compute = t_tensor + t_vector
    # --- time, bound ------------------------------------------------------------------------------
    t_mem = [traffic[j] / T.bw[j] for j in range(L)]
    mx, arg = t_mem[0], 0
    for j, t in enumerate(t_mem[1:] + [t_compute], start=1):
        gt = t > mx
        arg = arg + gt * (j - arg)
        mx = np.maximum(mx, t)
    overhead = T.launch * (1.0 + qact)
    bound = arg + (arg == L) * (t_tensor < t_vector)
    bound = bound + (overhead > mx) * (L + 2 - bound)
    time = mx + overhead
    if time_only:
        return {"time_s": time}
    # --- energy ---------------------------------------------------------------------------------------
    e_tensor = (useful * use_tensor) * T.e_op[c]
    e_vector = (useful * ~use_tensor + extra) * T.e_op[vdt]
    e_levels = [traffic[j] * T.e_byte[j] for j in range(L)]
    e_static = T.idle * time
    energy = e_tensor + e_vector + sum(e_levels) + e_static
    out = {
        "time_s": time, "bound_code": bound, "energy_j": energy, "ops": useful,
        "t_tensor": t_tensor, "t_vector": t_vector, "t_overhead": overhead,
        "e_tensor": e_tensor, "e_vector": e_vector, "e_static": e_static,
        "weight_bytes": W, "act_bytes": A + C, "quant_pass_bytes": Q, "compute_dtype": c, "vector_dtype": vdt,
        "use_tensor": use_tensor, "nm_sparse": nm_sparse, "resident": resident, "vector_extra_ops": extra,
        "dequant_ops": deq_ops, "conv_ops": conv_ops, "reuse_w": reuse_w, "shape_eff": shape_eff,
        "t_extra": t_extra, "t_pack": t_pack,
    }
    for j in range(L):
        out[f"bytes_{j}"] = traffic[j]
        out[f"t_mem_{j}"] = t_mem[j]
        out[f"e_mem_{j}"] = e_levels[j]
    return out


def _memory_core(T: _Tables, reads, writes, opse, welems, w, a, warm):
    a_item = _ITEM[a]
    w_item = _ITEM[w]
    Wb = welems * w_item
    total = (reads + writes) * a_item + Wb
    L = T.nlev
    resident = warm & (Wb <= T.totcap[L - 2])
    traffic = [total] * L
    traffic[L - 1] = total - np.where(resident, Wb, 0.0)
    c = T.ct[a, a]
    if (c < 0).any():
        i = int(np.flatnonzero(c < 0)[0])
        raise ValueError(T.ct_err[(int(a.flat[i]), int(a.flat[i]))])
    c = np.where(_IS_INT[a], _D["fp32"], c)
    vdt = np.where(T.v_dense[c] > 0, c, _D["fp32"])
    ops = opse * writes
    t_vector = ops / (T.v_dense[vdt] * T.f_vector)
    t_mem = [traffic[j] / T.bw[j] for j in range(L)]
    stack = np.stack(t_mem + [t_vector])
    mx = stack.max(axis=0)
    arg = stack.argmax(axis=0)
    bound = np.where(arg == L, L + 1, arg)
    overhead = np.full(np.shape(mx), T.launch)
    bound = np.where(overhead > mx, L + 2, bound)
    time = mx + overhead
    e_vector = ops * T.e_op[vdt]
    e_levels = [traffic[j] * T.e_byte[j] for j in range(L)]
    e_static = T.idle * time
    zeros = np.zeros(np.shape(mx))
    out = {
        "time_s": time, "bound_code": bound, "energy_j": e_vector + sum(e_levels) + e_static, "ops": ops,
        "t_tensor": zeros, "t_vector": t_vector, "t_overhead": overhead, "e_tensor": zeros, "e_vector": e_vector,
        "e_static": e_static, "weight_bytes": Wb, "act_bytes": (reads + writes) * a_item, "resident": resident,
        "compute_dtype": c, "vector_dtype": vdt,
    }
    for j in range(L):
        out[f"bytes_{j}"] = traffic[j]
        out[f"t_mem_{j}"] = t_mem[j]
        out[f"e_mem_{j}"] = e_levels[j]
    return out


# ----------------------------------------------------------------------------------------------------------
# argument preparation for the vector path
# ----------------------------------------------------------------------------------------------------------
def _distinct(arr: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct strings of ``arr`` and the index of each element's string: a few O(N) comparison passes when
    there are few distinct values (sweeps), ``np.unique`` (a sort) otherwise."""
    flat = arr.reshape(-1)
    inv = np.empty(flat.shape, dtype=np.int64)
    vals: list[str] = []
    rest = np.arange(flat.size)
    sub = flat
    while rest.size:
        if len(vals) >= 16:
            u, i = np.unique(sub.astype(str), return_inverse=True)
            inv[rest] = i.reshape(-1) + len(vals)
            vals += [str(x) for x in u]
            break
        v = sub[0]
        hit = sub == v
        inv[rest[hit]] = len(vals)
        vals.append(str(v))
        keep = ~hit
        rest = rest[keep]
        sub = sub[keep]
    return vals, inv.reshape(arr.shape)


def _lazy_names(value, table: dict, name: str, valid: str):
    arr = np.asarray(value)
    if arr.dtype.kind in "UO" and arr.size > _CHUNK:
        return arr  # mapped per chunk by _check_chunk
    return _codes(arr, table, name, valid)


def _codes(value, table: dict, name: str, valid: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(table)):
            raise ValueError(f"{name}: integer codes must lie in [0, {len(table) - 1}] ({valid})")
        return arr.astype(np.int64)
    if arr.dtype.kind in "UO":
        if arr.ndim == 0:
            key = str(arr.item())
            if key not in table:
                raise ValueError(f"{name}: unknown {key!r}; valid: {valid}")
            return np.asarray(table[key], dtype=np.int64)
        uniq, inv = _distinct(arr)
        bad = [u for u in uniq if u not in table]
        if bad:
            raise ValueError(f"{name}: unknown {bad[0]!r}; valid: {valid}")
        return np.array([table[u] for u in uniq], dtype=np.int64)[inv]
    raise TypeError(f"{name}: expected names (str) or integer codes, got dtype {arr.dtype}")


def _num(value, name: str, *, integer: bool = False, minimum: float = 0.0) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size:
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected finite values")
        if arr.min() < minimum:
            raise ValueError(f"{name}: expected values >= {minimum:g}, got {arr.min():g}")
        if integer and (arr != np.floor(arr)).any():
            raise ValueError(f"{name}: expected integer values")
    return arr


def _format_arrays(fmt, block_r, block_c, nm_n, nm_m):
    """Format codes plus block / N:M arrays; format names like 'bsr:16x16' and 'nm:2:4' are parsed."""
    arr = np.asarray(fmt)
    if arr.dtype.kind in "UO":
        uniq, inv = _distinct(arr)
        parsed = []
        for u in uniq:
            if u in _F:
                parsed.append((_F[u], 0, 0, 0, 0))
                continue
            cfg = Compression.parse(format=u)
            br, bc = cfg.block or (0, 0)
            parsed.append((_F[cfg.format], br, bc, cfg.n or 0, cfg.m or 0))
        tab = np.array(parsed, dtype=np.float64)
        code = tab[:, 0].astype(np.int64)[inv]
        spec = [tab[:, i][inv] if len(set(tab[:, i])) > 1 else np.asarray(tab[0, i]) for i in range(1, 5)]
    else:
        code = _codes(arr, _F, "format", ", ".join(FORMATS))
        spec = [np.zeros(())] * 4
    given = [block_r, block_c, nm_n, nm_m]
    names = ["block_r", "block_c", "nm_n", "nm_m"]
    outs = []
    for s, gv, nm in zip(spec, given, names):
        outs.append(s if gv is None else _num(gv, nm, integer=True))
    return code, outs


def _prepare(dev, T, m, n, k, count, weights, acts, group_size, scale_dtype, zero_points, format, sparsity,
             block_r, block_c, nm_n, nm_m, weight_operand, warm):
    m = _num(m, "m", integer=True)
    n = _num(n, "n", integer=True)
    k = _num(k, "k", integer=True)
    count = _num(count, "count", integer=True)
    # name arrays larger than a chunk are mapped to codes inside the (parallel) chunk workers
    w = _lazy_names(weights, _D, "weights", ", ".join(DTYPES))
    a = np.int64(-1) if acts is None else _lazy_names(acts, _D, "acts", ", ".join(DTYPES))
    g = _num(0 if group_size is None else group_size, "group_size", integer=True)
    sd = _codes(scale_dtype, _D, "scale_dtype", "fp32, fp16, bf16")
    sbytes = _ITEM[sd]
    zp = _num(zero_points, "zero_points")
    farr = np.asarray(format)
    if farr.dtype.kind in "UO" and farr.size > _CHUNK:
        f = farr
        br, bc, nmn, nmm = (np.float64(0) if v is None else _num(v, nm, integer=True)
                            for v, nm in ((block_r, "block_r"), (block_c, "block_c"), (nm_n, "nm_n"), (nm_m, "nm_m")))
    else:
        f, (br, bc, nmn, nmm) = _format_arrays(format, block_r, block_c, nm_n, nm_m)
    sp = _num(sparsity, "sparsity")
    if sp.size and sp.max() >= 1.0:
        raise ValueError(f"sparsity: expected values in [0, 1), got {sp.max():g}")
    wop = np.asarray(weight_operand, dtype=bool)
    wm = np.asarray(warm, dtype=bool)
    p = dict(m=m, n=n, k=k, count=count, w=w, a=a, fmt=f, sp=sp, group=g, sbytes=sbytes, zp=zp, br=br, bc=bc,
             nmn=nmn, nmm=nmm, wop=wop, warm=wm)
    np.broadcast_shapes(*(np.shape(v) for v in p.values()))  # a clear error for incompatible shapes
    return p


def _check_chunk(m, n, k, count, w, a, fmt, sp, group, sbytes, zp, br, bc, nmn, nmm, wop, warm):
    """Per-chunk name mapping and consistency checks (the ones ``Compression`` and ``check_shape`` make on
    scalars); returns the arguments with codes and the N:M sparsity filled in."""
    if np.asarray(w).dtype.kind in "UO":
        w = _codes(w, _D, "weights", ", ".join(DTYPES))
    if np.asarray(a).dtype.kind in "UO":
        a = _codes(a, _D, "acts", ", ".join(DTYPES))
    elif np.ndim(a) == 0 and a < 0:  # acts=None: weight-only quantization, as Compression.parse does
        a = np.where(_IS_INT[w] | (w == _D["fp8"]), _D["fp16"], w)
    if np.asarray(fmt).dtype.kind in "UO":
        fmt, (br2, bc2, nmn2, nmm2) = _format_arrays(fmt, None, None, None, None)
        br, bc, nmn, nmm = (x if np.ndim(x) or x else y for x, y in ((br, br2), (bc, bc2), (nmn, nmn2), (nmm, nmm2)))
    def indivisible(x, d):
        d = np.maximum(d, 1.0)
        return x != np.floor(x / d) * d

    def pick(v, mask):
        i = int(np.flatnonzero(mask)[0])
        return int(np.broadcast_to(v, np.shape(mask)).flat[i])

    is_bsr = fmt == _F["bsr"]
    if is_bsr.any():
        if (is_bsr & ((br < 1) | (bc < 1))).any():
            raise ValueError("block_r, block_c: format bsr needs a block shape (e.g. format='bsr:16x16')")
        bad = wop & is_bsr & (indivisible(n, br) | indivisible(k, bc))
        if bad.any():
            raise ValueError(f"block: {pick(br, bad)}x{pick(bc, bad)} does not divide the "
                             f"{pick(n, bad)}x{pick(k, bad)} weight (out x in)")
    is_nm = fmt == _F["nm"]
    if is_nm.any():
        if (is_nm & ((nmn < 1) | (nmm <= nmn))).any():
            raise ValueError("nm_n, nm_m: format nm needs 1 <= n < m (e.g. format='nm:2:4')")
        if (wop & is_nm & indivisible(k, nmm)).any():
            raise ValueError("m: nm:N:M needs in-features (k) divisible by M")
        sp = np.where(is_nm, 1.0 - nmn / np.maximum(nmm, 1.0), sp)
    has_g = group > 0
    if has_g.any():
        bad = wop & has_g & indivisible(k, group)
        if bad.any():
            raise ValueError(f"group_size: {pick(group, bad)} does not divide K = {pick(k, bad)}")
    if ((fmt == _F["dense"]) & (sp > 0)).any():
        raise ValueError("sparsity: the dense format has no sparsity; use csr, bsr or channel")
    return dict(m=m, n=n, k=k, count=count, w=w, a=a, fmt=fmt, sp=sp, group=group, sbytes=sbytes, zp=zp, br=br,
                bc=bc, nmn=nmn, nmm=nmm, wop=wop, warm=warm)


def _checked_gemm_core(T, **p):
    return _gemm_core(T, **_check_chunk(**p))


def _checked_gemm_time(T, **p):
    return _gemm_core(T, **_check_chunk(**p), time_only=True)


_CHUNK = 1 << 14  # 128 KiB float64 temporaries: cache-sized, few Python calls per config (measured best)
_POOL = None


def _threads() -> int:
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _run_core(core_fn, T, p: dict, keys=None) -> dict:
    """Run ``core_fn`` over the broadcast arrays of ``p`` in cache-sized chunks, on a few threads (NumPy
    releases the GIL), and return full-shape output arrays (only ``keys`` when given)."""
    global _POOL
    shape = np.broadcast_shapes(*(np.shape(v) for v in p.values()))
    total = math.prod(shape)
    flat = {}
    for key, v in p.items():
        v = np.asarray(v)
        if v.size and (v.ndim == 0 or all(st == 0 for st in v.strides)):
            flat[key] = v.reshape(-1)[0] if v.ndim else v  # a broadcast scalar stays a scalar
        else:
            flat[key] = np.ascontiguousarray(np.broadcast_to(v, shape)).reshape(-1)
    if total <= _CHUNK:
        res = core_fn(T, **flat)
        return {k: np.broadcast_to(v, (total,)).reshape(shape) for k, v in res.items()
                if keys is None or k in keys}
    bounds = [(i, min(i + _CHUNK, total)) for i in range(0, total, _CHUNK)]
    out: dict = {}

    def work(lohi):
        lo, hi = lohi
        res = core_fn(T, **{k: (v[lo:hi] if np.ndim(v) else v) for k, v in flat.items()})
        return lo, hi, res

    def store(lo, hi, res):
        for k, v in res.items():
            if keys is not None and k not in keys:
                continue
            if k not in out:
                out[k] = np.empty(total, dtype=np.asarray(v).dtype)
            out[k][lo:hi] = v

    nthreads = _threads()
    if nthreads > 1:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="memwall-sim")
        for lo, hi, res in _POOL.map(work, bounds):
            store(lo, hi, res)
    else:
        for bnd in bounds:
            store(*work(bnd))
    return {k: v.reshape(shape) for k, v in out.items()}


def _comp_kwargs(comp: Compression) -> dict:
    return dict(weights=comp.weights, acts=comp.acts, group_size=comp.group_size or 0,
                scale_dtype=comp.scale_dtype, zero_points=float(comp.zero_points), format=_F[comp.format],
                sparsity=comp.sparsity, block_r=(comp.block or (0, 0))[0], block_c=(comp.block or (0, 0))[1],
                nm_n=comp.n or 0, nm_m=comp.m or 0)


def _as_comp(value, name: str) -> Compression:
    if isinstance(value, Compression):
        return value
    if isinstance(value, str):
        return Compression.parse(weights=value, acts=value if value not in INT_DTYPES else None)
    if isinstance(value, Mapping):
        return Compression.parse(**value)
    raise TypeError(f"{name}: expected a Compression, a dtype name or a dict of Compression.parse arguments, "
                    f"got {type(value).__name__}")


def estimate_gemm_arrays(device, m, n, k, *, count=1, weights="fp16", acts=None, group_size=None,
                         scale_dtype="fp16", zero_points=False, format="dense", sparsity=0.0, block_r=None,
                         block_c=None, nm_n=None, nm_m=None, weight_operand=True, warm=False, comp=None,
                         baseline=None, detail=False) -> dict:
    """Estimate many GEMM configurations at once (NumPy broadcasting over every argument).

    Parameters
    ----------
    device : str, path or Device
    m, n, k : array-like of non-negative integers
        ``count`` GEMMs of (m x k) activations times a (k x n) operand (the weight, stored n x k).
    count : array-like of int, default 1
    weights, acts : dtype names (str or array of str) or integer codes into ``DTYPES``
        ``acts=None``: fp16 for int/fp8 weights, else the weight dtype (as ``Compression.parse``).
    group_size : array-like of int or None (0 = none)
    scale_dtype : str, zero_points : bool array-like
    format : names (``dense``, ``csr``, ``bsr:RxC``, ``nm:N:M``, ``channel``; str or array of str) or integer
        codes into ``FORMATS`` (then give ``block_r``/``block_c`` or ``nm_n``/``nm_m`` arrays).
    sparsity : array-like in [0, 1) (implied for nm)
    weight_operand, warm : bool array-like
    comp : Compression, optional
        Fills weights/acts/group/scale/zero-points/format/sparsity from one config (overrides those arguments).
    baseline : Compression, dtype name, False or None
        Speedup reference (default :func:`default_baseline`); ``False`` skips it (faster).

    detail : bool
        Also return the per-level and per-unit breakdown (more memory per configuration).

    Returns
    -------
    dict of ndarrays (broadcast shape)
        Always: ``time_s``, ``bound`` (roof names), ``bound_code`` (index into :func:`roof_names`),
        ``energy_j``, ``ops``, ``weight_bytes``, ``dram_bytes``, ``arithmetic_intensity`` (ops per DRAM byte),
        ``speedup`` and ``baseline_time_s`` (unless ``baseline=False``).  With ``detail``: ``t_tensor``,
        ``t_vector``, ``t_overhead``, ``act_bytes``, ``bytes_<level>``, ``time_<level>``,
        ``energy_<level>``, ``energy_tensor``, ``energy_vector``, ``energy_static``, ``compute_dtype``
        (codes into DTYPES), ``use_tensor``.
    """
    dev = load_device(device)
    T = _tables(dev)
    if comp is not None:
        comp = _as_comp(comp, "comp")
        kw = _comp_kwargs(comp)
        weights, acts, group_size, scale_dtype, zero_points = (kw["weights"], kw["acts"], kw["group_size"],
                                                               kw["scale_dtype"], kw["zero_points"])
        format, sparsity, block_r, block_c, nm_n, nm_m = (kw["format"], kw["sparsity"], kw["block_r"],
                                                          kw["block_c"], kw["nm_n"], kw["nm_m"])
    p = _prepare(dev, T, m, n, k, count, weights, acts, group_size, scale_dtype, zero_points, format, sparsity,
                 block_r, block_c, nm_n, nm_m, weight_operand, warm)
    keys = None if detail else _COMPACT_KEYS + (f"bytes_{T.nlev - 1}",)
    core = _run_core(_checked_gemm_core, T, p, keys)
    out = _public(dev, T, core, detail)
    if baseline is not False:
        base = _as_comp(default_baseline(dev) if baseline is None else baseline, "baseline")
        pb = dict(p)
        bk = _comp_kwargs(base)
        pb.update(w=np.int64(_D[bk["weights"]]), a=np.int64(_D[bk["acts"]]), fmt=np.int64(bk["format"]),
                  sp=np.float64(bk["sparsity"]), group=np.float64(bk["group_size"]),
                  sbytes=np.float64(_ITEM[_D[bk["scale_dtype"]]]), zp=np.float64(bk["zero_points"]),
                  br=np.float64(bk["block_r"]), bc=np.float64(bk["block_c"]), nmn=np.float64(bk["nm_n"]),
                  nmm=np.float64(bk["nm_m"]))
        bt = _run_core(_checked_gemm_time, T, pb, ("time_s",))["time_s"]
        bt = np.broadcast_to(bt, out["time_s"].shape)
        out["baseline_time_s"] = np.array(bt)
        out["speedup"] = bt / out["time_s"]
    return out


_COMPACT_KEYS = ("time_s", "bound_code", "energy_j", "ops", "weight_bytes")


def _public(dev, T, core, detail: bool = True) -> dict:
    L = T.nlev
    names = np.array(T.names)
    out = {
        "time_s": core["time_s"], "bound": names[core["bound_code"]], "bound_code": core["bound_code"],
        "energy_j": core["energy_j"], "ops": core["ops"], "weight_bytes": core["weight_bytes"],
        "dram_bytes": core[f"bytes_{L - 1}"],
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        out["arithmetic_intensity"] = np.where(out["dram_bytes"] > 0, core["ops"] / out["dram_bytes"], np.inf)
    if detail:
        out.update({
            "t_tensor": core["t_tensor"], "t_vector": core["t_vector"], "t_overhead": core["t_overhead"],
            "act_bytes": core["act_bytes"], "compute_dtype": core["compute_dtype"],
            "use_tensor": core.get("use_tensor"), "energy_tensor": core["e_tensor"],
            "energy_vector": core["e_vector"], "energy_static": core["e_static"],
        })
        for j, lv in enumerate(dev.memory_levels):
            out[f"bytes_{lv.name}"] = core[f"bytes_{j}"]
            out[f"time_{lv.name}"] = core[f"t_mem_{j}"]
            out[f"energy_{lv.name}"] = core[f"e_mem_{j}"]
    return out


# ----------------------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """An explained estimate of one op under one compression config on one device.

    ``bytes_by_level`` and ``time_by_roof`` are keyed by memory level names (small -> large) plus ``tensor``,
    ``vector`` and ``launch`` for the roofs; ``energy_by_component`` by ``tensor``, ``vector``, level names
    and ``static``.  SI units: s, J, bytes, ops (1 FMA = 2 ops).
    """

    name: str
    ops: float
    bytes_by_level: Mapping[str, float]
    time_by_roof: Mapping[str, float]
    time_s: float
    bound: str
    energy_j: float
    energy_by_component: Mapping[str, float]
    speedup: float
    notes: tuple[str, ...]
    device: str = ""
    compression: str = ""
    compute_dtype: str = ""
    unit: str = ""
    weight_bytes: float = 0.0
    weight_bytes_breakdown: Mapping[str, int] = field(default_factory=dict)
    baseline_time_s: float = float("nan")
    arithmetic_intensity: float = float("nan")

    @property
    def dram_bytes(self) -> float:
        return list(self.bytes_by_level.values())[-1] if self.bytes_by_level else 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict (plain floats and strings)."""
        return {
            "name": self.name, "device": self.device, "compression": self.compression, "ops": float(self.ops),
            "bytes_by_level": {k: float(v) for k, v in self.bytes_by_level.items()},
            "time_by_roof": {k: float(v) for k, v in self.time_by_roof.items()},
            "time_s": float(self.time_s), "bound": self.bound, "energy_j": float(self.energy_j),
            "energy_by_component": {k: float(v) for k, v in self.energy_by_component.items()},
            "speedup": float(self.speedup), "baseline_time_s": float(self.baseline_time_s),
            "compute_dtype": self.compute_dtype, "unit": self.unit, "weight_bytes": float(self.weight_bytes),
            "weight_bytes_breakdown": {k: int(v) for k, v in self.weight_bytes_breakdown.items()},
            "arithmetic_intensity": float(self.arithmetic_intensity), "notes": list(self.notes),
        }


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _notes(dev: Device, T: _Tables, op, comp: Compression, row: dict, base_time: float) -> tuple[str, ...]:
    notes = []
    L = T.nlev
    bound = row["bound"]
    c = DTYPES[int(row["compute_dtype"])]
    is_gemm = isinstance(op, GemmOp)
    mem_bound = bound in T.names[:L]
    if is_gemm and op.weight_operand:
        wanted = comp.weights if comp.weights == comp.acts else None
        if wanted and wanted != c:
            notes.append(f"{wanted} is not native on {dev.id}: computed in {c} after conversion")
        if comp.format == "nm":
            if row["nm_sparse"] and T.f_nm_soft > 0:
                notes.append(f"{comp.format_spec} runs as a software sparse kernel on vector units at "
                             f"{T.f_nm_soft:.0%} of the vector peak (kept multiply-adds only)"
                             + (f", plus {T.nm_kept * 1e9:.3g} ns per kept weight" if T.nm_kept > 0 else ""))
            elif row["nm_sparse"]:
                if mem_bound:
                    notes.append(f"{comp.format_spec} gives no compute speedup here: memory-bound at batch "
                                 f"{op.m} ({bound}); only the smaller weight bytes help")
            elif not dev.has_dtype(c, sparse=True):
                notes.append(f"{dev.id} has no 2:4 sparse {c} units: {comp.format_spec} runs dense after "
                             "decompression (only the bytes shrink)")
            else:
                notes.append(f"{comp.format_spec} does not map onto 2:4 sparse tensor cores: runs dense after "
                             "decompression")
        if comp.format == "csr":
            item = 0.5 if comp.weights == "int4" else ITEMSIZE[comp.weights]
            idx = 4.0 if max(op.n * op.k, op.k) < 2**31 else 8.0
            base_dtype = _default_dtype(dev)
            dense_item = ITEMSIZE[base_dtype]
            even = 1.0 - dense_item / (item + idx)
            if comp.sparsity < even:
                notes.append(f"csr at {comp.sparsity:.0%} sparsity stores more weight bytes than dense "
                             f"{base_dtype} (break-even {even:.1%}: {item:g} B value + {idx:g} B index per kept "
                             "weight)")
            notes.append(f"unstructured CSR runs on vector units at {T.f_csr:.0%} of the vector peak"
                         + (f", plus {T.csr_nz * 1e9:.3g} ns per stored nonzero" if T.csr_nz > 0 else "")
                         + (" (tensor cores cannot run CSR)" if "tensor" in dev.units else ""))
        if comp.format == "bsr" and not row["use_tensor"] and "tensor" in dev.units:
            r, cc = comp.block
            notes.append(f"bsr {r}x{cc} blocks are below the {int(T.g_min)}x{int(T.g_min)} tensor-core "
                         "minimum: vector units")
        if row["dequant_ops"] > 0:
            main = row["t_tensor"] if row["use_tensor"] else row["t_vector"] - row["t_extra"]
            notes.append(f"{comp.weights} weights are converted to {c} on vector units "
                         f"({int(row['reuse_w'])} re-read(s) of each weight tile): {row['t_extra']:.3g} s of "
                         f"conversion work added to the {main:.3g} s product")
    if float(row.get("t_pack", 0.0)) > 0:
        notes.append(f"the BLAS packs the {_fmt_bytes(row['weight_bytes'])} of weights into its panel layout before "
                     f"the product: {float(row['t_pack']):.3g} s, not overlapped (blas_pack_bandwidth_fraction "
                     f"{T.f_pack:.2g} of the bandwidth of the level they come from)")
    if comp.acts in ("int8", "int4", "fp8"):
        notes.append(f"quantizing activations to {comp.acts} costs a pass: "
                     f"{_fmt_bytes(row['quant_pass_bytes'])} and one more kernel launch")
    if (comp.acts != c and is_gemm and comp.acts not in INT_DTYPES and c != comp.weights
            and comp.weights != comp.acts):
        notes.append(f"{comp.acts} activations are computed in {c} on {dev.id}")
    if row["_warm"]:
        if row["resident"]:
            notes.append(f"weights ({_fmt_bytes(row['weight_bytes'])}) resident in {dev.llc.name} (warm)")
        elif row["weight_bytes"] > 0:
            notes.append(f"warm requested, but the weights ({_fmt_bytes(row['weight_bytes'])}) exceed "
                         f"{dev.llc.name} ({_fmt_bytes(dev.llc.total_capacity_bytes)}): read from "
                         f"{dev.dram.name}")
    if bound == "launch":
        notes.append("launch overhead dominates: batch more work per kernel")
    elif mem_bound:
        notes.append(f"memory-bound on {bound}: {row['arithmetic_intensity']:.3g} ops/byte vs ridge "
                     f"{dev.ridge_point(c):.3g} ({c})" if dev.has_dtype(c) else f"memory-bound on {bound}")
    else:
        notes.append(f"compute-bound on {bound} units ({c})")
    if row["weight_bytes"] > dev.dram_capacity:
        notes.append(f"weights ({_fmt_bytes(row['weight_bytes'])}) exceed {dev.dram.name} capacity "
                     f"({_fmt_bytes(dev.dram_capacity)})")
    if base_time == base_time and row["time_s"] > base_time * 1.0001:
        notes.append(f"slower than the baseline ({base_time:.3g} s vs {row['time_s']:.3g} s)")
    return tuple(notes)


def _gemm_batch(dev, T, gemms, comp: Compression, warm: bool):
    """The core on a list of validated GemmOps under one validated Compression (no re-validation)."""
    for g in gemms:
        if g.weight_operand:
            check_shape(g.n, g.k, comp)
    if len(gemms) == 1:  # NumPy scalars: the same formulas, without per-call array overhead
        g = gemms[0]
        m, n, k, cnt = (np.float64(g.m), np.float64(g.n), np.float64(g.k), np.float64(g.count))
        wop = np.bool_(g.weight_operand)
    else:
        m = np.array([g.m for g in gemms], dtype=np.float64)
        n = np.array([g.n for g in gemms], dtype=np.float64)
        k = np.array([g.k for g in gemms], dtype=np.float64)
        cnt = np.array([g.count for g in gemms], dtype=np.float64)
        wop = np.array([g.weight_operand for g in gemms], dtype=bool)
    sp = 1.0 - comp.n / comp.m if comp.format == "nm" else comp.sparsity
    br, bc = comp.block or (0, 0)
    return _gemm_core(T, m=m, n=n, k=k, count=cnt, w=np.int64(_D[comp.weights]), a=np.int64(_D[comp.acts]),
                      fmt=np.int64(_F[comp.format]), sp=np.float64(sp), group=np.float64(comp.group_size or 0),
                      sbytes=np.float64(ITEMSIZE[comp.scale_dtype]), zp=np.float64(comp.zero_points),
                      br=np.float64(br), bc=np.float64(bc), nmn=np.float64(comp.n or 0),
                      nmm=np.float64(comp.m or 0), wop=wop, warm=np.bool_(warm))


def _memory_batch(dev, T, mops, comp: Compression, warm: bool):
    r = np.array([o.elements_read for o in mops], dtype=np.float64)
    wr = np.array([o.elements_written for o in mops], dtype=np.float64)
    pe = np.array([o.ops_per_element for o in mops], dtype=np.float64)
    we = np.array([o.weight_elements for o in mops], dtype=np.float64)
    shape = r.shape
    w = np.full(shape, _D[comp.weights])
    a = np.full(shape, _D[comp.acts])
    return _memory_core(T, r, wr, pe, we, w, a, np.full(shape, bool(warm)))


def estimate_ops(device, ops: Sequence, comp=None, *, warm: bool = False, baseline=None) -> list[Estimate]:
    """Estimate a list of ops (one batched pass per config); returns one :class:`Estimate` per op.

    ``comp`` is one :class:`Compression` for every op, or a dict ``op name -> Compression`` (ops not in it get
    the baseline config), or None (the baseline).  ``baseline``: Compression, dtype name, or None for
    :func:`default_baseline`.
    """
    dev = load_device(device)
    T = _tables(dev)
    base = _as_comp(default_baseline(dev) if baseline is None else baseline, "baseline")
    ops = list(ops)
    for i, op in enumerate(ops):
        if not isinstance(op, (GemmOp, MemoryOp)):
            raise TypeError(f"ops[{i}]: expected a GemmOp or MemoryOp, got {type(op).__name__}")
    if comp is None:
        comps = [base] * len(ops)
    elif isinstance(comp, Mapping):
        comps = [_as_comp(comp[op.name], f"comp[{op.name!r}]") if op.name in comp else base for op in ops]
    else:
        c1 = _as_comp(comp, "comp")
        comps = [c1] * len(ops)
    results: list[Estimate | None] = [None] * len(ops)
    # group ops by (config, kind) so each group is one vector pass
    groups: dict[tuple, list[int]] = {}
    for i, (op, c) in enumerate(zip(ops, comps)):
        groups.setdefault((c, isinstance(op, GemmOp)), []).append(i)
    for (c, is_gemm), idx in groups.items():
        sel = [ops[i] for i in idx]
        if is_gemm:
            core = _gemm_batch(dev, T, sel, c, warm)
            bcore = core if c == base else _gemm_batch(dev, T, sel, base, warm)
        else:
            core = _memory_batch(dev, T, sel, c, warm)
            bcore = core if c == base else _memory_batch(dev, T, sel, base, warm)
        pub = _public(dev, T, core)
        for jj, i in enumerate(idx):
            results[i] = _record(dev, T, ops[i], c, core, pub, jj, float(_at(bcore["time_s"], jj)), warm)
    return results


def _at(val, j):
    """Element ``j`` of a per-op output, or the value itself when the batch held one op (scalars)."""
    return val[j] if np.ndim(val) else val


def _record(dev, T, op, comp, core, pub, j, base_time, warm) -> Estimate:
    L = T.nlev
    row = {key: _at(val, j) for key, val in core.items()}
    row["bound"] = str(_at(pub["bound"], j))
    row["arithmetic_intensity"] = float(_at(pub["arithmetic_intensity"], j))
    row["_warm"] = warm
    row.setdefault("nm_sparse", False)
    row.setdefault("dequant_ops", 0.0)
    row.setdefault("quant_pass_bytes", 0.0)
    row.setdefault("t_pack", 0.0)
    levels = [lv.name for lv in dev.memory_levels]
    bytes_by_level = {levels[i]: float(row[f"bytes_{i}"]) for i in range(L)}
    time_by_roof = {levels[i]: float(row[f"t_mem_{i}"]) for i in range(L)}
    time_by_roof.update(tensor=float(row["t_tensor"]), vector=float(row["t_vector"]),
                        launch=float(row["t_overhead"]))
    energy = {"tensor": float(row["e_tensor"]), "vector": float(row["e_vector"])}
    energy.update({levels[i]: float(row[f"e_mem_{i}"]) for i in range(L)})
    energy["static"] = float(row["e_static"])
    if isinstance(op, GemmOp) and op.weight_operand:
        breakdown = {key: v * op.count for key, v in weight_bytes(op.n, op.k, comp).items()}
    else:
        breakdown = {}
    c = DTYPES[int(row["compute_dtype"])]
    unit = "tensor" if bool(row.get("use_tensor", False)) else "vector"
    time_s = float(row["time_s"])
    return Estimate(
        name=op.name, ops=float(row["ops"]), bytes_by_level=bytes_by_level, time_by_roof=time_by_roof,
        time_s=time_s, bound=row["bound"], energy_j=float(row["energy_j"]), energy_by_component=energy,
        speedup=base_time / time_s, notes=_notes(dev, T, op, comp, row, base_time), device=dev.id,
        compression=comp.label, compute_dtype=c, unit=unit, weight_bytes=float(row["weight_bytes"]),
        weight_bytes_breakdown=breakdown, baseline_time_s=base_time,
        arithmetic_intensity=row["arithmetic_intensity"],
    )


def estimate(device, op, comp=None, *, warm: bool = False, baseline=None) -> Estimate:
    """Estimate one op (:class:`~memwall.simulator.ops.GemmOp` or :class:`~memwall.simulator.ops.MemoryOp`)
    under ``comp`` on ``device``.

    Parameters
    ----------
    device : str, path or Device
        A device id, ``host``, a TOML path, or a loaded :class:`~memwall.simulator.devices.Device`.
    op : GemmOp or MemoryOp
    comp : Compression, dtype name, dict of ``Compression.parse`` arguments, or None (the baseline)
    warm : bool
        Weights that fit the last cache level are read from it instead of DRAM.
    baseline : Compression or dtype name, optional
        The reference for ``speedup`` (default :func:`default_baseline`).

    Returns
    -------
    Estimate

    Raises
    ------
    ValueError
        Impossible configurations: activation dtypes the device cannot compute, block shapes / N:M / group
        sizes that do not divide the weight.
    """
    if not isinstance(op, (GemmOp, MemoryOp)):
        raise TypeError(f"op: expected a GemmOp or MemoryOp, got {type(op).__name__}")
    dev = load_device(device)
    comp = default_baseline(dev) if comp is None else _as_comp(comp, "comp")
    base = default_baseline(dev) if baseline is None else _as_comp(baseline, "baseline")
    key = (id(dev), op, comp, bool(warm), base)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is dev:
        return hit[1]
    est = estimate_ops(dev, [op], comp, warm=warm, baseline=base)[0]
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()
    _MEMO[key] = (dev, est)
    return est


#: Memo of recent scalar estimates (records are immutable; a model repeats a few shapes many times).
_MEMO: dict = {}
_MEMO_SIZE = 8192

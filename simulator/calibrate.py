"""Measure this machine with memwall's own kernels and write a host device profile.

``calibrate()`` (``memwall calibrate``) measures

* read bandwidth at working sets sized for each cache level (detected from the OS) and DRAM, plus the
  STREAM triad, with all threads (and single-thread DRAM bandwidth, kept as a comment);
* peak FP64 through BLAS; peak FP32 through BLAS together with the BLAS packing pass
  (-> ``blas_pack_bandwidth_fraction``), solved from two products: the square GEMM and 64 tokens through a
  large weight (the sparse-benchmark shape), where the pass over the weights shows;
* INT8 through our W8A8 path as ``quantized_linear`` runs it (VNNI GEMM with its dequantizing epilogue),
  less its per-token activation quantization pass, which is measured on its own
  (-> ``quantize_vector_fraction``);
* the bandwidth our INT4 GEMV reaches with weights cold in DRAM (-> ``dram_bandwidth_fraction``);
* the efficiency of our sparse kernels, as useful ops over the FP32 GEMM peak: CSR
  (-> ``csr_vector_fraction``), BSR 16x16 (-> ``bsr_matrix_fraction``: on a CPU, the software block kernel)
  and 2:4 (-> ``nm_sparse_fraction``: the software N:M kernel, kept multiply-adds only);
* the fixed cost of one kernel call through its Python wrapper (-> ``kernel_launch_us``),

and writes them in the schema of the shipped profiles (``devices/host-template.toml``), each number's source
saying "measured by memwall calibrate on <cpu>, <date>, <threads> threads, numba/numpy versions", through
``devices.save_profile``: validated, then written atomically, so an interrupted calibration leaves the old
profile intact.

How it times: every measurement is built first, then interleaved rounds visit each once (a warm-up call, then
calls until a minimum time passes) until the wall budget is spent, and each keeps the *minimum* over rounds
(:func:`memwall.simulator.validate.interleaved_times`) -- the statistic ``memwall validate`` uses for the
cases it compares with the model.  Interference on a shared machine only adds time; the rounds spread each
measurement over the whole calibration so a slow phase hits all of them alike.  ``memwall validate
--calibrate`` goes one step further: it times these measurements (:func:`_build`) in the same rounds as its
sweep, so calibration and validation see one machine state (the VM's speed drifts 1.2-2x over minutes).

The shapes measured here are listed in :data:`CALIBRATION_POINTS`; ``memwall validate`` measures different
ones, so the published error is not the error of a fit on its own data.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["calibrate", "detect_caches", "profile_doc", "CALIBRATION_POINTS"]

#: What calibration measures (validation avoids these shapes and sparsities).
CALIBRATION_POINTS = {
    "sgemm": (2048, 2048, 2048),
    "dgemm": (1536, 1536, 1536),
    "int8_gemm": (2048, 2048, 2048),  # raw VNNI GEMM, and W8A8 quantized_linear + its quantization pass
    "blas_pack": {"shape": (4096, 4096), "batch": 64},  # NumPy W @ X: the fp32 BLAS packing pass
    "int4_gemv": (4096, 4096),
    "w4_gemm": {"shape": (4096, 4096), "tokens": 64, "group": 128},  # batched W4A16: its product-bound regime
    "csr": {"shape": (4096, 4096), "batch": 64, "sparsity": 0.9, "batch2": 16},  # two batches: per nnz / per MAC
    "bsr16": {"shape": (4096, 4096), "batch": 64, "sparsity": 0.75},
    "nm24": {"shape": (4096, 4096), "batch": 64, "batch2": 16},
}
_QUICK_SCALE = 2  # quick mode halves each dimension


def detect_caches() -> list[dict]:
    """Data/unified cache levels of CPU 0 from sysfs: name, per-instance bytes, instances (copies)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    levels = []
    for d in sorted(base.glob("index*")):
        try:
            ctype = (d / "type").read_text().strip()
            if ctype == "Instruction":
                continue
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
            shared = (d / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
        nbytes = int(size[:-1] if size[-1] in "KMG" else size) * mult
        sharers = 0
        for part in shared.split(","):
            lo, _, hi = part.partition("-")
            sharers += (int(hi) - int(lo) + 1) if hi else 1
        instances = max(1, math.ceil(ncpu / max(sharers, 1)))
        name = {1: "l1d", 2: "l2", 3: "llc"}.get(level, f"l{level}")
        levels.append({"name": name, "level": level, "bytes": nbytes, "instances": instances})
    if not levels:  # not Linux or no sysfs: a conservative guess, said so in the profile
        levels = [{"name": "l1d", "level": 1, "bytes": 32 << 10, "instances": ncpu, "guessed": True},
                  {"name": "l2", "level": 2, "bytes": 1 << 20, "instances": ncpu, "guessed": True},
                  {"name": "llc", "level": 3, "bytes": 32 << 20, "instances": 1, "guessed": True}]
    levels.sort(key=lambda l: l["level"])
    if levels[-1]["level"] < 3:  # no shared LLC: the largest level plays that role
        levels[-1]["name"] = "llc"
    return levels


def _dram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 << 30


class _Steps:
    """Progress reporting: ``progress(done, total, what)`` after each measurement."""

    def __init__(self, total: int, progress):
        self.total, self.done, self.progress = total, 0, progress

    def __call__(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)


#: Wall budget (seconds) of the timed rounds of a full / quick calibration; every measurement gets at least
#: ``_MIN_ROUNDS`` samples either way.
_BUDGET_S = {False: 24.0, True: 6.0}
_MIN_ROUNDS = 3
_DRAM_SAMPLES = 6


def _measure(quick: bool, threads: int, progress, scale: int | None = None) -> dict:
    """Build every measurement (:func:`_build`), time them in interleaved rounds, derive the numbers."""
    from .validate import interleaved_times, thread_limits

    with thread_limits(threads):
        plan = _build(quick, threads, scale)
        entries = plan.pop("entries")
        t = interleaved_times(entries, min_time=plan["min_time"], min_rounds=_MIN_ROUNDS,
                              max_rounds=plan["max_rounds"], budget_s=plan["budget_s"], progress=progress)
        del entries  # the operands (cold weight copies, sparse matrices) go now; ``finish`` keeps only sizes
    best = {k: v["min_s"] for k, v in t["times"].items()}
    return plan["finish"](best, {"statistic": t["statistic"], "rounds": t["rounds"], "wall_s": t["wall_s"]})


def _build(quick: bool, threads: int, scale: int | None = None) -> dict:
    """Every calibration measurement, built and ready to time, and how to turn the times into numbers.

    Returns ``{"entries", "finish", "min_time", "max_rounds", "budget_s"}``: ``entries`` maps an id to a
    callable or a :class:`~memwall.simulator.validate.Sampler` for
    :func:`~memwall.simulator.validate.interleaved_times` (time them under ``thread_limits(threads)``; they
    hold the operands, so drop them after timing); ``finish(best, timing)`` takes the minimum seconds per id
    (``best``) and the timing summary (``statistic``, ``rounds``, ``wall_s``) and returns the measurements
    ``m`` that :func:`profile_doc` writes.  ``finish`` holds no operand.  The other keys are the timing
    parameters calibration uses on its own (``memwall validate --calibrate`` times these entries in the
    rounds of its sweep instead)."""
    from ..kernels import membench
    from ..kernels.formats import BSRMatrix, CSRMatrix, NMSparseMatrix
    from ..kernels.gemm import int8_gemm, pack_int8, pack_weights, quantized_linear
    from ..kernels.quant import quantize_rows_int8
    from ..kernels.spmm import spmm
    from .validate import Sampler

    s = scale or (_QUICK_SCALE if quick else 1)
    caches = detect_caches()
    llc_total = max(c["bytes"] * c["instances"] for c in caches)
    rng = np.random.default_rng(0)
    entries: dict = {}
    work: dict = {}  # entry -> bytes (bandwidth) or ops (compute) per timed unit

    # --- bandwidth per level: half of one instance's capacity per thread ---------------------
    def bw_sampler(ws, nthreads):
        # seconds per GB of one read_bandwidth run: the minimum over rounds is the best bandwidth; DRAM
        # working sets are allocated per run, so they sample in the first rounds only
        return Sampler(lambda: 1e9 / membench.read_bandwidth(ws, threads=nthreads, repeats=1),
                       max_samples=_DRAM_SAMPLES if ws > llc_total else None)

    for c in caches:
        per_thread = c["bytes"] // 2 if c["instances"] > 1 else c["bytes"] // (2 * threads)
        entries[f"read_bw_{c['name']}"] = bw_sampler(max(4096, per_thread * threads), threads)
    dram_ws = max(4 * llc_total, 128 << 20)
    entries["read_bw_dram"] = bw_sampler(dram_ws, threads)
    entries["triad_bw_dram"] = Sampler(
        lambda: 1e9 / membench.stream_bandwidth(dram_ws, kind="triad", threads=threads, repeats=1),
        max_samples=_DRAM_SAMPLES)
    entries["read_bw_dram_1thread"] = bw_sampler(dram_ws, 1)

    # --- compute peaks ------------------------------------------------------------------------
    n = CALIBRATION_POINTS["sgemm"][0] // s
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    entries["sgemm"], work["sgemm"] = (lambda: a @ b), (n, n, n)
    n = CALIBRATION_POINTS["dgemm"][0] // s
    a64, b64 = a[:n, :n].astype(np.float64), b[:n, :n].astype(np.float64)
    entries["dgemm"], work["dgemm"] = (lambda: a64 @ b64), (n, n, n)
    n = CALIBRATION_POINTS["int8_gemm"][0] // s
    xq = rng.standard_normal((n, n), dtype=np.float32)
    p8 = pack_weights(rng.standard_normal((n, n), dtype=np.float32), bits=8)
    entries["w8a8"], work["w8a8"] = (lambda: quantized_linear(xq, p8)), (n, n, n)
    entries["quantize_rows"] = lambda: quantize_rows_int8(xq)
    q_elements = xq.size
    ai = rng.integers(-128, 128, (n, n), dtype=np.int8)
    pb = pack_int8(rng.integers(-128, 128, (n, n), dtype=np.int8))
    entries["int8_gemm"], work["int8_gemm"] = (lambda: int8_gemm(ai, pb)), (n, n, n)

    # --- call overhead ------------------------------------------------------------------------
    a1 = np.ones((1, 4), np.int8)
    p1 = pack_int8(np.ones((4, 1), np.int8))
    entries["call_overhead"] = lambda: int8_gemm(a1, p1)

    # --- INT4 GEMV, weights cold in DRAM ------------------------------------------------------
    rows, cols = CALIBRATION_POINTS["int4_gemv"]
    rows //= s
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    packed0 = pack_weights(w, bits=4, group_size=128)
    wbytes = _packed_nbytes(packed0)
    copies = max(2, math.ceil(2 * llc_total / wbytes))
    packs = [packed0] + [copy.deepcopy(packed0) for _ in range(1, copies)]  # same values, separate memory
    del w, packed0
    x = rng.standard_normal((1, cols), dtype=np.float32)
    it = iter(range(10**12))
    entries["int4_gemv"] = lambda: quantized_linear(x, packs[next(it) % copies])
    # the batched weight-only path on the same (cold) weights
    wo_tokens = CALIBRATION_POINTS["w4_gemm"]["tokens"]
    x_wo = rng.standard_normal((wo_tokens, cols), dtype=np.float32)
    it_wo = iter(range(10**12))
    entries["w4_gemm"] = lambda: quantized_linear(x_wo, packs[next(it_wo) % copies])

    # --- sparse kernels -----------------------------------------------------------------------
    sparse = {}  # key -> (stored values, rows, cols, batch): sizes only, the matrices live in ``entries``
    for key, build in (("csr", lambda W, sp: CSRMatrix.from_dense(W, mask=rng.random(W.shape) >= sp)),
                       ("bsr16", lambda W, sp: BSRMatrix.from_dense(
                           W, (16, 16), mask=rng.random((W.shape[0] // 16, W.shape[1] // 16)) >= sp)),
                       ("nm24", lambda W, sp: NMSparseMatrix.from_dense(W, n=2, m=4))):
        pt = CALIBRATION_POINTS[key]
        r, c = pt["shape"][0] // s, pt["shape"][1] // s
        W = rng.standard_normal((r, c), dtype=np.float32)
        X = rng.standard_normal((c, pt["batch"]), dtype=np.float32)
        A = build(W, pt.get("sparsity", 0.5))
        sparse[key] = (int(A.nnz), r, c, pt["batch"])
        entries[key] = (lambda A=A, X=X: spmm(A, X))
        if "batch2" in pt:  # the same matrix at a second batch: cost per stored nonzero vs per multiply-add
            X2 = rng.standard_normal((c, pt["batch2"]), dtype=np.float32)
            entries[key + "_b2"] = (lambda A=A, X2=X2: spmm(A, X2))
    # dense reference on the same sparse-benchmark shape (what sparse must beat; the BLAS packing pass)
    Wd = rng.standard_normal((r, c), dtype=np.float32)
    Xd = X
    entries["dense_spmm_shape"] = lambda: Wd @ Xd
    del W, X, A

    def finish(best: dict, timing: dict) -> dict:
        m: dict = {}
        for key in ("read_bw_" + c["name"] for c in caches):
            m[key] = 1e9 / best[key]
        for key in ("read_bw_dram", "triad_bw_dram", "read_bw_dram_1thread"):
            m[key] = 1e9 / best[key]
        flops = {k: 2.0 * math.prod(v) for k, v in work.items()}
        m["fp64_gemm_ops"] = flops["dgemm"] / best["dgemm"]
        m["int8_gemm_ops_raw"] = flops["int8_gemm"] / best["int8_gemm"]
        m["quantize_elements_per_s"] = q_elements / best["quantize_rows"]
        # W8A8 as quantized_linear runs it: VNNI GEMM with its dequantizing epilogue, less the quantization pass
        m["int8_gemm_ops"] = flops["w8a8"] / max(best["w8a8"] - best["quantize_rows"], 0.5 * best["w8a8"])
        m["call_overhead_s"] = best["call_overhead"]
        m["int4_gemv_bw"] = wbytes / best["int4_gemv"]
        m["int4_gemv_weights_per_s"] = rows * cols / best["int4_gemv"]
        m["w4_gemm_s"], m["w4_gemm_shape"] = best["w4_gemm"], (wo_tokens, rows, cols)
        for key, (nnz, r, c, batch) in sparse.items():
            m[f"{key}_ops"] = 2 * nnz * batch / best[key]  # stored values (whole blocks for BSR)
            m[f"{key}_dense_equiv_ops"] = 2 * r * c * batch / best[key]
        m["fp32_gemm_ops_spmm_shape"] = 2 * r * c * batch / best["dense_spmm_shape"]
        nnz, _, _, b1 = sparse["csr"]
        m.update(_csr_split(nnz, b1, best["csr"], CALIBRATION_POINTS["csr"]["batch2"], best["csr_b2"]))
        nnz, _, _, b1 = sparse["nm24"]
        nm = _csr_split(nnz, b1, best["nm24"], CALIBRATION_POINTS["nm24"]["batch2"], best["nm24_b2"])
        if nm:
            m["nm_kept_s"], m["nm_mac_ops"] = nm["csr_nonzero_s"], nm["csr_mac_ops"]
        m.update(_blas_peak_and_packing(flops["sgemm"], best["sgemm"], work["sgemm"], 2.0 * r * c * batch,
                                        best["dense_spmm_shape"], 4.0 * r * c,
                                        m["read_bw_llc"] if "read_bw_llc" in m
                                        else m["read_bw_" + caches[-1]["name"]], m["read_bw_dram"], llc_total))
        m["caches"] = caches
        m["dram_bytes"] = _dram_bytes()
        m["threads"] = threads
        m["timing"] = dict(timing)
        return m

    return {"entries": entries, "finish": finish, "min_time": 0.01 if s > 1 else 0.02,
            "max_rounds": _MIN_ROUNDS if s > 2 else 40, "budget_s": _BUDGET_S[bool(quick)]}


def _csr_split(nnz: int, b1: int, t1: float, b2: int, t2: float) -> dict:
    """CSR time ``t(b) = nnz * c + 2 nnz b / rate`` from the same matrix at two batches: ``csr_nonzero_s``
    (``c``, per stored nonzero: index load, gather addressing) and ``csr_mac_ops`` (the multiply-add rate).
    Empty when the two points do not give a positive ``c`` and rate (noise): the single-batch rate stands."""
    if b1 == b2:
        return {}
    slope = (t1 - t2) / (b1 - b2)  # seconds per batch column
    if slope <= 0:
        return {}
    c = (t1 - slope * b1) / nnz
    if c <= 0:
        return {}
    return {"csr_nonzero_s": c, "csr_mac_ops": 2.0 * nnz / slope}


def _blas_peak_and_packing(sq_ops: float, t_sq: float, sq_shape, sk_ops: float, t_sk: float, sk_wbytes: float,
                           llc_bw: float, dram_bw: float, llc_bytes: float) -> dict:
    """FP32 BLAS peak and packing rate from two products (the model's dense-float-GEMM-on-a-CPU terms):

    ``t_sq = ops_sq / peak + W_sq / (bw_sq * f)`` (square GEMM; its weights are LLC-resident when they fit)
    ``t_sk = ops_sk / peak + W_sk / (bw_sk * f)`` (64 tokens through a large weight streamed from DRAM)

    solved for ``peak`` and ``f`` (``blas_pack_bandwidth_fraction``) by fixed-point iteration.  When the skinny
    product is no slower than its compute at the peak, no packing pass is measurable: ``f`` is None and the
    peak is the square GEMM's rate."""
    w_sq = 4.0 * sq_shape[1] * sq_shape[2]
    bw_sq = llc_bw if w_sq <= llc_bytes else dram_bw
    bw_sk = llc_bw if sk_wbytes <= llc_bytes else dram_bw
    peak, f = sq_ops / t_sq, None
    for _ in range(20):
        pack_sk = t_sk - sk_ops / peak
        if pack_sk <= 0:
            f = None
            break
        f = min(1.0, sk_wbytes / (bw_sk * pack_sk))
        peak = sq_ops / max(t_sq - w_sq / (bw_sq * f), 0.5 * t_sq)
    return {"fp32_gemm_ops": peak, "blas_pack_fraction": f}


def _packed_nbytes(packed) -> int:
    nb = getattr(packed, "nbytes", None)
    if nb is None:
        raise TypeError("pack_weights(...) result has no nbytes")
    return int(nb)


def profile_doc(m: dict, *, cpu: str, date: str, versions: str) -> tuple[dict, str]:
    """The host profile for the measurements ``m`` (see :func:`_measure`): a dict in the schema of
    :mod:`memwall.simulator.devices` and the comment that heads the file (for ``save_profile``)."""
    threads = m["threads"]
    src = f"measured by memwall calibrate on {cpu}, {date}, {threads} threads, {versions}"
    fp32 = m["fp32_gemm_ops"]
    comment = ("Host device profile written by `memwall calibrate`. Re-run it to refresh; edit with care.\n"
               f"single-thread DRAM read bandwidth: {m['read_bw_dram_1thread'] / 1e9:.3g} GB/s; STREAM triad "
               f"({threads} threads): {m['triad_bw_dram'] / 1e9:.3g} GB/s")
    cache_energy = {1: 1.0, 2: 2.5}
    memory = [{
        "name": c["name"], "capacity_bytes": c["bytes"], "instances": c["instances"],
        "bandwidth_gb_per_s": m["read_bw_" + c["name"]] / 1e9,
        "energy_pj_per_byte": cache_energy.get(c["level"], 6.0),
        "source": f"{src}: read bandwidth at a working set of half the level",
        "source_energy_pj_per_byte": "estimate: Horowitz 45 nm cache access energy per byte (10/20/100 pJ per 64-bit "
                                     "access for 8 KB/32 KB/1 MB) scaled to 14 nm",
    } for c in m["caches"]]
    memory.append({
        "name": "dram", "capacity_bytes": m["dram_bytes"], "bandwidth_gb_per_s": m["read_bw_dram"] / 1e9,
        "energy_pj_per_byte": 120,
        "source": f"{src}: read bandwidth at a working set of 4x the LLC",
        "source_energy_pj_per_byte": "estimate: Horowitz 45 nm DRAM access 1.3-2.6 nJ per 64 bits, halved for a "
                                     "newer DDR4 node",
    })
    doc = {
        "id": "host",
        "name": f"{cpu} ({threads} threads, calibrated)",
        "kind": "cpu",
        "description": f"Measured by memwall calibrate on {date}",
        "process": {"node_nm": 14, "source": "estimate: process node not readable from the OS; 14 nm assumed "
                                             "(Skylake-SP..Cascade Lake class); only scales the per-op energy"},
        "power": {"tdp_w": 10.0 * threads, "idle_w": 3.0 * threads,
                  "source": "estimate: ~10 W per busy core and ~3 W idle per core of a server socket share; RAPL "
                            "is not readable in this VM"},
        "overhead": {"kernel_launch_us": max(m["call_overhead_s"] * 1e6, 0.1),
                     "source": f"{src}: time of a 1x4x1 int8_gemm call through its validated wrapper"},
        "tiling": {"register_tile_elements": 16, "block_tile_elements": 128, "matrix_min_block_elements": 16,
                   "parallel_units": threads,
                   "source": "memwall kernels: 16-lane zmm register tiles, 128-wide cache blocks; one unit per "
                             "thread"},
        "compute": {"vector": {
            "fp64_dense_tops": m["fp64_gemm_ops"] / 1e12, "fp32_dense_tops": fp32 / 1e12,
            "int8_dense_tops": m["int8_gemm_ops"] / 1e12,
            "source": f"{src}: best large GEMM (fp64: NumPy BLAS; fp32: NumPy BLAS, less its packing pass; int8: "
                      "memwall W8A8 quantized_linear -- AVX-512 VNNI GEMM with its dequantizing epilogue -- less its "
                      "activation-quantization pass)"}},
        "memory": memory,
        "efficiency": {
            "vector_gemm_fraction": 1.0,
            "dram_bandwidth_fraction": 1.0,
            "conversion_vector_fraction": _conversion_fraction(m),
            "cache_bandwidth_fraction": 1.0,
            "csr_vector_fraction": min(1.0, m.get("csr_mac_ops", m["csr_ops"]) / fp32),
            "bsr_matrix_fraction": min(1.0, m["bsr16_ops"] / fp32),
            "nm_sparse_fraction": min(1.0, m.get("nm_mac_ops", m["nm24_ops"]) / fp32),
            "source": f"{src}: peaks and bandwidths above are achieved values, so GEMM and cache fractions are 1",
            "source_conversion_vector_fraction": f"{src}: memwall INT4 GEMV (cold): the vector-op rate of its "
                                                 "dequantization (3 ops per weight, as the model counts them) "
                                                 "beside 2 FMA ops per weight, of the fp32 peak",
            "source_csr_vector_fraction": f"{src}: memwall CSR spmm at 90% sparsity, useful ops / fp32 GEMM peak",
            "source_bsr_matrix_fraction": f"{src}: memwall BSR 16x16 spmm at 75% block sparsity, useful ops / fp32 "
                                          "GEMM peak (no matrix unit: the software block kernel on vector units)",
            "source_nm_sparse_fraction": f"{src}: memwall 2:4 spmm, kept multiply-adds / fp32 GEMM peak (software "
                                         "kernel on vector units)",
        },
    }
    eff = doc["efficiency"]
    if m.get("nm_kept_s"):
        doc["overhead"]["nm_kept_ns"] = m["nm_kept_s"] * 1e9
        doc["overhead"]["source_nm_kept_ns"] = (
            f"{src}: memwall 2:4 spmm, the same matrix at batch 64 and 16: time = kept weights x this + kept "
            "multiply-adds at nm_sparse_fraction of the fp32 peak (solved from the two batches)")
        eff["source_nm_sparse_fraction"] = (
            f"{src}: memwall 2:4 spmm, batches 64 and 16: the kept multiply-add rate (the time per batch column) / "
            "fp32 GEMM peak (software kernel on vector units); the per-kept-weight cost is overhead.nm_kept_ns")
    if m.get("csr_nonzero_s"):
        doc["overhead"]["csr_nonzero_ns"] = m["csr_nonzero_s"] * 1e9
        doc["overhead"]["source_csr_nonzero_ns"] = (
            f"{src}: memwall CSR spmm at 90% sparsity, the same matrix at batch 64 and 16: time = nonzeros x this "
            "+ multiply-adds at csr_vector_fraction of the fp32 peak (solved from the two batches)")
        eff["source_csr_vector_fraction"] = (
            f"{src}: memwall CSR spmm at 90% sparsity, batches 64 and 16: the multiply-add rate (the time per batch "
            "column) / fp32 GEMM peak; the per-nonzero cost is overhead.csr_nonzero_ns")
    if m.get("quantize_elements_per_s"):
        eff["quantize_vector_fraction"] = min(1.0, max(1e-4, 4.0 * m["quantize_elements_per_s"] / fp32))
        eff["source_quantize_vector_fraction"] = (
            f"{src}: memwall per-token INT8 activation quantizer (quantize_rows_int8) at the INT8 GEMM shape, "
            "4 vector ops per element (as the model counts them) / fp32 GEMM peak")
    if m.get("w4_gemm_s"):
        eff["weight_only_gemm_fraction"] = _weight_only_fraction(m, eff["conversion_vector_fraction"])
        t, n_ = m["w4_gemm_s"], m["w4_gemm_shape"]
        eff["source_weight_only_gemm_fraction"] = (
            f"{src}: memwall W4A16 quantized_linear, {n_[0]} tokens x {n_[1]}x{n_[2]} g128 INT4 weights (cold): its "
            "time less the dequantization the model charges (3 ops per weight at the conversion fraction) is the "
            "product at this fraction of the fp32 peak")
    if m.get("blas_pack_fraction"):
        eff["blas_pack_bandwidth_fraction"] = min(1.0, max(1e-3, m["blas_pack_fraction"]))
        eff["source_blas_pack_bandwidth_fraction"] = (
            f"{src}: NumPy BLAS W @ X at the sparse-benchmark shape (64 tokens, weights streamed from DRAM): its time "
            "beyond the product at the fp32 peak is one pass over the weights at this fraction of the DRAM read "
            "bandwidth (solved together with the fp32 peak of the square GEMM)")
    return doc, comment


def _weight_only_fraction(m: dict, conv_fraction: float) -> float:
    """Fraction of the fp32 peak at which the batched weight-only product runs, from the W4A16 measurement.

    The model charges ``2 m n k`` product ops at ``fraction x peak`` plus ``3 n k`` dequantization ops at
    ``conv_fraction x peak`` (one re-read of each weight tile for up to 128 tokens) plus the call overhead;
    solve for the fraction (at most 1)."""
    tokens, n, k = m["w4_gemm_shape"]
    peak = m["fp32_gemm_ops"]
    t_deq = 3.0 * n * k * math.ceil(tokens / 128) / (peak * conv_fraction)
    t_prod = m["w4_gemm_s"] - t_deq - m["call_overhead_s"]
    ops = 2.0 * tokens * n * k
    if t_prod <= ops / peak:
        return 1.0
    return max(1e-3, ops / (peak * t_prod))


def _conversion_fraction(m: dict) -> float:
    """Fraction of the fp32 vector peak at which dequantization runs, from the INT4 GEMV measurement.

    The model charges a weight-only INT4 GEMV 2 FMA ops per weight at the vector peak plus 3 conversion ops per
    weight (convert, scale, unpack) at ``conversion_vector_fraction`` of it; solve for that fraction."""
    per_weight = m["fp32_gemm_ops"] / m["int4_gemv_weights_per_s"]  # vector-peak ops that fit in one weight's time
    if per_weight <= 2.0 + 3.0:
        return 1.0
    return max(1e-3, 3.0 / (per_weight - 2.0))


def calibrate(out=None, *, quick: bool = False, threads: int | None = None, progress=None,
              _scale: int | None = None) -> dict:
    """Measure this machine and write the host profile to ``out`` (default: the ``host`` profile path).

    ``quick`` halves every measured dimension; ``_scale`` (tests) divides them by any factor.

    The profile goes through :func:`memwall.simulator.devices.save_profile`: validated before it atomically
    replaces the old one.
    Returns ``{"path", "measured", "profile"}``."""
    import numba

    from ..kernels.cpu import cpu_count, cpu_model
    from .devices import host_profile_path, save_profile

    threads = threads or cpu_count()
    if threads < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {threads}")
    path = Path(out) if out else host_profile_path()
    m = _measure(quick, threads, progress, _scale)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    versions = f"numba {numba.__version__}, numpy {np.__version__}"
    doc, comment = profile_doc(m, cpu=cpu_model(), date=date, versions=versions)
    save_profile(doc, path, comment=comment)  # validated before it atomically replaces the old profile
    measured = {k: v for k, v in m.items() if isinstance(v, (int, float))}
    return {"path": str(path), "measured": measured, "timing": m["timing"],
            "profile": path.read_text(encoding="utf-8")}


def check_host_profile(device) -> str | None:
    """Warn (and return the message) when a ``host`` profile was calibrated on another CPU model."""
    import warnings

    from ..kernels.cpu import cpu_model
    from .devices import load_device

    dev = load_device(device)
    if dev.kind != "cpu" or "calibrated" not in dev.name:
        return None
    here = cpu_model()
    if here and here not in dev.name:
        msg = (f"{dev.path}: this host profile was calibrated on {dev.name!r}, but this machine is {here!r}; "
               "run `memwall calibrate` here before trusting its predictions")
        warnings.warn(msg, stacklevel=2)
        return msg
    return None

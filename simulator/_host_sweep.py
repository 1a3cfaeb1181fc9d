"""The measured half of ``memwall validate``: a sweep of memwall's kernels on this machine.

Every case here differs in shape or sparsity from :data:`memwall.simulator.calibrate.CALIBRATION_POINTS`.
Each case yields the GEMM it computes in the simulator's terms — ``m`` tokens (batch), ``n`` output
features, ``k`` input features — the compression config that describes it, whether its weights stay warm in
the last-level cache, and the measured median time.  Cold cases cycle through enough copies of the weights
to exceed twice the LLC, so every call streams its weights from DRAM.
"""
from __future__ import annotations

import math

import numpy as np

#: (id, family, kind, m=tokens, n=out, k=in, extra) — kinds: fp32 (BLAS), w8a8, w4 (W4A16 on CPU: float acts),
#: csr, bsr, nm.  ``warm``: weights reused from the LLC.
CASES = (
    ("gemv fp32 3072x4096 cold", "gemv", "fp32", 1, 3072, 4096, {"warm": False}),
    ("gemv w4 g64 3072x3072 cold", "gemv", "w4", 1, 3072, 3072, {"group": 64, "warm": False}),
    ("gemv w4 g128 6144x2048 cold", "gemv", "w4", 1, 6144, 2048, {"group": 128, "warm": False}),
    ("gemv w8a8 4096x2048 cold", "gemv", "w8a8", 1, 4096, 2048, {"warm": False}),
    ("gemv w4 g128 2048x2048 warm", "gemv", "w4", 1, 2048, 2048, {"group": 128, "warm": True}),
    ("gemm fp32 768^3", "gemm", "fp32", 768, 768, 768, {"warm": True}),
    ("gemm fp32 1024x3072x1024", "gemm", "fp32", 1024, 3072, 1024, {"warm": True}),
    ("gemm w8a8 512^3", "gemm", "w8a8", 512, 512, 512, {"warm": True}),
    ("gemm w8a8 1536^3", "gemm", "w8a8", 1536, 1536, 1536, {"warm": True}),
    ("gemm w8a8 1000x3000x704", "gemm", "w8a8", 1000, 3000, 704, {"warm": True}),
    ("gemm w8a8 128x4096x4096", "gemm", "w8a8", 128, 4096, 4096, {"warm": False}),
    ("gemm w4 g128 32x4096x4096", "int4", "w4", 32, 4096, 4096, {"group": 128, "warm": False}),
    ("gemm w4 g64 8x3072x3072", "int4", "w4", 8, 3072, 3072, {"group": 64, "warm": False}),
    ("csr 70% 2048x6144 b32", "csr", "csr", 32, 2048, 6144, {"sparsity": 0.7}),
    ("csr 80% 2048x6144 b32", "csr", "csr", 32, 2048, 6144, {"sparsity": 0.8}),
    ("csr 95% 3072x3072 b128", "csr", "csr", 128, 3072, 3072, {"sparsity": 0.95}),
    ("bsr16 50% 3072x3072 b32", "bsr", "bsr", 32, 3072, 3072, {"sparsity": 0.5, "block": 16}),
    ("bsr16 85% 2048x6144 b64", "bsr", "bsr", 64, 2048, 6144, {"sparsity": 0.85, "block": 16}),
    ("bsr32 70% 3072x3072 b32", "bsr", "bsr", 32, 3072, 3072, {"sparsity": 0.7, "block": 32}),
    ("2:4 3072x6144 b32", "nm", "nm", 32, 3072, 6144, {"n": 2, "m": 4}),
    ("2:4 2048x2048 b128", "nm", "nm", 128, 2048, 2048, {"n": 2, "m": 4}),
    ("1:4 3072x3072 b32", "nm", "nm", 32, 3072, 3072, {"n": 1, "m": 4}),
)
_QUICK = {"gemv w4 g64 3072x3072 cold", "gemv fp32 3072x4096 cold", "gemv w8a8 4096x2048 cold",
          "gemm fp32 768^3", "gemm w8a8 512^3", "gemm w8a8 1000x3000x704", "gemm w4 g64 8x3072x3072",
          "csr 80% 2048x6144 b32", "bsr16 50% 3072x3072 b32", "2:4 3072x6144 b32"}

#: Shape of the measured crossover sweep (differs from the calibration shape 4096x4096 x 64).
CROSSOVER_SHAPE = {"m": 32, "n": 3072, "k": 3072}
CROSSOVER_SPARSITIES = (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _comp(kind: str, extra: dict) -> dict:
    if kind == "fp32":
        return {"weights": "fp32", "acts": "fp32"}
    if kind == "w8a8":
        return {"weights": "int8", "acts": "int8"}
    if kind == "w4":
        return {"weights": "int4", "acts": "fp32", "group_size": extra["group"]}
    if kind == "csr":
        return {"weights": "fp32", "acts": "fp32", "format": "csr", "sparsity": extra["sparsity"]}
    if kind == "bsr":
        b = extra["block"]
        return {"weights": "fp32", "acts": "fp32", "format": "bsr", "block": (b, b), "sparsity": extra["sparsity"]}
    if kind == "nm":
        return {"weights": "fp32", "acts": "fp32", "format": "nm", "n": extra["n"], "m": extra["m"]}
    raise ValueError(kind)


def _operands(kind: str, m: int, n: int, k: int, extra: dict, rng, copies: int):
    """Build ``copies`` weight operands and the activation; return (weights list, call(weight) -> result)."""
    from ..kernels.formats import BSRMatrix, CSRMatrix, NMSparseMatrix
    from ..kernels.gemm import pack_weights, quantized_linear
    from ..kernels.spmm import spmm

    W = rng.standard_normal((n, k), dtype=np.float32)
    if kind == "fp32":
        x = rng.standard_normal((m, k), dtype=np.float32)
        ws = [W.T.copy() if i == 0 else (W * (1 + 1e-3 * i)).T.copy() for i in range(copies)]
        if m == 1:
            xv = x[0]
            return ws, (lambda wt: xv @ wt)
        return ws, (lambda wt: x @ wt)
    if kind in ("w8a8", "w4"):
        bits = 8 if kind == "w8a8" else 4
        x = rng.standard_normal((m, k), dtype=np.float32)
        ws = [pack_weights(W * (1 + 1e-3 * i), bits=bits, group_size=extra.get("group")) for i in range(copies)]
        return ws, (lambda p: quantized_linear(x, p))
    X = rng.standard_normal((k, m), dtype=np.float32)
    ws = []
    for i in range(copies):
        if kind == "csr":
            A = CSRMatrix.from_dense(W, mask=rng.random(W.shape) >= extra["sparsity"])
        elif kind == "bsr":
            b = extra["block"]
            A = BSRMatrix.from_dense(W, (b, b), mask=rng.random((n // b, k // b)) >= extra["sparsity"])
        else:
            A = NMSparseMatrix.from_dense(W * (1 + 1e-3 * i), extra["n"], extra["m"])
        ws.append(A)
    return ws, (lambda A: spmm(A, X))


def _nbytes(w) -> int:
    if isinstance(w, np.ndarray):
        return w.nbytes
    return int(w.nbytes)


def sweep(*, quick: bool = False, progress=None, llc_bytes: int = 32 << 20) -> list[dict]:
    """Run the sweep; one dict per case with the simulator's view of it and ``time_s`` (median)."""
    from .validate import median_time

    rng = np.random.default_rng(1)
    cases = [c for c in CASES if not quick or c[0] in _QUICK]
    out = []
    for i, (cid, fam, kind, m, n, k, extra) in enumerate(cases):
        warm = extra.get("warm", False)
        probe, call = _operands(kind, m, n, k, extra, rng, 1)
        copies = 1 if warm else max(2, math.ceil(2 * llc_bytes / max(_nbytes(probe[0]), 1)))
        ws = probe if copies == 1 else _operands(kind, m, n, k, extra, rng, copies)[0]
        counter = [0]

        def run():
            counter[0] += 1
            return call(ws[counter[0] % len(ws)])

        t = median_time(run, repeat=3 if quick else 5, min_time=0.02 if quick else 0.05)
        out.append({"id": cid, "family": fam, "m": m, "n": n, "k": k, "comp": _comp(kind, extra),
                    "warm": bool(warm), "time_s": t})
        del ws, probe
        if progress is not None:
            progress(i + 1, len(cases), cid)
    return out


def measured_crossovers(*, quick: bool = False) -> dict:
    """Measured crossover sparsity vs dense fp32 of CSR, BSR 16x16 and 32x32 on :data:`CROSSOVER_SHAPE`.

    The dense baseline is timed in one block, then every sparse point in its own block: interleaving BLAS and
    Numba calls call by call makes each library's spinning worker threads steal the cores of the other
    (OpenBLAS and OpenMP both spin for a while after a parallel region), which on 2 cores doubles either time.
    """
    from ..kernels.formats import BSRMatrix, CSRMatrix
    from ..kernels.spmm import crossover_point, spmm
    from .validate import median_time

    s = CROSSOVER_SHAPE
    rows, cols, batch = s["n"], s["k"], s["m"]
    rng = np.random.default_rng(2)
    W = rng.standard_normal((rows, cols), dtype=np.float32)
    X = rng.standard_normal((cols, batch), dtype=np.float32)
    rep, mt = (3, 0.02) if quick else (7, 0.05)
    dense = median_time(lambda: W @ X, repeat=rep, min_time=mt)
    summary, points = [], []
    for fmt, name in (("csr", "csr"), ("bsr16", "bsr:16x16"), ("bsr32", "bsr:32x32")):
        speedups = []
        for sp in CROSSOVER_SPARSITIES:
            if fmt == "csr":
                A = CSRMatrix.from_dense(W, mask=rng.random(W.shape) >= sp)
            else:
                b = int(fmt[3:])
                A = BSRMatrix.from_dense(W, (b, b), mask=rng.random((rows // b, cols // b)) >= sp)
            t = median_time(lambda: spmm(A, X), repeat=rep, min_time=mt)
            speedups.append(dense / t)
            points.append({"format": name, "sparsity": sp, "sparse_ms": t * 1e3, "dense_ms": dense * 1e3,
                           "speedup": dense / t})
        summary.append({"format": name, "crossover": crossover_point(CROSSOVER_SPARSITIES, speedups)})
    return {"shape": dict(s), "rows": summary, "points": points}

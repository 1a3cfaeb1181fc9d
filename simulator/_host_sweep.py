"""The measured half of ``memwall validate``: a sweep of memwall's kernels on this machine.

Every case here differs in shape or sparsity from :data:`memwall.simulator.calibrate.CALIBRATION_POINTS`.
Each case yields the GEMM it computes in the simulator's terms — ``m`` tokens (batch), ``n`` output
features, ``k`` input features — the compression config that describes it, whether its weights stay warm in
the last-level cache, and its measured time.  Cold cases cycle through enough copies of the weights to exceed
twice the LLC, so every call streams its weights from DRAM.

How it is timed (:func:`memwall.simulator.validate.interleaved_times`, the statistic calibration uses too):
every operand is built first; then rounds visit every case — the sweep, the crossover points and the anchors
— once each, a warm-up call and then one sample (calls repeated until ``min_time`` passes, the mean per call),
until the wall budget is spent.  A case's time is the *minimum* of its samples: interference from other
tenants of a shared machine only ever adds time, and the rounds spread each case's samples over the whole
sweep, so a slow phase of seconds to minutes hits every case alike instead of a few of them.  The median is
kept beside it (``median_s``) to show the spread.
"""
from __future__ import annotations

import copy
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
_QUICK_CROSSOVER_SPARSITIES = (0.2, 0.5, 0.7, 0.8, 0.9, 0.95)
CROSSOVER_FORMATS = (("csr", "csr"), ("bsr16", "bsr:16x16"), ("bsr32", "bsr:32x32"))

#: Wall budget of the timed rounds (seconds) and the sample length; full / quick.
BUDGET_S = {False: 32.0, True: 8.0}
MIN_TIME_S = 0.01
MIN_ROUNDS = 3
MAX_ROUNDS = 40


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
    raise ValueError(f"kind: unknown case kind {kind!r}")


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


def _copies(w, copies: int) -> list:
    """``w`` and ``copies - 1`` deep copies (same values, separate memory: cycling through them keeps every
    call's weights out of the caches; far cheaper than building each copy from a dense matrix)."""
    return [w] + [copy.deepcopy(w) for _ in range(copies - 1)]


def _rotating(ws: list, call):
    """A no-argument call that cycles through the weight copies ``ws``."""
    counter = [0]

    def run():
        counter[0] += 1
        return call(ws[counter[0] % len(ws)])

    return run


def selected_cases(quick: bool = False) -> list[tuple]:
    return [c for c in CASES if not quick or c[0] in _QUICK]


def build_sweep(*, quick: bool = False, llc_bytes: int = 32 << 20, rng=None) -> list[dict]:
    """Operands of every sweep case: one dict per case with its simulator view and ``call`` (no argument)."""
    rng = np.random.default_rng(1) if rng is None else rng
    out = []
    for cid, fam, kind, m, n, k, extra in selected_cases(quick):
        warm = bool(extra.get("warm", False))
        probe, call = _operands(kind, m, n, k, extra, rng, 1)
        copies = 1 if warm else max(2, math.ceil(2 * llc_bytes / max(_nbytes(probe[0]), 1)))
        ws = _copies(probe[0], copies)
        out.append({"id": cid, "family": fam, "m": m, "n": n, "k": k, "comp": _comp(kind, extra), "warm": warm,
                    "call": _rotating(ws, call)})
    return out


def build_crossover(*, quick: bool = False, rng=None) -> dict:
    """Operands of the crossover sweep on :data:`CROSSOVER_SHAPE`: the dense NumPy (BLAS) product ``W @ X`` and
    every sparse point ``spmm(A, X)`` of the same orientation, batch and threads.  One copy of each operand
    (repeated calls: what fits the LLC stays there; the prediction is made the same way, ``warm=True``)."""
    from ..kernels.formats import BSRMatrix, CSRMatrix
    from ..kernels.spmm import spmm

    rng = np.random.default_rng(2) if rng is None else rng
    s = CROSSOVER_SHAPE
    rows, cols, batch = s["n"], s["k"], s["m"]
    W = rng.standard_normal((rows, cols), dtype=np.float32)
    X = rng.standard_normal((cols, batch), dtype=np.float32)
    sparsities = _QUICK_CROSSOVER_SPARSITIES if quick else CROSSOVER_SPARSITIES
    points = [{"id": "crossover dense fp32", "format": "dense", "sparsity": 0.0, "call": lambda: W @ X}]
    for fmt, name in CROSSOVER_FORMATS:
        for sp in sparsities:
            if fmt == "csr":
                A = CSRMatrix.from_dense(W, mask=rng.random(W.shape) >= sp)
            else:
                b = int(fmt[3:])
                A = BSRMatrix.from_dense(W, (b, b), mask=rng.random((rows // b, cols // b)) >= sp)
            points.append({"id": f"crossover {name} {sp:g}", "format": name, "sparsity": sp,
                           "call": (lambda A=A: spmm(A, X))})
    return {"shape": dict(s), "sparsities": tuple(sparsities), "points": points}


def build_anchors(*, llc_bytes: int = 32 << 20, rng=None) -> list[dict]:
    """Two calibration points re-measured during validation (the noise floor: how far this machine has
    drifted from the moment it was calibrated): the FP32 BLAS GEMM and the INT4 GEMV with cold weights, at
    the full calibration shapes."""
    from ..kernels.gemm import pack_weights, quantized_linear
    from .calibrate import CALIBRATION_POINTS

    rng = np.random.default_rng(3) if rng is None else rng
    n = CALIBRATION_POINTS["sgemm"][0]
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    rows, cols = CALIBRATION_POINTS["int4_gemv"]
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    p0 = pack_weights(w, bits=4, group_size=128)
    packs = _copies(p0, max(2, math.ceil(2 * llc_bytes / max(int(p0.nbytes), 1))))
    x = rng.standard_normal((1, cols), dtype=np.float32)
    return [
        {"id": f"anchor sgemm {n}^3 (calibration point)", "m": n, "n": n, "k": n,
         "comp": {"weights": "fp32", "acts": "fp32"}, "warm": True, "call": lambda: a @ b},
        {"id": f"anchor int4 gemv g128 {rows}x{cols} cold (calibration point)", "m": 1, "n": rows, "k": cols,
         "comp": {"weights": "int4", "acts": "fp32", "group_size": 128}, "warm": False,
         "call": _rotating(packs, lambda p: quantized_linear(x, p))},
    ]


def measure(*, quick: bool = False, progress=None, llc_bytes: int = 32 << 20, threads: int | None = None,
            crossover: bool = True, anchors: bool = True, sweep_cases: bool = True,
            budget_s: float | None = None, extra_entries: dict | None = None, extra_budget_s: float = 0.0,
            max_rounds: int = MAX_ROUNDS) -> dict:
    """Build, then time the sweep, the crossover points and the anchors in interleaved rounds.

    ``extra_entries`` (id -> callable or :class:`~memwall.simulator.validate.Sampler`, ids distinct from the
    cases') are timed in the same rounds (``memwall validate --calibrate``: the calibration measurements, so
    both see the same machine state); the wall budget grows by ``extra_budget_s``.  The caller keeps no
    other reference to them once timed if their operands are to be released.

    Returns ``{"cases": [...], "crossover": {...} or None, "anchors": [...], "extra": {id: timing},
    "timing": {...}}``; every timed entry carries ``time_s`` (the minimum over rounds), ``median_s`` and
    ``samples``; ``extra`` holds the :func:`~memwall.simulator.validate.interleaved_times` dict of each
    extra entry (``min_s``, ``median_s``, ``n``, ``samples``)."""
    from .validate import interleaved_times, thread_limits

    extra = dict(extra_entries or {})
    with thread_limits(threads) as used:
        cases = build_sweep(quick=quick, llc_bytes=llc_bytes) if sweep_cases else []
        cross = build_crossover(quick=quick) if crossover else None
        anch = build_anchors(llc_bytes=llc_bytes) if anchors else []
        entries = cases + (cross["points"] if cross else []) + anch
        timed = {e["id"]: e["call"] for e in entries}
        clash = sorted(set(timed) & set(extra))
        if clash:
            raise ValueError(f"extra_entries: ids {clash} clash with the sweep's")
        timed.update(extra)
        extra_ids = list(extra)
        del extra, extra_entries  # ``timed`` holds the only references here now: dropped after timing
        budget = (BUDGET_S[bool(quick)] if budget_s is None else budget_s) + extra_budget_s
        timing = interleaved_times(timed, min_time=MIN_TIME_S, min_rounds=MIN_ROUNDS,
                                   max_rounds=max(MIN_ROUNDS, max_rounds), budget_s=budget, progress=progress)
        del timed
    for e in entries:
        t = timing["times"][e["id"]]
        e.pop("call")
        e.update(time_s=t["min_s"], median_s=t["median_s"], samples=t["n"])
    if cross:
        cross["rows"] = _crossover_rows(cross)
    return {"cases": cases, "crossover": cross, "anchors": anch,
            "extra": {i: timing["times"][i] for i in extra_ids},
            "timing": {"statistic": timing["statistic"], "rounds": timing["rounds"], "wall_s": timing["wall_s"],
                       "min_time_s": MIN_TIME_S, "threads": used}}


def _crossover_rows(cross: dict) -> list[dict]:
    from ..kernels.spmm import crossover_point

    dense = next(p for p in cross["points"] if p["format"] == "dense")
    rows = []
    for _, name in CROSSOVER_FORMATS:
        pts = [p for p in cross["points"] if p["format"] == name]
        for p in pts:
            p["speedup"] = dense["time_s"] / p["time_s"]
        rows.append({"format": name, "crossover": crossover_point([p["sparsity"] for p in pts],
                                                                  [p["speedup"] for p in pts])})
    return rows


def sweep(*, quick: bool = False, progress=None, llc_bytes: int = 32 << 20) -> list[dict]:
    """The sweep cases alone (no crossover points, no anchors), timed as :func:`measure` does."""
    return measure(quick=quick, progress=progress, llc_bytes=llc_bytes, crossover=False, anchors=False)["cases"]


def measured_crossovers(*, quick: bool = False) -> dict:
    """Measured crossover sparsity vs dense fp32 of CSR, BSR 16x16 and 32x32 on :data:`CROSSOVER_SHAPE` (timed
    alone, as :func:`measure` times it)."""
    return measure(quick=quick, anchors=False, sweep_cases=False, budget_s=BUDGET_S[True])["crossover"]

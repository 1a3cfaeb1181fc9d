"""How wrong is the model?  Predicted vs measured, with the error published per case and per family.

Two sources of "measured":

* this machine — :func:`host_cases` runs a sweep of memwall's own kernels (GEMV, small and large GEMM, INT8,
  INT4, CSR / BSR / 2:4 at several sparsities, cold and warm caches) whose shapes and sparsities are disjoint
  from the calibration points of :mod:`memwall.simulator.calibrate`, and predicts each case with the
  simulator on the host profile;
* published GPU results — :func:`gpu_cases` predicts every case of ``data/published_gpu.toml`` (each with its
  source) with the shipped device profiles.

Error of a case: ``|predicted - measured| / measured`` on time (for throughput metrics on the throughput:
the same absolute percentage).  :func:`summarize` reports the median and 90th percentile overall and per
family, and whether the targets (median <= 15% overall, <= 25% per family) are met.
"""
from __future__ import annotations

import math
import time
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "Case",
    "abs_pct_error",
    "summarize",
    "gpu_cases",
    "host_cases",
    "crossover_check",
    "validate",
    "TARGET_MEDIAN_OVERALL",
    "TARGET_MEDIAN_FAMILY",
    "TARGET_CROSSOVER_PP",
]

#: Median absolute error targets (fractions) and the crossover tolerance (percentage points / 100).
TARGET_MEDIAN_OVERALL = 0.15
TARGET_MEDIAN_FAMILY = 0.25
TARGET_CROSSOVER_PP = 0.10


@dataclass
class Case:
    """One predicted-vs-measured pair.  ``measured`` and ``predicted`` are in ``unit`` (seconds unless the
    case is a published throughput)."""

    id: str
    family: str
    measured: float
    predicted: float
    unit: str = "s"
    bound: str = ""
    source: str = "measured by memwall validate"
    note: str = ""
    error: float = field(init=False)

    def __post_init__(self):
        self.error = abs_pct_error(self.predicted, self.measured)

    def to_dict(self) -> dict:
        return asdict(self)


def abs_pct_error(predicted: float, measured: float) -> float:
    """``|predicted - measured| / measured`` (a fraction).  ``measured`` must be finite and > 0."""
    if not (math.isfinite(measured) and measured > 0):
        raise ValueError(f"measured: expected a finite value > 0, got {measured}")
    if not math.isfinite(predicted):
        raise ValueError(f"predicted: expected a finite value, got {predicted}")
    return abs(predicted - measured) / measured


def _stats(errors: Sequence[float]) -> dict:
    e = np.asarray(errors, dtype=float)
    return {
        "n": int(e.size),
        "median_abs_error": float(np.median(e)) if e.size else None,
        "p90_abs_error": float(np.percentile(e, 90)) if e.size else None,
        "max_abs_error": float(e.max()) if e.size else None,
    }


def summarize(cases: Iterable[Case]) -> dict:
    """Median / 90th-percentile absolute error overall and per family, and whether the targets are met."""
    cases = list(cases)
    fams: dict[str, list[float]] = {}
    for c in cases:
        fams.setdefault(c.family, []).append(c.error)
    overall = _stats([c.error for c in cases])
    families = {f: _stats(errs) for f, errs in sorted(fams.items())}
    for f in families.values():
        f["target_met"] = f["median_abs_error"] is not None and f["median_abs_error"] <= TARGET_MEDIAN_FAMILY
    overall["target_met"] = (overall["median_abs_error"] is not None
                             and overall["median_abs_error"] <= TARGET_MEDIAN_OVERALL
                             and all(f["target_met"] for f in families.values()))
    return {**overall, "families": families}


# --- published GPU measurements ---------------------------------------------------------------------

def _published() -> list[dict]:
    text = resources.files("memwall.simulator").joinpath("data/published_gpu.toml").read_text("utf-8")
    return tomllib.loads(text)["case"]


def gpu_cases() -> list[Case]:
    """Predict every published GPU measurement of ``data/published_gpu.toml`` with the shipped profiles."""
    from .analysis import estimate_model, make_compression
    from .compression import Compression
    from .ops import GemmOp
    from .roofline import estimate

    out = []
    for c in _published():
        if c["kind"] == "model":
            comp = make_compression(weights=c["weights"], acts=c["acts"], group=c.get("group"), device=c["device"])
            est = estimate_model(c["model"], c["device"], comp, batch=c["batch"], phase=c["phase"],
                                 context=c.get("context"), seq=c.get("seq"))
            predicted = est.tokens_per_s
            bound = "memory" if "decode" in c["phase"] else ""
        elif c["kind"] == "gemm":
            op = GemmOp(c["id"], c["m"], c["n"], c["k"])
            est = estimate(c["device"], op, Compression(weights=c["weights"], acts=c["acts"]))
            predicted = op.ops / est.time_s / 1e12
            bound = est.bound
        else:
            raise ValueError(f"published_gpu.toml: case {c['id']!r}: unknown kind {c['kind']!r}")
        out.append(Case(id=c["id"], family=f"gpu-{c['family']}", measured=float(c["measured"]),
                        predicted=float(predicted), unit=c["metric"], bound=bound, source=c["source"],
                        note=("overlap: " + c["overlap"]) if c.get("overlap") else ""))
    return out


# --- this machine ------------------------------------------------------------------------------------

def median_time(fn: Callable[[], object], *, repeat: int = 7, min_time: float = 0.02, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` samples; each sample loops until ``min_time`` passes."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        samples.append(dt / n)
    return float(np.median(samples))


def _rotating(make: Callable[[int], object], bytes_each: int, cold_bytes: int) -> list:
    """Enough copies of an operand that cycling through them evicts the last-level cache (cold runs)."""
    copies = max(1, math.ceil(cold_bytes / max(bytes_each, 1)))
    return [make(i) for i in range(copies)]


def host_cases(device="host", *, quick: bool = False, progress=None) -> list[Case]:
    """Measure a sweep of memwall kernels on this machine and predict each with ``device`` (the host profile).

    The shapes and sparsities here are deliberately different from those calibration measures
    (:data:`memwall.simulator.calibrate.CALIBRATION_POINTS`)."""
    from .compression import Compression
    from .devices import load_device
    from .ops import GemmOp
    from .roofline import estimate
    from ._host_sweep import sweep

    from .calibrate import check_host_profile

    dev = load_device(device)
    check_host_profile(dev)
    cases = []
    for spec in sweep(quick=quick, progress=progress, llc_bytes=_llc_bytes(dev)):
        op = GemmOp(spec["id"], spec["m"], spec["n"], spec["k"])
        comp = Compression(**spec["comp"])
        est = estimate(dev, op, comp, warm=spec["warm"])
        cases.append(Case(id=spec["id"], family=spec["family"], measured=spec["time_s"], predicted=est.time_s,
                          bound=est.bound))
    return cases


def _llc_bytes(dev) -> int:
    caches = dev.memory_levels[:-1]
    return int(max(l.capacity_bytes * getattr(l, "instances", 1) for l in caches)) if caches else 32 << 20


def crossover_check(device="host", *, quick: bool = False) -> list[dict]:
    """Measured vs predicted crossover sparsity (where each sparse format beats dense FP32) on this machine."""
    from .analysis import format_crossover
    from ._host_sweep import measured_crossovers

    rows = []
    measured = measured_crossovers(quick=quick)
    shape = measured["shape"]
    pred = format_crossover(device, shape["m"], shape["n"], shape["k"], weights="fp32", acts="fp32",
                            formats=[r["format"] for r in measured["rows"]])
    pred_by_fmt = {p.format: p for p in (pred if isinstance(pred, list) else pred.rows)}
    for r in measured["rows"]:
        p = pred_by_fmt.get(r["format"])
        ps = getattr(p, "vs_dense", None) if p is not None else None
        ms = r["crossover"]
        diff = None if (ps is None or ms is None) else abs(ps - ms)
        rows.append({"format": r["format"], "measured_crossover": ms, "predicted_crossover": ps,
                     "difference": diff, "target_met": diff is not None and diff <= TARGET_CROSSOVER_PP})
    return rows


def validate(device="host", *, quick: bool = False, progress=None, include_host: bool = True,
             include_gpu: bool = True, include_crossover: bool = True) -> dict:
    """Everything ``memwall validate`` reports, as one dict (the ``--json`` object)."""
    out: dict = {}
    if include_host:
        host = host_cases(device, quick=quick, progress=progress)
        out["host"] = {"device": str(device), **summarize(host), "cases": [c.to_dict() for c in host]}
    if include_gpu:
        gpu = gpu_cases()
        out["gpu"] = {**summarize(gpu), "cases": [c.to_dict() for c in gpu]}
    if include_crossover and include_host:
        out["crossover"] = crossover_check(device, quick=quick)
    every = [Case(**{k: v for k, v in c.items() if k != "error"})
             for part in ("host", "gpu") if part in out for c in out[part]["cases"]]
    overall = summarize(every)
    out.update({k: overall[k] for k in ("median_abs_error", "p90_abs_error", "max_abs_error", "n", "target_met")})
    out["families"] = overall["families"]
    return out

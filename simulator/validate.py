"""How wrong is the model?  Predicted vs measured, with the error published per case and per family.

Two sources of "measured":

* this machine — :func:`host_cases` runs a sweep of memwall's own kernels (GEMV, small and large GEMM, INT8,
  INT4, CSR / BSR / 2:4 at several sparsities, cold and warm caches) whose shapes and sparsities are disjoint
  from the calibration points of :mod:`memwall.simulator.calibrate`, and predicts each case with the
  simulator on the host profile;
* published GPU results — :func:`gpu_cases` predicts every case of ``data/published_gpu.toml`` (each with its
  source) with the shipped device profiles.

How this machine is timed (the same statistic ``memwall calibrate`` uses, :func:`interleaved_times`): all
operands are built first, then rounds visit every case, every crossover point and two *anchors* once each (a
warm-up call, then calls until ``min_time`` passes: one sample), until a wall budget is spent; a case's time
is the minimum over its samples.  On a shared machine, co-tenants make everything 1.5-2x slower for stretches
of seconds to minutes, and interference only ever adds time: the minimum is the stable statistic, and the
rounds spread each case over the whole sweep so a slow phase hits all of them alike.  The median of the
samples is kept beside it (``measured_median``, and the summary ``on_medians``).  The anchors are
calibration points (the FP32 BLAS GEMM and the cold INT4 GEMV) measured again now: their ``drift``
(measured / what the calibrated profile predicts for them - 1) shows how far this machine has moved since
calibration, i.e. the noise floor of every error below.  ``validate(calibrate=True)`` (``memwall validate
--calibrate``) removes that drift: the calibration measurements run in the sweep's own rounds and the host
profile is written from them before predicting (the anchors' drift is then a self-check, ~0); the
calibration points stay disjoint from the sweep, so the error is still on points the profile was not fitted on.

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
    "interleaved_times",
    "interleaved_ratios",
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
    measured_median: float | None = None
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

#: The statistic of a measured time in ``memwall calibrate`` and ``memwall validate`` (both use
#: :func:`interleaved_times`): the minimum over interleaved rounds of the mean call time of one sample.
TIMING_STATISTIC = ("min over interleaved rounds of per-sample means (interference only adds time); "
                    "each sample: one warm-up call, then calls until min_time passes")


def _sample(fn: Callable[[], object], min_time: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


class Sampler:
    """An entry of :func:`interleaved_times` that takes its own sample: ``fn()`` returns seconds (e.g. a
    bandwidth benchmark that times its kernel internally)."""

    def __init__(self, fn: Callable[[], float], max_samples: int | None = None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable returning seconds, got {type(fn).__name__}")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                        or max_samples < 1):
            raise ValueError(f"max_samples: expected None or an integer >= 1, got {max_samples!r}")
        self.fn = fn
        self.max_samples = max_samples  # expensive samplers (large allocations) sit out later rounds


def interleaved_times(entries, *, min_time: float = 0.01, min_rounds: int = 3, max_rounds: int = 20,
                      budget_s: float | None = None, warmup: bool = True, progress=None,
                      clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time several calls in interleaved rounds and return the minimum (and median) per call.

    Parameters
    ----------
    entries : mapping of id -> callable (timed: one warm-up call, then calls until ``min_time`` passes; the
        sample is the mean per call) or :class:`Sampler` (returns its own sample in seconds).
    min_rounds, max_rounds : every entry gets at least ``min_rounds`` samples, at most ``max_rounds``.
    budget_s : wall seconds after which no new round starts once ``min_rounds`` are done (None: no budget).
    progress : ``progress(done, total, what)`` after each round.

    Each round visits every entry once, starting one entry later than the round before, so a slow phase of
    a shared machine (seconds to minutes) is spread over all entries instead of hitting a few; the warm-up
    call absorbs the previous entry's state (the other thread pool still spinning, evicted caches).

    Returns ``{"times": {id: {"min_s", "median_s", "n", "samples"}}, "rounds", "wall_s", "statistic"}``.
    """
    if not hasattr(entries, "items"):
        raise TypeError(f"entries: expected a mapping of id -> callable, got {type(entries).__name__}")
    ids = list(entries)
    for i in ids:
        e = entries[i]
        if not (callable(e) or isinstance(e, Sampler)):
            raise TypeError(f"entries[{i!r}]: expected a callable or a Sampler, got {type(e).__name__}")
    if not (isinstance(min_rounds, int) and isinstance(max_rounds, int) and 1 <= min_rounds <= max_rounds):
        raise ValueError(f"min_rounds, max_rounds: expected integers 1 <= min_rounds <= max_rounds, got "
                         f"{min_rounds!r}, {max_rounds!r}")
    if not (isinstance(min_time, (int, float)) and min_time >= 0):
        raise ValueError(f"min_time: expected a number >= 0, got {min_time!r}")
    samples: dict = {i: [] for i in ids}
    t_start = clock()
    rounds = 0
    while rounds < max_rounds:
        if rounds >= min_rounds and budget_s is not None and clock() - t_start >= budget_s:
            break
        off = rounds % max(len(ids), 1)
        for i in ids[off:] + ids[:off]:
            e = entries[i]
            if isinstance(e, Sampler):
                if e.max_samples is not None and len(samples[i]) >= e.max_samples:
                    continue
                s = float(e.fn())
            else:
                if warmup:
                    e()
                s = _sample(e, min_time)
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"entries[{i!r}]: a sample of {s!r} s (expected a finite time > 0)")
            samples[i].append(s)
        rounds += 1
        if progress is not None and rounds < max_rounds:
            total = max_rounds
            if budget_s is not None:  # rounds the budget allows at the pace so far
                pace = (clock() - t_start) / rounds
                total = min(max_rounds, max(min_rounds, math.ceil(budget_s / pace) if pace > 0 else max_rounds))
            progress(rounds, max(total, rounds + 1), f"timing round {rounds}")
    if progress is not None:
        progress(rounds, rounds, f"timed {rounds} rounds")
    times = {i: {"min_s": float(min(v)), "median_s": float(np.median(v)), "n": len(v), "samples": list(v)}
             for i, v in samples.items()}
    return {"times": times, "rounds": rounds, "wall_s": clock() - t_start, "statistic": TIMING_STATISTIC}



def interleaved_ratios(entries, ref: str = "memwall", *, rounds: int = 8, min_time: float = 0.01) -> dict:
    """``{id: median time of id / median time of ref}`` for every entry but ``ref`` (above 1: ``ref`` is faster),
    all timed by :func:`interleaved_times` in ``rounds`` interleaved rounds of ``min_time`` seconds each.

    The benchmarks use it beside pytest-benchmark's back-to-back blocks of one implementation, which on a
    machine whose speed drifts over seconds can compare different phases."""
    if ref not in entries:
        raise ValueError(f"ref: {ref!r} is not one of the entries {list(entries)}")
    times = interleaved_times(entries, min_time=min_time, min_rounds=rounds, max_rounds=rounds)["times"]
    mine = times[ref]["median_s"]
    return {name: t["median_s"] / mine for name, t in times.items() if name != ref}

def best_time(fn: Callable[[], object], *, repeat: int = 5, min_time: float = 0.02) -> float:
    """The statistic of :func:`interleaved_times` for one call: the minimum of ``repeat`` samples."""
    return interleaved_times({"fn": fn}, min_time=min_time, min_rounds=repeat, max_rounds=repeat)["times"]["fn"]["min_s"]


class thread_limits:
    """Context: BLAS (threadpoolctl) and Numba both use ``threads`` threads (None: all of Numba's); yields the
    count used and restores Numba's setting afterwards."""

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self) -> int:
        import numba
        from threadpoolctl import threadpool_limits

        n = numba.config.NUMBA_NUM_THREADS if self.threads is None else int(self.threads)
        if n < 1:
            raise ValueError(f"threads: expected an integer >= 1, got {self.threads!r}")
        n = min(n, numba.config.NUMBA_NUM_THREADS)
        self._old = numba.get_num_threads()
        numba.set_num_threads(n)
        self._tp = threadpool_limits(limits=n)
        self._tp.__enter__()
        return n

    def __exit__(self, *exc):
        import numba

        self._tp.__exit__(*exc)
        numba.set_num_threads(self._old)
        return False


def _predict(dev, spec: dict):
    from .compression import Compression
    from .ops import GemmOp
    from .roofline import estimate

    op = GemmOp(spec["id"], spec["m"], spec["n"], spec["k"])
    return estimate(dev, op, Compression(**spec["comp"]), warm=spec["warm"])


def _host_case(dev, spec: dict) -> "Case":
    est = _predict(dev, spec)
    spread = spec["median_s"] / spec["time_s"] - 1.0
    return Case(id=spec["id"], family=spec["family"], measured=spec["time_s"], predicted=est.time_s,
                bound=est.bound, measured_median=spec["median_s"],
                note=f"{spec['samples']} samples; median +{spread:.0%} over the minimum")


def _anchor_rows(dev, anchors: list[dict]) -> list[dict]:
    rows = []
    for a in anchors:
        pred = _predict(dev, a).time_s
        rows.append({"id": a["id"], "measured": a["time_s"], "median": a["median_s"], "calibrated": pred,
                     "drift": a["time_s"] / pred - 1.0})
    return rows


def _host_device(device):
    from .calibrate import check_host_profile
    from .devices import load_device

    dev = load_device(device)
    check_host_profile(dev)
    return dev


def host_cases(device="host", *, quick: bool = False, progress=None) -> list[Case]:
    """Measure a sweep of memwall kernels on this machine and predict each with ``device`` (the host profile).

    The shapes and sparsities here are deliberately different from those calibration measures
    (:data:`memwall.simulator.calibrate.CALIBRATION_POINTS`)."""
    from ._host_sweep import measure

    dev = _host_device(device)
    res = measure(quick=quick, progress=progress, llc_bytes=_llc_bytes(dev), threads=dev.tiling.parallel_units,
                  crossover=False, anchors=False)
    return [_host_case(dev, spec) for spec in res["cases"]]


def _llc_bytes(dev) -> int:
    caches = dev.memory_levels[:-1]
    return int(max(l.capacity_bytes * getattr(l, "instances", 1) for l in caches)) if caches else 32 << 20


def crossover_check(device="host", *, quick: bool = False, measured: dict | None = None) -> list[dict]:
    """Measured vs predicted crossover sparsity (where each sparse format beats dense FP32) on this machine.

    Both sides compare the same thing: the sparse kernel against NumPy's FP32 BLAS product at the same shape,
    batch and thread count, timed with the same statistic, one copy of each operand (``warm=True`` in the
    model: what fits the LLC is read from it), and the crossover read off the same sparsity grid with the same
    interpolation (:func:`memwall.kernels.spmm.crossover_point`).  ``predicted_continuous`` is the model's
    exact crossover (:func:`memwall.simulator.analysis.format_crossover`), for reference.
    ``measured``: the ``crossover`` part of :func:`memwall.simulator._host_sweep.measure` (else measured now)."""
    from ..kernels.spmm import crossover_point
    from .analysis import format_crossover
    from .compression import Compression
    from .ops import GemmOp
    from .roofline import estimate
    from ._host_sweep import CROSSOVER_FORMATS, measured_crossovers

    dev = _host_device(device)
    if measured is None:
        measured = measured_crossovers(quick=quick)
    shape = measured["shape"]
    op = GemmOp("crossover", shape["m"], shape["n"], shape["k"])
    dense_t = estimate(dev, op, Compression(weights="fp32", acts="fp32"), warm=True).time_s
    grid = list(measured["sparsities"])
    cont = format_crossover(dev, shape["m"], shape["n"], shape["k"], weights="fp32", acts="fp32",
                            formats=[name for _, name in CROSSOVER_FORMATS], targets=("dense",), warm=True)
    cont_by_fmt = {p.format: p.vs_dense for p in cont}
    rows = []
    for r in measured["rows"]:
        comps = [Compression.parse(weights="fp32", acts="fp32", format=r["format"], sparsity=s) for s in grid]
        speed = [dense_t / estimate(dev, op, c, warm=True).time_s for c in comps]
        ps = crossover_point(grid, speed)
        ms = r["crossover"]
        diff = None if (ps is None or ms is None) else abs(ps - ms)
        rows.append({"format": r["format"], "measured_crossover": ms, "predicted_crossover": ps,
                     "predicted_continuous": cont_by_fmt.get(r["format"]), "difference": diff,
                     "target_met": (diff is not None and diff <= TARGET_CROSSOVER_PP) or (ps is None and ms is None)})
    return rows


def _calibrate_jointly(quick: bool, progress, include_crossover: bool, out, _scale: int | None):
    """``validate(calibrate=True)``: the calibration measurements timed in the rounds of the sweep (one machine
    state for both), the host profile written from them as ``calibrate()`` writes it; returns
    ``(sweep result, device, calibration info)``."""
    import datetime as _dt
    from pathlib import Path

    import numba

    from ..kernels.cpu import cpu_count, cpu_model
    from . import calibrate as cal
    from ._host_sweep import MAX_ROUNDS, MIN_TIME_S, measure
    from .devices import host_profile_path, load_device, save_profile

    threads = cpu_count()  # calibrate()'s default: the profile's threads are the sweep's
    path = Path(out) if out else host_profile_path()
    caches = cal.detect_caches()
    llc = max(c["bytes"] * c["instances"] for c in caches)
    with thread_limits(threads):
        plan = cal._build(quick, threads, _scale)
    prefix = "calibration "
    extra = {}
    for k, e in plan.pop("entries").items():
        if not isinstance(e, Sampler) and plan["min_time"] != MIN_TIME_S:  # keep calibration's sample length
            e = Sampler(lambda e=e, t=plan["min_time"]: (e(), _sample(e, t))[1])  # a warm-up call, one sample
        extra[prefix + k] = e
    res = measure(quick=quick, progress=progress, llc_bytes=llc, threads=threads, crossover=include_crossover,
                  anchors=True, extra_entries=extra, extra_budget_s=plan["budget_s"],
                  max_rounds=min(MAX_ROUNDS, plan["max_rounds"]))
    del extra  # the calibration operands (cold weight copies, sparse matrices) go now
    best = {k[len(prefix):]: v["min_s"] for k, v in res.pop("extra").items()}
    tm = res["timing"]
    m = plan["finish"](best, {"statistic": tm["statistic"], "rounds": tm["rounds"], "wall_s": tm["wall_s"]})
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    versions = f"numba {numba.__version__}, numpy {np.__version__}"
    doc, comment = cal.profile_doc(m, cpu=cpu_model(), date=date, versions=versions)
    save_profile(doc, path, comment=comment + "\nmeasured in the interleaved rounds of `memwall validate "
                                               "--calibrate` (one machine state for calibration and validation)")
    dev = load_device(path)
    info = {"path": str(path), "together": True, "rounds": tm["rounds"], "wall_s": tm["wall_s"],
            "threads": threads, "quick": bool(quick),
            "measured": {k: v for k, v in m.items() if isinstance(v, (int, float))}}
    return res, dev, info


def validate(device="host", *, quick: bool = False, progress=None, include_host: bool = True,
             include_gpu: bool = True, include_crossover: bool = True, calibrate: bool = False, out=None,
             _scale: int | None = None) -> dict:
    """Everything ``memwall validate`` reports, as one dict (the ``--json`` object).

    ``calibrate``: measure the calibration points (:data:`memwall.simulator.calibrate.CALIBRATION_POINTS`,
    still disjoint from the sweep) in the same interleaved rounds as the sweep, write the host profile to
    ``out`` (default: the host profile path) as ``memwall calibrate`` does, and predict with it: no machine
    drift between calibration and validation (the anchors' drift then is a self-check, ~0).  ``device`` must be
    ``"host"`` (or None) then; ``quick`` calibrates at the quick shapes; ``_scale`` (tests) divides the
    calibration shapes as ``calibrate(_scale=...)`` does.  Reported as ``"calibration"``."""
    from ._host_sweep import measure

    if calibrate:
        if device not in (None, "host"):
            raise ValueError(f"device: --calibrate writes and validates the host profile; got device {device!r} "
                             "(leave --device out or pass host)")
        if not include_host:
            raise ValueError("calibrate: needs the host sweep (include_host=True; not --gpu-only)")
        device = "host"
    out_doc: dict = {}
    if include_host:
        if calibrate:
            res, dev, info = _calibrate_jointly(quick, progress, include_crossover, out, _scale)
            out_doc["calibration"] = info
        else:
            dev = _host_device(device)
            res = measure(quick=quick, progress=progress, llc_bytes=_llc_bytes(dev),
                          threads=dev.tiling.parallel_units, crossover=include_crossover, anchors=True)
        host = [_host_case(dev, spec) for spec in res["cases"]]
        on_medians = summarize(Case(c.id, c.family, c.measured_median, c.predicted) for c in host)
        out_doc["host"] = {"device": str(dev.path) if calibrate else str(device), **summarize(host),
                           "cases": [c.to_dict() for c in host],
                           "anchors": _anchor_rows(dev, res["anchors"]), "timing": res["timing"],
                           "on_medians": {k: on_medians[k] for k in ("median_abs_error", "p90_abs_error")}
                           | {"families": {f: v["median_abs_error"] for f, v in on_medians["families"].items()}}}
        if include_crossover:
            out_doc["crossover"] = crossover_check(dev, quick=quick, measured=res["crossover"])
            out_doc["crossover_points"] = [{k: v for k, v in p.items()} for p in res["crossover"]["points"]]
    if include_gpu:
        gpu = gpu_cases()
        out_doc["gpu"] = {**summarize(gpu), "cases": [c.to_dict() for c in gpu]}
    every = [Case(**{k: v for k, v in c.items() if k != "error"})
             for part in ("host", "gpu") if part in out_doc for c in out_doc[part]["cases"]]
    overall = summarize(every)
    out_doc.update({k: overall[k] for k in ("median_abs_error", "p90_abs_error", "max_abs_error", "n",
                                            "target_met")})
    out_doc["families"] = overall["families"]
    return out_doc

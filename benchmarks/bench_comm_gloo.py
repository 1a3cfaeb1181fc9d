"""Validate the alpha-beta communication model on a real distributed backend: torch.distributed (gloo) on
127.0.0.1.

For p = 2 and 4 worker processes (loopback only; never another host), measure

* dense all-reduce of a float32 gradient (``dist.all_reduce``), and
* all-gather of each worker's top-k encoding (int32 indices + float32 values packed into one byte buffer,
  the wire format of :func:`memwall.simulator.comm.topk_bytes`; gathered into one flat tensor),

at sizes a factor of 2 apart; for each (world size, collective) fit the loopback link from ONE subset of the
sizes (every other size) and predict the held-out sizes with :mod:`memwall.simulator.comm`'s formulas,
reporting predicted vs measured for every case (the issue's target: within 25%).

What the model knows about the backend (see :mod:`memwall.simulator.comm`):

* gloo's ring all-reduce cuts the buffer into segments of at most 1 MiB, at least 2 per rank
  (:data:`~memwall.simulator.comm.GLOO_SEGMENT_BYTES`): ``2 (p-1) s`` messages, ``s = max(2, ceil(n / (p
  MiB)))``; gloo's all-gather sends each block as two halves (``s = 2`` per ring step);
* on loopback the "link" is the host's memory and cores, whose per-byte cost changes once the buffers stop
  being cache-resident: the fitted link has two bandwidths and a breakpoint (:class:`Network`
  ``breakpoint_bytes``), the breakpoint chosen from the fit sizes only (a log grid between them, each regime
  keeping at least two fit sizes).

The same fit-set also fits the textbook straight line (one alpha, one beta, textbook message counts) and the
table shows its held-out error beside the new model's, so the gain of each regime is visible on the same
measurement.  Robustness on a shared 2-core host: interleaved rounds over all cases (some hundred), one
call per sample for every size (barrier, call, slowest rank), each case summarized by the 10th percentile of
its samples (:data:`QUANTILE`; the table also shows the minimum and the median); the CPU time the workers burn
is recorded (``cpu_busy``: their user + system time over wall time x cores).

With more workers than cores (p = 4 on 2) the workers time-share the cores: the "link" of each is then a
share of the host.  ``shared_cores_check`` tests that reading without fitting anything at p = 4: it predicts
every p = 4 case from the p = 2 fit with each worker's bandwidths scaled by ``cores / p`` and the latency by
``p / cores`` (reported, not part of the 25% target).  Measured with both world sizes in the same rounds, this naive
reading over-predicts p = 4 (by 20-40% at the median): at p = 2 the workers leave the cores idle for
part of each call (waiting for wake-ups), so at p = 4 each keeps about 75% of its p = 2 bandwidth, not 50%,
while the latency per message about doubles — p = 4 is oversubscribed, not simply CPU-starved, and is fitted
on its own.

    python benchmarks/bench_comm_gloo.py            # table + JSON summary on stdout
    python benchmarks/report.py -k comm_gloo        # through pytest-benchmark (table in extra_info)

Skipped with a reason when torch is absent (``pip install torch==2.13.0``, the local CPU build; torch is
never a runtime dependency of memwall).  Bounded: about 1.5 minutes on 2 cores (70 s of rounds); a hard timeout (140 s) stops it.
"""
from __future__ import annotations

import json
import math
import os
import queue
import socket
import sys
import time

import numpy as np

#: Gradient sizes (float32 elements) for the dense all-reduce: 4 KiB .. 16 MiB, a factor of 2 apart.
DENSE_SIZES = tuple(1 << i for i in range(10, 23))
#: Top-k pairs per worker for the all-gather: 512 B .. 4 MiB encodings, a factor of 2 apart.
TOPK_SIZES = tuple(1 << i for i in range(6, 20))
WORLD_SIZES = (2, 4)
#: Hard bound on the whole measurement (both world sizes, spawn included).
TIMEOUT_S = 140.0
#: Interleaved rounds over all cases of all world sizes (at least ROUNDS, more while ROUND_S seconds have not
#: passed, at most MAX_ROUNDS); each case is summarized by a low quantile of its samples (QUANTILE).
ROUNDS = 5
ROUND_S = 70.0
MAX_ROUNDS = 400
TARGET_REL_ERR = 0.25
#: The statistic of a case's interleaved samples (some hundred) that the model is fitted to and checked
#: against: the 10th percentile.  Not the minimum: with 4 processes on 2 cores a single call's time depends on how the
#: scheduler happens to hand out the cores, so the fastest of 100 samples is an extreme value that jumps
#: from size to size (measured: 0.83 ms at 64 KiB between 1.06 and 1.12 ms at 16 and 32 KiB); not the
#: median: bursts of foreign load on the shared host may cover half of the samples (seen: the lower quartile
#: of a 1 KiB all-reduce at 3x its minimum while other jobs ran).
QUANTILE = 0.1
#: Breakpoint candidates per factor of 2 between fit sizes.
GRID_PER_OCTAVE = 8
#: Fewest fit sizes on each side of a fitted breakpoint.
MIN_FIT_PER_REGIME = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _encode_topk(grad: np.ndarray, k: int) -> np.ndarray:
    """Our top-k encoding (:func:`memwall.kernels.gradient.topk_sparsify`: int32 indices, float32 values)
    of ``grad``, packed into one uint8 buffer: indices then values."""
    from memwall.kernels.gradient import topk_sparsify

    sg = topk_sparsify(grad, k=k)
    return np.concatenate([sg.indices.view(np.uint8), sg.values.view(np.uint8)])


def _sample(fn, dist, torch, group) -> float:
    """Time of one call started together by the ranks of ``group`` (after a barrier), on the slowest rank.

    One call per sample, for every size alike: back-to-back calls overlap (a rank starts the next
    collective while its neighbour still finishes the last one), so a mean over several calls is a
    throughput that undercuts one call's latency by an amount that depends on how many calls the sample
    holds — a bias from size to size when that number is sized per case."""
    dist.barrier(group=group)
    t0 = time.perf_counter()
    fn()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t.item())


def _worker(rank: int, worlds: tuple, port: int, queue, dense_sizes, topk_sizes, rounds: int, round_s: float,
            max_rounds: int) -> None:
    """One of ``max(worlds)`` processes; world size ``w`` is the group of ranks ``0 .. w-1``.  Time every
    case of every world size in interleaved rounds (round-robin over all cases, the largest world first;
    ranks outside a smaller group wait, asleep, in the round's closing broadcast) — at least ``rounds``, more while
    ``round_s`` seconds have not passed, at most ``max_rounds`` — and return every sample: on a shared host
    other processes only ever add time, and interleaving spreads a burst of foreign load over all cases
    (and world sizes) instead of ruining one."""
    import warnings

    import torch

    warnings.simplefilter("ignore", FutureWarning)
    import torch.distributed as dist

    torch.set_num_threads(1)
    top = max(worlds)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=top)
    groups = {w: (None if w == top else dist.new_group(list(range(w)))) for w in worlds}  # every rank calls
    rng = np.random.default_rng(1000 + rank)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    cases = []  # (meta, fn, group) of the cases this rank takes part in
    try:
        # largest world first: after its block the ranks outside the smaller groups wait in the closing
        # broadcast, which sends them nothing, so they cannot wake the smaller groups' ranks mid-sample
        for w in sorted(worlds, reverse=True):
            if rank >= w:
                continue
            g = groups[w]
            for n in dense_sizes:
                t = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
                cases.append(({"op": "allreduce", "p": w, "elements": n, "bytes": n * 4},
                              (lambda t=t, g=g: dist.all_reduce(t, group=g)), g))
            full = rng.standard_normal(max(topk_sizes) * 8).astype(np.float32)
            for k in topk_sizes:
                buf = torch.from_numpy(_encode_topk(full[: k * 8], k))
                out_buf = torch.empty(w * buf.numel(), dtype=buf.dtype)
                cases.append(({"op": "allgather", "p": w, "elements": k, "bytes": int(buf.numel())},
                              (lambda o=out_buf, b=buf, g=g: gather(o, b, group=g)), g))
        for _, fn, _ in cases:  # warm up (buffers, connections, allocator)
            for _ in range(3):
                fn()
        samples = [[] for _ in cases]
        cpu0, wall0 = os.times(), time.monotonic()
        t_end = wall0 + round_s
        done = 0
        while True:
            for i, (_, fn, g) in enumerate(cases):
                samples[i].append(_sample(fn, dist, torch, g))
            done += 1
            # rank 0 decides whether another round fits in the time bound; every rank follows
            go = torch.tensor([1 if (done < rounds or time.monotonic() < t_end) and done < max_rounds else 0])
            dist.broadcast(go, src=0)
            if not int(go.item()):
                break
        cpu1, wall = os.times(), time.monotonic() - wall0
        busy = torch.tensor([(cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)], dtype=torch.float64)
        dist.all_reduce(busy)  # CPU seconds of all workers over the timed rounds
    finally:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        queue.put({"cases": [dict(c, samples_s=sm) for (c, _, _), sm in zip(cases, samples)],
                   "rounds": done, "wall_s": wall,
                   "cpu_busy": float(busy.item()) / (wall * (os.cpu_count() or 1))})


def _summarize(case: dict) -> dict:
    """The case with its statistics: ``measured_s`` (the :data:`QUANTILE` of its samples), min and median."""
    sm = np.asarray(case["samples_s"], dtype=np.float64)
    return dict(case, measured_s=float(np.quantile(sm, QUANTILE)), min_s=float(sm.min()),
                median_s=float(np.median(sm)))


def measure(world_sizes=WORLD_SIZES, dense_sizes=DENSE_SIZES, topk_sizes=TOPK_SIZES, rounds: int = ROUNDS,
            round_s: float = ROUND_S, max_rounds: int = MAX_ROUNDS,
            timeout_s: float = TIMEOUT_S) -> tuple[list[dict], dict]:
    """Spawn ``max(world_sizes)`` workers on 127.0.0.1 and measure every world size in the same interleaved
    rounds; return the measured cases and ``{"rounds", "wall_s", "cpu_busy"}`` (the workers' CPU seconds
    over wall time x cores).  Raises when a worker dies or the time bound passes."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    worlds = tuple(sorted(set(world_sizes)))
    deadline = time.monotonic() + timeout_s
    q = ctx.Queue()
    args = (worlds, _free_port(), q, tuple(dense_sizes), tuple(topk_sizes), rounds, round_s, max_rounds)
    procs = [ctx.Process(target=_worker, args=(r, *args), daemon=True) for r in range(max(worlds))]
    for pr in procs:
        pr.start()
    try:
        while True:
            try:
                got = q.get(timeout=1.0)
                break
            except queue.Empty:
                dead = [pr.exitcode for pr in procs if pr.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"gloo benchmark: a worker exited with code {dead[0]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gloo benchmark: did not finish within the {timeout_s:g} s bound") from None
    finally:
        for pr in procs:
            pr.join(timeout=10)
            if pr.is_alive():
                pr.terminate()
    return [_summarize(c) for c in got["cases"]], {k: got[k] for k in ("rounds", "wall_s", "cpu_busy")}


# --- the model's view of each case ------------------------------------------------------------------


def _terms(case: dict, gloo: bool = True) -> tuple[float, float]:
    """(messages on the critical path, bytes each worker sends) of one case: the coefficient of alpha and
    the argument of the link's transfer time.  ``gloo=False``: the textbook message counts."""
    from memwall.simulator import comm

    p, n = case["p"], case["bytes"]
    if case["op"] == "allreduce":
        s = comm.ring_segments(n, p, segment_bytes=comm.GLOO_SEGMENT_BYTES,
                               min_segments=comm.GLOO_MIN_SEGMENTS) if gloo else 1
        return 2 * (p - 1) * s, 2.0 * (p - 1) / p * n
    return (p - 1) * (2 if gloo else 1), float((p - 1) * n)


def _nnls_rel(a: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares of ``a x ~ t`` on relative error; returns (x, sum of squared rel errors)."""
    from scipy.optimize import nnls

    a = a / t[:, None]
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    x, res = nnls(a / scale, np.ones(len(t)))
    return x / scale, float(res) ** 2


def fit_line(cases: list[dict]):
    """The textbook fit: one alpha, one beta, textbook message counts (the model before gloo's regimes)."""
    from memwall.simulator.comm import Network

    a = np.array([_terms(c, gloo=False) for c in cases])
    x, _ = _nnls_rel(a, np.array([c["measured_s"] for c in cases]))
    return Network("loopback", "gloo on 127.0.0.1 (fitted line)", 1.0 / max(x[1], 1e-30), float(x[0]),
                   source="fitted by benchmarks/bench_comm_gloo.py")


def _bic(sq_err: float, n: int, k: int) -> float:
    """Bayesian information criterion of a least-squares fit with ``k`` parameters to ``n`` points."""
    return n * math.log(max(sq_err, 1e-300) / n) + k * math.log(n)


def fit_link(cases: list[dict]):
    """The loopback link from the fit cases only, with gloo's message counts (:func:`_terms`).

    Two candidates: one bandwidth (alpha, beta: 2 parameters), and two bandwidths with a breakpoint in the
    bytes each worker sends (alpha, beta, beta_large and the breakpoint: 4 parameters) — the breakpoint
    searched on a log grid between the fit sizes that keeps at least ``MIN_FIT_PER_REGIME`` fit sizes on
    each side, the rest by non-negative least squares on relative error.  The breakpoint is kept only when
    it earns its two extra parameters (lower Bayesian information criterion).  Returns
    ``(Network, {"model": "one-regime" | "two-regime", "bic_one", "bic_two"})``."""
    from memwall.simulator.comm import Network

    terms = np.array([_terms(c) for c in cases])
    t = np.array([c["measured_s"] for c in cases])
    n = len(t)
    x1, err1 = _nnls_rel(terms, t)
    one = Network("loopback", "gloo on 127.0.0.1 (fitted)", 1.0 / max(x1[1], 1e-30), float(x1[0]),
                  source="fitted by benchmarks/bench_comm_gloo.py")
    wire = np.sort(terms[:, 1])
    grid = []
    for lo, hi in zip(wire[MIN_FIT_PER_REGIME - 1:], wire[MIN_FIT_PER_REGIME:n - MIN_FIT_PER_REGIME + 1]):
        steps = max(1, round(GRID_PER_OCTAVE * math.log2(hi / lo)))
        grid += [lo * (hi / lo) ** (j / steps) for j in range(steps)]
    best = None
    for b in grid:
        a = np.column_stack([terms[:, 0], np.minimum(terms[:, 1], b), np.maximum(terms[:, 1] - b, 0.0)])
        x, err = _nnls_rel(a, t)
        if x[1] > 0 and x[2] > 0 and (best is None or err < best[0]):
            best = (err, b, x)
    info = {"model": "one-regime", "bic_one": _bic(err1, n, 2), "bic_two": None}
    if best is None:
        return one, info
    err2, b, x = best
    info["bic_two"] = _bic(err2, n, 4)
    if info["bic_two"] >= info["bic_one"]:
        return one, info
    info["model"] = "two-regime"
    return Network("loopback", "gloo on 127.0.0.1 (fitted, two regimes)", 1.0 / x[1], float(x[0]),
                   source="fitted by benchmarks/bench_comm_gloo.py", breakpoint_bytes=float(b),
                   large_bandwidth_bytes_per_s=1.0 / x[2]), info


def predict(case: dict, net, gloo: bool = True) -> float:
    """The model's time for one case on the fitted link (gloo's segmenting unless ``gloo=False``)."""
    from memwall.simulator import comm

    if case["op"] == "allreduce":
        if not gloo:
            return comm.ring_allreduce_time(case["bytes"], case["p"], net)
        return comm.ring_allreduce_time(case["bytes"], case["p"], net, segment_bytes=comm.GLOO_SEGMENT_BYTES,
                                        min_segments=comm.GLOO_MIN_SEGMENTS)
    return comm.allgather_time(case["bytes"], case["p"], net, segments=2 if gloo else 1)


def run(measured: tuple[list[dict], dict] | None = None) -> dict:
    """Measure (or take ``measured``, the return of :func:`measure` saved with ``--raw``); for each world
    size and collective fit the link on every other size and predict the rest.

    One fit per (world size, collective): on loopback the "link" is the host's memory and cores, shared by
    all the workers, so the per-worker bandwidth depends on how many processes share them (4 processes on 2
    cores are not the same link as 2), and gloo's all-gather and all-reduce copy and reduce through
    different code paths (their effective beta differs by about 2x here); the model's job checked here is the
    shape in n and p — latency per message plus bytes over a (two-regime) bandwidth — not one universal
    constant.  The reduction cost gamma is not fitted: within one collective it is another per-byte term,
    indistinguishable from 1/beta.
    """
    cases, info = measure() if measured is None else measured
    sizes = {op: sorted({c["elements"] for c in cases if c["op"] == op}) for op in ("allreduce", "allgather")}
    for c in cases:
        c["fit"] = sizes[c["op"]].index(c["elements"]) % 2 == 0
    rows, fits = [], {}
    for p in sorted({c["p"] for c in cases}):
        for op in ("allreduce", "allgather"):
            mine = [c for c in cases if c["p"] == p and c["op"] == op]
            if not mine:
                continue
            train = [c for c in mine if c["fit"]]
            (net, sel), line = fit_link(train), fit_line(train)
            bp = net.breakpoint_bytes
            fits[f"{op} p={p}"] = {
                **sel, "alpha_us": net.latency_s * 1e6, "beta_GBps": net.bandwidth_bytes_per_s / 1e9,
                "breakpoint_bytes_sent": bp,
                "beta_large_GBps": None if bp is None else net.large_bandwidth_bytes_per_s / 1e9,
                "line_alpha_us": line.latency_s * 1e6, "line_beta_GBps": line.bandwidth_bytes_per_s / 1e9}
            for c in mine:
                pred, pred_line = predict(c, net), predict(c, line, gloo=False)
                msgs, sent = _terms(c)
                rows.append({"op": op, "p": p, "bytes": int(c["bytes"]), "set": "fit" if c["fit"] else "held-out",
                             "messages": int(msgs),
                             "regime": "one" if bp is None else ("small" if sent <= bp else "large"),
                             "measured_ms": c["measured_s"] * 1e3, "min_ms": c["min_s"] * 1e3,
                             "median_ms": c["median_s"] * 1e3,
                             "predicted_ms": pred * 1e3, "rel_err": (pred - c["measured_s"]) / c["measured_s"],
                             "line_rel_err": (pred_line - c["measured_s"]) / c["measured_s"]})
    held = [r for r in rows if r["set"] == "held-out"]
    shared = _shared_cores_check(cases)
    err = [abs(r["rel_err"]) for r in held]
    err_line = [abs(r["line_rel_err"]) for r in held]
    return {"fits": fits, "held_out_cases": len(held),
            "held_out_within_target": int(sum(e <= TARGET_REL_ERR for e in err)),
            "held_out_max_rel_err": float(max(err)), "held_out_median_rel_err": float(np.median(err)),
            "line_held_out_within_target": int(sum(e <= TARGET_REL_ERR for e in err_line)),
            "line_held_out_max_rel_err": float(max(err_line)),
            "measurement": info, "shared_cores_check": shared,
            "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "table": rows,
            "raw": {"cases": cases, "measurement": info}}


def _shared_cores_check(cases: list[dict]) -> dict:
    """Predict the cases with more workers than cores from the fit of a world size that fits the cores
    (its fit sizes only), each worker getting ``cores / p`` of the bandwidths and ``p / cores`` times the
    latency; per collective the median and largest relative error over all sizes."""
    from dataclasses import replace

    cores = os.cpu_count() or 1
    worlds = sorted({c["p"] for c in cases})
    base = [p for p in worlds if p <= cores]
    out = {}
    if not base:
        return out
    p0 = base[-1]
    for op in ("allreduce", "allgather"):
        net, _ = fit_link([c for c in cases if c["p"] == p0 and c["op"] == op and c["fit"]])
        for p in (p for p in worlds if p > cores):
            share = cores / p
            large = None if net.large_bandwidth_bytes_per_s is None else net.large_bandwidth_bytes_per_s * share
            sh = replace(net, bandwidth_bytes_per_s=net.bandwidth_bytes_per_s * share,
                         latency_s=net.latency_s / share, large_bandwidth_bytes_per_s=large)
            err = [(predict(c, sh) - c["measured_s"]) / c["measured_s"]
                   for c in cases if c["p"] == p and c["op"] == op]
            out[f"{op} p={p} from p={p0}"] = {"median_rel_err": float(np.median(err)),
                                               "max_abs_rel_err": float(np.max(np.abs(err)))}
    return out


def _torch_or_reason():
    try:
        import torch  # noqa: F401
        import torch.distributed as dist
    except ImportError:
        return "torch is not installed (pip install torch==2.13.0 for this benchmark)"
    if not dist.is_available() or not dist.is_gloo_available():
        return "this torch build has no gloo backend"
    return None


def test_comm_gloo(benchmark):
    """pytest-benchmark entry: one pedantic round of the whole measurement; the table goes in extra_info."""
    import pytest

    reason = _torch_or_reason()
    if reason:
        pytest.skip(reason)
    benchmark.group = "comm gloo loopback: predicted vs measured"
    benchmark.extra_info["impl"] = "memwall"
    summary = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["table"] = summary["table"]
    benchmark.extra_info.update({k: v for k, v in summary.items() if k not in ("table", "raw")})


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", metavar="PATH", help="also write the raw measurements (JSON) to PATH")
    ap.add_argument("--refit", metavar="PATH", help="no measurement: refit the raw measurements in PATH")
    args = ap.parse_args(argv)
    reason = _torch_or_reason() if args.refit is None else None
    if reason:
        print(f"skipped: {reason}")
        return 0
    t0 = time.monotonic()
    measured = None
    if args.refit:
        with open(args.refit, encoding="utf-8") as fh:
            raw = json.load(fh)
        measured = ([_summarize(c) for c in raw["cases"]], raw.get("measurement", {}))
    s = run(measured)
    if args.raw:
        with open(args.raw, "w", encoding="utf-8") as fh:
            json.dump(s["raw"], fh)
    print(f"{'op':9s} {'p':>1s} {'bytes':>9s} {'set':8s} {'msgs':>4s} {'regime':6s} {'min_ms':>8s} "
          f"{f'q{QUANTILE * 100:.0f}_ms':>8s} {'median_ms':>9s} {'predicted':>9s} {'err':>7s} {'line_err':>8s}")
    for r in s["table"]:
        print(f"{r['op']:9s} {r['p']:1d} {r['bytes']:9d} {r['set']:8s} {r['messages']:4d} {r['regime']:6s} "
              f"{r['min_ms']:8.4f} {r['measured_ms']:8.4f} {r['median_ms']:9.4f} {r['predicted_ms']:9.4f} "
              f"{r['rel_err']:+7.1%} {r['line_rel_err']:+8.1%}")
    print(json.dumps({k: v for k, v in s.items() if k not in ("table", "raw")}
                     | {"wall_s": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the benchmarks (or read a pytest-benchmark JSON) and print the ratio table.

Convention for every benchmark in this folder: a test sets ``benchmark.group`` to the case (e.g.
``"int8_gemm 1024^3"``) and ``benchmark.extra_info["impl"]`` to who ran it (``"memwall"``, ``"numpy"``,
``"scipy"``, ``"torch"`` ...).  Optional extra_info: ``ops`` (work per call: the table shows Gop/s),
``bytes`` (bytes moved per call: GB/s), ``targets`` on the memwall entry (``{"numpy": 4.0}``: the speed-up
over that impl the issue asks for; the table says whether it is met), ``interleaved`` on the memwall entry
(``{"numpy": 3.9}``: the same ratio measured with memwall and its baselines alternating in short blocks, see
``bench_gemm._interleaved``), and ``table`` (a list of row dicts, e.g. a crossover sweep, printed as is).  The
ratio (``memwall_speedup``) is the baseline's median time over memwall's median time of the same run: above 1
means memwall is faster.  pytest-benchmark times one implementation after the other, so on a machine whose
speed drifts over seconds the two medians can come from different phases; where a benchmark gives the
``interleaved`` ratio (both sides sampled across the same phases), ``met`` judges that one.

    python benchmarks/report.py                   # run every benchmark, print the table
    python benchmarks/report.py -k gemm           # a subset (pytest -k)
    python benchmarks/report.py --json out.json   # from a saved run (pytest --benchmark-json)
    python benchmarks/report.py --markdown        # table for the README
    python benchmarks/report.py -k gemm --repeat 5   # five runs, one table of medians across them
    python benchmarks/report.py --json a.json b.json # saved runs (pytest --benchmark-json), combined

Several runs (``--repeat N`` or several ``--json`` files) give one row per (case, impl) with the median over
the runs of each column, the range of the judged ratio (``judged_range``: interleaved where given, else block),
and in how many runs the target was met (``met_runs``); ``met`` judges the median.  On a machine whose speed
drifts between runs, that is the statement to quote, not one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

from memwall.kernels.cpu import apply_thread_env_defaults

HERE = os.path.dirname(os.path.abspath(__file__))


def run_benchmarks(select: str | None, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", HERE, "-q", "-p", "no:cacheprovider", "--benchmark-enable",
               "--benchmark-only", f"--benchmark-json={out}", "-m", "", "-o", "addopts="]
        if select:
            cmd += ["-k", select]
        cmd += extra
        print("running:", " ".join(cmd), file=sys.stderr)
        # every library gets the machine while it runs (why: memwall.kernels.cpu.THREAD_ENV_DEFAULTS)
        env = apply_thread_env_defaults(dict(os.environ))
        rc = subprocess.call(cmd, stdout=sys.stderr, env=env)
        if not os.path.exists(out) or os.path.getsize(out) == 0:
            raise SystemExit(f"benchmarks produced no results (pytest exit {rc})")
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)


def summarize(data: dict) -> tuple[list[dict], list[tuple[str, list[dict]]]]:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    tables = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        impl = info.get("impl", b["name"])
        groups[b.get("group") or b["name"]][impl] = {"median": b["stats"]["median"], **info}
        if info.get("table"):
            tables.append((b.get("group") or b["name"], info["table"]))
    rows = []
    for group, impls in groups.items():
        mine = impls.get("memwall")
        for impl, rec in impls.items():
            row = {"case": group, "impl": impl, "median_ms": rec["median"] * 1e3}
            if rec.get("ops"):
                row["Gop/s"] = rec["ops"] / rec["median"] / 1e9
            if rec.get("bytes"):
                row["GB/s"] = rec["bytes"] / rec["median"] / 1e9
            if mine is not None and impl != "memwall":
                ratio = rec["median"] / mine["median"]
                row["memwall_speedup"] = ratio
                inter = (mine.get("interleaved") or {}).get(impl)
                if inter is not None:
                    row["interleaved"] = inter
                target = (mine.get("targets") or {}).get(impl)
                if target is not None:
                    row["target"] = target
                    row["met"] = "yes" if (ratio if inter is None else inter) >= target else "NO"
            rows.append(row)
    return rows, tables


_MEDIAN_COLS = ("median_ms", "Gop/s", "GB/s", "memwall_speedup", "interleaved")


def combine_runs(runs: list[list[dict]]) -> list[dict]:
    """Rows of several runs of :func:`summarize` -> one row per (case, impl) in first-seen order: the median
    over the runs of each numeric column, ``runs`` (how many runs had the row) and, where a target is set,
    ``judged_range`` (min-max of the judged ratio), ``met_runs`` ("k/n") and ``met`` on the median judged ratio."""
    import statistics

    keyed: dict[tuple[str, str], list[dict]] = {}
    for rows in runs:
        for r in rows:
            keyed.setdefault((r["case"], r["impl"]), []).append(r)
    out = []
    for (case, impl), rs in keyed.items():
        row: dict = {"case": case, "impl": impl, "runs": len(rs)}
        for col in _MEDIAN_COLS:
            vals = [r[col] for r in rs if col in r]
            if vals:
                row[col] = statistics.median(vals)
        targets = [r["target"] for r in rs if "target" in r]
        if targets:
            judged = [r.get("interleaved", r["memwall_speedup"]) for r in rs if "target" in r]
            mid = statistics.median(judged)
            row["target"] = targets[0]
            row["judged_range"] = f"{min(judged):.3g}-{max(judged):.3g}"
            row["met_runs"] = f"{sum(r['met'] == 'yes' for r in rs if 'target' in r)}/{len(judged)}"
            row["met"] = "yes" if mid >= targets[0] else "NO"
        out.append(row)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(rows: list[dict], markdown: bool, file=sys.stdout) -> None:
    if not rows:
        print("(no rows)", file=file)
        return
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    if markdown:
        print("| " + " | ".join(cols) + " |", file=file)
        print("|" + "---|" * len(cols), file=file)
        for c in cells:
            print("| " + " | ".join(c) + " |", file=file)
        return
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=file)
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)), file=file)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="select", help="pytest -k expression selecting benchmarks")
    ap.add_argument("--json", dest="json_in", nargs="+", metavar="JSON",
                    help="read saved pytest-benchmark JSON(s) instead of running (several: combined)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N", help="run the selection N times, combine")
    ap.add_argument("--save-json", metavar="DIR", help="also write each run's JSON to DIR/run<i>.json")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat: expected a run count >= 1, got {args.repeat}")
    if args.json_in:
        datas = []
        for path in args.json_in:
            with open(path, encoding="utf-8") as fh:
                datas.append(json.load(fh))
    else:
        datas = [run_benchmarks(args.select, args.pytest_args) for _ in range(args.repeat)]
    if args.save_json:
        os.makedirs(args.save_json, exist_ok=True)
        for i, data in enumerate(datas):
            with open(os.path.join(args.save_json, f"run{i}.json"), "w", encoding="utf-8") as fh:
                json.dump(data, fh)
    summaries = [summarize(d) for d in datas]
    rows, tables = summaries[-1]
    if len(datas) > 1:
        rows = combine_runs([s[0] for s in summaries])
    data = datas[-1]
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
          f"threads: {os.environ.get('MEMWALL_BENCH_THREADS', 'all')}"
          + (f", runs: {len(datas)} (medians over runs; tables below: the last run)" if len(datas) > 1 else ""))
    print_table(rows, args.markdown)
    for name, table in tables:
        print(f"\n{name}")
        print_table(table, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel-side CLI commands: ``info`` (host CPU, active kernel paths) and ``formats`` (float formats)."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="host CPU features, active kernel paths, library versions, threads")
    p.add_argument("--json", action="store_true", help="emit one JSON object")
    p.set_defaults(func=_info)

    p = sub.add_parser("formats", help="table of number formats: sign/exponent/mantissa bits, range, epsilon")
    p.add_argument("--json", action="store_true", help="emit one JSON object")
    p.set_defaults(func=_formats)

    p = sub.add_parser("bench", help="run the kernel benchmarks of a source checkout and print the ratio table")
    p.add_argument("-k", dest="select", help="pytest -k expression selecting benchmarks (e.g. gemm, spmm)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--threads", type=int, help="threads for every library (default: all CPUs)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run the selection N times: medians over the runs, and in how many each target was met")
    p.set_defaults(func=_bench)


def host_info() -> dict:
    """What ``memwall info`` reports, as a dict."""
    import numba
    import numpy as np
    import scipy

    from ..kernels import config, cpu

    interesting = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16", "avxvnni",
                   "amx-int8", "amx-bf16")
    feats = cpu.host_features()
    info = {
        "cpu_model": cpu.cpu_model(),
        "llvm_cpu": cpu.host_cpu_name(),
        "features": {f: (f in feats) for f in interesting},
        "isa_requested": config.requested_isa(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpus": cpu.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.config.THREADING_LAYER,
    }
    try:
        from ..kernels import gemm

        info["kernel_paths"] = gemm.active_paths()
    except (ImportError, AttributeError):
        info["kernel_paths"] = {}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info()
        ]
    except ImportError:
        info["blas"] = []
    return info


def _info(args) -> int:
    info = host_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"CPU            {info['cpu_model']} (LLVM: {info['llvm_cpu']}, {info['cpus']} CPUs)")
    print("features       " + " ".join(f"{k}{'+' if v else '-'}" for k, v in info["features"].items()))
    print(f"MEMWALL_ISA    {info['isa_requested']}")
    for k, v in info["kernel_paths"].items():
        print(f"path {k:<10}{v}")
    print(f"numba {info['numba']}  numpy {info['numpy']}  scipy {info['scipy']}")
    print(f"numba threads  {info['numba_threads']} (layer: {info['numba_threading_layer']})")
    for b in info["blas"]:
        print(f"BLAS           {b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)")
    return 0


def _formats(args) -> int:
    from ..kernels.quant import float_format_table

    rows = float_format_table()
    if args.json:
        print(json.dumps({"formats": rows}, indent=2))
        return 0
    cols = list(rows[0].keys())
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths)))
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _find_benchmarks() -> str | None:
    """The benchmarks/ folder of the source checkout this package was installed from (editable), or of cwd."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.dirname(here), os.getcwd()):
        cand = os.path.join(root, "benchmarks", "report.py")
        if os.path.exists(cand):
            return cand
    return None


def _bench(args) -> int:
    import os
    import subprocess
    import sys

    script = _find_benchmarks()
    if script is None:
        raise FileNotFoundError("benchmarks/report.py not found: run `memwall bench` from a memwall source checkout")
    env = dict(os.environ)
    if args.threads:
        env["MEMWALL_BENCH_THREADS"] = str(args.threads)
    cmd = [sys.executable, script]
    if args.select:
        cmd += ["-k", args.select]
    if args.markdown:
        cmd.append("--markdown")
    if args.repeat != 1:
        cmd += ["--repeat", str(args.repeat)]
    return subprocess.call(cmd, env=env)

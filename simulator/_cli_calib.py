"""``memwall calibrate`` (measure this machine, write the host profile) and ``memwall validate`` (publish the
model's error against our own kernels on this machine and against published GPU measurements)."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure this machine and write the host device profile")
    p.add_argument("--quick", action="store_true", help="fewer, smaller measurements (under a minute)")
    p.add_argument("--out", help="where to write the profile (default: $MEMWALL_HOST_PROFILE or "
                                 "~/.config/memwall/host.toml)")
    p.add_argument("--threads", type=int, help="threads for BLAS and Numba (default: all CPUs)")
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("validate", help="measured vs predicted: the model's error on this machine and on "
                                        "published GPU results")
    p.add_argument("--quick", action="store_true", help="a smaller sweep")
    p.add_argument("--device", default="host", help="profile to predict this machine with (default: host)")
    p.add_argument("--gpu-only", action="store_true", help="only the published GPU cases (no measurements)")
    p.add_argument("--json", action="store_true", help="emit one JSON object")
    p.add_argument("--calibrate", action="store_true",
                   help="measure the calibration points in the same interleaved rounds as the sweep, write the "
                        "host profile, then validate against it: no machine drift between calibration and "
                        "validation")
    p.add_argument("--out", help="with --calibrate: where to write the profile (default: $MEMWALL_HOST_PROFILE or "
                                 "~/.config/memwall/host.toml)")
    p.set_defaults(func=_validate)


def _progress(enabled: bool):
    if not enabled:
        return None

    def show(done: int, total: int, what: str) -> None:
        width = 24
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what[:40]:<40}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _calibrate(args) -> int:
    from .calibrate import calibrate

    result = calibrate(out=args.out, quick=args.quick, threads=args.threads,
                       progress=_progress(sys.stderr.isatty() or not args.json))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {result['path']}")
        tm = result["timing"]
        print(f"  timing: {tm['statistic']}; {tm['rounds']} rounds in {tm['wall_s']:.0f} s")
        for k, v in result["measured"].items():
            print(f"  {k:<28} {v:.4g}")
    return 0


def _fmt_err(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _validate(args) -> int:
    from .validate import validate

    if args.calibrate and args.device not in (None, "host"):
        raise ValueError(f"--device {args.device}: --calibrate writes and validates the host profile (leave "
                         "--device out or pass host)")
    if args.calibrate and args.gpu_only:
        raise ValueError("--calibrate measures this machine; it cannot be combined with --gpu-only")
    if args.out and not args.calibrate:
        raise ValueError("--out: only with --calibrate (the profile it writes)")
    res = validate(args.device, quick=args.quick, include_host=not args.gpu_only,
                   include_crossover=not args.gpu_only, progress=_progress(not args.json),
                   calibrate=args.calibrate, out=args.out)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    for part in ("host", "gpu"):
        if part not in res:
            continue
        print(f"\n{part}: predicted vs measured")
        print(f"  {'case':<52} {'family':<14} {'measured':>11} {'predicted':>11} {'unit':<12} {'error':>7}  bound")
        for c in res[part]["cases"]:
            print(f"  {c['id'][:52]:<52} {c['family']:<14} {c['measured']:>11.4g} {c['predicted']:>11.4g} "
                  f"{c['unit']:<12} {_fmt_err(c['error']):>7}  {c['bound']}")
    host = res.get("host")
    cal = res.get("calibration")
    if cal:
        print(f"\ncalibrated together with this sweep ({cal['rounds']} shared rounds, {cal['threads']} threads): "
              f"wrote {cal['path']}")
    if host:
        tm = host["timing"]
        print(f"\nhost timing: {tm['statistic']}; {tm['rounds']} rounds in {tm['wall_s']:.0f} s, "
              f"{tm['threads']} threads")
        print("anchors (calibration points re-measured now; drift = measured / calibrated - 1, the noise floor):")
        for a in host["anchors"]:
            print(f"  {a['id'][:60]:<60} {a['measured']:>10.4g} s vs {a['calibrated']:>10.4g} s  "
                  f"drift {100 * a['drift']:+.1f}%")
        om = host["on_medians"]
        print(f"host error on medians instead of minima: median {_fmt_err(om['median_abs_error'])} / p90 "
              f"{_fmt_err(om['p90_abs_error'])}")
    print("\nabsolute error by family (median / p90):")
    for fam, s in res["families"].items():
        print(f"  {fam:<16} {_fmt_err(s['median_abs_error']):>7} / {_fmt_err(s['p90_abs_error']):>7}  "
              f"(n={s['n']}) {'ok' if s['target_met'] else 'ABOVE TARGET'}")
    print(f"  {'overall':<16} {_fmt_err(res['median_abs_error']):>7} / {_fmt_err(res['p90_abs_error']):>7}  "
          f"(n={res['n']}) {'ok' if res['target_met'] else 'ABOVE TARGET'}")
    if res.get("crossover"):
        print("\ncrossover sparsity vs dense fp32 BLAS, same shape / batch / threads / statistic, same sparsity "
              "grid (measured / predicted; model's exact value):")
        for r in res["crossover"]:
            m = "-" if r["measured_crossover"] is None else f"{r['measured_crossover']:.2f}"
            p = "-" if r["predicted_crossover"] is None else f"{r['predicted_crossover']:.2f}"
            pc = r.get("predicted_continuous")
            pc = "-" if pc is None else f"{pc:.2f}"
            print(f"  {r['format']:<10} {m:>6} / {p:>6}  ({pc})  "
                  f"{'ok' if r['target_met'] else 'off by > 10 pp'}")
    return 0

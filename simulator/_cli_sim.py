"""Simulator commands of the ``memwall`` CLI.

``devices``, ``device NAME|PATH``, ``estimate``, ``model NAME``, ``crossover``, ``trend``,
``roofline --out FILE`` and ``report`` (the main job: compression options for a default LLM decode step and
a default CNN on P100 / A100 / H100 and the host profile, with no arguments needed).

Human tables by default, ``--json`` (one JSON object) and ``--csv`` where the output is a table.  Only the
standard library is imported here; the handlers import the (NumPy-only) simulator lazily and never Numba,
so ``memwall estimate`` answers well under a second.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

#: Defaults of ``memwall report``.
REPORT_DEVICES = ("p100", "a100-80gb", "h100-sxm")
REPORT_LLM = ("llama-2-7b", 1, 1024)  # model, batch, context (decode)
REPORT_CNN = ("resnet50", 32)  # model, batch
DEFAULT_DEVICE = "a100-80gb"
DEFAULT_FIGURE = "memwall-roofline.png"

_DTYPE_HELP = "fp32 tf32 fp16 bf16 fp8 int8 int4"


# ----------------------------------------------------------------------------------------- arguments
def _add_output(p, csv: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="emit one JSON object")
    if csv:
        p.add_argument("--csv", action="store_true", help="emit the table as CSV")


def _add_compression(p) -> None:
    g = p.add_argument_group("compression (unset dtypes: the device baseline, FP16 on GPUs / FP32 on CPUs)")
    g.add_argument("--weights", metavar="DTYPE", help=f"weight dtype: {_DTYPE_HELP}")
    g.add_argument("--acts", metavar="DTYPE", help=f"activation dtype: {_DTYPE_HELP}")
    g.add_argument("--group", metavar="G", help="quantization group size along K (int8/int4/fp8 weights)")
    g.add_argument("--format", default="dense", metavar="FMT", help="dense | csr | bsr:RxC | nm:N:M | channel")
    g.add_argument("--sparsity", type=float, metavar="S", help="fraction pruned in [0, 1) (csr, bsr, channel)")
    g.add_argument("--baseline", metavar="W[/A]",
                   help="dense baseline for speedups, e.g. fp16, fp32 or int8/fp16 (default: fp16 GPU, fp32 CPU)")
    g.add_argument("--warm", action="store_true", help="weights already resident in a cache that holds them")


def _add_pass(p, phase: str = "prefill") -> None:
    g = p.add_argument_group("workload pass")
    g.add_argument("--batch", type=int, default=None, help="sequences or images (default 1)")
    g.add_argument("--seq", type=int, help="prompt tokens per sequence (prefill; default: the model's)")
    g.add_argument("--phase", default=phase, help="prefill | decode (default %(default)s)")
    g.add_argument("--context", type=int, help="tokens already in the KV cache (decode; default 1024)")


def register(sub) -> None:
    p = sub.add_parser("devices", help="list the device profiles (peaks, bandwidth, ridge point, power)")
    _add_output(p)
    p.set_defaults(func=_devices)

    p = sub.add_parser("device", help="show one device profile (by id, 'host', or a TOML path)")
    p.add_argument("name", metavar="NAME|PATH")
    _add_output(p, csv=False)
    p.set_defaults(func=_device)

    p = sub.add_parser("estimate", help="cost of one GEMM or layer under a compression config, explained",
                       description="Estimate one GEMM (--gemm M N K: (M x K) activations times a K x N weight, "
                                   "stored N x K) or one layer (--layer SPEC) and explain it: ops, bytes per "
                                   "memory level, time per roof, the bound, energy by component, speedup.")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="device id, 'host' or TOML path (default %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gemm", nargs=3, type=int, metavar=("M", "N", "K"), help="GEMM shape")
    src.add_argument("--layer", metavar="SPEC",
                     help="linear:IN:OUT | conv:CIN:COUT:K:HW[:STRIDE[:PAD[:GROUPS]]] | attention:HEADS:KV:DIM | "
                          "MODEL/LAYER (e.g. llama-2-7b/model.layers.0.mlp.down_proj)")
    p.add_argument("--explain", action="store_true",
                   help="full breakdown: ops, bytes per level, time per roof, bound, energy, notes (the default)")
    p.add_argument("--brief", action="store_true", help="one line per op instead of the full breakdown")
    _add_compression(p)
    _add_pass(p)
    _add_output(p)
    p.set_defaults(func=_estimate)

    p = sub.add_parser("model", help="whole-model totals for one pass: time, tokens/s, TTFT, energy, per layer")
    p.add_argument("name", metavar="NAME", help="zoo model (see `memwall model list`) or 'list'")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="device id, 'host' or TOML path (default %(default)s)")
    p.add_argument("--layers", type=int, default=12, metavar="N", help="show the N slowest layers (0: all)")
    p.add_argument("--generate", type=int, metavar="N",
                   help="decoders: also estimate a whole generation, prefill of --seq prompt tokens (TTFT) "
                        "then N decode steps")
    _add_compression(p)
    _add_pass(p)
    _add_output(p)
    p.set_defaults(func=_model)

    p = sub.add_parser("crossover", help="sparsity at which each sparse format beats dense / INT8 / INT4")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="device (default %(default)s)")
    p.add_argument("--gemm", nargs=3, type=int, default=[1, 4096, 4096], metavar=("M", "N", "K"),
                   help="GEMM shape (default 1 4096 4096: a decode step of a 4096-wide projection)")
    p.add_argument("--format", action="append", metavar="FMT",
                   help="sparse format to compare (repeatable; default csr, bsr:16x16, bsr:32x32, channel, nm:2:4)")
    p.add_argument("--weights", metavar="DTYPE", help="dtype of the sparse values (default: the baseline's)")
    p.add_argument("--acts", metavar="DTYPE", help="activation dtype (default: the baseline's)")
    p.add_argument("--warm", action="store_true", help="weights resident in cache")
    _add_output(p)
    p.set_defaults(func=_crossover)

    p = sub.add_parser("trend", help="memory-wall trend: peak vs bandwidth and ridge point, P100 -> H100")
    p.add_argument("--device", action="append", metavar="ID", help="devices in order (repeatable; default "
                   "p100 v100 a100-40gb h100-sxm)")
    p.add_argument("--model", default="resnet50", help="model whose layers are classified (default %(default)s)")
    p.add_argument("--dtype", default="fp16", help="dtype of the compute roof (default %(default)s)")
    _add_pass(p)
    _add_output(p)
    p.set_defaults(func=_trend)

    p = sub.add_parser("roofline", help="roofline figure with a model's layers and compressed variants")
    p.add_argument("--out", required=True, metavar="FILE", help="output figure (.png, .svg or .pdf)")
    p.add_argument("--device", action="append", metavar="ID", help="devices (repeatable; default p100 a100-80gb "
                   "h100-sxm)")
    p.add_argument("--model", default="llama-2-7b", help="model (default %(default)s)")
    _add_compression(p)
    _add_pass(p, phase="decode")
    _add_output(p, csv=False)
    p.set_defaults(func=_roofline)

    p = sub.add_parser("report", help="what compression buys: default LLM decode + CNN on P100/A100/H100 (+host)",
                       description="With no arguments: llama-2-7b decode (batch 1, context 1024) and resnet50 "
                                   "(batch 32) on P100, A100-80GB, H100-SXM and the host profile when one "
                                   "exists, under a list of compression options; writes the roofline figure "
                                   "when matplotlib is installed.")
    p.add_argument("--device", action="append", metavar="ID", help="devices (repeatable; default p100 a100-80gb "
                   "h100-sxm, plus host when a host profile exists)")
    p.add_argument("--llm", default=REPORT_LLM[0], help="decoder model (default %(default)s; 'none' to skip)")
    p.add_argument("--llm-batch", type=int, default=REPORT_LLM[1], help="decode batch (default %(default)s)")
    p.add_argument("--context", type=int, default=REPORT_LLM[2], help="decode context (default %(default)s)")
    p.add_argument("--cnn", default=REPORT_CNN[0], help="CNN (default %(default)s; 'none' to skip)")
    p.add_argument("--cnn-batch", type=int, default=REPORT_CNN[1], help="CNN batch (default %(default)s)")
    p.add_argument("--out", default=DEFAULT_FIGURE, metavar="FILE",
                   help="roofline figure written when matplotlib is installed (default ./%(default)s)")
    p.add_argument("--no-plot", action="store_true", help="do not write the figure")
    p.add_argument("--warm", action="store_true", help="weights resident in cache")
    _add_output(p)
    p.set_defaults(func=_report)


# ----------------------------------------------------------------------------------------- formatting
_PREFIX = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def _si(x, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "-"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return f"0 {unit}".strip()
    for f, p in _PREFIX:
        if abs(x) >= f:
            return f"{x / f:.{digits}g} {p}{unit}".strip()
    return f"{x:.{digits}g} {unit}".strip()


def _time(s) -> str:
    if s is None:
        return "-"
    s = float(s)
    for f, u in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(s) >= f:
            return f"{s / f:.3g} {u}"
    return f"{s * 1e9:.3g} ns"


def _energy(j) -> str:
    if j is None:
        return "-"
    j = float(j)
    for f, u in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ")):
        if abs(j) >= f:
            return f"{j / f:.3g} {u}"
    return f"{j * 1e9:.3g} nJ"


def _bytes(b) -> str:
    return _si(b, "B")


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _table(rows: list[list], header: list[str], right=()) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_csv(rows: list[dict], fields: list[str]) -> None:
    import csv

    w = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def _finite(obj):
    """``obj`` with non-finite floats as ``None`` (strict JSON has no NaN / Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return _finite(obj.to_dict())
    return obj


def _dump(obj) -> None:
    print(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False))


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


# ----------------------------------------------------------------------------------------- helpers
def _baseline(spec, device):
    from .analysis import baseline_for, make_compression

    if spec is None:
        return baseline_for(device)
    w, _, a = str(spec).partition("/")
    return make_compression(weights=w.strip(), acts=(a.strip() or None) if a else w.strip())


def _compression(args, device):
    from .analysis import make_compression

    return make_compression(weights=args.weights, acts=args.acts, group=args.group, format=args.format,
                            sparsity=args.sparsity, device=device)


def _check_format_only_flags(args) -> None:
    if args.sparsity is not None and (args.format or "dense").strip().lower() == "dense":
        raise ValueError("--sparsity needs a sparse --format (csr, bsr:RxC, channel; nm:N:M implies its own)")


def _step_kwargs(args) -> dict:
    return dict(batch=args.batch if args.batch is not None else 1, seq=args.seq, phase=args.phase,
                context=args.context)


def _parse_layer(spec: str, args):
    """(label, list of ops) for a --layer SPEC."""
    from .workload import Attention, Conv2d, Linear, Step
    from .zoo import list_models, load_model

    spec = spec.strip()
    if "/" in spec:
        mname, lname = spec.split("/", 1)
        model = load_model(mname)
        layer = next((l for l in model.layers if l.name == lname), None)
        if layer is None:
            near = [l.name for l in model.layers if lname.split(".")[-1] in l.name][:6]
            hint = f"; e.g. {', '.join(near)}" if near else f"; first layers: {', '.join(l.name for l in model.layers[:6])}"
            raise ValueError(f"--layer: {model.name} has no layer {lname!r}{hint}")
        step = model.step(**_step_kwargs(args))
        ops = layer.ops(step)
        if not ops:
            raise ValueError(f"--layer: {model.name}/{layer.name} runs no op of its own (a {layer.kind} folded into "
                             "the preceding layer at inference)")
        return f"{model.name}/{layer.name}", ops
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    try:
        nums = [int(v) for v in rest.split(":")] if rest else []
    except ValueError:
        raise ValueError(f"--layer {spec!r}: expected integers after '{kind}:'") from None
    b = args.batch if args.batch is not None else 1
    if kind == "linear":
        if len(nums) != 2:
            raise ValueError(f"--layer {spec!r}: expected linear:IN:OUT")
        layer = Linear("linear", nums[0], nums[1])
        step = Step(batch=b, seq=args.seq or 1)
    elif kind == "conv":
        if not 4 <= len(nums) <= 7:
            raise ValueError(f"--layer {spec!r}: expected conv:CIN:COUT:K:HW[:STRIDE[:PAD[:GROUPS]]]")
        cin, cout, k, hw = nums[:4]
        stride, pad, groups = (nums[4:] + [1, 0, 1][len(nums) - 4:])[:3]
        layer = Conv2d("conv", cin, cout, k, hw, stride=stride, padding=pad, groups=groups)
        step = Step(batch=b)
    elif kind == "attention":
        if len(nums) != 3:
            raise ValueError(f"--layer {spec!r}: expected attention:HEADS:KV_HEADS:HEAD_DIM")
        layer = Attention("attention", nums[0], nums[1], nums[2], causal=True, kv_cache=args.phase == "decode")
        if args.phase == "decode":
            step = Step(batch=b, seq=1, context=args.context if args.context is not None else 1024)
        elif args.phase == "prefill":
            step = Step(batch=b, seq=args.seq or 512, context=args.context or 0)
        else:
            raise ValueError(f"phase: expected prefill or decode, got {args.phase!r}")
    else:
        raise ValueError(f"--layer {spec!r}: expected linear:..., conv:..., attention:... or MODEL/LAYER "
                         f"(models: {', '.join(list_models())})")
    return spec, layer.ops(step)


# ----------------------------------------------------------------------------------------- devices
def _device_row(d) -> dict:
    def pk(dt):
        return d.peak(dt) if d.has_dtype(dt) else None

    return {"id": d.id, "name": d.name, "kind": d.kind, "fp32_ops_per_s": pk("fp32"), "fp16_ops_per_s": pk("fp16"),
            "int8_ops_per_s": pk("int8"), "int4_ops_per_s": pk("int4"), "dram_bandwidth": d.dram_bandwidth,
            "llc_bytes": d.memory_levels[-2].capacity_bytes * d.memory_levels[-2].instances
            if len(d.memory_levels) > 1 else None,
            "ridge_fp16": (pk("fp16") / d.dram_bandwidth) if pk("fp16") else None,
            "ridge_fp32": (pk("fp32") / d.dram_bandwidth) if pk("fp32") else None,
            "tdp_w": d.tdp_w, "sparse_2to4": d.has_dtype("fp16", sparse=True) or d.has_dtype("int8", sparse=True)}


def _host_device():
    """The calibrated host profile when one exists (a broken one is reported on stderr and skipped)."""
    from .devices import DeviceError, host_profile_path, load_device

    if not host_profile_path().is_file():
        return None
    try:
        return load_device("host")
    except DeviceError as exc:
        print(f"memwall: skipping the host profile: {exc}", file=sys.stderr)
        return None


def _all_devices():
    from .devices import list_devices, load_device

    devs = [load_device(i) for i in list_devices()]
    host = _host_device()
    return devs + ([host] if host is not None else [])


def _devices(args) -> int:
    rows = [_device_row(d) for d in _all_devices()]
    if args.json:
        _dump({"devices": rows})
        return 0
    if args.csv:
        _write_csv(rows, list(rows[0]) if rows else ["id"])
        return 0
    body = [[r["id"], r["name"], r["kind"], _si(r["fp32_ops_per_s"], "op/s"), _si(r["fp16_ops_per_s"], "op/s"),
             _si(r["int8_ops_per_s"], "op/s"), _si(r["dram_bandwidth"], "B/s"), _bytes(r["llc_bytes"]),
             "-" if r["ridge_fp16"] is None else f"{r['ridge_fp16']:.0f}", f"{r['tdp_w']:.0f} W",
             "yes" if r["sparse_2to4"] else "no"] for r in rows]
    print(_table(body, ["id", "name", "kind", "fp32", "fp16", "int8", "DRAM", "LLC", "ridge fp16", "TDP", "2:4"],
                 right={3, 4, 5, 6, 7, 8, 9}))
    print("\npeaks: best unit, dense; ridge: fp16 ops per DRAM byte.  `memwall device ID` shows one profile.")
    return 0


def _device(args) -> int:
    from .devices import load_device

    d = load_device(args.name)
    if args.json:
        _dump(d.to_dict())
        return 0
    print(f"{d.name}  ({d.id}, {d.kind}, {d.process_nm:g} nm)  {d.description}".rstrip())
    print(f"profile  {d.path}")
    print(f"power    TDP {d.tdp_w:g} W, idle {d.idle_w:g} W;  kernel launch {_time(d.kernel_launch_s)}")
    rows = []
    for u in d.units.values():
        for dt, v in u.dense.items():
            sp = u.sparse.get(dt)
            rows.append([u.name, dt, _si(v, "op/s"), _si(sp, "op/s") if sp else "-",
                         f"{v / d.dram_bandwidth:.1f}", f"{d.energy_j_per_op.get(dt, 0) * 1e12:.3g} pJ"])
    print("\ncompute")
    print(_table(rows, ["unit", "dtype", "dense", "2:4 sparse", "ridge (op/B)", "energy/op"], right={2, 3, 4, 5}))
    rows = [[lv.name, _bytes(lv.capacity_bytes) + (f" x{lv.instances}" if lv.instances > 1 else ""),
             _si(lv.bandwidth_bytes_per_s, "B/s"), f"{lv.energy_j_per_byte * 1e12:.3g} pJ"] for lv in d.memory_levels]
    print("\nmemory (small -> large)")
    print(_table(rows, ["level", "capacity", "bandwidth", "energy/byte"], right={1, 2, 3}))
    eff = d.efficiency
    print("\nefficiency  " + ", ".join(f"{k.replace('_fraction', '')} {getattr(eff, k):.2f}"
                                       for k in vars(eff) if getattr(eff, k) is not None))
    if d.interconnects:
        print("links       " + "; ".join(f"{n} {_si(i.bandwidth_bytes_per_s, 'B/s')} {_time(i.latency_s)}"
                                        for n, i in d.interconnects.items()))
    return 0


# ----------------------------------------------------------------------------------------- estimate
def _estimate_ops(device, ops, comp, base, warm):
    from . import roofline
    from .analysis import _dense
    from .ops import GemmOp

    res = []
    for op in ops:
        c, b = comp, base
        if not (isinstance(op, GemmOp) and op.weight_operand):
            c, b = _dense(comp, keep_group=False), _dense(base, keep_group=False)
        r = roofline.estimate(device, op, c, warm=warm, baseline=b)
        res.append((op, r, c))
    return res


def _explain(device, op, r, comp, base) -> str:
    from .ops import GemmOp

    lines = []
    if isinstance(op, GemmOp):
        shape = f"GEMM {op.m}x{op.n}x{op.k}" + (f" x{op.count}" if op.count > 1 else "")
        what = "weights" if op.weight_operand else "activations x activations"
        lines.append(f"{op.name}: {shape} (M x N x K, {what}) on {device.name} — {comp.label} "
                     f"vs baseline {base.label}")
    else:
        lines.append(f"{op.name}: memory op ({op.kind}) on {device.name} — {comp.label}")
    lines.append(f"  ops        {_si(r.ops, 'op')}")
    bl = r.bytes_by_level
    lines.append("  bytes      " + "   ".join(f"{k} {_bytes(v)}" for k, v in bl.items()))
    tr = r.time_by_roof
    lines.append("  time/roof  " + "   ".join(f"{k} {_time(v)}" for k, v in tr.items()))
    lines.append(f"  time       {_time(r.time_s)}  (bound: {r.bound})")
    ec = r.energy_by_component
    lines.append(f"  energy     {_energy(r.energy_j)}  (" + ", ".join(f"{k} {_energy(v)}" for k, v in ec.items()) + ")")
    lines.append(f"  speedup    {_x(r.speedup)} vs {base.label}")
    for n in getattr(r, "notes", ()):
        lines.append(f"  note       {n}")
    return "\n".join(lines)


def _estimate(args) -> int:
    from .devices import load_device
    from .ops import GemmOp

    device = load_device(args.device)
    _check_format_only_flags(args)
    comp = _compression(args, device)
    base = _baseline(args.baseline, device)
    if args.gemm:
        m, n, k = args.gemm
        for v, name in ((m, "M"), (n, "N"), (k, "K")):
            if v < 1:
                raise ValueError(f"--gemm: {name} must be >= 1, got {v}")
        label, ops = f"gemm {m}x{n}x{k}", [GemmOp("gemm", m=m, n=n, k=k)]
    elif args.layer:
        label, ops = _parse_layer(args.layer, args)
    else:
        raise ValueError("give a shape: --gemm M N K or --layer SPEC (see memwall estimate --help)")
    res = _estimate_ops(device, ops, comp, base, args.warm)
    total_t = sum(r.time_s for _, r, _ in res)
    total_e = sum(r.energy_j for _, r, _ in res)
    base_t = sum(r.time_s * r.speedup for _, r, _ in res)
    dominant = max(res, key=lambda t: t[1].time_s)[1]
    speedup = base_t / total_t if total_t > 0 else 1.0
    if args.json:
        if len(res) == 1:
            out = dict(res[0][1].to_dict())
        else:
            out = {"ops": [dict(r.to_dict(), op=op.name) for op, r, _ in res]}
        out.update(workload=label, device=device.id, compression=comp.to_dict(), baseline=base.to_dict(),
                   time_s=total_t, bound=dominant.bound, energy_j=total_e, speedup=speedup,
                   baseline_time_s=base_t)
        _dump(out)
        return 0
    if args.csv:
        rows = [{"op": op.name, "time_s": r.time_s, "bound": r.bound, "energy_j": r.energy_j, "speedup": r.speedup,
                 "ops": r.ops, "compression": c.label, **{f"bytes_{k}": v for k, v in r.bytes_by_level.items()}}
                for op, r, c in res]
        _write_csv(rows, list(dict.fromkeys(k for r in rows for k in r)))
        return 0
    if args.brief and not args.explain:
        for op, r, c in res:
            print(f"{op.name}: {_time(r.time_s)}  bound {r.bound}  {_energy(r.energy_j)}  {_x(r.speedup)} "
                  f"vs {base.label}  [{c.label}]")
    else:
        print("\n\n".join(_explain(device, op, r, c, base) for op, r, c in res))
    if len(res) > 1:
        print(f"\ntotal {label}: {_time(total_t)}  bound {dominant.bound}  {_energy(total_e)}  "
              f"{_x(speedup)} vs {base.label}")
    return 0


# ----------------------------------------------------------------------------------------- model
def _model_estimate(args, model, device):
    from .analysis import estimate_model

    _check_format_only_flags(args)
    comp = _compression(args, device)
    base = _baseline(args.baseline, device)
    return estimate_model(model, device, comp, baseline=base, warm=args.warm, **_step_kwargs(args))


def _model_list(args) -> int:
    from .zoo import MODEL_INFO, PUBLISHED_PARAMS

    rows = [{"model": n, "params": PUBLISHED_PARAMS[n], "description": MODEL_INFO[n]} for n in MODEL_INFO]
    if args.json:
        _dump({"models": rows})
    elif args.csv:
        _write_csv(rows, ["model", "params", "description"])
    else:
        print(_table([[r["model"], f"{r['params']:,}", r["description"]] for r in rows],
                     ["model", "params", "description"], right={1}))
    return 0


def _model(args) -> int:
    from .devices import load_device
    from .zoo import load_model

    if args.name == "list":
        return _model_list(args)
    model = load_model(args.name)
    device = load_device(args.device)
    r = _model_estimate(args, model, device)
    gen = None
    if args.generate is not None:
        from .analysis import estimate_generation

        gen = estimate_generation(model, device, _compression(args, device), batch=_step_kwargs(args)["batch"],
                                  prompt=args.seq or model.default_seq, new_tokens=args.generate,
                                  baseline=_baseline(args.baseline, device), warm=args.warm)
    if args.json:
        d = r.to_dict()
        if gen is not None:
            d["generation"] = gen.to_dict()
        _dump(d)
        return 0
    if args.csv:
        rows = [l.to_dict() for l in r.layers]
        _write_csv(rows, ["name", "kind", "params", "ops", "macs", "time_s", "baseline_time_s", "speedup", "bound",
                          "bound_class", "energy_j", "compression"])
        return 0
    st = r.step
    what = {"cnn": f"batch {st.batch}", "encoder": f"batch {st.batch} x {st.seq} tokens"}.get(
        model.family, f"{r.phase}, batch {st.batch}, " + (f"{st.seq} prompt tokens" if r.phase == "prefill"
                                                         else f"context {st.context}"))
    print(f"{model.name} ({model.params:,} params) on {device.name}: {what}")
    print(f"compression  {r.compression}   baseline {r.baseline}")
    print(f"time         {_time(r.time_s)}   speedup {_x(r.speedup)}   bound: {r.bound} "
          f"({', '.join(f'{k} {v / r.time_s:.0%}' for k, v in r.time_by_bound.items())} of the time)")
    if model.family == "cnn":
        print(f"throughput   {r.images_per_s:,.1f} images/s   energy {_energy(r.energy_j)} "
              f"({_energy(r.energy_per_image_j)}/image)")
    else:
        extra = f"   TTFT {_time(r.ttft_s)}" if r.ttft_s is not None else ""
        print(f"throughput   {r.tokens_per_s:,.1f} tokens/s{extra}   energy {_energy(r.energy_j)} "
              f"({_energy(r.energy_per_token_j)}/token)")
    print(f"weights      {_bytes(r.weight_bytes)} as stored ("
          f"{'fits' if r.fits_in_memory else 'does NOT fit'} in {_bytes(r.device_memory_bytes)} of device memory)")
    print(f"work         {_si(r.ops, 'op')}   " + "   ".join(f"{k} {_bytes(v)}" for k, v in r.bytes_by_level.items()))
    print("energy by    " + ", ".join(f"{k} {_energy(v)}" for k, v in r.energy_by_component.items()))
    layers = sorted(r.layers, key=lambda l: -l.time_s)
    n = len(layers) if args.layers <= 0 else min(args.layers, len(layers))
    print(f"\n{'all' if n == len(layers) else f'{n} slowest of {len(layers)}'} layers:")
    body = [[l.name, l.kind, _time(l.time_s), f"{l.time_s / r.time_s:.1%}", l.bound, _energy(l.energy_j),
             _x(l.speedup), l.compression] for l in layers[:n]]
    print(_table(body, ["layer", "kind", "time", "share", "bound", "energy", "speedup", "config"], right={2, 3, 5, 6}))
    for note in r.notes:
        print(f"note: {note}")
    if gen is not None:
        print(f"\ngeneration   prompt {gen.prompt} + {gen.new_tokens} new tokens, batch {gen.batch}: "
              f"TTFT {_time(gen.ttft_s)}, decode {gen.decode_tokens_per_s:,.1f} tokens/s, "
              f"total {_time(gen.time_s)} ({gen.tokens_per_s:,.1f} tokens/s end to end), "
              f"{_energy(gen.energy_per_token_j)}/token, {_x(gen.speedup)} vs {r.baseline}")
    return 0


# ----------------------------------------------------------------------------------------- crossover
def _crossover(args) -> int:
    from .analysis import format_crossover
    from .devices import load_device

    device = load_device(args.device)
    m, n, k = args.gemm
    res = format_crossover(device, m, n, k, formats=args.format, weights=args.weights, acts=args.acts,
                           warm=args.warm)
    rows = [c.to_dict() for c in res]
    if args.json:
        _dump({"device": device.id, "gemm": [m, n, k], "crossovers": rows})
        return 0
    if args.csv:
        flat = [dict(format=c.format, values=c.values, **t.to_dict()) for c in res for t in c.targets]
        _write_csv(flat, ["format", "values", "target", "label", "target_time_s", "sparsity", "time_s", "note"])
        return 0
    print(f"GEMM {m}x{n}x{k} on {device.name}: sparsity at which each format beats a dense config")
    labels = [t.label for t in res[0].targets] if res else []
    header = ["format", "values"] + [f"vs {lb} ({_time(t.target_time_s)})" for lb, t in zip(labels, res[0].targets)]
    body, notes = [], []
    for c in res:
        cells = []
        for t in c.targets:
            cells.append("none" if t.sparsity is None else _pct(t.sparsity))
            if t.note and t.note not in ("fixed sparsity", "faster at any sparsity") and not c.note.startswith("not"):
                notes.append(f"{c.format} vs {t.label}: {t.note}")
        body.append([c.format, c.values] + cells)
        if c.note.startswith("not"):
            notes.append(f"{c.format}: {c.note}")
    print(_table(body, header + [], right=set(range(2, 2 + len(labels)))))
    if any(c.note == "fixed sparsity" for c in res):
        print("(N:M formats have one fixed sparsity: shown where they win, 'none' where they do not)")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    return 0


# ----------------------------------------------------------------------------------------- trend
def _trend(args) -> int:
    from .analysis import TREND_DEVICES, memory_wall_trend

    devices = args.device or list(TREND_DEVICES)
    pts = memory_wall_trend(devices, model=args.model, dtype=args.dtype, **_step_kwargs(args))
    rows = [p.to_dict() for p in pts]
    first = pts[0]
    for r, p in zip(rows, pts):
        r["peak_growth"] = p.peak_ops_per_s / first.peak_ops_per_s
        r["bandwidth_growth"] = p.dram_bandwidth / first.dram_bandwidth
    if args.json:
        _dump({"model": args.model, "dtype": args.dtype, "devices": rows})
        return 0
    if args.csv:
        _write_csv(rows, list(rows[0]))
        return 0
    print(f"memory wall: {args.dtype} peak vs DRAM bandwidth; layers of {pts[0].model} memory-bound on each device")
    body = [[p.device, _si(p.peak_ops_per_s, "op/s"), _si(p.dram_bandwidth, "B/s"), f"{p.ridge_ops_per_byte:.0f}",
             f"{r['peak_growth']:.1f}x", f"{r['bandwidth_growth']:.1f}x",
             f"{p.memory_bound_layers}/{p.layers} ({p.memory_bound_fraction:.0%})",
             f"{p.memory_bound_time_fraction:.0%}", _time(p.time_s)] for p, r in zip(pts, rows)]
    print(_table(body, ["device", "peak", "DRAM", "ridge op/B", "peak x", "BW x", "mem-bound layers",
                        "mem-bound time", "model time"], right={1, 2, 3, 4, 5, 7, 8}))
    return 0


# ----------------------------------------------------------------------------------------- roofline / report
def _variants(args, device):
    """(label, Compression) pairs for the roofline: the baseline plus the flags' config, or a default trio."""
    from .analysis import make_compression

    base = _baseline(getattr(args, "baseline", None), device)
    out = [("baseline " + base.label, base)]
    if getattr(args, "weights", None) or getattr(args, "acts", None) or (getattr(args, "format", "dense") != "dense"):
        c = _compression(args, device)
        out.append((c.label, c))
        return out
    for kw in ({"weights": "int8"}, {"weights": "int4", "group": 128}, {"format": "nm:2:4"}):
        try:
            c = make_compression(base=base, **kw)
            out.append((c.label, c))
        except ValueError:
            pass
    return out


def _points(model, devices, args, step_kw, variants_fn):
    from .analysis import roofline_points

    pts, skipped = [], []
    for d in devices:
        ok = []
        for label, c in variants_fn(d):
            try:
                pts += roofline_points(model, d, [(label, c)], warm=getattr(args, "warm", False), **step_kw)
                ok.append(label)
            except ValueError as exc:
                skipped.append(f"{d.id}: {label}: {exc}")
    return pts, skipped


def _roofline(args) -> int:
    from .cli import UsageError
    from .devices import load_device
    from .plots import MissingExtraError, check_output_path, require_matplotlib, roofline_figure

    check_output_path(args.out)
    try:
        require_matplotlib()  # before any work
    except MissingExtraError as exc:
        raise UsageError(str(exc)) from None
    devices = [load_device(d) for d in (args.device or REPORT_DEVICES)]
    kw = _step_kwargs(args)
    from .zoo import load_model

    model = load_model(args.model)
    if model.family != "decoder" and kw["phase"] == "decode":
        kw["phase"] = "prefill"
    pts, skipped = _points(model, devices, args, kw, lambda d: _variants(args, d))
    path = roofline_figure(devices, pts, args.out, title=f"{model.name} ({kw['phase']}, batch {kw['batch']})")
    if args.json:
        _dump({"figure": path, "points": pts, "skipped": skipped})
    else:
        print(f"wrote {path} ({len(pts)} layer points on {len(devices)} devices)")
        for s in skipped:
            print(f"skipped {s}")
    return 0


def _report_devices(args):
    from .devices import load_device

    if args.device:
        return [load_device(d) for d in args.device]
    devs = [load_device(d) for d in REPORT_DEVICES]
    host = _host_device()
    return devs + ([host] if host is not None else [])


def _report(args) -> int:
    from .analysis import REPORT_OPTIONS, compression_table
    from .zoo import load_model

    devices = _report_devices(args)
    workloads = []
    if args.llm.lower() != "none":
        llm = load_model(args.llm)
        if llm.family != "decoder":
            raise ValueError(f"--llm {args.llm!r}: expected a decoder model (gpt2, llama-2-7b, llama-2-13b, llama-3-8b)")
        workloads.append((llm, dict(batch=args.llm_batch, phase="decode", context=args.context),
                          f"{llm.name} decode, batch {args.llm_batch}, context {args.context}"))
    if args.cnn.lower() != "none":
        cnn = load_model(args.cnn)
        workloads.append((cnn, dict(batch=args.cnn_batch, phase="prefill"),
                          f"{cnn.name} {'forward' if cnn.family == 'cnn' else 'prefill'}, batch {args.cnn_batch}"))
    if not workloads:
        raise ValueError("nothing to report: both --llm and --cnn are 'none'")
    rows = []
    for model, kw, title in workloads:
        for d in devices:
            for r in compression_table(model, d, REPORT_OPTIONS, warm=args.warm, **kw):
                r["workload"] = title
                rows.append(r)
    figure, fig_note = None, None
    if not args.no_plot:
        from .plots import have_matplotlib

        if have_matplotlib():
            from .plots import roofline_figure

            model, kw, title = workloads[0]
            pts, _ = _points(model, devices, args, kw, lambda d: _variants(argparse.Namespace(), d))
            figure = os.path.abspath(roofline_figure(devices, pts, args.out, title=f"memwall report: {title}"))
        else:
            fig_note = "roofline figure skipped: matplotlib is not installed (pip install 'memwall[plot]')"
    if args.json:
        _dump({"devices": [d.id for d in devices], "workloads": [t for _, _, t in workloads],
               "options": [o for o, _ in REPORT_OPTIONS], "rows": rows, "figure": figure, "figure_note": fig_note})
        return 0
    if args.csv:
        _write_csv(rows, ["workload", "device", "option", "compression", "time_s", "speedup", "bound", "energy_j",
                          "energy_per_unit_j", "unit", "tokens_per_s", "error"])
        return 0
    print("memwall report: what compression buys (model estimates; speedup vs each device's dense baseline)")
    for model, kw, title in workloads:
        for d in devices:
            sel = [r for r in rows if r["workload"] == title and r["device"] == d.id]
            unit = sel[0]["unit"]
            print(f"\n{title} on {d.name} ({d.id})")
            body = []
            for r in sel:
                if r["error"]:
                    body.append([r["option"], "", "n/a", "", "", "", "", _short(r["error"], 60)])
                    continue
                rate = (f"{r['tokens_per_s']:,.0f} tok/s" if r["tokens_per_s"] is not None
                        else f"{kw['batch'] / r['time_s']:,.0f} img/s")
                body.append([r["option"], r["compression"], _time(r["time_s"]), _x(r["speedup"]), r["bound"], rate,
                             _energy(r["energy_per_unit_j"]), _short("; ".join(r["notes"][:1]), 60)])
            print(_table(body, ["option", "config", "time", "speedup", "bound", "rate", f"energy/{unit}", "note"],
                         right={2, 3, 5, 6}))
            ok = [r for r in sel if not r["error"]]
            if ok:
                best = max(ok, key=lambda r: r["speedup"])
                print(f"best: {best['option']} ({_x(best['speedup'])})")
    print()
    if figure:
        print(f"roofline figure written to {figure}")
    elif fig_note:
        print(fig_note)
    return 0


def _pct(s: float) -> str:
    return f"{s * 100:.3g}%"


def _short(s: str, n: int = 70) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 3] + "..."

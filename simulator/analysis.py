"""Analyses built on the per-op cost model: whole-model totals, format crossovers, the memory-wall trend.

* :func:`estimate_model` — one pass of a zoo model (prefill / decode / a CNN forward pass) on a device under
  a compression config: total time, tokens/s, time to first token, energy per token or per image, speedup
  against a baseline, and a per-layer list (ops, bytes, time, bound, energy).
* :func:`estimate_generation` — a decoder's whole generation: prefill of the prompt (time to first token)
  plus the decode steps over a growing KV cache.
* :func:`format_crossover` — for one GEMM shape on one device, the sparsity at which each sparse format
  (CSR, BSR, channel pruning; N:M at its fixed ratio) starts to beat dense, dense INT8 and dense INT4.
* :func:`memory_wall_trend` — peak compute, DRAM bandwidth and ridge point (ops per byte) across GPU
  generations (P100 -> V100 -> A100 -> H100) and the fraction of a model's layers that are memory-bound on
  each.
* :func:`compression_table` — the table behind ``memwall report``: one model on one device under a list of
  compression options; :func:`roofline_points` — the layer points of a roofline figure.

Conventions.  The kernels of a pass run one after another, so times and energies add.  Layers whose
compression does not fit their shape (an N:M group that does not divide K, a group size that does not
divide K, a block that does not divide the weight) fall back to the nearest config that fits — dense
storage with the same dtypes, then per-channel scales — and say so in ``notes``; a config that fits no layer
at all is an error.  Activation x activation products (attention) and memory ops keep the activation dtype
and dense storage.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import NamedTuple

from ..kernels._validate import check_int
from .ops import GemmOp, MemoryOp
from .compression import ITEMSIZE
from .workload import Embedding, Model, Norm, Step

__all__ = [
    "LayerResult",
    "ModelEstimate",
    "Crossover",
    "CrossoverTarget",
    "TrendPoint",
    "estimate_model",
    "estimate_generation",
    "GenerationEstimate",
    "format_crossover",
    "memory_wall_trend",
    "compression_table",
    "make_compression",
    "baseline_for",
    "bound_class",
    "TREND_DEVICES",
    "REPORT_OPTIONS",
    "CROSSOVER_FORMATS",
    "roofline_points",
]

#: GPU generations of the memory-wall trend, oldest first.
TREND_DEVICES = ("p100", "v100", "a100-40gb", "h100-sxm")

#: The compression options of ``memwall report``: (label, options for :func:`make_compression`).
#: Unset dtypes inherit the device baseline's (FP16 on GPUs, FP32 on CPUs).
REPORT_OPTIONS = (
    ("baseline", {}),
    ("int8 weight-only", {"weights": "int8"}),
    ("int8 w8a8", {"weights": "int8", "acts": "int8"}),
    ("int4 g128 weight-only", {"weights": "int4", "group": 128}),
    ("fp8 w8a8", {"weights": "fp8", "acts": "fp8"}),
    ("2:4", {"format": "nm:2:4"}),
    ("2:4 + int8 w8a8", {"format": "nm:2:4", "weights": "int8", "acts": "int8"}),
    ("csr 90%", {"format": "csr", "sparsity": 0.9}),
    ("bsr 16x16 75%", {"format": "bsr:16x16", "sparsity": 0.75}),
    ("channel 50%", {"format": "channel", "sparsity": 0.5}),
)

#: Sparse formats compared by :func:`format_crossover` by default.
CROSSOVER_FORMATS = ("csr", "bsr:16x16", "bsr:32x32", "channel", "nm:2:4")


# ------------------------------------------------------------------------------------------- helpers
def _load_device(device):
    from .devices import load_device

    return load_device(device)


def _load_model(model) -> Model:
    if isinstance(model, Model):
        return model
    from .zoo import load_model

    return load_model(model)


def baseline_for(device):
    """The default baseline of ``device``: dense FP16 weights and activations on GPUs, FP32 on CPUs."""
    from . import roofline

    device = _load_device(device)
    fn = getattr(roofline, "default_baseline", None)
    if fn is not None:
        return fn(device)
    from .compression import Compression

    dt = "fp16" if device.kind == "gpu" else "fp32"
    return Compression(weights=dt, acts=dt)


def make_compression(weights=None, acts=None, group=None, format="dense", sparsity=None, *, device=None,
                     base=None):
    """A validated ``Compression`` from CLI-style options.

    ``weights`` / ``acts`` left as ``None`` inherit ``base`` (default: the baseline of ``device``; FP16 when no
    device is given).  ``format`` is ``dense``, ``csr``, ``bsr:RxC``, ``nm:N:M`` or ``channel``; ``sparsity``
    in [0, 1) (N:M formats imply theirs)."""
    from .compression import Compression

    if base is None:
        base = baseline_for(device) if device is not None else None
    w = weights if weights is not None else (base.weights if base is not None else "fp16")
    a = acts if acts is not None else (base.acts if base is not None else "fp16")
    kw = dict(weights=w, acts=a, group=group, format=format or "dense")
    if sparsity is not None:
        kw["sparsity"] = sparsity
    return Compression.parse(**kw)


def _dense(comp, keep_group: bool = True):
    """``comp`` with dense storage (same dtypes)."""
    kw = dict(format="dense", sparsity=0.0, block=None, n=None, m=None)
    if not keep_group:
        kw["group_size"] = None
    return replace(comp, **kw)


def _label(comp) -> str:
    return getattr(comp, "label", None) or str(comp)


def bound_class(bound: str, device) -> str:
    """``memory`` when ``bound`` names a memory level of ``device``, ``compute`` when it names a compute unit,
    else ``overhead`` (kernel launch / fixed cost)."""
    b = str(bound).lower()
    levels = [lv.name.lower() for lv in device.memory_levels]
    if b in levels or any(b.startswith(lv) for lv in levels):
        return "memory"
    units = [u.lower() for u in getattr(device, "units", {})] or ["tensor", "vector"]
    if any(b.startswith(u) for u in units) or b in ("compute", "matrix", "dequant"):
        return "compute"
    return "overhead"


class _LayerAgg(NamedTuple):
    time_s: float
    baseline_time_s: float
    energy_j: float
    baseline_energy_j: float
    ops: float
    macs: int
    bytes_by_level: dict
    energy_by_component: dict
    bound: str
    bound_class: str
    used: str
    notes: tuple  # (op index, note)
    weight_ops: int
    fallbacks: int
    memory_time_s: float
    compute_time_s: float
    weight_bytes: float


def _opkey(op) -> tuple:
    """What an estimate depends on (everything but the name)."""
    if isinstance(op, GemmOp):
        return ("gemm", op.m, op.n, op.k, op.count, op.weight_operand)
    return ("mem", op.elements_read, op.elements_written, op.ops_per_element, op.weight_elements)


class _Estimator:
    """Per-op estimates of one device, memoised on (shape, config): a model repeats a few op shapes many
    times (every transformer block is the same), so a whole model costs a handful of estimates."""

    def __init__(self, device, warm: bool):
        from . import roofline

        self.device = device
        self.warm = warm
        self._estimate = roofline.estimate
        self._cache: dict = {}
        self._fit: dict = {}
        self._dense: dict = {}
        self._ops: dict = {}
        self._layers: dict = {}

    def layer_ops(self, model, step):
        """``model.layer_ops(step)``, memoised."""
        key = (id(model), step)  # the value keeps the model alive, so its id cannot be reused meanwhile
        hit = self._ops.get(key)
        if hit is None:
            hit = self._ops[key] = (model, model.layer_ops(step))
        return hit[1]

    def layer(self, ops, comp, base) -> "_LayerAgg":
        """The sum over one layer's ops under ``comp`` (and ``base`` for the speedup), memoised on shapes."""
        key = (tuple(_opkey(op) for op in ops), comp, base)
        hit = self._layers.get(key)
        if hit is None:
            hit = self._layers[key] = self._aggregate(ops, comp, base)
        return hit

    def _aggregate(self, ops, comp, base) -> "_LayerAgg":
        t = bt = e = be = o = tm = tc = wb = 0.0
        macs = nweight = nfall = 0
        levels = [lv.name for lv in self.device.memory_levels]
        lv: dict = {}
        ec: dict = {}
        notes = []
        worst, worst_t = None, -1.0
        used = comp
        for i, op in enumerate(ops):
            r, used_op, note = self.fitting(op, comp)
            b, _, _ = self.fitting(op, base)
            if isinstance(op, GemmOp):
                macs += op.macs
                if op.weight_operand:
                    nweight += 1
                    wb += float(getattr(r, "weight_bytes", 0.0) or 0.0)
                    if note:
                        nfall += 1
                        used = used_op
            if note:
                notes.append((i, note.split(": ", 1)[1]))
            t += r.time_s
            bt += b.time_s
            e += r.energy_j
            be += b.energy_j
            o += float(r.ops)
            _add(lv, r.bytes_by_level)
            _add(ec, r.energy_by_component)
            roofs = r.time_by_roof
            tm += max(roofs.get(lv, 0.0) for lv in levels)
            tc += roofs.get("tensor", 0.0) + roofs.get("vector", 0.0)
            notes += [(i, n) for n in getattr(r, "notes", ())]
            if r.time_s > worst_t:
                worst, worst_t = r, r.time_s
        return _LayerAgg(t, bt, e, be, o, macs, lv, ec, worst.bound, bound_class(worst.bound, self.device),
                         _label(used), tuple(notes), nweight, nfall, tm, tc, wb)

    def dense(self, comp, keep_group: bool = True):
        key = (comp, keep_group)
        d = self._dense.get(key)
        if d is None:
            d = self._dense[key] = _dense(comp, keep_group)
        return d

    def __call__(self, op, comp):
        key = (_opkey(op), comp)
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = self._estimate(self.device, op, comp, warm=self.warm, baseline=comp)
            except ValueError as exc:
                hit = exc
            self._cache[key] = hit
        if isinstance(hit, Exception):
            raise hit
        return hit

    def fitting(self, op, comp):
        """(estimate, config used, note or None) with the fallbacks of the module doc."""
        key = (_opkey(op), comp)
        hit = self._fit.get(key)
        if hit is None:
            try:
                hit = self._fitting(op, comp)
            except ValueError as exc:
                hit = exc
            self._fit[key] = hit
        if isinstance(hit, Exception):
            raise ValueError(f"{hit} (layer {op.name})")
        est, c, note = hit
        return est, c, (f"{op.name}: {note}" if note else None)

    def _fitting(self, op, comp):
        if isinstance(op, GemmOp) and not op.weight_operand:
            c = self.dense(comp, keep_group=False)
            return self(op, c), c, None
        if isinstance(op, MemoryOp):
            candidates = [self.dense(comp), self.dense(comp, keep_group=False)]
        else:
            candidates = [comp]
            if getattr(comp, "format", "dense") != "dense":
                candidates.append(self.dense(comp))
            if getattr(comp, "group_size", None):
                candidates.append(self.dense(comp, keep_group=False))
        first = last = None
        for c in dict.fromkeys(candidates):  # ordered, unique
            try:
                est = self(op, c)
            except ValueError as exc:
                first, last = first or exc, exc
                continue
            note = None
            if c is not candidates[0] and isinstance(op, GemmOp):
                note = f"{_label(comp)} does not fit ({first}); ran {_label(c)}"
            return est, c, note
        # the most relaxed config failed too: the problem is not the shape
        raise last


# ---------------------------------------------------------------------------------------- model totals
@dataclass(frozen=True)
class LayerResult:
    """One layer of a model estimate (the sum over its ops)."""

    name: str
    kind: str
    params: int
    ops: float
    macs: int
    bytes_by_level: dict
    time_s: float
    baseline_time_s: float
    bound: str
    bound_class: str
    energy_j: float
    compression: str
    notes: tuple = ()
    memory_time_s: float = 0.0
    compute_time_s: float = 0.0

    @property
    def speedup(self) -> float:
        return self.baseline_time_s / self.time_s if self.time_s > 0 else 1.0

    @property
    def memory_bound(self) -> bool:
        """On the roofline (launch overhead aside): the memory roofs take longer than the compute units."""
        return self.memory_time_s >= self.compute_time_s

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "params": self.params, "ops": self.ops, "macs": self.macs,
            "bytes_by_level": dict(self.bytes_by_level), "time_s": self.time_s,
            "baseline_time_s": self.baseline_time_s, "speedup": self.speedup, "bound": self.bound,
            "bound_class": self.bound_class, "energy_j": self.energy_j, "compression": self.compression,
            "memory_time_s": self.memory_time_s, "compute_time_s": self.compute_time_s,
            "memory_bound": self.memory_bound, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ModelEstimate:
    """Totals of one pass of a model on a device (see :func:`estimate_model`)."""

    model: str
    family: str
    device: str
    phase: str
    step: Step
    compression: str
    baseline: str
    params: int
    macs: int
    ops: float
    time_s: float
    baseline_time_s: float
    energy_j: float
    baseline_energy_j: float
    energy_by_component: dict
    bytes_by_level: dict
    time_by_bound: dict
    layers: tuple
    notes: tuple = ()
    weight_bytes: float = 0.0
    device_memory_bytes: float = float("inf")

    @property
    def speedup(self) -> float:
        return self.baseline_time_s / self.time_s if self.time_s > 0 else 1.0

    @property
    def fits_in_memory(self) -> bool:
        """Whether the stored weights fit the device's DRAM/HBM (KV cache and activations aside)."""
        return self.weight_bytes <= self.device_memory_bytes

    @property
    def tokens(self) -> int:
        """Tokens processed (prefill, encoders) or generated (decode) in this pass; images for a CNN."""
        return self.step.tokens

    @property
    def tokens_per_s(self) -> float | None:
        if self.family == "cnn":
            return None
        return self.tokens / self.time_s

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: the prefill pass of a decoder."""
        return self.time_s if (self.family == "decoder" and self.phase == "prefill") else None

    @property
    def energy_per_token_j(self) -> float | None:
        return None if self.family == "cnn" else self.energy_j / self.tokens

    @property
    def images_per_s(self) -> float | None:
        return self.step.batch / self.time_s if self.family == "cnn" else None

    @property
    def energy_per_image_j(self) -> float | None:
        return self.energy_j / self.step.batch if self.family == "cnn" else None

    @property
    def bound(self) -> str:
        """The bound class that takes most of the time (memory, compute or overhead)."""
        return max(self.time_by_bound, key=self.time_by_bound.get) if self.time_by_bound else "overhead"

    @property
    def memory_bound_fraction(self) -> float:
        """Fraction of the layers (that run ops) on the memory side of the roofline (launch overhead aside)."""
        if not self.layers:
            return 0.0
        return sum(l.memory_bound for l in self.layers) / len(self.layers)

    def to_dict(self, layers: bool = True) -> dict:
        d = {
            "model": self.model, "family": self.family, "device": self.device, "phase": self.phase,
            "batch": self.step.batch, "seq": self.step.seq, "context": self.step.context,
            "compression": self.compression, "baseline": self.baseline, "params": self.params,
            "macs": self.macs, "ops": self.ops, "time_s": self.time_s, "baseline_time_s": self.baseline_time_s,
            "speedup": self.speedup, "bound": self.bound, "time_by_bound": dict(self.time_by_bound),
            "memory_bound_layer_fraction": self.memory_bound_fraction,
            "energy_j": self.energy_j, "baseline_energy_j": self.baseline_energy_j,
            "energy_by_component": dict(self.energy_by_component), "bytes_by_level": dict(self.bytes_by_level),
            "tokens": self.tokens, "tokens_per_s": self.tokens_per_s, "ttft_s": self.ttft_s,
            "energy_per_token_j": self.energy_per_token_j, "images_per_s": self.images_per_s,
            "energy_per_image_j": self.energy_per_image_j, "weight_bytes": self.weight_bytes,
            "device_memory_bytes": self.device_memory_bytes, "fits_in_memory": self.fits_in_memory,
            "notes": list(self.notes),
        }
        if layers:
            d["layers"] = [l.to_dict() for l in self.layers]
        return d


def _add(into: dict, other) -> None:
    for k, v in dict(other).items():
        into[k] = into.get(k, 0.0) + float(v)


def estimate_model(model, device, comp=None, *, batch: int = 1, seq: int | None = None, phase: str = "prefill",
                   context: int | None = None, baseline=None, warm: bool = False, _estimator=None) -> ModelEstimate:
    """Estimate one pass of ``model`` on ``device``.

    Parameters
    ----------
    model : str or Model
        A zoo id (see :func:`memwall.simulator.zoo.list_models`) or a :class:`~.workload.Model`.
    device : str or Device
        A device id, ``host``, a TOML path, or a loaded device.
    comp : Compression, dict, or None
        The config of every layer, or a dict layer name -> config (layers not named run ``baseline``).
        ``None``: the baseline.
    batch, seq, phase, context
        The pass (see :meth:`~.workload.Model.step`): prefill of ``seq`` prompt tokens, or one decode step
        against ``context`` cached tokens; CNNs: a batch of images.
    baseline : Compression or None
        What ``speedup`` compares with (default: dense FP16 on GPUs, dense FP32 on CPUs).
    warm : bool
        Weights already resident in a cache that holds them (see ``roofline.estimate``).

    Returns
    -------
    ModelEstimate
        Totals, per-phase rates (``tokens_per_s``, ``ttft_s``, energy per token / image) and ``layers``.
    """
    model = _load_model(model)
    device = _load_device(device)
    step = model.step(batch=batch, seq=seq, phase=phase, context=context)
    est = _estimator if _estimator is not None else _Estimator(device, warm)
    base = baseline if baseline is not None else baseline_for(device)
    per_layer = isinstance(comp, dict)
    if per_layer:
        names = {l.name for l in model.layers}
        unknown = sorted(set(comp) - names)
        if unknown:
            raise ValueError(f"{model.name}: unknown layer name(s) {', '.join(unknown[:5])}")
    default = base if (comp is None or per_layer) else comp

    layers, notes = [], {}
    energy_comp: dict = {}
    bytes_lv: dict = {}
    time_bound: dict = {}
    total_t = total_bt = total_e = total_be = total_ops = 0.0
    total_macs = 0
    weight_ops = fallbacks = 0
    first_fallback = None
    stored = 0.0  # bytes of the weights as stored (tied tables once; folded norms fold into their conv)
    for layer, ops in est.layer_ops(model, step):
        if not ops:
            continue
        c = comp.get(layer.name, default) if per_layer else default
        a = est.layer(ops, c, base)
        if isinstance(layer, (Embedding, Norm)):
            stored += layer.params * ITEMSIZE[c.weights if isinstance(layer, Embedding) else c.acts]
        elif not getattr(layer, "tied", False):
            stored += a.weight_bytes
            if getattr(layer, "bias", False):  # biases ride in the epilogue, kept in the activation dtype
                stored += getattr(layer, "out_features", getattr(layer, "out_channels", 0)) * ITEMSIZE[c.acts]
        weight_ops += a.weight_ops
        if a.fallbacks:
            fallbacks += a.fallbacks
            first_fallback = first_fallback or f"{ops[a.notes[0][0]].name}: {a.notes[0][1]}"
        lnotes = tuple(dict.fromkeys(f"{ops[i].name}: {n}" for i, n in a.notes))
        layers.append(LayerResult(layer.name, layer.kind, layer.params, a.ops, a.macs, dict(a.bytes_by_level),
                                  a.time_s, a.baseline_time_s, a.bound, a.bound_class, a.energy_j, a.used,
                                  lnotes, a.memory_time_s, a.compute_time_s))
        for n in lnotes:
            notes[n] = None
        time_bound[a.bound_class] = time_bound.get(a.bound_class, 0.0) + a.time_s
        total_t += a.time_s
        total_bt += a.baseline_time_s
        total_e += a.energy_j
        total_be += a.baseline_energy_j
        total_ops += a.ops
        total_macs += a.macs
        _add(bytes_lv, a.bytes_by_level)
        _add(energy_comp, a.energy_by_component)
    if comp is not None and not per_layer and weight_ops and fallbacks == weight_ops and default != base:
        raise ValueError(f"{_label(comp)} fits no layer of {model.name}: {first_fallback}")
    summary = []
    capacity = device.dram_capacity
    if stored > capacity:
        summary.append(f"the weights ({stored / 1e9:.3g} GB as stored) exceed the {capacity / 1e9:.3g} GB of "
                       f"{device.dram.name} on {device.id}: the model needs several devices or offloading")
    if fallbacks:
        where, why = first_fallback.split(": ", 1)
        summary.append(f"{fallbacks} of {weight_ops} weight GEMMs fell back, e.g. {where}: {why}")
    return ModelEstimate(
        model=model.name, family=model.family, device=device.id, phase=phase, step=step,
        compression="per-layer" if per_layer else _label(default), baseline=_label(base), params=model.params,
        macs=total_macs, ops=total_ops, time_s=total_t, baseline_time_s=total_bt, energy_j=total_e,
        baseline_energy_j=total_be, energy_by_component=energy_comp, bytes_by_level=bytes_lv,
        time_by_bound=time_bound, layers=tuple(layers), notes=tuple(summary + _condense(notes)),
        weight_bytes=stored, device_memory_bytes=float(capacity),
    )


@dataclass(frozen=True)
class GenerationEstimate:
    """Prefill of a prompt plus ``new_tokens`` decode steps of a decoder (see :func:`estimate_generation`)."""

    model: str
    device: str
    compression: str
    batch: int
    prompt: int
    new_tokens: int
    ttft_s: float
    decode_time_s: float
    prefill_energy_j: float
    decode_energy_j: float
    baseline_time_s: float
    first_step: ModelEstimate
    last_step: ModelEstimate

    @property
    def time_s(self) -> float:
        return self.ttft_s + self.decode_time_s

    @property
    def energy_j(self) -> float:
        return self.prefill_energy_j + self.decode_energy_j

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.decode_time_s

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second end to end (prefill included)."""
        return self.batch * self.new_tokens / self.time_s

    @property
    def energy_per_token_j(self) -> float:
        """Energy per generated token, the prompt's prefill included."""
        return self.energy_j / (self.batch * self.new_tokens)

    @property
    def speedup(self) -> float:
        return self.baseline_time_s / self.time_s

    def to_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "compression": self.compression, "batch": self.batch,
                "prompt": self.prompt, "new_tokens": self.new_tokens, "ttft_s": self.ttft_s,
                "decode_time_s": self.decode_time_s, "time_s": self.time_s,
                "decode_tokens_per_s": self.decode_tokens_per_s, "tokens_per_s": self.tokens_per_s,
                "prefill_energy_j": self.prefill_energy_j, "decode_energy_j": self.decode_energy_j,
                "energy_j": self.energy_j, "energy_per_token_j": self.energy_per_token_j,
                "baseline_time_s": self.baseline_time_s, "speedup": self.speedup}


def estimate_generation(model, device, comp=None, *, batch: int = 1, prompt: int = 512, new_tokens: int = 128,
                        baseline=None, warm: bool = False, samples: int = 9) -> GenerationEstimate:
    """Time to first token (prefill of ``prompt`` tokens) and ``new_tokens`` decode steps of a decoder.

    The decode steps see a context growing from ``prompt`` to ``prompt + new_tokens - 1``; their sum is
    integrated from ``samples`` evenly spaced steps (trapezoid rule plus the end correction; exact when the
    step time is affine in the context, which it is up to cache-fit and wave effects)."""
    import numpy as np

    model = _load_model(model)
    device = _load_device(device)
    if model.family != "decoder":
        raise ValueError(f"{model.name} is not a decoder: generation needs a decoder LLM")
    new_tokens = check_int(new_tokens, "new_tokens", minimum=1)
    prompt = check_int(prompt, "prompt", minimum=1)
    samples = check_int(samples, "samples", minimum=2)
    est = _Estimator(device, warm)
    kw = dict(baseline=baseline, warm=warm, _estimator=est)
    pre = estimate_model(model, device, comp, batch=batch, seq=prompt, phase="prefill", **kw)
    a, b = prompt, prompt + new_tokens - 1
    xs = sorted(set(int(round(x)) for x in np.linspace(a, b, min(samples, new_tokens))))
    steps = [estimate_model(model, device, comp, batch=batch, phase="decode", context=c, **kw) for c in xs]

    def total(values):
        if len(xs) == 1:
            return float(values[0]) * new_tokens
        v = np.asarray(values, dtype=np.float64)
        trap = float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(np.asarray(xs, dtype=np.float64))))
        return trap + 0.5 * float(v[0] + v[-1])

    t = total([r.time_s for r in steps])
    e = total([r.energy_j for r in steps])
    bt = total([r.baseline_time_s for r in steps])
    return GenerationEstimate(model.name, device.id, pre.compression, pre.step.batch, prompt, new_tokens,
                              pre.time_s, t, pre.energy_j, e, pre.baseline_time_s + bt, steps[0], steps[-1])


#: Per-op notes that the per-layer ``bound`` column already says; left out of the model summary.
_ROUTINE = ("memory-bound on", "compute-bound on", "launch overhead dominates", "slower than the baseline")


def _condense(notes: list, limit: int = 8) -> list:
    """Model-level notes: per-op notes without the op prefix, each kind once (numbers vary from op to op, so
    they are compared with digits masked), counted; routine bound notes left out."""
    seen: dict = {}
    for n in notes:
        body = n.split(": ", 1)[1] if ": " in n else n
        if body.startswith(_ROUTINE):
            continue
        key = re.sub(r"[0-9][0-9.e+-]*\s*[kMGTP]?", "#", body)
        if key not in seen:
            seen[key] = [body, 0]
        seen[key][1] += 1
    out = [f"{b} (x{c})" if c > 1 else b for b, c in seen.values()]
    return out[:limit]


# ---------------------------------------------------------------------------------------- crossover
@dataclass(frozen=True)
class CrossoverTarget:
    """Where one sparse format starts to beat one dense config on one GEMM shape.

    ``sparsity`` is the smallest sparsity from which the format is faster than the target all the way up to
    ``max_sparsity`` (``None``: it never is; N:M formats have one fixed sparsity)."""

    target: str  # dense | int8 | int4
    label: str  # e.g. "dense fp16", "dense int4 g128"
    target_time_s: float
    sparsity: float | None
    time_s: float | None
    note: str = ""

    def to_dict(self) -> dict:
        return {"target": self.target, "label": self.label, "target_time_s": self.target_time_s,
                "sparsity": self.sparsity, "time_s": self.time_s, "note": self.note}


@dataclass(frozen=True)
class Crossover:
    """One sparse format on one GEMM shape: its crossover sparsity against each dense target.

    ``vs_dense``, ``vs_int8``, ``vs_int4`` are the crossover sparsities (``None``: never faster, not
    applicable, or not asked for); ``targets`` holds the details."""

    format: str
    values: str
    targets: tuple
    max_sparsity: float
    note: str = ""

    def _get(self, name):
        t = next((t for t in self.targets if t.target == name), None)
        return None if t is None else t.sparsity

    @property
    def vs_dense(self) -> float | None:
        return self._get("dense")

    @property
    def vs_int8(self) -> float | None:
        return self._get("int8")

    @property
    def vs_int4(self) -> float | None:
        return self._get("int4")

    def to_dict(self) -> dict:
        return {"format": self.format, "values": self.values, "vs_dense": self.vs_dense, "vs_int8": self.vs_int8,
                "vs_int4": self.vs_int4, "max_sparsity": self.max_sparsity, "note": self.note,
                "targets": [t.to_dict() for t in self.targets]}


def _targets(k, weights, acts, names):
    out = []
    for t in names:
        if t == "dense":
            out.append((t, "dense " + weights, dict(weights=weights, acts=acts)))
        elif t == "int8":
            out.append((t, "dense int8", dict(weights="int8", acts=acts)))
        elif t == "int4":
            g = 128 if k % 128 == 0 else None
            out.append((t, "dense int4" + (" g128" if g else ""), dict(weights="int4", acts=acts, group=g)))
        else:
            raise ValueError(f"crossover target {t!r}: expected dense, int8 or int4")
    return out


def _sweep_times(device, op, fmt, weights, acts, sparsities, warm):
    """Times of ``op`` under ``fmt`` at each sparsity: one vectorized call of the cost model."""
    import numpy as np

    from . import roofline

    sp = np.asarray(sparsities, dtype=np.float64)
    # the scalar path validates the config against the shape and device (precise errors)
    comp = make_compression(weights=weights, acts=acts, format=fmt, sparsity=float(sp[0]))
    roofline.estimate(device, op, comp, warm=warm, baseline=comp)
    res = roofline.estimate_gemm_arrays(device, op.m, op.n, op.k, weights=weights, acts=acts, format=fmt,
                                        sparsity=sp, warm=warm, baseline=False)
    return [float(t) for t in np.broadcast_to(res["time_s"], sp.shape)]


def format_crossover(device, m: int, n: int, k: int, *, formats=None, weights: str | None = None,
                     acts: str | None = None, targets=("dense", "int8", "int4"), warm: bool = False,
                     max_sparsity: float = 0.99, grid: int = 1000, tol: float = 1e-4) -> list[Crossover]:
    """For an (m x k) @ (k x n) layer (weights n x k) on ``device``: the sparsity at which each format beats
    each dense target.

    Parameters
    ----------
    formats : sequence of str
        Sparse formats (default :data:`CROSSOVER_FORMATS`): ``csr``, ``bsr:RxC``, ``channel``, ``nm:N:M``.
    weights, acts : str
        dtypes of the sparse values and of the activations (default: the device baseline's).
    targets : sequence of ``dense``, ``int8``, ``int4``
        Dense configs to beat: dense at ``weights``; INT8 weights; INT4 weights (group 128 when it divides K).
    max_sparsity, grid, tol
        The sweep runs over ``grid`` sparsities in [0, max_sparsity], then bisects to ``tol``.

    Returns
    -------
    list of Crossover
        One per format, with the crossover against each target (``vs_dense``, ``vs_int8``, ``vs_int4``).
        Formats the device or shape cannot run have ``None`` crossovers and the reason in ``note``.
    """
    from . import roofline

    device = _load_device(device)
    op = GemmOp("gemm", m=check_int(m, "m", minimum=1), n=check_int(n, "n", minimum=1),
                k=check_int(k, "k", minimum=1))
    base = baseline_for(device)
    weights = weights or base.weights
    acts = acts or base.acts
    max_sparsity = float(max_sparsity)
    if not 0.0 < max_sparsity < 1.0:
        raise ValueError(f"max_sparsity: expected a value in (0, 1), got {max_sparsity}")
    formats = tuple(formats) if formats else CROSSOVER_FORMATS
    tgt = []
    for name, label, kw in _targets(k, weights, acts, targets):
        try:
            c = make_compression(**kw)
            tgt.append((name, label, roofline.estimate(device, op, c, warm=warm, baseline=c).time_s, None))
        except ValueError as exc:
            tgt.append((name, label, math.nan, str(exc)))
    out: list[Crossover] = []
    for fmt in formats:
        fixed = str(fmt).strip().lower().startswith("nm")
        try:
            if fixed:
                comp = make_compression(weights=weights, acts=acts, format=fmt)
                s_fixed = float(comp.sparsity)
                times = [roofline.estimate(device, op, comp, warm=warm, baseline=comp).time_s]
            else:
                grid_s = [max_sparsity * i / (grid - 1) for i in range(grid)]
                times = _sweep_times(device, op, fmt, weights, acts, grid_s, warm)
        except ValueError as exc:
            rows = tuple(CrossoverTarget(nm, lb, tt, None, None) for nm, lb, tt, _ in tgt)
            out.append(Crossover(fmt, weights, rows, max_sparsity, f"not applicable: {exc}"))
            continue
        rows = []
        for name, label, tt, err in tgt:
            if err is not None:
                rows.append(CrossoverTarget(name, label, tt, None, None, f"target n/a: {err}"))
                continue
            if fixed:
                ok = times[0] < tt
                rows.append(CrossoverTarget(name, label, tt, s_fixed if ok else None, times[0],
                                            "fixed sparsity" + ("" if ok else f": {times[0] / tt:.2f}x the target "
                                                                              "time")))
                continue
            # smallest grid index from which every time is below the target
            i = len(times)
            while i > 0 and times[i - 1] < tt:
                i -= 1
            if i == len(times):
                rows.append(CrossoverTarget(name, label, tt, None, None,
                                            f"never faster up to sparsity {max_sparsity:g} "
                                            f"({times[-1] / tt:.2f}x the target time there)"))
                continue
            if i == 0:
                rows.append(CrossoverTarget(name, label, tt, 0.0, times[0], "faster at any sparsity"))
                continue
            lo, hi = grid_s[i - 1], grid_s[i]
            t_hi = times[i]
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                t_mid = _sweep_times(device, op, fmt, weights, acts, [mid], warm)[0]
                if t_mid < tt:
                    hi, t_hi = mid, t_mid
                else:
                    lo = mid
            rows.append(CrossoverTarget(name, label, tt, hi, t_hi))
        out.append(Crossover(fmt, weights, tuple(rows), max_sparsity, "fixed sparsity" if fixed else ""))
    return out


# ------------------------------------------------------------------------------------ memory-wall trend
@dataclass(frozen=True)
class TrendPoint:
    """One device of the memory-wall trend.

    A layer counts as memory-bound when its memory roofs take longer than its compute (the roofline
    position, launch overhead aside); ``launch_bound_layers`` are those whose fixed kernel overhead exceeds
    every roof."""

    device: str
    name: str
    dtype: str
    peak_ops_per_s: float
    dram_bandwidth: float
    ridge_ops_per_byte: float
    model: str
    layers: int
    memory_bound_layers: int
    memory_bound_time_fraction: float
    launch_bound_layers: int
    time_s: float

    @property
    def memory_bound_fraction(self) -> float:
        return self.memory_bound_layers / self.layers if self.layers else 0.0

    def to_dict(self) -> dict:
        return {"device": self.device, "name": self.name, "dtype": self.dtype,
                "peak_ops_per_s": self.peak_ops_per_s, "dram_bandwidth": self.dram_bandwidth,
                "ridge_ops_per_byte": self.ridge_ops_per_byte, "model": self.model, "layers": self.layers,
                "memory_bound_layers": self.memory_bound_layers,
                "memory_bound_fraction": self.memory_bound_fraction,
                "memory_bound_time_fraction": self.memory_bound_time_fraction,
                "launch_bound_layers": self.launch_bound_layers, "time_s": self.time_s}


def memory_wall_trend(devices=TREND_DEVICES, *, model="resnet50", dtype: str = "fp16", batch: int = 1,
                      seq: int | None = None, phase: str = "prefill", context: int | None = None, comp=None,
                      warm: bool = False) -> list[TrendPoint]:
    """Peak ``dtype`` compute, DRAM bandwidth and ridge point (peak / bandwidth, ops per byte) per device, and
    how many layers of ``model`` are memory-bound on each (under ``comp``, default each device's baseline).

    Compute grows faster than bandwidth from one GPU generation to the next, so the ridge point climbs and
    a layer of fixed arithmetic intensity slides under the memory roof."""
    model = _load_model(model)
    out = []
    for d in devices:
        dev = _load_device(d)
        est = estimate_model(model, dev, comp, batch=batch, seq=seq, phase=phase, context=context, warm=warm)
        peak = dev.peak(dtype)
        mem = [l for l in est.layers if l.memory_bound]
        mem_t = sum(l.time_s for l in mem)
        out.append(TrendPoint(dev.id, dev.name, dtype, peak, dev.dram_bandwidth, peak / dev.dram_bandwidth,
                              model.name, len(est.layers), len(mem), mem_t / est.time_s if est.time_s else 0.0,
                              sum(l.bound == "launch" for l in est.layers), est.time_s))
    return out


# ------------------------------------------------------------------------------------ compression table
def compression_table(model, device, options=REPORT_OPTIONS, *, batch: int = 1, seq: int | None = None,
                      phase: str = "prefill", context: int | None = None, baseline=None,
                      warm: bool = False) -> list[dict]:
    """``model`` on ``device`` under each ``(label, make_compression options)`` of ``options``.

    Returns one dict per option: ``option``, ``compression``, ``time_s``, ``speedup``, ``bound``,
    ``energy_j``, ``energy_per_unit_j`` and ``unit`` (token or image), ``tokens_per_s``, ``notes``; an option
    the device cannot run has ``error`` set and ``None`` figures."""
    model = _load_model(model)
    device = _load_device(device)
    base = baseline if baseline is not None else baseline_for(device)
    est = _Estimator(device, warm)
    rows = []
    for label, kw in options:
        row = {"model": model.name, "device": device.id, "option": label, "compression": None, "time_s": None,
               "speedup": None, "bound": None, "energy_j": None, "energy_per_unit_j": None,
               "unit": "image" if model.family == "cnn" else "token", "tokens_per_s": None, "notes": [],
               "error": None}
        try:
            comp = make_compression(base=base, **kw)
            r = estimate_model(model, device, comp, batch=batch, seq=seq, phase=phase, context=context,
                               baseline=base, warm=warm, _estimator=est)
        except ValueError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        row.update(compression=r.compression, time_s=r.time_s, speedup=r.speedup, bound=r.bound,
                   energy_j=r.energy_j, tokens_per_s=r.tokens_per_s,
                   energy_per_unit_j=r.energy_per_image_j if model.family == "cnn" else r.energy_per_token_j,
                   notes=list(r.notes), phase=r.phase, batch=r.step.batch, seq=r.step.seq, context=r.step.context)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- roofline points
def roofline_points(model, device, variants, *, batch: int = 1, seq: int | None = None, phase: str = "prefill",
                    context: int | None = None, warm: bool = False) -> list[dict]:
    """Points of a roofline plot: one per layer of ``model`` and per ``(label, Compression)`` of
    ``variants``, with ``intensity`` (ops per DRAM byte) and ``perf`` (achieved ops/s); layers that repeat
    (identical transformer blocks) give one point."""
    model = _load_model(model)
    device = _load_device(device)
    dram = device.memory_levels[-1].name
    est = _Estimator(device, warm)
    pts, seen = [], set()
    for label, comp in variants:
        r = estimate_model(model, device, comp, batch=batch, seq=seq, phase=phase, context=context, warm=warm,
                           _estimator=est)
        for l in r.layers:
            b = l.bytes_by_level.get(dram) or (max(l.bytes_by_level.values()) if l.bytes_by_level else 0.0)
            if l.time_s <= 0 or b <= 0 or l.ops <= 0:
                continue
            key = (label, l.kind, round(l.ops / b, 9), round(l.ops / l.time_s, -3))
            if key in seen:  # repeated blocks give identical points: keep one
                continue
            seen.add(key)
            pts.append({"device": device.id, "variant": label, "layer": l.name, "kind": l.kind,
                        "intensity": l.ops / b, "perf": l.ops / l.time_s, "bound": l.bound})
    return pts

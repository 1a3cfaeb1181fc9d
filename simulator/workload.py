"""Layers and models reduced to the ops of :mod:`memwall.simulator.ops`.

A layer is a small frozen record that knows its parameter count and turns one forward pass (a
:class:`Step`: batch, new tokens per sequence, tokens already cached) into :class:`~.ops.GemmOp` and
:class:`~.ops.MemoryOp` records with element counts (bytes follow later from a compression config).

How each layer is reduced (the conventions the cost model relies on):

* :class:`Linear` — ``tokens x in -> out``: one GEMM with m = tokens, k = in, n = out; the bias is added in
  the GEMM epilogue (no separate op).  ``per_sequence`` layers compute one row per sequence: a decoder's LM
  head during prefill (logits of the last position only, as serving engines do) or BERT's pooler ([CLS]).
  ``tied`` layers (GPT-2's LM head, which reuses the token embedding) read a weight but own no parameters.
* :class:`Conv2d` — implicit GEMM: m = batch * H_out * W_out, k = (C_in / groups) * kh * kw,
  n = C_out / groups, repeated ``count = groups`` times (depthwise: n = 1, k = kh * kw, count = C).
  Folded batch norm and the activation run in the epilogue.
* :class:`Attention` — scaled dot-product attention after the projections (which are :class:`Linear`
  layers).  With grouped-query attention (GQA) the ``g = heads / kv_heads`` query heads that share a K/V
  head are stacked as GEMM rows, so each cached K and V element is read once per step:
  ``QK^T``: count = batch * kv_heads, m = g * seq, k = head_dim, n = context + seq;
  ``PV``:   count = batch * kv_heads, m = g * seq, k = context + seq, n = head_dim;
  both with ``weight_operand=False`` (the K/V cache is an activation operand).  Causal attention skips
  the masked half as causal kernels do: new token i (of ``seq``) attends to ``context + i + 1`` keys, so the
  products use the mean, ``n = context + ceil((seq + 1) / 2)`` (exact for odd ``seq``; decode: context + 1).
  The softmax over the scores is a :class:`~.ops.MemoryOp` (the unfused kernel sequence: an upper bound
  for a fused FlashAttention kernel, which keeps the scores on chip).  With a KV cache the new K and V rows
  are appended (a copy).
* :class:`Embedding` — a gather: the distinct rows touched are read as parameters (``weight_elements``),
  the gathered activations written.
* :class:`Norm`, :class:`Elementwise`, :class:`Pool2d` — memory-only ops (a few vector ops per element).

Everything here is plain Python and NumPy-free; the cost model lives in ``roofline``/``energy``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kernels._validate import check_choice, check_int
from .ops import GemmOp, MemoryOp, Op

__all__ = [
    "Step",
    "Layer",
    "Linear",
    "Conv2d",
    "Attention",
    "Embedding",
    "Norm",
    "Elementwise",
    "Pool2d",
    "Model",
    "PHASES",
    "FAMILIES",
]

#: Phases of a forward pass: ``prefill`` (all prompt tokens at once; also a CNN or encoder forward pass)
#: and ``decode`` (one new token per sequence, attending to a KV cache of ``context`` tokens).
PHASES = ("prefill", "decode")
#: Model families: convolutional image classifiers, bidirectional encoders, autoregressive decoders.
FAMILIES = ("cnn", "encoder", "decoder")


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
        return (check_int(value[0], name, minimum=minimum), check_int(value[1], name, minimum=minimum))
    v = check_int(value, name, minimum=minimum)
    return (v, v)


@dataclass(frozen=True)
class Step:
    """One forward pass: ``batch`` sequences (or images), ``seq`` new tokens each, ``context`` tokens already
    in the KV cache (0 for prefill without a cached prefix; CNNs use seq = 1, one "token" per image)."""

    batch: int = 1
    seq: int = 1
    context: int = 0

    def __post_init__(self):
        check_int(self.batch, "batch", minimum=1)
        check_int(self.seq, "seq", minimum=1)
        check_int(self.context, "context", minimum=0)

    @property
    def tokens(self) -> int:
        """Rows of the activation matrices: batch x new tokens."""
        return self.batch * self.seq

    @property
    def kv_len(self) -> int:
        """Keys/values each new token attends to: cached context + the new tokens."""
        return self.context + self.seq


class Layer:
    """Base of the layer records: ``name``, ``kind``, :attr:`params`, :meth:`ops`."""

    name: str
    kind: str = "layer"

    @property
    def params(self) -> int:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def ops(self, step: Step) -> list[Op]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


@dataclass(frozen=True)
class Linear(Layer):
    """A fully connected layer (weight out x in, as PyTorch stores it): tokens x in -> tokens x out."""

    name: str
    in_features: int
    out_features: int
    bias: bool = True
    tied: bool = False
    per_sequence: bool = False
    kind: str = "linear"

    def __post_init__(self):
        check_int(self.in_features, f"{self.name}: in_features", minimum=1)
        check_int(self.out_features, f"{self.name}: out_features", minimum=1)

    @property
    def params(self) -> int:
        if self.tied:
            return 0
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def ops(self, step: Step) -> list[Op]:
        m = step.batch if self.per_sequence else step.tokens
        return [GemmOp(self.name, m=m, n=self.out_features, k=self.in_features, kind=self.kind)]


@dataclass(frozen=True)
class Conv2d(Layer):
    """A 2-D convolution on a fixed input size, lowered to an implicit GEMM (see the module docstring).

    ``kernel_size``, ``stride``, ``padding``, ``dilation`` and ``input_hw`` are ints or (h, w) pairs."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: object
    input_hw: object
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = False
    kind: str = "conv"

    def __post_init__(self):
        n = self.name
        check_int(self.in_channels, f"{n}: in_channels", minimum=1)
        check_int(self.out_channels, f"{n}: out_channels", minimum=1)
        g = check_int(self.groups, f"{n}: groups", minimum=1)
        if self.in_channels % g or self.out_channels % g:
            raise ValueError(f"{n}: groups={g} must divide in_channels={self.in_channels} "
                             f"and out_channels={self.out_channels}")
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, f"{n}: kernel_size", 1))
        object.__setattr__(self, "input_hw", _pair(self.input_hw, f"{n}: input_hw", 1))
        object.__setattr__(self, "stride", _pair(self.stride, f"{n}: stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, f"{n}: padding", 0))
        object.__setattr__(self, "dilation", _pair(self.dilation, f"{n}: dilation", 1))
        ho, wo = self.output_hw
        if ho < 1 or wo < 1:
            raise ValueError(f"{n}: kernel {self.kernel_size} (dilation {self.dilation}) does not fit the padded "
                             f"input {self.input_hw} + 2*{self.padding}")

    @property
    def output_hw(self) -> tuple[int, int]:
        """(H_out, W_out) = floor((H + 2p - d(k-1) - 1) / s) + 1, as PyTorch computes it."""
        out = []
        for i in range(2):
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            out.append((self.input_hw[i] + 2 * self.padding[i] - span) // self.stride[i] + 1)
        return (out[0], out[1])

    @property
    def params(self) -> int:
        kh, kw = self.kernel_size
        w = self.out_channels * (self.in_channels // self.groups) * kh * kw
        return w + (self.out_channels if self.bias else 0)

    def ops(self, step: Step) -> list[Op]:
        ho, wo = self.output_hw
        kh, kw = self.kernel_size
        g = self.groups
        return [GemmOp(self.name, m=step.batch * ho * wo, n=self.out_channels // g,
                       k=(self.in_channels // g) * kh * kw, count=g, kind=self.kind)]


@dataclass(frozen=True)
class Attention(Layer):
    """Scaled dot-product attention (no parameters: the projections are separate :class:`Linear` layers).

    ``kv_heads < heads`` is grouped-query attention (``kv_heads == 1``: multi-query); ``kv_cache`` appends the
    new K/V rows to a cache (decoders)."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool = False
    kv_cache: bool = False
    kind: str = "attention"

    def __post_init__(self):
        h = check_int(self.heads, f"{self.name}: heads", minimum=1)
        kv = check_int(self.kv_heads, f"{self.name}: kv_heads", minimum=1)
        check_int(self.head_dim, f"{self.name}: head_dim", minimum=1)
        if h % kv:
            raise ValueError(f"{self.name}: kv_heads={kv} must divide heads={h}")

    @property
    def params(self) -> int:
        return 0

    @property
    def group(self) -> int:
        """Query heads per K/V head."""
        return self.heads // self.kv_heads

    def keys_per_token(self, step: Step) -> int:
        """Keys each new token attends to, averaged over the new tokens (see the module doc)."""
        if self.causal:
            return step.context + (step.seq + 2) // 2
        return step.kv_len

    def ops(self, step: Step) -> list[Op]:
        b, s, n_kv = step.batch, step.seq, self.keys_per_token(step)
        count = b * self.kv_heads
        m = self.group * s
        scores = b * self.heads * s * n_kv
        out: list[Op] = []
        if self.kv_cache:
            kv = 2 * step.tokens * self.kv_heads * self.head_dim
            out.append(MemoryOp(f"{self.name}.kv_append", elements_read=kv, elements_written=kv,
                                ops_per_element=0.0, kind="kv_cache"))
        out += [
            GemmOp(f"{self.name}.qk", m=m, n=n_kv, k=self.head_dim, count=count, weight_operand=False,
                   kind="attention_qk"),
            # scale, (mask), max, exp, sum, divide: ~5 vector ops per score
            MemoryOp(f"{self.name}.softmax", elements_read=scores, elements_written=scores, ops_per_element=5.0,
                     kind="softmax"),
            GemmOp(f"{self.name}.pv", m=m, n=self.head_dim, k=n_kv, count=count, weight_operand=False,
                   kind="attention_pv"),
        ]
        return out


@dataclass(frozen=True)
class Embedding(Layer):
    """A table lookup: ``index`` is ``token`` (one row per token id), ``position`` (rows context..context+seq-1,
    shared by the batch) or ``type`` (BERT's segment ids).  The distinct rows touched are read as
    parameters; the gathered rows are written as activations.  ``tied`` tables are counted elsewhere."""

    name: str
    num_embeddings: int
    dim: int
    index: str = "token"
    kind: str = "embedding"

    def __post_init__(self):
        check_int(self.num_embeddings, f"{self.name}: num_embeddings", minimum=1)
        check_int(self.dim, f"{self.name}: dim", minimum=1)
        check_choice(self.index, f"{self.name}: index", ("token", "position", "type"))

    @property
    def params(self) -> int:
        return self.num_embeddings * self.dim

    def ops(self, step: Step) -> list[Op]:
        if self.index == "position":
            if step.kv_len > self.num_embeddings:
                raise ValueError(f"{self.name}: context + seq = {step.kv_len} exceeds the {self.num_embeddings} "
                                 "learned positions of this model")
            rows = step.seq
        else:
            rows = min(step.tokens, self.num_embeddings)
        return [MemoryOp(self.name, elements_read=0, elements_written=step.tokens * self.dim, ops_per_element=0.0,
                         weight_elements=rows * self.dim, kind="embedding")]


_NORM_KINDS = {"layernorm": (2, 5.0), "rmsnorm": (1, 4.0), "batchnorm": (2, 2.0)}


@dataclass(frozen=True)
class Norm(Layer):
    """LayerNorm (gain + bias), RMSNorm (gain) or BatchNorm (gain + bias; running statistics are buffers,
    not parameters).  ``width`` elements per token (per image for a CNN: channels x H x W; ``dim`` is the
    number of channels there).  ``folded`` norms (BatchNorm folded into the preceding convolution at
    inference) own parameters but add no op."""

    name: str
    dim: int
    norm: str = "layernorm"
    width: int | None = None
    folded: bool = False
    kind: str = "norm"

    def __post_init__(self):
        check_int(self.dim, f"{self.name}: dim", minimum=1)
        check_choice(self.norm, f"{self.name}: norm", tuple(_NORM_KINDS))
        if self.width is None:
            object.__setattr__(self, "width", self.dim)
        check_int(self.width, f"{self.name}: width", minimum=1)

    @property
    def params(self) -> int:
        return _NORM_KINDS[self.norm][0] * self.dim

    def ops(self, step: Step) -> list[Op]:
        if self.folded:
            return []
        e = step.tokens * self.width
        return [MemoryOp(self.name, elements_read=e, elements_written=e, ops_per_element=_NORM_KINDS[self.norm][1],
                         weight_elements=self.params, kind="norm")]


@dataclass(frozen=True)
class Elementwise(Layer):
    """A parameter-free elementwise op on ``width`` elements per token (per image in a CNN), reading
    ``inputs`` tensors of that width: activation functions (1 input), residual adds and SwiGLU's gate
    product (2 inputs), rotary embeddings (1 input)."""

    name: str
    width: int
    inputs: int = 1
    ops_per_element: float = 1.0
    kind: str = "elementwise"

    def __post_init__(self):
        check_int(self.width, f"{self.name}: width", minimum=1)
        check_int(self.inputs, f"{self.name}: inputs", minimum=1)

    @property
    def params(self) -> int:
        return 0

    def ops(self, step: Step) -> list[Op]:
        e = step.tokens * self.width
        return [MemoryOp(self.name, elements_read=self.inputs * e, elements_written=e,
                         ops_per_element=float(self.ops_per_element), kind=self.kind)]


@dataclass(frozen=True)
class Pool2d(Layer):
    """Max or average pooling over ``channels`` feature maps of size ``input_hw`` (per image).  ``output_hw``
    set instead of a kernel gives adaptive pooling (torchvision's AdaptiveAvgPool2d)."""

    name: str
    channels: int
    input_hw: object
    kernel_size: object = None
    stride: object = None
    padding: object = 0
    pool: str = "max"
    output_hw: object = None
    kind: str = "pool"

    def __post_init__(self):
        n = self.name
        check_int(self.channels, f"{n}: channels", minimum=1)
        check_choice(self.pool, f"{n}: pool", ("max", "avg"))
        object.__setattr__(self, "input_hw", _pair(self.input_hw, f"{n}: input_hw", 1))
        if self.output_hw is not None:  # adaptive
            object.__setattr__(self, "output_hw", _pair(self.output_hw, f"{n}: output_hw", 1))
            return
        if self.kernel_size is None:
            raise ValueError(f"{n}: give kernel_size (or output_hw for adaptive pooling)")
        k = _pair(self.kernel_size, f"{n}: kernel_size", 1)
        s = _pair(self.stride if self.stride is not None else k, f"{n}: stride", 1)
        p = _pair(self.padding, f"{n}: padding", 0)
        object.__setattr__(self, "kernel_size", k)
        object.__setattr__(self, "stride", s)
        object.__setattr__(self, "padding", p)
        out = tuple((self.input_hw[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(2))
        if min(out) < 1:
            raise ValueError(f"{n}: kernel {k} does not fit the padded input {self.input_hw}")
        object.__setattr__(self, "output_hw", out)

    @property
    def params(self) -> int:
        return 0

    def ops(self, step: Step) -> list[Op]:
        h, w = self.input_hw
        ho, wo = self.output_hw
        if self.kernel_size is not None:
            window = self.kernel_size[0] * self.kernel_size[1]
        else:  # adaptive: each output averages about (H/Ho) x (W/Wo) inputs
            window = max(1, -(-h // ho) * -(-w // wo))
        return [MemoryOp(self.name, elements_read=step.batch * self.channels * h * w,
                         elements_written=step.batch * self.channels * ho * wo, ops_per_element=float(window),
                         kind="pool")]


@dataclass(frozen=True)
class Model:
    """A named stack of layers (shapes only, no weights).

    ``family`` decides which passes exist: ``cnn`` and ``encoder`` models have one forward pass (phase
    ``prefill``); ``decoder`` models also ``decode`` (one new token per sequence against a KV cache).
    ``max_positions`` bounds context + seq; ``default_seq`` is used when no sequence length is given."""

    name: str
    family: str
    layers: tuple
    source: str = ""
    input_hw: tuple | None = None
    max_positions: int | None = None
    default_seq: int = 1
    description: str = ""

    def __post_init__(self):
        check_choice(self.family, f"model {self.name}: family", FAMILIES)
        names = [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name}: layer names must be unique")
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def params(self) -> int:
        """Parameter count (tied weights counted once)."""
        return sum(l.params for l in self.layers)

    def step(self, batch: int = 1, seq: int | None = None, phase: str = "prefill",
             context: int | None = None) -> Step:
        """The :class:`Step` for a pass, validated against the model (phase exists, positions fit).

        prefill: ``seq`` prompt tokens per sequence (default ``default_seq``; CNNs: 1 image) after
        ``context`` cached tokens (default 0).  decode: one new token per sequence after ``context`` cached
        tokens (default: ``seq`` if given, else 1024 capped by ``max_positions - 1``)."""
        check_choice(phase, "phase", PHASES)
        batch = check_int(batch, "batch", minimum=1)
        if seq is not None:
            seq = check_int(seq, "seq", minimum=1)
        if context is not None:
            context = check_int(context, "context", minimum=0)
        if self.family == "cnn":
            if phase != "prefill":
                raise ValueError(f"{self.name} is a CNN: it has one forward pass (phase prefill), no decode phase")
            if context:
                raise ValueError(f"{self.name} is a CNN: --context applies to decoder LLMs only")
            return Step(batch=batch, seq=1, context=0)
        if self.family == "encoder" and phase == "decode":
            raise ValueError(f"{self.name} is an encoder: it has no decode phase (use phase prefill)")
        if phase == "prefill":
            step = Step(batch=batch, seq=seq if seq is not None else self.default_seq, context=context or 0)
        else:
            if context is None:
                context = seq if seq is not None else 1024
                if self.max_positions is not None:
                    context = min(context, self.max_positions - 1)
            step = Step(batch=batch, seq=1, context=context)
        if self.max_positions is not None and step.kv_len > self.max_positions:
            raise ValueError(f"{self.name}: context + seq = {step.kv_len} exceeds its {self.max_positions} "
                             "positions")
        return step

    def layer_ops(self, step: Step) -> list[tuple[Layer, list[Op]]]:
        """Each layer with the ops it reduces to for ``step`` (layers with no op, e.g. folded norms, kept)."""
        return [(layer, layer.ops(step)) for layer in self.layers]

    def ops(self, step: Step) -> list[Op]:
        """All ops of one pass, in execution order."""
        return [op for layer in self.layers for op in layer.ops(step)]

    def macs(self, step: Step | None = None, *, weights_only: bool = False) -> int:
        """Multiply-accumulates of the GEMM ops (convolutions, linear layers, attention products) of a pass
        (default: batch 1, default sequence); ``weights_only`` drops the activation x activation products."""
        step = step or self.step()
        return sum(op.macs for op in self.ops(step)
                   if isinstance(op, GemmOp) and (op.weight_operand or not weights_only))

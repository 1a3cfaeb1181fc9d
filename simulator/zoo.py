"""The built-in model zoo: shapes only (no weights), built from the published architectures.

Each builder follows the reference implementation named in its docstring layer by layer, so the parameter
count is the published one exactly (tests check every model) and the CNNs' multiply-accumulates match the
published figures (torchvision's model cards) within 1%.  Layer names follow the reference module names
(``layer1.0.conv2``, ``encoder.layer.3.attention.self.query``, ``layers.0.self_attn.q_proj``) so a per-layer
report can be matched with a checkpoint.

Inference conventions (see :mod:`.workload`): BatchNorm is folded into the preceding convolution and
ReLU runs in the convolution/GEMM epilogue (parameters counted, no extra op); dropout is the identity;
residual adds, LayerNorm/RMSNorm, GELU/SiLU and softmax are memory ops.
"""
from __future__ import annotations

from .workload import Attention, Conv2d, Elementwise, Embedding, Linear, Model, Norm, Pool2d

__all__ = ["list_models", "load_model", "PUBLISHED_PARAMS", "PUBLISHED_MACS", "MODEL_INFO"]

#: Published parameter counts (tied weights counted once) and where they come from.
PUBLISHED_PARAMS = {
    # torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]
    "resnet50": 25_557_032,
    # torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["num_params"]
    "vgg16": 138_357_544,
    # torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["num_params"]
    "alexnet": 61_100_840,
    # Hugging Face transformers BertModel("bert-base-uncased") incl. pooler: sum(p.numel())
    "bert-base": 109_482_240,
    # BertModel("bert-large-uncased") incl. pooler
    "bert-large": 335_141_888,
    # GPT2LMHeadModel("gpt2"); the LM head is tied to wte and counted once
    "gpt2": 124_439_808,
    # LlamaForCausalLM("meta-llama/Llama-2-7b-hf"): untied LM head
    "llama-2-7b": 6_738_415_616,
    # LlamaForCausalLM("meta-llama/Llama-2-13b-hf")
    "llama-2-13b": 13_015_864_320,
    # LlamaForCausalLM("meta-llama/Meta-Llama-3-8B"): GQA with 8 K/V heads, 128256-token vocabulary
    "llama-3-8b": 8_030_261_248,
    # BertModel("sentence-transformers/all-MiniLM-L6-v2") incl. the (unused by sentence-transformers) pooler
    "all-minilm-l6-v2": 22_713_216,
}

#: Published multiply-accumulates per 224x224 image (torchvision model cards list them as "GFLOPS").
PUBLISHED_MACS = {"resnet50": 4.09e9, "vgg16": 15.47e9, "alexnet": 0.71e9}


# --------------------------------------------------------------------------------------------- CNNs
class _CNN:
    """Helper that tracks the feature-map shape while layers are appended."""

    def __init__(self, channels: int, hw: tuple[int, int]):
        self.layers: list = []
        self.c = channels
        self.hw = hw

    def conv(self, name, cout, k, stride=1, padding=0, bias=False, bn=None, groups=1):
        layer = Conv2d(name, self.c, cout, k, self.hw, stride=stride, padding=padding, groups=groups, bias=bias)
        self.layers.append(layer)
        if bn:
            self.layers.append(Norm(bn, cout, norm="batchnorm", folded=True))
        self.c, self.hw = cout, layer.output_hw
        return layer

    def pool(self, name, k=None, stride=None, padding=0, pool="max", output_hw=None):
        layer = Pool2d(name, self.c, self.hw, kernel_size=k, stride=stride, padding=padding, pool=pool,
                       output_hw=output_hw)
        self.layers.append(layer)
        self.hw = layer.output_hw
        return layer

    @property
    def width(self) -> int:
        return self.c * self.hw[0] * self.hw[1]


def _hw(input_hw) -> tuple[int, int]:
    if isinstance(input_hw, int):
        return (input_hw, input_hw)
    return tuple(input_hw)


def resnet50(input_hw=224) -> Model:
    """ResNet-50 v1.5 as torchvision builds it (He et al. 2016; stride 2 in the 3x3 conv of each
    bottleneck): 25,557,032 parameters, ~4.09 GMACs at 224x224."""
    net = _CNN(3, _hw(input_hw))
    net.conv("conv1", 64, 7, stride=2, padding=3, bn="bn1")
    net.pool("maxpool", 3, 2, 1)
    for li, (blocks, width, stride) in enumerate(((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            s = stride if b == 0 else 1
            cin, hw_in = net.c, net.hw
            net.conv(f"{p}.conv1", width, 1, bn=f"{p}.bn1")
            net.conv(f"{p}.conv2", width, 3, stride=s, padding=1, bn=f"{p}.bn2")
            net.conv(f"{p}.conv3", width * 4, 1, bn=f"{p}.bn3")
            if b == 0:
                ds = Conv2d(f"{p}.downsample.0", cin, width * 4, 1, hw_in, stride=s)
                net.layers += [ds, Norm(f"{p}.downsample.1", width * 4, norm="batchnorm", folded=True)]
            # residual add followed by ReLU
            net.layers.append(Elementwise(f"{p}.add", net.width, inputs=2, ops_per_element=2.0, kind="residual"))
    net.pool("avgpool", pool="avg", output_hw=1)
    net.layers.append(Linear("fc", 2048, 1000))
    return Model("resnet50", "cnn", net.layers, source="torchvision.models.resnet50", input_hw=_hw(input_hw),
                 description="ResNet-50 v1.5 image classifier (torchvision)")


def vgg16(input_hw=224) -> Model:
    """VGG-16 (configuration D, Simonyan & Zisserman 2015) as torchvision builds it, without batch norm:
    138,357,544 parameters, ~15.47 GMACs at 224x224."""
    net = _CNN(3, _hw(input_hw))
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    i = 0
    for v in cfg:
        if v == "M":
            net.pool(f"features.{i}", 2, 2)
            i += 1
        else:
            net.conv(f"features.{i}", v, 3, padding=1, bias=True)
            i += 2  # conv, ReLU (fused)
    net.pool("avgpool", pool="avg", output_hw=7)
    net.layers += [Linear("classifier.0", 512 * 7 * 7, 4096), Linear("classifier.3", 4096, 4096),
                   Linear("classifier.6", 4096, 1000)]
    return Model("vgg16", "cnn", net.layers, source="torchvision.models.vgg16", input_hw=_hw(input_hw),
                 description="VGG-16 image classifier (torchvision, no batch norm)")


def alexnet(input_hw=224) -> Model:
    """AlexNet as torchvision builds it (the "one weird trick" single-tower variant, Krizhevsky 2014):
    61,100,840 parameters, ~0.71 GMACs at 224x224."""
    net = _CNN(3, _hw(input_hw))
    net.conv("features.0", 64, 11, stride=4, padding=2, bias=True)
    net.pool("features.2", 3, 2)
    net.conv("features.3", 192, 5, padding=2, bias=True)
    net.pool("features.5", 3, 2)
    net.conv("features.6", 384, 3, padding=1, bias=True)
    net.conv("features.8", 256, 3, padding=1, bias=True)
    net.conv("features.10", 256, 3, padding=1, bias=True)
    net.pool("features.12", 3, 2)
    net.pool("avgpool", pool="avg", output_hw=6)
    net.layers += [Linear("classifier.1", 256 * 6 * 6, 4096), Linear("classifier.4", 4096, 4096),
                   Linear("classifier.6", 4096, 1000)]
    return Model("alexnet", "cnn", net.layers, source="torchvision.models.alexnet", input_hw=_hw(input_hw),
                 description="AlexNet image classifier (torchvision)")


# ------------------------------------------------------------------------------------- transformers
def _bert(name, *, vocab, hidden, layers, heads, ffn, max_positions=512, type_vocab=2, source="", description=""):
    """A BERT encoder as Hugging Face's BertModel builds it (embeddings + LayerNorm, post-norm blocks with
    separate Q/K/V projections, GELU MLP, tanh pooler on [CLS])."""
    d = hidden
    L: list = [
        Embedding("embeddings.word_embeddings", vocab, d),
        Embedding("embeddings.position_embeddings", max_positions, d, index="position"),
        Embedding("embeddings.token_type_embeddings", type_vocab, d, index="type"),
        Elementwise("embeddings.add", d, inputs=3, ops_per_element=2.0, kind="residual"),
        Norm("embeddings.LayerNorm", d),
    ]
    for i in range(layers):
        p = f"encoder.layer.{i}"
        L += [
            Linear(f"{p}.attention.self.query", d, d),
            Linear(f"{p}.attention.self.key", d, d),
            Linear(f"{p}.attention.self.value", d, d),
            Attention(f"{p}.attention.self", heads, heads, d // heads),
            Linear(f"{p}.attention.output.dense", d, d),
            Elementwise(f"{p}.attention.output.add", d, inputs=2, kind="residual"),
            Norm(f"{p}.attention.output.LayerNorm", d),
            Linear(f"{p}.intermediate.dense", d, ffn),
            Elementwise(f"{p}.intermediate.gelu", ffn, ops_per_element=8.0, kind="activation"),
            Linear(f"{p}.output.dense", ffn, d),
            Elementwise(f"{p}.output.add", d, inputs=2, kind="residual"),
            Norm(f"{p}.output.LayerNorm", d),
        ]
    L.append(Linear("pooler.dense", d, d, per_sequence=True))
    return Model(name, "encoder", L, source=source, max_positions=max_positions, default_seq=128,
                 description=description)


def bert_base() -> Model:
    """BERT-base (uncased): 12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 30522 — 109,482,240
    parameters with the pooler (Devlin et al. 2019; HF ``bert-base-uncased``)."""
    return _bert("bert-base", vocab=30522, hidden=768, layers=12, heads=12, ffn=3072,
                 source="huggingface bert-base-uncased (BertModel)", description="BERT-base uncased encoder")


def bert_large() -> Model:
    """BERT-large (uncased): 24 layers, hidden 1024, 16 heads, FFN 4096 — 335,141,888 parameters."""
    return _bert("bert-large", vocab=30522, hidden=1024, layers=24, heads=16, ffn=4096,
                 source="huggingface bert-large-uncased (BertModel)", description="BERT-large uncased encoder")


def all_minilm_l6_v2() -> Model:
    """all-MiniLM-L6-v2 (sentence-transformers): a BERT with 6 layers, hidden 384, 12 heads, FFN 1536 —
    22,713,216 parameters with the pooler."""
    return _bert("all-minilm-l6-v2", vocab=30522, hidden=384, layers=6, heads=12, ffn=1536,
                 source="huggingface sentence-transformers/all-MiniLM-L6-v2 (BertModel)",
                 description="sentence embedding encoder (MiniLM, 6 layers)")


def gpt2() -> Model:
    """GPT-2 small: 12 pre-norm layers, d 768, 12 heads, learned positions (1024), fused QKV (``c_attn``),
    GELU MLP, LM head tied to the token embedding — 124,439,808 parameters (Radford et al. 2019; HF
    ``gpt2``)."""
    d, vocab, heads = 768, 50257, 12
    L: list = [Embedding("wte", vocab, d), Embedding("wpe", 1024, d, index="position"),
               Elementwise("embed.add", d, inputs=2, kind="residual")]
    for i in range(12):
        p = f"h.{i}"
        L += [
            Norm(f"{p}.ln_1", d),
            Linear(f"{p}.attn.c_attn", d, 3 * d),
            Attention(f"{p}.attn", heads, heads, d // heads, causal=True, kv_cache=True),
            Linear(f"{p}.attn.c_proj", d, d),
            Elementwise(f"{p}.attn.add", d, inputs=2, kind="residual"),
            Norm(f"{p}.ln_2", d),
            Linear(f"{p}.mlp.c_fc", d, 4 * d),
            Elementwise(f"{p}.mlp.gelu", 4 * d, ops_per_element=8.0, kind="activation"),
            Linear(f"{p}.mlp.c_proj", 4 * d, d),
            Elementwise(f"{p}.mlp.add", d, inputs=2, kind="residual"),
        ]
    L += [Norm("ln_f", d), Linear("lm_head", d, vocab, bias=False, tied=True, per_sequence=True, kind="lm_head")]
    return Model("gpt2", "decoder", L, source="huggingface gpt2 (GPT2LMHeadModel)", max_positions=1024,
                 default_seq=512, description="GPT-2 small decoder")


def _llama(name, *, vocab, d, layers, heads, kv_heads, ffn, max_positions, source, description):
    """A Llama decoder as Hugging Face's LlamaForCausalLM builds it: RMSNorm pre-norm blocks, separate
    bias-free Q/K/V/O projections (GQA when kv_heads < heads), rotary embeddings, SwiGLU MLP, untied LM
    head."""
    hd = d // heads
    L: list = [Embedding("model.embed_tokens", vocab, d)]
    for i in range(layers):
        p = f"model.layers.{i}"
        L += [
            Norm(f"{p}.input_layernorm", d, norm="rmsnorm"),
            Linear(f"{p}.self_attn.q_proj", d, heads * hd, bias=False),
            Linear(f"{p}.self_attn.k_proj", d, kv_heads * hd, bias=False),
            Linear(f"{p}.self_attn.v_proj", d, kv_heads * hd, bias=False),
            Elementwise(f"{p}.self_attn.rotary", (heads + kv_heads) * hd, ops_per_element=3.0, kind="rope"),
            Attention(f"{p}.self_attn", heads, kv_heads, hd, causal=True, kv_cache=True),
            Linear(f"{p}.self_attn.o_proj", heads * hd, d, bias=False),
            Elementwise(f"{p}.self_attn.add", d, inputs=2, kind="residual"),
            Norm(f"{p}.post_attention_layernorm", d, norm="rmsnorm"),
            Linear(f"{p}.mlp.gate_proj", d, ffn, bias=False),
            Linear(f"{p}.mlp.up_proj", d, ffn, bias=False),
            Elementwise(f"{p}.mlp.act", ffn, inputs=2, ops_per_element=5.0, kind="activation"),  # silu(g) * u
            Linear(f"{p}.mlp.down_proj", ffn, d, bias=False),
            Elementwise(f"{p}.mlp.add", d, inputs=2, kind="residual"),
        ]
    L += [Norm("model.norm", d, norm="rmsnorm"), Linear("lm_head", d, vocab, bias=False, per_sequence=True,
                                                        kind="lm_head")]
    return Model(name, "decoder", L, source=source, max_positions=max_positions, default_seq=512,
                 description=description)


def llama_2_7b() -> Model:
    """Llama-2-7B: 32 layers, d 4096, 32 heads (MHA), FFN 11008, vocabulary 32000, 4096 positions —
    6,738,415,616 parameters (Touvron et al. 2023; HF ``meta-llama/Llama-2-7b-hf``)."""
    return _llama("llama-2-7b", vocab=32000, d=4096, layers=32, heads=32, kv_heads=32, ffn=11008,
                  max_positions=4096, source="huggingface meta-llama/Llama-2-7b-hf", description="Llama-2 7B decoder")


def llama_2_13b() -> Model:
    """Llama-2-13B: 40 layers, d 5120, 40 heads (MHA), FFN 13824 — 13,015,864,320 parameters."""
    return _llama("llama-2-13b", vocab=32000, d=5120, layers=40, heads=40, kv_heads=40, ffn=13824,
                  max_positions=4096, source="huggingface meta-llama/Llama-2-13b-hf",
                  description="Llama-2 13B decoder")


def llama_3_8b() -> Model:
    """Llama-3-8B: 32 layers, d 4096, 32 query / 8 K/V heads (GQA), FFN 14336, vocabulary 128256, 8192
    positions — 8,030,261,248 parameters (HF ``meta-llama/Meta-Llama-3-8B``)."""
    return _llama("llama-3-8b", vocab=128256, d=4096, layers=32, heads=32, kv_heads=8, ffn=14336,
                  max_positions=8192, source="huggingface meta-llama/Meta-Llama-3-8B",
                  description="Llama-3 8B decoder (GQA)")


_BUILDERS = {
    "resnet50": resnet50,
    "vgg16": vgg16,
    "alexnet": alexnet,
    "bert-base": bert_base,
    "bert-large": bert_large,
    "gpt2": gpt2,
    "llama-2-7b": llama_2_7b,
    "llama-2-13b": llama_2_13b,
    "llama-3-8b": llama_3_8b,
    "all-minilm-l6-v2": all_minilm_l6_v2,
}

_ALIASES = {
    "resnet-50": "resnet50", "vgg-16": "vgg16", "bert-base-uncased": "bert-base",
    "bert-large-uncased": "bert-large", "gpt-2": "gpt2", "llama2-7b": "llama-2-7b", "llama2-13b": "llama-2-13b",
    "llama3-8b": "llama-3-8b", "minilm": "all-minilm-l6-v2", "all-minilm": "all-minilm-l6-v2",
}

#: One-line description per model id (for listings), without building the model.
MODEL_INFO = {name: (b.__doc__ or "").strip().split("\n")[0] for name, b in _BUILDERS.items()}

_CACHE: dict = {}


def list_models() -> list[str]:
    """The ids of the built-in models."""
    return list(_BUILDERS)


def load_model(name: str, *, input_hw=None) -> Model:
    """The built-in model ``name`` (case-insensitive; a few aliases such as ``bert-base-uncased``).

    ``input_hw`` (an int or (h, w)) builds a CNN for another input resolution (default 224).  Unknown names
    raise ``ValueError`` listing the valid ones."""
    if not isinstance(name, str):
        raise TypeError(f"model: expected a model name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_BUILDERS)}")
    builder = _BUILDERS[key]
    if input_hw is not None:
        if key not in PUBLISHED_MACS:
            raise ValueError(f"input_hw applies to the CNNs ({', '.join(PUBLISHED_MACS)}), not {key}")
        return builder(input_hw)
    if key not in _CACHE:  # models are immutable: build each once
        _CACHE[key] = builder()
    return _CACHE[key]

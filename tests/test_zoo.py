"""The model zoo: exact published parameter counts, CNN MACs within 1% of the published figures."""
from __future__ import annotations

import pytest

from memwall.simulator import zoo
from memwall.simulator.ops import GemmOp
from memwall.simulator.workload import Attention, Conv2d, Embedding, Linear

# Published parameter counts (sum of p.numel() of the reference implementations; see simulator/zoo.py).
PUBLISHED = {
    "resnet50": 25_557_032,        # torchvision ResNet50_Weights.IMAGENET1K_V1
    "vgg16": 138_357_544,          # torchvision VGG16_Weights.IMAGENET1K_V1
    "alexnet": 61_100_840,         # torchvision AlexNet_Weights.IMAGENET1K_V1
    "bert-base": 109_482_240,      # HF bert-base-uncased, with pooler
    "bert-large": 335_141_888,     # HF bert-large-uncased, with pooler
    "gpt2": 124_439_808,           # HF gpt2, tied LM head
    "llama-2-7b": 6_738_415_616,   # HF meta-llama/Llama-2-7b-hf
    "llama-2-13b": 13_015_864_320,  # HF meta-llama/Llama-2-13b-hf
    "llama-3-8b": 8_030_261_248,   # HF meta-llama/Meta-Llama-3-8B
    "all-minilm-l6-v2": 22_713_216,  # HF sentence-transformers/all-MiniLM-L6-v2
}
# torchvision model cards ("GFLOPS", which are multiply-accumulates) at 224 x 224
PUBLISHED_GMACS = {"resnet50": 4.09, "vgg16": 15.47, "alexnet": 0.71}


def test_zoo_lists_exactly_the_issue_models():
    assert sorted(zoo.list_models()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_is_the_published_one(name):
    assert zoo.load_model(name).params == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_cnn_macs_within_one_percent(name):
    model = zoo.load_model(name)
    macs = model.macs(model.step(batch=1))
    assert macs == pytest.approx(PUBLISHED_GMACS[name] * 1e9, rel=0.01)
    # batch scales MACs linearly
    assert model.macs(model.step(batch=4)) == 4 * macs


def test_resnet50_macs_by_hand_for_the_stem_and_fc():
    ops = {op.name: op for op in zoo.load_model("resnet50").ops(zoo.load_model("resnet50").step())}
    assert ops["conv1"].macs == 112 * 112 * 64 * 3 * 7 * 7
    assert ops["fc"].macs == 2048 * 1000
    assert ops["layer4.2.conv3"].m == 7 * 7  # final feature map 7 x 7
    assert ops["layer2.0.conv2"].m == 28 * 28  # stride 2 in the 3x3 conv (v1.5)


def test_llama_3_uses_gqa_and_llama_2_does_not():
    def attn(name):
        return next(l for l in zoo.load_model(name).layers if isinstance(l, Attention))
    assert (attn("llama-3-8b").heads, attn("llama-3-8b").kv_heads) == (32, 8)
    assert attn("llama-2-7b").kv_heads == 32
    k_proj = next(l for l in zoo.load_model("llama-3-8b").layers if l.name.endswith("k_proj"))
    assert (k_proj.in_features, k_proj.out_features) == (4096, 1024)


def test_decode_reads_every_linear_weight_once():
    model = zoo.load_model("llama-2-7b")
    ops = model.ops(model.step(batch=1, phase="decode", context=1024))
    linear = sum(l.params for l in model.layers if isinstance(l, Linear))
    assert sum(op.weight_elements for op in ops if isinstance(op, GemmOp)) == linear
    emb = next(op for op in ops if op.kind == "embedding")
    assert emb.weight_elements == 4096  # one row gathered
    # the K/V cache: 32 layers x 2 x 32 heads x 1025 positions x 128
    kv = sum(op.count * op.k * op.n for op in ops if isinstance(op, GemmOp) and not op.weight_operand)
    assert kv == 32 * 2 * 32 * 1025 * 128


def test_gpt2_lm_head_is_tied_but_still_read():
    model = zoo.load_model("gpt2")
    head = next(l for l in model.layers if l.name == "lm_head")
    wte = next(l for l in model.layers if l.name == "wte")
    assert head.params == 0 and head.tied and wte.params == 50257 * 768
    (op,) = head.ops(model.step(batch=2, seq=10))
    assert op.weight_elements == 50257 * 768 and op.m == 2


def test_layer_names_unique_and_model_shapes_are_immutable():
    for name in zoo.list_models():
        m = zoo.load_model(name)
        assert len({l.name for l in m.layers}) == len(m.layers)
    assert zoo.load_model("bert-base") is zoo.load_model("BERT_base")  # cached, case/underscore-insensitive


def test_aliases_and_input_resolution():
    assert zoo.load_model("bert-base-uncased").name == "bert-base"
    small = zoo.load_model("resnet50", input_hw=112)
    assert small.params == PUBLISHED["resnet50"]
    conv1 = next(l for l in small.layers if isinstance(l, Conv2d))
    assert conv1.output_hw == (56, 56)
    with pytest.raises(ValueError, match="CNN"):
        zoo.load_model("gpt2", input_hw=64)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50.*llama-3-8b"):
        zoo.load_model("resnet51")
    with pytest.raises(TypeError):
        zoo.load_model(3)


def test_position_limits():
    with pytest.raises(ValueError, match="512"):
        zoo.load_model("bert-base").step(seq=600)
    gpt = zoo.load_model("gpt2")
    with pytest.raises(ValueError, match="1024"):
        gpt.step(phase="decode", context=1024)
    emb = [l for l in gpt.layers if isinstance(l, Embedding)]
    assert [e.index for e in emb] == ["token", "position"]

"""Layers reduced to GemmOp/MemoryOp: shapes checked by hand and against plain NumPy references."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwall.simulator.ops import GemmOp, MemoryOp
from memwall.simulator.workload import (Attention, Conv2d, Elementwise, Embedding, Linear, Model, Norm, Pool2d,
                                        Step)


# ------------------------------------------------------------------------------- NumPy references
def conv2d_reference(x, w, stride, padding, dilation, groups):
    """Direct convolution with explicit loops over the output (NCHW, weight (Cout, Cin/g, kh, kw))."""
    b, cin, h, wd = x.shape
    cout, cpg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    xp = np.zeros((b, cin, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    ho = [i for i in range(0, h + 2 * ph, sh) if i + dh * (kh - 1) < h + 2 * ph]
    wo = [j for j in range(0, wd + 2 * pw, sw) if j + dw * (kw - 1) < wd + 2 * pw]
    out = np.zeros((b, cout, len(ho), len(wo)))
    opg = cout // groups
    for o in range(cout):
        g = o // opg
        for a, i in enumerate(ho):
            for c, j in enumerate(wo):
                patch = xp[:, g * cpg:(g + 1) * cpg, i:i + dh * (kh - 1) + 1:dh, j:j + dw * (kw - 1) + 1:dw]
                out[:, o, a, c] = (patch * w[o]).sum(axis=(1, 2, 3))
    return out


def conv2d_via_gemm(x, w, op: GemmOp, layer: Conv2d):
    """Evaluate the convolution as the GemmOp says: count x (m x k) @ (k x n) on im2col patches."""
    b, cin, h, wd = x.shape
    cout, cpg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    ho, wo = layer.output_hw
    xp = np.zeros((b, cin, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    out = np.zeros((b, cout, ho, wo))
    for g in range(op.count):
        cols = np.empty((b, ho, wo, cpg, kh, kw))
        for a in range(ho):
            for c in range(wo):
                cols[:, a, c] = xp[:, g * cpg:(g + 1) * cpg, a * sh:a * sh + dh * (kh - 1) + 1:dh,
                                   c * sw:c * sw + dw * (kw - 1) + 1:dw]
        A = cols.reshape(b * ho * wo, -1)
        assert A.shape == (op.m, op.k)
        B = w[g * op.n:(g + 1) * op.n].reshape(op.n, -1).T  # (k x n)
        out[:, g * op.n:(g + 1) * op.n] = (A @ B).reshape(b, ho, wo, op.n).transpose(0, 3, 1, 2)
    return out


# ------------------------------------------------------------------------------------------ Linear
def test_linear_is_one_gemm_tokens_by_in_to_out():
    layer = Linear("fc", 4096, 11008)
    (op,) = layer.ops(Step(batch=3, seq=7))
    assert op == GemmOp("fc", m=21, n=11008, k=4096, kind="linear")
    assert op.weight_elements == 4096 * 11008
    assert layer.params == 4096 * 11008 + 11008
    assert Linear("fc", 4096, 11008, bias=False).params == 4096 * 11008


def test_linear_per_sequence_and_tied():
    head = Linear("lm_head", 768, 50257, bias=False, tied=True, per_sequence=True)
    (op,) = head.ops(Step(batch=4, seq=100))
    assert (op.m, op.n, op.k) == (4, 50257, 768)
    assert head.params == 0  # counted with the embedding it shares


def test_linear_rejects_bad_sizes():
    with pytest.raises(ValueError, match="in_features"):
        Linear("fc", 0, 10)
    with pytest.raises(TypeError, match="out_features"):
        Linear("fc", 10, 2.5)


# ------------------------------------------------------------------------------------------ Conv2d
def test_conv_resnet_stem_by_hand():
    conv = Conv2d("conv1", 3, 64, 7, 224, stride=2, padding=3)
    assert conv.output_hw == (112, 112)  # (224 + 6 - 7) // 2 + 1
    (op,) = conv.ops(Step(batch=2))
    assert (op.m, op.n, op.k, op.count) == (2 * 112 * 112, 64, 3 * 49, 1)
    assert conv.params == 64 * 3 * 49
    assert op.macs == 2 * 112 * 112 * 64 * 147


def test_conv_depthwise_and_grouped():
    dw = Conv2d("dw", 32, 32, 3, 8, padding=1, groups=32, bias=True)
    (op,) = dw.ops(Step(batch=1))
    assert (op.m, op.n, op.k, op.count) == (64, 1, 9, 32)
    assert dw.params == 32 * 9 + 32
    g = Conv2d("g", 8, 16, 3, 5, groups=4)
    (op,) = g.ops(Step(batch=1))
    assert g.output_hw == (3, 3)
    assert (op.m, op.n, op.k, op.count) == (9, 4, 18, 4)
    assert op.weight_elements == g.params == 16 * 2 * 9


def test_conv_dilation_and_rectangular():
    c = Conv2d("c", 1, 1, (3, 1), (10, 7), dilation=(2, 1), stride=(1, 2))
    assert c.output_hw == (6, 4)  # (10 - 5) // 1 + 1, (7 - 1) // 2 + 1


def test_conv_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="groups"):
        Conv2d("c", 6, 8, 3, 8, groups=4)
    with pytest.raises(ValueError, match="does not fit"):
        Conv2d("c", 3, 8, 7, 4)
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d("c", 3, 8, (3, 3, 3), 8)


@given(
    b=st.integers(1, 2), cpg=st.integers(1, 3), opg=st.integers(1, 3), groups=st.integers(1, 3),
    h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 3), kw=st.integers(1, 3),
    s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2),
)
def test_conv_implicit_gemm_matches_direct_convolution(b, cpg, opg, groups, h, w, kh, kw, s, p, d):
    cin, cout = cpg * groups, opg * groups
    fits = h + 2 * p >= d * (kh - 1) + 1 and w + 2 * p >= d * (kw - 1) + 1
    if not fits:
        with pytest.raises(ValueError):
            Conv2d("c", cin, cout, (kh, kw), (h, w), stride=s, padding=p, dilation=d, groups=groups)
        return
    layer = Conv2d("c", cin, cout, (kh, kw), (h, w), stride=s, padding=p, dilation=d, groups=groups)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((b, cin, h, w))
    wt = rng.standard_normal((cout, cpg, kh, kw))
    ref = conv2d_reference(x, wt, (s, s), (p, p), (d, d), groups)
    assert ref.shape[2:] == layer.output_hw
    (op,) = layer.ops(Step(batch=b))
    np.testing.assert_allclose(conv2d_via_gemm(x, wt, op, layer), ref, rtol=1e-10, atol=1e-10)
    assert op.weight_elements == wt.size == layer.params


# --------------------------------------------------------------------------------------- Attention
def test_attention_decode_gqa_reads_the_kv_cache_once():
    att = Attention("attn", heads=32, kv_heads=8, head_dim=128, causal=True, kv_cache=True)
    ops = att.ops(Step(batch=2, seq=1, context=100))
    by = {op.name: op for op in ops}
    qk, pv, sm, app = by["attn.qk"], by["attn.pv"], by["attn.softmax"], by["attn.kv_append"]
    assert (qk.count, qk.m, qk.n, qk.k) == (16, 4, 101, 128)  # 4 query heads share each K/V head
    assert (pv.count, pv.m, pv.n, pv.k) == (16, 4, 128, 101)
    assert not qk.weight_operand and not pv.weight_operand
    assert qk.weight_elements == 0
    # the K operand (k x n per product) is the cached K: batch * kv_heads * kv_len * head_dim elements
    assert qk.count * qk.k * qk.n == 2 * 8 * 101 * 128
    assert pv.count * pv.k * pv.n == 2 * 8 * 101 * 128
    assert sm.elements_written == 2 * 32 * 1 * 101
    assert app.elements_written == 2 * 2 * 8 * 128  # new K and V rows
    assert att.params == 0


def test_attention_prefill_macs_match_naive_einsum_count():
    b, h, s, d = 2, 4, 9, 16
    att = Attention("a", h, h, d)
    ops = att.ops(Step(batch=b, seq=s))
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((b, h, s, d)) for _ in range(3))
    scores = np.einsum("bhsd,bhtd->bhst", q, k)
    out = np.einsum("bhst,bhtd->bhsd", scores, v)
    naive_macs = scores.size * d + out.size * s  # every score: d MACs; every output: s MACs
    assert sum(op.macs for op in ops if isinstance(op, GemmOp)) == naive_macs
    assert not any(op.kind == "kv_cache" for op in ops)


@pytest.mark.parametrize("seq, context", [(1, 0), (1, 7), (5, 0), (9, 3)])
def test_causal_attention_credits_the_masked_half(seq, context):
    b, h, d = 2, 4, 8
    att = Attention("a", h, 2, d, causal=True)
    ops = att.ops(Step(batch=b, seq=seq, context=context))
    # odd seq: every new token i attends to context + i + 1 keys -> exact MACs
    keys = sum(context + i + 1 for i in range(seq))
    assert sum(op.macs for op in ops if isinstance(op, GemmOp)) == 2 * b * h * keys * d
    assert att.keys_per_token(Step(batch=1, seq=1, context=context)) == context + 1  # decode: cache + itself
    assert att.keys_per_token(Step(batch=1, seq=4)) == 3  # even seq: mean 2.5 rounded up


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="kv_heads"):
        Attention("a", 32, 6, 128)


# ------------------------------------------------------------------------------ memory-only layers
def test_embedding_gathers_rows_and_checks_positions():
    tok = Embedding("wte", 50257, 768)
    (op,) = tok.ops(Step(batch=2, seq=3))
    assert isinstance(op, MemoryOp)
    assert (op.weight_elements, op.elements_written) == (6 * 768, 6 * 768)
    assert tok.params == 50257 * 768
    typ = Embedding("type", 2, 768, index="type")
    assert typ.ops(Step(batch=2, seq=3))[0].weight_elements == 2 * 768  # at most the table
    pos = Embedding("wpe", 1024, 768, index="position")
    assert pos.ops(Step(batch=4, seq=1, context=10))[0].weight_elements == 768  # one position, shared
    with pytest.raises(ValueError, match="1024"):
        pos.ops(Step(batch=1, seq=20, context=1010))


def test_norms_elementwise_and_pooling():
    ln = Norm("ln", 768)
    assert ln.params == 2 * 768
    (op,) = ln.ops(Step(batch=2, seq=5))
    assert (op.elements_read, op.elements_written, op.weight_elements) == (7680, 7680, 1536)
    assert Norm("rms", 4096, norm="rmsnorm").params == 4096
    bn = Norm("bn", 64, norm="batchnorm", folded=True)
    assert bn.params == 128 and bn.ops(Step()) == []
    add = Elementwise("add", 10, inputs=2)
    (op,) = add.ops(Step(batch=3))
    assert (op.elements_read, op.elements_written) == (60, 30)
    mp = Pool2d("mp", 64, 112, 3, 2, 1)
    assert mp.output_hw == (56, 56)
    (op,) = mp.ops(Step(batch=2))
    assert (op.elements_read, op.elements_written) == (2 * 64 * 112 * 112, 2 * 64 * 56 * 56)
    gap = Pool2d("gap", 2048, 7, pool="avg", output_hw=1)
    assert gap.ops(Step())[0].elements_written == 2048
    with pytest.raises(ValueError, match="norm"):
        Norm("x", 4, norm="groupnorm")
    with pytest.raises(ValueError, match="kernel_size"):
        Pool2d("p", 3, 8)


# ------------------------------------------------------------------------------------------ Model
def _tiny_decoder() -> Model:
    return Model("tiny", "decoder", [
        Embedding("emb", 100, 8),
        Linear("qkv", 8, 24),
        Attention("attn", 2, 2, 4, causal=True, kv_cache=True),
        Linear("head", 8, 100, per_sequence=True),
    ], max_positions=64, default_seq=16)


def test_model_steps_and_validation():
    m = _tiny_decoder()
    assert m.params == 800 + 8 * 24 + 24 + 8 * 100 + 100
    assert m.step() == Step(batch=1, seq=16, context=0)
    assert m.step(batch=3, phase="decode", context=10) == Step(batch=3, seq=1, context=10)
    assert m.step(phase="decode", seq=20) == Step(seq=1, context=20)
    assert m.step(phase="decode").context == 63  # 1024 capped by the positions
    with pytest.raises(ValueError, match="exceeds"):
        m.step(seq=60, context=10)
    with pytest.raises(ValueError, match="phase"):
        m.step(phase="train")
    with pytest.raises(ValueError, match="batch"):
        m.step(batch=0)
    cnn = Model("c", "cnn", [Linear("fc", 4, 2)])
    with pytest.raises(ValueError, match="decode"):
        cnn.step(phase="decode")
    enc = Model("e", "encoder", [Linear("fc", 4, 2)])
    with pytest.raises(ValueError, match="decode"):
        enc.step(phase="decode")
    with pytest.raises(ValueError, match="unique"):
        Model("dup", "cnn", [Linear("fc", 4, 2), Linear("fc", 2, 2)])
    with pytest.raises(ValueError, match="family"):
        Model("x", "rnn", [])


def test_model_ops_in_order_and_macs():
    m = _tiny_decoder()
    step = m.step(batch=2, phase="decode", context=5)
    pairs = m.layer_ops(step)
    assert [l.name for l, _ in pairs] == ["emb", "qkv", "attn", "head"]
    assert m.ops(step) == [op for _, ops in pairs for op in ops]
    # qkv: 2 tokens x 8 x 24; attention: 2 batch x 2 heads x (1 x 6 x 4 + 1 x 4 x 6); head: 2 x 8 x 100
    assert m.macs(step) == 2 * 8 * 24 + 2 * 2 * (6 * 4 + 4 * 6) + 2 * 8 * 100
    assert m.macs(step, weights_only=True) == 2 * 8 * 24 + 2 * 8 * 100

"""Tests of the alpha-beta communication model (memwall.simulator.comm) and ``memwall comm``.

Expected values are worked by hand from the textbook formulas (Thakur et al. 2005; Patarasuk & Yuan 2009)
with round numbers, never produced by the code under test.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwall.simulator import comm
from memwall.simulator.cli import main

# A round-number link: 1 GB/s, 10 us, no reduction cost.
NET = comm.Network("test", "test link", 1e9, 10e-6)


# ------------------------------------------------------------------------------------ paper cases
def test_ring_allreduce_paper_case():
    # p = 4, n = 1e9 bytes: 2 * 3/4 * 1e9 / 1e9 = 1.5 s, plus 2 * 3 * 10 us = 60 us
    assert comm.ring_allreduce_time(1e9, 4, NET) == pytest.approx(1.5 + 60e-6, rel=1e-12)
    assert comm.allreduce_bytes_per_worker(1e9, 4) == pytest.approx(1.5e9)


def test_ring_allreduce_gamma_term():
    net = comm.Network("g", "g", 1e9, 0.0, gamma_s_per_byte=1e-10)
    # (p-1)/p * n * gamma = 3/4 * 1e9 * 1e-10 = 0.075 s on top of 1.5 s
    assert comm.ring_allreduce_time(1e9, 4, net) == pytest.approx(1.575, rel=1e-12)


def test_tree_allreduce_paper_case():
    # p = 8: depth 3; 2 * 3 * (10 us + 1e6 / 1e9) = 6 * 1.01e-3
    assert comm.tree_allreduce_time(1e6, 8, NET) == pytest.approx(6 * 1.01e-3, rel=1e-12)
    # p = 5 rounds the depth up to 3
    assert comm.tree_allreduce_time(1e6, 5, NET) == pytest.approx(6 * 1.01e-3, rel=1e-12)


def test_allgather_paper_case():
    # p = 4, 1e6 bytes each: 3 * (10 us + 1 ms)
    assert comm.allgather_time(1e6, 4, NET) == pytest.approx(3 * 1.01e-3, rel=1e-12)
    assert comm.allgather_bytes_per_worker(1e6, 4) == 3e6


def test_one_worker_exchanges_nothing():
    assert comm.ring_allreduce_time(1e9, 1, NET) == 0.0
    assert comm.tree_allreduce_time(1e9, 1, NET) == 0.0
    assert comm.allgather_time(1e9, 1, NET) == 0.0
    est = comm.estimate_comm(params=1000, workers=1, network=NET)
    assert est.dense_comm_s == 0.0 and est.compressed_comm_s == 0.0 and est.crossover_sparsity is None


def test_ring_beats_tree_for_large_and_tree_wins_small():
    big, small = 1e9, 8.0
    assert comm.ring_allreduce_time(big, 16, NET) < comm.tree_allreduce_time(big, 16, NET)
    assert comm.tree_allreduce_time(small, 16, NET) < comm.ring_allreduce_time(small, 16, NET)
    auto = comm.dense_exchange(2, 16, NET, algorithm="auto")
    assert auto["algorithm"] == "tree"


def test_topk_bytes_int32_and_int64_rule():
    enc = comm.topk_bytes(1000, 0.9, "fp32")
    assert enc["k"] == 100 and enc["index_bytes"] == 4 and enc["total"] == 100 * 8
    enc = comm.topk_bytes(2**31, 0.999, "fp16")  # 2**31 entries: positions need int64
    k = math.floor(0.001 * 2**31 + 1e-9)
    assert enc["index_bytes"] == 8 and enc["k"] == k and enc["total"] == k * (8 + 2)
    assert comm.topk_bytes(2**31 - 1, 0.5)["index_bytes"] == 4
    assert comm.topk_bytes(10, 0.999)["k"] == 1  # at least one pair


@pytest.mark.parametrize("size,ratio", [(1, 1.0), (7, 0.3), (1000, 0.01), (12345, 0.123), (99, 0.5)])
def test_topk_bytes_match_the_gradient_encoder(rng, size, ratio):
    from memwall.kernels import gradient

    g = rng.standard_normal(size).astype(np.float32)
    sg = gradient.topk_sparsify(g, ratio=ratio)
    enc = comm.topk_bytes(size, 1.0 - ratio, "fp32")
    assert enc["k"] == sg.k
    assert enc["total"] == sg.nbytes == gradient.encoded_nbytes(size, sg.k)


def test_crossover_matches_closed_form_flat_ring():
    # fp32 values + int32 indices: density* = 1/p + alpha * beta / (8 N)
    n, p = 10**6, 4
    net = comm.load_network("10gbe")
    expected = 1.0 - (1.0 / p + net.latency_s * net.bandwidth_bytes_per_s / (8 * n))
    assert comm.crossover_sparsity(n, p, net) == pytest.approx(expected, abs=1e-9)


def test_crossover_separates_winner():
    n, p = 10**7, 8
    s = comm.crossover_sparsity(n, p, "25gbe")
    dense = comm.dense_exchange(n, p, "25gbe")["time_s"]
    above = comm.sparse_exchange(n, p, "25gbe", sparsity=min(0.999999, s + 0.01))["time_s"]
    below = comm.sparse_exchange(n, p, "25gbe", sparsity=s - 0.01)["time_s"]
    assert above < dense < below


def test_hierarchical_paper_case():
    intra = comm.Network("i", "i", 100e9, 1e-6)
    inter = comm.Network("e", "e", 10e9, 10e-6)
    n, p, q = 8e9, 16, 2  # g = 8 workers per node
    h = comm.hierarchical_allreduce_time(n, p, q, intra, inter)
    intra_s = 2 * 7 / 8 * n / 100e9 + 2 * 7 * 1e-6
    # 8 shards of n/8 bytes share the node's 10 GB/s: 2 * 1/2 * (n/8) / (10e9/8) + 2 * 1 * 10 us
    inter_s = 2 * 1 / 2 * (n / 8) / (10e9 / 8) + 2 * 10e-6
    assert h["intra_s"] == pytest.approx(intra_s, rel=1e-12)
    assert h["inter_s"] == pytest.approx(inter_s, rel=1e-12)
    assert h["time_s"] == pytest.approx(intra_s + inter_s, rel=1e-12)
    # sparse: inter all-gather of e bytes per rank (g ranks share the node), then intra of q*e
    e = 1e6
    hs = comm.hierarchical_allgather_time(e, p, q, intra, inter)
    assert hs["inter_s"] == pytest.approx(1 * (10e-6 + e * 8 / 10e9), rel=1e-12)
    assert hs["intra_s"] == pytest.approx(7 * (1e-6 + 2 * e / 100e9), rel=1e-12)


def test_estimate_topologies():
    flat = comm.estimate_comm(params=10**8, workers=8, network="nvlink3")
    assert flat.topology == "flat" and flat.intra is None
    hier = comm.estimate_comm(params=10**8, workers=16, nodes=2, network="ib_hdr", sparsity=0.999)
    assert hier.topology == "hierarchical" and hier.intra == "nvlink3"
    one_per_node = comm.estimate_comm(params=10**8, workers=4, nodes=4, network="eth10g")
    assert one_per_node.topology == "flat"
    assert one_per_node.dense_comm_s == pytest.approx(
        comm.ring_allreduce_time(4e8, 4, comm.load_network("eth10g")), rel=1e-12)


def test_overlap_hides_communication():
    est = comm.estimate_comm(params=10**6, workers=4, network=NET, backward_s=10.0)
    # comm (ms) << backward (10 s): both step times equal forward + backward = 5 + 10
    assert est.time_basis == "step"
    assert est.dense_time_s == pytest.approx(15.0) and est.compressed_time_s == pytest.approx(15.0)
    est = comm.estimate_comm(params=10**9, workers=4, network=NET, sparsity=0.999, backward_s=1.0)
    # dense ring: 1.5 * 4e9 / 1e9 = 6 s (+60 us); exposed 5 s -> step 1.5 + 5.00006
    assert est.dense_time_s == pytest.approx(0.5 + 1.0 + (6.0 + 60e-6 - 1.0), rel=1e-9)


# ------------------------------------------------------------------------------------ monotonicity
@given(n=st.integers(1, 10**9), p=st.integers(1, 63))
def test_more_workers_never_lower_bytes_per_ring_step(n, p):
    # bytes each worker sends per step of the ring (n/p per step) times steps 2(p-1) = 2(p-1)/p n: grows with p
    assert comm.allreduce_bytes_per_worker(n, p + 1) >= comm.allreduce_bytes_per_worker(n, p)
    assert comm.ring_allreduce_time(n, p + 1, NET) >= comm.ring_allreduce_time(n, p, NET)


@given(n=st.integers(2, 10**9), s1=st.floats(0, 0.999), s2=st.floats(0, 0.999), p=st.integers(2, 32))
def test_sparsity_lowers_wire_bytes(n, s1, s2, p):
    lo, hi = sorted((s1, s2))
    a = comm.sparse_exchange(n, p, NET, sparsity=lo)
    b = comm.sparse_exchange(n, p, NET, sparsity=hi)
    assert b["bytes_per_worker"] <= a["bytes_per_worker"]
    assert b["time_s"] <= a["time_s"]


# ------------------------------------------------------------------------------------ networks, errors
def test_networks_come_from_device_profiles():
    from memwall.simulator.devices import load_device

    ids = comm.list_networks()
    for need in ("eth10g", "eth25g", "eth100g", "ib_hdr", "nvlink3", "pcie4_x16"):
        assert need in ids
    a100 = load_device("a100-80gb")
    net = comm.load_network("nvlink3")
    assert net.bandwidth_bytes_per_s == a100.interconnects["nvlink3"].bandwidth_bytes_per_s
    assert comm.load_network("10gbe") is comm.load_network("eth10g")
    assert comm.load_network("a100-80gb:pcie4_x16").bandwidth_bytes_per_s == 31.5e9
    assert comm.load_network("ib_hdr").source  # every link says where its numbers come from


def test_bad_inputs():
    with pytest.raises(ValueError, match="network 'nope'"):
        comm.load_network("nope")
    with pytest.raises(ValueError, match="no interconnect"):
        comm.load_network("a100-80gb:warp")
    with pytest.raises(ValueError, match="split evenly"):
        comm.estimate_comm(params=10, workers=6, nodes=4, network=NET)
    with pytest.raises(ValueError, match="workers"):
        comm.estimate_comm(params=10, workers=0, network=NET)
    with pytest.raises(ValueError, match="sparsity"):
        comm.estimate_comm(params=10, workers=2, network=NET, sparsity=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        comm.estimate_comm(workers=2, network=NET)
    with pytest.raises(TypeError, match="params"):
        comm.estimate_comm(params=1.5, workers=2, network=NET)
    with pytest.raises(ValueError, match="value_dtype"):
        comm.topk_bytes(10, 0.5, "fp64")
    with pytest.raises(ValueError, match="bandwidth"):
        comm.Network("x", "x", 0.0, 1e-6)


# ------------------------------------------------------------------------------------ CLI
def test_cli_comm_json(capsys):
    rc = main(["comm", "--params", "1000000", "--workers", "4", "--network", "10gbe", "--sparsity", "0.99",
               "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    net = comm.load_network("eth10g")
    dense = 2 * 3 / 4 * 4e6 / net.bandwidth_bytes_per_s + 6 * net.latency_s
    sparse = 3 * (net.latency_s + 10000 * 8 / net.bandwidth_bytes_per_s)
    assert d["dense_time_s"] == pytest.approx(dense, rel=1e-12)
    assert d["compressed_time_s"] == pytest.approx(sparse, rel=1e-12)
    assert d["speedup"] == pytest.approx(dense / sparse, rel=1e-12)
    assert d["bytes_on_wire"]["dense_per_worker"] == pytest.approx(6e6)


def test_cli_comm_model_and_errors(capsys):
    assert main(["comm", "--model", "bert-base", "--workers", "16", "--nodes", "2", "--network", "ib_hdr"]) == 0
    out = capsys.readouterr().out
    assert "hierarchical" in out and "crossover" in out
    assert main(["comm", "--params", "10", "--workers", "3", "--nodes", "2", "--network", "10gbe"]) == 2
    assert "split evenly" in capsys.readouterr().err
    assert main(["comm", "--params", "10", "--workers", "2", "--network", "carrier-pigeon"]) == 2
    assert main(["comm", "--model", "no-such-model", "--workers", "2", "--network", "10gbe"]) == 2


def test_backward_estimated_by_the_simulator():
    from memwall.simulator.analysis import estimate_model

    fwd = estimate_model("bert-base", "a100-80gb", batch=8).time_s
    est = comm.estimate_comm(model="bert-base", workers=8, network="eth10g", device="a100-80gb", batch=8)
    assert est.forward_s == pytest.approx(fwd) and est.backward_s == pytest.approx(2 * fwd)  # backward = 2 x fwd
    assert est.time_basis == "step"
    assert est.dense_time_s == pytest.approx(3 * fwd + max(0.0, est.dense_comm_s - 2 * fwd))
    with pytest.raises(ValueError, match="zoo model"):
        comm.estimate_comm(params=10**6, workers=2, network="eth10g", device="a100-80gb")
    with pytest.raises(ValueError, match="not both"):
        comm.estimate_comm(model="bert-base", workers=2, network="eth10g", device="a100-80gb", backward_s=1.0)


def test_bitmap_encoding():
    enc = comm.topk_bytes(1000, 0.9, "fp32", encoding="bitmap")
    assert enc["k"] == 100 and enc["indices"] == 125 and enc["total"] == 125 + 400 and enc["index_bytes"] == 0
    # bitmap beats pairs once more than 1/32 of fp32/int32 entries are kept
    assert comm.topk_bytes(3200, 0.5, encoding="bitmap")["total"] < comm.topk_bytes(3200, 0.5)["total"]
    assert comm.topk_bytes(3200, 0.999, encoding="bitmap")["total"] > comm.topk_bytes(3200, 0.999)["total"]
    # at moderate sparsity the bitmap moves the crossover down (sparse pays earlier)
    a = comm.crossover_sparsity(10**7, 4, "eth10g")
    b = comm.crossover_sparsity(10**7, 4, "eth10g", encoding="bitmap")
    assert b < a
    with pytest.raises(ValueError, match="encoding"):
        comm.topk_bytes(10, 0.5, encoding="rle")


# ------------------------------------------------------------------------------------ backend regimes
def test_ring_segments_follow_gloo_rule():
    mib = comm.GLOO_SEGMENT_BYTES
    assert mib == 1 << 20 and comm.GLOO_MIN_SEGMENTS == 2

    def gloo(n, p):
        return comm.ring_segments(n, p, segment_bytes=mib, min_segments=2)

    # small buffers: 2 segments per rank however small
    assert gloo(4096, 2) == 2 and gloo(1, 4) == 2
    # p = 2: at most 1 MiB per segment -> more than 2 per rank only above 2 * 2 MiB = 4 MiB
    assert gloo(4 * mib, 2) == 2 and gloo(4 * mib + 1, 2) == 3
    assert gloo(16 * mib, 2) == 8  # 16 segments of 1 MiB, 8 per rank
    assert gloo(16 * mib, 4) == 4 and gloo(8 * mib, 4) == 2  # p = 4: the switch is at 8 MiB
    # no segment size: the textbook one message per ring step (or min_segments)
    assert comm.ring_segments(10**9, 8) == 1 and comm.ring_segments(10**9, 8, min_segments=3) == 3


def test_segmented_ring_allreduce_hand_case():
    mib = 1 << 20
    # p = 2, n = 16 MiB: 8 segments per rank, 2 (p-1) 8 = 16 latencies; bandwidth term unchanged: 16 MiB / 1e9
    t = comm.ring_allreduce_time(16 * mib, 2, NET, segment_bytes=mib, min_segments=2)
    assert t == pytest.approx(16 * 10e-6 + 16 * mib / 1e9, rel=1e-12)
    # p = 4, 1 KiB: 2 segments per rank -> 2 * 3 * 2 = 12 latencies, 1.5 KiB sent
    t = comm.ring_allreduce_time(1024, 4, NET, segment_bytes=mib, min_segments=2)
    assert t == pytest.approx(12 * 10e-6 + 1536 / 1e9, rel=1e-12)
    # buckets: 2 buckets of 8 MiB at p = 2 -> 4 segments per rank each: 2 * 1 * 4 * 2 = 16 latencies
    t = comm.ring_allreduce_time(16 * mib, 2, NET, messages=2, segment_bytes=mib, min_segments=2)
    assert t == pytest.approx(16 * 10e-6 + 16 * mib / 1e9, rel=1e-12)


def test_allgather_segments():
    # p = 4, 1 MB each, two messages per ring step: 3 * 2 * 10 us + 3 MB / 1 GB/s
    assert comm.allgather_time(1e6, 4, NET, segments=2) == pytest.approx(60e-6 + 3e-3, rel=1e-12)


BP = comm.Network("bp", "two-regime link", 1e9, 10e-6, breakpoint_bytes=1e8, large_bandwidth_bytes_per_s=5e8)


def test_breakpoint_transfer_time():
    assert BP.transfer_time(5e7) == pytest.approx(0.05, rel=1e-12)  # below: 5e7 / 1e9
    assert BP.transfer_time(1e8) == pytest.approx(0.1, rel=1e-12)  # at the breakpoint
    assert BP.transfer_time(3e8) == pytest.approx(0.1 + 2e8 / 5e8, rel=1e-12)  # 0.1 + 0.4
    assert BP.message_time(3e8) == pytest.approx(10e-6 + 0.5, rel=1e-12)
    # continuous at the breakpoint
    assert BP.transfer_time(1e8 * (1 + 1e-12)) == pytest.approx(BP.transfer_time(1e8), rel=1e-9)
    assert NET.transfer_time(3e8) == pytest.approx(0.3, rel=1e-12)  # no breakpoint: n / beta


def test_breakpoint_in_collectives():
    # ring p = 4, n = 1e9: 1.5e9 bytes sent: 1e8 at 1 GB/s + 1.4e9 at 0.5 GB/s = 0.1 + 2.8 s; 6 latencies
    assert comm.ring_allreduce_time(1e9, 4, BP) == pytest.approx(2.9 + 60e-6, rel=1e-12)
    # all-gather p = 3 of 1e8 each: 2e8 sent: 0.1 + 0.2 s; 2 latencies
    assert comm.allgather_time(1e8, 3, BP) == pytest.approx(0.3 + 20e-6, rel=1e-12)
    # tree p = 2: 2 hops of 2e8 bytes each: 2 * (10 us + 0.1 + 0.2)
    assert comm.tree_allreduce_time(2e8, 2, BP) == pytest.approx(2 * (10e-6 + 0.3), rel=1e-12)


def test_breakpoint_shared_by_a_node():
    intra = comm.Network("i", "i", 100e9, 1e-6)
    inter = comm.Network("e", "e", 10e9, 10e-6, breakpoint_bytes=1e9, large_bandwidth_bytes_per_s=5e9)
    # 16 workers on 2 nodes (g = 8): each shard of 16e9 / 8 = 2e9 bytes goes through a 2-node ring that sends
    # 2e9 bytes per shard over 1/8 of the node's link: 1e9 / 1.25e9 + 1e9 / 0.625e9 = 0.8 + 1.6 s, + 2 * 10 us
    h = comm.hierarchical_allreduce_time(16e9, 16, 2, intra, inter)
    assert h["inter_s"] == pytest.approx(2.4 + 20e-6, rel=1e-12)


def test_regime_bad_inputs():
    with pytest.raises(ValueError, match="give both or neither"):
        comm.Network("x", "x", 1e9, 1e-6, breakpoint_bytes=1e6)
    with pytest.raises(ValueError, match="give both or neither"):
        comm.Network("x", "x", 1e9, 1e-6, large_bandwidth_bytes_per_s=1e9)
    with pytest.raises(ValueError, match="breakpoint_bytes"):
        comm.Network("x", "x", 1e9, 1e-6, breakpoint_bytes=0.0, large_bandwidth_bytes_per_s=1e9)
    with pytest.raises(ValueError, match="large_bandwidth"):
        comm.Network("x", "x", 1e9, 1e-6, breakpoint_bytes=1e6, large_bandwidth_bytes_per_s=math.inf)
    with pytest.raises(ValueError, match="segment_bytes"):
        comm.ring_segments(1e6, 2, segment_bytes=0)
    with pytest.raises(ValueError, match="segment_bytes"):
        comm.ring_allreduce_time(1e6, 2, NET, segment_bytes=-1.0)
    with pytest.raises(ValueError, match="min_segments"):
        comm.ring_segments(1e6, 2, min_segments=0)
    with pytest.raises(TypeError, match="segments"):
        comm.allgather_time(1e6, 2, NET, segments=1.5)
    with pytest.raises(ValueError, match="workers"):
        comm.ring_segments(1e6, 0)

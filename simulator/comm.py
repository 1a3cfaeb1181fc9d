"""Alpha-beta model of data-parallel gradient exchange: dense all-reduce vs. all-gather of top-k gradients.

Every collective is priced with the classic latency-bandwidth ("alpha-beta") model of Hockney, as used for
MPI/NCCL collectives by Thakur, Rabenseifner & Gropp ("Optimization of Collective Communication Operations
in MPICH", IJHPCA 2005) and Patarasuk & Yuan ("Bandwidth optimal all-reduce algorithms", JPDC 2009):
a message of ``n`` bytes over one link costs ``alpha + n / beta`` seconds, plus ``gamma`` seconds per byte
where bytes are reduced (summed) by the receiving worker.

With ``p`` workers and a gradient of ``n`` bytes:

* ring all-reduce: ``2 (p-1) alpha + 2 (p-1)/p n / beta + (p-1)/p n gamma``; each worker sends
  ``2 (p-1)/p n`` bytes (reduce-scatter, then all-gather);
* tree all-reduce (binary tree, reduce then broadcast, the whole message per hop):
  ``2 ceil(log2 p) (alpha + n / beta) + ceil(log2 p) n gamma``; interior workers send up to ``2 n``;
* ring all-gather of ``e`` bytes from each worker: ``(p-1) (alpha + e / beta)``; each sends ``(p-1) e``.

Backend regimes (off by default, so the shipped links price exactly the formulas above): a segmented ring
(``segment_bytes`` / ``min_segments``: gloo cuts its ring all-reduce into segments of at most 1 MiB, at least
2 per rank, paying ``2 (p-1) s`` latencies — :func:`ring_segments`), several messages per all-gather step
(``segments``: gloo sends each block as two halves), and a second bandwidth past a breakpoint in the bytes a
worker sends per call (:class:`Network` ``breakpoint_bytes`` / ``large_bandwidth_bytes_per_s``).
``benchmarks/bench_comm_gloo.py`` fits them for torch's gloo on 127.0.0.1 and checks held-out sizes.

Sparsified gradients are exchanged as top-k (index, value) pairs with an all-gather (each worker contributes
its own ``k`` pairs; sums are formed locally after the gather).  The encoding matches
:mod:`memwall.kernels.gradient`: values in the chosen dtype, indices int32 when the gradient has fewer than
``2**31`` entries, else int64 (the project-wide index-width rule).

Hierarchical (``nodes > 1`` with several workers per node ``g = workers / nodes``) — the scheme of NCCL's
tree/ring hierarchy and Horovod's hierarchical all-reduce:

* dense: reduce-scatter inside each node (intra link), ``g`` parallel inter-node ring all-reduces of
  ``n / g`` bytes each that share the node's network bandwidth (``nics_per_node`` links), then an
  all-gather inside each node;
* sparse: ``g`` parallel inter-node ring all-gathers of one worker's ``e`` bytes each (sharing the node's
  bandwidth), then an all-gather inside the node of the ``q = nodes`` blocks each worker now holds.

Overlap with backward compute (optional): with ``backward_s`` given (or estimated by the simulator from the
model and a device: the backward pass costs **2x the forward pass**, the rule of Kaplan et al. 2020 /
Narayanan et al. 2021 — training compute ~ 6 N ops per token, 2 N forward and 4 N backward), gradient
buckets are all-reduced while earlier layers still compute their gradients; the model treats this overlap as
perfect, so the exposed communication is ``max(0, t_comm - backward_s)`` — an optimistic bound (the last
bucket can never be hidden).  The cost of selecting the top-k on each worker and of summing the gathered
pairs is not modelled (it is memory-bound local work, small next to the network on everything but NVLink).

Links come from the device profiles (the shared ``devices/_network.toml`` for Ethernet and InfiniBand, each
device's ``[interconnect]`` table for NVLink / PCIe): bandwidth per direction and one-way small-message
latency, each with its source there.  ``load_network("a100-80gb:nvlink3")`` picks one device's link.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..kernels._validate import check_choice, check_fraction, check_int

__all__ = [
    "Network",
    "ALIASES",
    "VALUE_BYTES",
    "ENCODINGS",
    "CommEstimate",
    "list_networks",
    "load_network",
    "index_bytes",
    "topk_bytes",
    "ring_allreduce_time",
    "tree_allreduce_time",
    "allgather_time",
    "ring_segments",
    "GLOO_SEGMENT_BYTES",
    "GLOO_MIN_SEGMENTS",
    "allreduce_bytes_per_worker",
    "allgather_bytes_per_worker",
    "hierarchical_allreduce_time",
    "hierarchical_allgather_time",
    "dense_exchange",
    "sparse_exchange",
    "crossover_sparsity",
    "estimate_comm",
    "model_parameters",
]

#: Round-off allowance of the k rule (the same as ``memwall.kernels.gradient.RATIO_ROUND_EPS``).
_RATIO_EPS = 1e-9

#: Link inside a node when ``nodes > 1`` and none is named.
DEFAULT_INTRA = "nvlink3"

#: Bytes per gradient value for the dtypes a gradient may travel in.
VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class Network:
    """One link type: ``bandwidth_bytes_per_s`` per direction per worker (beta), ``latency_s`` per message
    (alpha), ``gamma_s_per_byte`` for reducing (summing) received bytes (0 = free), and where they come from.

    Optional second bandwidth regime (a piecewise-linear, continuous time in the bytes sent): with
    ``breakpoint_bytes`` and ``large_bandwidth_bytes_per_s`` both given, the first ``breakpoint_bytes`` a
    worker sends in one collective call move at ``bandwidth_bytes_per_s`` and the rest at
    ``large_bandwidth_bytes_per_s`` — the size-dependent parameters of the PLogP model (Kielmann, Bal &
    Verstoep, "Fast measurement of LogP parameters for message passing platforms", IPDPS 2000) reduced to one
    breakpoint.  On a host loopback (workers as processes of one machine, the "link" is its memory and
    cores) the copies slow down once the buffers stop being cache-resident; on a NIC the eager / rendezvous
    protocol switch plays the same role.  Without them (the shipped links) every byte moves at ``beta``.
    """

    id: str
    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    gamma_s_per_byte: float = 0.0
    source: str = ""
    breakpoint_bytes: float | None = None
    large_bandwidth_bytes_per_s: float | None = None

    def __post_init__(self):
        for f in ("bandwidth_bytes_per_s",):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"network {self.id!r}: {f} must be a finite number > 0, got {v!r}")
        for f in ("latency_s", "gamma_s_per_byte"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"network {self.id!r}: {f} must be a finite number >= 0, got {v!r}")
        if (self.breakpoint_bytes is None) != (self.large_bandwidth_bytes_per_s is None):
            raise ValueError(f"network {self.id!r}: breakpoint_bytes and large_bandwidth_bytes_per_s go "
                             "together; give both or neither")
        if self.breakpoint_bytes is not None:
            for f, low in (("breakpoint_bytes", "0"), ("large_bandwidth_bytes_per_s", "0")):
                v = getattr(self, f)
                if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                    raise ValueError(f"network {self.id!r}: {f} must be a finite number > {low}, got {v!r}")

    def transfer_time(self, nbytes: float) -> float:
        """Seconds to send ``nbytes`` (one worker, one collective call) at the link's bandwidth: ``n / beta``,
        or with a breakpoint ``min(n, b) / beta + max(0, n - b) / beta_large``."""
        n = float(nbytes)
        if self.breakpoint_bytes is None or n <= self.breakpoint_bytes:
            return n / self.bandwidth_bytes_per_s
        b = self.breakpoint_bytes
        return b / self.bandwidth_bytes_per_s + (n - b) / self.large_bandwidth_bytes_per_s

    def message_time(self, nbytes: float) -> float:
        """alpha + n / beta (with the breakpoint, if any: alpha + :meth:`transfer_time`)."""
        return self.latency_s + self.transfer_time(nbytes)

    def to_dict(self) -> dict:
        return asdict(self)


#: Friendly names accepted by ``--network`` for links of the device profiles (``_network.toml`` and each
#: device's ``[interconnect]`` table hold the numbers and their sources; this module keeps none of its own).
ALIASES = {
    "10gbe": "eth10g", "25gbe": "eth25g", "100gbe": "eth100g",
    "ib-edr": "ib_edr", "ib-hdr": "ib_hdr", "ib-ndr": "ib_ndr", "edr": "ib_edr", "hdr": "ib_hdr", "ndr": "ib_ndr",
    "nvlink": "nvlink3", "pcie3": "pcie3_x16", "pcie4": "pcie4_x16", "pcie5": "pcie5_x16",
}

_NETWORKS: dict[str, Network] | None = None


def _all_networks() -> dict[str, Network]:
    """Every link named in a shipped device profile (the shared network table is merged into each), first
    definition wins, with its source strings."""
    global _NETWORKS
    if _NETWORKS is None:
        from .devices import list_devices, load_device

        out: dict[str, Network] = {}
        for dev_id in list_devices():
            if dev_id == "host":
                continue
            dev = load_device(dev_id)
            for name, link in dev.interconnects.items():
                if name in out:
                    continue
                src = "; ".join(f"{k.rsplit('.', 1)[-1]}: {v}" for k, v in dev.sources.items()
                                if k.startswith(f"interconnect.{name}."))
                out[name] = Network(name, f"{link.kind} {name}", link.bandwidth_bytes_per_s, link.latency_s,
                                    source=src or f"device profile {dev_id}")
        _NETWORKS = out
    return _NETWORKS


def list_networks() -> list[str]:
    """Ids of the links known to the device profiles (plus :data:`ALIASES`)."""
    return sorted(_all_networks())


def load_network(spec) -> Network:
    """A :class:`Network` from a link id of the device profiles (``eth10g``, ``ib_hdr``, ``nvlink3``,
    ``pcie4_x16`` ...; see :func:`list_networks`), an alias (:data:`ALIASES`: ``10gbe``, ``ib-hdr``,
    ``pcie4`` ...), ``"DEVICE:LINK"`` (a link of one device profile, also a calibrated host or a TOML path),
    or a :class:`Network` (returned as is)."""
    if isinstance(spec, Network):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"network: expected a link id or a Network, got {type(spec).__name__}")
    key = spec.strip()
    nets = _all_networks()
    key = ALIASES.get(key.lower(), key)
    if key in nets:
        return nets[key]
    if ":" in spec:
        from .devices import load_device

        dev_id, link = spec.rsplit(":", 1)
        dev = load_device(dev_id)
        links = dict(dev.interconnects)
        if link not in links:
            raise ValueError(f"network {spec!r}: device {dev_id!r} has no interconnect {link!r}; "
                             f"it has: {', '.join(sorted(links)) or 'none'}")
        e = links[link]
        return Network(f"{dev_id}:{link}", f"{e.kind} {link}", e.bandwidth_bytes_per_s, e.latency_s,
                       source=f"device profile {dev.path}")
    raise ValueError(f"network {spec!r}: unknown; expected one of {', '.join(list_networks())}, an alias "
                     f"({', '.join(sorted(ALIASES))}) or DEVICE:LINK naming an interconnect of a device profile")


# --- sizes -------------------------------------------------------------------------------------------


def index_bytes(n_entries: int) -> int:
    """Index width for positions in a gradient of ``n_entries``: 4 (int32) below 2**31 entries, else 8."""
    return 4 if n_entries < 2**31 else 8


def _check_params(params) -> int:
    return check_int(params, "params", minimum=1)


def _check_workers(workers, nodes):
    workers = check_int(workers, "workers", minimum=1)
    nodes = check_int(nodes, "nodes", minimum=1)
    if workers % nodes:
        raise ValueError(f"workers: {workers} workers do not split evenly over {nodes} nodes")
    return workers, nodes


#: Encodings of a top-k gradient: (index, value) pairs, or a bitmap of kept positions plus the values.
ENCODINGS = ("pairs", "bitmap")


def _encoded_bytes(params: int, k: float, value_dtype: str, encoding: str) -> tuple[float, float, int]:
    """(value bytes, position bytes, index width) of k kept entries out of params."""
    vals = k * VALUE_BYTES[value_dtype]
    if encoding == "bitmap":
        return vals, float(math.ceil(params / 8)), 0
    ib = index_bytes(params)
    return vals, k * ib, ib


def topk_bytes(params: int, sparsity: float, value_dtype: str = "fp32", encoding: str = "pairs") -> dict:
    """Bytes of one worker's top-k encoding of a ``params``-entry gradient at ``sparsity`` (fraction
    dropped): ``k = floor((1 - sparsity) * params)`` (at least 1; the rule of
    ``memwall.kernels.gradient.topk_sparsify(ratio=1 - sparsity)``) kept entries.

    ``encoding``: ``"pairs"`` — k (index, value) pairs, the wire format of :mod:`memwall.kernels.gradient`
    (int32 indices below 2**31 entries, else int64); ``"bitmap"`` — one bit per gradient entry
    (``ceil(params / 8)`` bytes) plus the k values in position order: smaller once more than 1/32 of the
    entries are kept (fp32 values, int32 indices).

    Returns ``{"k", "values", "indices", "total", "index_bytes", "encoding"}`` (``indices`` holds the
    bitmap's bytes for ``"bitmap"``, and ``index_bytes`` is 0 there).
    """
    params = _check_params(params)
    sparsity = check_fraction(sparsity, "sparsity")
    check_choice(value_dtype, "value_dtype", tuple(VALUE_BYTES))
    check_choice(encoding, "encoding", ENCODINGS)
    k = max(1, min(params, math.floor((1.0 - sparsity) * params + _RATIO_EPS)))
    vals, pos, ib = _encoded_bytes(params, k, value_dtype, encoding)
    return {"k": k, "values": int(vals), "indices": int(pos), "total": int(vals + pos), "index_bytes": ib,
            "encoding": encoding}


def allreduce_bytes_per_worker(nbytes: float, workers: int) -> float:
    """Bytes each worker sends in a ring all-reduce: ``2 (p-1)/p n`` (reduce-scatter + all-gather)."""
    p = check_int(workers, "workers", minimum=1)
    return 2.0 * (p - 1) / p * nbytes


def allgather_bytes_per_worker(nbytes_per_worker: float, workers: int) -> float:
    """Bytes each worker sends (and receives) in a ring all-gather of ``e`` bytes each: ``(p-1) e``."""
    p = check_int(workers, "workers", minimum=1)
    return float((p - 1) * nbytes_per_worker)


# --- collective times ---------------------------------------------------------------------------------


#: Largest piece gloo's ring all-reduce sends at once, and its least number of pieces per rank: the ring
#: cuts the buffer into ``roundUp(max(ceil(n / 1 MiB), 2 p), p)`` segments (two in flight, so a send overlaps
#: the reduction of the previous segment).  Source: gloo/allreduce.cc (the ``numSegments % context->size == 0``
#: and ``numSegments >= context->size * 2`` checks are in torch 2.13's libtorch_cpu.so) and
#: ``c10d::AsyncAllreduceWork::allreduce`` there, which stores ``maxSegmentSize = 0x100000`` and algorithm 0
#: (unspecified = ring) into ``gloo::AllreduceOptions``.
GLOO_SEGMENT_BYTES = 1 << 20
GLOO_MIN_SEGMENTS = 2


def ring_segments(nbytes: float, workers: int, *, segment_bytes: float | None = None,
                  min_segments: int = 1) -> int:
    """Segments per rank of a segmented ring all-reduce: ``max(min_segments, ceil(n / (p * segment_bytes)))``
    (``min_segments`` without a segment size).  Each ring step then sends one segment per message, so the
    all-reduce pays ``2 (p-1)`` times this many latencies.  gloo: ``segment_bytes = 1 MiB``,
    ``min_segments = 2`` (:data:`GLOO_SEGMENT_BYTES`, :data:`GLOO_MIN_SEGMENTS`)."""
    p = check_int(workers, "workers", minimum=1)
    m = check_int(min_segments, "min_segments", minimum=1)
    if segment_bytes is None:
        return m
    if isinstance(segment_bytes, bool) or not (isinstance(segment_bytes, (int, float))
                                                and math.isfinite(segment_bytes) and segment_bytes > 0):
        raise ValueError(f"segment_bytes: expected a finite number > 0 or None, got {segment_bytes!r}")
    return max(m, math.ceil(float(nbytes) / (p * float(segment_bytes))))


def ring_allreduce_time(nbytes: float, workers: int, network, *, messages: int = 1,
                        segment_bytes: float | None = None, min_segments: int = 1) -> float:
    """Ring all-reduce of ``nbytes`` over ``workers``: ``2(p-1) s alpha + T(2(p-1)/p n) + (p-1)/p n gamma``
    with ``T`` the link's :meth:`Network.transfer_time` (``n / beta`` without a breakpoint) and ``s`` the
    segments per rank (:func:`ring_segments`; 1 by default: the textbook ``2(p-1) alpha``).

    ``messages`` > 1 splits the gradient into that many buckets (separate all-reduces of ``n / messages``
    bytes; each pays its own latency terms).  ``segment_bytes`` / ``min_segments`` describe a backend that
    cuts each buffer into pipelined segments (gloo: 1 MiB and 2).
    """
    net = load_network(network)
    p = check_int(workers, "workers", minimum=1)
    messages = check_int(messages, "messages", minimum=1)
    s = ring_segments(nbytes / messages, p, segment_bytes=segment_bytes, min_segments=min_segments)
    if p == 1 or nbytes <= 0:
        return 0.0
    return (2 * (p - 1) * s * net.latency_s * messages
            + messages * net.transfer_time(2.0 * (p - 1) / p * nbytes / messages)
            + (p - 1) / p * nbytes * net.gamma_s_per_byte)


def tree_allreduce_time(nbytes: float, workers: int, network, *, messages: int = 1) -> float:
    """Binary-tree all-reduce (reduce to the root, then broadcast; the whole message per hop, no
    pipelining): ``2 ceil(log2 p) (alpha + n/beta) + ceil(log2 p) n gamma`` (with a breakpoint, each hop's
    message costs ``alpha +`` :meth:`Network.transfer_time`).  Wins over the ring only for small messages
    (latency-bound)."""
    net = load_network(network)
    p = check_int(workers, "workers", minimum=1)
    messages = check_int(messages, "messages", minimum=1)
    if p == 1 or nbytes <= 0:
        return 0.0
    d = math.ceil(math.log2(p))
    return (2 * d * messages * net.message_time(nbytes / messages)
            + d * nbytes * net.gamma_s_per_byte)


def allgather_time(nbytes_per_worker: float, workers: int, network, *, segments: int = 1) -> float:
    """Ring all-gather where each worker contributes ``e`` bytes: ``(p-1) (s alpha + e/beta)``, i.e.
    ``(p-1) s alpha + T((p-1) e)`` with :meth:`Network.transfer_time` when the link has a breakpoint.
    ``segments`` (``s``, default 1): messages per ring step (gloo's all-gather sends each block as two
    halves, two in flight: ``s = 2``)."""
    net = load_network(network)
    p = check_int(workers, "workers", minimum=1)
    segments = check_int(segments, "segments", minimum=1)
    if p == 1:
        return 0.0
    return (p - 1) * segments * net.latency_s + net.transfer_time((p - 1) * nbytes_per_worker)


def _shared(net: Network, share: float) -> Network:
    """``net`` with every bandwidth scaled by ``share`` (the fraction of a node's links one worker gets)."""
    large = None if net.large_bandwidth_bytes_per_s is None else net.large_bandwidth_bytes_per_s * share
    return replace(net, id="node", name="node", bandwidth_bytes_per_s=net.bandwidth_bytes_per_s * share,
                   large_bandwidth_bytes_per_s=large)


def hierarchical_allreduce_time(nbytes: float, workers: int, nodes: int, intra, inter, *,
                                nics_per_node: int = 1, algorithm: str = "ring") -> dict:
    """Dense all-reduce across ``nodes`` nodes of ``workers / nodes`` workers each.

    Reduce-scatter inside the node (``intra``), all-reduce of each worker's ``n/g`` shard across nodes
    (``inter``; the ``g`` shards of a node share ``nics_per_node`` links), all-gather inside the node.
    Returns ``{"time_s", "intra_s", "inter_s", "bytes_per_worker", "inter_bytes_per_node"}``.
    """
    p, q = _check_workers(workers, nodes)
    intra, inter = load_network(intra), load_network(inter)
    nics = check_int(nics_per_node, "nics_per_node", minimum=1)
    g = p // q
    # intra: reduce-scatter then all-gather = one ring all-reduce's worth of traffic among g workers
    intra_s = ring_allreduce_time(nbytes, g, intra)
    node_bw = _shared(inter, nics / g)
    ar = ring_allreduce_time if algorithm == "ring" else tree_allreduce_time
    inter_s = ar(nbytes / g, q, node_bw) if q > 1 else 0.0
    intra_b = allreduce_bytes_per_worker(nbytes, g)
    inter_b = allreduce_bytes_per_worker(nbytes / g, q) if q > 1 else 0.0
    return {"time_s": intra_s + inter_s, "intra_s": intra_s, "inter_s": inter_s,
            "bytes_per_worker": intra_b + inter_b, "inter_bytes_per_node": inter_b * g}


def hierarchical_allgather_time(nbytes_per_worker: float, workers: int, nodes: int, intra, inter, *,
                                nics_per_node: int = 1) -> dict:
    """All-gather of ``e`` bytes per worker across ``nodes`` nodes of ``g`` workers: first ``g`` parallel
    inter-node ring all-gathers (one per local rank, sharing the node's links), then an intra-node ring
    all-gather of the ``q e`` bytes each worker holds.  Same return keys as
    :func:`hierarchical_allreduce_time`."""
    p, q = _check_workers(workers, nodes)
    intra, inter = load_network(intra), load_network(inter)
    nics = check_int(nics_per_node, "nics_per_node", minimum=1)
    g = p // q
    e = float(nbytes_per_worker)
    node_bw = _shared(inter, nics / g)
    inter_s = allgather_time(e, q, node_bw) if q > 1 else 0.0
    intra_s = allgather_time(q * e, g, intra)
    inter_b = allgather_bytes_per_worker(e, q)
    intra_b = allgather_bytes_per_worker(q * e, g)
    return {"time_s": inter_s + intra_s, "intra_s": intra_s, "inter_s": inter_s,
            "bytes_per_worker": inter_b + intra_b, "inter_bytes_per_node": inter_b * g}


# --- one step's exchange ----------------------------------------------------------------------------


def _links(workers, nodes, network, intra):
    """(flat network or None, intra, inter) for this topology."""
    p, q = _check_workers(workers, nodes)
    net = load_network(network)
    if q == 1:
        return net, None, None  # one node: every worker on ``network``
    if p == q:
        return net, None, None  # one worker per node: a flat ring over the network
    return None, load_network(intra if intra is not None else DEFAULT_INTRA), net


def dense_exchange(params: int, workers: int, network, *, nodes: int = 1, intra=None,
                   grad_dtype: str = "fp32", algorithm: str = "ring", nics_per_node: int = 1) -> dict:
    """Dense gradient all-reduce of ``params`` values in ``grad_dtype``: time and bytes.

    ``algorithm``: "ring", "tree" or "auto" (the faster of the two).  With ``nodes > 1`` and several
    workers per node the exchange is hierarchical (``intra`` inside a node, default NVLink 3; ``network``
    across nodes).
    """
    params = _check_params(params)
    check_choice(grad_dtype, "grad_dtype", tuple(VALUE_BYTES))
    check_choice(algorithm, "algorithm", ("ring", "tree", "auto"))
    nbytes = params * VALUE_BYTES[grad_dtype]
    flat, intra_net, inter_net = _links(workers, nodes, network, intra)
    algos = ("ring", "tree") if algorithm == "auto" else (algorithm,)
    best = None
    for a in algos:
        if flat is not None:
            f = ring_allreduce_time if a == "ring" else tree_allreduce_time
            t = f(nbytes, workers, flat)
            b = allreduce_bytes_per_worker(nbytes, workers) if a == "ring" else (
                0.0 if workers == 1 else 2.0 * nbytes)
            rec = {"time_s": t, "bytes_per_worker": b, "algorithm": a, "topology": "flat"}
        else:
            h = hierarchical_allreduce_time(nbytes, workers, nodes, intra_net, inter_net,
                                            nics_per_node=nics_per_node, algorithm=a)
            rec = {**h, "algorithm": a, "topology": "hierarchical"}
        if best is None or rec["time_s"] < best["time_s"]:
            best = rec
    best["gradient_bytes"] = nbytes
    return best


def sparse_exchange(params: int, workers: int, network, *, sparsity: float, nodes: int = 1, intra=None,
                    value_dtype: str = "fp32", nics_per_node: int = 1, encoding: str = "pairs") -> dict:
    """All-gather of each worker's top-k encoding (see :func:`topk_bytes`): time, bytes and the encoding
    sizes."""
    enc = topk_bytes(params, sparsity, value_dtype, encoding)
    return _sparse_from_bytes(enc["total"], workers, network, nodes=nodes, intra=intra,
                              nics_per_node=nics_per_node) | {"encoding": enc}


def _sparse_from_bytes(e, workers, network, *, nodes, intra, nics_per_node):
    flat, intra_net, inter_net = _links(workers, nodes, network, intra)
    if flat is not None:
        return {"time_s": allgather_time(e, workers, flat),
                "bytes_per_worker": allgather_bytes_per_worker(e, workers), "topology": "flat",
                "algorithm": "ring all-gather"}
    h = hierarchical_allgather_time(e, workers, nodes, intra_net, inter_net, nics_per_node=nics_per_node)
    return {**h, "topology": "hierarchical", "algorithm": "ring all-gather"}


def crossover_sparsity(params: int, workers: int, network, *, nodes: int = 1, intra=None,
                       grad_dtype: str = "fp32", value_dtype: str = "fp32", algorithm: str = "ring",
                       nics_per_node: int = 1, encoding: str = "pairs") -> float | None:
    """Smallest sparsity at which the top-k all-gather is faster than the dense all-reduce.

    0.0 when sparse wins even undropped; ``None`` when it never wins (even k = 1 is slower, which happens
    only when the latency terms of the gather dominate).  For a flat ring with fp32 values and int32
    indices this is ``1 - (1/p + alpha beta / (8 N))`` — the dense ring moves ``2(p-1)/p`` gradients, the
    gather ``(p-1)`` encodings of twice the bytes per kept entry.  Found by bisection on the (monotone)
    sparse time.
    """
    params = _check_params(params)
    dense_t = dense_exchange(params, workers, network, nodes=nodes, intra=intra, grad_dtype=grad_dtype,
                             algorithm=algorithm, nics_per_node=nics_per_node)["time_s"]
    check_choice(value_dtype, "value_dtype", tuple(VALUE_BYTES))
    check_choice(encoding, "encoding", ENCODINGS)

    def sparse_t(density):
        e = sum(_encoded_bytes(params, density * params, value_dtype, encoding)[:2])
        return _sparse_from_bytes(e, workers, network, nodes=nodes, intra=intra,
                                  nics_per_node=nics_per_node)["time_s"]

    if workers == 1:
        return None  # nothing to exchange: neither wins
    if sparse_t(1.0) < dense_t:
        return 0.0
    if sparse_t(1.0 / params) >= dense_t:
        return None
    lo, hi = 1.0 / params, 1.0  # sparse wins at lo, loses at hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if sparse_t(mid) < dense_t:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12:
            break
    return 1.0 - lo


# --- model-level estimate ---------------------------------------------------------------------------


def model_parameters(model: str) -> int:
    """Number of trainable parameters of a zoo model (weights of every layer, embeddings included)."""
    from . import zoo  # lazily: the zoo is another module's

    for name in ("parameter_count", "param_count", "count_parameters"):
        fn = getattr(zoo, name, None)
        if callable(fn):
            return int(fn(model))
    getm = getattr(zoo, "get_model", None) or getattr(zoo, "load_model", None)
    if getm is None:
        raise ValueError("model: this build's zoo offers no parameter count; pass --params N")
    m = getm(model)
    for attr in ("params", "parameters", "n_params", "num_params", "parameter_count"):
        v = getattr(m, attr, None)
        v = v() if callable(v) else v
        if isinstance(v, int):
            return v
    raise ValueError(f"model {model!r}: no parameter count available; pass --params N")


@dataclass(frozen=True)
class CommEstimate:
    """One training step's gradient exchange, dense vs. top-k compressed.

    ``dense_time_s`` / ``compressed_time_s`` are communication times per step, or — when the backward time
    is known — whole step times (``forward + backward + exposed communication``); ``time_basis`` says which.
    """

    params: int
    workers: int
    nodes: int
    network: str
    intra: str | None
    sparsity: float
    grad_dtype: str
    value_dtype: str
    dense_comm_s: float
    compressed_comm_s: float
    dense_bytes_per_worker: float
    compressed_bytes_per_worker: float
    dense_time_s: float
    compressed_time_s: float
    speedup: float
    time_basis: str
    crossover_sparsity: float | None
    algorithm: str
    topology: str
    encoding: dict
    forward_s: float | None = None
    backward_s: float | None = None
    notes: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["bytes_on_wire"] = {"dense_per_worker": self.dense_bytes_per_worker,
                              "compressed_per_worker": self.compressed_bytes_per_worker,
                              "dense_total": self.dense_bytes_per_worker * self.workers,
                              "compressed_total": self.compressed_bytes_per_worker * self.workers}
        return d


def estimate_comm(*, params: int | None = None, model: str | None = None, workers: int, network,
                  nodes: int = 1, intra=None, sparsity: float = 0.99, grad_dtype: str = "fp32",
                  value_dtype: str | None = None, algorithm: str = "ring", nics_per_node: int = 1,
                  encoding: str = "pairs",
                  backward_s: float | None = None, forward_s: float | None = None, device=None,
                  batch: int = 1, seq: int | None = None) -> CommEstimate:
    """Per-step gradient exchange of a model (``model`` zoo name or ``params``) on ``workers`` workers.

    Dense: all-reduce (ring / tree / auto) of the gradient in ``grad_dtype``.  Compressed: all-gather of
    the top-k encoding at ``sparsity`` with values in ``value_dtype`` (default: ``grad_dtype``).
    With ``backward_s`` (seconds of backward compute per step; ``forward_s`` defaults to half of it, the
    backward = 2 x forward rule) communication overlaps the backward pass and times are step times.
    With ``device`` (and a zoo ``model``) the forward time of one worker's pass (``batch`` sequences of
    ``seq`` tokens) is estimated by the simulator (dense baseline of that device) and ``backward_s`` is twice
    it.
    """
    if device is not None:
        if backward_s is not None:
            raise ValueError("give backward_s or device, not both")
        if model is None:
            raise ValueError("device: estimating the backward pass needs a zoo model, not a parameter count")
        from .analysis import estimate_model

        forward_s = float(estimate_model(model, device, batch=batch, seq=seq).time_s)
        backward_s = 2.0 * forward_s
    if (params is None) == (model is None):
        raise ValueError("give exactly one of params (a count) or model (a zoo name)")
    if params is None:
        params = model_parameters(model)
    params = _check_params(params)
    workers, nodes = _check_workers(workers, nodes)
    sparsity = check_fraction(sparsity, "sparsity", include_high=False)
    value_dtype = grad_dtype if value_dtype is None else value_dtype
    net = load_network(network)
    dense = dense_exchange(params, workers, net, nodes=nodes, intra=intra, grad_dtype=grad_dtype,
                           algorithm=algorithm, nics_per_node=nics_per_node)
    sparse = sparse_exchange(params, workers, net, sparsity=sparsity, nodes=nodes, intra=intra,
                             value_dtype=value_dtype, nics_per_node=nics_per_node, encoding=encoding)
    cross = crossover_sparsity(params, workers, net, nodes=nodes, intra=intra, grad_dtype=grad_dtype,
                               value_dtype=value_dtype, algorithm=algorithm, nics_per_node=nics_per_node,
                               encoding=encoding)
    notes = []
    if backward_s is not None:
        backward_s = float(backward_s)
        if not (math.isfinite(backward_s) and backward_s >= 0):
            raise ValueError(f"backward_s: expected a finite number >= 0, got {backward_s}")
        forward_s = backward_s / 2.0 if forward_s is None else float(forward_s)
        dense_t = forward_s + backward_s + max(0.0, dense["time_s"] - backward_s)
        comp_t = forward_s + backward_s + max(0.0, sparse["time_s"] - backward_s)
        basis = "step"
        notes.append("step = forward + backward + max(0, communication - backward): perfect overlap of the "
                     "gradient exchange with the backward pass (optimistic)")
    else:
        dense_t, comp_t, basis = dense["time_s"], sparse["time_s"], "communication"
    if workers == 1:
        notes.append("one worker: nothing to exchange")
    speedup = dense_t / comp_t if comp_t > 0 else 1.0
    if cross is not None and sparsity < cross:
        notes.append(f"sparsity {sparsity:g} is below the crossover {cross:.6g}: the top-k all-gather moves "
                     "more bytes than the dense all-reduce here")
    intra_id = None
    if nodes > 1 and workers > nodes:
        intra_id = load_network(intra if intra is not None else DEFAULT_INTRA).id
    return CommEstimate(
        params=params, workers=workers, nodes=nodes, network=net.id, intra=intra_id, sparsity=sparsity,
        grad_dtype=grad_dtype, value_dtype=value_dtype, dense_comm_s=dense["time_s"],
        compressed_comm_s=sparse["time_s"], dense_bytes_per_worker=dense["bytes_per_worker"],
        compressed_bytes_per_worker=sparse["bytes_per_worker"], dense_time_s=dense_t, compressed_time_s=comp_t,
        speedup=speedup, time_basis=basis, crossover_sparsity=cross, algorithm=dense["algorithm"],
        topology=dense["topology"], encoding=sparse["encoding"], forward_s=forward_s, backward_s=backward_s,
        notes=tuple(notes))

"""Device profiles: one TOML file per device, loaded into validated frozen dataclasses.

Where profiles come from
    ``load_device(name_or_path)`` accepts

    * a shipped device id (``list_devices()``): ``p100``, ``v100``, ``a100-40gb``, ``a100-80gb``, ``h100-sxm``,
      ``h100-pcie``, ``h200``, ``epyc-genoa``, ``xeon-8280``; the template ``host-template`` also loads
      (placeholder values);
    * ``host``: the calibrated profile of this machine, read from ``$MEMWALL_HOST_PROFILE`` when set, else
      from ``$XDG_CONFIG_HOME/memwall/host.toml`` (``~/.config/memwall/host.toml`` when ``XDG_CONFIG_HOME`` is
      unset).  ``memwall calibrate`` writes that file; copying ``host-template.toml`` there and editing it
      works too;
    * a path to a TOML file (anything ending in ``.toml`` or containing a path separator).

Schema (every number has its unit in its key and a source)
    Top level: ``id``, ``name``, ``kind`` (``"gpu"`` | ``"cpu"``), optional ``description``.  Tables:

    ``[process]``      ``node_nm``.
    ``[power]``        ``tdp_w``, ``idle_w`` (static/idle power charged for the whole duration of a kernel).
    ``[overhead]``     ``kernel_launch_us`` (fixed cost per kernel: launch + prologue/epilogue), optional
                       ``csr_nonzero_ns`` (CPUs: wall time of the CSR kernel per stored nonzero besides its
                       multiply-adds -- index load, gather address -- whatever the batch; absent: none),
                       optional ``nm_kept_ns`` (CPUs: the same for the software N:M kernel per kept weight --
                       decoding its position from the metadata -- when it runs at ``nm_sparse_fraction``).
    ``[tiling]``       ``register_tile_elements`` (side of the register tile that streams from the smallest
                       memory level), ``block_tile_elements`` (side of the output tile one SM / core owns),
                       ``matrix_min_block_elements`` (smallest block side the matrix unit runs; also the
                       padding granularity of M and N on it), ``parallel_units`` (SMs or cores).
    ``[compute.tensor]`` (optional; tensor cores or matrix engines) and ``[compute.vector]`` (required; CUDA
                       cores or SIMD units): ``<dtype>_dense_tops`` and ``<dtype>_sparse_tops`` (2:4 structured
                       sparsity, dense-equivalent rate) in tera-operations per second (one FMA = 2 ops), for
                       dtype in ``fp64 fp32 tf32 fp16 bf16 fp8 int8 int4``.  A dtype the unit lacks is absent.
    ``[[memory]]``     ordered small -> large: ``name``, one of ``capacity_bytes|capacity_kib|capacity_mib|
                       capacity_gib`` (per instance), optional ``instances`` (copies: one per SM/core/CCD),
                       ``bandwidth_gb_per_s`` (aggregate over instances, 1 GB = 1e9 B), ``energy_pj_per_byte``.
                       The last level is DRAM/HBM.
    ``[energy_per_op]`` optional ``<dtype>_pj_per_op``; dtypes left out are derived from the Horowitz 45 nm
                       table scaled by ``node_nm`` (:func:`memwall.simulator.energy.horowitz_pj_per_op`).
    ``[efficiency]``   fractions in (0, 1]: ``tensor_gemm_fraction`` (large dense GEMM, of tensor peak),
                       ``vector_gemm_fraction``, ``dram_bandwidth_fraction``, ``cache_bandwidth_fraction``,
                       ``csr_vector_fraction`` (unstructured CSR on vector units, of vector peak),
                       ``bsr_matrix_fraction`` (block-sparse on the matrix unit, of dense peak),
                       ``nm_sparse_fraction`` (2:4 kernels, of the sparse peak), optional
                       ``conversion_vector_fraction`` (dequantization / conversion ops, of the vector peak;
                       default ``vector_gemm_fraction``), optional ``quantize_vector_fraction`` (the 4 vector ops
                       per element of the separate activation-quantization pass, of the fp32 vector peak;
                       absent: at the conversion fraction of the compute dtype's vector peak), optional ``blas_pack_bandwidth_fraction`` (CPUs: a BLAS copies
                       the weight operand of a dense float GEMM with more than one token into its packed
                       layout before the product, a pass that does not overlap it, at this fraction of the
                       bandwidth of the level the weights come from; absent: no packing pass is modelled),
                       optional ``weight_only_gemm_fraction`` (CPUs: the product of a weight-only quantized GEMM
                       -- INT8/INT4 weights, float activations, more than one token -- of the vector peak, as
                       the dequantizing kernel reaches it; absent: ``vector_gemm_fraction``).
    ``[interconnect.<name>]`` ``kind`` (``nvlink|pcie|ethernet|infiniband|loopback|...``),
                       ``bandwidth_gb_per_s`` (per direction), ``latency_us``.  The entries of
                       ``_network.toml`` (Ethernet, InfiniBand) are added to every device unless it defines
                       an entry of the same name.

    Every table with numbers has a ``source`` string; ``source_<key>`` overrides it for one key.  A source is a
    datasheet / paper reference or ``"estimate: <rule>"`` where no public figure exists.

Validation (``DeviceError``, a ``ValueError``, naming the file and the field): unknown keys, missing required
fields, non-positive or non-finite numbers, a sparse peak not above the dense one (or without a dense one),
per-instance capacities not strictly increasing, fractions above 1, numbers without a source.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "Device",
    "DeviceError",
    "ComputeUnit",
    "MemoryLevel",
    "Interconnect",
    "Efficiency",
    "Tiling",
    "DEVICE_DTYPES",
    "UNIT_NAMES",
    "load_device",
    "list_devices",
    "host_profile_path",
    "HOST_PROFILE_ENV",
    "save_profile",
]

#: Data types a profile may list (compression dtypes plus fp64).
DEVICE_DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
#: Compute units: ``tensor`` = tensor cores / matrix engines, ``vector`` = CUDA cores / SIMD units.
UNIT_NAMES = ("tensor", "vector")
#: Environment variable naming the host profile file.
HOST_PROFILE_ENV = "MEMWALL_HOST_PROFILE"

_HERE = Path(__file__).resolve().parent
_NETWORK_FILE = _HERE / "_network.toml"
_TEMPLATE_ID = "host-template"

_CAPACITY_UNITS = {"capacity_bytes": 1, "capacity_kib": 1024, "capacity_mib": 1024**2, "capacity_gib": 1024**3}
_EFFICIENCY_FIELDS = (
    "tensor_gemm_fraction",
    "vector_gemm_fraction",
    "dram_bandwidth_fraction",
    "cache_bandwidth_fraction",
    "csr_vector_fraction",
    "bsr_matrix_fraction",
    "nm_sparse_fraction",
    "conversion_vector_fraction",
    "quantize_vector_fraction",
    "blas_pack_bandwidth_fraction",
    "weight_only_gemm_fraction",
)
_OPTIONAL_EFFICIENCY = ("conversion_vector_fraction", "quantize_vector_fraction", "blas_pack_bandwidth_fraction",
                        "weight_only_gemm_fraction")
_TENSOR_ONLY_EFFICIENCY = ("tensor_gemm_fraction", "bsr_matrix_fraction", "nm_sparse_fraction")


class DeviceError(ValueError):
    """A device profile that cannot be found, parsed or validated; the message names the file and field."""


# ----------------------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComputeUnit:
    """One kind of compute unit: peaks in ops/s (1 FMA = 2 ops) per dtype, dense and 2:4-sparse."""

    name: str
    dense: Mapping[str, float]
    sparse: Mapping[str, float]

    def peak(self, dtype: str, sparse: bool = False) -> float | None:
        return (self.sparse if sparse else self.dense).get(dtype)


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the hierarchy.  ``capacity_bytes`` is per instance; ``total_capacity_bytes`` all copies."""

    name: str
    capacity_bytes: float
    instances: int
    bandwidth_bytes_per_s: float
    energy_j_per_byte: float

    @property
    def total_capacity_bytes(self) -> float:
        return self.capacity_bytes * self.instances


@dataclass(frozen=True)
class Interconnect:
    """A link: bandwidth per direction (bytes/s) and one-way small-message latency (s)."""

    name: str
    kind: str
    bandwidth_bytes_per_s: float
    latency_s: float

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_bytes_per_s

    @property
    def latency(self) -> float:
        return self.latency_s


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of peak (see the module doc); ``None`` where the device has no tensor unit."""

    tensor_gemm_fraction: float | None
    vector_gemm_fraction: float
    dram_bandwidth_fraction: float
    cache_bandwidth_fraction: float
    csr_vector_fraction: float
    bsr_matrix_fraction: float | None
    nm_sparse_fraction: float | None
    conversion_vector_fraction: float | None = None
    quantize_vector_fraction: float | None = None
    blas_pack_bandwidth_fraction: float | None = None
    weight_only_gemm_fraction: float | None = None


@dataclass(frozen=True)
class Tiling:
    register_tile_elements: int
    block_tile_elements: int
    matrix_min_block_elements: int
    parallel_units: int


@dataclass(frozen=True, eq=False)
class Device:
    """A validated device profile.  Build it with :func:`load_device` (which returns the same object for the
    same unchanged file).  Compared and hashed by identity, so it can key caches."""

    id: str
    name: str
    kind: str
    description: str
    path: str
    process_nm: float
    tdp_w: float
    idle_w: float
    kernel_launch_s: float
    units: Mapping[str, ComputeUnit]
    memory_levels: tuple[MemoryLevel, ...]
    energy_j_per_op: Mapping[str, float]
    efficiency: Efficiency
    tiling: Tiling
    interconnects: Mapping[str, Interconnect]
    sources: Mapping[str, str] = field(repr=False)
    csr_nonzero_s: float | None = None  # optional [overhead] csr_nonzero_ns: CSR kernel time per stored nonzero
    nm_kept_s: float | None = None  # optional [overhead] nm_kept_ns: software N:M kernel time per kept weight

    # --- compute -------------------------------------------------------------------------------------
    @property
    def dtypes(self) -> tuple[str, ...]:
        """Dtypes some unit runs (dense), in :data:`DEVICE_DTYPES` order."""
        return tuple(d for d in DEVICE_DTYPES if any(d in u.dense for u in self.units.values()))

    def has_dtype(self, dtype: str, sparse: bool = False) -> bool:
        """Whether some unit runs ``dtype`` (2:4-sparse when ``sparse``)."""
        return any(u.peak(dtype, sparse) is not None for u in self.units.values())

    def unit_for(self, dtype: str, sparse: bool = False) -> str:
        """Name of the unit with the highest peak for ``dtype`` (ValueError naming the dtype when absent)."""
        best, rate = None, 0.0
        for name in UNIT_NAMES:
            unit = self.units.get(name)
            p = unit.peak(dtype, sparse) if unit else None
            if p is not None and p > rate:
                best, rate = name, p
        if best is None:
            what = "2:4-sparse " if sparse else ""
            have = ", ".join(d for d in DEVICE_DTYPES if self.has_dtype(d, sparse)) or "none"
            raise ValueError(f"device {self.id!r} has no {what}{dtype} units (dtype {dtype!r}); it has: {have}")
        return best

    def peak(self, dtype: str, sparse: bool = False, unit: str | None = None) -> float:
        """Peak ops/s for ``dtype`` on ``unit`` (default: the best unit).  ValueError naming the dtype when the
        device (or that unit) lacks it."""
        if dtype not in DEVICE_DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DEVICE_DTYPES)}, got {dtype!r}")
        if unit is None:
            unit = self.unit_for(dtype, sparse)
        if unit not in self.units:
            raise ValueError(f"device {self.id!r} has no {unit!r} unit; it has: {', '.join(self.units)}")
        p = self.units[unit].peak(dtype, sparse)
        if p is None:
            what = "2:4-sparse " if sparse else ""
            raise ValueError(f"device {self.id!r}: the {unit} unit has no {what}{dtype} (dtype {dtype!r})")
        return p

    def ridge_point(self, dtype: str, sparse: bool = False) -> float:
        """Arithmetic intensity (ops per DRAM byte) where ``dtype`` compute and DRAM bandwidth balance."""
        return self.peak(dtype, sparse) / self.dram_bandwidth

    # --- memory --------------------------------------------------------------------------------------
    @property
    def dram(self) -> MemoryLevel:
        return self.memory_levels[-1]

    @property
    def llc(self) -> MemoryLevel:
        """The largest cache (the level just above DRAM)."""
        return self.memory_levels[-2]

    @property
    def dram_bandwidth(self) -> float:
        """Peak DRAM/HBM bandwidth in bytes/s."""
        return self.dram.bandwidth_bytes_per_s

    @property
    def dram_capacity(self) -> float:
        return self.dram.total_capacity_bytes

    def level(self, name: str) -> MemoryLevel:
        for lv in self.memory_levels:
            if lv.name == name:
                return lv
        raise ValueError(f"device {self.id!r} has no memory level {name!r}; it has: "
                         f"{', '.join(lv.name for lv in self.memory_levels)}")

    def to_dict(self) -> dict:
        """A JSON-ready description (SI units: ops/s, bytes, bytes/s, J, W, s)."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "path": self.path,
            "process_nm": self.process_nm,
            "tdp_w": self.tdp_w,
            "idle_w": self.idle_w,
            "kernel_launch_s": self.kernel_launch_s,
            "csr_nonzero_s": self.csr_nonzero_s,
            "nm_kept_s": self.nm_kept_s,
            "peaks_ops_per_s": {
                u.name: {"dense": dict(u.dense), "sparse": dict(u.sparse)} for u in self.units.values()
            },
            "memory_levels": [
                {"name": lv.name, "capacity_bytes": lv.capacity_bytes, "instances": lv.instances,
                 "total_capacity_bytes": lv.total_capacity_bytes,
                 "bandwidth_bytes_per_s": lv.bandwidth_bytes_per_s, "energy_j_per_byte": lv.energy_j_per_byte}
                for lv in self.memory_levels
            ],
            "energy_j_per_op": dict(self.energy_j_per_op),
            "efficiency": {k: getattr(self.efficiency, k) for k in _EFFICIENCY_FIELDS},
            "tiling": dict(vars(self.tiling)),
            "interconnects": {
                n: {"kind": i.kind, "bandwidth_bytes_per_s": i.bandwidth_bytes_per_s, "latency_s": i.latency_s}
                for n, i in self.interconnects.items()
            },
            "ridge_points_ops_per_byte": {d: self.ridge_point(d) for d in self.dtypes},
            "sources": dict(self.sources),
        }


# ----------------------------------------------------------------------------------------------------------
# locating files
# ----------------------------------------------------------------------------------------------------------
def host_profile_path() -> Path:
    """Where ``host`` is read from: ``$MEMWALL_HOST_PROFILE``, else ``$XDG_CONFIG_HOME/memwall/host.toml``
    (``~/.config/memwall/host.toml``)."""
    env = os.environ.get(HOST_PROFILE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "memwall" / "host.toml"


_SHIPPED: dict[str, Path] | None = None


def _shipped() -> dict[str, Path]:
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = {p.stem: p for p in sorted(_HERE.glob("*.toml")) if not p.stem.startswith("_")}
    return _SHIPPED


def list_devices() -> list[str]:
    """Ids of the shipped device profiles (the host template and ``host`` are not listed)."""
    return [k for k in _shipped() if k != _TEMPLATE_ID]


def _resolve(name_or_path) -> Path:
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"device: expected a device id or a path to a TOML file, got {type(name_or_path).__name__}")
    key = name_or_path.strip()
    shipped = _shipped()
    if key in shipped:
        return shipped[key]
    if key.lower() in shipped:
        return shipped[key.lower()]
    if key == "host":
        path = host_profile_path()
        if not path.is_file():
            raise DeviceError(
                f"device 'host': no host profile at {path} (set ${HOST_PROFILE_ENV} to a profile file, run "
                f"`memwall calibrate` to measure this machine, or copy {_HERE / 'host-template.toml'} there)"
            )
        return path
    if key.endswith(".toml") or os.sep in key or (os.altsep and os.altsep in key):
        path = Path(key).expanduser()
        if not path.is_file():
            raise DeviceError(f"device file {key!r} does not exist")
        return path
    raise DeviceError(
        f"unknown device {key!r}; known devices: {', '.join(list_devices())}, host (or a path to a TOML file)"
    )


_CACHE: dict[tuple[str, float], Device] = {}


def load_device(name_or_path) -> Device:
    """Load and validate a device profile.

    Parameters
    ----------
    name_or_path : str or os.PathLike or Device
        A shipped id (see :func:`list_devices`), ``"host"`` (see :func:`host_profile_path`), or a TOML path.
        A :class:`Device` is returned unchanged.

    Returns
    -------
    Device

    Raises
    ------
    DeviceError
        Unknown id (the message lists the known ones), missing file, malformed TOML, or a profile that fails
        validation (the message names the file and the field).
    """
    if isinstance(name_or_path, Device):
        return name_or_path
    path = _resolve(name_or_path)
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read ({exc})") from None
    key = (str(path), mtime)
    dev = _CACHE.get(key)
    if dev is None:
        dev = _parse_file(path)
        _CACHE[key] = dev
    return dev


# ----------------------------------------------------------------------------------------------------------
# parsing + validation
# ----------------------------------------------------------------------------------------------------------
class _Ctx:
    def __init__(self, path: Path):
        self.path = path
        self.sources: dict[str, str] = {}

    def error(self, fieldname: str, msg: str) -> DeviceError:
        return DeviceError(f"{self.path}: field {fieldname!r}: {msg}")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeviceError(f"{path}: malformed TOML: {exc}") from None
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read ({exc})") from None


def _number(ctx: _Ctx, table: dict, key: str, where: str, *, integer: bool = False, at_most: float | None = None,
             required: bool = True) -> float | None:
    fname = f"{where}.{key}" if where else key
    if key not in table:
        if required:
            raise ctx.error(fname, "missing required field")
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ctx.error(fname, f"expected a number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v) or v <= 0:
        raise ctx.error(fname, f"expected a finite number > 0, got {v!r}")
    if integer and (not float(v).is_integer()):
        raise ctx.error(fname, f"expected an integer, got {v!r}")
    if at_most is not None and v > at_most:
        raise ctx.error(fname, f"expected a value <= {at_most}, got {v!r}")
    src = table.get(f"source_{key}", table.get("source"))
    if not isinstance(src, str) or not src.strip():
        raise ctx.error(fname, f"no source: add 'source' or 'source_{key}' to [{where or 'top level'}]")
    ctx.sources[fname] = src.strip()
    return int(v) if integer else float(v)


def _string(ctx: _Ctx, table: dict, key: str, where: str, *, required: bool = True, choices=None) -> str | None:
    fname = f"{where}.{key}" if where else key
    if key not in table:
        if required:
            raise ctx.error(fname, "missing required field")
        return None
    v = table[key]
    if not isinstance(v, str) or not v.strip():
        raise ctx.error(fname, f"expected a non-empty string, got {v!r}")
    if choices is not None and v not in choices:
        raise ctx.error(fname, f"expected one of {', '.join(choices)}, got {v!r}")
    return v


def _check_keys(ctx: _Ctx, table, allowed, where: str) -> dict:
    if not isinstance(table, dict):
        raise ctx.error(where, f"expected a table, got {type(table).__name__}")
    allowed = set(allowed)
    for key, value in table.items():
        if key in allowed or key == "source":
            continue
        if key.startswith("source_") and key[len("source_"):] in allowed:
            if not isinstance(value, str):
                raise ctx.error(f"{where}.{key}", "expected a string")
            continue
        fname = f"{where}.{key}" if where else key
        raise ctx.error(fname, f"unknown key (allowed: {', '.join(sorted(allowed))})")
    if "source" in table and not isinstance(table["source"], str):
        raise ctx.error(f"{where}.source", "expected a string")
    return table


def _section(ctx: _Ctx, doc: dict, name: str, required: bool = True) -> dict | None:
    if name not in doc:
        if required:
            raise ctx.error(name, "missing required table")
        return None
    if not isinstance(doc[name], dict):
        raise ctx.error(name, f"expected a table, got {type(doc[name]).__name__}")
    return doc[name]


def _parse_units(ctx: _Ctx, comp: dict) -> dict[str, ComputeUnit]:
    _check_keys(ctx, comp, UNIT_NAMES, "compute")
    if "vector" not in comp:
        raise ctx.error("compute.vector", "missing required table")
    peak_keys = [f"{d}_{s}_tops" for d in DEVICE_DTYPES for s in ("dense", "sparse")]
    units = {}
    for uname in UNIT_NAMES:
        if uname not in comp:
            continue
        where = f"compute.{uname}"
        tbl = _check_keys(ctx, comp[uname], peak_keys, where)
        dense, sparse = {}, {}
        for d in DEVICE_DTYPES:
            dv = _number(ctx, tbl, f"{d}_dense_tops", where, required=False)
            sv = _number(ctx, tbl, f"{d}_sparse_tops", where, required=False)
            if sv is not None:
                if dv is None:
                    raise ctx.error(f"{where}.{d}_sparse_tops", f"a sparse peak needs {d}_dense_tops as well")
                if not sv > dv:
                    raise ctx.error(f"{where}.{d}_sparse_tops",
                                    f"sparse peak {sv} must exceed the dense peak {dv}")
                sparse[d] = sv * 1e12
            if dv is not None:
                dense[d] = dv * 1e12
        if not dense:
            raise ctx.error(where, "lists no peak (expected <dtype>_dense_tops keys)")
        units[uname] = ComputeUnit(uname, MappingProxyType(dense), MappingProxyType(sparse))
    return units


def _parse_memory(ctx: _Ctx, mem) -> tuple[MemoryLevel, ...]:
    if not isinstance(mem, list) or len(mem) < 2:
        raise ctx.error("memory", "expected at least two [[memory]] levels (a cache and DRAM), small to large")
    allowed = ("name", "instances", "bandwidth_gb_per_s", "energy_pj_per_byte", *_CAPACITY_UNITS)
    levels = []
    names = set()
    for i, tbl in enumerate(mem):
        where = f"memory[{i}]"
        _check_keys(ctx, tbl, allowed, where)
        name = _string(ctx, tbl, "name", where)
        if name in names:
            raise ctx.error(f"{where}.name", f"duplicate level name {name!r}")
        names.add(name)
        where_n = f"memory.{name}"
        caps = [k for k in _CAPACITY_UNITS if k in tbl]
        if len(caps) != 1:
            raise ctx.error(f"{where_n}.capacity_*",
                            f"expected exactly one of {', '.join(_CAPACITY_UNITS)}, got {caps or 'none'}")
        cap = _number(ctx, tbl, caps[0], where_n) * _CAPACITY_UNITS[caps[0]]
        inst = _number(ctx, tbl, "instances", where_n, integer=True, required=False) or 1
        bw = _number(ctx, tbl, "bandwidth_gb_per_s", where_n) * 1e9
        en = _number(ctx, tbl, "energy_pj_per_byte", where_n) * 1e-12
        if levels and not cap > levels[-1].capacity_bytes:
            raise ctx.error(f"{where_n}.{caps[0]}",
                            f"capacity per instance ({cap:.6g} B) must exceed that of the smaller level "
                            f"{levels[-1].name!r} ({levels[-1].capacity_bytes:.6g} B): levels go small -> large")
        levels.append(MemoryLevel(name, cap, int(inst), bw, en))
    return tuple(levels)


def _parse_interconnects(ctx: _Ctx, tbl: dict, where: str = "interconnect") -> dict[str, Interconnect]:
    if not isinstance(tbl, dict):
        raise ctx.error(where, "expected a table of [interconnect.<name>] tables")
    out = {}
    for name, entry in tbl.items():
        w = f"{where}.{name}"
        _check_keys(ctx, entry, ("kind", "bandwidth_gb_per_s", "latency_us"), w)
        kind = _string(ctx, entry, "kind", w)
        bw = _number(ctx, entry, "bandwidth_gb_per_s", w) * 1e9
        lat = _number(ctx, entry, "latency_us", w) * 1e-6
        out[name] = Interconnect(name, kind, bw, lat)
    return out


_NETWORK_CACHE: dict[str, Interconnect] | None = None
_NETWORK_SOURCES: dict[str, str] = {}


def _networks() -> dict[str, Interconnect]:
    global _NETWORK_CACHE
    if _NETWORK_CACHE is None:
        if not _NETWORK_FILE.is_file():
            _NETWORK_CACHE = {}
        else:
            ctx = _Ctx(_NETWORK_FILE)
            doc = _read_toml(_NETWORK_FILE)
            _check_keys(ctx, doc, ("interconnect",), "")
            _NETWORK_CACHE = _parse_interconnects(ctx, doc.get("interconnect", {}))
            _NETWORK_SOURCES.update(ctx.sources)
    return _NETWORK_CACHE


def _parse_file(path: Path) -> Device:
    from ..energy import horowitz_pj_per_op, HOROWITZ_SOURCE  # noqa: PLC0415 - avoid an import cycle

    ctx = _Ctx(path)
    doc = _read_toml(path)
    top = ("id", "name", "kind", "description", "process", "power", "overhead", "tiling", "compute", "memory",
           "energy_per_op", "efficiency", "interconnect")
    _check_keys(ctx, doc, top, "")
    dev_id = _string(ctx, doc, "id", "")
    name = _string(ctx, doc, "name", "")
    kind = _string(ctx, doc, "kind", "", choices=("gpu", "cpu"))
    description = _string(ctx, doc, "description", "", required=False) or ""

    proc = _check_keys(ctx, _section(ctx, doc, "process"), ("node_nm",), "process")
    node = _number(ctx, proc, "node_nm", "process")
    power = _check_keys(ctx, _section(ctx, doc, "power"), ("tdp_w", "idle_w"), "power")
    tdp = _number(ctx, power, "tdp_w", "power")
    idle = _number(ctx, power, "idle_w", "power")
    if idle >= tdp:
        raise ctx.error("power.idle_w", f"idle power {idle} W must be below the TDP {tdp} W")
    ovh = _check_keys(ctx, _section(ctx, doc, "overhead"), ("kernel_launch_us", "csr_nonzero_ns", "nm_kept_ns"),
                      "overhead")
    launch = _number(ctx, ovh, "kernel_launch_us", "overhead") * 1e-6
    csr_nz = _number(ctx, ovh, "csr_nonzero_ns", "overhead", required=False)
    nm_kept = _number(ctx, ovh, "nm_kept_ns", "overhead", required=False)
    tl_keys = ("register_tile_elements", "block_tile_elements", "matrix_min_block_elements", "parallel_units")
    tl = _check_keys(ctx, _section(ctx, doc, "tiling"), tl_keys, "tiling")
    tiling = Tiling(*(_number(ctx, tl, k, "tiling", integer=True) for k in tl_keys))

    units = _parse_units(ctx, _section(ctx, doc, "compute"))
    levels = _parse_memory(ctx, doc.get("memory"))

    # energy per op: profile figures, else the documented Horowitz rule
    e_keys = [f"{d}_pj_per_op" for d in DEVICE_DTYPES]
    etbl = _section(ctx, doc, "energy_per_op", required=False) or {}
    _check_keys(ctx, etbl, e_keys, "energy_per_op")
    energy = {}
    for d in DEVICE_DTYPES:
        v = _number(ctx, etbl, f"{d}_pj_per_op", "energy_per_op", required=False)
        if v is None:
            v = horowitz_pj_per_op(d, node)
            ctx.sources[f"energy_per_op.{d}_pj_per_op"] = f"estimate: {HOROWITZ_SOURCE}"
        energy[d] = v * 1e-12

    eff_tbl = _check_keys(ctx, _section(ctx, doc, "efficiency"), _EFFICIENCY_FIELDS, "efficiency")
    has_tensor = "tensor" in units
    eff = {}
    for k in _EFFICIENCY_FIELDS:
        need = has_tensor or k not in _TENSOR_ONLY_EFFICIENCY
        if k == "nm_sparse_fraction":
            need = has_tensor and bool(units["tensor"].sparse)
        if k in _OPTIONAL_EFFICIENCY:
            need = False
        eff[k] = _number(ctx, eff_tbl, k, "efficiency", at_most=1.0, required=need)
    efficiency = Efficiency(**eff)

    nets = dict(_networks())
    ctx.sources.update(_NETWORK_SOURCES)
    own = _section(ctx, doc, "interconnect", required=False)
    if own is not None:
        nets.update(_parse_interconnects(ctx, own))

    return Device(
        id=dev_id, name=name, kind=kind, description=description, path=str(path), process_nm=node,
        tdp_w=tdp, idle_w=idle, kernel_launch_s=launch, units=MappingProxyType(units), memory_levels=levels,
        energy_j_per_op=MappingProxyType(energy), efficiency=efficiency, tiling=tiling,
        interconnects=MappingProxyType(nets), sources=MappingProxyType(dict(ctx.sources)),
        csr_nonzero_s=None if csr_nz is None else csr_nz * 1e-9,
        nm_kept_s=None if nm_kept is None else nm_kept * 1e-9,
    )


# ----------------------------------------------------------------------------------------------------------
# writing profiles (memwall calibrate writes the host profile through this)
# ----------------------------------------------------------------------------------------------------------
def _toml_value(v, where: str) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise DeviceError(f"profile: field {where!r}: expected a finite number, got {v!r}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string
    raise DeviceError(f"profile: field {where!r}: cannot write a {type(v).__name__} to TOML")


def _toml_table(lines: list, header: str, tbl: dict, where: str) -> None:
    scalars = {k: v for k, v in tbl.items() if not isinstance(v, (dict, list))}
    if header:
        lines.append(f"\n{header}")
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v, f'{where}.{k}' if where else k)}")
    for k, v in tbl.items():
        if isinstance(v, dict):
            _toml_table(lines, f"[{where + '.' if where else ''}{k}]", v, f"{where}.{k}" if where else k)
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if not isinstance(item, dict):
                    raise DeviceError(f"profile: field {k!r}: expected a list of tables")
                _toml_table(lines, f"[[{k}]]", item, f"{k}[{i}]")


def save_profile(doc: dict, path, *, comment: str = "") -> Device:
    """Write a profile (a dict shaped like the TOML schema of this module) to ``path`` and return it loaded.

    The file is validated by :func:`load_device` before it replaces ``path``: an invalid profile raises
    :class:`DeviceError` naming the field and leaves ``path`` untouched.  ``comment`` lines head the file.
    ``memwall calibrate`` writes ``host_profile_path()`` this way.
    """
    if not isinstance(doc, dict):
        raise TypeError(f"doc: expected a dict shaped like a device profile, got {type(doc).__name__}")
    path = Path(path).expanduser()
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    _toml_table(lines, "", doc, "")
    text = "\n".join(lines).lstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:  # any failure or interruption leaves ``path`` as it was and no temporary file behind
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            _parse_file(tmp)
        except DeviceError as exc:
            raise DeviceError(str(exc).replace(str(tmp), str(path))) from None
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return load_device(str(path))

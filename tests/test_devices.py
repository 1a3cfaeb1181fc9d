"""Device profiles: every shipped profile loads, every number has a source, bad profiles fail precisely."""
from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from memwall.simulator import devices as D
from memwall.simulator.devices import DeviceError, list_devices, load_device
from memwall.simulator.energy import horowitz_pj_per_op

DEV_DIR = Path(D.__file__).parent
REQUIRED_IDS = {"p100", "v100", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "epyc-genoa"}
ALL_FILES = sorted(p.stem for p in DEV_DIR.glob("*.toml") if not p.stem.startswith("_"))


def test_required_devices_are_shipped():
    assert REQUIRED_IDS <= set(list_devices())
    assert "host-template" not in list_devices()  # a template, loadable but not listed
    assert "host-template" in ALL_FILES


@pytest.mark.parametrize("dev_id", ALL_FILES)
def test_every_profile_loads_and_is_consistent(dev_id):
    dev = load_device(dev_id)
    assert dev.id == dev_id
    assert dev.kind in ("gpu", "cpu")
    assert "vector" in dev.units
    for unit in dev.units.values():
        for dt, sp in unit.sparse.items():
            assert sp > unit.dense[dt]
        for v in list(unit.dense.values()) + list(unit.sparse.values()):
            assert math.isfinite(v) and v > 0
    caps = [lv.capacity_bytes for lv in dev.memory_levels]
    assert caps == sorted(caps) and len(set(caps)) == len(caps)
    assert dev.dram is dev.memory_levels[-1]
    assert 0 < dev.idle_w < dev.tdp_w
    for d in dev.dtypes:
        assert dev.energy_j_per_op[d] > 0
        assert dev.ridge_point(d) == pytest.approx(dev.peak(d) / dev.dram_bandwidth)
    for ic in dev.interconnects.values():
        assert ic.bandwidth_bytes_per_s > 0 and ic.latency_s > 0


def _numeric_paths(doc: dict) -> list[str]:
    """Field paths of every number in a profile, spelled as the loader records them in ``sources``."""
    out = []

    def walk(tbl, where):
        for key, val in tbl.items():
            if isinstance(val, bool):
                continue
            if isinstance(val, (int, float)):
                out.append(f"{where}.{key}" if where else key)
            elif isinstance(val, dict):
                walk(val, f"{where}.{key}" if where else key)
    for key, val in doc.items():
        if key == "memory":
            for lvl in val:
                walk({k: v for k, v in lvl.items() if k != "name"}, f"memory.{lvl['name']}")
        elif isinstance(val, dict):
            walk(val, key)
    return out


@pytest.mark.parametrize("dev_id", ALL_FILES + ["_network"])
def test_every_number_has_a_source(dev_id):
    path = DEV_DIR / f"{dev_id}.toml"
    doc = tomllib.loads(path.read_text())
    paths = _numeric_paths(doc)
    assert paths, "a profile without numbers?"
    sources = load_device("a100-80gb" if dev_id == "_network" else dev_id).sources
    for p in paths:
        assert p in sources, f"{path.name}: {p} has no source"
        assert len(sources[p].strip()) > 8, f"{path.name}: {p} has a vacuous source {sources[p]!r}"
    # and every unit-bearing key names its unit
    units = ("_tops", "_bytes", "_kib", "_mib", "_gib", "_gb_per_s", "_pj_per_byte", "_pj_per_op", "_w", "_us",
             "_nm", "_fraction", "_elements", "_units", "instances")
    for p in paths:
        assert p.endswith(units), f"{path.name}: {p} has no unit in its key"


def test_datasheet_figures():
    """Spot checks against the vendor figures (reference/hardware.md), written out here by hand."""
    a100 = load_device("a100-80gb")
    assert a100.peak("fp16") == 312e12
    assert a100.peak("fp16", sparse=True) == 624e12
    assert a100.peak("int4") == 1248e12
    assert a100.peak("fp32") == 19.5e12 and a100.unit_for("fp32") == "vector"
    assert a100.peak("fp64") == 19.5e12 and a100.unit_for("fp64") == "tensor"
    assert a100.dram_bandwidth == 2039e9
    assert a100.llc.capacity_bytes == 40 * 2**20
    assert a100.ridge_point("fp16") == pytest.approx(312e12 / 2039e9)
    assert load_device("a100-40gb").dram_bandwidth == 1555e9
    h100 = load_device("h100-sxm")
    assert h100.peak("fp8") == 1978.9e12 and h100.dram_bandwidth == 3350e9
    assert load_device("h200").dram_bandwidth == 4800e9
    assert load_device("v100").peak("fp16") == 125e12
    assert load_device("p100").peak("fp32") == 10.6e12
    genoa = load_device("epyc-genoa")
    assert genoa.kind == "cpu" and "tensor" not in genoa.units
    assert genoa.peak("fp32") == pytest.approx(96 * 32 * 2.4e9, rel=1e-3)
    assert genoa.dram_bandwidth == 460.8e9


def test_absent_dtypes_are_absent_not_zero():
    assert not load_device("h100-sxm").has_dtype("int4")
    assert not load_device("p100").has_dtype("int8")
    assert not load_device("a100-80gb").has_dtype("fp8")
    assert not load_device("epyc-genoa").has_dtype("fp16")
    assert not load_device("v100").has_dtype("fp16", sparse=True)
    with pytest.raises(ValueError, match="int4"):
        load_device("h100-sxm").peak("int4")
    with pytest.raises(ValueError, match="fp16"):
        load_device("v100").peak("fp16", sparse=True)
    with pytest.raises(ValueError, match="dtype"):
        load_device("a100-80gb").peak("fp12")


def test_interconnects_include_links_and_networks():
    a100 = load_device("a100-80gb")
    assert a100.interconnects["nvlink3"].bandwidth_bytes_per_s == 300e9
    for name in ("eth10g", "eth25g", "eth100g", "ib_hdr", "ib_ndr"):
        assert name in a100.interconnects
    assert a100.interconnects["eth10g"].bandwidth == 1.25e9
    assert a100.interconnects["ib_ndr"].bandwidth == 50e9
    assert "pcie5_x16" in load_device("epyc-genoa").interconnects


def test_device_is_frozen():
    dev = load_device("a100-80gb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.tdp_w = 1.0
    with pytest.raises(TypeError):
        dev.units["tensor"].dense["fp16"] = 1.0


def test_unknown_name_lists_known_devices():
    with pytest.raises(DeviceError, match="a100-80gb") as exc:
        load_device("b200")
    assert "h100-sxm" in str(exc.value) and "host" in str(exc.value)
    with pytest.raises(TypeError):
        load_device(42)


def test_load_by_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text((DEV_DIR / "a100-80gb.toml").read_text().replace('id = "a100-80gb"', 'id = "mine"'))
    dev = load_device(str(p))
    assert dev.id == "mine" and dev.path == str(p)
    assert load_device(p).id == "mine"  # os.PathLike
    with pytest.raises(DeviceError, match="does not exist"):
        load_device(str(tmp_path / "missing.toml"))


def test_host_profile_resolution(tmp_path, monkeypatch):
    host = tmp_path / "host.toml"
    host.write_text((DEV_DIR / "host-template.toml").read_text())
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(host))
    assert D.host_profile_path() == host
    assert load_device("host").kind == "cpu"
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(tmp_path / "nope.toml"))
    with pytest.raises(DeviceError, match="nope.toml"):
        load_device("host")
    monkeypatch.delenv("MEMWALL_HOST_PROFILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert D.host_profile_path() == tmp_path / "cfg" / "memwall" / "host.toml"
    with pytest.raises(DeviceError, match="memwall calibrate"):
        load_device("host")


# ----------------------------------------------------------------------------------------------------------
# validation errors: each edit of a valid profile must fail naming the file and the field
# ----------------------------------------------------------------------------------------------------------
GOOD = (DEV_DIR / "a100-80gb.toml").read_text()

BAD_EDITS = [
    ("unknown top-level key", lambda s: s.replace('kind = "gpu"', 'kind = "gpu"\ncolour = "green"'), "colour"),
    ("unknown peak key", lambda s: s.replace("fp16_dense_tops = 312", "fp16_dense_tops = 312\nfp12_dense_tops = 1"),
     "compute.tensor.fp12_dense_tops"),
    ("misspelt unit", lambda s: s.replace("tdp_w = 400", "tdp_watts = 400"), "power.tdp_watts"),
    ("missing field", lambda s: s.replace("idle_w = 54\n", ""), "power.idle_w"),
    ("missing table", lambda s: s.replace("[overhead]\nkernel_launch_us = 5.0\n", ""), "overhead"),
    ("negative", lambda s: s.replace("tdp_w = 400", "tdp_w = -400"), "power.tdp_w"),
    ("zero", lambda s: s.replace("bandwidth_gb_per_s = 2039", "bandwidth_gb_per_s = 0"),
     "memory.hbm.bandwidth_gb_per_s"),
    ("nan", lambda s: s.replace("fp16_dense_tops = 312", "fp16_dense_tops = nan"), "compute.tensor.fp16_dense_tops"),
    ("inf", lambda s: s.replace("node_nm = 7", "node_nm = inf"), "process.node_nm"),
    ("string for number", lambda s: s.replace("tdp_w = 400", 'tdp_w = "400"'), "power.tdp_w"),
    ("sparse not above dense", lambda s: s.replace("int8_sparse_tops = 1248", "int8_sparse_tops = 624"),
     "compute.tensor.int8_sparse_tops"),
    ("sparse without dense",
     lambda s: s.replace("fp16_sparse_tops = 624", "fp16_sparse_tops = 624\nfp8_sparse_tops = 9"),
     "compute.tensor.fp8_sparse_tops"),
    ("capacities not increasing", lambda s: s.replace("capacity_mib = 40", "capacity_kib = 64"),
     "memory.l2.capacity_kib"),
    ("two capacities", lambda s: s.replace("capacity_mib = 40", "capacity_mib = 40\ncapacity_gib = 1"),
     "memory.l2.capacity_*"),
    ("fraction above one", lambda s: s.replace("cache_bandwidth_fraction = 0.8", "cache_bandwidth_fraction = 1.5"),
     "efficiency.cache_bandwidth_fraction"),
    ("no source", lambda s: s.replace('source = "NVIDIA Ampere GA100 architecture whitepaper: TSMC 7 nm N7"\n', ""),
     "process.node_nm"),
    ("bad kind", lambda s: s.replace('kind = "gpu"', 'kind = "tpu"'), "kind"),
    ("idle above tdp", lambda s: s.replace("idle_w = 54", "idle_w = 500"), "power.idle_w"),
    ("non-integer count", lambda s: s.replace("parallel_units = 108", "parallel_units = 10.5"),
     "tiling.parallel_units"),
    ("missing efficiency", lambda s: s.replace("nm_sparse_fraction = 0.65\n", ""), "efficiency.nm_sparse_fraction"),
    ("interconnect unknown key", lambda s: s.replace("latency_us = 2.0", "latency_us = 2.0\nlanes = 12"),
     "interconnect.nvlink3.lanes"),
]


@pytest.mark.parametrize("what,edit,field", BAD_EDITS, ids=[b[0] for b in BAD_EDITS])
def test_validation_errors_name_file_and_field(tmp_path, what, edit, field):
    bad = edit(GOOD)
    assert bad != GOOD, f"edit {what!r} did not apply"
    p = tmp_path / "bad.toml"
    p.write_text(bad)
    with pytest.raises(DeviceError) as exc:
        load_device(str(p))
    msg = str(exc.value)
    assert "bad.toml" in msg and field in msg, msg
    assert isinstance(exc.value, ValueError)


def test_malformed_toml(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("id = \n[power")
    with pytest.raises(DeviceError, match="broken.toml.*malformed TOML"):
        load_device(str(p))
    p.write_bytes(b"id = \"\xff\xfe\"\n")
    with pytest.raises(DeviceError, match="malformed TOML"):
        load_device(str(p))


def test_energy_defaults_follow_the_horowitz_rule():
    a100 = load_device("a100-80gb")
    # Horowitz 45 nm: fp16 mul 1.1 pJ + fp32 add 0.9 pJ per MAC -> 1.0 pJ per op, x 7/45
    assert a100.energy_j_per_op["fp16"] == pytest.approx(1.0e-12 * 7 / 45)
    assert horowitz_pj_per_op("fp32", 45) == pytest.approx((3.7 + 0.9) / 2)
    assert horowitz_pj_per_op("int8", 45) == pytest.approx((0.2 + 0.1) / 2)
    assert a100.sources["energy_per_op.fp16_pj_per_op"].startswith("estimate:")
    with pytest.raises(ValueError):
        horowitz_pj_per_op("fp12", 7)
    with pytest.raises(ValueError):
        horowitz_pj_per_op("fp16", -1)


def test_to_dict_is_json_ready():
    import json

    d = load_device("h100-pcie").to_dict()
    json.dumps(d)
    assert d["memory_levels"][-1]["bandwidth_bytes_per_s"] == 2000e9
    assert d["ridge_points_ops_per_byte"]["fp16"] == pytest.approx(756e12 / 2000e9)


def test_save_profile_round_trips(tmp_path):
    doc = tomllib.loads((DEV_DIR / "epyc-genoa.toml").read_text())
    doc["id"] = "roundtrip"
    doc["name"] = 'A "quoted" name \\ with a backslash'
    p = tmp_path / "sub" / "host.toml"
    dev = D.save_profile(doc, p, comment="measured by a test\nsecond line")
    ref = load_device("epyc-genoa")
    assert dev.id == "roundtrip" and dev.name == doc["name"]
    assert dev.memory_levels == ref.memory_levels and dev.units == ref.units
    assert dev.interconnects == ref.interconnects and dev.sources["memory.dram.bandwidth_gb_per_s"]
    assert p.read_text().startswith("# measured by a test\n# second line\n")
    # an invalid profile is refused and leaves the file alone
    before = p.read_text()
    doc["power"]["idle_w"] = -1
    with pytest.raises(DeviceError, match=r"host.toml.*power.idle_w"):
        D.save_profile(doc, p)
    assert p.read_text() == before
    assert not [q for q in p.parent.iterdir() if q.name.startswith(".")]
    doc["power"]["idle_w"] = float("nan")
    with pytest.raises(DeviceError, match="power.idle_w"):
        D.save_profile(doc, p)


def test_devices_are_hashable_and_cached():
    a = load_device("v100")
    assert load_device("v100") is a and load_device(a) is a
    assert {a: 1}[a] == 1

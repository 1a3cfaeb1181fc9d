"""The simulator commands of the CLI: exit codes, JSON schema, one-line errors, no Numba on `estimate`."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memwall.simulator.cli import main

DEVICE_IDS = ("p100", "v100", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie")
TEMPLATE = Path(__file__).resolve().parents[1] / "simulator" / "devices" / "host-template.toml"


@pytest.fixture(autouse=True)
def _no_host_profile(monkeypatch, tmp_path):
    """Tests see no calibrated host profile unless they set one (the user's own must not leak in)."""
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(tmp_path / "no-host.toml"))


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def assert_usage_error(capsys, *argv, match=()):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    for m in match:
        assert m in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ devices
def test_devices_lists_the_issue_ids(capsys):
    d = run_json(capsys, "devices")
    ids = [r["id"] for r in d["devices"]]
    assert set(DEVICE_IDS) <= set(ids)
    p100 = next(r for r in d["devices"] if r["id"] == "p100")
    assert p100["int8_ops_per_s"] is None  # absent, not zero
    rc, out, _ = run(capsys, "devices")
    assert rc == 0 and "h100-sxm" in out
    rc, out, _ = run(capsys, "devices", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and {r["id"] for r in rows} >= set(DEVICE_IDS)


def test_devices_include_host_when_a_profile_exists(capsys, monkeypatch):
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(TEMPLATE))
    ids = [r["id"] for r in run_json(capsys, "devices")["devices"]]
    assert "host-template" in ids


def test_device_by_name_and_by_path(capsys, tmp_path):
    d = run_json(capsys, "device", "a100-80gb")
    assert d["id"] == "a100-80gb" and d["memory_levels"][-1]["bandwidth_bytes_per_s"] > 1e12
    rc, out, _ = run(capsys, "device", "p100")
    assert rc == 0 and "memory" in out and "hbm" in out.lower()
    copy = tmp_path / "mygpu.toml"
    shutil.copy(TEMPLATE.parent / "v100.toml", copy)
    assert run_json(capsys, "device", str(copy))["id"] == "v100"


def test_unknown_device_lists_known_ones(capsys):
    assert_usage_error(capsys, "device", "tpu-v9", match=("tpu-v9", "p100", "h100-sxm"))
    assert_usage_error(capsys, "estimate", "--gemm", "1", "2", "3", "--device", "b200", match=("a100-80gb",))


def test_malformed_toml_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("id = 'x'\nname = [\n")
    assert_usage_error(capsys, "device", str(bad), match=("bad.toml",))
    # a broken host profile does not break the listing: it is skipped with a warning
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(bad))
    rc, out, err = run(capsys, "devices")
    assert rc == 0 and "p100" in out and "host" in err


# ------------------------------------------------------------------------------------------ estimate
def test_estimate_json_schema(capsys):
    d = run_json(capsys, "estimate", "--gemm", "1", "4096", "4096", "--device", "a100-80gb")
    for key in ("time_s", "bound", "energy_j", "speedup", "bytes_by_level", "time_by_roof", "ops"):
        assert key in d
    assert d["speedup"] == pytest.approx(1.0)
    assert d["ops"] == 2 * 4096 * 4096
    assert d["bound"] in d["time_by_roof"]
    w4 = run_json(capsys, "estimate", "--gemm", "1", "4096", "4096", "--weights", "int4", "--group", "128")
    assert w4["speedup"] > 1.5 and w4["compression"]["group_size"] == 128
    vs32 = run_json(capsys, "estimate", "--gemm", "1", "4096", "4096", "--baseline", "fp32")
    assert vs32["speedup"] > 1.0 and vs32["baseline"]["weights"] == "fp32"


def test_estimate_explains_itself(capsys):
    rc, out, _ = run(capsys, "estimate", "--gemm", "4096", "4096", "4096", "--format", "nm:2:4",
                     "--device", "h100-sxm")
    assert rc == 0
    for word in ("ops", "bytes", "time/roof", "bound", "energy", "speedup"):
        assert word in out
    rc, out, _ = run(capsys, "estimate", "--gemm", "8", "512", "512", "--brief")
    assert rc == 0 and len(out.strip().splitlines()) == 1


def test_estimate_layer_specs(capsys):
    d = run_json(capsys, "estimate", "--layer", "conv:64:64:3:56:1:1", "--batch", "2")
    assert d["ops"] == 2 * 2 * 56 * 56 * 64 * 64 * 9
    d = run_json(capsys, "estimate", "--layer", "linear:768:3072", "--batch", "4", "--seq", "8")
    assert d["ops"] == 2 * 32 * 768 * 3072
    d = run_json(capsys, "estimate", "--layer", "attention:32:8:128", "--phase", "decode", "--context", "100")
    assert {o["op"] for o in d["ops"]} == {"attention.kv_append", "attention.qk", "attention.softmax",
                                          "attention.pv"}
    assert d["time_s"] == pytest.approx(sum(o["time_s"] for o in d["ops"]))
    d = run_json(capsys, "estimate", "--layer", "llama-2-7b/model.layers.0.mlp.down_proj", "--phase", "decode")
    assert d["ops"] == 2 * 11008 * 4096
    rc, out, _ = run(capsys, "estimate", "--layer", "linear:64:64", "--csv")
    assert rc == 0 and out.startswith("op,time_s,bound")


@pytest.mark.parametrize("argv, words", [
    (["--weights", "int3"], ("int3", "fp32", "int4")),
    (["--acts", "fp12"], ("fp12", "bf16")),
    (["--format", "coo"], ("coo", "csr", "bsr:RxC", "nm:N:M")),
    (["--format", "csr", "--sparsity", "1.5"], ("sparsity",)),
    (["--format", "bsr:5x5", "--sparsity", "0.5"], ("5x5", "divide")),
    (["--weights", "int4", "--group", "100"], ("100", "K")),
    (["--sparsity", "0.5"], ("--sparsity",)),
    (["--weights", "int4", "--acts", "int4", "--device", "h100-sxm"], ("int4",)),
])
def test_estimate_bad_configs_exit_2(capsys, argv, words):
    assert_usage_error(capsys, "estimate", "--gemm", "1", "4096", "4096", *argv, match=words)


def test_estimate_bad_shapes_exit_2(capsys):
    assert_usage_error(capsys, "estimate", match=("--gemm",))
    assert_usage_error(capsys, "estimate", "--gemm", "0", "4", "4", match=("M",))
    assert_usage_error(capsys, "estimate", "--layer", "conv:3:8:7:4", match=("does not fit",))
    assert_usage_error(capsys, "estimate", "--layer", "mlp:1:2", match=("linear:",))
    assert_usage_error(capsys, "estimate", "--layer", "gpt2/h.99.attn", match=("h.99.attn",))
    assert_usage_error(capsys, "estimate", "--layer", "resnet50/bn1", match=("folded",))


def test_json_is_strict_even_for_configs_a_device_cannot_run(capsys):
    rc, out, err = run(capsys, "crossover", "--device", "p100", "--acts", "int8", "--format", "csr", "--json")
    assert rc == 0, err

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    d = json.loads(out, parse_constant=refuse)
    (c,) = d["crossovers"]
    assert c["vs_dense"] is None and all(t["target_time_s"] is None for t in c["targets"])


# ------------------------------------------------------------------------------------------ model
def test_model_json_schema_llm_decode(capsys):
    d = run_json(capsys, "model", "llama-2-7b", "--phase", "decode", "--context", "1024", "--device", "h100-sxm")
    for key in ("time_s", "tokens_per_s", "params", "energy_j", "speedup", "layers", "energy_per_token_j"):
        assert key in d
    assert d["params"] == 6_738_415_616
    assert d["tokens_per_s"] == pytest.approx(1 / d["time_s"])
    assert len(d["layers"]) > 400 and {"name", "time_s", "bound", "energy_j"} <= set(d["layers"][0])
    pre = run_json(capsys, "model", "llama-3-8b", "--seq", "256", "--weights", "int8", "--acts", "int8")
    assert pre["ttft_s"] == pytest.approx(pre["time_s"]) and pre["tokens"] == 256
    assert pre["compression"] == "int8"
    gen = run_json(capsys, "model", "gpt2", "--seq", "64", "--generate", "16")["generation"]
    assert gen["new_tokens"] == 16 and gen["ttft_s"] > 0 and gen["decode_tokens_per_s"] > 0


def test_model_cnn_text_csv_and_list(capsys):
    rc, out, _ = run(capsys, "model", "resnet50", "--batch", "8", "--layers", "3")
    assert rc == 0 and "images/s" in out and "conv" in out
    rc, out, _ = run(capsys, "model", "vgg16", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and len(rows) == 22 and rows[0]["name"] == "features.0"
    d = run_json(capsys, "model", "list")
    assert {m["model"] for m in d["models"]} >= {"resnet50", "gpt2", "llama-3-8b", "all-minilm-l6-v2"}


def test_model_bad_input_exit_2(capsys):
    assert_usage_error(capsys, "model", "resnet-51", match=("resnet50", "llama-2-13b"))
    assert_usage_error(capsys, "model", "resnet50", "--phase", "decode", match=("decode",))
    assert_usage_error(capsys, "model", "bert-base", "--seq", "1000", match=("512",))
    assert_usage_error(capsys, "model", "gpt2", "--phase", "generate", match=("prefill", "decode"))
    assert_usage_error(capsys, "model", "gpt2", "--batch", "0", match=("batch",))
    assert_usage_error(capsys, "model", "vgg16", "--generate", "4", match=("decoder",))


# ------------------------------------------------------------------------------------------ analyses
def test_crossover_and_trend(capsys):
    d = run_json(capsys, "crossover", "--gemm", "1", "2048", "2048", "--format", "csr", "--format", "nm:2:4")
    assert d["gemm"] == [1, 2048, 2048]
    assert {c["format"] for c in d["crossovers"]} == {"csr", "nm:2:4"}
    for c in d["crossovers"]:
        for key in ("vs_dense", "vs_int8", "vs_int4"):
            assert c[key] is None or 0 <= c[key] < 1
        assert [t["target"] for t in c["targets"]] == ["dense", "int8", "int4"]
    rc, out, _ = run(capsys, "crossover", "--device", "v100", "--format", "bsr:32x32")
    assert rc == 0 and "bsr:32x32" in out
    t = run_json(capsys, "trend", "--model", "alexnet")
    ridges = [r["ridge_ops_per_byte"] for r in t["devices"]]
    assert [r["device"] for r in t["devices"]] == ["p100", "v100", "a100-40gb", "h100-sxm"]
    assert ridges == sorted(ridges) and len(set(ridges)) == 4
    rc, out, _ = run(capsys, "trend", "--csv", "--device", "p100", "--device", "h100-pcie")
    assert rc == 0 and len(out.strip().splitlines()) == 3


# ------------------------------------------------------------------------------------------ report
def test_report_runs_with_no_arguments(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "report")
    assert rc == 0, err
    for word in ("llama-2-7b decode", "resnet50", "p100", "a100-80gb", "h100-sxm", "int4 g128 weight-only", "2:4", "csr 90%",
                 "bsr 16x16 75%", "speedup", "bound"):
        assert word in out
    assert "roofline figure" in out  # written (with matplotlib) or why not


def test_report_json_rows_and_host(capsys, monkeypatch):
    monkeypatch.setenv("MEMWALL_HOST_PROFILE", str(TEMPLATE))
    d = run_json(capsys, "report", "--no-plot", "--cnn", "none", "--llm", "gpt2", "--context", "128")
    assert d["devices"] == ["p100", "a100-80gb", "h100-sxm", "host-template"]
    assert len(d["rows"]) == 4 * len(d["options"])
    for r in d["rows"]:
        assert {"time_s", "speedup", "bound", "energy_j", "error"} <= set(r)
        assert (r["error"] is None) == (r["time_s"] is not None)
    assert_usage_error(capsys, "report", "--llm", "resnet50", match=("decoder",))


# ------------------------------------------------------------------------------------------ roofline plot
def test_roofline_without_matplotlib_names_the_extra(capsys, monkeypatch, tmp_path):
    import memwall.simulator.plots as plots

    def missing():
        raise plots.MissingExtraError("matplotlib is not installed: roofline figures need the plot extra "
                                      "(pip install 'memwall[plot]')")

    monkeypatch.setattr(plots, "_pyplot", missing)
    assert_usage_error(capsys, "roofline", "--out", str(tmp_path / "r.png"), "--model", "alexnet",
                       match=("memwall[plot]",))
    assert_usage_error(capsys, "roofline", "--out", str(tmp_path / "r.txt"), match=(".png",))


def test_roofline_missing_extra_error_is_real_when_matplotlib_is_absent():
    from memwall.simulator import plots

    if plots.have_matplotlib():
        pytest.skip("matplotlib is installed")
    with pytest.raises(plots.MissingExtraError, match=r"memwall\[plot\]"):
        plots._pyplot()


def test_roofline_figure_with_matplotlib(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "roof.svg"
    rc, _, err = run(capsys, "roofline", "--out", str(out), "--model", "alexnet", "--device", "a100-80gb")
    assert rc == 0, err
    assert out.stat().st_size > 1000 and out.read_text().lstrip().startswith("<?xml")


# ------------------------------------------------------------------------------------------ subprocess
def _env():
    env = dict(os.environ)
    env["MEMWALL_HOST_PROFILE"] = os.devnull
    return env


def test_console_script_estimate_without_numba():
    code = ("import sys, json; from memwall.simulator.cli import main; "
            "rc = main(['estimate', '--gemm', '1', '4096', '4096', '--weights', 'int8', '--json']); "
            "print('NUMBA' if 'numba' in sys.modules else 'NO-NUMBA', rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "NO-NUMBA 0"
    exe = shutil.which("memwall")
    cmd = [exe] if exe else [sys.executable, "-m", "memwall.simulator.cli"]
    p = subprocess.run(cmd + ["estimate", "--gemm", "1", "4096", "4096", "--json"], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["bound"]
    p = subprocess.run(cmd + ["model", "nope"], capture_output=True, text=True, env=_env(), timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1

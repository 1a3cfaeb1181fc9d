"""Package layout, validation helpers, CLI entry points."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit, prange

from memwall.kernels import _validate as v
from memwall.kernels._sched import call_serial, chunk_workers, next_chunk, next_task, num_threads, task_queues
from memwall.simulator import cli


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("memwall ")


def test_info_json(capsys):
    import json

    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("cpu_model", "features", "numba", "numpy", "numba_threads", "kernel_paths"):
        assert key in info
    assert isinstance(info["features"]["avx512f"], bool)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "memwall.simulator.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert "memwall" in out.stdout


def test_as_array_dtype_and_ndim_errors():
    with pytest.raises(TypeError, match="a: expected dtype int8, got float32"):
        v.as_array(np.zeros((2, 2), np.float32), "a", dtype=np.int8)
    with pytest.raises(ValueError, match="b: expected a 2-D array"):
        v.as_array(np.zeros(3, np.int8), "b", dtype=np.int8, ndim=2)
    with pytest.raises(TypeError, match="c: expected a numpy.ndarray, got list"):
        v.as_array([1, 2], "c", dtype=np.int8)


def test_as_array_copies_noncontiguous_and_negative_strides():
    x = np.arange(24, dtype=np.int8).reshape(4, 6)
    for view in (x[:, ::2], x[::-1], x.T):
        out = v.as_array(view, "x", dtype=np.int8, ndim=2)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, view)


def test_scalar_checks():
    assert v.check_int(np.int64(3), "k", minimum=1) == 3
    with pytest.raises(TypeError, match="k: expected an integer"):
        v.check_int(2.0, "k")
    with pytest.raises(ValueError, match="group_size: expected an integer >= 1, got 0"):
        v.check_int(0, "group_size", minimum=1)
    with pytest.raises(ValueError, match=r"sparsity: expected a value in \[0.0, 1.0\)"):
        v.check_fraction(1.0, "sparsity", include_high=False)
    with pytest.raises(ValueError, match="scale: expected values > 0, found 0.0"):
        v.check_positive(np.array([1.0, 0.0]), "scale")
    with pytest.raises(ValueError, match="scale: expected finite values, found nan"):
        v.check_positive(np.array([np.nan]), "scale")
    with pytest.raises(ValueError, match=r"q: expected values in \[-8, 7\], found 9 at index \(1, 0\)"):
        v.check_range(np.array([[1, 2], [9, 0]]), "q", -8, 7)


def test_as_array_refuses_complex_even_when_converting():
    with pytest.raises(TypeError, match="s: expected dtype float32, got complex64"):
        v.as_array(np.ones(3, np.complex64), "s", dtype=np.float32, allow_convert=True)
    out = v.as_array(np.ones(3, np.float64), "s", dtype=np.float32, allow_convert=True)
    assert out.dtype == np.float32


def _load_report():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "report.py")
    spec = importlib.util.spec_from_file_location("memwall_bench_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_report_ratios_and_the_interleaved_judgement():
    """benchmarks/report.py: speed-up = baseline median / memwall median; a target is judged on the interleaved
    ratio where the memwall entry gives one, else on the block ratio."""
    report = _load_report()

    def bench(group, impl, median, **info):
        return {"name": f"{group}-{impl}", "group": group, "stats": {"median": median}, "extra_info": {"impl": impl, **info}}

    data = {"benchmarks": [
        bench("g", "memwall", 1.0, targets={"numpy": 4.0, "torch": 0.9}, interleaved={"numpy": 3.5}),
        bench("g", "numpy", 4.5), bench("g", "torch", 0.8),
        bench("h", "memwall", 2.0, ops=4e9, targets={"scipy": 2.0}), bench("h", "scipy", 5.0),
    ]}
    rows, tables = report.summarize(data)
    by = {(r["case"], r["impl"]): r for r in rows}
    assert by[("g", "numpy")]["memwall_speedup"] == 4.5 and by[("g", "numpy")]["interleaved"] == 3.5
    assert by[("g", "numpy")]["met"] == "NO"  # 4.5x in blocks, 3.5x interleaved: judged on 3.5
    assert by[("g", "torch")]["memwall_speedup"] == 0.8 and by[("g", "torch")]["met"] == "NO"
    assert "interleaved" not in by[("h", "scipy")] and by[("h", "scipy")]["met"] == "yes"  # 2.5x >= 2
    assert by[("h", "memwall")]["Gop/s"] == 2.0 and tables == []




def _bench_run(judged, block=4.5):
    """A pytest-benchmark JSON of one run: memwall and numpy, the given interleaved ratio, target 4.0."""
    return {"machine_info": {"cpu": {"brand_raw": "test cpu"}}, "benchmarks": [
        {"name": "g-memwall", "group": "g", "stats": {"median": 1.0},
         "extra_info": {"impl": "memwall", "ops": 1e9, "targets": {"numpy": 4.0}, "interleaved": {"numpy": judged}}},
        {"name": "g-numpy", "group": "g", "stats": {"median": block}, "extra_info": {"impl": "numpy"}},
    ]}


def test_bench_report_combines_runs_on_medians():
    """Several runs: medians over the runs, the judged ratio's range, the runs that met the target, and ``met``
    on the median (3.5, 4.2, 4.5 -> 4.2 >= 4.0, met in 2 of 3)."""
    report = _load_report()
    runs = [report.summarize(_bench_run(j, block))[0] for j, block in ((3.5, 4.0), (4.5, 5.0), (4.2, 4.4))]
    rows = report.combine_runs(runs)
    by = {(r["case"], r["impl"]): r for r in rows}
    np_row = by[("g", "numpy")]
    assert np_row["runs"] == 3 and np_row["interleaved"] == 4.2 and np_row["memwall_speedup"] == 4.4
    assert np_row["median_ms"] == 4400.0 and np_row["judged_range"] == "3.5-4.5"
    assert np_row["met_runs"] == "2/3" and np_row["met"] == "yes"
    rows = report.combine_runs(runs[:1] + [report.summarize(_bench_run(3.9))[0]])
    assert {(r["impl"], r.get("met")) for r in rows} == {("memwall", None), ("numpy", "NO")}  # median 3.7
    assert by[("g", "memwall")]["Gop/s"] == 1.0 and "target" not in by[("g", "memwall")]


def test_bench_report_reads_and_combines_saved_runs(tmp_path, capsys):
    import json

    report = _load_report()
    paths = []
    for i, judged in enumerate((3.0, 5.0)):
        paths.append(str(tmp_path / f"r{i}.json"))
        with open(paths[-1], "w", encoding="utf-8") as fh:
            json.dump(_bench_run(judged), fh)
    assert report.main(["--json", *paths, "--markdown", "--save-json", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "runs: 2" in out and "| g | numpy | 2 |" in out and "3-5" in out and "1/2" in out
    assert sorted(os.listdir(tmp_path / "copy")) == ["run0.json", "run1.json"]
    assert report.main(["--json", paths[0]]) == 0
    assert "runs:" not in capsys.readouterr().out  # one run: the plain table
    with pytest.raises(SystemExit):
        report.main(["--repeat", "0"])
    assert "--repeat: expected a run count >= 1, got 0" in capsys.readouterr().err

@njit(parallel=True)
def _run_queue(ntask, workers, hits):
    queue = task_queues(workers)
    for w in prange(workers):
        t, done = next_task(queue, w, workers, ntask, 0)
        while t < ntask:
            hits[t] += 1
            t, done = next_task(queue, w, workers, ntask, done)


@njit
def _take_all(queue, w, workers, ntask):
    """Every task thread w gets when it runs alone (the others never start)."""
    got = []
    t, done = next_task(queue, w, workers, ntask, 0)
    while t < ntask:
        got.append(t)
        t, done = next_task(queue, w, workers, ntask, done)
    return got


@settings(max_examples=40, deadline=None)
@given(ntask=st.integers(0, 300), workers=st.integers(1, 5))
def test_next_task_hands_out_every_task_once(ntask, workers):
    """Whatever the thread count and however the threads interleave, each task runs exactly once."""
    hits = np.zeros(ntask, np.int64)
    _run_queue(ntask, workers, hits)
    assert (hits == 1).all()


@njit(parallel=True)
def _run_chunks(ntask, chunk, workers, hits, runs):
    nw = chunk_workers(ntask, chunk, workers)
    queue = task_queues(max(nw, 1))
    for w in prange(nw):
        ta, tb, done = next_chunk(queue, w, nw, ntask, chunk, 0)
        while ta < ntask:
            runs[ta] = tb - ta  # a run of consecutive tasks starts at ta
            for t in range(ta, tb):
                hits[t] += 1
            ta, tb, done = next_chunk(queue, w, nw, ntask, chunk, done)
    return nw


@settings(max_examples=40, deadline=None)
@given(ntask=st.integers(0, 300), chunk=st.integers(1, 9), workers=st.integers(1, 5))
def test_next_chunk_hands_out_every_task_once_in_aligned_runs(ntask, chunk, workers):
    """Chunks of consecutive tasks: each task once, every run starts on a multiple of chunk and is chunk long
    (the last one shorter), and no more threads start than there are chunks."""
    hits = np.zeros(ntask, np.int64)
    runs = np.zeros(ntask, np.int64)
    nw = _run_chunks(ntask, chunk, workers, hits, runs)
    assert (hits == 1).all()
    assert nw == min(workers, -(-ntask // chunk))
    starts = np.flatnonzero(runs)
    assert list(starts) == list(range(0, ntask, chunk))
    assert all(runs[a] == min(chunk, ntask - a) for a in starts)


def test_next_task_takes_the_own_range_first_then_the_others():
    """A thread streams through its own contiguous range in order, then empties the next ranges (stealing);
    a thread that arrives after that finds nothing left."""
    ntask, workers = 10, 3  # ranges [0, 3), [3, 6), [6, 10)
    queue = task_queues(workers)
    assert list(_take_all(queue, 1, workers, ntask)) == [3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert list(_take_all(queue, 0, workers, ntask)) == []


def test_num_threads_and_call_serial_follow_numba():
    """The cheap thread-count helpers report what numba.get_num_threads() does, and call_serial runs on one
    thread and restores the caller's count, also when the kernel raises."""
    import numba

    before = numba.get_num_threads()
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            assert num_threads() == numba.get_num_threads() == n
            assert call_serial(numba.get_num_threads) == 1
            assert numba.get_num_threads() == n

            def boom():
                raise RuntimeError("kernel failed")

            with pytest.raises(RuntimeError, match="kernel failed"):
                call_serial(boom)
            assert numba.get_num_threads() == n
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_finite_and_positive_checks_find_every_kind_of_bad_entry(dtype):
    """The fast paths (min / max reductions) let nothing through that the element-wise test would catch, and
    the messages still name the first offending entry."""
    for bad, msg in ((np.nan, "finite values, found nan at flat index 3"),
                     (np.inf, "finite values, found inf at flat index 3"),
                     (-np.inf, "finite values, found -inf at flat index 3")):
        x = np.ones((2, 3), dtype)
        x.flat[3] = bad
        with pytest.raises(ValueError, match=f"x: expected {msg}"):
            v.check_finite(x, "x")
        with pytest.raises(ValueError, match=f"s: expected {msg}"):
            v.check_positive(x, "s")
    x = np.ones(5, dtype)
    x[2] = 0
    with pytest.raises(ValueError, match="s: expected values > 0, found 0.0 at flat index 2"):
        v.check_positive(x, "s")
    x[2] = -1
    v.check_finite(x, "x")
    with pytest.raises(ValueError, match="s: expected values > 0, found -1.0 at flat index 2"):
        v.check_positive(x, "s")
    v.check_finite(np.array([], dtype), "x")
    v.check_positive(np.full((2, 2), 3, dtype), "s")
    v.check_finite(np.array([-128, 127], np.int8), "q")  # integers are always finite


def test_as_array_fast_path_returns_the_same_object_only_when_nothing_is_to_do():
    x = np.zeros((3, 4), np.float32)
    assert v.as_array(x, "x", dtype=np.float32, ndim=2) is x
    assert v.as_array(x, "x", dtype=np.float32, ndim=(1, 2)) is x
    assert v.as_array(x, "x") is x
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        v.as_array(x, "x", dtype=np.float64)
    with pytest.raises(TypeError, match="x: expected dtype int8 or uint8"):
        v.as_array(x, "x", dtype=(np.int8, np.uint8))
    with pytest.raises(ValueError, match="x: expected a 1-D array"):
        v.as_array(x, "x", dtype=np.float32, ndim=1)
    sub = np.zeros((3, 4), np.float32).view(np.ndarray)[:, :2]
    out = v.as_array(sub, "x", dtype=np.float32, ndim=2)
    assert out is not sub and out.flags.c_contiguous


def test_memwall_bench_hands_its_options_to_the_report(monkeypatch):
    """`memwall bench` runs benchmarks/report.py of the checkout with the selection, the run count and the
    thread count (the benchmarks themselves are not run here)."""
    from memwall.simulator.cli import main

    seen = {}

    def fake_call(cmd, env=None):
        seen.update(cmd=cmd, env=env)
        return 0

    monkeypatch.setattr(subprocess, "call", fake_call)
    assert main(["bench", "-k", "gemm", "--repeat", "3", "--threads", "2", "--markdown"]) == 0
    assert seen["cmd"][1].endswith(os.path.join("benchmarks", "report.py"))
    assert seen["cmd"][2:] == ["-k", "gemm", "--markdown", "--repeat", "3"]
    assert seen["env"]["MEMWALL_BENCH_THREADS"] == "2"
    assert main(["bench"]) == 0 and seen["cmd"][2:] == []

"""Issue 23: sweeps spread over workers (local processes, a real local Ray cluster) with workers and drivers
killed by SIGKILL mid-run: no finished point lost, none stored twice, the same points as one process measures;
every point attributable to its worker and GPU. Issue 25.1: two runs into one folder at once (real processes)."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cli.main import profiler_main as main
from profiler.errors import UserError
from profiler.executors import Job, LocalExecutor
from profiler.locks import DirectoryLock
from profiler.sweeps import ResultStore, analysis
from profiler.sweeps.spec import point_key

import executor_jobs

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
FAST = ["--warmup-ms", "0", "--rep-ms", "1", "--min-reps", "1", "--max-reps", "3", "--no-progress", "--device", "cpu",
        "--no-report"]
# 160 small mm points at ~30 ms each: long enough to kill something in the middle of the run
SHAPE = ["mm", "--m", "64", "--n", "64", "--k", "8:1280:8"]
SLOW_POINTS = ["--warmup-ms", "0", "--rep-ms", "25", "--min-reps", "3", "--no-progress", "--device", "cpu",
               "--no-report"]


def point_lines(out: Path) -> list[dict]:
    """Every point record as stored, line by line (not de-duplicated: a doubled point shows twice)."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r["record"] == "point"]


def run_records(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [r for r in ResultStore(out).runs()]


@pytest.fixture(scope="module")
def single_process_keys(tmp_path_factory) -> set[str]:
    """The same points measured the old way: one process, inline (once for every test that compares with it)."""
    reference = tmp_path_factory.mktemp("reference")
    assert main(["sweep", *SHAPE, "--out", str(reference), *FAST]) == 0
    keys = [point_key(r) for r in point_lines(reference)]
    assert len(keys) == len(set(keys)) == 160
    return set(keys)


def start_sweep(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "profiler", "sweep", *SHAPE, "--out", str(out), *SLOW_POINTS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout_s: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def points_so_far(out: Path) -> int:
    path = out / "results.jsonl"
    return path.read_text().count('"record":"point"') if path.exists() else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_a_worker_mid_run(out: Path, driver: subprocess.Popen, workers: int) -> int:
    """Wait until every worker has measured and a few points are in, then SIGKILL one worker; its pid."""
    wait_for(lambda: len(run_records(out)) >= workers and points_so_far(out) >= 12 or driver.poll() is not None,
             what="the workers' first points")
    assert driver.poll() is None, "the sweep ended before a worker could be killed: make it longer"
    victim = run_records(out)[-1]["worker_pid"]
    os.kill(victim, signal.SIGKILL)
    return victim


def check_nothing_lost_nothing_doubled(out: Path, expected: set[str], victim: int, stderr: str) -> None:
    points = point_lines(out)
    counts = Counter(point_key(p) for p in points)
    assert set(counts) == expected  # the same points as one process measured
    assert max(counts.values()) == 1  # each exactly once
    assert all(p["status"] == "ok" for p in points)
    requeued = re.search(r"\(pid (\d+)\) .*while running (\{.*?\}); that item is queued again", stderr)
    assert requeued and int(requeued.group(1)) == victim, stderr
    again = [p for p in points if point_key(p) == requeued.group(2)]
    assert len(again) == 1 and again[0]["worker_pid"] != victim  # measured again, by another process
    by_victim = [p for p in points if p["worker_pid"] == victim]
    assert by_victim  # what it finished before it died is kept


# ---- the executor API on its own (any job, not only sweeps) ------------------------------------------------------
@pytest.fixture
def job_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the workers import executor_jobs by name
    marks = tmp_path / "marks"
    marks.mkdir()
    return Job(executor_jobs.setup, executor_jobs.square, {"marks": str(marks)})


def test_local_workers_run_each_item_once_and_requeue_the_item_of_a_worker_that_dies(job_env):
    items = [(f"n={n}", (n, "die-once" if n == 7 else "ok")) for n in range(40)]
    results, workers, notices = {}, [], []
    with LocalExecutor(2, device_type="cpu").start(job_env, on_notice=notices.append) as pool:
        assert sorted(w["worker"] for w in pool.workers) == ["local-0", "local-1"]
        report = pool.run(items, lambda key, result, worker: results.setdefault(key, []).append(result),
                          on_worker=workers.append)
    assert {k: [r["square"] for r in v] for k, v in results.items()} == {f"n={n}": [n * n] for n in range(40)}
    assert report.done == 40 and report.worker_deaths == 1 and not report.lost
    assert len(workers) == 3  # two at the start, one replacement after the SIGKILL
    assert any("killed by SIGKILL while running n=7; that item is queued again" in n for n in notices), notices


def test_an_item_that_kills_every_worker_is_given_up_after_three_attempts(job_env):
    items = [("bad", (0, "die-always")), *[(f"n={n}", (n, "ok")) for n in range(1, 6)]]
    results, lost = {}, []
    with LocalExecutor(2, device_type="cpu").start(job_env) as pool:
        report = pool.run(items, lambda key, result, worker: results.setdefault(key, result),
                          on_lost=lambda key, why: lost.append((key, why)))
    assert sorted(results) == [f"n={n}" for n in range(1, 6)]
    assert [key for key, _ in lost] == ["bad"] and "died 3 times" in lost[0][1]
    assert report.lost == ["bad"] and report.worker_deaths == 3


def test_a_user_error_in_a_workers_setup_reaches_the_driver_as_a_user_error(job_env):
    job = Job(executor_jobs.setup_refuses, executor_jobs.square, None)
    with pytest.raises(UserError, match="this worker sees no GPU"):
        LocalExecutor(1, device_type="cpu").start(job)


def test_local_executor_gives_each_gpu_one_worker_at_most(monkeypatch):
    with pytest.raises(UserError, match="--workers: must be at least 1"):
        LocalExecutor(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="no GPU is visible"):
        LocalExecutor(device_type="cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [gpu for gpu, _ in LocalExecutor().slots] == ["2", "3"]  # one worker per visible GPU, pinned to it
    with pytest.raises(UserError, match="3 asked for but 2 GPU"):
        LocalExecutor(3)


@pytest.mark.parametrize("flags, message", [
    (["--workers", "2"], "error: --workers: needs --executor local or ray (inline runs in this one process)"),
    (["--executor", "local", "--ray-address", "auto"], "error: --ray-address: needs --executor ray"),
    (["--executor", "local", "--workers", "0"], "error: --workers: must be at least 1, got 0"),
])
def test_executor_flags_that_do_not_fit_are_one_line_errors(tmp_path, capsys, flags, message):
    assert main(["sweep", *SHAPE, "--out", str(tmp_path), *FAST, *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (tmp_path / "results.jsonl").exists()


# ---- sweeps over local workers -------------------------------------------------------------------------------
@pytest.mark.slow  # a driver, two workers and a reference run; the requeue itself is the executor API test's above
def test_local_sweep_with_a_worker_killed_mid_run_equals_a_single_process_run(tmp_path, single_process_keys):
    expected = single_process_keys
    out = tmp_path / "local"
    driver = start_sweep(out, "--executor", "local", "--workers", "2")
    victim = kill_a_worker_mid_run(out, driver, workers=2)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    check_nothing_lost_nothing_doubled(out, expected, victim, stderr)
    points = point_lines(out)
    assert {p["worker"] for p in points} == {"local-0", "local-1"}
    assert all(p["gpu"].startswith("cpu:") and p["gpu_index"] is None and "sm_clock_mhz" in p for p in points)
    assert {r["worker_pid"] for r in run_records(out)} == {p["worker_pid"] for p in points}  # each worker's provenance


@pytest.mark.slow  # a driver and two workers started twice, and a reference run
def test_a_killed_driver_takes_its_workers_with_it_and_the_next_run_resumes(tmp_path, single_process_keys):
    expected = single_process_keys
    out = tmp_path / "local"
    driver = start_sweep(out, "--executor", "local", "--workers", "2")
    wait_for(lambda: len(run_records(out)) >= 2 and points_so_far(out) >= 12, what="the workers' first points")
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    workers = {r["worker_pid"] for r in run_records(out)}
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout_s=30, what="the orphaned workers to leave")
    kept = len(point_lines(out))
    assert 12 <= kept < 160
    assert main(["sweep", *SHAPE, "--out", str(out), *FAST, "--executor", "local", "--workers", "2"]) == 0
    counts = Counter(point_key(p) for p in point_lines(out))
    assert set(counts) == expected and max(counts.values()) == 1


# ---- sweeps over a real Ray cluster: a head and two worker nodes -----------------------------------------------
@pytest.fixture
def ray_cluster(monkeypatch):
    pytest.importorskip("ray", reason='Ray is optional: pip install -e ".[cluster]"')
    from ray.cluster_utils import Cluster

    # the nodes' workers import this checkout (the project may be installed from another one)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_ray_sweep_with_an_actor_killed_mid_run_equals_a_single_process_run(tmp_path, ray_cluster, single_process_keys):
    expected = single_process_keys
    out = tmp_path / "ray"
    driver = start_sweep(out, "--executor", "ray", "--ray-address", ray_cluster.address, "--workers", "2")
    victim = kill_a_worker_mid_run(out, driver, workers=2)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    check_nothing_lost_nothing_doubled(out, expected, victim, stderr)
    assert {p["worker"] for p in point_lines(out)} == {"ray-0", "ray-1"}


# ---- one writer per directory (issue 25, item 1) ---------------------------------------------------------------
def test_two_sweeps_into_one_folder_at_once_store_every_point_once(tmp_path):
    out = tmp_path / "shared"
    first, second = start_sweep(out), start_sweep(out)
    (_, err1), (_, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
    assert first.returncode == second.returncode == 0, (err1, err2)
    counts = Counter(point_key(p) for p in point_lines(out))
    assert len(counts) == 160 and max(counts.values()) == 1
    waited = [err for err in (err1, err2) if "is in use by sweep mm" in err]
    assert len(waited) == 1 and "waiting for it to finish" in waited[0]
    assert "160 already in" in (err1 if waited[0] is err1 else err2)  # it waited, then measured nothing again


TINY = "hidden_size: 64\nnum_attention_heads: 2\nnum_layers: 2\nseq_length: 32\nmicro_batch_size: 1\nvocab_size: 500\n"


def start_layer(config: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "profiler", "layer", "--config", str(config), "--out", str(out), "--device", "cpu",
           "--iters", "2", "--warmup", "1", "--no-floor"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_layer_runs_with_different_configs_into_one_folder_at_once_keep_both(tmp_path):
    (tmp_path / "small.yaml").write_text(TINY)
    (tmp_path / "wide.yaml").write_text(TINY.replace("hidden_size: 64", "hidden_size: 128"))
    out = tmp_path / "run"
    runs = [start_layer(tmp_path / "small.yaml", out), start_layer(tmp_path / "wide.yaml", out)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    names = sorted(e["name"] for e in json.loads((out / "run.json").read_text())["configs"])
    assert names == ["small", "wide"]
    import pandas as pd

    assert set(pd.read_csv(out / "components.csv")["config"]) == {"small", "wide"}


@pytest.mark.slow
def test_two_identical_layer_runs_at_once_both_end_cleanly_with_one_config(tmp_path):
    (tmp_path / "small.yaml").write_text(TINY)
    out = tmp_path / "run"
    runs = [start_layer(tmp_path / "small.yaml", out) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert not any("Traceback" in err for _, err in outputs)
    assert [e["name"] for e in json.loads((out / "run.json").read_text())["configs"]] == ["small"]
    assert sum("already profiled" in out_ for out_, _ in outputs) == 1  # the second waited, then kept it


def test_a_lock_held_by_another_process_is_named_and_refused_without_waiting(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from profiler.locks import DirectoryLock; "
                               f"DirectoryLock({str(tmp_path)!r}, what='sweep mm').acquire(); print('held', "
                               "flush=True); time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"is in use by sweep mm \(pid {holder.pid} on "):
            DirectoryLock(tmp_path, what="layer run", wait=False).acquire()
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(tmp_path, what="layer run", wait=False) as lock:  # the OS dropped the dead holder's lock
        assert lock.held


def test_a_lock_whose_holder_line_cannot_be_written_is_let_go_so_this_process_can_lock_again(tmp_path, monkeypatch):
    """A full disk at the start: the OSError names the lock file, and the lock is not kept by a leaked descriptor
    (flock belongs to the open file: the next run in this same process would wait for itself for ever)."""
    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(OSError) as caught:
        DirectoryLock(tmp_path, what="layer run").acquire()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / ".lock")
    monkeypatch.undo()
    with DirectoryLock(tmp_path, what="layer run", wait=False) as lock:
        assert lock.held


# ---- attribution in the report (issue 23, item 3) --------------------------------------------------------------
def test_points_from_two_gpu_kinds_are_never_one_curve_and_each_curve_names_its_gpu():
    from reports.sweep_report import build_sections

    records = [{"record": "point", "kind": "mm", "component": "mm", "batch": 1, "m": 64, "n": 64, "k": k,
                "dtype": "bfloat16", "gpu": gpu, "tag": "", "x_name": "k", "x": k, "flops": 2 * 64 * 64 * k,
                "status": "ok", "median_ms": 0.01, "tflops": tflops, "repeats": 3}
               for gpu, tflops in (("NVIDIA H100 80GB HBM3", 500.0), ("NVIDIA A100-SXM4-80GB", 200.0))
               for k in (64, 128, 192)]
    df = analysis.points_frame(records)
    assert df.groupby("series")["gpu"].nunique().max() == 1
    sections = build_sections(df, [])
    mm = next(s for s in sections if s.title.startswith("GEMM"))
    traces = [t for fig in mm.figures for t in fig["data"] if t.get("mode") == "lines+markers"]
    assert sorted(t["name"] for t in traces) == ["m=64, n=64, NVIDIA A100-SXM4-80GB", "m=64, n=64, NVIDIA H100 80GB HBM3"]
    assert all(len(t["x"]) == 3 for t in traces)

"""Sweeps (issue 4) on CPU with small shapes: resume, kill -9, out-of-memory, Table II shapes, FLOPs,
wave predictions, one-line errors, the report."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cli.main import profiler_main as main
from profiler.sweeps import ResultStore, SweepSpec, expand, parse_values, run_sweep
from profiler.sweeps import analysis, operands, runner
from profiler.sweeps.spec import Budget, point_key

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--warmup-ms", "0", "--rep-ms", "1", "--min-reps", "1", "--max-reps", "3", "--no-progress", "--device", "cpu"]


def sweep(tmp_path, *args) -> int:
    return main(["sweep", *args, "--out", str(tmp_path), *FAST])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---- resume ------------------------------------------------------------------------------------------
def test_second_identical_run_adds_nothing_and_measures_nothing(tmp_path, monkeypatch):
    args = ["qkv", "--heads", "4", "--h", "32:128:32", "--b", "1", "--s", "16", "--no-report"]
    assert sweep(tmp_path, *args) == 0
    before = lines(tmp_path / "results.jsonl")
    assert sum('"record":"point"' in line for line in before) == 4

    def must_not_measure(*_a, **_k):
        raise AssertionError("a resumed sweep measured a point that was already in the file")

    monkeypatch.setattr(runner, "measure", must_not_measure)
    assert sweep(tmp_path, *args) == 0
    assert lines(tmp_path / "results.jsonl") == before


def test_extended_range_measures_only_the_new_points(tmp_path):
    sweep(tmp_path, "mlp-up", "--heads", "2", "--h", "16,32", "--b", "1", "--s", "8", "--no-report")
    sweep(tmp_path, "mlp-up", "--heads", "2", "--h", "16:64:16", "--b", "1", "--s", "8", "--no-report")
    points = [json.loads(line) for line in lines(tmp_path / "results.jsonl") if '"point"' in line]
    assert sorted(p["h"] for p in points) == [16, 32, 48, 64]


def test_dtype_and_tag_are_part_of_a_points_identity(tmp_path):
    base = ["mm", "--m", "8", "--n", "8", "--k", "8", "--no-report"]
    sweep(tmp_path, *base)
    sweep(tmp_path, *base, "--dtype", "bfloat16")
    sweep(tmp_path, *base, "--tag", "second")
    assert len(ResultStore(tmp_path).points()) == 3


# ---- kill -9 and torn lines ---------------------------------------------------------------------------
def test_sweep_killed_with_sigkill_loads_and_resumes_without_duplicates(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "profiler", "sweep", "mm", "--m", "64", "--n", "64", "--k", "8:800:8",
           "--out", str(out), "--device", "cpu", "--warmup-ms", "2", "--rep-ms", "25", "--min-reps", "3",
           "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not results.exists() or len(lines(results)) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    survived = ResultStore(out).points()
    assert 3 <= len(survived) < 100  # killed mid-run, the measured points kept
    assert main(["sweep", "mm", "--m", "64", "--n", "64", "--k", "8:800:8", "--out", str(out), *FAST,
                 "--no-report"]) == 0
    keys = [point_key(json.loads(line)) for line in lines(results) if '"record":"point"' in line]
    assert len(keys) == 100 and len(set(keys)) == 100


def test_torn_last_line_is_skipped_on_load_and_cut_before_the_next_append(tmp_path):
    args = ["mm", "--m", "8", "--n", "8", "--k", "8,16", "--no-report"]
    sweep(tmp_path, *args)
    results = tmp_path / "results.jsonl"
    with results.open("a") as f:
        f.write('{"record":"point","kind":"mm","compo')  # what a kill -9 mid-write leaves
    store = ResultStore(tmp_path)
    assert len(store.points()) == 2 and store.records()[1] == 1
    sweep(tmp_path, "mm", "--m", "8", "--n", "8", "--k", "8,16,24", "--no-report")
    for line in lines(results):
        json.loads(line)  # every line whole again
    assert sorted(p["k"] for p in ResultStore(tmp_path).points()) == [8, 16, 24]


def test_a_whole_last_record_without_its_newline_is_kept_and_ended_before_the_next_append(tmp_path):
    """A full disk can refuse only a record's newline: load counts the record, so the append must keep it
    (cutting it, as a torn line is cut, lost a point the resumed run had counted as already in)."""
    store = ResultStore(tmp_path / "results.jsonl")
    store.append({"record": "point", "kind": "mm", "m": 8, "n": 8, "k": 8, "status": "ok"})
    with store.path.open("a") as f:
        f.write(json.dumps({"record": "point", "kind": "mm", "m": 8, "n": 8, "k": 16, "status": "ok"}))
    assert [p["k"] for p in store.points()] == [8, 16]
    store.append({"record": "point", "kind": "mm", "m": 8, "n": 8, "k": 24, "status": "ok"})
    assert [json.loads(line)["k"] for line in lines(store.path)] == [8, 16, 24]


# ---- out of memory ------------------------------------------------------------------------------------
def test_real_cpu_allocation_failure_is_recorded_as_oom_and_the_sweep_continues(tmp_path):
    # k = 2^40: the (64, k) float32 input is 256 TiB, which the CPU allocator refuses: a real OOM, not a mock
    assert sweep(tmp_path, "mm", "--m", "64", "--n", "64", "--k", f"16,{2**40},32") == 0
    by_k = {p["k"]: p for p in ResultStore(tmp_path).points()}
    assert [by_k[k]["status"] for k in (16, 2**40, 32)] == ["ok", "oom", "ok"]
    assert "can't allocate memory" in by_k[2**40]["error"] and by_k[2**40]["tflops"] is None
    assert "oom" in (tmp_path / "report.html").read_text()


def test_cuda_oom_exception_class_is_recorded_as_oom_injected(tmp_path, monkeypatch):
    # INJECTED: a CPU cannot raise torch.OutOfMemoryError (the CUDA allocator's error), so this test makes
    # operands.build raise it for one shape to check the class the GPU raises is handled the same way
    real_build = operands.build

    def build(point, dtype, device):
        if point.k == 24:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (injected by test)")
        return real_build(point, dtype, device)

    monkeypatch.setattr(operands, "build", build)
    sweep(tmp_path, "mm", "--m", "8", "--n", "8", "--k", "8,24,40", "--no-report")
    assert {p["k"]: p["status"] for p in ResultStore(tmp_path).points()} == {8: "ok", 24: "oom", 40: "ok"}
    monkeypatch.setattr(operands, "build", real_build)
    sweep(tmp_path, "mm", "--m", "8", "--n", "8", "--k", "8,24,40", "--no-report", "--retry-failed")
    assert {p["k"]: p["status"] for p in ResultStore(tmp_path).points()} == {8: "ok", 24: "ok", 40: "ok"}


# ---- shapes and FLOPs ---------------------------------------------------------------------------------
B, S, H, A, T, V = 2, 16, 64, 8, 2, 96


def table_ii(kind):
    """(batch, m, n, k) of each kind by hand from the paper's Table II, per GPU under t-way TP."""
    return {
        "qkv": (1, B * S, 3 * H // T, H),
        "score": (B * A // T, S, S, H // A),
        "aov": (B * A // T, S, H // A, S),
        "out-proj": (1, B * S, H, H // T),
        "mlp-up": (1, B * S, 4 * H // T, H),
        "mlp-down": (1, B * S, H, 4 * H // T),
        "logits": (1, B * S, V // T, H),
    }[kind]


def point_of(kind):
    extra = {"v": (V,)} if kind == "logits" else {}
    return expand(SweepSpec(kind=kind, h=(H,), heads=(A,), t=(T,), b=(B,), s=(S,), dtype="float32", **extra))[0]


@pytest.mark.parametrize("kind", ["qkv", "score", "aov", "out-proj", "mlp-up", "mlp-down", "logits"])
def test_transformer_kinds_have_table_ii_shapes(kind):
    p = point_of(kind)
    assert (p.batch, p.m, p.n, p.k) == table_ii(kind)
    out = operands.build(p, torch.float32, torch.device("cpu"))()
    assert out.shape == ((p.m, p.n) if p.batch == 1 else (p.batch, p.m, p.n))


@pytest.mark.parametrize("kind", ["qkv", "score", "aov", "out-proj", "mlp-up", "mlp-down", "logits"])
def test_flops_match_torch_flop_counter_on_the_actual_operation(kind):
    p = point_of(kind)
    fn = operands.build(p, torch.float32, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        fn()
    assert p.flops == counter.get_total_flops() == 2 * math.prod(table_ii(kind))


def test_mm_and_bmm_flops_match_flop_counter():
    for spec in (SweepSpec(kind="mm", m=(24,), n=(40,), k=(56,), dtype="float32"),
                 SweepSpec(kind="bmm", batch=(3,), m=(24,), n=(40,), k=(56,), dtype="float32")):
        p = expand(spec)[0]
        with FlopCounterMode(display=False) as counter:
            operands.build(p, torch.float32, torch.device("cpu"))()
        assert p.flops == counter.get_total_flops()


def test_swiglu_points_are_up_and_down_with_the_intermediate_size():
    up, down = expand(SweepSpec(kind="swiglu", h=(64,), ffn=(176,), t=(1,), b=(2,), s=(8,), dtype="float32"))
    assert (up.component, up.m, up.n, up.k) == ("mlp_up", 16, 176, 64)
    assert (down.component, down.m, down.n, down.k) == ("mlp_down", 16, 64, 176)


def test_flash_flops_match_flop_counter_on_sdpa_math_path():
    # the flash kernel needs CUDA; on CPU the same attention through SDPA's math backend is counted
    p = expand(SweepSpec(kind="flash", h=(64,), heads=(4,), b=(2,), s=(32,), dtype="bfloat16"))[0]
    q, k, v = (torch.randn(p.b, p.batch // p.b, p.s, p.k) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert p.flops == counter.get_total_flops() == 4 * 2 * 4 * 32 * 32 * 16


def test_fixed_head_dim_sweep_derives_a_from_h():
    points = expand(SweepSpec(kind="score", h=(64, 128), head_dim=(16,), b=(1,), s=(8,), dtype="float32"))
    assert [(p.h, p.a, p.head_dim) for p in points] == [(64, 4, 16), (128, 8, 16)]


# ---- predictions --------------------------------------------------------------------------------------
def test_wave_predictions_for_fig_5b_shapes_on_132_sms(tmp_path):
    # (27648, 4096) x (4096, n): 216 row tiles of 128; n = 256 -> 216 tiles -> 2 waves, the second 84/132 full
    spec = SweepSpec(kind="mm", m=(27648,), n=(256, 512), k=(4096,), dtype="float32")
    p256, p512 = expand(spec)
    q = runner.quantization_fields(p256, 132)
    assert (q["tiles_128x256"], q["waves_128x256"], q["last_wave_fill_128x256"]) == (216, 2, round(84 / 132, 4))
    assert (q["tiles_256x128"], q["waves_256x128"]) == (108 * 2, 2)
    q = runner.quantization_fields(p512, 132)
    assert (q["tiles_128x256"], q["waves_128x256"], q["last_wave_fill_128x256"]) == (432, 4, round(36 / 132, 4))
    assert q["wave_efficiency_128x256"] == round(432 / (4 * 132), 4)


def test_record_carries_head_dim_power_of_two_and_predictions(tmp_path):
    sweep(tmp_path, "aov", "--heads", "4", "--h", "24,32", "--b", "1", "--s", "8", "--sms", "132", "--no-report")
    by_h = {p["h"]: p for p in ResultStore(tmp_path).points()}
    assert (by_h[24]["head_dim"], by_h[24]["head_dim_pow2"]) == (6, 2)
    assert (by_h[32]["head_dim"], by_h[32]["head_dim_pow2"]) == (8, 8)
    assert by_h[24]["tiles_128x256"] == 4 and by_h[24]["waves_128x256"] == 1  # batch 4 of one 8x6 tile each


def test_dips_are_explained_by_a_new_wave():
    recs = [{"record": "point", "kind": "mm", "component": "mm", "batch": 1, "m": 27648, "n": n, "k": 4096,
             "dtype": "bfloat16", "gpu": "H100", "tag": "", "x_name": "n", "x": n, "status": "ok", "tflops": tf,
             "waves_128x256": w, "last_wave_fill_128x256": f}
            for n, tf, w, f in [(3840, 600.0, 25, 0.55), (4096, 640.0, 27, 0.18), (4352, 560.0, 29, 0.82)]]
    dips = analysis.dips(analysis.points_frame(recs))
    assert list(dips["x"]) == [4352] and dips["explanation"][0].startswith("new wave: 27 -> 29")


# ---- input errors: one line, exit 2 -------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["qkv", "--heads", "32", "--h", "100"], "--h: 100 is not divisible by a=32"),
    (["sccore", "--h", "64"], "did you mean 'score'"),
    (["mm", "--m", "64", "--n", "64", "--k", "512:256:64"], "stop 256 is below start 512"),
    (["flash", "--heads", "4", "--h", "64"], "needs a CUDA GPU"),
    (["qkv", "--heads", "4"], "--h: required for sweep qkv"),
    (["score", "--heads", "4", "--head-dim", "8", "--h", "64"], "give one of them"),
    (["mm", "--m", "x", "--n", "1", "--k", "1"], "--m: 'x' is not a whole number"),
    (["report"], "name one or more results directories"),
    (["mm", "--m", "64", "--n", "64", "--k", "64", "--keep-busy-ms", "-1"], "--keep-busy-ms: must be >= 0"),
    (["mm", "--m", "64", "--n", "64", "--k", "64", "--busy-ratio", "-0.5"], "--busy-ratio: must be >= 0"),
])
def test_bad_input_prints_one_line_and_exits_2(tmp_path, capsys, args, expected):
    assert main(["sweep", *args, "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err


def test_parse_values_ranges_include_stop_and_mix_with_lists():
    assert parse_values("32,64:256:64,64", "--h") == (32, 64, 128, 192, 256)


# ---- report -------------------------------------------------------------------------------------------
def test_report_renders_plots_for_each_kind_and_combines_directories(tmp_path):
    score, logits = tmp_path / "score", tmp_path / "logits"
    assert sweep(score, "score", "--heads", "4", "--h", "4:64:4", "--b", "1", "--s", "16", "--sms", "132") == 0
    assert sweep(logits, "logits", "--h", "32", "--v", "60:132:4", "--b", "1", "--s", "16") == 0
    page = (score / "report.html").read_text()
    assert 'id="fig-1-0"' in page and "largest power of 2 dividing h/a" in page and "waves on 132 SMs" in page
    assert main(["sweep", "report", str(score), str(logits), "--out", str(tmp_path / "all")]) == 0
    page = (tmp_path / "all" / "report.html").read_text()
    assert "Attention key-query score" in page and "v multiple of 64" in page and 'id="fig-2-0"' in page
    import pandas as pd
    df = pd.read_csv(tmp_path / "all" / "results.csv")
    assert len(df) == 16 + 19 and set(df["status"]) == {"ok"}


def test_library_api_runs_a_sweep_without_the_cli(tmp_path):
    from profiler.sweeps import Budget
    spec = SweepSpec(kind="out-proj", h=(32, 64), heads=(4,), b=(1,), s=(8,), dtype="float32",
                     budget=Budget(0, 1, 1, 3))
    first = run_sweep(spec, tmp_path, device="cpu", progress=False)
    again = run_sweep(spec, tmp_path, device="cpu", progress=False)
    assert (first.planned, first.measured, again.measured, again.skipped) == (2, 2, 0, 2)
    assert all(p["status"] == "ok" and p["tflops"] > 0 for p in ResultStore(tmp_path).points())


# ---- the sustained-power policy: keep-busy around every point -------------------------------------------
def test_measure_queues_keep_busy_before_the_point_and_after_it():
    """The keep-busy chain runs before the point's first call (so its warm-up starts under load) and again
    after its last repetition (covering the host's record write); a point without it is timed the same way."""
    events = []
    spec = SweepSpec(kind="mm", m=(32,), n=(32,), k=(32,), dtype="float32",
                     budget=Budget(warmup_ms=0, rep_ms=1, min_reps=2, max_reps=3))
    point = expand(spec)[0]
    real_build = operands.build

    def build(*args):
        fn = real_build(*args)
        return lambda: (events.append("call"), fn())[1]

    try:
        operands.build = build
        measured = runner.measure(point, spec, torch.device("cpu"), keep_busy=lambda: events.append("busy"))
    finally:
        operands.build = real_build
    assert measured["status"] == "ok"
    assert events[0] == "busy" and events[1] == "call"  # under load before the first call ...
    assert events[-1] == "busy" and events[-2] == "call"  # ... and again once the last repetition is queued
    assert events.count("busy") == 2


def test_keep_busy_is_a_no_op_without_a_gpu_and_sized_to_its_budget_on_one():
    from profiler.timing import KeepBusy

    idle = KeepBusy("cpu", 10.0)
    assert idle.calls == 0
    idle()  # nothing to queue on a CPU
    if torch.cuda.is_available():
        busy = KeepBusy("cuda", 10.0)
        assert busy.calls >= 1

"""Every self-check of the profiler can fail: each is shown failing on a doctored input, and passing on a
sound one. The tolerances live in profiler/checks.py; a failed check reaches the CLI, run.json and the report."""

import json

import pandas as pd

from models import load_config
from profiler import checks as C
from profiler.flops import check_rows, component_flops, counted_flops
from profiler.telemetry import Sample, compare_phases, summarize_phases
from profiler.timing import STABLE_TOLERANCE, bench_detailed, is_stable
from profiler.trace import StableSchedule
from torch.profiler import ProfilerAction


def test_shapes_check_fails_on_a_mismatch():
    rows = [{"what": "qkv (batch, m, k, n)", "expected": "(1, 8192, 2560, 7680)", "observed": "(1, 8192, 2560, 7680)", "ok": True},
            {"what": "seq", "expected": "2048", "observed": "1024", "ok": False}]
    assert C.shapes_check(rows[:1]).status == "pass"
    failed = C.shapes_check(rows)
    assert failed.status == "fail" and "seq expected 2048, traced 1024" in failed.observed


def test_flops_check_fails_when_the_formula_ignores_the_fused_backwards_recompute():
    """The profiler's old formula (flash backward = 2x its forward) against torch's count of the op that ran."""
    cfg = load_config("pythia-70m", seq_length=32, micro_batch_size=2, attention="sdpa", dtype="float32")
    counted = counted_flops(cfg, include_logits=False, backward=True)
    assert C.flops_check(check_rows(cfg, counted, include_logits=False, backward=True)).status == "pass"
    old = component_flops(cfg, include_logits=False, backward=True, convention="counted", fused_backward=False)
    rows = [{"what": "backward total", "formula": sum(f for (p, _, _), f in old.items() if p == "backward"),
             "counted": counted["backward_total"]}]
    failed = C.flops_check(rows)
    assert failed.status == "fail" and "backward total" in failed.observed


def test_coverage_check_fails_below_its_tolerance():
    assert C.coverage_check(1.0, []).status == "pass"
    assert C.coverage_check(1 - C.COVERAGE_TOLERANCE / 2, []).status == "pass"
    assert C.coverage_check(1 - 2 * C.COVERAGE_TOLERANCE, [{"name": "k"}]).status == "fail"


def test_trace_drift_check_fails_on_a_trace_that_was_still_warming_up():
    # the paper-large-flash trace of the last evidence drifted 22.8 -> 19.5 ms across its 10 steps
    drifting = [22800, 22400, 21900, 21300, 20800, 20400, 20000, 19800, 19600, 19500]
    assert C.trace_drift_check(drifting).status == "fail"
    assert C.trace_drift_check([19500 + (i % 3) for i in range(10)]).status == "pass"
    assert C.trace_drift_check([1.0, 1.0]).status == "skipped"


def test_trace_drift_is_judged_over_what_the_sm_clock_can_explain():
    # gpt3-2.7b (eager) at the H200's power cap: kernels 3837 -> 3643 us (-5.1%) while the clock rose
    busy = [3837.0] * 5 + [3643.0] * 5
    following = [1650.0] * 5 + [1650.0 * 3837 / 3643] * 5  # a compute-bound layer following its clock: passes
    result = C.trace_drift_check(busy, following)
    assert result.status == "pass" and "in proportion" in result.observed
    assert C.trace_drift_check(busy, [1650.0] * 10).status == "fail"  # a steady clock: the kernels drifted
    assert C.trace_drift_check(busy).status == "fail"  # no clock sampled: judged as measured
    # a clock that moved the other way explains nothing
    assert C.trace_drift_check(busy, [1650.0] * 5 + [1560.0] * 5).status == "fail"
    # pythia-1b (README run): +0.2% of kernel time while the clock rose 3.3%: a memory-bound share ignores the
    # clock, so a flat time is within what the clock explains (the proportional reading, +3.5%, is one end)
    assert C.trace_drift_check([387.8] * 5 + [388.6] * 5, [1830.0] * 5 + [1890.0] * 5).status == "pass"
    # a drift beyond even the proportional reading fails
    assert C.trace_drift_check([3837.0] * 5 + [3400.0] * 5, following).status == "fail"
    # rounds without a sample (shorter than the sampling interval) are left out of the halves' clocks
    assert C.trace_drift_check(busy, [None, 1650.0, None, 1650.0, 1650.0] + [following[-1], None] * 2 + [None]
                               ).status == "pass"


def test_window_clocks_take_the_samples_inside_each_round():
    from profiler.telemetry import Sample, window_clocks

    samples = [Sample("trace", t, clock, 690.0) for t, clock in ((0.005, 1600), (0.012, 1620), (0.031, 1700))]
    assert window_clocks(samples, [(0.0, 0.015), (0.02, 0.025), (0.03, 0.04)]) == [1610.0, None, 1700.0]


def test_warmup_check_fails_when_a_phase_never_settled():
    assert C.warmup_check({"latency": {"stable": True}, "trace": {"stable": True}}).status == "pass"
    failed = C.warmup_check({"latency": {"stable": True}, "floor:mlp_up": {"stable": False}})
    assert failed.status == "fail" and "floor:mlp_up" in failed.observed


def test_trace_vs_events_check_fails_when_the_instruments_disagree_even_for_a_launch_bound_layer():
    assert C.trace_vs_events_check(102.0, 100.0).status == "pass"
    assert C.trace_vs_events_check(112.0, 100.0).status == "fail"
    # a measurement that itself wanders by 10% (p10-p90) earns that much more allowance
    assert C.trace_vs_events_check(112.0, 100.0, 0.10).status == "pass"
    # GPU-side against GPU-side: nothing is skipped, a launch-bound layer's graph replays included
    assert C.trace_vs_events_check(300.0, 100.0).status == "fail"


def test_graph_kernels_check_fails_on_a_replay_that_ran_other_kernels():
    assert C.graph_kernels_check([]).status == "pass"
    bad = [{"unit": "layer", "round": 2, "rep": 0, "step": 7, "kernels": 12, "expected": 13,
            "first_difference": "12 kernels replayed, 13 in the eager call"}]
    failed = C.graph_kernels_check(bad)
    assert failed.status == "fail" and "layer round 2" in failed.observed
    assert C.graph_kernels_check([], "no CUDA graphs on a CPU").status == "skipped"


def _phase(clock: float, spread: float = 0.0, n: int = 20) -> list[float]:
    return [clock - spread / 2 + spread * i / (n - 1) for i in range(n)]


def test_clock_check_fails_when_a_phase_ran_at_another_clock():
    samples = [Sample("latency", i, c, 500.0) for i, c in enumerate(_phase(1980, 15))] + \
              [Sample("floor", i, c, 690.0) for i, c in enumerate(_phase(1755, 15))]
    phases = summarize_phases(samples)
    assert phases["floor"]["samples"] == 20 and phases["floor"]["power_w"] == 690.0
    failed = C.clock_check(compare_phases(phases))
    assert failed.status == "fail" and "floor vs latency" in failed.observed
    same = [Sample("latency", i, c, 500.0) for i, c in enumerate(_phase(1980, 30))] + \
           [Sample("floor", i, c, 600.0) for i, c in enumerate(_phase(1965, 30))]
    assert C.clock_check(compare_phases(summarize_phases(same))).status == "pass"
    assert C.clock_check(None, "NVML unavailable").status == "skipped"


def _components(in_layer: float, alone: float, *, spread: float = 0.01) -> pd.DataFrame:
    return pd.DataFrame([{"pass": "forward", "component": "mlp_up", "role": "fprop", "time_us": in_layer,
                          "p10_us": in_layer * (1 - spread), "p90_us": in_layer * (1 + spread), "alone_us": alone,
                          "alone_p10_us": alone * (1 - spread), "alone_p90_us": alone * (1 + spread)}])


def test_in_layer_vs_alone_fails_beyond_tolerance_plus_both_spreads():
    assert C.vs_alone_check(C.vs_alone_rows(_components(104.0, 100.0))).status == "pass"
    failed = C.vs_alone_check(C.vs_alone_rows(_components(129.0, 100.0)))  # the +29% that used to pass silently
    assert failed.status == "fail" and "mlp_up" in failed.observed and "+29.0%" in failed.observed
    # a noisy measurement earns a wider allowance: 20% each side's spread covers the same +29%
    assert C.vs_alone_check(C.vs_alone_rows(_components(129.0, 100.0, spread=0.1))).status == "pass"
    short = C.vs_alone_rows(_components(9.0, 5.0))
    assert short["vs_alone_check"].item() == "too short"
    assert C.vs_alone_check(short).status == "pass"


def test_summarize_checks_names_the_failures():
    checks = [C.Check("a", "pass", "", ""), C.Check("b", "fail", "", ""), C.Check("c", "skipped", "", "")]
    assert C.summarize_checks(checks) == {"passed": 1, "failed": ["b"], "skipped": ["c"], "all_passed": False}


def test_stability_needs_two_windows_that_agree():
    assert not is_stable([1.0])
    assert not is_stable([1.0, 1.0 + 3 * STABLE_TOLERANCE])
    assert is_stable([1.3, 1.0, 1.0 + STABLE_TOLERANCE / 2])


def test_warm_up_reports_a_time_that_never_settles():
    calls = []

    def drifting():  # each call slower than the last: no two windows agree
        calls.append(1)
        sum(range(2000 * len(calls)))

    result = bench_detailed(drifting, warmup_ms=1, rep_ms=1, max_warmup_ms=30, device="cpu")
    assert not result.warmup.stable and result.warmup.spent_ms >= 30
    steady = bench_detailed(lambda: sum(range(20000)), warmup_ms=5, rep_ms=5, device="cpu")
    assert len(steady.samples_ms) >= 5 and steady.warmup.window_medians_ms


def test_the_trace_schedule_warms_up_until_stable_then_records():
    """Stable: the medians of the last two windows of 3 steps agree (2%, or 2 us)."""
    schedule = StableSchedule(active=3, min_warmup=2, max_warmup=20)
    times = [30.0, 25.0, 21.0, 20.0, 20.1, 20.05, 19.9, 20.0, 20.1]
    actions = [schedule(0)]
    for step, ms in enumerate(times, start=1):
        schedule.observe(ms)
        actions.append(schedule(step))
    # after step 7, windows (25, 21, 20) | (20.1, 20.05, 19.9): medians 21 vs 20.05 differ by 4.5%; after
    # step 8, (21, 20, 20.1) | (20.05, 19.9, 20.0): 20.1 vs 20.0, within 2%, so step 8 is recorded
    assert schedule.recording_from == 8
    assert actions[:8] == [ProfilerAction.WARMUP] * 8
    assert actions[8] == ProfilerAction.RECORD and schedule(10) == ProfilerAction.RECORD_AND_SAVE
    assert schedule(11) == ProfilerAction.NONE


def test_the_trace_schedule_gives_up_at_its_cap_and_says_so():
    never = StableSchedule(active=2, min_warmup=1, max_warmup=8)
    for step, ms in enumerate([10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0], start=1):
        never.observe(ms)
        never(step)
    assert never.recording_from == 8 and not never.stable


def test_the_trace_schedule_keeps_warming_up_for_its_minimum_time():
    schedule = StableSchedule(active=2, min_warmup=1, max_warmup=50, min_warmup_ms=100.0)
    step = 0
    while schedule.warming_up:
        step += 1
        schedule.observe(5.0)
        schedule(step)
    assert sum(schedule.times_ms) >= 100.0 and schedule.stable


def test_a_failed_check_reaches_the_cli_run_json_and_report_and_sets_the_exit_code(tmp_path, monkeypatch, capsys):
    """Doctor the FLOP formula back to the old 2x for a fused backward: the check must fail everywhere."""
    from profiler import flops
    from cli.main import profiler_main as main

    monkeypatch.setattr(flops, "FUSED_BACKWARD_FACTOR", 2)
    out = tmp_path / "run"
    argv = ["layer", "--config", "pythia-70m", "--seq-len", "32", "--attention", "sdpa", "--mode", "forward+backward",
            "--iters", "2", "--no-floor", "--out", str(out)]
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert "[FAIL] flops" in captured.out and "CHECKS FAILED (1): pythia-70m: flops" in captured.err
    entry = json.loads((out / "run.json").read_text())["configs"][0]
    assert entry["checks_summary"]["failed"] == ["flops"]
    assert "FAILED pythia-70m: flops" in (out / "report.html").read_text()
    assert main(argv + ["--allow-failed-checks", "--force"]) == 0

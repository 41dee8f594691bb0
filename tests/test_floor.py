"""The floor is like for like: it times exactly the kernels the layer attributes to each component, in the
same interleaved rounds as the layer (profiler/protocol.py)."""

import pandas as pd
import pytest
import torch

from models import load_config
from profiler import protocol as P
from profiler.floor import floor_calls
from profiler.gemm_calls import fused_attention_call, gemm_call
from profiler.layer_profile import ProfileOptions, floor_times, profile_layer

CPU = torch.device("cpu")


def rounds_of(calls: dict, *, layer=lambda: None, rounds=2, tmp_path):
    units = P.build_units(layer, {c: call.step for c, call in calls.items()})
    maps = P.kernel_maps(units, device=CPU)
    plan, reason = P.build_rounds(units, {u: 1 for u in units}, device=CPU)
    assert reason  # a CPU has no graphs: said, not silent
    return P.traced_rounds(plan, maps, device=CPU, trace_dir=tmp_path, worker_name="t", n=rounds)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_every_gemm_and_attention_row_of_the_layer_has_an_alone_time(tmp_path, attention):
    cfg = load_config("pythia-70m", seq_length=32, micro_batch_size=2, attention=attention, dtype="float32")
    result = profile_layer(cfg, ProfileOptions(mode="forward+backward", active_steps=2, bench_warmup_ms=1,
                                               bench_rep_ms=1), out_dir=tmp_path, device=CPU)
    rows = result.components
    heavy = rows[(rows["kind"] == "gemm") | rows["component"].isin(["sdpa_attention"])]
    assert heavy["alone_us"].notna().all(), heavy[["pass", "component", "role", "alone_us"]]
    assert set(zip(heavy["pass"], heavy["component"])) >= {("forward", "qkv_transform"), ("backward", "mlp_down")}
    others = rows[~rows.index.isin(heavy.index)]
    assert others["alone_us"].isna().all()  # norms, layout copies, ... have no floor
    assert result.summary["floor_us"] == pytest.approx(heavy["alone_us"].sum())
    # off a GPU the window means nothing: the rounds asked for, and no window recorded
    assert result.summary["rounds"]["per_attempt"] == 2 and result.summary["rounds"]["window_ms"] is None
    assert result.summary["rounds"]["attempts"][0]["span_ms"] > 0  # what the attempt's rounds did span


def test_the_attention_alone_leaves_the_packed_qkv_scatter_out(tmp_path):
    """q, k, v are views of one packed tensor, as in the layer: the backward's copies into the packed gradient
    are attributed to `other` (layout), and the attention's alone time counts only the attention itself."""
    call = fused_attention_call(2, 32, 4, 16, attention="sdpa", dtype=torch.float32, device=CPU, backward=True)
    traced = rounds_of({"sdpa_attention": call}, tmp_path=tmp_path)
    times = floor_times(traced.activities, ["sdpa_attention"])
    assert set(times) == {("forward", "sdpa_attention", ""), ("backward", "sdpa_attention", "")}
    assert all(t.repeats == 2 for t in times.values())  # one replay per round, two rounds


def test_a_linear_gemm_alone_has_a_time_per_role_and_the_bias_gradient_is_left_out(tmp_path):
    call = gemm_call("mlp_up", 1, 64, 128, 32, dtype=torch.float32, device=CPU, bias=True, backward=True)
    times = floor_times(rounds_of({"mlp_up": call}, tmp_path=tmp_path).activities, ["mlp_up"])
    assert ("forward", "mlp_up", "fprop") in times
    assert {k[0] for k in times} == {"forward", "backward"}


def test_floor_covers_the_logits_gemm_without_a_bias():
    cfg = load_config("pythia-70m", seq_length=16, micro_batch_size=1, attention="eager", dtype="float32")
    calls = floor_calls(cfg, include_logits=True, backward=False, device=CPU, dtype=torch.float32)
    assert set(calls) == {"qkv_transform", "attention_score", "attention_over_values", "out_projection",
                          "mlp_up", "mlp_down", "logits"}


def test_every_unit_runs_in_every_round_and_a_layer_in_the_same_rounds_is_cut_from_the_call(tmp_path):
    """The layer and its floor share each round's state: every round replays every unit; none of the layer's
    own mlp_up (same region name) lands in the call alone's time."""
    from models.layer import build_layer, random_input
    from profiler.layer_profile import make_step

    cfg = load_config("pythia-70m", seq_length=16, micro_batch_size=1, attention="eager", dtype="float32")
    layer = make_step(build_layer(cfg), random_input(cfg, requires_grad=True), True)  # forward + backward
    call = gemm_call("mlp_up", 1, 16, 2048, 512, dtype=torch.float32, device=CPU, bias=True, backward=True)
    traced = rounds_of({"mlp_up": call}, layer=layer, rounds=3, tmp_path=tmp_path)
    acts = traced.activities
    assert set(acts.groupby("round")["unit"].apply(frozenset)) == {frozenset({"layer", "floor:mlp_up"})}
    times = floor_times(acts, ["mlp_up"])
    assert all(t.repeats == 3 for t in times.values())
    alone_steps = set(acts.loc[acts["unit"] == "floor:mlp_up", "step"])
    layer_steps = set(acts.loc[acts["unit"] == "layer", "step"])
    assert alone_steps and layer_steps and not alone_steps & layer_steps


def test_timed_and_eager_blocks_alternate_with_traced_rounds_and_stay_out_of_the_trace(tmp_path):
    """Eager rounds first, outside the profiler; then one profiler session in which every traced round is
    followed by a timed round with the profiler's collection off: the telemetry tags alternate round by round,
    so the compared figures sample one stretch of the clock; the trace holds the traced rounds only."""
    call = gemm_call("mlp_up", 1, 16, 64, 32, dtype=torch.float32, device=CPU, bias=False, backward=False)
    marker = torch.zeros(3)

    def layer():  # an op the trace can be searched for: only the eager blocks run it
        return torch.cumsum(marker, 0)

    units = P.build_units(layer, {"mlp_up": call.step})
    maps = P.kernel_maps(units, device=CPU)
    rounds, _ = P.build_rounds(units, {u: 1 for u in units}, device=CPU)
    tags = []
    timed, traced = P.interleaved_rounds(rounds, maps, units[P.LAYER], device=CPU, trace_dir=tmp_path,
                                         worker_name="t", n=4, eager_steps=2, phase=tags.append)
    assert tags == ["eager", None] + ["trace", "latency"] * 4 + ["trace-export", None]
    assert [len(m) for m in timed.round_ms] == [2, 1, 1] and len(timed.eager) == 8
    assert sorted(traced.activities["round"].unique()) == [0, 1, 2, 3]
    events = pd.read_json(traced.trace_path, orient="records", typ="series")["traceEvents"]
    names = [e.get("name", "") for e in events]
    # the traced rounds' layer calls ran cumsum inside unit regions; the timed rounds' 4 layer calls did not
    assert len(traced.windows) == 4 and all(a < b for a, b in traced.windows)
    assert sum(n == "aten::cumsum" for n in names) == 4


# ---- round graphs named from the eager calls: a synthetic trace ---------------------------------------------
def _event(cat, name, ts, dur, **extra):
    return {"cat": cat, "name": name, "ts": float(ts), "dur": float(dur), "end": float(ts + dur), "tid": 1,
            "ext_id": None, "seq": None, "correlation": extra.pop("correlation", None), "input_dims": None,
            "input_types": None, "grid": None, "block": None, "registers": None, "shared_memory": None,
            "blocks_per_sm": None, "stream": 7, **extra}


def _rounds(kernels_per_round, stray_at=None, prologue=False):
    """Rounds of plan 0 = [layer instance 0]: each round one graph launch whose kernels (the flush's zero
    kernel, then the layer's) share its correlation id; optionally replay()'s own fill launched inside the
    round region before the graph, and a stray kernel launched outside every region."""
    rows, t = [], 0.0
    for r, names in enumerate(kernels_per_round):
        rows.append(_event("user_annotation", f"round/0#{r}", t, 5))
        if prologue:
            rows.append(_event("cuda_runtime", "cudaLaunchKernel", t + 0.5, 0.2, correlation=500 + r))
            rows.append(_event("kernel", "FillFunctor<long>", t + 1, 1, correlation=500 + r))
        rows.append(_event("cuda_runtime", "cudaGraphLaunch", t + 1, 2, correlation=10 + r))
        for k, name in enumerate(["zero_kernel", *names]):
            rows.append(_event("kernel", name, t + 3 + 10 * k, 8, correlation=10 + r))
        t += 20 + 10 * len(names)
    if stray_at is not None:
        rows.append(_event("cuda_runtime", "cudaLaunchKernel", t + 50, 0.2, correlation=999))
        rows.append(_event("kernel", "stray_kernel", stray_at, 3, correlation=999))
    return pd.DataFrame(rows)


def _map(names, components):
    return pd.DataFrame({"name": names, "pass": "forward", "component": components, "role": "",
                         "region": components, "op": None, "op_dims": None})


MAPS = {"layer": _map(["gemm_a", "softmax_b"], ["qkv_transform", "softmax"]), "flush": _map(["zero_kernel"], ["flush"])}
PLANS = [[("layer", 0)]]


def test_each_kernel_of_a_round_takes_the_name_of_the_same_kernel_of_the_eager_call():
    acts, spans, mismatches = P.map_rounds(_rounds([["gemm_a", "softmax_b"]] * 2, prologue=True), MAPS, PLANS)
    assert mismatches == []
    assert list(acts["component"]) == ["qkv_transform", "softmax"] * 2
    # the flush and replay()'s own fill are left out; the round's span is its graph's kernels
    assert not {"zero_kernel", "FillFunctor<long>"} & set(acts["name"])
    assert list(acts["round"]) == [0, 0, 1, 1] and spans == [[28.0, 28.0]]
    assert P.replay_totals(acts)["busy_us"].tolist() == [16.0, 16.0]


def test_a_round_that_ran_other_kernels_is_a_mismatch_and_its_extra_kernel_unattributed():
    acts, _, mismatches = P.map_rounds(_rounds([["gemm_a", "softmax_b"], ["gemm_a", "other_c"]]), MAPS, PLANS)
    assert len(mismatches) == 1 and mismatches[0]["round"] == 1
    assert "replayed kernel 2 ('other_c')" in mismatches[0]["first_difference"]
    round1 = acts[acts["round"] == 1].set_index("name")["component"]
    assert round1["gemm_a"] == "qkv_transform" and round1["other_c"] == "unattributed"


def test_a_graph_copy_kernel_matches_the_eager_memcpy_and_a_missing_kernel_does_not():
    maps = {**MAPS, "layer": _map(["gemm_a", "Memcpy DtoD (Device -> Device)", "softmax_b"],
                                  ["qkv_transform", "other", "softmax"])}
    acts, _, mismatches = P.map_rounds(_rounds([["gemm_a", "memcpy128", "softmax_b"]]), maps, PLANS)
    assert mismatches == [] and list(acts["component"]) == ["qkv_transform", "other", "softmax"]
    _, _, mismatches = P.map_rounds(_rounds([["gemm_a"]]), MAPS, PLANS)
    assert "eager kernel 2 ('softmax_b') did not run in the replay" in mismatches[0]["first_difference"]


def test_a_stray_kernel_on_the_stream_lowers_coverage_and_fails_it():
    from profiler.attribution import coverage, unattributed_kernels
    from profiler.checks import coverage_check

    clean, _, _ = P.map_rounds(_rounds([["gemm_a", "softmax_b"]]), MAPS, PLANS)
    assert coverage_check(coverage(clean), unattributed_kernels(clean)).status == "pass"
    # a kernel launched outside every round runs inside the layer instance's GPU interval
    doctored, _, _ = P.map_rounds(_rounds([["gemm_a", "softmax_b"]], stray_at=20.0), MAPS, PLANS)
    assert "stray_kernel" in set(doctored.loc[doctored["component"] == "unattributed", "name"])
    check = coverage_check(coverage(doctored), unattributed_kernels(doctored))
    assert check.status == "fail" and "stray_kernel" in str(check.details)


def test_an_attempt_spans_the_window_in_rounds_between_the_least_and_the_cap():
    # a power-capped 2.7B layer: rounds of ~18.5 ms -> 1200 ms / (2 x 18.5) = 33 rounds of each kind
    assert P.rounds_per_attempt(18.5, 10) == 33
    # short rounds reach the cap; long ones keep the least count asked for
    assert P.rounds_per_attempt(5.0, 10) == P.MAX_ROUNDS_PER_ATTEMPT
    assert P.rounds_per_attempt(200.0, 10) == 10
    # a larger least count than the cap (--iters) is kept
    assert P.rounds_per_attempt(5.0, 60) == 60
    # no round time (a CPU, a warm-up that timed nothing): the least count, not a guess
    assert P.rounds_per_attempt(None, 10) == 10
    assert P.rounds_per_attempt(float("nan"), 10) == 10
    assert P.rounds_per_attempt(0.0, 7) == 7



# ---- an attempt extended until its timed rounds' mean is precise ------------------------------------------------
def test_the_relative_error_of_a_steady_series_is_small_and_of_a_clock_walk_large():
    steady = [10.0 + 0.01 * (i % 3) for i in range(60)]
    plans = [i % 3 for i in range(60)]
    assert P.relative_error(steady, plans, batch=5) < 0.001
    # levels held 5 rounds each, 10% apart (a power-capped clock stepping): neighbouring rounds are not
    # independent, so the batch means carry the levels' spread
    walk = [(10.0 if (i // 5) % 2 else 11.0) for i in range(60)]
    walked = P.relative_error(walk, plans, batch=5)
    assert walked > 0.01
    # the same walk judged as if every round were independent (batches of one) looks far more precise
    assert P.relative_error(walk, plans, batch=1) < walked
    # plans hold the same work in other orders: each is judged against its own median
    offset = [t * (1.5 if p == 1 else 1.0) for t, p in zip(steady, plans)]
    assert P.relative_error(offset, plans, batch=5) < 0.001


def test_the_relative_error_needs_enough_batches_and_a_sane_batch():
    assert P.relative_error([1.0] * 11, [0] * 11, batch=2, min_batches=6) is None  # 5 whole batches
    assert P.relative_error([1.0] * 12, [0] * 12, batch=2, min_batches=6) == 0.0
    with pytest.raises(ValueError, match="batch 0"):
        P.relative_error([1.0] * 4, [0] * 4, batch=0)
    with pytest.raises(ValueError, match="4 times for 3 plans"):
        P.relative_error([1.0] * 4, [0] * 3, batch=1)


def test_an_attempt_goes_on_until_precise_or_a_bound():
    e = P.Extension(target=0.004, window_ms=8000.0, most=320)
    assert e.stop(10, 33, 400.0, 0.0) is None  # never before the least count
    assert e.stop(33, 33, 1250.0, 0.002) == "least"  # precise at the least count: no extension
    assert e.stop(33, 33, 1250.0, 0.009) is None  # imprecise: goes on
    assert e.stop(34, 33, 1290.0, None) is None  # too few batches to judge: goes on
    assert e.stop(120, 33, 4600.0, 0.0039) == "precise"
    assert e.stop(200, 33, 8000.0, 0.006) == "window"
    assert e.stop(320, 33, 5000.0, 0.006) == "rounds"
    assert e.stop(400, 400, 900.0, 0.006) == "rounds"  # a least count above the cap is kept, then stops
    # batches span batch_ms at the pace so far: 40 ms a (traced, timed) pair -> 8 pairs per 300 ms
    assert P.Extension(batch_ms=300.0).batch_rounds(1200.0, 30) == 8 and e.batch_rounds(0.0, 0) == 1


def _extended_rounds(tmp_path, extension, n=2):
    call = gemm_call("mlp_up", 1, 16, 64, 32, dtype=torch.float32, device=CPU, bias=False, backward=False)
    units = P.build_units(lambda: torch.cumsum(torch.zeros(3), 0), {"mlp_up": call.step})
    maps = P.kernel_maps(units, device=CPU)
    rounds, _ = P.build_rounds(units, {u: 1 for u in units}, device=CPU)
    tags = []
    timed, traced = P.interleaved_rounds(rounds, maps, units[P.LAYER], device=CPU, trace_dir=tmp_path,
                                         worker_name="t", n=n, eager_steps=1, phase=tags.append, extension=extension)
    return timed, traced, tags


def test_an_imprecise_attempt_is_extended_in_one_session_to_its_bound(tmp_path):
    # a target nothing meets: the rounds go on past the least 2 to the cap of 5, all in one trace
    never = P.Extension(target=-1.0, batch_ms=0.0, min_batches=2, window_ms=1e9, most=5)
    timed, traced, tags = _extended_rounds(tmp_path, never)
    assert timed.stopped == "rounds" and timed.relative_error is not None
    assert sum(len(m) for m in timed.round_ms) == 5 and len(traced.windows) == 5
    assert sorted(traced.activities["round"].unique()) == [0, 1, 2, 3, 4]
    assert tags == ["eager", None] + ["trace", "latency"] * 5 + ["trace-export", None]


def test_a_precise_attempt_stops_at_its_least_rounds(tmp_path):
    at_once = P.Extension(target=1e9, batch_ms=0.0, min_batches=2, window_ms=1e9, most=5)
    timed, traced, _ = _extended_rounds(tmp_path, at_once)
    assert timed.stopped == "least" and len(traced.windows) == 2
    fixed, traced, _ = _extended_rounds(tmp_path / "fixed", None)
    assert fixed.stopped is None and fixed.relative_error is None and len(traced.windows) == 2

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
    units, reason = P.build_units(layer, {c: call.step for c, call in calls.items()}, device=CPU, dtype=torch.float32)
    assert reason  # a CPU has no graphs: said, not silent
    maps = P.kernel_maps(units, device=CPU)
    traced = P.traced_rounds(units, maps, device=CPU, reps={u: 1 for u in units}, trace_dir=tmp_path,
                             worker_name="t", rounds=rounds)
    return traced


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


# ---- graph replays named from the eager call: a synthetic trace of two replays ------------------------------
def _event(cat, name, ts, dur, **extra):
    return {"cat": cat, "name": name, "ts": float(ts), "dur": float(dur), "end": float(ts + dur), "tid": 1,
            "ext_id": None, "seq": None, "correlation": extra.pop("correlation", None), "input_dims": None,
            "input_types": None, "grid": None, "block": None, "registers": None, "shared_memory": None,
            "blocks_per_sm": None, "stream": 7, **extra}


def _replays(kernels_per_replay, stray_at=None):
    """Two replays of unit `layer`, each a graph launch whose kernels share its correlation id, a flush before
    each; optionally a stray kernel with its own launch outside any unit region."""
    rows, t = [], 0.0
    for r, names in enumerate(kernels_per_replay):
        rows.append(_event("user_annotation", "flush_l2", t, 5))
        rows.append(_event("cuda_runtime", "cudaLaunchKernel", t + 1, 2, correlation=100 + r))
        rows.append(_event("kernel", "zero_kernel", t + 3, 4, correlation=100 + r))
        t += 10
        rows.append(_event("user_annotation", f"unit/layer#{r}.0", t, 5))
        rows.append(_event("cuda_runtime", "cudaGraphLaunch", t + 1, 2, correlation=10 + r))
        for k, name in enumerate(names):
            rows.append(_event("kernel", name, t + 3 + 10 * k, 8, correlation=10 + r))
        t += 10 + 10 * len(names)
    if stray_at is not None:
        rows.append(_event("cuda_runtime", "cudaLaunchKernel", 7.0, 0.2, correlation=999))
        rows.append(_event("kernel", "stray_kernel", stray_at, 3, correlation=999))
    return pd.DataFrame(rows)


MAP = {"layer": pd.DataFrame({"name": ["gemm_a", "softmax_b"], "pass": "forward", "component": ["qkv_transform", "softmax"],
                              "role": ["fprop", ""], "region": ["qkv_transform", "softmax"], "op": ["aten::addmm", "aten::_softmax"],
                              "op_dims": [None, None]})}


def test_each_replayed_kernel_takes_the_name_of_the_same_kernel_of_the_eager_call():
    acts, mismatches = P.map_replays(_replays([["gemm_a", "softmax_b"], ["gemm_a", "softmax_b"]]), MAP)
    assert mismatches == []
    assert list(acts["component"]) == ["qkv_transform", "softmax"] * 2
    assert list(acts["round"]) == [0, 0, 1, 1] and "zero_kernel" not in set(acts["name"])  # the flush is left out
    assert P.replay_totals(acts)["busy_us"].tolist() == [16.0, 16.0]


def test_a_replay_that_ran_other_kernels_is_a_mismatch_and_its_extra_kernel_unattributed():
    acts, mismatches = P.map_replays(_replays([["gemm_a", "softmax_b"], ["gemm_a", "other_c"]]), MAP)
    assert len(mismatches) == 1 and mismatches[0]["round"] == 1
    assert "replayed kernel 1 ('other_c')" in mismatches[0]["first_difference"]
    round1 = acts[acts["round"] == 1].set_index("name")["component"]
    assert round1["gemm_a"] == "qkv_transform" and round1["other_c"] == "unattributed"


def test_a_replay_without_the_eager_calls_memset_still_matches_but_a_missing_kernel_does_not():
    with_memset = {"layer": pd.concat([MAP["layer"].iloc[:1], pd.DataFrame({
        "name": ["Memset (Device)"], "pass": "forward", "component": ["qkv_transform"], "role": [""],
        "region": ["qkv_transform"], "op": ["aten::zero_"], "op_dims": [None]}), MAP["layer"].iloc[1:]],
        ignore_index=True)}
    acts, mismatches = P.map_replays(_replays([["gemm_a", "softmax_b"]]), with_memset)
    assert mismatches == [] and list(acts["component"]) == ["qkv_transform", "softmax"]
    _, mismatches = P.map_replays(_replays([["gemm_a"]]), MAP)
    assert "eager kernel 1 ('softmax_b') did not run in the replay" in mismatches[0]["first_difference"]


def test_a_stray_kernel_on_the_stream_lowers_coverage_and_fails_it():
    from profiler.attribution import coverage, unattributed_kernels
    from profiler.checks import coverage_check

    clean, _ = P.map_replays(_replays([["gemm_a", "softmax_b"]]), MAP)
    assert coverage_check(coverage(clean), unattributed_kernels(clean)).status == "pass"
    # a kernel launched outside every unit region runs inside the replay's GPU interval
    doctored, _ = P.map_replays(_replays([["gemm_a", "softmax_b"]], stray_at=20.0), MAP)
    assert "stray_kernel" in set(doctored.loc[doctored["component"] == "unattributed", "name"])
    check = coverage_check(coverage(doctored), unattributed_kernels(doctored))
    assert check.status == "fail" and "stray_kernel" in str(check.details)

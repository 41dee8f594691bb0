"""The floor is like for like: it times exactly the kernels the layer attributes to each component."""

import pytest
import torch

from models import load_config
from profiler.floor import floor_times, kernel_times_alone
from profiler.gemm_calls import fused_attention_call, gemm_call
from profiler.layer_profile import ProfileOptions, profile_layer


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_every_gemm_and_attention_row_of_the_layer_has_an_alone_time(tmp_path, attention):
    cfg = load_config("pythia-70m", seq_length=32, micro_batch_size=2, attention=attention, dtype="float32")
    result = profile_layer(cfg, ProfileOptions(mode="forward+backward", active_steps=2, bench_warmup_ms=1,
                                               bench_rep_ms=1), out_dir=tmp_path, device=torch.device("cpu"))
    rows = result.components
    heavy = rows[(rows["kind"] == "gemm") | rows["component"].isin(["sdpa_attention"])]
    assert heavy["alone_us"].notna().all(), heavy[["pass", "component", "role", "alone_us"]]
    assert set(zip(heavy["pass"], heavy["component"])) >= {("forward", "qkv_transform"), ("backward", "mlp_down")}
    others = rows[~rows.index.isin(heavy.index)]
    assert others["alone_us"].isna().all()  # norms, layout copies, ... have no floor
    assert result.summary["floor_us"] == pytest.approx(heavy["alone_us"].sum())


def test_the_attention_alone_leaves_the_packed_qkv_scatter_out():
    """q, k, v are views of one packed tensor, as in the layer: the backward's copies into the packed gradient
    are attributed to `other` (layout), and the attention's alone time counts only the attention itself."""
    call = fused_attention_call(2, 32, 4, 16, attention="sdpa", dtype=torch.float32, device=torch.device("cpu"),
                                backward=True)
    times, schedule = kernel_times_alone(call.step, "sdpa_attention", torch.device("cpu"), steps=3)
    assert set(times) == {("forward", "sdpa_attention", ""), ("backward", "sdpa_attention", "")}
    assert schedule["active_steps"] == 3


def test_a_linear_gemm_alone_has_a_time_per_role_and_the_bias_gradient_is_left_out():
    call = gemm_call("mlp_up", 1, 64, 128, 32, dtype=torch.float32, device=torch.device("cpu"), bias=True,
                     backward=True)
    times, _ = kernel_times_alone(call.step, "mlp_up", torch.device("cpu"), steps=3)
    assert ("forward", "mlp_up", "fprop") in times
    assert {k[0] for k in times} == {"forward", "backward"}


def test_floor_covers_the_logits_gemm_without_a_bias():
    cfg = load_config("pythia-70m", seq_length=16, micro_batch_size=1, attention="eager", dtype="float32")
    times, _ = floor_times(cfg, include_logits=True, backward=False, device="cpu", dtype=torch.float32, steps=2)
    assert {c for _, c, _ in times} == {"qkv_transform", "attention_score", "attention_over_values", "out_projection",
                                        "mlp_up", "mlp_down", "logits"}


def test_a_conditioner_step_before_each_call_alone_is_cut_from_its_time():
    """The floor runs a layer step before each call alone (same power state as the layer); none of the
    conditioner's work may land in the call's time, forward or backward."""
    from models.layer import build_layer, random_input
    from profiler.layer_profile import make_step

    cfg = load_config("pythia-70m", seq_length=16, micro_batch_size=1, attention="eager", dtype="float32")
    layer = build_layer(cfg)
    conditioner = make_step(layer, random_input(cfg, requires_grad=True), True)  # forward + backward
    call = gemm_call("mlp_up", 1, 16, 2048, 512, dtype=torch.float32, device=torch.device("cpu"), bias=True,
                     backward=True)
    seen = []
    times, _ = kernel_times_alone(call.step, "mlp_up", torch.device("cpu"), conditioner=conditioner, steps=3,
                                  on_recording=lambda: seen.append("recording"), on_recorded=lambda: seen.append("done"))
    assert seen == ["recording", "done"]
    # the conditioner's own mlp_up (same region name) ran in every step: only the call alone is counted
    assert {k[0] for k in times} == {"forward", "backward"}
    assert all(t.repeats == 3 for t in times.values())

"""Attribution of real H100 traces, on a CPU: the GPU path's correlation join, memsets, the warm-up spill at
the window's edge, backward sequence numbers and dgrad/wgrad labels, and kernels nobody launched.

Fixtures (tests/fixtures/h100/README.md): traces the profiler wrote on an H100 (torch 2.11, CUDA 13):
pythia-1b forward+backward with flash attention, and gpt3-2.7b forward with eager attention (b=4, s=2048).
"""

from pathlib import Path

import pandas as pd
import pytest

from profiler.attribution import attribute_detailed, component_summary, coverage, unattributed_kernels
from profiler.checks import coverage_check
from profiler.trace import device_properties, load_trace

FIXTURES = Path(__file__).parent / "fixtures" / "h100"
TRAIN = FIXTURES / "layer" / "pythia-1b-train" / "tb" / "pythia-1b.1795430688633088519.pt.trace.json.gz"
EAGER = FIXTURES / "layer" / "figure1-eager" / "tb" / "gpt3-2.7b.1795430659643611150.pt.trace.json.gz"


@pytest.fixture(scope="module")
def train():
    events = load_trace(TRAIN)
    return events, *attribute_detailed(events)


@pytest.fixture(scope="module")
def eager():
    events = load_trace(EAGER)
    return events, *attribute_detailed(events)


def test_every_kernel_of_the_training_trace_is_joined_to_its_launch(train):
    events, acts, left = train
    assert coverage(acts) == 1.0
    assert acts["launched"].all()
    assert unattributed_kernels(acts) == []
    assert left["edge_kernels"] == 0
    assert left["flush_kernels"] == 10  # the L2 flush before each of the 10 steps, left out of both sides
    assert set(acts["step"]) == set(range(3, 13))
    assert device_properties(TRAIN)["numSms"] == 132


def test_memsets_are_attributed_to_the_op_that_launched_them(train):
    _, acts, _ = train
    memsets = acts[acts["name"].str.contains("Memset")]
    assert len(memsets) > 0
    assert (memsets["component"] != "unattributed").all()


def test_backward_gemms_are_labelled_by_the_operand_whose_gradient_they_compute(train):
    _, acts, _ = train
    summary = component_summary(acts)
    backward = summary[(summary["pass"] == "backward") & (summary["kind"] == "gemm")]
    for component in ("qkv_transform", "out_projection", "mlp_up", "mlp_down"):
        rows = backward[backward["component"] == component].set_index("role")["time_us"]
        assert set(rows.index) == {"dgrad", "wgrad"}, component
        # each is one product of the forward GEMM's size: same FLOPs, so similar time (not a memset's 1 us)
        assert 0.5 < rows["dgrad"] / rows["wgrad"] < 2.0, (component, rows.to_dict())
    # qkv_transform (2048 tokens, k=2048, n=6144): the input gradient contracts over n, the weight's over m
    gemm = acts[(acts["pass"] == "backward") & (acts["component"] == "qkv_transform") & acts["name"].str.startswith("nvjet")]
    inner = {role: {d[0][-1] for d in part["op_dims"]} for role, part in gemm.groupby("role")}
    assert inner == {"dgrad": {6144}, "wgrad": {2048}}


def test_flash_backward_time_excludes_the_scatter_into_the_packed_qkv_gradient(train):
    _, acts, _ = train
    flash = acts[(acts["pass"] == "backward") & (acts["component"] == "flash_attention")]
    kinds = {k for k in ("flash_bwd_dot_do_o", "flash_bwd_dq_dk_dv_loop_seqk_parallel", "flash_bwd_convert_dq")
             if flash["name"].str.contains(k).any()}
    assert len(kinds) == 3  # the three kernels of the flash backward, and nothing else
    assert flash["name"].str.contains("flash_bwd").all()
    copies = acts[(acts["pass"] == "backward") & acts["name"].str.contains("direct_copy|FillFunctor")]
    assert set(copies["component"]) <= {"other", "residual_bias", "norm", "rotary", "grad_accumulation"}
    assert (copies["component"] == "other").any()


def test_warm_up_kernels_that_spill_into_the_window_are_counted_at_its_edge(eager):
    _, acts, left = eager
    assert left["edge_kernels"] == 47 and left["edge_us"] > 1000  # launched in warm-up, ran inside the window
    assert coverage(acts) == 1.0  # left out of both sides, and said so, instead of silently dropped
    assert "_causal_softmax_kernel" in left["edge_names"]


def _stray(events: pd.DataFrame, at_ts: float, name: str = "stray_kernel_nobody_launched") -> pd.DataFrame:
    row = events[events["cat"] == "kernel"].iloc[0].copy()
    row["name"], row["ts"], row["dur"], row["correlation"] = name, at_ts, 500.0, -1.0
    row["end"] = at_ts + 500.0
    return pd.concat([events, row.to_frame().T], ignore_index=True).astype({"ts": float, "dur": float, "end": float})


def test_a_stray_kernel_inside_a_step_lowers_coverage_and_is_named(train):
    events, acts, _ = train
    step5 = acts[acts["step"] == 5]
    doctored = _stray(events, at_ts=float(step5["ts"].median()))
    acts2, _ = attribute_detailed(doctored)
    assert coverage(acts2) < 1.0
    named = unattributed_kernels(acts2)
    assert named == [{"name": "stray_kernel_nobody_launched", "count": 1, "total_us": 500.0,
                      "why": "no launch in the trace"}]
    assert acts2.loc[acts2["name"] == "stray_kernel_nobody_launched", "step"].item() == 5
    assert coverage_check(coverage(acts2), named).status == "fail"


def test_a_stray_kernel_before_the_first_step_is_an_edge_drop(train):
    events, acts, left = train
    doctored = _stray(events, at_ts=float(acts["ts"].min()) - 10_000)
    acts2, left2 = attribute_detailed(doctored)
    assert coverage(acts2) == 1.0
    assert left2["edge_kernels"] == left["edge_kernels"] + 1
    assert "stray_kernel_nobody_launched" in left2["edge_names"]

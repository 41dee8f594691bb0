"""Attribute every device activity of a trace to the layer step that launched it. Pure: DataFrames in and out.

The chain, for a GPU kernel: kernel --correlation id--> the runtime launch on the host --enclosed by-->
the aten op that launched it and the layer's named region (same thread, nesting by time). Backward kernels
run on autograd's thread, outside any region: their enclosing autograd node carries the sequence number
of the forward op that created it, and that forward op sits in a region. Kernel names are never parsed.

On a CPU-only trace the activities are the outermost aten ops (and autograd nodes) of each step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.gemms import GEMM_COMPONENTS
from models.layer import REGION_PREFIX

from .trace import DEVICE_CATEGORIES, FLUSH_REGION, HOST_CATEGORIES

REGION_COMPONENT = {
    "norm": "norm", "qkv_transform": "qkv_transform", "rotary": "rotary", "layout": "other",
    "attention_score": "attention_score", "softmax": "softmax", "dropout": "dropout",
    "attention_over_values": "attention_over_values", "flash_attention": "flash_attention",
    "out_projection": "out_projection", "mlp_up": "mlp_up", "mlp_gate": "mlp_gate",
    "activation": "activation", "mlp_down": "mlp_down", "residual": "residual_bias", "logits": "logits",
}
NON_GEMM_COMPONENTS = ("flash_attention", "softmax", "dropout", "norm", "rotary", "activation",
                       "residual_bias", "other")
COMPONENT_ORDER = GEMM_COMPONENTS + NON_GEMM_COMPONENTS + ("unattributed",)
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
            "aten::_addmm_activation"}
BACKWARD_NODE = "autograd::engine::evaluate_function"
STEP_PREFIX = "ProfilerStep#"


def host_context(events: pd.DataFrame) -> pd.DataFrame:
    """For each host event: its region, launching aten op, backward node and whether it is in the L2 flush.

    One sweep per thread with a stack of open intervals (events nest by time on their thread)."""
    host = events[events["cat"].isin(HOST_CATEGORIES)].copy()
    host = host.sort_values(["tid", "ts", "dur"], ascending=[True, True, False])
    region, in_flush, bwd_seq, bwd_node, op_name, op_dims, op_types, top_op = ([] for _ in range(8))
    cats, names, seqs, dims, types = (host[c].tolist() for c in ("cat", "name", "seq", "input_dims", "input_types"))
    tids, ts, ends = host["tid"].tolist(), host["ts"].tolist(), host["end"].tolist()
    stack: list[int] = []
    current_tid = None
    for i in range(len(host)):
        if tids[i] != current_tid:
            stack, current_tid = [], tids[i]
        while stack and ends[stack[-1]] <= ts[i]:
            stack.pop()
        chain = stack + [i]  # outermost first, self last
        r = f = b = bn = o = od = ot = t = None
        for j in chain:
            if cats[j] == "user_annotation":
                if names[j].startswith(REGION_PREFIX):
                    r = names[j][len(REGION_PREFIX):]
                elif names[j] == FLUSH_REGION:
                    f = True
            elif cats[j] == "cpu_op":
                if t is None:
                    t = j
                if names[j].startswith(BACKWARD_NODE):
                    b, bn = seqs[j], names[j][len(BACKWARD_NODE) + 2:]
                elif names[j].startswith("aten::"):
                    o, od, ot = names[j], dims[j], types[j]
        region.append(r)
        in_flush.append(bool(f))
        bwd_seq.append(b)
        bwd_node.append(bn)
        op_name.append(o)
        op_dims.append(od)
        op_types.append(ot)
        top_op.append(t == i)
        stack.append(i)
    host["region"], host["in_flush"], host["bwd_seq"], host["bwd_node"] = region, in_flush, bwd_seq, bwd_node
    host["op"], host["op_dims"], host["op_types"], host["is_top_op"] = op_name, op_dims, op_types, top_op
    host["step"] = assign_steps(host, events)
    return host


def assign_steps(rows: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """The ProfilerStep each row's start falls in (any thread: backward runs on another one)."""
    steps = events[(events["cat"] == "user_annotation") & events["name"].str.startswith(STEP_PREFIX)]
    steps = steps.sort_values("ts")
    starts, ends = steps["ts"].to_numpy(), steps["end"].to_numpy()
    numbers = steps["name"].str[len(STEP_PREFIX):].astype(int).to_numpy()
    idx = np.searchsorted(starts, rows["ts"].to_numpy(), side="right") - 1
    valid = (idx >= 0) & (rows["ts"].to_numpy() < ends[np.clip(idx, 0, None)] if len(ends) else False)
    out = np.where(valid, numbers[np.clip(idx, 0, None)] if len(numbers) else -1, -1)
    return pd.Series(out, index=rows.index)


def forward_regions_by_sequence(host: pd.DataFrame) -> dict:
    """Sequence number of each forward op that builds an autograd node -> the region it ran in."""
    fwd = host[(host["cat"] == "cpu_op") & host["seq"].notna() & host["bwd_seq"].isna() & host["region"].notna()]
    return dict(zip(fwd["seq"], fwd["region"]))


def device_activities(events: pd.DataFrame, host: pd.DataFrame) -> pd.DataFrame:
    """Kernels, copies and memsets joined to their host launch through the correlation id."""
    device = events[events["cat"].isin(DEVICE_CATEGORIES)]
    launches = host[host["cat"].isin(("cuda_runtime", "cuda_driver")) & host["correlation"].notna()]
    launches = launches.drop_duplicates("correlation")
    keep = ["correlation", "region", "in_flush", "bwd_seq", "bwd_node", "op", "op_dims", "op_types", "step"]
    joined = device.drop(columns=["region", "step"], errors="ignore").merge(
        launches[keep], on="correlation", how="left", validate="many_to_one")
    joined["step"] = joined["step"].fillna(-1).astype(int)
    joined["in_flush"] = joined["in_flush"].astype("boolean").fillna(False).astype(bool)
    return joined


def host_activities(host: pd.DataFrame) -> pd.DataFrame:
    """A CPU trace's 'kernels': the outermost ops of each step."""
    return host[(host["cat"] == "cpu_op") & host["is_top_op"]].copy()


def attribute(events: pd.DataFrame) -> pd.DataFrame:
    """One row per activity in the measured steps: step, pass, component, kind, name, dur_us, ts, end."""
    host = host_context(events)
    on_gpu = events["cat"].isin(DEVICE_CATEGORIES).any()
    acts = device_activities(events, host) if on_gpu else host_activities(host)
    acts = acts[(acts["step"] >= 0) & ~acts["in_flush"]].copy()
    fwd_region = forward_regions_by_sequence(host)
    backward = acts["bwd_node"].notna()
    region = acts["region"].where(~backward, acts["bwd_seq"].map(fwd_region))
    # weight-gradient accumulation belongs to no forward op: it is bookkeeping ("other")
    region = region.where(~acts["bwd_node"].astype(str).str.endswith("AccumulateGrad"), "layout")
    component = region.map(REGION_COMPONENT)
    # a GEMM step's non-GEMM launches (a bias-gradient reduction, a bias broadcast) are bias work
    is_gemm_region = component.isin(GEMM_COMPONENTS)
    launched_by_other_aten = acts["op"].notna() & acts["op"].astype(str).str.startswith("aten::") & \
        ~acts["op"].isin(GEMM_OPS)
    component = component.where(~(is_gemm_region & launched_by_other_aten & on_gpu), "residual_bias")
    component = component.fillna("unattributed")
    out = pd.DataFrame({
        "step": acts["step"].to_numpy(),
        "pass": np.where(backward, "backward", "forward"),
        "component": component.to_numpy(),
        "name": acts["name"].to_numpy(),
        "op": acts["op"].to_numpy(),
        "dur_us": acts["dur"].to_numpy(),
        "ts": acts["ts"].to_numpy(),
        "end": acts["end"].to_numpy(),
    })
    out["kind"] = np.select([out["component"].isin(GEMM_COMPONENTS), out["component"] == "unattributed"],
                            ["gemm", "unattributed"], "non-gemm")
    return out


def step_totals(activities: pd.DataFrame) -> pd.DataFrame:
    """Per step: summed activity time, and the span from the first start to the last end."""
    g = activities.groupby("step")
    return pd.DataFrame({"busy_us": g["dur_us"].sum(), "span_us": g["end"].max() - g["ts"].min(),
                         "attributed_us": activities[activities["kind"] != "unattributed"].groupby("step")["dur_us"].sum()}
                        ).fillna(0.0).reset_index()


def component_summary(activities: pd.DataFrame) -> pd.DataFrame:
    """Per pass x component: median / p10 / p90 time over steps, share of all activity time, kernel count."""
    steps = sorted(activities["step"].unique())
    per_step = activities.groupby(["pass", "component", "step"])["dur_us"].sum().unstack("step", fill_value=0.0)
    per_step = per_step.reindex(columns=steps, fill_value=0.0)
    counts = activities.groupby(["pass", "component", "step"]).size().unstack("step", fill_value=0)
    total = activities["dur_us"].sum()
    summary = pd.DataFrame({
        "time_us": per_step.median(axis=1),
        "p10_us": per_step.quantile(0.10, axis=1),
        "p90_us": per_step.quantile(0.90, axis=1),
        "share": per_step.sum(axis=1) / total if total else 0.0,
        "kernels_per_step": counts.median(axis=1),
    }).reset_index()
    summary["kind"] = np.select([summary["component"].isin(GEMM_COMPONENTS), summary["component"] == "unattributed"],
                                ["gemm", "unattributed"], "non-gemm")
    order = {c: i for i, c in enumerate(COMPONENT_ORDER)}
    summary["_order"] = summary["component"].map(order).fillna(len(order))
    summary = summary.sort_values(["pass", "_order"], ascending=[False, True]).drop(columns="_order")
    return summary.reset_index(drop=True)


def coverage(activities: pd.DataFrame) -> float:
    total = activities["dur_us"].sum()
    return float(activities.loc[activities["kind"] != "unattributed", "dur_us"].sum() / total) if total else 0.0

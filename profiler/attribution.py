"""Attribute every device activity of a trace to the layer step that launched it. Pure: DataFrames in and out.

The chain, for a GPU kernel: kernel --correlation id--> the runtime launch on the host --enclosed by-->
the aten op that launched it and the layer's named region (same thread, nesting by time). Backward kernels
run on autograd's thread, outside any region: their enclosing autograd node carries the sequence number
of the forward op that created it, and that forward op sits in a region. Kernel names are never parsed
for attribution (profiler/gemm_detect.py reads them as a second, independent signal).

A backward GEMM is labelled by which operand's gradient it computes: `dgrad` (the activation input) or
`wgrad` (the weight) for a linear layer, `dgrad_lhs` / `dgrad_rhs` for the attention BMMs, whose operands
are both activations. The inner dimension tells them apart: the input gradient G(m,n) W(n,k) contracts over
n, the weight gradient contracts over m (the tokens); where m == n the order inside the autograd node
decides (PyTorch computes the first operand's gradient first).

Kernels with no launch in the trace (their launch fell outside the recorded window, or the profiler lost
it) are placed on the GPU timeline: inside a measured step they count as unattributed; before the first
or after the last measured step they are dropped at the window's edges, and counted as such.

On a CPU-only trace the activities are the outermost aten ops (and autograd nodes) of each step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.gemms import GEMM_COMPONENTS
from models.layer import REGION_PREFIX

from .trace import DEVICE_CATEGORIES, FLUSH_REGION, HOST_CATEGORIES

FUSED_ATTENTION = ("flash_attention", "sdpa_attention")
REGION_COMPONENT = {
    "norm": "norm", "qkv_transform": "qkv_transform", "rotary": "rotary", "layout": "other",
    "attention_score": "attention_score", "softmax": "softmax", "dropout": "dropout",
    "attention_over_values": "attention_over_values", "flash_attention": "flash_attention",
    "sdpa_attention": "sdpa_attention", "out_projection": "out_projection", "mlp_up": "mlp_up",
    "mlp_gate": "mlp_gate", "activation": "activation", "mlp_down": "mlp_down", "residual": "residual_bias",
    "logits": "logits", "grad_accumulation": "grad_accumulation",
    # tensor parallelism (models/tensor_parallel.py): the all-reduces of Megatron's f and g
    "allreduce_attention": "communication", "allreduce_mlp": "communication",
}
NON_GEMM_COMPONENTS = FUSED_ATTENTION + ("softmax", "dropout", "norm", "rotary", "activation", "residual_bias",
                                         "grad_accumulation", "other")
COMPONENT_ORDER = GEMM_COMPONENTS + NON_GEMM_COMPONENTS + ("communication", "unattributed")
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
            "aten::_addmm_activation"}
LINEAR_COMPONENTS = ("qkv_transform", "out_projection", "mlp_up", "mlp_gate", "mlp_down", "logits")
BACKWARD_NODE = "autograd::engine::evaluate_function"
STEP_PREFIX = "ProfilerStep#"


def kind_of(component: pd.Series) -> np.ndarray:
    return np.select([component.isin(GEMM_COMPONENTS), component == "communication", component == "unattributed"],
                     ["gemm", "communication", "unattributed"], "non-gemm")


def host_context(events: pd.DataFrame) -> pd.DataFrame:
    """For each host event: its region, launching aten op, backward node and whether it is in the L2 flush.

    One sweep per thread with a stack of open intervals (events nest by time on their thread)."""
    host = events[events["cat"].isin(HOST_CATEGORIES)].copy()
    host = host.sort_values(["tid", "ts", "dur"], ascending=[True, True, False])
    region, in_flush, bwd_seq, bwd_node, bwd_call, op_name, op_dims, op_types, op_call, top_op = ([] for _ in range(10))
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
        r = f = b = bn = bc = o = od = ot = oc = t = None
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
                    b, bn, bc = seqs[j], names[j][len(BACKWARD_NODE) + 2:], j
                elif names[j].startswith("aten::"):
                    o, od, ot, oc = names[j], dims[j], types[j], j
        region.append(r)
        in_flush.append(bool(f))
        bwd_seq.append(b)
        bwd_node.append(bn)
        bwd_call.append(bc)
        op_name.append(o)
        op_dims.append(od)
        op_types.append(ot)
        op_call.append(oc)
        top_op.append(t == i)
        stack.append(i)
    host["region"], host["in_flush"], host["bwd_seq"], host["bwd_node"] = region, in_flush, bwd_seq, bwd_node
    host["bwd_call"] = bwd_call  # which call of the backward node (the same node can run in several steps)
    host["op"], host["op_dims"], host["op_types"], host["is_top_op"] = op_name, op_dims, op_types, top_op
    host["op_call"] = op_call  # the launching aten op's call: a memset and a GEMM of one mm share it
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


def forward_ops_by_sequence(host: pd.DataFrame) -> pd.DataFrame:
    """Forward ops that build an autograd node, by sequence number: their region, and for a GEMM its dims."""
    fwd = host[(host["cat"] == "cpu_op") & host["seq"].notna() & host["bwd_seq"].isna() & host["region"].notna()]
    regions = fwd.drop_duplicates("seq").set_index("seq")["region"]
    gemms = fwd[fwd["name"].isin(GEMM_OPS - {"aten::linear", "aten::matmul"})].drop_duplicates("seq", keep="last")
    shapes = gemms.set_index("seq").apply(lambda r: _gemm_mn(r["name"], r["input_dims"]), axis=1)
    return pd.DataFrame({"region": regions, "mn": shapes.reindex(regions.index)})


def _gemm_mn(name: str, dims) -> tuple[int, int] | None:
    """(m, n) of a forward GEMM's output from its recorded input dims."""
    try:
        if name == "aten::mm":
            return dims[0][-2], dims[1][-1]
        if name in ("aten::addmm", "aten::baddbmm", "aten::_addmm_activation"):
            return dims[1][-2], dims[2][-1]
        if name == "aten::bmm":
            return dims[0][-2], dims[1][-1]
    except (TypeError, IndexError):
        return None
    return None


def device_activities(events: pd.DataFrame, host: pd.DataFrame) -> pd.DataFrame:
    """Kernels, copies and memsets joined to their host launch through the correlation id."""
    device = events[events["cat"].isin(DEVICE_CATEGORIES)]
    launches = host[host["cat"].isin(("cuda_runtime", "cuda_driver")) & host["correlation"].notna()]
    launches = launches.drop_duplicates("correlation")
    keep = ["correlation", "region", "in_flush", "bwd_seq", "bwd_node", "bwd_call", "op", "op_dims", "op_types",
            "op_call", "step"]
    joined = device.drop(columns=["region", "step"], errors="ignore").merge(
        launches[keep].assign(launched=True), on="correlation", how="left", validate="many_to_one")
    joined["launched"] = joined["launched"].astype("boolean").fillna(False).astype(bool)
    joined["step"] = joined["step"].fillna(-1).astype(int)
    joined["in_flush"] = joined["in_flush"].astype("boolean").fillna(False).astype(bool)
    return joined


def place_orphans(acts: pd.DataFrame) -> pd.DataFrame:
    """Kernels without a launch in the trace get the step whose GPU interval they fall in (between the first
    kernel of that step and the first kernel of the next); outside the measured steps they are edge drops."""
    acts = acts.sort_values("ts").copy()
    acts["edge"] = False
    known = acts[acts["launched"] & (acts["step"] >= 0) & ~acts["in_flush"]]
    orphan = ~acts["launched"]
    if not orphan.any():
        return acts
    if known.empty:
        acts.loc[orphan, "edge"] = True
        return acts
    firsts = known.groupby("step")["ts"].min().sort_values()
    window_end = known["end"].max()
    idx = np.searchsorted(firsts.to_numpy(), acts.loc[orphan, "ts"].to_numpy(), side="right") - 1
    inside = (idx >= 0) & (acts.loc[orphan, "ts"].to_numpy() < window_end)
    steps = np.where(inside, firsts.index.to_numpy()[np.clip(idx, 0, None)], -1)
    acts.loc[orphan, "step"] = steps
    acts.loc[orphan, "edge"] = ~inside
    return acts


def _roles(acts: pd.DataFrame, component: pd.Series, backward: pd.Series, fwd_ops: pd.DataFrame) -> np.ndarray:
    """fprop for forward GEMMs; dgrad/wgrad (linear) or dgrad_lhs/dgrad_rhs (BMMs) for backward GEMMs."""
    role = np.where(component.isin(GEMM_COMPONENTS) & ~backward, "fprop", "")
    is_bwd_gemm = (component.isin(GEMM_COMPONENTS) & backward & acts["op"].isin(GEMM_OPS)).to_numpy()
    if not is_bwd_gemm.any():
        return role
    mn = acts["bwd_seq"].map(fwd_ops["mn"]) if len(fwd_ops) else pd.Series(None, index=acts.index)
    # order of the GEMM op calls (not kernels: a cuBLAS workspace memset shares its GEMM's call) inside one
    # call of one backward node: the first operand's gradient comes first
    gemms = acts[is_bwd_gemm]
    first_ts = gemms.groupby("op_call")["ts"].transform("min")
    order = gemms.assign(first_ts=first_ts).groupby(["step", "bwd_seq", "bwd_call"])["first_ts"].rank(method="dense") - 1
    for i in np.flatnonzero(is_bwd_gemm):
        idx = acts.index[i]
        dims, shape = acts.at[idx, "op_dims"], mn.get(idx)
        shape = shape if isinstance(shape, tuple) else None
        inner = None
        try:
            inner = dims[0][-1] if acts.at[idx, "op"] in ("aten::mm", "aten::bmm") else dims[1][-1]
        except (TypeError, IndexError):
            pass
        lhs = order.get(idx, 0) == 0
        if shape is not None and inner is not None and shape[0] != shape[1]:
            if inner == shape[1]:
                lhs = True
            elif inner == shape[0]:
                lhs = False
        linear = component.at[idx] in LINEAR_COMPONENTS
        role[i] = ("dgrad" if lhs else "wgrad") if linear else ("dgrad_lhs" if lhs else "dgrad_rhs")
    return role


def attribute(events: pd.DataFrame) -> pd.DataFrame:
    """One row per activity in the measured steps: step, pass, component, role, kind, name, dur_us, ts, end,
    plus `launched` (False: no launch in the trace; such a kernel is unattributed) and launch details."""
    return attribute_detailed(events)[0]


def attribute_detailed(events: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """`attribute` plus what was left out: kernels dropped at the window's edges and L2-flush kernels."""
    host = host_context(events)
    on_gpu = events["cat"].isin(DEVICE_CATEGORIES).any()
    if on_gpu:
        acts = place_orphans(device_activities(events, host))
    else:
        acts = host_activities(host).assign(launched=True, edge=False)
    edge = acts[acts["edge"] | ((acts["step"] < 0) & ~acts["in_flush"])]
    flush = acts[acts["in_flush"]]
    left_out = {"edge_kernels": int(len(edge)), "edge_us": float(edge["dur"].sum()),
                "edge_names": sorted(set(edge["name"]))[:20],
                "flush_kernels": int(len(flush)), "flush_us": float(flush["dur"].sum()),
                # where each step's flush region ends on the GPU: the floor runs a layer step inside that
                # region before each call alone, and cuts everything before this point
                "flush_end_by_step": {int(k): float(v) for k, v in flush.groupby("step")["end"].max().items() if k >= 0}}
    acts = acts[(acts["step"] >= 0) & ~acts["in_flush"] & ~acts["edge"]].copy()
    fwd_ops = forward_ops_by_sequence(host)
    backward = acts["bwd_node"].notna()
    region = acts["region"].where(~backward, acts["bwd_seq"].map(fwd_ops["region"]) if len(fwd_ops) else None)
    # weight-gradient accumulation belongs to no forward op: its own bucket
    region = region.where(~acts["bwd_node"].astype(str).str.endswith("AccumulateGrad"), "grad_accumulation")
    component = region.map(REGION_COMPONENT)
    # a GEMM step's non-GEMM launches (a bias-gradient reduction, a bias broadcast) are bias work
    is_gemm_region = component.isin(GEMM_COMPONENTS)
    launched_by_other_aten = acts["op"].notna() & acts["op"].astype(str).str.startswith("aten::") & \
        ~acts["op"].isin(GEMM_OPS)
    component = component.where(~(is_gemm_region & launched_by_other_aten & on_gpu), "residual_bias")
    component = component.where(acts["launched"], None).fillna("unattributed")
    role = _roles(acts, component, backward, fwd_ops)
    out = pd.DataFrame({
        "step": acts["step"].to_numpy(),
        "pass": np.where(backward, "backward", "forward"),
        "component": component.to_numpy(),
        "region": region.to_numpy(),
        "role": role,
        "name": acts["name"].to_numpy(),
        "op": acts["op"].to_numpy(),
        "dur_us": acts["dur"].to_numpy(),
        "ts": acts["ts"].to_numpy(),
        "end": acts["end"].to_numpy(),
        "launched": acts["launched"].to_numpy(),
    })
    for column in ("grid", "block", "registers", "shared_memory", "blocks_per_sm", "stream", "op_dims"):
        out[column] = acts[column].to_numpy() if column in acts else None
    out["kind"] = kind_of(out["component"])
    return out.sort_values("ts").reset_index(drop=True), left_out


def host_activities(host: pd.DataFrame) -> pd.DataFrame:
    """A CPU trace's 'kernels': the outermost ops of each step."""
    return host[(host["cat"] == "cpu_op") & host["is_top_op"]].copy()


def step_totals(activities: pd.DataFrame) -> pd.DataFrame:
    """Per step: summed activity time, and the span from the first start to the last end."""
    g = activities.groupby("step")
    return pd.DataFrame({"busy_us": g["dur_us"].sum(), "span_us": g["end"].max() - g["ts"].min(),
                         "attributed_us": activities[activities["kind"] != "unattributed"].groupby("step")["dur_us"].sum()}
                        ).fillna(0.0).reset_index()


def component_summary(activities: pd.DataFrame) -> pd.DataFrame:
    """Per pass x component x role: median / p10 / p90 time over steps, share of all activity time, kernels."""
    steps = sorted(activities["step"].unique())
    keys = ["pass", "component", "role"]
    per_step = activities.groupby(keys + ["step"])["dur_us"].sum().unstack("step", fill_value=0.0)
    per_step = per_step.reindex(columns=steps, fill_value=0.0)
    counts = activities.groupby(keys + ["step"]).size().unstack("step", fill_value=0).reindex(columns=steps, fill_value=0)
    total = activities["dur_us"].sum()
    summary = pd.DataFrame({
        "time_us": per_step.median(axis=1),
        "p10_us": per_step.quantile(0.10, axis=1),
        "p90_us": per_step.quantile(0.90, axis=1),
        "share_of_kernel_time": per_step.sum(axis=1) / total if total else 0.0,
        "kernels_per_step": counts.median(axis=1),
    }).reset_index()
    summary["kind"] = kind_of(summary["component"])
    order = {c: i for i, c in enumerate(COMPONENT_ORDER)}
    role_order = {"fprop": 0, "dgrad": 1, "dgrad_lhs": 1, "wgrad": 2, "dgrad_rhs": 2, "": 3}
    summary["_order"] = summary["component"].map(order).fillna(len(order)) * 10 + summary["role"].map(role_order).fillna(9)
    summary = summary.sort_values(["pass", "_order"], ascending=[False, True]).drop(columns="_order")
    return summary.reset_index(drop=True)


def coverage(activities: pd.DataFrame) -> float:
    total = activities["dur_us"].sum()
    return float(activities.loc[activities["kind"] != "unattributed", "dur_us"].sum() / total) if total else 0.0


def unattributed_kernels(activities: pd.DataFrame) -> list[dict]:
    """Every unattributed kernel by name: count and total time over the measured steps."""
    un = activities[activities["kind"] == "unattributed"]
    if un.empty:
        return []
    table = un.groupby("name").agg(count=("dur_us", "size"), total_us=("dur_us", "sum"),
                                   launched=("launched", "all")).reset_index()
    return [{"name": r["name"][:200], "count": int(r["count"]), "total_us": round(float(r["total_us"]), 3),
             "why": "launched outside any layer region" if r["launched"] else "no launch in the trace"}
            for r in table.sort_values("total_us", ascending=False).to_dict("records")]

"""Communication in a tensor-parallel layer's traces: bytes, bus bandwidth, overlap with compute. Pure functions.

Inputs are profiler.attribution.attribute's activities (one row per kernel: step, pass, component, kind,
dur_us, ts, end, stream, and region where present), with a `rank` column once ranks are merged.

Conventions are nccl-tests' (doc/PERFORMANCE.md): an all-reduce of S bytes over t ranks taking T has
algbw = S / T and busbw = algbw * 2(t-1)/t. A ring all-reduce sends and receives 2(t-1)/t * S per rank, so
busbw is the rate each link carries: comparable across t and with the link's datasheet bandwidth.

A collective kernel starts when its rank arrives and ends when the last rank has sent its share, so an
early rank's kernel also counts the wait for the late one. The least-waiting rank's time (the minimum over
ranks, per step) is the closest a trace gets to the transfer itself; bandwidths use it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.tensor_parallel import Collective

COMMUNICATION = "communication"


def ring_factor(world_size: int) -> float:
    """2(t-1)/t: bytes each rank sends (and receives) per byte all-reduced, in a ring."""
    return 2 * (world_size - 1) / world_size


def bytes_moved(message_bytes, world_size: int):
    return np.asarray(message_bytes, dtype=float) * ring_factor(world_size)


def bandwidth_gbps(message_bytes, time_us, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(algbw, busbw) in GB/s (1e9 bytes per second, as nccl-tests prints them); NaN where time is 0."""
    seconds = np.asarray(time_us, dtype=float) * 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        algbw = np.where(seconds > 0, np.asarray(message_bytes, dtype=float) / seconds / 1e9, np.nan)
    return algbw, algbw * ring_factor(world_size)


def _union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted intervals covering the same time as the intervals [starts, ends)."""
    if len(starts) == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    opens = np.flatnonzero(np.r_[True, s[1:] > np.maximum.accumulate(e)[:-1]])  # starts after all before it end
    return s[opens], np.maximum.reduceat(e, opens)


def covered_us(starts, ends, union_starts: np.ndarray, union_ends: np.ndarray) -> np.ndarray:
    """For each interval [start, end): how much of it a disjoint sorted union covers (prefix sums, no loop)."""
    starts, ends = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    if len(union_starts) == 0:
        return np.zeros(len(starts))
    lengths = union_ends - union_starts
    before = np.r_[0.0, np.cumsum(lengths)]  # covered time before each union interval

    def upto(x: np.ndarray) -> np.ndarray:  # covered time in (-inf, x)
        i = np.searchsorted(union_starts, x, side="right") - 1
        j = np.clip(i, 0, None)
        return np.where(i >= 0, before[j] + np.clip(x - union_starts[j], 0, lengths[j]), 0.0)

    return upto(ends) - upto(starts)


def overlap_with_compute(activities: pd.DataFrame) -> pd.DataFrame:
    """The communication kernels, each with `overlap_us`: the time some compute kernel (any other kind:
    GEMM, non-GEMM, unattributed, copies) of the same rank runs on another stream at the same time.

    Kernels on one stream never overlap, so only other streams can hide a collective. A CPU trace has no
    streams (one thread runs everything): nothing overlaps there."""
    acts = activities.assign(_stream=activities["stream"].astype(object).where(activities["stream"].notna(), "none")
                             if "stream" in activities else "none",
                             _rank=activities["rank"] if "rank" in activities else 0)
    is_comm = acts["kind"] == COMMUNICATION
    comm = acts[is_comm].copy()
    comm["overlap_us"] = 0.0
    for (rank, stream), rows in comm.groupby(["_rank", "_stream"]).groups.items():
        others = acts[~is_comm & (acts["_rank"] == rank) & (acts["_stream"] != stream)]
        u_start, u_end = _union(others["ts"].to_numpy(float), others["end"].to_numpy(float))
        comm.loc[rows, "overlap_us"] = covered_us(comm.loc[rows, "ts"], comm.loc[rows, "end"], u_start, u_end)
    return comm.drop(columns=["_stream", "_rank"])


def _regions(activities: pd.DataFrame) -> pd.Series:
    """Each kernel's layer region (allreduce_attention, ...) where attribution kept it; else its component,
    which puts all communication of a pass in one row."""
    component = activities["component"]
    return activities["region"].fillna(component) if "region" in activities else component


def plan_bytes(plan: list[Collective], pass_name: str, region: str) -> int:
    """Bytes all-reduced per step by the plan's collectives of one pass and region ('communication': all)."""
    return sum(c.message_bytes for c in plan if c.pass_name == pass_name and region in (c.region, COMMUNICATION))


def communication_summary(comm: pd.DataFrame, plan: list[Collective], world_size: int) -> pd.DataFrame:
    """Per pass x region, medians over steps: kernel time per rank (mean over ranks), transfer time (the
    least-waiting rank), the wait, overlap with compute, bytes and bandwidths.

    `comm`: overlap_with_compute's rows from every rank, with a `rank` column."""
    columns = ["pass", "region", "kernels_per_step", "message_bytes", "bytes_moved", "time_us", "transfer_us",
               "wait_us", "overlap_us", "exposed_us", "overlap_pct", "algbw_gbps", "busbw_gbps"]
    if comm.empty:
        return pd.DataFrame(columns=columns)
    df = comm.assign(region=_regions(comm))
    per_rank = df.groupby(["pass", "region", "step", "rank"]).agg(
        time_us=("dur_us", "sum"), overlap_us=("overlap_us", "sum"), kernels=("dur_us", "size")).reset_index()
    per_step = per_rank.groupby(["pass", "region", "step"]).agg(
        time_us=("time_us", "mean"), transfer_us=("time_us", "min"), overlap_us=("overlap_us", "mean"),
        kernels=("kernels", "median")).reset_index()
    out = per_step.groupby(["pass", "region"]).median(numeric_only=True).drop(columns="step").reset_index()
    out = out.rename(columns={"kernels": "kernels_per_step"})
    out["message_bytes"] = [plan_bytes(plan, p, r) for p, r in zip(out["pass"], out["region"])]
    out["bytes_moved"] = bytes_moved(out["message_bytes"], world_size)
    out["wait_us"] = out["time_us"] - out["transfer_us"]
    out["exposed_us"] = out["time_us"] - out["overlap_us"]
    out["overlap_pct"] = 100 * out["overlap_us"] / out["time_us"].where(out["time_us"] > 0)
    out["algbw_gbps"], out["busbw_gbps"] = bandwidth_gbps(out["message_bytes"], out["transfer_us"], world_size)
    out = out.sort_values(["pass", "region"], ascending=[False, True])
    return out[columns].reset_index(drop=True)


def step_communication(activities: pd.DataFrame, comm: pd.DataFrame) -> pd.DataFrame:
    """Per rank x step: summed kernel time, communication time, its overlap and share of kernel time."""
    keys = ["rank", "step"]
    busy = activities.groupby(keys)["dur_us"].sum().rename("busy_us")
    span = (activities.groupby(keys)["end"].max() - activities.groupby(keys)["ts"].min()).rename("span_us")
    c = comm.groupby(keys).agg(communication_us=("dur_us", "sum"), overlap_us=("overlap_us", "sum"))
    out = pd.concat([busy, span, c], axis=1).fillna(0.0).reset_index()
    out["exposed_us"] = out["communication_us"] - out["overlap_us"]
    out["communication_share"] = out["communication_us"] / out["busy_us"].where(out["busy_us"] > 0)
    return out


def check_collectives(events: pd.DataFrame, steps: pd.Series, plan: list[Collective]) -> list[dict]:
    """The traced all-reduces against the plan: how many per measured step and how many elements each.

    `steps`: the ProfilerStep of each event (-1 outside the measured ones), as attribution.assign_steps
    gives it. The c10d dispatcher op records its tensor's dims under either backend."""
    ops = events[(events["cat"] == "cpu_op") & (events["name"] == "c10d::allreduce_") & (steps >= 0)]
    per_step = ops.groupby(steps[ops.index]).size()
    counts = sorted(set(per_step.tolist())) or [0]
    sizes = sorted({sum(int(np.prod(d)) for d in dims[0]) for dims in ops["input_dims"] if dims})
    expected_sizes = sorted({c.elements for c in plan})
    checks = [("all-reduces per step", len(plan), counts[0] if len(counts) == 1 else counts),
              ("elements per all-reduce (b*s*h)", expected_sizes, sizes)]
    return [{"what": w, "expected": str(e), "observed": str(o), "ok": e == o} for w, e, o in checks]

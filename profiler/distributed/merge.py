"""Rank 0's side of a distributed profile: merge the ranks' results into one run and write its files.

Files (next to the per-rank traces in tb/rank<r>/):
- run.json: environment (with the process group), and per config x t: latency per rank, communication
  totals, the communication plan, every rank's checks and trace;
- components.csv: every rank's component table (a `rank` and a `tensor_parallel` column added);
- communication.csv: per config x t x pass x region: bytes, time, transfer time, bus bandwidth, overlap;
- steps.csv: per rank x traced step: kernel time, communication time and overlap;
- tb/<config>-t<t>.merged.pt.trace.json.gz: the ranks' traces on one timeline (one process per rank);
- report.html, written by the command from these files.
Runs into the same directory accumulate: a config profiled again at the same t replaces its old rows.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from models import ModelConfig, layer_flops
from models.config import safe_name
from models.tensor_parallel import communication_plan

from ..hardware import environment
from ..timing import summarize
from ..trace import read_trace_json
from .communication import communication_summary
from .launcher import NO_MULTICAST, DistributedJob

KEY = ["config", "tensor_parallel"]
PID_STRIDE = 10_000_000  # above Linux's pid_max: rank r's processes become r*stride + pid (GPU pids are 0..7)


def _latency(samples_ms) -> dict:
    s = summarize(list(samples_ms))
    return {"median": s.median_ms * 1e3, "p10": s.p10_ms * 1e3, "p90": s.p90_ms * 1e3, "repeats": s.repeats,
            "outliers": s.outliers}


def merge_config(cfg: ModelConfig, job: DistributedJob, results: list) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One run.json entry and the config's components, communication and per-step tables over all ranks."""
    world = len(results)
    plan = communication_plan(cfg, backward=job.backward)
    tag = {"config": cfg.name, "tensor_parallel": world}
    components = pd.concat([r.components for r in results], ignore_index=True).assign(**tag)
    comm = pd.concat([r.communication for r in results], ignore_index=True)
    steps = pd.concat([r.steps for r in results], ignore_index=True).assign(**tag)
    summary = communication_summary(comm, plan, world).assign(**tag)
    components, summary, steps = (_front(df, KEY + ["rank"]) for df in (components, summary, steps))
    per_rank = [{"rank": r.rank, "device": r.device_name, **_latency(r.latency_ms)} for r in results]
    # the ranks finish a step together (the last all-reduce waits for all); the slowest rank's median is the
    # layer's latency
    latency_us = max(p["median"] for p in per_rank)
    by_rank = steps.groupby("rank")[["busy_us", "communication_us", "overlap_us", "exposed_us"]].median()
    flops = layer_flops(cfg, backward=job.backward)  # per GPU: Table II's per-GPU shapes
    entry = {
        "name": cfg.name, "status": "ok", "config": cfg.to_dict(), "tensor_parallel": world, "mode": job.mode,
        "backend": job.backend,
        "latency_us": {"median": latency_us, "per_rank": per_rank},
        "busy_us": float(by_rank["busy_us"].mean()),
        "communication": {
            "time_us": float(by_rank["communication_us"].mean()),
            "overlap_us": float(by_rank["overlap_us"].mean()),
            "exposed_us": float(by_rank["exposed_us"].mean()),
            "share_of_kernel_time": float((by_rank["communication_us"] / by_rank["busy_us"]).mean()),
            "exposed_share_of_latency": float(by_rank["exposed_us"].mean() / latency_us),
            "message_bytes_per_step": sum(c.message_bytes for c in plan),
        },
        "plan": [{"region": c.region, "pass": c.pass_name, "op": c.op, "elements": c.elements,
                  "message_bytes": c.message_bytes} for c in plan],
        "layer_flops_per_gpu": flops,
        "layer_tflops_per_gpu": flops / (latency_us * 1e-6) / 1e12,
        "coverage": min(r.coverage for r in results),
        "checks": {str(r.rank): list(r.checks) for r in results},
        "failed_checks": [f"rank {r.rank}: {c['name']} ({c['observed']})" for r in results for c in r.checks
                          if c["status"] == "fail"],
        "trace_warmup": {str(r.rank): r.trace_warmup for r in results},
        "traces": {str(r.rank): _relative(r.trace, job.out) for r in results},
    }
    return entry, components, summary, steps


def _front(df: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    return df[[c for c in first if c in df] + [c for c in df if c not in first]]


def _relative(path: str, out: str) -> str:
    p, o = Path(path).resolve(), Path(out).resolve()
    return str(p.relative_to(o)) if p.is_relative_to(o) else str(p)


def merge_chrome_traces(paths: list[Path], dest: Path) -> Path:
    """The ranks' traces as one Chrome/Perfetto trace (gzipped): each rank's processes renamed 'rank r: ...'
    and their ids moved apart, timestamps on rank 0's time base (the ranks share the host's clock)."""
    merged, base = [], None
    for rank, path in enumerate(paths):
        raw = read_trace_json(path)
        shift_us = 0.0
        if raw.get("baseTimeNanoseconds") is not None:
            base = raw["baseTimeNanoseconds"] if base is None else base
            shift_us = (raw["baseTimeNanoseconds"] - base) / 1e3
        for e in raw.get("traceEvents", []):
            e = dict(e)
            if isinstance(e.get("pid"), int):
                e["pid"] += rank * PID_STRIDE
            elif isinstance(e.get("pid"), str) and e["pid"]:  # kineto's own rows ('Spans', 'Traces')
                e["pid"] = f"rank {rank}: {e['pid']}"
            if isinstance(e.get("id"), int) and e.get("ph") in ("s", "t", "f"):  # flow arrows: ids are per trace
                e["id"] += rank << 40
            if "ts" in e and shift_us:
                e["ts"] = float(e["ts"]) + shift_us
            if e.get("ph") == "M" and e.get("name") == "process_name":
                e["args"] = {**e.get("args", {}), "name": f"rank {rank}: {e.get('args', {}).get('name', '')}"}
            merged.append(e)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dest, "wt") as fh:
        json.dump({"traceEvents": merged, "baseTimeNanoseconds": base, "displayTimeUnit": "ms"}, fh)
    return dest


def _replace(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    if old is None or old.empty:
        return new
    keys = set(map(tuple, new[KEY].drop_duplicates().to_numpy().tolist()))
    keep = ~old[KEY].apply(tuple, axis=1).isin(keys)
    return pd.concat([old[keep], new], ignore_index=True)


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return None


def _nccl_version() -> str:
    version = torch.cuda.nccl.version()  # a tuple (2, 21, 5) in current torch
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def distributed_environment(job: DistributedJob) -> dict:
    device = torch.device("cuda", torch.cuda.current_device()) if job.device == "cuda" else torch.device("cpu")
    env = environment(device)
    env["distributed"] = {
        "backend": job.backend, "world_size": dist.get_world_size(),
        "nccl": _nccl_version() if job.device == "cuda" else None,
        "launcher": "torchrun --standalone (torch.distributed.run), one process per device",
        "multicast_off": NO_MULTICAST,
    }
    return {**env, **job.environment}


def write_outputs(job: DistributedJob, cfg: ModelConfig, results: list) -> dict:
    """Merge one config's rank results into the output directory (rank 0 only); returns run.json's content.
    The report is the command's to write, from these files (reports.distributed_report.load_run)."""
    out = Path(job.out)
    entry, components, communication, steps = merge_config(cfg, job, sorted(results, key=lambda r: r.rank))
    merged = merge_chrome_traces([Path(r.trace) for r in sorted(results, key=lambda r: r.rank)],
                                 out / "tb" / f"{safe_name(cfg.name)}-t{entry['tensor_parallel']}.merged.pt.trace.json.gz")
    entry["merged_trace"] = _relative(str(merged), job.out)
    try:
        previous = json.loads((out / "run.json").read_text()).get("configs", [])
    except (OSError, json.JSONDecodeError):
        previous = []
    entries = [e for e in previous if (e.get("name"), e.get("tensor_parallel")) != (cfg.name, entry["tensor_parallel"])]
    run = {"kind": "distributed", "environment": distributed_environment(job), "configs": entries + [entry]}
    tables = {}
    for name, frame in (("components", components), ("communication", communication), ("steps", steps)):
        tables[name] = _replace(_read_csv(out / f"{name}.csv"), frame)
        tables[name].to_csv(out / f"{name}.csv", index=False)
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
    print(f"  latency {entry['latency_us']['median']:.1f} us (slowest rank); communication "
          f"{entry['communication']['time_us']:.1f} us per step per rank, {entry['communication']['exposed_us']:.1f} us "
          f"exposed ({100 * entry['communication']['share_of_kernel_time']:.1f}% of kernel time); coverage "
          f"{100 * entry['coverage']:.2f}%", flush=True)
    print(f"  wrote run.json, components.csv, communication.csv, steps.csv, {merged}", flush=True)
    return run

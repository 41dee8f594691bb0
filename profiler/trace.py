"""Record a step function under torch.profiler and load the trace it writes into a DataFrame.

The trace is written by torch.profiler's TensorBoard handler, so the same file opens in Perfetto /
chrome://tracing and in TensorBoard with torch-tb-profiler. Everything downstream reads the file, not the
live profiler, so a number in a report can be followed back to the events in the file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

FLUSH_REGION = "flush_l2"
HOST_CATEGORIES = ("user_annotation", "cpu_op", "cuda_runtime", "cuda_driver")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def record_trace(step_fn: Callable[[], object], *, trace_dir: Path, worker_name: str, warmup_steps: int,
                 active_steps: int, device: torch.device, flush: Callable[[], object] | None = None) -> Path:
    """Run `step_fn` warmup+active times under the profiler; return the trace file of the active steps.

    The L2 flush runs inside each step in its own region, so attribution can leave it out."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    before = set(trace_dir.glob("*.pt.trace.json"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True,
                 schedule=schedule(wait=0, warmup=warmup_steps, active=active_steps, repeat=1),
                 on_trace_ready=tensorboard_trace_handler(str(trace_dir), worker_name=worker_name)) as prof:
        for _ in range(warmup_steps + active_steps):
            if flush is not None:
                with record_function(FLUSH_REGION):
                    flush()
            step_fn()
            prof.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    written = sorted(set(trace_dir.glob("*.pt.trace.json")) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"torch.profiler wrote no trace into {trace_dir}")
    return written[-1]


def load_trace(path: Path) -> pd.DataFrame:
    """One row per complete ('X') event: host events with their ids, device events with correlation."""
    opener = gzip.open if str(path).endswith(".gz") else open  # committed traces are gzipped
    with opener(path, "rt") as fh:
        raw = json.load(fh)
    rows = []
    for e in raw.get("traceEvents", []):
        cat = e.get("cat")
        if e.get("ph") != "X" or cat not in HOST_CATEGORIES + DEVICE_CATEGORIES:
            continue
        args = e.get("args", {})
        rows.append({
            "cat": cat,
            "name": e.get("name", ""),
            "ts": float(e["ts"]),
            "dur": float(e.get("dur", 0.0)),
            "tid": e.get("tid"),
            "ext_id": args.get("External id"),
            "seq": args.get("Sequence number"),
            "correlation": args.get("correlation"),
            "input_dims": args.get("Input Dims"),
            "input_types": args.get("Input type"),
        })
    events = pd.DataFrame(rows)
    if events.empty:
        raise RuntimeError(f"{path} holds no events")
    events["end"] = events["ts"] + events["dur"]
    return events

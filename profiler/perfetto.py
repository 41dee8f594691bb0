"""Write the layer's step names onto the GPU timeline of a trace, so Perfetto shows them where the time goes.

torch.profiler already projects host-side `record_function` ranges onto the GPU (`gpu_user_annotation`),
but only for kernels launched inside a range: backward kernels run on autograd's thread, outside the
layer's regions, and show unnamed. Attribution (profiler/attribution.py) knows every kernel's component
and role; `annotate_trace` writes them as one "X" slice per kernel on a track of its own in the GPU's
process (same pid as the kernels, tid COMPONENT_TID, named by a thread_name metadata event), with the
kernel's ts and dur and args naming the kernel, pass, step and region. A trace without GPU kernels (a CPU
run) is written back unchanged.

The slices' category (COMPONENT_CATEGORY) is not one profiler.trace.load_trace reads, so an annotated
file loads into the same events as before; re-annotating replaces the earlier slices. `rank` writes
`distributedInfo` ({"rank": rank}) when the trace has none: Holistic Trace Analysis warns without it
and, with several files in one folder, keeps only one of those that lack it.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pandas as pd

from models.gemms import GEMM_COMPONENTS

from .outputs import write_atomic
from .trace import DEVICE_CATEGORIES, read_trace_json

COMPONENT_CATEGORY = "gpu_component"
COMPONENT_TRACK = "layer components"
COMPONENT_TID = 1_000_000  # far above CUDA stream ids; moved up if a trace already uses it


def slice_name(component: str, role: str) -> str:
    """`component` for a non-GEMM step, `component.role` for a GEMM (qkv_transform.wgrad)."""
    return f"{component}.{role}" if role and component in GEMM_COMPONENTS else component


def _device_pids(events: list[dict]) -> dict[tuple[float, str], object]:
    return {(float(e["ts"]), e.get("name", "")): e.get("pid") for e in events
            if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES}


def without_components(events: list[dict]) -> list[dict]:
    """`events` less any component slices and their track's metadata (from an earlier annotation)."""
    ours = {(e.get("pid"), e.get("tid")) for e in events if e.get("cat") == COMPONENT_CATEGORY}
    ours |= {(e.get("pid"), e.get("tid")) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
             and (e.get("args") or {}).get("name") == COMPONENT_TRACK}
    return [e for e in events if e.get("cat") != COMPONENT_CATEGORY
            and not (e.get("ph") == "M" and (e.get("pid"), e.get("tid")) in ours)]


def component_events(events: list[dict], activities: pd.DataFrame) -> list[dict]:
    """The slices and track metadata `annotate_trace` adds to a trace's events (without earlier slices),
    for its attributed activities."""
    pid_of = _device_pids(events)
    if not pid_of:
        return []
    default_pid = Counter(pid_of.values()).most_common(1)[0][0]
    used = {(e.get("pid"), e.get("tid")) for e in events}
    out, tracks = [], {}
    for r in activities.to_dict("records"):
        pid = pid_of.get((float(r["ts"]), r["name"]), default_pid)
        if pid not in tracks:
            tid = COMPONENT_TID
            while (pid, tid) in used:
                tid += 1
            tracks[pid] = tid
        args = {"kernel": r["name"], "pass": r["pass"], "step": int(r["step"]), "kind": r["kind"]}
        if isinstance(r.get("region"), str):
            args["region"] = r["region"]
        out.append({"ph": "X", "cat": COMPONENT_CATEGORY, "name": slice_name(r["component"], r["role"]),
                    "pid": pid, "tid": tracks[pid], "ts": r["ts"], "dur": r["dur_us"], "args": args})
    meta = []
    for pid, tid in tracks.items():
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": COMPONENT_TRACK}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": -1}})
    return meta + out


def annotate_trace(path_in: Path | str, activities: pd.DataFrame, path_out: Path | str | None = None, *,
                   rank: int | None = None) -> Path:
    """Add the layer's component slices to the trace at `path_in` (gzip read when its name ends with .gz)
    and write it to `path_out` (default: in place; gzipped when its name ends with .gz). Returns the path."""
    path_in = Path(path_in)
    path_out = Path(path_out) if path_out is not None else path_in
    trace = read_trace_json(path_in)
    events = without_components(trace.get("traceEvents", []))
    trace["traceEvents"] = events + component_events(events, activities)
    if rank is not None and "distributedInfo" not in trace:
        trace["distributedInfo"] = {"rank": int(rank)}
    data = json.dumps(trace).encode()
    write_atomic(path_out, gzip.compress(data, mtime=0) if path_out.name.endswith(".gz") else data)
    return path_out

"""Record a step function under torch.profiler and load the trace it writes into a DataFrame.

The trace is written by torch.profiler's TensorBoard handler, so the same file opens in Perfetto /
chrome://tracing and in TensorBoard with torch-tb-profiler. Everything downstream reads the file, not the
live profiler, so a number in a report can be followed back to the events in the file.

Warm-up under the profiler runs until the step time is stable (a schedule that decides as it goes), not for
a fixed count: the profiler's own start-up and the GPU's clock ramp both show in the first steps.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import statistics
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, record_function, tensorboard_trace_handler

from .outputs import raise_if_full
from .timing import is_stable

FLUSH_REGION = "flush_l2"
HOST_CATEGORIES = ("user_annotation", "cpu_op", "cuda_runtime", "cuda_driver")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_ARGS = {"grid": "grid", "block": "block", "registers per thread": "registers",
               "shared memory": "shared_memory", "blocks per SM": "blocks_per_sm", "stream": "stream"}
# libkineto prints these on fd 2 at every profiler start and stop, whatever KINETO_LOG_LEVEL says
KINETO_NOISE = re.compile(r"^(USDT|STAGE):\d{4}-\d\d-\d\d .*(profiler_start|profiler_stop|Completed Stage)"
                          r"|^\[W\d{4} [\d:.]+ profiler_kineto\.cpp:\d+\] Toggling (CPU|GPU) activity with")


@contextmanager
def quiet_kineto():
    """Filter libkineto's start/stop chatter from stderr; every other line written meanwhile is replayed."""
    fd = 2  # libkineto writes to the process's fd 2 whatever Python's sys.stderr is (pytest replaces it)
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not KINETO_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@dataclass
class StableSchedule:
    """A torch.profiler schedule that keeps warming up until the step time has settled.

    The loop reports warm-up steps' times (`observe`); once the medians of the last two windows of `window`
    steps agree (profiler.timing.is_stable) and at least `min_warmup_ms` of steps have run (a power-capped
    GPU keeps clocking down for a while after a fast first few steps), or `max_warmup` steps have run, the
    next `active` steps are recorded."""

    active: int
    min_warmup: int = 2
    max_warmup: int = 40
    window: int = 3
    min_warmup_ms: float = 0.0
    times_ms: list[float] = field(default_factory=list)
    recording_from: int | None = None

    @property
    def stable(self) -> bool:
        w = self.window
        if len(self.times_ms) < 2 * w:
            return False
        return is_stable([statistics.median(self.times_ms[-2 * w:-w]), statistics.median(self.times_ms[-w:])])

    @property
    def warming_up(self) -> bool:
        return self.recording_from is None

    def observe(self, ms: float) -> None:
        self.times_ms.append(ms)

    def __call__(self, step: int) -> ProfilerAction:
        if self.recording_from is None:
            settled = self.stable and sum(self.times_ms) >= self.min_warmup_ms
            if step >= self.min_warmup and (settled or step >= self.max_warmup):
                self.recording_from = step
            else:
                return ProfilerAction.WARMUP
        k = step - self.recording_from
        if k < self.active - 1:
            return ProfilerAction.RECORD
        if k == self.active - 1:
            return ProfilerAction.RECORD_AND_SAVE
        return ProfilerAction.NONE

    def to_dict(self) -> dict:
        return {"warmup_steps": self.recording_from, "stable": self.stable if self.times_ms else None,
                "warmup_step_ms": [round(t, 4) for t in self.times_ms], "active_steps": self.active}


class _StepClock:
    """Times steps without stopping the GPU: a step's time is read once the next step is queued behind it,
    so warm-up runs back to back like the measurement (a synchronisation per step lets the GPU cool)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending = None

    def run(self, fn: Callable[[], object]) -> float | None:
        """Run one step; return the previous step's time (ms) once known, or None."""
        if not self.cuda:
            import time

            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        previous, self.pending = self.pending, (start, end)
        if previous is None:
            return None
        previous[1].synchronize()  # the step just queued keeps the GPU busy meanwhile
        return previous[0].elapsed_time(previous[1])


def record_trace(step_fn: Callable[[], object], *, trace_dir: Path, worker_name: str, active_steps: int,
                 device: torch.device, flush: Callable[[], object] | None = None, min_warmup: int = 2,
                 max_warmup: int = 40, min_warmup_ms: float = 0.0,
                 on_recording: Callable[[], object] | None = None,
                 on_recorded: Callable[[], object] | None = None) -> tuple[Path, StableSchedule]:
    """Run `step_fn` under the profiler: warm-up steps until stable, then `active_steps` recorded ones.

    `flush` runs before each step in its own region, so attribution can leave it out. `on_recording` is
    called when recording starts and `on_recorded` once the last recorded step has finished on the GPU,
    before the trace is exported (the GPU idles then): together they tag telemetry. Returns the trace file and the schedule (how many
    warm-up steps it took and whether they reached a stable time)."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    before = set(trace_dir.glob("*.pt.trace.json"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    schedule = StableSchedule(active=active_steps, min_warmup=min_warmup, max_warmup=max_warmup,
                              min_warmup_ms=min_warmup_ms if device.type == "cuda" else 0.0)
    clock = _StepClock(device)
    with quiet_kineto(), profile(activities=activities, record_shapes=True, schedule=schedule,
                                 on_trace_ready=tensorboard_trace_handler(str(trace_dir), worker_name=worker_name)) as prof:
        for _ in range(max_warmup + active_steps + 1):
            if flush is not None:
                with record_function(FLUSH_REGION):
                    flush()
            if schedule.warming_up:
                ms = clock.run(step_fn)
                if ms is not None:
                    schedule.observe(ms)
            else:
                step_fn()
                if prof.step_num >= schedule.recording_from + active_steps - 1:  # the last recorded step
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if on_recorded is not None:
                        on_recorded()
            was_warming = schedule.warming_up
            prof.step()
            if was_warming and not schedule.warming_up and on_recording is not None:
                on_recording()
            if schedule.recording_from is not None and prof.step_num >= schedule.recording_from + active_steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    written = sorted(set(trace_dir.glob("*.pt.trace.json")) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise_if_full(trace_dir)
        raise RuntimeError(f"torch.profiler wrote no trace into {trace_dir}")
    return written[-1], schedule


def read_trace_json(path: Path) -> dict:
    opener = gzip.open if str(path).endswith(".gz") else open  # committed traces are gzipped
    with opener(path, "rt") as fh:
        return json.load(fh)


def load_trace(path: Path) -> pd.DataFrame:
    """One row per complete ('X') event: host events with their ids, device events with correlation and
    their launch configuration (grid, block, registers, shared memory, stream)."""
    raw = read_trace_json(path)
    rows = []
    for e in raw.get("traceEvents", []):
        cat = e.get("cat")
        if e.get("ph") != "X" or cat not in HOST_CATEGORIES + DEVICE_CATEGORIES:
            continue
        args = e.get("args", {})
        row = {
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
        }
        if cat in DEVICE_CATEGORIES:
            row.update({column: args.get(key) for key, column in LAUNCH_ARGS.items()})
        rows.append(row)
    events = pd.DataFrame(rows)
    if events.empty:
        raise RuntimeError(f"{path} holds no events")
    for column in LAUNCH_ARGS.values():
        if column not in events:
            events[column] = None
    events["end"] = events["ts"] + events["dur"]
    return events


def device_properties(path: Path) -> dict:
    """The GPU the trace was taken on, as the trace itself records it (name, SM count)."""
    props = read_trace_json(path).get("deviceProperties") or [{}]
    return props[0] if props else {}

"""The measurement protocol of a layer run: every figure that is compared with another, taken in one power state.

The definition (profiler.timing.POLICY["protocol"]): training sees sustained, back-to-back work, so every
figure is taken with the GPU kept busy back to back, L2 flushed before each timed unit, and the units whose
figures are compared are interleaved in shuffled rounds so that they share each round's clock:

- a *unit* is one thing timed on its own: the layer step, each GEMM or fused attention of the floor alone
  (profiler.gemm_calls), and the ceiling GEMM (8192^3 in the layer's dtype). On a GPU each unit is replayed
  from a CUDA graph, so no host work sits between its kernels and a unit's kernels run at the GPU's pace;
- `kernel_maps`: one short eager trace names every kernel of every unit by the layer step that launched it
  (profiler.attribution, by region and autograd sequence number): a graph replays the kernels it captured in
  the order it captured them, so the k-th kernel of a replay is the k-th kernel of the eager call. Every
  replay's kernel names are compared with the map (a check that can fail);
- `timed_rounds`: CUDA events (no profiler) around the eager layer step and its graph replay, interleaved:
  the eager latency, the graph latency and whether the layer is launch-bound come from the same rounds;
- `traced_rounds`: one torch.profiler session of shuffled rounds of every unit's graph replays: the layer's
  per-component kernel times, each call alone (the floor) and the ceiling come from the same rounds;
- NVML clock and power are sampled in both kinds of round (profiler.telemetry) and compared.

A CPU has no graphs and no kernels: there every unit runs eagerly and the trace's ops stand for kernels (the
wiring, not the numbers). All of this returns small typed results; profiler.layer_profile composes them and
judges them, re-measuring a bounded number of times where a comparison fails (`MAX_ATTEMPTS`).
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, record_function, tensorboard_trace_handler

from .attribution import attribute_detailed, host_context, kind_of
from .timing import L2Flusher, Warmup, is_stable
from .trace import DEVICE_CATEGORIES, FLUSH_REGION, load_trace, quiet_kineto

UNIT_REGION = "unit/"  # user annotation around each replay in the traced rounds: unit/<name>#<round>.<rep>
LAYER, CEILING = "layer", "ceiling"
FLOOR_PREFIX = "floor:"
CEILING_N = 8192  # the ceiling GEMM: n^3, random data
TIMED_ROUNDS = 7
TRACED_ROUNDS = 5
UNIT_TARGET_MS = 3.0  # each unit repeats within a round until about this long (at most MAX_REPS times)
MAX_REPS = 8
MAX_ATTEMPTS = 3  # a failed comparison is measured again at most twice before it is reported
WARMUP_MIN_MS = 1000.0  # a power-capped GPU settles slowly: warm-up runs at least this long, back to back
WARMUP_MAX_MS = 5000.0
WARMUP_WINDOW_MS = 100.0  # warm-up windows compared: each at least this long


@dataclass
class Unit:
    """One thing timed on its own. `replay` runs it once as it is measured (its CUDA graph on a GPU)."""

    name: str
    eager: Callable[[], object]
    graph: torch.cuda.CUDAGraph | None = None
    flops: float = 0.0  # what the ceiling unit computes (its TFLOP/s is flops / time)

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.eager()


def capture(fn: Callable[[], object], device: torch.device) -> torch.cuda.CUDAGraph:
    """`fn` captured in a CUDA graph, after three warm calls on a side stream (capture's rules: the first
    calls allocate, pick cuBLAS algorithms, build rotary tables)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    return graph


def ceiling_call(dtype: torch.dtype, device: torch.device, n: int = CEILING_N) -> tuple[Callable[[], object], float]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def build_units(step: Callable[[], object], floor: dict[str, Callable[[], object]], *, device: torch.device,
                dtype: torch.dtype, ceiling: bool = True) -> tuple[dict[str, Unit], str | None]:
    """The layer step, each call alone and the ceiling GEMM as units, captured in CUDA graphs on a GPU. Where
    the layer step cannot be captured, every unit runs eagerly and the reason is returned."""
    units = {LAYER: Unit(LAYER, step)}
    units.update({f"{FLOOR_PREFIX}{c}": Unit(f"{FLOOR_PREFIX}{c}", fn) for c, fn in floor.items()})
    if ceiling and device.type == "cuda":
        fn, flops = ceiling_call(dtype, device)
        units[CEILING] = Unit(CEILING, fn, flops=flops)
    if device.type != "cuda":
        return units, "no CUDA graphs on a CPU: every unit runs eagerly"
    try:
        for unit in units.values():
            unit.graph = capture(unit.eager, device)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # capture is best effort: measure eagerly
        for unit in units.values():
            unit.graph = None
        torch.cuda.synchronize(device)
        return units, f"CUDA graph capture failed ({str(exc).splitlines()[0][:160]}): every unit runs eagerly"
    return units, None


def _flusher(device: torch.device, flush_l2: bool) -> Callable[[], object]:
    return L2Flusher(device) if (flush_l2 and device.type == "cuda") else (lambda: None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _schedule(recorded: int):
    """One warm-up step, then `recorded` steps, the last of them saved."""
    def action(step: int) -> ProfilerAction:
        if step == 0:
            return ProfilerAction.WARMUP
        if step < recorded:
            return ProfilerAction.RECORD
        if step == recorded:
            return ProfilerAction.RECORD_AND_SAVE
        return ProfilerAction.NONE
    return action


def _record(plan: list[tuple[str, Callable[[], object], str]], *, device: torch.device, trace_dir: Path,
            worker_name: str, flush: Callable[[], object], record_shapes: bool,
            on_recording: Callable[[], object] | None = None,
            on_recorded: Callable[[], object] | None = None) -> Path:
    """Trace `plan` (label, fn, region): one profiler step per entry, the flush before each in its own region,
    `fn` inside `region` (if any). The first entry is the profiler's warm-up and is not recorded."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    before = set(trace_dir.glob("*.pt.trace.json"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with quiet_kineto(), profile(activities=activities, record_shapes=record_shapes, schedule=_schedule(len(plan) - 1),
                                 on_trace_ready=tensorboard_trace_handler(str(trace_dir), worker_name=worker_name)) as prof:
        for i, (_, fn, region) in enumerate(plan):
            with record_function(FLUSH_REGION):
                flush()
            if region:
                with record_function(region):
                    fn()
            else:
                fn()
            if i == 1 and on_recording is not None:
                on_recording()
            if i == len(plan) - 1:
                _sync(device)
                if on_recorded is not None:
                    on_recorded()
            prof.step()
    _sync(device)
    written = sorted(set(trace_dir.glob("*.pt.trace.json")) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"torch.profiler wrote no trace into {trace_dir}")
    return written[-1]


# ---- kernel maps: every unit's kernels named by the step that launched them ---------------------------------
@dataclass
class KernelMaps:
    maps: dict[str, pd.DataFrame]  # unit -> its kernels in launch order: pass, component, role, kind, name
    host: pd.DataFrame  # the layer step's host events (shapes, attention ops)
    left_out: dict


def kernel_maps(units: dict[str, Unit], *, device: torch.device, flush_l2: bool = True) -> KernelMaps:
    """One eager call of each unit under the profiler (after two untraced ones), attributed by region."""
    flush = _flusher(device, flush_l2)
    for unit in units.values():
        unit.eager()
        unit.eager()
    names = list(units)
    plan = [(names[0], units[names[0]].eager, "")] + [(n, units[n].eager, "") for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        path = _record(plan, device=device, trace_dir=Path(tmp), worker_name="kernel-map", flush=flush,
                       record_shapes=True)
        events = load_trace(path)
    activities, left_out = attribute_detailed(events)
    steps = sorted(activities["step"].unique()) if len(activities) else []
    maps = {}
    by_step = {s: g.sort_values("ts").reset_index(drop=True) for s, g in activities.groupby("step")}
    # the recorded steps are numbered from 1 (step 0 was the profiler's warm-up), one per unit, in order
    first = min(steps) if steps else 1
    for i, name in enumerate(names):
        acts = by_step.get(first + i, activities.iloc[0:0])
        if name == CEILING:  # launched outside every layer region: it is the ceiling's own kernel
            acts = acts.assign(component=CEILING, kind="ceiling", role="", launched=True)
        maps[name] = acts
    host = host_context(events)
    host = host[host["step"] == first]
    return KernelMaps(maps, host, left_out)


# ---- warm-up: back to back until the layer's time stops moving -----------------------------------------------
def warm_up(units: dict[str, Unit], *, device: torch.device, flush_l2: bool = True, min_windows: int = 2,
            max_windows: int = 40, min_ms: float = WARMUP_MIN_MS, max_ms: float = WARMUP_MAX_MS,
            window_ms: float = WARMUP_WINDOW_MS) -> Warmup:
    """Windows of back-to-back rounds of every unit (each window at least `window_ms` long, its layer replays
    timed with CUDA events) until two consecutive windows' layer medians agree (profiler.timing.is_stable)
    after at least `min_windows` windows and `min_ms`, or until `max_windows` or `max_ms` (then reported as not
    stable). A window of rounds, not a round, is the unit of comparison: on the H200 a graph's time drifted by
    8% over ~100 ms of back-to-back rounds at a steady SM clock, which two 3 ms rounds cannot see."""
    flush = _flusher(device, flush_l2)
    warmup = Warmup()
    t0 = time.perf_counter()
    while True:
        samples, started = [], time.perf_counter()
        while True:
            for name, unit in units.items():
                for _ in range(3 if name == LAYER else 1):
                    flush()
                    if name == LAYER:
                        samples.append(_timed(unit.replay, device))
                    else:
                        unit.replay()
            if device.type != "cuda" or (time.perf_counter() - started) * 1e3 >= window_ms:
                break
        warmup.window_medians_ms.append(statistics.median(_read(samples, device)))
        warmup.spent_ms = (time.perf_counter() - t0) * 1e3
        warmup.stable = is_stable(warmup.window_medians_ms)
        done = len(warmup.window_medians_ms)
        if (warmup.stable and done >= min_windows and warmup.spent_ms >= min_ms) or done >= max_windows \
                or warmup.spent_ms >= max_ms:
            return warmup


def _timed(fn: Callable[[], object], device: torch.device):
    if device.type != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    return start, end


def _read(samples: list, device: torch.device) -> list[float]:
    if device.type != "cuda":
        return list(samples)
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in samples]


def repetitions(units: dict[str, Unit], device: torch.device, flush_l2: bool = True) -> dict[str, int]:
    """How many times each unit repeats in a round: about UNIT_TARGET_MS of it, 1..MAX_REPS times."""
    flush = _flusher(device, flush_l2)
    reps = {}
    for name, unit in units.items():
        flush()
        ms = statistics.median(_read([_timed(unit.replay, device) for _ in range(2)], device))
        reps[name] = max(1, min(MAX_REPS, math.ceil(UNIT_TARGET_MS / max(ms, 1e-3))))
    return reps


# ---- timed rounds: eager and graph latency of the layer, interleaved -----------------------------------------
@dataclass
class TimedRounds:
    eager_ms: list[list[float]]  # per round, every eager repetition
    graph_ms: list[list[float]]  # per round, every graph replay (empty lists off CUDA)

    @property
    def eager(self) -> list[float]:
        return [x for r in self.eager_ms for x in r]

    @property
    def graph(self) -> list[float]:
        return [x for r in self.graph_ms for x in r]

    def paired_launch_gap_ms(self) -> list[float]:
        """Per round: median eager minus median graph latency (the host's share, taken in one state)."""
        return [statistics.median(e) - statistics.median(g) for e, g in zip(self.eager_ms, self.graph_ms) if e and g]


def timed_rounds(layer: Unit, *, device: torch.device, reps: int, rounds: int = TIMED_ROUNDS, flush_l2: bool = True,
                 seed: int = 0) -> TimedRounds:
    """`rounds` rounds of `reps` eager steps and `reps` graph replays of the layer, in a shuffled order per
    round, each bracketed by its own CUDA events with the L2 flushed before it; one synchronisation per round."""
    flush = _flusher(device, flush_l2)
    rng = random.Random(seed)
    has_graph = layer.graph is not None
    eager, graph = [], []
    for _ in range(rounds):
        order = ["eager"] * reps + (["graph"] * reps if has_graph else [])
        rng.shuffle(order)
        marks = {"eager": [], "graph": []}
        for what in order:
            flush()
            marks[what].append(_timed(layer.eager if what == "eager" else layer.replay, device))
        eager.append(_read(marks["eager"], device))
        graph.append(_read(marks["graph"], device) if has_graph else [])
    return TimedRounds(eager, graph)


# ---- traced rounds: every unit's replays under one profiler session ------------------------------------------
@dataclass
class TracedRounds:
    trace_path: Path
    activities: pd.DataFrame  # one row per kernel of every replay: unit, round, rep, step, pass, component, ...
    mismatches: list[dict] = field(default_factory=list)  # replays whose kernels differ from their unit's map


def traced_rounds(units: dict[str, Unit], maps: KernelMaps, *, device: torch.device, reps: dict[str, int],
                  trace_dir: Path, worker_name: str, rounds: int = TRACED_ROUNDS, flush_l2: bool = True,
                  seed: int = 0, on_recording: Callable[[], object] | None = None,
                  on_recorded: Callable[[], object] | None = None) -> TracedRounds:
    """`rounds` rounds; in each, the units in a shuffled order, each replayed `reps[unit]` times back to back,
    each replay one profiler step inside region unit/<name>#<round>.<rep> with the L2 flush before it."""
    flush = _flusher(device, flush_l2)
    rng = random.Random(seed)
    plan = [("warm-up", units[LAYER].replay, "")]
    for r in range(rounds):
        names = list(units)
        rng.shuffle(names)
        for name in names:
            for k in range(reps[name]):
                plan.append((name, units[name].replay, f"{UNIT_REGION}{name}#{r}.{k}"))
    path = _record(plan, device=device, trace_dir=trace_dir, worker_name=worker_name, flush=flush,
                   record_shapes=device.type != "cuda", on_recording=on_recording, on_recorded=on_recorded)
    events = load_trace(path)
    if device.type == "cuda" and any(u.graph is not None for u in units.values()):
        activities, mismatches = map_replays(events, maps.maps)
    else:
        activities, mismatches = attribute_units(events), []
    return TracedRounds(path, activities, mismatches)


def _unit_regions(events: pd.DataFrame) -> pd.DataFrame:
    regions = events[(events["cat"] == "user_annotation") & events["name"].str.startswith(UNIT_REGION)].copy()
    label = regions["name"].str[len(UNIT_REGION):]
    regions["unit"] = label.str.rsplit("#", n=1).str[0]
    numbers = label.str.rsplit("#", n=1).str[1].str.split(".", n=1)
    regions["round"] = numbers.str[0].astype(int)
    regions["rep"] = numbers.str[1].astype(int)
    return regions.sort_values("ts").reset_index(drop=True)


def attribute_units(events: pd.DataFrame) -> pd.DataFrame:
    """Eager replays (a CPU, or a GPU where capture failed): ordinary attribution, each profiler step tagged
    with the unit whose region it holds."""
    activities, _ = attribute_detailed(events)
    regions = _unit_regions(events)
    steps = events[(events["cat"] == "user_annotation") & events["name"].str.startswith("ProfilerStep#")]
    step_of = {}
    for _, region in regions.iterrows():
        hit = steps[(steps["ts"] <= region["ts"]) & (steps["end"] >= region["end"])]
        if len(hit):
            step_of[int(hit.iloc[0]["name"].split("#")[1])] = (region["unit"], region["round"], region["rep"])
    tags = activities["step"].map(step_of)
    keep = tags.notna()
    activities = activities[keep].copy()
    tags = tags[keep]
    activities["unit"] = [t[0] for t in tags]
    activities["round"] = [t[1] for t in tags]
    activities["rep"] = [t[2] for t in tags]
    ceiling = activities["unit"] == CEILING
    activities.loc[ceiling, ["component", "kind", "role"]] = [CEILING, "ceiling", ""]
    return activities.reset_index(drop=True)


def map_replays(events: pd.DataFrame, maps: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[dict]]:
    """Graph replays: each kernel joined through its correlation id to the graph launch, which lies in one
    unit region; the k-th kernel of a replay takes the name of the k-th kernel of its unit's map. A kernel
    with no launch in a unit region (a stray kernel on the stream) is unattributed, in the replay whose GPU
    interval it falls in."""
    regions = _unit_regions(events)
    host = events[events["cat"].isin(("cuda_runtime", "cuda_driver")) & events["correlation"].notna()]
    device = events[events["cat"].isin(DEVICE_CATEGORIES)].sort_values("ts").reset_index(drop=True)
    flush_regions = events[(events["cat"] == "user_annotation") & (events["name"] == FLUSH_REGION)]
    # which replay (region index) each launch lies in; which launches are flushes
    starts, ends = regions["ts"].to_numpy(), regions["end"].to_numpy()
    idx = np.searchsorted(starts, host["ts"].to_numpy(), side="right") - 1
    inside = (idx >= 0) & (host["ts"].to_numpy() <= ends[np.clip(idx, 0, None)]) if len(regions) else np.zeros(len(host), bool)
    launch_region = dict(zip(host["correlation"], np.where(inside, idx, -1)))
    flush_regions = flush_regions.sort_values("ts")
    f_starts, f_ends = flush_regions["ts"].to_numpy(), flush_regions["end"].to_numpy()
    fi = np.searchsorted(f_starts, host["ts"].to_numpy(), side="right") - 1
    in_flush = (fi >= 0) & (host["ts"].to_numpy() <= f_ends[np.clip(fi, 0, None)]) if len(f_starts) else np.zeros(len(host), bool)
    flush_corr = set(host["correlation"][in_flush])
    device = device[~device["correlation"].isin(flush_corr)]
    device = device.assign(replay=device["correlation"].map(launch_region).fillna(-1).astype(int))
    rows, mismatches = [], []
    # stray kernels (no launch in any unit region) go to the replay whose GPU interval holds their start
    replay_start = device[device["replay"] >= 0].groupby("replay")["ts"].min().sort_values()
    stray = device["replay"] < 0
    if stray.any() and len(replay_start):
        pos = np.searchsorted(replay_start.to_numpy(), device.loc[stray, "ts"].to_numpy(), side="right") - 1
        device.loc[stray, "replay"] = np.where(pos >= 0, replay_start.index.to_numpy()[np.clip(pos, 0, None)], -1)
    device = device[device["replay"] >= 0]
    for replay, kernels in device.groupby("replay", sort=True):
        region = regions.iloc[int(replay)]
        unit = region["unit"]
        own = kernels[kernels["correlation"].map(launch_region) == replay].sort_values("ts")
        strays = kernels[kernels["correlation"].map(launch_region) != replay]
        reference = maps.get(unit, pd.DataFrame(columns=["name"]))
        base = {"unit": unit, "round": int(region["round"]), "rep": int(region["rep"]), "step": int(replay)}
        matched, problem = align(list(own["name"]), list(reference["name"]))
        if problem:
            mismatches.append({**base, "kernels": int(len(own)), "expected": int(len(reference)), "first_difference": problem})
        for k, (_, kernel) in enumerate(own.iterrows()):
            j = matched.get(k)
            rows.append({**base, **_row(kernel, reference.iloc[j] if j is not None else None)})
        for _, kernel in strays.iterrows():
            rows.append({**base, **_row(kernel, None)})
    activities = pd.DataFrame(rows)
    if activities.empty:
        return activities, mismatches
    activities["kind"] = kind_of(activities["component"])
    activities.loc[activities["component"] == CEILING, "kind"] = "ceiling"
    return activities.sort_values("ts").reset_index(drop=True), mismatches


NOT_KERNELS = ("Memset", "Memcpy")  # copy-engine work a graph may report apart from (or not at all): noted, not failed


def align(replayed: list[str], eager: list[str]) -> tuple[dict[int, int], str]:
    """Replayed kernel index -> eager kernel index, matched by name in order (difflib), and what differs ('' if
    nothing). A replayed kernel that matches none stays unattributed; an eager kernel the replay lacks is a
    difference unless it is a memset or copy (a graph's memset nodes need not be reported like eager memsets)."""
    if replayed == eager:
        return {i: i for i in range(len(eager))}, ""
    import difflib

    blocks = difflib.SequenceMatcher(None, replayed, eager, autojunk=False).get_matching_blocks()
    matched = {a + i: b + i for a, b, size in blocks for i in range(size)}
    extra = [i for i in range(len(replayed)) if i not in matched]
    taken = set(matched.values())
    missing = [j for j in range(len(eager)) if j not in taken and not eager[j].startswith(NOT_KERNELS)]
    if extra:
        return matched, f"replayed kernel {extra[0]} ({replayed[extra[0]][:80]!r}) is not in the eager call " \
                        f"({len(replayed)} replayed, {len(eager)} eager)"
    if missing:
        return matched, f"eager kernel {missing[0]} ({eager[missing[0]][:80]!r}) did not run in the replay " \
                        f"({len(replayed)} replayed, {len(eager)} eager)"
    return matched, ""


def _row(kernel: pd.Series, ref: pd.Series | None) -> dict:
    row = {"name": kernel["name"], "dur_us": float(kernel["dur"]), "ts": float(kernel["ts"]),
           "end": float(kernel["end"]), "launched": ref is not None, "op": ref["op"] if ref is not None else None,
           "pass": ref["pass"] if ref is not None else "forward",
           "component": ref["component"] if ref is not None else "unattributed",
           "region": ref["region"] if ref is not None else None, "role": ref["role"] if ref is not None else ""}
    for column in ("grid", "block", "registers", "shared_memory", "blocks_per_sm", "stream"):
        row[column] = kernel.get(column)
    row["op_dims"] = ref["op_dims"] if ref is not None and "op_dims" in ref else None
    return row


def replay_totals(activities: pd.DataFrame) -> pd.DataFrame:
    """Per replay: unit, round, kernel time (busy), GPU span from first start to last end, attributed time."""
    if activities.empty:
        return pd.DataFrame(columns=["step", "unit", "round", "busy_us", "span_us", "attributed_us"])
    g = activities.groupby("step")
    attributed = activities[activities["kind"] != "unattributed"].groupby("step")["dur_us"].sum()
    return pd.DataFrame({"unit": g["unit"].first(), "round": g["round"].first(), "busy_us": g["dur_us"].sum(),
                         "span_us": g["end"].max() - g["ts"].min(),
                         "attributed_us": attributed}).fillna({"attributed_us": 0.0}).reset_index()


def unit_activities(activities: pd.DataFrame, unit: str) -> pd.DataFrame:
    return activities[activities["unit"] == unit] if len(activities) else activities


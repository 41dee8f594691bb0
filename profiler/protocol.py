"""The measurement protocol of a layer run: every figure that is compared with another, taken in one power state.

The definition (profiler.timing.POLICY["protocol"]): training sees sustained, back-to-back work, so every
GPU-side figure is taken with the GPU kept busy back to back, L2 flushed before each timed unit, and the units
whose figures are compared are interleaved in the same rounds so that they share each round's clock:

- a *unit* is one thing timed on its own: the layer step, and each GEMM or fused attention of the floor alone
  (profiler.gemm_calls);
- a *round* runs every unit several times (the layer to about LAYER_TARGET_MS, each call alone to about
  FLOOR_TARGET_MS) in a shuffled order, a flush before each instance; PLANS such orders are each captured as
  one CUDA graph, so a round is one launch and no host work sits between its kernels (on an H200, rounds
  replayed from Python one unit at a time left the GPU idle at 130-170 W while a back-to-back warm-up drew
  500-600 W: the rounds and the warm-up ran in different power states);
- `kernel_maps`: one short eager trace names every kernel of every unit by the layer step that launched it
  (profiler.attribution, by region and autograd sequence number); a graph replays the kernels it captured in
  the order it captured them, so each round's kernels are aligned by name with its plan's eager kernels
  (a check that can fail);
- `interleaved_rounds`: eager rounds of the layer step, each step bracketed by events (the eager step, host
  included: the launch-bound verdict), then one torch.profiler session whose traced rounds (the layer's
  latency, i.e. its instances' GPU span, its per-component kernel times and each call alone, the floor, all
  from the same rounds) alternate with untraced blocks, the profiler's collection switched off, of CUDA
  events around a round graph's replay (compared with the traced rounds' span). The compared figures thus
  sample one stretch of the clock in alternation, not two phases one after the other; the session goes on until
  the timed rounds' mean is precise (`Extension`: a power-capped clock's levels are averaged over, not sampled);
- NVML clock and power are sampled in every block, tagged by what runs (profiler.telemetry), and compared.

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
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, record_function, tensorboard_trace_handler

from .attribution import attribute_detailed, host_context, kind_of
from .outputs import raise_if_full
from .timing import L2Flusher, Warmup, is_stable
from .trace import DEVICE_CATEGORIES, FLUSH_REGION, load_trace, quiet_kineto

UNIT_REGION = "unit/"  # user annotation around each eager unit call (CPU): unit/<name>#<round>.<rep>
ROUND_REGION = "round/"  # user annotation around each round graph's replay (GPU): round/<plan>#<round>
LAYER, FLUSH = "layer", "flush"
FLOOR_PREFIX = "floor:"
TIMED_ROUNDS = 7
TRACED_ROUNDS = 5
PLANS = 3  # orders of the units in a round (each captured as one CUDA graph), cycled round after round
# per round: the layer repeats to about 8 ms and each call alone to about 1 ms, so that the layer sets the round's
# power state (on the H200, floor GEMMs that made up two thirds of a round drew the clock down for the layer too)
LAYER_TARGET_MS, FLOOR_TARGET_MS = 8.0, 1.0
MAX_REPS = 16
EAGER_STEPS = 8  # eager layer steps per eager round
MAX_ATTEMPTS = 3  # a failed comparison is measured again at most twice before it is reported
WARMUP_MIN_MS = 1000.0  # a power-capped GPU settles slowly: warm-up runs at least this long, back to back
WARMUP_MAX_MS = 5000.0
WARMUP_WINDOW_MS = 100.0  # warm-up windows compared: each at least this long
# An attempt's interleaved rounds (traced and timed, alternating) last at least this long on a GPU. Under the 700 W
# cap of an H200 the SM clock holds a level for ~3 rounds (~100 ms) and then steps by 50-150 MHz; ten rounds of a
# power-capped 2.7B layer (~400 ms) caught 3-4 such levels, and the latency medians of three runs differed by up
# to 5.0% with their rounds' clocks (gpt3-2.7b flash: 2480 us at 1740 MHz, 2604 us at 1650; evidence/h200/
# layer-runs). A longer window averages over more levels. The count is capped, since the trace holds every
# round's kernels: rounds shorter than 15 ms stop at the cap first (pythia-1b: 40 rounds of 9-12 ms, 0.7-1.0 s).
ATTEMPT_WINDOW_MS = 1200.0
MAX_ROUNDS_PER_ATTEMPT = 40
# Past that window an attempt goes on, round by round, until its timed rounds say the window's mean is known
# to PRECISION_TARGET (`relative_error`), for at most EXTENDED_WINDOW_MS or MOST_ROUNDS_PER_ATTEMPT rounds of each
# kind. Why: three 1.2 s runs of the same power-capped layers differed by up to 3.4% (gpt3-2.7b eager: rounds at
# 1575-1845 MHz, a level held ~200 ms, so a window saw about six of them; layer-runs/three-runs-ee894d8), which is
# the spread a mean of six such levels has. A layer at a steady clock is precise as soon as its error can be
# judged (MIN_BATCHES x BATCH_MS, 2.4 s), and stops there.
# The error is judged by batch means over batches of at least BATCH_MS (longer than the ~200 ms a level holds, so
# batches are roughly independent), from MIN_BATCHES batches on. With 200 ms batches and 6 of them, pythia-12b
# stopped at 1.4 s with its error estimated at 0.37% and read 2243 us, against 2181 us from 8 s in the next run
# (H200, c249979): an estimate from few batches is itself noisy, and stopping at its first low reading favours it.
PRECISION_TARGET = 0.004
BATCH_MS = 300.0
MIN_BATCHES = 8
EXTENDED_WINDOW_MS = 12000.0
MOST_ROUNDS_PER_ATTEMPT = 480


@dataclass
class Unit:
    """One thing timed on its own: the layer step, or one call of the floor (`eager` runs it once)."""

    name: str
    eager: Callable[[], object]


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


def build_units(step: Callable[[], object], floor: dict[str, Callable[[], object]]) -> dict[str, Unit]:
    """The layer step and each call alone, as units."""
    units = {LAYER: Unit(LAYER, step)}
    units.update({f"{FLOOR_PREFIX}{c}": Unit(f"{FLOOR_PREFIX}{c}", fn) for c, fn in floor.items()})
    return units


def _flusher(device: torch.device, flush_l2: bool) -> Callable[[], object]:
    return L2Flusher(device) if (flush_l2 and device.type == "cuda") else (lambda: None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _schedule(step: int) -> ProfilerAction:
    """Step 0 is the profiler's warm-up; every later step is recorded, and the trace is saved when the session
    ends (after the last entry, however many there were: an attempt decides its length as it goes)."""
    return ProfilerAction.WARMUP if step == 0 else ProfilerAction.RECORD


def _record(plan: Iterable[tuple[str, Callable[[], object], str]], *, device: torch.device, trace_dir: Path,
            worker_name: str, flush: Callable[[], object], record_shapes: bool,
            on_recording: Callable[[], object] | None = None,
            on_recorded: Callable[[], object] | None = None,
            between: Callable[[int], object] | None = None) -> Path:
    """Trace `plan` (label, fn, region): one profiler step per entry, the flush before each in its own region,
    `fn` inside `region` (if any). The first entry is the profiler's warm-up and is not recorded. With
    `between`, after each recorded entry i (from 0) the profiler's collection is switched off (no CUPTI, no op
    callbacks), `between(i)` runs untraced, and collection is switched on again: traced and untraced work
    interleave inside one session, with no trace export between them. `plan` may be a generator: the next
    entry is asked for after the last one's `between` has run, so it can depend on what that measured."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    before = set(trace_dir.glob("*.pt.trace.json"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    entries = iter(plan)
    entry = next(entries, None)
    i = 0
    with quiet_kineto(), profile(activities=activities, record_shapes=record_shapes, schedule=_schedule,
                                 on_trace_ready=tensorboard_trace_handler(str(trace_dir), worker_name=worker_name)) as prof:
        while entry is not None:
            _, fn, region = entry
            with record_function(FLUSH_REGION):
                flush()
            if region:
                with record_function(region):
                    fn()
            else:
                fn()
            if i == 1 and on_recording is not None:
                on_recording()
            if between is not None and i >= 1:
                _sync(device)  # the traced work ends inside the trace (toggling off synchronises too)
                prof.toggle_collection_dynamic(False, activities)
                between(i - 1)
                _sync(device)
                prof.toggle_collection_dynamic(True, activities)
            entry = next(entries, None)
            if entry is None:  # the last step: the session's end saves the trace (no empty step after it)
                _sync(device)
                if on_recorded is not None:
                    on_recorded()
            else:
                prof.step()
            i += 1
    _sync(device)
    written = sorted(set(trace_dir.glob("*.pt.trace.json")) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise_if_full(trace_dir)
        raise RuntimeError(f"torch.profiler wrote no trace into {trace_dir}")
    return written[-1]


# ---- kernel maps: every unit's kernels named by the step that launched them ---------------------------------
@dataclass
class KernelMaps:
    maps: dict[str, pd.DataFrame]  # unit -> its kernels in launch order: pass, component, role, kind, name
    host: pd.DataFrame  # the layer step's host events (shapes, attention ops)
    left_out: dict


def kernel_maps(units: dict[str, Unit], *, device: torch.device, flush_l2: bool = True) -> KernelMaps:
    """One eager call of each unit under the profiler (after two untraced ones), attributed by region; the
    L2 flush is a unit of its own here (FLUSH), so that its kernels can be told apart inside a round's graph."""
    flush = _flusher(device, flush_l2)
    units = {**units, FLUSH: Unit(FLUSH, flush)}
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
        if name == FLUSH:  # launched outside every layer region: the flush's own kernels
            acts = acts.assign(component=FLUSH, kind=FLUSH, role="", launched=True)
        maps[name] = acts
    host = host_context(events)
    host = host[host["step"] == first]
    return KernelMaps(maps, host, left_out)


# ---- rounds: every unit in a shuffled order, captured as one CUDA graph per order -------------------------
@dataclass
class Rounds:
    """The plans (orders of unit instances) and, on a GPU, one CUDA graph per plan replaying it whole."""
    plans: list[list[tuple[str, int]]]  # per plan: (unit, repetition) in order
    graphs: list  # torch.cuda.CUDAGraph per plan (empty off CUDA)
    calls: dict[str, Callable[[], object]]
    flush: Callable[[], object]

    def run(self, r: int, regions: bool = False) -> None:
        """Round r: plan r % len(plans), its graph replayed at once (GPU) or its calls one by one (CPU; with
        `regions`, each in unit/<name>#<round>.<rep>)."""
        p = r % len(self.plans)
        if self.graphs:
            self.graphs[p].replay()
            return
        for unit, k in self.plans[p]:
            self.flush()
            if regions:
                with record_function(f"{UNIT_REGION}{unit}#{r}.{k}"):
                    self.calls[unit]()
            else:
                self.calls[unit]()


def repetitions(units: dict[str, Unit], device: torch.device, flush_l2: bool = True) -> dict[str, int]:
    """Instances of each unit in a round: the layer to about LAYER_TARGET_MS, each call alone to
    FLOOR_TARGET_MS, 1..MAX_REPS times."""
    flush = _flusher(device, flush_l2)
    reps = {}
    for name, unit in units.items():
        flush()
        ms = statistics.median(_read([_timed(unit.eager, device) for _ in range(3)], device))
        target = LAYER_TARGET_MS if name == LAYER else FLOOR_TARGET_MS
        reps[name] = max(1, min(MAX_REPS, math.ceil(target / max(ms, 1e-3))))
    return reps


def build_rounds(units: dict[str, Unit], reps: dict[str, int], *, device: torch.device, flush_l2: bool = True,
                 plans: int = PLANS, seed: int = 0) -> tuple[Rounds, str | None]:
    """`plans` shuffled orders of every unit instance, each captured (flush before every instance) as one CUDA
    graph: a round then runs back to back on the GPU, with no host work between its kernels. Where capture
    fails the rounds run eagerly, and the reason is returned."""
    rng = random.Random(seed)
    instances = [(u, k) for u in units for k in range(reps[u])]
    orders = []
    for _ in range(plans):
        order = list(instances)
        rng.shuffle(order)
        orders.append(order)
    flush = _flusher(device, flush_l2)
    calls = {name: unit.eager for name, unit in units.items()}
    rounds = Rounds(orders, [], calls, flush)
    if device.type != "cuda":
        return rounds, "no CUDA graphs on a CPU: every unit runs eagerly"

    def whole(order):
        def run():
            for unit, _ in order:
                flush()
                calls[unit]()
        return run

    try:
        rounds.graphs = [capture(whole(order), device) for order in orders]
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # capture is best effort: measure eagerly
        rounds.graphs = []
        torch.cuda.synchronize(device)
        return rounds, f"CUDA graph capture failed ({str(exc).splitlines()[0][:160]}): every unit runs eagerly"
    return rounds, None


def warm_up(rounds: Rounds, *, device: torch.device, min_windows: int = 2, max_windows: int = 40,
            min_ms: float = WARMUP_MIN_MS, max_ms: float = WARMUP_MAX_MS, window_ms: float = WARMUP_WINDOW_MS) -> Warmup:
    """Windows of back-to-back rounds (each window at least `window_ms`, each round timed with CUDA events)
    until two consecutive windows' median round times agree (profiler.timing.is_stable) after at least
    `min_windows` windows and `min_ms`, or until `max_windows` or `max_ms` (then reported as not stable). On the
    H200 a graph's time drifted by 8% over ~100 ms of back-to-back work at a steady SM clock: a window of
    rounds, not one round, is what is compared. Only rounds of the same plan are compared (plans differ)."""
    warmup = Warmup()
    t0 = time.perf_counter()
    r = 0
    while True:
        samples, started = [], time.perf_counter()
        while True:
            mark = _timed(lambda r=r: rounds.run(r), device)
            if r % len(rounds.plans) == 0:
                samples.append(mark)
            r += 1
            if samples and (device.type != "cuda" or (time.perf_counter() - started) * 1e3 >= window_ms):
                break
        warmup.window_medians_ms.append(statistics.median(_read(samples, device)))
        warmup.spent_ms = (time.perf_counter() - t0) * 1e3
        warmup.stable = is_stable(warmup.window_medians_ms)
        done = len(warmup.window_medians_ms)
        if (warmup.stable and done >= min_windows and warmup.spent_ms >= min_ms) or done >= max_windows \
                or warmup.spent_ms >= max_ms:
            return warmup


def rounds_per_attempt(round_ms: float | None, least: int, *, window_ms: float = ATTEMPT_WINDOW_MS,
                       most: int = MAX_ROUNDS_PER_ATTEMPT) -> int:
    """Rounds of each kind (traced, timed) in an attempt: at least `least`, and enough that the alternating
    blocks (two rounds each) last `window_ms`, at most `most` (or `least`, if larger). Without a round time
    (a CPU, where the window means nothing) `least`."""
    if not round_ms or round_ms <= 0 or not math.isfinite(round_ms):
        return least
    return max(least, min(most, math.ceil(window_ms / (2 * round_ms))))


def relative_error(round_ms: list[float], plan_of: list[int], batch: int,
                   min_batches: int = MIN_BATCHES) -> float | None:
    """The relative standard error of the mean of a series of round times, by batch means: each round as a
    ratio to its plan's median (plans hold the same work in other orders), consecutive rounds in batches of
    `batch` (a last, shorter batch is left out), the spread of the batch means over the square root of their
    count. Batch means, not the rounds' own spread: under a power cap neighbouring rounds share a clock level,
    so n rounds are far fewer than n independent samples. None below `min_batches` batches (too few to judge)."""
    if batch < 1 or len(round_ms) != len(plan_of):
        raise ValueError(f"relative_error: batch {batch} (needs >= 1), {len(round_ms)} times for {len(plan_of)} plans")
    medians = {p: statistics.median([t for t, q in zip(round_ms, plan_of) if q == p]) for p in set(plan_of)}
    ratios = [t / medians[p] for t, p in zip(round_ms, plan_of) if medians[p] > 0]
    k = len(ratios) // batch
    if k < max(2, min_batches):
        return None
    means = [statistics.fmean(ratios[j * batch:(j + 1) * batch]) for j in range(k)]
    return statistics.stdev(means) / math.sqrt(k) / statistics.fmean(means)


@dataclass(frozen=True)
class Extension:
    """How far an attempt goes on past its least rounds: until the timed rounds' mean is known to `target`
    (relative standard error), judged over batches of `batch_ms`; at most `window_ms` of interleaved rounds or
    `most` rounds of each kind."""
    target: float = PRECISION_TARGET
    batch_ms: float = BATCH_MS
    min_batches: int = MIN_BATCHES
    window_ms: float = EXTENDED_WINDOW_MS
    most: int = MOST_ROUNDS_PER_ATTEMPT

    def batch_rounds(self, span_ms: float, done: int) -> int:
        """Rounds per batch: enough consecutive (traced, timed) pairs to span `batch_ms`, at the pace so far."""
        pace = span_ms / done if done else 0.0
        return max(1, math.ceil(self.batch_ms / pace)) if pace > 0 else 1

    def stop(self, done: int, least: int, span_ms: float, error: float | None) -> str | None:
        """Why the attempt stops after `done` rounds of each kind (None: it goes on): 'least' where the least
        count was enough ('precise' once past it), 'window' or 'rounds' at a bound."""
        if done < least:
            return None
        if error is not None and error <= self.target:
            return "precise" if done > least else "least"
        if span_ms >= self.window_ms:
            return "window"
        if done >= max(self.most, least):
            return "rounds"
        return None


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


# ---- timed rounds: the round graphs and the eager layer step, with CUDA events -------------------------------
@dataclass
class TimedRounds:
    round_ms: list[list[float]]  # per plan: every timed replay of its round graph
    eager_ms: list[list[float]]  # per eager round: every eager layer step
    stopped: str | None = None  # why the attempt stopped where it did (Extension.stop; None: a fixed count)
    relative_error: float | None = None  # of the timed rounds' mean when it stopped (relative_error)

    @property
    def eager(self) -> list[float]:
        return [x for r in self.eager_ms for x in r]


def eager_rounds(rounds: Rounds, layer: Unit, *, device: torch.device, n: int, eager_steps: int = EAGER_STEPS) -> list[list[float]]:
    """`n` eager rounds of `eager_steps` eager layer steps, each bracketed by its own events with the L2
    flushed before it, one round graph replayed before each eager round so the GPU keeps the rounds' load.
    An eager step's time includes whatever the host leaves the GPU idle. Taken outside the profiler's session:
    inside it, even with collection off, the profiler's hooks slowed each launch (pythia-1b's eager step took
    1.1-1.6 ms there against 0.41 ms outside, H200)."""
    eager = []
    for r in range(n):
        rounds.run(r)
        steps = []
        for _ in range(eager_steps):
            rounds.flush()
            steps.append(_timed(layer.eager, device))
        eager.append(_read(steps, device))
    return eager


def interleaved_rounds(rounds: Rounds, maps: KernelMaps, layer: Unit, *, device: torch.device, trace_dir: Path,
                       worker_name: str, n: int = TRACED_ROUNDS, eager_steps: int = EAGER_STEPS,
                       phase: Callable[[str | None], object] | None = None,
                       extension: Extension | None = None) -> tuple[TimedRounds, TracedRounds]:
    """`n` eager rounds of the layer step (`eager_rounds`), then one profiler session of `n` blocks, each: one
    traced round (region round/<plan>#<round>), then, with the profiler's collection switched off, one timed
    round (CUDA events around its graph's replay). The figures that are compared (the traced rounds' span,
    kernel times and floor against the timed rounds' events) then sample one stretch of the clock in
    alternation, tens of milliseconds apart, instead of two phases one after the other: under a power cap the
    SM clock wanders by 100-200 MHz over a few hundred milliseconds (H200, 2026-12-01), which phases of ~150 ms
    one after the other saw as different power states. No trace export sits between them either. The phase
    tag follows the GPU: each part is synchronised before the next tag, so a part's NVML samples are taken
    while its kernels run. With `extension` (the caller passes it on a GPU), the session goes on past `n` blocks
    until the timed rounds' mean is precise enough or a bound is reached (Extension.stop; the reason is in
    TimedRounds)."""
    tag = phase if phase is not None else (lambda _name: None)
    gpu = bool(rounds.graphs)
    tag("eager")
    eager = eager_rounds(rounds, layer, device=device, n=n, eager_steps=eager_steps)
    plans = len(rounds.plans)
    series: list[float] = []  # every timed round in order (round r ran plan r % plans): what the extension judges
    outcome: dict = {"stopped": None, "error": None}

    windows: list[list[float]] = []  # per traced round: perf_counter() from its launch to its end (synchronised)

    def traced(r: int):
        def run():
            tag("trace")
            windows.append([time.perf_counter(), float("nan")])
            rounds.run(r, regions=not gpu)
        return run

    def timed(r: int) -> None:
        windows[r][1] = time.perf_counter()  # _record synchronised after the traced round
        tag("latency")
        ms = _read([_timed(lambda: rounds.run(r), device)], device)[0]  # synchronised: the next entry may judge it
        series.append(ms)

    def entries():
        yield "warm-up", (lambda: rounds.run(0)), ""
        r = 0
        while True:
            if r >= n:
                if extension is None:
                    return
                span_ms = (time.perf_counter() - windows[0][0]) * 1e3
                error = relative_error(series, [i % plans for i in range(r)], extension.batch_rounds(span_ms, r),
                                       extension.min_batches)
                outcome.update(stopped=extension.stop(r, n, span_ms, error), error=error)
                if outcome["stopped"]:
                    return
            yield f"round {r}", traced(r), f"{ROUND_REGION}{r % len(rounds.plans)}#{r}"
            r += 1

    tag(None)  # the profiler's own warm-up step
    path = _record(entries(), device=device, trace_dir=trace_dir, worker_name=worker_name, flush=lambda: None,
                   record_shapes=not gpu, on_recorded=lambda: tag("trace-export"), between=timed)
    tag(None)
    traced_rounds_ = _traced_from(path, rounds, maps)
    traced_rounds_.windows = [(a, b) for a, b in windows]
    per_plan = [series[p::plans] for p in range(plans)]
    return TimedRounds(per_plan, eager, outcome["stopped"], outcome["error"]), traced_rounds_


# ---- traced rounds: the round graphs under one profiler session -----------------------------------------------
@dataclass
class TracedRounds:
    trace_path: Path
    activities: pd.DataFrame  # one row per kernel of every unit instance: unit, round, rep, step, pass, component, ...
    round_spans_us: list[list[float]]  # per plan: every traced round's GPU span
    mismatches: list[dict] = field(default_factory=list)  # rounds whose kernels differ from their plan's expectation
    windows: list[tuple[float, float]] = field(default_factory=list)  # per round: host perf_counter() start, end

    @property
    def span_ms(self) -> float | None:
        """Host time from the first traced round's launch to the last timed round's: a lower bound of the span
        of the attempt's interleaved rounds (None without windows)."""
        if not self.windows or not math.isfinite(self.windows[-1][1]):
            return None
        return (self.windows[-1][1] - self.windows[0][0]) * 1e3


def traced_rounds(rounds: Rounds, maps: KernelMaps, *, device: torch.device, trace_dir: Path, worker_name: str,
                  n: int = TRACED_ROUNDS, on_recording: Callable[[], object] | None = None,
                  on_recorded: Callable[[], object] | None = None) -> TracedRounds:
    """`n` rounds, each one profiler step inside region round/<plan>#<round> (GPU: the round graph's one
    launch; CPU: its unit calls one by one, each in its own unit region)."""
    gpu = bool(rounds.graphs)
    plan = [("warm-up", lambda: rounds.run(0), "")]
    for r in range(n):
        plan.append((f"round {r}", (lambda r=r: rounds.run(r, regions=not gpu)), f"{ROUND_REGION}{r % len(rounds.plans)}#{r}"))
    path = _record(plan, device=device, trace_dir=trace_dir, worker_name=worker_name, flush=lambda: None,
                   record_shapes=not gpu, on_recording=on_recording, on_recorded=on_recorded)
    return _traced_from(path, rounds, maps)


def _traced_from(path: Path, rounds: Rounds, maps: KernelMaps) -> TracedRounds:
    events = load_trace(path)
    if rounds.graphs:
        activities, spans, mismatches = map_rounds(events, maps.maps, rounds.plans)
    else:
        activities, mismatches = attribute_units(events), []
        spans = [[] for _ in rounds.plans]
    return TracedRounds(path, activities, spans, mismatches)


def _round_regions(events: pd.DataFrame) -> pd.DataFrame:
    regions = events[(events["cat"] == "user_annotation") & events["name"].str.startswith(ROUND_REGION)].copy()
    label = regions["name"].str[len(ROUND_REGION):].str.split("#", n=1)
    regions["plan"] = label.str[0].astype(int)
    regions["round"] = label.str[1].astype(int)
    return regions.sort_values("ts").reset_index(drop=True)


def expected_kernels(plan: list[tuple[str, int]], maps: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """What one replay of a round graph should run: per instance, the flush's kernels then the unit's."""
    parts = []
    for i, (unit, k) in enumerate(plan):
        for name in (FLUSH, unit):
            part = maps.get(name, pd.DataFrame(columns=["name"]))
            parts.append(part.assign(unit=unit, rep=k, instance=i))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["name", "unit", "rep", "instance"])


def map_rounds(events: pd.DataFrame, maps: dict[str, pd.DataFrame],
               plans: list[list[tuple[str, int]]]) -> tuple[pd.DataFrame, list[list[float]], list[dict]]:
    """Each traced round graph's kernels (joined through their correlation id to its one launch, in the
    round's region) aligned by name with what its plan should run (expected_kernels): every kernel then has
    the unit instance, pass, component and role of its eager twin. The flush's kernels are left out, and so
    are the kernels a replay launches outside its graph (the RNG seed and offset fills of replay()). A kernel
    with no launch in any region that runs inside a round's GPU interval (a stray kernel on the stream) is
    unattributed, in the instance whose interval holds it."""
    regions = _round_regions(events)
    host = events[events["cat"].isin(("cuda_runtime", "cuda_driver")) & events["correlation"].notna()]
    device = events[events["cat"].isin(DEVICE_CATEGORIES)].sort_values("ts").reset_index(drop=True)
    starts, ends = regions["ts"].to_numpy(), regions["end"].to_numpy()
    idx = np.searchsorted(starts, host["ts"].to_numpy(), side="right") - 1
    inside = (idx >= 0) & (host["ts"].to_numpy() <= ends[np.clip(idx, 0, None)]) if len(regions) \
        else np.zeros(len(host), bool)
    graph_launch = host["name"].str.contains("GraphLaunch", na=False).to_numpy()
    launch_round = dict(zip(host["correlation"], np.where(inside & graph_launch, idx, -1)))
    in_region = set(host["correlation"][inside])  # launched inside a round: its graph's, or replay()'s own fills
    kernels = device.assign(round_index=device["correlation"].map(launch_round).fillna(-1).astype(int))
    spans: list[list[float]] = [[] for _ in plans]
    rows, mismatches = [], []
    instance_spans = []  # (start, end, base) of every mapped instance, for the stray kernels
    by_plan: dict[int, tuple[list[str], list[dict]]] = {}  # plan -> its expected kernels' names and records
    # (records, not rows: a Series per kernel cost ~20 us, and an extended attempt's trace holds ~40k kernels)
    for ri, own in kernels[kernels["round_index"] >= 0].groupby("round_index", sort=True):
        region = regions.iloc[int(ri)]
        plan_index, r = int(region["plan"]), int(region["round"])
        own = own.sort_values("ts")
        spans[plan_index].append(float(own["end"].max() - own["ts"].min()))
        if plan_index not in by_plan:  # every round of a plan expects the same kernels
            expected = expected_kernels(plans[plan_index], maps)
            by_plan[plan_index] = (list(expected["name"]), expected.to_dict("records"))
        names, refs = by_plan[plan_index]
        matched, problem = align(list(own["name"]), names)
        if problem:
            mismatches.append({"unit": f"round plan {plan_index}", "round": r, "rep": 0, "step": int(ri),
                               "kernels": int(len(own)), "expected": len(names), "first_difference": problem})
        by_instance: dict[int, list] = {}
        for k, kernel in enumerate(own.to_dict("records")):
            j = matched.get(k)
            ref = refs[j] if j is not None else None
            if ref is not None and ref.get("component") == FLUSH:
                continue
            instance = int(ref["instance"]) if ref is not None else -1
            unit, rep = (ref["unit"], int(ref["rep"])) if ref is not None else (LAYER, -1)
            row = {"unit": unit, "round": r, "rep": rep, "step": r * 10_000 + max(instance, 0), **_row(kernel, ref)}
            rows.append(row)
            by_instance.setdefault(instance, []).append(row)
        for instance, members in by_instance.items():
            if instance >= 0:
                instance_spans.append((min(m["ts"] for m in members), max(m["end"] for m in members), members[0]))
    # kernels launched by no round (and not by the flush or a replay's own fills)
    flush_regions = events[(events["cat"] == "user_annotation") & (events["name"] == FLUSH_REGION)]
    f_starts, f_ends = flush_regions["ts"].to_numpy(), flush_regions["end"].to_numpy()
    in_flush = {c for c, t in zip(host["correlation"], host["ts"]) if ((f_starts <= t) & (t <= f_ends)).any()}
    strays = kernels[(kernels["round_index"] < 0) & ~kernels["correlation"].isin(in_region | in_flush)]
    for kernel in strays.to_dict("records"):
        home = next((b for s0, e0, b in instance_spans if s0 <= kernel["ts"] <= e0), None)
        if home is not None:
            rows.append({"unit": home["unit"], "round": home["round"], "rep": home["rep"], "step": home["step"],
                         **_row(kernel, None)})
    activities = pd.DataFrame(rows)
    if activities.empty:
        return activities, spans, mismatches
    activities["kind"] = kind_of(activities["component"])
    return activities.sort_values("ts").reset_index(drop=True), spans, mismatches


def _unit_regions(events: pd.DataFrame) -> pd.DataFrame:
    regions = events[(events["cat"] == "user_annotation") & events["name"].str.startswith(UNIT_REGION)].copy()
    label = regions["name"].str[len(UNIT_REGION):]
    regions["unit"] = label.str.rsplit("#", n=1).str[0]
    numbers = label.str.rsplit("#", n=1).str[1].str.split(".", n=1)
    regions["round"] = numbers.str[0].astype(int)
    regions["rep"] = numbers.str[1].astype(int)
    return regions.sort_values("ts").reset_index(drop=True)


def attribute_units(events: pd.DataFrame) -> pd.DataFrame:
    """Eager rounds (a CPU, or a GPU where capture failed): ordinary attribution, each activity tagged with the
    unit region it started in (unit/<name>#<round>.<rep>); one step per region."""
    activities, _ = attribute_detailed(events)
    regions = _unit_regions(events)
    if activities.empty or regions.empty:
        return activities.assign(unit=None, round=None, rep=None).iloc[0:0]
    idx = np.searchsorted(regions["ts"].to_numpy(), activities["ts"].to_numpy(), side="right") - 1
    ok = (idx >= 0) & (activities["ts"].to_numpy() <= regions["end"].to_numpy()[np.clip(idx, 0, None)])
    activities = activities[ok].copy()
    hit = regions.iloc[idx[ok]].reset_index(drop=True)
    activities["unit"] = hit["unit"].to_numpy()
    activities["round"] = hit["round"].to_numpy()
    activities["rep"] = hit["rep"].to_numpy()
    activities["step"] = idx[ok]
    return activities.reset_index(drop=True)


NOT_KERNELS = ("memset", "memcpy")  # copy-engine work a graph may report apart from (or not at all): noted, not failed


def canonical(name: str) -> str:
    """A graph runs an eager call's `Memcpy DtoD (Device -> Device)` as a kernel named like `memcpy128`: one
    name for copies and one for memsets, whichever way they ran."""
    lower = name.lower()
    return next((k for k in NOT_KERNELS if lower.startswith(k)), name)


def align(replayed: list[str], eager: list[str]) -> tuple[dict[int, int], str]:
    """Replayed kernel index -> eager kernel index, matched by name in order (difflib), and what differs ('' if
    nothing). A replayed kernel that matches none stays unattributed; an eager kernel the replay lacks is a
    difference unless it is a memset or copy (a graph's memset nodes need not be reported like eager memsets)."""
    replayed, eager = [canonical(n) for n in replayed], [canonical(n) for n in eager]
    if replayed == eager:
        return {i: i for i in range(len(eager))}, ""
    import difflib

    blocks = difflib.SequenceMatcher(None, replayed, eager, autojunk=False).get_matching_blocks()
    matched = {a + i: b + i for a, b, size in blocks for i in range(size)}
    extra = [i for i in range(len(replayed)) if i not in matched]
    taken = set(matched.values())
    missing = [j for j in range(len(eager)) if j not in taken and eager[j] not in NOT_KERNELS]
    if extra:
        return matched, f"replayed kernel {extra[0]} ({replayed[extra[0]][:80]!r}) is not in the eager call " \
                        f"({len(replayed)} replayed, {len(eager)} eager)"
    if missing:
        return matched, f"eager kernel {missing[0]} ({eager[missing[0]][:80]!r}) did not run in the replay " \
                        f"({len(replayed)} replayed, {len(eager)} eager)"
    return matched, ""


def _row(kernel: dict, ref: dict | None) -> dict:
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


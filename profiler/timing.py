"""The one timing primitive: do_bench-style repetition budgets, warm-up until stable, L2 flush, CUDA events.

Returns raw samples in milliseconds; statistics live in `summarize` and never drop a sample. On a machine
without CUDA it falls back to the host clock (for wiring and tests, not for numbers anyone should quote).

The cache and clock policy is one for everything this project times (layer latency, CUDA-graph replay,
traced steps, the floor's GEMMs alone, sweep points) and is written into every run.json: see POLICY.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

# Warm-up ends when two consecutive warm-up windows have medians within this fraction of each other
# (a GPU coming out of idle ramps its clock over hundreds of ms; a fixed count of steps does not see that).
STABLE_TOLERANCE = 0.02
STABLE_ABS_MS = 0.002  # ... or within 2 us: below that, event resolution and launch jitter, not drift
MIN_WINDOW_CALLS = 3

POLICY = {
    "definition": "sustained, back-to-back work, as training sees it: the GPU is kept busy between timed units "
                  "(no rests, no synchronisation inside a round), so a power-capped GPU is measured power-capped",
    "protocol": "a layer run's units (the layer step, each GEMM and fused attention alone, the ceiling GEMM 8192^3) "
                "are replayed from CUDA graphs in shuffled, interleaved rounds, so every figure that is compared "
                "with another shares each round's clock; inside one profiler session each traced round "
                "(torch.profiler: every unit's kernels) is followed by a timed round (CUDA events around the "
                "round graph, the profiler's collection switched off), so both sample one stretch of the clock, which "
                "lasts rounds.window_ms of run.json or 40 rounds of each kind, whichever comes first, and goes on "
                "until the timed rounds' mean is known to rounds.extension's target (relative standard error by "
                "batch means) or its bounds are reached (so a power-capped clock's levels are averaged over; each "
                "attempt's rounds, span_ms, stopped and relative_error_pct record it); "
                "the layer's latency is its instances' GPU span in the traced rounds (checked against the events), "
                "the eager step (host included, taken just before, outside the profiler) decides launch-boundness; "
                "a failed comparison is measured again at most twice (profiler/protocol.py)",
    "l2": "flushed at the start of every timed unit (a layer step, a CUDA-graph replay, one GEMM or attention "
          "call of the floor, one repetition of a sweep point) by writing a buffer of twice the L2 size; "
          "never flushed inside a unit, so a kernel reads what the previous kernel of the same unit left in L2",
    "clock": "the GPU is measured as found (clocks, power limit untouched); SM clock and power are sampled "
             "through NVML in every measured phase and per traced round; the timed and traced rounds' clocks "
             "are compared, and a trace's drift is judged at one clock (its rounds' sampled clocks)",
    "warmup": f"until stable: rounds (or windows of at least {MIN_WINDOW_CALLS} calls) until two consecutive "
              f"medians agree within {STABLE_TOLERANCE:.0%} (or {STABLE_ABS_MS * 1e3:.0f} us) and at least "
              "1 s of back-to-back work on a GPU (windows of 100 ms of rounds), capped at 5 s; a cap reached is "
              "reported as not stable",
    "statistic": "median over repetitions, with p10/p90; outliers counted, never dropped",
    "sweeps": "each sweep point (and the do_bench-budget reference it is checked against) starts with the GPU "
              "under load: a keep-busy GEMM chain of KEEP_BUSY_MS is queued before the point's warm-up and again "
              "while the host writes the point, and after each repetition the keep-busy runs for busy_ratio x one "
              "call (outside the events): a fixed duty cycle, so the clock does not drift with the window's "
              "length and a short sweep window and a long do_bench see one power state, as in training",
    "ceiling": "the fastest GEMM measured under the same definition in the same rounds (the 8192^3 ceiling GEMM, "
               "or a faster in-layer or alone GEMM), so no component exceeds 100% of it",
}


@dataclass(frozen=True)
class TimingStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    outliers: int  # samples beyond 1.5 IQR of the quartiles; counted, never removed

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative noise of this measurement."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0


def summarize(samples_ms: list[float]) -> TimingStats:
    if not samples_ms:
        raise ValueError("no samples to summarize")
    ordered = sorted(samples_ms)
    n = len(ordered)

    def q(p: float) -> float:
        return ordered[min(n - 1, max(0, round(p * (n - 1))))]

    q1, q3 = q(0.25), q(0.75)
    iqr = q3 - q1
    outliers = sum(1 for x in ordered if x < q1 - 1.5 * iqr or x > q3 + 1.5 * iqr)
    return TimingStats(statistics.median(ordered), q(0.10), q(0.90), ordered[0], ordered[-1], n, outliers)


@dataclass
class Warmup:
    """What the warm-up did: how long, how many windows, and whether it reached a stable time."""
    spent_ms: float = 0.0
    window_medians_ms: list[float] = field(default_factory=list)
    stable: bool = False

    def to_dict(self) -> dict:
        return {"spent_ms": round(self.spent_ms, 3), "windows": len(self.window_medians_ms),
                "window_medians_ms": [round(x, 5) for x in self.window_medians_ms], "stable": self.stable}


def is_stable(window_medians: list[float], tolerance: float = STABLE_TOLERANCE) -> bool:
    """Two consecutive windows agree: the time is no longer drifting (clock ramp, caches, autotuning)."""
    if len(window_medians) < 2:
        return False
    a, b = window_medians[-2], window_medians[-1]
    return abs(b - a) <= max(tolerance * max(a, b), STABLE_ABS_MS)


@dataclass
class BenchResult:
    samples_ms: list[float]
    warmup: Warmup


SLEEP_CYCLES_PER_S = 1.7e9  # torch.cuda._sleep spins on the SM clock; ~1.7 GHz is close enough for an idle gap


KEEP_BUSY_MS = 10.0  # one keep-busy chain: longer than the gaps between points, short against a point's budget


class KeepBusy:
    """Queues large square GEMMs without waiting for them, so the GPU keeps drawing full power: `()` queues
    about `ms` of them (across the host's gaps: writing a record, building the next operands); `run_for(ms)`
    queues at least one, about `ms` (between a unit's repetitions, holding a fixed duty cycle). Sized once from
    timed GEMMs; on a CPU (or with ms=0) a no-op."""

    def __init__(self, device: torch.device | str | None, ms: float = KEEP_BUSY_MS, size: int = 4096):
        self.device = _resolve(device)
        self.ms = ms
        self.unit_ms = 0.0
        self.calls = 0
        if self.device.type != "cuda":
            return
        self.a = torch.randn(size, size, device=self.device, dtype=torch.bfloat16)
        self.b = torch.randn(size, size, device=self.device, dtype=torch.bfloat16)
        self.c = torch.empty(size, size, device=self.device, dtype=torch.bfloat16)
        torch.mm(self.a, self.b, out=self.c)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            torch.mm(self.a, self.b, out=self.c)
        end.record()
        torch.cuda.synchronize(self.device)
        self.unit_ms = max(start.elapsed_time(end) / 5, 1e-3)
        self.calls = max(1, round(ms / self.unit_ms)) if ms > 0 else 0

    def _queue(self, n: int) -> None:
        for _ in range(n):
            torch.mm(self.a, self.b, out=self.c)

    def __call__(self) -> None:
        if self.calls:
            self._queue(self.calls)

    def run_for(self, ms: float) -> None:
        if self.unit_ms:
            self._queue(max(1, round(ms / self.unit_ms)))


class L2Flusher:
    """Writes a buffer larger than L2 between repetitions so each one starts with a cold cache."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        size = max(2 * getattr(props, "L2_cache_size", 50 * 2**20), 64 * 2**20)
        self.buffer = torch.empty(size // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def _resolve(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def bench(fn: Callable[[], object], **kwargs) -> list[float]:
    """Time `fn` repeatedly; returns one sample (ms) per repetition. See `bench_detailed`."""
    return bench_detailed(fn, **kwargs).samples_ms


def bench_detailed(fn: Callable[[], object], *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
                   min_reps: int = 5, max_reps: int = 1000, flush_l2: bool = True, idle_ratio: float = 0.0,
                   device: torch.device | str | None = None, max_warmup_ms: float | None = None,
                   on_measure: Callable[[], object] | None = None,
                   keep_busy: KeepBusy | None = None, busy_ratio: float = 0.0) -> BenchResult:
    """Like triton.testing.do_bench: estimate one call's cost, warm up, then spend `rep_ms` measuring.

    Warm-up runs windows of calls, timed exactly like the measurement, until two consecutive window
    medians agree (STABLE_TOLERANCE) and at least `warmup_ms` has passed, or until `max_warmup_ms`
    (default max(20 x warmup_ms, 100 ms)). Each repetition is bracketed by its own pair of CUDA events,
    with an L2 flush before it (outside the events), and one synchronisation at the end.

    `idle_ratio` > 0 leaves the GPU idle for that multiple of one call's time after each repetition: a
    tight loop of large GEMMs hits the power limit and clocks down, while inside a layer the same GEMM
    alternates with memory-bound kernels; matching the duty cycle compares like with like.

    `keep_busy` (a KeepBusy) is queued before the first call, so the unit starts in the sustained power state;
    with `busy_ratio` > 0 it also runs for that multiple of one call's time after each repetition (outside the
    events), so the power draw is a fixed duty cycle from the first repetition on and the clock does not drift
    with the length of the measurement (a short sweep window and a long do_bench then see one state)."""
    device = _resolve(device)
    cap_ms = max_warmup_ms if max_warmup_ms is not None else max(20 * warmup_ms, 100.0)
    if keep_busy is not None:
        keep_busy()
    if device.type != "cuda":
        return _bench_host(fn, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=min_reps, max_reps=max_reps,
                           cap_ms=cap_ms)
    flush = L2Flusher(device) if flush_l2 else (lambda: None)
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        flush()
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(start.elapsed_time(end) / 3, 1e-3)
    idle_cycles = int(idle_ratio * estimate_ms * 1e-3 * SLEEP_CYCLES_PER_S)
    busy_ms = (max(busy_ratio * estimate_ms, keep_busy.unit_ms) if keep_busy is not None and busy_ratio > 0
               and keep_busy.unit_ms else 0.0)

    def timed(n: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for i in range(n):
            flush()
            starts[i].record()
            fn()
            ends[i].record()
            if idle_cycles > 0:
                torch.cuda._sleep(idle_cycles)
            if busy_ms > 0:
                keep_busy.run_for(busy_ms)  # type: ignore[union-attr]
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    warmup = _warm_up(timed, estimate_ms, warmup_ms, cap_ms, clock=lambda: time.perf_counter() * 1e3)
    # rep_ms is wall time: with a duty cycle each repetition costs its own time plus the keep-busy's
    n_reps = max(min_reps, min(max_reps, int(rep_ms / (estimate_ms + busy_ms))))
    if on_measure is not None:  # e.g. tag the telemetry: the samples from here on are the measurement
        on_measure()
    return BenchResult(timed(n_reps), warmup)


def _warm_up(timed: Callable[[int], list[float]], estimate_ms: float, warmup_ms: float, cap_ms: float,
             clock: Callable[[], float]) -> Warmup:
    """Run windows until the time stops moving; each window is about half the warm-up budget."""
    per_window = max(MIN_WINDOW_CALLS, int(warmup_ms / 2 / estimate_ms))
    warmup = Warmup()
    t0 = clock()
    while True:
        warmup.window_medians_ms.append(statistics.median(timed(per_window)))
        warmup.spent_ms = clock() - t0
        warmup.stable = is_stable(warmup.window_medians_ms)
        if (warmup.stable and warmup.spent_ms >= warmup_ms) or warmup.spent_ms >= cap_ms:
            return warmup


def _bench_host(fn, *, warmup_ms, rep_ms, min_reps, max_reps, cap_ms) -> BenchResult:
    t0 = time.perf_counter()
    fn()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)

    def timed(n: int) -> list[float]:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
        return samples

    warmup = _warm_up(timed, estimate_ms, warmup_ms, cap_ms, clock=lambda: time.perf_counter() * 1e3)
    return BenchResult(timed(max(min_reps, min(max_reps, int(rep_ms / estimate_ms)))), warmup)

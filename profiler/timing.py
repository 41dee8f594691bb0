"""The one timing primitive: do_bench-style warm-up and repetition budgets, L2 flush, CUDA events.

Returns raw samples in milliseconds; statistics live in `summarize` and never drop a sample. On a machine
without CUDA it falls back to the host clock (for wiring and tests, not for numbers anyone should quote).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


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


SLEEP_CYCLES_PER_S = 1.7e9  # torch.cuda._sleep spins on the SM clock; ~1.7 GHz is close enough for an idle gap


class L2Flusher:
    """Writes a buffer larger than L2 between repetitions so each one starts with a cold cache."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        size = max(2 * getattr(props, "L2_cache_size", 50 * 2**20), 64 * 2**20)
        self.buffer = torch.empty(size // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def bench(fn: Callable[[], object], *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
          min_reps: int = 5, max_reps: int = 1000, flush_l2: bool = True, idle_ratio: float = 0.0,
          device: torch.device | str | None = None) -> list[float]:
    """Time `fn` repeatedly; returns one sample (ms) per repetition.

    Like triton.testing.do_bench: estimate one call's cost, then spend `warmup_ms` warming up and
    `rep_ms` measuring. Each repetition is bracketed by its own pair of CUDA events, with an L2 flush
    before it (outside the events), and there is one synchronisation at the end.

    `idle_ratio` > 0 leaves the GPU idle for that multiple of one call's time after each repetition: a
    tight loop of large GEMMs hits the power limit and clocks down, while inside a layer the same GEMM
    alternates with memory-bound kernels; matching the duty cycle compares like with like."""
    device = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    if device.type != "cuda":
        return _bench_host(fn, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=min_reps, max_reps=max_reps)
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
    n_warmup = max(1, int(warmup_ms / estimate_ms))
    n_reps = max(min_reps, min(max_reps, int(rep_ms / estimate_ms)))
    for _ in range(n_warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_reps)]
    idle_cycles = int(idle_ratio * estimate_ms * 1e-3 * SLEEP_CYCLES_PER_S)
    for i in range(n_reps):
        flush()
        starts[i].record()
        fn()
        ends[i].record()
        if idle_cycles > 0:
            torch.cuda._sleep(idle_cycles)
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _bench_host(fn, *, warmup_ms, rep_ms, min_reps, max_reps) -> list[float]:
    t0 = time.perf_counter()
    fn()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    samples = []
    for _ in range(max(min_reps, min(max_reps, int(rep_ms / estimate_ms)))):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples

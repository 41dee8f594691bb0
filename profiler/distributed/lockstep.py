"""Timing a step that runs collectives: every rank runs it the same number of times.

profiler.timing.bench warms up until the step time is stable and sizes its repetitions from its own
estimate. Each rank would decide differently, and a rank that calls the step once more than the others
waits in an all-reduce that never completes. Here the warm-up count is fixed, and the repetition count is
derived from the slowest rank's estimate, agreed through an all-reduce, so it is the same everywhere.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.distributed as dist


def agree_max(value: float, device: torch.device) -> float:
    """The largest value over all ranks (the same answer on every rank)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device

    def time_ms(self, fn: Callable[[], object], flush: Callable[[], object] | None, n: int) -> list[float]:
        """n repetitions, each timed on its own; the flush runs before each, outside the timed interval."""
        if self.device.type != "cuda":
            samples = []
            for _ in range(n):
                if flush is not None:
                    flush()
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            return samples
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for i in range(n):
            if flush is not None:
                flush()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def lockstep_bench(step: Callable[[], object], *, device: torch.device, warmup_steps: int, rep_ms: float,
                   min_reps: int = 5, max_reps: int = 200, flush: Callable[[], object] | None = None) -> list[float]:
    """Per-repetition times (ms) of `step` on this rank. Each one includes waiting for the other ranks at
    the collectives: a rank's step is done only when its all-reduces are."""
    clock = _Clock(device)
    clock.time_ms(step, flush, warmup_steps)
    estimate_ms = agree_max(sum(clock.time_ms(step, flush, 3)) / 3, device)
    reps = int(min(max_reps, max(min_reps, rep_ms / max(estimate_ms, 1e-3))))
    dist.barrier()  # start the timed repetitions together, not one rank's warm-up tail into the other's
    return clock.time_ms(step, flush, reps)

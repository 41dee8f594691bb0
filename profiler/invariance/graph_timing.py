"""GPU time of one call, launched from a CUDA graph: what a kernel costs without the host's launch overhead.

A decode GEMM runs for 5-50 us; launching it from Python (a Triton launcher, torch's dispatcher, the
split-K switch's flag flips) costs 10-50 us of host time. Timed with events around an eager call, as in the
first H200 run of issue 21, the slower host path shows up as GPU time whenever the host falls behind the
GPU (the L2 flush between repetitions hides ~30 us of it, not more), so the comparison of two kernels was a
comparison of their launchers. Serving engines replay decode steps from CUDA graphs, where none of that
host time exists; so kernels are compared here as graph replays: one call captured, replayed once per
repetition by profiler.timing.bench (the one timing primitive: warm-up until stable, L2 flushed before
every repetition, CUDA events). On a CPU (tests, wiring) the call is timed as it is, by the host clock.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..timing import bench, summarize

TIMING = ("CUDA-graph replay of one call, L2 flushed before each (profiler.timing.bench); the host's launch "
          "cost is not in the figure")


def capture(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """A CUDA graph of one call of fn (warmed up on a side stream first, as torch.cuda.graph asks)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_samples_ms(fn: Callable[[], object], device: torch.device, **budget) -> list[float]:
    """profiler.timing.bench samples (ms) of one call of fn replayed from a CUDA graph (host-timed off a GPU)."""
    if device.type != "cuda":
        return bench(fn, device=device, **budget)
    graph = capture(fn)
    try:
        return bench(graph.replay, device=device, **budget)
    finally:
        del graph


def graph_us(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 2.0, rep_ms: float = 10.0,
             min_reps: int = 10) -> float:
    """Median GPU time (us) of one call of fn, replayed from a CUDA graph."""
    samples = graph_samples_ms(fn, device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=min_reps,
                               max_warmup_ms=max(20 * warmup_ms, 40.0))
    return summarize(samples).median_ms * 1e3

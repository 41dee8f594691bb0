"""How much GPU time a sweep costs, and whether its short per-point budget still gives the right number.

1. Points per second of a mid-sized GEMM sweep run exactly as `python -m profiler sweep` runs it (default
   budget, results file, L2 flush), wall clock including input allocation and the fsync per point.
2. For a sample of shapes: the sweep's median against a one-off triton.testing.do_bench (its defaults:
   25 ms warm-up, 100 ms of repetitions, median) of the same call, with the % difference (target: within
   +-3%). The GPU rests 1 s before each, so neither inherits the other's clock state. A third column, a
   1 s back-to-back bench(), shows what a sustained loop costs: large GEMMs reach the power limit and
   clock down, which is why sweeps keep each point's budget short.

Usage: python scripts/bench_sweep_speed.py [--device cuda] [--quick]
A benchmark, not a test: it prints numbers and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models.layer import torch_dtype  # noqa: E402
from profiler.sweeps import SweepSpec, expand, run_sweep  # noqa: E402
from profiler.sweeps import operands  # noqa: E402
from profiler.sweeps.runner import measure  # noqa: E402
from profiler.sweeps.store import ResultStore  # noqa: E402
from profiler.timing import bench, summarize  # noqa: E402


def speed_specs(cpu: bool, dtype: str) -> list[SweepSpec]:
    if cpu:  # wiring check only: CPU numbers say nothing about a GPU
        return [SweepSpec(kind="mm", m=(256,), n=(256,), k=tuple(range(64, 1025, 64)), dtype=dtype)]
    return [
        # mid-sized GEMMs: 4096 x 4096 x k, 0.3 to 1 ms each on an H100
        SweepSpec(kind="mm", m=(4096,), n=(4096,), k=tuple(range(2048, 8193, 256)), dtype=dtype),
        # the same as a transformer sweep would see them: qkv at a=32, b=4, s=2048
        SweepSpec(kind="qkv", h=tuple(range(2048, 6145, 256)), heads=(32,), b=(4,), s=(2048,), dtype=dtype),
    ]


def sample_specs(cpu: bool, dtype: str) -> list[SweepSpec]:
    if cpu:
        return [SweepSpec(kind="mm", m=(256,), n=(256,), k=(512,), dtype=dtype),
                SweepSpec(kind="score", h=(256,), heads=(8,), b=(1,), s=(128,), dtype=dtype)]
    return [
        SweepSpec(kind="mm", m=(4096,), n=(4096,), k=(4096,), dtype=dtype),
        SweepSpec(kind="mm", m=(27648,), n=(1600,), k=(4096,), dtype=dtype),  # Fig. 5b, a wave boundary
        SweepSpec(kind="qkv", h=(4096,), heads=(32,), b=(4,), s=(2048,), dtype=dtype),
        SweepSpec(kind="mlp-down", h=(8192,), heads=(64,), b=(4,), s=(2048,), dtype=dtype),
        SweepSpec(kind="score", h=(2560,), heads=(32,), b=(4,), s=(2048,), dtype=dtype),  # h/a = 80
        SweepSpec(kind="aov", h=(12288,), heads=(96,), b=(4,), s=(2048,), dtype=dtype),
        SweepSpec(kind="logits", h=(2560,), v=(50257,), b=(4,), s=(2048,), dtype=dtype),
        SweepSpec(kind="logits", h=(2560,), v=(50304,), b=(4,), s=(2048,), dtype=dtype),
    ]


def rest(device) -> None:
    """Let the GPU cool to its idle clock state, so each measurement starts from the same place."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        time.sleep(1.0)


def triton_median(fn) -> float | None:
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    try:
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    except TypeError:  # older triton: no return_mode
        return float(do_bench(fn, warmup=25, rep=100, quantiles=[0.5]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu = device.type != "cuda"
    dtype = args.dtype or ("float32" if cpu else "bfloat16")
    if cpu:
        print("note: no CUDA device; host-clock fallback, numbers only check the wiring")

    print("== sweep speed (default per-point budget: warm-up 5 ms, 30 ms of repetitions, 10..300 reps) ==")
    for spec in speed_specs(cpu, dtype):
        with tempfile.TemporaryDirectory() as tmp:
            run_sweep(spec, tmp, device=device, progress=False, measure_peak=False)  # warm the process
            t0 = time.perf_counter()
            summary = run_sweep(dataclasses.replace(spec, tag="timed"), tmp, device=device,
                                progress=False, measure_peak=False)
            wall = time.perf_counter() - t0
            tflops = [p["tflops"] for p in ResultStore(tmp).points() if p["tag"] == "timed" and p["tflops"]]
        print(f"{spec.kind:8s} {summary.measured:3d} points in {wall:6.2f} s = {summary.measured / wall:5.1f} points/s "
              f"(median {statistics.median(tflops):.0f} TFLOP/s)")

    print("\n== sweep median vs a one-off do_bench of the same call (GPU rested 1 s before each) ==")
    print(f"{'shape':44s} {'sweep ms':>9s} {'do_bench':>9s} {'diff':>7s} {'1s loop':>9s} {'diff':>7s}")
    diffs = []
    for spec in sample_specs(cpu, dtype):
        point = expand(spec)[0]
        rest(device)
        swept = measure(point, spec, device)["median_ms"]
        fn = operands.build(point, torch_dtype(dtype), device)
        rest(device)
        reference = (None if cpu else triton_median(fn)) or \
            summarize(bench(fn, warmup_ms=25, rep_ms=100, device=device)).median_ms
        rest(device)
        sustained = summarize(bench(fn, warmup_ms=100, rep_ms=1000, max_reps=100000, device=device)).median_ms
        d1 = 100 * (swept / reference - 1)
        diffs.append(d1)
        shape = f"{spec.kind} {point.batch}x({point.m},{point.k})x({point.k},{point.n})"
        print(f"{shape:44s} {swept:9.4f} {reference:9.4f} {d1:+6.1f}% {sustained:9.4f} {100 * (sustained / reference - 1):+6.1f}%")
        del fn
    worst = max(abs(d) for d in diffs)
    print(f"\nworst |sweep - one-off do_bench| = {worst:.1f}% ({'within' if worst <= 3 else 'OUTSIDE'} the +-3% target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

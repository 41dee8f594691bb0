"""How much GPU time a sweep costs, and whether its short per-point budget still gives the right number.

1. Points per second of a mid-sized GEMM sweep run exactly as `python -m profiler sweep` runs it (default
   budget, results file, L2 flush), wall clock including input allocation and the fsync per point.
2. For a sample of shapes: the sweep's median against a separate long measurement of the same call,
   profiler.timing.bench with a 1 s budget and, where triton is installed, triton.testing.do_bench(median),
   with the % difference (target: within +-3%).

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


def triton_median(fn) -> float | None:
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    try:
        return float(do_bench(fn, warmup=100, rep=1000, return_mode="median"))
    except TypeError:  # older triton: no return_mode
        return float(do_bench(fn, warmup=100, rep=1000, quantiles=[0.5]))


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

    print("\n== sweep median vs a separate long measurement of the same call ==")
    print(f"{'shape':44s} {'sweep ms':>9s} {'bench 1s':>9s} {'diff':>7s} {'do_bench':>9s} {'diff':>7s}")
    diffs = []
    for spec in sample_specs(cpu, dtype):
        point = expand(spec)[0]
        swept = measure(point, spec, device)["median_ms"]
        fn = operands.build(point, torch_dtype(dtype), device)
        long = summarize(bench(fn, warmup_ms=100, rep_ms=1000, max_reps=100000, device=device)).median_ms
        tri = None if cpu else triton_median(fn)
        d1 = 100 * (swept / long - 1)
        diffs.append(d1)
        shape = f"{spec.kind} {point.batch}x({point.m},{point.k})x({point.k},{point.n})"
        tri_cols = f"{tri:9.4f} {100 * (swept / tri - 1):+6.1f}%" if tri else f"{'n/a':>9s} {'':>7s}"
        print(f"{shape:44s} {swept:9.4f} {long:9.4f} {d1:+6.1f}% {tri_cols}")
        del fn
    worst = max(abs(d) for d in diffs)
    print(f"\nworst |sweep - long bench| = {worst:.1f}% ({'within' if worst <= 3 else 'OUTSIDE'} the +-3% target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How fast the sweeps are, and whether their short per-point budget gives the number triton's do_bench gives,
under real sweep conditions: points back to back, shapes not seen before in this process, mixed kinds.

1. Draw N mixed points (mm, qkv, score, aov, logits, flash; random shapes from a seeded generator, none
   repeated) and measure them back to back exactly as `python -m profiler sweep` does (profiler.sweeps.
   runner.measure + an fsynced append per point). Wall clock over all of them = points/s.
2. Then, back to back again, time each point's call with triton.testing.do_bench (median; its own L2
   flush, 25 ms warm-up, 100 ms of repetitions) and compare with the sweep's median.
Target: >= 20 points/s, and each kind within +-3% of do_bench. Both passes run the GPU busy and back to back,
so neither gets a rested (boosted) clock the other did not.

Usage: python scripts/bench_sweep_speed.py [--points 120] [--seed 0] [--out DIR]
Writes DIR/speed.txt (the table printed) and DIR/speed.csv (one row per point). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from models.layer import torch_dtype  # noqa: E402
from profiler.hardware import environment  # noqa: E402
from profiler.sweeps import SweepSpec, expand  # noqa: E402
from profiler.sweeps import operands  # noqa: E402
from profiler.sweeps.runner import measure, point_record  # noqa: E402
from profiler.sweeps.store import ResultStore  # noqa: E402
from profiler.timing import bench, summarize  # noqa: E402

TARGET_POINTS_PER_S = 20.0
TARGET_PCT = 3.0


def draw_specs(n: int, seed: int, cpu: bool, dtype: str) -> list[SweepSpec]:
    """n specs of one point each, round-robin over the kinds, shapes drawn at random without repeats."""
    rng = random.Random(seed)
    kinds = ["mm", "qkv", "score", "aov", "logits"] + ([] if cpu else ["flash"])
    # a CPU run checks the wiring on small shapes; the GPU ranges are a layer's (b=4, s=2048)
    # head dims: every multiple of 8 from 32 to 256 (flash's range), so the attention kinds have 3 x 29
    # distinct shapes each, more than any run asks for
    heads, dims = ([2, 4], list(range(8, 65, 8))) if cpu else ([16, 32, 64], list(range(32, 257, 8)))
    b, s, lo, hi = (1, 128, 64, 1024) if cpu else (4, 2048, 512, 8192)
    seen, specs, attempts = set(), [], 0
    while len(specs) < n:
        attempts += 1
        if attempts > 100 * n:
            raise RuntimeError(f"could not draw {n} distinct points; widen the shape ranges")
        kind = kinds[len(specs) % len(kinds)]
        a, d = rng.choice(heads), rng.choice(dims)
        if kind == "mm":
            m, nn, k = (rng.randrange(lo, hi + 1, 64) for _ in range(3))
            spec = SweepSpec(kind="mm", m=(m,), n=(nn,), k=(k,), dtype=dtype)
        elif kind == "logits":
            spec = SweepSpec(kind="logits", h=(rng.randrange(lo, hi // 2 + 1, 256 if not cpu else 64),),
                             v=(rng.randrange(32000, 64001) // (16 if cpu else 1),), b=(b,), s=(s,), dtype=dtype)
        else:  # qkv, score, aov, flash: a heads of h/a = d (flash: d a multiple of 8, at most 256)
            spec = SweepSpec(kind=kind, h=(a * d,), heads=(a,), b=(b,), s=(s,), dtype=dtype)
        point = expand(spec)[0]
        key = (point.component, point.batch, point.m, point.n, point.k)
        if key not in seen:
            seen.add(key)
            specs.append(spec)
    return specs


def do_bench_ms(fn, device) -> float:
    if device.type != "cuda":
        return summarize(bench(fn, warmup_ms=25, rep_ms=100, device=device)).median_ms
    from triton.testing import do_bench

    try:
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    except TypeError:  # older triton: no return_mode
        return float(do_bench(fn, warmup=25, rep=100, quantiles=[0.5]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--points", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for speed.txt and speed.csv")
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu = device.type != "cuda"
    dtype = args.dtype or ("float32" if cpu else "bfloat16")
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    env = environment(device)
    say(f"== sweep speed and accuracy: {args.points} mixed points, never seen before, back to back "
        f"({env.get('gpu_name') or 'CPU: wiring only'}, {dtype}, git {env.get('git_sha')}) ==")
    specs = draw_specs(args.points, args.seed, cpu, dtype)
    points = [expand(s)[0] for s in specs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)
        t0 = time.perf_counter()
        for spec, point in zip(specs, points):
            measured = measure(point, spec, device)
            store.append(point_record(point, spec, env.get("gpu_name") or "cpu", env.get("sm_count"), measured,
                                      env.get("git_sha")))
            rows.append({"kind": spec.kind, "shape": f"{point.batch}x({point.m},{point.k})x({point.k},{point.n})",
                         "sweep_ms": measured["median_ms"], "sweep_p10_ms": measured["p10_ms"],
                         "sweep_p90_ms": measured["p90_ms"], "repeats": measured["repeats"], "status": measured["status"]})
        wall = time.perf_counter() - t0
    for row, spec, point in zip(rows, specs, points):
        fn = operands.build(point, torch_dtype(dtype), device)
        row["do_bench_ms"] = do_bench_ms(fn, device) if row["status"] == "ok" else None
        del fn
    df = pd.DataFrame(rows)
    df["diff_pct"] = 100 * (df["sweep_ms"] / df["do_bench_ms"] - 1)
    rate = len(points) / wall
    say(f"sweep pass: {len(points)} points in {wall:.2f} s = {rate:.1f} points/s (target >= {TARGET_POINTS_PER_S:.0f}: "
        f"{'met' if rate >= TARGET_POINTS_PER_S else 'NOT met'})")
    say("")
    say(f"{'kind':8s} {'points':>6s} {'median diff':>11s} {'p90 |diff|':>10s} {'worst':>7s} {'within 3%':>9s}  verdict")
    for kind, part in df.dropna(subset=["diff_pct"]).groupby("kind", sort=False):
        absd = part["diff_pct"].abs()
        within = (absd <= TARGET_PCT).mean()
        verdict = "meets the target" if absd.quantile(0.9) <= TARGET_PCT else "OUTSIDE the target"
        say(f"{kind:8s} {len(part):6d} {part['diff_pct'].median():+10.1f}% {absd.quantile(0.9):9.1f}% "
            f"{part.loc[absd.idxmax(), 'diff_pct']:+6.1f}% {100 * within:8.0f}%  {verdict}")
    absd = df["diff_pct"].abs().dropna()
    say(f"\nall kinds: median |diff| {absd.median():.2f}%, p90 {absd.quantile(0.9):.2f}%, worst {absd.max():.1f}%; "
        f"{100 * (absd <= TARGET_PCT).mean():.0f}% of points within +-{TARGET_PCT:.0f}%")
    failed = df[df["status"] != "ok"]
    if len(failed):
        say(f"{len(failed)} point(s) not measured: {', '.join(failed['shape'].head(5))}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "speed.csv", index=False)
        (out / "speed.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 21 on one GPU: which invariant kernel each weight GEMM gets, and what it costs against cuBLAS.

For the weight GEMMs (QKV, output projection, MLP up (+gate), MLP down) of pythia-1b, pythia-6.9b and
llama-2-7b-like:
  1. choose: the cross-probe over M = 1..8192 of cuBLAS's default, cuBLASLt with split-K off and the
     M-bucketed Triton kernel, their timings, the pick, and its proof at every M 1..--every-m-to
     (profiler.invariance.choose; cached on disk);
  2. throughput: TFLOP/s of cuBLAS with its defaults (F.linear) and of the invariant path per M, 1..8192,
     with profiler.timing (L2 flushed before every repetition, the same warm-up for both), each call
     replayed from a CUDA graph (GPU time; graph_timing.py says why);
  3. invariance: for every M of the dense search, each kernel's rows vs the same rows computed alone;
  4. (time permitting) the same two eager, launched from Python (host cost included), at a few M, for
     context, then the two candidates' own TFLOP/s curves;
then one table (ratio at M = 1, 16, ..., 8192, median, min, % bitwise invariant, kernel and why), files and a
report in --out. ~3-4 minutes on an H200; --quick ~1.

Usage (repository root): python scripts/bench_invariant_matmul.py --out DIR [--quick] [--refresh]
       [--configs pythia-1b,pythia-6.9b,llama-2-7b-like] [--dtype bfloat16] [--budget-s 210]
Writes DIR/matmul_throughput.csv, matmul_invariance.csv, matmul_choice.csv, matmul_run.json, summary.txt,
report.html and (time permitting) matmul_throughput_eager.csv. Provenance from CODESIGN_GIT_SHA (the GPU machine's copy has no .git).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

CONFIGS = ("pythia-1b", "pythia-6.9b", "llama-2-7b-like")
FULL_TOKENS = (1, 2, 3, 4, 7, 8, 16, 32, 64, 100, 128, 256, 512, 1000, 1024, 2048, 3000, 4096, 8192)
QUICK_TOKENS = (1, 16, 64, 256, 1024, 4096, 8192)
T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {message}", flush=True)


def short_reason(choice) -> str:
    """A few words for the table: which candidates were invariant on their own, and the proof of the pick."""
    parts = []
    for c in choice.candidates:
        if c.invariant is None:
            parts.append(f"{c.kernel} could not run")
        else:
            v = c.verdict
            parts.append(f"{c.kernel} {'ok' if c.invariant else 'NOT ok'} at "
                         f"{v.get('m_checked', 0) - v.get('n_failed', 0)}/{v.get('m_checked')} M")
    proof = choice.proof or {}
    parts.append(f"proof {'passed' if proof.get('invariant') else 'FAILED'} at {proof.get('m_checked')} M"
                 if proof else "no proof")
    return "; ".join(parts)


def phase(name: str, failures: list[str], fn, *args, **kwargs):
    """Run one phase; a failure is printed and recorded, and the later phases still run on what exists."""
    started = time.perf_counter()
    log(f"== {name}")
    try:
        result = fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a GPU run should bring back everything that did work
        failures.append(name)
        log(f"{name} FAILED after {time.perf_counter() - started:.1f} s:\n{traceback.format_exc()}")
        return None
    log(f"   {name}: {time.perf_counter() - started:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer M everywhere, no candidate curves (~1 min)")
    parser.add_argument("--refresh", action="store_true", help="probe again even where the cache has a verdict")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a wiring check in Triton's interpreter (use tiny --configs and --max-tokens)")
    parser.add_argument("--max-tokens", type=int, default=8192, help="largest M (default 8192)")
    parser.add_argument("--budget-s", type=float, default=210.0,
                        help="skip the optional eager timings and candidate curves once this much wall time has passed")
    parser.add_argument("--every-m-to", type=int, default=8192,
                        help="the chosen path's proof probes every M from 1 to this (and the probe's sample beyond)")
    args = parser.parse_args(argv)

    from models import load_config
    from models.invariant import mma_families, probe_tokens, splitk
    from models.invariant.cublas import cublaslt_version
    from models.invariant.matmul import DESCRIPTION
    from profiler.hardware import environment
    from profiler.invariance import analysis, files, graph_timing, matmul_bench, shapes
    from profiler.timing import POLICY
    from reports.invariance_report import write_report

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU (--device cpu runs the wiring in Triton's interpreter, on tiny configs)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    import triton

    log(f"torch {torch.__version__} cuda {torch.version.cuda} triton {triton.__version__} "
        f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'} cuBLASLt {cublaslt_version()}")
    configs = [load_config(name.strip()) for name in args.configs.split(",") if name.strip()]
    gemms = {cfg.name: shapes.weight_gemm_shapes(cfg) for cfg in configs}
    sweep = tuple(m for m in (QUICK_TOKENS if args.quick else FULL_TOKENS) if m <= args.max_tokens)
    check_tokens = None
    failures: list[str] = []
    phase_s: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        started = time.perf_counter()
        out = phase(name, failures, fn, *a, **kw)
        phase_s[name] = round(time.perf_counter() - started, 1)
        return out

    # 0. compile every plan's Triton tiles on several processes at once (Triton compiles one at a time)
    def precompile_plans():
        from tune_invariant_matmul import precompile  # scripts/ is on sys.path: this script's folder

        from models.invariant.tiles import plan_for

        sms = torch.cuda.get_device_properties(device).multi_processor_count
        jobs = sorted({("tri", (c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages), g.bias)
                       for shape_list in gemms.values() for g in shape_list
                       for c in (b.configs[0] for b in plan_for(g.n, g.k, dtype, sms).buckets)})
        precompile(jobs, min(12, max(1, (os.cpu_count() or 2) - 2)))

    if device.type == "cuda" and dtype == torch.bfloat16:
        timed("precompile", precompile_plans)

    # 1. the choice per shape (probe + timings), cached on disk
    def choose_all():
        out = []
        for cfg_name, shape_list in gemms.items():
            for g in shape_list:
                started = time.perf_counter()
                from profiler.invariance.choice import choose

                c = choose(g.n, g.k, dtype, g.bias, device, sweep="quick" if args.quick else "thorough",
                           max_m=args.max_tokens, every_m_to=args.every_m_to, refresh=args.refresh,
                           log=lambda s: log("   " + s))
                log(f"   {cfg_name} {g.label}: {c.label} ({time.perf_counter() - started:.1f} s)")
                out.append(c)
        return out

    choices = timed("choose", choose_all) or []
    choice = timed("choice table", lambda: pd.concat(
        [matmul_bench.choice_frame(s, dtype=dtype, device=device, config_name=c) for c, s in gemms.items()],
        ignore_index=True))

    # 2. TFLOP/s per M: cuBLAS defaults vs the invariant path, one timing primitive and policy for both
    budget = matmul_bench.Budget(warmup_ms=10.0, rep_ms=30.0)
    throughput = timed("throughput", lambda: pd.concat(
        [matmul_bench.throughput(s, sweep, dtype=dtype, device=device, budget=budget, config_name=c)
         for c, s in gemms.items()], ignore_index=True))

    # 3. bitwise invariance of both at every M of the dense search (the invariant path must be 100 %)
    dense = not args.quick and time.perf_counter() - T0 < args.budget_s - 90
    check_tokens = shapes.check_tokens(args.max_tokens) if dense else probe_tokens(args.max_tokens, quick=True)
    if not args.quick and not dense:
        log("   over budget: the invariance search runs on the quick M set")
    check = timed("invariance", lambda: pd.concat(
        [matmul_bench.invariance(s, check_tokens, dtype=dtype, device=device, config_name=c)
         for c, s in gemms.items()], ignore_index=True))

    # 4. eager (host launch included), for context: what a caller without CUDA graphs sees
    eager = None
    if device.type == "cuda" and time.perf_counter() - T0 < args.budget_s - 40:
        eager_tokens = tuple(m for m in QUICK_TOKENS if m <= args.max_tokens)
        eager = timed("eager throughput", lambda: pd.concat(
            [matmul_bench.throughput(s, eager_tokens, dtype=dtype, device=device, budget=budget, config_name=c,
                                     launch="eager") for c, s in gemms.items()], ignore_index=True))
    else:
        log("== eager throughput skipped (over budget)")

    # 5. the candidates on their own (context for the choice), if time remains
    if not args.quick and device.type == "cuda" and time.perf_counter() - T0 < args.budget_s - 60:
        extra = timed("candidate curves", lambda: pd.concat(
            [matmul_bench.throughput(s, sweep, dtype=dtype, device=device, budget=budget, config_name=c,
                                     kernels=matmul_bench.CANDIDATES) for c, s in gemms.items()], ignore_index=True))
        if extra is not None and throughput is not None:
            throughput = pd.concat([throughput, extra], ignore_index=True)
    else:
        log("== candidate curves skipped (quick mode or over budget)")

    frames = {name: frame for name, frame in (("throughput", throughput), ("check", check), ("choice", choice))
              if frame is not None}
    met = analysis.targets(throughput, check) if throughput is not None else {}
    run = {"environment": environment(device), "dtype": args.dtype, "mode": "quick" if args.quick else "full",
           "configs": {c: [g.label for g in s] for c, s in gemms.items()}, "sweep_tokens": list(sweep),
           "check_tokens": list(check_tokens or []), "budget": budget.__dict__, "timing_policy": POLICY,
           "mma_families": {**mma_families(), **splitk.mma_families()}, "targets": met,
           "timing": graph_timing.TIMING if device.type == "cuda" else "host clock (CPU)", "phase_s": phase_s, "failed_phases": failures,
           "cublaslt": cublaslt_version(),
           "kernels": {"torch": "torch.nn.functional.linear, cuBLAS defaults (split-K allowed)",
                       "invariant": "models.invariant.choice.linear: the kernel chosen per shape (matmul_choice.csv)",
                       "default": "in a choice: F.linear with cuBLAS's defaults, where the probe proved it invariant",
                       "cublaslt": "models.invariant.cublas_linear: cuBLASLt, allow_*_reduced_precision_reduction=(False, False)",
                       "triton": f"models.invariant.invariant_linear: {DESCRIPTION}"}}
    args.out.mkdir(parents=True, exist_ok=True)
    files.save(args.out, "matmul", frames, run)
    if eager is not None:
        eager.to_csv(args.out / "matmul_throughput_eager.csv", index=False)
    by_shape = {(c.n, c.k, c.bias): c for c in choices}
    why = [{"config": cfg, "component": g.component, "kernel": by_shape[(g.n, g.k, g.bias)].label,
            "why": short_reason(by_shape[(g.n, g.k, g.bias)])}
           for cfg, shape_list in gemms.items() for g in shape_list if (g.n, g.k, g.bias) in by_shape]
    text = summary(throughput, check, why, met, analysis)
    text += f"\n== timing: {graph_timing.TIMING if device.type == 'cuda' else 'host clock (a CPU wiring check)'}"
    if eager is not None and not eager.empty:
        e = analysis.throughput_ratio(eager).dropna(subset=["ratio"])
        text += (f"\n== eager (launched from Python, host cost included), for context: median ratio "
                 f"{e['ratio'].median():.3f}, min {e['ratio'].min():.3f} over {len(e)} (shape, M) at M in "
                 f"{sorted(set(e['m'].astype(int)))}")
    (args.out / "summary.txt").write_text(text + "\n")
    print(text, flush=True)
    phase("report", failures, lambda: log(f"report: {write_report([args.out], args.out)}"))
    log(f"total {time.perf_counter() - T0:.0f} s; phases {json.dumps(phase_s)}"
        + (f"; FAILED: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


def summary(throughput, check, why: list[dict], met: dict, analysis) -> str:
    """The compact table: per shape the kernel and why, the ratio at the issue's M, median, min, % invariant."""
    if throughput is None:
        return "no throughput measured"
    table = analysis.ratio_summary(throughput)
    if check is not None:
        share = analysis.invariance_share(check)
        mine = share[share["kernel"] == "invariant"][["config", "component", "pct_invariant"]]
        cublas = share[share["kernel"] == "torch"][["config", "component", "pct_invariant"]].rename(
            columns={"pct_invariant": "cublas_default_pct_invariant"})
        table = table.merge(mine, on=["config", "component"], how="left").merge(cublas, on=["config", "component"],
                                                                                how="left")
    if why:
        table = table.merge(pd.DataFrame(why), on=["config", "component"], how="left")
    table = table.drop(columns=["n", "k", "m_measured"], errors="ignore")
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 70,
                           "display.float_format", "{:,.3f}".format):
        body = table.to_string(index=False)
    def num(key: str) -> float:
        value = met.get(key)
        return float("nan") if value is None else value

    verdict = (f"all (shape, M): median ratio {num('median_ratio'):.3f} (target >= {analysis.TARGET_MEDIAN}: "
               f"{'ok' if met.get('median_ok') else 'MISSED'}), min {num('min_ratio'):.3f} (target >= "
               f"{analysis.TARGET_MIN}: {'ok' if met.get('min_ok') else 'MISSED'}), bitwise invariant "
               f"{num('pct_invariant'):.1f} % of {met.get('pairs_checked', 0)} (shape, M) pairs "
               f"({'ok' if met.get('invariant_ok') else 'MISSED'})")
    return f"== invariant/cuBLAS throughput by shape\n{body}\n== {verdict}"


if __name__ == "__main__":
    raise SystemExit(main())

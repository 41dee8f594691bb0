"""`python -m profiler invariance matmul|layer|report ...`: what batch-invariant kernels cost, and where the
default kernels break invariance (issue 11).

  matmul  TFLOP/s vs tokens M at the config's weight-GEMM shapes, torch (cuBLAS) vs the invariant Triton
          kernel, and for every M whether each kernel was invariant (a row alone vs inside M rows), over
          a dense M search and an inner-dimension (K) search
  layer   one prompt alone and inside batches through the profiler's layer (default and invariant kernels):
          logits and greedy tokens bitwise equal? which step differs first? forward latency of both
  report  one HTML page (and the summary table) from any of the above result directories
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from profiler.errors import UserError
from profiler.hardware import resolve_device

ACTIONS = ("matmul", "layer", "report")
EXAMPLES = """examples:
  python -m profiler invariance matmul --config pythia-1b --out runs/invariance
  python -m profiler invariance matmul --config llama-2-7b-like --no-k-search --max-tokens 4096
  python -m profiler invariance layer --config pythia-1b --batch 2,8,32,64 --out runs/invariance
  python -m profiler invariance report runs/invariance runs/engines --out runs/invariance-all
without a GPU the invariant kernels run in Triton's interpreter (pip install -e ".[invariance]"): small defaults, and the
numbers prove the wiring, not the speed."""
CPU = {"max_tokens": 8, "prompt_len": 16, "batches": "2,3", "dtype": "float32"}
GPU = {"max_tokens": 8192, "prompt_len": 128, "batches": "2,4,8,16,32,64", "dtype": "bfloat16"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("action", choices=ACTIONS, help="matmul | layer | report")
    parser.add_argument("inputs", nargs="*", help="(report only) result directories")
    parser.add_argument("--config", action="append", metavar="NAME_OR_PATH",
                        help="bundled name (pythia-1b, llama-2-7b-like, ...) or a config file; repeat for several")
    parser.add_argument("--out", type=Path, default=Path("runs/invariance"), help="output directory (default runs/invariance)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="default bfloat16 on a GPU, float32 on a CPU (the interpreter)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--logits", action="store_true", help="matmul: add the logit layer's GEMM (h -> v)")
    parser.add_argument("--max-tokens", type=int, help="matmul: largest M (default 8192; 8 on a CPU)")
    parser.add_argument("--tokens", help="matmul: the M of the TFLOP/s sweep, comma-separated (default powers of two "
                        "1..8192 and 3, 7, 100, 1000, 3000)")
    parser.add_argument("--check-tokens", help="matmul: the M of the invariance check (default every M to 512, "
                        "every 8th to 2048, every 64th to 8192)")
    parser.add_argument("--k-search", help="matmul: inner dimensions searched at N=h (default 256..16384, powers of two)")
    parser.add_argument("--no-k-search", action="store_true", help="matmul: skip the inner-dimension search")
    parser.add_argument("--no-check", action="store_true", help="matmul: TFLOP/s only, no invariance check")
    parser.add_argument("--warmup-ms", type=float, default=25.0, help="per-point warm-up budget (default 25)")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="per-point measuring budget (default 100)")
    parser.add_argument("--prompt-len", type=int, help="layer: tokens per prompt (default 128; 16 on a CPU)")
    parser.add_argument("--batch", help="layer: batch sizes holding the prompt, each >= 2 (default 2,4,8,16,32,64)")
    parser.add_argument("--positions", default="first,last", help="layer: where the prompt sits (default first,last)")
    parser.add_argument("--attention", choices=["eager", "sdpa", "flash"], help="layer: default the config's")
    parser.add_argument("--no-logits", action="store_true", help="layer: the transformer layer only, no logit layer")
    parser.add_argument("--no-latency", action="store_true", help="layer: skip the forward latency comparison")
    parser.add_argument("--no-report", action="store_true", help="write CSV/JSON only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")




def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    from profiler.sweeps.spec import parse_values

    return parse_values(text, flag)


def _require_kernels(device: torch.device) -> None:
    from models.invariant import available

    reason = available(device)
    if reason:
        raise UserError(reason)


def _configs(args, **overrides):
    from models import load_config

    if not args.config:
        raise UserError(f"--config: {args.action} needs at least one config (e.g. --config pythia-1b)")
    configs = [load_config(ref, **{k: v for k, v in overrides.items() if v is not None}) for ref in args.config]
    if len({c.name for c in configs}) != len(configs):
        raise UserError("--config: the same config is named twice; give each config once")
    return configs


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _notice_cpu(device: torch.device) -> None:
    if device.type == "cpu":
        print("notice: no CUDA device; the invariant kernels run in Triton's interpreter with small defaults. "
              "CPU numbers prove the wiring, not GPU performance.", file=sys.stderr)


def run_matmul(args) -> int:
    from models.invariant.matmul import DESCRIPTION

    from profiler.hardware import environment
    from profiler.invariance import files, matmul_bench, shapes

    device = resolve_device(args.device)
    _require_kernels(device)
    defaults = GPU if device.type == "cuda" else CPU
    dtype = getattr(torch, args.dtype or defaults["dtype"])
    max_tokens = args.max_tokens or defaults["max_tokens"]
    if max_tokens < 1:
        raise UserError(f"--max-tokens: must be positive, got {max_tokens}")
    sweep = _ints(args.tokens, "--tokens") or shapes.sweep_tokens(max_tokens)
    check = _ints(args.check_tokens, "--check-tokens") or shapes.check_tokens(max_tokens)
    ks = _ints(args.k_search, "--k-search") or shapes.K_SEARCH
    configs = _configs(args)
    _notice_cpu(device)
    k_search = not args.no_k_search and (device.type == "cuda" or args.k_search is not None)
    # a CPU's interpreter makes every call seconds long: one warm-up and one timed call per point say the wiring
    budget = matmul_bench.Budget(args.warmup_ms, args.rep_ms, min_reps=5 if device.type == "cuda" else 1)
    if device.type == "cpu":
        _estimate_cpu(configs, args, sweep, check, ks if k_search else (), budget, dtype, device)
    import pandas as pd

    run = {"environment": environment(device), "dtype": str(dtype).removeprefix("torch."), "sweep_tokens": list(sweep),
           "check_tokens": list(check), "k_search": list(ks) if k_search else [], "budget": budget.__dict__,
           "configs": {}, "complete": False,
           "kernels": {"torch": "torch.nn.functional.linear (cuBLAS / cuBLASLt on CUDA)",
                       "invariant": f"models.invariant.invariant_linear: {DESCRIPTION}"}}
    throughput, checks = [], []

    def save() -> None:  # after every part: a stopped run keeps what it measured
        frames = {"throughput": pd.concat(throughput, ignore_index=True)} if throughput else {}
        if checks:
            frames["check"] = pd.concat(checks, ignore_index=True)
        files.save(args.out, "matmul", frames, run)

    try:
        for cfg in configs:
            gemms = shapes.weight_gemm_shapes(cfg, include_logits=args.logits)
            started = time.perf_counter()
            throughput.append(matmul_bench.throughput(gemms, sweep, dtype=dtype, device=device, budget=budget,
                                                      progress=_progress(args), config_name=cfg.name))
            run["configs"][cfg.name] = {"tiles": {g.label: matmul_bench.tile_label(g, dtype, device) for g in gemms}}
            save()
            print(f"{cfg.name}: TFLOP/s at {len(sweep)} token counts x {len(gemms)} shapes in {time.perf_counter() - started:.1f} s")
            if not args.no_check:
                started = time.perf_counter()
                checks.append(matmul_bench.invariance(gemms, check, dtype=dtype, device=device, progress=_progress(args),
                                                      config_name=cfg.name))
                if k_search:
                    checks.append(matmul_bench.invariance(shapes.k_search_shapes(cfg, ks), shapes.k_search_tokens(max(check)),
                                                          dtype=dtype, device=device, progress=_progress(args),
                                                          config_name=cfg.name))
                save()
                print(f"{cfg.name}: invariance over {len(check)} token counts"
                      f"{f' and K in {ks}' if k_search else ''} in {time.perf_counter() - started:.1f} s")
    except KeyboardInterrupt:
        if throughput or checks:
            save()
        print(f"interrupted: what was measured is in {args.out} ({len(throughput)} config(s) timed, {len(checks)} "
              "check(s)); run again to measure the rest", file=sys.stderr)
        return 130
    run["complete"] = True
    save()
    return _finish(args, [args.out])


def _estimate_cpu(configs, args, sweep, check, ks, budget, dtype, device) -> None:
    """Say before starting how long the interpreter will take, from one probe call (issue 25: a run that
    gave no estimate ran past ten minutes)."""
    from profiler.invariance import matmul_bench, shapes

    calls = []
    for cfg in configs:
        gemms = shapes.weight_gemm_shapes(cfg, include_logits=args.logits)
        calls += matmul_bench.invariant_calls(
            gemms, sweep, () if args.no_check else check, budget=budget,
            check_shapes=shapes.k_search_shapes(cfg, ks) if ks and not args.no_check else [],
            check_shape_tokens=shapes.k_search_tokens(max(check)) if ks and not args.no_check else ())
    seconds, probe = matmul_bench.estimate_seconds(calls, dtype=dtype, device=device)
    print(f"estimate: about {_duration(seconds)} on this CPU ({len(calls)} calls of the invariant kernel in Triton's "
          f"interpreter; the smallest took {probe:.2f} s). --max-tokens, --no-check or a smaller --config shorten it; "
          "results are saved after every part, so Ctrl-C keeps what was measured.", file=sys.stderr)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def run_layer(args) -> int:
    from profiler.hardware import environment
    from profiler.invariance import files
    from profiler.invariance.layer_check import LayerCheckSpec, check_layer

    device = resolve_device(args.device)
    _require_kernels(device)
    defaults = GPU if device.type == "cuda" else CPU
    dtype_name = args.dtype or defaults["dtype"]
    batches = _ints(args.batch or defaults["batches"], "--batch")
    prompt_len = args.prompt_len or defaults["prompt_len"]
    positions = tuple(p.strip() for p in args.positions.split(",") if p.strip())
    if any(b < 2 for b in batches):
        raise UserError("--batch: each batch must hold the prompt and at least one other, i.e. be >= 2")
    if prompt_len < 1:
        raise UserError(f"--prompt-len: must be positive, got {prompt_len}")
    bad = [p for p in positions if p not in ("first", "last")]
    if bad or not positions:
        raise UserError(f"--positions: '{args.positions}' must list first and/or last")
    _notice_cpu(device)
    attention = args.attention
    if device.type == "cpu" and attention is None:
        attention = "sdpa"  # the flash backend is CUDA only; the configs' own choice may be flash
    outputs, steps, latency, ops, notes = [], [], [], [], []
    import pandas as pd

    configs = _configs(args, seq_length=prompt_len, micro_batch_size=1, dtype=dtype_name, attention=attention)
    for cfg in configs:
        if device.type == "cpu" and cfg.attention == "flash":
            cfg = cfg.replace(attention="sdpa")
        started = time.perf_counter()
        spec = LayerCheckSpec(cfg, batches=batches, positions=positions, include_logits=not args.no_logits,
                              measure_latency=not args.no_latency, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                              min_reps=5 if device.type == "cuda" else 1)
        result = check_layer(spec, device=device, dtype=getattr(torch, dtype_name), progress=_progress(args))
        outputs.append(result.outputs)
        steps.append(result.steps)
        latency.append(result.latency)
        ops.append(result.ops)
        notes += result.notes
        print(f"{cfg.name}: {len(result.outputs)} runs in {time.perf_counter() - started:.1f} s")
    frames = {"outputs": pd.concat(outputs, ignore_index=True), "steps": pd.concat(steps, ignore_index=True),
              "latency": pd.concat(latency, ignore_index=True), "ops": pd.concat(ops, ignore_index=True)}
    run = {"environment": environment(device), "dtype": dtype_name, "prompt_len": prompt_len,
           "batches": list(batches), "positions": list(positions), "notes": notes,
           "configs": {c.name: c.to_dict() for c in configs}}
    files.save(args.out, "layer", frames, run)
    return _finish(args, [args.out])


def run_report(args) -> int:
    if not args.inputs:
        raise UserError("report: give one or more result directories (the --out of matmul, layer or "
                        "`python -m inference invariance`)")
    missing = [d for d in args.inputs if not Path(d).is_dir()]
    if missing:
        raise UserError(f"report: {missing[0]} is not a directory")
    return _finish(args, [Path(d) for d in args.inputs], always_report=True)


def _finish(args, dirs: list[Path], *, always_report: bool = False) -> int:
    from reports.invariance_report import summary_text, write_report

    from profiler.invariance import files

    frames, _ = files.load(dirs)
    if not frames:
        raise UserError(f"report: no invariance results in {', '.join(map(str, dirs))}")
    print(summary_text(frames))
    if always_report or not args.no_report:
        print(f"report: {write_report(dirs, args.out)}")
    return 0


def run(args) -> int:
    return {"matmul": run_matmul, "layer": run_layer, "report": run_report}[args.action](args)

"""`python -m profiler layer --config A [--config B ...]`: profile full layers and write the report.

A run directory keeps every config profiled into it (re-running resumes; a config re-profiled replaces only
its own rows and trace); --fresh starts it over. Exit codes: 0 all good, 1 a config failed (out of memory),
2 a user mistake, 3 a self-check failed (unless --allow-failed-checks).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from models import count_parameters, layer_flops, layer_gemms, load_config
from models.config import ModelConfig

from ..errors import UserError
from ..hardware import environment, measure_copy_bandwidth, measure_matmul_peak, resolve_device
from ..layer_profile import MODES, ProfileOptions, profile_layer
from ..memory import available_bytes, layer_run_bytes
from ..outputs import prepare_out_dir, write_atomic
from ..sizing import sizing_findings

CPU_SEQ_LENGTH = 128  # small defaults without CUDA, so a CPU run finishes in seconds
CPU_MAX_LAYER_PARAMS = 400_000_000
CPU_CONFIRM_S = 120  # a CPU run estimated longer than this needs --device cpu said explicitly
EXIT_CHECK_FAILED = 3


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", required=True, metavar="NAME_OR_PATH",
                   help="bundled name (pythia-1b, gpt3-2.7b, paper-large, ...), a YAML file, a GPT-NeoX YAML or a "
                        "transformers config.json; repeat to compare configs side by side")
    p.add_argument("--batch", type=int, help="micro-batch size b (default: the config's)")
    p.add_argument("--seq-len", type=int, help="sequence length s (default: the config's; at most 128 on a CPU)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: the config's dtype (a GPT-NeoX config's precision or fp16/bf16 block); "
                        "float32 on a CPU, which says so")
    p.add_argument("--attention", choices=["eager", "sdpa", "flash"], help="default: the config's")
    p.add_argument("--mode", choices=MODES, default="forward")
    p.add_argument("--tensor-parallel", type=int, help="t: profile the per-GPU shapes h/t, 3h/t, 4h/t, a/t")
    p.add_argument("--logits", action="store_true", help="add the logit layer (h -> v/t GEMM)")
    p.add_argument("--warmup", type=int, default=None,
                   help="fewest traced warm-up steps (default 2); warm-up goes on until the step time is stable")
    p.add_argument("--iters", type=int, default=None, help="profiled steps (default 10; 3 on a CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/layer"),
                   help="run directory (default runs/layer); keeps every config profiled into it")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--no-floor", action="store_true", help="skip timing the GEMMs and attention alone")
    p.add_argument("--force", action="store_true", help="re-profile the named configs even if already in --out")
    p.add_argument("--fresh", action="store_true", help="start --out over: drop every config profiled into it before")
    p.add_argument("--distributed", action="store_true",
                   help="t processes (torchrun, one per GPU, NCCL) running a Megatron-style tensor-parallel layer with "
                        "real all-reduces; with --device cpu, gloo (wiring only)")
    p.add_argument("--no-telemetry", action="store_true",
                   help="do not sample SM clock and power (NVML) in a background thread; the clock check then skips")
    p.add_argument("--allow-failed-checks", action="store_true",
                   help="exit 0 even when a self-check fails (the failure is still printed and recorded)")




def resolve_configs(args, device: torch.device) -> tuple[list[ModelConfig], dict[str, list[dict]]]:
    """The configs as they will run, and per config the switches made for this device (printed and recorded)."""
    on_cpu = device.type == "cpu"
    configs, switches = [], {}
    for ref in args.config:
        base = load_config(ref)
        overrides = {"micro_batch_size": args.batch, "seq_length": args.seq_len, "attention": args.attention,
                     "tensor_parallel": args.tensor_parallel, "dtype": args.dtype}
        made = []
        if on_cpu:
            if args.seq_len is None and base.seq_length > CPU_SEQ_LENGTH:
                overrides["seq_length"] = CPU_SEQ_LENGTH
                made.append({"field": "seq_length", "from": base.seq_length, "to": CPU_SEQ_LENGTH,
                             "why": "CPU default: small enough to finish in seconds"})
            if args.dtype is None and base.dtype != "float32":  # an explicit --dtype is the user's to keep
                overrides["dtype"] = "float32"
                made.append({"field": "dtype", "from": base.dtype, "to": "float32",
                             "why": "half-precision matmuls on a CPU are emulated and slow"})
            if (args.attention or base.attention) == "flash":
                overrides["attention"] = "sdpa"
                made.append({"field": "attention", "from": "flash", "to": "sdpa",
                             "why": "the flash kernel needs CUDA; PyTorch's SDPA picks its CPU kernel"})
        cfg = load_config(ref, **overrides)
        if on_cpu and count_parameters(cfg).per_layer > CPU_MAX_LAYER_PARAMS:
            raise UserError(f"config: {cfg.name} has {count_parameters(cfg).per_layer / 1e6:.0f}M parameters per layer, "
                            "too large to profile on the CPU; run it on a GPU")
        configs.append(cfg)
        switches[cfg.name] = made
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UserError("--config: the same config is named twice; give each config once")
    return configs, switches


def check_fits(cfg: ModelConfig, options: ProfileOptions, device: torch.device) -> None:
    need = layer_run_bytes(cfg, backward=options.backward, include_logits=options.include_logits)
    have, where = available_bytes(device)
    if have and need > have:
        flag = "--seq-len" if cfg.attention == "eager" or cfg.seq_length > 8192 else "--batch"
        raise UserError(f"{flag}: {cfg.name} at b={cfg.micro_batch_size}, s={cfg.seq_length} needs about "
                        f"{need / 2**30:,.1f} GiB and {have / 2**30:,.1f} GiB is free ({where}); lower --seq-len or --batch")


def estimate_cpu_seconds(cfg: ModelConfig, options: ProfileOptions, gflops: float) -> float:
    """Rough wall time of one config on this CPU: the layer's FLOPs over the measured matmul rate, times the
    steps the run takes (latency repetitions, traced steps, the floor's traced steps per GEMM)."""
    step = layer_flops(cfg, include_logits=options.include_logits, backward=options.backward) / (gflops * 1e9)
    layer_steps = 5 + 9 + options.active_steps + 4  # latency reps, warm-up windows, traced, traced warm-up
    gemm_flops = sum(g.flops for g in layer_gemms(cfg, include_logits=options.include_logits)) * (3 if options.backward else 1)
    floor = gemm_flops / (gflops * 1e9) * (options.active_steps + 14) if options.measure_floor else 0.0
    return step * layer_steps + floor


def cpu_gflops() -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    return 5 * 2 * 512**3 / (time.perf_counter() - t0) / 1e9


def describe(cfg: ModelConfig, include_logits: bool) -> str:
    params = count_parameters(cfg)
    lines = [f"{cfg.name}: h={cfg.hidden_size} a={cfg.num_attention_heads} (h/a={cfg.head_dim}) L={cfg.num_layers} "
             f"s={cfg.seq_length} b={cfg.micro_batch_size} v={cfg.embedding_rows} t={cfg.tensor_parallel} "
             f"{cfg.activation} {cfg.norm} {cfg.positional} {cfg.residual} attention={cfg.attention} {cfg.dtype}",
             f"  parameters: {params.total:,} total, {params.non_embedding:,} non-embedding "
             f"({params.per_layer:,} per layer)",
             "  GEMMs per GPU (Table II):"]
    for g in layer_gemms(cfg, include_logits=include_logits):
        lines.append(f"    {g.component:<22} {g.shape:<34} {g.flops / 1e9:10.2f} GFLOP")
    if cfg.attention != "eager":
        lines.append(f"    {cfg.attention + '_attention':<22} {'fused score + softmax + over values':<34}")
    return "\n".join(lines)


# ---- the run directory: run.json + components.csv, validated on resume --------------------------------------
def _load_previous(out: Path) -> dict:
    path = out / "run.json"
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"--out: {path} is not valid JSON{where}; delete it or pass --fresh to start the run over") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("configs", []), list) or \
            not all(isinstance(e, dict) and "name" in e for e in doc.get("configs", [])):
        raise UserError(f"--out: {path} is not a layer run (no 'configs' list of named entries); "
                        "delete it or pass --fresh to start the run over")
    return doc


def components_digest(frame: pd.DataFrame) -> str:
    """A fingerprint of one config's rows, kept in run.json: a components.csv cut or edited after the run no
    longer matches it, and that config is profiled again instead of being reported from damaged rows."""
    buffer = io.StringIO()
    frame.drop(columns=["config"], errors="ignore").to_csv(buffer, index=False, float_format="%.6g")
    return hashlib.sha256(buffer.getvalue().encode()).hexdigest()[:16]


def _read_components(out: Path) -> tuple[dict[str, pd.DataFrame], str | None]:
    path = out / "components.csv"
    if not path.exists():
        return {}, None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return {}, f"{path} does not parse ({type(exc).__name__})"
    if "config" not in df.columns:
        return {}, f"{path} has no 'config' column"
    return {name: group.reset_index(drop=True) for name, group in df.groupby("config", sort=False)}, None


def _same_run(entry: dict, cfg: ModelConfig, options: ProfileOptions, env: dict) -> bool:
    return (entry.get("status") == "ok" and entry.get("config") == cfg.to_dict()
            and entry.get("options") == options.to_dict() and entry.get("gpu_name") == env.get("gpu_name"))


def _drop_traces(out: Path, name: str) -> None:
    for path in (out / "tb").glob(f"{name}.*.pt.trace.json*"):
        path.unlink(missing_ok=True)


def _persist(out: Path, env: dict, entries: dict[str, dict], frames: dict[str, pd.DataFrame]) -> dict:
    """Written after every config (atomically), so an interrupted run keeps what it measured."""
    doc = {"environment": env, "configs": list(entries.values())}
    write_atomic(out / "run.json", json.dumps(doc, indent=2, default=str))
    if frames:
        write_atomic(out / "components.csv", pd.concat(frames.values(), ignore_index=True).to_csv(index=False))
    return doc


def _fresh(out: Path) -> None:
    for name in ("run.json", "components.csv", "report.html"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


def _peaks(device: torch.device, configs: list[ModelConfig], env: dict) -> dict[str, float]:
    """The GEMM ceiling in each dtype the run profiles (a float32 layer is not judged against a bf16 peak)."""
    peaks = {}
    for dtype in dict.fromkeys(c.dtype for c in configs):
        peak = measure_matmul_peak(device, dtype=getattr(torch, dtype))
        peaks[dtype] = round(peak["tflops"], 1)
        env.setdefault("measured_peaks", {})[dtype] = {
            "tflops": round(peak["tflops"], 1), "sustained_tflops": round(peak["sustained_tflops"], 1),
            "how": f"{peak['shape']} {peak['dtype']} matmul on random data, median of {peak['repeats']}, GPU idle "
                   "as long as each product between products (sustained_tflops: back to back)"}
    first = configs[0].dtype
    env["measured_peak_tflops"] = peaks[first]
    env["measured_peak"] = env["measured_peaks"][first]["how"]
    return peaks


def run(args) -> int:
    from reports.layer_report import write_layer_report

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    for name in ("batch", "seq_len", "tensor_parallel", "iters"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')}: must be a positive whole number, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup: the fewest warm-up steps must be 0 or more, got {args.warmup}")
    if args.distributed:
        return run_distributed(args)
    configs, switches = resolve_configs(args, device)
    options = ProfileOptions(mode=args.mode, include_logits=args.logits, measure_floor=not args.no_floor,
                             active_steps=args.iters or (3 if on_cpu else 10),
                             bench_warmup_ms=10 if on_cpu else 50, bench_rep_ms=50 if on_cpu else 300)
    min_warmup = 2 if args.warmup is None else args.warmup
    for cfg in configs:
        check_fits(cfg, options, device)
        if cfg.positional == "rotary" and cfg.seq_length > cfg.max_position_embeddings:
            print(f"notice: {cfg.name}: seq_length {cfg.seq_length} exceeds max_position_embeddings "
                  f"{cfg.max_position_embeddings}; rotary tables extend, but a trained model never saw it", file=sys.stderr)
    if on_cpu:
        gflops = cpu_gflops()
        seconds = sum(estimate_cpu_seconds(c, options, gflops) for c in configs)
        print(f"notice: no CUDA device; profiling on the CPU ({gflops:.0f} GFLOP/s matmul). CPU numbers prove the "
              f"wiring, not GPU performance. Estimated time: {_duration(seconds)}.", file=sys.stderr)
        if seconds > CPU_CONFIRM_S and args.device != "cpu":
            raise UserError(f"--device: this run would take about {_duration(seconds)} on this CPU; pass "
                            "--device cpu to run it anyway, or lower --seq-len / --batch, or use a GPU")
    for cfg in configs:
        for s in switches[cfg.name]:
            print(f"notice: {cfg.name}: {s['field']} {s['from']} -> {s['to']} ({s['why']})", file=sys.stderr)
    out: Path = prepare_out_dir(args.out)
    if args.fresh:
        _fresh(out)
    previous = _load_previous(out)
    env = environment(device)
    from ..telemetry import Telemetry

    telemetry = Telemetry(device.index or 0).start() if not (on_cpu or args.no_telemetry) else None
    try:
        return _run_configs(args, configs, switches, options, min_warmup, out, env, previous, device, telemetry,
                            write_layer_report)
    finally:
        if telemetry is not None:
            telemetry.stop()


def _run_configs(args, configs, switches, options, min_warmup, out, env, previous, device, telemetry,
                 write_layer_report) -> int:
    on_cpu = device.type == "cpu"
    peaks = {}
    if not on_cpu:
        peaks = _peaks(device, configs, env)
        env["measured_copy_tbps"] = round(measure_copy_bandwidth(device)["tbps"], 3)
    entries = {e["name"]: e for e in previous.get("configs", [])}
    old_frames, problem = _read_components(out)
    if problem and entries:
        print(f"notice: {problem}; every config in {out} will be profiled again", file=sys.stderr)
    frames = {name: f for name, f in old_frames.items() if name in entries}
    failures, failed_checks = 0, []
    for i, cfg in enumerate(configs, 1):
        print(describe(cfg, options.include_logits))
        prior = entries.get(cfg.name)
        if prior and not args.force and _same_run(prior, cfg, options, env):
            kept = frames.get(cfg.name)
            if kept is not None and prior.get("components_digest") == components_digest(kept):
                print(f"  [{i}/{len(configs)}] already profiled in {out} with the same options; kept (--force to redo)")
                failed_checks += [f"{cfg.name}: {n}" for n in prior.get("checks_summary", {}).get("failed", [])]
                continue
            print(f"notice: {cfg.name}: its rows in {out / 'components.csv'} are missing or do not match run.json; "
                  "profiling it again", file=sys.stderr)
        _drop_traces(out, cfg.name)
        entries.pop(cfg.name, None)
        frames.pop(cfg.name, None)
        try:
            result = profile_layer(cfg, options_for(options, min_warmup), out_dir=out, device=device,
                                   peak_tflops=peaks.get(cfg.dtype), telemetry=telemetry, environment=env,
                                   progress=lambda m, i=i: print(f"  [{i}/{len(configs)}] {m}", flush=True))
        except torch.cuda.OutOfMemoryError:
            failures += 1
            message = (f"{cfg.name}: CUDA out of memory at b={cfg.micro_batch_size}, s={cfg.seq_length}, "
                       f"t={cfg.tensor_parallel}; lower --batch or --seq-len, or raise --tensor-parallel")
            print(f"error: {message}", file=sys.stderr)
            entries[cfg.name] = {"name": cfg.name, "status": "oom", "error": message, "config": cfg.to_dict()}
            torch.cuda.empty_cache()
            _persist(out, env, entries, frames)
            continue
        summary = result.summary
        summary.update({"options": options.to_dict(), "gpu_name": env.get("gpu_name"), "device": str(device),
                        "switches": switches[cfg.name],
                        "sizing_findings": [f.to_dict() for f in sizing_findings(cfg, sms=env.get("sm_count"))],
                        "components_digest": components_digest(result.components)})
        entries[cfg.name] = summary
        frames[cfg.name] = result.components
        _print_result(summary, result.components)
        failed_checks += [f"{cfg.name}: {n}" for n in summary["checks_summary"]["failed"]]
        _persist(out, env, entries, frames)
    run_doc = _persist(out, env, entries, frames)
    components = pd.concat(frames.values(), ignore_index=True) if frames else pd.DataFrame()
    report = write_layer_report(run_doc, components, out / "report.html")
    print(f"wrote {report}, {out / 'components.csv'}, {out / 'run.json'} and traces in {out / 'tb'}")
    if failed_checks:
        print(f"CHECKS FAILED ({len(failed_checks)}): {'; '.join(failed_checks)}", file=sys.stderr)
    if failures:
        return 1
    return EXIT_CHECK_FAILED if failed_checks and not args.allow_failed_checks else 0


def run_distributed(args) -> int:
    """--distributed: one process per GPU under torchrun (profiler.distributed); checked before any GPU work."""
    from ..distributed import DistributedJob, require_gpus, run_distributed_layer

    t, device = args.tensor_parallel or 1, ("cpu" if args.device == "cpu" else "cuda")
    if device == "cuda":
        require_gpus(t)
    if args.logits:
        raise UserError("--logits: not with --distributed yet (the vocabulary-parallel logit layer needs collectives "
                        "of its own); drop --logits")
    configs, _ = resolve_configs(args, torch.device(device))
    for cfg in configs:
        print(describe(cfg, False))
    out = prepare_out_dir(args.out)
    if args.fresh:
        _fresh(out)
    job = DistributedJob.for_configs(configs, out=out, device=device, mode=args.mode,
                                     warmup_steps=args.warmup if args.warmup is not None else (1 if device == "cpu" else 3),
                                     active_steps=args.iters or (3 if device == "cpu" else 10),
                                     bench_rep_ms=50 if device == "cpu" else 300)
    return run_distributed_layer(job, allow_failed_checks=args.allow_failed_checks)


def options_for(options: ProfileOptions, min_warmup: int) -> ProfileOptions:
    import dataclasses

    return dataclasses.replace(options, min_trace_warmup_steps=min_warmup)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _print_result(summary: dict, components: pd.DataFrame) -> None:
    lat = summary["latency_us"]
    unit, scale = ("TFLOP/s", 1.0) if summary["layer_tflops"] >= 1 else ("GFLOP/s", 1e3)
    line = (f"  latency {lat['median']:.1f} us (p10 {lat['p10']:.1f}, p90 {lat['p90']:.1f}, n={lat['repeats']}); "
            f"kernels {summary['busy_us']:.1f} us, idle/launch gaps {summary['idle_us']:.1f} us; "
            f"{summary['layer_tflops'] * scale:.1f} {unit}; GEMM share {100 * summary['gemm_share']:.1f}% of kernel time, "
            f"{100 * summary['gemm_share_of_latency']:.1f}% of latency; coverage {100 * summary['coverage']:.2f}%")
    if summary.get("floor_ratio"):
        line += f"; {summary['floor_ratio']:.2f}x of floor"
    print(line)
    if summary.get("launch_bound"):
        print(f"  launch-bound: {summary['launch_bound_evidence']}")
    cols = [c for c in ("pass", "component", "role", "kind", "time_us", "share_of_kernel_time", "share_of_latency",
                        "tflops", "vs_alone_pct", "vs_alone_check") if c in components]
    table = components[cols].copy()
    for c in ("share_of_kernel_time", "share_of_latency"):
        table[c] = (100 * table[c]).round(1)
    if summary["layer_tflops"] < 1 and "tflops" in table:
        table = table.rename(columns={"tflops": "gflops"})
        table["gflops"] = table["gflops"] * 1e3
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for check in summary["checks"]:
        mark = {"pass": "ok  ", "fail": "FAIL", "skipped": "skip"}[check["status"]]
        print(f"  [{mark}] {check['name']}: {check['observed']}" + (f"  (tolerance: {check['tolerance']})"
                                                                    if check["status"] == "fail" else ""))

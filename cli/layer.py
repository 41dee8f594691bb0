"""`python -m profiler layer --config A [--config B ...]`: profile full layers and write the report.

A run directory keeps every config profiled into it (profiler.run_dir: re-running resumes; a config
re-profiled replaces only its own rows and trace); --fresh starts it over. Exit codes: 0 all good, 1 a config
failed (out of memory), 2 a user mistake, 3 a self-check failed (unless --allow-failed-checks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from models import count_parameters, layer_gemms
from models.config import ModelConfig
from profiler.advisor import resolve_gpu
from profiler.advisor.rules import sizing_findings
from profiler.cpu_estimate import CONFIRM_S, cpu_gflops, duration, layer_seconds
from profiler.errors import UserError
from profiler.hardware import environment, measure_copy_bandwidth, measure_matmul_peak, resolve_device
from profiler.layer_plan import LayerRequest, resolve_configs, resolve_options
from profiler import protocol as P
from profiler.layer_profile import MODES, ProfileOptions, profile_layer
from profiler.memory import available_bytes, layer_run_bytes
from profiler.outputs import prepare_out_dir
from profiler.run_dir import LayerRunDir, clear_run_files, components_digest, run_dir_lock

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
                   help="fewest warm-up windows (default 2); warm-up goes on until the rounds' time is stable")
    p.add_argument("--iters", type=int, default=None,
                   help="fewest interleaved rounds of each kind per attempt (default 10; 3 on a CPU); on a GPU more, "
                        f"up to {P.MAX_ROUNDS_PER_ATTEMPT}, until an attempt spans {P.ATTEMPT_WINDOW_MS / 1e3:.1f} s, "
                        "whichever comes first, then more until the rounds' mean is known to "
                        f"{100 * P.PRECISION_TARGET:.1f}%% (at most {P.EXTENDED_WINDOW_MS / 1e3:.0f} s or "
                        f"{P.MOST_ROUNDS_PER_ATTEMPT} rounds; profiler/protocol.py)")
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




def request_from(args) -> LayerRequest:
    return LayerRequest(configs=tuple(args.config), batch=args.batch, seq_len=args.seq_len, dtype=args.dtype,
                        attention=args.attention, tensor_parallel=args.tensor_parallel, mode=args.mode,
                        include_logits=args.logits, measure_floor=not args.no_floor, iters=args.iters,
                        warmup=args.warmup)


def check_fits(cfg: ModelConfig, options: ProfileOptions, device: torch.device) -> None:
    need = layer_run_bytes(cfg, backward=options.backward, include_logits=options.include_logits)
    have, where = available_bytes(device)
    if have and need > have:
        flag = "--seq-len" if cfg.attention == "eager" or cfg.seq_length > 8192 else "--batch"
        raise UserError(f"{flag}: {cfg.name} at b={cfg.micro_batch_size}, s={cfg.seq_length} needs about "
                        f"{need / 2**30:,.1f} GiB and {have / 2**30:,.1f} GiB is free ({where}); lower --seq-len or --batch")


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


def _peaks(device: torch.device, configs: list[ModelConfig], env: dict) -> dict[str, float]:
    """The 8192^3 GEMM back to back in each dtype the run profiles: a candidate ceiling under the protocol's
    definition (profile_layer takes the fastest GEMM of it and its own rounds; a float32 layer is not judged
    against a bf16 peak). The idle-between-products figure is recorded beside it."""
    peaks = {}
    for dtype in dict.fromkeys(c.dtype for c in configs):
        peak = measure_matmul_peak(device, dtype=getattr(torch, dtype))
        peaks[dtype] = round(peak["sustained_tflops"], 1)
        env.setdefault("measured_peaks", {})[dtype] = {
            "tflops": round(peak["sustained_tflops"], 1), "rested_tflops": round(peak["tflops"], 1),
            "how": f"{peak['shape']} {peak['dtype']} matmul on random data, back to back (rested_tflops: the GPU "
                   "idle as long as each product between products)"}
    first = configs[0].dtype
    env["measured_peak_tflops"] = peaks[first]
    env["measured_peak"] = env["measured_peaks"][first]["how"]
    return peaks


def findings_gpu(env: dict):
    """The GPU model the sizing rules judge this run's shapes on: the local GPU where the advisor's table knows
    it (its own SM count), else the H100 model, said in the finding's label."""
    try:
        return resolve_gpu(None, local=(env["gpu_name"], env["sm_count"])) if env.get("gpu_name") else resolve_gpu("h100")
    except UserError:
        return resolve_gpu("h100")


def run(args) -> int:
    from reports.layer_report import write_layer_report

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    request = request_from(args)
    if args.distributed:
        return run_distributed(args, request)
    configs, switches = resolve_configs(request, device)
    options, option_switches = resolve_options(request, device)
    for cfg in configs:
        check_fits(cfg, options, device)
        if cfg.positional == "rotary" and cfg.seq_length > cfg.max_position_embeddings:
            print(f"notice: {cfg.name}: seq_length {cfg.seq_length} exceeds max_position_embeddings "
                  f"{cfg.max_position_embeddings}; rotary tables extend, but a trained model never saw it", file=sys.stderr)
    if on_cpu:
        gflops = cpu_gflops()
        seconds = sum(layer_seconds(c, options, gflops) for c in configs)
        print(f"notice: no CUDA device; profiling on the CPU ({gflops:.0f} GFLOP/s matmul). CPU numbers prove the "
              f"wiring, not GPU performance. Estimated time: {duration(seconds)}.", file=sys.stderr)
        if seconds > CONFIRM_S and args.device != "cpu":
            raise UserError(f"--device: this run would take about {duration(seconds)} on this CPU; pass "
                            "--device cpu to run it anyway, or lower --seq-len / --batch, or use a GPU")
    for cfg in configs:
        for switch in switches[cfg.name]:
            print(switch.line(cfg.name), file=sys.stderr)
    for switch in option_switches:
        print(switch.line("every config"), file=sys.stderr)
    run_dir = LayerRunDir(prepare_out_dir(args.out), fresh=args.fresh)  # waits while another run writes there
    env = environment(device)
    from profiler.telemetry import Telemetry

    telemetry = Telemetry(device.index or 0).start() if not (on_cpu or args.no_telemetry) else None
    try:
        made = {name: [s.to_dict() for s in (*made, *option_switches)] for name, made in switches.items()}
        return _run_configs(args, configs, made, options, run_dir, env, device, telemetry, write_layer_report)
    finally:
        run_dir.close()
        if telemetry is not None:
            telemetry.stop()


def _run_configs(args, configs, switches, options, run_dir: LayerRunDir, env, device, telemetry,
                 write_layer_report) -> int:
    on_cpu = device.type == "cpu"
    out = run_dir.out
    peaks = {}
    if not on_cpu:
        peaks = _peaks(device, configs, env)
        env["measured_copy_tbps"] = round(measure_copy_bandwidth(device)["tbps"], 3)
    if run_dir.problem and run_dir.entries:
        print(f"notice: {run_dir.problem}; every config in {out} will be profiled again", file=sys.stderr)
    rules_gpu = findings_gpu(env)
    failures, failed_checks = 0, []
    for i, cfg in enumerate(configs, 1):
        print(describe(cfg, options.include_logits))
        kept, notice = (None, None) if args.force else run_dir.kept(cfg, options, env.get("gpu_name"))
        if kept is not None:
            print(f"  [{i}/{len(configs)}] already profiled in {out} with the same options; kept (--force to redo)")
            failed_checks += [f"{cfg.name}: {n}" for n in kept.get("checks_summary", {}).get("failed", [])]
            continue
        if notice:
            print(f"notice: {notice}", file=sys.stderr)
        run_dir.drop(cfg.name)
        try:
            result = profile_layer(cfg, options, out_dir=out, device=device, peak_tflops=peaks.get(cfg.dtype),
                                   telemetry=telemetry, environment=env,
                                   progress=lambda m, i=i: print(f"  [{i}/{len(configs)}] {m}", flush=True))
        except torch.cuda.OutOfMemoryError:
            failures += 1
            message = (f"{cfg.name}: CUDA out of memory at b={cfg.micro_batch_size}, s={cfg.seq_length}, "
                       f"t={cfg.tensor_parallel}; lower --batch or --seq-len, or raise --tensor-parallel")
            print(f"error: {message}", file=sys.stderr)
            run_dir.record(cfg.name, {"name": cfg.name, "status": "oom", "error": message, "config": cfg.to_dict()})
            torch.cuda.empty_cache()
            run_dir.persist(env)
            continue
        summary = result.summary
        summary.update({"options": options.to_dict(), "gpu_name": env.get("gpu_name"), "device": str(device),
                        "switches": switches[cfg.name], "sizing_gpu": rules_gpu.name,
                        "sizing_findings": sizing_findings(cfg, rules_gpu),
                        "components_digest": components_digest(result.components)})
        run_dir.record(cfg.name, summary, result.components)
        _print_result(summary, result.components)
        failed_checks += [f"{cfg.name}: {n}" for n in summary["checks_summary"]["failed"]]
        run_dir.persist(env)
    run_doc = run_dir.persist(env)
    report = write_layer_report(run_doc, run_dir.components(), out / "report.html")
    print(f"wrote {report}, {out / 'components.csv'}, {out / 'run.json'} and traces in {out / 'tb'}")
    if failed_checks:
        print(f"CHECKS FAILED ({len(failed_checks)}): {'; '.join(failed_checks)}", file=sys.stderr)
    if failures:
        return 1
    return EXIT_CHECK_FAILED if failed_checks and not args.allow_failed_checks else 0


def run_distributed(args, request: LayerRequest) -> int:
    """--distributed: one process per GPU under torchrun (profiler.distributed); checked before any GPU work."""
    from profiler.distributed import DistributedJob, require_gpus, run_distributed_layer
    from reports.distributed_report import load_run, write_distributed_report

    t, device = args.tensor_parallel or 1, ("cpu" if args.device == "cpu" else "cuda")
    if device == "cuda":
        require_gpus(t)
    if args.logits:
        raise UserError("--logits: not with --distributed yet (the vocabulary-parallel logit layer needs collectives "
                        "of its own); drop --logits")
    configs, _ = resolve_configs(request, torch.device(device))
    for cfg in configs:
        print(describe(cfg, False))
    out = prepare_out_dir(args.out)
    with run_dir_lock(out):  # one run per directory: its ranks write run.json while the lock is held
        if args.fresh:
            clear_run_files(out)
        job = DistributedJob.for_configs(configs, out=out, device=device, mode=args.mode,
                                         warmup_steps=args.warmup if args.warmup is not None else (1 if device == "cpu" else 3),
                                         active_steps=args.iters or (3 if device == "cpu" else 10),
                                         bench_rep_ms=50 if device == "cpu" else 300)
        code = run_distributed_layer(job, allow_failed_checks=args.allow_failed_checks)
        if (out / "run.json").is_file() and (out / "communication.csv").is_file():
            report = write_distributed_report(*load_run(out), out / "report.html")
            print(f"wrote {report}")
    return code


def _print_result(summary: dict, components: pd.DataFrame) -> None:
    lat = summary["latency_us"]
    unit, scale = ("TFLOP/s", 1.0) if summary["layer_tflops"] >= 1 else ("GFLOP/s", 1e3)
    eager = summary.get("latency_eager_us") if lat.get("basis") == "graph" else None
    basis = f" back to back; eager step {eager['median']:.1f} us, host included" if eager else ""
    gaps = "idle" if eager else "idle/launch gaps"
    line = (f"  latency {lat['median']:.1f} us (p10 {lat['p10']:.1f}, p90 {lat['p90']:.1f}, n={lat['repeats']}{basis}); "
            f"kernels {summary['busy_us']:.1f} us, {gaps} {summary['idle_us']:.1f} us; "
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

"""`python -m profiler layer --config A [--config B ...]`: profile full layers and write the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from models import count_parameters, layer_gemms, load_config
from models.config import ModelConfig

from ..errors import UserError
from ..hardware import environment, measure_matmul_peak
from ..layer_profile import MODES, ProfileOptions, profile_layer
from ..sizing import sizing_findings

CPU_SEQ_LENGTH = 128  # small defaults without CUDA, so a CPU run finishes in seconds
CPU_MAX_LAYER_PARAMS = 400_000_000


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", required=True, metavar="NAME_OR_PATH",
                   help="bundled name (pythia-1b, gpt3-2.7b, paper-large, ...), a YAML file, a GPT-NeoX YAML or a "
                        "transformers config.json; repeat to compare configs side by side")
    p.add_argument("--batch", type=int, help="micro-batch size b (default: the config's)")
    p.add_argument("--seq-len", type=int, help="sequence length s (default: the config's; 128 on CPU)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--attention", choices=["eager", "sdpa", "flash"], help="default: the config's")
    p.add_argument("--mode", choices=MODES, default="forward")
    p.add_argument("--tensor-parallel", type=int, help="t: profile the per-GPU shapes h/t, 3h/t, 4h/t, a/t")
    p.add_argument("--logits", action="store_true", help="add the logit layer (h -> v/t GEMM)")
    p.add_argument("--warmup", type=int, default=None, help="profiler warm-up steps (default 3; 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="profiled steps (default 10; 3 on CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/layer"), help="output directory (default runs/layer)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--no-floor", action="store_true", help="skip timing the GEMMs and attention alone")
    p.add_argument("--force", action="store_true", help="re-profile configs already in --out")


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda asked for but no CUDA device is visible; use --device cpu or auto")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def resolve_configs(args, device: torch.device) -> list[ModelConfig]:
    on_cpu = device.type == "cpu"
    configs = []
    for ref in args.config:
        overrides = {"micro_batch_size": args.batch, "seq_length": args.seq_len, "attention": args.attention,
                     "tensor_parallel": args.tensor_parallel,
                     "dtype": args.dtype or ("float32" if on_cpu else "bfloat16")}
        base = load_config(ref)
        if on_cpu:
            if args.seq_len is None:
                overrides["seq_length"] = min(base.seq_length, CPU_SEQ_LENGTH)
            if (args.attention or base.attention) == "flash":
                overrides["attention"] = "sdpa"
        cfg = load_config(ref, **overrides)
        if on_cpu and count_parameters(cfg).per_layer > CPU_MAX_LAYER_PARAMS:
            raise UserError(f"config: {cfg.name} has {count_parameters(cfg).per_layer / 1e6:.0f}M parameters per layer, "
                            "too large to profile on the CPU; run it on a GPU")
        configs.append(cfg)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UserError("--config: the same config is named twice; give each config once")
    return configs


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
        lines.append(f"    {'flash_attention':<22} {'fused score + softmax + over values':<34}")
    return "\n".join(lines)


def _load_previous(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _same_run(entry: dict, cfg: ModelConfig, options: ProfileOptions, env: dict) -> bool:
    return (entry.get("status") == "ok" and entry.get("config") == cfg.to_dict()
            and entry.get("options") == options.to_dict() and entry.get("gpu_name") == env.get("gpu_name"))


def run(args) -> int:
    from reports.layer_report import write_layer_report

    device = _device(args.device)
    on_cpu = device.type == "cpu"
    if on_cpu:
        print("notice: no CUDA device; profiling on the CPU with small defaults (s<=128, float32). "
              "CPU numbers prove the wiring, not GPU performance.", file=sys.stderr)
    for name in ("batch", "seq_len", "tensor_parallel", "warmup", "iters"):
        value = getattr(args, name)
        if value is not None and value <= 0 and not (name == "warmup" and value == 0):
            raise UserError(f"--{name.replace('_', '-')}: must be positive, got {value}")
    configs = resolve_configs(args, device)
    options = ProfileOptions(mode=args.mode, include_logits=args.logits, measure_floor=not args.no_floor,
                             warmup_steps=args.warmup if args.warmup is not None else (1 if on_cpu else 3),
                             active_steps=args.iters or (3 if on_cpu else 10),
                             bench_warmup_ms=10 if on_cpu else 50, bench_rep_ms=50 if on_cpu else 300)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    previous = {e["name"]: e for e in _load_previous(out).get("configs", [])}
    if not on_cpu:
        peak = measure_matmul_peak(device, dtype=torch.bfloat16 if configs[0].dtype != "float16" else torch.float16)
        env["measured_peak_tflops"] = round(peak["tflops"], 1)
        env["measured_sustained_peak_tflops"] = round(peak["sustained_tflops"], 1)
        env["measured_peak"] = (f"{peak['shape']} {peak['dtype']} matmul, median of {peak['repeats']}, GPU idle "
                                "between products (back to back: measured_sustained_peak_tflops)")
    peak_tflops = env.get("measured_peak_tflops")

    entries, frames, failures = [], [], 0
    old_components = _read_components(out)
    for i, cfg in enumerate(configs, 1):
        print(describe(cfg, args.logits))
        prior = previous.get(cfg.name)
        if prior and not args.force and _same_run(prior, cfg, options, env) and cfg.name in old_components:
            print(f"  [{i}/{len(configs)}] already profiled in {out} with the same options; kept (--force to redo)")
            entries.append(prior)
            frames.append(old_components[cfg.name])
            continue
        try:
            result = profile_layer(cfg, options, out_dir=out, device=device, peak_tflops=peak_tflops,
                                   progress=lambda m, i=i: print(f"  [{i}/{len(configs)}] {m}", flush=True))
        except torch.cuda.OutOfMemoryError:
            failures += 1
            message = (f"{cfg.name}: CUDA out of memory at b={cfg.micro_batch_size}, s={cfg.seq_length}, "
                       f"t={cfg.tensor_parallel}; lower --batch or --seq-len, or raise --tensor-parallel")
            print(f"error: {message}", file=sys.stderr)
            entries.append({"name": cfg.name, "status": "oom", "error": message, "config": cfg.to_dict()})
            torch.cuda.empty_cache()
            continue
        summary = result.summary
        summary["options"] = options.to_dict()
        summary["gpu_name"] = env.get("gpu_name")
        summary["sizing_findings"] = [f.to_dict() for f in sizing_findings(cfg, sms=env.get("sm_count"))]
        entries.append(summary)
        frames.append(result.components)
        _print_result(summary, result.components)
        _persist(out, env, entries, frames)
    run_doc = _persist(out, env, entries, frames)
    report = write_layer_report(run_doc, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), out / "report.html")
    print(f"wrote {report}, {out / 'components.csv'}, {out / 'run.json'} and traces in {out / 'tb'}")
    return 1 if failures else 0


def _read_components(out: Path) -> dict[str, pd.DataFrame]:
    try:
        df = pd.read_csv(out / "components.csv")
    except (OSError, pd.errors.EmptyDataError):
        return {}
    return {name: group for name, group in df.groupby("config")}


def _persist(out: Path, env: dict, entries: list[dict], frames: list[pd.DataFrame]) -> dict:
    """Written after every config, so an interrupted run keeps what it measured."""
    doc = {"environment": env, "configs": entries}
    (out / "run.json").write_text(json.dumps(doc, indent=2, default=str))
    if frames:
        pd.concat(frames, ignore_index=True).to_csv(out / "components.csv", index=False)
    return doc


def _print_result(summary: dict, components: pd.DataFrame) -> None:
    lat = summary["latency_us"]
    line = (f"  latency {lat['median']:.1f} us (p10 {lat['p10']:.1f}, p90 {lat['p90']:.1f}, n={lat['repeats']}); "
            f"profiled {summary['latency_profiled_us']:.1f} us; {summary['layer_tflops']:.1f} TFLOP/s; "
            f"GEMM share {100 * summary['gemm_share']:.1f}%; coverage {100 * summary['coverage']:.2f}%")
    if summary.get("floor_ratio"):
        line += f"; {summary['floor_ratio']:.2f}x of floor"
    print(line)
    cols = [c for c in ("pass", "component", "kind", "time_us", "share", "tflops", "vs_alone_pct") if c in components]
    table = components[cols].copy()
    table["share"] = (100 * table["share"]).round(1)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))

"""`python -m profiler advise --config X`: what is wrong with this shape on this GPU, and which shape of the
same size is faster (modelled; measured with --measure). `--swiglu` searches SwiGLU widths instead."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from models import count_parameters, load_config
from models.config import safe_name

from profiler.advisor import AdviceOptions, SearchSpace, SwigluSearch, advise, document, resolve_gpu
from profiler.advisor.serving import ServingShape
from profiler.advisor.gpus import local_gpu_properties, names_same_gpu, with_measured_ceilings
from profiler.errors import UserError
from profiler.hardware import environment
from profiler.outputs import prepare_out_dir, write_atomic

CPU_MAX_PARAMS = 100_000_000  # --measure --device cpu proves the wiring on tiny configs only
CPU_SEQ_LENGTH = 128
GPU_ROUNDS = 5  # issue 22: at least 5 shuffled interleaved rounds on a GPU
CPU_ROUNDS = 2  # a CPU run proves the wiring; said so when it runs


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH", action="append",
                   help="bundled name (gpt3-2.7b, pythia-410m, llama-2-7b-like, ...), a YAML file, a GPT-NeoX YAML or a "
                        "transformers config.json; repeat it to advise on several (each in OUT/<name>/; with --measure, "
                        "--executor local|ray spreads them over GPUs, one config's rounds all on one GPU)")
    p.add_argument("--budget", default="5%", help="parameter budget around the given total, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--tensor-parallel", type=int, help="t: advise on the per-GPU shapes h/t, a/t, f/t, v/t")
    p.add_argument("--batch", type=int, help="micro-batch size b (default: the config's)")
    p.add_argument("--seq-len", type=int, help="sequence length s (default: the config's; 128 when timing on a CPU)")
    p.add_argument("--attention", choices=["eager", "sdpa", "flash"], help="default: the config's")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: the config's (float32 on a CPU)")
    p.add_argument("--gpu", help="the GPU to advise for: h100, h200, a100, v100 (default: the local GPU)")
    p.add_argument("--measure", action="store_true", help="time the given shape and the proposals on the GPU")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="where --measure times (cpu only when named, for tiny configs: it proves the wiring)")
    p.add_argument("--top", type=int, default=4, help="best modelled candidates to measure (default 4), plus the "
                                                      "paper's head-count fixes when h/a is misaligned")
    p.add_argument("--rounds", type=int, help=f"shuffled interleaved timing rounds (default {GPU_ROUNDS} on a GPU, "
                                              f"{CPU_ROUNDS} on a CPU)")
    p.add_argument("--min-gain", default="2%", help="a measured speed-up below this is 'no gain' (default 2%%)")
    p.add_argument("--h-window", default="25%", help="hidden sizes searched around the given h (default 25%%)")
    p.add_argument("--ffn-window", default="5%", help="MLP widths searched around the given f/h x h (default 5%%)")
    p.add_argument("--swiglu", action="store_true", help="search SwiGLU MLP widths near the config's (paper VII-B) "
                                                         "instead of whole shapes")
    p.add_argument("--ffn-step", type=int, default=64, help="--swiglu: widths are multiples of this x t (default 64)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-component profile of the given shape "
                                                             "and the best proposal")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled order of each round and of the bootstrap")
    p.add_argument("--calibration", default="auto", metavar="auto|none|FILE",
                   help="the cost model's measured GEMM/attention table: auto (profiler/advisor/calibration/<gpu>.json "
                        "when there is one), none (the analytic model), or a table file from scripts/calibrate_advisor.py")
    p.add_argument("--serve-batch", type=int, default=1, help="batch of the modelled serving cost (default 1)")
    p.add_argument("--serve-prompt", type=int, help="prompt length of the modelled serving cost (default: s)")
    p.add_argument("--measure-serving", action="store_true",
                   help="with --measure on a GPU: also time prefill and one CUDA-graph decode step of the given shape "
                        "and each measured proposal with the project's decode engine (GPT-NeoX shapes only)")
    p.add_argument("--out", type=Path, default=Path("runs/advise"), help="output directory (default runs/advise)")
    p.add_argument("--executor", choices=["inline", "local", "ray"], default="inline",
                   help="with --measure and several --config: inline (this process, default); local: one worker "
                        "process per visible GPU (or --workers CPU workers with --device cpu); ray: one actor per GPU "
                        "on a Ray cluster. A config is the unit: its shapes are compared in rounds on one GPU")
    p.add_argument("--workers", type=int, help="local/ray: how many workers (default: one per GPU)")
    p.add_argument("--ray-address", help="ray: the cluster to join (auto, HOST:6379); default: a local Ray")


def fraction(text: str, flag: str) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; anything else is the user's to fix."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a percentage; write e.g. 5% or 0.05") from None
    if not raw.endswith("%") and value > 1:
        raise UserError(f"{flag}: {raw} is ambiguous; write {raw}% or {value / 100:g}")
    if not 0 <= value < 1:
        raise UserError(f"{flag}: must be between 0% and 100%, got {raw}")
    return value


def _device(args) -> torch.device | None:
    """The measuring device (None without --measure)."""
    if not args.measure:
        return None
    if args.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--measure: no CUDA device is visible; run on the GPU machine, or add --device cpu to time a "
                        "tiny config on the CPU (proves the wiring, not GPU performance)")
    return torch.device("cuda", torch.cuda.current_device())


def _config(args, device: torch.device | None, name: str):
    on_cpu = device is not None and device.type == "cpu"
    base = load_config(name)
    overrides = {"micro_batch_size": args.batch, "seq_length": args.seq_len, "attention": args.attention,
                 "tensor_parallel": args.tensor_parallel, "dtype": args.dtype}
    if on_cpu:
        overrides["dtype"] = args.dtype or "float32"
        if args.seq_len is None:
            overrides["seq_length"] = min(base.seq_length, CPU_SEQ_LENGTH)
        if (args.attention or base.attention) == "flash":
            overrides["attention"] = "sdpa"  # the flash backend is CUDA-only
    cfg = load_config(name, **overrides)
    if on_cpu and count_parameters(cfg).total > CPU_MAX_PARAMS:
        raise UserError(f"--device: {cfg.name} has {count_parameters(cfg).total / 1e6:.0f}M parameters; timing on "
                        f"the CPU is for tiny configs (<= {CPU_MAX_PARAMS // 10**6}M) that prove the wiring; "
                        "drop --device cpu and run on the GPU")
    return cfg


def run(args) -> int:
    for name in ("batch", "seq_len", "tensor_parallel", "top", "rounds", "ffn_step", "serve_batch", "serve_prompt"):
        value = getattr(args, name)
        if value is not None and value <= 0 and not (name == "top" and value == 0):
            raise UserError(f"--{name.replace('_', '-')}: must be positive, got {value}")
    space = SearchSpace(budget=fraction(args.budget, "--budget"), h_window=fraction(args.h_window, "--h-window"),
                        ffn_window=fraction(args.ffn_window, "--ffn-window"))
    swiglu = SwigluSearch(window=space.ffn_window, step=args.ffn_step) if args.swiglu else None
    device = _device(args)
    rounds = args.rounds or (CPU_ROUNDS if device is not None and device.type == "cpu" else GPU_ROUNDS)
    if args.measure and args.rounds is None:
        print(f"rounds: {rounds} shuffled interleaved rounds (the default on a "
              f"{'CPU' if device.type == 'cpu' else 'GPU'}; --rounds to change)", flush=True)
    if args.measure_serving and not args.measure:
        raise UserError("--measure-serving: times serving next to --measure; add --measure")
    options = AdviceOptions(space=space, top=args.top, measure=args.measure, rounds=rounds,
                            min_gain=fraction(args.min_gain, "--min-gain"), seed=args.seed,
                            profile=not args.no_profile, swiglu=swiglu,
                            serving=ServingShape(batch=args.serve_batch, prompt_len=args.serve_prompt))
    local = local_gpu_properties()
    calibration = None if args.calibration == "none" else args.calibration
    resolve_gpu(args.gpu, local=local, calibration=calibration)  # a bad --gpu or table fails before anything runs
    if device is not None and device.type == "cuda" and args.gpu and not names_same_gpu(args.gpu, local[0]):
        raise UserError(f"--gpu: {args.gpu} was named but this machine's GPU is '{local[0]}'; drop --gpu to measure "
                        "on the local GPU, or drop --measure to model the named one")
    if args.executor != "inline" and not args.measure:
        raise UserError(f"--executor {args.executor}: spreads measured configs over GPUs; add --measure (modelling "
                        "alone takes milliseconds in this process)")
    configs = [_config(args, device, name) for name in dict.fromkeys(args.config)]  # every config checked first
    names = [cfg.name for cfg in configs]
    if len(set(names)) < len(names):
        raise UserError(f"--config: two of them resolve to the same name ({', '.join(names)}); give each once")
    root = prepare_out_dir(args.out)  # before anything is measured
    several = len(configs) > 1
    outs = {cfg.name: (root / safe_name(cfg.name) if several else root) for cfg in configs}
    todo = [cfg for cfg in configs if not (several and (outs[cfg.name] / "advice.json").exists())]
    for cfg in configs:
        if cfg not in todo:
            print(f"{cfg.name}: already advised in {outs[cfg.name]} (delete it to advise again)", file=sys.stderr)
    job_args = AdviseJobArgs(gpu=args.gpu, calibration=calibration,
                             device=None if device is None else device.type, measure_serving=args.measure_serving)
    from profiler.executors import Job, make_executor

    executor = make_executor(args.executor, workers=args.workers, ray_address=args.ray_address,
                             device_type=device.type if device is not None else "auto")
    if args.executor != "inline":
        print(f"notice: {executor.describe()}; {len(todo)} configs", file=sys.stderr)
    results: dict[str, tuple] = {}

    def write_one(key: str, result: dict, worker: dict) -> None:
        out = prepare_out_dir(outs[key])
        _write(out, result["advice"], result["doc"])
        _print(result["advice"])
        results[key] = (result["advice"], worker)

    payloads = [(cfg.name, AdvicePayload(cfg, options, str(outs[cfg.name]))) for cfg in todo]
    if payloads:
        with executor.start(Job(advise_setup, advise_one, job_args)) as pool:
            pool.run(payloads, on_result=write_one)
    if several:
        _print_summary(configs, results, outs)
    return 0


@dataclass(frozen=True)
class AdviseJobArgs:
    """What every advise worker is handed: the GPU model to advise for, the calibration table, where to time."""
    gpu: str | None
    calibration: str | None
    device: str | None  # cuda | cpu | None (modelled only)
    measure_serving: bool = False


@dataclass(frozen=True)
class AdvicePayload:
    config: object  # models.ModelConfig, resolved and checked by the driver
    options: AdviceOptions
    out_dir: str  # where the advisor's per-component profile goes (the driver writes the rest)


def advise_setup(worker, args: AdviseJobArgs):
    """Once per worker: its device (its own pinned GPU, or the CPU), the GPU model, its environment."""
    device = None
    if args.device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    elif args.device == "cpu":
        device = torch.device("cpu")
    local = local_gpu_properties()
    gpu = resolve_gpu(args.gpu, local=local, calibration=args.calibration)
    env = environment(device if device is not None else (torch.device("cuda", 0) if local else None))
    state = {"args": args, "device": device, "gpu": gpu, "env": env, "ceilings": {}}
    return state, {"gpu": local[0] if local else None, "device": str(device)}


def advise_one(state: dict, payload: AdvicePayload) -> dict:
    """One config's advice in a worker: the GPU's measured ceilings (once per dtype), the advice, its document."""
    cfg, options, device = payload.config, payload.options, state["device"]
    gpu, env = state["gpu"], dict(state["env"])
    if device is not None and device.type == "cuda":
        from profiler.advisor.measure import device_ceilings

        if cfg.dtype not in state["ceilings"]:
            print("measuring this GPU's GEMM ceiling and copy bandwidth", flush=True)
            state["ceilings"][cfg.dtype] = device_ceilings(device, cfg.dtype)
        peak, bandwidth = state["ceilings"][cfg.dtype]
        gpu = with_measured_ceilings(gpu, matmul_tflops=peak, bandwidth_tbps=bandwidth)
        env.update(measured_peak_tflops=round(peak, 1), measured_copy_tbps=round(bandwidth, 2))
    if device is not None and device.type == "cpu":
        print("notice: timing on the CPU (float32, s<=128): this proves the wiring, not GPU performance; the cost "
              f"model still describes {gpu.name}", file=sys.stderr)
    print(f"{cfg.name}: h={cfg.hidden_size} a={cfg.num_attention_heads} (h/a={cfg.head_dim}) L={cfg.num_layers} "
          f"f={cfg.ffn_size} v={cfg.embedding_rows} b={cfg.micro_batch_size} s={cfg.seq_length} t={cfg.tensor_parallel} "
          f"attention={cfg.attention} {cfg.dtype}; {count_parameters(cfg).total:,} parameters; GPU model: {gpu.name}, "
          f"{gpu.sms} SMs", flush=True)
    try:
        advice = advise(cfg, gpu, options, device=device, out_dir=prepare_out_dir(payload.out_dir),
                        progress=lambda m: print(f"  {m}", flush=True))
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"--top: out of GPU memory timing the shapes of {cfg.name} at b={cfg.micro_batch_size}, "
                        f"s={cfg.seq_length}; lower --top or --batch") from None
    if state["args"].measure_serving and advice.measured is not None:
        _measure_serving(advice, cfg, gpu, device)
    return {"advice": advice, "doc": document(advice, env)}


def _print_summary(configs, results: dict, outs: dict) -> None:
    """Several configs: one line each, the answer first (the best measured or modelled shape)."""
    print("\nconfigs (each in its own folder):")
    for cfg in configs:
        if cfg.name not in results:
            print(f"  {cfg.name}: {outs[cfg.name]} (advised before)")
            continue
        advice, worker = results[cfg.name]
        if advice.measured is not None and len(advice.measured):
            best = advice.measured.iloc[0]
            answer = (f"best measured {best['name']} x{best['speedup']:.3f} ({best['verdict']})"
                      if "speedup" in best else f"best measured {best['name']}")
        elif advice.candidates is not None and len(advice.candidates):
            best = advice.candidates.iloc[0]
            answer = f"best modelled {best['name']}"
        else:
            answer = "no proposal"
        where = f" [{worker.get('worker')} gpu {worker.get('gpu_index')}]" if worker.get("worker") != "inline" else ""
        print(f"  {cfg.name}: {answer}; {outs[cfg.name]}{where}")


def _measure_serving(advice, cfg, gpu, device) -> None:
    """Prefill and decode step of the given shape and each measured proposal through the CUDA-graph decode
    engine's decoder (inference/advisor_serving.py), joined to advice.measured, with the measured flag."""
    from inference.advisor_serving import measure_serving, serving_verdicts
    from profiler.advisor.candidates import configs_by_name

    names = advice.measured["name"].tolist()
    configs = configs_by_name(cfg, gpu, advice.options.space, names)
    shape = advice.options.serving
    print(f"  timing serving (prefill, CUDA-graph decode step) of {len(configs)} shapes at batch {shape.batch}, "
          f"prompt {shape.prompt_len or cfg.seq_length}", flush=True)
    served = measure_serving(configs, batch=shape.batch, prompt_len=shape.prompt_len or cfg.seq_length,
                             new_tokens=shape.new_tokens, device=device, rounds=advice.options.rounds,
                             seed=advice.options.seed)
    advice.measured = serving_verdicts(advice.measured, served, cfg.name)
    flagged = advice.measured[advice.measured["measured_serving_flag"] != ""]
    for _, row in flagged.iterrows():
        advice.notes.append(f"serving, {row['name']}: {row['measured_serving_flag']} (measured)")


def _write(out: Path, advice, doc: dict) -> None:
    from reports.advisor_report import write_advisor_report

    write_atomic(out / "advice.json", json.dumps(doc, indent=2, default=str))
    written = ["advice.json"]
    for name, frame in (("checks", advice.checks), ("candidates", advice.candidates), ("measured", advice.measured),
                        ("rounds", advice.rounds), ("components_diff", advice.component_difference),
                        ("swiglu", advice.swiglu)):
        if frame is not None:
            write_atomic(out / f"{name}.csv", frame.to_csv(index=False))
            written.append(f"{name}.csv")
    write_advisor_report(doc, out / "report.html")
    print(f"wrote {out / 'report.html'} and {', '.join(written)} in {out}")


def _print(advice) -> None:
    def show(title: str, df: pd.DataFrame, cols: list[str], rows: int = 40) -> None:
        print(f"\n{title}")
        print(df[[c for c in cols if c in df]].head(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}",
                                                                     max_colwidth=90))

    checks = advice.checks
    show("checks (cost: modelled ms per training step of the whole model)", checks,
         ["status", "rule", "subject", "value", "cost_ms", "measured_cost_ms", "paper", "finding"])
    if "measured_note" in checks:
        for _, row in checks[checks["measured_note"] != ""].iterrows():
            print(f"  measured cost of {row['rule']}: {row['measured_note']}")
    if advice.swiglu is not None:
        show("SwiGLU widths", advice.swiglu, ["rank", "ffn", "ratio", "largest_pow2_per_gpu", "fwd_bwd_ms", "tflops",
                                              "vs_reference", "vs_reference_ci_lo", "vs_reference_ci_hi", "self_spread",
                                              "verdict",
                                              "modelled_tflops", "modelled_rank"])
    elif advice.measured is not None:
        show("measured (ranked by training tokens/s; speed-up: median per-round ratio vs the given shape, "
             "[ci_lo, ci_hi] its bootstrap interval)", advice.measured,
             ["name", "changes", "params_delta_pct", "tokens_per_s", "speedup", "speedup_ci_lo", "speedup_ci_hi",
              "self_spread", "verdict", "modelled_speedup", "modelled_decode_speedup", "decode_speedup",
              "serving_flag", "measured_serving_flag", "leaves_flat_region", "inference_kernels"])
    elif advice.candidates is not None:
        frame = advice.candidates
        chosen = frame["is_given"] | frame["name"].isin(advice.selected)
        shown = pd.concat([frame[chosen], frame[~chosen].head(max(0, 11 - int(chosen.sum())))])
        show(f"candidates (modelled; {len(frame) - 1} in the budget: the ones to measure, then the best of the rest)",
             shown, ["name", "changes", "params_delta_pct", "modelled_speedup", "loss_delta_pct", "rank_score",
                     "modelled_prefill_ms", "modelled_decode_ms", "serving_flag", "leaves_flat_region"], rows=len(shown))
        print(f"would measure: {', '.join(advice.selected) or 'none'}")
    for note in advice.notes:
        print(f"* {note}")

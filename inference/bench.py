"""The inference bench as a library: `run_bench(BenchSpec(models=("pythia-410m", "pythia-1b")))`.

For each model: build (or reuse) its checkpoint, make prompts of exactly `prompt_len` tokens, run every
engine over every batch size, and append one row per model x engine x batch to results.jsonl as soon as it
is measured. transformers runs first: its logits are the reference the other engines are checked against
before their latencies count. A failing engine or model becomes a row with its status and a one-line
reason, and the bench goes on; a rerun skips rows already measured.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from models import count_parameters
from profiler.errors import UserError
from profiler.hardware import environment, measure_copy_bandwidth

from .checkpoints import DEFAULT_ROOT, BenchModel, ensure_checkpoint, model_key, resolve_model
from .engines.base import ENGINES, BatchResult, Engine, GenerationJob, get_engine, is_oom, one_line
from .engines.hf import load_model, reference_logits, release
from .metrics import DTYPE_BYTES, decode_floor_ms, summarize_generation, weight_bytes_per_decode_step
from .results import ResultsFile, row_key
from .tokenizer import load_tokenizer, make_prompts


@dataclass(frozen=True)
class BenchSpec:
    models: tuple[str, ...]
    engines: tuple[str, ...] = ("hf", "mii")
    batches: tuple[int, ...] = (1, 8)
    prompt_len: int = 128
    new_tokens: int = 64
    repeats: int = 5
    warmup: int = 1
    dtype: str = "float16"
    out: Path = Path("runs/inference")
    checkpoints: Path = DEFAULT_ROOT
    tensor_parallel: int = 1  # MII only; the transformers baseline runs on one GPU
    max_params: float | None = None  # models above this many parameters are left out
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def validate(spec: BenchSpec) -> None:
    if not spec.models:
        raise UserError("--models: give at least one model (a bundled name, a config file or a checkpoint directory)")
    for name in spec.engines:
        if name not in ENGINES:
            get_engine(name)  # raises with the did-you-mean
    if not spec.engines:
        raise UserError(f"--engines: give at least one of {', '.join(ENGINES)}")
    if not spec.batches or any(not isinstance(b, int) or b < 1 for b in spec.batches):
        raise UserError(f"--batch: batch sizes must be whole numbers >= 1, got {','.join(map(str, spec.batches))}")
    checks = [("--prompt-len", spec.prompt_len, 1), ("--new-tokens", spec.new_tokens, 2),
              ("--repeats", spec.repeats, 1), ("--warmup", spec.warmup, 0), ("--tensor-parallel", spec.tensor_parallel, 1)]
    for flag, value, low in checks:
        if not isinstance(value, int) or value < low:
            why = " (decode latency needs at least two new tokens)" if flag == "--new-tokens" else ""
            raise UserError(f"{flag}: must be a whole number >= {low}, got {value}{why}")
    if spec.dtype not in DTYPE_BYTES:
        raise UserError(f"--dtype: '{spec.dtype}' is not one of {', '.join(DTYPE_BYTES)}")
    if spec.max_params is not None and spec.max_params <= 0:
        raise UserError(f"--max-params: must be positive, got {spec.max_params}")


def check_model(model: BenchModel, spec: BenchSpec) -> None:
    cfg = model.config
    if spec.prompt_len + spec.new_tokens > cfg.max_position_embeddings:
        raise UserError(f"--prompt-len/--new-tokens: {spec.prompt_len}+{spec.new_tokens} tokens exceed "
                        f"{model.name}'s max_position_embeddings {cfg.max_position_embeddings}")
    if "mii" in spec.engines and cfg.num_attention_heads % spec.tensor_parallel:
        raise UserError(f"--tensor-parallel: {model.name}'s {cfg.num_attention_heads} heads cannot be split "
                        f"over {spec.tensor_parallel} GPUs")


@dataclass
class BenchOutcome:
    rows: list[dict]
    results: Path
    report: Path | None
    measured: int
    skipped_done: int


def versions() -> dict:
    found = {}
    for package in ("transformers", "tokenizers", "deepspeed", "deepspeed-mii"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _tp(engine: Engine, spec: BenchSpec) -> int:
    return 1 if engine.is_reference else spec.tensor_parallel


def base_row(model: BenchModel, engine: Engine, batch: int, spec: BenchSpec) -> dict:
    cfg, count = model.config, count_parameters(model.config)
    return {
        "record": "row", "model": model.name, "config_hash": model_key(model), "engine": engine.name,
        "batch": batch, "prompt_len": spec.prompt_len, "new_tokens": spec.new_tokens, "dtype": spec.dtype,
        "tensor_parallel": _tp(engine, spec), "status": None, "reason": "",
        "params_total": count.total, "params_non_embedding": count.non_embedding, "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim,
        "ffn_size": cfg.ffn_size, "source": model.source,
    }


def measured_row(row: dict, model: BenchModel, engine: Engine, result: BatchResult, *, bandwidth_tbps,
                 device_name: str, checkpoint: Path) -> dict:
    row = {**row, "status": result.status, "reason": result.reason, "compute_dtype": result.dtype or row["dtype"],
           "device": device_name, "timing_method": engine.timing_method, "checkpoint": str(checkpoint),
           "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if result.status != "ok":
        return row
    row.update(summarize_generation(result.samples, batch=row["batch"], new_tokens=row["new_tokens"]))
    weight_bytes = weight_bytes_per_decode_step(model.config, row["compute_dtype"], row["tensor_parallel"])
    floor = decode_floor_ms(weight_bytes, bandwidth_tbps)
    row.update({"weight_bytes": weight_bytes, "bandwidth_tbps": bandwidth_tbps, "decode_floor_ms": floor,
                "decode_vs_floor": row["decode_p50_ms"] / floor if floor and row["decode_p50_ms"] else None,
                "peak_allocated_gb": result.memory.peak_allocated_gb, "device_used_gb": result.memory.device_used_gb,
                "samples": [s.to_dict() for s in result.samples]})
    if not row["tokens_ok"]:
        row["status"], row["reason"] = "error", (f"generated {row['tokens_generated']} tokens per row, "
                                                 f"not the {row['new_tokens']} asked for")
        return row
    if engine.is_reference:
        row["logits_check"] = "reference"
        return row
    check = result.check
    if check is None:
        row.update(status="unchecked", logits_check="not run",
                   reason=f"logits not checked against transformers: {result.check_error or 'no reference'}")
        return row
    row.update({"logits_check": "pass" if check.passed else "fail", "logits_check_method": check.method,
                "logits_max_abs_diff": check.max_abs_diff, "logits_mean_abs_diff": check.mean_abs_diff,
                "logits_ref_max_abs": check.ref_max_abs, "logits_top1_agreement": check.top1_agreement,
                "logits_first_token_agreement": check.first_token_agreement})
    if not check.passed:
        row.update(status="mismatch", reason=(
            f"logits differ from transformers': max |diff| {check.max_abs_diff:.3g} (largest logit "
            f"{check.ref_max_abs:.3g}), top-1 agreement {check.top1_agreement:.0%}"))
    return row


def describe(row: dict) -> str:
    head = f"{row['model']} {row['engine']} b={row['batch']}" + (f" tp={row['tensor_parallel']}" if row["tensor_parallel"] > 1 else "")
    if row["status"] not in ("ok", "mismatch", "unchecked"):
        return f"{head}: {row['status']}: {row['reason']}"
    floor = f" (floor {row['decode_floor_ms']:.2f})" if row.get("decode_floor_ms") else ""
    text = (f"{head}: e2e {row['e2e_ms']:.1f} ms, ttft {row['ttft_ms']:.1f} ms, decode p50 "
            f"{row['decode_p50_ms']:.2f} ms{floor}, {row['tokens_per_s']:.0f} tok/s")
    if row.get("logits_check") == "pass":
        text += f", logits max |diff| {row['logits_max_abs_diff']:.3g} (pass)"
    return text + (f"  [{row['status']}: {row['reason']}]" if row["status"] != "ok" else "")


def measure_bandwidth(device: torch.device) -> float | None:
    # 2 GB on a GPU (well beyond L2); a small buffer on a CPU, where the floor only proves the wiring
    try:
        return measure_copy_bandwidth(device, gigabytes=2.0 if device.type == "cuda" else 0.0625)["tbps"]
    except Exception:  # noqa: BLE001 - a floor we cannot measure is left empty, not invented
        return None
    finally:
        release(device)  # the 4 GB of copy buffers would otherwise stay cached while MII's worker runs


def run_bench(spec: BenchSpec, *, log: Callable[[str], None] = print, progress: bool = True,
              layer_profile: Path | None = None, write_report: bool = True) -> BenchOutcome:
    from tqdm import tqdm

    models = []
    for ref in dict.fromkeys(spec.models):
        model = resolve_model(ref)
        check_model(model, spec)
        if spec.max_params is not None and model.params > spec.max_params:
            log(f"{model.name}: left out, {model.params / 1e9:.2f}B parameters > --max-params {spec.max_params:.3g}")
            continue
        models.append(model)
    # the reference engine runs first for each model: the others are checked against its logits
    engines = sorted((get_engine(n) for n in dict.fromkeys(spec.engines)), key=lambda e: not e.is_reference)
    device = torch.device(spec.device) if spec.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA is not available on this machine; use --device cpu")
    results = ResultsFile(spec.out)
    done = results.done_keys()
    plan = [(m, e, b) for m in models for e in engines for b in spec.batches]
    pending = [(m, e, b) for m, e, b in plan if row_key(base_row(m, e, b, spec)) not in done]
    if len(pending) < len(plan):
        log(f"{len(plan) - len(pending)} of {len(plan)} rows already in {results.path}: skipping them")
    measured = 0
    if pending:
        env = {**environment(device), "versions": versions()}
        bandwidth = measure_bandwidth(device)
        env["copy_bandwidth_tbps"] = bandwidth
        results.append({"record": "run", "environment": env, "spec": spec.to_dict()})
        device_name = env.get("gpu_name") or f"cpu ({env.get('cpu')})"
        available = {}
        for engine in engines:
            if not any(e is engine for _, e, _ in pending):
                continue
            reason = engine.unavailable_reason(tensor_parallel=_tp(engine, spec))
            if reason is None:
                try:
                    engine.prepare()
                except Exception as exc:  # noqa: BLE001 - e.g. the kernel build fails: record, go on
                    reason = f"could not prepare: {one_line(exc)}"
            available[engine.name] = reason
            if reason:
                log(f"{engine.name}: unavailable: {reason}; its rows are recorded as unavailable, the bench goes on")
                for m, e, b in pending:
                    if e is engine:
                        results.append({**base_row(m, e, b, spec), "status": "unavailable", "reason": reason})
        todo = [(m, e, b) for m, e, b in pending if available.get(e.name) is None]
        bar = tqdm(total=len(todo), unit="row", disable=not progress, leave=False)
        say = (lambda text: bar.write(text)) if progress else log
        try:
            for model in models:
                work = {e.name: [b for m, e2, b in todo if m is model and e2 is e] for e in engines}
                if any(work.values()):
                    measured += _bench_model(model, engines, work, spec, results, device, device_name, bandwidth,
                                             say, bar)
        finally:
            bar.close()
    outcome = BenchOutcome(results.rows(), results.path, None, measured, len(plan) - len(pending))
    if write_report:
        from reports.inference_report import write_report as write_html

        outcome.report = write_html(spec.out, layer_profile=layer_profile)
    return outcome


def _bench_model(model: BenchModel, engines: list[Engine], work: dict[str, list[int]], spec: BenchSpec,
                 results: ResultsFile, device: torch.device, device_name: str, bandwidth, say, bar) -> int:
    try:
        checkpoint = ensure_checkpoint(model, spec.checkpoints, device=device, log=say)
        prompts = make_prompts(load_tokenizer(checkpoint), max(spec.batches), spec.prompt_len, seed=spec.seed)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory building the checkpoint
        for engine in engines:
            _fail_rows(model, engine, work[engine.name], exc, spec, results, say, bar)
        release(device)
        return 0
    measured = 0
    tmp = Path(tempfile.mkdtemp(prefix="inference-ref-"))
    reference: Path | None = None
    try:
        for engine in engines:
            batches = tuple(work[engine.name])
            if not batches:
                continue
            if not engine.is_reference and reference is None:
                reference = _reference_from_transformers(checkpoint, prompts, spec, device, tmp, say)
            job = GenerationJob(model.name, checkpoint, prompts, batches, spec.new_tokens, spec.warmup, spec.repeats,
                                spec.dtype, device, _tp(engine, spec), reference, Path(spec.out) / "logs")
            reported: set[int] = set()

            def on_result(result: BatchResult, engine=engine) -> None:
                row = measured_row(base_row(model, engine, result.batch, spec), model, engine, result,
                                   bandwidth_tbps=bandwidth, device_name=device_name, checkpoint=checkpoint)
                results.append(row)
                reported.add(result.batch)
                say(describe(row))
                bar.update(1)

            try:
                run = engine.run(job, on_result)
                measured += len(reported)
                if engine.is_reference and run.reference_logits is not None and reference is None:
                    reference = tmp / "reference.pt"
                    torch.save({"input_ids": prompts.input_ids, "logits": run.reference_logits}, reference)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - the rest of this engine's rows fail, the bench goes on
                measured += len(reported)
                _fail_rows(model, engine, [b for b in batches if b not in reported], exc, spec, results, say, bar)
                release(device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return measured


def _fail_rows(model: BenchModel, engine: Engine, batches, exc: BaseException, spec: BenchSpec,
               results: ResultsFile, say, bar) -> None:
    status = "oom" if is_oom(exc) else "error"
    for batch in batches:
        row = {**base_row(model, engine, batch, spec), "status": status, "reason": one_line(exc)}
        results.append(row)
        say(describe(row))
        bar.update(1)


def _reference_from_transformers(checkpoint: Path, prompts, spec: BenchSpec, device, tmp: Path, say) -> Path | None:
    """transformers' logits on the prompts when its own rows are not being measured (already done, or
    not asked for): the check still needs them."""
    try:
        dtype = spec.dtype if device.type == "cuda" else "float32"
        model = load_model(checkpoint, dtype, device)
        try:
            logits = reference_logits(model, prompts.input_ids, device)
        finally:
            del model
            release(device)
    except Exception as exc:  # noqa: BLE001 - without a reference the other engines' rows say 'unchecked'
        say(f"reference logits from transformers failed: {one_line(exc)}")
        return None
    path = tmp / "reference.pt"
    torch.save({"input_ids": prompts.input_ids, "logits": logits}, path)
    return path

"""The inference bench as a library: `run_bench(BenchSpec(models=("pythia-410m", "pythia-1b")))`.

For each model: build (or reuse) its checkpoint and prompts of exactly each prompt length; compute
transformers' reference (logits and greedy tokens) in an untimed pass; then time every engine over every
(prompt length, batch) row, engines and rows in a random order drawn from a recorded seed (so no row is
always the first on a cold GPU), each row warmed up by time. One row per model x engine x prompt length x
batch is appended to results.jsonl as soon as it is measured. A shape an engine cannot run (a kernel that
would assert) is refused before launching, with the reason, and gets a row from the engine's fallback
variant instead. A failing engine or model becomes rows with a status and a one-line reason, and the bench
goes on; a rerun skips rows already measured.
"""

from __future__ import annotations

import importlib.metadata
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from profiler.errors import UserError
from profiler.hardware import environment, measure_copy_bandwidth, measure_matmul_peak

from .checkpoints import BenchModel, ensure_checkpoint, resolve_model
from .engines.base import FALLBACK, BatchResult, Engine, GenerationJob, get_engine, is_oom, one_line
from .hf_model import dtype_on, release
from .reference import Reference, build_reference
from .results import ResultsFile, row_key
from .rows import base_row, describe, measured_row, refused_row, tensor_parallel_of
from .spec import BenchSpec, fit_model
from .tokenizer import load_tokenizer, make_prompts

__all__ = ["BenchOutcome", "BenchSpec", "run_bench"]


@dataclass
class BenchOutcome:
    rows: list[dict]
    results: Path
    measured: int
    skipped_done: int


@dataclass(frozen=True)
class Planned:
    model: BenchModel
    engine: Engine
    prompt_len: int
    batch: int
    fallback_for: str | None = None  # set on a row that stands in for a refused engine's


def versions() -> dict:
    found = {}
    for package in ("transformers", "tokenizers", "deepspeed", "deepspeed-mii"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def measure_bandwidth(device: torch.device) -> float | None:
    # 2 GB on a GPU (well beyond L2); a small buffer on a CPU, where the floor only proves the wiring
    try:
        return measure_copy_bandwidth(device, gigabytes=2.0 if device.type == "cuda" else 0.0625)["tbps"]
    except Exception:  # noqa: BLE001 - a floor we cannot measure is left empty, not invented
        return None
    finally:
        release(device)  # the 4 GB of copy buffers would otherwise stay cached while MII's worker runs


def measure_peak(device: torch.device, dtype: str) -> float | None:
    """The fp16 matmul ceiling on a GPU (the decode compute floor); none on a CPU, where it would take minutes."""
    if device.type != "cuda":
        return None
    try:
        return measure_matmul_peak(device, dtype=getattr(torch, dtype))["tflops"]
    except Exception:  # noqa: BLE001
        return None
    finally:
        release(device)


class Plan:
    """Which rows to run: every model x engine x prompt length x batch, minus those already measured,
    with the rows an engine refuses (a shape its kernels cannot run, or a prompt and batch they compute
    wrongly) joined by its fallback variant's rows."""

    def __init__(self, models: list[BenchModel], engines: list[Engine], spec: BenchSpec, provenance: dict):
        self.spec, self.provenance = spec, provenance
        self.rows: list[Planned] = []
        names = {e.name for e in engines}
        self.refused: dict[tuple[str, str, int, int], object] = {}  # (model, engine, prompt, batch) -> KernelSupport
        for model in models:
            for engine in engines:
                tp = tensor_parallel_of(engine, spec)
                support = engine.shape_support(model.config, dtype=spec.dtype, tensor_parallel=tp,
                                               max_context=spec.max_context)
                fallback = FALLBACK.get(engine.name)
                fallback = get_engine(fallback) if fallback and fallback not in names else None
                for p in spec.prompt_lens:
                    for b in spec.batches:
                        row_support = support
                        if support.ok and hasattr(engine, "row_support"):
                            row_support = engine.row_support(model.config, dtype=spec.dtype, tensor_parallel=tp,
                                                             prompt_len=p, batch=b)
                        self.rows.append(Planned(model, engine, p, b))
                        if not row_support.ok:
                            self.refused[(model.name, engine.name, p, b)] = row_support
                            if fallback is not None:
                                self.rows.append(Planned(model, fallback, p, b, fallback_for=engine.name))

    def row(self, planned: Planned) -> dict:
        extra = {"fallback_for": planned.fallback_for} if planned.fallback_for else {}
        return {**base_row(planned.model, planned.engine, planned.prompt_len, planned.batch, self.spec,
                           provenance=self.provenance), **extra}

    def refusal(self, planned: Planned):
        return self.refused.get((planned.model.name, planned.engine.name, planned.prompt_len, planned.batch))


def run_bench(spec: BenchSpec, *, log: Callable[[str], None] = print, progress: bool = True) -> BenchOutcome:
    from tqdm import tqdm

    models = []
    for ref in dict.fromkeys(spec.models):
        given = resolve_model(ref)
        model = fit_model(given, spec)
        if spec.max_params is not None and model.params > spec.max_params:
            log(f"{model.name}: left out, {model.params / 1e9:.2f}B parameters > --max-params {spec.max_params:.3g}")
            continue
        if model.config.max_position_embeddings != given.config.max_position_embeddings:
            log(f"{model.name}: built with max_position_embeddings {model.config.max_position_embeddings} (was "
                f"{given.config.max_position_embeddings}) for {max(spec.max_context, spec.reserve_context)} tokens "
                "(random weights; rotary positions have no learned table)")
        models.append(model)
    engines = [get_engine(n) for n in dict.fromkeys(spec.engines)]
    device = torch.device(spec.device) if spec.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA is not available on this machine; use --device cpu")
    order_seed = spec.order_seed if spec.order_seed is not None else random.SystemRandom().randrange(2**31)
    env = {**environment(device), "versions": versions()}
    provenance = {"git_sha": env.get("git_sha"), "order_seed": order_seed, "warmup_s": spec.warmup_s}
    plan = Plan(models, engines, spec, provenance)
    results = ResultsFile(spec.out)
    done = results.done_keys(spec.redo)
    if results.notice():  # damaged lines are named, never skipped silently
        log(f"notice: {results.notice()}")
    pending = [p for p in plan.rows if row_key(plan.row(p)) not in done]
    if len(pending) < len(plan.rows):
        log(f"{len(plan.rows) - len(pending)} of {len(plan.rows)} rows already in {results.path}: skipping them")
    measured = 0
    if pending:
        bandwidth, peak = measure_bandwidth(device), measure_peak(device, spec.dtype)
        env.update({"copy_bandwidth_tbps": bandwidth, "matmul_peak_tflops": peak})
        results.append({"record": "run", "environment": env, "spec": {**spec.to_dict(), "order_seed": order_seed}})
        device_name = env.get("gpu_name") or f"cpu ({env.get('cpu')})"
        todo = _refuse_what_cannot_run(plan, pending, results, log)
        bar = tqdm(total=len(todo), unit="row", disable=not progress, leave=False)
        say = (lambda text: bar.write(text)) if progress else log
        context = RunContext(spec, plan, results, device, device_name, bandwidth, peak, order_seed, say, bar)
        try:
            for model in models:
                work = [p for p in todo if p.model is model]
                if work:
                    measured += bench_model(model, work, context)
        finally:
            bar.close()
    return BenchOutcome(results.rows(), results.path, measured, len(plan.rows) - len(pending))


def _refuse_what_cannot_run(plan: Plan, pending: list[Planned], results: ResultsFile, log) -> list[Planned]:
    """Rows of unavailable engines and refused shapes are recorded now, with the reason; the rest run."""
    available: dict[str, str | None] = {}
    todo = []
    for planned in pending:
        engine = planned.engine
        if plan.refusal(planned) is not None:  # a property of the shape, known without the engine
            row = refused_row(plan.row(planned), plan.refusal(planned))
            results.append(row)
            log(describe(row))
            continue
        if engine.name not in available:
            reason = engine.unavailable_reason(tensor_parallel=tensor_parallel_of(engine, plan.spec))
            if reason is None:
                try:
                    engine.prepare()
                except Exception as exc:  # noqa: BLE001 - e.g. the kernel build fails: record, go on
                    reason = f"could not prepare: {one_line(exc)}"
            available[engine.name] = reason
            if reason:
                log(f"{engine.name}: unavailable: {reason}; its rows are recorded as unavailable, the bench goes on")
        if available[engine.name]:
            results.append({**plan.row(planned), "status": "unavailable", "reason": available[engine.name]})
        else:
            todo.append(planned)
    return todo


@dataclass
class RunContext:
    spec: BenchSpec
    plan: Plan
    results: ResultsFile
    device: torch.device
    device_name: str
    bandwidth: float | None
    peak: float | None
    order_seed: int
    say: Callable[[str], None]
    bar: object


def timed_order(work: list[Planned], order_seed: int, model_name: str) -> list[tuple[Engine, list[Planned]]]:
    """Engines in a random order, and each engine's rows in a random order, from the recorded seed (the
    same seed gives the same order; each model draws its own)."""
    rng = random.Random(f"{order_seed}:{model_name}")
    engines = list({id(p.engine): p.engine for p in work}.values())
    rng.shuffle(engines)
    out = []
    for engine in engines:
        rows = [p for p in work if p.engine is engine]
        rng.shuffle(rows)
        out.append((engine, rows))
    return out


def bench_model(model: BenchModel, work: list[Planned], ctx: RunContext) -> int:
    spec, device = ctx.spec, ctx.device
    try:
        checkpoint = ensure_checkpoint(model, spec.checkpoints, device=device, log=ctx.say)
        tokenizer = load_tokenizer(checkpoint)
        largest = max(p.batch for p in work)
        prompts = {p: make_prompts(tokenizer, largest, p, seed=spec.seed) for p in sorted({w.prompt_len for w in work})}
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory building the checkpoint
        _fail_rows(work, exc, ctx)
        release(device)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="inference-ref-"))
    measured = 0
    try:
        reference, reference_path = None, None
        if any(not p.engine.is_reference for p in work):
            reference = _reference(checkpoint, prompts, work, ctx)
            reference_path = reference.save(tmp / "reference.pt") if reference else None
        order = timed_order(work, ctx.order_seed, model.name)
        ctx.say(f"{model.name}: timed order {', '.join(f'{e.name}[' + ' '.join(f'p{p.prompt_len}b{p.batch}' for p in rows) + ']' for e, rows in order)} "
                f"(seed {ctx.order_seed})")
        index = 0
        for engine, rows in order:
            job = GenerationJob(model.name, checkpoint, prompts, tuple((p.prompt_len, p.batch) for p in rows),
                                spec.new_tokens, spec.warmup_s, spec.repeats, spec.dtype, device,
                                tensor_parallel_of(engine, spec), reference_path, Path(spec.out) / "logs")
            by_key = {(p.prompt_len, p.batch): p for p in rows}
            reported: set[tuple[int, int]] = set()

            def on_result(result: BatchResult, engine=engine, start=index, by_key=by_key, rows=rows,
                          reported=reported) -> None:
                planned = by_key[(result.prompt_len, result.batch)]
                row = {**ctx.plan.row(planned), "order_index": start + rows.index(planned)}
                row = measured_row(row, model, engine, result, reference=reference, bandwidth_tbps=ctx.bandwidth,
                                   peak_tflops=ctx.peak, device_name=ctx.device_name, checkpoint=checkpoint)
                ctx.results.append(row)
                reported.add((result.prompt_len, result.batch))
                ctx.say(describe(row))
                ctx.bar.update(1)

            try:
                engine.run(job, on_result)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - the rest of this engine's rows fail, the bench goes on
                _fail_rows([p for p in rows if (p.prompt_len, p.batch) not in reported], exc, ctx)
                release(device)
            measured += len(reported)
            index += len(rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return measured


def _reference(checkpoint: Path, prompts, work: list[Planned], ctx: RunContext) -> Reference | None:
    """transformers' logits and greedy tokens for every row another engine will be checked on."""
    rows = [(p.prompt_len, p.batch) for p in work if not p.engine.is_reference]
    try:
        return build_reference(checkpoint, prompts, rows, new_tokens=ctx.spec.new_tokens,
                               dtype=dtype_on(ctx.device, ctx.spec.dtype),
                               device=ctx.device)
    except Exception as exc:  # noqa: BLE001 - without a reference the other engines' rows say 'unchecked'
        ctx.say(f"reference from transformers failed: {one_line(exc)}")
        release(ctx.device)
        return None


def _fail_rows(planned: list[Planned], exc: BaseException, ctx: RunContext) -> None:
    status = "oom" if is_oom(exc) else "error"
    for p in planned:
        row = {**ctx.plan.row(p), "status": status, "reason": one_line(exc)}
        ctx.results.append(row)
        ctx.say(describe(row))
        ctx.bar.update(1)

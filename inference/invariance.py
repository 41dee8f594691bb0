"""Batch invariance of real engines: the same prompt alone and inside batches of other prompts, through
transformers and DeepSpeed-MII (mii.legacy, kernel injection). Do its logits (every prompt position, one
forward) and its greedy tokens (generate) come out bitwise the same? Where a forward differs, which module
differs first (profiler/invariance/tape.py: every module's output and every leaf module's input)?

`run_engine_invariance(EngineInvarianceSpec(models=("pythia-160m",)))` builds (or reuses) a random-weight
fp16 checkpoint as the bench does, makes prompts of exactly `prompt_len` tokens, runs transformers in this
process and MII in a worker process of its own (engines/mii_invariance_worker.py, as the bench deploys it),
and writes engines.csv + engines_run.json in `out` (the command writes report.html from them). An engine
that cannot run here becomes a row with status `unavailable` and the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from models.config import safe_name
from profiler.errors import UserError

from .checkpoints import DEFAULT_ROOT

ENGINES = {"hf": "transformers (eager PyTorch)", "mii": "DeepSpeed-MII legacy, kernel injection",
           "mii-noinject": "DeepSpeed-MII legacy, transformers' modules"}
POSITIONS = ("first", "last")
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class EngineInvarianceSpec:
    models: tuple[str, ...]
    engines: tuple[str, ...] = ("hf", "mii")
    batches: tuple[int, ...] = (2, 4, 8, 16)
    positions: tuple[str, ...] = POSITIONS
    prompt_len: int = 64
    new_tokens: int = 16
    dtype: str = "float16"
    out: Path = Path("runs/invariance")
    checkpoints: Path = DEFAULT_ROOT
    seed: int = 0
    device: str | None = None
    modules: bool = True  # compare every module's output too (first differing module)

    def __post_init__(self) -> None:
        if not self.models:
            raise UserError("--models: give at least one model (a bundled name, a config file or a checkpoint directory)")
        for name in self.engines:
            if name not in ENGINES:
                raise UserError(f"--engines: unknown engine '{name}'; available: {', '.join(ENGINES)}")
        if not self.engines:
            raise UserError(f"--engines: give at least one of {', '.join(ENGINES)}")
        if not self.batches or any(b < 2 for b in self.batches):
            raise UserError("--batch: each batch must hold the prompt and at least one other, i.e. be >= 2")
        for p in self.positions:
            if p not in POSITIONS:
                raise UserError(f"--positions: '{p}' is not one of {', '.join(POSITIONS)}")
        if self.prompt_len < 1 or self.new_tokens < 1:
            raise UserError("--prompt-len and --new-tokens must be whole numbers >= 1")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype: '{self.dtype}' is not one of {', '.join(DTYPES)}")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def placement(batch: int, position: str) -> tuple[list[int], int]:
    """Prompt rows for a batch (0 is the prompt under test, 1.. the others) and where the prompt sits."""
    others = list(range(1, batch))
    order = [0, *others] if position == "first" else [*others, 0]
    return order, order.index(0)


def _first_token_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), -1 if len(a) == len(b) else min(len(a), len(b)))


def compare_engine(logits_fn: Callable[[list[int]], torch.Tensor], tokens_fn: Callable[[list[int]], list[list[int]]],
                   *, batches, positions, module_root=None, emit: Callable[[dict], None], base: dict) -> None:
    """The engine-agnostic core, run in-process (transformers) and in the MII worker. `logits_fn(rows)` gives
    logits [len(rows), s, v] for those prompt rows, `tokens_fn(rows)` the greedy new tokens of each row."""
    from profiler.invariance.tape import StepComparer, first_difference, record_modules

    def tape(comparer):
        return record_modules(module_root, comparer) if module_root is not None and comparer is not None else nullcontext()

    logits_fn(placement(max(batches), "last")[0])  # first forward at the largest batch: DeepSpeed sizes its workspace
    reference = StepComparer() if module_root is not None else None
    with tape(reference):
        alone = logits_fn([0])[0]
    alone_tokens = tokens_fn([0])[0]
    for batch in sorted(batches, reverse=True):
        for position in positions:
            order, index = placement(batch, position)
            comparer = StepComparer(reference.steps, batch=batch, position=index) if reference is not None else None
            with tape(comparer):
                mine = logits_fn(order)[index]
            tokens = tokens_fn(order)[index]
            rows = comparer.rows if comparer is not None else []
            first = first_difference(rows)
            differing = [r["step"] for r in rows if r["comparable"] and not r["equal"]]
            emit({**base, "batch": batch, "position": position, "status": "ok", "reason": "",
                  "logits_equal": bool(torch.equal(mine, alone)),
                  "logits_max_abs_diff": (mine.float() - alone.float()).abs().max().item(),
                  "last_logits_equal": bool(torch.equal(mine[-1], alone[-1])),
                  "tokens_equal": tokens == alone_tokens, "first_token_difference": _first_token_difference(tokens, alone_tokens),
                  "tokens_alone": " ".join(map(str, alone_tokens)), "tokens_in_batch": " ".join(map(str, tokens)),
                  "steps_compared": sum(bool(r["comparable"]) for r in rows), "steps_differing": len(differing),
                  "first_differing_step": first["step"] if first else "",
                  "first_differing_max_abs_diff": first["max_abs_diff"] if first else None})


# ---- transformers, in this process ------------------------------------------------------------------------
def run_hf(job: dict, device: torch.device, emit: Callable[[dict], None]) -> None:
    from .hf_model import load_model, release

    dtype = job["dtype"] if device.type == "cuda" else "float32"  # fp16 matmuls on a CPU: slow or missing
    model = load_model(job["checkpoint"], dtype, device)
    ids = torch.tensor(job["input_ids"], dtype=torch.long, device=device)
    base = {**job["base"], "engine": "hf", "dtype": dtype}

    @torch.inference_mode()
    def logits_fn(rows):
        return model(input_ids=ids[rows], attention_mask=torch.ones_like(ids[rows])).logits

    @torch.inference_mode()
    def tokens_fn(rows):
        out = model.generate(input_ids=ids[rows], attention_mask=torch.ones_like(ids[rows]),
                             max_new_tokens=job["new_tokens"], min_new_tokens=job["new_tokens"], do_sample=False,
                             pad_token_id=job["pad_token_id"])
        return out[:, ids.shape[1]:].tolist()

    try:
        compare_engine(logits_fn, tokens_fn, batches=job["batches"], positions=job["positions"],
                       module_root=model if job["modules"] else None, emit=emit, base=base)
    finally:
        model = None  # noqa: F841 - dropped so that release() can free its memory
        release(device)


# ---- DeepSpeed-MII, in a worker process -------------------------------------------------------------------
def run_mii(job: dict, engine: str, log_dir: Path, emit: Callable[[dict], None]) -> None:
    from .engines.mii import ROOT, failure_reason

    job = {**job, "inject": engine == "mii", "base": {**job["base"], "engine": engine, "dtype": job["dtype"]}}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{engine}-invariance-{safe_name(job['base']['model'])}.log"
    with tempfile.TemporaryDirectory(prefix="mii-invariance-") as tmp:
        job_path, results = Path(tmp) / "job.json", Path(tmp) / "rows.jsonl"
        job_path.write_text(json.dumps({**job, "results": str(results)}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with log_path.open("w") as log:
            proc = subprocess.run([sys.executable, "-m", "inference.engines.mii_invariance_worker", str(job_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        seen = 0
        if results.exists():
            for line in results.read_text().splitlines():
                try:
                    emit(json.loads(line))
                    seen += 1
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
    if proc.returncode != 0:
        reason = f"{failure_reason(log_path.read_text(errors='replace'), proc.returncode)} (worker log: {log_path})"
        emit({**job["base"], "status": "error", "reason": reason, "batch": None, "position": None})
    elif not seen:
        emit({**job["base"], "status": "error", "reason": f"the worker wrote no rows (log: {log_path})",
              "batch": None, "position": None})


def mii_unavailable(engine: str, cfg, dtype: str, context: int) -> str | None:
    from .engines.mii import MIIEngine

    if os.environ.get("INVARIANCE_MII_UNAVAILABLE"):  # set by scripts/gpu_invariance.sh when the kernel build failed
        return os.environ["INVARIANCE_MII_UNAVAILABLE"]
    mii = MIIEngine()
    reason = mii.unavailable_reason()
    if reason is None and engine == "mii" and hasattr(mii, "shape_support"):
        support = mii.shape_support(cfg, dtype=dtype, tensor_parallel=1, max_context=context)
        reason = None if support.ok else support.reason
    return reason


# ---- the whole run ----------------------------------------------------------------------------------------
def run_engine_invariance(spec: EngineInvarianceSpec, *, progress: bool = False, log=print) -> pd.DataFrame:
    from tqdm import tqdm

    from profiler.hardware import environment
    from profiler.invariance.files import save

    from .checkpoints import ensure_checkpoint, resolve_model
    from .tokenizer import load_tokenizer, make_prompts

    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda asked for but no CUDA device is visible; use --device cpu")
    models = [resolve_model(ref) for ref in spec.models]
    rows: list[dict] = []
    bar = tqdm(total=len(models) * len(spec.engines), desc="invariance engines", unit="engine", disable=not progress,
               dynamic_ncols=True)
    prepared = False
    for model in models:
        checkpoint = ensure_checkpoint(model, spec.checkpoints, device=device, log=log)
        tokenizer = load_tokenizer(checkpoint)
        prompts = make_prompts(tokenizer, max(spec.batches), spec.prompt_len, seed=spec.seed)
        job = {"checkpoint": str(checkpoint), "texts": list(prompts.texts), "input_ids": prompts.input_ids.tolist(),
               "batches": list(spec.batches), "positions": list(spec.positions), "new_tokens": spec.new_tokens,
               "dtype": spec.dtype, "modules": spec.modules, "pad_token_id": tokenizer.pad_token_id,
               "max_tokens": max(256, -(-(spec.prompt_len + spec.new_tokens) // 128) * 128),
               "base": {"model": model.name, "prompt_len": spec.prompt_len, "new_tokens": spec.new_tokens}}
        for engine in spec.engines:
            base = {**job["base"], "engine": engine, "dtype": spec.dtype}
            try:
                if engine == "hf":
                    run_hf(job, device, rows.append)
                else:
                    reason = mii_unavailable(engine, model.config, spec.dtype, spec.prompt_len + spec.new_tokens)
                    if reason:
                        rows.append({**base, "status": "unavailable", "reason": reason, "batch": None, "position": None})
                        log(f"{model.name} {engine}: unavailable: {reason}")
                    else:
                        if not prepared:
                            from .engines.mii import MIIEngine

                            MIIEngine().prepare()  # DeepSpeed's JIT kernel build, once, before any worker
                            prepared = True
                        run_mii(job, engine, Path(spec.out) / "logs", rows.append)
            except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
                from .engines.base import one_line

                rows.append({**base, "status": "error", "reason": one_line(exc), "batch": None, "position": None})
                log(f"{model.name} {engine}: error: {one_line(exc)}")
            bar.update()
    bar.close()
    frame = pd.DataFrame(rows)
    for column in ("batch", "first_token_difference", "steps_compared", "steps_differing"):
        if column in frame:  # whole numbers, blank on an engine's unavailable / error row
            frame[column] = frame[column].astype("Int64")
    run = {"environment": environment(device), "spec": spec.to_dict(),
           "engines": {e: ENGINES[e] for e in spec.engines},
           "configs": {m.name: m.config.to_dict() for m in models}}
    save(spec.out, "engines", {"engines": frame}, run)
    return frame

"""The engine layer: a small protocol, the job every engine runs, and a name -> engine registry.

An engine takes one model's job (checkpoint, prompts, batch sizes, new tokens, repeats) and returns one
result per batch size. Adding an engine = one module with a class that satisfies `Engine` and one line in
ENGINES. Heavy engines import their libraries lazily and say why they are unavailable instead of failing.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from profiler.errors import UserError

from ..metrics import GenerationSample, LogitsCheck, PeakMemory
from ..tokenizer import Prompts


@dataclass
class GenerationJob:
    model: str
    checkpoint: Path
    prompts: Prompts  # for the largest batch; batch b uses the first b rows
    batches: tuple[int, ...]
    new_tokens: int
    warmup: int
    repeats: int
    dtype: str  # torch dtype name: float16, bfloat16, float32
    device: torch.device
    tensor_parallel: int = 1
    reference_logits: Path | None = None  # transformers' logits for prompts (torch.save'd), for the check
    log_dir: Path | None = None


@dataclass
class BatchResult:
    batch: int
    status: str  # ok | oom | error
    reason: str = ""
    samples: list[GenerationSample] = field(default_factory=list)
    memory: PeakMemory = field(default_factory=PeakMemory)
    dtype: str | None = None  # the dtype the engine actually computed in
    check: LogitsCheck | None = None  # this engine's logits against the reference's (None for the reference)
    check_error: str | None = None  # why the check could not run: then the latency is not a result


@dataclass
class EngineRun:
    reference_logits: torch.Tensor | None = None  # an engine that is the reference hands its logits on


OnResult = Callable[[BatchResult], None]


class Engine(Protocol):
    name: str
    is_reference: bool  # its logits are the ones others are checked against (transformers)
    timing_method: str  # how its per-token times are taken, quoted in every row and the report

    def unavailable_reason(self, *, tensor_parallel: int = 1) -> str | None:
        """None when the engine can run here, else one line saying why not."""

    def prepare(self) -> None:
        """One-off work kept out of every timed region (JIT kernel builds)."""

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        """Time every batch size of `job`, calling `on_result` as each one finishes."""


ENGINES = {
    "hf": ("inference.engines.hf", "HFEngine", "transformers generate(): the baseline and the logits reference"),
    "mii": ("inference.engines.mii", "MIIEngine", "DeepSpeed-MII legacy (kernel injection): the engine under test"),
}


def engine_names() -> list[str]:
    return list(ENGINES)


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        near = difflib.get_close_matches(name, ENGINES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(f"--engines: unknown engine '{name}'{hint}; available: {', '.join(ENGINES)}")
    module_name, class_name, _ = ENGINES[name]
    return getattr(importlib.import_module(module_name), class_name)()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]

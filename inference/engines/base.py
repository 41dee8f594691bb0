"""The engine layer: a small protocol, the job every engine runs, and a name -> engine registry.

An engine takes one model's job (checkpoint, prompts, the (prompt length, batch) rows to time in the
order given, new tokens, warm-up, repeats) and returns one result per row. Adding an engine = one class
that satisfies `Engine` and one line in ENGINES. Heavy engines import their libraries lazily and say why
they are unavailable instead of failing; an engine that cannot run a given shape says so before launching.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from models import ModelConfig
from profiler.errors import UserError

from ..checks import LogitsCheck
from ..metrics import PeakMemory, RowTiming
from ..tokenizer import Prompts


@dataclass
class GenerationJob:
    model: str
    checkpoint: Path
    prompts: dict[int, Prompts]  # prompt_len -> prompts for the largest batch; batch b uses the first b rows
    rows: tuple[tuple[int, int], ...]  # (prompt_len, batch) in the order they are timed
    new_tokens: int
    warmup_s: float
    repeats: int
    dtype: str  # torch dtype name: float16, bfloat16, float32
    device: torch.device
    tensor_parallel: int = 1
    reference: Path | None = None  # transformers' Reference (torch.save'd), for the checks
    log_dir: Path | None = None

    @property
    def max_context(self) -> int:
        return max(p for p, _ in self.rows) + self.new_tokens


@dataclass
class BatchResult:
    prompt_len: int
    batch: int
    status: str  # ok | oom | error
    reason: str = ""
    timing: RowTiming | None = None
    memory: PeakMemory = field(default_factory=PeakMemory)
    dtype: str | None = None  # the dtype the engine actually computed in
    check: LogitsCheck | None = None  # this engine's logits against the reference's (None for the reference)
    check_error: str | None = None  # why the check could not run: then the latency is not a result


@dataclass
class EngineRun:
    notes: list[str] = field(default_factory=list)


OnResult = Callable[[BatchResult], None]


class Engine(Protocol):
    name: str
    is_reference: bool  # transformers: what the others are checked against
    timing_method: str  # how its per-token times are taken, quoted in every row and the report

    def unavailable_reason(self, *, tensor_parallel: int = 1) -> str | None:
        """None when the engine can run here, else one line saying why not."""

    def shape_support(self, cfg: ModelConfig, *, dtype: str, tensor_parallel: int, max_context: int):
        """A KernelSupport-like object (ok, reason, source) for this shape, checked before launching."""

    def row_support(self, cfg: ModelConfig, *, dtype: str, tensor_parallel: int, prompt_len: int, batch: int):
        """Optional: like shape_support, for one prompt length and batch of a shape it accepted."""

    def prepare(self) -> None:
        """One-off work kept out of every timed region (JIT kernel builds)."""

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        """Time every row of `job` in order, calling `on_result` as each one finishes."""


ENGINES = {
    "hf": ("inference.engines.hf", "HFEngine", "transformers generate(): the baseline and the reference"),
    "mii": ("inference.engines.mii", "MIIEngine", "DeepSpeed-MII legacy with kernel injection: the engine under test"),
    "mii-noinject": ("inference.engines.mii", "MIINoInjectEngine",
                     "DeepSpeed-MII legacy without kernel injection: for shapes the fused kernels refuse"),
    "mii-cudagraph": ("inference.engines.mii", "MIICudaGraphEngine",
                      "DeepSpeed-MII legacy with enable_cuda_graph (its rows say why it cannot run GPT-NeoX)"),
    "neox-graph": ("inference.engines.graph", "GraphDecodeEngine",
                   "the project's own GPT-NeoX with the whole decode step in one CUDA graph"),
    "neox-graph-compile": ("inference.engines.graph", "GraphDecodeCompileEngine",
                           "neox-graph with torch.compile fusing the step's head and tail (falls back, and says so)"),
}
FALLBACK = {"mii": "mii-noinject"}  # a shape an engine refuses still gets a row from this variant


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

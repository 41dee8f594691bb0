"""Timing one generation step by step, and the numbers each bench row reports.

Per-token times come from a logits processor that generate() calls once per new token, right after that
step's forward: on CUDA it records an event (no synchronisation, so the timing does not perturb what it
times); off CUDA it reads the host clock. With events e_0 (before the call) and e_1..e_N (one per token):
time to first token = e_0 -> e_1 (tokenisation + prefill + first token), decode step k = e_k -> e_k+1.
End to end is the host clock around the whole call, synchronised: what a caller waits for.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from models import ModelConfig, count_parameters
from profiler.timing import summarize

TIMING_METHOD = ("per-token CUDA events recorded by a logits processor inside generate() "
                 "(host clock off CUDA); end to end = synchronised host clock around the call")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


class StepTimer:
    """A logits processor that only marks time: generate() calls it once per generated token."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def start(self) -> None:
        self.marks = [self._mark()]

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def __call__(self, input_ids, scores):
        self.marks.append(self._mark())
        return scores

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


@dataclass
class GenerationSample:
    e2e_ms: float
    ttft_ms: float
    decode_ms: list[float]  # one per decode step (new_tokens - 1 of them)
    tokens_per_row: list[int]  # new tokens each batch row got

    def to_dict(self) -> dict:
        return asdict(self)


def time_generation(generate, device: torch.device) -> GenerationSample:
    """Run `generate(timer) -> tokens_per_row` once, timed end to end and per token."""
    timer = StepTimer(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    timer.start()
    tokens = generate(timer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    e2e_ms = (time.perf_counter() - t0) * 1e3
    steps = timer.intervals_ms()
    if not steps:
        raise RuntimeError("the step timer was never called: the engine did not run generate()'s logits processors")
    return GenerationSample(e2e_ms, steps[0], steps[1:], list(tokens))


def time_generations(generate, device: torch.device, *, warmup: int, repeats: int) -> list[GenerationSample]:
    for _ in range(warmup):
        time_generation(generate, device)
    return [time_generation(generate, device) for _ in range(repeats)]


@dataclass
class PeakMemory:
    """torch's allocator peak misses memory that DeepSpeed's kernels cudaMalloc themselves (their
    workspace and KV cache), so the device-wide figure (total - free, after the run) is kept too."""

    peak_allocated_gb: float | None = None
    device_used_gb: float | None = None

    @classmethod
    def reset(cls, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    @classmethod
    def read(cls, device: torch.device) -> PeakMemory:
        if device.type != "cuda":
            return cls()
        free, total = torch.cuda.mem_get_info(device)
        return cls(torch.cuda.max_memory_allocated(device) / 2**30, (total - free) / 2**30)


def summarize_generation(samples: list[GenerationSample], *, batch: int, new_tokens: int) -> dict:
    """Medians and spread over repeats; decode p50/p90 over every decode step of every repeat."""
    e2e = summarize([s.e2e_ms for s in samples])
    ttft = summarize([s.ttft_ms for s in samples])
    steps = [x for s in samples for x in s.decode_ms]
    decode = summarize(steps) if steps else None
    tokens = min(min(s.tokens_per_row) for s in samples)
    return {
        "e2e_ms": e2e.median_ms, "e2e_p10_ms": e2e.p10_ms, "e2e_p90_ms": e2e.p90_ms,
        "ttft_ms": ttft.median_ms, "ttft_p10_ms": ttft.p10_ms, "ttft_p90_ms": ttft.p90_ms,
        "decode_p50_ms": decode.median_ms if decode else None, "decode_p90_ms": decode.p90_ms if decode else None,
        "decode_steps": len(steps),
        "tokens_per_s": batch * new_tokens / (e2e.median_ms * 1e-3),
        "tokens_generated": tokens, "tokens_ok": all(n == new_tokens for s in samples for n in s.tokens_per_row),
        "repeats": len(samples), "e2e_outliers": e2e.outliers,
    }


def weight_bytes_per_decode_step(cfg: ModelConfig, dtype: str, tensor_parallel: int = 1) -> int:
    """Bytes of weights each GPU reads per decode step: everything but the input embedding (one row per
    sequence is gathered from it, not the table). KV-cache reads are left out: at a few hundred tokens
    they are far smaller than the weights."""
    params = count_parameters(cfg)
    read = params.total - cfg.embedding_rows * cfg.hidden_size
    return read * DTYPE_BYTES[dtype] // tensor_parallel


def decode_floor_ms(weight_bytes: int, bandwidth_tbps: float | None) -> float | None:
    """The physical floor of one decode step: every weight streamed once from HBM at the measured rate."""
    if not bandwidth_tbps:
        return None
    return weight_bytes / (bandwidth_tbps * 1e12) * 1e3


@dataclass
class LogitsCheck:
    """An engine's logits against transformers' on the same checkpoint and the same prompts."""

    method: str
    max_abs_diff: float
    mean_abs_diff: float
    ref_max_abs: float
    top1_agreement: float  # fraction of positions whose argmax agrees
    first_token_agreement: float  # fraction of batch rows whose first generated token agrees
    passed: bool
    tolerance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


REL_TOLERANCE = 0.05  # max |diff| within 5% of the largest reference logit: fp16 kernels differ by ~1e-3
TOP1_TOLERANCE = 0.9  # random weights give near-ties among 50k logits; a broken kernel agrees on ~0


def compare_logits(reference: torch.Tensor, test: torch.Tensor, method: str) -> LogitsCheck:
    """`reference`, `test`: [batch, positions, vocab] (or [batch, vocab] for the first step only)."""
    if reference.shape != test.shape:
        raise ValueError(f"logits shapes differ: reference {tuple(reference.shape)}, engine {tuple(test.shape)}")
    if reference.dim() == 2:
        reference, test = reference[:, None], test[:, None]
    ref, out = reference.float(), test.float().to(reference.device)
    diff = (out - ref).abs()
    max_abs, ref_max = diff.max().item(), ref.abs().max().item()
    top1 = (out.argmax(-1) == ref.argmax(-1)).float()
    passed = max_abs <= REL_TOLERANCE * ref_max and top1.mean().item() >= TOP1_TOLERANCE
    return LogitsCheck(method, max_abs, diff.mean().item(), ref_max, top1.mean().item(), top1[:, -1].mean().item(),
                       passed, {"rel_max_abs": REL_TOLERANCE, "top1": TOP1_TOLERANCE})

"""Timing one generation step by step, and the numbers each bench row reports.

Per-token times come from a logits processor that generate() calls once per new token, right after that
step's forward: on CUDA it records an event (no synchronisation, so the timing does not perturb what it
times); off CUDA it reads the host clock. With events e_0 (before the call) and e_1..e_N (one per token):
time to first token = e_0 -> e_1 (tokenisation + prefill + first token), decode step k = e_k -> e_k+1.
End to end is the host clock around the whole call, synchronised: what a caller waits for.

Each row is warmed up by time, not by count: untimed generations until `warmup_s` have passed (at least
one), so the first row of a run does not pay for a cold GPU (clocks ramping, cuBLAS heuristics, caches).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from models import DTYPE_BYTES, ModelConfig, count_parameters, layer_flops
from profiler.timing import summarize

from .checks import count_new_tokens

TIMING_METHOD = ("per-token CUDA events recorded by a logits processor inside generate() "
                 "(host clock off CUDA); end to end = synchronised host clock around the call")


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
    tokens_per_row: list[int]  # real new tokens each batch row got (up to its first end-of-text)

    def to_dict(self) -> dict:
        return asdict(self)


# generate(timer) runs one generation with `timer` among its logits processors and returns the new token
# ids of every batch row (the columns after the prompt)
Generate = Callable[[StepTimer], list[list[int]]]


def time_generation(generate: Generate, device: torch.device,
                    eos_token_id: int | None = None) -> tuple[GenerationSample, list[list[int]]]:
    """Run `generate` once, timed end to end and per token; also return the tokens it generated."""
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
    counts = [count_new_tokens(list(row), eos_token_id) for row in tokens]
    return GenerationSample(e2e_ms, steps[0], steps[1:], counts), [list(row) for row in tokens]


@dataclass
class RowTiming:
    """One row's timed repeats, what its warm-up did, and the tokens it generated."""

    samples: list[GenerationSample]
    warmup_runs: int
    warmup_ms: float
    tokens: list[list[int]]  # new ids per batch row, from the first timed repeat
    tokens_stable: bool  # every warm-up and timed call generated those same tokens

    def to_dict(self) -> dict:
        return {"samples": [s.to_dict() for s in self.samples], "warmup_runs": self.warmup_runs,
                "warmup_ms": self.warmup_ms, "tokens": self.tokens, "tokens_stable": self.tokens_stable}

    @classmethod
    def from_dict(cls, d: dict) -> RowTiming:
        return cls([GenerationSample(**s) for s in d["samples"]], d["warmup_runs"], d["warmup_ms"], d["tokens"],
                   d["tokens_stable"])


def time_row(generate: Generate, device: torch.device, *, warmup_s: float, repeats: int,
             eos_token_id: int | None = None) -> RowTiming:
    """Untimed generations for `warmup_s` seconds (at least one), then `repeats` timed ones."""
    seen, runs, start = [], 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < warmup_s:
        seen.append(time_generation(generate, device, eos_token_id)[1])
        runs += 1
    warmup_ms = (time.perf_counter() - start) * 1e3
    samples = []
    for _ in range(repeats):
        sample, tokens = time_generation(generate, device, eos_token_id)
        samples.append(sample)
        seen.append(tokens)
    first = seen[runs]
    return RowTiming(samples, runs, warmup_ms, first, all(t == first for t in seen))


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
    """Medians and spread over repeats; decode p10/p50/p90 over every decode step of every repeat."""
    e2e = summarize([s.e2e_ms for s in samples])
    ttft = summarize([s.ttft_ms for s in samples])
    steps = [x for s in samples for x in s.decode_ms]
    decode = summarize(steps) if steps else None
    tokens = min(min(s.tokens_per_row) for s in samples)
    return {
        "e2e_ms": e2e.median_ms, "e2e_p10_ms": e2e.p10_ms, "e2e_p90_ms": e2e.p90_ms,
        "ttft_ms": ttft.median_ms, "ttft_p10_ms": ttft.p10_ms, "ttft_p90_ms": ttft.p90_ms,
        "decode_p50_ms": decode.median_ms if decode else None, "decode_p10_ms": decode.p10_ms if decode else None,
        "decode_p90_ms": decode.p90_ms if decode else None, "decode_steps": len(steps),
        "tokens_per_s": batch * new_tokens / (e2e.median_ms * 1e-3),
        "tokens_generated": tokens, "tokens_ok": all(n == new_tokens for s in samples for n in s.tokens_per_row),
        "repeats": len(samples), "e2e_outliers": e2e.outliers,
    }


def weight_bytes_per_decode_step(cfg: ModelConfig, dtype: str, tensor_parallel: int = 1) -> int:
    """Bytes of weights each GPU reads per decode step: everything but the input embedding (one row per
    sequence is gathered from it, not the table)."""
    params = count_parameters(cfg)
    read = params.total - cfg.embedding_rows * cfg.hidden_size
    return read * DTYPE_BYTES[dtype] // tensor_parallel


def decode_context_mean(prompt_len: int, new_tokens: int) -> float:
    """Mean context a timed decode step attends over: step k (k = 1 .. N-1, the intervals between the
    N per-token marks) runs the forward of token k over the prompt and the k tokens so far: P + k."""
    return prompt_len + new_tokens / 2


def kv_bytes_per_decode_step(cfg: ModelConfig, *, batch: int, context: float, dtype: str,
                             tensor_parallel: int = 1) -> int:
    """Bytes of KV cache each GPU reads per decode step: keys and values (2) of every layer, batch row,
    context position and hidden unit."""
    return int(2 * cfg.num_layers * batch * context * cfg.hidden_size * DTYPE_BYTES[dtype] / tensor_parallel)


def decode_floor_ms(bytes_read: int, bandwidth_tbps: float | None) -> float | None:
    """The physical floor of one decode step: its bytes (weights + KV cache) streamed once from HBM at the
    measured rate."""
    if not bandwidth_tbps:
        return None
    return bytes_read / (bandwidth_tbps * 1e12) * 1e3


def decode_flops_per_step(cfg: ModelConfig, *, batch: int, context: float) -> float:
    """FLOPs of one decode step: 2 per weight per batch row (every weight but the input embedding), plus
    the score and attention-over-values products over the context (2 x 2 x b x context x h per layer)."""
    weights = count_parameters(cfg).total - cfg.embedding_rows * cfg.hidden_size
    return 2.0 * batch * weights + 4.0 * cfg.num_layers * batch * context * cfg.hidden_size


def prefill_flops(cfg: ModelConfig, *, batch: int, prompt_len: int) -> int:
    """FLOPs of the prompt's forward: every layer (Table II, the full s x s attention square as the layer
    profiler counts it) and the logit GEMM, which transformers applies at every prompt position."""
    shaped = cfg.replace(micro_batch_size=batch, seq_length=prompt_len, tensor_parallel=1)
    logits = layer_flops(shaped, include_logits=True) - layer_flops(shaped)
    return cfg.num_layers * layer_flops(shaped) + logits


def compute_floor_ms(flops: float, peak_tflops: float | None) -> float | None:
    """The compute floor of a step at the matmul peak measured in the same run."""
    return flops / (peak_tflops * 1e12) * 1e3 if peak_tflops else None


@dataclass
class Floors:
    weight_bytes: int
    kv_bytes: int
    context_mean: float
    decode_floor_ms: float | None  # (weights + KV) / bandwidth
    decode_flops: float
    compute_floor_ms: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def decode_floors(cfg: ModelConfig, *, batch: int, prompt_len: int, new_tokens: int, dtype: str,
                  tensor_parallel: int, bandwidth_tbps: float | None, peak_tflops: float | None) -> Floors:
    context = decode_context_mean(prompt_len, new_tokens)
    weights = weight_bytes_per_decode_step(cfg, dtype, tensor_parallel)
    kv = kv_bytes_per_decode_step(cfg, batch=batch, context=context, dtype=dtype, tensor_parallel=tensor_parallel)
    flops = decode_flops_per_step(cfg, batch=batch, context=context) / tensor_parallel
    return Floors(weights, kv, context, decode_floor_ms(weights + kv, bandwidth_tbps), flops,
                  compute_floor_ms(flops, peak_tflops))

"""Serving cost of a shape (issue 22, item 5): modelled prefill and decode, so that a proposal that trains
faster but serves slower is flagged.

- decode: one step of the CUDA-graph decode engine (inference/engines/graph.py) is bound by the bytes it
  streams: every weight but the input embedding, plus the K and V cache of every layer over the context,
  at the GPU's measured bandwidth (the floor inference/metrics.decode_floors states; the engine runs within
  1.7-3.6x of it on the H200, evidence/h200/decode). The advisor (floor 2) cannot import inference (floor 3),
  so the two byte counts are restated here from models.count_parameters, in the same terms.
- prefill: the prompt's forward through L layers at (batch, prompt length) with the calibrated GEMM and
  attention model, plus the logit GEMM of the last position of each row (the engine's prefill asks for one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models import DTYPE_BYTES, ModelConfig, count_parameters

from .cost_model import estimate_gemm, layer_forward_ms
from .gpus import GpuModel

SERVE_TOLERANCE = 0.02  # a serving speed-up below 1 - this is "serves slower" (the advisor's default minimum gain)


@dataclass(frozen=True)
class ServingShape:
    batch: int = 1
    prompt_len: int | None = None  # default: the config's sequence length
    new_tokens: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


def decode_bytes(cfg: ModelConfig, *, batch: int, context: float) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) one decode step reads per GPU."""
    e = DTYPE_BYTES[cfg.dtype]
    weights = (count_parameters(cfg).total - cfg.embedding_rows * cfg.hidden_size) * e // cfg.tensor_parallel
    kv = int(2 * cfg.num_layers * batch * context * cfg.hidden_size * e / cfg.tensor_parallel)
    return weights, kv


def decode_ms(cfg: ModelConfig, gpu: GpuModel, shape: ServingShape) -> float:
    prompt = shape.prompt_len or cfg.seq_length
    weights, kv = decode_bytes(cfg, batch=shape.batch, context=prompt + shape.new_tokens / 2)
    return (weights + kv) / (gpu.bandwidth_tbps * 1e12) * 1e3


def prefill_ms(cfg: ModelConfig, gpu: GpuModel, shape: ServingShape) -> float:
    prompt = shape.prompt_len or cfg.seq_length
    shaped = cfg.replace(micro_batch_size=shape.batch, seq_length=prompt)
    forward = layer_forward_ms(shaped, gpu)
    logits = estimate_gemm("logits", "forward", 1, shape.batch, cfg.vocab_per_gpu, cfg.hidden_size, gpu, cfg.dtype)
    return cfg.num_layers * forward + logits.time_ms


def serving_columns(cfg: ModelConfig, gpu: GpuModel, shape: ServingShape) -> dict:
    return {"modelled_prefill_ms": prefill_ms(cfg, gpu, shape), "modelled_decode_ms": decode_ms(cfg, gpu, shape)}


def serving_flag(train_speedup: float, prefill_speedup: float, decode_speedup: float) -> str:
    """'' or what a faster-training proposal loses in serving ("decode 3.1% slower")."""
    if train_speedup <= 1.0:
        return ""
    lost = [f"{what} {100 * (1 - s):.1f}% slower" for what, s in (("prefill", prefill_speedup), ("decode", decode_speedup))
            if s < 1.0 - SERVE_TOLERANCE]
    return "trains faster, serves slower: " + ", ".join(lost) if lost else ""

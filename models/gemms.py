"""The paper's Table II: every GEMM of a layer as (batch, m, n, k) per GPU, with its FLOPs.

A GEMM (m, k) x (k, n) costs 2mnk FLOPs (one multiply and one add per term); a BMM multiplies that by
its batch count. Backward costs twice the forward for every GEMM (one product for the input gradient,
one for the weight gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig

GEMM_COMPONENTS = (
    "qkv_transform", "attention_score", "attention_over_values", "out_projection",
    "mlp_up", "mlp_gate", "mlp_down", "logits",
)


@dataclass(frozen=True)
class Gemm:
    component: str
    batch: int
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.n * self.k

    @property
    def shape(self) -> str:
        prefix = f"{self.batch}x" if self.batch > 1 else ""
        return f"{prefix}({self.m},{self.k})x({self.k},{self.n})"


def layer_gemms(cfg: ModelConfig, *, include_logits: bool = False) -> list[Gemm]:
    """Forward GEMMs of one layer in the order the layer runs them (per GPU, Table II)."""
    bs, h, d = cfg.tokens, cfg.hidden_size, cfg.head_dim
    s, bat = cfg.seq_length, cfg.micro_batch_size * cfg.heads_per_gpu
    gemms = [Gemm("qkv_transform", 1, bs, 3 * cfg.hidden_per_gpu, h)]
    if cfg.attention == "eager":
        gemms += [Gemm("attention_score", bat, s, s, d), Gemm("attention_over_values", bat, s, d, s)]
    gemms.append(Gemm("out_projection", 1, bs, h, cfg.hidden_per_gpu))
    gemms.append(Gemm("mlp_up", 1, bs, cfg.ffn_per_gpu, h))
    if cfg.activation == "swiglu":
        gemms.append(Gemm("mlp_gate", 1, bs, cfg.ffn_per_gpu, h))
    gemms.append(Gemm("mlp_down", 1, bs, h, cfg.ffn_per_gpu))
    if include_logits:
        gemms.append(Gemm("logits", 1, bs, cfg.vocab_per_gpu, h))
    return gemms


def flash_attention_flops(cfg: ModelConfig) -> int:
    """FLOPs of the fused attention as torch.utils.flop_counter counts them: score plus attention over
    values, the full s x s square (the causal half is skipped by the kernel but not by the count)."""
    return 2 * 2 * cfg.micro_batch_size * cfg.heads_per_gpu * cfg.seq_length ** 2 * cfg.head_dim


def layer_flops(cfg: ModelConfig, *, include_logits: bool = False, backward: bool = False) -> int:
    """FLOPs of one layer; with f=4h and t=1 this is the paper's 24bsh^2 + 4bs^2h."""
    total = sum(g.flops for g in layer_gemms(cfg.replace(attention="eager"), include_logits=include_logits))
    return total * 3 if backward else total

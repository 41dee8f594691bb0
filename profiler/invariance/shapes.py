"""What the batch-invariance measurements run over: the layer's weight GEMMs (Table II) and token counts.

Only the GEMMs whose row count is the number of tokens (b*s) belong here: QKV, output projection, MLP
up / gate / down and logits. Their (N, K) comes from the config; M is the number of tokens in flight, the
thing an inference server's batching changes from one step to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from models import ModelConfig, layer_gemms

# TFLOP/s sweep: powers of two 1 .. 8192 and a few odd sizes between them (the seed chart's x axis)
SWEEP_TOKENS = (1, 2, 3, 4, 7, 8, 16, 32, 64, 100, 128, 256, 512, 1000, 1024, 2048, 3000, 4096, 8192)
WEIGHT_GEMMS = ("qkv_transform", "out_projection", "mlp_up", "mlp_gate", "mlp_down", "logits")
# inner dimensions searched at N = h: cuBLAS's heuristics (split-K above all) switch with K as well as M
K_SEARCH = (256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class GemmShape:
    """(M, K) x (K, N) for every M: the components that share the shape (mlp_up and mlp_gate) are one."""

    component: str  # 'mlp_up+mlp_gate' when several share it; 'k-search' for the K sweep
    n: int
    k: int
    bias: bool

    @property
    def label(self) -> str:
        return f"{self.component} (M,{self.k})x({self.k},{self.n})"


def weight_gemm_shapes(cfg: ModelConfig, *, include_logits: bool = False) -> list[GemmShape]:
    shapes: dict[tuple[int, int, bool], list[str]] = {}
    for g in layer_gemms(cfg, include_logits=include_logits):
        if g.component in WEIGHT_GEMMS:
            bias = cfg.bias and g.component != "logits"
            shapes.setdefault((g.n, g.k, bias), []).append(g.component)
    return [GemmShape("+".join(names), n, k, bias) for (n, k, bias), names in shapes.items()]


def k_search_shapes(cfg: ModelConfig, ks: tuple[int, ...] = K_SEARCH) -> list[GemmShape]:
    return [GemmShape("k-search", cfg.hidden_size, k, False) for k in ks]


def check_tokens(max_tokens: int = 8192) -> tuple[int, ...]:
    """Token counts for the invariance check: every M up to 512, every 8th to 2048, every 64th to 8192,
    and the sweep's sizes; cuBLAS's kernel choice can change at any M, so the search is dense."""
    dense = list(range(1, 513)) + list(range(520, 2049, 8)) + list(range(2112, 8193, 64)) + list(SWEEP_TOKENS)
    return tuple(sorted({m for m in dense if m <= max_tokens}))


def k_search_tokens(max_tokens: int = 8192) -> tuple[int, ...]:
    """Coarser M for the K search: every M up to 64, then the sweep's sizes and their neighbours."""
    near = {m + d for m in SWEEP_TOKENS for d in (-1, 0, 1)}
    return tuple(sorted(m for m in set(range(1, 65)) | near if 1 <= m <= max_tokens))


def sweep_tokens(max_tokens: int = 8192) -> tuple[int, ...]:
    return tuple(m for m in SWEEP_TOKENS if m <= max_tokens)

"""A GPT-NeoX causal LM for generation, stacked from the profiler's own layer pieces, with a static KV cache.

The weights live in the same modules the layer profiler traces (models/layer.py: `TransformerLayer` L times,
then `LogitLayer`), so transformers' GPT-NeoX names map onto them as they do for one layer
(models/hf_weights.py). Only the forward differs: a prompt runs once through `prefill`, which fills a
preallocated cache; then each `decode_logits` call processes one token per batch row at a position held in a
device tensor, with fixed shapes, so that one call can be captured in a CUDA graph.

Both phases share `_layers` (norms, GEMMs, residual) and differ only in attention: prefill runs SDPA over the
prompt's own k and v, decode runs models/decode_kernels.decode_attention over the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, ModelConfig
from .decode_kernels import Splits, decode_attention, residual_norms
from .kernels import apply_rotary_in_place
from .layer import MLP, LogitLayer, TransformerLayer, rotary_tables

# attend(layer index, layer, qkv (rows, 3h)) -> attention output (rows, h), before the out-projection
Attend = Callable[[int, TransformerLayer, torch.Tensor], torch.Tensor]


def unsupported_reason(cfg: ModelConfig) -> str | None:
    """None for a GPT-NeoX shape this model builds, else one line saying what is not."""
    wanted = (("activation", "gelu"), ("norm", "layernorm"), ("positional", "rotary"))
    for field_name, value in wanted:
        if getattr(cfg, field_name) != value:
            return f"{field_name}: '{getattr(cfg, field_name)}' is not GPT-NeoX's {value}"
    if cfg.tensor_parallel != 1:
        return f"tensor_parallel: {cfg.tensor_parallel}; the causal LM runs on one GPU"
    return None


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated for (batch, capacity = prompt + new tokens).

    (L, b, heads, T, d): one (batch row, head) is a contiguous (T, d) block, so the attention kernel reads
    keys as whole tiles and one layer's cache is a view. Zeroed, not empty: the torch path multiplies the
    masked positions by 0, and 0 x garbage can be NaN."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def allocate(cls, cfg: ModelConfig, *, batch: int, capacity: int, device, dtype: torch.dtype) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.heads_per_gpu, capacity, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


class NeoXCausalLM(nn.Module):
    """Token embedding, L x TransformerLayer, final norm and logits (models/layer.py pieces).

    `kernels`: "auto" (Triton on CUDA, torch elsewhere), "triton" (also on a CPU, through Triton's
    interpreter) or "torch" (plain ops everywhere: the reference the kernels are checked against).
    `gelu_epilogue`: the MLP's up-projection as one cuBLASLt GEMM with bias + GELU in its epilogue
    (torch._addmm_activation) instead of a GEMM and a GELU kernel; that GELU is the tanh approximation
    (within ~5e-4 of the exact one, below fp16's resolution at the MLP's activations), so it is off by default
    and the float32 parity tests run without it."""

    def __init__(self, cfg: ModelConfig, *, device=None, dtype=None, kernels: str = "auto",
                 gelu_epilogue: bool = False):
        super().__init__()
        reason = unsupported_reason(cfg)
        if reason:
            raise ConfigError(reason)
        self.cfg = cfg
        self.kernels = kernels
        self.gelu_epilogue = gelu_epilogue
        self.embed = nn.Embedding(cfg.embedding_rows, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(TransformerLayer(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.logit_layer = LogitLayer(cfg, device, dtype)
        self._tables: dict = {}

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def rotary_tables(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (capacity, rotary_dims) in float32, as transformers keeps them (its q and k rotate in
        float32 even in an fp16 model); built once per capacity, outside any captured step."""
        key = (capacity, self.device)
        if key not in self._tables:
            cos, sin = rotary_tables(capacity, self.cfg.rotary_dims, self.cfg.rotary_base, self.device)
            self._tables = {key: (cos.contiguous(), sin.contiguous())}  # one row's tables at a time
        return self._tables[key]

    # ---- shared by both phases -------------------------------------------------------------------
    def _norms_of(self, layer: TransformerLayer | None) -> tuple[nn.LayerNorm, ...]:
        """The norms that read the residual stream next: a layer's (both of them when its attention and MLP
        branch off the same x), or the final norm after the last layer."""
        if layer is None:
            return (self.logit_layer.final_norm,)
        if self.cfg.residual == "parallel":
            return (layer.input_norm, layer.post_attention_norm)
        return (layer.input_norm,)

    def _mlp(self, mlp: MLP, x: torch.Tensor) -> torch.Tensor:
        if self.gelu_epilogue and mlp.mlp_up.bias is not None:
            up = torch._addmm_activation(mlp.mlp_up.bias, x, mlp.mlp_up.weight.t(), use_gelu=True)  # (rows, 4h)
            return mlp.mlp_down(up)
        return mlp(x)  # the layer's own MLP: up, exact GELU, down

    def embed_and_norm(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The residual stream x (rows, h) of the tokens and the first layer's norm(s) of it."""
        x = self.embed(input_ids).reshape(-1, self.cfg.hidden_size)  # (b*s, h)
        return x, residual_norms(x, (), self._norms_of(self.layers[0]), backend=self.kernels)

    def layers_forward(self, x: torch.Tensor, normed: tuple[torch.Tensor, ...], attend: Attend) -> torch.Tensor:
        """Every layer over the residual stream x (updated in place); returns the final norm of it (rows, h).

        Each residual add is fused with the norm(s) that read its result (decode_kernels.residual_norms)."""
        parallel = self.cfg.residual == "parallel"
        count = len(self.layers)
        for i, layer in enumerate(self.layers):
            following = self.layers[i + 1] if i + 1 < count else None
            attention = layer.attention
            attn_out = attention.out_projection(attend(i, layer, attention.qkv_transform(normed[0])))  # (rows, h)
            if parallel:  # x + attn(norm1(x)) + mlp(norm2(x))
                mlp_out = self._mlp(layer.mlp, normed[1])
                normed = residual_norms(x, (mlp_out, attn_out), self._norms_of(following), backend=self.kernels)
            else:  # x + attn(norm1(x)), then + mlp(norm2(.))
                (mlp_in,) = residual_norms(x, (attn_out,), (layer.post_attention_norm,), backend=self.kernels)
                mlp_out = self._mlp(layer.mlp, mlp_in)
                normed = residual_norms(x, (mlp_out,), self._norms_of(following), backend=self.kernels)
        return normed[0]

    # ---- prefill: the prompt once through, filling the cache -------------------------------------
    def prefill(self, input_ids: torch.Tensor, cache: KVCache, *, logits_positions: int = 1) -> torch.Tensor:
        """input_ids (b, s), s <= cache capacity: writes every layer's k and v at positions 0..s-1 and
        returns the logits of the last `logits_positions` positions (b, positions, vocab)."""
        cfg = self.cfg
        b, s = input_ids.shape
        heads, d = cfg.heads_per_gpu, cfg.head_dim
        cos, sin = self.rotary_tables(cache.capacity)

        def attend(i: int, layer: TransformerLayer, qkv: torch.Tensor) -> torch.Tensor:
            qkv = apply_rotary_in_place(qkv, cos[:s], sin[:s], heads)  # (b*s, 3h), q and k turned in place
            packed = qkv.view(b, s, heads, 3, d)
            q, k, v = (packed[..., j, :].transpose(1, 2) for j in range(3))  # (b, heads, s, d) views
            cache.keys[i, :, :, :s].copy_(k)
            cache.values[i, :, :, :s].copy_(v)
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.attention.scale)
            return context.transpose(1, 2).reshape(b * s, heads * d)  # (b*s, h)

        x, normed = self.embed_and_norm(input_ids)
        final = self.layers_forward(x, normed, attend).view(b, s, -1)[:, -logits_positions:]  # (b, p, h)
        return self.logit_layer.logits(final)  # (b, p, vocab)

    # ---- decode: one token per row at a device-held position --------------------------------------
    def decode_logits(self, tokens: torch.Tensor, cache: KVCache, pos: torch.Tensor, splits: Splits,
                      tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """tokens (b,) at position `pos` (a device int64 scalar, the same for every row): writes their k and
        v at pos and returns their logits (b, vocab). No host sync and no shape depends on pos. `tables`:
        rotary_tables(cache.capacity), held by the caller (a captured graph reads them at replay)."""
        x, normed = self.embed_and_norm(tokens)
        return self.decode_from(x, normed, cache, pos, splits, tables)

    def decode_from(self, x: torch.Tensor, normed: tuple[torch.Tensor, ...], cache: KVCache, pos: torch.Tensor,
                    splits: Splits, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """decode_logits after the embedding and first norm (which torch.compile may have fused)."""
        cos, sin = tables
        heads = self.cfg.heads_per_gpu

        def attend(i: int, layer: TransformerLayer, qkv: torch.Tensor) -> torch.Tensor:
            return decode_attention(qkv, cache.keys[i], cache.values[i], pos, cos, sin, heads=heads,
                                    scale=layer.attention.scale, splits=splits, backend=self.kernels)

        return self.logit_layer.logits(self.layers_forward(x, normed, attend))  # (b, vocab)

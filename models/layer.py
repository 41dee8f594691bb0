"""A GPT-NeoX-style transformer layer in plain PyTorch, built from a ModelConfig.

Every GEMM of the paper's Table II is its own step, and every non-GEMM step (norms, rotary, scale+mask+
softmax, dropout, activation, residual adds, fused attention, layout copies) runs inside a named region, so
a profiler can attribute each kernel to the step that launched it. The layer knows nothing of profiling:
regions cost nothing unless a profiler is recording.

Shapes are per GPU under t-way tensor parallelism (h/t, 3h/t, 4h/t, a/t heads), as in Table II; the
communication that tensor parallelism would add is out of scope (the paper measures one GPU).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kernels import apply_rotary_in_place, causal_softmax, residual_add

REGION_PREFIX = "layer/"


def region(name: str):
    """A named step for torch.profiler; free when no profiler is recording."""
    if torch._C._autograd._profiler_enabled():
        return torch.profiler.record_function(REGION_PREFIX + name)
    return nullcontext()


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def make_norm(cfg: ModelConfig, device=None, dtype=None) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_epsilon, device=device, dtype=dtype)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_epsilon, device=device, dtype=dtype)


def rotary_tables(seq_length: int, rotary_dims: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (s, rotary_dims), in float32, GPT-NeoX's half-split convention."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dims, 2, dtype=torch.int64, device=device).float() / rotary_dims))
    positions = torch.arange(seq_length, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        kw = dict(bias=cfg.bias, device=device, dtype=dtype)
        self.qkv_transform = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_per_gpu, **kw)
        self.out_projection = nn.Linear(cfg.hidden_per_gpu, cfg.hidden_size, **kw)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self._tables: dict = {}

    def _rotary(self, seq_length: int, device, dtype):
        key = (seq_length, device, dtype)
        if key not in self._tables:  # built once per shape, outside the timed steps
            cos, sin = rotary_tables(seq_length, self.cfg.rotary_dims, self.cfg.rotary_base, device)
            self._tables[key] = (cos.to(dtype).contiguous(), sin.to(dtype).contiguous())
        return self._tables[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, s, _ = x.shape
        heads, d = cfg.heads_per_gpu, cfg.head_dim
        with region("qkv_transform"):  # 2-D, so its output is a tensor of its own (rotary writes into it)
            qkv = self.qkv_transform(x.reshape(b * s, -1))
        if cfg.rotary_dims:
            cos, sin = self._rotary(s, x.device, x.dtype)
            with region("rotary"):  # in place: only the rotated dims of q and k move
                qkv = apply_rotary_in_place(qkv, cos, sin, heads)
        with region("layout"):  # GPT-NeoX packs [q, k, v] per head: (b, s, heads, 3, d); views, no kernels
            qkv = qkv.view(b, s, heads, 3, d)
            q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))  # (b, heads, s, d) views
        dropout_p = cfg.attention_dropout if self.training else 0.0
        if cfg.attention == "eager":
            context = self._eager(q, k, v, dropout_p)
        else:
            context = self._fused(q, k, v, dropout_p)
        with region("layout"):
            context = context.transpose(1, 2).reshape(b, s, cfg.hidden_per_gpu)
        with region("out_projection"):
            return self.out_projection(context)

    def _eager(self, q, k, v, dropout_p):
        b, heads, s, d = q.shape
        with region("layout"):  # BMMs need one batch stride: the head split costs a copy
            q, k, v = (t.reshape(b * heads, s, d) for t in (q, k, v))
            k = k.transpose(1, 2)
        with region("attention_score"):
            scores = torch.baddbmm(q.new_empty(b * heads, s, s), q, k, beta=0.0, alpha=self.scale)
        with region("softmax"):  # the scale rode on the GEMM's alpha; mask + softmax is one fused pass
            probs = causal_softmax(scores)
        if dropout_p > 0:
            with region("dropout"):
                probs = F.dropout(probs, dropout_p, training=True)
        with region("attention_over_values"):
            context = torch.bmm(probs.view(b * heads, s, s), v)
        with region("layout"):
            return context.view(b, heads, s, d)

    def _fused(self, q, k, v, dropout_p):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = sdpa_kernel(SDPBackend.FLASH_ATTENTION) if self.cfg.attention == "flash" else nullcontext()
        # named for what was asked: "flash" pins the flash kernel; "sdpa" lets PyTorch choose (on a CPU its
        # own flash-style kernel), and the component must not claim flash when PyTorch chose otherwise
        with region(f"{self.cfg.attention}_attention"), backend:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=self.scale)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        kw = dict(bias=cfg.bias, device=device, dtype=dtype)
        self.mlp_up = nn.Linear(cfg.hidden_size, cfg.ffn_per_gpu, **kw)
        self.mlp_gate = nn.Linear(cfg.hidden_size, cfg.ffn_per_gpu, **kw) if cfg.activation == "swiglu" else None
        self.mlp_down = nn.Linear(cfg.ffn_per_gpu, cfg.hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with region("mlp_up"):
            up = self.mlp_up(x)
        if self.mlp_gate is not None:
            with region("mlp_gate"):
                gate = self.mlp_gate(x)
            with region("activation"):
                hidden = F.silu(gate) * up
        else:
            with region("activation"):  # the bias rode on the GEMM (addmm epilogue)
                hidden = F.gelu(up)
        with region("mlp_down"):
            return self.mlp_down(hidden)


class TransformerLayer(nn.Module):
    """x -> x + Attn(Norm1(x)) + MLP(Norm2(x)) (parallel, GPT-J/NeoX) or the sequential GPT-2 form."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.input_norm = make_norm(cfg, device, dtype)
        self.post_attention_norm = make_norm(cfg, device, dtype)
        self.attention = Attention(cfg, device, dtype)
        self.mlp = MLP(cfg, device, dtype)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.cfg.hidden_dropout > 0:
            with region("dropout"):
                return F.dropout(x, self.cfg.hidden_dropout, training=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with region("norm"):
            attention_in = self.input_norm(x)
        attention_out = self._dropout(self.attention(attention_in))
        if self.cfg.residual == "parallel":
            with region("norm"):
                mlp_in = self.post_attention_norm(x)
            mlp_out = self._dropout(self.mlp(mlp_in))
            with region("residual"):
                return residual_add(mlp_out, attention_out, x)
        with region("residual"):
            hidden = attention_out + x
        with region("norm"):
            mlp_in = self.post_attention_norm(hidden)
        mlp_out = self._dropout(self.mlp(mlp_in))
        with region("residual"):
            return mlp_out + hidden


class LogitLayer(nn.Module):
    """Final norm and the vocabulary GEMM (h -> v/t per GPU), Table II's last row."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.final_norm = make_norm(cfg, device, dtype)
        self.logits = nn.Linear(cfg.hidden_size, cfg.vocab_per_gpu, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with region("norm"):
            x = self.final_norm(x)
        with region("logits"):
            return self.logits(x)


class LayerStack(nn.Module):
    """What the profiler runs: one transformer layer, optionally followed by the logit layer."""

    def __init__(self, cfg: ModelConfig, *, include_logits: bool = False, device=None, dtype=None):
        super().__init__()
        self.layer = TransformerLayer(cfg, device, dtype)
        self.logit_layer = LogitLayer(cfg, device, dtype) if include_logits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(x)
        return self.logit_layer(x) if self.logit_layer is not None else x


def build_layer(cfg: ModelConfig, *, include_logits: bool = False, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, seed: int = 0) -> LayerStack:
    """Random weights (latency does not depend on their values), std 0.02 as GPT-NeoX initialises."""
    dtype = dtype or torch_dtype(cfg.dtype)
    torch.manual_seed(seed)
    stack = LayerStack(cfg, include_logits=include_logits, device=device, dtype=dtype)
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)  # non-zero so a dropped bias would show in the parity tests
    return stack


def random_input(cfg: ModelConfig, *, device="cpu", dtype=None, requires_grad: bool = False,
                 seed: int = 1) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(cfg.micro_batch_size, cfg.seq_length, cfg.hidden_size, generator=gen)
    return x.to(device=device, dtype=dtype or torch_dtype(cfg.dtype)).requires_grad_(requires_grad)

"""The tensors and the call each point times: random inputs (zeros let the tensor cores skip work and read
optimistically), allocated once per shape, and the same torch call the layer makes for that GEMM."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import UserError
from .spec import SweepPoint

LINEAR_COMPONENTS = ("qkv_transform", "out_projection", "mlp_up", "mlp_gate", "mlp_down", "logits")


def build(point: SweepPoint, dtype: torch.dtype, device: torch.device) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running the point's operation once, its inputs already on the device."""
    randn = lambda *shape: torch.randn(*shape, dtype=dtype, device=device)  # noqa: E731
    bt, m, n, k = point.batch, point.m, point.n, point.k
    if point.component in LINEAR_COMPONENTS:
        # nn.Linear as the layer runs it: x (b*s, k) times weight (n, k) transposed; no bias (not a GEMM FLOP)
        x, weight = randn(m, k), randn(n, k)
        return lambda: F.linear(x, weight)
    if point.component == "attention_score":
        # as the layer's eager path: baddbmm(q, k^T) with the 1/sqrt(d) scale on alpha
        q, key = randn(bt, m, k), randn(bt, n, k)
        empty, scale = torch.empty(bt, m, n, dtype=dtype, device=device), 1 / math.sqrt(k)
        return lambda: torch.baddbmm(empty, q, key.transpose(1, 2), beta=0.0, alpha=scale)
    if point.component == "attention_over_values":
        probs, values = randn(bt, m, k), randn(bt, k, n)
        return lambda: torch.bmm(probs, values)
    if point.component == "mm":
        lhs, rhs = randn(m, k), randn(k, n)
        return lambda: torch.mm(lhs, rhs)
    if point.component == "bmm":
        lhs, rhs = randn(bt, m, k), randn(bt, k, n)
        return lambda: torch.bmm(lhs, rhs)
    if point.component == "flash_attention":
        return _flash(point, randn, device)
    raise ValueError(f"no operands for component {point.component!r}")


def _flash(point: SweepPoint, randn, device: torch.device) -> Callable[[], torch.Tensor]:
    if device.type != "cuda":
        raise UserError("flash: the flash-attention backend of torch SDPA needs a CUDA GPU; run this sweep "
                        "on the GPU machine (or use score/aov for the unfused attention GEMMs)")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads = point.batch // point.b
    q, key, value = (randn(point.b, heads, point.s, point.k) for _ in range(3))  # (b, a/t, s, h/a)
    causal = bool(point.causal)

    def call() -> torch.Tensor:
        # pinned to the flash kernel: a silent fallback to the math path would plot the wrong kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, key, value, is_causal=causal)
    return call

"""The call each sweep point times: profiler.gemm_calls, the builder the layer's floor uses too, so a sweep
point and the floor's GEMM of the same shape run the same kernel. Sweeps time the bare GEMM (no bias: a bias
is no GEMM FLOP) and the fused attention on q, k, v as views of one packed QKV tensor, as the layer has them."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from ..gemm_calls import LINEAR_COMPONENTS, fused_attention_call, gemm_call
from .spec import SweepPoint

__all__ = ["build", "LINEAR_COMPONENTS"]


def build(point: SweepPoint, dtype: torch.dtype, device: torch.device) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running the point's operation once, its inputs already on the device."""
    if point.component == "flash_attention":
        if device.type != "cuda":
            raise UserError("flash: the flash-attention backend of torch SDPA needs a CUDA GPU; run this sweep "
                            "on the GPU machine (or use score/aov for the unfused attention GEMMs)")
        heads = point.batch // point.b
        return fused_attention_call(point.b, point.s, heads, point.k, attention="flash", dtype=dtype, device=device,
                                    causal=bool(point.causal)).step
    try:
        return gemm_call(point.component, point.batch, point.m, point.n, point.k, dtype=dtype, device=device,
                         bias=False).step
    except ValueError:
        raise ValueError(f"no operands for component {point.component!r}") from None

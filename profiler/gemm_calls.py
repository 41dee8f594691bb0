"""One builder for the call that times a GEMM (or the fused attention) alone, shared by the floor and the
sweeps, so the same shape gives the same kernel in both.

Each call is built the way models/layer.py issues it: nn.Linear's F.linear (bias on the cuBLAS epilogue when
the layer has one), the score GEMM as baddbmm with the 1/sqrt(d) scale on alpha and k transposed, the
attention over values as bmm, the fused attention on q, k, v that are views of one packed QKV tensor.
Inputs are random (zeros let the tensor cores skip work) and allocated once. Inside the floor's trace each
call runs in the layer's region name, so the same attribution sorts its kernels (a bias-gradient reduction
or a layout copy of the alone call lands where it lands inside the layer, not in the GEMM's time).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from models.layer import region

LINEAR_COMPONENTS = ("qkv_transform", "out_projection", "mlp_up", "mlp_gate", "mlp_down", "logits")


@dataclass
class Call:
    """`forward()` runs the operation once; `step()` runs what one measured step of the layer runs for this
    component: the forward alone, or forward then backward with a fixed random output gradient."""
    forward: Callable[[], torch.Tensor]
    step: Callable[[], object]


def _randn(*shape, device, dtype, requires_grad=False) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(requires_grad)


def _with_backward(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor], backward: bool) -> Call:
    if not backward:
        def step():
            with torch.no_grad():
                return forward()
        return Call(forward, step)
    with torch.no_grad():
        grad = torch.randn_like(forward())

    def step():
        for t in leaves:  # fresh gradients each step, as in the layer (no accumulation kernels)
            t.grad = None
        forward().backward(grad)
    return Call(forward, step)


def gemm_call(component: str, batch: int, m: int, n: int, k: int, *, dtype: torch.dtype, device: torch.device,
              bias: bool = False, backward: bool = False) -> Call:
    """The call of one GEMM of Table II, (batch x) (m, k) x (k, n), issued as the layer issues it.

    Linear components: x (m, k) times weight (n, k) transposed, plus bias when `bias`. BMMs: the score as
    baddbmm(q, k^T) with the scale on alpha, the attention over values as bmm. `mm` and `bmm` are plain
    products (the sweeps' generic grids)."""
    grad = backward
    if component in LINEAR_COMPONENTS:
        x = _randn(m, k, device=device, dtype=dtype, requires_grad=grad)
        weight = _randn(n, k, device=device, dtype=dtype, requires_grad=grad)
        b = _randn(n, device=device, dtype=dtype, requires_grad=grad) if bias else None

        def forward():
            with region(component):
                return F.linear(x, weight, b)
        return _with_backward(forward, [t for t in (x, weight, b) if t is not None], backward)
    if component == "attention_score":
        # k is stored (batch, s, d) and transposed as a view, as in the layer's eager path
        q, key = _randn(batch, m, k, device=device, dtype=dtype, requires_grad=grad), \
            _randn(batch, n, k, device=device, dtype=dtype, requires_grad=grad)
        empty, scale = torch.empty(batch, m, n, dtype=dtype, device=device), 1 / math.sqrt(k)

        def forward():
            with region(component):
                return torch.baddbmm(empty, q, key.transpose(1, 2), beta=0.0, alpha=scale)
        return _with_backward(forward, [q, key], backward)
    if component == "attention_over_values":
        probs, values = _randn(batch, m, k, device=device, dtype=dtype, requires_grad=grad), \
            _randn(batch, k, n, device=device, dtype=dtype, requires_grad=grad)

        def forward():
            with region(component):
                return torch.bmm(probs, values)
        return _with_backward(forward, [probs, values], backward)
    if component == "mm":
        lhs, rhs = _randn(m, k, device=device, dtype=dtype), _randn(k, n, device=device, dtype=dtype)
        return _with_backward(lambda: torch.mm(lhs, rhs), [], False)
    if component == "bmm":
        lhs, rhs = _randn(batch, m, k, device=device, dtype=dtype), _randn(batch, k, n, device=device, dtype=dtype)
        return _with_backward(lambda: torch.bmm(lhs, rhs), [], False)
    raise ValueError(f"no GEMM call for component {component!r}")


def fused_attention_call(b: int, s: int, heads: int, d: int, *, attention: str, dtype: torch.dtype,
                         device: torch.device, dropout_p: float = 0.0, causal: bool = True,
                         backward: bool = False, packed: bool = True) -> Call:
    """SDPA as the layer runs it: q, k, v are views of one packed (b, s, heads, 3, d) tensor (GPT-NeoX's
    layout), so the backward's scatter of dq/dk/dv into the packed gradient happens here as it does in the
    layer, in the layout region, and is not counted as attention. `attention="flash"` pins the flash backend
    (a silent fallback to the math path would time the wrong kernel); "sdpa" lets PyTorch choose.
    `packed=False` gives separate contiguous (b, heads, s, d) q, k, v (the sweeps' shape-only points)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    scale = 1 / math.sqrt(d)
    if packed:
        qkv = _randn(b, s, heads, 3, d, device=device, dtype=dtype, requires_grad=backward)
        leaves = [qkv]

        def operands():
            with region("layout"):
                return tuple(qkv[..., i, :].transpose(1, 2) for i in range(3))
    else:
        q, k, v = (_randn(b, heads, s, d, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
        leaves = [q, k, v]

        def operands():
            return q, k, v
    pinned = (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)) if attention == "flash" else nullcontext

    def forward():
        q_, k_, v_ = operands()
        with region(f"{attention}_attention"), pinned():
            return F.scaled_dot_product_attention(q_, k_, v_, dropout_p=dropout_p, is_causal=causal, scale=scale)
    return _with_backward(forward, leaves, backward)

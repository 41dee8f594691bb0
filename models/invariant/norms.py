"""Batch-invariant LayerNorm and RMSNorm: one program per row, the row's reduction tree fixed by its width.

A row's statistics are reduced over h inside one program whose shape (BLOCK = next power of two >= h,
warps by h) depends on h alone, so a row reduces the same way whether it is alone or one of 8192. PyTorch's
own norm kernels are also per-row on CUDA, and may well be invariant already: the layer check measures
that for the default kernels; these make the invariant layer invariant by construction.
"""

from __future__ import annotations

import torch

from .backend import Kernel, require, tl, triton


def _norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, rows, n, stride_x, stride_y, eps,
                 RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if RMS:
        xc = x
    else:
        xc = tl.where(ok, x - tl.sum(x, axis=0) / n, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n + eps)
    y = xc * rstd * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=ok)


NORM = Kernel(_norm_kernel, do_not_specialize=["rows"]) if triton is not None else None


def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool) -> torch.Tensor:
    require()
    n = x.shape[-1]
    if weight.shape != (n,) or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"invariant norm: weight/bias must be ({n},) for rows of width {n}")
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
    # the interpreter rounds fp32 -> 16 bits by truncation: there, store fp32 and let torch round
    staged = out if x.device.type == "cuda" or x.dtype == torch.float32 else torch.empty_like(out, dtype=torch.float32)
    block = triton.next_power_of_2(n)
    if x2.shape[0]:
        NORM[(x2.shape[0],)](x2, weight, bias if bias is not None else weight, staged, x2.shape[0], n,
                             x2.stride(0), staged.stride(0), float(eps), RMS=rms, HAS_BIAS=bias is not None,
                             BLOCK=block, num_warps=8 if block >= 2048 else 4 if block >= 512 else 2)
    if staged is not out:
        out.copy_(staged)
    return out.view(x.shape)


def invariant_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.layer_norm over the last dim (fp32 statistics), batch-invariant."""
    return _norm(x, weight, bias, eps, rms=False)


def invariant_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """F.rms_norm over the last dim (fp32 statistics), batch-invariant."""
    return _norm(x, weight, None, eps, rms=True)

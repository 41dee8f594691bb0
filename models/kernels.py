"""Fused kernels a production framework would run: in-place rotary and causal scale-mask-softmax.

GPT-NeoX / Megatron run these fused; PyTorch eager runs them as several strided elementwise kernels, which
inflates non-GEMM time and distorts every share the profiler reports (paper Section VI-C: custom rotary
kernels). On CUDA with Triton these are single Triton kernels; elsewhere the same autograd Functions run
plain torch ops, which the CPU parity tests check against transformers.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on CPU-only installs
    triton = None


def _use_triton(t: torch.Tensor) -> bool:
    return triton is not None and t.is_cuda


if triton is not None:
    @triton.jit
    def _rotary_kernel(qkv_ptr, cos_ptr, sin_ptr, n_rows, heads, seq, head_dim, rotary_dims, sign,
                       HALF: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        # ROWS (token, head) pairs per program; rotates each one's q and k in place
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & (cols[None, :] < HALF)
        pos = (rows // heads) % seq
        table = pos[:, None] * rotary_dims + cols[None, :]
        c = tl.load(cos_ptr + table, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32) * sign
        for which in tl.static_range(2):
            base = qkv_ptr + (rows.to(tl.int64) * 3 * head_dim + which * head_dim)[:, None] + cols[None, :]
            x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
            tl.store(base, (x1 * c - x2 * s).to(qkv_ptr.dtype.element_ty), mask=mask)
            tl.store(base + HALF, (x2 * c + x1 * s).to(qkv_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _causal_softmax_kernel(x_ptr, y_ptr, n_cols, seq, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # one query row of one (batch, head); keys after the query are masked
        q_pos = row % seq
        cols = tl.arange(0, BLOCK)
        offset = row.to(tl.int64) * n_cols
        valid = (cols < n_cols) & (cols <= q_pos)
        x = tl.load(x_ptr + offset + cols, mask=valid, other=-float("inf")).to(tl.float32)
        e = tl.exp(x - tl.max(x, axis=0))
        e = tl.where(valid, e, 0.0)
        y = e / tl.sum(e, axis=0)
        tl.store(y_ptr + offset + cols, y.to(y_ptr.dtype.element_ty), mask=cols < n_cols)


if triton is not None:
    @triton.jit
    def _add3_kernel(a_ptr, b_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        total = tl.load(a_ptr + offsets, mask=mask).to(tl.float32) + tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
        total += tl.load(c_ptr + offsets, mask=mask).to(tl.float32)
        tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=mask)


class ResidualAdd(torch.autograd.Function):
    """a + b + c in one pass (Megatron's bias-dropout-add, with the bias on the GEMM and no dropout):
    the parallel residual's two adds read and write the hidden state once instead of twice."""

    @staticmethod
    def forward(ctx, a, b, c):
        if _use_triton(a) and a.shape == b.shape == c.shape and a.dtype == b.dtype == c.dtype and \
                a.is_contiguous() and b.is_contiguous() and c.is_contiguous():
            out = torch.empty_like(a)
            _add3_kernel[(triton.cdiv(a.numel(), 4096),)](a, b, c, out, a.numel(), BLOCK=4096)
            return out
        return a + b + c

    @staticmethod
    def backward(ctx, grad):
        return grad, grad, grad


def residual_add(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ResidualAdd.apply(a, b, c)


def _rotate(packed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, sign: float) -> None:
    """Rotate q and k of a packed (b*s, heads*3*d) QKV tensor in place by +angle (sign=1) or -angle (-1)."""
    rotary_dims = cos.shape[-1]
    half = rotary_dims // 2
    seq = cos.shape[0]
    d = packed.shape[-1] // (3 * heads)
    if _use_triton(packed) and packed.is_contiguous():
        n_rows, block = packed.shape[0] * heads, triton.next_power_of_2(half)
        rows_per_program = max(1, 2048 // block)  # small heads: many rows per program, not many programs
        _rotary_kernel[(triton.cdiv(n_rows, rows_per_program),)](
            packed, cos, sin, n_rows, heads, seq, d, rotary_dims, float(sign),
            HALF=half, BLOCK=block, ROWS=rows_per_program)
        return
    qkv = packed.view(-1, seq, heads, 3, d)
    rot = qkv[..., :2, :rotary_dims]
    shape = (1, cos.shape[0], 1, 1, half)
    c, s_ = cos[:, :half].reshape(shape), sign * sin[:, :half].reshape(shape)
    x1, x2 = rot[..., :half], rot[..., half:]
    new1, new2 = x1 * c - x2 * s_, x2 * c + x1 * s_
    x1.copy_(new1)
    x2.copy_(new2)


class RotaryInPlace(torch.autograd.Function):
    """GPT-NeoX rotary on the first rotary_dims of q and k, written into the packed QKV tensor.

    Only the rotated quarter (at rotary_pct 0.25) is read and written: the passthrough dims and v never
    move. Backward rotates the gradient by the opposite angle (a rotation's inverse is its transpose).
    The packed tensor must be the GEMM's own 2-D output, not a view: an in-place write into a view makes
    autograd add copy nodes that belong to no forward op."""

    @staticmethod
    def forward(ctx, packed, cos, sin, heads):
        _rotate(packed, cos, sin, heads, 1.0)
        ctx.mark_dirty(packed)
        ctx.save_for_backward(cos, sin)
        ctx.heads = heads
        return packed

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        grad = grad.contiguous().clone()
        _rotate(grad, cos, sin, ctx.heads, -1.0)
        return grad, None, None, None


def apply_rotary_in_place(packed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """packed: (b*s, heads*3*d) rows in sequence order; cos/sin: (s, rotary_dims)."""
    return RotaryInPlace.apply(packed, cos, sin, heads)


class CausalSoftmax(torch.autograd.Function):
    """softmax(scores masked above the diagonal), one pass over the scores (Megatron's fused kernel).

    The scale rides on the score GEMM's alpha; backward is PyTorch's softmax backward (masked entries
    have probability 0, so their gradient is 0 without a mask)."""

    @staticmethod
    def forward(ctx, scores):
        *_, s_q, s_k = scores.shape
        if _use_triton(scores) and scores.is_contiguous() and s_k <= 16384:
            probs = torch.empty_like(scores)
            rows = scores.numel() // s_k
            block = triton.next_power_of_2(s_k)
            _causal_softmax_kernel[(rows,)](scores, probs, s_k, s_q, BLOCK=block,
                                            num_warps=16 if block >= 4096 else 8 if block >= 1024 else 4)
        else:
            mask = torch.ones(s_q, s_k, dtype=torch.bool, device=scores.device).triu(1)
            probs = torch.softmax(scores.masked_fill(mask, torch.finfo(scores.dtype).min), dim=-1)
        ctx.save_for_backward(probs)
        return probs

    @staticmethod
    def backward(ctx, grad):
        (probs,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad.contiguous(), probs, -1, probs.dtype)


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    return CausalSoftmax.apply(scores)

"""Batch-invariant causal attention: a flash-attention forward whose work split never depends on the batch.

FlashAttention-2's forward may split the keys of one (sequence, head) over several programs and merge the
partial softmaxes when batch x heads x query blocks leave SMs idle (its split-KV heuristic), so the same
prompt can be reduced in a different order alone than in a full batch. Here one program owns one block of
queries of one (sequence, head) and walks its keys in one order, 0 .. its causal end, with an online
softmax in fp32: nothing about it depends on how many sequences share the launch.

q, k, v are read through their strides (the packed QKV tensor's views, no copies); the output is written
as (b, s, heads, d), so the layer's transpose back to (b, s, h) is a view.
"""

from __future__ import annotations

import math

import torch

from .backend import Kernel, out_of_resources, require, tl, triton

LOG2E = 1.4426950408889634


def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, seq, heads, head_dim, qk_scale,
                      sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_s,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                      INTERPRETED: tl.constexpr):
    block_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_s + offs_d[None, :],
                mask=(offs_m[:, None] < seq) & d_ok[None, :], other=0.0)
    if INTERPRETED:  # the interpreter's dot multiplies 16-bit bit patterns: compute in fp32 there
        q = q.to(tl.float32)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    end = tl.minimum((block_m + 1) * BLOCK_M, seq)  # causal: keys after the block's last query never count
    for start in range(0, end, BLOCK_N):  # the one order: key blocks 0, 1, 2, ...
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < seq) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * sk_s + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_s + offs_d[None, :], mask=kv_mask, other=0.0)
        if INTERPRETED:
            k, v = k.to(tl.float32), v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # log2 domain: exp2 below
        scores = tl.where((offs_m[:, None] >= offs_n[None, :]) & (offs_n[None, :] < seq), scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.math.exp2(scores - m_new[:, None])
        correction = tl.math.exp2(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, axis=1)
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + b * so_b + h * so_h + offs_m[:, None] * so_s + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < seq) & d_ok[None, :])


ATTENTION = Kernel(_attention_kernel) if triton is not None else None
_chosen: dict[tuple, tuple] = {}


def attention_configs(head_dim: int, dtype: torch.dtype) -> tuple[tuple[int, int, int, int], ...]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) candidates by head size and dtype, never by batch.
    h/a = 256 (Pythia-1B) needs small tiles: K and V blocks of 64 x 256 bf16 are 32 KB each per stage."""
    if dtype == torch.float32:  # exact fp32 products (no tensor cores): small tiles, or registers spill
        return ((32, 32, 4, 1), (16, 16, 4, 1)) if head_dim <= 64 else ((16, 16, 4, 1),)
    if head_dim <= 64:
        return ((128, 64, 4, 3), (64, 64, 4, 2), (32, 32, 4, 1))
    if head_dim <= 128:
        return ((128, 64, 8, 3), (64, 64, 4, 2), (32, 32, 4, 1))
    return ((64, 64, 8, 2), (64, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1))


def invariant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax(q k^T * scale) v for q, k, v of shape (b, heads, s, d) (any strides, last dim unit
    stride). Returns (b, heads, s, d), a view of a (b, s, heads, d) tensor."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"invariant attention: q, k, v must share one (b, heads, s, d) shape, "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    require()
    b, heads, s, d = q.shape
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty(b, s, heads, d, device=q.device, dtype=q.dtype)
    cpu_16bit = q.device.type != "cuda" and q.dtype != torch.float32
    staged = torch.empty_like(out, dtype=torch.float32) if cpu_16bit else out  # interpreter rounding, as in matmul
    if out.numel():
        key = (q.device.type, d, q.dtype)
        candidates = [_chosen[key]] if key in _chosen else list(attention_configs(d, q.dtype))
        for i, (block_m, block_n, warps, stages) in enumerate(candidates):
            try:
                ATTENTION[(triton.cdiv(s, block_m), b * heads)](
                    q, k, v, staged, s, heads, d, scale * LOG2E,
                    q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    v.stride(0), v.stride(1), v.stride(2), staged.stride(0), staged.stride(2), staged.stride(1),
                    BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)),
                    INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", INTERPRETED=q.device.type != "cuda",
                    num_warps=warps, num_stages=stages)
            except out_of_resources():
                if i == len(candidates) - 1:
                    raise
                continue
            _chosen[key] = (block_m, block_n, warps, stages)
            break
    if staged is not out:
        out.copy_(staged)
    return out.transpose(1, 2)

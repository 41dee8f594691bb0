"""The decode attention kernels as they were before tuning (git 0011870), kept only as the tuning script's
baseline (scripts/tune_decode_kernels.py): split-KV attention with one running max per tile, 64-wide tiles, no
software pipelining. Not used by the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.invariant.backend import Kernel, program_slots, triton, tl

MAX_SPLITS = 64
PROGRAMS_PER_SM = 4


@dataclass(frozen=True)
class Splits:
    """How the cache of one (batch row, head) is cut for the attention kernel: fixed per captured graph."""

    count: int  # programs per (batch row, head)
    keys: int  # cache positions each one covers (a multiple of block_n)
    block_n: int  # keys per loop iteration
    block_d: int  # head dim rounded up to a power of two
    warps: int  # per program

    @property
    def direct(self) -> bool:  # one split: the kernel normalises and writes the output itself
        return self.count == 1


def attention_splits(rows_x_heads: int, capacity: int, head_dim: int, device: torch.device,
                     count: int | None = None) -> Splits:
    """Enough programs to cover every SM PROGRAMS_PER_SM times (batch 1 with 8 heads needs ~60 splits of
    the cache; batch 64 needs none), each at least one tile of keys, at most MAX_SPLITS.

    Tiles of 4096 elements (8 KB of keys and 8 KB of values in flight per program and iteration). Warps from
    ptxas' register counts for sm_90: a 64-wide tile takes 204 registers a thread at 4 warps (2 programs, 8
    warps an SM) and 111 at 8 (16 warps an SM); 128- and 256-wide tiles fit 3-5 programs an SM at 4 warps
    (142 and 91 registers) and lose them at 8."""
    block_d = 1 << max(4, math.ceil(math.log2(head_dim)))
    block_n = max(16, min(64, 4096 // block_d))
    blocks = -(-capacity // block_n)
    if count is None:
        count = -(-PROGRAMS_PER_SM * program_slots(device) // rows_x_heads)
    count = max(1, min(count, blocks, MAX_SPLITS))
    per_split = -(-blocks // count)
    return Splits(-(-blocks // per_split), per_split * block_n, block_n, block_d, 8 if block_d <= 64 else 4)


def _decode_attention_kernel(qkv_ptr, bias_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, cos_ptr, sin_ptr, out_ptr,
                             out_stride, m_ptr, l_ptr, acc_ptr, heads, head_dim, rotary_dims, capacity, keys_per_split,
                             n_splits, scale,
                             HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr):
    bh = tl.program_id(0)  # one (batch row, head) ...
    split = tl.program_id(1)  # ... and one stretch of its cache
    row, head = bh // heads, bh % heads
    pos = tl.load(pos_ptr)  # where this step's token sits: it attends to positions 0..pos
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    # GPT-NeoX packs [q, k, v] per head: (b, heads, 3, d); rotary turns the first rotary_dims of q and k,
    # half-split: x_j cos - x_{j+half} sin below half, x_j cos + x_{j-half} sin above
    packed = qkv_ptr + row.to(tl.int64) * heads * 3 * head_dim + head * 3 * head_dim
    biases = bias_ptr + head * 3 * head_dim
    rotated = d < rotary_dims
    partner = tl.where(rotated, tl.where(d < HALF, d + HALF, d - HALF), d)
    cos = tl.load(cos_ptr + pos * rotary_dims + d, mask=rotated, other=1.0)
    sin = tl.load(sin_ptr + pos * rotary_dims + d, mask=rotated, other=0.0) * tl.where(d < HALF, -1.0, 1.0)
    # q, k (and their rotary partners) and v, each with its bias, rounded as the GEMM with its bias would store it
    q = tl.load(packed + d, mask=d_ok, other=0.0).to(tl.float32)
    q_partner = tl.load(packed + partner, mask=d_ok, other=0.0).to(tl.float32)
    k_own = tl.load(packed + head_dim + d, mask=d_ok, other=0.0).to(tl.float32)
    k_partner = tl.load(packed + head_dim + partner, mask=d_ok, other=0.0).to(tl.float32)
    v_new = tl.load(packed + 2 * head_dim + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        q += tl.load(biases + d, mask=d_ok, other=0.0).to(tl.float32)
        q_partner += tl.load(biases + partner, mask=d_ok, other=0.0).to(tl.float32)
        k_own += tl.load(biases + head_dim + d, mask=d_ok, other=0.0).to(tl.float32)
        k_partner += tl.load(biases + head_dim + partner, mask=d_ok, other=0.0).to(tl.float32)
        v_new += tl.load(biases + 2 * head_dim + d, mask=d_ok, other=0.0).to(tl.float32)
    dtype = qkv_ptr.dtype.element_ty
    q = q.to(dtype).to(tl.float32) * cos + q_partner.to(dtype).to(tl.float32) * sin
    k_new = k_own.to(dtype).to(tl.float32) * cos + k_partner.to(dtype).to(tl.float32) * sin
    k_new = k_new.to(k_cache_ptr.dtype.element_ty)  # as stored, so this step sees what later steps will read
    v_new = v_new.to(v_cache_ptr.dtype.element_ty)
    cache = bh.to(tl.int64) * capacity * head_dim
    lo = split.to(tl.int64) * keys_per_split  # int64 like pos: the loop bounds share one type
    hi = tl.minimum(lo + keys_per_split, pos + 1)  # splits past pos do no work (fixed grid, filled cache read)
    owner = (lo <= pos) & (pos < lo + keys_per_split) & (pos < capacity)  # one split writes the new k, v
    store_ok = d < tl.where(owner, head_dim, 0)  # (not d_ok & owner: the interpreter mis-types vector & scalar)
    tl.store(k_cache_ptr + cache + pos * head_dim + d, k_new, mask=store_ok)
    tl.store(v_cache_ptr + cache + pos * head_dim + d, v_new, mask=store_ok)
    k_new = k_new.to(tl.float32)
    v_new = v_new.to(tl.float32)
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)  # running max, sum, output (online softmax)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        tile = cache + n[:, None].to(tl.int64) * head_dim + d[None, :]
        tile_ok = n_ok[:, None] & d_ok[None, :]
        is_new = (n == pos)[:, None]  # the new key is in registers; its cache slot is written above
        k = tl.where(is_new, k_new[None, :], tl.load(k_cache_ptr + tile, mask=tile_ok, other=0.0).to(tl.float32))
        s = tl.where(n_ok, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))  # (BLOCK_N,)
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m_i - m_new)
        v = tl.where(is_new, v_new[None, :], tl.load(v_cache_ptr + tile, mask=tile_ok, other=0.0).to(tl.float32))
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m_i = m_new
    if DIRECT:  # out (b, >= heads*d) with row stride out_stride: the output GEMM's input, or a plain (b, h)
        where = out_ptr + row.to(tl.int64) * out_stride + head * head_dim + d
        tl.store(where, (acc / l_i).to(out_ptr.dtype.element_ty), mask=d_ok)
    else:
        part = bh.to(tl.int64) * n_splits + split
        tl.store(m_ptr + part, m_i)
        tl.store(l_ptr + part, l_i)
        tl.store(acc_ptr + part * head_dim + d, acc, mask=d_ok)


def _join_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, out_stride, n_splits, heads, head_dim, combine_programs,
                 up_ptr, up_bias_ptr, ffn, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_GELU: tl.constexpr,
                 HAS_UP_BIAS: tl.constexpr, GELU_BLOCK: tl.constexpr):
    """The two small jobs between the attention kernel and the output GEMM, in one launch. Programs below
    combine_programs merge the attention splits of one (batch row, head, BLOCK_D dims) into out[:, :h]; the
    rest (HAS_GELU) write gelu(up + bias) of one (batch row, GELU_BLOCK columns) into out[:, h:]."""
    pid = tl.program_id(0)
    if pid < combine_programs:
        d_blocks = tl.cdiv(head_dim, BLOCK_D)
        bh = (pid // d_blocks).to(tl.int64)
        d = (pid % d_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
        s = tl.arange(0, BLOCK_S)
        s_ok = s < n_splits
        d_ok = d < head_dim
        m = tl.load(m_ptr + bh * n_splits + s, mask=s_ok, other=float("-inf"))
        weight = tl.exp(m - tl.max(m, axis=0))  # a split with no keys has m = -inf: weight 0
        total = tl.sum(weight * tl.load(l_ptr + bh * n_splits + s, mask=s_ok, other=0.0), axis=0)
        acc = tl.load(acc_ptr + (bh * n_splits + s)[:, None] * head_dim + d[None, :],
                      mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        out = tl.sum(weight[:, None] * acc, axis=0) / total
        where = out_ptr + (bh // heads) * out_stride + (bh % heads) * head_dim + d
        tl.store(where, out.to(out_ptr.dtype.element_ty), mask=d_ok)
    else:
        if HAS_GELU:
            job = pid - combine_programs
            col_blocks = tl.cdiv(ffn, GELU_BLOCK)
            row = (job // col_blocks).to(tl.int64)
            cols = (job % col_blocks) * GELU_BLOCK + tl.arange(0, GELU_BLOCK)
            ok = cols < ffn
            x = tl.load(up_ptr + row * ffn + cols, mask=ok, other=0.0).to(tl.float32)
            if HAS_UP_BIAS:
                x += tl.load(up_bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
            x = x.to(up_ptr.dtype.element_ty).to(tl.float32)  # the GEMM with its bias would round here
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
            tl.store(out_ptr + row * out_stride + heads * head_dim + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


DECODE_ATTENTION = Kernel(_decode_attention_kernel) if triton is not None else None
JOIN = Kernel(_join_kernel) if triton is not None else None
COMBINE_BLOCK_D = 32


GELU_BLOCK = 1024


def _attention_kernels(qkv, bias, k_cache, v_cache, pos, cos, sin, out, *, heads, scale, splits, up=None,
                       up_bias=None) -> None:
    """Launch the attention kernel (and the join kernel: split combine, and bias + GELU of `up` into
    out[:, h:] when given) writing into out (b, >= h), which may be a row-strided view."""
    b, _, capacity, d = k_cache.shape
    rows = b * heads
    if splits.direct:
        m = l_ = acc = out  # unused
    else:
        m = torch.empty(rows, splits.count, device=qkv.device, dtype=torch.float32)
        l_ = torch.empty_like(m)
        acc = torch.empty(rows, splits.count, d, device=qkv.device, dtype=torch.float32)
    rotary_dims = cos.shape[-1]
    DECODE_ATTENTION[(rows, splits.count)](
        qkv, bias if bias is not None else qkv, k_cache, v_cache, pos, cos, sin, out, out.stride(0), m, l_, acc,
        heads, d, rotary_dims, capacity, splits.keys, splits.count, scale, HALF=max(1, rotary_dims // 2),
        BLOCK_N=splits.block_n, BLOCK_D=splits.block_d, HAS_BIAS=bias is not None, DIRECT=splits.direct,
        num_warps=splits.warps)
    combine = 0 if splits.direct else rows * triton.cdiv(d, COMBINE_BLOCK_D)
    ffn = up.shape[1] if up is not None else 0
    gelu = b * triton.cdiv(ffn, GELU_BLOCK) if up is not None else 0
    if combine + gelu:
        JOIN[(combine + gelu,)](m, l_, acc, out, out.stride(0), splits.count, heads, d, combine,
                                up if up is not None else out, up_bias if up_bias is not None else out, ffn,
                                BLOCK_S=triton.next_power_of_2(splits.count), BLOCK_D=COMBINE_BLOCK_D,
                                HAS_GELU=up is not None, HAS_UP_BIAS=up_bias is not None, GELU_BLOCK=GELU_BLOCK,
                                num_warps=4)

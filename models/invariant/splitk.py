"""A split-K matmul that is batch-invariant by construction: K is cut into a fixed number of chunks per (N, K).

Element (i, j) is sum over chunks c = 0, 1, ..., CHUNKS-1 (in that order, in fp32) of the chunk's partial
sum, and each partial sum is one sequential fp32 chain over its K range in BLOCK_K steps (as matmul.py
computes the whole of K). The chunk length is a property of the weight (N, K), never of M, so every M
computes the same tree; two launch shapes compute it:

- `split`: one program per (output tile, chunk) writes its fp32 partial to a workspace; a second kernel adds
  the CHUNKS partials of an element in chunk order, adds the bias and rounds once. More programs at small M
  (decode: N / BLOCK_N tiles alone cannot cover the SMs when N is small and K large);
- `inline`: one program per output tile walks the chunks itself, one fresh accumulator per chunk, adding
  each into its running total in the same order. No workspace (prefill: the workspace would cost
  CHUNKS x M x N x 4 bytes of traffic).

Both add the same fp32 numbers in the same order, so they agree bit for bit wherever the per-chunk chains
agree (the same MMA instruction family over the same k steps: checked on the GPU, never assumed).
"""

from __future__ import annotations

import torch

from .backend import Kernel, require, tl, triton


def _chunked_kernel(a_ptr, b_ptr, c_ptr, ws_ptr, bias_ptr, M, N, K, K_CHUNK, CHUNKS,
                    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                    INTERPRETED: tl.constexpr):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    t = tl.program_id(0)
    tiles_per_group = GROUP_M * tiles_n
    first_m = (t // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (t % tiles_per_group) % group_rows
    pid_n = (t % tiles_per_group) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < M
    rows = offs_m.to(tl.int64)
    cols = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SPLIT:
        first_chunk = tl.program_id(1)
        last_chunk = first_chunk + 1
    else:
        first_chunk = 0
        last_chunk = CHUNKS
    for c in range(first_chunk, last_chunk):
        k0 = c * K_CHUNK
        a_ptrs = a_ptr + rows[:, None] * stride_am + (k0 + offs_k)[None, :] * stride_ak
        b_ptrs = b_ptr + (k0 + offs_k)[:, None] * stride_bk + cols[None, :] * stride_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # each chunk's chain starts from zero
        for kt in range(0, tl.cdiv(K_CHUNK, BLOCK_K)):
            if EVEN_K:  # every chunk a whole number of BLOCK_K steps (a property of K, not of M)
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_ok = offs_k < tl.minimum(K_CHUNK, K - k0) - kt * BLOCK_K
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            if INTERPRETED:
                acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
            else:
                acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        if SPLIT:
            w_ptrs = ws_ptr + (c * M + rows[:, None]) * N + offs_n[None, :]  # rows is int64
            tl.store(w_ptrs, acc, mask=row_ok[:, None] & (offs_n < N)[None, :])
        else:
            total += acc  # chunk order 0, 1, ...: what the reduction kernel adds too
    if not SPLIT:
        if HAS_BIAS:
            total += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
        c_ptrs = c_ptr + rows[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_n < N)[None, :])


def _reduce_kernel(ws_ptr, c_ptr, bias_ptr, M, N, CHUNKS, stride_cm, stride_cn,
                   HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(0, CHUNKS):  # the same order as the inline walk: ((0 + p0) + p1) + ...
        total += tl.load(ws_ptr + c * M * N + offs, mask=ok, other=0.0)
    col = offs % N
    if HAS_BIAS:
        total += tl.load(bias_ptr + col, mask=ok, other=0.0).to(tl.float32)
    row = offs // N
    tl.store(c_ptr + row * stride_cm + col * stride_cn, total.to(c_ptr.dtype.element_ty), mask=ok)


CHUNKED = Kernel(_chunked_kernel, do_not_specialize=["M"]) if triton is not None else None
REDUCE = Kernel(_reduce_kernel, do_not_specialize=["M"]) if triton is not None else None
REDUCE_BLOCK = 1024
_families: dict[str, str] = {}  # launch label -> the MMA instruction its PTX uses (as matmul.mma_families)


def mma_families() -> dict[str, str]:
    return dict(_families)


def _record_family(kernel, label: str) -> None:
    if label in _families:
        return
    try:
        ptx = kernel.asm["ptx"]
    except Exception:  # noqa: BLE001 - a Triton without .asm: unknown, not fatal
        _families[label] = "unknown"
        return
    _families[label] = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"


def chunk_length(k: int, chunks: int, block_k: int) -> int:
    """K per chunk: K / chunks rounded up to a multiple of BLOCK_K (the last chunk may be shorter)."""
    per = -(-k // chunks)
    return -(-per // block_k) * block_k


def chunked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, chunks: int,
                   block_m: int, block_n: int, block_k: int, split: bool, num_warps: int = 4, num_stages: int = 4,
                   group_m: int = 8) -> torch.Tensor:
    """F.linear with K cut into `chunks` fixed chunks (see the module docstring); `split` picks the launch."""
    require()
    lead = x.shape[:-1]
    a = x.reshape(-1, x.shape[-1])
    m, k = a.shape
    n = weight.shape[0]
    b = weight.t()
    interpreted = a.device.type != "cuda"
    out_dtype = torch.float32 if interpreted else a.dtype  # the interpreter truncates on its casts (matmul.py)
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    if m == 0 or n == 0:
        return out.to(a.dtype).view(*lead, n)
    k_chunk = chunk_length(k, chunks, block_k)
    n_chunks = -(-k // k_chunk)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    ws = torch.empty(n_chunks, m, n, device=a.device, dtype=torch.float32) if split else out
    common = dict(HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
                  INPUT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32", INTERPRETED=interpreted,
                  num_warps=num_warps, num_stages=num_stages)
    kernel = CHUNKED[(tiles, n_chunks if split else 1)](
        a, b, out, ws, bias if bias is not None else out, m, n, k, k_chunk, n_chunks,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), SPLIT=split,
        EVEN_K=k % k_chunk == 0, **common)
    if not interpreted:
        _record_family(kernel, f"{'split' if split else 'inline'} {block_m}x{block_n}x{block_k} w{num_warps} s{num_stages}")
    if split:
        REDUCE[(triton.cdiv(m * n, REDUCE_BLOCK),)](ws, out, bias if bias is not None else out, m, n, n_chunks,
                                                     out.stride(0), out.stride(1), HAS_BIAS=bias is not None,
                                                     BLOCK=REDUCE_BLOCK, num_warps=4)
    return out.to(a.dtype).view(*lead, n)

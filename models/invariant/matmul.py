"""A batch-invariant matmul: every output element is reduced over K in the same order whatever M is.

cuBLAS picks a kernel (tile shape, split-K, stream-K) per problem size, so row i of X @ W can round
differently when X has 1 row or 8192 (He et al., "Defeating Nondeterminism in LLM Inference", 2025).
Here the reduction order is fixed per (N, K, dtype) and the tile follows M (tiles.py says which):

- one program computes a whole output tile, no split-K: element (i, j) is sum_k A[i, k] B[k, j]
  accumulated in fp32 over K in BLOCK_K steps, always in the order k = 0, 1, ...; BLOCK_K is one value per
  (N, K, dtype), while BLOCK_M / BLOCK_N / warps / stages come from the M bucket and change only who
  computes an element and how far ahead its loads run;
- M (and the batch count of a bmm) is not specialised on (`do_not_specialize`): within a bucket the same
  machine code runs for every M, and M only decides how many tiles there are and which rows are masked;
- rows past M are masked to zero and never stored: a tensor-core MMA computes each output element from its
  own row and column only, so a row's neighbours in the tile cannot change it;
- epilogue in fp32: alpha (the attention scale) and the bias ride on it, then one rounding to the output.
"""

from __future__ import annotations

import torch

from .backend import Kernel, out_of_resources, program_slots, require, tl, triton
from .tiles import MatmulConfig, MatmulPlan, fixed_plan, plan_for


def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, batch,
                   stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn, stride_cb, stride_cm, stride_cn,
                   alpha,
                   HAS_BIAS: tl.constexpr, HAS_ALPHA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                   INTERPRETED: tl.constexpr):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_matrix = tiles_m * tiles_n
    tile = tl.program_id(0)
    z = tile // tiles_per_matrix
    t = tile % tiles_per_matrix
    # grouped order: GROUP_M row-tiles in a row share the weight columns they read (L2 reuse)
    tiles_per_group = GROUP_M * tiles_n
    first_m = (t // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (t % tiles_per_group) % group_rows
    pid_n = (t % tiles_per_group) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < M  # rows past M load zeros (no memory traffic: decode tiles are mostly such rows)
    rows = offs_m.to(tl.int64)
    cols = tl.where(offs_n < N, offs_n, 0).to(tl.int64)  # past N: re-read column 0, never stored
    z64 = z.to(tl.int64)
    a_ptrs = a_ptr + z64 * stride_ab + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + z64 * stride_bb + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(tl.cdiv(K, BLOCK_K)):  # the one reduction order: k = 0, BLOCK_K, 2 BLOCK_K, ...
        if INTERPRETED:
            # numpy stand-in for the MMA: its matmul multiplies bf16 bit patterns, and BLAS may round a row
            # differently by its place in the block; exact fp32 products summed over k, row by row, do neither.
            # Summed in k steps of 16, one after another, as the tensor cores do (the H200 sweep found every
            # BLOCK_K bitwise the same: the k steps are the order, BLOCK_K only how many run per iteration)
            for kk in tl.static_range(0, BLOCK_K, 16):
                k16 = kt * BLOCK_K + kk + tl.arange(0, 16)
                a16 = tl.load(a_ptr + z64 * stride_ab + rows[:, None] * stride_am + k16[None, :] * stride_ak,
                              mask=row_ok[:, None] & (k16 < K)[None, :], other=0.0)
                b16 = tl.load(b_ptr + z64 * stride_bb + k16[:, None] * stride_bk + cols[None, :] * stride_bn,
                              mask=(k16 < K)[:, None], other=0.0)
                acc += tl.sum(a16.to(tl.float32)[:, :, None] * b16.to(tl.float32)[None, :, :], axis=1)
        else:
            if EVEN_K:  # K a multiple of BLOCK_K (a property of the weight, not of M): no masks on k
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_ok = offs_k < K - kt * BLOCK_K
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
    if HAS_ALPHA:  # a constexpr, so alpha = 1 (every linear) is not even a multiply: no fma contraction either
        acc = acc * alpha
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    c_ptrs = c_ptr + z64 * stride_cb + rows[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_n < N)[None, :])


# M and the batch count vary with the number of tokens; nothing compiled may depend on them
MATMUL = Kernel(_matmul_kernel, do_not_specialize=["M", "batch"]) if triton is not None else None
_chosen: dict[tuple, MatmulConfig] = {}  # (device type, N, K, dtype, plan, bucket) -> the candidate that fit
_families: dict[str, str] = {}  # configuration label (+ bias) -> the MMA instruction its PTX uses


def _plan(n: int, k: int, dtype: torch.dtype, device: torch.device) -> MatmulPlan:
    sms = program_slots(device) if device.type == "cuda" else None
    return plan_for(n, k, dtype, sms) if sms else plan_for(n, k, dtype)


def config_for(n: int, k: int, dtype: torch.dtype, device: torch.device | str = "cuda", m: int | None = None,
               plan: MatmulPlan | None = None) -> MatmulConfig:
    """The configuration products of this (N, K, dtype) with `m` rows use (default: the largest-M bucket);
    after the first launch of that bucket, the candidate that fit."""
    device = torch.device(device)
    if plan is None:
        plan = plan_for(n, k, dtype) if device.type != "cuda" or not torch.cuda.is_available() else _plan(n, k, dtype, device)
    index = plan.bucket_index(m) if m is not None else len(plan.buckets) - 1
    return _chosen.get((device.type, n, k, dtype, plan, index), plan.buckets[index].configs[0])


def mma_families() -> dict[str, str]:
    """Compiled configuration -> 'wgmma' (Hopper MMA v3), 'mma.sync' (v2) or 'fma', read from its PTX:
    evidence that every M bucket of a plan uses one instruction family (tiles.py says why that matters)."""
    return dict(_families)


def _record_family(kernel, cfg: MatmulConfig, has_bias: bool) -> None:
    label = f"{cfg.label}{' +bias' if has_bias else ''}"
    if label in _families:
        return
    try:
        ptx = kernel.asm["ptx"]
    except Exception:  # noqa: BLE001 - older/newer Triton without .asm: the family is then unknown, not fatal
        _families[label] = "unknown"
        return
    _families[label] = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"


def _check(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> None:
    if a.dtype != b.dtype or a.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"invariant matmul: operands must share one of float16/bfloat16/float32, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"invariant matmul: operands on {a.device} and {b.device}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"invariant matmul: inner dimensions differ, {tuple(a.shape)} x {tuple(b.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != b.shape[-1]):
        raise ValueError(f"invariant matmul: bias of shape {tuple(bias.shape)} for {b.shape[-1]} output columns")


def _launch(a3: torch.Tensor, b3: torch.Tensor, c3: torch.Tensor, bias: torch.Tensor | None, alpha: float,
            batch_strides: tuple[int, int, int], plan: MatmulPlan | None) -> None:
    """a3 (batch, M, K), b3 (batch, K, N), c3 (batch, M, N) as strided views; `batch_strides` of a, b, c are
    passed apart (all 0 for a 2-D product: a (M, N) output's batch stride M*N would otherwise be a value
    Triton specialises on, i.e. a second compiled variant for some M)."""
    if a3.device.type != "cuda" and c3.dtype != torch.float32:
        # the interpreter rounds fp32 -> 16 bits by truncation; the GPU rounds to nearest even, as torch does
        staged = torch.empty(c3.shape, device=c3.device, dtype=torch.float32)
        _launch(a3, b3, staged, bias, alpha, batch_strides[:2] + (staged.stride(0) if batch_strides[2] else 0,), plan)
        c3.copy_(staged)
        return
    batch, m, k = a3.shape
    n = b3.shape[-1]
    plan = plan or _plan(n, k, a3.dtype, a3.device)
    index = plan.bucket_index(m)
    key = (a3.device.type, n, k, a3.dtype, plan, index)  # the plan itself: two plans may share a bucket index
    candidates = [_chosen[key]] if key in _chosen else list(plan.buckets[index].configs)
    for i, cfg in enumerate(candidates):
        grid = (batch * triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
        try:
            kernel = MATMUL[grid](
                a3, b3, c3, bias if bias is not None else c3, m, n, k, batch,
                batch_strides[0], a3.stride(1), a3.stride(2), batch_strides[1], b3.stride(1), b3.stride(2),
                batch_strides[2], c3.stride(1), c3.stride(2), float(alpha),
                HAS_BIAS=bias is not None, HAS_ALPHA=float(alpha) != 1.0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, EVEN_K=k % cfg.block_k == 0,
                INPUT_PRECISION="ieee" if a3.dtype == torch.float32 else "tf32",
                INTERPRETED=a3.device.type != "cuda", num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        except out_of_resources():
            if i == len(candidates) - 1:
                raise
            continue
        if key not in _chosen:
            _chosen[key] = cfg
            if a3.device.type == "cuda":
                _record_family(kernel, cfg, bias is not None)
        return


def invariant_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, *,
                     alpha: float = 1.0, plan: MatmulPlan | None = None) -> torch.Tensor:
    """alpha * (a @ b) + bias, batch-invariant. a: (..., M, K) or (batch, M, K); b: (K, N) or (batch, K, N).

    Any strides (a transposed weight is a view, not a copy). Leading dims of a 2-D-b product are flattened
    into M, so a (b, s, h) activation is one (b*s, h) product, as nn.Linear runs it. `plan` overrides the
    (N, K, dtype) plan of tiles.py (the fixed one-tile plan, or a test's)."""
    require()
    _check(a, b, bias)
    if b.dim() == 2:
        lead = a.shape[:-1]
        a2 = a.reshape(-1, a.shape[-1])
        out = torch.empty(a2.shape[0], b.shape[1], device=a.device, dtype=a.dtype)
        if a2.shape[0] and b.shape[1]:
            _launch(a2.unsqueeze(0), b.unsqueeze(0), out.unsqueeze(0), bias, alpha, (0, 0, 0), plan)
        return out.view(*lead, b.shape[1])
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"invariant matmul: batched operands must be (batch, M, K) x (batch, K, N), "
                         f"got {tuple(a.shape)} x {tuple(b.shape)}")
    out = torch.empty(a.shape[0], a.shape[1], b.shape[2], device=a.device, dtype=a.dtype)
    if out.numel():
        _launch(a, b, out, bias, alpha, (a.stride(0), b.stride(0), out.stride(0)), plan)
    return out


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     plan: MatmulPlan | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), batch-invariant: weight (N, K) is read through its transposed view."""
    return invariant_matmul(x, weight.t(), bias, plan=plan)


def invariant_bmm(a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """alpha * torch.bmm(a, b), batch-invariant in the batch count as well as in M."""
    return invariant_matmul(a, b, alpha=alpha)


def fixed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """invariant_linear on the one-tile plan (the kernel before M buckets): the last fall-back."""
    return invariant_linear(x, weight, bias, plan=fixed_plan(weight.shape[0], weight.shape[1], weight.dtype))


DESCRIPTION = ("Triton, one output tile per program, BLOCK_K fixed per (N, K, dtype) and the other tile sizes by "
               "M bucket (all wgmma-eligible), no split-K, fp32 accumulation over K in one order, bias and alpha in "
               "the fp32 epilogue, M never specialised on")

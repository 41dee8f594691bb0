"""The decode step's weight GEMMs at a handful of rows: y (M, N) = x (M, K) @ W (N, K)^T, W read once.

At batch 1-16 a decode GEMM is a weight stream: 2NK bytes for 2MNK flops, so what counts is how close the
kernel reads W to the copy bandwidth, and cuBLAS' kernels for these skinny shapes read it at ~3 TB/s of an
H200's 4.3 (evidence/h200/decode). Two Triton kernels, both reading W once, tile by tile, with the loads
software-pipelined (tl.range num_stages: cp.async, several tiles in flight per program):

- `gemv` (M = 1): each program owns BLOCK_N rows of W and keeps a (BLOCK_N, BLOCK_K) fp32 accumulator,
  reduced once after the loop; no tensor cores, no reduction inside the loop.
- `dot` (M <= BLOCK_M): the same walk over W with tl.dot on x padded to BLOCK_M rows (the padding costs
  tensor-core cycles, which a weight stream has to spare).

Both may split K over `split` programs per column block (for the GEMMs with few output columns, h x 5h and
h x 4h: without it 2048 / 16 = 128 programs leave an H200's 132 SMs short). The split is fixed and its
reduction deterministic: each program writes its partial, and the last to finish (a counter per column
block, reset by that program for the next launch) adds the partials in split order. One kernel, no atomics
on the output, the same sum at every replay.

Which kernel (or cuBLAS) runs for a shape is `gemm_plan`'s table, measured on an H200
(scripts/tune_decode_kernels.py); anything not in it stays on cuBLAS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decode_kernels import counters
from .invariant.backend import Kernel, triton, tl


@dataclass(frozen=True)
class GemmPlan:
    kind: str  # "gemv" (M = 1) or "dot"
    block_n: int
    block_k: int
    warps: int
    stages: int
    split: int = 1  # programs along K per column block
    block_m: int = 16  # dot only: rows of x per tile (x padded up to it)

    @property
    def name(self) -> str:
        return (f"{self.kind}_n{self.block_n}_k{self.block_k}_w{self.warps}_s{self.stages}_split{self.split}"
                + (f"_m{self.block_m}" if self.kind == "dot" else ""))


def _gemv_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, N, K, stride_w, k_per_split,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                 STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_w
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        k = k0 + cols
        if EVEN_K:  # K and the split a multiple of BLOCK_K: only the rows past N are masked
            x = tl.load(x_ptr + k).to(tl.float32)
            w = tl.load(w_rows + k[None, :], mask=rows_ok[:, None], other=0.0)
        else:
            x = tl.load(x_ptr + k, mask=k < k_hi, other=0.0).to(tl.float32)
            w = tl.load(w_rows + k[None, :], mask=rows_ok[:, None] & (k < k_hi)[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)  # (BLOCK_N,)
    if SPLIT == 1:
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows_ok)
    else:
        tl.store(part_ptr + pid_k * N + rows, y, mask=rows_ok)
        tl.debug_barrier()  # every thread's partial stored before the one atomic releases them
        done = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")  # release our partial, see the others'
        if done == SPLIT - 1:  # the last of this column block: the sum in split order, then reset the counter
            total = tl.zeros([BLOCK_N], tl.float32)
            for s in tl.static_range(SPLIT):
                total += tl.load(part_ptr + s * N + rows, mask=rows_ok, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + rows, total.to(y_ptr.dtype.element_ty), mask=rows_ok)
            tl.store(count_ptr + pid_n, 0)


def _skinny_gemm_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, M, N, K, stride_x, stride_w, stride_y, k_per_split,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
                EVEN_K: tl.constexpr, STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    x_rows = x_ptr + rm[:, None] * stride_x
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_w
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        k = k0 + rk
        if EVEN_K:
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None], other=0.0)  # (BLOCK_M, BLOCK_K)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None], other=0.0)  # (BLOCK_N, BLOCK_K)
        else:
            k_ok = k < k_hi
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    out_ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT == 1:
        tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_ok)
    else:
        parts = part_ptr + rm[:, None] * N + rn[None, :]  # (SPLIT, M, N) float32
        tl.store(parts + pid_k * M * N, acc, mask=out_ok)
        tl.debug_barrier()
        done = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if done == SPLIT - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for s in tl.static_range(SPLIT):
                total += tl.load(parts + s * M * N, mask=out_ok, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], total.to(y_ptr.dtype.element_ty), mask=out_ok)
            tl.store(count_ptr + pid_n, 0)


GEMV = Kernel(_gemv_kernel) if triton is not None else None
DOT = Kernel(_skinny_gemm_kernel, do_not_specialize=["M"]) if triton is not None else None
def fits(plan: GemmPlan, m: int, n: int, k: int) -> bool:
    """Whether the plan's kernel can run this shape (gemv: one row; dot: at most block_m rows; the split of
    K a whole number of tiles)."""
    if plan.kind == "gemv" and m != 1 or plan.kind == "dot" and m > plan.block_m:
        return False
    return plan.split == 1 or (k // plan.split) % plan.block_k == 0 and k % plan.split == 0


def triton_linear(x: torch.Tensor, weight: torch.Tensor, plan: GemmPlan, out: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T with the plan's kernel; x and weight with unit stride along K."""
    m, k = x.shape
    n = weight.shape[0]
    if not fits(plan, m, n, k):
        raise ValueError(f"GEMM plan {plan.name} does not fit M={m}, N={n}, K={k}")
    y = torch.empty(m, n, device=x.device, dtype=x.dtype) if out is None else out
    k_per_split = k // plan.split if plan.split > 1 else k
    even_k = k_per_split % plan.block_k == 0
    blocks = triton.cdiv(n, plan.block_n)
    part = torch.empty(plan.split, m, n, device=x.device, dtype=torch.float32) if plan.split > 1 else y
    counts = counters(x.device, blocks, "gemm") if plan.split > 1 else y
    grid = (blocks, plan.split)
    if plan.kind == "gemv":
        GEMV[grid](x, weight, y, part, counts, n, k, weight.stride(0), k_per_split, BLOCK_N=plan.block_n,
                   BLOCK_K=plan.block_k, SPLIT=plan.split, EVEN_K=even_k, STAGES=plan.stages, num_warps=plan.warps)
    else:
        DOT[grid](x, weight, y, part, counts, m, n, k, x.stride(0), weight.stride(0), y.stride(0), k_per_split,
                  BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, SPLIT=plan.split,
                  EVEN_K=even_k, STAGES=plan.stages, num_warps=plan.warps)
    return y


# (N, K) of a weight -> [(most rows M, plan)], smallest M first: where a Triton kernel beat cuBLAS on an H200
# (scripts/tune_decode_kernels.py); shapes and row counts not listed run on cuBLAS
GEMM_TABLE: dict[tuple[int, int], list[tuple[int, GemmPlan]]] = {}


def gemm_plan(m: int, n: int, k: int) -> GemmPlan | None:
    """The tuned kernel for x (m, k) @ W (n, k)^T, or None for cuBLAS."""
    for most_rows, plan in GEMM_TABLE.get((n, k), ()):
        if m <= most_rows and fits(plan, m, n, k):
            return plan
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, plan: GemmPlan | None) -> torch.Tensor:
    """The decode step's GEMM: cuBLAS (F.linear, no bias) where `plan` is None, else the plan's kernel."""
    if plan is None:
        return F.linear(x, weight)
    return triton_linear(x, weight, plan)

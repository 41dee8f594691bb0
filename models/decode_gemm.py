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

from .decode_kernels import (_residual_norms_row, counters, let_dependents_launch, norm_operands, pdl_launch,
                             prefetch_l2, tma_ready, wait_for_predecessor)
from .invariant.backend import Kernel, triton, tl


@dataclass(frozen=True)
class GemmPlan:
    kind: str  # "gemv" (M = 1), "dot" (x the product's left side) or "wdot" (the weight's tile on the left)
    block_n: int
    block_k: int
    warps: int
    stages: int
    split: int = 1  # programs along K per column block
    block_m: int = 16  # dot / wdot: rows of x per tile (x padded up to it)
    tma: bool = False  # dot / wdot: the weight's tiles loaded by TMA (a tensor descriptor) instead of cp.async

    @property
    def name(self) -> str:
        return (f"{self.kind}_n{self.block_n}_k{self.block_k}_w{self.warps}_s{self.stages}_split{self.split}"
                + (f"_m{self.block_m}" if self.kind != "gemv" else "") + ("_tma" if self.tma else ""))


def _gelu_of_biased(y, bias_ptr, rows, rows_ok, dtype: tl.constexpr, HAS_BIAS: tl.constexpr):
    """gelu(y + bias) rounded as cuBLAS' output + models/decode_kernels.bias_gelu would round it."""
    y = y.to(dtype).to(tl.float32)
    if HAS_BIAS:
        y = (y + tl.load(bias_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    return 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))


def _arrive_then_norm(count_ptr, arrivals, x_ptr, y_ptr, bias1_ptr, bias2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                      y1_ptr, y2_ptr, n_cols, eps, N_BIASES: tl.constexpr, TWO_NORMS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """The GEMV's residual + norms epilogue (one row): each program that wrote its part of y arrives; the
    last of `arrivals` runs residual_norms' row over all of y (read past L1), then resets the counter."""
    tl.debug_barrier()  # every thread's part of y stored before the one atomic releases it
    done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
    if done == arrivals - 1:
        _residual_norms_row(x_ptr, y_ptr, y_ptr, bias1_ptr, bias2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y1_ptr,
                            y2_ptr, 0, n_cols, eps, 1, N_BIASES, TWO_NORMS, BLOCK, True)
        tl.store(count_ptr, 0)


def _gemv_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, bias_ptr, N, K, stride_w, k_per_split,
                 res_ptr, res_a_ptr, res_c_ptr, res_bias1_ptr, res_bias2_ptr, norm_w1_ptr, norm_b1_ptr, norm_w2_ptr,
                 norm_b2_ptr, normed1_ptr, normed2_ptr, res_cols, eps, norm_count_ptr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                 STAGES: tl.constexpr, GELU: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
                 LINE: tl.constexpr, PREFETCH: tl.constexpr, LATE: tl.constexpr, NORMS: tl.constexpr = False,
                 N_BIASES: tl.constexpr = 0, TWO_NORMS: tl.constexpr = False,
                 BLOCK: tl.constexpr = 16):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    if PREFETCH > 0:  # (PDL) the weight does not depend on the kernel before: its first tiles come meanwhile
        prefetch_l2(w_ptr, rows, rows_ok, stride_w, k_lo, k_hi, BLOCK_K, LINE, PREFETCH)
    wait_for_predecessor(PDL, LATE)
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
    let_dependents_launch(PDL, LATE)
    y = tl.sum(acc, axis=1)  # (BLOCK_N,)
    if SPLIT == 1:
        if GELU:  # MLP-up's epilogue: bias and GELU, written where the output GEMM reads them
            y = _gelu_of_biased(y, bias_ptr, rows, rows_ok, y_ptr.dtype.element_ty, HAS_BIAS)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows_ok)
        if NORMS:
            _arrive_then_norm(norm_count_ptr, tl.num_programs(0), res_ptr, y_ptr, res_bias1_ptr, res_bias2_ptr,
                              norm_w1_ptr, norm_b1_ptr, norm_w2_ptr, norm_b2_ptr, normed1_ptr, normed2_ptr, res_cols,
                              eps, N_BIASES, TWO_NORMS, BLOCK)
    else:
        tl.store(part_ptr + pid_k * N + rows, y, mask=rows_ok)
        tl.debug_barrier()  # every thread's partial stored before the one atomic releases them
        done = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")  # release our partial, see the others'
        if done == SPLIT - 1:  # the last of this column block: the sum in split order, then reset the counter
            total = tl.zeros([BLOCK_N], tl.float32)
            for s in tl.static_range(SPLIT):
                total += tl.load(part_ptr + s * N + rows, mask=rows_ok, other=0.0, cache_modifier=".cg")
            if GELU:
                total = _gelu_of_biased(total, bias_ptr, rows, rows_ok, y_ptr.dtype.element_ty, HAS_BIAS)
            tl.store(y_ptr + rows, total.to(y_ptr.dtype.element_ty), mask=rows_ok)
            tl.store(count_ptr + pid_n, 0)
            if NORMS:  # the column blocks' last programs arrive
                _arrive_then_norm(norm_count_ptr, tl.num_programs(0), res_ptr, y_ptr, res_bias1_ptr,
                                  res_bias2_ptr, norm_w1_ptr, norm_b1_ptr, norm_w2_ptr, norm_b2_ptr, normed1_ptr,
                                  normed2_ptr, res_cols, eps, N_BIASES, TWO_NORMS, BLOCK)


def _skinny_gemm_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, M, N, K, stride_x, stride_w, stride_y, k_per_split,
                n_first, x_second, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SPLIT: tl.constexpr, EVEN_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr, LINE: tl.constexpr,
                PREFETCH: tl.constexpr, LATE: tl.constexpr, SWAP: tl.constexpr = False, TMA: tl.constexpr = False):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    if PREFETCH > 0:
        prefetch_l2(w_ptr, rn, n_ok, stride_w, k_lo, k_hi, BLOCK_K, LINE, PREFETCH)
    if TMA:  # the weight's tiles by the tensor memory accelerator: rows past N and columns past K read as zeros
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_w, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
    wait_for_predecessor(PDL, LATE)
    # two GEMMs in one launch over a weight of stacked rows: output columns from n_first on read their rows of
    # x `x_second` elements further on (QKV over norm1(x) and MLP-up over norm2(x); n_first = N: one GEMM)
    x_rows = x_ptr + tl.where(pid_n * BLOCK_N >= n_first, x_second, 0) + rm[:, None] * stride_x
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_w
    if SWAP:  # y^T = W x^T: the weight tile is the product's 64+ row side, read by wgmma from shared memory
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        k = k0 + rk
        if EVEN_K:
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None], other=0.0)  # (BLOCK_M, BLOCK_K)
        else:
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & (k < k_hi)[None, :], other=0.0)
        if TMA:  # a split's K range is whole tiles (fits), so a tile never reaches into the next split's
            w = w_desc.load([pid_n * BLOCK_N, k0])
        elif EVEN_K:
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None], other=0.0)  # (BLOCK_N, BLOCK_K)
        else:
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & (k < k_hi)[None, :], other=0.0)
        if SWAP:
            acc = tl.dot(w, tl.trans(x), acc)
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    let_dependents_launch(PDL, LATE)
    if SWAP:  # (BLOCK_N, BLOCK_M) offsets and masks: the same elements of y, transposed
        y_at = rm[None, :] * stride_y + rn[:, None]
        part_at = rm[None, :] * N + rn[:, None]
        out_ok = m_ok[None, :] & n_ok[:, None]
        total = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        y_at = rm[:, None] * stride_y + rn[None, :]
        part_at = rm[:, None] * N + rn[None, :]
        out_ok = m_ok[:, None] & n_ok[None, :]
        total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if SPLIT == 1:
        tl.store(y_ptr + y_at, acc.to(y_ptr.dtype.element_ty), mask=out_ok)
    else:
        parts = part_ptr + part_at  # (SPLIT, M, N) float32
        tl.store(parts + pid_k * M * N, acc, mask=out_ok)
        tl.debug_barrier()
        done = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if done == SPLIT - 1:
            for s in tl.static_range(SPLIT):
                total += tl.load(parts + s * M * N, mask=out_ok, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + y_at, total.to(y_ptr.dtype.element_ty), mask=out_ok)
            tl.store(count_ptr + pid_n, 0)


if triton is not None:  # called from the kernel: JIT functions (the interpreter runs their twins)
    _gelu_of_biased = triton.jit(_gelu_of_biased)
    _arrive_then_norm = triton.jit(_arrive_then_norm)
GEMV = Kernel(_gemv_kernel) if triton is not None else None
DOT = Kernel(_skinny_gemm_kernel, do_not_specialize=["M"]) if triton is not None else None
def fits(plan: GemmPlan, m: int, n: int, k: int) -> bool:
    """Whether the plan's kernel can run this shape (gemv: one row; dot: at most block_m rows; the split of
    K a whole number of tiles)."""
    if plan.kind == "gemv" and m != 1 or plan.kind != "gemv" and m > plan.block_m:
        return False
    if plan.kind == "wdot" and plan.block_n < 64:  # the weight's side of the product is wgmma's 64-row side
        return False
    return plan.split == 1 or (k // plan.split) % plan.block_k == 0 and k % plan.split == 0


def second_input_problem(plan: GemmPlan, x: torch.Tensor, x2: torch.Tensor, n_first: int) -> str | None:
    """Why triton_linear cannot read x2 for the columns from n_first on (None: it can)."""
    if (plan.kind == "gemv" or x2.shape != x.shape or x2.stride() != x.stride() or n_first % plan.block_n
            or (x2.data_ptr() - x.data_ptr()) % x.element_size()):
        return (f"a second input needs a dot / wdot plan, x's shape and strides, and {n_first} columns a whole "
                f"number of {plan.block_n}-column blocks")
    return None


def triton_linear(x: torch.Tensor, weight: torch.Tensor, plan: GemmPlan, out: torch.Tensor | None = None, *,
                  gelu: bool = False, bias: torch.Tensor | None = None, norm_args: tuple | None = None,
                  norm_constexprs: dict | None = None, second: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T with the plan's kernel; x and weight with unit stride along K, `out` (M, N)
    with unit stride along N (a view into a wider buffer is fine). gelu (gemv only): gelu(y + bias).
    norm_args / norm_constexprs (gemv only): residual_norms' operands (gemv_residual_norms).
    second = (x2, n_first) (dot / wdot): output columns from n_first on are x2 @ weight[n_first:]^T (x2 shaped
    and strided as x, anywhere in memory: the kernel reads it at its element offset from x; n_first a whole number
    of column blocks)."""
    m, k = x.shape
    n = weight.shape[0]
    if not fits(plan, m, n, k):
        raise ValueError(f"GEMM plan {plan.name} does not fit M={m}, N={n}, K={k}")
    if (gelu or norm_args) and plan.kind != "gemv":
        raise ValueError("the bias + GELU and the residual + norms epilogues are the gemv kernel's (M = 1)")
    n_first, x_second = n, 0
    if second is not None:
        x2, n_first = second
        problem = second_input_problem(plan, x, x2, n_first)
        if problem:
            raise ValueError(f"GEMM plan {plan.name}: {problem}")
        x_second = (x2.data_ptr() - x.data_ptr()) // x.element_size()
    y = torch.empty(m, n, device=x.device, dtype=x.dtype) if out is None else out
    k_per_split = k // plan.split if plan.split > 1 else k
    even_k = k_per_split % plan.block_k == 0
    blocks = triton.cdiv(n, plan.block_n)
    part = torch.empty(plan.split, m, n, device=x.device, dtype=torch.float32) if plan.split > 1 else y
    counts = counters(x.device, blocks, "gemm") if plan.split > 1 else y
    grid = (blocks, plan.split)
    pdl = pdl_launch(x)
    line = max(1, min(plan.block_k, 128 // weight.element_size()))  # elements per 128-byte line
    tiles = min(pdl.prefetch, triton.cdiv(k_per_split, plan.block_k))
    if plan.kind == "gemv":
        norms = {}
        if norm_args is not None:
            norm_count = counters(x.device, 1, "gemm-norm")
            norms = dict(NORMS=True, **{name: v for name, v in norm_constexprs.items() if name != "N_ADDS"})  # 1 add: y
        else:
            norm_args, norm_count = (y,) * 11 + (n, 0.0), y
        GEMV[grid](x, weight, y, part, counts, bias if bias is not None else y, n, k, weight.stride(0), k_per_split,
                   *norm_args, norm_count,
                   BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, SPLIT=plan.split, EVEN_K=even_k, STAGES=plan.stages,
                   GELU=gelu, HAS_BIAS=bias is not None, PDL=pdl.on, LINE=line, PREFETCH=tiles, LATE=pdl.late,
                   num_warps=plan.warps, **norms, **pdl.options)
    else:
        if plan.tma:
            tma_ready(weight)
        DOT[grid](x, weight, y, part, counts, m, n, k, x.stride(0), weight.stride(0), y.stride(0), k_per_split,
                  n_first, x_second, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, SPLIT=plan.split,
                  EVEN_K=even_k, STAGES=plan.stages, PDL=pdl.on, LINE=line, PREFETCH=tiles, LATE=pdl.late,
                  SWAP=plan.kind == "wdot", TMA=plan.tma, num_warps=plan.warps, **pdl.options)
    return y


def gemv_residual_norms(x: torch.Tensor, weight: torch.Tensor, plan: GemmPlan, residual: torch.Tensor,
                        norms: tuple, *, biases: tuple = ()) -> tuple[torch.Tensor, ...]:
    """residual_norms(residual, (x @ weight^T,), norms, biases=biases) in the GEMV's launch (one row): the
    program that writes the last part of the output runs the residual add and the norms, so a layer's step
    has one kernel (and one dependent launch) fewer. Returns the norms of the updated residual (1, h)."""
    if plan.kind != "gemv" or x.shape[0] != 1:
        raise ValueError(f"the residual + norms epilogue is the gemv kernel's, at one row (plan {plan.name}, "
                         f"{x.shape[0]} rows)")
    y = torch.empty(1, weight.shape[0], device=x.device, dtype=x.dtype)
    args, constexprs, outs = norm_operands(residual, (y,), norms, biases)
    triton_linear(x, weight, plan, y, norm_args=args, norm_constexprs=constexprs)
    return outs


# Where a Triton kernel beat cuBLAS on an H200 (scripts/tune_decode_kernels.py: CUDA graphs over distinct weight
# copies, L2 flushed): (N, K) of the weight -> [(fewest rows, most rows, plan)]. Row counts and shapes not listed run
# on cuBLAS. One row: the GEMVs of the tune run of 9fe0b4f. 2-16 rows: the weight's tile on the left (wdot), the
# plan that won at 2, 4, 8 and 16 rows in the tune of f29c5a5 (evidence/h200/decode-gemms-f29c5a5; microseconds at
# 16 rows, against cuBLAS): Pythia-1b / 1.4b (h = 2048) and Pythia-2.8b / gpt3-2.7b (h = 2560) share the shapes.
# 64 rows: only the logits, at 64 exactly (the one row count measured there).
_GEMV_QKV_UP = GemmPlan("gemv", 16, 256, 4, 4)  # 1b: 9.2 / 11.7 us vs 10.7 / 12.5; 2.8b: 13.2 / 17.1 vs 14.3 / 18.2
_GEMV_OUT = GemmPlan("gemv", 8, 512, 4, 4)  # [out | down]: 1b 14.5 us vs 16.7; 2.8b 20.4 vs 23.1
_GEMV_LOGITS = GemmPlan("gemv", 8, 512, 4, 3)  # 1b 51.7 us vs 57.4; 2.8b 63.1 vs 70.5
# QKV 9.7 vs 10.3-10.7 (h 2048), 13.5 vs 14.2 (2560); MLP-up 11.8-11.9 vs 12.4-12.5 (h 2048)
_WDOT_QKV_UP = GemmPlan("wdot", 64, 128, 4, 6)
_WDOT_UP_2560 = GemmPlan("wdot", 64, 128, 4, 4)  # 17.8 vs 18.0 (2-16 rows: 1-3% faster)
_WDOT_OUT_2048 = GemmPlan("wdot", 64, 128, 4, 4, split=4)  # 16.1-16.2 vs 17.2-17.3
_WDOT_OUT_2560 = GemmPlan("wdot", 64, 128, 4, 4, split=5)  # 22.5 vs 23.5
_WDOT_LOGITS = GemmPlan("wdot", 64, 128, 4, 4)  # 54.1-54.3 vs 59.2-59.5 (h 2048), 65.7 vs 71.4 (2560)
_DOT64_LOGITS_2048 = GemmPlan("dot", 64, 64, 4, 4, block_m=64)  # 58.0 vs 59.3
_WDOT64_LOGITS_2560 = GemmPlan("wdot", 128, 128, 8, 4, block_m=64)  # 70.2 vs 72.0
GEMM_TABLE: dict[tuple[int, int], list[tuple[int, int, GemmPlan]]] = {
    (6144, 2048): [(1, 1, _GEMV_QKV_UP), (2, 16, _WDOT_QKV_UP)],  # Pythia-1b, 1.4b
    (8192, 2048): [(1, 1, _GEMV_QKV_UP), (2, 16, _WDOT_QKV_UP)],
    (14336, 2048): [(2, 16, _WDOT_QKV_UP)],  # [W_qkv; W_up]: both in one launch (causal_lm._input_gemms)
    (2048, 10240): [(1, 1, _GEMV_OUT), (2, 16, _WDOT_OUT_2048)],
    (50304, 2048): [(1, 1, _GEMV_LOGITS), (2, 16, _WDOT_LOGITS), (64, 64, _DOT64_LOGITS_2048)],
    (7680, 2560): [(1, 1, _GEMV_QKV_UP), (2, 16, _WDOT_QKV_UP)],  # Pythia-2.8b, gpt3-2.7b
    (10240, 2560): [(1, 1, _GEMV_QKV_UP), (2, 16, _WDOT_UP_2560)],
    (17920, 2560): [(2, 16, _WDOT_QKV_UP)],
    (2560, 12800): [(1, 1, _GEMV_OUT), (2, 16, _WDOT_OUT_2560)],
    (50304, 2560): [(1, 1, _GEMV_LOGITS), (2, 16, _WDOT_LOGITS), (64, 64, _WDOT64_LOGITS_2560)],
}


def tuned_table(points: list[dict], margin: float = 0.02) -> dict[tuple[int, int], list[tuple[int, int, GemmPlan]]]:
    """A GEMM table from a tune run's points (scripts/tune_decode_kernels.py, tune.json): per (N, K, M), the
    fastest candidate whose output passed its check, where it beats cuBLAS's median at that M by more than
    `margin`; the entry holds that M alone (other row counts keep GEMM_TABLE's plan)."""
    table: dict[tuple[int, int], list[tuple[int, int, GemmPlan]]] = {}
    by_shape: dict[tuple[int, int, int], list[dict]] = {}
    for p in points:
        if p.get("kind") == "gemm" and p.get("status") == "ok" and p.get("passed"):
            by_shape.setdefault((p["n"], p["k"], p["m"]), []).append(p)
    for (n, k, m), group in sorted(by_shape.items()):
        cublas = next((p["us"] for p in group if p["candidate"] == "cublas"), None)
        best = min((p for p in group if p.get("plan")), key=lambda p: p["us"], default=None)
        if cublas is not None and best is not None and best["us"] < cublas * (1 - margin):
            table.setdefault((n, k), []).append((m, m, GemmPlan(**best["plan"])))
    return table


def merged_table(tuned: dict) -> dict[tuple[int, int], list[tuple[int, int, GemmPlan]]]:
    """GEMM_TABLE with the tuned entries first (gemm_plan takes the first entry whose rows hold M)."""
    merged = {shape: list(entries) for shape, entries in GEMM_TABLE.items()}
    for shape, entries in tuned.items():
        merged[shape] = list(entries) + merged.get(shape, [])
    return merged


def gemm_plan(m: int, n: int, k: int) -> GemmPlan | None:
    """The tuned kernel for x (m, k) @ W (n, k)^T, or None for cuBLAS."""
    for fewest, most, plan in GEMM_TABLE.get((n, k), ()):
        if fewest <= m <= most and fits(plan, m, n, k):
            return plan
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, plan: GemmPlan | None) -> torch.Tensor:
    """The decode step's GEMM: cuBLAS (F.linear, no bias) where `plan` is None, else the plan's kernel."""
    if plan is None:
        return F.linear(x, weight)
    return triton_linear(x, weight, plan)

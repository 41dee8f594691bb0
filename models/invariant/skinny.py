"""A batch-invariant GEMM for decode's few rows: the decode engine's weight-streaming Triton kernel
(models/decode_gemm.py, `dot`) with one plan per (N, K) for every M.

x is cut into chunks of SKINNY_ROWS rows; each chunk runs the same kernel with the same tile, the same split
of K and the same ordered reduction of the splits, whatever M is (the rows past M are masked, never summed
into a real row). So a row's sum has one order at every batch size: invariant by construction, and then
proven on the GPU by the bitwise probe like every other candidate (profiler/invariance/choice.py). At 1-64
rows it reads W once per chunk at close to the copy bandwidth, where cuBLAS and the M-bucketed Triton kernel
(tiles for compute-bound M) read it more slowly; past 64 rows it re-reads W per chunk and loses.

No bias epilogue: the decode GEMMs run without their biases (models/causal_lm.py); with one it refuses, so
the choice records it as a failed candidate for biased shapes.
"""

from __future__ import annotations

import torch

SKINNY_ROWS = 64
BLOCK_K = 128
STAGES = 4
WARPS = 4


def skinny_plan(n: int, k: int, sms: int):
    """The one tile of an (N, K) weight: 32 output columns a program (64 from N = 16384: fewer, longer
    programs for the logits), K split so that the programs cover every SM about twice (two fit an SM at
    (64 + 32) x 128 x 2 bytes x 4 stages of shared memory), the split a whole number of BLOCK_K tiles."""
    from ..decode_gemm import GemmPlan

    block_n = 64 if n >= 16384 else 32
    blocks = -(-n // block_n)
    split = 1
    while blocks * split * 2 <= 2 * sms and k % (split * 2 * BLOCK_K) == 0:
        split *= 2
    return GemmPlan("dot", block_n, BLOCK_K, WARPS, STAGES, split=split, block_m=SKINNY_ROWS)


def _sms(device: torch.device) -> int:
    from .backend import program_slots

    return program_slots(device)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight) on the skinny plan of the weight's shape, SKINNY_ROWS rows a launch."""
    from ..decode_gemm import triton_linear

    if bias is not None:
        raise ValueError("the skinny decode GEMM has no bias epilogue")
    k = x.shape[-1]
    n = weight.shape[0]
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    plan = skinny_plan(n, k, _sms(x.device))
    out = torch.empty(rows.shape[0], n, device=x.device, dtype=x.dtype)
    for start in range(0, rows.shape[0], SKINNY_ROWS):
        triton_linear(rows[start:start + SKINNY_ROWS], weight, plan, out[start:start + SKINNY_ROWS])
    return out.view(*x.shape[:-1], n)

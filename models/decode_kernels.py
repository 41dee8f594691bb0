"""The fused ops of one decode step: residual add + layer norms, bias + GELU, and attention over a KV cache.

A decode step at batch 1 is ~10 kernels per layer, and in a CUDA graph every kernel that is not a GEMV costs
~2-4 us of launch latency and tail for almost no bytes. So the GEMMs run without their biases (plain cuBLAS
`mm`: at batch 1 PyTorch's addmm cannot use cuBLASLt's bias epilogue, since its eligibility test wants more
than one row, and instead copies the bias into the output first, one more kernel per Linear) and the biases
ride on the ops that read the GEMMs' outputs:

- `residual_norms`: the residual add(s) of a layer, with the out-projection's and MLP-down's biases, and the
  norm(s) that read the result, one pass per row. With GPT-NeoX's parallel residual the next layer's two
  norms read the same x, so one kernel does x += (mlp + b) + (attn + b), norm1(x), norm2(x).
- `bias_gelu`: the MLP-up's bias and the exact (erf) GELU, in place or into the output GEMM's input.
- `decode_attention`: the QKV bias, rotary of the new token's q and k, the write of its k and v into the
  cache at a position held in a device tensor, and attention over the cache positions 0..pos, split over
  the cache (flash-decoding) so that batch 1 with 8 heads still spreads the cache read over every SM.
  Splits past pos return at once, so a step reads the filled part of the cache, not the preallocated
  capacity; shapes (and the grid) stay fixed, so the step can be captured in a CUDA graph. The last split
  of a (row, head) to finish combines the splits, in the same launch. Optionally (one-stream step) extra
  programs of the same grid write the MLP's bias + GELU: `decode_attention_and_gelu`.

On CUDA these are Triton kernels; elsewhere the same ops run as plain torch (the CPU path, and the
independent reference the GPU kernels are checked against). `backend="triton"` on a CPU tensor runs the
kernels in Triton's interpreter (models/invariant/backend.py), which is how the CPU tests check their logic.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .invariant.backend import Kernel, program_slots, triton, tl

try:  # grid dependency control (Hopper on): Triton 3.3 and later
    from triton.language.extra import cuda as tl_cuda
except ImportError:  # pragma: no cover - no Triton, or one without it
    tl_cuda = None

BACKENDS = ("auto", "triton", "torch")
MAX_SPLITS = 64  # the combine kernel holds all splits of a head in one tile
# (b, head, split) programs per SM the splits aim at: of 2, 4, 8, 16, 2 was fastest at nearly every row on an
# H200 (fewer splits: less to combine; b=16, p=2048 at 2 is ~one wave of 3 programs an SM)
PROGRAMS_PER_SM = 2
MIN_SPLITS = 2  # b=64 with 8 heads: one split gives 1.3 waves (323 us a layer), two 273
# and at most this many cache positions a split: at b=16, p=2048 (2080 positions) pythia-2.8b's 32 heads got 2
# splits from the SM rule (1040 keys each, 5.546 ms a step, attention 2.9 TB/s) where 3 (694 keys) give 5.045
# ms (3.4 TB/s); pythia-1b's 8 heads get 3 from the SM rule, and 2, 4, 6 were slower (H200,
# evidence/h200/decode-layout-e089ec5)
MAX_SPLIT_KEYS = 768


def use_triton(t: torch.Tensor, backend: str) -> bool:
    """auto: Triton on CUDA, torch elsewhere; under torch.compile always torch, so inductor sees (and fuses)
    the plain ops instead of an opaque kernel."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if torch.compiler.is_compiling() or backend == "torch" or triton is None:
        return False
    return backend == "triton" or t.is_cuda


# ---- programmatic dependent launch ---------------------------------------------------------------
# In a decode step every kernel waits for the one before it, and between two of them the GPU drains: the
# last programs of a GEMV finish while most SMs sit idle, then the next kernel ramps up from nothing. With
# programmatic dependent launch (PDL, sm_90+) a kernel is launched while its predecessor still runs: its
# programs start, do what does not depend on the predecessor (the GEMVs prefetch their first weight tiles
# into L2: weights never change during decoding), then wait (griddepcontrol.wait: the predecessor complete,
# its writes visible) before touching anything the step writes. Each kernel lets its successor launch once
# its own wait is over, so at most one kernel runs ahead. Every program of a kernel waits before its first
# read of step state, so a kernel completes only after its predecessor did, and by induction after every
# kernel before it: the order of writes is that of the unfused step. A CUDA graph keeps the dependency as a
# programmatic edge. Kernels launched without it (cuBLAS, torch's) still wait for completion as usual.
# Measured on an H200 in 8 variants (evidence/h200/decode-pdl-f495256): not faster, so off by default.
PREFETCH_TILES = 4  # weight tiles per GEMV program prefetched into L2 before the wait


@dataclass(frozen=True)
class PdlLaunch:
    """How one decode kernel is launched: `on` its PDL constexpr, `late` (on only) whether a looping kernel
    lets its successor launch after its loop, `prefetch` (on only) the weight tiles a GEMV program prefetches
    before its wait, `options` the extra launch options."""

    on: bool = False
    late: bool = False
    prefetch: int = 0

    @property
    def options(self) -> dict:
        return {"launch_pdl": True} if self.on else {}


_PDL = contextvars.ContextVar("decode_pdl", default=PdlLaunch())


def pdl_problem() -> str | None:
    """None when this Triton can launch the decode kernels with programmatic dependent launch, else why not."""
    if triton is None or tl_cuda is None or not hasattr(tl_cuda, "gdc_wait"):
        return "this Triton has no grid dependency control (triton.language.extra.cuda.gdc_wait; Triton >= 3.3)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability()[0] < 9:
        return "programmatic dependent launch needs sm_90 (Hopper) or later"
    return None


@contextmanager
def dependent_launches(on: bool = True, *, prefetch_tiles: int = PREFETCH_TILES, late: bool = False):
    """Within: the decode kernels launched on CUDA tensors use programmatic dependent launch, the GEMVs
    prefetching `prefetch_tiles` weight tiles per program before their wait (0: none). `late`: the kernels
    with a main loop (GEMVs, attention) let their successor launch after it, not right after their wait."""
    token = _PDL.set(PdlLaunch(on, late=on and late, prefetch=prefetch_tiles if on else 0))
    try:
        yield
    finally:
        _PDL.reset(token)


def pdl_launch(t: torch.Tensor) -> PdlLaunch:
    """The launch of a decode kernel on t's device: the current dependent_launches on CUDA, plain elsewhere
    (the interpreter has no grid dependency control)."""
    return _PDL.get() if t.is_cuda else PdlLaunch()


def wait_for_predecessor(PDL: tl.constexpr, LATE: tl.constexpr = False):
    """The first thing a decode kernel does with step state: wait for the kernel before it (PDL), then (unless
    LATE: let_dependents_launch comes later) let the next one launch. Without PDL nothing."""
    if PDL:
        tl_cuda.gdc_wait()
        if not LATE:
            tl_cuda.gdc_launch_dependents()


def let_dependents_launch(PDL: tl.constexpr, LATE: tl.constexpr):
    """After a kernel's main loop (LATE): its successor may launch now."""
    if PDL and LATE:
        tl_cuda.gdc_launch_dependents()


def prefetch_l2(w_ptr, rows, rows_ok, stride_w, k_lo, k_hi, BLOCK_K: tl.constexpr, LINE: tl.constexpr,
                TILES: tl.constexpr):
    """Ask L2 for the first TILES (rows, BLOCK_K) tiles of a weight (N, K) from column k_lo on: one prefetch
    per 128-byte line (LINE elements). Rows past N go to row 0 and columns past k_hi to k_hi - 1, so a
    prefetch never points outside the tensor."""
    lines = tl.arange(0, BLOCK_K // LINE) * LINE
    row_starts = w_ptr + tl.where(rows_ok, rows, 0)[:, None].to(tl.int64) * stride_w
    for t in tl.static_range(TILES):
        k = tl.minimum(k_lo + t * BLOCK_K + lines, k_hi - 1)
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [row_starts + k[None, :]],
                                  dtype=tl.int32, is_pure=False, pack=1)


if triton is not None:  # called from kernels: JIT functions (the interpreter runs their twins)
    wait_for_predecessor = triton.jit(wait_for_predecessor)
    let_dependents_launch = triton.jit(let_dependents_launch)
    prefetch_l2 = triton.jit(prefetch_l2)


_COUNTERS: dict = {}
_RETIRED: list = []


def _tma_scratch(size: int, alignment: int, stream):
    """Global memory for the tensor descriptors a kernel builds on the device (Triton asks per launch; under
    CUDA graph capture the bytes come from the graph's pool and live as long as the graph)."""
    return torch.empty(size, device="cuda", dtype=torch.int8)


def tma_ready(*tensors: torch.Tensor) -> None:
    """A TMA descriptor needs a 16-byte aligned base and row stride and unit stride along a row; Triton needs
    an allocator for the descriptors a kernel builds."""
    for t in tensors:
        if t.data_ptr() % 16 or (t.stride(-2) * t.element_size()) % 16 or t.stride(-1) != 1:
            raise ValueError("a TMA plan needs operands with 16-byte aligned rows")
    if tensors and tensors[0].is_cuda:
        triton.set_allocator(_tma_scratch)


def counters(device: torch.device, n: int, purpose: str) -> torch.Tensor:
    """n int32 zeros that outlive any graph: the arrival counters of kernels whose last program reduces what
    the others wrote (each launch leaves them at zero again). Allocated on first use, outside a capture."""
    have = _COUNTERS.get((device, purpose))
    if have is None or have.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{purpose} counters must be allocated before a graph capture (run the step once)")
        if have is not None:
            _RETIRED.append(have)  # a captured graph may still point at it: never freed
        have = _COUNTERS[(device, purpose)] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return have


# ---- residual add + layer norms -----------------------------------------------------------------
def _residual_norms_row(x_ptr, a_ptr, c_ptr, bias1_ptr, bias2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y1_ptr, y2_ptr,
                        row, n_cols, eps, N_ADDS: tl.constexpr, N_BIASES: tl.constexpr, TWO_NORMS: tl.constexpr,
                        BLOCK: tl.constexpr, ADDS_FROM_L2: tl.constexpr):
    """One row of residual_norms. ADDS_FROM_L2: the adds were just written by other programs of the same
    kernel (the GEMV's epilogue), so they are read past L1."""
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    # every load first (the norms' weights too): one round trip to memory, not one before and one after the
    # reductions (a reduction's barrier keeps the loads after it from being issued early)
    x = tl.load(x_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    w1 = tl.load(w1_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    b1 = tl.load(b1_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if TWO_NORMS:
        w2 = tl.load(w2_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        b2 = tl.load(b2_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if N_ADDS > 0:
        if ADDS_FROM_L2:
            x += tl.load(a_ptr + row + cols, mask=ok, other=0.0, cache_modifier=".cg").to(tl.float32)
        else:
            x += tl.load(a_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
        if N_ADDS > 1:
            x += tl.load(c_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
        if N_BIASES > 0:
            x += tl.load(bias1_ptr + cols, mask=ok, other=0.0).to(tl.float32)
            if N_BIASES > 1:
                x += tl.load(bias2_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        rounded = x.to(x_ptr.dtype.element_ty)  # the residual stream is stored in the model's dtype ...
        tl.store(x_ptr + row + cols, rounded, mask=ok)
        x = rounded.to(tl.float32)  # ... and the norms read what was stored, as they would unfused
    mean = tl.sum(x, axis=0) / n_cols
    centred = tl.where(ok, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / n_cols + eps)
    normed = centred * rstd
    tl.store(y1_ptr + row + cols, (normed * w1 + b1).to(y1_ptr.dtype.element_ty), mask=ok)
    if TWO_NORMS:
        tl.store(y2_ptr + row + cols, (normed * w2 + b2).to(y2_ptr.dtype.element_ty), mask=ok)


def _residual_norms_kernel(x_ptr, a_ptr, c_ptr, bias1_ptr, bias2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y1_ptr,
                           y2_ptr, n_cols, eps, N_ADDS: tl.constexpr, N_BIASES: tl.constexpr,
                           TWO_NORMS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_predecessor(PDL)
    row = tl.program_id(0).to(tl.int64) * n_cols  # one row of the residual stream per program
    _residual_norms_row(x_ptr, a_ptr, c_ptr, bias1_ptr, bias2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y1_ptr, y2_ptr,
                        row, n_cols, eps, N_ADDS, N_BIASES, TWO_NORMS, BLOCK, False)


def _bias_gelu_kernel(x_ptr, bias_ptr, out_ptr, n_cols, out_stride, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                      PDL: tl.constexpr):
    wait_for_predecessor(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    x = x.to(x_ptr.dtype.element_ty).to(tl.float32)  # the GEMM with its bias would round here
    tl.store(out_ptr + row * out_stride + cols,
             (0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))).to(out_ptr.dtype.element_ty), mask=ok)


if triton is not None:  # called from kernels (also the GEMV's epilogue: models/decode_gemm.py)
    _residual_norms_row = triton.jit(_residual_norms_row)
RESIDUAL_NORMS = Kernel(_residual_norms_kernel) if triton is not None else None
BIAS_GELU = Kernel(_bias_gelu_kernel) if triton is not None else None
GELU_BLOCK = 1024


def _biased(t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return t if bias is None else t + bias


def _checked_biases(adds, norms, biases) -> tuple[torch.Tensor, ...]:
    biases = tuple(b for b in biases if b is not None)
    if not 1 <= len(norms) <= 2 or len(adds) > 2 or len(biases) > 2 or (biases and not adds):
        raise ValueError(f"residual_norms takes 0-2 adds, as many biases and 1-2 norms, got {len(adds)}, "
                         f"{len(biases)} and {len(norms)}")
    return biases


def norm_operands(x: torch.Tensor, adds: tuple[torch.Tensor, ...], norms: tuple[nn.LayerNorm, ...],
                  biases: tuple[torch.Tensor | None, ...] = ()) -> tuple[tuple, dict, tuple[torch.Tensor, ...]]:
    """What a kernel running _residual_norms_row takes: its tensor and scalar arguments (from x_ptr to eps),
    its constexprs, and the norms' outputs it writes (allocated here)."""
    biases = _checked_biases(adds, norms, biases)
    h = x.shape[1]
    outs = tuple(torch.empty_like(x) for _ in norms)
    a = adds[0] if adds else x
    c = adds[1] if len(adds) > 1 else a
    bias1 = biases[0] if biases else x
    bias2 = biases[1] if len(biases) > 1 else bias1
    second = norms[1] if len(norms) > 1 else norms[0]
    args = (x, a, c, bias1, bias2, norms[0].weight, norms[0].bias, second.weight, second.bias, outs[0], outs[-1],
            h, norms[0].eps)
    constexprs = dict(N_ADDS=len(adds), N_BIASES=len(biases), TWO_NORMS=len(norms) == 2,
                      BLOCK=triton.next_power_of_2(h))
    return args, constexprs, outs


def residual_norms(x: torch.Tensor, adds: tuple[torch.Tensor, ...], norms: tuple[nn.LayerNorm, ...], *,
                   biases: tuple[torch.Tensor | None, ...] = (), backend: str = "auto") -> tuple[torch.Tensor, ...]:
    """x (rows, h), the residual stream, becomes sum(adds) + sum(biases) + x in place; returns each norm of
    the result. `adds`: the GEMM outputs, in transformers' order of summation ((mlp, attn) for the parallel
    residual: mlp + attn + x); `biases` (h,): the biases those GEMMs left out. The norms share one epsilon."""
    if not use_triton(x, backend):
        biases = _checked_biases(adds, norms, biases)
        if adds:
            total = adds[0]
            for term in adds[1:] + biases:
                total = total + term
            x.copy_(total + x)
        return tuple(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norms[0].eps) for norm in norms)
    args, constexprs, outs = norm_operands(x, adds, norms, biases)
    pdl = pdl_launch(x)
    RESIDUAL_NORMS[(x.shape[0],)](*args, **constexprs, PDL=pdl.on, num_warps=8 if constexprs["BLOCK"] >= 4096 else 4,
                                  **pdl.options)
    return outs


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, *, out: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """gelu(x + bias), exact (erf) GELU as GPT-NeoX's hidden_act 'gelu', of x (rows, 4h) written into `out`
    (rows, 4h; unit stride along the row, e.g. the right part of the output GEMM's input), else into x."""
    out = x if out is None else out
    if not use_triton(x, backend):
        return out.copy_(F.gelu(_biased(x, bias)))
    rows, cols = x.shape
    pdl = pdl_launch(x)
    BIAS_GELU[(rows, triton.cdiv(cols, GELU_BLOCK))](x, bias if bias is not None else x, out, cols, out.stride(0),
                                                     HAS_BIAS=bias is not None, BLOCK=GELU_BLOCK, PDL=pdl.on,
                                                     num_warps=4, **pdl.options)
    return out


# ---- attention of one new token over the KV cache -----------------------------------------------
@dataclass(frozen=True)
class AttentionTile:
    """The attention kernel's compile-time shape: keys per loop iteration, warps, and how many iterations'
    loads the software pipeline keeps in flight (tl.range num_stages: cp.async into shared memory)."""

    block_n: int
    warps: int
    stages: int
    mma: bool = False  # q.k and p.v on the tensor cores (the query repeated over tl.dot's 16 rows)
    tma: bool = False  # (mma only) the cache tiles by the tensor memory accelerator: no per-element masks

    @property
    def name(self) -> str:
        loop = "mma" if self.mma else "lane"
        return f"{loop}_n{self.block_n}_w{self.warps}_s{self.stages}" + ("_tma" if self.tma else "")


# By BLOCK_D (the head dim rounded up to a power of two). The lane loop's table, measured on an H200 (9fe0b4f:
# 36 tiles x splits per head dim, rows b=1..64, prompt 128..4096): 16 keys x 4 warps x 3 stages was the fastest
# lane tile or within 5% everywhere; one stage 1.5-2.5x slower, 8 warps 5-40% slower. 16-64: not measured
# (Pythia-160m/410m); the invariant mode's lane loop (--invariant-loop lane) uses this table.
LANE_TILES = {16: AttentionTile(32, 4, 3), 32: AttentionTile(32, 4, 3), 64: AttentionTile(32, 4, 3),
              128: AttentionTile(16, 4, 3), 256: AttentionTile(16, 4, 3)}


@dataclass(frozen=True)
class TileRule:
    """`tile` where the attention has at most `most_rows_x_heads` (batch row, head) pairs and a cache of at most
    `most_capacity` positions (None: any). A head dim's rules are read in order; the first that holds is used."""
    tile: AttentionTile
    most_rows_x_heads: int | None = None
    most_capacity: int | None = None

    def holds(self, rows_x_heads: int, capacity: int) -> bool:
        return ((self.most_rows_x_heads is None or rows_x_heads <= self.most_rows_x_heads)
                and (self.most_capacity is None or capacity <= self.most_capacity))


# The tensor-core loop's tiles by BLOCK_D, measured on an H200 (evidence/h200/decode-tiles-ccd6089/tune: lane and
# mma tiles at b = 1, 16, 64 x p = 128, 2048, CUDA graphs over distinct caches, L2 flushed), us per layer:
# - d=256 (pythia-1b, 8 heads): 32 keys x 3 stages at batch 1 (b1 p2048 12.5 against 13.0 with 2 stages);
#   with two stages a program holds 64 KB of shared memory instead of 96, so 3 fit an SM instead of 2, which
#   wins once the batch brings programs enough (b16 p2048 72.8 against 78.7, b16 p128 12.2 / 14.3, b64 p128
#   34.1 / 36.1; b64 p2048 260.5 / 258.5, the one row it loses, by 0.8%).
# - d=80 (pythia-2.8b, gpt3-2.7b: 32 heads): 64 keys x 3 stages at batch 1 (b1 p2048 15.0) and at batch 64 with
#   a long cache (b64 p2048 360.7); 32 keys x 3 stages where the cache is short, as a split then holds one or
#   two 64-key tiles (b64 p128 58.7 against 71.7, b16 p128 19.8 / 21.9); 64 keys x 2 stages in between (b16
#   p2048 102.5 / 104.1). Each rule's pick is the sweep's fastest tile for its rows or within 2% of it (d=80 b16
# p128: 32x4x2 at 19.4 against 19.8). Between the measured rows the bounds sit halfway (log scale): pairs 8 | 32 |
# 128 at d=256 and 32 | 128 | 512 | 1024 | 2048 at d=80; cache capacities 160 | 576 | 2080 (prompt + 32 new tokens).
ATTENTION_TILE_RULES: dict[int, tuple[TileRule, ...]] = {
    256: (TileRule(AttentionTile(32, 4, 3, mma=True), most_rows_x_heads=32),
          TileRule(AttentionTile(32, 4, 2, mma=True))),
    128: (TileRule(AttentionTile(64, 4, 3, mma=True), most_rows_x_heads=128),
          TileRule(AttentionTile(32, 4, 3, mma=True), most_capacity=576),
          TileRule(AttentionTile(64, 4, 2, mma=True), most_rows_x_heads=1024),
          TileRule(AttentionTile(64, 4, 3, mma=True))),
}
# batch 1's tile per BLOCK_D (the lane table where no rule is measured)
ATTENTION_TILES = {**LANE_TILES, **{d: rules[0].tile for d, rules in ATTENTION_TILE_RULES.items()}}


@dataclass(frozen=True)
class Splits:
    """How the cache of one (batch row, head) is cut for the attention kernel: fixed per captured graph."""

    count: int  # programs per (batch row, head)
    keys: int  # cache positions each one covers (a multiple of block_n)
    block_n: int  # keys per loop iteration
    block_d: int  # head dim rounded up to a power of two
    warps: int  # per program
    stages: int = 3  # loop iterations whose loads are in flight at once
    mma: bool = False  # the loop on the tensor cores (AttentionTile.mma)
    tma: bool = False  # its cache tiles loaded by TMA (AttentionTile.tma)

    @property
    def direct(self) -> bool:  # one split: the kernel normalises and writes the output itself
        return self.count == 1

    @property
    def tile(self) -> AttentionTile:
        return AttentionTile(self.block_n, self.warps, self.stages, self.mma, self.tma)

    @classmethod
    def of(cls, tile: AttentionTile, head_dim: int, capacity: int, tiles_per_split: int) -> "Splits":
        """The cut of a `capacity`-position cache into stretches of `tiles_per_split` tiles of `tile`."""
        blocks = -(-capacity // tile.block_n)
        return cls(-(-blocks // tiles_per_split), tiles_per_split * tile.block_n, tile.block_n, block_d_of(head_dim),
                   tile.warps, tile.stages, tile.mma, tile.tma)


def block_d_of(head_dim: int) -> int:
    """The head dim rounded up to a power of two, at least 16: the kernel's BLOCK_D, the tile tables' key."""
    return 1 << max(4, math.ceil(math.log2(head_dim)))


def parse_tile(text: str) -> AttentionTile:
    """KEYSxWARPSxSTAGES, with 'xmma' for the tensor-core loop and 'xmmaxtma' for it with TMA loads: '16x4x3',
    '32x4x3xmma', '64x4x2xmmaxtma'."""
    parts = text.strip().lower().split("x")
    tma = parts[-2:] == ["mma", "tma"]
    mma = tma or parts[-1] == "mma"
    numbers = parts[:-2] if tma else parts[:-1] if mma else parts
    if len(numbers) != 3 or not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise ValueError(f"attention tile {text!r}: expected KEYSxWARPSxSTAGES[xmma[xtma]], e.g. 16x4x3, 32x4x3xmma "
                         "or 64x4x2xmmaxtma")
    block_n, warps, stages = (int(n) for n in numbers)
    if block_n & (block_n - 1) or warps & (warps - 1):
        raise ValueError(f"attention tile {text!r}: keys and warps must be powers of two")
    if mma and block_n < 16:
        raise ValueError(f"attention tile {text!r}: the tensor-core loop needs at least 16 keys per tile")
    return AttentionTile(block_n, warps, stages, mma, tma)


def attention_tile(head_dim: int, table: dict[int, AttentionTile] | None = None, *, rows_x_heads: int = 1,
                   capacity: int = 1) -> AttentionTile:
    """The tile for this head dim from `table` if given, else the first of ATTENTION_TILE_RULES that holds for
    (rows_x_heads, capacity), else the lane table."""
    block_d = block_d_of(head_dim)
    if table is not None:
        return table[block_d]
    for rule in ATTENTION_TILE_RULES.get(block_d, ()):
        if rule.holds(rows_x_heads, capacity):
            return rule.tile
    return LANE_TILES[block_d]


def attention_splits(rows_x_heads: int, capacity: int, head_dim: int, device: torch.device,
                     count: int | None = None, *, tile: AttentionTile | None = None,
                     programs_per_sm: int | None = None) -> Splits:
    """Enough programs to cover every SM `programs_per_sm` times (batch 1 with 8 heads needs ~30 splits of
    the cache; batch 64 none, but gets MIN_SPLITS), at most MAX_SPLIT_KEYS positions each (where the cache is
    long), each at least one tile of keys, at most MAX_SPLITS.
    `count` fixes the number of splits, `tile` the kernel's tile (the tuning script sweeps both)."""
    tile = tile or attention_tile(head_dim, rows_x_heads=rows_x_heads, capacity=capacity)
    blocks = -(-capacity // tile.block_n)
    if count is None:
        count = max(MIN_SPLITS, -(-(programs_per_sm or PROGRAMS_PER_SM) * program_slots(device) // rows_x_heads),
                    -(-capacity // MAX_SPLIT_KEYS))
    count = max(1, min(count, blocks, MAX_SPLITS))
    return Splits.of(tile, head_dim, capacity, -(-blocks // count))


# Cache positions per split in batch-invariant mode. Measured on an H200 (pythia-1b, fp16, step time against
# the default engine's at b = 1, 16, 64 x p = 128, 2048; evidence/h200/session-2026-12-02c/
# invariant-decode-split-sweep-c2c7edb): worst ratio 1.70x at 32 keys, 1.46x at 64, 1.21x at 128, 1.10x at 256,
# 1.26x at 512. Small splits fill the SMs at batch 1 but multiply programs and partials at batch 64. Again with the
# tensor-core loop (evidence/h200/invariant-decode-split-keys-ee894d8): 256 keys fastest or tied at every row; 32,
# 64 and 128 keys tie at b1 p128 (1.22x: the batch-1 cost is the invariant GEMMs, not the splits) and cost up to
# 1.33x at b64 p2048.
INVARIANT_SPLIT_KEYS = 256
# The loop of the invariant attention: "lane" (LANE_TILES, as the split sweep of c2c7edb measured it) or "mma" (the
# tensor-core loop, batch 1's tile of ATTENTION_TILES). Either is batch-invariant: a (row, head, split) program
# runs the same tile over the same keys whatever the batch. Invariant / default step on an H200 (pythia-1b, 256
# keys; evidence/h200/decode-tiles-ccd6089 lane, decode-tiles-09d3f7b mma), lane -> mma: b1 p128 1.217 -> 1.221,
# b16 p128 1.067 -> 1.001, b64 p128 1.005 -> 0.922, b1 p2048 1.241 -> 1.134, b16 p2048 1.092 -> 1.054, b64 p2048
# 1.057 -> 1.019 (the default engine of 09d3f7b is itself 2-5% faster than ccd6089's at b=16 and at b=64 p=128,
# 1.4% slower at b=64 p=2048). At head dims <= 64 ATTENTION_TILES is the lane table, so both loops run the lane loop.
INVARIANT_LOOPS = ("lane", "mma")
INVARIANT_LOOP = "mma"


def invariant_splits(capacity: int, head_dim: int, *, keys: int | None = None, loop: str | None = None) -> Splits:
    """The batch-invariant cut of the cache: `keys` positions per split whatever the batch (more only where
    MAX_SPLITS would be exceeded, which depends on the capacity alone). A row's attention then sums the same
    splits in the same order at every batch size; attention_splits instead aims at filling the SMs, so its
    split count, and the row's rounding, change with the batch."""
    loop = loop or INVARIANT_LOOP
    if loop not in INVARIANT_LOOPS:
        raise ValueError(f"invariant attention loop {loop!r}: expected one of {', '.join(INVARIANT_LOOPS)}")
    tile = attention_tile(head_dim, LANE_TILES if loop == "lane" else ATTENTION_TILES)
    keys = keys or INVARIANT_SPLIT_KEYS
    per_split = -(-max(keys, tile.block_n) // tile.block_n)  # in tiles
    blocks = -(-capacity // tile.block_n)
    return Splits.of(tile, head_dim, capacity, max(per_split, -(-blocks // MAX_SPLITS)))


def _decode_attention_kernel(qkv_ptr, bias_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, cos_ptr, sin_ptr, out_ptr,
                             out_stride, m_ptr, l_ptr, acc_ptr, count_ptr, heads, rotary_dims, capacity,
                             keys_per_split, n_splits, scale_log2, attention_programs, up_ptr, up_bias_ptr, ffn,
                             qkv_stride, up_stride, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr,
                             STAGES: tl.constexpr, BLOCK_S: tl.constexpr, HAS_GELU: tl.constexpr,
                             HAS_UP_BIAS: tl.constexpr, GELU_BLOCK: tl.constexpr, PDL: tl.constexpr,
                             LATE: tl.constexpr, MMA: tl.constexpr = False, INPUT_PRECISION: tl.constexpr = "tf32",
                             TMA: tl.constexpr = False):
    """Programs below attention_programs: one (batch row, head, stretch of its cache) each, split fastest;
    the last split of a (row, head) to finish combines the splits. The rest (HAS_GELU): gelu(up + bias) of
    one (batch row, GELU_BLOCK columns) into out[:, heads * d:], the other half of the output GEMM's input."""
    wait_for_predecessor(PDL, LATE)  # every program, the ones with no work too (see dependent_launches)
    pid = tl.program_id(0)
    if pid < attention_programs:
        _attend(qkv_ptr, bias_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, cos_ptr, sin_ptr, out_ptr, out_stride, m_ptr,
                l_ptr, acc_ptr, count_ptr, pid // n_splits, pid % n_splits, qkv_stride, heads, rotary_dims,
                capacity, keys_per_split, n_splits, scale_log2, HEAD_DIM, HALF, BLOCK_N, BLOCK_D, HAS_BIAS, DIRECT,
                STAGES, BLOCK_S, PDL, LATE, MMA, INPUT_PRECISION, attention_programs // n_splits, TMA)
    else:
        let_dependents_launch(PDL, LATE)
        if HAS_GELU:
            job = pid - attention_programs
            col_blocks = tl.cdiv(ffn, GELU_BLOCK)
            row = (job // col_blocks).to(tl.int64)
            cols = (job % col_blocks) * GELU_BLOCK + tl.arange(0, GELU_BLOCK)
            ok = cols < ffn
            x = tl.load(up_ptr + row * up_stride + cols, mask=ok, other=0.0).to(tl.float32)
            if HAS_UP_BIAS:
                x += tl.load(up_bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
            x = x.to(up_ptr.dtype.element_ty).to(tl.float32)  # the GEMM with its bias would round here
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
            tl.store(out_ptr + row * out_stride + heads * HEAD_DIM + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def _attend(qkv_ptr, bias_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, cos_ptr, sin_ptr, out_ptr, out_stride, m_ptr,
            l_ptr, acc_ptr, count_ptr, bh, split, qkv_stride, heads, rotary_dims, capacity, keys_per_split, n_splits,
            scale_log2, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr, STAGES: tl.constexpr, BLOCK_S: tl.constexpr,
            PDL: tl.constexpr, LATE: tl.constexpr, MMA: tl.constexpr, INPUT_PRECISION: tl.constexpr, pairs,
            TMA: tl.constexpr):
    row, head = bh // heads, bh % heads
    pos = tl.load(pos_ptr).to(tl.int32)  # where this step's token sits: it attends to positions 0..pos
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    # GPT-NeoX packs [q, k, v] per head: (b, heads, 3, d); rotary turns the first rotary_dims of q and k,
    # half-split: x_j cos - x_{j+half} sin below half, x_j cos + x_{j-half} sin above
    packed = qkv_ptr + row.to(tl.int64) * qkv_stride + head * 3 * HEAD_DIM
    biases = bias_ptr + head * 3 * HEAD_DIM
    rotated = d < rotary_dims
    partner = tl.where(rotated, tl.where(d < HALF, d + HALF, d - HALF), d)
    cos = tl.load(cos_ptr + pos * rotary_dims + d, mask=rotated, other=1.0)
    sin = tl.load(sin_ptr + pos * rotary_dims + d, mask=rotated, other=0.0) * tl.where(d < HALF, -1.0, 1.0)
    # q, k (and their rotary partners) and v, each with its bias, rounded as the GEMM with its bias would store it
    q = tl.load(packed + d, mask=d_ok, other=0.0).to(tl.float32)
    q_partner = tl.load(packed + partner, mask=d_ok, other=0.0).to(tl.float32)
    k_own = tl.load(packed + HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
    k_partner = tl.load(packed + HEAD_DIM + partner, mask=d_ok, other=0.0).to(tl.float32)
    v_new = tl.load(packed + 2 * HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        q += tl.load(biases + d, mask=d_ok, other=0.0).to(tl.float32)
        q_partner += tl.load(biases + partner, mask=d_ok, other=0.0).to(tl.float32)
        k_own += tl.load(biases + HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
        k_partner += tl.load(biases + HEAD_DIM + partner, mask=d_ok, other=0.0).to(tl.float32)
        v_new += tl.load(biases + 2 * HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
    dtype = qkv_ptr.dtype.element_ty
    q = q.to(dtype).to(tl.float32) * cos + q_partner.to(dtype).to(tl.float32) * sin
    q = q * scale_log2  # the softmax scale and log2(e) folded into q: scores in base 2 (exp2 below)
    k_new = k_own.to(dtype).to(tl.float32) * cos + k_partner.to(dtype).to(tl.float32) * sin
    k_new = k_new.to(k_cache_ptr.dtype.element_ty)  # as stored, so this step sees what later steps will read
    v_new = v_new.to(v_cache_ptr.dtype.element_ty)
    cache = bh.to(tl.int64) * capacity * HEAD_DIM  # this (row, head)'s (T, d) block; offsets within it fit int32
    keys = k_cache_ptr + cache
    values = v_cache_ptr + cache
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, pos + 1)  # splits past pos do no work (fixed grid, filled cache read)
    owner = (lo <= pos) & (pos < lo + keys_per_split) & (pos < capacity)  # one split writes the new k, v
    store_ok = d < tl.where(owner, HEAD_DIM, 0)  # (not d_ok & owner: the interpreter mis-types vector & scalar)
    tl.store(keys + pos * HEAD_DIM + d, k_new, mask=store_ok)
    tl.store(values + pos * HEAD_DIM + d, v_new, mask=store_ok)
    k_new = k_new.to(tl.float32)
    v_new = v_new.to(tl.float32)
    if MMA:
        # The tensor cores do q.k and p.v: tl.dot needs 16 rows, so q is repeated over 16 identical rows
        # (the MMA's spare rows cost tensor-core cycles, which a cache stream has to spare) and one row is
        # kept at the end. The loads feed the dots straight from shared memory (the pipeliner's own case),
        # so the new key is masked out of the loop and joins after it from registers (the owner split).
        q_dot = q.to(k_cache_ptr.dtype.element_ty)
        q_rows = tl.broadcast_to(q_dot[None, :], (16, BLOCK_D))
        m_rows = tl.full([16], -1.0e30, tl.float32)
        l_rows = tl.zeros([16], tl.float32)
        acc_rows = tl.zeros([16, BLOCK_D], tl.float32)
        if TMA:  # every (row, head)'s (T, d) block as one (pairs x T, d) matrix: columns past d read as zeros; the
            # rows past hi are other positions' keys (finite: the cache is zeroed), left out of s below
            k_desc = tl.make_tensor_descriptor(k_cache_ptr, shape=[pairs * capacity, HEAD_DIM], strides=[HEAD_DIM, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            v_desc = tl.make_tensor_descriptor(v_cache_ptr, shape=[pairs * capacity, HEAD_DIM], strides=[HEAD_DIM, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
        for start in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
            n = start + tl.arange(0, BLOCK_N)
            old = (n < hi) & (n != pos)
            tile = n[:, None] * HEAD_DIM + d[None, :]
            tile_ok = old[:, None] & d_ok[None, :]
            if TMA:
                k = k_desc.load([bh * capacity + start, 0])
            else:
                k = tl.load(keys + tile, mask=tile_ok, other=0.0)
            s = tl.dot(q_rows, tl.trans(k), input_precision=INPUT_PRECISION)  # (16, BLOCK_N), base-2 units
            s = tl.where(old[None, :], s, float("-inf"))
            m_new = tl.maximum(m_rows, tl.max(s, axis=1))
            alpha = tl.exp2(m_rows - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_rows = l_rows * alpha + tl.sum(p, axis=1)
            if TMA:
                v = v_desc.load([bh * capacity + start, 0])
            else:
                v = tl.load(values + tile, mask=tile_ok, other=0.0)
            acc_rows = acc_rows * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
            m_rows = m_new
        let_dependents_launch(PDL, LATE)
        row_zero = tl.arange(0, 16) == 0
        m_i = tl.max(m_rows, axis=0)  # the 16 rows are one row
        l_i = tl.sum(tl.where(row_zero, l_rows, 0.0), axis=0)
        acc_d = tl.sum(tl.where(row_zero[:, None], acc_rows, 0.0), axis=0)  # (BLOCK_D,)
        s_new = tl.sum(q_dot.to(tl.float32) * k_new, axis=0)
        m_both = tl.maximum(m_i, s_new)
        keep = tl.exp2(m_i - m_both)
        add = tl.exp2(s_new - m_both)
        m_i = tl.where(owner, m_both, m_i)
        l_i = tl.where(owner, l_i * keep + add, l_i)
        acc_d = tl.where(owner, acc_d * keep + add * v_new, acc_d)
    else:
        # Online softmax per key lane: each of the BLOCK_N lanes keeps its own running max, sum and output row,
        # merged once after the loop. A running max per tile (one max over the tile per iteration) reduces
        # across warps, i.e. a barrier per iteration that drains the loads in flight; per lane, the loop body
        # is elementwise but for the q.k dot along d (within a warp), so the pipeline keeps STAGES tiles coming.
        # Lanes start at a finite floor, not -inf: exp2(floor - floor) = 1 where a lane has seen no key yet.
        m_lane = tl.full([BLOCK_N], -1.0e30, tl.float32)
        l_lane = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            tile = n[:, None] * HEAD_DIM + d[None, :]
            tile_ok = n_ok[:, None] & d_ok[None, :]
            k = tl.load(keys + tile, mask=tile_ok, other=0.0)
            v = tl.load(values + tile, mask=tile_ok, other=0.0)
            is_new = (n == pos)[:, None]  # the new key is in registers; its cache slot is written above
            k = tl.where(is_new, k_new[None, :], k.to(tl.float32))
            v = tl.where(is_new, v_new[None, :], v.to(tl.float32))
            s = tl.where(n_ok, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_N,), base-2 units
            m_new = tl.maximum(m_lane, s)
            alpha = tl.exp2(m_lane - m_new)
            p = tl.exp2(s - m_new)
            l_lane = l_lane * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * v
            m_lane = m_new
        let_dependents_launch(PDL, LATE)
        m_i = tl.max(m_lane, axis=0)
        weight = tl.exp2(m_lane - m_i)  # a lane with no key: its floor lies ~1e30 below m_i, weight 0
        l_i = tl.sum(l_lane * weight, axis=0)
        acc_d = tl.sum(acc * weight[:, None], axis=0)  # (BLOCK_D,)
    if DIRECT:  # out (b, >= heads*d) with row stride out_stride: the output GEMM's input, or a plain (b, h)
        where = out_ptr + row.to(tl.int64) * out_stride + head * HEAD_DIM + d
        tl.store(where, (acc_d / l_i).to(out_ptr.dtype.element_ty), mask=d_ok)
    else:  # a split with no key (wholly past pos) stores m = floor, l = 0: the combine gives it weight 0
        part = bh.to(tl.int64) * n_splits
        tl.store(m_ptr + part + split, m_i)
        tl.store(l_ptr + part + split, l_i)
        tl.store(acc_ptr + (part + split) * HEAD_DIM + d, acc_d, mask=d_ok)
        # the last split of this (row, head) to finish combines them all, in split order: no second kernel
        tl.debug_barrier()  # every thread's partial stored before the one atomic releases them
        done = tl.atomic_add(count_ptr + bh, 1, sem="acq_rel")
        if done == n_splits - 1:
            s = tl.arange(0, BLOCK_S)
            s_ok = s < n_splits
            m_all = tl.load(m_ptr + part + s, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
            m_max = tl.max(m_all, axis=0)
            weights = tl.exp2(m_all - m_max)  # base 2, as the scores; an empty split: 0
            total = tl.sum(weights * tl.load(l_ptr + part + s, mask=s_ok, other=0.0, cache_modifier=".cg"), axis=0)
            combined = tl.zeros([BLOCK_D], tl.float32)
            for first in tl.range(0, n_splits, COMBINE_CHUNK):  # a few splits' rows at a time (registers)
                c = first + tl.arange(0, COMBINE_CHUNK)
                c_ok = c < n_splits
                w = tl.exp2(tl.load(m_ptr + part + c, mask=c_ok, other=float("-inf"), cache_modifier=".cg") - m_max)
                rows = tl.load(acc_ptr + (part + c)[:, None] * HEAD_DIM + d[None, :],
                               mask=c_ok[:, None] & d_ok[None, :], other=0.0, cache_modifier=".cg")
                combined += tl.sum(w[:, None] * rows, axis=0)
            where = out_ptr + row.to(tl.int64) * out_stride + head * HEAD_DIM + d
            tl.store(where, (combined / total).to(out_ptr.dtype.element_ty), mask=d_ok)
            tl.store(count_ptr + bh, 0)  # ready for the next launch (the next replay of the graph)


COMBINE_CHUNK = tl.constexpr(16) if tl is not None else 16  # splits the last split's program combines per step
LOG2E = 1.4426950408889634
if triton is not None:  # _attend is called from the kernel: a JIT function (the interpreter runs it as its twin)
    _attend = triton.jit(_attend)
DECODE_ATTENTION = Kernel(_decode_attention_kernel) if triton is not None else None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary (rotate_half) on the first cos.shape[-1] dims of x (..., d), in float32."""
    rotary_dims = cos.shape[-1]
    half = rotary_dims // 2
    x = x.float()
    rot, passthrough = x[..., :rotary_dims], x[..., rotary_dims:]
    turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + turned * sin, passthrough), dim=-1)


def decode_attention_torch(qkv: torch.Tensor, bias: torch.Tensor | None, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                           scale: float) -> torch.Tensor:
    """The same op in plain torch: reads the whole cache, masks what lies past pos (shapes stay fixed)."""
    qkv = _biased(qkv, bias)
    b = qkv.shape[0]
    d = k_cache.shape[-1]
    packed = qkv.reshape(b, heads, 3, d)
    at = pos.view(1)
    c, s = cos.index_select(0, at), sin.index_select(0, at)  # (1, rotary_dims)
    q = rotate(packed[:, :, 0], c, s)  # (b, heads, d) float32
    k = rotate(packed[:, :, 1], c, s)
    k_cache.index_copy_(2, at, k.to(k_cache.dtype).unsqueeze(2))  # (b, heads, 1, d) into (b, heads, T, d)
    v_cache.index_copy_(2, at, packed[:, :, 2].unsqueeze(2))
    scores = torch.matmul(k_cache.float(), q.unsqueeze(-1)).squeeze(-1) * scale  # (b, heads, T)
    future = torch.arange(k_cache.shape[2], device=qkv.device) > pos
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    context = torch.matmul(probs.unsqueeze(-2), v_cache.float()).squeeze(-2)  # (b, heads, d)
    return context.to(qkv.dtype).reshape(b, heads * d)


def _attention_kernels(qkv, bias, k_cache, v_cache, pos, cos, sin, out, *, heads, scale, splits, up=None,
                       up_bias=None) -> None:
    """Launch the attention kernel writing into out (b, >= h), which may be a row-strided view: the splits
    and their combine, and (with `up`) bias + GELU of up into out[:, h:], all in one launch."""
    b, _, capacity, d = k_cache.shape
    rows = b * heads
    if splits.direct:
        m = l_ = acc = count = out  # unused
    else:
        m = torch.empty(rows, splits.count, device=qkv.device, dtype=torch.float32)
        l_ = torch.empty_like(m)
        acc = torch.empty(rows, splits.count, d, device=qkv.device, dtype=torch.float32)
        count = counters(qkv.device, rows, "attention")
    rotary_dims = cos.shape[-1]
    attention_programs = rows * splits.count
    ffn = up.shape[1] if up is not None else 0
    gelu = b * triton.cdiv(ffn, GELU_BLOCK) if up is not None else 0
    pdl = pdl_launch(qkv)
    if splits.tma:
        tma_ready(k_cache, v_cache)
    DECODE_ATTENTION[(attention_programs + gelu,)](
        qkv, bias if bias is not None else qkv, k_cache, v_cache, pos, cos, sin, out, out.stride(0), m, l_, acc,
        count, heads, rotary_dims, capacity, splits.keys, splits.count, scale * LOG2E, attention_programs,
        up if up is not None else out, up_bias if up_bias is not None else out, ffn, qkv.stride(0),
        up.stride(0) if up is not None else 0, HEAD_DIM=d,
        HALF=max(1, rotary_dims // 2), BLOCK_N=splits.block_n, BLOCK_D=splits.block_d, HAS_BIAS=bias is not None,
        DIRECT=splits.direct, STAGES=splits.stages, BLOCK_S=triton.next_power_of_2(splits.count),
        HAS_GELU=up is not None, HAS_UP_BIAS=up_bias is not None, GELU_BLOCK=GELU_BLOCK, PDL=pdl.on,
        LATE=pdl.late, MMA=splits.mma, INPUT_PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        TMA=splits.tma, num_warps=splits.warps, **pdl.options)


def decode_attention(qkv: torch.Tensor, bias: torch.Tensor | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, heads: int, scale: float,
                     splits: Splits, out: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """One new token per batch row. qkv (b, heads*3*d) straight from the QKV GEMM, `bias` its bias (3h,);
    k_cache, v_cache (b, heads, T, d) of one layer; pos a device int64 scalar; cos, sin (T, rotary_dims)
    float32. Writes the token's k and v at pos and returns its attention output (b, heads*d), ready for the
    out-projection: into `out` where given (unit stride along the row, e.g. the left part of the output
    GEMM's input [attention | gelu(up)])."""
    if not use_triton(qkv, backend):
        context = decode_attention_torch(qkv, bias, k_cache, v_cache, pos, cos, sin, heads, scale)
        return context if out is None else out.copy_(context)
    b, _, _, d = k_cache.shape
    out = torch.empty(b, heads * d, device=qkv.device, dtype=qkv.dtype) if out is None else out
    _attention_kernels(qkv, bias, k_cache, v_cache, pos, cos, sin, out, heads=heads, scale=scale, splits=splits)
    return out


def decode_attention_and_gelu(qkv: torch.Tensor, bias: torch.Tensor | None, k_cache: torch.Tensor,
                              v_cache: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                              up: torch.Tensor, up_bias: torch.Tensor | None, *, heads: int, scale: float,
                              splits: Splits, backend: str = "auto") -> torch.Tensor:
    """The parallel residual's two branches up to their output GEMM: [decode_attention | gelu(up + up_bias)],
    (b, h + 4h), the input of one GEMM with [out-projection | MLP-down] (one GEMM and, split or not, one small
    kernel fewer per layer than two branches apart)."""
    if not use_triton(qkv, backend):
        context = decode_attention_torch(qkv, bias, k_cache, v_cache, pos, cos, sin, heads, scale)
        return torch.cat((context, F.gelu(_biased(up, up_bias))), dim=1)
    b, _, _, d = k_cache.shape
    joined = torch.empty(b, heads * d + up.shape[1], device=qkv.device, dtype=qkv.dtype)
    _attention_kernels(qkv, bias, k_cache, v_cache, pos, cos, sin, joined, heads=heads, scale=scale, splits=splits,
                       up=up, up_bias=up_bias)
    return joined

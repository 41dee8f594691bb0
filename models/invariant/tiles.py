"""Which tile each number of rows M gets: one BLOCK_K per (N, K, dtype), the other tile sizes by M bucket.

The reduction order of an output element (i, j) is the order in which sum_k A[i, k] B[k, j] is accumulated.
In the invariant kernel (matmul.py) one program owns a whole output tile and walks K from 0 upwards in
BLOCK_K steps, each step one `tl.dot` into the same fp32 accumulator, with no split over K. What BLOCK_M,
BLOCK_N, num_warps and num_stages change is how many elements one program owns, how warps share them and
how far ahead loads run; none of them changes which products are added to (i, j), or in which order. So the
plan fixes BLOCK_K for the (N, K, dtype) and lets the rest follow M.

The tiles are the ones the H200 tuning sweep measured fastest (scripts/tune_invariant_matmul.py, CUDA-graph
timed against cuBLAS, at 84057fd: evidence in the issue-21 notes), as a rule of (N, K):

- BLOCK_K = 256 where K >= N (output projection, MLP down: few columns, a long K to stream), else 128;
- M <= 16: 16 x 32 tiles, one warpgroup, deep pipelines (N / 32 programs stream the weight);
- M <= 32: 16 x 64 where N >= 4096, else 16 x 32;
- M <= 64: 64-row tiles; larger M: 128-row tiles, 8 warps (compute-bound; the choice puts cuBLAS there
  wherever the probe allows, as this kernel runs at ~0.7 of cuBLAS at large M).

Measured there: the decode tiles run at 0.97-1.13 of cuBLAS's default at M <= 16 for all 12 weight GEMMs of
pythia-1b / pythia-6.9b / llama-2-7b-like (the 64 x 16..64 x 64 tiles of the first plan: 0.76-1.04).

MMA instructions: a 16-row tile is below wgmma's 64 rows, so Triton lowers it to mma.sync (MMA v2), while
64- and 128-row tiles with 4k warps use wgmma (MMA v3). Both accumulate in fp32 in 16-wide k steps, in k
order; the sweep found every tile (BLOCK_M 16 / 64 / 128, BLOCK_K 64 / 128 / 256, mma.sync or wgmma) bitwise
equal to the others, and to cuBLASLt's non-split kernels, at every M it ran (1..256, 12 shapes). That is a
measured fact of one GPU and compiler, not a construction, which is why nothing here is used without the
per-shape bitwise probe (choice.py in profiler/invariance) and why each compiled configuration records its
instruction family (matmul.mma_families).

No split over K in this kernel: a split count fixed per (N, K) would be invariant too (splitk.py has one,
with its ordered reduction), but its sums differ from every non-split kernel's, so it could not share the
M range with cuBLAS; the sweep measured it no faster than the narrow tiles at small M.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

# shared memory a Hopper SM leaves one launch (227 KB), less what Triton keeps for the epilogue's layout change
SMEM_BUDGET = 200 * 1024
# a bucket's narrowest tile still has to give this share of the SMs a program at the bucket's smallest M
FILL = 0.75
REFERENCE_SMS = 132  # H100 SXM / H200: what a plan is built for off a GPU (the interpreter, tests)


@dataclass(frozen=True)
class MatmulConfig:
    """One launch shape. Within a plan every configuration has the same block_k (see `reduction_problem`)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3

    @property
    def label(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages}"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class Bucket:
    """The rows per matrix up to `max_m` (None: no upper bound) and their configurations, best first; a later
    one runs only when the GPU lacks the resources for the earlier (Triton's OutOfResources, an M-free fact)."""

    max_m: int | None
    configs: tuple[MatmulConfig, ...]

    @property
    def label(self) -> str:
        return f"{'M<=' + str(self.max_m) if self.max_m else 'larger M'}: {self.configs[0].label}"


@dataclass(frozen=True)
class MatmulPlan:
    """The tiles of an (., K) x (K, N) product for every M: buckets in increasing max_m, the last unbounded."""

    name: str  # 'buckets' (by M) or 'fixed' (one tile for every M, the kernel before issue 21)
    buckets: tuple[Bucket, ...]

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.name, self.buckets))

    def __hash__(self) -> int:  # the launch looks its plan up on every call: hash the tiles once
        return self._hash

    def bucket_index(self, m: int) -> int:
        for i, bucket in enumerate(self.buckets):
            if bucket.max_m is None or m <= bucket.max_m:
                return i
        return len(self.buckets) - 1

    def config(self, m: int) -> MatmulConfig:
        return self.buckets[self.bucket_index(m)].configs[0]

    @property
    def block_k(self) -> int:
        return self.buckets[0].configs[0].block_k

    @property
    def label(self) -> str:
        return f"{self.name}: " + "; ".join(b.label for b in self.buckets)

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label,
                "buckets": [{"max_m": b.max_m, "configs": [c.to_dict() for c in b.configs]} for b in self.buckets]}


def reduction_problem(plan: MatmulPlan) -> str | None:
    """Why this plan's reduction order could depend on M, or None. The kernel's order over K is fixed by
    BLOCK_K alone (no split-K exists in it), so one BLOCK_K across all buckets and candidates is the whole rule."""
    ks = sorted({c.block_k for b in plan.buckets for c in b.configs})
    if len(ks) > 1:
        return f"BLOCK_K differs between M buckets ({', '.join(map(str, ks))}): the sum over K is cut differently"
    if not plan.buckets or plan.buckets[-1].max_m is not None:
        return "the last bucket must be unbounded, or some M has no tile"
    bounds = [b.max_m for b in plan.buckets[:-1]]
    if bounds != sorted(set(bounds)):
        return "bucket bounds must increase"
    return None


# fp32 (exact products, no tensor cores: each dot is an FMA chain over k, also independent of the tile shape)
FP32_BUCKETS = ((32, 32, 4, 32, 3), (128, 64, 4, 64, 3), (None, 64, 8, 128, 2))


def sixteen_bit_block_k(n: int, k: int) -> int:
    """256 where K >= N (few columns, a long K: fewer, longer steps keep the loads in flight), else 128."""
    return 256 if k >= n else 128


def _sixteen_bit_table(n: int, k: int) -> tuple[tuple[int | None, MatmulConfig], ...]:
    """(largest M, configuration) per bucket, from the H200 sweep (see the module docstring)."""
    bk = sixteen_bit_block_k(n, k)
    long_k = bk == 256
    mid_n = 64 if n >= 4096 else 32
    m64 = (MatmulConfig(64, 16 if n <= 2048 else 32, bk, num_warps=4, num_stages=5 if n <= 2048 else 3) if long_k
           else MatmulConfig(64, 64, bk, num_warps=4, num_stages=6))
    return ((16, MatmulConfig(16, 32, bk, num_warps=4, num_stages=6 if long_k else 4)),
            (32, MatmulConfig(16, mid_n, bk, num_warps=4, num_stages=6 if long_k and mid_n == 32 else 4)),
            (64, m64),
            (256, MatmulConfig(128, 64, bk, num_warps=8, num_stages=2 if long_k else 4)),
            (None, MatmulConfig(128, 64, bk, num_warps=8, num_stages=2) if long_k
             else MatmulConfig(128, 128, bk, num_warps=8, num_stages=3)))


def _fallbacks(cfg: MatmulConfig) -> tuple[MatmulConfig, ...]:
    """The configuration, then shallower pipelines of it (a GPU with less shared memory: an M-free fact)."""
    stages = dict.fromkeys(max(2, s) for s in (cfg.num_stages, cfg.num_stages - 1, cfg.num_stages // 2, 2))
    while (cfg.block_m + cfg.block_n) * cfg.block_k * 2 * next(iter(stages)) > SMEM_BUDGET and len(stages) > 1:
        stages.pop(next(iter(stages)))
    return tuple(MatmulConfig(cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, s) for s in stages)


@functools.lru_cache(maxsize=None)
def plan_for(n: int, k: int, dtype: torch.dtype, sms: int = REFERENCE_SMS) -> MatmulPlan:
    """The bucketed plan of an (., K) x (K, N) product: a function of (N, K, dtype), never of M (`sms` is
    kept for callers that pass the GPU's SM count; the H200-tuned table does not need it). One BLOCK_K for
    the plan: sixteen_bit_block_k for 16-bit inputs, 32 for fp32."""
    if dtype == torch.float32:
        buckets = tuple(Bucket(max_m, tuple(MatmulConfig(bm, bn, 32, num_warps=w, num_stages=s2)
                                            for s2 in dict.fromkeys((st, 2))))
                        for max_m, bm, w, bn, st in FP32_BUCKETS)
    else:
        buckets = tuple(Bucket(max_m, _fallbacks(cfg)) for max_m, cfg in _sixteen_bit_table(n, k))
    plan = MatmulPlan("buckets", buckets)
    problem = reduction_problem(plan)
    assert problem is None, problem  # a bug in the tables above, not a user error
    return plan


@functools.lru_cache(maxsize=None)
def fixed_plan(n: int, k: int, dtype: torch.dtype) -> MatmulPlan:
    """One tile for every M (the configuration before issue 21): the fall-back when a bucketed plan fails
    its bitwise probe on some GPU. Its later candidates only matter where the first does not fit."""
    if dtype == torch.float32:
        configs = (MatmulConfig(64, 64, 32, num_warps=4, num_stages=3), MatmulConfig(64, 64, 32, num_warps=4, num_stages=2))
    else:
        wide = n >= 4096
        configs = (MatmulConfig(128, 256 if wide else 128, 64, num_warps=8, num_stages=3),
                   MatmulConfig(128, 128, 64, num_warps=8, num_stages=3), MatmulConfig(128, 128, 64, num_warps=4, num_stages=2),
                   MatmulConfig(64, 64, 64, num_warps=4, num_stages=2))
    return MatmulPlan("fixed", (Bucket(None, configs),))

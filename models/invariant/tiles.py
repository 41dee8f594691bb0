"""Which tile each number of rows M gets: one BLOCK_K per (N, K, dtype), the other tile sizes by M bucket.

The reduction order of an output element (i, j) is the order in which sum_k A[i, k] B[k, j] is accumulated.
In the invariant kernel (matmul.py) one program owns a whole output tile and walks K from 0 upwards in
BLOCK_K steps, each step one `tl.dot` into the same fp32 accumulator, with no split over K. What BLOCK_M,
BLOCK_N, num_warps and num_stages change is how many elements one program owns, how warps share them and
how far ahead loads run; none of them changes which products are added to (i, j), or in which order. So the
plan fixes BLOCK_K for the (N, K, dtype) and lets the rest follow M:

- decode (a few rows): memory-bound on the weight. Tiles are 64 rows (the smallest Hopper wgmma M) by a
  narrow BLOCK_N, so that N / BLOCK_N programs cover the SMs, with deep pipelines: with every program
  resident, N x (stages - 1) x BLOCK_K x 2 bytes of weights are in flight, which has to reach a few MB
  (bandwidth x latency, ~4 MB on an H200) for the kernel to run at HBM speed;
- prefill (thousands of rows): compute-bound. The 128 x 256 x 64 tile with 8 warps, 3 stages.

Hopper caveat (reasoned here, verified on the GPU by scripts/bench_invariant_matmul.py): Triton lowers
`tl.dot` to wgmma (MMA v3) when num_warps % 4 == 0, BLOCK_M % 64 == 0 and BLOCK_N % 8 == 0, else to
mma.sync (MMA v2); the two are different instructions and nothing promises they round alike. Every 16-bit
bucket below satisfies the wgmma conditions, so all M use the one instruction family; the kernel records
which family each compiled configuration got (matmul.mma_families) and the GPU script compares rows across
buckets bitwise over the M sweep.

No split over K (considered, not taken): a split count S fixed per (N, K) stays invariant only if every M
runs the same chunked tree (S partial sums, added in one order), i.e. large M would keep two accumulators
and refill its pipeline at each chunk, and small M would need an ordered cross-program reduction (a second
launch, or semaphores) costing a microsecond or two on a decode GEMM of ten. Deep pipelines on narrow tiles
reach the same bandwidth without it, and keep each element one sequential chain over K, the chain a
no-split-K cuBLASLt kernel computes too (which is what lets choice.py try cuBLASLt and Triton together).
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


# 16-bit buckets: (largest M, BLOCK_M, warps, widest BLOCK_N, most stages, memory-bound). Every BLOCK_M is a
# multiple of 64 and every warp count a multiple of 4: the wgmma conditions, so every bucket uses one MMA
# instruction. Memory-bound buckets size their pipelines so all programs are resident at once (one wave).
SIXTEEN_BIT_BUCKETS = (
    (64, 64, 4, 64, 16, True),  # decode: one warpgroup, narrow N, deep pipeline (bound by the weight's bytes)
    (256, 128, 8, 128, 6, True),  # small batches: still near memory-bound on an H200 (ridge ~200 rows)
    (1024, 128, 8, 256, 4, False),  # compute-bound, but few row tiles: N tiles narrow enough to fill the SMs
    (None, 128, 8, 256, 3, False),  # prefill: the 128 x 256 x 64 tile
)
# fp32 (exact products, no tensor cores: each dot is an FMA chain over k, also independent of the tile shape)
FP32_BUCKETS = ((32, 32, 4, 32, 3, False), (128, 64, 4, 64, 3, False), (None, 64, 8, 128, 2, False))


def _block_n(n: int, rows_tiles: int, widest: int, sms: int) -> int:
    """The widest power-of-two BLOCK_N (16..widest) whose programs still cover FILL of the SMs."""
    bn = widest
    while bn > 16 and rows_tiles * -(-n // bn) < FILL * sms:
        bn //= 2
    return bn


def _stage_options(n: int, m_hi: int | None, block_m: int, block_n: int, block_k: int, most: int, sms: int,
                   elem_bytes: int, memory_bound: bool) -> tuple[int, ...]:
    """Stages, deepest first. A memory-bound bucket goes as deep as the shared memory left to each program
    allows when all of its programs (at the bucket's largest M) are resident at once: the bytes in flight are
    what it runs on. A compute-bound one takes `most`. Shallower ones follow for GPUs with less memory."""
    per_stage = (block_m + block_n) * block_k * elem_bytes
    deepest = most
    if memory_bound:
        programs = -(-(m_hi or block_m) // block_m) * -(-n // block_n)
        resident = max(1, -(-programs // sms))  # programs one SM must hold at once to avoid a second wave
        deepest = min(most, SMEM_BUDGET // resident // per_stage)
    deepest = max(2, min(deepest, SMEM_BUDGET // per_stage))
    return tuple(dict.fromkeys(max(2, s) for s in (deepest, deepest - 1, deepest * 2 // 3, deepest // 2, 2)))


@functools.lru_cache(maxsize=None)
def plan_for(n: int, k: int, dtype: torch.dtype, sms: int = REFERENCE_SMS) -> MatmulPlan:
    """The bucketed plan of an (., K) x (K, N) product: a function of (N, K, dtype) and the GPU's SM count,
    never of M. BLOCK_K is one value for the plan (64 for 16-bit inputs, 32 for fp32)."""
    fp32 = dtype == torch.float32
    table, block_k, elem = (FP32_BUCKETS, 32, 4) if fp32 else (SIXTEEN_BIT_BUCKETS, 64, 2)
    buckets, m_lo = [], 1
    for max_m, block_m, warps, widest, most, memory_bound in table:
        # fewest programs at the bucket's smallest M; fp32 (FMA, no tensor cores) keeps its tile: it is for exactness
        bn = widest if fp32 else _block_n(n, -(-m_lo // block_m), widest, sms)
        configs = tuple(MatmulConfig(block_m, bn, block_k, num_warps=warps, num_stages=s)
                        for s in _stage_options(n, max_m, block_m, bn, block_k, most, sms, elem, memory_bound))
        buckets.append(Bucket(max_m, configs))
        m_lo = (max_m or m_lo) + 1
    plan = MatmulPlan("buckets", tuple(buckets))
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

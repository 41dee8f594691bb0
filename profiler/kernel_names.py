"""What a GEMM or flash-attention kernel's name says about how it cuts its output into tiles.

Parsed, best effort, never required: a name no pattern knows gives `KernelTile(family="unknown")` and the
explanation falls back to the launch grid alone.

| family | example | read as |
| --- | --- | --- |
| nvjet (Hopper cuBLASLt) | `nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT` | precision `tst`, tile 256x128, k-step 64, 4 stages, cluster 1x2, raster h; `splitK` in the name: split-K |
| xmma (cuBLAS) | `sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_..._cluster1x2x1_...` | tile 128x128, k-step 64 (`stage4`: 4 stages); `segment_k_on` / `splitk`: split-K |
| cutlass 2 / cuBLAS legacy | `cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x10_nn_align8`, `ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_nn`, `volta_sgemm_128x64_nn` | the first `MxN` after `gemm`, then `KxS` (or `stages_KxS`) |
| cutlass 3 | `cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<... cute::C<128>, cute::C<256>, cute::C<64> ...` | the first `cute::C` triple (the tile shape), the second (the cluster) |
| flash (FlashAttention 2 in PyTorch) | `flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, ...` | head dim 128, 128 query rows x 64 key columns per block, 4 warps |

The tile's first dimension is the kernel's M. PyTorch calls cuBLAS in column-major order (it computes
C^T = B^T A^T), so a cuBLAS kernel's M runs along the PyTorch output's columns (n) and its N along the
rows (m): the committed H100 traces show it, the attention-over-values BMM with n = h/a = 80 runs on a 96x256
tile (one 96-wide tile covers the 80 columns; the other way round would waste 70% of every tile).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# families whose M runs along PyTorch's n (cuBLAS and cuBLAS-called CUTLASS kernels)
COLUMN_MAJOR_FAMILIES = ("nvjet", "xmma", "cutlass", "cublas")
NVJET = re.compile(r"nvjet_(?:sm(?P<sm>\d+)_)?(?P<prec>[a-z]{3})_(?P<tm>\d+)x(?P<tn>\d+)"
                   r"(?:_(?P<tk>\d+)x(?P<stages>\d+))?(?:_(?P<cx>\d+)x(?P<cy>\d+))?(?:_(?P<raster>[hv])_)?")
XMMA_TILE = re.compile(r"tilesize(?P<tm>\d+)x(?P<tn>\d+)x(?P<tk>\d+)")
XMMA_STAGES = re.compile(r"stage(?:s)?(?P<stages>\d+)")
XMMA_CLUSTER = re.compile(r"cluster(?P<cx>\d+)x(?P<cy>\d+)")
CUTE_MIN_TILE, CUTE_MAX_CLUSTER = 16, 16  # a tile extent is at least one MMA (16); a cluster at most 16 CTAs
CUTE_TRIPLE = re.compile(r"cute::C<(\d+)>\s*,\s*cute::C<(\d+)>\s*,\s*cute::C<(\d+)>")
LEGACY_TILE = re.compile(r"_(?P<tm>\d+)x(?P<tn>\d+)(?:_(?P<tk>\d+)x(?P<stages>\d+))?(?=_|$)")
LEGACY_STAGES = re.compile(r"stages_(?P<tk>\d+)x(?P<stages>\d+)")
FLASH = re.compile(r"Flash_(?P<dir>fwd|bwd)_kernel_traits<\s*(?P<d>\d+)\s*,\s*(?P<bm>\d+)\s*,\s*(?P<bn>\d+)\s*,"
                   r"\s*(?P<warps>\d+)")
FLASH_KERNEL = re.compile(r"(flash_fwd_splitkv_combine_kernel|flash_fwd_splitkv_kernel|flash_fwd_kernel|"
                          r"flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel|flash_bwd_dq_dk_dv_loop_kernel|"
                          r"flash_bwd_dot_do_o_kernel|flash_bwd_convert_dq_kernel|flash_bwd_clear_dkvaccum_kernel)")
SPLIT_K = re.compile(r"splitk|segment_k_on|split_k|streamk|stream_k", re.I)
NO_TENSOR_CORES = re.compile(r"gemv|sgemm|simt|dgemm", re.I)
PRECISION_LETTERS = {"t": "bf16", "h": "fp16", "s": "fp32", "d": "fp64", "e": "fp8", "q": "fp8", "i": "int8"}


@dataclass(frozen=True)
class KernelTile:
    family: str  # nvjet | xmma | cutlass | cutlass3 | cublas | flash | unknown
    tile_m: int | None = None  # the kernel's M (see the module docstring for its orientation)
    tile_n: int | None = None
    k_step: int | None = None
    stages: int | None = None
    cluster: tuple[int, int] | None = None
    precision: str | None = None  # nvjet's three letters (A/B, compute, C), e.g. "tst" = bf16, fp32, bf16
    split_k_in_name: bool = False
    flash_kernel: str | None = None  # which flash kernel (forward, backward's main loop, a helper)
    head_dim: int | None = None

    @property
    def tile(self) -> str:
        return f"{self.tile_m}x{self.tile_n}" if self.tile_m and self.tile_n else "unknown"

    @property
    def known(self) -> bool:
        return bool(self.tile_m and self.tile_n)

    @property
    def column_major(self) -> bool:
        return self.family in COLUMN_MAJOR_FAMILIES


def _int(v) -> int | None:
    return int(v) if v is not None else None


def parse_kernel_name(name: str) -> KernelTile:
    """The tile a GEMM or flash kernel's name announces; family "unknown" when no pattern matches."""
    name = str(name)
    split = bool(SPLIT_K.search(name))
    if (m := FLASH.search(name)) is not None:
        kernel = FLASH_KERNEL.search(name)
        return KernelTile("flash", _int(m["bm"]), _int(m["bn"]), head_dim=_int(m["d"]),
                          flash_kernel=kernel.group(1) if kernel else None)
    if (m := NVJET.search(name)) is not None:
        cluster = (int(m["cx"]), int(m["cy"])) if m["cx"] else None
        return KernelTile("nvjet", _int(m["tm"]), _int(m["tn"]), _int(m["tk"]), _int(m["stages"]), cluster,
                          precision=m["prec"], split_k_in_name=split)
    if (m := XMMA_TILE.search(name)) is not None:
        stages, cluster = XMMA_STAGES.search(name), XMMA_CLUSTER.search(name)
        return KernelTile("xmma", _int(m["tm"]), _int(m["tn"]), _int(m["tk"]),
                          _int(stages["stages"]) if stages else None,
                          (int(cluster["cx"]), int(cluster["cy"])) if cluster else None, split_k_in_name=split)
    triples = [tuple(int(v) for v in t) for t in CUTE_TRIPLE.findall(name)]
    if triples and "gemm" in name.lower():
        # the dispatch policy (stages, cluster shape) comes before the tile shape in CUTLASS 3's template
        # arguments: the tile is the first triple of MMA-sized extents, the cluster the first of small ones
        tiles = [t for t in triples if min(t) >= CUTE_MIN_TILE]
        clusters = [t for t in triples if max(t) <= CUTE_MAX_CLUSTER]
        if tiles:
            tm, tn, tk = tiles[0]
            cluster = clusters[0][:2] if clusters else None
            return KernelTile("cutlass3", tm, tn, tk, cluster=cluster, split_k_in_name=split)
    lowered = name.lower()
    at = lowered.find("gemm")
    if at >= 0 and (m := LEGACY_TILE.search(name, at)) is not None:
        family = "cutlass" if "cutlass" in lowered else "cublas"
        tk, stages = _int(m["tk"]), _int(m["stages"])
        if tk is None and (s := LEGACY_STAGES.search(name, at)) is not None:
            tk, stages = int(s["tk"]), int(s["stages"])
        return KernelTile(family, _int(m["tm"]), _int(m["tn"]), tk, stages, split_k_in_name=split)
    return KernelTile("unknown", split_k_in_name=split)


def input_precision(tile: KernelTile) -> str | None:
    """The operands' precision an nvjet name announces (its first letter), else None."""
    if tile.precision:
        return PRECISION_LETTERS.get(tile.precision[0])
    return None

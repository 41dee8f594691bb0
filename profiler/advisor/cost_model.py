"""A fast model of one training step, used to pre-rank candidate shapes before any are measured.

Per GEMM (paper Section III-B, VI-B): the output is cut into tiles, one tile per SM at a time; a wave of
tiles takes one tile's FLOPs at the GPU's per-SM ceiling, so time = waves x SMs x tile FLOPs / ceiling. The
tile is the one of quantization.TILE_SIZES (the paper's 128x256 and 256x128, and the smaller 128x128 and
64x128) that gives the least time, as cuBLAS picks a tile per shape (VI-B: "PyTorch's linear algebra
backend can use different tile sizes for each GEMM"): with 128x256 only, pythia-2.8b's
(2048,10240)x(10240,2560) would take 2 waves of 160 tiles, 220 us, where the H100 measured 136 us (64x128:
5 waves, 137 us). A GEMM that moves more bytes than it computes (the attention BMMs: b*a matrices of s x s)
is bound by bandwidth instead; a GEMM whose leading dimension is off the GPU's fast alignment runs slower by
the factor this GPU showed. Fused attention is its FLOPs at the GPU's measured flash rate, with h/a rounded
up to the kernel's head-dim bucket. Non-GEMM steps move bytes at the measured bandwidth, never faster than
one kernel's floor.

Calibration (reports/h100@2a60355/layer/figure1-*, b=4, s=2048, h=2560, H100, forward): the model gives QKV 405 us
(measured 419), MLP up 535 (569), MLP down 549 (531), logits at v=50304 2.62 ms (2.70) and at 50257 18.9 ms
(19.07), flash attention a=32 456 us (442), eager score GEMM a=32 386 us (429), softmax 716 us (717).
Non-GEMM steps are within ~30%; the model's layer is ~10% faster than measured (launch gaps, epilogues).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import pandas as pd

from models import DTYPE_BYTES, ModelConfig, layer_gemms

from ..quantization import TILE_SIZES, largest_power_of_two_dividing, tile_efficiency, tiles, wave_efficiency, waves

from .calibration import FLASH_HEAD_DIM_BUCKETS, ROLE_LAYOUT, flash_bucket, flash_padded_flops  # noqa: F401 (the one bucket list, re-exported)
from .gpus import GpuModel

TILES = ((128, 256), (256, 128))  # the paper's most efficient tile, in both orientations (VI-B): the checks' tiles
# flash attention runs h/a rounded up to one of its compiled head sizes (calibration.FLASH_HEAD_DIM_BUCKETS);
# measured on the H100 flash sweep (a=128, h/a=8..256): times step at 32, 64, 96, 128, then stay flat from
# 136 to 192 and from 200 to 256. The kernel's rate per padded FLOP still depends on the bucket (H100 sweep:
# h/a=32 ran 217 TFLOP/s, 64 311, 128 338): a calibrated GPU reads it from its table.


@dataclass(frozen=True)
class GemmEstimate:
    component: str
    pass_name: str  # forward | backward
    batch: int
    m: int
    n: int
    k: int
    tile: str
    tiles: int
    waves: int
    wave_efficiency: float
    tile_efficiency: float
    alignment_bytes: int  # the worst-aligned of m, n, k, in bytes
    slowdown: float
    compute_ms: float
    memory_ms: float
    time_ms: float
    calibration_factor: float | None = None  # measured / analytic of the nearest measured shapes (None: analytic)

    def to_dict(self) -> dict:
        return asdict(self)


def alignment_bytes(value: int, dtype: str) -> int:
    """The largest power-of-two byte alignment of a dimension of `value` elements."""
    return largest_power_of_two_dividing(value) * DTYPE_BYTES[dtype]


def _peak_flops_per_s(gpu: GpuModel, dtype: str) -> float:
    return (gpu.matmul_tflops_fp32 if dtype == "float32" else gpu.matmul_tflops) * 1e12


def estimate_gemm(component: str, pass_name: str, batch: int, m: int, n: int, k: int, gpu: GpuModel,
                  dtype: str, layout: str | None = None) -> GemmEstimate:
    """Model one (batch x) (m,k)x(k,n) GEMM on `gpu`: the wave/tile model, times the measured/modelled
    ratio of the nearest measured shapes (in `layout`, calibration.LAYOUTS, where the table has it) when the
    GPU has a calibration table (calibration.py)."""
    key = (component, pass_name, batch, m, n, k, dtype, layout, gpu.signature, id(gpu.calibration))
    hit = _GEMM_CACHE.get(key)
    if hit is None or hit[0] is not gpu.calibration:
        hit = (gpu.calibration, _estimate_gemm(component, pass_name, batch, m, n, k, gpu, dtype, layout))
        if len(_GEMM_CACHE) > 200_000:  # the candidate search asks for the same shapes again and again
            _GEMM_CACHE.clear()
        _GEMM_CACHE[key] = hit
    return hit[1]


_GEMM_CACHE: dict = {}


def _estimate_gemm(component: str, pass_name: str, batch: int, m: int, n: int, k: int, gpu: GpuModel,
                   dtype: str, layout: str | None = None) -> GemmEstimate:
    g = _analytic_gemm(component, pass_name, batch, m, n, k, gpu, dtype)
    if gpu.calibration is None:
        return g
    factor = gpu.calibration.gemm_factor(
        batch, m, n, k, dtype=dtype, signature=(gpu.signature, dtype), fast_alignment_bytes=gpu.fast_alignment_bytes,
        layout=layout if batch == 1 else None, analytic=lambda b, mm, nn, kk: _analytic_gemm("", "", b, mm, nn, kk, gpu, dtype).time_ms)
    if factor is None:
        return g
    return dataclasses.replace(g, time_ms=g.time_ms * factor, calibration_factor=factor)


def _analytic_gemm(component: str, pass_name: str, batch: int, m: int, n: int, k: int, gpu: GpuModel,
                   dtype: str) -> GemmEstimate:
    per_sm = _peak_flops_per_s(gpu, dtype) / gpu.sms

    def option(tile):  # (time, prefer the larger tile on a tie), tile
        return (waves(tiles(m, n, tile, batch), gpu.sms) * tile[0] * tile[1], -tile[0] * tile[1]), tile

    _, tile = min(option(tile) for tile in TILE_SIZES)
    n_tiles = tiles(m, n, tile, batch)
    n_waves = waves(n_tiles, gpu.sms)
    compute_ms = n_waves * 2 * tile[0] * tile[1] * k / per_sm * 1e3
    memory_ms = batch * (m * k + k * n + m * n) * DTYPE_BYTES[dtype] / (gpu.bandwidth_tbps * 1e12) * 1e3
    align = min(alignment_bytes(v, dtype) for v in (m, n, k))
    slowdown = gpu.slowdown(align)
    return GemmEstimate(component, pass_name, batch, m, n, k, f"{tile[0]}x{tile[1]}", n_tiles, n_waves,
                        wave_efficiency(n_tiles, gpu.sms), tile_efficiency(m, n, tile), align, slowdown,
                        compute_ms, memory_ms, max(compute_ms, memory_ms) * slowdown)


def gemm_estimates(cfg: ModelConfig, gpu: GpuModel, *, include_logits: bool = False,
                   only_logits: bool = False) -> list[GemmEstimate]:
    """Every GEMM of one layer (and/or the logit layer), forward and backward.

    Y(m,n) = X(m,k) W(k,n) has two backward GEMMs: dX(m,k) = dY W^T (inner n) and dW(k,n) = X^T dY (inner m);
    their output grids, and so their waves, differ from the forward's."""
    out = []
    for g in layer_gemms(cfg, include_logits=include_logits or only_logits):
        if only_logits and g.component != "logits":
            continue
        out.append(estimate_gemm(g.component, "forward", g.batch, g.m, g.n, g.k, gpu, cfg.dtype, ROLE_LAYOUT["fprop"]))
        out.append(estimate_gemm(g.component, "backward", g.batch, g.m, g.k, g.n, gpu, cfg.dtype, ROLE_LAYOUT["dgrad"]))
        out.append(estimate_gemm(g.component, "backward", g.batch, g.k, g.n, g.m, gpu, cfg.dtype, ROLE_LAYOUT["wgrad"]))
    return out


def flash_head_dim(head_dim: int) -> int | None:
    """The head size the fused kernel runs for h/a (None: the kernel does not support it)."""
    return flash_bucket(head_dim)


def flash_ms(cfg: ModelConfig, gpu: GpuModel, pass_name: str = "forward") -> float:
    """Causal fused attention: 4*b*(a/t)*s^2*(h/a padded) FLOPs, half of them skipped by the causal mask, at
    the calibrated rate of this head-size bucket (or the GPU table's one rate when uncalibrated)."""
    if gpu.flash_tflops is None or flash_head_dim(cfg.head_dim) is None:
        return math.nan
    bh, s = cfg.micro_batch_size * cfg.heads_per_gpu, cfg.seq_length
    flops = flash_padded_flops(bh, s, cfg.head_dim, True)
    cal = gpu.calibration
    if cal is not None and cfg.dtype == cal.dtype:
        found = cal.flash_rate(cfg.head_dim, bh, s, "forward")
        if found is not None:
            forward = flops / found[0] * 1e3
            if pass_name == "forward":
                return forward
            return forward * (cal.flash_backward_ratio(cfg.head_dim, bh, s) or gpu.flash_backward_ratio)
    forward = flops / (gpu.flash_tflops * 1e12) * 1e3
    return forward * (gpu.flash_backward_ratio if pass_name == "backward" else 1.0)


def flash_forward_ms(cfg: ModelConfig, gpu: GpuModel) -> float:
    return flash_ms(cfg, gpu, "forward")


def non_gemm_bytes(cfg: ModelConfig) -> dict[tuple[str, str], float]:
    """Bytes each memory-bound step of one layer reads plus writes, forward and backward.

    Biases ride on the GEMM epilogues in the forward; their gradients are reductions over b*s rows."""
    e = DTYPE_BYTES[cfg.dtype]
    bs, h, f = cfg.tokens, cfg.hidden_size, cfg.ffn_per_gpu
    heads, s, b = cfg.heads_per_gpu, cfg.seq_length, cfg.micro_batch_size
    swiglu, parallel = cfg.activation == "swiglu", cfg.residual == "parallel"
    out = {
        ("forward", "norm"): 4 * bs * h,  # two norms, each reads and writes b*s*h
        ("backward", "norm"): 6 * bs * h,  # reads x and dy, writes dx
        ("forward", "activation"): (3 if swiglu else 2) * bs * f,
        ("backward", "activation"): (5 if swiglu else 3) * bs * f,
        ("forward", "residual"): (4 if parallel else 6) * bs * h,
        ("backward", "residual"): (4 if parallel else 6) * bs * h,
    }
    if cfg.rotary_dims:  # in place on q and k, only the rotated dims move
        out[("forward", "rotary")] = out[("backward", "rotary")] = 4 * bs * heads * cfg.rotary_dims
    if cfg.bias:
        out[("backward", "bias")] = bs * (3 * cfg.hidden_per_gpu + h + (2 if swiglu else 1) * f + h)
    if cfg.attention == "eager":
        out[("forward", "softmax")] = 2 * b * heads * s * s
        out[("backward", "softmax")] = 3 * b * heads * s * s
        out[("forward", "layout")] = out[("backward", "layout")] = 8 * bs * cfg.hidden_per_gpu  # q,k,v,context copies
        if cfg.attention_dropout > 0:
            out[("forward", "dropout")] = out[("backward", "dropout")] = 2 * b * heads * s * s
    if cfg.hidden_dropout > 0:
        out[("forward", "hidden_dropout")] = out[("backward", "hidden_dropout")] = 4 * bs * h
    return {key: value * e for key, value in out.items()}


def _layer_rows(cfg: ModelConfig, gpu: GpuModel) -> list[dict]:
    rows = [{"pass": g.pass_name, "component": g.component, "kind": "gemm", "time_ms": g.time_ms}
            for g in gemm_estimates(cfg, gpu)]
    if cfg.attention != "eager":
        rows += [{"pass": p, "component": "flash_attention", "kind": "attention", "time_ms": flash_ms(cfg, gpu, p)}
                 for p in ("forward", "backward")]
    for (pass_name, component), nbytes in non_gemm_bytes(cfg).items():
        rows.append({"pass": pass_name, "component": component, "kind": "non-gemm",
                     "time_ms": _memory_bound_ms(nbytes, gpu)})
    return rows


def _memory_bound_ms(nbytes: float, gpu: GpuModel) -> float:
    return max(nbytes / (gpu.bandwidth_tbps * 1e12) * 1e3, gpu.kernel_floor_us * 1e-3)


def _logits_rows(cfg: ModelConfig, gpu: GpuModel) -> list[dict]:
    rows = [{"pass": g.pass_name, "component": "logits", "kind": "gemm", "time_ms": g.time_ms}
            for g in gemm_estimates(cfg, gpu, only_logits=True)]
    norm_bytes = cfg.tokens * cfg.hidden_size * DTYPE_BYTES[cfg.dtype]  # the final norm
    rows += [{"pass": "forward", "component": "norm", "kind": "non-gemm", "time_ms": _memory_bound_ms(2 * norm_bytes, gpu)},
             {"pass": "backward", "component": "norm", "kind": "non-gemm", "time_ms": _memory_bound_ms(3 * norm_bytes, gpu)}]
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).groupby(["pass", "component", "kind"], as_index=False, sort=False)["time_ms"].sum()


def layer_estimate(cfg: ModelConfig, gpu: GpuModel) -> pd.DataFrame:
    """One row per (pass, component) of one layer: kind (gemm | attention | non-gemm) and time_ms."""
    return _frame(_layer_rows(cfg, gpu))


def logits_estimate(cfg: ModelConfig, gpu: GpuModel) -> pd.DataFrame:
    """The logit layer: final norm and the h -> v/t GEMM, forward and backward."""
    return _frame(_logits_rows(cfg, gpu))


@dataclass(frozen=True)
class StepEstimate:
    layer_forward_ms: float
    layer_forward_backward_ms: float
    logits_forward_backward_ms: float
    step_ms: float  # L x layer (fwd+bwd) + logits (fwd+bwd)
    tokens_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def training_step(layer_forward_backward_ms: float, logits_forward_backward_ms: float, num_layers: int,
                  tokens: int) -> tuple[float, float]:
    """Whole-model training step (ms) and tokens/s: b*s / (L x layer fwd+bwd + logit fwd+bwd)."""
    step_ms = num_layers * layer_forward_backward_ms + logits_forward_backward_ms
    return step_ms, tokens / (step_ms * 1e-3)


def step_estimate(cfg: ModelConfig, gpu: GpuModel) -> StepEstimate:
    layer = _layer_rows(cfg, gpu)  # plain sums, no DataFrame: the candidate search calls this thousands of times
    fwd = sum(r["time_ms"] for r in layer if r["pass"] == "forward")
    layer_fb = sum(r["time_ms"] for r in layer)
    logits_fb = sum(r["time_ms"] for r in _logits_rows(cfg, gpu))
    step_ms, tps = training_step(layer_fb, logits_fb, cfg.num_layers, cfg.tokens)
    return StepEstimate(fwd, layer_fb, logits_fb, step_ms, tps)


def layer_forward_ms(cfg: ModelConfig, gpu: GpuModel) -> float:
    """One layer's forward (the prefill of serving.py), as plain sums."""
    return sum(r["time_ms"] for r in _layer_rows(cfg, gpu) if r["pass"] == "forward")

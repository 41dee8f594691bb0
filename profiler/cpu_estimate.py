"""How long a run would take on this CPU, said up front: CPU numbers prove the wiring, and a GPU-sized run on
a CPU takes hours, so such a run needs `--device cpu` said explicitly (CONFIRM_S)."""

from __future__ import annotations

import time

import torch

from models import ModelConfig, layer_flops, layer_gemms

from .layer_profile import ProfileOptions

CONFIRM_S = 120  # a CPU run estimated longer than this needs --device cpu said explicitly


def cpu_gflops() -> float:
    """This CPU's matmul rate, measured on a 512^3 float32 product."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    return 5 * 2 * 512**3 / (time.perf_counter() - t0) / 1e9


def layer_seconds(cfg: ModelConfig, options: ProfileOptions, gflops: float) -> float:
    """Rough wall time of one config: the layer's FLOPs over the measured matmul rate, times the steps the run
    takes (latency repetitions, warm-up windows, traced, traced warm-up, the floor's traced steps per GEMM)."""
    step = layer_flops(cfg, include_logits=options.include_logits, backward=options.backward) / (gflops * 1e9)
    layer_steps = 5 + 9 + options.active_steps + 4
    gemm_flops = sum(g.flops for g in layer_gemms(cfg, include_logits=options.include_logits)) * (3 if options.backward else 1)
    floor = gemm_flops / (gflops * 1e9) * (options.active_steps + 14) if options.measure_floor else 0.0
    return step * layer_steps + floor


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

"""The layer's floor: each GEMM of Table II timed alone, plus the fused attention timed alone.

A layer cannot run faster than its GEMMs and attention kernel back to back; measured / floor is how much
the rest of the layer (norms, rotary, activation, residuals, launch gaps) costs on top. The same per-GEMM
times check the profiler: a GEMM's time inside the layer should be within a few percent of it alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from models import ModelConfig, layer_gemms
from models.gemms import Gemm

from .attribution import attribute
from .timing import SLEEP_CYCLES_PER_S, TimingStats, summarize
from .timing import bench as _bench
from .trace import load_trace, record_trace


def _randn(*shape, device, dtype, requires_grad=False):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(requires_grad)


def _gemm_calls(gemm: Gemm, cfg: ModelConfig, device, dtype) -> tuple[Callable, Callable | None]:
    """Forward call as the layer issues it, and the backward's two GEMMs (input and weight gradients)."""
    m, n, k, batch = gemm.m, gemm.n, gemm.k, gemm.batch
    if batch == 1:  # a linear layer: x (m, k) @ W^T (k, n) (+ bias)
        x, w = _randn(m, k, device=device, dtype=dtype), _randn(n, k, device=device, dtype=dtype)
        bias = _randn(n, device=device, dtype=dtype) if cfg.bias and gemm.component != "logits" else None
        grad = _randn(m, n, device=device, dtype=dtype)
        return (lambda: F.linear(x, w, bias)), (lambda: (torch.mm(grad, w), torch.mm(grad.t(), x)))
    a, b = _randn(batch, m, k, device=device, dtype=dtype), _randn(batch, k, n, device=device, dtype=dtype)
    grad = _randn(batch, m, n, device=device, dtype=dtype)
    if gemm.component == "attention_score":
        out = torch.empty(batch, m, n, device=device, dtype=dtype)
        forward = lambda: torch.baddbmm(out, a, b, beta=0.0, alpha=0.1)  # noqa: E731
    else:
        forward = lambda: torch.bmm(a, b)  # noqa: E731
    return forward, (lambda: (torch.bmm(grad, b.transpose(1, 2)), torch.bmm(a.transpose(1, 2), grad)))


def _flash_calls(cfg: ModelConfig, device, dtype, dropout_p: float) -> tuple[Callable, Callable]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, s, heads, d = cfg.micro_batch_size, cfg.seq_length, cfg.heads_per_gpu, cfg.head_dim
    qkv = _randn(b, s, heads, 3, d, device=device, dtype=dtype, requires_grad=True)
    backends = [SDPBackend.FLASH_ATTENTION] if cfg.attention == "flash" else \
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]

    def forward():
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

    out = forward()
    grad = torch.randn_like(out)

    def backward():
        qkv.grad = None
        torch.autograd.grad(out, qkv, grad, retain_graph=True)

    return forward, backward


def kernel_time_alone(fn: Callable, device: torch.device, *, idle_ratio: float = 0.0, warmup_steps: int = 3,
                      steps: int = 15) -> TimingStats:
    """Median over calls of the summed duration of the kernels one call of `fn` launches (CUPTI)."""
    estimate_ms = summarize(_bench(fn, warmup_ms=5, rep_ms=20, flush_l2=False, device=device)).median_ms
    idle_cycles = int(idle_ratio * estimate_ms * 1e-3 * SLEEP_CYCLES_PER_S)
    idle = (lambda: torch.cuda._sleep(idle_cycles)) if idle_cycles > 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        path = record_trace(fn, trace_dir=Path(tmp), worker_name="alone", warmup_steps=warmup_steps,
                            active_steps=steps, device=device, flush=idle)  # the idle gap is left out like a flush
        activities = attribute(load_trace(path))
    per_call_ms = (activities.groupby("step")["dur_us"].sum() / 1e3).tolist()
    return summarize(per_call_ms)


def floor_times(cfg: ModelConfig, *, include_logits: bool, backward: bool, device, dtype,
                dropout: bool = True, warmup_ms: float = 25, rep_ms: float = 100,
                idle_ratio: float = 0.0) -> dict[tuple[str, str], TimingStats]:
    """(pass, component) -> timing of that GEMM (or the fused attention) alone, back to back.

    On a GPU the time is the kernels' own duration read from a torch.profiler trace, the instrument that
    measures them inside the layer, so launch overhead and event granularity cancel out of the
    comparison. `idle_ratio` gives the GPU the same duty cycle as inside the layer (see timing.bench).
    No L2 flush: inside the layer the activation input was just written by the previous kernel."""
    times: dict[tuple[str, str], TimingStats] = {}

    def bench(fn):
        if torch.device(device).type != "cuda":
            return summarize(_bench(fn, warmup_ms=warmup_ms, rep_ms=rep_ms, flush_l2=False, device=device))
        return kernel_time_alone(fn, torch.device(device), idle_ratio=idle_ratio)

    with torch.no_grad():
        for gemm in layer_gemms(cfg, include_logits=include_logits):
            forward, backward_fn = _gemm_calls(gemm, cfg, device, dtype)
            times[("forward", gemm.component)] = bench(forward)
            if backward:
                times[("backward", gemm.component)] = bench(backward_fn)
    if cfg.attention != "eager":
        forward, backward_fn = _flash_calls(cfg, device, dtype, cfg.attention_dropout if dropout else 0.0)
        with torch.no_grad():
            times[("forward", "flash_attention")] = bench(forward)
        if backward:
            times[("backward", "flash_attention")] = bench(backward_fn)
    return times

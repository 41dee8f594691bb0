"""The layer's floor: each GEMM of Table II timed alone, plus the fused attention timed alone.

A layer cannot run faster than its GEMMs and attention kernel back to back; measured / floor is how much
the rest of the layer (norms, rotary, activation, residuals, launch gaps) costs on top. The same per-GEMM
times check the profiler: a GEMM's time inside the layer should be within a few percent of it alone.

Like for like: each call alone is built as the layer issues it (profiler.gemm_calls, shared with the
sweeps), traced under the same policy as the layer (L2 flushed before each step, warm-up until stable), and
attributed by the same attribution: the "alone" time of (pass, component, role) sums exactly the kernels the
layer would attribute to it. The kernels that scatter dq/dk/dv into the packed QKV gradient land in `other`
here as they do in the layer, not in the attention's time.

Same power state: before each call alone a full layer step runs (the "conditioner"), then the L2 flush. A
large layer is power-capped (on the H100, pythia-12b's layer runs at 1575 MHz) while a GEMM alone with idle
gaps boosts to 1980 MHz; timed that way the floor was 20-30% too fast. The conditioner's kernels are cut
from the trace by where the flush ends on the GPU timeline. The H100 evidence of 2026-11-23 showed that a
conditioner alone is not enough: each call's trace starts after the previous one's export left the GPU
idle, and a few warm-up steps end before the power cap engages (floor at 1965 MHz vs the layer's 1365-1660
for the power-capped layers; the clock check flagged it). `min_warmup_ms` keeps each call's conditioned
steps running as long as the layer's own traced warm-up before recording.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch

from models import ModelConfig, layer_gemms

from .attribution import attribute_detailed
from .gemm_calls import Call, fused_attention_call, gemm_call
from .timing import L2Flusher, TimingStats, summarize
from .trace import load_trace, record_trace

Key = tuple[str, str, str]  # (pass, component, role)


def floor_calls(cfg: ModelConfig, *, include_logits: bool, backward: bool, device, dtype,
                dropout: bool = True) -> dict[str, Call]:
    """component -> the call that runs it alone (forward, or forward + backward)."""
    calls: dict[str, Call] = {}
    for gemm in layer_gemms(cfg, include_logits=include_logits):
        bias = cfg.bias and gemm.component != "logits"  # the logit layer has no bias (models/layer.py)
        calls[gemm.component] = gemm_call(gemm.component, gemm.batch, gemm.m, gemm.n, gemm.k, dtype=dtype,
                                          device=device, bias=bias, backward=backward)
    if cfg.attention != "eager":
        calls[f"{cfg.attention}_attention"] = fused_attention_call(
            cfg.micro_batch_size, cfg.seq_length, cfg.heads_per_gpu, cfg.head_dim, attention=cfg.attention,
            dtype=dtype, device=device, dropout_p=cfg.attention_dropout if dropout else 0.0, backward=backward)
    return calls


def kernel_times_alone(step: Callable[[], object], component: str, device: torch.device, *,
                       conditioner: Callable[[], object] | None = None, steps: int = 15,
                       on_recording: Callable[[], object] | None = None,
                       on_recorded: Callable[[], object] | None = None,
                       min_warmup_ms: float = 0.0, max_warmup: int = 40) -> tuple[dict[Key, TimingStats], dict]:
    """(pass, component, role) -> the summed duration per step of the kernels attributed to it (CUPTI),
    each step preceded by `conditioner` (a layer step) and an L2 flush; plus the trace's warm-up record."""
    on_gpu = device.type == "cuda"
    flusher = L2Flusher(device) if on_gpu else None

    def before_step():  # in the flush region: attribution leaves it out, and the cut below its GPU end
        if conditioner is not None:
            conditioner()
        if flusher is not None:
            flusher()

    with tempfile.TemporaryDirectory() as tmp:
        path, schedule = record_trace(step, trace_dir=Path(tmp), worker_name="alone", active_steps=steps,
                                      device=device, flush=before_step if (on_gpu or conditioner) else None,
                                      on_recording=on_recording, on_recorded=on_recorded, min_warmup_ms=min_warmup_ms,
                                      max_warmup=max_warmup)
        activities, left_out = attribute_detailed(load_trace(path))
    cut = activities["step"].map(left_out["flush_end_by_step"])
    activities = activities[cut.isna() | (activities["ts"] >= cut)]  # the conditioner's backward, too
    mine = activities[activities["component"] == component]
    per_step = mine.groupby(["pass", "role", "step"])["dur_us"].sum().unstack("step", fill_value=0.0)
    per_step = per_step.reindex(columns=sorted(activities["step"].unique()), fill_value=0.0)
    times = {(p, component, r): summarize((row / 1e3).tolist()) for (p, r), row in per_step.iterrows()}
    return times, schedule.to_dict()


def floor_times(cfg: ModelConfig, *, include_logits: bool, backward: bool, device, dtype,
                dropout: bool = True, conditioner: Callable[[], object] | None = None,
                steps: int = 15, on_recording: Callable[[], object] | None = None,
                on_recorded: Callable[[], object] | None = None,
                min_warmup_ms: float = 0.0, max_warmup: int = 40) -> tuple[dict[Key, TimingStats], dict]:
    """(pass, component, role) -> timing of that GEMM (or the fused attention) alone, and the warm-ups.

    The time is the kernels' own duration read from a torch.profiler trace, the instrument that measures
    them inside the layer, so launch overhead and event granularity cancel out of the comparison (on a CPU,
    where a trace holds ops, not kernels, the same code proves the wiring). `conditioner`: the layer's own
    step, run before each call alone so that the GPU is in the layer's power state."""
    device = torch.device(device)
    times: dict[Key, TimingStats] = {}
    warmups: dict = {}
    calls = floor_calls(cfg, include_logits=include_logits, backward=backward, device=device, dtype=dtype,
                        dropout=dropout)
    for component in list(calls):
        found, warmups[component] = kernel_times_alone(calls.pop(component).step, component, device,
                                                       conditioner=conditioner, steps=steps,
                                                       on_recording=on_recording, on_recorded=on_recorded, min_warmup_ms=min_warmup_ms,
                                                       max_warmup=max_warmup)
        times.update(found)
    return times, warmups

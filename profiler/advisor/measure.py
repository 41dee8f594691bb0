"""Timing shapes on the device: the advisor's one coupling to the layer builder (models.layer), the step
maker and layer profiler (profiler.layer_profile), the timing primitive (profiler.timing) and the ceiling
measurements (profiler.hardware). If their signatures move, this module is the one to adapt.

Measurements are interleaved: in each round every shape is timed once, in a shuffled order, so that a
drift of the GPU's clock (power, temperature) lands on all shapes alike and a per-round ratio cancels it.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from models import ModelConfig
from models.layer import MLP, LogitLayer, build_layer, random_input, torch_dtype

from ..hardware import measure_copy_bandwidth, measure_matmul_peak
from ..layer_profile import ProfileOptions, make_step, profile_layer
from ..timing import KeepBusy, bench, summarize


# A CPU run proves the wiring, so it spends little time per call; on the GPU bench runs with its defaults
# (the project's one warm-up, repetition and L2-flush policy).
CPU_BENCH = {"warmup_ms": 1.0, "rep_ms": 5.0, "min_reps": 2}


@dataclass
class Subject:
    """One shape to time: its steps by name, and for each step an optional key shared with other shapes
    whose step is the same computation (the logit layer of shapes with the same h and v): timed once a round."""
    name: str
    steps: dict[str, Callable[[], object]]
    shared: dict[str, str] = field(default_factory=dict)


def device_ceilings(device: torch.device, dtype: str) -> tuple[float, float]:
    """(GEMM TFLOP/s, copy TB/s) measured on this device now."""
    peak = measure_matmul_peak(device, dtype=torch_dtype(dtype))
    copy = measure_copy_bandwidth(device)
    release(device)
    return peak["tflops"], copy["tbps"]


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def layer_subjects(configs: list[ModelConfig], device: torch.device, *, again: str | None = None) -> list[Subject]:
    """Each config's layer (forward; forward + backward) and its logit layer (forward + backward).

    `again`: the name of a second subject timing the first config's very same steps (no shared logits), at
    its own place in each round's shuffled order: the given shape against itself (ranking.self_spread)."""
    logits: dict[str, Callable] = {}
    subjects = []
    for cfg in configs:
        dtype = torch_dtype(cfg.dtype)
        model = build_layer(cfg, device=device, dtype=dtype).train()
        x = random_input(cfg, device=device, dtype=dtype, requires_grad=True)
        key = f"logits h={cfg.hidden_size} v/t={cfg.vocab_per_gpu} b*s={cfg.tokens} {cfg.dtype}"
        if key not in logits:
            torch.manual_seed(0)
            head = LogitLayer(cfg, device=device, dtype=dtype).train()
            logits[key] = make_step(head, random_input(cfg, device=device, dtype=dtype, requires_grad=True), True)
        subjects.append(Subject(cfg.name, {"layer_forward": make_step(model, x, False),
                                           "layer_forward_backward": make_step(model, x, True),
                                           "logits_forward_backward": logits[key]},
                                {"logits_forward_backward": key}))
    if again is not None and subjects:
        subjects.append(Subject(again, dict(subjects[0].steps)))
    return subjects


def logits_subjects(configs: list[ModelConfig], device: torch.device, names: list[str]) -> list[Subject]:
    """The logit layer alone (final norm + h -> v/t GEMM), forward + backward."""
    subjects = []
    for cfg, name in zip(configs, names):
        dtype = torch_dtype(cfg.dtype)
        torch.manual_seed(0)
        head = LogitLayer(cfg, device=device, dtype=dtype).train()
        x = random_input(cfg, device=device, dtype=dtype, requires_grad=True)
        subjects.append(Subject(name, {"logits_forward_backward": make_step(head, x, True)}))
    return subjects


def mlp_subjects(configs: list[ModelConfig], device: torch.device, names: list[str]) -> list[Subject]:
    """The MLP block alone (up, gate, activation, down), forward and forward + backward."""
    subjects = []
    for cfg, name in zip(configs, names):
        dtype = torch_dtype(cfg.dtype)
        torch.manual_seed(0)
        block = MLP(cfg, device=device, dtype=dtype).train()
        x = random_input(cfg, device=device, dtype=dtype, requires_grad=True)
        subjects.append(Subject(name, {"mlp_forward": make_step(block, x, False),
                                       "mlp_forward_backward": make_step(block, x, True)}))
    return subjects


def time_rounds(subjects: list[Subject], *, rounds: int, device: torch.device, seed: int = 0,
                progress: Callable[[str], None] | None = None, bench_budget: dict | None = None) -> pd.DataFrame:
    """One row per (round, subject, step): the median of one bench call and its spread.

    `bench_budget`: bench's warm-up/repetition arguments (default: its own on a GPU, CPU_BENCH on a CPU).
    `order` is the subject's place in that round's shuffled order; `shared` names the key whose timing a
    subject reused (None when it was timed for this subject).

    On a GPU every bench call starts in the sustained power state (profiler.timing.POLICY["sweeps"]: a keep-busy
    GEMM chain queued before it), so a subject that follows a light one is not timed at a boosted clock."""
    rng = random.Random(seed)
    budget = bench_budget if bench_budget is not None else (CPU_BENCH if device.type == "cpu" else {})
    keep_busy = KeepBusy(device) if device.type == "cuda" else None
    rows = []
    for r in range(rounds):
        started = time.perf_counter()
        order = list(range(len(subjects)))
        rng.shuffle(order)
        done: dict[str, dict] = {}
        for position, index in enumerate(order):
            subject = subjects[index]
            for what, step in subject.steps.items():
                key = subject.shared.get(what)
                reused = key is not None and key in done
                if reused:
                    timing = done[key]
                else:
                    stats = summarize(bench(step, device=device, keep_busy=keep_busy, **budget))
                    timing = {"time_ms": stats.median_ms, "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms,
                              "repeats": stats.repeats}
                    if key is not None:
                        done[key] = timing
                rows.append({"round": r, "order": position, "candidate": subject.name, "what": what, **timing,
                             "shared": key if reused else None})
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: {len(subjects)} shapes in {time.perf_counter() - started:.1f} s")
    return pd.DataFrame(rows)


def profile_options() -> ProfileOptions:
    """Forward + backward, no floor (the per-component difference needs the layer's own times only)."""
    return ProfileOptions(mode="forward+backward", measure_floor=False)


def cpu_profile_options() -> ProfileOptions:
    """The same, with the small budgets the layer command uses on a CPU (only the fields this version has)."""
    small = {"active_steps": 3, "bench_warmup_ms": 10.0, "bench_rep_ms": 50.0, "warmup_steps": 1}
    known = {f.name for f in dataclasses.fields(ProfileOptions)}
    return ProfileOptions(mode="forward+backward", measure_floor=False, **{k: v for k, v in small.items() if k in known})


def profile_components(configs: list[ModelConfig], device: torch.device, out_dir: Path,
                       peak_tflops: float | None = None,
                       progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The layer profiler's per-component table (forward + backward) of each config, stacked."""
    options = cpu_profile_options() if device.type == "cpu" else profile_options()
    frames = []
    for cfg in configs:
        if progress is not None:
            progress(f"profiling {cfg.name} (forward+backward)")
        result = profile_layer(cfg, options, out_dir=out_dir, device=device, peak_tflops=peak_tflops)
        frames.append(result.components)
        release(device)
    return pd.concat(frames, ignore_index=True)

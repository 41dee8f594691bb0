"""What a layer run will profile on this device: the configs and options as they will run, and every switch
the device made to them (printed by the command and recorded per config in run.json).

A CPU proves the wiring, not GPU performance, so a run there gets small defaults: s <= 128, float32, SDPA in
place of the CUDA-only flash kernel, fewer profiled steps, shorter timing budgets and a capped traced warm-up
(a shared CPU's host clock may never settle). None of these is silent: each is a `Switch`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from models import count_parameters, load_config
from models.config import ModelConfig

from .errors import UserError
from .layer_profile import ProfileOptions

CPU_SEQ_LENGTH = 128  # small defaults without CUDA, so a CPU run finishes in seconds
CPU_MAX_LAYER_PARAMS = 400_000_000
CPU_ACTIVE_STEPS, GPU_ACTIVE_STEPS = 3, 10
CPU_MAX_TRACE_WARMUP_STEPS = 4
CPU_BENCH_MS, GPU_BENCH_MS = (10.0, 50.0), (50.0, 300.0)  # (warm-up, repetition) budgets of the timed phases
DEFAULT_MIN_WARMUP_STEPS = 2


@dataclass(frozen=True)
class Switch:
    """One change the device made to what was asked (or to a default)."""

    field: str
    before: object
    after: object
    why: str

    def to_dict(self) -> dict:  # run.json's spelling, kept from before this class existed
        return {"field": self.field, "from": self.before, "to": self.after, "why": self.why}

    def line(self, name: str) -> str:
        return f"notice: {name}: {self.field} {self.before} -> {self.after} ({self.why})"


@dataclass(frozen=True)
class LayerRequest:
    """What the user asked for (None: the config's or the device's default)."""

    configs: tuple[str, ...]
    batch: int | None = None
    seq_len: int | None = None
    dtype: str | None = None
    attention: str | None = None
    tensor_parallel: int | None = None
    mode: str = "forward"
    include_logits: bool = False
    measure_floor: bool = True
    iters: int | None = None
    warmup: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch", "seq_len", "tensor_parallel", "iters"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')}: must be a positive whole number, got {value}")
        if self.warmup is not None and self.warmup < 0:
            raise UserError(f"--warmup: the fewest warm-up steps must be 0 or more, got {self.warmup}")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_configs(request: LayerRequest, device: torch.device) -> tuple[list[ModelConfig], dict[str, list[Switch]]]:
    """The configs as they will run, and per config the switches made for this device."""
    on_cpu = device.type == "cpu"
    configs, switches = [], {}
    for ref in request.configs:
        base = load_config(ref)
        overrides = {"micro_batch_size": request.batch, "seq_length": request.seq_len, "attention": request.attention,
                     "tensor_parallel": request.tensor_parallel, "dtype": request.dtype}
        made = []
        if on_cpu:
            if request.seq_len is None and base.seq_length > CPU_SEQ_LENGTH:
                overrides["seq_length"] = CPU_SEQ_LENGTH
                made.append(Switch("seq_length", base.seq_length, CPU_SEQ_LENGTH,
                                   "CPU default: small enough to finish in seconds"))
            if request.dtype is None and base.dtype != "float32":  # an explicit --dtype is the user's to keep
                overrides["dtype"] = "float32"
                made.append(Switch("dtype", base.dtype, "float32", "half-precision matmuls on a CPU are emulated and slow"))
            if (request.attention or base.attention) == "flash":
                overrides["attention"] = "sdpa"
                made.append(Switch("attention", "flash", "sdpa",
                                   "the flash kernel needs CUDA; PyTorch's SDPA picks its CPU kernel"))
        cfg = load_config(ref, **overrides)
        if on_cpu and count_parameters(cfg).per_layer > CPU_MAX_LAYER_PARAMS:
            raise UserError(f"config: {cfg.name} has {count_parameters(cfg).per_layer / 1e6:.0f}M parameters per layer, "
                            "too large to profile on the CPU; run it on a GPU")
        configs.append(cfg)
        switches[cfg.name] = made
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UserError("--config: the same config is named twice; give each config once")
    return configs, switches


def resolve_options(request: LayerRequest, device: torch.device) -> tuple[ProfileOptions, list[Switch]]:
    """The profiling options as they will run (the run directory's resume identity) and the CPU's switches."""
    on_cpu = device.type == "cpu"
    made: list[Switch] = []
    min_warmup = DEFAULT_MIN_WARMUP_STEPS if request.warmup is None else request.warmup
    options = ProfileOptions(mode=request.mode, include_logits=request.include_logits,
                             measure_floor=request.measure_floor, min_trace_warmup_steps=min_warmup)
    if request.iters is not None:
        options = replace(options, active_steps=request.iters)
    elif on_cpu:
        options = replace(options, active_steps=CPU_ACTIVE_STEPS)
        made.append(Switch("iters", GPU_ACTIVE_STEPS, CPU_ACTIVE_STEPS, "CPU default: fewer interleaved rounds"))
    if on_cpu:
        warmup_ms, rep_ms = CPU_BENCH_MS
        options = replace(options, bench_warmup_ms=warmup_ms, bench_rep_ms=rep_ms)
        made.append(Switch("timing budget (warm-up, repetitions)", f"{GPU_BENCH_MS[0]:g}+{GPU_BENCH_MS[1]:g} ms",
                           f"{warmup_ms:g}+{rep_ms:g} ms", "CPU default: host-clock timings prove the wiring only"))
        cap = max(CPU_MAX_TRACE_WARMUP_STEPS, min_warmup)
        made.append(Switch("most warm-up windows", options.max_trace_warmup_steps, cap,
                           "a shared CPU's host clock may never settle; the cap ends the warm-up"))
        options = replace(options, max_trace_warmup_steps=cap)
    else:
        options = replace(options, bench_warmup_ms=GPU_BENCH_MS[0], bench_rep_ms=GPU_BENCH_MS[1])
    return options, made

"""What a sweep is: a typed, validated spec, expanded into points whose shapes come from Table II.

Every transformer GEMM's shape is read off `models.layer_gemms` for a `ModelConfig` built per point, so the
sweeps, the layer profiler and the advisor share one definition of (batch, m, n, k). A point's identity
(its `key`) is everything that changes the measurement: kind, shape, sweep parameters, dtype, GPU, tag;
never the timing budget.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field

from models import ModelConfig, flash_attention_flops, layer_gemms
from models.config import ConfigError

from ..errors import UserError

# kind -> the Table II component it measures (None: a plain GEMM grid or fused attention)
TRANSFORMER_KINDS = {
    "qkv": "qkv_transform", "score": "attention_score", "aov": "attention_over_values",
    "out-proj": "out_projection", "mlp-up": "mlp_up", "mlp-down": "mlp_down", "logits": "logits",
}
KINDS = ("mm", "bmm", *TRANSFORMER_KINDS, "flash", "swiglu")
# the parameter each kind is plotted against (the x axis of the paper's figure)
SWEPT = {"mm": "k", "bmm": "m", "logits": "v", "swiglu": "ffn",
         **{kind: "h" for kind in ("qkv", "score", "aov", "out-proj", "mlp-up", "mlp-down", "flash")}}


def parse_values(text: str, flag: str) -> tuple[int, ...]:
    """'1024', '1024,2048', '64:1024:64' (stop inclusive) or a mix '32,64:256:64'."""
    values: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        pieces = part.split(":")
        try:
            numbers = [int(p) for p in pieces]
        except ValueError:
            raise UserError(f"{flag}: '{part}' is not a whole number or START:STOP:STEP range") from None
        if len(numbers) == 1:
            values.append(numbers[0])
            continue
        if len(numbers) not in (2, 3):
            raise UserError(f"{flag}: '{part}' should be START:STOP or START:STOP:STEP")
        start, stop, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
        if step <= 0:
            raise UserError(f"{flag}: step {step} in '{part}' must be positive")
        if stop < start:
            raise UserError(f"{flag}: stop {stop} is below start {start} in '{part}'; write START:STOP:STEP "
                            "with STOP >= START")
        values.extend(range(start, stop + 1, step))
    if not values:
        raise UserError(f"{flag}: no values given")
    bad = [v for v in values if v <= 0]
    if bad:
        raise UserError(f"{flag}: values must be positive, got {bad[0]}")
    return tuple(dict.fromkeys(values))  # drop repeats, keep order


@dataclass(frozen=True)
class Budget:
    """Per-point timing budget handed to profiler.timing.bench (see scripts/bench_sweep_speed.py for why
    these defaults: ~20+ points/s on an H100 and within a few % of a long do_bench)."""
    warmup_ms: float = 5.0
    rep_ms: float = 30.0
    min_reps: int = 10
    max_reps: int = 300
    keep_busy_ms: float = 10.0  # profiler.timing.KEEP_BUSY_MS: the GPU kept under load between points (0: off)
    busy_ratio: float = 1.0  # keep-busy after each repetition, in multiples of one call: a fixed duty cycle


@dataclass(frozen=True)
class SweepSpec:
    kind: str
    h: tuple[int, ...] = ()  # hidden sizes
    heads: tuple[int, ...] = ()  # a (exclusive with head_dim)
    head_dim: tuple[int, ...] = ()  # h/a held fixed instead of a
    t: tuple[int, ...] = (1,)
    b: tuple[int, ...] = (4,)
    s: tuple[int, ...] = (2048,)
    v: tuple[int, ...] = ()
    ffn: tuple[int, ...] = ()  # SwiGLU intermediate sizes
    m: tuple[int, ...] = ()
    n: tuple[int, ...] = ()
    k: tuple[int, ...] = ()
    batch: tuple[int, ...] = (1,)  # bmm batch count
    causal: bool = False
    dtype: str = "bfloat16"
    tag: str = ""
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)


def _need(spec: SweepSpec, *names: str) -> None:
    examples = {"h": "--h 1024:8192:1024", "v": "--v 50176:50432:1", "ffn": "--ffn 10880:11264:64",
                "m": "--m 4096", "n": "--n 4096", "k": "--k 64:6144:64"}
    for name in names:
        if not getattr(spec, name):
            raise UserError(f"--{name}: required for sweep {spec.kind} (e.g. {examples[name]})")


def validate(spec: SweepSpec) -> None:
    if spec.kind not in KINDS:
        import difflib
        near = difflib.get_close_matches(spec.kind, KINDS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(f"kind: '{spec.kind}' is not one of {', '.join(KINDS)}{hint}")
    if spec.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype: '{spec.dtype}' is not one of float32, bfloat16, float16")
    if spec.heads and spec.head_dim:
        raise UserError("--heads/--head-dim: give one of them (a fixed a, or a fixed h/a), not both")
    if spec.kind in ("mm", "bmm"):
        _need(spec, "m", "n", "k")
    elif spec.kind == "logits":
        _need(spec, "h", "v")
    elif spec.kind == "swiglu":
        _need(spec, "h", "ffn")
    else:
        _need(spec, "h")
    if spec.kind == "flash" and spec.dtype == "float32":
        raise UserError("--dtype: the flash-attention kernel runs in bfloat16 or float16, not float32")
    b = spec.budget
    if b.warmup_ms < 0 or b.rep_ms <= 0 or b.min_reps < 1 or b.max_reps < b.min_reps:
        raise UserError("--warmup-ms/--rep-ms/--min-reps/--max-reps: need warmup >= 0, rep > 0, "
                        "1 <= min-reps <= max-reps")
    if b.keep_busy_ms < 0:
        raise UserError(f"--keep-busy-ms: must be >= 0 (0 turns it off), got {b.keep_busy_ms}")
    if b.busy_ratio < 0:
        raise UserError(f"--busy-ratio: must be >= 0 (0: no keep-busy between repetitions), got {b.busy_ratio}")


@dataclass(frozen=True)
class SweepPoint:
    """One measurement: a GEMM (batch x (m,k)x(k,n)) or a fused attention call, with the sweep parameters
    that produced it. Absent parameters are None (e.g. h for an mm point)."""
    kind: str
    component: str
    batch: int
    m: int
    n: int
    k: int
    flops: int
    h: int | None = None
    a: int | None = None
    t: int | None = None
    b: int | None = None
    s: int | None = None
    v: int | None = None
    ffn: int | None = None
    causal: bool | None = None
    swept: str = field(default="", compare=False)  # the x axis; for mm/bmm, the dimension that varies

    @property
    def head_dim(self) -> int | None:  # h/a
        return self.h // self.a if self.h and self.a else None

    @property
    def x(self) -> int:
        return getattr(self, self.x_name)

    @property
    def x_name(self) -> str:
        return self.swept or SWEPT[self.kind]

    def identity(self, *, dtype: str, gpu: str, tag: str) -> dict:
        fields = {k: v for k, v in asdict(self).items() if v is not None and k not in ("flops", "swept")}
        return {**fields, "dtype": dtype, "gpu": gpu, "tag": tag}

    def key(self, *, dtype: str, gpu: str, tag: str) -> str:
        return point_key(self.identity(dtype=dtype, gpu=gpu, tag=tag))


IDENTITY_FIELDS = ("kind", "component", "batch", "m", "n", "k", "h", "a", "t", "b", "s", "v", "ffn", "causal",
                   "dtype", "gpu", "tag")


def point_key(record: dict) -> str:
    """The resume key of a point: its identity fields, canonical JSON (also works on a stored record)."""
    return json.dumps({f: record[f] for f in IDENTITY_FIELDS if record.get(f) is not None}, sort_keys=True)


def _config(h: int, a: int, t: int, b: int, s: int, **extra) -> ModelConfig:
    """The model a point stands for; positional 'none' because rotary tables are irrelevant to a GEMM and
    would reject head dims such as 1 that the Figure 7 sweeps need."""
    try:
        return ModelConfig(name="sweep", hidden_size=h, num_attention_heads=a, num_layers=1, seq_length=s,
                           micro_batch_size=b, tensor_parallel=t, positional="none", attention="eager", **extra)
    except ConfigError as exc:
        raise UserError(f"h={h}, a={a}, t={t}: {exc}") from None


def _heads_for(spec: SweepSpec, h: int) -> list[int]:
    if spec.head_dim:
        out = []
        for d in spec.head_dim:
            if h % d:
                raise UserError(f"--h: {h} is not divisible by h/a={d}; step h in multiples of {d}")
            out.append(h // d)
        return out
    heads = spec.heads or (128,)
    for a in heads:
        if h % a:
            raise UserError(f"--h: {h} is not divisible by a={a}; step h in multiples of a (e.g. {a}:{a * 64}:{a})")
    return list(heads)


def _gemm(cfg: ModelConfig, component: str):
    return next(g for g in layer_gemms(cfg, include_logits=True) if g.component == component)


def _innermost_varying(spec: SweepSpec, order: tuple[str, ...]) -> str:
    """The plotted dimension of a GEMM grid: the first of `order` given more than one value."""
    return next((name for name in order if len(getattr(spec, name)) > 1), order[0])


def expand(spec: SweepSpec) -> list[SweepPoint]:
    """All points of a sweep, in the order they are measured (parameter lists' order, swept value last)."""
    kind = spec.kind
    if kind == "mm":
        swept = _innermost_varying(spec, ("k", "n", "m"))
        return [SweepPoint(kind, "mm", 1, m, n, k, 2 * m * n * k, swept=swept)
                for m, n, k in itertools.product(spec.m, spec.n, spec.k)]
    if kind == "bmm":
        swept = _innermost_varying(spec, ("m", "k", "n", "batch"))
        return [SweepPoint(kind, "bmm", bt, m, n, k, 2 * bt * m * n * k, swept=swept)
                for bt, n, k, m in itertools.product(spec.batch, spec.n, spec.k, spec.m)]
    points: list[SweepPoint] = []
    if kind == "logits":
        for t, b, s, h, v in itertools.product(spec.t, spec.b, spec.s, spec.h, spec.v):
            if v % t:
                raise UserError(f"--v: {v} cannot be split over t={t} GPUs; use v divisible by t")
            cfg = _config(h, t, t, b, s, vocab_size=v, padded_vocab_size=v)  # a is irrelevant: a = t
            g = _gemm(cfg, "logits")
            points.append(SweepPoint(kind, g.component, g.batch, g.m, g.n, g.k, g.flops, h=h, t=t, b=b, s=s, v=v))
        return points
    if kind == "swiglu":
        for t, b, s, h, ffn in itertools.product(spec.t, spec.b, spec.s, spec.h, spec.ffn):
            a = (spec.heads or (t,))[0]
            cfg = _config(h, a, t, b, s, activation="swiglu", intermediate_size=ffn)
            # mlp_gate has mlp_up's shape: measured once, counted twice by the analysis
            for component in ("mlp_up", "mlp_down"):
                g = _gemm(cfg, component)
                points.append(SweepPoint(kind, component, g.batch, g.m, g.n, g.k, g.flops,
                                         h=h, t=t, b=b, s=s, ffn=ffn))
        return points
    for t, b, s, h in itertools.product(spec.t, spec.b, spec.s, spec.h):
        for a in _heads_for(spec, h):
            cfg = _config(h, a, t, b, s)
            if kind == "flash":
                if cfg.head_dim % 8 or cfg.head_dim > 256:
                    raise UserError(f"--h: flash attention needs h/a a multiple of 8 and at most 256; h={h}, a={a} "
                                    f"gives {cfg.head_dim}")
                points.append(SweepPoint(kind, "flash_attention", cfg.micro_batch_size * cfg.heads_per_gpu, s, s,
                                         cfg.head_dim, flash_attention_flops(cfg) // (2 if spec.causal else 1),
                                         h=h, a=a, t=t, b=b, s=s, causal=spec.causal))
            else:
                g = _gemm(cfg, TRANSFORMER_KINDS[kind])
                points.append(SweepPoint(kind, g.component, g.batch, g.m, g.n, g.k, g.flops, h=h, a=a, t=t, b=b, s=s))
    # sort so each line of the plot (one a, or one h/a) is measured in order of h
    return sorted(points, key=lambda p: (p.t, p.b, p.s, p.a if spec.heads or not spec.head_dim else p.head_dim, p.h))

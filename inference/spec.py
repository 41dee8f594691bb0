"""What a bench run measures: one frozen dataclass, validated in one place, and the per-model checks
(tensor parallelism, context length) that need the model's config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from profiler.errors import UserError

from .checkpoints import DEFAULT_ROOT, BenchModel
from .engines.base import ENGINES, get_engine
from .metrics import DTYPE_BYTES

POSITIONS_GRANULE = 256  # a built checkpoint's raised max_position_embeddings is rounded up to this


@dataclass(frozen=True)
class BenchSpec:
    models: tuple[str, ...]
    engines: tuple[str, ...] = ("hf", "mii")
    batches: tuple[int, ...] = (1, 8)
    prompt_lens: tuple[int, ...] = (128,)
    new_tokens: int = 64
    repeats: int = 5
    warmup_s: float = 2.0  # untimed generations per row for this long (at least one)
    dtype: str = "float16"
    out: Path = Path("runs/inference")
    checkpoints: Path = DEFAULT_ROOT
    tensor_parallel: int = 1  # MII only; the transformers baseline runs on one GPU
    max_params: float | None = None  # models above this many parameters are left out
    seed: int = 0  # the prompts
    order_seed: int | None = None  # the timed order of engines and rows; None: drawn and recorded
    device: str | None = None
    # built checkpoints get positions for at least this many tokens, so that a second bench (the decode
    # sweep) shares the first one's checkpoints instead of building them again
    reserve_context: int = 0
    # rows already recorded with these statuses are measured again (after a fix: mismatch, unchecked)
    redo: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    @property
    def max_context(self) -> int:
        return max(self.prompt_lens) + self.new_tokens


def validate(spec: BenchSpec) -> None:
    if not spec.models:
        raise UserError("--models: give at least one model (a bundled name, a config file or a checkpoint directory)")
    for name in spec.engines:
        if name not in ENGINES:
            get_engine(name)  # raises with the did-you-mean
    if not spec.engines:
        raise UserError(f"--engines: give at least one of {', '.join(ENGINES)}")
    for flag, values in (("--batch", spec.batches), ("--prompt-len", spec.prompt_lens)):
        if not values or any(not isinstance(v, int) or v < 1 for v in values):
            raise UserError(f"{flag}: give whole numbers >= 1, comma-separated, got {','.join(map(str, values))}")
    checks = [("--new-tokens", spec.new_tokens, 2), ("--repeats", spec.repeats, 1),
              ("--tensor-parallel", spec.tensor_parallel, 1)]
    for flag, value, low in checks:
        if not isinstance(value, int) or value < low:
            why = " (decode latency needs at least two new tokens)" if flag == "--new-tokens" else ""
            raise UserError(f"{flag}: must be a whole number >= {low}, got {value}{why}")
    if not isinstance(spec.warmup_s, (int, float)) or spec.warmup_s < 0:
        raise UserError(f"--warmup-s: must be a number of seconds >= 0, got {spec.warmup_s}")
    if spec.dtype not in DTYPE_BYTES:
        raise UserError(f"--dtype: '{spec.dtype}' is not one of {', '.join(DTYPE_BYTES)}")
    from .results import DONE_STATUSES

    unknown = [s for s in spec.redo if s not in DONE_STATUSES]
    if unknown:
        raise UserError(f"--redo: '{unknown[0]}' is not a recorded status; give some of {', '.join(DONE_STATUSES)}")
    if spec.max_params is not None and spec.max_params <= 0:
        raise UserError(f"--max-params: must be positive, got {spec.max_params}")


def fit_model(model: BenchModel, spec: BenchSpec) -> BenchModel:
    """The model as the bench will build it. A random-weight checkpoint built from a config gets enough
    positions for the longest prompt plus the new tokens (rotary positions have no learned table, so this
    changes no weight; the raised value is recorded in every row); a user's checkpoint is used as it is."""
    cfg = model.config
    if any(e != "hf" for e in spec.engines) and cfg.num_attention_heads % spec.tensor_parallel:
        raise UserError(f"--tensor-parallel: {model.name}'s {cfg.num_attention_heads} heads cannot be split "
                        f"over {spec.tensor_parallel} GPUs")
    if spec.max_context > cfg.max_position_embeddings and (model.checkpoint_dir is not None or cfg.positional != "rotary"):
        raise UserError(f"--prompt-len/--new-tokens: {max(spec.prompt_lens)}+{spec.new_tokens} tokens exceed "
                        f"{model.name}'s max_position_embeddings {cfg.max_position_embeddings}; shorten them")
    needed = max(spec.max_context, spec.reserve_context)
    if needed <= cfg.max_position_embeddings or model.checkpoint_dir is not None or cfg.positional != "rotary":
        return model
    positions = -(-needed // POSITIONS_GRANULE) * POSITIONS_GRANULE
    return dataclasses.replace(model, config=cfg.replace(max_position_embeddings=positions))

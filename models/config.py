"""The typed model configuration: one frozen dataclass, validated in one place.

Names follow the paper's Table I where a symbol exists (h, a, L, s, b, v, t) and say so in comments;
every per-GPU shape of Table II is derived here, so the layer, the profiler, the sweeps and the
advisor all read the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields

ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONALS = ("rotary", "learned", "none")
RESIDUALS = ("parallel", "sequential")
ATTENTIONS = ("eager", "sdpa", "flash")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # bytes per element, for every byte count
# a config's name names its files (traces, checkpoints, scratch directories): letters, digits and . _ + -,
# starting with a letter or digit (so never '', '.', '..', a hidden file or a path), at most 100 characters
NAME_CHARACTERS = "letters, digits, '.', '_', '+' and '-'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
# the deepest published transformers have about 100-200 layers; beyond this a layer count is a typo
MAX_LAYERS = 10_000


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line that names the field and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int  # h
    num_attention_heads: int  # a
    num_layers: int  # L
    seq_length: int = 2048  # s
    micro_batch_size: int = 1  # b
    vocab_size: int = 50277  # v, as the tokenizer has it
    padded_vocab_size: int | None = None  # embedding rows; default pads v as GPT-NeoX does
    vocab_divisible_by: int = 128  # GPT-NeoX's make-vocab-size-divisible-by (times t)
    intermediate_size: int | None = None  # MLP width; default 4h for gelu, required for swiglu
    activation: str = "gelu"
    norm: str = "layernorm"
    norm_epsilon: float = 1e-5
    positional: str = "rotary"
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    max_position_embeddings: int = 2048
    residual: str = "parallel"  # parallel = GPT-J / GPT-NeoX, sequential = GPT-2
    attention: str = "eager"
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    bias: bool = True
    tie_word_embeddings: bool = False
    dtype: str = "bfloat16"
    tensor_parallel: int = 1  # t: shapes below are per GPU, as in Table II
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        validate(self)

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:  # h/a
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.hidden_size

    @property
    def embedding_rows(self) -> int:
        if self.padded_vocab_size is not None:
            return self.padded_vocab_size
        multiple = self.vocab_divisible_by * self.tensor_parallel
        return math.ceil(self.vocab_size / multiple) * multiple

    @property
    def rotary_dims(self) -> int:
        if self.positional != "rotary":
            return 0
        return int(self.head_dim * self.rotary_pct)

    @property
    def tokens(self) -> int:  # b*s, the GEMMs' row count
        return self.micro_batch_size * self.seq_length

    # per-GPU shapes under t-way tensor parallelism (paper Table II)
    @property
    def heads_per_gpu(self) -> int:  # a/t
        return self.num_attention_heads // self.tensor_parallel

    @property
    def hidden_per_gpu(self) -> int:  # h/t
        return self.hidden_size // self.tensor_parallel

    @property
    def ffn_per_gpu(self) -> int:  # 4h/t (or intermediate/t)
        return self.ffn_size // self.tensor_parallel

    @property
    def vocab_per_gpu(self) -> int:  # v/t: Megatron splits the logit layer over the vocabulary
        return self.embedding_rows // self.tensor_parallel

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(ModelConfig))


def safe_name(text: object, fallback: str = "config") -> str:
    """`text` made into a valid config name: each run of other characters becomes '-', leading '.', '_', '+'
    and '-' go, and it is cut to 100 characters. A valid name comes back unchanged, so this is also the guard
    wherever a name (perhaps read back from a run directory) becomes part of a file path."""
    name = _UNSAFE.sub("-", str(text)).lstrip("._+-")[:100]
    return name if _NAME.fullmatch(name) else fallback


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"name: must be text, got {name!r} ({type(name).__name__}); quote it in YAML "
                          f"(name: \"{name}\")")
    if not name:
        raise ConfigError(f"name: is empty; give the config a name of {NAME_CHARACTERS} (it names its files)")
    if not _NAME.fullmatch(name):
        unsafe = sorted(set("".join(_UNSAFE.findall(name))))
        why = ("is longer than 100 characters" if len(name) > 100 else
               f"holds {' '.join(repr(c) for c in unsafe)}" if unsafe else f"starts with {name[0]!r}")
        raise ConfigError(f"name: {name!r} {why}; a name becomes part of file paths: use {NAME_CHARACTERS}, "
                          f"starting with a letter or digit (e.g. {safe_name(name)!r})")


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {message}")


def _choice(value: str, field_name: str, allowed: tuple[str, ...]) -> None:
    import difflib

    if value not in allowed:
        near = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"{field_name}: '{value}' is not one of {', '.join(allowed)}{hint}")


def validate(cfg: ModelConfig) -> None:
    """All the rules in one place; each failure names the field and says what would be valid."""
    _check_name(cfg.name)
    if not isinstance(cfg.description, str):
        raise ConfigError(f"description: must be text, got {cfg.description!r}; quote it in YAML")
    for name in ("hidden_size", "num_attention_heads", "num_layers", "seq_length", "micro_batch_size",
                 "vocab_size", "vocab_divisible_by", "max_position_embeddings", "tensor_parallel"):
        value = getattr(cfg, name)
        _require(isinstance(value, int) and not isinstance(value, bool), name,
                 f"must be a whole number, got {value!r}")
        _require(value > 0, name, f"must be positive, got {value}")
    _require(cfg.num_layers <= MAX_LAYERS, "num_layers",
             f"{cfg.num_layers:,} is more than {MAX_LAYERS:,} (the deepest published transformers have about "
             "100-200 layers); give the model's real layer count")
    for name in ("norm_epsilon", "rotary_pct", "rotary_base", "attention_dropout", "hidden_dropout"):
        value = getattr(cfg, name)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as text, the commonest trap
            raise ConfigError(f"{name}: {value!r} is text, not a number; YAML reads an exponent without a dot as "
                              f"text: write it with a dot (e.g. 1.0e-5) or as a decimal")
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), name,
                 f"must be a number, got {value!r}")
        _require(math.isfinite(value), name, f"must be a finite number, got {value!r}; give a real value "
                                             "(YAML reads .inf and .nan as infinity and not-a-number)")
    for name in ("bias", "tie_word_embeddings"):
        _check_flag(getattr(cfg, name), name)
    for name in ("padded_vocab_size", "intermediate_size"):
        value = getattr(cfg, name)
        if value is not None:
            _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
                     f"must be a positive whole number, got {value!r}")
    _choice(cfg.activation, "activation", ACTIVATIONS)
    _choice(cfg.norm, "norm", NORMS)
    _choice(cfg.positional, "positional", POSITIONALS)
    _choice(cfg.residual, "residual", RESIDUALS)
    _choice(cfg.attention, "attention", ATTENTIONS)
    _choice(cfg.dtype, "dtype", DTYPES)
    h, a, t = cfg.hidden_size, cfg.num_attention_heads, cfg.tensor_parallel
    if h % a:  # the hint is worked out only for a config that needs it (h can be 10^12)
        raise ConfigError(f"num_attention_heads: hidden_size {h} is not divisible by {a} heads; pick a that divides h "
                          f"(e.g. {_nearest_divisor(h, a)})")
    _require(a % t == 0, "tensor_parallel", f"{a} heads cannot be split over t={t} GPUs; t must divide a")
    _require(h % t == 0, "tensor_parallel", f"hidden_size {h} cannot be split over t={t} GPUs")
    if cfg.activation == "swiglu":
        _require(cfg.intermediate_size is not None, "intermediate_size",
                 "swiglu needs an explicit intermediate_size (e.g. 11008 for h=4096, as Llama-2-7B)")
    _require(cfg.ffn_size % t == 0, "intermediate_size", f"{cfg.ffn_size} cannot be split over t={t} GPUs")
    if cfg.padded_vocab_size is not None:
        _require(cfg.padded_vocab_size >= cfg.vocab_size, "padded_vocab_size",
                 f"{cfg.padded_vocab_size} is smaller than vocab_size {cfg.vocab_size}")
        _require(cfg.padded_vocab_size % t == 0, "padded_vocab_size", f"cannot be split over t={t} GPUs")
    _require(0 < cfg.norm_epsilon < 1, "norm_epsilon", f"must be in (0, 1), got {cfg.norm_epsilon}")
    for name in ("attention_dropout", "hidden_dropout"):
        p = getattr(cfg, name)
        _require(0.0 <= p < 1.0, name, f"must be in [0, 1), got {p}")
    if cfg.positional == "rotary":
        _require(0.0 < cfg.rotary_pct <= 1.0, "rotary_pct", f"must be in (0, 1], got {cfg.rotary_pct}")
        rd = cfg.head_dim * cfg.rotary_pct
        _require(rd == int(rd) and int(rd) % 2 == 0 and rd > 0, "rotary_pct",
                 f"rotary_pct {cfg.rotary_pct} of head dim {cfg.head_dim} gives {rd} rotary dims; "
                 "it must be a positive even whole number")
        _require(cfg.rotary_base > 0, "rotary_base", f"must be positive, got {cfg.rotary_base}")
    if cfg.positional == "learned":
        _require(cfg.seq_length <= cfg.max_position_embeddings, "seq_length",
                 f"{cfg.seq_length} exceeds max_position_embeddings {cfg.max_position_embeddings} "
                 "of the learned position table")


def _check_flag(value: object, field_name: str) -> None:
    """true or false, not text that reads like one: bool("false") is True, so a quoted flag would silently
    mean the opposite of what it says."""
    if isinstance(value, bool):
        return
    if isinstance(value, str):
        raise ConfigError(f"{field_name}: {value!r} is text, not true or false; write it unquoted "
                          f"({field_name}: {value.strip().lower() if value.strip().lower() in ('true', 'false') else 'true'})")
    raise ConfigError(f"{field_name}: must be true or false, got {value!r}")


def _nearest_divisor(n: int, near: int) -> int:
    """The divisor of n nearest `near`, from the pairs (d, n/d) up to sqrt(n): fast for any n."""
    divisors = set()
    d = 1
    while d * d <= n:
        if n % d == 0:
            divisors.update((d, n // d))
        d += 1
    return min(divisors, key=lambda x: (abs(x - near), x))

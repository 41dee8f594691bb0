"""Which shapes of the same size to try: candidates within the parameter budget, pre-ranked by the cost model.

A candidate varies the hidden size h (multiples of 64*t near the given h), the head count a (h/a a multiple
of 8, within the sizes fused attention runs), the MLP width f (multiples of 64*t near the given f/h ratio)
and the layer count L, chosen per (h, f) so that the total parameter count (models.params.count_parameters)
is as close to the given shape's as L allows; candidates outside the budget are dropped. Everything else
(b, s, t, attention, dtype, norm, activation, residual, rotary fraction) stays as given. A misaligned
vocabulary is padded in every candidate.

Pre-ranking (`rank_score`): the modelled speed-up at equal parameters (tokens/s ratio x parameter ratio,
so that a candidate at -5% parameters is not ranked up for being smaller) divided by the compute worth of
the loss the shape change may cost (scaling.caution; 22% compute per 1% loss), so that a faster but
off-the-flat-region shape is not measured ahead of one that keeps the loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from models import ModelConfig, count_parameters
from models.config import ConfigError

from ..errors import UserError
from .cost_model import step_estimate
from .gpus import GpuModel
from .rules import MAX_HEAD_DIM, elements
from .scaling import caution, shape_loss
from .serving import ServingShape, serving_columns, serving_flag

MIN_HEAD_DIM = 32  # smaller heads are outside common practice, and fused attention's smallest head-size bucket
MODEL_TOLERANCE = 0.97  # candidates pre-ranked below this fraction of the given shape are not worth measuring
HEAD_DIM_MULTIPLE = 8  # fused attention needs h/a a multiple of 8


@dataclass(frozen=True)
class SearchSpace:
    budget: float = 0.05  # +- fraction of the given shape's total parameters
    h_window: float = 0.25  # h within +-25% of the given h
    ffn_window: float = 0.05  # f within +-5% of (given f/h) x h

    def __post_init__(self) -> None:
        for name, flag in (("budget", "--budget"), ("h_window", "--h-window"), ("ffn_window", "--ffn-window")):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise UserError(f"{flag}: must be between 0% and 100%, got {100 * value:g}%")

    def to_dict(self) -> dict:
        return asdict(self)


def hidden_sizes(cfg: ModelConfig, space: SearchSpace) -> list[int]:
    step = 64 * cfg.tensor_parallel  # keeps h/t a multiple of 64 (VI-B)
    h = cfg.hidden_size
    lo, hi = math.ceil(h * (1 - space.h_window) / step), math.floor(h * (1 + space.h_window) / step)
    return sorted({h, *(k * step for k in range(max(lo, 1), hi + 1))})


def head_counts(h: int, cfg: ModelConfig) -> list[int]:
    t = cfg.tensor_parallel
    return [a for a in range(t, h // MIN_HEAD_DIM + 1, t)
            if h % a == 0 and MIN_HEAD_DIM <= h // a <= MAX_HEAD_DIM and (h // a) % HEAD_DIM_MULTIPLE == 0
            and (cfg.micro_batch_size * a) % t == 0]


def ffn_sizes(h: int, cfg: ModelConfig, space: SearchSpace) -> list[int]:
    """MLP widths near the given f/h ratio at this h (the given ratio's own value first, if aligned)."""
    step = 64 * cfg.tensor_parallel
    centre = cfg.ffn_size / cfg.hidden_size * h
    lo, hi = math.ceil(centre * (1 - space.ffn_window) / step), math.floor(centre * (1 + space.ffn_window) / step)
    sizes = [k * step for k in range(max(lo, 1), hi + 1)]
    exact = round(centre)
    if exact == centre and exact % cfg.tensor_parallel == 0 and exact not in sizes:
        sizes.append(exact)  # e.g. 4h, or the given f itself
    return sorted(sizes)


def layers_for(cfg: ModelConfig, target: int) -> int:
    """The L whose total parameter count is closest to `target`, other fields as in cfg."""
    fixed = count_parameters(cfg.replace(num_layers=1))
    per_layer = fixed.per_layer
    base = fixed.total - per_layer
    guess = max(1, round((target - base) / per_layer))
    return min((L for L in (guess - 1, guess, guess + 1) if L >= 1), key=lambda L: abs(base + L * per_layer - target))


def padded_vocab(cfg: ModelConfig, alignment_bytes: int) -> int | None:
    """The candidates' embedding rows: the given padding if v/t is aligned, else v padded to the alignment x t."""
    per_gpu = elements(alignment_bytes, cfg.dtype)
    if cfg.vocab_per_gpu % per_gpu == 0:
        return cfg.padded_vocab_size
    return math.ceil(cfg.vocab_size / (per_gpu * cfg.tensor_parallel)) * per_gpu * cfg.tensor_parallel


def _valid(cfg: ModelConfig, **changes) -> ModelConfig | None:
    try:
        return cfg.replace(**changes)
    except ConfigError:  # e.g. a rotary fraction of h/a that is not a whole even number of dims
        return None


def _name(cfg: ModelConfig, given: ModelConfig) -> str:
    name = f"h{cfg.hidden_size}-a{cfg.num_attention_heads}-L{cfg.num_layers}"
    if cfg.ffn_size != 4 * cfg.hidden_size or cfg.activation == "swiglu":
        name += f"-f{cfg.ffn_size}"
    if cfg.embedding_rows != given.embedding_rows:
        name += f"-v{cfg.embedding_rows}"
    return name


def candidate_configs(cfg: ModelConfig, space: SearchSpace, *, vocab_alignment_bytes: int = 128) -> list[ModelConfig]:
    """All candidate shapes within the budget (the given shape not among them)."""
    target = count_parameters(cfg).total
    vocab = padded_vocab(cfg, vocab_alignment_bytes)
    out, seen = [], {(cfg.hidden_size, cfg.num_attention_heads, cfg.num_layers, cfg.ffn_size, cfg.embedding_rows)}
    for h in hidden_sizes(cfg, space):
        for f in ffn_sizes(h, cfg, space):
            shapes = [c for a in head_counts(h, cfg)
                      if (c := _valid(cfg, hidden_size=h, num_attention_heads=a, intermediate_size=f,
                                      padded_vocab_size=vocab)) is not None]
            if not shapes:
                continue
            L = layers_for(shapes[0], target)  # the parameter count does not depend on a
            if abs(count_parameters(shapes[0].replace(num_layers=L)).total - target) > space.budget * target:
                continue
            for shape in shapes:
                c = shape.replace(num_layers=L)
                key = (h, c.num_attention_heads, L, f, c.embedding_rows)
                if key not in seen:
                    seen.add(key)
                    out.append(c.replace(name=_name(c, cfg), description=f"advisor candidate for {cfg.name}"))
    return out


def _changes(c: ModelConfig, given: ModelConfig) -> str:
    parts = []
    for label, attr in (("h", "hidden_size"), ("a", "num_attention_heads"), ("L", "num_layers"), ("f", "ffn_size"),
                        ("v", "embedding_rows")):
        before, after = getattr(given, attr), getattr(c, attr)
        if before != after:
            parts.append(f"{label} {before}->{after}")
    return ", ".join(parts) or "given shape"


def _distance(c: ModelConfig, given: ModelConfig) -> float:
    """How far a shape moved from the given one (sum of |log ratios|): the tie-break, nearest first."""
    return sum(abs(math.log(getattr(c, a) / getattr(given, a)))
               for a in ("hidden_size", "num_attention_heads", "num_layers", "ffn_size"))


def candidates_frame(cfg: ModelConfig, gpu: GpuModel, space: SearchSpace,
                     serving: ServingShape | None = None) -> pd.DataFrame:
    """The given shape (first row) and every candidate, with modelled times, speed-up, the loss caution and
    the modelled serving cost (serving.py: prefill and decode at `serving`, and the flag of a shape that
    trains faster but serves slower), sorted by the pre-ranking."""
    serving = serving or ServingShape()
    given_serving = serving_columns(cfg, gpu, serving)
    given_params = count_parameters(cfg)
    given_loss = shape_loss(cfg, given_params.non_embedding)
    given_step = step_estimate(cfg, gpu)
    if math.isnan(given_step.step_ms):
        why = (f"{gpu.key} has no fused attention ({gpu.flash_source})" if gpu.flash_tflops is None else
               f"fused attention cannot run h/a = {cfg.head_dim} (a multiple of 8, at most 256)")
        raise UserError(f"--attention: {why}; advise with --attention eager")
    rows = []
    for c in [cfg, *candidate_configs(cfg, space, vocab_alignment_bytes=gpu.paper_alignment_bytes)]:
        params = count_parameters(c)
        est = step_estimate(c, gpu) if c is not cfg else given_step
        if math.isnan(est.step_ms):  # fused attention cannot run this head size
            continue
        note = caution(given_loss, shape_loss(c, params.non_embedding))
        speedup = given_step.step_ms / est.step_ms
        serve = given_serving if c is cfg else serving_columns(c, gpu, serving)
        prefill_speedup = given_serving["modelled_prefill_ms"] / serve["modelled_prefill_ms"]
        decode_speedup = given_serving["modelled_decode_ms"] / serve["modelled_decode_ms"]
        per_param = speedup * params.total / given_params.total
        rows.append({
            "name": c.name, "is_given": c is cfg, "changes": _changes(c, cfg), "h": c.hidden_size,
            "a": c.num_attention_heads, "head_dim": c.head_dim, "L": c.num_layers, "ffn": c.ffn_size,
            "v": c.embedding_rows, "params": params.total,
            "params_delta_pct": 100 * (params.total / given_params.total - 1),
            "modelled_layer_fwd_ms": est.layer_forward_ms, "modelled_layer_fwd_bwd_ms": est.layer_forward_backward_ms,
            "modelled_logits_fwd_bwd_ms": est.logits_forward_backward_ms, "modelled_step_ms": est.step_ms,
            "modelled_tokens_per_s": est.tokens_per_s, "modelled_speedup": speedup,
            "modelled_speedup_per_param": per_param, **serve,
            "modelled_prefill_speedup": prefill_speedup, "modelled_decode_speedup": decode_speedup,
            "serving_flag": serving_flag(speedup, prefill_speedup, decode_speedup),
            "loss_delta_pct": note.loss_delta_pct, "compute_equivalent_pct": note.compute_equivalent_pct,
            "leaves_flat_region": note.leaves_flat_region, "scaling_note": note.message,
            "rank_score": per_param / (1 + note.compute_equivalent_pct / 100),
            "distance": _distance(c, cfg),
        })
    df = pd.DataFrame(rows)
    rest = df[~df["is_given"]].sort_values(["rank_score", "distance"], ascending=[False, True])
    return pd.concat([df[df["is_given"]], rest], ignore_index=True)


def select_for_measurement(frame: pd.DataFrame, top: int, head_dim_multiple: int = 64) -> list[str]:
    """Names of the candidates to measure, in pre-rank order.

    The `top` best pre-ranked, at most one per hidden size (so the measured set spans shapes rather than
    f tweaks of one) and none the model puts clearly behind the given shape (MODEL_TOLERANCE); and, when the given h/a is not a multiple of `head_dim_multiple`, every candidate that
    only changes the head count (and pads v, when the given v needs it) to one that is (the paper's fix behind Fig. 1: GPT-3 2.7B's a=32 -> a=20),
    since a tie in the model (fused attention runs a=20 and a=40 alike at h=2560) is the measurement's to break."""
    rest = frame[~frame["is_given"]]
    promising = rest[rest["rank_score"] >= MODEL_TOLERANCE]
    chosen = list(promising.drop_duplicates(["h"])["name"].head(max(top, 0)))
    given = frame[frame["is_given"]].iloc[0]
    if given["head_dim"] % head_dim_multiple:
        # every candidate shares one vocabulary (the given one, or it padded), so v is not compared
        fixes = rest[(rest["h"] == given["h"]) & (rest["L"] == given["L"]) & (rest["ffn"] == given["ffn"])
                     & (rest["head_dim"] % head_dim_multiple == 0)]
        chosen += [n for n in fixes["name"] if n not in chosen]
    return chosen


def configs_by_name(cfg: ModelConfig, gpu: GpuModel, space: SearchSpace, names: list[str]) -> list[ModelConfig]:
    by_name = {c.name: c for c in candidate_configs(cfg, space, vocab_alignment_bytes=gpu.paper_alignment_bytes)}
    return [cfg if n == cfg.name else by_name[n] for n in names]

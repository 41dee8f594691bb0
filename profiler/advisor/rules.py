"""What is wrong with this shape on this GPU: the paper's sizing rules, each checked against one config.

Pure: (config, GPU model) in, a list of Checks out. Each check says pass / warn / fail (or unknown), the
paper's rule and section, what this shape does and what this GPU showed where we measured it, and a
modelled cost in ms per training step of the whole model (L layers + logits, forward + backward): the
step of the shape as it is minus the step with that one quantity fixed, or the time the flaw wastes.

Alignments are in bytes and scale with the dtype: the paper's 128 bytes are 64 fp16/bf16 elements but 32
float32 ones; the H100 here runs any multiple of 16 bytes at full speed (8 bf16 elements).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from models import ModelConfig, layer_gemms
from models.config import ConfigError
from models.kernel_support import injection_support, largest_safe_prefill_batch

from ..quantization import largest_power_of_two_dividing, last_wave_fill, tile_efficiency, tiles, wave_efficiency, waves
from .cost_model import DTYPE_BYTES, TILES, flash_head_dim, gemm_estimates, step_estimate
from .gpus import GpuModel

QUANTIZATION_THRESHOLD = 0.9  # under 90% useful SM-time (or tile area) a GEMM is flagged
MAX_HEAD_DIM = 256  # the largest head size fused attention kernels (and DeepSpeed's) run; fixes stay below it


@dataclass(frozen=True)
class Check:
    rule: str
    subject: str
    value: str
    status: str  # pass | warn | fail | unknown
    paper_rule: str
    finding: str
    paper: str  # section / figure
    cost_ms: float | None = None  # modelled ms per training step that the flaw costs (None: not modelled)
    cost_pct: float | None = None  # of the modelled step
    gpu_evidence: str = ""  # what this GPU showed, where measured

    def to_dict(self) -> dict:
        return asdict(self)


def checks_frame(checks: list[Check]) -> pd.DataFrame:
    return pd.DataFrame([c.to_dict() for c in checks], columns=[f for f in Check.__dataclass_fields__])


def elements(nbytes: int, dtype: str) -> int:
    """How many elements of `dtype` make `nbytes` (at least 1)."""
    return max(1, nbytes // DTYPE_BYTES[dtype])


def _step_ms(cfg: ModelConfig, gpu: GpuModel) -> float:
    return step_estimate(cfg, gpu).step_ms


def _cost(cfg: ModelConfig, fixed: ModelConfig | None, gpu: GpuModel) -> tuple[float | None, float | None]:
    """(ms, % of the step) the shape loses against the same shape with one quantity fixed."""
    if fixed is None:
        return None, None
    base, better = _step_ms(cfg, gpu), _step_ms(fixed, gpu)
    if math.isnan(base) or math.isnan(better):
        return None, None
    return base - better, 100 * (base - better) / base


def _replace(cfg: ModelConfig, **changes) -> ModelConfig | None:
    try:
        return cfg.replace(**changes)
    except ConfigError:
        return None


def vocab_pair(cfg: ModelConfig, gpu: GpuModel) -> tuple[ModelConfig, ModelConfig] | None:
    """(the vocabulary as a framework would run it, the same padded to the paper's multiple), or None when
    the tokenizer's v is already a multiple: the pair whose logit layers the vocab rule's cost compares.
    A config that pads v itself is compared unpadded vs padded (what the padding is worth)."""
    paper = elements(gpu.paper_alignment_bytes, cfg.dtype)
    v, t = cfg.vocab_size, cfg.tensor_parallel
    if cfg.vocab_per_gpu % paper == 0 and v % paper == 0:
        return None
    padded = _replace(cfg, padded_vocab_size=math.ceil(v / (paper * t)) * paper * t)
    as_run = cfg if cfg.vocab_per_gpu % paper else (_replace(cfg, padded_vocab_size=v) if v % t == 0 else None)
    if padded is None or as_run is None or as_run.embedding_rows == padded.embedding_rows:
        return None
    return as_run, padded


def check_vocab(cfg: ModelConfig, gpu: GpuModel) -> Check:
    paper = elements(gpu.paper_alignment_bytes, cfg.dtype)
    fast = elements(gpu.fast_alignment_bytes, cfg.dtype)
    n, v = cfg.vocab_per_gpu, cfg.vocab_size
    rule = f"pad the vocabulary to a multiple of {paper} ({gpu.paper_alignment_bytes} bytes of {cfg.dtype})"
    common = dict(rule="vocab_padding", subject="v/t (logit GEMM n)", value=f"{n} (tokenizer v={v})",
                  paper_rule=rule, paper="VI-B, Fig. 20", gpu_evidence=gpu.evidence_for("vocab") or gpu.alignment_source)
    pair = vocab_pair(cfg, gpu)
    cost = _cost(*pair, gpu) if pair else (None, None)
    if pair is None:
        return Check(status="pass", finding=f"v/t = {n} is a multiple of {paper}", **common)
    padded = pair[1].embedding_rows
    if n % paper == 0:
        return Check(status="warn", finding=(
            f"the tokenizer's v = {v} is not a multiple of {paper}; this config pads it to {cfg.embedding_rows} "
            f"(vocab_divisible_by={cfg.vocab_divisible_by}), so the logit GEMM is aligned: keep the padding "
            "(the cost shown is what an unpadded framework would pay)"), cost_ms=cost[0], cost_pct=cost[1], **common)
    if n % fast == 0:
        return Check(status="warn", finding=(
            f"v/t = {n} is not a multiple of {paper} (paper) but is one of {fast} ({gpu.fast_alignment_bytes} bytes), "
            f"which runs at full speed on this GPU; padding to {padded} costs nothing either"),
            cost_ms=cost[0], cost_pct=cost[1], **common)
    return Check(status="fail", finding=(
        f"v/t = {n} is not a multiple of {fast} ({gpu.fast_alignment_bytes} bytes): the logit GEMM runs "
        f"{gpu.slowdown(largest_power_of_two_dividing(n) * DTYPE_BYTES[cfg.dtype]):.1f}x slower on this GPU; "
        f"pad v to {padded}"), cost_ms=cost[0], cost_pct=cost[1], **common)


def aligned_head_counts(cfg: ModelConfig, multiple: int) -> list[int]:
    """Head counts a at this h (a divides h, t divides a) whose h/a is a multiple of `multiple`, at most
    MAX_HEAD_DIM."""
    h, t = cfg.hidden_size, cfg.tensor_parallel
    return [a for a in range(t, h + 1, t) if h % a == 0 and (h // a) % multiple == 0 and h // a <= MAX_HEAD_DIM
            and _replace(cfg, num_attention_heads=a) is not None]


def check_head_dim(cfg: ModelConfig, gpu: GpuModel) -> Check:
    paper = elements(gpu.paper_alignment_bytes, cfg.dtype)
    d = cfg.head_dim
    p2 = largest_power_of_two_dividing(d)
    common = dict(rule="head_dim_alignment", subject="h/a", value=str(d),
                  paper_rule=f"h/a a multiple of {paper} (else the largest power of two dividing it matters)",
                  paper="VI-B, Figs. 7-9" if cfg.attention == "eager" else "VI-B, VI-C3",
                  gpu_evidence=gpu.evidence_for("head_dim") or "")
    if cfg.attention == "eager":
        how = (f"the attention score and over-value BMMs have a dimension of {d * DTYPE_BYTES[cfg.dtype]} bytes; "
               "more, smaller heads also mean more s x s score matrices to move")
    else:
        padded = flash_head_dim(d)
        how = (f"fused attention runs h/a = {d} as {padded} ({100 * (1 - d / padded):.0f}% of its work is padding)"
               if padded else f"fused attention does not support h/a = {d}")
    if d % paper == 0:
        return Check(status="pass", finding=f"h/a = {d} is a multiple of {paper}", **common)
    fixes = aligned_head_counts(cfg, paper)
    if not fixes:
        return Check(status="fail", finding=(f"h/a = {d} is not a multiple of {paper} (largest power of two dividing "
                                             f"it: {p2}); no head count at h = {cfg.hidden_size} fixes it: {how}"),
                     **common)
    fixed = [cfg.replace(num_attention_heads=a) for a in fixes]
    # ties (fused attention runs a=20 and a=40 at h=2560 alike) go to the head count nearest the given one
    best = min(fixed, key=lambda c: (round(_step_ms(c, gpu), 9), abs(math.log(c.num_attention_heads / cfg.num_attention_heads))))
    cost = _cost(cfg, best, gpu)
    names = ", ".join(f"a={c.num_attention_heads} (h/a={c.head_dim})" for c in fixed)
    return Check(status="fail", finding=(
        f"h/a = {d} is not a multiple of {paper} (largest power of two dividing it: {p2}); {how}. Aligned at this h: "
        f"{names}; the cost is against the modelled best of them, a={best.num_attention_heads}"),
        cost_ms=cost[0], cost_pct=cost[1], **common)


def _power_of_two_check(rule: str, subject: str, value: int, paper: str, want: int) -> Check:
    p2 = largest_power_of_two_dividing(value)
    ok = p2 >= want
    return Check(rule=rule, subject=subject, value=str(value), status="pass" if ok else "fail",
                 paper_rule=f"{subject} divisible by a large power of two (no benefit beyond {want})", paper=paper,
                 finding=f"{subject} = {value}: largest power of two dividing it is {p2}" +
                         ("" if ok else f" (< {want})"))


def check_tokens(cfg: ModelConfig, gpu: GpuModel) -> Check:
    return _power_of_two_check("tokens_power_of_two", "b*s", cfg.tokens, "VI-B",
                               elements(gpu.paper_alignment_bytes, cfg.dtype))


def check_hidden_per_gpu(cfg: ModelConfig, gpu: GpuModel) -> Check:
    return _power_of_two_check("hidden_per_gpu_power_of_two", "h/t", cfg.hidden_per_gpu, "VI-B, VII-A",
                               elements(gpu.paper_alignment_bytes, cfg.dtype))


def check_heads_per_gpu(cfg: ModelConfig) -> Check:
    ba, t = cfg.micro_batch_size * cfg.num_attention_heads, cfg.tensor_parallel
    ok = ba % t == 0
    return Check(rule="heads_per_gpu_integer", subject="(b*a)/t", value=f"{ba}/{t}", status="pass" if ok else "fail",
                 paper_rule="(b*a)/t an integer", paper="VI-B",
                 finding=f"(b*a)/t = {ba / t:g}" + ("" if ok else ": the attention batch cannot be split evenly"))


def check_tensor_parallel(cfg: ModelConfig) -> Check:
    t = cfg.tensor_parallel
    return Check(rule="tensor_parallel_small", subject="t", value=str(t), status="pass" if t == 1 else "warn",
                 paper_rule="t as small as possible", paper="VI-B",
                 finding="t = 1" if t == 1 else f"t = {t}: every per-GPU GEMM is {t}x smaller and less efficient")


def check_intermediate(cfg: ModelConfig, gpu: GpuModel) -> Check:
    paper = elements(gpu.paper_alignment_bytes, cfg.dtype)
    f, h, t = cfg.ffn_size, cfg.hidden_size, cfg.tensor_parallel
    swiglu = cfg.activation == "swiglu"
    note = (f"f = {f} = {f / h:.4g} h (8h/3 = {8 * h / 3:.1f})" if swiglu else f"f = {f} = {f / h:.4g} h")
    common = dict(rule="intermediate_alignment", subject="f/t (MLP width per GPU)", value=str(cfg.ffn_per_gpu),
                  paper_rule=f"f/t divisible by {paper}; for SwiGLU search near 8h/3 rather than use it",
                  paper="VI-C4, VII-B" if swiglu else "VI-B")
    if cfg.ffn_per_gpu % paper == 0:
        return Check(status="pass", finding=f"{note}; f/t is a multiple of {paper}", **common)
    step = paper * t
    fixed = _replace(cfg, intermediate_size=max(step, round(f / step) * step))
    cost = _cost(cfg, fixed, gpu)
    return Check(status="fail", finding=(f"{note}; f/t = {cfg.ffn_per_gpu} is not a multiple of {paper} (largest power "
                                         f"of two dividing it: {largest_power_of_two_dividing(cfg.ffn_per_gpu)}); nearest "
                                         f"aligned f = {fixed.ffn_size if fixed else '?'}" +
                                         ("; use --swiglu to measure the sizes near 8h/3" if swiglu else "")),
                 cost_ms=cost[0], cost_pct=cost[1], **common)


def _orientations(m: int, n: int, batch: int, sms: int) -> str:
    parts = []
    for tile in TILES:
        t = tiles(m, n, tile, batch)
        parts.append(f"{tile[0]}x{tile[1]}: {t} tiles, {waves(t, sms)} waves, last {last_wave_fill(t, sms):.0%} full")
    return "; ".join(parts)


def check_gemms(cfg: ModelConfig, gpu: GpuModel) -> list[Check]:
    """Alignment, tile and wave quantization of every forward GEMM (attention BMMs only when unfused)."""
    paper_bytes, fast_bytes, sms = gpu.paper_alignment_bytes, gpu.fast_alignment_bytes, gpu.sms
    estimates = gemm_estimates(cfg, gpu, include_logits=True)
    step = _step_ms(cfg, gpu)
    out = []
    for g in layer_gemms(cfg, include_logits=True):
        count = 1 if g.component == "logits" else cfg.num_layers
        own = [e for e in estimates if e.component == g.component]
        shape = g.shape
        worst = min(largest_power_of_two_dividing(v) * DTYPE_BYTES[cfg.dtype] for v in (g.m, g.n, g.k))
        align_cost = count * sum(e.time_ms * (1 - 1 / e.slowdown) for e in own)
        status = "pass" if worst >= paper_bytes else ("warn" if worst >= fast_bytes else "fail")
        out.append(Check(
            rule="gemm_alignment", subject=g.component, value=shape, status=status,
            paper_rule=f"m, n, k multiples of {paper_bytes} bytes ({elements(paper_bytes, cfg.dtype)} {cfg.dtype})",
            paper="III-B, VI-B", gpu_evidence=gpu.alignment_source,
            finding=f"worst-aligned dimension: {worst} bytes (this GPU runs >= {fast_bytes} bytes at full speed)",
            cost_ms=align_cost, cost_pct=100 * align_cost / step))
        best_tile = max(tile_efficiency(g.m, g.n, tile) for tile in TILES)
        bound = [e for e in own if e.compute_ms >= e.memory_ms]  # quantization wastes time only when compute-bound
        why_free = "" if bound else " (memory-bound here, so quantization costs no time)"
        tile_cost = count * sum(e.time_ms * (1 - e.tile_efficiency) for e in bound)
        out.append(Check(
            rule="tile_quantization", subject=g.component, value=shape,
            status="pass" if best_tile >= QUANTIZATION_THRESHOLD else "fail",
            paper_rule="output divisible into 128x256 tiles", paper="III-B, VI-B",
            finding=f"useful fraction of the computed tiles: {best_tile:.0%} (best orientation){why_free}",
            cost_ms=tile_cost, cost_pct=100 * tile_cost / step))
        best_wave = max(wave_efficiency(tiles(g.m, g.n, tile, g.batch), sms) for tile in TILES)
        wave_cost = count * sum(e.time_ms * (1 - e.wave_efficiency) for e in bound)
        out.append(Check(
            rule="wave_quantization", subject=g.component, value=shape,
            status="pass" if best_wave >= QUANTIZATION_THRESHOLD else "fail",
            paper_rule=f"tiles a multiple of the SM count ({sms} here; the paper says {gpu.paper_sms or sms})",
            paper="III-B, VI-B, Fig. 5b",
            finding=f"{_orientations(g.m, g.n, g.batch, sms)}; useful SM-time {best_wave:.0%} (best orientation)"
                    f"{why_free}",
            cost_ms=wave_cost, cost_pct=100 * wave_cost / step))
    return out


def check_inference_kernels(cfg: ModelConfig) -> Check:
    """Do DeepSpeed's fused inference kernels accept this head size and rotary width (paper VII-C)?"""
    common = dict(rule="deepspeed_inference_kernels", subject="h/a, rotary dims",
                  value=f"{cfg.head_dim}, {cfg.rotary_dims}", paper="VII-C, Fig. 13",
                  paper_rule="the model should also infer efficiently (DeepSpeed-MII kernel injection)")
    try:
        support = injection_support(cfg.head_dim, cfg.rotary_dims, cfg.dtype)
    except ValueError as exc:  # a shape or dtype the helper does not judge
        return Check(status="unknown", finding=str(exc), **common)
    finding = support.reason or "accepted"
    if support.ok:  # more heads lower the batch a full-length prompt can prefill correctly
        heads = cfg.num_attention_heads // cfg.tensor_parallel
        finding += (f"; a {cfg.seq_length}-token prompt prefills correctly up to batch "
                    f"{largest_safe_prefill_batch(heads, cfg.seq_length)} ({heads} heads: the fused softmax's int32 "
                    "score offset)")
    return Check(status="pass" if support.ok else "fail", finding=finding, gpu_evidence=support.source, **common)


def check_shape(cfg: ModelConfig, gpu: GpuModel) -> list[Check]:
    """Every rule, in the order the report lists them."""
    return [check_vocab(cfg, gpu), check_head_dim(cfg, gpu), check_tokens(cfg, gpu), check_hidden_per_gpu(cfg, gpu),
            check_heads_per_gpu(cfg), check_tensor_parallel(cfg), check_intermediate(cfg, gpu),
            *check_gemms(cfg, gpu), check_inference_kernels(cfg)]


def sizing_findings(cfg: ModelConfig, gpu: GpuModel) -> list[dict]:
    """What a layer run reports beside its measurements: every rule this shape does not pass on `gpu`, as
    {rule, quantity, value, status, message, paper, cost_ms} (the layer report lists them)."""
    return [{"rule": c.rule, "quantity": c.subject, "value": c.value, "status": c.status, "message": c.finding,
             "paper": c.paper, "cost_ms": c.cost_ms} for c in check_shape(cfg, gpu) if c.status in ("fail", "warn")]

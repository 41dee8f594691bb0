"""Is an engine computing the same model as transformers? Two checks, both pure functions over tensors.

Logits: the engine's logits on the benchmark prompts against transformers' on the same checkpoint
(the last CHECK_POSITIONS prompt positions at the largest batch). DeepSpeed's GPT-NeoX injection has had
correctness bugs (DeepSpeed issues #3103, #3639), so no latency counts before this passes.

Tokens: the greedy tokens the engine generated in the timed calls against transformers' at the same batch
size. With random weights many steps are near-ties among ~50k logits, so a different kernel may pick the
runner-up there; a flip is accepted only where transformers' own logit gap between its token and the
engine's token is within the measured kernel noise. If every logit of the engine may differ from
transformers' by up to e (the logits check's max |diff|), the gap between two logits can move by up to 2e,
so the tolerance is TOKEN_NOISE_FACTOR x e. A flip at a larger gap is a different computation, not noise.
After the first flip the two continuations see different contexts, so only the first flip per row is judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

CHECK_POSITIONS = 16  # last prompt positions compared: a 2048-token prompt x 50k vocab x 16 rows is 6.6 GB in fp32
REL_TOLERANCE = 0.05  # logits: max |diff| within 5% of the largest reference logit (fp16 kernels differ by ~1e-3)
TOP1_TOLERANCE = 0.9  # logits: random weights give near-ties among 50k logits; a broken kernel agrees on ~0
TOKEN_NOISE_FACTOR = 2.0  # tokens: two logits each off by at most e move their gap by at most 2e
TOPK = 8  # reference candidates kept per generated step, to measure the gap to the engine's token


@dataclass(frozen=True)
class LogitsCheck:
    """An engine's logits against transformers' on the same checkpoint and the same prompts."""

    method: str
    max_abs_diff: float
    mean_abs_diff: float
    ref_max_abs: float
    top1_agreement: float  # fraction of positions whose argmax agrees
    first_token_agreement: float  # fraction of batch rows whose first generated token agrees
    passed: bool
    tolerance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_logits(reference: torch.Tensor, test: torch.Tensor, method: str) -> LogitsCheck:
    """`reference`, `test`: [batch, positions, vocab] (or [batch, vocab] for the first step only)."""
    if reference.shape != test.shape:
        raise ValueError(f"logits shapes differ: reference {tuple(reference.shape)}, engine {tuple(test.shape)}")
    if reference.dim() == 2:
        reference, test = reference[:, None], test[:, None]
    ref, out = reference.float(), test.float().to(reference.device)
    diff = (out - ref).abs()
    max_abs, ref_max = diff.max().item(), ref.abs().max().item()
    top1 = (out.argmax(-1) == ref.argmax(-1)).float()
    passed = max_abs <= REL_TOLERANCE * ref_max and top1.mean().item() >= TOP1_TOLERANCE
    return LogitsCheck(method, max_abs, diff.mean().item(), ref_max, top1.mean().item(), top1[:, -1].mean().item(),
                       passed, {"rel_max_abs": REL_TOLERANCE, "top1": TOP1_TOLERANCE})


@dataclass(frozen=True)
class TokenCheck:
    """An engine's greedy tokens against transformers' at the same batch size, one entry per batch row."""

    passed: bool
    tokens_match: bool  # every row identical
    first_mismatch: tuple  # per row: the step of the first differing token, or None
    margin_at_mismatch: tuple  # per row: transformers' top-1 minus top-2 logit at that step
    gap_at_mismatch: tuple  # per row: transformers' top-1 logit minus its logit for the engine's token (None: beyond top-k)
    tolerance: float  # the largest gap accepted as noise
    noise: float  # the measured kernel noise it derives from (logits check max |diff|)
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_tokens(ref_tokens: torch.Tensor, ref_topk_values: torch.Tensor, ref_topk_ids: torch.Tensor,
                 test_tokens, *, noise: float, factor: float = TOKEN_NOISE_FACTOR) -> TokenCheck:
    """`ref_tokens` [b, N]; `ref_topk_values/ids` [b, N, k]: transformers' tokens and its top-k processed
    logits at each step; `test_tokens`: the engine's new tokens per row (lists, possibly shorter)."""
    tolerance = factor * noise
    firsts, margins, gaps, failures = [], [], [], []
    for row, ref in enumerate(ref_tokens.tolist()):
        test = list(test_tokens[row]) if row < len(test_tokens) else []
        step = next((i for i, token in enumerate(ref) if i >= len(test) or test[i] != token), None)
        firsts.append(step)
        if step is None:
            margins.append(None)
            gaps.append(None)
            continue
        values, ids = ref_topk_values[row, step].float(), ref_topk_ids[row, step].tolist()
        margin = (values[0] - values[1]).item() if len(values) > 1 else float("inf")
        gap = None
        if step < len(test) and test[step] in ids:
            gap = (values[0] - values[ids.index(test[step])]).item()
        margins.append(margin)
        gaps.append(gap)
        if gap is None or gap > tolerance:
            failures.append((row, step, margin, gap, step >= len(test)))
    matched = all(f is None for f in firsts)
    if matched:
        verdict = f"all {len(firsts)} rows generated exactly transformers' tokens"
    elif not failures:
        flips = sum(f is not None for f in firsts)
        verdict = (f"{flips} of {len(firsts)} rows flip to transformers' runner-up at a near-tie (largest gap "
                   f"{max(g for g in gaps if g is not None):.3g} <= tolerance {tolerance:.3g} = {factor:g} x noise {noise:.3g})")
    else:
        row, step, margin, gap, short = failures[0]
        what = ("ended early" if short else
                f"picked a token {'outside transformers top-' + str(ref_topk_ids.shape[-1]) if gap is None else f'{gap:.3g} below its top-1'}")
        verdict = (f"{len(failures)} of {len(firsts)} rows differ beyond noise: row {row} step {step} {what} "
                   f"(top-1/top-2 margin {margin:.3g}, tolerance {tolerance:.3g} = {factor:g} x noise {noise:.3g})")
    return TokenCheck(not failures, matched, tuple(firsts), tuple(margins), tuple(gaps), tolerance, noise, verdict)


def count_new_tokens(new_ids: list[int], eos_token_id: int | None) -> int:
    """Real generated tokens in one batch row: up to and including the first end-of-text token. Rows that
    end early are filled with padding after it (transformers' greedy search pads finished rows), so columns
    are not tokens; a padding id before any end-of-text is a token the model chose and counts."""
    if eos_token_id is not None and eos_token_id in new_ids:
        return new_ids.index(eos_token_id) + 1
    return len(new_ids)

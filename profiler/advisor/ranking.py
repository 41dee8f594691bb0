"""From interleaved timings to a ranking: pure functions over the rounds table that measure.time_rounds writes.

Per round, each shape's whole-model training step is L x (layer fwd+bwd) + (logit fwd+bwd); its speed-up is
the given shape's step over its own in the same round, so a clock drift between rounds cancels. The speed-up
is the median of the per-round ratios; its interval is a seeded percentile bootstrap of that median
(BOOTSTRAP_RESAMPLES resamples of the rounds, the central BOOTSTRAP_LEVEL). The given shape is timed twice
per round (a second subject, SELF_SUFFIX): the ratio of the two is the given shape against itself, and the
largest deviation from 1 of those per-round ratios is the run's self-spread (without a second timing, the
given shape's own single-call spread, (p90 - p10) / median of its layer step, stands in, and says so).

A proposal is "faster" only when (issue 22) its interval excludes 1.0 from above, its gain exceeds the
self-spread, and it clears the stated minimum gain; "slower" mirrors it; anything else is "no gain".
"""

from __future__ import annotations

import random
import statistics

import pandas as pd

from .cost_model import training_step

VERDICTS = ("faster", "no gain", "slower")
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.90
SELF_SUFFIX = " (again)"  # the given shape's second timing in each round


def self_name(given: str) -> str:
    return given + SELF_SUFFIX


def bootstrap_interval(ratios, *, resamples: int = BOOTSTRAP_RESAMPLES, level: float = BOOTSTRAP_LEVEL,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the median of `ratios` (resampled with replacement, seeded): (lo, hi)."""
    values = list(ratios)
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return values[0], values[0]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return medians[int(tail * (resamples - 1))], medians[int(round((1 - tail) * (resamples - 1)))]


def faster_verdict(speedup: float, lo: float, hi: float, self_spread: float, min_gain: float) -> str:
    """The issue-22 rule: "faster" only when the interval excludes 1.0 and the gain exceeds both the
    self-spread and the stated minimum; "slower" the mirror; else "no gain"."""
    if lo > 1.0 and speedup - 1.0 > self_spread and speedup >= 1.0 + min_gain:
        return "faster"
    if hi < 1.0 and 1.0 - speedup > self_spread and speedup <= 1.0 - min_gain:
        return "slower"
    return "no gain"


def self_spread(per_round: pd.DataFrame, given: str, rounds: pd.DataFrame | None = None) -> tuple[float, str]:
    """(spread, how): the largest |ratio - 1| of the given shape against its own second timing in each
    round; without one, the given shape's median single-call spread of its layer step (rounds table)."""
    again = per_round[per_round["candidate"] == self_name(given)].set_index("round")["step_ms"]
    base = per_round[per_round["candidate"] == given].set_index("round")["step_ms"]
    common = [r for r in again.index if r in base.index]
    if common:
        return max(abs(base[r] / again[r] - 1) for r in common), (
            f"the given shape against itself: largest |ratio - 1| over {len(common)} rounds")
    if rounds is not None and {"p10_ms", "p90_ms"} <= set(rounds.columns):
        own = rounds[(rounds["candidate"] == given) & (rounds["what"] == "layer_forward_backward")]
        if not own.empty:
            spread = ((own["p90_ms"] - own["p10_ms"]) / own["time_ms"]).median()
            return float(spread), "no second timing of the given shape: its single-call spread (p90 - p10) / median"
    return 0.0, "no self-spread available"


def quantile(values, p: float) -> float:
    """Nearest-rank quantile, the convention of profiler.timing.summarize (no interpolation); p=0.5 is the
    median proper (the mean of the middle two for an even count), as summarize's median is."""
    if p == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[min(len(ordered) - 1, max(0, round(p * (len(ordered) - 1))))]


def verdict(p10: float, median: float, p90: float, min_gain: float) -> str:
    """The rule before issue 22 (p10 of the per-round ratios above 1, median above the minimum): with 3 rounds
    p10 is the minimum, and a gain inside the single-call spread passed. Kept to show the difference
    (tests); the advisor uses faster_verdict."""
    if p10 > 1.0 and median >= 1.0 + min_gain:
        return "faster"
    if p90 < 1.0 and median <= 1.0 - min_gain:
        return "slower"
    return "no gain"


def round_steps(rounds: pd.DataFrame, shapes: pd.DataFrame) -> pd.DataFrame:
    """Per (round, candidate): layer and logit times and the whole-model step.

    `shapes` has one row per candidate with `name`, `L` and `tokens` (b*s)."""
    wide = rounds.pivot_table(index=["round", "candidate"], columns="what", values="time_ms", aggfunc="first")
    wide = wide.reset_index().merge(shapes[["name", "L", "tokens"]], left_on="candidate", right_on="name")
    steps = [training_step(lfb, logits, int(L), int(tokens)) for lfb, logits, L, tokens in
             zip(wide["layer_forward_backward"], wide["logits_forward_backward"], wide["L"], wide["tokens"])]
    wide["step_ms"] = [s for s, _ in steps]
    wide["tokens_per_s"] = [t for _, t in steps]
    return wide.drop(columns=["name"])


def measured_summary(per_round: pd.DataFrame, given: str, min_gain: float, *, rounds: pd.DataFrame | None = None,
                     seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """One row per candidate: median times over rounds, tokens/s, and the speed-up vs the given shape
    (median, p10/p90 of the per-round ratios, and the bootstrap interval of the median) with its verdict
    (faster_verdict against the run's self-spread); sorted by measured tokens/s. The given shape's second
    timing is not a candidate: it gives the self-spread column. `rounds` (the raw table) supplies the
    single-call spread where there is no second timing."""
    base = per_round[per_round["candidate"] == given].set_index("round")["step_ms"]
    spread, spread_how = self_spread(per_round, given, rounds)
    rows = []
    for name, group in per_round.groupby("candidate", sort=False):
        if name == self_name(given):
            continue
        group = group.set_index("round")
        ratios = [base[r] / group.loc[r, "step_ms"] for r in group.index if r in base.index]
        med, lo, hi = quantile(ratios, 0.5), quantile(ratios, 0.1), quantile(ratios, 0.9)
        ci_lo, ci_hi = bootstrap_interval(ratios, seed=seed, resamples=resamples)
        rows.append({
            "name": name, "is_given": name == given, "rounds": len(ratios),
            "layer_fwd_ms": group["layer_forward"].median() if "layer_forward" in group else float("nan"),
            "layer_fwd_bwd_ms": group["layer_forward_backward"].median(),
            "logits_fwd_bwd_ms": group["logits_forward_backward"].median(),
            "step_ms": group["step_ms"].median(), "tokens_per_s": group["tokens_per_s"].median(),
            "tokens_per_s_p10": quantile(group["tokens_per_s"], 0.1),
            "tokens_per_s_p90": quantile(group["tokens_per_s"], 0.9),
            "speedup": med, "speedup_p10": lo, "speedup_p90": hi, "speedup_ci_lo": ci_lo, "speedup_ci_hi": ci_hi,
            "self_spread": spread, "self_spread_how": spread_how,
            "verdict": "given shape" if name == given else faster_verdict(med, ci_lo, ci_hi, spread, min_gain),
        })
    return pd.DataFrame(rows).sort_values("tokens_per_s", ascending=False, ignore_index=True)


def paired_difference(rounds: pd.DataFrame, slow: str, fast: str, what: str) -> tuple[float, float, float]:
    """Median and p10/p90 over rounds of (slow - fast) time of one step, paired within each round."""
    wide = rounds[rounds["what"] == what].pivot_table(index="round", columns="candidate", values="time_ms")
    diffs = (wide[slow] - wide[fast]).dropna().tolist()
    return quantile(diffs, 0.5), quantile(diffs, 0.1), quantile(diffs, 0.9)


def component_difference(components: pd.DataFrame, given: str, best: str, *, given_layers: int,
                         best_layers: int) -> pd.DataFrame:
    """Per (pass, component): the layer profiler's time per layer of the given shape and of the best
    proposal, and over the whole model (x L each, since L may differ); saved > 0 where the proposal
    spends less time."""
    cols = ["pass", "component", "kind"]
    a = components[components["config"] == given].groupby(cols)["time_us"].sum().rename("given_us")
    b = components[components["config"] == best].groupby(cols)["time_us"].sum().rename("proposal_us")
    df = pd.concat([a, b], axis=1).fillna(0.0).reset_index()
    df["saved_per_layer_us"] = df["given_us"] - df["proposal_us"]
    df["given_model_ms"] = df["given_us"] * given_layers / 1e3
    df["proposal_model_ms"] = df["proposal_us"] * best_layers / 1e3
    df["saved_model_ms"] = df["given_model_ms"] - df["proposal_model_ms"]
    return df.sort_values("saved_model_ms", ascending=False, ignore_index=True)

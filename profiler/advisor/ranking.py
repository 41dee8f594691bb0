"""From interleaved timings to a ranking: pure functions over the rounds table that measure.time_rounds writes.

Per round, each shape's whole-model training step is L x (layer fwd+bwd) + (logit fwd+bwd); its speed-up is
the given shape's step over its own in the same round, so a clock drift between rounds cancels. A gain is
"faster" only when every plausible round agrees (p10 of the per-round ratios above 1) and the median clears
the stated minimum; a ratio spread that straddles 1.0, or a median gain below the minimum, is "no gain".
"""

from __future__ import annotations

import statistics

import pandas as pd

from .cost_model import training_step

VERDICTS = ("faster", "no gain", "slower")


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


def measured_summary(per_round: pd.DataFrame, given: str, min_gain: float) -> pd.DataFrame:
    """One row per candidate: median times over rounds, tokens/s, and the speed-up vs the given shape
    (median and p10/p90 of the per-round ratios) with its verdict; sorted by measured tokens/s."""
    base = per_round[per_round["candidate"] == given].set_index("round")["step_ms"]
    rows = []
    for name, group in per_round.groupby("candidate", sort=False):
        group = group.set_index("round")
        ratios = [base[r] / group.loc[r, "step_ms"] for r in group.index if r in base.index]
        med, lo, hi = quantile(ratios, 0.5), quantile(ratios, 0.1), quantile(ratios, 0.9)
        rows.append({
            "name": name, "is_given": name == given, "rounds": len(ratios),
            "layer_fwd_ms": group["layer_forward"].median() if "layer_forward" in group else float("nan"),
            "layer_fwd_bwd_ms": group["layer_forward_backward"].median(),
            "logits_fwd_bwd_ms": group["logits_forward_backward"].median(),
            "step_ms": group["step_ms"].median(), "tokens_per_s": group["tokens_per_s"].median(),
            "tokens_per_s_p10": quantile(group["tokens_per_s"], 0.1),
            "tokens_per_s_p90": quantile(group["tokens_per_s"], 0.9),
            "speedup": med, "speedup_p10": lo, "speedup_p90": hi,
            "verdict": "given shape" if name == given else verdict(lo, med, hi, min_gain),
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

"""Does the modelled ranking predict the measured one? (issue 22, item 2)

The reference set (`reference_configs`): Pythia 160m..12b, GPT-3 2.7B and the paper's variants, a
Llama-2-7B-like SwiGLU shape and one h=16384 layer, with flash and eager attention, at training token
counts (b*s = 8192, the count an independent measurement used; the h=16384 layer at the paper's b=1).

For one config the advisor measures its proposals (advice.measure path: shuffled interleaved rounds, the
given shape timed twice); `config_agreement` compares, over the measured shapes (the given one included),
the modelled speed-up with the measured one:

- Spearman's rho of the two (average ranks for ties);
- top-1: the modelled best is the measured best ("exact"), or the measured best is not faster than it by
  the advisor's own rule (ranking.faster_verdict with no minimum gain: the bootstrap interval of the
  per-round ratio excludes 1.0 and the gain exceeds the run's self-spread) - "within noise"; else "missed".

`agreement_summary` pools the configs: share of top-1 agreement, median and mean rho, the issue's goals.
`evidence_agreement` reads a committed advise folder (advice.json + rounds.csv) and re-models its shapes
with the model of today (the calibrated table), so the figures can be computed on a CPU.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models import ModelConfig, load_config

from .candidates import SearchSpace
from .cost_model import step_estimate
from .gpus import GpuModel
from .ranking import bootstrap_interval, faster_verdict, quantile, round_steps, self_name, self_spread

GOAL_TOP1 = 0.9
GOAL_SPEARMAN = 0.8


@dataclass(frozen=True)
class ReferenceConfig:
    key: str
    config: ModelConfig
    why: str
    space: SearchSpace = SearchSpace()  # the advisor's default search, except where stated


def _ref(key: str, name: str, why: str, space: SearchSpace = SearchSpace(), **overrides) -> ReferenceConfig:
    cfg = load_config(name, **overrides)
    return ReferenceConfig(key, cfg.replace(name=key), why, space)


def reference_configs(keys: list[str] | None = None) -> list[ReferenceConfig]:
    """The reference set, in a fixed order (small first); `keys` selects by key."""
    train = {"micro_batch_size": 4, "seq_length": 2048}
    refs = [
        _ref("pythia-160m", "pythia-160m", "Pythia suite (h/a=64)", attention="flash", **train),
        _ref("pythia-410m", "pythia-410m", "Pythia suite (h/a=64)", attention="flash", **train),
        _ref("pythia-410m-eager", "pythia-410m", "Pythia suite, unfused attention", attention="eager", **train),
        _ref("pythia-1b", "pythia-1b", "Pythia suite (h/a=256)", attention="flash", **train),
        _ref("pythia-1.4b", "pythia-1.4b", "Pythia suite (h/a=128)", attention="flash", **train),
        _ref("pythia-2.8b", "pythia-2.8b", "Pythia suite (h/a=80: the misaligned head)", attention="flash", **train),
        _ref("gpt3-2.7b-flash", "gpt3-2.7b", "paper Fig. 1, fused attention", attention="flash", **train),
        _ref("gpt3-2.7b-eager", "gpt3-2.7b", "paper Fig. 1, unfused attention", attention="eager", **train),
        _ref("gpt3-2.7b-c1-flash", "gpt3-2.7b-c1", "paper Fig. 1 variant C1 (a=64)", attention="flash", **train),
        _ref("gpt3-2.7b-c2-eager", "gpt3-2.7b-c2", "paper Fig. 1 variant C2 (a=40), unfused", attention="eager", **train),
        _ref("pythia-6.9b", "pythia-6.9b", "Pythia suite (h=4096)", attention="flash", **train),
        _ref("llama-2-7b-like", "llama-2-7b-like", "SwiGLU f=11008 (paper VII-B) at 8192 tokens", attention="flash",
             micro_batch_size=2, seq_length=4096),
        _ref("pythia-12b", "pythia-12b", "Pythia suite (h=5120)", attention="flash", **train),
        # h within +-2%: the default 25% window holds 77k candidates at h=16384 (two minutes of modelling)
        _ref("paper-large-flash", "paper-large-flash", "paper Fig. 2 large layer, h=16384, b=1, 32 layers",
             space=SearchSpace(h_window=0.02), attention="flash", attention_dropout=0.0, hidden_dropout=0.0,
             num_layers=32),
    ]
    if keys is None:
        return refs
    by_key = {r.key: r for r in refs}
    missing = [k for k in keys if k not in by_key]
    if missing:
        from ..errors import UserError
        raise UserError(f"--configs: unknown reference config(s) {', '.join(missing)}; known: {', '.join(by_key)}")
    return [by_key[k] for k in keys]


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); nan with fewer than 2 values or no spread."""
    x, y = pd.Series(list(a), dtype=float).rank(), pd.Series(list(b), dtype=float).rank()
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(x.corr(y))


def measured_speedups(per_round: pd.DataFrame, given: str) -> pd.Series:
    """Median per-round speed-up vs the given shape, per measured shape (the given one 1.0; its second
    timing left out)."""
    base = per_round[per_round["candidate"] == given].set_index("round")["step_ms"]
    out = {}
    for name, group in per_round.groupby("candidate", sort=False):
        if name == self_name(given):
            continue
        g = group.set_index("round")["step_ms"]
        out[name] = quantile([base[r] / g[r] for r in g.index if r in base.index], 0.5)
    return pd.Series(out, name="measured_speedup")


def config_agreement(per_round: pd.DataFrame, modelled: pd.DataFrame, given: str, *,
                     rounds: pd.DataFrame | None = None, seed: int = 0) -> dict:
    """One config's figures. `per_round`: ranking.round_steps of its rounds (candidate, round, step_ms);
    `modelled`: name, modelled_speedup for at least the measured shapes; `rounds`: the raw table (for the
    single-call spread when the given shape was timed once)."""
    measured = measured_speedups(per_round, given)
    model = modelled.set_index("name")["modelled_speedup"]
    names = [n for n in measured.index if n in model.index]
    m, p = measured[names], model[names]
    modelled_top = p.idxmax()
    measured_top = m.idxmax()
    spread, how = self_spread(per_round, given, rounds)
    steps = per_round.pivot_table(index="round", columns="candidate", values="step_ms")
    ratios = (steps[modelled_top] / steps[measured_top]).dropna().tolist()  # > 1: the measured best is faster
    gap = quantile(ratios, 0.5)
    lo, hi = bootstrap_interval(ratios, seed=seed)
    if modelled_top == measured_top:
        top1 = "exact"
    elif faster_verdict(gap, lo, hi, spread, 0.0) != "faster":
        top1 = "within noise"
    else:
        top1 = "missed"
    return {"given": given, "shapes": len(names), "rounds": int(per_round["round"].nunique()),
            "spearman": spearman(p, m), "modelled_top": modelled_top, "measured_top": measured_top,
            "top1": top1, "top1_ok": top1 != "missed", "measured_best_over_modelled_top": gap,
            "gap_ci_lo": lo, "gap_ci_hi": hi, "self_spread": spread, "self_spread_how": how,
            "modelled_top_speedup": float(p[modelled_top]), "measured_top_speedup": float(m[measured_top]),
            "modelled_top_measured_speedup": float(m[modelled_top])}


def shapes_frame(per_round: pd.DataFrame, modelled: pd.DataFrame, given: str, key: str) -> pd.DataFrame:
    """The per-shape table behind one config's figures: modelled and measured speed-up and their ranks."""
    measured = measured_speedups(per_round, given)
    df = modelled[modelled["name"].isin(measured.index)][["name", "modelled_speedup"]].copy()
    df["measured_speedup"] = df["name"].map(measured)
    df["modelled_rank"] = df["modelled_speedup"].rank(ascending=False, method="min").astype(int)
    df["measured_rank"] = df["measured_speedup"].rank(ascending=False, method="min").astype(int)
    df.insert(0, "config", key)
    return df.sort_values("measured_rank", ignore_index=True)


def agreement_summary(rows: pd.DataFrame) -> dict:
    """Pooled over configs: top-1 share (exact or within noise), Spearman median and mean, the goals."""
    if rows.empty:
        return {"configs": 0}
    rho = rows["spearman"].dropna()
    share = float(rows["top1_ok"].mean())
    return {"configs": int(len(rows)), "top1_exact": int((rows["top1"] == "exact").sum()),
            "top1_within_noise": int((rows["top1"] == "within noise").sum()),
            "top1_missed": int((rows["top1"] == "missed").sum()), "top1_share": share,
            "spearman_median": float(rho.median()) if len(rho) else math.nan,
            "spearman_mean": float(rho.mean()) if len(rho) else math.nan, "spearman_configs": int(len(rho)),
            "goal_top1": GOAL_TOP1, "goal_spearman": GOAL_SPEARMAN,
            "meets_top1": share >= GOAL_TOP1, "meets_spearman": bool(len(rho)) and float(rho.median()) >= GOAL_SPEARMAN}


# -- committed evidence (a reader: files in, frames out) ------------------------------------------------------

def _candidate_config(given: ModelConfig, row: dict) -> ModelConfig:
    if row.get("is_given"):
        return given
    return given.replace(name=row["name"], hidden_size=int(row["h"]), num_attention_heads=int(row["a"]),
                         num_layers=int(row["L"]), intermediate_size=int(row["ffn"]),
                         padded_vocab_size=int(row["v"]))


def modelled_for(given: ModelConfig, candidates: list[dict], gpu: GpuModel) -> pd.DataFrame:
    """name, modelled_speedup of each candidate row (h, a, L, ffn, v) under today's model of `gpu`."""
    base = step_estimate(given, gpu).step_ms
    rows = []
    for row in candidates:
        c = _candidate_config(given, row)
        rows.append({"name": row["name"], "modelled_speedup": base / step_estimate(c, gpu).step_ms})
    return pd.DataFrame(rows)


def evidence_agreement(folder: Path, gpu: GpuModel) -> tuple[dict, pd.DataFrame]:
    """(figures, per-shape table) of one committed `advise --measure` folder, re-modelled with `gpu`."""
    doc = json.loads((Path(folder) / "advice.json").read_text())
    rounds = pd.read_csv(Path(folder) / "rounds.csv")
    given = ModelConfig(**doc["config"])
    measured_names = {r["name"] for r in doc["measured"]}
    candidates = [r for r in doc["candidates"] if r["name"] in measured_names]
    shapes = pd.DataFrame({"name": [r["name"] for r in candidates],
                           "L": [given.num_layers if r.get("is_given") else int(r["L"]) for r in candidates],
                           "tokens": [given.tokens] * len(candidates)})
    again = self_name(given.name)
    if again in set(rounds["candidate"]):
        shapes = pd.concat([shapes, pd.DataFrame({"name": [again], "L": [given.num_layers], "tokens": [given.tokens]})])
    per_round = round_steps(rounds, shapes)
    modelled = modelled_for(given, candidates, gpu)
    figures = config_agreement(per_round, modelled, given.name, rounds=rounds)
    figures.update({"config": Path(folder).name, "source": str(folder),
                    "git_sha": doc.get("environment", {}).get("git_sha"),
                    "gpu_name": doc.get("environment", {}).get("gpu_name"),
                    "then_modelled_top": max(doc["measured"], key=lambda r: r.get("modelled_speedup") or 0)["name"]})
    return figures, shapes_frame(per_round, modelled, given.name, Path(folder).name)


def swiglu_agreement(folder: Path, gpu: GpuModel) -> dict:
    """Spearman of today's modelled MLP-block throughput against the measured one in a committed
    `advise --swiglu --measure` folder (swiglu.csv), and whether the modelled best is the measured best or
    inside its per-round spread."""
    from .swiglu import modelled_swiglu

    doc = json.loads((Path(folder) / "advice.json").read_text())
    measured = pd.read_csv(Path(folder) / "swiglu.csv")
    cfg = ModelConfig(**doc["config"])
    model = modelled_swiglu(cfg, gpu, measured["ffn"].astype(int).tolist()).set_index("ffn")["modelled_tflops"]
    m = measured.set_index("ffn")["tflops"]
    best_model, best_measured = int(model.idxmax()), int(m.idxmax())
    rounds = pd.read_csv(Path(folder) / "rounds.csv")
    fb = rounds[rounds["what"] == "mlp_forward_backward"].pivot_table(index="round", columns="candidate",
                                                                     values="time_ms")
    from .swiglu import mlp_config, mlp_flops
    per_flop = {f: mlp_flops(mlp_config(cfg, f), backward=True) for f in (best_model, best_measured)}
    ratios = [(fb[f"f{best_model}"][r] / per_flop[best_model]) / (fb[f"f{best_measured}"][r] / per_flop[best_measured])
              for r in fb.index]
    gap = statistics.median(ratios)
    lo, hi = bootstrap_interval(ratios)
    top1 = ("exact" if best_model == best_measured else
            "within noise" if faster_verdict(gap, lo, hi, 0.0, 0.0) != "faster" else "missed")
    return {"config": Path(folder).name, "kind": "swiglu widths", "shapes": int(len(m)),
            "rounds": int(rounds["round"].nunique()), "spearman": spearman(model[m.index], m),
            "modelled_top": f"f{best_model}", "measured_top": f"f{best_measured}", "top1": top1,
            "top1_ok": top1 != "missed", "measured_best_over_modelled_top": gap, "gap_ci_lo": lo, "gap_ci_hi": hi}


def remodelled_agreement(rounds: pd.DataFrame, gpu: GpuModel, *, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per config, per-shape table) of a committed agreement run (its rounds.csv: config, round,
    candidate, what, time_ms) against today's model of `gpu`: the measured rounds stay as they were, the
    shapes are rebuilt from their reference config and their names (the candidate search names them) and
    modelled again. What a new calibration table would have ranked, on measurements that did not see it."""
    from .candidates import configs_by_name

    refs = {r.key: r for r in reference_configs()}
    rows, tables = [], []
    for key, measured in rounds.groupby("config", sort=False):
        ref = refs.get(key)
        if ref is None:
            continue
        names = [n for n in measured["candidate"].unique() if n != self_name(ref.config.name)]
        configs = configs_by_name(ref.config, gpu, ref.space, names)
        base = step_estimate(ref.config, gpu).step_ms
        modelled = pd.DataFrame({"name": names, "modelled_speedup": [base / step_estimate(c, gpu).step_ms for c in configs]})
        shapes = pd.DataFrame({"name": [*names, self_name(ref.config.name)],
                               "L": [c.num_layers for c in configs] + [ref.config.num_layers],
                               "tokens": [ref.config.tokens] * (len(names) + 1)})
        per_round = round_steps(measured, shapes)
        figures = config_agreement(per_round, modelled, ref.config.name, rounds=measured, seed=seed)
        rows.append({**figures, "config": key, "why": ref.why, "attention": ref.config.attention})
        tables.append(shapes_frame(per_round, modelled, ref.config.name, key))
    return pd.DataFrame(rows), (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())

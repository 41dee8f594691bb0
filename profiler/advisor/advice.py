"""The advisor's library API: check a shape, propose shapes of the same size, and (optionally) measure them.

    from models import load_config
    from profiler.advisor import AdviceOptions, advise, resolve_gpu
    advice = advise(load_config("gpt3-2.7b"), resolve_gpu("h100"), AdviceOptions())
    advice.checks        # one row per rule: status, cost, paper section
    advice.candidates    # every candidate in the budget, pre-ranked by the cost model

With `measure=True` and a device, the selected candidates are timed as full layers plus the logit layer in
interleaved rounds (`advice.measured`, `advice.rounds`) and the given shape and the best proposal are
profiled per component (`advice.component_difference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from models import ModelConfig

from .candidates import SearchSpace, candidates_frame, configs_by_name, select_for_measurement
from .gpus import GpuModel, calibration_summary
from .ranking import (BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, SELF_SUFFIX, component_difference, measured_summary,
                      paired_difference, round_steps, self_name)
from .serving import ServingShape, serving_flag
from .rules import check_inference_kernels, check_shape, checks_frame, elements, vocab_pair
from .swiglu import SwigluSearch, mlp_config, modelled_swiglu, reference_rank_sentence, swiglu_sizes, swiglu_summary


@dataclass(frozen=True)
class AdviceOptions:
    space: SearchSpace = field(default_factory=SearchSpace)
    top: int = 4  # best pre-ranked candidates to measure (plus the paper's head-count fixes)
    measure: bool = False
    rounds: int = 5
    min_gain: float = 0.02  # a measured speed-up below this is "no gain"
    seed: int = 0
    profile: bool = True  # profile the given shape and the best proposal per component
    swiglu: SwigluSearch | None = None  # set: run the SwiGLU width search instead of the shape search
    self_check: bool = True  # time the given shape twice per round (its self-spread: ranking.self_spread)
    check_costs: bool = True  # time the vocabulary fix's logit layers and quote the head-count fix's cost
    bench_budget: dict | None = None  # bench's warm-up / repetitions per call (None: its defaults)
    max_proposals: int | None = None  # measure at most this many proposals (the first of the selection)
    serving: ServingShape = field(default_factory=ServingShape)

    def to_dict(self) -> dict:
        return {"space": self.space.to_dict(), "top": self.top, "measure": self.measure, "rounds": self.rounds,
                "min_gain": self.min_gain, "seed": self.seed, "profile": self.profile,
                "swiglu": self.swiglu.to_dict() if self.swiglu else None, "self_check": self.self_check,
                "check_costs": self.check_costs, "bench_budget": self.bench_budget,
                "max_proposals": self.max_proposals,
                "serving": self.serving.to_dict(),
                "statistics": {"interval": f"percentile bootstrap of the median per-round ratio, "
                                           f"{BOOTSTRAP_RESAMPLES} resamples, central {BOOTSTRAP_LEVEL:.0%}, seed {self.seed}",
                               "faster": "interval excludes 1.0, gain above the self-spread and the minimum gain"}}


@dataclass
class Advice:
    config: ModelConfig
    gpu: GpuModel
    options: AdviceOptions
    checks: pd.DataFrame
    candidates: pd.DataFrame | None = None  # modelled (measured columns joined for the measured ones)
    selected: list[str] = field(default_factory=list)
    measured: pd.DataFrame | None = None
    rounds: pd.DataFrame | None = None
    component_difference: pd.DataFrame | None = None
    swiglu: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def _note(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def advise(cfg: ModelConfig, gpu: GpuModel, options: AdviceOptions, *, device: torch.device | None = None,
           out_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> Advice:
    if options.measure and device is None:
        raise ValueError("measure=True needs a device")
    advice = Advice(cfg, gpu, options, checks_frame(check_shape(cfg, gpu)))
    advice.notes.append(calibration_note(gpu))
    if options.swiglu is not None:
        return _swiglu(advice, device, progress)
    frame = candidates_frame(cfg, gpu, options.space, options.serving)
    advice.selected = select_for_measurement(frame, options.top, elements(gpu.paper_alignment_bytes, cfg.dtype))
    if options.max_proposals is not None:
        advice.selected = advice.selected[:options.max_proposals]
    configs = configs_by_name(cfg, gpu, options.space, [cfg.name, *advice.selected])
    # would DeepSpeed's inference kernels take the shapes worth measuring (paper VII-C)?
    kernels = {c.name: check_inference_kernels(c).status for c in configs}
    frame["inference_kernels"] = frame["name"].map(kernels)
    advice.candidates = frame
    if not options.measure:
        best = frame.iloc[1] if len(frame) > 1 else None
        if best is None:
            advice.notes.append("no candidate shape within the budget")
        elif best["rank_score"] > 1:
            advice.notes.append(f"best modelled proposal: {best['name']} ({best['changes']}): "
                                f"{best['modelled_speedup']:.3f}x modelled; measure it with --measure")
        else:
            advice.notes.append(f"the model finds no shape of this size faster (best: {best['name']}, "
                                f"{best['modelled_speedup']:.3f}x); --measure checks the closest ones")
        return advice

    from . import measure  # torch-heavy; only a measuring run needs it

    advice.rounds = time_shapes(configs, options, device, progress)
    measure.release(device)
    summary = summarize_shapes(advice.rounds, configs, options)
    advice.measured = summary.merge(frame[["name", "changes", "h", "a", "head_dim", "L", "ffn", "v", "params",
                                           "params_delta_pct", "modelled_speedup", "modelled_prefill_speedup",
                                           "modelled_decode_speedup", "serving_flag", "leaves_flat_region",
                                           "scaling_note", "inference_kernels"]], on="name", how="left")
    advice.measured["speedup_per_param"] = advice.measured["speedup"] * (
        advice.measured["params"] / frame.iloc[0]["params"])
    # the serving flag against the *measured* training speed-up (modelled serving)
    advice.measured["serving_flag"] = [
        serving_flag(s if v == "faster" else 1.0, p, d) for s, v, p, d in zip(
            advice.measured["speedup"], advice.measured["verdict"], advice.measured["modelled_prefill_speedup"],
            advice.measured["modelled_decode_speedup"])]
    advice.candidates = frame.merge(summary[["name", "tokens_per_s", "speedup", "speedup_ci_lo", "speedup_ci_hi",
                                             "speedup_p10", "speedup_p90", "verdict"]], on="name", how="left")
    advice.notes += headline(advice.measured, options.min_gain)
    if options.check_costs:
        _measured_check_costs(advice, device, progress)
    proposals = advice.measured[~advice.measured["is_given"]]
    if options.profile and not proposals.empty and out_dir is not None:
        best = next(c for c in configs if c.name == proposals.iloc[0]["name"])
        components = measure.profile_components([cfg, best], device, out_dir / "profiles", gpu.matmul_tflops,
                                                progress)
        advice.component_difference = component_difference(components, cfg.name, best.name,
                                                           given_layers=cfg.num_layers, best_layers=best.num_layers)
    return advice


def calibration_note(gpu: GpuModel) -> str:
    """The sentence every output carries: which table calibrated the model, or that none did."""
    cal = calibration_summary(gpu)
    if not cal["calibrated"]:
        return f"cost model UNCALIBRATED for {gpu.key}: {cal['note']}"
    prov = cal["provenance"]
    return (f"cost model calibrated for {gpu.key} by {cal['path']} ({cal['gemm_points']} GEMM and "
            f"{cal['attention_points']} attention points; {prov.get('source', '?')}, built at "
            f"{prov.get('built_at_commit') or prov.get('git_sha') or '?'})")


def time_shapes(configs: list[ModelConfig], options: AdviceOptions, device, progress=None) -> pd.DataFrame:
    """Interleaved rounds of the configs' layers + logit layers (the first config is the given shape; with
    `self_check` it is timed twice per round). The rounds table (measure.time_rounds)."""
    from . import measure

    again = self_name(configs[0].name) if options.self_check else None
    _note(progress, f"timing {len(configs)} shapes{' (the given one twice)' if again else ''} x {options.rounds} "
                    "shuffled interleaved rounds (layer fwd, fwd+bwd, logits fwd+bwd)")
    subjects = measure.layer_subjects(configs, device, again=again)
    try:
        return measure.time_rounds(subjects, rounds=options.rounds, device=device, seed=options.seed,
                                   progress=progress, bench_budget=options.bench_budget)
    finally:
        del subjects


def summarize_shapes(rounds: pd.DataFrame, configs: list[ModelConfig], options: AdviceOptions) -> pd.DataFrame:
    """ranking.measured_summary of a time_shapes table (the first config is the given shape)."""
    given = configs[0]
    shapes = pd.DataFrame({"name": [c.name for c in configs] + [self_name(given.name)],
                           "L": [c.num_layers for c in configs] + [given.num_layers],
                           "tokens": [c.tokens for c in configs] + [given.tokens]})
    return measured_summary(round_steps(rounds, shapes), given.name, options.min_gain, rounds=rounds,
                            seed=options.seed)


def measure_proposal(cfg: ModelConfig, proposal: ModelConfig, options: AdviceOptions, device) -> dict:
    """One proposal against the given shape on one device: interleaved rounds of (given, given again,
    proposal), summarised as the proposal's row of ranking.measured_summary (speed-up, bootstrap interval,
    self-spread, verdict). The unit a parallel executor hands to each GPU."""
    rounds = time_shapes([cfg, proposal], options, device)
    summary = summarize_shapes(rounds, [cfg, proposal], options)
    return summary[summary["name"] == proposal.name].iloc[0].to_dict()


def _measured_check_costs(advice: Advice, device, progress) -> None:
    """Measured beside modelled costs where a rule's fix was timed: the vocabulary (the logit layer as run vs
    padded, timed here in interleaved rounds) and h/a (the best measured head-count fix at the same h, L, f)."""
    from . import measure

    checks, cfg = advice.checks, advice.config
    checks["measured_cost_ms"] = float("nan")
    checks["measured_note"] = ""
    pair = vocab_pair(cfg, advice.gpu)
    if pair is not None:
        names = [f"v={c.embedding_rows}" for c in pair]
        _note(progress, f"timing the logit layer at {names[0]} vs {names[1]}")
        rounds = measure.time_rounds(measure.logits_subjects(list(pair), device, names),
                                     rounds=min(advice.options.rounds, 3), device=device, seed=advice.options.seed)
        med, lo, hi = paired_difference(rounds, names[0], names[1], "logits_forward_backward")
        times = rounds.groupby("candidate")["time_ms"].median()
        row = checks["rule"] == "vocab_padding"
        checks.loc[row, "measured_cost_ms"] = med
        checks.loc[row, "measured_note"] = (f"logit layer fwd+bwd at {names[0]}: {times[names[0]]:.2f} ms, at {names[1]}: "
                                            f"{times[names[1]]:.2f} ms (median of {rounds['round'].nunique()} "
                                            f"rounds; difference p10 {lo:.2f}, p90 {hi:.2f} ms)")
        measure.release(device)
    m = advice.measured
    multiple = elements(advice.gpu.paper_alignment_bytes, cfg.dtype)
    given = m[m["is_given"]].iloc[0]
    fixes = m[(m["h"] == cfg.hidden_size) & (m["L"] == cfg.num_layers) & (m["ffn"] == cfg.ffn_size)
              & (m["head_dim"] % multiple == 0) & ~m["is_given"]]
    if cfg.head_dim % multiple and not fixes.empty:
        best = fixes.sort_values("step_ms").iloc[0]
        row = checks["rule"] == "head_dim_alignment"
        checks.loc[row, "measured_cost_ms"] = given["step_ms"] - best["step_ms"]
        checks.loc[row, "measured_note"] = (f"whole-model step {given['step_ms']:.1f} ms at a={cfg.num_attention_heads} vs "
                                            f"{best['step_ms']:.1f} ms at a={int(best['a'])} (the best measured "
                                            f"head-count fix; speed-up {best['speedup']:.3f}x, p10 "
                                            f"{best['speedup_p10']:.3f}, p90 {best['speedup_p90']:.3f})" +
                                            (f"; it also pads v to {int(best['v'])}" if best["v"] != cfg.embedding_rows
                                             else ""))


def headline(measured: pd.DataFrame, min_gain: float) -> list[str]:
    """The sentences a reader needs first: the best measured proposal, or that nothing measured beat the
    given shape beyond the noise."""
    proposals = measured[~measured["is_given"]]
    if proposals.empty:
        return ["no candidate was measured"]
    faster = proposals[proposals["verdict"] == "faster"]
    lines = []
    spread_row = measured.iloc[0]
    if "self_spread" in measured:
        lines.append(f"self-spread of the given shape in this run: {100 * spread_row['self_spread']:.1f}% "
                     f"({spread_row['self_spread_how']}); a proposal is 'faster' only when its {BOOTSTRAP_LEVEL:.0%} "
                     "bootstrap interval excludes 1.0 and its gain exceeds this and the minimum gain")
    for _, row in (faster if not faster.empty else proposals).head(1).iterrows():
        spread = (f"{row['speedup']:.3f}x [{row['speedup_ci_lo']:.3f}, {row['speedup_ci_hi']:.3f}] (median of "
                  f"{row['rounds']} per-round ratios, {BOOTSTRAP_LEVEL:.0%} bootstrap interval)")
        if row["verdict"] == "faster":
            lines.append(f"fastest measured proposal: {row['name']} ({row['changes']}), {spread} the given shape's "
                         f"training throughput, {row['params_delta_pct']:+.1f}% parameters")
        elif row["verdict"] == "slower":
            lines.append(f"no faster shape: the best measured proposal, {row['name']} ({row['changes']}), runs "
                         f"{spread} the given shape's throughput")
        else:
            lines.append(f"no gain: the best measured proposal, {row['name']} ({row['changes']}), runs {spread} the "
                         f"given shape's throughput, inside the noise or below the {100 * min_gain:.0f}% minimum")
        if row.get("leaves_flat_region"):
            lines.append(f"caution for {row['name']}: {row['scaling_note']}")
        if row.get("serving_flag"):
            lines.append(f"serving, {row['name']}: {row['serving_flag']} (modelled)")
    return lines


def _swiglu(advice: Advice, device, progress) -> Advice:
    cfg, options = advice.config, advice.options
    sizes = swiglu_sizes(cfg, options.swiglu)
    modelled = modelled_swiglu(cfg, advice.gpu, sizes)
    advice.swiglu = modelled
    if cfg.ffn_size in sizes:
        advice.notes.append("modelled: " + reference_rank_sentence(modelled, cfg.ffn_size, "modelled_tflops",
                                                                   "modelled_rank"))
    if not options.measure:
        return advice
    from . import measure

    _note(progress, f"timing {len(sizes)} MLP widths x {options.rounds} rounds (fwd, fwd+bwd)")
    subjects = measure.mlp_subjects([mlp_config(cfg, f) for f in sizes], device, [f"f{f}" for f in sizes])
    if options.self_check:  # the config's own width a second time: the run's self-spread
        reference = next(s for s in subjects if s.name == f"f{cfg.ffn_size}")
        subjects.append(measure.Subject(f"f{cfg.ffn_size}{SELF_SUFFIX}", dict(reference.steps)))
    advice.rounds = measure.time_rounds(subjects, rounds=options.rounds, device=device, seed=options.seed,
                                        progress=progress, bench_budget=options.bench_budget)
    del subjects
    measure.release(device)
    summary = swiglu_summary(advice.rounds, cfg, cfg.ffn_size, options.min_gain, seed=options.seed)
    advice.swiglu = summary.merge(modelled.drop(columns=["ratio", "largest_pow2_per_gpu"]), on="ffn", how="left")
    advice.notes.append("measured: " + reference_rank_sentence(summary, cfg.ffn_size))
    return advice


def _records(df: pd.DataFrame | None) -> list[dict] | None:
    if df is None:
        return None
    clean = df.astype(object).where(df.notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in clean.to_dict("records")]


def document(advice: Advice, environment: dict, *, max_candidates: int = 50) -> dict:
    """Everything a reader (or the HTML report) needs, JSON-ready: provenance first."""
    candidates = advice.candidates
    if candidates is not None:
        keep = candidates["is_given"] | candidates["name"].isin(advice.selected)
        candidates = pd.concat([candidates[keep], candidates[~keep].head(max_candidates)]).drop_duplicates("name")
    return {
        "environment": environment,
        "gpu_model": advice.gpu.to_dict(),
        "calibration": calibration_summary(advice.gpu),
        "config": advice.config.to_dict(),
        "options": advice.options.to_dict(),
        "notes": advice.notes,
        "checks": _records(advice.checks),
        "candidates": _records(candidates),
        "candidates_total": None if advice.candidates is None else len(advice.candidates),
        "selected": advice.selected,
        "measured": _records(advice.measured),
        "rounds": _records(advice.rounds),
        "component_difference": _records(advice.component_difference),
        "swiglu": _records(advice.swiglu),
    }

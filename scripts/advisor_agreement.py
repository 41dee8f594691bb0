"""Does the advisor's modelled ranking predict the measured one? (issue 22, item 2)

On the GPU (one call; about 4-5 minutes for the 14 reference configs on an H200, estimated from the modelled
layer times; --budget-s bounds it and --configs picks a subset):

    python scripts/advisor_agreement.py --out DIR [--calibration FILE|auto|none] [--configs a,b] [--budget-s 270]
        [--top 3] [--max-proposals 4] [--rounds 5]

for each reference config (profiler/advisor/agreement.py: Pythia 160m..12b, GPT-3 2.7B and the paper's
variants, llama-2-7b-like, one h=16384 layer; flash and eager; b*s = 8192) runs the advisor's own measure
path (profiler.advisor.advise with measure=True: the given shape, timed twice, and its top proposals in
shuffled interleaved rounds; a short bench budget per call, stated in the output) and compares the modelled
ranking with the measured one: Spearman's rho and top-1 (exact, within the measured noise, or missed).
A config is started only while the budget has room for it (estimated from the ones before); configs are
written as they finish. Writes DIR/agreement.json (provenance: git SHA, GPU, torch/CUDA, calibration table,
settings; per config the figures; the pooled summary against the goals), DIR/agreement.csv (one line per
config), DIR/shapes.csv (modelled vs measured speed-up and rank per shape) and DIR/rounds.csv.

On a CPU, a committed agreement run re-modelled (no timing; --calibration a table file to try a new one):

    python scripts/advisor_agreement.py --from-agreement evidence/h200/advise-agreement --gpu h200 --out DIR

On a CPU, from committed evidence (no timing):

    python scripts/advisor_agreement.py --from-evidence evidence/h100/advise --gpu h100 --out DIR

re-models the shapes of every committed `advise --measure` folder with today's model (calibrated and
uncalibrated) and computes the same figures against the rounds measured then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.advisor import AdviceOptions, advise, resolve_gpu  # noqa: E402
from profiler.advisor.agreement import (agreement_summary, config_agreement, evidence_agreement,  # noqa: E402
                                        reference_configs, remodelled_agreement, shapes_frame, swiglu_agreement)
from profiler.advisor.cost_model import step_estimate  # noqa: E402
from profiler.advisor.gpus import calibration_summary  # noqa: E402
from profiler.advisor.ranking import round_steps, self_name  # noqa: E402

# per bench call on the GPU: enough for a stable median of a layer step, short enough for 14 configs in
# ~5 minutes (the advisor's own default is bench's: 25 ms warm-up, 100 ms of repetitions). At a538389 it was
# 20 ms / 3 repetitions: a 2.7B layer's fwd+bwd (~8 ms) got 3 samples, and the given shape against itself
# spread by 2.5-21% (self_spread), more than most proposals' modelled gains.
BENCH = {"warmup_ms": 5.0, "rep_ms": 50.0, "min_reps": 5, "max_warmup_ms": 60.0}


def git_sha() -> str | None:
    sha = os.environ.get("CODESIGN_GIT_SHA")
    if sha:
        return sha
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _write(out: Path, doc: dict, rows: list[dict], shapes: list[pd.DataFrame], rounds: list[pd.DataFrame]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    doc["summary"] = agreement_summary(frame) if not frame.empty else {"configs": 0}
    doc["configs"] = rows
    (out / "agreement.json").write_text(json.dumps(doc, indent=2, default=str))
    if rows:
        frame.to_csv(out / "agreement.csv", index=False)
    if shapes:
        pd.concat(shapes, ignore_index=True).to_csv(out / "shapes.csv", index=False)
    if rounds:
        pd.concat(rounds, ignore_index=True).to_csv(out / "rounds.csv", index=False)


def measure_reference(ref, gpu, options: AdviceOptions, device, *, seed: int = 0):
    """One reference config through the advisor's measure path: (figures, per-shape table, rounds)."""
    t0 = time.perf_counter()
    advice = advise(ref.config, gpu, dataclasses.replace(options, space=ref.space), device=device,
                    progress=lambda m: print(f"  {m}", flush=True))
    names = [ref.config.name, *advice.selected]
    shape_rows = advice.candidates[advice.candidates["name"].isin(names)]
    table = pd.DataFrame({"name": list(shape_rows["name"]) + [self_name(ref.config.name)],
                          "L": list(shape_rows["L"]) + [ref.config.num_layers],
                          "tokens": [ref.config.tokens] * (len(shape_rows) + 1)})
    per_round = round_steps(advice.rounds, table)
    modelled = advice.candidates[["name", "modelled_speedup"]]
    figures = config_agreement(per_round, modelled, ref.config.name, rounds=advice.rounds, seed=seed)
    best = advice.measured[~advice.measured["is_given"]].iloc[0]
    figures.update({"config": ref.key, "why": ref.why, "attention": ref.config.attention,
                    "tokens": ref.config.tokens, "seconds": round(time.perf_counter() - t0, 1),
                    "best_measured": best["name"], "best_measured_verdict": best["verdict"],
                    "best_measured_speedup": best["speedup"],
                    "best_measured_ci": [best["speedup_ci_lo"], best["speedup_ci_hi"]],
                    "calibrated": gpu.calibration is not None})
    shapes = shapes_frame(per_round, modelled, ref.config.name, ref.key).merge(
        advice.measured[["name", "speedup_ci_lo", "speedup_ci_hi", "verdict"]], on="name", how="left")
    return figures, shapes, advice.rounds.assign(config=ref.key)


def on_gpu(args) -> int:
    import torch

    from profiler.advisor.gpus import local_gpu_properties
    from profiler.hardware import environment

    if not torch.cuda.is_available():
        print("no CUDA device: use --from-evidence on a CPU", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.device("cuda", 0)
    local = local_gpu_properties()
    calibration = None if args.calibration == "none" else args.calibration
    gpu = resolve_gpu(None, local=local, calibration=calibration)
    options = AdviceOptions(top=args.top, measure=True, rounds=args.rounds, seed=args.seed, profile=False,
                            check_costs=False, bench_budget=BENCH, max_proposals=args.max_proposals)
    doc = {"environment": environment(device), "git_sha": git_sha(), "calibration": calibration_summary(gpu),
           "settings": {"top": args.top, "max_proposals": args.max_proposals, "rounds": args.rounds, "bench": BENCH,
                        "budget_s": args.budget_s, "seed": args.seed},
           "definitions": {"spearman": "rank correlation of modelled and measured speed-up over the measured shapes "
                                       "(the given one included), average ranks for ties",
                           "top1": "exact: the modelled best is the measured best; within noise: the measured best "
                                   "is not faster than the modelled best by the advisor's rule (bootstrap interval "
                                   "of the per-round ratio excludes 1.0 and the gain exceeds the self-spread)"}}
    rows, shapes, rounds, spent = [], [], [], []  # spent: (seconds, modelled layer fwd+bwd ms) per config
    refs = reference_configs(args.configs.split(",") if args.configs else None)
    for i, ref in enumerate(refs):
        elapsed = time.perf_counter() - started
        # a config's time grows with its layer step (rounds x shapes x bench calls): scale the slowest
        # seconds-per-modelled-ms seen so far (+ 1 ms for the fixed cost of a bench call)
        size = step_estimate(ref.config, gpu).layer_forward_backward_ms + 1.0
        estimate = max(sec / ms for sec, ms in spent) * size if spent else 0.0
        if elapsed + estimate > args.budget_s:
            print(f"budget: {elapsed:.0f} s spent, the next config would take ~{estimate:.0f} s; "
                  f"stopping before {ref.key} ({len(refs) - i} left)", flush=True)
            doc["skipped_for_budget"] = [r.key for r in refs[i:]]
            break
        t0 = time.perf_counter()
        print(f"== {ref.key} ({ref.why}): h={ref.config.hidden_size} a={ref.config.num_attention_heads} "
              f"L={ref.config.num_layers} b*s={ref.config.tokens} {ref.config.attention}", flush=True)
        try:
            figures, table, measured_rounds = measure_reference(ref, gpu, options, device, seed=args.seed)
            rows.append(figures)
            shapes.append(table)
            rounds.append(measured_rounds)
            print(f"  rho {figures['spearman']:.2f}, top-1 {figures['top1']} (modelled {figures['modelled_top']}, "
                  f"measured {figures['measured_top']}), {figures['seconds']:.0f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - one config failing (memory) must not lose the others
            rows.append({"config": ref.key, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                         "top1_ok": False, "top1": "error", "spearman": float("nan")})
            print(f"  failed: {rows[-1]['error']}", flush=True)
        finally:
            torch.cuda.empty_cache()
        spent.append((time.perf_counter() - t0, size))
        _write(args.out, doc, rows, shapes, rounds)
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    _write(args.out, doc, rows, shapes, rounds)
    print(json.dumps(doc["summary"], indent=1), flush=True)
    return 0


def write_agreement(out: Path, doc: dict, frame: pd.DataFrame, shapes: list[pd.DataFrame]) -> None:
    """A re-modelled agreement's files: agreement.json (the document), agreement.csv, shapes.csv."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(doc, indent=2, default=str))
    frame.to_csv(out / "agreement.csv", index=False)
    pd.concat(shapes, ignore_index=True).to_csv(out / "shapes.csv", index=False)


def from_evidence(args) -> int:
    rows, shapes = [], []
    swiglu = []
    for calibration in ("auto", None):
        gpu = resolve_gpu(args.gpu, calibration=calibration)
        label = "calibrated" if gpu.calibration is not None else "uncalibrated"
        for folder in sorted(p.parent for p in args.from_evidence.glob("*/advice.json")):
            if (folder / "swiglu.csv").exists():
                swiglu.append({**swiglu_agreement(folder, gpu), "model": label})
                continue
            if not (folder / "rounds.csv").exists():
                continue
            figures, table = evidence_agreement(folder, gpu)
            rows.append({**figures, "model": label})
            shapes.append(table.assign(model=label))
    frame = pd.DataFrame(rows)
    doc = {"source": str(args.from_evidence), "gpu": args.gpu, "git_sha": git_sha(),
           "calibration": calibration_summary(resolve_gpu(args.gpu)),
           "note": ("the committed advise folders' rounds (measured then, 3 rounds, the given shape timed once: its "
                    "single-call spread stands in for the self-spread) against today's model of their shapes"),
           "summary": {m: agreement_summary(frame[frame["model"] == m]) for m in frame["model"].unique()},
           "configs": rows, "swiglu": swiglu}
    write_agreement(args.out, doc, frame, shapes)
    cols = ["model", "config", "shapes", "rounds", "spearman", "modelled_top", "measured_top", "top1",
            "measured_best_over_modelled_top", "gap_ci_lo", "gap_ci_hi", "self_spread"]
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for s in swiglu:
        print(f"{s['model']} swiglu ({s['config']}): rho {s['spearman']:.3f}, top-1 {s['top1']} "
              f"(modelled {s['modelled_top']}, measured {s['measured_top']})")
    print(json.dumps(doc["summary"], indent=1))
    return 0


def from_agreement(args) -> int:
    """A committed agreement run's rounds against today's model, with and without a calibration table."""
    rounds_file = args.from_agreement / "rounds.csv"
    if not rounds_file.is_file():
        print(f"--from-agreement: {rounds_file} not found; give a folder written by this script on a GPU", file=sys.stderr)
        return 2
    rounds = pd.read_csv(rounds_file)
    models = {"calibrated": args.calibration if args.calibration != "none" else "auto", "uncalibrated": None}
    frames, shapes, summaries, tables = [], [], {}, {}
    for label, calibration in models.items():
        gpu = resolve_gpu(args.gpu, calibration=calibration)
        rows, table = remodelled_agreement(rounds, gpu, seed=args.seed)
        frames.append(rows.assign(model=label))
        shapes.append(table.assign(model=label))
        summaries[label] = agreement_summary(rows)
        tables[label] = calibration_summary(gpu)
    frame = pd.concat(frames, ignore_index=True)
    doc = {"source": str(args.from_agreement), "gpu": args.gpu, "git_sha": git_sha(), "calibration": tables,
           "note": "the rounds measured then (see the source's agreement.json), the shapes modelled again now",
           "summary": summaries, "configs": frame.to_dict("records")}
    write_agreement(args.out, doc, frame, shapes)
    cols = ["model", "config", "shapes", "spearman", "modelled_top", "measured_top", "top1"]
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for label, summary in summaries.items():
        print(f"{label}: Spearman median {summary['spearman_median']:.2f} (goal {summary['goal_spearman']}), "
              f"top-1 {summary['top1_share']:.0%} (exact {summary['top1_exact']} of {summary['configs']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--from-evidence", type=Path, help="a folder of committed advise runs (CPU; no timing)")
    p.add_argument("--from-agreement", type=Path, help="a committed agreement run (this script's GPU output): its "
                                                       "rounds re-modelled with today's model (CPU; no timing)")
    p.add_argument("--gpu", default="h100", help="--from-evidence / --from-agreement: the GPU kind they were measured on")
    p.add_argument("--calibration", default="auto", help="GPU run: auto | none | a table file")
    p.add_argument("--configs", help="comma-separated reference keys (default: all; see profiler/advisor/agreement.py)")
    p.add_argument("--budget-s", type=float, default=270.0, help="GPU run: start no config past this (default 270)")
    p.add_argument("--top", type=int, default=3, help="best modelled proposals per config (default 3; the paper's "
                                                      "head-count fixes of a misaligned h/a come after them)")
    p.add_argument("--max-proposals", type=int, default=4, help="proposals measured per config at most (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="shuffled interleaved rounds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.from_agreement:
        return from_agreement(args)
    return from_evidence(args) if args.from_evidence else on_gpu(args)


if __name__ == "__main__":
    raise SystemExit(main())

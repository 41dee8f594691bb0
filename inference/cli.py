"""`python -m inference bench ...` and `python -m inference report DIR`: a thin shell over inference.bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from profiler.errors import UserError, run_parsed

from .checkpoints import DEFAULT_ROOT
from .engines.base import ENGINES

EXAMPLES = """examples:
  python -m inference bench --models pythia-160m,pythia-410m,pythia-1b,pythia-1.4b --batch 1,8
  python -m inference bench --models my-model.yaml,/data/pythia-1b --engines mii --repeats 3 --out runs/mine
  python -m inference bench --models pythia-6.9b --engines mii --tensor-parallel 2   # 2 GPUs (torchrun inside)
  python -m inference report runs/inference --layer-profile runs/layer/run.json
re-running the same bench command resumes: rows already measured are skipped."""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(text))
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of whole numbers (e.g. 1,8)") from None


def _params(text: str | None) -> float | None:
    if text is None:
        return None
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    try:
        t = text.strip().lower()
        return float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t)
    except (ValueError, KeyError):
        raise UserError(f"--max-params: '{text}' is not a count (e.g. 3e9 or 3b)") from None


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True,
                        help="comma-separated: bundled names (pythia-1b), config files, or checkpoint directories")
    parser.add_argument("--engines", default="hf,mii", help=f"comma-separated, of {', '.join(ENGINES)} (default hf,mii)")
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per request (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per row (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed generations first (default 1)")
    parser.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32 (default float16; "
                        "transformers on a CPU computes in float32)")
    parser.add_argument("--out", default="runs/inference", help="results directory; rerunning resumes there")
    parser.add_argument("--checkpoints", default=str(DEFAULT_ROOT), help=f"checkpoint cache (default {DEFAULT_ROOT})")
    parser.add_argument("--tensor-parallel", type=int, default=1, help="MII tensor-parallel degree (GPUs per model)")
    parser.add_argument("--max-params", help="leave out models with more parameters (e.g. 3e9 or 3b)")
    parser.add_argument("--layer-profile", help="run.json of `python -m profiler layer`, linked in the report")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_bench_command(args) -> int:
    from .bench import BenchSpec, run_bench

    spec = BenchSpec(models=_csv(args.models), engines=_csv(args.engines), batches=_ints(args.batch, "--batch"),
                     prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup,
                     dtype=args.dtype, out=Path(args.out), checkpoints=Path(args.checkpoints),
                     tensor_parallel=args.tensor_parallel, max_params=_params(args.max_params), seed=args.seed,
                     device=args.device)
    profile = Path(args.layer_profile) if args.layer_profile else None
    if profile is not None and not profile.is_file():
        raise UserError(f"--layer-profile: {profile} is not a file; give the run.json of `python -m profiler layer`")
    outcome = run_bench(spec, progress=not args.no_progress and sys.stderr.isatty(), layer_profile=profile)
    statuses = {}
    for row in outcome.rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    print(f"{outcome.measured} rows measured now, {outcome.skipped_done} reused; in {outcome.results}: {summary}")
    if outcome.report:
        print(f"report: {outcome.report}")
    return 0


def run_report_command(args) -> int:
    from reports.inference_report import write_report

    out = Path(args.dir)
    if not (out / "results.jsonl").is_file():
        raise UserError(f"report: {out} has no results.jsonl; give the --out directory of a bench run")
    print(f"report: {write_report(out, layer_profile=args.layer_profile)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=(
        "Inference bench (paper Section VII-C, Figure 13): Pythia-style checkpoints through DeepSpeed-MII "
        "and transformers."), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    bench = sub.add_parser("bench", help="time generation per model x engine x batch; write results and report.html")
    add_bench_args(bench)
    bench.set_defaults(_run=run_bench_command)
    report = sub.add_parser("report", help="re-render report.html (and results.csv) from a results directory")
    report.add_argument("dir", help="the --out directory of a bench run")
    report.add_argument("--layer-profile", help="run.json of `python -m profiler layer`")
    report.set_defaults(_run=run_report_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv,
                      "rows measured so far are saved in results.jsonl; run the same command again to resume")

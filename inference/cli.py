"""`python -m inference bench|report|carryover ...`: a thin shell over inference.bench and
inference.carryover_run."""

from __future__ import annotations

import argparse
import shlex
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
  python -m inference carryover --models gpt3-2.7b-c1,gpt3-2.7b-c2,gpt3-2.7b,gpt3-2.7b-a20 --baseline gpt3-2.7b \\
      --out runs/carryover
re-running the same bench or carryover command resumes: rows already measured are skipped."""


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


def add_bench_args(parser: argparse.ArgumentParser, *, batch: str = "1,8", prompt_len: str = "128",
                   new_tokens: int = 64, models_required: bool = True) -> None:
    parser.add_argument("--models", required=models_required,
                        help="comma-separated: bundled names (pythia-1b), config files, or checkpoint directories")
    parser.add_argument("--engines", default="hf,mii", help=f"comma-separated, of {', '.join(ENGINES)} (default hf,mii; "
                        "a shape mii's fused kernels refuse gets a mii-noinject row instead)")
    parser.add_argument("--batch", default=batch, help=f"batch sizes, comma-separated (default {batch})")
    parser.add_argument("--prompt-len", default=prompt_len,
                        help=f"prompt lengths in tokens, comma-separated (default {prompt_len})")
    parser.add_argument("--new-tokens", type=int, default=new_tokens,
                        help=f"generated tokens per request (default {new_tokens})")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per row (default 5)")
    parser.add_argument("--warmup-s", type=float, default=2.0,
                        help="untimed generations per row for this many seconds, at least one (default 2)")
    parser.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32 (default float16; "
                        "transformers on a CPU computes in float32)")
    parser.add_argument("--checkpoints", default=str(DEFAULT_ROOT), help=f"checkpoint cache (default {DEFAULT_ROOT})")
    parser.add_argument("--tensor-parallel", type=int, default=1, help="MII tensor-parallel degree (GPUs per model)")
    parser.add_argument("--max-params", help="leave out models with more parameters (e.g. 3e9 or 3b)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    parser.add_argument("--order-seed", type=int, help="seed of the random timed order of engines and rows "
                        "(default: drawn, and recorded in every row)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--redo", default="", help="measure again the rows a rerun would skip that have these "
                        "statuses, comma-separated (e.g. mismatch,unchecked after a fix; default none)")


def bench_spec(args, out: Path):
    from .spec import BenchSpec

    return BenchSpec(models=_csv(args.models), engines=_csv(args.engines), batches=_ints(args.batch, "--batch"),
                     prompt_lens=_ints(args.prompt_len, "--prompt-len"), new_tokens=args.new_tokens,
                     repeats=args.repeats, warmup_s=args.warmup_s, dtype=args.dtype, out=out,
                     checkpoints=Path(args.checkpoints), tensor_parallel=args.tensor_parallel,
                     max_params=_params(args.max_params), seed=args.seed, order_seed=args.order_seed,
                     device=args.device, redo=_csv(args.redo))


def _summary(rows: list[dict]) -> str:
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))


def run_bench_command(args) -> int:
    from .bench import run_bench

    spec = bench_spec(args, Path(args.out))
    profile = Path(args.layer_profile) if args.layer_profile else None
    if profile is not None and not (profile.is_file() or (profile / "run.json").is_file()):
        raise UserError(f"--layer-profile: {profile} is not a file; give the run.json of `python -m profiler layer`")
    outcome = run_bench(spec, progress=not args.no_progress and sys.stderr.isatty(), layer_profile=profile)
    print(f"{outcome.measured} rows measured now, {outcome.skipped_done} reused; in {outcome.results}: "
          f"{_summary(outcome.rows)}")
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


def _print_glance(out: Path) -> None:
    """The report's first table on the console: each shape's training and prefill gain over the baseline."""
    import pandas as pd

    path = out / "glance.csv"
    if path.is_file() and path.stat().st_size > 1:
        try:
            glance = pd.read_csv(path, keep_default_na=False)
        except pd.errors.EmptyDataError:
            return
        if len(glance):
            print(glance.set_index("model").T.to_string())


def run_carryover_command(args) -> int:
    from .carryover_run import CarryoverSpec, decode_spec, run_carryover

    out = Path(args.out)
    if args.report_only:
        from reports.carryover_report import write_carryover_report

        report = write_carryover_report(out)
        _print_glance(out)
        print(f"report: {report}")
        return 0
    if not args.models:
        raise UserError("--models: give the shapes to compare (bundled names, config files or checkpoint directories)")
    if args.baseline is None:
        raise UserError("--baseline: name the shape the others are normalised to (one of --models)")
    bench = bench_spec(args, out / "bench")
    decode = None
    if not args.no_decode:
        decode = decode_spec(bench, out / "decode", batches=_ints(args.decode_batches, "--decode-batches"),
                             engines=_csv(args.decode_engines) if args.decode_engines else bench.engines,
                             prompt_len=args.decode_prompt_len, new_tokens=args.decode_new_tokens,
                             repeats=args.decode_repeats)
    spec = CarryoverSpec(bench=bench, baseline=args.baseline, out=out,
                         layer_profiles=tuple(Path(p) for p in args.layer_profile or ()),
                         layer_attention=_csv(args.layer_attention), layer_args=tuple(shlex.split(args.layer_args or "")),
                         run_layer=not args.no_layer, run_bench=not args.no_bench, decode=decode)
    outcome = run_carryover(spec, progress=not args.no_progress and sys.stderr.isatty())
    for note in outcome.notes:
        print(f"note: {note}")
    _print_glance(out)
    print(f"report: {outcome.report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=(
        "Inference bench (paper Section VII-C, Figure 13): GPT-NeoX checkpoints through DeepSpeed-MII "
        "and transformers; and whether training-shape gains carry over to inference."),
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    bench = sub.add_parser("bench", help="time generation per model x engine x prompt x batch; results and report.html")
    add_bench_args(bench)
    bench.add_argument("--out", default="runs/inference", help="results directory; rerunning resumes there")
    bench.add_argument("--layer-profile", help="run.json of `python -m profiler layer`, linked in the report")
    bench.set_defaults(_run=run_bench_command)
    report = sub.add_parser("report", help="re-render report.html (and results.csv) from a results directory")
    report.add_argument("dir", help="the --out directory of a bench run")
    report.add_argument("--layer-profile", help="run.json of `python -m profiler layer`")
    report.set_defaults(_run=run_report_command)
    carry = sub.add_parser("carryover", help="training throughput vs prefill and decode latency per shape, "
                           "normalised to a baseline shape; verdicts and report",
                           formatter_class=argparse.RawDescriptionHelpFormatter, description=(
                               "Runs the layer profiler forward and forward+backward (DIR/layer-*, unless "
                               "--layer-profile is given), the bench (DIR/bench) and the decode-vs-batch sweep "
                               "(DIR/decode), then writes DIR/carryover.html, carryover.csv and verdicts.txt."))
    add_bench_args(carry, batch="1,16", prompt_len="128,2048", new_tokens=32, models_required=False)
    carry.add_argument("--baseline", help="the shape the others are normalised to (one of --models)")
    carry.add_argument("--out", default="runs/carryover", help="output directory; rerunning resumes there")
    carry.add_argument("--layer-profile", action="extend", nargs="+", metavar="RUN_DIR_OR_JSON",
                       help="layer profiler runs (forward and/or forward+backward: each entry's mode is read from "
                            "its run.json); default: profile the shapes here")
    carry.add_argument("--layer-attention", default="flash",
                       help="attention of the layer profiles run here, comma-separated of flash, sdpa, eager; the "
                       "first gives the headline verdicts, each other one its own set (default flash, as trained; "
                       "flash,eager also compares with the attention transformers 4.38 and DeepSpeed's kernels run; "
                       "sdpa on a CPU)")
    carry.add_argument("--layer-args", help="more flags for `python -m profiler layer`, as one argument: "
                       "--layer-args='--no-floor --iters 5'")
    carry.add_argument("--no-layer", action="store_true", help="do not run the layer profiler (a rerun keeps the "
                       "profiles an earlier run of DIR made)")
    carry.add_argument("--decode-batches", default="1,2,4,8,16,32,64",
                       help="batch sizes of the decode-vs-batch sweep (default 1,2,4,8,16,32,64)")
    carry.add_argument("--decode-engines", help="engines of the sweep (default: --engines)")
    carry.add_argument("--decode-prompt-len", type=int, default=128, help="prompt of the sweep (default 128)")
    carry.add_argument("--decode-new-tokens", type=int, default=16, help="new tokens of the sweep (default 16)")
    carry.add_argument("--decode-repeats", type=int, help="timed generations per sweep row (default: --repeats)")
    carry.add_argument("--no-decode", action="store_true", help="skip the decode-vs-batch sweep")
    carry.add_argument("--no-bench", action="store_true", help="skip the prompt x batch bench (run only the sweep)")
    carry.add_argument("--report-only", action="store_true", help="only re-render the report from DIR")
    carry.set_defaults(_run=run_carryover_command)
    from . import invariance  # issue 11: batch invariance of transformers and DeepSpeed-MII
    check = sub.add_parser("invariance", help=invariance.HELP, description=invariance.HELP)
    invariance.add_args(check)
    check.set_defaults(_run=invariance.run_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv,
                      "rows measured so far are saved in results.jsonl; run the same command again to resume")

"""`python -m inference carryover`: do training-shape gains carry over to inference? Runs the comparison
(inference.carryover_run), then writes what inference.carryover_data loads: DIR/carryover.html,
carryover.csv, glance.csv and verdicts.txt, and the bench's and the decode sweep's own reports."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from inference.carryover_data import load_carryover, write_tables
from inference.carryover_measure import RoundsSpec, grid, parse_cells
from inference.carryover_run import CarryoverSpec, decode_spec, run_carryover
from profiler.errors import UserError
from reports.carryover_report import write_carryover_report
from reports.inference_report import write_report as write_bench_report

from .bench_args import add_bench_args, bench_spec, csv, ints

DESCRIPTION = ("Runs the layer profiler forward and forward+backward (DIR/layer-*, unless --layer-profile is "
               "given), the interleaved rounds (DIR/rounds: training fwd+bwd, prefill and neox-graph decode of every "
               "shape in shuffled rounds, the headline verdicts' basis), the bench (DIR/bench) and the decode-vs-batch "
               "sweep (DIR/decode), then writes DIR/carryover.html, carryover.csv and verdicts.txt.")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = DESCRIPTION
    add_bench_args(parser, batch="1,16", prompt_len="128,2048", new_tokens=32, models_required=False)
    parser.add_argument("--baseline", help="the shape the others are normalised to (one of --models)")
    parser.add_argument("--out", default="runs/carryover", help="output directory; rerunning resumes there")
    parser.add_argument("--layer-profile", action="extend", nargs="+", metavar="RUN_DIR_OR_JSON",
                        help="layer profiler runs (forward and/or forward+backward: each entry's mode is read from "
                            "its run.json); default: profile the shapes here")
    parser.add_argument("--layer-attention", default="flash",
                        help="attention of the layer profiles run here, comma-separated of flash, sdpa, eager; the "
                        "first gives the headline verdicts, each other one its own set (default flash, as trained; "
                        "flash,eager also compares with the attention transformers 4.38 and DeepSpeed's kernels run; "
                        "sdpa on a CPU)")
    parser.add_argument("--layer-args", help="more flags for `python -m profiler layer`, as one argument: "
                        "--layer-args='--no-floor --iters 5'")
    parser.add_argument("--no-layer", action="store_true", help="do not run the layer profiler (a rerun keeps the "
                        "profiles an earlier run of DIR made)")
    parser.add_argument("--decode-batches", default="1,2,4,8,16,32,64",
                        help="batch sizes of the decode-vs-batch sweep (default 1,2,4,8,16,32,64)")
    parser.add_argument("--decode-engines", help="engines of the sweep (default: --engines)")
    parser.add_argument("--decode-prompt-len", type=int, default=128, help="prompt of the sweep (default 128)")
    parser.add_argument("--decode-new-tokens", type=int, default=16, help="new tokens of the sweep (default 16)")
    parser.add_argument("--decode-repeats", type=int, help="timed generations per sweep row (default: --repeats)")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode-vs-batch sweep")
    parser.add_argument("--no-bench", action="store_true", help="skip the prompt x batch bench (run only the sweep)")
    parser.add_argument("--report-only", action="store_true", help="only re-render the report from DIR")
    rounds = parser.add_argument_group("interleaved rounds (DIR/rounds: the headline verdicts)")
    rounds.add_argument("--rounds", type=int, default=5, help="shuffled interleaved rounds per cell (default 5; "
                        "0: none, the verdicts then stand on the bench's rows)")
    rounds.add_argument("--round-prefill", default="1x2048", help="prefill cells BATCHxPROMPT, comma-separated "
                        "(default 1x2048)")
    rounds.add_argument("--round-decode", default="1x128,16x2048,64x2048", help="the verdicts' decode cells "
                        "BATCHxCONTEXT on neox-graph (default 1x128,16x2048,64x2048)")
    rounds.add_argument("--round-sweep-batches", default="", help="decode vs batch and context: these batches x "
                        "--round-sweep-contexts, measured alike (e.g. 1,4,16,64; default none)")
    rounds.add_argument("--round-sweep-contexts", default="", help="contexts of that sweep (e.g. 128,512,2048,4096)")
    rounds.add_argument("--round-sweep-cells", default="", help="more decode cells of the sweep, BATCHxCONTEXT, "
                        "comma-separated (e.g. 1x4096,16x4096)")
    rounds.add_argument("--round-steps", type=int, default=8, help="decode graph replays per timed call (default 8)")
    rounds.add_argument("--round-budget-s", type=float, help="no rounds phase starts after this many seconds")
    rounds.add_argument("--no-training-rounds", action="store_true", help="leave training out of the rounds")
    rounds.add_argument("--no-shared-cache", action="store_true", help="a decode cell whose shapes' KV caches do "
                        "not all fit is skipped instead of sharing one buffer")


def write_outputs(out: Path) -> Path:
    """The comparison's tables and page from whatever DIR holds (also scripts/render_evidence.py's)."""
    data = load_carryover(out)
    write_tables(data, out)
    return write_carryover_report(data, Path(out) / "carryover.html")


def print_glance(out: Path) -> None:
    """The report's first table on the console: each shape's training and prefill gain over the baseline."""
    path = out / "glance.csv"
    if path.is_file() and path.stat().st_size > 1:
        try:
            glance = pd.read_csv(path, keep_default_na=False)
        except pd.errors.EmptyDataError:
            return
        if len(glance):
            print(glance.set_index("model").T.to_string())


def run(args) -> int:
    out = Path(args.out)
    if args.report_only:
        report = write_outputs(out)
        print_glance(out)
        print(f"report: {report}")
        return 0
    if not args.models:
        raise UserError("--models: give the shapes to compare (bundled names, config files or checkpoint directories)")
    if args.baseline is None:
        raise UserError("--baseline: name the shape the others are normalised to (one of --models)")
    bench = bench_spec(args, out / "bench")
    decode = None
    if not args.no_decode:
        decode = decode_spec(bench, out / "decode", batches=ints(args.decode_batches, "--decode-batches"),
                             engines=csv(args.decode_engines) if args.decode_engines else bench.engines,
                             prompt_len=args.decode_prompt_len, new_tokens=args.decode_new_tokens,
                             repeats=args.decode_repeats)
    rounds = None
    if args.rounds:
        sweep = grid(ints(args.round_sweep_batches, "--round-sweep-batches"),
                     ints(args.round_sweep_contexts, "--round-sweep-contexts")) + \
            parse_cells(args.round_sweep_cells, "--round-sweep-cells")
        rounds = RoundsSpec(models=bench.models, baseline=args.baseline, out=out / "rounds", rounds=args.rounds,
                            training=not args.no_training_rounds, prefill=parse_cells(args.round_prefill, "--round-prefill"),
                            decode=parse_cells(args.round_decode, "--round-decode"), sweep=sweep, steps=args.round_steps,
                            dtype=bench.dtype, seed=args.seed, device=args.device, budget_s=args.round_budget_s,
                            shared_cache=not args.no_shared_cache)
    spec = CarryoverSpec(bench=bench, baseline=args.baseline, out=out, rounds=rounds,
                         layer_profiles=tuple(Path(p) for p in args.layer_profile or ()),
                         layer_attention=csv(args.layer_attention), layer_args=tuple(shlex.split(args.layer_args or "")),
                         run_layer=not args.no_layer, run_bench=not args.no_bench, decode=decode)
    outcome = run_carryover(spec, progress=not args.no_progress and sys.stderr.isatty())
    for part in (bench, decode):
        if part is not None and (part.out / "results.jsonl").is_file():
            write_bench_report(part.out)
    for note in outcome.notes:
        print(f"note: {note}")
    report = write_outputs(out)
    print_glance(out)
    print(f"report: {report}")
    return 0

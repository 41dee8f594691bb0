"""`python -m inference bench`: time generation per model x engine x prompt length x batch (inference.bench),
then write results.csv and report.html beside results.jsonl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.bench import run_bench
from profiler.errors import UserError
from reports.inference_report import write_report

from .bench_args import add_bench_args, bench_spec


def add_args(parser: argparse.ArgumentParser) -> None:
    add_bench_args(parser)
    parser.add_argument("--out", default="runs/inference", help="results directory; rerunning resumes there")
    parser.add_argument("--layer-profile", help="run.json of `python -m profiler layer`, linked in the report")


def status_counts(rows: list[dict]) -> str:
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))


def run(args) -> int:
    spec = bench_spec(args, Path(args.out))
    profile = Path(args.layer_profile) if args.layer_profile else None
    if profile is not None and not (profile.is_file() or (profile / "run.json").is_file()):
        raise UserError(f"--layer-profile: {profile} is not a file; give the run.json of `python -m profiler layer`")
    outcome = run_bench(spec, progress=not args.no_progress and sys.stderr.isatty())
    print(f"{outcome.measured} rows measured now, {outcome.skipped_done} reused; in {outcome.results}: "
          f"{status_counts(outcome.rows)}")
    print(f"report: {write_report(spec.out, layer_profile=profile)}")
    return 0

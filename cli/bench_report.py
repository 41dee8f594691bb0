"""`python -m inference report DIR`: re-render a bench's report.html (and results.csv) from its results.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from profiler.errors import UserError
from reports.inference_report import write_report


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the --out directory of a bench run")
    parser.add_argument("--layer-profile", help="run.json of `python -m profiler layer`")


def run(args) -> int:
    out = Path(args.dir)
    if not (out / "results.jsonl").is_file():
        raise UserError(f"report: {out} has no results.jsonl; give the --out directory of a bench run")
    print(f"report: {write_report(out, layer_profile=args.layer_profile)}")
    return 0

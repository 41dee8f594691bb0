"""Do repeated layer runs agree? Per config: the runs' latency medians, floor ratios and checks, against issue 19's
tolerances (latency within 2% for GPU-bound configs, x_floor within 0.03).

    python scripts/runs_agreement.py evidence/h200/layer-runs/run-1 evidence/h200/layer-runs/run-2 ... [--csv OUT]

Each argument is a folder of layer run directories (each with its run.json) or one run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from profiler.run_agreement import agreement, load_runs, summary_lines  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="write the per-config table here")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = agreement(runs)
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_columns", None):
        print(table.drop(columns=["gpu_bound"]).round(3).to_string(index=False) if len(table) else "(no config in two runs)")
    for line in summary_lines(runs, table):
        print(line)
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

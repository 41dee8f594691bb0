"""Re-derive the depth columns of layer runs (tiles, waves, rooflines: profiler.explain) from their own traces
with today's analysis, leaving every timed figure as measured.

    python scripts/rederive_depth.py RUN_DIR [RUN_DIR ...]

Rewrites each RUN_DIR's components.csv depth columns and run.json's gemm_flags, and records the re-derivation in
run.json (`depth_rederived`: the git SHA of the analysis, which the run's own `environment.git_sha` is not).
Written for the H200 layer runs of ee894d8, whose GEMM rooflines used the 8192^3 GEMM as their compute roof
instead of the run's ceiling (up to 121% of roofline). A config whose trace is missing is left as it is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from profiler.explain import explain_run_config, join_depth  # noqa: E402


def rederive(run_dir: Path, analysis_sha: str) -> list[str]:
    run = json.loads((run_dir / "run.json").read_text())
    components = pd.read_csv(run_dir / "components.csv")
    parts, redone = [], []
    for entry in run["configs"]:
        rows = components[components["config"] == entry["name"]]
        depth = explain_run_config(run_dir, run, components, entry)
        if depth is None:
            parts.append(rows)
            continue
        parts.append(join_depth(rows, depth)[list(rows.columns)])
        entry["gemm_flags"] = depth.flags.to_dict("records")
        entry["depth_rederived"] = {"git_sha": analysis_sha, "what": "components.csv depth columns and gemm_flags "
                                    "from this run's trace; timings as measured"}
        redone.append(entry["name"])
    pd.concat(parts).to_csv(run_dir / "components.csv", index=False)
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    return redone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for run_dir in args.runs:
        if not (run_dir / "run.json").is_file() or not (run_dir / "components.csv").is_file():
            print(f"error: {run_dir} is not a layer run directory (no run.json and components.csv)", file=sys.stderr)
            return 2
        redone = rederive(run_dir, sha or "unknown")
        print(f"{run_dir}: {len(redone)} config(s) re-derived" + (f" ({', '.join(redone)})" if redone else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

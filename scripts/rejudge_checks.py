"""Judge the trace drift of committed layer runs again from the data in their run.json (the per-step kernel
times and the per-round SM clocks each run recorded), with today's `profiler.checks.trace_drift_check`.

The check is a pure function of what the run measured, so a rule changed after a run can be applied to it
without measuring again; every other check is taken as the run recorded it. Prints, per run folder, the
configs that fail and how many pass every check.

    python scripts/rejudge_checks.py evidence/h200/layer-runs/run-1 evidence/h200/layer-runs/run-2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler import checks as C  # noqa: E402


def rejudged_failures(entry: dict) -> list[str]:
    failures = []
    for check in entry.get("checks", []):
        details = check.get("details") or []
        if check["name"] == "trace_stable" and details:
            clocks = [d.get("sm_clock_mhz") for d in details] if "sm_clock_mhz" in details[0] else None
            again = C.trace_drift_check([d["busy_us"] for d in details], clocks)
            if again.failed:
                failures.append(f"trace_stable: {again.observed}")
        elif check["status"] == "fail":
            failures.append(f"{check['name']}: {check.get('observed', '')}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding run.json files (searched recursively)")
    args = parser.parse_args(argv)
    for root in args.runs:
        total = passed = 0
        for path in sorted(root.rglob("run.json")):
            for entry in json.loads(path.read_text()).get("configs", []):
                total += 1
                failures = rejudged_failures(entry)
                passed += not failures
                for failure in failures:
                    print(f"  {path.parent.relative_to(root)}/{entry['name']}: {failure}")
        print(f"{root}: {passed}/{total} configs pass every check")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

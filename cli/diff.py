"""`python -m profiler diff RUN_A RUN_B [--out DIR]`: two profiled configs compared per component.

Each RUN is a layer run directory (run.json + components.csv, as `python -m profiler layer --out` writes)
holding one config, or DIR:CONFIG to pick one of several. Prints the comparison; with --out also writes
diff.csv, diff.json (both sides' configs and environments) and report.html there.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from profiler.errors import UserError
from profiler.outputs import prepare_out_dir, write_atomic
from profiler.run_diff import NOISE_SPREADS, clock_notice, diff_components, row_label, totals

EXAMPLES = """examples:
  python -m profiler diff evidence/h100/layer/figure1-eager:gpt3-2.7b evidence/h100/layer/figure1-eager:gpt3-2.7b-a20
  python -m profiler diff runs/before runs/after --out runs/diff"""


@dataclass(frozen=True)
class RunSide:
    spec: str
    run_dir: Path
    config: str
    entry: dict
    environment: dict
    components: pd.DataFrame


def add_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("run_a", metavar="RUN_A", help="layer run directory, or DIR:CONFIG to pick one of its configs")
    p.add_argument("run_b", metavar="RUN_B", help="the run compared with RUN_A (changes are B - A)")
    p.add_argument("--out", type=Path, help="also write diff.csv, diff.json and report.html in this directory")


def split_spec(spec: str) -> tuple[Path, str | None]:
    """DIR or DIR:CONFIG (a directory whose own name holds a colon is taken whole)."""
    path = Path(spec)
    if ":" in spec and not path.is_dir():
        where, _, config = spec.rpartition(":")
        return Path(where), config or None
    return path, None


def load_side(spec: str, flag: str) -> RunSide:
    """One side of the comparison, or a UserError saying what is wrong with `spec`."""
    run_dir, config = split_spec(spec)
    if not run_dir.is_dir():
        raise UserError(f"{flag}: {run_dir} is not a directory; give a layer run directory (run.json + components.csv)")
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise UserError(f"{flag}: {run_dir} has no run.json; give the --out directory of `python -m profiler layer`")
    try:
        doc = json.loads(run_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"{flag}: {run_json} is not valid JSON (or nests too deeply to be a layer run); give the --out "
                        "directory of `python -m profiler layer`") from None
    entries = {e.get("name"): e for e in doc.get("configs", []) if isinstance(e, dict)} if isinstance(doc, dict) else {}
    if not entries:
        raise UserError(f"{flag}: {run_json} lists no profiled configs")
    if config is None:
        if len(entries) > 1:
            raise UserError(f"{flag}: {run_dir} holds {len(entries)} configs ({', '.join(entries)}); "
                            f"pick one as {run_dir}:NAME")
        config = next(iter(entries))
    if config not in entries:
        raise UserError(f"{flag}: {run_dir} has no config '{config}' (it has: {', '.join(entries)})")
    if entries[config].get("status", "ok") != "ok":
        raise UserError(f"{flag}: {config} in {run_dir} was not profiled ({entries[config].get('status')}: "
                        f"{entries[config].get('error', '')})")
    csv = run_dir / "components.csv"
    if not csv.is_file():
        raise UserError(f"{flag}: {run_dir} has no components.csv")
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise UserError(f"{flag}: {csv} does not parse as CSV") from None
    rows = table[table["config"] == config] if "config" in table else table.iloc[0:0]
    if rows.empty:
        raise UserError(f"{flag}: {csv} has no rows for config '{config}'")
    return RunSide(spec, run_dir, config, entries[config], doc.get("environment") or {}, rows.reset_index(drop=True))


def side_summary(side: RunSide) -> dict:
    """What diff.json keeps of one side: where it came from, its config, options, latency and environment."""
    env = side.environment
    return {"spec": side.spec, "run_dir": str(side.run_dir), "config": side.config,
            "resolved_config": side.entry.get("config"), "mode": side.entry.get("mode"),
            "latency_us": (side.entry.get("latency_us") or {}).get("median"),
            "environment": {k: env.get(k) for k in ("gpu_name", "sm_count", "torch", "cuda", "driver", "git_sha",
                                                    "timestamp", "measured_peak_tflops", "measured_copy_tbps")}}


def run(args) -> int:
    a, b = load_side(args.run_a, "RUN_A"), load_side(args.run_b, "RUN_B")
    table = diff_components(a.components, b.components)
    doc = {"a": side_summary(a), "b": side_summary(b), "totals": totals(table),
           "noise_rule": f"within noise: |B - A| <= {NOISE_SPREADS:g} x ((p90_a - p10_a) + (p90_b - p10_b))"}
    passes = table["pass"].nunique()
    # a CPU run's GEMMs reach a few GFLOP/s, which print as 0.0 TFLOP/s
    cpu = not a.environment.get("gpu_name") and not b.environment.get("gpu_name")
    scale, unit = (1e3, "gflops") if cpu else (1.0, "tflops")
    shown = pd.DataFrame({
        "row": [row_label(p, c, r, passes) for p, c, r in zip(table["pass"], table["component"], table["role"])],
        "A_us": table["time_a_us"], "B_us": table["time_b_us"], "delta_us": table["delta_us"],
        "delta_pct": table["delta_pct"], "noise_us": table["noise_band_us"], "verdict": table["verdict"],
        f"A_{unit}": table["tflops_a"] * scale, f"B_{unit}": table["tflops_b"] * scale,
        "A_share_pct": table["share_a_pct"], "B_share_pct": table["share_b_pct"]})
    for what in ("gpu_name", "torch"):
        if a.environment.get(what) != b.environment.get(what):
            print(f"notice: the runs differ in {what}: A {a.environment.get(what)}, B {b.environment.get(what)}; "
                  "a change may be the machine's, not the model's", file=sys.stderr)
    clocks = clock_notice(a.entry, b.entry)
    if clocks:
        doc["clock_notice"] = clocks
        print(f"notice: {clocks}", file=sys.stderr)
    print(f"A = {a.config} ({a.run_dir}), B = {b.config} ({b.run_dir}); {doc['noise_rule']}"
          + ("; both runs on a CPU (host clock), throughput in GFLOP/s" if cpu else ""))
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    t = doc["totals"]
    print(f"summed kernel time per step: A {t['time_a_us']:.1f} us, B {t['time_b_us']:.1f} us; "
          + ", ".join(f"{n} {v}" for v, n in t["verdicts"].items() if n))
    if args.out is not None:
        from reports.diff_report import write_diff_report

        out = prepare_out_dir(args.out)
        write_atomic(out / "diff.csv", table.to_csv(index=False))
        write_atomic(out / "diff.json", json.dumps(doc, indent=2, default=str))
        page = write_diff_report(doc, table, out / "report.html")
        print(f"wrote {page}, {out / 'diff.csv'}, {out / 'diff.json'}")
    return 0

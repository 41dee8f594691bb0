"""Do repeated layer runs agree with each other? Issue 19's cross-run figures, from the runs' run.json files.

A *run* is a folder of layer run directories (e.g. evidence/h200/layer-runs/run-1 holding figure1-flash/,
pythia-suite/, ...), or one run directory. Every config of every run becomes a row; `agreement` then says, per
(folder, config), how far the runs' latency medians and floor ratios spread, and whether they meet the stated
tolerances: latency within LATENCY_TOLERANCE for GPU-bound configs (a launch-bound layer times the host), the
floor ratio within X_FLOOR_TOLERANCE, every check passed in every run.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from .checks import FAIL

LATENCY_TOLERANCE = 0.02  # max / min - 1 of the runs' latency medians, GPU-bound configs
X_FLOOR_TOLERANCE = 0.03  # max - min of the runs' floor ratios


RUN_FILES = ("run.json", "run.json.gz")  # committed evidence may keep a large run.json gzipped


def _run_files(root: Path) -> list[Path]:
    for name in RUN_FILES:
        if (root / name).is_file():
            return [root / name]
    return sorted(p for name in RUN_FILES for p in root.glob(f"*/{name}"))


def read_run(path: Path) -> dict:
    """A run.json, or its gzipped copy."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def load_runs(roots: list[Path]) -> pd.DataFrame:
    """One row per (run, folder, config): latency median (us), floor ratio, launch-bound, checks passed, the
    latency phase's SM clock, the rounds per attempt and the GPU's uuid (None where the run predates it)."""
    rows = []
    for root in roots:
        files = _run_files(Path(root))
        if not files:
            raise FileNotFoundError(f"{root}: no run.json in it or in its subfolders")
        for path in files:
            record = read_run(path)
            gpu = (record.get("environment") or {}).get("gpu_uuid")  # recorded from ee894d8 on
            for config in record.get("configs", []):
                latency = config.get("latency_us") or {}
                checks = config.get("checks") or []
                phases = (config.get("clock") or {}).get("phases") or {}
                rows.append({
                    "run": str(root), "folder": path.parent.name if path.parent != Path(root) else ".",
                    "config": config.get("name"),
                    "latency_us": latency.get("median") if isinstance(latency, dict) else latency,
                    "x_floor": config.get("floor_ratio"),
                    "launch_bound": bool(config.get("launch_bound")),
                    "passed": bool(checks) and all(c.get("status") != FAIL for c in checks),
                    "failed_checks": ",".join(c.get("name", "?") for c in checks if c.get("status") == FAIL),
                    "clock_mhz": (phases.get("latency") or {}).get("sm_clock_mhz"),
                    "rounds_per_attempt": (config.get("rounds") or {}).get("per_attempt"),
                    "gpu_uuid": gpu,
                })
    return pd.DataFrame(rows)


def agreement(runs: pd.DataFrame, *, latency_tolerance: float = LATENCY_TOLERANCE,
              x_floor_tolerance: float = X_FLOOR_TOLERANCE) -> pd.DataFrame:
    """Per (folder, config) seen in more than one run: the spread of its latency medians and floor ratios and
    whether each is within its tolerance (latency: judged for configs that are GPU-bound in every run)."""
    out = []
    for (folder, config), group in runs.groupby(["folder", "config"], sort=False):
        if group["run"].nunique() < 2:
            continue
        lat = group["latency_us"].astype(float)
        floor = group["x_floor"].dropna().astype(float)
        spread = float(lat.max() / lat.min() - 1) if lat.min() > 0 else float("nan")
        gpu_bound = not group["launch_bound"].any()
        out.append({
            "folder": folder, "config": config, "runs": int(group["run"].nunique()), "gpu_bound": gpu_bound,
            "latency_min_us": float(lat.min()), "latency_max_us": float(lat.max()), "latency_spread_pct": 100 * spread,
            "latency_ok": (spread <= latency_tolerance) if gpu_bound else None,
            "x_floor_range": float(floor.max() - floor.min()) if len(floor) > 1 else None,
            "x_floor_ok": bool(floor.max() - floor.min() <= x_floor_tolerance) if len(floor) > 1 else None,
            "clock_min_mhz": group["clock_mhz"].min(), "clock_max_mhz": group["clock_mhz"].max(),
            "passed_every_run": bool(group["passed"].all()),
        })
    return pd.DataFrame(out)


def summary_lines(runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The figures issue 19 is judged on, one line each."""
    lines = []
    for run, group in runs.groupby("run", sort=False):
        lines.append(f"{run}: {int(group['passed'].sum())} of {len(group)} configs pass every check"
                     + (f" (failed: {'; '.join(group.loc[~group['passed'], 'config'] + ' ' + group.loc[~group['passed'], 'failed_checks'])})"
                        if (~group["passed"]).any() else ""))
    # one physical GPU or several: a spread between two GPUs of one kind is not the protocol's to remove
    known = runs["gpu_uuid"].dropna().unique()
    unknown = runs.loc[runs["gpu_uuid"].isna(), "run"].unique()
    lines.append(f"GPUs: {len(known)} ({', '.join(u[:8] for u in known) or 'no uuid recorded'})"
                 + (f"; not recorded for {len(unknown)} run(s)" if len(known) and len(unknown) else ""))
    if table.empty:
        return lines + ["no config appears in two runs: nothing to compare"]
    bound = table[table["gpu_bound"]]
    lines.append(f"latency medians within {LATENCY_TOLERANCE:.0%} across runs: {int(bound['latency_ok'].sum())} of "
                 f"{len(bound)} GPU-bound configs (worst {bound['latency_spread_pct'].max():.1f}%: "
                 f"{bound.loc[bound['latency_spread_pct'].idxmax(), 'config'] if len(bound) else '-'})")
    floors = table.dropna(subset=["x_floor_range"])
    if len(floors):
        lines.append(f"x_floor within {X_FLOOR_TOLERANCE} across runs: {int(floors['x_floor_ok'].sum())} of "
                     f"{len(floors)} configs (widest {floors['x_floor_range'].max():.3f})")
    return lines

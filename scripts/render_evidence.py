"""Re-render every report page under an evidence root from the data committed beside it, each page
linking one shared plotly.js (ROOT/assets/plotly-basic.min.js) instead of inlining its own 1.2 MB copy.

    python scripts/render_evidence.py evidence          # any folder of GPU evidence

A folder's data says which report it holds (the first that matches):
  run.json + components.csv + communication.csv -> tensor-parallel layer report (reports.distributed_report)
  run.json[.gz] + components.csv   -> layer report      (reports.layer_report.write_layer_report)
  advice.json                      -> sizing advisor    (reports.advisor_report.write_advisor_report)
  diff.json + diff.csv             -> run comparison    (reports.diff_report.write_diff_report)
  carryover.json                   -> carryover report  (cli.carryover.write_outputs, writes carryover.html)
  matmul_run.json, layer_run.json or engines_run.json -> batch invariance (reports.invariance_report)
  results.jsonl[.gz] of sweep points -> sweep report    (reports.sweep_report.write_outputs)
  results.jsonl of bench rows      -> inference report  (reports.inference_report.write_report), next to the
      layer profile in ../layer/pythia-suite/run.json when there is one (what scripts/gpu_inference.sh passes)
Each rewrites its page (and CSVs derived from the same records) in that folder. Exits 1 when a folder fails
to render, or when an HTML page is left that no data beside it can rebuild.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from profiler.run_agreement import RUN_FILES, read_run  # noqa: E402
from reports.html import linked_plotly  # noqa: E402

ASSETS = ("plotly-basic.min.js", "PLOTLY-LICENSE")
INVARIANCE_RUNS = ("matmul_run.json", "layer_run.json", "engines_run.json")  # profiler.invariance.files
PAGE_NAMES = {"carryover": "carryover.html"}  # every other kind writes report.html
LAYER_PROFILE = Path("layer") / "pythia-suite" / "run.json"  # relative to an inference folder's parent


def _first_record(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("record") in ("point", "row"):
                return record
    return {}


def page_kind(folder: Path) -> str | None:
    """The kind of report `folder`'s data makes (see the module's docstring); None when it holds none."""
    if any((folder / name).is_file() for name in RUN_FILES) and (folder / "components.csv").is_file():
        return "distributed" if (folder / "communication.csv").is_file() else "layer"
    if (folder / "advice.json").is_file():
        return "advisor"
    if (folder / "diff.json").is_file() and (folder / "diff.csv").is_file():
        return "diff"
    if (folder / "carryover.json").is_file():
        return "carryover"
    if (folder / "invariant_decode.json").is_file() or (folder / "prefill_vs_layers.json").is_file():
        return "decode-bench"
    if any((folder / name).is_file() for name in INVARIANCE_RUNS):
        return "invariance"
    for name in ("results.jsonl", "results.jsonl.gz"):
        if (folder / name).is_file():
            return {"point": "sweeps", "row": "inference"}.get(_first_record(folder / name).get("record"))
    return None


def find_pages(root: Path) -> list[tuple[Path, str]]:
    """Every folder under `root` (itself included) that holds report data, with its kind, in path order."""
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    return [(folder, kind) for folder in folders if (kind := page_kind(folder))]


def install_assets(root: Path) -> Path:
    """ROOT/assets/plotly-basic.min.js (and its licence), copied from the reports package when absent or stale."""
    source = ROOT / "reports" / "assets"
    target = root / "assets"
    target.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        if not (target / name).is_file() or (target / name).read_bytes() != (source / name).read_bytes():
            shutil.copyfile(source / name, target / name)
    return target / ASSETS[0]


def plotly_src(folder: Path, asset: Path) -> str:
    """The asset's URL relative to a page in `folder`."""
    return Path(os.path.relpath(asset, folder)).as_posix()


def render(folder: Path, kind: str, asset: Path) -> Path:
    """Re-render `folder`'s report.html (linked to `asset`) from its data; returns the page."""
    with linked_plotly(plotly_src(folder, asset)):
        if kind == "layer":
            from reports.layer_report import write_layer_report
            run = read_run(next(folder / n for n in RUN_FILES if (folder / n).is_file()))
            return write_layer_report(run, pd.read_csv(folder / "components.csv"), folder / "report.html")
        if kind == "distributed":
            from reports.distributed_report import load_run, write_distributed_report
            return write_distributed_report(*load_run(folder), folder / "report.html")
        if kind == "advisor":
            from reports.advisor_report import write_advisor_report
            return write_advisor_report(json.loads((folder / "advice.json").read_text()), folder / "report.html")
        if kind == "diff":
            from reports.diff_report import write_diff_report
            return write_diff_report(json.loads((folder / "diff.json").read_text()), pd.read_csv(folder / "diff.csv"),
                                     folder / "report.html")
        if kind == "carryover":
            from cli.carryover import write_outputs
            with contextlib.chdir(folder):  # carryover.json's relative paths (configs, layer profiles) start here
                return folder / write_outputs(Path("."))
        if kind == "decode-bench":
            from reports.decode_bench_report import write_report as write_decode_bench_report
            return write_decode_bench_report(folder)
        if kind == "invariance":
            from reports.invariance_report import write_report as write_invariance_report
            return write_invariance_report([folder], folder)
        if kind == "sweeps":
            from reports.sweep_report import write_outputs
            return write_outputs([folder], folder)[1]
        if kind == "inference":
            from reports.inference_report import write_report
            profile = folder.parent / LAYER_PROFILE
            return write_report(folder, layer_profile=profile if profile.is_file() else None)
    raise ValueError(f"{folder}: unknown report kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="evidence folder (e.g. evidence)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    asset = install_assets(root)
    failed, rendered = [], set()
    for folder, kind in find_pages(root):
        rendered.add((folder / PAGE_NAMES.get(kind, "report.html")).resolve())
        try:
            page = render(folder, kind, asset)
        except Exception as exc:  # one bad folder must not stop the others; it is listed and fails the run
            failed.append(f"{folder.relative_to(root)} ({kind}): {type(exc).__name__}: {exc}")
            continue
        print(f"{kind:9s} {page.relative_to(root)} ({page.stat().st_size / 1e3:,.0f} kB) -> {plotly_src(folder, asset)}")
    stale = [p for p in sorted(root.rglob("*.html")) if p.resolve() not in rendered]
    for problem in failed:
        print(f"error: {problem}", file=sys.stderr)
    for page in stale:
        print(f"error: {page.relative_to(root)} was not re-rendered (no report data beside it)", file=sys.stderr)
    return 1 if failed or stale else 0


if __name__ == "__main__":
    sys.exit(main())

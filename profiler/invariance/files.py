"""The invariance results on disk: one CSV per frame and one JSON per measurement (provenance and spec).

Each measurement (matmul, layer, engines) writes its own files into its --out directory, so the three can
share a directory or live apart; `load` gathers whatever a list of directories holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CSV_FILES = {
    "throughput": "matmul_throughput.csv",  # TFLOP/s per shape x kernel x M
    "check": "matmul_invariance.csv",  # row alone vs inside M rows, per shape x kernel x M
    "choice": "matmul_choice.csv",  # the kernel each GEMM shape got on this GPU, why, and the probe's evidence
    "outputs": "layer_outputs.csv",  # logits / greedy tokens alone vs in a batch, per kernel set x batch x position
    "steps": "layer_steps.csv",  # every region of the forward, alone vs in a batch
    "latency": "layer_latency.csv",  # forward latency per kernel set x batch
    "ops": "layer_ops.csv",  # each op alone on the same input, alone vs in a batch
    "engines": "engines.csv",  # transformers / DeepSpeed-MII: logits and tokens alone vs in a batch
}
TEXT_COLUMNS = {"tile", "first_differing_step", "differing_steps", "note", "reason", "tokens_alone",
                "tokens_in_batch", "output", "step", "shape", "component", "kernel", "kernels", "position", "op",
                "plan", "sweep", "triton_vs_cublaslt", "agreement", "dtype"}
RUN_FILES = {"matmul": "matmul_run.json", "layer": "layer_run.json", "engines": "engines_run.json"}


def save(out: Path, kind: str, frames: dict[str, pd.DataFrame], run: dict) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in frames.items():
        path = out / CSV_FILES[name]
        if frame.empty and not len(frame.columns):  # nothing measured (e.g. --no-latency): no stale file either
            path.unlink(missing_ok=True)
            continue
        frame.to_csv(path, index=False)
        written.append(path)
    path = out / RUN_FILES[kind]
    path.write_text(json.dumps(run, indent=1, default=str))
    written.append(path)
    return written


def load(dirs: list[Path]) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """Frames (concatenated over the directories) and the run records, keyed by measurement."""
    frames: dict[str, list[pd.DataFrame]] = {}
    runs: dict[str, dict] = {}
    for directory in map(Path, dirs):
        for name, file in CSV_FILES.items():
            if (directory / file).is_file():
                try:
                    frame = pd.read_csv(directory / file)
                except pd.errors.EmptyDataError:
                    continue
                for column in frame.columns:  # an empty text field reads back as NaN (a blank column as float)
                    if (column in TEXT_COLUMNS or column.endswith("_m_failed")
                            or pd.api.types.is_string_dtype(frame[column])):
                        frame[column] = ["" if pd.isna(v) else str(v) for v in frame[column]]
                if not frame.empty:
                    frames.setdefault(name, []).append(frame)
        for kind, file in RUN_FILES.items():
            if (directory / file).is_file():
                runs.setdefault(kind, json.loads((directory / file).read_text()))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}, runs

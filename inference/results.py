"""Results on disk as they are measured: one JSON line per bench row, appended and fsynced.

A row's identity is its key (model and its config hash, engine, batch, prompt length, new tokens, dtype,
tensor parallelism); a rerun skips keys already measured and retries rows that failed for reasons that
may have gone away (an engine unavailable, an error). The last record of a key wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_NAME = "results.jsonl"
KEY_FIELDS = ("model", "config_hash", "engine", "batch", "prompt_len", "new_tokens", "dtype", "tensor_parallel")
DONE_STATUSES = ("ok", "mismatch", "unchecked", "oom")  # measured, or failing for a reason that will not change


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


class ResultsFile:
    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / RESULTS_NAME

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
            if isinstance(record, dict):
                records.append(record)
        return records

    def rows(self) -> list[dict]:
        latest: dict[tuple, dict] = {}
        for record in self.records():
            if record.get("record") == "row":
                latest.pop(row_key(record), None)
                latest[row_key(record)] = record
        return list(latest.values())

    def runs(self) -> list[dict]:
        return [r for r in self.records() if r.get("record") == "run"]

    def done_keys(self) -> set[tuple]:
        return {row_key(r) for r in self.rows() if r.get("status") in DONE_STATUSES}

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self.path.open("a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a torn last line (no newline) is closed off, so this record starts clean
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

"""An append-only JSON-lines results file that a kill -9 cannot corrupt beyond the line in flight.

Each record is one line, written, flushed and fsynced before the next point starts. On open, a torn last
line (no trailing newline) is cut off, so the next append starts on a clean line; on load, any line that is
not valid JSON is skipped and counted. Two record types: "run" (provenance of one invocation) and "point".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .spec import point_key

RESULTS_NAME = "results.jsonl"


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir() or not self.path.suffix:
            self.path = self.path / RESULTS_NAME

    def records(self) -> tuple[list[dict], int]:
        """All well-formed records and the number of lines skipped as torn or corrupt."""
        if not self.path.exists():
            return [], 0
        records, skipped = [], 0
        with self.path.open("rb") as f:
            for raw in f:
                line = raw.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    skipped += 1
                    continue
                if isinstance(record, dict):
                    records.append(record)
                else:
                    skipped += 1
        return records, skipped

    def points(self) -> list[dict]:
        """Point records, one per key: a retried point's later record replaces the earlier one."""
        latest: dict[str, dict] = {}
        for record in self.records()[0]:
            if record.get("record") == "point":
                latest.pop(point_key(record), None)
                latest[point_key(record)] = record
        return list(latest.values())

    def runs(self) -> list[dict]:
        return [r for r in self.records()[0] if r.get("record") == "run"]

    def keys(self, statuses: tuple[str, ...] = ("ok", "oom", "error")) -> set[str]:
        return {point_key(r) for r in self.points() if r.get("status") in statuses}

    def repair(self) -> None:
        """Cut a torn last line (a write killed mid-line) so appends start on a line of their own."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # walk back to the last newline; a file of one torn line is truncated to empty
            block, end = 4096, size
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                chunk = f.read(end - start)
                idx = chunk.rfind(b"\n")
                if idx >= 0:
                    f.truncate(start + idx + 1)
                    break
                end = start
            else:
                f.truncate(0)
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

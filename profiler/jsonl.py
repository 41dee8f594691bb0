"""An append-only JSON-lines file that a kill -9 cannot corrupt beyond the line in flight.

Shared by the sweep results and the inference bench's results. Each record is one line, written, flushed
and fsynced before the next measurement starts. A torn last line (a write killed mid-line) is cut before
the next append, so every record starts on a line of its own; on load, any line that is not valid JSON is
skipped and counted. Records carry a "record" type; for a given key the last record wins, so a retried
measurement replaces the earlier one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Hashable


class JsonLinesFile:
    allow_nan = True  # subclasses whose readers are strict JSON parsers turn NaN into an error

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> tuple[list[dict], int]:
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

    def latest(self, record_type: str, key: Callable[[dict], Hashable]) -> list[dict]:
        """Records of one type, one per key: a later record replaces an earlier one (and moves to the end)."""
        latest: dict = {}
        for record in self.read()[0]:
            if record.get("record") == record_type:
                latest.pop(key(record), None)
                latest[key(record)] = record
        return list(latest.values())

    def runs(self) -> list[dict]:
        return [r for r in self.read()[0] if r.get("record") == "run"]

    def repair(self) -> None:
        """Cut a torn last line so appends start on a line of their own."""
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
        self.repair()
        line = json.dumps(record, separators=(",", ":"), allow_nan=self.allow_nan, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

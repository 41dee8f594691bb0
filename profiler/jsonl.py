"""An append-only JSON-lines file that a kill -9 cannot corrupt beyond the line in flight.

Shared by the sweep results and the inference bench's results. Each record is one line, written, flushed
and fsynced before the next measurement starts. A torn last line (a write killed mid-line) is cut before
the next append, so every record starts on a line of its own; on load, any line that is not a JSON record
is skipped, counted and named by line number (`notice()`), never silently; a file with no record at all
is refused (it is not a results file). Records carry a "record" type; for a given key the last record wins, so a retried
measurement replaces the earlier one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Hashable


def _whole_record(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return False


class JsonLinesFile:
    allow_nan = True  # subclasses whose readers are strict JSON parsers turn NaN into an error

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> tuple[list[dict], int]:
        """All well-formed records and the number of lines skipped as torn or corrupt (their line numbers are
        in `self.problems` after the call; `notice()` says it in one line)."""
        self.problems: list[tuple[int, str]] = []
        if not self.path.exists():
            return [], 0
        records = []
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                    self.problems.append((number, "torn or not JSON" if isinstance(exc, json.JSONDecodeError) else
                                          "nested too deeply" if isinstance(exc, RecursionError) else "not UTF-8 text"))
                    continue
                if isinstance(record, dict):
                    records.append(record)
                else:
                    self.problems.append((number, f"a JSON {type(record).__name__}, not a record"))
        if not records and self.problems:
            from .errors import UserError

            raise UserError(f"{self.path}: none of its {len(self.problems)} line(s) is a results record (line "
                            f"{self.problems[0][0]}: {self.problems[0][1]}); is it the right file? move it away "
                            "or choose another --out")
        return records, len(self.problems)

    def notice(self) -> str | None:
        """One line naming the malformed lines of the last read, or None when every line was a record."""
        problems = getattr(self, "problems", [])
        if not problems:
            return None
        shown = ", ".join(str(n) for n, _ in problems[:10]) + (", ..." if len(problems) > 10 else "")
        return (f"{self.path}: {len(problems)} malformed line(s) skipped (line {shown}: {problems[0][1]}); "
                "a line torn by a killed run is expected at the end, anything else is damage")

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
        """Cut a torn last line so appends start on a line of their own. A last line that is a whole record
        without its newline (a full disk can refuse just that byte) is kept, as `read` keeps it: it is ended
        instead of cut, so a point the resumed run counts as already in is not lost."""
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
                    start += idx + 1
                    break
                end = start
            else:
                start = 0
            f.seek(start)
            if _whole_record(f.read(size - start)):
                f.write(b"\n")
            else:
                f.truncate(start)
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

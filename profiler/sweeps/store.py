"""The sweep's results file: "run" records (provenance of one invocation) and "point" records, one JSON
line each, on the shared append-only file (profiler.jsonl)."""

from __future__ import annotations

from pathlib import Path

from ..jsonl import JsonLinesFile
from .spec import point_key

RESULTS_NAME = "results.jsonl"


class ResultStore(JsonLinesFile):
    allow_nan = False  # the report's JSON goes to the browser, whose parser has no NaN

    def __init__(self, path: str | Path):
        path = Path(path)
        super().__init__(path / RESULTS_NAME if path.is_dir() or not path.suffix else path)

    def records(self) -> tuple[list[dict], int]:
        """All well-formed records and the number of lines skipped as torn or corrupt."""
        return self.read()

    def points(self) -> list[dict]:
        """Point records, one per key: a retried point's later record replaces the earlier one."""
        return self.latest("point", point_key)

    def keys(self, statuses: tuple[str, ...] = ("ok", "oom", "error")) -> set[str]:
        return {point_key(r) for r in self.points() if r.get("status") in statuses}

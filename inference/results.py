"""Results on disk as they are measured: one JSON line per bench row, on the shared append-only file
(profiler.jsonl).

A row's identity is its key (model and its config hash, engine, batch, prompt length, new tokens, dtype,
tensor parallelism); a rerun skips keys already measured and retries rows that failed for reasons that
may have gone away (an engine unavailable, an error). The last record of a key wins.
"""

from __future__ import annotations

from pathlib import Path

from profiler.jsonl import JsonLinesFile

RESULTS_NAME = "results.jsonl"
KEY_FIELDS = ("model", "config_hash", "engine", "batch", "prompt_len", "new_tokens", "dtype", "tensor_parallel")
# measured, or failing for a reason that will not change (out of memory; a shape the kernels refuse)
DONE_STATUSES = ("ok", "mismatch", "unchecked", "oom", "unsupported")
MEASURED = ("ok", "mismatch", "unchecked")  # rows with latencies (only "ok" ones are checked results)


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


class ResultsFile(JsonLinesFile):
    def __init__(self, out_dir: str | Path):
        super().__init__(Path(out_dir) / RESULTS_NAME)

    def records(self) -> list[dict]:
        return self.read()[0]

    def rows(self) -> list[dict]:
        return self.latest("row", row_key)

    def done_keys(self, redo: tuple[str, ...] = ()) -> set[tuple]:
        """Keys a rerun skips; rows with a status in `redo` are measured again."""
        return {row_key(r) for r in self.rows() if r.get("status") in DONE_STATUSES and r.get("status") not in redo}

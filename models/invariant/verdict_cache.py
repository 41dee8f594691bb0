"""Kernel choices on disk, keyed by everything that can change which kernel a GEMM shape gets.

A probe's verdict holds for one GPU model, one torch / CUDA / cuBLASLt / Triton, one set of BLAS
environment variables and one version of this project's kernels (CACHE_VERSION): one JSON file per such
environment, one record per (N, K, dtype, bias) in it, under $CODESIGN_CACHE_DIR or
$XDG_CACHE_HOME/codesign-profiler (~/.cache/codesign-profiler) / invariant-kernels /.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

CACHE_VERSION = 2  # 2: cuBLAS default and hybrids of any two kernels, CUDA-graph timing, every-M proof. Bump when the Triton plans, the probe's sweep or the selection rule change meaning


def cache_root() -> Path:
    if os.environ.get("CODESIGN_CACHE_DIR"):
        return Path(os.environ["CODESIGN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codesign-profiler"


def environment_digest(environment: dict) -> str:
    return hashlib.sha256(json.dumps(environment, sort_keys=True).encode()).hexdigest()[:16]


def cache_file(environment: dict, root: Path | None = None) -> Path:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(environment.get("gpu", "device"))).strip("-").lower() or "device"
    return (root or cache_root()) / "invariant-kernels" / gpu / f"{environment_digest(environment)}.json"


def shape_key(n: int, k: int, dtype: str, bias: bool) -> str:
    return f"n{n}-k{k}-{dtype}-{'bias' if bias else 'nobias'}"


def load(environment: dict, key: str, root: Path | None = None) -> dict | None:
    """The record for `key` in this environment's file, or None (no file, no record, or a file written for
    another environment: the digest is a file name, so a collision is checked against the stored copy)."""
    path = cache_file(environment, root)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("environment") != environment:
        return None
    return data.get("choices", {}).get(key)


def store(environment: dict, key: str, record: dict, root: Path | None = None) -> Path:
    """Add or replace one record; the file is rewritten whole through a temporary file and a rename, so a
    reader never sees half a file (two writers: the last one wins, each record intact)."""
    path = cache_file(environment, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
        if data.get("environment") != environment:
            data = {}
    except (OSError, ValueError):
        data = {}
    data = {"environment": environment, "choices": {**data.get("choices", {}), key: record}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path

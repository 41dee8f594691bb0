"""Where results go: an output directory checked before anything is measured, and files written atomically
(a temporary sibling renamed into place), so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError


def prepare_out_dir(path: Path | str, flag: str = "--out") -> Path:
    """Create `path` (and its parents) if needed; refuse, in one line, anything that is not a writable directory."""
    path = Path(path).expanduser()
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"has a file in its path: {parent}"
            raise UserError(f"{flag}: {path} {where}; give a directory (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag}: cannot create {path}: {exc.strerror}; choose a directory you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: {path} is not writable; choose a directory you can write to")
    return path


# free space below which a trace export that left no file is taken for a full disk: a layer's trace is tens
# to hundreds of MiB on a GPU, and kineto (C++) fails silently rather than raise ENOSPC
TRACE_HEADROOM_BYTES = 256 * 2**20


def raise_if_full(directory: Path, what: str = "the trace") -> None:
    """Called when torch.profiler's export left no file in `directory`: a nearly full file system is said as
    what it is (OSError ENOSPC naming the directory, which the command layer turns into one line) instead of
    surfacing as a profiler bug."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < TRACE_HEADROOM_BYTES:
        raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MiB free; {what} did not fit)",
                      str(directory))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` through a temporary file in the same directory and a
    rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600; the result is for colleagues too: the mode an ordinary open() would give
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""One writer per output directory: an exclusive OS lock (fcntl.flock) on DIR/.lock, held by the process that
reads a directory's results and writes them (a layer run directory, a sweep's store) for the whole run.

A second process that wants the same directory waits, after one notice naming who holds it, and then reads
what the first one wrote; so two runs into one folder neither lose a config nor store a point twice. The OS
drops the lock when its holder exits, however it exits (a SIGKILL included), so a stale lock cannot exist;
the file itself stays (deleting it on release would let a third process lock a file no longer in the
directory) and holds only who has it now, for the notice.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UserError

LOCK_NAME = ".lock"
POLL_S = 0.2


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DirectoryLock:
    """`with DirectoryLock(out, what="sweep"):` ... holds DIR/.lock exclusively. `wait=False` refuses at once
    with a UserError instead of waiting; `timeout_s` bounds the wait (then the same UserError)."""

    def __init__(self, directory: str | Path, *, what: str, wait: bool = True, timeout_s: float | None = None,
                 on_wait: Callable[[str], None] | None = _stderr):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what, self.wait, self.timeout_s, self.on_wait = what, wait, timeout_s, on_wait
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, in words, from what the holder wrote into the file."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process"
        return (f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')}, since "
                f"{info.get('since')}: {info.get('command', '')})")

    def acquire(self) -> DirectoryLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            self._lock(fd)
            info = {"what": self.what, "pid": os.getpid(), "host": platform.node(),
                    "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv)[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)  # ENOSPC on a full disk: the run stops before any work
        except BaseException as exc:
            # whatever stops us here (a full disk, a Ctrl-C while waiting) must not keep the lock: flock belongs to
            # this open file, so a leaked descriptor would make the next run in this same process (a notebook, a
            # test) wait for itself for ever
            os.close(fd)
            if isinstance(exc, OSError) and exc.filename is None:  # pwrite names no file: say which one
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            raise
        self._fd = fd
        return self

    def _lock(self, fd: int) -> None:
        started, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                waited = time.monotonic() - started
                if not self.wait or (self.timeout_s is not None and waited >= self.timeout_s):
                    raise UserError(f"--out: {self.directory} is in use by {self.holder()}; wait for it to finish "
                                    "or choose another --out") from None
                if not told and self.on_wait is not None:
                    self.on_wait(f"notice: {self.directory} is in use by {self.holder()}; waiting for it to "
                                 "finish (one writer per directory; Ctrl-C to stop)")
                    told = True
                time.sleep(POLL_S)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the holder's line goes with it; the OS lock goes with the close
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

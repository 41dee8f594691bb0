"""Jobs for tests/test_executors.py, in a module of their own so that worker processes can import them by name
(tests/ goes on their PYTHONPATH). They are real work: a worker squares numbers, and some items end their own
worker with SIGKILL, as the OOM killer or a segfault would."""

import os
import signal
import time
from pathlib import Path

from profiler.errors import UserError


def setup(worker, args):
    return {"worker": worker.id, "marks": Path(args["marks"])}, {"pid_seen_by_setup": os.getpid()}


def square(state, payload):
    """payload: (n, how): "ok"; "die-once" ends this worker the first time it is tried; "die-always" every time."""
    n, how = payload
    mark = state["marks"] / f"{n}.tried"
    first = not mark.exists()
    mark.write_text(str(os.getpid()))
    if how == "die-always" or (how == "die-once" and first):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
    return {"n": n, "square": n * n, "pid": os.getpid()}


def setup_refuses(worker, args):
    raise UserError("--device: this worker sees no GPU (raised by the test's setup)")

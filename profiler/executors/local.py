"""The local executor: one worker process per visible GPU, pinned with CUDA_VISIBLE_DEVICES (as vLLM's kernel
tuners pin one Ray worker per GPU), or N CPU workers on a machine without one; the driver is the one writer.

Each worker is `python -m profiler.executors.worker` on one end of a socket pair (multiprocessing's
Connection: pickled messages, and `connection.wait` to serve whichever worker speaks first). A worker that
dies (SIGKILL, a segfault, the OOM killer) closes its end: the driver reads every result it sent before it
died, queues its item again and starts a replacement in its slot. A slot whose workers die three times in a
row without finishing anything is retired.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .job import (MAX_ATTEMPTS, ItemBook, Job, Notice, OnLost, OnResult, OnWorker, RunReport, raise_remote)

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the worker imports the same code as the driver
DEATHS_BEFORE_RETIRING = 3
STOP_GRACE_S = 5.0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def how_it_ended(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalExecutor:
    """`device_type`: "cuda" (one worker per visible GPU; `workers` at most that many), "cpu" (`workers` CPU
    workers, GPUs hidden, the cores shared out as torch threads unless `threads` says how many each) or "auto"
    (cuda where a GPU is visible)."""
    name = "local"

    def __init__(self, workers: int | None = None, *, device_type: str = "auto", threads: int | None = None,
                 max_attempts: int = MAX_ATTEMPTS):
        if workers is not None and workers < 1:
            raise UserError(f"--workers: must be at least 1, got {workers}")
        gpus = visible_gpus() if device_type != "cpu" else []
        if device_type == "cuda" and not gpus:
            raise UserError("--executor local: no GPU is visible (CUDA_VISIBLE_DEVICES or the driver); use --device cpu")
        if gpus:
            if workers is not None and workers > len(gpus):
                raise UserError(f"--workers: {workers} asked for but {len(gpus)} GPU(s) are visible; two workers on "
                                "one GPU would time each other's kernels (give at most one per GPU)")
            self.slots = [(gpu, None) for gpu in gpus[: workers or len(gpus)]]
        else:
            cpus = _usable_cpus()
            count = workers or min(cpus, 8)
            self.slots = [(None, threads or max(1, cpus // count)) for _ in range(count)]
        self.device_type = "cuda" if gpus else "cpu"
        self.max_attempts = max_attempts

    @property
    def workers(self) -> int:
        return len(self.slots)

    def describe(self) -> str:
        where = (f"GPU {', '.join(g for g, _ in self.slots)}" if self.device_type == "cuda"
                 else f"CPU, {self.slots[0][1]} thread(s) each")
        return f"local: {self.workers} worker process(es) ({where})"

    def start(self, job: Job, *, on_notice: Notice | None = None) -> LocalPool:
        return LocalPool(self, job, on_notice=on_notice)


class _Worker:
    def __init__(self, slot: int, generation: int, popen: subprocess.Popen, conn: Connection):
        self.slot, self.generation, self.popen, self.conn = slot, generation, popen, conn
        self.id = f"local-{slot}"
        self.description: dict | None = None  # set by its hello
        self.alive = True

    @property
    def ready(self) -> bool:
        return self.alive and self.description is not None


class LocalPool:
    def __init__(self, executor: LocalExecutor, job: Job, *, on_notice: Notice | None = None):
        self.executor, self.job = executor, job
        self.on_notice = on_notice or (lambda line: None)
        self.procs: list[_Worker] = []
        self.deaths_in_a_row = [0] * executor.workers
        self.descriptions: list[dict] = []
        self._announced = 0
        try:
            for slot in range(executor.workers):
                self.procs.append(self._spawn(slot, 0))
            self._await_hellos()
        except BaseException:
            self.close()
            raise

    # ---- processes ---------------------------------------------------------------------------------
    def _spawn(self, slot: int, generation: int) -> _Worker:
        gpu, threads = self.executor.slots[slot]
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""  # a CPU worker sees no GPU at all
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        parent, child = socket.socketpair()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "profiler.executors.worker", str(child.fileno()), f"local-{slot}",
                 str(threads or 0)], env=env, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child.close()  # the worker holds its end now; its death is our EOF
        conn = Connection(parent.detach())
        conn.send(self.job)
        return _Worker(slot, generation, popen, conn)

    def _await_hellos(self) -> None:
        while any(p.alive and p.description is None for p in self.procs):
            for p in self._wait_any():
                message = self._recv(p)
                if message is None:
                    self._lost_in_setup(p)
                else:
                    self._handle_setup_message(p, message)
        if not any(p.ready for p in self.procs):
            raise RuntimeError("every local worker died while starting; see their messages above")

    def _wait_any(self) -> list[_Worker]:
        live = {p.conn: p for p in self.procs if p.alive}
        if not live:
            return []
        return [live[c] for c in wait(list(live))]

    def _recv(self, p: _Worker) -> tuple | None:
        try:
            return p.conn.recv()
        except (EOFError, OSError):
            p.alive = False
            p.conn.close()
            try:
                p.popen.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            return None

    def _handle_setup_message(self, p: _Worker, message: tuple) -> None:
        if message[0] == "hello":
            p.description = message[1]
            self.descriptions.append(message[1])
        elif message[0] == "setup_error":
            _, _, exc, tb = message
            raise_remote(exc, tb, f"{p.id} (pid {p.popen.pid}) while starting")
        else:
            raise RuntimeError(f"worker {p.id} sent {message[0]!r} before its hello")

    def _lost_in_setup(self, p: _Worker) -> None:
        self.on_notice(f"notice: worker {p.id} (pid {p.popen.pid}) ended while starting "
                       f"({how_it_ended(p.popen.returncode)}); its slot is retired")

    @property
    def workers(self) -> list[dict]:
        """The descriptions of every worker that started (replacements included, in order of arrival)."""
        return list(self.descriptions)

    # ---- the run -----------------------------------------------------------------------------------
    def run(self, items: Iterable[tuple[str, Any]], on_result: OnResult, *, on_lost: OnLost | None = None,
            on_worker: OnWorker | None = None) -> RunReport:
        book = ItemBook(items, max_attempts=self.executor.max_attempts)
        self._announce(on_worker)
        while not book.finished:
            for p in self.procs:
                if p.ready and p.id not in book.in_flight:
                    self._dispatch(p, book)
            if not any(p.alive for p in self.procs):
                raise RuntimeError(f"no local worker is left; {len(book.queue) + len(book.in_flight)} item(s) "
                                   "not run (run again to resume)")
            for p in self._wait_any():
                message = self._recv(p)
                if message is None:
                    self._died(p, book, on_lost)
                    continue
                kind = message[0]
                if kind == "hello":
                    self._handle_setup_message(p, message)
                    self._announce(on_worker)
                elif kind == "result":
                    _, key, result = message
                    book.completed(p.id, key)
                    self.deaths_in_a_row[p.slot] = 0
                    self._dispatch(p, book)  # its next item first: the worker measures while the driver writes
                    on_result(key, result, p.description)  # the one writer
                elif kind in ("error", "setup_error"):
                    _, key, exc, tb = message
                    raise_remote(exc, tb, f"{p.id} (pid {p.popen.pid})" + (f" on {key}" if key else ""))
        book.report.workers = self.workers
        return book.report

    def _announce(self, on_worker: OnWorker | None) -> None:
        for description in self.descriptions[self._announced:]:
            if on_worker is not None:
                on_worker(description)
        self._announced = len(self.descriptions)

    def _dispatch(self, p: _Worker, book: ItemBook) -> None:
        item = book.next_for(p.id)
        if item is None:
            return
        try:
            p.conn.send(("item", *item))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # it died: the next wait sees its EOF and queues the item again

    def _died(self, p: _Worker, book: ItemBook, on_lost: OnLost | None) -> None:
        key, queued = book.worker_died(p.id)
        how = how_it_ended(p.popen.returncode)
        what = f"worker {p.id} (pid {p.popen.pid}) {how}"
        if key is None:
            self.on_notice(f"notice: {what} while idle")
        elif queued:
            self.on_notice(f"notice: {what} while running {key}; that item is queued again")
        else:
            reason = f"its worker died {book.attempts[key]} times while running it (last: {how})"
            self.on_notice(f"notice: {what} while running {key}; given up: {reason}")
            if on_lost is not None:
                on_lost(key, reason)
        self.deaths_in_a_row[p.slot] += 1
        if p.description is None or self.deaths_in_a_row[p.slot] >= DEATHS_BEFORE_RETIRING:
            self.on_notice(f"notice: slot {p.id} retired after {self.deaths_in_a_row[p.slot]} death(s) in a row")
            return
        if not book.finished:
            self.procs.append(self._spawn(p.slot, p.generation + 1))

    def close(self) -> None:
        """Stop every worker: politely (it finishes nothing more), then SIGTERM, then SIGKILL."""
        for p in self.procs:
            if p.alive:
                try:
                    p.conn.send(("stop",))
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            for stop in (None, p.popen.terminate, p.popen.kill):
                if stop is not None:
                    stop()
                try:
                    p.popen.wait(timeout=max(0.1, deadline - time.monotonic()) if stop is None else STOP_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if p.alive:
                p.alive = False
                p.conn.close()

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

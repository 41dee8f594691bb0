"""What an executor runs and what it hands back: a Job (setup once per worker, then work per item), the worker's
identity, and the driver's book of items (queued, in flight, done, lost), shared by every executor.

The contract that makes "nothing lost, nothing doubled" hold:
- items are (key, payload) pairs with unique keys, independent and idempotent: running one twice gives an
  equivalent result, so an item whose worker died is simply queued again;
- workers never write results: each result comes back to the driver, which hands it to `on_result` (the one
  writer, e.g. the sweep store's append), after giving that worker its next item so it measures meanwhile;
- an item is done when its result reached the driver; a worker that dies mid-item sends nothing for it,
  so it is queued again (a driver that dies before writing a result leaves that item for its next run) (at most `max_attempts` times: an item that kills every worker that tries it is
  handed to `on_lost` instead of being tried for ever).
"""

from __future__ import annotations

import os
import platform
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class WorkerInfo:
    """Who a worker is, handed to the job's setup: `id` ("inline", "local-0", "ray-1"), its host and process,
    the physical GPU it is pinned to (CUDA_VISIBLE_DEVICES as the executor set it; None on a CPU) and the
    torch threads it may use (None: torch's default)."""
    id: str
    host: str
    pid: int
    gpu_index: str | None = None
    threads: int | None = None

    @classmethod
    def here(cls, worker_id: str, *, threads: int | None = None) -> WorkerInfo:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return cls(worker_id, platform.node(), os.getpid(), visible if visible else None, threads)


def describe(info: WorkerInfo, description: dict) -> dict:
    """A worker's description as the driver keeps it: who and where, then what the job's setup said."""
    return {"worker": info.id, "host": info.host, "pid": info.pid, "gpu_index": info.gpu_index,
            "threads": info.threads, **description}


@dataclass(frozen=True)
class Job:
    """Work to spread over workers. `setup(worker: WorkerInfo, args)` runs once in each worker process and
    returns (state, description): the state stays in the worker, the description (a small dict: its GPU, its
    environment) goes to the driver first. `work(state, payload)` runs one item there and returns its result.
    Both must be module-level functions (they are sent to workers by name); args, payloads and results must
    pickle."""
    setup: Callable[[WorkerInfo, Any], tuple[Any, dict]]
    work: Callable[[Any, Any], Any]
    args: Any = None


@dataclass
class RunReport:
    done: int = 0
    lost: list[str] = field(default_factory=list)  # keys given up after max_attempts worker deaths
    worker_deaths: int = 0
    workers: list[dict] = field(default_factory=list)  # every worker's description, replacements included


class RemoteError(RuntimeError):
    """An exception raised in a worker that is not one of the driver's own exception types."""


def raise_remote(exc: BaseException | None, tb: str, where: str) -> None:
    """Re-raise a worker's exception in the driver: its own type where it pickled (a UserError stays a
    UserError, one line for the CLI), with the worker's traceback attached as a note."""
    if isinstance(exc, BaseException):
        exc.add_note(f"raised in worker {where}:\n{tb}")
        raise exc
    raise RemoteError(f"worker {where} failed:\n{tb}")


class ItemBook:
    """The driver's book of items: a queue, what each worker has in flight, the attempts per key."""

    def __init__(self, items: Iterable[tuple[str, Any]], *, max_attempts: int = MAX_ATTEMPTS):
        self.payloads: dict[str, Any] = {}
        for key, payload in items:
            if key in self.payloads:
                raise ValueError(f"two work items share the key {key!r}; keys must be unique")
            self.payloads[key] = payload
        self.queue: deque[str] = deque(self.payloads)
        self.in_flight: dict[str, str] = {}  # worker id -> key
        self.attempts: Counter[str] = Counter()
        self.max_attempts = max_attempts
        self.report = RunReport()

    @property
    def finished(self) -> bool:
        return not self.queue and not self.in_flight

    def next_for(self, worker: str) -> tuple[str, Any] | None:
        if not self.queue:
            return None
        key = self.queue.popleft()
        self.in_flight[worker] = key
        self.attempts[key] += 1
        return key, self.payloads[key]

    def completed(self, worker: str, key: str) -> None:
        if self.in_flight.get(worker) != key:
            raise RuntimeError(f"worker {worker} returned {key!r}, which it was not given")
        del self.in_flight[worker]
        self.report.done += 1

    def worker_died(self, worker: str) -> tuple[str | None, bool]:
        """The key the dead worker had in flight (None if idle) and whether it was queued again (False: lost)."""
        self.report.worker_deaths += 1
        key = self.in_flight.pop(worker, None)
        if key is None:
            return None, False
        if self.attempts[key] >= self.max_attempts:
            self.report.lost.append(key)
            return key, False
        self.queue.appendleft(key)  # next in line, so a resumed sweep's order barely changes
        return key, True


Notice = Callable[[str], None]
OnResult = Callable[[str, Any, dict], None]  # key, result, the description of the worker that made it
OnLost = Callable[[str, str], None]  # key, why
OnWorker = Callable[[dict], None]

"""The Ray executor: one actor per GPU on a Ray cluster (an existing one at `address`, or a local one started
for the run), as vLLM's kernel tuners spread their configs. Optional: `pip install -e ".[cluster]"`.

Ray places each actor (`num_gpus=1` sets its CUDA_VISIBLE_DEVICES; on a CPU cluster `num_cpus=1`) and restarts
one whose process dies (`max_restarts`); its setup runs again in the new process. Calls are not retried by Ray
(`max_task_retries=0`): the driver's book queues the dead actor's item again, so an item is tried at most
`max_attempts` times and its result is handed to the one writer exactly once.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable

from ..errors import UserError
from .job import (MAX_ATTEMPTS, ItemBook, Job, Notice, OnLost, OnResult, OnWorker, RunReport, WorkerInfo,
                  describe, raise_remote)
from .local import PROJECT_ROOT

ACTOR_RESTARTS = 3
HELLO_WAIT_NOTICE_S = 30.0


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray: Ray is not installed; pip install -e ".[cluster]" (or pip install '
                        '"ray[default]")') from None
    return ray


class _RayWorker:
    """The actor: runs the job's setup when created (again after a restart) and one item per call."""

    def __init__(self, job: Job, worker_id: str, threads: int | None):
        self.job = job
        info = WorkerInfo.here(worker_id, threads=threads)
        self.state, self.error = None, None
        try:
            self.state, description = job.setup(info, job.args)
            self.description = describe(info, description)
        except BaseException as exc:  # noqa: BLE001 - raised to the driver by hello()
            self.error = exc

    def hello(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.description

    def work(self, payload: Any) -> Any:
        return self.job.work(self.state, payload)


class RayExecutor:
    """`address`: an existing cluster ("auto", "HOST:6379", "ray://HOST:10001"), or None for a local one.
    `device_type` "auto" picks GPUs where the cluster has any. `workers`: default one per GPU (or per CPU)."""
    name = "ray"

    def __init__(self, workers: int | None = None, *, address: str | None = None, device_type: str = "auto",
                 max_attempts: int = MAX_ATTEMPTS):
        if workers is not None and workers < 1:
            raise UserError(f"--workers: must be at least 1, got {workers}")
        self.ray = _ray()
        self.address, self.max_attempts = address, max_attempts
        self._connect()
        resources = self.ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if device_type == "cuda" and not gpus:
            raise UserError(f"--executor ray: the cluster at {self.where} has no GPU; use --device cpu")
        self.device_type = "cuda" if gpus and device_type != "cpu" else "cpu"
        have = gpus if self.device_type == "cuda" else cpus
        if workers is not None and workers > have:
            raise UserError(f"--workers: {workers} asked for but the Ray cluster at {self.where} has {have} "
                            f"{'GPU' if self.device_type == 'cuda' else 'CPU'}(s)")
        self.workers = workers or have
        if self.workers < 1:
            raise UserError(f"--executor ray: the cluster at {self.where} has no CPU or GPU to run on")

    @property
    def where(self) -> str:
        return self.address or "a local Ray instance"

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        path = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        # workers import the driver's checkout where they share its filesystem (one machine, a Slurm job);
        # elsewhere the path does not exist and they import the project installed on their node
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
        kwargs = {"include_dashboard": False} if self.address is None else {}
        try:
            ray.init(address=self.address, runtime_env=runtime_env, logging_level="WARNING",
                     configure_logging=True, **kwargs)
        except ConnectionError as exc:
            raise UserError(f"--ray-address: cannot connect to a Ray cluster at {self.address} "
                            f"({str(exc).splitlines()[0][:200]}); start one with `ray start --head`") from None

    def describe(self) -> str:
        return f"ray: {self.workers} actor(s), one per {'GPU' if self.device_type == 'cuda' else 'CPU'}, on {self.where}"

    def start(self, job: Job, *, on_notice: Notice | None = None) -> RayPool:
        return RayPool(self, job, on_notice=on_notice)


class RayPool:
    def __init__(self, executor: RayExecutor, job: Job, *, on_notice: Notice | None = None):
        self.executor, self.ray = executor, executor.ray
        self.on_notice = on_notice or (lambda line: None)
        gpu = executor.device_type == "cuda"
        actor = self.ray.remote(_RayWorker).options(
            num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1, max_restarts=ACTOR_RESTARTS, max_task_retries=0)
        self.ids = [f"ray-{i}" for i in range(executor.workers)]
        self.actors = [actor.remote(job, worker_id, None if gpu else 1) for worker_id in self.ids]
        self.live = set(range(len(self.actors)))
        self.descriptions: list[dict] = []
        self.current: dict[int, dict] = {}
        self._announced = 0
        try:
            self._await_hellos(list(self.live))
        except BaseException:
            self.close()
            raise

    def _await_hellos(self, slots: list[int]) -> None:
        pending = {self.actors[s].hello.remote(): s for s in slots}
        started = time.monotonic()
        told = False
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=5.0)
            if not ready:
                if not told and time.monotonic() - started > HELLO_WAIT_NOTICE_S:
                    self.on_notice(f"notice: waiting for {len(pending)} Ray worker(s) to be placed (the cluster's "
                                   f"free {'GPUs' if self.executor.device_type == 'cuda' else 'CPUs'} are taken?)")
                    told = True
                continue
            slot = pending.pop(ready[0])
            self._take_hello(slot, ready[0])
        if not self.live:
            raise RuntimeError("every Ray worker died while starting; see their messages above")

    def _take_hello(self, slot: int, ref) -> bool:
        ray = self.ray
        try:
            description = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the job's setup raised
            raise_remote(exc.cause, str(exc), self.ids[slot] + " while starting")
        except ray.exceptions.RayActorError as exc:
            self.live.discard(slot)
            self.on_notice(f"notice: Ray worker {self.ids[slot]} died while starting ({type(exc).__name__}); "
                           "its slot is retired")
            return False
        self.current[slot] = description
        self.descriptions.append(description)
        return True

    @property
    def workers(self) -> list[dict]:
        return list(self.descriptions)

    def run(self, items: Iterable[tuple[str, Any]], on_result: OnResult, *, on_lost: OnLost | None = None,
            on_worker: OnWorker | None = None) -> RunReport:
        ray = self.ray
        book = ItemBook(items, max_attempts=self.executor.max_attempts)
        self._announce(on_worker)
        pending: dict = {}  # ref -> ("work", slot, key) | ("hello", slot, None)
        busy: set[int] = set()
        while not book.finished:
            for slot in sorted(self.live - busy):
                item = book.next_for(self.ids[slot])
                if item is None:
                    break
                key, payload = item
                pending[self.actors[slot].work.remote(payload)] = ("work", slot, key)
                busy.add(slot)
            if not pending:
                raise RuntimeError(f"no Ray worker is left; {len(book.queue)} item(s) not run (run again to resume)")
            ready, _ = ray.wait(list(pending), num_returns=1)
            what, slot, key = pending.pop(ready[0])
            if what == "hello":
                if self._take_hello(slot, ready[0]):
                    self._announce(on_worker)
                    busy.discard(slot)
                continue
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                raise_remote(exc.cause, str(exc), f"{self.ids[slot]} on {key}")
            except ray.exceptions.RayActorError as exc:
                self._died(slot, book, on_lost, exc)
                pending[self.actors[slot].hello.remote()] = ("hello", slot, None)  # Ray restarts it; wait for it
                continue
            book.completed(self.ids[slot], key)
            item = book.next_for(self.ids[slot])  # its next item first: the actor measures while the driver writes
            if item is None:
                busy.discard(slot)
            else:
                pending[self.actors[slot].work.remote(item[1])] = ("work", slot, item[0])
            on_result(key, result, self.current[slot])  # the one writer
        book.report.workers = self.workers
        return book.report

    def _died(self, slot: int, book: ItemBook, on_lost: OnLost | None, exc: BaseException) -> None:
        worker_id = self.ids[slot]
        pid = self.current.get(slot, {}).get("pid")
        key, queued = book.worker_died(worker_id)
        what = f"Ray worker {worker_id} (pid {pid}) died ({type(exc).__name__})"
        if queued:
            self.on_notice(f"notice: {what} while running {key}; that item is queued again")
        else:
            reason = f"its worker died {book.attempts[key]} times while running it"
            self.on_notice(f"notice: {what} while running {key}; given up: {reason}")
            if on_lost is not None:
                on_lost(key, reason)

    def _announce(self, on_worker: OnWorker | None) -> None:
        for description in self.descriptions[self._announced:]:
            if on_worker is not None:
                on_worker(description)
        self._announced = len(self.descriptions)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.ray.shutdown()
        sys.stderr.flush()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

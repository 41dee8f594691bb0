"""Spread independent, idempotent work items over GPUs (or CPU workers): a sweep's points, an advisor's
candidate shapes. Not a scheduler: `local` is one process per GPU, `ray` one actor per GPU on a Ray cluster,
`inline` this process. The driver stays the one writer: every result comes back to it, in `on_result`.

    from profiler.executors import Job, make_executor

    job = Job(setup=my_setup, work=my_work, args=shared)   # module-level functions
    executor = make_executor("local", workers=2)
    with executor.start(job, on_notice=print) as pool:
        report = pool.run([(key, payload), ...], on_result=lambda key, result, worker: store.append(result))

`setup(worker, args) -> (state, description)` runs once per worker process (pick the device, read the GPU's
name); `work(state, payload) -> result` runs one item. `pool.workers` holds every worker's description (its
GPU, host, pid) once started, before any item runs.
"""

from __future__ import annotations

from .inline import InlineExecutor
from .job import Job, RemoteError, RunReport, WorkerInfo
from .local import LocalExecutor

EXECUTORS = ("inline", "local", "ray")


def make_executor(name: str, *, workers: int | None = None, ray_address: str | None = None,
                  device_type: str = "auto"):
    """An executor by its --executor name; `device_type` cuda | cpu | auto says what the workers run on."""
    from ..errors import UserError

    if name == "inline":
        if workers not in (None, 1):
            raise UserError("--workers: needs --executor local or ray (inline runs in this one process)")
        if ray_address:
            raise UserError("--ray-address: needs --executor ray")
        return InlineExecutor()
    if name == "local":
        if ray_address:
            raise UserError("--ray-address: needs --executor ray")
        return LocalExecutor(workers, device_type=device_type)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(workers, address=ray_address, device_type=device_type)
    raise UserError(f"--executor: '{name}' is not one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "InlineExecutor", "Job", "LocalExecutor", "RemoteError", "RunReport", "WorkerInfo",
           "make_executor"]

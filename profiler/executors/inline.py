"""The inline executor: the job's setup and every item in this process, one after another (what a sweep did
before executors, and still its default). Same interface as the others, so a command has one code path."""

from __future__ import annotations

from typing import Any, Iterable

from .job import ItemBook, Job, Notice, OnLost, OnResult, OnWorker, RunReport, WorkerInfo, describe


class InlineExecutor:
    name = "inline"
    workers = 1
    device_type = "auto"

    def describe(self) -> str:
        return "inline: this process"

    def start(self, job: Job, *, on_notice: Notice | None = None) -> InlinePool:
        return InlinePool(job)


class InlinePool:
    def __init__(self, job: Job):
        self.job = job
        info = WorkerInfo.here("inline")
        self.state, description = job.setup(info, job.args)
        self.workers = [describe(info, description)]

    def run(self, items: Iterable[tuple[str, Any]], on_result: OnResult, *, on_lost: OnLost | None = None,
            on_worker: OnWorker | None = None) -> RunReport:
        book = ItemBook(items)
        if on_worker is not None:
            on_worker(self.workers[0])
        while not book.finished:
            key, payload = book.next_for("inline")
            on_result(key, self.job.work(self.state, payload), self.workers[0])
            book.completed("inline", key)
        book.report.workers = self.workers
        return book.report

    def close(self) -> None:
        pass

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

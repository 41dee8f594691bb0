"""The process a local executor starts per GPU (or per CPU slot): `python -m profiler.executors.worker FD ID THREADS`.

It receives the Job over the socket FD, runs its setup once, says hello with its description, then runs one
item at a time and sends each result back; it never writes a result file. It leaves when told to stop, when
the driver's end of the socket closes (the driver exited, however), or when an item raises (the exception
goes to the driver first). Ctrl-C is the driver's to handle: the worker ignores SIGINT and is stopped by it.
"""

from __future__ import annotations

import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection

from .job import WorkerInfo, describe


def _send_error(conn: Connection, kind: str, key: str | None, exc: BaseException) -> None:
    tb = traceback.format_exc()
    try:
        pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an exception that does not pickle goes as its traceback only
        exc = None
    conn.send((kind, key, exc, tb))


def serve(conn: Connection, worker_id: str, threads: int | None) -> None:
    info = WorkerInfo.here(worker_id, threads=threads)
    try:
        job = conn.recv()
    except (EOFError, OSError):
        return
    try:
        state, description = job.setup(info, job.args)
    except BaseException as exc:  # noqa: BLE001 - any setup failure is the driver's to report
        _send_error(conn, "setup_error", None, exc)
        return
    conn.send(("hello", describe(info, description)))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the driver is gone: nobody would take a result
            return
        if message[0] == "stop":
            return
        _, key, payload = message
        try:
            result = job.work(state, payload)
        except BaseException as exc:  # noqa: BLE001 - the driver decides; this worker stops
            _send_error(conn, "error", key, exc)
            return
        try:
            conn.send(("result", key, result))
        except (BrokenPipeError, ConnectionResetError, OSError):
            return


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, worker_id, threads = int(argv[0]), argv[1], int(argv[2])
    conn = Connection(fd)
    try:
        serve(conn, worker_id, threads or None)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run a sweep: expand the spec, skip points already in the results file, time the rest one by one with
profiler.timing.bench, and append each result as soon as it exists (reports/sweep_report.py renders it).

A point that runs out of memory is recorded as status "oom" and the sweep goes on; any other torch
runtime failure is recorded as "error" with its first line. Ctrl-C propagates (the CLI prints the resume
hint): only the point in flight is lost.

The points are spread by an executor (profiler.executors: inline, one process per GPU, or Ray actors): each
worker runs `setup_worker` once and `measure_point` per point, and hands the record back; this process is the
one writer of the store and appends each record as it arrives, so a killed worker loses no finished point and
its point in flight is queued again.
"""

from __future__ import annotations

import datetime as _dt
import gc
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models.layer import torch_dtype

from ..errors import UserError
from ..executors import InlineExecutor, Job, WorkerInfo
from ..hardware import environment, measure_matmul_peak
from ..locks import DirectoryLock
from ..outputs import prepare_out_dir
from ..telemetry import sm_clock_reader
from ..quantization import TILE_SIZES, largest_power_of_two_dividing, last_wave_fill, tiles, wave_efficiency, waves

from ..timing import KeepBusy, bench_detailed, summarize
from . import operands
from .spec import SweepPoint, SweepSpec, expand
from .store import ResultStore


@dataclass(frozen=True)
class SweepSummary:
    planned: int
    measured: int
    skipped: int  # already in the results file
    oom: int
    errors: int
    results_path: Path


def tile_name(tile: tuple[int, int]) -> str:
    return f"{tile[0]}x{tile[1]}"


def quantization_fields(point: SweepPoint, sms: int | None) -> dict:
    """Predicted tiles, waves and last-wave fill of the output for each tile size the paper discusses.
    Fused attention has no single GEMM output grid, so it gets none."""
    out: dict = {"sms": sms}
    for tile in TILE_SIZES:
        name = tile_name(tile)
        if sms is None or point.component == "flash_attention":
            out.update({f"tiles_{name}": None, f"waves_{name}": None, f"last_wave_fill_{name}": None})
            continue
        n_tiles = tiles(point.m, point.n, tile, point.batch)
        out.update({f"tiles_{name}": n_tiles, f"waves_{name}": waves(n_tiles, sms),
                    f"last_wave_fill_{name}": round(last_wave_fill(n_tiles, sms), 4)})
    if sms is not None and point.component != "flash_attention":
        out["wave_efficiency_128x256"] = round(wave_efficiency(tiles(point.m, point.n, (128, 256), point.batch), sms), 4)
    else:
        out["wave_efficiency_128x256"] = None
    return out


def _is_oom(exc: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator raises a RuntimeError that says so
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def measure(point: SweepPoint, spec: SweepSpec, device: torch.device, keep_busy=None) -> dict:
    """Time one point; returns the measurement fields (status ok | oom | error). `keep_busy` (a
    profiler.timing.KeepBusy) is queued before the point and again after it, while the host writes the record
    and builds the next point's operands: every point starts in the sustained power state (POLICY["sweeps"])."""
    status, error, stats = "ok", None, None
    try:
        fn = operands.build(point, torch_dtype(spec.dtype), device)
        b = spec.budget
        result = bench_detailed(fn, warmup_ms=b.warmup_ms, rep_ms=b.rep_ms, min_reps=b.min_reps,
                                max_reps=b.max_reps, flush_l2=True, device=device, keep_busy=keep_busy,
                                busy_ratio=b.busy_ratio)
        stats, warmup = summarize(result.samples_ms), result.warmup
        del fn
        if keep_busy is not None:
            keep_busy()
    except UserError:
        raise
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        status = "oom" if _is_oom(exc) else "error"
        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if status != "ok":
        # the exception's frames held the inputs; free them before the next point allocates
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return failed_fields(status, error)
    return {"status": "ok", "error": None, **stats.to_dict(),
            "tflops": point.flops / (stats.median_ms * 1e-3) / 1e12,
            "warmup_ms": round(warmup.spent_ms, 3), "warmup_stable": warmup.stable}


def point_record(point: SweepPoint, spec: SweepSpec, gpu: str, sms: int | None, measured: dict,
                 git_sha: str | None = None) -> dict:
    head_dim = point.head_dim
    return {
        "record": "point", **point.identity(dtype=spec.dtype, gpu=gpu, tag=spec.tag), "git_sha": git_sha,
        "x_name": point.x_name, "x": point.x, "held": "head_dim" if spec.head_dim else ("a" if point.a else None), "head_dim": head_dim,
        "head_dim_pow2": largest_power_of_two_dividing(head_dim) if head_dim else None,  # Fig. 7 line class
        "flops": point.flops, **measured, **quantization_fields(point, sms),
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def gpu_label(env: dict) -> str:
    return env.get("gpu_name") or f"cpu:{env.get('cpu') or 'unknown'}"


def estimate_cpu_seconds(spec: SweepSpec, gflops: float) -> float:
    """Rough wall time of a sweep on a CPU: per point its budget, or its own compute time over the measured
    matmul rate times the repetitions and warm-up calls it will take, whichever is larger."""
    b = spec.budget
    per_point_s = (b.warmup_ms + b.rep_ms) / 1e3
    calls = b.min_reps + 3 * 3 + 4  # repetitions, warm-up windows, the first call and the estimate
    return sum(max(per_point_s, p.flops / (gflops * 1e9) * calls) for p in expand(spec))


@dataclass(frozen=True)
class WorkerArgs:
    """What every sweep worker is handed: the spec, its device ("cuda" is the worker's own, pinned GPU), the
    SM count override and whether to measure the GEMM ceiling before its first point."""
    spec: SweepSpec
    device: str
    sms: int | None = None
    measure_peak: bool = True


@dataclass
class WorkerState:
    args: WorkerArgs
    device: torch.device
    env: dict
    gpu: str
    sms: int | None
    clock: object  # () -> SM clock in MHz, or None
    worker: WorkerInfo
    keep_busy: object = None  # profiler.timing.KeepBusy, built on the worker's first point
    first: bool = True


def setup_worker(worker: WorkerInfo, args: WorkerArgs) -> tuple[WorkerState, dict]:
    """Once per worker process: its device, environment and GPU label (part of every point's key)."""
    if worker.threads:
        torch.set_num_threads(worker.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device: worker {worker.id} on {worker.host} sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if worker.gpu_index is None:  # not pinned (inline): the GPU is the device's own index
            worker = replace(worker, gpu_index=str(device.index))
    env = environment(device)
    gpu = gpu_label(env)
    sms = args.sms if args.sms is not None else env.get("sm_count")
    state = WorkerState(args, device, env, gpu, sms, sm_clock_reader(device), worker)
    return state, {"gpu": gpu, "device": str(device), "sms": sms, "git_sha": env.get("git_sha")}


def measure_point(state: WorkerState, point: SweepPoint) -> dict:
    """One point in a worker: its record (with the worker, its GPU and the SM clock as its timing ended), and
    on the worker's first point the fields of its "run" record (environment, and the GEMM ceiling on CUDA)."""
    spec, device = state.args.spec, state.device
    run = None
    if state.first:
        run = {"environment": state.env, "sms": state.sms, "device": str(device)}
        if state.args.measure_peak and device.type == "cuda":
            run["matmul_peak"] = measure_matmul_peak(device, torch_dtype(spec.dtype))
        if device.type == "cuda" and spec.budget.keep_busy_ms > 0:
            state.keep_busy = KeepBusy(device, spec.budget.keep_busy_ms)
        run["keep_busy_ms"] = spec.budget.keep_busy_ms if state.keep_busy is not None else 0.0
        state.first = False
    measured = measure(point, spec, device, state.keep_busy)
    record = point_record(point, spec, state.gpu, state.sms, measured, state.env.get("git_sha"))
    record.update(attribution(state.worker, state.clock()))
    return {"point": record, "run": run}


def attribution(worker: WorkerInfo, sm_clock_mhz: float | None) -> dict:
    """Who measured a point: the worker, its host and process, the physical GPU it was pinned to, the clock."""
    return {"worker": worker.id, "worker_host": worker.host, "worker_pid": worker.pid,
            "gpu_index": worker.gpu_index, "sm_clock_mhz": sm_clock_mhz}


def failed_fields(status: str, error: str) -> dict:
    return {"status": status, "error": error, "median_ms": None, "p10_ms": None, "p90_ms": None, "min_ms": None,
            "max_ms": None, "repeats": 0, "outliers": 0, "tflops": None, "warmup_ms": None, "warmup_stable": None}


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, device: torch.device | str | None = None,
              sms: int | None = None, progress: bool = True, retry_failed: bool = False,
              measure_peak: bool = True, executor=None, notice=None) -> SweepSummary:
    """Measure every point of `spec` not yet in `out_dir`'s store. `executor` (profiler.executors; default
    inline, this process) spreads the points over workers; this process alone writes the store, holding its
    lock (a second sweep into the same folder waits, then measures only what the first left)."""
    notice = notice or (lambda line: print(line, file=sys.stderr, flush=True))
    executor = executor or InlineExecutor()
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if executor.name != "inline" and device.type == "cuda" and device.index is not None:
        raise UserError(f"--device: {device} picks one GPU, but --executor {executor.name} pins each worker to its "
                        "own; choose the GPUs with CUDA_VISIBLE_DEVICES (or --workers) instead")
    if spec.kind == "flash" and device.type != "cuda":
        raise UserError("flash: the flash-attention backend of torch SDPA needs a CUDA GPU; run this sweep "
                        "on the GPU machine (or use score/aov for the unfused attention GEMMs)")
    points = expand(spec)
    out_dir = prepare_out_dir(out_dir)  # before anything is measured or written
    with DirectoryLock(out_dir, what=f"sweep {spec.kind}", on_wait=notice):
        return _run_locked(spec, points, out_dir, device, sms, progress, retry_failed, measure_peak, executor,
                           notice)


def _run_locked(spec, points, out_dir, device, sms, progress, retry_failed, measure_peak, executor,
                notice) -> SweepSummary:
    store = ResultStore(out_dir)
    args = WorkerArgs(spec, str(device), sms, measure_peak)
    with executor.start(Job(setup_worker, measure_point, args), on_notice=notice) as pool:
        gpus = sorted({w["gpu"] for w in pool.workers})
        if len(gpus) > 1:
            raise UserError(f"--executor {executor.name}: the workers have different GPUs ({', '.join(gpus)}); a "
                            "sweep's curves compare points of one GPU kind: run one sweep per kind")
        gpu = gpus[0]
        shas = sorted({str(w.get("git_sha")) for w in pool.workers})
        if len(shas) > 1:
            notice(f"notice: the workers run different versions of the code (git {', '.join(shas)}); each run "
                   "record in the results says which")
        done = store.keys(("ok",) if retry_failed else ("ok", "oom", "error"))
        if store.notice():
            notice(f"notice: {store.notice()}")
        todo = {p.key(dtype=spec.dtype, gpu=gpu, tag=spec.tag): p for p in points
                if p.key(dtype=spec.dtype, gpu=gpu, tag=spec.tag) not in done}
        counts = {"oom": 0, "error": 0}
        if not todo:
            return SweepSummary(len(points), 0, len(points), 0, 0, store.path)
        bar = _progress(len(todo), spec, enabled=progress)
        run_fields = {"record": "run", "spec": spec.to_dict(), "points_planned": len(points),
                      "points_to_measure": len(todo), "executor": executor.name, "workers": executor.workers}

        def on_result(key: str, result: dict, worker: dict) -> None:
            if result["run"] is not None:  # the worker's first point: its provenance goes first
                store.append({**run_fields, "worker": worker["worker"], "worker_host": worker["host"],
                              "worker_pid": worker["pid"], "gpu_index": worker["gpu_index"], **result["run"]})
            record = result["point"]
            if record["status"] != "ok":
                counts[record["status"]] += 1
            store.append(record)
            if bar is not None:
                bar.update(1)
                if record["tflops"] is not None:
                    bar.set_postfix_str(f"{spec.kind} x={record['x']} {record['tflops']:.1f} TFLOP/s", refresh=False)

        def on_lost(key: str, reason: str) -> None:
            counts["error"] += 1
            record = point_record(todo[key], spec, gpu, None, failed_fields("error", reason), None)
            store.append({**record, "worker": None, "worker_host": None, "worker_pid": None, "gpu_index": None,
                          "sm_clock_mhz": None})

        try:
            pool.run(list(todo.items()), on_result, on_lost=on_lost)
        finally:
            if bar is not None:
                bar.close()
    return SweepSummary(len(points), len(todo), len(points) - len(todo), counts["oom"], counts["error"],
                        store.path)


def _progress(total: int, spec: SweepSpec, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"sweep {spec.kind}", unit="pt", dynamic_ncols=True)

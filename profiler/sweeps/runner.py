"""Run a sweep: expand the spec, skip points already in the results file, time the rest one by one with
profiler.timing.bench, and append each result as soon as it exists (reports/sweep_report.py renders it).

A point that runs out of memory is recorded as status "oom" and the sweep goes on; any other torch
runtime failure is recorded as "error" with its first line. Ctrl-C propagates (the CLI prints the resume
hint): only the point in flight is lost.
"""

from __future__ import annotations

import datetime as _dt
import gc
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from models.layer import torch_dtype

from ..errors import UserError
from ..hardware import environment, measure_matmul_peak
from ..outputs import prepare_out_dir
from ..quantization import TILE_SIZES, largest_power_of_two_dividing, last_wave_fill, tiles, wave_efficiency, waves

from ..timing import bench, summarize
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


def measure(point: SweepPoint, spec: SweepSpec, device: torch.device) -> dict:
    """Time one point; returns the measurement fields (status ok | oom | error)."""
    status, error, stats = "ok", None, None
    try:
        fn = operands.build(point, torch_dtype(spec.dtype), device)
        b = spec.budget
        stats = summarize(bench(fn, warmup_ms=b.warmup_ms, rep_ms=b.rep_ms, min_reps=b.min_reps,
                                max_reps=b.max_reps, flush_l2=True, device=device))
        del fn
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
        return {"status": status, "error": error, "median_ms": None, "p10_ms": None, "p90_ms": None,
                "min_ms": None, "max_ms": None, "repeats": 0, "outliers": 0, "tflops": None}
    return {"status": "ok", "error": None, **stats.to_dict(),
            "tflops": point.flops / (stats.median_ms * 1e-3) / 1e12}


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


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, device: torch.device | str | None = None,
              sms: int | None = None, progress: bool = True, retry_failed: bool = False,
              measure_peak: bool = True) -> SweepSummary:
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if spec.kind == "flash" and device.type != "cuda":
        raise UserError("flash: the flash-attention backend of torch SDPA needs a CUDA GPU; run this sweep "
                        "on the GPU machine (or use score/aov for the unfused attention GEMMs)")
    points = expand(spec)
    out_dir = prepare_out_dir(out_dir)  # before anything is measured or written
    env = environment(device)
    gpu = gpu_label(env)
    sms = sms if sms is not None else env.get("sm_count")
    store = ResultStore(out_dir)
    done = store.keys(("ok",) if retry_failed else ("ok", "oom", "error"))
    if store.notice():
        print(f"notice: {store.notice()}", file=sys.stderr)
    todo = [p for p in points if p.key(dtype=spec.dtype, gpu=gpu, tag=spec.tag) not in done]
    counts = {"oom": 0, "error": 0}
    if todo:
        run = {"record": "run", "spec": spec.to_dict(), "environment": env, "sms": sms,
               "device": str(device), "points_planned": len(points), "points_to_measure": len(todo)}
        if measure_peak and device.type == "cuda":
            run["matmul_peak"] = measure_matmul_peak(device, torch_dtype(spec.dtype))
        store.append(run)
        bar = _progress(todo, spec, enabled=progress)
        for point in bar:
            measured = measure(point, spec, device)
            if measured["status"] != "ok":
                counts[measured["status"]] += 1
            store.append(point_record(point, spec, gpu, sms, measured, env.get("git_sha")))
            if progress and measured["tflops"] is not None:
                bar.set_postfix_str(f"{spec.kind} x={point.x} {measured['tflops']:.1f} TFLOP/s", refresh=False)
    return SweepSummary(len(points), len(todo), len(points) - len(todo), counts["oom"], counts["error"],
                        store.path)


def _progress(todo: list[SweepPoint], spec: SweepSpec, *, enabled: bool):
    if not enabled:
        return todo
    from tqdm import tqdm
    return tqdm(todo, desc=f"sweep {spec.kind}", unit="pt", dynamic_ncols=True)

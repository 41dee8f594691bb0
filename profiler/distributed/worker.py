"""One rank of a distributed layer profile, started by torchrun (launcher.py): one process per GPU.

Per config, every rank builds its shard of the Megatron-style layer (models/tensor_parallel.py), times it
(lockstep.py), traces it with torch.profiler into its own rank-suffixed file, attributes the trace with the
single-GPU attribution, and measures its communication (communication.py). Rank 0 gathers the ranks'
tables and writes the merged outputs (merge.py). Every rank runs exactly the same sequence of steps: a
collective that one rank skips leaves the others waiting.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from models import ModelConfig
from models.config import safe_name
from models.layer import random_input, torch_dtype
from models.tensor_parallel import build_tensor_parallel_layer, communication_plan

from .. import checks as C
from ..attribution import (assign_steps, attribute, component_summary, coverage, host_context, step_totals,
                           unattributed_kernels)
from ..layer_profile import ProfileOptions, join_flops, make_step
from ..shape_check import attention_ops, check_shapes
from ..timing import L2Flusher
from ..trace import load_trace, record_trace
from .communication import check_collectives, overlap_with_compute, step_communication
from .launcher import DistributedJob
from .lockstep import lockstep_bench

COMM_COLUMNS = ["rank", "step", "pass", "component", "region", "name", "stream", "dur_us", "ts", "end", "overlap_us"]


@dataclass(frozen=True)
class RankResult:
    """What one rank measured for one config; small enough to gather to rank 0."""

    rank: int
    latency_ms: tuple[float, ...]
    components: pd.DataFrame  # component_summary of this rank's trace, with FLOPs
    communication: pd.DataFrame  # one row per communication kernel, with its overlap with compute
    steps: pd.DataFrame  # per traced step: kernel time, communication time, overlap
    checks: tuple[dict, ...]
    trace: str  # this rank's trace file
    trace_warmup: dict
    coverage: float
    device_name: str


def collectives_check(rows: list[dict]) -> C.Check:
    bad = [r for r in rows if not r["ok"]]
    observed = "; ".join(f"{r['what']}: {r['observed']}" for r in rows)
    return C.Check("collectives", C.PASS if not bad else C.FAIL, "exact (Megatron: one all-reduce per block and pass)",
                   observed, rows)


def profile_rank(cfg: ModelConfig, job: DistributedJob, device: torch.device, rank: int) -> RankResult:
    dtype = torch_dtype(cfg.dtype)
    model = build_tensor_parallel_layer(cfg, device=device, dtype=dtype, seed=job.seed).train()
    x = random_input(cfg, device=device, dtype=dtype, requires_grad=job.backward)
    step = make_step(model, x, job.backward)
    flush = L2Flusher(device) if device.type == "cuda" and job.flush_l2 else None

    samples = lockstep_bench(step, device=device, warmup_steps=job.warmup_steps, rep_ms=job.bench_rep_ms, flush=flush)
    # per-rank directories: record_trace finds its file by listing its directory, which the other ranks'
    # traces must not enter; min_warmup = max_warmup makes its warm-up a fixed count, the same on every rank
    trace_path, schedule = record_trace(step, trace_dir=Path(job.out) / "tb" / f"rank{rank}",
                                        worker_name=f"{safe_name(cfg.name)}-t{cfg.tensor_parallel}-rank{rank}",
                                        active_steps=job.active_steps, device=device, flush=flush,
                                        min_warmup=job.warmup_steps, max_warmup=job.warmup_steps)
    events = load_trace(trace_path)
    activities = attribute(events).assign(rank=rank)
    host = host_context(events)
    options = ProfileOptions(mode=job.mode)
    fused = any(k in op for op in attention_ops(host, cfg) for k in ("flash", "efficient", "cudnn"))
    components = join_flops(component_summary(activities), cfg, options, fused)
    components.insert(0, "rank", rank)
    comm = overlap_with_compute(activities)
    comm = comm.reindex(columns=COMM_COLUMNS)
    steps = step_communication(activities, comm).merge(step_totals(activities)[["step", "attributed_us"]], on="step")
    cover = coverage(activities)
    checks = (C.shapes_check(check_shapes(host, cfg, include_logits=False, dtype=cfg.dtype)),
              C.coverage_check(cover, unattributed_kernels(activities)),
              collectives_check(check_collectives(events, assign_steps(events, events),
                                                  communication_plan(cfg, backward=job.backward))))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    del model, x, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return RankResult(rank, tuple(samples), components, comm, steps, tuple(c.to_dict() for c in checks),
                      str(trace_path), schedule.to_dict(), cover, name)


def _one_line(exc: BaseException, cfg: ModelConfig | None) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) and cfg is not None:
        return (f"{cfg.name}: CUDA out of memory at b={cfg.micro_batch_size}, s={cfg.seq_length}, "
                f"t={cfg.tensor_parallel}; lower --batch or --seq-len, or raise --tensor-parallel")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{cfg.name + ': ' if cfg is not None else ''}{type(exc).__name__}: {first}"


def main(argv: list[str] | None = None) -> int:
    from .merge import write_outputs

    job = DistributedJob.read(Path((argv if argv is not None else sys.argv[1:])[0]))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device("cuda", local) if job.device == "cuda" else torch.device("cpu")
    cfg = None
    try:
        if world != job.tensor_parallel:
            raise RuntimeError(f"started with {world} processes for tensor_parallel {job.tensor_parallel}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(job.backend, timeout=timedelta(seconds=job.timeout_s),
                                device_id=device if device.type == "cuda" else None)
        for i, cfg in enumerate(job.model_configs(), 1):
            if rank == 0:
                print(f"[{i}/{len(job.configs)}] {cfg.name}: t={world} over {job.backend}, {job.mode}", flush=True)
            result = profile_rank(cfg, job, device, rank)
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(result, gathered, dst=0)
            if rank == 0:
                write_outputs(job, cfg, gathered)
        dist.barrier()
        dist.destroy_process_group()
        return 0
    except BaseException as exc:  # the launcher prints this line; the traceback stays in this rank's output
        job.error_path(rank).parent.mkdir(parents=True, exist_ok=True)
        job.error_path(rank).write_text(_one_line(exc, cfg) + "\n")
        traceback.print_exc()
        # no destroy_process_group here: the other ranks may be inside a collective this rank will never
        # join, and tearing down would wait for them; torchrun stops them once this process exits
        return 1


if __name__ == "__main__":
    sys.exit(main())

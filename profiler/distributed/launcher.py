"""Start one profiling process per GPU through torchrun and report how it went.

`run_distributed_layer(job)` writes the job as JSON next to the outputs and runs

    python -m torch.distributed.run --standalone --nproc-per-node=t -m profiler.distributed.worker JOB.json

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* for each process; `--standalone` rendezvouses on a
free local port, so two runs on one host do not collide. Rank 0 merges the ranks' results and writes the
files; the command then writes the report. A rank that fails leaves a one-line reason that is printed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models import ModelConfig

from ..errors import UserError

ROOT = Path(__file__).resolve().parents[2]
MODES = ("forward", "forward+backward")
DEVICES = {"cuda": "nccl", "cpu": "gloo"}  # device -> the torch.distributed backend that runs on it
JOB_DIR = ".distributed"  # under the output directory: the job file and the ranks' failure notes
# NVLink multicast (NVLS) can take the host's GPUs, which others share, out of service: keep it off in NCCL,
# PyTorch's symmetric memory and NVSHMEM, whatever the caller's environment says
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_gpus(t: int) -> None:
    """One process per GPU: t-way tensor parallelism on CUDA needs t visible GPUs and NCCL."""
    found = visible_gpus()
    if found < t:
        raise UserError(f"--distributed with --tensor-parallel {t} needs {t} GPUs (one process per GPU), found "
                        f"{found}; drop --distributed to profile the per-GPU shapes on one device, or add "
                        "--device cpu to run the ranks over gloo on the CPU (wiring, not performance)")
    if not torch.distributed.is_nccl_available():
        raise UserError("--distributed: this torch build has no NCCL; install a CUDA build of torch")


@dataclass(frozen=True)
class DistributedJob:
    """Everything a rank needs, as JSON: resolved configs (each with tensor_parallel = t) and the run's options."""

    configs: tuple[dict, ...]
    out: str
    tensor_parallel: int
    device: str = "cuda"
    mode: str = "forward"
    warmup_steps: int = 3  # fixed, the same on every rank (lockstep.py says why)
    active_steps: int = 10
    bench_rep_ms: float = 300.0
    flush_l2: bool = True
    seed: int = 0
    timeout_s: float = 600.0  # a collective that waits longer than this fails instead of hanging
    environment: dict = field(default_factory=dict)  # extra provenance, merged into run.json's environment

    def __post_init__(self) -> None:
        # the ranks run from the repository root: a relative --out must mean what it meant to the caller
        object.__setattr__(self, "out", str(Path(self.out).resolve()))
        t = self.tensor_parallel
        if not isinstance(t, int) or t < 1:
            raise UserError(f"--tensor-parallel: must be a positive whole number, got {t!r}")
        if self.device not in DEVICES:
            raise UserError(f"--device: distributed runs use cuda (NCCL) or cpu (gloo), not '{self.device}'")
        if self.mode not in MODES:
            raise UserError(f"--mode: '{self.mode}' is not one of {', '.join(MODES)}")
        if self.warmup_steps < 0 or self.active_steps < 1:
            raise UserError("--warmup / --iters: need warmup >= 0 and at least one profiled step")
        if not self.configs:
            raise UserError("--config: give at least one config")
        for c in self.configs:
            if c.get("tensor_parallel") != t:
                raise UserError(f"config {c.get('name')}: tensor_parallel {c.get('tensor_parallel')} differs from "
                                f"--tensor-parallel {t}")

    @classmethod
    def for_configs(cls, configs: list[ModelConfig], *, out: Path, **options) -> DistributedJob:
        t = {c.tensor_parallel for c in configs}
        if len(t) != 1:
            raise UserError(f"--config: all configs of one distributed run need the same tensor_parallel, got {sorted(t)}")
        return cls(configs=tuple(c.to_dict() for c in configs), out=str(out), tensor_parallel=t.pop(), **options)

    @property
    def backend(self) -> str:
        return DEVICES[self.device]

    @property
    def backward(self) -> bool:
        return self.mode == "forward+backward"

    def model_configs(self) -> list[ModelConfig]:
        return [ModelConfig(**c) for c in self.configs]

    @property
    def job_dir(self) -> Path:
        return Path(self.out) / JOB_DIR

    def error_path(self, rank: int) -> Path:
        return self.job_dir / f"rank{rank}.error"

    def write(self) -> Path:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        path = self.job_dir / "job.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> DistributedJob:
        raw = json.loads(Path(path).read_text())
        return cls(**{**raw, "configs": tuple(raw["configs"])})


def torchrun_command(job_path: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "profiler.distributed.worker", str(job_path)]


def worker_environment(job: DistributedJob) -> dict[str, str]:
    env = {**os.environ, **NO_MULTICAST}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # torchrun sets 1 thread per process and warns; say it ourselves, with the cores shared out
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // job.tensor_parallel)))
    return env


EXIT_FAILED, EXIT_CHECK_FAILED = 1, 3  # as `profiler layer`: a config failed / a self-check failed


def failed_checks(job: DistributedJob) -> list[str]:
    """The failed self-checks of this job's configs in the run.json rank 0 wrote."""
    try:
        entries = json.loads((Path(job.out) / "run.json").read_text()).get("configs", [])
    except (OSError, json.JSONDecodeError):
        return ["rank 0 wrote no run.json"]
    ours = {(c["name"], job.tensor_parallel) for c in job.configs}
    return [f"{e['name']} t={e['tensor_parallel']}: {failure}" for e in entries
            if (e.get("name"), e.get("tensor_parallel")) in ours for failure in e.get("failed_checks", [])]


def run_distributed_layer(job: DistributedJob, *, allow_failed_checks: bool = False) -> int:
    """Run the job on t processes. 0: every rank finished and every check passed; 1: a rank failed (its
    reason is printed); 3: a self-check failed (printed; 0 with allow_failed_checks)."""
    if job.device == "cuda":
        require_gpus(job.tensor_parallel)
    job_path = job.write()
    for rank in range(job.tensor_parallel):
        job.error_path(rank).unlink(missing_ok=True)
    proc = subprocess.run(torchrun_command(job_path, job.tensor_parallel), env=worker_environment(job), cwd=ROOT)
    if proc.returncode != 0:
        reasons = [f"rank {r}: {job.error_path(r).read_text().strip()}" for r in range(job.tensor_parallel)
                   if job.error_path(r).exists()]
        print(f"error: distributed run failed ({'; '.join(reasons) or f'torchrun exited with status {proc.returncode}'})",
              file=sys.stderr)
        return EXIT_FAILED
    failures = failed_checks(job)
    for failure in failures:
        print(f"check failed: {failure}", file=sys.stderr)
    return EXIT_CHECK_FAILED if failures and not allow_failed_checks else 0

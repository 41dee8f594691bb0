"""What the run ran on: the GPU's own properties, a datasheet table keyed by name, measured ceilings.

Peaks are never constants in the analysis: the datasheet figure is shown for reference, and the
percent-of-peak columns use the ceiling measured on the same GPU in the same run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

from .timing import bench, summarize

# dense (no sparsity) tensor-core peaks in TFLOP/s and HBM bandwidth in TB/s, from NVIDIA datasheets
DATASHEET = {
    "H200": {"bf16_tflops": 989.4, "fp16_tflops": 989.4, "hbm_tbps": 4.8},
    "H100": {"bf16_tflops": 989.4, "fp16_tflops": 989.4, "hbm_tbps": 3.35},
    "A100": {"bf16_tflops": 312.0, "fp16_tflops": 312.0, "hbm_tbps": 2.0},
    "V100": {"bf16_tflops": None, "fp16_tflops": 125.0, "hbm_tbps": 0.9},
}


def datasheet_for(gpu_name: str) -> dict:
    for key, spec in DATASHEET.items():
        if key in gpu_name:
            return {"datasheet_key": key, **spec}
    return {}


def _git_sha() -> str | None:
    """The code's commit: CODESIGN_GIT_SHA when set (the GPU machine gets a copy of the tree without .git),
    else git, with "-dirty" when the tree has uncommitted changes (the numbers may not match any commit)."""
    if os.environ.get("CODESIGN_GIT_SHA"):
        return os.environ["CODESIGN_GIT_SHA"]
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        sha = out.stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device | str | None = None) -> dict:
    env = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_sha": _git_sha(),
        "host": platform.node(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device": "cuda",
            "gpu_name": props.name,
            "gpu_uuid": str(getattr(props, "uuid", "")) or None,  # which physical GPU: runs on two machine starts differ
            "sm_count": props.multi_processor_count,
            "l2_cache_mb": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
            "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "driver": _driver_version(),
            "cudnn": torch.backends.cudnn.version(),
            **datasheet_for(props.name),
        })
    else:
        env.update({"device": "cpu", "gpu_name": None, "sm_count": None, "cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads()})
    return env


def measure_matmul_peak(device, dtype: torch.dtype = torch.bfloat16, n: int = 8192) -> dict:
    """The GEMM ceiling of this GPU: a large square matmul on random data (zeros run faster).

    Two figures: `tflops` with the GPU idle as long as each product between products (the clock a GEMM
    gets inside a layer that also runs memory-bound kernels) and `sustained_tflops`, back to back (the
    clock under the power limit)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    burst = summarize(bench(lambda: torch.mm(a, b), warmup_ms=50, rep_ms=200, idle_ratio=1.0, device=device))
    sustained = summarize(bench(lambda: torch.mm(a, b), warmup_ms=100, rep_ms=300, device=device))
    flops = 2 * n**3
    return {"shape": [n, n, n], "dtype": str(dtype).removeprefix("torch."),
            "tflops": flops / (burst.median_ms * 1e-3) / 1e12,
            "sustained_tflops": flops / (sustained.median_ms * 1e-3) / 1e12, **burst.to_dict()}


def measure_copy_bandwidth(device, gigabytes: float = 2.0) -> dict:
    """Device-to-device copy; counts bytes read plus bytes written."""
    numel = int(gigabytes * 2**30 / 4)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    stats = summarize(bench(lambda: dst.copy_(src), warmup_ms=50, rep_ms=200, flush_l2=False, device=device))
    return {"bytes_moved": 2 * numel * 4, "tbps": 2 * numel * 4 / (stats.median_ms * 1e-3) / 1e12, **stats.to_dict()}


def resolve_device(choice: str) -> torch.device:
    """A command's --device auto|cuda|cpu as a device; asking for CUDA where there is none is the user's to fix."""
    from .errors import UserError

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda asked for but no CUDA device is visible; use --device cpu or auto")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


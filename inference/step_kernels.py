"""What one decode step's kernels are, and what holds the step above its weight + KV floor.

`trace_step` records one call of a step (a CUDA graph replay) under torch.profiler and returns its device
events; the rest are pure functions: each kernel gets a class (gemm: cuBLAS' GEMV/GEMM; attention: the decode
attention kernel, which reads the KV cache; norm: the fused residual + norm kernel; other: everything else:
the split-combine + GELU kernel, embedding gather, argmax, writes, inductor's fused kernels), and `holds_back` splits the step's time over the floor into
what each class costs beyond the bytes it must move:

  GEMV bandwidth   gemm kernel time - weight bytes / copy bandwidth
  attention        attention kernel time - KV bytes / copy bandwidth
  small kernels    time of the norm and other kernels (they move next to no bytes)
  launch gaps      step time - summed kernel time (the GPU idle between dependent kernels of the graph)

With a layer's two branches on two streams, kernels overlap and their summed time can exceed the step:
`overlapped_ms` = summed kernel time - step time (then the gaps are 0 and each class's excess is an upper
bound on what it costs the step).

and names the largest. `launch_floor_ms` = kernels x the shortest kernel: what the step would cost if every
kernel were as short as the shortest one, a lower bound that only fewer kernels can lower.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

KERNEL_CLASSES = ("gemm", "attention", "norm", "other")
_GEMM_MARKERS = ("gemm", "gemv", "cutlass", "nvjet", "xmma", "splitk", "cublas", "sm90_", "sm80_")


def kernel_class(name: str) -> str:
    lowered = name.lower()
    if "_decode_attention_kernel" in lowered:  # the kernel that reads the KV cache
        return "attention"
    if "_residual_norms_kernel" in lowered:
        return "norm"
    if any(marker in lowered for marker in _GEMM_MARKERS) and not lowered.startswith("triton_"):
        return "gemm"
    return "other"


def trace_step(step: Callable[[], None], device: torch.device) -> pd.DataFrame:
    """Device events (kernels, memcpys, memsets) of one call of `step`: columns name, dur_us, cls."""
    from torch.profiler import ProfilerActivity, profile

    from profiler.trace import DEVICE_CATEGORIES, load_trace, quiet_kineto

    if device.type != "cuda":
        return pd.DataFrame(columns=["name", "dur_us", "cls"])
    torch.cuda.synchronize(device)
    with quiet_kineto(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory(prefix="decode-step-") as tmp:
        path = Path(tmp) / "step.pt.trace.json"
        prof.export_chrome_trace(str(path))
        events = load_trace(path)
    device_events = events[events["cat"].isin(DEVICE_CATEGORIES)]
    return pd.DataFrame({"name": device_events["name"].astype(str), "dur_us": device_events["dur"].astype(float),
                         "cls": [kernel_class(n) for n in device_events["name"].astype(str)]}).reset_index(drop=True)


@dataclass(frozen=True)
class StepKernels:
    source: str  # what was traced: a graph replay, or (if the profiler saw no kernels in it) an eager step
    count: int
    total_us: float
    min_us: float
    shortest: str
    by_class: dict  # class -> {"count", "us", "min_us"}

    def to_dict(self) -> dict:
        return asdict(self)

    def class_ms(self, cls: str) -> float:
        return self.by_class.get(cls, {}).get("us", 0.0) / 1e3


def summarize_kernels(kernels: pd.DataFrame, source: str) -> StepKernels | None:
    if kernels.empty:
        return None
    by_class = {cls: {"count": int(len(group)), "us": float(group["dur_us"].sum()),
                      "min_us": float(group["dur_us"].min())} for cls, group in kernels.groupby("cls")}
    shortest = kernels.loc[kernels["dur_us"].idxmin()]
    return StepKernels(source, int(len(kernels)), float(kernels["dur_us"].sum()), float(shortest["dur_us"]),
                       str(shortest["name"])[:120], by_class)


def holds_back(step_ms: float, kernels: StepKernels | None, *, weight_bytes: int, kv_bytes: int,
               bandwidth_tbps: float | None) -> dict:
    """The step's time over its floor, by cause; `holds_back` names the largest. kv_bytes: the KV cache the
    traced step read (its own context), so attention is judged on the bytes it actually moved."""
    if kernels is None or not bandwidth_tbps:
        return {"holds_back": "not traced" if kernels is None else "no bandwidth measured"}
    to_ms = 1e3 / (bandwidth_tbps * 1e12)
    gemm_ms, attention_ms = kernels.class_ms("gemm"), kernels.class_ms("attention")
    small_ms = kernels.class_ms("norm") + kernels.class_ms("other")
    gaps_ms = max(0.0, step_ms - kernels.total_us / 1e3)
    overlapped_ms = max(0.0, kernels.total_us / 1e3 - step_ms)
    excess = {"GEMV bandwidth": gemm_ms - weight_bytes * to_ms, "attention": attention_ms - kv_bytes * to_ms,
              "small kernels": small_ms, "launch gaps": gaps_ms}
    worst = max(excess, key=excess.get)
    return {
        "gemm_ms": gemm_ms, "attention_ms": attention_ms, "small_kernels_ms": small_ms, "launch_gaps_ms": gaps_ms,
        "overlapped_ms": overlapped_ms,
        "gemv_tbps": weight_bytes / (gemm_ms * 1e-3) / 1e12 if gemm_ms else None,
        "attention_tbps": kv_bytes / (attention_ms * 1e-3) / 1e12 if attention_ms else None,
        "launch_floor_ms": kernels.count * kernels.min_us / 1e3,
        "excess_ms": excess,
        "holds_back": f"{worst} (+{excess[worst]:.3f} ms)",
    }

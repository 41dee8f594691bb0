"""Which kernel a weight GEMM runs on, as data, and how a choice runs: the model floor's half of issue 21.

The choice itself (probing every candidate bitwise over M on a GPU, timing it, picking, caching) needs the
profiler's timing, so it lives a floor up, in profiler/invariance/choice.py; `make_batch_invariant` is handed
a chooser (switch.py) and applies the `KernelChoice` it returns. Kernels a choice can name:

- `default`: F.linear with cuBLAS's defaults (split-K and all): the fastest kernel there is, and invariant
  for a shape wherever the bitwise probe over every M says so (the heuristics pick one non-split kernel per
  M range for many shapes; split-K at small M for the K-heavy ones, where the probe fails);
- `cublaslt`: cuBLASLt with split-K off (cublas.py);
- `triton`: the M-bucketed Triton kernel (matmul.py, tiles.py), invariant by construction;
- `triton-fixed`: one Triton tile for every M (the kernel before issue 21), the last fall-back;
- `skinny`: the decode engine's weight-streaming kernel, one plan per shape, 64-row chunks (skinny.py): a
  candidate only where a caller asks for it (the decode engine's invariant mode: M = batch <= 64);
- `hybrid`: two or three of those, each over a range of M (`segments`), where each one's rows are bitwise
  the rows of the largest product of the last one (the reference) at every probed M of its range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .cublas import cublas_linear
from .matmul import fixed_linear, invariant_linear
from .skinny import skinny_linear
from .tiles import plan_for

KERNEL_NAMES = {"default": "cuBLAS, default settings", "cublaslt": "cuBLASLt, split-K off",
                "triton": "Triton, tiles by M bucket", "triton-fixed": "Triton, one tile for every M",
                "hybrid": "one kernel below the switch M, another from it",
                "skinny": "Triton weight-streaming GEMM, 64-row chunks, one split of K per shape"}
RUNNERS: dict[str, Callable] = {"default": F.linear, "cublaslt": cublas_linear, "triton": invariant_linear,
                                "triton-fixed": fixed_linear, "skinny": skinny_linear}


@dataclass(frozen=True)
class Candidate:
    kernel: str
    invariant: bool | None  # None: not tried, or failed to run (see note)
    accurate: bool | None = None
    error_ratio: float | None = None  # worst |error| / rounding bound (<= 1 is accurate)
    verdict: dict = field(default_factory=dict)  # ProbeVerdict.to_dict() of its own rows across M
    timings_us: dict = field(default_factory=dict)  # M -> median time (us)
    note: str = ""

    @property
    def usable(self) -> bool:
        return bool(self.invariant) and bool(self.accurate)


@dataclass(frozen=True)
class KernelChoice:
    n: int
    k: int
    dtype: str
    bias: bool
    kernel: str  # a key of KERNEL_NAMES
    reason: str
    switch_m: int | None = None  # hybrid: `high` from this M on, `low` below it
    plan: str = ""  # the Triton plan (tiles by M bucket), where Triton runs
    proven: bool = False  # passed the bitwise probe on this GPU (False off a GPU, or when forced / nothing passed)
    sweep: str = ""  # the M the proof covered, in words
    tokens_digest: str = ""
    candidates: tuple[Candidate, ...] = ()
    default_us: dict = field(default_factory=dict)  # F.linear with cuBLAS's defaults, at the timing M
    agreement: dict = field(default_factory=dict)  # hybrid: low vs high, bitwise, below the switch
    environment: dict = field(default_factory=dict)
    low: str = "triton"  # hybrid: the kernel below switch_m
    high: str = "cublaslt"  # hybrid: the kernel from switch_m on
    proof: dict = field(default_factory=dict)  # ProbeVerdict.to_dict() of the chosen path itself, over `sweep`
    segments: tuple = ()  # hybrid: ((first M, kernel), ...) from M = 1 up; () means (low below switch_m, high)

    @property
    def parts(self) -> tuple[tuple[int, str], ...]:
        if self.kernel != "hybrid":
            return ((1, self.kernel),)
        return tuple(map(tuple, self.segments)) or ((1, self.low), (self.switch_m or 1, self.high))

    @property
    def label(self) -> str:
        if self.kernel != "hybrid":
            return self.kernel
        parts = self.parts
        ends = [start for start, _ in parts[1:]]
        return "hybrid (" + ", ".join(f"{name} M<{end}" for (_, name), end in zip(parts, ends)) \
            + f", {parts[-1][1]} M>={parts[-1][0]})"

    def kernel_at(self, m: int) -> str:
        name = self.kernel
        for start, kernel in self.parts:
            if m >= start:
                name = kernel
        return name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "KernelChoice":
        data = dict(data)
        cands = []
        for c in data.pop("candidates", ()):
            c = dict(c)
            c["timings_us"] = {int(m): float(t) for m, t in c.get("timings_us", {}).items()}
            cands.append(Candidate(**c))
        data["default_us"] = {int(m): float(t) for m, t in data.get("default_us", {}).items()}
        data["segments"] = tuple((int(start), str(name)) for start, name in data.get("segments", ()))
        return cls(candidates=tuple(cands), **data)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, choice: KernelChoice) -> torch.Tensor:
    """F.linear on the chosen kernel; a hybrid picks its side by the number of rows (tokens) of this call."""
    kernel = choice.kernel
    if kernel == "hybrid":
        kernel = choice.kernel_at(x.numel() // x.shape[-1] if x.shape[-1] else 0)
    return RUNNERS[kernel](x, weight, bias)


def unprobed_choice(n: int, k: int, dtype: torch.dtype, bias: bool, why: str) -> KernelChoice:
    """The Triton kernel, invariant by construction but not probed here (off a GPU, or no chooser given)."""
    return KernelChoice(n, k, str(dtype).removeprefix("torch."), bias, "triton", why, plan=plan_for(n, k, dtype).label)

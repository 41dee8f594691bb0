"""Two measurements of the layer's weight GEMMs over the number of tokens M, for torch (cuBLAS) and the
batch-invariant path (the kernel models.invariant.choose picked for the shape on this GPU: cuBLASLt with
split-K off, the M-bucketed Triton kernel, or both split by M), optionally its two candidates alone:

- `throughput`: TFLOP/s at each M (profiler.timing.bench: CUDA events, L2 flushed, medians and p10/p90) of
  one call replayed from a CUDA graph (graph_timing.py: GPU time, the host's launch cost left out, as in a
  serving engine's graph-replayed decode step; `launch="eager"` times the Python call instead), with the
  invariant kernel's largest difference from torch at that M (a correctness check, not a timing);
- `invariance`: for each M, is every row the same as when computed alone (M = 1) and as the same row inside
  the largest M? Rows are compared bitwise (torch.equal) and by their largest absolute difference.

Operands are random normals (never zeros: a GEMM on zeros runs faster and rounds nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from ..timing import bench, summarize
from .graph_timing import graph_samples_ms
from .shapes import GemmShape

KERNELS = ("torch", "invariant")
CANDIDATES = ("cublaslt", "triton")  # the invariant path's candidates on their own (context for the choice)
LAUNCHES = ("graph", "eager")
KERNEL_LABELS = {"torch": "Non-batch-invariant (cuBLAS)", "invariant": "Batch-invariant (chosen per shape)",
                 "cublaslt": "cuBLASLt, split-K off", "triton": "Batch-invariant Triton (tiles by M)"}
ALONE_SAMPLE_ROWS = 64  # rows 0..63 alone, plus the last row of every M checked, plus random ones


@dataclass(frozen=True)
class Budget:
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 5


@dataclass(frozen=True)
class Operands:
    x: torch.Tensor  # (max tokens, K) activations
    weight: torch.Tensor  # (N, K), as nn.Linear holds it
    bias: torch.Tensor | None


def make_operands(shape: GemmShape, max_tokens: int, *, dtype: torch.dtype, device: torch.device,
                  seed: int = 0) -> Operands:
    gen = torch.Generator(device="cpu").manual_seed(seed + shape.n * 7919 + shape.k)
    x = torch.randn(max_tokens, shape.k, generator=gen).to(device=device, dtype=dtype)
    weight = (torch.randn(shape.n, shape.k, generator=gen) * 0.02).to(device=device, dtype=dtype)
    bias = (torch.randn(shape.n, generator=gen) * 0.02).to(device=device, dtype=dtype) if shape.bias else None
    return Operands(x, weight, bias)


def kernel_choice(shape: GemmShape, dtype: torch.dtype, device: torch.device):
    """The invariant kernel of this shape on `device` (probed on a GPU the first time, then cached)."""
    from .choice import choose

    return choose(shape.n, shape.k, dtype, shape.bias, device)


def kernel_fn(kernel: str, ops: Operands) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (M, K) -> x W^T + b, as nn.Linear runs it (the bias on the GEMM epilogue) through `kernel`."""
    from models.invariant import cublas_linear, invariant_linear
    from models.invariant.choice import linear

    if kernel == "torch":
        return lambda a: F.linear(a, ops.weight, ops.bias)
    if kernel == "invariant":
        choice = kernel_choice(GemmShape("", ops.weight.shape[0], ops.weight.shape[1], ops.bias is not None),
                               ops.weight.dtype, ops.weight.device)
        return lambda a: linear(a, ops.weight, ops.bias, choice)
    if kernel == "cublaslt":
        return lambda a: cublas_linear(a, ops.weight, ops.bias)
    if kernel == "triton":
        return lambda a: invariant_linear(a, ops.weight, ops.bias)
    raise ValueError(f"unknown kernel '{kernel}'; one of {', '.join(KERNELS + CANDIDATES)}")


def tile_label(shape: GemmShape, dtype: torch.dtype, device: torch.device) -> str:
    """What the invariant path runs for this shape: the chosen kernel (and its Triton plan where it has one)."""
    choice = kernel_choice(shape, dtype, device)
    return choice.label + (f"; {choice.plan}" if choice.plan else "")


def kernel_at(kernel: str, shape: GemmShape, m: int, dtype: torch.dtype, device: torch.device) -> str:
    """What ran at M rows: 'cublaslt', or 'triton <tile>' (the M bucket's configuration)."""
    from models.invariant import config_for

    if kernel == "torch":
        return ""
    name = kernel_choice(shape, dtype, device).kernel_at(m) if kernel == "invariant" else kernel
    if name in ("cublaslt", "default"):
        return name
    from models.invariant.tiles import fixed_plan

    plan = fixed_plan(shape.n, shape.k, dtype) if name == "triton-fixed" else None
    return f"{name} {config_for(shape.n, shape.k, dtype, device, m=m, plan=plan).label}"


def choice_frame(shapes: list[GemmShape], *, dtype: torch.dtype, device: torch.device,
                 config_name: str = "") -> pd.DataFrame:
    """One row per shape: the kernel the invariant path got, why, and each candidate's probe verdict and
    timings (the evidence the choice was made on)."""
    rows = []
    for shape in shapes:
        choice = kernel_choice(shape, dtype, device)
        row = {"config": config_name, "component": shape.component, "n": shape.n, "k": shape.k, "bias": shape.bias,
               "dtype": choice.dtype, "kernel": choice.label, "proven": choice.proven, "sweep": choice.sweep,
               "reason": choice.reason, "plan": choice.plan,
               "agreement": (choice.agreement or {}).get("summary", ""),
               "proof": (choice.proof or {}).get("m_checked")}
        for cand in choice.candidates:
            verdict = cand.verdict or {}
            row[f"{cand.kernel}_invariant"] = cand.invariant
            row[f"{cand.kernel}_m_failed"] = verdict.get("m_failed", cand.note)
            row[f"{cand.kernel}_m_checked"] = verdict.get("m_checked")
            row[f"{cand.kernel}_accurate"] = cand.accurate
        for m, us in choice.default_us.items():
            row[f"torch_us_m{m}"] = us
        for cand in choice.candidates:
            for m, us in cand.timings_us.items():
                row[f"{cand.kernel}_us_m{m}"] = us
        rows.append(row)
    return pd.DataFrame(rows)


@torch.inference_mode()
def throughput(shapes: list[GemmShape], tokens: Iterable[int], *, dtype: torch.dtype, device: torch.device,
               budget: Budget = Budget(), kernels: tuple[str, ...] = KERNELS, progress: bool = False,
               config_name: str = "", launch: str = "graph") -> pd.DataFrame:
    """One row per shape x kernel x M: median/p10/p90 time, TFLOP/s, and (invariant rows) the largest
    absolute difference from torch's result for the same operands. `launch`: 'graph' (one call replayed
    from a CUDA graph: the kernels' GPU time) or 'eager' (the Python call, host launch cost included)."""
    if launch not in LAUNCHES:
        raise ValueError(f"launch '{launch}': one of {', '.join(LAUNCHES)}")
    from tqdm import tqdm

    tokens = tuple(tokens)
    points = [(s, m) for s in shapes for m in tokens]
    bar = tqdm(total=len(points) * len(kernels), desc="invariance matmul: TFLOP/s", unit="pt", disable=not progress,
               dynamic_ncols=True)
    rows = []
    for shape in shapes:
        ops = make_operands(shape, max(tokens), dtype=dtype, device=device)
        fns = {k: kernel_fn(k, ops) for k in kernels}
        for m in tokens:
            a = ops.x[:m]
            reference = fns["torch"](a) if "torch" in fns else None
            for kernel, fn in fns.items():
                out = fn(a)
                diff = (out.float() - reference.float()).abs().max().item() if reference is not None else None
                call = lambda fn=fn, a=a: fn(a)  # noqa: E731
                timing = dict(warmup_ms=budget.warmup_ms, rep_ms=budget.rep_ms, min_reps=budget.min_reps)
                samples = (graph_samples_ms(call, device, **timing) if launch == "graph"
                           else bench(call, device=device, **timing))
                stats = summarize(samples)
                flops = 2 * m * shape.n * shape.k
                rows.append({"config": config_name, "component": shape.component, "n": shape.n, "k": shape.k,
                             "bias": shape.bias, "m": m, "kernel": kernel, "dtype": str(dtype).removeprefix("torch."),
                             "median_us": stats.median_ms * 1e3, "p10_us": stats.p10_ms * 1e3,
                             "p90_us": stats.p90_ms * 1e3, "repeats": stats.repeats, "flops": flops,
                             "tflops": flops / (stats.median_ms * 1e-3) / 1e12,
                             "max_abs_diff_vs_torch": diff if kernel != "torch" else 0.0, "launch": launch,
                             "tile": kernel_at(kernel, shape, m, dtype, device)})
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def _cost_units(shape: GemmShape, m: int) -> float:
    """An interpreted Triton GEMM's cost grows with its programs times their K steps: about N * K per 64 rows."""
    return shape.n * shape.k * -(-m // 64)


def invariant_calls(shapes: list[GemmShape], sweep: Iterable[int], check: Iterable[int], *, budget: Budget,
                    check_shapes: list[GemmShape] = (), check_shape_tokens: Iterable[int] = ()) -> list[tuple[GemmShape, int]]:
    """Every (shape, M) call of the invariant kernel a run will make, counting a timed point as its correctness
    call, one warm-up call and `budget.min_reps` timed ones (what `bench` makes of a call far slower than the
    budget, as the interpreter's are), and a checked shape as its full product, each sampled row alone and
    each M."""
    calls = [(s, m) for s in shapes for m in sweep for _ in range(2 + budget.min_reps)]
    for group, tokens in ((shapes, tuple(sorted(set(check)))), (list(check_shapes), tuple(sorted(set(check_shape_tokens))))):
        if not tokens:
            continue
        rows = _alone_rows(tokens[-1], tokens)
        for s in group:
            calls += [(s, tokens[-1])] + [(s, 1)] * len(rows) + [(s, m) for m in tokens]
    return calls


@torch.inference_mode()
def estimate_seconds(calls: list[tuple[GemmShape, int]], *, dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(estimated seconds of the invariant kernel's calls, seconds of one probe call): the smallest shape timed
    once at one row (after one untimed call), scaled by each call's cost units. The torch calls beside them
    are left out (on a CPU they are thousands of times faster than the interpreter)."""
    if not calls:
        return 0.0, 0.0
    probe = min((s for s, _ in calls), key=lambda s: s.n * s.k)
    ops = make_operands(probe, 1, dtype=dtype, device=device)
    fn = kernel_fn("invariant", ops)
    fn(ops.x)
    started = time.perf_counter()
    fn(ops.x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    unit = seconds / _cost_units(probe, 1)
    return unit * sum(_cost_units(s, m) for s, m in calls), seconds


def _alone_rows(max_tokens: int, tokens: tuple[int, ...], seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    picked = set(range(min(ALONE_SAMPLE_ROWS, max_tokens))) | {m - 1 for m in tokens}
    picked |= set(torch.randint(0, max_tokens, (32,), generator=gen).tolist())
    return sorted(picked)


@torch.inference_mode()
def invariance(shapes: list[GemmShape], tokens: Iterable[int], *, dtype: torch.dtype, device: torch.device,
               kernels: tuple[str, ...] = KERNELS, progress: bool = False, config_name: str = "") -> pd.DataFrame:
    """One row per shape x kernel x M. `alone_*`: sampled rows (0..63, each M's last row, 32 random ones)
    computed alone (M = 1) vs the same rows inside the M-row product; `invariant` is that comparison bitwise
    equal: the M-row product gives each row exactly what the one-row product gives it. `prefix_*` (context):
    all M rows vs the first M rows of the largest product. Equal means the same bit patterns."""
    from tqdm import tqdm

    from models.invariant.probe import bitwise_equal

    tokens = tuple(sorted(set(tokens)))
    max_tokens = tokens[-1]
    rows_alone = _alone_rows(max_tokens, tokens)
    bar = tqdm(total=len(shapes) * len(kernels) * (len(tokens) + len(rows_alone)), unit="gemm", dynamic_ncols=True,
               desc="invariance matmul: rows alone vs inside M", disable=not progress)
    rows = []
    for shape in shapes:
        ops = make_operands(shape, max_tokens, dtype=dtype, device=device, seed=1)
        for kernel in kernels:
            fn = kernel_fn(kernel, ops)
            full = fn(ops.x)
            index = torch.tensor(rows_alone, device=device)
            alone = torch.cat([fn(ops.x[r:r + 1]) for r in rows_alone])  # each a product of one row
            bar.update(len(rows_alone))
            for m in tokens:
                out = fn(ops.x[:m])
                prefix_diff = (out.float() - full[:m].float()).abs()
                keep = index < m
                alone_diff = (out[index[keep]].float() - alone[keep].float()).abs()
                rows_differing = int((alone_diff.amax(dim=1) > 0).sum().item()) if alone_diff.numel() else 0
                prefix_equal = bitwise_equal(out, full[:m])
                alone_equal = bitwise_equal(out[index[keep]], alone[keep])
                rows.append({"config": config_name, "component": shape.component, "n": shape.n, "k": shape.k,
                             "bias": shape.bias, "m": m, "kernel": kernel, "dtype": str(dtype).removeprefix("torch."),
                             "invariant": alone_equal, "prefix_equal": prefix_equal,
                             "prefix_max_abs_diff": prefix_diff.max().item(), "alone_equal": alone_equal,
                             "alone_rows": int(keep.sum().item()), "alone_rows_differing": rows_differing,
                             "alone_max_abs_diff": alone_diff.max().item() if alone_diff.numel() else 0.0})
                bar.update()
    bar.close()
    return pd.DataFrame(rows)

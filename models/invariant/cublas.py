"""cuBLAS(Lt) with split-K off: the switch, and a linear that runs under it.

What `no_split_k()` sets, and why (PyTorch >= 2.10; the GPU runs 2.11; read in the 2.13 source installed
here and in pytorch/pytorch's aten, PR #164766 "Add split-K control to cuBLAS reduced-precision settings"):

1. `torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = (False, False)` and the same for
   `allow_fp16_reduced_precision_reduction`. The tuple is (allow_reduced_precision, allow_splitk)
   (torch/backends/cuda/__init__.py, cuBLASModule._parse_reduction_setting; (True, False) is refused by
   aten/src/ATen/Context.cpp get_reduction_option). aten/src/ATen/cuda/CUDABlas.cpp then sets
   CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = CUBLASLT_REDUCTION_SCHEME_NONE on every cuBLASLt heuristic
   query for bf16 / fp16 (bgemm_internal_cublaslt, which plain gemm also goes through, and gemm_and_bias,
   the bias-epilogue path of addmm / F.linear): no algorithm that reduces partial sums over K (split-K,
   in place or in a workspace) may be returned. (False, True) would still allow split-K with fp32 partials.
2. `torch.backends.cuda.preferred_blas_library("cublaslt")`. The mask exists only on the cuBLASLt path: the
   classic cuBLAS path (gemm_internal_cublas_bfloat16_helper / _half_helper, the default backend on NVIDIA)
   raises "allow_splitk=False requires the cuBLASLt backend". F.linear with a bias at M = 1 does not take
   the bias-epilogue path (aten/src/ATen/native/cuda/Blas.cpp, isInputCompliesAddmmCudaLt wants
   mat1.size(0) > 1): it copies the bias into the output and runs a plain gemm with beta = 1, so without
   this switch a one-token product would go to classic cuBLAS.

Not set, on purpose: CUBLASLT_WORKSPACE_SIZE / CUBLAS_WORKSPACE_CONFIG (the workspace is read once per
process and the same for every M, so it changes which algorithm a shape gets, not whether that depends on
M; it is part of the probe's cache key instead), TORCH_BLAS_PREFER_CUBLASLT (only the initial value of
what item 2 sets), DISABLE_ADDMM_CUDA_LT (also in the cache key). Stream-K has no torch switch at all, and
cuBLASLt may still pick a different non-split kernel per M (tile shape, GEMV-like kernels at M = 1): that is
why nothing here is trusted without the bitwise probe (probe.py, choice.py).

The flags are process-global and read when a GEMM is issued (so a CUDA graph captured inside the context
keeps the kernel chosen then); the context manager restores the caller's values on exit.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

BLAS_ENV = ("TORCH_BLAS_PREFER_CUBLASLT", "CUBLASLT_WORKSPACE_SIZE", "CUBLAS_WORKSPACE_CONFIG", "DISABLE_ADDMM_CUDA_LT")
_depth = 0  # nested entries (a layer inside a layer) set and restore once


def _reduction_state(getter) -> tuple[bool, bool]:
    state = getter()
    return (bool(state), True) if isinstance(state, bool) else (bool(state[0]), bool(state[1]))


def _set_backend(backend) -> None:
    if torch.version.cuda is None:  # CPU builds refuse cuBLASLt; there is no GEMM here for it to steer anyway
        return
    torch.backends.cuda.preferred_blas_library(backend)


@contextmanager
def no_split_k() -> Iterator[None]:
    """bf16 / fp16 GEMMs inside run on cuBLASLt with no reduction over split K (see the module docstring)."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    matmul = torch.backends.cuda.matmul
    bf16 = _reduction_state(torch._C._get_cublas_allow_bf16_reduced_precision_reduction)
    fp16 = _reduction_state(torch._C._get_cublas_allow_fp16_reduced_precision_reduction)
    backend = torch.backends.cuda.preferred_blas_library() if torch.version.cuda is not None else None
    matmul.allow_bf16_reduced_precision_reduction = (False, False)
    matmul.allow_fp16_reduced_precision_reduction = (False, False)
    _set_backend("cublaslt")
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        matmul.allow_bf16_reduced_precision_reduction = bf16
        matmul.allow_fp16_reduced_precision_reduction = fp16
        if backend is not None:
            _set_backend(backend)


@functools.lru_cache(maxsize=1)
def switch_problem() -> str | None:
    """None when this torch takes the (allow_reduced_precision, allow_splitk) tuple, else why not."""
    matmul = torch.backends.cuda.matmul
    try:
        before = _reduction_state(torch._C._get_cublas_allow_bf16_reduced_precision_reduction)
        matmul.allow_bf16_reduced_precision_reduction = (False, False)
        after = _reduction_state(torch._C._get_cublas_allow_bf16_reduced_precision_reduction)
        matmul.allow_bf16_reduced_precision_reduction = before
    except (TypeError, RuntimeError, AttributeError) as exc:
        return f"torch {torch.__version__} has no split-K switch (needs >= 2.10): {exc}"
    if after != (False, False):
        return f"torch {torch.__version__} ignored allow_splitk=False (read back {after})"
    return None


def cublas_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear on cuBLASLt with split-K off. Invariant only where the probe says so for this shape."""
    with no_split_k():
        return F.linear(x, weight, bias)


def cublaslt_version() -> str:
    """cuBLASLt's version as the loaded library reports it (cublasLtGetVersion), else the pip package's,
    else 'unknown': an update of the library may change which kernel a shape gets."""
    path = _loaded_library("libcublasLt")
    if path:
        try:
            lib = ctypes.CDLL(path)
            lib.cublasLtGetVersion.restype = ctypes.c_size_t
            return str(lib.cublasLtGetVersion())
        except (OSError, AttributeError):
            pass
    for package in ("nvidia-cublas", "nvidia-cublas-cu13", "nvidia-cublas-cu12"):
        try:
            return f"{package} {importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _loaded_library(stem: str) -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if "/" in line else ""
                if os.path.basename(path).startswith(stem + ".so"):
                    return path
    except OSError:
        return None
    return None


def blas_environment() -> dict[str, str]:
    """The environment variables that change which cuBLAS(Lt) kernel a shape gets (part of the cache key)."""
    return {name: os.environ[name] for name in BLAS_ENV if name in os.environ}


def blas_flags() -> dict[str, object]:
    """torch's process-wide BLAS switches as they are now (part of the cache key): cuBLAS's default kernel
    for a shape depends on them, so a `default` verdict holds only while they are what they were when probed."""
    flags = {"bf16_reduced_precision_reduction": list(_reduction_state(
                 torch._C._get_cublas_allow_bf16_reduced_precision_reduction)),
             "fp16_reduced_precision_reduction": list(_reduction_state(
                 torch._C._get_cublas_allow_fp16_reduced_precision_reduction)),
             "allow_tf32": bool(torch._C._get_cublas_allow_tf32())}
    if torch.version.cuda is not None:
        flags["preferred_blas_library"] = str(torch.backends.cuda.preferred_blas_library())
    return flags

"""Sanity flags on a layer's GEMMs: things that make a GEMM slow before tiles and waves matter.

| flag | fires when | threshold |
| --- | --- | --- |
| `non_tensor_core` | the GEMM's kernel is a GEMV, an SGEMM / SIMT / DGEMM kernel (CUDA cores), or the GEMM is fp32 and its kernel's name carries no TF32 marker (`tf32`, `xf32`): fp32 without TF32 runs on CUDA cores at a small fraction of the tensor-core peak | any such kernel |
| `misaligned` | m, n or k (per matrix, for a batched GEMM) is not a multiple of 16 bytes of the dtype: 8 elements in bf16 / fp16, 4 in fp32, where cuBLAS leaves its fast tensor-core kernels (paper III-B; the 128-byte rule of VI-B is profiler/advisor/rules.py's) | ALIGNMENT_BYTES |
| `extra_kernels` | a GEMM step launches kernels that are neither a GEMM nor an expected helper (profiler/gemm_detect.py: the cuBLAS memset, split-K's reduction, the bias-gradient reduction), e.g. a copy making an operand contiguous | more than EXTRA_KERNELS_ALLOWED per step |

The TF32 test reads kernel names, so it is a heuristic: a kernel family that runs TF32 without saying so in
its name would be flagged; the detail names the kernel so a reader can judge. Pure: DataFrames in and out.
"""

from __future__ import annotations

import re

import pandas as pd

from models import DTYPE_BYTES
from models.gemms import GEMM_COMPONENTS

from .kernel_names import NO_TENSOR_CORES, input_precision, parse_kernel_name

ALIGNMENT_BYTES = 16  # cuBLAS's tensor-core kernels need every leading dimension 16-byte aligned
EXTRA_KERNELS_ALLOWED = 0  # kernels per step in a GEMM step that are neither GEMMs nor expected helpers
TF32_MARKER = re.compile(r"tf32|xf32", re.I)
COLUMNS = ["pass", "component", "role", "flag", "detail", "threshold"]


def non_tensor_core_reason(kernel: str, dtype: str) -> str | None:
    """Why this GEMM kernel runs on CUDA cores, or None when nothing says it does."""
    if (m := NO_TENSOR_CORES.search(kernel)) is not None:
        return f"{m.group(0)} kernel: CUDA cores, not tensor cores"
    precision = input_precision(parse_kernel_name(kernel))
    fp32 = dtype == "float32" or precision == "fp32"
    if fp32 and not TF32_MARKER.search(kernel):
        return "fp32 GEMM on a kernel whose name carries no TF32 marker: CUDA-core FFMA (allow TF32?)"
    return None


def misaligned_dims(m: int, n: int, k: int, dtype: str) -> list[str]:
    """The dims of a GEMM that are not a multiple of ALIGNMENT_BYTES of its dtype."""
    multiple = ALIGNMENT_BYTES // DTYPE_BYTES[dtype]
    return [f"{name}={value}" for name, value in (("m", m), ("n", n), ("k", k)) if int(value) % multiple]


def gemm_flags(explained: pd.DataFrame, classified: pd.DataFrame, *, dtype: str) -> pd.DataFrame:
    """All flags, one row each. `explained`: profiler.gemm_explain.explain_gemms; `classified`:
    profiler.gemm_detect.classify of the same activities; `dtype`: the layer's (config) dtype."""
    rows = []
    gemms = explained[explained["component"].isin(GEMM_COMPONENTS)] if len(explained) else explained
    for r in gemms.to_dict("records"):
        key = {"pass": r["pass"], "component": r["component"], "role": r["role"]}
        reason = non_tensor_core_reason(r["kernel"], dtype)
        if reason:
            rows.append({**key, "flag": "non_tensor_core", "detail": f"{reason}: {r['kernel'][:120]}",
                         "threshold": "any"})
        if pd.notna(r.get("m")) and pd.notna(r.get("n")) and pd.notna(r.get("k")):
            bad = misaligned_dims(r["m"], r["n"], r["k"], dtype)
            if bad:
                rows.append({**key, "flag": "misaligned", "threshold": f"{ALIGNMENT_BYTES} bytes",
                             "detail": f"{', '.join(bad)} not a multiple of {ALIGNMENT_BYTES // DTYPE_BYTES[dtype]} "
                                       f"{dtype} elements ({ALIGNMENT_BYTES} bytes)"})
    extra = classified[classified["issue"] == "unexpected_kernel_in_gemm_step"]
    if len(extra):
        steps = max(1, classified["step"].nunique())
        step_of = extra["region"].where(extra["region"].isin(GEMM_COMPONENTS), extra["component"])
        for (pas, step_name), group in extra.assign(gemm_step_name=step_of).groupby(["pass", "gemm_step_name"]):
            per_step = len(group) / steps
            if per_step <= EXTRA_KERNELS_ALLOWED:
                continue
            names = group.groupby("name")["dur_us"].agg(["size", "sum"]).sort_values("sum", ascending=False)
            listed = "; ".join(f"{n[:60]} x{c / steps:g} ({t / steps:.1f} us)" for n, (c, t) in names.iterrows())
            rows.append({"pass": pas, "component": step_name, "role": ",".join(sorted(set(group["role"]) - {""})),
                         "flag": "extra_kernels", "threshold": f"> {EXTRA_KERNELS_ALLOWED} per step",
                         "detail": f"{per_step:g} kernels per step besides the GEMM: {listed}"})
    return pd.DataFrame(rows, columns=COLUMNS)

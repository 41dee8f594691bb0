"""Is this kernel a GEMM? Two independent signals, and every place they disagree with the attribution.

Attribution (profiler/attribution.py) never reads kernel names: a kernel's component comes from the layer
region and the aten op that launched it. Here the two signals are read on their own:

- the op signal: the launching aten op (mm, addmm, bmm, baddbmm, linear, matmul: a GEMM; the scaled-dot-
  product-attention ops: fused attention, which runs its GEMMs inside one kernel);
- the kernel signal: the kernel's name (Hopper cuBLASLt's `nvjet_*`, `sm90_xmma_gemm*`, CUTLASS, cuBLAS
  `*gemm*` and `gemv*`: a GEMM; `flash_fwd` / `flash_bwd`, `fmha`, efficient / cuDNN attention: fused
  attention; `Memset`, cuBLAS's split-K reduction, copies, reductions: named as such).

Each kernel is then checked against its component, and against the region it ran in (attribution moves a
GEMM step's non-GEMM launches, such as a bias-gradient reduction, to `residual_bias`; the region still
says which GEMM step launched them):

| issue | when |
| --- | --- |
| `gemm_kernel_outside_gemm` | a GEMM-named kernel attributed to a non-GEMM, non-attention component |
| `attention_kernel_outside_attention` | a flash / fmha kernel attributed to anything but fused attention |
| `gemm_op_outside_gemm` | a kernel launched by a GEMM aten op, attributed to a non-GEMM component |
| `unexpected_kernel_in_gemm_step` | a kernel of a GEMM step that is neither a GEMM kernel nor an expected helper (`EXPECTED_HELPERS`: the cuBLAS memset, split-K's reduction, the bias-gradient reduction) |
| `op_kernel_mismatch` | the two signals contradict each other (a GEMM op launching a non-GEMM kernel, a GEMM kernel launched by a non-GEMM op or by no aten op at all) |

Fused-attention components may run GEMM kernels (PyTorch's math SDPA path is bmm + softmax): allowed.
Pure: activities (profiler.attribution.attribute_detailed) in, DataFrames out.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from models.gemms import GEMM_COMPONENTS

from .attribution import FUSED_ATTENTION

GEMM_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
                      "aten::_addmm_activation", "aten::addbmm", "aten::_scaled_mm", "aten::mv", "aten::addmv",
                      "aten::dot", "aten::_int_mm"})
ATTENTION_OPS = frozenset({
    "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_backward", "aten::_flash_attention_forward",
    "aten::_flash_attention_backward", "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_efficient_attention_backward", "aten::_efficient_attention_forward",
    "aten::_efficient_attention_backward", "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_cudnn_attention_backward", "aten::_scaled_dot_product_attention_math",
})
# kernel-name patterns, first match wins: attention before GEMM (flash kernels' names carry cutlass types)
KERNEL_PATTERNS = (
    ("attention", re.compile(r"flash_fwd|flash_bwd|flash::|fmha|efficient_attention|attention_kernel|"
                             r"cudnn.*(sdpa|mha|attention)", re.I)),
    ("split_k_reduce", re.compile(r"splitkreduce|split_k_reduce|splitk_reduce", re.I)),
    ("gemm", re.compile(r"nvjet|xmma_gemm|gemm|gemv|cutlass|cublas|triton_tem_\w*mm", re.I)),
    ("memset", re.compile(r"^Memset|memset", re.I)),
    ("copy", re.compile(r"^Memcpy|direct_copy_kernel|copy_kernel|CatArrayBatchedCopy", re.I)),
    ("reduction", re.compile(r"reduce_kernel|Reduce", re.I)),
)
GEMM_STEP_KERNELS = ("gemm",)
# a GEMM step's kernels that are not GEMMs and are expected: (kernel class, launching op or None = any)
EXPECTED_HELPERS = (
    ("memset", None),  # cuBLAS zeroes a workspace or the output before some kernels
    ("split_k_reduce", None),  # split-K's second pass: sums the partial products
    ("reduction", "aten::sum"),  # the bias gradient: the output gradient summed over the tokens
)
ISSUES = ("gemm_kernel_outside_gemm", "attention_kernel_outside_attention", "gemm_op_outside_gemm",
          "unexpected_kernel_in_gemm_step", "op_kernel_mismatch")


def kernel_class(name: str) -> str:
    """gemm | attention | split_k_reduce | memset | copy | reduction | other, from the kernel's name alone."""
    for label, pattern in KERNEL_PATTERNS:
        if pattern.search(str(name)):
            return label
    return "other"


def op_class(op) -> str:
    """gemm | attention | other | none (no aten op launched it: a Triton kernel, a lost launch)."""
    if not isinstance(op, str) or not op:
        return "none"
    if op in GEMM_OPS:
        return "gemm"
    if op in ATTENTION_OPS:
        return "attention"
    return "other"


def _component_class(component: pd.Series) -> np.ndarray:
    return np.select([component.isin(GEMM_COMPONENTS), component.isin(FUSED_ATTENTION),
                      component == "unattributed", component == "communication"],
                     ["gemm", "attention", "unattributed", "communication"], "other")


def _expected_helper(kclass: str, op) -> bool:
    return any(kclass == k and (o is None or o == op) for k, o in EXPECTED_HELPERS)


def _issue(kclass: str, oclass: str, cclass: str, gemm_step: bool, op) -> tuple[str, str]:
    if cclass == "communication":
        return "", ""
    if kclass == "attention" and cclass != "attention":
        return "attention_kernel_outside_attention", f"a fused-attention kernel attributed to a {cclass} component"
    if kclass == "gemm" and cclass in ("other", "unattributed"):
        return "gemm_kernel_outside_gemm", f"a GEMM-named kernel attributed to a {cclass} component"
    if oclass == "gemm" and cclass in ("other", "unattributed"):
        return "gemm_op_outside_gemm", f"launched by {op}, attributed to a {cclass} component"
    if gemm_step and kclass not in GEMM_STEP_KERNELS and not _expected_helper(kclass, op):
        return "unexpected_kernel_in_gemm_step", f"a {kclass} kernel launched by {op or 'no aten op'} in a GEMM step"
    if oclass == "gemm" and kclass not in GEMM_STEP_KERNELS and not _expected_helper(kclass, op):
        return "op_kernel_mismatch", f"{op} launched a {kclass} kernel"
    if kclass == "gemm" and oclass in ("other", "none") and cclass != "attention":
        return "op_kernel_mismatch", f"a GEMM kernel launched by {op if oclass == 'other' else 'no aten op'}"
    return "", ""


def on_gpu(activities: pd.DataFrame) -> bool:
    """Whether the activities are GPU kernels (a launch grid recorded); a CPU trace's are host ops."""
    return "grid" in activities and bool(activities["grid"].notna().any())


def classify(activities: pd.DataFrame) -> pd.DataFrame:
    """`activities` plus op_class, kernel_class, component_class, gemm_step (the kernel ran in a GEMM
    component or a GEMM region), expected_helper, issue ('' when the signals agree) and its detail.
    A CPU trace's activities are host ops, with no kernel name to read: kernel_class "host_op", no issue."""
    out = activities.copy()
    if not on_gpu(out):
        out["kernel_class"], out["op_class"] = "host_op", [op_class(o) for o in out["op"]]
        out["component_class"] = _component_class(out["component"])
        out["gemm_step"], out["expected_helper"], out["issue"], out["detail"] = False, False, "", ""
        return out
    out["kernel_class"] = [kernel_class(n) for n in out["name"]]
    out["op_class"] = [op_class(o) for o in out["op"]]
    out["component_class"] = _component_class(out["component"])
    region = out["region"] if "region" in out else pd.Series(None, index=out.index)
    out["gemm_step"] = (out["component_class"] == "gemm") | region.isin(GEMM_COMPONENTS)
    out["expected_helper"] = [_expected_helper(k, o) for k, o in zip(out["kernel_class"], out["op"])]
    found = [_issue(k, o, c, g, op) for k, o, c, g, op in
             zip(out["kernel_class"], out["op_class"], out["component_class"], out["gemm_step"], out["op"])]
    out["issue"] = [f[0] for f in found]
    out["detail"] = [f[1] for f in found]
    return out


def _steps(activities: pd.DataFrame) -> int:
    return max(1, activities["step"].nunique())


def disagreements(classified: pd.DataFrame) -> pd.DataFrame:
    """One row per (pass, component, role, region, op, kernel, issue) where a signal disagrees: how many such
    kernels per step and their time per step (mean over the measured steps)."""
    keys = ["pass", "component", "role", "region", "op", "name", "op_class", "kernel_class", "issue", "detail"]
    bad = classified[classified["issue"] != ""]
    if bad.empty:
        return pd.DataFrame(columns=keys + ["kernels_per_step", "time_us"])
    steps = _steps(classified)
    table = bad.fillna({"region": "", "op": ""}).groupby(keys, dropna=False).agg(
        kernels=("dur_us", "size"), total_us=("dur_us", "sum")).reset_index()
    table["kernels_per_step"] = table.pop("kernels") / steps
    table["time_us"] = table.pop("total_us") / steps
    return table.sort_values("time_us", ascending=False).reset_index(drop=True)


def detection_summary(classified: pd.DataFrame) -> pd.DataFrame:
    """Per (pass, component, role): kernels per step by what each signal says, the GEMM kernels' share of the
    component's time, and how many kernels per step disagree."""
    steps = _steps(classified)
    df = classified.assign(
        gemm_kernel=classified["kernel_class"] == "gemm",
        attention_kernel=classified["kernel_class"] == "attention",
        gemm_op=classified["op_class"] == "gemm",
        helper=classified["expected_helper"],
        disagree=classified["issue"] != "",
    )
    df["gemm_kernel_us"] = df["dur_us"].where(df["gemm_kernel"] | df["attention_kernel"], 0.0)
    g = df.groupby(["pass", "component", "role"], sort=False)
    summary = pd.DataFrame({
        "kind": g["kind"].first(),
        "kernels_per_step": g.size() / steps,
        "gemm_kernels_per_step": g["gemm_kernel"].sum() / steps,
        "attention_kernels_per_step": g["attention_kernel"].sum() / steps,
        "gemm_op_kernels_per_step": g["gemm_op"].sum() / steps,
        "helper_kernels_per_step": g["helper"].sum() / steps,
        "time_us": g["dur_us"].sum() / steps,
        "gemm_kernel_time_pct": 100 * g["gemm_kernel_us"].sum() / g["dur_us"].sum().where(lambda s: s > 0),
        "disagreements_per_step": g["disagree"].sum() / steps,
    }).reset_index()
    summary["agree"] = summary["disagreements_per_step"] == 0
    return summary

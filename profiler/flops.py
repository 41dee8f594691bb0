"""FLOPs per component in stated conventions, and the same FLOPs counted by torch.utils.flop_counter on the
ops that actually run.

Conventions (every figure and column says which one it uses):
- model: the paper's Table II. Every GEMM is 2mnk; attention covers the full s x s square; a backward pass
  is twice its forward. The layer's TFLOP/s (the paper's Figure 1) uses this one.
- causal: `model` with the attention's s x s terms halved: the useful work under a causal mask.
- executed: what the kernels do. GEMMs 2mnk; the eager path's score and attention-over-values BMMs compute
  the full square (the mask is applied after); a fused causal kernel skips the blocks above the diagonal
  (half the square; blocks on the diagonal are computed whole, so this is exact to within block/s) and its
  backward recomputes the scores (2.5x its forward). Per-component TFLOP/s and % of peak use this one.
- counted: what torch.utils.flop_counter counts for the ops that ran: `executed` without the causal
  saving (torch counts the full square), i.e. 2.5x for a fused backward and 2x for PyTorch's math path.

The FLOP check compares our `counted` formulas with torch's count of the real layer run on the real device
(on a CPU, torch has no formula for its CPU flash kernel; we register torch's own SDPA formulas for it, so
the count is still torch's arithmetic on the op that ran). Which attention op ran decides the formula.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from models import ModelConfig, flash_attention_flops, layer_gemms
from models.layer import build_layer, random_input

CONVENTIONS = {
    "model": "paper Table II: GEMMs 2mnk, attention over the full s x s square, backward = 2x forward",
    "causal": "model FLOPs with the attention's s x s terms halved (the useful work under the causal mask)",
    "executed": "what the kernels do: GEMMs 2mnk, eager attention BMMs over the full square, a fused causal "
                "kernel half the square and 2.5x that in its backward (it recomputes the scores)",
    "counted": "torch.utils.flop_counter on the ops that ran: full s x s square; a fused attention's backward "
               "recomputes the scores (2.5x its forward), the math path's is 2x",
}
FUSED_BACKWARD_FACTOR = 2.5  # dQ, dK, dV plus the recomputed scores and dP: 5 s x s products vs 2 forward
GEMM_BACKWARD_ROLES = {"linear": ("dgrad", "wgrad"), "bmm": ("dgrad_lhs", "dgrad_rhs")}
FUSED_OPS = ("flash_attention", "efficient_attention", "cudnn_attention")

MODULE_OF_COMPONENT = {
    "qkv_transform": "layer.attention.qkv_transform", "out_projection": "layer.attention.out_projection",
    "mlp_up": "layer.mlp.mlp_up", "mlp_gate": "layer.mlp.mlp_gate", "mlp_down": "layer.mlp.mlp_down",
    "logits": "logit_layer.logits",
}

Key = tuple[str, str, str]  # (pass, component, role)


def attention_component(cfg: ModelConfig) -> str | None:
    return None if cfg.attention == "eager" else f"{cfg.attention}_attention"


def component_flops(cfg: ModelConfig, *, include_logits: bool, backward: bool, convention: str = "model",
                    fused_backward: bool = True) -> dict[Key, int]:
    """(pass, component, role) -> FLOPs. A backward GEMM row is one product of the forward's size (its input
    gradient or its weight gradient). `fused_backward`: the fused attention's backward recomputes the scores
    (True for flash / efficient / cuDNN; False for the math path) — only the `counted` convention sees it."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}")
    flops: dict[Key, int] = {}
    for g in layer_gemms(cfg, include_logits=include_logits):
        flops[("forward", g.component, "fprop")] = g.flops
        if backward:
            for role in GEMM_BACKWARD_ROLES["bmm" if g.batch > 1 else "linear"]:
                flops[("backward", g.component, role)] = g.flops
    attention = attention_component(cfg)
    if attention:
        full = flash_attention_flops(cfg)
        # the math path (a CPU, or SDPA choosing it) computes the full square, like the eager BMMs
        forward = full // 2 if (convention == "causal" or (convention == "executed" and fused_backward)) else full
        flops[("forward", attention, "")] = forward
        if backward:
            factor = FUSED_BACKWARD_FACTOR if (convention in ("counted", "executed") and fused_backward) else 2
            flops[("backward", attention, "")] = int(factor * forward)
    if convention == "causal" and cfg.attention == "eager":
        for key in list(flops):
            if key[1] in ("attention_score", "attention_over_values"):
                flops[key] //= 2
    return flops


def flops_for(table: dict[Key, int], pass_: str, component: str, role: str) -> int:
    """A row's FLOPs; a row without a role (a CPU trace sees a backward node, not its two GEMMs) gets the sum
    over the roles of its pass and component."""
    if (pass_, component, role) in table:
        return table[(pass_, component, role)]
    if role == "":
        return sum(f for (p, c, _), f in table.items() if p == pass_ and c == component)
    return 0


def _cpu_sdpa_mapping() -> dict:
    """torch counts the CUDA SDPA kernels but not its CPU flash kernel; map the CPU ops (same argument order)
    to the formulas torch registered for the CUDA ones, already shape-wrapped (hence marked raw)."""
    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def registered(op):
        formula = flop_counter.flop_registry[op]

        def count(*args, **kwargs):
            return formula(*args, **kwargs)
        count._get_raw = True
        return count
    return {aten._scaled_dot_product_flash_attention_for_cpu:
            registered(aten._scaled_dot_product_flash_attention),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
            registered(aten._scaled_dot_product_flash_attention_backward)}


def counted_flops(cfg: ModelConfig, *, include_logits: bool, backward: bool, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> dict:
    """FLOPs counted by torch.utils.flop_counter on the real layer, run once on `device` as profiled."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from contextlib import nullcontext

    model = build_layer(cfg, include_logits=include_logits, device=device, dtype=dtype).train()
    x = random_input(cfg, device=device, dtype=dtype, requires_grad=backward)
    def pinned():
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION) if cfg.attention == "flash" else nullcontext()

    with pinned(), FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as forward_counter:
        out = model(x)
    by_module = forward_counter.get_flop_counts()
    counted = {comp: sum(by_module.get(f"LayerStack.{path}", {}).values())
               for comp, path in MODULE_OF_COMPONENT.items() if f"LayerStack.{path}" in by_module}
    counted["attention"] = sum(by_module.get("LayerStack.layer.attention", {}).values()) - \
        counted.get("qkv_transform", 0) - counted.get("out_projection", 0)
    counted["forward_total"] = sum(by_module.get("Global", {}).values())
    ops = [str(op) for op in by_module.get("Global", {})]
    if backward:
        with pinned(), FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as backward_counter:
            out.backward(torch.randn_like(out))
        global_backward = backward_counter.get_flop_counts().get("Global", {})
        counted["backward_total"] = sum(global_backward.values())
        ops += [str(op) for op in global_backward]
    counted["attention_ops"] = sorted({op for op in ops if "attention" in op})
    del model, x, out
    return counted


def ran_fused_attention(counted: dict) -> bool:
    """Whether a fused attention kernel (flash, memory-efficient, cuDNN) ran, rather than SDPA's math path
    (decomposed into bmm's) or eager attention: it decides the attention's backward FLOPs."""
    return any(any(f in op for f in FUSED_OPS) for op in counted.get("attention_ops", []))


def check_rows(cfg: ModelConfig, counted: dict, *, include_logits: bool, backward: bool) -> list[dict]:
    """Formula (counted convention, for the attention op that ran) vs torch's count, per row."""
    fused = ran_fused_attention(counted)
    formula = component_flops(cfg, include_logits=include_logits, backward=backward, convention="counted",
                              fused_backward=fused)
    rows = []
    for comp in MODULE_OF_COMPONENT:
        if ("forward", comp, "fprop") in formula:
            rows.append({"what": comp, "formula": formula[("forward", comp, "fprop")], "counted": counted.get(comp, 0)})
    attention = sum(f for (p, c, _), f in formula.items()
                    if p == "forward" and c in ("attention_score", "attention_over_values", "flash_attention", "sdpa_attention"))
    ran = ", ".join(counted.get("attention_ops", [])) or ("bmm (eager)" if cfg.attention == "eager" else "math path bmm")
    rows.append({"what": f"attention ({ran})", "formula": attention, "counted": counted["attention"]})
    rows.append({"what": "forward total", "formula": sum(f for (p, _, _), f in formula.items() if p == "forward"),
                 "counted": counted["forward_total"]})
    if backward:
        rows.append({"what": "backward total" + (" (fused attention recomputes: 2.5x)" if fused else ""),
                     "formula": sum(f for (p, _, _), f in formula.items() if p == "backward"),
                     "counted": counted["backward_total"]})
    for r in rows:
        r["match"] = r["formula"] == r["counted"]
    return rows

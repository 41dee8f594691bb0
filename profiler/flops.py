"""FLOPs per component from the config's shapes, and the same FLOPs counted by torch.utils.flop_counter.

The counted figures come from running the real layer on the meta device (no memory, no compute), so the
check works for any size on any machine.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import ModelConfig, flash_attention_flops, layer_gemms
from models.layer import build_layer, random_input

BACKWARD_FACTOR = 2  # every GEMM's backward is two GEMMs of the forward's size (input and weight grads)

MODULE_OF_COMPONENT = {
    "qkv_transform": "layer.attention.qkv_transform", "out_projection": "layer.attention.out_projection",
    "mlp_up": "layer.mlp.mlp_up", "mlp_gate": "layer.mlp.mlp_gate", "mlp_down": "layer.mlp.mlp_down",
    "logits": "logit_layer.logits",
}


def component_flops(cfg: ModelConfig, *, include_logits: bool, backward: bool) -> dict[tuple[str, str], int]:
    """(pass, component) -> FLOPs from Table II shapes."""
    flops = {("forward", g.component): g.flops for g in layer_gemms(cfg, include_logits=include_logits)}
    if cfg.attention != "eager":
        flops[("forward", "flash_attention")] = flash_attention_flops(cfg)
    if backward:
        flops.update({("backward", comp): BACKWARD_FACTOR * f for (_, comp), f in list(flops.items())})
    return flops


def counted_flops(cfg: ModelConfig, *, include_logits: bool, backward: bool) -> dict[str, int]:
    """FLOPs counted by torch.utils.flop_counter on the real layer (meta device)."""
    model = build_layer(cfg, include_logits=include_logits, device="meta").train()
    x = random_input(cfg, device="meta", requires_grad=backward)
    with FlopCounterMode(display=False) as forward_counter:
        out = model(x)
    by_module = forward_counter.get_flop_counts()
    counted = {comp: sum(by_module.get(f"LayerStack.{path}", {}).values())
               for comp, path in MODULE_OF_COMPONENT.items() if f"LayerStack.{path}" in by_module}
    counted["attention"] = sum(by_module.get("LayerStack.layer.attention", {}).values()) - \
        counted.get("qkv_transform", 0) - counted.get("out_projection", 0)
    counted["forward_total"] = sum(by_module.get("Global", {}).values())
    if backward:
        with FlopCounterMode(display=False) as backward_counter:
            out.backward(torch.ones_like(out))
        counted["backward_total"] = sum(backward_counter.get_flop_counts().get("Global", {}).values())
    return counted


def check_flops(cfg: ModelConfig, *, include_logits: bool, backward: bool) -> dict:
    """Formula vs counted, per GEMM module, for the attention block and for whole passes."""
    formula = component_flops(cfg, include_logits=include_logits, backward=backward)
    counted = counted_flops(cfg, include_logits=include_logits, backward=backward)
    rows = []
    for comp in MODULE_OF_COMPONENT:
        if ("forward", comp) in formula:
            rows.append({"what": comp, "formula": formula[("forward", comp)], "counted": counted.get(comp, 0)})
    attention = sum(formula.get(("forward", c), 0) for c in ("attention_score", "attention_over_values", "flash_attention"))
    rows.append({"what": "attention (score + over values, or fused)", "formula": attention, "counted": counted["attention"]})
    forward_total = sum(f for (p, _), f in formula.items() if p == "forward")
    rows.append({"what": "forward total", "formula": forward_total, "counted": counted["forward_total"]})
    if backward:
        backward_total = sum(f for (p, _), f in formula.items() if p == "backward")
        rows.append({"what": "backward total", "formula": backward_total, "counted": counted["backward_total"]})
    for r in rows:
        r["match"] = r["formula"] == r["counted"]
    return {"all_match": all(r["match"] for r in rows), "rows": rows}

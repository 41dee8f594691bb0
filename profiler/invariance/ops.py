"""Each op of the layer on its own, fed the same input alone and inside a batch: which ops are invariant as
they are, and which break it?

The forward's step comparison (tape.py) finds the first step whose output differs; every step after it sees a
different input, so it cannot tell whether a later op (the final norm, the softmax) would have kept
invariance. Here every op gets bitwise the same input rows for the prompt in both runs (random normals, the
prompt's rows placed at `position` among other rows), so a difference can only come from the op itself.
The ops are the stack's own modules and functions: the default kernels for the default stack, the
batch-invariant ones for a switched stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.kernels import apply_rotary_in_place, causal_softmax, residual_add


@dataclass(frozen=True)
class OpCase:
    name: str  # the layer's region name for the op
    shape: Callable[[int], tuple[int, ...]]  # input shape for `batch` prompts, batch-major
    fn: Callable[[torch.Tensor], torch.Tensor]


def op_cases(stack: nn.Module) -> list[OpCase]:
    layer = stack.layer
    cfg = layer.cfg
    s, h, heads, d = cfg.seq_length, cfg.hidden_size, cfg.heads_per_gpu, cfg.head_dim
    attention, mlp = layer.attention, layer.mlp
    ffn = cfg.ffn_per_gpu

    def packed(b):  # the QKV GEMM's output layout: (b*s, heads*3*d)
        return (b * s, 3 * cfg.hidden_per_gpu)

    def rotary(x):
        cos, sin = attention._rotary(s, x.device, x.dtype)
        return apply_rotary_in_place(x.clone(), cos, sin, heads)

    def qkv_views(x):
        qkv = x.view(-1, s, heads, 3, d)
        return (qkv[..., i, :].transpose(1, 2) for i in range(3))

    def fused(x):
        q, k, v = qkv_views(x)
        return attention._fused(q, k, v, 0.0)

    cases = [OpCase("norm", lambda b: (b, s, h), layer.input_norm),
             OpCase("qkv_transform", lambda b: (b * s, h), attention.qkv_transform)]
    if cfg.rotary_dims:
        cases.append(OpCase("rotary", packed, rotary))
    if cfg.attention == "eager":
        def scores(x):  # x: (b*heads, s, 2d) holds q and k side by side
            q, k = x[..., :d].contiguous(), x[..., d:].contiguous()
            return _eager_step(attention, "attention_score", q, k)

        cases += [OpCase("attention_score", lambda b: (b * heads, s, 2 * d), scores),
                  OpCase("softmax", lambda b: (b * heads, s, s), causal_softmax),
                  OpCase("attention_over_values", lambda b: (b * heads, s, s + d),
                         lambda x: _eager_step(attention, "attention_over_values", torch.softmax(x[..., :s], -1),
                                               x[..., s:].contiguous()))]
    else:
        cases.append(OpCase(f"{cfg.attention}_attention", packed, fused))
    cases += [OpCase("out_projection", lambda b: (b, s, cfg.hidden_per_gpu), attention.out_projection),
              OpCase("mlp_up", lambda b: (b, s, h), mlp.mlp_up)]
    if mlp.mlp_gate is not None:
        cases += [OpCase("mlp_gate", lambda b: (b, s, h), mlp.mlp_gate),
                  OpCase("activation", lambda b: (b, s, ffn), lambda x: F.silu(x) * x)]
    else:
        cases.append(OpCase("activation", lambda b: (b, s, ffn), F.gelu))
    cases += [OpCase("mlp_down", lambda b: (b, s, ffn), mlp.mlp_down),
              OpCase("residual", lambda b: (b, s, h), lambda x: residual_add(x, 0.5 * x, 0.25 * x))]
    if stack.logit_layer is not None:
        cases += [OpCase("final_norm", lambda b: (b, s, h), stack.logit_layer.final_norm),
                  OpCase("logits", lambda b: (b, s, h), stack.logit_layer.logits)]
    return cases


def _eager_step(attention, step: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The eager attention's two BMMs as the (default or invariant) attention runs them."""
    from models.invariant import InvariantAttention, invariant_bmm

    invariant = isinstance(attention, InvariantAttention)
    if step == "attention_score":
        k = b.transpose(1, 2)
        if invariant:
            return invariant_bmm(a, k, alpha=attention.scale)
        return torch.baddbmm(a.new_empty(a.shape[0], a.shape[1], k.shape[2]), a, k, beta=0.0, alpha=attention.scale)
    return invariant_bmm(a, b) if invariant else torch.bmm(a, b)


@torch.inference_mode()
def check_ops(stacks: dict[str, nn.Module], batches, positions, *, device, dtype, config_name: str,
              seed: int = 0) -> pd.DataFrame:
    """One row per kernel set x op x batch x position: the op's output for the prompt, alone vs in the batch."""
    rows = []
    for kernels, stack in stacks.items():
        for case in op_cases(stack):
            gen = torch.Generator().manual_seed(seed)
            alone_in = torch.randn(case.shape(1), generator=gen).to(device=device, dtype=dtype)
            alone = case.fn(alone_in)
            for batch in batches:
                others = torch.randn(case.shape(batch - 1), generator=gen).to(device=device, dtype=dtype)
                for position in positions:
                    index = 0 if position == "first" else batch - 1
                    chunks = list(others.reshape(batch - 1, -1).unbind(0))
                    chunks.insert(index, alone_in.reshape(-1))
                    out = case.fn(torch.stack(chunks).reshape(case.shape(batch)))
                    mine = out.reshape(batch, -1)[index].reshape(alone.shape)
                    equal = bool(torch.equal(mine, alone))
                    rows.append({"config": config_name, "kernels": kernels, "op": case.name, "batch": batch,
                                 "position": position, "equal": equal,
                                 "max_abs_diff": 0.0 if equal else (mine.float() - alone.float()).abs().max().item()})
    return pd.DataFrame(rows)

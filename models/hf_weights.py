"""Copy weights between transformers' GPT-NeoX / Llama modules and our layer (names differ, layout does not)."""

from __future__ import annotations

import torch
from torch import nn

from .layer import MLP, TransformerLayer

# ours -> transformers GPTNeoXLayer
GPT_NEOX_LAYER_NAMES = {
    "input_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "attention.qkv_transform": "attention.query_key_value",
    "attention.out_projection": "attention.dense",
    "mlp.mlp_up": "mlp.dense_h_to_4h",
    "mlp.mlp_down": "mlp.dense_4h_to_h",
}

# ours -> transformers LlamaMLP
LLAMA_MLP_NAMES = {"mlp_gate": "gate_proj", "mlp_up": "up_proj", "mlp_down": "down_proj"}


def _copy(ours: nn.Module, theirs: nn.Module, names: dict[str, str]) -> None:
    their_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, param in ours.named_parameters():
            module, _, leaf = name.rpartition(".")
            source = their_params[f"{names[module]}.{leaf}"]
            if source.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(param.shape)} != {tuple(source.shape)} in the source")
            param.copy_(source)


def load_from_gpt_neox_layer(layer: TransformerLayer, hf_layer: nn.Module) -> TransformerLayer:
    _copy(layer, hf_layer, GPT_NEOX_LAYER_NAMES)
    return layer


def load_from_llama_mlp(mlp: MLP, hf_mlp: nn.Module) -> MLP:
    _copy(mlp, hf_mlp, LLAMA_MLP_NAMES)
    return mlp

"""Parameter counts of a whole model, from its config alone.

GPT-NeoX layer: two norms, QKV (3h^2 + 3h), output projection (h^2 + h), MLP (2hf + f + h for gelu,
3hf for swiglu without biases); plus a final norm, the input embedding and, unless tied, the unembedding.
"Non-embedding" follows the Pythia suite's table: it leaves out the input embedding, the unembedding and
any learned position table. With f = 4h this is the paper's P = 12h^2 L + 13hL + (v + s)h (tied, learned).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class ParameterCount:
    total: int
    non_embedding: int
    per_layer: int
    embedding: int


def _norm_params(cfg: ModelConfig) -> int:
    return 2 * cfg.hidden_size if cfg.norm == "layernorm" else cfg.hidden_size


def layer_parameters(cfg: ModelConfig) -> int:
    h, f = cfg.hidden_size, cfg.ffn_size
    bias = 1 if cfg.bias else 0
    attention = 3 * h * h + 3 * h * bias + h * h + h * bias
    if cfg.activation == "swiglu":
        mlp = 3 * h * f + (2 * f + h) * bias
    else:
        mlp = 2 * h * f + (f + h) * bias
    return 2 * _norm_params(cfg) + attention + mlp


def count_parameters(cfg: ModelConfig) -> ParameterCount:
    per_layer = layer_parameters(cfg)
    embedding = cfg.embedding_rows * cfg.hidden_size
    unembedding = 0 if cfg.tie_word_embeddings else embedding
    positions = cfg.max_position_embeddings * cfg.hidden_size if cfg.positional == "learned" else 0
    non_embedding = cfg.num_layers * per_layer + _norm_params(cfg)
    return ParameterCount(
        total=non_embedding + embedding + unembedding + positions,
        non_embedding=non_embedding,
        per_layer=per_layer,
        embedding=embedding + unembedding + positions,
    )

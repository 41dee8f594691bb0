"""Load a transformers GPT-NeoX checkpoint directory (GPTNeoXForCausalLM.save_pretrained) into NeoXCausalLM.

The shape comes from the directory's config.json (models/loading.py reads transformers' names: rotary_pct,
rotary_emb_base, use_parallel_residual, layer_norm_eps, ...). Weights are read tensor by tensor from
safetensors (one file or shards with an index) or, for older checkpoints, pytorch_model*.bin, cast to the
model's dtype and copied into the module the name maps to. The layout needs no change: transformers' fused
query_key_value is packed [heads, 3, d] per row, which is what models/layer.py's qkv_transform uses.
Every parameter must be filled exactly once, and a weight that maps nowhere is an error, not skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import torch

from .causal_lm import NeoXCausalLM
from .config import ConfigError
from .hf_weights import GPT_NEOX_LAYER_NAMES
from .loading import load_config

# transformers' buffers that older checkpoints saved with the weights: recomputed, never loaded
IGNORED = re.compile(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$")
_LAYER = re.compile(r"gpt_neox\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_THEIRS_TO_OURS = {theirs: ours for ours, theirs in GPT_NEOX_LAYER_NAMES.items()}
_TOP_LEVEL = {
    "gpt_neox.embed_in.weight": "embed.weight",
    "gpt_neox.final_layer_norm.weight": "logit_layer.final_norm.weight",
    "gpt_neox.final_layer_norm.bias": "logit_layer.final_norm.bias",
    "embed_out.weight": "logit_layer.logits.weight",
}


def our_name(theirs: str) -> str | None:
    """Our parameter name for a transformers GPT-NeoX state-dict key; None for a key that maps nowhere."""
    if theirs in _TOP_LEVEL:
        return _TOP_LEVEL[theirs]
    match = _LAYER.match(theirs)
    if match and match.group(2) in _THEIRS_TO_OURS:
        return f"layers.{match.group(1)}.{_THEIRS_TO_OURS[match.group(2)]}.{match.group(3)}"
    return None


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors first (one file, or the shards its index names)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / shard for shard in shards]
        if (directory / single).is_file():
            return [directory / single]
    raise ConfigError(f"checkpoint: no model.safetensors or pytorch_model.bin (or sharded index) in {directory}")


def read_tensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            yield from torch.load(path, map_location=device, weights_only=True).items()


@torch.no_grad()
def load_state(model: NeoXCausalLM, tensors: Iterator[tuple[str, torch.Tensor]], *, source: str = "checkpoint") -> None:
    """Copy transformers-named tensors into `model`, checking names and shapes both ways."""
    params = dict(model.named_parameters())
    filled: set[str] = set()
    embed_in = None
    for theirs, tensor in tensors:
        if IGNORED.match(theirs):
            continue
        ours = our_name(theirs)
        if ours is None or ours not in params:
            raise ConfigError(f"checkpoint: {source} holds '{theirs}', which maps to no parameter of a GPT-NeoX "
                              f"causal LM with this config (bias={model.cfg.bias}, "
                              f"residual={model.cfg.residual})")
        param = params[ours]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ConfigError(f"checkpoint: '{theirs}' has shape {tuple(tensor.shape)}, the config gives "
                              f"{ours} {tuple(param.shape)}")
        param.copy_(tensor)
        filled.add(ours)
        if ours == "embed.weight":
            embed_in = param
    logits = "logit_layer.logits.weight"
    if logits not in filled and model.cfg.tie_word_embeddings and embed_in is not None:
        params[logits].copy_(embed_in)  # tied: transformers saves the table once
        filled.add(logits)
    missing = sorted(set(params) - filled)
    if missing:
        raise ConfigError(f"checkpoint: {source} has no weight for {', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''} ({len(missing)} missing)")


def load_causal_lm(directory: Path | str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float16,
                   **options) -> NeoXCausalLM:
    """NeoXCausalLM with the shape of directory/config.json and its weights, on `device` in `dtype`;
    `options` go to NeoXCausalLM (kernels)."""
    directory = Path(directory)
    raw = json.loads((directory / "config.json").read_text())
    if raw.get("model_type") != "gpt_neox":
        raise ConfigError(f"model_type: '{raw.get('model_type')}' in {directory}/config.json; this loads GPT-NeoX")
    if raw.get("rope_scaling"):
        raise ConfigError(f"rope_scaling: {raw['rope_scaling']} in {directory}/config.json is not supported")
    cfg = load_config(directory / "config.json", name=directory.name, dtype=str(dtype).removeprefix("torch."))
    device = torch.device(device)
    with torch.device("meta"):  # no random init: every parameter is overwritten from the checkpoint
        model = NeoXCausalLM(cfg, dtype=dtype, **options)
    model = model.to_empty(device=device)
    model.pack_weights()  # to_empty re-created the packed views one by one: pack again, then load into them
    load_state(model, read_tensors(weight_files(directory), device), source=str(directory))
    return model.eval().requires_grad_(False)

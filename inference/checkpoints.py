"""Pythia-style checkpoints from a ModelConfig: random weights, fp16, safetensors, a local tokenizer.

Weights cannot be downloaded here, and speed does not depend on their values, so a checkpoint is built from
the config (transformers' GPTNeoXForCausalLM) and cached on disk, keyed by the shape-defining fields, the
init recipe and the transformers major version (a checkpoint and its tokenizer must be written by the
major that reads them). A user's own checkpoint directory (real Pythia weights) is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models import ModelConfig, count_parameters, load_config
from models.config import safe_name
from profiler.errors import UserError

from .tokenizer import build_tokenizer, load_tokenizer, save_tokenizer



def default_root() -> Path:
    """The user's cache ($XDG_CACHE_HOME, default ~/.cache), not the repository: checkpoints are GBs and
    outlive a checkout; --checkpoints DIR puts them elsewhere."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "codesign-profiler" / "checkpoints"


DEFAULT_ROOT = default_root()
INIT_RECIPE = "normal(0,0.02); out-projections 0.02/sqrt(2L); norms 1+-0.02; v1"
BUILT_MARKER = "built.json"
SEED = 1234


@dataclass(frozen=True)
class BenchModel:
    """One model of the bench: its config and, for a user's checkpoint, the directory it lives in."""

    name: str
    config: ModelConfig
    source: str
    checkpoint_dir: Path | None = None  # None: built from the config (and cached)

    @property
    def params(self) -> int:
        return count_parameters(self.config).total


def resolve_model(ref: str) -> BenchModel:
    """A bundled name, a config file (YAML, GPT-NeoX YAML, config.json), or a checkpoint directory."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--models: {ref} is a directory without config.json; give a checkpoint "
                            "directory (save_pretrained) or a config file")
        cfg = load_config(path / "config.json", name=safe_name(path.name))
        return BenchModel(cfg.name, cfg, str(path), path)
    cfg = load_config(ref)
    return BenchModel(cfg.name, cfg, str(path) if path.is_file() else f"bundled:{cfg.name}")


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def neox_config(cfg: ModelConfig):
    """The transformers GPTNeoXConfig of a ModelConfig; only GPT-NeoX-shaped models can be built."""
    from transformers import GPTNeoXConfig

    unsupported = [(cfg.activation, "gelu", "activation"), (cfg.norm, "layernorm", "norm"),
                   (cfg.positional, "rotary", "positional")]
    for value, needed, field_name in unsupported:
        if value != needed:
            raise UserError(f"{field_name}: '{value}' in {cfg.name} cannot be built as a GPT-NeoX checkpoint "
                            f"(needs {needed}); bring your own checkpoint directory instead")
    return GPTNeoXConfig(
        vocab_size=cfg.embedding_rows, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.ffn_size, hidden_act="gelu",
        rotary_pct=cfg.rotary_pct, rotary_emb_base=cfg.rotary_base,
        max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.norm_epsilon,
        use_parallel_residual=cfg.residual == "parallel", tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=cfg.bias, initializer_range=0.02, bos_token_id=0, eos_token_id=0, pad_token_id=1,
        torch_dtype="float16")


def config_hash(cfg: ModelConfig) -> str:
    """What the weights depend on: the GPT-NeoX shape, the tokenizer's size, the init recipe, the seed."""
    shape = {k: v for k, v in neox_config(cfg).to_dict().items() if k != "transformers_version"}
    blob = json.dumps({"shape": shape, "tokenizer_vocab": cfg.vocab_size, "init": INIT_RECIPE, "seed": SEED},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_path(cfg: ModelConfig, root: Path) -> Path:
    return Path(root) / f"{safe_name(cfg.name)}-{config_hash(cfg)}-tf{transformers_major()}"


def is_built(directory: Path) -> bool:
    return (directory / BUILT_MARKER).is_file() and (directory / "config.json").is_file()


@torch.no_grad()
def init_weights(model: torch.nn.Module, cfg: ModelConfig, seed: int = SEED) -> None:
    """Small random normals: std 0.02 keeps fp16 activations far from overflow; GPT-NeoX scales the
    residual-stream outputs by 1/sqrt(2L) so depth does not grow the activations. Norms and biases are
    random too, so a kernel that drops or swaps one of them shows in the logits check."""
    first = next(model.parameters())
    gen = torch.Generator(device=first.device).manual_seed(seed)
    std, out_std = 0.02, 0.02 / math.sqrt(2 * cfg.num_layers)
    for name, p in model.named_parameters():
        if "layernorm" in name or "layer_norm" in name:
            p.normal_(1.0 if name.endswith("weight") else 0.0, 0.02, generator=gen)
        elif name.endswith("bias"):
            p.normal_(0.0, 0.02, generator=gen)
        elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
            p.normal_(0.0, out_std, generator=gen)
        else:
            p.normal_(0.0, std, generator=gen)


def build_checkpoint(cfg: ModelConfig, target: Path, *, device: torch.device) -> Path:
    """Write a random-weight fp16 checkpoint and its tokenizer to `target` (atomically: a temporary
    sibling renamed at the end, so an interrupted build is never mistaken for a finished one)."""
    import transformers
    from transformers import GPTNeoXForCausalLM
    from transformers.modeling_utils import no_init_weights

    started = time.perf_counter()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # initialised where it will run, in fp16, skipping transformers' own init: billions of parameters
    # drawn on a CPU in fp32 take minutes, on the GPU well under a second
    with no_init_weights(), torch.device(device):
        model = GPTNeoXForCausalLM._from_config(neox_config(cfg), torch_dtype=torch.float16)
    init_weights(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    expected = count_parameters(cfg).total
    if n_params != expected:
        raise RuntimeError(f"{cfg.name}: built {n_params} parameters, the config counts {expected}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    del model
    save_tokenizer(build_tokenizer(cfg.vocab_size, max_length=cfg.max_position_embeddings), tmp)
    (tmp / BUILT_MARKER).write_text(json.dumps({
        "config": cfg.to_dict(), "config_hash": config_hash(cfg), "init": INIT_RECIPE, "seed": SEED,
        "parameters": n_params, "transformers": transformers.__version__, "built_on": str(device),
        "build_s": round(time.perf_counter() - started, 2)}, indent=1, default=str))
    if target.exists():  # built meanwhile by someone else: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return target


def ensure_checkpoint(model: BenchModel, root: Path, *, device: torch.device, log=print) -> Path:
    """The checkpoint directory for `model`: the user's own, a cached build, or a fresh build."""
    if model.checkpoint_dir is not None:
        load_tokenizer(model.checkpoint_dir)  # fails early, with the fix, if there is none
        return model.checkpoint_dir
    target = cached_path(model.config, root)
    if is_built(target):
        return target
    log(f"{model.name}: building a random-weight fp16 checkpoint in {target} (on {device.type})")
    return build_checkpoint(model.config, target, device=device)


def model_key(model: BenchModel) -> str:
    """What identifies a model's weights in the results: the config hash of a built checkpoint, a hash of
    config.json for a user's own."""
    if model.checkpoint_dir is None:
        return config_hash(model.config)
    return hashlib.sha256((model.checkpoint_dir / "config.json").read_bytes()).hexdigest()[:12]

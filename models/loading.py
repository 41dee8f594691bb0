"""Load a ModelConfig from a bundled name, our YAML, a GPT-NeoX training YAML or a transformers config.json.

YAML is storage only: keys map one-to-one onto ModelConfig fields, unknown keys are rejected with the
nearest valid key, and every failure is a ConfigError with one line a user can act on.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .config import FIELD_NAMES, ConfigError, ModelConfig, safe_name

PRESET_PACKAGE = "models.presets"


def bundled_names() -> list[str]:
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(ref: str | Path, **overrides: Any) -> ModelConfig:
    """`ref` is a path to a file, or the name of a bundled config (`pythia-1b` or `pythia-1b.yaml`).

    A path that exists wins over a bundled name, so a user's own pythia-1b.yaml is never shadowed."""
    path = Path(ref).expanduser()
    if path.is_file():
        raw, source = _read_file(path), str(path)
        # a name taken from the file (not written by the user) is made safe, not refused: `my model.yaml` is
        # 'my-model'; a `name:` the file states is validated as written
        default_name = safe_name(path.stem if path.name != "config.json" else path.parent.name or "config")
    else:
        name = str(ref)
        name = name[: -len(".yaml")] if name.endswith(".yaml") else name
        name = name[: -len(".yml")] if name.endswith(".yml") else name
        if name not in bundled_names():
            near = difflib.get_close_matches(name, bundled_names(), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; bundled: {', '.join(bundled_names())}"
            raise ConfigError(f"config: '{ref}' is neither a file nor a bundled config{hint}")
        text = resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text()
        raw, source, default_name = _parse_yaml(text, name), f"bundled:{name}", name
    return config_from_mapping(raw, source=source, default_name=default_name, **overrides)


def config_from_mapping(raw: dict, *, source: str = "<dict>", default_name: str = "custom",
                        **overrides: Any) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {source} does not hold a mapping of keys to values")
    if "model_type" in raw or "architectures" in raw:
        values = _from_transformers(raw, source)
    elif any(str(k).replace("_", "-") in _NEOX_KEYS and k not in FIELD_NAMES for k in raw):
        values = _from_gpt_neox(raw, source)
    else:
        values = dict(raw)
        _reject_unknown(values, FIELD_NAMES, source)
    values.setdefault("name", default_name)
    for key, value in overrides.items():
        if value is not None:
            _reject_unknown({key: value}, FIELD_NAMES, "overrides")
            values[key] = value
    missing = [f for f in ("hidden_size", "num_attention_heads", "num_layers") if f not in values]
    if missing:
        raise ConfigError(f"{missing[0]}: required in {source}")
    return ModelConfig(**values)


def _read_file(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not a text file (not UTF-8); give a YAML or JSON config") from None
    if "\x00" in text:
        raise ConfigError(f"config: {path} is a binary file; give a YAML or JSON config") from None
    if path.suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_json_mapping(str(path)))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        except RecursionError:
            raise ConfigError(f"config: {path} nests too deeply to be a model config; a config is a flat mapping "
                              "of keys to values") from None
    return _parse_yaml(text, str(path))


class _DuplicateKey(Exception):
    def __init__(self, key: object, first_line: int, line: int):
        super().__init__(key, first_line, line)
        self.key, self.first_line, self.line = key, first_line, line


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader, except that a key given twice in one mapping is an error: PyYAML keeps the last value
    silently, so `num_layers: 24` ... `num_layers: 2` would profile 2 layers without a word. Keys merged in
    with `<<:` may still be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
                    seen[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
        return super().construct_mapping(node, deep)


def _json_mapping(source: str):
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"{key}: given twice in one mapping of {source}; keep one")
            out[key] = value
        return out
    return pairs_to_dict


def _parse_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as exc:
        lines = f"line {exc.line}" if exc.first_line == exc.line else f"lines {exc.first_line} and {exc.line}"
        raise ConfigError(f"{exc.key}: given twice in one mapping of {source} ({lines}); keep one") from None
    except RecursionError:
        raise ConfigError(f"config: {source} nests too deeply to be a model config; a config is a flat mapping "
                          "of keys to values") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config: {source} is not valid YAML ({where.strip() or 'unknown line'}: {problem})") from exc
    if data is None:
        raise ConfigError(f"config: {source} is empty")
    return data


def _reject_unknown(values: dict, valid: tuple[str, ...], source: str) -> None:
    for key in values:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"{key}: unknown key in {source}{hint}")


def _flag(value: Any, key: str, source: str, default: bool | None = None) -> bool:
    """A true/false setting of a foreign config; bool("false") is True, so text is refused, not converted.
    A null (transformers writes some) is the default."""
    if value is None and default is not None:
        return default
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    fix = f"write it unquoted ({key.rsplit('.', 1)[-1]}: {word})" if word in ("true", "false") else "write true or false"
    raise ConfigError(f"{key}: must be true or false in {source}, got {value!r}; {fix}")


# ---- GPT-NeoX training YAML ---------------------------------------------------------------------
# GPT-NeoX accepts '-' or '_' in keys; we normalise to '-'. Training keys (optimizer, data, ...) that
# do not shape the layer are ignored on purpose: a NeoX file holds far more than a model's shape.
_NEOX_KEYS = {
    "num-layers": "num_layers", "hidden-size": "hidden_size", "num-attention-heads": "num_attention_heads",
    "seq-length": "seq_length", "max-position-embeddings": "max_position_embeddings",
    "train-micro-batch-size-per-gpu": "micro_batch_size", "rotary-pct": "rotary_pct",
    "rotary-emb-base": "rotary_base", "attention-dropout": "attention_dropout",
    "hidden-dropout": "hidden_dropout", "model-parallel-size": "tensor_parallel",
    "make-vocab-size-divisible-by": "vocab_divisible_by", "intermediate-size": "intermediate_size",
    "layernorm-epsilon": "norm_epsilon", "rms-norm-epsilon": "norm_epsilon", "pos-emb": None,
    "norm": None, "gpt-j-residual": None, "activation": None, "precision": None,
    "attention-config": None, "use-bias-in-attn-linear": None, "fp16": None, "bf16": None,
}
NEOX_PRECISION = {"fp16": "float16", "float16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
                  "fp32": "float32", "float32": "float32"}


def _from_gpt_neox(raw: dict, source: str) -> dict:
    neox = {str(k).replace("_", "-"): v for k, v in raw.items()}
    values: dict[str, Any] = {}
    for key, field_name in _NEOX_KEYS.items():
        if field_name and key in neox:
            values[field_name] = neox[key]
    pos = neox.get("pos-emb", "learned")
    values["positional"] = {"rotary": "rotary", "learned": "learned", "none": "none"}.get(pos, pos)
    if neox.get("norm") is not None:
        values["norm"] = neox["norm"]
    if "gpt-j-residual" in neox:
        values["residual"] = "parallel" if _flag(neox["gpt-j-residual"], "gpt-j-residual", source) else "sequential"
    if neox.get("activation") is not None:
        values["activation"] = "swiglu" if neox["activation"] in ("swiglu", "swish_glu") else neox["activation"]
    # GPT-NeoX states precision as `precision: fp16|bfloat16|fp32` or, as Pythia's configs do, as a DeepSpeed
    # block `fp16: {enabled: true, ...}` / `bf16: {enabled: true}`; an enabled block wins
    precision = neox.get("precision")
    if precision is not None:
        values["dtype"] = NEOX_PRECISION.get(str(precision), precision)
    enabled = []
    for block, dtype in (("fp16", "float16"), ("bf16", "bfloat16")):
        settings = neox.get(block)
        if isinstance(settings, dict) and "enabled" in settings and _flag(settings["enabled"], f"{block}.enabled", source):
            enabled.append(block)
            values["dtype"] = dtype
    if len(enabled) > 1:
        raise ConfigError(f"bf16: both the fp16 and the bf16 block are enabled in {source}; a model trains in one "
                          "precision: set enabled: false in the other")
    attention_config = neox.get("attention-config")
    if isinstance(attention_config, list) and attention_config and "flash" in json.dumps(attention_config):
        values["attention"] = "flash"
    if "use-bias-in-attn-linear" in neox:
        values["bias"] = _flag(neox["use-bias-in-attn-linear"], "use-bias-in-attn-linear", source)
    return values


# ---- transformers config.json -------------------------------------------------------------------
HF_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


def _from_transformers(raw: dict, source: str) -> dict:
    model_type = raw.get("model_type")
    common = {
        "hidden_size": raw.get("hidden_size"), "num_attention_heads": raw.get("num_attention_heads"),
        "num_layers": raw.get("num_hidden_layers"), "intermediate_size": raw.get("intermediate_size"),
        "max_position_embeddings": raw.get("max_position_embeddings", 2048),
        "tie_word_embeddings": _flag(raw.get("tie_word_embeddings"), "tie_word_embeddings", source, False),
    }
    dtype = raw.get("torch_dtype") or raw.get("dtype")  # transformers 4.x writes torch_dtype, 5.x dtype
    if dtype is not None:  # the precision the checkpoint was saved in is the one it runs in, unless overridden
        if dtype not in HF_DTYPES:
            raise ConfigError(f"torch_dtype: '{dtype}' in {source} is not one of {', '.join(HF_DTYPES)}; "
                              "pass --dtype to choose the precision")
        common["dtype"] = HF_DTYPES[dtype]
    if raw.get("vocab_size") is not None:  # transformers' vocab_size is the embedding's row count
        common["vocab_size"] = raw["vocab_size"]
        common["padded_vocab_size"] = raw["vocab_size"]
    if model_type == "gpt_neox":
        act = raw.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
            raise ConfigError(f"hidden_act: '{act}' in {source} is not supported; the layer implements gelu")
        return {**common, "activation": "gelu", "norm": "layernorm",
                "norm_epsilon": raw.get("layer_norm_eps", 1e-5), "positional": "rotary",
                "rotary_pct": raw.get("rotary_pct", 0.25), "rotary_base": raw.get("rotary_emb_base", 10000),
                "residual": "parallel" if _flag(raw.get("use_parallel_residual"), "use_parallel_residual",
                                                source, True) else "sequential",
                "attention_dropout": raw.get("attention_dropout", 0.0),
                "hidden_dropout": raw.get("hidden_dropout", 0.0),
                "bias": _flag(raw.get("attention_bias"), "attention_bias", source, True)}
    if model_type == "llama":
        kv = raw.get("num_key_value_heads", raw.get("num_attention_heads"))
        if kv != raw.get("num_attention_heads"):
            raise ConfigError(f"num_key_value_heads: {kv} != num_attention_heads in {source}; "
                              "grouped-query attention is not supported yet")
        return {**common, "activation": "swiglu", "norm": "rmsnorm",
                "norm_epsilon": raw.get("rms_norm_eps", 1e-6), "positional": "rotary", "rotary_pct": 1.0,
                "rotary_base": raw.get("rope_theta", 10000.0), "residual": "sequential",
                "attention_dropout": raw.get("attention_dropout", 0.0), "bias": _flag(raw.get("attention_bias"), "attention_bias", source, False)}
    raise ConfigError(f"model_type: '{model_type}' in {source} is not supported; use gpt_neox or llama")

"""Config loading, validation messages and parameter counts."""

import json

import pytest
from transformers import GPTNeoXConfig, LlamaConfig

from models import ConfigError, bundled_names, config_from_mapping, count_parameters, load_config

# The Pythia suite's published parameter counts (total, non-embedding)
PYTHIA_PUBLISHED = {
    "pythia-70m": (70_426_624, 18_915_328),
    "pythia-160m": (162_322_944, 85_056_000),
    "pythia-410m": (405_334_016, 302_311_424),
    "pythia-1b": (1_011_781_632, 805_736_448),
    "pythia-1.4b": (1_414_647_808, 1_208_602_624),
    "pythia-2.8b": (2_775_208_960, 2_517_652_480),
    "pythia-6.9b": (6_857_302_016, 6_444_163_072),
    "pythia-12b": (11_846_072_320, 11_327_027_200),
}


@pytest.mark.parametrize("name", sorted(PYTHIA_PUBLISHED))
def test_pythia_parameter_counts_match_the_published_table(name):
    params = count_parameters(load_config(name))
    assert (params.total, params.non_embedding) == PYTHIA_PUBLISHED[name]


def test_paper_formula_with_tied_learned_embeddings():
    cfg = load_config("gpt3-2.7b", positional="learned", tie_word_embeddings=True, padded_vocab_size=50257)
    h, L, v, s = 2560, 32, 50257, 2048
    # P = 12h^2 L + 13hL + (v + s)h, plus the final norm's 2h that the paper's formula leaves out
    assert count_parameters(cfg).total == 12 * h * h * L + 13 * h * L + (v + s) * h + 2 * h


def test_llama_2_7b_like_has_llama_2_7b_parameter_count():
    assert count_parameters(load_config("llama-2-7b-like")).total == 6_738_415_616


def test_every_bundled_config_loads_and_the_suite_is_complete():
    names = bundled_names()
    for required in list(PYTHIA_PUBLISHED) + ["gpt3-2.7b", "gpt3-2.7b-c1", "gpt3-2.7b-c2", "gpt3-2.7b-a20",
                                              "paper-small", "paper-large", "llama-2-7b-like"]:
        assert required in names
    assert {load_config(n).name for n in names} == set(names)


def test_bundled_name_resolves_from_any_directory_with_or_without_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("pythia-1b.yaml").hidden_size == 2048
    assert load_config("pythia-1b").num_attention_heads == 8


def test_a_users_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pythia-1b.yaml").write_text("hidden_size: 256\nnum_attention_heads: 4\nnum_layers: 2\n")
    assert load_config("pythia-1b.yaml").hidden_size == 256


def test_gpt_neox_training_yaml_with_dashes_or_underscores(tmp_path):
    path = tmp_path / "neox.yml"
    path.write_text("""{
  "num-layers": 16, "hidden_size": 2048, "num-attention-heads": 8, "seq-length": 2048,
  "max-position-embeddings": 2048, "pos-emb": "rotary", "rotary-pct": 0.25, "gpt-j-residual": true,
  "norm": "layernorm", "precision": "fp16", "attention-config": [[["flash"], 16]],
  "train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "Adam"}, "lr-decay-style": "cosine"
}""")
    cfg = load_config(path)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads) == (2048, 16, 8)
    assert (cfg.residual, cfg.dtype, cfg.attention, cfg.micro_batch_size) == ("parallel", "float16", "flash", 4)


def test_transformers_config_json_gpt_neox_and_llama(tmp_path):
    neox_dir, llama_dir = tmp_path / "neox", tmp_path / "llama"
    GPTNeoXConfig(hidden_size=512, num_attention_heads=8, num_hidden_layers=6, intermediate_size=2048,
                  vocab_size=50304, rotary_pct=0.25).save_pretrained(neox_dir)
    LlamaConfig(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32, intermediate_size=11008,
                vocab_size=32000).save_pretrained(llama_dir)
    neox = load_config(neox_dir / "config.json")
    assert count_parameters(neox).total == PYTHIA_PUBLISHED["pythia-70m"][0]
    llama = load_config(llama_dir / "config.json")
    assert (llama.activation, llama.norm, llama.residual, llama.bias) == ("swiglu", "rmsnorm", "sequential", False)
    assert count_parameters(llama).total == 6_738_415_616


@pytest.mark.parametrize("text, field, fix", [
    ("hiden_size: 64\nnum_attention_heads: 4\nnum_layers: 1\n", "hiden_size", "did you mean 'hidden_size'"),
    ("hidden_size: 100\nnum_attention_heads: 3\nnum_layers: 1\n", "num_attention_heads", "not divisible"),
    ("hidden_size: -64\nnum_attention_heads: 4\nnum_layers: 1\n", "hidden_size", "must be positive"),
    ("hidden_size: 64\nnum_attention_heads: 4\nnum_layers: 0\n", "num_layers", "must be positive"),
    ("hidden_size: 64\nnum_attention_heads: 4\nnum_layers: 1\nrotary_pct: 1.5\n", "rotary_pct", "(0, 1]"),
    ("hidden_size: 64\nnum_attention_heads: 4\nnum_layers: 1\nactivation: swiglu\n", "intermediate_size", "explicit"),
    ("hidden_size: 64\nnum_attention_heads: 4\nnum_layers: 1\nactivation: gelo\n", "activation", "did you mean 'gelu'"),
    ("hidden_size: 64\nnum_attention_heads: 4\nnum_layers: 1\ntensor_parallel: 3\n", "tensor_parallel", "t must divide a"),
    ("hidden_size: 64\nnum_attention_heads: 4\n", "num_layers", "required"),
    ("hidden_size: [64\n", "config", "not valid YAML"),
])
def test_bad_configs_raise_one_line_naming_the_field(tmp_path, text, field, fix):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{field}:") and fix in message and "\n" not in message


def test_unknown_bundled_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'pythia-1b'"):
        load_config("pythia-1bb")


def test_invalid_json_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="model_type"):
        load_config(tmp_path / "config.json")


def test_sizing_alignment_is_128_bytes_of_the_configs_dtype():
    """The paper's 'multiple of 64' is 128 bytes of fp16/bf16; in fp32 (TF32 tensor cores) it is 32 elements."""
    from profiler.advisor import resolve_gpu
    from profiler.advisor.rules import sizing_findings

    h100 = resolve_gpu("h100")

    def head_dim_findings(cfg):
        return [f for f in sizing_findings(cfg, h100) if f["quantity"] == "h/a"]

    cfg = load_config("pythia-410m").replace(num_attention_heads=32)  # h/a = 1024/32 = 32
    (bf16,) = head_dim_findings(cfg.replace(dtype="bfloat16"))
    assert "h/a = 32 is not a multiple of 64 (largest power of two dividing it: 32)" in bf16["message"]
    assert head_dim_findings(cfg.replace(dtype="float32")) == []  # 32 fp32 elements are 128 bytes
    (gpt3,) = head_dim_findings(load_config("gpt3-2.7b"))
    assert gpt3["value"] == "80" and "largest power of two dividing it: 16" in gpt3["message"]


def test_a_huge_hidden_size_loads_at_once_and_its_divisor_hint_is_fast():
    """The divisor hint of an error message is worked out only when the size does not divide (it once ran in
    time proportional to h, so hidden_size: 1000000000000 never finished loading)."""
    import time

    t0 = time.perf_counter()
    cfg = config_from_mapping({"name": "big", "hidden_size": 10**12, "num_attention_heads": 8, "num_layers": 2})
    assert cfg.head_dim == 125_000_000_000 and time.perf_counter() - t0 < 1.0
    with pytest.raises(ConfigError, match=r"not divisible by 7 heads; pick a that divides h \(e.g. 8\)"):
        config_from_mapping({"name": "big", "hidden_size": 10**12, "num_attention_heads": 7, "num_layers": 2})


def test_an_exponent_without_a_dot_is_named_as_the_yaml_text_it_is(tmp_path):
    path = tmp_path / "eps.yaml"
    path.write_text("name: eps\nhidden_size: 512\nnum_attention_heads: 8\nnum_layers: 2\nnorm_epsilon: 1e-5\n")
    with pytest.raises(ConfigError, match=r"^norm_epsilon: '1e-5' is text, not a number.*1\.0e-5"):
        load_config(path)
    path.write_text("name: eps\nhidden_size: 512\nnum_attention_heads: 8\nnorm_epsilon: 1.0e-5\n")
    with pytest.raises(ConfigError, match="^num_layers: required in"):
        load_config(path)


def test_a_transformers_config_runs_in_the_precision_it_was_saved_in(tmp_path):
    raw = {"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 2,
           "vocab_size": 50304, "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert load_config(tmp_path / "config.json").dtype == "float16"
    assert load_config(tmp_path / "config.json", dtype="bfloat16").dtype == "bfloat16"  # an explicit choice wins
    (tmp_path / "config.json").write_text(json.dumps({**raw, "torch_dtype": "int8"}))
    with pytest.raises(ConfigError, match="torch_dtype: 'int8'"):
        load_config(tmp_path / "config.json")

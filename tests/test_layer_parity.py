"""Our layer against transformers' GPT-NeoX layer and Llama MLP with the same weights (CPU, float32)."""

import pytest
import torch
from transformers import GPTNeoXConfig, LlamaConfig
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from models import ModelConfig
from models.hf_weights import load_from_gpt_neox_layer, load_from_llama_mlp
from models.layer import MLP, build_layer, make_norm, random_input

TOLERANCE = 1e-5


def tiny(**changes) -> ModelConfig:
    base = dict(name="tiny", hidden_size=64, num_attention_heads=4, num_layers=2, seq_length=16,
                micro_batch_size=2, vocab_size=128, dtype="float32", attention="eager")
    return ModelConfig(**{**base, **changes})


def hf_layer_for(cfg: ModelConfig) -> GPTNeoXLayer:
    hf_cfg = GPTNeoXConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                           intermediate_size=cfg.ffn_size, rotary_pct=cfg.rotary_pct,
                           rotary_emb_base=cfg.rotary_base, max_position_embeddings=cfg.seq_length,
                           use_parallel_residual=cfg.residual == "parallel", hidden_act="gelu",
                           layer_norm_eps=cfg.norm_epsilon, attention_dropout=0.0, hidden_dropout=0.0)
    hf_cfg._attn_implementation = "eager"
    return GPTNeoXLayer(hf_cfg).eval()


def run_hf(hf_layer: GPTNeoXLayer, x: torch.Tensor) -> torch.Tensor:
    position_ids = torch.arange(x.shape[1]).unsqueeze(0)
    return hf_layer(x, position_ids=position_ids)[0]


@pytest.mark.parametrize("residual", ["parallel", "sequential"])
@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_forward_matches_transformers_gpt_neox_layer(residual, rotary_pct, attention):
    cfg = tiny(residual=residual, rotary_pct=rotary_pct, attention=attention)
    ours = build_layer(cfg).layer.eval()
    theirs = hf_layer_for(cfg)
    with torch.no_grad():
        for p in theirs.parameters():  # non-trivial norms and biases, so a dropped term shows
            p.normal_(0.0, 0.3)
    load_from_gpt_neox_layer(ours, theirs)
    x = random_input(cfg)
    with torch.no_grad():
        diff = (ours(x) - run_hf(theirs, x)).abs().max().item()
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"


@pytest.mark.parametrize("residual", ["parallel", "sequential"])
def test_gradients_match_transformers_gpt_neox_layer(residual):
    cfg = tiny(residual=residual)
    ours = build_layer(cfg).layer
    theirs = hf_layer_for(cfg)
    load_from_gpt_neox_layer(ours, theirs)
    x1 = random_input(cfg, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    grad_out = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
    ours(x1).backward(grad_out)
    run_hf(theirs, x2).backward(grad_out)
    assert (x1.grad - x2.grad).abs().max().item() <= TOLERANCE
    w_ours = ours.attention.qkv_transform.weight.grad
    w_theirs = theirs.attention.query_key_value.weight.grad
    assert (w_ours - w_theirs).abs().max().item() <= TOLERANCE


def test_swiglu_mlp_matches_llama_mlp():
    cfg = tiny(activation="swiglu", intermediate_size=176, bias=False, norm="rmsnorm")
    ours = MLP(cfg)
    theirs = LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=176, hidden_act="silu"))
    load_from_llama_mlp(ours, theirs)
    x = random_input(cfg)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"


def test_rmsnorm_matches_llama_rmsnorm():
    cfg = tiny(norm="rmsnorm", norm_epsilon=1e-6)
    ours, theirs = make_norm(cfg), LlamaRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        theirs.weight.normal_(1.0, 0.3)
        ours.weight.copy_(theirs.weight)
    x = random_input(cfg)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_eager_and_sdpa_agree_on_cpu(activation):
    extra = dict(intermediate_size=160) if activation == "swiglu" else {}
    eager = build_layer(tiny(activation=activation, **extra)).eval()
    sdpa = build_layer(tiny(activation=activation, attention="sdpa", **extra)).eval()
    sdpa.load_state_dict(eager.state_dict())
    x = random_input(eager.layer.cfg)
    with torch.no_grad():
        assert (eager(x) - sdpa(x)).abs().max().item() <= TOLERANCE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention runs on CUDA only")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_flash_agrees_with_eager_within_dtype_tolerance(dtype):
    cfg = tiny(dtype=dtype, hidden_size=256, num_attention_heads=4, seq_length=128)
    eager = build_layer(cfg, device="cuda").eval()
    flash = build_layer(cfg.replace(attention="flash"), device="cuda").eval()
    flash.load_state_dict(eager.state_dict())
    x = random_input(cfg, device="cuda")
    with torch.no_grad():
        ref = eager.float()(x.float())
        out = flash(x).float()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"relative error {rel:.2e}"


def test_tensor_parallel_shapes_follow_table_ii():
    cfg = tiny(hidden_size=128, num_attention_heads=8, tensor_parallel=4)
    layer = build_layer(cfg).layer
    assert layer.attention.qkv_transform.weight.shape == (3 * 128 // 4, 128)
    assert layer.attention.out_projection.weight.shape == (128, 128 // 4)
    assert layer.mlp.mlp_up.weight.shape == (4 * 128 // 4, 128)
    assert layer.mlp.mlp_down.weight.shape == (128, 4 * 128 // 4)
    out = layer(random_input(cfg))
    assert out.shape == (2, 16, 128)

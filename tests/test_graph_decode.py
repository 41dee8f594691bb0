"""The project's own decode engine (issue 20) on CPU: its GPT-NeoX against transformers' on the same random-weight
checkpoints (prefill logits, greedy tokens, a row in a batch against the prompt alone, decode steps against
the prefill of the longer prompt), the checks failing on doctored weights, the fused kernels through Triton's
interpreter against their plain-torch twins, the weight loader's name checks, torch.compile's fallback, the
engine end to end through the bench, the step-kernel analysis, and the GPU benchmark script's wiring.

On a CPU there is no CUDA graph: the decoder runs the very step it would capture, eagerly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.bench import BenchSpec, run_bench
from inference.checkpoints import ensure_checkpoint, resolve_model
from inference.checks import check_tokens, compare_logits
from inference.engines.base import get_engine
from inference.graph_decoder import GreedyDecoder
from inference.reference import build_reference
from inference.step_kernels import holds_back, kernel_class, summarize_kernels
from inference.tokenizer import load_tokenizer, make_prompts
from models import ConfigError, load_config
from models import decode_kernels as K
from models.causal_lm import KVCache, NeoXCausalLM
from models.invariant.backend import available
from models.neox_checkpoint import load_causal_lm, load_state

ROOT = Path(__file__).resolve().parent.parent
FLOAT32_TOLERANCE = 1e-5  # float32 on a CPU, same ops as transformers: far below the bench's 5%
INTERPRETER = available("cpu")
interpreted = pytest.mark.skipif(INTERPRETER is not None, reason=str(INTERPRETER))
TINY = """\
name: {name}
hidden_size: {h}
num_attention_heads: 4
num_layers: 2
vocab_size: 512
max_position_embeddings: 256
{extra}"""
SHAPES = {  # parallel residual, quarter rotary (Pythia); sequential with full rotary; h/a = 40 (not a power of 2)
    "tiny-par": (64, ""),
    "tiny-seq": (64, "residual: sequential\nrotary_pct: 1.0\n"),
    "tiny-d40": (160, ""),
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("graph-decode")
    built = {}
    for name, (h, extra) in SHAPES.items():
        path = root / f"{name}.yaml"
        path.write_text(TINY.format(name=name, h=h, extra=extra))
        built[name] = ensure_checkpoint(resolve_model(str(path)), root / "ckpt", device=CPU, log=lambda _: None)
    return built


def transformers_model(checkpoint: Path):
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM.from_pretrained(str(checkpoint), torch_dtype=torch.float32).eval()


def prompt_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def prefill_logits(model: NeoXCausalLM, ids: torch.Tensor, positions: int | None = None) -> torch.Tensor:
    cache = KVCache.allocate(model.cfg, batch=ids.shape[0], capacity=ids.shape[1], device=CPU, dtype=model.dtype)
    with torch.no_grad():
        return model.prefill(ids, cache, logits_positions=positions or ids.shape[1])


MMA_TILE = K.AttentionTile(16, 4, 2, mma=True)  # the attention loop on the tensor cores (tl.dot, interpreted)
TMA_TILE = K.AttentionTile(16, 4, 2, mma=True, tma=True)  # the same, its cache tiles through tensor descriptors


def greedy(model: NeoXCausalLM, ids: torch.Tensor, new_tokens: int, **options) -> list[list[int]]:
    decoder = GreedyDecoder(model, batch=ids.shape[0], prompt_len=ids.shape[1], new_tokens=new_tokens,
                            banned_token=0, **options)
    decoder.capture(ids)
    return decoder.generate(ids).tolist()


# ---- the model against transformers -------------------------------------------------------------
@pytest.mark.parametrize("shape", list(SHAPES))
def test_prefill_logits_equal_transformers_gpt_neox_in_float32(checkpoints, shape):
    ids = prompt_ids(2, 24)
    with torch.no_grad():
        expected = transformers_model(checkpoints[shape])(ids).logits
    got = prefill_logits(load_causal_lm(checkpoints[shape], dtype=torch.float32), ids)
    check = compare_logits(expected, got, "prefill")
    assert check.passed and check.top1_agreement == 1.0
    assert check.max_abs_diff <= FLOAT32_TOLERANCE * max(1.0, check.ref_max_abs)


@pytest.mark.parametrize("shape", ["tiny-par", "tiny-seq"])
def test_greedy_tokens_equal_transformers_generate(checkpoints, shape):
    checkpoint = checkpoints[shape]
    prompts = {20: make_prompts(load_tokenizer(checkpoint), 3, 20)}
    generation = build_reference(checkpoint, prompts, [(20, 3)], new_tokens=8, dtype="float32",
                                 device=CPU).generations[(20, 3)]
    tokens = greedy(load_causal_lm(checkpoint, dtype=torch.float32), prompts[20].input_ids, 8)
    verdict = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens, noise=0.0)
    assert verdict.passed and verdict.tokens_match, verdict.verdict


@interpreted
@pytest.mark.slow  # the interpreter for a whole decode loop; each kernel (h/a = 40 included) is tested alone below
@pytest.mark.parametrize("tile", [None, MMA_TILE], ids=["lanes", "mma"])
def test_greedy_tokens_through_the_triton_kernels_equal_transformers_generate(checkpoints, tile):
    """The GPU path's kernels (interpreted) in the whole decode loop: h/a = 40, so the head dim is masked."""
    checkpoint = checkpoints["tiny-d40"]
    prompts = {12: make_prompts(load_tokenizer(checkpoint), 2, 12)}
    generation = build_reference(checkpoint, prompts, [(12, 2)], new_tokens=5, dtype="float32",
                                 device=CPU).generations[(12, 2)]
    model = load_causal_lm(checkpoint, dtype=torch.float32, kernels="triton")
    tokens = greedy(model, prompts[12].input_ids, 5, splits=3, attention_tile=tile)
    verdict = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens, noise=0.0)
    assert verdict.passed and verdict.tokens_match, verdict.verdict


def test_a_row_in_a_batch_equals_the_same_prompt_alone(checkpoints):
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    ids = prompt_ids(3, 16, seed=4)
    batched, batched_tokens = prefill_logits(model, ids), greedy(model, ids, 6)
    for row in range(3):
        alone = prefill_logits(model, ids[row:row + 1])
        check = compare_logits(alone, batched[row:row + 1], f"row {row}")
        assert check.passed and check.max_abs_diff <= FLOAT32_TOLERANCE * max(1.0, check.ref_max_abs)
        assert greedy(model, ids[row:row + 1], 6) == [batched_tokens[row]]


@pytest.mark.parametrize("kernels, shape", [
    ("torch", "tiny-par"), ("torch", "tiny-seq"), pytest.param("triton", "tiny-par", marks=interpreted),
    # the sequential residual's two output GEMMs through the interpreter: the torch twin above is the quick one
    pytest.param("triton", "tiny-seq", marks=[interpreted, pytest.mark.slow])])
def test_decode_steps_through_the_cache_equal_the_prefill_of_the_longer_prompt(checkpoints, kernels, shape):
    """The cache path on its own terms: the logits of step k equal a prefill of prompt + tokens so far (the
    parallel residual through the joined output GEMM, the sequential one through two)."""
    model = load_causal_lm(checkpoints[shape], dtype=torch.float32, kernels=kernels)
    ids = prompt_ids(2, 10, seed=2)
    decoder = GreedyDecoder(model, batch=2, prompt_len=10, new_tokens=4, splits=2)
    decoder.capture(ids)
    decoder.prefill(ids)
    for _ in range(3):
        context = torch.cat([ids, decoder.generated[:, :int(decoder.count)]], dim=1)  # prompt + new tokens so far
        decoder.step()
        expected = prefill_logits(model, context, positions=1)[:, -1]
        check = compare_logits(expected, decoder.logits, "decode step vs prefill")
        assert check.passed and check.max_abs_diff <= FLOAT32_TOLERANCE * max(1.0, check.ref_max_abs)


@pytest.mark.parametrize("kernels", ["torch", pytest.param("triton", marks=interpreted)])
def test_the_two_branch_step_gives_the_one_branch_steps_logits(checkpoints, kernels):
    """The attention chain and the MLP chain apart (as on two graph streams, here one after the other)
    against the attention kernel that also does the MLP's bias + GELU."""
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32, kernels=kernels)
    ids = prompt_ids(2, 10, seed=3)
    logits = []
    for branches in (False, True):
        decoder = GreedyDecoder(model, batch=2, prompt_len=10, new_tokens=3, splits=2, branches=branches)
        decoder.capture(ids)
        decoder.rewind()
        decoder.step()
        logits.append(decoder.logits)
        assert decoder.branch_status == ("in order" if branches else "off")
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=0)


def test_the_out_projection_and_mlp_down_weights_are_views_of_one_joined_weight(checkpoints):
    from safetensors.torch import load_file

    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    state = load_file(str(checkpoints["tiny-par"] / "model.safetensors"))
    joined = model.output_weight(model.layers[1])  # (h, h + 4h)
    assert joined is not None and joined.shape == (64, 64 + 256)
    assert torch.equal(joined[:, :64], state["gpt_neox.layers.1.attention.dense.weight"].float())
    assert torch.equal(joined[:, 64:], state["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"].float())


def test_a_layer_whose_weights_were_unpacked_decodes_through_two_output_gemms(checkpoints):
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    ids = prompt_ids(2, 12, seed=6)
    joined = greedy(model, ids, 5)
    down = model.layers[0].mlp.mlp_down
    down.weight = torch.nn.Parameter(down.weight.detach().clone(), requires_grad=False)  # as .to(device) would
    assert model.output_weight(model.layers[0]) is None
    assert greedy(model, ids, 5) == joined


# ---- the checks can fail ------------------------------------------------------------------------
def test_logits_check_fails_when_one_layers_out_projection_is_perturbed(checkpoints):
    ids = prompt_ids(2, 16)
    with torch.no_grad():
        expected = transformers_model(checkpoints["tiny-par"])(ids).logits
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    assert compare_logits(expected, prefill_logits(model, ids), "clean").passed
    with torch.no_grad():
        weight = model.layers[1].attention.out_projection.weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    assert not compare_logits(expected, prefill_logits(model, ids), "perturbed").passed


def test_logits_and_token_checks_fail_when_the_qkv_head_layout_is_swapped(checkpoints):
    """Loading transformers' [heads, 3, d] rows as if they were [3, heads, d] (Megatron's unpacked order)."""
    checkpoint = checkpoints["tiny-par"]
    prompts = {16: make_prompts(load_tokenizer(checkpoint), 2, 16)}
    reference = build_reference(checkpoint, prompts, [(16, 2)], new_tokens=8, dtype="float32", device=CPU)
    model = load_causal_lm(checkpoint, dtype=torch.float32)
    cfg = model.cfg
    heads, d, h = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
    with torch.no_grad():
        for layer in model.layers:
            qkv = layer.attention.qkv_transform
            qkv.weight.copy_(qkv.weight.view(heads, 3, d, h).transpose(0, 1).reshape(3 * h, h))
            qkv.bias.copy_(qkv.bias.view(heads, 3, d).transpose(0, 1).reshape(3 * h))
    ids = prompts[16].input_ids
    logits_check = compare_logits(reference.logits[16], prefill_logits(model, ids, 16), "swapped")
    assert not logits_check.passed
    generation = reference.generations[(16, 2)]
    tokens = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, greedy(model, ids, 8),
                          noise=0.0)
    assert not tokens.passed


# ---- the fused kernels (Triton's interpreter) against plain torch --------------------------------
def norm(h: int, seed: int) -> torch.nn.LayerNorm:
    layer = torch.nn.LayerNorm(h)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(1 + 0.3 * torch.randn(h, generator=gen))
        layer.bias.copy_(0.3 * torch.randn(h, generator=gen))
    return layer


@interpreted
@pytest.mark.parametrize("adds", [0, 1, 2])
@pytest.mark.parametrize("norms", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_residual_norms_kernel_equals_biased_adds_then_layer_norms(adds, norms, dtype):
    h, rows = 96, 3  # h not a power of two: the row is masked
    gen = torch.Generator().manual_seed(adds * 10 + norms)
    x = torch.randn(rows, h, generator=gen).to(dtype)
    terms = tuple(torch.randn(rows, h, generator=gen).to(dtype) for _ in range(adds))
    biases = (torch.randn(h, generator=gen).to(dtype), None)[:adds]  # the second add without a bias
    layers = tuple(norm(h, i).to(dtype) for i in range(norms))
    x_torch, x_triton = x.clone(), x.clone()
    with torch.no_grad():
        expected = K.residual_norms(x_torch, terms, layers, biases=biases, backend="torch")
        got = K.residual_norms(x_triton, terms, layers, biases=biases, backend="triton")
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x_triton.float(), x_torch.float(), atol=tolerance, rtol=0)  # the residual stream
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.float(), e.float(), atol=tolerance, rtol=0)


@interpreted
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_kernel_is_the_exact_gelu_of_the_biased_input(with_bias):
    gen = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(2, 1500, generator=gen)  # two column blocks, the second one masked
    bias = torch.randn(1500, generator=gen) if with_bias else None
    expected = torch.nn.functional.gelu(x + bias if with_bias else x)  # approximate="none": erf, as Pythia's
    got = K.bias_gelu(x.clone(), bias, backend="triton")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def attention_case(batch: int, heads: int, d: int, rotary_dims: int, capacity: int, dtype, seed: int = 0):
    from models.layer import rotary_tables

    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, heads * 3 * d, generator=gen).to(dtype)
    bias = (0.3 * torch.randn(heads * 3 * d, generator=gen)).to(dtype)
    k_cache = torch.randn(batch, heads, capacity, d, generator=gen).to(dtype)
    v_cache = torch.randn(batch, heads, capacity, d, generator=gen).to(dtype)
    cos, sin = rotary_tables(capacity, rotary_dims, 10000.0)
    return qkv, bias, k_cache, v_cache, cos, sin


@interpreted
@pytest.mark.parametrize("batch, heads, d, rotary_dims, with_bias",
                         [(1, 2, 40, 10, True), (3, 2, 64, 16, True), (2, 1, 32, 32, False)])
@pytest.mark.parametrize("splits", [1, 3, None])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("tile", [None, MMA_TILE, TMA_TILE], ids=["lanes", "mma", "tma"])
def test_decode_attention_kernel_equals_torch_and_writes_the_new_key_and_value(batch, heads, d, rotary_dims,
                                                                               with_bias, splits, where, tile):
    capacity = 70
    pos = {"first": 0, "middle": 33, "last": capacity - 1}[where]
    qkv, bias, k_cache, v_cache, cos, sin = attention_case(batch, heads, d, rotary_dims, capacity, torch.float32)
    bias = bias if with_bias else None
    plan = K.attention_splits(batch * heads, capacity, d, CPU, count=splits, tile=tile)
    position = torch.tensor(pos)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    expected = K.decode_attention(qkv, bias, k_ref, v_ref, position, cos, sin, heads=heads, scale=d ** -0.5,
                                  splits=plan, backend="torch")
    got = K.decode_attention(qkv, bias, k_cache, v_cache, position, cos, sin, heads=heads, scale=d ** -0.5,
                             splits=plan, backend="triton")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(k_cache, k_ref, atol=1e-6, rtol=0)  # the rotated key at pos, the rest untouched
    torch.testing.assert_close(v_cache, v_ref, atol=1e-6, rtol=0)


@interpreted
@pytest.mark.parametrize("batch, heads, d, splits", [(1, 2, 40, 3), (2, 2, 64, 1)])
@pytest.mark.parametrize("tile", [None, MMA_TILE, TMA_TILE], ids=["lanes", "mma", "tma"])
def test_attention_and_gelu_kernels_write_the_joined_input_of_the_output_gemm(batch, heads, d, splits, tile):
    """Split (combine + GELU in one launch) and direct (GELU alone): [attention | gelu(up + bias)]."""
    capacity, ffn = 50, 4 * heads * d
    qkv, bias, k_cache, v_cache, cos, sin = attention_case(batch, heads, d, 10 if d == 40 else 16, capacity,
                                                           torch.float32, seed=batch)
    gen = torch.Generator().manual_seed(7)
    up, up_bias = torch.randn(batch, ffn, generator=gen), torch.randn(ffn, generator=gen)
    plan = K.attention_splits(batch * heads, capacity, d, CPU, count=splits, tile=tile)
    pos = torch.tensor(capacity - 9)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    expected = K.decode_attention_and_gelu(qkv, bias, k_ref, v_ref, pos, cos, sin, up, up_bias, heads=heads,
                                           scale=d ** -0.5, splits=plan, backend="torch")
    got = K.decode_attention_and_gelu(qkv, bias, k_cache, v_cache, pos, cos, sin, up, up_bias, heads=heads,
                                      scale=d ** -0.5, splits=plan, backend="triton")
    assert got.shape == (batch, heads * d + ffn)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(k_cache, k_ref, atol=1e-6, rtol=0)


@interpreted
@pytest.mark.parametrize("tile", [None, MMA_TILE], ids=["lanes", "mma"])
def test_decode_attention_kernel_reads_no_cache_position_past_pos(tile):
    """NaN beyond pos: the torch path would need the zeroed cache (0 x NaN), the kernel never loads there
    (nor, on the tensor cores, at pos: the new key comes from registers)."""
    qkv, bias, k_cache, v_cache, cos, sin = attention_case(2, 2, 64, 16, 96, torch.float16, seed=3)
    pos = torch.tensor(40)
    k_clean, v_clean = k_cache.clone(), v_cache.clone()
    k_clean[:, :, 41:] = 0
    v_clean[:, :, 41:] = 0
    k_cache[:, :, 41:] = float("nan")
    v_cache[:, :, 41:] = float("nan")
    if tile is not None:  # the slot at pos holds whatever was there before the step writes it
        k_cache[:, :, 40] = float("nan")
        v_cache[:, :, 40] = float("nan")
    plan = K.attention_splits(4, 96, 64, CPU, count=4, tile=tile)  # splits 2 and 3 lie wholly past pos
    expected = K.decode_attention(qkv, bias, k_clean, v_clean, pos, cos, sin, heads=2, scale=0.125, splits=plan,
                                  backend="torch")
    got = K.decode_attention(qkv, bias, k_cache, v_cache, pos, cos, sin, heads=2, scale=0.125, splits=plan,
                             backend="triton")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-3, rtol=0)


def test_splits_spread_batch_one_over_the_sms_and_leave_a_large_batch_whole(monkeypatch):
    monkeypatch.setattr(K, "program_slots", lambda device: 132)  # an H100/H200's SM count
    one = K.attention_splits(1 * 8, 2048 + 64, 256, CPU)  # pythia-1b at batch 1: 8 heads
    many = K.attention_splits(64 * 8, 2048 + 64, 256, CPU)
    assert 8 * one.count >= 132 and one.count <= K.MAX_SPLITS and not one.direct
    assert many.count == max(K.MIN_SPLITS, -(-(2048 + 64) // K.MAX_SPLIT_KEYS))  # no SM to fill: the key cap
    assert many.keys <= K.MAX_SPLIT_KEYS and K.attention_splits(64 * 8, 160, 256, CPU).count == K.MIN_SPLITS
    for plan in (one, many):
        assert plan.count * plan.keys >= 2048 + 64 and plan.keys % plan.block_n == 0  # every position covered
        assert (plan.count - 1) * plan.keys < 2048 + 64  # and no split wholly past the capacity
    assert K.attention_splits(8, 100, 80, CPU).block_d == 128  # head dim 80 runs masked in a 128 tile


# ---- loading --------------------------------------------------------------------------------------
def test_loader_rejects_a_weight_that_maps_nowhere_and_a_missing_one(checkpoints):
    from safetensors.torch import load_file

    state = load_file(str(checkpoints["tiny-par"] / "model.safetensors"))
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    load_state(model, iter({**state, "gpt_neox.layers.0.attention.masked_bias": torch.tensor(-1e9)}.items()))
    with pytest.raises(ConfigError, match="maps to no parameter"):
        load_state(model, iter({**state, "gpt_neox.layers.0.attention.rotary.weight": torch.zeros(2)}.items()))
    without = {k: v for k, v in state.items() if "dense_4h_to_h.bias" not in k}
    with pytest.raises(ConfigError, match="has no weight for layers.0.mlp.mlp_down.bias"):
        load_state(model, iter(without.items()))


def test_the_model_refuses_what_gpt_neox_is_not():
    with pytest.raises(ConfigError, match="activation"):
        NeoXCausalLM(load_config("llama-2-7b-like"), device="meta")
    engine = get_engine("neox-graph")
    assert not engine.shape_support(load_config("llama-2-7b-like"), dtype="float16", tensor_parallel=1,
                                    max_context=128).ok
    refused = engine.shape_support(load_config("pythia-1b"), dtype="float16", tensor_parallel=2, max_context=128)
    assert not refused.ok and "one GPU" in refused.reason


# ---- torch.compile and its fallback -------------------------------------------------------------
def test_a_failing_compile_falls_back_to_the_plain_step_and_says_so(checkpoints, monkeypatch):
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    ids = prompt_ids(2, 12)
    plain = greedy(model, ids, 5)

    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor could not lower this (doctored)")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    decoder = GreedyDecoder(model, batch=2, prompt_len=12, new_tokens=5, banned_token=0, compile=True)
    decoder.capture(ids)
    assert decoder.compile_status.startswith("fell back to the plain step: RuntimeError: inductor could not")
    assert decoder.generate(ids).tolist() == plain


@pytest.mark.slow  # inductor compiles C++ for the CPU: half a minute; the fallback tests below stay quick
def test_the_compiled_head_and_tail_give_the_plain_steps_tokens(checkpoints):
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)
    ids = prompt_ids(2, 12, seed=5)
    decoder = GreedyDecoder(model, batch=2, prompt_len=12, new_tokens=5, banned_token=0, compile=True)
    decoder.capture(ids)
    assert decoder.compile_status == "on"
    assert decoder.generate(ids).tolist() == greedy(model, ids, 5)


# ---- the engine through the bench ---------------------------------------------------------------
def bench_spec(checkpoints, out: Path, engines: tuple[str, ...]) -> BenchSpec:
    return BenchSpec(models=(str(checkpoints["tiny-par"]),), engines=engines, batches=(1, 2), prompt_lens=(12, 20),
                     new_tokens=6, repeats=2, warmup_s=0, out=out, device="cpu")


def test_engine_rows_through_the_bench_pass_the_logits_and_token_checks(checkpoints, tmp_path):
    outcome = run_bench(bench_spec(checkpoints, tmp_path, ("hf", "neox-graph")), log=lambda _: None, progress=False)
    ours = [r for r in outcome.rows if r["engine"] == "neox-graph"]
    assert len(ours) == 4 and {r["status"] for r in ours} == {"ok"}, [r["reason"] for r in ours]
    for r in ours:
        assert r["logits_check"] == "pass" and r["token_check"] == "pass" and r["tokens_match"]
        assert r["logits_max_abs_diff"] <= FLOAT32_TOLERANCE and r["logits_check_method"].startswith("prefill")
        assert r["tokens_generated"] == 6 and r["decode_steps"] == 2 * 5 and r["decode_floor_ms"] > 0
        assert "CUDA graph replay" in r["timing_method"] and r["compute_dtype"] == "float32"


def test_the_bench_marks_an_engine_with_a_doctored_weight_a_mismatch(checkpoints, tmp_path, monkeypatch):
    import inference.engines.graph as graph_engine

    def doctored(*args, **kwargs):
        model = load_causal_lm(*args, **kwargs)
        with torch.no_grad():
            model.layers[0].attention.out_projection.weight.mul_(-4.0)
        return model

    monkeypatch.setattr(graph_engine, "load_causal_lm", doctored)
    outcome = run_bench(bench_spec(checkpoints, tmp_path, ("neox-graph",)), log=lambda _: None, progress=False)
    assert {r["status"] for r in outcome.rows} == {"mismatch"}
    assert all(r["logits_check"] == "fail" and "logits differ" in r["reason"] for r in outcome.rows)


def test_a_compile_engine_row_says_when_compile_fell_back(checkpoints, tmp_path, monkeypatch):
    import inference.graph_decoder as decoder_module

    def broken(fn, **kwargs):
        return lambda *a, **k: (_ for _ in ()).throw(RuntimeError("doctored compile failure"))

    monkeypatch.setattr(decoder_module.torch, "compile", broken)
    spec = BenchSpec(models=(str(checkpoints["tiny-par"]),), engines=("neox-graph-compile",), batches=(1,),
                     prompt_lens=(12,), new_tokens=4, repeats=1, warmup_s=0, out=tmp_path, device="cpu")
    (row,) = run_bench(spec, log=lambda _: None, progress=False).rows
    assert row["status"] == "ok" and row["token_check"] == "pass"
    assert row["reason"].startswith("torch.compile fell back to the plain step: RuntimeError: doctored")


# ---- what holds a step back, and the GPU benchmark's wiring --------------------------------------
def test_step_kernels_are_classed_and_the_largest_excess_is_named():
    import pandas as pd

    names = ["nvjet_hsh_64x8_64x16_2x1_v_bz_TNT", "sm90_xmma_gemm_f16f16_f32", "_decode_attention_kernel",
             "_join_kernel", "_residual_norms_kernel", "void at::native::reduce_kernel<ArgMaxOps>",
             "triton_poi_fused_index_copy_0"]
    assert [kernel_class(n) for n in names] == ["gemm", "gemm", "attention", "other", "norm", "other", "other"]
    kernels = pd.DataFrame({"name": names, "dur_us": [300.0, 100.0, 23.0, 3.0, 2.0, 4.0, 2.0],
                            "cls": [kernel_class(n) for n in names]})
    summary = summarize_kernels(kernels, "one graph replay")
    assert summary.count == 7 and summary.min_us == 2.0 and summary.by_class["gemm"]["us"] == 400.0
    # 1 TB/s: 300 MB of weights = 0.3 ms against 0.4 ms of GEMMs; 20 MB of KV = 0.02 ms against 0.023 ms
    why = holds_back(0.45, summary, weight_bytes=300_000_000, kv_bytes=20_000_000, bandwidth_tbps=1.0)
    assert why["holds_back"].startswith("GEMV bandwidth (+0.100 ms)")
    assert why["launch_floor_ms"] == pytest.approx(7 * 2.0 / 1e3) and why["gemv_tbps"] == pytest.approx(0.75)
    assert why["launch_gaps_ms"] == pytest.approx(0.45 - 0.434)


def test_the_decode_benchmark_script_runs_on_cpu_and_writes_json_and_csv(checkpoints, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "scripts" / "bench_decode.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = tmp_path / "tiny-script.yaml"
    config.write_text(TINY.format(name="tiny-script", h=64, extra=""))
    code = script.main(["--out", str(tmp_path / "out"), "--models", str(config), "--batches", "1,2",
                        "--contexts", "8,16", "--new-tokens", "4", "--repeats", "1", "--device", "cpu",
                        "--checkpoints", str(tmp_path / "ckpt")])
    assert code == 0
    record = json.loads((tmp_path / "out" / "decode.json").read_text())
    assert record["models"][0]["hf_check"]["passed"] and record["environment"]["git_sha"]
    rows = record["rows"]
    assert [(r["batch"], r["prompt_len"]) for r in rows] == [(1, 8), (2, 8), (1, 16), (2, 16)]
    for r in rows:
        assert r["status"] == "ok" and r["graph_check"]["passed"] and r["steps_timed"] == 3
        assert r["step_ms"] > 0 and r["floor_ms"] > 0 and r["prefill_ms"] > 0 and r["graph"] is False
    assert len((tmp_path / "out" / "decode.csv").read_text().splitlines()) == 5


def test_the_qkv_gemm_goes_before_the_fork_at_batch_one_by_default(checkpoints):
    model = load_causal_lm(checkpoints["tiny-par"], dtype=torch.float32)

    def order(batch, **options):
        return GreedyDecoder(model, batch=batch, prompt_len=8, new_tokens=4, branches=True, **options).qkv_first

    assert order(1) and not order(2) and not order(16)  # measured at batch 1 only (decode-defaults-1f9c94d)
    assert not order(1, qkv_first=False) and order(2, qkv_first=True)
    assert not GreedyDecoder(model, batch=1, prompt_len=8, new_tokens=4, branches=False).qkv_first  # one stream


def test_attention_tiles_parse_and_a_bad_one_names_the_form():
    assert K.parse_tile("32x4x3xmma") == K.AttentionTile(32, 4, 3, mma=True)
    assert K.parse_tile("16x4x3").name == "lane_n16_w4_s3"
    assert K.parse_tile("64x4x2xmmaxtma") == K.AttentionTile(64, 4, 2, mma=True, tma=True)
    assert K.parse_tile("64x4x2xmmaxtma").name == "mma_n64_w4_s2_tma"
    for bad in ("16x4", "24x4x3", "8x4x3xmma", "16x4x3xfast", "16x4x3xtma"):
        with pytest.raises(ValueError, match="attention tile"):
            K.parse_tile(bad)
    plan = K.attention_splits(8, 2048 + 32, 256, CPU, tile=K.parse_tile("32x4x3xmma"))
    assert plan.mma and plan.block_n == 32 and plan.keys % 32 == 0 and plan.tile == K.parse_tile("32x4x3xmma")


def test_the_attention_tile_follows_the_measured_winner_by_batch_and_cache_length():
    def tile(head_dim, heads, batch, prompt):
        return K.attention_splits(batch * heads, prompt + 32, head_dim, CPU).tile.name

    # the rules' pick per measured row: the H200 sweep's fastest tile or within 2% of it (decode-tiles-ccd6089/tune)
    for batch, prompt in ((1, 128), (1, 2048)):
        assert tile(256, 8, batch, prompt) == "mma_n32_w4_s3" and tile(80, 32, batch, prompt) == "mma_n64_w4_s3"
    for batch, prompt in ((16, 128), (16, 2048), (64, 128), (64, 2048)):
        assert tile(256, 8, batch, prompt) == "mma_n32_w4_s2"  # b64 p2048 loses 0.8% to s3: one rule instead
    assert tile(80, 32, 16, 128) == tile(80, 32, 64, 128) == "mma_n32_w4_s3"  # a short cache: 32 keys
    assert tile(80, 32, 16, 2048) == "mma_n64_w4_s2" and tile(80, 32, 64, 2048) == "mma_n64_w4_s3"
    # head dims without a measured rule keep the lane table; an explicit table or tile wins over the rules
    assert tile(64, 16, 16, 2048) == K.LANE_TILES[64].name
    assert K.attention_tile(80, K.LANE_TILES, rows_x_heads=2048, capacity=4096) == K.LANE_TILES[128]
    assert K.attention_splits(512, 2080, 80, CPU, tile=K.parse_tile("16x4x3")).tile.name == "lane_n16_w4_s3"
    # a rule's bounds are inclusive, and read in order
    rule = K.TileRule(K.AttentionTile(32, 4, 3), most_rows_x_heads=32, most_capacity=512)
    assert rule.holds(32, 512) and not rule.holds(33, 512) and not rule.holds(32, 513)
    # batch 1 of the real head counts falls under each head dim's first rule, at a short and a long cache
    for block_d, heads in ((256, 8), (128, 32)):
        assert all(K.ATTENTION_TILE_RULES[block_d][0].holds(heads, capacity) for capacity in (160, 2080, 4128))
        assert not K.ATTENTION_TILE_RULES[block_d][0].holds(16 * heads, 2080)


def test_two_streams_only_where_the_kv_cache_read_is_below_the_weight_read():
    from inference.graph_decoder import two_streams_pay
    from models import load_config
    for name in ("pythia-1b", "pythia-2.8b"):  # as measured on an H200 (docstring): long context at b=16 one stream
        cfg = load_config(name)
        assert two_streams_pay(cfg, batch=1, capacity=2048 + 32) and two_streams_pay(cfg, batch=16, capacity=160)
        assert not two_streams_pay(cfg, batch=16, capacity=2048 + 32)
    # the boundary: the KV read of a layer equals its weight read at b * capacity * 2 * h = 4h^2 + 8h^2
    cfg = load_config("pythia-1b")
    edge = (4 * 2048 * 2048 + 2 * 2048 * 8192) // (2 * 8 * 256)  # rows x positions at equality
    assert two_streams_pay(cfg, batch=1, capacity=edge - 1) and not two_streams_pay(cfg, batch=1, capacity=edge)


def test_dependent_launches_apply_to_cuda_launches_only_and_end_with_their_block(checkpoints):
    from models.decode_kernels import PdlLaunch, _PDL, dependent_launches, pdl_launch
    x = torch.zeros(2)
    assert pdl_launch(x) == PdlLaunch() and pdl_launch(x).options == {}
    with dependent_launches(True, prefetch_tiles=3):
        assert _PDL.get() == PdlLaunch(True, late=False, prefetch=3) and _PDL.get().options == {"launch_pdl": True}
        assert pdl_launch(x) == PdlLaunch()  # a CPU tensor: the interpreter has no grid dependency control
        with dependent_launches(False, late=True):
            assert _PDL.get() == PdlLaunch()  # off: no prefetch, no late trigger
        assert _PDL.get().prefetch == 3
    assert _PDL.get() == PdlLaunch()
    # asked for on a CPU, the decoder says it is off and decodes as without
    model = load_causal_lm(checkpoints["tiny-par"], device="cpu", dtype=torch.float32)
    ids = prompt_ids(2, 9)
    runs = []
    for pdl in (False, True):
        decoder = GreedyDecoder(model, batch=2, prompt_len=9, new_tokens=4, pdl=pdl)
        assert decoder.pdl_status == "off" and decoder.pdl is False
        runs.append(decoder.generate(ids).tolist())
    assert runs[0] == runs[1]


# ---- on the GPU machine (pytest -m gpu) -----------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_on_gpu_the_engine_passes_both_checks_through_the_bench(tmp_path):
    (tmp_path / "tiny-gpu.yaml").write_text(TINY.format(name="tiny-gpu", h=256, extra=""))
    spec = BenchSpec(models=(str(tmp_path / "tiny-gpu.yaml"),), engines=("hf", "neox-graph"), batches=(1, 3),
                     prompt_lens=(12, 200), new_tokens=8, repeats=2, warmup_s=0, out=tmp_path / "out",
                     checkpoints=tmp_path / "ckpt")
    ours = [r for r in run_bench(spec, log=lambda _: None, progress=False).rows
            if r["engine"] == "neox-graph"]
    assert len(ours) == 4
    for r in ours:
        assert r["status"] == "ok", r["reason"]
        assert r["logits_check"] == "pass" and r["token_check"] == "pass" and r["compute_dtype"] == "float16"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch, splits, pdl, tile", [(1, None, False, None), (2, 1, False, None), (3, 5, False, None),
                                                     (1, None, True, None), (3, 5, True, None),
                                                     (1, None, False, "32x4x3xmma"), (3, 5, False, "16x4x3xmma")])
def test_on_gpu_the_captured_step_equals_the_plain_torch_step(tmp_path, batch, splits, pdl, tile):
    from inference.step_kernels import trace_step

    (tmp_path / "tiny-gpu.yaml").write_text(TINY.format(name="tiny-gpu", h=160, extra=""))  # h/a = 40
    checkpoint = ensure_checkpoint(resolve_model(str(tmp_path / "tiny-gpu.yaml")), tmp_path / "ckpt",
                                   device=torch.device("cuda"), log=lambda _: None)
    model = load_causal_lm(checkpoint, device="cuda", dtype=torch.float16)
    ids = prompt_ids(batch, 150).cuda()
    decoder = GreedyDecoder(model, batch=batch, prompt_len=150, new_tokens=8, banned_token=0, splits=splits,
                            pdl=pdl, attention_tile=K.parse_tile(tile) if tile else None)
    decoder.capture(ids)
    assert decoder.splits.mma == (tile is not None)
    assert decoder.graph is not None and decoder.pdl_status == ("on" if pdl else "off"), decoder.pdl_status
    for _ in range(3):  # along the decode: positions 150, 151, 152
        expected = decoder.reference_step().float()
        decoder.step()
        check = compare_logits(expected[:, None], decoder.logits.float()[:, None], "graph vs torch")
        assert check.passed and check.max_abs_diff <= 0.01 * check.ref_max_abs, check
    decoder.rewind()
    assert len(trace_step(decoder.step, torch.device("cuda"))) > 0  # the profiler sees the replay's kernels

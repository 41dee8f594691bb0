"""Batch invariance (issue 11): the invariant kernels against torch and against themselves across M, the layer
switch, the op-by-op tape, the analysis, the CLIs and the engines' worker.

On a CPU the Triton kernels run in Triton's interpreter (models/invariant/backend.py): the same tiling,
masking and reduction order as on the GPU, with numpy standing in for the tensor-core MMA, on small shapes.
Tests marked `gpu` run the compiled kernels on CUDA at the layer's real shapes and skip without a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the batch-invariant kernels need Triton (pip install triton)")

from models import load_config  # noqa: E402
from models.invariant import (InvariantAttention, InvariantLayerNorm, InvariantLinear, config_for,  # noqa: E402
                              invariant_attention, invariant_bmm, invariant_layer_norm, invariant_linear,
                              invariant_matmul, invariant_rms_norm, make_batch_invariant)
from models.layer import build_layer  # noqa: E402
from cli.main import profiler_main  # noqa: E402
from profiler.invariance import analysis, files, matmul_bench, shapes  # noqa: E402
from profiler.invariance.layer_check import LayerCheckSpec, check_layer  # noqa: E402
from profiler.invariance.tape import StepComparer, first_difference, record_regions  # noqa: E402

from models.invariant.backend import available  # noqa: E402
from models.invariant.tiles import plan_for  # noqa: E402

import mii_standin  # noqa: E402

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="compiled Triton kernels need a CUDA GPU")
INTERPRETER = available("cpu")
interpreted = pytest.mark.skipif(INTERPRETER is not None, reason=str(INTERPRETER))  # kernels on CPU tensors
TINY = """\
name: {name}
hidden_size: {h}
num_attention_heads: 4
num_layers: 2
vocab_size: 500
padded_vocab_size: 512
max_position_embeddings: 256
{extra}"""


def tiny_config(tmp_path: Path, name: str = "tiny-inv", h: int = 64, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(name=name, h=h, extra=extra))
    return path


def operands(m, k, n, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=gen) * 0.1).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=gen).to(device=device, dtype=dtype)
    return x, w, b


def ulps_of(reference: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of `dtype` at each reference value: the rounding step of the output."""
    return torch.finfo(dtype).eps * reference.abs().clamp_min(torch.finfo(dtype).tiny)


# ---- the matmul, in the interpreter ------------------------------------------------------------------------
@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_invariant_linear_matches_torch_at_odd_shapes(dtype):
    x, w, b = operands(37, 96, 200, dtype)  # K not a multiple of BLOCK_K, N not of BLOCK_N, M not of BLOCK_M
    out = invariant_linear(x, w, b)
    reference = F.linear(x.double(), w.double(), b.double())
    assert out.shape == (37, 200) and out.dtype == dtype
    # one rounding of an fp32 accumulation: at most one ulp of the output type away from the exact result
    assert ((out.double() - reference).abs() <= ulps_of(reference, dtype).double() + 1e-5).all()


def bucket_and_tile_edges(n: int, k: int, dtype: torch.dtype, top: int) -> list[int]:
    """M on either side of every edge the plan has up to `top`: its buckets' ends and their tiles' row counts."""
    edges = {1, 2, top - 1, top}
    for bucket in plan_for(n, k, dtype).buckets:
        block_m = bucket.configs[0].block_m
        for edge in filter(None, (bucket.max_m, block_m, 2 * block_m)):
            edges |= {edge - 1, edge, edge + 1}
    return sorted(m for m in edges if 1 <= m <= top)


@interpreted
@pytest.mark.parametrize("which", ["edges", pytest.param("every", marks=pytest.mark.slow)])
def test_row_is_bitwise_the_same_for_every_m_and_alone(which):
    x, w, b = operands(140, 80, 72, torch.bfloat16)
    full = invariant_linear(x, w, b)
    # across the bucket edge at 64 and the 128-row tile edge of the bf16 configuration: the M either side of each
    # edge (seconds), or every M to 140 (the interpreter's half a minute)
    ms = bucket_and_tile_edges(72, 80, torch.bfloat16, 140) if which == "edges" else range(1, 141)
    for m in ms:
        assert torch.equal(invariant_linear(x[:m], w, b), full[:m]), f"M={m}"
    for r in (0, 1, 63, 127, 128, 139):
        assert torch.equal(invariant_linear(x[r:r + 1], w, b), full[r:r + 1]), f"row {r} alone"


@interpreted
def test_a_row_does_not_depend_on_its_place_among_other_rows():
    x, w, _ = operands(50, 64, 40, torch.bfloat16)
    row = x[7:8]
    alone = invariant_linear(row, w)
    for place in (0, 13, 49):
        batch = torch.cat([x[:place], row, x[place:49]])
        assert torch.equal(invariant_linear(batch, w)[place], alone[0]), f"at place {place}"


@interpreted
def test_leading_dims_are_tokens_and_transposed_weights_are_read_through_their_strides():
    x, w, b = operands(24, 32, 48, torch.float32)
    three_d = invariant_linear(x.view(2, 12, 32), w, b)
    assert three_d.shape == (2, 12, 48) and torch.equal(three_d.view(24, 48), invariant_linear(x, w, b))
    assert torch.equal(invariant_matmul(x, w.t().contiguous(), b), invariant_linear(x, w, b))


@interpreted
def test_bmm_is_invariant_in_the_batch_count_and_matches_torch_with_its_scale():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(6, 40, 24, generator=gen), torch.randn(6, 40, 24, generator=gen)
    scores = invariant_bmm(q, k.transpose(1, 2), alpha=0.125)
    assert torch.allclose(scores, 0.125 * torch.bmm(q, k.transpose(1, 2)), atol=1e-5)
    for batch in (1, 2, 5):
        assert torch.equal(invariant_bmm(q[:batch], k[:batch].transpose(1, 2), alpha=0.125), scores[:batch])


def test_configuration_depends_on_n_k_and_dtype_only():
    first = config_for(2048, 2048, torch.bfloat16)
    assert first == config_for(2048, 2048, torch.bfloat16) and first.block_k == 64
    assert config_for(8192, 2048, torch.bfloat16).block_n >= first.block_n
    assert "block_m" in first.to_dict() and first.label.startswith(f"{first.block_m}x")


def test_bad_operands_are_refused_with_the_reason():
    x, w, _ = operands(4, 8, 6, torch.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        invariant_matmul(x, w)
    with pytest.raises(TypeError, match="share one of"):
        invariant_linear(x, w.double())


# ---- norms and attention, in the interpreter --------------------------------------------------------------
@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_match_torch_and_are_invariant(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, 100, generator=gen).to(dtype)
    w, b = (torch.randn(100, generator=gen).to(dtype) for _ in range(2))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    ln = invariant_layer_norm(x, w, b, 1e-5)
    assert (ln.float() - F.layer_norm(x.float(), (100,), w.float(), b.float(), 1e-5)).abs().max() < tol
    rms = invariant_rms_norm(x, w, 1e-6)
    assert (rms.float() - F.rms_norm(x.float(), (100,), w.float(), 1e-6)).abs().max() < tol
    assert torch.equal(invariant_layer_norm(x[3:4], w, b, 1e-5), ln[3:4])
    assert torch.equal(invariant_rms_norm(x[:1], w, 1e-6), rms[:1])


@interpreted
@pytest.mark.parametrize("head_dim", [16, 24])
def test_attention_matches_sdpa_and_is_invariant_in_the_batch(head_dim):
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(3, 37, 2, 3, head_dim, generator=gen)  # packed as the layer has it: views, not copies
    q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
    out = invariant_attention(q, k, v)
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.shape == q.shape and (out - reference).abs().max() < 1e-5
    for index in range(3):
        assert torch.equal(invariant_attention(q[index:index + 1], k[index:index + 1], v[index:index + 1]),
                           out[index:index + 1])


# ---- the layer switch -------------------------------------------------------------------------------------
def small_config(attention="sdpa", **changes):
    cfg = load_config("pythia-160m", seq_length=16, attention=attention, dtype="float32")
    return cfg.replace(hidden_size=64, num_attention_heads=4, vocab_size=500, padded_vocab_size=512, **changes)


def test_switch_keeps_parameters_and_leaves_the_original_alone():
    stack = build_layer(small_config(), include_logits=True)
    invariant = make_batch_invariant(stack)
    assert stack.state_dict().keys() == invariant.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(stack.state_dict().values(), invariant.state_dict().values()))
    assert type(stack.layer.attention.qkv_transform) is torch.nn.Linear  # a copy was switched, not the original
    assert isinstance(invariant.layer.attention.qkv_transform, InvariantLinear)
    assert isinstance(invariant.logit_layer.logits, InvariantLinear)
    assert isinstance(invariant.layer.input_norm, InvariantLayerNorm)
    assert isinstance(invariant.layer.attention, InvariantAttention)
    assert not invariant.training


@interpreted
@pytest.mark.parametrize("attention, extra", [
    ("sdpa", {}),
    # eager attention's score, softmax and value ops are each checked invariant by test_each_op_... (quick)
    pytest.param("eager", {}, marks=pytest.mark.slow),
    ("sdpa", {"activation": "swiglu", "norm": "rmsnorm", "bias": False, "intermediate_size": 96,
              "residual": "sequential"})])
def test_invariant_layer_matches_the_default_and_is_bitwise_invariant(attention, extra):
    cfg = small_config(attention, **extra)
    stack = build_layer(cfg, include_logits=True)
    invariant = make_batch_invariant(stack)
    x = torch.randn(3, 16, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, reference = invariant(x), stack(x)
        assert (out - reference).abs().max() < 1e-4
        for index in range(3):
            assert torch.equal(invariant(x[index:index + 1])[0], out[index])


def test_invariant_kernels_refuse_to_run_where_gradients_are_wanted():
    invariant = make_batch_invariant(build_layer(small_config()))
    with pytest.raises(RuntimeError, match="forward-only"):
        invariant(torch.randn(1, 16, 64))


# ---- the op-by-op tape ------------------------------------------------------------------------------------
class BatchMeanLeak(torch.nn.Module):
    """A real non-invariant step: every row gets the batch's mean added (as a batch-dependent reduction does)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out + 1e-3 * out.mean(dim=0, keepdim=True)


def test_tape_names_every_region_and_finds_the_first_step_that_differs():
    import models.layer as layer_module

    stack = build_layer(small_config(), include_logits=True).eval()
    stack.layer.mlp.mlp_down = BatchMeanLeak(stack.layer.mlp.mlp_down)
    original_region = layer_module.region
    gen = torch.Generator().manual_seed(5)
    prompt, others = torch.randn(1, 16, 64, generator=gen), torch.randn(2, 16, 64, generator=gen)
    reference = StepComparer()
    with torch.no_grad(), record_regions(reference):
        stack(prompt)
    assert layer_module.region is original_region  # restored
    names = [s.name for s in reference.steps]
    assert names[:3] == ["norm", "qkv_transform", "rotary"] and names[-1] == "logits"
    assert reference.steps[2].shape == (16, 3 * 64)  # rotary wrote into the QKV tensor: that tensor is its output
    comparer = StepComparer(reference.steps, batch=3, position=2)
    with torch.no_grad(), record_regions(comparer):
        stack(torch.cat([others, prompt]))
    first = first_difference(comparer.rows)
    assert first["step"] == "mlp_down" and first["max_abs_diff"] > 0
    assert all(r["equal"] for r in comparer.rows[:first["index"]])


@interpreted
@pytest.mark.slow  # the interpreter's latency loop; the CLI test below checks the same outputs and steps, quickly
def test_layer_check_reports_bitwise_invariance_of_the_invariant_layer():
    spec = LayerCheckSpec(small_config(), batches=(3,), measure_latency=True, warmup_ms=0.0, rep_ms=0.0,
                          min_reps=1)
    result = check_layer(spec, device=torch.device("cpu"), dtype=torch.float32)
    invariant = result.outputs[result.outputs["kernels"] == "invariant"]
    assert len(invariant) == 2 and invariant["output_equal"].all() and invariant["greedy_tokens_equal"].all()
    assert (invariant["first_differing_step"] == "").all()
    assert set(result.latency["kernels"]) == {"default", "invariant"} and (result.latency["median_us"] > 0).all()
    breaks = analysis.step_breaks(result.steps)
    assert breaks.loc[breaks["kernels"] == "invariant", "runs_differing"].sum() == 0
    assert (breaks.groupby("kernels")["index"].apply(lambda s: s.is_monotonic_increasing)).all()


@interpreted
@pytest.mark.parametrize("attention, extra", [("eager", {}), ("sdpa", {"activation": "swiglu", "norm": "rmsnorm",
                                                                      "intermediate_size": 96, "bias": False})])
def test_each_op_on_the_same_input_tells_which_ops_break_invariance(attention, extra):
    from profiler.invariance.ops import check_ops

    default = build_layer(small_config(attention, **extra), include_logits=True).eval()
    invariant = make_batch_invariant(default)
    default.layer.mlp.mlp_down = BatchMeanLeak(default.layer.mlp.mlp_down)
    ops = check_ops({"default": default, "invariant": invariant}, (2, 3), ("first", "last"),
                    device=torch.device("cpu"), dtype=torch.float32, config_name="small")
    found = analysis.op_findings(ops).set_index(["kernels", "op"])
    expected = {"norm", "qkv_transform", "rotary", "out_projection", "mlp_up", "activation", "mlp_down", "residual",
                "final_norm", "logits"} | ({"attention_score", "softmax", "attention_over_values"}
                                            if attention == "eager" else {"sdpa_attention", "mlp_gate"})
    assert set(found.loc["invariant"].index) == expected and found.loc["invariant", "invariant"].all()
    assert not found.loc[("default", "mlp_down"), "invariant"]  # the leak, caught in the op itself
    assert found.loc[("default", "mlp_down"), "batches_differing"] == "2-3"


# ---- the matmul measurements and the analysis -------------------------------------------------------------
def test_ranges_collapse_a_dense_search():
    assert analysis.ranges([5, 1, 2, 3, 8, 9]) == "1-3, 5, 8-9" and analysis.ranges([]) == ""


def test_shapes_come_from_table_two_and_merge_mlp_up_with_gate():
    llama = shapes.weight_gemm_shapes(load_config("llama-2-7b-like"))
    assert [(s.component, s.n, s.k) for s in llama] == [
        ("qkv_transform", 12288, 4096), ("out_projection", 4096, 4096), ("mlp_up+mlp_gate", 11008, 4096),
        ("mlp_down", 4096, 11008)]
    assert all(not s.bias for s in llama)
    assert shapes.check_tokens()[:3] == (1, 2, 3) and 8192 in shapes.check_tokens() and 3000 in shapes.check_tokens()


@interpreted
def test_invariance_check_and_throughput_rows():
    gemm = [shapes.GemmShape("mlp_up", 72, 80, True)]
    check = matmul_bench.invariance(gemm, range(1, 10), dtype=torch.bfloat16, device=torch.device("cpu"))
    mine = check[check["kernel"] == "invariant"]
    assert len(mine) == 9 and mine["invariant"].all() and (mine["alone_rows"] > 0).all()
    assert (mine["prefix_max_abs_diff"] == 0).all() and (mine["alone_max_abs_diff"] == 0).all()
    summary = analysis.non_invariant_tokens(check).set_index("kernel")
    assert summary.loc["invariant", "m_not_invariant"] == 0
    rate = matmul_bench.throughput(gemm, (1, 4), dtype=torch.float32, device=torch.device("cpu"),
                                   budget=matmul_bench.Budget(0.0, 0.0, 1))
    assert set(rate["kernel"]) == {"torch", "invariant"} and (rate["tflops"] > 0).all()
    assert (rate.loc[rate["kernel"] == "invariant", "max_abs_diff_vs_torch"] < 1e-4).all()
    ratio = analysis.layer_gemm_ratio(rate, tokens=(1, 4))
    assert list(ratio["m"]) == [1, 4] and (ratio["ratio"] > 0).all()


# ---- the CLI ----------------------------------------------------------------------------------------------
@interpreted
def test_cli_matmul_then_layer_then_one_report(tmp_path, capsys):
    config = tiny_config(tmp_path)
    out = tmp_path / "out"
    # the fewest points that still make each part (M=1 timed, prefixes 1..3 checked, one batch at one position)
    assert profiler_main(["invariance", "matmul", "--config", str(config), "--tokens", "1", "--check-tokens", "1,2,3",
                          "--warmup-ms", "0", "--rep-ms", "0", "--out", str(out), "--no-progress"]) == 0
    assert profiler_main(["invariance", "layer", "--config", str(config), "--batch", "2", "--prompt-len", "4",
                          "--positions", "last", "--no-latency", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "throughput ratio invariant/cuBLAS" in printed and "layer: prompt alone vs in a batch" in printed
    frames, runs = files.load([out])
    assert {"throughput", "check", "outputs", "steps"} <= set(frames) and "latency" not in frames  # --no-latency
    invariant = frames["outputs"][frames["outputs"]["kernels"] == "invariant"]
    assert len(invariant) == 1 and invariant["output_equal"].all() and invariant["greedy_tokens_equal"].all()
    breaks = analysis.step_breaks(frames["steps"])
    assert breaks.loc[breaks["kernels"] == "invariant", "runs_differing"].sum() == 0
    assert {"git_sha", "torch", "gpu_name"} <= set(runs["matmul"]["environment"]) and runs["layer"]["batches"] == [2]
    assert pd.read_csv(out / "matmul_invariance.csv").query("kernel == 'invariant'")["invariant"].all()
    html = (out / "report.html").read_text()
    assert "TFLOP/s vs number of tokens" in html and "The layer: one prompt alone" in html
    assert profiler_main(["invariance", "report", str(out), "--out", str(tmp_path / "combined")]) == 0
    assert (tmp_path / "combined" / "report.html").is_file()


@interpreted
def test_cli_matmul_on_a_cpu_says_how_long_before_it_starts_and_keeps_what_it_measured_when_stopped(
        tmp_path, capsys, monkeypatch):
    """Issue 25: on a CPU `invariance matmul` gave no estimate, ran past ten minutes and left nothing when
    stopped. Now it estimates from one probe call first, saves after every part, and Ctrl-C (here raised where
    the check would start) leaves the timed part readable, marked incomplete, with exit 130."""
    config = tiny_config(tmp_path)
    out = tmp_path / "out"

    def stopped(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(matmul_bench, "invariance", stopped)
    code = profiler_main(["invariance", "matmul", "--config", str(config), "--max-tokens", "4", "--tokens", "1",
                          "--warmup-ms", "0", "--rep-ms", "0", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted: what was measured is in" in err
    assert "estimate: about" in err and "calls of the invariant kernel" in err
    frames, runs = files.load([out])
    assert "throughput" in frames and len(frames["throughput"]) > 0 and "check" not in frames
    assert runs["matmul"]["complete"] is False


def test_the_cpu_estimate_counts_every_invariant_call_the_run_makes():
    gemm = [shapes.GemmShape("mlp_up", 64, 32, False), shapes.GemmShape("mlp_down", 32, 64, False)]
    budget = matmul_bench.Budget(0.0, 0.0, 1)
    calls = matmul_bench.invariant_calls(gemm, (1, 2, 4), (1, 2, 3, 4), budget=budget)
    rows = len(matmul_bench._alone_rows(4, (1, 2, 3, 4)))
    # per shape: 3 points x (correctness + warm-up + 1 timed), then the full product, each row alone, each M
    assert len(calls) == 2 * (3 * 3 + 1 + rows + 4)
    assert matmul_bench.invariant_calls(gemm, (1,), (), budget=budget) == [(g, 1) for g in gemm for _ in range(3)]


@interpreted
@pytest.mark.parametrize("args, message", [
    (["invariance", "layer", "--batch", "1,2"], "--batch"),
    (["invariance", "matmul"], "--config"),
    (["invariance", "report", "/nonexistent-dir"], "not a directory"),
    (["invariance", "layer", "--positions", "middle"], "--positions"),
    (["invariance", "matmul", "--config", "pythia-1bb"], "did you mean"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    if "--batch" in args or "--positions" in args:
        args = [*args, "--config", str(tiny_config(tmp_path))]
    assert profiler_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


# ---- engines: transformers in process, MII's worker through a stand-in mii.legacy --------------------------



@pytest.fixture(scope="module")
def engine_job(tmp_path_factory):
    from inference.checkpoints import ensure_checkpoint, resolve_model
    from inference.tokenizer import load_tokenizer, make_prompts

    root = tmp_path_factory.mktemp("engines")
    config = tiny_config(root, name="tiny-engine")
    checkpoint = ensure_checkpoint(resolve_model(str(config)), root / "ckpt", device=torch.device("cpu"),
                                   log=lambda _: None)
    tokenizer = load_tokenizer(checkpoint)
    prompts = make_prompts(tokenizer, 3, 8)
    return {"checkpoint": str(checkpoint), "texts": list(prompts.texts), "input_ids": prompts.input_ids.tolist(),
            "batches": [2, 3], "positions": ["first", "last"], "new_tokens": 3, "dtype": "float32", "modules": True,
            "pad_token_id": tokenizer.pad_token_id, "max_tokens": 256,
            "base": {"model": "tiny-engine", "prompt_len": 8, "new_tokens": 3}, "root": str(root), "config": str(config)}


def _consistent(row: dict) -> None:
    assert row["status"] == "ok"
    assert row["logits_equal"] == (row["logits_max_abs_diff"] == 0)
    assert row["tokens_equal"] == (row["first_token_difference"] == -1)
    assert row["steps_compared"] > 10
    assert (row["first_differing_step"] == "") == (row["steps_differing"] == 0)


def test_transformers_prompt_alone_and_in_batches(engine_job):
    from inference.invariance import run_hf

    rows = []
    run_hf(engine_job, torch.device("cpu"), rows.append)
    assert [(r["batch"], r["position"]) for r in rows] == [(3, "first"), (3, "last"), (2, "first"), (2, "last")]
    for row in rows:
        _consistent(row)
        assert row["engine"] == "hf" and len(row["tokens_alone"].split()) == 3


def test_mii_worker_runs_the_same_comparison_through_the_query_call_chain(engine_job, tmp_path, monkeypatch):
    from inference.invariance import run_mii

    mii_standin.install(tmp_path, monkeypatch)
    rows = []
    run_mii(engine_job, "mii", tmp_path / "logs", rows.append)
    assert len(rows) == 4, (tmp_path / "logs").joinpath("mii-invariance-tiny-engine.log").read_text()
    for row in rows:
        _consistent(row)
        assert row["engine"] == "mii"


def test_inference_cli_writes_rows_and_says_why_mii_cannot_run(engine_job, tmp_path, capsys, monkeypatch):
    from cli.main import inference_main
    from inference.engines.mii import MIIEngine

    monkeypatch.setattr(MIIEngine, "unavailable_reason", lambda self, **_: "deepspeed not installed (stand-in)")
    assert inference_main(["invariance", "--models", engine_job["config"], "--engines", "hf,mii", "--batch", "2",
                           "--prompt-len", "8", "--new-tokens", "2", "--out", str(tmp_path / "out"),
                           "--checkpoints", str(Path(engine_job["root"]) / "ckpt"), "--no-progress"]) == 0
    frame = pd.read_csv(tmp_path / "out" / "engines.csv")
    assert set(frame["status"]) == {"ok", "unavailable"}
    assert frame.loc[frame["engine"] == "mii", "reason"].iloc[0] == "deepspeed not installed (stand-in)"
    assert "engines: prompt alone vs in a batch" in capsys.readouterr().out or (tmp_path / "out" / "report.html").is_file()
    assert profiler_main(["invariance", "report", str(tmp_path / "out"), "--out", str(tmp_path / "out")]) == 0


# ---- the GPU: compiled kernels at the layer's shapes ------------------------------------------------------
@gpu
@needs_cuda
@pytest.mark.parametrize("config", ["pythia-1b"])
def test_gpu_every_m_from_1_to_8192_gives_each_row_bitwise_the_same(config):
    device = torch.device("cuda")
    for gemm in shapes.weight_gemm_shapes(load_config(config)):
        ops = matmul_bench.make_operands(gemm, 8192, dtype=torch.bfloat16, device=device)
        full = invariant_linear(ops.x, ops.weight, ops.bias)
        bad = [m for m in range(1, 8193) if not torch.equal(invariant_linear(ops.x[:m], ops.weight, ops.bias), full[:m])]
        assert not bad, f"{gemm.label}: rows differ at M = {analysis.ranges(bad)}"
        for r in (0, 1, 127, 128, 4095, 8191):
            assert torch.equal(invariant_linear(ops.x[r:r + 1], ops.weight, ops.bias), full[r:r + 1]), f"row {r} alone"


@gpu
@needs_cuda
def test_gpu_a_row_is_the_same_anywhere_in_a_batch():
    x, w, b = operands(300, 2048, 2048, torch.bfloat16, device="cuda")
    alone = invariant_linear(x[5:6], w, b)
    for place in (0, 1, 77, 128, 255, 299):
        batch = torch.cat([x[:place], x[5:6], x[place:299]])
        assert torch.equal(invariant_linear(batch, w, b)[place], alone[0]), f"at place {place}"


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m, k, n", [(1, 2048, 6144), (333, 2048, 8192), (4096, 8192, 2048), (77, 4096, 11008),
                                     (5, 96, 200)])
def test_gpu_matches_torch(dtype, m, k, n):
    x, w, b = operands(m, k, n, dtype, device="cuda")
    out = invariant_linear(x, w, b)
    reference = F.linear(x.double(), w.double(), b.double())
    # fp32 accumulation in another order: a few ulps of the output plus the accumulation's own error
    slack = 4 * ulps_of(reference, dtype).double() + 1e-6 * math.sqrt(k) * reference.abs().max()
    assert ((out.double() - reference).abs() <= slack).all()


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_gpu_attention_matches_sdpa_and_is_invariant_in_the_batch(head_dim):
    qkv = torch.randn(8, 300, 4, 3, head_dim, device="cuda", dtype=torch.bfloat16)
    q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
    out = invariant_attention(q, k, v)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert (out.float() - reference).abs().max() < 2e-2
    for batch in (1, 3):
        assert torch.equal(invariant_attention(q[-batch:], k[-batch:], v[-batch:]), out[-batch:])


@gpu
@needs_cuda
def test_gpu_norms_match_torch_and_are_invariant():
    x = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(2048, device="cuda", dtype=torch.bfloat16), torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    ln = invariant_layer_norm(x, w, b, 1e-5)
    assert (ln.float() - F.layer_norm(x.float(), (2048,), w.float(), b.float(), 1e-5)).abs().max() < 5e-2
    assert torch.equal(invariant_layer_norm(x[100:101], w, b, 1e-5), ln[100:101])


@gpu
@needs_cuda
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gpu_pythia_1b_layer_logits_are_bitwise_invariant_with_the_switch(attention):
    cfg = load_config("pythia-1b", seq_length=128, attention=attention)
    spec = LayerCheckSpec(cfg, batches=(2, 7, 16), kernel_sets=("invariant",), measure_latency=False)
    result = check_layer(spec, device=torch.device("cuda"), dtype=torch.bfloat16)
    assert result.outputs["output_equal"].all(), result.outputs[["batch", "position", "first_differing_step"]]
    assert result.outputs["greedy_tokens_equal"].all()
    assert result.ops["equal"].all(), analysis.op_findings(result.ops)

"""The decode step's Triton GEMMs (models/decode_gemm.py) through Triton's interpreter: equal to a float32
matmul at the shapes' edges (rows past N, K not a whole number of tiles, several x rows), the split-K
reduction deterministic and reset for the next launch, and the shape table deciding what the model runs."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from models import decode_gemm as G
from models.invariant.backend import available

INTERPRETER = available("cpu")
interpreted = pytest.mark.skipif(INTERPRETER is not None, reason=str(INTERPRETER))


def operands(m: int, n: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)


@interpreted
@pytest.mark.parametrize("plan, m, n, k", [
    (G.GemmPlan("gemv", 16, 64, 4, 3), 1, 40, 256),  # the last column block masked
    (G.GemmPlan("gemv", 16, 64, 4, 3), 1, 32, 200),  # K not a whole number of tiles
    (G.GemmPlan("gemv", 8, 64, 4, 3, split=4), 1, 24, 256),
    (G.GemmPlan("dot", 16, 32, 4, 3), 3, 40, 96),
    (G.GemmPlan("dot", 16, 32, 4, 3, split=2), 16, 48, 128),
    (G.GemmPlan("wdot", 64, 32, 4, 3), 3, 100, 96),  # the weight's tile on the left; rows past N masked
    (G.GemmPlan("wdot", 64, 32, 4, 3, split=2), 16, 64, 128),
    (G.GemmPlan("wdot", 64, 32, 4, 3), 5, 72, 80),  # K not a whole number of tiles
    (G.GemmPlan("dot", 16, 32, 4, 3, tma=True), 3, 40, 80),  # TMA: the descriptor reads zeros past N and K
    (G.GemmPlan("wdot", 64, 32, 4, 3, split=2, tma=True), 16, 100, 128),
])
def test_triton_gemms_equal_a_float32_matmul(plan, m, n, k):
    x, w = operands(m, n, k)
    got = G.triton_linear(x, w, plan)
    torch.testing.assert_close(got, x @ w.T, atol=1e-4, rtol=1e-5)


@interpreted
def test_a_split_k_gemm_gives_the_same_bits_at_every_launch_and_leaves_its_counters_at_zero():
    plan = G.GemmPlan("gemv", 8, 64, 4, 3, split=4)
    x, w = operands(1, 24, 256, seed=1)
    first = G.triton_linear(x, w, plan)
    assert torch.equal(G.triton_linear(x, w, plan), first)  # fixed split order, not arrival order
    from models.decode_kernels import counters

    assert int(counters(x.device, 3, "gemm")[:3].abs().sum()) == 0


@interpreted
@pytest.mark.parametrize("split", [1, 2])
def test_the_gemv_epilogue_writes_gelu_of_the_biased_output_into_a_wider_buffer(split):
    from models.decode_kernels import bias_gelu

    x, w = operands(1, 48, 256, seed=2)
    bias = torch.randn(48, generator=torch.Generator().manual_seed(3))
    joined = torch.full((1, 16 + 48), float("nan"))
    G.triton_linear(x, w, G.GemmPlan("gemv", 16, 64, 4, 3, split=split), joined[:, 16:], gelu=True, bias=bias)
    expected = bias_gelu(x @ w.T, bias, backend="torch")
    torch.testing.assert_close(joined[:, 16:], expected, atol=1e-4, rtol=1e-5)
    assert joined[:, :16].isnan().all()  # the attention's half untouched


def test_a_plan_that_does_not_fit_the_shape_is_refused():
    x, w = operands(2, 16, 64)
    with pytest.raises(ValueError, match="does not fit"):
        G.triton_linear(x, w, G.GemmPlan("gemv", 16, 64, 4, 3))  # gemv is one row
    assert not G.fits(G.GemmPlan("dot", 16, 64, 4, 3, split=3), 1, 16, 256)  # 256 / 3 is no whole tile
    assert not G.fits(G.GemmPlan("wdot", 32, 64, 4, 3), 1, 16, 256)  # fewer weight rows than wgmma's 64
    with pytest.raises(ValueError, match="16-byte aligned"):  # a TMA descriptor cannot start mid-line
        G.triton_linear(x[:, 1:], w[:, 1:], G.GemmPlan("dot", 16, 16, 4, 3, tma=True))


def test_the_table_picks_the_entry_whose_rows_hold_m_and_leaves_the_rest_to_cublas(monkeypatch):
    gemv, dot = G.GemmPlan("gemv", 16, 256, 4, 4), G.GemmPlan("dot", 16, 256, 4, 4)
    monkeypatch.setattr(G, "GEMM_TABLE", {(6144, 2048): [(1, 1, gemv), (2, 7, dot), (9, 16, dot)]})
    assert G.gemm_plan(1, 6144, 2048) == gemv
    assert G.gemm_plan(4, 6144, 2048) == dot and G.gemm_plan(16, 6144, 2048) == dot
    assert G.gemm_plan(8, 6144, 2048) is None  # measured slower there: cuBLAS
    assert G.gemm_plan(64, 6144, 2048) is None and G.gemm_plan(1, 2048, 6144) is None


def tiny_model(tmp_path):
    from inference.checkpoints import ensure_checkpoint, resolve_model
    from models.neox_checkpoint import load_causal_lm

    config = tmp_path / "tiny-gemm.yaml"
    config.write_text("name: tiny-gemm\nhidden_size: 64\nnum_attention_heads: 4\nnum_layers: 2\n"
                      "vocab_size: 512\nmax_position_embeddings: 64\n")
    checkpoint = ensure_checkpoint(resolve_model(str(config)), tmp_path / "ckpt", device=torch.device("cpu"),
                                   log=lambda _: None)
    return load_causal_lm(checkpoint, dtype=torch.float32, kernels="triton")


def step_against_torch(model, monkeypatch, table: dict, batch: int = 2, branches: bool | None = None,
                       **layout) -> set:
    """One decode step with `table` as the GEMM table: its logits against the plain-torch step's; returns
    the weight shapes the Triton kernels ran."""
    import models.causal_lm as causal_lm
    from inference.graph_decoder import GreedyDecoder

    monkeypatch.setattr(G, "GEMM_TABLE", table)
    used = []
    original = G.triton_linear

    def spy(x, w, plan, out=None, **kwargs):
        used.append(tuple(w.shape))
        return original(x, w, plan, out, **kwargs)

    monkeypatch.setattr(G, "triton_linear", spy)
    monkeypatch.setattr(causal_lm, "triton_linear", spy)
    ids = torch.randint(3, 512, (batch, 10), generator=torch.Generator().manual_seed(0))
    decoder = GreedyDecoder(model, batch=batch, prompt_len=10, new_tokens=3, splits=2, branches=branches, **layout)
    decoder.capture(ids)
    decoder.rewind()
    expected = decoder.reference_step()
    used.clear()
    decoder.step()
    torch.testing.assert_close(decoder.logits, expected, atol=1e-4, rtol=1e-5)
    return set(used)


@interpreted
def test_the_model_decodes_through_the_tabled_kernels_as_through_cublas(monkeypatch, tmp_path):
    """Every GEMM of a tiny model's step in the table, one by one: the step equals the plain-torch step."""
    model = tiny_model(tmp_path)
    plan = G.GemmPlan("dot", 16, 64, 4, 3)
    shapes = {(192, 64), (256, 64), (64, 320), (model.cfg.embedding_rows, 64)}  # qkv, up, [out | down], logits
    assert step_against_torch(model, monkeypatch, {shape: [(1, 16, plan)] for shape in shapes}) == shapes


@interpreted
def test_qkv_and_mlp_up_run_as_one_launch_over_the_stacked_weight_when_the_table_has_a_plan(monkeypatch, tmp_path):
    """The stacked [W_qkv; W_up] (448 x 64) in the table: one launch per layer instead of two, the same step;
    with the inputs apart (or no plan for the stacked shape) the two GEMMs again."""
    model = tiny_model(tmp_path)
    plan = G.GemmPlan("wdot", 64, 32, 4, 3)
    assert tuple(model.input_weight(model.layers[0]).shape) == (448, 64)
    used = step_against_torch(model, monkeypatch, {(448, 64): [(1, 16, plan)]}, branches=False)
    assert used == {(448, 64)}
    assert step_against_torch(model, monkeypatch, {(448, 64): [(1, 16, plan)]}, branches=False,
                              join_inputs=False) == set()
    with pytest.raises(ValueError, match="whole number"):  # 100 columns: no whole number of 64-column blocks
        x = torch.randn(2, 64)
        G.triton_linear(x, torch.randn(448, 64), plan, second=(torch.randn(2, 64), 100))


@interpreted
def test_the_second_input_of_one_launch_feeds_the_columns_from_n_first_on():
    gen = torch.Generator().manual_seed(11)
    x1, x2 = torch.randn(3, 96, generator=gen), torch.randn(3, 96, generator=gen)
    w = torch.randn(192, 96, generator=gen)
    for plan in (G.GemmPlan("wdot", 64, 32, 4, 3, split=3), G.GemmPlan("dot", 32, 32, 4, 3)):
        got = G.triton_linear(x1, w, plan, second=(x2, 64))
        torch.testing.assert_close(got, torch.cat((x1 @ w[:64].T, x2 @ w[64:].T), dim=1), atol=1e-4, rtol=1e-5)


@interpreted
def test_at_batch_one_the_two_branch_step_runs_the_gemv_kernels_with_the_gelu_epilogue(monkeypatch, tmp_path):
    model = tiny_model(tmp_path)
    plan = G.GemmPlan("gemv", 16, 64, 4, 3)
    shapes = {(192, 64), (256, 64), (64, 320), (model.cfg.embedding_rows, 64)}
    assert step_against_torch(model, monkeypatch, {s: [(1, 1, plan)] for s in shapes}, batch=1, branches=True) == shapes


def residual_case(h: int = 48, k: int = 256, two: bool = True, biases: int = 2, seed: int = 4):
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(1, k, generator=gen), torch.randn(h, k, generator=gen)
    residual = torch.randn(1, h, generator=gen)
    norms = tuple(nn.LayerNorm(h) for _ in range(2 if two else 1))
    for norm in norms:
        norm.weight.data, norm.bias.data = torch.randn(h, generator=gen), torch.randn(h, generator=gen)
    return x, w, residual, norms, tuple(torch.randn(h, generator=gen) for _ in range(biases))


@interpreted
@pytest.mark.parametrize("split, two, biases", [(1, True, 2), (1, False, 0), (2, True, 2), (2, False, 1)])
def test_the_gemv_residual_norms_epilogue_equals_the_gemm_then_the_norm_kernel(split, two, biases):
    from models.decode_kernels import counters, residual_norms

    x, w, residual, norms, bias = residual_case(two=two, biases=biases)
    fused_residual, plain_residual = residual.clone(), residual.clone()
    got = G.gemv_residual_norms(x, w, G.GemmPlan("gemv", 16, 64, 4, 3, split=split), fused_residual, norms,
                                biases=bias)
    expected = residual_norms(plain_residual, (x @ w.T,), norms, biases=bias, backend="torch")
    torch.testing.assert_close(fused_residual, plain_residual, atol=1e-4, rtol=1e-5)  # the residual in place
    assert len(got) == len(norms)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    assert int(counters(x.device, 1, "gemm-norm")[0]) == 0  # reset for the next launch (graph replay)
    doctored = residual.clone()
    doctored[0, 5] += 0.5  # the comparison above catches one residual element off
    again = G.gemv_residual_norms(x, w, G.GemmPlan("gemv", 16, 64, 4, 3, split=split), doctored, norms, biases=bias)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(again[0], expected[0], atol=1e-4, rtol=1e-4)


def test_the_residual_norms_epilogue_is_refused_off_the_gemv_kernel():
    x, w, residual, norms, bias = residual_case()
    with pytest.raises(ValueError, match="gemv kernel's, at one row"):
        G.gemv_residual_norms(x, w, G.GemmPlan("dot", 16, 64, 4, 3), residual, norms, biases=bias)


@interpreted
@pytest.mark.parametrize("branches", [True, False])
def test_at_batch_one_the_step_with_the_norms_in_the_output_gemv_equals_the_torch_step(monkeypatch, tmp_path,
                                                                                         branches):
    import models.causal_lm as causal_lm

    model = tiny_model(tmp_path)
    plan = G.GemmPlan("gemv", 16, 64, 4, 3)
    fused, separate = [], []
    original, norms_kernel = G.gemv_residual_norms, causal_lm.residual_norms
    monkeypatch.setattr(causal_lm, "gemv_residual_norms", lambda *a, **kw: fused.append(1) or original(*a, **kw))

    def norms_spy(x, adds, *args, **kwargs):  # the kernels' decode step (one row), not prefill or the reference
        if x.shape[0] == 1 and kwargs.get("backend") != "torch":
            separate.append(len(adds))
        return norms_kernel(x, adds, *args, **kwargs)

    monkeypatch.setattr(causal_lm, "residual_norms", norms_spy)
    shapes = {(192, 64), (256, 64), (64, 320), (model.cfg.embedding_rows, 64)}
    step_against_torch(model, monkeypatch, {s: [(1, 1, plan)] for s in shapes}, batch=1, branches=branches,
                       norm_in_gemv=True)
    assert fused and not any(separate)  # no residual add ran outside the output GEMVs (only the embedding's norms)


@interpreted
def test_with_the_qkv_gemm_before_the_fork_the_two_branch_step_equals_the_torch_step(monkeypatch, tmp_path):
    model = tiny_model(tmp_path)
    plan = G.GemmPlan("gemv", 16, 64, 4, 3)
    shapes = {(192, 64), (256, 64), (64, 320), (model.cfg.embedding_rows, 64)}
    assert step_against_torch(model, monkeypatch, {s: [(1, 1, plan)] for s in shapes}, batch=1, branches=True,
                              qkv_first=True) == shapes


def test_a_tune_runs_table_holds_the_fastest_passing_plan_only_where_it_beats_cublas(monkeypatch):
    wdot, dot = G.GemmPlan("wdot", 64, 128, 4, 4, split=2), G.GemmPlan("dot", 32, 256, 4, 4, tma=True)

    def point(candidate, us, m=16, n=7680, k=2560, passed=True, plan=None):
        return {"kind": "gemm", "status": "ok", "passed": passed, "candidate": candidate, "us": us, "n": n, "k": k,
                "m": m, **({"plan": asdict(plan)} if plan else {})}

    points = [point("cublas", 14.0), point(wdot.name, 12.0, plan=wdot), point(dot.name, 11.0, plan=dot, passed=False),
              point("cublas", 14.0, m=1), point(wdot.name, 13.9, m=1, plan=wdot),  # 0.7% faster: within the margin
              {"kind": "gemm", "status": "error", "candidate": dot.name, "n": 10240, "k": 2560, "m": 16}]
    tuned = G.tuned_table(points)
    assert tuned == {(7680, 2560): [(16, 16, wdot)]}  # the failed one's 11 us does not count; M=1 stays
    monkeypatch.setattr(G, "GEMM_TABLE", {(7680, 2560): [(1, 1, G.GemmPlan("gemv", 16, 256, 4, 4))]})
    monkeypatch.setattr(G, "GEMM_TABLE", G.merged_table(tuned))
    assert G.gemm_plan(16, 7680, 2560) == wdot
    assert G.gemm_plan(1, 7680, 2560).kind == "gemv" and G.gemm_plan(8, 7680, 2560) is None  # the table's own

"""The decode step's Triton GEMMs (models/decode_gemm.py) through Triton's interpreter: equal to a float32
matmul at the shapes' edges (rows past N, K not a whole number of tiles, several x rows), the split-K
reduction deterministic and reset for the next launch, and the shape table deciding what the model runs."""

from __future__ import annotations

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


def test_a_plan_that_does_not_fit_the_shape_is_refused():
    x, w = operands(2, 16, 64)
    with pytest.raises(ValueError, match="does not fit"):
        G.triton_linear(x, w, G.GemmPlan("gemv", 16, 64, 4, 3))  # gemv is one row
    assert not G.fits(G.GemmPlan("dot", 16, 64, 4, 3, split=3), 1, 16, 256)  # 256 / 3 is no whole tile


def test_the_table_picks_the_first_entry_with_enough_rows_and_leaves_the_rest_to_cublas(monkeypatch):
    gemv, dot = G.GemmPlan("gemv", 16, 256, 4, 4), G.GemmPlan("dot", 16, 256, 4, 4)
    monkeypatch.setattr(G, "GEMM_TABLE", {(6144, 2048): [(1, gemv), (16, dot)]})
    assert G.gemm_plan(1, 6144, 2048) == gemv
    assert G.gemm_plan(8, 6144, 2048) == dot
    assert G.gemm_plan(64, 6144, 2048) is None and G.gemm_plan(1, 2048, 6144) is None


@interpreted
def test_the_model_decodes_through_the_tabled_kernels_as_through_cublas(monkeypatch, tmp_path):
    """Every GEMM of a tiny model's step in the table: the step's logits equal the plain-torch step's."""
    from inference.checkpoints import ensure_checkpoint, resolve_model
    from inference.graph_decoder import GreedyDecoder
    from models.neox_checkpoint import load_causal_lm

    config = tmp_path / "tiny-gemm.yaml"
    config.write_text("name: tiny-gemm\nhidden_size: 64\nnum_attention_heads: 4\nnum_layers: 2\n"
                      "vocab_size: 512\nmax_position_embeddings: 64\n")
    checkpoint = ensure_checkpoint(resolve_model(str(config)), tmp_path / "ckpt", device=torch.device("cpu"),
                                   log=lambda _: None)
    model = load_causal_lm(checkpoint, dtype=torch.float32, kernels="triton")
    plan = G.GemmPlan("dot", 16, 64, 4, 3)
    shapes = {(192, 64), (256, 64), (64, 320), (model.cfg.embedding_rows, 64)}  # qkv, up, [out | down], logits
    monkeypatch.setattr(G, "GEMM_TABLE", {shape: [(16, plan)] for shape in shapes})
    used = []
    original = G.triton_linear
    monkeypatch.setattr(G, "triton_linear", lambda x, w, p, out=None: used.append(tuple(w.shape)) or original(x, w, p))
    ids = torch.randint(3, 512, (2, 10), generator=torch.Generator().manual_seed(0))
    decoder = GreedyDecoder(model, batch=2, prompt_len=10, new_tokens=3, splits=2)
    decoder.capture(ids)
    decoder.rewind()
    expected = decoder.reference_step()
    used.clear()
    decoder.step()
    assert set(used) == shapes
    torch.testing.assert_close(decoder.logits, expected, atol=1e-4, rtol=1e-5)

"""The decode engine's batch-invariant mode (issue 21 item 2) on a CPU: a prompt's logits at every step are
bitwise the same alone and inside batches of other prompts, through the GPU path's kernels (Triton's
interpreter): the invariant GEMMs, the attention with a fixed split size, the one-row norms. The same check
fails where the attention's split count follows the batch, as the default engine's does (the mutant an
M-dependent reduction order would be), and where a row's GEMM kernel changes with M.

fp32 on a CPU: a different summation order shows in fp32 (it can hide in bf16 at small sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.checkpoints import ensure_checkpoint, resolve_model
from inference.graph_decoder import GreedyDecoder
from models import decode_kernels as K
from models.causal_lm import NeoXCausalLM
from models.invariant.backend import available
from models.neox_checkpoint import load_causal_lm

pytestmark = pytest.mark.skipif(available("cpu") is not None, reason=str(available("cpu")))
CPU = torch.device("cpu")
TINY = """\
name: tiny-inv
hidden_size: 64
num_attention_heads: 4
num_layers: 2
vocab_size: 512
max_position_embeddings: 512
"""
PROMPT, NEW = 40, 3


@pytest.fixture(autouse=True)
def small_splits(monkeypatch):
    """32 keys a split (one tile at head dim 16), so a 43-token cache is cut in two and the combine runs."""
    monkeypatch.setattr(K, "INVARIANT_SPLIT_KEYS", 32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("invariant-decode")
    (root / "tiny-inv.yaml").write_text(TINY)
    return ensure_checkpoint(resolve_model(str(root / "tiny-inv.yaml")), root / "ckpt", device=CPU, log=lambda _: None)


def invariant_model(checkpoint: Path) -> NeoXCausalLM:
    model = load_causal_lm(checkpoint, dtype=torch.float32, kernels="triton")
    rows = model.use_invariant_gemms(None)
    assert [(r["n"], r["k"]) for r in rows] == [(192, 64), (256, 64), (64, 320), (512, 64)]
    return model


def batch_with(target: torch.Tensor, batch: int, row: int, seed: int) -> torch.Tensor:
    others = torch.randint(3, 512, (batch, target.shape[1]), generator=torch.Generator().manual_seed(seed))
    others[row] = target[0]
    return others


def step_logits(model: NeoXCausalLM, ids: torch.Tensor, **options) -> list[torch.Tensor]:
    """Prefill logits, then each decode step's, of every row (the same step the GPU captures)."""
    decoder = GreedyDecoder(model, batch=ids.shape[0], prompt_len=ids.shape[1], new_tokens=NEW, banned_token=0,
                            **options)
    first = decoder.prefill(ids).clone()
    out = [first]
    for _ in range(NEW - 1):
        decoder.step()
        out.append(decoder.logits.clone())
    return out


def differing_steps(alone: list[torch.Tensor], batched: list[torch.Tensor], row: int) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(alone, batched)) if not torch.equal(a[0], b[row])]


def test_invariant_splits_depend_on_the_capacity_alone():
    for capacity in (44, 160, 2080, 9000, 40000):
        splits = K.invariant_splits(capacity, 64)
        assert splits.keys * splits.count >= capacity and splits.count <= K.MAX_SPLITS
        assert splits.keys == K.INVARIANT_SPLIT_KEYS or capacity > K.INVARIANT_SPLIT_KEYS * K.MAX_SPLITS
    # the default cut aims at the SMs, so its count moves with the batch: the reason for the invariant one
    default = {b: K.attention_splits(b, 2080, 64, CPU).count for b in (1, 16)}  # one head
    assert default[1] != default[16]


@pytest.mark.slow  # two decode loops through the interpreter (~20 s); the mutant tests below run the same code
def test_a_prompt_is_bitwise_the_same_alone_and_in_batches_of_other_prompts(checkpoint):
    model = invariant_model(checkpoint)
    target = torch.randint(3, 512, (1, PROMPT), generator=torch.Generator().manual_seed(7))
    alone = step_logits(model, target)
    for batch, row in ((3, 2), (5, 0)):
        batched = step_logits(model, batch_with(target, batch, row, seed=batch))
        assert differing_steps(alone, batched, row) == [], f"batch {batch}, row {row}"


@pytest.mark.slow  # the same two decode loops with the tensor-core loop (~20 s); the lane test above is its twin
def test_the_tensor_core_loop_keeps_a_prompt_bitwise_the_same_alone_and_in_a_batch(checkpoint, monkeypatch):
    """--invariant-loop mma: the tile of the batch-1 table (here a 16-key mma tile at head dim 16, which has no
    measured rule) over the same fixed splits; a (row, head, split) program runs the same dots whatever the batch."""
    monkeypatch.setattr(K, "ATTENTION_TILES", {**K.ATTENTION_TILES, 16: K.AttentionTile(16, 4, 3, mma=True)})
    monkeypatch.setattr(K, "INVARIANT_LOOP", "mma")
    assert K.invariant_splits(PROMPT + NEW, 16).mma  # what the decoders below cut their attention with
    model = invariant_model(checkpoint)
    target = torch.randint(3, 512, (1, PROMPT), generator=torch.Generator().manual_seed(7))
    alone = step_logits(model, target)
    batched = step_logits(model, batch_with(target, 3, 2, seed=3))
    assert differing_steps(alone, batched, 2) == []


def test_the_invariant_loop_picks_its_tile_and_a_bad_one_is_named():
    lane, mma = K.invariant_splits(1000, 256, loop="lane"), K.invariant_splits(1000, 256, loop="mma")
    assert not lane.mma and lane.tile == K.LANE_TILES[256]
    assert mma.mma and mma.tile == K.ATTENTION_TILES[256] and mma.keys == lane.keys == K.INVARIANT_SPLIT_KEYS
    with pytest.raises(ValueError, match="invariant attention loop 'fast'"):
        K.invariant_splits(2080, 256, loop="fast")


def test_attention_splits_that_follow_the_batch_break_it(checkpoint):
    """The mutant: the split count of the default engine (by batch) instead of the fixed split size. The
    decode steps' logits then differ in fp32 (prefill, row by row, still agrees)."""
    model = invariant_model(checkpoint)
    target = torch.randint(3, 512, (1, PROMPT), generator=torch.Generator().manual_seed(7))
    alone = step_logits(model, target, splits=1)
    batched = step_logits(model, batch_with(target, 3, 1, seed=3), splits=3)
    differs = differing_steps(alone, batched, 1)
    assert differs and 0 not in differs


@pytest.mark.slow  # the split mutant above is the quick one
def test_a_gemm_kernel_that_changes_with_m_breaks_it(checkpoint, monkeypatch):
    """The mutant: the MLP-up GEMM at M > 1 as a float64 product rounded back (another reduction order), at
    M = 1 the invariant kernel: the rows in a batch then differ from the prompt alone."""
    import models.causal_lm as causal_lm

    model = invariant_model(checkpoint)
    honest = causal_lm.choice_linear

    def m_dependent(x, weight, bias, choice):
        if x.shape[0] > 1 and weight.shape[0] == 256:
            return (x.double() @ weight.double().T).float()
        return honest(x, weight, bias, choice)

    monkeypatch.setattr(causal_lm, "choice_linear", m_dependent)
    target = torch.randint(3, 512, (1, PROMPT), generator=torch.Generator().manual_seed(7))
    alone = step_logits(model, target)
    batched = step_logits(model, batch_with(target, 3, 1, seed=3))
    differs = differing_steps(alone, batched, 1)
    assert differs and 0 not in differs


def test_invariant_prefill_runs_each_row_alone_and_the_reference_step_is_plain_torch(checkpoint):
    model = invariant_model(checkpoint)
    ids = batch_with(torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(1)), 2, 0, seed=2)
    decoder = GreedyDecoder(model, batch=2, prompt_len=12, new_tokens=3)
    assert decoder.splits == K.invariant_splits(15, 16)
    big = GreedyDecoder(model, batch=1, prompt_len=PROMPT, new_tokens=NEW)
    assert big.splits.count == 2 and big.splits.keys == 32  # the combine is exercised above
    decoder.prefill(ids)
    reference = decoder.reference_step()
    assert model.invariant  # restored after the plain-torch reference
    decoder.step()
    torch.testing.assert_close(decoder.logits, reference, atol=1e-4, rtol=1e-4)
    model.use_default_gemms()
    assert not model.invariant


def test_the_skinny_kernel_gives_a_row_the_same_bits_at_every_m_and_refuses_a_bias():
    """The decode engine's weight-streaming kernel as an invariant candidate: one plan per shape (K split 4
    ways here), 64-row chunks, so M = 1, 5, 64 and 70 (two chunks) give every row the same bits."""
    from models.invariant.skinny import skinny_linear, skinny_plan

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(70, 512, generator=gen)
    w = torch.randn(32, 512, generator=gen) * 0.05
    assert skinny_plan(32, 512, 4).split == 4
    full = skinny_linear(x, w)
    torch.testing.assert_close(full, x @ w.T, atol=1e-4, rtol=1e-4)
    for m in (1, 5, 64):
        assert torch.equal(skinny_linear(x[:m], w), full[:m]), m
    assert torch.equal(skinny_linear(x[66:67], w), full[66:67])
    with pytest.raises(ValueError, match="no bias"):
        skinny_linear(x[:1], w, torch.zeros(32))

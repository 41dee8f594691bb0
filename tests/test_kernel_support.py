"""Which head sizes and rotary widths DeepSpeed 0.19.8's injected GPT-NeoX kernels accept: hand-checked
cases, the H100 evidence (which shapes ran and which killed the worker), and each condition on its own."""

from pathlib import Path

import pandas as pd
import pytest

from models.kernel_support import (INT_LIMIT, cuda_graph_support, injection_support, largest_safe_prefill_batch,
                                      next_pow2, prefill_support, rotary_alignment)
from models import load_config

EVIDENCE = Path(__file__).resolve().parent.parent / "evidence" / "h100" / "inference" / "results.csv"


@pytest.mark.parametrize("name, head, rotary, ok", [
    ("pythia-160m", 64, 16, True),   # 16-byte loads (half 8), padded 64 <= 32 x 8
    ("pythia-410m", 64, 16, True),
    ("pythia-1b", 256, 64, True),    # half 32: 16-byte loads, padded 256 <= 32 x 8 exactly
    ("pythia-1.4b", 128, 32, True),
    ("pythia-6.9b", 128, 32, True),
    ("pythia-2.8b", 80, 20, False),  # half 10: 4-byte loads (2 per thread), padded 128 > 32 x 2: asserts
    ("gpt3-2.7b", 80, 20, False),    # the same shape as pythia-2.8b
    ("gpt3-2.7b-c1", 40, 10, False),  # half 5: no whole 2-element load: assert(false)
    ("gpt3-2.7b-c2", 64, 16, True),
    ("gpt3-2.7b-a20", 128, 32, True),
])
def test_hand_checked_shapes(name, head, rotary, ok):
    cfg = load_config(name)
    assert (cfg.head_dim, cfg.rotary_dims) == (head, rotary)
    support = injection_support(cfg.head_dim, cfg.rotary_dims, "float16", hidden_per_gpu=cfg.hidden_size)
    assert support.ok is ok, support.reason
    assert ("apply_rotary_pos_emb.cu" in support.source) and (bool(support.reason) is not ok)


def died_in_the_rotary_kernel(model: str) -> bool:
    """The worker's log (committed beside the results) ends in the rotary kernel's assert."""
    log = EVIDENCE.parent / "logs" / f"mii-{model}-tp1.log"
    return log.is_file() and "apply_rotary_pos_emb.cu:163" in log.read_text() and "Assertion" in log.read_text()


def test_agrees_with_what_ran_and_what_died_on_the_h100():
    rows = pd.read_csv(EVIDENCE)
    mii = rows[rows["engine"] == "mii"]
    ran = mii.groupby("model")["status"].apply(lambda s: bool((s == "ok").all()))
    assert ran["pythia-1b"] and not ran["pythia-2.8b"] and died_in_the_rotary_kernel("pythia-2.8b")
    for model in ran.index:
        cfg = load_config(model)
        assert injection_support(cfg.head_dim, cfg.rotary_dims).ok is bool(ran[model]), model
        if not ran[model]:
            assert died_in_the_rotary_kernel(model)


def test_the_assert_conditions_one_by_one():
    assert injection_support(80, 20).reason.startswith("head size 80 (padded to 128) with rotary dims 20")
    assert "apply_rotary_pos_emb.cu:163" in injection_support(80, 20).source
    assert "half of them (5)" in injection_support(40, 10).reason
    assert ":147-156" in injection_support(40, 10).source
    # head 8 with all 8 dims rotary: 8-byte loads, 2 threads per head; the launcher has kernels for 4..32
    tiny = injection_support(8, 8)
    assert not tiny.ok and "threads per head" in tiny.reason and ":118-129" in tiny.source
    # no rotary: no rotary kernel, any head that is whole 16-byte vectors runs
    assert injection_support(72, 0).ok


def test_heads_that_are_not_whole_vectors_compute_wrong_values():
    support = injection_support(20, 4)
    assert not support.ok and "multiple of 8" in support.reason and "transform.cu" in support.source
    assert injection_support(20, 4, "float32").ok  # fp32 vectors hold 4 elements: 20 is 5 of them


def test_fp32_loads_fewer_elements_per_thread():
    # 4-byte elements: 16-byte loads carry 4, so one warp covers a padded head of 128 at most
    assert injection_support(128, 32, "float32").ok
    assert not injection_support(256, 64, "float32").ok
    assert injection_support(256, 64, "bfloat16").ok


def test_the_transform_kernels_block_limits_the_hidden_size_per_gpu():
    assert injection_support(128, 32, hidden_per_gpu=8192).ok
    big = injection_support(128, 32, hidden_per_gpu=16384)
    assert not big.ok and "tensor parallelism" in big.reason
    assert injection_support(128, 32, hidden_per_gpu=16384 // 2).ok


def test_next_pow2_and_the_alignment_match_deepspeeds():
    assert [next_pow2(v) for v in (1, 40, 64, 80, 129, 256)] == [1, 64, 64, 128, 256, 256]
    assert [rotary_alignment(r, 2) for r in (64, 16, 24, 20, 10)] == [16, 16, 8, 4, None]


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="dtype"):
        injection_support(64, 16, "int8")
    with pytest.raises(ValueError, match="rotary_dims"):
        injection_support(64, 80)


def test_cuda_graphs_cannot_reach_gpt_neox_generation_either_way():
    injected = cuda_graph_support(inject=True, policy_supports_graphs=False)
    assert not injected.ok and "ValueError" in injected.reason and "replace_module.py" in injected.source
    assert "installed DeepSpeed" in injected.reason
    plain = cuda_graph_support(inject=False)
    assert not plain.ok and "generate" in plain.reason and "engine.py" in plain.source
    # a DeepSpeed whose policy allowed graphs would still decode through transformers' generate
    assert not cuda_graph_support(inject=True, policy_supports_graphs=True).ok


def test_the_fused_softmax_int32_limit_on_the_h100_shapes():
    """(b*H*L - 1) * L >= 2^31 is wrong: c2 (40 heads) at b=16, L=2048 failed the logits check on the H100;
    a=20 (20 heads) and the Pythia models passed there; b=1 is far below."""
    for name, batch, ok in (("gpt3-2.7b-c2", 16, False), ("gpt3-2.7b-c2", 1, True), ("gpt3-2.7b-a20", 16, True),
                            ("pythia-410m", 16, True), ("pythia-1.4b", 16, True), ("gpt3-2.7b-c1", 16, False)):
        support = prefill_support(batch, load_config(name).num_attention_heads, 2048)
        assert support.ok is ok, (name, batch, support.reason)
        assert "softmax.cu:68-74" in support.source
    refused = prefill_support(16, 40, 2048)
    assert "32-bit int" in refused.reason and "2.68e+09" in refused.reason
    # the edge, one token either side: 16 x 40 heads is fine up to 1831 tokens
    assert prefill_support(16, 40, 1831).ok and not prefill_support(16, 40, 1832).ok
    assert (16 * 40 * 1832 - 1) * 1832 >= INT_LIMIT > (16 * 40 * 1831 - 1) * 1831


CARRYOVER = EVIDENCE.parent.parent / "carryover" / "core" / "bench" / "results.csv"


def test_the_int32_limit_agrees_with_the_h100_logits_checks():
    """Every injected MII row of the committed carry-over run at the largest batch: its logits check passed
    exactly where the limit says the prefill is right (rows the limit refuses, run by a later version, are
    'unsupported' and count as predicted)."""
    rows = pd.read_csv(CARRYOVER)
    mii = rows[(rows["engine"] == "mii") & (rows["batch"] == rows["batch"].max())
               & rows["status"].isin(["ok", "mismatch", "unsupported"])]
    checked = 0
    for _, r in mii.iterrows():
        cfg = load_config(r["model"])
        if not injection_support(cfg.head_dim, cfg.rotary_dims).ok:
            continue
        predicted = prefill_support(int(r["batch"]), cfg.num_attention_heads, int(r["prompt_len"])).ok
        assert predicted is (r["status"] == "ok"), (r["model"], r["prompt_len"], r["status"], r["reason"])
        checked += 1
    assert checked >= 4


def test_largest_safe_prefill_batch_is_the_edge_of_the_int32_limit():
    assert largest_safe_prefill_batch(40, 2048) == 12  # c2: batch 12 is right, 13 is not
    assert prefill_support(12, 40, 2048).ok and not prefill_support(13, 40, 2048).ok
    assert largest_safe_prefill_batch(20, 2048) == 25 and largest_safe_prefill_batch(40, 1831) >= 16
    assert largest_safe_prefill_batch(1, 50000) == 0  # one row of 50k tokens already overflows


def test_the_advisor_states_the_batch_a_full_prompt_prefills_correctly_through_deepspeed():
    from profiler.advisor.rules import check_inference_kernels

    check = check_inference_kernels(load_config("gpt3-2.7b-c2"))
    assert check.status == "pass" and "prefills correctly up to batch 12 (40 heads" in check.finding
    refused = check_inference_kernels(load_config("gpt3-2.7b"))
    assert refused.status == "fail" and "prefills" not in refused.finding

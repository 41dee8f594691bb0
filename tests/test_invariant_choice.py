"""Issue 21: the M-bucketed invariant matmul, the bitwise probe, the cached kernel choice and the cuBLAS switch.

The reduction-order tests run the Triton kernel in Triton's interpreter in fp32 on operands whose magnitudes
span 2^-24..2^24: any change in how the sum over K is associated changes the fp32 result, so a kernel whose
order depends on M fails them (in bf16 the final rounding hides most such changes). The probe and selection
tests use stand-in matmuls and synthetic timings; the cuBLAS side itself needs a GPU (tests marked gpu).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the batch-invariant kernels need Triton (pip install triton)")

from models.invariant import choice as choice_module  # noqa: E402
from models.invariant import matmul, probe_tokens, tiles, verdict_cache  # noqa: E402
from models.invariant.backend import available  # noqa: E402
from models.invariant.choice import Candidate, KernelChoice  # noqa: E402
from models.invariant.cublas import no_split_k, switch_problem  # noqa: E402
from models.invariant.matmul import invariant_linear  # noqa: E402
from models.invariant.probe import CrossVerdict, ProbeVerdict, agreement, bitwise_equal, cross_probe, probe  # noqa: E402
from models.invariant.splitk import chunked_linear  # noqa: E402
from models.invariant.tiles import Bucket, MatmulConfig, MatmulPlan, plan_for, reduction_problem  # noqa: E402
from profiler.invariance import choice as pick  # noqa: E402
from profiler.invariance.choice import Option, options, rank  # noqa: E402

INTERPRETER = available("cpu")
interpreted = pytest.mark.skipif(INTERPRETER is not None, reason=str(INTERPRETER))
CUDA = torch.cuda.is_available()


def wild_operands(m=300, k=80, n=48, seed=0):
    """fp32 operands on which the association of the sum over K shows in the result's last bits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.exp2(torch.randint(-24, 25, (m, k), generator=gen).float())
    return x, torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)


def m_dependent_plan() -> MatmulPlan:
    """A mutant: small M cuts K into 16-wide steps, larger M into 32-wide ones (BLOCK_K chosen by M)."""
    return MatmulPlan("mutant", (Bucket(32, (MatmulConfig(32, 16, 16, num_warps=4),)),
                                 Bucket(None, (MatmulConfig(64, 16, 32, num_warps=4),))))


# ---- the plan: BLOCK_K per (N, K, dtype), tiles by M --------------------------------------------------------
@pytest.mark.parametrize("n, k", [(6144, 2048), (2048, 8192), (12288, 4096), (4096, 11008), (72, 80)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_plan_has_one_block_k_and_a_tile_for_every_m(n, k, dtype):
    plan = plan_for(n, k, dtype)
    assert reduction_problem(plan) is None
    assert len({c.block_k for b in plan.buckets for c in b.configs}) == 1
    assert [plan.bucket_index(m) for m in (1, 8192, 10**6)] == [0, len(plan.buckets) - 1, len(plan.buckets) - 1]
    assert plan.buckets[0].configs[0].block_m <= plan.buckets[-1].configs[0].block_m


@pytest.mark.parametrize("n, k", [(6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192), (16384, 4096), (11008, 4096)])
def test_every_16_bit_tile_fits_the_shared_memory_and_only_decode_tiles_leave_wgmma(n, k):
    """Decode tiles are 16 rows (mma.sync, the H200 sweep's fastest); from M = 33 on every tile meets the
    wgmma conditions, so a plan crosses instruction families once, at a bucket edge the probe covers."""
    for bucket in plan_for(n, k, torch.bfloat16).buckets:
        for c in bucket.configs:
            assert (c.block_m + c.block_n) * c.block_k * 2 * c.num_stages <= tiles.SMEM_BUDGET, c.label
            wgmma = c.block_m % 64 == 0 and c.num_warps % 4 == 0 and c.block_n % 8 == 0
            assert wgmma == (bucket.max_m is None or bucket.max_m > 32), c.label


def test_decode_tiles_are_narrow_and_long_k_shapes_take_longer_k_steps():
    down = plan_for(2048, 8192, torch.bfloat16)  # pythia-1b's MLP down-projection: N = 2048, K = 8192
    up = plan_for(8192, 2048, torch.bfloat16)
    assert down.block_k == 256 and up.block_k == 128
    decode, prefill = down.buckets[0].configs[0], up.buckets[-1].configs[0]
    assert decode.block_m == 16 and 2048 // decode.block_n >= 64 and decode.num_stages >= 4
    assert prefill.block_m * prefill.block_n >= 128 * 128


def test_a_plan_whose_block_k_follows_m_is_named_as_such():
    assert "BLOCK_K differs" in reduction_problem(m_dependent_plan())


# ---- the kernel in the interpreter: the reduction order does not depend on M -------------------------------
@interpreted
def test_fp32_rows_are_bitwise_the_same_across_every_m_bucket():
    x, w, b = wild_operands()
    plan = plan_for(48, 80, torch.float32)
    tokens = (1, 2, 31, 32, 33, 100, 128, 129, 200, 300)
    assert len({plan.bucket_index(m) for m in tokens}) == len(plan.buckets)  # every bucket is crossed
    verdict = probe(lambda a: invariant_linear(a, w, b), x, tokens, alone_rows=(0, 5, 31, 129))
    assert verdict.invariant, verdict.summary()


@interpreted
def test_the_16_bit_plans_buckets_keep_one_reduction_order_too():
    x, w, b = wild_operands(m=1100)
    plan = plan_for(48, 80, torch.bfloat16)  # its tiles (16..128 rows, every bucket crossed), run on fp32 data
    tokens = (1, 17, 33, 64, 65, 256, 257, 1100)
    assert len({plan.bucket_index(m) for m in tokens}) == len(plan.buckets)
    verdict = probe(lambda a: invariant_linear(a, w, b, plan=plan), x, tokens, alone_rows=(0, 16, 64, 256))
    assert verdict.invariant, verdict.summary()


@interpreted
def test_block_k_cuts_the_loop_not_the_order_of_the_k_steps(monkeypatch):
    """BLOCK_K chosen by M (16 for small M, 32 above) gives the same rows: the sum runs in 16-wide k steps,
    one after another, whatever BLOCK_K groups them into, as the H200 sweep found for every tile. (The plans
    keep one BLOCK_K anyway: reduction_problem.) What does change the order is a split of K: next tests."""
    x, w, b = wild_operands()
    monkeypatch.setattr(matmul, "plan_for", lambda n, k, dtype, sms=None: m_dependent_plan())
    verdict = probe(lambda a: invariant_linear(a, w, b), x, (1, 2, 31, 32, 33, 100, 300), alone_rows=(0, 5))
    assert verdict.invariant, verdict.summary()


@interpreted
def test_the_split_k_kernel_keeps_one_tree_for_every_m_and_its_two_launches_agree():
    """splitk.py: the chunk count is fixed per shape, so every M sums the same partials in the same order;
    the split launch (workspace + ordered reduction) and the inline walk add the same fp32 numbers."""
    x, w, b = wild_operands(m=70, k=96, n=24)
    split = lambda a: chunked_linear(a, w, b, chunks=3, block_m=16, block_n=16, block_k=16, split=True)  # noqa: E731
    inline = lambda a: chunked_linear(a, w, b, chunks=3, block_m=32, block_n=16, block_k=16, split=False)  # noqa: E731
    verdict = probe(split, x, (1, 2, 17, 33, 70), alone_rows=(0, 16, 69))
    assert verdict.invariant, verdict.summary()
    assert bitwise_equal(split(x), inline(x))
    ref = F.linear(x.double(), w.double(), b.double())
    assert ((split(x).double() - ref).abs() <= 1e-6 * (x.abs() @ w.abs().T).double() + 1e-6).all()


@interpreted
def test_a_split_k_whose_chunk_count_follows_m_fails_the_check():
    """The mutant issue 21 asks a CPU test to catch: one chunk (a plain chain) for small M, four above."""
    x, w, b = wild_operands(m=40, k=96, n=24)

    def mutant(a):
        return chunked_linear(a, w, b, chunks=1 if a.shape[0] <= 16 else 4, block_m=16, block_n=16, block_k=16,
                              split=True)

    verdict = probe(mutant, x, (1, 2, 16, 17, 40), alone_rows=(0, 5))
    assert not verdict.invariant and {1, 2, 16} <= set(verdict.m_failed) and verdict.max_abs_diff > 0


@interpreted
def test_the_interpreted_kernel_matches_torch_in_fp32():
    x, w, b = wild_operands(m=40)
    out = invariant_linear(x, w, b)
    ref = F.linear(x.double(), w.double(), b.double())
    assert ((out.double() - ref).abs() <= 1e-6 * (x.abs() @ w.abs().T).double() + 1e-6).all()


# ---- the probe, on stand-in matmuls -------------------------------------------------------------------------
def chunked(x: torch.Tensor, w: torch.Tensor, chunks: int) -> torch.Tensor:
    """x @ w.T with K cut into `chunks` pieces, each summed k by k in fp32, then the pieces added: a split-K
    product. Elementwise only, so a row never depends on the other rows (CPU BLAS is not invariant in M)."""
    total = None
    for piece in torch.arange(x.shape[1]).chunk(chunks):
        part = torch.zeros(x.shape[0], w.shape[0])
        for k in piece.tolist():
            part = part + x[:, k:k + 1] * w[:, k]
        total = part if total is None else total + part
    return total


def test_the_probe_names_the_m_where_a_split_k_heuristic_changes_the_sum():
    x, w, _ = wild_operands(m=64, k=96)
    verdict = probe(lambda a: chunked(a, w, 4 if 20 <= a.shape[0] <= 27 else 1), x, range(1, 65))
    assert not verdict.invariant and verdict.m_failed == tuple(range(20, 28))
    assert verdict.failed_at == "20-27" and "not invariant at 8 of 64 M (20-27" in verdict.summary()


def test_the_probe_passes_a_product_computed_row_by_row():
    x, w, _ = wild_operands(m=64, k=96)
    verdict = probe(lambda a: torch.cat([chunked(r, w, 3) for r in a.split(1)]), x, range(1, 65))
    assert verdict.invariant and verdict.m_checked == 64 and verdict.rows_alone > 5


def test_the_probe_catches_a_row_that_differs_only_when_alone():
    x, w, _ = wild_operands(m=32, k=96)
    verdict = probe(lambda a: chunked(a, w, 4 if a.shape[0] == 1 else 1), x, (2, 5, 32))
    assert not verdict.invariant and verdict.m_failed == (2, 5, 32)  # each product's row 0 != row 0 alone


def test_the_probe_counts_minus_zero_as_a_difference():
    x = torch.ones(4, 2)
    verdict = probe(lambda a: torch.zeros(a.shape[0], 3) * (-1.0 if a.shape[0] == 2 else 1.0), x, (1, 2, 4))
    assert not verdict.invariant and verdict.m_failed == (2,) and verdict.max_abs_diff == 0.0


def test_agreement_between_two_matmuls_is_bitwise():
    x, w, _ = wild_operands(m=16, k=96)
    same = agreement(lambda a: chunked(a, w, 2), lambda a: chunked(a, w, 2), x, range(1, 17))
    other = agreement(lambda a: chunked(a, w, 2), lambda a: chunked(a, w, 3), x, range(1, 17))
    assert same.invariant and not other.invariant and other.m_failed == tuple(range(1, 17))


def test_probe_tokens_cover_every_small_m_and_each_side_of_the_tile_edges():
    thorough, quick = probe_tokens(), probe_tokens(quick=True)
    assert set(range(1, 257)) <= set(thorough) and {4095, 4096, 4097, 1151, 1152, 1153, 8191, 8192} <= set(thorough)
    assert 400 <= len(thorough) <= 800 and len(quick) < len(thorough) // 2 and max(thorough) == 8192
    assert probe_tokens(300)[-1] == 300


# ---- the choice: fastest option the probe passed, and why ---------------------------------------------------
DEFAULT_US = {1: 10.0, 64: 12.0, 1024: 100.0, 8192: 700.0}


def cross_of(own_failed: dict, failed: dict | None = None, alone: dict | None = None, tokens=(1, 2, 16, 64, 1024, 8192)):
    """A CrossVerdict from the M where each kernel's rows differed from its own / another's largest product."""
    own = {name: ProbeVerdict(not bad, len(tokens), tokens[-1], tuple(bad), 1.0 if bad else 0.0, 5)
           for name, bad in own_failed.items()}
    names = list(own_failed)
    failed = {(a, b): tuple((failed or {}).get((a, b), own_failed[a] if a == b else tokens)) for a in names for b in names}
    alone = {(a, b): (alone or {}).get((a, b), True) for a in names for b in names if a != b}
    return CrossVerdict(tuple(tokens), own, failed, alone)


def test_cublas_default_is_the_pick_wherever_its_rows_never_differ():
    cross = cross_of({"default": (), "cublaslt": (), "triton": ()})
    timings = {"default": DEFAULT_US, "cublaslt": {m: t * 1.3 for m, t in DEFAULT_US.items()},
               "triton": {m: t * 1.1 for m, t in DEFAULT_US.items()}}
    (pick, (worst, median)), *_ = rank(options(cross, ["default", "cublaslt", "triton"]), timings, DEFAULT_US)
    assert pick == Option.single("default") and worst == median == 1.0


def test_a_kernel_whose_rows_differ_somewhere_is_no_option_alone_but_may_take_the_m_where_they_do_not():
    # cuBLAS's default splits K below M=64 (its rows differ there); Triton's rows are the default's below 64
    cross = cross_of({"default": (1, 2, 16), "triton": ()}, failed={("triton", "default"): (1024, 8192)},
                     alone={("triton", "default"): False})
    opts = options(cross, ["default", "triton"])
    assert Option.single("default") not in opts and Option.single("triton") in opts
    assert Option(((1, "triton"), (64, "default"))) in opts  # triton below 64, where its rows are default's
    assert Option(((1, "triton"), (16, "default"))) not in opts  # default would run at 16, where it splits K
    assert Option(((1, "triton"), (1024, "default"))) in opts  # triton's rows differ from default's at 1024 only
    assert Option(((1, "triton"), (2048, "default"))) not in opts
    timings = {"default": DEFAULT_US, "triton": {1: 11.0, 64: 14.0, 1024: 150.0, 8192: 1000.0}}
    best, (worst, _) = rank(opts, timings, DEFAULT_US)[0]
    assert best.kernel == "hybrid" and best.segments[1][0] in (32, 64) and worst == pytest.approx(10 / 11)


def test_three_kernels_may_share_the_m_range_when_each_ones_rows_are_the_last_ones():
    """Triton for decode, cuBLASLt (split-K off: slow below 32) in between, cuBLAS's default from 512 on,
    where its heuristics stop splitting K: each one's rows are the default's largest product's."""
    cross = cross_of({"default": (1, 2, 16, 64, 256), "cublaslt": (), "triton": ()},
                     failed={("default", "default"): (1, 2, 16, 64, 256), ("triton", "default"): (),
                             ("cublaslt", "default"): (), ("triton", "cublaslt"): ()},
                     alone={("triton", "default"): False, ("triton", "cublaslt"): False},
                     tokens=(1, 2, 16, 64, 256, 1024, 8192))
    us = {1: 10.0, 16: 10.0, 64: 12.0, 256: 20.0, 1024: 100.0, 8192: 700.0}
    timings = {"default": us, "cublaslt": {**us, 1: 100.0, 16: 100.0, 1024: 110.0, 8192: 770.0},
               "triton": {**{m: t / 0.97 for m, t in us.items()}, 64: 24.0, 256: 40.0, 1024: 200.0, 8192: 1400.0}}
    opts = options(cross, ["default", "cublaslt", "triton"])
    best, (worst, _) = rank(opts, timings, us)[0]
    assert best == Option(((1, "triton"), (32, "cublaslt"), (512, "default"))) and worst == pytest.approx(0.97)
    assert Option(((1, "triton"), (32, "cublaslt"), (256, "default"))) not in opts  # default splits at 256


def test_no_hybrid_where_the_low_kernels_rows_alone_differ_from_the_high_ones():
    cross = cross_of({"default": (1, 2), "triton": ()}, failed={("triton", "default"): ()},
                     alone={("triton", "default"): True})
    assert [o for o in options(cross, ["default", "triton"]) if o.segments[0][1] == "triton" and o.kernel == "hybrid"] == []


def test_an_inaccurate_kernel_is_never_an_option():
    cross = cross_of({"default": (), "triton": ()})
    assert options(cross, ["triton"]) == [Option.single("triton")]


def test_within_close_of_the_best_the_simpler_option_wins():
    cross = cross_of({"cublaslt": (), "triton": ()}, failed={("triton", "cublaslt"): ()},
                     alone={("triton", "cublaslt"): False})
    timings = {"default": DEFAULT_US, "cublaslt": {m: t / 0.99 for m, t in DEFAULT_US.items()},
               "triton": {m: t / 1.0 for m, t in DEFAULT_US.items()}}
    ranked = rank(options(cross, ["cublaslt", "triton"]), timings, DEFAULT_US)
    assert ranked[0][0] == Option.single("cublaslt") and {o.kernel for o, _ in ranked} >= {"triton", "hybrid"}


def test_cross_probe_says_which_stand_ins_may_share_the_m_range():
    """A split-K heuristic below M=20 (rows differ there), a sequential kernel equal to its rows elsewhere."""
    x, w, _ = wild_operands(m=64, k=96)
    fns = {"default": lambda a: chunked(a, w, 4 if a.shape[0] < 20 else 1),
           "triton": lambda a: torch.cat([chunked(r, w, 1) for r in a.split(1)])}
    cross = cross_probe(fns, x, range(1, 65), alone_rows=(0, 5, 30))
    assert cross.own["default"].m_failed == tuple(range(1, 65))  # its one-row products split K: no M passes alone
    assert cross.failed[("default", "default")] == tuple(range(1, 20))  # its M-row products from 20 on are its own
    assert cross.own["triton"].invariant and cross.consistent("triton", "default")
    assert cross.consistent("default", "default", 20) and not cross.consistent("default", "default", 19)
    opts = options(cross, ["default", "triton"])
    assert Option(((1, "triton"), (32, "default"))) in opts and Option(((1, "triton"), (16, "default"))) not in opts


def test_a_pick_that_fails_its_every_m_proof_gives_way_to_the_next(monkeypatch):
    """The default differs only at M=37, which the cross-probe's sample skips; the proof at every M finds it."""
    monkeypatch.setitem(choice_module.RUNNERS, "default", lambda a, w, b: chunked(a, w, 3 if a.shape[0] == 37 else 1))
    monkeypatch.setitem(choice_module.RUNNERS, "cublaslt", lambda a, w, b: chunked(a, w, 1) * 1.0)
    monkeypatch.setitem(choice_module.RUNNERS, "triton", lambda a, w, b: chunked(a, w, 1))
    choice = pick._probe_and_pick(24, 64, torch.float32, False, torch.device("cpu"), (1, 2, 8, 16, 36, 38, 48),
                                  "custom", {"sms": 132}, lambda fn, device: 5.0, None, every_m_to=48)
    assert choice.proven and choice.kernel != "default" and "default failed its proof" in choice.reason
    assert "not invariant at 1 of 48 M (37" in choice.reason and choice.proof["m_checked"] == 48
    assert choice.sweep == "every M 1..48"


def test_a_hybrid_runs_each_call_on_the_side_its_number_of_tokens_picks(monkeypatch):
    ran = []
    monkeypatch.setitem(choice_module.RUNNERS, "triton", lambda x, w, b: ran.append(("triton", x.shape)) or x)
    monkeypatch.setitem(choice_module.RUNNERS, "cublaslt", lambda x, w, b: ran.append(("cublaslt", x.shape)) or x)
    hybrid = KernelChoice(8, 8, "bfloat16", False, "hybrid", "", switch_m=64, low="triton", high="cublaslt")
    choice_module.linear(torch.zeros(2, 31, 8), None, None, hybrid)  # 62 tokens
    choice_module.linear(torch.zeros(2, 32, 8), None, None, hybrid)  # 64 tokens
    assert [k for k, _ in ran] == ["triton", "cublaslt"]


def test_off_a_gpu_the_choice_is_triton_and_says_why():
    choice = pick.choose(2048, 2048, torch.float32, True, "cpu")
    assert choice.kernel == "triton" and not choice.proven and "off a GPU" in choice.reason
    assert choice.plan.startswith("buckets:")


# ---- the cache --------------------------------------------------------------------------------------------
ENV = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cublaslt": "130100", "cache_version": 1}


def test_a_verdict_is_found_again_in_the_same_environment_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    key = verdict_cache.shape_key(2048, 8192, "bfloat16", True)
    path = verdict_cache.store(ENV, key, {"kernel": "triton"})
    assert path.parent == tmp_path / "invariant-kernels" / "nvidia-h200" and path.suffix == ".json"
    assert verdict_cache.load(ENV, key) == {"kernel": "triton"}
    assert verdict_cache.load({**ENV, "torch": "2.12.0"}, key) is None  # another torch: probe again
    assert verdict_cache.load(ENV, verdict_cache.shape_key(2048, 8192, "bfloat16", False)) is None
    verdict_cache.store(ENV, "other", {"kernel": "cublaslt"})
    assert verdict_cache.load(ENV, key) == {"kernel": "triton"}  # records accumulate in one file


def test_the_cache_lives_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CODESIGN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert verdict_cache.cache_root() == tmp_path / "codesign-profiler"


# ---- the cuBLAS switch ------------------------------------------------------------------------------------
def test_no_split_k_sets_both_16_bit_flags_and_restores_them():
    matmul_flags = torch.backends.cuda.matmul
    before = (torch._C._get_cublas_allow_bf16_reduced_precision_reduction(),
              torch._C._get_cublas_allow_fp16_reduced_precision_reduction())
    assert switch_problem() is None  # this torch takes the (allow_reduced_precision, allow_splitk) tuple
    with no_split_k():
        assert not matmul_flags.allow_bf16_reduced_precision_reduction
        assert not matmul_flags.allow_bf16_reduced_precision_reduction_split_k
        assert not matmul_flags.allow_fp16_reduced_precision_reduction_split_k
        with no_split_k():  # nested: still off, and restored once, by the outer one
            pass
        assert not matmul_flags.allow_bf16_reduced_precision_reduction_split_k
    after = (torch._C._get_cublas_allow_bf16_reduced_precision_reduction(),
             torch._C._get_cublas_allow_fp16_reduced_precision_reduction())
    assert tuple(map(tuple, after)) == tuple(map(tuple, before))


@pytest.mark.skipif(not CUDA, reason="the cuBLASLt backend exists on CUDA builds only")
def test_no_split_k_prefers_cublaslt_inside_and_restores_the_backend():
    before = torch.backends.cuda.preferred_blas_library()
    with no_split_k():
        assert torch.backends.cuda.preferred_blas_library() == torch._C._BlasBackend.Cublaslt
    assert torch.backends.cuda.preferred_blas_library() == before


# ---- the layer switch and the report ----------------------------------------------------------------------
@interpreted
def test_make_batch_invariant_records_which_kernel_each_gemm_got():
    from models import load_config
    from models.invariant import kernel_choices, make_batch_invariant
    from models.layer import build_layer

    cfg = load_config("pythia-160m", seq_length=8, attention="sdpa", dtype="float32")
    cfg = cfg.replace(hidden_size=64, num_attention_heads=4, vocab_size=500, padded_vocab_size=512)
    stack = make_batch_invariant(build_layer(cfg, include_logits=False))
    assert all(r["kernel"] is None for r in kernel_choices(stack))  # on a CPU: chosen at the first forward
    with torch.no_grad():
        stack(torch.randn(1, 8, 64))
    rows = kernel_choices(stack)
    assert {r["module"].rsplit(".", 1)[-1] for r in rows} == {"qkv_transform", "out_projection", "mlp_up", "mlp_down"}
    assert all(r["kernel"] == "triton" and "off a GPU" in r["reason"] for r in rows)


def test_the_summary_says_the_ratio_per_shape_and_whether_the_targets_are_met():
    from profiler.invariance import analysis

    rows = []
    for m, t_torch, t_inv in ((1, 10.0, 11.0), (64, 12.0, 12.0), (8192, 700.0, 720.0)):
        for kernel, us in (("torch", t_torch), ("invariant", t_inv)):
            rows.append({"config": "c", "component": "mlp_down", "n": 2048, "k": 8192, "m": m, "kernel": kernel,
                         "median_us": us, "tflops": 2 * m * 2048 * 8192 / us / 1e6, "flops": 2 * m * 2048 * 8192})
    throughput = pd.DataFrame(rows)
    summary = analysis.ratio_summary(throughput).iloc[0]
    assert summary["M=64"] == pytest.approx(1.0) and summary["min_at_m"] == 1
    assert summary["min"] == pytest.approx(10 / 11) and summary["m_measured"] == 3
    check = pd.DataFrame({"config": "c", "kernel": "invariant", "component": "mlp_down", "n": 2048, "k": 8192,
                          "m": [1, 2], "invariant": [True, True]})
    met = analysis.targets(throughput, check)
    assert met["min_ok"] and met["median_ok"] and met["invariant_ok"] and met["pairs_checked"] == 2


# ---- on the GPU ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_pythia_1b_every_gemm_gets_a_proven_kernel_and_its_path_is_invariant_over_m(tmp_path, monkeypatch):
    from models import load_config
    from models.invariant import mma_families
    from profiler.invariance import matmul_bench, shapes
    from profiler.invariance.choice import choose

    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    device = torch.device("cuda")
    for gemm in shapes.weight_gemm_shapes(load_config("pythia-1b")):
        choice = choose(gemm.n, gemm.k, torch.bfloat16, gemm.bias, device, refresh=True)
        assert choice.proven, choice.reason
        ops = matmul_bench.make_operands(gemm, 8192, dtype=torch.bfloat16, device=device, seed=5)
        verdict = probe(lambda a: choice_module.linear(a, ops.weight, ops.bias, choice), ops.x, probe_tokens(quick=True))
        assert verdict.invariant, f"{gemm.label} on {choice.label}: {verdict.summary()}"
        assert choice.proof["m_checked"] >= 8192 and choice.proof["invariant"]  # every M 1..8192 and beyond
    # 16-row decode tiles compile to mma.sync (the H200 sweep's fastest at small M); every tile of 64 rows and more
    # must be wgmma, so a plan crosses instruction families only at a bucket edge the proof above covered
    wrong = {label: family for label, family in mma_families().items()
             if family not in ({"wgmma", "unknown"} if int(label.split("x")[0]) >= 64 else {"wgmma", "mma.sync", "unknown"})}
    assert wrong == {}, wrong


@interpreted
def test_the_whole_choice_runs_on_stand_in_timings_and_says_what_each_candidate_did():
    """_probe_and_pick as a GPU runs it, here on CPU tensors (torch's CPU BLAS stands in for cuBLASLt)."""
    calls = []

    def timer(fn, device):
        fn()
        calls.append(device)
        return 5.0

    choice = pick._probe_and_pick(48, 64, torch.float32, True, torch.device("cpu"), (1, 2, 3, 8, 17, 40),
                                  "custom", {"sms": 132}, timer, None, every_m_to=20)
    cands = {c.kernel: c for c in choice.candidates}
    assert cands["triton"].usable and cands["triton"].verdict["m_checked"] == 6
    assert cands["cublaslt"].invariant is not None and cands["cublaslt"].accurate
    assert choice.proven and choice.kernel in ("default", "cublaslt", "triton", "hybrid")
    assert choice.proof["m_checked"] == 21 and choice.sweep == "every M 1..20 and 1 sampled M to 40"
    assert set(choice.default_us) == {1, 2, 4, 8, 16, 32} and len(calls) >= 6  # timing M within the 40 rows
    assert KernelChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice

"""Sizing advisor (issue 9): every rule on hand-checked cases, the cost model against hand arithmetic and the
committed H100 evidence, the proposal search, the ranking statistics, and the CLI end to end on the CPU
(a real layer, timed for real, at tiny sizes)."""

import dataclasses
import json
import math
import statistics

import pandas as pd
import pytest
import torch

from models import count_parameters, load_config
from profiler.advisor import GPUS, AdviceOptions, SearchSpace, candidates_frame, resolve_gpu, select_for_measurement
from profiler.advisor.candidates import candidate_configs, layers_for, padded_vocab
from profiler.advisor.cost_model import (estimate_gemm, flash_forward_ms, flash_head_dim, gemm_estimates,
                                         logits_estimate, step_estimate, training_step)
from profiler.advisor.rules import (check_gemms, check_head_dim, check_heads_per_gpu, check_hidden_per_gpu,
                                    check_inference_kernels, check_intermediate, check_tensor_parallel,
                                    check_tokens, check_vocab, elements, vocab_pair)
from profiler.advisor.ranking import (component_difference, measured_summary, paired_difference, quantile,
                                      round_steps, verdict)
from profiler.advisor.scaling import caution, feed_forward_ratio, interpolate, shape_loss
from profiler.advisor.swiglu import SwigluSearch, mlp_flops, modelled_swiglu, swiglu_sizes
from cli.main import profiler_main as main
from profiler.errors import UserError
from reports.advisor_report import candidates_figure, swiglu_figure

H100 = GPUS["h100"]


def gpt3(**changes):
    return load_config("gpt3-2.7b", **changes)


def loss(cfg):
    return shape_loss(cfg, count_parameters(cfg).non_embedding)


@pytest.fixture(scope="module")
def gpt3_candidates():
    return candidates_frame(gpt3(), H100, SearchSpace())


# ---- the GPU table -----------------------------------------------------------------------------------
def test_named_gpu_is_looked_up_by_its_name_in_any_spelling():
    assert resolve_gpu("h100").sms == 132
    assert resolve_gpu("NVIDIA A100-SXM4-80GB").key == "a100"
    assert resolve_gpu("a100").sms == 108


def test_local_gpu_is_modelled_with_the_devices_own_sm_count():
    gpu = resolve_gpu(None, local=("NVIDIA H100 PCIe", 114))
    assert (gpu.key, gpu.sms, gpu.sms_source) == ("h100", 114, "device")


def test_unknown_gpu_or_no_gpu_at_all_is_a_user_error_naming_the_flag():
    with pytest.raises(UserError, match="--gpu: 'tpu-v5'"):
        resolve_gpu("tpu-v5")
    with pytest.raises(UserError, match="--gpu: no local GPU"):
        resolve_gpu(None, local=None)
    with pytest.raises(UserError, match="not in the advisor's table"):
        resolve_gpu(None, local=("NVIDIA B200", 148))


def test_h100_slowdown_by_alignment_is_the_logits_sweeps_evidence():
    # logits sweep (reports/h100@2a60355/sweeps): odd v 7.2x, v = 2 or 4 mod 8 2.8x, multiples of 8 (16 bytes) 1x
    assert [H100.slowdown(b) for b in (2, 4, 8, 16, 128)] == [7.2, 2.8, 2.8, 1.0, 1.0]


def test_alignment_in_elements_scales_with_the_dtype():
    assert elements(128, "bfloat16") == 64 and elements(128, "float32") == 32 and elements(16, "bfloat16") == 8


# ---- the cost model ----------------------------------------------------------------------------------
def test_gemm_time_is_waves_times_one_tiles_time_at_the_per_sm_ceiling():
    # (1024,1024)x(1024,2048): 128x128 tiles -> 8 x 16 = 128 tiles, one wave on 132 SMs (64x128 takes two waves
    # of half the work: a tie, and the larger tile wins); one tile = 2*128*128*1024 FLOPs at 806.7/132 TFLOP/s
    g = estimate_gemm("mm", "forward", 1, 1024, 2048, 1024, H100, "bfloat16")
    assert (g.tile, g.tiles, g.waves) == ("128x128", 128, 1)
    assert g.compute_ms == pytest.approx(2 * 128 * 128 * 1024 / (806.7e12 / 132) * 1e3)
    assert g.time_ms == pytest.approx(g.compute_ms)  # 10.5 MB moved: compute-bound


def test_attention_score_bmm_is_bound_by_the_bytes_of_its_score_matrices():
    # b*a = 128 matrices of (2048,80)x(80,2048): 128*(2*2048*80 + 2048^2)*2 bytes at 3.0 TB/s = 0.386 ms
    # (measured on the H100: 0.429 ms, reports/h100@2a60355/layer/figure1-eager)
    g = estimate_gemm("attention_score", "forward", 128, 2048, 2048, 80, H100, "bfloat16")
    assert g.memory_ms == pytest.approx(128 * (2 * 2048 * 80 + 2048 ** 2) * 2 / 3.0e12 * 1e3)
    assert g.time_ms == pytest.approx(g.memory_ms) and g.memory_ms > g.compute_ms


def test_backward_gemms_have_the_input_and_weight_gradient_shapes():
    cfg = gpt3()
    qkv = [g for g in gemm_estimates(cfg, H100) if g.component == "qkv_transform"]
    assert [(g.pass_name, g.m, g.n, g.k) for g in qkv] == [
        ("forward", 8192, 7680, 2560), ("backward", 8192, 2560, 7680), ("backward", 2560, 7680, 8192)]


def test_unpadded_vocabulary_costs_what_the_h100_showed():
    # measured: (8192,2560)x(2560,50257) 19.07 ms vs 2.70 ms at 50304 (reports/h100@2a60355/sweeps/speed.txt)
    def fwd(v):
        df = logits_estimate(gpt3(padded_vocab_size=v), H100)
        return float(df[(df["pass"] == "forward") & (df["component"] == "logits")]["time_ms"].iloc[0])
    assert fwd(50304) == pytest.approx(2.70, rel=0.1)
    assert fwd(50257) == pytest.approx(19.07, rel=0.1)


@pytest.mark.parametrize("head_dim,runs_as", [(80, 96), (128, 128), (64, 64), (136, 192), (256, 256), (84, None),
                                             (264, None)])
def test_flash_attention_runs_head_dims_in_buckets(head_dim, runs_as):
    assert flash_head_dim(head_dim) == runs_as


def test_flash_attention_time_matches_the_h100_evidence():
    # figure1-flash on the H100: a=20 (h/a=128) 379.5 us, a=32 (h/a=80, runs as 96) 441.6 us
    assert flash_forward_ms(gpt3(num_attention_heads=20), H100) == pytest.approx(0.3795, rel=0.01)
    assert flash_forward_ms(gpt3(num_attention_heads=32), H100) == pytest.approx(0.4416, rel=0.05)


def test_training_step_is_layers_times_layer_plus_logits():
    step_ms, tokens_per_s = training_step(2.0, 3.0, 10, 8192)
    assert step_ms == 23.0 and tokens_per_s == pytest.approx(8192 / 0.023)


# ---- the rules ---------------------------------------------------------------------------------------
def test_vocab_padded_by_the_config_is_flagged_but_passes_the_gemm():
    check = check_vocab(gpt3(), H100)  # tokenizer v=50257, padded to 50304 by vocab_divisible_by=128
    assert check.status == "warn" and "50257" in check.finding and "50304" in check.finding
    assert check.cost_ms > 0  # what an unpadded framework would pay
    assert "19.07 ms" in check.gpu_evidence


def test_unpadded_vocab_fails_and_a_multiple_of_8_is_only_a_warning_on_h100():
    assert check_vocab(gpt3(padded_vocab_size=50257), H100).status == "fail"
    multiple_of_8 = check_vocab(gpt3(padded_vocab_size=50264), H100)
    assert multiple_of_8.status == "warn" and "not a multiple of 64" in multiple_of_8.finding
    assert check_vocab(gpt3(vocab_size=50304), H100).status == "pass"


def test_vocab_rule_scales_with_the_dtype():
    # 50272 = 32 x 1571: 128 bytes of float32, but only 64 bytes of bf16
    assert check_vocab(gpt3(padded_vocab_size=50272, dtype="float32"), H100).status == "warn"  # v itself unaligned
    assert check_vocab(gpt3(vocab_size=50272, padded_vocab_size=50272, dtype="float32"), H100).status == "pass"
    assert check_vocab(gpt3(vocab_size=50272, padded_vocab_size=50272), H100).status == "warn"


def test_vocab_cost_compares_the_vocabulary_as_run_with_it_padded():
    unpadded, padded = vocab_pair(gpt3(), H100)  # the config pads 50257 itself: what is the padding worth?
    assert (unpadded.embedding_rows, padded.embedding_rows) == (50257, 50304)
    as_run, padded = vocab_pair(gpt3(padded_vocab_size=50264), H100)
    assert (as_run.embedding_rows, padded.embedding_rows) == (50264, 50304)
    assert vocab_pair(gpt3(vocab_size=50304), H100) is None


def test_gpt3_head_dim_80_fails_and_names_the_aligned_head_counts():
    check = check_head_dim(gpt3(), H100)
    assert check.status == "fail" and check.value == "80"
    assert "largest power of two dividing it: 16" in check.finding
    assert "a=10 (h/a=256), a=20 (h/a=128), a=40 (h/a=64)" in check.finding
    assert "as 96" in check.finding  # fused attention pads 80 to its 96 bucket
    assert check.cost_ms > 0
    assert check_head_dim(gpt3(num_attention_heads=20), H100).status == "pass"


def test_head_dim_rule_scales_with_the_dtype():
    cfg = load_config("pythia-410m", hidden_size=1024, num_attention_heads=32)  # h/a = 32
    assert check_head_dim(cfg, H100).status == "fail"
    assert check_head_dim(cfg.replace(dtype="float32"), H100).status == "pass"  # 32 x 4 bytes = 128 bytes


def test_tokens_and_hidden_per_gpu_need_a_power_of_two_of_at_least_64():
    assert check_tokens(gpt3(), H100).status == "pass"
    bad = check_tokens(gpt3(micro_batch_size=3, seq_length=100), H100)  # 300 = 4 x 75
    assert bad.status == "fail" and "is 4" in bad.finding
    assert check_hidden_per_gpu(gpt3(), H100).status == "pass"  # 2560 = 512 x 5
    six = load_config("gpt3-2.7b", hidden_size=2880, num_attention_heads=36, tensor_parallel=6)  # h/t = 480 = 32 x 15
    assert check_hidden_per_gpu(six, H100).status == "fail"


def test_heads_per_gpu_and_tensor_parallel_rules():
    check = check_heads_per_gpu(gpt3(tensor_parallel=2))
    assert (check.status, check.value) == ("pass", "128/2")
    assert check_tensor_parallel(gpt3()).status == "pass"
    assert check_tensor_parallel(gpt3(tensor_parallel=2)).status == "warn"


def test_swiglu_8h_over_3_fails_and_11008_passes():
    llama = load_config("llama-2-7b-like")
    assert check_intermediate(llama, H100).status == "pass"
    naive = check_intermediate(llama.replace(intermediate_size=10923), H100)
    assert naive.status == "fail" and "nearest aligned f = 10944" in naive.finding and naive.cost_ms > 0


def test_attention_bmm_rules_only_when_attention_is_unfused():
    fused = {c.subject for c in check_gemms(gpt3(attention="sdpa"), H100)}
    eager = {c.subject for c in check_gemms(gpt3(attention="eager"), H100)}
    assert "attention_score" not in fused and {"attention_score", "attention_over_values"} <= eager


def test_gemm_alignment_is_judged_in_bytes_against_the_paper_and_this_gpu():
    checks = {(c.rule, c.subject): c for c in check_gemms(gpt3(attention="eager", padded_vocab_size=50257), H100)}
    assert checks[("gemm_alignment", "qkv_transform")].status == "pass"  # 2560 x 2 bytes: 1024-byte aligned
    score = checks[("gemm_alignment", "attention_score")]  # k = h/a = 80: 160 bytes, aligned to 32 bytes only
    assert score.status == "warn" and "32 bytes" in score.finding and score.cost_ms == 0  # >= 16: fast on H100
    logits = checks[("gemm_alignment", "logits")]  # n = 50257: odd, 2-byte aligned, 7.2x on H100
    assert logits.status == "fail" and "2 bytes" in logits.finding and logits.cost_ms > 0


def test_wave_and_tile_quantization_in_both_orientations():
    checks = {(c.rule, c.subject): c for c in check_gemms(gpt3(attention="eager"), H100)}
    qkv = checks[("wave_quantization", "qkv_transform")]  # 64 x 30 = 1920 tiles = 14 x 132 + 72
    assert "128x256: 1920 tiles, 15 waves, last 55% full; 256x128: 1920 tiles, 15 waves, last 55% full" in qkv.finding
    aov = checks[("tile_quantization", "attention_over_values")]  # n = 80 of a 128-wide tile: 62%
    assert aov.status == "fail" and "62%" in aov.finding and aov.cost_ms == 0  # memory-bound: costs nothing


def test_deepspeed_kernel_rule_uses_the_inference_helper():
    assert check_inference_kernels(gpt3()).status == "fail"  # h/a 80, rotary 20: the H100 assert
    assert check_inference_kernels(load_config("pythia-1b")).status == "pass"


# ---- scaling-law caution -----------------------------------------------------------------------------
def test_interpolation_is_linear_in_log_x_and_extends_the_end_segments():
    points = ((10.0, 1.0), (100.0, 3.0))
    assert interpolate(points, 10 ** 1.5) == pytest.approx((2.0, True))
    assert interpolate(points, 1000.0) == pytest.approx((5.0, False))
    assert interpolate(points, 1.0) == (0.0, False)  # never below zero


def test_swiglu_feed_forward_ratio_counts_three_matrices():
    assert feed_forward_ratio(load_config("llama-2-7b-like")) == pytest.approx(1.5 * 11008 / 4096)


def test_fewer_heads_beyond_003s_range_leave_the_flat_region_and_more_do_not():
    given = loss(gpt3())
    a20 = caution(given, loss(gpt3(num_attention_heads=20)))  # h/a 80 -> 128: beyond 003's 10..100
    assert a20.leaves_flat_region and "outside the range 003 shows for head dimension" in a20.message
    # both on the 1024 series' last segment, (31.6, 0%) -> (100, 1%), extended past 100
    assert a20.loss_delta_pct == pytest.approx(math.log10(128 / 80) / math.log10(100 / 31.6))
    a40 = caution(given, loss(gpt3(num_attention_heads=40)))
    assert not a40.leaves_flat_region and a40.loss_delta_pct == 0.0


# ---- proposals ---------------------------------------------------------------------------------------
def test_every_candidate_is_within_the_parameter_budget(gpt3_candidates):
    target = count_parameters(gpt3()).total
    assert len(gpt3_candidates) > 100
    assert (gpt3_candidates["params"] - target).abs().max() <= 0.05 * target
    tight = candidate_configs(gpt3(), SearchSpace(budget=0.01))
    assert tight and all(abs(count_parameters(c).total - target) <= 0.01 * target for c in tight)


def test_gpt3_proposals_fix_the_head_dim_and_include_the_papers_a20(gpt3_candidates):
    chosen = select_for_measurement(gpt3_candidates, 4)
    rows = gpt3_candidates.set_index("name").loc[chosen]
    assert "h2560-a20-L32" in chosen  # the paper's Fig. 1 shape
    assert (rows["head_dim"] % 64 == 0).all()
    assert gpt3_candidates.iloc[0]["is_given"] and gpt3_candidates.iloc[1]["modelled_speedup"] > 1


def test_layers_are_chosen_to_match_the_parameter_count():
    cfg = gpt3()
    assert layers_for(cfg, count_parameters(cfg).total) == 32
    half = load_config("gpt3-2.7b", hidden_size=2048, num_attention_heads=16)
    L = layers_for(half, count_parameters(cfg).total)
    totals = {n: abs(count_parameters(half.replace(num_layers=n)).total - count_parameters(cfg).total)
              for n in (L - 1, L, L + 1)}
    assert min(totals, key=totals.get) == L


def test_a_misaligned_vocabulary_is_padded_in_every_candidate():
    cfg = gpt3(padded_vocab_size=50257)
    assert padded_vocab(cfg, 128) == 50304
    assert all(c.embedding_rows == 50304 for c in candidate_configs(cfg, SearchSpace(h_window=0.05)))


def test_candidates_the_model_puts_clearly_behind_are_not_measured():
    frame = candidates_frame(load_config("pythia-410m"), H100, SearchSpace())
    chosen = select_for_measurement(frame, 4)
    assert chosen and (frame.set_index("name").loc[chosen, "rank_score"] >= 0.97).all()


# ---- ranking statistics ------------------------------------------------------------------------------
def _rounds(times: dict[str, tuple[list[float], list[float]]]) -> pd.DataFrame:
    rows = []
    for name, (layer, logits) in times.items():
        for r, (lt, gt) in enumerate(zip(layer, logits)):
            rows += [{"round": r, "candidate": name, "what": "layer_forward_backward", "time_ms": lt},
                     {"round": r, "candidate": name, "what": "logits_forward_backward", "time_ms": gt},
                     {"round": r, "candidate": name, "what": "layer_forward", "time_ms": lt / 3}]
    return pd.DataFrame(rows)


def test_speedup_is_the_median_of_per_round_ratios_with_nearest_rank_spread():
    shapes = pd.DataFrame({"name": ["given", "new"], "L": [2, 2], "tokens": [1000, 1000]})
    rounds = _rounds({"given": ([10, 11, 12], [2, 2, 2]), "new": ([8, 10, 9], [2, 2, 2])})
    per_round = round_steps(rounds, shapes)
    assert per_round[per_round["candidate"] == "given"]["step_ms"].tolist() == [22, 24, 26]
    summary = measured_summary(per_round, "given", 0.02).set_index("name")
    # ratios 22/18, 24/22, 26/20 = 1.222, 1.091, 1.300
    assert summary.loc["new", "speedup"] == pytest.approx(22 / 18)
    assert summary.loc["new", "speedup_p10"] == pytest.approx(24 / 22)
    assert summary.loc["new", "speedup_p90"] == pytest.approx(26 / 20)
    assert summary.loc["new", "verdict"] == "faster" and summary.index[0] == "new"


@pytest.mark.parametrize("p10,median,p90,expected", [
    (0.98, 1.01, 1.04, "no gain"),  # the spread straddles 1.0
    (1.005, 1.01, 1.02, "no gain"),  # consistent, but below the 2% minimum
    (1.03, 1.05, 1.07, "faster"),
    (0.90, 0.93, 0.95, "slower"),
])
def test_verdicts(p10, median, p90, expected):
    assert verdict(p10, median, p90, 0.02) == expected


def test_quantile_is_nearest_rank_and_the_median_is_the_median():
    assert quantile([1, 2, 3, 4, 5], 0.1) == 1 and quantile([1, 2, 3, 4, 5], 0.9) == 5
    assert quantile([1, 2], 0.5) == 1.5


def test_paired_difference_pairs_times_within_each_round():
    rounds = pd.DataFrame({"round": [0, 0, 1, 1, 2, 2], "candidate": ["slow", "fast"] * 3,
                           "what": ["logits_forward_backward"] * 6, "time_ms": [19.0, 2.7, 19.2, 2.6, 18.9, 2.9]})
    med, lo, hi = paired_difference(rounds, "slow", "fast", "logits_forward_backward")
    assert (med, lo, hi) == pytest.approx((16.3, 16.0, 16.6))  # differences 16.3, 16.6, 16.0


def test_component_difference_counts_each_shapes_own_layers():
    comps = pd.DataFrame({"config": ["g", "g", "p", "p"], "pass": ["forward"] * 4, "kind": ["gemm", "non-gemm"] * 2,
                          "component": ["mlp_up", "norm", "mlp_up", "norm"], "time_us": [100.0, 10.0, 80.0, 12.0]})
    diff = component_difference(comps, "g", "p", given_layers=10, best_layers=11).set_index("component")
    assert diff.loc["mlp_up", "saved_per_layer_us"] == 20
    assert diff.loc["mlp_up", "saved_model_ms"] == pytest.approx((100 * 10 - 80 * 11) / 1e3)
    assert diff.loc["norm", "saved_model_ms"] == pytest.approx((10 * 10 - 12 * 11) / 1e3)


# ---- SwiGLU search -----------------------------------------------------------------------------------
def test_swiglu_widths_are_multiples_of_64_around_11008_plus_8h_over_3():
    sizes = swiglu_sizes(load_config("llama-2-7b-like"), SwigluSearch(window=0.05, step=64))
    assert 11008 in sizes and 10923 in sizes  # the config's own and round(8h/3)
    assert sizes[0] == 10496 and sizes[-1] == 11520  # multiples of 64 in [0.95, 1.05] x 11008
    assert all(s % 64 == 0 for s in sizes if s != 10923)


def test_swiglu_search_needs_a_swiglu_config():
    with pytest.raises(UserError, match="--swiglu: config gpt3-2.7b uses gelu"):
        swiglu_sizes(gpt3(), SwigluSearch())


def test_mlp_block_flops_are_three_gemms():
    llama = load_config("llama-2-7b-like")
    assert mlp_flops(llama, backward=False) == 3 * 2 * 4096 * 4096 * 11008
    assert mlp_flops(llama, backward=True) == 9 * 2 * 4096 * 4096 * 11008


def test_modelled_swiglu_ranks_the_misaligned_8h_over_3_last():
    llama = load_config("llama-2-7b-like")
    df = modelled_swiglu(llama, H100, swiglu_sizes(llama, SwigluSearch()))
    assert df.sort_values("modelled_tflops").iloc[0]["ffn"] == 10923


# ---- report figures ----------------------------------------------------------------------------------
def test_figures_have_titles_and_axis_titles_with_units(gpt3_candidates):
    fig = candidates_figure(gpt3_candidates.head(20), pd.DataFrame())
    assert fig["layout"]["title"]["text"]
    assert "billions" in fig["layout"]["xaxis"]["title"]["text"]
    assert "tokens/s" in fig["layout"]["yaxis"]["title"]["text"]
    llama = load_config("llama-2-7b-like")
    sw = swiglu_figure(modelled_swiglu(llama, H100, [10944, 11008]), 11008)
    assert "TFLOP/s" in sw["layout"]["yaxis"]["title"]["text"] and sw["layout"]["xaxis"]["title"]["text"]


# ---- the CLI -----------------------------------------------------------------------------------------
TINY = """hidden_size: 160
num_attention_heads: 4
num_layers: 4
seq_length: 64
micro_batch_size: 2
vocab_size: 1001
padded_vocab_size: 1001
"""
TINY_SWIGLU = """hidden_size: 192
num_attention_heads: 3
num_layers: 2
seq_length: 32
micro_batch_size: 2
vocab_size: 1024
intermediate_size: 512
activation: swiglu
norm: rmsnorm
bias: false
"""


def test_cli_without_measure_models_gpt3_and_writes_every_output(tmp_path):
    assert main(["advise", "--config", "gpt3-2.7b", "--gpu", "h100", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "advice.json").read_text())
    status = {c["rule"]: c["status"] for c in doc["checks"]}
    assert status["head_dim_alignment"] == "fail" and status["vocab_padding"] == "warn"
    assert doc["environment"]["torch"] and doc["gpu_model"]["sms"] == 132
    assert "h2560-a20-L32" in doc["selected"]
    assert len(pd.read_csv(tmp_path / "candidates.csv")) == doc["candidates_total"]
    assert "Checks: the paper" in (tmp_path / "report.html").read_text()


def test_measure_wiring_on_a_tiny_config_on_the_cpu(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    code = main(["advise", "--config", str(config), "--gpu", "h100", "--measure", "--device", "cpu", "--top", "1",
                 "--rounds", "2", "--out", str(out)])
    assert code == 0
    measured = pd.read_csv(out / "measured.csv")
    rounds = pd.read_csv(out / "rounds.csv")
    assert measured["is_given"].sum() == 1 and len(measured) >= 2 and (measured["rounds"] == 2).all()
    assert set(rounds["what"]) == {"layer_forward", "layer_forward_backward", "logits_forward_backward"}
    # every measured shape and the given one's second timing (its self-spread), three steps, two rounds
    assert len(rounds) == 2 * (len(measured) + 1) * 3 and (rounds["time_ms"] > 0).all()
    assert "tiny (again)" in set(rounds["candidate"]) and "tiny (again)" not in set(measured["name"])
    assert (measured["self_spread"] >= 0).all() and (measured["speedup_ci_lo"] <= measured["speedup_ci_hi"]).all()
    # every proposal fixes h/a = 40 (not 128 bytes of float32) and pads v = 1001
    proposals = measured[~measured["is_given"]]
    assert (proposals["head_dim"] % 32 == 0).all() and (proposals["v"] % 32 == 0).all()
    checks = pd.read_csv(out / "checks.csv").set_index("rule")
    assert checks.loc["vocab_padding", "status"] == "fail" and checks.loc["head_dim_alignment", "status"] == "fail"
    assert "at v=1001" in checks.loc["vocab_padding", "measured_note"]  # timed here: v=1001 vs 1024
    assert not math.isnan(checks.loc["vocab_padding", "measured_cost_ms"])
    assert not math.isnan(checks.loc["head_dim_alignment", "measured_cost_ms"])
    diff = pd.read_csv(out / "components_diff.csv")
    assert {"mlp_up", "qkv_transform"} <= set(diff["component"])
    assert "Where the best proposal saves time" in (out / "report.html").read_text()


def test_several_configs_are_spread_over_two_local_workers_and_a_rerun_resumes(tmp_path, capsys):
    """Issue 23: `advise --measure` with two configs over the local executor (2 CPU workers): each config's
    rounds in one worker, each written by the driver into OUT/<name>/; a second run advises neither again."""
    first, second = tmp_path / "tiny.yaml", tmp_path / "tiny2.yaml"
    first.write_text(TINY)
    second.write_text(TINY.replace("hidden_size: 160", "hidden_size: 192") + "name: tiny2\n")
    out = tmp_path / "out"
    args = ["advise", "--config", str(first), "--config", str(second), "--gpu", "h100", "--measure", "--device",
            "cpu", "--top", "1", "--rounds", "1", "--no-profile", "--out", str(out)]
    assert main([*args, "--executor", "local", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    for name in ("tiny", "tiny2"):
        doc = json.loads((out / name / "advice.json").read_text())
        measured = pd.read_csv(out / name / "measured.csv")
        assert doc["config"]["name"] == name and measured["is_given"].sum() == 1 and len(measured) >= 2
        assert (pd.read_csv(out / name / "rounds.csv")["time_ms"] > 0).all()
        assert f"  {name}: best measured" in printed
    assert "[local-" in printed  # the summary names the worker that measured each config
    assert main(args) == 0  # the rerun finds both advised and measures nothing
    assert capsys.readouterr().err.count("already advised") == 2


def test_executor_without_measure_is_refused_in_one_line(tmp_path, capsys):
    assert main(["advise", "--config", "gpt3-2.7b", "--gpu", "h100", "--executor", "local",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --executor local: spreads measured configs") and "\n" not in err


def test_swiglu_search_measures_the_mlp_block_on_the_cpu(tmp_path):
    config = tmp_path / "glu.yaml"
    config.write_text(TINY_SWIGLU)
    out = tmp_path / "out"
    code = main(["advise", "--config", str(config), "--gpu", "h100", "--swiglu", "--ffn-window", "20%", "--measure",
                 "--device", "cpu", "--rounds", "1", "--out", str(out)])
    assert code == 0
    swiglu = pd.read_csv(out / "swiglu.csv")
    assert set(swiglu["ffn"]) == {448, 512, 576}  # 512 +- 20% at multiples of 64; round(8h/3) = 512
    assert swiglu.loc[swiglu["ffn"] == 512, "verdict"].iloc[0] == "reference"
    assert list(swiglu["rank"]) == [1, 2, 3] and (swiglu["tflops"] > 0).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_measure_without_a_gpu_is_refused_unless_the_cpu_is_named(tmp_path, capsys):
    code = main(["advise", "--config", "gpt3-2.7b", "--gpu", "h100", "--measure", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --measure: no CUDA device")


@pytest.mark.parametrize("args,expected", [
    (["--budget", "abc"], "error: --budget: 'abc' is not a percentage"),
    (["--budget", "5"], "error: --budget: 5 is ambiguous; write 5% or 0.05"),
    (["--gpu", "tpu"], "error: --gpu: 'tpu' is not one the advisor models"),
    (["--top", "-1"], "error: --top: must be positive"),
    (["--swiglu"], "error: --swiglu: config gpt3-2.7b uses gelu"),
    (["--measure", "--device", "cpu"], "error: --device: gpt3-2.7b has"),
    (["--gpu", "v100"], "error: --attention: v100 has no fused attention"),
    (["--h-window", "150%"], "error: --h-window: must be between 0% and 100%"),
])
def test_bad_input_prints_one_line_and_exits_2(tmp_path, capsys, args, expected):
    base = ["advise", "--config", "gpt3-2.7b", "--out", str(tmp_path)]
    if "--gpu" not in args:
        base += ["--gpu", "h100"]
    code = main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(expected)


# ---- calibration tables (issue 22) -------------------------------------------------------------------
from profiler.advisor.agreement import (agreement_summary, config_agreement, reference_configs,  # noqa: E402
                                        spearman)
from profiler.advisor.calibration import (Calibration, flash_padded_flops, load_table,  # noqa: E402
                                          points_from_layer_components, points_from_sweeps)
from profiler.advisor.gpus import with_calibration  # noqa: E402
from profiler.advisor.ranking import bootstrap_interval, faster_verdict, self_spread  # noqa: E402
from profiler.advisor.serving import ServingShape, decode_bytes, decode_ms, serving_flag  # noqa: E402


def _table(gemm=(), attention=()):
    return Calibration({"gpu": "h100", "gpu_name": "test", "dtype": "bfloat16", "provenance": {"source": "test"},
                        "gemm": list(gemm), "attention": list(attention)})


def test_a_measured_gemm_shape_gets_its_measured_time_and_a_neighbour_its_ratio():
    analytic = estimate_gemm("mm", "forward", 1, 8192, 10240, 2560, H100, "bfloat16").time_ms
    gpu = dataclasses.replace(H100, calibration=_table(gemm=[
        {"batch": 1, "m": 8192, "n": 10240, "k": 2560, "time_ms": 2 * analytic, "source": "test"}]))
    assert estimate_gemm("mm", "forward", 1, 8192, 10240, 2560, gpu, "bfloat16").time_ms == pytest.approx(2 * analytic)
    near = estimate_gemm("mm", "forward", 1, 8192, 10112, 2560, gpu, "bfloat16")
    plain = estimate_gemm("mm", "forward", 1, 8192, 10112, 2560, H100, "bfloat16")
    assert near.calibration_factor == pytest.approx(2.0) and near.time_ms == pytest.approx(2 * plain.time_ms)
    # an odd k is another alignment class: the aligned point says nothing about it
    assert estimate_gemm("mm", "forward", 1, 8192, 10240, 2561, gpu, "bfloat16").calibration_factor is None
    # nor about a dtype the table was not measured in
    assert estimate_gemm("mm", "forward", 1, 8192, 10240, 2560, gpu, "float32").calibration_factor is None


def test_a_gemm_role_is_calibrated_by_points_measured_in_its_own_layout():
    # the H200 agreement run: tables measured as F.linear only left odd-h layers 15-19% slower than modelled
    shape = (8192, 2496, 9984)
    analytic = estimate_gemm("mm", "backward", 1, *shape, H100, "bfloat16").time_ms
    point = {"batch": 1, "m": shape[0], "n": shape[1], "k": shape[2], "source": "test"}
    gpu = dataclasses.replace(H100, calibration=_table(gemm=[{**point, "layout": "nt", "time_ms": analytic},
                                                             {**point, "layout": "nn", "time_ms": 1.5 * analytic}]))
    assert estimate_gemm("mm", "backward", 1, *shape, gpu, "bfloat16", "nn").calibration_factor == pytest.approx(1.5)
    assert estimate_gemm("mm", "forward", 1, *shape, gpu, "bfloat16", "nt").calibration_factor == pytest.approx(1.0)
    # a layout the table never measured takes the nearest points of any layout
    assert estimate_gemm("mm", "backward", 1, *shape, gpu, "bfloat16", "tn").calibration_factor == pytest.approx(
        math.sqrt(1.5))
    # a table from before layouts (no layout field) was measured as F.linear and answers every role from it
    legacy = dataclasses.replace(H100, calibration=_table(gemm=[{**point, "time_ms": 2 * analytic}]))
    assert legacy.calibration.layouts == {"nt"}
    assert estimate_gemm("mm", "backward", 1, *shape, legacy, "bfloat16", "nn").calibration_factor == pytest.approx(2.0)


def test_the_cost_model_asks_for_each_roles_autograd_layout():
    cfg = gpt3(attention="flash", hidden_size=2496, num_attention_heads=39)
    seen = []
    table = _table(gemm=[{"batch": 1, "m": 8192, "n": 2496, "k": 2496, "time_ms": 1.0, "source": "t", "layout": "nt"}])
    original = table.gemm_factor
    table.gemm_factor = lambda *a, **kw: seen.append(kw["layout"]) or original(*a, **kw)
    gemm_estimates(cfg, dataclasses.replace(H100, calibration=table))
    assert seen[:3] == ["nt", "nn", "tn"] and set(seen) == {"nt", "nn", "tn"}


def test_calibration_operands_are_stored_as_autograd_stores_them():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("calibrate_advisor",
                                                  Path(__file__).parents[1] / "scripts" / "calibrate_advisor.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    m, n, k = 6, 5, 4
    strides = {}
    for layout in ("nt", "nn", "tn"):
        a, b, fn = script.gemm_operands(layout, 1, m, n, k, device="cpu", dtype=torch.float32)
        out = fn()
        assert out.numel() == m * n and a.numel() * b.numel() == m * k * k * n  # one (m,k)x(k,n) GEMM's sizes
        strides[layout] = (a.shape, b.shape)
    # nn.Linear's weight (n, k); dgrad's W (n_fwd, k_fwd) row-major = (K, N); wgrad's dY (K, N) and X (K, M)
    assert strides == {"nt": ((m, k), (n, k)), "nn": ((m, k), (k, n)), "tn": ((k, n), (k, m))}
    with pytest.raises(ValueError, match="layout"):
        script.gemm_operands("xx", 1, m, n, k, device="cpu", dtype=torch.float32)


def _flash_points(rates_tflops: dict[int, float], batch_heads_times_dim: int = 4 * 2560):
    """Causal forward points at s=2048 for each h/a, b*a = (b*h)/(h/a), timed at the given rate per padded FLOP."""
    out = []
    for d, tflops in rates_tflops.items():
        bh = batch_heads_times_dim // d
        out.append({"pass": "forward", "causal": True, "batch_heads": bh, "seq": 2048, "head_dim": d,
                    "time_ms": flash_padded_flops(bh, 2048, d, True) / (tflops * 1e12) * 1e3, "source": "test"})
    return out


def test_flash_attention_cost_depends_on_the_head_dim_bucket_when_calibrated():
    # the bug: one fused-attention rate for every h/a made a=40 (h/a=64) and a=80 (h/a=32) tie at h=2560
    a40, a80 = gpt3(attention="flash", num_attention_heads=40), gpt3(attention="flash", num_attention_heads=80)
    assert flash_forward_ms(a40, H100) == pytest.approx(flash_forward_ms(a80, H100))  # the analytic model ties
    gpu = dataclasses.replace(H100, calibration=_table(attention=_flash_points({32: 217.0, 64: 311.0, 128: 338.0})))
    assert flash_forward_ms(a80, gpu) / flash_forward_ms(a40, gpu) == pytest.approx(311.0 / 217.0)
    assert step_estimate(a40, gpu).step_ms < step_estimate(a80, gpu).step_ms


def test_an_unmeasured_flash_bucket_falls_back_to_the_gpus_one_rate():
    gpu = dataclasses.replace(H100, calibration=_table(attention=_flash_points({64: 311.0})))
    a20 = gpt3(attention="flash", num_attention_heads=20)  # h/a = 128: bucket 128, not in the table
    assert flash_forward_ms(a20, gpu) == pytest.approx(flash_forward_ms(a20, H100))


def test_committed_tables_calibrate_the_h100_and_h200_and_name_their_source():
    for key in ("h100", "h200"):
        table = load_table(key)
        assert table is not None and len(table.gemm) > 10 and len(table.attention) > 10
        summary = table.summary()
        assert summary["calibrated"] and summary["provenance"]["built_by"].startswith("python scripts/calibrate_advisor.py")
        provenance = summary["provenance"]  # measured on the GPU (its commit) or built from evidence (theirs)
        assert provenance.get("git_sha") or all(s.get("git_sha") for s in provenance["sources"])
    assert resolve_gpu("h100").calibration is not None and resolve_gpu("a100").calibration is None
    assert resolve_gpu("h100", calibration=None).calibration is None


def test_points_from_evidence_take_each_gemm_roles_shape_from_the_config():
    cfg = load_config("pythia-1b")
    components = pd.DataFrame([
        {"config": "pythia-1b", "pass": "forward", "component": "mlp_up", "role": "fprop", "time_us": 90.0},
        {"config": "pythia-1b", "pass": "backward", "component": "mlp_up", "role": "dgrad", "time_us": 80.0},
        {"config": "pythia-1b", "pass": "forward", "component": "flash_attention", "role": None, "time_us": 110.0},
        {"config": "pythia-1b", "pass": "forward", "component": "norm", "role": None, "time_us": 20.0}])
    gemms, attention = points_from_layer_components(components, {"pythia-1b": cfg}, "test")
    # Y(b*s, f) = X(b*s, h) W(h, f); dgrad dX(b*s, h) = dY W^T has inner dimension f
    assert {(g["m"], g["n"], g["k"]): g["time_ms"] for g in gemms} == {(2048, 8192, 2048): 0.09, (2048, 2048, 8192): 0.08}
    assert [g["layout"] for g in gemms] == ["nt", "nn"]  # each role in the layout autograd ran it
    assert attention == [{"pass": "forward", "causal": True, "batch_heads": 8, "seq": 2048, "head_dim": 256,
                          "time_ms": 0.11, "source": "test pythia-1b forward"}]
    sweep = pd.DataFrame([{"kind": "flash", "status": "ok", "dtype": "bfloat16", "batch": 512, "m": 2048, "n": 2048,
                           "k": 64, "causal": False, "median_ms": 1.76},
                          {"kind": "mm", "status": "ok", "dtype": "bfloat16", "batch": 1, "m": 27648, "n": 64,
                           "k": 4096, "causal": None, "median_ms": 0.09},
                          {"kind": "mm", "status": "error", "dtype": "bfloat16", "batch": 1, "m": 1, "n": 1, "k": 1,
                           "causal": None, "median_ms": None}])
    gemms, attention = points_from_sweeps(sweep, "sweep")
    assert [(g["m"], g["n"], g["k"]) for g in gemms] == [(27648, 64, 4096)]
    assert attention[0]["causal"] is False and attention[0]["head_dim"] == 64 and attention[0]["batch_heads"] == 512


def test_the_cpu_ranking_of_gpt3_shows_a20_and_a40_no_longer_ties_a80():
    gpu = resolve_gpu("h100")
    frame = candidates_frame(gpt3(attention="flash"), gpu, SearchSpace()).set_index("name")
    assert frame.loc["h2560-a40-L32", "modelled_speedup"] > frame.loc["h2560-a80-L32", "modelled_speedup"] + 0.05
    assert frame.loc["h2560-a20-L32", "modelled_speedup"] > frame.loc["h2560-a40-L32", "modelled_speedup"]


def test_cli_shows_a20_and_names_the_calibration_or_its_absence(tmp_path, capsys):
    assert main(["advise", "--config", "gpt3-2.7b", "--gpu", "h100", "--out", str(tmp_path / "h100")]) == 0
    text = capsys.readouterr().out
    table = text[text.index("candidates (modelled"):text.index("would measure")]
    assert "h2560-a20-L32" in table and "cost model calibrated for h100 by profiler/advisor/calibration/h100.json" in text
    doc = json.loads((tmp_path / "h100" / "advice.json").read_text())
    assert doc["calibration"]["calibrated"] and doc["calibration"]["gemm_points"] > 100
    assert main(["advise", "--config", "gpt3-2.7b", "--gpu", "a100", "--out", str(tmp_path / "a100")]) == 0
    assert "cost model UNCALIBRATED for a100" in capsys.readouterr().out
    doc = json.loads((tmp_path / "a100" / "advice.json").read_text())
    assert doc["calibration"]["calibrated"] is False
    assert "UNCALIBRATED" in (tmp_path / "a100" / "report.html").read_text()


def test_calibration_flag_takes_a_table_file_or_none(tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"gpu": "h100", "dtype": "bfloat16", "provenance": {"source": "a test table"},
                                 "gemm": [], "attention": []}))
    assert main(["advise", "--config", "pythia-160m", "--gpu", "h100", "--calibration", str(table), "--top", "1",
                 "--out", str(tmp_path / "o")]) == 0
    assert "a test table" in capsys.readouterr().out
    assert main(["advise", "--config", "pythia-160m", "--gpu", "h100", "--calibration", "none", "--top", "1",
                 "--out", str(tmp_path / "o2")]) == 0
    assert "UNCALIBRATED for h100" in capsys.readouterr().out
    with pytest.raises(UserError, match="--calibration"):
        with_calibration(H100, tmp_path / "missing.json")


# ---- honest statistics (issue 22, item 3) ------------------------------------------------------------
def test_bootstrap_interval_is_seeded_and_covers_the_median():
    ratios = [1.05, 1.04, 1.06, 1.03, 1.055]
    lo, hi = bootstrap_interval(ratios, seed=0)
    assert (lo, hi) == bootstrap_interval(ratios, seed=0)
    assert lo <= statistics.median(ratios) <= hi and lo >= min(ratios) and hi <= max(ratios)


@pytest.mark.parametrize("speedup,lo,hi,spread,expected", [
    (1.05, 1.03, 1.06, 0.01, "faster"),  # interval excludes 1.0, gain above the self-spread and the minimum
    (1.05, 0.99, 1.07, 0.01, "no gain"),  # the interval includes 1.0
    (1.05, 1.03, 1.06, 0.06, "no gain"),  # the given shape against itself moved more than the gain
    (1.015, 1.01, 1.02, 0.001, "no gain"),  # below the 2% minimum
    (0.94, 0.92, 0.95, 0.01, "slower"),
])
def test_faster_needs_an_interval_above_one_and_a_gain_above_the_self_spread(speedup, lo, hi, spread, expected):
    assert faster_verdict(speedup, lo, hi, spread, 0.02) == expected


def _step_rounds(steps: dict[str, list[float]], spreads: dict[str, float] | None = None) -> pd.DataFrame:
    """A rounds table whose per-round whole-model step (L=1, logits 0) is the given ms; each call's p10/p90
    at +-spread/2 of its median."""
    rows = []
    for name, values in steps.items():
        half = (spreads or {}).get(name, 0.0) / 2
        for r, t in enumerate(values):
            rows += [{"round": r, "candidate": name, "what": "layer_forward_backward", "time_ms": t,
                      "p10_ms": t * (1 - half), "p90_ms": t * (1 + half)},
                     {"round": r, "candidate": name, "what": "logits_forward_backward", "time_ms": 0.0,
                      "p10_ms": 0.0, "p90_ms": 0.0}]
    return pd.DataFrame(rows)


def test_pythia_2_8b_batch_1_gain_inside_a_20_percent_single_call_spread_is_not_faster():
    # the 2026-11-23 H100 run called a=40 'faster' at 1.13x (p10 1.04) while single calls spread by ~20%
    given, a40 = [85.0, 84.0, 88.0], [75.3, 80.4, 69.0]  # per-round ratios 1.129, 1.045, 1.275
    rounds = _step_rounds({"pythia-2.8b": given, "a40": a40}, {"pythia-2.8b": 0.20, "a40": 0.20})
    shapes = pd.DataFrame({"name": ["pythia-2.8b", "a40"], "L": [1, 1], "tokens": [2048, 2048]})
    per_round = round_steps(rounds, shapes)
    ratios = [g / n for g, n in zip(given, a40)]
    assert verdict(quantile(ratios, 0.1), quantile(ratios, 0.5), quantile(ratios, 0.9), 0.02) == "faster"  # old rule
    summary = measured_summary(per_round, "pythia-2.8b", 0.02, rounds=rounds).set_index("name")
    assert summary.loc["a40", "speedup"] == pytest.approx(statistics.median(ratios))
    assert summary.loc["a40", "self_spread"] == pytest.approx(0.20)
    assert summary.loc["a40", "verdict"] == "no gain"


def test_self_spread_is_the_given_shape_against_its_own_second_timing():
    rounds = _step_rounds({"g": [10.0, 10.0, 10.0, 10.0, 10.0], "g (again)": [10.1, 9.95, 10.0, 10.2, 9.9],
                           "p": [9.5, 9.52, 9.49, 9.5, 9.51]})
    shapes = pd.DataFrame({"name": ["g", "p", "g (again)"], "L": [1, 1, 1], "tokens": [1, 1, 1]})
    per_round = round_steps(rounds, shapes)
    spread, how = self_spread(per_round, "g", rounds)
    assert spread == pytest.approx(abs(10 / 10.2 - 1)) and "against itself" in how
    summary = measured_summary(per_round, "g", 0.02, rounds=rounds).set_index("name")
    assert "g (again)" not in summary.index
    assert summary.loc["p", "verdict"] == "faster"  # ~5.3% against a self-spread of ~2%
    noisy = _step_rounds({"g": [10.0] * 5, "g (again)": [10.1, 9.95, 10.0, 10.7, 9.9], "p": [9.5, 9.52, 9.49, 9.5, 9.51]})
    summary = measured_summary(round_steps(noisy, shapes), "g", 0.02, rounds=noisy).set_index("name")
    assert summary.loc["p", "verdict"] == "no gain"  # the same gain, but the given shape moved 6.5% against itself


def test_default_rounds_are_five_on_a_gpu_and_said_on_a_cpu():
    from cli.advise import CPU_ROUNDS, GPU_ROUNDS
    assert GPU_ROUNDS >= 5 and CPU_ROUNDS >= 1
    assert AdviceOptions().rounds >= 5


# ---- agreement (issue 22, item 2) --------------------------------------------------------------------
def test_spearman_is_rank_correlation_with_average_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _agreement_case(p_steps, q_steps):
    rounds = _step_rounds({"g": [10.0] * 5, "g (again)": [10.0, 10.02, 9.98, 10.01, 10.0], "p": p_steps, "q": q_steps})
    shapes = pd.DataFrame({"name": ["g", "p", "q", "g (again)"], "L": [1] * 4, "tokens": [1] * 4})
    return round_steps(rounds, shapes), rounds


def test_top1_is_exact_within_noise_or_missed_by_the_advisors_own_rule():
    modelled = pd.DataFrame({"name": ["g", "p", "q"], "modelled_speedup": [1.0, 1.10, 1.05]})
    per_round, rounds = _agreement_case([9.0, 9.05, 8.95, 9.0, 9.02], [9.5] * 5)
    figures = config_agreement(per_round, modelled, "g", rounds=rounds)
    assert figures["top1"] == "exact" and figures["spearman"] == pytest.approx(1.0)
    # q measured best by ~0.4% in the median, but slower than p in two of five rounds: within the noise
    per_round, rounds = _agreement_case([9.0, 9.2, 8.8, 9.1, 8.9], [8.95, 9.25, 8.75, 9.15, 8.85])
    assert config_agreement(per_round, modelled, "g", rounds=rounds)["top1"] == "within noise"
    # q clearly faster than p in every round: missed
    per_round, rounds = _agreement_case([9.5] * 5, [9.0, 9.01, 8.99, 9.0, 9.0])
    figures = config_agreement(per_round, modelled, "g", rounds=rounds)
    assert figures["top1"] == "missed" and figures["measured_best_over_modelled_top"] == pytest.approx(9.5 / 9.0)
    summary = agreement_summary(pd.DataFrame([figures, {**figures, "top1": "exact", "top1_ok": True}]))
    assert summary["top1_share"] == 0.5 and not summary["meets_top1"]


def test_the_reference_set_spans_the_issues_configs():
    refs = reference_configs()
    keys = {r.key for r in refs}
    assert len(refs) >= 12
    assert {"pythia-160m", "pythia-12b", "gpt3-2.7b-flash", "gpt3-2.7b-eager", "llama-2-7b-like"} <= keys
    assert any(r.config.hidden_size == 16384 for r in refs)
    assert {r.config.attention for r in refs} == {"flash", "eager"}
    assert all(r.config.tokens >= 8192 for r in refs if r.config.hidden_size < 16384)
    with pytest.raises(UserError, match="--configs"):
        reference_configs(["nope"])


# ---- serving cost (issue 22, item 5) -----------------------------------------------------------------
def test_decode_reads_every_weight_but_the_input_embedding_and_the_kv_cache():
    cfg = load_config("pythia-1b")
    weights, kv = decode_bytes(cfg, batch=1, context=100)
    assert weights == (count_parameters(cfg).total - cfg.embedding_rows * cfg.hidden_size) * 2
    assert kv == 2 * cfg.num_layers * 100 * cfg.hidden_size * 2
    shape = ServingShape(batch=1, prompt_len=96, new_tokens=8)
    assert decode_ms(cfg, H100, shape) == pytest.approx((weights + kv) / (H100.bandwidth_tbps * 1e12) * 1e3)


def test_a_shape_that_trains_faster_but_serves_slower_is_flagged():
    assert serving_flag(1.05, 1.0, 0.95) == "trains faster, serves slower: decode 5.0% slower"
    assert serving_flag(1.05, 1.0, 0.99) == ""  # inside the serving tolerance
    assert serving_flag(0.98, 0.5, 0.5) == ""  # not faster to train: nothing to trade
    frame = candidates_frame(gpt3(attention="flash"), resolve_gpu("h100"), SearchSpace())
    assert {"modelled_prefill_ms", "modelled_decode_ms", "serving_flag"} <= set(frame.columns)
    # more, thinner layers: a longer KV cache and more launches per token
    deeper = frame.set_index("name").loc["h2304-a36-L40"]
    assert deeper["modelled_decode_speedup"] < 1.0


def test_measured_serving_joins_decode_and_prefill_and_flags_a_faster_trainer_that_decodes_slower():
    from inference.advisor_serving import serving_verdicts
    measured = pd.DataFrame({"name": ["g", "p"], "verdict": ["given shape", "faster"]})
    served = pd.DataFrame({"round": [0, 0, 1, 1], "name": ["g", "p", "g", "p"], "status": ["ok"] * 4,
                           "reason": [""] * 4, "decode_step_ms": [2.0, 2.2, 2.0, 2.2], "prefill_ms": [10, 10, 10, 10]})
    out = serving_verdicts(measured, served, "g").set_index("name")
    assert out.loc["p", "decode_speedup"] == pytest.approx(2.0 / 2.2)
    assert out.loc["p", "measured_serving_flag"] == "trains faster, serves slower: decode 9.1% slower"
    assert out.loc["g", "measured_serving_flag"] == ""


def test_measure_serving_times_prefill_and_decode_of_a_tiny_neox_on_the_cpu():
    from inference.advisor_serving import measure_serving
    cfg = load_config("pythia-70m", hidden_size=64, num_attention_heads=2, num_layers=2, padded_vocab_size=512,
                      vocab_size=512, intermediate_size=256, dtype="float32")
    served = measure_serving([cfg], batch=1, prompt_len=8, new_tokens=4, device=torch.device("cpu"), rounds=2)
    assert list(served["status"]) == ["ok", "ok"] and (served["decode_step_ms"] > 0).all()
    assert (served["prefill_ms"] > 0).all() and served["protocol"].iloc[0].startswith("interleaved")


def test_the_agreement_script_measures_one_reference_config_through_the_advisor(tmp_path):
    import importlib.util
    from pathlib import Path
    from profiler.advisor.agreement import ReferenceConfig
    spec = importlib.util.spec_from_file_location("advisor_agreement",
                                                  Path(__file__).parents[1] / "scripts" / "advisor_agreement.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    ref = ReferenceConfig("tiny", load_config(str(config), dtype="float32", seq_length=32), "wiring")
    options = AdviceOptions(top=1, measure=True, rounds=2, profile=False, check_costs=False, max_proposals=2)
    figures, shapes, rounds = script.measure_reference(ref, resolve_gpu("h100"), options, torch.device("cpu"))
    assert figures["config"] == "tiny" and figures["top1"] in ("exact", "within noise", "missed")
    assert figures["shapes"] == len(shapes) == 3 and set(shapes["measured_rank"]) <= {1, 2, 3}
    assert "tiny (again)" in set(rounds["candidate"])


def test_a_committed_agreement_run_remodelled_reproduces_its_evidence_and_fails_on_reversed_measurements():
    from pathlib import Path
    from profiler.advisor.agreement import remodelled_agreement
    root = Path(__file__).parents[1] / "evidence" / "h200"
    rounds = pd.read_csv(root / "advise-agreement" / "rounds.csv")
    rounds = rounds[rounds["config"] == "gpt3-2.7b-flash"]
    committed = pd.read_csv(root / "advise-calibration-6e76998" / "remodelled" / "agreement.csv")
    committed = committed[committed["model"] == "calibrated"].set_index("config").loc["gpt3-2.7b-flash"]
    gpu = resolve_gpu("h200")
    rows, shapes = remodelled_agreement(rounds, gpu)
    row = rows.set_index("config").loc["gpt3-2.7b-flash"]
    assert row["spearman"] == pytest.approx(committed["spearman"]) and row["top1"] == committed["top1"]
    assert row["shapes"] == len(shapes) == committed["shapes"]
    # doctored: every shape's rounds scaled so that its measured speed-up becomes 1 / its modelled one (the
    # modelled order reversed); the same model must now disagree with the measurement
    scale = (shapes["measured_speedup"] * shapes["modelled_speedup"]).set_axis(shapes["name"])
    base = "gpt3-2.7b-flash"
    doctored = rounds.copy()
    key = doctored["candidate"].replace({f"{base} (again)": base})
    doctored["time_ms"] = doctored["time_ms"] * key.map(scale)
    bad, _ = remodelled_agreement(doctored, gpu)
    assert bad["spearman"].iloc[0] < 0 and bad["top1"].iloc[0] == "missed"

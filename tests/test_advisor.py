"""Sizing advisor (issue 9): every rule on hand-checked cases, the cost model against hand arithmetic and the
committed H100 evidence, the proposal search, the ranking statistics, and the CLI end to end on the CPU
(a real layer, timed for real, at tiny sizes)."""

import json
import math

import pandas as pd
import pytest
import torch

from models import count_parameters, load_config
from profiler.advisor import GPUS, SearchSpace, candidates_frame, resolve_gpu, select_for_measurement
from profiler.advisor.candidates import candidate_configs, layers_for, padded_vocab
from profiler.advisor.cost_model import (estimate_gemm, flash_forward_ms, flash_head_dim, gemm_estimates,
                                         logits_estimate, training_step)
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
    assert len(rounds) == 2 * len(measured) * 3 and (rounds["time_ms"] > 0).all()
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

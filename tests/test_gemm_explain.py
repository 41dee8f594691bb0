"""Why each GEMM runs at its speed (issue 12, item 2), from the committed H100 traces: tiles parsed from the
kernel names, CTAs from the grid, tiles needed from the op's dims, waves on the trace's 132 SMs, persistent
kernels, split-K, flash's resident CTAs and head-dim padding, and the GEMM's memory roofline.
"""

from pathlib import Path

import pytest

from models import load_config
from profiler.attribution import attribute_detailed
from profiler.gemm_explain import config_shape, explain_gemms, gemm_shape, resident_ctas_per_sm, sm_limits
from profiler.kernel_names import parse_kernel_name
from profiler.trace import device_properties, load_trace

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "tests" / "fixtures" / "h100" / "layer" / "pythia-1b-train" / "tb" / "pythia-1b.1795430688633088519.pt.trace.json.gz"
EAGER = ROOT / "tests" / "fixtures" / "h100" / "layer" / "figure1-eager" / "tb" / "gpt3-2.7b.1795430659643611150.pt.trace.json.gz"
FLASH_C1 = next((ROOT / "tests" / "fixtures" / "h100" / "layer" / "figure1-flash" / "tb").glob("gpt3-2.7b-c1.*.pt.trace.json.gz"))
PEAK_TFLOPS, COPY_TBPS = 807.2, 3.0  # the committed run's measured matmul peak; the H100's measured copy


def _explain(path, **kw):
    acts = attribute_detailed(load_trace(path))[0]
    props = device_properties(path)
    return acts, explain_gemms(acts, sms=props["numSms"], limits=sm_limits(props), **kw)


@pytest.fixture(scope="module")
def train():
    return _explain(TRAIN, cfg=load_config("pythia-1b", attention="flash"))


@pytest.fixture(scope="module")
def eager():
    return _explain(EAGER, peak_tflops=PEAK_TFLOPS, copy_tbps=COPY_TBPS,
                    cfg=load_config("gpt3-2.7b", micro_batch_size=4, seq_length=2048, attention="eager"))


def _row(table, component, role="fprop", passname="forward"):
    rows = table[(table["pass"] == passname) & (table["component"] == component) & (table["role"] == role)]
    assert len(rows) == 1, (component, role, passname)
    return rows.iloc[0]


@pytest.mark.parametrize("name, family, tile, k_step, stages, cluster, split", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "nvjet", "256x128", 64, 4, (1, 2), False),
    ("nvjet_sm90_tss_64x8_64x16_4x1_v_bz_splitK_TNT", "nvjet", "64x8", 64, 16, (4, 1), True),
    ("sm80_xmma_gemm_f16f16_f16f32_f32_nn_n_tilesize160x128x32_stage4_warpsize2x2x1_tensor16x8x16_kernel",
     "xmma", "160x128", 32, 4, None, False),
    ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x10_nn_align8", "cutlass", "64x64", 32, 10, None, False),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_nn", "cublas", "128x128", 64, 3, None, False),
    ("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cute::tuple<int, int, int, int>, "
     "cutlass::gemm::collective::CollectiveMma<cutlass::gemm::MainloopSm90TmaGmmaWarpSpecialized<4, "
     "cute::tuple<cute::C<2>, cute::C<1>, cute::C<1> >>, cute::tuple<cute::C<128>, cute::C<256>, cute::C<64> >",
     "cutlass3", "128x256", 64, None, (2, 1), False),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, "
     "cutlass::bfloat16_t, Flash_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t> > >",
     "flash", "128x64", None, None, None, False),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, float, 128, 16, 4, 4, false>",
     "unknown", "unknown", None, None, None, False),
])
def test_kernel_names_announce_their_tiles(name, family, tile, k_step, stages, cluster, split):
    parsed = parse_kernel_name(name)
    assert (parsed.family, parsed.tile, parsed.k_step, parsed.stages, parsed.cluster, parsed.split_k_in_name) == \
        (family, tile, k_step, stages, cluster, split)


def test_resident_ctas_per_sm_come_from_the_launch_and_the_sm_limits():
    limits = sm_limits(device_properties(TRAIN))
    assert resident_ctas_per_sm(384, 168, 213188, limits) == 1  # nvjet: 213 KB of shared memory
    assert resident_ctas_per_sm(128, 255, 98304, limits) == 2  # flash forward, head dim 256: two fit
    assert resident_ctas_per_sm(128, 32, 0, limits) == 16  # a small elementwise block: 2048 threads per SM


def test_one_wave_when_the_tiles_fit_on_the_sms(train):
    _, table = train
    r = _row(table, "out_projection")
    assert (r["m"], r["n"], r["k"], r["tile"], r["ctas"], r["tiles"]) == (2048, 2048, 2048, "256x128", 128, 128)
    assert r["wave_model"] == "waves" and not r["persistent"]
    assert r["why"] == "256x128 tiles: 8 x 16 = 128 tiles on 132 SMs = 0.97 waves, last wave 97% full"


def test_a_persistent_kernel_loops_its_ctas_over_the_tiles(train):
    _, table = train
    r = _row(table, "qkv_transform")
    assert (r["ctas"], r["tiles"], r["grid"]) == (132, 384, "2x66x1")  # one CTA per SM, 2-CTA clusters
    assert r["persistent"] and r["wave_model"] == "persistent"
    assert r["why"].startswith("persistent kernel: 132 CTAs loop over 384 256x128 tiles (2.91 each); "
                               "wave quantization does not apply")


def test_backward_gemms_get_their_roles_shapes(train):
    _, table = train
    wgrad = _row(table, "mlp_up", "wgrad", "backward")  # weight gradient: (4h x tokens) x (tokens x h)
    assert (wgrad["m"], wgrad["n"], wgrad["k"]) == (8192, 2048, 2048)
    cfg = load_config("pythia-1b", attention="flash")
    for r in table[table["component"] != "flash_attention"].to_dict("records"):
        assert config_shape(cfg, r["component"], r["role"]) == (r["batch"], r["m"], r["n"], r["k"]), r["component"]


def test_shapes_fall_back_to_the_config_when_the_op_recorded_no_dims(train):
    acts, _ = train
    doctored = acts.copy()
    doctored["op_dims"] = None
    props = device_properties(TRAIN)
    table = explain_gemms(doctored, sms=132, limits=sm_limits(props), cfg=load_config("pythia-1b", attention="flash"))
    r = _row(table, "qkv_transform", "dgrad", "backward")
    assert (r["m"], r["n"], r["k"], r["shape_source"]) == (2048, 2048, 6144, "config")
    assert gemm_shape("aten::addmm", None) is None


def test_flash_forward_fits_two_ctas_per_sm_and_its_backward_one(train):
    _, table = train
    fwd, bwd = _row(table, "flash_attention", "", "forward"), _row(table, "flash_attention", "", "backward")
    assert (fwd["tile"], fwd["tiles"], fwd["ctas_per_sm"], fwd["wave_slots"]) == ("64x64", 256, 2, 264)
    assert fwd["why"] == "64x64 tiles: 32 x 8 = 256 tiles on 132 SMs x 2 resident CTAs = 0.97 waves, last wave 97% full"
    assert "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel" in bwd["kernel"] and bwd["ctas_per_sm"] == 1
    assert round(bwd["waves"], 2) == 1.94


def test_a_head_dim_the_flash_kernel_lacks_runs_padded():
    _, table = _explain(FLASH_C1)
    r = _row(table, "flash_attention", "")
    assert (r["n"], r["kernel_head_dim"], r["tile_efficiency_pct"]) == (40, 64, 62.5)
    assert "tiles 62% used (head dim 40 runs as 64)" in r["why"]


def test_the_tile_runs_along_the_output_columns_as_cublas_sees_them(eager):
    _, table = eager
    r = _row(table, "attention_over_values")  # n = h/a = 80 columns: one 96-wide tile covers them
    assert (r["batch"], r["m"], r["n"], r["tile"], r["tiles"]) == (128, 2048, 80, "96x256", 1024)
    assert round(r["tile_efficiency_pct"], 1) == 83.3


def test_the_attention_bmms_at_small_head_dims_are_memory_bound(eager):
    _, table = eager
    score, mlp = _row(table, "attention_score"), _row(table, "mlp_up")
    assert score["memory_bound"] and round(score["intensity_flop_per_byte"]) == 74
    assert round(score["roofline_tflops"]) == 223 and 80 < score["pct_of_roofline"] < 100
    assert "memory-bound: 74 FLOP/byte, HBM allows 223 TFLOP/s" in score["why"]
    assert not mlp["memory_bound"] and "memory-bound" not in mlp["why"]


def test_split_k_is_noted_when_the_grid_has_more_ctas_than_tiles(train):
    acts, _ = train
    doctored = acts.copy()
    rows = (doctored["component"] == "out_projection") & (doctored["pass"] == "forward")
    doctored["grid"] = [[2, 64, 4] if r else g for r, g in zip(rows, doctored["grid"])]
    table = explain_gemms(doctored, sms=132, limits=sm_limits(device_properties(TRAIN)))
    r = _row(table, "out_projection")
    assert (r["ctas"], r["split_k"]) == (512, 4) and r["why"].endswith("; split-K x4")
    assert _row(table, "mlp_down")["split_k"] == 1


def test_tflops_come_from_the_components_table_when_given(train):
    acts, plain = train
    components = plain[["pass", "component", "role"]].assign(flops=1e12, time_us=1e6)
    table = explain_gemms(acts, sms=132, components=components)
    assert (table["tflops"].round(9) == 1.0).all()
    own = _row(plain, "mlp_up")  # without it: 2 * m * n * k over the row's time
    assert own["flops"] == 2 * 2048 * 8192 * 2048

"""Sanity flags on the GEMMs (issue 12, item 4): none on the committed H100 traces; each fires on a trace
doctored to show its problem (a GEMV kernel, fp32 without TF32, a misaligned dim, a copy in a GEMM step).
"""

from pathlib import Path

import pytest

from profiler.attribution import attribute_detailed
from profiler.gemm_detect import classify
from profiler.gemm_explain import explain_gemms, sm_limits
from profiler.gemm_flags import ALIGNMENT_BYTES, gemm_flags, misaligned_dims, non_tensor_core_reason
from profiler.trace import device_properties, load_trace

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "tests" / "fixtures" / "h100" / "layer" / "pythia-1b-train" / "tb" / "pythia-1b.1795430688633088519.pt.trace.json.gz"
TRACES = [TRAIN, ROOT / "tests" / "fixtures" / "h100" / "layer" / "figure1-eager" / "tb" / "gpt3-2.7b.1795430659643611150.pt.trace.json.gz",
          *sorted((ROOT / "tests" / "fixtures" / "h100" / "layer" / "figure1-eager" / "tb").glob("*.gz"))]
GEMV = "void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, float, 128, 16, 4, 4, false>"
COPY = "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<direct_copy_kernel_cuda>"


def _flags(acts, dtype="bfloat16"):
    explained = explain_gemms(acts, sms=132, limits=sm_limits(device_properties(TRAIN)))
    return gemm_flags(explained, classify(acts), dtype=dtype)


@pytest.fixture(scope="module")
def train():
    return attribute_detailed(load_trace(TRAIN))[0]


@pytest.mark.parametrize("path", TRACES, ids=[p.name.split(".")[0] for p in TRACES])
def test_no_flag_on_the_committed_traces(path):
    assert _flags(attribute_detailed(load_trace(path))[0]).empty


def _rename(acts, component, name, passname="forward"):
    doctored = acts.copy()
    rows = (doctored["component"] == component) & (doctored["pass"] == passname) & \
        doctored["name"].str.startswith("nvjet")
    doctored.loc[rows, "name"] = name
    return doctored


def test_a_gemv_kernel_is_off_the_tensor_cores(train):
    flags = _flags(_rename(train, "mlp_down", GEMV))
    assert list(flags["flag"]) == ["non_tensor_core"] and flags.loc[0, "component"] == "mlp_down"
    assert flags.loc[0, "detail"].startswith("gemv kernel: CUDA cores")


def test_fp32_without_tf32_is_flagged_and_with_tf32_it_is_not():
    fp32 = "sm80_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize128x128x8_stage3_warpsize2x2x1_ffma_aligna4_alignc4"
    assert "no TF32" in non_tensor_core_reason(fp32, "float32")
    assert non_tensor_core_reason("sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x16_stage4", "float32") is None
    assert non_tensor_core_reason("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "bfloat16") is None


def test_a_dim_off_the_16_byte_alignment_is_flagged(train):
    doctored = train.copy()
    rows = (doctored["component"] == "out_projection") & (doctored["pass"] == "forward")
    doctored["op_dims"] = [[[2048], [2048, 2050], [2050, 2048], [], []] if r else d
                           for r, d in zip(rows, doctored["op_dims"])]
    flags = _flags(doctored)
    assert list(flags["flag"]) == ["misaligned"]
    assert flags.loc[0, "detail"] == f"k=2050 not a multiple of 8 bfloat16 elements ({ALIGNMENT_BYTES} bytes)"
    assert misaligned_dims(2048, 2050, 2048, "float32") == ["n=2050"]
    assert misaligned_dims(2048, 2052, 2048, "float32") == []


def test_a_copy_inside_a_gemm_step_is_an_extra_kernel(train):
    doctored = train.copy().astype({"op": object})
    rows = (doctored["region"] == "qkv_transform") & (doctored["op"] == "aten::sum") & \
        ~doctored["name"].str.startswith("Memset")
    doctored.loc[rows, "name"], doctored.loc[rows, "op"] = COPY, "aten::copy_"
    flags = _flags(doctored)
    assert list(flags["flag"]) == ["extra_kernels"]
    assert (flags.loc[0, "pass"], flags.loc[0, "component"]) == ("backward", "qkv_transform")
    assert flags.loc[0, "detail"].startswith("1 kernels per step besides the GEMM: void at::native::elementwise_kernel")

"""GEMM detection from two signals (issue 12, item 1), on the committed H100 traces: the launching aten op
and the kernel's name agree with the attribution everywhere in them, and each kind of disagreement is
reported when a trace is doctored to show it.
"""

from pathlib import Path

import pytest

from profiler.attribution import attribute_detailed
from profiler.gemm_detect import classify, detection_summary, disagreements, kernel_class, op_class
from profiler.trace import load_trace

FIXTURES = Path(__file__).parent / "fixtures" / "h100"
TRAIN = FIXTURES / "layer" / "pythia-1b-train" / "tb" / "pythia-1b.1795430688633088519.pt.trace.json.gz"
EAGER = FIXTURES / "layer" / "figure1-eager" / "tb" / "gpt3-2.7b.1795430659643611150.pt.trace.json.gz"
NVJET = "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT"
COPY = ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase&)")


@pytest.fixture(scope="module")
def train():
    return attribute_detailed(load_trace(TRAIN))[0]


@pytest.fixture(scope="module")
def eager():
    return attribute_detailed(load_trace(EAGER))[0]


@pytest.mark.parametrize("name, expected", [
    (NVJET, "gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
     "gemm"),
    ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x10_nn_align8", "gemm"),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, float, 128, 16, 4, 4, false>", "gemm"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<256, 64, 64, 4, false, false, "
     "cutlass::bfloat16_t, Flash_kernel_traits<256, 64, 64, 4, cutlass::bfloat16_t> > >", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "split_k_reduce"),
    ("Memset (Device)", "memset"),
    ("Memcpy DtoD (Device -> Device)", "copy"),
    (COPY, "copy"),
    ("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<c10::BFloat16>>", "reduction"),
    ("_rotary_kernel", "other"),
    ("_causal_softmax_kernel", "other"),
])
def test_kernel_names_are_classified_on_their_own(name, expected):
    assert kernel_class(name) == expected


def test_aten_ops_are_classified_on_their_own():
    assert [op_class(o) for o in ("aten::addmm", "aten::bmm", "aten::_flash_attention_backward", "aten::copy_",
                                  None)] == ["gemm", "gemm", "attention", "other", "none"]


@pytest.mark.parametrize("trace", ["train", "eager"])
def test_both_signals_agree_with_the_attribution_on_the_committed_traces(trace, request):
    classified = classify(request.getfixturevalue(trace))
    assert disagreements(classified).empty
    summary = detection_summary(classified)
    assert summary["agree"].all()
    gemm = summary[summary["kind"] == "gemm"]
    assert len(gemm) >= 6
    assert (gemm["gemm_kernels_per_step"] == 1).all()  # one GEMM kernel per GEMM row, besides its memset
    assert (gemm["gemm_kernel_time_pct"] > 98).all()
    assert (summary.loc[summary["kind"] == "non-gemm", "gemm_kernels_per_step"] == 0).all()


def test_flash_kernels_are_attention_and_bias_gradients_are_expected_helpers(train):
    summary = detection_summary(classify(train)).set_index(["pass", "component", "role"])
    assert summary.loc[("forward", "flash_attention", ""), "attention_kernels_per_step"] == 1
    assert summary.loc[("backward", "flash_attention", ""), "attention_kernels_per_step"] == 3
    # the backward's bias-gradient reductions (and their memsets) ran in GEMM regions: expected, not flagged
    bias = summary.loc[("backward", "residual_bias", "")]
    assert bias["kernels_per_step"] == 8 and bias["helper_kernels_per_step"] == 8


def _doctor(acts, where, **changes):
    doctored = acts.copy()
    index = doctored[where(doctored)].index
    assert len(index) > 0
    for column, value in changes.items():
        doctored[column] = doctored[column].astype(object)
        for i in index:
            doctored.at[i, column] = value
    return doctored


def test_a_gemm_named_kernel_in_a_non_gemm_component_is_reported(eager):
    doctored = _doctor(eager, lambda a: a["component"] == "norm", name=NVJET)
    found = disagreements(classify(doctored))
    assert set(found["issue"]) == {"gemm_kernel_outside_gemm"}
    assert set(found["component"]) == {"norm"} and found["kernels_per_step"].sum() == 2


def test_a_copy_inside_a_gemm_step_is_reported(train):
    # what attribution makes of a copy launched inside a GEMM region: component residual_bias, region mlp_up
    bias_grad = lambda a: (a["region"] == "mlp_up") & (a["op"] == "aten::sum") & ~a["name"].str.startswith("Memset")
    doctored = _doctor(train, bias_grad, name=COPY, op="aten::copy_")
    found = disagreements(classify(doctored))
    assert list(found["issue"]) == ["unexpected_kernel_in_gemm_step"]
    assert found.loc[0, "region"] == "mlp_up" and found.loc[0, "kernels_per_step"] == 1


def test_a_gemm_kernel_with_no_aten_op_is_a_mismatch(train):
    doctored = _doctor(train, lambda a: (a["component"] == "qkv_transform") & a["name"].str.startswith("nvjet"),
                       op=None)
    found = disagreements(classify(doctored))
    assert set(found["issue"]) == {"op_kernel_mismatch"}
    assert set(found["role"]) == {"fprop", "dgrad", "wgrad"}
    summary = detection_summary(classify(doctored))
    assert not summary.loc[summary["component"] == "qkv_transform", "agree"].any()

"""The profiler on a real GPU: kernels joined to launches, roles, the like-for-like floor, NVML phases."""

import pytest
import torch

from models import load_config
from profiler.layer_profile import ProfileOptions, profile_layer
from profiler.telemetry import Telemetry

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def telemetry():
    t = Telemetry(torch.cuda.current_device()).start()
    yield t
    t.stop()


def test_a_training_step_on_the_gpu_is_fully_attributed_with_a_floor_per_role(tmp_path, telemetry):
    cfg = load_config("pythia-160m", seq_length=512, micro_batch_size=2, attention="flash")
    result = profile_layer(cfg, ProfileOptions(mode="forward+backward", active_steps=5, bench_rep_ms=100),
                           out_dir=tmp_path, device=torch.device("cuda"), telemetry=telemetry)
    rows, summary = result.components, result.summary
    checks = {c.name: c for c in result.checks}
    assert checks["graph_kernels"].status == "pass", (checks["graph_kernels"].observed, checks["graph_kernels"].details[:3])
    assert summary["coverage"] == 1.0 and summary["unattributed_kernels"] == []
    assert checks["shapes"].status == checks["flops"].status == checks["coverage"].status == "pass"
    assert "flash" in " ".join(summary["attention_ops"])
    backward = rows[(rows["pass"] == "backward") & (rows["kind"] == "gemm")]
    assert set(backward["role"]) == {"dgrad", "wgrad"}
    heavy = rows[(rows["kind"] == "gemm") | (rows["component"] == "flash_attention")]
    assert heavy["alone_us"].notna().all()
    if checks["clock_phases"].status == "skipped" and telemetry.available:
        # a small layer's rounds can end before NVML's 10 ms sampler saw 3 samples: a skip only for that reason
        phases = summary["clock"]["phases"]
        assert summary["clock"]["comparison"]["skipped"], checks["clock_phases"].observed
        assert all(phases[p].get("samples", 0) < 3 for p in summary["clock"]["comparison"]["skipped"]), phases
    assert summary["latency_us"]["warmup"]["windows"] >= 2
    # the protocol's guarantees: graph replays named by the eager call, GPU-side figures compared, nothing
    # above the ceiling, idle never negative
    assert checks["graph_kernels"].status == "pass", checks["graph_kernels"].observed
    assert checks["trace_vs_events"].status in ("pass", "fail")
    assert summary["idle_us"] >= 0 and summary["graph_gaps_us"] >= 0 and summary["launch_gaps_us"] >= 0
    assert (rows["pct_of_peak"].dropna() <= 100 + 1e-9).all()
    assert summary["latency_graph_us"]["median"] > 0 and summary["rounds"]["attempts"]


def test_sdpa_is_named_for_what_was_asked_and_records_the_kernel_pytorch_chose(tmp_path):
    cfg = load_config("pythia-160m", seq_length=256, micro_batch_size=1, attention="sdpa")
    result = profile_layer(cfg, ProfileOptions(active_steps=3, bench_rep_ms=50, measure_floor=False),
                           out_dir=tmp_path, device=torch.device("cuda"))
    assert "sdpa_attention" in set(result.components["component"])
    assert result.summary["attention_ops"]

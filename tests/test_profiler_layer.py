"""The layer profiler end to end on the CPU: real layer, real torch.profiler trace, real attribution."""

import json

import pandas as pd
import pytest

from models import load_config
from profiler.attribution import attribute, coverage, host_context
from profiler.checks import shapes_check
from cli.main import profiler_main as main
from profiler.flops import check_rows, counted_flops
from profiler.shape_check import check_shapes
from profiler.trace import load_trace

TINY = """hidden_size: 128
num_attention_heads: 4
num_layers: 2
seq_length: 64
micro_batch_size: 2
vocab_size: 1000
attention_dropout: 0.1
hidden_dropout: 0.1
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def profile(tmp_path, *args):
    out = tmp_path / "out"
    code = main(["layer", "--out", str(out), "--iters", "2", "--warmup", "1", "--no-floor", *args])
    run = json.loads((out / "run.json").read_text())
    return code, run, pd.read_csv(out / "components.csv"), out


def check(entry, name):
    return next(c for c in entry["checks"] if c["name"] == name)


def shapes(entry):
    return {c["what"]: c["observed"] for c in check(entry, "shapes")["details"]}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_coverage_is_complete_and_outputs_are_written(tmp_path, tiny, attention, mode):
    code, run, components, out = profile(tmp_path, "--config", str(tiny), "--attention", attention, "--mode", mode)
    assert code == 0
    entry = run["configs"][0]
    assert entry["coverage"] >= 0.99
    assert check(entry, "flops")["status"] == "pass"
    assert check(entry, "shapes")["status"] == "pass"
    assert check(entry, "coverage")["status"] == "pass"
    assert entry["checks_summary"]["all_passed"]
    assert {"config", "component", "role", "kind", "time_us", "share_of_kernel_time", "share_of_latency", "flops",
            "tflops"} <= set(components.columns)
    assert set(components["kind"]) <= {"gemm", "non-gemm", "unattributed"}
    assert components["share_of_kernel_time"].sum() == pytest.approx(1.0)
    expected = {"qkv_transform", "out_projection", "mlp_up", "mlp_down", "norm", "rotary", "activation",
                "residual_bias", "dropout"}
    expected |= {"attention_score", "attention_over_values", "softmax"} if attention == "eager" else {"sdpa_attention"}
    assert expected <= set(components["component"])
    if mode == "forward+backward":
        assert set(components["pass"]) == {"forward", "backward"}
    assert (out / "report.html").stat().st_size > 100_000
    assert list((out / "tb").glob("*.pt.trace.json"))
    assert run["environment"]["torch"]


def test_every_option_reaches_the_traced_shapes(tmp_path, tiny):
    code, run, components, _ = profile(tmp_path, "--config", str(tiny), "--batch", "3", "--seq-len", "48",
                                       "--tensor-parallel", "2", "--dtype", "bfloat16", "--attention", "eager",
                                       "--logits")
    assert code == 0
    seen = shapes(run["configs"][0])
    b, s, h, t, heads, d = 3, 48, 128, 2, 4, 32
    assert seen["layer input (b, s, h)"] == str([b, s, h])
    assert seen["qkv_transform (batch, m, k, n)"] == str((1, b * s, h, 3 * h // t))
    assert seen["attention_score (batch, m, k, n)"] == str((b * heads // t, s, d, s))
    assert seen["attention_over_values (batch, m, k, n)"] == str((b * heads // t, s, s, d))
    assert seen["out_projection (batch, m, k, n)"] == str((1, b * s, h // t, h))
    assert seen["mlp_up (batch, m, k, n)"] == str((1, b * s, h, 4 * h // t))
    assert seen["mlp_down (batch, m, k, n)"] == str((1, b * s, 4 * h // t, h))
    assert seen["logits (batch, m, k, n)"] == str((1, b * s, h, 1024 // t))  # v padded to 128*t = 256 -> 1024
    assert seen["qkv_transform dtype"] == "c10::BFloat16"
    assert "logits" in set(components["component"])


def test_sdpa_attention_shape_is_checked(tmp_path, tiny):
    _, run, _, _ = profile(tmp_path, "--config", str(tiny), "--attention", "sdpa", "--seq-len", "40")
    assert shapes(run["configs"][0])["attention q (b, a/t, s, h/a)"] == str([2, 4, 40, 32])


def test_a_trace_that_disagrees_with_the_config_fails_the_shape_check(tmp_path, tiny):
    _, run, _, out = profile(tmp_path, "--config", str(tiny), "--attention", "eager")
    trace = next((out / "tb").glob("*.pt.trace.json"))
    host = host_context(load_trace(trace))
    claimed = load_config(tiny, seq_length=128, attention="eager", dtype="float32")  # what a buggy script would claim
    result = shapes_check(check_shapes(host, claimed, include_logits=False, dtype="float32"))
    assert result.status == "fail"
    assert "expected (1, 256, 128, 384), traced (1, 128, 128, 384)" in result.observed


def test_attribution_of_a_real_trace_reaches_every_activity(tmp_path, tiny):
    _, run, _, out = profile(tmp_path, "--config", str(tiny), "--mode", "forward+backward", "--attention", "eager")
    activities = attribute(load_trace(next((out / "tb").glob("*.pt.trace.json"))))
    assert coverage(activities) >= 0.99
    entry = run["configs"][0]
    assert entry["trace_warmup"]["warmup_steps"] >= 2  # warm-up windows run until the step time is stable
    # the trace holds the traced rounds (here the layer alone: --no-floor), one profiler step each after the
    # profiler's own warm-up step 0: --iters 2 is two rounds, each holding the layer several times
    assert set(activities["step"]) == {1, 2}
    assert entry["steps_traced"] == 2 * entry["rounds"]["instances_per_round"]["layer"]


@pytest.mark.parametrize("name", ["pythia-1b", "gpt3-2.7b", "llama-2-7b-like", "paper-large"])
def test_flop_formulas_match_torch_flop_counter_at_full_size(name):
    """Every GEMM of the real shapes (meta device: no memory), eager attention's BMMs included."""
    cfg = load_config(name, attention="eager", tensor_parallel=2)
    rows = check_rows(cfg, counted_flops(cfg, include_logits=True, backward=True, device="meta"),
                      include_logits=True, backward=True)
    assert all(r["match"] for r in rows), [r for r in rows if not r["match"]]


@pytest.mark.parametrize("name", ["pythia-1b", "llama-2-7b-like"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_flop_formulas_match_the_attention_op_that_ran(name, dropout):
    """Counted on the real layer on the CPU: SDPA runs its CPU flash kernel (fused: the backward recomputes the
    scores, 2.5x) without dropout and the math path (2x) with it; the formula must follow what ran."""
    cfg = load_config(name, attention="sdpa", tensor_parallel=2, seq_length=32, micro_batch_size=2,
                      hidden_size=256, num_attention_heads=4, intermediate_size=688 if "llama" in name else None,
                      dtype="float32", attention_dropout=dropout)
    counted = counted_flops(cfg, include_logits=True, backward=True)
    assert bool(counted["attention_ops"]) == (dropout == 0.0)
    rows = check_rows(cfg, counted, include_logits=True, backward=True)
    assert all(r["match"] for r in rows), [r for r in rows if not r["match"]]


def test_several_configs_compare_side_by_side_and_rerun_resumes(tmp_path, tiny, capsys):
    args = ["--config", str(tiny), "--config", "pythia-70m", "--seq-len", "32", "--batch", "1"]
    code, run, components, _ = profile(tmp_path, *args)
    assert code == 0 and [e["name"] for e in run["configs"]] == ["tiny", "pythia-70m"]
    assert set(components["config"]) == {"tiny", "pythia-70m"}
    code, rerun, _, _ = profile(tmp_path, *args)
    assert "already profiled" in capsys.readouterr().out
    assert rerun["configs"][0]["latency_us"] == run["configs"][0]["latency_us"]


def test_a_rerun_with_another_warmup_profiles_again(tmp_path, tiny, capsys):
    """The resume identity is the resolved options, the fewest warm-up steps included."""
    args = ["--config", str(tiny), "--seq-len", "32", "--batch", "1"]
    code, run, _, _ = profile(tmp_path, *args)
    assert code == 0 and run["configs"][0]["options"]["min_trace_warmup_steps"] == 1
    capsys.readouterr()
    code, rerun, _, _ = profile(tmp_path, *args, "--warmup", "3")
    assert code == 0 and "already profiled" not in capsys.readouterr().out
    assert rerun["configs"][0]["options"]["min_trace_warmup_steps"] == 3
    assert rerun["configs"][0]["trace_warmup"]["warmup_steps"] >= 3


@pytest.mark.parametrize("argv, message", [
    (["layer", "--config", "no-such-model"], "config: 'no-such-model' is neither a file nor a bundled config"),
    (["layer", "--config", "pythia-1b", "--batch", "0"], "--batch: must be a positive whole number"),
    (["layer", "--config", "pythia-1b", "--tensor-parallel", "3"], "tensor_parallel:"),
    (["layer", "--config", "paper-large", "--device", "cpu"], "too large to profile on the CPU"),
    (["layer", "--config", "pythia-70m", "--config", "pythia-70m"], "named twice"),
    (["layer", "--config", "pythia-70m", "--device", "cuda"], "--device: cuda asked for"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, message):
    if "cuda" in argv:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    code = main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "layer" in out and "sweep" in out and "configs" in out

"""scripts/explain_runs.py (issue 12, item 8) on the committed Figure 1 evidence: what the per-GEMM
explanations say about the paper's 2.7B variants (C1 a=64, C2 a=40, GPT-3 a=32, a=20), recomputed from the
traces, and through profiler.explain the same analyses the layer profiler runs.
"""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from profiler.explain import explain_run_config, trace_of

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = ROOT / "tests" / "fixtures" / "h100" / "layer"


def _script():
    spec = importlib.util.spec_from_file_location("explain_runs", ROOT / "scripts" / "explain_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def eager_text():
    return "\n".join(_script().explain_dir(EVIDENCE / "figure1-eager"))


def test_every_config_is_explained_from_its_committed_trace(eager_text):
    for name, head_dim in (("gpt3-2.7b-c1", 40), ("gpt3-2.7b-c2", 64), ("gpt3-2.7b", 80), ("gpt3-2.7b-a20", 128)):
        assert f"-- {name}: h=2560 a={2560 // head_dim} h/a={head_dim} b=4 s=2048 eager forward" in eager_text
    assert "copy 3.0 TB/s: fallback" in eager_text  # the evidence predates measured_copy_tbps, and says so
    assert eager_text.count("op and kernel name agree with the attribution for every kernel") == 4
    assert eager_text.count("flags: none") == 4


def test_the_attention_bmms_differ_across_variants_and_the_mlp_does_not(eager_text):
    differ = eager_text[eager_text.index("-- what differs between the configs"):]
    assert "gpt3-2.7b-c1: 256x(2048,2048)x(2048,40) 64x512 persistent 1024 tiles, 62% used, 109 TFLOP/s, " \
        "38 FLOP/B" in differ
    assert "gpt3-2.7b: 128x(2048,2048)x(2048,80) 96x256 persistent 1024 tiles, 83% used, 205 TFLOP/s, 74 FLOP/B" in differ
    assert "gpt3-2.7b-a20: 80x(2048,2048)x(2048,128) 128x256 persistent 640 tiles, 100% used, 307 TFLOP/s, " \
        "114 FLOP/B" in differ
    assert "fwd mlp_up.fprop: same shape and tile (192x192, persistent) in every config, TFLOP/s within 10%" in differ


def test_the_script_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert _script().main([str(tmp_path)]) == 2
    assert "is not a layer run directory" in capsys.readouterr().err


def test_explain_run_config_returns_every_analysis_for_the_flash_variant():
    run_dir = EVIDENCE / "figure1-flash"
    run = json.loads((run_dir / "run.json").read_text())
    entry = next(e for e in run["configs"] if e["name"] == "gpt3-2.7b-c1")
    assert trace_of(run_dir, entry).name.endswith(".pt.trace.json.gz")  # run.json names it without .gz
    depth = explain_run_config(run_dir, run, pd.read_csv(run_dir / "components.csv"), entry)
    flash = depth.gemms.set_index("component").loc["flash_attention"]
    assert (flash["tile"], flash["ctas_per_sm"], flash["kernel_head_dim"]) == ("128x128", 2, 64)
    assert depth.flags.empty and depth.disagreements.empty and depth.sms == 132
    assert list(depth.roofline.loc[depth.roofline["low_bandwidth"], "component"]) == ["rotary"]


def test_join_depth_adds_the_columns_the_report_sections_draw():
    from profiler.explain import join_depth
    from reports.depth_sections import depth_sections
    from reports.html import render_page

    run_dir = EVIDENCE / "pythia-1b-train"
    run = json.loads((run_dir / "run.json").read_text())
    components = pd.read_csv(run_dir / "components.csv")  # the old schema: no roles
    depth = explain_run_config(run_dir, run, components, run["configs"][0])
    joined = join_depth(components, depth).set_index(["pass", "component", "role"]).sort_index()
    assert joined.loc[("forward", "qkv_transform", "fprop"), "wave_model"] == "persistent"
    assert pd.isna(joined.loc[("backward", "qkv_transform", ""), "tile"])  # two roles summed: no one kernel
    assert bool(joined.loc[("backward", "residual_bias", ""), "low_bandwidth"])
    known = joined["signals_agree"].dropna()
    assert known.astype(bool).all() and set(known.index.get_level_values("pass")) == {"forward", "backward"}
    assert joined.loc["forward", "signals_agree"].notna().all()
    sections = depth_sections(joined.reset_index(), copy_source=depth.copy_source)
    assert [s.title for s in sections] == ["Why each GEMM runs at its speed (tiles, waves, roofline)",
                                           "Non-GEMM steps against the memory bandwidth"]
    assert "GEMM throughput in the layer" in render_page("depth", sections)  # every chart titled, axes too


TINY = """name: tiny-explain
hidden_size: 64
num_attention_heads: 4
num_layers: 2
seq_length: 32
vocab_size: 512
"""


def test_a_cpu_trace_has_host_ops_to_attribute_and_nothing_to_explain(tmp_path):
    from cli.main import profiler_main as main

    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "run"
    assert main(["layer", "--config", str(tmp_path / "tiny.yaml"), "--device", "cpu", "--mode", "forward+backward",
                 "--attention", "eager", "--iters", "2", "--warmup", "1", "--no-floor", "--out", str(out),
                 "--allow-failed-checks"]) == 0
    run = json.loads((out / "run.json").read_text())
    depth = explain_run_config(out, run, pd.read_csv(out / "components.csv"), run["configs"][0])
    assert not depth.on_gpu and depth.gemms.empty
    assert depth.flags.empty and depth.disagreements.empty  # no kernel names to disagree with
    assert "a CPU trace: host ops, no GPU kernels" in "\n".join(_script().explain_dir(out))


def test_the_roofline_of_every_gemm_is_capped_by_the_configs_ceiling_not_the_sustained_8192_gemm():
    """run.json's ceiling is the fastest GEMM under the timing definition, so no GEMM reaches above 100% of its
    roofline; the environment's 8192^3 peak alone is beaten by in-layer GEMMs (the H200 runs of ee894d8 read
    108% for gpt3-2.7b-c1's QKV). A ceiling set below the fastest GEMM shows it."""
    run_dir = EVIDENCE / "figure1-flash"
    run = json.loads((run_dir / "run.json").read_text())
    components = pd.read_csv(run_dir / "components.csv")
    entry = dict(next(e for e in run["configs"] if e["name"] == "gpt3-2.7b-c1"))
    plain = explain_run_config(run_dir, run, components, entry).gemms
    fastest = float(plain["tflops"].max())
    entry["ceiling"] = {"tflops": fastest, "source": "fastest in-layer GEMM"}
    capped = explain_run_config(run_dir, run, components, entry).gemms
    compute_bound = capped["roofline_tflops"] == fastest
    assert compute_bound.sum() >= 3 and capped["pct_of_roofline"].max() <= 100.0 + 1e-9
    entry["ceiling"] = {"tflops": 0.9 * fastest}  # doctored: below a GEMM it measured
    assert explain_run_config(run_dir, run, components, entry).gemms["pct_of_roofline"].max() > 110

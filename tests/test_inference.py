"""Inference bench (issue 5) on CPU: tiny GPT-NeoX configs end to end through transformers, checkpoint
caching, exact-length prompts, resume, failures as rows, one-line errors, the report; MII through a
stand-in of mii.legacy's non-persistent objects (the same pipeline call chain, no DeepSpeed), and MII for
real where CUDA and DeepSpeed exist."""

import importlib.util
import json
import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from inference import analysis
from inference.bench import BenchSpec, run_bench
from inference.checkpoints import cached_path, config_hash, ensure_checkpoint, resolve_model
from inference.cli import main
from inference.engines.base import GenerationJob, get_engine
from inference.engines.hf import HFEngine
from inference.engines.mii import MIIEngine
from inference.metrics import compare_logits, weight_bytes_per_decode_step
from inference.results import ResultsFile
from inference.tokenizer import build_tokenizer, load_tokenizer, make_prompts
from models import count_parameters, load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = """\
name: {name}
hidden_size: {h}
num_attention_heads: 4
num_layers: {layers}
vocab_size: 512
max_position_embeddings: 256
"""
FAST = ["--prompt-len", "12", "--new-tokens", "6", "--repeats", "1", "--warmup", "0", "--no-progress"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    for name, h, layers in (("tiny-a", 64, 2), ("tiny-b", 128, 3)):
        (root / f"{name}.yaml").write_text(TINY.format(name=name, h=h, layers=layers))
    return root


def bench(workdir, out, *args, models=("tiny-a", "tiny-b")):
    paths = ",".join(str(workdir / f"{m}.yaml") for m in models)
    return main(["bench", "--models", paths, "--out", str(out), "--checkpoints", str(workdir / "ckpt"),
                 "--batch", "1,2", *FAST, *args])


def rows(out) -> list[dict]:
    return ResultsFile(out).rows()


def row_records(out) -> list[dict]:
    return [r for r in ResultsFile(out).records() if r.get("record") == "row"]


# ---- prompts and checkpoints ----------------------------------------------------------------------
def test_prompts_have_exactly_prompt_len_tokens_and_round_trip_as_text():
    tokenizer = build_tokenizer(512)
    prompts = make_prompts(tokenizer, 3, 37, seed=1)
    assert prompts.input_ids.shape == (3, 37)
    for text, ids in zip(prompts.texts, prompts.input_ids.tolist()):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert len(set(prompts.texts)) == 3
    assert (prompts.input_ids >= 3).all()  # never a special token: the model sees plain words


def test_checkpoint_is_built_once_then_reused(workdir, monkeypatch):
    model = resolve_model(str(workdir / "tiny-a.yaml"))
    first = ensure_checkpoint(model, workdir / "ckpt", device=torch.device("cpu"), log=lambda _: None)
    monkeypatch.setattr("inference.checkpoints.build_checkpoint",
                        lambda *a, **k: pytest.fail("a cached checkpoint was rebuilt"))
    assert ensure_checkpoint(model, workdir / "ckpt", device=torch.device("cpu"), log=lambda _: None) == first
    built = json.loads((first / "built.json").read_text())
    assert built["parameters"] == count_parameters(model.config).total
    assert first.name.endswith(f"-tf{__import__('transformers').__version__.split('.')[0]}")


def test_checkpoint_holds_small_random_fp16_weights_and_a_tokenizer(workdir):
    from safetensors.torch import load_file

    model = resolve_model(str(workdir / "tiny-a.yaml"))
    path = ensure_checkpoint(model, workdir / "ckpt", device=torch.device("cpu"), log=lambda _: None)
    weights = load_file(str(path / "model.safetensors"))
    qkv = weights["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert qkv.dtype == torch.float16
    assert 0.015 < qkv.float().std().item() < 0.025 and qkv.abs().max().item() < 0.2
    assert load_tokenizer(path).eos_token_id == 0


def test_checkpoint_key_follows_the_shape_not_the_description():
    cfg = load_config("pythia-160m")
    assert config_hash(cfg) == config_hash(cfg.replace(description="other words"))
    assert config_hash(cfg) != config_hash(cfg.replace(num_layers=13))
    assert cached_path(cfg, Path("/c")).name.startswith("pythia-160m-")


def test_a_checkpoint_directory_is_used_as_it_is(workdir):
    built = ensure_checkpoint(resolve_model(str(workdir / "tiny-a.yaml")), workdir / "ckpt",
                              device=torch.device("cpu"), log=lambda _: None)
    model = resolve_model(str(built))
    assert model.checkpoint_dir == built and model.config.hidden_size == 64
    assert ensure_checkpoint(model, workdir / "elsewhere", device=torch.device("cpu")) == built


# ---- the bench end to end -------------------------------------------------------------------------
def mii_unavailable(monkeypatch):
    """Bench-behaviour tests use MII as an engine that cannot run, wherever they run."""
    if HAS_DEEPSPEED:
        monkeypatch.setattr(MIIEngine, "unavailable_reason", lambda self, **_: "deepspeed not installed (stand-in)")


def test_bench_runs_tiny_models_through_transformers_and_writes_results_and_report(workdir, tmp_path, capsys,
                                                                                    monkeypatch):
    mii_unavailable(monkeypatch)
    profile = tmp_path / "run.json"
    profile.write_text(json.dumps({"environment": {}, "configs": [
        {"name": "tiny-a", "layer_tflops": 1.5, "latency_us": {"median": 80.0}},
        {"name": "tiny-b", "layer_tflops": 2.5, "latency_us": {"median": 120.0}}]}))
    assert bench(workdir, tmp_path / "out", "--engines", "hf,mii", "--layer-profile", str(profile)) == 0
    out = capsys.readouterr().out
    assert "mii: unavailable" in out and "4 ok" in out
    hf = [r for r in rows(tmp_path / "out") if r["engine"] == "hf"]
    assert len(hf) == 4 and {r["status"] for r in hf} == {"ok"}
    for r in hf:
        assert r["ttft_ms"] > 0 and r["decode_p50_ms"] > 0 and r["decode_p90_ms"] >= r["decode_p50_ms"]
        assert r["tokens_generated"] == 6 and r["decode_steps"] == 5
        assert r["e2e_ms"] >= r["ttft_ms"] and r["tokens_per_s"] > 0
        assert r["weight_bytes"] > 0 and r["logits_check"] == "reference"
        assert len(r["samples"]) == 1 and len(r["samples"][0]["decode_ms"]) == 5
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(csv) == 8 and "samples" not in csv.columns
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Figure 13" in html and "Training shapes and inference" in html and "layer_tflops" in html
    assert "deepspeed not installed" in html


@pytest.mark.skipif(HAS_DEEPSPEED, reason="deepspeed is installed here")
def test_mii_without_deepspeed_is_reported_unavailable_and_the_bench_goes_on(workdir, tmp_path, capsys):
    assert MIIEngine().unavailable_reason().startswith("deepspeed not installed")
    assert bench(workdir, tmp_path, "--engines", "mii,hf", models=("tiny-a",)) == 0
    by_engine = {(r["engine"], r["batch"]): r for r in rows(tmp_path)}
    assert by_engine[("mii", 1)]["status"] == "unavailable"
    assert by_engine[("mii", 1)]["reason"].startswith("deepspeed not installed")
    assert by_engine[("hf", 2)]["status"] == "ok"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mii")]
    assert lines == [line for line in lines if "unavailable: deepspeed not installed" in line] and len(lines) == 1


def test_rerun_skips_measured_rows_and_retries_unavailable_ones(workdir, tmp_path, capsys, monkeypatch):
    mii_unavailable(monkeypatch)
    assert bench(workdir, tmp_path, "--engines", "hf,mii", models=("tiny-a",)) == 0
    before = row_records(tmp_path)
    monkeypatch.setattr(HFEngine, "run", lambda *a, **k: pytest.fail("a measured row was measured again"))
    assert bench(workdir, tmp_path, "--engines", "hf,mii", models=("tiny-a",)) == 0
    after = row_records(tmp_path)
    new = after[len(before):]
    assert {r["engine"] for r in new} <= {"mii"}  # only the rows that could not run are tried again
    assert "2 of 4 rows already" in capsys.readouterr().out


def test_a_failing_engine_becomes_rows_with_a_reason_and_the_next_model_still_runs(workdir, tmp_path, monkeypatch):
    real_run = HFEngine.run

    def flaky(self, job, on_result):
        if job.model == "tiny-a":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, job, on_result)

    monkeypatch.setattr(HFEngine, "run", flaky)
    assert bench(workdir, tmp_path, "--engines", "hf") == 0
    status = {(r["model"], r["batch"]): (r["status"], r["reason"]) for r in rows(tmp_path)}
    assert status[("tiny-a", 1)][0] == "oom" and "out of memory" in status[("tiny-a", 1)][1]
    assert status[("tiny-b", 2)][0] == "ok"


def test_max_params_leaves_big_models_out(workdir, tmp_path):
    spec = BenchSpec(models=(str(workdir / "tiny-a.yaml"), str(workdir / "tiny-b.yaml")), engines=("hf",),
                     batches=(1,), prompt_len=8, new_tokens=2, repeats=1, warmup=0, out=tmp_path,
                     checkpoints=workdir / "ckpt", max_params=200_000)
    outcome = run_bench(spec, log=lambda _: None, progress=False, write_report=False)
    assert {r["model"] for r in outcome.rows} == {"tiny-a"}


# ---- MII's call chain through a stand-in mii.legacy ------------------------------------------------
STANDIN = '''
"""mii.legacy's non-persistent objects without DeepSpeed: deploy -> non_persistent_models[name] =
(pipeline, task), pipeline.model an engine wrapping the model, query(...) = pipeline(texts, **kwargs)."""
import enum
import torch
from transformers import pipeline

non_persistent_models = {}


class DeploymentType(enum.Enum):
    NON_PERSISTENT = "non-persistent"


class InferenceEngine(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module, self.generate, self.config, self.device = module, module.generate, module.config, module.device

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class Client:
    def __init__(self, name):
        self.name = name

    def query(self, request, **kwargs):
        return non_persistent_models[self.name][0](request["query"], **kwargs)

    def terminate(self):
        del non_persistent_models[self.name]


def deploy(task, model, deployment_name, deployment_type, mii_config):
    assert deployment_type is DeploymentType.NON_PERSISTENT and mii_config["skip_model_check"]
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # where the worker puts its inputs
    pipe = pipeline(task, model=model, device=device, torch_dtype=torch.float32)
    pipe.model = InferenceEngine(pipe.model)
    non_persistent_models[deployment_name] = (pipe, task)


def mii_query_handle(name):
    return Client(name)
'''


def test_mii_worker_checks_logits_and_times_through_the_query_call_chain(workdir, tmp_path, monkeypatch):
    standin = tmp_path / "standin"
    (standin / "mii" / "legacy").mkdir(parents=True)
    (standin / "mii" / "__init__.py").write_text("")
    (standin / "mii" / "legacy" / "__init__.py").write_text(textwrap.dedent(STANDIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(standin), os.environ.get("PYTHONPATH")])))
    checkpoint = ensure_checkpoint(resolve_model(str(workdir / "tiny-a.yaml")), workdir / "ckpt",
                                   device=torch.device("cpu"), log=lambda _: None)
    prompts = make_prompts(load_tokenizer(checkpoint), 2, 10)
    job = GenerationJob("tiny-a", checkpoint, prompts, (1, 2), 5, 0, 2, "float32", torch.device("cpu"),
                        log_dir=tmp_path / "logs")
    hf_results = []
    reference = HFEngine().run(job, hf_results.append).reference_logits
    torch.save({"input_ids": prompts.input_ids, "logits": reference}, tmp_path / "ref.pt")
    job.reference_logits = tmp_path / "ref.pt"
    results = []
    MIIEngine().run(job, results.append)
    assert sorted(r.batch for r in results) == [1, 2], (tmp_path / "logs" / "mii-tiny-a-tp1.log").read_text()
    for r in results:
        assert r.status == "ok" and len(r.samples) == 2
        assert all(s.tokens_per_row == [5] * r.batch and len(s.decode_ms) == 4 for s in r.samples)
        assert r.check is not None and r.check.passed and r.check.max_abs_diff < 1e-4
        assert r.check.method.startswith("forward")


# ---- real MII (GPU machine only) ------------------------------------------------------------------
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_DEEPSPEED), reason="needs CUDA and deepspeed-mii")
def test_mii_on_gpu_matches_transformers_and_times_a_tiny_model(tmp_path):
    (tmp_path / "tiny-gpu.yaml").write_text(TINY.format(name="tiny-gpu", h=256, layers=2))
    assert main(["bench", "--models", str(tmp_path / "tiny-gpu.yaml"), "--engines", "hf,mii", "--batch", "1,2",
                 "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt"), *FAST]) == 0
    mii = {r["batch"]: r for r in rows(tmp_path / "out") if r["engine"] == "mii"}
    assert set(mii) == {1, 2}
    for r in mii.values():
        assert r["status"] == "ok", r["reason"]
        assert r["logits_check"] == "pass" and r["tokens_generated"] == 6 and r["decode_p50_ms"] > 0


# ---- analysis and small pieces --------------------------------------------------------------------
def frame(points):
    return pd.DataFrame([{"model": m, "params_total": p, "e2e_ms": t, "engine": "mii", "batch": 1, "status": "ok",
                          "tensor_parallel": 1, "dtype": "float16", "prompt_len": 128, "new_tokens": 64}
                         for m, p, t in points])


def test_off_trend_marks_a_larger_faster_model_and_the_slower_smaller_one():
    df = frame([("pythia-160m", 160e6, 330), ("pythia-410m", 410e6, 520), ("pythia-1b", 1.0e9, 330),
                ("pythia-1.4b", 1.4e9, 580)])
    marked = analysis.mark_off_trend(df).set_index("model")
    assert marked.loc["pythia-410m", "off_trend"] and marked.loc["pythia-1b", "off_trend"]
    assert not marked.loc["pythia-160m", "off_trend"] and not marked.loc["pythia-1.4b", "off_trend"]
    assert "reproduced" in analysis.ordering(df)[0]


def test_speedup_is_transformers_latency_over_mii_latency():
    hf = frame([("pythia-1b", 1e9, 1000)]).assign(engine="hf", ttft_ms=10.0, decode_p50_ms=15.0)
    mii = frame([("pythia-1b", 1e9, 250)]).assign(ttft_ms=5.0, decode_p50_ms=5.0)
    speed = analysis.speedups(pd.concat([hf, mii]))
    assert speed.loc[0, "e2e_speedup"] == pytest.approx(4.0) and speed.loc[0, "decode_speedup"] == pytest.approx(3.0)


def test_weight_bytes_per_decode_step_leave_out_the_input_embedding():
    cfg = load_config("pythia-1b")
    expected = (count_parameters(cfg).total - cfg.embedding_rows * cfg.hidden_size) * 2
    assert weight_bytes_per_decode_step(cfg, "float16") == expected
    assert weight_bytes_per_decode_step(cfg, "float16", tensor_parallel=2) == expected // 2


def test_logits_check_fails_a_broken_engine_and_passes_fp16_noise():
    ref = torch.randn(2, 8, 100)
    assert compare_logits(ref, ref + 1e-3 * torch.randn_like(ref), "t").passed
    assert not compare_logits(ref, torch.randn_like(ref), "t").passed


def test_unknown_engine_is_a_user_error_with_a_suggestion():
    with pytest.raises(Exception, match="did you mean 'mii'"):
        get_engine("mi")


@pytest.mark.parametrize("args, field", [
    (["--models", "pythia-1c"], "did you mean 'pythia-1b'"),
    (["--models", "pythia-70m", "--batch", "0"], "--batch"),
    (["--models", "pythia-70m", "--batch", "1,x"], "--batch"),
    (["--models", "pythia-70m", "--engines", "vllm"], "--engines"),
    (["--models", "pythia-70m", "--new-tokens", "1"], "--new-tokens"),
    (["--models", "pythia-70m", "--prompt-len", "2000", "--new-tokens", "64"], "max_position_embeddings"),
    (["--models", "pythia-70m", "--layer-profile", "/no/such/run.json"], "--layer-profile"),
])
def test_bad_input_is_one_line_and_exit_2(args, field, tmp_path, capsys):
    assert main(["bench", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0]
    assert not (tmp_path / "results.jsonl").exists()


def test_arch_list_is_made_plain_for_deepspeeds_builder():
    from inference.engines.mii import plain_arch_list

    assert plain_arch_list("9.0a") == "9.0"
    assert plain_arch_list("8.0;9.0a") == "8.0;9.0"
    assert plain_arch_list("8.6 9.0+PTX") == "8.6;9.0+PTX"

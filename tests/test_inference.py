"""Inference bench (issues 5, 8, 10) on CPU: tiny GPT-NeoX configs end to end through transformers,
checkpoint caching, exact-length prompts, several prompt lengths, resume, failures as rows, one-line
errors, the report; warm-up by time, the recorded random order, provenance, the weight + KV floor, the
token check (passing, and failing on a doctored engine), shapes the fused kernels refuse; MII through a
stand-in of mii.legacy's non-persistent objects (the same pipeline call chain, no DeepSpeed), and MII for
real where CUDA and DeepSpeed exist."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from inference import analysis
from inference.bench import BenchSpec, Planned, run_bench, timed_order
from inference.checkpoints import cached_path, config_hash, default_root, ensure_checkpoint, resolve_model
from inference.checks import TOKEN_NOISE_FACTOR, check_tokens, compare_logits, count_new_tokens
from cli.main import inference_main as main
from inference.engines.base import GenerationJob, get_engine
from inference.engines.hf import HFEngine
from inference.engines.mii import MIIEngine, max_tokens_for
from inference.metrics import (decode_context_mean, decode_floor_ms, kv_bytes_per_decode_step,
                               weight_bytes_per_decode_step)
from inference.reference import build_reference
from inference.results import ResultsFile
from inference.tokenizer import build_tokenizer, load_tokenizer, make_prompts
from models import count_parameters, load_config
from profiler.hardware import environment
from reports.html import figure_problems

import mii_standin

ROOT = Path(__file__).resolve().parent.parent
TINY = """\
name: {name}
hidden_size: {h}
num_attention_heads: 4
num_layers: {layers}
vocab_size: 512
max_position_embeddings: 256
"""
FAST = ["--prompt-len", "12", "--new-tokens", "6", "--repeats", "1", "--warmup-s", "0", "--no-progress"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    for name, h, layers in (("tiny-a", 64, 2), ("tiny-b", 128, 3), ("tiny-h40", 160, 2)):
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
        assert r["ttft_ms"] > 0 and r["decode_p50_ms"] > 0 and r["decode_p90_ms"] >= r["decode_p50_ms"] >= r["decode_p10_ms"]
        assert r["tokens_generated"] == 6 and r["decode_steps"] == 5
        assert r["e2e_ms"] >= r["ttft_ms"] and r["tokens_per_s"] > 0
        assert r["weight_bytes"] > 0 and r["kv_bytes"] > 0 and r["logits_check"] == "reference"
        assert len(r["samples"]) == 1 and len(r["samples"][0]["decode_ms"]) == 5
        assert r["warmup_runs"] >= 1 and r["tokens_stable"] is True
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(csv) == 8 and "samples" not in csv.columns
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Figure 13" in html and "Training shapes and inference" in html and "layer_tflops" in html
    assert "deepspeed not installed" in html


def test_several_prompt_lengths_are_rows_of_one_bench(workdir, tmp_path):
    assert bench(workdir, tmp_path, "--engines", "hf", "--prompt-len", "8,20", models=("tiny-a",)) == 0
    got = {(r["prompt_len"], r["batch"]): r for r in rows(tmp_path)}
    assert set(got) == {(8, 1), (8, 2), (20, 1), (20, 2)}
    # the KV cache read per decode step grows with the context; the weights do not
    assert got[(20, 1)]["kv_bytes"] > got[(8, 1)]["kv_bytes"] and got[(20, 1)]["weight_bytes"] == got[(8, 1)]["weight_bytes"]


def test_rows_carry_provenance_and_the_recorded_order(workdir, tmp_path):
    assert bench(workdir, tmp_path, "--engines", "hf", "--order-seed", "7", models=("tiny-a",)) == 0
    got = rows(tmp_path)
    sha = environment("cpu")["git_sha"]
    assert {r["git_sha"] for r in got} == {sha} and {r["order_seed"] for r in got} == {7}
    assert sorted(r["order_index"] for r in got) == [0, 1]
    run = ResultsFile(tmp_path).runs()[-1]
    assert run["spec"]["order_seed"] == 7 and run["environment"]["git_sha"] == sha


def test_timed_order_is_random_per_seed_and_reproducible():
    model = resolve_model("pythia-70m")
    engines = [get_engine("hf"), get_engine("mii")]
    work = [Planned(model, e, p, bt) for e in engines for p in (128, 2048) for bt in (1, 16)]

    def flat(seed):
        return [(e.name, p.prompt_len, p.batch) for e, rows_ in timed_order(work, seed, "m") for p in rows_]

    assert flat(3) == flat(3)  # the recorded seed reproduces the order
    assert sorted(flat(3)) == sorted((p.engine.name, p.prompt_len, p.batch) for p in work)
    orders = {tuple(flat(seed)) for seed in range(20)}
    assert len(orders) > 5  # and the seed changes it: no row is always first
    assert {o[0][0] for o in orders} == {"hf", "mii"}  # either engine may go first


def test_warm_up_runs_for_the_given_time_and_at_least_once(workdir, tmp_path):
    checkpoint = ensure_checkpoint(resolve_model(str(workdir / "tiny-a.yaml")), workdir / "ckpt",
                                   device=torch.device("cpu"), log=lambda _: None)
    prompts = {8: make_prompts(load_tokenizer(checkpoint), 1, 8)}
    results = []
    for warmup_s in (0.0, 1.0):
        job = GenerationJob("tiny-a", checkpoint, prompts, ((8, 1),), 4, warmup_s, 1, "float32", torch.device("cpu"))
        HFEngine().run(job, results.append)
    none, timed = (r.timing for r in results)
    assert none.warmup_runs == 1  # no warm-up time still runs one untimed generation
    assert timed.warmup_ms >= 1000  # untimed generations until 1 s has passed ...
    # ... so several of them, unless a cold first one alone outlasted the second
    assert timed.warmup_runs >= 2 or timed.warmup_ms > 2 * timed.samples[0].e2e_ms


def test_tokens_count_up_to_the_first_end_of_text_not_tensor_columns():
    assert count_new_tokens([5, 7, 9, 11], eos_token_id=0) == 4
    assert count_new_tokens([5, 7, 0, 1, 1], eos_token_id=0) == 3  # finished row padded by generate
    assert count_new_tokens([5, 1, 9], eos_token_id=0) == 3  # a padding id chosen before any end-of-text is a token


def test_a_long_prompt_raises_a_built_checkpoints_positions_and_says_so(workdir, tmp_path):
    assert bench(workdir, tmp_path, "--engines", "hf", "--prompt-len", "251", "--batch", "1",
                 models=("tiny-a",)) == 0
    (row,) = rows(tmp_path)
    assert row["status"] == "ok" and row["prompt_len"] == 251 and row["max_position_embeddings"] == 256 * 2
    built = json.loads((Path(row["checkpoint"]) / "built.json").read_text())
    assert built["config"]["max_position_embeddings"] == 512


def test_a_shape_the_fused_kernels_refuse_gets_an_unsupported_mii_row_and_a_noinject_row(workdir, tmp_path, monkeypatch):
    mii_unavailable(monkeypatch)
    monkeypatch.setattr("inference.engines.mii.MIINoInjectEngine.unavailable_reason",
                        lambda self, **_: "deepspeed not installed (stand-in)")
    assert bench(workdir, tmp_path, "--engines", "hf,mii,mii-cudagraph", "--batch", "1", models=("tiny-h40",)) == 0
    by_engine = {r["engine"]: r for r in rows(tmp_path)}
    assert by_engine["mii"]["status"] == "unsupported" and "rotary" in by_engine["mii"]["reason"]
    assert "apply_rotary_pos_emb.cu" in by_engine["mii"]["kernel_support_source"]
    assert by_engine["mii-noinject"]["fallback_for"] == "mii"  # no shape is left without a MII row
    assert by_engine["mii-cudagraph"]["status"] == "unsupported"
    assert "replace_module.py" in by_engine["mii-cudagraph"]["kernel_support_source"]
    assert by_engine["hf"]["status"] == "ok"
    assert "Shapes an engine cannot run" in (tmp_path / "report.html").read_text()


def test_checkpoint_cache_defaults_to_the_users_xdg_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_root() == tmp_path / "codesign-profiler" / "checkpoints"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == Path.home() / ".cache" / "codesign-profiler" / "checkpoints"


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


def test_redo_measures_again_the_rows_recorded_with_the_given_statuses(workdir, tmp_path, capsys, monkeypatch):
    """After a fix (a check that used the wrong batch), `--redo mismatch` re-measures only those rows;
    the latest record of a key wins. A status that is never recorded is a one-line error."""
    mii_unavailable(monkeypatch)
    assert bench(workdir, tmp_path, "--engines", "hf", models=("tiny-a",)) == 0
    store = ResultsFile(tmp_path)
    first = {r["batch"]: r for r in store.rows()}
    store.append({**first[2], "status": "mismatch", "reason": "doctored"})  # as an older version recorded it
    assert bench(workdir, tmp_path, "--engines", "hf", "--redo", "mismatch", models=("tiny-a",)) == 0
    again = {r["batch"]: r for r in ResultsFile(tmp_path).rows()}
    records = [r["batch"] for r in row_records(tmp_path)]
    assert again[2]["status"] == "ok" and records.count(2) == 3  # measured, doctored, measured again
    assert records.count(1) == 1  # an ok row is not measured again
    assert "1 of 2 rows already" in capsys.readouterr().out
    assert bench(workdir, tmp_path, "--engines", "hf", "--redo", "broken", models=("tiny-a",)) == 2
    assert "--redo: 'broken' is not a recorded status" in capsys.readouterr().err


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
                     batches=(1,), prompt_lens=(8,), new_tokens=2, repeats=1, warmup_s=0, out=tmp_path,
                     checkpoints=workdir / "ckpt", max_params=200_000)
    outcome = run_bench(spec, log=lambda _: None, progress=False)
    assert {r["model"] for r in outcome.rows} == {"tiny-a"}


# ---- MII's call chain through a stand-in mii.legacy ------------------------------------------------



def standin_mii(tmp_path, monkeypatch):
    mii_standin.install(tmp_path, monkeypatch)


def mii_job(workdir, tmp_path):
    checkpoint = ensure_checkpoint(resolve_model(str(workdir / "tiny-a.yaml")), workdir / "ckpt",
                                   device=torch.device("cpu"), log=lambda _: None)
    prompts = {p: make_prompts(load_tokenizer(checkpoint), 2, p) for p in (10, 24)}
    rows_ = ((24, 1), (10, 2), (10, 1), (24, 2))
    reference = build_reference(checkpoint, prompts, list(rows_), new_tokens=5, dtype="float32",
                                device=torch.device("cpu"))
    job = GenerationJob("tiny-a", checkpoint, prompts, rows_, 5, 0.0, 2, "float32", torch.device("cpu"),
                        reference=reference.save(tmp_path / "ref.pt"), log_dir=tmp_path / "logs")
    return job, reference


def test_mii_worker_checks_logits_and_times_through_the_query_call_chain(workdir, tmp_path, monkeypatch):
    standin_mii(tmp_path, monkeypatch)
    job, reference = mii_job(workdir, tmp_path)
    results = []
    MIIEngine().run(job, results.append)
    log = (tmp_path / "logs" / "mii-tiny-a-tp1.log").read_text()
    assert [(r.prompt_len, r.batch) for r in results] == list(job.rows), log  # in the order given
    for r in results:
        assert r.status == "ok" and len(r.timing.samples) == 2
        assert all(s.tokens_per_row == [5] * r.batch and len(s.decode_ms) == 4 for s in r.timing.samples)
        assert r.check is not None and r.check.passed and r.check.max_abs_diff < 1e-4
        assert r.check.method.startswith("forward")
        generation = reference.generations[(r.prompt_len, r.batch)]
        verdict = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, r.timing.tokens,
                               noise=r.check.max_abs_diff)
        assert verdict.passed and verdict.tokens_match and r.timing.tokens_stable


def test_bench_marks_an_engine_whose_tokens_differ_beyond_noise_a_mismatch(workdir, tmp_path, monkeypatch):
    """The doctored stand-in computes the same logits (the logits check passes) but takes its least likely
    token at step 2: the token check must catch it."""
    standin_mii(tmp_path, monkeypatch)
    monkeypatch.setenv("STANDIN_FORCE_STEP", "2")
    monkeypatch.setattr(MIIEngine, "unavailable_reason", lambda self, **_: None)
    monkeypatch.setattr(MIIEngine, "prepare", lambda self: None)
    assert bench(workdir, tmp_path / "out", "--engines", "mii", models=("tiny-a",)) == 0
    got = {r["batch"]: r for r in rows(tmp_path / "out")}
    assert set(got) == {1, 2}
    for r in got.values():
        assert r["logits_check"] == "pass" and r["token_check"] == "fail" and r["status"] == "mismatch"
        assert r["first_mismatch"] == [2] * r["batch"] and r["tokens_match"] is False
        assert r["token_tolerance"] == pytest.approx(TOKEN_NOISE_FACTOR * r["logits_max_abs_diff"])
        assert "tokens differ from transformers'" in r["reason"]


@pytest.mark.slow  # a worker process of its own; the stand-in passes undoctored in the worker's own test above, and the
# doctored test above runs the same bench path
def test_bench_passes_the_same_engine_undoctored(workdir, tmp_path, monkeypatch):
    standin_mii(tmp_path, monkeypatch)
    monkeypatch.setattr(MIIEngine, "unavailable_reason", lambda self, **_: None)
    monkeypatch.setattr(MIIEngine, "prepare", lambda self: None)
    assert bench(workdir, tmp_path / "out", "--engines", "hf,mii", models=("tiny-a",)) == 0
    mii = [r for r in rows(tmp_path / "out") if r["engine"] == "mii"]
    assert len(mii) == 2 and {r["status"] for r in mii} == {"ok"}
    assert all(r["token_check"] == "pass" and r["tokens_match"] and r["first_mismatch"] == [None] * r["batch"]
               for r in mii)
    hf = [r for r in rows(tmp_path / "out") if r["engine"] == "hf"]
    assert all(r["token_check"] == "reference" and r["tokens_match"] for r in hf)  # same tokens as its untimed pass


@pytest.mark.slow  # two worker processes; the limit is test_kernel_support's, a refused shape's noinject row the test above's
def test_a_prompt_and_batch_past_the_fused_softmax_int32_limit_run_without_injection(workdir, tmp_path, monkeypatch):
    """gpt3-2.7b-c2 at b=16, prompt 2048 came out wrong on the H100 (the fused softmax indexes scores with a
    32-bit int). Doctored limit: tiny-a at prompt 12 passes it at batch 1 and exceeds it at batch 2. The
    batch-2 row is refused with the reason and runs through MII without injection; the batch-1 row runs
    injected, its logits checked at its own batch (not at the refused larger one)."""
    standin_mii(tmp_path, monkeypatch)
    monkeypatch.setattr(MIIEngine, "unavailable_reason", lambda self, **_: None)
    monkeypatch.setattr(MIIEngine, "prepare", lambda self: None)
    heads, prompt = load_config(str(workdir / "tiny-a.yaml")).num_attention_heads, 12
    monkeypatch.setattr("models.kernel_support.INT_LIMIT", (2 * heads * prompt - 1) * prompt)
    assert bench(workdir, tmp_path / "out", "--engines", "hf,mii", models=("tiny-a",)) == 0
    got = {(r["engine"], r["batch"]): r for r in rows(tmp_path / "out")}
    refused = got[("mii", 2)]
    assert refused["status"] == "unsupported" and "32-bit int" in refused["reason"]
    assert "softmax.cu:68-74" in refused["kernel_support_source"]
    assert got[("mii-noinject", 2)]["fallback_for"] == "mii" and got[("mii-noinject", 2)]["status"] == "ok"
    assert ("mii-noinject", 1) not in got  # batch 1 stays injected
    injected = got[("mii", 1)]
    assert injected["status"] == "ok" and injected["logits_check_method"].endswith("batch 1")


def test_the_worker_checks_each_prompt_at_its_largest_batch_largest_first():
    from inference.engines.mii_worker import check_batches

    job = {"rows": [[128, 1], [2048, 1], [128, 16]]}  # (2048, 16) refused: not run, not checked
    assert check_batches(job) == [(128, 16), (2048, 1)]  # DeepSpeed sizes its workspace at the first forward
    assert check_batches({"rows": [[128, 4], [2048, 4], [2048, 2]]}) == [(2048, 4), (128, 4)]


# ---- the token check on transformers' real reference tokens, doctored ------------------------------
@pytest.fixture(scope="module")
def generation(workdir):
    checkpoint = ensure_checkpoint(resolve_model(str(workdir / "tiny-b.yaml")), workdir / "ckpt",
                                   device=torch.device("cpu"), log=lambda _: None)
    prompts = {16: make_prompts(load_tokenizer(checkpoint), 3, 16)}
    return build_reference(checkpoint, prompts, [(16, 3)], new_tokens=8, dtype="float32",
                           device=torch.device("cpu")).generations[(16, 3)]


def flipped(generation, row: int, step: int, rank: int) -> list[list[int]]:
    """transformers' tokens with one row taking its rank-th candidate at `step` (and ending there)."""
    tokens = generation.tokens.tolist()
    tokens[row] = tokens[row][:step] + [int(generation.topk_ids[row, step, rank])]
    tokens[row] += [3] * (generation.tokens.shape[1] - len(tokens[row]))
    return tokens


def test_token_check_passes_identical_tokens(generation):
    verdict = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids,
                           generation.tokens.tolist(), noise=0.0)
    assert verdict.passed and verdict.tokens_match and verdict.first_mismatch == (None, None, None)


def test_token_check_accepts_a_flip_to_the_runner_up_within_noise_and_fails_it_beyond(generation):
    gap = (generation.topk_values[1, 4, 0] - generation.topk_values[1, 4, 1]).item()
    tokens = flipped(generation, row=1, step=4, rank=1)
    near_tie = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens,
                            noise=gap / TOKEN_NOISE_FACTOR * 1.01)
    assert near_tie.passed and not near_tie.tokens_match
    assert near_tie.first_mismatch == (None, 4, None) and near_tie.gap_at_mismatch[1] == pytest.approx(gap)
    assert near_tie.margin_at_mismatch[1] == pytest.approx(gap)
    clear = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens,
                         noise=gap / TOKEN_NOISE_FACTOR * 0.99)
    assert not clear.passed and "row 1 step 4" in clear.verdict


def test_token_check_fails_a_token_outside_transformers_candidates_and_a_short_row(generation):
    tokens = generation.tokens.tolist()
    outside = next(t for t in range(3, 512) if t not in generation.topk_ids[0, 0].tolist())
    tokens[0] = [outside] + tokens[0][1:]
    verdict = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens, noise=1e3)
    assert not verdict.passed and verdict.gap_at_mismatch[0] is None  # beyond top-k: no noise explains it
    short = generation.tokens.tolist()
    short[2] = short[2][:5]
    assert not check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, short, noise=1e3).passed


# ---- real MII (GPU machine only) ------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_DEEPSPEED), reason="needs CUDA and deepspeed-mii")
def test_mii_on_gpu_matches_transformers_and_times_a_tiny_model(tmp_path):
    (tmp_path / "tiny-gpu.yaml").write_text(TINY.format(name="tiny-gpu", h=256, layers=2))
    assert main(["bench", "--models", str(tmp_path / "tiny-gpu.yaml"), "--engines", "hf,mii", "--batch", "1,2",
                 "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt"), *FAST]) == 0
    mii = {r["batch"]: r for r in rows(tmp_path / "out") if r["engine"] == "mii"}
    assert set(mii) == {1, 2}
    for r in mii.values():
        assert r["status"] == "ok", r["reason"]
        assert r["logits_check"] == "pass" and r["token_check"] == "pass" and r["tokens_generated"] == 6
        assert r["decode_p50_ms"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_DEEPSPEED), reason="needs CUDA and deepspeed-mii")
def test_mii_on_gpu_runs_a_refused_shape_without_injection_and_says_why_cuda_graphs_cannot(tmp_path):
    (tmp_path / "tiny-h40.yaml").write_text(TINY.format(name="tiny-h40", h=160, layers=2))
    assert main(["bench", "--models", str(tmp_path / "tiny-h40.yaml"), "--engines", "mii,mii-cudagraph", "--batch",
                 "1", "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt"), *FAST]) == 0
    got = {r["engine"]: r for r in rows(tmp_path / "out")}
    assert got["mii"]["status"] == "unsupported" and got["mii-cudagraph"]["status"] == "unsupported"
    assert got["mii-noinject"]["status"] == "ok", got["mii-noinject"]["reason"]
    assert got["mii-noinject"]["token_check"] == "pass"


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


def test_decode_floor_streams_the_weights_and_the_kv_cache_at_the_mean_decode_context():
    cfg = load_config("pythia-1b")
    context = decode_context_mean(2048, 32)
    assert context == 2048 + 16  # decode step k attends over prompt + k tokens, k = 1 .. 31
    kv = kv_bytes_per_decode_step(cfg, batch=16, context=context, dtype="float16")
    assert kv == 2 * cfg.num_layers * 16 * context * cfg.hidden_size * 2
    weights = weight_bytes_per_decode_step(cfg, "float16")
    assert kv > weights  # at b=16 and a 2k context the KV cache outweighs pythia-1b's weights
    assert decode_floor_ms(weights + kv, 2.0) == pytest.approx((weights + kv) / 2e12 * 1e3)


def test_mii_workspace_is_sized_for_the_longest_context():
    assert max_tokens_for(2048 + 32) == 2176 and max_tokens_for(128 + 16) == 256


def test_report_figures_have_titles_plotly_reads(workdir, tmp_path, monkeypatch):
    from reports import inference_report as report

    mii_unavailable(monkeypatch)
    assert bench(workdir, tmp_path, "--engines", "hf", models=("tiny-a", "tiny-b")) == 0
    df = analysis.results_frame(rows(tmp_path))
    m = analysis.measured(df)
    link = analysis.layer_link(df, pd.DataFrame({"model": ["tiny-a"], "layer_tflops": [1.0], "layer_latency_us": [1.0],
                                                 "layer_gemm_share": [0.5]}))
    speed = pd.DataFrame({"model": ["tiny-a"], "prompt_len": [12], "batch": [1], "e2e_speedup": [2.0]})
    figures = [report.figure13(analysis.mark_off_trend(df)), report.floor_figure(m), report.layer_link_figure(link),
               report.speedup_figure(speed)]
    for fig in figures:
        assert figure_problems(fig) == [] and isinstance(fig["layout"]["title"], dict)
    names = {t["name"] for t in report.figure13(analysis.mark_off_trend(df))["data"]}
    assert "hf p=12 b=1" in names  # legend entries in the table's own terms


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
    (["--models", "pythia-70m", "--prompt-len", "128,x"], "--prompt-len"),
    (["--models", "pythia-70m", "--warmup-s", "-1"], "--warmup-s"),
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


def test_a_users_checkpoint_too_short_for_the_prompt_is_a_one_line_error(workdir, tmp_path, capsys):
    built = ensure_checkpoint(resolve_model(str(workdir / "tiny-a.yaml")), workdir / "ckpt",
                              device=torch.device("cpu"), log=lambda _: None)
    assert main(["bench", "--models", str(built), "--prompt-len", "300", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_position_embeddings 256" in err[0] and "--prompt-len" in err[0]


def test_a_reference_that_runs_out_of_memory_at_one_size_keeps_the_others(tmp_path):
    """transformers' reference at prompt 2048 x batch 16 can run out of memory where smaller rows fit: that
    row is recorded as missing with the reason, and the rows that fit keep their reference."""
    from inference.reference import Reference

    ref = Reference("float16", {}, {}, {"2048x16": "transformers ran out of memory at prompt 2048, batch 16"})
    loaded = Reference.load(ref.save(tmp_path / "reference.pt"))
    assert loaded.missing == {"2048x16": "transformers ran out of memory at prompt 2048, batch 16"}


def test_a_reference_generation_that_runs_out_of_memory_runs_in_smaller_chunks(workdir, monkeypatch):
    """Doctored memory: generate() 'runs out of memory' above 2 rows (as c1's 64 heads did at b=16, prompt
    2048 on the H100). The reference then comes from chunks of 2 rows, equal to the whole batch's on a CPU,
    and says so; where even one row does not fit, that size alone is missing."""
    from inference import reference as R

    checkpoint = ensure_checkpoint(resolve_model(str(workdir / "tiny-a.yaml")), workdir / "ckpt",
                                   device=torch.device("cpu"), log=lambda _: None)
    prompts = {12: make_prompts(load_tokenizer(checkpoint), 4, 12)}
    whole = R.build_reference(checkpoint, prompts, [(12, 4)], new_tokens=4, dtype="float32", device=torch.device("cpu"))
    real = R.greedy_generation

    def tight(model, tokenizer, texts, *args, **kwargs):
        if len(texts) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(model, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(R, "greedy_generation", tight)
    chunked = R.build_reference(checkpoint, prompts, [(12, 4)], new_tokens=4, dtype="float32", device=torch.device("cpu"))
    got, want = chunked.generations[(12, 4)], whole.generations[(12, 4)]
    assert got.chunk == 2 and want.chunk is None and not chunked.missing
    assert torch.equal(got.tokens, want.tokens) and torch.allclose(got.topk_values, want.topk_values)
    monkeypatch.setattr(R, "greedy_generation", lambda *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")))
    none = R.build_reference(checkpoint, prompts, [(12, 4)], new_tokens=4, dtype="float32", device=torch.device("cpu"))
    assert "12x4" in none.missing and "out of memory" in none.missing["12x4"]

"""Issue 13 as a new user meets it on a CPU: nothing lost or corrupted silently, no traceback for a mistake
(one line naming the file or option and the fix, exit 2, nothing written half-way), honest CPU output."""

import json
import os

import pandas as pd
import pytest

from cli.main import profiler_main as main

TINY = "hidden_size: 64\nnum_attention_heads: 2\nnum_layers: 2\nseq_length: 32\nmicro_batch_size: 1\nvocab_size: 500\n"
FAST = ["--iters", "2", "--warmup", "1", "--no-floor"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# ---- 1. no silent data loss or corruption ----------------------------------------------------------------------
def test_a_components_csv_cut_mid_row_is_profiled_again_with_a_notice(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    assert main(["layer", "--config", str(tiny), "--out", str(out), *FAST]) == 0
    rows = len(pd.read_csv(out / "components.csv"))
    text = (out / "components.csv").read_text()
    (out / "components.csv").write_text(text[: len(text) // 2])  # a copy killed half-way
    capsys.readouterr()
    assert main(["layer", "--config", str(tiny), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert "profiling it again" in captured.err and "already profiled" not in captured.out
    assert len(pd.read_csv(out / "components.csv")) == rows


def test_a_run_directory_keeps_every_config_profiled_into_it_and_no_stale_traces(tmp_path, tiny):
    out = tmp_path / "run"
    assert main(["layer", "--config", str(tiny), "--out", str(out), *FAST]) == 0
    assert main(["layer", "--config", "pythia-70m", "--seq-len", "16", "--out", str(out), *FAST]) == 0
    run = json.loads((out / "run.json").read_text())
    assert [e["name"] for e in run["configs"]] == ["tiny", "pythia-70m"]
    assert set(pd.read_csv(out / "components.csv")["config"]) == {"tiny", "pythia-70m"}
    assert main(["layer", "--config", str(tiny), "--out", str(out), "--force", *FAST]) == 0
    traces = sorted(p.name.split(".")[0] for p in (out / "tb").glob("*.pt.trace.json*"))
    assert traces == ["pythia-70m", "tiny"]  # the re-profiled config's old trace is gone, the other's kept
    assert main(["layer", "--config", "pythia-70m", "--seq-len", "16", "--out", str(out), "--fresh", *FAST]) == 0
    assert [e["name"] for e in json.loads((out / "run.json").read_text())["configs"]] == ["pythia-70m"]


def test_sweep_out_naming_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    code = main(["sweep", "mm", "--m", "64", "--n", "64", "--k", "64", "--device", "cpu", "--out", str(target),
                 "--no-progress"])
    assert code == 2 and "is a file" in one_error_line(capsys)
    assert target.read_text() == "my notes\n"


def test_malformed_records_in_a_results_file_are_reported_by_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "mm", "--m", "64", "--n", "64", "--k", "64:128:64", "--device", "cpu", "--out", str(out),
            "--no-progress", "--no-report"]
    assert main(args) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    lines.insert(1, "{this is not json")
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(args + ["--retry-failed"]) == 0
    err = capsys.readouterr().err
    assert "1 malformed line(s) skipped (line 2" in err


# ---- 2. no tracebacks for user mistakes ---------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
    ("hidden_size: 64\n".encode("utf-16"), "not a text file"),
])
def test_a_binary_or_non_utf8_config_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "model.yaml"
    path.write_bytes(content)
    assert main(["layer", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_or_runs_through_one_is_one_line(tmp_path, tiny, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "below"):
        assert main(["layer", "--config", str(tiny), "--out", str(out), *FAST]) == 2
        assert "--out:" in one_error_line(capsys)


def test_an_out_whose_parents_are_missing_is_created(tmp_path, tiny):
    out = tmp_path / "a" / "b" / "run"
    assert main(["layer", "--config", str(tiny), "--out", str(out), *FAST]) == 0
    assert (out / "run.json").is_file()


def test_a_sequence_that_cannot_fit_in_memory_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["layer", "--config", "pythia-70m", "--attention", "eager", "--seq-len", "10000000", "--device", "cpu",
                 "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--seq-len" in line and "GiB" in line and "free" in line
    assert not out.exists()


def test_a_sequence_beyond_the_position_table_gets_a_notice(tmp_path, capsys):
    short = tmp_path / "short.yaml"  # a 32-position table: the same notice as 4096 past Pythia's 2048, in seconds
    short.write_text(TINY + "max_position_embeddings: 32\n")
    assert main(["layer", "--config", str(short), "--seq-len", "64", "--out", str(tmp_path / "o"), *FAST,
                 "--device", "cpu"]) == 0
    assert "seq_length 64 exceeds max_position_embeddings 32" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["{not json", json.dumps({"configs": "nope"}), json.dumps([1, 2])])
def test_a_broken_run_json_is_one_line_naming_it_and_the_fix(tmp_path, tiny, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(content)
    assert main(["layer", "--config", str(tiny), "--out", str(out), *FAST]) == 2
    line = one_error_line(capsys)
    assert "run.json" in line and "--fresh" in line
    assert (out / "run.json").read_text() == content  # nothing written


def test_a_results_file_with_no_record_at_all_is_one_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "results.jsonl").write_bytes(os.urandom(64).replace(b"\n", b"x") + b"\n" + b"garbage\n")
    assert main(["sweep", "report", str(out), "--out", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys)
    assert "results.jsonl: none of its 2 line(s) is a results record (line 1: not UTF-8 text)" in line


def test_warmup_must_be_zero_or_more(tmp_path, tiny, capsys):
    assert main(["layer", "--config", str(tiny), "--warmup", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--warmup: the fewest warm-up steps must be 0 or more" in one_error_line(capsys)


# ---- 3. honest on a CPU ---------------------------------------------------------------------------------------
def test_a_cpu_report_says_host_clock_gflops_and_what_was_switched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["layer", "--config", "pythia-70m", "--seq-len", "16", "--attention", "flash", "--out", str(out),
                 *FAST]) == 0
    err = capsys.readouterr().err
    assert "attention flash -> sdpa" in err and "dtype bfloat16 -> float32" in err and "Estimated time" in err
    assert "USDT:" not in err  # libkineto's start/stop chatter is filtered
    html = (out / "report.html").read_text()
    assert "measured with CUDA events" not in html and "host clock" in html and "GFLOP/s" in html
    components = pd.read_csv(out / "components.csv")
    assert "sdpa_attention" in set(components["component"]) and "flash_attention" not in set(components["component"])
    entry = json.loads((out / "run.json").read_text())["configs"][0]
    # --seq-len was asked for; the CPU's option defaults are switches too, printed and recorded
    assert {s["field"] for s in entry["switches"]} == {"attention", "dtype", "timing budget (warm-up, repetitions)",
                                                       "most warm-up windows"}
    assert "most warm-up windows 40 -> 4" in err


def test_a_gpu_sized_run_on_a_cpu_asks_for_device_cpu(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["layer", "--config", "gpt3-2.7b", "--batch", "4", "--seq-len", "2048", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--device" in line and "would take about" in line and "--device cpu" in line
    assert not out.exists()


def test_a_gpu_sized_sweep_on_a_cpu_asks_for_device_cpu(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "score", "--heads", "32", "--h", "32:32768:32", "--out", str(out)]) == 2
    assert "would take about" in one_error_line(capsys)
    assert not out.exists()


def test_the_inference_report_names_damaged_lines_of_its_results_file(tmp_path):
    from reports.inference_report import write_report

    row = {"record": "row", "model": "pythia-70m", "engine": "hf", "batch": 1, "prompt_len": 16, "new_tokens": 4,
           "dtype": "float32", "tensor_parallel": 1, "status": "error", "reason": "an example"}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n{torn\n")
    html = write_report(tmp_path).read_text()
    assert "Damaged results file" in html and "1 malformed line(s) skipped (line 2" in html


def test_the_layer_report_has_one_ceiling_that_no_gemm_exceeds():
    from reports.layer_report import gemm_ceiling

    rows = pd.DataFrame({"kind": ["gemm", "gemm", "non-gemm"], "tflops": [700.0, 805.4, float("nan")]})
    ceiling, note = gemm_ceiling(786.0, rows)
    assert ceiling == 805.4 and "above the measured matmul peak of 786" in note
    assert gemm_ceiling(810.0, rows) == (810.0, "the measured matmul peak (see the environment)")


def test_outputs_are_readable_by_others_not_only_their_writer(tmp_path):
    """The atomic writer's temporary file is 0600 (mkstemp): the renamed result gets the mode an ordinary
    open() gives under the umask, so a colleague can open report.html or components.csv."""
    import os
    import stat

    from profiler.outputs import write_atomic

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

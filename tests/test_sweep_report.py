"""The sweep report reads throughput against one peak (issue 13, item 4): the GEMM ceiling per GPU and
dtype, defined on the page, never below a point that was measured; committed gzipped results load; and
`sweep KIND --help` lists that kind's options only (item 6)."""

import gzip
import json
import re
from pathlib import Path

import pytest

from cli.main import profiler_main as main
from profiler.sweeps import analysis
from reports import sweep_report

ROOT = Path(__file__).resolve().parent.parent
GPU = "NVIDIA H100 80GB HBM3"


def point(n: int, tflops: float, *, gpu: str = GPU, dtype: str = "bfloat16") -> dict:
    return {"record": "point", "kind": "mm", "component": "mm", "batch": 1, "m": 4096, "n": n, "k": 4096,
            "dtype": dtype, "gpu": gpu, "tag": "", "x_name": "n", "x": n, "status": "ok", "tflops": tflops,
            "median_ms": 1.0, "p10_ms": 1.0, "p90_ms": 1.0, "repeats": 10, "waves_128x256": 1,
            "tiles_128x256": 100, "last_wave_fill_128x256": 0.75, "sms": 132}


def run(matmul_tflops: float | None, *, gpu: str = GPU) -> dict:
    record = {"record": "run", "spec": {"kind": "mm"}, "environment": {"gpu_name": gpu, "bf16_tflops": 989.4}}
    if matmul_tflops:
        record["matmul_peak"] = {"shape": [8192, 8192, 8192], "dtype": "bfloat16", "tflops": matmul_tflops}
    return record


def write(tmp_path: Path, records: list[dict]) -> Path:
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return sweep_report.write_outputs([tmp_path], tmp_path, plotly_src="plotly.js")[1]


def test_the_ceiling_is_the_measured_matmul_when_no_point_beats_it():
    df = analysis.points_frame([point(1024, 600.0), point(2048, 700.0)])
    (row,) = sweep_report.gemm_ceiling(df, [run(790.0)]).to_dict("records")
    assert (row["ceiling_tflops"], row["points_above_matmul"]) == (790.0, 0)
    assert row["basis"] == "8192x8192x8192 bfloat16 matmul measured in the same run"


def test_a_point_faster_than_the_measured_matmul_becomes_the_ceiling_and_the_page_says_so(tmp_path):
    page = write(tmp_path, [run(790.0), point(1024, 600.0), point(2048, 816.0)]).read_text()
    assert "1 point(s) beat the 8192x8192x8192 matmul measured in the same run (790 TFLOP/s)" in page
    assert "the ceiling is the fastest point, 816 TFLOP/s" in page
    assert "best 816.0 TFLOP/s, 100% of the ceiling" in page


def test_without_a_measured_matmul_the_fastest_point_is_the_ceiling():
    df = analysis.points_frame([point(1024, 600.0)])
    (row,) = sweep_report.gemm_ceiling(df, [run(None)]).to_dict("records")
    assert row["ceiling_tflops"] == 600.0 and "no matmul was measured" in row["basis"]


def test_each_gpu_and_dtype_has_its_own_ceiling():
    df = analysis.points_frame([point(1024, 600.0), point(1024, 300.0, gpu="NVIDIA A100"),
                                point(1024, 50.0, dtype="float32")])
    ceilings = sweep_report.gemm_ceiling(df, [run(790.0), run(310.0, gpu="NVIDIA A100")])
    got = {(r.gpu, r.dtype): r.ceiling_tflops for r in ceilings.itertuples()}
    assert got == {(GPU, "bfloat16"): 790.0, ("NVIDIA A100", "bfloat16"): 310.0, (GPU, "float32"): 50.0}


def test_one_peak_on_the_page_drawn_on_every_chart_and_defined_up_front(tmp_path):
    page = write(tmp_path, [run(790.0), point(1024, 600.0), point(2048, 700.0)]).read_text()
    figures = [json.loads(m) for m in re.findall(r"var fig = (\{.*?\}); Plotly", page)]
    assert figures and all([s["y0"] for s in f["layout"]["shapes"]] == [790.0] for f in figures)
    how_to_read = page[page.index("How to read this report"):page.index("<h2>Sweeps</h2>")]
    assert "the GEMM ceiling, the one peak this report reads throughput against" in how_to_read
    assert "790 TFLOP/s, the 8192x8192x8192 bfloat16 matmul measured in the same run" in how_to_read
    assert "989.4" not in page  # the datasheet figure is no second peak


def test_committed_gzipped_sweeps_load_and_stay_at_or_under_their_ceiling():
    path = next((p for p in (ROOT / "evidence" / "h100" / "sweeps",)
                 if (p / "results.jsonl.gz").is_file()), None)
    if path is None:
        pytest.skip("no committed sweep evidence in this checkout")
    df, runs, _ = sweep_report.load([path])
    lines = sum(1 for line in gzip.open(path / "results.jsonl.gz", "rt") if '"record":"point"' in line)
    assert len(df) == lines and runs
    pct = sweep_report.with_pct_of_ceiling(df, sweep_report.gemm_ceiling(df, runs))["pct_of_ceiling"]
    assert pct.max() == pytest.approx(100.0)


def test_results_without_a_measured_point_still_render(tmp_path):
    page = write(tmp_path, [run(790.0), {**point(1024, 0.0), "status": "oom", "tflops": None}]).read_text()
    assert "No point was measured, so there is no ceiling to read against." in page
    assert "1 point(s) not measured: n=1024 (oom)" in page


# ---- `python -m profiler sweep KIND --help` ---------------------------------------------------------------
def help_text(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", *args])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def options(text: str) -> set[str]:
    return set(re.findall(r"^\s+(--[a-z-]+)", text, flags=re.M))


def test_kind_help_lists_that_kinds_options_only(capsys):
    score = options(help_text(capsys, "score", "--help"))
    assert {"--h", "--heads", "--head-dim", "--b", "--s", "--t", "--dtype", "--out"} <= score
    assert not score & {"--v", "--ffn", "--m", "--n", "--k", "--batch", "--causal"}
    assert options(help_text(capsys, "logits", "-h")) & {"--v", "--heads", "--m"} == {"--v"}
    assert options(help_text(capsys, "report", "--help")) == {"--out"}


def test_help_before_a_kind_lists_every_option(capsys):
    assert {"--h", "--v", "--ffn", "--m", "--causal"} <= options(help_text(capsys, "--help"))


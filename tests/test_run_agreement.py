"""Issue 19's cross-run figures from committed layer runs (evidence/h200/layer-runs, three full runs on an H200)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from profiler.run_agreement import agreement, load_runs, summary_lines

RUNS = Path(__file__).resolve().parent.parent / "evidence" / "h200" / "layer-runs"


def test_the_committed_h200_runs_agree_in_floor_ratio_but_not_in_latency_everywhere():
    runs = load_runs([RUNS / f"run-{i}" for i in (1, 2, 3)])
    assert len(runs) == 60
    table = agreement(runs)
    bound = table[table["gpu_bound"]]
    assert len(bound) == 19  # pythia-70m is launch-bound: its latency times the host, not judged
    assert int(bound["latency_ok"].sum()) == 10
    worst = bound.loc[bound["latency_spread_pct"].idxmax()]
    assert (worst["config"], round(worst["latency_spread_pct"], 1)) == ("gpt3-2.7b", 5.0)
    assert table["x_floor_ok"].all() and table["x_floor_range"].max() == pytest.approx(0.016, abs=5e-4)
    lines = summary_lines(runs, table)
    assert any("19 of 20 configs pass every check (failed: gpt3-2.7b-c2 trace_stable)" in line for line in lines)


def test_a_run_doctored_three_percent_slower_fails_the_latency_agreement(tmp_path):
    for i in (1, 2):
        shutil.copytree(RUNS / f"run-{i}" / "pythia-suite", tmp_path / f"run-{i}" / "pythia-suite",
                        ignore=shutil.ignore_patterns("*.html", "*.csv", "tb"))
    before = agreement(load_runs([tmp_path / "run-1", tmp_path / "run-2"])).set_index("config")
    assert before.loc["pythia-1b", "latency_ok"]
    path = tmp_path / "run-2" / "pythia-suite" / "run.json"
    record = json.loads(path.read_text())
    for config in record["configs"]:
        if config["name"] == "pythia-1b":
            config["latency_us"]["median"] *= 1.03
            config["floor_ratio"] += 0.05
    path.write_text(json.dumps(record))
    after = agreement(load_runs([tmp_path / "run-1", tmp_path / "run-2"])).set_index("config")
    assert not after.loc["pythia-1b", "latency_ok"] and not after.loc["pythia-1b", "x_floor_ok"]
    pd.testing.assert_series_equal(after.drop("pythia-1b")["latency_ok"], before.drop("pythia-1b")["latency_ok"])


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run.json"):
        load_runs([tmp_path])


def test_the_three_runs_of_ee894d8_on_one_gpu_pass_every_check_and_four_configs_spread_over_two_percent():
    folder = RUNS / "three-runs-ee894d8"
    runs = load_runs([folder / f"run-{i}" for i in (1, 2, 3)])
    assert len(runs) == 60 and runs["passed"].all() and runs["gpu_uuid"].nunique() == 1
    table = agreement(runs)
    assert table["gpu_bound"].all() and int(table["latency_ok"].sum()) == 16
    over = table[~table["latency_ok"].astype(bool)]
    over = set(over["config"] + " " + over["folder"])
    assert over == {"gpt3-2.7b figure1-eager", "gpt3-2.7b figure1-flash", "gpt3-2.7b-a20 figure1-flash",
                    "pythia-1.4b pythia-suite"}
    assert table["x_floor_ok"].all() and table["x_floor_range"].max() == pytest.approx(0.017, abs=5e-4)
    lines = summary_lines(runs, table)
    assert "GPUs: 1 (ddf1f6bf)" in lines
    mixed = summary_lines(pd.concat([runs, load_runs([RUNS / "run-1"])]), table)
    assert "GPUs: 1 (ddf1f6bf); not recorded for 1 run(s)" in mixed


def test_the_extended_protocol_runs_agree_within_two_percent_and_read_gzipped_run_files():
    """evidence/h200/layer-runs/three-runs-5d99310: attempts extended until precise; the large run.json files
    are committed gzipped, and read as they are."""
    root = RUNS / "three-runs-5d99310"
    assert list(root.glob("run-*/*/run.json.gz")) and list(root.glob("run-*/*/run.json"))
    runs = load_runs([root / f"run-{i}" for i in (1, 2, 3)])
    assert len(runs) == 60 and runs["passed"].all() and runs["gpu_uuid"].nunique() == 1
    table = agreement(runs)
    bound = table[table["gpu_bound"]]
    assert len(bound) == 17 and bound["latency_ok"].all()
    assert bound["latency_spread_pct"].max() == pytest.approx(1.48, abs=0.01)
    assert table["latency_spread_pct"].max() < 2.0  # the three not judged (launch-bound in one run) agree too
    assert table["x_floor_range"].max() <= 0.0105


def test_a_gzipped_run_file_is_read_like_a_plain_one(tmp_path):
    import gzip

    source = RUNS / "run-1" / "pythia-suite" / "run.json"
    (tmp_path / "plain").mkdir()
    (tmp_path / "zipped").mkdir()
    shutil.copy(source, tmp_path / "plain" / "run.json")
    with gzip.open(tmp_path / "zipped" / "run.json.gz", "wt", encoding="utf-8") as f:
        f.write(source.read_text())
    plain, zipped = load_runs([tmp_path / "plain"]), load_runs([tmp_path / "zipped"])
    assert len(plain) == 8
    pd.testing.assert_frame_equal(plain.drop(columns="run"), zipped.drop(columns="run"))

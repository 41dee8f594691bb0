"""`python -m profiler diff` (issue 12, item 5) on committed runs: the paper's a=20 variant against GPT-3 2.7B
changes the attention rows and leaves the MLP within noise; old and new components.csv schemas both read;
bad input is one line and exit 2.
"""

from pathlib import Path

import pandas as pd
import pytest

from cli.main import profiler_main as main
from profiler.run_diff import diff_components, normalise_components

ROOT = Path(__file__).resolve().parent.parent
EAGER = ROOT / "tests" / "fixtures" / "h100" / "layer" / "figure1-eager"
TINY = ROOT / "tests" / "fixtures" / "reports" / "carryover-tiny"


@pytest.fixture(scope="module")
def eager_rows():
    table = pd.read_csv(EAGER / "components.csv")
    return {name: rows for name, rows in table.groupby("config")}


def test_fewer_heads_speed_up_attention_and_leave_the_mlp_within_noise(eager_rows):
    table = diff_components(eager_rows["gpt3-2.7b"], eager_rows["gpt3-2.7b-a20"]).set_index("component")
    for component in ("attention_score", "attention_over_values", "softmax", "rotary"):
        assert table.loc[component, "verdict"] == "faster in B", component
    for component in ("mlp_up", "mlp_down", "qkv_transform", "out_projection", "activation", "norm"):
        assert table.loc[component, "verdict"] == "within noise", component
    assert table.loc["attention_score", "delta_tflops"] > 100  # 200 -> 305 TFLOP/s at h/a 128
    assert round(table.loc["softmax", "delta_pct"]) == -36


def test_a_change_beyond_both_spreads_is_not_noise(eager_rows):
    a = eager_rows["gpt3-2.7b"]
    b = a.copy()
    slower = b["component"] == "mlp_up"
    b.loc[slower, ["time_us", "p10_us", "p90_us"]] *= 1.05  # 28 us more, spreads of 3 us each
    table = diff_components(a, b).set_index("component")
    assert table.loc["mlp_up", "verdict"] == "slower in B"
    assert (table.drop(index="mlp_up")["verdict"] == "within noise").all()


def test_old_and_new_components_schemas_read_alike(eager_rows):
    old = eager_rows["gpt3-2.7b"]
    assert "share" in old and "role" not in old
    new = old.rename(columns={"share": "share_of_kernel_time"}).assign(
        role=["fprop" if k == "gemm" else "" for k in old["kind"]])
    assert normalise_components(old)["share_of_kernel_time"].equals(normalise_components(new)["share_of_kernel_time"])
    both_new = diff_components(new, new)
    assert set(both_new.loc[both_new["kind"] == "gemm", "role"]) == {"fprop"}
    mixed = diff_components(old, new)  # one side without roles: compared per (pass, component)
    assert (mixed["verdict"] == "within noise").all() and (mixed["delta_us"] == 0).all()
    assert len(mixed) == len(old)


def test_rows_on_one_side_only_are_named(capsys):
    assert main(["diff", f"{TINY}/layer-forward:tiny-a", f"{TINY}/layer-forward+backward:tiny-a"]) == 0
    out = capsys.readouterr().out
    assert "only in B" in out and "qkv_transform (bwd)" in out


def test_the_command_writes_the_table_the_facts_and_a_titled_chart(tmp_path, capsys):
    out = tmp_path / "diff"
    assert main(["diff", f"{EAGER}:gpt3-2.7b", f"{EAGER}:gpt3-2.7b-a20", "--out", str(out)]) == 0
    assert "4 faster in B, 8 within noise" in capsys.readouterr().out
    table = pd.read_csv(out / "diff.csv")
    assert list(table["verdict"].value_counts().sort_index().items()) == [("faster in B", 4), ("within noise", 8)]
    page = (out / "report.html").read_text()
    assert "Change in time, gpt3-2.7b-a20 minus gpt3-2.7b" in page and "change in time per step (us)" in page


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/missing", "RUN_A: {tmp}/missing is not a directory"),
    ("{tmp}", "RUN_A: {tmp} has no run.json"),
    (f"{EAGER}:gpt3-nope", f"RUN_A: {EAGER} has no config 'gpt3-nope' (it has: gpt3-2.7b-c1, "),
    (f"{EAGER}", f"RUN_A: {EAGER} holds 4 configs"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, spec, message):
    spec, message = spec.format(tmp=tmp_path), message.format(tmp=tmp_path)
    assert main(["diff", spec, f"{EAGER}:gpt3-2.7b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_two_traces_at_different_clocks_are_called_out():
    """gpt3-2.7b vs its a=20 variant on the H100 of 2026-11-23: identical MLP GEMMs read 12% slower in B
    because B's traced steps ran at 1365 MHz against A's 1575 (a power-capped GPU), not because of B's shape."""
    from profiler.run_diff import clock_notice

    def entry(mhz):
        return {"clock": {"phases": {"trace": {"sm_clock_mhz": mhz}}}}

    note = clock_notice(entry(1575.0), entry(1365.0))
    assert note is not None and "A 1575 MHz, B 1365 MHz (-13.3%)" in note
    assert clock_notice(entry(1980.0), entry(1965.0)) is None  # one NVML step apart: the same clock
    assert clock_notice({}, entry(1365.0)) is None  # a run without telemetry: nothing to say

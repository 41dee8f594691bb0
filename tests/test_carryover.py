"""Issue 10 on CPU: the carry-over analysis (gains with spreads, verdicts, ordering, the deployable MII
engine, the decode knee) on hand-made rows, including doctored ones where a gain sits inside the spread and
where training and inference order the shapes differently; and the command end to end on tiny configs
(transformers, the real layer profiler CLI, the decode sweep, the report)."""

import json

import pandas as pd
import pytest

from inference import analysis, carryover
from cli.main import inference_main as main
from inference.results import ResultsFile
from reports.html import figure_problems

BASE = "base"


def bench_row(model, *, engine="hf", batch=1, prompt=128, ttft=10.0, decode=5.0, spread=0.01, status="ok",
              params=1e9, flops=1e12, read=1e9, floor=3.0):
    return {"model": model, "engine": engine, "batch": batch, "prompt_len": prompt, "status": status, "reason": "",
            "params_total": params, "head_dim": 64, "ttft_ms": ttft, "ttft_p10_ms": ttft * (1 - spread),
            "ttft_p90_ms": ttft * (1 + spread), "decode_p50_ms": decode, "decode_p10_ms": decode * (1 - spread),
            "decode_p90_ms": decode * (1 + spread), "prefill_flops": flops, "weight_bytes": read, "kv_bytes": 0,
            "decode_floor_ms": floor, "compute_floor_ms": 0.1}


def layer_row(model, tflops, *, mode="forward+backward", spread=0.01, latency=100.0):
    return {"model": model, "mode": mode, "layer_tflops": tflops, "layer_latency_us": latency,
            "layer_latency_p10_us": latency * (1 - spread), "layer_latency_p90_us": latency * (1 + spread),
            "layer_flops": tflops * latency * 1e6, "layer_batch": 4, "layer_seq_len": 2048, "layer_gemm_share": 0.9,
            "layer_status": "ok", "layer_run": "run.json"}


def frames(bench_rows, layer_rows):
    return pd.DataFrame(bench_rows), pd.DataFrame(layer_rows, columns=analysis.LAYER_COLUMNS)


def test_gains_are_throughput_ratios_to_the_baseline_with_ranges():
    bench, layer = frames([bench_row(BASE, ttft=10, decode=5), bench_row("fast", ttft=8, decode=4)],
                          [layer_row(BASE, 100), layer_row("fast", 125)])
    t = carryover.carryover_table(bench, layer, BASE).set_index("model")
    assert t.loc["fast", "train_fwdbwd_gain"] == pytest.approx(0.25)
    assert t.loc["fast", "prefill_gain"] == pytest.approx(10 / 8 - 1)  # same FLOPs: the latency ratio
    assert t.loc["fast", "decode_gain"] == pytest.approx(5 / 4 - 1)
    # ranges from p10/p90 of both latencies: shape low / baseline high - 1 .. shape high / baseline low - 1
    assert t.loc["fast", "decode_gain_lo"] == pytest.approx((1 / 4.04) / (1 / 4.95) - 1)
    assert t.loc["fast", "decode_gain_hi"] == pytest.approx((1 / 3.96) / (1 / 5.05) - 1)
    assert set(t.loc["fast", ["train_fwdbwd_class", "prefill_class", "decode_class"]]) == {"better"}
    assert t.loc[BASE, "decode_gain"] == 0 and t.loc[BASE, "is_baseline"]


def test_a_gain_inside_the_spread_is_no_difference():
    bench, layer = frames([bench_row(BASE, decode=5.0, spread=0.10), bench_row("same", decode=4.8, spread=0.10)],
                          [layer_row(BASE, 100, spread=0.1), layer_row("same", 104, spread=0.1)])
    t = carryover.carryover_table(bench, layer, BASE).set_index("model")
    assert t.loc["same", "decode_gain"] > 0 and t.loc["same", "decode_class"] == "no difference"
    assert t.loc["same", "train_fwdbwd_class"] == "no difference"
    (line,) = carryover.verdicts(carryover.carryover_table(bench, layer, BASE), BASE)["verdict"]
    assert "decode@128 +4.2%" in line and "(no difference)" in line
    # doctored: the same numbers with no spread are a real gain
    tight, layer_t = frames([bench_row(BASE, decode=5.0, spread=0), bench_row("same", decode=4.8, spread=0)],
                            [layer_row(BASE, 100, spread=0), layer_row("same", 104, spread=0)])
    assert carryover.carryover_table(tight, layer_t, BASE).set_index("model").loc["same", "decode_class"] == "better"


def test_verdict_line_per_shape_says_whether_the_gain_carries_over():
    rows = [bench_row(BASE, prompt=p, ttft=10, decode=5) for p in (128, 2048)]
    rows += [bench_row("good", prompt=p, ttft=8, decode=4) for p in (128, 2048)]
    rows += [bench_row("lost", prompt=p, ttft=12, decode=6) for p in (128, 2048)]
    bench, layer = frames(rows, [layer_row(BASE, 100), layer_row("good", 120), layer_row("lost", 120),
                                 layer_row(BASE, 100, mode="forward"), layer_row("good", 110, mode="forward"),
                                 layer_row("lost", 110, mode="forward")])
    v = carryover.verdicts(carryover.carryover_table(bench, layer, BASE), BASE).set_index("model")
    assert v.loc["good", "carries_over"] == "carries over"
    assert v.loc["lost", "carries_over"] == "does not carry over"
    line = v.loc["good", "verdict"]
    assert line.startswith("good vs base [hf b=1]: training +20.0% [") and "(forward +10.0% [" in line
    assert "prefill@2048 +25.0% [" in line and "decode@128 +25.0% [" in line


def test_ordering_agrees_when_no_pair_is_reversed_beyond_the_spread():
    rows = [bench_row(m, decode=d) for m, d in ((BASE, 5.0), ("a", 4.0), ("b", 3.0))]
    bench, layer = frames(rows, [layer_row(BASE, 100), layer_row("a", 120), layer_row("b", 140)])
    o = carryover.ordering(carryover.carryover_table(bench, layer, BASE)).set_index("metric")
    assert o.loc["decode", "agrees"] and o.loc["decode", "inference_order"] == "b > a > base"
    assert o.loc["decode", "training_order"] == "b > a > base"


def test_ordering_disagrees_when_inference_reverses_a_training_gain():
    """Doctored: training puts 'a' above 'b'; decode puts 'b' above 'a', both beyond their spreads."""
    rows = [bench_row(m, decode=d) for m, d in ((BASE, 5.0), ("a", 4.5), ("b", 3.0))]
    bench, layer = frames(rows, [layer_row(BASE, 100), layer_row("a", 140), layer_row("b", 120)])
    o = carryover.ordering(carryover.carryover_table(bench, layer, BASE)).set_index("metric")
    assert not o.loc["decode", "agrees"]
    assert "a > b in training, b > a in decode" in o.loc["decode", "contradictions"]
    # within the spread the reversal is not a disagreement ('~' in the order), nor an agreement: with no pair
    # told apart in inference the ordering cannot tell (issue 20: it used to say "agrees")
    noisy = [bench_row(m, decode=d, spread=0.2) for m, d in ((BASE, 5.0), ("a", 4.5), ("b", 4.3))]
    bench_n, _ = frames(noisy, [])
    o2 = carryover.ordering(carryover.carryover_table(bench_n, layer, BASE)).set_index("metric")
    assert o2.loc["decode", "agrees"] is None and "~" in o2.loc["decode", "inference_order"]
    assert carryover.agreement_text(o2.loc["decode"]).startswith("cannot tell: no pair of shapes")


def test_a_tie_in_inference_is_cannot_tell_when_its_interval_holds_the_training_gain_and_lost_when_not():
    """Issue 20's contradiction (review of 479233e): the ordering said 'agrees' where inference could not tell
    the shapes apart, while the verdict on the same rows said 'does not carry over'. Both now read the tie the
    same way: a wide interval that holds the +20% training gain cannot tell; a tight one that excludes it
    means the gain is not there, on both sides."""
    def verdict_and_order(spread):
        rows = [bench_row(m, prompt=p, ttft=10.0, decode=5.0, spread=spread) for p in (128, 2048)
                for m in (BASE, "fast")]
        bench, layer = frames(rows, [layer_row(BASE, 100), layer_row("fast", 120)])
        table = carryover.carryover_table(bench, layer, BASE)
        (carries,) = carryover.verdicts(table, BASE)["carries_over"]
        order = carryover.ordering(table).set_index("metric").loc["decode"]
        return carries, order.iloc[0] if isinstance(order, pd.DataFrame) else order

    carries, order = verdict_and_order(spread=0.15)  # decode gain 0% in [-26%, +35%]: holds +20%
    assert carries.startswith("cannot tell (inference cannot tell") and order["agrees"] is None
    carries, order = verdict_and_order(spread=0.01)  # 0% in [-2%, +2%]: the +20% is measurably absent
    assert carries == "does not carry over" and order["agrees"] == False  # noqa: E712 (a numpy bool)
    assert "tied in decode" in order["contradictions"]


def test_pair_outcomes_cover_every_case():
    P = carryover.pair_outcome
    assert P("better", 0.2, "better", 0.1, 0.3) == "agrees"
    assert P("better", 0.2, "worse", -0.3, -0.1) == "reversed"
    assert P("better", 0.2, "no difference", -0.1, 0.3) == carryover.UNCLEAR
    assert P("better", 0.2, "no difference", -0.02, 0.02) == "lost"
    assert P("no difference", 0.0, "no difference", -0.02, 0.02) == "same"
    assert P("no difference", 0.0, "better", 0.1, 0.2) == "inference only"
    assert P("better", 0.2, carryover.LAUNCH_BOUND_CLASS, 0.1, 0.3) == "no data"


def test_mii_auto_uses_injection_where_it_ran_and_noinject_elsewhere():
    rows = [bench_row(BASE, engine="mii", status="unsupported"), bench_row(BASE, engine="mii-noinject", decode=9),
            bench_row("c2", engine="mii", decode=3), bench_row("c2", engine="mii-noinject", decode=8)]
    auto = carryover.with_auto_engine(pd.DataFrame(rows))
    auto = auto[auto["engine"] == carryover.AUTO_ENGINE].set_index("model")
    assert auto.loc[BASE, "variant"] == "mii-noinject" and auto.loc["c2", "variant"] == "mii"
    assert auto.loc["c2", "decode_p50_ms"] == 3


def test_a_gain_against_a_baseline_on_another_engine_variant_says_so():
    """gpt3-2.7b (h/a=80) cannot use DeepSpeed's fused kernels, its a=20 variant can: mii-auto compares an
    injected row with a plain one, and the verdict and the ordering must not present that as a shape effect."""
    rows = [bench_row(BASE, engine="mii", status="unsupported"), bench_row(BASE, engine="mii-noinject", decode=9),
            bench_row("a20", engine="mii", decode=2), bench_row("a20", engine="mii-noinject", decode=8.8)]
    bench, layer = frames(rows, [layer_row(BASE, 500), layer_row("a20", 530)])
    table = carryover.carryover_table(bench, layer, BASE)
    lines = carryover.verdicts(table, BASE).set_index("engine")
    assert lines.loc["mii-auto", "carries_over"].startswith("engine differs: mii vs the baseline's mii-noinject")
    assert "carries over" not in lines.loc["mii-auto", "carries_over"]  # a fused-kernel gain is not the shape's
    assert "engine differs" not in lines.loc["mii-noinject", "carries_over"]  # same variant on both sides
    order = carryover.ordering(table).set_index("engine")
    assert order.loc["mii-auto", "engine_variants"].iloc[0] == "mii, mii-noinject"
    assert order.loc["mii-noinject", "engine_variants"].iloc[0] == ""


def test_decode_knee_is_where_a_step_stops_being_free():
    rows = [bench_row("m", batch=b, decode=d, floor=1.0) for b, d in ((1, 5.0), (2, 5.1), (4, 5.2), (8, 5.9), (16, 6.6), (32, 9.0))]
    for r in rows:
        r["compute_floor_ms"] = 0.05 * r["batch"]
    sweep = carryover.decode_sweep(pd.DataFrame(rows))
    assert list(sweep["decode_tokens_per_s"])[0] == pytest.approx(1 / 5e-3)
    (knee,) = carryover.decode_knee(sweep).to_dict("records")
    assert knee["knee_batch"] == 16  # 6.6 > 1.25 x 5.0; 5.9 is not
    assert knee["roofline_batch"] == 32  # 0.05 x 32 >= the 1.0 ms bandwidth floor
    assert knee["launch_bound"] and knee["min_step_over_floor"] == pytest.approx(5.0)  # 5 ms against a 1 ms floor


def test_one_slow_step_within_the_noise_is_not_a_knee():
    """Doctored from the H100 MII sweep (launch-bound steps that jump 40% at one batch and come back): a rise
    whose p10 stays inside the smallest batch's range is noise, and so is a clear rise that does not last;
    a clear rise that lasts is the knee. Steps near their floor are not launch-bound."""
    def knee(steps, noisy_batch=None):
        rows = [bench_row("m", batch=b, decode=d, spread=0.3 if b == noisy_batch else 0.05, floor=1.0)
                for b, d in steps]
        (row,) = carryover.decode_knee(carryover.decode_sweep(pd.DataFrame(rows))).to_dict("records")
        return row["knee_batch"]
    rising = ((1, 5.0), (2, 5.2), (4, 7.0), (8, 7.2))
    assert knee(rising) == 4
    assert knee(rising, noisy_batch=4) == 8  # b=4's p10 4.9 is below the smallest batch's p90 5.25
    assert knee(((1, 5.0), (2, 5.2), (4, 7.0), (8, 5.1))) is None  # one slow step, then free again
    near = [bench_row("n", batch=b, decode=d, floor=1.0) for b, d in ((1, 1.5), (2, 1.6))]
    (row,) = carryover.decode_knee(carryover.decode_sweep(pd.DataFrame(near))).to_dict("records")
    assert not row["launch_bound"] and row["min_step_over_floor"] == pytest.approx(1.5)


def test_layer_profile_reader_takes_a_run_dir_and_both_modes(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"configs": [
        {"name": "a", "mode": "forward", "status": "ok", "layer_tflops": 300.0, "layer_flops": 3e11,
         "latency_us": {"median": 1000.0, "p10": 990.0, "p90": 1020.0}, "config": {"micro_batch_size": 4, "seq_length": 2048}},
        {"name": "a", "mode": "forward+backward", "status": "ok", "layer_tflops": 280.0,
         "latency_us": {"median": 3200.0, "p10": 3100.0, "p90": 3300.0}, "config": {}}]}))
    layer = analysis.load_layer_profile(tmp_path)
    assert list(layer["mode"]) == ["forward", "forward+backward"] and layer["layer_batch"].iloc[0] == 4
    t = carryover.training_metrics(layer).set_index("model")
    assert t.loc["a", "train_fwd_tflops"] == 300.0
    assert t.loc["a", "train_fwd_tflops_lo"] == pytest.approx(300 * 1000 / 1020)
    assert t.loc["a", "train_fwdbwd_tflops_hi"] == pytest.approx(280 * 3200 / 3100)


TINY = """\
name: {name}
hidden_size: {h}
num_attention_heads: {a}
num_layers: 2
vocab_size: 512
max_position_embeddings: 256
seq_length: 64
micro_batch_size: 1
"""


@pytest.mark.slow  # a minute on 2 cores: four layer profiles, each a process of its own, twice; the command's
# analysis and report with given profiles is test_given_layer_profiles_are_used_as_they_are's
def test_carryover_command_end_to_end_on_tiny_shapes(tmp_path, capsys):
    for name, h, a in (("tiny-a4", 128, 4), ("tiny-a8", 128, 8)):
        (tmp_path / f"{name}.yaml").write_text(TINY.format(name=name, h=h, a=a))
    models = ",".join(str(tmp_path / f"{n}.yaml") for n in ("tiny-a4", "tiny-a8"))
    out = tmp_path / "out"
    args = ["carryover", "--models", models, "--baseline", "tiny-a4", "--engines", "hf", "--batch", "1,2",
            "--prompt-len", "8,16", "--new-tokens", "4", "--repeats", "2", "--warmup-s", "0", "--out", str(out),
            "--checkpoints", str(tmp_path / "ckpt"), "--layer-attention", "eager,sdpa", "--decode-batches", "1,2,4",
            "--decode-new-tokens", "3", "--decode-repeats", "1", "--no-progress"]
    assert main(args) == 0
    for name in ("carryover.html", "carryover.csv", "verdicts.txt", "carryover.json", "bench/results.jsonl",
                 "decode/results.jsonl", "layer-forward/run.json", "layer-forward+backward/run.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "carryover.json").read_text())
    # inside DIR, paths are kept relative: the GPU evidence is packed on one machine and rendered on another
    assert manifest["layer_profiles"] == ["layer-forward/run.json", "layer-forward+backward/run.json",
                                          "layer-forward-sdpa/run.json", "layer-forward+backward-sdpa/run.json"]
    assert manifest["layer_attention"] == ["eager", "sdpa"]
    table = pd.read_csv(out / "carryover.csv")
    assert set(table["training_attention"]) == {"eager", "sdpa"}  # one block of rows per attention
    glance = pd.read_csv(out / "glance.csv", keep_default_na=False).set_index("model")
    assert list(glance.index) == ["tiny-a8"] and "% [" in glance.loc["tiny-a8", "prefill@16 hf b=2"]
    assert {"training (eager attention, fwd+bwd)", "training (sdpa attention, fwd+bwd)"} <= set(glance.columns)
    assert "training (sdpa attention, fwd+bwd)" in capsys.readouterr().out  # the glance on the console
    table = table[table["training_attention"] == "eager"].reset_index(drop=True)
    assert set(table["model"]) == {"tiny-a4", "tiny-a8"} and set(table["prompt_len"]) == {8, 16}
    assert table["train_fwd_tflops"].notna().all() and table["train_fwdbwd_tflops"].notna().all()
    verdicts = (out / "verdicts.txt").read_text()
    assert "tiny-a8 vs tiny-a4 [hf b=1]: training " in verdicts and "ordering hf p=16 b=2 decode" in verdicts
    assert verdicts.startswith("# training profiled with eager attention") and "# training profiled with sdpa" in verdicts
    html = (out / "carryover.html").read_text()
    assert "Decode vs batch" in html and "Does the ordering agree?" in html and "At a glance" in html
    assert "Verdicts with training profiled with sdpa attention" in html
    # a rerun measures nothing new and re-renders the same comparison
    def measured():
        return [len([r for r in ResultsFile(out / d).records() if r.get("record") == "row"]) for d in ("bench", "decode")]

    before = measured()
    assert before == [2 * 2 * 2, 2 * 3]  # shapes x prompts x batches; shapes x sweep batches
    assert {r["repeats"] for r in ResultsFile(out / "decode").rows()} == {1}
    assert {r["repeats"] for r in ResultsFile(out / "bench").rows()} == {2}
    assert main(args) == 0
    assert measured() == before
    assert "every shape already in" in capsys.readouterr().out  # the layer profiles of the first call are kept
    assert main(["carryover", "--out", str(out), "--report-only"]) == 0
    again = pd.read_csv(out / "carryover.csv")
    assert again[again["training_attention"] == "eager"].reset_index(drop=True).equals(table)


def test_carryover_report_figures_have_titles_plotly_reads():
    from reports import carryover_report as report

    rows = [bench_row(m, batch=b, prompt=p, decode=d) for m, d in ((BASE, 5.0), ("a", 4.0))
            for b in (1, 2) for p in (128, 2048)]
    bench, layer = frames(rows, [layer_row(BASE, 100), layer_row("a", 120)])
    table = carryover.carryover_table(bench, layer, BASE)
    sweep = carryover.decode_sweep(bench)
    figures = [report.gains_figure(table, "hf", BASE),
               report.decode_figure(sweep, "hf", "decode_p50_ms", "t", "decode step p50 (ms)")]
    for fig in figures:
        assert figure_problems(fig) == []
    assert {t["name"] for t in figures[0]["data"]} >= {"train_fwdbwd_gain", "prefill_gain p=2048 b=1"}


def test_an_unknown_layer_attention_is_a_one_line_error(tmp_path, capsys):
    assert main(["carryover", "--models", "pythia-70m,pythia-160m", "--baseline", "pythia-70m",
                 "--layer-attention", "flash,fused", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layer-attention: 'fused' is not one of flash, sdpa, eager" in err[0]


def test_baseline_must_be_one_of_the_shapes(tmp_path, capsys):
    assert main(["carryover", "--models", "pythia-70m,pythia-160m", "--baseline", "pythia-410m",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--baseline: 'pythia-410m' is not one of --models" in err[0]


def test_given_layer_profiles_are_used_as_they_are(tmp_path):
    (tmp_path / "tiny-a4.yaml").write_text(TINY.format(name="tiny-a4", h=128, a=4))
    (tmp_path / "tiny-a8.yaml").write_text(TINY.format(name="tiny-a8", h=128, a=8))
    runs = []
    for mode, tflops in (("forward", (1.0, 2.0)), ("forward+backward", (3.0, 3.3))):
        path = tmp_path / f"{mode}.json"
        path.write_text(json.dumps({"configs": [
            {"name": n, "mode": mode, "status": "ok", "layer_tflops": t, "latency_us": {"median": 10, "p10": 9.9, "p90": 10.1}}
            for n, t in zip(("tiny-a4", "tiny-a8"), tflops)]}))
        runs.append(str(path))
    out = tmp_path / "out"
    assert main(["carryover", "--models", f"{tmp_path / 'tiny-a4.yaml'},{tmp_path / 'tiny-a8.yaml'}", "--baseline",
                 "tiny-a4", "--engines", "hf", "--batch", "1", "--prompt-len", "8", "--new-tokens", "3", "--repeats",
                 "1", "--warmup-s", "0", "--no-decode", "--checkpoints", str(tmp_path / "ckpt"), "--out", str(out),
                 "--layer-profile", *runs, "--no-progress"]) == 0
    assert not (out / "layer-forward").exists()  # nothing profiled here
    row = pd.read_csv(out / "carryover.csv").set_index("model").loc["tiny-a8"]
    assert row["train_fwd_gain"] == pytest.approx(1.0) and row["train_fwdbwd_gain"] == pytest.approx(0.1)


def test_a_sweep_from_a_later_call_renders_with_the_first_calls_comparison(tmp_path):
    """Two device calls (bench, then only the sweep on a fresh machine), unpacked into one folder."""
    import shutil

    (tmp_path / "tiny-a4.yaml").write_text(TINY.format(name="tiny-a4", h=128, a=4))
    models = str(tmp_path / "tiny-a4.yaml")
    common = ["--models", models, "--baseline", "tiny-a4", "--engines", "hf", "--batch", "1", "--prompt-len", "8",
              "--new-tokens", "3", "--repeats", "1", "--warmup-s", "0", "--checkpoints", str(tmp_path / "ckpt"),
              "--no-layer", "--no-progress"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["carryover", *common, "--no-decode", "--out", str(first)]) == 0
    assert main(["carryover", *common, "--no-bench", "--decode-batches", "1,2", "--decode-new-tokens", "2",
                 "--out", str(second)]) == 0
    assert not (second / "bench" / "results.jsonl").exists()  # --no-bench: only the sweep ran
    shutil.copytree(second / "decode", first / "decode")
    assert main(["carryover", "--out", str(first), "--report-only"]) == 0
    assert "Decode vs batch" in (first / "carryover.html").read_text()


def test_a_launch_bound_decode_neither_carries_nor_contradicts():
    """HF generate() and MII legacy decode a 2.7B model at 5-20x the weight+KV floor on the H100: the step is
    the host's speed. Doctored: the same gains with steps 10x their floor are 'launch-bound', left out of
    the verdict and of the ordering's agreement; at 1.25x the floor they count."""
    def table(floor):
        rows = [bench_row(m, prompt=p, ttft=t, decode=d, floor=floor) for p in (128, 2048)
                for m, t, d in ((BASE, 10, 5.0), ("fast", 8, 6.0))]  # decode reversed beyond the spread
        bench, layer = frames(rows, [layer_row(BASE, 100), layer_row("fast", 120)])
        return carryover.carryover_table(bench, layer, BASE)
    host = table(floor=0.5)
    row = host[(host["model"] == "fast") & (host["prompt_len"] == 128)].iloc[0]
    assert row["decode_class"] == "launch-bound" and row["decode_over_floor"] == pytest.approx(12.0)
    (line,) = carryover.verdicts(host, BASE)["verdict"]
    assert "(launch-bound: 12x its floor, the host's speed)" in line and line.endswith("carries over")
    decode = carryover.ordering(host).set_index("metric").loc["decode"]
    assert decode["launch_bound"].all() and decode["agrees"].isna().all()
    assert carryover.agreement_text(decode.iloc[0]).startswith("cannot tell")
    gpu = table(floor=4.0)  # 5 and 6 ms steps against a 4 ms floor: the GPU's time, a real reversal
    (line,) = carryover.verdicts(gpu, BASE)["verdict"]
    assert line.endswith("partly carries over") and "launch-bound" not in line
    assert not carryover.ordering(gpu).set_index("metric").loc["decode", "agrees"].any()


def test_a_layer_self_check_that_failed_shows_in_the_verdict():
    """The training side of a verdict stands on layer profiles whose self-checks can fail (clock phases,
    trace vs events on the H100 carry-over runs): the verdict names them for the shape and the baseline."""
    rows = [bench_row(m, prompt=p) for p in (128, 2048) for m in (BASE, "fast")]
    good = [layer_row(BASE, 100), layer_row("fast", 120)]
    bench, layer = frames(rows, good)
    (line,) = carryover.verdicts(carryover.carryover_table(bench, layer, BASE), BASE)["verdict"]
    assert "self-checks" not in line
    doctored = pd.DataFrame([{**good[0], "layer_failed_checks": "clock_phases"}, good[1]], columns=analysis.LAYER_COLUMNS)
    (line,) = carryover.verdicts(carryover.carryover_table(bench, doctored, BASE), BASE)["verdict"]
    assert line.endswith("[not ok: layer profiler self-checks failed (training fwd+bwd): base: clock_phases]")


def test_at_a_glance_one_row_per_shape_with_why_a_cell_is_empty():
    """Training under each attention and prefill per engine at the longest prompt; a shape on a different
    MII variant than the baseline gets a dagger; a missing number says why (its own row, or the baseline's)."""
    rows = [bench_row(m, prompt=2048, ttft=t) for m, t in ((BASE, 10), ("a20", 8))]
    rows += [bench_row(BASE, engine="mii", prompt=2048, status="unsupported"),
             bench_row(BASE, engine="mii-noinject", prompt=2048, ttft=9),
             bench_row("a20", engine="mii", prompt=2048, ttft=3)]
    bench = pd.DataFrame(rows)
    layer = pd.DataFrame([{**layer_row(m, v), "layer_attention": a} for a, vals in (("flash", (100, 105)), ("eager", (100, 120)))
                          for m, v in zip((BASE, "a20"), vals)], columns=analysis.LAYER_COLUMNS)
    tables = {a: carryover.carryover_table(bench, layer, BASE, a) for a in ("flash", "eager")}
    g = carryover.glance(tables, BASE).set_index("model")
    assert list(g.index) == ["a20"]
    assert g.loc["a20", "training (flash attention, fwd+bwd)"].startswith("+5.0% [")
    assert g.loc["a20", "training (eager attention, fwd+bwd)"].startswith("+20.0% [")
    assert g.loc["a20", "prefill@2048 hf b=1"].startswith("+25.0% [")
    assert g.loc["a20", "prefill@2048 mii b=1"] == "n/a: baseline unsupported"
    assert g.loc["a20", "prefill@2048 mii-auto b=1"].startswith("+200.0% [") and g.loc["a20", "prefill@2048 mii-auto b=1"].endswith(" †")


def test_launch_bound_layers_are_compared_on_their_cuda_graph_replays():
    """Small Pythia layers at b=1 on the H100: eager 513-758 us (the host's launches) vs graph 153-468 us.
    Doctored rows: when a shape is launch-bound and every shape has a graph latency, the forward is compared
    on the graphs; fwd+bwd (no graph) stays eager, labelled, and the verdict stands on the graphed forward.
    Without the launch-bound flag the same rows are compared eagerly."""
    def rows(launch):
        out = []
        for model, eager, graph in ((BASE, 560.0, 185.0), ("big", 540.0, 470.0)):
            for mode, latency in (("forward", eager), ("forward+backward", 3 * eager)):
                row = layer_row(model, 1e5 / latency, mode=mode, latency=latency)  # same FLOPs for both shapes
                row.update(layer_launch_bound=launch, layer_graph_us=graph if mode == "forward" else None,
                           layer_graph_p10_us=graph if mode == "forward" else None,
                           layer_graph_p90_us=graph if mode == "forward" else None)
                out.append(row)
        return pd.DataFrame(out, columns=analysis.LAYER_COLUMNS)
    bench = pd.DataFrame([bench_row(m, prompt=p) for p in (128, 2048) for m in (BASE, "big")])
    graphed = carryover.carryover_table(bench, rows(True), BASE).set_index("model")
    assert graphed.loc["big", "train_fwd_basis"].iloc[0] == "cuda-graph"
    assert graphed.loc["big", "train_fwdbwd_basis"].iloc[0] == "eager, launch-bound"
    assert graphed.loc["big", "train_fwd_gain"].iloc[0] == pytest.approx(185 / 470 - 1)  # the graphs' ratio
    (line,) = carryover.verdicts(graphed.reset_index(), BASE)["verdict"]
    assert "training forward -60.6% [" in line and "in CUDA graphs (fwd+bwd " in line and "the host's speed" in line
    eager = carryover.carryover_table(bench, rows(False), BASE).set_index("model")
    assert eager.loc["big", "train_fwd_basis"].iloc[0] == "eager"
    assert eager.loc["big", "train_fwd_gain"].iloc[0] == pytest.approx(560 / 540 - 1)  # the eager ratio
    (line,) = carryover.verdicts(eager.reset_index(), BASE)["verdict"]
    assert line.startswith("big vs base [hf b=1]: training +3.7% [") and "CUDA graphs" not in line

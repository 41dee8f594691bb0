"""Issue 20 items 4-5 on CPU: the carry-over from interleaved rounds. Each verdict rule on constructed rounds
(carries over, reversed, lost, cannot tell, launch-bound, the production engine kept out), the ordering's rule
(agrees only with a pair told apart on both sides), intervals of one kind (a per-round clock drift cancels),
the KV-cache plan and shared buffer, and the rounds measured for real on the engine's eager CPU path."""

import pandas as pd
import pytest
import torch

from cli.main import inference_main as main
from inference import carryover
from inference import carryover_rounds as cr
from inference.carryover_measure import RoundsSpec, parse_cells, plan_caches, share_cache

BASE = "base"
TRAIN, PREFILL, DECODE = "train_fwdbwd", "prefill b=1 p=2048", "decode b=1 p=128"
JITTER = (1.00, 1.01, 0.99, 1.02, 0.98)  # per-round noise of one shape, a few percent
CLOCK = (1.00, 1.20, 0.85, 1.10, 0.90)  # a drift of the GPU's clock: every shape of a round alike


def rounds_of(times: dict, *, clock=CLOCK, jitter: dict | None = None) -> pd.DataFrame:
    """times: (cell, model) -> unit time (ms) in round 0; training cells get layer fwd+bwd = that / 2 and
    logits = 0 (num_layers 2, so the unit is the given time). jitter: model or (cell, model) -> per-round
    factors (default JITTER)."""
    rows = []
    for (cell, model), t in times.items():
        for r, c in enumerate(clock):
            j = (jitter or {}).get((cell, model), (jitter or {}).get(model, JITTER))[r]
            if cell == TRAIN:
                rows += [{"cell": cell, "round": r, "candidate": model, "what": "layer_forward_backward",
                          "time_ms": t / 2 * c * j},
                         {"cell": cell, "round": r, "candidate": model, "what": "logits_forward_backward", "time_ms": 0.0}]
            else:
                metric = cell.split()[0]
                rows.append({"cell": cell, "round": r, "candidate": model, "what": metric, "time_ms": t * c * j * 8})
    return pd.DataFrame(rows)


def cells_of(times: dict, *, floor: float = 1.0) -> pd.DataFrame:
    rows = []
    for cell, model in times:
        metric = cell.split()[0]
        row = {"cell": cell, "metric": metric, "model": model, "status": "ok", "reason": "", "work": 1e12,
               "unit_steps": 8 if metric == "decode" else 1, "num_layers": 2, "tokens": 4096, "params": 1e9}
        if metric != "train_fwdbwd":
            b, p = cell.split()[1:]
            row.update(batch=int(b[2:]), prompt_len=int(p[2:]))
        if metric == "decode":
            row["floor_ms"] = floor
        rows.append(row)
    return pd.DataFrame(rows)


def analyse(times: dict, *, floor: float = 1.0, **kw):
    units = cr.unit_times(rounds_of(times, **kw), cells_of(times, floor=floor))
    return units, cr.cell_gains(units, cells_of(times, floor=floor), BASE)


def shape(train, prefill, decode, model="fast"):
    return {(TRAIN, BASE): 100.0, (TRAIN, model): train, (PREFILL, BASE): 50.0, (PREFILL, model): prefill,
            (DECODE, BASE): 1.2, (DECODE, model): decode}


def verdict(times: dict, **kw) -> str:
    _, gains = analyse(times, **kw)
    (line,) = cr.round_verdicts(gains, BASE)["carries_over"]
    return line


def test_units_are_the_whole_training_step_and_one_decode_step():
    times = {(TRAIN, BASE): 100.0, (DECODE, BASE): 1.2}
    units = cr.unit_times(rounds_of(times, clock=(1,) * 5), cells_of(times)).set_index(["cell", "round"])
    assert units.loc[(TRAIN, 0), "unit_ms"] == pytest.approx(100.0)  # 2 layers x 50 + logits 0
    assert units.loc[(DECODE, 0), "unit_ms"] == pytest.approx(1.2)  # one call of 8 replays / 8
    assert units.loc[(DECODE, 0), "throughput"] == pytest.approx(1e12 / 1.2e-3)


def test_a_clock_drift_shared_by_a_round_cancels_in_the_per_round_ratio():
    """Rounds 20% apart in clock, the shapes 25% apart: the interval is the shapes' own few percent."""
    _, gains = analyse(shape(80.0, 40.0, 0.96))
    fast = gains[gains["model"] == "fast"].set_index("cell")
    assert fast.loc[TRAIN, "gain"] == pytest.approx(0.25, abs=0.02)
    assert fast.loc[TRAIN, "gain_hi"] - fast.loc[TRAIN, "gain_lo"] < 0.08
    assert set(fast["class"]) == {"better"}
    # doctored: the same drift on one shape only does not cancel, and the interval says so
    _, drifted = analyse(shape(80.0, 40.0, 0.96), jitter={"fast": CLOCK})
    d = drifted[drifted["model"] == "fast"].set_index("cell")
    assert d.loc[TRAIN, "gain_hi"] - d.loc[TRAIN, "gain_lo"] > 0.2


def test_every_side_gets_the_same_kind_of_interval():
    _, gains = analyse(shape(80.0, 40.0, 0.96))
    tables = cr.shape_tables(gains, BASE)
    assert set(tables["fast"]["interval"]) == {"bootstrap, 5 rounds"}
    assert "bootstrap" in cr.INTERVAL and "interleaved rounds" in cr.INTERVAL


def test_gain_in_training_and_inference_carries_over():
    assert verdict(shape(80.0, 40.0, 0.96)) == "carries over"


def test_inference_reversing_the_training_gain_does_not_carry_over():
    assert verdict(shape(80.0, 60.0, 1.5)) == "does not carry over"


def test_a_tight_tie_that_excludes_the_training_gain_is_lost():
    times = shape(80.0, 50.0, 1.2)
    _, gains = analyse(times)
    _, outcomes = cr.shape_outcomes(gains, "fast", [PREFILL, DECODE])
    assert [o for _, _, o in outcomes] == ["lost", "lost"]
    assert verdict(times) == "does not carry over"


def test_a_wide_tie_that_holds_the_training_gain_cannot_tell():
    noisy = (1.0, 1.5, 0.7, 1.3, 0.8)  # +-40%: holds 0 and +25%
    wide = {(PREFILL, "fast"): noisy, (DECODE, "fast"): noisy}
    _, gains = analyse(shape(80.0, 50.0, 1.2), jitter=wide)
    fast = gains[gains["model"] == "fast"].set_index("cell")
    assert fast.loc[DECODE, "class"] == "no difference" and fast.loc[DECODE, "gain_hi"] > 0.25
    assert verdict(shape(80.0, 50.0, 1.2), jitter=wide).startswith("cannot tell")


def test_a_decode_step_far_above_its_floor_on_both_sides_is_not_counted():
    """Launch-bound (the host's speed): the decode gain says nothing about the shape; the verdict stands on
    prefill alone."""
    times = shape(80.0, 40.0, 2.0)  # decode reversed, but 1.2 and 2.0 ms over a 0.1 ms floor
    _, gains = analyse(times, floor=0.1)
    fast = gains[gains["model"] == "fast"].set_index("cell")
    assert fast.loc[DECODE, "class"] == carryover.LAUNCH_BOUND_CLASS
    assert verdict(times, floor=0.1) == "carries over"
    assert verdict(times, floor=1.0) == "partly carries over"  # near the floor the reversal counts


def test_a_steady_but_tiny_gain_is_no_difference_and_loses_the_training_gain():
    """Graph replays are steady enough that +0.3% is beyond its interval: below MIN_GAIN it does not count, and
    against a +25% training gain it is 'lost' (the smoke run's gpt3-2.7b-a20 decode at b=1 read 'agrees')."""
    times = shape(80.0, 40.0, 1.2 / 1.003)
    _, gains = analyse(times, jitter={(DECODE, BASE): (1,) * 5, (DECODE, "fast"): (1,) * 5})
    fast = gains[gains["model"] == "fast"].set_index("cell")
    assert fast.loc[DECODE, "gain_lo"] > 0 and fast.loc[DECODE, "class"] == "no difference"
    _, outcomes = cr.shape_outcomes(gains, "fast", [PREFILL, DECODE])
    assert [o for _, _, o in outcomes] == ["agrees", "lost"]
    assert verdict(times) == "partly carries over"


def test_a_gain_within_the_baselines_self_spread_is_no_difference():
    times = {**shape(80.0, 40.0, 1.2 / 1.04), (DECODE, BASE + " (again)"): 1.2}
    self_jitter = {(DECODE, BASE): (1,) * 5, (DECODE, "fast"): (1,) * 5,
                   (DECODE, BASE + " (again)"): (1.0, 1.06, 0.95, 1.0, 1.0)}
    units = cr.unit_times(rounds_of(times, jitter=self_jitter), cells_of(shape(80.0, 40.0, 1.0)))
    gains = cr.cell_gains(units, cells_of(shape(80.0, 40.0, 1.0)), BASE)
    fast = gains[gains["model"] == "fast"].set_index("cell")
    assert fast.loc[DECODE, "self_spread"] == pytest.approx(0.06, abs=0.005)
    assert fast.loc[DECODE, "gain"] == pytest.approx(0.04) and fast.loc[DECODE, "class"] == "no difference"
    assert set(gains["model"]) == {BASE, "fast"}  # the second timing is no shape of its own


def test_fewer_than_three_rounds_give_no_interval_and_no_class():
    times = shape(80.0, 40.0, 0.96)
    _, gains = analyse(times, clock=(1.0, 1.0))
    fast = gains[gains["model"] == "fast"].set_index("cell")
    assert fast["gain_lo"].isna().all() and set(fast["class"]) == {"no data"}
    assert verdict(times, clock=(1.0, 1.0)).startswith("cannot tell")


def test_the_production_engine_is_labelled_with_its_floor_ratio_and_kept_out_of_the_verdict():
    _, gains = analyse(shape(80.0, 40.0, 0.96))
    table = pd.DataFrame([{"engine": carryover.AUTO_ENGINE, "variant": v, "model": m, "batch": 1, "prompt_len": 128,
                           "status": "ok", "decode_p50_ms": d, "decode_over_floor": d / 1.0, "decode_gain": g,
                           "decode_gain_lo": g - 0.1, "decode_gain_hi": g + 0.1, "variant_differs": m != BASE}
                          for m, v, d, g in ((BASE, "mii-noinject", 12.0, 0.0), ("fast", "mii", 6.0, -0.5))])
    production = cr.production_rows(table)
    v = cr.round_verdicts(gains, BASE, production=production).iloc[0]
    assert v["carries_over"] == "carries over"  # MII's -50% does not enter it
    assert "mii decode b=1 p=128 step 6.00 ms = 6.0x its weight+KV floor" in v["verdict"]
    assert "engine differs" in v["verdict"]
    rows = cr.shape_tables(gains, BASE, production=production)["fast"]
    mii = rows[rows["engine"].str.startswith(carryover.AUTO_ENGINE)].iloc[0]
    assert not mii["in_verdict"] and mii["vs_training"] == "engine differs"
    assert mii["interval"].startswith("p10-p90")


def test_the_ordering_agrees_only_with_a_pair_told_apart_on_both_sides():
    times = {**shape(80.0, 40.0, 0.96), (TRAIN, "mid"): 90.0, (PREFILL, "mid"): 45.0, (DECODE, "mid"): 1.08}
    units, gains = analyse(times)
    orders = cr.round_ordering(units, gains, cells=[PREFILL]).set_index("cell")
    assert orders.loc[PREFILL, "agrees"] is True
    assert orders.loc[PREFILL, "inference_order"] == "fast > mid > base"
    # every pair tied in inference, within intervals that hold the training ratios: cannot tell, not "agrees"
    wide = {(PREFILL, "fast"): (1.0, 1.5, 0.7, 1.3, 0.8), (PREFILL, "mid"): (1.3, 0.7, 1.0, 0.8, 1.5)}
    tied = {**times, (PREFILL, "fast"): 50.0, (PREFILL, "mid"): 50.0}
    units, gains = analyse(tied, jitter=wide)
    o = cr.round_ordering(units, gains, cells=[PREFILL]).iloc[0]
    assert o["agrees"] is None and "~" in o["inference_order"]
    assert cr.ordering_text(o).startswith("cannot tell")


def test_the_ordering_disagrees_when_inference_reverses_a_pair():
    times = {**shape(80.0, 60.0, 1.5)}
    units, gains = analyse(times)
    o = cr.round_ordering(units, gains, cells=[PREFILL]).iloc[0]
    assert o["agrees"] is False and "fast > base in training, base > fast in prefill" in o["contradictions"]


def test_verdict_and_ordering_read_a_tie_alike():
    """Issue 20's contradiction: a tie whose interval excludes the training gain is 'lost' in the verdict and
    a contradiction in the ordering, never 'agrees'."""
    times = shape(80.0, 50.0, 1.2)
    units, gains = analyse(times)
    o = cr.round_ordering(units, gains, cells=[PREFILL]).iloc[0]
    assert verdict(times) == "does not carry over" and o["agrees"] is False and "tied in prefill" in o["contradictions"]


def test_default_verdict_cells_are_batch_1_short_and_16_64_long_context():
    times = {}
    for b, p in ((1, 128), (1, 2048), (16, 128), (16, 2048), (64, 2048)):
        for m, t in ((BASE, 1.0), ("fast", 0.9)):
            times[(f"decode b={b} p={p}", m)] = t
    _, gains = analyse(times)
    assert cr.verdict_cells(gains) == ["decode b=1 p=128", "decode b=16 p=2048", "decode b=64 p=2048"]
    assert cr.verdict_cells(gains, [(16, 128)]) == ["decode b=16 p=128"]


def test_caches_are_own_where_they_fit_shared_where_one_does_and_skipped_else():
    gib = 2**30
    need = {"a": 40 * gib, "b": 40 * gib, "c": 40 * gib}
    assert plan_caches(need, 200 * gib, 5 * gib)[0] == "own"
    assert plan_caches(need, 120 * gib, 5 * gib)[0] == "shared"  # two caches fit (the pool + one being built)
    mode, why = plan_caches(need, 80 * gib, 5 * gib)
    assert mode == "skip" and "nor one shared buffer" in why
    assert plan_caches(need, 120 * gib, 5 * gib, shared=False)[0] == "skip"
    assert plan_caches(need, None, 0) == ("own", "")  # a CPU: no limit


def test_a_shared_cache_is_views_of_the_pool_in_each_shapes_own_layout():
    from models.causal_lm import KVCache
    from models.config import ModelConfig

    big = ModelConfig(name="big", hidden_size=64, num_attention_heads=4, num_layers=2, vocab_size=64, seq_length=16)
    small = ModelConfig(name="small", hidden_size=64, num_attention_heads=8, num_layers=1, vocab_size=64, seq_length=16)
    pool = KVCache.allocate(big, batch=2, capacity=16, device="cpu", dtype=torch.float32)
    own = KVCache.allocate(small, batch=2, capacity=8, device="cpu", dtype=torch.float32)
    view = share_cache(own, pool)
    assert view.keys.shape == own.keys.shape and view.values.shape == own.values.shape
    assert view.keys.data_ptr() == pool.keys.data_ptr() and view.values.data_ptr() == pool.values.data_ptr()
    view.keys.fill_(3.0)
    assert pool.keys.reshape(-1)[: own.keys.numel()].eq(3.0).all()


def test_cells_parse_and_bad_ones_are_one_line_errors():
    from profiler.errors import UserError

    assert parse_cells("1x128, 16X2048", "--round-decode") == ((1, 128), (16, 2048))
    with pytest.raises(UserError, match="--round-decode: '16-2048' is not BATCHxPROMPT"):
        parse_cells("16-2048", "--round-decode")
    with pytest.raises(UserError, match="--baseline"):
        RoundsSpec(models=("pythia-70m",), baseline="pythia-160m", out="x")


TINY = """\
name: {name}
hidden_size: {h}
num_attention_heads: {a}
num_layers: 2
vocab_size: 512
max_position_embeddings: 256
seq_length: 32
micro_batch_size: 1
dtype: float32
"""


def test_rounds_run_on_the_engines_eager_cpu_path_and_the_report_renders(tmp_path):
    """The carryover command, rounds only: every shape once per round per cell in a shuffled order, the
    captured (here eager) step checked against plain torch, the verdicts, tables and page written."""
    for name, a in (("tiny-a4", 4), ("tiny-a8", 8)):
        (tmp_path / f"{name}.yaml").write_text(TINY.format(name=name, h=64, a=a))
    models = ",".join(str(tmp_path / f"{n}.yaml") for n in ("tiny-a4", "tiny-a8"))
    out = tmp_path / "out"
    assert main(["carryover", "--models", models, "--baseline", "tiny-a4", "--engines", "neox-graph", "--no-layer",
                 "--no-bench", "--no-decode", "--rounds", "3", "--round-prefill", "1x16", "--round-decode", "1x8",
                 "--round-sweep-batches", "2", "--round-sweep-contexts", "8", "--round-steps", "2", "--device", "cpu",
                 "--out", str(out), "--no-progress"]) == 0
    rounds = pd.read_csv(out / "rounds" / "rounds.csv")
    assert set(rounds["cell"]) == {TRAIN, "decode b=1 p=8", "prefill b=1 p=16", "decode b=2 p=8"}
    per_round = rounds.drop_duplicates(["cell", "round", "candidate"]).groupby(["cell", "round"])["candidate"]
    assert (per_round.nunique() == 3).all()  # each shape once per round, the baseline twice (its self-spread)
    assert "tiny-a4 (again)" in set(rounds["candidate"])
    cells = pd.read_csv(out / "rounds" / "cells.csv")
    assert cells.loc[cells["metric"] == "decode", "check_passed"].all()
    text = (out / "verdicts.txt").read_text()
    assert "tiny-a8 vs tiny-a4 [neox-graph, interleaved rounds]: training fwd+bwd " in text
    assert "## tiny-a8 against tiny-a4" in text and "bootstrap, 3 rounds" in text
    page = (out / "carryover.html").read_text()
    assert "One table per shape against the baseline" in page and "Decode vs batch and context" in page
    # a rerun measures nothing again
    assert main(["carryover", "--models", models, "--baseline", "tiny-a4", "--engines", "neox-graph", "--no-layer",
                 "--no-bench", "--no-decode", "--rounds", "3", "--round-prefill", "1x16", "--round-decode", "1x8",
                 "--round-steps", "2", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert len(pd.read_csv(out / "rounds" / "rounds.csv")) == len(rounds)


def test_inference_gains_without_a_training_gain_are_not_called_carrying_over():
    """The H200 run at 965e58f: gpt3-2.7b-a20's training and prefill tied with the baseline's while its decode
    was 2-20% faster, and the verdict read 'partly carries over'. With no training gain there is nothing to
    carry: the verdict says inference alone differs. Doctored the other way (a training gain that decode
    keeps), the same rule says 'carries over'."""
    tied_training = shape(100.0, 50.0, 1.0)  # training and prefill tied, decode 20% faster
    line = verdict(tied_training)
    assert line.startswith("nothing to carry over") and "carries over" not in line.replace("carry over", "")
    assert verdict(shape(80.0, 40.0, 1.0)) == "carries over"

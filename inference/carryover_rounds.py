"""The carry-over from interleaved rounds (issue 20, items 4-5): pure functions from the rounds table that
inference/carryover_measure.py writes to per-shape gains with intervals of one kind, verdicts and orderings.

Every measured unit is timed the advisor's way (profiler/advisor/measure.time_rounds): one phase per cell
(training forward+backward at the config's b and s; prefill at one batch and prompt; decode at one batch and
context, neox-graph replays), and inside a phase every shape once per round, in a shuffled order, so a
clock drift between rounds lands on all shapes alike. Per round a shape's throughput is its work (FLOPs, or
the bytes a decode step must read) over its unit time; its gain over the baseline is the median over rounds
of the per-round throughput ratio, and its interval a seeded percentile bootstrap of that median
(profiler/advisor/ranking.bootstrap_interval). Training, prefill and decode all get this same interval, so a
training gain and an inference gain are read alike (carryover.pair_outcome, the rule the bench verdicts use).

Unit times: training = L x layer fwd+bwd + logit layer fwd+bwd (cost_model.training_step, as the advisor
sums it); prefill = one prompt's forward; decode = one timed call of `steps` graph replays (rewound to the
state after prefill first), divided by `steps`.
"""

from __future__ import annotations

import pandas as pd

from profiler.advisor.cost_model import training_step
from profiler.advisor.ranking import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, SELF_SUFFIX, bootstrap_interval

from . import carryover

MIN_ROUNDS = 3  # a bootstrap of fewer rounds is no interval: the gain gets class "no data"
# a gain counts ("better"/"worse") only where its interval excludes 0 and it exceeds both the cell's self-spread
# (the baseline timed twice per round: the largest |ratio - 1| of the two) and MIN_GAIN: a CUDA-graph replay is
# so steady that a 0.05% difference can be "significant", and no one would choose a shape for it
MIN_GAIN = 0.01
METRIC_LABELS = {"train_fwdbwd": "training fwd+bwd", "prefill": "prefill", "decode": "decode"}
METRIC_ORDER = {"train_fwdbwd": 0, "prefill": 1, "decode": 2}
INTERVAL = (f"percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, central {BOOTSTRAP_LEVEL:.0%}) of the median "
            "over shuffled interleaved rounds of the per-round throughput ratio; a gain counts where that interval "
            f"excludes 0 and the gain exceeds the cell's self-spread and {MIN_GAIN:.0%}")
ROUND_ENGINE = "neox-graph"
# what runs each metric in the rounds: training is the layer profiler's layer, prefill the project's model eagerly
METRIC_ENGINES = {"train_fwdbwd": "models/layer.py (training)", "prefill": "neox (eager prefill)",
                  "decode": ROUND_ENGINE}
TRAIN_WHAT = ("layer_forward_backward", "logits_forward_backward")


def cell_name(metric: str, batch: int | None = None, prompt_len: int | None = None) -> str:
    """'train_fwdbwd', 'prefill b=1 p=2048', 'decode b=16 p=2048'."""
    return metric if metric == "train_fwdbwd" else f"{metric} b={int(batch)} p={int(prompt_len)}"


def cell_label(metric: str, batch, prompt_len) -> str:
    if metric == "train_fwdbwd":
        return "training fwd+bwd"
    return f"{METRIC_LABELS[metric]} b={int(batch)} p={int(prompt_len)}"


def unit_times(rounds: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Raw rounds (cell, round, candidate, what, time_ms) and the cells table (cell, model, metric, batch,
    prompt_len, status, work, unit_steps, num_layers, tokens) -> one row per (cell, round, model): unit_ms
    and throughput = work / unit time (per second). Only cells whose status is ok count."""
    columns = ["cell", "metric", "batch", "prompt_len", "round", "model", "unit_ms", "throughput"]
    if rounds.empty or cells.empty:
        return pd.DataFrame(columns=columns)
    ok = cells[cells["status"].fillna("ok") == "ok"].set_index(["cell", "model"])
    out = []
    for (cell, r, model), g in rounds.groupby(["cell", "round", "candidate"], sort=False):
        shape = model.removesuffix(SELF_SUFFIX)  # the baseline's second timing: its own cell's work
        if (cell, shape) not in ok.index:
            continue
        info = ok.loc[(cell, shape)]
        times = dict(zip(g["what"], g["time_ms"]))
        if info["metric"] == "train_fwdbwd":
            if not all(w in times for w in TRAIN_WHAT):
                continue
            unit, _ = training_step(times["layer_forward_backward"], times["logits_forward_backward"],
                                    int(info["num_layers"]), int(info["tokens"]))
        else:
            (what,) = [w for w in times if w == info["metric"]] or [None]
            if what is None:
                continue
            unit = times[what] / float(info.get("unit_steps") or 1)
        out.append({"cell": cell, "metric": info["metric"], "batch": info["batch"], "prompt_len": info["prompt_len"],
                    "round": r, "model": model, "unit_ms": unit, "throughput": float(info["work"]) / (unit * 1e-3)})
    return pd.DataFrame(out, columns=columns)


def _per_round(units: pd.DataFrame, cell: str, model: str) -> pd.Series:
    g = units[(units["cell"] == cell) & (units["model"] == model)]
    return g.set_index("round")["throughput"]


def ratio_interval(units: pd.DataFrame, cell: str, a: str, b: str, *, seed: int = 0) -> tuple[float, float, float, int]:
    """Throughput of a over b in one cell: (median of the per-round ratios, bootstrap lo, hi, rounds paired).
    NaNs where fewer than MIN_ROUNDS rounds hold both."""
    ta, tb = _per_round(units, cell, a), _per_round(units, cell, b)
    common = [r for r in ta.index if r in tb.index]
    if len(common) < MIN_ROUNDS:
        nan = float("nan")
        ratios = [ta[r] / tb[r] for r in common]
        return (pd.Series(ratios).median() if ratios else nan), nan, nan, len(common)
    ratios = [ta[r] / tb[r] for r in common]
    lo, hi = bootstrap_interval(ratios, seed=seed)
    return float(pd.Series(ratios).median()), lo, hi, len(common)


def self_spread(units: pd.DataFrame, cell: str, baseline: str) -> float:
    """The largest |ratio - 1| over rounds of the baseline against its own second timing in the same round
    (NaN without one)."""
    a, b = _per_round(units, cell, baseline), _per_round(units, cell, baseline + SELF_SUFFIX)
    common = [r for r in a.index if r in b.index]
    return max(abs(a[r] / b[r] - 1) for r in common) if common else float("nan")


def classify(gain, lo, hi, spread) -> str:
    """'better' / 'worse' where the interval excludes 0 and |gain| exceeds the self-spread and MIN_GAIN; else
    'no difference'; 'no data' without an interval."""
    if any(v is None or pd.isna(v) for v in (gain, lo, hi)):
        return "no data"
    floor = max(MIN_GAIN, 0.0 if spread is None or pd.isna(spread) else spread)
    if lo > 0 and gain > floor:
        return "better"
    if hi < 0 and -gain > floor:
        return "worse"
    return "no difference"


def direction(ratio: float, lo: float, hi: float, spread: float) -> int:
    """+1 / -1 where a pair's ratio is told apart (classify's rule), 0 where tied."""
    return {"better": 1, "worse": -1}.get(classify(ratio - 1, lo - 1, hi - 1, spread), 0)


def cell_gains(units: pd.DataFrame, cells: pd.DataFrame, baseline: str, *, seed: int = 0,
               host_multiple: float = carryover.HOST_MULTIPLE) -> pd.DataFrame:
    """One row per (cell, model): median unit time and throughput over rounds, the decode step over its
    weight + KV floor, and the gain over the baseline with its bootstrap interval and class
    (classify: beyond the interval, the self-spread and MIN_GAIN; 'launch-bound' where both decode steps sit
    host_multiple x or more over their floors, as the bench's rule; 'no data' with fewer than MIN_ROUNDS rounds)."""
    columns = ["cell", "metric", "batch", "prompt_len", "model", "is_baseline", "rounds", "unit_ms", "unit_p10_ms",
               "unit_p90_ms", "throughput", "floor_ms", "over_floor", "gain", "gain_lo", "gain_hi", "self_spread",
               "class", "status", "reason"]
    out = []
    info = cells.set_index(["cell", "model"])
    for (cell, model), c in info.iterrows():
        g = units[(units["cell"] == cell) & (units["model"] == model)]
        row = {"cell": cell, "metric": c["metric"], "batch": c.get("batch"), "prompt_len": c.get("prompt_len"),
               "model": model, "is_baseline": model == baseline, "rounds": len(g), "status": c.get("status", "ok"),
               "reason": c.get("reason", "")}
        floor = c.get("floor_ms")
        if len(g):
            t = g["unit_ms"]
            row.update(unit_ms=t.median(), unit_p10_ms=t.quantile(0.1), unit_p90_ms=t.quantile(0.9),
                       throughput=g["throughput"].median(), floor_ms=floor,
                       over_floor=t.median() / floor if floor and pd.notna(floor) else float("nan"))
        if (cell, baseline) in info.index and len(g):
            med, lo, hi, _ = ratio_interval(units, cell, model, baseline, seed=seed)
            row.update(gain=med - 1, gain_lo=lo - 1, gain_hi=hi - 1, self_spread=self_spread(units, cell, baseline))
        out.append(row)
    df = pd.DataFrame(out, columns=columns)
    df["class"] = [classify(g, a, b, s) for g, a, b, s in zip(df["gain"], df["gain_lo"], df["gain_hi"], df["self_spread"])]
    base = df[df["is_baseline"]].set_index("cell")["over_floor"]
    host = [m == "decode" and pd.notna(f) and f >= host_multiple and pd.notna(base.get(cell)) and
            base.get(cell) >= host_multiple for m, f, cell in zip(df["metric"], df["over_floor"], df["cell"])]
    df.loc[host, "class"] = carryover.LAUNCH_BOUND_CLASS
    df["_order"] = df["metric"].map(METRIC_ORDER)
    return df.sort_values(["_order", "batch", "prompt_len", "cell"], kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def verdict_cells(gains: pd.DataFrame, decode_cells: list[tuple[int, int]] | None = None) -> list[str]:
    """The inference cells a verdict stands on: every prefill cell, and the decode cells asked for (default:
    batch 1 at the shortest context, and batch 16 and 64 at the longest context that has both)."""
    inference = gains[gains["metric"] != "train_fwdbwd"].drop_duplicates("cell")
    prefill = list(inference.loc[inference["metric"] == "prefill", "cell"])
    decode = inference[inference["metric"] == "decode"]
    if decode_cells is not None:
        wanted = {cell_name("decode", b, p) for b, p in decode_cells}
        return prefill + [c for c in decode["cell"] if c in wanted]
    if decode.empty:
        return prefill
    chosen = []
    ones = decode[decode["batch"] == 1]
    if len(ones):
        chosen.append(ones.sort_values("prompt_len")["cell"].iloc[0])
    for b in (16, 64):
        at = decode[decode["batch"] == b]
        if len(at):
            chosen.append(at.sort_values("prompt_len")["cell"].iloc[-1])
    return prefill + chosen


def _pct(gain, lo, hi) -> str:
    if gain is None or pd.isna(gain):
        return "n/a"
    if pd.isna(lo) or pd.isna(hi):
        return f"{100 * gain:+.1f}% [no interval]"
    return f"{100 * gain:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def gain_text(row: pd.Series | None) -> str:
    if row is None:
        return "n/a (not measured)"
    if row.get("status", "ok") != "ok":
        return f"n/a ({row.get('status')}: {row.get('reason') or ''})".replace(": )", ")")
    text = _pct(row.get("gain"), row.get("gain_lo"), row.get("gain_hi"))
    if row.get("metric") == "decode" and pd.notna(row.get("over_floor")):
        text += f" (step {row['over_floor']:.2f}x its floor)"
    if row.get("class") == carryover.LAUNCH_BOUND_CLASS:
        text += " (launch-bound on both sides)"
    elif row.get("class") == "no difference":
        text += " (no difference)"
    return text


def shape_outcomes(gains: pd.DataFrame, model: str, cells: list[str]) -> tuple[pd.Series | None, list[tuple[str, pd.Series | None, str]]]:
    """The training row of a shape and, per verdict cell, (cell, row, pair outcome against the training gain)."""
    mine = gains[gains["model"] == model].set_index("cell")
    train = mine.loc["train_fwdbwd"] if "train_fwdbwd" in mine.index else None
    train_class = train["class"] if train is not None else "no data"
    train_gain = train["gain"] if train is not None else None
    out = []
    for cell in cells:
        row = mine.loc[cell] if cell in mine.index else None
        if row is None or row.get("status", "ok") != "ok":
            out.append((cell, row, "no data"))
            continue
        lo, hi = row["gain_lo"], row["gain_hi"]
        out.append((cell, row, carryover.pair_outcome(train_class, train_gain, row["class"],
                                                      None if pd.isna(lo) else lo, None if pd.isna(hi) else hi)))
    return train, out


def round_verdicts(gains: pd.DataFrame, baseline: str, *, cells: list[str] | None = None,
                   production: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per shape: training fwd+bwd, each verdict cell's gain with its interval and the pair outcome,
    and the verdict (carryover.carries_verdict, the bench verdicts' rule). `production`: the production engine's
    decode rows (production_rows) appended to the line, labelled with their floor ratio: they are not the
    verdict's basis."""
    columns = ["engine", "model", "verdict", "carries_over", "outcomes"]
    if gains.empty:
        return pd.DataFrame(columns=columns)
    cells = cells if cells is not None else verdict_cells(gains)
    lines = []
    for model in dict.fromkeys(gains["model"]):
        if model == baseline:
            continue
        train, outcomes = shape_outcomes(gains, model, cells)
        carries = carryover.carries_verdict([o for _, _, o in outcomes])
        parts = [f"{c} {gain_text(r)}" for c, r, _ in outcomes]
        text = f"{model} vs {baseline} [{ROUND_ENGINE}, interleaved rounds]: training fwd+bwd {gain_text(train)}; " + \
            "; ".join(parts) + f": {carries}"
        if production is not None and len(production):
            mine = production[production["model"] == model]
            if len(mine):
                text += " | production engine (not the verdict's basis): " + "; ".join(mine["text"])
        lines.append({"engine": ROUND_ENGINE, "model": model, "verdict": text, "carries_over": carries,
                      "outcomes": ", ".join(f"{c}: {o}" for c, _, o in outcomes)})
    return pd.DataFrame(lines, columns=columns)


def round_ordering(units: pd.DataFrame, gains: pd.DataFrame, *, cells: list[str] | None = None,
                   seed: int = 0) -> pd.DataFrame:
    """Per inference cell: the shapes' order by training and by that cell, and whether they agree, with
    every pair judged on its own paired bootstrap interval (the same kind on both sides): a pair is told
    apart by classify's rule (interval, self-spread, MIN_GAIN). 'agrees' only where some pair is told apart the same way on both
    sides and none the other way or lost (training apart, inference tied within an interval that excludes
    the training ratio); else None (cannot tell)."""
    columns = ["cell", "training_order", "inference_order", "agrees", "contradictions", "concordant", "shapes"]
    if gains.empty:
        return pd.DataFrame(columns=columns)
    cells = cells if cells is not None else verdict_cells(gains)
    ok = gains[gains["status"].fillna("ok") == "ok"]
    spreads = ok[ok["is_baseline"]].set_index("cell")["self_spread"].to_dict()
    out = []
    for cell in cells:
        mine = ok[ok["cell"] == cell]
        if mine["class"].eq(carryover.LAUNCH_BOUND_CLASS).any():
            continue
        models = [m for m in mine["model"] if m in set(ok.loc[ok["cell"] == "train_fwdbwd", "model"])]
        if len(models) < 2:
            continue
        pairs = {}
        for i, a in enumerate(models):
            for b in models[i + 1:]:
                pairs[(a, b)] = (ratio_interval(units, "train_fwdbwd", a, b, seed=seed),
                                 ratio_interval(units, cell, a, b, seed=seed))
        contradictions, concordant = [], []
        t_spread, i_spread = spreads.get("train_fwdbwd"), spreads.get(cell)
        for (a, b), ((tm, tlo, thi, _), (im, ilo, ihi, _)) in pairs.items():
            if pd.isna(tlo) or pd.isna(ilo):
                continue
            t_dir, i_dir = direction(tm, tlo, thi, t_spread), direction(im, ilo, ihi, i_spread)
            hi_name, lo_name = (a, b) if t_dir > 0 else (b, a)
            if t_dir and i_dir == t_dir:
                concordant.append(f"{hi_name} > {lo_name}")
            elif t_dir and i_dir == -t_dir:
                contradictions.append(f"{hi_name} > {lo_name} in training, {lo_name} > {hi_name} in {cell}")
            elif t_dir and i_dir == 0 and not (ilo <= tm <= ihi):
                contradictions.append(f"{hi_name} > {lo_name} in training, tied in {cell} (the training ratio "
                                      f"{tm if t_dir > 0 else 1 / tm:.3f} is outside its interval)")
        out.append({"cell": cell, "training_order": order_text(units, "train_fwdbwd", models, seed=seed,
                                                               spread=t_spread),
                    "inference_order": order_text(units, cell, models, seed=seed, spread=i_spread),
                    "agrees": False if contradictions else (True if concordant else None),
                    "contradictions": "; ".join(contradictions), "concordant": "; ".join(concordant),
                    "shapes": len(models)})
    df = pd.DataFrame(out, columns=columns)
    df["agrees"] = pd.Series([r["agrees"] for r in out], index=df.index, dtype=object)  # True, False or None
    return df


def order_text(units: pd.DataFrame, cell: str, models: list[str], *, seed: int = 0, spread: float | None = None) -> str:
    """Shapes best first by median throughput; '>' where the pair of neighbours is told apart (classify's rule
    on its paired ratio), '~' where not."""
    medians = {m: _per_round(units, cell, m).median() for m in models}
    ranked = sorted((m for m in models if pd.notna(medians[m])), key=lambda m: -medians[m])
    parts = []
    for i, m in enumerate(ranked):
        if i:
            med, lo, hi, _ = ratio_interval(units, cell, ranked[i - 1], m, seed=seed)
            parts.append(">" if pd.notna(lo) and direction(med, lo, hi, spread) > 0 else "~")
        parts.append(m)
    return " ".join(parts)


def ordering_text(row) -> str:
    if row["agrees"] is None or pd.isna(row["agrees"]):
        return "cannot tell: no pair of shapes is told apart on both sides beyond its interval"
    return ("agrees: " + row["concordant"]) if row["agrees"] else "disagrees: " + row["contradictions"]


def production_rows(table: pd.DataFrame, engines: tuple[str, ...] = (carryover.AUTO_ENGINE,)) -> pd.DataFrame:
    """The production engine's (MII) decode rows of the bench comparison (carryover.carryover_table), each
    with a text that labels its step with its floor ratio and its gain with the bench's p10-p90 range (an
    interval of another kind: not a verdict basis)."""
    columns = ["engine", "variant", "model", "batch", "prompt_len", "decode_p50_ms", "decode_over_floor",
               "decode_gain", "decode_gain_lo", "decode_gain_hi", "variant_differs", "status", "text"]
    if table is None or table.empty:
        return pd.DataFrame(columns=columns)
    t = table[table["engine"].isin(engines)].copy()
    if t.empty:
        return pd.DataFrame(columns=columns)
    for column in columns:
        if column not in t:
            t[column] = None
    texts = []
    for _, r in t.iterrows():
        where = f"{r['variant']} decode b={int(r['batch'])} p={int(r['prompt_len'])}"
        if r["status"] != "ok" or pd.isna(r["decode_p50_ms"]):
            texts.append(f"{where}: {r['status']}")
            continue
        over = f"{r['decode_over_floor']:.1f}x its weight+KV floor" if pd.notna(r["decode_over_floor"]) else "no floor"
        gain = "" if pd.isna(r["decode_gain"]) else \
            f", gain {100 * r['decode_gain']:+.1f}% [p10-p90 {100 * r['decode_gain_lo']:+.1f}, {100 * r['decode_gain_hi']:+.1f}]"
        differs = " (engine differs from the baseline's)" if bool(r["variant_differs"]) else ""
        texts.append(f"{where} step {r['decode_p50_ms']:.2f} ms = {over}{gain}{differs}")
    t["text"] = texts
    return t[columns].reset_index(drop=True)


def shape_tables(gains: pd.DataFrame, baseline: str, *, cells: list[str] | None = None,
                 production: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """model -> its table against the baseline: one row per measure (training fwd+bwd, each prefill and
    decode cell), the shape's and the baseline's unit time, the decode floor ratios, the gain with its
    interval, its class, its outcome against the training gain and whether the verdict stands on it; then
    the production engine's rows (their own interval kind, not in the verdict)."""
    if gains.empty:
        return {}
    cells = cells if cells is not None else verdict_cells(gains)
    base = gains[gains["is_baseline"]].set_index("cell")
    out = {}
    for model in dict.fromkeys(gains["model"]):
        if model == baseline:
            continue
        mine = gains[gains["model"] == model]
        train = mine[mine["cell"] == "train_fwdbwd"]
        _, outcomes = shape_outcomes(gains, model, list(mine["cell"]))
        outcome = {c: o for c, _, o in outcomes}
        rows = []
        for _, r in mine.iterrows():
            b = base.loc[r["cell"]] if r["cell"] in base.index else None
            rows.append({"measure": cell_label(r["metric"], r["batch"], r["prompt_len"]),
                         "engine": METRIC_ENGINES[r["metric"]],
                         "shape_ms": r["unit_ms"], "baseline_ms": b["unit_ms"] if b is not None else None,
                         "shape_over_floor": r["over_floor"], "baseline_over_floor": b["over_floor"] if b is not None else None,
                         "gain_pct": 100 * r["gain"] if pd.notna(r["gain"]) else None,
                         "interval_pct": (f"[{100 * r['gain_lo']:+.1f}, {100 * r['gain_hi']:+.1f}]"
                                          if pd.notna(r["gain_lo"]) else "none"),
                         "interval": f"bootstrap, {r['rounds']} rounds",
                         "self_spread_pct": 100 * r["self_spread"] if pd.notna(r["self_spread"]) else None,
                         "class": r["class"],
                         "vs_training": "" if r["metric"] == "train_fwdbwd" else outcome.get(r["cell"], ""),
                         "in_verdict": r["cell"] in cells or (r["metric"] == "train_fwdbwd" and len(train) > 0),
                         "status": r["status"]})
        if production is not None and len(production):
            for _, p in production[production["model"] == model].iterrows():
                rows.append({"measure": f"decode b={int(p['batch'])} p={int(p['prompt_len'])}",
                             "engine": f"{p['engine']} ({p['variant']})", "shape_ms": p["decode_p50_ms"],
                             "baseline_ms": None, "shape_over_floor": p["decode_over_floor"], "baseline_over_floor": None,
                             "gain_pct": 100 * p["decode_gain"] if pd.notna(p["decode_gain"]) else None,
                             "interval_pct": (f"[{100 * p['decode_gain_lo']:+.1f}, {100 * p['decode_gain_hi']:+.1f}]"
                                              if pd.notna(p["decode_gain_lo"]) else "none"),
                             "interval": "p10-p90 of both latencies (bench)", "class": "",
                             "vs_training": "engine differs" if bool(p["variant_differs"]) else "",
                             "in_verdict": False, "status": p["status"]})
        out[model] = pd.DataFrame(rows)
    return out


def decode_sweep(gains: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The decode cells as carryover.decode_sweep's frame (one engine per context: 'neox-graph p=P'), so the
    knee and the figures of the bench's sweep read them alike."""
    columns = ["engine", "variant", "model", "params_total", "batch", "prompt_len", "decode_p50_ms", "decode_p10_ms",
               "decode_p90_ms", "decode_floor_ms", "compute_floor_ms", "weight_bytes", "kv_bytes",
               "decode_tokens_per_s", "decode_over_floor"]
    d = gains[(gains["metric"] == "decode") & gains["unit_ms"].notna()]
    if d.empty:
        return pd.DataFrame(columns=columns)
    info = cells.set_index(["cell", "model"])
    rows = []
    for _, r in d.iterrows():
        c = info.loc[(r["cell"], r["model"])]
        rows.append({"engine": f"{ROUND_ENGINE} p={int(r['prompt_len'])}", "variant": ROUND_ENGINE, "model": r["model"],
                     "params_total": c.get("params"), "batch": int(r["batch"]), "prompt_len": int(r["prompt_len"]),
                     "decode_p50_ms": r["unit_ms"], "decode_p10_ms": r["unit_p10_ms"], "decode_p90_ms": r["unit_p90_ms"],
                     "decode_floor_ms": r["floor_ms"], "compute_floor_ms": c.get("compute_floor_ms"),
                     "weight_bytes": c.get("weight_bytes"), "kv_bytes": c.get("kv_bytes"),
                     "decode_tokens_per_s": r["batch"] / (r["unit_ms"] * 1e-3), "decode_over_floor": r["over_floor"]})
    return pd.DataFrame(rows, columns=columns).sort_values(["prompt_len", "params_total", "model", "batch"],
                                                          kind="stable").reset_index(drop=True)

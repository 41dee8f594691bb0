"""Do training-shape gains carry over to inference? Pure functions from bench rows and layer profiles to
DataFrames and one-line verdicts (issue 10); rendering is reports/carryover_report.py.

Every metric is a throughput, so that higher is better and shapes of different sizes compare per unit of
work: training = the layer profiler's TFLOP/s (forward, and forward+backward) at the training b and s;
prefill = prompt FLOPs / time to first token; decode = bytes a step must read (weights + KV cache) /
decode step latency. For shapes of one parameter count (the GPT-3 2.7B variants differ only in heads, which
changes neither FLOPs nor bytes) each gain is exactly the latency ratio baseline / shape.

Spread: each throughput gets a range from its latency's p10 and p90, and a gain's range is the ratio of
the extreme ends (shape low / baseline high .. shape high / baseline low). A gain whose range contains 0 is
"no difference": the two shapes cannot be told apart at this noise.
"""

from __future__ import annotations

import pandas as pd

MEASURED_OK = ("ok",)  # only rows whose checks passed are results
METRICS = {  # name -> (value, low, high) columns, higher is better
    "train_fwd": ("train_fwd_tflops", "train_fwd_tflops_lo", "train_fwd_tflops_hi"),
    "train_fwdbwd": ("train_fwdbwd_tflops", "train_fwdbwd_tflops_lo", "train_fwdbwd_tflops_hi"),
    "prefill": ("prefill_tflops", "prefill_tflops_lo", "prefill_tflops_hi"),
    "decode": ("decode_tbps", "decode_tbps_lo", "decode_tbps_hi"),
}
LABELS = {"train_fwd": "training forward", "train_fwdbwd": "training fwd+bwd", "prefill": "prefill", "decode": "decode"}
MODES = {"forward": "train_fwd", "forward+backward": "train_fwdbwd"}
AUTO_ENGINE = "mii-auto"  # per shape: MII with kernel injection where the kernels accept it, else without
KNEE_RISE = 0.25  # decode turns compute-bound where a step costs 25% more than at b=1 (step noise is ~5-15%)
LAUNCH_BOUND_CLASS = "launch-bound"
HOST_MULTIPLE = 3.0  # a decode step this many times its larger floor at every batch is the host's, not the GPU's
INFERENCE_GROUP = ["engine", "batch", "prompt_len"]


EAGER, GRAPH, LAUNCH_BOUND = "eager", "cuda-graph", "eager, launch-bound"


def _launch_bound(part: pd.DataFrame) -> pd.Series:
    """Per layer-profile row: did the profiler find its eager latency launch-bound (False where not said)."""
    if "layer_launch_bound" not in part:
        return pd.Series(False, index=part.index)
    return part["layer_launch_bound"].astype("boolean").fillna(False)


def training_basis(part: pd.DataFrame) -> str:
    """One timing basis for every shape of a mode, since a ratio of an eager latency to a graphed one means
    nothing. A launch-bound layer's eager latency is the host's speed, not the shape's (small layers at b=1),
    so when any shape is launch-bound and every shape has a CUDA-graph latency, the graph replays are the
    basis; with no graph latency (forward+backward) the eager figure stays, labelled launch-bound."""
    if not _launch_bound(part).any():
        return EAGER
    graph = part["layer_graph_us"] if "layer_graph_us" in part else pd.Series(dtype=float)
    return GRAPH if len(graph) == len(part) and graph.notna().all() else LAUNCH_BOUND


def training_metrics(layer: pd.DataFrame) -> pd.DataFrame:
    """Layer profiler rows (analysis.load_layer_profile) -> one row per model, a throughput and its range
    per mode, and the mode's timing basis (training_basis) with the shapes that are launch-bound. TFLOP/s
    scales as 1 / latency, so its range comes from the latency's p90 (low) and p10 (high)."""
    ok = layer[layer["layer_status"].fillna("ok").eq("ok") & layer["layer_tflops"].notna()].copy()
    out = pd.DataFrame({"model": pd.Series(dtype=object)})
    for mode, metric in MODES.items():
        part = ok[ok["mode"] == mode].drop_duplicates("model", keep="last")
        if part.empty:
            continue
        value, lo, hi = METRICS[metric]
        basis = training_basis(part)
        prefix = "layer_graph" if basis == GRAPH else "layer_latency"
        median = part[f"{prefix}_us"]
        flop_us = part["layer_tflops"] * part["layer_latency_us"]  # the layer's FLOPs, as TFLOP/s x us
        launch = _launch_bound(part)
        failed = part["layer_failed_checks"].astype(object).fillna("") if "layer_failed_checks" in part else \
            pd.Series("", index=part.index)
        part = part.assign(**{value: flop_us / median,
                              lo: flop_us / part[f"{prefix}_p90_us"].fillna(median),
                              hi: flop_us / part[f"{prefix}_p10_us"].fillna(median),
                              f"{metric}_basis": basis,
                              f"{metric}_launch_bound": ", ".join(part.loc[launch.to_numpy(), "model"]),
                              f"{metric}_failed_checks": failed})
        out = out.merge(part[["model", value, lo, hi, f"{metric}_basis", f"{metric}_launch_bound",
                              f"{metric}_failed_checks"]], on="model", how="outer")
    return out


def verdict_training_metric(bases: dict[str, str | None], available: set[str]) -> str:
    """The training metric a verdict and an ordering stand on: forward+backward, unless its only figure is
    a launch-bound eager one while the forward has a GPU-bound (graphed or eager) one."""
    if "train_fwdbwd" in available and not (bases.get("train_fwdbwd") == LAUNCH_BOUND and "train_fwd" in available
                                            and bases.get("train_fwd") in (EAGER, GRAPH)):
        return "train_fwdbwd"
    return "train_fwd" if "train_fwd" in available else "train_fwdbwd"


def row_training_metric(row: pd.Series | None) -> str:
    """verdict_training_metric for one carry-over row (its bases and the gains it has)."""
    return verdict_training_metric({m: _get(row, f"{m}_basis") for m in MODES.values()},
                                   {m for m in MODES.values() if _get(row, f"{m}_gain") is not None})


def with_auto_engine(bench: pd.DataFrame) -> pd.DataFrame:
    """Adds engine 'mii-auto': per shape, prompt and batch, the kernel-injected MII row if it passed its
    checks, else the no-injection one; what deploying that shape with MII gets you. `variant` says which."""
    bench = bench.assign(variant=bench.get("variant", bench["engine"]))
    key = ["model", "batch", "prompt_len"]
    inject = bench[(bench["engine"] == "mii") & bench["status"].isin(MEASURED_OK)]
    plain = bench[bench["engine"] == "mii-noinject"]
    plain = plain.merge(inject[key], on=key, how="left", indicator=True)
    plain = plain[plain["_merge"] == "left_only"].drop(columns="_merge")
    auto = pd.concat([inject, plain], ignore_index=True)
    if auto.empty:
        return bench
    return pd.concat([bench, auto.assign(engine=AUTO_ENGINE)], ignore_index=True)


def inference_metrics(bench: pd.DataFrame) -> pd.DataFrame:
    """Bench rows -> prefill and decode throughputs with their ranges, one row per engine x batch x
    prompt x model (every status kept, so the report can say why a shape has no number)."""
    df = bench.copy()
    for column in ("ttft_ms", "ttft_p10_ms", "ttft_p90_ms", "decode_p50_ms", "decode_p10_ms", "decode_p90_ms",
                   "prefill_flops", "weight_bytes", "kv_bytes"):
        if column not in df:
            df[column] = float("nan")
        df[column] = pd.to_numeric(df[column], errors="coerce")
    ok = df["status"].isin(MEASURED_OK)
    flops, read = df["prefill_flops"], df["weight_bytes"] + df["kv_bytes"].fillna(0)
    df["prefill_tflops"] = (flops / (df["ttft_ms"] * 1e-3) / 1e12).where(ok)
    df["prefill_tflops_lo"] = (flops / (df["ttft_p90_ms"] * 1e-3) / 1e12).where(ok)
    df["prefill_tflops_hi"] = (flops / (df["ttft_p10_ms"] * 1e-3) / 1e12).where(ok)
    df["decode_tbps"] = (read / (df["decode_p50_ms"] * 1e-3) / 1e12).where(ok)
    df["decode_tbps_lo"] = (read / (df["decode_p90_ms"] * 1e-3) / 1e12).where(ok)
    df["decode_tbps_hi"] = (read / (df["decode_p10_ms"].fillna(df["decode_p50_ms"]) * 1e-3) / 1e12).where(ok)
    df["decode_over_floor"] = step_over_floor(df).where(ok)
    df["decode_launch_bound"] = (df["decode_over_floor"] >= HOST_MULTIPLE).where(df["decode_over_floor"].notna())
    return df


def step_over_floor(df: pd.DataFrame) -> pd.Series:
    """Decode step p50 over the larger of its two floors (bandwidth, compute): how far the GPU's physical
    limit is from what the step takes; HOST_MULTIPLE or more is launch-bound."""
    floor = df[[c for c in ("decode_floor_ms", "compute_floor_ms") if c in df]].apply(pd.to_numeric, errors="coerce")
    return pd.to_numeric(df["decode_p50_ms"], errors="coerce") / floor.max(axis=1)


def classify(lo: float, hi: float) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return "no data"
    return "better" if lo > 0 else "worse" if hi < 0 else "no difference"


def add_gains(df: pd.DataFrame, metric: str, group: list[str], baseline: str) -> pd.DataFrame:
    """gain = value / the baseline's value - 1 within each group (all rows when `group` is empty), its
    range, and its class."""
    value, lo, hi = METRICS[metric]
    base = df[df["model"] == baseline].rename(columns={value: "_b", lo: "_blo", hi: "_bhi"})
    key = group or ["_all"]
    df, base = df.assign(_all=0), base.assign(_all=0)
    out = df.merge(base[key + ["_b", "_blo", "_bhi"]].drop_duplicates(key), on=key, how="left")
    out[f"{metric}_gain"] = out[value] / out["_b"] - 1
    out[f"{metric}_gain_lo"] = out[lo] / out["_bhi"] - 1
    out[f"{metric}_gain_hi"] = out[hi] / out["_blo"] - 1
    out[f"{metric}_class"] = [classify(a, b) for a, b in zip(out[f"{metric}_gain_lo"], out[f"{metric}_gain_hi"])]
    return out.drop(columns=["_b", "_blo", "_bhi", "_all"])


def layer_attentions(layer: pd.DataFrame) -> list[str]:
    """The attentions the layer profiles ran with, in the order they appear."""
    if "layer_attention" not in layer:
        return []
    return list(dict.fromkeys(layer["layer_attention"].dropna()))


def carryover_table(bench: pd.DataFrame, layer: pd.DataFrame, baseline: str, attention: str | None = None) -> pd.DataFrame:
    """One row per engine x batch x prompt length x model: training, prefill and decode throughput, each
    normalised to the baseline shape, with ranges and classes. `attention`: only the layer profiles run with
    that attention (default: the first there is); column training_attention says which."""
    attention = attention or next(iter(layer_attentions(layer)), None)
    if attention is not None and "layer_attention" in layer:
        layer = layer[layer["layer_attention"].isna() | (layer["layer_attention"] == attention)]
    inference = inference_metrics(with_auto_engine(bench))
    for metric in ("prefill", "decode"):
        inference = add_gains(inference, metric, INFERENCE_GROUP, baseline)
    training = training_metrics(layer)
    for metric in ("train_fwd", "train_fwdbwd"):
        if METRICS[metric][0] in training:
            training = add_gains(training, metric, [], baseline)
    # a decode step many times its floor in both shapes is the host's speed (Python, launches), not the
    # shape's: its gain says nothing about the shape, and the verdict does not count it
    base_host = inference[inference["model"] == baseline].drop_duplicates(INFERENCE_GROUP, keep="last")
    inference = inference.merge(base_host[INFERENCE_GROUP + ["decode_launch_bound"]].rename(
        columns={"decode_launch_bound": "_base_host"}), on=INFERENCE_GROUP, how="left")
    host = inference["decode_launch_bound"].astype("boolean").fillna(False) & \
        inference["_base_host"].astype("boolean").fillna(False) & inference["decode_gain"].notna()
    inference.loc[host.to_numpy(), "decode_class"] = LAUNCH_BOUND_CLASS
    inference = inference.drop(columns="_base_host")
    # mii-auto deploys each shape as MII can: a shape whose head size DeepSpeed's fused kernels refuse runs
    # without them, so against such a baseline the gain includes the engine, not only the shape
    base_variant = inference[inference["model"] == baseline].drop_duplicates(INFERENCE_GROUP, keep="last")
    inference = inference.merge(base_variant[INFERENCE_GROUP + ["variant"]].rename(columns={"variant": "baseline_variant"}),
                                on=INFERENCE_GROUP, how="left")
    inference["variant_differs"] = inference["baseline_variant"].notna() & (inference["variant"] != inference["baseline_variant"])
    table = inference.merge(training, on="model", how="left")
    table["is_baseline"] = table["model"] == baseline
    table["training_attention"] = attention
    return table.sort_values(["engine", "batch", "prompt_len", "params_total", "model"], kind="stable").reset_index(drop=True)


def _get(row: pd.Series | None, column: str):
    value = None if row is None else row.get(column)
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _pct(row: pd.Series | None, metric: str) -> str:
    gain = _get(row, f"{metric}_gain")
    if gain is None:
        return "n/a"
    text = f"{100 * gain:+.1f}% [{100 * _get(row, f'{metric}_gain_lo'):+.1f}, {100 * _get(row, f'{metric}_gain_hi'):+.1f}]"
    if _get(row, f"{metric}_class") == LAUNCH_BOUND_CLASS:
        return text + f" (launch-bound: {_get(row, 'decode_over_floor'):.0f}x its floor, the host's speed)"
    return text + (" (no difference)" if _get(row, f"{metric}_class") == "no difference" else "")


def _class(row: pd.Series | None, metric: str) -> str:
    return _get(row, f"{metric}_class") or "no data"


def verdicts(table: pd.DataFrame, baseline: str, *, prefill_prompt: int | None = None,
             decode_prompt: int | None = None) -> pd.DataFrame:
    """One line per engine x batch x shape: 'training +x%, prefill +y%, decode +z%' with ranges, prefill at
    the longest prompt (compute-bound) and decode at the shortest (the weights dominate), and whether the
    inference gains point the way the training (forward+backward) gain does."""
    columns = ["engine", "batch", "model", "verdict", "carries_over"]
    prompts = sorted(int(p) for p in table["prompt_len"].dropna().unique())
    if not prompts:
        return pd.DataFrame(columns=columns)
    p_prefill, p_decode = prefill_prompt or prompts[-1], decode_prompt or prompts[0]
    key = ["engine", "batch", "model"]
    pre = table[table["prompt_len"] == p_prefill].drop_duplicates(key, keep="last").set_index(key)
    dec = table[table["prompt_len"] == p_decode].drop_duplicates(key, keep="last").set_index(key)
    lines = []
    base_rows = table[table["model"] == baseline]
    base_training = base_rows.iloc[0] if len(base_rows) else None
    for idx in pre.index.union(dec.index):
        engine, batch, model = idx
        if model == baseline:
            continue
        p = pre.loc[idx] if idx in pre.index else None
        d = dec.loc[idx] if idx in dec.index else None
        src = p if p is not None else d
        train = row_training_metric(src)
        train_gain = _get(src, f"{train}_gain")
        carries = carries_verdict([pair_outcome(_class(src, train), train_gain, _class(r, m), _get(r, f"{m}_gain_lo"),
                                         _get(r, f"{m}_gain_hi")) for r, m in ((p, "prefill"), (d, "decode"))])
        mixed = next((x for x in (p, d) if x is not None and _get(x, "variant_differs")), None)
        if mixed is not None:  # never "carries over": the inference gain is partly another engine's
            carries = (f"engine differs: {_get(mixed, 'variant')} vs the baseline's {_get(mixed, 'baseline_variant')}; "
                       "the inference gain includes DeepSpeed's fused kernels, which the baseline's shape cannot use")
        not_ok = sorted({f"{_get(x, 'status')}: {_get(x, 'reason') or ''}".strip(": ") for x in (p, d)
                         if x is not None and _get(x, "status") != "ok"})
        checks = [f"{m}: {_get(r, f'{train}_failed_checks')}" for m, r in ((model, src), (baseline, base_training))
                  if _get(r, f"{train}_failed_checks")]
        if checks:
            not_ok.append(f"layer profiler self-checks failed ({LABELS[train]}): {'; '.join(checks)}")
        lines.append({"engine": engine, "batch": batch, "model": model, "carries_over": carries, "verdict": (
            f"{model} vs {baseline} [{engine} b={batch}]: {_training_text(src, train)}, prefill@{p_prefill} {_pct(p, 'prefill')}, "
            f"decode@{p_decode} {_pct(d, 'decode')}: {carries}" + (f" [not ok: {'; '.join(not_ok)}]" if not_ok else ""))})
    return pd.DataFrame(lines, columns=columns)


def _training_text(row: pd.Series | None, metric: str) -> str:
    """'training +x% [..] (forward +y% [..])', saying when a figure is CUDA-graph replays and when the eager
    one is launch-bound (the host's speed)."""
    def pct(m: str) -> str:
        return _pct(row, m) + (" in CUDA graphs" if _get(row, f"{m}_basis") == GRAPH else "")

    def host(m: str) -> str:
        return f"launch-bound: {_get(row, f'{m}_launch_bound')}, the host's speed"

    if metric == "train_fwd":
        other = _get(row, "train_fwdbwd_gain") is not None
        return f"training forward {pct('train_fwd')}" + (f" (fwd+bwd {pct('train_fwdbwd')}, {host('train_fwdbwd')})"
                                                         if other else "")
    text = f"training {pct('train_fwdbwd')} (forward {pct('train_fwd')})"
    return text + (f" [{host('train_fwdbwd')}]" if _get(row, "train_fwdbwd_basis") == LAUNCH_BOUND else "")


UNCLEAR = "cannot tell"  # an inference interval that holds both no difference and the training gain


def pair_outcome(train_class: str, train_gain, inference_class: str, lo, hi) -> str:
    """One inference metric of one pair against its training gain: 'agrees' (the same direction, both beyond
    their spread), 'reversed' (opposite directions, both beyond), 'lost' (training separates the pair;
    inference is tied within an interval that excludes the training gain: the gain is not there),
    UNCLEAR (inference is tied within an interval that also holds the training gain: this noise cannot say),
    'same' (tied on both sides), 'inference only' (training tied, inference not), or 'no data'."""
    if train_class == "no data" or inference_class in ("no data", LAUNCH_BOUND_CLASS):
        return "no data"
    if train_class == "no difference":
        return "same" if inference_class == "no difference" else "inference only"
    if inference_class == "no difference":
        holds = lo is not None and hi is not None and not pd.isna(lo) and not pd.isna(hi) and lo <= train_gain <= hi
        return UNCLEAR if holds else "lost"
    return "agrees" if inference_class == train_class else "reversed"


def carries_verdict(outcomes: list[str]) -> str:
    """The per-shape verdict from its metrics' pair outcomes, by the same rule as the ordering's agreement
    (also the interleaved rounds' verdict: inference/carryover_rounds.py)."""
    known = [o for o in outcomes if o not in ("no data", UNCLEAR)]
    if not known:
        if UNCLEAR in outcomes:
            return "cannot tell (inference cannot tell the shapes apart at this noise, nor rule out the training gain)"
        return "cannot tell (missing numbers)"
    if all(o == "same" for o in known):
        return "no difference in training or inference"
    if all(o in ("same", "inference only") for o in known):
        # training ties the pair: there is no training gain to carry, whatever inference shows
        return "nothing to carry over: training shows no difference, inference does (inference only)"
    good = [o in ("agrees", "same") for o in known]
    if all(good):
        return "carries over"
    return "partly carries over" if any(good) else "does not carry over"


def order_string(df: pd.DataFrame, value: str, lo: str, hi: str) -> str:
    """Shapes best first; '>' where the next is lower beyond the spread, '~' where their ranges overlap."""
    d = df.dropna(subset=[value]).sort_values(value, ascending=False)
    parts = []
    for i, (_, r) in enumerate(d.iterrows()):
        if i:
            prev = d.iloc[i - 1]
            parts.append(">" if prev[lo] > r[hi] else "~")
        parts.append(str(r["model"]))
    return " ".join(parts)


def significant_pairs(df: pd.DataFrame, value: str, lo: str, hi: str) -> set[tuple[str, str]]:
    """(a, b) for every pair where a is higher than b beyond both spreads."""
    rows = df.dropna(subset=[value])
    return {(a["model"], b["model"]) for _, a in rows.iterrows() for _, b in rows.iterrows()
            if a["model"] != b["model"] and a[lo] > b[hi]}


def ordering(table: pd.DataFrame, *, training: str | None = None) -> pd.DataFrame:
    """Per engine x batch x prompt and inference metric: the shapes' order by training and by inference,
    and whether they agree: no pair ordered one way by training and the other way by inference, each
    beyond its spread. `training`: the training metric (default: the verdicts' choice)."""
    out = []
    available = {m for m in MODES.values() if METRICS[m][0] in table and table[METRICS[m][0]].notna().any()}
    bases = {m: table[f"{m}_basis"].dropna().iloc[0] if f"{m}_basis" in table and table[f"{m}_basis"].notna().any()
             else None for m in MODES.values()}
    if training is None:
        training = verdict_training_metric(bases, available) if available else "train_fwdbwd"
    tv, tlo, thi = METRICS[training]
    for (engine, batch, prompt), g in table.groupby(INFERENCE_GROUP):
        for metric in ("prefill", "decode"):
            v, lo, hi = METRICS[metric]
            both = g.dropna(subset=[v, tv]) if tv in g else g.iloc[0:0]
            if len(both) < 2:
                continue
            train_pairs, inf_pairs = significant_pairs(both, tv, tlo, thi), significant_pairs(both, v, lo, hi)
            contradictions = sorted(f"{a} > {b} in training, {b} > {a} in {metric}"
                                    for a, b in train_pairs if (b, a) in inf_pairs)
            contradictions += sorted(f"{a} > {b} in training, tied in {metric} (the gain is outside its interval)"
                                     for a, b in train_pairs if lost_pair(both, a, b, (tv, tlo, thi), (v, lo, hi)))
            concordant = sorted(train_pairs & inf_pairs)
            variants = sorted(set(both["variant"].dropna())) if "variant" in both else []
            # every shape's step the host's speed: an order of noise, neither agreeing nor disagreeing
            host = metric == "decode" and "decode_launch_bound" in both and \
                bool(both["decode_launch_bound"].astype("boolean").fillna(False).all())
            out.append({"engine": engine, "batch": batch, "prompt_len": prompt, "metric": metric,
                        "training_metric": training, "training_order": order_string(both, tv, tlo, thi),
                        "inference_order": order_string(both, v, lo, hi),
                        # agrees only where a pair is told apart on both sides, the same way; else cannot tell
                        "agrees": None if host else (False if contradictions else (True if concordant else None)),
                        "contradictions": "; ".join(contradictions), "shapes": len(both),
                        "engine_variants": ", ".join(variants) if len(variants) > 1 else "", "launch_bound": host})
    return pd.DataFrame(out, columns=["engine", "batch", "prompt_len", "metric", "training_metric", "training_order",
                                      "inference_order", "agrees", "contradictions", "shapes", "engine_variants",
                                      "launch_bound"])


def lost_pair(df: pd.DataFrame, a: str, b: str, train: tuple[str, str, str], inference: tuple[str, str, str]) -> bool:
    """a > b beyond the spread in training; in inference tied, within an interval (a low / b high .. a high /
    b low) that excludes the training ratio: the training gain is measurably not there."""
    rows = df.set_index("model")
    (tv, _, _), (v, lo, hi) = train, inference
    ra, rb = rows.loc[a], rows.loc[b]
    low, high, ratio = ra[lo] / rb[hi], ra[hi] / rb[lo], ra[tv] / rb[tv]
    tied = low <= 1.0 <= high
    return bool(tied and not (low <= ratio <= high))


def agreement_text(row) -> str:
    """'agrees', 'disagrees: ...', or why it cannot tell."""
    if row["agrees"] is None or pd.isna(row["agrees"]):
        if row.get("launch_bound"):
            return "cannot tell: every shape's decode step is launch-bound (the host's speed)"
        return "cannot tell: no pair of shapes is told apart on both sides beyond its spread"
    return "agrees" if row["agrees"] else "disagrees: " + row["contradictions"]


def decode_sweep(bench: pd.DataFrame) -> pd.DataFrame:
    """Decode step latency against batch size, per engine and shape (issue 10: where decode turns
    compute-bound), with both floors and the tokens/s a step yields."""
    df = with_auto_engine(bench)
    df = df[df["status"].isin(MEASURED_OK)].copy()
    keep = ["engine", "variant", "model", "params_total", "batch", "prompt_len", "decode_p50_ms", "decode_p10_ms",
            "decode_p90_ms", "decode_floor_ms", "compute_floor_ms", "weight_bytes", "kv_bytes"]
    for column in keep:
        if column not in df:
            df[column] = float("nan")
    df = df[keep]
    df["decode_tokens_per_s"] = df["batch"] / (df["decode_p50_ms"] * 1e-3)
    return df.sort_values(["engine", "params_total", "model", "batch"], kind="stable").reset_index(drop=True)


def decode_knee(sweep: pd.DataFrame, rise: float = KNEE_RISE, host_multiple: float = HOST_MULTIPLE) -> pd.DataFrame:
    """Per engine and shape: the step latency at the smallest batch; the knee, the first batch from which
    every step costs more than (1 + rise) x that and more than the smallest batch's p90 at its own p10
    (beyond the noise of both, and sustained, so one slow step is not a knee); the first batch whose compute floor reaches its
    bandwidth floor (where the roofline says decode turns compute-bound); and how far the step sits above
    the larger floor. A step `host_multiple` x or more above both floors at every batch is launch-bound:
    the host's speed sets it, and no knee can show until a batch's compute catches up with the host."""
    out = []
    for (engine, model), g in sweep.groupby(["engine", "model"], sort=False):
        g = g.sort_values("batch")
        first = g.iloc[0]
        noise_top = first["decode_p90_ms"] if pd.notna(first["decode_p90_ms"]) else first["decode_p50_ms"]
        p10 = g["decode_p10_ms"].fillna(g["decode_p50_ms"])
        up = ((g["decode_p50_ms"] > (1 + rise) * first["decode_p50_ms"]) & (p10 > noise_top)).to_numpy()
        # sustained: this batch and every larger one cost more (one slow step between free ones is noise)
        sustained = [bool(up[i:].all()) for i in range(len(up))]
        rising = g[sustained]
        crossing = g[g["compute_floor_ms"].notna() & (g["compute_floor_ms"] >= g["decode_floor_ms"])]
        multiple = step_over_floor(g).min()
        out.append({"engine": engine, "model": model, "smallest_batch": int(first["batch"]),
                    "step_ms_at_smallest": first["decode_p50_ms"],
                    "knee_batch": int(rising.iloc[0]["batch"]) if len(rising) else None,
                    "roofline_batch": int(crossing.iloc[0]["batch"]) if len(crossing) else None,
                    "largest_batch": int(g.iloc[-1]["batch"]),
                    "step_ms_at_largest": g.iloc[-1]["decode_p50_ms"],
                    "min_step_over_floor": multiple,
                    "launch_bound": bool(pd.notna(multiple) and multiple >= host_multiple)})
    return pd.DataFrame(out, columns=["engine", "model", "smallest_batch", "step_ms_at_smallest", "knee_batch",
                                      "roofline_batch", "largest_batch", "step_ms_at_largest", "min_step_over_floor",
                                      "launch_bound"])


def glance(tables: dict, baseline: str, *, prompt: int | None = None) -> pd.DataFrame:
    """One row per shape: its training gain under each profiled attention and its prefill gain at the
    longest prompt per engine and batch, as 'gain [low, high]' text; 'n/a: why' where there is no number,
    and a trailing '†' where the shape and the baseline ran on different engine variants (mii-auto). The
    report's first table. `tables`: attention -> carryover_table, the headline attention first."""
    rows: dict[str, dict] = {}
    training_columns, prefill_columns = [], []
    for attention, table in tables.items():
        if table is None or table.empty:
            continue
        for _, r in table.drop_duplicates("model").iterrows():
            metric = row_training_metric(r)
            graphed = " in CUDA graphs" if _get(r, f"{metric}_basis") == GRAPH else ""
            column = f"training ({attention} attention, {LABELS[metric].removeprefix('training ')}{graphed})"
            training_columns += [column] if column not in training_columns else []
            rows.setdefault(r["model"], {"model": r["model"]})[column] = _pct(r, metric)
        if attention != next(iter(tables)):
            continue
        p = prompt or int(table["prompt_len"].max())
        at_p = table[table["prompt_len"] == p]
        base = at_p[at_p["model"] == baseline].set_index(["engine", "batch"])
        for _, r in at_p.iterrows():
            column = f"prefill@{p} {r['engine']} b={r['batch']}"
            prefill_columns += [column] if column not in prefill_columns else []
            if _get(r, "prefill_gain") is not None:
                cell = _pct(r, "prefill") + (" †" if _get(r, "variant_differs") else "")
            elif _get(r, "status") != "ok":
                cell = f"n/a: {_get(r, 'status')}"
            else:
                key = (r["engine"], r["batch"])
                cell = f"n/a: baseline {base.loc[key, 'status'] if key in base.index else 'not run'}"
            rows.setdefault(r["model"], {"model": r["model"]})[column] = cell
    out = pd.DataFrame([v for k, v in rows.items() if k != baseline],
                       columns=["model", *training_columns, *prefill_columns])
    return out.astype(object).fillna("")

"""The carry-over report (issue 10): per shape, training throughput (layer profiler, forward and
forward+backward) next to prefill and decode throughput, each normalised to a baseline shape, with spreads,
one-line verdicts and whether the shapes' order agrees; and decode step latency against batch size.
Loaded and analysed by inference/carryover_data.py (the analysis itself: inference/carryover.py, pure);
this module only renders what it is handed, through reports/html.py. Legend entries are the table's
column names (train_fwdbwd_gain, prefill_gain, ...) with the prompt length p and batch b."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from inference import carryover
from inference import carryover_rounds as rounds_analysis
from inference.carryover_data import TABLE_COLUMNS, CarryoverData, RoundsData, with_agreement

from .html import Answer, Section, axis, layout, render_page, table_html

ENGINE_ORDER = [carryover.AUTO_ENGINE, "hf", "mii", "mii-noinject", "mii-cudagraph"]
METRIC_COLORS = {"train_fwdbwd": "#1f77b4", "train_fwd": "#aec7e8", "prefill": "#ff7f0e", "decode": "#2ca02c"}
LINE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def engines_in(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["engine"]))
    return [e for e in ENGINE_ORDER if e in present] + [e for e in present if e not in ENGINE_ORDER]


def chart_engines(table: pd.DataFrame) -> list[str]:
    """Engines that get charts: mii and mii-noinject rows make up mii-auto, so they are charted through it
    (both stay in the tables)."""
    engines = engines_in(table)
    if carryover.AUTO_ENGINE in engines:
        engines = [e for e in engines if e not in ("mii", "mii-noinject")]
    return engines


def _error(g: pd.DataFrame, metric: str) -> dict:
    gain = g[f"{metric}_gain"]
    return {"type": "data", "symmetric": False, "array": list(100 * (g[f"{metric}_gain_hi"] - gain)),
            "arrayminus": list(100 * (gain - g[f"{metric}_gain_lo"]))}


def gains_figure(table: pd.DataFrame, engine: str, baseline: str) -> dict:
    """Gains over the baseline shape per shape: training (batch-independent) and, per prompt and batch,
    prefill and decode; bars to the ends of each gain's range."""
    t = table[table["engine"] == engine]
    models = list(t.sort_values(["params_total", "model"])["model"].drop_duplicates())
    traces = []
    first = t.drop_duplicates("model").set_index("model")
    for metric in ("train_fwdbwd", "train_fwd"):
        if f"{metric}_gain" in first and first[f"{metric}_gain"].notna().any():
            g = first.reindex(models)
            traces.append({"type": "bar", "name": f"{metric}_gain", "x": models, "y": list(100 * g[f"{metric}_gain"]),
                           "error_y": _error(g, metric), "marker": {"color": METRIC_COLORS[metric]}})
    for metric in ("prefill", "decode"):
        for (prompt, batch), g in t.groupby(["prompt_len", "batch"]):
            g = g.drop_duplicates("model", keep="last").set_index("model").reindex(models)
            traces.append({"type": "bar", "name": f"{metric}_gain p={prompt} b={batch}", "x": models,
                           "y": list(100 * g[f"{metric}_gain"]), "error_y": _error(g, metric)})
    return {"data": traces, "layout": layout(
        f"{engine}: throughput gain over {baseline} (bars to the ends of the p10-p90 range)", "shape (model)",
        "gain over the baseline shape (%)", barmode="group")}


ANSWER_ENGINES = ["hf", carryover.AUTO_ENGINE]  # one engine for every shape first: the gain is then the shape's


def _ratio_error(row: pd.Series, metric: str) -> tuple[float | None, float | None]:
    lo, hi, gain = row.get(f"{metric}_gain_lo"), row.get(f"{metric}_gain_hi"), row.get(f"{metric}_gain")
    if any(v is None or pd.isna(v) for v in (lo, hi, gain)):
        return None, None
    return float(hi - gain), float(gain - lo)


def carryover_answer(table: pd.DataFrame, verdicts: pd.DataFrame, baseline: str) -> Answer | None:
    """Per shape, the training speed-up over the baseline against its prefill (longest prompt) and decode
    (shortest prompt) speed-ups, with their p10-p90 ranges both ways, on the line of perfect carry-over;
    one engine (transformers where it ran: the same code for every shape) at the smallest batch."""
    if table.empty or not table[["prefill_gain", "decode_gain"]].notna().any().any():
        return None
    engines = [e for e in ANSWER_ENGINES if e in set(table["engine"])] + chart_engines(table)
    engine = next(e for e in engines if table.loc[table["engine"] == e, ["prefill_gain", "decode_gain"]].notna().any().any())
    t = table[table["engine"] == engine]
    batch = int(t["batch"].min())
    t = t[t["batch"] == batch]
    prompts = sorted(int(p) for p in t["prompt_len"].dropna().unique())
    p_prefill, p_decode = prompts[-1], prompts[0]
    models = [m for m in t.sort_values(["params_total", "model"])["model"].drop_duplicates() if m != baseline]
    first = t.drop_duplicates("model").set_index("model")
    train = carryover.row_training_metric(first.loc[models[0]]) if models else "train_fwdbwd"
    lows, highs = [], []
    data = []
    no_interval = []
    for metric, prompt, symbol, color in (("prefill", p_prefill, "circle", METRIC_COLORS["prefill"]),
                                          ("decode", p_decode, "diamond", METRIC_COLORS["decode"])):
        rows = t[t["prompt_len"] == prompt].drop_duplicates("model", keep="last").set_index("model")
        pts = [(m, first.loc[m], rows.loc[m]) for m in models if m in rows.index
               and pd.notna(rows.loc[m].get(f"{metric}_gain")) and pd.notna(first.loc[m].get(f"{train}_gain"))]
        if not pts:
            continue
        x = [1 + float(f[f"{train}_gain"]) for _, f, _ in pts]
        y = [1 + float(r[f"{metric}_gain"]) for _, _, r in pts]
        ex = [_ratio_error(f, train) for _, f, _ in pts]
        ey = [_ratio_error(r, metric) for _, _, r in pts]
        no_interval += [f"{m} {metric}" for (m, _, _), a, b in zip(pts, ex, ey) if a[0] is None or b[0] is None]
        data.append({"type": "scatter", "mode": "markers+text", "name": f"{metric} (p={prompt})", "x": x, "y": y,
                     "text": [m for m, _, _ in pts], "textposition": "top right", "textfont": {"size": 10},
                     "marker": {"symbol": symbol, "size": 11, "color": color},
                     "error_x": {"type": "data", "symmetric": False, "array": [a[0] or 0 for a in ex],
                                 "arrayminus": [a[1] or 0 for a in ex], "thickness": 1},
                     "error_y": {"type": "data", "symmetric": False, "array": [b[0] or 0 for b in ey],
                                 "arrayminus": [b[1] or 0 for b in ey], "thickness": 1},
                     "hovertemplate": "%{text}: training %{x:.3f}x, " + metric + " %{y:.3f}x<extra></extra>"})
        lows += [v - (b[1] or 0) for v, b in zip(y, ey)] + [v - (a[1] or 0) for v, a in zip(x, ex)]
        highs += [v + (b[0] or 0) for v, b in zip(y, ey)] + [v + (a[0] or 0) for v, a in zip(x, ex)]
    if not data:
        return None
    points = [1.0] + [v for t in data for v in t["x"] + t["y"]]
    span = max(points) - min(points) or 0.1
    clipped = max(highs) - min(lows) > 3 * span  # intervals far wider than the points (a CPU's noise): keep the points legible
    if clipped:
        lo, hi = min(points) - 0.2 * span, max(points) + 0.2 * span
    else:
        lo, hi = min(lows + [1.0]) * 0.95, max(highs + [1.0]) * 1.05
    data.insert(0, {"type": "scatter", "mode": "lines", "name": "perfect carry-over (y = x)", "x": [lo, hi],
                    "y": [lo, hi], "line": {"color": "#7f7f7f", "dash": "dash", "width": 1}, "hoverinfo": "skip"})
    data.append({"type": "scatter", "mode": "markers", "name": f"baseline {baseline} (1, 1)", "x": [1], "y": [1],
                 "marker": {"symbol": "x", "size": 10, "color": "#000"}})
    label = carryover.LABELS.get(train, train)
    fig = {"data": data, "layout": layout(
        f"Does the training speed-up carry over? {engine}, b={batch}, against {baseline}",
        axis(f"training speed-up over {baseline} ({label}, x)", range=[lo, hi]),
        axis(f"inference speed-up over {baseline} (x)", range=[lo, hi]),
        # lower right: training faster, inference slower by more than the chart shows; clear of the points
        legend={"x": 0.99, "xanchor": "right", "y": 0.01, "yanchor": "bottom", "bgcolor": "rgba(255,255,255,0.8)"})}
    mine = verdicts[(verdicts["engine"] == engine) & (verdicts["batch"] == batch)] if len(verdicts) else verdicts
    carries = mine["carries_over"].astype(str) if len(mine) else pd.Series(dtype=str)
    reading = (f"On {engine} at batch {batch}: each point is one shape, its {label} speed-up over {baseline} (x) "
               f"against its prefill speed-up at a {p_prefill}-token prompt and its decode speed-up at {p_decode} "
               f"(y); on the dashed line the gain carries over exactly, above it inference gains more. ")
    if len(mine):
        reading += "Verdicts (do the inference gains point the way the training gain does, beyond their spreads?): " + \
            "; ".join(f"{m}: {c.split(' (')[0]}" for m, c in zip(mine["model"], carries)) + ". "
    reading += "Bars: the p10-p90 ranges of both latencies" + (
        ", some far wider than the spread of the points, so they run past the chart's edges (hover for values). "
        if clipped else ". ")
    if no_interval:
        reading += f"Drawn without an interval (none in the data): {', '.join(no_interval)}. "
    others = [e for e in chart_engines(table) if e != engine]
    if others:
        reading += f"Other engines ({', '.join(others)}) and batches: the sections below."
    return Answer("Does the training-shape gain carry over, per shape?", fig, reading.strip())


def decode_figure(sweep: pd.DataFrame, engine: str, value: str, title: str, y_title: str) -> dict:
    s = sweep[sweep["engine"] == engine]
    traces = []
    for i, (model, g) in enumerate(s.groupby("model", sort=False)):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        traces.append({"type": "scatter", "mode": "lines+markers", "name": model, "x": list(g["batch"]),
                       "y": list(g[value]), "line": {"color": color}})
        if value == "decode_p50_ms":
            traces.append({"type": "scatter", "mode": "lines", "name": f"{model} decode_floor_ms",
                           "x": list(g["batch"]), "y": list(g["decode_floor_ms"]),
                           "line": {"color": color, "dash": "dot"}})
            if g["compute_floor_ms"].notna().any():
                traces.append({"type": "scatter", "mode": "lines", "name": f"{model} compute_floor_ms",
                               "x": list(g["batch"]), "y": list(g["compute_floor_ms"]),
                               "line": {"color": color, "dash": "dashdot", "width": 1}})
    return {"data": traces, "layout": layout(title, axis("batch size", type="log", dtick=0.30103),
                                             axis(y_title, type="log"))}


def _orders_table(orders: pd.DataFrame) -> str:
    shown = with_agreement(orders)
    return _table(shown, list(shown.columns))


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    shown = df[[c for c in columns if c in df.columns]]
    text = [c for c in shown.columns if shown[c].dtype == object]
    return table_html(shown.assign(**{c: shown[c].where(shown[c].notna(), "") for c in text}))


ATTENTION_WHY = {
    "flash": "as a training run would use it",
    "eager": "the attention transformers 4.38's GPT-NeoX and DeepSpeed's injected kernels run at inference "
             "(unfused: score GEMM, softmax, GEMM over values), so training and inference time the same attention",
    "sdpa": "torch's scaled_dot_product_attention",
}


def other_attention_sections(others: list[tuple[str, pd.DataFrame, pd.DataFrame]], primary: str | None) -> list[Section]:
    """Verdicts and orderings again with training profiled under another attention than the headline one."""
    sections = []
    for attention, verdicts, orders in others:
        sections.append(Section(
            f"Verdicts with training profiled with {attention} attention",
            f"The same inference numbers against the layer profiler run with {attention} attention "
            f"({ATTENTION_WHY.get(attention, '')}) instead of {primary}. Where these verdicts agree and the "
            f"{primary} ones do not, the difference is the attention kernel, not the shape.",
            notes=list(verdicts["verdict"]) or ["No shape has both training and inference numbers."],
            tables=[_orders_table(orders)] if len(orders) else []))
    return sections


def carryover_sections(table: pd.DataFrame, verdicts: pd.DataFrame, orders: pd.DataFrame, sweep: pd.DataFrame,
                       knees: pd.DataFrame, bench: pd.DataFrame, layer: pd.DataFrame, baseline: str,
                       notes: list[str], others: list[tuple[str, pd.DataFrame, pd.DataFrame]] | None = None,
                       at_a_glance: pd.DataFrame | None = None) -> list[Section]:
    sections = []
    if at_a_glance is not None and len(at_a_glance):
        # one column per shape reads better than one row per shape here (a few shapes, many measures)
        by_measure = at_a_glance.set_index("model").T.rename_axis("measure").rename_axis(columns=None).reset_index()
        sections.append(Section(
            f"At a glance: each shape against {baseline}",
            "Throughput gain over the baseline shape with its p10-p90 range: training (the layer profiler, per "
            "attention it ran with) and prefill at the longest prompt per engine and batch. '†': the shape and the "
            "baseline ran on different MII variants (fused kernels for one, none for the other), so that gain is "
            "partly the engine's. 'n/a' says why a cell has no number. Decode is in the verdicts below: in these "
            "engines it is launch-bound.", tables=[_table(by_measure, list(by_measure.columns))]))
    primary = table["training_attention"].dropna().iloc[0] if "training_attention" in table and \
        table["training_attention"].notna().any() else None
    lines = [v for _, v in verdicts.iterrows()]
    intro = (f"Each shape against the baseline <b>{baseline}</b>. Every number is a throughput (higher is better): "
             "training = the layer profiler's TFLOP/s at the training b and s (fwd+bwd, and forward alone); prefill "
             "= prompt FLOPs / time to first token, at the longest prompt (compute-bound); decode = bytes a step must "
             "read (weights + KV cache) / decode step latency, at the shortest prompt. For shapes of one parameter "
             "count (the GPT-3 2.7B variants differ only in heads) each gain is exactly baseline latency / shape "
             "latency. The range in brackets comes from the p10 and p90 of both latencies; a gain whose range holds "
             "0 is 'no difference'. mii-auto is what deploying the shape with MII gets: kernel injection where "
             "DeepSpeed's fused kernels accept the shape, else MII without injection (column variant).")
    if primary:
        intro += f" Training here: the layer profiled with {primary} attention ({ATTENTION_WHY.get(primary, '')})."
    sections.append(Section("Verdicts: do training-shape gains carry over?", intro,
                            notes=[r["verdict"] for r in lines] or ["No shape has both training and inference numbers yet."]))
    if len(orders):
        sections.append(Section(
            "Does the ordering agree?",
            "Shapes best first by training throughput and by each inference throughput ('>' where the next is lower "
            "beyond both spreads, '~' where their ranges overlap). The orderings agree when no pair of shapes is "
            "ordered one way by training and the other way by inference, each beyond its spread.",
            tables=[_orders_table(orders)]))
    sections += other_attention_sections(others or [], primary)
    for engine in chart_engines(table):
        t = table[table["engine"] == engine]
        if t[["prefill_gain", "decode_gain"]].notna().any().any():
            sections.append(Section(f"Gains by shape: {engine}", figures=[gains_figure(table, engine, baseline)]))
    sections.append(Section("The comparison, row by row", "One row per engine x batch x prompt x shape; "
                            "status other than ok means no inference number (see reason).",
                            tables=[_table(table, TABLE_COLUMNS)]))
    if len(sweep):
        figs = []
        for engine in chart_engines(sweep):
            figs.append(decode_figure(sweep, engine, "decode_p50_ms", f"{engine}: decode step latency vs batch size",
                                      "decode step p50 (ms)"))
            figs.append(decode_figure(sweep, engine, "decode_tokens_per_s", f"{engine}: decode throughput vs batch size",
                                      "decode_tokens_per_s (tokens/s)"))
        sections.append(Section(
            "Decode vs batch: where decode turns compute-bound",
            "Decode step latency for batch 1..64 at a short prompt (solid), against the bandwidth floor "
            "(decode_floor_ms: weights + KV cache / measured copy bandwidth, dotted) and the compute floor "
            "(compute_floor_ms: 2 x weights x b + attention FLOPs / measured fp16 matmul peak, dash-dot). While the "
            f"step costs about the same at every batch, rows are free (memory- or launch-bound); knee_batch is the "
            f"first batch from which every step costs more than {1 + carryover.KNEE_RISE:.2f} x the smallest "
            "batch's, beyond both spreads; launch_bound marks a shape whose step stays "
            f">= {carryover.HOST_MULTIPLE:.0f} x its larger floor at every batch (the host's speed: Python and kernel "
            "launches, not the GPU, set it, so no GPU knee can show); "
            "roofline_batch is where the compute floor reaches the bandwidth floor (cf. the paper's token-count "
            "throughput curve, its figure 004).",
            figures=figs, tables=[_table(knees, list(knees.columns)), _table(sweep, list(sweep.columns))]))
    refused = bench[bench["status"] == "unsupported"] if "status" in bench else bench.iloc[0:0]
    if len(refused):
        sections.append(Section(
            "Shapes DeepSpeed's fused kernels cannot run",
            "A finding about the shape: checked before launching, from DeepSpeed 0.19.8's kernel source "
            "(models/kernel_support.py); these shapes run through MII without kernel injection instead.",
            tables=[_table(refused.drop_duplicates(["model", "engine"]),
                           ["model", "engine", "head_dim", "rotary_dims", "reason", "kernel_support_source"])]))
    layer_table = layer[[c for c in ("model", "mode", "layer_attention", "layer_tflops", "layer_latency_us",
                                     "layer_latency_p10_us", "layer_latency_p90_us", "layer_launch_bound",
                                     "layer_graph_us", "layer_clock_mhz", "layer_failed_checks", "layer_batch",
                                     "layer_seq_len", "layer_status", "layer_run") if c in layer]]
    if "layer_graph_us" in layer_table:  # None where no graph was timed (fwd+bwd): numbers, not objects, to format
        layer_table = layer_table.assign(layer_graph_us=pd.to_numeric(layer_table["layer_graph_us"], errors="coerce"))
    positions = sorted({int(x) for x in bench.get("max_position_embeddings", pd.Series(dtype=float)).dropna()})
    sections.append(Section("Method", tables=[table_html(layer_table)] if len(layer_table) else [], notes=[
        "Training numbers: the layer profiler (one full layer, its own b and s from the config, bf16 on a GPU), "
        "`python -m profiler layer --mode forward` and `--mode forward+backward`; its latency p10/p90 give the range. "
        "Where any shape's eager latency is launch-bound (the host's speed: small layers at b=1) and every shape has a "
        "CUDA-graph latency (forward), all shapes of that mode are compared on their graph replays; a launch-bound "
        "fwd+bwd (no graph latency) is kept but labelled, and the verdict then stands on the graphed forward "
        "(columns train_*_basis, train_*_launch_bound). Failed layer self-checks are named in the verdict.",
        "Inference numbers: `python -m inference bench` rows whose logits and token checks passed (status ok); "
        "TTFT p10/p90 over repeats, decode p10/p90 over every decode step of every repeat.",
        "Where the longest prompt plus the new tokens exceeds a config's max_position_embeddings (2048 for these "
        "presets, so a 2048-token prompt), the random-weight checkpoint is built with it raised instead of the prompt "
        "shortened: rotary positions have no learned table, so no weight changes, and the prefill is exactly the "
        f"training s; max_position_embeddings of these checkpoints: {positions or '?'}.",
        *notes]))
    return sections


def rounds_answer(rounds: RoundsData, baseline: str) -> Answer | None:
    """Per shape and verdict cell: the training fwd+bwd speed-up (x) against the inference speed-up (y), both
    with their bootstrap intervals, on the line of perfect carry-over."""
    g = rounds.gains
    train = g[g["cell"] == "train_fwdbwd"].set_index("model")
    data, points = [], [1.0]
    for i, cell in enumerate(rounds.verdict_cells):
        rows = g[(g["cell"] == cell) & ~g["is_baseline"] & g["gain"].notna()]
        rows = rows[rows["model"].isin(train.index[train["gain"].notna()])]
        if rows.empty:
            continue
        t = train.loc[rows["model"]]
        x, y = list(1 + t["gain"]), list(1 + rows["gain"])
        points += x + y
        data.append({"type": "scatter", "mode": "markers+text", "name": cell, "x": x, "y": y,
                     "text": list(rows["model"]), "textposition": "top right", "textfont": {"size": 10},
                     "marker": {"size": 10, "color": LINE_COLORS[i % len(LINE_COLORS)]},
                     "error_x": {"type": "data", "symmetric": False, "array": list((t["gain_hi"] - t["gain"]).fillna(0)),
                                 "arrayminus": list((t["gain"] - t["gain_lo"]).fillna(0)), "thickness": 1},
                     "error_y": {"type": "data", "symmetric": False,
                                 "array": list((rows["gain_hi"] - rows["gain"]).fillna(0)),
                                 "arrayminus": list((rows["gain"] - rows["gain_lo"]).fillna(0)), "thickness": 1}})
    if not data:
        return None
    span = max(points) - min(points) or 0.1
    lo, hi = min(points) - 0.2 * span, max(points) + 0.2 * span
    data.insert(0, {"type": "scatter", "mode": "lines", "name": "perfect carry-over (y = x)", "x": [lo, hi],
                    "y": [lo, hi], "line": {"color": "#7f7f7f", "dash": "dash", "width": 1}, "hoverinfo": "skip"})
    fig = {"data": data, "layout": layout(
        f"Does the training speed-up carry over? interleaved rounds against {baseline}",
        axis(f"training fwd+bwd speed-up over {baseline} (x)", range=[lo, hi]),
        axis(f"inference speed-up over {baseline} (x)", range=[lo, hi]))}  # the engine is in the caption
    verdicts = "; ".join(f"{m}: {c.split(' (')[0]}" for m, c in zip(rounds.verdicts["model"], rounds.verdicts["carries_over"]))
    return Answer("Does the training-shape gain carry over, per shape?", fig,
                  f"Each point is one shape in one cell: its training speed-up over {baseline} (x) against its prefill "
                  f"or decode speed-up (y; decode on {rounds_analysis.ROUND_ENGINE}), measured in shuffled interleaved rounds; bars: the bootstrap interval of "
                  f"the median per-round ratio, the same kind on both axes. Verdicts: {verdicts}.")


def rounds_sections(rounds: RoundsData, baseline: str) -> list[Section]:
    info = rounds.info or {}
    spec = info.get("spec") or {}
    intro = (f"Each shape against <b>{baseline}</b>, every unit timed in shuffled interleaved rounds "
             f"({spec.get('rounds', '?')} per cell; profiler/advisor/measure.time_rounds): training = the whole model's "
             "fwd+bwd (L x layer + logit layer, the config's b and s and dtype); prefill = one prompt through the "
             f"project's GPT-NeoX; decode = {rounds_analysis.ROUND_ENGINE}, one CUDA-graph replay per token "
             f"({info.get('decode_unit', '')}). Throughput = FLOPs (training, prefill) or bytes a step must read "
             "(weights + KV cache, decode) per second; every interval is a " + rounds_analysis.INTERVAL + ". "
             "A gain whose interval holds 0 is 'no difference'; a decode step's 'x its floor' is step / (weights + "
             "KV cache at the measured copy bandwidth). The production engine's rows (MII) follow each line, "
             "labelled with their floor ratio: they are not the verdict's basis.")
    sections = [Section("Verdicts: do training-shape gains carry over? (interleaved rounds)", intro,
                        notes=list(rounds.verdicts["verdict"]) or ["No shape has both training and inference rounds."],
                        open=True)]
    if len(rounds.orders):
        shown = rounds.orders.assign(agreement=[rounds_analysis.ordering_text(r) for _, r in rounds.orders.iterrows()])
        sections.append(Section("Does the ordering agree? (interleaved rounds)",
                                "'>' where a pair of neighbours is told apart by its own paired interval, '~' where not; "
                                "'agrees' only where some pair is told apart the same way on both sides and none the "
                                "other way.", tables=[_table(shown, ["cell", "training_order", "inference_order",
                                                                     "agreement", "shapes"])]))
    tables = []
    for model, t in rounds.shape_tables.items():
        tables.append(f"<h4>{html.escape(model)} against {html.escape(baseline)}</h4>" + _table(t, list(t.columns)))
    if tables:
        sections.append(Section("One table per shape against the baseline", "Training fwd+bwd, prefill and decode, "
                                "each with its interval; vs_training: the cell's outcome against the training gain "
                                "(carryover.pair_outcome); in_verdict: the cells the verdict stands on.", tables=tables))
    if len(rounds.sweep):
        figs = [decode_figure(rounds.sweep, engine, "decode_p50_ms", f"{engine}: decode step vs batch size",
                              "decode step median over rounds (ms)") for engine in dict.fromkeys(rounds.sweep["engine"])]
        sections.append(Section(
            f"Decode vs batch and context: {rounds_analysis.ROUND_ENGINE}",
            "Each decode cell's median step over rounds (solid) against its weight + KV floor (dotted); one chart "
            "per context. decode_over_floor = step / floor.",
            figures=figs, tables=[_table(rounds.knees, list(rounds.knees.columns)),
                                  _table(rounds.sweep, list(rounds.sweep.columns))]))
    cells = rounds.cells
    sections.append(Section("Rounds: cells, checks and phases",
                            "Per cell and shape: the work a unit does, the floor, the KV cache (own, or one buffer "
                            "shared by the cell's shapes), and the captured step against the plain-torch step.",
                            tables=[_table(cells, list(cells.columns)),
                                    table_html(pd.DataFrame(info.get("phases") or []))]))
    return sections


def _device(env: dict) -> tuple[str, bool]:
    """What the bench ran on, and whether that was a CPU."""
    device = str(env.get("device") or "")
    cpu = device == "cpu" or (not env.get("gpu_name") and not device.startswith("cuda"))
    return (f"CPU ({env.get('cpu') or env.get('platform') or 'host'})" if cpu else
            str(env.get("gpu_name") or device)), cpu


def render_carryover_report(data: CarryoverData) -> str:
    """The whole page, from the loaded comparison (inference.carryover_data.load_carryover)."""
    device, cpu = _device(data.environment)
    sections = rounds_sections(data.rounds, data.baseline) if data.rounds is not None else []
    if len(data.bench) or data.rounds is None:
        sections += carryover_sections(data.table, data.verdicts, data.orders, data.sweep, data.knees, data.bench,
                                       data.layer, data.baseline, data.manifest.get("notes", []), data.others,
                                       data.glance)
    answer = rounds_answer(data.rounds, data.baseline) if data.rounds is not None else None
    return render_page(f"Do training-shape gains carry over to inference? (baseline {data.baseline})",
                       sections,
                       environment=data.environment, subtitle="Issue 10: the layer profiler's training throughput "
                       "against prefill and decode latency of the same shapes",
                       answer=answer or carryover_answer(data.table, data.verdicts, data.baseline), device=device,
                       on_cpu=cpu)


def write_carryover_report(data: CarryoverData, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_carryover_report(data), encoding="utf-8")
    return path

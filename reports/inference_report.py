"""The inference bench's report: Figure 13 (latency vs parameter count, off-trend points marked), MII vs
transformers, decode latency against the weight + KV-cache bandwidth floor, the logits and token checks,
the shapes DeepSpeed's fused kernels refuse, and the link to the layer profiler's training-shape
throughput. Context built from DataFrames (inference/analysis.py), then rendered by reports/html.py.
Legend entries use the table's own values (engine, p = prompt_len, b = batch)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from inference import analysis
from inference.results import ResultsFile

from .html import Answer, Section, axis, layout, render_page, table_html

ENGINE_COLORS = {"mii": "#1f77b4", "hf": "#ff7f0e", "mii-noinject": "#2ca02c", "mii-cudagraph": "#9467bd",
                 "mii-auto": "#17becf"}
BATCH_DASH = {1: "solid", 8: "dash", 16: "dash"}
SERIES = ["engine", "prompt_len", "batch", "tensor_parallel"]


def series_name(engine: str, prompt_len: int, batch: int, tp: int = 1) -> str:
    """A legend entry in the tables' own terms: engine, p=prompt_len, b=batch (tp=tensor_parallel)."""
    return f"{engine} p={prompt_len} b={batch}" + (f" tp={tp}" if tp > 1 else "")


def figure13(marked: pd.DataFrame) -> dict:
    traces = []
    for (engine, prompt, batch, tp), g in marked.groupby(SERIES):
        g = g.sort_values("params_total")
        name = series_name(engine, prompt, batch, tp)
        traces.append({"type": "scatter", "mode": "lines+markers", "name": name,
                       "x": list(g["params_total"] / 1e9), "y": list(g["e2e_ms"] / 1e3), "text": list(g["model"]),
                       "line": {"color": ENGINE_COLORS.get(engine), "dash": BATCH_DASH.get(batch, "dot")},
                       "hovertemplate": "%{text}: %{y:.3f} s<extra>" + name + "</extra>"})
    off = marked[marked["off_trend"]]
    if len(off):
        traces.append({"type": "scatter", "mode": "markers", "name": "off_trend",
                       "x": list(off["params_total"] / 1e9), "y": list(off["e2e_ms"] / 1e3), "text": list(off["model"]),
                       "marker": {"symbol": "circle-open", "size": 18, "color": "#d62728", "line": {"width": 2}},
                       "hovertemplate": "%{text} off-trend<extra></extra>"})
    unchecked = marked[marked["status"] != "ok"]
    if len(unchecked):
        traces.append({"type": "scatter", "mode": "markers", "name": "status not ok",
                       "x": list(unchecked["params_total"] / 1e9), "y": list(unchecked["e2e_ms"] / 1e3),
                       "marker": {"symbol": "x", "size": 12, "color": "#000"}, "text": list(unchecked["model"]),
                       "hovertemplate": "%{text}: not a checked result<extra></extra>"})
    params = marked.drop_duplicates("model").set_index("model")["params_total"]
    paper = [(m, s) for m, s in analysis.PAPER_FIGURE13_S.items() if m in params.index]
    if paper:
        traces.append({"type": "scatter", "mode": "lines+markers", "name": "paper Fig. 13 (MII, read off the plot)",
                       "x": [params[m] / 1e9 for m, _ in paper], "y": [s for _, s in paper],
                       "text": [m for m, _ in paper], "line": {"color": "#999", "dash": "dot"},
                       "marker": {"symbol": "diamond"}})
    return {"data": traces, "layout": layout(
        "Figure 13: end-to-end latency vs parameter count", "parameters (billions)",
        axis("end-to-end latency (s)", rangemode="tozero"))}


def _ms(value: float) -> str:
    return f"{value / 1e3:.2f} s" if value >= 1e3 else f"{value:.1f} ms"


def bench_answer(df: pd.DataFrame) -> Answer | None:
    """End-to-end latency per engine and model (p10-p90 bars) at the prompt and batch most rows share (the
    smallest batch on a tie), with a reading of which engine is fastest by how much."""
    m = analysis.measured(df)
    if m.empty:
        return None
    sizes = m.groupby(["prompt_len", "batch"]).size().reset_index(name="n")
    sizes = sizes.sort_values(["n", "batch", "prompt_len"], ascending=[False, True, True])
    prompt, batch = int(sizes["prompt_len"].iloc[0]), int(sizes["batch"].iloc[0])
    at = m[(m["prompt_len"] == prompt) & (m["batch"] == batch)]
    models = list(at.sort_values(["params_total", "model"])["model"].drop_duplicates())
    traces, per_model = [], {}
    for (engine, tp), g in at.groupby(["engine", "tensor_parallel"], sort=False):
        g = g.drop_duplicates("model", keep="last").set_index("model")
        name = engine + (f" tp={tp}" if tp > 1 else "")
        y = [g["e2e_ms"].get(x) for x in models]
        up = [(g["e2e_p90_ms"].get(x) - g["e2e_ms"].get(x)) if x in g.index else None for x in models]
        down = [(g["e2e_ms"].get(x) - g["e2e_p10_ms"].get(x)) if x in g.index else None for x in models]
        traces.append({"type": "bar", "name": name, "x": models, "y": y, "marker": {"color": ENGINE_COLORS.get(engine)},
                       "error_y": {"type": "data", "symmetric": False, "array": up, "arrayminus": down, "thickness": 1},
                       "hovertemplate": "%{x}: %{y:.1f} ms<extra>" + name + "</extra>"})
        for x in models:
            if x in g.index and pd.notna(g["e2e_ms"].get(x)):
                per_model.setdefault(x, []).append((float(g["e2e_ms"][x]), name))
    new_tokens = at["new_tokens"].dropna().iloc[0] if "new_tokens" in at and at["new_tokens"].notna().any() else None
    fig = {"data": traces, "layout": layout(
        f"End-to-end latency per engine (prompt {prompt}, batch {batch}" +
        (f", {int(new_tokens)} new tokens)" if new_tokens is not None else ")"), "model (by parameter count)",
        axis("end-to-end latency (ms, bar to p90, whisker to p10)", type="log"), barmode="group")}
    parts, alone = [], []
    wins: dict[str, int] = {}
    for x in models:
        ranked = sorted(per_model.get(x, []))
        if len(ranked) > 1:
            wins[ranked[0][1]] = wins.get(ranked[0][1], 0) + 1
            parts.append(f"{x}: {ranked[0][1]} {_ms(ranked[0][0])}, {ranked[-1][0] / ranked[0][0]:.1f}x faster than "
                         f"{ranked[-1][1]}")
        elif ranked:
            alone.append(f"{x} ({ranked[0][1]} only, {_ms(ranked[0][0])})")
    compared = sum(wins.values())
    reading = f"At a {prompt}-token prompt and batch {batch}, " + (", ".join(
        f"{engine} is fastest on {n} of the {compared} models measured on more than one engine"
        for engine, n in wins.items()) + ". " if wins else "one engine per model: nothing to compare. ")
    reading += "; ".join(parts[:5]) + (f"; {len(parts) - 5} more in the chart" if len(parts) > 5 else "") + \
        ("." if parts else "")
    if alone:
        reading += f" Measured on one engine only: {', '.join(alone)}."
    reading += " "
    unchecked = int((df["status"] != "ok").sum())
    if unchecked:
        reading += f"{unchecked} row(s) have no checked latency (status other than ok: see All rows). "
    others = len(sizes) - 1
    if others:
        reading += f"{others} other prompt/batch setting(s) follow below."
    return Answer("Latency per engine", fig, reading.strip())


def bench_device(df: pd.DataFrame, env: dict) -> tuple[str, bool]:
    """What the rows ran on, and whether it was a CPU."""
    devices = sorted({str(d) for d in df.get("device", pd.Series(dtype=object)).dropna()})
    cpu = env.get("device") == "cpu" or (bool(devices) and all(d.lower().startswith("cpu") for d in devices))
    name = ", ".join(devices) or str(env.get("gpu_name") or env.get("device") or "")
    return (name.replace("cpu", "CPU", 1) if cpu else name), cpu


def speedup_figure(speed: pd.DataFrame) -> dict:
    traces = []
    for (prompt, batch), g in speed.groupby(["prompt_len", "batch"]):
        name = f"p={prompt} b={batch}"
        traces.append({"type": "bar", "name": name, "x": list(g["model"]), "y": list(g["e2e_speedup"]),
                       "hovertemplate": "%{x}: %{y:.2f}x<extra>" + name + "</extra>"})
    return {"data": traces, "layout": layout("MII speed-up over transformers (end to end)", "model",
                                             "e2e_speedup (transformers latency / MII latency)", barmode="group")}


def floor_figure(m: pd.DataFrame) -> dict:
    models = list(m.sort_values("params_total")["model"].drop_duplicates())
    traces = []
    for (engine, prompt, batch, tp), g in m.groupby(SERIES):
        g = g.drop_duplicates("model", keep="last").set_index("model")
        traces.append({"type": "bar", "name": series_name(engine, prompt, batch, tp), "x": models,
                       "y": [g["decode_p50_ms"].get(x) for x in models],
                       "error_y": {"type": "data", "symmetric": False,
                                   "array": [g["decode_p90_ms"].get(x, 0) - g["decode_p50_ms"].get(x, 0) for x in models]}})
    floors = m.groupby(["prompt_len", "batch"])
    for (prompt, batch), g in floors:
        g = g.drop_duplicates("model", keep="last").set_index("model")
        traces.append({"type": "scatter", "mode": "markers", "name": f"decode_floor_ms p={prompt} b={batch}",
                       "x": models, "y": [g["decode_floor_ms"].get(x) for x in models],
                       "marker": {"symbol": "line-ew-open", "size": 24, "color": "#444", "line": {"width": 3}}})
    return {"data": traces, "layout": layout(
        "Decode step (p50, bar to p90) vs its weight + KV-cache bandwidth floor", "model",
        axis("decode step (ms)", type="log"), barmode="group")}


def layer_link_figure(link: pd.DataFrame) -> dict:
    traces = []
    for engine in sorted(ENGINE_COLORS):
        column = f"{engine}_decode_ms_per_b_params"
        if column in link:
            traces.append({"type": "scatter", "mode": "markers+text", "name": column,
                           "x": list(link["layer_tflops"]), "y": list(link[column]), "text": list(link["model"]),
                           "textposition": "top center", "marker": {"size": 10, "color": ENGINE_COLORS[engine]}})
    return {"data": traces, "layout": layout(
        "Training-shape throughput vs inference cost per parameter (b=1, shortest prompt)",
        "layer_tflops (layer profiler, training shape, TFLOP/s)", "decode ms per step per billion parameters")}


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    shown = df[[c for c in columns if c in df.columns]]
    text = [c for c in shown.columns if shown[c].dtype == object]
    return table_html(shown.assign(**{c: shown[c].where(shown[c].notna(), "") for c in text}))


def _lists(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per-row lists (first mismatch per batch row, ...) shown as short text."""
    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = [", ".join("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)) for v in x)
                      if isinstance(x, list) else x for x in out[c]]
    return out


def check_sections(df: pd.DataFrame) -> list[Section]:
    sections = []
    checked = df[df["engine"] != "hf"]
    if len(checked):
        sections.append(Section(
            "Checks before a latency counts: logits and generated tokens",
            "Before timing, each engine's logits at the last 16 prompt positions (largest batch) are compared with "
            "transformers' on the same checkpoint (DeepSpeed's GPT-NeoX injection has had correctness bugs: "
            "DeepSpeed issues #3103, #3639): pass when the largest difference is within 5% of the largest logit and "
            "the top-1 token agrees at 90% of positions. Then every timed row's greedy tokens are compared with "
            "transformers' at the same batch size: a row may flip to transformers' runner-up only where transformers' "
            "own logit gap between the two tokens is within 2 x the measured kernel noise (the logits check's max "
            "|diff|: two logits each off by at most that move their gap by at most twice it). Random weights make "
            "near-ties common, so a flip there is noise; a flip at a clear gap is a different computation and makes "
            "the row a mismatch. first_mismatch is the step of each batch row's first differing token (- = none); "
            "margin is transformers' top-1 minus top-2 logit there; gap is its top-1 minus its logit for the "
            "engine's token (- = outside its top 8).",
            tables=[_table(_lists(checked, ["first_mismatch", "margin_at_mismatch", "gap_at_mismatch"]), [
                "model", "engine", "prompt_len", "batch", "status", "logits_check", "logits_max_abs_diff",
                "logits_ref_max_abs", "logits_top1_agreement", "token_check", "tokens_match", "tokens_stable",
                "token_tolerance", "first_mismatch", "margin_at_mismatch", "gap_at_mismatch", "token_verdict",
                "reason"])]))
    refused = df[df["status"] == "unsupported"]
    if len(refused):
        sections.append(Section(
            "Shapes an engine cannot run",
            "Checked before any worker starts (models/kernel_support.py, derived from DeepSpeed 0.19.8's kernel "
            "sources): a shape DeepSpeed's fused kernels would assert on (and kill the process) is refused with the "
            "reason and the source line, and gets a mii-noinject row instead, so no shape is missing. That a shape "
            "cannot use the fused kernels is itself a finding about the shape.",
            tables=[_table(refused.drop_duplicates(["model", "engine"]), [
                "model", "engine", "head_dim", "rotary_dims", "hidden_size", "reason", "kernel_support_source"])]))
    return sections


def inference_sections(df: pd.DataFrame, profile: pd.DataFrame | None, runs: list[dict]) -> list[Section]:
    m = analysis.measured(df)
    sections = []
    if m.empty:
        sections.append(Section("No measurements", "No row has a latency yet: every row failed or is unavailable "
                                "(see the table below for the reasons)."))
    else:
        marked = analysis.mark_off_trend(df)
        notes = analysis.ordering(df) or ["pythia-410m and pythia-1b are not both measured: no ordering to test."]
        for _, r in marked[marked["off_trend"]].iterrows():
            notes.append(f"off-trend: {r['model']} ({series_name(r['engine'], r['prompt_len'], r['batch'], r['tensor_parallel'])}, "
                         f"{r['e2e_ms']:.0f} ms) against {r['off_trend_with']}")
        sections.append(Section(
            "Figure 13: latency against parameter count",
            "End-to-end latency of one request (prompt and generation lengths in the table) against total "
            "parameters, one line per engine, prompt length and batch size. A point is <b>off-trend</b> when a "
            "larger model is faster than a smaller one (by more than 3%); the paper's Section VII-C reads "
            "Pythia-1B's lead over Pythia-410M as the effect of its shape (h=2048, a=8, L=16 vs h=1024, a=16, L=24).",
            figures=[figure13(marked)], notes=notes,
            tables=[_table(marked, ["model", "engine", "prompt_len", "batch", "tensor_parallel", "params_total",
                                    "num_layers", "hidden_size", "num_attention_heads", "e2e_ms", "e2e_p10_ms",
                                    "e2e_p90_ms", "ttft_ms", "decode_p50_ms", "decode_p90_ms", "tokens_per_s",
                                    "status", "off_trend"])]))
        speed = analysis.speedups(df)
        if len(speed):
            sections.append(Section(
                "DeepSpeed-MII vs transformers", "e2e_speedup = transformers latency / MII latency on the same "
                "checkpoint, prompts and token counts.", figures=[speedup_figure(speed)],
                tables=[_table(speed, ["model", "prompt_len", "batch", "e2e_ms_hf", "e2e_ms_mii", "e2e_speedup",
                                       "ttft_ms_hf", "ttft_ms_mii", "ttft_speedup", "decode_p50_ms_hf",
                                       "decode_p50_ms_mii", "decode_speedup", "status"])]))
        sections.append(Section(
            "Decode latency against its physical floor",
            "decode_floor_ms = (weight_bytes + kv_bytes) / device-to-device copy bandwidth measured in the same run. "
            "weight_bytes: every weight but the input embedding, at the compute dtype, per GPU. kv_bytes: keys and "
            "values of every layer, batch row and context position, 2 x L x b x context x h x bytes / t, at the "
            "mean context of the timed decode steps (prompt + new_tokens / 2). A decode step cannot be faster than "
            "streaming both once; decode_vs_floor says how far each engine is from that.",
            figures=[floor_figure(m)],
            tables=[_table(m, ["model", "engine", "prompt_len", "batch", "tensor_parallel", "decode_p50_ms",
                               "decode_p90_ms", "decode_floor_ms", "decode_vs_floor", "weight_bytes", "kv_bytes",
                               "decode_context_mean", "bandwidth_tbps", "compute_floor_ms", "ttft_ms",
                               "peak_allocated_gb", "device_used_gb"])],
            notes=["peak_allocated_gb is torch's allocator peak; DeepSpeed's kernels cudaMalloc their workspace and "
                   "KV cache themselves, so device_used_gb (total - free after the run) is shown as well."]))
    sections += check_sections(df)
    sections.append(_layer_section(df, profile))
    sections.append(Section("All rows", "Every model x engine x prompt x batch, including the ones that failed, with "
                            "the one-line reason.", tables=[_table(df, [
                                "model", "engine", "prompt_len", "batch", "tensor_parallel", "status", "reason",
                                "fallback_for", "e2e_ms", "device", "compute_dtype", "tokens_generated",
                                "max_position_embeddings", "order_index", "warmup_runs", "git_sha"])]))
    sections.append(_method_section(df, runs))
    return sections


def _layer_section(df: pd.DataFrame, profile: pd.DataFrame | None) -> Section:
    if profile is None:
        return Section("Training shapes and inference", notes=[
            "No layer profile was given. Run `python -m profiler layer --config pythia-410m --config pythia-1b ... "
            "--out DIR`, then pass `--layer-profile DIR/run.json` to put each model's training-shape layer "
            "throughput next to its inference latency (or use `python -m inference carryover`)."])
    link = analysis.layer_link(df, profile)
    if link.empty:
        return Section("Training shapes and inference", notes=[
            "The layer profile names none of the benchmarked models (it is matched by config name)."])
    return Section(
        "Training shapes and inference",
        "Each model's layer throughput from the layer profiler (training shape: its own b and s) next to its "
        "inference latency at batch 1. If training-shape efficiency carries over to inference, models with higher "
        "layer TFLOP/s sit lower on the per-parameter decode cost axis. `python -m inference carryover` makes "
        "this comparison with spreads and verdicts.",
        figures=[layer_link_figure(link)],
        tables=[_table(link, ["model", "params_b", "layer_tflops", "layer_latency_us", "layer_gemm_share",
                              "mii_e2e_ms", "hf_e2e_ms", "mii_decode_p50_ms", "hf_decode_p50_ms",
                              "mii_decode_ms_per_b_params", "hf_decode_ms_per_b_params"])])


def _method_section(df: pd.DataFrame, runs: list[dict]) -> Section:
    methods = sorted({t for t in df.get("timing_method", pd.Series(dtype=object)).dropna()})
    spec = runs[-1].get("spec", {}) if runs else {}
    positions = sorted({int(x) for x in df.get("max_position_embeddings", pd.Series(dtype=float)).dropna()})
    return Section("Method", notes=[
        *[f"timing: {t}" for t in methods],
        f"each row: untimed generations for {spec.get('warmup_s', '?')} s (at least one), then "
        f"{spec.get('repeats', '?')} timed repeats; latencies are medians over repeats (p10/p90 alongside); decode "
        "p10/p50/p90 pool every decode step of every repeat; tokens/s = batch x new tokens / median end-to-end latency.",
        f"order: per model, transformers' reference (logits and tokens) is computed first in an untimed pass; then "
        f"the engines, and each engine's rows, run in a random order drawn from order_seed {spec.get('order_seed', '?')} "
        "(recorded in every row with its order_index), so no row is always the first one on a cold GPU.",
        "Greedy decoding with min_new_tokens = max_new_tokens: every batch row generates exactly the requested "
        "number of tokens; tokens are counted up to each row's first end-of-text (checked on every call).",
        "Checkpoints hold random fp16 weights (std 0.02) built from the configs: latency does not depend on the "
        "weights' values. A real checkpoint directory can be passed instead. A built checkpoint whose prompt + new "
        "tokens exceed the config's max_position_embeddings is built with that raised (rotary positions have no "
        f"learned table, so no weight changes); max_position_embeddings in these rows: {positions or '?'}.",
        "MII runs each model in its own process (DeepSpeed's injected layers keep process-wide state); "
        "tensor parallelism runs that process under torchrun, one rank per GPU."])


def _flat_environment(runs: list[dict]) -> dict:
    if not runs:
        return {}
    env = dict(runs[-1].get("environment", {}))
    for package, version in (env.pop("versions", None) or {}).items():
        env[package] = version
    return env


_ABSOLUTE = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)*([\w.+-]+)")


def local_paths(text, out_dir: Path):
    """A reason's absolute path (a worker's log on the machine that ran the bench) as the page can reach it:
    relative to the page where the file sits in its logs/ folder, else its bare file name."""
    if not isinstance(text, str) or "/" not in text:
        return text
    return _ABSOLUTE.sub(lambda m: f"logs/{m.group(1)}" if (out_dir / "logs" / m.group(1)).is_file() else m.group(1),
                         text)


def write_report(out_dir: str | Path, *, layer_profile: str | Path | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsFile(out_dir)
    df = analysis.results_frame(store.rows())
    damaged = store.notice()
    df.to_csv(out_dir / "results.csv", index=False)
    profile = analysis.load_layer_profile(layer_profile) if layer_profile else None
    env = _flat_environment(store.runs())
    if "reason" in df:  # the page names no path of the machine that ran or rendered it (results.csv keeps them)
        df = df.assign(reason=[local_paths(r, out_dir) for r in df["reason"]])
    sections = inference_sections(df, profile, store.runs())
    if damaged:
        sections.insert(0, Section("Damaged results file", notes=[damaged]))
    device, cpu = bench_device(df, env)
    html = render_page("Inference bench: GPT-NeoX through DeepSpeed-MII and transformers", sections, environment=env,
                       subtitle="Section VII-C / Figure 13 of 'The Case for Co-Designing Model Architectures with Hardware'",
                       answer=bench_answer(df), device=device, on_cpu=cpu)
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path

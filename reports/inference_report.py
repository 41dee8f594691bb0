"""The inference bench's report: Figure 13 (latency vs parameter count, off-trend points marked), MII vs
transformers, decode latency against the weight-bandwidth floor, the logits check, and the link to the
layer profiler's training-shape throughput. Context built from DataFrames (inference/analysis.py), then
rendered by reports/html.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from inference import analysis
from inference.results import ResultsFile

from .html import Section, render_page, table_html

ENGINE_COLORS = {"mii": "#1f77b4", "hf": "#ff7f0e"}
BATCH_DASH = {1: "solid", 8: "dash"}
LABELS = {"hf": "transformers", "mii": "DeepSpeed-MII"}


def _label(engine: str, batch: int, tp: int = 1) -> str:
    return f"{LABELS.get(engine, engine)} b={batch}" + (f" tp={tp}" if tp > 1 else "")


def figure13(marked: pd.DataFrame) -> dict:
    traces = []
    for (engine, batch, tp), g in marked.groupby(["engine", "batch", "tensor_parallel"]):
        g = g.sort_values("params_total")
        traces.append({"type": "scatter", "mode": "lines+markers", "name": _label(engine, batch, tp),
                       "x": list(g["params_total"] / 1e9), "y": list(g["e2e_ms"] / 1e3), "text": list(g["model"]),
                       "line": {"color": ENGINE_COLORS.get(engine), "dash": BATCH_DASH.get(batch, "dot")},
                       "hovertemplate": "%{text}: %{y:.3f} s<extra>" + _label(engine, batch, tp) + "</extra>"})
    off = marked[marked["off_trend"]]
    if len(off):
        traces.append({"type": "scatter", "mode": "markers", "name": "off-trend (a larger model is faster)",
                       "x": list(off["params_total"] / 1e9), "y": list(off["e2e_ms"] / 1e3), "text": list(off["model"]),
                       "marker": {"symbol": "circle-open", "size": 18, "color": "#d62728", "line": {"width": 2}},
                       "hovertemplate": "%{text} off-trend<extra></extra>"})
    unchecked = marked[marked["status"] != "ok"]
    if len(unchecked):
        traces.append({"type": "scatter", "mode": "markers", "name": "logits check not passed",
                       "x": list(unchecked["params_total"] / 1e9), "y": list(unchecked["e2e_ms"] / 1e3),
                       "marker": {"symbol": "x", "size": 12, "color": "#000"}, "text": list(unchecked["model"]),
                       "hovertemplate": "%{text}: not a checked result<extra></extra>"})
    paper = [(m, s) for m, s in analysis.PAPER_FIGURE13_S.items()]
    params = marked.drop_duplicates("model").set_index("model")["params_total"]
    paper = [(m, s) for m, s in paper if m in params.index]
    if paper:
        traces.append({"type": "scatter", "mode": "lines+markers", "name": "paper Fig. 13 (MII, read off the plot)",
                       "x": [params[m] / 1e9 for m, _ in paper], "y": [s for _, s in paper],
                       "text": [m for m, _ in paper], "line": {"color": "#999", "dash": "dot"},
                       "marker": {"symbol": "diamond"}})
    return {"data": traces, "layout": {
        "title": "Figure 13: end-to-end latency vs parameter count", "xaxis": {"title": "parameters (B)"},
        "yaxis": {"title": "end-to-end latency (s)", "rangemode": "tozero"}, "legend": {"orientation": "h", "y": -0.2}}}


def speedup_figure(speed: pd.DataFrame) -> dict:
    traces = [{"type": "bar", "name": f"b={batch}", "x": list(g["model"]), "y": list(g["e2e_speedup"]),
               "hovertemplate": "%{x}: %{y:.2f}x<extra>b=" + str(batch) + "</extra>"}
              for batch, g in speed.groupby("batch")]
    return {"data": traces, "layout": {"title": "MII speed-up over transformers (end to end)", "barmode": "group",
                                       "yaxis": {"title": "transformers latency / MII latency"}}}


def floor_figure(m: pd.DataFrame) -> dict:
    models = list(m.sort_values("params_total")["model"].drop_duplicates())
    floor = m.drop_duplicates("model").set_index("model")["decode_floor_ms"]
    traces = [{"type": "bar", "name": "weight-bandwidth floor", "x": models,
               "y": [floor.get(x) for x in models], "marker": {"color": "#7f7f7f"}}]
    for (engine, batch, tp), g in m.groupby(["engine", "batch", "tensor_parallel"]):
        g = g.set_index("model")
        traces.append({"type": "bar", "name": _label(engine, batch, tp), "x": models,
                       "y": [g["decode_p50_ms"].get(x) for x in models],
                       "error_y": {"type": "data", "symmetric": False,
                                   "array": [g["decode_p90_ms"].get(x, 0) - g["decode_p50_ms"].get(x, 0) for x in models]}})
    return {"data": traces, "layout": {"title": "Decode step (p50, bar to p90) vs its weight-bandwidth floor",
                                       "barmode": "group", "yaxis": {"title": "ms per decode step", "type": "log"}}}


def layer_link_figure(link: pd.DataFrame) -> dict:
    traces = []
    for engine in ("mii", "hf"):
        column = f"{engine}_decode_ms_per_b_params"
        if column in link:
            traces.append({"type": "scatter", "mode": "markers+text", "name": LABELS[engine],
                           "x": list(link["layer_tflops"]), "y": list(link[column]), "text": list(link["model"]),
                           "textposition": "top center", "marker": {"size": 10, "color": ENGINE_COLORS[engine]}})
    return {"data": traces, "layout": {
        "title": "Training-shape throughput vs inference cost per parameter (b=1)",
        "xaxis": {"title": "layer TFLOP/s (layer profiler, training shape)"},
        "yaxis": {"title": "decode ms per step per B parameters"}}}


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    return table_html(df[[c for c in columns if c in df.columns]])


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
            notes.append(f"off-trend: {r['model']} ({_label(r['engine'], r['batch'], r['tensor_parallel'])}, "
                         f"{r['e2e_ms']:.0f} ms) against {r['off_trend_with']}")
        sections.append(Section(
            "Figure 13: latency against parameter count",
            "End-to-end latency of one request (prompt and generation lengths in the table) against total "
            "parameters, one line per engine and batch size. A point is <b>off-trend</b> when a larger model is "
            "faster than a smaller one (by more than 3%); the paper's Section VII-C reads Pythia-1B's lead over "
            "Pythia-410M as the effect of its shape (h=2048, a=8, L=16 vs h=1024, a=16, L=24).",
            figures=[figure13(marked)], notes=notes,
            tables=[_table(marked, ["model", "engine", "batch", "tensor_parallel", "params_total", "num_layers",
                                    "hidden_size", "num_attention_heads", "e2e_ms", "e2e_p10_ms", "e2e_p90_ms",
                                    "ttft_ms", "decode_p50_ms", "decode_p90_ms", "tokens_per_s", "status",
                                    "off_trend"])]))
        speed = analysis.speedups(df)
        if len(speed):
            sections.append(Section(
                "DeepSpeed-MII vs transformers", "Speed-up = transformers latency / MII latency on the same "
                "checkpoint, prompts and token counts.", figures=[speedup_figure(speed)],
                tables=[_table(speed, ["model", "batch", "e2e_ms_hf", "e2e_ms_mii", "e2e_speedup", "ttft_ms_hf",
                                       "ttft_ms_mii", "ttft_speedup", "decode_p50_ms_hf", "decode_p50_ms_mii",
                                       "decode_speedup", "status"])]))
        sections.append(Section(
            "Decode latency against its physical floor",
            "Floor = bytes of weights read per decode step (all weights but the input embedding, at the compute "
            "dtype, per GPU) / device-to-device copy bandwidth measured in the same run. A decode step cannot be "
            "faster than streaming the weights once; the ratio says how far each engine is from that.",
            figures=[floor_figure(m)],
            tables=[_table(m, ["model", "engine", "batch", "tensor_parallel", "decode_p50_ms", "decode_p90_ms",
                               "decode_floor_ms", "decode_vs_floor", "weight_bytes", "bandwidth_tbps", "ttft_ms",
                               "peak_allocated_gb", "device_used_gb"])],
            notes=["peak_allocated_gb is torch's allocator peak; DeepSpeed's kernels cudaMalloc their workspace and "
                   "KV cache themselves, so device_used_gb (total - free after the run) is shown as well."]))
    checked = df[df["engine"] != "hf"]
    if len(checked):
        sections.append(Section(
            "Logits check before timing",
            "Before any engine is timed, its logits on the benchmark prompts are compared with transformers' on "
            "the same checkpoint (DeepSpeed's GPT-NeoX injection has had correctness bugs: DeepSpeed issues "
            "#3103, #3639). A row passes when the largest difference is within 5% of the largest logit and the "
            "top-1 token agrees at 90% of positions; otherwise its latency is shown but flagged, not a result.",
            tables=[_table(checked, ["model", "engine", "batch", "status", "logits_check", "logits_check_method",
                                     "logits_max_abs_diff", "logits_mean_abs_diff", "logits_ref_max_abs",
                                     "logits_top1_agreement", "logits_first_token_agreement", "reason"])]))
    if profile is None:
        sections.append(Section("Training shapes and inference", notes=[
            "No layer profile was given. Run `python -m profiler layer --config pythia-410m --config pythia-1b ... "
            "--out DIR`, then pass `--layer-profile DIR/run.json` to put each model's training-shape layer "
            "throughput next to its inference latency."]))
    else:
        link = analysis.layer_link(df, profile)
        if link.empty:
            sections.append(Section("Training shapes and inference", notes=[
                "The layer profile names none of the benchmarked models (it is matched by config name)."]))
        else:
            sections.append(Section(
                "Training shapes and inference",
                "Each model's layer throughput from the layer profiler (training shape: its own b and s) next to "
                "its inference latency at batch 1. If training-shape efficiency carries over to inference, models "
                "with higher layer TFLOP/s sit lower on the per-parameter decode cost axis.",
                figures=[layer_link_figure(link)],
                tables=[_table(link, ["model", "params_b", "layer_tflops", "layer_latency_us", "layer_gemm_share",
                                      "mii_e2e_ms", "hf_e2e_ms", "mii_decode_p50_ms", "hf_decode_p50_ms",
                                      "mii_decode_ms_per_b_params", "hf_decode_ms_per_b_params"])]))
    sections.append(Section("All rows", "Every model x engine x batch, including the ones that failed, with the "
                            "one-line reason.", tables=[_table(df, ["model", "engine", "batch", "tensor_parallel",
                                                                    "status", "reason", "e2e_ms", "device",
                                                                    "compute_dtype", "tokens_generated"])]))
    methods = sorted({t for t in df.get("timing_method", pd.Series(dtype=object)).dropna()})
    spec = runs[-1].get("spec", {}) if runs else {}
    sections.append(Section("Method", notes=[
        *[f"timing: {t}" for t in methods],
        f"warm-up {spec.get('warmup', '?')} generation(s) and {spec.get('repeats', '?')} timed repeats per row; "
        "latencies are medians over repeats (p10/p90 alongside); decode p50/p90 pool every decode step of every "
        "repeat; tokens/s = batch x new tokens / median end-to-end latency.",
        "Greedy decoding with min_new_tokens = max_new_tokens: every batch row generates exactly the requested "
        "number of tokens (checked on every call).",
        "Checkpoints hold random fp16 weights (std 0.02) built from the configs: latency does not depend on the "
        "weights' values. A real checkpoint directory can be passed instead.",
        "MII runs each model in its own process (DeepSpeed's injected layers keep process-wide state); "
        "tensor parallelism runs that process under torchrun, one rank per GPU."]))
    return sections


def _flat_environment(runs: list[dict]) -> dict:
    if not runs:
        return {}
    env = dict(runs[-1].get("environment", {}))
    for package, version in (env.pop("versions", None) or {}).items():
        env[package] = version
    return env


def write_report(out_dir: str | Path, *, layer_profile: str | Path | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsFile(out_dir)
    rows = store.rows()
    df = analysis.results_frame(rows) if rows else analysis.results_frame([])
    df.to_csv(out_dir / "results.csv", index=False)
    profile = analysis.load_layer_profile(layer_profile) if layer_profile else None
    env = _flat_environment(store.runs())
    html = render_page("Inference bench: Pythia through DeepSpeed-MII and transformers",
                       inference_sections(df, profile, store.runs()), environment=env,
                       subtitle="Section VII-C / Figure 13 of 'The Case for Co-Designing Model Architectures with Hardware'")
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path

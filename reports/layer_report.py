"""The layer profiler's HTML report: paper Figures 1, 2 and 11 for the profiled configs, side by side.

`layer_report_sections` is pure (run.json dict + components DataFrame -> sections); `write_layer_report`
renders and writes the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .html import COLORS, Section, render_page, table_html

GEMMS = ("qkv_transform", "attention_score", "attention_over_values", "out_projection", "mlp_up", "mlp_gate",
         "mlp_down", "logits")
GEMM_LABELS = {"qkv_transform": "QKV", "attention_score": "Score", "attention_over_values": "AOV",
               "out_projection": "Linproj", "mlp_up": "MLP h→4h", "mlp_gate": "MLP gate", "mlp_down": "MLP 4h→h",
               "logits": "Logits"}
# the paper's Figure 2 categories
FIGURE2 = {"GEMMs": GEMMS, "Flash": ("flash_attention",), "Softmax": ("softmax",), "Dropout": ("dropout",),
           "Norm": ("norm",), "Other": ("rotary", "activation", "residual_bias", "other", "unattributed")}
FIGURE2_COLORS = {"GEMMs": COLORS["gemm"], "Flash": COLORS["flash_attention"], "Softmax": COLORS["softmax"],
                  "Dropout": COLORS["dropout"], "Norm": COLORS["norm"], "Other": COLORS["other"]}


def _bar_label(config: str, passname: str, passes: set) -> str:
    return config if len(passes) == 1 else f"{config} ({'fwd' if passname == 'forward' else 'bwd'})"


def _shares(components: pd.DataFrame) -> pd.DataFrame:
    df = components.copy()
    df["pass_share"] = df["time_us"] / df.groupby(["config", "pass"])["time_us"].transform("sum")
    return df


def _stacked_shares(components: pd.DataFrame, series: list[tuple[str, tuple, str]], title: str,
                    text_digits: int, text_min: float) -> dict:
    """One stacked bar per config (and pass): each series' share of that bar's kernel time."""
    df = _shares(components)
    passes = set(df["pass"])
    groups = list(dict.fromkeys(zip(df["config"], df["pass"])))
    labels = [_bar_label(c, p, passes) for c, p in groups]
    data = []
    for label, members, color in series:
        ys = [100 * df[(df["config"] == c) & (df["pass"] == p) & df["component"].isin(members)]["pass_share"].sum()
              for c, p in groups]
        if any(ys):
            data.append({"type": "bar", "name": label, "x": labels, "y": ys, "marker": {"color": color},
                         "text": [f"{y:.{text_digits}f}%" if y >= text_min else "" for y in ys], "textposition": "inside",
                         "hovertemplate": f"{label}: %{{y:.1f}}%<extra>%{{x}}</extra>"})
    return {"data": data, "layout": {"barmode": "stack", "title": {"text": title},
                                     "yaxis": {"title": {"text": "% of kernel time"}, "range": [0, 100]}}}


def figure2(components: pd.DataFrame) -> dict:
    series = [(category, members, FIGURE2_COLORS[category]) for category, members in FIGURE2.items()]
    return _stacked_shares(components, series, "Share of layer latency (paper Figure 2)", text_digits=1, text_min=3)


def figure11(components: pd.DataFrame) -> dict:
    non_gemm = tuple(c for c in components["component"].unique() if c not in GEMMS and c != "flash_attention")
    series = [(GEMM_LABELS[g], (g,), COLORS[g]) for g in GEMMS] + [
        ("Flash", ("flash_attention",), COLORS["flash_attention"]), ("Non-GEMM", non_gemm, COLORS["non_gemm"])]
    return _stacked_shares(components, series, "Per-GEMM share of latency (paper Figure 11)", text_digits=0, text_min=4)


def gemm_throughput_figure(components: pd.DataFrame, peak: float | None) -> dict:
    df = components[components["kind"] == "gemm"]
    data = []
    for config, group in df.groupby("config", sort=False):
        for passname, part in group.groupby("pass", sort=False):
            name = config if df["pass"].nunique() == 1 else f"{config} ({passname})"
            data.append({"type": "bar", "name": name, "x": [GEMM_LABELS.get(c, c) for c in part["component"]],
                         "y": part["tflops"].round(1).tolist(),
                         "customdata": part["time_us"].round(1).tolist(),
                         "hovertemplate": "%{x}: %{y:.0f} TFLOP/s in %{customdata} us<extra>" + name + "</extra>"})
    layout = {"barmode": "group", "title": {"text": "GEMM throughput inside the layer"},
              "yaxis": {"title": {"text": "TFLOP/s"}}}
    if peak:
        layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": peak, "y1": peak,
                             "line": {"dash": "dash", "color": "#d62728"}}]
        layout["annotations"] = [{"xref": "paper", "x": 1, "y": peak, "text": f"measured peak {peak:.0f}",
                                  "showarrow": False, "yanchor": "bottom", "xanchor": "right"}]
    return {"data": data, "layout": layout}


def throughput_figure(entries: list[dict]) -> dict:
    ok = [e for e in entries if e.get("status") == "ok"]
    return {"data": [{"type": "bar", "x": [e["name"] for e in ok], "y": [round(e["layer_tflops"], 1) for e in ok],
                      "text": [f"{e['layer_tflops']:.0f}" for e in ok], "textposition": "outside",
                      "marker": {"color": COLORS["gemm"]},
                      "customdata": [round(e["latency_us"]["median"], 1) for e in ok],
                      "hovertemplate": "%{x}: %{y} TFLOP/s, %{customdata} us<extra></extra>"}],
            "layout": {"title": {"text": "Single-layer throughput (paper Figure 1)"},
                       "yaxis": {"title": {"text": "TFLOP/s (model FLOPs / measured latency)"}}}}


def latency_table(entries: list[dict]) -> pd.DataFrame:
    rows = []
    for e in entries:
        if e.get("status") != "ok":
            rows.append({"config": e["name"], "status": e.get("status"), "error": e.get("error", "")})
            continue
        c = e["config"]
        rows.append({
            "config": e["name"], "mode": e["mode"], "b": c["micro_batch_size"], "s": c["seq_length"],
            "h": c["hidden_size"], "a": c["num_attention_heads"], "t": c["tensor_parallel"],
            "attention": c["attention"], "dtype": c["dtype"],
            "latency_us": e["latency_us"]["median"], "p10_us": e["latency_us"]["p10"], "p90_us": e["latency_us"]["p90"],
            "repeats": e["latency_us"]["repeats"],
            "graph_us": (e.get("latency_graph_us") or {}).get("median"),
            "profiled_us": e["latency_profiled_us"], "busy_us": e.get("busy_us"),
            "profiler_overhead_pct": e["profiler_overhead_pct"], "coverage_pct": 100 * e["coverage"],
            "gemm_share_pct": 100 * e["gemm_share"], "layer_tflops": e["layer_tflops"],
            "pct_of_peak": e.get("layer_pct_of_peak"), "floor_us": e.get("floor_us"), "x_floor": e.get("floor_ratio"),
            "flops_check": "match" if e["flops_check"]["all_match"] else "MISMATCH",
            "shape_checks": f"{sum(c['ok'] for c in e['shape_checks'])}/{len(e['shape_checks'])} ok",
        })
    return pd.DataFrame(rows)


def layer_report_sections(run: dict, components: pd.DataFrame) -> list[Section]:
    entries = run.get("configs", [])
    env = run.get("environment", {})
    peak = env.get("measured_peak_tflops")
    sections = [Section(
        "Summary",
        intro=("Each config is one transformer layer (random weights) built from its config. <b>Latency</b> is measured "
               "with CUDA events without the profiler (median over repeats, L2 flushed before each); <b>graph_us</b>: the "
               "forward replayed from a CUDA graph (no launch overhead); <b>busy_us</b>: summed kernel time of a traced "
               "step; the breakdown comes "
               "from a torch.profiler trace in which every kernel is linked to the layer step that launched it through "
               "the profiler's correlation ids. <b>Floor</b>: the layer's GEMMs and fused attention run alone "
               "(their kernel time in a trace of each alone, at the layer's duty cycle), back to back; <b>x_floor</b> = latency / floor. <b>Coverage</b>: attributed kernel time / all kernel time."),
        tables=[table_html(latency_table(entries))])]
    if not components.empty:
        sections.append(Section("Where the time goes", figures=[figure2(components), figure11(components)]))
        sections.append(Section("Throughput", figures=[throughput_figure(entries), gemm_throughput_figure(components, peak)],
                                intro="Layer TFLOP/s counts the model FLOPs of Table II (24bsh² + 4bs²h for a "
                                      "GPT-NeoX layer with f=4h) over the measured latency; GEMM TFLOP/s divides each "
                                      "GEMM's FLOPs by its kernel time inside the layer." +
                                      (f" The dashed line is this GPU's measured peak ({peak:.0f} TFLOP/s)." if peak else "")))
        cols = [c for c in ("config", "pass", "component", "kind", "time_us", "p10_us", "p90_us", "share", "flops", "tflops",
                            "pct_of_peak", "alone_us", "vs_alone_pct", "kernels_per_step") if c in components]
        table = components[cols].copy()
        table["share"] = 100 * table["share"]
        table = table.rename(columns={"share": "share_pct"})
        sections.append(Section("Components", tables=[table_html(table)],
                                intro="time_us: median over profiled steps; p10/p90 its spread. alone_us: the same "
                                      "GEMM (or attention) timed alone with the same shapes; vs_alone_pct is the "
                                      "in-layer time relative to it."))
    for e in entries:
        findings = e.get("sizing_findings") or []
        checks = e.get("shape_checks") or []
        if e.get("status") != "ok":
            continue
        notes = [f"[{f['paper']}] {f['message']}" for f in findings] or ["No sizing rule of the paper is violated."]
        shape_df = pd.DataFrame(checks)
        flops_df = pd.DataFrame(e["flops_check"]["rows"])
        sections.append(Section(f"{e['name']}: sizing rules and checks", notes=notes,
                                intro=f"{e['config'].get('description') or ''} Trace: <code>{e.get('trace', '')}</code>",
                                tables=[table_html(shape_df), table_html(flops_df, float_format="{:,.0f}")]))
    return sections


def write_layer_report(run: dict, components: pd.DataFrame, path: Path) -> Path:
    env = run.get("environment", {})
    device = env.get("gpu_name") or f"CPU ({env.get('cpu', '')})"
    html = render_page("Transformer layer profile", layer_report_sections(run, components), environment=env,
                       subtitle=f"{', '.join(e['name'] for e in run.get('configs', []))} on {device}, "
                            f"torch {env.get('torch')}, CUDA {env.get('cuda')}")
    path.write_text(html)
    return path

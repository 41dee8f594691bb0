"""The layer profiler's HTML report: paper Figures 1, 2 and 11 for the profiled configs, side by side.

`layer_report_sections` is pure (run.json dict + components DataFrame -> sections); `write_layer_report`
renders and writes the file. Component names in legends are the components table's own names.
"""

from __future__ import annotations

import html as _html
from pathlib import Path

import pandas as pd

from .depth_sections import depth_sections
from .html import COLORS, Answer, Section, axis, layout, render_page, table_html

GEMMS = ("qkv_transform", "attention_score", "attention_over_values", "out_projection", "mlp_up", "mlp_gate",
         "mlp_down", "logits")
FUSED = ("flash_attention", "sdpa_attention")
IDLE = "idle / launch gaps"
# the paper's Figure 2 categories; unattributed and idle time are segments of their own, never folded away
FIGURE2 = {"GEMMs": GEMMS, "fused attention": FUSED, "softmax": ("softmax",), "dropout": ("dropout",),
           "norm": ("norm",), "other non-GEMM": ("rotary", "activation", "residual_bias", "grad_accumulation", "other"),
           "communication": ("communication",), "unattributed": ("unattributed",)}
FIGURE2_COLORS = {"GEMMs": COLORS["gemm"], "fused attention": COLORS["flash_attention"], "softmax": COLORS["softmax"],
                  "dropout": COLORS["dropout"], "norm": COLORS["norm"], "other non-GEMM": COLORS["other"],
                  "communication": "#ff9896", "unattributed": COLORS["unattributed"], IDLE: "#d9d9d9"}


def _on_cpu(run: dict) -> bool:
    return not (run.get("environment") or {}).get("gpu_name")


def _bar_label(config: str, passname: str, passes: set) -> str:
    return config if len(passes) == 1 else f"{config} ({'fwd' if passname == 'forward' else 'bwd'})"


def _stacked_shares(components: pd.DataFrame, series: list[tuple[str, tuple, str]], title: str,
                    text_min: float) -> dict:
    """One stacked bar per config (and pass): each series' share of that bar's summed kernel time."""
    df = components.copy()
    df["pass_share"] = df["time_us"] / df.groupby(["config", "pass"])["time_us"].transform("sum")
    passes = set(df["pass"])
    groups = list(dict.fromkeys(zip(df["config"], df["pass"])))
    labels = [_bar_label(c, p, passes) for c, p in groups]
    data = []
    for label, members, color in series:
        ys = [100 * df[(df["config"] == c) & (df["pass"] == p) & df["component"].isin(members)]["pass_share"].sum()
              for c, p in groups]
        if any(ys):
            data.append({"type": "bar", "name": label, "x": labels, "y": ys, "marker": {"color": color},
                         "text": [f"{y:.1f}%" if y >= text_min else "" for y in ys], "textposition": "inside",
                         "hovertemplate": f"{label}: %{{y:.1f}}%<extra>%{{x}}</extra>"})
    return {"data": data, "layout": layout(title, "config", axis("% of summed kernel time", range=[0, 100]),
                                           barmode="stack")}


def _latency_shares(components: pd.DataFrame, entries: list[dict], series: list[tuple[str, tuple, str]],
                    title: str, text_min: float) -> dict:
    """One stacked bar per config: each series' time (both passes) over the measured latency, plus the GPU's
    idle and launch-gap time (latency - summed kernel time): the denominator a user waits for."""
    latency = {e["name"]: e["latency_us"]["median"] for e in entries if e.get("status") == "ok"}
    configs = [c for c in dict.fromkeys(components["config"]) if c in latency]
    data = []
    for label, members, color in series + [(IDLE, (), FIGURE2_COLORS[IDLE])]:
        ys = []
        for c in configs:
            rows = components[components["config"] == c]
            part = rows["time_us"].sum() if label == IDLE else rows[rows["component"].isin(members)]["time_us"].sum()
            ys.append(100 * (max(0.0, latency[c] - part) if label == IDLE else part) / latency[c])
        if any(ys):
            data.append({"type": "bar", "name": label, "x": configs, "y": ys, "marker": {"color": color},
                         "text": [f"{y:.1f}%" if y >= text_min else "" for y in ys], "textposition": "inside",
                         "hovertemplate": f"{label}: %{{y:.1f}}% of latency<extra>%{{x}}</extra>"})
    return {"data": data, "layout": layout(title, "config", axis("% of measured layer latency", range=[0, 105]),
                                           barmode="stack")}


def _figure2_series() -> list[tuple[str, tuple, str]]:
    return [(category, members, FIGURE2_COLORS[category]) for category, members in FIGURE2.items()]


def _figure11_series(components: pd.DataFrame) -> list[tuple[str, tuple, str]]:
    non_gemm = tuple(c for c in components["component"].unique()
                     if c not in GEMMS + FUSED + ("unattributed", "communication"))
    return [(g, (g,), COLORS[g]) for g in GEMMS] + [
        ("fused attention", FUSED, COLORS["flash_attention"]), ("non-GEMM", non_gemm, COLORS["non_gemm"]),
        ("communication", ("communication",), FIGURE2_COLORS["communication"]),
        ("unattributed", ("unattributed",), "#7f0000")]


def figure2(components: pd.DataFrame) -> dict:
    return _stacked_shares(components, _figure2_series(), "Share of summed kernel time (paper Figure 2)", 3)


def figure2_latency(components: pd.DataFrame, entries: list[dict]) -> dict:
    return _latency_shares(components, entries, _figure2_series(),
                           "Share of layer latency, idle and launch gaps included (paper Figure 2)", 3)


def figure11(components: pd.DataFrame) -> dict:
    return _stacked_shares(components, _figure11_series(components),
                           "Per-GEMM share of summed kernel time (paper Figure 11)", 4)


def figure11_latency(components: pd.DataFrame, entries: list[dict]) -> dict:
    return _latency_shares(components, entries, _figure11_series(components),
                           "Per-GEMM share of layer latency, idle and gaps included (Figure 11)", 4)


def gemm_throughput_figure(components: pd.DataFrame, peak: float | None, scale: float, unit: str) -> dict:
    df = components[components["kind"] == "gemm"]
    data = []
    for (config, passname), part in df.groupby(["config", "pass"], sort=False):
        name = config if df["pass"].nunique() == 1 else f"{config} ({passname})"
        labels = [c if r in ("fprop", "") else f"{c}.{r}" for c, r in zip(part["component"], part["role"])]
        data.append({"type": "bar", "name": name, "x": labels, "y": (part["tflops"] * scale).round(2).tolist(),
                     "customdata": part["time_us"].round(1).tolist(),
                     "hovertemplate": "%{x}: %{y:.1f} " + unit + " in %{customdata} us<extra>" + name + "</extra>"})
    lay = layout(f"GEMM throughput inside the layer ({unit}, executed FLOPs)", "GEMM (component.role)",
                 f"throughput ({unit})", barmode="group")
    if peak:
        lay["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": peak, "y1": peak,
                          "line": {"dash": "dash", "color": "#d62728"}}]
        lay["annotations"] = [{"xref": "paper", "x": 1, "y": peak, "text": f"ceiling {peak:.0f}",
                               "showarrow": False, "yanchor": "bottom", "xanchor": "right"}]
    return {"data": data, "layout": lay}


def throughput_figure(entries: list[dict], scale: float, unit: str) -> dict:
    ok = [e for e in entries if e.get("status") == "ok"]
    return {"data": [{"type": "bar", "name": "layer", "x": [e["name"] for e in ok],
                      "y": [round(e["layer_tflops"] * scale, 2) for e in ok],
                      "text": [f"{e['layer_tflops'] * scale:.0f}" for e in ok], "textposition": "outside",
                      "marker": {"color": COLORS["gemm"]},
                      "customdata": [round(e["latency_us"]["median"], 1) for e in ok],
                      "hovertemplate": "%{x}: %{y} " + unit + ", %{customdata} us<extra></extra>"}],
            "layout": layout("Single-layer throughput (paper Figure 1)", "config",
                             f"{unit} (model FLOPs / measured latency)")}


def _check_cell(e: dict) -> str:
    summary = e.get("checks_summary") or {}
    if not summary:
        return ""
    return "all passed" if summary.get("all_passed") else "FAILED: " + ", ".join(summary.get("failed", []))


def latency_table(entries: list[dict], scale: float, unit: str) -> pd.DataFrame:
    rows = []
    throughput = unit.replace("/s", "_per_s").replace("FLOP", "flop").lower()  # tflop_per_s | gflop_per_s
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
            "repeats": e["latency_us"]["repeats"], **_window(e),
            "graph_us": (e.get("latency_graph_us") or {}).get("median"),
            "kernel_us": e.get("busy_us"), "idle_us": e.get("idle_us"),
            "launch_bound": "yes" if e.get("launch_bound") else "no",
            "trace_vs_events_pct": e.get("trace_vs_events_pct"), "coverage_pct": 100 * e["coverage"],
            "gemm_pct_of_kernels": 100 * e["gemm_share"],
            "gemm_pct_of_latency": 100 * e.get("gemm_share_of_latency", float("nan")),
            f"layer_{throughput}": e["layer_tflops"] * scale,
            "pct_of_peak": e.get("layer_pct_of_peak"), "floor_us": e.get("floor_us"), "x_floor": e.get("floor_ratio"),
            "checks": _check_cell(e),
        })
    return pd.DataFrame(rows)


def _window(e: dict) -> dict:
    """The final attempt's window: how long its rounds ran and how well their mean is known (None before the
    extension was recorded, or on a CPU)."""
    final = ((e.get("rounds") or {}).get("attempts") or [{}])[-1]
    span = final.get("span_ms")
    return {"window_s": None if span is None else span / 1e3, "mean_error_pct": final.get("relative_error_pct"),
            "stopped": final.get("stopped")}


def _us(value: float) -> str:
    return f"{value / 1e3:,.2f} ms" if value >= 1e4 else f"{value:,.0f} \u00b5s"


def _config_reading(e: dict, components: pd.DataFrame) -> str:
    """'GEMMs take 71% of the layer's 414 us, idle 5%; x_floor 1.12' for one config, from its rows."""
    latency = e["latency_us"]["median"]
    rows = components[components["config"] == e["name"]]
    gemm = rows[rows["component"].isin(GEMMS)]["time_us"].sum()
    fused = rows[rows["component"].isin(FUSED)]["time_us"].sum()
    idle = max(0.0, latency - rows["time_us"].sum())
    text = f"{e['name']}: GEMMs take {100 * gemm / latency:.0f}% of its {_us(latency)}"
    if fused:
        text += f", fused attention {100 * fused / latency:.0f}%"
    text += f", idle and launch gaps {100 * idle / latency:.0f}%"
    if e.get("floor_ratio"):
        text += f"; x_floor {e['floor_ratio']:.2f}"
    return text


def layer_answer(run: dict, components: pd.DataFrame) -> Answer | None:
    """Where the time goes (Figure 2, as shares of the measured latency) with each config's x_floor over its
    bar, and a reading written from the same rows."""
    entries = [e for e in run.get("configs", []) if e.get("status") == "ok"]
    if components.empty or not entries:
        return None
    fig = figure2_latency(components, entries)
    fig["layout"]["title"]["text"] = "Where the layer's time goes (paper Figure 2), x_floor over each bar"
    drawn = set(fig["data"][0]["x"]) if fig["data"] else set()
    # over each bar's top (the trace's kernel time can run past the event-timed latency: > 100%)
    tops = {x: sum(t["y"][t["x"].index(x)] for t in fig["data"] if x in t["x"]) for x in drawn}
    top = max([100.0, *tops.values()])
    fig["layout"]["yaxis"]["range"] = [0, top + 12]
    fig["layout"]["annotations"] = [
        {"x": e["name"], "y": max(100.0, tops.get(e["name"], 100.0)) + 1, "yanchor": "bottom", "showarrow": False,
         "font": {"size": 11},
         "text": f"x_floor {e['floor_ratio']:.2f}" if e.get("floor_ratio") else "no floor"}
        for e in entries if e["name"] in drawn]
    shown = [e for e in entries if e["name"] in drawn]
    parts = [_config_reading(e, components) for e in shown[:4]]
    reading = "; ".join(parts) + (f"; and {len(shown) - 4} more configs in the chart" if len(shown) > 4 else "") + ". "
    over = [e["name"] for e in shown
            if components.loc[components["config"] == e["name"], "time_us"].sum() > e["latency_us"]["median"]]
    if over:
        reading += (f"Above 100% ({', '.join(over)}): the traced kernel time runs past the event-timed latency "
                    "(the trace_vs_events check). ")
    floors = [e["floor_ratio"] for e in shown if e.get("floor_ratio")]
    if len(floors) > 1:
        reading += (f"x_floor (latency over the layer's GEMMs and fused attention alone, back to back) runs from "
                    f"{min(floors):.2f} to {max(floors):.2f}. ")
    elif not floors:
        reading += "No floor was measured, so no x_floor. "
    failed = [f"{e['name']}: {', '.join(e['checks_summary']['failed'])}" for e in shown
              if (e.get("checks_summary") or {}).get("failed")]
    reading += (f"Failed self-checks: {'; '.join(failed)} (see Checks)." if failed
                else "Every self-check passed or was skipped.")
    if _on_cpu(run):
        reading += " Measured on a CPU with the host clock: the shares show the wiring, not a GPU's time."
    return Answer("Where the time goes", fig, reading)


def checks_table(entries: list[dict]) -> pd.DataFrame:
    rows = [{"config": e["name"], "check": c["name"], "status": c["status"].upper() if c["status"] == "fail" else c["status"],
             "observed": c["observed"], "tolerance": c["tolerance"]}
            for e in entries if e.get("status") == "ok" for c in e.get("checks", [])]
    return pd.DataFrame(rows, columns=["config", "check", "status", "observed", "tolerance"])


def _summary_intro(run: dict) -> str:
    if _on_cpu(run):
        timing = ("<b>Latency</b> is the host clock around each step on this CPU (median over repeats): CPU numbers "
                  "prove the wiring, not GPU performance, and timing-fidelity checks are skipped on a CPU.")
    else:
        timing = ("<b>Latency</b> is the layer's GPU time back to back: the median span of its instances inside "
                  "CUDA-graph rounds that also hold the floor's calls (L2 flushed before each instance, warm-up until "
                  "stable), traced rounds alternating with rounds timed by CUDA events (trace_vs_events compares "
                  "them); <b>graph_us</b>: the same; the eager step (host included) decides launch-boundness. "
                  "<b>window_s</b>: how long the rounds ran; they go on until their mean is known to "
                  "<b>mean_error_pct</b> (batch means) or a bound is reached (<b>stopped</b>): a power-capped GPU's "
                  "clock wanders, and a short window samples too few of its levels for runs to agree.")
    return (f"Each config is one transformer layer (random weights) built from its config. {timing} "
            "<b>kernel_us</b>: summed kernel time of a traced step; <b>idle_us</b> = latency - kernel_us (the GPU "
            "waiting for launches). The breakdown comes from a torch.profiler trace in which every kernel is "
            "linked to the layer step that launched it through the profiler's correlation ids. <b>Floor</b>: the "
            "layer's GEMMs and fused attention alone (the kernels the layer attributes to them, in a trace of "
            "each alone, same policy), back to back; <b>x_floor</b> = latency / floor. <b>Coverage</b>: "
            "attributed kernel time / all kernel time. <b>checks</b>: the profiler's self-checks (table below).")


HOW_TO_READ = [
    "Start with the summary: latency, how far it is from the floor (x_floor), and whether every check passed.",
    "'Where the time goes' shows each figure twice: as a share of summed kernel time (the paper's view) and as "
    "a share of the measured latency, where the grey 'idle / launch gaps' part is time the GPU waited on the host.",
    "Throughput: the layer in model FLOPs per second (the paper's Figure 1); each GEMM in executed FLOPs per second "
    "against the measured peak; backward GEMMs are labelled dgrad (input gradient) and wgrad (weight gradient).",
    "Components: one row per pass x component x role with its time inside the layer, alone, and the difference.",
]


def gemm_ceiling(peak: float | None, components: pd.DataFrame) -> tuple[float | None, str]:
    """One ceiling for the whole report: the measured matmul peak, unless a GEMM inside a layer beat it (a
    peak below what a GEMM reaches is not a peak); then the fastest GEMM, and the report says so."""
    fastest = components.loc[components["kind"] == "gemm", "tflops"].max() if not components.empty else None
    if not peak:
        return None, ""
    if fastest is not None and pd.notna(fastest) and fastest > peak:
        return float(fastest), (f"the fastest GEMM in these layers ran at {fastest:.0f} TFLOP/s, above the measured "
                                f"matmul peak of {peak:.0f}; it is the ceiling here")
    return float(peak), "the measured matmul peak (see the environment)"


def layer_report_sections(run: dict, components: pd.DataFrame) -> list[Section]:
    if not components.empty:  # runs written before backward GEMMs had roles and shares two denominators
        components = components.copy()
        if "role" not in components:
            components["role"] = ""
        components["role"] = components["role"].fillna("")
        if "share_of_kernel_time" not in components and "share" in components:
            components = components.rename(columns={"share": "share_of_kernel_time"})
    entries = run.get("configs", [])
    env = run.get("environment", {})
    peak, ceiling_note = gemm_ceiling(env.get("measured_peak_tflops"), components)
    if peak and not components.empty:
        components = components.assign(pct_of_peak=100 * components["tflops"] / peak)
    scale, unit = (1e3, "GFLOP/s") if _on_cpu(run) else (1.0, "TFLOP/s")
    sections = [Section("Summary", intro=_summary_intro(run), tables=[table_html(latency_table(entries, scale, unit))])]
    by_check: dict[str, list[str]] = {}  # one note per failed check, naming every config it failed for
    for e in entries:
        for c in e.get("checks", []) if e.get("status") == "ok" else []:
            if c["status"] == "fail":
                by_check.setdefault(c["name"], []).append((e["name"], c["observed"]))
    tolerance = {c["name"]: c["tolerance"] for e in entries for c in e.get("checks", [])}
    failed = [f"{where[0][0]}: {name}: {where[0][1]} (tolerance: {tolerance[name]})" if len(where) == 1 else
              f"{', '.join(c for c, _ in where)}: {name} (\u00d7{len(where)}, tolerance: {tolerance[name]}): "
              + "; ".join(f"{c}: {observed}" for c, observed in where) for name, where in by_check.items()]
    launch = [f"{e['name']} is launch-bound: {e['launch_bound_evidence']}" for e in entries if e.get("launch_bound")]
    sections.append(Section("Checks", notes=(["FAILED " + f for f in failed] or ["Every check passed or was skipped."]) + launch,
                            intro="Each check has its tolerance stated in profiler/checks.py and a test that shows it "
                                  "failing; a failed check makes the command exit non-zero.",
                            tables=[table_html(checks_table(entries))]))
    if not components.empty:
        sections.append(Section("Where the time goes", figures=[
            figure2(components), figure2_latency(components, entries),
            figure11(components), figure11_latency(components, entries)]))
        sections.append(Section("Throughput", figures=[throughput_figure(entries, scale, unit),
                                                       gemm_throughput_figure(components, None if _on_cpu(run) else peak,
                                                                              scale, unit)],
                                intro="Layer throughput counts the model FLOPs of Table II (24bsh² + 4bs²h for a "
                                      "GPT-NeoX layer with f=4h; attention over the full square) over the measured "
                                      "latency. GEMM throughput divides each GEMM's executed FLOPs by its kernel time "
                                      "inside the layer; a fused causal attention executes half the square "
                                      "(its backward recomputes the scores: 2.5x its forward)." +
                                      (f" The dashed line is the one ceiling of this report, {peak:.0f} TFLOP/s: "
                                       f"{ceiling_note} ({env.get('measured_peak', '')}); pct_of_peak is relative "
                                       "to it." if peak else "")))
        cols = [c for c in ("config", "pass", "component", "role", "kind", "time_us", "p10_us", "p90_us",
                            "share_of_kernel_time", "share_of_latency", "flops", "tflops", "pct_of_peak", "alone_us",
                            "alone_p10_us", "alone_p90_us", "vs_alone_pct", "vs_alone_allowed_pct", "vs_alone_check",
                            "kernels_per_step") if c in components]
        table = components[cols].copy()
        for c in ("share_of_kernel_time", "share_of_latency"):
            if c in table:
                table[c] = 100 * table[c]
        table = table.rename(columns={"share_of_kernel_time": "pct_of_kernel_time", "share_of_latency": "pct_of_latency"})
        if _on_cpu(run) and "tflops" in table:
            table["tflops"] = table["tflops"] * 1e3
            table = table.rename(columns={"tflops": "gflops"})
        copy_sources = {(e.get("copy_bandwidth") or {}).get("source") for e in entries if e.get("status") == "ok"}
        if "why" in components:
            sections += depth_sections(components, copy_source=", ".join(sorted(s for s in copy_sources if s)))
        sections.append(Section("Components", tables=[table_html(table)],
                                intro="time_us: median over profiled steps; p10/p90 its spread. alone_us: the same "
                                      "kernels (those the layer attributes to this component and role) timed alone; "
                                      "vs_alone_pct is the in-layer time relative to it, checked against "
                                      "vs_alone_allowed_pct (tolerance plus both sides' spread). flops: executed FLOPs."))
    sections.append(per_config_section([e for e in entries if e.get("status") == "ok"]))
    return sections


def per_config_section(entries: list[dict]) -> Section:
    """Sizing findings, device switches and trace-window notes of every config in one folded card: a note
    that several configs share is written once, with their names and a count; then each config's shapes
    and FLOPs tables."""
    by_note: dict[str, list[str]] = {}
    lines, tables = [], []
    for e in entries:
        findings = e.get("sizing_findings") or []
        notes = [f"[{f['paper']}] {f['message']}" for f in findings] or ["No sizing rule of the paper is violated."]
        notes += [f"{s['field']}: {s['from']} -> {s['to']} on this device ({s['why']})" for s in e.get("switches", [])]
        left = e.get("left_out_of_window") or {}
        if left.get("edge_kernels"):
            notes.append(f"{left['edge_kernels']} kernel(s) ({left['edge_us']:.1f} us) ran at the trace window's edges, "
                         "outside every measured step, and are left out of both sides.")
        for note in notes:
            by_note.setdefault(note, []).append(e["name"])
        lines.append(f"<li><b>{_html.escape(e['name'])}</b>: {_html.escape(e['config'].get('description') or '')} "
                     f"Attention ops that ran: {_html.escape(', '.join(e.get('attention_ops') or []) or 'eager BMMs')}. "
                     f"Trace: <code>{_html.escape(str(e.get('trace', '')))}</code></li>")
        check = {c["name"]: c for c in e.get("checks", [])}
        for n in ("shapes", "flops"):
            if n in check and check[n]["details"]:
                tables.append(f'<p class="caption">{_html.escape(e["name"])}: {n}</p>'
                              + table_html(pd.DataFrame(check[n]["details"]), float_format="{:,.0f}"))
        unattributed = e.get("unattributed_kernels") or []
        if unattributed:
            tables.append(f'<p class="caption">{_html.escape(e["name"])}: unattributed kernels</p>'
                          + table_html(pd.DataFrame(unattributed)))
    notes = [(f"{', '.join(names)} (\u00d7{len(names)}): {note}" if len(names) > 1 else f"{names[0]}: {note}")
             if len(entries) > 1 else note for note, names in by_note.items()]
    return Section("Per config: sizing rules, shapes, FLOPs", intro=f"<ul>{''.join(lines)}</ul>", notes=notes,
                   tables=tables)


def write_layer_report(run: dict, components: pd.DataFrame, path: Path, *, plotly_src: str | None = None) -> Path:
    from profiler.outputs import write_atomic

    env = run.get("environment", {})
    device = env.get("gpu_name") or f"CPU ({env.get('cpu', '')})"
    html = render_page("Transformer layer profile", layer_report_sections(run, components), environment=env,
                       subtitle=f"{', '.join(e['name'] for e in run.get('configs', []))}, "
                                f"torch {env.get('torch')}" + (f", CUDA {env.get('cuda')}" if env.get("cuda") else ""),
                       how_to_read=HOW_TO_READ, plotly_src=plotly_src, answer=layer_answer(run, components),
                       device=device, on_cpu=_on_cpu(run))
    return write_atomic(Path(path), html)

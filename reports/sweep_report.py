"""The sweep report: results files -> DataFrames (profiler.sweeps.analysis) -> plotly figure dicts ->
one HTML page, plus a CSV of every point. Several results files (several sweeps) combine into one page.

Hover text on every point carries the predicted tiles, waves and last-wave fill, so a dip has its
explanation next to it; a table lists the dips and the prediction that explains each.
"""

from __future__ import annotations

import html as _html
from pathlib import Path

import pandas as pd

from profiler.sweeps import analysis
from profiler.sweeps.store import ResultStore

from .html import Section, render_page, table_html

# Figure 7's classes: the largest power of two dividing h/a, one colour each (the paper's legend order)
POW2_COLORS = {1: "#1f77b4", 2: "#ff7f0e", 4: "#2ca02c", 8: "#d62728", 16: "#9467bd", 32: "#8c564b",
               64: "#e377c2", 128: "#7f7f7f", 256: "#bcbd22", 512: "#17becf", 1024: "#393b79"}
LINE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
TITLES = {
    "mm": "GEMM (m,k)x(k,n) (Fig. 5)", "bmm": "Batched GEMM (Fig. 6)", "qkv": "QKV transform (Fig. 16)",
    "score": "Attention key-query score (Figs. 7a, 8, 17)", "aov": "Attention over values (Figs. 7b, 9, 18)",
    "out-proj": "Attention output projection (Fig. 19)", "mlp-up": "MLP h -> 4h (Fig. 10a)",
    "mlp-down": "MLP 4h -> h (Fig. 10b)", "logits": "Logit layer, vocabulary sweep (Fig. 20)",
    "flash": "FlashAttention over hidden size (Fig. 12)", "swiglu": "SwiGLU MLP, intermediate-size sweep (Sec. VII-B)",
}
AXIS = {"h": "hidden size h", "v": "vocabulary size v", "ffn": "intermediate size", "batch": "batch count"}
POINT_TABLE = ["kind", "component", "series", "x_name", "x", "batch", "m", "n", "k", "h", "a", "head_dim", "head_dim_pow2",
               "t", "b", "s", "v", "ffn", "dtype", "status", "median_ms", "p10_ms", "p90_ms", "repeats", "tflops",
               "tiles_128x256", "waves_128x256", "last_wave_fill_128x256", "tiles_256x128", "waves_256x128",
               "last_wave_fill_256x128", "error"]


def load(inputs: list[str | Path]) -> tuple[pd.DataFrame, list[dict], int]:
    """Points of every results file (a directory or a results.jsonl), runs, and lines skipped as torn."""
    records, runs, skipped = [], [], 0
    for item in inputs:
        store = ResultStore(item)
        if not store.path.exists():
            continue
        records += store.points()
        runs += store.runs()
        skipped += store.records()[1]
    return (analysis.points_frame(records) if records else pd.DataFrame(columns=analysis.COLUMNS)), runs, skipped


def _fmt(v, spec: str = "{:,.0f}") -> str:
    return "n/a" if v is None or pd.isna(v) else spec.format(v)


def hover(row: dict) -> str:
    lines = [f"<b>{_html.escape(row['component'])}</b> {row['batch']}x({row['m']},{row['k']})x({row['k']},{row['n']})"
             if row["batch"] > 1 else f"<b>{_html.escape(row['component'])}</b> ({row['m']},{row['k']})x({row['k']},{row['n']})"]
    if row.get("head_dim") is not None and not pd.isna(row.get("head_dim")):
        lines.append(f"h={int(row['h'])}, a={int(row['a'])}, h/a={int(row['head_dim'])} "
                     f"(largest power of 2 dividing it: {int(row['head_dim_pow2'])})")
    lines.append(f"{_fmt(row['tflops'], '{:.1f}')} TFLOP/s, median {_fmt(row['median_ms'], '{:.4f}')} ms "
                 f"(p10 {_fmt(row['p10_ms'], '{:.4f}')}, p90 {_fmt(row['p90_ms'], '{:.4f}')}, n={row['repeats']})")
    for tile in ("128x256", "256x128"):
        if row.get(f"waves_{tile}") is not None and not pd.isna(row.get(f"waves_{tile}")):
            lines.append(f"{tile}: {int(row[f'tiles_{tile}'])} tiles, {int(row[f'waves_{tile}'])} waves on "
                         f"{int(row['sms'])} SMs, last wave {row[f'last_wave_fill_{tile}']:.0%} full")
    return "<br>".join(lines)


def _trace(rows: pd.DataFrame, name: str, color: str, **extra) -> dict:
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": rows["x"].tolist(),
            "y": rows["tflops"].tolist(), "text": [hover(r) for r in rows.to_dict("records")],
            "hovertemplate": "%{text}<extra></extra>", "line": {"color": color, "width": 1.5},
            "marker": {"color": color, "size": 5}, **extra}


def _layout(title: str, x_name: str, *, waves_axis: bool = False) -> dict:
    layout = {"title": {"text": title}, "xaxis": {"title": {"text": AXIS.get(x_name, x_name)}},
              "yaxis": {"title": {"text": "throughput (TFLOP/s)"}, "rangemode": "tozero"},
              "hovermode": "closest", "legend": {"orientation": "v"}}
    if waves_axis:
        layout["legend"] = {"x": 1.08, "xanchor": "left"}
        layout["yaxis2"] = {"title": {"text": "predicted waves (128x256 tiles)"}, "overlaying": "y", "side": "right",
                            "showgrid": False, "rangemode": "tozero"}
    return layout


def _waves_trace(rows: pd.DataFrame) -> dict | None:
    if rows["waves_128x256"].isna().all():
        return None
    return {"type": "scatter", "mode": "lines", "name": "predicted waves (128x256)", "x": rows["x"].tolist(),
            "y": rows["waves_128x256"].tolist(), "yaxis": "y2", "line": {"color": "#999999", "dash": "dot",
                                                                          "shape": "hv", "width": 1},
            "hoverinfo": "skip"}


def pow2_figure(rows: pd.DataFrame, title: str) -> dict:
    """Figures 7a/7b: one series split into lines by the largest power of two dividing h/a."""
    data = []
    for p2, part in rows.groupby("head_dim_pow2", sort=True):
        data.append(_trace(part, str(int(p2)), POW2_COLORS.get(int(p2), "#333333"),
                           mode="markers+lines"))
    return {"data": data, "layout": {**_layout(title, "h"), "legend": {"title": {"text": "largest power of 2 dividing h/a"}}}}


def lines_figure(rows: pd.DataFrame, title: str, x_name: str) -> dict:
    data = [_trace(part, series, LINE_COLORS[i % len(LINE_COLORS)])
            for i, (series, part) in enumerate(rows.groupby("series", sort=True))]
    waves = _waves_trace(rows) if rows["series"].nunique() == 1 else None
    if waves:
        data.append(waves)
    return {"data": data, "layout": _layout(title, x_name, waves_axis=waves is not None)}


def _multiples_of_64(rows: pd.DataFrame, label: str = "multiple of 64") -> dict:
    marked = rows[rows["x"] % 64 == 0]
    return {"type": "scatter", "mode": "markers", "name": label, "x": marked["x"].tolist(),
            "y": marked["tflops"].tolist(), "text": [hover(r) for r in marked.to_dict("records")],
            "hovertemplate": "%{text}<extra>multiple of 64</extra>",
            "marker": {"symbol": "star", "size": 11, "color": "#d62728", "line": {"width": 0}}}


def flash_figure(rows: pd.DataFrame, runs: list[dict]) -> dict:
    """Fig. 12 as a roofline: throughput against h under the GEMM ceiling measured in the same run."""
    fig = lines_figure(rows, TITLES["flash"], "h")
    peaks = [r["matmul_peak"]["tflops"] for r in runs if r.get("matmul_peak") and r["spec"]["kind"] == "flash"]
    x = [rows["x"].min(), rows["x"].max()]
    if peaks:
        fig["data"].append({"type": "scatter", "mode": "lines", "name": f"measured GEMM ceiling ({max(peaks):.0f})",
                            "x": x, "y": [max(peaks)] * 2, "line": {"color": "#d62728", "dash": "dash"}})
    sheet = next((r["environment"].get("bf16_tflops") for r in runs if r["environment"].get("bf16_tflops")), None)
    if sheet:
        fig["data"].append({"type": "scatter", "mode": "lines", "name": f"datasheet dense bf16 ({sheet:.0f})",
                            "x": x, "y": [sheet] * 2, "line": {"color": "#7f7f7f", "dash": "dot"}})
    return fig


def kind_section(kind: str, df: pd.DataFrame, runs: list[dict]) -> Section:
    rows = analysis.ok(df[df["kind"] == kind])
    bad = df[(df["kind"] == kind) & (df["status"] != "ok")]
    figures, notes = [], []
    if not bad.empty:
        notes.append(f"{len(bad)} point(s) not measured: " + ", ".join(
            f"{x_name}={int(x)} ({status})" for x_name, x, status in zip(bad["x_name"].head(12), bad["x"].head(12), bad["status"].head(12))))
    if rows.empty:
        return Section(TITLES[kind], "No measured points.", notes=notes)
    x_name = rows["x_name"].iloc[0]
    if kind in ("score", "aov"):
        for series, part in rows.groupby("series", sort=True):
            if part["held"].iloc[0] == "a":
                figures.append(pow2_figure(part, f"{TITLES[kind]}, {series}"))
            else:
                figures.append(lines_figure(part, f"{TITLES[kind]}, {series}", x_name))
    elif kind == "flash":
        figures.append(flash_figure(rows, runs))
    elif kind == "swiglu":
        for component, part in rows.groupby("component", sort=False):
            fig = lines_figure(part, f"{TITLES[kind]}: {component}", x_name)
            fig["data"].append(_multiples_of_64(part))
            figures.append(fig)
        block = analysis.swiglu_block(df)
        if not block.empty:
            data = [{"type": "scatter", "mode": "lines+markers", "name": series, "x": part["ffn"].tolist(),
                     "y": part["tflops"].tolist(), "line": {"color": LINE_COLORS[i % 8]}}
                    for i, (series, part) in enumerate(block.groupby("series"))]
            figures.append({"data": data, "layout": _layout("SwiGLU MLP block (up + gate + down)", "ffn")})
    elif kind == "logits":
        for series, part in rows.groupby("series", sort=True):
            fig = lines_figure(part, f"{TITLES[kind]}, {series}", x_name)
            fig["data"].append(_multiples_of_64(part, "v multiple of 64"))
            figures.append(fig)
    else:
        figures.append(lines_figure(rows, TITLES[kind], x_name))
    best = rows.loc[rows["tflops"].idxmax()]
    intro = (f"{len(rows)} points measured; best {best['tflops']:.1f} TFLOP/s at {x_name}={int(best['x'])} "
             f"({_html.escape(best['series'])}). Hover a point for its predicted tiles, waves and last-wave fill.")
    return Section(TITLES[kind], intro, figures=figures, notes=notes)


def build_sections(df: pd.DataFrame, runs: list[dict], skipped_lines: int = 0) -> list[Section]:
    sections = []
    summary = (df.groupby(["kind", "gpu", "dtype"], dropna=False)
               .agg(points=("status", "size"), ok=("status", lambda s: int((s == "ok").sum())),
                    oom=("status", lambda s: int((s == "oom").sum())), error=("status", lambda s: int((s == "error").sum())),
                    best_tflops=("tflops", "max")).reset_index()) if not df.empty else pd.DataFrame()
    notes = [f"{skipped_lines} torn or corrupt line(s) in the results file were skipped (a run killed mid-write)"] \
        if skipped_lines else []
    sections.append(Section("Sweeps", "Each point: warm-up, then CUDA-event-timed repetitions with the L2 cache "
                            "flushed before each (profiler.timing.bench), random inputs allocated once per shape; "
                            "median and p10/p90 reported. Predictions assume one resident tile per SM per wave "
                            "(paper Sec. III-B).", tables=[table_html(summary)] if not summary.empty else [], notes=notes))
    kinds = [k for k in TITLES if k in set(df["kind"])]
    sections += [kind_section(kind, df, runs) for kind in kinds]
    dip_table = analysis.dips(df)
    agreement = analysis.wave_agreement(dip_table)
    sections.append(Section(
        "Dips and their predicted cause",
        f"Points whose throughput falls more than 5% below the previous point of the same line: {agreement['dips']} "
        f"dips, {agreement['explained']} explained by a new wave, a smaller power of two in h/a, or misalignment.",
        tables=[table_html(dip_table)] if not dip_table.empty else []))
    shown = [c for c in POINT_TABLE if c in df.columns]
    sections.append(Section("All points", "Also in results.csv next to this page.", tables=[table_html(df[shown], max_rows=5000)]))
    return sections


def report_environment(runs: list[dict]) -> dict:
    if not runs:
        return {}
    env = dict(runs[-1].get("environment", {}))
    gpus = sorted({r.get("environment", {}).get("gpu_name") or "cpu" for r in runs})
    if len(gpus) > 1:
        env["gpus_in_these_results"] = ", ".join(gpus)
    peak = runs[-1].get("matmul_peak")
    if peak:
        env["measured_matmul_peak_tflops"] = round(peak["tflops"], 1)
    env["runs"] = len(runs)
    return env


def write_outputs(inputs: list[str | Path], out_dir: str | Path, *, title: str = "GEMM and attention sweeps") -> tuple[Path, Path]:
    """results.csv and report.html in `out_dir` from one or more results files."""
    df, runs, skipped = load(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = out / "results.csv", out / "report.html"
    df.to_csv(csv_path, index=False)
    gpus = ", ".join(sorted({str(g) for g in df["gpu"].dropna()})) or "no results"
    html_path.write_text(render_page(title, build_sections(df, runs, skipped), environment=report_environment(runs),
                                     subtitle=f"{len(df)} points on {gpus}"), encoding="utf-8")
    return csv_path, html_path

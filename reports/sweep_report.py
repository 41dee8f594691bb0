"""The sweep report: results files -> DataFrames (profiler.sweeps.analysis) -> plotly figure dicts ->
one HTML page, plus a CSV of every point. Several results files (several sweeps) combine into one page.

Hover text on every point carries the predicted tiles, waves and last-wave fill, so a dip has its
explanation next to it; a table lists the dips and the prediction that explains each. Throughput is read
against one GEMM ceiling per GPU and dtype (`gemm_ceiling`), drawn on every chart.
"""

from __future__ import annotations

import gzip
import html as _html
import tempfile
from pathlib import Path

import pandas as pd

from profiler.outputs import write_atomic
from profiler.sweeps import analysis
from profiler.sweeps.runner import gpu_label
from profiler.sweeps.store import RESULTS_NAME, ResultStore

from .html import Answer, Section, axis, layout, render_page, table_html

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
AXIS = {"h": "hidden size h", "v": "vocabulary size v", "ffn": "SwiGLU intermediate size", "batch": "batch count",
        "m": "m (rows of the left operand)", "n": "n (columns of the right operand)", "k": "k (inner dimension)"}
THROUGHPUT = "throughput (TFLOP/s)"
CEILING_COLOR = "#d62728"
POINT_TABLE = ["kind", "component", "series", "x_name", "x", "batch", "m", "n", "k", "h", "a", "head_dim", "head_dim_pow2",
               "t", "b", "s", "v", "ffn", "dtype", "status", "median_ms", "p10_ms", "p90_ms", "repeats", "tflops",
               "pct_of_ceiling",
               "tiles_128x256", "waves_128x256", "last_wave_fill_128x256", "tiles_256x128", "waves_256x128",
               "last_wave_fill_256x128", "gpu", "worker", "sm_clock_mhz", "error"]


def _results_path(item: str | Path) -> Path:
    """A directory's results.jsonl, or its results.jsonl.gz (as committed evidence keeps it)."""
    path = Path(item)
    if path.is_dir() and not (path / RESULTS_NAME).exists() and (path / f"{RESULTS_NAME}.gz").exists():
        return path / f"{RESULTS_NAME}.gz"
    return ResultStore(path).path


def _read(path: Path) -> tuple[list[dict], list[dict], int]:
    if path.suffix != ".gz":
        store = ResultStore(path)
        return store.points(), store.runs(), store.records()[1]
    with tempfile.TemporaryDirectory() as tmp:  # the store reads a plain file: hand it the decompressed one
        plain = Path(tmp) / RESULTS_NAME
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return _read(plain)


def load(inputs: list[str | Path]) -> tuple[pd.DataFrame, list[dict], int]:
    """Points of every results file (a directory, a results.jsonl or a results.jsonl.gz), runs, and lines
    skipped as torn."""
    records, runs, skipped = [], [], 0
    for item in inputs:
        path = _results_path(item)
        if not path.exists():
            continue
        points, more_runs, torn = _read(path)
        records += points
        runs += more_runs
        skipped += torn
    return analysis.points_frame(records), runs, skipped


def gemm_ceiling(df: pd.DataFrame, runs: list[dict]) -> pd.DataFrame:
    """One throughput ceiling per GPU and dtype: the large square matmul the sweep measured on that GPU
    (`matmul_peak`, the highest if several runs measured it), unless a swept point ran faster: then the
    fastest point, since a ceiling that a GEMM exceeds is no ceiling."""
    columns = ["gpu", "dtype", "ceiling_tflops", "measured_matmul_tflops", "matmul_shape", "max_point_tflops",
               "points_above_matmul", "basis"]
    measured: dict[tuple, dict] = {}
    for run in runs:
        peak = run.get("matmul_peak")
        if peak and peak.get("tflops"):
            key = (gpu_label(run.get("environment") or {}), peak.get("dtype"))
            if key not in measured or peak["tflops"] > measured[key]["tflops"]:
                measured[key] = peak
    rows = []
    for (gpu, dtype), part in analysis.ok(df).groupby(["gpu", "dtype"], sort=True):
        best = part.loc[part["tflops"].idxmax()]
        peak = measured.get((gpu, dtype))
        matmul = peak["tflops"] if peak else None
        shape = "x".join(str(n) for n in peak["shape"]) if peak else ""
        above = int((part["tflops"] > matmul).sum()) if matmul else 0
        where = f"{best['kind']} {best['component']} at {best['x_name']}={int(best['x'])}, {best['series']}"
        if matmul and not above:
            basis = f"{shape} {dtype} matmul measured in the same run"
        elif matmul:
            basis = (f"fastest point ({where}): {above} point(s) beat the {shape} matmul measured in the same run "
                     f"({matmul:.0f} TFLOP/s), so that is no ceiling")
        else:
            basis = f"fastest point ({where}); no matmul was measured (CPU, or --no-peak)"
        rows.append({"gpu": gpu, "dtype": dtype, "ceiling_tflops": max(best["tflops"], matmul or 0),
                     "measured_matmul_tflops": matmul, "matmul_shape": shape, "max_point_tflops": best["tflops"],
                     "points_above_matmul": above, "basis": basis})
    return pd.DataFrame(rows, columns=columns)


def with_pct_of_ceiling(df: pd.DataFrame, ceilings: pd.DataFrame) -> pd.DataFrame:
    """`pct_of_ceiling`: a point's throughput over the ceiling of its GPU and dtype."""
    ceiling = ceilings.set_index(["gpu", "dtype"])["ceiling_tflops"]
    keys = list(zip(df["gpu"], df["dtype"]))
    return df.assign(pct_of_ceiling=[100 * tf / ceiling[k] if k in ceiling.index and pd.notna(tf) else None
                                     for tf, k in zip(df["tflops"], keys)] if len(df) else [])


def _fmt(v, spec: str = "{:,.0f}") -> str:
    return "n/a" if v is None or pd.isna(v) else spec.format(v)


def hover(row: dict) -> str:
    lines = [f"<b>{_html.escape(row['component'])}</b> {row['batch']}x({row['m']},{row['k']})x({row['k']},{row['n']})"
             if row["batch"] > 1 else f"<b>{_html.escape(row['component'])}</b> ({row['m']},{row['k']})x({row['k']},{row['n']})"]
    if row.get("head_dim") is not None and not pd.isna(row.get("head_dim")):
        lines.append(f"h={int(row['h'])}, a={int(row['a'])}, h/a={int(row['head_dim'])} "
                     f"(largest power of 2 dividing it: {int(row['head_dim_pow2'])})")
    pct = row.get("pct_of_ceiling")
    lines.append(f"{_fmt(row['tflops'], '{:.1f}')} TFLOP/s" + (f" ({pct:.0f}% of the ceiling)" if pct is not None and
                                                                pd.notna(pct) else "") +
                 f", median {_fmt(row['median_ms'], '{:.4f}')} ms "
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
    extra = {"yaxis2": axis("predicted waves (128x256 tiles)", overlaying="y", side="right", showgrid=False,
                            rangemode="tozero", tickformat=",d"),
             "legend": {"x": 1.08, "xanchor": "left"}} if waves_axis else {"legend": {"orientation": "v"}}
    return layout(title, AXIS.get(x_name, x_name), axis(THROUGHPUT, rangemode="tozero"), hovermode="closest",
                  **extra)


def _waves_trace(rows: pd.DataFrame) -> dict | None:
    if rows["waves_128x256"].isna().all():
        return None
    return {"type": "scatter", "mode": "lines", "name": "waves_128x256 (predicted)", "x": rows["x"].tolist(),
            "y": rows["waves_128x256"].tolist(), "yaxis": "y2", "line": {"color": "#999999", "dash": "dot",
                                                                          "shape": "hv", "width": 1},
            "hoverinfo": "skip"}


def with_ceiling(fig: dict, ceiling: float | None) -> dict:
    """The report's one ceiling as a dashed line across the chart (a shape: no legend entry, no hover)."""
    if not ceiling:
        return fig
    lay = fig["layout"]
    lay["shapes"] = [*lay.get("shapes", []), {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
                                               "y0": ceiling, "y1": ceiling,
                                               "line": {"color": CEILING_COLOR, "dash": "dash", "width": 1.5}}]
    lay["annotations"] = [*lay.get("annotations", []), {
        "xref": "paper", "x": 1, "xanchor": "right", "yref": "y", "y": ceiling, "yanchor": "bottom",
        "text": f"GEMM ceiling {ceiling:.3g}", "showarrow": False, "font": {"color": CEILING_COLOR, "size": 11}}]
    return fig


def pow2_figure(rows: pd.DataFrame, title: str) -> dict:
    """Figures 7a/7b: one series split into lines by the largest power of two dividing h/a."""
    data = []
    for p2, part in rows.groupby("head_dim_pow2", sort=True):
        data.append(_trace(part, str(int(p2)), POW2_COLORS.get(int(p2), "#333333"),
                           mode="markers+lines"))
    lay = _layout(title, "h")
    lay["legend"] = {"title": {"text": "head_dim_pow2"}}
    return {"data": data, "layout": lay}


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


def on_cpu(df: pd.DataFrame) -> bool:
    """Every point ran on a CPU (runner.gpu_label names a CPU 'cpu:...')."""
    gpus = df["gpu"].dropna().astype(str) if "gpu" in df else pd.Series(dtype=str)
    return bool(len(gpus)) and bool(gpus.str.startswith("cpu:").all())


def _ceiling_of(rows: pd.DataFrame, ceilings: pd.DataFrame) -> float | None:
    """The ceiling of a chart's points, when they share one GPU and dtype (a chart mixing them gets none).
    A CPU has no GEMM ceiling to read against (no matmul peak is measured there): none is drawn."""
    keys = set(zip(rows["gpu"], rows["dtype"]))
    if len(keys) != 1 or ceilings.empty or on_cpu(rows):
        return None
    match = ceilings[(ceilings["gpu"] == rows["gpu"].iloc[0]) & (ceilings["dtype"] == rows["dtype"].iloc[0])]
    return float(match["ceiling_tflops"].iloc[0]) if len(match) else None


def kind_section(kind: str, df: pd.DataFrame, ceilings: pd.DataFrame) -> Section:
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
    else:  # mm, bmm, the other Table II GEMMs and flash (Fig. 12 as a roofline under the GEMM ceiling)
        figures.append(lines_figure(rows, TITLES[kind], x_name))
    ceiling = _ceiling_of(rows, ceilings)
    figures = [with_ceiling(fig, ceiling) for fig in figures]
    best = rows.loc[rows["tflops"].idxmax()]
    components = ", ".join(f"<code>{_html.escape(c)}</code>" for c in rows["component"].unique())
    pct = f", {best['pct_of_ceiling']:.0f}% of the ceiling" if pd.notna(best.get("pct_of_ceiling")) else ""
    intro = (f"kind <code>{_html.escape(kind)}</code>, component {components}: {len(rows)} points measured; best "
             f"{best['tflops']:.1f} TFLOP/s{pct} at {x_name}={int(best['x'])} ({_html.escape(best['series'])}). "
             "Hover a point for its predicted tiles, waves and last-wave fill.")
    return Section(TITLES[kind], intro, figures=figures, notes=notes)


def sweep_answer(df: pd.DataFrame, ceilings: pd.DataFrame) -> Answer | None:
    """The headline curve: the first kind of the paper's order that was measured (the plain GEMM of Fig. 5
    when swept), with its ceiling, and a reading of its best point and its dips."""
    df = with_pct_of_ceiling(df, ceilings)
    measured = analysis.ok(df) if len(df) else df
    kind = next((k for k in TITLES if len(measured) and k in set(measured["kind"])), None)
    if kind is None:
        return None
    rows = measured[measured["kind"] == kind]
    series = rows["series"].value_counts().index[0]  # the line with the most points when a kind has several
    if rows["series"].nunique() > 4:
        rows = rows[rows["series"] == series]
    x_name = rows["x_name"].iloc[0]
    ceiling = _ceiling_of(rows, ceilings)
    fig = with_ceiling(lines_figure(rows, f"Headline sweep: {TITLES[kind]}", x_name), ceiling)
    # beside the reading the chart is narrower: the legend goes inside the plot, clear of the right axis title
    fig["layout"]["legend"] = {"x": 0.01, "y": 0.99, "bgcolor": "rgba(255,255,255,0.8)"}
    if "yaxis2" in fig["layout"]:  # room for the waves axis' ticks and title
        fig["layout"]["margin"] = {"r": 88}
    best = rows.loc[rows["tflops"].idxmax()]
    worst = rows.loc[rows["tflops"].idxmin()]
    reading = (f"{TITLES[kind]}: {len(rows)} points measured over {x_name} = {int(rows['x'].min())}.."
               f"{int(rows['x'].max())}; best {best['tflops']:.3g} TFLOP/s at {x_name}={int(best['x'])}")
    reading += (f" ({best['pct_of_ceiling']:.0f}% of the {ceiling:.0f} TFLOP/s GEMM ceiling)" if ceiling else "") + \
        f", lowest {worst['tflops']:.3g} TFLOP/s at {x_name}={int(worst['x'])}. "
    dips = analysis.dips(df[df["kind"] == kind])
    agreement = analysis.wave_agreement(dips)
    reading += (f"{agreement['dips']} dip(s) on this chart, {agreement['explained']} explained by a new wave, a "
                "smaller power of two in h/a, or misalignment. " if agreement["dips"] else "No dip on this chart. ")
    others = [k for k in TITLES if k != kind and k in set(measured["kind"])]
    if others:
        reading += f"The other sweeps ({', '.join(others)}) follow below."
    if on_cpu(rows):
        reading += (" A CPU run: timed with the host clock, no GEMM ceiling (no matmul peak is measured on a CPU); "
                    "the curve shows the wiring, not a GPU.")
    return Answer("Throughput against size", fig, reading.strip())


def how_to_read(ceilings: pd.DataFrame) -> list[str]:
    cpu = not ceilings.empty and ceilings["gpu"].astype(str).str.startswith("cpu:").all()
    ceiling = "No GEMM ceiling is drawn: these points ran on a CPU, where no matmul peak is measured." if cpu else ("Dashed red line: the GEMM ceiling, the one peak this report reads throughput against "
               "(pct_of_ceiling in the tables). " + "; ".join(f"{r.gpu} {r.dtype}: {r.ceiling_tflops:.0f} TFLOP/s, "
                                                               f"the {r.basis}" for r in ceilings.itertuples()) + "."
               ) if not ceilings.empty else "No point was measured, so there is no ceiling to read against."
    return [
        "Each chart is one sweep after the paper's Sections V and VI-A: the throughput (TFLOP/s = the operation's "
        "FLOPs / its median time) of one GEMM or attention call as one size grows (x axis). Each line holds the "
        "other sizes fixed; its legend name is the series column of the tables.",
        ceiling,
        "A dip (a point well below its neighbours) usually has a predicted cause: hover it for its tiles, waves "
        "and last-wave fill (paper Sec. III-B). The grey dotted steps (right axis) are the predicted waves of "
        "128x256 tiles; a new, mostly empty wave costs a whole wave's time. The 'Dips' table lists every dip "
        "with its explanation.",
        "Attention charts at a fixed a (Fig. 7) colour points by head_dim_pow2, the largest power of 2 "
        "dividing h/a: the lower it is, the less the tensor cores are used.",
    ]


def build_sections(df: pd.DataFrame, runs: list[dict], skipped_lines: int = 0,
                   ceilings: pd.DataFrame | None = None) -> list[Section]:
    ceilings = gemm_ceiling(df, runs) if ceilings is None else ceilings
    df = with_pct_of_ceiling(df, ceilings)
    sections = []
    summary = (df.groupby(["kind", "gpu", "dtype"], dropna=False)
               .agg(points=("status", "size"), ok=("status", lambda s: int((s == "ok").sum())),
                    oom=("status", lambda s: int((s == "oom").sum())), error=("status", lambda s: int((s == "error").sum())),
                    best_tflops=("tflops", "max"), best_pct_of_ceiling=("pct_of_ceiling", "max")).reset_index()
               ) if not df.empty else pd.DataFrame()
    notes = [f"{skipped_lines} torn or corrupt line(s) in the results file were skipped (a run killed mid-write)"] \
        if skipped_lines else []
    notes += [f"{r.gpu} {r.dtype}: {r.points_above_matmul} point(s) ran faster than the {r.matmul_shape} matmul "
              f"({r.measured_matmul_tflops:.0f} TFLOP/s); the ceiling is the fastest point, {r.ceiling_tflops:.0f} "
              "TFLOP/s" for r in ceilings.itertuples() if r.points_above_matmul]
    tables = [table_html(summary)] if not summary.empty else []
    if not ceilings.empty:
        tables.append(table_html(ceilings[["gpu", "dtype", "ceiling_tflops", "measured_matmul_tflops", "matmul_shape",
                                           "max_point_tflops", "points_above_matmul", "basis"]], float_format="{:,.1f}"))
    timed = ("Each point (a CPU run): warm-up, then repetitions timed with the host clock (profiler.timing.bench; "
             "no CUDA events, no GPU), random inputs allocated once per shape; median and p10/p90 reported. "
             "No GEMM ceiling is drawn on a CPU. Predictions assume one resident tile per SM per wave (paper Sec. "
             "III-B): a GPU's, kept for the wiring." if on_cpu(df) else
             "Each point: warm-up, then CUDA-event-timed repetitions with the L2 cache flushed before each "
             "(profiler.timing.bench), random inputs allocated once per shape; median and p10/p90 reported. "
             "Predictions assume one resident tile per SM per wave (paper Sec. III-B). The second table defines the "
             "GEMM ceiling.")
    sections.append(Section("Sweeps", timed,
                            tables=tables, notes=notes))
    kinds = [k for k in TITLES if k in set(df["kind"])]
    sections += [kind_section(kind, df, ceilings) for kind in kinds]
    dip_table = analysis.dips(df)
    agreement = analysis.wave_agreement(dip_table)
    first = ["kind", "component", "series", "x_name", "x_before", "x", "drop_pct", "explanation"]  # the why, in view
    dip_table = dip_table[first + [c for c in dip_table.columns if c not in first]]
    sections.append(Section(
        "Dips and their predicted cause",
        f"Points whose throughput falls more than 5% below the previous point of the same line: {agreement['dips']} "
        f"dips, {agreement['explained']} explained by a new wave, a smaller power of two in h/a, or misalignment.",
        tables=[table_html(dip_table)] if not dip_table.empty else []))
    shown = [c for c in POINT_TABLE if c in df.columns]
    sections.append(Section("All points", "Also in results.csv next to this page (without pct_of_ceiling).",
                            tables=[table_html(df[shown], max_rows=5000)]))
    return sections


# datasheet figures: kept in results.jsonl, left out of the page, whose one peak is the measured ceiling
NOT_SHOWN = ("bf16_tflops", "fp16_tflops")


def report_environment(runs: list[dict]) -> dict:
    if not runs:
        return {}
    env = {k: v for k, v in runs[-1].get("environment", {}).items() if k not in NOT_SHOWN}
    gpus = sorted({r.get("environment", {}).get("gpu_name") or "cpu" for r in runs})
    if len(gpus) > 1:
        env["gpus_in_these_results"] = ", ".join(gpus)
    env["runs"] = len(runs)
    return env


def write_outputs(inputs: list[str | Path], out_dir: str | Path, *, title: str = "GEMM and attention sweeps",
                  plotly_src: str | None = None) -> tuple[Path, Path]:
    """results.csv and report.html in `out_dir` from one or more results files. `plotly_src`: link
    plotly.js from there (relative to the page) instead of inlining it (reports.html.render_page)."""
    df, runs, skipped = load(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = out / "results.csv", out / "report.html"
    write_atomic(csv_path, df.to_csv(index=False))  # a full disk leaves the previous file, never half of one
    gpus = ", ".join(sorted({str(g) for g in df["gpu"].dropna()})) or "no results"
    ceilings = gemm_ceiling(df, runs)
    cpu = on_cpu(df)
    device = gpus.replace("cpu:", "CPU: ") if cpu else gpus
    write_atomic(html_path, render_page(title, build_sections(df, runs, skipped, ceilings),
                                        environment=report_environment(runs), subtitle=f"{len(df)} points",
                                        how_to_read=how_to_read(ceilings), plotly_src=plotly_src,
                                        answer=sweep_answer(df, ceilings), device=device, on_cpu=cpu))
    return csv_path, html_path

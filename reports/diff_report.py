"""The run comparison's HTML report: per component, A's and B's time with their p10-p90 spread, the change,
and which changes the measurement can tell from noise.

`diff_report_sections` is pure (diff.json document + diff table -> sections); `write_diff_report` renders
and writes the page. The table is profiler.run_diff.diff_components's, as diff.csv holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .html import COLORS, Answer, Section, axis, layout, render_page, table_html

VERDICT_COLORS = {"slower in B": COLORS["unattributed"], "faster in B": "#2ca02c", "within noise": "#b0b7c3",
                  "only in A": "#9467bd", "only in B": "#8c564b"}
CONFIG_FIELDS = ("hidden_size", "num_attention_heads", "seq_length", "micro_batch_size", "attention", "activation",
                 "dtype", "tensor_parallel")


def _labels(table: pd.DataFrame) -> list[str]:
    from profiler.run_diff import row_label

    passes = table["pass"].nunique()
    return [row_label(p, c, r, passes) for p, c, r in zip(table["pass"], table["component"], table["role"])]


def _x_axis(labels: list[str]) -> dict:
    """The rows in the table's order (plotly would otherwise order categories by the first trace drawing
    them), long names given room below the axis."""
    return axis("component (pass)", automargin=True, tickangle=-35, categoryorder="array", categoryarray=labels)


def _side_name(doc: dict, side: str) -> str:
    a, b = doc["a"]["config"], doc["b"]["config"]
    name = doc[side]["config"]
    return f"{side.upper()}: {name}" if a == b else name


def time_figure(doc: dict, table: pd.DataFrame) -> dict:
    """A's and B's median time per row, whiskers from p10 to p90."""
    labels, data = _labels(table), []
    for side, color in (("a", COLORS["gemm"]), ("b", COLORS["softmax"])):
        t, lo, hi = table[f"time_{side}_us"], table[f"p10_{side}_us"], table[f"p90_{side}_us"]
        data.append({"type": "bar", "name": _side_name(doc, side), "x": labels, "y": t.round(2).tolist(),
                     "marker": {"color": color},
                     "error_y": {"type": "data", "symmetric": False, "array": (hi - t).round(2).tolist(),
                                 "arrayminus": (t - lo).round(2).tolist(), "thickness": 1},
                     "hovertemplate": "%{x}: %{y:.1f} us<extra>" + _side_name(doc, side) + "</extra>"})
    return {"data": data, "layout": layout("Time per step by component (median, whiskers p10-p90)",
                                           _x_axis(labels), "time per step (us)", barmode="group")}


def delta_figure(doc: dict, table: pd.DataFrame) -> dict:
    """B - A per row, coloured by verdict; the noise band as a grey whisker."""
    labels, data = _labels(table), []
    for verdict, color in VERDICT_COLORS.items():
        part = table["verdict"] == verdict
        if not part.any():
            continue
        data.append({"type": "bar", "name": verdict, "x": [l for l, p in zip(labels, part) if p],
                     "y": table.loc[part, "delta_us"].round(2).tolist(), "marker": {"color": color},
                     "error_y": {"type": "data", "array": table.loc[part, "noise_band_us"].round(2).tolist(),
                                 "color": "#7f7f7f", "thickness": 1},
                     "customdata": table.loc[part, "delta_pct"].round(1).tolist(),
                     "hovertemplate": "%{x}: %{y:+.1f} us (%{customdata:+.1f}%)<extra>" + verdict + "</extra>"})
    return {"data": data, "layout": layout(f"Change in time, {_side_name(doc, 'b')} minus {_side_name(doc, 'a')} "
                                           "(whisker: noise band)", _x_axis(labels),
                                           axis("change in time per step (us)", zeroline=True), barmode="overlay")}


def on_cpu(doc: dict) -> bool:
    """Both runs were measured without a GPU (diff.json keeps each side's gpu_name; a CPU run has none)."""
    return all(not (doc[side].get("environment") or {}).get("gpu_name") for side in ("a", "b"))


def throughput_unit(doc: dict) -> tuple[float, str]:
    """TFLOP/s on a GPU; GFLOP/s on a CPU, where a TFLOP/s figure rounds to 0.0."""
    return (1e3, "GFLOP/s") if on_cpu(doc) else (1.0, "TFLOP/s")


def tflops_figure(doc: dict, table: pd.DataFrame) -> dict | None:
    gemm = table[table["tflops_a"].notna() | table["tflops_b"].notna()]
    if gemm.empty:
        return None
    scale, unit = throughput_unit(doc)
    labels = _labels(gemm)
    data = [{"type": "bar", "name": _side_name(doc, side), "x": labels,
             "y": (gemm[f"tflops_{side}"] * scale).round(2).tolist(), "marker": {"color": color},
             "hovertemplate": "%{x}: %{y:.3g} " + unit + "<extra>" + _side_name(doc, side) + "</extra>"}
            for side, color in (("a", COLORS["gemm"]), ("b", COLORS["softmax"]))]
    return {"data": data, "layout": layout("GEMM and fused-attention throughput (executed FLOPs)", _x_axis(labels),
                                           f"throughput ({unit})", barmode="group")}


def diff_answer(doc: dict, table: pd.DataFrame) -> Answer:
    """The per-component change, B minus A, coloured by verdict; the reading names the total and the rows that
    moved beyond noise."""
    table = table.assign(role=table["role"].astype(object).where(table["role"].notna(), "").astype(str))
    fig = delta_figure(doc, table)
    fig["layout"]["title"]["text"] = "Change in time per component, B minus A (whisker: noise band)"
    totals = doc.get("totals", {})
    ta, tb = totals.get("time_a_us") or table["time_a_us"].sum(), totals.get("time_b_us") or table["time_b_us"].sum()
    change = tb - ta
    reading = (f"Summed kernel time per step goes from {ta:,.1f} \u00b5s (A, {doc['a']['config']}) to {tb:,.1f} \u00b5s "
               f"(B, {doc['b']['config']}): {change:+,.1f} \u00b5s ({100 * change / ta:+.1f}%) " if ta else
               f"Summed kernel time per step: A {ta:,.1f} \u00b5s, B {tb:,.1f} \u00b5s ")
    reading += "(B slower)." if change > 0 else "(B faster)." if change < 0 else "(no change)."
    labels = _labels(table)
    beyond = table.assign(label=labels)[table["verdict"].isin(["slower in B", "faster in B"])]
    beyond = beyond.reindex(beyond["delta_us"].abs().sort_values(ascending=False).index)
    if len(beyond):
        reading += " Beyond noise: " + ", ".join(f"{r.label} {r.delta_us:+,.1f} \u00b5s" for r in beyond.head(4).itertuples())
        reading += f" ({len(beyond) - 4} more)" if len(beyond) > 4 else ""
        reading += "."
    counts = (totals.get("verdicts") or table["verdict"].value_counts().to_dict())
    reading += " Rows: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "."
    if on_cpu(doc):
        reading += " Both runs were measured on a CPU (host clock): the change shows the wiring, not a GPU."
    return Answer("What changed between the runs", fig, reading)


def inputs_table(doc: dict) -> pd.DataFrame:
    rows = []
    for side in ("a", "b"):
        s = doc[side]
        cfg, env = s.get("resolved_config") or {}, s.get("environment") or {}
        rows.append({"side": side.upper(), "config": s["config"], "run": s["run_dir"],
                     **{k: cfg.get(k) for k in CONFIG_FIELDS}, "mode": s.get("mode"),
                     "latency_us": s.get("latency_us"), "gpu": env.get("gpu_name"), "torch": env.get("torch"),
                     "measured": env.get("timestamp")})
    return pd.DataFrame(rows)


def diff_table(doc: dict, table: pd.DataFrame) -> pd.DataFrame:
    scale, unit = throughput_unit(doc)
    return pd.DataFrame({
        "component": _labels(table), "A (us)": table["time_a_us"], "B (us)": table["time_b_us"],
        "B - A (us)": table["delta_us"], "B - A (%)": table["delta_pct"], "noise band (us)": table["noise_band_us"],
        "verdict": table["verdict"], f"A {unit}": table["tflops_a"] * scale, f"B {unit}": table["tflops_b"] * scale,
        "A share (%)": table["share_a_pct"], "B share (%)": table["share_b_pct"]})


def diff_report_sections(doc: dict, table: pd.DataFrame) -> list[Section]:
    # diff.csv read back: an empty role comes as NaN
    table = table.assign(role=table["role"].astype(object).where(table["role"].notna(), "").astype(str))
    totals = doc.get("totals", {})
    counts = ", ".join(f"{n} {v}" for v, n in (totals.get("verdicts") or {}).items() if n)
    intro = (f"A = <b>{doc['a']['config']}</b>, B = <b>{doc['b']['config']}</b>. Summed kernel time per step: "
             f"A {totals.get('time_a_us', 0):,.1f} us, B {totals.get('time_b_us', 0):,.1f} us. Rows: {counts}.")
    figures = [time_figure(doc, table), delta_figure(doc, table)]
    tflops = tflops_figure(doc, table)
    if tflops is not None:
        figures.append(tflops)
    return [
        Section("Per component: A vs B", intro=intro, figures=figures, tables=[table_html(diff_table(doc, table))],
                notes=[n for n in (doc.get("noise_rule", ""), doc.get("clock_notice")) if n]),
        Section("What was compared", tables=[table_html(inputs_table(doc))]),
    ]


def _shown_dir(run_dir: str, page: Path) -> str:
    """A run directory as the page names it: relative to the page when the command was given an absolute path
    (no path of the machine that rendered it), else as given."""
    return os.path.relpath(run_dir, page.resolve().parent) if os.path.isabs(run_dir) else run_dir


def write_diff_report(doc: dict, table: pd.DataFrame, path: Path) -> Path:
    from profiler.outputs import write_atomic

    how = ["Each row is one step of the layer (component, and for a GEMM the operand its backward computes), "
           "matched between the two runs.",
           "Whiskers on the time chart run from p10 to p90 over the traced steps. A change no larger than the two "
           "spreads together is labelled 'within noise': the runs were measured apart, under their own clocks.",
           "Changes are B minus A: positive means B is slower."]
    path = Path(path)
    shown = {side: {**doc[side], "run_dir": _shown_dir(str(doc[side]["run_dir"]), path)} for side in ("a", "b")}
    doc = {**doc, **shown}
    cpu = on_cpu(doc)
    gpus = sorted({str((doc[s].get("environment") or {}).get("gpu_name")) for s in ("a", "b")} - {"None"})
    html = render_page(f"Run comparison: {doc['a']['config']} vs {doc['b']['config']}", diff_report_sections(doc, table),
                       environment=doc["b"].get("environment") or {}, how_to_read=how,
                       subtitle=f"{doc['a']['run_dir']} vs {doc['b']['run_dir']}", answer=diff_answer(doc, table),
                       device="CPU (both runs)" if cpu else " and ".join(gpus) or "unknown", on_cpu=cpu)
    return write_atomic(path, html)

"""The run comparison's HTML report: per component, A's and B's time with their p10-p90 spread, the change,
and which changes the measurement can tell from noise.

`diff_report_sections` is pure (diff.json document + diff table -> sections); `write_diff_report` renders
and writes the page. The table is profiler.run_diff.diff_components's, as diff.csv holds it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .html import COLORS, Section, axis, layout, render_page, table_html

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


def tflops_figure(doc: dict, table: pd.DataFrame) -> dict | None:
    gemm = table[table["tflops_a"].notna() | table["tflops_b"].notna()]
    if gemm.empty:
        return None
    labels = _labels(gemm)
    data = [{"type": "bar", "name": _side_name(doc, side), "x": labels, "y": gemm[f"tflops_{side}"].round(1).tolist(),
             "marker": {"color": color}, "hovertemplate": "%{x}: %{y:.0f} TFLOP/s<extra>" + _side_name(doc, side)
             + "</extra>"} for side, color in (("a", COLORS["gemm"]), ("b", COLORS["softmax"]))]
    return {"data": data, "layout": layout("GEMM and fused-attention throughput (executed FLOPs)", _x_axis(labels),
                                           "throughput (TFLOP/s)", barmode="group")}


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
    return pd.DataFrame({
        "component": _labels(table), "A (us)": table["time_a_us"], "B (us)": table["time_b_us"],
        "B - A (us)": table["delta_us"], "B - A (%)": table["delta_pct"], "noise band (us)": table["noise_band_us"],
        "verdict": table["verdict"], "A TFLOP/s": table["tflops_a"], "B TFLOP/s": table["tflops_b"],
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


def write_diff_report(doc: dict, table: pd.DataFrame, path: Path) -> Path:
    from profiler.outputs import write_atomic

    how = ["Each row is one step of the layer (component, and for a GEMM the operand its backward computes), "
           "matched between the two runs.",
           "Whiskers on the time chart run from p10 to p90 over the traced steps. A change no larger than the two "
           "spreads together is labelled 'within noise': the runs were measured apart, under their own clocks.",
           "Changes are B minus A: positive means B is slower."]
    html = render_page(f"Run comparison: {doc['a']['config']} vs {doc['b']['config']}", diff_report_sections(doc, table),
                       environment=doc["b"].get("environment") or {}, how_to_read=how,
                       subtitle=f"{doc['a']['run_dir']} vs {doc['b']['run_dir']}")
    return write_atomic(path, html)

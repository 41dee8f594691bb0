"""Report sections for profiler depth (issue 12): why each GEMM runs at its speed, and what each non-GEMM step
achieves against the copy bandwidth. Pure: a components table carrying profiler.explain.join_depth's
columns (one or more configs) in, `Section`s out, for the layer report to append.
"""

from __future__ import annotations

import pandas as pd

from profiler.roofline import LOW_BANDWIDTH_PCT

from .html import COLORS, Section, axis, layout, table_html

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _label(passname: str, component: str, role: str, passes: int) -> str:
    name = f"{component}.{role}" if role else component
    return name if passes == 1 else f"{name} ({'fwd' if passname == 'forward' else 'bwd'})"


def _rows(components: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in components:
        return components.iloc[0:0]
    df = components[components[column].notna()].copy()
    df["role"] = df["role"].fillna("") if "role" in df else ""
    df["label"] = [_label(p, c, r, components["pass"].nunique()) for p, c, r in zip(df["pass"], df["component"], df["role"])]
    return df


def gemm_roofline_figure(components: pd.DataFrame) -> dict | None:
    """Each GEMM's TFLOP/s inside the layer (bars) and its roofline, min(peak, intensity x bandwidth) (markers)."""
    df = _rows(components, "why")
    df = df[df["tflops"].notna()] if len(df) else df
    if df.empty:
        return None
    data = []
    for i, (config, part) in enumerate(df.groupby("config", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        data.append({"type": "bar", "name": f"{config}: achieved", "x": part["label"].tolist(),
                     "y": part["tflops"].round(1).tolist(), "marker": {"color": color},
                     "customdata": part["why"].tolist(), "offsetgroup": str(i),
                     "hovertemplate": "%{x}: %{y:.0f} TFLOP/s<br>%{customdata}<extra>" + config + "</extra>"})
        bound = part[part["roofline_tflops"].notna()] if "roofline_tflops" in part else part.iloc[0:0]
        if len(bound):
            data.append({"type": "scatter", "mode": "markers", "name": f"{config}: roofline",
                         "x": bound["label"].tolist(), "y": bound["roofline_tflops"].round(1).tolist(),
                         "marker": {"color": color, "symbol": "line-ew-open", "size": 18, "line": {"width": 3}},
                         "offsetgroup": str(i),  # drawn over its own config's bar (scattermode "group")
                         "hovertemplate": "%{x}: roofline %{y:.0f} TFLOP/s<extra>" + config + "</extra>"})
    return {"data": data, "layout": layout("GEMM throughput in the layer against each GEMM's roofline",
                                           axis("GEMM (component.role)", automargin=True, tickangle=-30),
                                           "throughput (TFLOP/s)", barmode="group", scattermode="group")}


def gemm_table(components: pd.DataFrame) -> pd.DataFrame:
    df = _rows(components, "why")
    if df.empty:
        return df
    columns = {"config": "config", "label": "GEMM", "time_us": "time (us)", "tflops": "TFLOP/s", "tile": "tile",
               "tiles": "tiles", "ctas": "CTAs", "waves": "waves", "last_wave_fill_pct": "last wave (%)",
               "tile_efficiency_pct": "tile use (%)", "why": "why"}
    return df[[c for c in columns if c in df]].rename(columns=columns)


def bandwidth_figure(components: pd.DataFrame) -> dict | None:
    """Each non-GEMM step's achieved bandwidth as a share of the copy bandwidth, the flag's threshold drawn."""
    df = _rows(components, "bandwidth_pct")
    if df.empty:
        return None
    data = [{"type": "bar", "name": config, "x": part["label"].tolist(), "y": part["bandwidth_pct"].round(1).tolist(),
             "marker": {"color": PALETTE[i % len(PALETTE)]},
             "customdata": (part["achieved_gbps"].round(0)).tolist(),
             "hovertemplate": "%{x}: %{y:.0f}% (%{customdata} GB/s)<extra>" + config + "</extra>"}
            for i, (config, part) in enumerate(df.groupby("config", sort=False))]
    lay = layout("Non-GEMM steps: achieved bandwidth against the measured copy bandwidth",
                 axis("step (pass)", automargin=True, tickangle=-30), "% of the copy bandwidth", barmode="group")
    lay["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
                      "line": {"dash": dash, "color": color}}
                     for y, dash, color in ((100, "dot", "#7f7f7f"), (LOW_BANDWIDTH_PCT, "dash", COLORS["unattributed"]))]
    lay["annotations"] = [{"xref": "paper", "x": 1, "y": LOW_BANDWIDTH_PCT, "showarrow": False, "xanchor": "right",
                           "yanchor": "bottom", "text": f"flagged below {LOW_BANDWIDTH_PCT:.0f}%"}]
    return {"data": data, "layout": lay}


def bandwidth_table(components: pd.DataFrame) -> pd.DataFrame:
    df = _rows(components, "bandwidth_pct")
    if df.empty:
        return df
    return pd.DataFrame({"config": df["config"], "step": df["label"], "time (us)": df["time_us"],
                         "MB moved": df["bytes_moved"] / 1e6, "GB/s": df["achieved_gbps"],
                         "% of copy": df["bandwidth_pct"], "flagged": df["low_bandwidth"].astype(bool)})


def depth_sections(components: pd.DataFrame, *, copy_source: str = "") -> list[Section]:
    """The two sections, each present only when the table has its columns."""
    sections = []
    fig = gemm_roofline_figure(components)
    if fig is not None:
        sections.append(Section(
            "Why each GEMM runs at its speed (tiles, waves, roofline)", figures=[fig],
            tables=[table_html(gemm_table(components))],
            intro="Tile and grid from the trace; tiles, waves and last-wave fill on this GPU's SMs (paper III-B); "
                  "a persistent kernel loops its CTAs over the tiles, so launch waves do not apply to it. The "
                  "roofline is min(measured peak, arithmetic intensity x copy bandwidth)."))
    fig = bandwidth_figure(components)
    if fig is not None:
        sections.append(Section(
            "Non-GEMM steps against the memory bandwidth", figures=[fig],
            tables=[table_html(bandwidth_table(components))], notes=[n for n in (copy_source,) if n],
            intro="Bytes each step's kernels move (profiler/roofline.py states the model of each), over its median "
                  "time. Above 100%: part of the traffic stayed in L2."))
    return sections

"""Render a self-contained HTML page: jinja2 template + plotly.js (basic bundle) inlined, no CDN.

Reports build a context (pure: DataFrames -> figure dicts and tables) and hand it here. Figures are
plain plotly JSON ({"data": [...], "layout": {...}}), so building them needs no plotting library.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources

import jinja2
import pandas as pd

# the paper's Figure 2 palette, reused for the same components everywhere
COLORS = {
    "gemm": "#1f77b4", "flash_attention": "#7f7f7f", "softmax": "#ff7f0e", "dropout": "#2ca02c",
    "norm": "#e6c229", "other": "#9467bd", "rotary": "#17becf", "activation": "#8c564b",
    "residual": "#e377c2", "layout": "#bcbd22", "unattributed": "#d62728",
    "qkv_transform": "#1f77b4", "attention_score": "#ff7f0e", "attention_over_values": "#2ca02c",
    "out_projection": "#e6c229", "mlp_up": "#9467bd", "mlp_gate": "#c5b0d5", "mlp_down": "#8fbc8f",
    "logits": "#393b79", "non_gemm": "#d62728",
}


@dataclass
class Section:
    title: str
    intro: str = ""  # trusted HTML written by the report code, not user input
    figures: list[dict] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # HTML from `table_html`
    notes: list[str] = field(default_factory=list)  # plain text, escaped on render


def _clean(value):
    """JSON cannot carry NaN or numpy scalars; plotly wants null for a gap."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def table_html(df: pd.DataFrame, *, float_format: str = "{:,.2f}", max_rows: int = 500) -> str:
    shown = df.head(max_rows)
    formatters = {c: (lambda v, f=float_format: "" if pd.isna(v) else f.format(v))
                  for c in shown.columns if pd.api.types.is_float_dtype(shown[c])}
    return shown.to_html(index=False, classes="data", border=0, formatters=formatters, na_rep="", escape=True)


def _plotly_js() -> str:
    return resources.files("reports").joinpath("assets/plotly-basic.min.js").read_text()


def render_page(title: str, sections: list[Section], *, environment: dict | None = None,
                subtitle: str = "") -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    figures = []
    for s_index, section in enumerate(sections):
        for f_index, fig in enumerate(section.figures):
            figures.append({"id": f"fig-{s_index}-{f_index}", "section": s_index,
                            "json": json.dumps(_clean(fig), separators=(",", ":")).replace("</", "<\\/")})
    return env.get_template("page.html.j2").render(
        title=title, subtitle=subtitle, sections=sections, figures=figures,
        environment=environment or {}, plotly_js=_plotly_js(), escape=html.escape)

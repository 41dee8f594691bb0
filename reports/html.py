"""Render an HTML page: jinja2 template + plotly.js (basic bundle), inlined or linked, never a CDN.

Reports build a context (pure: DataFrames -> figure dicts and tables) and hand it here. Figures are
plain plotly JSON ({"data": [...], "layout": {...}}), so building them needs no plotting library; build
their layouts with `layout` / `axis`, since plotly.js 3 and later silently ignore a plain-string title.
`render_page` checks every figure: one without a title, or without a title on an axis it draws, is a
programming error raised at render time, so an unlabelled chart never ships.

plotly.js reaches the page one of two ways:
- self-contained (the default): the bundle is inlined, so the page opens offline anywhere (~1.2 MB);
- linked: `<script src=...>` to one shared copy, for committed evidence where a dozen pages would
  otherwise each carry the same bundle. Pass `plotly_src="../assets/plotly-basic.min.js"` (relative to
  the page), or wrap report writers that do not take the argument in `with linked_plotly(src): ...`.
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import json
import math
import re
from collections.abc import Iterator, Sequence
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
PLOTLY_ASSET = "assets/plotly-basic.min.js"  # inside the reports package
# trace types drawn without x/y axes; a figure made only of these may opt out of axis titles (no_axes)
AXISLESS_TRACES = {"pie", "table", "sunburst", "treemap", "funnelarea", "indicator", "sankey", "parcoords",
                   "parcats"}
# shared by every figure: the top margin leaves a band for plotly's toolbar (modebar) above the title,
# so the toolbar never covers it; a figure's own layout overrides any of these
BASE_LAYOUT = {"margin": {"t": 72, "r": 16, "b": 56, "l": 64}, "font": {"size": 12},
               "title": {"y": 1, "yref": "paper", "yanchor": "bottom", "pad": {"b": 12}}}

_LONG_CELL = re.compile(r"<td>([^<]{41,})</td>")
_plotly_src: contextvars.ContextVar[str | None] = contextvars.ContextVar("plotly_src", default=None)


class FigureError(ValueError):
    """A figure a reader could not read (no title, an unlabelled axis): a bug in the report code."""


@dataclass
class Section:
    """One card of the page. A card with charts opens expanded, its tables and notes folded inside it; a
    card without charts (tables, methods, per-row warnings) starts folded: the detail is a click away.
    `open=True` opens a card without charts (a folded chart would draw at no size, so charts never fold)."""
    title: str
    intro: str = ""  # trusted HTML written by the report code, not user input
    figures: list[dict] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # HTML from `table_html`
    notes: list[str] = field(default_factory=list)  # plain text, escaped on render
    open: bool | None = None

    @property
    def expanded(self) -> bool:
        return bool(self.figures) or bool(self.open)


@dataclass
class Answer:
    """What the page answers, first on it: one chart (drawn in `#answer-chart`) and a one-paragraph reading,
    plain text written from the same data the chart draws (never static prose)."""
    title: str
    figure: dict
    reading: str


ANSWER_ID = "answer-chart"


def grouped_notes(notes: Sequence[str]) -> list[str]:
    """Notes with repeats folded into one, counted: 'text (x3)', in the order they first appear."""
    counts: dict[str, int] = {}
    for note in notes:
        counts[note] = counts.get(note, 0) + 1
    return [note if n == 1 else f"{note} (\u00d7{n})" for note, n in counts.items()]


def table_rows(table: str) -> int:
    """Body rows of a `table_html` table (for the fold's label)."""
    return max(0, table.count("<tr") - 1)


def axis(title: str, **extra) -> dict:
    """A plotly axis with a title; say the unit in it, e.g. axis("latency (ms)", type="log")."""
    return {**extra, "title": {**extra.get("title", {}), "text": title}}


def layout(title: str, x: str | dict | None = None, y: str | dict | None = None, **extra) -> dict:
    """A plotly layout with a chart title and x / y axis titles (a string, or an `axis(...)` dict).
    Further axes (yaxis2, ...) and options go in `extra`."""
    out = {**extra, "title": {**extra.get("title", {}), "text": title}}
    for key, value in (("xaxis", x), ("yaxis", y)):
        if value is not None:
            out[key] = axis(value) if isinstance(value, str) else value
    return out


def no_axes(fig: dict, reason: str) -> dict:
    """Mark a figure drawn without x/y axes (a pie, a table) so that its missing axis titles are not an
    error; the reason is kept on the figure. Its traces must all be of such a type."""
    return {**fig, "no_axes": reason}


def _title_text(obj) -> str:
    title = obj.get("title") if isinstance(obj, dict) else None
    return str(title.get("text") or "").strip() if isinstance(title, dict) else ""


def figure_problems(fig: dict) -> list[str]:
    """What a reader would miss in `fig`: its title, or the title of an axis one of its traces uses."""
    lay = fig.get("layout") or {}
    problems = []
    if isinstance(lay.get("title"), str):
        problems.append("the title is a plain string, which plotly.js ignores: use layout(title, ...)")
    elif not _title_text(lay):
        problems.append("no title text")
    traces = fig.get("data") or []
    if fig.get("no_axes"):
        cartesian = sorted({t.get("type", "scatter") for t in traces} - AXISLESS_TRACES)
        if cartesian:
            problems.append(f"marked no_axes ({fig['no_axes']}) but draws {', '.join(cartesian)} traces on axes")
        return problems
    axisless = sorted({t.get("type", "scatter") for t in traces} & AXISLESS_TRACES)
    if axisless and all(t.get("type", "scatter") in AXISLESS_TRACES for t in traces):
        problems.append(f"draws no x/y axes ({', '.join(axisless)}): say so with no_axes(fig, reason)")
    used = []
    for trace in traces:
        if trace.get("type", "scatter") in AXISLESS_TRACES:
            continue
        for letter in ("x", "y"):  # a trace's "xaxis": "x2" draws on layout["xaxis2"]
            ref = trace.get(f"{letter}axis") or letter
            name = f"{letter}axis{ref[1:]}"
            if name not in used:
                used.append(name)
    for name in used:
        value = lay.get(name)
        if isinstance(value, dict) and isinstance(value.get("title"), str):
            problems.append(f"{name}'s title is a plain string, which plotly.js ignores: use axis(title)")
        elif not _title_text(value):
            problems.append(f"no {name} title")
    if not traces:
        problems.append("no traces")
    return problems


def check_figures(sections: Sequence[Section], answer: Answer | None = None) -> None:
    """Raise FigureError naming every figure that lacks a title or an axis title."""
    found = []
    if answer is not None:
        sections = [Section("answer", figures=[answer.figure]), *sections]
    for section in sections:
        for index, fig in enumerate(section.figures):
            problems = figure_problems(fig)
            if problems:
                lay = fig.get("layout") or {}
                name = _title_text(lay) or (lay.get("title") if isinstance(lay.get("title"), str) else "") \
                    or f"figure {index + 1}"
                found.append(f"section '{section.title}', {name!r}: {'; '.join(problems)}")
    if found:
        raise FigureError("figures a reader cannot read:\n  " + "\n  ".join(found))


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


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _whole(values: pd.Series) -> bool:
    present = values.dropna()
    return bool(len(present)) and bool(((present % 1) == 0).all())


def table_html(df: pd.DataFrame, *, float_format: str = "{:,.2f}", max_rows: int = 500) -> str:
    """An HTML table; whole numbers print as whole numbers (int columns, and float columns whose values
    are all integral), other floats with `float_format`."""
    shown = df.head(max_rows)
    formatters = {}
    for column in shown.columns:
        values = shown[column]
        if pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_integer_dtype(values) or (pd.api.types.is_float_dtype(values) and _whole(values)):
            formatters[column] = lambda v: "" if pd.isna(v) else f"{int(v):,}"
        elif pd.api.types.is_float_dtype(values):
            formatters[column] = lambda v, f=float_format: "" if pd.isna(v) else f.format(v)
    table = shown.to_html(index=False, classes="data", border=0, formatters=formatters, na_rep="", escape=True)
    # cells stay on one line (no "pythia-" / "70m" split) except long text, which wraps in a wide column
    return _LONG_CELL.sub(r'<td class="long">\1</td>', table)


def plotly_js() -> str:
    return resources.files("reports").joinpath(PLOTLY_ASSET).read_text()


@contextlib.contextmanager
def linked_plotly(src: str) -> Iterator[None]:
    """Pages rendered inside this block link plotly.js at `src` (relative to the page) instead of
    inlining it; for report writers that do not pass `plotly_src` themselves."""
    token = _plotly_src.set(src)
    try:
        yield
    finally:
        _plotly_src.reset(token)


def render_page(title: str, sections: list[Section], *, environment: dict | None = None, subtitle: str = "",
                how_to_read: str | Sequence[str] = "", plotly_src: str | None = None, answer: Answer | None = None,
                device: str = "", on_cpu: bool = False) -> str:
    """The page's HTML. `answer`: the chart and reading shown first, in `#answer-chart`. `device`: what the
    data was measured on, said in the header; `on_cpu` adds that CPU numbers prove the wiring, not GPU
    performance. `how_to_read`: plain text (a string, or a list of points), folded under the answer.
    `plotly_src`: link plotly.js from this URL (relative to the page) instead of inlining it; default:
    the enclosing `linked_plotly` block's, else inline. Raises FigureError for an unreadable figure."""
    check_figures(sections, answer)
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    figures = []
    if answer is not None:
        payload = {"data": answer.figure.get("data") or [],
                   "layout": _merge(BASE_LAYOUT, answer.figure.get("layout") or {})}
        figures.append({"id": ANSWER_ID, "section": None, "no_axes": answer.figure.get("no_axes"),
                        "json": json.dumps(_clean(payload), separators=(",", ":")).replace("</", "<\\/")})
    for s_index, section in enumerate(sections):
        for f_index, fig in enumerate(section.figures):
            payload = {"data": fig.get("data") or [], "layout": _merge(BASE_LAYOUT, fig.get("layout") or {})}
            figures.append({"id": f"fig-{s_index}-{f_index}", "section": s_index, "no_axes": fig.get("no_axes"),
                            "json": json.dumps(_clean(payload), separators=(",", ":")).replace("</", "<\\/")})
    src = plotly_src if plotly_src is not None else _plotly_src.get()
    points = [how_to_read] if isinstance(how_to_read, str) else list(how_to_read)
    return env.get_template("page.html.j2").render(
        title=title, subtitle=subtitle, sections=sections, figures=figures, environment=environment or {},
        how_to_read=[p for p in points if p], plotly_src=src, plotly_js=None if src else plotly_js(),
        escape=html.escape, answer=answer, device=device, on_cpu=on_cpu, grouped_notes=grouped_notes,
        table_rows=table_rows)

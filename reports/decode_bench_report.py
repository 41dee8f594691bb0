"""HTML pages of two decode-engine benchmarks (scripts/bench_invariant_decode.py, scripts/bench_prefill_vs_layers.py).

- `invariant_decode_page(record)`: does one prompt give one completion in every batch, and at what cost? The
  answer chart is invariant / default step time against batch, one line per context, with the 1.10 target;
  the requests card counts unique completions and last-step logits per mode.
- `prefill_page(record)`: is the engine's prefill the profiler's layer x L + logits? The answer chart is the
  ratio per (model, batch, prompt) with the 0.90-1.10 band.

Both are pure functions of the JSON the benchmark wrote; `write_report(folder)` renders the page beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .html import Answer, Section, axis, layout, render_page, table_html

INVARIANT_FILE, PREFILL_FILE = "invariant_decode.json", "prefill_vs_layers.json"
def empty_figure(what: str) -> dict:
    """A chart with nothing measured in it, said in its title and legend (a page still opens on its answer)."""
    return {"data": [{"type": "scatter", "mode": "markers", "name": f"no {what} measured", "x": [], "y": []}],
            "layout": layout(f"No {what} measured", "batch", "ratio")}


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
MISSED = "#d62728"


def _device(env: dict) -> str:
    return env.get("gpu_name") or "CPU"


def cost_figure(cost: pd.DataFrame, limit: float) -> dict:
    data = []
    for i, (context, part) in enumerate(cost.groupby("context")):
        part = part.sort_values("batch")
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"context {context}",
                     "x": part["batch"].tolist(), "y": part["ratio"].tolist(), "line": {"color": PALETTE[i % len(PALETTE)]},
                     "error_y": {"type": "data", "symmetric": False,
                                 "array": (part["ratio_max"] - part["ratio"]).tolist(),
                                 "arrayminus": (part["ratio"] - part["ratio_min"]).tolist()},
                     "hovertemplate": "batch %{x}: %{y:.3f}x<extra>context " + str(context) + "</extra>"})
    xs = sorted(cost["batch"].unique().tolist())
    data.append({"type": "scatter", "mode": "lines", "name": f"target {limit:.2f}x", "x": [xs[0], xs[-1]],
                 "y": [limit, limit], "line": {"dash": "dash", "color": "#888"}})
    return {"data": data, "layout": layout("Invariant decode step / default decode step",
                                           axis("batch (rows per decode step)", type="log"),
                                           axis("step time ratio (invariant / default)"))}


def invariant_reading(record: dict) -> str:
    requests = record.get("requests", {})
    inv, default = requests.get("invariant", {}), requests.get("default", {})
    cost = [r for r in record.get("cost", []) if "ratio" in r]
    parts = []
    if inv:
        parts.append(f"{inv['requests']} copies of one prompt in {inv['batches']} batches gave "
                     f"{inv['unique_completions']} unique completion(s) and {inv['unique_last_logits']} unique "
                     f"last-step logits row(s) in invariant mode")
    if default:
        parts.append(f"the default kernels gave {default['unique_completions']} completion(s) and "
                     f"{default['unique_last_logits']} distinct logits rows on the same schedule")
    if cost:
        worst = max(cost, key=lambda r: r["ratio"])
        met = sum(r["met"] for r in cost)
        parts.append(f"invariant decode cost {min(r['ratio'] for r in cost):.3f}-{worst['ratio']:.3f}x the default "
                     f"step ({met} of {len(cost)} cells within the 1.10 target; worst at batch {worst['batch']}, "
                     f"context {worst['context']})")
    return "; ".join(parts) + "." if parts else "No rows measured."


def invariant_decode_page(record: dict, plotly_src: str | None = None) -> str:
    cost = pd.DataFrame([r for r in record.get("cost", []) if "ratio" in r])
    settings, env = record.get("settings", {}), record.get("environment", {})
    answer = Answer("One prompt, many batches: one completion, at what cost?",
                    cost_figure(cost, 1.10) if not cost.empty else
                    empty_figure("cost rows"), invariant_reading(record))
    kernels = pd.DataFrame(record.get("kernels", []))
    requests = pd.DataFrame([{"mode": m, **{k: v for k, v in s.items() if k != "batch_sizes_that_differ"}}
                             for m, s in record.get("requests", {}).items()])
    sweep = [c for c in cost.columns if c.startswith("ratio_invariant-") and not c.endswith(("_min", "_max"))]
    sections = [
        Section("Requests", "Each copy's greedy completion and its last decode step's logits row, hashed.",
                tables=[table_html(requests)] if not requests.empty else []),
        Section("Kernel per decode GEMM", "What profiler.invariance.choose proved bitwise over M on this GPU.",
                tables=[table_html(kernels[["n", "k", "kernel", "proven", "reason"]])] if not kernels.empty else []),
        Section("Cost per cell", "Step medians of both modes timed pass by pass in turn; ratios per pass, median "
                "[min, max]" + ("; the split-size sweep's ratios beside" if len(sweep) > 1 else ""),
                tables=[table_html(cost[["batch", "context", "default_ms", "invariant_ms", "ratio", "ratio_min",
                                         "ratio_max", "splits_default", "splits_invariant", *sweep]])]
                if not cost.empty else []),
    ]
    return render_page(f"Batch-invariant decode: {settings.get('model', '')}", sections, environment=env,
                       subtitle=record.get("settings", {}).get("timing", ""), answer=answer, plotly_src=plotly_src,
                       device=_device(env), on_cpu=not env.get("gpu_name"))


def prefill_figure(rows: pd.DataFrame) -> dict:
    labels = [f"{r.model} b={r.batch} p={r.prompt_len}" for r in rows.itertuples()]
    return {"data": [{"type": "scatter", "mode": "markers", "name": "prefill / (L x layer + logits), median [min, max] over rounds",
                      "x": labels, "y": rows["ratio"].tolist(),
                      "error_y": {"type": "data", "symmetric": False, "array": (rows["ratio_max"] - rows["ratio"]).tolist(),
                                  "arrayminus": (rows["ratio"] - rows["ratio_min"]).tolist()},
                      "marker": {"size": 11, "color": [PALETTE[0] if ok else MISSED for ok in rows["within_10pct"]]}},
                     {"type": "scatter", "mode": "lines", "name": "0.90 and 1.10", "x": [labels[0], labels[-1], None,
                                                                                         labels[0], labels[-1]],
                      "y": [0.9, 0.9, None, 1.1, 1.1], "line": {"dash": "dash", "color": "#888"}}],
            "layout": layout("Engine prefill against the profiler's layer x L + logits",
                             axis("model, batch, prompt", automargin=True),
                             axis("time ratio (prefill / layer stack)", automargin=True),
                             # beside the plot: below it, the rotated cell labels push the x title into the legend
                             legend={"x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})}


def prefill_page(record: dict, plotly_src: str | None = None) -> str:
    rows = pd.DataFrame([r for r in record.get("rows", []) if r.get("status") == "ok"])
    env = record.get("environment", {})
    if rows.empty:
        reading, fig = "No cell measured.", empty_figure("cells")
    else:
        inside = int(rows["within_10pct"].sum())
        far = rows.loc[(rows["ratio"] - 1).abs().idxmax()]
        reading = (f"{inside} of {len(rows)} cells within 10% of the profiler's forward x layers + logits (ratios "
                   f"{rows['ratio'].min():.3f}-{rows['ratio'].max():.3f}); farthest: {far['model']} b={far['batch']} "
                   f"p={far['prompt_len']} at {far['ratio']:.3f}x.")
        fig = prefill_figure(rows)
    cols = ["model", "batch", "prompt_len", "prefill_ms", "layer_ms", "logits_ms", "layers", "stack_ms", "ratio",
            "ratio_min", "ratio_max", "prefill_last_ms", "within_10pct"]
    sections = [Section("Cells", "Medians over rounds; the ratio per round, median [min, max].",
                        tables=[table_html(rows[[c for c in cols if c in rows]])] if not rows.empty else [])]
    return render_page("Decode engine prefill vs the layer profiler", sections, environment=env,
                       subtitle=record.get("settings", {}).get("timing", ""),
                       answer=Answer("Does the engine's prefill cost what the profiled layers say?", fig, reading),
                       plotly_src=plotly_src, device=_device(env), on_cpu=not env.get("gpu_name"))


def write_report(folder: str | Path, plotly_src: str | None = None) -> Path:
    folder = Path(folder)
    if (folder / INVARIANT_FILE).is_file():
        page = invariant_decode_page(json.loads((folder / INVARIANT_FILE).read_text()), plotly_src)
    elif (folder / PREFILL_FILE).is_file():
        page = prefill_page(json.loads((folder / PREFILL_FILE).read_text()), plotly_src)
    else:
        raise FileNotFoundError(f"{folder}: neither {INVARIANT_FILE} nor {PREFILL_FILE}")
    out = folder / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out

"""The batch-invariance report (issue 11): result directories -> DataFrames (profiler.invariance.analysis) ->
plotly figure dicts and tables -> one HTML page, plus the short summary table the GPU script prints.

Sections, each present when its results are: GEMM throughput vs tokens (the seed chart: TFLOP/s vs number of
tokens, log x, one line per kernel), the invariant / cuBLAS ratio, where cuBLAS was not invariant (M and K
searches), the layer's logits / tokens / first differing step and its latency cost, and the engines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from profiler.invariance import analysis, files
from profiler.invariance.matmul_bench import KERNEL_LABELS

from .html import Answer, Section, axis, layout, render_page, table_html

KERNEL_COLORS = {"torch": "#1f77b4", "invariant": "#d62728",  # the seed chart: blue cuBLAS, red invariant
                 "cublaslt": "#9467bd", "triton": "#ff7f0e"}  # the invariant path's candidates, thin and dotted
CANDIDATE_LINE = {"width": 1, "dash": "dot"}
SET_COLORS = {"default": "#1f77b4", "invariant": "#d62728"}
LINE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
TOKENS_AXIS = axis("number of tokens M (rows of the GEMM)", type="log")


def _shape_title(row) -> str:
    return f"{row['config']} {row['component']} (M,{int(row['k'])})x({int(row['k'])},{int(row['n'])})"


CPU_LABELS = {"torch": "torch (CPU BLAS)", "invariant": "Batch-invariant (Triton interpreter)",
              "cublaslt": "torch, split-K flags set (CPU BLAS)", "triton": "Batch-invariant Triton (interpreter)"}


def kernel_labels(runs: dict[str, dict]) -> dict[str, str]:
    """The seed chart's names on a GPU; on a CPU torch is not cuBLAS and Triton is its interpreter."""
    env = (runs.get("matmul") or {}).get("environment") or {}
    return CPU_LABELS if env.get("device") == "cpu" else KERNEL_LABELS


def throughput_figures(throughput: pd.DataFrame, labels: dict[str, str] = KERNEL_LABELS) -> list[dict]:
    """One chart per config x shape: TFLOP/s vs tokens, both kernels (the seed chart, per Table II GEMM)."""
    figures = []
    for _, group in throughput.groupby(["config", "component", "n", "k"], sort=False):
        first = group.iloc[0]
        data = []
        for kernel, rows in group.groupby("kernel", sort=False):
            rows = rows.sort_values("m")
            data.append({"type": "scatter", "mode": "lines+markers", "name": labels.get(kernel, kernel),
                         "x": rows["m"].tolist(), "y": rows["tflops"].tolist(),
                         "error_y": {"type": "data", "symmetric": False, "visible": True,
                                     "array": (rows["tflops"] * (rows["median_us"] / rows["p10_us"] - 1)).tolist(),
                                     "arrayminus": (rows["tflops"] * (1 - rows["median_us"] / rows["p90_us"])).tolist()},
                         "text": [f"{m} tokens: {t:.1f} TFLOP/s, median {u:.1f} us (p10 {a:.1f}, p90 {b:.1f})"
                                  + (f", tile {tile}" if tile else "")
                                  for m, t, u, a, b, tile in zip(rows["m"], rows["tflops"], rows["median_us"],
                                                                 rows["p10_us"], rows["p90_us"], rows["tile"])],
                         "hovertemplate": "%{text}<extra></extra>",
                         "line": {"color": KERNEL_COLORS.get(kernel),
                                  **(CANDIDATE_LINE if kernel in ("cublaslt", "triton") else {})},
                         "marker": {"color": KERNEL_COLORS.get(kernel)}})
        figures.append({"data": data, "layout": layout(f"{_shape_title(first)}: TFLOP/s vs number of tokens",
                                                       TOKENS_AXIS, axis("throughput (TFLOP/s)", type="log"))})
    return figures


def search_figure(check: pd.DataFrame, labels: dict[str, str] = KERNEL_LABELS) -> dict | None:
    """One shape's invariance search: each kernel's M, green where every compared row was bitwise its product
    alone, a red cross where some row was not (the chart beside that shape's TFLOP/s chart)."""
    if check.empty:
        return None
    first = check.iloc[0]
    data = []
    for kernel, rows in check.groupby("kernel", sort=False):
        name = labels.get(kernel, kernel)
        for ok, part in rows.groupby(rows["invariant"].astype(bool)):
            data.append({"type": "scatter", "mode": "markers", "name": f"{name}: {'invariant' if ok else 'NOT invariant'}",
                         "x": part["m"].tolist(), "y": [name] * len(part),
                         "text": [f"M={m}: max |diff| {d:.3g}" for m, d in zip(part["m"], part["alone_max_abs_diff"])],
                         "hovertemplate": "%{text}<extra></extra>",
                         "marker": {"size": 5 if ok else 8, "color": "#2ca02c" if ok else "#d62728",
                                    "symbol": "circle-open" if ok else "x"}})
    return {"data": data, "layout": layout(f"{_shape_title(first)}: bitwise invariance over M", TOKENS_AXIS,
                                           axis("kernel", type="category", automargin=True), showlegend=False)}


def shape_figures(throughput: pd.DataFrame, check: pd.DataFrame | None, labels: dict[str, str]) -> list[dict]:
    """Per shape, its TFLOP/s chart and (where searched) its invariance search beside it."""
    figures = []
    for (config, component, n, k), group in throughput.groupby(["config", "component", "n", "k"], sort=False):
        figures += throughput_figures(group, labels)
        if check is not None:
            mine = check[(check["config"] == config) & (check["component"] == component) & (check["n"] == n)
                         & (check["k"] == k)]
            figure = search_figure(mine, labels)
            if figure:
                figures.append(figure)
    return figures


def ratio_figure(throughput: pd.DataFrame) -> dict:
    ratio = analysis.throughput_ratio(throughput)
    layer = analysis.layer_gemm_ratio(throughput, tokens=tuple(sorted(throughput["m"].unique())))
    data = []
    for i, ((config, component, n, k), rows) in enumerate(ratio.groupby(["config", "component", "n", "k"], sort=False)):
        rows = rows.sort_values("m")
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{config} {component} N={n} K={k}",
                     "x": rows["m"].tolist(), "y": rows["ratio"].tolist(),
                     "line": {"color": LINE_COLORS[i % len(LINE_COLORS)], "width": 1.2}})
    for config, rows in layer.groupby("config", sort=False):
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{config}: all weight GEMMs of the layer",
                     "x": rows["m"].tolist(), "y": rows["ratio"].tolist(), "line": {"color": "#000", "width": 3}})
    return {"data": data, "layout": layout("Invariant / cuBLAS throughput vs number of tokens", TOKENS_AXIS,
                                           axis("throughput ratio (invariant / cuBLAS)", rangemode="tozero"))}


def check_figures(check: pd.DataFrame, labels: dict[str, str] = KERNEL_LABELS) -> list[dict]:
    """Largest |row alone - the same row inside M rows| per M: zero where a kernel is invariant."""
    figures = []
    layer_shapes = check[check["component"] != "k-search"]
    for kernel, rows in layer_shapes.groupby("kernel", sort=False):
        data = []
        for i, ((config, component, n, k), g) in enumerate(rows.groupby(["config", "component", "n", "k"], sort=False)):
            g = g.sort_values("m")
            data.append({"type": "scatter", "mode": "markers", "name": f"{config} {component} N={n} K={k}",
                         "x": g["m"].tolist(), "y": g["alone_max_abs_diff"].tolist(),
                         "marker": {"size": 4, "color": LINE_COLORS[i % len(LINE_COLORS)]}})
        figures.append({"data": data, "layout": layout(
            f"{labels.get(kernel, kernel)}: a row alone vs inside M rows", TOKENS_AXIS,
            axis("max |difference| (0 = bitwise invariant)"))})
    k_rows = check[check["component"] == "k-search"]
    for kernel, rows in k_rows.groupby("kernel", sort=False):
        bad = rows[~rows["invariant"].astype(bool)]
        good = rows[rows["invariant"].astype(bool)]
        data = [{"type": "scatter", "mode": "markers", "name": "invariant", "x": good["m"].tolist(), "y": good["k"].tolist(),
                 "marker": {"size": 5, "color": "#2ca02c", "symbol": "circle-open"}},
                {"type": "scatter", "mode": "markers", "name": "not invariant", "x": bad["m"].tolist(), "y": bad["k"].tolist(),
                 "text": [f"M={m} K={k}: max |diff| {d:.3g}" for m, k, d in
                          zip(bad["m"], bad["k"], bad["alone_max_abs_diff"])],
                 "hovertemplate": "%{text}<extra></extra>", "marker": {"size": 7, "color": "#d62728", "symbol": "x"}}]
        n = int(rows["n"].iloc[0]) if len(rows) else 0
        figures.append({"data": data, "layout": layout(
            f"{labels.get(kernel, kernel)}: where invariance breaks over M and K (N={n})", TOKENS_AXIS,
            axis("inner dimension K", type="log"))})
    return figures


def layer_figures(steps: pd.DataFrame, latency: pd.DataFrame) -> list[dict]:
    figures = []
    breaks = analysis.step_breaks(steps)
    for config, rows in (breaks.groupby("config", sort=False) if not breaks.empty else []):
        data = []
        for kernels, g in rows.groupby("kernels", sort=False):
            labels = [f"{i}: {s}" for i, s in zip(g["index"], g["step"])]
            data.append({"type": "bar", "name": f"{kernels} kernels", "x": labels, "y": g["runs_differing"].tolist(),
                         "text": [f"{n} of {r} runs differ here, first to differ in {f}" for n, r, f in
                                  zip(g["runs_differing"], g["runs"], g["runs_first"])],
                         "hovertemplate": "%{x}: %{text}<extra></extra>", "marker": {"color": SET_COLORS.get(kernels)}})
        figures.append({"data": data, "layout": layout(
            f"{config}: steps whose output differs alone vs in a batch (forward order)",
            axis("step of the forward (regions of models/layer.py)", automargin=True, tickangle=-35),
            axis("runs where the step differed", rangemode="tozero"), barmode="group")})
    if latency.empty:
        return figures
    cost = analysis.latency_cost(latency)
    for config, rows in latency.groupby("config", sort=False):
        data = []
        for kernels, g in rows.groupby("kernels", sort=False):
            g = g.sort_values("tokens_in_flight")
            data.append({"type": "scatter", "mode": "lines+markers", "name": f"{kernels} kernels",
                         "x": g["tokens_in_flight"].tolist(), "y": (g["median_us"] / 1e3).tolist(),
                         "line": {"color": SET_COLORS.get(kernels)}})
        c = cost[cost["config"] == config].sort_values("tokens_in_flight")
        if "slowdown" in c:
            data.append({"type": "scatter", "mode": "lines", "name": "invariant / default (right axis)",
                         "x": c["tokens_in_flight"].tolist(), "y": c["slowdown"].tolist(), "yaxis": "y2",
                         "line": {"color": "#555", "dash": "dot"}})
        figures.append({"data": data, "layout": layout(
            f"{config}: forward latency, default vs batch-invariant kernels",
            axis("tokens in flight (batch x prompt length)", type="log"), axis("latency (ms)", type="log"),
            yaxis2=axis("slowdown (invariant / default)", overlaying="y", side="right", rangemode="tozero"),
            legend={"orientation": "h", "y": -0.3}, margin={"r": 72, "b": 96})})
    return figures


def build_sections(frames: dict[str, pd.DataFrame], runs: dict[str, dict]) -> list[Section]:
    sections = []
    labels = kernel_labels(runs)
    choice = frames.get("choice")
    if choice is not None:
        families = (runs.get("matmul") or {}).get("mma_families") or {}
        sections.append(Section(
            "Kernel choice per GEMM",
            "Each weight-GEMM shape gets the fastest kernel that passed a bitwise probe on this GPU "
            "(<code>profiler.invariance.choose</code>): cuBLAS with its defaults where it passes, cuBLASLt with "
            "split-K off (torch's <code>allow_bf16_reduced_precision_reduction = (False, False)</code> on the "
            "cuBLASLt backend), the Triton kernel (BLOCK_K fixed per (N, K), other tile sizes by M bucket), or two "
            "of them split at an M below which the first one's rows are bitwise the second one's. The probe "
            "compares, at every M of its sweep, each row with the same row of the largest product and with its "
            "one-row product; the pick is then proven as it runs (<i>sweep</i>: the M the proof covered). "
            "<i>reason</i> says what passed, what did not and the throughput ratios (CUDA-graph timed) the choice "
            "was made on.",
            tables=[table_html(analysis.choice_table(choice), float_format="{:,.3g}")],
            notes=["MMA instruction per compiled Triton configuration: "
                   + ", ".join(f"{cfg}: {fam}" for cfg, fam in sorted(families.items()))] if families else []))
    throughput = frames.get("throughput")
    if throughput is not None:
        at = analysis.layer_gemm_ratio(throughput)
        sections.append(Section(
            "Batch-invariant GEMM: throughput vs number of tokens",
            "TFLOP/s of each weight GEMM of the layer (Table II) as the number of tokens M grows (each call "
            "replayed from a CUDA graph unless the run says otherwise: GPU time, the host's launch cost left out), for torch "
            "(cuBLAS picks a kernel per shape and M, split-K included) and the batch-invariant path (the kernel chosen "
            "for the shape on this GPU, next section; dotted: its candidates on their own where measured). Beside "
            "each, the invariance search over M for the same shape. Error bars: p10-p90. The ratio chart puts all "
            "shapes on one axis; the thick line weighs every GEMM of the layer by its time. The first table: "
            f"invariant/cuBLAS at the issue's token counts, median and minimum over every M (targets: median >= "
            f"{analysis.TARGET_MEDIAN}, no M below {analysis.TARGET_MIN}).",
            figures=shape_figures(throughput, frames.get("check"), labels) + [ratio_figure(throughput)],
            tables=[table_html(analysis.ratio_summary(throughput), float_format="{:,.3f}")]
            + ([table_html(at, float_format="{:,.3f}")] if not at.empty else []),
            notes=[f"the invariant kernel differs from torch by at most {throughput['max_abs_diff_vs_torch'].max():.3g} "
                   "(different reduction order, same math)"]))
    check = frames.get("check")
    if check is not None:
        table = analysis.non_invariant_tokens(check)
        sections.append(Section(
            "Which M break invariance",
            "For every M, rows of the M-row product are compared with the same rows computed alone (M = 1): rows "
            "0-63, the last row, and 32 random ones. A kernel is invariant at M when they are bitwise equal. "
            "cuBLAS's choice of kernel changes with M and with K, so the search covers M densely and a range of "
            "inner dimensions at N = h. prefix_m_differing: at how many M all rows were compared with the largest "
            "product instead (context).",
            figures=check_figures(check, labels), tables=[table_html(table, float_format="{:,.4g}")]))
    outputs = frames.get("outputs")
    if outputs is not None:
        steps = frames.get("steps", pd.DataFrame())
        latency = frames.get("latency", pd.DataFrame())
        ops = frames.get("ops", pd.DataFrame())
        notes = (runs.get("layer") or {}).get("notes", [])
        sections.append(Section(
            "The layer: one prompt alone and inside batches",
            "The profiler's layer (transformer layer + logit layer) on its default kernels and with "
            "<code>models.invariant.make_batch_invariant</code>. Each step of the forward (the regions of "
            "models/layer.py) is compared for the prompt alone vs inside the batch; the first step that differs "
            "is where invariance breaks, everything after inherits it. To tell which ops are invariant as they "
            "are, each op is also run on its own with the same input rows alone and inside the batch (last table).",
            figures=layer_figures(steps, latency),
            tables=[table_html(analysis.layer_findings(outputs), float_format="{:,.4g}"),
                    table_html(analysis.step_breaks(steps), float_format="{:,.4g}")]
            + ([table_html(analysis.op_findings(ops), float_format="{:,.4g}")] if not ops.empty else [])
            + ([table_html(analysis.latency_cost(latency), float_format="{:,.3f}")] if not latency.empty else []),
            notes=notes))
    engines = frames.get("engines")
    if engines is not None:
        detail = [c for c in ("model", "engine", "batch", "position", "status", "logits_equal", "logits_max_abs_diff",
                              "last_logits_equal", "tokens_equal", "first_token_difference", "first_differing_step",
                              "first_differing_max_abs_diff", "reason") if c in engines.columns]
        sections.append(Section(
            "Engines: transformers and DeepSpeed-MII",
            "The same prompt alone and inside batches of other prompts (all of one length, so nothing is padded) "
            "through each engine: logits at every prompt position from one forward, and greedy tokens from "
            "generate (MII: its query handle). The first differing module is the earliest module output "
            "(or leaf-module input) of the forward that is not bitwise the same.",
            figures=[f for f in [engine_figure(engines)] if f],
            tables=[table_html(analysis.engine_findings(engines), float_format="{:,.4g}"),
                    table_html(engines[detail], float_format="{:,.4g}")]))
    return sections


def engine_figure(engines: pd.DataFrame) -> dict | None:
    """Largest logit difference of the same prompt alone vs inside a batch, per engine and batch size (0: the
    engine was bitwise invariant there), with the greedy tokens' agreement in the hover."""
    ok = engines[engines["status"] == "ok"] if "status" in engines else engines
    if ok.empty or "logits_max_abs_diff" not in ok:
        return None
    data = []
    for (engine, position), part in ok.groupby(["engine", "position"] if "position" in ok else ["engine", "engine"]):
        part = part.sort_values("batch")
        name = f"{engine}, prompt {position} in the batch" if "position" in ok else engine
        data.append({"type": "scatter", "mode": "lines+markers", "name": name, "x": part["batch"].tolist(),
                     "y": part["logits_max_abs_diff"].tolist(),
                     "text": ["tokens equal" if t else "tokens differ" for t in part.get("tokens_equal", [])],
                     "hovertemplate": "batch %{x}: max |diff| %{y:.3g}, %{text}<extra>" + name + "</extra>"})
    return {"data": data, "layout": layout("Engines: logits of a prompt alone vs inside a batch", axis("batch size", type="log"),
                                           "largest |logit difference| (0 = bitwise equal)")}


def _throughput_answer(frames: dict[str, pd.DataFrame], labels: dict[str, str]) -> Answer:
    """The paper's 004 chart for the first weight GEMM: TFLOP/s against tokens, cuBLAS and the invariant
    kernel; the reading gives their ratio at a few token counts and, over the layer, weighted by time."""
    throughput = frames["throughput"]
    (config, component, n, k), group = next(iter(throughput.groupby(["config", "component", "n", "k"], sort=False)))
    group = group[group["kernel"].isin(["torch", "invariant"])]
    fig = throughput_figures(group, labels)[0]
    fig["layout"]["title"]["text"] = f"TFLOP/s vs tokens, both kernels: {config} {component} (cf. paper 004)"
    ratio = analysis.throughput_ratio(group).sort_values("m")
    picks = [m for m in (1, 64, 1024, 8192) if m in set(ratio["m"])] or list(ratio["m"].iloc[[0, -1]])
    at = ratio.set_index("m")
    reading = (f"{config} {component} (M,{int(k)})x({int(k)},{int(n)}): the invariant kernel runs at " + ", ".join(
        f"{at.loc[m, 'invariant_tflops']:.3g} vs {at.loc[m, 'torch_tflops']:.3g} TFLOP/s "
        f"({at.loc[m, 'ratio']:.3g}x) at M={m}" for m in picks) + ". ")
    layer = analysis.layer_gemm_ratio(throughput)
    if not layer.empty:
        rows = layer[layer["config"] == config].sort_values("m")
        reading += ("All weight GEMMs of the layer, weighted by time: " + ", ".join(
            f"{r:.3g}x at M={m}" for m, r in zip(rows["m"], rows["ratio"])) + ". ")
    check = frames.get("check")
    if check is not None and not check.empty:
        found = analysis.non_invariant_tokens(check)
        searched_k = found[found["component"] == "k-search"]
        found = found[found["component"] != "k-search"]
        for kernel, rows in found.groupby("kernel", sort=False):
            bad = rows[rows["m_not_invariant"] > 0]
            k_bad = searched_k[(searched_k["kernel"] == kernel) & (searched_k["m_not_invariant"] > 0)]
            reading += (f"{labels.get(kernel, kernel)}: not bitwise invariant in {len(bad)} of the layer's {len(rows)} "
                        "weight GEMMs" + (f" ({', '.join(bad['component'])})" if len(bad) else "")
                        + (f", nor at {len(k_bad)} of the {int((searched_k['kernel'] == kernel).sum())} inner "
                           "dimensions K searched" if len(k_bad) else "") + ". ")
    if throughput["tflops"].max() < 1:
        reading += "Numbers this small are a CPU's (torch's BLAS against the Triton interpreter): the wiring, not a GPU."
    return Answer("What batch invariance costs", fig, reading.strip())


def invariance_answer(frames: dict[str, pd.DataFrame], runs: dict[str, dict]) -> Answer | None:
    """The 004 chart when GEMM throughput was measured; else the layer's latency cost with its first
    differing step; else the engines' logit differences."""
    labels = kernel_labels(runs)
    if frames.get("throughput") is not None and not frames["throughput"].empty:
        return _throughput_answer(frames, labels)
    latency = frames.get("latency", pd.DataFrame())
    if frames.get("outputs") is not None and not latency.empty:
        fig = layer_figures(pd.DataFrame(), latency)[0]
        cost = analysis.latency_cost(latency).sort_values("tokens_in_flight")
        findings = analysis.layer_findings(frames["outputs"])
        reading = ("The layer's forward with batch-invariant kernels takes " + ", ".join(
            f"{r.slowdown:.2f}x the default's at {int(r.tokens_in_flight)} tokens" for r in cost.iloc[[0, -1]].itertuples())
            + ". ") if "slowdown" in cost else ""
        for r in findings.itertuples():
            reading += (f"{r.kernels} kernels: logits {'bitwise invariant' if r.logits_invariant else 'NOT invariant'}, "
                        f"greedy tokens {'invariant' if r.greedy_tokens_invariant else 'NOT invariant'} over {r.runs} runs"
                        + (f", first differing step {r.first_differing_steps}" if r.first_differing_steps else "") + ". ")
        return Answer("What batch invariance costs the layer", fig, reading.strip())
    engines = frames.get("engines")
    figure = engine_figure(engines) if engines is not None else None
    if figure is not None:
        found = analysis.engine_findings(engines)
        reading = " ".join(
            f"{r.model} on {r.engine}: logits {'bitwise equal' if r.logits_invariant else 'differ'} alone vs in a batch"
            + (f" (batches {r.batches_logits_differ}, max |diff| {r.max_abs_diff:.3g}, first at {r.first_differing_steps})"
               if not r.logits_invariant else "")
            + f", greedy tokens {'the same' if r.greedy_tokens_invariant else 'differ'}." for r in found.itertuples())
        return Answer("Do the engines give a prompt the same answer alone and in a batch?", figure, reading)
    return None


def summary_tables(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The closing numbers: throughput ratio at 1/64/1024/8192 tokens, where cuBLAS was not invariant, the
    layer's findings and cost, and the engines' findings."""
    out = {}
    if "choice" in frames:
        out["kernel each GEMM got"] = frames["choice"][[c for c in ("config", "component", "n", "k", "kernel", "proven")
                                                         if c in frames["choice"].columns]]
    if "throughput" in frames and frames["throughput"]["kernel"].eq("invariant").any():
        out["invariant/cuBLAS by shape"] = analysis.ratio_summary(frames["throughput"])
    if "throughput" in frames:
        ratio = analysis.throughput_ratio(frames["throughput"])
        ratio = ratio[ratio["m"].isin(analysis.SUMMARY_TOKENS)] if "ratio" in ratio else ratio.iloc[0:0]
        if not ratio.empty:
            per_shape = ratio.pivot_table(index=["config", "component"], columns="m", values="ratio", sort=False)
            per_shape.columns = [f"M={m}" for m in per_shape.columns]
            layer = analysis.layer_gemm_ratio(frames["throughput"])
            if not layer.empty:
                whole = layer.pivot_table(index="config", columns="m", values="ratio", sort=False)
                whole.columns = [f"M={m}" for m in whole.columns]
                whole.index = pd.MultiIndex.from_tuples([(c, "all weight GEMMs") for c in whole.index],
                                                        names=["config", "component"])
                per_shape = pd.concat([per_shape, whole])
            out["throughput ratio invariant/cuBLAS"] = per_shape.reset_index()
    if "check" in frames:
        out["where each kernel was not invariant (M)"] = analysis.non_invariant_tokens(frames["check"])[
            ["config", "kernel", "component", "n", "k", "m_checked", "m_not_invariant", "not_invariant_at", "max_abs_diff"]]
    if "outputs" in frames:
        out["layer: prompt alone vs in a batch"] = analysis.layer_findings(frames["outputs"])
    if "ops" in frames and not frames["ops"].empty:
        found = analysis.op_findings(frames["ops"])
        found["verdict"] = ["invariant" if ok else f"NOT at b={b} (max {d:.3g})"
                            for ok, b, d in zip(found["invariant"], found["batches_differing"], found["max_abs_diff"])]
        table = found.pivot_table(index=["config", "op"], columns="kernels", values="verdict", aggfunc="first", sort=False)
        out["layer: each op on the same input, alone vs in a batch"] = table.reset_index()
    if "latency" in frames and not frames["latency"].empty:
        out["layer: forward latency (us)"] = analysis.latency_cost(frames["latency"])
    if "engines" in frames:
        out["engines: prompt alone vs in a batch"] = analysis.engine_findings(frames["engines"])
    return out


def summary_text(frames: dict[str, pd.DataFrame]) -> str:
    parts = []
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60,
                           "display.float_format", "{:,.4g}".format):
        for title, table in summary_tables(frames).items():
            parts.append(f"== {title}\n{table.to_string(index=False)}")
    return "\n".join(parts)


def _shown(folder: Path, page_dir: Path) -> str:
    """A results folder as the page names it: relative to the page's folder ('.' reads as its own name)."""
    rel = Path(os.path.relpath(folder.resolve(), page_dir.resolve())).as_posix()
    return folder.resolve().name if rel == "." else rel


def write_report(dirs: list[str | Path], out: str | Path) -> Path:
    frames, runs = files.load([Path(d) for d in dirs])
    env = next((r.get("environment") for r in runs.values() if r.get("environment")), {})
    sections = build_sections(frames, runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    # the folders relative to the page, never a path of the machine that rendered it
    sources = ", ".join(_shown(Path(d), out) for d in dirs)
    device = env.get("gpu_name") or f"CPU ({env.get('cpu') or 'host'})"
    path.write_text(render_page("Batch invariance: what deterministic kernels cost, and which engines break it",
                                sections, environment=env, subtitle=f"results from {sources}",
                                answer=invariance_answer(frames, runs), device=device, on_cpu=not env.get("gpu_name"),
                                how_to_read=["Invariant means bitwise equal: torch.equal, not a tolerance.",
                                             "cuBLAS = torch.nn.functional.linear on CUDA; the invariant kernels "
                                             "are models/invariant (Triton)."]))
    return path

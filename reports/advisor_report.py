"""The sizing advisor's HTML report: the checks, the candidates (parameters vs throughput), the per-component
difference between the given shape and the best proposal, and the SwiGLU width search.

`advisor_report_sections` is pure (the advice.json document -> sections); `write_advisor_report` renders it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .html import COLORS, Answer, Section, axis, layout, render_page, table_html

STATUS_ORDER = {"fail": 0, "warn": 1, "unknown": 2, "pass": 3}


def _frame(records: list[dict] | None) -> pd.DataFrame:
    return pd.DataFrame(records or [])


def _param_unit(params: pd.Series) -> tuple[float, str]:
    return (1e9, "billions") if params.max() >= 1e9 else (1e6, "millions")


def candidates_figure(candidates: pd.DataFrame, measured: pd.DataFrame) -> dict:
    """Parameters vs training throughput: every modelled candidate, and the measured ones with their spread."""
    scale, unit = _param_unit(pd.concat([candidates.get("params", pd.Series(dtype=float)),
                                         measured.get("params", pd.Series(dtype=float))]))
    data = []
    if not candidates.empty:
        data.append({"type": "scatter", "mode": "markers", "name": "modelled (cost model)",
                     "x": (candidates["params"] / scale).tolist(), "y": candidates["modelled_tokens_per_s"].tolist(),
                     "text": candidates["name"].tolist(), "marker": {"color": "#b0b7c3", "size": 5},
                     "hovertemplate": f"%{{text}}<br>%{{x:.4f}} {unit} of parameters, %{{y:,.0f}} tokens/s "
                                      "(modelled)<extra></extra>"})
    if not measured.empty:
        for is_given, label, color in ((False, "measured proposals", COLORS["gemm"]), (True, "given shape (measured)",
                                                                                     COLORS["unattributed"])):
            part = measured[measured["is_given"] == is_given]
            if part.empty:
                continue
            data.append({"type": "scatter", "mode": "markers", "name": label,
                         "x": (part["params"] / scale).tolist(), "y": part["tokens_per_s"].tolist(),
                         "text": part["name"].tolist(), "marker": {"color": color, "size": 11},
                         "error_y": {"type": "data", "symmetric": False,
                                     "array": (part["tokens_per_s_p90"] - part["tokens_per_s"]).tolist(),
                                     "arrayminus": (part["tokens_per_s"] - part["tokens_per_s_p10"]).tolist()},
                         "hovertemplate": f"%{{text}}<br>%{{x:.4f}} {unit} of parameters, %{{y:,.0f}} tokens/s"
                                          "<extra></extra>"})
    elif not candidates.empty:
        given = candidates[candidates["is_given"]]
        data.append({"type": "scatter", "mode": "markers", "name": "given shape (modelled)",
                     "x": (given["params"] / scale).tolist(), "y": given["modelled_tokens_per_s"].tolist(),
                     "text": given["name"].tolist(), "marker": {"color": COLORS["unattributed"], "size": 11}})
    return {"data": data, "layout": {
        "title": {"text": "Candidates of the same size: parameters vs training throughput"},
        "xaxis": {"title": {"text": f"parameters ({unit})"}},
        "yaxis": {"title": {"text": "training tokens/s (model fwd+bwd)"}}}}


def difference_figure(diff: pd.DataFrame) -> dict:
    labels = [f"{c} ({'fwd' if p == 'forward' else 'bwd'})" for p, c in zip(diff["pass"], diff["component"])]
    return {"data": [{"type": "bar", "x": labels, "y": diff["saved_model_ms"].round(3).tolist(),
                      "marker": {"color": [COLORS.get(c, COLORS["other"]) for c in diff["component"]]},
                      "hovertemplate": "%{x}: %{y:.2f} ms saved per step<extra></extra>"}],
            "layout": {"title": {"text": "Time saved per training step by the best proposal, per component"},
                       "xaxis": {"title": {"text": "component (pass)"}},
                       "yaxis": {"title": {"text": "ms saved per step (< 0: slower)"}}}}


def swiglu_figure(swiglu: pd.DataFrame, reference: int) -> dict:
    df = swiglu.sort_values("ffn")
    data = []
    if "tflops" in df:
        ref_tflops = float(df.loc[df["ffn"] == reference, "tflops"].iloc[0]) if (df["ffn"] == reference).any() else None
        trace = {"type": "scatter", "mode": "lines+markers", "name": "measured (median of rounds)",
                 "x": df["ffn"].tolist(), "y": df["tflops"].tolist(), "marker": {"color": COLORS["gemm"]}}
        if ref_tflops:  # the spread of the per-round ratio to the reference, in TFLOP/s
            trace["error_y"] = {"type": "data", "symmetric": False,
                                "array": (df["vs_reference_p90"] * ref_tflops - df["tflops"]).clip(lower=0).tolist(),
                                "arrayminus": (df["tflops"] - df["vs_reference_p10"] * ref_tflops).clip(lower=0).tolist()}
        data.append(trace)
    if "modelled_tflops" in df:
        data.append({"type": "scatter", "mode": "lines+markers", "name": "modelled", "x": df["ffn"].tolist(),
                     "y": df["modelled_tflops"].tolist(), "line": {"dash": "dot"}, "marker": {"color": "#b0b7c3"}})
    return {"data": data, "layout": {
        "title": {"text": "SwiGLU MLP block throughput vs intermediate size (paper VII-B)"},
        "xaxis": {"title": {"text": "intermediate size f (elements)"}},
        "yaxis": {"title": {"text": "MLP block throughput (TFLOP/s, fwd+bwd)"}},
        "shapes": [{"type": "line", "x0": reference, "x1": reference, "yref": "paper", "y0": 0, "y1": 1,
                    "line": {"dash": "dash", "color": COLORS["unattributed"]}}],
        "annotations": [{"x": reference, "yref": "paper", "y": 0, "text": f" config's f = {reference}",
                         "showarrow": False, "yanchor": "bottom", "xanchor": "left"}]}}


def _speedup_bars(names: list[str], measured: list, lo: list, hi: list, modelled: list, title: str,
                  x_title: str) -> dict:
    data = []
    if any(v is not None and not pd.isna(v) for v in measured):
        data.append({"type": "bar", "name": "measured (median of rounds, bar p10-p90)", "x": names, "y": measured,
                     "marker": {"color": COLORS["gemm"]},
                     "error_y": {"type": "data", "symmetric": False, "thickness": 1.5,
                                 "array": [None if pd.isna(h) or pd.isna(m) else max(0.0, h - m) for h, m in zip(hi, measured)],
                                 "arrayminus": [None if pd.isna(l) or pd.isna(m) else max(0.0, m - l)
                                                for l, m in zip(lo, measured)]},
                     "hovertemplate": "%{x}: %{y:.3f}x measured<extra></extra>"})
    data.append({"type": "bar", "name": "modelled (cost model)", "x": names, "y": modelled,
                 "marker": {"color": "#b0b7c3"}, "hovertemplate": "%{x}: %{y:.3f}x modelled<extra></extra>"})
    values = [v for v in list(measured) + list(modelled) + list(lo) + list(hi) if v is not None and not pd.isna(v)]
    low = min(values + [1.0])
    return {"data": data, "layout": layout(
        title, axis(x_title, automargin=True), axis("speed-up over the given shape (x)", range=[min(0.9, low * 0.95),
                                                                                               max(values + [1.0]) * 1.05]),
        barmode="group",
        shapes=[{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 1, "y1": 1,
                 "line": {"color": COLORS["unattributed"], "dash": "dash", "width": 1}}])}


def advisor_answer(doc: dict) -> Answer | None:
    """Each proposal's measured speed-up over the given shape with its p10-p90 interval beside the modelled
    one (the SwiGLU widths' throughput ratio to the config's width in a SwiGLU run); modelled alone, and said
    so, where nothing was measured."""
    cfg = doc["config"]
    measured, candidates, swiglu = _frame(doc.get("measured")), _frame(doc.get("candidates")), _frame(doc.get("swiglu"))
    if not swiglu.empty and "vs_reference" in swiglu:
        reference = int(cfg.get("intermediate_size") or 4 * cfg["hidden_size"])
        df = swiglu.sort_values("rank" if "rank" in swiglu else "ffn").head(12)
        ref = swiglu.loc[swiglu["ffn"] == reference, "modelled_tflops"] if "modelled_tflops" in swiglu else pd.Series()
        modelled = (df["modelled_tflops"] / float(ref.iloc[0])).tolist() if len(ref) else [None] * len(df)
        names = [f"f={int(f)}" for f in df["ffn"]]
        fig = _speedup_bars(names, df["vs_reference"].tolist(), df.get("vs_reference_p10", pd.Series([None] * len(df))).tolist(),
                            df.get("vs_reference_p90", pd.Series([None] * len(df))).tolist(), modelled,
                            f"SwiGLU widths: measured speed-up over f={reference} beside the modelled one",
                            "intermediate size f (ranked by measured throughput)")
        best = df.iloc[0]
        faster = int((df.get("vs_reference_p10", df["vs_reference"]) > 1).sum())
        reading = (f"The best width, f={int(best['ffn'])}, runs the MLP block {best['vs_reference']:.3f}x as fast as the "
                   f"config's f={reference}" + (f" [p10 {best['vs_reference_p10']:.3f}, p90 {best['vs_reference_p90']:.3f}]"
                                                if "vs_reference_p10" in best else "") +
                   (f"; the cost model said {modelled[0]:.3f}x" if modelled[0] is not None else "") +
                   f". {faster} of the {len(df)} widths shown are faster beyond their spread (p10 above 1).")
        return Answer("What each proposal would gain", fig, reading)
    if not measured.empty and "speedup" in measured:
        df = measured[~measured["is_given"].astype(bool)] if "is_given" in measured else measured
        df = df.sort_values("speedup", ascending=False).head(12)
        if df.empty:
            return None
        fig = _speedup_bars(df["name"].tolist(), df["speedup"].tolist(), df.get("speedup_p10", pd.Series([None] * len(df))).tolist(),
                            df.get("speedup_p90", pd.Series([None] * len(df))).tolist(),
                            df.get("modelled_speedup", pd.Series([None] * len(df))).tolist(),
                            f"{cfg['name']}: measured speed-up of each proposal beside the modelled one",
                            "proposal (same parameter budget)")
        best = df.iloc[0]
        gains = df[df["verdict"] == "faster"] if "verdict" in df else df[df["speedup_p10"] > 1]
        interval = (f" [p10 {best['speedup_p10']:.3f}, p90 {best['speedup_p90']:.3f}]"
                    if pd.notna(best.get("speedup_p10")) and pd.notna(best.get("speedup_p90")) else " (no interval in the data)")
        reading = (f"The best proposal, {best['name']} ({best.get('changes', '')}), trains {best['speedup']:.3f}x as fast "
                   f"as {cfg['name']}{interval}; the cost model said {best['modelled_speedup']:.3f}x. "
                   f"{len(gains)} of {len(df)} measured proposals are a gain by the verdict rule "
                   f"(spread clear of 1.0 and above the {100 * doc['options'].get('min_gain', 0):.0f}% minimum).")
        env = doc.get("environment", {})
        if env.get("device") != "cuda":
            reading += " Timed on a CPU: these speed-ups prove the wiring only."
        return Answer("What each proposal would gain", fig, reading)
    if not candidates.empty and "modelled_speedup" in candidates:
        df = candidates[~candidates["is_given"].astype(bool)] if "is_given" in candidates else candidates
        df = df.sort_values("modelled_speedup", ascending=False).head(12)
        fig = _speedup_bars(df["name"].tolist(), [None] * len(df), [None] * len(df), [None] * len(df),
                            df["modelled_speedup"].tolist(), f"{cfg['name']}: modelled speed-up of the best proposals",
                            "proposal (same parameter budget)")
        best = df.iloc[0]
        reading = (f"Nothing was measured (run with --measure on the GPU), so each bar is the cost model's estimate "
                   f"alone, with no interval. The best proposal, {best['name']} ({best.get('changes', '')}), is "
                   f"modelled at {best['modelled_speedup']:.3f}x the speed of {cfg['name']}; {len(candidates)} "
                   "candidates were ranked.")
        return Answer("What each proposal would gain (modelled only)", fig, reading)
    return None


def _checks_table(checks: pd.DataFrame) -> str:
    df = checks.copy()
    df["_order"] = df["status"].map(STATUS_ORDER)
    df = df.sort_values(["_order"], kind="stable").drop(columns="_order")
    cols = ["status", "rule", "subject", "value", "cost_ms", "cost_pct", "measured_cost_ms", "paper", "finding",
            "measured_note", "paper_rule", "gpu_evidence"]
    return table_html(df[[c for c in cols if c in df]])


def advisor_report_sections(doc: dict) -> list[Section]:
    cfg, gpu = doc["config"], doc["gpu_model"]
    checks, candidates = _frame(doc.get("checks")), _frame(doc.get("candidates"))
    measured, diff, swiglu = _frame(doc.get("measured")), _frame(doc.get("component_difference")), _frame(doc.get("swiglu"))
    counts = checks["status"].value_counts().to_dict() if not checks.empty else {}
    env = doc.get("environment", {})
    if not doc["options"].get("measure"):
        mode = "modelled (no measurement: add --measure on the GPU)"
    elif env.get("device") == "cuda":
        mode = f"measured on this GPU ({env.get('gpu_name')})"
    else:
        mode = "timed on the CPU, which proves the wiring only (the checks and the model describe the GPU above)"
    sections = [Section(
        "Summary",
        intro=(f"<b>{cfg['name']}</b>: h={cfg['hidden_size']}, a={cfg['num_attention_heads']} "
               f"(h/a={cfg['hidden_size'] // cfg['num_attention_heads']}), L={cfg['num_layers']}, b={cfg['micro_batch_size']}, "
               f"s={cfg['seq_length']}, t={cfg['tensor_parallel']}, attention={cfg['attention']}, {cfg['dtype']}. "
               f"GPU model: <b>{gpu['name']}</b>, {gpu['sms']} SMs ({gpu['sms_source']}); cost model "
               f"<b>{'calibrated by ' + str(doc['calibration'].get('path')) if (doc.get('calibration') or {}).get('calibrated') else 'UNCALIBRATED'}</b>. "
               f"{'SwiGLU widths' if doc['options'].get('swiglu') else 'Proposals'} are {mode}. "
               f"Checks: {counts.get('fail', 0)} fail, {counts.get('warn', 0)} warn, {counts.get('pass', 0)} pass, "
               f"{counts.get('unknown', 0)} unknown."),
        notes=list(doc.get("notes") or []))]
    if not checks.empty:
        sections.append(Section(
            "Checks: the paper's sizing rules on this shape",
            intro=("Each rule with the paper's section. <b>cost_ms</b>: modelled milliseconds per training step of the "
                   "whole model (L layers + logits, forward + backward) that the flaw costs: the step as it is minus "
                   "the step with that quantity fixed, or the time a GEMM's tail wave / partial tiles / misalignment "
                   "wastes. <b>warn</b>: the paper's rule is broken but this GPU showed no loss, or a fix is in place "
                   "(a padded vocabulary). Alignment is in bytes, so the element count scales with the dtype. "
                   "<b>measured_cost_ms</b> (with --measure): the same difference timed on this GPU, where the fix "
                   "was timed (the vocabulary; the best measured head-count fix)."),
            tables=[_checks_table(checks)]))
    if not candidates.empty or not measured.empty:
        intro = ("Candidates vary a, h, L and the MLP width within the parameter budget "
                 f"(&plusmn;{100 * doc['options']['space']['budget']:.0f}% of the given total); grey points are the cost "
                 "model's estimates for the best pre-ranked (all of them in candidates.csv). ")
        tables = []
        if not measured.empty:
            intro += ("Measured shapes are timed as full layers (forward + backward) plus the logit layer in interleaved "
                      "rounds (each round times every shape once, in a shuffled order); tokens/s = b*s / (L x layer + "
                      "logits); the speed-up is the median of the per-round ratios against the given shape, with a bootstrap "
                      "interval (speedup_ci_lo/hi) and their p10/p90; 'faster' only when the interval excludes 1.0 and "
                      "the gain exceeds self_spread (the given shape against itself) and the stated minimum.")
            cols = ["name", "changes", "params", "params_delta_pct", "tokens_per_s", "speedup", "speedup_ci_lo",
                    "speedup_ci_hi", "self_spread", "speedup_p10", "speedup_p90", "verdict", "serving_flag", "speedup_per_param", "layer_fwd_ms", "layer_fwd_bwd_ms",
                    "logits_fwd_bwd_ms", "modelled_speedup", "leaves_flat_region", "scaling_note"]
            tables.append(table_html(measured[[c for c in cols if c in measured]], float_format="{:,.3f}"))
        cols = ["name", "changes", "params_delta_pct", "modelled_speedup", "modelled_speedup_per_param", "loss_delta_pct",
                "rank_score", "modelled_prefill_ms", "modelled_decode_ms", "serving_flag", "leaves_flat_region",
                "scaling_note"]
        if not candidates.empty:
            tables.append(table_html(candidates[[c for c in cols if c in candidates]].head(30), float_format="{:,.3f}"))
        sections.append(Section("Shapes of the same size", intro=intro, figures=[candidates_figure(candidates, measured)],
                                tables=tables,
                                notes=["Scaling-law caution (paper/003, read off the figure, approximate): loss is "
                                       "flat over a wide range of feed-forward ratio, aspect ratio d_model/n_layer and "
                                       "head dimension; leaves_flat_region marks a proposal whose estimated loss rises "
                                       "more than 0.5 percentage points, or that moves outside the range 003 shows. "
                                       "22% compute compensates for 1% loss."]))
    if not diff.empty:
        sections.append(Section(
            "Where the best proposal saves time (layer profiler, forward + backward)",
            intro=("The layer profiler's per-component kernel time of the given shape and of the best measured proposal, "
                   "per layer and over the whole model (x L of each)."),
            figures=[difference_figure(diff)], tables=[table_html(diff, float_format="{:,.2f}")]))
    if not swiglu.empty:
        reference = int(cfg.get("intermediate_size") or 4 * cfg["hidden_size"])
        sections.append(Section(
            "SwiGLU intermediate size (paper VII-B)",
            intro=(f"The MLP block (up, gate, SiLU x up, down) at h={cfg['hidden_size']}, b*s="
                   f"{cfg['micro_batch_size'] * cfg['seq_length']}, for widths near the config's f={reference} "
                   f"(8h/3 = {8 * cfg['hidden_size'] / 3:.1f}); ranked by forward+backward throughput. vs_reference: "
                   "per-round throughput ratio to the config's width (median, p10/p90)."),
            figures=[swiglu_figure(swiglu, reference)], tables=[table_html(swiglu, float_format="{:,.3f}")]))
    gpu_rows = pd.DataFrame([{"field": k, "value": str(v)} for k, v in gpu.items()])
    sections.append(Section("GPU model used by the rules and the cost model", tables=[table_html(gpu_rows)],
                            intro="Each number with its source: measured on the lent GPUs, datasheet, or read off the "
                                  "paper's figures; measured in this run where it says so."))
    return sections


def write_advisor_report(doc: dict, path: Path) -> Path:
    env = doc.get("environment", {})
    device = env.get("gpu_name") or f"CPU ({env.get('cpu', '')})"
    html = render_page(f"Sizing advisor: {doc['config']['name']}", advisor_report_sections(doc), environment=env,
                       subtitle=f"for {doc['gpu_model']['name']}, torch {env.get('torch')}", answer=advisor_answer(doc),
                       device=device if doc["options"].get("measure") else
                       f"nothing: modelled for {doc['gpu_model']['name']} (run on {device})",
                       on_cpu=bool(doc["options"].get("measure")) and not env.get("gpu_name"))
    path.write_text(html)
    return path

"""Pure DataFrame -> DataFrame functions over the invariance results (no I/O, no plotting).

Inputs are the frames the measurements write: `throughput` (matmul_bench.throughput), `check`
(matmul_bench.invariance), `outputs` / `latency` (layer_check) and `engines` (inference.invariance).
"""

from __future__ import annotations

import statistics

import pandas as pd

from models.invariant.probe import ranges  # noqa: F401 - [1, 2, 3, 5] -> '1-3, 5', here for the report's tables

SUMMARY_TOKENS = (1, 64, 1024, 8192)
REPORT_TOKENS = (1, 16, 64, 256, 1024, 4096, 8192)  # issue 21's table
TARGET_MEDIAN, TARGET_MIN = 0.95, 0.85  # invariant/cuBLAS throughput: median over M, and no M below


def throughput_ratio(throughput: pd.DataFrame) -> pd.DataFrame:
    """Per shape and M: both kernels' TFLOP/s and invariant / torch (below 1: the invariant kernel is slower)."""
    wide = throughput.pivot_table(index=["config", "component", "n", "k", "m"], columns="kernel",
                                  values=["tflops", "median_us"], aggfunc="first")
    wide.columns = [f"{kernel}_{value}" for value, kernel in wide.columns]
    out = wide.reset_index()
    if {"torch_tflops", "invariant_tflops"} <= set(out.columns):
        out["ratio"] = out["invariant_tflops"] / out["torch_tflops"]
    return out


def layer_gemm_ratio(throughput: pd.DataFrame, tokens=SUMMARY_TOKENS) -> pd.DataFrame:
    """At each M: all the layer's weight GEMMs together (times summed over shapes; a shape shared by
    mlp_up and mlp_gate counts twice), torch time / invariant time = the throughput ratio invariant/cuBLAS."""
    df = throughput[throughput["component"] != "k-search"].copy()
    df["count"] = df["component"].str.count(r"\+") + 1
    df["weighted_us"] = df["median_us"] * df["count"]
    df["weighted_flops"] = df["flops"] * df["count"]
    rows = []
    for (config, m), group in df.groupby(["config", "m"]):
        if int(m) not in tokens:
            continue
        by_kernel = group.groupby("kernel")[["weighted_us", "weighted_flops"]].sum()
        if {"torch", "invariant"} <= set(by_kernel.index):
            t_us, i_us = by_kernel.loc["torch", "weighted_us"], by_kernel.loc["invariant", "weighted_us"]
            flops = by_kernel.loc["torch", "weighted_flops"]
            rows.append({"config": config, "m": int(m), "torch_us": t_us, "invariant_us": i_us,
                         "torch_tflops": flops / (t_us * 1e-6) / 1e12, "invariant_tflops": flops / (i_us * 1e-6) / 1e12,
                         "ratio": t_us / i_us})
    return pd.DataFrame(rows, columns=["config", "m", "torch_us", "invariant_us", "torch_tflops",
                                       "invariant_tflops", "ratio"])


def non_invariant_tokens(check: pd.DataFrame) -> pd.DataFrame:
    """Per kernel and shape: how many M were checked, at which M a row differed from the same row computed
    alone, and the largest such difference."""
    rows = []
    for (config, kernel, component, n, k), group in check.groupby(["config", "kernel", "component", "n", "k"], sort=False):
        bad = group[~group["invariant"].astype(bool)]
        rows.append({"config": config, "kernel": kernel, "component": component, "n": n, "k": k,
                     "m_checked": len(group), "m_range": f"{group['m'].min()}-{group['m'].max()}",
                     "m_not_invariant": len(bad), "not_invariant_at": ranges(bad["m"]),
                     "max_abs_diff": group["alone_max_abs_diff"].max(),
                     "prefix_m_differing": int((~group["prefix_equal"].astype(bool)).sum())})
    return pd.DataFrame(rows)


def layer_findings(outputs: pd.DataFrame) -> pd.DataFrame:
    """Per config and kernel set: were logits and greedy tokens invariant at every batch and position, and
    which steps differed first (with how often)."""
    rows = []
    for (config, kernels), group in outputs.groupby(["config", "kernels"], sort=False):
        first = group.loc[group["first_differing_step"].astype(str) != "", "first_differing_step"].value_counts()
        differing = group.loc[~group["output_equal"].astype(bool), "batch"]
        rows.append({"config": config, "kernels": kernels, "runs": len(group),
                     "logits_invariant": bool(group["output_equal"].all()),
                     "greedy_tokens_invariant": bool(group["greedy_tokens_equal"].fillna(True).all()),
                     "batches_differing": ranges(differing),
                     "max_abs_diff": group["output_max_abs_diff"].max(),
                     "first_differing_steps": ", ".join(f"{s} ({n})" for s, n in first.items())})
    return pd.DataFrame(rows)


def step_breaks(steps: pd.DataFrame) -> pd.DataFrame:
    """Per kernel set and step of the forward (its index: the three norms are three steps): in how many runs
    the step's output differed from the prompt alone, in how many it was the first to, and by how much."""
    columns = ["config", "kernels", "index", "step", "runs", "runs_differing", "runs_first", "max_abs_diff"]
    if steps.empty:
        return pd.DataFrame(columns=columns)
    comparable = steps[steps["comparable"].astype(bool)].copy()
    comparable["differs"] = ~comparable["equal"].astype(bool)
    run_key = ["config", "kernels", "batch", "position"]
    first = comparable[comparable["differs"]].groupby(run_key)["index"].min().rename("first_index")
    comparable = comparable.join(first, on=run_key)
    comparable["first"] = comparable["differs"] & (comparable["index"] == comparable["first_index"])
    out = comparable.groupby(["config", "kernels", "index", "step"], sort=False).agg(
        runs=("differs", "size"), runs_differing=("differs", "sum"), runs_first=("first", "sum"),
        max_abs_diff=("max_abs_diff", "max")).reset_index()
    return out.sort_values(["config", "kernels", "index"]).reset_index(drop=True)[columns]


def op_findings(ops: pd.DataFrame) -> pd.DataFrame:
    """Per kernel set and op (each fed the same input alone and in a batch): invariant at every batch and
    place, or at which batches not, and by how much."""
    if ops.empty:
        return pd.DataFrame(columns=["config", "kernels", "op", "runs", "invariant", "batches_differing", "max_abs_diff"])
    rows = []
    for (config, kernels, op), group in ops.groupby(["config", "kernels", "op"], sort=False):
        bad = group[~group["equal"].astype(bool)]
        rows.append({"config": config, "kernels": kernels, "op": op, "runs": len(group), "invariant": bad.empty,
                     "batches_differing": ranges(bad["batch"]), "max_abs_diff": group["max_abs_diff"].max()})
    return pd.DataFrame(rows)


def latency_cost(latency: pd.DataFrame) -> pd.DataFrame:
    """Per batch: forward latency of both kernel sets and invariant / default (above 1: it costs time)."""
    if latency.empty:
        return pd.DataFrame(columns=["config", "batch", "tokens_in_flight", "default_us", "invariant_us", "slowdown"])
    wide = latency.pivot_table(index=["config", "batch", "tokens_in_flight"], columns="kernels", values="median_us",
                               aggfunc="first")
    wide.columns = [f"{c}_us" for c in wide.columns]
    out = wide.reset_index()
    if {"default_us", "invariant_us"} <= set(out.columns):
        out["slowdown"] = out["invariant_us"] / out["default_us"]
    return out


def engine_findings(engines: pd.DataFrame) -> pd.DataFrame:
    """Per model and engine: invariant logits / tokens at every batch and position, or where not."""
    rows = []
    for (model, engine), group in engines.groupby(["model", "engine"], sort=False):
        ok = group[group["status"] == "ok"]
        if ok.empty:
            rows.append({"model": model, "engine": engine, "status": group["status"].iloc[0],
                         "logits_invariant": None, "greedy_tokens_invariant": None, "batches_logits_differ": "",
                         "batches_tokens_differ": "", "max_abs_diff": None, "first_differing_steps": "",
                         "reason": group["reason"].iloc[0]})
            continue
        first = ok.loc[ok["first_differing_step"].astype(str) != "", "first_differing_step"].value_counts()
        rows.append({"model": model, "engine": engine, "status": "ok",
                     "logits_invariant": bool(ok["logits_equal"].all()),
                     "greedy_tokens_invariant": bool(ok["tokens_equal"].all()),
                     "batches_logits_differ": ranges(ok.loc[~ok["logits_equal"].astype(bool), "batch"]),
                     "batches_tokens_differ": ranges(ok.loc[~ok["tokens_equal"].astype(bool), "batch"]),
                     "max_abs_diff": ok["logits_max_abs_diff"].max(),
                     "first_differing_steps": ", ".join(f"{s} ({n})" for s, n in first.head(3).items()),
                     "reason": ""})
    return pd.DataFrame(rows)


def ratio_summary(throughput: pd.DataFrame, tokens=REPORT_TOKENS) -> pd.DataFrame:
    """Per shape: invariant/cuBLAS throughput at the issue's token counts, and its median and minimum over
    every M measured (the targets: median >= TARGET_MEDIAN, no M below TARGET_MIN)."""
    ratio = throughput_ratio(throughput)
    columns = ["config", "component", "n", "k", *[f"M={m}" for m in tokens], "median", "min", "min_at_m", "m_measured"]
    if "ratio" not in ratio or ratio.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (config, component, n, k), group in ratio.groupby(["config", "component", "n", "k"], sort=False):
        group = group.dropna(subset=["ratio"])
        by_m = dict(zip(group["m"].astype(int), group["ratio"]))
        worst = group.loc[group["ratio"].idxmin()]
        rows.append({"config": config, "component": component, "n": n, "k": k,
                     **{f"M={m}": by_m.get(m) for m in tokens}, "median": statistics.median(by_m.values()),
                     "min": worst["ratio"], "min_at_m": int(worst["m"]), "m_measured": len(by_m)})
    return pd.DataFrame(rows, columns=columns)


def invariance_share(check: pd.DataFrame) -> pd.DataFrame:
    """Per kernel and shape: the share of M at which every compared row was bitwise its product alone."""
    rows = []
    for (config, kernel, component, n, k), group in check.groupby(["config", "kernel", "component", "n", "k"], sort=False):
        ok = group["invariant"].astype(bool)
        rows.append({"config": config, "kernel": kernel, "component": component, "n": n, "k": k,
                     "m_checked": len(group), "pct_invariant": 100.0 * ok.mean(), "not_invariant_at": ranges(group.loc[~ok, "m"])})
    return pd.DataFrame(rows, columns=["config", "kernel", "component", "n", "k", "m_checked", "pct_invariant",
                                       "not_invariant_at"])


def targets(throughput: pd.DataFrame, check: pd.DataFrame | None) -> dict:
    """Issue 21's acceptance over all (shape, M) pairs: median and minimum ratio, share bitwise invariant."""
    ratio = throughput_ratio(throughput)
    r = ratio["ratio"].dropna() if "ratio" in ratio else pd.Series(dtype=float)
    out = {"pairs_timed": int(len(r)), "median_ratio": float(r.median()) if len(r) else None,
           "min_ratio": float(r.min()) if len(r) else None}
    if check is not None and not check.empty:
        mine = check[check["kernel"] == "invariant"]
        out["pairs_checked"] = int(len(mine))
        out["pct_invariant"] = float(100.0 * mine["invariant"].astype(bool).mean()) if len(mine) else None
    out["median_ok"] = out["median_ratio"] is not None and out["median_ratio"] >= TARGET_MEDIAN
    out["min_ok"] = out["min_ratio"] is not None and out["min_ratio"] >= TARGET_MIN
    out["invariant_ok"] = out.get("pct_invariant") == 100.0
    return out


def choice_table(choice: pd.DataFrame) -> pd.DataFrame:
    """The kernel each GEMM got and why, with each candidate's probe verdict (the report's choice table)."""
    keep = ["config", "component", "n", "k", "bias", "kernel", "proven", "reason"]
    verdicts = [c for c in choice.columns if c.endswith("_invariant") or c.endswith("_m_failed")]
    return choice[[c for c in keep if c in choice.columns] + verdicts + [c for c in ("sweep", "agreement", "plan")
                                                                          if c in choice.columns]]

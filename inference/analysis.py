"""Bench rows -> DataFrames: off-trend points (Figure 13), speed-ups, the 410M-vs-1B ordering, and the
join with the layer profiler's training-shape throughput. Pure functions: no I/O but reading a profile."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from profiler.errors import UserError

from .results import MEASURED

GROUP = ["engine", "batch", "tensor_parallel", "dtype", "prompt_len", "new_tokens"]
# the paper's Figure 13 (DeepSpeed-MII, Pythia), latency in seconds as read off the plot; its prompt and
# generation lengths and GPU are not stated, so it compares in shape, not in absolute value
PAPER_FIGURE13_S = {"pythia-160m": 0.3, "pythia-410m": 1.25, "pythia-1b": 0.9, "pythia-1.4b": 1.3, "pythia-2.8b": 1.9}
COLUMNS = ["model", "engine", "batch", "prompt_len", "tensor_parallel", "status", "reason", "fallback_for",
           "params_total", "params_non_embedding", "hidden_size", "num_layers", "num_attention_heads", "head_dim",
           "rotary_dims", "max_position_embeddings", "new_tokens", "dtype", "compute_dtype", "e2e_ms", "e2e_p10_ms",
           "e2e_p90_ms", "ttft_ms", "ttft_p10_ms", "ttft_p90_ms", "decode_p50_ms", "decode_p10_ms", "decode_p90_ms",
           "decode_floor_ms", "decode_vs_floor", "compute_floor_ms", "tokens_per_s", "tokens_generated", "repeats",
           "warmup_runs", "warmup_ms", "order_seed", "order_index", "peak_allocated_gb", "device_used_gb",
           "weight_bytes", "kv_bytes", "decode_context_mean", "bandwidth_tbps", "matmul_peak_tflops", "prefill_flops",
           "decode_flops", "logits_check", "logits_check_method", "logits_max_abs_diff", "logits_mean_abs_diff",
           "logits_ref_max_abs", "logits_top1_agreement", "logits_first_token_agreement", "token_check",
           "tokens_match", "tokens_stable", "first_mismatch", "margin_at_mismatch", "gap_at_mismatch",
           "token_tolerance", "token_noise", "token_verdict", "kernel_support_source", "device", "timing_method",
           "git_sha", "config_hash", "source", "checkpoint", "timestamp"]


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per model x engine x batch (raw samples left out; they stay in results.jsonl)."""
    df = pd.DataFrame([{k: v for k, v in r.items() if k not in ("samples", "record")} for r in rows])
    for column in COLUMNS:
        if column not in df.columns:
            df[column] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[COLUMNS + extra]
    return df.sort_values(["params_total", "model", "engine", "prompt_len", "batch"], kind="stable").reset_index(drop=True)


def measured(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(MEASURED) & df["e2e_ms"].notna()].copy()


def mark_off_trend(df: pd.DataFrame, value: str = "e2e_ms", tolerance: float = 0.03) -> pd.DataFrame:
    """A point is off-trend when a larger model is faster than a smaller one (by more than `tolerance`,
    so that noise does not mark points): both the slow smaller and the fast larger model are marked."""
    out = measured(df)
    out["off_trend"] = False
    out["off_trend_with"] = ""
    for _, group in out.groupby(GROUP, dropna=False):
        ordered = group.sort_values("params_total")
        idx, params, values = list(ordered.index), list(ordered["params_total"]), list(ordered[value])
        for i in range(len(idx)):
            for j in range(i + 1, len(idx)):
                if params[j] > params[i] and values[j] < values[i] * (1 - tolerance):
                    for a, b in ((idx[i], idx[j]), (idx[j], idx[i])):
                        out.at[a, "off_trend"] = True
                        names = [n for n in out.at[a, "off_trend_with"].split(",") if n]
                        out.at[a, "off_trend_with"] = ",".join(dict.fromkeys(names + [out.at[b, "model"]]))
    return out


def speedups(df: pd.DataFrame, base: str = "hf", test: str = "mii") -> pd.DataFrame:
    """test-engine speed-up over the base engine per model and batch (base latency / test latency)."""
    m = measured(df)
    keys = ["model", "params_total", "batch", "dtype", "prompt_len", "new_tokens"]
    m = m.drop_duplicates(keys + ["engine"], keep="last")
    metrics = ["e2e_ms", "ttft_ms", "decode_p50_ms"]
    left = m[m["engine"] == base][keys + metrics]
    right = m[m["engine"] == test][keys + metrics + ["tensor_parallel", "status"]]
    joined = left.merge(right, on=keys, suffixes=(f"_{base}", f"_{test}"))
    for metric in metrics:
        name = metric.removesuffix("_ms").removesuffix("_p50")
        joined[f"{name}_speedup"] = joined[f"{metric}_{base}"] / joined[f"{metric}_{test}"]
    return joined.sort_values(["prompt_len", "batch", "params_total"]).reset_index(drop=True)


def ordering(df: pd.DataFrame, smaller: str = "pythia-410m", larger: str = "pythia-1b") -> list[str]:
    """The paper's claim in one line per engine and batch: is the larger model faster?"""
    m = measured(df)
    lines = []
    for (engine, prompt, batch, tp), group in m.groupby(["engine", "prompt_len", "batch", "tensor_parallel"]):
        by_model = group.drop_duplicates("model", keep="last").set_index("model")
        if smaller not in by_model.index or larger not in by_model.index:
            continue
        a, b = by_model.loc[smaller], by_model.loc[larger]
        faster = b["e2e_ms"] < a["e2e_ms"]
        checked = all(x == "ok" for x in (a["status"], b["status"]))
        lines.append(
            f"{engine} p={prompt} b={batch}" + (f" tp={tp}" if tp > 1 else "") + f": {larger} {b['e2e_ms']:.0f} ms vs {smaller} "
            f"{a['e2e_ms']:.0f} ms: {larger} is {'faster' if faster else 'slower'} "
            f"({a['e2e_ms'] / b['e2e_ms']:.2f}x), so the paper's ordering is "
            f"{'reproduced' if faster else 'not reproduced'}" + ("" if checked else " (logits check did not pass)"))
    return lines


LAYER_COLUMNS = ["model", "mode", "layer_tflops", "layer_latency_us", "layer_latency_p10_us", "layer_latency_p90_us",
                 "layer_flops", "layer_batch", "layer_seq_len", "layer_gemm_share", "layer_status", "layer_run",
                 "layer_launch_bound", "layer_graph_us", "layer_graph_p10_us", "layer_graph_p90_us",
                 "layer_attention", "layer_failed_checks", "layer_clock_mhz"]


def load_layer_profile(path: str | Path) -> pd.DataFrame:
    """The layer profiler's run.json (or the run directory holding it) -> one row per config and mode.

    The one place that reads the layer profiler's output: configs[i]['name'], ['mode'], ['status'],
    ['layer_tflops'], ['layer_flops'], ['latency_us'] {median, p10, p90} and the resolved ['config']
    (micro_batch_size, seq_length); ['launch_bound'] and ['latency_graph_us'] {median, p10, p90} where the
    profiler measured them (the GPU's own time for a layer whose eager latency is the host's)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    try:
        run = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"--layer-profile: cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"--layer-profile: {path} is not JSON (line {exc.lineno}: {exc.msg})") from exc
    configs = run.get("configs") if isinstance(run, dict) else None
    if not isinstance(configs, list):
        raise UserError(f"--layer-profile: {path} has no 'configs' list; give the run.json of `python -m profiler layer`")
    rows = []
    for entry in configs:
        latency = entry.get("latency_us") or {}
        latency = latency if isinstance(latency, dict) else {"median": latency}
        config = entry.get("config") or {}
        graph = entry.get("latency_graph_us") or {}
        graph = graph if isinstance(graph, dict) else {"median": graph}
        mode = entry.get("mode") or (entry.get("options") or {}).get("mode") or "forward"
        rows.append({"model": entry.get("name"), "mode": mode, "layer_tflops": entry.get("layer_tflops"),
                     "layer_latency_us": latency.get("median"), "layer_latency_p10_us": latency.get("p10"),
                     "layer_latency_p90_us": latency.get("p90"), "layer_flops": entry.get("layer_flops"),
                     "layer_batch": config.get("micro_batch_size"), "layer_seq_len": config.get("seq_length"),
                     "layer_gemm_share": entry.get("gemm_share"), "layer_status": entry.get("status", "ok"),
                     "layer_run": str(path), "layer_launch_bound": entry.get("launch_bound"),
                     "layer_graph_us": graph.get("median"), "layer_graph_p10_us": graph.get("p10"),
                     "layer_graph_p90_us": graph.get("p90"), "layer_attention": config.get("attention"),
                     "layer_failed_checks": ", ".join((entry.get("checks_summary") or {}).get("failed", [])),
                     "layer_clock_mhz": ((entry.get("clock") or {}).get("phases") or {}).get("latency", {}).get("sm_clock_mhz")})
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def layer_link(df: pd.DataFrame, profile: pd.DataFrame, batch: int = 1) -> pd.DataFrame:
    """Per model: the training-shape layer throughput (forward) next to its inference latency at `batch`
    (the shortest prompt)."""
    m = measured(df)
    m = m[(m["batch"] == batch) & (m["prompt_len"] == m["prompt_len"].min())]
    if "mode" in profile:
        profile = profile[profile["mode"] == "forward"]
    profile = profile.drop_duplicates("model", keep="last")[["model", "layer_tflops", "layer_latency_us", "layer_gemm_share"]]
    wide = m.pivot_table(index=["model", "params_total"], columns="engine",
                         values=["e2e_ms", "decode_p50_ms"], aggfunc="first")
    wide.columns = [f"{engine}_{metric}" for metric, engine in wide.columns]
    wide = wide.reset_index()
    joined = wide.merge(profile, on="model", how="inner")
    joined["params_b"] = joined["params_total"] / 1e9
    for engine in m["engine"].unique():
        if f"{engine}_decode_p50_ms" in joined:
            joined[f"{engine}_decode_ms_per_b_params"] = joined[f"{engine}_decode_p50_ms"] / joined["params_b"]
    return joined.sort_values("params_total").reset_index(drop=True)

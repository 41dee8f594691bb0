"""Sweep results as DataFrames: pure functions, no I/O, no plotting (reports/sweep_report.py draws them).

One schema: a row per point with the identity columns of spec.IDENTITY_FIELDS, the swept value `x`, FLOPs,
timing (`median_ms`, `p10_ms`, `p90_ms`, ...), `tflops`, and the predicted `tiles_/waves_/last_wave_fill_`
columns for each tile size of profiler.quantization.TILE_SIZES.
"""

from __future__ import annotations

import pandas as pd

from ..quantization import TILE_SIZES
from .spec import IDENTITY_FIELDS, SWEPT

TIMING_COLUMNS = ("median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "repeats", "outliers")
PREDICTION_COLUMNS = tuple(f"{what}_{t1}x{t2}" for t1, t2 in TILE_SIZES
                           for what in ("tiles", "waves", "last_wave_fill")) + ("wave_efficiency_128x256",)
ATTRIBUTION_COLUMNS = ("worker", "worker_host", "worker_pid", "gpu_index", "sm_clock_mhz")  # who measured it
COLUMNS = (*IDENTITY_FIELDS, "x_name", "x", "held", "head_dim", "head_dim_pow2", "flops", "status", "error", *TIMING_COLUMNS,
           "tflops", "sms", *PREDICTION_COLUMNS, "measured_at", *ATTRIBUTION_COLUMNS)
GROUP = ["kind", "component", "t", "b", "s", "dtype", "gpu", "tag"]  # what one plotted family shares


def points_frame(records: list[dict]) -> pd.DataFrame:
    """Point records -> one row per point in the schema's column order, with a `series` label (one line
    of a plot: the held a or h/a, or the fixed h / m / n / k of the other kinds; and the GPU, when the
    records come from more than one)."""
    df = pd.DataFrame([r for r in records if r.get("record", "point") == "point"])
    for column in COLUMNS:
        if column not in df.columns:
            df[column] = None
    df = df[list(COLUMNS)].copy()
    df["x_name"] = [x if isinstance(x, str) and x else SWEPT[kind] for x, kind in zip(df["x_name"], df["kind"])]
    df["series"] = [series_label(row) for row in df.to_dict("records")]
    if df["gpu"].nunique() > 1:  # results from several GPU kinds: never one curve across them, and say whose
        df["series"] = df["series"] + ", " + df["gpu"].astype(str)
    df["line"] = [line_label(row) for row in df.to_dict("records")]
    return df.sort_values(["kind", "series", "x"], kind="stable").reset_index(drop=True)


def line_label(row: dict) -> str:
    """One plotted line: the series, split for the attention BMMs at fixed a by the largest power of two
    dividing h/a (Fig. 7), since neighbouring h then differ in alignment, not only in size."""
    if row["kind"] in ("score", "aov") and row.get("held") == "a" and not pd.isna(row.get("head_dim_pow2")):
        return f"{row['series']}, 2^k={int(row['head_dim_pow2'])}"
    return row["series"]


def _int(value) -> str:
    return str(int(value)) if value is not None and not pd.isna(value) else "?"


def series_label(row: dict) -> str:
    kind = row["kind"]
    if kind in ("mm", "bmm"):
        dims = ("batch", "m", "n", "k") if kind == "bmm" else ("m", "n", "k")
        swept = row.get("x_name") or SWEPT[kind]
        return ", ".join(f"{d}={_int(row[d])}" for d in dims if d != swept)
    common = f"t={_int(row['t'])}, b={_int(row['b'])}, s={_int(row['s'])}"
    if kind in ("logits", "swiglu"):
        return f"h={_int(row['h'])}, {common}"
    held = row.get("held")
    head = f"h/a={_int(row['head_dim'])}" if held == "head_dim" else f"a={_int(row['a'])}"
    causal = ", causal" if kind == "flash" and row.get("causal") else ""
    return f"{head}, {common}{causal}"


def ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def swiglu_block(df: pd.DataFrame) -> pd.DataFrame:
    """The SwiGLU MLP's three GEMMs per intermediate size: up and gate share a shape (measured once,
    counted twice), plus down."""
    rows = ok(df[df["kind"] == "swiglu"])
    if rows.empty:
        return pd.DataFrame(columns=["series", "h", "ffn", "flops", "median_ms", "tflops"])
    keys = ["series", "h", "ffn", "t", "b", "s", "dtype", "gpu", "tag"]
    weight = rows["component"].map({"mlp_up": 2, "mlp_down": 1})
    parts = rows.assign(w_ms=rows["median_ms"] * weight, w_flops=rows["flops"] * weight)
    block = parts.groupby(keys, dropna=False).agg(flops=("w_flops", "sum"), median_ms=("w_ms", "sum"),
                                                  components=("component", "nunique")).reset_index()
    block = block[block["components"] == 2].drop(columns="components")
    block["tflops"] = block["flops"] / (block["median_ms"] * 1e-3) / 1e12
    return block.sort_values(keys).reset_index(drop=True)


def dips(df: pd.DataFrame, *, drop: float = 0.05, tile: str = "128x256") -> pd.DataFrame:
    """Points whose throughput falls by more than `drop` from the previous point of the same plotted line,
    with the predicted explanation: a new wave started (waves went up, the last wave nearly empty), the
    power of two dividing h/a fell (Fig. 7, held-h/a lines), or a misaligned swept size (not a multiple of 64)."""
    out = []
    rows = ok(df).sort_values(["kind", "component", "line", "x"])
    for (_, _, _), line in rows.groupby(["kind", "component", "line"], sort=False):
        prev = None
        for row in line.to_dict("records"):
            if prev is not None and row["tflops"] < prev["tflops"] * (1 - drop):
                out.append({
                    "kind": row["kind"], "component": row["component"], "series": row["line"],
                    "x_name": row["x_name"], "x_before": prev["x"], "x": row["x"],
                    "tflops_before": prev["tflops"], "tflops": row["tflops"],
                    "drop_pct": 100 * (1 - row["tflops"] / prev["tflops"]),
                    f"waves_{tile}": row.get(f"waves_{tile}"), f"last_wave_fill_{tile}": row.get(f"last_wave_fill_{tile}"),
                    "explanation": explain(prev, row, tile),
                })
            prev = row
    return pd.DataFrame(out, columns=["kind", "component", "series", "x_name", "x_before", "x", "tflops_before",
                                      "tflops", "drop_pct", f"waves_{tile}", f"last_wave_fill_{tile}", "explanation"])


def explain(prev: dict, row: dict, tile: str = "128x256") -> str:
    reasons = []
    w0, w1 = prev.get(f"waves_{tile}"), row.get(f"waves_{tile}")
    if w0 is not None and w1 is not None and not pd.isna(w0) and not pd.isna(w1) and w1 > w0:
        fill = row.get(f"last_wave_fill_{tile}")
        reasons.append(f"new wave: {int(w0)} -> {int(w1)} waves of {tile} tiles, last wave {fill:.0%} full")
    p0, p1 = prev.get("head_dim_pow2"), row.get("head_dim_pow2")
    if row["component"] not in ("attention_score", "attention_over_values", "flash_attention"):
        p0 = p1 = None  # h/a is in no dimension of the other GEMMs
    if p0 is not None and p1 is not None and not pd.isna(p0) and not pd.isna(p1) and p1 < min(p0, 64):
        reasons.append(f"h/a={int(row['head_dim'])}: largest power of two dividing it fell {int(p0)} -> {int(p1)}")
    x = row["x"]
    if not reasons and x % 64 and not prev["x"] % 64:
        reasons.append(f"{row['x_name']}={int(x)} is not a multiple of 64 (tensor-core alignment)")
    return "; ".join(reasons) or "not predicted by waves or alignment"


def wave_agreement(dip_table: pd.DataFrame) -> dict:
    """How many measured dips the predictions explain (the issue's 'predicted waves explain the dips')."""
    n = len(dip_table)
    explained = int((~dip_table["explanation"].str.startswith("not predicted")).sum()) if n else 0
    return {"dips": n, "explained": explained, "unexplained": n - explained}

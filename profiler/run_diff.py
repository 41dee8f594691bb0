"""Two profiled configs compared row by row: what got faster, what slower, and what only moved within noise.

Pure: two components tables (one config each) in, one table out; reading run directories is
profiler/commands/diff.py's, drawing is reports/diff_report.py's.

Rows are matched on (pass, component, role). Old components.csv files (before roles and the two shares)
have `share` (of kernel time) and no `role`: `normalise_components` reads both schemas, and when one side
has no roles both sides are compared per (pass, component): a side's roles are summed into one row (time,
p10, p90, share and FLOPs added; the summed p10 / p90 only approximate the spread of the sum).

Within noise: the two medians differ by no more than NOISE_SPREADS x the two sides' p10-p90 spreads put
end to end, (p90_a - p10_a) + (p90_b - p10_b). Each side's spread is over the steps of one trace; the runs
being compared were measured minutes apart under their own clocks, so a difference inside both spreads
is not one the measurement can tell from noise. A row on one side only is "only in A" / "only in B".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NOISE_SPREADS = 1.0  # a difference up to the sum of the two p10-p90 spreads is noise
KEYS = ["pass", "component", "role"]
VALUES = ["kind", "time_us", "p10_us", "p90_us", "share_of_kernel_time", "tflops", "flops"]
VERDICTS = ("slower in B", "faster in B", "within noise", "only in A", "only in B")


def normalise_components(df: pd.DataFrame) -> pd.DataFrame:
    """One config's rows in the current schema: `role` ('' where absent), `share_of_kernel_time` (from the
    old `share`), and every column of VALUES (NaN where the file has none)."""
    out = df.copy()
    if "role" not in out:
        out["role"] = ""
    out["role"] = out["role"].fillna("").astype(str)
    if "share_of_kernel_time" not in out and "share" in out:
        out["share_of_kernel_time"] = out["share"]
    for column in VALUES:
        if column not in out:
            out[column] = np.nan
    return out[KEYS + VALUES].reset_index(drop=True)


def collapse_roles(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (pass, component): a GEMM's roles (fprop; dgrad and wgrad) summed, role ''."""
    summed = df.groupby(["pass", "component"], sort=False).agg(
        kind=("kind", "first"), time_us=("time_us", "sum"), p10_us=("p10_us", "sum"), p90_us=("p90_us", "sum"),
        share_of_kernel_time=("share_of_kernel_time", "sum"), flops=("flops", lambda f: f.sum(min_count=1)),
    ).reset_index()
    summed["role"] = ""
    summed["tflops"] = (summed["flops"] / (summed["time_us"] * 1e-6) / 1e12).where(summed["flops"] > 0)
    return summed[KEYS + VALUES]


def verdict(delta_us: float, band_us: float, in_a: bool, in_b: bool) -> str:
    if not in_a:
        return "only in B"
    if not in_b:
        return "only in A"
    if abs(delta_us) <= band_us:
        return "within noise"
    return "slower in B" if delta_us > 0 else "faster in B"


def diff_components(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per (pass, component, role): A's and B's time (median, p10, p90), the change in us and %, the noise
    band and the verdict; TFLOP/s and share of kernel time on each side and their change."""
    by_role = "role" in a and "role" in b
    a, b = normalise_components(a), normalise_components(b)
    if not by_role:
        a, b = collapse_roles(a), collapse_roles(b)
    joined = a.merge(b, on=KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    in_a = joined["_merge"].isin(("both", "left_only"))
    in_b = joined["_merge"].isin(("both", "right_only"))
    out = joined[KEYS].copy()
    out["kind"] = joined["kind_a"].fillna(joined["kind_b"])
    for side in ("a", "b"):
        out[f"time_{side}_us"] = joined[f"time_us_{side}"]
        out[f"p10_{side}_us"] = joined[f"p10_us_{side}"]
        out[f"p90_{side}_us"] = joined[f"p90_us_{side}"]
    out["delta_us"] = out["time_b_us"].fillna(0.0) - out["time_a_us"].fillna(0.0)
    out["delta_pct"] = 100 * out["delta_us"] / out["time_a_us"].where(out["time_a_us"] > 0)
    spread = (out["p90_a_us"] - out["p10_a_us"]).fillna(0.0) + (out["p90_b_us"] - out["p10_b_us"]).fillna(0.0)
    out["noise_band_us"] = NOISE_SPREADS * spread
    out["verdict"] = [verdict(d, n, x, y) for d, n, x, y in zip(out["delta_us"], out["noise_band_us"], in_a, in_b)]
    out["tflops_a"], out["tflops_b"] = joined["tflops_a"], joined["tflops_b"]
    out["delta_tflops"] = out["tflops_b"] - out["tflops_a"]
    out["share_a_pct"] = 100 * joined["share_of_kernel_time_a"]
    out["share_b_pct"] = 100 * joined["share_of_kernel_time_b"]
    out["delta_share_pct"] = out["share_b_pct"].fillna(0.0) - out["share_a_pct"].fillna(0.0)
    order = {k: i for i, k in enumerate(zip(a["pass"], a["component"], a["role"]))}
    order.update({k: len(order) + i for i, k in enumerate(zip(b["pass"], b["component"], b["role"])) if k not in order})
    out["_order"] = [order[k] for k in zip(out["pass"], out["component"], out["role"])]
    return out.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def row_label(passname: str, component: str, role: str, passes: int = 2) -> str:
    """qkv_transform.wgrad (bwd): the row's name in charts and printed tables."""
    name = f"{component}.{role}" if role else component
    return name if passes == 1 else f"{name} ({'fwd' if passname == 'forward' else 'bwd'})"


def totals(table: pd.DataFrame) -> dict:
    """Summed kernel time per step on each side, and how many rows got each verdict."""
    return {"time_a_us": float(table["time_a_us"].sum()), "time_b_us": float(table["time_b_us"].sum()),
            "verdicts": {v: int((table["verdict"] == v).sum()) for v in VERDICTS}}


CLOCK_DIFF_TOLERANCE = 0.02  # as profiler.telemetry.CLOCK_TOLERANCE: NVML's ~15 MHz steps and run noise


def traced_clock_mhz(entry: dict) -> float | None:
    """The median SM clock (NVML) while a config's traced steps ran, from its run.json entry."""
    phase = ((entry.get("clock") or {}).get("phases") or {}).get("trace") or {}
    return phase.get("sm_clock_mhz")


def clock_notice(entry_a: dict, entry_b: dict) -> str | None:
    """Two traces taken at different SM clocks: a GEMM of the same shape then differs by about the clock ratio,
    which is the GPU's state (power cap, temperature), not the model. None when the clocks agree or are unknown."""
    a, b = traced_clock_mhz(entry_a), traced_clock_mhz(entry_b)
    if not a or not b or abs(b / a - 1) <= CLOCK_DIFF_TOLERANCE:
        return None
    return (f"the traced steps ran at different SM clocks: A {a:.0f} MHz, B {b:.0f} MHz ({100 * (b / a - 1):+.1f}%); "
            "a compute-bound kernel of the same shape differs by about that much for the GPU's state (power cap, "
            "temperature), not for the model")


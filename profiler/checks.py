"""The profiler's self-checks: each one pure, with its tolerance stated here, and each able to fail.

A check returns a `Check` (pass | fail | skipped, the tolerance, what was observed, and per-row details).
Every run lists its checks in run.json, the CLI summary and the report; a failed check makes the command
exit non-zero unless asked not to. tests/test_checks.py shows each one failing on a doctored input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

# ---- tolerances (the numbers a reviewer should argue with) --------------------------------------------------
# in-layer time of a GEMM or fused attention vs the same kernel(s) alone, beyond the two sides' own spread
VS_ALONE_TOLERANCE = 0.10
# kernels shorter than this are reported but not checked: launch and tail effects dominate them
VS_ALONE_MIN_US = 10.0
# attributed kernel time / all kernel time in the measured steps
COVERAGE_TOLERANCE = 0.01
# per-step kernel time across the traced steps: median of the first half vs the second half
TRACE_DRIFT_TOLERANCE = 0.03
# GPU span of the traced graph replays vs CUDA events around the same replays in the timed rounds
TRACE_VS_EVENTS_TOLERANCE = 0.05
# a layer is launch-bound when eager latency exceeds the CUDA-graph replay by more than this
LAUNCH_BOUND_RATIO = 1.20

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | skipped
    tolerance: str
    observed: str
    details: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        return asdict(self)


def _status(ok: bool) -> str:
    return PASS if ok else FAIL


def shapes_check(rows: list[dict]) -> Check:
    """The traced GEMM / attention shapes and dtypes against Table II for the config (profiler.shape_check)."""
    bad = [r for r in rows if not r["ok"]]
    observed = f"{len(rows) - len(bad)}/{len(rows)} match" + (
        f"; first mismatch: {bad[0]['what']} expected {bad[0]['expected']}, traced {bad[0]['observed']}" if bad else "")
    return Check("shapes", _status(not bad and bool(rows)), "exact", observed, rows)


def flops_check(rows: list[dict]) -> Check:
    """Our FLOP formulas (counted convention) against torch.utils.flop_counter on the ops that ran."""
    if not rows:
        return Check("flops", SKIPPED, "exact", "nothing to compare")
    bad = [r for r in rows if r["formula"] != r["counted"]]
    observed = f"{len(rows) - len(bad)}/{len(rows)} match" + (
        f"; first mismatch: {bad[0]['what']} formula {bad[0]['formula']:,} vs counted {bad[0]['counted']:,}" if bad else "")
    return Check("flops", _status(not bad), "exact", observed, rows)


def coverage_check(coverage: float, unattributed: list[dict]) -> Check:
    ok = coverage >= 1 - COVERAGE_TOLERANCE
    return Check("coverage", _status(ok), f">= {100 * (1 - COVERAGE_TOLERANCE):.0f}% of kernel time attributed",
                 f"{100 * coverage:.2f}% attributed; {len(unattributed)} unattributed kernel name(s)", unattributed)


def trace_drift_check(per_step_busy_us: list[float], per_step_clock_mhz: list[float | None] | None = None) -> Check:
    """Kernel time per traced step must not drift beyond what the SM clock explains: a drifting trace was not
    warmed up.

    Under a power cap the SM clock wanders by 100-200 MHz from round to round (H200), and the kernel time with
    it; the interleaved rounds give that wander to every compared figure alike. How much a layer's time follows
    its clock lies between not at all (memory-bound kernels) and in proportion (compute-bound ones), so where
    each step's clock was sampled (NVML, per traced round) the drift is judged over that range: it passes if
    some sensitivity between the two brings it within tolerance. At a steady clock this is the plain drift."""
    tolerance = f"first vs second half within {TRACE_DRIFT_TOLERANCE:.0%}, after at most the halves' SM clock change"
    n = len(per_step_busy_us)
    if n < 4:
        return Check("trace_stable", SKIPPED, tolerance, f"only {n} traced steps")
    import statistics

    half = n // 2
    first, second = statistics.median(per_step_busy_us[:half]), statistics.median(per_step_busy_us[n - half:])
    drift = second / first - 1 if first else 0.0
    observed = f"{first:.1f} -> {second:.1f} us of kernels per step ({100 * drift:+.1f}%)"
    low = high = drift
    clocks = list(per_step_clock_mhz or [])
    if len(clocks) == n:
        a = [c for c in clocks[:half] if c]
        b = [c for c in clocks[n - half:] if c]
        if a and b:
            clock_a, clock_b = statistics.median(a), statistics.median(b)
            at_one_clock = (second * clock_b) / (first * clock_a) - 1 if first else 0.0
            low, high = min(drift, at_one_clock), max(drift, at_one_clock)
            observed += (f" at SM clock {clock_a:.0f} -> {clock_b:.0f} MHz ({100 * (clock_b / clock_a - 1):+.1f}%): "
                         f"{100 * at_one_clock:+.1f}% if the time followed the clock in proportion")
    # the smallest drift any clock sensitivity in [0, 1] leaves: 0 if the range straddles it
    judged = 0.0 if low <= 0.0 <= high else min(abs(low), abs(high))
    details = [{"step_index": i, "busy_us": round(x, 3),
                **({"sm_clock_mhz": clocks[i]} if len(clocks) == n else {})} for i, x in enumerate(per_step_busy_us)]
    return Check("trace_stable", _status(judged <= TRACE_DRIFT_TOLERANCE), tolerance, observed, details)


def warmup_check(warmups: dict[str, dict]) -> Check:
    """Every warm-up reached a stable time before its measurement."""
    if not warmups:
        return Check("warmup_stable", SKIPPED, "", "no warm-up recorded")
    bad = [name for name, w in warmups.items() if not w.get("stable")]
    return Check("warmup_stable", _status(not bad), "two consecutive windows within 2%",
                 "stable in every phase" if not bad else f"not stable: {', '.join(bad)}",
                 [{"phase": k, **v} for k, v in warmups.items()])


def trace_vs_events_check(span_us: float, events_us: float, spread: float = 0.0, *, what: str = "graph replay") -> Check:
    """Two instruments, one quantity, both GPU-side: the traced replays' kernel span against CUDA events
    around the same replays in the timed rounds. Both sides' p10-p90 spreads widen the allowance. A
    launch-bound layer is judged like any other: its graph replays have no host in them."""
    diff = span_us / events_us - 1 if events_us else float("nan")
    allowed = TRACE_VS_EVENTS_TOLERANCE + spread
    tolerance = f"within {TRACE_VS_EVENTS_TOLERANCE:.0%} + both sides' p10-p90 spread ({100 * allowed:.1f}%)"
    observed = f"traced {what} span {span_us:.1f} us vs CUDA events {events_us:.1f} us ({100 * diff:+.1f}%)"
    return Check("trace_vs_events", _status(abs(diff) <= allowed), tolerance, observed)


def graph_kernels_check(mismatches: list[dict], eager_reason: str | None = None) -> Check:
    """Every graph replay ran exactly the kernels of its unit's eager call, in the same order: what lets the
    eager call's attribution name the replay's kernels (profiler.protocol.map_replays)."""
    tolerance = "every replay's kernel names = its eager call's, in order"
    if eager_reason:
        return Check("graph_kernels", SKIPPED, tolerance, eager_reason)
    if not mismatches:
        return Check("graph_kernels", PASS, tolerance, "every replay matches its eager call")
    first = mismatches[0]
    return Check("graph_kernels", FAIL, tolerance,
                 f"{len(mismatches)} replay(s) differ; first: {first['unit']} round {first['round']}: "
                 f"{first['first_difference']}", mismatches[:20])


def clock_check(comparison: dict | None, reason: str = "") -> Check:
    tolerance = "phase medians within max(p10-p90 spread, 2%)"
    if comparison is None or not comparison.get("pairs"):
        return Check("clock_phases", SKIPPED, tolerance, reason or "fewer than two phases with clock samples")
    bad = [p for p in comparison["pairs"] if not p["ok"]]
    observed = "all phases agree" if not bad else "; ".join(
        f"{p['phases']}: {p['clock_a_mhz']:.0f} vs {p['clock_b_mhz']:.0f} MHz" for p in bad)
    return Check("clock_phases", _status(not bad), tolerance, observed, comparison["pairs"])


def vs_alone_rows(components: pd.DataFrame) -> pd.DataFrame:
    """Per component with an alone time: the difference and whether it is within tolerance + both spreads.

    Adds columns vs_alone_pct, vs_alone_allowed_pct and vs_alone_check (pass | fail | too short)."""
    df = components.copy()
    has = df["alone_us"].notna() & (df["alone_us"] > 0)
    df["vs_alone_pct"] = 100 * (df["time_us"] / df["alone_us"] - 1)
    in_spread = (df["p90_us"] - df["p10_us"]) / df["time_us"]
    alone_spread = (df["alone_p90_us"] - df["alone_p10_us"]) / df["alone_us"]
    df["vs_alone_allowed_pct"] = 100 * (VS_ALONE_TOLERANCE + in_spread.fillna(0) + alone_spread.fillna(0))
    short = df["alone_us"] < VS_ALONE_MIN_US
    ok = df["vs_alone_pct"].abs() <= df["vs_alone_allowed_pct"]
    df["vs_alone_check"] = None
    df.loc[has & short, "vs_alone_check"] = "too short"
    df.loc[has & ~short, "vs_alone_check"] = ok[has & ~short].map({True: PASS, False: FAIL})
    df.loc[~has, ["vs_alone_pct", "vs_alone_allowed_pct"]] = float("nan")
    return df


def vs_alone_check(components: pd.DataFrame) -> Check:
    rows = components[components["vs_alone_check"].notna()]
    tolerance = (f"|in layer / alone - 1| <= {VS_ALONE_TOLERANCE:.0%} + both sides' p10-p90 spread; "
                 f"kernels under {VS_ALONE_MIN_US:.0f} us not checked")
    if rows.empty:
        return Check("in_layer_vs_alone", SKIPPED, tolerance, "no floor measured")
    details = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in rows[
        ["pass", "component", "role", "time_us", "p10_us", "p90_us", "alone_us", "alone_p10_us", "alone_p90_us",
         "vs_alone_pct", "vs_alone_allowed_pct", "vs_alone_check"]].to_dict("records")]
    bad = rows[rows["vs_alone_check"] == FAIL]
    checked = int((rows["vs_alone_check"] != "too short").sum())
    observed = (f"{checked - len(bad)}/{checked} within tolerance (range {rows['vs_alone_pct'].min():+.1f}% to "
                f"{rows['vs_alone_pct'].max():+.1f}%)")
    if len(bad):
        worst = bad.loc[bad["vs_alone_pct"].abs().idxmax()]
        observed += (f"; worst: {worst['pass']} {worst['component']}{('.' + worst['role']) if worst['role'] else ''} "
                     f"{worst['vs_alone_pct']:+.1f}% (allowed {worst['vs_alone_allowed_pct']:.1f}%)")
    return Check("in_layer_vs_alone", _status(bad.empty), tolerance, observed, details)


def summarize_checks(checks: list[Check]) -> dict:
    failed = [c.name for c in checks if c.failed]
    return {"passed": sum(c.status == PASS for c in checks), "failed": failed,
            "skipped": [c.name for c in checks if c.status == SKIPPED], "all_passed": not failed}

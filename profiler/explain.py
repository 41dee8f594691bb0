"""Profiler depth in one call: why each GEMM is slow, what each non-GEMM step costs in bandwidth, the two GEMM
signals' disagreements and the sanity flags, for one attributed trace (issue 12).

    from profiler.explain import explain_activities
    depth = explain_activities(activities, components=summary, cfg=cfg, device_properties=props,
                               environment=env)
    depth.gemms      # profiler.gemm_explain.explain_gemms: tiles, waves, persistent, TFLOP/s, `why`
    depth.roofline   # profiler.roofline.non_gemm_roofline: bytes, GB/s, % of the copy bandwidth
    depth.flags      # profiler.gemm_flags.gemm_flags
    depth.disagreements, depth.detection  # profiler.gemm_detect

`explain_run_config` does the same from a run directory's files (run.json, components.csv, the trace), for
evidence recorded before these columns existed (scripts/explain_runs.py). Only composition here: each
analysis is a pure function in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models import config_from_mapping
from models.config import ModelConfig, safe_name

from .attribution import attribute_detailed
from .gemm_detect import classify, detection_summary, disagreements, on_gpu
from .gemm_explain import explain_gemms, sm_limits
from .gemm_flags import gemm_flags
from .roofline import copy_bandwidth, non_gemm_roofline
from .run_diff import normalise_components
from .trace import device_properties as trace_device_properties
from .trace import load_trace


@dataclass
class Depth:
    gemms: pd.DataFrame
    roofline: pd.DataFrame
    flags: pd.DataFrame
    disagreements: pd.DataFrame
    detection: pd.DataFrame
    sms: int | None
    copy_tbps: float | None
    copy_source: str
    on_gpu: bool = True  # False: a CPU trace, whose activities are host ops (no kernels, tiles or waves)


def explain_activities(activities: pd.DataFrame, *, components: pd.DataFrame, cfg: ModelConfig,
                       device_properties: dict | None = None, environment: dict | None = None,
                       include_logits: bool = False, ceiling_tflops: float | None = None) -> Depth:
    """Every depth analysis of one config. `components`: its components table (pass, component, role, kind,
    time_us[, flops]); `device_properties`: the trace's (SM count and SM limits); `environment`: the run's
    (sm_count when the trace has none, measured_peak_tflops, measured_copy_tbps, gpu_name); `ceiling_tflops`:
    the config's GEMM ceiling (run.json `ceiling.tflops`: the fastest GEMM under the timing definition), the
    compute roof of every GEMM's roofline. Without it, the environment's measured peak: an 8192^3 GEMM back to
    back, which in-layer GEMMs can beat (a roofline above 100%)."""
    env = environment or {}
    props = device_properties or {}
    sms = props.get("numSms") or env.get("sm_count")
    tbps, source = copy_bandwidth(env)
    rows = normalise_components(with_roles(components))  # either components.csv schema, old or new
    peak = ceiling_tflops or (env.get("measured_peaks") or {}).get(cfg.dtype, {}).get("tflops") \
        or env.get("measured_peak_tflops")
    gemms = explain_gemms(activities, sms=sms, limits=sm_limits(props), components=rows, cfg=cfg,
                          peak_tflops=peak, copy_tbps=tbps) if sms and on_gpu(activities) else pd.DataFrame()
    classified = classify(activities)
    return Depth(gemms=gemms,
                 roofline=non_gemm_roofline(rows, cfg, environment=env, include_logits=include_logits),
                 flags=gemm_flags(gemms, classified, dtype=cfg.dtype),
                 disagreements=disagreements(classified), detection=detection_summary(classified),
                 sms=sms, copy_tbps=tbps, copy_source=source, on_gpu=on_gpu(activities))


def with_roles(components: pd.DataFrame) -> pd.DataFrame:
    """An old components.csv (no `role`) with the roles its rows can be matched on: a forward GEMM row is the
    fprop one; a backward GEMM row sums two roles and keeps '' (no single kernel explains it)."""
    if "role" in components:
        return components
    roles = ["fprop" if k == "gemm" and p == "forward" else "" for k, p in zip(components["kind"], components["pass"])]
    return components.assign(role=roles)


def trace_of(run_dir: Path, entry: dict) -> Path | None:
    """A config's trace in a run directory: run.json's path, its gzipped copy, or tb/NAME.*.pt.trace.json*."""
    recorded = entry.get("trace")
    if recorded:
        for candidate in (run_dir / recorded, run_dir / f"{recorded}.gz"):
            if candidate.is_file():
                return candidate
    found = sorted((run_dir / "tb").glob(f"{safe_name(entry['name'])}.*.pt.trace.json*"))
    return found[-1] if found else None


def explain_run_config(run_dir: Path, run: dict, components: pd.DataFrame, entry: dict) -> Depth | None:
    """explain_activities for one config of a run directory (None when its trace is missing)."""
    path = trace_of(run_dir, entry)
    if path is None:
        return None
    cfg = config_from_mapping(entry["config"], source=f"{run_dir}/run.json")
    rows = components[components["config"] == entry["name"]]
    activities, _ = attribute_detailed(load_trace(path))
    return explain_activities(activities, components=rows, cfg=cfg, device_properties=trace_device_properties(path),
                              environment=run.get("environment"),
                              include_logits=bool((entry.get("options") or {}).get("include_logits")),
                              ceiling_tflops=(entry.get("ceiling") or {}).get("tflops"))


GEMM_COLUMNS = ("kernel", "tile", "ctas", "ctas_per_sm", "tiles", "waves", "last_wave_fill_pct", "tile_efficiency_pct",
                "wave_model", "split_k", "intensity_flop_per_byte", "roofline_tflops", "pct_of_roofline", "why")
ROOFLINE_COLUMNS = ("bytes_moved", "achieved_gbps", "bandwidth_pct", "low_bandwidth")


def join_depth(components: pd.DataFrame, depth: Depth) -> pd.DataFrame:
    """The components table with the depth columns joined on (pass, component, role): GEMM_COLUMNS for GEMM
    and fused-attention rows, ROOFLINE_COLUMNS for non-GEMM rows, `signals_agree` for every row (both GEMM
    signals agree with the attribution on every kernel of the row). Empty where a row has none."""
    keys = ["pass", "component", "role"]
    out = with_roles(components).copy()
    out["role"] = out["role"].fillna("")
    parts = [(depth.gemms, GEMM_COLUMNS), (depth.roofline, ROOFLINE_COLUMNS),
             (depth.detection.assign(signals_agree=depth.detection.get("agree")), ("signals_agree",))]
    for table, columns in parts:
        present = [c for c in columns if c in table]
        if table.empty or not present:
            for c in columns:
                out[c] = None
            continue
        out = out.drop(columns=[c for c in present if c in out]).merge(table[keys + present], on=keys, how="left")
    return out

"""Print why each GEMM of each profiled config runs at its speed, and what differs between the configs.

    python scripts/explain_runs.py evidence/h100/layer/figure1-eager evidence/h100/layer/figure1-flash

For every layer run directory (run.json + components.csv + tb/ traces) and every config in it: each GEMM
and fused-attention row with its time, TFLOP/s, shape, kernel tile and the one-line explanation
(profiler.gemm_explain), the non-GEMM steps far below the copy bandwidth (profiler.roofline), the sanity
flags and the GEMM-signal disagreements; then, per row, what differs across the run's configs.
Works on evidence recorded before these analyses existed: everything is recomputed from the trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from profiler.explain import explain_run_config  # noqa: E402
from profiler.roofline import LOW_BANDWIDTH_PCT  # noqa: E402

TFLOPS_DIFFERENT = 0.10  # a row's TFLOP/s differs across configs when it spans more than 10% of the lowest


def _pass(name: str) -> str:
    return "fwd" if name == "forward" else "bwd"


def _label(r) -> str:
    return f"{r['component']}.{r['role']}" if r["role"] else r["component"]


def _shape(r) -> str:
    if pd.isna(r["m"]):
        return "shape unknown"
    batch = f"{int(r['batch'])}x" if r["batch"] and r["batch"] > 1 else ""
    return f"{batch}({int(r['m'])},{int(r['k'])})x({int(r['k'])},{int(r['n'])})"


def _tflops(v) -> str:
    return f"{v:6.0f} TFLOP/s" if pd.notna(v) else "   -- TFLOP/s"


def config_lines(entry: dict, depth) -> list[str]:
    cfg = entry["config"]
    lines = [f"-- {entry['name']}: h={cfg['hidden_size']} a={cfg['num_attention_heads']} "
             f"h/a={cfg['hidden_size'] // cfg['num_attention_heads']} b={cfg['micro_batch_size']} "
             f"s={cfg['seq_length']} {cfg['attention']} {entry.get('mode', '')}"]
    if not depth.on_gpu:
        return lines + ["  a CPU trace: host ops, no GPU kernels; nothing to explain (run on a GPU)"]
    for r in depth.gemms.to_dict("records"):
        lines.append(f"  {_pass(r['pass'])} {_label(r):<28} {r['time_us']:8.1f} us {_tflops(r['tflops'])}  "
                     f"{_shape(r):<28} {r['family']}")
        lines.append(f"      {r['why']}")
    low = depth.roofline[depth.roofline["low_bandwidth"]]
    lines.append("  non-GEMM below {:.0f}% of the copy bandwidth: {}".format(
        LOW_BANDWIDTH_PCT, ", ".join(f"{_pass(r['pass'])} {r['component']} {r['bandwidth_pct']:.0f}% "
                                     f"({r['achieved_gbps']:.0f} GB/s)" for r in low.to_dict("records")) or "none"))
    lines.append("  flags: " + ("; ".join(f"{r['flag']} {r['component']}.{r['role']}: {r['detail']}"
                                         for r in depth.flags.to_dict("records")) or "none"))
    lines.append("  GEMM signals: " + ("; ".join(f"{r['issue']} {r['component']}: {r['name'][:60]}"
                                                for r in depth.disagreements.to_dict("records"))
                                       or "op and kernel name agree with the attribution for every kernel"))
    return lines


def differences(per_config: dict[str, pd.DataFrame]) -> list[str]:
    """Per (pass, component, role): each config's tile, wave model and TFLOP/s where they differ."""
    frames = [g.assign(config=name) for name, g in per_config.items() if len(g)]
    if len(frames) < 2:
        return []
    table = pd.concat(frames, ignore_index=True)
    lines = ["-- what differs between the configs"]
    for (pas, component, role), rows in table.groupby(["pass", "component", "role"], sort=False):
        name = f"{_pass(pas)} {component}.{role}" if role else f"{_pass(pas)} {component}"
        if len(rows) < 2:
            lines.append(f"  {name}: only in {rows['config'].iloc[0]}")
            continue
        same_kernel = rows["tile"].nunique() == 1 and rows["wave_model"].nunique() == 1 and \
            rows["tile_efficiency_pct"].round(1).nunique() <= 1 and \
            len(rows[["batch", "m", "n", "k"]].drop_duplicates()) == 1
        t = rows["tflops"].dropna()
        same_speed = t.empty or (t.max() - t.min()) <= TFLOPS_DIFFERENT * t.min()
        kernel = f"same shape and tile ({rows['tile'].iloc[0]}, {rows['wave_model'].iloc[0]}) in every config"
        if same_kernel and same_speed:
            lines.append(f"  {name}: {kernel}, TFLOP/s within {100 * TFLOPS_DIFFERENT:.0f}%")
            continue
        if same_kernel:
            lines.append(f"  {name}: {kernel}, yet TFLOP/s from {t.min():.0f} to {t.max():.0f} "
                         f"({100 * (t.max() / t.min() - 1):.0f}%): not the shape; the clock, or the work around it "
                         f"({', '.join(f'{c} {v:.0f}' for c, v in zip(rows['config'], rows['tflops']))})")
            continue
        parts = []
        for r in rows.to_dict("records"):
            extra = f", {r['intensity_flop_per_byte']:.0f} FLOP/B" if pd.notna(r.get("intensity_flop_per_byte")) \
                and r.get("memory_bound") else ""
            parts.append(f"{r['config']}: {_shape(r)} {r['tile']} {r['wave_model']} {r['tiles']} tiles, "
                         f"{r['tile_efficiency_pct']:.0f}% used, {r['tflops']:.0f} TFLOP/s{extra}"
                         if pd.notna(r["tflops"]) else f"{r['config']}: {r['tile']} {r['wave_model']}")
        lines.append(f"  {name}:\n    " + "\n    ".join(parts))
    return lines


def explain_dir(run_dir: Path) -> list[str]:
    run = json.loads((run_dir / "run.json").read_text())
    components = pd.read_csv(run_dir / "components.csv")
    env = run.get("environment") or {}
    lines, per_config, header = [], {}, None
    for entry in run.get("configs", []):
        if entry.get("status", "ok") != "ok":
            lines.append(f"-- {entry['name']}: not profiled ({entry.get('status')})")
            continue
        depth = explain_run_config(run_dir, run, components, entry)
        if depth is None:
            lines.append(f"-- {entry['name']}: no trace found in {run_dir / 'tb'}")
            continue
        header = header or (f"== {run_dir} ({env.get('gpu_name')}, {depth.sms} SMs; measured peak "
                            f"{env.get('measured_peak_tflops')} TFLOP/s; copy {depth.copy_tbps} TB/s: {depth.copy_source})")
        lines += config_lines(entry, depth)
        per_config[entry["name"]] = depth.gemms
    return [header or f"== {run_dir}"] + lines + differences(per_config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="layer run directory")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if not (run_dir / "run.json").is_file() or not (run_dir / "components.csv").is_file():
            print(f"error: {run_dir} is not a layer run directory (run.json + components.csv)", file=sys.stderr)
            return 2
    for run_dir in args.run_dirs:
        print("\n".join(explain_dir(run_dir)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

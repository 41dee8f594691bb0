"""The carry-over comparison as data: what a carry-over directory holds, loaded and analysed (pure analysis
in inference/carryover.py), for the report to render and the command to write out.

    data = load_carryover(Path("runs/carryover"))
    data.table      # one row per engine x batch x prompt x shape, gains over the baseline
    data.verdicts   # one verdict per shape; data.orders: do the orderings agree
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import analysis, carryover
from .carryover_run import manifest_path, read_manifest
from .results import ResultsFile

TABLE_COLUMNS = [
    "engine", "variant", "batch", "prompt_len", "model", "is_baseline", "status", "params_total", "head_dim",
    "train_fwdbwd_tflops", "train_fwdbwd_gain", "train_fwdbwd_gain_lo", "train_fwdbwd_gain_hi", "train_fwdbwd_class",
    "train_fwd_tflops", "train_fwd_gain", "train_fwd_gain_lo", "train_fwd_gain_hi", "train_fwd_class",
    "ttft_ms", "ttft_p10_ms", "ttft_p90_ms", "prefill_tflops", "prefill_gain", "prefill_gain_lo", "prefill_gain_hi",
    "prefill_class", "decode_p50_ms", "decode_p10_ms", "decode_p90_ms", "decode_tbps", "decode_floor_ms",
    "decode_gain", "decode_gain_lo", "decode_gain_hi", "decode_class", "reason"]


@dataclass
class CarryoverData:
    baseline: str
    manifest: dict
    bench: pd.DataFrame  # the bench rows of this comparison
    layer: pd.DataFrame  # the layer profiles, one row per shape x mode x attention
    tables: dict  # training attention -> the comparison table (the first is the headline)
    verdicts: pd.DataFrame
    orders: pd.DataFrame
    others: list = field(default_factory=list)  # (attention, verdicts, orders) of every other attention
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)  # decode vs batch
    knees: pd.DataFrame = field(default_factory=pd.DataFrame)
    glance: pd.DataFrame = field(default_factory=pd.DataFrame)
    environment: dict = field(default_factory=dict)

    @property
    def primary(self):
        return next(iter(self.tables))

    @property
    def table(self) -> pd.DataFrame:
        return self.tables[self.primary]


def select(rows: list[dict], settings: dict | None, names: list[str] | None = None) -> pd.DataFrame:
    """The bench rows of this comparison: its shapes, new tokens and dtype (a results file may also hold
    rows of earlier runs with other settings)."""
    df = analysis.results_frame(rows)
    if settings and len(df):
        keep = df["new_tokens"].eq(settings.get("new_tokens")) & df["dtype"].eq(settings.get("dtype"))
        if names:
            keep &= df["model"].isin(names)
        df = df[keep]
    return df.reset_index(drop=True)


def with_agreement(orders: pd.DataFrame) -> pd.DataFrame:
    """The ordering table with its agreement in words in place of agrees/contradictions."""
    if orders.empty:
        return orders
    shown = orders.drop(columns=["agrees", "contradictions"])
    shown.insert(shown.columns.get_loc("inference_order") + 1, "agreement",
                 [carryover.agreement_text(r) for _, r in orders.iterrows()])
    return shown


def verdict_lines(verdicts: pd.DataFrame, orders: pd.DataFrame) -> list[str]:
    return list(verdicts["verdict"]) + [""] + [
        f"ordering {r['engine']} p={r['prompt_len']} b={r['batch']} {r['metric']}: training {r['training_order']} | "
        f"inference {r['inference_order']} | {carryover.agreement_text(r)}"
        for _, r in orders.iterrows()] + [""]


def load_carryover(out_dir: str | Path) -> CarryoverData:
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    baseline = manifest["baseline"]
    bench_spec = manifest.get("bench") or {}
    bench_store = ResultsFile(out_dir / "bench")
    names = manifest.get("model_names")
    bench = select(bench_store.rows(), bench_spec, names)
    # what the manifest names, else whatever DIR holds: two calls' outputs unpacked into one DIR render together
    paths = [manifest_path(out_dir, p) for p in manifest.get("layer_profiles", [])]
    paths = [p for p in paths if p.exists()] or sorted(out_dir.glob("layer-*/run.json"))
    frames = [analysis.load_layer_profile(p) for p in paths]
    layer = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=analysis.LAYER_COLUMNS)
    attentions = [a for a in manifest.get("layer_attention", []) if a in carryover.layer_attentions(layer)]
    attentions += [a for a in carryover.layer_attentions(layer) if a not in attentions]
    tables = {a: carryover.carryover_table(bench, layer, baseline, a) for a in attentions or [None]} if len(bench) \
        else {None: pd.DataFrame(columns=TABLE_COLUMNS)}
    primary = next(iter(tables))
    table = tables[primary]
    verdicts, orders = carryover.verdicts(table, baseline), carryover.ordering(table)
    others = [(a, carryover.verdicts(t, baseline), carryover.ordering(t)) for a, t in tables.items() if a != primary]
    sweep = pd.DataFrame()
    knees = pd.DataFrame()
    decode_store = ResultsFile(out_dir / "decode")
    decode_spec = manifest.get("decode") or ((decode_store.runs() or [{}])[-1].get("spec"))
    if decode_spec and decode_store.path.is_file():
        decode_rows = select(decode_store.rows(), decode_spec, names)
        if len(decode_rows):
            sweep = carryover.decode_sweep(decode_rows)
            knees = carryover.decode_knee(sweep)
    at_a_glance = carryover.glance(tables, baseline) if len(bench) else pd.DataFrame()
    env = dict((bench_store.runs() or [{}])[-1].get("environment", {}))
    env.update(env.pop("versions", None) or {})
    return CarryoverData(baseline, manifest, bench, layer, tables, verdicts, orders, others, sweep, knees,
                         at_a_glance, env)


def write_tables(data: CarryoverData, out_dir: str | Path) -> list[Path]:
    """carryover.csv (every attention's table), glance.csv and verdicts.txt in `out_dir`."""
    out_dir = Path(out_dir)
    pd.concat(list(data.tables.values()), ignore_index=True).to_csv(out_dir / "carryover.csv", index=False)
    data.glance.to_csv(out_dir / "glance.csv", index=False)
    blocks = [(data.primary, data.verdicts, data.orders)] + data.others
    (out_dir / "verdicts.txt").write_text("\n".join(
        line for attention, v, o in blocks for line in
        ([f"# training profiled with {attention} attention"] if len(blocks) > 1 else []) + verdict_lines(v, o)))
    return [out_dir / "carryover.csv", out_dir / "glance.csv", out_dir / "verdicts.txt"]

"""The carry-over comparison as data: what a carry-over directory holds, loaded and analysed (pure analysis
in inference/carryover.py), for the report to render and the command to write out.

    data = load_carryover(Path("runs/carryover"))
    data.table      # one row per engine x batch x prompt x shape, gains over the baseline
    data.verdicts   # one verdict per shape; data.orders: do the orderings agree
    data.rounds     # the interleaved rounds (DIR/rounds), when measured: the headline verdicts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import analysis, carryover
from . import carryover_rounds as rounds_analysis
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
class RoundsData:
    """The interleaved rounds of one carry-over (inference/carryover_rounds.py's analysis of DIR/rounds)."""
    info: dict  # rounds.json: environment, settings, phases
    cells: pd.DataFrame  # per cell x shape: work, floor, check, status
    units: pd.DataFrame  # per cell x round x shape: unit time and throughput
    gains: pd.DataFrame  # per cell x shape: medians, gain over the baseline, bootstrap interval, class
    verdict_cells: list
    verdicts: pd.DataFrame
    orders: pd.DataFrame
    shape_tables: dict  # model -> its table against the baseline
    production: pd.DataFrame  # MII's decode rows, labelled with their floor ratio
    sweep: pd.DataFrame  # the decode cells as decode vs batch, one engine per context
    knees: pd.DataFrame


def load_rounds(folder: Path, baseline: str, bench_table: pd.DataFrame | None) -> RoundsData | None:
    """DIR/rounds analysed, or None when it holds no cells."""
    import json

    cells_path = Path(folder) / "cells.csv"
    if not cells_path.is_file() or not cells_path.stat().st_size:
        return None
    cells = pd.read_csv(cells_path).drop_duplicates(["cell", "model"], keep="last")
    rounds_path = Path(folder) / "rounds.csv"
    raw = pd.read_csv(rounds_path) if rounds_path.is_file() and rounds_path.stat().st_size else pd.DataFrame()
    info_path = Path(folder) / "rounds.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    seed = int((info.get("spec") or {}).get("seed") or 0)
    units = rounds_analysis.unit_times(raw, cells)
    gains = rounds_analysis.cell_gains(units, cells, baseline, seed=seed)
    decode = [tuple(c) for c in (info.get("spec") or {}).get("decode") or []]
    chosen = rounds_analysis.verdict_cells(gains, decode or None)
    production = rounds_analysis.production_rows(bench_table) if bench_table is not None else pd.DataFrame()
    sweep = rounds_analysis.decode_sweep(gains, cells)
    return RoundsData(info, cells, units, gains, chosen,
                      rounds_analysis.round_verdicts(gains, baseline, cells=chosen, production=production),
                      rounds_analysis.round_ordering(units, gains, cells=chosen, seed=seed),
                      rounds_analysis.shape_tables(gains, baseline, cells=chosen, production=production),
                      production, sweep, carryover.decode_knee(sweep) if len(sweep) else pd.DataFrame())


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
    rounds: RoundsData | None = None  # DIR/rounds: training, prefill and neox-graph decode in interleaved rounds

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
    rounds = load_rounds(out_dir / "rounds", baseline, table if len(bench) else None)
    env = dict((bench_store.runs() or [{}])[-1].get("environment", {}))
    env.update(env.pop("versions", None) or {})
    if not env and rounds is not None:
        env = dict(rounds.info.get("environment") or {})
    return CarryoverData(baseline, manifest, bench, layer, tables, verdicts, orders, others, sweep, knees,
                         at_a_glance, env, rounds)


def round_lines(rounds: RoundsData) -> list[str]:
    """The headline verdicts, the orderings and each shape's table, as text."""
    lines = ["# interleaved rounds (neox-graph decode; every interval: " + rounds_analysis.INTERVAL + ")"]
    lines += list(rounds.verdicts["verdict"]) + [""]
    lines += [f"ordering {r['cell']}: training {r['training_order']} | inference {r['inference_order']} | "
              f"{rounds_analysis.ordering_text(r)}" for _, r in rounds.orders.iterrows()] + [""]
    for model, table in rounds.shape_tables.items():
        lines += [f"## {model} against {rounds.gains.loc[rounds.gains['is_baseline'], 'model'].iloc[0]}"
                  if rounds.gains["is_baseline"].any() else f"## {model}", table.to_string(index=False), ""]
    return lines


def write_tables(data: CarryoverData, out_dir: str | Path) -> list[Path]:
    """carryover.csv (every attention's table), glance.csv, verdicts.txt and, with rounds, rounds-gains.csv in
    `out_dir`."""
    out_dir = Path(out_dir)
    pd.concat(list(data.tables.values()), ignore_index=True).to_csv(out_dir / "carryover.csv", index=False)
    data.glance.to_csv(out_dir / "glance.csv", index=False)
    blocks = [(data.primary, data.verdicts, data.orders)] + data.others
    head = round_lines(data.rounds) + ["# the bench's rows (p10-p90 ranges)"] if data.rounds is not None else []
    (out_dir / "verdicts.txt").write_text("\n".join(head + [
        line for attention, v, o in blocks for line in
        ([f"# training profiled with {attention} attention"] if len(blocks) > 1 else []) + verdict_lines(v, o)]))
    written = [out_dir / "carryover.csv", out_dir / "glance.csv", out_dir / "verdicts.txt"]
    if data.rounds is not None:
        data.rounds.gains.to_csv(out_dir / "rounds-gains.csv", index=False)
        written.append(out_dir / "rounds-gains.csv")
    return written

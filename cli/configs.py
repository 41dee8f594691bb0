"""`python -m profiler configs`: the bundled configs with their shapes and parameter counts."""

from __future__ import annotations

import argparse

import pandas as pd

from models import bundled_names, count_parameters, load_config


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def configs_table() -> pd.DataFrame:
    rows = []
    for name in bundled_names():
        cfg = load_config(name)
        params = count_parameters(cfg)
        rows.append({"name": name, "h": cfg.hidden_size, "a": cfg.num_attention_heads, "h/a": cfg.head_dim,
                     "L": cfg.num_layers, "ffn": cfg.ffn_size, "v": cfg.embedding_rows, "activation": cfg.activation,
                     "params": params.total, "non_embedding": params.non_embedding, "description": cfg.description})
    return pd.DataFrame(rows)


def run(args) -> int:
    table = configs_table()
    print(table.to_csv(index=False) if args.csv else table.to_string(index=False))
    return 0

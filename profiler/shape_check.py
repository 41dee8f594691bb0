"""Prove every option reached the kernels: the traced ops' input shapes and dtypes against the config.

The paper's own scripts once dropped their sequence-length and tensor-parallel options while still dividing
FLOPs by them; here each run reads the shapes the GEMM ops actually received (record_shapes) and compares
them with Table II for the config (b*s, h/t, 3h/t, h/a, ...). A mismatch fails the run's shape check.
"""

from __future__ import annotations

import pandas as pd

from models import ModelConfig, layer_gemms

TRACE_DTYPE = {"float32": "float", "bfloat16": "c10::BFloat16", "float16": "c10::Half"}


def _operands(op: str, dims: list) -> tuple[int, int, int, int] | None:
    """(batch, m, k, n) of a GEMM op from its recorded input dims."""
    try:
        if op in ("aten::mm",):
            (m, k), (_, n) = dims[0], dims[1]
            return 1, m, k, n
        if op == "aten::addmm":
            (m, k), (_, n) = dims[1], dims[2]
            return 1, m, k, n
        if op == "aten::bmm":
            (bt, m, k), (_, _, n) = dims[0], dims[1]
            return bt, m, k, n
        if op == "aten::baddbmm":
            (bt, m, k), (_, _, n) = dims[1], dims[2]
            return bt, m, k, n
    except (TypeError, ValueError, IndexError):
        return None
    return None


def check_shapes(host: pd.DataFrame, cfg: ModelConfig, *, include_logits: bool, dtype: str) -> list[dict]:
    """Compare the first measured step's forward ops with the config: one row per quantity, `ok` False on
    any difference (profiler.checks.shapes_check turns the rows into a check that fails)."""
    fwd = host[(host["cat"] == "cpu_op") & host["region"].notna() & host["bwd_seq"].isna() & (host["step"] >= 0)]
    first_step = fwd[fwd["step"] == fwd["step"].min()]
    checks: list[dict] = []

    def record(what: str, expected, observed) -> None:
        checks.append({"what": what, "expected": str(expected), "observed": str(observed), "ok": expected == observed})

    for gemm in layer_gemms(cfg, include_logits=include_logits):
        ops = first_step[(first_step["region"] == gemm.component) & first_step["name"].isin(
            ["aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"])]
        observed = [(_operands(n, d), t) for n, d, t in zip(ops["name"], ops["input_dims"], ops["input_types"])]
        shapes = [o for o, _ in observed if o is not None]
        record(f"{gemm.component} (batch, m, k, n)", (gemm.batch, gemm.m, gemm.k, gemm.n), shapes[0] if shapes else None)
        types = [t for _, t in observed if t]
        if types:
            record(f"{gemm.component} dtype", TRACE_DTYPE[dtype], next((x for x in types[0] if x), None))
    norms = first_step[(first_step["region"] == "norm") & first_step["name"].isin(
        ["aten::layer_norm", "aten::rms_norm"])]
    if len(norms):
        record("layer input (b, s, h)", [cfg.micro_batch_size, cfg.seq_length, cfg.hidden_size], norms["input_dims"].iloc[0][0])
    if cfg.attention != "eager":
        region = f"{cfg.attention}_attention"
        sdpa = first_step[(first_step["region"] == region) & (first_step["name"] == "aten::scaled_dot_product_attention")]
        record("attention q (b, a/t, s, h/a)", [cfg.micro_batch_size, cfg.heads_per_gpu, cfg.seq_length, cfg.head_dim],
               sdpa["input_dims"].iloc[0][0] if len(sdpa) else None)
        if cfg.attention == "flash" and len(sdpa):
            ops = set(first_step.loc[first_step["region"] == region, "name"])
            record("flash backend used", True, any("flash" in k for k in ops))
    return checks


def attention_ops(host: pd.DataFrame, cfg: ModelConfig) -> list[str]:
    """The aten ops that ran inside the fused attention's region: which SDPA backend PyTorch chose."""
    if cfg.attention == "eager":
        return []
    ops = host[(host["cat"] == "cpu_op") & (host["region"] == f"{cfg.attention}_attention") & host["bwd_seq"].isna()]
    return sorted({n for n in ops["name"] if n.startswith("aten::_") or "attention" in n})

"""SwiGLU intermediate-size search (paper Sections VI-C4, VII-B): for a given h, which MLP width near the
given one (or 8h/3) runs the MLP block fastest per FLOP?

8h/3 keeps a SwiGLU MLP's parameters equal to a 4h GeLU MLP's, but "1/3 will break all the alignments";
the coefficient is only a suggestion, so one searches nearby widths. The paper: Llama-2-7B's 11008 (h=4096,
2.6875 h) "is indeed one of the best performing sizes in its range". Widths here are multiples of a step
(64 by default, x t) in a window around the centre, plus the config's own width and 8h/3 rounded (the
naive choice), ranked by MLP-block throughput: the block's GEMM FLOPs over its measured (or modelled) time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from models import ModelConfig

from ..errors import UserError
from ..quantization import largest_power_of_two_dividing
from .cost_model import layer_estimate
from .gpus import GpuModel
from .ranking import SELF_SUFFIX, bootstrap_interval, faster_verdict, quantile

MLP_COMPONENTS = ("mlp_up", "mlp_gate", "mlp_down", "activation")  # the block as measure.mlp_subjects times it


@dataclass(frozen=True)
class SwigluSearch:
    window: float = 0.05  # +- fraction around the centre
    step: int = 64  # widths are multiples of step x t
    centre: int | None = None  # default: the config's intermediate size

    def to_dict(self) -> dict:
        return asdict(self)


def swiglu_sizes(cfg: ModelConfig, search: SwigluSearch) -> list[int]:
    if cfg.activation != "swiglu":
        raise UserError(f"--swiglu: config {cfg.name} uses {cfg.activation}; the SwiGLU search needs "
                        "activation: swiglu (e.g. --config llama-2-7b-like)")
    if search.step < 1 or not 0 < search.window < 1:
        raise UserError("--ffn-step/--ffn-window: need a positive step and a window between 0% and 100%")
    t = cfg.tensor_parallel
    centre = search.centre or cfg.ffn_size
    step = search.step * t
    lo, hi = math.ceil(centre * (1 - search.window) / step), math.floor(centre * (1 + search.window) / step)
    sizes = {k * step for k in range(max(lo, 1), hi + 1)}
    naive = round(8 * cfg.hidden_size / 3 / t) * t  # 8h/3 as a framework would round it
    sizes |= {cfg.ffn_size, naive}
    return sorted(sizes)


def mlp_config(cfg: ModelConfig, ffn: int) -> ModelConfig:
    ffn = int(ffn)  # widths read back from a DataFrame are numpy integers
    return cfg.replace(name=f"f{ffn}", intermediate_size=ffn)


def mlp_flops(cfg: ModelConfig, *, backward: bool) -> int:
    """Up, gate and down GEMMs: 3 x 2*b*s*h*f/t; backward doubles each (input and weight gradients)."""
    forward = 3 * 2 * cfg.tokens * cfg.hidden_size * cfg.ffn_per_gpu
    return 3 * forward if backward else forward


def _alignment(ffn: int, t: int) -> int:
    return largest_power_of_two_dividing(ffn // t) if ffn % t == 0 else 1


def modelled_swiglu(cfg: ModelConfig, gpu: GpuModel, sizes: list[int]) -> pd.DataFrame:
    """The cost model's MLP-block time and throughput for each width."""
    rows = []
    for ffn in sizes:
        c = mlp_config(cfg, ffn)
        est = layer_estimate(c, gpu)
        est = est[est["component"].isin(MLP_COMPONENTS)]
        fwd = float(est.loc[est["pass"] == "forward", "time_ms"].sum())
        fb = float(est["time_ms"].sum())
        rows.append({"ffn": ffn, "ratio": ffn / cfg.hidden_size, "largest_pow2_per_gpu": _alignment(ffn, cfg.tensor_parallel),
                     "modelled_fwd_ms": fwd, "modelled_fwd_bwd_ms": fb,
                     "modelled_tflops": mlp_flops(c, backward=True) / (fb * 1e-3) / 1e12})
    df = pd.DataFrame(rows)
    df["modelled_rank"] = df["modelled_tflops"].rank(ascending=False, method="min").astype(int)
    return df


def swiglu_summary(rounds: pd.DataFrame, cfg: ModelConfig, reference: int, min_gain: float, *,
                   seed: int = 0) -> pd.DataFrame:
    """Per width: median MLP-block times over rounds, TFLOP/s, and the per-round throughput ratio vs the
    reference width (median, p10/p90, bootstrap interval) with its verdict (ranking.faster_verdict against
    the reference width timed a second time in each round, `f<ref> (again)`, or its single-call spread);
    ranked by forward+backward TFLOP/s."""
    again_name = f"f{reference}{SELF_SUFFIX}"
    again = rounds[(rounds["candidate"] == again_name) & (rounds["what"] == "mlp_forward_backward")]
    rounds = rounds[rounds["candidate"] != again_name]
    flops = {ffn: mlp_flops(mlp_config(cfg, ffn), backward=True)
             for ffn in rounds["candidate"].str.removeprefix("f").astype(int).unique()}
    fb = rounds[rounds["what"] == "mlp_forward_backward"].copy()
    fb["ffn"] = fb["candidate"].str.removeprefix("f").astype(int)
    fb["tflops"] = [flops[f] / (t * 1e-3) / 1e12 for f, t in zip(fb["ffn"], fb["time_ms"])]
    ref = fb[fb["ffn"] == reference].set_index("round")["tflops"]
    fwd = rounds[rounds["what"] == "mlp_forward"].copy()
    fwd["ffn"] = fwd["candidate"].str.removeprefix("f").astype(int)
    ref_ms = fb[fb["ffn"] == reference].set_index("round")["time_ms"]
    if not again.empty:
        spread = max(abs(ref_ms[r] / t - 1) for r, t in zip(again["round"], again["time_ms"]) if r in ref_ms.index)
    else:
        own = fb[fb["ffn"] == reference]
        spread = float(((own["p90_ms"] - own["p10_ms"]) / own["time_ms"]).median()) if "p90_ms" in own else 0.0
    rows = []
    for ffn, group in fb.groupby("ffn"):
        ratios = [tf / ref[r] for r, tf in zip(group["round"], group["tflops"]) if r in ref.index]
        med, lo, hi = quantile(ratios, 0.5), quantile(ratios, 0.1), quantile(ratios, 0.9)
        ci_lo, ci_hi = bootstrap_interval(ratios, seed=seed)
        rows.append({"ffn": int(ffn), "ratio": ffn / cfg.hidden_size,
                     "largest_pow2_per_gpu": _alignment(int(ffn), cfg.tensor_parallel),
                     "fwd_ms": fwd.loc[fwd["ffn"] == ffn, "time_ms"].median(),
                     "fwd_bwd_ms": group["time_ms"].median(), "tflops": group["tflops"].median(),
                     "vs_reference": med, "vs_reference_p10": lo, "vs_reference_p90": hi,
                     "vs_reference_ci_lo": ci_lo, "vs_reference_ci_hi": ci_hi, "self_spread": spread,
                     "verdict": "reference" if ffn == reference else faster_verdict(med, ci_lo, ci_hi, spread, min_gain)})
    df = pd.DataFrame(rows).sort_values("tflops", ascending=False, ignore_index=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def reference_rank_sentence(summary: pd.DataFrame, reference: int, column: str = "tflops",
                            rank_column: str = "rank") -> str:
    """"11008 ranks 3rd of 18 widths in [10432, 11456] (within 1.2% of the best, 11264)"."""
    ref = summary[summary["ffn"] == reference].iloc[0]
    best = summary.sort_values(column, ascending=False).iloc[0]
    gap = 100 * (1 - ref[column] / best[column])
    return (f"{reference} ranks {int(ref[rank_column])} of {len(summary)} widths in [{summary['ffn'].min()}, "
            f"{summary['ffn'].max()}] ({gap:.1f}% below the best, {int(best['ffn'])})")

"""Measured GEMM and fused-attention times per GPU kind: the tables that calibrate the cost model (issue 22).

A table (profiler/advisor/calibration/<gpu>.json) holds what one GPU measured, with where it came from:

    {"gpu": "h200", "gpu_name": "NVIDIA H200", "dtype": "bfloat16",
     "provenance": {"source": ..., "git_sha": ..., "torch": ..., "cuda": ..., "protocol": ..., "built_by": ...},
     "gemm": [{"batch", "m", "n", "k", "time_ms", "source"}, ...],          # (batch x) (m,k)x(k,n)
     "attention": [{"pass", "causal", "batch_heads", "seq", "head_dim", "time_ms", "source"}, ...]}

How the cost model uses it (cost_model.estimate_gemm, flash_forward_ms):

- GEMM: the analytic wave/tile estimate of the query is multiplied by the measured/analytic ratio of the
  nearest measured shapes (log-space distance over batch, m, n, k; at most NEIGHBOURS of them, weighted by
  1/distance) in the same alignment class (fully aligned, or the same worst alignment in bytes). The
  analytic part keeps the query's own waves and tiles; the measured part brings what the wave model cannot
  know (epilogues, the kernel cuBLAS picks, clock under load). A query that is a measured shape gets its
  measured time.
- Fused attention (forward): the kernel runs h/a rounded up to its head-size bucket (cost_model.FLASH_HEAD_DIM_BUCKETS),
  so its rate is taken per *padded* FLOP from the measured point of the same bucket nearest in shape
  (log distance over h/a, b*a, s); a point measured without the causal mask counts with the causal /
  non-causal rate ratio of the buckets measured both ways; a bucket never measured is `None` (the model
  then falls back to the GPU table's one rate). Backward: the forward times the backward/forward ratio of
  the same measured point where it was measured both ways, else the table's median ratio (a backward
  measured only at one far-away shape, pythia-1b's 8 heads, would otherwise set a whole bucket).

Pure except `load_table` / `table_path` (reading a committed JSON file).
"""

from __future__ import annotations

import json
import math
import statistics
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from models import DTYPE_BYTES, ModelConfig, layer_gemms

from ..quantization import largest_power_of_two_dividing

TABLE_DIR = Path(__file__).parent / "calibration"
NEIGHBOURS = 3
GEMM_COLUMNS = ["batch", "m", "n", "k", "time_ms", "source", "layout"]
# How autograd runs each role of nn.Linear's Y = X W^T (W stored (n, k)), as cuBLAS sees it: the forward
# F.linear (weight transposed: "nt"), dgrad dX = dY @ W (both row-major: "nn"), wgrad dW = dY^T @ X (the
# transposed gradient: "tn"). cuBLAS picks its kernel per layout, and the H200 agreement run showed why it
# matters: layers of h=2304/2496/3968 ran 1.15-1.19x their model while h=2560/4096 ran 1.08-1.11x, with every
# GEMM shape in the table but measured as F.linear only.
LAYOUTS = ("nt", "nn", "tn")
ROLE_LAYOUT = {"fprop": "nt", "dgrad": "nn", "wgrad": "tn"}
LEGACY_LAYOUT = "nt"  # a point without a layout was measured as F.linear (the calibration before layouts)
ATTENTION_COLUMNS = ["pass", "causal", "batch_heads", "seq", "head_dim", "time_ms", "source"]
# kept in step with cost_model.FLASH_HEAD_DIM_BUCKETS (imported there from here, so there is one list)
FLASH_HEAD_DIM_BUCKETS = (32, 64, 96, 128, 192, 256)


def flash_bucket(head_dim: int) -> int | None:
    """The head size the fused kernel runs for h/a (None: the kernel does not support it)."""
    return next((b for b in FLASH_HEAD_DIM_BUCKETS if head_dim <= b), None) if head_dim % 8 == 0 else None


def flash_padded_flops(batch_heads: int, seq: int, head_dim: int, causal: bool) -> float:
    """FLOPs the fused kernel does: score and attention over values (4*b*a*s^2*d) at the padded head size,
    half of them skipped by the causal mask."""
    padded = flash_bucket(head_dim) or head_dim
    return 4 * batch_heads * seq ** 2 * padded / (2 if causal else 1)


def alignment_class(m: int, n: int, k: int, dtype: str, fast_alignment_bytes: int) -> int:
    """0 when every dimension is aligned to the GPU's fast alignment, else the worst alignment in bytes."""
    worst = min(largest_power_of_two_dividing(v) * DTYPE_BYTES[dtype] for v in (m, n, k))
    return 0 if worst >= fast_alignment_bytes else worst


class Calibration:
    """One GPU's table, ready to answer the cost model. `analytic_gemm_ms(batch, m, n, k)` is the
    uncalibrated estimate (the cost model's), passed in so that this module does not import the model."""

    def __init__(self, table: dict, path: str | None = None):
        self.table = table
        self.path = path
        self.gpu = table.get("gpu", "")
        self.gpu_name = table.get("gpu_name", "")
        self.dtype = table.get("dtype", "bfloat16")
        self.provenance = dict(table.get("provenance", {}))
        self.gemm = pd.DataFrame(table.get("gemm", []), columns=GEMM_COLUMNS)
        self.gemm["layout"] = self.gemm["layout"].astype(object).fillna(LEGACY_LAYOUT)
        self.attention = pd.DataFrame(table.get("attention", []), columns=ATTENTION_COLUMNS)
        self._gemm_cache: dict = {}
        self._flash_cache: dict = {}
        self._backward_ratio = ...
        self._prepared_for = None  # the analytic model's signature the factors were computed with

    # -- GEMMs -----------------------------------------------------------------------------------------
    def _prepare(self, analytic, signature, fast_alignment_bytes: int) -> None:
        g = self.gemm
        self._log = np.log(g[["batch", "m", "n", "k"]].to_numpy(dtype=float)) if len(g) else np.zeros((0, 4))
        self._class = np.array([alignment_class(int(m), int(n), int(k), self.dtype, fast_alignment_bytes)
                                for m, n, k in zip(g["m"], g["n"], g["k"])], dtype=int)
        self._layout = g["layout"].to_numpy(dtype=object)
        self._factor = np.array([t / analytic(int(b), int(m), int(n), int(k))
                                 for b, m, n, k, t in zip(g["batch"], g["m"], g["n"], g["k"], g["time_ms"])])
        self._prepared_for = signature
        self._gemm_cache = {}

    @property
    def layouts(self) -> set[str]:
        return set(self.gemm["layout"]) if len(self.gemm) else set()

    def gemm_factor(self, batch: int, m: int, n: int, k: int, *, analytic, signature, fast_alignment_bytes: int,
                    dtype: str, layout: str | None = None) -> float | None:
        """Measured / analytic time of the nearest measured shapes (None: none in this alignment class, or a
        dtype the table was not measured in). `signature` identifies the analytic model (the GPU's numbers):
        the measured points' factors are recomputed when it changes (a run that re-measured the ceiling).
        `layout` (LAYOUTS) keeps to points measured in that layout when the table has any; a table measured
        in one layout answers every layout from it (the calibration before layouts)."""
        if dtype != self.dtype or self.gemm.empty:
            return None
        if self._prepared_for != signature:
            self._prepare(analytic, signature, fast_alignment_bytes)
        key = (batch, m, n, k, layout)
        if key in self._gemm_cache:
            return self._gemm_cache[key]
        cls = alignment_class(m, n, k, dtype, fast_alignment_bytes)
        same_class = self._class == cls
        if layout is not None and (same_class & (self._layout == layout)).any():
            same_class &= self._layout == layout
        same = np.flatnonzero(same_class)
        if not len(same):
            self._gemm_cache[key] = None
            return None
        q = np.log(np.array([batch, m, n, k], dtype=float))
        dist = np.sqrt(((self._log[same] - q) ** 2).sum(axis=1))
        order = np.argsort(dist, kind="stable")[:NEIGHBOURS]
        d, f = dist[order], self._factor[same][order]
        if d[0] < 1e-9:  # the shape itself (in several layouts, when the asked one was never measured)
            factor = float(math.exp(np.log(f[d < 1e-9]).mean()))
        else:  # inverse-distance weights, in log space (a geometric mean of factors)
            w = 1 / d
            factor = float(math.exp((w * np.log(f)).sum() / w.sum()))
        self._gemm_cache[key] = factor
        return factor

    # -- fused attention -------------------------------------------------------------------------------
    def _rates(self) -> pd.DataFrame:
        """Per measured point: its bucket and its rate per padded FLOP (FLOP/s)."""
        a = self.attention.copy()
        if a.empty:
            return a.assign(bucket=pd.Series(dtype=int), rate=pd.Series(dtype=float))
        a["bucket"] = [flash_bucket(int(d)) for d in a["head_dim"]]
        a["rate"] = [flash_padded_flops(int(bh), int(s), int(d), bool(c)) / (t * 1e-3)
                     for bh, s, d, c, t in zip(a["batch_heads"], a["seq"], a["head_dim"], a["causal"], a["time_ms"])]
        return a

    @property
    def rates(self) -> pd.DataFrame:
        if not hasattr(self, "_rates_frame"):
            self._rates_frame = self._rates()
        return self._rates_frame

    def causal_ratio(self, pass_name: str = "forward") -> float | None:
        """Median over buckets measured both ways of causal rate / non-causal rate."""
        key = ("causal_ratio", pass_name)
        if key not in self._flash_cache:
            self._flash_cache[key] = self._causal_ratio(pass_name)
        return self._flash_cache[key]

    def _causal_ratio(self, pass_name: str) -> float | None:
        r = self.rates
        r = r[r["pass"] == pass_name]
        both = [r[(r["bucket"] == b) & r["causal"]]["rate"].median() / r[(r["bucket"] == b) & ~r["causal"]]["rate"].median()
                for b in set(r["bucket"]) if r[(r["bucket"] == b) & r["causal"]].size and r[(r["bucket"] == b) & ~r["causal"]].size]
        return statistics.median(both) if both else None

    def backward_ratio(self) -> float | None:
        """Median backward/forward time of the attention shapes measured both ways."""
        if self._backward_ratio is ...:
            self._backward_ratio = self._measured_backward_ratio()
        return self._backward_ratio

    def _measured_backward_ratio(self) -> float | None:
        a = self.attention
        keys = ["causal", "batch_heads", "seq", "head_dim"]
        fwd = a[a["pass"] == "forward"].groupby(keys)["time_ms"].median()
        bwd = a[a["pass"] == "backward"].groupby(keys)["time_ms"].median()
        common = fwd.index.intersection(bwd.index)
        return float((bwd[common] / fwd[common]).median()) if len(common) else None

    def flash_rate(self, head_dim: int, batch_heads: int, seq: int, pass_name: str = "forward",
                   causal: bool = True) -> tuple[float, str, tuple] | None:
        """(rate per padded FLOP, how it was found, the point's key) for this attention shape, or None when its
        head-size bucket was never measured. Within the bucket, the measured point nearest in (h/a, b*a, s) (log distance):
        a small attention (pythia-70m's 8 heads) runs far below a large one at the same h/a."""
        key = (head_dim, batch_heads, seq, pass_name, causal)
        if key not in self._flash_cache:
            self._flash_cache[key] = self._flash_rate(head_dim, batch_heads, seq, pass_name, causal)
        return self._flash_cache[key]

    def _flash_rate(self, head_dim: int, batch_heads: int, seq: int, pass_name: str,
                    causal: bool) -> tuple[float, str] | None:
        bucket = flash_bucket(head_dim)
        r = self.rates
        r = r[(r["pass"] == pass_name) & (r["bucket"] == bucket)]
        if r.empty:
            return None
        ratio = self.causal_ratio(pass_name)
        if ratio is None:  # one kind of mask only: the other cannot be scaled to
            r = r[r["causal"] == causal]
            if r.empty:
                return None
        # the kernel's efficiency follows its grid (b*a x s/block CTAs on the SMs) more than the mask, so the
        # nearest point in shape wins whichever mask it was measured with (the other scaled); a tie goes to
        # the same mask
        dist = (np.abs(np.log(r["head_dim"].to_numpy(float) / head_dim))
                + np.abs(np.log(r["batch_heads"].to_numpy(float) / batch_heads))
                + np.abs(np.log(r["seq"].to_numpy(float) / seq))
                + 1e-6 * (r["causal"].to_numpy(bool) != causal))
        best = r.iloc[int(np.argmin(dist))]
        where = f"h/a={int(best['head_dim'])}, b*a={int(best['batch_heads'])}, s={int(best['seq'])}"
        point = (bool(best["causal"]), int(best["batch_heads"]), int(best["seq"]), int(best["head_dim"]))
        if bool(best["causal"]) == causal:
            return float(best["rate"]), f"measured at {where}", point
        scale = ratio if causal else 1 / ratio
        return float(best["rate"]) * scale, f"measured without the causal mask at {where}, x {scale:.3f}", point

    def flash_backward_ratio(self, head_dim: int, batch_heads: int, seq: int) -> float | None:
        """Backward / forward time of the forward point flash_rate picks for this shape, where that point was
        also measured backward; else the table's median over the shapes measured both ways (None: none)."""
        key = ("bwd", head_dim, batch_heads, seq)
        if key in self._flash_cache:
            return self._flash_cache[key]
        found = self.flash_rate(head_dim, batch_heads, seq, "forward")
        ratio = self._point_backward_ratios().get(found[2]) if found is not None else None
        ratio = ratio if ratio is not None else self.backward_ratio()
        self._flash_cache[key] = ratio
        return ratio

    def _point_backward_ratios(self) -> dict:
        if "point_bwd" not in self._flash_cache:
            a = self.attention
            keys = ["causal", "batch_heads", "seq", "head_dim"]
            fwd = a[a["pass"] == "forward"].groupby(keys)["time_ms"].median()
            bwd = a[a["pass"] == "backward"].groupby(keys)["time_ms"].median()
            common = fwd.index.intersection(bwd.index)
            self._flash_cache["point_bwd"] = {tuple(k): float(bwd[k] / fwd[k]) for k in common}
        return self._flash_cache["point_bwd"]

    def summary(self) -> dict:
        """What the output says about the table."""
        return {"calibrated": True, "gpu": self.gpu, "gpu_name": self.gpu_name, "dtype": self.dtype,
                "path": self.path, "gemm_points": len(self.gemm), "attention_points": len(self.attention),
                "flash_buckets": sorted({int(b) for b in self.rates["bucket"].dropna()}) if len(self.attention) else [],
                "provenance": self.provenance}


def table_path(gpu_key: str) -> Path:
    return TABLE_DIR / f"{gpu_key}.json"


@lru_cache(maxsize=None)
def load_table(gpu_key: str) -> Calibration | None:
    """The committed table of this GPU kind, or None (the GPU is uncalibrated)."""
    path = table_path(gpu_key)
    if not path.exists():
        return None
    return load_file(path)


def load_file(path: Path) -> Calibration:
    table = json.loads(Path(path).read_text())
    try:
        rel = str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        rel = str(path)
    return Calibration(table, rel)


def uncalibrated_summary(gpu_key: str) -> dict:
    return {"calibrated": False, "gpu": gpu_key, "path": None,
            "note": (f"no calibration table for {gpu_key} (profiler/advisor/calibration/{gpu_key}.json): the ranking "
                     "is the analytic wave/tile model with the GPU table's ceilings; measure one with "
                     "scripts/calibrate_advisor.py")}


# -- building tables from committed evidence (pure: frames in, points out) ----------------------------------

ROLE_SHAPE = {  # the (m, n, k) of each GEMM role, from the forward's (m, n, k): as cost_model.gemm_estimates
    "fprop": lambda m, n, k: (m, n, k),
    "dgrad": lambda m, n, k: (m, k, n),
    "wgrad": lambda m, n, k: (k, n, m),
}


def points_from_layer_components(components: pd.DataFrame, configs: dict[str, ModelConfig],
                                 source: str) -> tuple[list[dict], list[dict]]:
    """(GEMM points, attention points) from a layer run's components.csv: each GEMM's in-layer time with
    its shape from the config (models.layer_gemms), and fused attention forward/backward per head size."""
    gemms, attention = [], []
    for (name, pass_name, component, role), group in components.groupby(
            ["config", "pass", "component", components["role"].fillna("")], sort=False):
        cfg = configs.get(name)
        if cfg is None:
            continue
        time_ms = float(group["time_us"].median()) / 1e3
        if component == "flash_attention":
            attention.append({"pass": pass_name, "causal": True, "batch_heads": cfg.micro_batch_size * cfg.heads_per_gpu,
                              "seq": cfg.seq_length, "head_dim": cfg.head_dim, "time_ms": time_ms,
                              "source": f"{source} {name} {pass_name}"})
            continue
        if role not in ROLE_SHAPE:
            continue
        forward = {g.component: g for g in layer_gemms(cfg, include_logits=True)}
        g = forward.get(component)
        if g is None:
            continue
        m, n, k = ROLE_SHAPE[role](g.m, g.n, g.k)
        gemms.append({"batch": g.batch, "m": m, "n": n, "k": k, "time_ms": time_ms,
                      "source": f"{source} {name} {component} {role}", "layout": ROLE_LAYOUT[role]})
    return gemms, attention


SWEEP_GEMM_KINDS = ("mm", "mlp-up", "mlp-down", "swiglu", "logits", "score", "aov")


def points_from_sweeps(results: pd.DataFrame, source: str, *, dtype: str = "bfloat16") -> tuple[list[dict], list[dict]]:
    """(GEMM points, attention points) from a sweep results table (profiler/sweeps): every ok GEMM point at
    its median time; flash points (non-causal unless the sweep says causal) per head size."""
    ok = results[(results["status"] == "ok") & (results["dtype"] == dtype)]
    gemms = [{"batch": int(r.batch), "m": int(r.m), "n": int(r.n), "k": int(r.k), "time_ms": float(r.median_ms),
              "source": f"{source} {r.kind}"} for r in ok[ok["kind"].isin(SWEEP_GEMM_KINDS)].itertuples()]
    flash = ok[ok["kind"] == "flash"]
    attention = [{"pass": "forward", "causal": bool(r.causal) if isinstance(r.causal, bool) else str(r.causal) == "True",
                  "batch_heads": int(r.batch), "seq": int(r.m), "head_dim": int(r.k), "time_ms": float(r.median_ms),
                  "source": f"{source} flash"} for r in flash.itertuples()]
    return gemms, attention

"""What each non-GEMM step costs in bandwidth: the bytes its kernels move, over its measured time, against
the GPU's measured copy bandwidth (its memory roofline; these steps do a few FLOPs per byte).

Byte models, per layer step, from the config's per-GPU shapes. T = b*s tokens, h hidden, h' = h/t,
f = MLP width per GPU, a' = heads per GPU, d = h/a, r = rotary dims, B = b*a' attention matrices, E = bytes
per element of the config's dtype; every tensor is read or written once, in the way this layer's kernels
(models/layer.py, models/kernels.py) do it:

| step | forward | backward |
| --- | --- | --- |
| norm (LayerNorm; RMSNorm the same without beta / mean) | per norm (2 per layer, +1 with logits): read x (T,h), write y (T,h), read gamma, beta (h each), write mean, rstd (T fp32 each) | per norm: dx kernel reads dy, x, gamma, mean, rstd and writes dx; dgamma/dbeta kernel re-reads dy and x; plus the 2 adds that sum the gradients of x and of the residual stream (read 2, write 1 of (T,h)) |
| rotary (in place, rotated dims only) | q and k: read and write r of each head's d dims (2 x 2 x T x a' x r), read cos, sin (s x r/2 each) | a copy of the QKV gradient (read + write T x 3h'), then the same rotation |
| softmax (eager; causal, fused) | read the scores' causal half (masked loads skip the rest: B x s(s+1)/2), write the probabilities (B x s x s) | read dP and P, write dS (3 x B x s x s) |
| dropout (attention, hidden) | read x, write y and a one-byte mask: (2E + 1) bytes per element of the probabilities (B x s x s) and of both branch outputs (2 x T x h) | read dy and the mask, write dx: the same |
| activation (GeLU; SwiGLU) | read (T,f), write (T,f); SwiGLU: silu(gate) then x up: 5 x (T,f) | GeLU: read dy, x, write dx: 3 x (T,f); SwiGLU: 9 x (T,f) |
| residual_bias (the biases ride on the GEMMs) | parallel: one fused add of 3 inputs: read 3, write 1 of (T,h); sequential: two adds: 6 x (T,h) | the bias gradients: read each linear layer's output gradient (T x out) and write the bias: T x (3h' + h + f [+ f] + h) |
| other (layout copies) | eager: q, k, v and the attention output made contiguous: 4 x read + write (T,h'); flash / sdpa: none | the packed QKV gradient assembled from q, k, v's: 3 zero-fills of (T,3h'), 3 strided copies of (T,h') (read + write), 2 adds of (T,3h') (read 2, write 1) |
| grad_accumulation | none | every parameter's gradient copied into .grad: read + write the layer's parameters |

Achieved bandwidth = bytes / the step's median time; % of the measured device-to-device copy bandwidth
(`measured_copy_tbps` in the run's environment, bytes read + written). Older evidence has none: then the
copy bandwidth measured on the same GPU model (COPY_TBPS_MEASURED, from ../shared/gpu/README.md: 3.0 TB/s
on an H100 SXM) stands in, and `bandwidth_source` says so. A step below LOW_BANDWIDTH_PCT of it is flagged.
A step above 100% moved part of its bytes through L2 (a small layer's working set fits in it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models import DTYPE_BYTES, ModelConfig, count_parameters

# far below the roofline: under half the copy bandwidth, the step's kernels (not HBM) set its time
LOW_BANDWIDTH_PCT = 50.0
# device-to-device copy bandwidth measured on the project's lent GPUs (../shared/gpu/README.md): only for
# evidence recorded before runs measured their own (environment.measured_copy_tbps)
COPY_TBPS_MEASURED = {"H200": 4.3, "H100": 3.0}
MASK_BYTES = 1  # dropout's mask is a bool tensor
STATS_BYTES = 4  # LayerNorm's mean and rstd are float32


def copy_bandwidth(environment: dict | None) -> tuple[float | None, str]:
    """(TB/s, where it came from): the run's own measurement, else the measured figure for its GPU model."""
    env = environment or {}
    if env.get("measured_copy_tbps"):
        return float(env["measured_copy_tbps"]), "measured_copy_tbps (this run)"
    name = str(env.get("gpu_name") or "")
    for key, tbps in COPY_TBPS_MEASURED.items():
        if key in name:
            return tbps, (f"fallback: {tbps} TB/s, a device-to-device copy measured on an {key} "
                          "(shared/gpu/README.md); this run recorded none")
    return None, "no copy bandwidth: the run recorded none and its GPU has no measured figure"


def bytes_model(cfg: ModelConfig, passname: str, component: str, *, include_logits: bool = False) -> tuple[float, str]:
    """(bytes, how) one layer step moves per training step, from the config's per-GPU shapes."""
    e = DTYPE_BYTES[cfg.dtype]
    T, h, hp, f = cfg.tokens, cfg.hidden_size, cfg.hidden_per_gpu, cfg.ffn_per_gpu
    heads, r, s = cfg.heads_per_gpu, cfg.rotary_dims, cfg.seq_length
    scores = cfg.micro_batch_size * heads * s * s
    fwd = passname == "forward"
    layernorm = cfg.norm == "layernorm"
    if component == "norm":
        norms = 2 + (1 if include_logits else 0)
        if fwd:
            per = 2 * T * h * e + (2 if layernorm else 1) * h * e + (2 if layernorm else 1) * T * STATS_BYTES
            return norms * per, f"{norms} norms: read x, write y (T,h), weights, stats"
        per = 3 * T * h * e + 2 * T * h * e + (2 if layernorm else 1) * (T * STATS_BYTES + h * e)
        return norms * per + 2 * 3 * T * h * e, f"{norms} norms: dx (read dy, x; write dx), dgamma (re-read dy, x); 2 gradient adds"
    if component == "rotary":
        if not r:
            return 0.0, "no rotary"
        rotate = 2 * 2 * T * heads * r * e + 2 * s * (r // 2) * e
        if fwd:
            return rotate, "q, k: read + write the rotated dims; cos, sin"
        return rotate + 2 * T * 3 * hp * e, "copy of the QKV gradient, then the rotation"
    if component == "softmax":
        if fwd:
            return scores * e + cfg.micro_batch_size * heads * s * (s + 1) / 2 * e, "read the causal half, write B x s x s"
        return 3 * scores * e, "read dP, P; write dS (B x s x s)"
    if component == "dropout":
        elements = (scores if cfg.attention_dropout > 0 else 0) + (2 * T * h if cfg.hidden_dropout > 0 else 0)
        return elements * (2 * e + MASK_BYTES), "read, write and a one-byte mask per element"
    if component == "activation":
        if cfg.activation == "swiglu":
            return (5 if fwd else 9) * T * f * e, "silu(gate) * up" if fwd else "SwiGLU backward"
        return (2 if fwd else 3) * T * f * e, "read, write (T,f)" if fwd else "read dy, x; write dx (T,f)"
    if component == "residual_bias":
        if fwd:
            adds = 4 if cfg.residual == "parallel" else 6
            return adds * T * h * e, "one 3-input add" if cfg.residual == "parallel" else "two adds"
        if not cfg.bias:
            return 0.0, "no biases"
        outs = 3 * hp + h + f * (2 if cfg.activation == "swiglu" else 1) + h
        return T * outs * e + outs * e, "bias gradients: read every linear layer's output gradient"
    if component == "other":
        if fwd:
            if cfg.attention == "eager":
                return 4 * 2 * T * hp * e, "q, k, v, attention output made contiguous"
            return 0.0, "no layout copies"
        return (3 * T * 3 * hp + 3 * 2 * T * hp + 2 * 3 * T * 3 * hp) * e, \
            "QKV gradient: 3 zero-fills, 3 strided copies, 2 adds"
    if component == "grad_accumulation":
        return 2 * count_parameters(cfg).per_layer * e, "copy every parameter's gradient into .grad"
    return float("nan"), "no byte model"


def non_gemm_roofline(components: pd.DataFrame, cfg: ModelConfig, *, environment: dict | None = None,
                      include_logits: bool = False) -> pd.DataFrame:
    """Per non-GEMM row of a components table (pass, component, role, kind, time_us): bytes_moved, byte_model,
    achieved_gbps, bandwidth_gbps, bandwidth_pct, low_bandwidth (below LOW_BANDWIDTH_PCT) and bandwidth_source.
    Fused attention (GEMMs inside) and communication are left to their own analyses."""
    tbps, source = copy_bandwidth(environment)
    rows = components[components["kind"].eq("non-gemm") & ~components["component"].isin(
        ("flash_attention", "sdpa_attention"))]
    out = []
    for r in rows.to_dict("records"):
        moved, how = bytes_model(cfg, r["pass"], r["component"], include_logits=include_logits)
        out.append({"pass": r["pass"], "component": r["component"], "role": r.get("role", ""),
                    "time_us": r["time_us"], "bytes_moved": moved, "byte_model": how})
    table = pd.DataFrame(out, columns=["pass", "component", "role", "time_us", "bytes_moved", "byte_model"])
    table["achieved_gbps"] = (table["bytes_moved"] / (table["time_us"] * 1e-6) / 1e9).where(table["bytes_moved"] > 0)
    table["bandwidth_gbps"] = tbps * 1e3 if tbps else np.nan
    table["bandwidth_pct"] = 100 * table["achieved_gbps"] / table["bandwidth_gbps"]
    table["low_bandwidth"] = table["bandwidth_pct"] < LOW_BANDWIDTH_PCT
    table["bandwidth_source"] = source
    return table

"""The layer's floor: each GEMM of Table II alone, plus the fused attention alone, as calls to time.

A layer cannot run faster than its GEMMs and attention kernel back to back; measured / floor is how much
the rest of the layer (norms, rotary, activation, residuals, launch gaps) costs on top. The same per-GEMM
times check the profiler: a GEMM's time inside the layer should be within a few percent of it alone.

Like for like: each call alone is built as the layer issues it (profiler.gemm_calls, shared with the
sweeps) and timed in the same interleaved rounds as the layer (profiler.protocol), attributed by the same
attribution: the "alone" time of (pass, component, role) sums exactly the kernels the layer would attribute
to it. The kernels that scatter dq/dk/dv into the packed QKV gradient land in `other` here as they do in
the layer, not in the attention's time. Same power state by construction: the calls and the layer share
every round (the H100 evidence of 2026-11-23 had the floor at 1965 MHz against the layer's 1365-1660 when
each call was traced on its own after the layer).
"""

from __future__ import annotations

from models import ModelConfig, layer_gemms

from .gemm_calls import Call, fused_attention_call, gemm_call


def floor_calls(cfg: ModelConfig, *, include_logits: bool, backward: bool, device, dtype,
                dropout: bool = True) -> dict[str, Call]:
    """component -> the call that runs it alone (forward, or forward + backward)."""
    calls: dict[str, Call] = {}
    for gemm in layer_gemms(cfg, include_logits=include_logits):
        bias = cfg.bias and gemm.component != "logits"  # the logit layer has no bias (models/layer.py)
        calls[gemm.component] = gemm_call(gemm.component, gemm.batch, gemm.m, gemm.n, gemm.k, dtype=dtype,
                                          device=device, bias=bias, backward=backward)
    if cfg.attention != "eager":
        calls[f"{cfg.attention}_attention"] = fused_attention_call(
            cfg.micro_batch_size, cfg.seq_length, cfg.heads_per_gpu, cfg.head_dim, attention=cfg.attention,
            dtype=dtype, device=device, dropout_p=cfg.attention_dropout if dropout else 0.0, backward=backward)
    return calls

"""How much memory a layer run needs, before it is attempted: a run that cannot fit is refused in one line
instead of failing minutes later with an allocator traceback (an s of 10 million asks for terabytes).

The estimate is an upper bound of the largest live set: the layer's weights (and gradients), the
activations autograd keeps for the backward, the eager path's s x s score and probability matrices, the
logits, and the floor's largest GEMM operands, with a margin for the allocator and the CUDA context.
"""

from __future__ import annotations

import os

from models import DTYPE_BYTES, ModelConfig, count_parameters, layer_gemms

MARGIN = 1.25
ACTIVATIONS_PER_TOKEN_H = 34  # a GPT-NeoX layer saves about 34 values of size h per token for its backward


def layer_run_bytes(cfg: ModelConfig, *, backward: bool, include_logits: bool) -> int:
    e = DTYPE_BYTES[cfg.dtype]
    weights = count_parameters(cfg).per_layer // cfg.tensor_parallel * e
    tokens, h = cfg.tokens, cfg.hidden_size
    activations = tokens * h * e * (ACTIVATIONS_PER_TOKEN_H if backward else 8)
    scores = 0
    if cfg.attention == "eager":  # scores and probabilities (and their gradients in a backward)
        scores = cfg.micro_batch_size * cfg.heads_per_gpu * cfg.seq_length ** 2 * e * (4 if backward else 2)
    logits = tokens * cfg.vocab_per_gpu * e * (3 if backward else 1) if include_logits else 0
    if include_logits:
        weights += cfg.vocab_per_gpu * h * e
    floor = max(e * (g.batch * (g.m * g.k + g.k * g.n + g.m * g.n)) for g in layer_gemms(cfg, include_logits=include_logits))
    total = weights * (3 if backward else 1) + activations + scores + logits + floor * (2 if backward else 1)
    return int(total * MARGIN)


def available_bytes(device) -> tuple[int, str]:
    """Free memory on `device` and how it was read."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), f"{total / 2**30:.0f} GiB GPU"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return info.get("MemAvailable", info.get("MemTotal", 0)), "host memory"
    except OSError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, "host memory"

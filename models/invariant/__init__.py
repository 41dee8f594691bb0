"""Batch-invariant kernels (issue 11): a row's result does not depend on how many other rows share the launch.

- `invariant_matmul` / `invariant_linear` / `invariant_bmm`: Triton GEMM, one tile configuration per
  (N, K, dtype), no split-K, one reduction order over K, persistent launch (matmul.py);
- `invariant_layer_norm` / `invariant_rms_norm`: one program per row (norms.py);
- `invariant_attention`: causal flash-attention forward without split-KV (attention.py);
- `make_batch_invariant(stack)`: the same LayerStack on those kernels, models/layer.py untouched (switch.py).

On CUDA they compile with Triton; on a CPU they run in Triton's interpreter (slow, for tests); without
Triton they raise KernelUnavailable (backend.py).
"""

from .attention import invariant_attention
from .backend import KernelUnavailable, available
from .matmul import MatmulConfig, config_for, invariant_bmm, invariant_linear, invariant_matmul, matmul_configs
from .norms import invariant_layer_norm, invariant_rms_norm
from .switch import (InvariantAttention, InvariantLayerNorm, InvariantLinear, InvariantRMSNorm, is_batch_invariant,
                     make_batch_invariant)

__all__ = [
    "KernelUnavailable", "available", "MatmulConfig", "config_for", "matmul_configs", "invariant_matmul",
    "invariant_linear", "invariant_bmm", "invariant_layer_norm", "invariant_rms_norm", "invariant_attention",
    "InvariantLinear", "InvariantLayerNorm", "InvariantRMSNorm", "InvariantAttention", "make_batch_invariant",
    "is_batch_invariant",
]

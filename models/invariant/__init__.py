"""Batch-invariant kernels (issues 11, 21): a row's result does not depend on how many other rows share the launch.

- `invariant_matmul` / `invariant_linear` / `invariant_bmm`: Triton GEMM, BLOCK_K fixed per (N, K, dtype),
  the other tile sizes by M bucket, no split-K, one reduction order over K (matmul.py, tiles.py);
- `no_split_k` / `cublas_linear`: cuBLASLt with split-K off (cublas.py: what torch's switch sets, and why);
- `probe`: the bitwise probe over M (probe.py); `KernelChoice`: which kernel a GEMM runs and why (choice.py;
  the choice itself, timed on a GPU and cached on disk, is profiler.invariance.choose);
- `invariant_layer_norm` / `invariant_rms_norm`: one program per row (norms.py);
- `invariant_attention`: causal flash-attention forward without split-KV (attention.py);
- `make_batch_invariant(stack, choose=...)`: the same LayerStack on those kernels, models/layer.py untouched;
  each Linear records the kernel it got and why (switch.py, `kernel_choices`);
- `chunked_linear`: a split-K matmul with a chunk count fixed per shape (splitk.py).

On CUDA they compile with Triton; on a CPU they run in Triton's interpreter (slow, for tests); without
Triton they raise KernelUnavailable (backend.py).
"""

from .attention import invariant_attention
from .backend import KernelUnavailable, available
from .choice import KernelChoice
from .cublas import cublas_linear, no_split_k
from .matmul import config_for, fixed_linear, invariant_bmm, invariant_linear, invariant_matmul, mma_families
from .norms import invariant_layer_norm, invariant_rms_norm
from .probe import ProbeVerdict, probe, probe_tokens
from .splitk import chunked_linear
from .switch import (InvariantAttention, InvariantLayerNorm, InvariantLinear, InvariantRMSNorm, choose_kernels,
                     is_batch_invariant, kernel_choices, make_batch_invariant)
from .tiles import MatmulConfig, MatmulPlan, fixed_plan, plan_for

__all__ = [
    "KernelUnavailable", "available", "MatmulConfig", "MatmulPlan", "config_for", "plan_for", "fixed_plan",
    "invariant_matmul", "invariant_linear", "invariant_bmm", "fixed_linear", "mma_families", "no_split_k",
    "cublas_linear", "probe", "probe_tokens", "ProbeVerdict", "KernelChoice", "chunked_linear", "invariant_layer_norm",
    "invariant_rms_norm", "invariant_attention", "InvariantLinear", "InvariantLayerNorm", "InvariantRMSNorm",
    "InvariantAttention", "make_batch_invariant", "choose_kernels", "kernel_choices", "is_batch_invariant",
]

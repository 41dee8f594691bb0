"""The layer switch: `make_batch_invariant(stack)` runs the same LayerStack on batch-invariant kernels.

Each Linear runs on the kernel a chooser picked for its (N, K, dtype, bias) on the weight's device and keeps
that choice, with its reason, as `module.kernel_choice`; `kernel_choices(stack)` lists them per GEMM. The
chooser is handed in (`make_batch_invariant(stack, choose=profiler.invariance.choose)`: the fastest kernel a
bitwise probe over M proved invariant on this GPU, cuBLAS's default included where it passes; it lives on the
profiler floor because it times candidates). Without one, every Linear runs the M-bucketed Triton kernel,
invariant by construction but not probed here. A chooser probes the GPU (seconds per new shape, then cached on
disk), so it runs in `make_batch_invariant` when the weights are already on the GPU, else at the first
forward on one: call `choose_kernels(stack)` before capturing a CUDA graph.

models/layer.py is not edited: each module is re-classed to a subclass that keeps its parameters, names and
state_dict and overrides only `forward` (nn.Linear -> InvariantLinear, the norms -> InvariantLayerNorm /
InvariantRMSNorm, Attention -> InvariantAttention). The layer's named regions stay where they were, so the
profiler attributes the invariant kernels to the same Table II steps. Elementwise steps (rotary, GeLU /
SwiGLU, residual adds) and the causal softmax are left alone: each output element depends on its own
inputs only (the softmax: one program per row, shaped by the row's length), so they are invariant as they are.

The kernels are forward-only (inference): a call that would need gradients is refused, not silently wrong.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .. import layer as _layer
from .attention import invariant_attention
from .choice import KernelChoice, linear, unprobed_choice
from .matmul import invariant_bmm
from .norms import invariant_layer_norm, invariant_rms_norm


def _forward_only(*tensors: torch.Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("batch-invariant kernels are forward-only: run the layer under torch.no_grad() "
                           "or torch.inference_mode()")


Chooser = Callable[..., KernelChoice]  # (n, k, dtype, bias, device) -> KernelChoice
OFF_GPU = "off a GPU: the Triton kernel (in Triton's interpreter); cuBLAS is probed only on a GPU"
NO_CHOOSER = ("no chooser handed to make_batch_invariant: the M-bucketed Triton kernel, invariant by construction, "
              "not probed on this GPU (profiler.invariance.choose probes and picks)")


class InvariantLinear(nn.Linear):
    """nn.Linear on the invariant kernel chosen for its shape on the weight's device (`kernel_choice`)."""

    kernel_choice: KernelChoice | None = None  # set on first use; an instance attribute from then on
    chooser: Chooser | None = None  # set by make_batch_invariant; None: the Triton kernel, unprobed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _forward_only(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias, self.choose_kernel())

    def choose_kernel(self) -> KernelChoice:
        w = self.weight
        where = (w.device, w.dtype)  # a module moved or cast after choosing chooses again
        if self.__dict__.get("_kernel_for") != where:
            n, k, bias = w.shape[0], w.shape[1], self.bias is not None
            if w.device.type != "cuda" or self.chooser is None:
                self.kernel_choice = unprobed_choice(n, k, w.dtype, bias, OFF_GPU if w.device.type != "cuda" else NO_CHOOSER)
            else:
                self.kernel_choice = self.chooser(n, k, w.dtype, bias, w.device)
            self._kernel_for = where
        return self.kernel_choice


class InvariantLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _forward_only(x, self.weight, self.bias)
        return invariant_layer_norm(x, self.weight, self.bias, self.eps)


class InvariantRMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _forward_only(x, self.weight)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps  # nn.RMSNorm's default
        return invariant_rms_norm(x, self.weight, eps)


class InvariantAttention(_layer.Attention):
    """Attention with the score and over-values BMMs (eager) or the fused attention (sdpa / flash) on
    batch-invariant kernels; projections and rotary are untouched here (the Linears are swapped apart)."""

    def _eager(self, q, k, v, dropout_p):
        _refuse_dropout(dropout_p)
        b, heads, s, d = q.shape
        with _layer.region("layout"):
            q, k, v = (t.reshape(b * heads, s, d) for t in (q, k, v))
            k = k.transpose(1, 2)
        with _layer.region("attention_score"):
            scores = invariant_bmm(q, k, alpha=self.scale)
        with _layer.region("softmax"):  # one program per row, shaped by s: invariant as it is
            probs = _layer.causal_softmax(scores)
        with _layer.region("attention_over_values"):
            context = invariant_bmm(probs, v)
        with _layer.region("layout"):
            return context.view(b, heads, s, d)

    def _fused(self, q, k, v, dropout_p):
        _refuse_dropout(dropout_p)
        _forward_only(q)
        with _layer.region(f"{self.cfg.attention}_attention"):  # the default layer's region, so steps line up
            return invariant_attention(q, k, v, self.scale)


def _refuse_dropout(p: float) -> None:
    if p > 0:
        raise RuntimeError("batch-invariant kernels are for inference: put the layer in eval() (dropout off)")


SWAPS = ((nn.Linear, InvariantLinear), (nn.LayerNorm, InvariantLayerNorm), (nn.RMSNorm, InvariantRMSNorm),
         (_layer.Attention, InvariantAttention))


def make_batch_invariant(stack: nn.Module, *, norms: bool = True, inplace: bool = False,
                         choose: Chooser | None = None) -> nn.Module:
    """The same stack (a copy unless `inplace`) on batch-invariant kernels: every nn.Linear (QKV, output
    projection, MLP up/gate/down, logits; biases on the GEMM epilogue), the attention, and (with `norms`)
    LayerNorm / RMSNorm. `choose(n, k, dtype, bias, device) -> KernelChoice` picks each Linear's kernel on a
    GPU (None: the Triton kernel). Returns it in eval mode; weights are shared with nothing (a deep copy)."""
    target = stack if inplace else copy.deepcopy(stack)
    for module in target.modules():
        for base, invariant in SWAPS:
            if type(module) is base and (norms or base not in (nn.LayerNorm, nn.RMSNorm)):
                _check_swappable(module)
                module.__class__ = invariant
        if isinstance(module, InvariantLinear):
            module.chooser = choose
    if any(p.is_cuda for p in target.parameters()):
        choose_kernels(target)
    return target.eval()


def choose_kernels(stack: nn.Module) -> list[dict]:
    """Choose (probe, or read from the cache) the kernel of every invariant Linear now, on its weight's
    device; returns `kernel_choices(stack)`."""
    for module in stack.modules():
        if isinstance(module, InvariantLinear):
            module.choose_kernel()
    return kernel_choices(stack)


def kernel_choices(stack: nn.Module) -> list[dict]:
    """Per invariant GEMM of the stack: its name, (N, K), the kernel it got and why (None until chosen)."""
    rows = []
    for name, module in stack.named_modules():
        if isinstance(module, InvariantLinear):
            choice = module.kernel_choice
            rows.append({"module": name, "n": module.out_features, "k": module.in_features,
                         "bias": module.bias is not None, "kernel": choice.label if choice else None,
                         "proven": choice.proven if choice else None, "reason": choice.reason if choice else None})
    return rows


def is_batch_invariant(module: nn.Module) -> bool:
    return any(isinstance(m, (InvariantLinear, InvariantAttention)) for m in module.modules())


def _check_swappable(module: nn.Module) -> None:
    if isinstance(module, nn.LayerNorm) and (len(module.normalized_shape) != 1 or not module.elementwise_affine):
        raise ValueError("make_batch_invariant: only LayerNorm over the last dim with weights is supported")
    if isinstance(module, nn.RMSNorm) and (len(module.normalized_shape) != 1 or module.weight is None):
        raise ValueError("make_batch_invariant: only RMSNorm over the last dim with weights is supported")

"""Megatron-style tensor parallelism over models.layer.TransformerLayer: the same layer, with real collectives.

Shoeybi et al. (Megatron-LM, 2019, Section 3) split each block into a column-parallel GEMM followed by a
row-parallel one, so a block needs one all-reduce per pass:

- column-parallel (QKV, MLP up and gate): each rank holds a/t heads and f/t MLP columns (Table II's 3h/t
  and 4h/t); the block's input is replicated, so forward needs no communication. Megatron's `f`: identity
  forward, all-reduce of the input gradient backward (each rank holds only its heads' share of it).
- row-parallel (out projection, MLP down): each rank multiplies its h/t (or f/t) slice and holds a partial
  sum. Megatron's `g`: all-reduce forward, identity backward. The bias is replicated and added after the
  all-reduce (added before, it would be summed t times).

`parallelize_layer` turns a layer built with `cfg.tensor_parallel = t` (whose modules already have the
per-rank shapes) into this one in place, the way torch.distributed.tensor.parallel and torchtitan do: the
layer's own forward runs unchanged, so there is one definition of the layer's math. `f` rides on a forward
hook of the block's norm, `g` on the row-parallel linear. Each collective runs in a named region
(`allreduce_attention`, `allreduce_mlp`) nested inside the caller's region; an autograd Function's
forward runs in that region too, so the backward all-reduce maps back to it through its sequence number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layer import TransformerLayer, build_layer, region, torch_dtype

COMMUNICATION_REGIONS = ("allreduce_attention", "allreduce_mlp")

# parameter name -> the dimension it is split along over the ranks; absent = replicated on every rank
# (norms, and the row-parallel biases, which are added after the all-reduce)
SHARD_DIMS = {
    "attention.qkv_transform.weight": 0, "attention.qkv_transform.bias": 0,  # whole heads per rank
    "attention.out_projection.weight": 1,
    "mlp.mlp_up.weight": 0, "mlp.mlp_up.bias": 0,
    "mlp.mlp_gate.weight": 0, "mlp.mlp_gate.bias": 0,
    "mlp.mlp_down.weight": 1,
}


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class CopyToTensorParallelRegion(torch.autograd.Function):
    """Megatron's f: the replicated input goes to every rank's column-parallel GEMMs unchanged; in backward
    each rank holds the input gradient of its own heads/columns only, so the gradients are summed."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        # in place, as Megatron does: the gradient is the fresh output of the column GEMMs' backward
        # (or autograd's sum of them), owned by no one else; a copy would add a memory-bound kernel
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ReduceFromTensorParallelRegion(torch.autograd.Function):
    """Megatron's g: sums the row-parallel GEMMs' partial outputs; the output gradient is replicated, so
    backward passes it through."""

    @staticmethod
    def forward(ctx, x, group):
        dist.all_reduce(x, group=group)  # in place on the GEMM's own output, which backward does not need
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_r W_r^T) + b: the partial product, the all-reduce (region `communication_region`),
    then the replicated bias. Same parameter names as nn.Linear, so state dicts line up with the layer's."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, communication_region: str,
                 group=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.communication_region = communication_region
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        if _world(self.group) > 1:
            with region(self.communication_region):
                out = ReduceFromTensorParallelRegion.apply(out, self.group)
        if self.bias is None:
            return out
        with region("residual"):  # Megatron's bias-dropout-add: bias work, not the GEMM's
            return out + self.bias


def _row_parallel(linear: nn.Linear, communication_region: str, group) -> RowParallelLinear:
    row = RowParallelLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            communication_region=communication_region, group=group,
                            device=linear.weight.device, dtype=linear.weight.dtype)
    row.weight, row.bias = linear.weight, linear.bias  # the same Parameters: nothing is copied
    return row


def _copy_to_parallel_region_hook(communication_region: str, group):
    def hook(_module, _inputs, output):
        with region(communication_region):  # nested in the caller's "norm" region; innermost wins
            return CopyToTensorParallelRegion.apply(output, group)
    return hook


def parallelize_layer(layer: TransformerLayer, group=None) -> TransformerLayer:
    """In place: the row-parallel linears become RowParallelLinear (g), the norms feeding the column-parallel
    GEMMs gain f. `layer` must have been built with cfg.tensor_parallel equal to the group's size."""
    t = layer.cfg.tensor_parallel
    if _world(group) != t:
        raise ValueError(f"layer built for tensor_parallel={t} but the process group has {_world(group)} ranks")
    if t == 1:
        return layer  # Megatron skips f and g on one rank: nothing to sum
    layer.attention.out_projection = _row_parallel(layer.attention.out_projection, "allreduce_attention", group)
    layer.mlp.mlp_down = _row_parallel(layer.mlp.mlp_down, "allreduce_mlp", group)
    layer.input_norm.register_forward_hook(_copy_to_parallel_region_hook("allreduce_attention", group))
    layer.post_attention_norm.register_forward_hook(_copy_to_parallel_region_hook("allreduce_mlp", group))
    return layer


def build_tensor_parallel_layer(cfg: ModelConfig, *, group=None, device="cpu", dtype=None,
                                seed: int = 0) -> TransformerLayer:
    """This rank's layer with random weights. Every rank uses the same seed, so replicated parameters (norms,
    row-parallel biases) are identical on every rank, as after Megatron's initial broadcast."""
    return parallelize_layer(build_layer(cfg, device=device, dtype=dtype, seed=seed).layer, group)


def shard(tensor: torch.Tensor, name: str, rank: int, world_size: int) -> torch.Tensor:
    """This rank's slice of a full (t=1) parameter or gradient."""
    dim = SHARD_DIMS.get(name)
    return tensor if dim is None else tensor.chunk(world_size, dim)[rank]


def load_shards(tp_layer: TransformerLayer, full_layer: TransformerLayer, rank: int, world_size: int) -> None:
    """Copy this rank's slices of a full single-GPU layer's weights into a tensor-parallel layer."""
    full = dict(full_layer.named_parameters())
    with torch.no_grad():
        for name, param in tp_layer.named_parameters():
            part = shard(full[name], name, rank, world_size)
            if part.shape != param.shape:
                raise ValueError(f"{name}: shard {tuple(part.shape)} != parameter {tuple(param.shape)}")
            param.copy_(part)


def gather_shards(tensors: dict[str, torch.Tensor], group=None) -> dict[str, torch.Tensor]:
    """The full tensors from every rank's slices (all-gather along each one's shard dimension)."""
    world = _world(group)
    full = {}
    for name, tensor in tensors.items():
        dim = SHARD_DIMS.get(name)
        if dim is None or world == 1:
            full[name] = tensor
            continue
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        full[name] = torch.cat(parts, dim=dim)
    return full


@dataclass(frozen=True)
class Collective:
    """One collective of a layer step, as Table II lists GEMMs: what it sums, where, and how many bytes."""

    region: str
    pass_name: str  # "forward" or "backward"
    op: str  # "all_reduce"
    elements: int
    element_bytes: int

    @property
    def message_bytes(self) -> int:  # NCCL's "size": the buffer each rank contributes
        return self.elements * self.element_bytes


def communication_plan(cfg: ModelConfig, *, backward: bool) -> list[Collective]:
    """The collectives one step of the tensor-parallel layer runs: per block, one all-reduce of the (b, s, h)
    activation in forward (g) and one of its gradient in backward (f). None at t=1."""
    if cfg.tensor_parallel == 1:
        return []
    elements = cfg.micro_batch_size * cfg.seq_length * cfg.hidden_size
    size = torch.empty((), dtype=torch_dtype(cfg.dtype)).element_size()
    passes = ("forward", "backward") if backward else ("forward",)
    return [Collective(r, p, "all_reduce", elements, size) for p in passes for r in COMMUNICATION_REGIONS]

"""Op-by-op comparison of one prompt's forward alone and inside a batch: where does invariance break first?

Two ways to see the steps of a forward, both producing (name, tensor) in execution order:

- `record_regions(on_step)`: the profiler's layer. Each `layer/<step>` region of models/layer.py is one
  step; its output is the last tensor an op produced inside the region (a TorchDispatchMode watches the ops),
  or, for a region that launches only a Triton kernel writing in place (rotary), the previous step's output
  as the kernel left it. The layer is not edited: `models.layer.region` is swapped for the duration.
- `record_modules(model, on_step)`: any nn.Module tree (transformers, DeepSpeed's injected model): every
  module's output (forward hook) and every leaf module's input (pre-hook), in the order they complete.

`StepComparer` stores the alone run's steps and compares each step of a batched run with them: the prompt's
part of a batched tensor is chunk `position` of `batch` along the outermost dim (every tensor of these
forwards is batch-major: (b, s, ...), (b*s, ...) or (b*heads, ...)); a tensor without a batch dim (rotary
tables) is compared whole.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

OnStep = Callable[[str, torch.Tensor], None]


def first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return first_tensor(list(value.values()))
    for name in ("logits", "last_hidden_state"):  # transformers' ModelOutput
        if hasattr(value, name) and isinstance(getattr(value, name), torch.Tensor):
            return getattr(value, name)
    return None


def _mutates_first_argument(func) -> bool:
    schema = getattr(func, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return alias is not None and alias.is_write


class _OpWatcher(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.open: list[list] = []  # [name, last tensor] per open region
        self.paused = False
        # storage -> the first tensor an op produced on it: a write into a view of x then reports x (views made
        # under inference_mode have no `_base`); weak, so the tape keeps no intermediate alive
        self.owners: dict[int, weakref.ref] = {}

    def _owner(self, tensor: torch.Tensor) -> torch.Tensor:
        ref = self.owners.get(tensor.untyped_storage().data_ptr())
        owner = ref() if ref is not None else None
        return owner if owner is not None and owner.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() \
            else tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        produced = first_tensor(out)
        if produced is not None and produced.numel():
            key = produced.untyped_storage().data_ptr()
            if key not in self.owners or self.owners[key]() is None:
                self.owners[key] = weakref.ref(produced)
        if self.open:
            if _mutates_first_argument(func) and args and isinstance(args[0], torch.Tensor):
                tensor = self._owner(args[0])  # a write into a view of x: x
            else:
                tensor = produced
            if tensor is not None:
                self.open[-1][1] = tensor
        return out


@contextmanager
def record_regions(on_step: OnStep):
    """Report each region of models/layer.py (and of the invariant layer, which uses the same regions)."""
    from models import layer as layer_module

    watcher = _OpWatcher()
    state = {"previous": None}

    @contextmanager
    def recording_region(name: str):
        watcher.open.append([name, None])
        try:
            yield
        finally:
            _, tensor = watcher.open.pop()
            tensor = tensor if tensor is not None else state["previous"]  # a Triton kernel wrote in place
            if tensor is not None:
                state["previous"] = tensor
                watcher.paused = True
                try:
                    on_step(name, tensor)
                finally:
                    watcher.paused = False

    original = layer_module.region
    layer_module.region = recording_region
    try:
        with watcher:
            yield
    finally:
        layer_module.region = original


@contextmanager
def record_modules(model: nn.Module, on_step: OnStep):
    """Report every submodule's output and every leaf module's input, in the order the forward runs them."""
    handles = []

    def output_hook(name):
        def hook(module, inputs, output):
            tensor = first_tensor(output)
            if tensor is not None:
                on_step(name, tensor)
        return hook

    def input_hook(name):
        def hook(module, inputs):
            tensor = first_tensor(inputs)
            if tensor is not None:
                on_step(f"{name} (input)", tensor)
        return hook

    for name, module in model.named_modules():
        if not name:
            continue
        if not any(True for _ in module.children()):
            handles.append(module.register_forward_pre_hook(input_hook(name)))
        handles.append(module.register_forward_hook(output_hook(name)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Step:
    index: int
    name: str
    shape: tuple[int, ...]
    values: torch.Tensor  # flattened copy


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.dtype == torch.bool or not (a.is_floating_point() or a.is_complex()):
        return float((a != b).any().item())
    diff = (a.double() - b.double()).abs()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return diff.max().item() if diff.numel() else 0.0


class StepComparer:
    """Call it as the `on_step` of a tape: alone (`reference=None`) it keeps each step; batched it compares."""

    def __init__(self, reference: list[Step] | None = None, *, batch: int = 1, position: int = 0):
        self.reference, self.batch, self.position = reference, batch, position
        self.steps: list[Step] = []
        self.rows: list[dict] = []

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        index = len(self.steps) if self.reference is None else len(self.rows)
        if self.reference is None:
            self.steps.append(Step(index, name, tuple(tensor.shape), tensor.reshape(-1).clone()))
            return
        self.rows.append(self._compare(index, name, tensor))

    def _compare(self, index: int, name: str, tensor: torch.Tensor) -> dict:
        row = {"index": index, "step": name, "shape": "x".join(map(str, tensor.shape))}
        if index >= len(self.reference) or self.reference[index].name != name:
            return {**row, "comparable": False, "equal": None, "max_abs_diff": None,
                    "note": "the batched forward took another path here"}
        alone = self.reference[index].values
        if tensor.numel() == alone.numel() * self.batch and self.batch > 1:
            mine = tensor.reshape(self.batch, -1)[self.position]
        elif tensor.numel() == alone.numel():
            mine = tensor.reshape(-1)  # no batch dim (e.g. rotary tables)
        else:
            return {**row, "comparable": False, "equal": None, "max_abs_diff": None,
                    "note": f"{tensor.numel()} elements, not {self.batch} x {alone.numel()}"}
        mine = mine.to(alone.device)
        equal = bool(torch.equal(mine, alone))
        return {**row, "comparable": True, "equal": equal, "max_abs_diff": 0.0 if equal else _max_abs_diff(mine, alone),
                "note": ""}


def first_difference(rows: list[dict]) -> dict | None:
    """The earliest comparable step whose output differs, or None when every step matched."""
    return next((r for r in rows if r.get("comparable") and not r.get("equal")), None)

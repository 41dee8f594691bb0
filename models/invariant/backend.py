"""Where a batch-invariant kernel runs: compiled by Triton on a CUDA tensor, through Triton's interpreter on
a CPU tensor (numpy, for tests of the kernels' logic: tiling, masking, reduction order), nowhere without Triton.

Triton decides interpreter-or-compiler when `@triton.jit` decorates a function (it reads TRITON_INTERPRET
then), so one decoration cannot serve both devices in one process. Each kernel is kept as its plain Python
function and wrapped twice: `triton.jit` at import (the GPU path, the public API only) and the interpreter's
`InterpretedFunction` on first use with a CPU tensor (internal API, never touched on a GPU run).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable

import torch

try:  # Triton ships with CUDA builds of torch; on a CPU it is `pip install triton`
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on CPU-only installs without triton
    triton = None
    tl = None


class KernelUnavailable(RuntimeError):
    """The batch-invariant kernels cannot run here; the message says what to install or change."""


def available(device: torch.device | str | None = None) -> str | None:
    """None when the kernels can run on `device` (compiled on CUDA, interpreted on a CPU), else why not."""
    if triton is None:
        return ("the batch-invariant kernels need Triton: pip install -e \".[invariance]\" (or pip install \"triton>=3.8\"); "
                "on a CPU they run in its interpreter")
    if device is not None and torch.device(device).type != "cuda":
        return interpreter_problem()
    return None


def require() -> None:
    """Raise KernelUnavailable (with what to install) where Triton is missing."""
    if triton is None:
        raise KernelUnavailable(available())


def _probe_kernel(x_ptr, n, PROGRAMS: tl.constexpr):
    for i in range(tl.program_id(0), n, PROGRAMS):  # what the kernels need: a loop bounded by tensors, stdlib calls
        tl.store(x_ptr + i, tl.sum(tl.full((2,), 1.0, tl.float32), axis=0) + tl.cdiv(i, 1))


@functools.lru_cache(maxsize=1)
def interpreter_problem() -> str | None:
    """Triton's interpreter runs the kernels on a CPU from 3.8 on; older ones (3.6 with numpy 2: a loop bound
    that is a tensor) cannot. Tried once, on a probe kernel."""
    x = torch.zeros(3)
    try:
        Kernel(_probe_kernel)[(2,)](x, 3, PROGRAMS=2)
        if x.tolist() != [2.0, 3.0, 4.0]:
            raise RuntimeError(f"probe computed {x.tolist()}")
    except Exception as exc:  # noqa: BLE001 - any failure means: not here
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        return (f"Triton {triton.__version__}'s interpreter cannot run the batch-invariant kernels on a CPU "
                f"({type(exc).__name__}: {first}); use a GPU, or pip install 'triton>=3.8' for CPU runs")
    return None


class Kernel:
    """One kernel, compiled for CUDA tensors and interpreted for CPU tensors.

    `jit_kwargs` go to both (e.g. do_not_specialize): the same specialisation rules on either path."""

    def __init__(self, fn: Callable, **jit_kwargs):
        self.fn, self.jit_kwargs = fn, jit_kwargs
        self.compiled = triton.jit(fn, **jit_kwargs) if triton is not None else None
        self._interpreted = None

    @property
    def interpreted(self):
        if self._interpreted is None:
            from triton.runtime.interpreter import InterpretedFunction

            self._interpreted = InterpretedFunction(self.fn, **self.jit_kwargs)
        return self._interpreted

    def __getitem__(self, grid):
        """kernel[grid](tensor, ...): picks the path from the device of the first tensor argument."""
        def launch(*args, **kwargs):
            reason = available()
            if reason:
                raise KernelUnavailable(reason)
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            if device.type == "cuda":
                return self.compiled[grid](*args, **kwargs)
            with _stdlib_interpreted():
                return self.interpreted[grid](*args, **kwargs)
        return launch


_INTERPRETED_STDLIB: dict = {}


@contextmanager
def _stdlib_interpreted():
    """Triton's own helpers (tl.cdiv, tl.sum, tl.max, ...) are `@jit` functions decorated when
    triton.language was imported, i.e. compiled-mode objects that refuse to be called from Python. While an
    interpreted kernel runs, calls to them go to interpreted twins instead (CPU path only; restored after)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    original = JITFunction.__call__

    def call(self, *args, **kwargs):
        twin = _INTERPRETED_STDLIB.get(self.fn)
        if twin is None:
            twin = _INTERPRETED_STDLIB[self.fn] = InterpretedFunction(self.fn)
        return twin(*args, **kwargs)

    JITFunction.__call__ = call
    try:
        yield
    finally:
        JITFunction.__call__ = original


@functools.lru_cache(maxsize=None)
def program_slots(device: torch.device) -> int:
    """Programs a persistent kernel launches at most: one per SM on a GPU (read from the device, never a
    constant), a handful in the interpreter (it runs programs one after another anyway)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def out_of_resources() -> tuple[type[BaseException], ...]:
    """Errors that mean 'this tile configuration does not fit this GPU' (shared memory, registers)."""
    if triton is None:
        return ()
    from triton.runtime.errors import OutOfResources

    return (OutOfResources,)

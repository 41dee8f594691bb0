"""One prompt alone and inside batches of other prompts, through the profiler's layer (a transformer layer and
the logit layer) on its default kernels and on the batch-invariant ones.

For each kernel set x batch size x place of the prompt in the batch: are the prompt's logits bitwise the
same as alone, and its greedy tokens (argmax per position)? Which step of the forward differs first (every
`layer/<step>` region compared, tape.py)? Which ops break invariance on their own (each fed the same input,
ops.py)? And the cost: forward latency of both kernel sets per batch size.
The prompt is a sequence of hidden states (the layer's input), the other prompts are other random ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from models import ModelConfig
from models.layer import build_layer

from ..timing import bench, summarize
from .ops import check_ops
from .tape import StepComparer, first_difference, record_regions

KERNEL_SETS = ("default", "invariant")
POSITIONS = ("first", "last")


@dataclass(frozen=True)
class LayerCheckSpec:
    config: ModelConfig  # seq_length = prompt length; dtype and attention as the check should run them
    batches: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    positions: tuple[str, ...] = POSITIONS
    kernel_sets: tuple[str, ...] = KERNEL_SETS
    include_logits: bool = True
    measure_latency: bool = True
    isolate_ops: bool = True  # also each op alone on the same input (ops.py)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batches or any(b < 2 for b in self.batches):
            raise ValueError("batches: each batch must hold the prompt and at least one other (>= 2)")
        unknown = set(self.positions) - set(POSITIONS) | set(self.kernel_sets) - set(KERNEL_SETS)
        if unknown:
            raise ValueError(f"unknown position or kernel set: {', '.join(sorted(unknown))}")


@dataclass
class LayerCheckResult:
    outputs: pd.DataFrame  # one row per kernel set x batch x position
    steps: pd.DataFrame  # one row per kernel set x batch x position x step
    latency: pd.DataFrame  # one row per kernel set x batch
    ops: pd.DataFrame  # one row per kernel set x op x batch x position: each op alone on the same input (ops.py)
    notes: list[str] = field(default_factory=list)


def _inputs(cfg: ModelConfig, batch: int, position: str, device, dtype, seed: int) -> tuple[torch.Tensor, int]:
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randn(1, cfg.seq_length, cfg.hidden_size, generator=gen)
    others = torch.randn(batch - 1, cfg.seq_length, cfg.hidden_size, generator=gen)
    index = 0 if position == "first" else batch - 1
    x = torch.cat([others[:index], prompt, others[index:]])
    return x.to(device=device, dtype=dtype), index


def build_stacks(cfg: ModelConfig, kernel_sets, *, include_logits: bool, device, dtype) -> dict:
    from models.invariant import make_batch_invariant

    from .choice import choose

    default = build_layer(cfg, include_logits=include_logits, device=device, dtype=dtype).eval()
    stacks = {"default": default}
    if "invariant" in kernel_sets:
        stacks["invariant"] = make_batch_invariant(default, choose=choose)
    return {k: stacks[k] for k in kernel_sets}


@torch.inference_mode()
def check_layer(spec: LayerCheckSpec, *, device: torch.device, dtype: torch.dtype, progress: bool = False,
                log=print) -> LayerCheckResult:
    from tqdm import tqdm

    cfg = spec.config
    stacks = build_stacks(cfg, spec.kernel_sets, include_logits=spec.include_logits, device=device, dtype=dtype)
    outputs, steps, latency = [], [], []
    total = len(stacks) * len(spec.batches) * (len(spec.positions) + int(spec.measure_latency))
    bar = tqdm(total=total, desc="invariance layer", unit="run", disable=not progress, dynamic_ncols=True)
    for kernels, stack in stacks.items():
        alone_x, _ = _inputs(cfg, 1, "first", device, dtype, spec.seed)
        stack(alone_x)  # warm-up: Triton compiles, rotary tables are built, outside the comparison
        reference = StepComparer()
        with record_regions(reference):
            alone = stack(alone_x)[0]
        alone_tokens = alone.argmax(-1)
        for batch in spec.batches:
            for position in spec.positions:
                x, index = _inputs(cfg, batch, position, device, dtype, spec.seed)
                comparer = StepComparer(reference.steps, batch=batch, position=index)
                with record_regions(comparer):
                    mine = stack(x)[index]
                first = first_difference(comparer.rows)
                differing = [r["step"] for r in comparer.rows if r["comparable"] and not r["equal"]]
                tokens = mine.argmax(-1)
                key = {"config": cfg.name, "kernels": kernels, "batch": batch, "position": position,
                       "tokens_in_flight": batch * cfg.seq_length}
                outputs.append({**key, "output": "logits" if spec.include_logits else "hidden",
                                "output_equal": bool(torch.equal(mine, alone)),
                                "output_max_abs_diff": (mine.float() - alone.float()).abs().max().item(),
                                "greedy_tokens_equal": bool(torch.equal(tokens, alone_tokens)) if spec.include_logits else None,
                                "greedy_tokens_differing": int((tokens != alone_tokens).sum().item()) if spec.include_logits else None,
                                "steps_compared": sum(r["comparable"] for r in comparer.rows),
                                "steps_differing": len(differing),
                                "first_differing_step": first["step"] if first else "",
                                "first_differing_index": first["index"] if first else None,
                                "differing_steps": ";".join(dict.fromkeys(differing))})
                steps += [{**key, **row} for row in comparer.rows]
                bar.update()
            if spec.measure_latency:
                x, _ = _inputs(cfg, batch, "last", device, dtype, spec.seed)
                stats = summarize(bench(lambda s=stack, x=x: s(x), warmup_ms=spec.warmup_ms, rep_ms=spec.rep_ms,
                                        min_reps=spec.min_reps, device=device))
                latency.append({"config": cfg.name, "kernels": kernels, "batch": batch,
                                "tokens_in_flight": batch * cfg.seq_length, "median_us": stats.median_ms * 1e3,
                                "p10_us": stats.p10_ms * 1e3, "p90_us": stats.p90_ms * 1e3, "repeats": stats.repeats})
                bar.update()
    bar.close()
    notes = []
    if "invariant" in stacks and "default" in stacks:
        x, _ = _inputs(cfg, spec.batches[0], "last", device, dtype, spec.seed)
        diff = (stacks["invariant"](x).float() - stacks["default"](x).float()).abs().max().item()
        notes.append(f"invariant vs default kernels on the same batch (b={spec.batches[0]}): max |difference| "
                     f"{diff:.3g} (rounding, not a bug: different reduction orders)")
    ops = check_ops(stacks, spec.batches, spec.positions, device=device, dtype=dtype, config_name=cfg.name,
                    seed=spec.seed) if spec.isolate_ops else pd.DataFrame()
    return LayerCheckResult(pd.DataFrame(outputs), pd.DataFrame(steps), pd.DataFrame(latency), ops, notes)

"""Measured serving cost of the advisor's shapes (issue 22, item 5): prefill and one decode step of each
shape through the project's CUDA-graph decode engine (graph_decoder.GreedyDecoder over models.causal_lm,
the decoder of engines/graph.py), random weights, random prompt ids.

The advisor lives on the profiler floor and may not import this floor, so `advise --measure-serving`
(cli/advise.py) calls it and joins the rows to the advisor's measured table (`serving_verdicts`).

Timing: profiler.timing.bench (the one primitive) of one decode step (a graph replay; the decoder is rewound
to the state after prefill before it would run past its cache) and of one prefill. When every shape's
weights fit at once (MEMORY_FRACTION of free memory), the shapes are timed in shuffled interleaved rounds;
otherwise one shape after another (`protocol` says which).
"""

from __future__ import annotations

import random
import statistics

import pandas as pd
import torch

from models import ModelConfig, count_parameters
from models.causal_lm import NeoXCausalLM, unsupported_reason
from models.layer import torch_dtype
from profiler.advisor.serving import SERVE_TOLERANCE
from profiler.timing import bench

from .graph_decoder import GreedyDecoder

MEMORY_FRACTION = 0.6
CPU_BENCH = {"warmup_ms": 1.0, "rep_ms": 5.0, "min_reps": 2}


class _Served:
    def __init__(self, cfg: ModelConfig, *, batch: int, prompt_len: int, new_tokens: int, device: torch.device):
        dtype = torch_dtype(cfg.dtype)
        torch.manual_seed(0)
        self.cfg = cfg
        self.model = NeoXCausalLM(cfg, device=device, dtype=dtype).eval()
        self.decoder = GreedyDecoder(self.model, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens)
        gen = torch.Generator(device="cpu").manual_seed(batch * 100003 + prompt_len)
        self.ids = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen).to(device)
        self.decoder.capture(self.ids)
        self.decoder.rewind()  # capture's warm-up (eager, off CUDA) may have advanced the state
        self.limit = new_tokens - 1
        self.done = 0

    def step(self) -> None:
        if self.done >= self.limit:  # never past the cache: back to the state after prefill
            self.decoder.rewind()
            self.done = 0
        self.decoder.step()
        self.done += 1

    def prefill(self) -> None:
        self.decoder.prefill(self.ids)
        self.decoder.rewind()
        self.done = 0

    def release(self) -> None:
        self.decoder.release()
        del self.decoder, self.model


def _fits(configs: list[ModelConfig], device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    need = sum(count_parameters(c).total * 2 for c in configs) * 1.2
    return need < MEMORY_FRACTION * free


def measure_serving(configs: list[ModelConfig], *, batch: int, prompt_len: int, new_tokens: int,
                    device: torch.device, rounds: int = 3, seed: int = 0,
                    bench_budget: dict | None = None) -> pd.DataFrame:
    """One row per (round, shape): decode_step_ms and prefill_ms (bench medians), or status/reason for a
    shape the engine cannot run. `protocol`: interleaved or sequential."""
    budget = bench_budget if bench_budget is not None else (CPU_BENCH if device.type == "cpu" else {})
    runnable = [c for c in configs if unsupported_reason(c) is None]
    rows = [{"round": None, "name": c.name, "status": "unsupported", "reason": unsupported_reason(c)}
            for c in configs if unsupported_reason(c) is not None]
    rng = random.Random(seed)
    interleaved = _fits(runnable, device)
    protocol = ("interleaved: every shape once per round, shuffled" if interleaved
                else "sequential: one shape at a time (their weights do not fit at once)")

    def time_one(served: _Served, r: int, order: int) -> dict:
        step = statistics.median(bench(served.step, device=device, **budget))
        prefill = statistics.median(bench(served.prefill, device=device, **budget))
        return {"round": r, "order": order, "name": served.cfg.name, "status": "ok", "reason": "",
                "decode_step_ms": step, "prefill_ms": prefill, "protocol": protocol}

    def build(cfg: ModelConfig) -> _Served | dict:
        try:
            return _Served(cfg, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, device=device)
        except torch.cuda.OutOfMemoryError as exc:
            return {"round": None, "name": cfg.name, "status": "oom", "reason": str(exc).splitlines()[0][:200]}

    if interleaved:
        built = [build(c) for c in runnable]
        rows += [b for b in built if isinstance(b, dict)]
        served = [b for b in built if not isinstance(b, dict)]
        for r in range(rounds):
            order = list(range(len(served)))
            rng.shuffle(order)
            rows += [time_one(served[i], r, k) for k, i in enumerate(order)]
        for s in served:
            s.release()
    else:
        for cfg in runnable:
            s = build(cfg)
            if isinstance(s, dict):
                rows.append(s)
                continue
            rows += [time_one(s, r, 0) for r in range(rounds)]
            s.release()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def serving_verdicts(measured: pd.DataFrame, served: pd.DataFrame, given: str) -> pd.DataFrame:
    """The advisor's measured table with the serving medians, the decode and prefill speed-ups against the
    given shape (medians of per-round ratios where interleaved, else of medians) and the measured flag: a
    proposal measured 'faster' to train whose decode or prefill runs more than SERVE_TOLERANCE slower."""
    ok = served[served["status"] == "ok"]
    out = measured.copy()
    if ok.empty or given not in set(ok["name"]):
        out["measured_serving_flag"] = ""
        return out
    med = ok.groupby("name")[["decode_step_ms", "prefill_ms"]].median()
    base = ok[ok["name"] == given].set_index("round")

    def ratio(name: str, col: str) -> float:
        own = ok[ok["name"] == name].set_index("round")
        common = [r for r in own.index if r in base.index]
        values = [base.loc[r, col] / own.loc[r, col] for r in common]
        return statistics.median(values) if values else float("nan")

    out["decode_step_ms"] = out["name"].map(med["decode_step_ms"])
    out["prefill_ms"] = out["name"].map(med["prefill_ms"])
    out["decode_speedup"] = [ratio(n, "decode_step_ms") if n in med.index else float("nan") for n in out["name"]]
    out["prefill_speedup"] = [ratio(n, "prefill_ms") if n in med.index else float("nan") for n in out["name"]]
    flags = []
    for verdict, d, p in zip(out["verdict"], out["decode_speedup"], out["prefill_speedup"]):
        lost = [f"{what} {100 * (1 - s):.1f}% slower" for what, s in (("prefill", p), ("decode", d))
                if s == s and s < 1 - SERVE_TOLERANCE]
        flags.append("trains faster, serves slower: " + ", ".join(lost) if verdict == "faster" and lost else "")
    out["measured_serving_flag"] = flags
    reasons = served[served["status"] != "ok"].set_index("name")["reason"] if (served["status"] != "ok").any() else {}
    out["serving_note"] = out["name"].map(lambda n: reasons.get(n, "") if len(reasons) else "")
    return out

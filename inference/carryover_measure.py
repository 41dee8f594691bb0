"""The carry-over's interleaved rounds on the device (issue 20, items 4-5): training fwd+bwd, prefill and
decode of every shape, timed as the advisor times candidates (profiler/advisor/measure.time_rounds: one phase
per cell, every shape once per round in a shuffled order, profiler.timing.bench per call).

- training: the advisor's own subjects (models/layer.py's layer fwd+bwd and the logit layer fwd+bwd at the
  config's b and s, in the config's dtype);
- prefill: the project's GPT-NeoX (models/causal_lm.py, random weights, --dtype) over a random prompt;
- decode: neox-graph (inference/graph_decoder.GreedyDecoder): one call = rewind to the state after prefill,
  then `steps` CUDA-graph replays; the unit is the call's time / steps. A shape's decode step is then the GPU's
  time (~1.0-1.3x its weight + KV floor), not the host's.

Every shape of a decode cell holds its own KV cache while the cell runs. Where the caches of all shapes do not
fit, they share one buffer (the largest shape's cache; the others are views of it): a decode step's time does
not depend on the values it reads (no data-dependent branch; the attention kernel reads positions 0..pos of
its own layout), so the shapes overwrite each other's keys and values without changing what is timed. Each
captured step is checked against the same step in plain torch ops, from the same state, right after capture.
A cell that does not fit even so is recorded as skipped, with the reason.

Writes DIR/rounds.csv (every bench call: cell, round, order, candidate, what, time_ms, p10/p90), DIR/cells.csv
(per cell and shape: the work a unit does, the floor, the check, status) and DIR/rounds.json (environment,
settings, each phase's wall time), appended after every phase, so a run cut short keeps what it did and a
rerun measures only the cells missing.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from models.gemms import layer_flops
from profiler.advisor.ranking import SELF_SUFFIX
from profiler.errors import UserError
from profiler.hardware import environment, measure_copy_bandwidth, measure_matmul_peak

from .carryover_rounds import cell_name
from .checks import compare_logits
from .checkpoints import resolve_model
from .metrics import DTYPE_BYTES, decode_floors

CELL_COLUMNS = ["cell", "metric", "batch", "prompt_len", "model", "status", "reason", "work", "work_unit",
                "unit_steps", "num_layers", "tokens", "params", "heads", "head_dim", "floor_ms", "compute_floor_ms",
                "weight_bytes", "kv_bytes", "cache", "graph", "splits", "check_passed", "check_max_abs_diff",
                "check_ref_max_abs"]
# per bench call on a GPU: short (rounds, not one long call, carry the statistics); the warm-up still runs
# until two windows agree or the cap, and the first round of a phase starts on a GPU already busy
GPU_BUDGET = {"warmup_ms": 5.0, "rep_ms": 10.0, "min_reps": 3, "max_warmup_ms": 30.0}
# training's eager steps get bench's own budget on a GPU, as the advisor's rounds do: with the short one the
# H200 run (b4573ae) had the baseline 5% (GPT-3 2.7B) and 23% (pythia-410m) off its own second timing in one round
TRAIN_GPU_BUDGET: dict = {}
CPU_BUDGET = {"warmup_ms": 1.0, "rep_ms": 3.0, "min_reps": 2, "max_warmup_ms": 5.0}
MEMORY_FRACTION = 0.85  # of the free device memory a cell may plan to use
EOS = 0  # masked at every step, as the bench's engines mask end-of-text


@dataclass(frozen=True)
class RoundsSpec:
    models: tuple[str, ...]
    baseline: str
    out: Path
    rounds: int = 5
    training: bool = True
    prefill: tuple[tuple[int, int], ...] = ((1, 2048),)  # (batch, prompt)
    decode: tuple[tuple[int, int], ...] = ((1, 128), (16, 2048), (64, 2048))  # (batch, context): the verdicts'
    sweep: tuple[tuple[int, int], ...] = ()  # more decode cells, measured alike (decode vs batch and context)
    steps: int = 8  # decode graph replays per timed call
    dtype: str = "float16"  # prefill and decode; training runs in each config's dtype
    seed: int = 0
    device: str | None = None
    budget_s: float | None = None  # no phase starts after this many seconds
    shared_cache: bool = True  # decode cells too large for every shape's own cache share one buffer

    def __post_init__(self) -> None:
        names = [resolve_model(m).name for m in self.models]
        if self.baseline not in names:
            raise UserError(f"--baseline: '{self.baseline}' is not one of --models ({', '.join(names)})")
        if self.rounds < 1:
            raise UserError(f"--rounds: give at least 1 (3 or more for an interval), got {self.rounds}")
        if self.steps < 1:
            raise UserError(f"--round-steps: give at least 1, got {self.steps}")
        if self.dtype not in DTYPE_BYTES:
            raise UserError(f"--dtype: '{self.dtype}' is not one of {', '.join(DTYPE_BYTES)}")
        for flag, cells in (("--round-prefill", self.prefill), ("--round-decode", self.decode),
                            ("--round-sweep-batches/--round-sweep-contexts", self.sweep)):
            if any(b < 1 or p < 1 for b, p in cells):
                raise UserError(f"{flag}: give BATCHxPROMPT pairs of whole numbers >= 1, e.g. 1x128,16x2048")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def parse_cells(text: str, flag: str) -> tuple[tuple[int, int], ...]:
    """'1x128,16x2048' -> ((1, 128), (16, 2048))."""
    cells = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        try:
            b, p = part.lower().split("x")
            cells.append((int(b), int(p)))
        except ValueError:
            raise UserError(f"{flag}: '{part}' is not BATCHxPROMPT (e.g. 16x2048)") from None
    return tuple(cells)


def grid(batches: tuple[int, ...], contexts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((b, p) for p in contexts for b in batches)


def training_flops(cfg) -> int:
    """FLOPs of one whole-model training step at the config's b and s: L x layer fwd+bwd + logit fwd+bwd."""
    layer = layer_flops(cfg, backward=True)
    return cfg.num_layers * layer + layer_flops(cfg, include_logits=True, backward=True) - layer


def prefill_work(cfg, *, batch: int, prompt_len: int) -> int:
    """FLOPs of the prefill as the project's model runs it: every layer over the prompt (the full s x s
    attention square, as the layer profiler counts it) and the logits of the last position only."""
    shaped = cfg.replace(micro_batch_size=batch, seq_length=prompt_len, tensor_parallel=1)
    return cfg.num_layers * layer_flops(shaped) + 2 * batch * cfg.hidden_size * cfg.embedding_rows


def kv_cache_bytes(cfg, *, batch: int, capacity: int, dtype: str) -> int:
    return 2 * cfg.num_layers * batch * cfg.heads_per_gpu * capacity * cfg.head_dim * DTYPE_BYTES[dtype]


def prefill_transient_bytes(cfg, *, batch: int, prompt_len: int, dtype: str) -> int:
    """A generous bound on prefill's activations: x, qkv, attention out, MLP up and its GELU, per token."""
    return 13 * batch * prompt_len * cfg.hidden_size * DTYPE_BYTES[dtype]


def share_cache(cache, pool):
    """`cache` (a KVCache) as views of `pool`'s tensors (a larger KVCache of another shape): same fields, same
    shapes and dtypes, the leading elements of the pool's."""
    views = {}
    for f in dataclasses.fields(cache):
        mine, theirs = getattr(cache, f.name), getattr(pool, f.name)
        views[f.name] = theirs.reshape(-1)[: mine.numel()].view(mine.shape) if isinstance(mine, torch.Tensor) else mine
    return dataclasses.replace(cache, **views)


def plan_caches(need: dict[str, int], free: int | None, transient: int, *, shared: bool = True) -> tuple[str, str]:
    """('own' | 'shared' | 'skip', why) for one decode cell: every shape's own KV cache where they all fit in
    MEMORY_FRACTION of the free memory less prefill's activations; else one buffer of the largest shape's size,
    shared (with one more shape's own cache alive while it is built); else skipped. `free` None: no limit (CPU)."""
    if free is None:
        return "own", ""
    sizes = sorted(need.values(), reverse=True)
    room = MEMORY_FRACTION * free - transient
    if sum(sizes) <= room:
        return "own", ""
    if shared and sizes[0] + (sizes[1] if len(sizes) > 1 else 0) <= room:
        return "shared", ""
    why = (f"KV caches of {', '.join(f'{n} {b / 2**30:.1f} GiB' for n, b in need.items())} do not fit in "
           f"{MEMORY_FRACTION:.0%} of {free / 2**30:.1f} GiB free less {transient / 2**30:.1f} GiB of prefill, "
           + ("nor one shared buffer" if shared else "and sharing one buffer is off"))
    return "skip", why


def graph_check(decoder) -> dict:
    """The captured (or eager) step's logits against the same step in plain torch ops, from the same state."""
    decoder.rewind()
    reference = decoder.reference_step().float().cpu()  # (b, vocab); the state does not advance
    decoder.rewind()
    decoder.step()
    got = decoder.logits.float().cpu()
    check = compare_logits(reference[:, None], got[:, None], "captured step vs plain-torch step")
    return {"check_passed": bool(check.passed), "check_max_abs_diff": check.max_abs_diff,
            "check_ref_max_abs": check.ref_max_abs}


class RoundsRun:
    """One carry-over's rounds: the shapes' configs, the device, the files, and the fp16 models kept for
    every prefill and decode phase."""

    def __init__(self, spec: RoundsSpec, log: Callable[[str], None]):
        self.spec, self.log = spec, log
        cuda = torch.cuda.is_available() if spec.device is None else spec.device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise UserError("--device: CUDA is not available on this machine; use --device cpu")
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.dtype = spec.dtype if cuda else "float32"  # fp16 matmuls on a CPU are slow or missing
        self.configs = [resolve_model(m).config for m in dict.fromkeys(spec.models)]
        self.baseline = spec.baseline
        self.budget = GPU_BUDGET if cuda else CPU_BUDGET
        self.models: dict[str, object] = {}
        self.out = Path(spec.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    # ---- files -----------------------------------------------------------------------------------
    def done_cells(self) -> set[str]:
        path = self.out / "cells.csv"
        return set(pd.read_csv(path)["cell"]) if path.is_file() and path.stat().st_size else set()

    def append(self, name: str, frame: pd.DataFrame) -> None:
        path = self.out / name
        frame.to_csv(path, mode="a", header=not path.is_file() or not path.stat().st_size, index=False)

    def record(self, info: dict) -> None:
        path = self.out / "rounds.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        phases = previous.get("phases", []) + info.pop("phases", [])
        path.write_text(json.dumps({**previous, **info, "phases": phases}, indent=1, default=str))

    # ---- models ----------------------------------------------------------------------------------
    def model(self, cfg):
        from models.causal_lm import NeoXCausalLM

        if cfg.name not in self.models:
            torch.manual_seed(self.spec.seed)
            self.models[cfg.name] = NeoXCausalLM(cfg, device=self.device, dtype=getattr(torch, self.dtype)).eval()
        return self.models[cfg.name]

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def free_bytes(self) -> int | None:
        if self.device.type != "cuda":
            return None
        self.release()
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    # ---- phases ----------------------------------------------------------------------------------
    def time(self, subjects, cell: str, budget: dict | None = None) -> pd.DataFrame:
        """Shuffled interleaved rounds of the subjects, the baseline timed twice per round (its second timing,
        '<baseline> (again)', at its own place in each round's order: the cell's self-spread)."""
        from profiler.advisor import measure
        from profiler.advisor.ranking import self_name

        base = next((s for s in subjects if s.name == self.baseline), None)
        if base is not None:
            subjects = [*subjects, measure.Subject(self_name(self.baseline), dict(base.steps))]
        rounds = measure.time_rounds(subjects, rounds=self.spec.rounds, device=self.device, seed=self.spec.seed,
                                     bench_budget=self.budget if budget is None else budget)
        return rounds.assign(cell=cell)

    def training(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        from profiler.advisor import measure

        subjects = measure.layer_subjects(self.configs, self.device)
        for s in subjects:
            s.steps.pop("layer_forward", None)  # the verdicts stand on forward+backward
        cell = cell_name("train_fwdbwd")
        rounds = self.time(subjects, cell, TRAIN_GPU_BUDGET if self.device.type == "cuda" else None)
        cells = pd.DataFrame([{"cell": cell, "metric": "train_fwdbwd", "model": c.name, "status": "ok", "reason": "",
                               "work": training_flops(c), "work_unit": "FLOP", "unit_steps": 1,
                               "num_layers": c.num_layers, "tokens": c.tokens, **self._shape(c)} for c in self.configs])
        del subjects
        return rounds, cells

    def prefill(self, batch: int, prompt_len: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        from models.causal_lm import KVCache
        from profiler.advisor.measure import Subject

        cell = cell_name("prefill", batch, prompt_len)
        subjects, rows = [], []
        for c in self.configs:
            model = self.model(c)
            cache = KVCache.allocate(c, batch=batch, capacity=prompt_len, device=self.device, dtype=model.dtype)
            ids = self._prompt(c, batch, prompt_len)

            def step(model=model, ids=ids, cache=cache):
                with torch.no_grad():
                    return model.prefill(ids, cache)

            subjects.append(Subject(c.name, {"prefill": step}))
            rows.append({"cell": cell, "metric": "prefill", "batch": batch, "prompt_len": prompt_len, "model": c.name,
                         "status": "ok", "reason": "", "work": prefill_work(c, batch=batch, prompt_len=prompt_len),
                         "work_unit": "FLOP", "unit_steps": 1, "num_layers": c.num_layers, **self._shape(c)})
        rounds = self.time(subjects, cell)
        del subjects
        return rounds, pd.DataFrame(rows)

    def decode(self, batch: int, prompt_len: int, bandwidth: float | None, peak: float | None) \
            -> tuple[pd.DataFrame, pd.DataFrame, str]:
        from inference.graph_decoder import GreedyDecoder
        from profiler.advisor.measure import Subject

        cell = cell_name("decode", batch, prompt_len)
        new_tokens = self.spec.steps + 1  # the first token from prefill, then the timed steps
        capacity = prompt_len + new_tokens
        base = [{"cell": cell, "metric": "decode", "batch": batch, "prompt_len": prompt_len, "model": c.name,
                 "work_unit": "byte", "unit_steps": self.spec.steps, "num_layers": c.num_layers, **self._shape(c)}
                for c in self.configs]
        need = {c.name: kv_cache_bytes(c, batch=batch, capacity=capacity, dtype=self.dtype) for c in self.configs}
        transient = max(prefill_transient_bytes(c, batch=batch, prompt_len=prompt_len, dtype=self.dtype)
                        for c in self.configs)
        for c in self.configs:
            self.model(c)  # the weights are resident before the caches are planned
        mode, why = plan_caches(need, self.free_bytes(), transient, shared=self.spec.shared_cache)
        if mode == "skip":
            return pd.DataFrame(), pd.DataFrame([{**r, "status": "skipped", "reason": why} for r in base]), why
        decoders, subjects, rows, pool = {}, [], [], None
        try:
            for c in sorted(self.configs, key=lambda c: -need[c.name]):  # the largest first: its cache is the pool
                model = self.model(c)
                decoder = GreedyDecoder(model, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                                        banned_token=EOS)
                if mode == "shared":
                    if pool is None:
                        pool = decoder.cache
                    else:
                        decoder.cache = share_cache(decoder.cache, pool)
                decoder.capture(self._prompt(c, batch, prompt_len))
                check = graph_check(decoder)
                decoders[c.name] = decoder
                floors = decode_floors(c, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, dtype=self.dtype,
                                       tensor_parallel=1, bandwidth_tbps=bandwidth, peak_tflops=peak)
                row = next(r for r in base if r["model"] == c.name)
                rows.append({**row, "status": "ok" if check["check_passed"] else "mismatch",
                             "reason": "" if check["check_passed"] else "captured step differs from the plain-torch step",
                             "work": floors.weight_bytes + floors.kv_bytes, "floor_ms": floors.decode_floor_ms,
                             "compute_floor_ms": floors.compute_floor_ms, "weight_bytes": floors.weight_bytes,
                             "kv_bytes": floors.kv_bytes, "cache": "shared buffer" if mode == "shared" else "own",
                             "graph": decoder.graph is not None, "splits": decoder.splits.count, **check})

                def call(decoder=decoder, steps=self.spec.steps):
                    decoder.rewind()
                    for _ in range(steps):
                        decoder.step()

                subjects.append(Subject(c.name, {"decode": call}))
            order = {c.name: i for i, c in enumerate(self.configs)}
            subjects.sort(key=lambda s: order[s.name])  # the shuffle is seeded on the given order
            rounds = self.time(subjects, cell)
        finally:
            for decoder in decoders.values():
                decoder.release()
            del decoders, subjects, pool
            self.release()
        return rounds, pd.DataFrame(rows), mode

    # ---- helpers ---------------------------------------------------------------------------------
    def _prompt(self, cfg, batch: int, prompt_len: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.spec.seed * 1000003 + batch * 100003 + prompt_len)
        return torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen).to(self.device)

    @staticmethod
    def _shape(cfg) -> dict:
        from models import count_parameters

        return {"params": count_parameters(cfg).total, "heads": cfg.num_attention_heads, "head_dim": cfg.head_dim}


def run_rounds(spec: RoundsSpec, *, log: Callable[[str], None] = print) -> Path:
    """Every cell of `spec` not yet in spec.out, one phase each: training, the verdicts' decode cells, the
    prefill cells, then the sweep's other decode cells. Returns spec.out."""
    run = RoundsRun(spec, log)
    device = run.device
    done = run.done_cells()
    bandwidth = measure_copy_bandwidth(device, gigabytes=2.0 if device.type == "cuda" else 0.0625)["tbps"]
    peak = measure_matmul_peak(device, dtype=getattr(torch, run.dtype))["tflops"] if device.type == "cuda" else None
    run.release()
    run.record({"environment": environment(device), "spec": spec.to_dict(), "copy_bandwidth_tbps": bandwidth,
                "matmul_peak_tflops": peak, "bench_budget": run.budget,
                "training_bench_budget": TRAIN_GPU_BUDGET if device.type == "cuda" else run.budget,
                "inference_dtype": run.dtype,
                "interval": "see inference/carryover_rounds.py: bootstrap of the median per-round ratio",
                "decode_unit": f"one call = rewind + {spec.steps} CUDA-graph replays; unit = call / {spec.steps}"})
    phases: list[tuple[str, Callable[[], tuple]]] = []
    if spec.training:
        phases.append((cell_name("train_fwdbwd"), run.training))
    for b, p in dict.fromkeys(spec.decode):
        phases.append((cell_name("decode", b, p), lambda b=b, p=p: run.decode(b, p, bandwidth, peak)))
    for b, p in dict.fromkeys(spec.prefill):
        phases.append((cell_name("prefill", b, p), lambda b=b, p=p: run.prefill(b, p)))
    for b, p in dict.fromkeys(c for c in spec.sweep if c not in spec.decode):  # after every verdict cell
        phases.append((cell_name("decode", b, p), lambda b=b, p=p: run.decode(b, p, bandwidth, peak)))
    try:
        for cell, phase in phases:
            if cell in done:
                log(f"rounds: {cell} already in {run.out}; kept")
                continue
            elapsed = time.perf_counter() - run.started
            if spec.budget_s is not None and elapsed > spec.budget_s:
                log(f"rounds: {cell} not started: {elapsed:.0f} s spent of the {spec.budget_s:.0f} s budget")
                run.record({"phases": [{"cell": cell, "skipped": "budget"}]})
                continue
            t0 = time.perf_counter()
            try:
                out = phase()
            except Exception as exc:  # noqa: BLE001 - one cell failing (out of memory) must not lose the others
                from .engines.base import one_line

                why = one_line(exc)
                log(f"rounds: {cell} failed: {why}")
                run.append("cells.csv", pd.DataFrame([{"cell": cell, "metric": cell.split()[0], "model": c.name,
                                                       "status": "error", "reason": why} for c in run.configs],
                                                     columns=CELL_COLUMNS))
                run.record({"phases": [{"cell": cell, "error": why, "wall_s": time.perf_counter() - t0}]})
                run.release()
                continue
            rounds, cells = out[0], out[1]
            note = out[2] if len(out) > 2 else ""
            if len(rounds):
                run.append("rounds.csv", rounds)
            run.append("cells.csv", cells.reindex(columns=CELL_COLUMNS))
            wall = time.perf_counter() - t0
            run.record({"phases": [{"cell": cell, "wall_s": round(wall, 2), "cache": note, "rounds": spec.rounds}]})
            log(f"rounds: {cell} in {wall:.1f} s" + (f" ({note})" if note else "") + _summary(rounds, cells))
    finally:
        run.models.clear()
        run.release()
    return run.out


def _summary(rounds: pd.DataFrame, cells: pd.DataFrame) -> str:
    """: median MODEL x ms, ... of each shape's unit (layer fwd+bwd for training, one decode step)."""
    if rounds.empty:
        return ": " + "; ".join(sorted(set(cells["reason"].astype(str))))
    what = next(w for w in ("layer_forward_backward", "decode", "prefill") if w in set(rounds["what"]))
    per = rounds[rounds["what"] == what].groupby("candidate")["time_ms"].median()
    steps = cells.set_index("model")["unit_steps"].astype(float) if what == "decode" else None
    def unit(model: str, t: float) -> float:
        return t / float(steps.get(model.removesuffix(SELF_SUFFIX), 1)) if steps is not None else t

    return f": median {what} " + ", ".join(f"{m} {unit(m, t):.4g} ms" for m, t in per.items())

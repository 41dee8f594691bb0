"""Sweep the decode step's kernel configurations on a GPU: the split-KV attention kernel and the weight GEMMs.

Attention (per model's head dim, per (batch, prompt) row of the decode benchmark): the kernel as it was
(scripts/decode_attention_v0.py, the baseline) against models/decode_kernels.py's kernel over tiles (keys per
iteration, warps, pipeline stages) and splits (programs per SM). Each point times the attention kernel and
its join (split combine + bias/GELU, as in the step) on one layer's cache, replayed in a CUDA graph over
distinct caches (so the cache comes from HBM as it does in a step, where the layers' weights evict it
between steps), and checks the output against the plain-torch op.

GEMMs (per model's weight shapes: QKV, MLP-up, [out | down], logits; at M = 1, 2, 4, 8, 16, 64 rows):
cuBLAS (F.linear) against models/decode_gemm.py's kernels, the same way: a CUDA graph over distinct weight
copies, the output checked against a float32 matmul.

Kernels are compiled first in --jobs worker processes (they fill Triton's on-disk cache; the timing process
then loads them), the sweep runs in priority order (the benchmark's target rows first) and stops at
--deadline-s, saying what it skipped. Writes DIR/tune.json (environment, every point, the best per case) and
DIR/tune.csv; prints the best candidate per case against the baseline.

Usage: python scripts/tune_decode_kernels.py --out DIR [--models pythia-1b,pythia-2.8b] [--deadline-s 130]
       [--jobs 12] [--device cpu]   (cpu: tiny shapes through Triton's interpreter, to prove the wiring)
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models import decode_gemm as G  # noqa: E402
from models import decode_kernels as K  # noqa: E402
from models import load_config  # noqa: E402

NEW_TOKENS = 32  # the benchmark's: capacity = prompt + 32, the step timed at mid-decode
FLUSH_BYTES = 256 * 2**20
TARGET_BYTES = 200 * 2**20  # distinct copies per graph: well past the 60 MB L2
MAX_COPIES = 160


def _load_v0():
    spec = importlib.util.spec_from_file_location("decode_attention_v0", ROOT / "scripts" / "decode_attention_v0.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


V0 = _load_v0()


# ---- what is swept ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionCase:
    model: str
    heads: int
    head_dim: int
    rotary_dims: int
    ffn: int
    batch: int
    prompt: int

    @property
    def capacity(self) -> int:
        return self.prompt + NEW_TOKENS

    @property
    def pos(self) -> int:
        return self.prompt + NEW_TOKENS // 2

    @property
    def kv_bytes_read(self) -> int:  # keys and values of positions 0..pos, fp16
        return 2 * self.batch * self.heads * (self.pos + 1) * self.head_dim * 2

    @property
    def name(self) -> str:
        return f"{self.model} d={self.head_dim} b={self.batch} p={self.prompt}"


@dataclass(frozen=True)
class GemmCase:
    model: str
    what: str
    n: int
    k: int
    m: int

    @property
    def weight_bytes(self) -> int:
        return self.n * self.k * 2

    @property
    def name(self) -> str:
        return f"{self.model} {self.what} ({self.n}x{self.k}) M={self.m}"


@dataclass(frozen=True)
class AttentionCandidate:
    kernel: str  # "v0" (baseline), "lane" or "mma" (models/decode_kernels.py's two loops)
    tile: K.AttentionTile | None
    programs_per_sm: int

    @property
    def name(self) -> str:
        if self.kernel == "v0":
            return f"v0_pps{self.programs_per_sm}"
        return f"{self.tile.name}_pps{self.programs_per_sm}"


LANE_TILES = {  # by BLOCK_D: (keys per iteration, warps, stages)
    256: [(16, 4, 3), (16, 4, 2), (16, 4, 4), (16, 8, 3), (16, 8, 4), (32, 8, 2), (32, 8, 3), (32, 4, 3),
          (16, 4, 1)],
    128: [(32, 4, 3), (32, 4, 2), (32, 4, 4), (32, 8, 3), (64, 8, 2), (64, 8, 3), (64, 4, 3), (16, 4, 3),
          (32, 4, 1)],
    64: [(64, 4, 3), (32, 4, 3), (64, 8, 3)],
}
# the tensor-core loop; two stages where three leave fewer programs per SM (64 keys at d=128: 96 KB of shared memory)
MMA_TILES = [(16, 4, 3), (32, 4, 3), (32, 4, 4), (64, 4, 3), (32, 8, 3), (64, 8, 3), (64, 4, 2), (32, 4, 2)]
# the same loop with its cache tiles by TMA (tensor descriptors: the padding columns of d=80 read as zeros, no masks)
MMA_TMA_TILES = [(32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2)]
PROGRAMS_PER_SM = (2, 4, 8, 16)
GEMV_PLANS = [G.GemmPlan("gemv", 8, 512, 4, 3), G.GemmPlan("gemv", 8, 512, 4, 4), G.GemmPlan("gemv", 16, 256, 4, 4),
              G.GemmPlan("gemv", 16, 512, 4, 3), G.GemmPlan("gemv", 16, 512, 4, 4), G.GemmPlan("gemv", 32, 256, 8, 3)]
DOT_PLANS = [G.GemmPlan("dot", 16, 512, 4, 3), G.GemmPlan("dot", 16, 512, 4, 4), G.GemmPlan("dot", 32, 256, 4, 4),
             G.GemmPlan("dot", 64, 256, 4, 3), G.GemmPlan("dot", 32, 512, 4, 3), G.GemmPlan("dot", 16, 256, 4, 4)]
DOT64_PLANS = [G.GemmPlan("dot", 64, 128, 4, 3, block_m=64), G.GemmPlan("dot", 32, 256, 4, 3, block_m=64),
               G.GemmPlan("dot", 64, 64, 4, 4, block_m=64)]
# the weight's tile on the left of the product (wgmma's 64-row side, read from shared memory), by cp.async or TMA
WDOT_PLANS = [G.GemmPlan("wdot", 64, 128, 4, 4), G.GemmPlan("wdot", 64, 128, 4, 6), G.GemmPlan("wdot", 64, 256, 4, 3),
              G.GemmPlan("wdot", 64, 256, 4, 4), G.GemmPlan("wdot", 128, 128, 4, 4), G.GemmPlan("wdot", 128, 64, 4, 6),
              G.GemmPlan("wdot", 128, 128, 8, 4), G.GemmPlan("wdot", 64, 128, 4, 4, tma=True),
              G.GemmPlan("wdot", 64, 256, 4, 4, tma=True), G.GemmPlan("wdot", 128, 128, 4, 4, tma=True),
              G.GemmPlan("dot", 32, 256, 4, 4, tma=True), G.GemmPlan("dot", 64, 256, 4, 3, tma=True)]
WDOT64_PLANS = [G.GemmPlan("wdot", 64, 128, 4, 4, block_m=64), G.GemmPlan("wdot", 128, 128, 4, 4, block_m=64),
                G.GemmPlan("wdot", 128, 128, 8, 4, block_m=64), G.GemmPlan("wdot", 64, 128, 4, 4, split=2, block_m=64),
                G.GemmPlan("wdot", 64, 128, 4, 4, split=4, block_m=64)]
WDOT_SPLIT_BASES = [G.GemmPlan("wdot", 64, 128, 4, 4), G.GemmPlan("wdot", 128, 128, 4, 4),
                    G.GemmPlan("wdot", 64, 128, 4, 4, tma=True), G.GemmPlan("wdot", 128, 128, 4, 4, tma=True)]
SPLIT_BASES = [G.GemmPlan("gemv", 8, 512, 4, 4), G.GemmPlan("gemv", 16, 512, 4, 4), G.GemmPlan("gemv", 16, 256, 4, 4),
               G.GemmPlan("dot", 16, 512, 4, 4), G.GemmPlan("dot", 32, 256, 4, 4)]


SWEEP = {"tiles": None, "pps": PROGRAMS_PER_SM}  # --attention-tiles / --pps narrow the sweep


def attention_candidates(head_dim: int) -> list[AttentionCandidate]:
    block_d = K.block_d_of(head_dim)
    out = [AttentionCandidate("v0", None, V0.PROGRAMS_PER_SM)]
    tiles = SWEEP["tiles"] or ([K.AttentionTile(*t) for t in LANE_TILES[min(block_d, 256)]]
                               + [K.AttentionTile(*t, mma=True) for t in MMA_TILES]
                               + [K.AttentionTile(*t, mma=True, tma=True) for t in MMA_TMA_TILES])
    for tile, pps in itertools.product(tiles, SWEEP["pps"]):
        out.append(AttentionCandidate("mma" if tile.mma else "lane", tile, pps))
    return out


def gemm_candidates(case: GemmCase) -> list[G.GemmPlan | None]:
    plans: list[G.GemmPlan | None] = [None]  # cuBLAS
    pool = (GEMV_PLANS + DOT_PLANS) if case.m == 1 else DOT_PLANS if case.m <= 16 else DOT64_PLANS
    if case.n <= case.k:  # few output columns: split K too
        pool = pool + [G.GemmPlan(p.kind, p.block_n, p.block_k, p.warps, p.stages, split, p.block_m)
                       for p in SPLIT_BASES for split in (2, 4)
                       if case.m <= p.block_m and (p.kind == "dot" or case.m == 1)]
    if case.m <= 16:  # the weight's tile on the left; split K for every shape (QKV: 7680 / 64 = 120 programs)
        pool = pool + WDOT_PLANS + [replace(p, split=split) for p in WDOT_SPLIT_BASES
                                    for split in ((2, 4, 5) if case.n <= case.k else (2,))]
    elif case.m <= 64:
        pool = pool + WDOT64_PLANS
    plans += [p for p in pool if G.fits(p, case.m, case.n, case.k) and case.k % p.block_k == 0]
    return plans


def plan_name(plan: G.GemmPlan | None) -> str:
    return "cublas" if plan is None else plan.name


def model_shapes(name: str):
    cfg = load_config(name)
    h = cfg.hidden_size
    gemms = [("qkv", 3 * h, h), ("mlp_up", cfg.ffn_size, h), ("qkv_up", 3 * h + cfg.ffn_size, h),
             ("out_down", h, h + cfg.ffn_size), ("logits", cfg.embedding_rows, h)]
    return cfg, gemms


def build_cases(models: list[str], rows: list[tuple[int, int]], gemm_rows: list[int], cpu: bool,
                gemm_models: list[str] | None = None):
    """Attention and GEMM cases in priority order: the benchmark's target rows first."""
    attention, gemm_first, gemm_rest = [], [], []
    for name in models:
        cfg, gemms = model_shapes(name)
        for batch, prompt in rows:
            attention.append(AttentionCase(name, cfg.heads_per_gpu, cfg.head_dim, cfg.rotary_dims, cfg.ffn_size,
                                           batch, prompt))
        if gemm_models is not None and name not in gemm_models:
            continue
        for m in gemm_rows:
            for what, n, k in gemms:
                (gemm_first if m in (1, 16) else gemm_rest).append(GemmCase(name, what, n, k, m))
    if cpu:
        return attention[:2] + gemm_first[:2]
    first, rest = [c for c in attention if c.prompt == 2048 or c.batch == 1], \
        [c for c in attention if not (c.prompt == 2048 or c.batch == 1)]
    return first + gemm_first + rest + gemm_rest


# ---- the tensors of one case --------------------------------------------------------------------------
class AttentionInputs:
    def __init__(self, case: AttentionCase, device: torch.device, dtype: torch.dtype, copies: int,
                 reference: bool = True):
        from models.layer import rotary_tables

        gen = torch.Generator(device=device).manual_seed(case.batch * 1009 + case.prompt)
        b, a, d, t = case.batch, case.heads, case.head_dim, case.capacity
        self.case = case
        self.qkv = torch.randn(b, a * 3 * d, device=device, generator=gen).to(dtype)
        self.bias = (0.3 * torch.randn(a * 3 * d, device=device, generator=gen)).to(dtype)
        self.up = torch.randn(b, case.ffn, device=device, generator=gen).to(dtype)
        self.up_bias = (0.3 * torch.randn(case.ffn, device=device, generator=gen)).to(dtype)
        self.keys = [torch.randn(b, a, t, d, device=device, generator=gen).to(dtype) for _ in range(copies)]
        self.values = [torch.randn(b, a, t, d, device=device, generator=gen).to(dtype) for _ in range(copies)]
        cos, sin = rotary_tables(t, case.rotary_dims, 10000.0, device)
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        self.pos = torch.tensor(case.pos, device=device)
        self.scale = d ** -0.5
        self.out = torch.empty(b, a * d + case.ffn, device=device, dtype=dtype)
        if not reference:
            return
        k_ref, v_ref = self.keys[0].clone(), self.values[0].clone()
        self.expected = torch.cat((K.decode_attention_torch(self.qkv, self.bias, k_ref, v_ref, self.pos, self.cos,
                                                            self.sin, a, self.scale),
                                   torch.nn.functional.gelu(self.up + self.up_bias)), dim=1).float()
        del k_ref, v_ref

    def launcher(self, candidate: AttentionCandidate, copy: int, device: torch.device) -> tuple[Callable, object]:
        c = self.case
        if candidate.kernel == "v0":
            plan = V0.attention_splits(c.batch * c.heads, c.capacity, c.head_dim, device)
            run = V0._attention_kernels
        else:
            plan = K.attention_splits(c.batch * c.heads, c.capacity, c.head_dim, device, tile=candidate.tile,
                                      programs_per_sm=candidate.programs_per_sm)
            run = K._attention_kernels

        def launch():
            run(self.qkv, self.bias, self.keys[copy], self.values[copy], self.pos, self.cos, self.sin, self.out,
                heads=c.heads, scale=self.scale, splits=plan, up=self.up, up_bias=self.up_bias)
        return launch, plan

    def error(self) -> float:
        diff = (self.out.float() - self.expected).abs()
        return float((diff / (1e-3 + 1e-2 * self.expected.abs())).max())  # <= 1: within atol 1e-3 + rtol 1e-2


class GemmInputs:
    def __init__(self, case: GemmCase, device: torch.device, dtype: torch.dtype, copies: int,
                 reference: bool = True):
        gen = torch.Generator(device=device).manual_seed(case.n + case.k + case.m)
        self.case = case
        self.x = torch.randn(case.m, case.k, device=device, generator=gen).to(dtype)
        self.weights = [(0.02 * torch.randn(case.n, case.k, device=device, generator=gen)).to(dtype)
                        for _ in range(copies)]
        self.expected = self.x.float() @ self.weights[0].float().T if reference else None
        self.out: torch.Tensor | None = None

    def launcher(self, plan: G.GemmPlan | None, copy: int, device: torch.device) -> tuple[Callable, object]:
        def launch():
            self.out = G.linear(self.x, self.weights[copy], plan)
        return launch, plan

    def error(self) -> float:
        scale = self.expected.abs().max().clamp_min(1e-6)
        return float((self.out.float() - self.expected).abs().max() / scale) / 2e-3  # <= 1: within 0.2% of max


def copies_for(case, cpu: bool) -> int:
    if cpu:
        return 1
    size = (2 * case.batch * case.heads * case.capacity * case.head_dim * 2 if isinstance(case, AttentionCase)
            else case.weight_bytes)
    return max(3, min(MAX_COPIES, -(-TARGET_BYTES // size)))


def inputs_for(case, device, dtype, copies, reference: bool = True):
    return (AttentionInputs if isinstance(case, AttentionCase) else GemmInputs)(case, device, dtype, copies, reference)


def candidates_for(case, cpu: bool = False) -> list:
    found = attention_candidates(case.head_dim) if isinstance(case, AttentionCase) else gemm_candidates(case)
    return found[:3] if cpu else found  # the interpreter: the baseline and two more, to prove the wiring


def candidate_name(candidate) -> str:
    return candidate.name if isinstance(candidate, AttentionCandidate) else plan_name(candidate)


# ---- timing -----------------------------------------------------------------------------------------------
def time_launches(launches: list[Callable], device: torch.device, replays: int, flush: torch.Tensor | None
                  ) -> list[float]:
    """Microseconds per launch: the launches captured in one CUDA graph (distinct buffers each), replayed
    `replays` times with L2 flushed before each replay; on a CPU, the eager calls on the host clock."""
    if device.type != "cuda":
        samples = []
        for _ in range(replays):
            start = time.perf_counter()
            for launch in launches:
                launch()
            samples.append((time.perf_counter() - start) * 1e6 / len(launches))
        return samples
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for launch in launches:
            launch()
    samples = []
    for _ in range(replays):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / len(launches))
    del graph
    return samples


def measure(case, inputs, candidate, device, replays, flush) -> dict:
    point = {"case": case.name, "kind": "attention" if isinstance(case, AttentionCase) else "gemm",
             **asdict(case), "candidate": candidate_name(candidate)}
    if isinstance(candidate, G.GemmPlan):  # the plan's fields, so a bench can run the tuned table (G.tuned_table)
        point["plan"] = asdict(candidate)
    try:
        launch0, plan = inputs.launcher(candidate, 0, device)
        if isinstance(case, AttentionCase):
            inputs.out.fill_(float("nan"))  # a candidate that leaves a part unwritten must not pass on the last one's
        launch0()  # compile (or load from the cache), and the output checked
        if device.type == "cuda":
            torch.cuda.synchronize()
        point["error"] = inputs.error()
        point["passed"] = point["error"] <= 1.0
        if isinstance(case, AttentionCase):
            point.update(splits=plan.count, keys_per_split=plan.keys)
        launches = [inputs.launcher(candidate, i, device)[0] for i in range(len(getattr(inputs, "keys", None)
                                                                               or inputs.weights))]
        for launch in launches:
            launch()
        samples = time_launches(launches, device, replays, flush)
        point["us"] = statistics.median(samples)
        point["us_min"], point["us_max"] = min(samples), max(samples)
        moved = case.kv_bytes_read if isinstance(case, AttentionCase) else case.weight_bytes
        point["tbps"] = moved / (point["us"] * 1e-6) / 1e12
        point["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a config that does not fit (resources) is a result, not a crash
        point["status"] = "error"
        point["reason"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    return point


# ---- compiling ahead, in parallel -------------------------------------------------------------------------
def _compile_shard(args: tuple) -> int:
    """Worker: launch each candidate of the shard once on every case it applies to (fills Triton's disk
    cache). Returns how many launches ran."""
    models, rows, gemm_rows, gemm_models, shard, shards, device_type, sweep = args
    SWEEP.update(sweep)  # a spawned worker imports this module afresh
    device = torch.device(device_type)
    cpu = device.type != "cuda"
    ran = 0
    for case_index, case in enumerate(build_cases(models, rows, gemm_rows, cpu=cpu, gemm_models=gemm_models)):
        todo = [c for i, c in enumerate(candidates_for(case, cpu)) if (case_index * 7 + i) % shards == shard]
        todo = [c for c in todo if c is not None]
        if not todo:
            continue
        try:
            inputs = inputs_for(case, device, torch.float32 if cpu else torch.float16, 1, reference=False)
        except Exception:  # noqa: BLE001
            continue
        for candidate in todo:
            try:
                inputs.launcher(candidate, 0, device)[0]()
                ran += 1
            except Exception:  # noqa: BLE001 - the timing process records the error
                pass
        del inputs
        if not cpu:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return ran


def precompile(models, rows, gemm_rows, gemm_models, jobs: int, budget_s: float, device_type: str = "cuda") -> dict:
    import multiprocessing as mp

    started = time.perf_counter()
    context = mp.get_context("spawn")
    pool = context.Pool(jobs)
    try:
        shards = [(models, rows, gemm_rows, gemm_models, i, jobs, device_type, dict(SWEEP)) for i in range(jobs)]
        result = pool.map_async(_compile_shard, shards)
        launches = result.get(timeout=budget_s)
        status = f"{sum(launches)} launches in {jobs} workers"
    except Exception as exc:  # noqa: BLE001 - the timing loop compiles what is missing itself
        status = f"stopped: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        pool.terminate()
        pool.join()
    return {"status": status, "s": time.perf_counter() - started}


# ---- the sweep ------------------------------------------------------------------------------------------
def best_points(points: list[dict]) -> list[dict]:
    """Per case: the fastest passing candidate against the baseline (v0 / cuBLAS)."""
    out = []
    by_case: dict[str, list[dict]] = {}
    for p in points:
        by_case.setdefault(p["case"], []).append(p)
    for name, group in by_case.items():
        ok = [p for p in group if p["status"] == "ok" and p["passed"]]
        base = next((p for p in ok if p["candidate"] in ("cublas",) or p["candidate"].startswith("v0")), None)
        if not ok:
            out.append({"case": name, "best": None})
            continue
        best = min(ok, key=lambda p: p["us"])
        out.append({"case": name, "kind": best["kind"], "best": best["candidate"], "best_us": best["us"],
                    "best_tbps": best["tbps"], "baseline": base["candidate"] if base else None,
                    "baseline_us": base["us"] if base else None, "baseline_tbps": base["tbps"] if base else None,
                    "speedup": base["us"] / best["us"] if base else None,
                    "failed": sum(1 for p in group if p["status"] != "ok" or not p["passed"])})
    return out


def write(out: Path, record: dict) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(record, indent=1, default=str))
    pd.DataFrame(record["points"]).to_csv(out / "tune.csv", index=False)
    pd.DataFrame(record["best"]).to_csv(out / "best.csv", index=False)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="pythia-1b,pythia-2.8b,pythia-1.4b")
    p.add_argument("--rows", default="16x2048,1x2048,1x128,16x128,64x2048,1x4096",
                   help="attention rows, BATCHxPROMPT")
    p.add_argument("--gemm-models", default="pythia-1b,pythia-2.8b", help="models whose weight GEMMs are swept")
    p.add_argument("--gemm-rows", default="1,16,2,4,8,64", help="GEMM row counts M")
    p.add_argument("--attention-tiles", default="", help="only these tiles, KEYSxWARPSxSTAGES[xmma],... (default: the table)")
    p.add_argument("--pps", default="", help="only these programs per SM, e.g. 2,4")
    p.add_argument("--deadline-s", type=float, default=130.0)
    p.add_argument("--jobs", type=int, default=12, help="compile workers (0: compile in the timing loop)")
    p.add_argument("--replays", type=int, default=7)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.deadline_s
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.float16 if cuda else torch.float32
    models = [m for m in args.models.split(",") if m.strip()]
    rows = [tuple(int(x) for x in r.split("x")) for r in args.rows.split(",") if r.strip()]
    gemm_rows = [int(m) for m in args.gemm_rows.split(",") if m.strip()]
    gemm_models = [m for m in args.gemm_models.split(",") if m.strip()]
    if args.attention_tiles:
        SWEEP["tiles"] = [K.parse_tile(t) for t in args.attention_tiles.split(",")]
    if args.pps:
        SWEEP["pps"] = tuple(int(v) for v in args.pps.split(","))
    if not cuda:  # tiny shapes through the interpreter
        import tempfile

        tiny = Path(tempfile.mkdtemp(prefix="tune-")) / "tiny-tune.yaml"
        tiny.write_text("name: tiny-tune\nhidden_size: 256\nnum_attention_heads: 2\nnum_layers: 2\n"
                        "vocab_size: 512\nmax_position_embeddings: 256\n")
        models, rows, gemm_rows, gemm_models = [str(tiny)], [(1, 16), (2, 16)], [1, 2], [str(tiny)]
    from profiler.hardware import environment

    record = {"environment": environment(device), "git_sha": os.environ.get("CODESIGN_GIT_SHA"),
              "settings": {"models": models, "rows": rows, "gemm_rows": gemm_rows, "replays": args.replays,
                           "deadline_s": args.deadline_s, "new_tokens": NEW_TOKENS,
                           "timing": "CUDA graph of one launch per distinct buffer copy (>= 200 MB in all), "
                                     "replayed with L2 flushed before each replay; median per launch"},
              "points": [], "best": [], "skipped": []}
    print(f"{record['environment'].get('gpu_name') or 'cpu'}: tuning {models}, attention rows {rows}, "
          f"GEMM rows {gemm_rows}; deadline {args.deadline_s:.0f} s", flush=True)
    if args.jobs > 0:  # on a CPU only to prove the wiring (the interpreter keeps no cache)
        record["precompile"] = precompile(models, rows, gemm_rows, gemm_models, args.jobs,
                                          budget_s=0.45 * args.deadline_s, device_type=device.type)
        print(f"precompile: {record['precompile']['status']} ({record['precompile']['s']:.1f} s)", flush=True)
    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device=device) if cuda else None
    cases = build_cases(models, rows, gemm_rows, cpu=not cuda, gemm_models=gemm_models)
    for index, case in enumerate(cases):
        if time.perf_counter() > deadline:
            record["skipped"] = [c.name for c in cases[index:]]
            print(f"deadline: skipped {len(cases) - index} cases", flush=True)
            break
        try:
            inputs = inputs_for(case, device, dtype, copies_for(case, not cuda))
        except torch.cuda.OutOfMemoryError as exc:
            record["points"].append({"case": case.name, "status": "oom", "reason": str(exc)[:200]})
            continue
        candidates = candidates_for(case, cpu=not cuda)
        for candidate in candidates:
            if time.perf_counter() > deadline:
                break
            record["points"].append(measure(case, inputs, candidate, device, args.replays if cuda else 1, flush))
        del inputs
        if cuda:
            torch.cuda.empty_cache()
        record["best"] = best_points(record["points"])
        mine = next(b for b in record["best"] if b["case"] == case.name)
        if mine.get("best"):
            print(f"[{time.perf_counter() - started:5.1f}s] {case.name:<44} best {mine['best']:<28} "
                  f"{mine['best_us']:8.2f} us {mine['best_tbps']:.2f} TB/s | {mine['baseline']} "
                  f"{mine['baseline_us'] or 0:8.2f} us ({(mine['speedup'] or 0):.2f}x) failed {mine['failed']}",
                  flush=True)
        else:
            print(f"{case.name}: no candidate passed", flush=True)
        record["wall_s"] = time.perf_counter() - started
        write(args.out, record)
    record["wall_s"] = time.perf_counter() - started
    write(args.out, record)
    failed = [p for p in record["points"] if p.get("status") == "ok" and not p.get("passed")]
    print(f"{len(record['points'])} points, {len(failed)} failed their check, {time.perf_counter() - started:.0f} s; "
          f"wrote {args.out / 'tune.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

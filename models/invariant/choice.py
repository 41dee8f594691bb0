"""The fastest kernel that is proven invariant for a GEMM shape on this GPU, and why.

Candidates per (N, K, dtype, bias), all tried on random operands of up to 8192 rows:

- `cublaslt`: F.linear on cuBLASLt with split-K off (cublas.py). Not invariant by construction (its
  heuristic may still pick another kernel per M), so it is a candidate only where the bitwise probe passes;
- `triton`: the M-bucketed Triton kernel (matmul.py, tiles.py), invariant by construction, probed anyway;
- `hybrid`: Triton below a switch M and cuBLASLt from it. Both compute each element as one sequential fp32
  chain over K in wgmma steps, so they may well agree bit for bit; a candidate only where both are invariant
  and their products are bitwise equal at every probed M up to the largest switch;
- `triton-fixed`: one tile for every M (the kernel before issue 21), tried only when nothing else passes.

A candidate must also be accurate (within rounding of an fp32 product: probe.accuracy). Among those that
pass, the choice maximises the smallest invariant/cuBLAS throughput ratio over TIMING_TOKENS (the issue's
"no M below 0.85"), then its median; within CLOSE of the best, the simpler kernel wins. The verdict is cached
per GPU, torch / CUDA / cuBLASLt / Triton version and shape (verdict_cache.py).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from . import verdict_cache
from .cublas import blas_environment, cublas_linear, cublaslt_version, switch_problem
from .matmul import fixed_linear, invariant_linear
from .probe import ProbeVerdict, accuracy, agreement, probe, probe_tokens
from .tiles import fixed_plan, plan_for

KERNEL_NAMES = {"cublaslt": "cuBLASLt, split-K off", "triton": "Triton, tiles by M bucket",
                "hybrid": "Triton below the switch M, cuBLASLt from it", "triton-fixed": "Triton, one tile for every M"}
SIMPLICITY = ("cublaslt", "triton", "hybrid", "triton-fixed")  # preferred in this order when within CLOSE
CLOSE = 0.02
TIMING_TOKENS = (1, 16, 64, 256, 1024, 4096, 8192)
HYBRID_SWITCHES = (16, 64, 256, 1024)
FORCE_ENV = "CODESIGN_INVARIANT_KERNEL"  # triton | cublaslt | triton-fixed: skip the choice (recorded as forced)
RUNNERS: dict[str, Callable] = {"cublaslt": cublas_linear, "triton": invariant_linear, "triton-fixed": fixed_linear}


@dataclass(frozen=True)
class Candidate:
    kernel: str
    invariant: bool | None  # None: not tried, or failed to run (see note)
    accurate: bool | None = None
    error_ratio: float | None = None  # worst |error| / rounding bound (<= 1 is accurate)
    verdict: dict = field(default_factory=dict)  # ProbeVerdict.to_dict()
    timings_us: dict = field(default_factory=dict)  # M -> median time (us)
    note: str = ""

    @property
    def usable(self) -> bool:
        return bool(self.invariant) and bool(self.accurate)


@dataclass(frozen=True)
class KernelChoice:
    n: int
    k: int
    dtype: str
    bias: bool
    kernel: str  # a key of KERNEL_NAMES
    reason: str
    switch_m: int | None = None  # hybrid: cuBLASLt from this M on
    plan: str = ""  # the Triton plan (tiles by M bucket), where Triton runs
    proven: bool = False  # passed the bitwise probe on this GPU (False off a GPU, or when forced / nothing passed)
    sweep: str = ""  # the probe's M set: thorough / quick / custom
    tokens_digest: str = ""
    candidates: tuple[Candidate, ...] = ()
    default_us: dict = field(default_factory=dict)  # F.linear with cuBLAS's defaults, at TIMING_TOKENS
    agreement: dict = field(default_factory=dict)  # Triton vs cuBLASLt, bitwise (ProbeVerdict.to_dict())
    environment: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kernel == "hybrid":
            return f"hybrid (triton M<{self.switch_m}, cublaslt M>={self.switch_m})"
        return self.kernel

    def kernel_at(self, m: int) -> str:
        if self.kernel == "hybrid":
            return "cublaslt" if m >= (self.switch_m or 0) else "triton"
        return self.kernel

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "KernelChoice":
        data = dict(data)
        cands = []
        for c in data.pop("candidates", ()):
            c = dict(c)
            c["timings_us"] = {int(m): float(t) for m, t in c.get("timings_us", {}).items()}
            cands.append(Candidate(**c))
        data["default_us"] = {int(m): float(t) for m, t in data.get("default_us", {}).items()}
        return cls(candidates=tuple(cands), **data)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, choice: KernelChoice) -> torch.Tensor:
    """F.linear on the chosen kernel; a hybrid picks its side by the number of rows (tokens) of this call."""
    kernel = choice.kernel
    if kernel == "hybrid":
        kernel = choice.kernel_at(x.numel() // x.shape[-1] if x.shape[-1] else 0)
    return RUNNERS[kernel](x, weight, bias)


# ---- selection (pure) -------------------------------------------------------------------------------------
def ratios(default_us: dict, candidate_us: dict) -> dict[int, float]:
    """invariant/cuBLAS throughput at each M both were timed at (= cuBLAS time / candidate time)."""
    return {m: default_us[m] / candidate_us[m] for m in sorted(default_us) if m in candidate_us and candidate_us[m] > 0}


def _score(r: dict[int, float]) -> tuple[float, float]:
    return (min(r.values()), statistics.median(r.values())) if r else (0.0, 0.0)


def hybrid_times(triton_us: dict, cublaslt_us: dict, switch: int) -> dict[int, float]:
    return {m: (triton_us if m < switch else cublaslt_us)[m] for m in triton_us if m in cublaslt_us}


def select(candidates: dict[str, Candidate], default_us: dict, agree: bool) -> tuple[str, int | None, str]:
    """(kernel, switch M, reason) from probed and timed candidates; see the module docstring for the rule."""
    options: dict[str, tuple[tuple[float, float], int | None]] = {}
    for name in ("cublaslt", "triton", "triton-fixed"):
        cand = candidates.get(name)
        if cand is not None and cand.usable and cand.timings_us:
            options[name] = (_score(ratios(default_us, cand.timings_us)), None)
    if agree and "triton" in options and "cublaslt" in options:
        best = max(((_score(ratios(default_us, hybrid_times(candidates["triton"].timings_us,
                                                            candidates["cublaslt"].timings_us, s))), s)
                    for s in HYBRID_SWITCHES), key=lambda t: t[0])
        options["hybrid"] = best
    failures = "; ".join(f"{c.kernel}: {_failure(c)}" for c in candidates.values() if not c.usable)
    if not options:
        return "triton-fixed", None, f"no candidate passed the probe ({failures}); the one-tile Triton kernel, unproven"
    top = max(score for score, _ in options.values())
    kernel = next(name for name in SIMPLICITY if name in options and options[name][0][0] >= top[0] - CLOSE)
    (worst, median), switch = options[kernel]
    passed = candidates["triton" if kernel == "hybrid" else kernel]
    others = ", ".join(f"{name} min {score[0]:.2f}" for name, (score, _) in options.items() if name != kernel)
    how = (f"Triton and cuBLASLt agree bitwise at every probed M to {max(HYBRID_SWITCHES)}; Triton below M={switch}, "
           f"cuBLASLt from it" if kernel == "hybrid" else f"{KERNEL_NAMES[kernel]}: "
           + str(passed.verdict.get("summary") or _summary(passed)))
    reason = f"{how}; invariant/cuBLAS min {worst:.2f}, median {median:.2f}"
    reason += f" (other invariant options: {others})" if others else ""
    reason += f"; not usable: {failures}" if failures else ""
    return kernel, switch, reason


def _summary(c: Candidate) -> str:
    v = c.verdict
    if not v:
        return c.note or "not run"
    if v.get("invariant"):
        return f"bitwise invariant at all {v['m_checked']} M (1..{v['m_max']})"
    return f"not invariant at {v['n_failed']} of {v['m_checked']} M ({v['m_failed']})"


def _failure(c: Candidate) -> str:
    if c.invariant is None:
        return c.note or "not run"
    if not c.invariant:
        return _summary(c)
    return f"inaccurate ({c.error_ratio:.3g}x the rounding bound)"


# ---- the probe run on a GPU -------------------------------------------------------------------------------
_memo: dict[tuple, KernelChoice] = {}


def environment(device: torch.device) -> dict:
    """What a verdict depends on besides the shape (the cache key)."""
    import triton

    from .verdict_cache import CACHE_VERSION

    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cublaslt": cublaslt_version(),
            "triton": triton.__version__, "blas_env": blas_environment(), "cache_version": CACHE_VERSION}


def _bench_us(fn: Callable[[], object], device: torch.device) -> float:
    from profiler.timing import bench, summarize  # the project's one timing primitive (L2 flushed, events)

    return summarize(bench(fn, warmup_ms=5.0, rep_ms=20.0, min_reps=5, device=device)).median_ms * 1e3


def _tokens_digest(tokens) -> str:
    return verdict_cache.environment_digest({"tokens": list(tokens)})


def _cpu_choice(n: int, k: int, dtype: torch.dtype, bias: bool) -> KernelChoice:
    return KernelChoice(n, k, str(dtype).removeprefix("torch."), bias, "triton",
                        "off a GPU: the Triton kernel (in Triton's interpreter); cuBLAS is probed only on a GPU",
                        plan=plan_for(n, k, dtype).label)


def choose(n: int, k: int, dtype: torch.dtype, bias: bool, device: torch.device | str = "cuda", *,
           sweep: str = "thorough", tokens=None, max_m: int = 8192, refresh: bool = False, use_cache: bool = True,
           timer: Callable[[Callable[[], object], torch.device], float] | None = None,
           log: Callable[[str], None] | None = None) -> KernelChoice:
    """The kernel for F.linear with an (N, K) weight of `dtype` on `device`: cached in memory (the first choice
    of a process stands, whatever sweep later calls ask for) and on disk (a quick verdict answers only quick
    requests), probed (thorough: ~600 M, 1..max_m; quick: ~150) when neither has it or `refresh`."""
    device = torch.device(device)
    if device.type != "cuda":
        return _cpu_choice(n, k, dtype, bias)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    memo_key = (device.index, n, k, dtype, bias)  # a process keeps its first choice per shape (unless refresh)
    if not refresh and memo_key in _memo:
        return _memo[memo_key]
    tokens = tuple(tokens) if tokens is not None else probe_tokens(max_m, quick=sweep == "quick")
    sweep = sweep if tokens == probe_tokens(max_m, quick=sweep == "quick") else "custom"
    env = environment(device)
    key = f"{verdict_cache.shape_key(n, k, str(dtype).removeprefix('torch.'), bias)}-m{max(tokens)}"
    choice = None
    if use_cache and not refresh:
        record = verdict_cache.load(env, key)
        if record and (record.get("tokens_digest") == _tokens_digest(tokens)
                       or (record.get("sweep") == "thorough" and sweep in ("thorough", "quick"))):
            choice = KernelChoice.from_dict(record)
            if log:
                log(f"{key}: {choice.label} (cached: {verdict_cache.cache_file(env)})")
    if choice is None:
        choice = _probe_and_pick(n, k, dtype, bias, device, tokens, sweep, env, timer or _bench_us, log)
        if use_cache:
            verdict_cache.store(env, key, choice.to_dict())
    forced = os.environ.get(FORCE_ENV)
    if forced:
        if forced not in RUNNERS:
            raise ValueError(f"{FORCE_ENV}={forced}: one of {', '.join(RUNNERS)}")
        choice = replace(choice, kernel=forced, switch_m=None, proven=False,
                         reason=f"forced by {FORCE_ENV}={forced} (the probe said: {choice.reason})")
    _memo[memo_key] = choice
    return choice


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


@torch.inference_mode()
def _probe_and_pick(n, k, dtype, bias, device, tokens, sweep, env, timer, log) -> KernelChoice:
    gen = torch.Generator(device="cpu").manual_seed(n * 7919 + k)
    x = torch.randn(max(tokens), k, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device=device, dtype=dtype)
    b = (torch.randn(n, generator=gen) * 0.02).to(device=device, dtype=dtype) if bias else None
    fns = {name: (lambda a, run=run: run(a, w, b)) for name, run in RUNNERS.items()}
    name = verdict_cache.shape_key(n, k, str(dtype).removeprefix("torch."), bias)

    def tried(kernel: str) -> Candidate:
        try:
            verdict: ProbeVerdict = probe(fns[kernel], x, tokens)
            ok, error = accuracy(fns[kernel], x, w, b)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run here is a failed candidate, said why
            return Candidate(kernel, None, note=_first_line(exc))
        if log:
            log(f"{name}: {kernel} {verdict.summary()}{'' if ok else f', inaccurate ({error:.3g}x bound)'}")
        return Candidate(kernel, verdict.invariant, ok, error, {**verdict.to_dict(), "summary": verdict.summary()})

    cands = {"triton": tried("triton")}
    problem = switch_problem()
    cands["cublaslt"] = Candidate("cublaslt", None, note=problem) if problem else tried("cublaslt")
    agree = {}
    if cands["triton"].usable and cands["cublaslt"].usable:
        verdict = agreement(fns["triton"], fns["cublaslt"], x, [m for m in tokens if m <= max(HYBRID_SWITCHES)])
        agree = {**verdict.to_dict(), "summary": verdict.summary().replace("invariant", "equal")}
        if log:
            log(f"{name}: triton vs cublaslt {agree['summary']}")
    if not any(c.usable for c in cands.values()):
        cands["triton-fixed"] = tried("triton-fixed")
    timing_tokens = [m for m in TIMING_TOKENS if m <= x.shape[0]]
    default_us = {m: timer(lambda m=m: F.linear(x[:m], w, b), device) for m in timing_tokens}
    for kernel, cand in list(cands.items()):
        if cand.usable:
            cands[kernel] = replace(cand, timings_us={m: timer(lambda m=m: fns[kernel](x[:m]), device)
                                                      for m in timing_tokens})
    kernel, switch, reason = select(cands, default_us, bool(agree.get("invariant")))
    proven = kernel in cands and cands[kernel].usable or kernel == "hybrid"
    plan = (fixed_plan(n, k, dtype) if kernel == "triton-fixed" else plan_for(n, k, dtype, env["sms"])).label
    if log:
        log(f"{name}: chose {kernel}{f' (switch {switch})' if switch else ''}: {reason}")
    return KernelChoice(n, k, str(dtype).removeprefix("torch."), bias, kernel, reason, switch,
                        plan if kernel != "cublaslt" else "", proven, sweep, _tokens_digest(tokens),
                        tuple(cands.values()), default_us, agree, env)


def cached_choices() -> list[KernelChoice]:
    """Every choice made in this process (for reports)."""
    return list(_memo.values())

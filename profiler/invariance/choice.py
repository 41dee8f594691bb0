"""The fastest kernel proven batch-invariant for a weight GEMM shape on this GPU, and why (issue 21).

Candidates per (N, K, dtype, bias), run on random operands of up to 8192 rows (models/invariant/choice.py
names them): cuBLAS with its defaults, cuBLASLt with split-K off, the M-bucketed Triton kernel, and any
two of them split at a switch M. None is trusted without the bitwise probe on this GPU:

1. one cross-probe over the probe's M sample (probe_tokens: every M to 256, then denser near tile and
   bucket edges): each kernel's rows against its own largest product and against the others' largest
   products (models.invariant.probe.cross_probe). A single kernel is an option where its own rows never
   differ; a hybrid (low below the switch, high from it) where low's rows are high's at every probed M
   below the switch (and alone) and high's rows are its own at every probed M from it;
2. every option used is accurate (within rounding of an fp32 product: probe.accuracy), and each kernel is
   timed at TIMING_TOKENS as a CUDA-graph replay (graph_timing.py: GPU time, no launch overhead);
3. the pick maximises the smallest invariant/cuBLAS throughput ratio over TIMING_TOKENS (the issue's "no M
   below 0.85"), then its median; within CLOSE of the best, the simpler option wins (SIMPLICITY). Where
   cuBLAS's default passes, it is the pick: nothing is faster than the baseline itself;
4. the pick is then proven on its own: the path as it will run (hybrid switch included) probed at every M
   from 1 to `every_m_to` (default 8192) and the sample beyond. A pick that fails gives way to the next
   option, which is proven in turn; `sweep` says which M the proof covered.

The verdict is cached per GPU, torch / CUDA / cuBLASLt / Triton version, BLAS settings and shape
(models/invariant/verdict_cache.py). This is the profiler floor's half of the choice; make_batch_invariant
is handed `choose` and applies what it returns.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from typing import Callable

import torch

from models.invariant import verdict_cache
from models.invariant.choice import KERNEL_NAMES, RUNNERS, Candidate, KernelChoice, unprobed_choice
from models.invariant.cublas import blas_environment, blas_flags, cublaslt_version, switch_problem
from models.invariant.probe import CrossVerdict, accuracy, cross_probe, probe, probe_tokens
from models.invariant.tiles import fixed_plan, plan_for

from .graph_timing import graph_us

PROBED = ("default", "cublaslt", "triton")
DECODE_CANDIDATES = PROBED + ("skinny",)  # the decode engine's few rows: its weight-streaming kernel too
SIMPLICITY = ("default", "cublaslt", "triton", "skinny", "hybrid", "triton-fixed")  # preferred in this order when within CLOSE
CLOSE = 0.02
TIMING_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SWITCHES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # each in TIMING_TOKENS: both sides are timed
EVERY_M_TO = 8192
PROOF_TRIES = 3
FORCE_ENV = "CODESIGN_INVARIANT_KERNEL"  # one of RUNNERS: skip the choice (recorded as forced)
OFF_GPU = "off a GPU: the Triton kernel (in Triton's interpreter); cuBLAS is probed only on a GPU"
RULE = 2  # the selection rule's version (in the tokens digest: a cached verdict of another rule is not reused)


@dataclass(frozen=True)
class Option:
    """One way to run the GEMM over all M: ((first M, kernel), ...) from M = 1 up; one segment is one kernel."""

    segments: tuple[tuple[int, str], ...]

    @classmethod
    def single(cls, kernel: str) -> "Option":
        return cls(((1, kernel),))

    @property
    def kernel(self) -> str:
        return self.segments[0][1] if len(self.segments) == 1 else "hybrid"

    @property
    def reference(self) -> str:
        """The kernel of the largest M: every segment's rows must be its largest product's."""
        return self.segments[-1][1]

    def at(self, m: int) -> str:
        name = self.segments[0][1]
        for start, kernel in self.segments:
            if m >= start:
                name = kernel
        return name

    def ranges(self) -> list[tuple[int, int | None, str]]:
        ends = [start for start, _ in self.segments[1:]] + [None]
        return [(start, end, kernel) for (start, kernel), end in zip(self.segments, ends)]

    @property
    def label(self) -> str:
        return "<".join(f"{kernel}" if start == 1 else f"{start}<={kernel}" for start, kernel in self.segments)


# ---- selection (pure) -------------------------------------------------------------------------------------
def ratios(default_us: dict, candidate_us: dict) -> dict[int, float]:
    """invariant/cuBLAS throughput at each M both were timed at (= cuBLAS time / candidate time)."""
    return {m: default_us[m] / candidate_us[m] for m in sorted(default_us) if m in candidate_us and candidate_us[m] > 0}


def score(r: dict[int, float]) -> tuple[float, float]:
    return (min(r.values()), statistics.median(r.values())) if r else (0.0, 0.0)


def valid(option: Option, cross: CrossVerdict) -> bool:
    """Every segment's rows are the reference's largest product's at every probed M of its range (and the
    first segment's rows alone too: a row alone runs at M = 1); a range with no probed M in it is unproven."""
    ref = option.reference
    return all(any(start <= m and (end is None or m < end) for m in cross.tokens)
               and cross.consistent(kernel, ref, start, end) for start, end, kernel in option.ranges())


def options(cross: CrossVerdict, usable, switches=SWITCHES) -> list[Option]:
    """Every single kernel, and every chain of two or three (switching at `switches`) that the cross-probe
    found invariant; only kernels in `usable` (accurate, and run)."""
    names = [name for name in cross.own if name in set(usable)]
    switches = [s for s in switches if s < cross.tokens[-1]]
    out = [Option.single(name) for name in names]
    for a in names:
        for b in names:
            if a == b:
                continue
            out += [Option(((1, a), (s, b))) for s in switches]
            for c in names:
                if c != b:
                    out += [Option(((1, a), (s1, b), (s2, c))) for i, s1 in enumerate(switches) for s2 in switches[i + 1:]]
    return [o for o in out if valid(o, cross)]


def option_us(option: Option, timings: dict[str, dict[int, float]]) -> dict[int, float]:
    ms = set.intersection(*(set(timings.get(kernel, {})) for _, kernel in option.segments))
    return {m: timings[option.at(m)][m] for m in sorted(ms)}


def rank(opts: list[Option], timings: dict[str, dict[int, float]], default_us: dict) -> list[tuple[Option, tuple]]:
    """Options best first: the simplest within CLOSE of the best smallest ratio (one kernel before two,
    two before three; then the higher score), then the rest by score."""
    scored = [(o, score(ratios(default_us, option_us(o, timings)))) for o in opts]
    scored = [(o, s) for o, s in scored if s != (0.0, 0.0)]
    if not scored:
        return []
    scored.sort(key=lambda t: t[1], reverse=True)
    top = scored[0][1][0]
    close = [t for t in scored if t[1][0] >= top - CLOSE]
    pick = min(close, key=lambda t: (SIMPLICITY.index(t[0].kernel), len(t[0].segments), -t[1][0], -t[1][1]))
    return [pick] + [t for t in scored if t is not pick]


def _describe(option: Option, cross: CrossVerdict) -> str:
    if option.kernel != "hybrid":
        return f"{KERNEL_NAMES[option.kernel]}: {cross.own[option.kernel].summary()} (probe)"
    parts = [f"{kernel} for M {start}..{end - 1 if end else 'up'}" for start, end, kernel in option.ranges()]
    return (", ".join(parts) + f" (each one's rows bitwise {option.reference}'s largest product's at every probed "
            "M of its range)")


# ---- the probe run on a GPU -------------------------------------------------------------------------------
_memo: dict[tuple, KernelChoice] = {}


def environment(device: torch.device) -> dict:
    """What a verdict depends on besides the shape (the cache key)."""
    import triton

    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cublaslt": cublaslt_version(),
            "triton": triton.__version__, "blas_env": blas_environment(), "blas_flags": blas_flags(),
            "cache_version": verdict_cache.CACHE_VERSION}


def _bench_us(fn: Callable[[], object], device: torch.device) -> float:
    return graph_us(fn, device)


def proof_tokens(tokens, every_m_to: int) -> tuple[int, ...]:
    top = max(tokens)
    return tuple(sorted(set(range(1, min(every_m_to, top) + 1)) | set(tokens)))


def sweep_words(tokens, every_m_to: int) -> str:
    proof = proof_tokens(tokens, every_m_to)
    dense = min(every_m_to, max(tokens))
    beyond = len(proof) - dense
    return f"every M 1..{dense}" + (f" and {beyond} sampled M to {max(tokens)}" if beyond else "")


def _tokens_digest(tokens, every_m_to: int, candidates: tuple[str, ...] = PROBED) -> str:
    key = {"tokens": list(tokens), "every_m_to": every_m_to, "rule": RULE}
    if tuple(candidates) != PROBED:  # the digests of verdicts cached before the choice took candidates stay valid
        key["candidates"] = list(candidates)
    return verdict_cache.environment_digest(key)


def choose(n: int, k: int, dtype: torch.dtype, bias: bool, device: torch.device | str = "cuda", *,
           sweep: str = "thorough", tokens=None, max_m: int = 8192, every_m_to: int = EVERY_M_TO,
           refresh: bool = False, use_cache: bool = True,
           timer: Callable[[Callable[[], object], torch.device], float] | None = None,
           log: Callable[[str], None] | None = None, candidates: tuple[str, ...] = PROBED) -> KernelChoice:
    """The kernel for F.linear with an (N, K) weight of `dtype` on `device`: cached in memory (the first choice
    of a process stands) and on disk (a verdict answers requests of the same M sample and proof range only),
    probed when neither has it or `refresh` (see the module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return unprobed_choice(n, k, dtype, bias, OFF_GPU)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    memo_key = (device.index, n, k, dtype, bias, tuple(candidates), max_m, every_m_to)
    if not refresh and memo_key in _memo:
        return _memo[memo_key]
    tokens = tuple(tokens) if tokens is not None else probe_tokens(max_m, quick=sweep == "quick")
    sweep = sweep if tokens == probe_tokens(max_m, quick=sweep == "quick") else "custom"
    env = environment(device)
    key = f"{verdict_cache.shape_key(n, k, str(dtype).removeprefix('torch.'), bias)}-m{max(tokens)}"
    choice = None
    if use_cache and not refresh:
        record = verdict_cache.load(env, key)
        if record and record.get("tokens_digest") == _tokens_digest(tokens, every_m_to, candidates):
            choice = KernelChoice.from_dict(record)
            if log:
                log(f"{key}: {choice.label} (cached: {verdict_cache.cache_file(env)})")
    if choice is None:
        choice = _probe_and_pick(n, k, dtype, bias, device, tokens, sweep, env, timer or _bench_us, log, every_m_to,
                                 candidates)
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


def _run(option: Option, fns: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    if option.kernel != "hybrid":
        return fns[option.kernel]
    return lambda a: fns[option.at(a.shape[0])](a)


@torch.inference_mode()
def _probe_and_pick(n, k, dtype, bias, device, tokens, sweep, env, timer, log, every_m_to=EVERY_M_TO,
                    candidates: tuple[str, ...] = PROBED) -> KernelChoice:
    gen = torch.Generator(device="cpu").manual_seed(n * 7919 + k)
    x = torch.randn(max(tokens), k, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device=device, dtype=dtype)
    b = (torch.randn(n, generator=gen) * 0.02).to(device=device, dtype=dtype) if bias else None
    fns = {name: (lambda a, run=run: run(a, w, b)) for name, run in RUNNERS.items()}
    name = verdict_cache.shape_key(n, k, str(dtype).removeprefix("torch."), bias)
    say = log or (lambda s: None)

    notes, runnable = {}, {}
    problem = switch_problem()
    for kernel in candidates:
        if kernel == "cublaslt" and problem:
            notes[kernel] = problem
            continue
        try:
            fns[kernel](x[:1])
            ok, error = accuracy(fns[kernel], x, w, b)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run here is a failed candidate, said why
            notes[kernel] = _first_line(exc)
            continue
        runnable[kernel] = (ok, error)
    cross = cross_probe({kname: fns[kname] for kname in runnable}, x, tokens)
    for kname, verdict in cross.own.items():
        ok, error = runnable[kname]
        say(f"{name}: {kname} {verdict.summary()}{'' if ok else f', inaccurate ({error:.3g}x bound)'}")
    accurate = [kname for kname, (ok, _) in runnable.items() if ok]
    opts = options(cross, accurate)
    timing_tokens = [m for m in TIMING_TOKENS if m <= x.shape[0]]
    timed = {kernel for o in opts for _, kernel in o.segments} | {"default"} & set(runnable)
    timings = {kname: {m: timer(lambda m=m, f=fns[kname]: f(x[:m]), device) for m in timing_tokens}
               for kname in sorted(timed)}
    default_us = timings.get("default") or {m: timer(lambda m=m: fns["default"](x[:m]), device) for m in timing_tokens}
    ranked = rank(opts, timings, default_us)
    cands = tuple(Candidate(kname, cross.own[kname].invariant if kname in cross.own else None,
                            runnable[kname][0] if kname in runnable else None,
                            runnable[kname][1] if kname in runnable else None,
                            {**cross.own[kname].to_dict(), "summary": cross.own[kname].summary()}
                            if kname in cross.own else {}, timings.get(kname, {}), notes.get(kname, ""))
                  for kname in candidates)
    failures = "; ".join(f"{c.kernel}: {c.note or c.verdict.get('summary', '')}" for c in cands if not c.usable)
    proof_m = proof_tokens(tokens, every_m_to)
    words = sweep_words(tokens, every_m_to)
    refused = []
    for option, (worst, median) in ranked[:PROOF_TRIES]:
        verdict = probe(_run(option, fns), x, proof_m)
        say(f"{name}: proof of {option.label} at {words}: {verdict.summary()}")
        if not verdict.invariant:
            refused.append(f"{option.label} failed its proof ({verdict.summary()})")
            continue
        others = ", ".join(f"{o.label} min {s[0]:.2f}" for o, s in ranked[:6] if o != option)
        reason = (f"{_describe(option, cross)}; proof: {verdict.summary()}; invariant/cuBLAS min {worst:.2f}, "
                  f"median {median:.2f} (CUDA-graph timed)" + (f" (other options: {others})" if others else "")
                  + (f"; {'; '.join(refused)}" if refused else "") + (f"; not invariant alone: {failures}" if failures else ""))
        agree, hybrid = {}, option.kernel == "hybrid"
        if hybrid:
            agree = {"summary": "; ".join(f"{kernel} M {start}..{end - 1 if end else 'up'}" for start, end, kernel
                                          in option.ranges()) + f": rows bitwise {option.reference}'s", "invariant": True}
        uses_triton = any(kernel == "triton" for _, kernel in option.segments)
        say(f"{name}: chose {option.label}: min {worst:.2f}, median {median:.2f}")
        return KernelChoice(n, k, str(dtype).removeprefix("torch."), bias, option.kernel, reason,
                            option.segments[1][0] if hybrid else None,
                            plan_for(n, k, dtype, env["sms"]).label if uses_triton else "", True, words,
                            _tokens_digest(tokens, every_m_to, candidates), cands, default_us, agree, env,
                            option.segments[0][1] if hybrid else "triton", option.reference if hybrid else "cublaslt",
                            verdict.to_dict(), option.segments if hybrid else ())
    # nothing passed (or nothing ran): the one-tile Triton kernel, probed as well, proven only if it passes
    verdict = probe(fns["triton-fixed"], x, proof_m)
    reason = (f"no option passed ({'; '.join(refused) or 'none found'}; {failures}); the one-tile Triton kernel: "
              f"{verdict.summary()}")
    return KernelChoice(n, k, str(dtype).removeprefix("torch."), bias, "triton-fixed", reason, None,
                        fixed_plan(n, k, dtype).label, verdict.invariant, words,
                        _tokens_digest(tokens, every_m_to, candidates),
                        cands, default_us, {}, env, proof=verdict.to_dict())


def cached_choices() -> list[KernelChoice]:
    """Every choice made in this process (for reports)."""
    return list(_memo.values())

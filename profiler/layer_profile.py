"""Library API of the layer profiler: profile one config, return DataFrames and a summary dict.

    from models import load_config
    from profiler.layer_profile import ProfileOptions, profile_layer
    result = profile_layer(load_config("pythia-1b"), ProfileOptions(), out_dir=Path("runs/x"))
    result.components  # one row per pass x component x role
    result.checks      # the self-checks; any failed one is a number not to trust

The protocol is profiler/protocol.py's (one definition, one power state): build the layer and its floor calls
(random weights) as units; name every unit's kernels from one eager trace; capture rounds of every unit in
shuffled orders as CUDA graphs; warm up back to back until stable; then, per attempt, the timed rounds (CUDA
events: the round graphs, and the eager layer step) and the traced rounds (components and floor from the same
rounds); judge the comparisons and measure again, at most protocol.MAX_ATTEMPTS times, where one fails. The
ceiling is the fastest GEMM measured under the same definition. FLOPs are counted on the real ops.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from models import ModelConfig, layer_flops
from models.config import safe_name
from models.layer import build_layer, random_input, torch_dtype

from . import checks as C
from . import protocol as P
from .attribution import component_summary, coverage, unattributed_kernels
from .explain import explain_activities, join_depth
from .floor import floor_calls
from .flops import CONVENTIONS, check_rows, component_flops, counted_flops, flops_for, ran_fused_attention
from .perfetto import annotate_trace
from .shape_check import attention_ops, check_shapes
from .telemetry import compare_phases, window_clocks
from .timing import POLICY, TimingStats, summarize
from .trace import device_properties

MODES = ("forward", "forward+backward")
CLOCK_COMPARED_PHASES = ("latency", "trace")  # the timed and the traced rounds of the final attempt
# the checks that compare two measurements: where one fails, both kinds of round are measured again
RE_MEASURED = ("trace_stable", "trace_vs_events", "clock_phases", "in_layer_vs_alone")


@dataclass(frozen=True)
class ProfileOptions:
    """`active_steps`: the fewest interleaved rounds of each kind per attempt (on a GPU more, up to
    protocol.MAX_ROUNDS_PER_ATTEMPT, until the attempt spans protocol.ATTEMPT_WINDOW_MS, and then more until the
    timed rounds' mean is precise: protocol.Extension); the trace warm-up bounds are in windows;
    `bench_warmup_ms`: the least warm-up time off a GPU (on one, protocol.WARMUP_MIN_MS)."""
    mode: str = "forward"
    active_steps: int = 10
    include_logits: bool = False
    flush_l2: bool = True
    measure_floor: bool = True
    bench_warmup_ms: float = 50.0
    bench_rep_ms: float = 300.0
    min_trace_warmup_steps: int = 2
    max_trace_warmup_steps: int = 40

    @property
    def backward(self) -> bool:
        return self.mode == "forward+backward"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerProfile:
    config: ModelConfig
    components: pd.DataFrame
    summary: dict = field(default_factory=dict)
    trace_path: Path | None = None
    checks: list[C.Check] = field(default_factory=list)


def make_step(model: torch.nn.Module, x: torch.Tensor, backward: bool):
    """One training-layer step: forward (no autograd graph) or forward + backward with a random gradient."""
    if not backward:
        def step():
            with torch.no_grad():
                return model(x)
        return step
    with torch.no_grad():
        grad_out = torch.randn_like(model(x))
    params = list(model.parameters())

    def step():
        for p in params:  # fresh gradients, as after an optimizer step
            p.grad = None
        x.grad = None
        model(x).backward(grad_out)
    return step


def _latency_dict(stats: TimingStats, warmup=None) -> dict:
    out = {"median": stats.median_ms * 1e3, "p10": stats.p10_ms * 1e3, "p90": stats.p90_ms * 1e3,
           "repeats": stats.repeats, "outliers": stats.outliers}
    if warmup is not None:
        out["warmup"] = warmup.to_dict()
    return out


def join_flops(summary: pd.DataFrame, cfg: ModelConfig, options: ProfileOptions, fused: bool) -> pd.DataFrame:
    """FLOPs per row in the executed convention (per-component TFLOP/s) and the model convention."""
    kw = dict(include_logits=options.include_logits, backward=options.backward)
    executed = component_flops(cfg, convention="executed", fused_backward=fused, **kw)
    model = component_flops(cfg, convention="model", **kw)
    keys = list(zip(summary["pass"], summary["component"], summary["role"]))
    summary["flops"] = [flops_for(executed, *k) for k in keys]
    summary["flops_model"] = [flops_for(model, *k) for k in keys]
    summary["tflops"] = summary["flops"] / (summary["time_us"] * 1e-6) / 1e12
    summary.loc[summary["flops"] == 0, "tflops"] = float("nan")
    return summary


def join_floor(summary: pd.DataFrame, alone: dict) -> pd.DataFrame:
    keys = list(zip(summary["pass"], summary["component"], summary["role"]))
    for column, attr in (("alone_us", "median_ms"), ("alone_p10_us", "p10_ms"), ("alone_p90_us", "p90_ms")):
        summary[column] = [getattr(alone[k], attr) * 1e3 if k in alone else float("nan") for k in keys]
    return C.vs_alone_rows(summary)


def floor_times(activities: pd.DataFrame, components: list[str]) -> dict[tuple[str, str, str], TimingStats]:
    """(pass, component, role) -> each call alone's kernel time per replay, from its floor unit's replays."""
    alone = {}
    for component in components:
        acts = P.unit_activities(activities, f"{P.FLOOR_PREFIX}{component}")
        mine = acts[acts["component"] == component]
        if mine.empty:
            continue
        steps = sorted(acts["step"].unique())
        per = mine.groupby(["pass", "role", "step"])["dur_us"].sum().unstack("step", fill_value=0.0)
        per = per.reindex(columns=steps, fill_value=0.0)
        alone.update({(p, component, r): summarize((row / 1e3).tolist()) for (p, r), row in per.iterrows()})
    return alone


def attempt_line(attempt: Attempt) -> str:
    """What an attempt measured, for the progress line: its rounds, their span, why it stopped there."""
    timed, span = attempt.timed, attempt.traced.span_ms
    line = f"attempt {attempt.number}: {len(attempt.traced.windows)} rounds of each kind"
    line += f" over {span / 1e3:.1f} s" if span else ""
    if timed.stopped:
        error = f", mean known to {100 * timed.relative_error:.2f}%" if timed.relative_error is not None else ""
        line += f", stopped: {STOP_REASONS.get(timed.stopped, timed.stopped)}{error}"
    return line + (f"; failed: {', '.join(attempt.failed)}" if attempt.failed else "")


STOP_REASONS = {"least": "precise at the least rounds", "precise": "precise", "window": "window bound reached",
                "rounds": "round bound reached"}


def extension_policy() -> dict:
    """The bounds an attempt's rounds were extended within (protocol.Extension), for the record."""
    e = P.Extension()
    return {"target_relative_error_pct": 100 * e.target, "batch_ms": e.batch_ms, "min_batches": e.min_batches,
            "max_window_ms": e.window_ms, "most_rounds": e.most}


def launch_bound(latency_us: float, graph_us: float | None, busy_us: float) -> tuple[bool, str]:
    """Eager latency over the CUDA-graph replay taken in the same rounds (else over the kernel time)."""
    if graph_us:
        ratio = latency_us / graph_us
        return ratio > C.LAUNCH_BOUND_RATIO, f"eager {latency_us:.1f} us vs CUDA graph {graph_us:.1f} us ({ratio:.2f}x)"
    ratio = latency_us / busy_us if busy_us else float("inf")
    return ratio > C.LAUNCH_BOUND_RATIO, f"latency {latency_us:.1f} us vs kernel time {busy_us:.1f} us ({ratio:.2f}x)"


@dataclass
class Attempt:
    """One measurement of the timed and the traced rounds, and what was derived from it."""
    number: int
    timed: P.TimedRounds
    traced: P.TracedRounds
    latency: TimingStats  # the eager layer step (host included)
    graph: TimingStats | None  # the layer's instances inside the round graphs (GPU span)
    layer: pd.DataFrame  # the layer unit's kernels
    totals: pd.DataFrame  # per layer instance: busy, span
    summary: pd.DataFrame  # components (and the floor joined)
    alone: dict
    clock: dict | None
    checks: list[C.Check]

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.failed and c.name in RE_MEASURED]


def _clock(telemetry, cfg: ModelConfig, attempt: int) -> dict | None:
    if telemetry is None or not telemetry.available:
        return None
    prefix = f"{cfg.name}:a{attempt}:"
    phases = {k[len(prefix):]: v for k, v in telemetry.summary()["phases"].items() if k.startswith(prefix)}
    phases.update({k.split(":", 1)[1]: v for k, v in telemetry.summary()["phases"].items()
                   if k == f"{cfg.name}:warmup"})
    compared = {k: v for k, v in phases.items() if k in CLOCK_COMPARED_PHASES}
    return {"phases": phases, "comparison": compare_phases(compared)}


def rounds_vs_trace(timed: P.TimedRounds, traced: P.TracedRounds) -> tuple[float, float, float]:
    """(traced span, timed events, allowance from both spreads) of the round graphs, pooled over plans as
    ratios to each plan's own median (plans hold the same work in other orders)."""
    spans, events, spread = [], [], 0.0
    for traced_us, timed_ms in zip(traced.round_spans_us, timed.round_ms):
        if traced_us and timed_ms:
            a, b = summarize([x / 1e3 for x in traced_us]), summarize(timed_ms)
            spans.append(a.median_ms * 1e3)
            events.append(b.median_ms * 1e3)
            spread = max(spread, a.spread + b.spread)
    return (sum(spans), sum(events), spread) if spans else (0.0, 0.0, 0.0)


def measure_attempt(number: int, rounds: P.Rounds, units: dict, maps: P.KernelMaps, *, cfg: ModelConfig,
                    options: ProfileOptions, device: torch.device, trace_dir: Path, telemetry,
                    n_rounds: int | None = None) -> Attempt:
    on_gpu = device.type == "cuda"

    def tag(name: str | None) -> None:  # telemetry phase of this attempt
        if telemetry is not None:
            telemetry.set_phase(f"{cfg.name}:a{number}:{name}" if name else None)

    timed, traced = P.interleaved_rounds(rounds, maps, units[P.LAYER], device=device, trace_dir=trace_dir,
                                         worker_name=safe_name(cfg.name), n=n_rounds or options.active_steps, phase=tag,
                                         extension=P.Extension() if on_gpu else None)
    latency = summarize(timed.eager)
    layer = P.unit_activities(traced.activities, P.LAYER)
    totals = P.replay_totals(layer)
    graph = summarize((totals["span_us"] / 1e3).tolist()) if on_gpu and len(totals) else None
    summary = component_summary(layer)
    floor_components = [u[len(P.FLOOR_PREFIX):] for u in units if u.startswith(P.FLOOR_PREFIX)]
    alone = floor_times(traced.activities, floor_components) if options.measure_floor else {}
    if options.measure_floor:
        summary = join_floor(summary, alone)
        if not on_gpu:  # reported, not judged: see the skipped check below
            summary["vs_alone_check"] = None
    else:
        for column in ("alone_us", "alone_p10_us", "alone_p90_us", "vs_alone_pct", "vs_alone_allowed_pct", "vs_alone_check"):
            summary[column] = None
    clock = _clock(telemetry, cfg, number)
    round_clocks = window_clocks(telemetry.samples, traced.windows) \
        if telemetry is not None and telemetry.available and traced.windows else []
    if clock is not None:
        clock["per_round_mhz"] = round_clocks
    ordered = totals.sort_values("step")
    step_clocks = [round_clocks[int(r)] if int(r) < len(round_clocks) else None for r in ordered["round"]] \
        if round_clocks else None
    checks = []
    if on_gpu:
        span_us, events_us, spread = rounds_vs_trace(timed, traced)
        checks = [
            C.trace_drift_check(ordered["busy_us"].tolist(), step_clocks),
            C.trace_vs_events_check(span_us, events_us, spread, what="round graphs'"),
            C.clock_check(clock["comparison"] if clock else None,
                          reason=telemetry.reason if telemetry is not None else "telemetry off (--no-telemetry)"),
            C.vs_alone_check(summary) if options.measure_floor else
            C.Check("in_layer_vs_alone", C.SKIPPED, "", "floor not measured (--no-floor)"),
        ]
    return Attempt(number, timed, traced, latency, graph, layer, totals, summary, alone, clock, checks)


def profile_layer(cfg: ModelConfig, options: ProfileOptions, *, out_dir: Path, device: torch.device,
                  peak_tflops: float | None = None, progress=None, telemetry=None,
                  environment: dict | None = None, seed: int = 0) -> LayerProfile:
    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    dtype = torch_dtype(cfg.dtype)
    on_gpu = device.type == "cuda"
    model = build_layer(cfg, include_logits=options.include_logits, device=device, dtype=dtype).train()
    x = random_input(cfg, device=device, dtype=dtype, requires_grad=options.backward)
    step = make_step(model, x, options.backward)
    calls = floor_calls(cfg, include_logits=options.include_logits, backward=options.backward, device=device,
                        dtype=dtype) if options.measure_floor else {}
    units = P.build_units(step, {c: call.step for c, call in calls.items()})
    maps = P.kernel_maps(units, device=device, flush_l2=options.flush_l2)
    shape_rows = check_shapes(maps.host, cfg, include_logits=options.include_logits, dtype=cfg.dtype)
    ran = attention_ops(maps.host, cfg)
    reps = P.repetitions(units, device, options.flush_l2)
    note("capturing rounds of the layer and the floor's calls in CUDA graphs" if on_gpu else
         "building rounds of the layer and the floor's calls (eager: no CUDA graphs on a CPU)")
    rounds, eager_reason = P.build_rounds(units, reps, device=device, flush_l2=options.flush_l2, seed=seed)
    note("warming up back to back until stable")
    with (telemetry.phase(f"{cfg.name}:warmup") if telemetry is not None else nullcontext()):
        warmup = P.warm_up(rounds, device=device, min_windows=max(2, options.min_trace_warmup_steps),
                           max_windows=max(2, options.min_trace_warmup_steps, options.max_trace_warmup_steps),
                           min_ms=P.WARMUP_MIN_MS if on_gpu else options.bench_warmup_ms)
    # on a GPU the attempt's rounds span protocol.ATTEMPT_WINDOW_MS (the warm-up's last window gives a round's time)
    n_rounds = P.rounds_per_attempt(warmup.window_medians_ms[-1] if on_gpu and warmup.window_medians_ms else None,
                                    options.active_steps)
    attempts: list[Attempt] = []
    scratch = Path(out_dir) / "tb" / f".{safe_name(cfg.name)}.attempts"
    for number in range(1, P.MAX_ATTEMPTS + 1):
        if number > 1 and on_gpu:  # the last attempt's trace export left the GPU idle for seconds: warm up again
            with (telemetry.phase(f"{cfg.name}:a{number}:rewarm") if telemetry is not None else nullcontext()):
                P.warm_up(rounds, device=device, min_windows=2, max_windows=options.max_trace_warmup_steps)
        note(f"interleaved rounds, attempt {number}: timed (CUDA events) and traced" if on_gpu else
             "interleaved rounds: host clock and trace")
        attempts.append(measure_attempt(number, rounds, units, maps, cfg=cfg, options=options, device=device,
                                        trace_dir=scratch / str(number), telemetry=telemetry, n_rounds=n_rounds))
        note(attempt_line(attempts[-1]))
        if not attempts[-1].failed or not on_gpu:
            break
    final = attempts[-1]
    trace_dir = Path(out_dir) / "tb"
    trace_path = trace_dir / final.traced.trace_path.name
    shutil.move(str(final.traced.trace_path), trace_path)
    shutil.rmtree(scratch, ignore_errors=True)
    del step, model, x, units, calls, rounds
    if on_gpu:
        torch.cuda.empty_cache()

    eager, graph, summary, totals = final.latency, final.graph, final.summary, final.totals
    # The latency is the layer's GPU time back to back (its instances' span in the round graphs: the sustained
    # definition, and the same rounds as its kernel times and its floor); the eager step, host included, is
    # reported beside it and decides launch-boundness. Without graphs (a CPU, a failed capture) the latency is
    # the eager step.
    latency = graph if graph else eager
    latency_us, eager_us = latency.median_ms * 1e3, eager.median_ms * 1e3
    graph_us = graph.median_ms * 1e3 if graph else None
    busy_us = float(totals["busy_us"].median()) if len(totals) else 0.0
    span_us = float(totals["span_us"].median()) if len(totals) else 0.0
    # Idle cannot be negative. The gaps between the graph's own kernels: each instance's span holds its kernels,
    # which do not overlap on one stream, so span >= busy instance by instance and so in the median. The host's
    # launch gaps: the eager step's excess over its instances in the round graphs (an eager step cannot run its
    # kernels faster than the same kernels back to back; a median below that is noise); they are part of the
    # latency only where the latency is the eager step.
    graph_gaps_us = span_us - busy_us if on_gpu else 0.0
    launch_gaps_us = max(0.0, eager_us - (graph_us if graph_us else busy_us))
    idle_us = graph_gaps_us if graph else graph_gaps_us + launch_gaps_us
    rounds_span, rounds_events, _ = rounds_vs_trace(final.timed, final.traced)
    summary["share_of_latency"] = summary["time_us"] / latency_us
    floor_total_us = sum(t.median_ms for t in final.alone.values()) * 1e3 if final.alone else None

    counted = counted_flops(cfg, include_logits=options.include_logits, backward=options.backward, device=device,
                            dtype=dtype)
    summary = join_flops(summary, cfg, options, ran_fused_attention(counted))
    best_gemm = summary.loc[summary["kind"] == "gemm", "tflops"].max() if (summary["kind"] == "gemm").any() else None
    if final.alone and on_gpu:
        floor_rows = summary.dropna(subset=["alone_us"])
        floor_best = (floor_rows["flops"] / (floor_rows["alone_us"] * 1e-6) / 1e12)[floor_rows["kind"] == "gemm"].max()
    else:
        floor_best = None
    sustained = peak_tflops
    candidates = {k: v for k, v in (("8192^3 GEMM back to back before the run", sustained),
                                    ("fastest in-layer GEMM", best_gemm), ("fastest GEMM alone", floor_best))
                  if v is not None and v == v} if on_gpu else {}
    if candidates:  # the ceiling is the fastest GEMM measured under the same definition: nothing exceeds it
        source = max(candidates, key=candidates.get)
        peak_tflops = candidates[source]
    else:
        source = "measured before the run" if peak_tflops else None
    if peak_tflops:
        summary["pct_of_peak"] = 100 * summary["tflops"] / peak_tflops
    env = {**(environment or {}), **({"measured_peak_tflops": peak_tflops} if peak_tflops else {})}
    # why: tiles, waves and rooflines per GEMM, bytes and bandwidth per non-GEMM step, two-signal detection
    depth = explain_activities(final.layer, components=summary, cfg=cfg, device_properties=device_properties(trace_path),
                               environment=env, include_logits=options.include_logits, ceiling_tflops=peak_tflops)
    summary = join_depth(summary, depth)
    annotate_trace(trace_path, final.traced.activities)  # component names as slices on the GPU timeline (Perfetto)

    is_launch_bound, launch_note = launch_bound(eager_us, graph_us, busy_us) if on_gpu else \
        (False, "not judged on a CPU (an op's host time is not a kernel's)")
    cover = coverage(final.layer) if len(final.layer) else 0.0
    checks = [
        C.shapes_check(shape_rows),
        C.flops_check(check_rows(cfg, counted, include_logits=options.include_logits, backward=options.backward)),
        C.coverage_check(cover, unattributed_kernels(final.layer)),
    ]
    if on_gpu:
        checks += [C.graph_kernels_check(final.traced.mismatches, eager_reason),
                   C.warmup_check({"rounds": warmup.to_dict()}), *final.checks]
    else:  # a shared CPU's host clock proves the wiring, not the timings these checks judge
        checks += [C.Check(name, C.SKIPPED, "", "CPU run: host-clock timings prove the wiring, not the numbers")
                   for name in ("graph_kernels", "trace_stable", "warmup_stable", "trace_vs_events", "clock_phases",
                                "in_layer_vs_alone")]
    model_flops = layer_flops(cfg, include_logits=options.include_logits, backward=options.backward)
    graph_dict = _latency_dict(graph) if graph else ({"error": eager_reason} if on_gpu else None)
    result_summary = {
        "name": cfg.name,
        "status": "ok",
        "config": cfg.to_dict(),
        "mode": options.mode,
        "timing_policy": POLICY,
        "flop_conventions": {"layer_tflops": CONVENTIONS["model"], "components.tflops": CONVENTIONS["executed"],
                             "flops_check": CONVENTIONS["counted"]},
        "latency_us": {**_latency_dict(latency, warmup),
                       "basis": "graph" if graph else "eager"},  # graph: the GPU span back to back; eager: host included
        "latency_eager_us": _latency_dict(eager),
        "latency_graph_us": graph_dict,
        "latency_profiled_us": span_us,
        "busy_us": busy_us,
        "idle_us": idle_us,
        "graph_gaps_us": graph_gaps_us,
        "launch_gaps_us": launch_gaps_us,
        "launch_bound": is_launch_bound,
        "launch_bound_evidence": launch_note,
        "trace_vs_events_pct": 100 * (rounds_span / rounds_events - 1) if rounds_events else None,
        "trace_warmup": {"warmup_steps": len(warmup.window_medians_ms), "stable": warmup.stable,
                         "warmup_step_ms": warmup.to_dict()["window_medians_ms"], "active_steps": n_rounds,
                         "unit": "round"},
        "rounds": {"per_attempt": n_rounds, "least_per_attempt": options.active_steps,
                   "window_ms": P.ATTEMPT_WINDOW_MS if on_gpu else None,
                   "extension": extension_policy() if on_gpu else None,
                   "instances_per_round": reps, "plans": P.PLANS, "attempts": [
            {"attempt": a.number, "failed": a.failed,
             "rounds": len(a.traced.windows),
             "stopped": a.timed.stopped,
             "relative_error_pct": None if a.timed.relative_error is None else round(100 * a.timed.relative_error, 3),
             "eager_us": round(a.latency.median_ms * 1e3, 3),
             "graph_us": round(a.graph.median_ms * 1e3, 3) if a.graph else None,
             "span_ms": None if a.traced.span_ms is None else round(a.traced.span_ms, 1)} for a in attempts],
            "eager_rounds": eager_reason},
        "coverage": cover,
        "unattributed_kernels": unattributed_kernels(final.layer),
        "left_out_of_window": maps.left_out,
        "gemm_share": float(summary.loc[summary["kind"] == "gemm", "share_of_kernel_time"].sum()),
        "gemm_share_of_latency": float(summary.loc[summary["kind"] == "gemm", "time_us"].sum() / latency_us),
        "layer_flops": model_flops,
        "layer_tflops": model_flops / (latency_us * 1e-6) / 1e12,
        "attention_ops": ran or counted["attention_ops"],
        "floor_us": floor_total_us,
        "floor_ratio": latency_us / floor_total_us if floor_total_us else None,
        "steps_traced": int(len(totals)),
        "trace": str(trace_path.relative_to(out_dir)) if trace_path.is_relative_to(out_dir) else str(trace_path),
        "clock": final.clock,
        "ceiling": {"tflops": peak_tflops, "source": source, "sustained_8192_tflops": sustained},
        "gemm_flags": depth.flags.to_dict("records"),
        "gemm_signal_disagreements": depth.disagreements.to_dict("records"),
        "copy_bandwidth": {"tbps": depth.copy_tbps, "source": depth.copy_source},
        "checks": [c.to_dict() for c in checks],
        "checks_summary": C.summarize_checks(checks),
    }
    if peak_tflops:
        result_summary["layer_pct_of_peak"] = 100 * result_summary["layer_tflops"] / peak_tflops
    summary.insert(0, "config", cfg.name)
    return LayerProfile(config=cfg, components=summary, summary=result_summary, trace_path=trace_path, checks=checks)

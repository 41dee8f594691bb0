"""Library API of the layer profiler: profile one config, return DataFrames and a summary dict.

    from models import load_config
    from profiler.layer_profile import ProfileOptions, profile_layer
    result = profile_layer(load_config("pythia-1b"), ProfileOptions(), out_dir=Path("runs/x"))
    result.components  # one row per pass x component x role
    result.checks      # the self-checks; any failed one is a number not to trust

Order of work per config, back to back under one cache and clock policy (profiler.timing.POLICY): build
the layer (random weights); replay it from a CUDA graph; time it with CUDA events (no profiler); trace it
right after (so the traced span and the event latency are taken in the same state); attribute the trace;
check the traced shapes against the config; time the floor (GEMMs and attention alone, like for like);
count FLOPs on the real ops; join everything into one components table and run the checks.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from models import ModelConfig, layer_flops
from models.layer import build_layer, random_input, torch_dtype

from . import checks as C
from .attribution import attribute_detailed, component_summary, coverage, host_context, \
    step_totals, unattributed_kernels
from .flops import CONVENTIONS, check_rows, component_flops, counted_flops, flops_for, ran_fused_attention
from .explain import explain_activities, join_depth
from .floor import floor_times
from .perfetto import annotate_trace
from .shape_check import attention_ops, check_shapes
from .telemetry import compare_phases
from .timing import POLICY, L2Flusher, bench_detailed, summarize
from .trace import device_properties, load_trace, record_trace

MODES = ("forward", "forward+backward")
TRACE_MIN_WARMUP_MS = 200.0  # traced warm-up runs at least this long: a power-capped GPU settles slowly
CLOCK_COMPARED_PHASES = ("latency", "trace", "floor")


@dataclass(frozen=True)
class ProfileOptions:
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


def _latency_dict(stats, warmup=None) -> dict:
    out = {"median": stats.median_ms * 1e3, "p10": stats.p10_ms * 1e3, "p90": stats.p90_ms * 1e3,
           "repeats": stats.repeats, "outliers": stats.outliers}
    if warmup is not None:
        out["warmup"] = warmup.to_dict()
    return out


def cuda_graph_latency(step, options: ProfileOptions, device: torch.device) -> dict | None:
    """The forward step replayed from a CUDA graph: GPU time without the host's launch overhead.

    A small layer can be launch-bound (the GPU waits for Python); the gap between this and the eager
    latency is that overhead. Returns {"error": ...} if the step cannot be captured."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        result = bench_detailed(graph.replay, warmup_ms=options.bench_warmup_ms, rep_ms=options.bench_rep_ms,
                                flush_l2=options.flush_l2, device=device)
        return _latency_dict(summarize(result.samples_ms), result.warmup)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # capture is best effort
        return {"error": str(exc).splitlines()[0][:200]}


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


def launch_bound(latency_us: float, graph: dict | None, busy_us: float) -> tuple[bool, str]:
    """Eager latency over the CUDA-graph replay (forward), else over the summed kernel time (backward)."""
    if graph and graph.get("median"):
        ratio = latency_us / graph["median"]
        return ratio > C.LAUNCH_BOUND_RATIO, f"eager {latency_us:.1f} us vs CUDA graph {graph['median']:.1f} us ({ratio:.2f}x)"
    ratio = latency_us / busy_us if busy_us else float("inf")
    return ratio > C.LAUNCH_BOUND_RATIO, f"latency {latency_us:.1f} us vs kernel time {busy_us:.1f} us ({ratio:.2f}x)"


def profile_layer(cfg: ModelConfig, options: ProfileOptions, *, out_dir: Path, device: torch.device,
                  peak_tflops: float | None = None, progress=None, telemetry=None,
                  environment: dict | None = None) -> LayerProfile:
    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    def phase(name: str):
        return telemetry.phase(f"{cfg.name}:{name}") if telemetry is not None else nullcontext()

    def measuring(name: str):  # called when a phase's warm-up ends: its samples from then on are compared
        return (lambda: telemetry.set_phase(f"{cfg.name}:{name}")) if telemetry is not None else None

    dtype = torch_dtype(cfg.dtype)
    on_gpu = device.type == "cuda"
    model = build_layer(cfg, include_logits=options.include_logits, device=device, dtype=dtype).train()
    x = random_input(cfg, device=device, dtype=dtype, requires_grad=options.backward)
    step = make_step(model, x, options.backward)
    flush = L2Flusher(device) if (on_gpu and options.flush_l2) else None

    graph_latency = None
    if on_gpu and not options.backward:
        note("replaying a CUDA graph")
        with phase("graph"):
            graph_latency = cuda_graph_latency(step, options, device)

    note("timing with CUDA events (no profiler)" if on_gpu else "timing with the host clock (no profiler)")
    with phase("latency-warmup"):
        result = bench_detailed(step, warmup_ms=options.bench_warmup_ms, rep_ms=options.bench_rep_ms,
                                flush_l2=options.flush_l2, device=device, on_measure=measuring("latency"))
    latency = summarize(result.samples_ms)
    latency_us = latency.median_ms * 1e3
    warmups = {"latency": result.warmup.to_dict()}
    if graph_latency and "warmup" in graph_latency:
        warmups["graph"] = graph_latency["warmup"]

    note("tracing")
    with phase("trace-warmup"):
        trace_path, schedule = record_trace(step, trace_dir=out_dir / "tb", worker_name=cfg.name,
                                            active_steps=options.active_steps, device=device, flush=flush,
                                            min_warmup=options.min_trace_warmup_steps,
                                            max_warmup=options.max_trace_warmup_steps,
                                            min_warmup_ms=TRACE_MIN_WARMUP_MS, on_recording=measuring("trace"),
                                            on_recorded=measuring("trace-export"))
    warmups["trace"] = {"stable": schedule.stable, "steps": schedule.recording_from}
    events = load_trace(trace_path)
    activities, left_out = attribute_detailed(events)
    annotate_trace(trace_path, activities)  # component names as slices on the GPU timeline (Perfetto)
    host = host_context(events)
    shape_rows = check_shapes(host, cfg, include_logits=options.include_logits, dtype=cfg.dtype)
    ran = attention_ops(host, cfg)
    summary = component_summary(activities)
    totals = step_totals(activities)
    busy_us, span_us = float(totals["busy_us"].median()), float(totals["span_us"].median())
    summary["share_of_latency"] = summary["time_us"] / latency_us

    floor_total_us = None
    if options.measure_floor:
        note("timing the floor (GEMMs and attention alone, each after a layer step: like for like)")
        with phase("floor-warmup"):  # only each call alone's recorded steps are tagged "floor"
            alone, floor_warmups = floor_times(cfg, include_logits=options.include_logits, backward=options.backward,
                                               device=device, dtype=dtype, conditioner=step if on_gpu else None,
                                               steps=options.active_steps, on_recording=measuring("floor"),
                                               on_recorded=measuring("floor-warmup"),
                                               min_warmup_ms=TRACE_MIN_WARMUP_MS if on_gpu else 0.0,
                                               max_warmup=options.max_trace_warmup_steps)
        summary = join_floor(summary, alone)
        if not on_gpu:  # reported, not judged: see the skipped check below
            summary["vs_alone_check"] = None
        floor_total_us = sum(t.median_ms for t in alone.values()) * 1e3
        warmups.update({f"floor:{k}": {"stable": v["stable"], "steps": v["warmup_steps"]} for k, v in floor_warmups.items()})
    else:
        for column in ("alone_us", "alone_p10_us", "alone_p90_us", "vs_alone_pct", "vs_alone_allowed_pct", "vs_alone_check"):
            summary[column] = None
    del step, model, x
    if on_gpu:
        torch.cuda.empty_cache()

    counted = counted_flops(cfg, include_logits=options.include_logits, backward=options.backward, device=device,
                            dtype=dtype)
    summary = join_flops(summary, cfg, options, ran_fused_attention(counted))
    if peak_tflops:
        summary["pct_of_peak"] = 100 * summary["tflops"] / peak_tflops
    # why: tiles, waves and rooflines per GEMM, bytes and bandwidth per non-GEMM step, two-signal detection
    depth = explain_activities(activities, components=summary, cfg=cfg, device_properties=device_properties(trace_path),
                               environment={**(environment or {}), **({"measured_peak_tflops": peak_tflops}
                                                                      if peak_tflops else {})},
                               include_logits=options.include_logits)
    summary = join_depth(summary, depth)

    is_launch_bound, launch_note = launch_bound(latency_us, graph_latency, busy_us) if on_gpu else \
        (False, "not judged on a CPU (an op's host time is not a kernel's)")
    cover = coverage(activities)
    clock = None
    if telemetry is not None and telemetry.available:
        phases = {k.split(":", 1)[1]: v for k, v in telemetry.summary()["phases"].items() if k.startswith(f"{cfg.name}:")}
        # the phases that measure the same layer in the same state; the CUDA-graph replay (no launch gaps)
        # and the warm-ups run at another duty cycle by design, and are recorded, not compared
        compared = {k: v for k, v in phases.items() if k in CLOCK_COMPARED_PHASES}
        clock = {"phases": phases, "comparison": compare_phases(compared)}
    checks = [
        C.shapes_check(shape_rows),
        C.flops_check(check_rows(cfg, counted, include_logits=options.include_logits, backward=options.backward)),
        C.coverage_check(cover, unattributed_kernels(activities)),
    ]
    if on_gpu:
        checks += [
            C.trace_drift_check(totals.sort_values("step")["busy_us"].tolist()),
            C.warmup_check(warmups),
            C.trace_vs_events_check(span_us, latency_us, is_launch_bound, latency.spread),
            C.clock_check(clock["comparison"] if clock else None,
                          reason=telemetry.reason if telemetry is not None else "telemetry off (--no-telemetry)"),
            C.vs_alone_check(summary) if options.measure_floor else
            C.Check("in_layer_vs_alone", C.SKIPPED, "", "floor not measured (--no-floor)"),
        ]
    else:  # a shared CPU's host clock proves the wiring, not the timings these checks judge
        checks += [C.Check(name, C.SKIPPED, "", "CPU run: host-clock timings prove the wiring, not the numbers")
                   for name in ("trace_stable", "warmup_stable", "trace_vs_events", "clock_phases", "in_layer_vs_alone")]
    model_flops = layer_flops(cfg, include_logits=options.include_logits, backward=options.backward)
    result_summary = {
        "name": cfg.name,
        "status": "ok",
        "config": cfg.to_dict(),
        "mode": options.mode,
        "timing_policy": POLICY,
        "flop_conventions": {"layer_tflops": CONVENTIONS["model"], "components.tflops": CONVENTIONS["executed"],
                             "flops_check": CONVENTIONS["counted"]},
        "latency_us": _latency_dict(latency, result.warmup),
        "latency_graph_us": graph_latency,
        "latency_profiled_us": span_us,
        "busy_us": busy_us,
        "idle_us": latency_us - busy_us,
        "launch_bound": is_launch_bound,
        "launch_bound_evidence": launch_note,
        "trace_vs_events_pct": 100 * (span_us / latency_us - 1),
        "trace_warmup": schedule.to_dict(),
        "coverage": cover,
        "unattributed_kernels": unattributed_kernels(activities),
        "left_out_of_window": left_out,
        "gemm_share": float(summary.loc[summary["kind"] == "gemm", "share_of_kernel_time"].sum()),
        "gemm_share_of_latency": float(summary.loc[summary["kind"] == "gemm", "time_us"].sum() / latency_us),
        "layer_flops": model_flops,
        "layer_tflops": model_flops / (latency_us * 1e-6) / 1e12,
        "attention_ops": ran or counted["attention_ops"],
        "floor_us": floor_total_us,
        "floor_ratio": latency_us / floor_total_us if floor_total_us else None,
        "steps_traced": int(len(totals)),
        "trace": str(trace_path.relative_to(out_dir)) if trace_path.is_relative_to(out_dir) else str(trace_path),
        "clock": clock,
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

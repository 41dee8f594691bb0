"""Library API of the layer profiler: profile one config, return DataFrames and a summary dict.

    from models import load_config
    from profiler.layer_profile import ProfileOptions, profile_layer
    result = profile_layer(load_config("pythia-1b"), ProfileOptions(), out_dir=Path("runs/x"))
    result.components  # one row per pass x component

Order of work per config: build the layer (random weights), time it without the profiler (CUDA events),
trace it, attribute the trace, check the traced shapes against the config, time the floor (GEMMs and
attention alone), then join everything into one components table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from models import ModelConfig, layer_flops
from models.layer import build_layer, random_input, torch_dtype

from .attribution import attribute, component_summary, coverage, host_context, step_totals
from .flops import check_flops, component_flops
from .floor import floor_times
from .shape_check import check_shapes
from .timing import L2Flusher, bench, summarize
from .trace import load_trace, record_trace

MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class ProfileOptions:
    mode: str = "forward"
    warmup_steps: int = 3
    active_steps: int = 10
    include_logits: bool = False
    flush_l2: bool = True
    measure_floor: bool = True
    bench_warmup_ms: float = 50.0
    bench_rep_ms: float = 300.0

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
        for p in params:  # fresh gradients, as after an optimizer step: no accumulation kernels
            p.grad = None
        x.grad = None
        model(x).backward(grad_out)
    return step


def cuda_graph_latency(step, options: ProfileOptions, device: torch.device) -> dict | None:
    """The forward step replayed from a CUDA graph: GPU time without the host's launch overhead.

    A small layer can be launch-bound (the GPU waits for Python); the gap between this and the eager
    latency is that overhead. Returns None with no error if the step cannot be captured."""
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
        stats = summarize(bench(graph.replay, warmup_ms=options.bench_warmup_ms, rep_ms=options.bench_rep_ms,
                                flush_l2=options.flush_l2, device=device))
        return {"median": stats.median_ms * 1e3, "p10": stats.p10_ms * 1e3, "p90": stats.p90_ms * 1e3,
                "repeats": stats.repeats}
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # capture is best effort
        return {"error": str(exc).splitlines()[0][:200]}


def profile_layer(cfg: ModelConfig, options: ProfileOptions, *, out_dir: Path, device: torch.device,
                  peak_tflops: float | None = None, progress=None) -> LayerProfile:
    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    dtype = torch_dtype(cfg.dtype)
    model = build_layer(cfg, include_logits=options.include_logits, device=device, dtype=dtype).train()
    x = random_input(cfg, device=device, dtype=dtype, requires_grad=options.backward)
    step = make_step(model, x, options.backward)
    flush = L2Flusher(device) if (device.type == "cuda" and options.flush_l2) else None

    note("timing without the profiler")
    latency = summarize(bench(step, warmup_ms=options.bench_warmup_ms, rep_ms=options.bench_rep_ms,
                              flush_l2=options.flush_l2, device=device))

    graph_latency = cuda_graph_latency(step, options, device) if device.type == "cuda" and not options.backward else None

    note("tracing")
    trace_path = record_trace(step, trace_dir=out_dir / "tb", worker_name=cfg.name, warmup_steps=options.warmup_steps,
                              active_steps=options.active_steps, device=device, flush=flush)
    events = load_trace(trace_path)
    activities = attribute(events)
    shape_checks = check_shapes(host_context(events), cfg, include_logits=options.include_logits, dtype=cfg.dtype)
    summary = component_summary(activities)
    totals = step_totals(activities)

    flops = component_flops(cfg, include_logits=options.include_logits, backward=options.backward)
    summary["flops"] = [flops.get((p, c), 0) for p, c in zip(summary["pass"], summary["component"])]
    summary["tflops"] = summary["flops"] / (summary["time_us"] * 1e-6) / 1e12
    summary.loc[summary["flops"] == 0, "tflops"] = float("nan")
    if peak_tflops:
        summary["pct_of_peak"] = 100 * summary["tflops"] / peak_tflops

    floor_total_us = None
    heavy = summary["kind"].eq("gemm") | summary["component"].eq("flash_attention")
    heavy_share = float(summary.loc[heavy, "share"].sum())
    idle_ratio = min(3.0, (1 - heavy_share) / heavy_share) if heavy_share > 0 else 0.0
    if options.measure_floor:
        note("timing the floor (GEMMs and attention alone)")
        alone = floor_times(cfg, include_logits=options.include_logits, backward=options.backward, device=device,
                            dtype=dtype, warmup_ms=min(options.bench_warmup_ms, 25), rep_ms=min(options.bench_rep_ms, 100),
                            idle_ratio=idle_ratio if device.type == "cuda" else 0.0)
        summary["alone_us"] = [alone[(p, c)].median_ms * 1e3 if (p, c) in alone else float("nan")
                               for p, c in zip(summary["pass"], summary["component"])]
        summary["vs_alone_pct"] = 100 * (summary["time_us"] / summary["alone_us"] - 1)
        floor_total_us = sum(t.median_ms for t in alone.values()) * 1e3

    model_flops = layer_flops(cfg, include_logits=options.include_logits, backward=options.backward)
    latency_us = latency.median_ms * 1e3
    result_summary = {
        "name": cfg.name,
        "status": "ok",
        "config": cfg.to_dict(),
        "mode": options.mode,
        "latency_us": {"median": latency_us, "p10": latency.p10_ms * 1e3, "p90": latency.p90_ms * 1e3,
                       "repeats": latency.repeats, "outliers": latency.outliers},
        "latency_graph_us": graph_latency,
        "latency_profiled_us": float(totals["span_us"].median()),
        "busy_us": float(totals["busy_us"].median()),
        "profiler_overhead_pct": 100 * (float(totals["span_us"].median()) / latency_us - 1),
        "coverage": coverage(activities),
        "gemm_share": float(summary.loc[summary["kind"] == "gemm", "share"].sum()),
        "layer_flops": model_flops,
        "layer_tflops": model_flops / (latency_us * 1e-6) / 1e12,
        "floor_us": floor_total_us,
        "floor_idle_ratio": idle_ratio if device.type == "cuda" else 0.0,
        "floor_ratio": latency_us / floor_total_us if floor_total_us else None,
        "steps_traced": int(len(totals)),
        "trace": str(trace_path.relative_to(out_dir)) if trace_path.is_relative_to(out_dir) else str(trace_path),
        "shape_checks": shape_checks,
        "flops_check": check_flops(cfg, include_logits=options.include_logits, backward=options.backward),
    }
    if peak_tflops:
        result_summary["layer_pct_of_peak"] = 100 * result_summary["layer_tflops"] / peak_tflops
    summary.insert(0, "config", cfg.name)
    del model, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return LayerProfile(config=cfg, components=summary, summary=result_summary, trace_path=trace_path)

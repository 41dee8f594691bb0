"""The GPUs the advisor can model: a table keyed by GPU name, each number with where it came from.

The cost model needs an SM count, a GEMM ceiling, a memory bandwidth, a fused-attention rate and how much a
GEMM slows down when a leading dimension is not aligned. None of these is a constant in the code: they sit
in this table (measured on the lent GPUs where we have measurements, datasheet or paper read-offs where we do
not, and each says which), or are read from the device itself (name, SM count) and, with --measure,
re-measured in the run (GEMM ceiling, copy bandwidth).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..hardware import datasheet_for
from .calibration import load_file, load_table, uncalibrated_summary


@dataclass(frozen=True)
class GpuModel:
    key: str  # the --gpu name
    name: str  # as torch.cuda.get_device_properties reports it (or the product name when modelled)
    sms: int
    sms_source: str
    matmul_tflops: float  # dense 16-bit GEMM ceiling (bf16/fp16)
    matmul_tflops_fp32: float  # what a float32 GEMM gets (no TF32: torch's default)
    matmul_source: str
    bandwidth_tbps: float  # bytes read + written per second, as a device-to-device copy counts them
    bandwidth_source: str
    flash_tflops: float | None  # fused causal attention forward, FLOPs of the work done / time (16-bit)
    flash_backward_ratio: float  # backward time / forward time of fused attention
    flash_source: str
    fast_alignment_bytes: int  # leading dims that are multiples of this run at full speed on this GPU
    misalignment_slowdown: tuple[tuple[int, float], ...]  # (alignment in bytes, time factor) below it
    alignment_source: str
    kernel_floor_us: float  # the least time any kernel takes (launch + latency): small non-GEMM steps
    kernel_floor_source: str
    paper_alignment_bytes: int = 128  # the paper's rule (VI-B): 128 bytes, 64 fp16 elements
    paper_sms: int | None = None  # what the paper's text says, where it differs from the product
    evidence: tuple[tuple[str, str], ...] = ()  # (topic, a measured fact on this GPU that a rule can quote)
    # measured GEMM / attention times of this GPU kind (calibration.Calibration), None: uncalibrated, the
    # analytic model alone; attached by resolve_gpu from profiler/advisor/calibration/<key>.json
    calibration: object = dataclasses.field(default=None, compare=False, repr=False)

    def slowdown(self, alignment_bytes: int) -> float:
        """Time factor of a GEMM whose worst leading dimension is aligned to `alignment_bytes`."""
        if alignment_bytes >= self.fast_alignment_bytes:
            return 1.0
        for nbytes, factor in sorted(self.misalignment_slowdown):
            if alignment_bytes <= nbytes:
                return factor
        return 1.0

    def evidence_for(self, topic: str) -> str | None:
        return next((text for t, text in self.evidence if t == topic), None)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calibration"}
        out["calibration"] = calibration_summary(self)
        return out

    @property
    def signature(self) -> tuple:
        """The numbers the analytic model reads (what a calibration factor is relative to)."""
        return (self.key, self.sms, self.matmul_tflops, self.matmul_tflops_fp32, self.bandwidth_tbps,
                self.fast_alignment_bytes, self.misalignment_slowdown)


def calibration_summary(gpu: GpuModel) -> dict:
    """{calibrated: bool, ...}: the table's provenance, or the sentence naming the GPU uncalibrated."""
    return gpu.calibration.summary() if gpu.calibration is not None else uncalibrated_summary(gpu.key)


def with_calibration(gpu: GpuModel, calibration: str | Path | None = "auto") -> GpuModel:
    """The GPU with its calibration: "auto" the committed table of its kind (if any), a path a table file,
    None the analytic model alone."""
    if calibration is None:
        table = None
    elif calibration == "auto":
        table = load_table(gpu.key)
    else:
        path = Path(calibration)
        if not path.exists():
            raise UserError(f"--calibration: {path} does not exist; give a table written by scripts/calibrate_advisor.py")
        table = load_file(path)
    return dataclasses.replace(gpu, calibration=table)


_H100_LOGITS = ("measured on this project's H100 (reports/h100@2a60355/sweeps, logits sweep h=2560, b*s=8192, "
                "v=50240..50368): v a multiple of 8 (16 bytes) ~2.7 ms, v = 4 mod 8 or 2 mod 4 ~7.4 ms (2.8x), "
                "odd v ~19.1 ms (7.2x)")
_H100 = GpuModel(
    key="h100", name="NVIDIA H100 80GB HBM3", sms=132,
    sms_source="H100 SXM5 (the lent GPU reports 132); the paper's 144 is the full GH100 die, which no product ships",
    paper_sms=144,
    matmul_tflops=806.7, matmul_tflops_fp32=66.9,
    matmul_source="measured: bf16 8192^3 matmul, GPU idle between products (reports/h100@2a60355/layer/*/run.json "
                  "measured_peak_tflops); datasheet 989.4; float32 (no TF32): datasheet 66.9",
    bandwidth_tbps=3.0, bandwidth_source="measured device-to-device copy on the lent H100 (~3.0 TB/s; datasheet 3.35)",
    flash_tflops=226.0, flash_backward_ratio=2.7,
    flash_source="measured: reports/h100@2a60355/layer/figure1-flash gpt3-2.7b-a20 (b=4, s=2048, a=20, h/a=128, causal): "
                 "379.5 us for 85.9 GFLOP of causal work; backward/forward 301/111 us in reports/h100@2a60355/layer/pythia-1b-train",
    fast_alignment_bytes=16, misalignment_slowdown=((2, 7.2), (4, 2.8), (8, 2.8)),
    alignment_source=_H100_LOGITS + "; the score-GEMM sweep (a=32) agrees: any h/a multiple of 8 runs at the "
                     "same speed, h/a = 4 mod 8 ~2x slower, odd h/a ~3x",
    kernel_floor_us=4.0, kernel_floor_source="measured: pythia-70m rotary (0.5 MB moved) 3.8 us, reports/h100@2a60355/layer/pythia-suite",
    evidence=(("vocab", "the logits GEMM (8192,2560)x(2560,50257) took 19.07 ms against 2.70 ms at 50304 on the "
                        "H100 (reports/h100@2a60355/sweeps/speed.txt); every multiple of 8 ran as fast as 50304"),
              ("head_dim", "h/a = 80 vs 128 at h=2560, b=4, s=2048 on the H100: eager score GEMM 429 vs 281 us, "
                           "flash attention 442 vs 380 us (reports/h100@2a60355/layer/figure1-*)")),
)

GPUS: dict[str, GpuModel] = {
    "h100": _H100,
    "h200": dataclasses.replace(
        _H100, key="h200", name="NVIDIA H200", sms=132, sms_source="H200 SXM (the lent GPUs report 132)",
        matmul_tflops=780.0, matmul_source="measured on the lent H200: bf16 8192^3 matmul 769-798 TFLOP/s; datasheet 989.4",
        bandwidth_tbps=4.3, bandwidth_source="measured device-to-device copy on the lent H200 (~4.3 TB/s; datasheet 4.8)",
        flash_source="assumed as the H100 (same GH100 compute): " + _H100.flash_source,
        alignment_source="assumed as the H100 (same GH100 tensor cores): " + _H100_LOGITS,
        kernel_floor_source="assumed as the H100", evidence=()),
    "a100": GpuModel(
        key="a100", name="NVIDIA A100-SXM4-80GB", sms=108, sms_source="paper Section III-B (A100: 108 SMs)",
        matmul_tflops=float(datasheet_for("A100")["bf16_tflops"]), matmul_tflops_fp32=19.5,
        matmul_source="datasheet (not measured here; a measured ceiling is lower)",
        bandwidth_tbps=float(datasheet_for("A100")["hbm_tbps"]), bandwidth_source="datasheet (A100 80GB SXM)",
        flash_tflops=230.0, flash_backward_ratio=2.7,
        flash_source="paper Fig. 12 (FlashAttention-2 on A100, a=128, large h), read off: ~230 TFLOP/s; "
                     "backward ratio assumed as the H100",
        fast_alignment_bytes=32, misalignment_slowdown=((2, 2.3), (4, 1.5), (8, 1.45), (16, 1.05)),
        alignment_source="paper Fig. 7a (A100, score GEMM, a=32, large h), read off: h/a class 1 ~90, 2 ~140, "
                         "4 ~145, 8 ~200, >=16 ~200-210 TFLOP/s; Fig. 20a: v off a multiple of 64 ~100 vs ~250",
        kernel_floor_us=5.0, kernel_floor_source="assumed (a few us per kernel launch)",
        paper_sms=108),
    "v100": GpuModel(
        key="v100", name="Tesla V100-SXM2-32GB", sms=80, sms_source="paper Section VI-B (V100: 80 SMs)",
        matmul_tflops=float(datasheet_for("V100")["fp16_tflops"]), matmul_tflops_fp32=15.7,
        matmul_source="datasheet fp16 (V100 has no bf16)", bandwidth_tbps=float(datasheet_for("V100")["hbm_tbps"]),
        bandwidth_source="datasheet", flash_tflops=None, flash_backward_ratio=2.7,
        flash_source="FlashAttention-2 needs sm80+: no fused attention on V100",
        fast_alignment_bytes=16, misalignment_slowdown=((2, 2.3), (4, 1.5), (8, 1.45)),
        alignment_source="paper Section III-B (V100 tensor cores: multiples of 16 bytes); slowdowns assumed as the A100's",
        kernel_floor_us=5.0, kernel_floor_source="assumed (a few us per kernel launch)", paper_alignment_bytes=16,
        paper_sms=80),
}


def _lookup(name: str) -> GpuModel | None:
    words = re.split(r"[^a-z0-9]+", name.lower())  # "NVIDIA H100 80GB HBM3", "A100-SXM4-80GB", "h100"
    return next((gpu for key, gpu in GPUS.items() if key in words), None)


def names_same_gpu(name: str, device_name: str) -> bool:
    """Does the --gpu name denote the model of the local device?"""
    gpu = _lookup(name)
    return gpu is not None and gpu is _lookup(device_name)


def local_gpu_properties(device=None) -> tuple[str, int] | None:
    """(name, SM count) of the local CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
    return props.name, props.multi_processor_count


def resolve_gpu(name: str | None, *, local: tuple[str, int] | None = None,
                calibration: str | Path | None = "auto") -> GpuModel:
    """The GPU to model: the one named with --gpu, else the local GPU (its own name and SM count), with its
    calibration table (`with_calibration`).

    `local` is the local device's (name, SM count) or None; a named GPU that is the local one also takes
    the device's SM count (an H100 PCIe has 114, not the SXM's 132)."""
    return with_calibration(_resolve(name, local), calibration)


def _resolve(name: str | None, local: tuple[str, int] | None) -> GpuModel:
    if name:
        gpu = _lookup(name)
        if gpu is None:
            raise UserError(f"--gpu: '{name}' is not one the advisor models; use one of {', '.join(GPUS)}")
        if local is not None and _lookup(local[0]) is gpu:
            return dataclasses.replace(gpu, name=local[0], sms=local[1], sms_source="device")
        return gpu
    if local is None:
        raise UserError(f"--gpu: no local GPU to model; name the GPU to advise for ({', '.join(GPUS)})")
    gpu = _lookup(local[0])
    if gpu is None:
        raise UserError(f"--gpu: the local GPU '{local[0]}' is not in the advisor's table; name the closest with "
                        f"--gpu ({', '.join(GPUS)}) or add it to profiler/advisor/gpus.py")
    return dataclasses.replace(gpu, name=local[0], sms=local[1], sms_source="device")


def with_measured_ceilings(gpu: GpuModel, *, matmul_tflops: float | None, bandwidth_tbps: float | None) -> GpuModel:
    """The same GPU with the ceilings measured in this run in place of the table's."""
    changes: dict = {}
    if matmul_tflops:
        changes.update(matmul_tflops=round(matmul_tflops, 1), matmul_source="measured in this run")
    if bandwidth_tbps:
        changes.update(bandwidth_tbps=round(bandwidth_tbps, 2), bandwidth_source="measured in this run (copy)")
    return dataclasses.replace(gpu, **changes)

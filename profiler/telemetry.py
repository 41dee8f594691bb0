"""SM clock and power while each phase of a run measures (NVML), so numbers taken in different phases can be
compared like for like: a GEMM timed alone after the GPU clocked down is not the same GEMM as inside the layer.

`Telemetry` samples in a background thread; `with telemetry.phase("floor"):` tags the samples. Summaries and
the phase comparison are pure functions over the samples, so they are tested on a CPU with made-up samples.
Without NVML (a CPU run, or nvidia-ml-py missing) nothing is sampled and the comparison says why.
"""

from __future__ import annotations

import bisect
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

SAMPLE_INTERVAL_S = 0.01
# NVML reports the SM clock in steps of about 15 MHz; two phases "agree" when their medians differ by no more
# than the larger p10-p90 spread of the two, or this fraction of the clock, whichever is larger.
CLOCK_TOLERANCE = 0.02


@dataclass(frozen=True)
class Sample:
    phase: str
    t_s: float
    sm_clock_mhz: float
    power_w: float
    temperature_c: float | None = None


class Telemetry:
    """Background NVML sampler. `available` is False (with `reason`) where NVML cannot be read."""

    def __init__(self, device_index: int = 0, interval_s: float = SAMPLE_INTERVAL_S):
        self.samples: list[Sample] = []
        self.interval_s = interval_s
        self._phase: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self.available = True
        except Exception as exc:  # noqa: BLE001 - no NVML here: say why, measure on without it
            self.available = False
            self.reason = f"NVML unavailable ({type(exc).__name__}: {str(exc)[:120]})"

    def _read(self, phase: str) -> Sample:
        nv = self._nvml
        clock = nv.nvmlDeviceGetClockInfo(self._handle, nv.NVML_CLOCK_SM)
        power = nv.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        try:
            temp = nv.nvmlDeviceGetTemperature(self._handle, nv.NVML_TEMPERATURE_GPU)
        except Exception:  # noqa: BLE001 - temperature is optional
            temp = None
        return Sample(phase, time.perf_counter(), float(clock), float(power), temp)

    def _loop(self) -> None:
        while not self._stop.is_set():
            phase = self._phase
            if phase is not None:
                try:
                    self.samples.append(self._read(phase))
                except Exception:  # noqa: BLE001 - a failed read is a missing sample, not a failed run
                    pass
            self._stop.wait(self.interval_s)

    def start(self) -> Telemetry:
        if self.available and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def set_phase(self, name: str | None) -> None:
        """Tag the samples from now on (inside a `phase` block, e.g. when its warm-up ends)."""
        self._phase = name

    @contextmanager
    def phase(self, name: str):
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    def summary(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {"available": True, "interval_s": self.interval_s, "phases": summarize_phases(self.samples)}


def window_clocks(samples: list[Sample], windows: list[tuple[float, float]]) -> list[float | None]:
    """The median SM clock of the samples taken inside each (start, end) window of time.perf_counter() seconds;
    None where no sample fell inside (a window shorter than the sampling interval)."""
    times = [s.t_s for s in samples]
    order = sorted(range(len(samples)), key=times.__getitem__)
    ts = [times[i] for i in order]
    out = []
    for start, end in windows:
        lo, hi = bisect.bisect_left(ts, start), bisect.bisect_right(ts, end)
        inside = [samples[order[i]].sm_clock_mhz for i in range(lo, hi)]
        out.append(statistics.median(inside) if inside else None)
    return out


def summarize_phases(samples: list[Sample]) -> dict[str, dict]:
    """Per phase: sample count, SM clock median/p10/p90, power median, temperature max."""
    phases: dict[str, list[Sample]] = {}
    for s in samples:
        phases.setdefault(s.phase, []).append(s)
    out = {}
    for name, group in phases.items():
        clocks = sorted(s.sm_clock_mhz for s in group)
        power = [s.power_w for s in group]
        temps = [s.temperature_c for s in group if s.temperature_c is not None]
        n = len(clocks)
        out[name] = {
            "samples": n,
            "sm_clock_mhz": statistics.median(clocks),
            "sm_clock_p10_mhz": clocks[round(0.1 * (n - 1))],
            "sm_clock_p90_mhz": clocks[round(0.9 * (n - 1))],
            "power_w": statistics.median(power),
            "temperature_max_c": max(temps) if temps else None,
        }
    return out


def compare_phases(phases: dict[str, dict], *, tolerance: float = CLOCK_TOLERANCE, min_samples: int = 3) -> dict:
    """Do the phases of one run see the same SM clock? Each pair whose medians differ by more than their noise
    (the larger p10-p90 spread) and more than `tolerance` of the clock is a disagreement."""
    usable = {k: v for k, v in phases.items() if v.get("samples", 0) >= min_samples}
    pairs = []
    names = sorted(usable)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = usable[a], usable[b]
            diff = abs(pa["sm_clock_mhz"] - pb["sm_clock_mhz"])
            noise = max(pa["sm_clock_p90_mhz"] - pa["sm_clock_p10_mhz"], pb["sm_clock_p90_mhz"] - pb["sm_clock_p10_mhz"])
            allowed = max(noise, tolerance * max(pa["sm_clock_mhz"], pb["sm_clock_mhz"]))
            pairs.append({"phases": f"{a} vs {b}", "clock_a_mhz": pa["sm_clock_mhz"], "clock_b_mhz": pb["sm_clock_mhz"],
                          "diff_mhz": diff, "allowed_mhz": allowed, "ok": diff <= allowed})
    return {"pairs": pairs, "compared": len(names), "skipped": sorted(set(phases) - set(usable))}


def sm_clock_reader(device) -> Callable[[], float | None]:
    """A function returning the SM clock (MHz) of a torch CUDA device now, through NVML; one returning None
    where NVML cannot be read (a CPU, nvidia-ml-py missing). The GPU is found by its UUID: NVML ignores
    CUDA_VISIBLE_DEVICES, so a pinned worker's cuda:0 is not NVML's index 0."""
    try:
        import pynvml
        import torch

        if torch.device(device).type != "cuda":
            return lambda: None
        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - no clock here: the record says None
        return lambda: None

    def read() -> float | None:
        try:
            return float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        except Exception:  # noqa: BLE001 - a failed read is a missing figure
            return None

    return read

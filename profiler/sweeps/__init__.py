"""GEMM and attention micro-benchmark sweeps (paper Sections V, VI-A; Figs. 5-10, 12, 15-20)."""

from .spec import KINDS, Budget, SweepPoint, SweepSpec, expand, parse_values
from .runner import SweepSummary, run_sweep
from .store import ResultStore

__all__ = ["KINDS", "Budget", "SweepPoint", "SweepSpec", "expand", "parse_values", "SweepSummary", "run_sweep",
           "ResultStore"]

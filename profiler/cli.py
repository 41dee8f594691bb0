"""`python -m profiler SUBCOMMAND ...`: a thin shell over the library; each subcommand is one module
with `add_args(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib

from .errors import run_parsed

SUBCOMMANDS = {
    "layer": ("profiler.commands.layer", "profile full transformer layers: GEMM vs non-GEMM attribution, HTML report"),
    "sweep": ("profiler.commands.sweep", "GEMM / attention micro-benchmark sweeps (paper Sections V, VI-A)"),
    "configs": ("profiler.commands.configs", "list the bundled model configs with their shapes and parameter counts"),
    "invariance": ("profiler.commands.invariance", "batch invariance: invariant GEMM vs cuBLAS over tokens, and where "
                                                   "the layer breaks it"),
    "advise": ("profiler.commands.advise", "sizing advisor: what is wrong with this shape on this GPU, and which shape "
                                           "of the same size is faster (modelled; --measure times them)"),
    "diff": ("profiler.commands.diff", "compare two profiled configs per component: time, TFLOP/s and share, "
                                       "with changes inside the measurement's noise labelled as such"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m profiler", description=(
        "Does this model shape run efficiently on this GPU, and where does the time go? "
        "After Anthony et al., 'The Case for Co-Designing Model Architectures with Hardware'."))
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_args(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv,
                      "results measured so far are saved; run the same command again to resume")

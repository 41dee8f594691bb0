"""The one dispatcher: every command of `python -m profiler ...` and `python -m inference ...`.

Each command is one module of this package with `add_args(parser)` and `run(args) -> int`. The command layer
is the only code that turns arguments into library calls, writes reports and prints; the libraries below it
(models, profiler, inference, reports) return data. A user's mistake (profiler.errors.UserError, a
models ConfigError) becomes one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from profiler.errors import USER_ERRORS

INFERENCE_EXAMPLES = """examples:
  python -m inference bench --models pythia-160m,pythia-410m,pythia-1b,pythia-1.4b --batch 1,8
  python -m inference bench --models my-model.yaml,/data/pythia-1b --engines mii --repeats 3 --out runs/mine
  python -m inference bench --models pythia-6.9b --engines mii --tensor-parallel 2   # 2 GPUs (torchrun inside)
  python -m inference report runs/inference --layer-profile runs/layer/run.json
  python -m inference carryover --models gpt3-2.7b-c1,gpt3-2.7b-c2,gpt3-2.7b,gpt3-2.7b-a20 --baseline gpt3-2.7b \\
      --out runs/carryover
re-running the same bench or carryover command resumes: rows already measured are skipped."""

# program -> (description, epilog, {command: (module, help)})
PROGRAMS: dict[str, tuple[str, str | None, dict[str, tuple[str, str]]]] = {
    "profiler": (
        "Does this model shape run efficiently on this GPU, and where does the time go? "
        "After Anthony et al., 'The Case for Co-Designing Model Architectures with Hardware'.", None, {
            "layer": ("cli.layer", "profile full transformer layers: GEMM vs non-GEMM attribution, HTML report"),
            "sweep": ("cli.sweep", "GEMM / attention micro-benchmark sweeps (paper Sections V, VI-A)"),
            "configs": ("cli.configs", "list the bundled model configs with their shapes and parameter counts"),
            "invariance": ("cli.invariance", "batch invariance: invariant GEMM vs cuBLAS over tokens, and where "
                                             "the layer breaks it"),
            "advise": ("cli.advise", "sizing advisor: what is wrong with this shape on this GPU, and which shape "
                                     "of the same size is faster (modelled; --measure times them)"),
            "diff": ("cli.diff", "compare two profiled configs per component: time, TFLOP/s and share, "
                                 "with changes inside the measurement's noise labelled as such"),
        }),
    "inference": (
        "Inference bench (paper Section VII-C, Figure 13): GPT-NeoX checkpoints through DeepSpeed-MII "
        "and transformers; and whether training-shape gains carry over to inference.", INFERENCE_EXAMPLES, {
            "bench": ("cli.bench", "time generation per model x engine x prompt x batch; results and report.html"),
            "report": ("cli.bench_report", "re-render report.html (and results.csv) from a results directory"),
            "carryover": ("cli.carryover", "training throughput vs prefill and decode latency per shape, "
                                           "normalised to a baseline shape; verdicts and report"),
            "invariance": ("cli.engine_invariance", "the same prompt alone and inside batches through transformers "
                                                    "and DeepSpeed-MII: bitwise the same?"),
        }),
}
INTERRUPTED = {"profiler": "results measured so far are saved; run the same command again to resume",
               "inference": "rows measured so far are saved in results.jsonl; run the same command again to resume"}


def build_parser(program: str = "profiler") -> argparse.ArgumentParser:
    description, epilog, commands = PROGRAMS[program]
    parser = argparse.ArgumentParser(prog=f"python -m {program}", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter if epilog else
                                     argparse.HelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (module_name, help_text) in commands.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_args(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None, program: str = "profiler") -> int:
    """Parse, dispatch to the command's `run`, and turn user mistakes into one line and exit 2."""
    parser = build_parser(program)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        code = args._run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it would be a traceback
        return code
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {INTERRUPTED[program]}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as exc:
        line = disk_error(exc, getattr(args, "out", None), INTERRUPTED[program])
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


# the file system said no: the user's to fix (free space, or write elsewhere), not a bug of ours
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


def disk_error(exc: OSError, out, saved: str) -> str | None:
    """One line naming the path and the fix for a full or unwritable file system; None for any other OSError."""
    if exc.errno not in NO_SPACE | NOT_WRITABLE:
        return None
    # a failed write() names no file: the run was writing into --out
    path = exc.filename or (f"{out} (--out)" if out is not None else "the output directory")
    what = exc.strerror or os.strerror(exc.errno)
    if exc.errno in NO_SPACE:
        return f"{path}: {what}; free some space there (or choose another --out); {saved}"
    return f"{path}: {what}; choose a place you can write to (another --out) or fix its permissions"


def _stdout_closed() -> int:
    """The reader of our output went away (`... | head -1`): Python's recipe is to point stdout at /dev/null, so
    the flush at exit does not fail again, and to stop quietly: the reader has what it wanted."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture): nothing to flush
        pass
    return EXIT_PIPE_CLOSED


def profiler_main(argv: list[str] | None = None) -> int:
    return main(argv, "profiler")


def inference_main(argv: list[str] | None = None) -> int:
    return main(argv, "inference")

"""`python -m profiler sweep KIND ...`: time one transformer GEMM (or mm/bmm/flash) over a range of shapes,
resumably, and write results.jsonl, results.csv and report.html in --out.
`python -m profiler sweep report DIR [DIR ...] --out DIR`: one combined report from several sweeps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from profiler.errors import UserError
from profiler.sweeps.spec import KINDS, Budget, SweepSpec, parse_values

EXAMPLES = """examples:
  python -m profiler sweep score --heads 32 --h 32:32768:32 --b 4 --s 2048      # Fig. 7a
  python -m profiler sweep aov --heads 96 --h 96:32736:96                       # Fig. 7b
  python -m profiler sweep mlp-up --heads 128 --h 1024:32768:1024               # Fig. 10a
  python -m profiler sweep logits --h 2560 --v 50176:50432:1                    # Fig. 20
  python -m profiler sweep mm --m 27648 --n 64:6144:32 --k 4096                 # Fig. 5b
  python -m profiler sweep flash --heads 128 --h 1024:32768:1024                # Fig. 12 (CUDA only)
  python -m profiler sweep swiglu --h 4096 --ffn 10880:11264:64                 # Sec. VII-B
  python -m profiler sweep report out/score out/aov --out out/combined          # one page from several
ranges: a value, a list 1024,2048, or START:STOP:STEP with STOP included; lists and ranges mix."""


TRANSFORMER = ("qkv", "score", "aov", "out-proj", "mlp-up", "mlp-down")
LAYER_SHAPE = (*TRANSFORMER, "flash", "logits", "swiglu")  # kinds built from a layer's b, s, h, t
KIND_HELP = {
    "mm": "time torch.mm (m,k)x(k,n) over a grid of m, n, k; the x axis is the one given a range (Fig. 5)",
    "bmm": "time torch.bmm batch x (m,k)x(k,n) over a grid (Fig. 6)",
    "qkv": "time the QKV transform GEMM of Table II (qkv_transform) over h (Fig. 16)",
    "score": "time the attention key-query score BMM (attention_score) over h (Figs. 7a, 8, 17)",
    "aov": "time the attention-over-values BMM (attention_over_values) over h (Figs. 7b, 9, 18)",
    "out-proj": "time the attention output projection GEMM (out_projection) over h (Fig. 19)",
    "mlp-up": "time the MLP h -> 4h GEMM (mlp_up) over h (Fig. 10a)",
    "mlp-down": "time the MLP 4h -> h GEMM (mlp_down) over h (Fig. 10b)",
    "logits": "time the logit-layer GEMM over the vocabulary size v at a fixed h (Fig. 20)",
    "flash": "time fused flash attention (torch SDPA's flash backend) over h; CUDA only (Fig. 12)",
    "swiglu": "time a SwiGLU MLP's GEMMs over the intermediate size at a fixed h (Sec. VII-B)",
    "report": "one combined report (results.csv, report.html) from several sweeps' results",
}
# (flags, add_argument keywords, the kinds they apply to): every kind accepts every flag, as it always
# has; `sweep KIND --help` lists only the ones that KIND uses
SHAPE_FLAGS = [
    (("--h",), {"help": "hidden size h (transformer kinds, flash; the fixed h of logits and swiglu)"}, LAYER_SHAPE),
    (("--heads", "--a"), {"dest": "heads", "help": "attention heads a held fixed (default 128, as Figs. 16-20)"},
     (*TRANSFORMER, "flash")),
    (("--head-dim",), {"help": "h/a held fixed instead of a (a = h / head-dim)"}, (*TRANSFORMER, "flash")),
    (("--t",), {"default": "1", "help": "tensor-parallel degree t (default 1)"}, LAYER_SHAPE),
    (("--b",), {"default": "4", "help": "micro-batch size b (default 4)"}, LAYER_SHAPE),
    (("--s",), {"default": "2048", "help": "sequence length s (default 2048)"}, LAYER_SHAPE),
    (("--v",), {"help": "vocabulary size v (logits)"}, ("logits",)),
    (("--ffn",), {"help": "SwiGLU intermediate size (swiglu)"}, ("swiglu",)),
    (("--m",), {"help": "rows of the left operand (mm, bmm)"}, ("mm", "bmm")),
    (("--n",), {"help": "columns of the right operand (mm, bmm)"}, ("mm", "bmm")),
    (("--k",), {"help": "inner dimension (mm, bmm)"}, ("mm", "bmm")),
    (("--batch",), {"default": "1", "help": "batch count (bmm)"}, ("bmm",)),
    (("--causal",), {"action": "store_true", "help": "flash: causal mask (FLOPs counted as half the square)"},
     ("flash",)),
]
RUN_FLAGS = [
    (("--dtype",), {"help": "bfloat16 | float16 | float32 (default bfloat16 on a GPU, float32 on CPU)"}),
    (("--device",), {"help": "cuda, cuda:1 or cpu (default: cuda if available)"}),
    (("--out",), {"help": "output directory (default sweeps/KIND[-TAG]); re-running resumes there"}),
    (("--tag",), {"default": "", "help": "label kept with every point (part of its identity)"}),
    (("--sms",), {"type": int, "help": "SM count for the wave predictions (default: the GPU's own)"}),
    (("--warmup-ms",), {"type": float, "default": Budget.warmup_ms, "help": "per-point warm-up budget"}),
    (("--rep-ms",), {"type": float, "default": Budget.rep_ms, "help": "per-point measuring budget"}),
    (("--min-reps",), {"type": int, "default": Budget.min_reps}),
    (("--max-reps",), {"type": int, "default": Budget.max_reps}),
    (("--keep-busy-ms",), {"type": float, "default": Budget.keep_busy_ms,
                           "help": "GPU kept under load (large GEMMs) before each point and while the host writes "
                                   "it, so every point is measured in the sustained power state (0: off)"}),
    (("--busy-ratio",), {"type": float, "default": Budget.busy_ratio,
                         "help": "keep-busy after each repetition, in multiples of one call's time: a fixed duty "
                                 "cycle, so the clock does not drift with the window's length (0: off)"}),
    (("--retry-failed",), {"action": "store_true", "help": "re-measure points recorded as oom or error"}),
    (("--no-report",), {"action": "store_true", "help": "only append to results.jsonl (no CSV or HTML)"}),
    (("--no-peak",), {"action": "store_true", "help": "skip the GEMM-ceiling measurement on CUDA"}),
    (("--no-progress",), {"action": "store_true", "help": "no progress bar"}),
    (("--executor",), {"choices": ["inline", "local", "ray"], "default": "inline",
                       "help": "inline: this process (default); local: one worker process per visible GPU (or "
                               "--workers CPU workers); ray: one actor per GPU on a Ray cluster"}),
    (("--workers",), {"type": int, "help": "local/ray: how many workers (default: one per GPU; without a GPU, "
                                           "one per core, at most 8 locally)"}),
    (("--ray-address",), {"help": "ray: the cluster to join (auto, HOST:6379); default: a local Ray started "
                                  "for this sweep"}),
]
SHAPE_GROUP = "shape (each takes a value, a list or a START:STOP:STEP range)"
REPORT_OUT = "output directory for results.csv and report.html (default sweeps/combined)"


def kind_parser(kind: str, prog: str) -> argparse.ArgumentParser:
    """The options of one kind only, for `sweep KIND --help` (parsing itself uses the full parser)."""
    examples = [line for line in EXAMPLES.splitlines() if f" sweep {kind} " in line]
    ranges = [] if kind == "report" else EXAMPLES.splitlines()[-1:]
    parser = argparse.ArgumentParser(prog=f"{prog} {kind}", description=KIND_HELP[kind],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(["examples:", *examples, *ranges]) if examples else None)
    if kind == "report":
        parser.add_argument("inputs", nargs="+", help="results directories or results.jsonl files")
        parser.add_argument("--out", help=REPORT_OUT)
        return parser
    shape = parser.add_argument_group(SHAPE_GROUP)
    for flags, options, kinds in SHAPE_FLAGS:
        if kind in kinds:
            shape.add_argument(*flags, **options)
    run = parser.add_argument_group("run")
    for flags, options in RUN_FLAGS:
        run.add_argument(*flags, **options)
    return parser


class _Kind(argparse.Action):
    """The kind positional; remembered on the parser, so that a -h/--help after it shows its options only."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        parser.chosen_kind = values


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    every_option = parser.print_help

    def print_help(file=None):  # what argparse's -h/--help calls
        kind = getattr(parser, "chosen_kind", None)
        (kind_parser(kind, parser.prog).print_help if kind in KIND_HELP else every_option)(file)

    parser.print_help = print_help
    parser.add_argument("kind", action=_Kind, help=f"one of {', '.join(KINDS)}, or 'report' to combine results "
                                                   "directories; `sweep KIND --help` lists KIND's options only")
    parser.add_argument("inputs", nargs="*", help="(report only) results directories or results.jsonl files")
    shape = parser.add_argument_group(SHAPE_GROUP)
    for flags, options, _ in SHAPE_FLAGS:
        shape.add_argument(*flags, **options)
    run = parser.add_argument_group("run")
    for flags, options in RUN_FLAGS:
        run.add_argument(*flags, **options)


def _values(text: str | None, flag: str) -> tuple[int, ...]:
    return parse_values(text, flag) if text else ()


def _device(args) -> torch.device:
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UserError(f"--device: '{args.device}' is not a device (use cuda, cuda:N or cpu)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device: CUDA is not available on this machine; use --device cpu")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def spec_from_args(args, device: torch.device) -> SweepSpec:
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return SweepSpec(
        kind=args.kind, h=_values(args.h, "--h"), heads=_values(args.heads, "--heads"),
        head_dim=_values(args.head_dim, "--head-dim"), t=_values(args.t, "--t"), b=_values(args.b, "--b"),
        s=_values(args.s, "--s"), v=_values(args.v, "--v"), ffn=_values(args.ffn, "--ffn"),
        m=_values(args.m, "--m"), n=_values(args.n, "--n"), k=_values(args.k, "--k"),
        batch=_values(args.batch, "--batch"), causal=args.causal, dtype=dtype, tag=args.tag,
        budget=Budget(args.warmup_ms, args.rep_ms, args.min_reps, args.max_reps, args.keep_busy_ms,
                      args.busy_ratio))


def _cpu_estimate(spec: SweepSpec, *, explicit: bool, workers: int = 1) -> None:
    """Print how long the sweep would take on this CPU; a GPU-sized sweep needs --device cpu said explicitly."""
    from profiler.cpu_estimate import CONFIRM_S, cpu_gflops, duration
    from profiler.sweeps.runner import estimate_cpu_seconds

    gflops = cpu_gflops()
    seconds = estimate_cpu_seconds(spec, gflops) / workers
    print(f"notice: no CUDA device; sweeping on the CPU ({gflops:.0f} GFLOP/s matmul): CPU numbers prove the wiring, "
          f"not GPU performance. Estimated time: {duration(seconds)}.", file=sys.stderr)
    if seconds > CONFIRM_S and not explicit:
        raise UserError(f"--device: this sweep would take about {duration(seconds)} on this CPU; pass --device cpu to "
                        "run it anyway, or narrow the ranges, or run it on a GPU")


def run(args) -> int:
    from reports.sweep_report import write_outputs

    if args.kind == "report":
        if not args.inputs:
            raise UserError("report: name one or more results directories (e.g. sweep report out/score out/aov --out out/all)")
        missing = [p for p in args.inputs if not (Path(p).is_file() or (Path(p) / "results.jsonl").is_file()
                                                   or (Path(p) / "results.jsonl.gz").is_file())]
        if missing:
            raise UserError(f"report: no results.jsonl in {missing[0]}")
        from profiler.outputs import prepare_out_dir

        csv_path, html_path = write_outputs(args.inputs, prepare_out_dir(args.out or "sweeps/combined"))
        print(f"wrote {html_path} and {csv_path}")
        return 0
    if args.inputs:
        raise UserError(f"{args.kind}: unexpected positional argument(s) {' '.join(args.inputs)}; "
                        "shapes go in flags such as --h 1024:8192:1024")
    if args.sms is not None and args.sms <= 0:
        raise UserError(f"--sms: must be positive, got {args.sms}")
    from profiler.sweeps.runner import run_sweep

    from profiler.executors import make_executor

    device = _device(args) if args.executor != "ray" or args.device else None
    executor = make_executor(args.executor, workers=args.workers, ray_address=args.ray_address,
                             device_type=device.type if device is not None else "auto")
    if device is None:  # ray without --device: the cluster's GPUs, or its CPUs
        device = torch.device(executor.device_type)
    if args.kind == "flash" and device.type != "cuda":  # before the dtype check: CPU is the real obstacle
        raise UserError("flash: the flash-attention backend of torch SDPA needs a CUDA GPU; run this sweep "
                        "on the GPU machine (or use score/aov for the unfused attention GEMMs)")
    spec = spec_from_args(args, device)
    if device.type == "cpu":
        _cpu_estimate(spec, explicit=args.device is not None, workers=executor.workers)
    if args.executor != "inline":
        print(f"notice: {executor.describe()}", file=sys.stderr)
    from models.config import safe_name  # the tag names the default directory: never a path of its own

    out = Path(args.out or f"sweeps/{args.kind}{'-' + safe_name(args.tag) if args.tag else ''}")
    summary = run_sweep(spec, out, device=device, sms=args.sms, progress=not args.no_progress,
                        retry_failed=args.retry_failed, measure_peak=not args.no_peak, executor=executor)
    print(f"{spec.kind}: {summary.planned} points, {summary.measured} measured now, {summary.skipped} already in "
          f"{summary.results_path}; {summary.oom} out of memory, {summary.errors} failed", file=sys.stderr)
    if not args.no_report:
        csv_path, html_path = write_outputs([out], out)
        print(f"wrote {html_path} and {csv_path}")
    return 0

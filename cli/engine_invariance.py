"""`python -m inference invariance`: the same prompt alone and inside batches through transformers and
DeepSpeed-MII (inference.invariance), then the invariance report beside its CSV."""

from __future__ import annotations

import sys
from pathlib import Path

from inference.checkpoints import DEFAULT_ROOT
from inference.invariance import ENGINES, EngineInvarianceSpec, run_engine_invariance
from profiler.errors import UserError
from profiler.invariance.analysis import engine_findings
from reports.invariance_report import write_report

def add_args(parser) -> None:
    parser.add_argument("--models", required=True,
                        help="comma-separated: bundled names (pythia-160m), config files, or checkpoint directories")
    parser.add_argument("--engines", default="hf,mii", help=f"comma-separated, of {', '.join(ENGINES)} (default hf,mii)")
    parser.add_argument("--batch", default="2,4,8,16", help="batch sizes holding the prompt, each >= 2 (default 2,4,8,16)")
    parser.add_argument("--positions", default="first,last", help="where the prompt sits in a batch (default first,last)")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (default 64)")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens generated per prompt (default 16)")
    parser.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32 (default float16; "
                        "transformers on a CPU computes in float32)")
    parser.add_argument("--out", default="runs/invariance", help="output directory (default runs/invariance)")
    parser.add_argument("--checkpoints", default=str(DEFAULT_ROOT), help=f"checkpoint cache (default {DEFAULT_ROOT})")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    parser.add_argument("--no-modules", action="store_true", help="compare logits and tokens only, not every module")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    def csv(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    try:
        batches = tuple(int(x) for x in csv(args.batch))
    except ValueError:
        raise UserError(f"--batch: '{args.batch}' is not a comma-separated list of whole numbers (e.g. 2,4,8)") from None
    spec = EngineInvarianceSpec(models=csv(args.models), engines=csv(args.engines), batches=batches,
                                positions=csv(args.positions), prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                dtype=args.dtype, out=Path(args.out), checkpoints=Path(args.checkpoints),
                                seed=args.seed, device=args.device, modules=not args.no_modules)
    frame = run_engine_invariance(spec, progress=not args.no_progress and sys.stderr.isatty())
    write_report([spec.out], spec.out)
    print(engine_findings(frame).to_string(index=False))
    print(f"results: {Path(args.out) / 'engines.csv'}; report: {Path(args.out) / 'report.html'}")
    return 0

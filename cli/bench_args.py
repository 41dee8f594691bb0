"""The options every bench-like command shares (bench, carryover), and the BenchSpec they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from inference.checkpoints import DEFAULT_ROOT
from inference.engines.base import ENGINES
from inference.spec import BenchSpec
from profiler.errors import UserError


def csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in csv(text))
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of whole numbers (e.g. 1,8)") from None


def params(text: str | None) -> float | None:
    if text is None:
        return None
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    try:
        t = text.strip().lower()
        return float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t)
    except (ValueError, KeyError):
        raise UserError(f"--max-params: '{text}' is not a count (e.g. 3e9 or 3b)") from None


def add_bench_args(parser: argparse.ArgumentParser, *, batch: str = "1,8", prompt_len: str = "128",
                   new_tokens: int = 64, models_required: bool = True) -> None:
    parser.add_argument("--models", required=models_required,
                        help="comma-separated: bundled names (pythia-1b), config files, or checkpoint directories")
    parser.add_argument("--engines", default="hf,mii", help=f"comma-separated, of {', '.join(ENGINES)} (default hf,mii; "
                        "a shape mii's fused kernels refuse gets a mii-noinject row instead)")
    parser.add_argument("--batch", default=batch, help=f"batch sizes, comma-separated (default {batch})")
    parser.add_argument("--prompt-len", default=prompt_len,
                        help=f"prompt lengths in tokens, comma-separated (default {prompt_len})")
    parser.add_argument("--new-tokens", type=int, default=new_tokens,
                        help=f"generated tokens per request (default {new_tokens})")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per row (default 5)")
    parser.add_argument("--warmup-s", type=float, default=2.0,
                        help="untimed generations per row for this many seconds, at least one (default 2)")
    parser.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32 (default float16; "
                        "transformers on a CPU computes in float32)")
    parser.add_argument("--checkpoints", default=str(DEFAULT_ROOT), help=f"checkpoint cache (default {DEFAULT_ROOT})")
    parser.add_argument("--tensor-parallel", type=int, default=1, help="MII tensor-parallel degree (GPUs per model)")
    parser.add_argument("--max-params", help="leave out models with more parameters (e.g. 3e9 or 3b)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    parser.add_argument("--order-seed", type=int, help="seed of the random timed order of engines and rows "
                        "(default: drawn, and recorded in every row)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--redo", default="", help="measure again the rows a rerun would skip that have these "
                        "statuses, comma-separated (e.g. mismatch,unchecked after a fix; default none)")


def bench_spec(args, out: Path) -> BenchSpec:
    return BenchSpec(models=csv(args.models), engines=csv(args.engines), batches=ints(args.batch, "--batch"),
                     prompt_lens=ints(args.prompt_len, "--prompt-len"), new_tokens=args.new_tokens,
                     repeats=args.repeats, warmup_s=args.warmup_s, dtype=args.dtype, out=out,
                     checkpoints=Path(args.checkpoints), tensor_parallel=args.tensor_parallel,
                     max_params=params(args.max_params), seed=args.seed, order_seed=args.order_seed,
                     device=args.device, redo=csv(args.redo))

"""Decode step time of the project's own GPT-NeoX engine (neox-graph) against its weight + KV-cache floor.

For each model (bundled config names; a random-weight fp16 checkpoint is built on the GPU and cached under
--checkpoints by inference/checkpoints.py) and each (batch, prompt length) row:

- prefill the prompt once (timed: `prefill_ms`), capture one decode step as a CUDA graph;
- time N-1 graph replays per repeat with CUDA events between replays and one sync at the end (the steps
  are re-run from the state right after prefill, so repeats do not pay for another prefill);
- report the step's median, p10 and p90, the floor (weights + KV cache of the step's mean context streamed
  once at the measured copy bandwidth: inference/metrics.py decode_floors), step / floor, and from one
  replay traced with torch.profiler: kernels per step, the shortest kernel, GEMV and attention bandwidth,
  and what holds the row back (inference/step_kernels.py);
- check the graph's step against the same step in plain torch ops (all kernels independent of Triton) at
  that row's shape, and per model transformers' prefill logits and greedy tokens against ours at one small
  row (the check the bench's logits_check / token_check make).

Writes DIR/decode.json (environment with git SHA from CODESIGN_GIT_SHA, GPU, torch/CUDA, settings, every
row with its samples' medians and spread, the checks) and DIR/decode.csv (one line per row), rewritten
after each model so a run cut short keeps what it measured. A benchmark, not a test; on a CPU it runs the
same code eagerly on small shapes to prove the wiring.

Usage: python scripts/bench_decode.py --out DIR [--models pythia-1b,...] [--batches 1,16,64]
       [--contexts 128,2048,4096] [--new-tokens 32] [--repeats 3] [--checkpoints DIR] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from inference.checkpoints import DEFAULT_ROOT, ensure_checkpoint, resolve_model  # noqa: E402
from inference.checks import check_tokens, compare_logits  # noqa: E402
from inference.graph_decoder import GreedyDecoder  # noqa: E402
from inference.metrics import decode_floors, kv_bytes_per_decode_step  # noqa: E402
from inference.spec import BenchSpec, fit_model  # noqa: E402
from inference.step_kernels import holds_back, summarize_kernels, trace_step  # noqa: E402
from models.decode_kernels import PREFETCH_TILES, AttentionTile, parse_tile  # noqa: E402
from models import count_parameters  # noqa: E402
from models.causal_lm import KVCache  # noqa: E402
from models.neox_checkpoint import load_causal_lm  # noqa: E402
from profiler.hardware import environment, measure_copy_bandwidth  # noqa: E402
from profiler.timing import summarize  # noqa: E402

DEFAULT_MODELS = ("pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b", "gpt3-2.7b",
                  "gpt3-2.7b-c1", "gpt3-2.7b-c2", "gpt3-2.7b-a20")
# the lead's targets: step / floor at most this, for rows matching the condition
TARGETS = (("params >= 1B at batch 1", lambda r: r["params"] >= 1e9 and r["batch"] == 1, 1.5),
           ("batch >= 16 at a 2048-token prompt", lambda r: r["batch"] >= 16 and r["prompt_len"] == 2048, 1.3))
UNTIMED_STEPS = 8  # per row before the timed passes
CHECK_BATCH = 2  # transformers' check: one small row per model
EOS = 0  # the built tokenizer's end-of-text, masked at every step as generate(min_new_tokens=N) does


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated bundled names or config files")
    p.add_argument("--batches", type=ints, default=(1, 16, 64))
    p.add_argument("--contexts", type=ints, default=(128, 2048, 4096), help="prompt lengths")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per row: 1 from prefill, N-1 decode steps")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of the N-1 steps per row")
    p.add_argument("--checkpoints", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--compile", action="store_true", help="torch.compile the step's head and tail")
    p.add_argument("--one-stream", action="store_true",
                   help="the attention and MLP branches of a layer one after the other (default: two graph streams "
                        "where the layer's KV cache read is below its weight read: inference/graph_decoder.py)")
    p.add_argument("--pdl", action="store_true",
                   help="programmatic dependent launch of the step's Triton kernels (models/decode_kernels.py)")
    p.add_argument("--pdl-prefetch", type=int, default=PREFETCH_TILES,
                   help=f"--pdl: weight tiles a GEMV program prefetches into L2 before its wait (default {PREFETCH_TILES})")
    p.add_argument("--splits", type=int, help="attention splits per (row, head) (default: models/decode_kernels.py's rule)")
    p.add_argument("--pdl-late", action="store_true",
                   help="--pdl: GEMVs and attention let their successor launch after their main loop")
    p.add_argument("--inputs-apart", action="store_true",
                   help="one stream: QKV and MLP-up as two GEMMs, not one launch over [W_qkv; W_up]")
    p.add_argument("--norms-apart", action="store_true",
                   help="batch 1: the residual add and norms in their own kernel, not in the output GEMV's last program")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--qkv-first", dest="qkv_first", action="store_const", const=True,
                       help="two streams: the QKV GEMV before the fork, the attention alone beside the MLP-up GEMV "
                            "(the default at batch 1 only)")
    order.add_argument("--qkv-in-branch", dest="qkv_first", action="store_const", const=False,
                       help="two streams: the QKV GEMV after the fork, on the attention's stream, at every batch")
    p.add_argument("--attention-tile", type=tile_arg, metavar="KEYSxWARPSxSTAGES[xmma]",
                   help="the attention kernel's tile, e.g. 32x4x3xmma for the tensor-core loop (default: the table "
                        "in models/decode_kernels.py)")
    p.add_argument("--gemm-tune", type=Path, metavar="TUNE_JSON",
                   help="run the GEMMs a tune run found faster than cuBLAS by 2%% at its row counts "
                        "(scripts/tune_decode_kernels.py's tune.json) ahead of models/decode_gemm.py's table")
    p.add_argument("--check", choices=("all", "first", "none"), default="all",
                   help="transformers' logits and tokens against ours at one small row: every model, the first, none")
    p.add_argument("--no-trace", action="store_true", help="skip the profiler trace of one replay per row")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    return p.parse_args(argv)


def tile_arg(text: str) -> AttentionTile:
    try:
        return parse_tile(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Clock:
    """Elapsed times of a CUDA stream (events, no sync until read) or of the host."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def intervals_ms(self, marks: list) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(marks, marks[1:])]


def time_steps(decoder: GreedyDecoder, clock: Clock, repeats: int) -> list[float]:
    """Step times (ms) of `repeats` passes of the N-1 decode steps, each from the state after prefill, after
    a short untimed pass (the first replay of a graph uploads it; the clock ramps)."""
    samples: list[float] = []
    passes = [(min(UNTIMED_STEPS, decoder.new_tokens - 1), False)] + [(decoder.new_tokens - 1, True)] * repeats
    for steps, timed in passes:
        decoder.rewind()
        marks = [clock.mark()]
        for _ in range(steps):
            decoder.step()
            marks.append(clock.mark())
        times = clock.intervals_ms(marks)
        if timed:
            samples.extend(times)
    return samples


def time_prefill(decoder: GreedyDecoder, ids: torch.Tensor, clock: Clock, times: int) -> list[float]:
    out = []
    for _ in range(times):
        start = clock.mark()
        decoder.prefill(ids)
        out.extend(clock.intervals_ms([start, clock.mark()]))
    return out


def graph_check(decoder: GreedyDecoder) -> dict:
    """The captured step's logits against the same step in plain torch ops, from the same state."""
    decoder.rewind()
    reference = decoder.reference_step().float().cpu()  # (b, vocab); leaves the state where it was
    decoder.rewind()
    decoder.step()
    graph = decoder.logits.float().cpu()
    check = compare_logits(reference[:, None], graph[:, None], "captured step vs plain-torch step")
    return {"passed": check.passed, "max_abs_diff": check.max_abs_diff, "ref_max_abs": check.ref_max_abs,
            "top1_agreement": check.top1_agreement}


def trace_row(decoder: GreedyDecoder, device: torch.device):
    """Kernels of one replay; where the profiler sees none inside a graph, those of one eager step."""
    decoder.rewind()
    kernels = trace_step(decoder.step, device)
    source = "one graph replay" if decoder.graph is not None else "one eager step"
    if kernels.empty and decoder.graph is not None:
        decoder.rewind()
        kernels = trace_step(decoder._step, device)
        source = "one eager step (the profiler saw no kernels inside the graph replay)"
    return summarize_kernels(kernels, source)


def build_hf_reference(checkpoint: Path, prompt_len: int, new_tokens: int, device: torch.device, dtype: str):
    """transformers' logits and greedy tokens (inference/reference.py) for CHECK_BATCH prompts; its model is
    loaded and freed before ours is."""
    from inference.reference import build_reference
    from inference.tokenizer import load_tokenizer, make_prompts

    tokenizer = load_tokenizer(checkpoint)
    prompts = make_prompts(tokenizer, CHECK_BATCH, prompt_len)
    reference = build_reference(checkpoint, {prompt_len: prompts}, [(prompt_len, CHECK_BATCH)],
                                new_tokens=new_tokens, dtype=dtype, device=device)
    return reference, prompts.input_ids, tokenizer.eos_token_id


def hf_check(model, reference, input_ids: torch.Tensor, eos: int | None, new_tokens: int) -> dict:
    """Our prefill logits and graph-decoded greedy tokens against transformers' on the same prompts."""
    batch, prompt_len = input_ids.shape
    expected = reference.logits[prompt_len].float()
    ids = input_ids.to(model.device)
    cache = KVCache.allocate(model.cfg, batch=batch, capacity=prompt_len, device=model.device, dtype=model.dtype)
    with torch.no_grad():
        logits = model.prefill(ids, cache, logits_positions=expected.shape[1]).float().cpu()
    del cache
    logits_check = compare_logits(expected, logits, f"prefill, batch {batch}, prompt {prompt_len}")
    decoder = GreedyDecoder(model, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, banned_token=eos)
    decoder.capture(ids)
    tokens = decoder.generate(ids).tolist()
    generation = reference.generations[(prompt_len, batch)]
    token_check = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens,
                               noise=logits_check.max_abs_diff)
    decoder.release()
    return {"prompt_len": prompt_len, "batch": batch, "logits": logits_check.to_dict(),
            "tokens": token_check.to_dict(), "passed": logits_check.passed and token_check.passed}


def run_row(model, cfg, *, name: str, batch: int, prompt_len: int, args, device, bandwidth: float | None, dtype: str,
            params: int) -> dict:
    clock = Clock(device)
    row = {"model": name, "params": params, "batch": batch, "prompt_len": prompt_len,
           "new_tokens": args.new_tokens, "status": "ok"}
    decoder = None
    try:
        decoder = GreedyDecoder(model, batch=batch, prompt_len=prompt_len, new_tokens=args.new_tokens,
                                banned_token=EOS, compile=args.compile, branches=False if args.one_stream else None,
                                pdl=args.pdl, pdl_prefetch=args.pdl_prefetch,
                                pdl_late=args.pdl_late, splits=args.splits, norm_in_gemv=not args.norms_apart,
                                join_inputs=not args.inputs_apart,
                                qkv_first=args.qkv_first, attention_tile=args.attention_tile)
        gen = torch.Generator(device="cpu").manual_seed(batch * 100003 + prompt_len)
        ids = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen).to(device)
        started = time.perf_counter()
        decoder.capture(ids)  # prefill, warm-up, capture (and compile)
        row["capture_s"] = time.perf_counter() - started
        prefill = summarize(time_prefill(decoder, ids, clock, 2 if batch * prompt_len < 2**15 else 1))
        steps = summarize(time_steps(decoder, clock, args.repeats))
        floors = decode_floors(cfg, batch=batch, prompt_len=prompt_len, new_tokens=args.new_tokens, dtype=dtype,
                               tensor_parallel=1, bandwidth_tbps=bandwidth, peak_tflops=None)
        row.update({
            "step_ms": steps.median_ms, "step_p10_ms": steps.p10_ms, "step_p90_ms": steps.p90_ms,
            "step_min_ms": steps.min_ms, "steps_timed": steps.repeats, "step_outliers": steps.outliers,
            "prefill_ms": prefill.median_ms, "prefills_timed": prefill.repeats,
            "floor_ms": floors.decode_floor_ms, "weight_bytes": floors.weight_bytes, "kv_bytes": floors.kv_bytes,
            "context_mean": floors.context_mean,
            "step_vs_floor": steps.median_ms / floors.decode_floor_ms if floors.decode_floor_ms else None,
            "graph": decoder.graph is not None, "compile": decoder.compile_status, "branches": decoder.branch_status,
            "pdl": decoder.pdl_status, "norm_in_gemv": decoder.norm_in_gemv, "join_inputs": decoder.join_inputs,
            "qkv_first": decoder.qkv_first, "splits": decoder.splits.count, "attention_tile": decoder.splits.tile.name,
            "cache_gb": decoder.cache.bytes / 2**30,
        })
        kernels = None if args.no_trace else trace_row(decoder, device)
        traced_kv = kv_bytes_per_decode_step(cfg, batch=batch, context=prompt_len + 1, dtype=dtype)
        why = holds_back(steps.median_ms, kernels, weight_bytes=floors.weight_bytes, kv_bytes=traced_kv,
                         bandwidth_tbps=bandwidth)
        row.update({"kernels": kernels.count if kernels else None, "kernel_us": kernels.total_us if kernels else None,
                    "min_kernel_us": kernels.min_us if kernels else None,
                    "shortest_kernel": kernels.shortest if kernels else None,
                    "kernel_source": kernels.source if kernels else None,
                    "kernel_classes": kernels.by_class if kernels else None,
                    **{k: v for k, v in why.items() if k != "excess_ms"}, "excess_ms": why.get("excess_ms")})
        row["graph_check"] = graph_check(decoder)
        if not row["graph_check"]["passed"]:
            row["status"] = "mismatch"
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", reason=str(exc).splitlines()[0][:200])
    except Exception as exc:  # noqa: BLE001 - one row failing must not lose the rest of the run
        row.update(status="error", reason=f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")
    finally:
        if decoder is not None:
            decoder.release()
        del decoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def describe(row: dict) -> str:
    head = f"{row['model']:>13} b={row['batch']:<3} p={row['prompt_len']:<5}"
    if row["status"] in ("oom", "error"):
        return f"{head} {row['status']}: {row.get('reason', '')}"
    ratio = f"{row['step_vs_floor']:.2f}x" if row.get("step_vs_floor") else "-"
    floor = f"{row['floor_ms']:.3f}" if row.get("floor_ms") else "-"
    kernels = ""
    if row.get("kernels"):
        rates = ", ".join(f"{what} {row[key]:.2f} TB/s" for what, key in (("GEMV", "gemv_tbps"),
                                                                          ("attention", "attention_tbps"))
                          if row.get(key))
        kernels = (f", {row['kernels']} kernels (min {row['min_kernel_us']:.1f} us; {rates}), "
                   f"holds back: {row['holds_back']}")
    return (f"{head} step {row['step_ms']:.3f} ms (p10 {row['step_p10_ms']:.3f}, p90 {row['step_p90_ms']:.3f}) "
            f"floor {floor} ms = {ratio}; prefill {row['prefill_ms']:.1f} ms{kernels}"
            f"{'' if row['graph_check']['passed'] else '  [GRAPH CHECK FAILED]'}"
            f"{'  [pdl ' + row['pdl'] + ']' if 'fell back' in str(row.get('pdl', '')) else ''}")


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for label, applies, limit in TARGETS:
        for r in rows:
            if r["status"] == "ok" and r.get("step_vs_floor") and applies(r):
                out.append({"target": label, "limit": limit, "model": r["model"], "batch": r["batch"],
                            "prompt_len": r["prompt_len"], "step_vs_floor": r["step_vs_floor"],
                            "met": r["step_vs_floor"] <= limit})
    return out


def write(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(record, indent=1, default=str))
    flat = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in record["rows"]]
    pd.DataFrame(flat).to_csv(out / "decode.csv", index=False)


def run_model(name: str, index: int, args, device: torch.device, dtype: str, bandwidth: float | None,
              rows: list[dict]) -> dict:
    """Build (or reuse) the checkpoint, check against transformers, load ours, measure every row."""
    spec = BenchSpec(models=(name,), engines=("neox-graph",), batches=args.batches, prompt_lens=args.contexts,
                     new_tokens=args.new_tokens, checkpoints=args.checkpoints, dtype=dtype)
    bench_model = fit_model(resolve_model(name), spec)  # enough positions for the longest prompt
    info: dict = {"model": name}
    t = time.perf_counter()
    checkpoint = ensure_checkpoint(bench_model, args.checkpoints, device=device, log=print)
    info["checkpoint"], info["checkpoint_s"] = str(checkpoint), time.perf_counter() - t
    reference = None
    if args.check == "all" or (args.check == "first" and index == 0):
        t = time.perf_counter()
        reference = build_hf_reference(checkpoint, min(args.contexts), args.new_tokens, device, dtype)
        info["reference_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = load_causal_lm(checkpoint, device=device, dtype=getattr(torch, dtype))
    info["load_s"] = time.perf_counter() - t
    cfg = model.cfg
    params = count_parameters(cfg).total
    info.update({"params": params, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
                 "num_attention_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim,
                 "rotary_dims": cfg.rotary_dims, "vocab": cfg.embedding_rows, "residual": cfg.residual})
    try:
        if reference is not None:
            t = time.perf_counter()
            info["hf_check"] = hf_check(model, *reference, args.new_tokens)
            info["hf_check_s"] = time.perf_counter() - t
            got = info["hf_check"]
            print(f"{name}: transformers check {'pass' if got['passed'] else 'FAIL'}: logits max |diff| "
                  f"{got['logits']['max_abs_diff']:.3g} (largest {got['logits']['ref_max_abs']:.3g}), "
                  f"tokens: {got['tokens']['verdict']}")
        t = time.perf_counter()
        for prompt_len in args.contexts:
            for batch in args.batches:
                row = run_row(model, cfg, name=name, batch=batch, prompt_len=prompt_len, args=args, device=device,
                              bandwidth=bandwidth, dtype=dtype, params=params)
                rows.append(row)
                print(describe(row), flush=True)
        info["rows_s"] = time.perf_counter() - t
    finally:
        del model
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = "float16" if cuda else "float32"  # fp16 matmuls on a CPU are slow or missing
    models = [m for m in args.models.split(",") if m.strip()]
    tuned = {}
    if args.gemm_tune:  # before any model is built: the plans are looked up as each step is captured
        from models import decode_gemm

        tuned = decode_gemm.tuned_table(json.loads(args.gemm_tune.read_text())["points"])
        decode_gemm.GEMM_TABLE = decode_gemm.merged_table(tuned)
    bandwidth = measure_copy_bandwidth(device, gigabytes=2.0 if cuda else 0.0625)
    if cuda:
        torch.cuda.empty_cache()
    record = {
        "environment": environment(device), "copy_bandwidth": bandwidth,
        "settings": {"models": models, "batches": list(args.batches), "prompt_lens": list(args.contexts),
                     "new_tokens": args.new_tokens, "repeats": args.repeats, "dtype": dtype,
                     "compile": args.compile, "one_stream": args.one_stream, "splits": args.splits,
                     "pdl": args.pdl, "pdl_prefetch": args.pdl_prefetch if args.pdl else None,
                     "pdl_late": args.pdl_late if args.pdl else None, "norm_in_gemv": not args.norms_apart,
                     "join_inputs": not args.inputs_apart,
                     "qkv_first": "auto (batch 1)" if args.qkv_first is None else args.qkv_first,
                     "attention_tile": args.attention_tile.name if args.attention_tile else None,
                     "gemm_tune": {f"{n}x{k}": [[lo, hi, plan.name] for lo, hi, plan in entries]
                                   for (n, k), entries in tuned.items()} if args.gemm_tune else None,
                     "check": args.check, "timing": "CUDA events between graph replays, one sync per pass; "
                     "repeats x (new_tokens - 1) steps from the state after prefill, after one untimed pass"},
        "models": [], "rows": [], "targets": [],
    }
    print(f"{record['environment'].get('gpu_name') or 'cpu'}: copy bandwidth {bandwidth['tbps']:.2f} TB/s; "
          f"{dtype}; rows {list(args.batches)} x {list(args.contexts)}, {args.new_tokens} tokens, "
          f"{args.repeats} repeats")
    for index, name in enumerate(models):
        try:
            record["models"].append(run_model(name, index, args, device, dtype, bandwidth["tbps"], record["rows"]))
        except Exception as exc:  # noqa: BLE001 - a model that cannot be built or loaded: say so, go on
            record["models"].append({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            print(f"{name}: failed: {record['models'][-1]['error']}")
        if cuda:
            torch.cuda.empty_cache()
        record["targets"] = targets(record["rows"])
        record["wall_s"] = time.perf_counter() - started
        write(args.out, record)
    print(f"\ntargets ({time.perf_counter() - started:.0f} s in all):")
    for t in record["targets"]:
        print(f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {t['model']} b={t['batch']} p={t['prompt_len']} "
              f"{t['step_vs_floor']:.2f}x (<= {t['limit']})")
    checks = [m for m in record["models"] if "hf_check" in m]
    graph_checked = [r for r in record["rows"] if "graph_check" in r]
    failed = ([m["model"] for m in checks if not m["hf_check"]["passed"]] +
              [f"{m['model']} ({m['error']})" for m in record["models"] if "error" in m] +
              [f"{r['model']} b={r['batch']} p={r['prompt_len']} ({r['status']})" for r in record["rows"]
               if r["status"] in ("mismatch", "error")])
    print(f"checks: {len(checks)} models against transformers, {len(graph_checked)} rows graph vs plain torch; "
          f"{'all passed' if not failed else 'FAILED: ' + '; '.join(failed)}")
    print(f"wrote {args.out / 'decode.json'} and {args.out / 'decode.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

"""The decode engine's prefill against the layer profiler's forward x layers + logits, same shape (issue 20 item 3).

For each model and (batch, prompt length) cell, three subjects in the advisor's shuffled interleaved rounds
(profiler.advisor.measure.time_rounds: every bench call after a keep-busy chain, one power state for all):

- `engine prefill, all logits`: NeoXCausalLM.prefill of the prompt (its KV cache written), logits at every
  position: the same work as the profiled layer stack + logit layer;
- `layer forward`: the profiler's GPT-NeoX layer (models/layer.py, build_layer, the config's attention) at
  (b, s), forward only; and `logits forward`: its logit layer (final norm + h -> v GEMM) over b*s tokens;
- `engine prefill, last logits`: the same prefill as served (logits of the last position only), for the record.

Per round: prefill / (L x layer + logits); the result is the median over rounds with its min and max. Target:
within 10% (ratio between 0.90 and 1.10). Writes DIR/prefill_vs_layers.json (environment with git SHA, GPU,
torch/CUDA, dtype, settings, per-round rows) and DIR/prefill_vs_layers.csv. On a CPU: a tiny config, wiring only.

Usage: python scripts/bench_prefill_vs_layers.py --out DIR [--models pythia-1b,pythia-2.8b]
       [--cells 1x2048,4x2048,16x512] [--rounds 5] [--attention flash]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from inference.carryover_measure import parse_cells  # noqa: E402
from models import load_config  # noqa: E402
from models.causal_lm import KVCache, NeoXCausalLM  # noqa: E402
from models.layer import LogitLayer, build_layer, random_input  # noqa: E402
from profiler.advisor.measure import Subject, time_rounds  # noqa: E402
from profiler.hardware import environment  # noqa: E402
from profiler.layer_profile import make_step  # noqa: E402

LIMIT = 0.10


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="pythia-1b,pythia-2.8b")
    p.add_argument("--cells", default="1x2048,4x2048,16x512", help="batch x prompt length, comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--attention", default="flash", help="the profiled layer's attention (the engine's prefill runs SDPA)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    return p.parse_args(argv)


def subjects_for(cfg, device, dtype) -> tuple[list[Subject], list]:
    torch.manual_seed(0)
    model = NeoXCausalLM(cfg, device=device, dtype=dtype).eval()
    b, s = cfg.micro_batch_size, cfg.seq_length
    cache = KVCache.allocate(cfg, batch=b, capacity=s, device=device, dtype=dtype)
    ids = torch.randint(3, cfg.vocab_size, (b, s), generator=torch.Generator().manual_seed(1)).to(device)

    def prefill(positions):
        def step():
            with torch.no_grad():
                return model.prefill(ids, cache, logits_positions=positions)
        return step

    layer = build_layer(cfg, device=device, dtype=dtype).eval()
    head = LogitLayer(cfg, device=device, dtype=dtype).eval()
    x = random_input(cfg, device=device, dtype=dtype)
    subjects = [Subject("engine prefill, all logits", {"prefill": prefill(s)}),
                Subject("engine prefill, last logits", {"prefill": prefill(1)}),
                Subject("layer forward", {"forward": make_step(layer, x, False)}),
                Subject("logits forward", {"forward": make_step(head, random_input(cfg, device=device, dtype=dtype),
                                                                False)})]
    return subjects, [model, cache, layer, head, x]


def summarise(rounds: pd.DataFrame, layers: int) -> dict:
    t = rounds.pivot_table(index="round", columns="candidate", values="time_ms")
    stack = layers * t["layer forward"] + t["logits forward"]
    ratio = t["engine prefill, all logits"] / stack
    served = t["engine prefill, last logits"] / stack
    return {"prefill_ms": float(t["engine prefill, all logits"].median()),
            "prefill_last_ms": float(t["engine prefill, last logits"].median()),
            "layer_ms": float(t["layer forward"].median()), "logits_ms": float(t["logits forward"].median()),
            "stack_ms": float(stack.median()), "ratio": float(ratio.median()), "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()), "served_ratio": float(served.median()),
            "within_10pct": bool(abs(ratio.median() - 1.0) <= LIMIT), "rounds": int(len(t))}


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype_name = "float16" if cuda else "float32"
    dtype = getattr(torch, dtype_name)
    cells = parse_cells(args.cells, "--cells")
    record = {"environment": environment(device), "settings": {**{k: v for k, v in vars(args).items() if k != "out"},
              "dtype": dtype_name, "timing": "profiler.advisor.measure.time_rounds: shuffled interleaved rounds, "
              "bench (CUDA events) after a keep-busy chain per call; ratio per round, median over rounds"},
              "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)
    frames = []
    for name in [m for m in args.models.split(",") if m.strip()]:
        base = load_config(name)
        for batch, prompt_len in cells:
            cfg = dataclasses.replace(base, micro_batch_size=batch, seq_length=prompt_len, attention=args.attention,
                                      dtype=dtype_name, max_position_embeddings=max(base.max_position_embeddings,
                                                                                    prompt_len))
            row = {"model": name, "batch": batch, "prompt_len": prompt_len, "layers": cfg.num_layers,
                   "attention": args.attention}
            held = []
            try:
                subjects, held = subjects_for(cfg, device, dtype)
                rounds = time_rounds(subjects, rounds=args.rounds, device=device, seed=batch * 7 + prompt_len)
                frames.append(rounds.assign(model=name, batch=batch, prompt_len=prompt_len))
                row.update(summarise(rounds, cfg.num_layers), status="ok")
                print(f"{name} b={batch} p={prompt_len}: prefill {row['prefill_ms']:.2f} ms vs {cfg.num_layers} x layer "
                      f"{row['layer_ms']:.3f} + logits {row['logits_ms']:.3f} = {row['stack_ms']:.2f} ms: "
                      f"{row['ratio']:.3f}x [{row['ratio_min']:.3f}, {row['ratio_max']:.3f}] "
                      f"({'within' if row['within_10pct'] else 'OUTSIDE'} 10%); served (last logits) "
                      f"{row['prefill_last_ms']:.2f} ms", flush=True)
            except torch.cuda.OutOfMemoryError as exc:
                row.update(status="oom", reason=str(exc).splitlines()[0][:200])
                print(f"{name} b={batch} p={prompt_len}: out of memory, skipped", flush=True)
            finally:
                del held
                if cuda:
                    torch.cuda.empty_cache()
            record["rows"].append(row)
            record["wall_s"] = time.perf_counter() - started
            (args.out / "prefill_vs_layers.json").write_text(json.dumps(record, indent=1, default=str))
    pd.DataFrame(record["rows"]).to_csv(args.out / "prefill_vs_layers.csv", index=False)
    if frames:
        pd.concat(frames).to_csv(args.out / "rounds.csv", index=False)
    from reports.decode_bench_report import write_report

    write_report(args.out)
    ok = [r for r in record["rows"] if r.get("status") == "ok"]
    print(f"{sum(r['within_10pct'] for r in ok)} of {len(ok)} cells within 10% "
          f"({time.perf_counter() - started:.0f} s); wrote {args.out / 'prefill_vs_layers.json'} and report.html")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

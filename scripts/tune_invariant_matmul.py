"""Issue 21, tuning sweep: small-M tiles and fixed split-K for the invariant matmul, against cuBLAS, on one GPU.

For the weight GEMMs of pythia-1b, pythia-6.9b and llama-2-7b-like (bf16) at M in {1, 2, 4, ..., 256}:

- baselines: `torch` (F.linear, cuBLAS defaults), `cublaslt` (split-K off), `plan` (the M-bucketed Triton plan
  of tiles.py as committed), `large` (the plan's largest-M tile at every M: the reference of the Triton side);
- `tri BMxBNxBK wW sS`: the Triton kernel (matmul.py, unchanged) with one candidate tile at every M: small
  BLOCK_M (64 = wgmma, 16 = mma.sync), narrow BLOCK_N, BLOCK_K 64..256, several pipeline depths;
- `split S BMxBNxBK`: K cut into S chunks fixed per shape (splitk.py, split launch + ordered reduction), and
  at M >= 1024 the same tree walked inline by the large tile (`inline S`), against `large`, for its cost there.

Every kernel's rows are compared bitwise: across M (its M-row product vs the first M rows of its largest
product, `self_equal`), and against the largest products of `large`, `cublaslt` and `torch` (`eq_large`,
`eq_cublaslt`, `eq_torch`: two kernels that agree bit for bit can split the M range between them). Times are
CUDA-graph replays (one call per replay, L2 flushed before each by profiler.timing.bench), so they are GPU
time without the host's launch cost; `eager_us` (baselines only) is the same call launched from Python.

Usage: python scripts/tune_invariant_matmul.py --out DIR [--budget-s 150] [--device cpu --tiny]
Writes DIR/tune.csv (one row per shape x kernel x M), DIR/tune_best.csv, DIR/tune.json, DIR/tune.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

T0 = time.perf_counter()
CONFIGS = ("pythia-1b", "pythia-6.9b", "llama-2-7b-like")
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LARGE_TOKENS = (1024, 4096, 8192)
SMEM = 220 * 1024


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


# ---- candidates ---------------------------------------------------------------------------------------------
def tri_configs(tiny: bool):
    from models.invariant.tiles import MatmulConfig

    if tiny:  # the interpreter: a few shapes of each kind
        return {"decode": [MatmulConfig(16, 16, 32, num_warps=4, num_stages=2), MatmulConfig(64, 16, 64, num_warps=4)],
                "batch": [MatmulConfig(32, 32, 32, num_warps=4, num_stages=2)]}
    decode = []
    for bk, depths in ((64, (6, 10)), (128, (4, 6)), (256, (3, 5))):
        for bn in (16, 32, 64):
            for st in depths:
                if (64 + bn) * bk * 2 * st <= SMEM:
                    decode.append(MatmulConfig(64, bn, bk, num_warps=4, num_stages=st))
    for bk in (128, 256):
        for bn in (32, 64):
            for st in (4, 6):
                if (16 + bn) * bk * 2 * st <= SMEM:
                    decode.append(MatmulConfig(16, bn, bk, num_warps=4, num_stages=st))
    batch = [MatmulConfig(64, 128, 64, num_warps=4, num_stages=4)]
    for bn in (64, 128):
        for bk in (64, 128):
            for st in (3, 4):
                if (128 + bn) * bk * 2 * st <= SMEM:
                    batch.append(MatmulConfig(128, bn, bk, num_warps=8, num_stages=st))
    return {"decode": decode, "batch": batch}


def split_configs(n: int, k: int, tiny: bool):
    """(chunks, block_m, block_n, block_k, warps, stages): chunk counts that leave >= 512 of K per chunk."""
    if tiny:
        return [(2, 16, 16, 32, 4, 2), (3, 16, 16, 16, 4, 2)]
    out = []
    for chunks in (2, 4, 8):
        if k // chunks < 512:
            continue
        for bn in (32, 64, 128):
            if (n // bn) * chunks > 8 * 132 or (n // bn) * chunks < 132:
                continue  # too few programs to matter, or so many that the workspace traffic dominates
            out.append((chunks, 64, bn, 64, 4, 6))
    return out


def single_plan(cfg):
    from models.invariant.tiles import Bucket, MatmulPlan

    return MatmulPlan("tune", (Bucket(None, (cfg,)),))


# ---- timing ----------------------------------------------------------------------------------------------
def graph_of(fn, a):
    """A CUDA graph of one call fn(a) (warmed up on a side stream first, as torch.cuda.graph asks)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(a)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(a)
    return graph


def time_us(fn, a, device, graphed: bool) -> float:
    from profiler.timing import bench, summarize

    kw = dict(warmup_ms=1.0, rep_ms=4.0, min_reps=10 if device.type == "cuda" else 1, max_warmup_ms=30.0,
              device=device)
    if device.type == "cuda" and graphed:
        graph = graph_of(fn, a)
        try:
            return summarize(bench(graph.replay, **kw)).median_ms * 1e3
        finally:
            del graph
    return summarize(bench(lambda: fn(a), **kw)).median_ms * 1e3


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    from models.invariant.probe import bitwise_equal

    return bitwise_equal(a, b)


# ---- precompile in parallel (Triton compiles one kernel at a time per process) -----------------------------
def _compile_job(job):
    try:
        import torch as t

        from models.invariant.matmul import invariant_linear
        from models.invariant.splitk import chunked_linear
        from models.invariant.tiles import MatmulConfig

        kind, params, bias = job
        dev = t.device("cuda")
        n, k = 256, 1024
        x = t.randn(3, k, device=dev, dtype=t.bfloat16)
        w = t.randn(n, k, device=dev, dtype=t.bfloat16)
        b = t.randn(n, device=dev, dtype=t.bfloat16) if bias else None
        if kind == "tri":
            invariant_linear(x, w, b, plan=single_plan(MatmulConfig(*params[:3], num_warps=params[3], num_stages=params[4])))
        else:
            chunks, bm, bn, bk, warps, stages, split = params
            chunked_linear(x, w, b, chunks=chunks, block_m=bm, block_n=bn, block_k=bk, split=split,
                           num_warps=warps, num_stages=stages)
        t.cuda.synchronize()
        return None
    except Exception as exc:  # noqa: BLE001 - the main process compiles it again and says why
        return f"{job}: {type(exc).__name__}: {str(exc)[:120]}"


def precompile(jobs, workers: int) -> None:
    import concurrent.futures as cf
    import multiprocessing as mp

    started = time.perf_counter()
    errors = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for result in pool.map(_compile_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))):
            if result:
                errors.append(result)
    log(f"precompiled {len(jobs)} kernels on {workers} processes in {time.perf_counter() - started:.1f} s"
        + (f"; {len(errors)} failed (first: {errors[0]})" if errors else ""))


# ---- the sweep --------------------------------------------------------------------------------------------
def sweep_shape(shape, dtype, device, tokens, configs, deadline, tiny, rows, extra):
    from models.invariant import cublas_linear, invariant_linear
    from models.invariant.splitk import chunked_linear
    from models.invariant.tiles import plan_for
    from profiler.invariance.matmul_bench import make_operands

    big = max(LARGE_TOKENS) if device.type == "cuda" else max(tokens)
    ops = make_operands(shape, max(big, max(tokens)), dtype=dtype, device=device, seed=11)
    w, b = ops.weight, ops.bias
    x = ops.x[:max(tokens)]
    plan = plan_for(shape.n, shape.k, dtype) if device.type != "cuda" else None
    large_cfg = (plan or plan_for(shape.n, shape.k, dtype, torch.cuda.get_device_properties(device).multi_processor_count)).buckets[-1].configs[0]
    kernels = {
        "torch": ("baseline", lambda a: F.linear(a, w, b), tokens),
        "cublaslt": ("baseline", lambda a: cublas_linear(a, w, b), tokens),
        "plan": ("baseline", lambda a: invariant_linear(a, w, b), tokens),
        "large": ("baseline", lambda a: invariant_linear(a, w, b, plan=single_plan(large_cfg)), tokens),
    }
    for group, cfgs in configs.items():
        timed = tuple(m for m in tokens if (m <= 64) == (group == "decode") or m in (32, 64))
        for cfg in cfgs:
            kernels[f"tri {cfg.label}"] = (group, lambda a, c=cfg: invariant_linear(a, w, b, plan=single_plan(c)), timed)
    splits = split_configs(shape.n, shape.k, tiny)
    for chunks, bm, bn, bk, warps, stages in splits:
        kernels[f"split {chunks} {bm}x{bn}x{bk} w{warps} s{stages}"] = (
            "split", lambda a, p=(chunks, bm, bn, bk, warps, stages): chunked_linear(
                a, w, b, chunks=p[0], block_m=p[1], block_n=p[2], block_k=p[3], split=True, num_warps=p[4],
                num_stages=p[5]), tokens)
    refs = {}
    with torch.inference_mode():
        for name in ("large", "cublaslt", "torch"):
            refs[name] = kernels[name][1](x)
        exact = F.linear(x.float(), w.float(), None if b is None else b.float())
        for name, (group, fn, timed) in kernels.items():
            if time.perf_counter() > deadline:
                extra["skipped"].append(f"{shape.label} {name}")
                continue
            try:
                full = fn(x)
                err = float((full.float() - exact).abs().max())
                for m in tokens:
                    out = fn(x[:m])
                    row = {"component": shape.component, "n": shape.n, "k": shape.k, "bias": shape.bias,
                           "kernel": name, "group": group, "m": m, "self_equal": bits_equal(out, full[:m]),
                           "eq_large": bits_equal(out, refs["large"][:m]),
                           "eq_cublaslt": bits_equal(out, refs["cublaslt"][:m]),
                           "eq_torch": bits_equal(out, refs["torch"][:m]), "max_err_vs_fp32": err,
                           "graph_us": None, "eager_us": None}
                    if m in timed:
                        row["graph_us"] = time_us(fn, x[:m], device, graphed=True)
                        if group == "baseline":
                            row["eager_us"] = time_us(fn, x[:m], device, graphed=False)
                    rows.append(row)
            except Exception as exc:  # noqa: BLE001 - one candidate that does not fit says why, the rest run
                extra["failed"].append(f"{shape.label} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
        # split-K's tree at large M: the large tile walking the same chunks inline, against the plain large tile
        if device.type == "cuda":
            xb = ops.x
            for chunks in sorted({s[0] for s in splits}):
                if time.perf_counter() > deadline:
                    break
                try:
                    inline = lambda a, c=chunks: chunked_linear(a, w, b, chunks=c, block_m=large_cfg.block_m,
                                                                block_n=large_cfg.block_n, block_k=large_cfg.block_k,
                                                                split=False, num_warps=large_cfg.num_warps,
                                                                num_stages=large_cfg.num_stages)
                    split_ref = next((kernels[k][1] for k in kernels if k.startswith(f"split {chunks} ")), None)
                    same = bits_equal(inline(x), split_ref(x)) if split_ref else None
                    for m in LARGE_TOKENS:
                        rows.append({"component": shape.component, "n": shape.n, "k": shape.k, "bias": shape.bias,
                                     "kernel": f"inline {chunks}", "group": "inline", "m": m,
                                     "self_equal": None, "eq_large": None, "eq_cublaslt": None, "eq_torch": None,
                                     "eq_split": same, "graph_us": time_us(inline, xb[:m], device, True),
                                     "eager_us": None, "max_err_vs_fp32": None})
                except Exception as exc:  # noqa: BLE001
                    extra["failed"].append(f"{shape.label} inline {chunks}: {type(exc).__name__}: {str(exc)[:150]}")
            for name in ("torch", "large", "cublaslt"):
                fn = kernels[name][1]
                for m in LARGE_TOKENS:
                    if time.perf_counter() > deadline:
                        break
                    rows.append({"component": shape.component, "n": shape.n, "k": shape.k, "bias": shape.bias,
                                 "kernel": name, "group": "baseline", "m": m, "graph_us": time_us(fn, xb[:m], device, True)})


def best_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per shape and M: cuBLAS default's time, and the fastest candidate of each kind that is bitwise invariant
    across M and equal to the large tile (so it can share the M range with it), with its ratio."""
    out = []
    timed = df[df["graph_us"].notna() & (df["m"] <= max(TOKENS))]
    for (comp, n, k, m), g in timed.groupby(["component", "n", "k", "m"], sort=False):
        base = g[g["kernel"] == "torch"]
        if base.empty:
            continue
        t_torch = float(base["graph_us"].iloc[0])
        row = {"component": comp, "n": n, "k": k, "m": m, "torch_us": t_torch,
               "torch_eager_us": base["eager_us"].iloc[0]}
        for name in ("cublaslt", "plan", "large"):
            hit = g[g["kernel"] == name]
            if not hit.empty:
                row[f"{name}_ratio"] = t_torch / float(hit["graph_us"].iloc[0])
        for kind, mask in (("tri", g["kernel"].str.startswith("tri ")), ("split", g["kernel"].str.startswith("split "))):
            ok = g[mask & (g["self_equal"] == True)]  # noqa: E712 - None (not compared) is not True
            if kind == "tri":
                ok = ok[ok["eq_large"] == True]  # noqa: E712
            if not ok.empty:
                top = ok.loc[ok["graph_us"].idxmin()]
                row[f"best_{kind}"] = top["kernel"]
                row[f"best_{kind}_ratio"] = t_torch / float(top["graph_us"])
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="one tiny shape and interpreter-sized tiles (CPU check)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="stop starting new work after this long")
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    args = parser.parse_args(argv)

    import triton

    from models import load_config
    from models.invariant import matmul, splitk
    from models.invariant.tiles import plan_for
    from profiler.invariance import shapes

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU (use --device cpu --tiny)", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    deadline = T0 + args.budget_s
    log(f"torch {torch.__version__} triton {triton.__version__} "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (interpreter)'}")
    if args.tiny:
        gemms = [("tiny", shapes.GemmShape("tiny_down", 48, 192, True)), ("tiny", shapes.GemmShape("tiny_up", 96, 64, False))]
        tokens = (1, 2, 4, 8, 16, 33)
    else:
        gemms = [(c, g) for c in args.configs.split(",") for g in shapes.weight_gemm_shapes(load_config(c))]
        # the weak spots first (cuBLAS default splits K there at small M), should the budget run out
        gemms.sort(key=lambda cg: {"mlp_down": 0, "out_projection": 1}.get(cg[1].component, 2))
        tokens = TOKENS
    configs = tri_configs(args.tiny)
    if device.type == "cuda":
        jobs = [("tri", (c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages), bias)
                for cfgs in configs.values() for c in cfgs for bias in (True, False)]
        seen = set()
        for _, g in gemms:
            for chunks, bm, bn, bk, warps, stages in split_configs(g.n, g.k, args.tiny):
                seen.add((4, bm, bn, bk, warps, stages, True))
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        plan_cfgs = set()
        for _, g in gemms:  # the committed plan's tiles and the large tile of every shape, and its inline walk
            plan = plan_for(g.n, g.k, dtype, sms)
            plan_cfgs |= {(b.configs[0], g.bias) for b in plan.buckets}
            big = plan.buckets[-1].configs[0]
            seen.add((4, big.block_m, big.block_n, big.block_k, big.num_warps, big.num_stages, False))
        jobs += [("tri", (c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages), bias) for c, bias in plan_cfgs]
        jobs += [("split", p, bias) for p in sorted(seen) for bias in (True, False)]
        try:
            precompile(jobs, args.workers)
        except Exception:  # noqa: BLE001 - only a head start; the sweep compiles what is missing
            log(f"precompile failed:\n{traceback.format_exc()}")
    rows: list[dict] = []
    extra = {"skipped": [], "failed": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for cfg_name, g in gemms:
        if time.perf_counter() > deadline:
            extra["skipped"].append(f"{cfg_name} {g.label}: whole shape (over budget)")
            continue
        started = time.perf_counter()
        before = len(rows)
        sweep_shape(g, dtype, device, tokens, configs, deadline, args.tiny, rows, extra)
        for r in rows[before:]:
            r["config"] = cfg_name
        log(f"{cfg_name} {g.label}: {len(rows) - before} rows in {time.perf_counter() - started:.1f} s")
        pd.DataFrame(rows).to_csv(args.out / "tune.csv", index=False)  # kept as it goes
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "tune.csv", index=False)
    best = best_table(df) if not df.empty else pd.DataFrame()
    best.to_csv(args.out / "tune_best.csv", index=False)
    # per kernel: invariant at every M, equal to the large tile / cuBLASLt / torch at every M
    swept = df[(df["group"] != "inline") & (df["m"] <= max(tokens))] if not df.empty else df
    verdicts = (swept.groupby(["component", "n", "k", "kernel"], sort=False)
                [["self_equal", "eq_large", "eq_cublaslt", "eq_torch"]].agg(lambda s: bool(s.fillna(False).all()))
                .reset_index()) if not df.empty else pd.DataFrame()
    verdicts.to_csv(args.out / "tune_verdicts.csv", index=False)
    info = {"environment": {"torch": torch.__version__, "triton": triton.__version__,
                            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                            "git_sha": os.environ.get("CODESIGN_GIT_SHA", "")},
            "tokens": list(tokens), "mma_families": {**matmul.mma_families(), **splitk.mma_families()},
            **extra, "seconds": round(time.perf_counter() - T0, 1)}
    (args.out / "tune.json").write_text(json.dumps(info, indent=1, default=str))
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 40,
                           "display.float_format", "{:,.3f}".format):
        text = "== best bitwise-invariant candidates per shape and M (ratio = cuBLAS default time / candidate time)\n"
        text += best.to_string(index=False) if not best.empty else "(nothing measured)"
        if not verdicts.empty:
            base = verdicts[verdicts["kernel"].isin(["torch", "cublaslt", "plan", "large"])]
            text += "\n== baselines over all swept M (self: rows the same at every M; eq_*: equal to that kernel)\n"
            text += base.to_string(index=False)
            cand = verdicts[~verdicts["kernel"].isin(["torch", "cublaslt", "plan", "large"])]
            text += (f"\n== candidates: {int(cand['self_equal'].sum())}/{len(cand)} self-invariant, "
                     f"{int(cand['eq_large'].sum())} equal to the large tile, {int(cand['eq_cublaslt'].sum())} to cuBLASLt, "
                     f"{int(cand['eq_torch'].sum())} to torch")
            notlarge = cand[cand["self_equal"] & ~cand["eq_large"]]
            text += "\n   self-invariant but not equal to the large tile: " + (
                "; ".join(f"{r.component} {r.kernel}" for r in notlarge.head(12).itertuples()) or "none")
        inline = df[df["group"] == "inline"] if not df.empty else df
        if not inline.empty:
            text += "\n== split-K's tree at large M (inline S, graph us) vs the large tile, and inline == split bitwise\n"
            keys = ["config", "component", "m"]
            large = df[(df["kernel"] == "large") & df["m"].isin(LARGE_TOKENS)][keys + ["graph_us"]]
            torch_l = df[(df["kernel"] == "torch") & df["m"].isin(LARGE_TOKENS)][keys + ["graph_us"]]
            j = inline.merge(large, on=keys, suffixes=("", "_large")).merge(torch_l, on=keys, suffixes=("", "_torch"))
            text += j[["config", "component", "kernel", "m", "graph_us", "graph_us_large", "graph_us_torch",
                       "eq_split"]].to_string(index=False)
    text += f"\n== failed: {len(extra['failed'])}; skipped: {len(extra['skipped'])}; {info['seconds']} s"
    text += "".join(f"\n   {f}" for f in extra["failed"][:20])
    (args.out / "tune.txt").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

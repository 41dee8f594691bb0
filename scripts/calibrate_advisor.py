"""Write the advisor's calibration table of one GPU kind (profiler/advisor/calibration.py), two ways.

1. From committed evidence (CPU; what the committed h100.json / h200.json were built with):

    python scripts/calibrate_advisor.py --from-evidence evidence/h100 --gpu h100 --sweeps-sha 2a60355 \
        --out profiler/advisor/calibration/h100.json
    python scripts/calibrate_advisor.py --from-evidence evidence/h200 --gpu h200 --sweeps-sha 2a60355 \
        --borrow-attention evidence/h100/sweeps/results.csv --out profiler/advisor/calibration/h200.json

   reads every layer run (EVIDENCE/layer/*/components.csv + run.json: each GEMM's in-layer time, its shape from
   the run's config; fused attention forward/backward per head size) and, if present, the sweeps
   (EVIDENCE/sweeps/results.csv: GEMM points, non-causal flash per head size). --borrow-attention adds another
   GPU's non-causal flash sweep for head-size buckets this one never measured (tagged "borrowed"; the model
   scales it by the causal/measured ratio of the buckets both have).

2. Measured on the GPU (one call, a few minutes):

    python scripts/calibrate_advisor.py --out DIR [--budget-s 150] [--configs a,b,...]

   times, with profiler.timing.bench (its warm-up, L2 flush, repetitions), every distinct GEMM of the
   advisor's reference set (forward, dgrad and wgrad shapes of each reference config and of its top modelled
   proposals; eager attention's batched GEMMs for the eager configs) and causal flash attention forward and
   backward for h/a in 32..256 at the reference token counts, in shuffled order, cheapest first until the
   budget is spent; writes DIR/<gpu>.json (the table, with git SHA, GPU, torch/CUDA, protocol) and DIR/log.txt.
   Commit it as profiler/advisor/calibration/<gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import ModelConfig, layer_gemms  # noqa: E402
from profiler.advisor.calibration import ROLE_LAYOUT, points_from_layer_components, points_from_sweeps  # noqa: E402


def git_sha() -> str | None:
    sha = os.environ.get("CODESIGN_GIT_SHA")
    if sha:
        return sha
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- 1. from evidence ------------------------------------------------------------------------------------

def from_evidence(evidence: Path, gpu: str, borrow: Path | None, sweeps_sha: str | None) -> dict:
    gemms, attention, sources = [], [], []
    gpu_name, env0 = None, {}
    for run_json in sorted(evidence.glob("layer/*/run.json")):
        folder = run_json.parent
        run = json.loads(run_json.read_text())
        env = run.get("environment", {})
        gpu_name = gpu_name or env.get("gpu_name")
        env0 = env0 or env
        configs = {c["name"]: ModelConfig(**c["config"]) for c in run.get("configs", []) if c.get("config")}
        components = pd.read_csv(folder / "components.csv")
        rel = str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)
        g, a = points_from_layer_components(components, configs, f"{rel}@{env.get('git_sha')}")
        gemms += g
        attention += a
        sources.append({"folder": rel, "git_sha": env.get("git_sha"), "timestamp": env.get("timestamp"),
                        "torch": env.get("torch"), "cuda": env.get("cuda"), "gemm_points": len(g),
                        "attention_points": len(a), "what": "layer components (in-layer time_us of each GEMM role "
                                                            "and fused attention, median over the run's rounds)"})
    sweeps = evidence / "sweeps" / "results.csv"
    if sweeps.exists():
        results = pd.read_csv(sweeps)
        rel = str(sweeps.relative_to(ROOT)) if sweeps.is_relative_to(ROOT) else str(sweeps)
        g, a = points_from_sweeps(results, rel)
        gemms += g
        attention += a
        gpu_name = gpu_name or results["gpu"].iloc[0]
        sources.append({"folder": rel, "git_sha": sweeps_sha,
                        "gemm_points": len(g), "attention_points": len(a),
                        "what": "GEMM / attention sweeps (median_ms of each ok point; flash non-causal)"})
    if borrow is not None:
        results = pd.read_csv(borrow)
        rel = str(borrow.relative_to(ROOT)) if borrow.is_relative_to(ROOT) else str(borrow)
        _, a = points_from_sweeps(results, f"borrowed from {rel} ({results['gpu'].iloc[0]})")
        # all of them, as non-causal: calibration.flash_rate reads a bucket's causal points first and falls
        # back to non-causal ones (scaled by this table's causal/non-causal ratio) only where it has none
        a = [dict(p, causal=False) for p in a]
        attention += a
        sources.append({"folder": rel, "git_sha": sweeps_sha, "attention_points": len(a),
                        "what": f"borrowed: {results['gpu'].iloc[0]}'s non-causal flash sweep, for the head-size buckets "
                                f"{gpu} did not measure (same GH100 SMs assumed); the model scales non-causal rates by "
                                "this table's causal/non-causal ratio over the buckets measured both ways"})
    # one point per shape and layout (in-layer roles carry theirs; sweep points ran as F.linear): the median of
    # repeats across runs
    gemm_frame = pd.DataFrame(gemms)
    gemm_frame["layout"] = gemm_frame.get("layout", pd.Series(index=gemm_frame.index, dtype=object)).fillna("nt")
    gemm = (gemm_frame.groupby(["batch", "m", "n", "k", "layout"], as_index=False)
            .agg(time_ms=("time_ms", "median"), source=("source", lambda s: "; ".join(sorted(set(s))[:3]))))
    att = (pd.DataFrame(attention).groupby(["pass", "causal", "batch_heads", "seq", "head_dim"], as_index=False)
           .agg(time_ms=("time_ms", "median"), source=("source", lambda s: "; ".join(sorted(set(s))[:3]))))
    return {
        "gpu": gpu, "gpu_name": gpu_name, "dtype": "bfloat16",
        "provenance": {
            "source": f"committed evidence in {evidence.relative_to(ROOT) if evidence.is_relative_to(ROOT) else evidence}",
            "sources": sources, "torch": env0.get("torch"), "cuda": env0.get("cuda"), "driver": env0.get("driver"),
            "protocol": ("layer runs: profiler/protocol.py (sustained back-to-back rounds, L2 flushed per unit, median "
                         "of rounds); in-layer GEMM time per role; sweeps: profiler/sweeps (bench per point)"),
            "built_by": f"python scripts/calibrate_advisor.py --from-evidence {_rel(evidence)} --gpu {gpu}"
                        + (f" --borrow-attention {_rel(borrow)}" if borrow else "")
                        + (f" --sweeps-sha {sweeps_sha}" if sweeps_sha else ""),
            "built_at_commit": git_sha(),
        },
        "gemm": gemm.to_dict("records"), "attention": att.to_dict("records"),
    }


# -- 2. measured on the GPU ------------------------------------------------------------------------------

SHAPES_FILE = ROOT / "profiler" / "advisor" / "calibration" / "reference_shapes.json"


def reference_shapes(names: list[str] | None) -> tuple[list[tuple[str, int, int, int, int]], list[tuple[int, int, int]]]:
    """(GEMMs (layout, batch, m, n, k), flash (batch_heads, seq, head_dim)) of the reference configs and of the
    proposals the advisor would measure for them (with the analytic model and with each committed table,
    so that a calibrated run measures shapes the table has): every forward, dgrad and wgrad shape of their
    layers and logit layers; causal flash at every h/a a candidate at that h and b may take."""
    from profiler.advisor import AdviceOptions, advise, resolve_gpu
    from profiler.advisor.agreement import reference_configs
    from profiler.advisor.candidates import configs_by_name

    gemms, flash = set(), set()
    gpus = [resolve_gpu(k, calibration=c) for k in ("h100", "h200") for c in (None, "auto")]
    for ref in reference_configs(names):
        shapes = {}
        for gpu in gpus:
            advice = advise(ref.config, gpu, AdviceOptions(top=3, space=ref.space, max_proposals=5))
            for c in configs_by_name(ref.config, gpu, ref.space, [ref.config.name, *advice.selected]):
                shapes[c.name] = c
        for c in shapes.values():
            for g in layer_gemms(c, include_logits=True):
                # the roles' shapes as cost_model.gemm_estimates keys them, each in the layout autograd runs it
                for role, shape in (("fprop", (g.m, g.n, g.k)), ("dgrad", (g.m, g.k, g.n)), ("wgrad", (g.k, g.n, g.m))):
                    gemms.add((ROLE_LAYOUT[role] if g.batch == 1 else "bmm", g.batch, *shape))
            if c.attention != "eager":
                for d in range(32, 257, 8):  # every h/a a candidate at this h may take (bucket and neighbours)
                    if (c.hidden_per_gpu * c.micro_batch_size) % d == 0:
                        flash.add((c.micro_batch_size * c.hidden_per_gpu // d, c.seq_length, d))
    return sorted(gemms), sorted(flash)


def load_shapes(path: Path, names: list[str] | None):
    """The committed shape list (written by --write-shapes on a CPU: the candidate search of 14 configs
    takes minutes the GPU run should not spend), or computed now when --configs asks for a subset."""
    if names is None and path.exists():
        doc = json.loads(path.read_text())
        # a list from before layouts holds (batch, m, n, k): each measured as F.linear, as it was then
        gemms = [tuple(g) if isinstance(g[0], str) else ("nt" if g[0] == 1 else "bmm", *g) for g in doc["gemm"]]
        return gemms, [tuple(f) for f in doc["flash"]]
    return reference_shapes(names)


def gemm_operands(layout: str, b: int, m: int, n: int, k: int, *, device, dtype):
    """(a, b, fn): random operands of one (batch x) (m,k)x(k,n) GEMM stored as autograd stores them in
    `layout` (calibration.LAYOUTS; "bmm": unfused attention's batched GEMMs), and the call that runs it."""
    import torch

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    if layout == "bmm":  # (b*a, m, k) x (b*a, k, n)
        x, w = rand(b, m, k), rand(b, k, n)
        return x, w, lambda: torch.bmm(x, w)
    if layout == "nt":  # the forward, as nn.Linear runs it: the weight stored (n, k)
        x, w = rand(m, k), rand(n, k)
        return x, w, lambda: torch.nn.functional.linear(x, w)
    if layout == "nn":  # dgrad: dX (m, k) = dY (m, n) @ W (n, k), here (m, K) @ (K, N) with both row-major
        x, w = rand(m, k), rand(k, n)
        return x, w, lambda: torch.mm(x, w)
    if layout == "tn":  # wgrad: dW = dY^T @ X, the gradient transposed: its key (m, n, k) stores dY (k, n), X (k, m)
        x, w = rand(k, n), rand(k, m)
        return x, w, lambda: torch.mm(x.t(), w)
    raise ValueError(f"unknown GEMM layout {layout!r}")


def measure(out: Path, budget_s: float, names: list[str] | None, *, on_cpu: bool = False,
            max_shapes: int | None = None, attention_from: Path | None = None) -> int:
    import contextlib

    import torch

    from profiler.hardware import environment
    from profiler.timing import bench, summarize

    if not on_cpu and not torch.cuda.is_available():
        print("no CUDA device: the measured table needs the GPU (use --from-evidence on a CPU)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.device("cpu") if on_cpu else torch.device("cuda", 0)
    env = environment(device)
    gpu = next((k for k in ("h100", "h200", "a100", "v100") if k in (env["gpu_name"] or "").lower()), "cpu-wiring")
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "w")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    gemms, flash = load_shapes(SHAPES_FILE, names)
    say(f"{env['gpu_name']}: {len(gemms)} GEMM shapes, {len(flash)} flash shapes; budget {budget_s:.0f} s")
    rng = random.Random(0)
    kept_doc = json.loads(attention_from.read_text()) if attention_from else None
    kept = kept_doc["attention"] if kept_doc else None
    if kept is not None:  # GEMMs only: the fused-attention points of a table measured before are kept as they are
        say(f"attention: {len(kept)} points kept from {_rel(attention_from)}, not measured")
        flash = []
    jobs = [("gemm", s) for s in gemms] + [("flash", s) for s in flash]
    rng.shuffle(jobs)  # a cut budget leaves a random subset, not the large shapes only
    if max_shapes is not None:
        jobs = jobs[:max_shapes]
    budget = {"warmup_ms": 10.0, "rep_ms": 25.0, "min_reps": 5} if not on_cpu else {"warmup_ms": 1.0, "rep_ms": 2.0,
                                                                                   "min_reps": 2}
    table = {"gpu": gpu, "gpu_name": env["gpu_name"] or "cpu (wiring only)", "dtype": "bfloat16", "gemm": [],
             "attention": list(kept or [])}
    if kept_doc:  # where the kept points were measured: their table's own provenance
        table["attention_provenance"] = {"kept_from": _rel(attention_from), **kept_doc.get("provenance", {})}

    def flash_only():  # a fresh context each time (a generator-based context manager is single-use)
        return (contextlib.nullcontext() if on_cpu else
                torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION))
    dtype = torch.bfloat16
    for i, (kind, shape) in enumerate(jobs):
        if time.perf_counter() - started > budget_s:
            say(f"budget reached after {i} of {len(jobs)} shapes")
            break
        try:
            if kind == "gemm":
                layout, b, m, n, k = shape
                x, w, fn = gemm_operands(layout, b, m, n, k, device=device, dtype=dtype)
                stats = summarize(bench(fn, device=device, **budget))
                table["gemm"].append({"batch": b, "m": m, "n": n, "k": k, "layout": layout, "time_ms": stats.median_ms,
                                      "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms, "source": "measured"})
                del x, w, fn
            else:
                bh, s, d = shape
                q, k_, v = (torch.randn(1, bh, s, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                sdpa = torch.nn.functional.scaled_dot_product_attention
                with flash_only():
                    fwd = summarize(bench(lambda: sdpa(q, k_, v, is_causal=True), device=device, **budget))
                    o = sdpa(q, k_, v, is_causal=True)
                    g = torch.randn_like(o)
                    both = summarize(bench(lambda: torch.autograd.grad(sdpa(q, k_, v, is_causal=True), (q, k_, v), g),
                                           device=device, **budget))
                for pass_name, ms in (("forward", fwd.median_ms), ("backward", max(both.median_ms - fwd.median_ms, 1e-6))):
                    table["attention"].append({"pass": pass_name, "causal": True, "batch_heads": bh, "seq": s,
                                               "head_dim": d, "time_ms": ms, "source": "measured (backward: "
                                               "forward+backward minus forward)"})
                del q, k_, v, o, g
        except Exception as exc:  # noqa: BLE001 - one shape failing (memory) must not lose the table
            say(f"{kind} {shape}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        torch.cuda.empty_cache()
        if i % 50 == 0:
            say(f"{i}/{len(jobs)} shapes, {time.perf_counter() - started:.0f} s")
            _write(out, gpu, table, env, budget, started)
    _write(out, gpu, table, env, budget, started)
    say(f"wrote {out / (gpu + '.json')}: {len(table['gemm'])} GEMM, {len(table['attention'])} attention points in "
        f"{time.perf_counter() - started:.0f} s")
    return 0


def _write(out: Path, gpu: str, table: dict, env: dict, budget: dict, started: float) -> None:
    table["provenance"] = {
        "source": "measured by scripts/calibrate_advisor.py", "git_sha": git_sha() or env.get("git_sha"),
        "built_by": "python scripts/calibrate_advisor.py " + " ".join(sys.argv[1:]),
        "gpu_name": env.get("gpu_name"), "torch": env.get("torch"), "cuda": env.get("cuda"),
        "driver": env.get("driver"), "timestamp": env.get("timestamp"),
        "protocol": (f"profiler.timing.bench per shape ({budget}; warm-up until stable, L2 flushed per call, median "
                     "of repetitions), shapes in shuffled order, random bf16 operands; GEMM: F.linear(x (m,k), w (n,k)) as nn.Linear runs it "
                     "for the forward, torch.mm in the layout autograd uses for dgrad (nn) and wgrad (tn), each point's layout recorded "
                     "(torch.bmm for the batched attention GEMMs); flash: torch SDPA with the FLASH_ATTENTION backend, causal, (1, b*a, s, h/a)"),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    tmp = out / f".{gpu}.json.tmp"
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(out / f"{gpu}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="measured: a folder; --from-evidence: the table file")
    p.add_argument("--from-evidence", type=Path, help="build from a committed evidence folder (CPU)")
    p.add_argument("--gpu", help="--from-evidence: the GPU kind (h100, h200)")
    p.add_argument("--borrow-attention", type=Path, help="--from-evidence: another GPU's sweep results.csv for "
                                                         "flash head-size buckets this one lacks")
    p.add_argument("--sweeps-sha", help="--from-evidence: the commit the sweeps were measured at (their results "
                                        "do not record it; evidence/h100/README.md says 2a60355)")
    p.add_argument("--budget-s", type=float, default=150.0, help="measured: stop after this many seconds (default 150)")
    p.add_argument("--configs", help="measured: comma-separated reference config names (default: all)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="measured: cpu runs a few shapes to prove the wiring (with --max-shapes)")
    p.add_argument("--max-shapes", type=int, help="measured: at most this many shapes (after the shuffle)")
    p.add_argument("--attention-from", type=Path, help="measured: keep this table's fused-attention points and "
                                                       "measure the GEMMs only")
    p.add_argument("--write-shapes", action="store_true", help="CPU: write the reference shape list the measured "
                                                               "run reads (profiler/advisor/calibration/reference_shapes.json)")
    args = p.parse_args(argv)
    if args.write_shapes:
        gemms, flash = reference_shapes(args.configs.split(",") if args.configs else None)
        SHAPES_FILE.write_text(json.dumps({"built_by": "python scripts/calibrate_advisor.py --write-shapes",
                                           "built_at_commit": git_sha(), "gemm": gemms, "flash": flash}) + "\n")
        print(f"wrote {SHAPES_FILE}: {len(gemms)} GEMM and {len(flash)} flash shapes")
        return 0
    if args.from_evidence:
        if not args.gpu:
            p.error("--from-evidence needs --gpu")
        table = from_evidence(args.from_evidence.resolve(), args.gpu,
                              args.borrow_attention.resolve() if args.borrow_attention else None, args.sweeps_sha)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {args.out}: {len(table['gemm'])} GEMM, {len(table['attention'])} attention points")
        return 0
    return measure(args.out, args.budget_s, args.configs.split(",") if args.configs else None,
                   on_cpu=args.device == "cpu", max_shapes=args.max_shapes,
                   attention_from=args.attention_from.resolve() if args.attention_from else None)


if __name__ == "__main__":
    raise SystemExit(main())

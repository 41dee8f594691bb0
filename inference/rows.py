"""One bench row = one model x engine x prompt length x batch: what identifies it, what it measured, and
whether its checks passed. Pure functions from results to the dict written to results.jsonl."""

from __future__ import annotations

import datetime as _dt

from models import count_parameters

from .checkpoints import BenchModel, model_key
from .checks import check_tokens
from .engines.base import BatchResult, Engine
from .metrics import decode_floors, prefill_flops, summarize_generation
from .reference import Reference
from .results import MEASURED
from .spec import BenchSpec


def tensor_parallel_of(engine: Engine, spec: BenchSpec) -> int:
    return 1 if engine.is_reference else spec.tensor_parallel


def base_row(model: BenchModel, engine: Engine, prompt_len: int, batch: int, spec: BenchSpec, *,
             provenance: dict | None = None) -> dict:
    cfg, count = model.config, count_parameters(model.config)
    return {
        "record": "row", "model": model.name, "config_hash": model_key(model), "engine": engine.name,
        "batch": batch, "prompt_len": prompt_len, "new_tokens": spec.new_tokens, "dtype": spec.dtype,
        "tensor_parallel": tensor_parallel_of(engine, spec), "status": None, "reason": "",
        "params_total": count.total, "params_non_embedding": count.non_embedding, "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim,
        "rotary_dims": cfg.rotary_dims, "ffn_size": cfg.ffn_size,
        "max_position_embeddings": cfg.max_position_embeddings, "source": model.source, **(provenance or {}),
    }


def measured_row(row: dict, model: BenchModel, engine: Engine, result: BatchResult, *, reference: Reference | None,
                 bandwidth_tbps: float | None, peak_tflops: float | None, device_name: str, checkpoint) -> dict:
    row = {**row, "status": result.status, "reason": result.reason, "compute_dtype": result.dtype or row["dtype"],
           "device": device_name, "timing_method": engine.timing_method, "checkpoint": str(checkpoint),
           "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if result.status != "ok" or result.timing is None:
        return row
    timing = result.timing
    row.update(summarize_generation(timing.samples, batch=row["batch"], new_tokens=row["new_tokens"]))
    floors = decode_floors(model.config, batch=row["batch"], prompt_len=row["prompt_len"],
                           new_tokens=row["new_tokens"], dtype=row["compute_dtype"],
                           tensor_parallel=row["tensor_parallel"], bandwidth_tbps=bandwidth_tbps,
                           peak_tflops=peak_tflops)
    row.update({"weight_bytes": floors.weight_bytes, "kv_bytes": floors.kv_bytes,
                "decode_context_mean": floors.context_mean, "bandwidth_tbps": bandwidth_tbps,
                "decode_floor_ms": floors.decode_floor_ms, "decode_flops": floors.decode_flops,
                "prefill_flops": prefill_flops(model.config, batch=row["batch"], prompt_len=row["prompt_len"]),
                "matmul_peak_tflops": peak_tflops, "compute_floor_ms": floors.compute_floor_ms,
                "decode_vs_floor": (row["decode_p50_ms"] / floors.decode_floor_ms
                                    if floors.decode_floor_ms and row["decode_p50_ms"] else None),
                "peak_allocated_gb": result.memory.peak_allocated_gb, "device_used_gb": result.memory.device_used_gb,
                "warmup_runs": timing.warmup_runs, "warmup_ms": timing.warmup_ms, "tokens_stable": timing.tokens_stable,
                "samples": [s.to_dict() for s in timing.samples]})
    if not row["tokens_ok"]:
        row["status"], row["reason"] = "error", (f"generated {row['tokens_generated']} tokens per row, "
                                                 f"not the {row['new_tokens']} asked for")
        return row
    generation = reference.generations.get((row["prompt_len"], row["batch"])) if reference else None
    if engine.is_reference:
        row["logits_check"] = row["token_check"] = "reference"
        if generation is not None:  # the timed calls against the untimed pass: same tokens, or nondeterminism
            row["tokens_match"] = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids,
                                               timing.tokens, noise=0.0).tokens_match
        return row
    missing = (reference.missing.get(f"{row['prompt_len']}x{row['batch']}") if reference else None)
    return _checked(row, result, timing.tokens, generation, missing)


def _checked(row: dict, result: BatchResult, tokens: list[list[int]], generation, missing: str | None = None) -> dict:
    check = result.check
    if check is None:
        row.update(status="unchecked", logits_check="not run", token_check="not run",
                   reason=f"not checked against transformers: {result.check_error or 'no reference'}")
        return row
    row.update({"logits_check": "pass" if check.passed else "fail", "logits_check_method": check.method,
                "logits_max_abs_diff": check.max_abs_diff, "logits_mean_abs_diff": check.mean_abs_diff,
                "logits_ref_max_abs": check.ref_max_abs, "logits_top1_agreement": check.top1_agreement,
                "logits_first_token_agreement": check.first_token_agreement})
    reasons = []
    if not check.passed:
        reasons.append(f"logits differ from transformers': max |diff| {check.max_abs_diff:.3g} (largest logit "
                       f"{check.ref_max_abs:.3g}), top-1 agreement {check.top1_agreement:.0%}")
    if generation is None:
        row["token_check"] = "not run"
        reasons.append(f"tokens not checked: {missing or 'transformers reference has no generation for this row'}")
    else:
        tokens_check = check_tokens(generation.tokens, generation.topk_values, generation.topk_ids, tokens,
                                    noise=check.max_abs_diff)
        row.update({"token_check": "pass" if tokens_check.passed else "fail", "tokens_match": tokens_check.tokens_match,
                    "first_mismatch": list(tokens_check.first_mismatch),
                    "margin_at_mismatch": list(tokens_check.margin_at_mismatch),
                    "gap_at_mismatch": list(tokens_check.gap_at_mismatch),
                    "token_tolerance": tokens_check.tolerance, "token_noise": tokens_check.noise,
                    "token_verdict": tokens_check.verdict})
        if not tokens_check.passed:
            reasons.append(f"tokens differ from transformers': {tokens_check.verdict}")
    if reasons:  # a failed check is a mismatch; a check that could not run leaves the row unchecked
        failed = not check.passed or row.get("token_check") == "fail"
        row["status"] = "mismatch" if failed else "unchecked"
        row["reason"] = "; ".join(reasons)
    return row


def refused_row(row: dict, support, *, status: str = "unsupported") -> dict:
    """A row the engine cannot run for this shape: the reason, and the source it comes from."""
    return {**row, "status": status, "reason": support.reason, "kernel_support_source": support.source}


def describe(row: dict) -> str:
    head = (f"{row['model']} {row['engine']} p={row['prompt_len']} b={row['batch']}"
            + (f" tp={row['tensor_parallel']}" if row["tensor_parallel"] > 1 else ""))
    if row["status"] not in MEASURED:
        return f"{head}: {row['status']}: {row['reason']}"
    floor = f" (floor {row['decode_floor_ms']:.2f})" if row.get("decode_floor_ms") else ""
    text = (f"{head}: e2e {row['e2e_ms']:.1f} ms, ttft {row['ttft_ms']:.1f} ms, decode p50 "
            f"{row['decode_p50_ms']:.2f} ms{floor}, {row['tokens_per_s']:.0f} tok/s")
    if row.get("logits_check") == "pass":
        text += f", logits max |diff| {row['logits_max_abs_diff']:.3g} (pass), tokens {row.get('token_check')}"
    return text + (f"  [{row['status']}: {row['reason']}]" if row["status"] != "ok" else "")

"""The decode benchmarks' pages (reports/decode_bench_report.py) from constructed records: the reading is
written from the data (counts, the worst cell, what missed), an empty run renders and says so."""

from __future__ import annotations

import json

from reports.decode_bench_report import invariant_reading, prefill_page, write_report


def cost(batch, context, ratio):
    return {"batch": batch, "context": context, "default_ms": 1.0, "invariant_ms": ratio, "ratio": ratio,
            "ratio_min": ratio - 0.01, "ratio_max": ratio + 0.01, "splits_default": 4, "splits_invariant": 2,
            "ratio_invariant-128": ratio, "met": ratio <= 1.10}


def invariant_record(unique=1):
    return {"environment": {"gpu_name": "NVIDIA H200", "git_sha": "abc"}, "settings": {"model": "pythia-1b"},
            "kernels": [{"n": 6144, "k": 2048, "kernel": "default", "proven": True, "reason": "probe"}],
            "cost": [cost(1, 128, 1.22), cost(16, 128, 1.05), cost(16, 2048, 1.08)],
            "requests": {"invariant": {"requests": 1000, "batches": 65, "unique_completions": unique,
                                       "unique_last_logits": unique, "differ_from_alone": 0,
                                       "batch_sizes_that_differ": []},
                         "default": {"requests": 1000, "batches": 65, "unique_completions": 1,
                                     "unique_last_logits": 8, "differ_from_alone": 0, "batch_sizes_that_differ": []}}}


def test_the_invariant_reading_counts_completions_and_names_the_worst_cell():
    text = invariant_reading(invariant_record())
    assert "1000 copies of one prompt in 65 batches gave 1 unique completion(s)" in text
    assert "8 distinct logits rows" in text
    assert "1.050-1.220x" in text and "2 of 3 cells within the 1.10 target" in text
    assert "worst at batch 1, context 128" in text
    assert "gave 3 unique completion(s)" in invariant_reading(invariant_record(unique=3))


def test_both_pages_render_beside_their_json(tmp_path):
    inv, pre = tmp_path / "inv", tmp_path / "pre"
    inv.mkdir(), pre.mkdir()
    (inv / "invariant_decode.json").write_text(json.dumps(invariant_record()))
    rows = [{"model": "pythia-1b", "batch": b, "prompt_len": 2048, "status": "ok", "prefill_ms": 10.0, "layer_ms": 0.6,
             "logits_ms": 0.5, "layers": 16, "stack_ms": 10.1, "ratio": r, "ratio_min": r - 0.02, "ratio_max": r + 0.02,
             "prefill_last_ms": 9.5, "within_10pct": abs(r - 1) <= 0.1} for b, r in ((1, 0.86), (4, 1.01))]
    (pre / "prefill_vs_layers.json").write_text(json.dumps({"environment": {}, "rows": rows + [
        {"model": "pythia-12b", "batch": 16, "prompt_len": 2048, "status": "oom"}]}))
    page = write_report(inv).read_text()
    assert "One prompt, many batches" in page and "NVIDIA H200" in page
    page = write_report(pre).read_text()
    assert "1 of 2 cells within 10%" in page and "farthest: pythia-1b b=1 p=2048 at 0.860x" in page
    assert "CPU" in page  # no GPU in the environment: the page says so
    assert "No cell measured." in prefill_page({"rows": []})

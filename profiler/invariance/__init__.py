"""Batch invariance (issue 11): what deterministic (batch-invariant) inference kernels cost, and where the
default kernels and real engines stop being invariant.

- shapes.py       the layer's weight GEMMs (Table II) and the token counts searched
- matmul_bench.py TFLOP/s vs tokens and the row-alone-vs-inside-M check, torch (cuBLAS) vs the invariant kernel
- tape.py         op-by-op comparison of a prompt alone vs inside a batch (layer regions, or module hooks)
- layer_check.py  the profiler's layer on default and invariant kernels: logits, greedy tokens, first differing step
- analysis.py     pure DataFrame functions over the results
- files.py        the results on disk (CSV per frame, JSON per measurement with provenance)

The kernels are models/invariant; the engines' check is inference/invariance.py; the report is
reports/invariance_report.py; the CLI is `python -m profiler invariance` and `python -m inference invariance`.
"""

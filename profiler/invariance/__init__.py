"""Batch invariance (issue 11): what deterministic (batch-invariant) inference kernels cost, and where the
default kernels and real engines stop being invariant.

- choice.py       the fastest kernel proven invariant per GEMM shape on this GPU (`choose`, handed to
                  models.invariant.make_batch_invariant), probed bitwise and CUDA-graph timed
- graph_timing.py GPU time of one call replayed from a CUDA graph (no host launch cost in the figure)
- shapes.py       the layer's weight GEMMs (Table II) and the token counts searched
- matmul_bench.py TFLOP/s vs tokens and the row-alone-vs-inside-M check, torch (cuBLAS) vs the invariant kernel
- ops.py          each op of the layer alone on the same input: which ops break invariance
- tape.py         op-by-op comparison of a prompt alone vs inside a batch (layer regions, or module hooks)
- layer_check.py  the profiler's layer on default and invariant kernels: logits, greedy tokens, first differing step
- analysis.py     pure DataFrame functions over the results
- files.py        the results on disk (CSV per frame, JSON per measurement with provenance)

One feature on four floors, each part where its imports allow: the kernels are models/invariant (the model
floor: make_batch_invariant swaps them into a layer); these measurements are profiler/invariance; the real
engines' check is inference/invariance.py (it needs the bench's checkpoints and MII worker); the report is
reports/invariance_report.py, reading what files.py wrote; the commands are cli/invariance.py
(`python -m profiler invariance matmul|layer|report`) and cli/engine_invariance.py (`python -m inference
invariance`).
"""

from .choice import choose  # noqa: E402,F401 - the chooser make_batch_invariant is handed

"""One MII deployment in a process of its own, for the batch-invariance check (inference/invariance.py).

`python -m inference.engines.mii_invariance_worker JOB.json`. Deploys the checkpoint as the bench does
(mii.legacy, non-persistent, kernel injection unless the job says otherwise), then compares the prompt alone
with the prompt inside each batch: logits from a forward of the InferenceEngine behind the query handle
(every prompt position), greedy tokens from the query handle itself (MII's pipeline and generate), and every
module of the deployed model (forward hooks) alone vs in the batch. One JSON line per row in the job's
results file, written as it goes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

MII_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")  # cpu: a stand-in mii
    results = Path(job["results"])

    def emit(row: dict) -> None:
        with results.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    import mii.legacy as legacy

    from ..invariance import compare_engine
    from .base import one_line

    name = f"invariance-{job['base']['model']}"
    legacy.deploy(task="text-generation", model=job["checkpoint"], deployment_name=name,
                  deployment_type=legacy.DeploymentType.NON_PERSISTENT,
                  mii_config={"dtype": MII_DTYPES[job["dtype"]], "skip_model_check": True, "tensor_parallel": 1,
                              "replace_with_kernel_inject": job["inject"], "max_tokens": job["max_tokens"]})
    handle = legacy.mii_query_handle(name)
    pipeline = legacy.non_persistent_models[name][0]
    if pipeline.tokenizer.pad_token is None:  # equal-length prompts never pad, but batching needs the token
        pipeline.tokenizer.pad_token = pipeline.tokenizer.eos_token
    pipeline.tokenizer.padding_side = "left"
    engine = pipeline.model
    module = getattr(engine, "module", engine)
    ids = torch.tensor(job["input_ids"], dtype=torch.long)
    prompt_len = ids.shape[1]

    @torch.inference_mode()
    def logits_fn(rows):
        if hasattr(module, "reset_cache"):  # DeepSpeed keeps the previous call's KV cache in its workspace
            module.reset_cache()
        batch = ids[rows].to(device)
        return engine(input_ids=batch, attention_mask=torch.ones_like(batch)).logits

    def tokens_fn(rows):
        result = handle.query({"query": [job["texts"][r] for r in rows]}, max_new_tokens=job["new_tokens"],
                              min_new_tokens=job["new_tokens"], do_sample=False, batch_size=len(rows),
                              return_tensors=True)
        tokens = []
        for item in result:
            item = item[0] if isinstance(item, list) else item
            generated = item["generated_token_ids"]
            generated = generated.tolist() if hasattr(generated, "tolist") else list(generated)
            tokens.append([int(t) for t in generated[prompt_len:]])
        return tokens

    def run(module_root) -> None:
        compare_engine(logits_fn, tokens_fn, batches=job["batches"], positions=job["positions"],
                       module_root=module_root, emit=emit, base=job["base"])

    try:
        run(module if job["modules"] else None)
    except Exception as exc:  # noqa: BLE001 - hooks on injected modules are the least certain part: retry bare
        if not job["modules"] or results.exists() and results.read_text().strip():
            raise
        print(f"module comparison failed ({one_line(exc)}); comparing logits and tokens only", file=sys.stderr)
        job["base"] = {**job["base"], "note": f"module comparison failed: {one_line(exc)}"}
        run(None)
    handle.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One MII deployment in a process of its own: deploy, check logits against transformers', time queries.

`python -m inference.engines.mii_worker JOB.json` (or under torchrun, one process per GPU, for tensor
parallelism). Rank 0 appends one JSON line per result to the job's results file as it goes.

Reaching the logits: a non-persistent legacy deployment lives in this process, in
`mii.legacy.non_persistent_models[name] = (pipeline, task)`; `pipeline` is transformers'
TextGenerationPipeline whose `.model` DeepSpeed replaced by its InferenceEngine (kernel-injected module
inside). Calling that engine on the prompt ids gives logits at every position from exactly the model the
query handle runs. The query forwards generate() keyword arguments to that model, which is how the step
timer (a logits processor) gets inside MII's generation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ..metrics import PeakMemory, compare_logits, time_generations
from .base import is_oom, one_line

MII_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


class Emitter:
    def __init__(self, path: str, rank: int):
        self.path, self.rank = Path(path), rank

    def __call__(self, record: dict) -> None:
        if self.rank != 0:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


@torch.inference_mode()
def engine_logits(pipeline, input_ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, str, str | None]:
    """Logits of MII's own model on the prompts: every position via a forward of DeepSpeed's
    InferenceEngine; if that forward is refused, the first generated step's scores from generate()."""
    engine = pipeline.model
    module = getattr(engine, "module", engine)
    if hasattr(module, "reset_cache"):
        module.reset_cache()
    ids = input_ids.to(device)
    try:
        logits = engine(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # as generate's first step
        return logits.float().cpu(), "forward (InferenceEngine behind the query handle): every prompt position", None
    except Exception as exc:  # noqa: BLE001 - fall back, and say why
        forward_error = one_line(exc)
    out = engine.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                          output_scores=True, return_dict_in_generate=True,
                          pad_token_id=pipeline.tokenizer.pad_token_id)
    return out.scores[0].float().cpu(), "generate() scores: first generated step only", forward_error


def tokens_per_row(result, prompt_len: int) -> list[int]:
    counts = []
    for item in result:
        item = item[0] if isinstance(item, list) else item
        ids = item.get("generated_token_ids")
        counts.append(len(ids) - prompt_len if ids is not None else -1)
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:  # only a stand-in mii (the CPU tests) gets here: DeepSpeed's kernels need CUDA
        device = torch.device("cpu")
    emit = Emitter(job["results"], rank)

    import mii.legacy as legacy
    from transformers import LogitsProcessorList

    name = job["deployment_name"]
    texts, input_ids = job["texts"], torch.tensor(job["input_ids"], dtype=torch.long)
    prompt_len, new_tokens = input_ids.shape[1], job["new_tokens"]
    legacy.deploy(task="text-generation", model=job["checkpoint"], deployment_name=name,
                  deployment_type=legacy.DeploymentType.NON_PERSISTENT,
                  mii_config={"dtype": MII_DTYPES[job["dtype"]], "skip_model_check": True,
                              "tensor_parallel": job["tensor_parallel"], "replace_with_kernel_inject": True,
                              "max_tokens": max(1024, prompt_len + new_tokens)})
    handle = legacy.mii_query_handle(name)
    pipeline = legacy.non_persistent_models[name][0]
    if pipeline.tokenizer.pad_token is None:  # batching in the pipeline needs one; equal-length prompts never pad
        pipeline.tokenizer.pad_token = pipeline.tokenizer.eos_token
    pipeline.tokenizer.padding_side = "left"

    # the check comes first, at the largest batch: DeepSpeed sizes its workspace at the first forward
    try:
        logits, method, forward_error = engine_logits(pipeline, input_ids, device)
        if job["reference_logits"]:
            reference = torch.load(job["reference_logits"])["logits"].float()
            if logits.dim() == 2:
                reference = reference[:, -1]
            if forward_error:
                method += f" (the forward was refused: {forward_error})"
            emit({"kind": "check", "check": compare_logits(reference, logits, method).to_dict()})
        else:
            emit({"kind": "check", "check": None, "error": "no reference logits from transformers were given"})
    except Exception as exc:  # noqa: BLE001 - the timings still come, flagged as unchecked
        emit({"kind": "check", "check": None, "error": one_line(exc)})

    for batch in sorted(job["batches"], reverse=True):  # largest first, for the same workspace reason
        rows = texts[:batch]

        def generate(timer, rows=rows, batch=batch):
            result = handle.query({"query": rows}, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, batch_size=batch, return_tensors=True,
                                  logits_processor=LogitsProcessorList([timer]))
            return tokens_per_row(result, prompt_len)

        PeakMemory.reset(device)
        try:
            samples = time_generations(generate, device, warmup=job["warmup"], repeats=job["repeats"])
            emit({"kind": "batch", "batch": batch, "status": "ok", "samples": [s.to_dict() for s in samples],
                  "memory": PeakMemory.read(device).__dict__, "dtype": job["dtype"]})
        except Exception as exc:  # noqa: BLE001 - record and go on to the next batch size
            emit({"kind": "batch", "batch": batch, "status": "oom" if is_oom(exc) else "error",
                  "reason": one_line(exc), "dtype": job["dtype"]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    handle.terminate()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One MII deployment in a process of its own: deploy, check logits against transformers', time queries.

`python -m inference.engines.mii_worker JOB.json` (or under torchrun, one process per GPU, for tensor
parallelism). Rank 0 appends one JSON line per result to the job's results file as it goes.

Reaching the logits: a non-persistent legacy deployment lives in this process, in
`mii.legacy.non_persistent_models[name] = (pipeline, task)`; `pipeline` is transformers'
TextGenerationPipeline whose `.model` DeepSpeed replaced by its InferenceEngine (kernel-injected module
inside, or transformers' own for the no-injection variant). Calling that engine on the prompt ids gives
logits at every position from exactly the model the query handle runs. The query forwards generate()
keyword arguments to that model, which is how the step timer (a logits processor) gets inside MII's
generation. The tokens each row generated go back to the parent, which judges them against transformers'.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ..checks import CHECK_POSITIONS, compare_logits
from ..metrics import PeakMemory, time_row
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
    """Logits of MII's own model on the prompts: the last CHECK_POSITIONS positions via a forward of
    DeepSpeed's InferenceEngine; if that forward is refused, the first generated step's scores."""
    engine = pipeline.model
    module = getattr(engine, "module", engine)
    if hasattr(module, "reset_cache"):
        module.reset_cache()
    ids = input_ids.to(device)
    try:
        logits = engine(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # as generate's first step
        return (logits[:, -CHECK_POSITIONS:].float().cpu(),
                f"forward (InferenceEngine behind the query handle): last {CHECK_POSITIONS} prompt positions", None)
    except Exception as exc:  # noqa: BLE001 - fall back, and say why
        forward_error = one_line(exc)
    out = engine.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                          output_scores=True, return_dict_in_generate=True,
                          pad_token_id=pipeline.tokenizer.pad_token_id)
    return out.scores[0].float().cpu(), "generate() scores: first generated step only", forward_error


def new_tokens_of(result, prompt_len: int) -> list[list[int]]:
    """The new token ids of every row of a text-generation query made with return_tensors=True."""
    rows = []
    for item in result:
        item = item[0] if isinstance(item, list) else item
        ids = item.get("generated_token_ids")
        rows.append(list(ids[prompt_len:]) if ids is not None else [])
    return rows


def check_batches(job: dict) -> list[tuple[int, int]]:
    """(prompt length, batch) of each logits check: per prompt length the largest batch this worker runs at
    it (a row refused at a larger batch, e.g. for the fused softmax's int32 limit, is not checked for it),
    the largest batch first: DeepSpeed sizes its workspace for the batch of the first forward
    (ds_transformer.py:90-98), so that one must be the largest the worker will run."""
    largest: dict[int, int] = {}
    for p, batch in job["rows"]:
        largest[int(p)] = max(largest.get(int(p), 0), int(batch))
    return sorted(largest.items(), key=lambda pb: (-pb[1], -pb[0]))


def logits_checks(pipeline, job: dict, device: torch.device, emit) -> None:
    """One check per prompt length (check_batches), against transformers' logits of the same prompts."""
    reference = None
    if job["reference"]:
        from ..reference import Reference

        reference = Reference.load(Path(job["reference"]))
    for p, batch in check_batches(job):
        try:
            input_ids = torch.tensor(job["prompts"][str(p)]["input_ids"][:batch], dtype=torch.long)
            logits, method, forward_error = engine_logits(pipeline, input_ids, device)
            if reference is None:
                emit({"kind": "check", "prompt_len": p, "batch": batch, "check": None,
                      "error": "no reference from transformers was given"})
                continue
            expected = reference.logits[p][:batch].float()
            if logits.dim() == 2:
                expected = expected[:, -1]
            method += f", batch {batch}"
            if forward_error:
                method += f" (the forward was refused: {forward_error})"
            emit({"kind": "check", "prompt_len": p, "batch": batch,
                  "check": compare_logits(expected, logits, method).to_dict()})
        except Exception as exc:  # noqa: BLE001 - the timings still come, flagged as unchecked
            emit({"kind": "check", "prompt_len": p, "batch": batch, "check": None, "error": one_line(exc)})


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

    name, new_tokens = job["deployment_name"], job["new_tokens"]
    legacy.deploy(task="text-generation", model=job["checkpoint"], deployment_name=name,
                  deployment_type=legacy.DeploymentType.NON_PERSISTENT,
                  mii_config={"dtype": MII_DTYPES[job["dtype"]], "skip_model_check": True,
                              "tensor_parallel": job["tensor_parallel"], "replace_with_kernel_inject": job["inject"],
                              "enable_cuda_graph": job["cuda_graph"], "max_tokens": job["max_tokens"]})
    handle = legacy.mii_query_handle(name)
    pipeline = legacy.non_persistent_models[name][0]
    if pipeline.tokenizer.pad_token is None:  # batching in the pipeline needs one; equal-length prompts never pad
        pipeline.tokenizer.pad_token = pipeline.tokenizer.eos_token
    pipeline.tokenizer.padding_side = "left"
    eos = pipeline.tokenizer.eos_token_id

    logits_checks(pipeline, job, device, emit)
    for p, batch in job["rows"]:  # in the order given: randomised by the bench
        rows = job["prompts"][str(p)]["texts"][:batch]

        def generate(timer, rows=rows, batch=batch, p=p):
            result = handle.query({"query": rows}, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, batch_size=batch, return_tensors=True,
                                  logits_processor=LogitsProcessorList([timer]))
            return new_tokens_of(result, p)

        PeakMemory.reset(device)
        try:
            timing = time_row(generate, device, warmup_s=job["warmup_s"], repeats=job["repeats"], eos_token_id=eos)
            emit({"kind": "batch", "prompt_len": p, "batch": batch, "status": "ok", "timing": timing.to_dict(),
                  "memory": PeakMemory.read(device).__dict__, "dtype": job["dtype"]})
        except Exception as exc:  # noqa: BLE001 - record and go on to the next row
            emit({"kind": "batch", "prompt_len": p, "batch": batch, "status": "oom" if is_oom(exc) else "error",
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

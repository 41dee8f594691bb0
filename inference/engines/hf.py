"""The baseline: transformers generate() on the same checkpoint, greedy, exactly `new_tokens` tokens.

Each timed call goes text -> tokenizer -> generate -> detokenize, as MII's query does, so both engines'
end-to-end numbers cover the same work. It is also the logits reference every other engine is checked
against (one forward over the prompts before timing).
"""

from __future__ import annotations

import gc

import torch

from ..metrics import TIMING_METHOD, PeakMemory, time_generations
from ..tokenizer import load_tokenizer
from .base import BatchResult, EngineRun, GenerationJob, OnResult, is_oom, one_line


def compute_dtype(job: GenerationJob) -> str:
    # fp16 matmuls on a CPU are slow or missing; off CUDA the baseline computes in float32
    return job.dtype if job.device.type == "cuda" else "float32"


def load_model(checkpoint, dtype: str, device: torch.device):
    from transformers import AutoModelForCausalLM

    # built where it will run (no accelerate needed): the fp16 weights are copied in once
    with torch.device(device):
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint), torch_dtype=getattr(torch, dtype))
    return model.to(device).eval()


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def reference_logits(model, input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits at every prompt position, [batch, prompt_len, vocab], kept on the host."""
    return model(input_ids=input_ids.to(device)).logits.cpu()


class HFEngine:
    name = "hf"
    is_reference = True
    timing_method = TIMING_METHOD

    def unavailable_reason(self, *, tensor_parallel: int = 1) -> str | None:
        return None  # transformers is a core dependency; it runs on CPU too

    def prepare(self) -> None:
        pass

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        from transformers import LogitsProcessorList

        device, dtype = job.device, compute_dtype(job)
        tokenizer = load_tokenizer(job.checkpoint)
        model = load_model(job.checkpoint, dtype, device)
        try:
            run = EngineRun(reference_logits=reference_logits(model, job.prompts.input_ids, device))
            for batch in sorted(job.batches):
                rows = job.prompts.rows(batch)

                @torch.inference_mode()
                def generate(timer, rows=rows):
                    encoded = tokenizer(list(rows.texts), return_tensors="pt").to(device)
                    out = model.generate(**encoded, max_new_tokens=job.new_tokens, min_new_tokens=job.new_tokens,
                                         do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                         logits_processor=LogitsProcessorList([timer]))
                    new = out[:, encoded["input_ids"].shape[1]:]
                    tokenizer.batch_decode(new)  # the pipeline MII runs behind its query decodes too
                    return [new.shape[1]] * new.shape[0]

                PeakMemory.reset(device)
                try:
                    samples = time_generations(generate, device, warmup=job.warmup, repeats=job.repeats)
                    on_result(BatchResult(batch, "ok", samples=samples, memory=PeakMemory.read(device), dtype=dtype))
                except Exception as exc:  # one batch failing (OOM at b=8) must not lose the others
                    if not is_oom(exc):
                        raise
                    release(device)
                    on_result(BatchResult(batch, "oom", one_line(exc), dtype=dtype))
            return run
        finally:
            del model
            release(device)

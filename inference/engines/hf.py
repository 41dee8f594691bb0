"""The baseline: transformers generate() on the same checkpoint, greedy, exactly `new_tokens` tokens.

Each timed call goes text -> tokenizer -> generate, as MII's query with return_tensors=True does (its
pipeline then skips detokenising), so both engines' end-to-end numbers cover the same work. transformers is also the reference every other engine is checked
against; that reference comes from an untimed pass before timing (inference/reference.py).
"""

from __future__ import annotations

import torch

from models.kernel_support import KernelSupport
from ..metrics import TIMING_METHOD, PeakMemory, time_row
from ..hf_model import dtype_on, generate_kwargs, load_model, release
from ..tokenizer import load_tokenizer
from .base import BatchResult, EngineRun, GenerationJob, OnResult, is_oom, one_line


class HFEngine:
    name = "hf"
    is_reference = True
    timing_method = TIMING_METHOD

    def unavailable_reason(self, *, tensor_parallel: int = 1) -> str | None:
        return None  # transformers is a core dependency; it runs on CPU too

    def shape_support(self, cfg, *, dtype: str, tensor_parallel: int, max_context: int) -> KernelSupport:
        return KernelSupport(True, "", "transformers' own PyTorch GPT-NeoX: any shape")

    def prepare(self) -> None:
        pass

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        from transformers import LogitsProcessorList

        device, dtype = job.device, dtype_on(job.device, job.dtype)
        tokenizer = load_tokenizer(job.checkpoint)
        kwargs = generate_kwargs(tokenizer, job.new_tokens)
        model = load_model(job.checkpoint, dtype, device)
        try:
            for prompt_len, batch in job.rows:
                texts = list(job.prompts[prompt_len].rows(batch).texts)

                @torch.inference_mode()
                def generate(timer, texts=texts):
                    encoded = tokenizer(texts, return_tensors="pt").to(device)
                    out = model.generate(**encoded, **kwargs, logits_processor=LogitsProcessorList([timer]))
                    return out[:, encoded["input_ids"].shape[1]:].tolist()

                PeakMemory.reset(device)
                try:
                    timing = time_row(generate, device, warmup_s=job.warmup_s, repeats=job.repeats,
                                      eos_token_id=tokenizer.eos_token_id)
                    on_result(BatchResult(prompt_len, batch, "ok", timing=timing, memory=PeakMemory.read(device),
                                          dtype=dtype))
                except Exception as exc:  # one row failing (OOM at b=16, s=2048) must not lose the others
                    if not is_oom(exc):
                        raise
                    release(device)
                    on_result(BatchResult(prompt_len, batch, "oom", one_line(exc), dtype=dtype))
            return EngineRun()
        finally:
            del model
            release(device)

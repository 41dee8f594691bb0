"""The project's own engine: its GPT-NeoX (models/causal_lm.py) with the whole decode step in one CUDA graph.

Same job and rows as the other engines: each timed call goes text -> tokenizer -> prefill -> N-1 graph
replays -> token ids on the host, greedy, exactly `new_tokens` tokens (end-of-text masked, as generate()'s
min_new_tokens does). Per-token times come from the same StepTimer the transformers engine uses: one CUDA
event after the first token and one after each replay, no host sync in between. The logits check is its
own (like MII's worker): the prefill logits of the last CHECK_POSITIONS prompt positions against
transformers', at the largest batch each prompt length runs at.

The capture (and any compile) happens once per row, before its warm-up, so neither is in a timed call.
"""

from __future__ import annotations

import torch

from models.causal_lm import KVCache, NeoXCausalLM, unsupported_reason
from models.kernel_support import KernelSupport
from models.neox_checkpoint import load_causal_lm

from ..checks import LogitsCheck, compare_logits
from ..graph_decoder import GreedyDecoder
from ..hf_model import dtype_on, release
from ..metrics import PeakMemory, time_row
from ..tokenizer import load_tokenizer
from .base import BatchResult, EngineRun, GenerationJob, OnResult, is_oom, one_line
from .mii_worker import check_batches

SOURCE = "models/causal_lm.py (GPT-NeoX only: gelu, layernorm, rotary; one GPU)"
TIMING_METHOD = ("each decode step is one CUDA graph replay (every layer, logits, argmax and the position "
                 "advance on device); per-token CUDA events between replays, no host sync inside the loop; "
                 "ttft = tokenisation + prefill + first token; end to end = synchronised host clock around the "
                 "call; off CUDA the same model runs eagerly and the host clock times it")


def logits_checks(model: NeoXCausalLM, job: GenerationJob) -> dict[int, tuple[LogitsCheck | None, str | None]]:
    """Per prompt length: our prefill logits against transformers' reference, or why there is none."""
    if job.reference is None:
        return {p: (None, "no reference from transformers was given") for p, _ in job.rows}
    from ..reference import Reference

    reference = Reference.load(job.reference)
    checks = {}
    for p, batch in check_batches({"rows": [list(r) for r in job.rows]}):
        try:
            expected = reference.logits[p][:batch].float()  # (batch, positions, vocab)
            cache = KVCache.allocate(model.cfg, batch=batch, capacity=p, device=model.device, dtype=model.dtype)
            with torch.no_grad():
                ids = job.prompts[p].input_ids[:batch].to(model.device)
                logits = model.prefill(ids, cache, logits_positions=expected.shape[1]).float().cpu()
            del cache
            method = f"prefill of the project's GPT-NeoX: last {expected.shape[1]} prompt positions, batch {batch}"
            checks[p] = (compare_logits(expected, logits, method), None)
        except Exception as exc:  # noqa: BLE001 - the timings still come, flagged as unchecked
            checks[p] = (None, one_line(exc))
    return checks


class GraphDecodeEngine:
    name = "neox-graph"
    is_reference = False
    timing_method = TIMING_METHOD
    compile = False  # torch.compile of the step's head and tail (inference/graph_decoder.py)

    def unavailable_reason(self, *, tensor_parallel: int = 1) -> str | None:
        return None  # plain PyTorch (+ Triton on CUDA); runs eagerly on a CPU

    def shape_support(self, cfg, *, dtype: str, tensor_parallel: int, max_context: int) -> KernelSupport:
        reason = unsupported_reason(cfg)
        if tensor_parallel != 1:
            reason = f"--tensor-parallel {tensor_parallel}: {self.name} runs on one GPU"
        return KernelSupport(reason is None, reason or "", SOURCE)

    def prepare(self) -> None:
        pass

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        device, dtype = job.device, dtype_on(job.device, job.dtype)
        tokenizer = load_tokenizer(job.checkpoint)
        eos = tokenizer.eos_token_id
        model = load_causal_lm(job.checkpoint, device=device, dtype=getattr(torch, dtype))
        try:
            checks = logits_checks(model, job)
            for prompt_len, batch in job.rows:
                check, check_error = checks.get(prompt_len, (None, "no logits check for this prompt length"))
                texts = list(job.prompts[prompt_len].rows(batch).texts)
                PeakMemory.reset(device)
                decoder = None
                try:
                    decoder = GreedyDecoder(model, batch=batch, prompt_len=prompt_len, new_tokens=job.new_tokens,
                                            banned_token=eos, compile=self.compile)
                    decoder.capture(job.prompts[prompt_len].input_ids[:batch].to(device))

                    def generate(timer, texts=texts, decoder=decoder):
                        ids = tokenizer(texts, return_tensors="pt")["input_ids"].to(device)
                        return decoder.generate(ids, mark=lambda: timer(None, None)).tolist()

                    timing = time_row(generate, device, warmup_s=job.warmup_s, repeats=job.repeats, eos_token_id=eos)
                    notes = ([] if decoder.compile_status in ("off", "on") else [f"torch.compile {decoder.compile_status}"])
                    notes += [f"branches {decoder.branch_status}"] if "fell back" in decoder.branch_status else []
                    note = "; ".join(notes)
                    on_result(BatchResult(prompt_len, batch, "ok", note, timing, PeakMemory.read(device), dtype,
                                          check, check_error))
                except Exception as exc:  # noqa: BLE001 - one row out of memory must not lose the others
                    if not is_oom(exc):
                        raise
                    on_result(BatchResult(prompt_len, batch, "oom", one_line(exc), dtype=dtype))
                finally:
                    if decoder is not None:
                        decoder.release()
                    del decoder
                    release(device)
            return EngineRun()
        finally:
            del model
            release(device)


class GraphDecodeCompileEngine(GraphDecodeEngine):
    name = "neox-graph-compile"
    compile = True

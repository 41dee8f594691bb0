"""transformers' GPT-NeoX as every part of the bench loads and calls it: on which dtype, built where it runs,
its memory released, and the one set of generate() arguments every engine's timed call passes."""

from __future__ import annotations

import gc

import torch


def dtype_on(device: torch.device, dtype: str) -> str:
    # fp16 matmuls on a CPU are slow or missing; off CUDA the baseline computes in float32
    return dtype if device.type == "cuda" else "float32"


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


def generate_kwargs(tokenizer, new_tokens: int) -> dict:
    """What every engine's timed call passes to generate(): greedy, exactly `new_tokens` tokens."""
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id}

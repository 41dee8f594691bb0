"""transformers' reference for the checks, computed in an untimed pass before any engine is timed.

Per prompt length: the logits of the last CHECK_POSITIONS prompt positions at the largest batch (the
logits check). Per prompt length and batch size: the greedy tokens of exactly the call each engine times
(text -> tokenizer -> generate, same arguments) with the top-k processed logits at every step (the token
check). Because the reference exists before any timing starts, the timed order of engines and batch sizes
can be random. Saved with torch.save for the MII worker, which runs in a process of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checks import CHECK_POSITIONS, TOPK
from .hf_model import generate_kwargs, load_model, release
from .tokenizer import Prompts, load_tokenizer


@dataclass
class Generation:
    """transformers' greedy continuation of one (prompt length, batch) row."""

    tokens: torch.Tensor  # [b, N] new token ids
    topk_values: torch.Tensor  # [b, N, k] float32: the processed logits generate() took its argmax over
    topk_ids: torch.Tensor  # [b, N, k]
    chunk: int | None = None  # rows per generate() call where the whole batch ran out of memory


@dataclass
class Reference:
    dtype: str
    logits: dict[int, torch.Tensor]  # prompt_len -> [B, CHECK_POSITIONS, V], the largest batch's prompts
    generations: dict[tuple[int, int], Generation]  # (prompt_len, batch) -> greedy tokens
    missing: dict[str, str] = field(default_factory=dict)  # "PxB" -> why transformers has no reference there

    def save(self, path: Path) -> Path:
        torch.save({"dtype": self.dtype, "logits": self.logits, "missing": self.missing,
                    "generations": {f"{p}x{b}": vars(g) for (p, b), g in self.generations.items()}}, path)
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        blob = torch.load(path)
        generations = {}
        for key, g in blob["generations"].items():
            p, b = (int(x) for x in key.split("x"))
            generations[(p, b)] = Generation(**g)
        return cls(blob["dtype"], {int(p): t for p, t in blob["logits"].items()}, generations, blob.get("missing", {}))


@torch.inference_mode()
def last_logits(model, input_ids: torch.Tensor, device: torch.device, positions: int = CHECK_POSITIONS) -> torch.Tensor:
    """Logits at the last `positions` prompt positions, [batch, positions, vocab], kept on the host."""
    logits = model(input_ids=input_ids.to(device)).logits
    return logits[:, -positions:].cpu()


@torch.inference_mode()
def greedy_generation(model, tokenizer, texts: tuple[str, ...], new_tokens: int, device: torch.device,
                      k: int = TOPK) -> Generation:
    encoded = tokenizer(list(texts), return_tensors="pt").to(device)
    out = model.generate(**encoded, **generate_kwargs(tokenizer, new_tokens), output_scores=True,
                         return_dict_in_generate=True)
    scores = torch.stack(out.scores, dim=1).float()  # [b, N, vocab], after generate's own processors
    values, ids = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return Generation(out.sequences[:, encoded["input_ids"].shape[1]:].cpu(), values.cpu(), ids.cpu())


def in_chunks(run, rows: int, device: torch.device) -> tuple[list, int]:
    """run(start, stop) over `rows` rows in chunks, starting with all of them and halving the chunk on
    out-of-memory (a 2048-token prompt at batch 16 through transformers' eager attention can need tens of
    GB, one row at a time does not): (the chunks' results, the chunk size that fitted)."""
    chunk = rows
    while True:
        try:
            return [run(i, min(i + chunk, rows)) for i in range(0, rows, chunk)], chunk
        except torch.cuda.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def chunked_last_logits(model, input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """last_logits over the rows, in chunks where the whole batch does not fit (in_chunks)."""
    parts, _ = in_chunks(lambda a, b: last_logits(model, input_ids[a:b], device), len(input_ids), device)
    return torch.cat(parts)


def chunked_generation(model, tokenizer, texts: tuple[str, ...], new_tokens: int, device: torch.device) -> Generation:
    """greedy_generation over the rows, in chunks where the whole batch does not fit (in_chunks; c1's 64
    heads at b=16, prompt 2048 need 8 GiB per score tensor). The prompts have equal lengths, so no row is
    padded and each row's greedy tokens do not depend on its neighbours beyond the batch-size noise of the
    kernels, which the token check tolerates at near-ties."""
    parts, chunk = in_chunks(lambda a, b: greedy_generation(model, tokenizer, texts[a:b], new_tokens, device),
                             len(texts), device)
    return Generation(torch.cat([g.tokens for g in parts]), torch.cat([g.topk_values for g in parts]),
                      torch.cat([g.topk_ids for g in parts]), chunk if chunk < len(texts) else None)


def build_reference(checkpoint: Path, prompts: dict[int, Prompts], rows: list[tuple[int, int]], *, new_tokens: int,
                    dtype: str, device: torch.device) -> Reference:
    """transformers' reference for every (prompt length, batch) row to check. A row whose generation does not
    fit in memory runs in smaller chunks of rows; one that fits in no chunk is recorded as missing, with the
    reason, and the others keep theirs."""
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint, dtype, device)
    generations, missing = {}, {}
    try:
        logits = {p: chunked_last_logits(model, prompts[p].input_ids, device) for p in sorted(prompts)}
        for p, b in sorted(set(rows)):
            try:
                generations[(p, b)] = chunked_generation(model, tokenizer, prompts[p].rows(b).texts, new_tokens, device)
            except torch.cuda.OutOfMemoryError as exc:
                missing[f"{p}x{b}"] = f"transformers ran out of memory at prompt {p}, batch {b}: {str(exc).splitlines()[0][:120]}"
                release(device)
    finally:
        del model
        release(device)
    return Reference(dtype, logits, generations, missing)

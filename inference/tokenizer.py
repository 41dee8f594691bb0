"""A tokenizer built locally (no downloads) and prompts of an exact token count.

MII's legacy query takes strings, so a prompt of exactly `prompt_len` tokens has to exist as text. A
word-level vocabulary of made-up words ('w3' ... 'wN', split on whitespace) makes that exact: one word is
one token, and the text round-trips to the same ids. A real checkpoint's tokenizer (Pythia's BPE) works
too: prompts are drawn from its single-token words and checked to round-trip.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from profiler.errors import UserError

EOS, PAD, UNK = "<|endoftext|>", "<|padding|>", "<unk>"
SPECIAL = (EOS, PAD, UNK)  # ids 0, 1, 2 as in Pythia's vocabulary (0 = end of text, 1 = padding)
MIN_VOCAB = 16


def build_tokenizer(vocab_size: int, *, max_length: int = 2048):
    """A PreTrainedTokenizerFast over `vocab_size` entries: the special tokens, then words w3..w{v-1}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise UserError(f"vocab_size: {vocab_size} is too small for a prompt vocabulary; use at least {MIN_VOCAB}")
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # left padding: generation appends on the right (all prompts here have one length, so it never pads)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="left", model_max_length=max_length,
                                   model_input_names=["input_ids", "attention_mask"])


def save_tokenizer(tokenizer, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint: no usable tokenizer in {directory} ({str(exc).splitlines()[0]}); "
                        "save one there with tokenizer.save_pretrained") from exc
    if tokenizer.pad_token is None:  # batching in a pipeline needs a pad token; prompts never pad
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


@dataclass(frozen=True)
class Prompts:
    texts: tuple[str, ...]  # one per batch row, what MII's query receives
    input_ids: torch.Tensor  # [batch, prompt_len], what the texts tokenize to

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]

    def rows(self, batch: int) -> Prompts:
        return Prompts(self.texts[:batch], self.input_ids[:batch])


_WORD = re.compile(r"^ ?[A-Za-z][A-Za-z0-9]{0,11}$")  # 'w42' here, ' house' in a BPE vocabulary


def _word_pool(tokenizer, *, want: int = 4096, tries: int = 30000) -> list[int]:
    """Ids whose text is one plain word that tokenizes back to that same single id."""
    candidates = list(range(len(tokenizer)))
    random.Random(0).shuffle(candidates)
    pool = []
    for token_id in candidates[:tries]:
        text = tokenizer.decode([token_id])
        if _WORD.match(text) and tokenizer.encode(text, add_special_tokens=False) == [token_id]:
            pool.append(token_id)
            if len(pool) >= want:
                break
    return sorted(pool)


def make_prompts(tokenizer, batch: int, prompt_len: int, *, seed: int = 0) -> Prompts:
    """`batch` different prompts of exactly `prompt_len` tokens each, as text and as ids."""
    pool = _word_pool(tokenizer)
    if len(pool) < 2:
        raise UserError("checkpoint: its tokenizer has no plain single-token words to build prompts from")
    rng = random.Random(seed)
    texts, rows = [], []
    for _ in range(batch):
        for _attempt in range(20):
            ids = [rng.choice(pool) for _ in range(prompt_len)]
            text = tokenizer.decode(ids)
            if tokenizer.encode(text, add_special_tokens=False) == ids:
                break
        else:
            raise UserError(f"--prompt-len: cannot build a prompt of exactly {prompt_len} tokens with this "
                            "tokenizer (its words merge when joined)")
        texts.append(text)
        rows.append(ids)
    return Prompts(tuple(texts), torch.tensor(rows, dtype=torch.long))

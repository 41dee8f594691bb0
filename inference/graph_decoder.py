"""Greedy decoding of one (batch, prompt length, new tokens) row: static buffers, one CUDA graph per step.

A step reads only device buffers and writes only device buffers: `tokens` (the last token of each row),
`pos` (its position, where its k and v go), the KV cache, `generated` (the new tokens so far) and `count`.
So one step has fixed shapes and no host sync, and is captured once and replayed: embedding gather, every
layer, final norm, logits, argmax, the writes and the position increment are all in the graph. The prompt
is not: `prefill` runs it once through the model eagerly (its cost is GEMMs and flash attention, not
launches) and picks the first token.

On a CPU there is no graph: `step` runs the same function eagerly, so the CPU tests run the same math.
On CUDA a layer's attention chain (QKV GEMM, attention) and MLP chain (MLP-up GEMM, bias + GELU) are captured
on two streams, so the graph runs them side by side (`branches`; docs/decode-engine.md says why), except
where a layer's KV cache read exceeds its weight read (`two_streams_pay`): there one stream is faster.

torch.compile (optional, `compile=True`): the per-layer work is already fused by hand
(models/decode_kernels.py: 4 kernels a layer at batch 1, 3 of them GEMMs), so what is left for inductor is the step's
head (embedding gather + the first layer's norms: 2 kernels -> 1) and tail (banned-token mask, argmax, three
writes, position increment: ~6 kernels -> 2). Both are compiled with fullgraph=True and run inside our own
graph (inductor's cudagraphs stay off). A compile that fails, or a capture that fails with it, falls back to
the plain functions and `compile_status` says why.
"""

from __future__ import annotations

from typing import Callable

import torch

from models.causal_lm import KVCache, NeoXCausalLM
from models.decode_kernels import (PREFETCH_TILES, AttentionTile, Splits, attention_splits, dependent_launches,
                                   invariant_splits, pdl_problem)

WARMUP_STEPS = 3  # before capture, on a side stream: Triton JIT, cuBLAS handles and heuristics, compile


def two_streams_pay(cfg, *, batch: int, capacity: int) -> bool:
    """Whether a layer's attention and MLP chains should run on two graph streams: yes while the attention
    reads less KV cache per layer than the layer's weight GEMMs read weights. Side by side, the attention's
    latency hides behind the MLP-up GEMV; once the cache read is the larger stream the two only share one
    memory bus, and one stream is faster (H200, fp16: pythia-1b b=16 p=2048 1.898 ms one stream vs 1.987 two;
    pythia-2.8b 5.550 vs 5.699; at b=1 and at b=16 p=128 two streams win by 4-8%: evidence/h200/decode-pdl-*)."""
    h, ffn, d = cfg.hidden_size, cfg.ffn_size, cfg.head_dim
    kv = 2 * batch * cfg.heads_per_gpu * capacity * d  # keys and values, elements
    weights = 4 * h * h + 2 * h * ffn  # QKV, out-projection, MLP up and down, elements
    return kv < weights


def greedy_pick(logits: torch.Tensor, banned: torch.Tensor | None, tokens: torch.Tensor, generated: torch.Tensor,
                count: torch.Tensor, pos: torch.Tensor) -> None:
    """argmax of logits (b, vocab), `banned` (vocab,) bool masked out first, written as the next token of
    every row; count and pos advance by one. In place, on device: capturable."""
    scores = logits if banned is None else logits.masked_fill(banned, float("-inf"))
    chosen = scores.argmax(dim=-1)  # (b,)
    tokens.copy_(chosen)
    generated.index_copy_(1, count.view(1), chosen.view(-1, 1))  # (b, N) at column count
    count.add_(1)
    pos.add_(1)


class GreedyDecoder:
    """Static state for one row and the step over it. `banned_token`: generate()'s min_new_tokens masks
    end-of-text at every step when min_new_tokens = max_new_tokens, so the same token is masked here."""

    def __init__(self, model: NeoXCausalLM, *, batch: int, prompt_len: int, new_tokens: int,
                 banned_token: int | None = None, use_graph: bool | None = None, compile: bool = False,
                 splits: int | None = None, branches: bool | None = None, pdl: bool = False,
                 pdl_prefetch: int = PREFETCH_TILES, pdl_late: bool = False, norm_in_gemv: bool = True,
                 qkv_first: bool | None = None, attention_tile: AttentionTile | None = None,
                 join_inputs: bool = True):
        if new_tokens < 2:
            raise ValueError("new_tokens must be >= 2: the first comes from prefill, the rest from decode steps")
        cfg, device = model.cfg, model.device
        self.model, self.batch, self.prompt_len, self.new_tokens = model, batch, prompt_len, new_tokens
        capacity = prompt_len + new_tokens
        self.cache = KVCache.allocate(cfg, batch=batch, capacity=capacity, device=device, dtype=model.dtype)
        self.tables = model.rotary_tables(capacity)  # held here: the graph reads them at every replay
        # batch-invariant model (NeoXCausalLM.use_invariant_gemms): a split size fixed by the capacity alone
        self.splits: Splits = (invariant_splits(capacity, cfg.head_dim) if model.invariant and splits is None
                               else attention_splits(batch * cfg.heads_per_gpu, capacity, cfg.head_dim, device, splits,
                                                     tile=attention_tile))
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.generated = torch.zeros(batch, new_tokens, dtype=torch.long, device=device)
        self.first = torch.zeros(batch, dtype=torch.long, device=device)
        self.banned = None
        if banned_token is not None:
            self.banned = torch.zeros(cfg.embedding_rows, dtype=torch.bool, device=device)
            self.banned[banned_token] = True
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.compile_status = "off"
        self._head, self._tail = model.embed_and_norm, greedy_pick
        if compile:
            self._head = torch.compile(model.embed_and_norm, fullgraph=True)
            self._tail = torch.compile(greedy_pick, fullgraph=True)
            self.compile_status = "on"
        # the parallel residual's two branches per layer on two streams of the graph (decode_from); on a CPU,
        # or branches=True without a graph, the same two chains one after the other
        parallel = cfg.residual == "parallel"
        auto = self.use_graph and two_streams_pay(cfg, batch=batch, capacity=capacity)
        self.branches = parallel and (auto if branches is None else branches)
        self.branch = torch.cuda.Stream(device) if self.branches and self.use_graph else None
        self.branch_status = "two streams" if self.branch is not None else "in order" if self.branches else "off"
        if branches is None and parallel and self.use_graph and not auto:
            self.branch_status = "one stream: the KV cache read exceeds the weights' per layer"
        # programmatic dependent launch of the step's Triton kernels (models/decode_kernels.py says why)
        problem = pdl_problem() if pdl and device.type == "cuda" else None
        self.pdl = bool(pdl) and device.type == "cuda" and problem is None
        self.pdl_status = "on" if self.pdl else f"off: {problem}" if problem else "off"
        self.pdl_prefetch, self.pdl_late = pdl_prefetch, pdl_late
        # batch 1: the output GEMV's last program does the residual add and norms (one kernel a layer fewer;
        # H200: pythia-1b 0.700 -> 0.696 ms at p=128, pythia-2.8b even: evidence/h200/decode-layout-e089ec5);
        # two streams: the QKV GEMV before the fork, the attention kernel alone beside the MLP-up GEMV. By default
        # at batch 1, where it was measured with the tensor-core attention (H200: pythia-1b 0.664 -> 0.620 ms at
        # p=128, 0.764 -> 0.724 at p=2048; pythia-2.8b 1.653 -> 1.641, 1.909 -> 1.841: decode-defaults-1f9c94d)
        self.norm_in_gemv = norm_in_gemv
        self.join_inputs = join_inputs  # one stream: QKV and MLP-up in one launch where the table has a plan
        self.qkv_first = bool(batch == 1 if qkv_first is None else qkv_first) and self.branches
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the step's output (b, vocab): static once captured

    # ---- the two phases ---------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt (b, prompt_len) once, filling the cache; pick the first new token. Returns the
        last prompt position's logits (b, vocab)."""
        if tuple(input_ids.shape) != (self.batch, self.prompt_len):
            raise ValueError(f"prompt ids of shape {tuple(input_ids.shape)}; this decoder was built for "
                             f"({self.batch}, {self.prompt_len})")
        logits = self.model.prefill(input_ids, self.cache)[:, -1]  # (b, vocab)
        self.pos.fill_(self.prompt_len - 1)  # the position those logits came from; the pick advances it
        self.count.zero_()
        greedy_pick(logits, self.banned, self.tokens, self.generated, self.count, self.pos)
        self.first.copy_(self.tokens)
        return logits

    def rewind(self) -> None:
        """Back to the state right after prefill (the cache up to the prompt is untouched by steps), so the
        decode steps can be timed again without another prefill."""
        self.tokens.copy_(self.first)
        self.pos.fill_(self.prompt_len)
        self.count.fill_(1)

    def _step(self) -> torch.Tensor:
        with dependent_launches(self.pdl, prefetch_tiles=self.pdl_prefetch, late=self.pdl_late):
            x, normed = self._head(self.tokens)
            logits = self.model.decode_from(x, normed, self.cache, self.pos, self.splits, self.tables,
                                            branches=self.branches, branch=self.branch, norm_in_gemv=self.norm_in_gemv,
                                            qkv_first=self.qkv_first, join_inputs=self.join_inputs)  # (b, vocab)
            self._tail(logits, self.banned, self.tokens, self.generated, self.count, self.pos)
        return logits

    @torch.no_grad()
    def step(self) -> None:
        """One decode step: one graph replay once captured, else the same function eagerly."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.logits = self._step()

    @torch.no_grad()
    def reference_step(self) -> torch.Tensor:
        """The step's logits (b, vocab) from plain torch ops, eagerly, without advancing the state: the
        independent computation the kernels in the graph are checked against."""
        kernels, self.model.kernels = self.model.kernels, "torch"
        choices, self.model.gemm_choices = self.model.gemm_choices, None  # plain F.linear too
        try:
            x, normed = self.model.embed_and_norm(self.tokens)
            return self.model.decode_from(x, normed, self.cache, self.pos, self.splits, self.tables)
        finally:
            self.model.kernels = kernels
            self.model.gemm_choices = choices

    # ---- capture ------------------------------------------------------------------------------------
    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor) -> None:
        """Prefill, warm the step up on a side stream, capture it (on a CPU, or use_graph=False: prefill and
        one eager step). A failure with compile falls back to the plain step (compile_status says why), one
        with programmatic dependent launch to plain launches (pdl_status), one with two streams to one stream
        (branch_status)."""
        fallbacks = ((["compile"] if self.compile_status == "on" else []) + (["pdl"] if self.pdl else [])
                     + (["branch"] if self.branch else []))
        while True:
            try:
                self._prepare(input_ids)
                return
            except Exception as exc:  # noqa: BLE001 - only a compiled or two-stream step may fail here
                if isinstance(exc, torch.cuda.OutOfMemoryError) or not fallbacks:
                    raise
                why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
                fallback = fallbacks.pop(0)
                if fallback == "compile":
                    self.compile_status = f"fell back to the plain step: {why}"
                    self._head, self._tail = self.model.embed_and_norm, greedy_pick
                elif fallback == "pdl":
                    self.pdl_status = f"fell back to plain launches: {why}"
                    self.pdl = False
                else:
                    self.branch_status = f"fell back to one stream: {why}"
                    self.branches, self.branch = False, None
                self.graph = None

    def _prepare(self, input_ids: torch.Tensor) -> None:
        self.prefill(input_ids)
        if not self.use_graph:
            self._warm(1)
            return
        side = torch.cuda.Stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._warm(WARMUP_STEPS)
        torch.cuda.current_stream().wait_stream(side)
        self.rewind()  # warm-up moved pos: back to the state after prefill (capture itself runs nothing)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._step()
        self.graph = graph

    def _warm(self, steps: int) -> None:
        for _ in range(min(steps, self.new_tokens - 1)):  # never past the cache: pos stays < capacity
            self.logits = self._step()

    # ---- one generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, mark: Callable[[], None] | None = None) -> torch.Tensor:
        """Greedy continuation of the prompts: (b, new_tokens) on the device. `mark` is called after the
        first token and after each step (a timer's event; no host sync in between)."""
        self.prefill(input_ids)
        if mark is not None:
            mark()
        for _ in range(self.new_tokens - 1):
            self.step()
            if mark is not None:
                mark()
        return self.generated

    def release(self) -> None:
        self.graph = None
        self.logits = None
        self.cache = None  # type: ignore[assignment]

"""A GPT-NeoX causal LM for generation, stacked from the profiler's own layer pieces, with a static KV cache.

The weights live in the same modules the layer profiler traces (models/layer.py: `TransformerLayer` L times,
then `LogitLayer`), so transformers' GPT-NeoX names map onto them as they do for one layer
(models/hf_weights.py). Only the forward differs: a prompt runs once through `prefill`, which fills a
preallocated cache; then each `decode_logits` call processes one token per batch row at a position held in a
device tensor, with fixed shapes, so that one call can be captured in a CUDA graph.

Both phases share `layers_forward` (norms, GEMMs, residual) and differ only in attention: prefill runs SDPA
over the prompt's own k and v, decode runs models/decode_kernels.decode_attention over the cache. The GEMMs
run without their biases, which ride on the fused ops that read their outputs (models/decode_kernels.py says
why: at batch 1 a biased addmm is two kernels).

Batch-invariant mode (`use_invariant_gemms`, issue 21): a row's tokens do not depend on the other rows of its
batch. Decode runs every GEMM on a kernel chosen per (N, K) whose rows are bitwise the same at every M (the
chooser's probe proves it on the GPU: models/invariant/choice.py), the attention with a split size fixed by
the cache's capacity alone (decode_kernels.invariant_splits), and the norms, GELU and argmax one row per
program as always. Prefill runs the prompt of each row on its own (batch 1), so its GEMMs and flash attention
see the same shapes whatever the batch: invariant by construction, at the cost of b prefills of one row.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, ModelConfig
from .decode_gemm import gemm_plan, gemv_residual_norms, linear, second_input_problem, triton_linear
from .decode_kernels import (Splits, bias_gelu, decode_attention, decode_attention_and_gelu, residual_norms,
                             use_triton)
from .invariant.choice import KernelChoice, unprobed_choice
from .invariant.choice import linear as choice_linear
from .kernels import apply_rotary_in_place
from .layer import LogitLayer, TransformerLayer, rotary_tables

# attend(layer index, layer, qkv (rows, 3h) without its bias) -> attention output (rows, h), before the
# out-projection
Attend = Callable[[int, TransformerLayer, torch.Tensor], torch.Tensor]
Chooser = Callable[..., KernelChoice]  # (n, k, dtype, bias, device) -> KernelChoice, as make_batch_invariant's


def _plain_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight)


def unsupported_reason(cfg: ModelConfig) -> str | None:
    """None for a GPT-NeoX shape this model builds, else one line saying what is not."""
    wanted = (("activation", "gelu"), ("norm", "layernorm"), ("positional", "rotary"))
    for field_name, value in wanted:
        if getattr(cfg, field_name) != value:
            return f"{field_name}: '{getattr(cfg, field_name)}' is not GPT-NeoX's {value}"
    if cfg.tensor_parallel != 1:
        return f"tensor_parallel: {cfg.tensor_parallel}; the causal LM runs on one GPU"
    return None


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated for (batch, capacity = prompt + new tokens).

    (L, b, heads, T, d): one (batch row, head) is a contiguous (T, d) block, so the attention kernel reads
    keys as whole tiles and one layer's cache is a view. Zeroed, not empty: the torch path multiplies the
    masked positions by 0, and 0 x garbage can be NaN."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def allocate(cls, cfg: ModelConfig, *, batch: int, capacity: int, device, dtype: torch.dtype) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.heads_per_gpu, capacity, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def row(self, r: int) -> KVCache:
        """Batch row r's cache as a batch of one (views: writing them writes this cache)."""
        return KVCache(self.keys[:, r:r + 1], self.values[:, r:r + 1])

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


class NeoXCausalLM(nn.Module):
    """Token embedding, L x TransformerLayer, final norm and logits (models/layer.py pieces).

    `kernels`: "auto" (Triton on CUDA, torch elsewhere), "triton" (also on a CPU, through Triton's
    interpreter) or "torch" (plain ops everywhere: the reference the kernels are checked against)."""

    def __init__(self, cfg: ModelConfig, *, device=None, dtype=None, kernels: str = "auto"):
        super().__init__()
        reason = unsupported_reason(cfg)
        if reason:
            raise ConfigError(reason)
        self.cfg = cfg
        self.kernels = kernels
        self.embed = nn.Embedding(cfg.embedding_rows, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(TransformerLayer(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.logit_layer = LogitLayer(cfg, device, dtype)
        self._tables: dict = {}
        # (N, K) -> the batch-invariant kernel of that decode GEMM; None: the default (fastest) kernels
        self.gemm_choices: dict[tuple[int, int], KernelChoice] | None = None
        self.pack_weights()

    # ---- batch-invariant mode ----------------------------------------------------------------------
    @property
    def invariant(self) -> bool:
        return self.gemm_choices is not None

    def decode_gemm_shapes(self) -> list[tuple[int, int]]:
        """(N, K) of every weight GEMM a decode step runs (the packed [out | down] as one), logits last."""
        shapes: list[tuple[int, int]] = []
        for layer in self.layers:
            packed = self.output_weight(layer)
            weights = [layer.attention.qkv_transform.weight, layer.mlp.mlp_up.weight]
            weights += [packed] if packed is not None else [layer.attention.out_projection.weight,
                                                             layer.mlp.mlp_down.weight]
            shapes += [tuple(w.shape) for w in weights if tuple(w.shape) not in shapes]
        logits = tuple(self.logit_layer.logits.weight.shape)
        return [s for s in shapes if s != logits] + [logits]

    def use_invariant_gemms(self, choose: Chooser | None) -> list[dict]:
        """Batch-invariant decode from now on: each decode GEMM shape gets the kernel `choose` picks (on a GPU:
        profiler.invariance.choose, probed bitwise over M); without a chooser, or off a GPU, the M-bucketed
        Triton kernel (invariant by construction; on a CPU in Triton's interpreter). Returns one row per
        shape: (N, K), the kernel and why. Choose before capturing a graph (a probe cannot be captured)."""
        choices = {}
        for n, k in self.decode_gemm_shapes():
            if choose is None or self.device.type != "cuda":
                why = "no chooser: not probed" if choose is None else "off a GPU: not probed"
                choices[(n, k)] = unprobed_choice(n, k, self.dtype, False, why)
            else:
                choices[(n, k)] = choose(n, k, self.dtype, False, self.device)
        self.gemm_choices = choices
        return [{"n": n, "k": k, "kernel": c.label, "proven": c.proven, "reason": c.reason}
                for (n, k), c in choices.items()]

    def use_default_gemms(self) -> None:
        self.gemm_choices = None

    def pack_weights(self) -> None:
        """Parallel residual: each layer's out-projection and MLP-down weights become views of one (h, h + 4h)
        tensor [W_out | W_down], so that decoding runs the two as one GEMM over [attention | gelu(up)], and its
        QKV and MLP-up weights views of one (3h + 4h, h) tensor [W_qkv; W_up], one launch over both norms; the
        modules keep their names and shapes (loading and the profiler see no difference). Run again after
        anything that re-creates parameters one by one (to_empty, .to(device))."""
        if self.cfg.residual != "parallel":
            return
        for layer in self.layers:
            out, down = layer.attention.out_projection, layer.mlp.mlp_down
            packed = torch.cat((out.weight.detach(), down.weight.detach()), dim=1)  # (h, h + 4h)
            out.weight = nn.Parameter(packed[:, :out.in_features], requires_grad=out.weight.requires_grad)
            down.weight = nn.Parameter(packed[:, out.in_features:], requires_grad=down.weight.requires_grad)
            # and [W_qkv; W_up] (3h + 4h, h): the two GEMMs over the layer's two norms in one launch
            qkv, up = layer.attention.qkv_transform, layer.mlp.mlp_up
            stacked = torch.cat((qkv.weight.detach(), up.weight.detach()), dim=0)
            qkv.weight = nn.Parameter(stacked[:qkv.out_features], requires_grad=qkv.weight.requires_grad)
            up.weight = nn.Parameter(stacked[qkv.out_features:], requires_grad=up.weight.requires_grad)

    def input_weight(self, layer: TransformerLayer) -> torch.Tensor | None:
        """[W_qkv; W_up] (3h + 4h, h) of a packed layer, None where the views no longer share one tensor."""
        qkv, up = layer.attention.qkv_transform.weight, layer.mlp.mlp_up.weight
        shared = (qkv.is_contiguous() and up.is_contiguous() and qkv.device == up.device
                  and up.data_ptr() == qkv.data_ptr() + qkv.numel() * qkv.element_size())
        return qkv.as_strided((qkv.shape[0] + up.shape[0], qkv.shape[1]), qkv.stride()) if shared else None

    def output_weight(self, layer: TransformerLayer) -> torch.Tensor | None:
        """[W_out | W_down] (h, h + 4h) of a packed layer, None where the views no longer share one tensor."""
        out, down = layer.attention.out_projection.weight, layer.mlp.mlp_down.weight
        width = out.shape[1] + down.shape[1]
        shared = (out.stride() == (width, 1) and down.stride() == (width, 1) and out.device == down.device
                  and down.data_ptr() == out.data_ptr() + out.shape[1] * out.element_size())
        return out.as_strided((out.shape[0], width), (width, 1)) if shared else None

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def rotary_tables(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (capacity, rotary_dims) in float32, as transformers keeps them (its q and k rotate in
        float32 even in an fp16 model); built once per capacity, outside any captured step."""
        key = (capacity, self.device)
        if key not in self._tables:
            cos, sin = rotary_tables(capacity, self.cfg.rotary_dims, self.cfg.rotary_base, self.device)
            self._tables = {key: (cos.contiguous(), sin.contiguous())}  # one row's tables at a time
        return self._tables[key]

    # ---- shared by both phases -------------------------------------------------------------------
    def _norms_of(self, layer: TransformerLayer | None) -> tuple[nn.LayerNorm, ...]:
        """The norms that read the residual stream next: a layer's (both of them when its attention and MLP
        branch off the same x), or the final norm after the last layer."""
        if layer is None:
            return (self.logit_layer.final_norm,)
        if self.cfg.residual == "parallel":
            return (layer.input_norm, layer.post_attention_norm)
        return (layer.input_norm,)

    def embed_and_norm(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The residual stream x (rows, h) of the tokens and the first layer's norm(s) of it."""
        x = self.embed(input_ids).reshape(-1, self.cfg.hidden_size)  # (b*s, h)
        return x, residual_norms(x, (), self._norms_of(self.layers[0]), backend=self.kernels)

    def layers_forward(self, x: torch.Tensor, normed: tuple[torch.Tensor, ...], attend: Attend,
                       gemm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _plain_linear) -> torch.Tensor:
        """Every layer over the residual stream x (updated in place); returns the final norm of it (rows, h).

        The layer's Linear modules hold the weights; their biases are added by the op after each GEMM (the
        attention op for QKV, bias_gelu for MLP-up, residual_norms for the out-projection and MLP-down), and
        each residual add is fused with the norm(s) that read its result. `gemm(x, weight)`: the weight GEMMs'
        kernel (F.linear; the invariant decode's chosen kernels)."""
        parallel = self.cfg.residual == "parallel"
        count = len(self.layers)
        for i, layer in enumerate(self.layers):
            following = self.layers[i + 1] if i + 1 < count else None
            qkv_t, out_t = layer.attention.qkv_transform, layer.attention.out_projection
            up, down = layer.mlp.mlp_up, layer.mlp.mlp_down
            attn_out = gemm(attend(i, layer, gemm(normed[0], qkv_t.weight)), out_t.weight)  # (rows, h)
            if parallel:  # x + attn(norm1(x)) + mlp(norm2(x))
                hidden = bias_gelu(gemm(normed[1], up.weight), up.bias, backend=self.kernels)  # (rows, 4h)
                mlp_out = gemm(hidden, down.weight)
                normed = residual_norms(x, (mlp_out, attn_out), self._norms_of(following),
                                        biases=(down.bias, out_t.bias), backend=self.kernels)
            else:  # x + attn(norm1(x)), then + mlp(norm2(.))
                (mlp_in,) = residual_norms(x, (attn_out,), (layer.post_attention_norm,), biases=(out_t.bias,),
                                           backend=self.kernels)
                hidden = bias_gelu(gemm(mlp_in, up.weight), up.bias, backend=self.kernels)
                normed = residual_norms(x, (gemm(hidden, down.weight),), self._norms_of(following),
                                        biases=(down.bias,), backend=self.kernels)
        return normed[0]

    # ---- prefill: the prompt once through, filling the cache -------------------------------------
    def prefill(self, input_ids: torch.Tensor, cache: KVCache, *, logits_positions: int = 1) -> torch.Tensor:
        """input_ids (b, s), s <= cache capacity: writes every layer's k and v at positions 0..s-1 and
        returns the logits of the last `logits_positions` positions (b, positions, vocab)."""
        cfg = self.cfg
        b, s = input_ids.shape
        if self.invariant and b > 1:  # each row alone: the shapes a row sees do not depend on the batch
            return torch.cat([self.prefill(input_ids[r:r + 1], cache.row(r), logits_positions=logits_positions)
                              for r in range(b)])
        heads, d = cfg.heads_per_gpu, cfg.head_dim
        cos, sin = self.rotary_tables(cache.capacity)

        def attend(i: int, layer: TransformerLayer, qkv: torch.Tensor) -> torch.Tensor:
            bias = layer.attention.qkv_transform.bias
            if bias is not None:
                qkv.add_(bias)  # (b*s, 3h); prefill's cost is GEMMs and attention, not this kernel
            qkv = apply_rotary_in_place(qkv, cos[:s], sin[:s], heads)  # q and k turned in place
            packed = qkv.view(b, s, heads, 3, d)
            q, k, v = (packed[..., j, :].transpose(1, 2) for j in range(3))  # (b, heads, s, d) views
            cache.keys[i, :, :, :s].copy_(k)
            cache.values[i, :, :, :s].copy_(v)
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.attention.scale)
            return context.transpose(1, 2).reshape(b * s, heads * d)  # (b*s, h)

        x, normed = self.embed_and_norm(input_ids)
        final = self.layers_forward(x, normed, attend).view(b, s, -1)[:, -logits_positions:]  # (b, p, h)
        return self.logit_layer.logits(final)  # (b, p, vocab)

    # ---- decode: one token per row at a device-held position --------------------------------------
    def decode_logits(self, tokens: torch.Tensor, cache: KVCache, pos: torch.Tensor, splits: Splits,
                      tables: tuple[torch.Tensor, torch.Tensor], **branching) -> torch.Tensor:
        """tokens (b,) at position `pos` (a device int64 scalar, the same for every row): writes their k and
        v at pos and returns their logits (b, vocab). No host sync and no shape depends on pos. `tables`:
        rotary_tables(cache.capacity), held by the caller (a captured graph reads them at replay)."""
        x, normed = self.embed_and_norm(tokens)
        return self.decode_from(x, normed, cache, pos, splits, tables, **branching)

    def decode_from(self, x: torch.Tensor, normed: tuple[torch.Tensor, ...], cache: KVCache, pos: torch.Tensor,
                    splits: Splits, tables: tuple[torch.Tensor, torch.Tensor], *, branches: bool = False,
                    branch: torch.cuda.Stream | None = None, norm_in_gemv: bool = False,
                    qkv_first: bool = False, join_inputs: bool = True) -> torch.Tensor:
        """decode_logits after the embedding and first norm (which torch.compile may have fused).

        `branches` (parallel residual): each layer's attention branch (QKV GEMM, attention) and MLP branch
        (MLP-up GEMM, bias + GELU) as two separate chains, on the `branch` stream and the current one where
        a stream is given, so that in a CUDA graph they run concurrently (models/decode_kernels.py says why);
        without, the attention kernel also does the MLP's bias + GELU (one kernel fewer, no overlap).
        `norm_in_gemv` (parallel residual): where the output GEMM [out | down] is a tuned GEMV (batch 1), its
        last program does the residual add and the next norms (models/decode_gemm.gemv_residual_norms).
        `qkv_first` (with `branches`): the QKV GEMM runs before the fork, so the attention kernel alone runs
        beside the MLP-up GEMM. `join_inputs` (one stream): QKV and MLP-up as one GEMM launch where the table
        has a plan for [W_qkv; W_up] (_input_gemms)."""
        cos, sin = tables
        heads = self.cfg.heads_per_gpu
        if self.cfg.residual == "parallel" and all(self.output_weight(layer) is not None for layer in self.layers):
            final = self._parallel_decode(x, normed, cache, pos, splits, tables, branches, branch,
                                          norm_in_gemv, qkv_first, join_inputs)  # (b, h)
            return self._gemm(final, self.logit_layer.logits.weight)  # (b, vocab)

        def attend(i: int, layer: TransformerLayer, qkv: torch.Tensor) -> torch.Tensor:
            return decode_attention(qkv, layer.attention.qkv_transform.bias, cache.keys[i], cache.values[i], pos,
                                    cos, sin, heads=heads, scale=layer.attention.scale, splits=splits,
                                    backend=self.kernels)

        if self.invariant:
            final = self.layers_forward(x, normed, attend, self._gemm)
            return self._gemm(final, self.logit_layer.logits.weight)  # (b, vocab)
        return self.logit_layer.logits(self.layers_forward(x, normed, attend))  # (b, vocab)

    def _plan(self, rows: int, weight: torch.Tensor):
        """The tuned Triton plan of a decode GEMM (models/decode_gemm.py's table), None for cuBLAS; never one
        in invariant mode (the table picks kernels by rows, so a row's sums would change with the batch)."""
        if self.invariant or not use_triton(weight, self.kernels):
            return None
        return gemm_plan(rows, weight.shape[0], weight.shape[1])

    def _gemm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A decode GEMM without bias: in invariant mode the kernel chosen for its shape; else the tuned Triton
        kernel where models/decode_gemm.py's table has one for this shape, else cuBLAS (always cuBLAS / plain
        torch on the torch path, the reference)."""
        if self.invariant:
            return choice_linear(x, weight, None, self.gemm_choices[tuple(weight.shape)])
        return linear(x, weight, self._plan(x.shape[0], weight))

    def _parallel_decode(self, x: torch.Tensor, normed: tuple[torch.Tensor, ...], cache: KVCache, pos: torch.Tensor,
                         splits: Splits, tables: tuple[torch.Tensor, torch.Tensor], branches: bool = False,
                         branch: torch.cuda.Stream | None = None, norm_in_gemv: bool = False,
                         qkv_first: bool = False, join_inputs: bool = True) -> torch.Tensor:
        """layers_forward for one token per row with the parallel residual's output GEMMs joined: per layer a
        norm kernel, the QKV and MLP-up GEMMs, the attention kernel (with the MLP-up's bias + GELU, or beside
        it: `branches`) and one GEMM [attention | gelu(up)] x [W_out | W_down]^T. Returns the final norm (b, h)."""
        cos, sin = tables
        heads = self.cfg.heads_per_gpu
        count = len(self.layers)
        for i, layer in enumerate(self.layers):
            following = self.layers[i + 1] if i + 1 < count else None
            attention, mlp = layer.attention, layer.mlp
            if branches:
                joined = self._two_branches(i, layer, normed, cache, pos, splits, tables, branch,
                                            qkv_first)  # (b, h + 4h)
            else:
                qkv, up = self._input_gemms(layer, normed, join_inputs)  # (b, 3h), (b, 4h)
                joined = decode_attention_and_gelu(qkv, attention.qkv_transform.bias, cache.keys[i], cache.values[i],
                                                   pos, cos, sin, up, mlp.mlp_up.bias, heads=heads,
                                                   scale=attention.scale, splits=splits,
                                                   backend=self.kernels)  # (b, h + 4h)
            output_weight = self.output_weight(layer)
            biases = (mlp.mlp_down.bias, attention.out_projection.bias)
            plan = self._plan(joined.shape[0], output_weight) if norm_in_gemv else None
            if plan is not None and plan.kind == "gemv":
                normed = gemv_residual_norms(joined, output_weight, plan, x, self._norms_of(following), biases=biases)
            else:
                both = self._gemm(joined, output_weight)  # (b, h): attn + mlp before their biases
                normed = residual_norms(x, (both,), self._norms_of(following), biases=biases, backend=self.kernels)
        return normed[0]

    def _input_gemms(self, layer: TransformerLayer, normed: tuple[torch.Tensor, ...],
                     join: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """norm1(x) W_qkv^T and norm2(x) W_up^T: one launch over [W_qkv; W_up] where the table has a dot / wdot
        plan for the stacked weight (the kernel reads norm2(x) at its offset from norm1(x)); else two GEMMs.
        Returns views of one (b, 3h + 4h) output, or two tensors."""
        qkv_weight, up_weight = layer.attention.qkv_transform.weight, layer.mlp.mlp_up.weight
        first, second = normed  # the parallel residual: both norms of x
        stacked = self.input_weight(layer) if join else None
        plan = self._plan(first.shape[0], stacked) if stacked is not None else None
        if plan is not None and second_input_problem(plan, first, second, qkv_weight.shape[0]) is None:
            both = triton_linear(first, stacked, plan, second=(second, qkv_weight.shape[0]))
            return both[:, :qkv_weight.shape[0]], both[:, qkv_weight.shape[0]:]
        return self._gemm(first, qkv_weight), self._gemm(second, up_weight)

    def _two_branches(self, i: int, layer: TransformerLayer, normed: tuple[torch.Tensor, ...], cache: KVCache,
                      pos: torch.Tensor, splits: Splits, tables: tuple[torch.Tensor, torch.Tensor],
                      branch: torch.cuda.Stream | None, qkv_first: bool = False) -> torch.Tensor:
        """[attention(norm1(x) W_qkv) | gelu(norm2(x) W_up + b)] (b, h + 4h): the attention chain on `branch`,
        the MLP chain on the current stream, both writing their half of one buffer allocated (and, after the
        output GEMM, freed) on the current stream, which waits for the branch before returning. Every tensor
        the branch reads or allocates stays referenced until then, so no block is reused under it."""
        attention, mlp = layer.attention, layer.mlp
        rows, h = normed[0].shape
        joined = torch.empty(rows, h + mlp.mlp_up.out_features, device=normed[0].device, dtype=normed[0].dtype)
        main = torch.cuda.current_stream(normed[0].device) if branch is not None else None
        qkv = self._gemm(normed[0], attention.qkv_transform.weight) if qkv_first else None  # (b, 3h)
        if branch is not None:
            branch.wait_stream(main)  # the norms (and with qkv_first the QKV GEMM) are written
        with torch.cuda.stream(branch) if branch is not None else nullcontext():
            if qkv is None:
                qkv = self._gemm(normed[0], attention.qkv_transform.weight)  # (b, 3h)
            decode_attention(qkv, attention.qkv_transform.bias, cache.keys[i], cache.values[i], pos, *tables,
                             heads=self.cfg.heads_per_gpu, scale=attention.scale, splits=splits, out=joined[:, :h],
                             backend=self.kernels)
        up_weight = mlp.mlp_up.weight
        plan = self._plan(rows, up_weight)
        if plan is not None and plan.kind == "gemv":  # bias + GELU in the GEMV's epilogue
            triton_linear(normed[1], up_weight, plan, joined[:, h:], gelu=True, bias=mlp.mlp_up.bias)
        else:
            bias_gelu(self._gemm(normed[1], up_weight), mlp.mlp_up.bias, out=joined[:, h:], backend=self.kernels)
        if branch is not None:
            main.wait_stream(branch)
        del qkv
        return joined

"""Which GPT-NeoX shapes DeepSpeed's injected inference kernels accept, derived from their source.

A pure function of the shape, so the bench can refuse a shape before launching a worker (a kernel assert
kills the whole process: pythia-2.8b, h/a = 80, died so on the H100) and the sizing advisor can warn at
design time. Every condition cites the DeepSpeed 0.19.8 source it comes from (paths relative to the sdist
root; `csrc/...` is shipped as `deepspeed/ops/csrc/...` in the wheel). The kernel-injected GPT-NeoX path:

  DeepSpeedSelfAttention -> SoftmaxContextOp -> ds_softmax_context  (pt_binding.cpp:439-560)
    launch_bias_add_transform_0213  q/k/v into the KV cache    (transform.cu:221-264)
    launch_apply_rotary_pos_emb     rotate_half rotary          (apply_rotary_pos_emb.cu:132-180)
    attention_unfused               cuBLAS + attn_softmax_v2    (any head size; context <= 32768)
    launch_transform4d_0213         heads back to [b, s, h]     (transform.cu:709-725)

GPT-NeoX is 'megatron_v2' in DeepSpeed, which sets rotate_half = True, rotate_every_two = False
(deepspeed/module_inject/containers/gptneox.py:31-33), so the rotary kernel above is the one that runs
whenever rotary_dim > 0 (pt_binding.cpp:509). rotary_dim is transformers' `rotary_ndims` =
int(head_size * rotary_pct) (deepspeed/module_inject/containers/base.py:159-164).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import DTYPE_BYTES

DEEPSPEED_VERSION = "0.19.8"
HW_WARP_SIZE = 32  # csrc/includes/ds_kernel_utils.h:40 (CUDA; ROCm wavefronts are 64)
MAX_THREADS = 1024  # csrc/transformer/inference/includes/inference_cuda_layers.h:23
MAX_CONTEXT = 32768  # csrc/transformer/inference/csrc/softmax.cu:470-487: longer throws "Unsupport Seq_Length!"
ROTARY_THREADS_PER_HEAD = (4, 8, 16, 32)  # apply_rotary_pos_emb.cu:118-129, LAUNCH_FOR_ALIGNMENT on CUDA
VECTOR_BYTES = 16  # the transform kernels move float4s: 8 fp16/bf16 or 4 fp32 elements per thread
ROTARY_FILE = "csrc/transformer/inference/csrc/apply_rotary_pos_emb.cu"
TRANSFORM_FILE = "csrc/transformer/inference/csrc/transform.cu"


@dataclass(frozen=True)
class KernelSupport:
    ok: bool
    reason: str  # one line a user can act on ("" when ok)
    source: str  # the DeepSpeed file and condition the verdict comes from

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "source": self.source}


def next_pow2(value: int) -> int:
    """DeepSpeed's next_pow2 (csrc/includes/ds_kernel_utils.h:56-64), bit for bit."""
    rounded = value - 1
    for shift in (1, 2, 4, 8):
        rounded |= rounded >> shift
    return rounded + 1


def rotary_alignment(rotary_dims: int, element_bytes: int) -> int | None:
    """Bytes each rotary thread loads: the widest of 16/8/4 that divides half the rotary dims in elements
    (apply_rotary_pos_emb.cu:145-156); None where the launcher reaches `assert(false)` (line 155)."""
    half = rotary_dims >> 1
    for alignment in (16, 8, 4):
        per = alignment // element_bytes
        if per and half % per == 0:
            return alignment
    return None


def injection_support(head_dim: int, rotary_dims: int, dtype: str = "float16", *,
                      hidden_per_gpu: int | None = None) -> KernelSupport:
    """Does DeepSpeed 0.19.8's kernel injection run a GPT-NeoX layer with this head size and rotary width?

    `hidden_per_gpu` (h/t), when given, also checks the transform kernels' block size. Conditions, in the
    order the kernels meet them."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype: '{dtype}' is not one of {', '.join(DTYPE_BYTES)}")
    if head_dim <= 0 or rotary_dims < 0 or rotary_dims > head_dim:
        raise ValueError(f"head_dim {head_dim} / rotary_dims {rotary_dims}: need 0 <= rotary_dims <= head_dim, head_dim > 0")
    size = DTYPE_BYTES[dtype]
    per_vector = VECTOR_BYTES // size
    # transform.cu:241-243 (fp16/bf16) and :195-198 (fp32): `hidden_dim >>= 3` (>>= 2 for fp32), then one
    # thread per float4 of a head (block x = hidden/8/heads): a head that is not a whole number of float4s
    # truncates the strides, which computes wrong values without any assert
    if head_dim % per_vector:
        return KernelSupport(False, (
            f"head size {head_dim} is not a multiple of {per_vector}: DeepSpeed's transform kernels move "
            f"{dtype} heads in 16-byte vectors ({per_vector} elements), so this shape computes wrong values"),
            f"{TRANSFORM_FILE}:241-243 (hidden_dim >>= 3; block_dim(hidden_dim / heads, heads)); "
            "the same in launch_transform4d_0213, :719-722")
    if hidden_per_gpu is not None and size == 2 and hidden_per_gpu // per_vector > MAX_THREADS:
        return KernelSupport(False, (
            f"hidden size per GPU {hidden_per_gpu} needs {hidden_per_gpu // per_vector} threads in one block of "
            f"bias_add_transform_0213 (limit {MAX_THREADS}): use tensor parallelism so h/t <= {MAX_THREADS * per_vector}"),
            f"{TRANSFORM_FILE}:241-243 (head_ext = 1, its split over blocks commented out; block = hidden/8 threads)")
    if rotary_dims == 0:
        return KernelSupport(True, "", "csrc/transformer/inference/csrc/pt_binding.cpp:509 "
                             "(no rotary kernel when rotary_dim == 0)")
    alignment = rotary_alignment(rotary_dims, size)
    if alignment is None:
        return KernelSupport(False, (
            f"rotary dims {rotary_dims}: half of them ({rotary_dims >> 1}) is not a multiple of {4 // size} "
            f"{dtype} elements, so DeepSpeed's fused rotary kernel asserts (the process dies)"),
            f"{ROTARY_FILE}:147-156 (alignment from half_dim = rotary_dim >> 1; else assert(false))")
    per_thread = alignment // size  # T_per_elem, :157
    padded = next_pow2(head_dim)  # :161
    if padded > HW_WARP_SIZE * per_thread:  # :163
        return KernelSupport(False, (
            f"head size {head_dim} (padded to {padded}) with rotary dims {rotary_dims}: one warp of "
            f"{HW_WARP_SIZE} threads x {per_thread} elements covers only {HW_WARP_SIZE * per_thread}, so "
            "DeepSpeed's fused rotary kernel asserts (the process dies)"),
            f"{ROTARY_FILE}:163 assert(padded_head_size <= hw_warp_size * T_per_elem), "
            f"T_per_elem = {per_thread} from half_dim {rotary_dims >> 1} (:147-157)")
    threads_per_head = padded // per_thread  # :165
    if threads_per_head not in ROTARY_THREADS_PER_HEAD:
        return KernelSupport(False, (
            f"head size {head_dim} (padded to {padded}) with rotary dims {rotary_dims} gives {threads_per_head} "
            f"threads per head; DeepSpeed's rotary launcher has kernels for {ROTARY_THREADS_PER_HEAD} only and "
            "asserts otherwise"),
            f"{ROTARY_FILE}:118-129 (LAUNCH_FOR_ALIGNMENT: else assert(false))")
    return KernelSupport(True, "", (
        f"{ROTARY_FILE}:147-165: {alignment}-byte loads, {per_thread} elements per thread, {threads_per_head} "
        f"threads per head (padded head {padded} <= {HW_WARP_SIZE} x {per_thread}); {TRANSFORM_FILE}:241-243: "
        f"head {head_dim} = {head_dim // per_vector} vectors"))


def context_support(context: int) -> KernelSupport:
    """The injected attention's softmax handles at most MAX_CONTEXT keys."""
    if context > MAX_CONTEXT:
        return KernelSupport(False, f"context {context} exceeds DeepSpeed's attention softmax limit {MAX_CONTEXT}",
                             "csrc/transformer/inference/csrc/softmax.cu:470-487 (throw 'Unsupport Seq_Length!')")
    return KernelSupport(True, "", "csrc/transformer/inference/csrc/softmax.cu:470")


INT_LIMIT = 2**31  # the scores' row offset in attn_softmax_v2 is a 32-bit int
SOFTMAX_FILE = "csrc/transformer/inference/csrc/softmax.cu"


def prefill_support(batch: int, heads_per_gpu: int, prompt_len: int) -> KernelSupport:
    """Is the injected attention right for a prompt of `prompt_len` tokens at this batch?

    attn_softmax_v2 finds a score row at `vals += iter_offset * sequence_length` with both ints
    (softmax.cu:68-74; :289 in the fp32 kernel), where iter_offset runs over batch x heads x query rows.
    Once (b*H*L - 1) * L reaches 2^31 the offset wraps: those rows are never softmaxed, and the kernel
    reads and writes elsewhere in the workspace (the KV cache), so every row can come out wrong, silently.
    On the H100 (2026-11-23) gpt3-2.7b-c2 (40 heads) at b=16, prompt 2048 (2.7e9 scores) failed the
    logits check (top-1 agreement 35%) while a=20 (1.3e9) and b=1 (1.7e8) passed. Decode (one query row)
    stays far below the limit but inherits the prefill's KV cache."""
    scores_offset = (batch * heads_per_gpu * prompt_len - 1) * prompt_len
    if scores_offset >= INT_LIMIT:
        return KernelSupport(False, (
            f"batch {batch} x {heads_per_gpu} heads x prompt {prompt_len}^2 = {batch * heads_per_gpu * prompt_len ** 2:.3g} "
            f"attention scores: the fused softmax indexes them with a 32-bit int (limit 2^31 = {INT_LIMIT:.3g}), so "
            "the prefill computes wrong values without an error; use a smaller batch or prompt"),
            f"{SOFTMAX_FILE}:68-74 (int iter_offset * sequence_length; :289 for fp32), total_count :443")
    return KernelSupport(True, "", f"{SOFTMAX_FILE}:68-74: (b*H*L - 1) * L = {scores_offset:.3g} < 2^31")


def largest_safe_prefill_batch(heads_per_gpu: int, prompt_len: int) -> int:
    """The largest batch prefill_support accepts for this many heads and prompt length (0: not even one)."""
    batch = (INT_LIMIT // prompt_len + 1) // (heads_per_gpu * prompt_len) + 1
    while batch > 0 and not prefill_support(batch, heads_per_gpu, prompt_len).ok:
        batch -= 1
    return batch


# Why `enable_cuda_graph` cannot speed up MII legacy's GPT-NeoX generation (DeepSpeed 0.19.8, MII 0.3.3):
# 1. with kernel injection, replace_with_policy raises ValueError when the layer policy does not support CUDA
#    graphs (deepspeed/module_inject/replace_module.py:223-228); GPTNEOXLayerPolicy never sets
#    cuda_graph_supported, which DSPolicy/TransformerPolicy initialise to False (module_inject/policy.py:31,66);
#    only the BERT, DistilBERT and CLIP containers set it True (module_inject/containers/bert.py:35, ...).
# 2. without injection the graph wraps InferenceEngine.forward (inference/engine.py:588-607), but MII's
#    pipeline calls generate(), which DeepSpeed patches to _generate (engine.py:67-69, 617-640): it calls
#    self.module.generate, i.e. transformers' own forward, so no graph is captured or replayed while decoding.
CUDA_GRAPH_SOURCE = ("deepspeed/module_inject/replace_module.py:223-228 + module_inject/policy.py:31,66 "
                     "(injection); deepspeed/inference/engine.py:67-69,588-640 (generate bypasses the graph)")


def cuda_graph_support(inject: bool, policy_supports_graphs: bool | None = None) -> KernelSupport:
    """MII legacy with enable_cuda_graph on GPT-NeoX. `policy_supports_graphs`: what the installed
    DeepSpeed's GPTNEOXLayerPolicy says (None: not checked; the 0.19.8 source says False)."""
    if inject and not policy_supports_graphs:
        checked = "" if policy_supports_graphs is None else " (checked on the installed DeepSpeed)"
        return KernelSupport(False, (
            "enable_cuda_graph with kernel injection: DeepSpeed's GPT-NeoX policy does not support CUDA graphs"
            f"{checked}, so init_inference raises ValueError before anything runs"), CUDA_GRAPH_SOURCE)
    return KernelSupport(False, (
        "enable_cuda_graph graphs only InferenceEngine.forward; MII's generate() goes through DeepSpeed's "
        "_generate to transformers' generate, which never calls that forward, so decode steps are not graphed"),
        CUDA_GRAPH_SOURCE)

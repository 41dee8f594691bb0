"""The paper's sizing rules (Section VI-B, and VII-B for SwiGLU) checked against one config.

Pure: config in, list of findings out. The report shows them beside the measurements; the coming sizing
advisor reuses them to score candidate shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models import DTYPE_BYTES, ModelConfig, layer_gemms

from .quantization import last_wave_fill, tiles, wave_efficiency

TENSOR_CORE_BYTES = 128  # A100/H100 tensor cores' full-speed alignment: 64 elements of fp16/bf16, 32 of fp32


def alignment_elements(dtype: str) -> int:
    """How many elements of `dtype` make the tensor cores' full-speed alignment (the paper's 64 for fp16)."""
    return TENSOR_CORE_BYTES // DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class SizingFinding:
    rule: str
    quantity: str
    value: int
    message: str
    paper: str

    def to_dict(self) -> dict:
        return asdict(self)


def largest_power_of_two_dividing(n: int) -> int:
    return n & -n


def sizing_findings(cfg: ModelConfig, *, sms: int | None = None) -> list[SizingFinding]:
    found: list[SizingFinding] = []
    multiple = alignment_elements(cfg.dtype)

    def aligned(quantity: str, value: int, paper: str, why: str) -> None:
        if value % multiple:
            p2 = largest_power_of_two_dividing(value)
            found.append(SizingFinding("tensor_core_alignment", quantity, value,
                                       f"{quantity} = {value} is not a multiple of {multiple} ({TENSOR_CORE_BYTES} "
                                       f"bytes of {cfg.dtype}; largest power of two dividing it: {p2}); {why}", paper))

    aligned("h/a", cfg.head_dim, "VI-B, Fig. 7",
            "attention BMMs run off the tensor cores' fast path; fewer heads or a larger h fixes it")
    aligned("v (padded)", cfg.embedding_rows, "VI-B, Fig. 20",
            f"pad the vocabulary to a multiple of {multiple} for the logit GEMM")
    aligned("h/t", cfg.hidden_per_gpu, "VI-B", "the per-GPU hidden size misaligns every linear layer")
    aligned("b*s", cfg.tokens, "VI-B", "the row count of every linear GEMM")
    if cfg.activation == "swiglu":
        aligned("intermediate_size/t", cfg.ffn_per_gpu, "VII-B",
                "the 8/3*h SwiGLU rule breaks alignment; search nearby sizes (Llama-2-7B uses 11008)")
    elif cfg.ffn_per_gpu % multiple:
        aligned("4h/t", cfg.ffn_per_gpu, "VI-B", "the MLP GEMMs are misaligned")
    if cfg.tensor_parallel > 1:
        found.append(SizingFinding("tensor_parallel", "t", cfg.tensor_parallel,
                                   f"t = {cfg.tensor_parallel}: keep t as small as possible (smaller per-GPU GEMMs "
                                   "run less efficiently)", "VI-B"))
    if sms:
        for gemm in layer_gemms(cfg.replace(attention="eager"), include_logits=True):
            t = tiles(gemm.m, gemm.n, (128, 256), gemm.batch)
            fill, efficiency = last_wave_fill(t, sms), wave_efficiency(t, sms)
            if efficiency < 0.9:  # the partly-filled tail wave costs over 10% of the GEMM's SM-time
                found.append(SizingFinding(
                    "wave_quantization", gemm.component, t,
                    f"{gemm.component} {gemm.shape}: {t} tiles of 128x256 on {sms} SMs leave a last wave "
                    f"{fill:.0%} full ({1 - efficiency:.0%} of SM-time idle)", "III-B, VI-B, Fig. 5b"))
    return found

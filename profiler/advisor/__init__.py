"""Sizing advisor (issue 9): what is wrong with a shape on a GPU, and which shape of the same size is faster.

    gpus         the GPUs the cost model knows (SMs, ceilings, alignment evidence), or the local one
    rules        the paper's sizing rules as pass / warn / fail checks with a modelled cost
    cost_model   the wave/tile model of a training step (pre-ranks candidates)
    candidates   shapes within the parameter budget, pre-ranked, and the ones worth measuring
    scaling      the scaling-law shape sensitivity (paper/003): which proposals leave the flat-loss region
    measure      interleaved timing rounds on the device (the one coupling to timing / layer_profile)
    ranking      rounds -> per-round speed-ups, median and p10/p90, verdicts (pure)
    swiglu       the SwiGLU intermediate-size search (paper VII-B)
    advice       the library API tying them together
"""

from .advice import Advice, AdviceOptions, advise, document
from .candidates import SearchSpace, candidates_frame, select_for_measurement
from .gpus import GPUS, GpuModel, resolve_gpu
from .rules import Check, check_shape, checks_frame
from .swiglu import SwigluSearch

__all__ = ["Advice", "AdviceOptions", "advise", "document", "SearchSpace", "candidates_frame",
           "select_for_measurement", "GPUS", "GpuModel", "resolve_gpu", "Check", "check_shape", "checks_frame",
           "SwigluSearch"]

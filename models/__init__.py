"""Model configs (the Pythia suite and the paper's variants) and the GPT-NeoX-style layer."""

from .config import DTYPE_BYTES, ConfigError, ModelConfig
from .gemms import Gemm, flash_attention_flops, layer_flops, layer_gemms
from .loading import bundled_names, config_from_mapping, load_config
from .params import ParameterCount, count_parameters

__all__ = [
    "DTYPE_BYTES",
    "ConfigError", "ModelConfig", "Gemm", "flash_attention_flops", "layer_flops", "layer_gemms",
    "bundled_names", "config_from_mapping", "load_config", "ParameterCount", "count_parameters",
]

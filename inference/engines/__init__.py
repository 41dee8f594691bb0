"""Inference engines behind one small protocol (see base.py)."""

from .base import ENGINES, BatchResult, Engine, EngineRun, GenerationJob, engine_names, get_engine

__all__ = ["ENGINES", "BatchResult", "Engine", "EngineRun", "GenerationJob", "engine_names", "get_engine"]

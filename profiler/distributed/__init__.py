"""`python -m profiler layer --tensor-parallel t --distributed`: the tensor-parallel layer on t processes.

launcher (torchrun, one process per GPU) -> worker (per rank: build the shard, time, trace, attribute,
measure communication) -> merge (rank 0: one run.json, CSVs, a merged trace; the command writes report.html). communication.py
holds the pure analysis (bytes, bus bandwidth, overlap) over attribution's DataFrames.
"""

from .launcher import DistributedJob, require_gpus, run_distributed_layer

__all__ = ["DistributedJob", "require_gpus", "run_distributed_layer"]

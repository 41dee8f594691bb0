"""DeepSpeed-MII, the engine under test: `mii.legacy`, non-persistent deployment, kernel injection, fp16.

GPT-NeoX (Pythia) runs only through mii.legacy (FastGen has no GPT-NeoX), with transformers 4.38.x.
Each model is deployed in a worker process of its own (engines/mii_worker.py): DeepSpeed's injected layers
keep process-wide state (a class-level layer counter, one workspace sized at the first forward), so a
second model deployed in the same process would reuse the first one's workspace. For tensor parallelism
the worker is started under torchrun: non-persistent legacy deployments require WORLD_SIZE ==
tensor_parallel, i.e. one process per GPU, all issuing the same queries.

deepspeed and mii are imported only inside the worker and in prepare(); without them the engine reports
itself unavailable with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..metrics import GenerationSample, LogitsCheck, PeakMemory
from .base import BatchResult, EngineRun, GenerationJob, OnResult

ROOT = Path(__file__).resolve().parents[2]
TIMING_METHOD = ("per-token CUDA events recorded by a logits processor passed through MII's non-persistent "
                 "query to the injected model's generate(); end to end = synchronised host clock around query()")


def worker_command(job_path: Path, tensor_parallel: int) -> list[str]:
    worker = ["-m", "inference.engines.mii_worker", str(job_path)]
    if tensor_parallel == 1:
        return [sys.executable, *worker]
    # torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_*: what deepspeed.init_distributed reads
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tensor_parallel}",
            *worker]


def plain_arch_list(arch_list: str) -> str:
    """DeepSpeed's JIT builder parses TORCH_CUDA_ARCH_LIST as numbers and fails on entries such as '9.0a'
    (what some CUDA images set): keep the numeric part, or the visible GPUs' capabilities when unset."""
    entries = [re.match(r"\d+\.\d+(\+PTX)?", e.strip()) for e in arch_list.replace(" ", ";").split(";") if e.strip()]
    plain = list(dict.fromkeys(m.group(0) for m in entries if m))
    if not plain and torch.cuda.is_available():
        plain = list(dict.fromkeys("%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())))
    return ";".join(plain)


def failure_reason(log_text: str, returncode: int) -> str:
    """The last line of the worker's log that looks like an error, or the exit code."""
    for line in reversed(log_text.strip().splitlines()):
        line = line.strip()
        if re.search(r"(Error|Exception|error:|Traceback|out of memory|Killed|Assertion)", line) and "Traceback" not in line:
            if "Assertion" in line:  # a CUDA kernel's assert: keep the kernel file and the condition
                where = re.search(r"([\w.]+\.cu):\d+", line)
                line = f"{where.group(0) if where else 'kernel'}: {line[line.index('Assertion'):]}"
            return line[:300]
    return f"worker exited with status {returncode}"


class MIIEngine:
    name = "mii"
    is_reference = False
    timing_method = TIMING_METHOD

    def unavailable_reason(self, *, tensor_parallel: int = 1) -> str | None:
        if importlib.util.find_spec("deepspeed") is None:
            return "deepspeed not installed (pip install -e '.[inference]')"
        if importlib.util.find_spec("mii") is None:
            return "deepspeed-mii not installed (pip install -e '.[inference]')"
        if not torch.cuda.is_available():
            return "no CUDA GPU (DeepSpeed's inference kernels need one)"
        import transformers

        if not transformers.__version__.startswith("4.38."):
            return (f"transformers {transformers.__version__}: mii.legacy's GPT-NeoX path runs with 4.38.x "
                    "(pip install transformers==4.38.2)")
        if tensor_parallel > torch.cuda.device_count():
            return f"tensor_parallel {tensor_parallel} needs {tensor_parallel} GPUs, found {torch.cuda.device_count()}"
        return None

    def prepare(self) -> None:
        # the JIT build of DeepSpeed's inference kernels (~60 s on an H100 with MAX_JOBS=16) happens here,
        # once; the workers then load the cached extension in about a second
        from deepspeed.ops.op_builder import InferenceBuilder

        os.environ["TORCH_CUDA_ARCH_LIST"] = plain_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST", ""))
        InferenceBuilder().load()

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        log_dir = Path(job.log_dir or tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"mii-{job.model}-tp{job.tensor_parallel}.log"
        with tempfile.TemporaryDirectory(prefix="mii-job-") as tmp:
            job_path, results_path = Path(tmp) / "job.json", Path(tmp) / "results.jsonl"
            job_path.write_text(json.dumps({
                "model": job.model, "checkpoint": str(job.checkpoint), "deployment_name": f"bench-{job.model}",
                "texts": list(job.prompts.texts), "input_ids": job.prompts.input_ids.tolist(),
                "batches": list(job.batches), "new_tokens": job.new_tokens, "warmup": job.warmup,
                "repeats": job.repeats, "dtype": job.dtype, "tensor_parallel": job.tensor_parallel,
                "reference_logits": str(job.reference_logits) if job.reference_logits else None,
                "results": str(results_path)}))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            with log_path.open("w") as log:
                proc = subprocess.run(worker_command(job_path, job.tensor_parallel), stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            check, check_error = None, "the worker stopped before its logits check"
            for record in _records(results_path):
                if record["kind"] == "check":
                    check = LogitsCheck(**record["check"]) if record.get("check") else None
                    check_error = record.get("error")
                elif record["kind"] == "batch":
                    on_result(BatchResult(
                        record["batch"], record["status"], record.get("reason", ""),
                        [GenerationSample(**s) for s in record.get("samples", [])],
                        PeakMemory(**record.get("memory", {})), record.get("dtype"), check, check_error))
        if proc.returncode != 0:
            raise RuntimeError(f"{failure_reason(log_path.read_text(errors='replace'), proc.returncode)} "
                               f"(MII worker log: {log_path})")
        return EngineRun()


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return records

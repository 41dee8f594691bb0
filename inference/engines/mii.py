"""DeepSpeed-MII, the engine under test: `mii.legacy`, non-persistent deployment, fp16, in three variants:
"mii" (kernel injection: DeepSpeed's fused GPT-NeoX kernels), "mii-noinject" (MII's pipeline over
transformers' own modules: for shapes the fused kernels refuse, so no shape is left without a MII row) and
"mii-cudagraph" (enable_cuda_graph; DeepSpeed 0.19.8 cannot apply it to GPT-NeoX generation, and its rows
say why: models/kernel_support.py).

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

from ..checks import LogitsCheck
from models.config import safe_name
from models.kernel_support import KernelSupport, context_support, cuda_graph_support, injection_support, prefill_support
from ..metrics import PeakMemory, RowTiming
from .base import BatchResult, EngineRun, GenerationJob, OnResult

ROOT = Path(__file__).resolve().parents[2]
TIMING_METHOD = ("per-token CUDA events recorded by a logits processor passed through MII's non-persistent "
                 "query to the deployed model's generate(); end to end = synchronised host clock around query()")
TOKENS_GRANULE = 128  # DeepSpeed's workspace holds max_tokens positions per row: the longest context, rounded up
MIN_MAX_TOKENS = 256


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


def max_tokens_for(max_context: int) -> int:
    """MII's max_tokens (DeepSpeed's max_out_tokens, and min_out_tokens: MII sets both): the workspace is
    sized for this many positions per row at the first forward's batch, so it is as small as the longest
    context allows (a b=16 workspace at 2k tokens for a 2.7B model is ~20 GB)."""
    return max(MIN_MAX_TOKENS, -(-max_context // TOKENS_GRANULE) * TOKENS_GRANULE)


def gptneox_policy_supports_cuda_graph() -> bool | None:
    """What the installed DeepSpeed's GPT-NeoX injection policy says; None when it cannot be asked."""
    try:
        from deepspeed.module_inject.containers.gptneox import GPTNEOXLayerPolicy

        return bool(GPTNEOXLayerPolicy(None).cuda_graph_supported)
    except Exception:  # noqa: BLE001 - no deepspeed, or its API moved: fall back to the source reading
        return None


class MIIEngine:
    name = "mii"
    inject = True
    cuda_graph = False
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

    def shape_support(self, cfg, *, dtype: str, tensor_parallel: int, max_context: int) -> KernelSupport:
        """Checked before a worker starts: a kernel assert would kill the worker with every row in it."""
        if self.inject:
            support = injection_support(cfg.head_dim, cfg.rotary_dims, dtype,
                                        hidden_per_gpu=cfg.hidden_size // tensor_parallel)
            if not support.ok:
                return support
            return context_support(max_context)
        return KernelSupport(True, "", "no kernel injection: transformers' own modules under MII's pipeline")

    def row_support(self, cfg, *, dtype: str, tensor_parallel: int, prompt_len: int, batch: int) -> KernelSupport:
        """Checked per prompt length and batch, for a shape shape_support accepted."""
        if self.inject:
            return prefill_support(batch, cfg.num_attention_heads // tensor_parallel, prompt_len)
        return KernelSupport(True, "", "no kernel injection: transformers' own attention")

    def prepare(self) -> None:
        # the JIT build of DeepSpeed's inference kernels (~60 s on an H100 with MAX_JOBS=16) happens here,
        # once; the workers then load the cached extension in about a second
        from deepspeed.ops.op_builder import InferenceBuilder

        os.environ["TORCH_CUDA_ARCH_LIST"] = plain_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST", ""))
        InferenceBuilder().load()

    def job_record(self, job: GenerationJob, results_path: Path) -> dict:
        return {
            "model": job.model, "checkpoint": str(job.checkpoint), "deployment_name": f"bench-{job.model}",
            "prompts": {str(p): {"texts": list(pr.texts), "input_ids": pr.input_ids.tolist()}
                        for p, pr in job.prompts.items()},
            "rows": [list(r) for r in job.rows], "new_tokens": job.new_tokens, "warmup_s": job.warmup_s,
            "repeats": job.repeats, "dtype": job.dtype, "tensor_parallel": job.tensor_parallel,
            "inject": self.inject, "cuda_graph": self.cuda_graph, "max_tokens": max_tokens_for(job.max_context),
            "reference": str(job.reference) if job.reference else None, "results": str(results_path)}

    def run(self, job: GenerationJob, on_result: OnResult) -> EngineRun:
        log_dir = Path(job.log_dir or tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{self.name}-{safe_name(job.model)}-tp{job.tensor_parallel}.log"
        with tempfile.TemporaryDirectory(prefix="mii-job-") as tmp:
            job_path, results_path = Path(tmp) / "job.json", Path(tmp) / "results.jsonl"
            job_path.write_text(json.dumps(self.job_record(job, results_path)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            with log_path.open("w") as log:
                proc = subprocess.run(worker_command(job_path, job.tensor_parallel), stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            checks: dict[int, tuple[LogitsCheck | None, str | None]] = {}
            for record in _records(results_path):
                if record["kind"] == "check":
                    check = LogitsCheck(**record["check"]) if record.get("check") else None
                    checks[record["prompt_len"]] = (check, record.get("error"))
                elif record["kind"] == "batch":
                    p = record["prompt_len"]
                    check, error = checks.get(p, (None, "the worker stopped before its logits check"))
                    timing = RowTiming.from_dict(record["timing"]) if record.get("timing") else None
                    on_result(BatchResult(p, record["batch"], record["status"], record.get("reason", ""), timing,
                                          PeakMemory(**record.get("memory", {})), record.get("dtype"), check, error))
        if proc.returncode != 0:
            raise RuntimeError(f"{failure_reason(log_path.read_text(errors='replace'), proc.returncode)} "
                               f"(MII worker log: {log_path})")
        return EngineRun()


class MIINoInjectEngine(MIIEngine):
    name = "mii-noinject"
    inject = False


class MIICudaGraphEngine(MIIEngine):
    name = "mii-cudagraph"
    cuda_graph = True

    def shape_support(self, cfg, *, dtype: str, tensor_parallel: int, max_context: int) -> KernelSupport:
        # refused for every shape, from the source (kernel_support.cuda_graph_support), confirmed on the
        # installed DeepSpeed's policy when it can be imported; nothing is launched
        return cuda_graph_support(self.inject, gptneox_policy_supports_cuda_graph())


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

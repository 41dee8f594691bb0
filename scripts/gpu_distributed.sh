#!/usr/bin/env bash
# Tensor-parallel layer profiles on two GPUs (device kind nvidia-h200-x2), in one call, from the repo root:
#   bash scripts/gpu_distributed.sh DEST          (default $OUT/distributed)
# 1. the machine: GPUs, how they are linked (nvidia-smi topo), torch and NCCL versions; the tensor-parallel
#    tests (gloo on the CPU, ~20 s)
# 2. a smoke run, pythia-70m at t=2: fails fast if NCCL, the launch or the attribution of NCCL kernels breaks
# 3. pythia-6.9b and paper-large, forward+backward, their own bf16 and s=2048, at t=1 and at t=2 (one process
#    per GPU through torchrun), both degrees into DEST/layer: one report.html with t=1 and t=2 side by side,
#    communication.csv (bytes, bus bandwidth, overlap), components.csv and steps.csv per rank, run.json,
#    per-rank traces and a merged one per config in DEST/layer/tb.
# About 3 minutes on 2xH200. Every step runs even if an earlier one failed; DEST/status.txt says which failed.
set -uo pipefail
DEST=${1:-${OUT:-/tmp/out}/distributed}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# NVLink multicast stays off: a program using it can take the host's GPUs, which others share, out of
# service. The launcher forces these for its ranks too; set here for anything else this script starts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
: > "$DEST/status.txt"
step() {  # step NAME COMMAND...: run, keep the log, record the exit status
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$DEST/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name $rc" >> "$DEST/status.txt"
}

{ nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm --format=csv
  nvidia-smi topo -m
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())"
  env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)='; } 2>&1 | tee "$DEST/machine.txt"

step tests python3 -m pytest -q tests/test_tensor_parallel.py
step smoke python3 -m profiler layer --config pythia-70m --tensor-parallel 2 --distributed --mode forward+backward \
  --out "$DEST/smoke"
for t in 1 2; do
  step "layer-t$t" python3 -m profiler layer --config pythia-6.9b --config paper-large --tensor-parallel "$t" \
    --distributed --mode forward+backward --out "$DEST/layer"
done
cat "$DEST/status.txt"
ls -la "$DEST" "$DEST/layer" 2>/dev/null

#!/usr/bin/env bash
# Issue 11 (batch invariance) on the GPU machine in one call, from the repository root:
#   bash scripts/gpu_invariance.sh [DEST]          (default $OUT/invariance, or /tmp/out/invariance)
# Carry .whl/ (bash ../shared/gpu/fetch-wheels.sh) for the MII rows; without it they say "unavailable".
#
#   (issue 21's kernel choice and its TFLOP/s vs tokens: scripts/bench_invariant_matmul.py, ~3 min on its own)
#   1. GPU tests of the invariant kernels (pytest -m gpu tests/test_invariance.py tests/test_invariant_choice.py):
#      the chosen kernel of every pythia-1b GEMM proven and invariant over M; every M in 1..8192 at
#      pythia-1b's GEMM shapes bitwise, a row anywhere in a batch, correctness vs torch, attention, norms,
#      the pythia-1b layer's logits alone vs in batches                                        ~60 s
#   2. matmul: TFLOP/s vs tokens (torch/cuBLAS vs invariant) and the invariance search over M and K,
#      pythia-1b                                                                                ~25 s
#      then llama-2-7b-like (no K search) if fewer than LLAMA_BY_S (110) seconds have passed    ~25 s
#   3. layer: pythia-1b alone vs batches 2..64 (128-token prompts), default and invariant kernels, first
#      differing step, forward latency of both                                                  ~20 s
#   4. engines: pythia-160m alone vs batches 2..16 through transformers and DeepSpeed-MII (kernel injection);
#      DeepSpeed's InferenceBuilder is JIT-built in the background from the start (~60 s of CPU)  ~35 s
#   5. one report.html over all of it, and the summary table (throughput ratio at 1/64/1024/8192 tokens,
#      the M where cuBLAS was not invariant, the layer and engine findings)                     ~5 s
# About 3 minutes on an H100. Everything lands in DEST (CSV, JSON, report.html, logs) and in
# DEST/invariance-bundle.tgz (one file to bring back).
# Knobs (environment): MATMUL_CONFIG (pythia-1b), SECOND_CONFIG (llama-2-7b-like; empty skips it), LLAMA_BY_S
# (110), LAYER_CONFIG (pythia-1b), ENGINE_MODEL (pythia-160m), ENGINE_BATCHES (2,4,8,16), CHECKPOINTS (/tmp/ckpt).
set -uo pipefail
DEST=${1:-${OUT:-/tmp/out}/invariance}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$SECONDS
FAILED=()
TIMES=()

step() {  # run one part; a failure is reported and the others still run
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*"
  "$@"
  local rc=$?
  TIMES+=("$name $((SECONDS - start))s rc=$rc")
  if [ $rc -eq 0 ]; then echo "   $name: $((SECONDS - start)) s"; else echo "   $name FAILED (exit $rc) after $((SECONDS - start)) s"; FAILED+=("$name"); fi
}

# 0. transformers 4.38.2 + DeepSpeed + MII from the carried wheels (as scripts/gpu_inference.sh)
have_mii() {
  python3 - <<'PY' 2>/dev/null
import importlib.util as u, transformers
assert transformers.__version__.startswith("4.38.") and u.find_spec("deepspeed") and u.find_spec("mii")
PY
}
if ! have_mii && [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
if ! have_mii && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee "$DEST/versions.txt"

# 1b. DeepSpeed's inference kernels: CPU-bound, built in the background while the GPU works
BUILDER=""
if have_mii; then
  export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-12}
  ( python3 -c "from deepspeed.ops.op_builder import InferenceBuilder; InferenceBuilder().load()" \
      > "$DEST/inference-builder.log" 2>&1; echo $? > "$DEST/inference-builder.rc" ) &
  BUILDER=$!
else
  echo "no DeepSpeed-MII here (carry .whl/): the MII rows will say unavailable"
fi

# 1. the kernels' GPU tests
gpu_tests() { python3 -m pytest -q -m gpu tests/test_invariance.py tests/test_invariant_choice.py -p no:cacheprovider > "$DEST/gpu-tests.txt" 2>&1; local rc=$?; tail -n 15 "$DEST/gpu-tests.txt"; return $rc; }
step gpu-tests gpu_tests

# 2. GEMM throughput and invariance vs tokens
BUDGET=(--warmup-ms 10 --rep-ms 30 --no-report --no-progress)
DIRS=()
MATMUL_CONFIG=${MATMUL_CONFIG:-pythia-1b}
SECOND_CONFIG=${SECOND_CONFIG-llama-2-7b-like}
step "matmul-$MATMUL_CONFIG" python3 -m profiler invariance matmul --config "$MATMUL_CONFIG" --out "$DEST/matmul" "${BUDGET[@]}"
DIRS+=("$DEST/matmul")
if [ -n "$SECOND_CONFIG" ] && [ $((SECONDS - T0)) -lt "${LLAMA_BY_S:-110}" ]; then
  step "matmul-$SECOND_CONFIG" python3 -m profiler invariance matmul --config "$SECOND_CONFIG" --no-k-search \
    --out "$DEST/matmul-second" "${BUDGET[@]}"
  DIRS+=("$DEST/matmul-second")
else
  echo "== second matmul config (${SECOND_CONFIG:-none}) skipped: $((SECONDS - T0)) s used, LLAMA_BY_S=${LLAMA_BY_S:-110}"
fi

# 3. the layer: default vs invariant kernels, prompt alone vs in batches
LAYER_CONFIG=${LAYER_CONFIG:-pythia-1b}
step "layer-$LAYER_CONFIG" python3 -m profiler invariance layer --config "$LAYER_CONFIG" --out "$DEST/layer" "${BUDGET[@]}"
DIRS+=("$DEST/layer")

# 4. the engines
if [ -n "$BUILDER" ]; then
  wait "$BUILDER"
  echo "InferenceBuilder: exit $(cat "$DEST/inference-builder.rc" 2>/dev/null || echo '?') after $((SECONDS - T0)) s of the run"
  if [ "$(cat "$DEST/inference-builder.rc" 2>/dev/null)" != "0" ]; then
    tail -n 5 "$DEST/inference-builder.log"
    # the MII rows say why instead of building again for another minute
    export INVARIANCE_MII_UNAVAILABLE="DeepSpeed's InferenceBuilder failed to build: $(grep -m1 -iE 'error' "$DEST/inference-builder.log" | cut -c1-200)"
  fi
fi
ENGINE_MODEL=${ENGINE_MODEL:-pythia-160m}
step "engines-$ENGINE_MODEL" python3 -m inference invariance --models "$ENGINE_MODEL" --engines hf,mii \
  --batch "${ENGINE_BATCHES:-2,4,8,16}" --prompt-len 64 --new-tokens 16 --out "$DEST/engines" \
  --checkpoints "${CHECKPOINTS:-/tmp/ckpt}" --no-progress
DIRS+=("$DEST/engines")

# 5. one report over everything, and the summary table
existing=()
for d in "${DIRS[@]}"; do [ -d "$d" ] && existing+=("$d"); done
step report python3 -m profiler invariance report "${existing[@]}" --out "$DEST"

echo "== timings"
printf '   %s\n' "${TIMES[@]}"
echo "   total: $((SECONDS - T0)) s"
tar czf /tmp/invariance-bundle.tgz -C "$DEST" --exclude=invariance-bundle.tgz . && mv /tmp/invariance-bundle.tgz "$DEST/" \
  && du -h "$DEST/invariance-bundle.tgz"
if ((${#FAILED[@]})); then echo "failed parts: ${FAILED[*]}"; exit 1; fi

#!/usr/bin/env bash
# The inference bench on the GPU machine, in one call (from the repository root):
#   bash scripts/gpu_inference.sh [OUT_DIR]          (default $OUT/inference)
# Pythia 70m ... 2.8b, then 6.9b if the time budget allows, through transformers and DeepSpeed-MII at
# batch 1 and 8 (128 prompt + 64 new tokens, fp16). Leaves results.jsonl, results.csv, report.html and the
# MII worker logs in OUT_DIR. Sized for about 8 minutes of an H100, checkpoint building included.
# Knobs (environment): REPEATS (3), MODELS, BIG_MODELS, BIG_START_BY_S (start BIG_MODELS only if less than
# this many seconds have passed; 330), MAX_PARAMS, CHECKPOINTS (/tmp/ckpt), LAYER_PROFILE (a layer
# profiler run.json; default: the one scripts/gpu_run.sh's layer run leaves, if present).
# Tensor parallelism needs two GPUs (device kind nvidia-h200-x2); there, add TP=2 to run MII alone with
# --tensor-parallel 2 on the largest models after the single-GPU rows.
set -uo pipefail
DEST=${1:-${OUT:-/tmp/out}/inference}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 1. packages: transformers 4.38.2 + DeepSpeed + MII from the carried wheels, once per machine
have_packages() {
  python3 - <<'PY' 2>/dev/null
import importlib.util as u, transformers
assert transformers.__version__ == "4.38.2" and u.find_spec("deepspeed") and u.find_spec("mii")
PY
}
if ! have_packages && [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
if ! have_packages; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    echo "no .whl/ here: carry it (bash ../shared/gpu/fetch-wheels.sh on the dev machine); MII rows will say unavailable"
  fi
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"

# 2. DeepSpeed's inference kernels, built once, outside any timed region
# DeepSpeed parses the arch list itself and rejects suffixed entries such as 9.0a: set it plainly
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
start=$SECONDS
python3 -c "from deepspeed.ops.op_builder import InferenceBuilder; InferenceBuilder().load()" > "$DEST/inference-builder.log" 2>&1 \
  && echo "InferenceBuilder ready in $((SECONDS - start)) s" \
  || { echo "InferenceBuilder failed (MII rows will record why):"; tail -n 5 "$DEST/inference-builder.log"; }

# 3. the bench: smaller models first (every row is saved as it is measured), the largest if time allows
MODELS=${MODELS:-pythia-70m,pythia-160m,pythia-410m,pythia-1b,pythia-1.4b,pythia-2.8b}
BIG_MODELS=${BIG_MODELS:-pythia-6.9b}
PROFILE=${LAYER_PROFILE:-/tmp/layer/pythia-suite/run.json}
args=(--engines hf,mii --batch 1,8 --prompt-len 128 --new-tokens 64 --repeats "${REPEATS:-3}" --warmup 1
      --out "$DEST" --checkpoints "${CHECKPOINTS:-/tmp/ckpt}" --no-progress)
[ -n "${MAX_PARAMS:-}" ] && args+=(--max-params "$MAX_PARAMS")
[ -f "$PROFILE" ] && args+=(--layer-profile "$PROFILE")
python3 -m inference bench --models "$MODELS" "${args[@]}"
if [ -n "$BIG_MODELS" ] && [ "$SECONDS" -lt "${BIG_START_BY_S:-330}" ]; then
  python3 -m inference bench --models "$MODELS,$BIG_MODELS" "${args[@]}"   # resumes: only the new rows run
else
  echo "skipping $BIG_MODELS: ${SECONDS}s used, over BIG_START_BY_S=${BIG_START_BY_S:-330}"
fi
if [ "${TP:-1}" -gt 1 ]; then
  python3 -m inference bench --models "${TP_MODELS:-pythia-2.8b,pythia-6.9b}" --tensor-parallel "$TP" \
    "${args[@]/hf,mii/mii}"
fi
rm -rf "${CHECKPOINTS:-/tmp/ckpt}"/*.tmp-* 2>/dev/null
echo "inference bench: ${SECONDS}s in all; $DEST:"; ls -la "$DEST"

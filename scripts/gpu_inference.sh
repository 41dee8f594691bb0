#!/usr/bin/env bash
# The inference evidence on the GPU machine, in one call (from the repository root; carry .whl/):
#   CODESIGN_GIT_SHA=<sha of the code> bash scripts/gpu_inference.sh [DEST]      (DEST default /tmp/inference)
# Issues 10 and 20: does a training-shape gain carry over to inference? Phases, most important first:
#   rounds-core   issue 20: GPT-3 2.7B variants (gpt3-2.7b baseline a=32, -a20, -c2, -c1) in shuffled interleaved
#                 rounds: training fwd+bwd, prefill ROUND_PREFILL, decode on neox-graph (CUDA-graph replays) at the
#                 verdict cells ROUND_DECODE and the sweep ROUND_SWEEP_BATCHES x ROUND_SWEEP_CONTEXTS; the verdicts
#   rounds-pythia the same for Pythia (PYTHIA_ROUND_MODELS, baseline pythia-410m: the Figure 13 pair and 160m-2.8b)
#   mii-core      the production engine's rows: DeepSpeed-MII (kernel injection, or without it where the fused
#                 kernels refuse the shape) for MII_MODELS at MII_BATCHES x MII_PROMPTS, into carryover-core/bench (after
#                 rounds-core, which writes the comparison's manifest, with the same NEW_TOKENS); each row's decode
#                 is labelled with its floor ratio next to the verdicts (not their basis)
#   core, pythia, sweep-core, sweep-pythia   issue 10's comparison (transformers + MII, the layer profiler, the
#                 MII decode sweep): decode there is launch-bound (the host's speed)
# Every phase resumes (rows and cells are saved as measured), so a later call with PHASES="..." finishes what a call
# left out (on a fresh machine: unpack both calls' inference.tgz into one folder and re-render each
# carryover-* with `python -m inference carryover --out DIR --report-only`). Each phase starts only while the time budget lasts and runs under a timeout inside it; after each
# phase DEST is packed into $OUT/inference.tgz (traces left out), so a killed call still returns what it did.
# Files in $OUT (three: at most 8 come back): inference.tgz (DEST without traces), inference.log (everything
# printed), inference-summary.txt (phase timings against their estimates, then every verdict and ordering line).
# Knobs (environment): BUDGET_S (470: ~8 min of an H100 in all), PHASES, REPEATS (3), NEW_TOKENS (16),
# WARMUP_S (0.3), SWEEP_BATCHES (1,2,4,8,16,32,64), SWEEP_NEW_TOKENS (8), SWEEP_REPEATS (2), CHECKPOINTS
# (/tmp/ckpt), CORE_MODELS / CORE_BASELINE, PYTHIA_MODELS / PYTHIA_BASELINE, LAYER_ARGS ("--no-floor"),
# LAYER_ATTENTION (flash), PROMPT_LENS (128,2048), BATCHES (1,16); rounds: ROUNDS (5), ROUND_PREFILL (1x2048),
# ROUND_DECODE (1x128,16x2048,64x2048), ROUND_SWEEP_BATCHES (1,16,64), ROUND_SWEEP_CONTEXTS (128,2048),
# ROUND_SWEEP_CELLS (more sweep cells BATCHxCONTEXT: 1x4096,16x4096), ROUND_STEPS (4), ROUND_BUDGET_S (125: no rounds
# cell starts after this many seconds of its phase), PYTHIA_ROUND_MODELS (pythia-410m,pythia-1b,pythia-160m,pythia-1.4b,pythia-2.8b); MII rows:
# MII_MODELS (gpt3-2.7b,gpt3-2.7b-a20), MII_BATCHES (1,16), MII_PROMPTS (128);
# RESUME_FROM (a DEST of an earlier call, as a
# folder carried with the tree or its inference.tgz: unpacked into DEST first, so a fresh machine resumes it),
# REDO (statuses to measure again, e.g. mismatch,unchecked after a fix: --redo), EXTRA_ARGS (more carryover
# flags for every phase, e.g. --no-layer to keep the layer profiles already in DEST).
set -uo pipefail
DEST=${1:-/tmp/inference}
OUT=${OUT:-/tmp/out}
case "$(realpath -m "$DEST")/" in "$(realpath -m "$OUT")"/*)
  echo "DEST ($DEST) must not be inside OUT ($OUT): every file there comes back, and at most 8 may"; exit 2;; esac
mkdir -p "$DEST" "$OUT"
if [ -n "${RESUME_FROM:-}" ]; then
  if [ -d "$RESUME_FROM" ]; then cp -a "$RESUME_FROM"/. "$DEST"/; else tar xzf "$RESUME_FROM" -C "$DEST"; fi \
    || { echo "RESUME_FROM=$RESUME_FROM: cannot unpack it into $DEST"; exit 2; }
fi
BUDGET_S=${BUDGET_S:-470}
PHASES=${PHASES:-"rounds-core mii-core rounds-pythia"}
REPEATS=${REPEATS:-3} NEW=${NEW_TOKENS:-16} WARMUP=${WARMUP_S:-0.3} PROMPTS=${PROMPT_LENS:-128,2048} BATCHES=${BATCHES:-1,16}
SWEEP_BATCHES=${SWEEP_BATCHES:-1,2,4,8,16,32,64} SWEEP_NEW=${SWEEP_NEW_TOKENS:-8} SWEEP_REPEATS=${SWEEP_REPEATS:-2}
CKPT=${CHECKPOINTS:-/tmp/ckpt}
# models run in this order: the baseline and the shape the paper recommends first, so a phase the budget
# cuts short still has a comparison
CORE=${CORE_MODELS:-gpt3-2.7b,gpt3-2.7b-a20,gpt3-2.7b-c2,gpt3-2.7b-c1} CORE_BASE=${CORE_BASELINE:-gpt3-2.7b}
PYTHIA=${PYTHIA_MODELS:-pythia-410m,pythia-1b,pythia-160m,pythia-1.4b} PYTHIA_BASE=${PYTHIA_BASELINE:-pythia-410m}
LAYER_ARGS=${LAYER_ARGS:---no-floor} LAYER_ATTENTION=${LAYER_ATTENTION:-flash}
ROUNDS=${ROUNDS:-5} ROUND_PREFILL=${ROUND_PREFILL:-1x2048} ROUND_DECODE=${ROUND_DECODE:-1x128,16x2048,64x2048}
ROUND_SWEEP_BATCHES=${ROUND_SWEEP_BATCHES-1,16,64} ROUND_SWEEP_CONTEXTS=${ROUND_SWEEP_CONTEXTS-128,2048}
ROUND_STEPS=${ROUND_STEPS:-4} ROUND_SWEEP_CELLS=${ROUND_SWEEP_CELLS-1x4096,16x4096} ROUND_BUDGET_S=${ROUND_BUDGET_S:-125}
PYTHIA_ROUNDS=${PYTHIA_ROUND_MODELS:-pythia-410m,pythia-1b,pythia-160m,pythia-1.4b,pythia-2.8b}
MII_MODELS=${MII_MODELS:-gpt3-2.7b,gpt3-2.7b-a20} MII_BATCHES=${MII_BATCHES:-1,16} MII_PROMPTS=${MII_PROMPTS:-128}
LOG="$OUT/inference.log"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
say() { echo "[$(printf '%4d' "$SECONDS")s] $*" | tee -a "$LOG"; }

# estimates (s) from the H100 runs so far: MII worker ~20 s per model (start, deploy) plus its rows; transformers
# ~10-20 s per 2.7B model; a 2.7B fp16 checkpoint build ~6 s; the layer profiler ~25 s per mode for four shapes
# the rounds phases and mii-core measured on the H200 (2026-12-02, BUDGET_S=395: 343 s in all): rounds-core 97 s,
# mii-core 86 s, rounds-pythia 71 s, plus 48-69 s of InferenceBuilder before the first MII phase
declare -A EST=([setup]=20 [core]=260 [pythia]=165 [sweep-core]=115 [sweep-pythia]=100 [rounds-core]=105
                [rounds-pythia]=80 [mii-core]=90)
total=${EST[setup]}; for p in $PHASES; do total=$((total + ${EST[$p]:-0})); done
say "plan: setup ~${EST[setup]} s, then $(for p in $PHASES; do printf '%s ~%s s, ' "$p" "${EST[$p]:-?}"; done)~${total} s in all;" \
    "budget ${BUDGET_S} s: a phase starts only with >= 60 s left and is stopped 20 s before the budget ends"
[ -n "${CODESIGN_GIT_SHA:-}" ] || say "warning: CODESIGN_GIT_SHA is not set and this copy has no .git: rows will carry no code version"

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
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -n 3
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    say "no .whl/ here: carry it (bash ../shared/gpu/fetch-wheels.sh on the dev machine); MII rows will say unavailable"
  fi
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"

# 2. DeepSpeed's inference kernels, built once, outside any timed region (the bench's workers load the cache),
# first thing when a phase runs MII (the rounds phases do not), so the build's CPU load overlaps no measurement
# and the phases' budget checks see the time it took
# DeepSpeed parses the arch list itself and rejects suffixed entries such as 9.0a: set it plainly
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
BUILT=""
build_deepspeed() {
  [ -n "$BUILT" ] && return; BUILT=1
  local start=$SECONDS
  python3 -c "from deepspeed.ops.op_builder import InferenceBuilder; InferenceBuilder().load()" > "$DEST/inference-builder.log" 2>&1 \
    && say "InferenceBuilder ready in $((SECONDS - start)) s" \
    || { say "InferenceBuilder failed (MII rows will record why):"; tail -n 5 "$DEST/inference-builder.log" | tee -a "$LOG"; }
  echo "inference-builder $((SECONDS - start)) s" >> "$TIMINGS"
}
TIMINGS="$DEST/timings.txt"
echo "setup $SECONDS s (estimate ${EST[setup]} s)" > "$TIMINGS"

common=(--engines hf,mii --batch "$BATCHES" --prompt-len "$PROMPTS" --new-tokens "$NEW" --repeats "$REPEATS"
        --warmup-s "$WARMUP" --checkpoints "$CKPT" "--layer-args=$LAYER_ARGS" --layer-attention "$LAYER_ATTENTION"
        --no-progress ${REDO:+--redo "$REDO"} ${EXTRA_ARGS:-})
rounds=(--engines neox-graph --new-tokens "$NEW" --no-bench --no-layer --no-decode --rounds "$ROUNDS"
        --round-prefill "$ROUND_PREFILL" --round-decode "$ROUND_DECODE" --round-sweep-batches "$ROUND_SWEEP_BATCHES"
        --round-sweep-contexts "$ROUND_SWEEP_CONTEXTS" --round-sweep-cells "$ROUND_SWEEP_CELLS" --round-steps "$ROUND_STEPS"
        ${ROUND_BUDGET_S:+--round-budget-s "$ROUND_BUDGET_S"} --no-progress ${EXTRA_ARGS:-})
mii=(--models "$MII_MODELS" --engines mii --batch "$MII_BATCHES" --prompt-len "$MII_PROMPTS" --new-tokens "$NEW"
     --repeats "$REPEATS" --warmup-s "$WARMUP" --checkpoints "$CKPT" --no-progress ${REDO:+--redo "$REDO"})
sweep=(--no-bench --no-layer --decode-engines mii --decode-batches "$SWEEP_BATCHES" --decode-new-tokens "$SWEEP_NEW"
       --decode-repeats "$SWEEP_REPEATS")

pack() {  # what is done so far, back to $OUT; reports re-rendered from whatever rows exist
  cp "$TIMINGS" "$OUT/inference-summary.txt"
  for d in "$DEST"/carryover-*; do
    [ -f "$d/carryover.json" ] || continue
    timeout 60 python3 -m inference carryover --out "$d" --report-only >> "$LOG" 2>&1
    [ -f "$d/verdicts.txt" ] && { echo "--- ${d##*/}"; cat "$d/verdicts.txt"; } >> "$OUT/inference-summary.txt"
  done
  tar czf "$OUT/inference.tgz" --exclude='*/tb' -C "$DEST" . && say "packed $(du -h "$OUT/inference.tgz" | cut -f1) into $OUT/inference.tgz"
}

run_phase() {  # name, then the command
  local name=$1; shift
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 60 ]; then
    say "skip $name: ${left} s left of BUDGET_S=$BUDGET_S (needs ~${EST[$name]} s); run it later with PHASES=$name"
    echo "$name skipped (${left} s left)" >> "$TIMINGS"; return
  fi
  local t0=$SECONDS
  say "== $name (estimate ~${EST[$name]} s, ${left} s left)"
  # SIGINT: the bench saves what it measured and stops its worker; the rows done stay done
  timeout --signal=INT --kill-after=15 $((left - 20)) "$@" >> "$LOG" 2>&1
  local rc=$?
  say "== $name done in $((SECONDS - t0)) s (exit $rc$([ $rc -eq 124 ] && echo ': stopped at the budget'))"
  echo "$name $((SECONDS - t0)) s (estimate ${EST[$name]} s) exit $rc" >> "$TIMINGS"
  pack
}

for phase in $PHASES; do case $phase in rounds-*) ;; *) build_deepspeed;; esac; done
for phase in $PHASES; do
  case $phase in
    rounds-core) run_phase rounds-core python3 -m inference carryover --models "$CORE" --baseline "$CORE_BASE" \
            "${rounds[@]}" --out "$DEST/carryover-core";;
    rounds-pythia) run_phase rounds-pythia python3 -m inference carryover --models "$PYTHIA_ROUNDS" \
            --baseline "$PYTHIA_BASE" "${rounds[@]}" --out "$DEST/carryover-pythia";;
    mii-core) build_deepspeed; run_phase mii-core python3 -m inference bench "${mii[@]}" --out "$DEST/carryover-core/bench";;
    core) build_deepspeed; run_phase core python3 -m inference carryover --models "$CORE" --baseline "$CORE_BASE" "${common[@]}" \
            --no-decode --out "$DEST/carryover-core";;
    pythia) build_deepspeed; run_phase pythia python3 -m inference carryover --models "$PYTHIA" --baseline "$PYTHIA_BASE" "${common[@]}" \
            --no-decode --out "$DEST/carryover-pythia";;
    sweep-core) build_deepspeed; run_phase sweep-core python3 -m inference carryover --models "$CORE" --baseline "$CORE_BASE" \
            "${common[@]}" "${sweep[@]}" --out "$DEST/carryover-core";;
    sweep-pythia) build_deepspeed; run_phase sweep-pythia python3 -m inference carryover --models "$PYTHIA" --baseline "$PYTHIA_BASE" \
            "${common[@]}" "${sweep[@]}" --out "$DEST/carryover-pythia";;
    *) say "unknown phase '$phase' (rounds-core, rounds-pythia, mii-core, core, pythia, sweep-core, sweep-pythia)";;
  esac
done
rm -rf "$CKPT"/*.tmp-* 2>/dev/null
say "inference evidence: ${SECONDS} s in all"
echo "total ${SECONDS} s" | tee -a "$TIMINGS" >> "$OUT/inference-summary.txt"
cat "$OUT/inference-summary.txt"
ls -la "$OUT"

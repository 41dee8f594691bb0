#!/usr/bin/env bash
# Issue 9's evidence: the sizing advisor measured on one GPU, in one go.
#
# Usage (from the repo root on the GPU machine):  bash scripts/gpu_advise.sh /tmp/advise
# Writes DEST/<run>/ for each run below (advice.json with provenance, checks.csv, candidates.csv, measured.csv,
# rounds.csv, components_diff.csv or swiglu.csv, report.html, profiles/tb traces), DEST/<run>.log,
# DEST/timings.txt, and DEST.tgz: everything but the traces, one file to bring back (scripts/gpu_run.sh advise
# runs this with DEST=/tmp/advise and bundles the folder into $OUT itself). Default DEST: /tmp/advise.
#
# Runs (bf16; each measures this GPU's GEMM ceiling and copy bandwidth first, then times the given shape and
# the proposals as full layers + the logit layer, forward and forward+backward, in 5 interleaved rounds):
#   gpt3-2.7b-eager  the paper's Fig. 1 setting (unfused attention, b=4, s=2048; A100: a=32 -> a=20 gave 1.18x)
#   gpt3-2.7b-flash  the same with flash attention (head-count changes move a layer only a few %)
#   pythia-410m      h/a = 64 already: expect no gain beyond the noise (no per-component profile)
#   pythia-2.8b      GPT-3 2.7B's shape at b=1 (the Pythia suite's training shape per GPU)
#   swiglu-llama2    the SwiGLU width search around 11008 (h=4096, b=1, s=4096), 5 rounds (paper VII-B)
# Budget on an H100: ~30-45 s per shape run (8 shapes x 5 rounds x ~0.5 s + two layer profiles + start-up)
# and ~30 s for the SwiGLU search: about 3 minutes in all, 4 with slack. Timings are printed per run.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-/tmp/advise}"
DEST="${DEST%/}"
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()
: > "$DEST/timings.txt"

step() {  # run one advisor command; a failure is reported and the rest still run
  local name="$1"; shift
  local start=$SECONDS
  echo "== $name: python -m profiler advise $*"
  if python -m profiler advise "$@" --out "$DEST/$name" 2>&1 | tee "$DEST/$name.log"; then
    echo "$name: $((SECONDS - start)) s" | tee -a "$DEST/timings.txt"
  else
    echo "$name: FAILED after $((SECONDS - start)) s" | tee -a "$DEST/timings.txt"; FAILED+=("$name")
  fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$DEST/gpu.txt"
step gpt3-2.7b-eager --config gpt3-2.7b --attention eager --measure
# skipped in the 2026-11-23 run for device time: step gpt3-2.7b-flash --config gpt3-2.7b --attention flash --measure
step pythia-410m     --config pythia-410m --attention flash --measure --no-profile
step pythia-2.8b     --config pythia-2.8b --attention flash --measure
step swiglu-llama2   --config llama-2-7b-like --attention flash --swiglu --measure

echo "total: $SECONDS s" | tee -a "$DEST/timings.txt"
echo "== summary (the headline of each run; the full tables are in DEST/<run>.log and report.html)"
for log in "$DEST"/*.log; do
  echo "-- $(basename "$log" .log)"
  sed -n '/^measured (ranked/,/^\*/p; /^SwiGLU widths/,/^\*/p' "$log" | grep -v '^\*' | head -9 | cut -c1-200
  grep -E '^\* |^  measured cost of' "$log" | cut -c1-400
done
cat "$DEST/timings.txt"
tar czf "$DEST.tgz" --exclude='tb' -C "$(dirname "$DEST")" "$(basename "$DEST")" && du -h "$DEST.tgz"
if ((${#FAILED[@]})); then echo "failed runs: ${FAILED[*]}"; exit 1; fi

#!/usr/bin/env bash
# Issue 4's evidence sweeps in one go on one GPU, then the sweep-speed benchmark.
#
# Usage (from the repo root on the GPU machine):  bash scripts/gpu_sweeps.sh [OUT_DIR]
# Writes into OUT_DIR (default "$OUT/sweeps", or ./sweeps when $OUT is unset) four files:
#   results.jsonl (every point, resumable), results.csv, report.html (all sweeps on one page), speed.txt.
# Re-running the same command resumes: points already in results.jsonl are not measured again.
#
# Budget (H100, bf16, b=4, s=2048; default per-point budget ~40-50 ms, so ~20-25 points/s for small and
# mid-sized shapes; the largest MLP points are bound by 5 reps of ~100 ms instead):
#   score  a=32, h=32..32768 step 32 (every h/a, so every Fig. 7 class)   1024 pts  ~45 s
#   aov    a=96, h=96..32736 step 96                                        341 pts  ~15 s
#   mlp-up / mlp-down a=128, h=1024..32768 step 1024 (min 5 reps)        2 x 32 pts  ~25 s
#   logits h=2560, v=50240..50368 step 1 (50257 and 50304 inside)           129 pts  ~10 s
#   flash  a=128, h=1024..32768 step 1024 (h/a = 8..256)                     32 pts   ~3 s
#   mm     Fig. 5b (27648,4096)x(4096,n), n=64..6144 step 64                 96 pts   ~5 s
#   swiglu h=4096, intermediate 10752..11520 step 32 (8h/3=10923, 11008)    50 pts   ~3 s
#   speed benchmark                                                                   ~20 s
# plus ~4 s of Python/CUDA start-up per command: about 3 minutes in all, 4-5 with slack.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${OUT:+$OUT/}sweeps}"
mkdir -p "$DIR"
COMMON=(--b 4 --s 2048 --out "$DIR" --no-report --no-progress --no-peak)
FAILED=()

step() {  # run one sweep; a failure is reported and the rest still run
  local name="$1"; shift
  local start=$SECONDS
  echo "== $name: python -m profiler sweep $*"
  if python -m profiler sweep "$@"; then
    echo "   $name took $((SECONDS - start)) s"
  else
    echo "   $name FAILED (exit $?) after $((SECONDS - start)) s"; FAILED+=("$name")
  fi
}

step score-a32  score    --heads 32  --h 32:32768:32      "${COMMON[@]}"
step aov-a96    aov      --heads 96  --h 96:32736:96      "${COMMON[@]}"
step mlp-up     mlp-up   --heads 128 --h 1024:32768:1024  "${COMMON[@]}" --min-reps 5
step mlp-down   mlp-down --heads 128 --h 1024:32768:1024  "${COMMON[@]}" --min-reps 5
step logits     logits   --h 2560    --v 50240:50368:1    "${COMMON[@]}"
step flash      flash    --heads 128 --h 1024:32768:1024  --b 4 --s 2048 --out "$DIR" --no-report --no-progress
step fig5b      mm       --m 27648   --k 4096 --n 64:6144:64 --out "$DIR" --no-report --no-progress --no-peak
step swiglu     swiglu   --h 4096    --ffn 10752:11520:32 "${COMMON[@]}"

echo "== report"
python -m profiler sweep report "$DIR" --out "$DIR"
echo "== speed benchmark"
start=$SECONDS
python scripts/bench_sweep_speed.py 2>&1 | tee "$DIR/speed.txt"
echo "   speed benchmark took $((SECONDS - start)) s; total $SECONDS s"
ls -la "$DIR"
if ((${#FAILED[@]})); then echo "failed steps: ${FAILED[*]}"; exit 1; fi

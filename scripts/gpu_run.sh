#!/usr/bin/env bash
# One device call does a whole GPU run: install the carried wheels (if any), then the requested parts, leaving
# one archive per part under $OUT (at most 8 files come back from the device machine).
#
# Usage (repository root on the GPU machine):
#   CODESIGN_GIT_SHA=$(git rev-parse --short=12 HEAD) bash scripts/gpu_run.sh PART [PART ...]
# Parts:
#   tests      the GPU-only tests (pytest -m gpu)                                              ~1 min
#   readme     the README's main command README_RUNS times in a row (default 5), exit codes kept  ~2 min
#   layer      the layer evidence: Figures 1, 2, 11, pythia-1b fwd and fwd+bwd, the Pythia suite  ~6-8 min
#              (LAYER_RUNS=N runs it N times in a row, one archive layer-<i>.tgz each)
#   capped     issue 19: the power-capped layers (Figure 1 flash, pythia-6.9b/12b; pythia-1b as a control)   ~5 min
#              CAPPED_RUNS (3) times in a row, then scripts/runs_agreement.py over the runs
#   speed      the sweep speed/accuracy benchmark (120 mixed points vs do_bench)                  ~1 min
#   sweeps     the full evidence sweeps (scripts/gpu_sweeps.sh)                                   ~4 min
#   advise     the sizing advisor with --measure (scripts/gpu_advise.sh)                           ~4 min
#   invariance batch-invariance kernels, layer and engines (scripts/gpu_invariance.sh)           ~3 min
#   inference  the inference carry-over bench (scripts/gpu_inference.sh)                          ~8 min
#   distributed tensor-parallel layer on 2 GPUs (scripts/gpu_distributed.sh; nvidia-h200-x2)   ~3 min
#   decode     the decode engine against its floor (scripts/bench_decode.py; DECODE_MODELS)        ~3 min
#   invdecode  batch-invariant decode: 1000 requests in batches 1..64, cost vs default kernels     ~1 min a loop
#              (INVDECODE_LOOPS: mma and/or lane, comma-separated; INVDECODE_SPLIT_KEYS, INVDECODE_REQUESTS)
#   advserve   advise --measure --measure-serving for gpt3-2.7b flash through the local executor     ~4 min
#   prefill    the engine's prefill against the profiler's layer x L + logits (same shape)         ~1 min
#   calib      the advisor's GEMM calibration in autograd's layouts (attention points kept)     ~1 min
#   splits     the decode bench at batch 1 with 1, 2 and 4 attention splits and the default rule   ~2 min
#   layout     the decode bench at batch 1: the norms apart from the output GEMV, QKV after the     ~3 min
#              fork (on the attention's stream), both, alternated with the default (first and last)
#   splitsb    the decode bench at p=2048, batch SPLITS_BATCH (16), SPLITS_COUNTS (auto 2 3 4 6)  ~2 min
#   mma        the attention kernel's tensor-core loop: the tune sweep of attention tiles (lane and mma) at     ~5 min
#              b=1,16,64, then the decode bench with mma tiles (MMA_TILES, and the sweep's best), the default
#              first and last
#   gemms      the decode GEMMs at GEMM_ROWS (16,1) rows: the tune sweep (cuBLAS, dot, wdot, TMA loads) of     ~6 min
#              GEMM_MODELS' shapes (pythia-2.8b), then the decode bench with the plans it found faster than cuBLAS
#              (--gemm-tune), the default first and last
#   tma        the attention's tensor-core loop with TMA cache loads: the tune sweep of TMA_TILES (with and      ~5 min
#              without TMA) at TMA_ROWS, then the decode bench at b=16 p=2048 with the default tile, TMA_VARIANTS
#              and the sweep's fastest TMA tile at d=80, the default again last (DECODE_MODELS)
#   joined     QKV and MLP-up as one launch over [W_qkv; W_up]: the GEMM tune at GEMM_ROWS (16,4) of GEMM_MODELS,   ~4 min
#              then the decode bench joined (the default) and apart (--inputs-apart), the default again last
#   pdl        the decode bench with and without programmatic dependent launch, alternated:      ~4 min
#              two streams and one, successor launched after the wait or after the main loop (late)
# The git SHA of the code is passed in because the GPU machine's copy of the tree has no .git.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CODESIGN_GIT_SHA=${CODESIGN_GIT_SHA:-unknown}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
{
  nvidia-smi --query-gpu=name,uuid,serial,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  echo "git ${CODESIGN_GIT_SHA}"
} 2>&1 | tee "$OUT/gpu.txt"

parts="$*"
want() { [[ " $parts " == *" $1 "* ]]; }
bundle() { tar czf "$OUT/$1.tgz" ${3:+--exclude=$3} -C "$2" . && du -h "$OUT/$1.tgz"; }
elapsed() { echo "== $1 done at ${SECONDS}s"; }
variant() {  # PART DIR NAME ARGS...: one decode bench (5 passes, the first model checked) into DIR/NAME, its step lines
  local part=$1 dir=$2 name=$3; shift 3
  python3 scripts/bench_decode.py --out $dir/$name --models ${DECODE_MODELS:-pythia-1b,pythia-2.8b} --repeats 5 \
    --check first "$@" 2>&1 | grep -E " step |Error|error" | cut -c1-150 | sed "s/^/[$part $name] /"
}
against_default() {  # PART DIR NAME "FLAGS" ARGS...: the decode bench by default, as NAME (FLAGS), by default again
  local part=$1 dir=$2 name=$3 flags=$4 v; shift 4
  for v in default $name default-again; do
    if [[ $v == $name ]]; then variant $part $dir $v "$@" $flags; else variant $part $dir $v "$@"; fi
  done
}
tune_gemms() {  # DIR MODELS ROWS SECONDS: the decode GEMM tune sweep (no attention) into DIR/tune, its best lines
  python3 scripts/tune_decode_kernels.py --out $1/tune --models $2 --rows "" --gemm-models $2 --gemm-rows $3 \
    --deadline-s $4 2>&1 | grep -E "best|points|Error|error" | cut -c1-170
}

if want tests; then
  python3 -m pytest -q -m gpu --continue-on-collection-errors ${GPU_TESTS:-tests} 2>&1 | tail -n 30 | tee "$OUT/tests.txt"
  elapsed tests
fi
if want readme; then
  R=/tmp/readme; rm -rf $R; mkdir -p $R
  for i in $(seq 1 ${README_RUNS:-5}); do
    python3 -m profiler layer --config pythia-1b.yaml --out $R/run-$i > $R/run-$i.log 2>&1
    code=$?
    echo "readme run $i: exit $code; $(grep -E 'FAIL|CHECKS FAILED' $R/run-$i.log | head -3 | tr '\n' ' ')" | tee -a $R/exits.txt
    grep -E "latency|x of floor" $R/run-$i.log | head -2
  done
  bundle readme $R
  elapsed readme
fi
for run in $(seq 1 ${LAYER_RUNS:-1}); do
if want layer; then
  R=/tmp/layer-$run; rm -rf $R; mkdir -p $R
  layer_set() {  # NAME ARGS...: one profiler invocation into $R/NAME, its log beside it, its summary lines shown
    local name=$1; shift
    python3 -m profiler layer "$@" --out $R/$name > $R/$name.log 2>&1
    echo "[layer $run $name] exit $?"
    grep -hE "^ *latency|attempt [0-9]+: [0-9]+ rounds|CHECKS|FAIL" $R/$name.log | cut -c1-160 | sed "s/^/[layer $run $name] /"
    bundle layer-$run $R tb > /dev/null  # after every set: a call cut short at its time limit keeps what it measured
    elapsed layer-$run-$name
  }
  # paper Figure 2 / 11: small, large, large + flash (forward, bf16, s=2048)
  layer_set figure2 --config paper-small --config paper-large --config paper-large-flash
  # paper Figure 1: GPT-3 2.7B and its head-count variants, b=4, flash (the production setting) and eager
  layer_set figure1-flash --config gpt3-2.7b-c1 --config gpt3-2.7b-c2 --config gpt3-2.7b --config gpt3-2.7b-a20 \
    --attention flash
  layer_set figure1-eager --config gpt3-2.7b-c1 --config gpt3-2.7b-c2 --config gpt3-2.7b --config gpt3-2.7b-a20 \
    --attention eager
  # pythia-1b forward and backward (the floor ratio of issue 8; its forward alone is in the suite below)
  layer_set pythia-1b-train --config pythia-1b --attention flash --mode forward+backward
  # the Pythia suite's layers (forward, b=1, s=2048): the training-shape side of the inference comparison
  layer_set pythia-suite --config pythia-70m --config pythia-160m --config pythia-410m --config pythia-1b \
    --config pythia-1.4b --config pythia-2.8b --config pythia-6.9b --config pythia-12b --attention flash
  bundle layer-$run $R tb  # results and reports; the traces (tens of MB an extended attempt) stay behind
  elapsed layer-$run
fi
done
if want capped; then
  # issue 19: the configs whose latency disagreed across runs (the power-capped 2.7B flash layers, pythia-6.9b/12b)
  # and pythia-1b as a control, CAPPED_RUNS times in a row on one machine, then their agreement
  R=/tmp/capped; rm -rf $R
  for i in $(seq 1 ${CAPPED_RUNS:-3}); do
    mkdir -p $R/run-$i  # each run into a log first: a pipe cut short by head would kill the profiler mid-run
    python3 -m profiler layer --config gpt3-2.7b-c1 --config gpt3-2.7b-c2 --config gpt3-2.7b --config gpt3-2.7b-a20 \
      --attention flash --out $R/run-$i/figure1-flash > $R/run-$i/figure1-flash.log 2>&1
    python3 -m profiler layer --config pythia-1b --config pythia-6.9b --config pythia-12b --attention flash \
      --out $R/run-$i/pythia-suite > $R/run-$i/pythia-suite.log 2>&1
    grep -hE "^ *latency|CHECKS|FAIL" $R/run-$i/*.log | sed "s/^/[capped $i] /"
    echo "== capped run $i done at ${SECONDS}s"
  done
  python3 scripts/runs_agreement.py $R/run-* --csv $R/agreement.csv 2>&1 | tee $R/agreement.txt | tail -n 16
  bundle capped $R tb
  elapsed capped
fi
if want decode; then
  python3 scripts/bench_decode.py --out /tmp/decode --models ${DECODE_MODELS:-pythia-1b,pythia-2.8b,gpt3-2.7b} \
    --batches ${DECODE_BATCHES:-1,16} --contexts ${DECODE_CONTEXTS:-128,2048} --repeats 3 --check first 2>&1 | tail -n 40
  bundle decode /tmp/decode
  elapsed decode
fi
if want splits; then
  S=/tmp/splits; rm -rf $S; mkdir -p $S
  for n in auto 1 2 4 auto-again; do
    extra=""; [[ $n =~ ^[0-9]+$ ]] && extra="--splits $n"
    variant splits $S $n --batches 1 --contexts ${DECODE_CONTEXTS:-128,2048} --no-trace $extra
  done
  bundle splits $S
  elapsed splits
fi
if want layout; then
  Y=/tmp/layout; rm -rf $Y; mkdir -p $Y
  for v in default norms-apart qkv-in-branch norms-apart+qkv-in-branch default-again; do
    extra=""; [[ $v == *norms-apart* ]] && extra="--norms-apart"; [[ $v == *qkv-in-branch* ]] && extra="$extra --qkv-in-branch"
    variant layout $Y $v --batches 1 --contexts ${DECODE_CONTEXTS:-128,2048} $extra
  done
  bundle layout $Y
  elapsed layout
fi
if want splitsb; then
  S=/tmp/splitsb; rm -rf $S; mkdir -p $S
  for n in ${SPLITS_COUNTS:-auto 2 3 4 6}; do
    extra=""; [[ $n =~ ^[0-9]+$ ]] && extra="--splits $n"
    variant splitsb $S $n --batches ${SPLITS_BATCH:-16} --contexts 2048 $extra
  done
  bundle splitsb $S
  elapsed splitsb
fi
if want mma; then
  M=/tmp/mma; rm -rf $M; mkdir -p $M
  python3 scripts/tune_decode_kernels.py --out $M/tune --models ${DECODE_MODELS:-pythia-1b,pythia-2.8b} \
    --rows ${MMA_ROWS:-1x2048,1x128,16x2048,64x2048,16x128,64x128} --gemm-models "" --pps 2,4 --deadline-s ${MMA_TUNE_S:-200} 2>&1 \
    | grep -E "best|points|Error|error" | cut -c1-160
  best=$(python3 -c "
import json, math, collections
points = [p for p in json.load(open('$M/tune/tune.json'))['points'] if p.get('passed') and p['kind'] == 'attention']
by = collections.defaultdict(dict)
for p in points: by[p['candidate']][p['case']] = p['us']
cases = {p['case'] for p in points}
full = {c: math.exp(sum(math.log(v) for v in t.values()) / len(t)) for c, t in by.items() if c.startswith('mma') and len(t) == len(cases)}
name = min(full, key=full.get) if full else ''
print(name.split('_pps')[0].replace('mma_n', '').replace('_w', 'x').replace('_s', 'x') + 'xmma' if name else '')
" 2>/dev/null)
  echo "mma: the sweep's best tensor-core tile over all its cases: ${best:-none}"
  variants="default ${MMA_TILES:-16x4x3xmma 64x4x2xmma}"
  [[ -n "$best" && " $variants " != *" $best "* ]] && variants="$variants $best"
  for v in $variants default-again; do
    extra=""; [[ $v == *mma ]] && extra="--attention-tile $v"
    variant mma $M $v --batches ${DECODE_BATCHES:-1,16} --contexts ${DECODE_CONTEXTS:-128,2048} $extra
  done
  bundle mma $M
  elapsed mma
fi
if want gemms; then
  W=/tmp/gemms; rm -rf $W; mkdir -p $W
  tune_gemms $W ${GEMM_MODELS:-pythia-2.8b} ${GEMM_ROWS:-16,1} ${GEMM_TUNE_S:-150}
  against_default gemms $W tuned "--gemm-tune $W/tune/tune.json" --batches ${DECODE_BATCHES:-1,16} \
    --contexts ${DECODE_CONTEXTS:-128,2048}
  bundle gemms $W
  elapsed gemms
fi
if want tma; then
  A=/tmp/tma; rm -rf $A; mkdir -p $A
  python3 scripts/tune_decode_kernels.py --out $A/tune --models ${TMA_MODELS:-pythia-2.8b,pythia-1.4b,pythia-1b} \
    --rows ${TMA_ROWS:-16x2048,64x2048,1x2048} --gemm-models "" --pps 2,4 --deadline-s ${TMA_TUNE_S:-150} \
    --attention-tiles ${TMA_TILES:-32x4x3xmma,64x4x2xmma,64x4x3xmma,32x4x3xmmaxtma,64x4x2xmmaxtma,64x4x3xmmaxtma,64x8x2xmmaxtma,128x4x2xmmaxtma} \
    2>&1 | grep -E "best|points|Error|error" | cut -c1-170
  best=$(python3 -c "
import json
points = [p for p in json.load(open('$A/tune/tune.json'))['points'] if p.get('passed') and p['kind'] == 'attention'
          and p['candidate'].endswith(('_tma_pps2', '_tma_pps4')) and 'd=80 b=16 p=2048' in p['case']]
best = min(points, key=lambda p: p['us'])['candidate'] if points else ''
n, w, s = best.split('_pps')[0].removesuffix('_tma').removeprefix('mma_').split('_') if best else ('', '', '')
print(f'{n[1:]}x{w[1:]}x{s[1:]}xmmaxtma' if best else '')
" 2>/dev/null)
  echo "tma: the sweep's fastest TMA tile at d=80 b=16 p=2048: ${best:-none}"
  variants="default ${TMA_VARIANTS:-64x4x2xmmaxtma}"
  [[ -n "$best" && " $variants " != *" $best "* ]] && variants="$variants $best"
  for v in $variants default-again; do
    extra=""; [[ $v == *mma* ]] && extra="--attention-tile $v"
    variant tma $A $v --batches ${DECODE_BATCHES:-16} --contexts ${DECODE_CONTEXTS:-2048} $extra
  done
  bundle tma $A
  elapsed tma
fi
if want joined; then
  J=/tmp/joined; rm -rf $J; mkdir -p $J
  tune_gemms $J ${GEMM_MODELS:-pythia-2.8b,pythia-1b} ${GEMM_ROWS:-16,4} ${GEMM_TUNE_S:-100}
  against_default joined $J inputs-apart --inputs-apart --batches ${DECODE_BATCHES:-4,16} \
    --contexts ${DECODE_CONTEXTS:-128,2048}
  bundle joined $J
  elapsed joined
fi
if want pdl; then
  P=/tmp/pdl; rm -rf $P; mkdir -p $P
  pdl_bench() {  # NAME ARGS...: one decode bench into $P/NAME
    local name=$1; shift
    python3 scripts/bench_decode.py --out $P/$name --models ${DECODE_MODELS:-pythia-1b,pythia-2.8b} \
      --batches ${DECODE_BATCHES:-1,16} --contexts ${DECODE_CONTEXTS:-128,2048} --repeats 5 --check first "$@" \
      2>&1 | grep -E "step|floor|pdl|Error|error" | tail -n 12 | sed "s/^/[$name] /"
  }
  pdl_bench plain
  pdl_bench pdl-late --pdl --pdl-prefetch 0 --pdl-late
  pdl_bench pdl-late-prefetch --pdl --pdl-prefetch ${PDL_PREFETCH:-4} --pdl-late
  pdl_bench plain-1s --one-stream
  pdl_bench pdl-1s --one-stream --pdl --pdl-prefetch 0
  pdl_bench pdl-late-1s --one-stream --pdl --pdl-prefetch 0 --pdl-late
  pdl_bench plain-again
  bundle pdl $P
  elapsed pdl
fi
if want invdecode; then
  loops=${INVDECODE_LOOPS:-mma}
  for loop in ${loops//,/ }; do  # lane and/or mma (comma-separated): the invariant attention's loop, a folder each
    python3 scripts/bench_invariant_decode.py --out /tmp/invdecode/$loop --model ${INVDECODE_MODEL:-pythia-1b} \
      --requests ${INVDECODE_REQUESTS:-1000} --split-keys ${INVDECODE_SPLIT_KEYS:-256} --invariant-loop $loop 2>&1 \
      | tail -n 12 | sed "s/^/[invdecode $loop] /"
  done
  bundle invdecode /tmp/invdecode
  elapsed invdecode
fi
if want advserve; then
  python3 -m profiler advise --config ${ADVSERVE_CONFIG:-gpt3-2.7b} --attention flash --measure --measure-serving \
    --no-profile --top ${ADVSERVE_TOP:-3} --executor local --workers 1 --out /tmp/advserve 2>&1 | tail -n 60
  bundle advserve /tmp/advserve
  elapsed advserve
fi
if want prefill; then
  python3 scripts/bench_prefill_vs_layers.py --out /tmp/prefill --models ${PREFILL_MODELS:-pythia-1b,pythia-2.8b} 2>&1 | tail -n 20
  bundle prefill /tmp/prefill
  elapsed prefill
fi
if want calib; then
  python3 scripts/calibrate_advisor.py --out /tmp/calib --budget-s ${CALIB_BUDGET_S:-150} \
    --attention-from profiler/advisor/calibration/h200.json 2>&1 | tail -n 8
  bundle calib /tmp/calib
  elapsed calib
fi
if want speed; then
  python3 scripts/bench_sweep_speed.py --points ${SPEED_POINTS:-100} --out /tmp/speed 2>&1 | tail -n 20
  bundle speed /tmp/speed
  elapsed speed
fi
if want sweeps && [ -f scripts/gpu_sweeps.sh ]; then
  bash scripts/gpu_sweeps.sh /tmp/sweeps 2>&1 | tail -n 60
  bundle sweeps /tmp/sweeps
  elapsed sweeps
fi
for part in advise invariance inference distributed; do
  if want $part && [ -f scripts/gpu_$part.sh ]; then
    bash scripts/gpu_$part.sh /tmp/$part 2>&1 | tail -n 80
    bundle $part /tmp/$part tb  # results and reports; raw traces stay behind (the layer part keeps its own)
    elapsed $part
  fi
done
ls -la "$OUT"

#!/usr/bin/env bash
# One device call does a whole GPU run: install the carried wheels (if any), run the GPU tests, then the
# requested evidence runs, leaving a small bundle of files under $OUT (at most 8 files come back).
# Usage (from the repository root on the GPU machine):  bash scripts/gpu_run.sh [tests] [layer] [sweeps] [inference]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])" | tee -a "$OUT/gpu.txt"

runs="$*"
want() { [[ " $runs " == *" $1 "* ]]; }
bundle() { tar czf "$OUT/$1.tgz" -C "$2" . && du -h "$OUT/$1.tgz"; }

if want tests; then
  python3 -m pytest -q tests 2>&1 | tail -n 25 | tee "$OUT/tests.txt"
fi
if want layer; then
  R=/tmp/layer; rm -rf $R
  # paper Figure 2 / 11: small, large, large + flash (forward, bf16, s=2048)
  python3 -m profiler layer --config paper-small --config paper-large --config paper-large-flash --out $R/figure2
  # paper Figure 1: GPT-3 2.7B and its head-count variants, b=4, flash (the production setting) and eager
  python3 -m profiler layer --config gpt3-2.7b-c1 --config gpt3-2.7b-c2 --config gpt3-2.7b --config gpt3-2.7b-a20 \
    --attention flash --out $R/figure1-flash
  python3 -m profiler layer --config gpt3-2.7b-c1 --config gpt3-2.7b-c2 --config gpt3-2.7b --config gpt3-2.7b-a20 \
    --attention eager --out $R/figure1-eager
  # pythia-1b, forward and forward+backward
  python3 -m profiler layer --config pythia-1b --attention flash --out $R/pythia-1b
  python3 -m profiler layer --config pythia-1b --attention flash --mode forward+backward --out $R/pythia-1b-train
  # the Pythia suite's layers (forward, b=1, s=2048): the training-shape side of the inference comparison
  python3 -m profiler layer --config pythia-70m --config pythia-160m --config pythia-410m --config pythia-1b \
    --config pythia-1.4b --config pythia-2.8b --config pythia-6.9b --config pythia-12b --attention flash --out $R/pythia-suite
  bundle layer $R
fi
if want sweeps && [ -f scripts/gpu_sweeps.sh ]; then
  bash scripts/gpu_sweeps.sh /tmp/sweeps 2>&1 | tail -n 60
  bundle sweeps /tmp/sweeps
fi
if want inference && [ -f scripts/gpu_inference.sh ]; then
  bash scripts/gpu_inference.sh /tmp/inference 2>&1 | tail -n 80
  bundle inference /tmp/inference
fi
ls -la "$OUT"

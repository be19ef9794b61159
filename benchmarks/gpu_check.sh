#!/usr/bin/env bash
# Issue 13's GPU check, on the device machine (H200), in about 150 s of wall time: see benchmarks/gpu_check.py.
#
# The device image has torch, transformers, accelerate, safetensors, huggingface_hub and pyyaml but not diffusers.
# Before the run, here (not there), in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# and call the device tool with carry [".whl"] and the command `bash benchmarks/gpu_check.sh`.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import diffusers, transformers, torch; print('diffusers', diffusers.__version__, 'transformers', \
transformers.__version__, 'torch', torch.__version__)" || { echo "diffusers missing: carry .whl (see above)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
timeout 165 python3 benchmarks/gpu_check.py --budget_s "${BUDGET_S:-140}" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"

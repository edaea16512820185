#!/usr/bin/env bash
# Run ON the lent GPU machine (device tool, carry [".whl"] made by bench/gpu_wheels.sh):
# installs the carried wheels beside the machine's PyTorch and runs the GPU benchmark once.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
out=${OUT:-/tmp}
python3 bench/gpu_vlm.py --out "$out/gpu_vlm.json" "$@" 2>&1 | tee "$out/gpu_vlm.log"

#!/usr/bin/env bash
# One prepared GPU session (the device tool's machine): speed, memory and profiles of the search
# and training steps. Logs land in $OUT (or benchmarks/results/latest when OUT is unset).
# The device image has torch but not lark/pydantic: carry them as wheels in .whl/ (README of
# the device tool), installed here into /tmp/site.
set -uo pipefail
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$OUT/device.txt"
# plain and grouped paths, first and second order (about 2.5 min on an H200)
if [ "${SEARCH:-1}" = 1 ]; then
    timeout 240 python3 benchmarks/search_step.py --device cuda --steps 5 --warmup 2 \
        --paths plain,grouped --json "$OUT/search_step.json" 2>&1 | tee "$OUT/search_step.txt"
fi
timeout 200 python3 benchmarks/train_step.py --device cuda --steps 20 --warmup 5 \
    --paths plain,grouped --modes fp32,bf16+channels_last \
    --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt"
if [ "${PROFILE:-0}" = 1 ]; then
    timeout 150 python3 benchmarks/profile_step.py --device cuda --steps 20 2>&1 | tee "$OUT/profile_step.txt"
fi

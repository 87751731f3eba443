#!/usr/bin/env bash
# One prepared GPU session (issue 14): the search and training steps for plain, grouped, graphs
# (captured steps), bf16 / channels_last on top, compiled cells and seeds together, with peak
# memory, the device's name and the 50- / 600-epoch estimates, in at most 8 minutes.
#
#   bash benchmarks/gpu_run.sh             # on a GPU machine
#   DRY=1 bash benchmarks/gpu_run.sh       # dry run on the CPU at a tiny size (checks the script)
#
# Results: benchmarks/results/DATE-DEVICE/ (DATE-cpu-dryrun for DRY=1); under the device tool,
# where only $OUT comes back, $OUT/benchmarks/results/DATE-DEVICE/. Each measurement is one
# script call with its own .txt and .json; summary.md compares every row with the plain path and
# the authors' figures (`python benchmarks/_device.py summarise DIR`). Steps run in order of
# importance under one 470-second budget: a step that would not fit is skipped with a line saying
# so, and a variant whose module is missing (compiled cells, seeds together) says "not available".
# The device image has torch but not lark/pydantic: carry them as wheels in .whl/ (README of
# the device tool), installed here into /tmp/site.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
START=$(date +%s)
if [ "${DRY:-0}" = 1 ]; then
    BUDGET=${BUDGET:-1800}  # a shared 2-core CPU takes seconds per tiny step: check every step
    CAP_SCALE=4
    SLUG=cpu-dryrun
    DEVICE=(--device cpu --threads 1)
    SEARCH_SIZE=(--batch-size 2 --channels 4 --layers 3 --steps 1 --warmup 0)
    TRAIN_SIZE=(--batch-size 2 --channels 4 --layers 3 --steps 1 --warmup 0)
    COMPILE=(--compile --compile-backend eager)
    export OMP_NUM_THREADS=1
else
    SLUG=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' |
           sed -e 's/[^a-z0-9][^a-z0-9]*/-/g' -e 's/^-//' -e 's/-$//')
    DEVICE=(--device cuda)
    SEARCH_SIZE=(--steps 10 --warmup 2)
    TRAIN_SIZE=(--steps 20 --warmup 3)
    COMPILE=(--compile)
fi
BUDGET=${BUDGET:-470}
CAP_SCALE=${CAP_SCALE:-1}
DEST=${OUT:+$OUT/}benchmarks/results/$(date -u +%F)-$SLUG
mkdir -p "$DEST"
{ date -u
  if [ "${DRY:-0}" = 1 ]; then echo "DRY RUN on the CPU at a tiny size: the numbers measure nothing";
      grep -m1 'model name' /proc/cpuinfo; uptime;
  else nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  python3 -c "import torch; print('torch', torch.__version__)"
  git rev-parse HEAD 2>/dev/null || true; } 2>&1 | tee "$DEST/device.txt"

# step NAME CAP SCRIPT ARGS...: run benchmarks/SCRIPT into NAME.txt / NAME.json within CAP
# seconds and what is left of the budget
step() {
    local name=$1 cap=$(( $2 * CAP_SCALE )) script=$3; shift 3
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 20 ]; then
        echo "$name: skipped, out of time (budget ${BUDGET} s)" | tee "$DEST/$name.txt"
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    echo "== $name (at most $cap s)"
    timeout "$cap" python3 "benchmarks/$script" "${DEVICE[@]}" "$@" --json "$DEST/$name.json" \
        2>&1 | tee "$DEST/$name.txt"
    [ "${PIPESTATUS[0]}" = 124 ] && echo "$name: stopped after $cap s" | tee -a "$DEST/$name.txt"
}

# in order of importance; plain second order is known (7.3 s on an H200, 2026-11-28) and skipped
step search_o1_eager 80 search_step.py "${SEARCH_SIZE[@]}" --orders 1 --paths plain,grouped
step search_o1_graphs 50 search_step.py "${SEARCH_SIZE[@]}" --orders 1 --paths grouped --graphs
step train_graphs 120 train_step.py "${TRAIN_SIZE[@]}" --paths grouped --graphs \
    --modes fp32,bf16,channels_last,bf16+channels_last
step train_eager 60 train_step.py "${TRAIN_SIZE[@]}" --paths plain,grouped --modes fp32
step search_o2_graphs 60 search_step.py "${SEARCH_SIZE[@]}" --orders 2 --paths grouped --graphs
step search_o2_eager 60 search_step.py "${SEARCH_SIZE[@]}" --orders 2 --paths grouped
step search_o1_graphs_bf16 40 search_step.py "${SEARCH_SIZE[@]}" --orders 1 --paths grouped \
    --graphs --amp bf16
step search_o1_graphs_bf16_channels_last 40 search_step.py "${SEARCH_SIZE[@]}" --orders 1 \
    --paths grouped --graphs --amp bf16 --channels-last
step search_o1_together4 60 search_step.py "${SEARCH_SIZE[@]}" --orders 1 --paths grouped \
    --seeds-together 4
step search_o1_compile_graphs 90 search_step.py "${SEARCH_SIZE[@]}" --orders 1 --paths grouped \
    --graphs "${COMPILE[@]}"
step train_compile_graphs 90 train_step.py "${TRAIN_SIZE[@]}" --paths grouped --graphs \
    --modes fp32 --genotypes att_darts "${COMPILE[@]}"

python3 benchmarks/_device.py summarise "$DEST" > /dev/null
echo "== done in $(( $(date +%s) - START )) s; results in $DEST" | tee -a "$DEST/device.txt"

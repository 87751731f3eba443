#!/usr/bin/env bash
# Fresh machine -> a small end-to-end demonstration on the CPU, no download:
# install, search the paper's space on synthetic data (tiny supernet, 2 short epochs), then
# check, compile and render the genotype the search wrote. Outputs go to runs/demo (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-runs/demo}
rm -rf "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
attdarts search genotypes/spaces/att_darts.geno --dataset synthetic --device cpu \
    --channels 8 --layers 5 --batch-size 16 --epochs 2 --max-steps-per-epoch 8 --seed 0 --out "$OUT"
attdarts check "$OUT/genotype.geno"
attdarts compile "$OUT/genotype.geno"
attdarts render "$OUT/genotype.geno" -o "$OUT/genotype.svg" || true
attdarts plot "$OUT" -o "$OUT/weights.png" || true
echo
echo "demo outputs in $OUT:"
ls "$OUT"

#!/usr/bin/env bash
# Fresh machine -> a small end-to-end run on real images, on the CPU, no download (about 10 minutes
# on 2 cores): install, search the paper's space (genotypes/spaces/att_darts.geno) on cifar10-mini,
# the CIFAR-10 subset shipped in the package (2,500 training / 500 test images; see
# attdarts/data/cifar10-mini/README.md), with a tiny supernet for a few short epochs; check, compile
# and render the genotype it found and write the search's report page (report.html); train that
# cell briefly as a small network; score it on the 500 test images and compare with chance (10 %). Far too small for the paper's numbers: it shows
# the whole pipeline learning from real data. Outputs go to runs/demo (or $1): search/ and train/.
# ATTDARTS_SETUP=0 skips the installation step (for an environment that already has attdarts).
# One torch thread by default: these small networks gain little from a second one, and on a busy
# machine two threads per process made the search several times slower; set OMP_NUM_THREADS to
# choose.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ATTDARTS_SETUP:-1}" != 0 ]; then
    bash scripts/setup.sh
fi
OUT=${1:-runs/demo}
rm -rf "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHON=${PYTHON:-python3}
started=$(date +%s)

echo "== search: the paper's space on cifar10-mini (C=4, 3 cells, 3 epochs of 25 steps)"
attdarts search genotypes/spaces/att_darts.geno --dataset cifar10-mini --device cpu --quiet \
    --channels 4 --layers 3 --batch-size 16 --epochs 3 --max-steps-per-epoch 25 --seed 0 \
    --out "$OUT/search"
attdarts check "$OUT/search/genotype.geno"
attdarts compile "$OUT/search/genotype.geno"
attdarts render "$OUT/search/genotype.geno" -o "$OUT/search/genotype.svg" || true
attdarts plot "$OUT/search" -o "$OUT/search/weights.png" || true
attdarts report "$OUT/search" --no-mult-adds --html "$OUT/search/report.html" || true

echo
echo "== train the found cell on cifar10-mini (C=8, 5 cells, 4 epochs of 2,500 images)"
attdarts train "$OUT/search/genotype.geno" --dataset cifar10-mini --device cpu --quiet \
    --channels 8 --layers 5 --batch-size 64 --epochs 4 --seed 0 --out "$OUT/train"
attdarts test "$OUT/train/last.pt" --device cpu --json > "$OUT/train/test.json"
"$PYTHON" - "$OUT/train/test.json" "$started" <<'EOF'
import json, sys, time

result = json.load(open(sys.argv[1]))
minutes = (time.time() - int(sys.argv[2])) / 60
print(f"\ntest accuracy of the found cell after {result['epoch']} epochs: "
      f"{result['test_top1']:.1f} % on {result['test_images']} real CIFAR-10 test images "
      f"(chance: 10.0 %); search and training took {minutes:.1f} minutes")
EOF
echo
echo "demo outputs in $OUT:"
ls "$OUT/search" "$OUT/train"

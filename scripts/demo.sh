#!/usr/bin/env bash
# Fresh machine -> a small end-to-end run on real images, on the CPU, no download (about 10 minutes
# on 2 cores): install, search the paper's space (genotypes/spaces/att_darts.geno) on cifar10-mini,
# the CIFAR-10 subset shipped in the package (2,500 training / 500 test images; see
# attdarts/data/cifar10-mini/README.md), with a tiny supernet for a few short epochs; check the
# genotype it found, render and plot it and write the search's report page (report.html); compile
# and train that cell as a small network (C=8, 5 cells); score it on the 500 test images and
# compare with chance (10 %). Far too small for the paper's numbers: it shows the whole pipeline
# learning from real data. Each epoch prints a line (and a progress bar on a terminal).
#
#   bash scripts/demo.sh [DIR]                  outputs in DIR (default runs/demo): search/, train/
#   bash scripts/demo.sh --prepare-only [DIR]   only the first step below, then stop
#
# DIR is emptied first only when it is a previous demo's output: the demo marks its directory
# with a file named .attdarts-demo. A directory without that mark that holds anything is refused
# (nothing is deleted); an empty or absent one is used.
# ATTDARTS_SETUP=0 skips the installation step (for an environment that already has attdarts).
# Threads: attdarts chooses one torch thread for networks this small (README, "CPU threads");
# set OMP_NUM_THREADS to choose another count.
set -euo pipefail
cd "$(dirname "$0")/.."
MARK=.attdarts-demo

# prepare_output DIR: refuse DIR unless it is absent, empty or a previous demo's output; then
# leave it empty but for the mark.
prepare_output() {
    local out=$1
    if [ -e "$out" ] || [ -L "$out" ]; then
        if [ ! -d "$out" ] || [ -L "$out" ]; then
            echo "demo: $out is not a directory (or is a symbolic link); give another DIR (nothing was deleted)" >&2
            return 1
        fi
        if [ -n "$(ls -A "$out")" ] && [ ! -f "$out/$MARK" ]; then
            echo "demo: $out is not a previous demo output (no $MARK file) and is not empty; give" \
                 "another DIR or empty it yourself (nothing was deleted)" >&2
            return 1
        fi
        rm -rf "$out"
    fi
    mkdir -p "$out"
    echo "written by scripts/demo.sh; its next run with this directory deletes it" > "$out/$MARK"
}

PREPARE_ONLY=0
if [ "${1:-}" = --prepare-only ]; then
    PREPARE_ONLY=1
    shift
fi
OUT=${1:-runs/demo}
prepare_output "$OUT"
if [ "$PREPARE_ONLY" = 1 ]; then
    exit 0
fi
if [ "${ATTDARTS_SETUP:-1}" != 0 ]; then
    bash scripts/setup.sh
fi
PYTHON=${PYTHON:-python3}
started=$(date +%s)

echo "== search: the paper's space on cifar10-mini (C=4, 3 cells, 3 epochs of 25 steps)"
attdarts search genotypes/spaces/att_darts.geno --dataset cifar10-mini --device cpu \
    --channels 4 --layers 3 --batch-size 16 --epochs 3 --max-steps-per-epoch 25 --seed 0 \
    --out "$OUT/search"
attdarts check "$OUT/search/genotype.geno"
attdarts render "$OUT/search/genotype.geno" -o "$OUT/search/genotype.svg" || true
attdarts plot "$OUT/search" -o "$OUT/search/weights.png" || true
attdarts report "$OUT/search" --no-mult-adds --html "$OUT/search/report.html" || true

echo
echo "== the found cell as the network trained below (C=8, 5 cells; the paper trains C=36, 20 cells)"
attdarts compile "$OUT/search/genotype.geno" --channels 8 --layers 5

echo
echo "== train that network on cifar10-mini (4 epochs of 2,500 images)"
attdarts train "$OUT/search/genotype.geno" --dataset cifar10-mini --device cpu \
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

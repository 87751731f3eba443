#!/usr/bin/env bash
# Install everything attdarts needs on a fresh machine: graphviz's `dot` (for render), the
# torch/torchvision pair, and the package itself with its test extras. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) \
            || echo "setup: could not install graphviz; 'attdarts render' will write .dot files only" >&2
    else
        echo "setup: graphviz's 'dot' is missing (apt-get install graphviz / brew install graphviz);" \
             "'attdarts render' will write .dot files only" >&2
    fi
fi

# torch and torchvision must be a matching pair; 2.14.1 / 0.29.1 is the pair this project is tested with.
if ! "$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$PYTHON" -m pip install -q -e ".[dev,export,tensorboard]"

#!/usr/bin/env bash
# Fresh machine -> test results: install, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# By default the tests marked slow (multi-process runs, the real CPU compiler, signals sent to
# subprocesses) are left out; `bash scripts/test.sh -m slow` runs them, and any pytest
# arguments replace the default selection.
if [ "$#" -eq 0 ]; then
    set -- -m "not slow"
fi
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Run DeepSeg's test suite: `bash tests/run.sh [PYTEST ARGS...]`.
# With no Python environment active it creates .venv (once) and installs DeepSeg with its
# test extras (see lib/ensure_venv.sh); then it runs pytest from the repository root.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=../lib/ensure_venv.sh
source "$root/lib/ensure_venv.sh"
deepseg_ensure_venv "$root" dev || { echo "tests/run.sh: installing DeepSeg failed (see above)" >&2; exit 1; }
# 2 test processes (DEEPSEG_TEST_PROCESSES=0: all in this one; pytest's -n N overrides it)
exec python -m pytest -n "${DEEPSEG_TEST_PROCESSES:-2}" --dist loadgroup "$@"

#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
# The default run skips tests marked slow; SHED_TEST_ALL=1 runs them too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MARK=(-m "not slow")
if [ "${SHED_TEST_ALL:-0}" = "1" ]; then MARK=(); fi
# --durations=25: every log lists the slowest tests (the default run must stay under ~15 min on 2 cores).
exec .venv/bin/python -m pytest -q --durations=25 "${MARK[@]}" "$@"

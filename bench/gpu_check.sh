#!/usr/bin/env bash
# One accelerator check of the LM proxy (issue 18): logits parity vs transformers (float32, bfloat16), bfloat16 vs
# float32 utility agreement, coalition-steps/s vs transformers + peft, model-FLOP utilisation on real tokens, and
# `shed refine --proxy lm` end to end; prints one table and writes bench/results/gpu_check.json.
#
# Runs from a source checkout (no install): PYTHONPATH is set to the checkout. Python: $PYTHON, else the
# checkout's .venv, else python3 (with the project's dependencies and the `bench` extra: peft, accelerate).
#
#   bench/gpu_check.sh --data bench/data           # dolly15k.jsonl in a git-ignored folder (or SHED_GPU_CHECK_DATA)
#   bench/gpu_check.sh --tiny                      # tiny random Llama on a CPU, end to end in under a minute
#   bench/gpu_check.sh --help                      # every option (bench/gpu_check.py)
#
# The whole run is stopped after GPU_CHECK_TIMEOUT seconds (default 480); the JSON keeps the sections done by then.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
exec timeout --signal=TERM --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m bench.gpu_check "$@"

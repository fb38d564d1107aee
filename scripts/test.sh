#!/usr/bin/env bash
# Set everything up, lint, and run the whole test suite (real-data tests skip without CIFAR-10)
# in $CONTRASTLAB_TEST_WORKERS worker processes (2; each test file stays in one worker, so its
# fixtures are built once; the slowest files start first: tests/conftest.py's LONGEST_FIRST).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${CONTRASTLAB_TEST_WORKERS:-2}" \
  --dist loadfile --no-loadscope-reorder "$@"

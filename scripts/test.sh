#!/usr/bin/env bash
# Run the test suite (sets the environment up first if needed; see scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-run
. .venv/bin/activate
ruff check src tests benchmarks examples
python -m pytest -q "$@"

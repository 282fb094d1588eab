#!/usr/bin/env bash
# Set up, lint, then run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
# Two workers: the end-to-end runs mostly wait on process start-ups, so the
# deployment tests (one worker, see tests/test_deployment.py) overlap the simulations.
python -m pytest -q -n 2 --dist loadgroup "$@"

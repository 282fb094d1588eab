#!/usr/bin/env bash
# Set up, lint, then run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
# Two workers: the end-to-end tests (group "e2e": simulations and the deployment) run
# one at a time on one worker, the unit tests on the other.
python -m pytest -q -n 2 --dist loadgroup "$@"

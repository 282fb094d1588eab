#!/usr/bin/env bash
# Set up, lint, then run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
# Two workers: the deployment tests (group "deployment") run on one, the simulations
# (group "engine") on the other, the unit tests on whichever is free.
python -m pytest -q -n 2 --dist loadgroup "$@"

#!/usr/bin/env bash
# Set up, lint, then run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
# The unit tests on two pytest-xdist workers, then the end-to-end tests (Flower's
# simulation engine and a deployment) one at a time: each starts many processes, and
# beside one another they starve 2 cores past Ray's and Flower's start-up and round
# deadlines. Extra arguments go to both runs; exit status 5 (no test selected) is not
# a failure of a run.
status=0
python -m pytest -q -n 2 -m "not simulation and not deployment" "$@" || status=$?
[ "$status" -eq 5 ] && status=0
e2e=0
python -m pytest -q -m "simulation or deployment" "$@" || e2e=$?
[ "$e2e" -eq 5 ] && e2e=0
[ "$status" -ne 0 ] && exit "$status"
exit "$e2e"

#!/usr/bin/env bash
# Quick start: set up, then run the default experiment (digits, 10 nodes,
# 2 Byzantine, 2 stragglers, DStar, 10 rounds) on the Flower simulation engine.
# Extra arguments go to the launcher, e.g. -c "strategy='fedavg'".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m simulations.federation.launch "$@"

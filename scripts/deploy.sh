#!/usr/bin/env bash
# Run the app on Flower's deployment engine on this machine: a SuperLink and
# SuperNodes as separate processes, with TLS and SuperNode authentication
# (see docs/deployment.md). Sets up .venv first if it is missing. Extra
# arguments go to the launcher, e.g. --num-supernodes 5 -c "num-server-rounds=3".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup.sh
fi
. .venv/bin/activate
python -m simulations.federation.deploy "$@"

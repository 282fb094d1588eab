#!/usr/bin/env bash
# Create .venv (if missing) and install dstar-flwr with its test tools.
# torch is pinned first to the CPU build; the project's range accepts it, so pip
# does not replace it with a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
# uv installs the rest several times faster than pip (it sees the torch above and
# keeps it); pip does it where uv cannot be installed or reach the index.
if ! { python -m pip install --quiet uv && uv pip install --quiet -e ".[dev]"; }; then
  echo "setup: uv failed; installing with pip" >&2
  python -m pip install --quiet -e ".[dev]"
fi

#!/usr/bin/env bash
# Create .venv (if missing) and install dstar-flwr (editable) with the experiment app's
# dependencies and the test tools: the PEP 735 groups "app" and "dev" of pyproject.toml.
# torch is pinned first to the CPU build; the app's range accepts it, so it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# pip >= 25.1 installs dependency groups (--group).
python -m pip install --quiet --upgrade "pip>=25.1"
python -m pip install --quiet "torch==2.13.0"
# uv installs the rest several times faster than pip (it sees the torch above and keeps
# it; --no-sources: pyproject's PyTorch CPU index is for `uv sync` and `flwr run .`, and
# the torch it would fetch is already here); pip does it where uv cannot be installed or
# reach the index. --compile-bytecode: uv, unlike pip, writes no .pyc files by default,
# and every SuperNode, ClientApp and Ray worker process would compile flwr and its
# dependencies from source again (about 0.8 s more per process on 2 cores: with 20
# SuperNodes starting their ClientApps at once, more than Flower's 30 s for a ClientApp
# process to take its task).
if ! { python -m pip install --quiet uv &&
  uv pip install --quiet --no-sources --compile-bytecode -e . --group app --group dev; }; then
  echo "setup: uv failed; installing with pip" >&2
  python -m pip install --quiet -e . --group app --group dev
fi

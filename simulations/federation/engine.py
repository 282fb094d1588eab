"""Let Flower's simulation engine run every node's message at once.

Flower 1.42's simulation engine (``flwr.server.superlink.fleet.vce.vce_api``)
runs one worker loop per Ray actor, but submits those loops to a
``ThreadPoolExecutor()`` with the default ``max_workers = min(32, cores + 4)``.
Only that many loops ever run, so at most ``cores + 4`` ClientApp messages are in
flight, whatever the number of actors: 6 on a 2-core machine. A node that sleeps
to model its latency then holds one of those 6 slots, and the other nodes queue
behind it, so a 20-node latency experiment measures the queue instead of the
delays.

:func:`engine_path` writes a drop-in ``flwr-simulation`` into a folder to put
first on the SuperLink's ``PATH`` (the SuperLink starts the engine by that name).
It gives that pool ``DSTAR_FLWR_ENGINE_WORKERS`` threads, one per actor as
intended, before the engine starts; without the variable it is the stock
``flwr-simulation``. The script imports nothing from this project, so the
ServerApp still comes from the run's FAB and not from this checkout.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

ENGINE_WORKERS_ENV = "DSTAR_FLWR_ENGINE_WORKERS"

_SCRIPT = """\
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from flwr.server.superlink.fleet.vce import vce_api
from flwr.simulation.app import flwr_simulation

workers = os.environ.get("{variable}")
if workers:
    if int(workers) < 1:
        sys.exit("{variable} must be >= 1, got " + workers)
    vce_api.ThreadPoolExecutor = partial(ThreadPoolExecutor, max_workers=int(workers))
sys.exit(flwr_simulation())
"""


def engine_script() -> str:
    """The source of the ``flwr-simulation`` replacement (run by this interpreter)."""
    return f"#!{sys.executable}\n" + _SCRIPT.format(variable=ENGINE_WORKERS_ENV)


def engine_path(folder: Path) -> Path:
    """Write the ``flwr-simulation`` replacement into ``folder`` and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "flwr-simulation"
    script.write_text(engine_script())
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder

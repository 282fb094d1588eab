"""A latency model of your own, named in the run config by its dotted path.

Nodes sit at growing distances from the server: partition ``i`` of ``N`` waits
``latency-seconds * i / (N - 1)`` (partition 0 none, the last one the full
``latency-seconds``), times a per-round jitter factor drawn uniformly from
``[1 - ramp-jitter, 1 + ramp-jitter]``. Use it with::

    flwr run . --run-config "latency-model='examples.custom_latency:ramp_latency'"

A latency model is any function ``(LatencyContext) -> seconds`` that is
importable on every node. It gets the node (``partition_id``, ``num_partitions``,
``is_straggler``, ``is_byzantine``), the round (``server_round``,
``compute_seconds``), a seeded ``rng`` (use only it, so runs are reproducible)
and the validated built-in settings in ``params`` (``context.latency_seconds``
already applies a node's ``--node-config latency-seconds``). Keys of your own
come from ``context.params.run_config``: add them to ``[tool.flwr.app.config]``
and read them with ``clients.run_config.read_as(config, key, float)``, which fail with a
message that says what to set. It must return a finite number of seconds >= 0.
"""

from __future__ import annotations

from clients.latency import LatencyContext
from clients.run_config import read_as

DEFAULT_JITTER = 0.1


def ramp_latency(context: LatencyContext) -> float:
    """Delay growing linearly with the partition id, with a little per-round jitter.

    Parameters
    ----------
    context : LatencyContext
        The node, the round, the settings and the seeded randomness.

    Returns
    -------
    float
        Seconds to wait, >= 0.
    """
    run_config = context.params.run_config
    jitter = DEFAULT_JITTER
    if "ramp-jitter" in run_config:
        jitter = read_as(run_config, "ramp-jitter", float)
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"run config 'ramp-jitter' must be in [0, 1], got {jitter}")
    share = context.partition_id / max(1, context.num_partitions - 1)
    factor = context.rng.uniform(1.0 - jitter, 1.0 + jitter)
    return context.latency_seconds * share * factor

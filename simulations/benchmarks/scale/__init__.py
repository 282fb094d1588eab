"""Scale on one machine: many virtual nodes on the simulation engine, many SuperNodes deployed.

- :mod:`~simulations.benchmarks.scale.engine`: DStar and FedAvg with the same
  federation on Flower's simulation engine (by default 1,000 virtual nodes, 100
  sampled per round, k = 80, 20 rounds, 10% Byzantine, log-normal latency). It
  compares the server's CPU seconds per round outside the clients and follows the
  server's memory round by round.
- :mod:`~simulations.benchmarks.scale.deployment`: a local deployment (by default
  20 SuperNodes, 10 rounds) in which SuperNodes are killed and restarted and the
  ServerApp is stopped and resumed from its checkpoint. It checks that every round
  completed or was reported skipped with its reason, that no completed round was
  lost, and that nothing of the run is left in the SuperLink's state.
- :mod:`~simulations.benchmarks.scale.figures`: the figures both print, computed
  from the results files (no Flower needed).
- :mod:`~simulations.benchmarks.scale.faults`: the Byzantine nodes and log-normal
  stragglers both inject.

Usage::

    python -m simulations.benchmarks.scale engine       # the full sizes (6 min, quiet 2 cores)
    python -m simulations.benchmarks.scale deployment   # the full sizes (22 min, 2 cores)
    python -m simulations.benchmarks.scale engine --num-nodes 20 --sampled 10 --k 8 --rounds 3
"""

"""A short end-to-end run on the Flower simulation engine (a private SuperLink)."""

import json
import math
from pathlib import Path

import pytest

from simulations.federation.launch import run_simulation

pytestmark = pytest.mark.simulation


def test_dstar_simulation_survives_crashes_dropouts_and_intermittent_nodes(
    tmp_path: Path,
) -> None:
    path = run_simulation(
        {
            "num-server-rounds": 3,
            "num-byzantine-nodes": 1,
            "attack": "sign-flip",
            "attack-scale": 4.0,
            "fast-byzantine": True,
            "num-stragglers": 0,
            # Every honest node waits 1.5 s, the Byzantine one not at all: it is
            # among the first k unless a loaded machine starts its worker late.
            "latency-model": "constant",
            "latency-seconds": 1.5,
            "crash-partitions": "1",
            "dropout-partitions": "2",
            "intermittent-partitions": "3",
            "intermittent-probability": 0.5,
            "round-timeout": 15.0,  # a cap (and the dropout's TTL): rounds close at the k-th reply
            "first-k": 3,
            "num-byzantine": 1,
            "local-epochs": 1,
            "results-dir": str(tmp_path),
            "run-name": "faults",
        },
        num_supernodes=7,
        quiet=True,
        # Messages run in node order, as on the stock engine, so that the fast
        # Byzantine node (partition 0) starts first.
        max_parallel=6,
    )
    rounds = json.loads(path.read_text())["rounds"]
    explain = json.dumps(rounds, indent=1)
    assert [r["server_round"] for r in rounds] == [1, 2, 3], explain
    for row in rounds:
        # The crashing node's error comes before the k-th reply (failed) or, on a
        # loaded machine, after it (late); either way it never reaches aggregation.
        assert 1 not in row["received_partitions"], explain
        assert 2 not in row["received_partitions"], explain  # never replies
        if 0 in row["received_partitions"]:
            assert 0 in row["rejected_partitions"], explain
        assert row["test_accuracy"] is not None and math.isfinite(row["test_accuracy"]), explain
    assert 2 in rounds[0]["late_partitions"], explain
    assert any(1 in r["failed_partitions"] for r in rounds), explain
    # The fast Byzantine node is nearly always among the first k (a loaded
    # machine may start its worker late in some round).
    assert any(0 in r["received_partitions"] for r in rounds), explain


# The strategy's deadline and its record of the late are unit-tested on a scripted grid
# (tests/test_diagnostics.py); this is the same on Flower's engine.
def test_fedavg_timeout_ends_rounds_at_the_deadline(tmp_path: Path) -> None:
    path = run_simulation(
        {
            "strategy": "fedavg-timeout",
            "fedavg-timeout": 3.0,
            "num-server-rounds": 2,
            "num-byzantine-nodes": 0,
            "num-stragglers": 1,
            "latency-seconds": 5.0,
            "local-epochs": 1,
            "results-dir": str(tmp_path),
            "run-name": "fedavg-timeout",
        },
        num_supernodes=4,
        quiet=True,
    )
    rounds = json.loads(path.read_text())["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert 2.9 < row["round_seconds"] < 4.5  # the deadline, not the straggler
        assert 3 in row["late_partitions"] and 3 not in row["received_partitions"]
    # The others make the deadline (at the latest once their workers are up) and are averaged.
    averaged = [r for r in rounds if r["received_partitions"]]
    assert averaged and all(set(r["received_partitions"]) <= {0, 1, 2} for r in averaged)
    assert all(r["cosine_to_honest"] > 0.99 for r in averaged)

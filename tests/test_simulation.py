"""A short end-to-end run on the Flower simulation engine (a private SuperLink)."""

import json
import math
from pathlib import Path

import pytest

from simulations.launch import run_simulation

pytestmark = pytest.mark.simulation


def test_dstar_simulation_rejects_the_attacker_and_skips_the_straggler(tmp_path: Path) -> None:
    path = run_simulation(
        {
            "num-server-rounds": 3,
            "num-byzantine-nodes": 1,
            "attack": "gaussian",
            "num-stragglers": 1,
            "latency-seconds": 2.0,
            "first-k": 4,
            "num-byzantine": 1,
            "local-epochs": 2,
            "results-dir": str(tmp_path),
            "run-name": "e2e",
        },
        num_supernodes=5,
        quiet=True,
    )
    results = json.loads(path.read_text())
    assert results["byzantine-partitions"] == [0]
    assert results["straggler-partitions"] == [4]
    rounds = results["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2, 3]
    # The straggler is late in round 1; while busy with it, it is not sent more work.
    assert rounds[0]["late_partitions"] == [4]
    for row in rounds:
        assert 4 not in row["received_partitions"]
        assert 0 in row["rejected_partitions"]
        assert 0 <= row["test_accuracy"] <= 1
    # Rounds after the first (which starts the workers) end well before the straggler.
    assert all(r["round_seconds"] < 2.0 for r in rounds[1:])
    assert results["summary"]["byzantine-rejection-rate"] == 1.0
    assert results["config"]["strategy"] == "dstar"
    assert (results["strategy"], results["attack"]) == ("dstar", "gaussian")
    assert results["threat-model"] == "client"
    # Resilience diagnostics: every round, against the honest replies among the first k.
    for row in rounds:
        for key in ("cosine_to_honest", "rho", "relative_error"):
            assert row[key] is not None and math.isfinite(row[key])
        assert row["cosine_to_honest"] > 0.5
        assert row["byzantine_recall"] == 1.0
        assert row["byzantine_precision"] is not None and 0 < row["byzantine_precision"] <= 1
    summary = results["summary"]
    assert summary["byzantine-recall"] == 1.0 and summary["min-rho"] > 0


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
            # Every honest node waits 1.5 s, the Byzantine one not at all: it is always
            # among the first k, whatever the jitter of a loaded machine.
            "latency-model": "constant",
            "latency-seconds": 1.5,
            "crash-partitions": "1",
            "dropout-partitions": "2",
            "intermittent-partitions": "3",
            "intermittent-probability": 0.5,
            "round-timeout": 10.0,
            "first-k": 3,
            "num-byzantine": 1,
            "local-epochs": 1,
            "results-dir": str(tmp_path),
            "run-name": "faults",
        },
        num_supernodes=7,
        quiet=True,
        # Messages run in node order, as on the stock engine, so that the fast
        # Byzantine node (partition 0) is always among the first k.
        max_parallel=6,
    )
    rounds = json.loads(path.read_text())["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2, 3]
    assert all(1 in r["failed_partitions"] for r in rounds)  # crashes every round
    assert 2 in rounds[0]["late_partitions"]  # never replies
    assert all(2 not in r["received_partitions"] for r in rounds)
    assert all(0 in r["received_partitions"] for r in rounds)  # fast Byzantine: always first k
    assert all(0 in r["rejected_partitions"] for r in rounds)
    assert all(r["test_accuracy"] is not None for r in rounds)


def test_fltrust_completes_under_a_gaussian_attack(tmp_path: Path) -> None:
    path = run_simulation(
        {
            "strategy": "fltrust",
            "num-server-rounds": 2,
            "num-byzantine-nodes": 1,
            "attack": "gaussian",
            "num-stragglers": 0,
            "latency-model": "none",
            "local-epochs": 1,
            "results-dir": str(tmp_path),
            "run-name": "fltrust",
        },
        num_supernodes=5,
        quiet=True,
        max_parallel=2,  # no latency: two workers lose nothing and start fast
    )
    results = json.loads(path.read_text())
    assert results["strategy"] == "fltrust"
    rounds = results["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert row["received_partitions"] == [0, 1, 2, 3, 4]
        assert row["test_accuracy"] is not None and math.isfinite(row["test_accuracy"])
        assert row["cosine_to_honest"] > 0.9  # the noise gets (almost) no trust
        assert row["round_seconds"] is not None and row["round_seconds"] > 0


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

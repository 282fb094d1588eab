"""Every attack through short simulations on Flower's engine, against DStar and FedAvg,
and through the omniscient wrapper against one of Flower's built-in robust strategies.

The attacks are spread over the Byzantine partitions round-robin (run-config
``attack`` as a list), so that one run covers all of them. The smoke benchmark
grid covers the omniscient threat model against DStar and FLTrust (against
FedAvg: tests/test_omniscient.py).
"""

import json
import math
from pathlib import Path

import pytest

from simulations.federation.launch import run_simulation

pytestmark = pytest.mark.simulation

CLIENT_SIDE_ATTACKS = (
    "sign-flip,gaussian,label-flip,alie,ipm,mimic,min-max,min-sum,"
    "non-finite,malformed,examples.custom_attack:noisy_mean"
)
CLIENT_SIDE_SETTINGS = {
    "min-max-direction": "std",
    "malformed-kind": "wrong-names",
    "fast-byzantine": True,
}
OMNISCIENT_ATTACKS = "sign-flip,gaussian,alie,ipm,mimic,min-max,min-sum,non-finite"
OMNISCIENT_SETTINGS = {"threat-model": "omniscient", "ipm-epsilon": 100.0}
HONEST_NODES = 4
NUM_BYZANTINE = 2  # the strategies' f; most nodes are Byzantine, and the runs must still go on


def _run(tmp_path: Path, strategy: str, attacks: str, extra: dict[str, object]) -> dict:
    byzantine = len(attacks.split(","))
    num_nodes = byzantine + HONEST_NODES
    overrides = {
        "strategy": strategy,
        "num-server-rounds": 2,
        "local-epochs": 1,
        "num-byzantine-nodes": byzantine,
        "attack": attacks,
        "attack-estimation-batches": 2,
        # Baruch et al.'s z needs fewer than half the nodes Byzantine; here most are.
        "alie-z": 1.5,
        "num-stragglers": 0,
        "latency-model": "none",
        "num-byzantine": NUM_BYZANTINE,
        "first-k": num_nodes,
        "round-timeout": 120.0,
        "results-dir": str(tmp_path),
        "run-name": "attacks",
        **extra,
    }
    # No latency here, so two workers (one per core) lose nothing and start fast.
    path = run_simulation(overrides, num_supernodes=num_nodes, quiet=True, max_parallel=2)
    return json.loads(path.read_text())


def _check_completed(results: dict, byzantine: int) -> None:
    assert results["byzantine-partitions"] == list(range(byzantine))
    rounds = results["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert row["test_accuracy"] is not None and math.isfinite(row["test_accuracy"])
        assert row["test_loss"] is not None and math.isfinite(row["test_loss"])


@pytest.mark.parametrize("strategy", ["dstar", "fedavg"])
def test_client_side_attacks_do_not_end_the_run(tmp_path: Path, strategy: str) -> None:
    results = _run(tmp_path, strategy, CLIENT_SIDE_ATTACKS, CLIENT_SIDE_SETTINGS)
    names = CLIENT_SIDE_ATTACKS.split(",")
    _check_completed(results, len(names))
    assert results["config"]["attack"] == CLIENT_SIDE_ATTACKS
    if strategy == "dstar":
        bad = {names.index("non-finite"), names.index("malformed")}
        for row in results["rounds"]:
            assert not row["failed_partitions"], row  # every attack ran
            assert bad <= set(row["malformed_partitions"]), row
            # Every other reply came in and was checked: only the two bad ones were dropped.
            assert len(row["received_partitions"]) == len(names) + HONEST_NODES - len(bad), row


def test_omniscient_attacks_against_a_flower_builtin(tmp_path: Path) -> None:
    results = _run(tmp_path, "multikrum", OMNISCIENT_ATTACKS, OMNISCIENT_SETTINGS)
    names = OMNISCIENT_ATTACKS.split(",")
    _check_completed(results, len(names))
    assert results["config"]["threat-model"] == "omniscient"
    for row in results["rounds"]:
        # Every Byzantine reply was crafted on the server; the non-finite one was then
        # dropped by the malformed-reply guard in front of MultiKrum.
        assert row["attacked_partitions"] == list(range(len(names)))
        assert names.index("non-finite") in row["guard_dropped_partitions"]

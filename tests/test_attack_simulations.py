"""Every attack through short simulations on Flower's engine, against DStar and FedAvg,
and through the omniscient wrapper against one of Flower's built-in robust strategies.

The attacks are spread over the Byzantine partitions round-robin (run-config
``attack`` as a list), so that a few runs cover all of them.
"""

import json
import math
from pathlib import Path

import pytest

from simulations.launch import run_simulation

pytestmark = pytest.mark.simulation

CLIENT_SIDE_GROUPS = {
    "sign-flip,gaussian,label-flip,alie": {},
    "ipm,mimic,min-max,min-sum": {"min-max-direction": "std", "fast-byzantine": True},
    "non-finite,malformed,examples.custom_attack:noisy_mean": {"malformed-kind": "wrong-names"},
}
OMNISCIENT_GROUPS = {
    "sign-flip,gaussian,alie,ipm": {"ipm-epsilon": 100.0},
    "mimic,min-max,min-sum,non-finite": {"min-max-direction": "sign"},
}


def _run(tmp_path: Path, strategy: str, attacks: str, extra: dict[str, object]) -> dict:
    byzantine = len(attacks.split(","))
    overrides = {
        "strategy": strategy,
        "num-server-rounds": 2,
        "local-epochs": 1,
        "num-byzantine-nodes": byzantine,
        "attack": attacks,
        "attack-estimation-batches": 2,
        "num-stragglers": 0,
        "latency-model": "none",
        "num-byzantine": byzantine,
        "first-k": 9,
        "round-timeout": 60.0,
        "results-dir": str(tmp_path),
        "run-name": "attacks",
        **extra,
    }
    # No latency here, so two workers (one per core) lose nothing and start fast.
    path = run_simulation(overrides, num_supernodes=10, quiet=True, max_parallel=2)
    return json.loads(path.read_text())


def _check_completed(results: dict, byzantine: int) -> None:
    assert results["byzantine-partitions"] == list(range(byzantine))
    rounds = results["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert row["test_accuracy"] is not None and math.isfinite(row["test_accuracy"])
        assert row["test_loss"] is not None and math.isfinite(row["test_loss"])


@pytest.mark.parametrize("strategy", ["dstar", "fedavg"])
@pytest.mark.parametrize("attacks", list(CLIENT_SIDE_GROUPS))
def test_client_side_attacks_do_not_end_the_run(
    tmp_path: Path, strategy: str, attacks: str
) -> None:
    results = _run(tmp_path, strategy, attacks, CLIENT_SIDE_GROUPS[attacks])
    byzantine = len(attacks.split(","))
    _check_completed(results, byzantine)
    if strategy == "dstar" and "malformed" in attacks:
        names = attacks.split(",")
        bad = {names.index("non-finite"), names.index("malformed")}
        for row in results["rounds"]:
            assert bad <= set(row["malformed_partitions"])


@pytest.mark.parametrize("attacks", list(OMNISCIENT_GROUPS))
def test_omniscient_attacks_against_a_flower_builtin(tmp_path: Path, attacks: str) -> None:
    extra = {"threat-model": "omniscient", **OMNISCIENT_GROUPS[attacks]}
    results = _run(tmp_path, "multikrum", attacks, extra)
    _check_completed(results, len(attacks.split(",")))
    assert results["config"]["threat-model"] == "omniscient"
    names = attacks.split(",")
    for row in results["rounds"]:
        # Every Byzantine reply was crafted on the server; the non-finite one was then
        # dropped by the malformed-reply guard in front of MultiKrum.
        assert row["attacked_partitions"] == list(range(len(names)))
        if "non-finite" in names:
            assert names.index("non-finite") in row["guard_dropped_partitions"]

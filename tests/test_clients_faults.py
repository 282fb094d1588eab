"""Tests for the simulated faults: crashes, dropouts, intermittent nodes, fast Byzantine."""

from __future__ import annotations

import pytest
from flwr.common.config import get_fused_config_from_dir

from clients.faults import (
    Fault,
    FaultConfig,
    SimulatedAbsence,
    SimulatedCrash,
    SimulatedDropout,
    SimulatedFault,
    crashes,
    enact_fault,
    fault_for_round,
    misses_round,
    skips_delay,
)
from clients.node import run_train_round
from clients.run_config import parse_partition_ids
from clients.settings import NodeSettings

from .node_support import PROJECT_DIR, global_arrays, node_settings, run_config

NUM_PARTITIONS = 4
FAULT_KEYS = {
    "crash-partitions",
    "crash-probability",
    "dropout-partitions",
    "dropout-margin-seconds",
    "intermittent-partitions",
    "intermittent-probability",
    "fast-byzantine",
    "round-timeout",
    "latency-sigma",
    "latency-profile",
}


def settings(partition_id: int, **overrides: object) -> NodeSettings:
    return node_settings(partition_id, NUM_PARTITIONS, **overrides)


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def rounds_with(decide, config: FaultConfig, partition_id: int, rounds: int = 400) -> list[int]:
    return [
        r
        for r in range(1, rounds + 1)
        if decide(config, seed=42, partition_id=partition_id, server_round=r)
    ]


# --- configuration -------------------------------------------------------------


def test_pyproject_has_every_fault_key_and_its_defaults_inject_nothing() -> None:
    defaults = dict(get_fused_config_from_dir(PROJECT_DIR, {}))
    assert set(defaults) >= FAULT_KEYS
    config = FaultConfig.from_run_config(defaults, NUM_PARTITIONS)
    assert config == FaultConfig(round_timeout=defaults["round-timeout"])
    assert all(
        fault_for_round(config, seed=42, partition_id=p, server_round=r) is Fault.NONE
        for p in range(NUM_PARTITIONS)
        for r in range(1, 20)
    )


def test_from_run_config() -> None:
    config = FaultConfig.from_run_config(
        run_config(
            crash_partitions="1, 3",
            crash_probability=0.25,
            dropout_partitions=2,  # `--run-config dropout-partitions=2` gives an int
            intermittent_partitions="0,1,",
            intermittent_probability=1,
            fast_byzantine=True,
            round_timeout=10.0,
            dropout_margin_seconds=0.5,
        ),
        NUM_PARTITIONS,
    )
    assert config == FaultConfig(
        crash_partitions=frozenset({1, 3}),
        crash_probability=0.25,
        dropout_partitions=frozenset({2}),
        intermittent_partitions=frozenset({0, 1}),
        intermittent_probability=1.0,
        fast_byzantine=True,
        round_timeout=10.0,
        dropout_margin_seconds=0.5,
    )
    assert config.dropout_wait_seconds == 10.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"crash_partitions": "1;3"}, r"'crash-partitions': '1;3' is not a partition id; e\.g\."),
        ({"crash_partitions": "4"}, r"names partition 4, but partition ids are 0\.\.3"),
        ({"dropout_partitions": "-1"}, "names partition -1"),
        ({"intermittent_partitions": 1.5}, "'intermittent-partitions' must be a string"),
        ({"crash_probability": 1.5}, r"crash-probability must be a probability in \[0, 1\]"),
        ({"intermittent_probability": -0.1}, "intermittent-probability must be a probability"),
        ({"crash_probability": "half"}, "'crash-probability' must be a number"),
        ({"fast_byzantine": "yes"}, "'fast-byzantine' must be true or false"),
        ({"fast_byzantine": 1}, "'fast-byzantine' must be true or false"),
        ({"round_timeout": 0.0}, "round-timeout must be a number of seconds > 0"),
        ({"dropout_margin_seconds": -1.0}, "dropout-margin-seconds must be"),
    ],
)
def test_bad_fault_config(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultConfig.from_run_config(run_config(**overrides), NUM_PARTITIONS)


def test_missing_key_says_where_to_set_it() -> None:
    config = {k: v for k, v in run_config().items() if k != "crash-partitions"}
    with pytest.raises(ValueError, match=r"missing 'crash-partitions'.*pyproject\.toml"):
        FaultConfig.from_run_config(config, NUM_PARTITIONS)


def test_bad_fault_config_fails_at_node_start() -> None:
    with pytest.raises(ValueError, match="names partition 9"):
        settings(0, dropout_partitions="9")


def test_parse_partition_ids() -> None:
    assert parse_partition_ids("", "k") == ()
    assert parse_partition_ids(" 3 , 1,", "k") == (1, 3)
    assert parse_partition_ids(0, "k", 1) == (0,)
    with pytest.raises(ValueError, match="'k' must be a string"):
        parse_partition_ids(True, "k")
    with pytest.raises(ValueError, match="'k' lists partition 3 twice"):
        parse_partition_ids("3,1,3", "k")


# --- decisions -----------------------------------------------------------------


def test_crash_decisions_are_deterministic_and_at_the_configured_rate() -> None:
    config = FaultConfig(crash_partitions=frozenset({1}), crash_probability=0.5)
    crashed = rounds_with(crashes, config, 1)
    assert crashed == rounds_with(crashes, config, 1)  # same seed, same rounds
    assert 0.4 * 400 <= len(crashed) <= 0.6 * 400
    assert rounds_with(crashes, config, 0) == []  # not listed: never
    assert crashed != [
        r for r in range(1, 401) if crashes(config, seed=7, partition_id=1, server_round=r)
    ]
    always = FaultConfig(crash_partitions=frozenset({1}), crash_probability=1.0)
    never = FaultConfig(crash_partitions=frozenset({1}), crash_probability=0.0)
    assert len(rounds_with(crashes, always, 1)) == 400
    assert rounds_with(crashes, never, 1) == []


def test_intermittent_decisions_are_deterministic_and_independent_of_crashes() -> None:
    config = FaultConfig(
        crash_partitions=frozenset({2}),
        crash_probability=0.5,
        intermittent_partitions=frozenset({2, 3}),
        intermittent_probability=0.5,
    )
    missed = rounds_with(misses_round, config, 2)
    assert missed == rounds_with(misses_round, config, 2)
    assert 0.4 * 400 <= len(missed) <= 0.6 * 400
    assert missed != rounds_with(crashes, config, 2)  # separate random streams
    assert missed != rounds_with(misses_round, config, 3)  # and per partition
    rare = FaultConfig(intermittent_partitions=frozenset({3}), intermittent_probability=0.1)
    assert 0.05 * 400 <= len(rounds_with(misses_round, rare, 3)) <= 0.15 * 400


def test_fault_precedence() -> None:
    config = FaultConfig(
        crash_partitions=frozenset({0, 1}),
        dropout_partitions=frozenset({0}),
        intermittent_partitions=frozenset({1, 2}),
        intermittent_probability=1.0,
    )

    def fault(partition_id: int) -> Fault:
        return fault_for_round(config, seed=1, partition_id=partition_id, server_round=5)

    assert [fault(p) for p in range(4)] == [Fault.DROPOUT, Fault.CRASH, Fault.ABSENT, Fault.NONE]


def test_skips_delay_only_for_fast_byzantine_nodes() -> None:
    fast = FaultConfig(fast_byzantine=True)
    assert skips_delay(fast, is_byzantine=True)
    assert not skips_delay(fast, is_byzantine=False)
    assert not skips_delay(FaultConfig(), is_byzantine=True)


def test_enact_fault() -> None:
    config = FaultConfig(round_timeout=5.0, dropout_margin_seconds=0.5)
    sleep = FakeSleep()
    enact_fault(Fault.NONE, config, partition_id=0, server_round=1, sleep=sleep)
    with pytest.raises(SimulatedCrash, match=r"partition 1, round 2.*crash-partitions"):
        enact_fault(Fault.CRASH, config, partition_id=1, server_round=2, sleep=sleep)
    with pytest.raises(SimulatedAbsence, match="misses this round"):
        enact_fault(Fault.ABSENT, config, partition_id=1, server_round=2, sleep=sleep)
    assert sleep.calls == []
    with pytest.raises(SimulatedDropout, match="past the round-timeout of 5 s"):
        enact_fault(Fault.DROPOUT, config, partition_id=1, server_round=2, sleep=sleep)
    assert sleep.calls == [5.5]
    assert issubclass(SimulatedCrash, SimulatedFault) and issubclass(SimulatedFault, RuntimeError)


# --- through run_train_round -----------------------------------------------------


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the node trains."""
    import clients.node as node

    def train(*args: object, **kwargs: object) -> None:
        raise AssertionError("a faulty node must not train")

    monkeypatch.setattr(node, "train_from_arrays", train)


@pytest.mark.usefixtures("no_training")
def test_crash_raises_before_training() -> None:
    sleep = FakeSleep()
    with pytest.raises(SimulatedCrash):
        run_train_round(settings(1, crash_partitions="1"), global_arrays(), 3, sleep=sleep)
    assert sleep.calls == []


@pytest.mark.usefixtures("no_training")
def test_dropout_waits_past_the_round_deadline() -> None:
    sleep = FakeSleep()
    node = settings(2, dropout_partitions="2", round_timeout=12.0, dropout_margin_seconds=1.0)
    with pytest.raises(SimulatedDropout):
        run_train_round(node, global_arrays(), 1, sleep=sleep)
    assert len(sleep.calls) == 1 and sleep.calls[0] >= 12.0


@pytest.mark.usefixtures("no_training")
def test_intermittent_node_misses_the_round_at_once() -> None:
    sleep = FakeSleep()
    node = settings(3, intermittent_partitions="3", intermittent_probability=1.0)
    with pytest.raises(SimulatedAbsence):
        run_train_round(node, global_arrays(), 1, sleep=sleep)
    assert sleep.calls == []


def test_intermittent_node_trains_in_the_rounds_it_does_not_miss() -> None:
    node = settings(3, intermittent_partitions="3", intermittent_probability=0.5)
    present = next(
        r
        for r in range(1, 50)
        if not misses_round(node.faults, seed=node.data.seed, partition_id=3, server_round=r)
    )
    result = run_train_round(node, global_arrays(), present, sleep=FakeSleep())
    assert result.num_examples > 0


def test_healthy_nodes_are_unaffected() -> None:
    sleep = FakeSleep()
    node = settings(0, crash_partitions="1", dropout_partitions="2", intermittent_partitions="3")
    result = run_train_round(node, global_arrays(), 1, sleep=sleep)
    assert result.num_examples > 0 and sleep.calls == []


def test_fast_byzantine_skips_the_delay() -> None:
    common = {"latency_model": "constant", "latency_seconds": 5.0, "num_byzantine_nodes": 1}
    sleep = FakeSleep()
    byzantine = run_train_round(
        settings(0, fast_byzantine=True, **common), global_arrays(), 1, sleep=sleep
    )
    assert byzantine.delay_seconds == 0.0 and sleep.calls == []
    honest = run_train_round(
        settings(1, fast_byzantine=True, **common), global_arrays(), 1, sleep=sleep
    )
    assert honest.delay_seconds == 5.0 and sleep.calls == [5.0]
    slow_byzantine = run_train_round(settings(0, **common), global_arrays(), 1, sleep=sleep)
    assert slow_byzantine.delay_seconds == 5.0 and sleep.calls == [5.0, 5.0]


def test_latency_models_reach_run_train_round() -> None:
    sleep = FakeSleep()
    node = settings(3, latency_model="profile", latency_profile="3:1.25")
    assert run_train_round(node, global_arrays(), 1, sleep=sleep).delay_seconds == 1.25
    ramp = settings(3, latency_model="examples.custom_latency:ramp_latency", latency_seconds=2.0)
    delay = run_train_round(ramp, global_arrays(), 1, sleep=sleep).delay_seconds
    assert 1.8 <= delay <= 2.2
    assert sleep.calls == [1.25, delay]

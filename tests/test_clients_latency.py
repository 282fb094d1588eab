"""Tests for the latency models and the node roles."""

from __future__ import annotations

import numpy as np
import pytest

from clients.latency import (
    LATENCY_MODELS,
    LatencyConfig,
    delay_seconds,
    parse_latency_profile,
)
from clients.roles import byzantine_partitions, node_role, straggler_partitions


def delay(
    config: LatencyConfig,
    *,
    is_straggler: bool = False,
    compute: float = 2.0,
    partition_id: int = 0,
    num_partitions: int = 4,
    rng: np.random.Generator | None = None,
) -> float:
    return delay_seconds(
        config,
        partition_id=partition_id,
        num_partitions=num_partitions,
        is_straggler=is_straggler,
        compute_seconds=compute,
        server_round=1,
        rng=np.random.default_rng(0) if rng is None else rng,
    )


def run_config(**overrides: object) -> dict[str, object]:
    base = {
        "latency-model": "stragglers",
        "latency-seconds": 3,
        "straggler-slowdown": 1.0,
        "num-stragglers": 2,
        "latency-sigma": 1.0,
        "latency-profile": "",
    }
    return base | {key.replace("_", "-"): value for key, value in overrides.items()}


def test_registry_names() -> None:
    assert set(LATENCY_MODELS) == {
        "none",
        "constant",
        "stragglers",
        "exponential",
        "log-normal",
        "profile",
    }


def test_none_never_waits() -> None:
    config = LatencyConfig("none", 5.0, 3.0, 2)
    assert delay(config, is_straggler=True) == 0.0
    assert delay(config, is_straggler=False) == 0.0


def test_constant_waits_the_same_for_everyone() -> None:
    config = LatencyConfig("constant", 1.5)
    assert delay(config, is_straggler=True) == 1.5
    assert delay(config, is_straggler=False, partition_id=3) == 1.5


def test_stragglers_wait_fixed_plus_slowdown() -> None:
    config = LatencyConfig("stragglers", 0.5, straggler_slowdown=3.0, num_stragglers=1)
    assert delay(config, is_straggler=True, compute=2.0) == pytest.approx(0.5 + 2.0 * 2.0)
    assert delay(config, is_straggler=False, compute=2.0) == 0.0
    no_slowdown = LatencyConfig("stragglers", 0.5)
    assert delay(no_slowdown, is_straggler=True, compute=9.0) == 0.5


def test_exponential_draws_with_the_given_mean() -> None:
    config = LatencyConfig("exponential", 2.0)
    assert delay(config) == np.random.default_rng(0).exponential(2.0)
    rng = np.random.default_rng(1)
    draws = [delay(config, compute=0.0, rng=rng) for _ in range(20_000)]
    assert np.mean(draws) == pytest.approx(2.0, rel=0.05) and min(draws) >= 0.0


def test_log_normal_has_the_given_median_and_a_heavy_tail() -> None:
    config = LatencyConfig("log-normal", 2.0, latency_sigma=1.0)
    assert delay(config) == pytest.approx(2.0 * np.exp(np.random.default_rng(0).normal()))
    rng = np.random.default_rng(7)
    draws = np.array([delay(config, rng=rng) for _ in range(20_000)])
    assert np.median(draws) == pytest.approx(2.0, rel=0.05)
    assert np.mean(draws) == pytest.approx(2.0 * np.exp(0.5), rel=0.05)  # mean = median e^(s²/2)
    assert np.quantile(draws, 0.95) == pytest.approx(2.0 * np.exp(1.645), rel=0.1)
    assert draws.min() > 0.0
    no_spread = LatencyConfig("log-normal", 2.0, latency_sigma=0.0)
    assert delay(no_spread, rng=rng) == 2.0


def test_profile_gives_fixed_per_node_delays() -> None:
    config = LatencyConfig.from_run_config(
        run_config(latency_model="profile", latency_profile="0:0.5, 3:2"), num_partitions=4
    )
    assert config.profile == {0: 0.5, 3: 2.0}
    assert [delay(config, partition_id=p) for p in range(4)] == [0.5, 0.0, 0.0, 2.0]
    # The delay is fixed: not drawn, the same every round.
    assert delay(config, partition_id=3, rng=np.random.default_rng(99)) == 2.0


def test_node_config_latency_seconds_overrides_for_that_node() -> None:
    node = {"partition-id": 3, "num-partitions": 4, "latency-seconds": 0.25}
    profile = LatencyConfig.from_run_config(
        run_config(latency_model="profile", latency_profile="3:2.0"), node
    )
    assert delay(profile, partition_id=3) == 0.25
    constant = LatencyConfig.from_run_config(run_config(latency_model="constant"), node)
    assert delay(constant, partition_id=3) == 0.25
    assert delay(LatencyConfig.from_run_config(run_config(latency_model="constant"))) == 3.0
    with pytest.raises(ValueError, match="node config 'latency-seconds' must be a number"):
        LatencyConfig.from_run_config(run_config(), {"latency-seconds": "fast"})
    with pytest.raises(ValueError, match="node config 'latency-seconds' must be"):
        LatencyConfig.from_run_config(run_config(), {"latency-seconds": -1.0})


def test_parse_latency_profile() -> None:
    assert parse_latency_profile("") == {}
    assert parse_latency_profile(" 1:0 ,2:1.5,") == {1: 0.0, 2: 1.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-0.5", "'0-0.5' is not partition:seconds"),
        ("a:1", "is not partition:seconds"),
        ("0:fast", "is not partition:seconds"),
        ("0:1,0:2", "partition 0 twice"),
        ("4:1", r"partition 4, but partition ids are 0\.\.3"),
        ("-1:1", "partition -1"),
        ("1:-0.5", "finite number of seconds >= 0"),
        ("1:inf", "finite number of seconds >= 0"),
    ],
)
def test_bad_latency_profile(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_latency_profile(text, num_partitions=4)


def test_dotted_path_model_is_resolved_and_used() -> None:
    from examples.custom_latency import ramp_latency

    config = LatencyConfig.from_run_config(
        run_config(latency_model="examples.custom_latency:ramp_latency", latency_seconds=2.0)
    )
    assert config.model is ramp_latency
    assert delay(config, partition_id=0, num_partitions=5) == 0.0
    last = delay(config, partition_id=4, num_partitions=5)
    assert 1.8 <= last <= 2.2  # the full latency-seconds, +- 10% jitter
    middle = delay(config, partition_id=2, num_partitions=5)
    assert 0.9 <= middle <= 1.1
    # Its own run-config key, validated by clients.run_config.read_as.
    exact = LatencyConfig.from_run_config(
        run_config(
            latency_model="examples.custom_latency:ramp_latency",
            latency_seconds=2.0,
            ramp_jitter=0.0,
        )
    )
    assert delay(exact, partition_id=2, num_partitions=5) == 1.0
    bad = LatencyConfig.from_run_config(
        run_config(latency_model="examples.custom_latency:ramp_latency", ramp_jitter="x")
    )
    with pytest.raises(ValueError, match="'ramp-jitter' must be a number"):
        delay(bad)


def test_a_model_returning_a_bad_delay_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import clients.latency as latency

    for bad in (-1.0, float("nan"), "1", None):
        monkeypatch.setitem(latency.LATENCY_MODELS, "bad", lambda context, bad=bad: bad)
        with pytest.raises(ValueError, match=r"latency-model 'bad' returned .* finite number"):
            delay(LatencyConfig("bad"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency_model": "gamma"}, "unknown latency-model 'gamma'.*dotted path"),
        ({"latency_model": "no_such_module:fn"}, "cannot import module 'no_such_module'"),
        ({"latency_model": "examples.custom_latency:nope"}, "has no 'nope'"),
        ({"latency_seconds": -0.1}, "latency-seconds"),
        ({"latency_seconds": float("inf")}, "latency-seconds"),
        ({"straggler_slowdown": 0.5}, "straggler-slowdown"),
        ({"num_stragglers": -1}, "num-stragglers"),
        ({"num_stragglers": True}, "num-stragglers"),
        ({"latency_sigma": -1.0}, "latency-sigma"),
        ({"latency_profile": ((0, 1.0), (0, 2.0))}, "twice"),
        ({"latency_profile": ((0, -1.0),)}, "latency-profile entry for partition 0"),
        ({"node_latency_seconds": float("nan")}, "node config 'latency-seconds'"),
    ],
)
def test_bad_latency_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyConfig(**({"latency_model": "constant"} | kwargs))


def test_latency_config_from_run_config() -> None:
    config = run_config()
    assert LatencyConfig.from_run_config(config) == LatencyConfig("stragglers", 3.0, 1.0, 2)
    with pytest.raises(ValueError, match="'latency-seconds' must be a number"):
        LatencyConfig.from_run_config(config | {"latency-seconds": "3s"})
    with pytest.raises(ValueError, match="'latency-profile' must be a string"):
        LatencyConfig.from_run_config(config | {"latency-profile": 3})
    for key in ("num-stragglers", "latency-sigma", "latency-profile"):
        with pytest.raises(ValueError, match=f"missing '{key}'"):
            LatencyConfig.from_run_config({k: v for k, v in config.items() if k != key})


def test_negative_compute_time_is_rejected() -> None:
    with pytest.raises(ValueError, match="compute_seconds"):
        delay(LatencyConfig("constant", 1.0), is_straggler=False, compute=-1.0)


# --- roles ---------------------------------------------------------------------


def test_roles() -> None:
    assert byzantine_partitions(10, 3) == {0, 1, 2}
    assert straggler_partitions(10, 3) == {7, 8, 9}
    assert byzantine_partitions(4, 0) == set() and straggler_partitions(4, 0) == set()
    assert byzantine_partitions(3, 3) & straggler_partitions(3, 2) == {1, 2}  # overlap is allowed
    role = node_role(9, 10, 2, 1)
    assert (role.partition_id, role.is_byzantine, role.is_straggler) == (9, False, True)
    assert node_role(0, 1, 1, 1).is_byzantine and node_role(0, 1, 1, 1).is_straggler


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: byzantine_partitions(4, 5), r"num-byzantine-nodes must be in 0\.\.4"),
        (lambda: byzantine_partitions(4, -1), "num-byzantine-nodes"),
        (lambda: straggler_partitions(4, 5), r"num-stragglers must be in 0\.\.4"),
        (lambda: straggler_partitions(0, 0), "num-partitions must be >= 1"),
        (lambda: straggler_partitions(4, 1.0), "num-stragglers must be an integer"),
        (lambda: node_role(4, 4, 0, 0), "partition-id"),
    ],
)
def test_bad_roles(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()

"""The experiment is checked against the federation's node count before round 1.

``flwr run .`` on a fresh Flower configuration simulates 2 SuperNodes; the
default experiment (10 nodes, 2 Byzantine, 2 stragglers, DStar with f = 2) then
made both nodes Byzantine and stragglers and failed in round 1. Now it stops at
once, saying how to run more SuperNodes, and settings the server alone decides
are fitted with a warning.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from simulations.app.experiment import ExperimentConfig
from simulations.app.federation_check import (
    FederationMismatch,
    check_federation,
    fit_to_federation,
    replies_needed,
    smallest_federation,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"][
    "app"
]["config"]


def _config(**overrides: object) -> dict[str, object]:
    return {**DEFAULTS, **{key.replace("_", "-"): value for key, value in overrides.items()}}


def _fit(num_nodes: int, **overrides: object):
    config = _config(**overrides)
    return fit_to_federation(ExperimentConfig.from_run_config(config), config, num_nodes)


def _stop_message(num_nodes: int, **overrides: object) -> str:
    with pytest.raises(FederationMismatch) as raised:
        _fit(num_nodes, **overrides)
    return str(raised.value)


def test_the_default_experiment_on_flowers_default_two_supernodes_stops_with_the_command() -> None:
    message = _stop_message(2)
    assert "federation of 2 node(s)" in message
    assert "all 2 nodes are Byzantine (num-byzantine-nodes = 2)" in message
    assert "needs 5 replies a round (2f + 1 with num-byzantine = f = 2)" in message
    assert "it needs at least 5 nodes" in message
    assert 'flwr run . --federation-config "num-supernodes=10"' in message
    assert "bash scripts/simulate.sh --num-supernodes 10" in message


def test_the_default_experiment_fits_ten_nodes_without_a_warning() -> None:
    fit = _fit(10)
    assert fit.warnings == ()
    assert fit.experiment == ExperimentConfig.from_run_config(DEFAULTS)
    assert smallest_federation(fit.experiment, DEFAULTS) == 5
    assert smallest_federation(fit.experiment, DEFAULTS, quiet=True) == 10


def test_too_few_nodes_for_dstars_2f_plus_1_replies_stop() -> None:
    message = _stop_message(4, num_byzantine_nodes=1, num_stragglers=0)
    assert "needs 5 replies a round" in message and "every round would be skipped" in message
    assert "no honest node" not in message
    assert _fit(3, num_byzantine_nodes=1, num_stragglers=0, num_byzantine=1).warnings == ()


def test_min_replies_is_named_when_it_is_the_bound() -> None:
    message = _stop_message(6, num_byzantine=1, min_replies=7)
    assert "needs 7 replies a round (min-replies = 7)" in message


def test_bulyan_needs_4f_plus_3_nodes() -> None:
    assert "needs 11 replies a round (4f + 3" in _stop_message(10, strategy="bulyan")
    assert _fit(11, strategy="bulyan").warnings == ()


def test_flowers_other_strategies_need_only_an_honest_node() -> None:
    for strategy in ("fedavg", "fedavg-timeout", "fltrust", "krum", "multikrum", "fedmedian"):
        assert _fit(3, strategy=strategy).warnings == (), strategy
        assert "no honest node" in _stop_message(2, strategy=strategy), strategy


def test_role_settings_beyond_the_nodes_stop_with_the_reason() -> None:
    assert "num-byzantine-nodes must be in 0..1" in _stop_message(1)
    message = _stop_message(3, num_byzantine_nodes=0, byzantine_partitions="0,5", num_stragglers=0)
    assert "byzantine-partitions names [5]" in message and "at least 6 nodes" in message
    assert "num-stragglers = 4" in _stop_message(3, num_byzantine_nodes=0, num_stragglers=4)


def test_no_node_answering_the_roll_call_stops() -> None:
    message = _stop_message(0)
    assert "no node answered the roll call" in message
    assert "num-supernodes=10" in message


def test_a_fraction_that_makes_every_node_byzantine_fits_no_federation() -> None:
    message = _stop_message(
        5, num_byzantine_nodes=0, byzantine_fraction=1.0, strategy="fedavg", num_stragglers=0
    )
    assert "no federation size fits it" in message and "num-supernodes" not in message


def test_a_first_k_count_above_the_nodes_is_fitted_with_a_warning() -> None:
    fit = _fit(6, first_k=8, num_stragglers=0)
    assert fit.experiment.first_k == 6
    (warning,) = fit.warnings
    assert "first-k = 8 is more than the 6 nodes: using first-k = 6" in warning


def test_a_first_k_that_waits_for_stragglers_is_warned_about() -> None:
    fit = _fit(5)  # k = 0.8 x 5 = 4, raised to 2f + 1 = 5: both stragglers every round
    assert fit.experiment == ExperimentConfig.from_run_config(DEFAULTS)
    (warning,) = fit.warnings
    assert "keeps k = 5 of the 5 nodes' replies, raised to the 5 replies" in warning
    assert "waits for at least 2 of the 2 stragglers" in warning
    (warning,) = _fit(7).warnings  # k = 6: one of the stragglers is always among them
    assert "k = 6 of the 7" in warning and "at least 1 of the 2" in warning
    assert _fit(5, num_stragglers=0).warnings == ()


def test_replies_needed() -> None:
    def needed(**overrides: object) -> int:
        return replies_needed(ExperimentConfig.from_run_config(_config(**overrides)))

    assert needed() == 5
    assert needed(num_byzantine=0) == 1
    assert needed(min_replies=8) == 8
    assert needed(strategy="bulyan", num_byzantine=1) == 7
    assert needed(strategy="fedavg") == 1


def test_check_federation_logs_the_warnings_and_the_reason_to_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    experiment = ExperimentConfig.from_run_config(DEFAULTS)
    with caplog.at_level(logging.WARNING):
        assert check_federation(experiment, DEFAULTS, 10) == experiment
        assert check_federation(experiment, DEFAULTS, 5) == experiment
        with pytest.raises(FederationMismatch):
            check_federation(experiment, DEFAULTS, 2)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in levels] == [logging.WARNING, logging.ERROR]
    assert levels[0][1].startswith("federation of 5 nodes: first-k = 0.8 keeps k = 5")
    assert "num-supernodes=10" in levels[1][1]

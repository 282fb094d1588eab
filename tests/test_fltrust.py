"""FLTrust: the rule against hand-computed cases, and the strategy on a scripted grid."""

import logging
import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, RecordDict

from simulations.app.experiment import ExperimentConfig, build_strategy
from simulations.baselines.fltrust import FLTrust, fltrust_aggregate

from .fake_grid import FakeGrid, FakeNode
from .node_support import run_config
from .test_interception import missing_arrays
from .test_strategy import TARGET, _model, _reply, _start, _vector, honest, nan_sender


def test_hand_computed_two_updates() -> None:
    root = np.array([1.0, 0.0])
    # u1 along g0 (trust 1), u2 at 45 degrees (trust 1/sqrt 2); both rescaled to ||g0|| = 1.
    aggregate, trust = fltrust_aggregate([np.array([2.0, 0.0]), np.array([1.0, 1.0])], root)
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(trust, [1.0, s])
    expected = (1.0 * np.array([1.0, 0.0]) + s * np.array([s, s])) / (1.0 + s)
    np.testing.assert_allclose(aggregate, expected)
    np.testing.assert_allclose(aggregate, [0.878680, 0.292893], atol=1e-6)


def test_root_norm_sets_the_scale() -> None:
    aggregate, trust = fltrust_aggregate([np.array([0.0, 5.0])], np.array([0.0, 0.5]))
    np.testing.assert_allclose(trust, [1.0])
    np.testing.assert_allclose(aggregate, [0.0, 0.5])


def test_an_opposite_update_gets_zero_trust_and_no_say() -> None:
    root = np.array([1.0, 2.0, -1.0])
    benign = np.array([0.9, 2.1, -1.2])
    aggregate_alone, _ = fltrust_aggregate([benign], root)
    aggregate, trust = fltrust_aggregate([benign, -100.0 * root], root)
    assert trust[1] == 0.0 and trust[0] > 0.9
    np.testing.assert_allclose(aggregate, aggregate_alone)


def test_all_zero_trust_gives_the_zero_update() -> None:
    root = np.array([1.0, 0.0])
    updates = [np.array([-1.0, 0.0]), np.array([0.0, 3.0]), np.zeros(2)]  # opposite, orthogonal, 0
    aggregate, trust = fltrust_aggregate(updates, root)
    np.testing.assert_array_equal(trust, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(aggregate, [0.0, 0.0])
    aggregate, trust = fltrust_aggregate([np.array([1.0, 1.0])], np.zeros(2))  # zero root
    np.testing.assert_array_equal(trust, [0.0])
    np.testing.assert_array_equal(aggregate, [0.0, 0.0])


@pytest.mark.parametrize("factor", [1e-3, 0.5, 7.0, 1e4])
def test_scaling_a_benign_update_changes_nothing(factor: float) -> None:
    rng = np.random.default_rng(0)
    root = rng.normal(size=50)
    updates = [root + 0.3 * rng.normal(size=50) for _ in range(4)]
    reference, reference_trust = fltrust_aggregate(updates, root)
    scaled, scaled_trust = fltrust_aggregate([factor * updates[0], *updates[1:]], root)
    np.testing.assert_allclose(scaled_trust, reference_trust, rtol=1e-12)
    np.testing.assert_allclose(scaled, reference, rtol=1e-10, atol=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fltrust_aggregate([], np.ones(2))
    with pytest.raises(ValueError, match="same model"):
        fltrust_aggregate([np.ones(3)], np.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        fltrust_aggregate([np.array([1.0, np.nan])], np.ones(2))


def _root_towards_target(arrays: ArrayRecord) -> ArrayRecord:
    current = _vector(arrays)
    return _model((current + 0.5 * (TARGET - current)).astype(np.float32))


def sign_flipper(message: Message) -> RecordDict:
    current = _vector(message.content["arrays"])
    return _reply(current - 5.0 * (TARGET - current))


def crasher(message: Message) -> Error:
    return Error(code=1, reason="simulated crash")


def test_strategy_drops_malformed_replies_and_ignores_the_attacker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = {n: FakeNode(0.01, honest(n)) for n in range(1, 5)}
    nodes[5] = FakeNode(0.01, sign_flipper)
    nodes[6] = FakeNode(0.01, missing_arrays)
    nodes[7] = FakeNode(0.01, nan_sender)
    nodes[8] = FakeNode(0.01, crasher)
    strategy = FLTrust(validation_train_fn=_root_towards_target, fraction_evaluate=0.0)
    caplog.set_level(logging.INFO)
    result = _start(strategy, FakeGrid(nodes), rounds=3)  # type: ignore[arg-type]

    assert np.linalg.norm(_vector(result.arrays) - TARGET) < 0.2 * np.linalg.norm(TARGET)
    for server_round in (1, 2, 3):
        metrics = result.train_metrics_clientapp[server_round]
        assert sorted(metrics["malformed-node-ids"]) == [6, 7]  # type: ignore[arg-type]
        assert metrics["failed-node-ids"] == [8]
        assert metrics["zero-trust-node-ids"] == [5]
        assert sorted(metrics["received-node-ids"]) == [1, 2, 3, 4, 5]  # type: ignore[arg-type]
        assert metrics["num-valid"] == 5 and metrics["num-received"] == 8
        assert metrics["num-zero-trust"] == 1 and metrics["skipped"] == 0
        assert metrics["trust-min"] == 0.0 and 0.9 < metrics["trust-max"] <= 1.0  # type: ignore[operator]
        assert len(metrics["trust-scores"]) == 5  # type: ignore[arg-type]
        assert "train-loss" in metrics  # the trusted replies' client metrics
    assert "Dropped the reply of node 6" in caplog.text
    assert strategy.last_trust_scores[5] == 0.0


def test_a_failing_root_update_keeps_the_model() -> None:
    def broken(_: ArrayRecord) -> ArrayRecord:
        raise RuntimeError("no root data")

    nodes = {n: FakeNode(0.01, honest(n)) for n in range(1, 4)}
    strategy = FLTrust(validation_train_fn=broken, fraction_evaluate=0.0)
    result = _start(strategy, FakeGrid(nodes), rounds=1)  # type: ignore[arg-type]
    assert not list(result.arrays.keys())  # Flower's start sets arrays only when aggregated
    assert result.train_metrics_clientapp[1]["skipped"] == 1


def test_strategy_needs_a_root_update() -> None:
    with pytest.raises(ValueError, match="validation_train_fn"):
        FLTrust(validation_train_fn=None)  # type: ignore[arg-type]


def test_the_run_config_builds_fltrust() -> None:
    config = ExperimentConfig.from_run_config(run_config(strategy="fltrust"))
    strategy = build_strategy(config, _root_towards_target, num_nodes=5)
    assert isinstance(strategy, FLTrust)
    with pytest.raises(ValueError, match="validation_train_fn"):
        build_strategy(config, None, num_nodes=5)

"""DStar (message API) end to end against a scripted grid."""

import logging
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from dstar_flwr import DStar

from .fake_grid import FakeGrid, FakeNode

TARGET = np.linspace(-1, 1, 23).astype(np.float32)


def _model(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w": Array(vector[:20].copy()), "b": Array(vector[20:].copy())})


def _vector(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record["w"].numpy(), record["b"].numpy()])


def _reply(vector: np.ndarray, num_examples: float = 10) -> RecordDict:
    return RecordDict(
        {
            "arrays": _model(vector.astype(np.float32)),
            "metrics": MetricRecord({"train-loss": 1.0, "num-examples": num_examples}),
        }
    )


def honest(seed: int):
    rng = np.random.default_rng(seed)

    def respond(message: Message) -> RecordDict:
        if message.metadata.message_type != "train":
            return RecordDict({"metrics": MetricRecord({"eval-acc": 0.5, "num-examples": 10})})
        current = _vector(message.content["arrays"])
        step = 0.5 * (TARGET - current) + 0.01 * rng.normal(size=current.size)
        return _reply(current + step)

    return respond


def gaussian_attacker(message: Message) -> RecordDict:
    if message.metadata.message_type != "train":
        return RecordDict({"metrics": MetricRecord({"eval-acc": 0.0, "num-examples": 10})})
    current = _vector(message.content["arrays"])
    return _reply(current + 10 * np.random.default_rng().normal(size=current.size))


def nan_sender(message: Message) -> RecordDict:
    current = _vector(message.content["arrays"])
    current[3] = np.nan
    return _reply(current)


def _start(strategy: DStar, grid: FakeGrid, rounds: int = 3, timeout: float = 5.0):
    return strategy.start(
        grid=grid,
        initial_arrays=_model(np.zeros(23, np.float32)),
        num_rounds=rounds,
        timeout=timeout,
        train_config=ConfigRecord({"lr": 0.1}),
    )


def test_dstar_filters_byzantine_skips_stragglers_and_drops_malformed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = {n: FakeNode(0.02 * n, honest(n)) for n in range(1, 6)}
    nodes[6] = FakeNode(0.01, gaussian_attacker)
    nodes[7] = FakeNode(0.015, nan_sender)
    nodes[8] = FakeNode(1.5, honest(8))  # straggler
    grid = FakeGrid(nodes)
    strategy = DStar(num_byzantine=1, first_k=6, fraction_evaluate=0.0, poll_interval=0.01)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    result = _start(strategy, grid)
    elapsed = time.monotonic() - started

    final = _vector(result.arrays)
    assert np.all(np.isfinite(final))
    assert np.linalg.norm(final - TARGET) < 0.2 * np.linalg.norm(TARGET)
    for server_round in (1, 2, 3):
        metrics = result.train_metrics_clientapp[server_round]
        assert 6 in metrics["rejected-node-ids"]
        assert metrics["malformed-node-ids"] == [7]
        # The straggler is late in round 1, then busy with it: not sent more work.
        if server_round == 1:
            assert metrics["late-node-ids"] == [8] and metrics["num-sampled"] == 8
        else:
            assert metrics["late-node-ids"] == [] and metrics["num-sampled"] == 7
        assert metrics["num-accepted"] == 5
        assert metrics["round-seconds"] < 1.0
        assert metrics["skipped"] == 0
        assert "train-loss" in metrics
    assert "NaN or Inf" in caplog.text
    # Rounds did not wait for the straggler; the end-of-run drain cleared its replies.
    assert elapsed < 3 * 1.5
    assert grid.stored == 0


def test_round_is_skipped_and_model_kept_below_min_replies() -> None:
    nodes = {1: FakeNode(0.01, honest(1)), 2: FakeNode(3.0, honest(2)), 3: FakeNode(3.0, honest(3))}
    grid = FakeGrid(nodes)
    strategy = DStar(num_byzantine=1, first_k=3, fraction_evaluate=0.0, poll_interval=0.01)
    result = _start(strategy, grid, rounds=1, timeout=0.3)
    np.testing.assert_array_equal(_vector(result.arrays), np.zeros(23))
    metrics = result.train_metrics_clientapp[1]
    assert metrics["skipped"] == 1
    assert sorted(metrics["late-node-ids"]) == [2, 3]


def test_timeout_aggregates_what_arrived_when_enough() -> None:
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 4)}
    nodes[4] = FakeNode(3.0, honest(4))
    grid = FakeGrid(nodes)
    strategy = DStar(num_byzantine=1, first_k=4, fraction_evaluate=0.0, poll_interval=0.01)
    result = _start(strategy, grid, rounds=1, timeout=0.3)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["skipped"] == 0
    assert metrics["num-accepted"] >= 2
    assert metrics["late-node-ids"] == [4]


def test_validation_update_is_used_and_a_failing_hook_does_not_end_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = FakeGrid({n: FakeNode(0.01 * n, honest(n)) for n in range(1, 6)})
    calls = []

    def validation(arrays: ArrayRecord) -> ArrayRecord:
        calls.append(1)
        return _model(_vector(arrays) + 0.5 * (TARGET - _vector(arrays)))

    result = _start(DStar(num_byzantine=1, first_k=5, validation_train_fn=validation), grid, 2)
    assert len(calls) == 2
    assert np.isfinite(result.train_metrics_clientapp[1]["validation-deviation"])

    def broken(_: ArrayRecord) -> ArrayRecord:
        raise RuntimeError("no validation data")

    caplog.set_level(logging.WARNING)
    grid = FakeGrid({n: FakeNode(0.01 * n, honest(n)) for n in range(1, 6)})
    result = _start(DStar(num_byzantine=1, first_k=5, validation_train_fn=broken), grid, 1)
    assert result.train_metrics_clientapp[1]["num-accepted"] >= 3
    assert "no validation data" in caplog.text


def test_messages_carry_the_round_deadline_as_ttl() -> None:
    grid = FakeGrid({n: FakeNode(0.01, honest(n)) for n in range(1, 4)})
    _start(DStar(num_byzantine=1, first_k=3, fraction_evaluate=0.0), grid, 1, timeout=7.5)
    assert {m.metadata.ttl for m in grid.pushed} == {7.5}


def test_aggregate_train_alone_survives_malformed_replies() -> None:
    grid = FakeGrid({n: FakeNode(0.0, honest(n)) for n in range(1, 5)})
    strategy = DStar(num_byzantine=1, first_k=3)
    messages = list(
        strategy.configure_train(1, _model(np.zeros(23, np.float32)), ConfigRecord(), grid)
    )
    for index, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"id{index}"
    replies = [Message(honest(i)(m), reply_to=m) for i, m in enumerate(messages[:3])]
    replies.append(Message(RecordDict({"x": MetricRecord({"a": 1})}), reply_to=messages[3]))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.all(np.isfinite(_vector(arrays)))
    assert metrics is not None and metrics["num-malformed"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_byzantine": 2, "first_k": 4}, r"2f \+ 1 = 5"),
        ({"num_byzantine": 1, "min_replies": 2}, r"min_replies=2"),
        ({"num_byzantine": -1}, "num_byzantine"),
        ({"first_k": 2.5}, "whole count"),
        ({"threshold_factor": 0.0}, "threshold_factor"),
        ({"deviation_scale": "mean"}, "deviation_scale"),
        ({"weighting": "loss"}, "weighting"),
    ],
)
def test_bad_configuration_fails_fast(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DStar(**kwargs)


def test_fraction_k_below_2f_plus_1_fails_at_the_first_round() -> None:
    grid = FakeGrid({n: FakeNode(0.01, honest(n)) for n in range(1, 5)})
    with pytest.raises(ValueError, match="sample more nodes, raise first_k"):
        _start(DStar(num_byzantine=2, first_k=0.5, fraction_evaluate=0.0), grid, 1)


def test_busy_nodes_are_sampled_again_when_skipping_is_off() -> None:
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 5)}
    nodes[5] = FakeNode(1.0, honest(5))
    grid = FakeGrid(nodes)
    strategy = DStar(
        num_byzantine=1, first_k=4, fraction_evaluate=0.0, poll_interval=0.01, skip_busy_nodes=False
    )
    result = _start(strategy, grid, rounds=3)
    for server_round in (1, 2, 3):
        metrics = result.train_metrics_clientapp[server_round]
        assert metrics["num-sampled"] == 5
        assert metrics["late-node-ids"] == [5]
    assert grid.stored == 0


def test_validation_update_of_a_wider_dtype_is_cast_not_dropped() -> None:
    grid = FakeGrid({n: FakeNode(0.01 * n, honest(n)) for n in range(1, 5)})

    def float64_validation(arrays: ArrayRecord) -> ArrayRecord:
        vector = (_vector(arrays) + 0.5 * (TARGET - _vector(arrays))).astype(np.float64)
        return ArrayRecord({"w": Array(vector[:20].copy()), "b": Array(vector[20:].copy())})

    strategy = DStar(num_byzantine=1, first_k=4, validation_train_fn=float64_validation)
    result = _start(strategy, grid, 1)
    assert np.isfinite(result.train_metrics_clientapp[1]["validation-deviation"])


def test_too_few_idle_nodes_samples_the_busy_ones_instead_of_waiting() -> None:
    nodes = {1: FakeNode(0.01, honest(1)), 2: FakeNode(0.8, honest(2)), 3: FakeNode(0.8, honest(3))}
    strategy = DStar(num_byzantine=0, first_k=1, fraction_evaluate=0.0, poll_interval=0.01)
    started = time.monotonic()
    result = _start(strategy, FakeGrid(nodes), rounds=3)
    assert time.monotonic() - started < 10
    for server_round in (1, 2, 3):
        assert result.train_metrics_clientapp[server_round]["num-sampled"] == 3


def test_error_replies_are_counted_as_failed_not_malformed() -> None:
    from flwr.app import Error

    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 4)}
    nodes[4] = FakeNode(0.01, lambda _: Error(code=1, reason="SimulatedCrash\n  traceback ..."))
    strategy = DStar(num_byzantine=1, first_k=3, fraction_evaluate=0.0, poll_interval=0.01)
    metrics = _start(strategy, FakeGrid(nodes), rounds=1).train_metrics_clientapp[1]
    assert metrics["failed-node-ids"] == [4]
    assert metrics["malformed-node-ids"] == []
    assert metrics["num-received"] == 4


def test_a_node_has_one_vote_per_round() -> None:
    """A node that answers its one message several times is counted once."""
    strategy = DStar(num_byzantine=1, first_k=3)
    grid = FakeGrid({n: FakeNode(0.0, honest(n)) for n in (1, 2, 3)})
    messages = sorted(
        strategy.configure_train(1, _model(np.zeros(23, np.float32)), ConfigRecord(), grid),
        key=lambda m: m.metadata.dst_node_id,
    )

    def reply(value: float, message: Message) -> Message:
        return Message(
            RecordDict(
                {
                    "arrays": _model(np.full(23, value, np.float32)),
                    "metrics": MetricRecord({"num-examples": 10}),
                }
            ),
            reply_to=message,
        )

    replies = [reply(5.0, messages[0]) for _ in range(3)]
    replies += [reply(0.1, messages[1]), reply(0.2, messages[2])]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert metrics["accepted-node-ids"] == [2, 3]
    assert metrics["num-malformed"] == 2  # the two repeats
    np.testing.assert_allclose(_vector(arrays), 0.15, rtol=1e-6)

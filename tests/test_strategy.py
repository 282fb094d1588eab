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
        # The 5 honest replies, less at most one the band rejects by chance (5
        # updates in 23 dimensions: a small sample for its robust scale).
        assert metrics["num-accepted"] in (4, 5)
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


def test_fraction_k_below_2f_plus_1_is_raised_to_2f_plus_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0.5 of 6 nodes is 3, below 2f + 1 = 5: the round waits for 5 replies (it used
    to end the run with a ValueError)."""
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 6)}
    nodes[6] = FakeNode(0.5, honest(6))
    grid = FakeGrid(nodes)
    strategy = DStar(num_byzantine=2, first_k=0.5, fraction_evaluate=0.0, poll_interval=0.01)
    caplog.set_level(logging.INFO)
    metrics = _start(strategy, grid, 1).train_metrics_clientapp[1]
    assert (metrics["num-sampled"], metrics["k"], metrics["skipped"]) == (6, 5, 0)
    assert metrics["late-node-ids"] == [6]
    assert "gives k=3 of 6 sampled nodes; raised to 5" in caplog.text


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


# --- regressions ------------------------------------------------------------------


def _configured_messages(strategy: DStar, node_ids: range, kind: str = "train") -> list[Message]:
    """One message per node, with message ids, as if pushed."""
    grid = FakeGrid({n: FakeNode(0.0, honest(n)) for n in node_ids})
    if kind == "train":
        messages = list(
            strategy.configure_train(1, _model(np.zeros(23, np.float32)), ConfigRecord(), grid)
        )
    else:
        messages = [Message(RecordDict(), dst_node_id=n, message_type=kind) for n in node_ids]
    messages.sort(key=lambda m: m.metadata.dst_node_id)
    for index, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"{kind}-{index}"
    return messages


def _train_reply(message: Message, vector: np.ndarray, **metrics: float) -> Message:
    content = RecordDict(
        {"arrays": _model(vector.astype(np.float32)), "metrics": MetricRecord(metrics)}
    )
    return Message(content, reply_to=message)


@pytest.mark.parametrize(
    "weighting", [{}, {"weighting": "num-examples", "example_cap": 100.0}], ids=["uniform", "cap"]
)
def test_inflated_example_counts_get_no_more_than_a_uniform_share(weighting: dict) -> None:
    """Regression: weights were clipped at 2x the median of the accepted weights,
    the attackers' own among them, so claiming 1e9 examples bought a larger share.

    k = 10, f = 3: 7 honest replies (100 examples each) and 3 attackers sitting
    among them and claiming 1e9 examples. The attackers' share of the aggregate is
    their share of the accepted replies: 3/10 when all 10 are accepted (the filter
    decides which are; the weights must not add to it).
    """
    strategy = DStar(num_byzantine=3, first_k=10, cap_accepted=False, **weighting)
    messages = _configured_messages(strategy, range(1, 11))
    rng = np.random.default_rng(7)
    honest_vectors = [rng.normal(0.0, 0.1, 23) for _ in range(7)]
    attack = honest_vectors[0] + 0.02 * np.eye(23)[0]  # an honest-looking update
    replies = [
        _train_reply(m, v, **{"num-examples": 100})
        for m, v in zip(messages[:7], honest_vectors, strict=True)
    ]
    replies += [_train_reply(m, attack, **{"num-examples": 1e9}) for m in messages[7:]]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    accepted = metrics["accepted-node-ids"]
    attackers = [n for n in accepted if n > 7]
    assert len(attackers) == 3  # among the honest ones: the filter keeps them
    honest_mean = np.mean([honest_vectors[n - 1] for n in accepted if n <= 7], axis=0)
    direction = attack - honest_mean
    share = np.dot(_vector(arrays) - honest_mean, direction) / np.dot(direction, direction)
    uniform_share = len(attackers) / len(accepted)  # 3/10 with all 10 accepted
    assert share <= uniform_share + 1e-3
    assert share == pytest.approx(uniform_share, abs=1e-3)


def test_num_examples_weighting_needs_an_example_cap() -> None:
    with pytest.raises(ValueError, match="example_cap"):
        DStar(weighting="num-examples")
    with pytest.raises(ValueError, match="example_cap"):
        DStar(weighting="num-examples", example_cap=0.0)
    assert DStar().rule.weighting == "uniform"
    assert DStar().rule.example_weights([1.0, 1e9]) is None
    rule = DStar(weighting="num-examples", example_cap=50.0).rule
    np.testing.assert_array_equal(rule.example_weights([10, 1e9, 50]), [10.0, 50.0, 50.0])


def test_train_metrics_are_not_weighted_by_a_huge_example_claim() -> None:
    """Regression: a reply claiming 1e9 examples (and no train-loss) made the round's
    train-loss 3e-08 while every honest node reported 1.0; a hostile value is trimmed."""
    strategy = DStar(num_byzantine=1, first_k=4, cap_accepted=False)
    messages = _configured_messages(strategy, range(1, 5))
    vectors = [0.1 * TARGET + 0.01 * np.random.default_rng(n).normal(size=23) for n in range(4)]
    replies = [
        _train_reply(m, v, **{"train-loss": 1.0, "num-examples": 10})
        for m, v in zip(messages[:3], vectors[:3], strict=True)
    ]
    replies.append(_train_reply(messages[3], vectors[3], **{"num-examples": 1e9}))
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and metrics["num-accepted"] == 4
    assert metrics["train-loss"] == pytest.approx(1.0)

    replies[3] = _train_reply(messages[3], vectors[3], **{"train-loss": 1e10, "num-examples": 10})
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and metrics["train-loss"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("num_examples", "accuracy"),
    [(1e300, 0.0), (1e308, 1e10), (10, 1e10), (10, float("nan"))],
    ids=["1e300-examples", "1e308-examples", "hostile-value", "nan"],
)
def test_evaluate_metrics_stay_in_the_honest_range(num_examples: float, accuracy: float) -> None:
    """Regression: a reply claiming 1e300 examples made eval-acc 1.8e-298 (honest 0.9);
    1e308 examples with acc = 1e10 made it 1e10."""
    strategy = DStar(num_byzantine=1)
    messages = _configured_messages(strategy, range(1, 5), kind="evaluate")
    replies = [
        Message(
            RecordDict({"metrics": MetricRecord({"eval-acc": 0.9, "num-examples": 100})}),
            reply_to=m,
        )
        for m in messages[:3]
    ]
    hostile = MetricRecord({"eval-acc": accuracy, "num-examples": num_examples})
    replies.append(Message(RecordDict({"metrics": hostile}), reply_to=messages[3]))
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None
    assert metrics["eval-acc"] == pytest.approx(0.9)


def test_round_two_with_a_busy_node_raises_k_instead_of_crashing() -> None:
    """Regression: 6 nodes, f = 2, first_k = 0.8, one slow node. In round 2 only 5 nodes
    are idle; 0.8 of 5 gives k = 4, below 2f + 1 = 5, and k_for raised ValueError."""
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 6)}
    nodes[6] = FakeNode(1.0, honest(6))
    strategy = DStar(num_byzantine=2, first_k=0.8, fraction_evaluate=0.0, poll_interval=0.01)
    result = _start(strategy, FakeGrid(nodes), rounds=2)
    first, second = (result.train_metrics_clientapp[r] for r in (1, 2))
    assert (first["num-sampled"], first["k"], first["skipped"]) == (6, 5, 0)
    assert (second["num-sampled"], second["k"], second["skipped"]) == (5, 5, 0)
    assert second["num-accepted"] >= 3  # honest replies; the band keeps at least half


def test_too_few_idle_nodes_for_2f_plus_1_samples_the_busy_ones() -> None:
    """Regression: with 3 nodes, f = 1 and node 3 busy, the 2 idle nodes were sampled
    alone (the fallback compared with min_available_nodes = 2, not 2f + 1 = 3), and
    k_for then raised."""
    strategy = DStar(num_byzantine=1, first_k=0.8)
    strategy._busy_node_ids = {3}
    grid = FakeGrid({n: FakeNode(0.0, honest(n)) for n in (1, 2, 3)})
    messages = strategy.configure_train(1, _model(np.zeros(23, np.float32)), ConfigRecord(), grid)
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]


def test_a_fraction_train_that_samples_2_nodes_with_f_1_raises_the_sample() -> None:
    """Regression: 4 nodes, fraction_train = 0.5 and f = 1 sampled 2 nodes, and k_for
    raised (0.8 of 2 is 2, below 2f + 1 = 3). The sample is raised to the 3 a round
    needs, and k with it."""
    grid = FakeGrid({n: FakeNode(0.01 * n, honest(n)) for n in range(1, 5)})
    strategy = DStar(
        num_byzantine=1, first_k=0.8, fraction_train=0.5, fraction_evaluate=0.0, poll_interval=0.01
    )
    metrics = _start(strategy, grid, rounds=1).train_metrics_clientapp[1]
    assert (metrics["num-sampled"], metrics["k"], metrics["skipped"]) == (3, 3, 0)


def test_too_few_nodes_skip_the_round_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    """2 nodes and f = 1 (a round needs 3): each round waits up to its deadline for a
    third node, then is skipped with the model kept and the reason logged."""
    grid = FakeGrid({n: FakeNode(0.01, honest(n)) for n in (1, 2)})
    strategy = DStar(num_byzantine=1, first_k=0.8, fraction_evaluate=0.0, poll_interval=0.01)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    result = _start(strategy, grid, rounds=2, timeout=0.3)
    assert 0.6 <= time.monotonic() - started < 3.0
    np.testing.assert_array_equal(_vector(result.arrays), np.zeros(23))
    for server_round in (1, 2):
        metrics = result.train_metrics_clientapp[server_round]
        assert metrics["skipped"] == 1 and metrics["skipped-too-few-nodes"] == 1
        assert metrics["num-sampled"] == 2 and metrics["k"] == 0
    assert grid.pushed == []
    assert "2 nodes sampled, a round needs 3" in caplog.text


def test_a_grid_that_repeats_or_misattributes_replies_does_not_end_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a reply repeated in one pull raised KeyError; a reply claiming to come
    from node 2 but answering node 1's message was kept as node 2's, and node 2's
    genuine reply was then dropped as its second."""

    class BrokenGrid(FakeGrid):
        spoofed = False

        def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
            replies = list(super().pull_messages(message_ids))
            extra = []
            for reply in replies:
                if reply.metadata.src_node_id == 1 and not self.spoofed:
                    # Node 1 (an attacker) also answers its message in node 2's name.
                    sent = next(
                        m
                        for m in self.pushed
                        if m.metadata.message_id == reply.metadata.reply_to_message_id
                    )
                    spoof = Message(reply.content, reply_to=sent)
                    spoof.metadata.__dict__["_src_node_id"] = 2
                    extra.append(spoof)
                    self.spoofed = True
                if reply.metadata.src_node_id == 3:
                    extra.append(reply)
            return extra + replies

    nodes = {1: FakeNode(0.01, gaussian_attacker)}
    nodes.update({n: FakeNode(0.02 * n, honest(n)) for n in range(2, 6)})
    strategy = DStar(num_byzantine=1, first_k=4, fraction_evaluate=0.0, poll_interval=0.01)
    caplog.set_level(logging.INFO)
    metrics = _start(strategy, BrokenGrid(nodes), rounds=1).train_metrics_clientapp[1]
    assert sorted(metrics["accepted-node-ids"] + metrics["rejected-node-ids"]) == [1, 2, 3, 4]
    assert 2 in metrics["accepted-node-ids"] and 1 in metrics["rejected-node-ids"]
    assert metrics["malformed-node-ids"] == []
    assert "sent to node 1" in caplog.text and "repeated" in caplog.text


def test_the_rule_settings_are_taken_once_and_checked() -> None:
    from dstar_flwr import DStarLegacy, DStarRule

    rule = DStarRule(num_byzantine=2, first_k=0.8)
    assert DStar(rule=rule).rule is rule
    assert DStar(num_byzantine=2, first_k=0.8).rule == rule
    assert DStarLegacy(num_byzantine=2, first_k=0.8, fraction_evaluate=0.0).rule == rule
    with pytest.raises(ValueError, match="not both"):
        DStar(rule=rule, num_byzantine=1)
    with pytest.raises(ValueError, match=r"unknown dSTAR setting\(s\) \['num_byzantines'\]"):
        DStar(num_byzantines=2)
    with pytest.raises(TypeError, match="must be a DStarRule"):
        DStar(2)  # type: ignore[arg-type]

"""The roll call maps nodes to partitions and leaves nothing in the SuperLink's state."""

import logging
import time

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict

from simulations.app.roll_call import roll_call
from tests.fake_grid import FakeGrid, FakeNode


def _answers(partition: int, num_partitions: int = 4):
    def respond(message: Message) -> RecordDict:
        assert message.metadata.message_type == "query"
        metrics = {"partition-id": partition, "num-partitions": num_partitions}
        return RecordDict({"metrics": MetricRecord(metrics)})

    return respond


def test_every_node_that_answers_is_mapped_to_its_partition() -> None:
    grid = FakeGrid({10 + p: FakeNode(0.01 * p, _answers(p)) for p in range(4)})
    assert roll_call(grid, timeout=5.0, poll_interval=0.01) == {
        10: (0, 4),
        11: (1, 4),
        12: (2, 4),
        13: (3, 4),
    }
    assert grid.stored == 0


def test_a_node_that_answers_after_the_timeout_is_left_out_and_left_nothing_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = FakeGrid({1: FakeNode(0.0, _answers(0)), 2: FakeNode(1.0, _answers(1))})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        partitions = roll_call(grid, timeout=0.3, poll_interval=0.01)
    assert partitions == {1: (0, 4)}
    assert time.monotonic() - started < 0.9  # the slow node is not waited for
    # Its query expired with the roll call and was resolved, not left pending
    # (Flower's send_and_receive would leave it, and its late answer, stored).
    assert grid.stored == 0
    assert all(m.metadata.ttl == 0.3 for m in grid.pushed)
    assert "nodes [2] did not answer within 0 s" in caplog.text


def test_failed_and_partitionless_answers_are_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = FakeGrid(
        {
            1: FakeNode(0.0, _answers(0)),
            2: FakeNode(0.0, lambda message: Error(code=0, reason="ClientApp crashed")),
            3: FakeNode(0.0, lambda message: RecordDict({"metrics": MetricRecord({"x": 1})})),
        }
    )
    with caplog.at_level(logging.WARNING):
        assert roll_call(grid, timeout=5.0, poll_interval=0.01) == {1: (0, 4)}
    assert "ClientApp crashed" in caplog.text
    assert "node 3 answered without a partition" in caplog.text
    assert grid.stored == 0

"""First-k rounds against a scripted grid: the k earliest win, timeouts, late replies."""

import logging
import time

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from dstar_flwr.first_k import FirstKCollector, resolve_first_k
from dstar_flwr.replies import CheckedReply, ReplyStatus

from .fake_grid import FakeGrid, FakeNode


def _ok(_: Message) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"num-examples": 1})})


def _bad(_: Message) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"bad": 1})})


def _messages(grid: FakeGrid, ttl: float) -> list[Message]:
    return [
        Message(RecordDict(), dst_node_id=node_id, message_type="train", ttl=ttl)
        for node_id in grid.nodes
    ]


def _check(reply: Message) -> CheckedReply:
    if "num-examples" in reply.content["metrics"]:
        return CheckedReply(reply, ReplyStatus.VALID)
    return CheckedReply(reply, ReplyStatus.MALFORMED, "no num-examples")


def test_resolve_first_k() -> None:
    assert resolve_first_k(0.8, 10) == 8
    assert resolve_first_k(0.75, 10) == 8  # rounds up
    assert resolve_first_k(3, 10) == 3
    assert resolve_first_k(30, 10) == 10
    with pytest.raises(ValueError, match="whole count"):
        resolve_first_k(2.5, 10)
    with pytest.raises(ValueError, match="> 0"):
        resolve_first_k(0, 10)


def test_the_k_earliest_valid_replies_win_and_the_round_ends_at_the_kth() -> None:
    delays = {1: 0.6, 2: 0.05, 3: 0.25, 4: 0.15, 5: 0.9}
    grid = FakeGrid({n: FakeNode(d, _ok) for n, d in delays.items()})
    collector = FirstKCollector(grid, poll_interval=0.01)
    collected = collector.collect(
        _messages(grid, 5.0), server_round=1, k=3, timeout=5.0, check=_check
    )
    assert [r.node_id for r in collected.kept] == [2, 4, 3]
    assert collected.reached_k
    assert 0.25 <= collected.seconds < 0.5
    assert sorted(collected.late_node_ids) == [1, 5]


def test_invalid_replies_do_not_count_towards_k() -> None:
    nodes = {1: FakeNode(0.01, _bad), 2: FakeNode(0.05, _ok), 3: FakeNode(0.1, _ok)}
    grid = FakeGrid(nodes)
    collected = FirstKCollector(grid, poll_interval=0.01).collect(
        _messages(grid, 5.0), server_round=1, k=2, timeout=5.0, check=_check
    )
    assert [r.node_id for r in collected.kept] == [2, 3]
    assert [(r.node_id, r.reason) for r in collected.invalid] == [(1, "no num-examples")]


def test_timeout_closes_the_round_with_what_arrived() -> None:
    nodes = {1: FakeNode(0.02, _ok), 2: FakeNode(0.04, _ok), 3: FakeNode(2.0, _ok)}
    grid = FakeGrid(nodes)
    started = time.monotonic()
    collected = FirstKFixture(grid).collect(k=3, timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert not collected.reached_k
    assert [r.node_id for r in collected.kept] == [1, 2]
    assert collected.late_node_ids == [3]


class FirstKFixture:
    """One collector over a grid, with the messages built for each round."""

    def __init__(self, grid: FakeGrid) -> None:
        self.grid = grid
        self.collector = FirstKCollector(grid, poll_interval=0.01)
        self.round = 0

    def collect(self, k: int, timeout: float):
        self.round += 1
        return self.collector.collect(
            _messages(self.grid, timeout), server_round=self.round, k=k, timeout=timeout
        )


def test_late_replies_are_drained_not_carried_into_a_later_round() -> None:
    nodes = {1: FakeNode(0.01, _ok), 2: FakeNode(0.02, _ok), 3: FakeNode(0.3, _ok)}
    grid = FakeGrid(nodes)
    rounds = FirstKFixture(grid)
    first = rounds.collect(k=2, timeout=2.0)
    assert first.late_node_ids == [3]
    assert rounds.collector.num_pending == 1
    time.sleep(0.35)  # node 3's round-1 reply is now waiting in the grid
    second = rounds.collect(k=2, timeout=2.0)
    assert [d.node_id for d in second.drained] == [3]
    assert second.drained[0].server_round == 1 and second.drained[0].arrived
    kept_ids = {r.message.metadata.reply_to_message_id for r in second.kept}
    round_one_ids = {m.metadata.message_id for m in grid.pushed[:3]}
    assert not kept_ids & round_one_ids
    drained = rounds.collector.drain(wait=True)
    assert [d.server_round for d in drained] == [2]
    assert rounds.collector.num_pending == 0
    assert grid.stored == 0


def test_unanswered_messages_expire_and_are_cleared() -> None:
    never = FakeNode(0.0, lambda _: None)
    grid = FakeGrid({1: FakeNode(0.01, _ok), 2: FakeNode(0.01, _ok), 3: never})
    rounds = FirstKFixture(grid)
    rounds.collect(k=2, timeout=0.2)
    drained = rounds.collector.drain(wait=True, grace=1.0)
    assert [(d.node_id, d.arrived) for d in drained] == [(3, False)]
    assert grid.stored == 0


def test_error_replies_are_invalid() -> None:
    from flwr.app import Error

    grid = FakeGrid(
        {1: FakeNode(0.01, lambda _: Error(code=1, reason="boom")), 2: FakeNode(0.02, _ok)}
    )
    collected = FirstKFixture(grid).collect(k=1, timeout=1.0)
    assert [r.node_id for r in collected.kept] == [2]
    assert "boom" in collected.invalid[0].reason
    assert np.isclose(len(collected.invalid), 1)


def test_resolve_first_k_rounds_the_fraction_up_exactly() -> None:
    """Regression: ``0.55 * 100`` is 55.000000000000007 in floating point, so k was 56."""
    from fractions import Fraction
    from math import ceil

    wrong = []
    for hundredths in range(1, 100):
        fraction = hundredths / 100
        for num_sampled in range(1, 101):
            exact = max(1, min(num_sampled, ceil(Fraction(hundredths, 100) * num_sampled)))
            if resolve_first_k(fraction, num_sampled) != exact:
                wrong.append((fraction, num_sampled))
    assert wrong == []
    assert (resolve_first_k(0.55, 100), resolve_first_k(0.07, 100)) == (55, 7)
    assert resolve_first_k(0.14, 50) == 7
    assert resolve_first_k(np.float64(0.55), 100) == 55


class _OnePullGrid(FakeGrid):
    """A FakeGrid that answers nothing before ``hold`` seconds, then everything at once."""

    def __init__(self, nodes: dict[int, FakeNode], hold: float) -> None:
        super().__init__(nodes)
        self.hold = hold
        self._first_push: float | None = None

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        self._first_push = self._first_push or time.monotonic()
        return super().push_messages(messages)

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        assert self._first_push is not None
        if time.monotonic() < self._first_push + self.hold:
            return []
        return super().pull_messages(message_ids)


def test_a_back_dated_reply_does_not_jump_the_queue() -> None:
    """Regression: replies were ranked by the node's own ``created_at``.

    Node 9 replies 50 ms after nodes 1 and 2 but back-dates its reply by a second;
    all three land in one pull. The grid returns them in push order (1, 2, 9): the
    server's order, not the node's claim, decides.
    """
    nodes = {1: FakeNode(0.05, _ok), 2: FakeNode(0.05, _ok), 9: FakeNode(0.1, _ok, -1.0)}
    grid = _OnePullGrid(nodes, hold=0.2)
    collected = FirstKCollector(grid, poll_interval=0.3).collect(
        _messages(grid, 5.0), server_round=1, k=2, timeout=5.0, check=_check
    )
    assert [r.node_id for r in collected.kept] == [1, 2]
    assert collected.late_node_ids == [9]


class _RepeatingGrid(FakeGrid):
    """A Grid that breaks Flower's contract: it returns node 1's reply twice in one pull."""

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        replies = list(super().pull_messages(message_ids))
        return replies + [r for r in replies if r.metadata.src_node_id == 1]


def test_a_reply_repeated_in_one_pull_is_dropped_not_a_key_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: the second copy raised KeyError in the collector."""
    grid = _RepeatingGrid({n: FakeNode(0.01, _ok) for n in (1, 2, 3)})
    with caplog.at_level(logging.INFO):
        collected = FirstKCollector(grid, poll_interval=0.05).collect(
            _messages(grid, 5.0), server_round=1, k=3, timeout=5.0, check=_check
        )
    assert sorted(r.node_id for r in collected.kept) == [1, 2, 3]
    assert [m.metadata.src_node_id for m, _ in collected.discarded] == [1]
    assert "repeated" in collected.discarded[0][1]
    assert "repeated" in caplog.text


class _SpoofingGrid(FakeGrid):
    """A Grid that breaks Flower's contract: the first reply to node 1's message
    claims to come from node 2, and comes before node 2's own reply."""

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        replies = list(super().pull_messages(message_ids))
        for reply in replies:
            if reply.metadata.src_node_id == 1 and not getattr(self, "spoofed", False):
                reply.metadata.__dict__["_src_node_id"] = 2
                self.spoofed = True
        return replies


def test_a_reply_from_another_node_than_the_destination_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a reply from the wrong node was kept under that node and pushed out
    that node's genuine reply."""
    nodes = {1: FakeNode(0.01, _ok), 2: FakeNode(0.15, _ok), 3: FakeNode(0.05, _ok)}
    grid = _SpoofingGrid(nodes)
    with caplog.at_level(logging.INFO):
        collected = FirstKCollector(grid, poll_interval=0.01).collect(
            _messages(grid, 5.0), server_round=1, k=2, timeout=5.0, check=_check
        )
    assert [r.node_id for r in collected.kept] == [3, 2]
    assert [m.metadata.src_node_id for m, _ in collected.discarded] == [2]
    assert "sent to node 1" in collected.discarded[0][1]
    assert collected.invalid == []
    assert "sent to node 1" in caplog.text

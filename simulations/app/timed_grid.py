"""A Grid wrapper that times training rounds run through ``send_and_receive``.

Flower's built-in strategies collect a round with one ``send_and_receive`` call
and report no round time; wrapping the Grid measures it the same way for every
strategy that does so (DStar reports its own first-k round time).
"""

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class DelegatingGrid(Grid):
    """A Grid that forwards every call to ``grid``; subclasses change what they need."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped Grid."""
        return self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """Delegate to the wrapped Grid."""
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Delegate to the wrapped Grid."""
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped Grid."""
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped Grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate to the wrapped Grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate to the wrapped Grid."""
        return self.grid.send_and_receive(messages, timeout=timeout)


class TimedGrid(DelegatingGrid):
    """Delegates to ``grid``; records the seconds of each training ``send_and_receive``."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.train_round_seconds: list[float] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate to the wrapped Grid."""
        messages = list(messages)
        started = time.monotonic()
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        if messages and all(m.metadata.message_type == MessageType.TRAIN for m in messages):
            self.train_round_seconds.append(time.monotonic() - started)
        return replies

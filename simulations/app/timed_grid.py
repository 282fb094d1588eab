"""A Grid wrapper that times training rounds run through ``send_and_receive``.

Flower's built-in strategies collect a round with one ``send_and_receive`` call
and report no round time; wrapping the Grid measures it the same way for every
strategy that does so (DStar reports its own first-k round time).
"""

import time
from collections.abc import Iterable

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from dstar_flwr.delegating_grid import DelegatingGrid


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

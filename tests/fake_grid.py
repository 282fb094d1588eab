"""An in-process Grid whose nodes reply after scripted delays (wall-clock)."""

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Error, Message, RecordDict
from flwr.serverapp import Grid

# What a node sends back for a message: content, an Error, or None (never replies).
Responder = Callable[[Message], RecordDict | Error | None]


@dataclass
class FakeNode:
    """A node: its reply delay in seconds, what it replies, and how far it shifts the
    ``created_at`` it stamps on its replies (negative: back-dated)."""

    delay: float
    respond: Responder
    created_at_shift: float = 0.0


class FakeGrid(Grid):
    """A Grid with scripted nodes, tracking what stays in its 'SuperLink' state.

    A reply becomes pullable ``delay`` seconds after the push; pulling it removes
    it (as the real SuperLink does). A message whose TTL passes unanswered yields
    an expiry error reply when pulled. ``stored`` counts what is left.
    """

    def __init__(self, nodes: dict[int, FakeNode]) -> None:
        self.nodes = nodes
        self._ids = itertools.count(1)
        self._instructions: dict[str, tuple[Message, float]] = {}
        self.pulled_reply_ids: list[str] = []
        self.pushed: list[Message] = []

    # The Grid interface ------------------------------------------------------
    def set_run(self, run: object) -> None:
        """See :class:`flwr.serverapp.Grid`."""
        pass

    @property
    def run(self) -> object:
        """See :class:`flwr.serverapp.Grid`."""
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:
        """See :class:`flwr.serverapp.Grid`."""
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        """See :class:`flwr.serverapp.Grid`."""
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """See :class:`flwr.serverapp.Grid`."""
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            self._instructions[message_id] = (message, time.monotonic())
            self.pushed.append(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """See :class:`flwr.serverapp.Grid`."""
        now = time.monotonic()
        replies = []
        for message_id in list(message_ids):
            if message_id not in self._instructions:
                continue
            message, pushed_at = self._instructions[message_id]
            node = self.nodes[message.metadata.dst_node_id]
            ready = now >= pushed_at + node.delay
            expired = now >= pushed_at + message.metadata.ttl
            answer = node.respond(message) if ready and not expired else None
            if answer is None and not expired:
                continue
            if answer is None:
                reply = Message(Error(code=0, reason="message expired"), reply_to=message)
            else:
                reply = Message(answer, reply_to=message)
                reply.metadata.created_at = (
                    message.metadata.created_at + node.delay + node.created_at_shift
                )
            del self._instructions[message_id]
            self.pulled_reply_ids.append(message_id)
            replies.append(reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """See :class:`flwr.serverapp.Grid`."""
        ids = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 3600)
        replies: list[Message] = []
        while ids and time.monotonic() < end:
            pulled = list(self.pull_messages(ids))
            replies.extend(pulled)
            ids -= {m.metadata.reply_to_message_id for m in pulled}
            time.sleep(0.01)
        return replies

    # Test helpers ------------------------------------------------------------
    @property
    def stored(self) -> int:
        """Messages still held (sent but neither answered-and-pulled nor expired)."""
        return len(self._instructions)

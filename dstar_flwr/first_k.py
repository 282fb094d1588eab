"""First-k rounds on a Flower Grid: keep the first k valid replies, drain the rest.

``Grid.send_and_receive`` waits for every reply (or a timeout). dSTAR ends the
round when the k-th valid reply arrives. :class:`FirstKCollector` pushes the
round's messages, pulls replies as they come, and stops at the k-th valid one or
at the deadline. Messages whose replies did not make the cut stay *pending*:
every later pull also asks for them, so a reply that arrives later is pulled
(which removes it from the SuperLink), reported as late and discarded; it never
reaches a later round. :meth:`FirstKCollector.drain` empties what is left at
the end of a run. The messages' TTL is set to the round deadline, so the
SuperLink expires what is never answered.
"""

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from logging import INFO, WARNING

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from .replies import CheckedReply, ReplyStatus, failed_reply

ReplyCheck = Callable[[Message], CheckedReply]

# Seconds of tolerance when deciding that an error reply is a TTL expiry.
_CLOCK_SLACK = 0.05


def _unchecked(reply: Message) -> CheckedReply:
    """A reply taken as it is: failed if it is an error reply, else valid (unparsed)."""
    return failed_reply(reply) if reply.has_error() else CheckedReply(reply, ReplyStatus.VALID)


def resolve_first_k(first_k: float, num_sampled: int) -> int:
    """k for a round: a count (``first_k >= 1``) or a fraction of the sampled nodes.

    A fraction rounds up, in exact arithmetic on its decimal value (0.55 of 100 is
    55, where ``0.55 * 100`` is 55.000000000000007 in floating point); the count is
    capped at ``num_sampled``.
    """
    if first_k <= 0:
        raise ValueError(f"first-k must be > 0 (a count or a fraction), got {first_k}.")
    if first_k < 1:
        exact = Fraction(repr(float(first_k))) * num_sampled
        return max(1, min(num_sampled, math.ceil(exact)))
    if first_k != int(first_k):
        raise ValueError(
            f"first-k is {first_k}: give a whole count (>= 1) or a fraction in (0, 1)."
        )
    return min(int(first_k), num_sampled)


@dataclass
class LateReply:
    """A reply that arrived after its round was closed, or never arrived."""

    server_round: int
    node_id: int
    arrived: bool


@dataclass
class CollectedRound:
    """What one first-k round received.

    Attributes
    ----------
    kept : list[CheckedReply]
        The first k valid replies, in the order the server received them (pull
        after pull; within one pull, in the order the Grid returned them), each
        with what the check parsed from it.
    invalid : list[CheckedReply]
        Error replies and replies the check refused, with the reason.
    discarded : list[tuple[Message, str]]
        Replies that break Flower's contract, with the reason: a repeat of a reply
        already received, or a reply whose sender is not the node its message went
        to. They are never aggregated, and the message stays open for its node.
    late_node_ids : list[int]
        Sampled nodes whose reply was not kept because the round had closed
        (not yet arrived, or arrived after the k-th valid reply).
    drained : list[LateReply]
        Late replies of earlier rounds pulled and discarded during this round.
    num_sampled : int
        Messages pushed.
    seconds : float
        From the push to the close of the round.
    reached_k : bool
        Whether the k-th valid reply arrived before the deadline.
    """

    kept: list[CheckedReply] = field(default_factory=list)
    invalid: list[CheckedReply] = field(default_factory=list)
    discarded: list[tuple[Message, str]] = field(default_factory=list)
    late_node_ids: list[int] = field(default_factory=list)
    drained: list[LateReply] = field(default_factory=list)
    num_sampled: int = 0
    seconds: float = 0.0
    reached_k: bool = False


@dataclass
class _Pending:
    server_round: int
    node_id: int
    expires_at: float


def _contract_breach(reply: Message, outstanding: dict[str, int]) -> str | None:
    """Why a reply to a message of the current round breaks Flower's contract, or None.

    Flower's Grid returns each reply once, from the node its message went to; a
    Grid that does otherwise must not crash the round nor let one node's reply
    stand in for another's. Error replies are exempt from the sender check: the
    SuperLink sends them on a node's behalf (expired message, node unavailable)
    under its own id, and they are never aggregated.
    """
    message_id = reply.metadata.reply_to_message_id
    if message_id not in outstanding:
        return f"a repeated reply to message {message_id} (its reply was already received)"
    node_id = outstanding[message_id]
    if not reply.has_error() and reply.metadata.src_node_id != node_id:
        return (
            f"a reply from node {reply.metadata.src_node_id} to the message sent to "
            f"node {node_id} (invalid: a reply must come from its message's destination)"
        )
    return None


def _expired(reply: Message, expires_at: float) -> bool:
    """Whether ``reply`` is the SuperLink's error for a message whose TTL ran out.

    The TTL equals the round deadline, so such a node is late, not faulty.
    """
    return reply.has_error() and time.time() >= expires_at - _CLOCK_SLACK


class FirstKCollector:
    """Runs first-k rounds on a Grid and keeps late replies out of later rounds.

    Parameters
    ----------
    grid : Grid
        The Grid to push to and pull from.
    poll_interval : float (default: 0.05)
        Seconds between pulls.
    """

    def __init__(self, grid: Grid, poll_interval: float = 0.05) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}.")
        self.grid = grid
        self.poll_interval = poll_interval
        self._pending: dict[str, _Pending] = {}

    @property
    def num_pending(self) -> int:
        """Messages of closed rounds whose replies have not been pulled yet."""
        return len(self._pending)

    def busy_node_ids(self) -> set[int]:
        """Nodes with a message of a closed round that is neither answered nor expired."""
        now = time.time()
        return {p.node_id for p in self._pending.values() if p.expires_at > now}

    # pylint: disable=too-many-locals,too-many-branches
    def collect(
        self,
        messages: Iterable[Message],
        *,
        server_round: int,
        k: int,
        timeout: float,
        check: ReplyCheck | None = None,
    ) -> CollectedRound:
        """Push ``messages`` and return once k valid replies are in or at the deadline.

        Parameters
        ----------
        messages : Iterable[Message]
            The round's messages (their TTL should not exceed ``timeout``).
        server_round : int
            The round, for the late-reply report.
        k : int
            Valid replies after which the round closes.
        timeout : float
            Seconds after the push at which the round closes regardless.
        check : Callable[[Message], CheckedReply], optional
            Checks (and parses) a reply once; a reply it does not find valid
            does not count towards k. None: every reply that is not an error
            is kept, unparsed.

        Returns
        -------
        CollectedRound
            The kept replies in arrival order and the round's bookkeeping.
        """
        messages = list(messages)
        result = CollectedRound(num_sampled=len(messages))
        started = time.monotonic()
        message_ids = list(self.grid.push_messages(messages))
        outstanding: dict[str, int] = {}
        expires_at: dict[str, float] = {}
        for index, message in enumerate(messages):
            message_id = message_ids[index] if index < len(message_ids) else None
            if message_id:
                outstanding[message_id] = message.metadata.dst_node_id
                expires_at[message_id] = message.metadata.created_at + message.metadata.ttl
            else:
                log(
                    WARNING,
                    "first-k: the message to node %s could not be pushed",
                    message.metadata.dst_node_id,
                )

        deadline = started + timeout
        while True:
            pulled = list(self.grid.pull_messages([*outstanding, *self._pending]))
            result.drained.extend(self._resolve_pending(pulled))
            # Arrival order is what the server observed: the node's own created_at
            # is its claim, and a back-dated reply must not jump the queue.
            for reply in pulled:
                message_id = reply.metadata.reply_to_message_id
                if message_id not in outstanding and message_id not in expires_at:
                    continue  # a reply of an earlier round: drained above
                reason = _contract_breach(reply, outstanding)
                if reason is not None:
                    result.discarded.append((reply, reason))
                    log(WARNING, "first-k: discarded a reply: %s", reason)
                    continue
                node_id = outstanding.pop(message_id)
                if len(result.kept) >= k or _expired(reply, expires_at[message_id]):
                    result.late_node_ids.append(node_id)
                    continue
                checked = (check or _unchecked)(reply)
                if checked.is_valid:
                    result.kept.append(checked)
                else:
                    result.invalid.append(checked)
            if len(result.kept) >= k:
                result.reached_k = True
                break
            if not outstanding or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)

        result.seconds = time.monotonic() - started
        now = time.time()
        for message_id, node_id in outstanding.items():
            result.late_node_ids.append(node_id)
            self._pending[message_id] = _Pending(server_round, node_id, now + timeout)
        return result

    def _resolve_pending(self, pulled: list[Message]) -> list[LateReply]:
        drained = []
        for reply in pulled:
            pending = self._pending.get(reply.metadata.reply_to_message_id)
            if pending is None:
                continue
            if not reply.has_error() and reply.metadata.src_node_id != pending.node_id:
                log(
                    WARNING,
                    "first-k: discarded a reply from node %s to the round-%s message sent "
                    "to node %s (invalid: a reply must come from its message's destination)",
                    reply.metadata.src_node_id,
                    pending.server_round,
                    pending.node_id,
                )
                continue
            del self._pending[reply.metadata.reply_to_message_id]
            # An error reply here is the SuperLink expiring an unanswered message.
            arrived = not reply.has_error()
            drained.append(LateReply(pending.server_round, pending.node_id, arrived))
            if arrived:
                log(
                    INFO,
                    "first-k: discarded the late reply of node %s from round %s",
                    pending.node_id,
                    pending.server_round,
                )
        return drained

    def drain(self, wait: bool = True, grace: float = 5.0) -> list[LateReply]:
        """Pull the pending messages' replies and discard them.

        Parameters
        ----------
        wait : bool (default: True)
            Keep pulling until every pending message has a reply or has expired
            (its TTL) plus ``grace`` seconds; False pulls once.
        grace : float (default: 5.0)
            Seconds past the last TTL to keep trying.

        Returns
        -------
        list[LateReply]
            The late replies resolved by this call.
        """
        drained: list[LateReply] = []
        give_up_at = max((p.expires_at for p in self._pending.values()), default=0) + grace
        while self._pending:
            pulled = list(self.grid.pull_messages(list(self._pending)))
            drained.extend(self._resolve_pending(pulled))
            if not wait or not self._pending or time.time() >= give_up_at:
                break
            time.sleep(self.poll_interval)
        if self._pending:
            log(
                WARNING,
                "first-k: %s late messages still unresolved (nodes %s); the SuperLink "
                "drops them when their TTL expires",
                len(self._pending),
                sorted({p.node_id for p in self._pending.values()}),
            )
        return drained

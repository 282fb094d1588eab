"""One check per training reply: valid (with its parsed update), malformed or failed.

Every consumer of a round's replies (the first-k collector, DStar and
DStarLegacy, the malformed-reply guard in front of Flower's strategies, and the
reply transforms of simulations) reads a reply through :func:`check_train_reply`
once and hands the :class:`CheckedReply` on: the arrays are decoded and
flattened a single time, and every consumer drops the same replies for the same
reason.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.supercore import log
from numpy.typing import NDArray

from .records import (
    DEFAULT_MAX_NUM_EXAMPLES,
    NON_FINITE_REASON,
    ArrayLayout,
    MalformedReply,
    TrainReply,
    conform_to_layout,
    parse_train_reply,
    unflatten_vector,
)


class ReplyStatus(Enum):
    """What a training reply is to the aggregation."""

    VALID = "valid"
    """Well-formed: its flat weights and example count are parsed."""
    MALFORMED = "malformed"
    """A reply that cannot be aggregated (wrong arrays, NaN, an absurd count, ...)."""
    FAILED = "failed"
    """An error reply: the node (or the SuperLink on its behalf) reported a failure."""


@dataclass(frozen=True)
class CheckedReply:
    """A training reply with the verdict of its one check.

    Attributes
    ----------
    message : Message
        The reply as the Grid returned it (or as a transform rewrote it).
    status : ReplyStatus
        Valid, malformed or failed.
    reason : str
        Why a malformed or failed reply cannot be aggregated ("" when valid).
    parsed : TrainReply | None
        A valid reply's flat weights, example count and metrics; None otherwise.
    """

    message: Message
    status: ReplyStatus
    reason: str = ""
    parsed: TrainReply | None = None

    @property
    def node_id(self) -> int:
        """The replying node."""
        return int(self.message.metadata.src_node_id)

    @property
    def is_valid(self) -> bool:
        """Whether the reply can be aggregated."""
        return self.status is ReplyStatus.VALID

    @property
    def weights(self) -> NDArray[np.floating]:
        """A valid reply's flat weights."""
        if self.parsed is None:
            raise ValueError(f"the reply of node {self.node_id} is {self.status.value}")
        return self.parsed.weights

    def with_weights(self, weights: NDArray[np.floating], layout: ArrayLayout) -> "CheckedReply":
        """This reply with its arrays replaced by ``weights`` (trusted, already flat).

        The message's content gets the new arrays (so that a strategy reading
        the message sees them) and the parsed form is built from the vector
        itself, without decoding the new arrays again. Its example count and
        metrics stay the reply's own.
        """
        if self.parsed is None:
            raise ValueError(f"the reply of node {self.node_id} is {self.status.value}")
        vector = np.asarray(weights, dtype=layout.vector_dtype)
        self.message.content = _with_arrays(self.message.content, unflatten_vector(vector, layout))
        if not np.all(np.isfinite(vector)):
            # What the check would say of these arrays: the reply can no longer be aggregated.
            return replace(
                self, status=ReplyStatus.MALFORMED, reason=NON_FINITE_REASON, parsed=None
            )
        parsed = TrainReply(
            weights=conform_to_layout(vector, layout),
            num_examples=self.parsed.num_examples,
            metrics=self.parsed.metrics,
        )
        return replace(self, parsed=parsed)


def failed_reply(message: Message) -> CheckedReply:
    """An error reply, with the error's reason."""
    return CheckedReply(message, ReplyStatus.FAILED, f"error reply: {message.error.reason}")


def check_train_reply(
    message: Message,
    layout: ArrayLayout,
    *,
    weighted_by_key: str = "num-examples",
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
) -> CheckedReply:
    """Check and parse one training reply against the global model's layout.

    Parameters
    ----------
    message : Message
        The reply.
    layout : ArrayLayout
        The layout of the global arrays the node trained from.
    weighted_by_key : str (default: "num-examples")
        The MetricRecord key holding the example count.
    max_num_examples : float (default: 1e9)
        Larger example counts are refused as absurd.

    Returns
    -------
    CheckedReply
        Failed for an error reply; malformed with the reason
        :func:`~dstar_flwr.records.parse_train_reply` gives; else valid, with
        the parsed reply.
    """
    if message.has_error():
        return failed_reply(message)
    try:
        parsed = parse_train_reply(
            message.content,
            layout,
            weighted_by_key=weighted_by_key,
            max_num_examples=max_num_examples,
        )
    except MalformedReply as error:
        return CheckedReply(message, ReplyStatus.MALFORMED, str(error))
    return CheckedReply(message, ReplyStatus.VALID, parsed=parsed)


def check_train_replies(
    messages: Iterable[Message],
    layout: ArrayLayout,
    *,
    weighted_by_key: str = "num-examples",
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
) -> list[CheckedReply]:
    """:func:`check_train_reply` for each of ``messages``, in order."""
    return [
        check_train_reply(
            message, layout, weighted_by_key=weighted_by_key, max_num_examples=max_num_examples
        )
        for message in messages
    ]


def one_vote_per_node(replies: list[CheckedReply]) -> list[CheckedReply]:
    """``replies`` with every reply after a node's first marked malformed.

    A node has one vote per round; the first of its replies (in arrival order)
    is the one considered.
    """
    seen: set[int] = set()
    voted = []
    for reply in replies:
        if reply.node_id in seen:
            reply = replace(
                reply,
                status=ReplyStatus.MALFORMED,
                reason="a second reply from this node in the round (one vote per node)",
                parsed=None,
            )
        seen.add(reply.node_id)
        voted.append(reply)
    return voted


def log_dropped(reply: CheckedReply) -> None:
    """Log why a reply is not aggregated (error reasons are shortened to one line)."""
    if reply.status is ReplyStatus.FAILED:
        log(INFO, "\t> Node %s failed: %s", reply.node_id, short_reason(reply.reason))
    elif reply.status is ReplyStatus.MALFORMED:
        log(INFO, "\t> Dropped the reply of node %s: %s", reply.node_id, reply.reason)


def short_reason(reason: str, limit: int = 200) -> str:
    """A one-line, bounded form of an error reason (ClientApp tracebacks are long)."""
    line = " ".join(reason.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _with_arrays(content: RecordDict, arrays: ArrayRecord) -> RecordDict:
    """``content`` with its (only) ArrayRecord replaced by ``arrays``."""
    replaced = RecordDict()
    for key, record in content.items():
        replaced[key] = arrays if isinstance(record, ArrayRecord) else record
    return replaced

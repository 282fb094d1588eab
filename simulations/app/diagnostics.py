"""Per-round resilience diagnostics of a simulation (the honest set is known there).

(alpha, f)-Byzantine resilience (Blanchard et al., 2017) asks that the aggregate
``F`` point along the true gradient whatever the Byzantine inputs are. In a
simulation the honest replies are known, so every round measures, against the
mean ``g_H`` of the honest updates that reached the aggregator:

- ``cosine_to_honest`` = cos(F, g_H),
- ``rho`` = <F, g_H> / ||g_H||^2 (1: the honest mean's progress, <= 0: none),
- ``relative_error`` = ||F - g_H|| / ||g_H||,

and, for a strategy that rejects replies, the filter's precision and recall on
the Byzantine replies it received (:func:`filter_precision_recall`).

:class:`HonestMeanProbe` is a reply transform (see
:mod:`dstar_flwr.interception`) that runs last, after the omniscient attack and
the malformed-reply guard: the replies it sees are those the strategy
aggregates, so ``g_H`` is the mean over the honest ones among them. It returns
the replies unchanged. The aggregate of a round is the new global model minus
the one the round started from (zero for a skipped round):
:meth:`HonestMeanProbe.resilience_of` takes the new global arrays, which the
ServerApp's ``evaluate_fn`` receives every round.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message
from numpy.typing import ArrayLike, NDArray

from dstar_flwr.records import ArrayLayout, flatten_record, layout_of
from dstar_flwr.replies import CheckedReply
from simulations.app.timed_grid import TimedGrid

NAN = float("nan")
RESILIENCE_KEYS = ("cosine_to_honest", "rho", "relative_error")


def resilience(aggregate: ArrayLike, honest_mean: ArrayLike) -> dict[str, float]:
    """How well ``aggregate`` (F) follows ``honest_mean`` (g_H).

    Returns
    -------
    dict[str, float]
        ``cosine_to_honest`` (NaN when F or g_H is zero), ``rho`` and
        ``relative_error`` (NaN when g_H is zero); all NaN when an input is not
        finite.
    """
    f = np.asarray(aggregate, dtype=np.float64).ravel()
    g = np.asarray(honest_mean, dtype=np.float64).ravel()
    if f.shape != g.shape:
        raise ValueError(f"aggregate has {f.size} values, the honest mean {g.size}.")
    nan = dict.fromkeys(RESILIENCE_KEYS, NAN)
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(g))):
        return nan
    g_norm = float(np.linalg.norm(g))
    if g_norm == 0.0:
        return nan
    f_norm = float(np.linalg.norm(f))
    dot = float(np.dot(f, g))
    cosine = NAN if f_norm == 0.0 else max(-1.0, min(1.0, dot / (f_norm * g_norm)))
    return {
        "cosine_to_honest": cosine,
        "rho": dot / g_norm**2,
        "relative_error": float(np.linalg.norm(f - g)) / g_norm,
    }


def filter_precision_recall(
    received: Iterable[int], rejected: Iterable[int], byzantine: Iterable[int]
) -> tuple[float, float]:
    """A filter's precision and recall on the Byzantine replies it received.

    precision = |rejected and Byzantine| / |rejected| (NaN when nothing was
    rejected); recall = |rejected and Byzantine| / |Byzantine received| (NaN when
    no Byzantine reply was received). Only ``received`` counts.
    """
    received_set = set(received)
    rejected_set = set(rejected) & received_set
    byzantine_received = set(byzantine) & received_set
    hits = len(rejected_set & byzantine_received)
    precision = hits / len(rejected_set) if rejected_set else NAN
    recall = hits / len(byzantine_received) if byzantine_received else NAN
    return precision, recall


@dataclass
class ProbedRound:
    """What reached the aggregator in one round (node ids)."""

    server_round: int
    valid_node_ids: list[int] = field(default_factory=list)
    honest_node_ids: list[int] = field(default_factory=list)
    byzantine_node_ids: list[int] = field(default_factory=list)
    invalid_node_ids: list[int] = field(default_factory=list)


class HonestMeanProbe:
    """Measure the honest mean of the replies a strategy aggregates; change nothing.

    Parameters
    ----------
    byzantine_node_ids : Iterable[int]
        The nodes whose replies are not honest (whatever they send).

    Attributes
    ----------
    rounds : dict[int, ProbedRound]
        Per round, the node ids of the valid replies that reached the
        aggregator, split into honest and Byzantine, and of the invalid ones
        (error or malformed replies).
    """

    def __init__(
        self,
        byzantine_node_ids: Iterable[int],
    ) -> None:
        self.byzantine_node_ids = frozenset(int(n) for n in byzantine_node_ids)
        self.rounds: dict[int, ProbedRound] = {}
        self._round: int | None = None
        self._layout: ArrayLayout | None = None
        self._global_weights: NDArray[np.floating] | None = None
        # Only the latest round's vectors are kept (O(d) memory).
        self._honest_mean_round: int | None = None
        self._honest_mean: NDArray[np.float64] | None = None

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Remember the global arrays the round starts from."""
        self._round = server_round
        self._layout = layout_of(arrays)
        self._global_weights = flatten_record(arrays, self._layout)
        self._honest_mean_round = None
        self._honest_mean = None

    def transform(self, server_round: int, replies: list[CheckedReply]) -> list[CheckedReply]:
        """Record the round's honest mean update; return ``replies`` unchanged."""
        if self._layout is None or self._global_weights is None:
            raise RuntimeError("configure must run before transform.")
        probed = ProbedRound(server_round)
        total = np.zeros(self._global_weights.size, dtype=np.float64)
        for reply in replies:
            if not reply.is_valid:
                probed.invalid_node_ids.append(reply.node_id)
                continue
            probed.valid_node_ids.append(reply.node_id)
            if reply.node_id in self.byzantine_node_ids:
                probed.byzantine_node_ids.append(reply.node_id)
            else:
                probed.honest_node_ids.append(reply.node_id)
                total += reply.weights - self._global_weights
        self.rounds[server_round] = probed
        self._honest_mean_round = server_round
        count = len(probed.honest_node_ids)
        self._honest_mean = total / count if count else None
        return replies

    def honest_mean(self, server_round: int) -> NDArray[np.float64] | None:
        """The latest probed round's honest mean update (None: none or another round)."""
        return self._honest_mean if self._honest_mean_round == server_round else None

    def resilience_of(self, server_round: int, new_arrays: ArrayRecord) -> dict[str, float]:
        """:func:`resilience` of the round's aggregate, given the new global arrays.

        All NaN when the round was not probed or had no valid honest reply.
        """
        honest_mean = self.honest_mean(server_round)
        if (
            honest_mean is None
            or self._round != server_round
            or self._layout is None
            or self._global_weights is None
        ):
            return dict.fromkeys(RESILIENCE_KEYS, NAN)
        aggregate = flatten_record(new_arrays, self._layout).astype(np.float64)
        return resilience(aggregate - self._global_weights, honest_mean)


@dataclass
class TrainCall:
    """One training ``send_and_receive``: who was sent a message, who replied."""

    sent_node_ids: list[int]
    replied_node_ids: list[int]
    seconds: float

    @property
    def late_node_ids(self) -> list[int]:
        """Nodes sent a message whose reply did not come back in the call."""
        replied = set(self.replied_node_ids)
        return [n for n in self.sent_node_ids if n not in replied]


class ReplyLogGrid(TimedGrid):
    """A :class:`TimedGrid` that also records, per training round, who replied in time."""

    def __init__(self, grid: object) -> None:
        super().__init__(grid)  # type: ignore[arg-type]
        self.train_calls: list[TrainCall] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate (timed); record the training round's destinations and repliers."""
        messages = list(messages)
        calls = len(self.train_round_seconds)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if len(self.train_round_seconds) > calls:
            self.train_calls.append(
                TrainCall(
                    sent_node_ids=[int(m.metadata.dst_node_id) for m in messages],
                    replied_node_ids=[int(r.metadata.src_node_id) for r in replies],
                    seconds=self.train_round_seconds[-1],
                )
            )
        return replies

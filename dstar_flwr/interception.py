"""Run reply transforms in front of any message-API strategy's aggregation.

:class:`InterceptedStrategy` wraps a Flower strategy (DStar or any of Flower's
own) and passes every training round's replies through a list of transforms
before the wrapped strategy aggregates them; the wrapped strategy keeps its own
round logic, DStar's first-k rounds included. Two uses ship with the project:

- :class:`DropMalformedReplies` drops the replies that cannot be aggregated
  (with the reason in the log). Flower's built-in strategies exit the ServerApp
  on one such reply; behind this guard they go on.
- ``simulations.app.omniscient.OmniscientAttack`` (simulations) rewrites the Byzantine
  nodes' replies with attacks computed from all honest replies of the round.

During :meth:`InterceptedStrategy.start` the wrapper shadows the wrapped
instance's ``configure_train`` and ``aggregate_train`` with instance attributes
(the wrapped ``start`` calls them on itself) and removes them afterwards.
"""

from collections.abc import Callable, Iterable, Sequence
from logging import INFO
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from .records import DEFAULT_MAX_NUM_EXAMPLES, MalformedReply, layout_of, parse_train_reply


class ReplyTransform(Protocol):
    """Rewrites or filters a training round's replies before aggregation."""

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Learn the global arrays the round's nodes train from."""

    def transform(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Return the replies the strategy should aggregate, in arrival order."""


class DropMalformedReplies:
    """Drop error replies and replies :func:`~dstar_flwr.records.parse_train_reply` refuses.

    Parameters
    ----------
    weighted_by_key : str (default: "num-examples")
        The MetricRecord key holding the example count.
    max_num_examples : float (default: 1e9)
        Larger example counts are refused as absurd.
    """

    def __init__(
        self,
        weighted_by_key: str = "num-examples",
        max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
    ) -> None:
        self.weighted_by_key = weighted_by_key
        self.max_num_examples = max_num_examples
        self._arrays: ArrayRecord | None = None
        self.dropped_per_round: dict[int, list[int]] = {}

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Remember the global arrays to check replies against."""
        self._arrays = arrays

    def transform(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Keep the replies that can be aggregated."""
        if self._arrays is None:
            raise RuntimeError("configure must run before transform.")
        layout = layout_of(self._arrays)
        kept = []
        for reply in replies:
            reason = None
            if reply.has_error():
                reason = f"error reply: {reply.error.reason}"
            else:
                try:
                    parse_train_reply(
                        reply.content,
                        layout,
                        weighted_by_key=self.weighted_by_key,
                        max_num_examples=self.max_num_examples,
                    )
                except MalformedReply as error:
                    reason = str(error)
            if reason is None:
                kept.append(reply)
            else:
                node_id = reply.metadata.src_node_id
                self.dropped_per_round.setdefault(server_round, []).append(node_id)
                log(INFO, "\t> Dropped the reply of node %s: %s", node_id, reason)
        return kept


class InterceptedStrategy(Strategy):
    """``strategy`` with ``transforms`` applied to each round's training replies.

    Parameters
    ----------
    strategy : Strategy
        Any message-API strategy.
    transforms : Sequence[ReplyTransform]
        Applied in order to the replies of every training round.
    """

    def __init__(self, strategy: Strategy, transforms: Sequence[ReplyTransform]) -> None:
        self.strategy = strategy
        self.transforms = list(transforms)

    def summary(self) -> None:
        """Log the transforms, then the wrapped strategy's summary."""
        names = ", ".join(type(t).__name__ for t in self.transforms)
        log(INFO, "\t├──> Reply transforms before aggregation: %s", names)
        self.strategy.summary()

    def _configure(self, server_round: int, arrays: ArrayRecord) -> None:
        for transform in self.transforms:
            transform.configure(server_round, arrays)

    def _transform(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for transform in self.transforms:
            replies = transform.transform(server_round, replies)
        return replies

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Show the transforms the global arrays, then delegate."""
        self._configure(server_round, arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Transform the replies, then let the wrapped strategy aggregate them."""
        return self.strategy.aggregate_train(server_round, self._transform(server_round, replies))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        **start_kwargs: Any,
    ) -> Result:
        """Run the wrapped strategy's own ``start`` with the transforms in the loop.

        ``start_kwargs`` go to the wrapped strategy's ``start`` as they are, e.g.
        DStar's ``checkpoint_path`` and ``resume``.
        """
        inner = self.strategy
        inner_configure_train = inner.configure_train
        inner_aggregate_train = inner.aggregate_train

        def configure_train(
            server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            self._configure(server_round, arrays)
            return inner_configure_train(server_round, arrays, config, grid)

        def aggregate_train(
            server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            return inner_aggregate_train(server_round, self._transform(server_round, replies))

        inner.configure_train = configure_train  # type: ignore[method-assign]
        inner.aggregate_train = aggregate_train  # type: ignore[method-assign]
        try:
            return inner.start(
                grid=grid,
                initial_arrays=initial_arrays,
                num_rounds=num_rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=evaluate_fn,
                **start_kwargs,
            )
        finally:
            del inner.configure_train
            del inner.aggregate_train

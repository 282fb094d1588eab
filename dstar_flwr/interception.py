"""Reply transforms: rewrite or filter a round's checked replies before aggregation.

A :class:`ReplyTransform` sees a training round's replies after their one check
(:func:`~dstar_flwr.replies.check_train_reply`) and before the strategy
aggregates them. There are two ways in, both explicit:

- :class:`~dstar_flwr.DStar` takes ``reply_transforms`` and applies them itself,
  between collecting a round's first k replies and filtering them.
- :class:`InterceptedStrategy` puts them in front of any other message-API
  strategy (Flower's own ones): it runs the wrapped strategy's own ``start`` on a
  Grid that checks the training replies of each ``send_and_receive``, applies the
  transforms and returns the messages that are left. The wrapped strategy keeps
  its own round logic, and none of its methods is replaced.

:class:`DropMalformedReplies` is the transform that drops the replies that
cannot be aggregated, with the reason in the log. Flower's built-in strategies
exit the ServerApp on one such reply; behind this guard they go on.
"""

from collections.abc import Callable, Iterable, Sequence
from logging import INFO
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from .delegating_grid import DelegatingGrid
from .records import DEFAULT_MAX_NUM_EXAMPLES, layout_of
from .replies import CheckedReply, check_train_replies, log_dropped


class ReplyTransform(Protocol):
    """Rewrites or filters a training round's checked replies before aggregation."""

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Learn the global arrays the round's nodes train from."""

    def transform(self, server_round: int, replies: list[CheckedReply]) -> list[CheckedReply]:
        """Return the replies the strategy should aggregate, in arrival order."""


def configure_transforms(
    transforms: Iterable[ReplyTransform], server_round: int, arrays: ArrayRecord
) -> None:
    """Show every transform the round's global arrays."""
    for transform in transforms:
        transform.configure(server_round, arrays)


def apply_transforms(
    transforms: Iterable[ReplyTransform], server_round: int, replies: Iterable[CheckedReply]
) -> list[CheckedReply]:
    """``replies`` passed through ``transforms``, in order."""
    replies = list(replies)
    for transform in transforms:
        replies = transform.transform(server_round, replies)
    return replies


class DropMalformedReplies:
    """Drop error replies and malformed ones, logging why.

    Attributes
    ----------
    dropped_per_round : dict[int, list[int]]
        The node ids whose replies were dropped, per round.
    """

    def __init__(self) -> None:
        self.dropped_per_round: dict[int, list[int]] = {}

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Nothing to learn: the replies come checked."""

    def transform(self, server_round: int, replies: list[CheckedReply]) -> list[CheckedReply]:
        """Keep the replies that can be aggregated."""
        kept = []
        for reply in replies:
            if reply.is_valid:
                kept.append(reply)
            else:
                self.dropped_per_round.setdefault(server_round, []).append(reply.node_id)
                log_dropped(reply)
        return kept


class InterceptedStrategy(Strategy):
    """``strategy`` with ``transforms`` applied to each round's training replies.

    Parameters
    ----------
    strategy : Strategy
        A message-API strategy that collects a training round with
        ``Grid.send_and_receive`` (Flower's built-in strategies do). DStar
        collects first-k rounds itself and takes ``reply_transforms`` instead.
    transforms : Sequence[ReplyTransform]
        Applied in order to the replies of every training round.
    max_num_examples : float (default: 1e9)
        Replies claiming more examples are malformed.
    """

    def __init__(
        self,
        strategy: Strategy,
        transforms: Sequence[ReplyTransform],
        *,
        max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
    ) -> None:
        if hasattr(strategy, "reply_transforms"):
            raise TypeError(
                f"{type(strategy).__name__} applies reply transforms itself: pass them as "
                f"{type(strategy).__name__}(..., reply_transforms=[...]) instead of wrapping it."
            )
        self.strategy = strategy
        self.reply_transforms = list(transforms)
        self.max_num_examples = max_num_examples
        self.weighted_by_key: str = getattr(strategy, "weighted_by_key", "num-examples")
        self._arrays: ArrayRecord | None = None

    def summary(self) -> None:
        """Log the transforms, then the wrapped strategy's summary."""
        names = ", ".join(type(t).__name__ for t in self.reply_transforms)
        log(INFO, "\t├──> Reply transforms before aggregation: %s", names)
        self.strategy.summary()

    def check_and_transform(
        self, server_round: int, arrays: ArrayRecord, replies: Iterable[Message]
    ) -> list[Message]:
        """Check each reply once against ``arrays``, apply the transforms, keep the messages."""
        checked = check_train_replies(
            replies,
            layout_of(arrays),
            weighted_by_key=self.weighted_by_key,
            max_num_examples=self.max_num_examples,
        )
        return [
            reply.message
            for reply in apply_transforms(self.reply_transforms, server_round, checked)
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Show the transforms the global arrays, then delegate."""
        self._arrays = arrays
        configure_transforms(self.reply_transforms, server_round, arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check and transform the replies, then let the wrapped strategy aggregate them."""
        if self._arrays is None:
            raise RuntimeError("configure_train must run before aggregate_train.")
        kept = self.check_and_transform(server_round, self._arrays, replies)
        return self.strategy.aggregate_train(server_round, kept)

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
        """Run the wrapped strategy's own ``start`` on a Grid that applies the transforms.

        ``start_kwargs`` go to the wrapped strategy's ``start`` as they are.
        """
        return self.strategy.start(
            grid=_TransformingGrid(grid, self),
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            **start_kwargs,
        )


def with_reply_transforms(strategy: Strategy, transforms: Sequence[ReplyTransform]) -> Strategy:
    """``strategy`` with ``transforms`` applied to its training replies.

    A strategy that takes ``reply_transforms`` itself (DStar) gets them appended
    to its own list and is returned as it is; any other is wrapped in an
    :class:`InterceptedStrategy`.
    """
    own = getattr(strategy, "reply_transforms", None)
    if isinstance(own, list):
        own.extend(transforms)
        return strategy
    return InterceptedStrategy(strategy, transforms)


class _TransformingGrid(DelegatingGrid):
    """Delegates to ``grid``; a training ``send_and_receive`` returns transformed replies.

    The round and the global arrays come from the training messages themselves:
    Flower's strategies send the arrays under ``arrayrecord_key`` and the round
    as ``"server-round"`` in the config under ``configrecord_key``.
    """

    def __init__(self, grid: Grid, intercepted: InterceptedStrategy) -> None:
        super().__init__(grid)
        self.intercepted = intercepted
        self.arrayrecord_key: str = getattr(intercepted.strategy, "arrayrecord_key", "arrays")
        self.configrecord_key: str = getattr(intercepted.strategy, "configrecord_key", "config")
        self._train_calls = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate; check and transform the replies of a training round."""
        messages = list(messages)
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return replies
        self._train_calls += 1
        content = messages[0].content
        arrays = content.array_records.get(self.arrayrecord_key)
        if arrays is None:
            raise ValueError(
                f"the training messages carry no ArrayRecord '{self.arrayrecord_key}': "
                "reply transforms need the global arrays"
            )
        config = content.config_records.get(self.configrecord_key, ConfigRecord())
        server_round = int(config.get("server-round", self._train_calls))  # type: ignore[arg-type]
        configure_transforms(self.intercepted.reply_transforms, server_round, arrays)
        return self.intercepted.check_and_transform(server_round, arrays, replies)

"""FedAvg against a timeout: the baseline for DStar's first-k rounds."""

from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from dstar_flwr.delegating_grid import DelegatingGrid


class FedAvgTimeout(FedAvg):
    """Flower's FedAvg, except that a training round ends after ``train_timeout`` seconds.

    Under the stock ``Strategy.start`` each training round's ``send_and_receive``
    is capped at ``train_timeout`` (evaluation keeps ``start``'s ``timeout``);
    FedAvg then averages the replies that came in time (none: the model is
    kept). This is the "FedAvg against a timeout" baseline for DStar's first k.

    Honest limits: the messages carry Flower's default TTL (12 h), and nothing
    pulls a reply that comes after its round's deadline. Such a late reply stays
    in the SuperLink's state until its TTL passes or the run ends, and is never
    aggregated. A node still busy with an earlier round is sent the next round's
    message too, and works through its backlog in order, so a straggler stays
    late round after round. (DStar, by contrast, drains late replies and skips
    busy nodes.)

    Parameters
    ----------
    train_timeout : float
        Seconds a training round waits for replies.
    **kwargs
        As for :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, train_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not train_timeout > 0:
            raise ValueError(f"train_timeout must be > 0 seconds, got {train_timeout}.")
        self.train_timeout = float(train_timeout)

    def summary(self) -> None:
        """Log the training deadline, then FedAvg's summary."""
        log(
            INFO,
            "\t├──> Training round deadline: %gs (late replies are not aggregated)",
            self.train_timeout,
        )
        super().summary()

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
    ) -> Result:
        """Run FedAvg's ``start`` on a Grid whose training rounds end at the deadline."""
        return super().start(
            grid=TrainDeadlineGrid(grid, self.train_timeout),
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )


class TrainDeadlineGrid(DelegatingGrid):
    """Delegates to ``grid``; a training ``send_and_receive`` waits at most ``train_timeout``."""

    def __init__(self, grid: Grid, train_timeout: float) -> None:
        super().__init__(grid)
        self.train_timeout = train_timeout

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate, capping the timeout of a batch of training messages."""
        messages = list(messages)
        if messages and all(m.metadata.message_type == MessageType.TRAIN for m in messages):
            timeout = self.train_timeout if timeout is None else min(timeout, self.train_timeout)
        return self.grid.send_and_receive(messages, timeout=timeout)

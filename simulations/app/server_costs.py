"""What a round costs the server: CPU seconds of the ServerApp by step, and its memory.

A round's server-side work is everything the ServerApp does between two rounds'
central evaluations, apart from waiting: sampling, building and pushing the
messages, pulling and checking the replies, the aggregation rule, the report.
Waiting for replies costs no CPU, so :class:`RoundMeter` measures the CPU time
of the ServerApp's own thread (``time.thread_time``): in the simulation engine
the ServerApp is one thread of a process that also runs the engine, and its
thread time leaves the engine's work out.

Each CPU second is charged to the innermost step running when it was spent:

- ``configure``: the strategy's ``configure_train`` (sampling, the messages);
- ``reply-checks``: DStar's (and FLTrust's) ``check_reply``: each reply checked
  and decoded once;
- ``aggregate``: DStar's ``aggregate_checked`` (the rule, the report), or the
  ``aggregate_train`` of any other strategy (Flower's decode their replies there);
- ``grid``: calls to the Grid (``get_node_ids``, ``push_messages``,
  ``pull_messages``, ``send_and_receive``; polling, not the sleeps between polls);
- ``validation-update``: the server's own training for dSTAR's validation update
  (and FLTrust's root update);
- ``harness``: the experiment's measuring (the honest-mean probe, the
  malformed-reply guard in front of Flower's strategies, the checkpoint rows);
- ``evaluation``: the central evaluation on the test split;
- ``strategy``: the rest of the strategy's own code (the collection loop, the
  round's bookkeeping and logging).

``server-cpu-seconds`` of a round is ``strategy`` + ``configure`` +
``reply-checks`` + ``aggregate`` + ``grid``: the server's time outside the
clients. The resident set size of the process (Linux
``/proc/self/status``; elsewhere the peak from ``getrusage``) is read after each
round's evaluation. ``python -m simulations.benchmarks.scale`` compares them
across strategies and rounds.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from flwr.app import Message
from flwr.serverapp import Grid

from dstar_flwr.delegating_grid import DelegatingGrid
from dstar_flwr.interception import InterceptedStrategy

STRATEGY = "strategy"
CONFIGURE = "configure"
CHECKS = "reply-checks"
AGGREGATE = "aggregate"
GRID = "grid"
VALIDATION = "validation-update"
HARNESS = "harness"
EVALUATION = "evaluation"
# The server's own work, outside the clients; then what is measured beside it.
SERVER_STEPS = (STRATEGY, CONFIGURE, CHECKS, AGGREGATE, GRID)
STEPS = (*SERVER_STEPS, VALIDATION, HARNESS, EVALUATION)

F = TypeVar("F", bound=Callable[..., Any])


def rss_bytes() -> int:
    """The process's resident set size now (Linux), else its peak so far."""
    status = Path("/proc/self/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class RoundCost:
    """One round's server-side CPU seconds by step, its wall seconds and the RSS after it."""

    server_round: int
    cpu_seconds: dict[str, float]
    wall_seconds: float
    rss_bytes: int

    @property
    def server_cpu_seconds(self) -> float:
        """The strategy's own code plus its Grid calls (:data:`SERVER_STEPS`)."""
        return sum(self.cpu_seconds.get(step, 0.0) for step in SERVER_STEPS)

    def to_dict(self) -> dict[str, object]:
        """The round under kebab-case keys (the results JSON's ``server-costs``)."""
        record: dict[str, object] = {
            "server-round": self.server_round,
            "server-cpu-seconds": self.server_cpu_seconds,
        }
        for step in STEPS:
            record[f"{step}-cpu-seconds"] = self.cpu_seconds.get(step, 0.0)
        record["wall-seconds"] = self.wall_seconds
        record["rss-bytes"] = self.rss_bytes
        return record


class RoundMeter:
    """CPU seconds of the calling thread by step, closed round by round.

    Use it from one thread (the ServerApp's). Steps nest: a second is charged to
    the innermost step; outside every step it is charged to ``strategy``.

    Parameters
    ----------
    cpu_clock, wall_clock : Callable[[], float]
        The clocks (defaults: ``time.thread_time``, ``time.perf_counter``).
    rss : Callable[[], int]
        Reads the memory after a round (default: :func:`rss_bytes`).
    """

    def __init__(
        self,
        cpu_clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.perf_counter,
        rss: Callable[[], int] = rss_bytes,
    ) -> None:
        self._cpu_clock = cpu_clock
        self._wall_clock = wall_clock
        self._rss = rss
        self._stack: list[str] = []
        self._since = cpu_clock()
        self._wall_since = wall_clock()
        self._spent: dict[str, float] = {}
        self.rounds: list[RoundCost] = []

    def _charge(self) -> None:
        now = self._cpu_clock()
        step = self._stack[-1] if self._stack else STRATEGY
        self._spent[step] = self._spent.get(step, 0.0) + (now - self._since)
        self._since = now

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Charge the CPU time spent inside the block to ``name``."""
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def timed(self, name: str, function: F) -> F:
        """``function``, its CPU time charged to ``name``."""

        @wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.step(name):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def time_method(self, obj: object, method: str, name: str) -> None:
        """Charge ``obj.method``'s CPU time to ``name`` (the object stays what it is)."""
        setattr(obj, method, self.timed(name, getattr(obj, method)))

    def round_start(self) -> None:
        """Start the first round's count now (forget what was spent before)."""
        self._charge()
        self._spent = {}
        self._wall_since = self._wall_clock()

    @contextmanager
    def round_end(self, server_round: int) -> Iterator[None]:
        """Close round ``server_round`` around its central evaluation.

        What was spent since the last close is the round's; the block (the
        evaluation) is charged to ``evaluation`` and added to it, then the RSS is
        read. Round 0 (the initial evaluation) is not recorded.
        """
        self._charge()
        spent, self._spent = self._spent, {}
        with self.step(EVALUATION):
            yield
        self._charge()
        spent[EVALUATION] = spent.get(EVALUATION, 0.0) + self._spent.pop(EVALUATION, 0.0)
        wall_now = self._wall_clock()
        wall, self._wall_since = wall_now - self._wall_since, wall_now
        if server_round > 0:
            self.rounds.append(RoundCost(server_round, spent, wall, self._rss()))

    def instrument(self, strategy: object) -> None:
        """Charge ``strategy``'s steps to theirs, and the experiment's around it to ``harness``.

        The strategy's (for an :class:`~dstar_flwr.interception.InterceptedStrategy`,
        the wrapped one's) ``configure_train``, ``check_reply`` and
        ``aggregate_checked`` or ``aggregate_train``; the reply transforms (the
        probe, the omniscient adversary, the guard) and an intercepted strategy's
        reply checks for the guard (``harness``).
        """
        for transform in getattr(strategy, "reply_transforms", []):
            self.time_method(transform, "configure", HARNESS)
            self.time_method(transform, "transform", HARNESS)
        inner = strategy
        if isinstance(strategy, InterceptedStrategy):
            self.time_method(strategy, "check_and_transform", HARNESS)
            inner = strategy.strategy
        self.time_method(inner, "configure_train", CONFIGURE)
        if hasattr(inner, "check_reply"):
            self.time_method(inner, "check_reply", CHECKS)
        aggregate = (
            "aggregate_checked" if hasattr(inner, "aggregate_checked") else "aggregate_train"
        )
        self.time_method(inner, aggregate, AGGREGATE)

    def grid(self, grid: Grid) -> MeteredGrid:
        """``grid`` with its calls charged to ``grid``."""
        return MeteredGrid(grid, self)


class MeteredGrid(DelegatingGrid):
    """Delegates to ``grid``; charges every call to the meter's ``grid`` step."""

    def __init__(self, grid: Grid, meter: RoundMeter) -> None:
        super().__init__(grid)
        self.meter = meter

    def get_node_ids(self) -> Iterable[int]:
        """Delegate (metered)."""
        with self.meter.step(GRID):
            return list(self.grid.get_node_ids())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate (metered)."""
        with self.meter.step(GRID):
            return list(self.grid.push_messages(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate (metered)."""
        with self.meter.step(GRID):
            return list(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate (metered)."""
        with self.meter.step(GRID):
            return list(self.grid.send_and_receive(messages, timeout=timeout))

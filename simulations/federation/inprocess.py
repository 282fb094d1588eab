"""Run the ServerApp against ClientApp nodes that live in this process, trained in a batch.

Flower's simulation engine pays a few seconds to start Ray and a SuperLink for
every run, and trains each node's round in its own actor. A benchmark of
thousands of runs cannot afford either on two cores. :func:`run_inprocess`
runs the project's ServerApp main (:func:`simulations.app.server_app.main`,
unchanged: the strategies exactly as built for Flower's engine, the omniscient
adversary, the diagnostics and the results file) against :class:`InProcessGrid`,
a Flower ``Grid`` whose nodes are the ClientApp's own code in this process:

- query and evaluate messages go to the ClientApp's handlers
  (:mod:`clients.client_app`);
- the train messages of one push are answered together, as
  :func:`clients.client_app.train` answers each: every node's
  :func:`~clients.node.training_jobs` are trained in one batched pass
  (:func:`clients.batched_training.train_many`, the same SGD step for step),
  then :func:`~clients.node.attacked_update`, the latency model's delay, the
  reported example count and :func:`~clients.client_app.train_reply_content`.
  A node with a simulated fault that round runs
  :func:`~clients.node.run_train_round` alone.

Time is the real wall clock. A reply can be pulled once the node's compute time
plus its latency delay have passed since the push. A node's compute time is its
share of the batched pass (its SGD steps over all steps, times the pass's wall
time): nodes compute side by side without contending for the CPU, as deployed
nodes do, and the latency model's delays (seconds) dominate the pass's
milliseconds. A message whose TTL passes before its reply gets the expiry
error reply, as from a SuperLink; an unpulled reply stays until pulled.
"""

from __future__ import annotations

import itertools
import logging
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from clients.batched_training import TrainingJob, train_many
from clients.client_app import (
    evaluate,
    query,
    received_arrays,
    server_round_of,
    train_reply_content,
)
from clients.faults import Fault, fault_for_round
from clients.node import (
    TrainResult,
    attacked_update,
    load_node_data,
    reply_delay,
    reported_num_examples,
    run_train_round,
    training_jobs,
)
from clients.settings import NodeSettings
from clients.training import select_device

APP_DIR = Path(__file__).resolve().parents[2]
FIRST_NODE_ID = 1001  # node ids are partition id + this, as arbitrary as a SuperLink's

Handler = Callable[[Message, Context], Message]


def default_run_config(app_dir: Path = APP_DIR) -> dict[str, bool | float | int | str]:
    """The app's run config as ``pyproject.toml`` declares it."""
    with (app_dir / "pyproject.toml").open("rb") as stream:
        return dict(tomllib.load(stream)["tool"]["flwr"]["app"]["config"])


@dataclass
class _Pending:
    """A pushed message and, once computed, its reply and when it may be pulled."""

    message: Message
    pushed_at: float
    reply: Message | None = None
    ready_at: float = 0.0


class InProcessGrid(Grid):
    """A Flower Grid whose nodes run the ClientApp's code in this process.

    Parameters
    ----------
    run_config : Mapping
        The run config every node sees.
    num_nodes : int
        Nodes, with partition ids ``0 .. num_nodes - 1``.
    clock : callable
        Seconds, monotonic (``time.monotonic``).
    sleep : callable
        How to wait (``time.sleep``).
    """

    def __init__(
        self,
        run_config: Mapping[str, bool | float | int | str],
        num_nodes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}.")
        self.contexts = {
            FIRST_NODE_ID + partition_id: Context(
                run_id=1,
                node_id=FIRST_NODE_ID + partition_id,
                node_config={"partition-id": partition_id, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for partition_id in range(num_nodes)
        }
        self.clock = clock
        self.sleep = sleep
        self._settings: dict[int, NodeSettings] = {}
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._run: object | None = None
        self.batched_pass_seconds: list[float] = []

    # The Grid interface ------------------------------------------------------
    def set_run(self, run: object) -> None:  # type: ignore[override]
        """Remember the run (nothing else depends on it here)."""
        self._run = run

    @property
    def run(self) -> object:  # type: ignore[override]
        """The run set by :meth:`set_run`."""
        if self._run is None:
            raise RuntimeError("no run set; call set_run first")
        return self._run

    def create_message(  # type: ignore[override]
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message to one node (Flower's deprecated factory)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Every node's id."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Take the messages; compute every reply now (train messages in one batch)."""
        now = self.clock()
        ids = []
        pushed = []
        for message in messages:
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node with id {message.metadata.dst_node_id}")
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            pending = _Pending(message, now)
            self._pending[message_id] = pending
            pushed.append(pending)
            ids.append(message_id)
        batched = [
            p
            for p in pushed
            if p.message.metadata.message_type == MessageType.TRAIN and self._batchable(p.message)
        ]
        self._answer_train_batch(batched, now)
        for pending in pushed:
            if pending.reply is None:
                self._answer_alone(pending, now)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies whose time has come (earliest first), or expiry errors."""
        now = self.clock()
        ready: list[tuple[float, Message]] = []
        for message_id in list(message_ids):
            pending = self._pending.get(message_id)
            if pending is None:
                continue
            expires_at = pending.pushed_at + (pending.message.metadata.ttl or float("inf"))
            if pending.ready_at <= now and pending.ready_at <= expires_at:
                assert pending.reply is not None
                ready.append((pending.ready_at, pending.reply))
            elif expires_at <= now:
                expired = Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="message expired")
                ready.append((expires_at, Message(expired, reply_to=pending.message)))
            else:
                continue
            del self._pending[message_id]
        return [reply for _, reply in sorted(ready, key=lambda item: item[0])]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then wait for every reply or ``timeout`` seconds, whichever is first."""
        waiting = set(self.push_messages(messages))
        deadline = self.clock() + timeout if timeout is not None else float("inf")
        replies: list[Message] = []
        while waiting:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
            now = self.clock()
            if not waiting or now >= deadline:
                break
            self.sleep(max(0.0, min(self._next_event(waiting), deadline) - now))
        return replies

    # Nodes ------------------------------------------------------------------
    @property
    def stored(self) -> int:
        """Messages whose reply has not been pulled."""
        return len(self._pending)

    def settings_of(self, node_id: int) -> NodeSettings:
        """The node's settings (read from its context once)."""
        if node_id not in self._settings:
            self._settings[node_id] = NodeSettings.from_context(self.contexts[node_id])
        return self._settings[node_id]

    def _next_event(self, message_ids: Iterable[str]) -> float:
        times = []
        for message_id in message_ids:
            pending = self._pending[message_id]
            expires_at = pending.pushed_at + (pending.message.metadata.ttl or float("inf"))
            times.append(min(pending.ready_at, expires_at))
        return min(times)

    def _batchable(self, message: Message) -> bool:
        """Whether the node trains normally this round (no simulated fault)."""
        try:
            settings = self.settings_of(message.metadata.dst_node_id)
            server_round = server_round_of(message)
            received_arrays(message)
        except ValueError:
            return False  # the ClientApp handler reports it as an error reply
        fault = fault_for_round(
            settings.faults,
            seed=settings.data.seed,
            partition_id=settings.partition_id,
            server_round=server_round,
        )
        return fault is Fault.NONE

    def _answer_train_batch(self, batch: list[_Pending], started: float) -> None:
        """Train the batch's nodes together, grouped by the arrays they start from."""
        groups: dict[int, list[_Pending]] = {}
        for pending in batch:
            groups.setdefault(id(received_arrays(pending.message)), []).append(pending)
        for group in groups.values():
            self._train_group(group, started)

    def _train_group(self, group: list[_Pending], started: float) -> None:
        global_arrays: ArrayRecord = received_arrays(group[0].message)
        settings = [self.settings_of(p.message.metadata.dst_node_id) for p in group]
        rounds = [server_round_of(p.message) for p in group]
        node_jobs: list[list[TrainingJob]] = [
            training_jobs(s, r, *load_node_data(s)) for s, r in zip(settings, rounds, strict=True)
        ]
        first = settings[0]
        pass_started = self.clock()
        trained = train_many(
            global_arrays,
            first.data.dataset,
            [job for jobs in node_jobs for job in jobs],
            epochs=first.training.epochs,
            batch_size=first.training.batch_size,
            learning_rate=first.training.learning_rate,
            device=select_device(first.device),
        )
        pass_seconds = self.clock() - pass_started
        self.batched_pass_seconds.append(pass_seconds)
        steps = [
            sum(-(-len(job.y) // first.training.batch_size) for job in jobs) for jobs in node_jobs
        ]
        total_steps = max(1, sum(steps))
        position = 0
        for pending, node, server_round, jobs, node_steps in zip(
            group, settings, rounds, node_jobs, steps, strict=True
        ):
            node_trained = trained[position : position + len(jobs)]
            position += len(jobs)
            compute_seconds = pass_seconds * node_steps / total_steps
            try:
                arrays, loss = attacked_update(
                    node, global_arrays, server_round, jobs, node_trained
                )
                delay = reply_delay(node, server_round, compute_seconds)
                result = TrainResult(
                    arrays,
                    loss,
                    reported_num_examples(node, len(load_node_data(node)[1])),
                    compute_seconds,
                    delay,
                )
                content = train_reply_content(node, result, server_round)
            except Exception as error:  # noqa: BLE001 - a ClientApp exception is a reply
                pending.reply = _error_reply(pending.message, error)
                pending.ready_at = started + compute_seconds
                continue
            pending.reply = Message(content=content, reply_to=pending.message)
            pending.ready_at = started + compute_seconds + delay

    def _answer_alone(self, pending: _Pending, started: float) -> None:
        """Run the ClientApp's own handler for the message (a faulty train round too)."""
        message = pending.message
        context = self.contexts[message.metadata.dst_node_id]
        waited = 0.0

        def record_sleep(seconds: float) -> None:
            nonlocal waited
            waited += seconds

        handler: Handler = {
            MessageType.TRAIN: lambda m, c: _train_alone(m, c, self, record_sleep),
            MessageType.EVALUATE: evaluate,
            MessageType.QUERY: query,
        }.get(message.metadata.message_type, _unsupported)
        handler_started = self.clock()
        try:
            pending.reply = handler(message, context)
        except Exception as error:  # noqa: BLE001 - a ClientApp exception is a reply
            pending.reply = _error_reply(message, error)
        pending.ready_at = started + (self.clock() - handler_started) + waited


def _train_alone(
    message: Message, context: Context, grid: InProcessGrid, sleep: Callable[[float], None]
) -> Message:
    """:func:`clients.client_app.train` with the node's waits recorded, not slept."""
    settings = grid.settings_of(message.metadata.dst_node_id)
    server_round = server_round_of(message)
    result = run_train_round(settings, received_arrays(message), server_round, sleep=sleep)
    content = train_reply_content(settings, result, server_round)
    return Message(content=content, reply_to=message)


def _unsupported(message: Message, context: Context) -> Message:
    raise ValueError(f"the ClientApp has no handler for {message.metadata.message_type!r}")


def _error_reply(message: Message, error: BaseException) -> Message:
    reason = f"{type(error).__name__}: {error}"
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
    )


def run_inprocess(
    overrides: Mapping[str, object],
    *,
    num_supernodes: int = 10,
    app_dir: Path = APP_DIR,
    quiet: bool = False,
) -> Path:
    """Run one experiment in this process and return the path of its results JSON.

    Parameters
    ----------
    overrides : Mapping
        Run-config values that replace ``pyproject.toml``'s.
    num_supernodes : int
        Nodes (partitions).
    app_dir : Path
        Where ``pyproject.toml`` is; a relative ``results-dir`` is taken from here.
    quiet : bool
        Keep Flower's INFO log lines out of the output.

    Returns
    -------
    Path
        ``<results-dir>/<run-name>.json``, as the ServerApp writes it.
    """
    from simulations.app.experiment import ExperimentConfig
    from simulations.app.server_app import main

    run_config = default_run_config(app_dir)
    unknown = sorted(set(overrides) - set(run_config))
    if unknown:
        raise ValueError(f"unknown run-config keys {unknown}; see [tool.flwr.app.config]")
    run_config.update(overrides)  # type: ignore[arg-type]
    results_dir = Path(str(run_config["results-dir"]))
    if not results_dir.is_absolute():
        run_config["results-dir"] = str(app_dir / results_dir)
    experiment = ExperimentConfig.from_run_config(run_config)
    grid = InProcessGrid(run_config, num_supernodes)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.WARNING)
    # A ServerApp process has its task identity set by Flower; messages read it.
    identity = {key: getattr(TaskIdentity, f"_{key}") for key in ("run_id", "node_id", "task_id")}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        main(grid, context)
    finally:
        flwr_logger.setLevel(level)
        for key, value in identity.items():
            setattr(TaskIdentity, f"_{key}", value)
    return experiment.results_dir / f"{experiment.run_name}.json"


__all__ = ["InProcessGrid", "default_run_config", "run_inprocess"]

"""DStar: dSTAR as a Flower message-API strategy, with real first-k rounds."""

import io
import os
import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info, sample_nodes
from flwr.supercore import log
from numpy.typing import NDArray

from .checkpoint import Checkpoint, layout_differences, load_checkpoint, save_checkpoint
from .first_k import FirstKCollector, resolve_first_k
from .interception import ReplyTransform, apply_transforms, configure_transforms
from .metrics import aggregate_metrics
from .records import (
    ArrayLayout,
    MalformedReply,
    flatten_record,
    flatten_trusted,
    layout_of,
    read_num_examples,
    unflatten_vector,
)
from .replies import CheckedReply, ReplyStatus, check_train_reply, log_dropped, one_vote_per_node
from .report import AggregatedRound, RoundReport
from .rule import DStarRule

ValidationTrainFn = Callable[[ArrayRecord], ArrayRecord]
CheckpointStateFn = Callable[[int, Result], dict[str, Any]]


# pylint: disable=too-many-instance-attributes
class DStar(FedAvg):
    """dSTAR [Yan, Chaudhari, Kleinrock, 2024]: first-k, median-filtered averaging.

    Each round the strategy sends the global model to the sampled nodes, keeps
    the first k valid replies (the round ends at the k-th; later replies are
    discarded and reported as late), filters them by their deviation from the
    ensemble median of the updates and the server's validation update, and
    averages the survivors. Malformed, non-finite or error replies are dropped
    with a logged reason; they never end the run.

    Parameters
    ----------
    rule : DStarRule, optional
        The rule's settings (f, k, the filter, the weighting, ...), declared
        and checked in :class:`~dstar_flwr.rule.DStarRule`. Or pass them as
        keyword arguments (``rule_settings``), not both.
    **rule_settings
        Any field of :class:`~dstar_flwr.rule.DStarRule`, with its default
        there: ``num_byzantine`` (f, default 0), ``first_k`` (k as a count or
        fraction, default 0.8), ``min_replies``, ``variant`` ("anchored" or
        "paper"), ``max_robust_z``, ``norm_test``, ``threshold_factor``,
        ``deviation_scale``, ``center``, ``cap_accepted``,
        ``server_learning_rate``, ``weighting``, ``example_cap`` and
        ``max_num_examples``. An unknown name fails at once.
    validation_train_fn : Callable[[ArrayRecord], ArrayRecord], optional
        Runs the clients' local training from the given global arrays on the
        server's trusted validation set and returns the trained arrays; the
        strategy turns them into the validation update. None: no validation
        update.
    reply_transforms : Sequence[ReplyTransform] (default: ())
        Applied in order to each training round's checked replies before the
        filter (see :mod:`dstar_flwr.interception`); each sees the round's
        global arrays first through ``configure``.
    poll_interval : float (default: 0.05)
        Seconds between pulls while a round collects replies.
    skip_busy_nodes : bool (default: True)
        Under ``start``, do not sample a node whose message of an earlier round
        is still unanswered and unexpired: a straggler is not handed more work
        than it can do, and no backlog of instructions builds up for it. The
        price: a round may then have no sampled node beyond its k, so a node
        that dies in it holds the round until its reply, an error or the
        deadline comes.
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, \
min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key
        As in :class:`flwr.serverapp.strategy.FedAvg`. A round samples at least
        ``min_replies`` (``2f + 1``) nodes when that many are connected.
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn : Callable, optional
        As in :class:`flwr.serverapp.strategy.FedAvg`, given the accepted
        (train) or valid (evaluate) replies' contents with their own example
        claims. None (default): per metric key, the trimmed mean of
        :func:`dstar_flwr.metrics.aggregate_metrics`, with the weights of
        ``weighting``, non-finite values dropped and the ``num_byzantine``
        largest and smallest values left out.

    Notes
    -----
    ``start(..., timeout=T)`` uses ``T`` as the round deadline: messages carry
    TTL ``T``; a round that has not reached k valid replies by then is
    aggregated with what came in (at least ``min_replies``) or skipped.

    ``start(..., checkpoint_path=P)`` saves a checkpoint to ``P`` after every
    completed round; ``start(..., checkpoint_path=P, resume=True)`` continues
    after the round saved there (see :meth:`start`).
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        rule: DStarRule | None = None,
        *,
        validation_train_fn: ValidationTrainFn | None = None,
        reply_transforms: Sequence[ReplyTransform] = (),
        poll_interval: float = 0.05,
        skip_busy_nodes: bool = True,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: (Callable[[list[RecordDict], str], MetricRecord] | None) = None,
        evaluate_metrics_aggr_fn: (Callable[[list[RecordDict], str], MetricRecord] | None) = None,
        **rule_settings: Any,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.rule = DStarRule.from_settings(rule, rule_settings)
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}.")
        self.validation_train_fn = validation_train_fn
        self.reply_transforms = list(reply_transforms)
        self.poll_interval = poll_interval
        self.skip_busy_nodes = skip_busy_nodes
        # The functions the user gave (None: DStar's bounded, trimmed aggregation).
        self._user_metrics_aggr_fns = (train_metrics_aggr_fn, evaluate_metrics_aggr_fn)
        self._global_arrays: ArrayRecord | None = None
        self._global_layout: ArrayLayout | None = None
        self._message_ttl: float | None = None
        self._busy_node_ids: set[int] = set()
        self._running = False
        self.resumed_checkpoint: Checkpoint | None = None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        rule = self.rule
        log(INFO, "\t├──> dSTAR settings:")
        log(INFO, "\t│\t├── f (num_byzantine): %d", rule.num_byzantine)
        log(INFO, "\t│\t├── first-k: %g | min replies: %d", rule.first_k, rule.min_valid_replies)
        if rule.variant == "anchored":
            log(
                INFO,
                "\t│\t├── filter: anchored | max robust z: %g | norm test: %s | cap k-f: %s",
                rule.max_robust_z,
                rule.norm_test,
                bool(rule.cap_accepted),
            )
        else:
            log(
                INFO,
                "\t│\t├── filter: paper | threshold: %g x %s scale | center: %s | cap k-f: %s",
                rule.threshold_factor,
                rule.deviation_scale,
                rule.center,
                rule.cap_accepted is not False,
            )
        log(
            INFO,
            "\t│\t├── weighting: %s (example cap %s) | server lr: %g",
            rule.weighting,
            rule.example_cap,
            rule.server_learning_rate,
        )
        log(
            INFO,
            "\t│\t└── validation update: %s",
            "on" if self.validation_train_fn else "off",
        )
        super().summary()

    def _construct_messages(
        self, record: RecordDict, node_ids: list[int], message_type: str
    ) -> Iterable[Message]:
        """Construct one Message per node; TTL is the round deadline under start()."""
        return [
            Message(
                content=record,
                message_type=message_type,
                dst_node_id=node_id,
                ttl=self._message_ttl,
            )
            for node_id in node_ids
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the next round of training and remember the global arrays.

        Sampling follows FedAvg's, among the nodes that are not busy: with
        ``skip_busy_nodes``, a node whose message of an earlier round is still
        unanswered (and unexpired) is not sent another one. A round samples at
        least the ``min_replies`` (``2f + 1``) nodes it needs when that many are
        connected, the busy ones too if the idle ones are too few. Under
        :meth:`start`, when fewer are connected, it first waits up to the round
        deadline for more to connect.
        """
        self._global_arrays = arrays
        self._global_layout = layout_of(arrays)
        configure_transforms(self.reply_transforms, server_round, arrays)
        if self.fraction_train == 0.0:
            return []
        needed = self.rule.min_valid_replies
        connected = set(grid.get_node_ids())
        if self._running and len(connected) < needed:
            connected = self._wait_for_nodes(grid, needed)
        busy = (self._busy_node_ids if self.skip_busy_nodes else set()) & connected
        num_idle = len(connected) - len(busy)
        sample_size = self._train_sample_size(num_idle)
        if busy and num_idle < max(self.min_available_nodes, sample_size, needed):
            # Too few idle nodes for a round, or for Flower's sampling: waiting for
            # more would wait for the busy ones forever (their replies are only
            # pulled while a round runs).
            log(INFO, "configure_train: %s nodes busy, too few idle; sampling all", len(busy))
            busy = set()
            num_idle = len(connected)
            sample_size = self._train_sample_size(num_idle)
        node_ids, idle_node_ids = sample_nodes(
            _IdleNodesView(grid, busy),  # type: ignore[arg-type]
            self.min_available_nodes,
            sample_size,
        )
        log(
            INFO,
            "configure_train: Sampled %s nodes (out of %s idle; %s busy with an earlier round)",
            len(node_ids),
            len(idle_node_ids),
            len(busy),
        )
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def _train_sample_size(self, num_idle: int) -> int:
        """FedAvg's sample size, raised to the replies a round needs if that many are idle."""
        flower_size = max(int(num_idle * self.fraction_train), self.min_train_nodes)
        return max(flower_size, min(self.rule.min_valid_replies, num_idle))

    def _wait_for_nodes(self, grid: Grid, needed: int) -> set[int]:
        """The connected nodes, once ``needed`` are connected or the round deadline passed."""
        connected = set(grid.get_node_ids())
        deadline = time.monotonic() + (self._message_ttl or 0.0)
        log(
            INFO,
            "configure_train: %s nodes connected, a round needs %s; waiting up to %.1fs for more",
            len(connected),
            needed,
            self._message_ttl or 0.0,
        )
        while len(connected) < needed and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(max(self.poll_interval, 0.1), remaining))
            connected = set(grid.get_node_ids())
        return connected

    def check_reply(self, reply: Message) -> CheckedReply:
        """Check and parse a training reply against the round's global model, once."""
        if self._global_layout is None:
            raise RuntimeError("configure_train must run before replies are checked.")
        return check_train_reply(
            reply,
            self._global_layout,
            weighted_by_key=self.weighted_by_key,
            max_num_examples=self.rule.max_num_examples,
        )

    def _validation_weights(self) -> NDArray[np.floating] | None:
        if self.validation_train_fn is None:
            return None
        assert self._global_arrays is not None and self._global_layout is not None
        try:
            trained = self.validation_train_fn(self._global_arrays)
            return flatten_trusted(trained, self._global_layout)
        except Exception as error:  # noqa: BLE001 - a failing hook must not end the run
            log(
                WARNING,
                "dstar: validation update unavailable this round (%s: %s); filtering without it",
                type(error).__name__,
                error,
            )
            return None

    def aggregate_checked(
        self, server_round: int, replies: Iterable[CheckedReply]
    ) -> AggregatedRound:
        """Transform, filter and average a round's checked replies (in arrival order).

        The ``reply_transforms`` run first. Each node has one vote per round: a
        node's first reply is the one considered, and any later reply from it
        is dropped as malformed.

        Returns
        -------
        AggregatedRound
            The new global arrays (None: keep the model), the accepted replies'
            aggregated client metrics, and the round report.
        """
        if self._global_arrays is None or self._global_layout is None:
            raise RuntimeError("configure_train must run before aggregate_train.")
        replies = one_vote_per_node(apply_transforms(self.reply_transforms, server_round, replies))
        report = RoundReport(server_round=server_round)
        for reply in replies:
            if reply.status is ReplyStatus.FAILED:
                report.failed_node_ids.append(reply.node_id)
            elif reply.status is ReplyStatus.MALFORMED:
                report.malformed_node_ids.append(reply.node_id)
            log_dropped(reply)
        valid = [reply for reply in replies if reply.is_valid]
        node_ids = [reply.node_id for reply in valid]
        if len(valid) < self.rule.min_valid_replies:
            report.record_aggregation(node_ids, None)
            return AggregatedRound(None, None, report)

        parsed = [reply.parsed for reply in valid]
        outcome = self.rule.apply(
            flatten_record(self._global_arrays, self._global_layout),
            [reply.weights for reply in parsed],
            [reply.num_examples for reply in parsed],
            self._validation_weights(),
        )
        report.record_aggregation(node_ids, outcome.aggregation)
        assert outcome.aggregation is not None and outcome.weights is not None
        accepted = outcome.aggregation.accepted
        client_metrics = self._aggregate_client_metrics(
            [valid[i].message.content for i in accepted],
            [parsed[i].num_examples for i in accepted],
            "train",
        )
        return AggregatedRound(
            unflatten_vector(outcome.weights, self._global_layout), client_metrics, report
        )

    def _aggregate_client_metrics(
        self, contents: list[RecordDict], num_examples: list[float], kind: str
    ) -> MetricRecord | None:
        """The replies' client metrics: DStar's bounded trimmed mean, or the user's function."""
        if not contents:
            return None
        user_fn = self._user_metrics_aggr_fns[0 if kind == "train" else 1]
        try:
            if user_fn is not None:
                return user_fn(contents, self.weighted_by_key)
            return MetricRecord(
                aggregate_metrics(
                    [next(iter(content.metric_records.values())) for content in contents],
                    self.rule.example_weights(num_examples),
                    trim=self.rule.num_byzantine,
                    exclude={self.weighted_by_key},
                )
            )
        except Exception as error:  # noqa: BLE001 - client metrics are not essential
            log(WARNING, "dstar: could not aggregate client %s metrics: %s", kind, error)
            return None

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate training replies with the dSTAR rule (Flower's strategy API).

        Each reply is checked once (:meth:`check_reply`), then
        :meth:`aggregate_checked` runs. The returned MetricRecord holds the
        accepted replies' aggregated client metrics and the round report (see
        :class:`RoundReport`), which is also logged.
        """
        aggregated = self.aggregate_checked(server_round, [self.check_reply(r) for r in replies])
        report = aggregated.report
        report.num_sampled = report.k = report.num_received
        report.log()
        return aggregated.arrays, aggregated.metric_record()

    def aggregate_evaluate(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> MetricRecord | None:
        """Aggregate evaluation metrics, dropping malformed replies with a reason.

        A reply needs exactly one MetricRecord with a valid example count (as a
        training reply's, at most ``max_num_examples``). The metrics are
        aggregated as the training replies' are: with the weights of
        ``weighting``, non-finite values dropped, and per key the
        ``num_byzantine`` largest and smallest values left out.
        """
        valid: list[RecordDict] = []
        num_examples: list[float] = []
        for reply in replies:
            try:
                num_examples.append(
                    _evaluate_num_examples(reply, self.weighted_by_key, self.rule.max_num_examples)
                )
                valid.append(reply.content)
            except MalformedReply as error:
                log(
                    INFO,
                    "\t> Dropped the evaluate reply of node %s: %s",
                    reply.metadata.src_node_id,
                    error,
                )
        return self._aggregate_client_metrics(valid, num_examples, "evaluate")

    # pylint: disable=too-many-arguments,too-many-positional-arguments,too-many-locals
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        checkpoint_path: str | os.PathLike[str] | None = None,
        resume: bool = False,
        checkpoint_state_fn: CheckpointStateFn | None = None,
    ) -> Result:
        """Run ``num_rounds`` first-k rounds; ``timeout`` is each round's deadline.

        As :meth:`flwr.serverapp.strategy.Strategy.start`, except that a training
        round ends at the k-th valid reply, late replies are drained (never
        aggregated) and every round's report is in ``train_metrics_clientapp``.

        Parameters
        ----------
        grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, \
evaluate_fn
            As in :meth:`flwr.serverapp.strategy.Strategy.start`.
        checkpoint_path : str | os.PathLike[str] | None (default: None)
            Save a :class:`~dstar_flwr.checkpoint.Checkpoint` here (atomically)
            after every completed round, after its aggregation and evaluation.
            None: no checkpoints.
        resume : bool (default: False)
            Continue from the checkpoint at ``checkpoint_path``: restore its
            global arrays and Result and run rounds ``last + 1 .. num_rounds``
            (no round-0 evaluation); return the restored Result at once if
            ``last >= num_rounds``. The checkpoint's arrays must have the names,
            shapes and dtypes of ``initial_arrays``. The loaded checkpoint is
            kept as :attr:`resumed_checkpoint`.
        checkpoint_state_fn : Callable[[int, Result], dict[str, Any]], optional
            Called with the completed round and the Result so far before each
            save; what it returns (JSON-serializable) is the checkpoint's
            ``state``, for the caller's own per-round records.

        Raises
        ------
        ValueError
            If ``resume`` is set and there is no checkpoint at
            ``checkpoint_path``, the file there is not a readable checkpoint
            (:class:`~dstar_flwr.checkpoint.CheckpointError`), or its model
            layout differs from ``initial_arrays``'s.
        """
        if timeout <= 0:
            raise ValueError(f"timeout (the round deadline) must be > 0, got {timeout}.")
        path = self._prepare_checkpoints(
            checkpoint_path, resume, checkpoint_state_fn, initial_arrays
        )
        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
        self.summary()
        log(INFO, "")
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        started = time.time()
        result, first_round = self._initial_result(initial_arrays, evaluate_fn)
        if first_round > num_rounds:
            log(INFO, "dstar: all %s rounds were completed before; nothing to run", num_rounds)
            return result
        collector = FirstKCollector(grid, poll_interval=self.poll_interval)
        self._message_ttl = timeout
        self._running = True
        try:
            for server_round in range(first_round, num_rounds + 1):
                log(INFO, "")
                log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
                self._train_round(server_round, result, train_config, grid, collector)
                self._evaluate_round(
                    server_round, result, evaluate_config, grid, collector, evaluate_fn
                )
                if path is not None:
                    self._save_checkpoint(path, server_round, result, checkpoint_state_fn)
        finally:
            self._end_run(collector)
        _log_final_results(result, time.time() - started)
        return result

    def _prepare_checkpoints(
        self,
        checkpoint_path: str | os.PathLike[str] | None,
        resume: bool,
        checkpoint_state_fn: CheckpointStateFn | None,
        initial_arrays: ArrayRecord,
    ) -> Path | None:
        """Where to checkpoint (None: nowhere); loads the checkpoint to resume from."""
        path = None if checkpoint_path is None else Path(checkpoint_path)
        restored = self._restore(path, initial_arrays) if resume else None
        if path is None and checkpoint_state_fn is not None:
            raise ValueError("checkpoint_state_fn needs a checkpoint_path to save to.")
        if path is not None and restored is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                log(WARNING, "dstar: replacing the checkpoint %s (resume=True continues it)", path)
        self.resumed_checkpoint = restored
        return path

    def _initial_result(
        self,
        initial_arrays: ArrayRecord,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    ) -> tuple[Result, int]:
        """The Result to continue and the first round to run: resumed, or fresh."""
        restored = self.resumed_checkpoint
        if restored is not None:
            log(INFO, "dstar: resuming after round %s", restored.server_round)
            restored.result.arrays = restored.arrays
            return restored.result, restored.server_round + 1
        result = Result()
        result.arrays = initial_arrays
        if evaluate_fn:
            res = evaluate_fn(0, initial_arrays)
            log(INFO, "Initial global evaluation results: %s", res)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res
        return result, 1

    def _train_round(
        self,
        server_round: int,
        result: Result,
        config: ConfigRecord,
        grid: Grid,
        collector: FirstKCollector,
    ) -> None:
        """Sample, collect the first k replies, aggregate; record the round in ``result``."""
        self._busy_node_ids = collector.busy_node_ids()
        messages = list(self.configure_train(server_round, result.arrays, config, grid))
        k = self.rule.k_for(len(messages))
        if k is None:
            # Too few nodes to aggregate: nothing is sent, the model is kept.
            aggregated = AggregatedRound(None, None, RoundReport(server_round, len(messages)))
            aggregated.report.skip(self.rule.too_few_nodes(len(messages)), too_few_nodes=True)
        else:
            self._log_k(k, len(messages))
            collected = collector.collect(
                messages,
                server_round=server_round,
                k=k,
                timeout=self._message_ttl or 0.0,
                check=self.check_reply,
            )
            aggregated = self.aggregate_checked(server_round, [*collected.kept, *collected.invalid])
            aggregated.report.record_collection(k, collected)
        aggregated.report.log()
        if aggregated.arrays is not None:
            result.arrays = aggregated.arrays
        result.train_metrics_clientapp[server_round] = aggregated.metric_record()

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def _evaluate_round(
        self,
        server_round: int,
        result: Result,
        config: ConfigRecord,
        grid: Grid,
        collector: FirstKCollector,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    ) -> None:
        """Federated evaluation (if configured), then the server's own ``evaluate_fn``."""
        messages = list(self.configure_evaluate(server_round, result.arrays, config, grid))
        if messages:
            evaluated = collector.collect(
                messages,
                server_round=server_round,
                k=len(messages),
                timeout=self._message_ttl or 0.0,
            )
            metrics = self.aggregate_evaluate(
                server_round, [reply.message for reply in (*evaluated.kept, *evaluated.invalid)]
            )
            if metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
                result.evaluate_metrics_clientapp[server_round] = metrics
        if evaluate_fn:
            log(INFO, "Global evaluation")
            res = evaluate_fn(server_round, result.arrays)
            log(INFO, "\t└──> MetricRecord: %s", res)
            if res is not None:
                result.evaluate_metrics_serverapp[server_round] = res

    @staticmethod
    def _save_checkpoint(
        path: Path,
        server_round: int,
        result: Result,
        checkpoint_state_fn: CheckpointStateFn | None,
    ) -> None:
        state = checkpoint_state_fn(server_round, result) if checkpoint_state_fn else {}
        save_checkpoint(path, Checkpoint(server_round, result.arrays, result, state))
        log(INFO, "dstar: round %s checkpointed to %s", server_round, path)

    def _end_run(self, collector: FirstKCollector) -> None:
        """Drain the replies still pending and leave the run state."""
        drained = collector.drain(wait=True)
        if drained:
            log(
                INFO,
                "dstar: drained %s late replies and %s expired messages at the end",
                sum(d.arrived for d in drained),
                sum(not d.arrived for d in drained),
            )
        self._message_ttl = None
        self._busy_node_ids = set()
        self._running = False

    def _log_k(self, k: int, num_sampled: int) -> None:
        """Log the round's k, and why when it is above what ``first_k`` gives."""
        from_first_k = resolve_first_k(self.rule.first_k, num_sampled)
        if k > from_first_k:
            log(
                INFO,
                "configure_train: first_k=%g gives k=%s of %s sampled nodes; raised to %s, "
                "the replies a round needs",
                self.rule.first_k,
                from_first_k,
                num_sampled,
                k,
            )
        log(INFO, "configure_train: waiting for the first %s of %s replies", k, num_sampled)

    @staticmethod
    def _restore(path: Path | None, initial_arrays: ArrayRecord) -> Checkpoint:
        """Load the checkpoint to resume from, checked against ``initial_arrays``."""
        if path is None:
            raise ValueError("resume=True needs the checkpoint_path to resume from.")
        if not path.is_file():
            raise ValueError(
                f"resume=True but there is no checkpoint at {path}: run without resume "
                "(with this checkpoint_path) to start from round 1."
            )
        checkpoint = load_checkpoint(path)
        differences = layout_differences(initial_arrays, checkpoint.arrays)
        if differences:
            raise ValueError(
                f"the model in the checkpoint {path} does not match initial_arrays: "
                + "; ".join(differences)
                + ". Resume with the model the checkpoint was written for."
            )
        # The model's own array order, whatever the order in the file.
        arrays = ArrayRecord({name: checkpoint.arrays[name] for name in initial_arrays})
        checkpoint.arrays = checkpoint.result.arrays = arrays
        return checkpoint


def _log_final_results(result: Result, seconds: float) -> None:
    """Log the run's end as Flower's ``Strategy.start`` does."""
    log(INFO, "")
    log(INFO, "Strategy execution finished in %.2fs", seconds)
    log(INFO, "")
    log(INFO, "Final results:")
    log(INFO, "")
    for line in io.StringIO(str(result)):
        log(INFO, "\t%s", line.strip("\n"))
    log(INFO, "")


def _evaluate_num_examples(reply: Message, weighted_by_key: str, max_num_examples: float) -> float:
    """An evaluate reply's checked example count; MalformedReply says why it has none."""
    if reply.has_error():
        raise MalformedReply(f"error reply: {reply.error.reason}")
    records = reply.content.metric_records
    if len(records) != 1:
        raise MalformedReply(f"expected exactly one MetricRecord, found {len(records)}")
    return read_num_examples(next(iter(records.values())), weighted_by_key, max_num_examples)


class _IdleNodesView:
    """The part of a Grid that ``sample_nodes`` uses, without the busy nodes."""

    def __init__(self, grid: Grid, busy: set[int]) -> None:
        self._grid = grid
        self._busy = busy

    def get_node_ids(self) -> list[int]:
        """Connected nodes that are not busy."""
        return [n for n in self._grid.get_node_ids() if n not in self._busy]

"""dSTAR for Flower's legacy API: a ``flwr.server.strategy`` strategy and a
first-k fit workflow for ``DefaultWorkflow``.

The legacy ``DefaultWorkflow`` waits for every fit reply and ignores
``ServerConfig.round_timeout``. :class:`FirstKFitWorkflow` replaces its fit step:
it ends the round at the k-th valid reply (or at its own deadline), drains late
replies and hands the kept results to the strategy in arrival order.
"""

import timeit
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any, cast

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord
from flwr.common import (
    Code,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
from flwr.supercore import log
from numpy.typing import NDArray

from .first_k import CollectedRound, FirstKCollector, ReplyCheck, resolve_first_k
from .metrics import aggregate_metrics
from .records import (
    ArrayLayout,
    MalformedReply,
    TrainReply,
    check_num_examples,
    flatten_checked,
    flatten_record,
    flatten_trusted,
    layout_of,
    unflatten_vector,
)
from .replies import CheckedReply, ReplyStatus, failed_reply
from .report import RoundReport
from .rule import DStarRule

LegacyValidationTrainFn = Callable[[NDArrays], NDArrays]


def _ndarrays_record(ndarrays: NDArrays) -> ArrayRecord:
    return ArrayRecord({str(index): Array(array) for index, array in enumerate(ndarrays)})


def parse_fit_res(fit_res: FitRes, layout: ArrayLayout, max_num_examples: float) -> TrainReply:
    """Check a legacy FitRes against the global layout, as the message API does."""
    if fit_res.status.code != Code.OK:
        raise MalformedReply(f"status {fit_res.status.code.name}: {fit_res.status.message}")
    try:
        ndarrays = parameters_to_ndarrays(fit_res.parameters)
    except Exception as error:
        raise MalformedReply(f"parameters cannot be decoded: {error}") from error
    num_examples = check_num_examples(fit_res.num_examples, "num_examples", max_num_examples)
    weights = flatten_checked({str(i): array for i, array in enumerate(ndarrays)}, layout)
    return TrainReply(weights=weights, num_examples=num_examples, metrics=MetricRecord())


class DroppedFitReply(Exception):
    """A fit reply that :class:`FirstKFitWorkflow` refused, with the sender's node id."""

    def __init__(self, node_id: int, reason: str) -> None:
        super().__init__(f"node {node_id}: {reason}")
        self.node_id = node_id


# pylint: disable=too-many-instance-attributes
class DStarLegacy(FedAvg):
    """dSTAR as a legacy ``flwr.server.strategy`` strategy (``aggregate_fit``).

    Takes the dSTAR parameters of :class:`~dstar_flwr.DStar` (``num_byzantine``,
    ``first_k``, ``min_replies``, ``variant``, ``max_robust_z``, ``norm_test``,
    ``threshold_factor``, ``deviation_scale``, ``center``, ``cap_accepted``,
    ``server_learning_rate``, ``weighting``, ``example_cap``, ``max_num_examples``)
    plus ``validation_train_fn`` (NDArrays -> trained NDArrays), and every keyword of
    :class:`flwr.server.strategy.FedAvg`.

    Client metrics (fit and evaluate) and the evaluation loss are aggregated as
    :class:`~dstar_flwr.DStar` does: with the weights of ``weighting``,
    non-finite values dropped, and per key the ``num_byzantine`` largest and
    smallest values left out (:func:`dstar_flwr.metrics.aggregate_metrics`).
    A ``fit_metrics_aggregation_fn`` or ``evaluate_metrics_aggregation_fn``
    given replaces that for the metrics; it receives the replies' own example
    claims. Evaluation replies claiming more than ``max_num_examples``
    examples are dropped. A fit round samples at least ``min_replies``
    (``2f + 1``) clients when that many are available.

    ``aggregate_fit`` treats ``results`` as the kept replies in arrival order.
    With the stock ``DefaultWorkflow`` that is every reply; pass
    ``DefaultWorkflow(fit_workflow=FirstKFitWorkflow(round_timeout=...))`` for
    real first-k rounds.
    """

    def __init__(
        self,
        rule: DStarRule | None = None,
        *,
        validation_train_fn: LegacyValidationTrainFn | None = None,
        **settings: Any,
    ) -> None:
        rule_fields = DStarRule.field_names()
        fedavg_kwargs = {key: value for key, value in settings.items() if key not in rule_fields}
        super().__init__(**fedavg_kwargs)
        self.rule = DStarRule.from_settings(
            rule, {key: value for key, value in settings.items() if key in rule_fields}
        )
        self.validation_train_fn = validation_train_fn
        self._global: NDArrays | None = None
        self._layout: ArrayLayout | None = None
        # The fit results checked this round, by identity: aggregate_fit reuses their parse.
        self._checked: dict[int, tuple[FitRes, TrainReply]] = {}

    def __repr__(self) -> str:
        """Compute a string representation of the strategy."""
        return f"DStarLegacy(accept_failures={self.accept_failures}, rule={self.rule})"

    def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
        """FedAvg's sample size, raised to the replies a round needs if that many are available."""
        sample_size, min_available = super().num_fit_clients(num_available_clients)
        needed = min(self.rule.min_valid_replies, num_available_clients)
        return max(sample_size, needed), min_available

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Configure the next fit round and remember the global parameters."""
        self._global = parameters_to_ndarrays(parameters)
        self._layout = layout_of(_ndarrays_record(self._global))
        self._checked = {}
        return super().configure_fit(server_round, parameters, client_manager)

    def check_fit_res(self, fit_res: FitRes) -> str | None:
        """The reason to drop a fit result, or None if it can be aggregated."""
        if self._layout is None:
            raise RuntimeError("configure_fit must run before results are checked.")
        try:
            self._checked[id(fit_res)] = (fit_res, self._parse(fit_res))
        except MalformedReply as error:
            return str(error)
        return None

    def _parse(self, fit_res: FitRes) -> TrainReply:
        """A fit result's parse: the one :meth:`check_fit_res` made, or a new one."""
        checked = self._checked.pop(id(fit_res), None)
        if checked is not None and checked[0] is fit_res:
            return checked[1]
        assert self._layout is not None
        return parse_fit_res(fit_res, self._layout, self.rule.max_num_examples)

    def _validation_weights(self) -> NDArray[np.floating] | None:
        if self.validation_train_fn is None or self._global is None:
            return None
        assert self._layout is not None
        try:
            trained = self.validation_train_fn([array.copy() for array in self._global])
            return flatten_trusted(_ndarrays_record(trained), self._layout)
        except Exception as error:  # noqa: BLE001 - a failing hook must not end the run
            log(WARNING, "dstar: validation update unavailable this round: %s", error)
            return None

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Filter and average the fit results (in arrival order) with dSTAR.

        Each node has one vote per round: later results from a node that already
        sent one are dropped as malformed.
        """
        if self._global is None or self._layout is None:
            raise RuntimeError("configure_fit must run before aggregate_fit.")
        report = RoundReport(server_round=server_round)
        node_ids: list[int] = []
        parsed: list[TrainReply] = []
        fit_metrics: list[tuple[int, dict[str, Scalar]]] = []
        replied: set[int] = set()
        for proxy, fit_res in results:
            node_id = int(getattr(proxy, "node_id", 0) or 0)
            try:
                if node_id in replied:
                    raise MalformedReply("a second result from this node in the round")
                replied.add(node_id)
                parsed.append(self._parse(fit_res))
                node_ids.append(node_id)
                fit_metrics.append((fit_res.num_examples, fit_res.metrics))
            except MalformedReply as error:
                report.malformed_node_ids.append(node_id)
                log(INFO, "\t> Dropped the fit result of node %s: %s", node_id, error)
        for failure in failures:
            if isinstance(failure, tuple):
                report.failed_node_ids.append(int(getattr(failure[0], "node_id", 0) or 0))
            elif isinstance(failure, DroppedFitReply):
                report.malformed_node_ids.append(failure.node_id)
            else:
                log(INFO, "\t> A fit call failed without a reply: %r", failure)
        report.num_sampled = report.k = len(results) + len(failures)

        outcome = self.rule.apply(
            flatten_record(_ndarrays_record(self._global), self._layout),
            [reply.weights for reply in parsed],
            [reply.num_examples for reply in parsed],
            self._validation_weights(),
        )
        report.record_aggregation(node_ids, outcome.aggregation)
        if outcome.weights is None or outcome.aggregation is None:
            report.log()
            return None, report.to_legacy_metrics()

        record = unflatten_vector(outcome.weights, self._layout)
        new_ndarrays = [record[str(i)].numpy() for i in range(len(record))]
        accepted = outcome.aggregation.accepted
        metrics = self._client_metrics(
            [fit_metrics[i] for i in accepted],
            [parsed[i].num_examples for i in accepted],
            self.fit_metrics_aggregation_fn,
        )
        metrics.update(report.to_legacy_metrics())
        report.log()
        return ndarrays_to_parameters(new_ndarrays), metrics

    def _client_metrics(
        self,
        metrics: list[tuple[int, dict[str, Scalar]]],
        num_examples: list[float],
        aggregation_fn: Callable[[list[tuple[int, dict[str, Scalar]]]], dict[str, Scalar]] | None,
    ) -> dict[str, Scalar]:
        """The replies' metrics: the user's function, or DStar's bounded trimmed mean."""
        if not metrics:
            return {}
        if aggregation_fn is not None:
            return dict(aggregation_fn(metrics))
        aggregated = aggregate_metrics(
            [reply_metrics for _, reply_metrics in metrics],
            self.rule.example_weights(num_examples),
            trim=self.rule.num_byzantine,
        )
        # Legacy Metrics hold scalars only: an element-wise list mean is left out.
        return {key: value for key, value in aggregated.items() if isinstance(value, float)}

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Aggregate the evaluation loss and metrics as the fit metrics are.

        A result whose status is not OK, or whose example count is not a number
        in (0, ``max_num_examples``], is dropped with the reason in the log.
        """
        if not results or (not self.accept_failures and failures):
            return None, {}
        valid: list[EvaluateRes] = []
        num_examples: list[float] = []
        for proxy, evaluate_res in results:
            try:
                num_examples.append(
                    _evaluate_num_examples(evaluate_res, self.rule.max_num_examples)
                )
                valid.append(evaluate_res)
            except MalformedReply as error:
                node_id = getattr(proxy, "node_id", None)
                log(INFO, "\t> Dropped the evaluate result of node %s: %s", node_id, error)
        # Through aggregate_metrics, which also drops a loss that is not a number.
        losses = aggregate_metrics(
            [{"loss": res.loss} for res in valid],
            self.rule.example_weights(num_examples),
            trim=self.rule.num_byzantine,
        )
        loss = losses.get("loss")
        loss = loss if isinstance(loss, float) else None
        metrics = self._client_metrics(
            [(res.num_examples, res.metrics) for res in valid],
            num_examples,
            self.evaluate_metrics_aggregation_fn,
        )
        return loss, metrics


def _evaluate_num_examples(evaluate_res: EvaluateRes, max_num_examples: float) -> float:
    """An EvaluateRes's checked example count; MalformedReply says why it has none."""
    if evaluate_res.status.code != Code.OK:
        raise MalformedReply(
            f"status {evaluate_res.status.code.name}: {evaluate_res.status.message}"
        )
    return check_num_examples(evaluate_res.num_examples, "num_examples", max_num_examples)


class FirstKFitWorkflow:
    """A fit workflow for ``DefaultWorkflow`` that ends each round at the k-th reply.

    Parameters
    ----------
    round_timeout : float
        Seconds after which a round closes with what has arrived; also the TTL
        of the round's messages.
    first_k : float | None (default: None)
        k as a count or fraction; None takes it from the strategy's ``rule``
        (a :class:`DStarLegacy`) and waits for every reply otherwise.
    poll_interval : float (default: 0.05)
        Seconds between pulls.
    """

    def __init__(
        self,
        round_timeout: float,
        first_k: float | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        if round_timeout <= 0:
            raise ValueError(f"round_timeout must be > 0, got {round_timeout}.")
        if first_k is not None:
            resolve_first_k(first_k, 1)
        self.round_timeout = round_timeout
        self.first_k = first_k
        self.poll_interval = poll_interval
        self._collector: FirstKCollector | None = None

    def _k(self, rule: DStarRule | None, num_sampled: int) -> int | None:
        """The round's k; None: too few nodes for the strategy's rule (skip the round)."""
        if rule is None:
            return (
                num_sampled if self.first_k is None else resolve_first_k(self.first_k, num_sampled)
            )
        k = rule.k_for(num_sampled)
        if k is None or self.first_k is None:
            return k
        return max(resolve_first_k(self.first_k, num_sampled), rule.min_valid_replies)

    @staticmethod
    def _check(strategy: object, fit_results: dict[str, FitRes]) -> ReplyCheck:
        """The collector's check: the reply as a FitRes, checked by the strategy.

        Each reply is turned into a FitRes once; the valid ones are kept in
        ``fit_results`` (by message id) and handed to ``aggregate_fit`` as they
        are, so :class:`DStarLegacy` reuses the parse its check made.
        """

        def check(reply: Message) -> CheckedReply:
            if reply.has_error():
                return failed_reply(reply)
            try:
                fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
            except Exception as error:  # noqa: BLE001 - malformed legacy content
                reason = f"not a FitRes: {type(error).__name__}: {error}"
                return CheckedReply(reply, ReplyStatus.MALFORMED, reason)
            check_fit_res = getattr(strategy, "check_fit_res", None)
            reason = (
                f"status {fit_res.status.code.name}"
                if fit_res.status.code != Code.OK
                else (check_fit_res(fit_res) if check_fit_res else None)
            )
            if reason is not None:
                return CheckedReply(reply, ReplyStatus.MALFORMED, reason)
            fit_results[reply.metadata.reply_to_message_id] = fit_res
            return CheckedReply(reply, ReplyStatus.VALID)

        return check

    def __call__(self, grid: Grid, context: LegacyContext) -> None:
        """Run one first-k fit round."""
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        if self._collector is None or self._collector.grid is not grid:
            self._collector = FirstKCollector(grid, poll_interval=self.poll_interval)
        current_round = cast(
            int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]
        )
        rule = getattr(context.strategy, "rule", None)
        rule = rule if isinstance(rule, DStarRule) else None
        messages, proxies = self._configure(context, current_round, rule)
        if not messages:
            log(INFO, "configure_fit: no clients selected, cancel")
            return
        k = self._k(rule, len(messages))
        if k is None:
            assert rule is not None
            self._skip_round(
                context, current_round, rule.too_few_nodes(len(messages)), len(messages)
            )
            return
        self._log_k(rule, k, len(messages))
        started = timeit.default_timer()
        fit_results: dict[str, FitRes] = {}
        collected = self._collector.collect(
            messages,
            server_round=current_round,
            k=k,
            timeout=self.round_timeout,
            check=self._check(context.strategy, fit_results),
        )
        parameters_aggregated, metrics = self._aggregate(
            context, current_round, collected, proxies, fit_results
        )
        metrics.update(_collection_metrics(k, collected))
        metrics["round-seconds"] = timeit.default_timer() - started
        log(
            INFO,
            "first-k fit round %s: kept %s, %s late, %.2fs",
            current_round,
            len(collected.kept),
            len(collected.late_node_ids),
            metrics["round-seconds"],
        )
        if parameters_aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                parameters_aggregated, True
            )
        context.history.add_metrics_distributed_fit(server_round=current_round, metrics=metrics)
        if current_round >= context.config.num_rounds:
            self._collector.drain(wait=True)

    @staticmethod
    def _aggregate(
        context: LegacyContext,
        current_round: int,
        collected: CollectedRound,
        proxies: dict[int, ClientProxy],
        fit_results: dict[str, FitRes],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Hand the kept fit results (in arrival order) and the refused ones to the strategy."""
        results = [
            (proxies[reply.node_id], fit_results[reply.message.metadata.reply_to_message_id])
            for reply in collected.kept
        ]
        failures: list[tuple[ClientProxy, FitRes] | BaseException] = []
        for reply in collected.invalid:
            log(INFO, "\t> Dropped the fit reply of node %s: %s", reply.node_id, reply.reason)
            failures.append(DroppedFitReply(reply.node_id, reply.reason))
        parameters, metrics = context.strategy.aggregate_fit(current_round, results, failures)
        return parameters, dict(metrics)

    def _configure(
        self, context: LegacyContext, current_round: int, rule: DStarRule | None
    ) -> tuple[list[Message], dict[int, ClientProxy]]:
        """The round's training messages (TTL: the round deadline) and their clients."""
        if rule is not None and context.client_manager.num_available() < rule.min_valid_replies:
            log(
                INFO,
                "configure_fit: %s clients available, a round needs %s; waiting up to %.1fs",
                context.client_manager.num_available(),
                rule.min_valid_replies,
                self.round_timeout,
            )
            context.client_manager.wait_for(rule.min_valid_replies, self.round_timeout)  # type: ignore[arg-type]
        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        instructions = context.strategy.configure_fit(
            server_round=current_round,
            parameters=parameters,
            client_manager=context.client_manager,
        )
        messages = [
            Message(
                content=compat.fitins_to_recorddict(fit_ins, True),
                dst_node_id=proxy.node_id,
                message_type=MessageType.TRAIN,
                group_id=str(current_round),
                ttl=self.round_timeout,
            )
            for proxy, fit_ins in instructions
        ]
        return messages, {proxy.node_id: proxy for proxy, _ in instructions}

    def _log_k(self, rule: DStarRule | None, k: int, num_sampled: int) -> None:
        """Log the round's k, and why when it is above what the rule's ``first_k`` gives."""
        if rule is not None and self.first_k is None:
            from_first_k = resolve_first_k(rule.first_k, num_sampled)
            if k > from_first_k:
                log(
                    INFO,
                    "configure_fit: first_k=%g gives k=%s of %s sampled clients; raised to %s, "
                    "the replies a round needs",
                    rule.first_k,
                    from_first_k,
                    num_sampled,
                    k,
                )
        log(INFO, "configure_fit: waiting for the first %s of %s replies", k, num_sampled)

    def _skip_round(
        self, context: LegacyContext, current_round: int, reason: str, num_sampled: int
    ) -> None:
        """Skip a round before anything is sent: the model is kept, the reason reported."""
        report = RoundReport(server_round=current_round, num_sampled=num_sampled)
        report.skip(reason, too_few_nodes=True)
        report.log()
        context.history.add_metrics_distributed_fit(
            server_round=current_round, metrics=dict(report.to_legacy_metrics())
        )
        if current_round >= context.config.num_rounds and self._collector is not None:
            self._collector.drain(wait=True)


def _collection_metrics(k: int, collected: CollectedRound) -> dict[str, Scalar]:
    """A first-k fit round's collection figures as legacy metrics."""
    return {
        "num-sampled": collected.num_sampled,
        "k": k,
        "num-late": len(collected.late_node_ids),
        "late-node-ids": ",".join(str(n) for n in collected.late_node_ids),
        "num-drained-late": sum(d.arrived for d in collected.drained),
    }

"""DStarLegacy (legacy strategy API) and FirstKFitWorkflow against a scripted grid."""

import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import (
    Code,
    FitRes,
    NDArrays,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common.recorddict_compat import (
    arrayrecord_to_parameters,
    fitres_to_recorddict,
    recorddict_to_fitins,
)
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from dstar_flwr.legacy import DroppedFitReply, DStarLegacy, FirstKFitWorkflow

from .fake_grid import FakeGrid, FakeNode

TARGET = np.linspace(-1, 1, 23).astype(np.float32)
BYZANTINE, NAN_NODE, BAD_SHAPE, ABSURD, STRAGGLER = 6, 7, 8, 9, 10


def _split(vector: np.ndarray) -> NDArrays:
    return [vector[:20].astype(np.float32), vector[20:].astype(np.float32)]


def _join(ndarrays: NDArrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in ndarrays])


def _fit_res(ndarrays: NDArrays, num_examples: int = 10) -> FitRes:
    return FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(ndarrays),
        num_examples=num_examples,
        metrics={"train-loss": 1.0},
    )


def _ids(value: object) -> set[int]:
    return {int(n) for n in str(value).split(",") if n}


# A legacy FitRes for each kind of node, given the global weights it trained from.
def _honest_update(current: np.ndarray, rng: np.random.Generator) -> NDArrays:
    return _split(current + 0.5 * (TARGET - current) + 0.01 * rng.normal(size=current.size))


def _reply_for(node_id: int, current: np.ndarray, rng: np.random.Generator) -> FitRes:
    if node_id == BYZANTINE:
        return _fit_res(_split(current + 10 * rng.normal(size=current.size)))
    if node_id == NAN_NODE:
        bad = current.copy()
        bad[3] = np.nan
        return _fit_res(_split(bad))
    if node_id == BAD_SHAPE:
        return _fit_res([current[:19].astype(np.float32), current[20:].astype(np.float32)])
    if node_id == ABSURD:
        # Far from the target and claims 10^12 examples: FedAvg follows it.
        return _fit_res(_split(current + 5.0), num_examples=10**12)
    return _fit_res(_honest_update(current, rng))


# --- DStarLegacy.aggregate_fit called directly ----------------------------------------


def _configured(
    strategy: DStarLegacy, node_ids: range, global_vector: np.ndarray
) -> dict[int, ClientProxy]:
    manager = SimpleClientManager()
    grid = FakeGrid({})
    for node_id in node_ids:
        assert manager.register(GridClientProxy(node_id, grid, run_id=1))
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(_split(global_vector)), manager)
    assert len(instructions) == len(node_ids)
    return {int(proxy.node_id): proxy for proxy, _ in instructions}


def test_aggregate_fit_rejects_byzantine_drops_malformed_and_beats_fedavg() -> None:
    strategy = DStarLegacy(num_byzantine=1, first_k=6, fraction_evaluate=0.0)
    start = np.zeros(23, np.float32)
    proxies = _configured(strategy, range(1, 10), start)
    rng = np.random.default_rng(0)
    # Arrival order: the Byzantine node first.
    order = [BYZANTINE, 1, NAN_NODE, 2, 3, BAD_SHAPE, 4, ABSURD, 5]
    results = [(proxies[n], _reply_for(n, start, rng)) for n in order]

    parameters, metrics = strategy.aggregate_fit(1, results, [])

    assert parameters is not None
    aggregated = _join(parameters_to_ndarrays(parameters))
    assert [a.shape for a in parameters_to_ndarrays(parameters)] == [(20,), (3,)]
    assert np.all(np.isfinite(aggregated))
    assert _ids(metrics["rejected-node-ids"]) == {BYZANTINE}
    assert _ids(metrics["malformed-node-ids"]) == {NAN_NODE, BAD_SHAPE, ABSURD}
    assert _ids(metrics["accepted-node-ids"]) == {1, 2, 3, 4, 5}
    assert metrics["num-malformed"] == 3
    assert metrics["num-sampled"] == 9
    assert metrics["skipped"] == 0

    honest = [_join(parameters_to_ndarrays(r.parameters)) for p, r in results if p.node_id <= 5]
    honest_mean = np.mean(honest, axis=0)
    # FedAvg on every reply it can average (same shapes, finite).
    fedavg = FedAvg()
    averageable = [(p, r) for p, r in results if p.node_id not in (NAN_NODE, BAD_SHAPE)]
    fedavg_parameters, _ = fedavg.aggregate_fit(1, averageable, [])
    assert fedavg_parameters is not None
    fedavg_vector = _join(parameters_to_ndarrays(fedavg_parameters))
    dstar_error = np.linalg.norm(aggregated - honest_mean)
    assert dstar_error < 1e-4
    assert dstar_error < 0.01 * np.linalg.norm(fedavg_vector - honest_mean)


def test_aggregate_fit_names_failed_and_malformed_nodes() -> None:
    strategy = DStarLegacy(num_byzantine=1, first_k=3)
    start = np.zeros(23, np.float32)
    proxies = _configured(strategy, range(1, 6), start)
    rng = np.random.default_rng(1)
    results = [(proxies[n], _reply_for(n, start, rng)) for n in (1, 2, 3)]
    failed = FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "no"), Parameters([], ""), 0, {})
    failures = [(proxies[4], failed), DroppedFitReply(5, "not a FitRes"), RuntimeError("lost")]
    parameters, metrics = strategy.aggregate_fit(1, results, failures)
    assert parameters is not None
    assert _ids(metrics["failed-node-ids"]) == {4}
    assert _ids(metrics["malformed-node-ids"]) == {5}
    assert metrics["num-sampled"] == 6


def test_aggregate_fit_takes_numpy_example_counts(caplog: pytest.LogCaptureFixture) -> None:
    strategy = DStarLegacy(num_byzantine=1, first_k=3)
    start = np.zeros(23, np.float32)
    proxies = _configured(strategy, range(1, 5), start)
    rng = np.random.default_rng(3)
    counts = {1: np.int64(10), 2: np.int32(12), 3: np.float64(9.0), 4: np.bool_(True)}
    results = [
        (proxies[n], _fit_res(_honest_update(start, rng), num_examples=counts[n]))  # type: ignore[arg-type]
        for n in counts
    ]
    with caplog.at_level(logging.INFO):
        parameters, metrics = strategy.aggregate_fit(1, results, [RuntimeError("lost")])
    assert parameters is not None
    assert _ids(metrics["malformed-node-ids"]) == {4}  # a boolean is not a count
    assert metrics["num-received"] == 4 and metrics["num-accepted"] == 3  # no k - f cap
    assert "lost" in caplog.text


def test_aggregate_fit_skips_the_round_below_2f_plus_1_valid_results() -> None:
    strategy = DStarLegacy(num_byzantine=1, first_k=4)
    start = np.zeros(23, np.float32)
    proxies = _configured(strategy, range(1, 10), start)
    rng = np.random.default_rng(2)
    results = [(proxies[n], _reply_for(n, start, rng)) for n in (1, NAN_NODE, 2, BAD_SHAPE)]

    parameters, metrics = strategy.aggregate_fit(1, results, [])

    assert parameters is None
    assert metrics["skipped"] == 1
    assert _ids(metrics["malformed-node-ids"]) == {NAN_NODE, BAD_SHAPE}
    assert metrics["num-accepted"] == 0


def test_aggregate_fit_before_configure_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="configure_fit"):
        DStarLegacy().aggregate_fit(1, [], [])


def test_validation_train_fn_is_called_once_per_round_and_may_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[np.ndarray] = []

    def validation(ndarrays: NDArrays) -> NDArrays:
        current = _join(ndarrays)
        calls.append(current)
        return _split(current + 0.5 * (TARGET - current))

    strategy = DStarLegacy(num_byzantine=1, first_k=5, validation_train_fn=validation)
    rng = np.random.default_rng(3)
    current = np.zeros(23, np.float32)
    for server_round in (1, 2):
        proxies = _configured(strategy, range(1, 6), current)
        results = [(proxies[n], _reply_for(n, current, rng)) for n in range(1, 6)]
        parameters, metrics = strategy.aggregate_fit(server_round, results, [])
        assert parameters is not None
        assert len(calls) == server_round
        np.testing.assert_array_equal(calls[-1], current)  # trained from the global model
        assert np.isfinite(metrics["validation-deviation"])
        current = _join(parameters_to_ndarrays(parameters)).astype(np.float32)

    def broken(_: NDArrays) -> NDArrays:
        raise RuntimeError("no validation data")

    caplog.set_level(logging.WARNING)
    strategy = DStarLegacy(num_byzantine=1, first_k=5, validation_train_fn=broken)
    start = np.zeros(23, np.float32)
    proxies = _configured(strategy, range(1, 6), start)
    results = [(proxies[n], _reply_for(n, start, rng)) for n in range(1, 6)]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is not None
    assert metrics["num-accepted"] >= 3
    assert not np.isfinite(metrics["validation-deviation"])
    assert "no validation data" in caplog.text


# --- FirstKFitWorkflow inside DefaultWorkflow ----------------------------------------


class LegacyFakeGrid(FakeGrid):
    """A FakeGrid with the ``run`` that Flower's client-manager thread reads."""

    @property
    def run(self) -> object:
        """The run, as far as ``start_update_client_manager_thread`` needs it."""
        return SimpleNamespace(run_id=1)


def _legacy_node(node_id: int, delay: float) -> FakeNode:
    rng = np.random.default_rng(node_id)

    def respond(message: Message) -> RecordDict:
        assert message.metadata.message_type == "train"
        fit_ins = recorddict_to_fitins(message.content, keep_input=True)
        current = _join(parameters_to_ndarrays(fit_ins.parameters))
        return fitres_to_recorddict(_reply_for(node_id, current, rng), keep_input=True)

    return FakeNode(delay, respond)


def _run_workflow(
    grid: LegacyFakeGrid, strategy: DStarLegacy, workflow: FirstKFitWorkflow, num_rounds: int
) -> LegacyContext:
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=num_rounds),
        strategy=strategy,
        client_manager=SimpleClientManager(),
    )
    DefaultWorkflow(fit_workflow=workflow)(grid, context)
    return context


class TimedDStarLegacy(DStarLegacy):
    """Records when each round's aggregation starts."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.aggregated_at: list[float] = []

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        self.aggregated_at.append(time.monotonic())
        return super().aggregate_fit(server_round, results, failures)


def _workflow_nodes(straggler_delay: float) -> dict[int, FakeNode]:
    delays = {n: 0.02 * n for n in range(1, 6)}
    delays.update({BYZANTINE: 0.01, NAN_NODE: 0.015, BAD_SHAPE: 0.02, ABSURD: 0.025})
    delays[STRAGGLER] = straggler_delay
    return {n: _legacy_node(n, d) for n, d in delays.items()}


def test_first_k_workflow_ends_rounds_before_the_straggler_and_filters() -> None:
    straggler_delay = 1.5
    grid = LegacyFakeGrid(_workflow_nodes(straggler_delay))
    strategy = TimedDStarLegacy(
        num_byzantine=1,
        first_k=6,
        initial_parameters=ndarrays_to_parameters(_split(np.zeros(23, np.float32))),
        fraction_evaluate=0.0,
    )
    workflow = FirstKFitWorkflow(round_timeout=5.0, poll_interval=0.01)
    started = time.monotonic()
    context = _run_workflow(grid, strategy, workflow, num_rounds=2)
    elapsed = time.monotonic() - started

    # Both rounds were aggregated long before the straggler's first reply was due.
    assert len(strategy.aggregated_at) == 2
    assert strategy.aggregated_at[-1] - started < straggler_delay / 2
    # The last round drained the straggler's replies (it waited for them).
    assert straggler_delay <= elapsed < straggler_delay + 2.0
    assert grid.stored == 0

    fit = dict(context.history.metrics_distributed_fit)
    for key in ("late-node-ids", "rejected-node-ids", "malformed-node-ids", "round-seconds"):
        assert [r for r, _ in fit[key]] == [1, 2]
    for _, late in fit["late-node-ids"]:
        assert STRAGGLER in _ids(late)
    for _, rejected in fit["rejected-node-ids"]:
        assert BYZANTINE in _ids(rejected)
    for _, accepted in fit["accepted-node-ids"]:
        assert _ids(accepted) <= {1, 2, 3, 4, 5}
    for _, malformed in fit["malformed-node-ids"]:
        assert _ids(malformed) == {NAN_NODE, BAD_SHAPE, ABSURD}
    for _, seconds in fit["round-seconds"]:
        assert seconds < straggler_delay / 4
    assert [v for _, v in fit["num-sampled"]] == [10, 10]
    assert [v for _, v in fit["skipped"]] == [0, 0]

    # Every pushed message carries the round deadline as TTL.
    assert {m.metadata.ttl for m in grid.pushed} == {5.0}
    final = _join(
        parameters_to_ndarrays(
            arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], True)
        )
    )
    assert np.all(np.isfinite(final))
    # Two honest half-steps towards the target: 0.75 of the way.
    assert np.linalg.norm(final - 0.75 * TARGET) < 0.05 * np.linalg.norm(TARGET)


def test_first_k_workflow_drains_a_straggler_that_never_replies() -> None:
    nodes = {n: _legacy_node(n, 0.01 * n) for n in range(1, 4)}
    nodes[4] = _legacy_node(4, 60.0)  # never replies within the TTL
    grid = LegacyFakeGrid(nodes)
    strategy = DStarLegacy(
        num_byzantine=1,
        first_k=3,
        initial_parameters=ndarrays_to_parameters(_split(np.zeros(23, np.float32))),
        fraction_evaluate=0.0,
    )
    started = time.monotonic()
    context = _run_workflow(
        grid, strategy, FirstKFitWorkflow(round_timeout=0.5, poll_interval=0.01), 2
    )
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert grid.stored == 0  # the expired messages were pulled at the end
    fit = context.history.metrics_distributed_fit
    assert [_ids(v) for _, v in fit["late-node-ids"]] == [{4}, {4}]
    assert [v for _, v in fit["skipped"]] == [0, 0]


def test_first_k_workflow_times_out_and_keeps_the_model_below_2f_plus_1() -> None:
    nodes = {1: _legacy_node(1, 0.01), 2: _legacy_node(2, 60.0), 3: _legacy_node(3, 60.0)}
    grid = LegacyFakeGrid(nodes)
    start = np.zeros(23, np.float32)
    strategy = DStarLegacy(
        num_byzantine=1,
        first_k=3,
        initial_parameters=ndarrays_to_parameters(_split(start)),
        fraction_evaluate=0.0,
    )
    context = _run_workflow(
        grid, strategy, FirstKFitWorkflow(round_timeout=0.3, poll_interval=0.01), 1
    )
    fit = context.history.metrics_distributed_fit
    assert [v for _, v in fit["skipped"]] == [1]
    assert _ids(fit["late-node-ids"][0][1]) == {2, 3}
    final = parameters_to_ndarrays(
        arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], True)
    )
    np.testing.assert_array_equal(_join(final), start)
    assert grid.stored == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"round_timeout": 0}, "round_timeout"),
        ({"round_timeout": -1.0}, "round_timeout"),
        ({"round_timeout": 1.0, "first_k": 2.5}, "whole count"),
        ({"round_timeout": 1.0, "first_k": 0}, "> 0"),
    ],
)
def test_first_k_workflow_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FirstKFitWorkflow(**kwargs)


def test_first_k_workflow_needs_a_legacy_context() -> None:
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(TypeError, match="LegacyContext"):
        FirstKFitWorkflow(round_timeout=1.0)(LegacyFakeGrid({}), context)  # type: ignore[arg-type]


# --- regressions ------------------------------------------------------------------


def test_legacy_inflated_example_counts_get_no_more_than_a_uniform_share() -> None:
    """Regression: 3 of 10 replies claiming 1e9 examples took more than 3/10."""
    for weighting in ({}, {"weighting": "num-examples", "example_cap": 100.0}):
        strategy = DStarLegacy(num_byzantine=3, first_k=10, cap_accepted=False, **weighting)
        start = np.zeros(23, np.float32)
        proxies = _configured(strategy, range(1, 11), start)
        rng = np.random.default_rng(7)
        honest = [rng.normal(0.0, 0.1, 23) for _ in range(7)]
        attack = honest[0] + 0.02 * np.eye(23)[0]
        results = [(proxies[n], _fit_res(_split(honest[n - 1]), 100)) for n in range(1, 8)]
        results += [(proxies[n], _fit_res(_split(attack), 10**9)) for n in range(8, 11)]
        parameters, metrics = strategy.aggregate_fit(1, results, [])
        assert parameters is not None
        accepted = _ids(metrics["accepted-node-ids"])
        attackers = accepted & {8, 9, 10}
        assert len(attackers) == 3
        honest_mean = np.mean([honest[n - 1] for n in accepted - attackers], axis=0)
        direction = attack - honest_mean
        aggregate = _join(parameters_to_ndarrays(parameters))
        share = np.dot(aggregate - honest_mean, direction) / np.dot(direction, direction)
        assert share == pytest.approx(len(attackers) / len(accepted), abs=1e-3), weighting


def test_legacy_num_examples_weighting_needs_an_example_cap() -> None:
    with pytest.raises(ValueError, match="example_cap"):
        DStarLegacy(weighting="num-examples")
    assert DStarLegacy().rule.weighting == "uniform"


def test_legacy_fit_metrics_are_aggregated_within_the_honest_range() -> None:
    """Client fit metrics: bounded weights, trimmed (legacy FedAvg reported none)."""
    strategy = DStarLegacy(num_byzantine=1, first_k=4, cap_accepted=False)
    start = np.zeros(23, np.float32)
    proxies = _configured(strategy, range(1, 5), start)
    rng = np.random.default_rng(5)
    results = [(proxies[n], _fit_res(_honest_update(start, rng))) for n in range(1, 5)]
    results[3][1].metrics = {"train-loss": 1e10}
    results[3][1].num_examples = 10**9
    _, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics["num-accepted"] == 4
    assert metrics["train-loss"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("num_examples", "loss", "accuracy"),
    [(10**300, 0.0, 0.0), (10**308, 1e10, 1e10), (10, 1e10, 1e10), (10, 0.5, float("nan"))],
    ids=["1e300-examples", "1e308-examples", "hostile-value", "nan"],
)
def test_legacy_evaluate_stays_in_the_honest_range(
    num_examples: int, loss: float, accuracy: float
) -> None:
    """Regression: legacy FedAvg weighted the loss by the claimed example counts."""
    from flwr.common import EvaluateRes

    strategy = DStarLegacy(num_byzantine=1)
    proxies = _configured(strategy, range(1, 5), np.zeros(23, np.float32))
    ok = Status(code=Code.OK, message="")
    results = [
        (proxies[n], EvaluateRes(ok, loss=0.5, num_examples=100, metrics={"eval-acc": 0.9}))
        for n in (1, 2, 3)
    ]
    hostile = EvaluateRes(ok, loss=loss, num_examples=num_examples, metrics={"eval-acc": accuracy})
    results.append((proxies[4], hostile))
    loss_aggregated, metrics = strategy.aggregate_evaluate(1, results, [])
    assert loss_aggregated == pytest.approx(0.5)
    assert metrics["eval-acc"] == pytest.approx(0.9)


def test_first_k_workflow_raises_k_to_2f_plus_1() -> None:
    """Regression: 5 nodes, f = 2, first_k = 0.8 gave k = 4 < 5 and ended the run."""
    grid = LegacyFakeGrid({n: _legacy_node(n, 0.01 * n) for n in range(1, 6)})
    strategy = DStarLegacy(
        num_byzantine=2,
        first_k=0.8,
        initial_parameters=ndarrays_to_parameters(_split(np.zeros(23, np.float32))),
        fraction_evaluate=0.0,
    )
    context = _run_workflow(
        grid, strategy, FirstKFitWorkflow(round_timeout=5.0, poll_interval=0.01), 1
    )
    fit = context.history.metrics_distributed_fit
    assert [v for _, v in fit["k"]] == [5]
    assert [v for _, v in fit["skipped"]] == [0]


def test_first_k_workflow_skips_a_round_with_too_few_nodes() -> None:
    """Regression: 2 nodes with f = 1 (a round needs 3) ended the run with a ValueError.
    The round waits up to its deadline for a third node, then is skipped."""
    grid = LegacyFakeGrid({n: _legacy_node(n, 0.01) for n in (1, 2)})
    start = np.zeros(23, np.float32)
    strategy = DStarLegacy(
        num_byzantine=1,
        first_k=0.8,
        initial_parameters=ndarrays_to_parameters(_split(start)),
        fraction_evaluate=0.0,
    )
    started = time.monotonic()
    context = _run_workflow(
        grid, strategy, FirstKFitWorkflow(round_timeout=0.5, poll_interval=0.01), 2
    )
    assert time.monotonic() - started < 5.0
    fit = context.history.metrics_distributed_fit
    assert [v for _, v in fit["skipped"]] == [1, 1]
    assert [v for _, v in fit["skipped-too-few-nodes"]] == [1, 1]
    assert "2 nodes sampled, a round needs 3" in fit["skip-reason"][0][1]
    assert grid.pushed == []
    final = parameters_to_ndarrays(
        arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], True)
    )
    np.testing.assert_array_equal(_join(final), start)

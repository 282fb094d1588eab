"""Resilience diagnostics, the honest-mean probe, the results file and FedAvg with a deadline."""

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from dstar_flwr import DStar, check_train_reply
from dstar_flwr.interception import DropMalformedReplies
from dstar_flwr.records import layout_of
from simulations.app.adversary import probe_of, wrap_strategy
from simulations.app.diagnostics import (
    HonestMeanProbe,
    ReplyLogGrid,
    filter_precision_recall,
    resilience,
)
from simulations.app.experiment import ExperimentConfig, build_strategy
from simulations.app.omniscient import OmniscientAttack
from simulations.app.results import NodeRoles, RoundRow, summarize, write_results
from simulations.baselines.fedavg_timeout import FedAvgTimeout
from simulations.baselines.fltrust import FLTrust

from .fake_grid import FakeGrid, FakeNode
from .node_support import run_config
from .test_fltrust import _root_towards_target
from .test_interception import missing_arrays
from .test_strategy import _model, _reply, _start, _vector, honest

ZERO = np.zeros(23, np.float32)


# --- the pure functions ---------------------------------------------------------


def test_resilience_of_the_honest_mean_itself_and_its_opposite() -> None:
    g = np.array([3.0, -4.0, 12.0])
    assert resilience(g, g) == pytest.approx(
        {"cosine_to_honest": 1.0, "rho": 1.0, "relative_error": 0.0}
    )
    assert resilience(-g, g) == pytest.approx(
        {"cosine_to_honest": -1.0, "rho": -1.0, "relative_error": 2.0}
    )


def test_resilience_by_hand() -> None:
    # F = (1, 1), g = (2, 0): cos = 1/sqrt 2, rho = 2/4, ||F - g|| / ||g|| = sqrt 2 / 2.
    measured = resilience(np.array([1.0, 1.0]), np.array([2.0, 0.0]))
    assert measured == pytest.approx(
        {"cosine_to_honest": 1 / math.sqrt(2), "rho": 0.5, "relative_error": math.sqrt(2) / 2}
    )


def test_resilience_where_undefined() -> None:
    g = np.array([1.0, 2.0])
    skipped = resilience(np.zeros(2), g)  # a skipped round: F = 0
    assert math.isnan(skipped["cosine_to_honest"])
    assert skipped["rho"] == 0.0 and skipped["relative_error"] == 1.0
    assert all(math.isnan(v) for v in resilience(g, np.zeros(2)).values())
    assert all(math.isnan(v) for v in resilience(np.array([np.nan, 0.0]), g).values())
    with pytest.raises(ValueError):
        resilience(np.ones(3), g)


def test_precision_and_recall_by_hand() -> None:
    received, byzantine = [0, 1, 2, 3, 4], {0, 1, 9}
    assert filter_precision_recall(received, [0, 1], byzantine) == (1.0, 1.0)
    assert filter_precision_recall(received, [0, 2, 3], byzantine) == (1 / 3, 1 / 2)
    precision, recall = filter_precision_recall(received, [], byzantine)
    assert math.isnan(precision) and recall == 0.0
    precision, recall = filter_precision_recall([2, 3], [3], byzantine)  # no Byzantine received
    assert precision == 0.0 and math.isnan(recall)
    # A rejection of a reply that was not received does not count.
    assert filter_precision_recall([0, 2], [0, 1], byzantine) == (1.0, 1.0)


# --- the probe -------------------------------------------------------------------


def _round_replies(nodes: dict[int, FakeNode], arrays: ArrayRecord) -> list[Message]:
    grid = FakeGrid(nodes)
    strategy = FedAvg(fraction_evaluate=0.0)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    return list(grid.send_and_receive(messages, timeout=2.0))


def _fixed(vector: np.ndarray):
    def respond(message: Message) -> RecordDict:
        return _reply(vector)

    return respond


def test_probe_measures_the_honest_mean_and_changes_nothing() -> None:
    start = np.full(23, 0.5, np.float32)
    a, b = np.linspace(0, 1, 23), np.linspace(1, -1, 23)
    nodes = {
        1: FakeNode(0.0, _fixed(start + a)),
        2: FakeNode(0.0, _fixed(start + b)),
        3: FakeNode(0.0, _fixed(start - 50.0 * a)),  # Byzantine
        4: FakeNode(0.0, missing_arrays),  # malformed: not counted
    }
    arrays = _model(start)
    replies = _round_replies(nodes, arrays)
    probe = HonestMeanProbe({3})
    probe.configure(1, arrays)
    before = [r.content for r in replies]
    checked = [check_train_reply(r, layout_of(arrays)) for r in replies]
    assert probe.transform(1, checked) is checked
    assert [r.content for r in replies] == before
    np.testing.assert_allclose(probe.honest_mean(1), (a + b) / 2, atol=1e-6)
    probed = probe.rounds[1]
    assert sorted(probed.honest_node_ids) == [1, 2]
    assert probed.byzantine_node_ids == [3] and probed.invalid_node_ids == [4]
    assert sorted(probed.valid_node_ids) == [1, 2, 3]
    # F = g_H, then F = -g_H, then a skipped round (F = 0).
    on_target = probe.resilience_of(1, _model((start + (a + b) / 2).astype(np.float32)))
    assert on_target == pytest.approx(
        {"cosine_to_honest": 1.0, "rho": 1.0, "relative_error": 0.0}, abs=1e-5
    )
    opposite = probe.resilience_of(1, _model((start - (a + b) / 2).astype(np.float32)))
    assert opposite == pytest.approx(
        {"cosine_to_honest": -1.0, "rho": -1.0, "relative_error": 2.0}, abs=1e-5
    )
    assert probe.resilience_of(1, arrays)["rho"] == 0.0
    # Another round, or a round without honest replies: undefined.
    assert all(math.isnan(v) for v in probe.resilience_of(2, arrays).values())
    probe.configure(2, arrays)
    probe.transform(2, [r for r in checked if r.node_id == 3])
    assert all(math.isnan(v) for v in probe.resilience_of(2, arrays).values())


def _roles(byzantine: set[int], nodes: Iterable[int]) -> NodeRoles:
    return NodeRoles(partition_of={n: n - 1 for n in nodes}, byzantine=set(byzantine))


@pytest.mark.parametrize(
    ("strategy", "threat_model", "expected"),
    [
        ("dstar", "client", [HonestMeanProbe]),
        ("dstar", "omniscient", [OmniscientAttack, HonestMeanProbe]),
        ("fltrust", "omniscient", [OmniscientAttack, HonestMeanProbe]),
        ("fedavg", "client", [DropMalformedReplies, HonestMeanProbe]),
        ("krum", "omniscient", [OmniscientAttack, DropMalformedReplies, HonestMeanProbe]),
    ],
)
def test_the_probe_is_always_there_and_last(
    strategy: str, threat_model: str, expected: list[type]
) -> None:
    config = run_config(strategy=strategy, threat_model=threat_model, attack="sign-flip")
    built = build_strategy(ExperimentConfig.from_run_config(config), _root_towards_target, 5)
    wrapped = wrap_strategy(built, config, _roles({1}, range(1, 6)), seed=0)
    assert [type(t) for t in wrapped.reply_transforms] == expected  # type: ignore[attr-defined]
    assert probe_of(wrapped) is wrapped.reply_transforms[-1]  # type: ignore[attr-defined]


def _run_with_probe(strategy_name: str, rounds: int = 3) -> tuple[dict[int, dict], HonestMeanProbe]:
    """A ServerApp-like run on a scripted grid: omniscient sign flip from node 6, 7."""
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 8)}
    config = run_config(
        strategy=strategy_name,
        threat_model="omniscient",
        attack="sign-flip",
        attack_scale=10.0,
        num_byzantine=2,
        first_k=7,
    )
    experiment = ExperimentConfig.from_run_config(config)
    built = build_strategy(experiment, _root_towards_target, len(nodes))
    if isinstance(built, DStar):
        built.poll_interval = 0.01
    built.fraction_evaluate = 0.0  # type: ignore[attr-defined]
    wrapped = wrap_strategy(built, config, _roles({6, 7}, nodes), seed=0)
    probe = probe_of(wrapped)
    assert probe is not None
    measured: dict[int, dict] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round:
            measured[server_round] = probe.resilience_of(server_round, arrays)
        return MetricRecord({"x": 0.0})

    wrapped.start(
        grid=FakeGrid(nodes),
        initial_arrays=_model(ZERO),
        num_rounds=rounds,
        timeout=5.0,
        evaluate_fn=evaluate_fn,
    )
    return measured, probe


@pytest.mark.parametrize("strategy", ["dstar", "fltrust"])
def test_robust_strategies_follow_the_honest_mean_under_attack(strategy: str) -> None:
    measured, probe = _run_with_probe(strategy)
    for server_round, values in measured.items():
        assert values["cosine_to_honest"] > 0.9, (server_round, values)
        assert values["rho"] > 0.5
        assert sorted(probe.rounds[server_round].byzantine_node_ids) == [6, 7]
        assert len(probe.rounds[server_round].honest_node_ids) == 5


def test_fedavg_is_pulled_against_the_honest_mean() -> None:
    measured, _ = _run_with_probe("fedavg", rounds=1)
    # F = (5 g - 2 * 10 g) / 7 = -15/7 g.
    assert measured[1] == pytest.approx(
        {"cosine_to_honest": -1.0, "rho": -15 / 7, "relative_error": 22 / 7}, rel=1e-3
    )


# --- the results file --------------------------------------------------------------


def test_results_json_has_the_new_fields_and_nan_as_null(tmp_path: Path) -> None:
    roles = _roles({1}, range(1, 5))  # partitions 0..3, Byzantine partition 0
    rows = [
        RoundRow(1, test_accuracy=0.5, received_partitions=[0, 1, 2], rejected_partitions=[0]),
        RoundRow(2, test_accuracy=0.6, received_partitions=[0, 1, 2], rejected_partitions=[0, 2]),
        RoundRow(3, test_accuracy=0.7, received_partitions=[1, 2, 3]),
    ]
    measured = [(0.9, 0.8, 0.3), (0.5, -0.2, 1.1), (math.nan,) * 3]
    for row, (cos, rho, err) in zip(rows, measured, strict=True):
        row.cosine_to_honest, row.rho, row.relative_error = cos, rho, err
        row.score_rejections({0})
    assert (rows[1].byzantine_precision, rows[1].byzantine_recall) == (0.5, 1.0)
    assert math.isnan(rows[2].byzantine_precision) and math.isnan(rows[2].byzantine_recall)

    summary = summarize(rows, roles)
    assert summary["mean-cosine-to-honest"] == pytest.approx(0.7)
    assert summary["min-rho"] == pytest.approx(-0.2)
    assert summary["mean-relative-error"] == pytest.approx(0.7)
    assert summary["byzantine-precision"] == pytest.approx(2 / 3)
    assert summary["byzantine-recall"] == 1.0
    assert summary["byzantine-rejection-rate"] == 1.0
    assert summary["honest-rejection-rate"] == pytest.approx(1 / 7)

    config = {"strategy": "dstar", "threat-model": "client", "attack": "gaussian", "seed": 1}
    path = write_results(tmp_path / "r.json", run_config=config, roles=roles, rows=rows)
    results = json.loads(path.read_text())
    assert results["strategy"] == "dstar" and results["attack"] == "gaussian"
    assert results["threat-model"] == "client" and results["config"] == config
    assert results["rounds"][0]["cosine_to_honest"] == 0.9
    assert results["rounds"][2]["cosine_to_honest"] is None
    assert results["rounds"][2]["byzantine_precision"] is None
    for key in ("final-test-accuracy", "mean-round-seconds", "byzantine-precision"):
        assert key in results["summary"]


def test_strategies_without_rejections_have_no_precision() -> None:
    rows = [RoundRow(1, received_partitions=[0, 1])]
    summary = summarize(rows, _roles({1}, range(1, 3)))
    assert math.isnan(summary["byzantine-precision"]) and math.isnan(summary["byzantine-recall"])
    assert math.isnan(summary["mean-cosine-to-honest"]) and math.isnan(summary["min-rho"])


# --- FedAvg with a deadline and the reply log ---------------------------------------


def test_fedavg_timeout_ends_the_round_at_its_deadline_and_logs_the_late() -> None:
    nodes = {n: FakeNode(0.01, honest(n)) for n in range(1, 4)}
    nodes[4] = FakeNode(1.0, honest(4))  # straggler
    grid = ReplyLogGrid(FakeGrid(nodes))
    strategy = FedAvgTimeout(train_timeout=0.3, fraction_evaluate=0.0)
    started = time.monotonic()
    result = _start(strategy, grid, rounds=2)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.5
    assert len(grid.train_calls) == 2
    for call in grid.train_calls:
        assert 0.25 < call.seconds < 0.6
        assert call.late_node_ids == [4]
        assert sorted(call.replied_node_ids) == [1, 2, 3]
    assert np.all(np.isfinite(_vector(result.arrays)))


def test_the_deadline_caps_training_only() -> None:
    seen: list[tuple[str, float | None]] = []

    class Recorder(FakeGrid):
        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            kinds = {m.metadata.message_type for m in messages}
            seen.append((",".join(sorted(kinds)), timeout))
            return super().send_and_receive(messages, timeout=timeout)

    nodes = {n: FakeNode(0.01, honest(n)) for n in range(1, 4)}
    strategy = FedAvgTimeout(train_timeout=2.0, fraction_evaluate=1.0)
    _start(strategy, Recorder(nodes), rounds=1, timeout=9.0)  # type: ignore[arg-type]
    assert seen == [("train", 2.0), ("evaluate", 9.0)]
    with pytest.raises(ValueError, match="train_timeout"):
        FedAvgTimeout(train_timeout=0.0)


def test_the_run_config_builds_fedavg_timeout() -> None:
    config = ExperimentConfig.from_run_config(
        run_config(strategy="fedavg-timeout", fedavg_timeout=1.5)
    )
    strategy = build_strategy(config, None, num_nodes=5)
    assert isinstance(strategy, FedAvgTimeout) and strategy.train_timeout == 1.5
    assert not isinstance(build_strategy(config, None, 5), FLTrust)
    with pytest.raises(ValueError, match="fedavg-timeout"):
        ExperimentConfig.from_run_config(run_config(fedavg_timeout=0.0))

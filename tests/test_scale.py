"""Scale: the server's per-round costs, memory that does not grow, and the scale benchmarks.

The quick tests cover the measuring (the ServerApp's CPU meter by step, the
figures computed from results files, the deployment scenario's checks) and that
a DStar server keeps nothing of a round once it is over: over many rounds with
late replies, no reply message outlives its round and the traced memory stays
flat. One small run of each benchmark is marked ``simulation`` or ``deployment``.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import tracemalloc
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from dstar_flwr import DStar
from dstar_flwr.report import RoundReport
from simulations.app.experiment import ExperimentConfig, build_strategy
from simulations.app.server_costs import (
    AGGREGATE,
    CHECKS,
    CONFIGURE,
    EVALUATION,
    GRID,
    HARNESS,
    STRATEGY,
    VALIDATION,
    RoundCost,
    RoundMeter,
    rss_bytes,
)
from simulations.benchmarks.scale.__main__ import main
from simulations.benchmarks.scale.deployment import (
    DeploymentSetting,
    Kill,
    check,
    current_round,
    run_deployment,
)
from simulations.benchmarks.scale.engine import EngineSetting, rounds_figures, run_engine
from simulations.benchmarks.scale.figures import (
    compare,
    format_costs_table,
    logged_rounds,
    lost_rounds,
    memory_is_flat,
    round_outcomes,
    slope,
    summarize_costs,
    write_costs_csv,
)
from simulations.federation.deploy import (
    SUPERLINK_WITH_BUSY_TIMEOUT,
    LocalFederation,
    processes_below,
    processes_with_home,
)
from simulations.federation.link_state import node_offline, run_state

from .fake_grid import FakeGrid, FakeNode

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the ServerApp's meter ------------------------------------------------------


def test_the_meter_charges_each_second_to_the_innermost_step() -> None:
    cpu, wall = FakeClock(), FakeClock()
    meter = RoundMeter(cpu_clock=cpu, wall_clock=wall, rss=lambda: 123)
    meter.round_start()
    cpu.now += 1.0  # strategy
    with meter.step(GRID):
        cpu.now += 0.5
        with meter.step(HARNESS):
            cpu.now += 0.25
        cpu.now += 0.5
    with meter.step(VALIDATION):
        cpu.now += 2.0
    wall.now += 10.0
    with meter.round_end(1):
        cpu.now += 4.0  # the evaluation
    cpu.now += 0.125  # round 2 starts
    with meter.round_end(2):
        pass

    first, second = meter.rounds
    assert first.server_round == 1
    assert first.cpu_seconds == {
        STRATEGY: 1.0,
        GRID: 1.0,
        HARNESS: 0.25,
        VALIDATION: 2.0,
        EVALUATION: 4.0,
    }
    assert first.server_cpu_seconds == 2.0  # strategy + grid: outside the clients
    assert first.wall_seconds == 10.0
    assert first.rss_bytes == 123
    assert second.server_cpu_seconds == 0.125
    record = first.to_dict()
    assert record["server-cpu-seconds"] == 2.0
    assert record["validation-update-cpu-seconds"] == 2.0
    assert record["evaluation-cpu-seconds"] == 4.0


def test_round_zero_is_not_recorded_and_starts_round_one() -> None:
    cpu = FakeClock()
    meter = RoundMeter(cpu_clock=cpu, wall_clock=FakeClock(), rss=lambda: 0)
    cpu.now += 9.0  # before start: not a round's
    meter.round_start()
    cpu.now += 1.0
    with meter.round_end(0):  # the initial evaluation
        cpu.now += 3.0
    cpu.now += 0.5
    with meter.round_end(1):
        pass
    assert [c.server_round for c in meter.rounds] == [1]
    assert meter.rounds[0].server_cpu_seconds == 0.5


def test_timed_functions_and_methods_are_charged_to_their_step() -> None:
    cpu = FakeClock()
    meter = RoundMeter(cpu_clock=cpu, wall_clock=FakeClock(), rss=lambda: 0)

    def train(seconds: float) -> str:
        cpu.now += seconds
        return "trained"

    class Probe:
        def transform(self, server_round: int, replies: list[int]) -> list[int]:
            cpu.now += 0.5
            return replies

    probe = Probe()
    meter.time_method(probe, "transform", HARNESS)
    assert meter.timed(VALIDATION, train)(2.0) == "trained"
    assert probe.transform(1, [1, 2]) == [1, 2]
    assert isinstance(probe, Probe)
    with meter.round_end(1):
        pass
    assert meter.rounds[0].cpu_seconds[VALIDATION] == 2.0
    assert meter.rounds[0].cpu_seconds[HARNESS] == 0.5


def test_the_metered_grid_delegates_and_charges_the_grid_step() -> None:
    meter = RoundMeter(rss=lambda: 0)
    grid = FakeGrid({1: FakeNode(0.0, lambda m: RecordDict())})
    metered = meter.grid(grid)
    assert list(metered.get_node_ids()) == [1]
    message = Message(RecordDict(), dst_node_id=1, message_type="query")
    replies = list(metered.send_and_receive([message], timeout=5))
    assert len(replies) == 1
    with meter.round_end(1):
        pass
    assert meter.rounds[0].cpu_seconds[GRID] > 0


def test_dstars_steps_are_metered_in_a_run() -> None:
    """DStar on a scripted grid: its sampling, reply checks and rule each get their time."""
    nodes = {i: _node(i, 0.0) for i in range(1, 6)}
    strategy = DStar(num_byzantine=1, first_k=4, poll_interval=0.002, fraction_evaluate=0.0)
    meter = RoundMeter()
    meter.instrument(strategy)
    grid = meter.grid(FakeGrid(nodes))

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        with meter.round_end(server_round):
            return None

    meter.round_start()
    initial = ArrayRecord({"w": Array(np.zeros(1000, dtype=np.float32))})
    strategy.start(grid, initial, num_rounds=3, timeout=5.0, evaluate_fn=evaluate_fn)
    assert [c.server_round for c in meter.rounds] == [1, 2, 3]
    for cost in meter.rounds:
        for step in (CONFIGURE, CHECKS, AGGREGATE, GRID, STRATEGY):
            assert cost.cpu_seconds[step] > 0, step
        assert cost.server_cpu_seconds == pytest.approx(
            sum(cost.cpu_seconds[s] for s in (CONFIGURE, CHECKS, AGGREGATE, GRID, STRATEGY))
        )


def test_rss_is_the_process_memory() -> None:
    assert rss_bytes() > 10 * 2**20


def test_the_harness_of_flowers_strategies_is_timed_apart(tmp_path: Path) -> None:
    """FedAvg behind the guard and the probe: the guard's reply checks are harness time."""
    from simulations.app.adversary import wrap_strategy
    from simulations.app.results import NodeRoles

    config = ExperimentConfig.from_run_config(_run_config(strategy="fedavg"))
    strategy = wrap_strategy(build_strategy(config, None, 10), _run_config(), NodeRoles(), seed=0)
    meter = RoundMeter(rss=lambda: 0)
    meter.instrument(strategy)
    assert strategy.check_and_transform.__wrapped__  # type: ignore[attr-defined]
    assert all(t.transform.__wrapped__ for t in strategy.reply_transforms)  # type: ignore[attr-defined]
    inner = strategy.strategy  # type: ignore[attr-defined]
    assert inner.configure_train.__wrapped__ and inner.aggregate_train.__wrapped__


# --- the run config -----------------------------------------------------------


def _run_config(**overrides: object) -> dict[str, object]:
    config = dict(tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"])
    config.update({key.replace("_", "-"): value for key, value in overrides.items()})
    return config


def test_fraction_train_samples_a_share_of_the_nodes() -> None:
    for strategy in ("dstar", "fedavg"):
        config = ExperimentConfig.from_run_config(
            _run_config(strategy=strategy, fraction_train=0.1, first_k=80, num_byzantine=10)
        )
        built = build_strategy(config, None, 1000)
        assert built.fraction_train == 0.1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="fraction-train"):
        ExperimentConfig.from_run_config(_run_config(fraction_train=0.0))
    # A run config written before the key samples every node.
    legacy = _run_config()
    del legacy["fraction-train"]
    assert ExperimentConfig.from_run_config(legacy).fraction_train == 1.0


def test_the_engine_setting_is_the_issues_federation() -> None:
    setting = EngineSetting()
    overrides = setting.overrides("dstar", Path("/tmp/x"))
    assert (setting.num_nodes, setting.sampled, setting.k, setting.rounds) == (1000, 100, 80, 20)
    assert overrides["fraction-train"] == 0.1
    assert overrides["first-k"] == 80
    assert overrides["num-byzantine"] == 10
    assert overrides["byzantine-fraction"] == 0.1
    assert overrides["latency-model"] == "log-normal"
    config = ExperimentConfig.from_run_config(_run_config(**{**overrides}))
    assert config.fraction_train == 0.1 and config.first_k == 80
    with pytest.raises(ValueError, match="k must be"):
        EngineSetting(sampled=10, k=11)
    with pytest.raises(SystemExit):
        main(["engine", "--sampled", "10", "--k", "20"])


# --- the figures ----------------------------------------------------------------


def _costs(server: list[float], rss: list[int], validation: float = 0.0) -> list[dict]:
    return [
        RoundCost(
            r + 1,
            {STRATEGY: s * 0.75, GRID: s * 0.25, VALIDATION: validation, EVALUATION: 0.01},
            1.0,
            m,
        ).to_dict()
        for r, (s, m) in enumerate(zip(server, rss, strict=True))
    ]


def test_slope_is_the_least_squares_slope() -> None:
    assert slope([1, 2, 3, 4], [10, 12, 14, 16]) == pytest.approx(2.0)
    assert slope([1, 2, 3], [5, 5, 5]) == 0.0
    assert math.isnan(slope([1], [1]))
    with pytest.raises(ValueError):
        slope([1, 2], [1])


def test_summaries_leave_round_one_out_of_the_steady_figures() -> None:
    mib = 2**20
    summary = summarize_costs(
        _costs([4.0, 0.1, 0.1, 0.1], [100 * mib, 101 * mib, 101 * mib, 101 * mib])
    )
    assert summary.server_cpu_first == 4.0
    assert summary.server_cpu_steady == pytest.approx(0.1)
    assert summary.server_cpu_all == pytest.approx(4.3 / 4)
    assert summary.grid_cpu_steady == pytest.approx(0.025)
    assert summary.rss_growth == mib
    assert summary.rss_slope == 0.0
    assert memory_is_flat(summary, 1024)
    growing = summarize_costs(_costs([0.1] * 4, [m * mib for m in (100, 101, 102, 103)]))
    assert growing.rss_slope == pytest.approx(mib)
    assert not memory_is_flat(growing, 512 * 1024)
    with pytest.raises(ValueError, match="no server costs"):
        summarize_costs([])


def test_the_comparison_is_dstars_time_over_fedavgs() -> None:
    dstar = summarize_costs(_costs([3.0, 0.375, 0.375], [1, 1, 1], validation=0.125))
    fedavg = summarize_costs(_costs([0.25, 0.25, 0.25], [1, 1, 1]))
    comparison = compare(dstar, fedavg, target=1.5)
    assert comparison.ratio == 1.5
    assert comparison.within_target
    assert comparison.ratio_with_validation == 2.0
    assert comparison.ratio_all_rounds == pytest.approx(3.75 / 0.75)
    assert not compare(dstar, fedavg, target=1.2).within_target


def test_costs_are_written_as_csv_and_tabled(tmp_path: Path) -> None:
    runs = {"dstar": _costs([0.2, 0.1], [2**20, 2**20]), "fedavg": _costs([0.1], [2**20])}
    path = write_costs_csv(tmp_path / "costs.csv", runs)
    rows = list(csv.DictReader(path.open()))
    assert [(r["run"], r["server-round"]) for r in rows] == [
        ("dstar", "1"),
        ("dstar", "2"),
        ("fedavg", "1"),
    ]
    assert float(rows[1]["server-cpu-seconds"]) == pytest.approx(0.1)
    table = format_costs_table(runs).splitlines()
    assert len(table) == 3 and "-" in table[2]


def _report_lines(*reports: RoundReport) -> str:
    """What DStar logs for ``reports``, as the run's log holds it."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append("INFO :      " + record.getMessage())

    logger = logging.getLogger("flwr")
    handler = Keep()
    logger.addHandler(handler)
    try:
        for report in reports:
            report.log()
    finally:
        logger.removeHandler(handler)
    return "\n".join(records)


def test_the_rounds_dstar_logged_are_read_back_with_skip_reasons() -> None:
    done = RoundReport(3, num_sampled=20, k=16, round_seconds=4.25, accepted_node_ids=[1])
    skipped = RoundReport(4, num_sampled=20, k=16, round_seconds=120.0)
    skipped.skip("too few valid replies (2)")
    none_sent = RoundReport(5)
    none_sent.skip("2 nodes sampled, a round needs 5", too_few_nodes=True)
    log = _report_lines(done, skipped, none_sent)
    assert logged_rounds(log) == {
        3: None,
        4: "too few valid replies (2)",
        5: "2 nodes sampled, a round needs 5",
    }


def test_round_outcomes_and_lost_rounds() -> None:
    rows = [
        {"server_round": 1, "skipped": False, "received_partitions": [1, 2]},
        {"server_round": 2, "skipped": True, "received_partitions": []},
        {"server_round": 4, "skipped": True, "received_partitions": []},
    ]
    outcomes = round_outcomes(rows, {2: "too few valid replies (1)"}, 4)
    assert [(o.completed, o.skip_reason, o.accounted_for) for o in outcomes] == [
        (True, None, True),
        (False, "too few valid replies (1)", True),
        (False, None, False),  # missing from the results
        (False, None, False),  # skipped, but no reason was logged
    ]
    checkpointed = [
        {"server_round": 1, "received_partitions": [1, 2]},
        {"server_round": 2, "received_partitions": [3]},
    ]
    assert lost_rounds(checkpointed, rows, keys=("server_round", "received_partitions")) == [2]
    assert lost_rounds(checkpointed[:1], rows, keys=("server_round", "received_partitions")) == []


# --- the deployment scenario's checks -----------------------------------------------


def test_deployment_settings_fail_fast_and_kills_parse() -> None:
    assert Kill.parse("2:5") == Kill(2, 5)
    with pytest.raises(ValueError, match="ROUND:NODE"):
        Kill.parse("two")
    with pytest.raises(ValueError, match="killed once"):
        DeploymentSetting(kills=(Kill(2, 5), Kill(3, 5)))
    with pytest.raises(ValueError, match="nodes are"):
        DeploymentSetting(num_supernodes=4, kills=(Kill(2, 5),))
    with pytest.raises(ValueError, match="stop_after"):
        DeploymentSetting(rounds=5, stop_after=5)
    setting = DeploymentSetting()
    assert (setting.num_supernodes, setting.rounds, len(setting.kills)) == (20, 10, 3)
    assert len({k.server_round for k in setting.kills}) == 3  # at different rounds
    overrides = setting.overrides(Path("/r"), Path("/c"))
    config = ExperimentConfig.from_run_config(_run_config(**overrides))
    assert config.checkpoint_dir == Path("/c") and config.strategy == "dstar"


def test_current_round_is_the_last_round_started() -> None:
    assert current_round("") == 0
    assert current_round("INFO : [ROUND 1/10]\n...\nINFO : [ROUND 2/10]\n") == 2


def _state_database(path: Path, run_id: int, messages: int, node_until: float) -> Path:
    signed = run_id - 2**64 if run_id >= 2**63 else run_id
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE message_ins (message_id VARCHAR, run_id BIGINT)")
        db.execute("CREATE TABLE message_res (message_id VARCHAR, run_id BIGINT)")
        db.execute("CREATE TABLE node (node_id BIGINT, status VARCHAR, online_until FLOAT)")
        for index in range(messages):
            db.execute("INSERT INTO message_ins VALUES (?, ?)", (f"m{index}", signed))
        db.execute("INSERT INTO message_ins VALUES ('other', 7)")
        db.execute("INSERT INTO node VALUES (?, 'online', ?)", (signed, node_until))
    return path


def test_run_state_counts_the_runs_messages_by_table(tmp_path: Path) -> None:
    big = 2**63 + 5  # stored as a negative signed 64-bit integer
    database = _state_database(tmp_path / "state.db", big, 3, time.time() + 60)
    assert run_state(database, big) == {"message_ins": 3, "message_res": 0}
    assert run_state(database, 99) == {"message_ins": 0, "message_res": 0}
    assert not node_offline(database, big)
    assert node_offline(database, big, now=time.time() + 120)
    assert not node_offline(database, 12345)  # unknown


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_closing_a_federation_stops_what_detached_from_its_supernodes(tmp_path: Path) -> None:
    # Like Flower's SuperExec: started in a session of its own, reparented to init,
    # with the federation's FLWR_HOME in its environment.
    home = tmp_path / "supernode-0" / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home)}
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True
    )
    try:
        assert processes_with_home(tmp_path) == [stray.pid]
        assert processes_with_home(tmp_path / "other") == []
        federation = LocalFederation(1)
        federation.work_dir = tmp_path
        federation.close()
        assert stray.wait(timeout=10) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_federation_sees_when_the_superlinks_superexec_has_exited() -> None:
    # A stand-in SuperLink whose child carries "flower-superexec" on its command line.
    child = (
        "import subprocess, sys, time\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(600)', 'flower-superexec']\n"
        "subprocess.Popen(sleeper)\n"
        "time.sleep(600)\n"
    )
    superlink = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
    federation = LocalFederation(1)
    federation.superlink = superlink
    try:
        deadline = time.monotonic() + 30
        while not federation.serverapp_superexec_alive():
            assert time.monotonic() < deadline, "the stand-in SuperExec never showed up"
            time.sleep(0.1)
        superexec = next(
            pid
            for pid in processes_below(superlink.pid)
            if b"flower-superexec" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(superexec, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while federation.serverapp_superexec_alive():
            assert time.monotonic() < deadline, "the exited SuperExec still counts as running"
            time.sleep(0.1)
    finally:
        os.killpg(superlink.pid, signal.SIGKILL)
        superlink.wait()


def test_the_superlink_can_be_started_with_another_sqlite_busy_timeout() -> None:
    run = [sys.executable, "-c", SUPERLINK_WITH_BUSY_TIMEOUT, "60000", "--help"]
    shown = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr  # the milliseconds are not taken as an argument
    assert "flower-superlink" in shown.stdout
    # What the SuperLink's SQL code would set on each connection:
    probe = SUPERLINK_WITH_BUSY_TIMEOUT.replace(
        "sys.exit(flower_superlink())",
        "import flwr.supercore.sql_mixin as m; print(dict(m.SQLITE_PRAGMAS)['busy_timeout'])",
    )
    pragmas = subprocess.run(
        [sys.executable, "-c", probe, "60000"], capture_output=True, text=True, timeout=120
    )
    assert pragmas.stdout.strip() == "60000", pragmas.stderr
    with pytest.raises(ValueError, match="sqlite_busy_timeout"):
        LocalFederation(1, sqlite_busy_timeout=0)


def test_the_deployment_check_accounts_for_every_round() -> None:
    setting = DeploymentSetting(num_supernodes=4, rounds=3, kills=(Kill(1, 3),), stop_after=1)
    rows = [
        {"server_round": 1, "skipped": False, "received_partitions": [0, 1, 2]},
        {"server_round": 2, "skipped": True, "received_partitions": []},
        {"server_round": 3, "skipped": False, "received_partitions": [0, 1, 2]},
    ]
    for row in rows:
        row |= {"rejected_partitions": [], "test_accuracy": 0.5}
    skipped = RoundReport(2, num_sampled=4, k=3, round_seconds=60.0)
    skipped.skip("too few valid replies (2)")
    logs = {
        "first": _report_lines(RoundReport(1, 4, 3, round_seconds=3.0)),
        "resumed": _report_lines(skipped, RoundReport(3, 4, 3, round_seconds=3.0)),
    }
    figures = check(
        setting,
        results={"rounds": rows, "resumed-after-round": 1, "summary": {}, "server-costs": []},
        checkpoint_rows=rows[:1],
        checkpointed_round=1,
        logs=logs,
        statuses={"first": "finished:stopped", "resumed": "finished:completed"},
        state_at_results={"first": {"message_ins": 0}, "resumed": {"message_ins": 0}},
        state_at_end={"first": {"message_ins": 0}, "resumed": {"message_res": 0}},
        restarted_ids={3: (77, 77)},
    )
    assert figures["passed"], figures["checks"]
    assert (figures["completed"], figures["skipped"]) == (2, 1)
    assert figures["rounds"][1]["skip_reason"] == "too few valid replies (2)"
    assert figures["rounds-run-again-after-resume"] == []

    lost = [dict(rows[0], received_partitions=[9])]
    figures = check(
        setting,
        results={"rounds": rows[:2], "resumed-after-round": 1, "summary": {}},
        checkpoint_rows=lost,
        checkpointed_round=1,
        logs={"first": "", "resumed": ""},
        statuses={"first": "finished:stopped", "resumed": "finished:completed"},
        state_at_results={"first": {}, "resumed": {"message_ins": 2}},
        state_at_end={"first": {}, "resumed": {"message_ins": 2}},
        restarted_ids={3: (77, None)},
    )
    assert not figures["passed"]
    assert {name for name, held in figures["checks"].items() if not held} == {
        "every-round-completed-or-skipped-with-reason",
        "no-completed-round-lost",
        "restarted-with-the-same-node-id",
        "nothing-left-in-superlink-state",
    }


# --- nothing of a round stays on the server -------------------------------------------

DIMENSION = 50_000  # 200 kB per reply: one kept reply per round would show at once


class _WatchedGrid(FakeGrid):
    """A FakeGrid that keeps no history and watches every reply it hands out."""

    def __init__(self, nodes: dict[int, FakeNode]) -> None:
        super().__init__(nodes)
        self.replies: list[weakref.ref[Message]] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = list(super().push_messages(messages))
        self.pushed.clear()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.pulled_reply_ids.clear()
        self.replies.extend(weakref.ref(reply) for reply in replies)
        return replies


def _node(seed: int, delay: float) -> FakeNode:
    rng = np.random.default_rng(seed)

    def respond(message: Message) -> RecordDict:
        current = message.content["arrays"]["w"].numpy()
        step = rng.normal(scale=0.01, size=current.shape).astype(np.float32)
        return RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(current + step)}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )

    return FakeNode(delay, respond)


def test_many_rounds_with_late_replies_keep_nothing_on_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """40 DStar rounds, 4 of 10 nodes late every round they are sampled in.

    Every late reply is pulled and discarded; no reply message outlives its
    round; nothing is left in the grid's state; and the traced memory from round
    10 to round 40 grows by less than a tenth of a reply a round (what grows is
    the Result's per-round reports, about 2 kB a round).
    """
    nodes = {i: _node(i, 0.0) for i in range(1, 7)}
    nodes.update({i: _node(i, 0.03) for i in range(7, 11)})
    grid = _WatchedGrid(nodes)
    strategy = DStar(num_byzantine=1, first_k=6, poll_interval=0.002, fraction_evaluate=0.0)
    traced: dict[int, int] = {}
    live: dict[int, int] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        gc.collect()
        traced[server_round] = tracemalloc.get_traced_memory()[0]
        # The replies of earlier rounds (this round's kept ones die with the round).
        live[server_round] = sum(ref() is not None for ref in grid.replies)
        return None

    initial = ArrayRecord({"w": Array(np.zeros(DIMENSION, dtype=np.float32))})
    caplog.set_level(logging.WARNING, logger="flwr")  # captured log records would grow
    tracemalloc.start()
    try:
        result = strategy.start(grid, initial, num_rounds=40, timeout=5.0, evaluate_fn=evaluate_fn)
    finally:
        tracemalloc.stop()
    gc.collect()

    drained = sum(int(m["num-drained-late"]) for m in result.train_metrics_clientapp.values())
    late = sum(int(m["num-late"]) for m in result.train_metrics_clientapp.values())
    assert late > 20 and drained > 20  # late replies were there, and were discarded
    assert grid.stored == 0  # nothing left in the "SuperLink"
    assert all(ref() is None for ref in grid.replies)  # no reply outlives the run
    assert max(live[r] for r in range(2, 41)) <= 10  # at most one round's replies at a time
    # What is alive at the end of a round varies by a model or two (the messages of
    # the nodes still busy hold the global model they were sent); a leak of one late
    # reply every other round (100 kB a round) would show as a steep slope.
    rounds = list(range(10, 41))
    per_round = slope(rounds, [traced[r] for r in rounds])
    assert per_round < 0.1 * 4 * DIMENSION, f"traced memory grows {per_round:.0f} B a round"


# --- one small run of each benchmark --------------------------------------------------


@pytest.mark.simulation
def test_engine_benchmark_smoke(tmp_path: Path) -> None:
    setting = EngineSetting(num_nodes=10, sampled=5, k=4, rounds=2, num_byzantine=1, max_parallel=5)
    figures = run_engine(setting, tmp_path)
    for name in ("dstar", "fedavg"):
        results = json.loads((tmp_path / f"scale-engine-{name}.json").read_text())
        assert [c["server-round"] for c in results["server-costs"]] == [1, 2]
        assert rounds_figures(results)["completed"] == 2
        run = figures["runs"][name]  # type: ignore[index]
        assert run["server-cpu-s-per-round"] > 0 and run["rss-mib-last"] > 50
        assert all(r["received_partitions"] for r in results["rounds"])
    dstar_rounds = json.loads((tmp_path / "scale-engine-dstar.json").read_text())["rounds"]
    assert all(len(r["received_partitions"]) == 4 for r in dstar_rounds)  # k of 5 sampled
    comparison = figures["dstar-over-fedavg"]
    assert math.isfinite(comparison["ratio"])  # type: ignore[index]
    assert (tmp_path / "scale-engine.csv").exists()
    assert json.loads((tmp_path / "scale-engine.json").read_text())["setting"]["k"] == 4


@pytest.mark.deployment
def test_deployment_benchmark_smoke(tmp_path: Path) -> None:
    setting = DeploymentSetting(
        num_supernodes=4,
        rounds=2,
        kills=(Kill(1, 3),),
        stop_after=1,
        first_k=3,
        num_byzantine=1,
        byzantine_fraction=0.25,
        run_limit=400,
    )
    figures = run_deployment(setting, tmp_path)
    assert figures["passed"], json.dumps(figures, indent=1)
    assert figures["leftovers-at-end"] == 0
    kinds = [event["event"] for event in figures["events"]]  # type: ignore[attr-defined]
    assert kinds.index("kill") < kinds.index("stop") < kinds.index("resume")
    assert "restart" in kinds

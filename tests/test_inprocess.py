"""The in-process Grid answers as the ClientApp would, on the latency model's clock."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from clients.attacks import flatten_arrays
from clients.client_app import train
from clients.models import build_model
from simulations.federation.inprocess import FIRST_NODE_ID, InProcessGrid, run_inprocess

from .node_support import run_config

NUM_NODES = 4


class FakeClock:
    """A clock that moves only when the grid sleeps or the test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _grid(config: dict[str, object], clock: FakeClock | None = None) -> InProcessGrid:
    clock = clock or FakeClock()
    return InProcessGrid(config, NUM_NODES, clock=clock, sleep=clock.sleep)


def _train_messages(ttl: float | None = None, server_round: int = 3) -> list[Message]:
    arrays = ArrayRecord(build_model("digits", seed=0).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return [Message(content, FIRST_NODE_ID + pid, "train", ttl=ttl) for pid in range(NUM_NODES)]


def test_train_replies_are_the_client_apps_own() -> None:
    """Honest, label-flipping and count-inflating nodes reply as clients.client_app.train."""
    config = run_config(
        num_byzantine_nodes=2, attack="label-flip", claimed_num_examples=5000, local_epochs=2
    )
    grid = _grid(config)
    messages = _train_messages()
    ids = list(grid.push_messages(messages))
    replies = {r.metadata.src_node_id: r for r in grid.pull_messages(ids)}
    assert len(replies) == NUM_NODES and grid.stored == 0
    for message in messages:
        node_id = message.metadata.dst_node_id
        expected = train(message, grid.contexts[node_id])
        got = replies[node_id]
        assert got.metadata.reply_to_message_id == message.metadata.message_id
        np.testing.assert_allclose(
            flatten_arrays(got.content["arrays"]),
            flatten_arrays(expected.content["arrays"]),
            rtol=0,
            atol=2e-6,
        )
        metrics, expected_metrics = got.content["metrics"], expected.content["metrics"]
        assert metrics["num-examples"] == expected_metrics["num-examples"]
        assert metrics["train-loss"] == pytest.approx(expected_metrics["train-loss"], rel=1e-5)
    claims = [replies[FIRST_NODE_ID + pid].content["metrics"]["num-examples"] for pid in range(4)]
    assert claims[:2] == [5000, 5000] and all(c < 5000 for c in claims[2:])


def test_a_reply_waits_for_its_latency_and_earliest_comes_first() -> None:
    config = run_config(latency_model="profile", latency_profile="0:0.3,1:0.1,2:0.2,3:0.4")
    clock = FakeClock()
    grid = _grid(config, clock)
    ids = list(grid.push_messages(_train_messages()))
    assert list(grid.pull_messages(ids)) == []
    clock.now = 0.25
    early = list(grid.pull_messages(ids))
    assert [r.metadata.src_node_id - FIRST_NODE_ID for r in early] == [1, 2]
    clock.now = 1.0
    late = list(grid.pull_messages(ids))
    assert [r.metadata.src_node_id - FIRST_NODE_ID for r in late] == [0, 3]
    assert late[0].content["metrics"]["delay-seconds"] == pytest.approx(0.3)


def test_a_message_whose_ttl_passes_first_gets_the_expiry_error() -> None:
    config = run_config(latency_model="profile", latency_profile="0:5.0")
    clock = FakeClock()
    grid = _grid(config, clock)
    ids = list(grid.push_messages(_train_messages(ttl=1.0)))
    clock.now = 2.0
    replies = {r.metadata.src_node_id - FIRST_NODE_ID: r for r in grid.pull_messages(ids)}
    assert replies[0].has_error() and "expired" in replies[0].error.reason
    assert not any(replies[pid].has_error() for pid in (1, 2, 3))


def test_send_and_receive_sleeps_to_each_reply_and_stops_at_the_timeout() -> None:
    config = run_config(latency_model="profile", latency_profile="0:0.5,3:9.0")
    clock = FakeClock()
    grid = _grid(config, clock)
    replies = list(grid.send_and_receive(_train_messages(), timeout=2.0))
    assert sorted(r.metadata.src_node_id - FIRST_NODE_ID for r in replies) == [0, 1, 2]
    assert clock.now == pytest.approx(2.0)
    assert grid.stored == 1  # the slow reply stays until pulled, as in a SuperLink


def test_a_crashing_node_replies_with_an_error_and_the_others_train() -> None:
    config = run_config(crash_partitions="2", crash_probability=1.0)
    grid = _grid(config)
    ids = list(grid.push_messages(_train_messages()))
    replies = {r.metadata.src_node_id - FIRST_NODE_ID: r for r in grid.pull_messages(ids)}
    assert replies[2].has_error() and "Crash" in replies[2].error.reason
    assert all("arrays" in replies[pid].content for pid in (0, 1, 3))


def test_query_goes_to_the_client_apps_handler() -> None:
    grid = _grid(run_config(num_byzantine_nodes=1))
    message = Message(RecordDict(), FIRST_NODE_ID + 0, "query")
    (reply,) = grid.send_and_receive([message], timeout=1.0)
    assert reply.content["metrics"]["partition-id"] == 0
    assert "is-byzantine" not in reply.content["metrics"]  # the harness knows, not the node


def test_run_inprocess_runs_the_server_app_and_writes_its_results(tmp_path) -> None:
    overrides = {
        key: value
        for key, value in run_config(
            strategy="dstar",
            num_server_rounds=2,
            num_byzantine_nodes=1,
            num_byzantine=1,
            attack="sign-flip",
            threat_model="omniscient",
            first_k=NUM_NODES,
            results_dir=str(tmp_path),
            run_name="tiny",
        ).items()
    }
    path = run_inprocess(overrides, num_supernodes=NUM_NODES, quiet=True)
    results = json.loads(path.read_text())
    assert path == tmp_path / "tiny.json"
    assert len(results["rounds"]) == 2
    assert 0.0 <= results["summary"]["final-test-accuracy"] <= 1.0
    assert results["byzantine-partitions"] == [0]
    with pytest.raises(ValueError, match="unknown run-config keys"):
        run_inprocess({"no-such-key": 1}, num_supernodes=NUM_NODES)


def test_compare_runs_in_process(capsys) -> None:
    from simulations.benchmarks.compare import main

    config = "latency-model='none' num-stragglers=0 local-epochs=1 attack='sign-flip'"
    assert (
        main(["--engine", "inprocess", "--num-supernodes", "5", "--rounds", "2", "-c", config]) == 0
    )
    out = capsys.readouterr().out
    assert "engine inprocess" in out and "dstar - fedavg: accuracy" in out


@pytest.mark.simulation
@pytest.mark.parametrize(("strategy", "attack"), [("dstar", "alie"), ("multikrum", "inflation")])
def test_the_in_process_engine_reproduces_flowers_engine(tmp_path, strategy: str, attack: str):
    """The same attack-grid cell on both engines: the same accuracy, round by round.

    Not for the tailored attacks: they seed their surrogates from a hash of the honest
    mean, whose last bits depend on the order the replies arrived in (and on float
    rounding), so on the two engines they draw different surrogates and agree only in
    distribution. The stragglers' latencies are on, but every reply is kept (first-k = 1):
    which k replies come first on Flower's engine depends on the machine's load, so with
    fewer the two engines would be averaging different replies.
    """
    from simulations.benchmarks.attack_grid import Cell, Settings
    from simulations.federation.launch import run_simulation

    settings = Settings(num_nodes=10, rounds=3, straggler_first_k=1.0)
    cell = Cell("digits", "dir0.5", 0.2, attack, strategy, "true", 0)
    accuracy = {}
    for name, run in (("inprocess", run_inprocess), ("flower", run_simulation)):
        overrides = cell.overrides(settings.num_nodes, settings)
        overrides.update({"results-dir": str(tmp_path / name), "run-name": cell.cell_id})
        results = json.loads(run(overrides, num_supernodes=10, quiet=True).read_text())
        accuracy[name] = [r["test_accuracy"] for r in results["rounds"]]
    assert len(accuracy["flower"]) == 3
    assert accuracy["inprocess"] == pytest.approx(accuracy["flower"], abs=2e-3)

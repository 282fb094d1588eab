"""Checkpoints: the file format, atomic saves, and DStar and the ServerApp resuming from them."""

import json
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dstar_flwr import Checkpoint, CheckpointError, DStar, load_checkpoint, save_checkpoint
from dstar_flwr import checkpoint as checkpoint_module
from dstar_flwr.checkpoint import layout_differences
from simulations.app.experiment import ExperimentConfig
from simulations.app.results import NodeRoles, RoundRow, write_results

from .fake_grid import FakeGrid, FakeNode
from .node_support import run_config

TARGET = np.linspace(-1, 1, 23).astype(np.float32)


def _model(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w": Array(vector[:20].copy()), "b": Array(vector[20:].copy())})


def _vector(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record["w"].numpy(), record["b"].numpy()])


def _deterministic_node(node_id: int):
    """An honest node whose reply depends only on the global model, itself and the round."""

    def respond(message: Message) -> RecordDict:
        server_round = int(message.content["config"]["server-round"])
        rng = np.random.default_rng([node_id, server_round])
        current = _vector(message.content["arrays"])
        step = 0.5 * (TARGET - current) + 0.01 * rng.normal(size=current.size)
        return RecordDict(
            {
                "arrays": _model((current + step).astype(np.float32)),
                "metrics": MetricRecord({"train-loss": 1.0 / server_round, "num-examples": 10}),
            }
        )

    return respond


class RoundLogGrid(FakeGrid):
    """A FakeGrid that notes the round of every training message when it is pushed.

    (The strategy reuses one ConfigRecord, so a message's ``server-round`` is
    only right until the next round is configured.)
    """

    def __init__(self, nodes: dict[int, FakeNode]) -> None:
        super().__init__(nodes)
        self.train_rounds: list[int] = []

    def push_messages(self, messages):
        messages = list(messages)
        for message in messages:
            if message.metadata.message_type == "train":
                self.train_rounds.append(int(message.content["config"]["server-round"]))
        return super().push_messages(messages)


def _grid() -> RoundLogGrid:
    return RoundLogGrid({n: FakeNode(0.01 * n, _deterministic_node(n)) for n in range(1, 5)})


def _dstar() -> DStar:
    return DStar(num_byzantine=1, first_k=4, fraction_evaluate=0.0, poll_interval=0.01)


def _start(grid: FakeGrid, rounds: int, **checkpointing: object) -> tuple[DStar, Result]:
    strategy = _dstar()
    result = strategy.start(
        grid=grid,
        initial_arrays=_model(np.zeros(23, np.float32)),
        num_rounds=rounds,
        timeout=5.0,
        train_config=ConfigRecord({"lr": 0.1}),
        evaluate_fn=lambda r, arrays: MetricRecord(
            {"norm": float(np.linalg.norm(_vector(arrays)))}
        ),
        **checkpointing,  # type: ignore[arg-type]
    )
    return strategy, result


def _sample_checkpoint(server_round: int = 2) -> Checkpoint:
    arrays = ArrayRecord(
        {
            "features.0.weight": Array(np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
            "head/bias": Array(np.array([np.nan, -np.inf, 1e-30], dtype=np.float64)),
            "bn.num_batches_tracked": Array(np.array(17, dtype=np.int64)),
            "mask": Array(np.array([True, False])),
            "empty": Array(np.zeros((0, 3), dtype=np.float16)),
        }
    )
    result = Result()
    result.train_metrics_clientapp[1] = MetricRecord(
        {"num-accepted": 3, "rejected-node-ids": [7, 9], "late-node-ids": [], "loss": math.nan}
    )
    result.train_metrics_clientapp[2] = MetricRecord({"num-accepted": 4, "scale": [0.5, 1e300]})
    result.evaluate_metrics_clientapp[2] = MetricRecord({"eval-acc": 0.25})
    result.evaluate_metrics_serverapp[0] = MetricRecord({"test-accuracy": 0.1})
    result.evaluate_metrics_serverapp[2] = MetricRecord({"test-accuracy": 0.6, "n": 5})
    state = {"rows": [{"server_round": 1, "x": [1.5, None]}], "calls": 2, "nan": math.nan}
    return Checkpoint(server_round=server_round, arrays=arrays, result=result, state=state)


# --- the file ---------------------------------------------------------------


def test_round_trip_keeps_arrays_bitwise_metrics_and_state(tmp_path: Path) -> None:
    original = _sample_checkpoint()
    path = save_checkpoint(tmp_path / "run.ckpt.npz", original)
    loaded = load_checkpoint(path)

    assert loaded.server_round == 2
    assert list(loaded.arrays.keys()) == list(original.arrays.keys())
    for name in original.arrays:
        want, got = original.arrays[name].numpy(), loaded.arrays[name].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    assert loaded.result.arrays is loaded.arrays
    for field in ("train_metrics_clientapp", "evaluate_metrics_clientapp"):
        assert set(getattr(loaded.result, field)) == set(getattr(original.result, field))
    assert set(loaded.result.evaluate_metrics_serverapp) == {0, 2}
    round1 = loaded.result.train_metrics_clientapp[1]
    assert round1["num-accepted"] == 3 and isinstance(round1["num-accepted"], int)
    assert round1["rejected-node-ids"] == [7, 9] and round1["late-node-ids"] == []
    assert math.isnan(round1["loss"])  # type: ignore[arg-type]
    assert loaded.result.train_metrics_clientapp[2]["scale"] == [0.5, 1e300]
    assert loaded.result.evaluate_metrics_serverapp[2]["n"] == 5
    assert loaded.state["rows"] == original.state["rows"] and loaded.state["calls"] == 2
    assert math.isnan(loaded.state["nan"])
    assert os.listdir(tmp_path) == ["run.ckpt.npz"]


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int8, np.uint16, np.int64, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
def test_any_numeric_array_round_trips_bitwise(array: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.npz"
        save_checkpoint(path, Checkpoint(0, ArrayRecord({"x": Array(array)})))
        loaded = load_checkpoint(path).arrays["x"].numpy()
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    assert loaded.tobytes() == array.tobytes()


def test_a_failed_replace_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.ckpt.npz"
    save_checkpoint(path, _sample_checkpoint(server_round=1))
    before = path.read_bytes()

    def crash(*_: object) -> None:
        raise OSError("power loss")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(OSError, match="power loss"):
        save_checkpoint(path, _sample_checkpoint(server_round=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).server_round == 1
    assert os.listdir(tmp_path) == [path.name]


def test_a_crash_while_writing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.ckpt.npz"
    save_checkpoint(path, _sample_checkpoint(server_round=1))

    def half_written(stream, **_: object) -> None:
        stream.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.np, "savez", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _sample_checkpoint(server_round=2))
    monkeypatch.undo()
    assert load_checkpoint(path).server_round == 1
    assert os.listdir(tmp_path) == [path.name]


def test_the_file_is_fsynced_before_the_replace_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(source: str, target: object) -> None:
        events.append("replace")
        real_replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    save_checkpoint(tmp_path / "c.npz", _sample_checkpoint())
    assert events == ["fsync-file", "replace", "fsync-folder"]


def test_state_that_is_not_json_fails_before_anything_is_written(tmp_path: Path) -> None:
    checkpoint = _sample_checkpoint()
    checkpoint.state = {"roles": {1, 2}}
    with pytest.raises(TypeError, match="JSON-serializable"):
        save_checkpoint(tmp_path / "c.npz", checkpoint)
    assert os.listdir(tmp_path) == []


def _flip_a_data_byte(data: bytes) -> bytes:
    """Flip a byte inside the stored bytes of the first array."""
    weights = _sample_checkpoint().arrays["features.0.weight"].numpy().tobytes()
    start = data.index(weights)
    corrupt = bytearray(data)
    corrupt[start + len(weights) // 2] ^= 0xFF
    return bytes(corrupt)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "not an .npz"),
        (_flip_a_data_byte, "CRC"),
        (lambda _: b"not a checkpoint at all", "not an .npz"),
        (lambda _: b"", "not an .npz"),
    ],
    ids=["truncated", "flipped-byte", "garbage", "empty"],
)
def test_a_damaged_file_fails_with_its_path(tmp_path: Path, damage, reason: str) -> None:
    path = save_checkpoint(tmp_path / "run.ckpt.npz", _sample_checkpoint())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="not a readable") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_foreign_numpy_files_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="without dstar-flwr-checkpoint metadata"):
        load_checkpoint(tmp_path / "other.npz")
    with pytest.raises(CheckpointError, match=r"plain\.npy"):
        load_checkpoint(tmp_path / "plain.npy")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")


def test_layout_differences_name_what_differs() -> None:
    model = _model(np.zeros(23, np.float32))
    assert layout_differences(model, _model(np.ones(23, np.float32))) == []
    other = ArrayRecord(
        {"w": Array(np.zeros((4, 5), np.float32)), "c": Array(np.zeros(3, np.float64))}
    )
    differences = layout_differences(model, other)
    assert "arrays missing from the checkpoint: ['b']" in differences
    assert "arrays the model does not have: ['c']" in differences
    assert "'w': shape (4, 5) in the checkpoint, (20,) here" in differences
    halves = ArrayRecord(
        {"w": Array(np.zeros(20, np.float16)), "b": Array(np.zeros(3, np.float32))}
    )
    assert layout_differences(model, halves) == [
        "'w': dtype float16 in the checkpoint, float32 here"
    ]


# --- DStar.start -------------------------------------------------------------


def test_resume_runs_only_the_missing_rounds_and_keeps_the_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "run.ckpt.npz"
    saved_rounds: list[int] = []

    def state_fn(server_round: int, result: Result) -> dict[str, object]:
        saved_rounds.append(server_round)
        return {"rounds-seen": sorted(result.train_metrics_clientapp)}

    first_grid = _grid()
    _, first = _start(first_grid, 3, checkpoint_path=path, checkpoint_state_fn=state_fn)
    assert saved_rounds == [1, 2, 3]
    assert load_checkpoint(path).server_round == 3
    np.testing.assert_array_equal(_vector(load_checkpoint(path).arrays), _vector(first.arrays))

    grid = _grid()
    strategy, result = _start(grid, 5, checkpoint_path=path, resume=True)
    assert grid.train_rounds == [4] * 4 + [5] * 4
    assert len(grid.pushed) == 2 * 4  # no evaluation messages
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3, 4, 5]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2, 3, 4, 5]
    for server_round in (1, 2, 3):
        assert (
            result.train_metrics_clientapp[server_round]["num-accepted"]
            == first.train_metrics_clientapp[server_round]["num-accepted"]
        )
    assert strategy.resumed_checkpoint is not None
    assert strategy.resumed_checkpoint.server_round == 3
    assert strategy.resumed_checkpoint.state == {"rounds-seen": [1, 2, 3]}
    assert load_checkpoint(path).server_round == 5


def test_an_interrupted_run_resumes_to_the_same_model_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    _, uninterrupted = _start(_grid(), 4)

    class FailingGrid(RoundLogGrid):
        def push_messages(self, messages):
            messages = list(messages)
            if any(m.content["config"]["server-round"] == 3 for m in messages):
                raise ConnectionError("the SuperLink went away")
            return super().push_messages(messages)

    path = tmp_path / "run.ckpt.npz"
    failing = FailingGrid(_grid().nodes)
    with pytest.raises(ConnectionError):
        _start(failing, 4, checkpoint_path=path)
    assert load_checkpoint(path).server_round == 2

    grid = _grid()
    _, resumed = _start(grid, 4, checkpoint_path=path, resume=True)
    assert grid.train_rounds == [3] * 4 + [4] * 4
    np.testing.assert_array_equal(_vector(resumed.arrays), _vector(uninterrupted.arrays))
    assert sorted(resumed.train_metrics_clientapp) == [1, 2, 3, 4]


def test_resume_after_the_last_round_returns_the_restored_result_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt.npz"
    _, first = _start(_grid(), 3, checkpoint_path=path)
    grid = _grid()
    _, result = _start(grid, 2, checkpoint_path=path, resume=True)
    assert grid.pushed == []
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    np.testing.assert_array_equal(_vector(result.arrays), _vector(first.arrays))


def test_resume_without_a_checkpoint_fails_fast(tmp_path: Path) -> None:
    grid = _grid()
    with pytest.raises(ValueError, match=r"no checkpoint at .*missing\.npz"):
        _start(grid, 2, checkpoint_path=tmp_path / "missing.npz", resume=True)
    with pytest.raises(ValueError, match="needs the checkpoint_path"):
        _start(grid, 2, resume=True)
    with pytest.raises(ValueError, match="needs a checkpoint_path"):
        _start(grid, 2, checkpoint_state_fn=lambda r, result: {})
    assert grid.pushed == []


def test_resume_with_another_model_fails_with_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt.npz"
    wider = ArrayRecord({"w": Array(np.zeros(21, np.float32)), "b": Array(np.zeros(3, np.float32))})
    save_checkpoint(path, Checkpoint(1, wider))
    grid = _grid()
    with pytest.raises(ValueError, match=r"does not match initial_arrays: 'w': shape \(21,\)"):
        _start(grid, 3, checkpoint_path=path, resume=True)
    assert grid.pushed == []


def test_a_corrupt_checkpoint_stops_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt.npz"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"run\.ckpt\.npz"):
        _start(_grid(), 3, checkpoint_path=path, resume=True)


def test_without_a_path_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    strategy, result = _start(_grid(), 2)
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert strategy.resumed_checkpoint is None
    assert os.listdir(tmp_path) == []


# --- the ServerApp's side ----------------------------------------------------


def test_run_config_names_the_checkpoint_and_refuses_other_strategies(tmp_path: Path) -> None:
    config = ExperimentConfig.from_run_config(
        run_config(checkpoint_dir=str(tmp_path), run_name="a", resume=True)
    )
    assert config.checkpoint_path == tmp_path / "a.ckpt.npz" and config.resume
    assert ExperimentConfig.from_run_config(run_config()).checkpoint_path is None
    with pytest.raises(ValueError, match="strategy 'dstar' only, not 'fedavg'"):
        ExperimentConfig.from_run_config(run_config(strategy="fedavg", checkpoint_dir="ckpt"))
    with pytest.raises(ValueError, match="'resume' = true needs 'checkpoint-dir'"):
        ExperimentConfig.from_run_config(run_config(resume=True))
    with pytest.raises(ValueError, match="'resume' must be true or false"):
        ExperimentConfig.from_run_config(run_config(resume="yes"))


def test_round_rows_survive_the_checkpoint_state(tmp_path: Path) -> None:
    row = RoundRow(3, test_accuracy=0.75, rejected_partitions=[0], skipped=True)
    state = json.loads(json.dumps({"rows": [asdict(row)]}))
    restored = RoundRow.from_dict(state["rows"][0])
    assert json.dumps(asdict(restored)) == json.dumps(asdict(row))  # NaN != NaN, "NaN" == "NaN"
    assert (restored.test_accuracy, restored.rejected_partitions, restored.skipped) == (
        0.75,
        [0],
        True,
    )
    assert math.isnan(restored.rho)
    # The results JSON writes NaN as null; that reads back as NaN.
    assert math.isnan(RoundRow.from_dict({"server_round": 1, "rho": None}).rho)

    path = write_results(
        tmp_path / "r.json", run_config={}, roles=NodeRoles(), rows=[row], resumed_after_round=2
    )
    assert json.loads(path.read_text())["resumed-after-round"] == 2
    path = write_results(tmp_path / "r.json", run_config={}, roles=NodeRoles(), rows=[row])
    assert json.loads(path.read_text())["resumed-after-round"] is None


@pytest.mark.simulation
def test_simulation_resumes_after_the_checkpointed_round(tmp_path: Path) -> None:
    from simulations.federation.launch import run_simulation

    common = {
        "num-byzantine-nodes": 1,
        "attack": "gaussian",
        "num-stragglers": 0,
        "latency-model": "none",
        "first-k": 4,
        "num-byzantine": 1,
        "local-epochs": 1,
        "results-dir": str(tmp_path / "results"),
        "checkpoint-dir": str(tmp_path / "checkpoints"),
        "run-name": "resumable",
    }
    first = json.loads(
        run_simulation({**common, "num-server-rounds": 2}, num_supernodes=4, quiet=True).read_text()
    )
    assert [r["server_round"] for r in first["rounds"]] == [1, 2]
    assert first["resumed-after-round"] is None
    assert load_checkpoint(tmp_path / "checkpoints" / "resumable.ckpt.npz").server_round == 2

    second = json.loads(
        run_simulation(
            {**common, "num-server-rounds": 3, "resume": True}, num_supernodes=4, quiet=True
        ).read_text()
    )
    assert second["resumed-after-round"] == 2
    rounds = second["rounds"]
    assert [r["server_round"] for r in rounds] == [1, 2, 3]
    # The restored rounds are the first run's rows, DStar's report fields included.
    assert rounds[:2] == first["rounds"]
    for row in rounds:
        assert 0 <= row["test_accuracy"] <= 1 and row["test_loss"] > 0
        assert row["num_accepted"] >= 1 and 0 in row["rejected_partitions"]
    assert load_checkpoint(tmp_path / "checkpoints" / "resumable.ckpt.npz").server_round == 3

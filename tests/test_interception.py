"""Reply transforms in front of Flower's own strategies: the malformed-reply guard."""

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg, Krum

from dstar_flwr import DStar, load_checkpoint
from dstar_flwr.interception import DropMalformedReplies, InterceptedStrategy

from .fake_grid import FakeGrid, FakeNode
from .test_strategy import _model, _start, _vector, honest, nan_sender


def missing_arrays(_: Message) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"num-examples": 10})})


def _grid() -> FakeGrid:
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 6)}
    nodes[6] = FakeNode(0.01, missing_arrays)
    nodes[7] = FakeNode(0.01, nan_sender)
    return FakeGrid(nodes)


def test_flower_fedavg_alone_ends_the_run_on_a_malformed_reply() -> None:
    with pytest.raises(InconsistentMessageReplies):
        _start(FedAvg(fraction_evaluate=0.0), _grid(), rounds=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", [FedAvg(fraction_evaluate=0.0), Krum(fraction_evaluate=0.0)])
def test_behind_the_guard_flower_strategies_go_on(strategy: FedAvg) -> None:
    guard = DropMalformedReplies()
    result = _start(InterceptedStrategy(strategy, [guard]), _grid(), rounds=2)  # type: ignore[arg-type]
    assert np.all(np.isfinite(_vector(result.arrays)))
    assert {r: sorted(ids) for r, ids in guard.dropped_per_round.items()} == {1: [6, 7], 2: [6, 7]}
    assert "aggregate_train" not in vars(strategy)


def test_dstar_applies_its_reply_transforms_itself(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.ckpt.npz"
    guard = DropMalformedReplies()
    strategy = DStar(num_byzantine=1, first_k=5, reply_transforms=[guard])
    strategy.start(
        grid=_grid(),
        initial_arrays=_model(np.zeros(23, np.float32)),
        num_rounds=2,
        timeout=5.0,
        checkpoint_path=checkpoint,
    )
    assert load_checkpoint(checkpoint).server_round == 2
    assert set(guard.dropped_per_round) <= {1, 2}


def test_wrapping_dstar_is_refused_with_what_to_do() -> None:
    with pytest.raises(TypeError, match="reply_transforms"):
        InterceptedStrategy(DStar(num_byzantine=1), [DropMalformedReplies()])

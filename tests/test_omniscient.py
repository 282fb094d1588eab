"""The omniscient adversary around DStar and around Flower's built-in strategies."""

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg, FedMedian

from dstar_flwr import DStar, check_train_reply, with_reply_transforms
from dstar_flwr.records import layout_of
from simulations.app.omniscient import OmniscientAttack

from .fake_grid import FakeGrid, FakeNode
from .test_strategy import TARGET, _model, _start, _vector, honest

BYZANTINE = {6, 7}


def _grid(straggler_delay: float | None = None) -> FakeGrid:
    nodes = {n: FakeNode(0.01 * n, honest(n)) for n in range(1, 8)}  # 6, 7 reply honestly
    if straggler_delay is not None:
        nodes[8] = FakeNode(straggler_delay, honest(8))
    return FakeGrid(nodes)


def _attack(byzantine: set[int]) -> OmniscientAttack:
    return OmniscientAttack(dict.fromkeys(byzantine, flipped_mean))


def flipped_mean(
    honest_updates: np.ndarray, n: int, f: int, rng: np.random.Generator
) -> np.ndarray:
    return -10.0 * honest_updates.mean(axis=0)


def test_dstar_rejects_the_replaced_replies_and_keeps_first_k() -> None:
    grid = _grid(straggler_delay=1.5)
    strategy = DStar(num_byzantine=2, first_k=7, fraction_evaluate=0.0, poll_interval=0.01)
    attack = _attack(BYZANTINE)
    result = _start(with_reply_transforms(strategy, [attack]), grid, rounds=3)  # type: ignore[arg-type]
    assert {r: sorted(ids) for r, ids in attack.replaced_per_round.items()} == {
        1: [6, 7],
        2: [6, 7],
        3: [6, 7],
    }
    for server_round in (1, 2, 3):
        metrics = result.train_metrics_clientapp[server_round]
        # Both replaced replies rejected; with 5 honest updates in 23 dimensions the
        # band may reject one honest update by chance.
        assert set(metrics["rejected-node-ids"]) >= BYZANTINE
        assert len(metrics["rejected-node-ids"]) <= 3
        assert metrics["round-seconds"] < 1.0
    assert np.linalg.norm(_vector(result.arrays) - TARGET) < 0.2 * np.linalg.norm(TARGET)
    # No method of the strategy was replaced: the attack went in through its hook.
    assert "aggregate_train" not in vars(strategy) and "configure_train" not in vars(strategy)


def test_fedavg_is_pulled_away_by_the_same_attack() -> None:
    result = _start(
        with_reply_transforms(FedAvg(fraction_evaluate=0.0), [_attack(BYZANTINE)]),  # type: ignore[arg-type]
        _grid(),
        rounds=3,
    )
    honest_run = _start(FedAvg(fraction_evaluate=0.0), _grid(), rounds=3)  # type: ignore[arg-type]
    attacked_error = np.linalg.norm(_vector(result.arrays) - TARGET)
    honest_error = np.linalg.norm(_vector(honest_run.arrays) - TARGET)
    assert attacked_error > 10 * honest_error


def test_a_flower_builtin_robust_strategy_runs_under_the_adversary() -> None:
    attack = _attack(BYZANTINE)
    strategy = FedMedian(fraction_evaluate=0.0)
    result = _start(with_reply_transforms(strategy, [attack]), _grid(), rounds=2)  # type: ignore[arg-type]
    assert np.all(np.isfinite(_vector(result.arrays)))
    assert sorted(attack.replaced_per_round[2]) == [6, 7]
    assert "aggregate_train" not in vars(strategy)


def test_no_honest_reply_leaves_the_replies_alone() -> None:
    attack = _attack({1, 2})
    grid = FakeGrid({1: FakeNode(0.0, honest(1)), 2: FakeNode(0.0, honest(2))})
    arrays = _model(np.zeros(23, np.float32))
    attack.configure(1, arrays)
    messages = list(FedAvg().configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages, timeout=2.0))
    before = [_vector(r.content["arrays"]) for r in replies]
    checked = [check_train_reply(r, layout_of(arrays)) for r in replies]
    after = attack.transform(1, checked)
    for old, reply in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, _vector(reply.message.content["arrays"]))


def test_a_replaced_reply_reads_back_as_its_parsed_weights() -> None:
    """The attacked reply's parse (made from the vector) equals a fresh decode of it."""
    attack = _attack({3})
    grid = FakeGrid({n: FakeNode(0.0, honest(n)) for n in (1, 2, 3)})
    arrays = _model(np.zeros(23, np.float32))
    attack.configure(1, arrays)
    messages = list(FedAvg().configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages, timeout=2.0))
    after = attack.transform(1, [check_train_reply(r, layout_of(arrays)) for r in replies])
    replaced = next(r for r in after if r.node_id == 3)
    decoded = check_train_reply(replaced.message, layout_of(arrays))
    assert attack.replaced_per_round == {1: [3]}
    np.testing.assert_array_equal(replaced.weights, decoded.weights)
    assert replaced.parsed is not None and decoded.parsed is not None
    assert replaced.parsed.num_examples == decoded.parsed.num_examples

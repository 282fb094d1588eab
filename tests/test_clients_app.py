"""Tests for the ClientApp handlers, called directly as the SuperNode would."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.config import get_fused_config_from_dir

from clients.attacks import flatten_arrays
from clients.client_app import app
from clients.models import build_model

from .node_support import PROJECT_DIR, run_config

NUM_PARTITIONS = 4
SERVER_NODE_ID = 0


def context(partition_id: int, config: dict[str, object], **node_config: object) -> Context:
    return Context(
        run_id=1,
        node_id=100 + partition_id,
        node_config={"partition-id": partition_id, "num-partitions": NUM_PARTITIONS} | node_config,
        state=RecordDict(),
        run_config=config,
    )


def instruction(content: RecordDict, message_type: str, dst_node_id: int = 101) -> Message:
    """A message as the SuperLink delivers it (ids set, from the server node)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"{message_type}-message",
        src_node_id=SERVER_NODE_ID,
        dst_node_id=dst_node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def global_arrays() -> ArrayRecord:
    return ArrayRecord(build_model("digits", seed=0).state_dict())


def train_message(server_round: int = 1) -> Message:
    content = RecordDict(
        {"arrays": global_arrays(), "config": ConfigRecord({"server-round": server_round})}
    )
    return instruction(content, "train")


def sent_update(reply: Message) -> np.ndarray:
    return flatten_arrays(reply.content["arrays"]) - flatten_arrays(global_arrays())


def test_pyproject_has_every_key_the_client_reads() -> None:
    keys = {
        "dataset", "partitioning", "dirichlet-alpha", "seed", "server-validation-size",
        "test-fraction", "local-epochs", "batch-size", "learning-rate", "device",
        "num-byzantine-nodes", "attack", "attack-scale", "num-stragglers",
        "latency-model", "latency-seconds", "straggler-slowdown",
    }  # fmt: skip
    assert keys <= set(get_fused_config_from_dir(PROJECT_DIR, {}))


def test_pyproject_defaults_are_valid() -> None:
    from clients.settings import NodeSettings

    defaults = dict(get_fused_config_from_dir(PROJECT_DIR, {}))
    settings = NodeSettings.from_context(context(0, defaults))
    assert settings.data.dataset == defaults["dataset"]


def test_train_replies_with_arrays_and_metrics() -> None:
    msg = train_message()
    reply = app(msg, context(1, run_config()))
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert reply.metadata.dst_node_id == SERVER_NODE_ID
    assert reply.metadata.message_type == "train"
    arrays, metrics = reply.content["arrays"], reply.content["metrics"]
    assert isinstance(arrays, ArrayRecord) and isinstance(metrics, MetricRecord)
    assert list(arrays.keys()) == list(global_arrays().keys())
    assert metrics["num-examples"] == 335  # the digits client pool of 1338, split 4 ways
    assert np.isfinite(metrics["train-loss"]) and metrics["train-loss"] > 0
    assert metrics["delay-seconds"] == 0.0 and metrics["compute-seconds"] > 0
    assert np.linalg.norm(sent_update(reply)) > 0


def test_train_is_deterministic_per_round() -> None:
    first = app(train_message(1), context(1, run_config()))
    again = app(train_message(1), context(1, run_config()))
    next_round = app(train_message(2), context(1, run_config()))
    np.testing.assert_array_equal(sent_update(first), sent_update(again))
    assert not np.array_equal(sent_update(first), sent_update(next_round))


def test_byzantine_gaussian_reply_differs_wildly() -> None:
    honest = app(train_message(), context(0, run_config()))
    byzantine = app(
        train_message(),
        context(0, run_config(num_byzantine_nodes=1, attack="gaussian", attack_scale=1.0)),
    )
    honest_norm = np.linalg.norm(sent_update(honest))
    byzantine_update = sent_update(byzantine)
    assert np.linalg.norm(byzantine_update) > 20 * honest_norm
    assert byzantine_update.std() == pytest.approx(1.0, rel=0.1)


def test_byzantine_sign_flip_reverses_the_honest_update() -> None:
    honest = app(train_message(), context(0, run_config()))
    flipped = app(
        train_message(),
        context(0, run_config(num_byzantine_nodes=2, attack="sign-flip", attack_scale=2.0)),
    )
    np.testing.assert_allclose(
        sent_update(flipped), -2.0 * sent_update(honest), rtol=1e-4, atol=1e-6
    )


def test_only_byzantine_partitions_attack() -> None:
    attacked = run_config(num_byzantine_nodes=1, attack="sign-flip", attack_scale=1.0)
    honest = app(train_message(), context(1, run_config()))
    also_honest = app(train_message(), context(1, attacked))
    np.testing.assert_array_equal(sent_update(honest), sent_update(also_honest))


def test_label_flip_trains_on_flipped_labels() -> None:
    honest = app(train_message(), context(0, run_config()))
    poisoned = app(
        train_message(), context(0, run_config(num_byzantine_nodes=1, attack="label-flip"))
    )
    honest_update, poisoned_update = sent_update(honest), sent_update(poisoned)
    assert not np.allclose(honest_update, poisoned_update)
    # A real trained update, not noise: comparable size.
    ratio = np.linalg.norm(poisoned_update) / np.linalg.norm(honest_update)
    assert 0.2 < ratio < 5


def test_straggler_waits() -> None:
    config = run_config(latency_model="stragglers", latency_seconds=0.3, num_stragglers=1)
    started = time.perf_counter()
    reply = app(train_message(), context(NUM_PARTITIONS - 1, config))
    assert time.perf_counter() - started >= 0.3
    assert reply.content["metrics"]["delay-seconds"] == pytest.approx(0.3)
    prompt = app(train_message(), context(0, config))
    assert prompt.content["metrics"]["delay-seconds"] == 0.0


def test_evaluate_replies_with_metrics() -> None:
    msg = instruction(RecordDict({"arrays": global_arrays()}), "evaluate")
    reply = app(msg, context(2, run_config()))
    metrics = reply.content["metrics"]
    assert set(metrics) == {"eval-loss", "eval-acc", "num-examples"}
    assert metrics["num-examples"] == 334 and 0.0 <= metrics["eval-acc"] <= 1.0
    assert reply.metadata.message_type == "evaluate"


def test_query_reports_the_partition_and_no_role() -> None:
    config = run_config(num_byzantine_nodes=1, num_stragglers=2)
    for partition in range(NUM_PARTITIONS):
        reply = app(instruction(RecordDict(), "query"), context(partition, config))
        metrics = reply.content["metrics"]
        assert metrics["partition-id"] == partition
        assert metrics["num-partitions"] == NUM_PARTITIONS
        assert "is-byzantine" not in metrics and "is-straggler" not in metrics


def test_node_device_overrides_run_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cuda = run_config(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        app(train_message(), context(0, on_cuda))
    reply = app(train_message(), context(0, on_cuda, device="cpu"))
    assert reply.content["metrics"]["num-examples"] > 0


@pytest.mark.parametrize(
    ("config", "node_config", "message"),
    [
        (run_config(attack="fang"), {}, "unknown attack"),
        (run_config(num_byzantine_nodes=5), {}, "num-byzantine-nodes must be in 0..4"),
        (run_config(latency_seconds=-1.0), {}, "latency-seconds"),
        (run_config(seed=1.5), {}, "'seed' must be an integer"),
        (
            {k: v for k, v in run_config().items() if k != "batch-size"},
            {},
            "run config is missing 'batch-size'",
        ),
        (run_config(), {"partition-id": 7}, "partition-id' must be in 0..3"),
    ],
)
def test_bad_configuration_fails_fast(
    config: dict[str, object], node_config: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        app(train_message(), context(0, config, **node_config))


def test_missing_node_config_says_where_to_set_it() -> None:
    bare = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config=run_config())
    with pytest.raises(ValueError, match=r"node config is missing 'partition-id'.*--node-config"):
        app(instruction(RecordDict(), "query"), bare)

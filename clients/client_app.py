"""The Flower ClientApp: thin message handlers over :mod:`clients.node`."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.attack_vectors import attack_kind
from clients.malformed import malformed_reply_content
from clients.node import TrainResult, load_node_data, run_evaluate, run_train_round
from clients.run_config import read_as
from clients.seeding import ATTACK_STREAM, derive_seed
from clients.settings import NodeSettings

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the local partition and reply with weights and metrics.

    Reads ``msg.content["arrays"]`` and, when present, ``msg.content["config"]
    ["server-round"]``; replies ``"arrays"`` and ``"metrics"`` (``train-loss``,
    ``num-examples``, ``compute-seconds``, ``delay-seconds``). A Byzantine node
    running the ``malformed`` attack breaks that reply as run-config
    ``malformed-kind`` says (see :mod:`clients.malformed`).

    Parameters
    ----------
    msg : Message
        The instruction from the ServerApp.
    context : Context
        The node's context (node config and run config).

    Returns
    -------
    Message
        The reply.
    """
    settings = NodeSettings.from_context(context)
    server_round = server_round_of(msg)
    result = run_train_round(settings, received_arrays(msg), server_round)
    return Message(content=train_reply_content(settings, result, server_round), reply_to=msg)


def train_reply_content(
    settings: NodeSettings, result: TrainResult, server_round: int
) -> RecordDict:
    """The content of a training reply: honest, or malformed for the ``malformed`` attack.

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    result : TrainResult
        What the round produced.
    server_round : int
        The round (seeds the choice of the array a malformed reply breaks).

    Returns
    -------
    RecordDict
        ``{"arrays": ..., "metrics": ...}``, or its malformed variant.
    """
    metrics = {
        "train-loss": result.train_loss,
        "num-examples": result.num_examples,
        "compute-seconds": result.compute_seconds,
        "delay-seconds": result.delay_seconds,
    }
    name = settings.attack_name
    if name is not None and attack_kind(name) == "reply":
        seed = derive_seed(
            settings.data.seed, settings.partition_id, server_round, ATTACK_STREAM, 2
        )
        return malformed_reply_content(
            settings.attack.malformed_kind,
            result.arrays,
            result.num_examples,
            np.random.default_rng(seed),
            metrics=metrics,
        )
    return RecordDict({"arrays": result.arrays, "metrics": MetricRecord(metrics)})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights on the local partition.

    Replies ``"metrics"`` with ``eval-loss``, ``eval-acc`` and ``num-examples``.

    Parameters
    ----------
    msg : Message
        The instruction from the ServerApp.
    context : Context
        The node's context (node config and run config).

    Returns
    -------
    Message
        The reply.
    """
    settings = NodeSettings.from_context(context)
    loss, accuracy, num_examples = run_evaluate(settings, received_arrays(msg))
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": num_examples})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Roll-call: report this node's partition and data size.

    Replies ``"metrics"`` with ``partition-id``, ``num-partitions`` and
    ``num-examples``. The ServerApp's experiment harness maps node ids to
    partitions with it and takes each partition's roles from the run config; a
    node is never asked whether it is Byzantine. Loading the partition here
    also warms the node up before the first round.

    Parameters
    ----------
    msg : Message
        The instruction from the ServerApp.
    context : Context
        The node's context (node config and run config).

    Returns
    -------
    Message
        The reply.
    """
    settings = NodeSettings.from_context(context)
    _, labels = load_node_data(settings)
    metrics = MetricRecord(
        {
            "partition-id": settings.partition_id,
            "num-partitions": settings.num_partitions,
            "num-examples": len(labels),
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def received_arrays(msg: Message) -> ArrayRecord:
    """Return the message's ``"arrays"`` record; raise ValueError when it has none."""
    if "arrays" not in msg.content or not isinstance(msg.content["arrays"], ArrayRecord):
        raise ValueError("the message has no ArrayRecord under 'arrays'")
    return msg.content["arrays"]


def server_round_of(msg: Message) -> int:
    """Return ``config["server-round"]`` when the server sent it, else 0."""
    config = msg.content.get("config")
    if not isinstance(config, ConfigRecord) or "server-round" not in config:
        return 0
    server_round = read_as(config, "server-round", int, source="message config")
    if server_round < 0:
        raise ValueError(f"message config 'server-round' must be >= 0, got {server_round}")
    return server_round

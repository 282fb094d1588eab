"""The ClientApp: local gradient descent on the node's partition; numpy only.

Partitions ``0 .. num-byzantine-nodes - 1`` are Byzantine: they reply with large
Gaussian noise in place of the trained model, which DStar should reject.
"""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from numpy_app.task import load_partition, loss, train

app = ClientApp()


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Train the received model on the local data and reply with it."""
    partition_id = _partition_id(context)
    x, y = load_partition(partition_id)
    model = msg.content["arrays"].to_numpy_ndarrays()
    trained = train(
        model,
        x,
        y,
        steps=int(context.run_config["local-steps"]),
        learning_rate=float(context.run_config["learning-rate"]),
    )
    if partition_id < int(context.run_config["num-byzantine-nodes"]):
        rng = np.random.default_rng(partition_id)
        trained = [rng.normal(scale=100.0, size=a.shape).astype(np.float32) for a in trained]
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss(trained, x, y)})
    content = RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local data."""
    x, y = load_partition(_partition_id(context))
    model = msg.content["arrays"].to_numpy_ndarrays()
    metrics = MetricRecord({"num-examples": len(y), "eval-loss": loss(model, x, y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

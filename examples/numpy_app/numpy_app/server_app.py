"""The ServerApp: DStar exactly as the README's message-API example uses it.

The model is a list of numpy arrays (the README's ``model.state_dict()`` is a
torch model's); nothing here imports torch. After the run it logs how far the
global model is from the true one and, with run-config ``results-dir``, writes
``<results-dir>/<run-name>.json``.
"""

import json
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from dstar_flwr import DStar
from numpy_app.task import distance_to_truth, initial_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run DStar (f = 2, the first 80% of the replies) for ``num-server-rounds`` rounds."""
    model = initial_model()  # your numpy model: a list of arrays
    strategy = DStar(
        num_byzantine=2,  # f: Byzantine replies to tolerate per round
        first_k=0.8,  # keep the first 80% of the sampled nodes' replies
        validation_train_fn=None,  # optional: ArrayRecord -> ArrayRecord
    )
    num_rounds = int(context.run_config["num-server-rounds"])  # the README's 10
    timeout = float(context.run_config["round-timeout"])  # the README's 30.0
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model),
        num_rounds=num_rounds,
        timeout=timeout,  # the round deadline and the messages' TTL
    )
    for server_round, metrics in result.train_metrics_clientapp.items():
        print(server_round, metrics["rejected-node-ids"], metrics["late-node-ids"])

    rounds = {
        str(server_round): {
            "rejected-node-ids": list(metrics["rejected-node-ids"]),  # type: ignore[arg-type]
            "late-node-ids": list(metrics["late-node-ids"]),  # type: ignore[arg-type]
        }
        for server_round, metrics in result.train_metrics_clientapp.items()
    }
    summary = {
        "initial-distance-to-truth": distance_to_truth(model),
        "final-distance-to-truth": distance_to_truth(result.arrays.to_numpy_ndarrays()),
        "rounds": rounds,
    }
    log(
        INFO,
        "numpy app: distance to the true model %.4f -> %.4f after %s rounds",
        summary["initial-distance-to-truth"],
        summary["final-distance-to-truth"],
        len(rounds),
    )
    results_dir = str(context.run_config["results-dir"])
    if results_dir:
        path = Path(results_dir) / f"{context.run_config['run-name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
        log(INFO, "numpy app: results written to %s", path)

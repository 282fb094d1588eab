"""How many times the server decodes each training reply's arrays, path by path.

A reply's arrays arrive serialized; every ``Array.numpy()`` or
:func:`dstar_flwr.records.decode_array` call on them decodes them again. This
script runs short experiments on the in-process engine
(:mod:`simulations.federation.inprocess`), records every array of every training
reply the Grid hands to the server, counts the decodes of them,
and prints the decodes per reply array (the mean over all replies pulled, late
ones included, which are never decoded; and the most for any one array) for:

- the library alone: ``DStar.start`` on the Grid, no ServerApp;
- the ServerApp with DStar, under the client and the omniscient threat model
  (the omniscient adversary and the honest-mean probe in the loop);
- the ServerApp with FLTrust and with Flower's FedAvg under the omniscient
  threat model (FedAvg decodes each reply once more inside Flower's own code).

Usage::

    python -m simulations.benchmarks.reply_decodes
"""

import argparse
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from flwr.app import Array, ArrayRecord, Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from clients.models import build_model
from dstar_flwr import DStar, records
from simulations.federation.inprocess import InProcessGrid, default_run_config, run_inprocess

SETTINGS: dict[str, object] = {
    "dataset": "digits",
    "num-server-rounds": 2,
    "local-epochs": 1,
    "num-byzantine-nodes": 2,
    "num-byzantine": 2,
    "num-stragglers": 0,
    "latency-model": "none",
    "attack": "sign-flip",
}
PATHS: dict[str, dict[str, object]] = {
    "ServerApp, DStar, client threat model": {"strategy": "dstar", "threat-model": "client"},
    "ServerApp, DStar, omniscient adversary": {"strategy": "dstar", "threat-model": "omniscient"},
    "ServerApp, FLTrust, omniscient adversary": {
        "strategy": "fltrust",
        "threat-model": "omniscient",
    },
    "ServerApp, FedAvg, omniscient adversary": {
        "strategy": "fedavg",
        "threat-model": "omniscient",
    },
}


class DecodeCounter:
    """Counts the decodes of the arrays of the training replies pulled."""

    def __init__(self) -> None:
        self.reply_arrays: dict[int, Array] = {}  # kept alive: ids stay unique
        self.decodes: Counter[int] = Counter()

    def record(self, replies: Iterable[Message]) -> None:
        """Remember the arrays of the training replies among ``replies``."""
        for reply in replies:
            if reply.has_error() or reply.metadata.message_type != MessageType.TRAIN:
                continue
            for record in reply.content.array_records.values():
                for array in record.values():
                    self.reply_arrays[id(array)] = array

    @property
    def per_reply_array(self) -> float:
        """Mean decodes per reply array."""
        if not self.reply_arrays:
            return float("nan")
        return sum(self.decodes[key] for key in self.reply_arrays) / len(self.reply_arrays)

    @property
    def most_per_reply_array(self) -> int:
        """The most decodes of any one reply array."""
        return max((self.decodes[key] for key in self.reply_arrays), default=0)


@contextmanager
def counting() -> Iterator[DecodeCounter]:
    """Patch the in-process Grid and the decoders to count decodes of reply arrays.

    ``Array.numpy`` (Flower's) and :func:`dstar_flwr.records.decode_array` (the
    library's, which may call Flower's: one decode).
    """
    counter = DecodeCounter()
    original_numpy = Array.numpy
    original_decode = records.decode_array
    original_pull = InProcessGrid.pull_messages
    in_library_decode = False

    def count(array: Array) -> None:
        if counter.reply_arrays.get(id(array)) is array:  # a reply array, pulled before
            counter.decodes[id(array)] += 1

    def numpy(self: Array) -> Any:
        if not in_library_decode:
            count(self)
        return original_numpy(self)

    def decode_array(array: Array, *args: Any, **kwargs: Any) -> Any:
        nonlocal in_library_decode
        count(array)
        in_library_decode = True
        try:
            return original_decode(array, *args, **kwargs)
        finally:
            in_library_decode = False

    def pull_messages(self: InProcessGrid, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(original_pull(self, message_ids))
        counter.record(replies)
        return replies

    Array.numpy = numpy  # type: ignore[method-assign]
    records.decode_array = decode_array
    InProcessGrid.pull_messages = pull_messages  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        Array.numpy = original_numpy  # type: ignore[method-assign]
        records.decode_array = original_decode
        InProcessGrid.pull_messages = original_pull  # type: ignore[method-assign]


def library_path(num_nodes: int) -> Callable[[], None]:
    """``DStar.start`` alone on the in-process Grid (no ServerApp, no transforms)."""

    def run() -> None:
        run_config = default_run_config()
        run_config.update(SETTINGS)  # type: ignore[arg-type]
        grid = InProcessGrid(run_config, num_nodes)
        initial = ArrayRecord(build_model("digits", seed=0).state_dict())
        # A ServerApp process has its task identity set by Flower; messages read it.
        saved = {key: getattr(TaskIdentity, f"_{key}") for key in ("run_id", "node_id", "task_id")}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        try:
            DStar(num_byzantine=2, first_k=0.8, fraction_evaluate=0.0).start(
                grid=grid, initial_arrays=initial, num_rounds=2, timeout=30.0
            )
        finally:
            for key, value in saved.items():
                setattr(TaskIdentity, f"_{key}", value)

    return run


def server_app_path(overrides: Mapping[str, object], num_nodes: int) -> Callable[[], None]:
    """The ServerApp on the in-process engine with these run-config values."""

    def run() -> None:
        with tempfile.TemporaryDirectory() as results_dir:
            values = {**SETTINGS, **overrides, "results-dir": results_dir}
            run_inprocess(values, num_supernodes=num_nodes, quiet=True)

    return run


def main() -> None:
    """Print the decodes per reply array on each path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-supernodes", type=int, default=10)
    args = parser.parse_args()
    paths = {"library: DStar.start": library_path(args.num_supernodes)}
    paths.update(
        {name: server_app_path(values, args.num_supernodes) for name, values in PATHS.items()}
    )
    rows = []
    for name, run in paths.items():
        with counting() as counter:
            run()
        rows.append((name, counter.per_reply_array, counter.most_per_reply_array))
    print(f"{'path':<44} {'mean':>6} {'most':>5}  decodes per reply array")
    for name, mean, most in rows:
        print(f"{name:<44} {mean:>6.2f} {most:>5}")


if __name__ == "__main__":
    main()

"""Each training reply is decoded once on the server, whatever is in the loop."""

import pytest

from simulations.benchmarks.reply_decodes import PATHS, counting, library_path, server_app_path


def test_the_library_decodes_each_reply_once() -> None:
    with counting() as counter:
        library_path(num_nodes=6)()
    assert counter.reply_arrays
    assert counter.most_per_reply_array == 1


@pytest.mark.parametrize("path", [name for name in PATHS if "FedAvg" not in name])
def test_the_server_app_decodes_each_reply_once(path: str) -> None:
    with counting() as counter:
        server_app_path(PATHS[path], num_nodes=6)()
    assert counter.reply_arrays
    assert counter.most_per_reply_array == 1


def test_flower_fedavg_decodes_once_more_inside_flower() -> None:
    """The guard, the adversary and the probe share one decode; FedAvg makes its own."""
    with counting() as counter:
        server_app_path(PATHS["ServerApp, FedAvg, omniscient adversary"], num_nodes=6)()
    assert counter.most_per_reply_array == 2

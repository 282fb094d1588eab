"""Shared test setup."""

import os

import pytest
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import settings

# HYPOTHESIS_PROFILE=thorough runs 10x the property-test cases of the default suite.
settings.register_profile("thorough", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse ``--dist loadgroup`` where pytest-xdist cannot group the tests.

    The end-to-end tests share one xdist worker (group "e2e"): side by side, their
    SuperNodes, ClientApps and Ray workers starve 2 cores past Flower's and Ray's
    deadlines. pytest-xdist (3.8) groups a test by a suffix on its node id, which
    pytest 9.2 no longer reads, so the groups are silently ignored there.
    """
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple[:2] >= (9, 2):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup (the "
            "xdist_group marks are ignored): install the dev extra's versions "
            "(pip install -e '.[dev]'), or run without -n."
        )


@pytest.fixture(autouse=True)
def _server_task_identity() -> None:
    """Flower's Message constructor reads the process's task identity; act as a server."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1

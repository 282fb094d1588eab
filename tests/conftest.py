"""Shared test setup."""

import os

import pytest
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import settings

# HYPOTHESIS_PROFILE=thorough runs 10x the property-test cases of the default suite.
settings.register_profile("thorough", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _server_task_identity() -> None:
    """Flower's Message constructor reads the process's task identity; act as a server."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1

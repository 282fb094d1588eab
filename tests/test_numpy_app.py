"""examples/numpy_app: DStar in a Flower app that needs the library alone (no torch).

The quick tests check that the example imports nothing beyond the published
package's dependencies (flwr, numpy, dstar_flwr and the standard library) and
that its model learns; the deployment test runs it on Flower's deployment engine
(a SuperLink and 5 SuperNodes as processes, stopped at the end) as the README's
message-API example: DStar with f = 2 and first_k = 0.8, partition 0 Byzantine.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from simulations.federation.deploy import LocalFederation

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "numpy_app"
NUM_SUPERNODES = 5  # DStar's f = 2 needs 2f + 1 = 5 replies per round
NUM_ROUNDS = 3
RUN_LIMIT = 600.0
ALLOWED_IMPORTS = {"flwr", "numpy", "dstar_flwr", "numpy_app"}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_example_imports_only_the_library_and_its_dependencies() -> None:
    sources = sorted(APP_DIR.rglob("*.py"))
    assert sources, f"no Python files under {APP_DIR}"
    for path in sources:
        outside = _top_level_imports(path) - ALLOWED_IMPORTS - set(sys.stdlib_module_names)
        assert not outside, f"{path.relative_to(APP_DIR)} imports {sorted(outside)}"


def test_the_example_model_learns_the_true_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(APP_DIR))
    from numpy_app.task import distance_to_truth, initial_model, load_partition, loss, train

    x, y = load_partition(3)
    model = initial_model()
    trained = train(model, x, y, steps=200, learning_rate=0.1)
    assert loss(trained, x, y) < 0.05 < loss(model, x, y)
    assert distance_to_truth(trained) < 0.1 < distance_to_truth(model)


@pytest.mark.deployment
def test_the_example_runs_on_a_local_deployment(tmp_path: Path) -> None:
    """3 rounds on 5 SuperNodes: every round drops the Byzantine noise and the model learns."""
    with LocalFederation(
        NUM_SUPERNODES, insecure=True, app_dir=APP_DIR, work_dir=tmp_path / "federation"
    ) as federation:
        started = federation.start_run(
            {
                "num-server-rounds": NUM_ROUNDS,
                "round-timeout": 120.0,  # generous: a round closes at its 5th reply
                "results-dir": str(tmp_path / "results"),
                "run-name": "numpy-app",
            }
        )
        status = federation.wait_run(started.run_id, timeout=RUN_LIMIT)
        log = federation.run_log(started.run_id)
        assert status == "finished:completed", federation.diagnostics(started.run_id)
    assert started.results.exists(), log
    summary = json.loads(started.results.read_text())
    rounds = summary["rounds"]
    assert sorted(rounds, key=int) == [str(r) for r in range(1, NUM_ROUNDS + 1)]
    # Partition 0 replies with N(0, 100^2) noise every round; DStar rejects it.
    assert all(len(r["rejected-node-ids"]) >= 1 for r in rounds.values()), rounds
    assert summary["final-distance-to-truth"] < 0.5 * summary["initial-distance-to-truth"]
    assert np.isfinite(summary["final-distance-to-truth"])
    assert "numpy app: distance to the true model" in log

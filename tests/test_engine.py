"""The flwr-simulation replacement that gives the engine one thread per node."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flwr.server.superlink.fleet.vce import vce_api
from flwr.simulation import app as simulation_app

from simulations.federation.engine import ENGINE_WORKERS_ENV, engine_path


def _run_script(path: Path, monkeypatch: pytest.MonkeyPatch) -> int | str | None:
    calls: list[str] = []
    monkeypatch.setattr(simulation_app, "flwr_simulation", lambda: calls.append("run") or 0)
    # Restored after the test, whatever the script sets.
    monkeypatch.setattr(vce_api, "ThreadPoolExecutor", vce_api.ThreadPoolExecutor)
    with pytest.raises(SystemExit) as stopped:
        exec(compile(path.read_text(), str(path), "exec"), {"__name__": "__main__"})
    assert calls == ([] if isinstance(stopped.value.code, str) else ["run"])
    return stopped.value.code


def test_script_gives_the_engine_pool_the_requested_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = engine_path(tmp_path / "bin") / "flwr-simulation"
    assert script.stat().st_mode & 0o111, "the SuperLink runs it as a command"
    monkeypatch.setenv(ENGINE_WORKERS_ENV, "20")
    assert _run_script(script, monkeypatch) == 0
    with vce_api.ThreadPoolExecutor() as pool:
        assert pool._max_workers == 20  # the engine's default would be min(32, cores + 4)


def test_script_without_the_variable_is_the_stock_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENGINE_WORKERS_ENV, raising=False)
    assert _run_script(engine_path(tmp_path) / "flwr-simulation", monkeypatch) == 0
    assert vce_api.ThreadPoolExecutor is ThreadPoolExecutor


def test_script_refuses_a_thread_count_below_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENGINE_WORKERS_ENV, "0")
    code = _run_script(engine_path(tmp_path) / "flwr-simulation", monkeypatch)
    assert isinstance(code, str) and ENGINE_WORKERS_ENV in code


def test_script_imports_nothing_from_this_project(tmp_path: Path) -> None:
    # The ServerApp must come from the run's FAB, not from a package this script imported.
    source = (engine_path(tmp_path) / "flwr-simulation").read_text()
    for package in ("simulations", "clients", "dstar_flwr"):
        assert f"import {package}" not in source and f"from {package}" not in source


def test_max_parallel_below_one_is_refused() -> None:
    from simulations.federation.launch import run_simulation

    with pytest.raises(ValueError, match="max_parallel must be >= 1"):
        run_simulation({}, num_supernodes=3, max_parallel=0)

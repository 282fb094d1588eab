"""Run the app on the Flower simulation engine with a SuperLink of our own.

``flwr run .`` starts a shared local SuperLink that outlives the run and, by
default, installs the app's dependencies into a fresh environment with
``uv sync`` (a minute of downloads on a fresh machine). This launcher starts a
private SuperLink (free ports, its own FLWR_HOME, dependency installation off:
the current environment already has everything), runs ``flwr run`` against it,
and stops the SuperLink by its PID afterwards.

Usage::

    python -m simulations.federation.launch  # the default experiment
    python -m simulations.federation.launch --num-supernodes 20 \\
        -c "strategy='fedavg' num-server-rounds=5"
"""

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from simulations.federation.engine import ENGINE_WORKERS_ENV, engine_path

APP_DIR = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def run_config_argument(overrides: Mapping[str, object]) -> str:
    """``--run-config`` text for ``flwr run`` from a dict of overrides."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in overrides.items())


@contextmanager
def private_superlink(work_dir: Path, engine_workers: int) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink on free ports; yield the env for ``flwr run``.

    Its simulation engine runs up to ``engine_workers`` ClientApp messages at once
    (see :mod:`simulations.federation.engine`).
    """
    http_port, control_port, fleet_port = _free_port(), _free_port(), _free_port()
    env = os.environ.copy()
    env.update(
        {
            "FLWR_HOME": str(work_dir / "flwr-home"),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # The SuperLink starts flwr-simulation and flwr-serverapp by name: ours
            # first, then this interpreter's environment even when not activated.
            "PATH": os.pathsep.join(
                [
                    str(engine_path(work_dir / "bin")),
                    str(Path(sys.executable).parent),
                    env.get("PATH", ""),
                ]
            ),
            ENGINE_WORKERS_ENV: str(engine_workers),
        }
    )
    log_file = work_dir / "superlink.log"
    command = [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{control_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--fleet-api-address",
        f"127.0.0.1:{fleet_port}",
        "--disable-runtime-dependency-installation",
        "--log-file",
        str(log_file),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=APP_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited with code {process.returncode}; see {log_file}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=0.5).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower-superlink did not start in time; see {log_file}")
            time.sleep(0.3)
        yield env
    finally:
        # The SuperLink's process group holds its SuperExec and simulation children.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run_simulation(
    overrides: Mapping[str, object],
    *,
    num_supernodes: int = 10,
    app_dir: Path = APP_DIR,
    quiet: bool = False,
    max_parallel: int | None = None,
) -> Path:
    """Run one simulation and return the path of its results JSON.

    Parameters
    ----------
    overrides : Mapping[str, object]
        Run-config values that differ from pyproject.toml's.
    num_supernodes : int (default: 10)
        Simulated nodes; each gets its own Ray actor and engine thread, so that
        stragglers run in parallel with the others, as in a deployment (unless
        ``max_parallel`` is set).
    app_dir : Path
        The Flower App (this repository).
    quiet : bool (default: False)
        Do not echo the run's log.
    max_parallel : int, optional
        Run at most this many nodes' messages at once (Ray actors and engine
        threads); the others queue. Fewer workers start faster and use less
        memory, but a node that sleeps out a delay then holds up the queue, so
        leave it unset when latency or round times matter.

    Returns
    -------
    Path
        The results file the ServerApp wrote.
    """
    overrides = dict(overrides)
    results_dir = Path(str(overrides.get("results-dir", app_dir / "results"))).resolve()
    overrides["results-dir"] = str(results_dir)
    run_name = str(overrides.get("run-name") or f"run-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides["run-name"] = run_name
    if max_parallel is not None and max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}.")
    workers = min(num_supernodes, max_parallel or num_supernodes)
    federation = (
        f"num-supernodes={num_supernodes} client-resources-num-cpus=1 init-args-num-cpus={workers}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="dstar-flwr-") as work,
        private_superlink(Path(work), engine_workers=workers) as env,
    ):
        command = [
            "flwr",
            "run",
            str(app_dir),
            "--stream",
            "--run-config",
            run_config_argument(overrides),
            "--federation-config",
            federation,
        ]
        completed = subprocess.run(
            command,
            env=env,
            cwd=app_dir,
            check=False,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
            text=True,
        )
    results = results_dir / f"{run_name}.json"
    if completed.returncode != 0 or not results.exists():
        tail = (completed.stdout or "")[-4000:] if quiet else ""
        raise RuntimeError(
            f"`{shlex.join(command)}` failed (exit {completed.returncode}); "
            f"no results at {results}.\n{tail}"
        )
    return results


def parse_overrides(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, object]:
    """Run-config overrides from ``-c`` arguments (TOML ``key=value`` pairs).

    A malformed pair ends the program through ``parser.error`` with the reason.
    """
    try:
        tokens = shlex.split(" ".join(pairs), posix=False)  # keeps TOML's quotes
        return dict(tomllib.loads("\n".join(tokens)))
    except (ValueError, tomllib.TOMLDecodeError) as error:
        parser.error(
            f"--run-config takes TOML key=value pairs, e.g. \"strategy='fedavg'\": {error}"
        )
    raise AssertionError("unreachable")


def print_results(path: Path) -> None:
    """Print a results file's path and its summary."""
    summary = json.loads(path.read_text())["summary"]
    print(f"results: {path}")
    print(json.dumps(summary, indent=2))


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the private SuperLink is still stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--num-supernodes", type=int, default=10, help="simulated nodes (default: 10)"
    )
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="run-config overrides as TOML key=value pairs, e.g. \"strategy='fedavg'\"",
    )
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args.run_config)
    print_results(run_simulation(overrides, num_supernodes=args.num_supernodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

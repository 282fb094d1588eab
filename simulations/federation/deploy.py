"""Run the app on Flower's deployment engine: a SuperLink and SuperNodes on this machine.

Every component is a separate process tree, as on real devices: one
``flower-superlink`` (state in an SQLite file) and one ``flower-supernode`` per
node, each with its own node config (``partition-id`` and ``num-partitions``
are set for you; add ``latency-seconds``, ``device`` or any other key per
node), its own ``FLWR_HOME`` and ``--isolation subprocess`` (the SuperNode
starts a ``flwr-clientapp`` process per message). The app is submitted with
``flwr run`` through a ``flwr`` CLI connection of its own (a private
``FLWR_HOME``). By default the SuperLink serves TLS with certificates made for
the run, and only SuperNodes whose public keys were registered with ``flwr
supernode register`` may connect (``--insecure`` turns both off). Runtime
dependency installation is off everywhere: this environment has the app's
dependencies. Everything started is stopped on exit, on errors and on SIGTERM.

Usage::

    python -m simulations.federation.deploy  # the default experiment, 10 SuperNodes
    python -m simulations.federation.deploy --num-supernodes 5 \\
        --node-config "4:latency-seconds=3.0" \\
        -c "num-server-rounds=3 num-byzantine-nodes=1 num-byzantine=1 first-k=4"
    python -m simulations.federation.deploy --insecure ...  # no TLS, no SuperNode authentication

As a library::

    with LocalFederation(5, node_configs={4: {"latency-seconds": 3.0}}) as federation:
        results = federation.run({"num-byzantine-nodes": 1, "num-byzantine": 1, "first-k": 4})
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from simulations.federation.certificates import (
    ServerCertificates,
    SuperNodeKeys,
    generate_server_certificates,
    generate_supernode_keys,
)
from simulations.federation.launch import (
    APP_DIR,
    _free_port,
    exit_on_sigterm,
    print_results,
    run_config_argument,
)

CONNECTION = "local-deployment"
STARTUP_TIMEOUT = 60.0
RUN_TIMEOUT = 3600.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 1.0
_LOG_TAIL = 3000
_NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")


class DeploymentError(RuntimeError):
    """A component did not start, a CLI call failed, or a run did not finish."""


@dataclass
class SuperNodeProcess:
    """One running (or ended) ``flower-supernode`` of a :class:`LocalFederation`.

    Attributes
    ----------
    index : int
        Position in :attr:`LocalFederation.supernodes`.
    node_config : dict[str, object]
        The node config it was started with.
    process : subprocess.Popen[bytes]
        The ``flower-supernode`` process (the leader of its process group).
    log_file : Path
        Its stdout and stderr.
    keys : SuperNodeKeys | None
        Its authentication key pair (None: started without one).
    node_id : int | None
        The id the SuperLink gave it at registration (None: not registered).
    """

    index: int
    node_config: dict[str, object]
    process: subprocess.Popen[bytes]
    log_file: Path
    keys: SuperNodeKeys | None = None
    node_id: int | None = None

    @property
    def alive(self) -> bool:
        """Whether the ``flower-supernode`` process is still running."""
        return self.process.poll() is None

    def log(self) -> str:
        """Everything it has logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def reported_node_id(self) -> int | None:
        """The node id the SuperNode logged after connecting, if it has."""
        match = _NODE_ID_LINE.search(self.log())
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class StartedRun:
    """A run submitted with ``flwr run``.

    Attributes
    ----------
    run_id : int
        The SuperLink's id of the run.
    results : Path
        Where the ServerApp writes the run's results JSON.
    """

    run_id: int
    results: Path


# ``flower-superlink`` with another SQLite busy timeout: Flower 1.42 sets its
# pragmas from a constant (5000 ms) before it connects; replacing the constant
# before the SuperLink's modules import it changes nothing else. argv: the
# milliseconds, then flower-superlink's own arguments.
SUPERLINK_WITH_BUSY_TIMEOUT = """
import sys
from flwr.supercore import constant
milliseconds = sys.argv.pop(1)
constant.SQLITE_PRAGMAS = tuple(
    (name, milliseconds if name == "busy_timeout" else value)
    for name, value in constant.SQLITE_PRAGMAS
)
from flwr.superlink.cli.flower_superlink import flower_superlink
sys.argv[0] = "flower-superlink"
sys.exit(flower_superlink())
"""


def processes_below(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (Linux ``/proc``; elsewhere none).

    Flower starts its SuperExec and app processes in sessions of their own, so
    the process group of a component does not hold all of them.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.extend(below)
        frontier.extend(below)
    return found


def _signal_tree(process: subprocess.Popen[bytes], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to ``process``, its process group and all its descendants."""
    pids = processes_below(process.pid)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    try:
        return status.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def processes_with_home(folder: Path) -> list[int]:
    """PIDs of this user's processes whose ``FLWR_HOME`` lies in ``folder`` (Linux ``/proc``).

    Flower's SuperExec detaches from the SuperNode that starts it (its parent
    becomes init), so a process tree does not reach it nor the ClientApps it
    started; their environment still names the federation's folder.
    """
    prefix = f"FLWR_HOME={Path(folder).resolve()}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        if pid == os.getpid():
            continue
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if any(v.startswith(prefix) for v in variables):
            found.append(pid)
    return found


def stop_process_tree(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a component and everything it started; SIGKILL what is left after ``timeout``."""
    if process.poll() is not None and not processes_below(process.pid):
        return
    pids = _signal_tree(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None and not any(_alive(pid) for pid in pids):
            return
        time.sleep(0.1)
    _signal_tree(process, signal.SIGKILL)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def node_config_argument(node_config: Mapping[str, object]) -> str:
    """``--node-config`` text for ``flower-supernode`` from a dict."""
    return run_config_argument(node_config)


def _tail(text: str, limit: int = _LOG_TAIL) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


# pylint: disable=too-many-instance-attributes
class LocalFederation:
    """A SuperLink and SuperNodes as separate processes on this machine.

    Parameters
    ----------
    num_supernodes : int
        SuperNodes to start; node ``i`` gets ``partition-id = i`` and
        ``num-partitions = num_supernodes``.
    node_configs : Mapping[int, Mapping[str, object]], optional
        Extra node-config keys per node index, e.g. ``{4: {"latency-seconds": 3.0}}``.
    work_dir : Path, optional
        Where certificates, keys, logs, the SuperLink's database and the
        ``FLWR_HOME`` folders go. None: a temporary folder, removed on exit.
    insecure : bool (default: False)
        Plain HTTP and no SuperNode authentication. Only when asked for.
    certificates : ServerCertificates, optional
        The SuperLink's TLS files. None: a CA and a certificate for
        ``127.0.0.1`` and ``localhost`` are made in ``work_dir``.
    app_dir : Path
        The Flower App to run (this repository).
    port : int, optional
        The SuperLink's port (Fleet, Control and ServerApp runtime APIs share
        it). None: a free one.
    startup_timeout : float (default: 60.0)
        Seconds to wait for the SuperLink to answer and the SuperNodes to be
        online.
    supernode_niceness : int (default: 0)
        Run the SuperNodes, and so their ClientApps, under ``nice -n`` this
        (0: as they are). With many SuperNodes on a few cores, a positive value
        keeps their ClientApps from starving the SuperLink.
    sqlite_busy_timeout : float, optional
        Seconds the SuperLink's SQLite connections wait for a lock (Flower 1.42
        fixes 5 s and has no option for it; see :data:`SUPERLINK_WITH_BUSY_TIMEOUT`).
        None: Flower's own. On an overloaded machine, 5 s is exceeded, the
        SuperLink answers HTTP 500 and its SuperExec exits.

    Notes
    -----
    Use it as a context manager; leaving the ``with`` block (normally, on an
    exception, or on SIGTERM turned into ``SystemExit``) stops every process
    it started, with everything they started.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        num_supernodes: int,
        *,
        node_configs: Mapping[int, Mapping[str, object]] | None = None,
        work_dir: Path | None = None,
        insecure: bool = False,
        certificates: ServerCertificates | None = None,
        app_dir: Path = APP_DIR,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        supernode_niceness: int = 0,
        sqlite_busy_timeout: float | None = None,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}.")
        node_configs = dict(node_configs or {})
        unknown = sorted(i for i in node_configs if not 0 <= i < num_supernodes)
        if unknown:
            raise ValueError(
                f"node configs given for nodes {unknown}, but the nodes are "
                f"0..{num_supernodes - 1}; raise num_supernodes or fix the indices."
            )
        if insecure and certificates is not None:
            raise ValueError("certificates were given with insecure=True; drop one of them.")
        self.num_supernodes = num_supernodes
        self.node_configs = {i: dict(c) for i, c in node_configs.items()}
        self.insecure = insecure
        self.app_dir = Path(app_dir).resolve()
        self.port = port or _free_port()
        self.startup_timeout = startup_timeout
        self.supernode_niceness = supernode_niceness
        if sqlite_busy_timeout is not None and sqlite_busy_timeout <= 0:
            raise ValueError(f"sqlite_busy_timeout must be > 0 s, got {sqlite_busy_timeout}.")
        self.sqlite_busy_timeout = sqlite_busy_timeout
        self.certificates = certificates
        self.supernodes: list[SuperNodeProcess] = []
        self.superlink: subprocess.Popen[bytes] | None = None
        self._given_work_dir = work_dir
        self._stack = ExitStack()
        self._started: list[subprocess.Popen[bytes]] = []  # to stop, in reverse order
        self._log_followers: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
        self.work_dir = Path()
        self.env: dict[str, str] = {}

    # --- lifecycle -----------------------------------------------------------

    @property
    def address(self) -> str:
        """The SuperLink's ``host:port`` for SuperNodes and the ``flwr`` CLI."""
        return f"127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        """The SuperLink's SQLite state."""
        return self.work_dir / "superlink.db"

    @property
    def superlink_log_file(self) -> Path:
        """The SuperLink's stdout and stderr."""
        return self.work_dir / "superlink.log"

    def __enter__(self) -> LocalFederation:
        """Start the SuperLink and the SuperNodes; stop everything if that fails."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop every process started."""
        self.close()

    def start(self) -> None:
        """Start the SuperLink, register and start the SuperNodes, wait until all are online."""
        if self._given_work_dir is None:
            self.work_dir = Path(
                self._stack.enter_context(tempfile.TemporaryDirectory(prefix="dstar-deploy-"))
            )
        else:
            self.work_dir = Path(self._given_work_dir).resolve()
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.env = self._base_env(self.work_dir / "flwr-home")
        if not self.insecure and self.certificates is None:
            self.certificates = generate_server_certificates(self.work_dir / "certificates")
        self._write_cli_connection()
        self._start_superlink()
        configs = []
        for index in range(self.num_supernodes):
            config = {"partition-id": index, "num-partitions": self.num_supernodes}
            config.update(self.node_configs.get(index, {}))
            configs.append(config)
        keys: list[SuperNodeKeys | None] = [None] * self.num_supernodes
        node_ids: list[int | None] = [None] * self.num_supernodes
        if not self.insecure:
            keys = [
                generate_supernode_keys(self.work_dir / "keys", f"supernode-{index}")
                for index in range(self.num_supernodes)
            ]
            # One CLI call per key: in parallel, they take the time of one.
            with ThreadPoolExecutor(max_workers=self.num_supernodes) as pool:
                node_ids = list(pool.map(self.register, [k.public_key for k in keys if k]))
        for config, key, node_id in zip(configs, keys, node_ids, strict=True):
            self._launch_supernode(config, key, node_id, self.insecure, None)
        self.wait_online(self.num_supernodes, watch=self.supernodes)

    def close(self) -> None:
        """Stop the SuperNodes, then the SuperLink (each with all it started).

        Then SIGKILL whatever still runs with a ``FLWR_HOME`` in the work folder:
        SuperExecs that outlived their SuperNode, and their ClientApps.
        """
        while self._started:
            stop_process_tree(self._started.pop())
        if self.work_dir != Path():
            for pid in processes_with_home(self.work_dir):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log_followers.clear()
        self._stack.close()

    def _base_env(self, flwr_home: Path) -> dict[str, str]:
        env = os.environ.copy()
        env.update(
            {
                "FLWR_HOME": str(flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp
                # by name: this interpreter's, even when its venv is not activated.
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            }
        )
        return env

    def _write_cli_connection(self) -> None:
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        if self.insecure:
            security = "insecure = true"
        else:
            assert self.certificates is not None
            root = self.certificates.ca_certificate.resolve()
            security = f"root-certificates = {json.dumps(str(root))}"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}\n'
        )

    def _popen(
        self, command: list[str], log_file: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=dict(env),
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append(process)
        return process

    def _start_superlink(self) -> None:
        if self.sqlite_busy_timeout is None:
            launcher = ["flower-superlink"]
        else:
            milliseconds = str(round(1000 * self.sqlite_busy_timeout))
            launcher = [sys.executable, "-c", SUPERLINK_WITH_BUSY_TIMEOUT, milliseconds]
        command = [
            *launcher,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.database),
            "--isolation",
            "subprocess",
            "--disable-runtime-dependency-installation",
        ]
        if self.insecure:
            command.append("--insecure")
        else:
            assert self.certificates is not None
            command += [
                "--ssl-ca-certfile",
                str(self.certificates.ca_certificate),
                "--ssl-certfile",
                str(self.certificates.server_certificate),
                "--ssl-keyfile",
                str(self.certificates.server_key),
                "--enable-supernode-auth",
            ]
        self.superlink = self._popen(command, self.superlink_log_file, self.env)
        scheme, verify = ("http", False) if self.insecure else ("https", self._ssl_context())
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.superlink.poll() is not None:
                raise DeploymentError(
                    f"flower-superlink exited with code {self.superlink.returncode}:\n"
                    + _tail(self.superlink_log())
                )
            try:
                url = f"{scheme}://{self.address}/health"
                if httpx.get(url, timeout=1.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"flower-superlink did not answer in {self.startup_timeout:.0f} s:\n"
                    + _tail(self.superlink_log())
                )
            time.sleep(0.3)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.certificates is not None
        return ssl.create_default_context(cafile=str(self.certificates.ca_certificate))

    # --- SuperNodes -------------------------------------------------------------

    # pylint: disable=too-many-arguments
    def add_supernode(
        self,
        node_config: Mapping[str, object],
        *,
        register: bool = True,
        keys: SuperNodeKeys | None = None,
        insecure: bool | None = None,
        max_wait_time: float | None = None,
        wait: bool = True,
    ) -> SuperNodeProcess:
        """Start one more SuperNode.

        Parameters
        ----------
        node_config : Mapping[str, object]
            Its node config; must hold ``partition-id`` and ``num-partitions``.
        register : bool (default: True)
            Register its public key with the SuperLink first (``flwr supernode
            register``); False starts a node the SuperLink does not know.
        keys : SuperNodeKeys, optional
            Its key pair. None: a new one (with TLS).
        insecure : bool, optional
            Connect without TLS and without a key. None: as the federation.
        max_wait_time : float, optional
            Seconds after which the SuperNode gives up connecting and exits
            (``--max-wait-time``). None: it keeps trying.
        wait : bool (default: True)
            Wait until the SuperLink lists one more node online.

        Returns
        -------
        SuperNodeProcess
            The started SuperNode.
        """
        for key in ("partition-id", "num-partitions"):
            if key not in node_config:
                raise ValueError(f"node_config needs '{key}' (the ClientApp reads it).")
        insecure = self.insecure if insecure is None else insecure
        if not insecure and self.certificates is None:
            raise ValueError("a SuperNode with TLS needs a federation with TLS (insecure=False).")
        online_before = len(self.online_node_ids()) if wait else 0
        node_id = None
        if not insecure:
            keys = keys or generate_supernode_keys(
                self.work_dir / "keys", f"supernode-{len(self.supernodes)}"
            )
            if register and not self.insecure:
                node_id = self.register(keys.public_key)
        supernode = self._launch_supernode(node_config, keys, node_id, insecure, max_wait_time)
        if wait:
            self.wait_online(online_before + 1, watch=[supernode])
        return supernode

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def _launch_supernode(
        self,
        node_config: Mapping[str, object],
        keys: SuperNodeKeys | None,
        node_id: int | None,
        insecure: bool,
        max_wait_time: float | None,
    ) -> SuperNodeProcess:
        index = len(self.supernodes)
        name = f"supernode-{index}"
        # The SuperNodes (and the ClientApps they start) stand in for other machines:
        # niced, they leave the SuperLink's and the ServerApp's turn to them.
        nice = ["nice", "-n", str(self.supernode_niceness)] if self.supernode_niceness else []
        command = [
            *nice,
            "flower-supernode",
            "--superlink",
            self.address,
            "--isolation",
            "subprocess",
            "--port",
            str(_free_port()),
            "--node-config",
            node_config_argument(node_config),
        ]
        if insecure:
            command.append("--insecure")
        else:
            assert self.certificates is not None and keys is not None
            command += [
                "--root-certificates",
                str(self.certificates.ca_certificate),
                "--auth-supernode-private-key",
                str(keys.private_key),
            ]
        if max_wait_time is not None:
            command += ["--max-wait-time", str(max_wait_time)]
        env = self._base_env(self.work_dir / name / "flwr-home")
        supernode = SuperNodeProcess(
            index=index,
            node_config=dict(node_config),
            process=self._popen(command, self.work_dir / f"{name}.log", env),
            log_file=self.work_dir / f"{name}.log",
            keys=keys,
            node_id=node_id,
        )
        self.supernodes.append(supernode)
        return supernode

    def serverapp_superexec_alive(self) -> bool:
        """Whether the SuperExec the SuperLink started for ServerApps still runs.

        Flower 1.42's SuperExec exits on an HTTP error from the SuperLink (e.g. a
        500 "database is locked" under heavy load), and the SuperLink does not
        start another: no ServerApp can start after that, and the running one
        ends with it (it watches its parent). Linux ``/proc`` only; elsewhere True.
        """
        if self.superlink is None or not Path("/proc").exists():
            return True
        for pid in processes_below(self.superlink.pid):
            with suppress(OSError):
                if b"flower-superexec" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
        return False

    def kill_supernode(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL: a crash) to SuperNode ``index`` and all it started."""
        supernode = self.supernodes[index]
        _signal_tree(supernode.process, sig)
        if sig == signal.SIGKILL:
            supernode.process.wait()

    def register(self, public_key: Path) -> int:
        """Register a SuperNode's public key with the SuperLink; return its node id."""
        reply = self.flwr_json("supernode", "register", str(public_key), CONNECTION)
        return int(reply["node-id"])

    def list_nodes(self) -> list[dict[str, object]]:
        """The SuperLink's nodes (``flwr supernode list``): node id, status, times."""
        reply = self.flwr_json("supernode", "list", CONNECTION)
        return list(reply.get("nodes", []))

    def online_node_ids(self) -> set[int]:
        """Ids of the nodes the SuperLink considers online."""
        return {int(str(n["node-id"])) for n in self.list_nodes() if n.get("status") == "online"}

    def wait_online(
        self,
        count: int,
        watch: Sequence[SuperNodeProcess] = (),
        timeout: float | None = None,
    ) -> set[int]:
        """Wait until ``count`` nodes are online; return their ids.

        Fails at once, with its log, when a SuperNode in ``watch`` exits.
        """
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        # Each SuperNode logs its node id once the SuperLink has let it in; reading
        # the logs costs less than asking the SuperLink through the CLI.
        while not all(supernode.reported_node_id() for supernode in watch):
            self._fail_if_exited(watch)
            if time.monotonic() > deadline:
                break
            time.sleep(0.3)
        while True:
            online = self.online_node_ids()
            if len(online) >= count:
                return online
            self._fail_if_exited(watch)
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{len(online)} of {count} SuperNodes online after the wait.\n"
                    + self.diagnostics()
                )
            time.sleep(2 * POLL_INTERVAL)

    def busy_supernodes(self) -> list[int]:
        """Indices of the live SuperNodes working on a message, by their logs.

        A SuperNode logs ``Receiving:`` for every message it pulls, then either
        ``Sending:`` for its reply or, when the message's run is no longer
        running, ``Ignoring message``.
        """
        busy = []
        for supernode in self.supernodes:
            log = supernode.log()
            pending = (
                log.count("Receiving:") - log.count("Sending:") - log.count("Ignoring message")
            )
            if supernode.alive and pending > 0:
                busy.append(supernode.index)
        return busy

    def wait_idle(self, timeout: float = RUN_TIMEOUT) -> None:
        """Wait until no SuperNode is working on a message (see :meth:`busy_supernodes`).

        A stopped run's messages still run to their end on the nodes that had
        pulled them; a run started at once finds those nodes busy and late.
        """
        deadline = time.monotonic() + timeout
        while busy := self.busy_supernodes():
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"SuperNodes {busy} still work on a message after {timeout:.0f} s.\n"
                    + self.diagnostics()
                )
            time.sleep(0.2)

    @staticmethod
    def _fail_if_exited(supernodes: Sequence[SuperNodeProcess]) -> None:
        for supernode in supernodes:
            if not supernode.alive:
                raise DeploymentError(
                    f"SuperNode {supernode.index} exited with code "
                    f"{supernode.process.returncode}:\n" + _tail(supernode.log())
                )

    # --- runs -------------------------------------------------------------------

    def flwr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this federation's SuperLink."""
        completed = subprocess.run(
            ["flwr", *args],
            env=self.env,
            cwd=self.app_dir,
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if check and completed.returncode != 0:
            raise DeploymentError(
                f"`flwr {shlex.join(args)}` failed (exit {completed.returncode}):\n"
                + _tail(completed.stdout + completed.stderr)
            )
        return completed

    def flwr_json(self, *args: str) -> dict[str, object]:
        """Run a ``flwr`` CLI command with ``--format json`` and return its reply."""
        completed = self.flwr(*args, "--format", "json", check=False)
        try:
            reply = json.loads(completed.stdout)
        except json.JSONDecodeError:
            reply = None
        if completed.returncode != 0 or not isinstance(reply, dict) or not reply.get("success"):
            raise DeploymentError(
                f"`flwr {shlex.join(args)} --format json` failed (exit {completed.returncode}):\n"
                + _tail(completed.stdout + completed.stderr)
            )
        return reply

    def start_run(self, overrides: Mapping[str, object]) -> StartedRun:
        """Submit the app with ``flwr run``; return at once with the run id.

        ``results-dir`` is made absolute (default: ``<app_dir>/results``) and
        ``run-name`` defaults to ``deploy-<time>``.
        """
        overrides = dict(overrides)
        results_dir = Path(str(overrides.get("results-dir", self.app_dir / "results")))
        results_dir = (self.app_dir / results_dir).resolve()
        overrides["results-dir"] = str(results_dir)
        run_name = str(overrides.get("run-name") or f"deploy-{time.strftime('%Y%m%d-%H%M%S')}")
        overrides["run-name"] = run_name
        args = ["run", str(self.app_dir), CONNECTION]
        if overrides:
            args += ["--run-config", run_config_argument(overrides)]
        reply = self.flwr_json(*args)
        return StartedRun(
            run_id=int(str(reply["run-id"])), results=results_dir / f"{run_name}.json"
        )

    def run_status(self, run_id: int) -> str:
        """The run's status, e.g. ``running`` or ``finished:completed``."""
        reply = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id))
        runs = reply.get("runs")
        if not isinstance(runs, list) or not runs:
            raise DeploymentError(f"the SuperLink knows no run {run_id}.")
        return str(runs[0]["status"])

    def follow_log(self, run_id: int) -> Path:
        """Stream the run's log into ``<work_dir>/run-<run_id>.log`` (``flwr log --stream``).

        The stream ends when the run finishes. Note that a finished run's
        messages and objects are removed from the SuperLink's state when its
        log stream ends (Flower's own clean-up).
        """
        if run_id not in self._log_followers:
            log_file = self.work_dir / f"run-{run_id}.log"
            command = ["flwr", "log", str(run_id), CONNECTION, "--stream"]
            self._log_followers[run_id] = (self._popen(command, log_file, self.env), log_file)
        return self._log_followers[run_id][1]

    def wait_run(self, run_id: int, timeout: float = RUN_TIMEOUT) -> str:
        """Wait until the run has finished; return its final status, e.g. ``finished:completed``.

        Waits on the run's log stream (see :meth:`follow_log`) rather than
        polling the SuperLink.
        """
        deadline = time.monotonic() + timeout
        self.follow_log(run_id)
        follower, _ = self._log_followers[run_id]
        with suppress(subprocess.TimeoutExpired):
            follower.wait(timeout=timeout)
        while True:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"run {run_id} still {status} after {timeout:.0f} s.\n"
                    + _tail(self.run_log(run_id))
                )
            time.sleep(5 * POLL_INTERVAL)  # the stream broke off; ask now and then

    def stop_run(self, run_id: int) -> None:
        """Stop a run (``flwr stop``): the SuperLink ends its ServerApp."""
        self.flwr_json("stop", str(run_id), CONNECTION)

    def run_log(self, run_id: int) -> str:
        """The run's log so far: the followed stream, else ``flwr log --show``."""
        if run_id in self._log_followers:
            return self._log_followers[run_id][1].read_text(errors="replace")
        return self.flwr("log", str(run_id), CONNECTION, "--show", check=False).stdout

    def run(self, overrides: Mapping[str, object], timeout: float = RUN_TIMEOUT) -> Path:
        """Run the app to the end and return the path of its results JSON.

        Raises
        ------
        DeploymentError
            When the run does not complete or writes no results; the message
            holds the tail of the run's log.
        """
        started = self.start_run(overrides)
        status = self.wait_run(started.run_id, timeout)
        if status != "finished:completed" or not started.results.exists():
            raise DeploymentError(
                f"run {started.run_id} ended {status}; results at {started.results}: "
                f"{started.results.exists()}.\n" + self.diagnostics(started.run_id)
            )
        return started.results

    # --- diagnostics -------------------------------------------------------------

    def superlink_log(self) -> str:
        """Everything the SuperLink has logged so far."""
        path = self.superlink_log_file
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self, run_id: int | None = None) -> str:
        """Tails of the run's log and of every component's log, for error messages."""
        parts = []
        if run_id is not None:
            parts.append(f"--- run {run_id} ---\n{_tail(self.run_log(run_id))}")
        parts.append(
            f"--- SuperLink ({self.superlink_log_file}) ---\n{_tail(self.superlink_log())}"
        )
        for supernode in self.supernodes:
            state = "running" if supernode.alive else f"exit {supernode.process.returncode}"
            parts.append(
                f"--- SuperNode {supernode.index} ({state}, {supernode.log_file}) ---\n"
                + _tail(supernode.log(), 1000)
            )
        return "\n".join(parts)


def parse_pairs(text: str) -> dict[str, object]:
    """TOML ``key=value`` pairs separated by spaces: ``"a=1 b='x'"`` -> ``{"a": 1, "b": "x"}``."""
    tokens = shlex.split(text, posix=False)  # keeps TOML's quotes
    return dict(tomllib.loads("\n".join(tokens)))


def parse_node_configs(
    parser: argparse.ArgumentParser, entries: Sequence[str], num_supernodes: int
) -> dict[int, dict[str, object]]:
    """Per-node configs from ``--node-config "INDEX[,INDEX...]:key=value ..."`` arguments."""
    configs: dict[int, dict[str, object]] = {}
    for entry in entries:
        indices, separator, pairs = entry.partition(":")
        try:
            if not separator:
                raise ValueError("missing ':' after the node indices")
            nodes = [int(i) for i in indices.split(",")]
            values = parse_pairs(pairs)
        except (ValueError, tomllib.TOMLDecodeError) as error:
            parser.error(
                f"--node-config {entry!r}: write INDEX[,INDEX...]:key=value ..., e.g. "
                f'"4:latency-seconds=3.0" or "0,1:device=\'cpu\'" ({error})'
            )
        for node in nodes:
            if not 0 <= node < num_supernodes:
                parser.error(
                    f"--node-config {entry!r}: node {node} does not exist; nodes are "
                    f"0..{num_supernodes - 1} (see --num-supernodes)"
                )
            configs.setdefault(node, {}).update(values)
    return configs


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(
        prog="python -m simulations.federation.deploy",
        description=__doc__.split("\n\n")[0],
        epilog="See docs/deployment.md for running SuperNodes on other machines.",
    )
    parser.add_argument(
        "--num-supernodes",
        type=int,
        default=10,
        help="SuperNodes to start (default: 10, as the default run config expects)",
    )
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help='run-config overrides as TOML key=value pairs, e.g. "num-server-rounds=3"',
    )
    parser.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="INDEX[,INDEX...]:PAIRS",
        help='extra node config of some nodes, e.g. "4:latency-seconds=3.0" '
        "(partition-id and num-partitions are set for every node)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication (only on a trusted machine)",
    )
    parser.add_argument(
        "--certificates",
        type=Path,
        metavar="DIR",
        help="use DIR/ca.pem, DIR/server.pem and DIR/server.key instead of new ones "
        "(python -m simulations.federation.certificates DIR writes them)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep certificates, keys, logs and the SuperLink database here "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--port", type=int, help="the SuperLink's port (default: a free one)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=RUN_TIMEOUT,
        help=f"seconds to wait for the run (default: {RUN_TIMEOUT:.0f})",
    )
    args = parser.parse_args(argv)
    if args.num_supernodes < 1:
        parser.error("--num-supernodes must be >= 1")
    if args.insecure and args.certificates:
        parser.error("--insecure and --certificates contradict each other; drop one")
    try:
        overrides = parse_pairs(" ".join(args.run_config))
    except (ValueError, tomllib.TOMLDecodeError) as error:
        parser.error(
            f"--run-config takes TOML key=value pairs, e.g. \"strategy='fedavg'\": {error}"
        )
    node_configs = parse_node_configs(parser, args.node_config, args.num_supernodes)
    certificates = None
    if args.certificates:
        directory = args.certificates.resolve()
        certificates = ServerCertificates(
            directory / "ca.pem", directory / "server.pem", directory / "server.key"
        )
        missing = [str(p) for p in vars(certificates).values() if not p.exists()]
        if missing:
            parser.error(f"--certificates: missing {', '.join(missing)}")
    try:
        with LocalFederation(
            args.num_supernodes,
            node_configs=node_configs,
            work_dir=args.work_dir,
            insecure=args.insecure,
            certificates=certificates,
            port=args.port,
        ) as federation:
            security = "no TLS, no SuperNode authentication" if args.insecure else "TLS"
            print(
                f"SuperLink at {federation.address} ({security}), "
                f"{args.num_supernodes} SuperNodes online; logs in {federation.work_dir}",
                flush=True,
            )
            path = federation.run(overrides, timeout=args.timeout)
    except DeploymentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_results(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

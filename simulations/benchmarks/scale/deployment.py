"""Many SuperNodes on one machine: kills, restarts, a stop and a resume, and what is left.

A local deployment (:class:`~simulations.federation.deploy.LocalFederation`: TLS,
SuperNode authentication, one ``flower-supernode`` process per node) runs DStar
with checkpoints, by default on 20 SuperNodes for 10 rounds. While it runs:

- SuperNodes are SIGKILLed (a crash) when given rounds start, by default node 5
  at round 2, node 10 at round 4 and node 15 at round 7; each is restarted with
  its own key (the same node id) once the SuperLink has marked it offline (its
  heartbeat overdue, about a minute after the kill in Flower 1.42);
- the ServerApp is stopped (``flwr stop``) once round 5 is checkpointed, and the
  run is started again with ``resume = true``.

Then it checks that every round 1..R is in the results, completed or skipped
with the reason DStar logged; that no checkpointed round was lost or changed by
the resume; and that no message or object of either run (the stopped one and the
resumed one) is left in the SuperLink's state: when the ServerApp has written its
results (what DStar itself drained) and after the run has finished.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dstar_flwr.checkpoint import load_checkpoint
from simulations.benchmarks.scale.faults import fault_overrides
from simulations.benchmarks.scale.figures import (
    logged_rounds,
    lost_rounds,
    round_outcomes,
    summarize_costs,
)
from simulations.federation.deploy import (
    DeploymentError,
    LocalFederation,
    StartedRun,
    SuperNodeProcess,
    processes_with_home,
)
from simulations.federation.link_state import node_offline, run_state

RUN_NAME = "scale-deployment"
# Tables of the SuperLink's state that hold a run's messages and objects (Flower 1.42).
_ROUND_START = re.compile(r"\[ROUND (\d+)/\d+\]")
_POLL = 0.5
_HEALTH_INTERVAL = 20.0  # seconds between checks that the run goes on


@dataclass(frozen=True)
class Kill:
    """SIGKILL SuperNode ``node`` when round ``server_round`` starts."""

    server_round: int
    node: int

    @classmethod
    def parse(cls, text: str) -> Kill:
        """``"ROUND:NODE"``, e.g. ``"2:5"``."""
        server_round, _, node = text.partition(":")
        try:
            return cls(int(server_round), int(node))
        except ValueError:
            raise ValueError(f"a kill is ROUND:NODE, e.g. 2:5; got {text!r}") from None


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class DeploymentSetting:
    """The deployment benchmark's federation, run config and faults (defaults: the full sizes)."""

    num_supernodes: int = 20
    rounds: int = 10
    kills: tuple[Kill, ...] = (Kill(2, 5), Kill(4, 10), Kill(7, 15))
    stop_after: int = 5
    first_k: float = 0.8
    num_byzantine: int = 2
    byzantine_fraction: float = 0.1
    latency_median: float = 0.5
    latency_sigma: float = 1.0
    dataset: str = "digits"
    round_timeout: float = 120.0
    run_limit: float = 1800.0
    seed: int = 42
    insecure: bool = False
    # 20 SuperNodes on 2 cores: niced, their ClientApps do not starve the SuperLink
    # past its SQLite lock timeout (5 s), which ends Flower's SuperExec.
    supernode_niceness: int = 10
    # Flower's 5 s is exceeded on 2 cores with 20 SuperNodes (then a 500 ends the
    # SuperLink's SuperExec); None keeps Flower's.
    sqlite_busy_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        if self.num_supernodes < 1 or self.rounds < 2:
            raise ValueError("a deployment needs >= 1 SuperNode and >= 2 rounds (a stop between)")
        if not 1 <= self.stop_after < self.rounds:
            raise ValueError(f"stop_after must be in 1..{self.rounds - 1}, got {self.stop_after}")
        nodes = [kill.node for kill in self.kills]
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"each SuperNode is killed once; got nodes {nodes}")
        for kill in self.kills:
            if not 0 <= kill.node < self.num_supernodes:
                raise ValueError(f"kill {kill}: nodes are 0..{self.num_supernodes - 1}")
            if not 1 <= kill.server_round <= self.rounds:
                raise ValueError(f"kill {kill}: rounds are 1..{self.rounds}")

    def overrides(self, results_dir: Path, checkpoint_dir: Path) -> dict[str, object]:
        """The run config (DStar with checkpoints)."""
        return {
            "strategy": "dstar",
            "dataset": self.dataset,
            "num-server-rounds": self.rounds,
            "first-k": self.first_k,
            "num-byzantine": self.num_byzantine,
            **fault_overrides(self.byzantine_fraction, self.latency_median, self.latency_sigma),
            "round-timeout": self.round_timeout,
            "seed": self.seed,
            "results-dir": str(results_dir),
            "run-name": RUN_NAME,
            "checkpoint-dir": str(checkpoint_dir),
        }


def current_round(log: str) -> int:
    """The last round a run's log says has started (0: none yet)."""
    return max((int(m.group(1)) for m in _ROUND_START.finditer(log)), default=0)


@dataclass
class _Killed:
    kill: Kill
    supernode: SuperNodeProcess
    node_id: int
    killed_at: float
    restarted: SuperNodeProcess | None = None


@dataclass
class _Scenario:
    """Drives the kills and restarts while a run goes on; records the events."""

    federation: LocalFederation
    setting: DeploymentSetting
    checkpoint: Path
    started_at: float = field(default_factory=time.monotonic)
    killed: list[_Killed] = field(default_factory=list)
    events: list[dict[str, object]] = field(default_factory=list)
    run_label: str = "first"
    run: StartedRun | None = None

    def record(self, what: str, **details: object) -> None:
        event = {"t": round(time.monotonic() - self.started_at, 1), "event": what, **details}
        self.events.append(event)
        print("  " + " ".join(f"{k}={v}" for k, v in event.items()), flush=True)

    def round_now(self) -> int:
        """The round running now: the log's last round start, or the round after the
        last checkpointed one if that is later (the log stream can lag minutes behind
        on a loaded machine; the checkpoint is written as each round ends)."""
        if self.run is None:
            return 0
        log_file = self.federation.follow_log(self.run.run_id)
        logged = current_round(log_file.read_text(errors="replace"))
        checkpointed = _checkpointed_round(self.checkpoint)
        return max(logged, checkpointed + 1 if checkpointed else 0)

    def step(self) -> None:
        """Kill what is due at the current round; restart what the SuperLink has let go."""
        server_round = self.round_now()
        done = {k.kill.node for k in self.killed}
        for kill in self.setting.kills:
            if kill.node not in done and 0 < kill.server_round <= server_round:
                supernode = self.federation.supernodes[kill.node]
                node_id = supernode.node_id or supernode.reported_node_id()
                if node_id is None:
                    raise DeploymentError(f"SuperNode {kill.node} has no node id to watch")
                self.federation.kill_supernode(kill.node)
                self.killed.append(_Killed(kill, supernode, node_id, time.monotonic()))
                self.record(
                    "kill", node=kill.node, node_id=node_id, run=self.run_label, round=server_round
                )
        for killed in self.killed:
            if killed.restarted is not None:
                continue
            with suppress(sqlite3.OperationalError):  # the SuperLink is writing; look again
                if not node_offline(self.federation.database, killed.node_id):
                    continue
                killed.restarted = self.federation.add_supernode(
                    killed.supernode.node_config,
                    register=False,
                    keys=killed.supernode.keys,
                    wait=False,
                )
                self.record(
                    "restart",
                    node=killed.kill.node,
                    offline_after_s=round(time.monotonic() - killed.killed_at, 1),
                    run=self.run_label,
                    round=server_round,
                )

    def pending_restarts(self) -> list[int]:
        return [k.kill.node for k in self.killed if k.restarted is None]


def clientapp_processes(work_dir: Path) -> int:
    """ClientApp processes running for the federation in ``work_dir``."""
    count = 0
    for pid in processes_with_home(work_dir):
        with suppress(OSError):
            if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                count += 1
    return count


def _check_health(scenario: _Scenario) -> None:
    """Fail at once when the run has ended, or ClientApps pile up (an overloaded machine)."""
    federation = scenario.federation
    run_id = scenario.run.run_id if scenario.run else None
    if scenario.run_label != "after" and run_id is not None:
        status = federation.run_status(run_id)
        if status.startswith("finished"):
            raise DeploymentError(
                f"the {scenario.run_label} run ended {status}.\n" + federation.diagnostics(run_id)
            )
    if not federation.serverapp_superexec_alive():
        raise DeploymentError(
            "the SuperLink's SuperExec exited: no ServerApp can start or go on (Flower 1.42 "
            "ends it on an HTTP error from the SuperLink, e.g. 'database is locked' on an "
            "overloaded machine).\n" + federation.diagnostics(run_id)
        )
    running = clientapp_processes(federation.work_dir)
    if running > 3 * scenario.setting.num_supernodes:
        raise DeploymentError(
            f"{running} ClientApp processes for {scenario.setting.num_supernodes} SuperNodes: "
            "the machine is too loaded (Flower starts a task's process again when the last "
            "one has not taken it in time)."
        )


def _wait(scenario: _Scenario, done: object, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    next_check = time.monotonic() + _HEALTH_INTERVAL
    while not done():  # type: ignore[operator]
        scenario.step()
        if time.monotonic() > next_check:
            _check_health(scenario)
            next_check = time.monotonic() + _HEALTH_INTERVAL
        if time.monotonic() > deadline:
            run_id = scenario.run.run_id if scenario.run else None
            raise DeploymentError(
                f"{what} not reached after {limit:.0f} s.\n"
                + scenario.federation.diagnostics(run_id)
            )
        time.sleep(_POLL)


def _checkpointed_round(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        return load_checkpoint(path).server_round
    except (OSError, ValueError):
        return 0  # being replaced; look again


# pylint: disable=too-many-locals,too-many-statements
def run_deployment(
    setting: DeploymentSetting, out_dir: Path, work_dir: Path | None = None
) -> dict[str, object]:
    """Run the scenario; return (and write to ``<out_dir>/scale-deployment.json``) its figures."""
    out_dir = Path(out_dir).resolve()
    results_dir = out_dir / "results"
    checkpoint_dir = out_dir / "checkpoints"
    checkpoint = checkpoint_dir / f"{RUN_NAME}.ckpt.npz"
    checkpoint.unlink(missing_ok=True)
    (results_dir / f"{RUN_NAME}.json").unlink(missing_ok=True)
    config = setting.overrides(results_dir, checkpoint_dir)
    print(f"starting {setting.num_supernodes} SuperNodes ...", flush=True)
    with LocalFederation(
        setting.num_supernodes,
        work_dir=work_dir,
        insecure=setting.insecure,
        # Many SuperNodes start slowly on a loaded machine.
        startup_timeout=max(60.0, 10.0 * setting.num_supernodes),
        supernode_niceness=setting.supernode_niceness,
        sqlite_busy_timeout=setting.sqlite_busy_timeout,
    ) as federation:
        scenario = _Scenario(federation, setting, checkpoint)
        scenario.record("online", supernodes=setting.num_supernodes)
        first = federation.start_run(config)
        scenario.run = first
        scenario.record("start", run_id=first.run_id)
        _wait(
            scenario,
            lambda: _checkpointed_round(checkpoint) >= setting.stop_after,
            setting.run_limit,
            f"the checkpoint of round {setting.stop_after}",
        )
        federation.stop_run(first.run_id)
        first_status = federation.wait_run(first.run_id, timeout=120)
        saved = load_checkpoint(checkpoint)
        scenario.record("stop", status=first_status, checkpointed_round=saved.server_round)

        scenario.run_label = "resumed"
        resumed = federation.start_run({**config, "resume": True})
        scenario.run = resumed
        scenario.record("resume", run_id=resumed.run_id)
        _wait(scenario, resumed.results.exists, setting.run_limit, "the resumed run's results")
        at_results = {
            "first": run_state(federation.database, first.run_id),
            "resumed": run_state(federation.database, resumed.run_id),
        }
        resumed_status = federation.wait_run(resumed.run_id, timeout=setting.run_limit)
        scenario.record("finished", status=resumed_status)
        scenario.run_label = "after"
        # Every killed node comes back, even when the run ended first.
        _wait(scenario, lambda: not scenario.pending_restarts(), 300, "the last restart")
        federation.wait_online(setting.num_supernodes, timeout=120)
        _wait(
            scenario,
            lambda: all(k.restarted and k.restarted.reported_node_id() for k in scenario.killed),
            60,
            "the restarted SuperNodes' node ids",
        )
        at_end = {
            "first": run_state(federation.database, first.run_id),
            "resumed": run_state(federation.database, resumed.run_id),
        }
        restarted_ids = {
            k.kill.node: (k.node_id, k.restarted.reported_node_id() if k.restarted else None)
            for k in scenario.killed
        }
        logs = {
            "first": federation.run_log(first.run_id),
            "resumed": federation.run_log(resumed.run_id),
        }
        work = federation.work_dir
    results = json.loads(resumed.results.read_text())
    figures = check(
        setting,
        results=results,
        checkpoint_rows=saved.state.get("rows", [])[: saved.server_round],
        checkpointed_round=saved.server_round,
        logs=logs,
        statuses={"first": first_status, "resumed": resumed_status},
        state_at_results=at_results,
        state_at_end=at_end,
        restarted_ids=restarted_ids,
    )
    figures["events"] = scenario.events
    figures["results"] = str(resumed.results)
    figures["work-dir"] = str(work) if work_dir is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in logs.items():
        (out_dir / f"scale-deployment-{name}.log").write_text(text)
    (out_dir / "scale-deployment.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(format_report(figures), flush=True)
    return figures


# pylint: disable=too-many-arguments
def check(
    setting: DeploymentSetting,
    *,
    results: Mapping[str, object],
    checkpoint_rows: Sequence[Mapping[str, object]],
    checkpointed_round: int,
    logs: Mapping[str, str],
    statuses: Mapping[str, str],
    state_at_results: Mapping[str, Mapping[str, int]],
    state_at_end: Mapping[str, Mapping[str, int]],
    restarted_ids: Mapping[int, tuple[int, int | None]],
) -> dict[str, object]:
    """The scenario's figures and whether each requirement held."""
    rows: Sequence[Mapping[str, object]] = results["rounds"]  # type: ignore[assignment]
    reasons: dict[int, str | None] = {}
    for name in ("first", "resumed"):  # the resumed run's report of a round wins
        reasons.update(logged_rounds(logs.get(name, "")))
    outcomes = round_outcomes(rows, reasons, setting.rounds)
    stopped_rounds = logged_rounds(logs.get("first", ""))
    lost = lost_rounds(
        checkpoint_rows,
        rows,
        keys=("server_round", "received_partitions", "rejected_partitions", "test_accuracy"),
    )
    leftovers_results = sum(sum(tables.values()) for tables in state_at_results.values())
    leftovers_end = sum(sum(tables.values()) for tables in state_at_end.values())
    costs = results.get("server-costs") or []
    checks = {
        "every-round-completed-or-skipped-with-reason": all(o.accounted_for for o in outcomes),
        "resumed-after-the-checkpointed-round": results.get("resumed-after-round")
        == checkpointed_round,
        "no-completed-round-lost": not lost,
        "stopped-then-completed": statuses.get("first") == "finished:stopped"
        and statuses.get("resumed") == "finished:completed",
        "restarted-with-the-same-node-id": len(restarted_ids) == len(setting.kills)
        and all(before == after for before, after in restarted_ids.values()),
        "nothing-left-in-superlink-state": leftovers_end == 0,
    }
    return {
        "setting": asdict(setting),
        "checks": checks,
        "passed": all(checks.values()),
        "rounds": [asdict(o) for o in outcomes],
        "completed": sum(o.completed for o in outcomes),
        "skipped": sum(not o.completed and o.skip_reason is not None for o in outcomes),
        "checkpointed-round-at-stop": checkpointed_round,
        "rounds-the-stopped-run-completed": sorted(stopped_rounds),
        "rounds-run-again-after-resume": sorted(
            r for r in stopped_rounds if r > checkpointed_round
        ),
        "lost-rounds": lost,
        "statuses": dict(statuses),
        "superlink-state-when-results-written": {k: dict(v) for k, v in state_at_results.items()},
        "superlink-state-at-end": {k: dict(v) for k, v in state_at_end.items()},
        "leftovers-when-results-written": leftovers_results,
        "leftovers-at-end": leftovers_end,
        "restarted-node-ids": {str(k): list(v) for k, v in restarted_ids.items()},
        "server-costs": summarize_costs(costs).to_dict() if costs else None,
        "final-test-accuracy": (results.get("summary") or {}).get("final-test-accuracy"),  # type: ignore[union-attr]
    }


def format_report(figures: Mapping[str, object]) -> str:
    """The printed report of :func:`run_deployment`."""
    setting: Mapping[str, object] = figures["setting"]  # type: ignore[assignment]
    kills = ", ".join(f"node {k['node']} at round {k['server_round']}" for k in setting["kills"])  # type: ignore[attr-defined]
    lines = [
        f"{setting['num_supernodes']} SuperNodes, {setting['rounds']} rounds of DStar "
        f"(first-k {setting['first_k']}, f = {setting['num_byzantine']}); killed: {kills}; "
        f"ServerApp stopped after round {setting['stop_after']}'s checkpoint and resumed",
        "",
        "round | outcome",
    ]
    for outcome in figures["rounds"]:  # type: ignore[attr-defined]
        if outcome["completed"]:
            text = "completed"
        elif outcome["skip_reason"]:
            text = f"skipped: {outcome['skip_reason']}"
        else:
            text = "MISSING (neither completed nor skipped with a reason)"
        lines.append(f"{outcome['server_round']:>5} | {text}")
    lines += [
        "",
        f"completed {figures['completed']}, skipped {figures['skipped']}; stopped run: "
        f"{figures['statuses']['first']} with round "  # type: ignore[index]
        f"{figures['checkpointed-round-at-stop']} checkpointed (it completed rounds "
        f"{figures['rounds-the-stopped-run-completed']}; run again after the resume: "
        f"{figures['rounds-run-again-after-resume']}); lost rounds: {figures['lost-rounds']}",
        f"SuperLink state, messages and objects of both runs: "
        f"{figures['leftovers-when-results-written']} when the results were written, "
        f"{figures['leftovers-at-end']} at the end "
        f"({figures['superlink-state-at-end']})",
        f"restarted nodes (node id before, after): {figures['restarted-node-ids']}",
    ]
    costs = figures.get("server-costs")
    if isinstance(costs, Mapping):
        lines.append(
            f"resumed ServerApp: server CPU {1000 * costs['server-cpu-s-per-round']:.1f} ms per "
            f"round, RSS {costs['rss-mib-first']:.1f} -> {costs['rss-mib-last']:.1f} MiB"
        )
    lines.append("")
    for name, held in figures["checks"].items():  # type: ignore[attr-defined]
        lines.append(f"{'ok  ' if held else 'FAIL'} {name}")
    return "\n".join(lines)

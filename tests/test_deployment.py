"""DStar on Flower's deployment engine: a SuperLink and SuperNodes as separate processes.

One federation (TLS, SuperNode authentication) of a SuperLink and 5 SuperNodes
serves the end-to-end tests: partition 0 is Byzantine, partition 4 straggles
10 s per round, DStar keeps the first k = 3 replies (one node may be slow or
dead and the round still closes without the straggler). The quick tests of the
certificates, the CLI parsing and the process handling need no federation.

Why 10 s and not less: an idle Flower 1.42 SuperNode asks the SuperLink for
work every 3 s, so the nodes of one round start up to 3 s apart, and on a
loaded 2-core machine their ClientApp processes (each imports torch) finish
several seconds apart too. A 3 s straggler is then sometimes not the last to
reply; 10 s is well past both.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from dstar_flwr.checkpoint import load_checkpoint
from simulations.federation.certificates import (
    generate_server_certificates,
    generate_supernode_keys,
)
from simulations.federation.deploy import (
    DeploymentError,
    LocalFederation,
    StartedRun,
    SuperNodeProcess,
    parse_node_configs,
    stop_process_tree,
)
from simulations.federation.link_state import MESSAGE_TABLES, run_messages, run_state

NUM_SUPERNODES = 5
BYZANTINE = 0
STRAGGLER = 4
STRAGGLER_SECONDS = 10.0
VICTIM = 1  # the honest SuperNode that is killed
K = 3
RUN_LIMIT = 300.0  # seconds any one run may take before the test gives up

deployment = pytest.mark.deployment


def _run_config(results_dir: Path, run_name: str, **overrides: object) -> dict[str, object]:
    """A quick DStar run: digits, one local epoch, partition 0 Byzantine, k = 3."""
    config: dict[str, object] = {
        "strategy": "dstar",
        "dataset": "digits",
        "num-server-rounds": 3,
        "local-epochs": 1,
        "device": "cpu",
        "first-k": K,
        "num-byzantine": 1,
        "num-byzantine-nodes": 0,
        "byzantine-partitions": str(BYZANTINE),
        "attack": "gaussian",
        "num-stragglers": 1,  # names partition 4 the straggler in the results
        "latency-model": "profile",  # delays from the node configs only
        "round-timeout": 120.0,  # generous: rounds close at the k-th reply
        "results-dir": str(results_dir),
        "run-name": run_name,
    }
    config.update({key.replace("_", "-"): value for key, value in overrides.items()})
    return config


# Session scope: one federation for the deployment tests, in whatever order they run.
@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """A SuperLink and 5 SuperNodes with TLS and authentication; node 4 straggles."""
    with LocalFederation(
        NUM_SUPERNODES,
        node_configs={STRAGGLER: {"latency-seconds": STRAGGLER_SECONDS}},
        work_dir=tmp_path_factory.mktemp("federation"),
    ) as started:
        yield started


def _wait_for_results(
    federation: LocalFederation, started: StartedRun, limit: float = RUN_LIMIT
) -> int:
    """Wait for the results file, watching the run's messages in the SuperLink's state.

    The ServerApp writes its results after the strategy has drained every late
    reply and before the run ends; the SuperLink then removes what is left of
    a finished run on its own, so the leftovers are counted before any call
    that could trigger that. Returns the most messages of the run seen at once.
    """
    most = 0
    deadline = time.monotonic() + limit
    next_status = time.monotonic() + 20
    while not started.results.exists():
        with suppress(sqlite3.OperationalError):  # the SuperLink is writing; look again
            most = max(
                most, sum(run_state(federation.database, started.run_id, MESSAGE_TABLES).values())
            )
        now = time.monotonic()
        if now > next_status:  # fail early when the run ended without results
            status = federation.run_status(started.run_id)
            assert not status.startswith("finished") or started.results.exists(), (
                f"run ended {status} without results.\n" + federation.diagnostics(started.run_id)
            )
            next_status = now + 20
        assert now < deadline, f"no results after {limit:.0f} s.\n" + federation.diagnostics(
            started.run_id
        )
        time.sleep(0.2)
    return most


def _wait_for_log(federation: LocalFederation, run_id: int, text: str) -> None:
    log_file = federation.follow_log(run_id)
    deadline = time.monotonic() + RUN_LIMIT
    while text not in log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never logged.\n" + federation.diagnostics(
            run_id
        )
        time.sleep(0.5)


def _finished(federation: LocalFederation, started: StartedRun) -> dict[str, object]:
    status = federation.wait_run(started.run_id, timeout=RUN_LIMIT)
    assert status == "finished:completed", federation.diagnostics(started.run_id)
    return json.loads(started.results.read_text())


# --- end to end on the deployment engine ---------------------------------------


@deployment
def test_unknown_and_insecure_supernodes_are_refused(federation: LocalFederation) -> None:
    known = {str(n["node-id"]) for n in federation.list_nodes()}
    online = federation.online_node_ids()
    config = {"partition-id": 1, "num-partitions": NUM_SUPERNODES}
    # A key pair the SuperLink never registered, over TLS.
    unknown = federation.add_supernode(config, register=False, max_wait_time=10, wait=False)
    # No TLS and no key at all.
    plain = federation.add_supernode(config, insecure=True, max_wait_time=5, wait=False)
    for supernode in (unknown, plain):
        try:
            supernode.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SuperNode {supernode.index} was not refused:\n{supernode.log()[-2000:]}")

    assert unknown.process.returncode != 0, unknown.log()
    assert "Failed to activate SuperNode" in unknown.log(), unknown.log()
    assert "No SuperNode found with the given public key" in federation.superlink_log()
    assert plain.process.returncode != 0, plain.log()
    assert "could not establish a connection" in plain.log(), plain.log()
    assert {str(n["node-id"]) for n in federation.list_nodes()} == known
    assert federation.online_node_ids() == online
    # The SuperLink speaks TLS only.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{federation.address}/health", timeout=5)
    assert not federation.insecure


@deployment
def test_first_k_rounds_survive_a_killed_node_and_a_stop_and_resume(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """3 rounds of DStar: a SuperNode killed in round 2, then a stop and a resume.

    Round 1 closes at its k-th reply without the straggler and rejects the
    Byzantine node. A SuperNode is then killed; round 2 goes on without it.
    The ServerApp is stopped after round 2's checkpoint and resumed from it,
    once the SuperLink has marked the dead node offline; round 3 runs on the 4
    live nodes. No completed round is lost, no late reply reaches aggregation,
    and the resumed run leaves no message behind in the SuperLink.
    """
    config = _run_config(tmp_path, "first-k", checkpoint_dir=str(tmp_path / "checkpoints"))
    path = tmp_path / "checkpoints" / "first-k.ckpt.npz"
    started = federation.start_run(config)
    _wait_for_log(federation, started.run_id, "dstar round 1:")
    victim_id = federation.supernodes[VICTIM].reported_node_id()
    federation.kill_supernode(VICTIM)
    assert not federation.supernodes[VICTIM].alive
    deadline = time.monotonic() + RUN_LIMIT
    while not (path.exists() and load_checkpoint(path).server_round >= 2):
        assert time.monotonic() < deadline, federation.diagnostics(started.run_id)
        time.sleep(0.2)
    federation.stop_run(started.run_id)
    status = federation.wait_run(started.run_id, timeout=60)
    checkpoint = load_checkpoint(path)
    saved = checkpoint.server_round
    assert status == "finished:stopped", federation.diagnostics(started.run_id)
    assert saved == 2, "the run got to its end before it was stopped"
    assert not started.results.exists()
    # The dead node stays "online" until its heartbeats are overdue (about a
    # minute); a run started before would send it work. The stopped run's
    # messages still run to their end on the live nodes.
    deadline = time.monotonic() + 120
    while victim_id in federation.online_node_ids():
        assert time.monotonic() < deadline, "the killed SuperNode is still online"
        time.sleep(2)
    federation.wait_idle(timeout=60)

    resumed = federation.start_run({**config, "resume": True})
    most_messages = _wait_for_results(federation, resumed)
    leftovers = run_state(federation.database, resumed.run_id, MESSAGE_TABLES)
    leftover_rows = run_messages(federation.database, resumed.run_id)
    results = _finished(federation, resumed)
    log = federation.run_log(resumed.run_id)
    rounds = results["rounds"]
    explain = f"{json.dumps(rounds, indent=1)}\n{log[-3000:]}"

    # Every completed round is kept, as the stopped run checkpointed it.
    assert results["resumed-after-round"] == saved, explain
    assert [r["server_round"] for r in rounds] == [1, 2, 3], explain
    kept = ("server_round", "received_partitions", "rejected_partitions", "test_accuracy")
    saved_rows = checkpoint.state["rows"][:saved]
    assert [{key: row[key] for key in kept} for row in rounds[:saved]] == [
        {key: row[key] for key in kept} for row in saved_rows
    ], explain
    assert results["byzantine-partitions"] == [BYZANTINE]
    assert results["straggler-partitions"] == [STRAGGLER]
    first, killed, last = rounds
    # Round 1 sampled all 5 nodes and closed at its k-th reply; the straggler was late.
    assert len(first["received_partitions"]) == K, explain
    assert STRAGGLER in first["late_partitions"], explain
    # Round 2 went on after the kill (the killed node may have replied first).
    # It closed at its k-th reply, or, when the nodes still busy with round 1
    # left it fewer than k live ones, kept the model once the SuperLink
    # answered for the dead node.
    assert killed["skipped"] or len(killed["received_partitions"]) == K, explain
    # Round 3, after the resume, ran on the live nodes only.
    assert len(last["received_partitions"]) == K, explain
    assert VICTIM not in last["received_partitions"], explain
    for row in rounds:
        # A reply that came after its round closed never reached aggregation.
        assert not set(row["late_partitions"]) & set(row["received_partitions"]), explain
        # Rounds 1 and 2 had k live nodes besides the straggler (busy with its
        # round-1 reply during round 2). Round 3 has 3 besides it for k = 3: it
        # is late there too unless one of them is more than 10 s slower.
        if row is not last:
            assert STRAGGLER not in row["received_partitions"], explain
        if BYZANTINE in row["received_partitions"]:
            assert BYZANTINE in row["rejected_partitions"], explain
        assert math.isfinite(row["test_accuracy"]) and 0 <= row["test_accuracy"] <= 1
    assert any(BYZANTINE in r["received_partitions"] for r in rounds), explain
    assert results["summary"]["byzantine-rejection-rate"] == 1.0, explain
    # The late replies were pulled and discarded, none left unresolved, and the
    # run's messages were in the SuperLink's state while it ran, none after.
    assert "still unresolved" not in log, explain
    assert most_messages > 0
    assert leftovers and not any(leftovers.values()), (
        f"{leftovers}\n{json.dumps(leftover_rows, indent=1)}\n"
        + federation.diagnostics(resumed.run_id)
    )


# --- no federation needed -------------------------------------------------------


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path: Path) -> None:
    paths = generate_server_certificates(tmp_path, ["127.0.0.1", "localhost", "edge.example"])
    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "edge.example"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert paths.server_key.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="at least one host"):
        generate_server_certificates(tmp_path / "none", [])


def test_supernode_keys_are_in_the_formats_flower_reads(tmp_path: Path) -> None:
    keys = generate_supernode_keys(tmp_path, "supernode-0")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    # What `flwr supernode register` stores must be this private key's public half.
    registered = try_load_public_key(keys.public_key)
    other = generate_supernode_keys(tmp_path, "supernode-1")
    assert registered != try_load_public_key(other.public_key)
    assert keys.private_key.stat().st_mode & 0o077 == 0


def test_node_configs_parse_per_node_and_fail_with_the_fix() -> None:
    parser = argparse.ArgumentParser()
    configs = parse_node_configs(
        parser, ["4:latency-seconds=3.0", "0,1:device='cpu' latency-seconds=0.5"], 5
    )
    assert configs == {
        4: {"latency-seconds": 3.0},
        0: {"device": "cpu", "latency-seconds": 0.5},
        1: {"device": "cpu", "latency-seconds": 0.5},
    }
    for bad in ("5:latency-seconds=1.0", "latency-seconds=1.0", "x:device='cpu'"):
        with pytest.raises(SystemExit):
            parse_node_configs(parser, [bad], 5)


def test_federation_settings_fail_fast() -> None:
    with pytest.raises(ValueError, match=r"nodes are 0\.\.4"):
        LocalFederation(5, node_configs={5: {"latency-seconds": 1.0}})
    with pytest.raises(ValueError, match="num_supernodes"):
        LocalFederation(0)


def test_busy_supernodes_are_those_with_a_message_in_progress(tmp_path: Path) -> None:
    federation = LocalFederation(3)
    logs = {
        0: "Receiving: train message\nSending: train message\n",  # done
        1: "Receiving: train message\nSending: train message\nReceiving: train message\n",
        2: "Receiving: train message\nRun ID 7 is not in `RUNNING` status. Ignoring message\n",
    }
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for index, text in logs.items():
            log_file = tmp_path / f"supernode-{index}.log"
            log_file.write_text(text)
            federation.supernodes.append(SuperNodeProcess(index, {}, sleeper, log_file))
        assert federation.busy_supernodes() == [1]
        with pytest.raises(DeploymentError, match=r"SuperNodes \[1\] still work on a message"):
            federation.wait_idle(timeout=0.3)
        (tmp_path / "supernode-1.log").write_text(logs[1] + "Sending: train message\n")
        federation.wait_idle(timeout=5)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert federation.busy_supernodes() == []  # a dead SuperNode works on nothing


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_stop_process_tree_reaches_children_in_other_sessions(tmp_path: Path) -> None:
    # Like Flower's SuperExec: a child started in a session of its own.
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    stop_process_tree(parent, timeout=5)
    assert parent.poll() is not None
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"

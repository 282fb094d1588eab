"""The ServerApp of the simulations: DStar, FLTrust or Flower's strategies on offline data.

It builds the strategy from the run config, computes the server's validation
update (dSTAR's, and FLTrust's root update) on the trusted split, evaluates the
global model on the held-out test split every round, measures every round's
resilience (the aggregate against the mean honest update that reached the
aggregation, see :mod:`simulations.app.diagnostics`), prints a per-round table and
writes the run's results (per round accuracy, loss, rejected and late nodes,
round seconds, resilience, the server's CPU seconds and memory, the full config)
to ``<results-dir>/<run-name>.json``.

With run-config ``checkpoint-dir`` (strategy ``dstar``), DStar checkpoints the
global model and the Result to ``<checkpoint-dir>/<run-name>.ckpt.npz`` after
every round, with the ServerApp's own per-round rows (partition ids resolved,
so that they survive new node ids) and its validation-seed position in the
checkpoint's state. ``resume = true`` continues that run after its last
completed round: the results then hold the restored rounds and the new ones,
and ``resumed-after-round`` says where the run picked up.
"""

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from flwr.supercore import log

from clients.data import DataConfig, load_server_splits
from clients.models import build_model
from clients.roles import role_from_run_config
from clients.training import (
    LocalTrainingConfig,
    evaluate_arrays,
    select_device,
    train_from_arrays,
)
from dstar_flwr import Checkpoint, load_checkpoint
from simulations.app.adversary import probe_of, transform_log, wrap_strategy
from simulations.app.diagnostics import RESILIENCE_KEYS, HonestMeanProbe, ReplyLogGrid, TrainCall
from simulations.app.experiment import ExperimentConfig, build_strategy
from simulations.app.federation_check import check_federation
from simulations.app.results import (
    TABLE_HEADER,
    NodeRoles,
    RoundRow,
    format_row,
    row_from_dstar_metrics,
    row_from_fltrust_metrics,
    summarize,
    write_results,
)
from simulations.app.roll_call import ROLL_CALL_TIMEOUT, roll_call
from simulations.app.server_costs import GRID, HARNESS, VALIDATION, RoundMeter

app = ServerApp()


def assign_roles(
    partitions: Mapping[int, tuple[int, int]], run_config: Mapping[str, object]
) -> NodeRoles:
    """Every node's partition and roles, the roles taken from the run config.

    Who is Byzantine or a straggler is the experiment's ground truth: the
    harness takes it from the run config (:func:`clients.roles.role_from_run_config`,
    which the nodes themselves use), never from what a node says about itself.
    The strategy never sees it; the report uses it to tell which replies came
    from the Byzantine nodes and the stragglers.
    """
    roles = NodeRoles()
    for node_id, (partition_id, num_partitions) in partitions.items():
        role = role_from_run_config(run_config, partition_id, num_partitions)
        roles.partition_of[node_id] = role.partition_id
        if role.is_byzantine:
            roles.byzantine.add(node_id)
        if role.is_straggler:
            roles.stragglers.add(node_id)
    return roles


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one experiment as the run config describes it."""
    run_config = dict(context.run_config)
    experiment = ExperimentConfig.from_run_config(run_config)
    data = DataConfig.from_run_config(run_config)
    training = LocalTrainingConfig.from_run_config(run_config)
    device = select_device(str(run_config.get("device", "auto")))
    splits = load_server_splits(
        data.dataset,
        seed=data.seed,
        validation_size=data.validation_size,
        test_fraction=data.test_fraction,
        data_dir=data.data_dir,
    )
    x_validation, y_validation = splits.validation
    x_test, y_test = splits.test
    restored = _checkpoint_to_resume(experiment, run_config) if experiment.resume else None
    restored_rows = _restored_rows(restored)
    first_validation_seed = experiment.seed * 1_000_003 + 7
    validation_calls = int(restored.state.get("validation-calls", 0)) if restored else 0
    # The server's CPU seconds per round by step, and its memory after each round.
    meter = RoundMeter()

    def validation_train_fn(arrays: ArrayRecord) -> ArrayRecord:
        nonlocal validation_calls
        seed = first_validation_seed + validation_calls
        validation_calls += 1
        trained, _ = train_from_arrays(
            arrays,
            data.dataset,
            x_validation,
            y_validation,
            epochs=training.epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            device=device,
            seed=seed,
        )
        return trained

    rows: dict[int, RoundRow] = {}
    probe: HonestMeanProbe | None = None

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        with meter.round_end(server_round):
            metrics = evaluate_round(server_round, arrays)
        if meter.rounds and meter.rounds[-1].server_round == server_round:
            cost = meter.rounds[-1]
            log(
                INFO,
                "round %s: server CPU %.3fs (grid %.3fs), validation update %.3fs, RSS %.1f MiB",
                server_round,
                cost.server_cpu_seconds,
                cost.cpu_seconds.get(GRID, 0.0),
                cost.cpu_seconds.get(VALIDATION, 0.0),
                cost.rss_bytes / 2**20,
            )
        return metrics

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluate_arrays(arrays, data.dataset, x_test, y_test, device=device)
        row = RoundRow(server_round, test_accuracy=accuracy, test_loss=loss)
        rows[server_round] = row
        log(INFO, "round %s: test accuracy %.4f, test loss %.4f", server_round, accuracy, loss)
        if server_round > 0 and probe is not None:
            # ``arrays`` is the new global model: F = arrays - w (0 if the round was skipped).
            measured = probe.resilience_of(server_round, arrays)
            row.cosine_to_honest = measured["cosine_to_honest"]
            row.rho = measured["rho"]
            row.relative_error = measured["relative_error"]
            log(
                INFO,
                "round %s: aggregate vs. honest mean: cosine %.4f, rho %.4f, relative error %.4f",
                server_round,
                row.cosine_to_honest,
                row.rho,
                row.relative_error,
            )
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    # A large federation on a loaded machine may need longer than the default to
    # answer: the roll call waits at least as long as a round may.
    partitions = roll_call(grid, timeout=max(ROLL_CALL_TIMEOUT, experiment.round_timeout))
    # Before the roles: a run config that names more nodes than answered fails here,
    # with the command that sets the federation size.
    experiment = check_federation(experiment, run_config, len(partitions))
    roles = assign_roles(partitions, run_config)
    log(
        INFO,
        "%s nodes; Byzantine partitions %s, straggler partitions %s",
        len(roles.partition_of),
        sorted(roles.partition_of[n] for n in roles.byzantine),
        sorted(roles.partition_of[n] for n in roles.stragglers),
    )
    strategy = wrap_strategy(
        build_strategy(
            experiment, meter.timed(VALIDATION, validation_train_fn), len(roles.partition_of)
        ),
        run_config,
        roles,
        seed=experiment.seed,
    )
    probe = probe_of(strategy)
    meter.instrument(strategy)
    timed_grid = ReplyLogGrid(meter.grid(grid))

    def checkpoint_state(server_round: int, result: Result) -> dict[str, Any]:
        table = _round_table(
            experiment,
            server_round,
            result.train_metrics_clientapp,
            rows,
            roles,
            [],
            probe,
            transform_log(strategy),
            restored_rows,
        )
        return {
            "rows": [asdict(row) for row in table],
            "validation-calls": validation_calls,
            "run-config": run_config,
        }

    # DStar's own start arguments (the config refuses checkpoints for other strategies).
    checkpointing: dict[str, Any] = (
        {
            "checkpoint_path": experiment.checkpoint_path,
            "resume": experiment.resume,
            "checkpoint_state_fn": meter.timed(HARNESS, checkpoint_state),
        }
        if experiment.checkpoint_path is not None
        else {}
    )
    initial = ArrayRecord(build_model(data.dataset, seed=data.seed).state_dict())
    started = time.monotonic()
    meter.round_start()
    result = strategy.start(
        grid=timed_grid,
        initial_arrays=initial,
        num_rounds=experiment.num_server_rounds,
        timeout=experiment.round_timeout,
        train_config=ConfigRecord({"learning-rate": training.learning_rate}),
        evaluate_fn=evaluate_fn,
        **checkpointing,
    )
    wall_seconds = time.monotonic() - started

    table = _round_table(
        experiment,
        experiment.num_server_rounds,
        result.train_metrics_clientapp,
        rows,
        roles,
        timed_grid.train_calls,
        probe,
        transform_log(strategy),
        restored_rows,
    )
    log(INFO, "")
    log(INFO, "%s on %s, %s rounds:", experiment.strategy, experiment.dataset, len(table))
    log(INFO, TABLE_HEADER)
    for row in table:
        log(INFO, format_row(row))
    summary = summarize(table, roles)
    log(INFO, "summary: %s", {k: round(v, 4) for k, v in summary.items()})
    path = write_results(
        experiment.results_dir / f"{experiment.run_name}.json",
        run_config={**run_config, "wall-seconds": wall_seconds},
        roles=roles,
        rows=table,
        resumed_after_round=restored.server_round if restored else None,
        server_costs=[cost.to_dict() for cost in meter.rounds],
    )
    log(INFO, "results written to %s", path)


def _checkpoint_to_resume(
    experiment: ExperimentConfig, run_config: Mapping[str, object]
) -> Checkpoint:
    """The checkpoint run-config ``resume`` continues; warns on a changed run config."""
    path = experiment.checkpoint_path
    assert path is not None  # ExperimentConfig: resume needs checkpoint-dir
    if not path.is_file():
        raise ValueError(
            f"run config 'resume' = true, but there is no checkpoint at {path}: start the "
            "run with resume = false (same checkpoint-dir and run-name), or fix run-name "
            "or checkpoint-dir."
        )
    checkpoint = load_checkpoint(path)
    saved = checkpoint.state.get("run-config", {})
    ignored = {"resume", "num-server-rounds"}
    changed = sorted(
        key
        for key in (set(saved) | set(run_config)) - ignored
        if saved.get(key) != run_config.get(key)
    )
    if changed:
        log(WARNING, "resume: run config differs from the checkpointed run's in %s", changed)
    log(INFO, "resume: %s holds rounds 1..%s", path, checkpoint.server_round)
    return checkpoint


def _restored_rows(checkpoint: Checkpoint | None) -> dict[int, RoundRow]:
    """The per-round rows the ServerApp put in ``checkpoint``'s state, by round."""
    if checkpoint is None:
        return {}
    rows = [RoundRow.from_dict(data) for data in checkpoint.state.get("rows", [])]
    return {row.server_round: row for row in rows if row.server_round <= checkpoint.server_round}


# pylint: disable=too-many-arguments,too-many-positional-arguments,too-many-locals
def _round_table(
    experiment: ExperimentConfig,
    num_rounds: int,
    train_metrics: dict[int, MetricRecord],
    evaluations: dict[int, RoundRow],
    roles: NodeRoles,
    train_calls: list[TrainCall],
    probe: HonestMeanProbe | None,
    transformed: tuple[dict[int, list[int]], dict[int, list[int]]],
    restored: Mapping[int, RoundRow],
) -> list[RoundRow]:
    """One row for each round ``1..num_rounds``.

    DStar reports its rounds itself. The strategies that collect a round with
    one ``send_and_receive`` (FLTrust and Flower's) are timed by the grid, which
    also tells the late nodes (sent a message, no reply in the round); their
    received replies are the valid ones that reached the aggregation (the
    probe's record), and FLTrust's zero-trust replies count as rejected.
    ``transformed`` holds the node ids per round that the omniscient adversary
    replaced and the guard dropped; ``restored`` rows (from a checkpoint) are
    taken as they are.
    """
    table = []
    calls: Iterable[TrainCall] = iter(train_calls)
    byzantine = {roles.partition_of[n] for n in roles.byzantine}
    replaced, dropped = transformed
    for server_round in range(1, num_rounds + 1):
        if server_round in restored:
            table.append(restored[server_round])
            continue
        metrics = train_metrics.get(server_round)
        if experiment.strategy == "dstar" and metrics is not None:
            row = row_from_dstar_metrics(server_round, metrics, roles)
            row.score_rejections(byzantine)
        else:
            call = next(calls, None)
            seconds = call.seconds if call is not None else float("nan")
            if experiment.strategy == "fltrust" and metrics is not None:
                row = row_from_fltrust_metrics(server_round, metrics, roles, seconds)
                row.score_rejections(byzantine)
            else:
                row = RoundRow(server_round, round_seconds=seconds)
                probed = probe.rounds.get(server_round) if probe is not None else None
                if probed is not None:
                    row.received_partitions = roles.partitions(probed.valid_node_ids)
                    row.num_accepted = len(probed.valid_node_ids)
                    row.skipped = not probed.valid_node_ids  # nothing to aggregate
            if call is not None:
                row.late_partitions = roles.partitions(call.late_node_ids)
        evaluation = evaluations.get(server_round)
        if evaluation is not None:
            row.test_accuracy = evaluation.test_accuracy
            row.test_loss = evaluation.test_loss
            for key in RESILIENCE_KEYS:
                setattr(row, key, getattr(evaluation, key))
        row.attacked_partitions = roles.partitions(replaced.get(server_round, []))
        row.guard_dropped_partitions = roles.partitions(dropped.get(server_round, []))
        table.append(row)
    return table

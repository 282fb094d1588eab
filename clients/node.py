"""What one node does in a round: train, maybe attack, maybe straggle."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from clients.attack_vectors import AttackContext, attack_kind, get_vector_attack
from clients.attacks import attack_arrays, estimation_chunks, flip_labels, is_data_attack
from clients.batched_training import TrainingJob
from clients.data import DataConfig, load_client_partition
from clients.datasets import get_dataset_spec
from clients.faults import enact_fault, fault_for_round, skips_delay
from clients.latency import delay_seconds
from clients.seeding import ATTACK_STREAM, LATENCY_STREAM, TRAINING_STREAM, derive_seed
from clients.settings import NodeSettings
from clients.training import LabelMap, evaluate_arrays, select_device, train_from_arrays


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What a node reports after a training round.

    Attributes
    ----------
    arrays : ArrayRecord
        The weights it sends (attacked if it is Byzantine).
    train_loss : float
        Mean loss of its local training.
    num_examples : int
        The example count it reports: the size of its partition, or a
        Byzantine node's run-config ``claimed-num-examples`` when that is > 0
        (see :func:`reported_num_examples`).
    compute_seconds : float
        Wall-clock time of its local training.
    delay_seconds : float
        Extra time it waited before replying.
    """

    arrays: ArrayRecord
    train_loss: float
    num_examples: int
    compute_seconds: float
    delay_seconds: float


def load_node_data(settings: NodeSettings) -> tuple[np.ndarray, np.ndarray]:
    """Return the node's partition ``(x, y)``, cached in this process (read-only).

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.

    Returns
    -------
    tuple of np.ndarray
        Examples and labels.
    """
    return _cached_partition(settings.data, settings.partition_id, settings.num_partitions)


@functools.lru_cache(maxsize=4)
def _cached_partition(
    data: DataConfig, partition_id: int, num_partitions: int
) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_client_partition(
        data.dataset,
        partition_id=partition_id,
        num_partitions=num_partitions,
        partitioning=data.partitioning,
        dirichlet_alpha=data.dirichlet_alpha,
        seed=data.seed,
        validation_size=data.validation_size,
        test_fraction=data.test_fraction,
        data_dir=data.data_dir,
    )
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def run_train_round(
    settings: NodeSettings,
    global_arrays: ArrayRecord,
    server_round: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainResult:
    """Act out a simulated fault, or train, attack if Byzantine and wait the delay.

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    global_arrays : ArrayRecord
        The weights the round starts from.
    server_round : int
        The round, mixed into the node's seeds.
    sleep : callable
        How to wait; tests may pass a fake.

    Returns
    -------
    TrainResult
        What to reply.

    Raises
    ------
    clients.faults.SimulatedFault
        When run-config faults make the node crash, drop out (after waiting
        past the round deadline) or miss the round.
    """
    fault = fault_for_round(
        settings.faults,
        seed=settings.data.seed,
        partition_id=settings.partition_id,
        server_round=server_round,
    )
    enact_fault(
        fault,
        settings.faults,
        partition_id=settings.partition_id,
        server_round=server_round,
        sleep=sleep,
    )
    x, y = load_node_data(settings)
    started = time.perf_counter()
    local_arrays, train_loss = train_and_attack(settings, global_arrays, server_round, x, y)
    compute_seconds = time.perf_counter() - started
    delay = reply_delay(settings, server_round, compute_seconds)
    if delay > 0:
        sleep(delay)
    num_examples = reported_num_examples(settings, len(y))
    return TrainResult(local_arrays, train_loss, num_examples, compute_seconds, delay)


def reply_delay(settings: NodeSettings, server_round: int, compute_seconds: float) -> float:
    """Seconds the node waits after training before it replies (its latency model).

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    server_round : int
        The round, mixed into the latency seed.
    compute_seconds : float
        How long its local training took (some latency models scale it).

    Returns
    -------
    float
        The delay, >= 0; 0 for a fast Byzantine node, which replies at once to
        be among the first k.
    """
    byzantine = settings.role.is_byzantine
    if skips_delay(settings.faults, is_byzantine=byzantine):
        return 0.0
    seed, partition_id = settings.data.seed, settings.partition_id
    return delay_seconds(
        settings.latency,
        partition_id=partition_id,
        num_partitions=settings.num_partitions,
        is_straggler=settings.role.is_straggler,
        is_byzantine=byzantine,
        compute_seconds=compute_seconds,
        server_round=server_round,
        rng=np.random.default_rng(derive_seed(seed, partition_id, server_round, LATENCY_STREAM)),
    )


def reported_num_examples(settings: NodeSettings, num_examples: int) -> int:
    """The example count a node reports with its update: its own, or a Byzantine claim.

    Example-count inflation: a Byzantine node reports run-config
    ``claimed-num-examples`` (when > 0) with whatever it sends, under either
    threat model (the omniscient adversary replaces the arrays, not the
    metrics), so that count-weighted rules give its update that weight. Honest
    nodes, and Byzantine ones with ``claimed-num-examples = 0``, report the
    true count.

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    num_examples : int
        The size of its partition.

    Returns
    -------
    int
        The count for the reply's ``num-examples``.
    """
    claim = settings.attack.claimed_num_examples
    return claim if settings.role.is_byzantine and claim > 0 else num_examples


def run_evaluate(settings: NodeSettings, arrays: ArrayRecord) -> tuple[float, float, int]:
    """Evaluate the given weights on the node's partition.

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    arrays : ArrayRecord
        Weights to evaluate.

    Returns
    -------
    tuple of (float, float, int)
        Loss, accuracy and the number of examples.
    """
    x, y = load_node_data(settings)
    loss, accuracy = evaluate_arrays(
        arrays, settings.data.dataset, x, y, device=select_device(settings.device)
    )
    return loss, accuracy, len(y)


def train_and_attack(
    settings: NodeSettings,
    global_arrays: ArrayRecord,
    server_round: int,
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[ArrayRecord, float]:
    """Train from the global weights, as the node's role and attack ask.

    An honest node, and a Byzantine one whose vector attack the server-side
    wrapper crafts (threat-model "omniscient"), train once on all their data.
    Label flip trains once on flipped labels. A client-side vector attacker
    trains on ``attack-estimation-batches`` m disjoint chunks of its data (m = 1:
    all of it, exactly as an honest node would), takes the m updates as its
    sample of honest updates, and sends ``w + attack(updates)``. The
    ``malformed`` attack trains honestly here; the ClientApp breaks the reply.
    It is :func:`training_jobs`, each job trained alone, then
    :func:`attacked_update` (a batched simulation trains many nodes' jobs at once).

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    global_arrays : ArrayRecord
        The weights the round starts from.
    server_round : int
        The round, mixed into the seeds.
    x, y : np.ndarray
        The node's data.

    Returns
    -------
    tuple of (ArrayRecord, float)
        The weights to send and the mean training loss (over the chunks,
        weighted by their sizes).
    """
    jobs = training_jobs(settings, server_round, x, y)
    trained = [
        train_from_arrays(
            global_arrays,
            settings.data.dataset,
            job.x,
            job.y,
            epochs=settings.training.epochs,
            batch_size=settings.training.batch_size,
            learning_rate=settings.training.learning_rate,
            device=select_device(settings.device),
            seed=job.seed,
            label_map=job.label_map,
        )
        for job in jobs
    ]
    return attacked_update(settings, global_arrays, server_round, jobs, trained)


def training_jobs(
    settings: NodeSettings, server_round: int, x: np.ndarray, y: np.ndarray
) -> list[TrainingJob]:
    """The local trainings the node runs this round (see :func:`train_and_attack`).

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    server_round : int
        The round, mixed into the seeds.
    x, y : np.ndarray
        The node's data.

    Returns
    -------
    list of TrainingJob
        One job on all the data (with flipped labels for label flip), or one per
        estimation chunk for a client-side vector attacker with m > 1.
    """
    seed, partition_id = settings.data.seed, settings.partition_id
    name = settings.attack_name if settings.attacks_at_node else None
    kind = attack_kind(name) if name is not None else None
    label_map = _poisoned_labels(settings, name) if name is not None else None
    if kind != "vector" or settings.attack.estimation_batches == 1:
        training_seed = derive_seed(seed, partition_id, server_round, TRAINING_STREAM)
        return [TrainingJob(x, y, training_seed, label_map)]
    chunks = estimation_chunks(
        len(y),
        settings.attack.estimation_batches,
        np.random.default_rng(derive_seed(seed, partition_id, server_round, ATTACK_STREAM, 1)),
    )
    return [
        TrainingJob(
            x[indices],
            y[indices],
            derive_seed(seed, partition_id, server_round, TRAINING_STREAM, chunk_number + 1),
            label_map,
        )
        for chunk_number, indices in enumerate(chunks)
    ]


def attacked_update(
    settings: NodeSettings,
    global_arrays: ArrayRecord,
    server_round: int,
    jobs: list[TrainingJob],
    trained: list[tuple[ArrayRecord, float]],
) -> tuple[ArrayRecord, float]:
    """What the node sends, from its trained jobs: the weights, or a client-side attack.

    Parameters
    ----------
    settings : NodeSettings
        The node's settings.
    global_arrays : ArrayRecord
        The weights the round started from.
    server_round : int
        The round, mixed into the attack's seed.
    jobs : list of TrainingJob
        Its :func:`training_jobs` for the round.
    trained : list of (ArrayRecord, float)
        The weights and mean loss of each job, in order.

    Returns
    -------
    tuple of (ArrayRecord, float)
        The weights to send and the mean training loss (over the jobs, weighted
        by their sizes).
    """
    name = settings.attack_name if settings.attacks_at_node else None
    kind = attack_kind(name) if name is not None else None
    records = [arrays for arrays, _ in trained]
    if len(trained) == 1:
        train_loss = trained[0][1]
    else:
        sizes = [len(job.y) for job in jobs]
        train_loss = sum(loss * size for (_, loss), size in zip(trained, sizes, strict=True))
        train_loss /= sum(sizes)
    if kind != "vector":
        return records[-1], train_loss
    assert name is not None
    seed, partition_id = settings.data.seed, settings.partition_id
    context = AttackContext(
        num_nodes=settings.num_partitions,
        num_byzantine=settings.role.num_byzantine,
        rng=np.random.default_rng(derive_seed(seed, partition_id, server_round, ATTACK_STREAM)),
        params=settings.attack,
    )
    return attack_arrays(records, global_arrays, get_vector_attack(name), context), train_loss


def _poisoned_labels(settings: NodeSettings, attack_name: str) -> LabelMap | None:
    if not is_data_attack(attack_name):
        return None
    num_classes = get_dataset_spec(settings.data.dataset).num_classes
    return functools.partial(flip_labels, num_classes=num_classes)

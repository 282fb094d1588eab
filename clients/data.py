"""The project's data splits: server validation, held-out test, client partitions.

Every dataset's pool is split once, deterministically from ``seed``, into

* a held-out **test** split (``test_fraction`` of the pool, stratified) that no
  client ever sees,
* a small trusted **validation** split (``validation_size`` examples, stratified)
  that the server uses for dSTAR's validation update, and
* the **client pool**: everything else, cut into ``num_partitions`` disjoint
  partitions, IID or label-skewed by Dirichlet(alpha).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

from clients.datasets import DatasetInfo, load_dataset
from clients.partitioning import (
    PARTITIONINGS,
    dirichlet_partition,
    iid_partition,
    stratified_sample,
)
from clients.roles import check_num_partitions
from clients.run_config import RunConfigSettings, none_if_empty, setting
from clients.seeding import derive_seed

__all__ = [
    "DataConfig",
    "DatasetInfo",
    "ServerSplits",
    "SplitPositions",
    "client_partition_positions",
    "load_client_partition",
    "load_dataset",
    "load_server_splits",
    "server_split_positions",
]

# Stream tags: the server splits and the partitions draw independent randomness.
_SPLIT_STREAM = 0
_PARTITION_STREAM = 1

DataDir = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DataConfig(RunConfigSettings):
    """Which data an experiment uses and how it is split (from the run config).

    Attributes
    ----------
    dataset : str
        Run-config ``dataset``.
    partitioning : str
        Run-config ``partitioning``: "iid" or "dirichlet".
    dirichlet_alpha : float
        Run-config ``dirichlet-alpha``, > 0.
    seed : int
        Run-config ``seed``, >= 0.
    validation_size : int
        Run-config ``server-validation-size``, >= 0.
    test_fraction : float
        Run-config ``test-fraction``, in [0, 1).
    data_dir : str or None
        Run-config ``data-dir`` (may be absent); None (or "") means the default folder.
    """

    dataset: str = setting("dataset", required=True)
    partitioning: str = setting("partitioning")
    dirichlet_alpha: float = setting("dirichlet-alpha")
    seed: int = setting("seed", default=0)
    validation_size: int = setting("server-validation-size")
    test_fraction: float = setting("test-fraction")
    data_dir: str | None = setting("data-dir", default=None, convert=none_if_empty)

    def __post_init__(self) -> None:
        _check_split_arguments(self.seed, self.validation_size, self.test_fraction)
        _check_partitioning(self.partitioning, self.dirichlet_alpha)


@dataclass(frozen=True, eq=False)
class ServerSplits:
    """The data only the server holds.

    Attributes
    ----------
    validation : tuple of np.ndarray
        ``(x, y)`` of the trusted validation split.
    test : tuple of np.ndarray
        ``(x, y)`` of the held-out test split.
    """

    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def load_server_splits(
    dataset: str,
    *,
    seed: int,
    validation_size: int = 100,
    test_fraction: float = 0.2,
    data_dir: DataDir = None,
) -> ServerSplits:
    """Return the server's validation and test splits of a dataset.

    Parameters
    ----------
    dataset : str
        Dataset name.
    seed : int
        Run seed (>= 0); the same seed gives the same splits.
    validation_size : int
        Examples in the validation split (stratified by label).
    test_fraction : float
        Fraction of the pool held out for testing, in [0, 1).
    data_dir : str or path, optional
        Folder of the torchvision datasets.

    Returns
    -------
    ServerSplits
        The validation and test splits, as fresh arrays.
    """
    info = load_dataset(dataset, data_dir=data_dir)
    validation, test, _ = _split_positions(
        dataset, _data_dir_key(data_dir), seed, validation_size, test_fraction
    )
    return ServerSplits(
        validation=(info.x[validation], info.y[validation]),
        test=(info.x[test], info.y[test]),
    )


def load_client_partition(
    dataset: str,
    *,
    partition_id: int,
    num_partitions: int,
    partitioning: str = "iid",
    dirichlet_alpha: float = 0.5,
    seed: int,
    validation_size: int = 100,
    test_fraction: float = 0.2,
    data_dir: DataDir = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one client's partition of the client pool.

    The partitions of one configuration are disjoint and together are exactly
    the pool left after the server's validation and test splits.

    Parameters
    ----------
    dataset : str
        Dataset name.
    partition_id : int
        Which partition, ``0 <= partition_id < num_partitions``.
    num_partitions : int
        Number of partitions, >= 1.
    partitioning : str
        "iid" (shuffled near-equal split) or "dirichlet" (label skew).
    dirichlet_alpha : float
        Dirichlet concentration for "dirichlet", > 0.
    seed : int
        Run seed (>= 0).
    validation_size : int
        Size of the server's validation split.
    test_fraction : float
        Fraction of the pool held out for testing.
    data_dir : str or path, optional
        Folder of the torchvision datasets.

    Returns
    -------
    tuple of np.ndarray
        The partition's ``(x, y)``, as fresh arrays.
    """
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise ValueError(f"partition-id must be an integer, got {partition_id!r}")
    check_num_partitions(num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id must be in 0..{num_partitions - 1} "
            f"(num-partitions={num_partitions}), got {partition_id}"
        )
    partitions = client_partition_positions(
        dataset,
        num_partitions=num_partitions,
        partitioning=partitioning,
        dirichlet_alpha=dirichlet_alpha,
        seed=seed,
        validation_size=validation_size,
        test_fraction=test_fraction,
        data_dir=data_dir,
    )
    info = load_dataset(dataset, data_dir=data_dir)
    positions = partitions[partition_id]
    return info.x[positions], info.y[positions]


@dataclass(frozen=True, eq=False)
class SplitPositions:
    """Where each split lies in a dataset's pool (sorted, disjoint, read-only).

    Attributes
    ----------
    validation : np.ndarray
        Positions of the server's validation split.
    test : np.ndarray
        Positions of the held-out test split.
    client_pool : np.ndarray
        Positions of everything else, which the partitions share out.
    """

    validation: np.ndarray
    test: np.ndarray
    client_pool: np.ndarray


def server_split_positions(
    dataset: str,
    *,
    seed: int,
    validation_size: int = 100,
    test_fraction: float = 0.2,
    data_dir: DataDir = None,
) -> SplitPositions:
    """Return where the validation, test and client-pool splits lie in the pool.

    Parameters are as in :func:`load_server_splits`.

    Returns
    -------
    SplitPositions
        The three position arrays; together they cover the pool exactly once.
    """
    validation, test, pool = _split_positions(
        dataset, _data_dir_key(data_dir), seed, validation_size, test_fraction
    )
    return SplitPositions(validation=validation, test=test, client_pool=pool)


def client_partition_positions(
    dataset: str,
    *,
    num_partitions: int,
    partitioning: str = "iid",
    dirichlet_alpha: float = 0.5,
    seed: int,
    validation_size: int = 100,
    test_fraction: float = 0.2,
    data_dir: DataDir = None,
) -> tuple[np.ndarray, ...]:
    """Return every partition's positions in the dataset's pool.

    Parameters are as in :func:`load_client_partition`. Useful for diagnostics,
    e.g. the label histogram of each partition.

    Returns
    -------
    tuple of np.ndarray
        One sorted, read-only position array per partition; they are disjoint and
        together are exactly the client pool.
    """
    check_num_partitions(num_partitions)
    _check_partitioning(partitioning, dirichlet_alpha)
    return _partition_positions(
        dataset,
        _data_dir_key(data_dir),
        seed,
        validation_size,
        test_fraction,
        num_partitions,
        partitioning,
        float(dirichlet_alpha),
    )


def _data_dir_key(data_dir: DataDir) -> str | None:
    return None if data_dir is None else os.fspath(data_dir)


@functools.lru_cache(maxsize=16)
def _split_positions(
    dataset: str,
    data_dir: str | None,
    seed: int,
    validation_size: int,
    test_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return read-only (validation, test, client-pool) positions into the pool."""
    _check_split_arguments(seed, validation_size, test_fraction)
    labels = load_dataset(dataset, data_dir=data_dir).y
    test_size = round(test_fraction * len(labels))
    if test_size + validation_size >= len(labels):
        raise ValueError(
            f"{dataset} has {len(labels)} examples: a test split of {test_size} "
            f"(test-fraction={test_fraction}) and a validation split of "
            f"{validation_size} leave no client pool; lower server-validation-size "
            "or test-fraction"
        )
    rng = np.random.default_rng(derive_seed(seed, _SPLIT_STREAM))
    test = stratified_sample(labels, test_size, rng)
    remaining = np.setdiff1d(np.arange(len(labels)), test)
    validation = remaining[stratified_sample(labels[remaining], validation_size, rng)]
    pool = np.setdiff1d(remaining, validation)
    return _read_only(validation), _read_only(test), _read_only(pool)


@functools.lru_cache(maxsize=16)
def _partition_positions(
    dataset: str,
    data_dir: str | None,
    seed: int,
    validation_size: int,
    test_fraction: float,
    num_partitions: int,
    partitioning: str,
    dirichlet_alpha: float,
) -> tuple[np.ndarray, ...]:
    """Return every partition's read-only positions into the dataset's pool."""
    _, _, pool = _split_positions(dataset, data_dir, seed, validation_size, test_fraction)
    rng = np.random.default_rng(derive_seed(seed, _PARTITION_STREAM))
    if partitioning == "iid":
        parts = iid_partition(len(pool), num_partitions, rng)
    else:
        labels = load_dataset(dataset, data_dir=data_dir).y[pool]
        parts = dirichlet_partition(labels, num_partitions, dirichlet_alpha, rng)
    return tuple(_read_only(pool[part]) for part in parts)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _check_split_arguments(seed: int, validation_size: int, test_fraction: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if (
        isinstance(validation_size, bool)
        or not isinstance(validation_size, int)
        or validation_size < 0
    ):
        raise ValueError(f"server-validation-size must be an integer >= 0, got {validation_size!r}")
    if not (
        isinstance(test_fraction, (int, float))
        and not isinstance(test_fraction, bool)
        and math.isfinite(test_fraction)
        and 0 <= test_fraction < 1
    ):
        raise ValueError(f"test-fraction must be a number in [0, 1), got {test_fraction!r}")


def _check_partitioning(partitioning: str, dirichlet_alpha: float) -> None:
    if partitioning not in PARTITIONINGS:
        raise ValueError(
            f"unknown partitioning {partitioning!r}; set run-config 'partitioning' "
            f"to one of {', '.join(PARTITIONINGS)}"
        )
    if not (
        isinstance(dirichlet_alpha, (int, float))
        and not isinstance(dirichlet_alpha, bool)
        and math.isfinite(dirichlet_alpha)
        and dirichlet_alpha > 0
    ):
        raise ValueError(f"dirichlet-alpha must be a finite number > 0, got {dirichlet_alpha!r}")

"""Which partitions play the Byzantine and the straggler roles.

Byzantine partitions come from the run config in one of three ways (set at most
one of them):

- ``num-byzantine-nodes = B`` (> 0): the first B partition ids;
- ``byzantine-fraction = x`` (> 0): the first ``round(x * N)`` partition ids
  (halves round up);
- ``byzantine-partitions = "0,3,5"`` (non-empty): exactly these ids.

Stragglers are the last ``S`` partition ids. The roles are thus known to the
ServerApp for diagnostics without any messaging. Byzantine and straggler sets
may overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clients.run_config import RunConfigSettings, parse_partition_ids, read, setting


@dataclass(frozen=True)
class ByzantineSelection(RunConfigSettings):
    """How the run config picks the Byzantine partitions (at most one way).

    Attributes
    ----------
    count : int
        ``num-byzantine-nodes``: the first ``count`` partitions (0 = unused).
    fraction : float
        ``byzantine-fraction`` in [0, 1]: the first ``round(fraction * N)``
        partitions, halves rounded up (0.0 = unused).
    partition_ids : tuple of int
        ``byzantine-partitions``: explicit ids (empty = unused).
    """

    count: int = setting("num-byzantine-nodes", default=0)
    fraction: float = setting("byzantine-fraction")
    partition_ids: tuple[int, ...] = setting("byzantine-partitions", default=())

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"num-byzantine-nodes must be an integer >= 0, got {self.count!r}")
        if (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, (int, float))
            or not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0)
        ):
            raise ValueError(
                f"byzantine-fraction must be a number in [0, 1] (0.0 = unused), got "
                f"{self.fraction!r}"
            )
        ids = self.partition_ids
        ids = parse_partition_ids(ids) if isinstance(ids, str) else tuple(ids)
        if len(set(ids)) != len(ids) or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids
        ):
            raise ValueError(f"byzantine-partitions must be distinct ids >= 0, got {ids!r}")
        object.__setattr__(self, "partition_ids", tuple(sorted(ids)))
        chosen = [
            f"{key} = {shown}"
            for key, used, shown in (
                ("num-byzantine-nodes", self.count > 0, self.count),
                ("byzantine-fraction", self.fraction > 0, self.fraction),
                (
                    "byzantine-partitions",
                    bool(self.partition_ids),
                    '"' + ",".join(map(str, self.partition_ids)) + '"',
                ),
            )
            if used
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"the run config sets {' and '.join(chosen)}: choose the Byzantine partitions "
                "one way only; keep one of them and reset the others (num-byzantine-nodes = 0, "
                'byzantine-fraction = 0.0, byzantine-partitions = "")'
            )

    def partitions(self, num_partitions: int) -> set[int]:
        """The Byzantine partition ids among ``0 .. num_partitions - 1``.

        Parameters
        ----------
        num_partitions : int
            N >= 1.

        Returns
        -------
        set of int
            The ids.
        """
        check_num_partitions(num_partitions)
        if self.partition_ids:
            outside = [i for i in self.partition_ids if i >= num_partitions]
            if outside:
                raise ValueError(
                    f"byzantine-partitions names {outside}, but partition ids are "
                    f"0..{num_partitions - 1}; remove them or run more nodes"
                )
            return set(self.partition_ids)
        if self.fraction > 0:
            return set(range(math.floor(self.fraction * num_partitions + 0.5)))
        _check_role_count(num_partitions, self.count, "num-byzantine-nodes")
        return set(range(self.count))


def byzantine_partitions(
    num_partitions: int,
    num_byzantine_nodes: int = 0,
    *,
    fraction: float = 0.0,
    partition_ids: str | Iterable[int] = (),
) -> set[int]:
    """Return the Byzantine partition ids.

    Parameters
    ----------
    num_partitions : int
        N, the number of partitions (nodes), >= 1.
    num_byzantine_nodes : int
        B, run-config ``num-byzantine-nodes``: the first B ids, ``0 <= B <= N``.
    fraction : float
        Run-config ``byzantine-fraction``: the first ``round(fraction * N)`` ids.
    partition_ids : str or iterable of int
        Run-config ``byzantine-partitions``: explicit ids ("0,3,5").

    Returns
    -------
    set of int
        The Byzantine partition ids. At most one of the three ways may be used.
    """
    ids = partition_ids if isinstance(partition_ids, str) else tuple(partition_ids)
    selection = ByzantineSelection(num_byzantine_nodes, fraction, ids)  # type: ignore[arg-type]
    return selection.partitions(num_partitions)


def straggler_partitions(num_partitions: int, num_stragglers: int) -> set[int]:
    """Return the straggler partition ids ``{N - S, .., N - 1}``.

    Parameters
    ----------
    num_partitions : int
        N, the number of partitions (nodes), >= 1.
    num_stragglers : int
        S, run-config ``num-stragglers``, ``0 <= S <= N``.

    Returns
    -------
    set of int
        The straggler partition ids.
    """
    _check_role_count(num_partitions, num_stragglers, "num-stragglers")
    return set(range(num_partitions - num_stragglers, num_partitions))


@dataclass(frozen=True)
class NodeRole:
    """The roles of one partition.

    Attributes
    ----------
    partition_id : int
        The partition.
    is_byzantine : bool
        Whether it attacks.
    is_straggler : bool
        Whether it is slow.
    byzantine_rank : int
        Its position among the Byzantine partitions in ascending id order
        (picks its attack from a list), -1 when honest.
    num_byzantine : int
        How many partitions are Byzantine in all (f, as an attacker knows it).
    """

    partition_id: int
    is_byzantine: bool
    is_straggler: bool
    byzantine_rank: int = -1
    num_byzantine: int = 0


def node_role(
    partition_id: int,
    num_partitions: int,
    num_byzantine_nodes: int,
    num_stragglers: int,
    *,
    byzantine_fraction: float = 0.0,
    byzantine_ids: str | Iterable[int] = (),
) -> NodeRole:
    """Return the roles of ``partition_id``.

    Parameters
    ----------
    partition_id : int
        ``0 <= partition_id < num_partitions``.
    num_partitions : int
        N, >= 1.
    num_byzantine_nodes : int
        B, ``0 <= B <= N`` (0 when another way is used).
    num_stragglers : int
        S, ``0 <= S <= N``.
    byzantine_fraction : float
        Run-config ``byzantine-fraction`` (0.0 = unused).
    byzantine_ids : str or iterable of int
        Run-config ``byzantine-partitions`` (empty = unused).

    Returns
    -------
    NodeRole
        Whether the partition is Byzantine (and its rank) and whether it straggles.
    """
    byzantine = byzantine_partitions(
        num_partitions,
        num_byzantine_nodes,
        fraction=byzantine_fraction,
        partition_ids=byzantine_ids,
    )
    stragglers = straggler_partitions(num_partitions, num_stragglers)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in 0..{num_partitions - 1}, got {partition_id}")
    ordered = sorted(byzantine)
    rank = ordered.index(partition_id) if partition_id in byzantine else -1
    return NodeRole(
        partition_id,
        partition_id in byzantine,
        partition_id in stragglers,
        byzantine_rank=rank,
        num_byzantine=len(byzantine),
    )


def check_num_partitions(num_partitions: int) -> None:
    """Fail unless ``num_partitions`` (N, the number of nodes) is an integer >= 1.

    Parameters
    ----------
    num_partitions : int
        The value to check.
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int):
        raise ValueError(f"num-partitions must be an integer, got {num_partitions!r}")
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")


def _check_role_count(num_partitions: int, count: int, key: str) -> None:
    check_num_partitions(num_partitions)
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError(f"{key} must be an integer, got {count!r}")
    if not 0 <= count <= num_partitions:
        raise ValueError(
            f"{key} must be in 0..{num_partitions} (num-partitions), got {count}; "
            f"lower {key} or run more nodes"
        )


def role_from_run_config(
    run_config: Mapping[str, object], partition_id: int, num_partitions: int
) -> NodeRole:
    """The roles the run config gives ``partition_id`` of ``num_partitions``.

    The node computes its own roles with this, and the experiment harness
    computes every node's with it from the run config (its ground truth), never
    from what a node says about itself.

    Parameters
    ----------
    run_config : Mapping
        Run-config ``num-byzantine-nodes``, ``byzantine-fraction``,
        ``byzantine-partitions`` and ``num-stragglers``.
    partition_id : int
        The partition.
    num_partitions : int
        N, the number of partitions (nodes).

    Returns
    -------
    NodeRole
        Whether the partition is Byzantine (and its rank) and whether it straggles.
    """
    byzantine = ByzantineSelection.from_run_config(run_config)
    return node_role(
        partition_id,
        num_partitions,
        byzantine.count,
        read(run_config, "num-stragglers"),
        byzantine_fraction=byzantine.fraction,
        byzantine_ids=byzantine.partition_ids,
    )

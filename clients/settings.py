"""Everything a node reads from its Flower ``Context``, validated once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Context

from clients.attack_vectors import AttackParams, attack_kind
from clients.data import DataConfig
from clients.faults import FaultConfig
from clients.latency import LatencyConfig
from clients.roles import NodeRole, role_from_run_config
from clients.run_config import NODE_CONFIG, read, read_as
from clients.training import LocalTrainingConfig


def read_partition(node_config: Mapping[str, object]) -> tuple[int, int]:
    """Return the node's ``(partition-id, num-partitions)``.

    Parameters
    ----------
    node_config : Mapping[str, object]
        ``context.node_config``.

    Returns
    -------
    tuple of int
        The partition id and the number of partitions, validated.
    """
    partition_id = read_as(node_config, "partition-id", int, source=NODE_CONFIG)
    num_partitions = read_as(node_config, "num-partitions", int, source=NODE_CONFIG)
    if num_partitions < 1:
        raise ValueError(f"node config 'num-partitions' must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config 'partition-id' must be in 0..{num_partitions - 1}, got {partition_id}"
        )
    return partition_id, num_partitions


def read_device(context: Context) -> str:
    """Return the device setting: node-config ``device``, else run-config ``device``.

    Parameters
    ----------
    context : Context
        The node's context.

    Returns
    -------
    str
        "auto", "cpu", "cuda" or "cuda:N" (checked by ``select_device``);
        "auto" when neither config sets it.
    """
    if "device" in context.node_config:
        return read(context.node_config, "device", source=NODE_CONFIG)
    return read(context.run_config, "device")


def read_node_role(context: Context) -> NodeRole:
    """Return the node's Byzantine and straggler roles.

    Parameters
    ----------
    context : Context
        The node's context (partition from the node config; run-config
        ``num-byzantine-nodes``, ``byzantine-fraction``, ``byzantine-partitions``
        and ``num-stragglers``).

    Returns
    -------
    NodeRole
        The node's roles.
    """
    partition_id, num_partitions = read_partition(context.node_config)
    return role_from_run_config(context.run_config, partition_id, num_partitions)


@dataclass(frozen=True)
class NodeSettings:
    """A node's validated settings.

    Attributes
    ----------
    num_partitions : int
        Number of partitions (nodes).
    role : NodeRole
        Partition id and roles.
    device : str
        Device setting.
    data : DataConfig
        Dataset and splits.
    training : LocalTrainingConfig
        Local SGD settings.
    attack : AttackParams
        What Byzantine nodes do (see :attr:`attack_name` for this node).
    latency : LatencyConfig
        How long the node waits before replying.
    faults : FaultConfig
        Simulated crashes, dropouts, absences and fast Byzantine replies.
    """

    num_partitions: int
    role: NodeRole
    device: str
    data: DataConfig
    training: LocalTrainingConfig
    attack: AttackParams
    latency: LatencyConfig
    faults: FaultConfig

    @property
    def partition_id(self) -> int:
        """The node's partition id."""
        return self.role.partition_id

    @property
    def attack_name(self) -> str | None:
        """This node's attack (from the round-robin ``attack`` list); None when honest."""
        if not self.role.is_byzantine:
            return None
        return self.attack.attack_for_rank(self.role.byzantine_rank)

    @property
    def attacks_at_node(self) -> bool:
        """Whether this node itself alters its training or reply this round.

        True for a Byzantine node under threat-model "client", and for data
        (label-flip) and reply (malformed) attacks under either threat model;
        under "omniscient" the server-side wrapper crafts the vector attacks.
        """
        name = self.attack_name
        if name is None:
            return False
        return self.attack.threat_model == "client" or attack_kind(name) != "vector"

    @classmethod
    def from_context(cls, context: Context) -> NodeSettings:
        """Read and validate every setting a node uses.

        Parameters
        ----------
        context : Context
            The node's context.

        Returns
        -------
        NodeSettings
            The validated settings.
        """
        _, num_partitions = read_partition(context.node_config)
        return cls(
            num_partitions=num_partitions,
            role=read_node_role(context),
            device=read_device(context),
            data=DataConfig.from_run_config(context.run_config),
            training=LocalTrainingConfig.from_run_config(context.run_config),
            attack=AttackParams.from_run_config(context.run_config),
            latency=LatencyConfig.from_run_config(
                context.run_config, context.node_config, num_partitions
            ),
            faults=FaultConfig.from_run_config(context.run_config, num_partitions),
        )

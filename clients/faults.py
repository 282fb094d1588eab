"""Simulated faults of a node's training round: crashes, dropouts, intermittent absences.

Each decision is a pure function of the settings, the run seed, the partition and
the round, so a run is reproducible and the ServerApp could recompute who failed.

- **crash**: the ClientApp raises :class:`SimulatedCrash` before training. Flower
  turns the exception into an error reply, which the strategy drops (it does not
  count towards k) and goes on.
- **dropout**: the node never replies. It waits ``round-timeout`` plus
  ``dropout-margin-seconds``, so that the message's TTL (the round deadline) has
  passed, then raises :class:`SimulatedDropout`; the SuperLink discards a reply to
  an expired message, and if the deadline were longer, an error reply is still
  never aggregated. In simulation the waiting node occupies its worker (one Ray
  actor) for that long.
- **intermittent**: in a round it misses (chance ``intermittent-probability``)
  the node raises :class:`SimulatedAbsence` at once, before training. The round
  counts it as an error reply, never as a valid one, and the node is back for the
  next round. Waiting out the deadline instead would keep it busy for as long as
  ``round-timeout`` (many first-k rounds), so that it would miss far more rounds
  than the probability says.
- **fast Byzantine**: Byzantine nodes skip the latency delay, whatever the
  latency model, and so arrive among the first k: a first-k round then holds up
  to f/k attackers instead of f/N. They still train, since most attacks start
  from the node's own update.

Faults apply to train rounds only; the ServerApp's roll call and federated
evaluation are answered as usual. When a partition is listed for several faults,
dropout wins over crash, and crash over intermittent.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from clients.run_config import read_settings, setting
from clients.seeding import FAULT_STREAM, derive_seed

# Sub-streams of FAULT_STREAM, so that the crash and the absence draws are independent.
_CRASH_DRAW = 0
_INTERMITTENT_DRAW = 1


class SimulatedFault(RuntimeError):
    """A fault the run config asked a node to simulate."""


class SimulatedCrash(SimulatedFault):
    """The node crashed this round (run-config ``crash-partitions``)."""


class SimulatedDropout(SimulatedFault):
    """The node dropped out: it waited past the round deadline (``dropout-partitions``)."""


class SimulatedAbsence(SimulatedFault):
    """The node missed this round (``intermittent-partitions``)."""


class Fault(enum.Enum):
    """What happens to a node in one train round."""

    NONE = "none"
    CRASH = "crash"
    DROPOUT = "dropout"
    ABSENT = "absent"


@dataclass(frozen=True)
class FaultConfig:
    """Fault settings (run-config ``crash-partitions``, ``dropout-partitions``, ...).

    Attributes
    ----------
    crash_partitions : frozenset of int
        Partitions that may crash.
    crash_probability : float
        Per-round chance that a listed partition crashes, in [0, 1]; 1 = every
        round.
    dropout_partitions : frozenset of int
        Partitions that never reply.
    intermittent_partitions : frozenset of int
        Partitions that miss some rounds.
    intermittent_probability : float
        Per-round chance that a listed partition misses the round, in [0, 1].
    fast_byzantine : bool
        Byzantine nodes skip the latency delay.
    round_timeout : float
        The round deadline and message TTL (run-config ``round-timeout``), > 0.
    dropout_margin_seconds : float
        How far past ``round_timeout`` a dropout waits, >= 0.
    """

    crash_partitions: frozenset[int] = setting(
        "crash-partitions", default=frozenset(), convert=frozenset
    )
    crash_probability: float = setting("crash-probability")
    dropout_partitions: frozenset[int] = setting(
        "dropout-partitions", default=frozenset(), convert=frozenset
    )
    intermittent_partitions: frozenset[int] = setting(
        "intermittent-partitions", default=frozenset(), convert=frozenset
    )
    intermittent_probability: float = setting("intermittent-probability")
    fast_byzantine: bool = setting("fast-byzantine")
    round_timeout: float = setting("round-timeout")
    dropout_margin_seconds: float = setting("dropout-margin-seconds")

    def __post_init__(self) -> None:
        for key, value in (
            ("crash-probability", self.crash_probability),
            ("intermittent-probability", self.intermittent_probability),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 <= value <= 1.0
            ):
                raise ValueError(
                    f"{key} must be a probability in [0, 1] (a per-round chance; 1 = every "
                    f"round), got {value!r}"
                )
        for key, partitions in (
            ("crash-partitions", self.crash_partitions),
            ("dropout-partitions", self.dropout_partitions),
            ("intermittent-partitions", self.intermittent_partitions),
        ):
            for partition_id in partitions:
                if (
                    isinstance(partition_id, bool)
                    or not isinstance(partition_id, int)
                    or partition_id < 0
                ):
                    raise ValueError(f"{key} must hold partition ids >= 0, got {partition_id!r}")
        if not isinstance(self.fast_byzantine, bool):
            raise ValueError(f"fast-byzantine must be true or false, got {self.fast_byzantine!r}")
        if not (math.isfinite(self.round_timeout) and self.round_timeout > 0):
            raise ValueError(
                f"round-timeout must be a number of seconds > 0, got {self.round_timeout!r}"
            )
        if not (math.isfinite(self.dropout_margin_seconds) and self.dropout_margin_seconds >= 0):
            raise ValueError(
                "dropout-margin-seconds must be a finite number of seconds >= 0, "
                f"got {self.dropout_margin_seconds!r}"
            )

    @property
    def dropout_wait_seconds(self) -> float:
        """How long a dropout waits before it gives up: ``round_timeout + margin``."""
        return self.round_timeout + self.dropout_margin_seconds

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, object], num_partitions: int | None = None
    ) -> FaultConfig:
        """Read and validate the fault settings of a Flower run config.

        Parameters
        ----------
        run_config : Mapping[str, object]
            ``context.run_config``: the key of each field (its ``setting``).
        num_partitions : int, optional
            When given, every listed partition id must be below it.

        Returns
        -------
        FaultConfig
            The validated settings.
        """
        return cls(**read_settings(cls, run_config, num_partitions=num_partitions))


def _draw(seed: int, partition_id: int, server_round: int, which: int) -> float:
    rng = np.random.default_rng(derive_seed(seed, partition_id, server_round, FAULT_STREAM, which))
    return float(rng.random())


def drops_out(config: FaultConfig, partition_id: int) -> bool:
    """Whether ``partition_id`` is a dropout (it never replies)."""
    return partition_id in config.dropout_partitions


def crashes(config: FaultConfig, *, seed: int, partition_id: int, server_round: int) -> bool:
    """Whether ``partition_id`` crashes in ``server_round`` (deterministic given the seed).

    Parameters
    ----------
    config : FaultConfig
        The fault settings.
    seed : int
        The run seed.
    partition_id : int
        The node's partition.
    server_round : int
        The round.

    Returns
    -------
    bool
        True for a listed partition with chance ``crash_probability``.
    """
    if partition_id not in config.crash_partitions:
        return False
    return _draw(seed, partition_id, server_round, _CRASH_DRAW) < config.crash_probability


def misses_round(config: FaultConfig, *, seed: int, partition_id: int, server_round: int) -> bool:
    """Whether intermittent ``partition_id`` misses ``server_round`` (deterministic).

    Parameters
    ----------
    config : FaultConfig
        The fault settings.
    seed : int
        The run seed.
    partition_id : int
        The node's partition.
    server_round : int
        The round.

    Returns
    -------
    bool
        True for a listed partition with chance ``intermittent_probability``.
    """
    if partition_id not in config.intermittent_partitions:
        return False
    draw = _draw(seed, partition_id, server_round, _INTERMITTENT_DRAW)
    return draw < config.intermittent_probability


def fault_for_round(
    config: FaultConfig, *, seed: int, partition_id: int, server_round: int
) -> Fault:
    """Return the node's fault in ``server_round``: dropout, else crash, else absence.

    Parameters
    ----------
    config : FaultConfig
        The fault settings.
    seed : int
        The run seed.
    partition_id : int
        The node's partition.
    server_round : int
        The round.

    Returns
    -------
    Fault
        ``Fault.NONE`` when the node trains and replies normally.
    """
    if drops_out(config, partition_id):
        return Fault.DROPOUT
    if crashes(config, seed=seed, partition_id=partition_id, server_round=server_round):
        return Fault.CRASH
    if misses_round(config, seed=seed, partition_id=partition_id, server_round=server_round):
        return Fault.ABSENT
    return Fault.NONE


def skips_delay(config: FaultConfig, *, is_byzantine: bool) -> bool:
    """Whether the node replies without its latency delay (a fast Byzantine node)."""
    return config.fast_byzantine and is_byzantine


def enact_fault(
    fault: Fault,
    config: FaultConfig,
    *,
    partition_id: int,
    server_round: int,
    sleep: Callable[[float], None],
) -> None:
    """Act out ``fault``: return for ``Fault.NONE``, else raise (a dropout waits first).

    Parameters
    ----------
    fault : Fault
        From :func:`fault_for_round`.
    config : FaultConfig
        The fault settings.
    partition_id : int
        The node's partition, for the message.
    server_round : int
        The round, for the message.
    sleep : callable
        How to wait; tests may pass a fake.

    Raises
    ------
    SimulatedCrash, SimulatedDropout, SimulatedAbsence
        For the corresponding fault.
    """
    where = f"partition {partition_id}, round {server_round}"
    if fault is Fault.CRASH:
        raise SimulatedCrash(
            f"simulated crash ({where}; run-config crash-partitions and crash-probability "
            f"{config.crash_probability})"
        )
    if fault is Fault.ABSENT:
        raise SimulatedAbsence(
            f"simulated absence: the node misses this round ({where}; run-config "
            f"intermittent-partitions and intermittent-probability "
            f"{config.intermittent_probability})"
        )
    if fault is Fault.DROPOUT:
        sleep(config.dropout_wait_seconds)
        raise SimulatedDropout(
            f"simulated dropout: gave up after {config.dropout_wait_seconds:g} s, past the "
            f"round-timeout of {config.round_timeout:g} s ({where}; run-config "
            "dropout-partitions)"
        )

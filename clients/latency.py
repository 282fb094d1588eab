"""Straggler behaviour: how long a node waits before replying.

The delay is real wall-clock time, so a first-k strategy sees real arrival order.

A *latency model* is a pure function ``(LatencyContext) -> seconds``. The
built-in ones are in :data:`LATENCY_MODELS`; run-config ``latency-model`` names
one of them or a function of your own as ``package.module:function`` (it must
be importable on every node). A model reads its parameters from
``context.params`` (the validated :class:`LatencyConfig`) and, for keys of its
own, from ``context.params.run_config``; it draws randomness only from
``context.rng``, which is seeded by the run seed, the partition and the round,
so delays are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from clients.plugins import resolve_plugin
from clients.run_config import NODE_CONFIG, read, read_settings, setting


@dataclass(frozen=True)
class LatencyConfig:
    """Latency settings (run-config ``latency-model``, ``latency-seconds``, ...).

    Attributes
    ----------
    latency_model : str
        A name in :data:`LATENCY_MODELS` or ``package.module:function``:
        "none": no delay; "constant": every node waits ``latency_seconds``;
        "stragglers": straggler nodes wait ``latency_seconds`` plus
        ``straggler_slowdown - 1`` times their compute time, the others none;
        "exponential": every node waits an Exponential draw of mean
        ``latency_seconds``; "log-normal": every node waits
        ``latency_seconds * exp(latency_sigma * Z)``, Z standard normal (median
        ``latency_seconds``, heavy right tail); "profile": each node waits a
        fixed delay from ``latency_profile`` (0 for unlisted nodes).
    latency_seconds : float
        The delay, mean or median (see above), >= 0.
    straggler_slowdown : float
        How many times slower stragglers compute, >= 1.
    num_stragglers : int
        How many nodes straggle (the last partition ids), >= 0.
    latency_sigma : float
        Log-normal: standard deviation of the log of the delay, >= 0.
    latency_profile : tuple of (int, float)
        Profile: ``(partition id, seconds)`` pairs, from run-config
        ``latency-profile`` such as ``"0:0.5,3:2.0"``.
    node_latency_seconds : float or None
        Node-config ``latency-seconds`` of this node, if set: it replaces
        ``latency_seconds`` for this node in every model, and in "profile" it
        is the node's fixed delay whatever ``latency_profile`` says.
    run_config : Mapping[str, object]
        The whole run config, for the keys of user-defined models (not
        compared, not hashed).
    """

    latency_model: str = setting("latency-model", default="none")
    latency_seconds: float = setting("latency-seconds", default=0.0)
    straggler_slowdown: float = setting("straggler-slowdown")
    num_stragglers: int = setting("num-stragglers", default=0)
    latency_sigma: float = setting("latency-sigma")
    latency_profile: tuple[tuple[int, float], ...] = setting("latency-profile", default=())
    node_latency_seconds: float | None = None
    run_config: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        _check_seconds(self.latency_seconds, "latency-seconds")
        if self.node_latency_seconds is not None:
            _check_seconds(self.node_latency_seconds, f"{NODE_CONFIG} 'latency-seconds'")
        if not (math.isfinite(self.straggler_slowdown) and self.straggler_slowdown >= 1):
            raise ValueError(
                "straggler-slowdown must be a finite number >= 1 (1 = no slowdown), "
                f"got {self.straggler_slowdown!r}"
            )
        if (
            isinstance(self.num_stragglers, bool)
            or not isinstance(self.num_stragglers, int)
            or self.num_stragglers < 0
        ):
            raise ValueError(f"num-stragglers must be an integer >= 0, got {self.num_stragglers!r}")
        if not (math.isfinite(self.latency_sigma) and self.latency_sigma >= 0):
            raise ValueError(
                "latency-sigma (the log-normal model's log standard deviation) must be a "
                f"finite number >= 0, got {self.latency_sigma!r}; 1.0 is a heavy tail, "
                "0 no spread"
            )
        seen: set[int] = set()
        for partition_id, seconds in self.latency_profile:
            if isinstance(partition_id, bool) or not isinstance(partition_id, int):
                raise ValueError(f"latency-profile: partition id {partition_id!r} is no integer")
            if partition_id < 0:
                raise ValueError(f"latency-profile: partition id {partition_id} must be >= 0")
            if partition_id in seen:
                raise ValueError(
                    f"latency-profile lists partition {partition_id} twice; keep one entry"
                )
            seen.add(partition_id)
            _check_seconds(seconds, f"latency-profile entry for partition {partition_id}")
        self.model  # noqa: B018 - resolve now, so that a bad name fails at start-up

    @property
    def model(self) -> LatencyModel:
        """The latency model function (built-in, or imported from its dotted path)."""
        return resolve_plugin(self.latency_model, LATENCY_MODELS, "latency-model")

    @property
    def profile(self) -> dict[int, float]:
        """``latency_profile`` as a ``{partition id: seconds}`` dict."""
        return dict(self.latency_profile)

    @classmethod
    def from_run_config(
        cls,
        run_config: Mapping[str, object],
        node_config: Mapping[str, object] | None = None,
        num_partitions: int | None = None,
    ) -> LatencyConfig:
        """Read and validate the latency settings of a Flower run config.

        Parameters
        ----------
        run_config : Mapping[str, object]
            ``context.run_config``: the key of each field (its ``setting``).
        node_config : Mapping[str, object], optional
            ``context.node_config``; its optional ``latency-seconds`` overrides
            the run config's for this node.
        num_partitions : int, optional
            When given, ``latency-profile`` ids must be below it.

        Returns
        -------
        LatencyConfig
            The validated settings.
        """
        values = read_settings(cls, run_config)
        profile = parse_latency_profile(values["latency_profile"], num_partitions)
        values["latency_profile"] = tuple(sorted(profile.items()))
        if node_config is not None and "latency-seconds" in node_config:
            values["node_latency_seconds"] = read(
                node_config, "latency-seconds", source=NODE_CONFIG
            )
        return cls(**values, run_config=MappingProxyType(dict(run_config)))


@dataclass(frozen=True)
class LatencyContext:
    """What a latency model knows about the node and the round.

    Attributes
    ----------
    params : LatencyConfig
        The validated settings (and ``params.run_config`` for your own keys).
    partition_id : int
        The node's partition.
    num_partitions : int
        N, the number of partitions.
    is_straggler : bool
        Whether the node is one of the ``num-stragglers`` stragglers.
    is_byzantine : bool
        Whether the node is Byzantine.
    compute_seconds : float
        How long its local training took this round, >= 0.
    server_round : int
        The round.
    rng : np.random.Generator
        The only randomness a model should use: seeded by the run seed, the
        partition and the round.
    """

    params: LatencyConfig
    partition_id: int
    num_partitions: int
    is_straggler: bool
    is_byzantine: bool
    compute_seconds: float
    server_round: int
    rng: np.random.Generator

    @property
    def latency_seconds(self) -> float:
        """This node's ``latency-seconds``: the node config's if set, else the run config's."""
        if self.params.node_latency_seconds is not None:
            return self.params.node_latency_seconds
        return self.params.latency_seconds


LatencyModel = Callable[[LatencyContext], float]


def no_latency(context: LatencyContext) -> float:
    """Reply at once: 0 s."""
    return 0.0


def constant_latency(context: LatencyContext) -> float:
    """Every node waits ``latency-seconds``."""
    return context.latency_seconds


def straggler_latency(context: LatencyContext) -> float:
    """Stragglers wait ``latency-seconds + (straggler-slowdown - 1) * compute``; others 0 s."""
    if not context.is_straggler:
        return 0.0
    slowdown = context.params.straggler_slowdown
    return context.latency_seconds + (slowdown - 1.0) * context.compute_seconds


def exponential_latency(context: LatencyContext) -> float:
    """Every node waits an Exponential draw of mean ``latency-seconds``."""
    return float(context.rng.exponential(context.latency_seconds))


def log_normal_latency(context: LatencyContext) -> float:
    """Every node waits ``latency-seconds * exp(latency-sigma * Z)``, Z ~ N(0, 1).

    ``latency-seconds`` is the median delay; the mean is
    ``latency-seconds * exp(latency-sigma**2 / 2)`` and the tail is heavy: with
    sigma 1, one round in 20 waits more than 5.2 times the median.
    """
    return context.latency_seconds * math.exp(context.params.latency_sigma * context.rng.normal())


def profile_latency(context: LatencyContext) -> float:
    """Each node waits a fixed delay: node-config ``latency-seconds``, else its
    ``latency-profile`` entry, else 0 s."""
    if context.params.node_latency_seconds is not None:
        return context.params.node_latency_seconds
    return context.params.profile.get(context.partition_id, 0.0)


LATENCY_MODELS: dict[str, LatencyModel] = {
    "none": no_latency,
    "constant": constant_latency,
    "stragglers": straggler_latency,
    "exponential": exponential_latency,
    "log-normal": log_normal_latency,
    "profile": profile_latency,
}


def parse_latency_profile(text: str, num_partitions: int | None = None) -> dict[int, float]:
    """Parse run-config ``latency-profile``: ``"partition:seconds,..."``.

    Parameters
    ----------
    text : str
        E.g. ``"0:0.5,3:2.0"``; ``""`` is an empty profile. Spaces are ignored.
    num_partitions : int, optional
        When given, every partition id must be below it.

    Returns
    -------
    dict of int to float
        Seconds per listed partition.

    Raises
    ------
    ValueError
        A malformed entry, a repeated or out-of-range partition id, or a
        negative or non-finite delay; the message names the entry.
    """
    profile: dict[int, float] = {}
    example = 'e.g. latency-profile = "0:0.5,3:2.0" (partition:seconds, comma-separated)'
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        partition_text, colon, seconds_text = entry.partition(":")
        try:
            if not colon:
                raise ValueError
            partition_id = int(partition_text.strip())
            seconds = float(seconds_text.strip())
        except ValueError:
            raise ValueError(
                f"latency-profile entry {entry!r} is not partition:seconds; {example}"
            ) from None
        if partition_id < 0 or (num_partitions is not None and partition_id >= num_partitions):
            bound = f"0..{num_partitions - 1}" if num_partitions is not None else ">= 0"
            raise ValueError(
                f"latency-profile names partition {partition_id}, but partition ids are "
                f"{bound}; remove it or run more nodes"
            )
        if partition_id in profile:
            raise ValueError(f"latency-profile lists partition {partition_id} twice; keep one")
        _check_seconds(seconds, f"latency-profile entry {entry!r}")
        profile[partition_id] = seconds
    return profile


def delay_seconds(
    config: LatencyConfig,
    *,
    partition_id: int,
    num_partitions: int,
    is_straggler: bool,
    compute_seconds: float,
    server_round: int,
    rng: np.random.Generator,
    is_byzantine: bool = False,
) -> float:
    """Return how long a node waits before replying, from its latency model.

    Parameters
    ----------
    config : LatencyConfig
        The latency settings.
    partition_id, num_partitions : int
        The node's partition and N.
    is_straggler : bool
        Whether this node is a straggler.
    compute_seconds : float
        How long its local training took, >= 0.
    server_round : int
        The round.
    rng : np.random.Generator
        The model's randomness.
    is_byzantine : bool (default: False)
        Whether this node is Byzantine.

    Returns
    -------
    float
        Seconds to wait, >= 0.

    Raises
    ------
    ValueError
        ``compute_seconds`` is negative, or the model returned something
        other than a finite number >= 0.
    """
    if not (math.isfinite(compute_seconds) and compute_seconds >= 0):
        raise ValueError(f"compute_seconds must be a finite number >= 0, got {compute_seconds!r}")
    context = LatencyContext(
        params=config,
        partition_id=partition_id,
        num_partitions=num_partitions,
        is_straggler=is_straggler,
        is_byzantine=is_byzantine,
        compute_seconds=compute_seconds,
        server_round=server_round,
        rng=rng,
    )
    delay = config.model(context)
    if (
        isinstance(delay, bool)
        or not isinstance(delay, (int, float, np.integer, np.floating))
        or not math.isfinite(delay)
        or delay < 0
    ):
        raise ValueError(
            f"latency-model {config.latency_model!r} returned {delay!r} seconds for partition "
            f"{partition_id}; a latency model must return a finite number >= 0"
        )
    return float(delay)


def _check_seconds(value: float, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")

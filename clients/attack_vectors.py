"""Byzantine attacks as pure functions on update vectors, and their run-config parameters.

A *vector attack* is a function ``(honest_updates, context) -> vector``
(:data:`VectorAttack`). ``honest_updates`` is a float array of shape ``(h, d)``,
``h >= 1``: the honest updates ``x_1 .. x_h`` the attacker knows, one per row.
It returns the one update of shape ``(d,)`` that a Byzantine node sends. Under
the two threat models the rows are:

- *omniscient*: every honest update of the round (the server-side wrapper in
  ``simulations.app.omniscient`` calls these functions);
- *client*: the attacker's own estimate sample, ``m`` updates it computed from
  the global weights on ``m`` disjoint chunks of its own data
  (run-config ``attack-estimation-batches``); with ``m = 1`` the one row is its
  own full update, and then ``sigma = 0``.

Statistics. ``mu`` is the coordinate-wise mean of the rows and ``sigma`` their
coordinate-wise *population* standard deviation (``ddof=0``), so that one row
has ``sigma = 0`` rather than NaN. Several reference implementations (ByzFL's
ALIE, the ``std`` direction in Shejwalkar & Houmansadr's code) use ``ddof=1``;
the two differ by the factor ``sqrt(h / (h - 1))``. Every attack computes in
float64 and returns the rows' float dtype (float32 at least).

Built-in attacks (:data:`VECTOR_ATTACKS`): ``none``, ``sign-flip``,
``gaussian``, ``alie``, ``ipm``, ``mimic``, ``min-max``, ``min-sum``,
``non-finite``, and the rule-tailored ``tailored-<rule>`` for each rule of
:data:`TAILORED_RULE_NAMES` (:mod:`clients.tailored`, imported when first
used). Two attacks are not vector functions: ``label-flip``
(:data:`DATA_ATTACKS`, the node trains on flipped labels) and ``malformed``
(:data:`REPLY_ATTACKS`, the node replies with broken content, see
:mod:`clients.malformed`). Both always act at the node, under either threat
model. A user's own vector attack is named by its dotted path
``package.module:function`` (see ``examples/custom_attack.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from clients.malformed import MALFORMED_KINDS
from clients.plugins import is_dotted_path, resolve_plugin
from clients.run_config import (
    PERTURBATION_DIRECTIONS,
    RUN_CONFIG_KEYS,
    RunConfigSettings,
    setting,
)

THREAT_MODELS: tuple[str, ...] = RUN_CONFIG_KEYS["threat-model"].choices
GAUSSIAN_MODES: tuple[str, ...] = RUN_CONFIG_KEYS["gaussian-mode"].choices
MIN_SUM_BOUNDS: tuple[str, ...] = RUN_CONFIG_KEYS["min-sum-bound"].choices
NON_FINITE_VALUES: tuple[str, ...] = RUN_CONFIG_KEYS["non-finite-value"].choices
# The server's DStar settings that tailored-dstar simulates (dstar_flwr's choices).
_DSTAR_VARIANTS = RUN_CONFIG_KEYS["dstar-variant"].choices
_DSTAR_SCALES = RUN_CONFIG_KEYS["deviation-scale"].choices
_DSTAR_CENTERS = RUN_CONFIG_KEYS["dstar-center"].choices
DATA_ATTACKS: frozenset[str] = frozenset({"label-flip"})
REPLY_ATTACKS: frozenset[str] = frozenset({"malformed"})
# The rules a ``tailored-<rule>`` attack knows (clients.tailored.TAILORED_RULES).
TAILORED_RULE_NAMES: tuple[str, ...] = (
    "dstar", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "fltrust",
)  # fmt: skip
TAILORED_ATTACKS: tuple[str, ...] = tuple(f"tailored-{rule}" for rule in TAILORED_RULE_NAMES)
# Built-in attacks that need the spread of several honest updates: under the
# client threat model they need attack-estimation-batches >= 2.
SPREAD_ATTACKS: frozenset[str] = frozenset(
    {"alie", "mimic", "min-max", "min-sum", *TAILORED_ATTACKS}
)

# Shejwalkar & Houmansadr's search: gamma starts at 10, first step 5, tolerance 1e-5.
GAMMA_INIT = 10.0
GAMMA_TOLERANCE = 1e-5

AttackKind = Literal["vector", "data", "reply"]


@dataclass(frozen=True)
class AttackParams(RunConfigSettings):
    """What Byzantine nodes do, from the run config, validated.

    Attributes
    ----------
    attacks : tuple of str
        Run-config ``attack``: one name or dotted path, or several (comma
        separated in the run config), assigned round-robin to the Byzantine
        partitions in ascending id order (see :meth:`attack_for_rank`).
    attack_scale : float
        ``attack-scale``, >= 0: the factor of ``sign-flip`` and the strength of
        ``gaussian``.
    gaussian_mode : str
        ``gaussian-mode``: "fixed" (std ``attack_scale`` per coordinate) or
        "scaled" (expected norm ``attack_scale`` times the mean honest norm).
    alie_z : float
        ``alie-z``: 0 computes z from n and f (:func:`alie_z_baruch`); any other
        finite value is used as is (1.5 is a common fixed choice).
    ipm_epsilon : float
        ``ipm-epsilon``, > 0. Presets from Xie et al.: 0.1 (against
        distance-based rules) and 100 (against median-based rules).
    min_max_direction : str
        ``min-max-direction``: the perturbation ``p`` of Min-Max and Min-Sum,
        "unit" (``mu / ||mu||``), "sign" (``sign(mu)``) or "std" (``sigma``).
    min_sum_bound : str
        ``min-sum-bound``: the right-hand side of Min-Sum's constraint,
        "max" (``max_i sum_j ||x_i - x_j||^2``, the paper) or "min"
        (``min_i sum_j``, the authors' released code).
    tailored_direction : str
        ``tailored-direction``: the perturbation ``p`` of the ``tailored-*``
        attacks (they send ``mu - gamma * p``): "unit", "sign" or "std".
    tailored_surrogates : int
        ``tailored-surrogates`` S >= 1: surrogate server updates drawn from
        ``N(mu, diag(sigma^2))`` by ``tailored-dstar`` and ``tailored-fltrust``
        in place of the server's validation (root) update, which they never see.
    tailored_quorum : int
        ``tailored-quorum``, ``0 <= q <= S``: how many surrogates must accept the
        copies; 0 = a majority, ``S // 2 + 1``.
    tailored_trim_beta : float
        ``tailored-trim-beta`` in ``[0, 0.5)``: the server's FedTrimmedAvg beta
        that ``tailored-fedtrimmedavg`` assumes (0.2, Flower's default, which
        the experiments use); 0 = cut exactly f values at each end.
    non_finite_value : str
        ``non-finite-value``: "nan" or "inf" (+inf).
    non_finite_fraction : float
        ``non-finite-fraction`` in (0, 1]: the share of coordinates made
        non-finite (1.0 = all).
    malformed_kind : str
        ``malformed-kind``: one of :data:`clients.malformed.MALFORMED_KINDS`.
    estimation_batches : int
        ``attack-estimation-batches`` m >= 1: under the client threat model a
        Byzantine node trains from the global weights on m disjoint chunks of
        its data and attacks with those m updates as its honest sample.
    threat_model : str
        ``threat-model``: "client" (nodes attack with what they know) or
        "omniscient" (Byzantine nodes reply honestly and the server-side
        wrapper replaces their replies; data and reply attacks still act at
        the node).
    claimed_num_examples : int
        ``claimed-num-examples`` >= 0: the ``num-examples`` every Byzantine
        node reports in its training replies, whatever it sends and under
        either threat model (example-count inflation); 0 = its true count.
    dstar_variant, dstar_max_robust_z, dstar_norm_test, dstar_threshold_factor, \
dstar_deviation_scale, dstar_center
        The server's DStar settings (run-config ``dstar-variant``,
        ``max-robust-z``, ``norm-test``, ``threshold-factor``,
        ``deviation-scale``, ``dstar-center``): the rule ``tailored-dstar``
        simulates. The adversary knows the rule and its settings.
    """

    attacks: tuple[str, ...] = setting("attack", default=("none",))
    attack_scale: float = setting("attack-scale")
    gaussian_mode: str = setting("gaussian-mode")
    alie_z: float = setting("alie-z")
    ipm_epsilon: float = setting("ipm-epsilon")
    min_max_direction: str = setting("min-max-direction")
    min_sum_bound: str = setting("min-sum-bound")
    tailored_direction: str = setting("tailored-direction")
    tailored_surrogates: int = setting("tailored-surrogates")
    tailored_quorum: int = setting("tailored-quorum")
    tailored_trim_beta: float = setting("tailored-trim-beta")
    non_finite_value: str = setting("non-finite-value")
    non_finite_fraction: float = setting("non-finite-fraction")
    malformed_kind: str = setting("malformed-kind")
    estimation_batches: int = setting("attack-estimation-batches")
    threat_model: str = setting("threat-model")
    claimed_num_examples: int = setting("claimed-num-examples")
    dstar_variant: str = setting("dstar-variant")
    dstar_max_robust_z: float = setting("max-robust-z")
    dstar_norm_test: bool = setting("norm-test")
    dstar_threshold_factor: float = setting("threshold-factor")
    dstar_deviation_scale: str = setting("deviation-scale")
    dstar_center: str = setting("dstar-center")

    def __post_init__(self) -> None:
        names = self.attacks
        object.__setattr__(
            self, "attacks", parse_attack_names(names) if isinstance(names, str) else tuple(names)
        )
        if not self.attacks:
            raise ValueError('attack must name at least one attack, e.g. attack = "gaussian"')
        for name in self.attacks:
            check_attack_name(name)
        _check_number(self.attack_scale, "attack-scale", minimum=0.0, hint="e.g. 1.0")
        _check_choice(self.gaussian_mode, "gaussian-mode", GAUSSIAN_MODES)
        _check_number(self.alie_z, "alie-z", hint="0 computes z from n and f; 1.5 is common")
        _check_number(
            self.ipm_epsilon, "ipm-epsilon", minimum=0.0, strict=True, hint="presets 0.1 and 100"
        )
        _check_choice(self.min_max_direction, "min-max-direction", PERTURBATION_DIRECTIONS)
        _check_choice(self.min_sum_bound, "min-sum-bound", MIN_SUM_BOUNDS)
        _check_choice(self.tailored_direction, "tailored-direction", PERTURBATION_DIRECTIONS)
        _check_integer(self.tailored_surrogates, "tailored-surrogates", 1, "e.g. 5")
        _check_integer(self.tailored_quorum, "tailored-quorum", 0, "0 = a majority")
        if self.tailored_quorum > self.tailored_surrogates:
            raise ValueError(
                f"tailored-quorum = {self.tailored_quorum} exceeds tailored-surrogates = "
                f"{self.tailored_surrogates}; set it to at most that, or 0 for a majority"
            )
        if not (_is_number(self.tailored_trim_beta) and 0.0 <= self.tailored_trim_beta < 0.5):
            raise ValueError(
                "tailored-trim-beta must be in [0, 0.5) (0.2 = Flower's FedTrimmedAvg default, "
                f"0 = cut f at each end), got {self.tailored_trim_beta!r}"
            )
        _check_integer(self.claimed_num_examples, "claimed-num-examples", 0, "0 = honest count")
        _check_choice(self.dstar_variant, "dstar-variant", _DSTAR_VARIANTS)
        _check_number(self.dstar_max_robust_z, "max-robust-z", minimum=0.0, hint="e.g. 3.0")
        if not isinstance(self.dstar_norm_test, bool):
            raise ValueError(f"norm-test must be true or false, got {self.dstar_norm_test!r}")
        _check_number(
            self.dstar_threshold_factor, "threshold-factor", minimum=0.0, strict=True, hint="2.0"
        )
        _check_choice(self.dstar_deviation_scale, "deviation-scale", _DSTAR_SCALES)
        _check_choice(self.dstar_center, "dstar-center", _DSTAR_CENTERS)
        _check_choice(self.non_finite_value, "non-finite-value", NON_FINITE_VALUES)
        if not (_is_number(self.non_finite_fraction) and 0.0 < self.non_finite_fraction <= 1.0):
            raise ValueError(
                "non-finite-fraction must be in (0, 1] (1.0 = every coordinate), got "
                f"{self.non_finite_fraction!r}"
            )
        _check_choice(self.malformed_kind, "malformed-kind", MALFORMED_KINDS)
        if (
            isinstance(self.estimation_batches, bool)
            or not isinstance(self.estimation_batches, int)
            or self.estimation_batches < 1
        ):
            raise ValueError(
                "attack-estimation-batches must be an integer >= 1, got "
                f"{self.estimation_batches!r}"
            )
        _check_choice(self.threat_model, "threat-model", THREAT_MODELS)
        needs_spread = sorted(set(self.attacks) & SPREAD_ATTACKS)
        if self.threat_model == "client" and self.estimation_batches < 2 and needs_spread:
            raise ValueError(
                f"attack {', '.join(needs_spread)} under threat-model 'client' estimates the "
                "honest spread from the node's own updates, and attack-estimation-batches = 1 "
                "gives one update (sigma = 0: the node would send its honest update); set "
                "attack-estimation-batches to 2 or more (e.g. 4), or threat-model = 'omniscient'"
            )

    def dstar_rule_kwargs(self) -> dict[str, object]:
        """The server's DStar settings as ``dstar_aggregate`` keywords."""
        return {
            "variant": self.dstar_variant,
            "max_robust_z": self.dstar_max_robust_z,
            "norm_test": self.dstar_norm_test,
            "threshold_factor": self.dstar_threshold_factor,
            "scale": self.dstar_deviation_scale,
            "center": self.dstar_center,
        }

    def attack_for_rank(self, rank: int) -> str:
        """The attack of the Byzantine partition with this rank (0 = lowest id).

        Parameters
        ----------
        rank : int
            The partition's position among the Byzantine partitions, ascending ids.

        Returns
        -------
        str
            ``attacks[rank % len(attacks)]``.
        """
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"a Byzantine rank must be an integer >= 0, got {rank!r}")
        return self.attacks[rank % len(self.attacks)]

    def assign(self, byzantine_partitions: set[int] | frozenset[int]) -> dict[int, str]:
        """Map each Byzantine partition id to its attack, round-robin in ascending id order.

        Parameters
        ----------
        byzantine_partitions : set of int
            The Byzantine partition ids.

        Returns
        -------
        dict of int to str
            Attack name (or dotted path) per Byzantine partition.
        """
        return {
            partition: self.attack_for_rank(rank)
            for rank, partition in enumerate(sorted(byzantine_partitions))
        }


@dataclass(frozen=True)
class AttackContext:
    """What a vector attack knows besides the honest updates.

    Attributes
    ----------
    num_nodes : int
        n, the nodes in the round (honest and Byzantine), >= 1.
    num_byzantine : int
        f, the Byzantine nodes in the round, ``0 <= f <= n``.
    rng : np.random.Generator
        The attack's only source of randomness.
    params : AttackParams
        The validated parameters.
    """

    num_nodes: int
    num_byzantine: int
    rng: np.random.Generator
    params: AttackParams

    def __post_init__(self) -> None:
        for name, value in (("num_nodes", self.num_nodes), ("num_byzantine", self.num_byzantine)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"AttackContext.{name} must be an integer, got {value!r}")
        if self.num_nodes < 1 or not 0 <= self.num_byzantine <= self.num_nodes:
            raise ValueError(
                "AttackContext needs num_nodes >= 1 and 0 <= num_byzantine <= num_nodes, got "
                f"n = {self.num_nodes}, f = {self.num_byzantine}"
            )


VectorAttack = Callable[[np.ndarray, AttackContext], np.ndarray]


# --- statistics ---------------------------------------------------------------


def as_update_matrix(honest_updates: np.ndarray) -> np.ndarray:
    """Check the honest updates and return them as a float64 ``(h, d)`` matrix.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)`` with ``h >= 1``, or ``(d,)`` for a single update.

    Returns
    -------
    np.ndarray
        A float64 view or copy of shape ``(h, d)``.
    """
    rows = np.asarray(honest_updates)
    if rows.ndim == 1:
        rows = rows[np.newaxis, :]
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(
            f"honest updates must have shape (h, d) with h >= 1, got {np.shape(honest_updates)}"
        )
    if not (np.issubdtype(rows.dtype, np.floating) or np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"honest updates must be numbers, got dtype {rows.dtype}")
    return rows.astype(np.float64, copy=False)


def honest_statistics(honest_updates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mu, sigma)``: coordinate-wise mean and population std (``ddof=0``).

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.

    Returns
    -------
    tuple of np.ndarray
        ``mu`` and ``sigma``, float64, shape ``(d,)``; ``sigma = 0`` for one row.
    """
    rows = as_update_matrix(honest_updates)
    return rows.mean(axis=0), rows.std(axis=0, ddof=0)


def _output(vector: np.ndarray, honest_updates: np.ndarray) -> np.ndarray:
    dtype = np.asarray(honest_updates).dtype
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    return np.asarray(vector).astype(np.result_type(dtype, np.float32), copy=False)


# --- the attacks --------------------------------------------------------------


def no_attack(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Send ``mu``, the mean of the honest updates (one row: the node's own update).

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        Unused.

    Returns
    -------
    np.ndarray
        ``mu``.
    """
    mu, _ = honest_statistics(honest_updates)
    return _output(mu, honest_updates)


def sign_flip(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Sign flip: send ``-attack_scale * mu`` (one row: minus the node's own update).

    Damaskinos et al. 2018; ByzFL's ``SignFlipping`` (scale 1).

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``params.attack_scale``.

    Returns
    -------
    np.ndarray
        ``-attack_scale * mu``.
    """
    mu, _ = honest_statistics(honest_updates)
    return _output(-context.params.attack_scale * mu, honest_updates)


def expected_gaussian_norm(dimension: int) -> float:
    """``E ||Z||`` for ``Z ~ N(0, I_d)``: ``sqrt(2) * Gamma((d + 1) / 2) / Gamma(d / 2)``.

    Parameters
    ----------
    dimension : int
        d >= 0.

    Returns
    -------
    float
        The mean of a chi distribution with d degrees of freedom (0 for d = 0).
    """
    if dimension <= 0:
        return 0.0
    return math.sqrt(2.0) * math.exp(math.lgamma((dimension + 1) / 2) - math.lgamma(dimension / 2))


def gaussian(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Gaussian noise, ignoring the updates' values (Blanchard et al., NeurIPS 2017).

    ``gaussian-mode`` "fixed": i.i.d. ``N(0, attack_scale^2)`` per coordinate.
    "scaled": i.i.d. ``N(0, s^2)`` with ``s = attack_scale * mean_i ||x_i|| /
    E||N(0, I_d)||``, so that the expected norm of the noise is ``attack_scale``
    times the mean honest norm.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``rng``, ``params.attack_scale`` and ``params.gaussian_mode``.

    Returns
    -------
    np.ndarray
        The noise vector.
    """
    rows = as_update_matrix(honest_updates)
    dimension = rows.shape[1]
    std = context.params.attack_scale
    if context.params.gaussian_mode == "scaled":
        mean_norm = float(np.linalg.norm(rows, axis=1).mean())
        chi_mean = expected_gaussian_norm(dimension)
        std = std * mean_norm / chi_mean if chi_mean > 0 else 0.0
    return _output(context.rng.normal(0.0, std, size=dimension), honest_updates)


def alie_z_baruch(num_nodes: int, num_byzantine: int) -> float:
    """ALIE's z from the paper: ``z = Phi^-1((n - s) / n)``, ``s = floor(n/2 + 1) - f``.

    Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing Defenses for
    Distributed Learning", NeurIPS 2019, Algorithm 1 (``z_max = max_z
    (Phi(z) < (n - s) / n)``): ``s`` is the number of honest "supporters" the
    attacker needs for a majority. For ``(n, f) = (20, 4)``: ``s = 7``,
    ``z = Phi^-1(0.65) = 0.3853``.

    Parameters
    ----------
    num_nodes : int
        n, all nodes.
    num_byzantine : int
        f, the Byzantine nodes.

    Returns
    -------
    float
        z.

    Raises
    ------
    ValueError
        When ``(n - s) / n`` is not in (0, 1) (e.g. a Byzantine majority, or
        n < 3); the message says to set ``alie-z``.
    """
    supporters = math.floor(num_nodes / 2 + 1) - num_byzantine
    return _normal_quantile((num_nodes - supporters) / num_nodes, num_nodes, num_byzantine)


def alie_z_honest_share(num_nodes: int, num_byzantine: int) -> float:
    """ALIE's z as released code computes it: ``Phi^-1((n - f - s) / (n - f))``.

    Same ``s = floor(n/2 + 1) - f``, but the quantile is taken over the n - f
    honest nodes only. This is the formula of Karimireddy, He & Jaggi's code
    (github.com/epfml/byzantine-robust-noniid-optimizer,
    ``codes/attacks/alittle.py``) and of many benchmarks derived from it. For
    ``(n, f) = (20, 4)``: ``(20 - 4 - 7) / 16 = 0.5625``, ``z = 0.1573``. Not used
    by the ``alie`` attack; set ``alie-z`` to its value to use it.

    Parameters
    ----------
    num_nodes : int
        n, all nodes.
    num_byzantine : int
        f, the Byzantine nodes (< n).

    Returns
    -------
    float
        z.
    """
    supporters = math.floor(num_nodes / 2 + 1) - num_byzantine
    honest = num_nodes - num_byzantine
    if honest <= 0:
        raise ValueError(f"ALIE's z needs f < n, got n = {num_nodes}, f = {num_byzantine}")
    return _normal_quantile((honest - supporters) / honest, num_nodes, num_byzantine)


def _normal_quantile(probability: float, num_nodes: int, num_byzantine: int) -> float:
    if not 0.0 < probability < 1.0:
        raise ValueError(
            f"ALIE's z is undefined for n = {num_nodes}, f = {num_byzantine} (quantile "
            f"{probability:.4g} is not in (0, 1)); set run-config 'alie-z' to a fixed z "
            "such as 1.5"
        )
    return NormalDist().inv_cdf(probability)


def alie(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """A Little Is Enough: send ``mu + z * sigma`` (Baruch et al., NeurIPS 2019).

    ``z = params.alie_z`` when it is not 0, else :func:`alie_z_baruch` of the
    context's n and f.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``num_nodes``, ``num_byzantine``, ``params.alie_z``.

    Returns
    -------
    np.ndarray
        ``mu + z * sigma``.
    """
    mu, sigma = honest_statistics(honest_updates)
    z = context.params.alie_z or alie_z_baruch(context.num_nodes, context.num_byzantine)
    return _output(mu + z * sigma, honest_updates)


def ipm(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Inner product manipulation: send ``-epsilon * mu``.

    Xie, Koyejo & Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
    Inner Product Manipulation", UAI 2019. Presets: ``ipm-epsilon`` 0.1 (breaks
    distance-based rules such as Krum) and 100 (breaks median-based rules).
    ByzFL's ``FallOfEmpires(tau)`` is the same with ``epsilon = tau - 1``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``params.ipm_epsilon``.

    Returns
    -------
    np.ndarray
        ``-epsilon * mu``.
    """
    mu, _ = honest_statistics(honest_updates)
    return _output(-context.params.ipm_epsilon * mu, honest_updates)


def mimic_index(honest_updates: np.ndarray) -> int:
    """The row Mimic copies: the largest ``|<x_i - mu, v>|``, v the top principal direction.

    ``v`` is the first right singular vector of the centred rows ``x_i - mu``
    (their direction of largest spread). Its sign is arbitrary, hence the
    absolute value; ties go to the lowest index. With one row, or rows all
    equal, the answer is 0.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.

    Returns
    -------
    int
        The row index.
    """
    rows = as_update_matrix(honest_updates)
    centred = rows - rows.mean(axis=0)
    if rows.shape[0] == 1 or not np.any(centred):
        return 0
    _, _, right = np.linalg.svd(centred, full_matrices=False)
    projections = np.abs(centred @ right[0])
    return int(np.argmax(projections))


def mimic(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Mimic: send a copy of one honest update, chosen along the main direction of spread.

    Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022. Their attacker estimates the top
    eigenvector z of the honest updates' covariance by power iteration over a
    warm-up and then copies ``argmax_i <x_i, z>``. Here every round is
    stateless: z is computed exactly from the round's rows (SVD) and the row is
    :func:`mimic_index`. All Byzantine nodes copy the same honest node, which
    over-weights it.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        Unused.

    Returns
    -------
    np.ndarray
        A copy of the chosen row.
    """
    rows = as_update_matrix(honest_updates)
    return _output(rows[mimic_index(rows)].copy(), honest_updates)


def perturbation_direction(honest_updates: np.ndarray, direction: str) -> np.ndarray:
    """Min-Max/Min-Sum's perturbation ``p``: ``mu/||mu||``, ``sign(mu)`` or ``sigma``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    direction : str
        One of :data:`PERTURBATION_DIRECTIONS`: "unit", "sign" or "std".

    Returns
    -------
    np.ndarray
        ``p``, float64; zero when ``mu = 0`` ("unit") or ``sigma = 0`` ("std").
    """
    _check_choice(direction, "min-max-direction", PERTURBATION_DIRECTIONS)
    mu, sigma = honest_statistics(honest_updates)
    if direction == "unit":
        norm = float(np.linalg.norm(mu))
        return mu / norm if norm > 0 else np.zeros_like(mu)
    if direction == "sign":
        return np.sign(mu)
    return sigma


def _squared_distances_to(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", rows - vector, rows - vector)


def _pairwise_squared_distances(rows: np.ndarray) -> np.ndarray:
    return np.stack([_squared_distances_to(rows, row) for row in rows])


def min_max_holds(honest_updates: np.ndarray, candidate: np.ndarray) -> bool:
    """Min-Max's constraint: ``max_i ||x_m - x_i||^2 <= max_{i,j} ||x_i - x_j||^2``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.

    Returns
    -------
    bool
        Whether ``x_m`` is no farther from any honest update than the two
        farthest honest updates are from each other.
    """
    rows = as_update_matrix(honest_updates)
    bound = _pairwise_squared_distances(rows).max()
    return bool(_squared_distances_to(rows, np.asarray(candidate, np.float64)).max() <= bound)


def min_sum_holds(honest_updates: np.ndarray, candidate: np.ndarray, bound: str = "max") -> bool:
    """Min-Sum's constraint: ``sum_i ||x_m - x_i||^2 <= B``.

    ``B = max_i sum_j ||x_i - x_j||^2`` ("max", Shejwalkar & Houmansadr's paper)
    or ``min_i sum_j ||x_i - x_j||^2`` ("min", their released code, stricter).

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    bound : str
        "max" or "min".

    Returns
    -------
    bool
        Whether the constraint holds.
    """
    _check_choice(bound, "min-sum-bound", MIN_SUM_BOUNDS)
    rows = as_update_matrix(honest_updates)
    scores = _pairwise_squared_distances(rows).sum(axis=1)
    limit = scores.max() if bound == "max" else scores.min()
    return bool(_squared_distances_to(rows, np.asarray(candidate, np.float64)).sum() <= limit)


def halving_search(
    holds: Callable[[float], bool],
    gamma_init: float = GAMMA_INIT,
    tolerance: float = GAMMA_TOLERANCE,
) -> float:
    """Shejwalkar & Houmansadr's search for the largest gamma that satisfies ``holds``.

    Their Algorithm 1 as released (github.com/vrt1shjwlkr/NDSS21-Model-Poisoning)::

        gamma, gamma_succ, step = gamma_init, 0, gamma_init
        while |gamma_succ - gamma| > tolerance:
            if holds(gamma): gamma_succ = gamma; gamma = gamma + step / 2
            else:            gamma = gamma - step / 2
            step = step / 2
        return gamma_succ

    So gamma starts at 10 and moves by 5, 2.5, ...: a bisection of
    ``[0, 2 * gamma_init]`` that stops when the bracket is at most
    ``2 * tolerance`` wide. ``gamma_succ`` always holds (or is 0, where Min-Max
    and Min-Sum always hold), and when ``gamma_succ < 2 * gamma_init - 2 *
    tolerance``, some tested gamma <= ``gamma_succ + 2 * tolerance`` failed; it
    never exceeds ``2 * gamma_init``.

    Parameters
    ----------
    holds : callable
        ``gamma -> bool``; should be monotone (true up to some gamma, then false).
    gamma_init : float
        The first gamma tried, > 0.
    tolerance : float
        Stop when ``|gamma_succ - gamma| <= tolerance``, > 0.

    Returns
    -------
    float
        ``gamma_succ``, >= 0.
    """
    _check_number(gamma_init, "gamma_init", minimum=0.0, strict=True)
    _check_number(tolerance, "tolerance", minimum=0.0, strict=True)
    gamma, gamma_succ, step = float(gamma_init), 0.0, float(gamma_init)
    while abs(gamma_succ - gamma) > tolerance:
        if holds(gamma):
            gamma_succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return gamma_succ


def min_max_gamma(
    honest_updates: np.ndarray,
    direction: str = "unit",
    *,
    gamma_init: float = GAMMA_INIT,
    tolerance: float = GAMMA_TOLERANCE,
) -> float:
    """The largest gamma (by :func:`halving_search`) with ``min_max_holds(mu - gamma * p)``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    direction : str
        The perturbation, see :func:`perturbation_direction`.
    gamma_init, tolerance : float
        The search's start and tolerance.

    Returns
    -------
    float
        gamma.
    """
    rows = as_update_matrix(honest_updates)
    mu, _ = honest_statistics(rows)
    p = perturbation_direction(rows, direction)
    bound = _pairwise_squared_distances(rows).max()

    def holds(gamma: float) -> bool:
        return bool(_squared_distances_to(rows, mu - gamma * p).max() <= bound)

    return halving_search(holds, gamma_init, tolerance)


def min_sum_gamma(
    honest_updates: np.ndarray,
    direction: str = "unit",
    bound: str = "max",
    *,
    gamma_init: float = GAMMA_INIT,
    tolerance: float = GAMMA_TOLERANCE,
) -> float:
    """The largest gamma (by :func:`halving_search`) with ``min_sum_holds(mu - gamma * p)``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    direction : str
        The perturbation, see :func:`perturbation_direction`.
    bound : str
        "max" or "min", see :func:`min_sum_holds`.
    gamma_init, tolerance : float
        The search's start and tolerance.

    Returns
    -------
    float
        gamma.
    """
    _check_choice(bound, "min-sum-bound", MIN_SUM_BOUNDS)
    rows = as_update_matrix(honest_updates)
    mu, _ = honest_statistics(rows)
    p = perturbation_direction(rows, direction)
    scores = _pairwise_squared_distances(rows).sum(axis=1)
    limit = scores.max() if bound == "max" else scores.min()

    def holds(gamma: float) -> bool:
        return bool(_squared_distances_to(rows, mu - gamma * p).sum() <= limit)

    return halving_search(holds, gamma_init, tolerance)


def min_max(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Min-Max: send ``mu - gamma * p``, as far out as the honest updates' diameter allows.

    Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 (their
    AGR-agnostic Min-Max). gamma from :func:`min_max_gamma`, ``p`` from
    ``params.min_max_direction``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``params.min_max_direction``.

    Returns
    -------
    np.ndarray
        ``mu - gamma * p``.
    """
    rows = as_update_matrix(honest_updates)
    direction = context.params.min_max_direction
    gamma = min_max_gamma(rows, direction)
    mu, _ = honest_statistics(rows)
    return _output(mu - gamma * perturbation_direction(rows, direction), honest_updates)


def min_sum(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Min-Sum: send ``mu - gamma * p`` with a bounded sum of squared distances.

    Shejwalkar & Houmansadr, NDSS 2021 (AGR-agnostic Min-Sum). gamma from
    :func:`min_sum_gamma` with ``params.min_sum_bound``; ``p`` from
    ``params.min_max_direction``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``params.min_max_direction`` and ``params.min_sum_bound``.

    Returns
    -------
    np.ndarray
        ``mu - gamma * p``.
    """
    rows = as_update_matrix(honest_updates)
    direction = context.params.min_max_direction
    gamma = min_sum_gamma(rows, direction, context.params.min_sum_bound)
    mu, _ = honest_statistics(rows)
    return _output(mu - gamma * perturbation_direction(rows, direction), honest_updates)


def non_finite(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
    """Send ``mu`` with NaN or +Inf in ``ceil(fraction * d)`` coordinates chosen by ``rng``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        ``rng``, ``params.non_finite_value`` ("nan" or "inf") and
        ``params.non_finite_fraction`` (1.0 = every coordinate).

    Returns
    -------
    np.ndarray
        The poisoned mean.
    """
    mu, _ = honest_statistics(honest_updates)
    vector = _output(mu, honest_updates).copy()
    count = min(vector.size, math.ceil(context.params.non_finite_fraction * vector.size))
    positions = context.rng.choice(vector.size, size=count, replace=False)
    vector[positions] = np.nan if context.params.non_finite_value == "nan" else np.inf
    return vector


def tailored(rule: str) -> VectorAttack:
    """The vector attack ``tailored-<rule>``: Shejwalkar & Houmansadr's AGR-tailored attack.

    Sends ``mu - gamma * p`` (``p`` from ``params.tailored_direction``) with the
    gamma tailored to ``rule``; see :func:`clients.tailored.tailored_vector_attack`
    (imported on the first call: :mod:`clients.tailored` imports this module).

    Parameters
    ----------
    rule : str
        One of :data:`TAILORED_RULE_NAMES`.

    Returns
    -------
    VectorAttack
        The attack.
    """
    if rule not in TAILORED_RULE_NAMES:
        raise ValueError(f"unknown tailored rule {rule!r}; use one of {TAILORED_RULE_NAMES}")

    def attack(honest_updates: np.ndarray, context: AttackContext) -> np.ndarray:
        from clients.tailored import tailored_vector_attack  # here: it imports this module

        return tailored_vector_attack(honest_updates, context, rule)

    attack.__name__ = attack.__qualname__ = f"tailored_{rule}"
    attack.__doc__ = f"The AGR-tailored attack on {rule} (see :func:`tailored`)."
    return attack


VECTOR_ATTACKS: dict[str, VectorAttack] = {
    "none": no_attack,
    "sign-flip": sign_flip,
    "gaussian": gaussian,
    "alie": alie,
    "ipm": ipm,
    "mimic": mimic,
    "min-max": min_max,
    "min-sum": min_sum,
    "non-finite": non_finite,
    **{f"tailored-{rule}": tailored(rule) for rule in TAILORED_RULE_NAMES},
}


def get_vector_attack(name: str) -> VectorAttack:
    """Return a registered vector attack, or import ``package.module:function``.

    Parameters
    ----------
    name : str
        A key of :data:`VECTOR_ATTACKS` or a dotted path.

    Returns
    -------
    VectorAttack
        The attack function.

    Raises
    ------
    ValueError
        Unknown name, or a dotted path that cannot be imported; the message says
        what to change.
    """
    return resolve_plugin(name, VECTOR_ATTACKS, "attack")


def attack_kind(name: str) -> AttackKind:
    """Whether an attack acts on the update ("vector"), the data ("data") or the reply ("reply").

    Under threat-model "omniscient" only "vector" attacks are crafted by the
    server-side wrapper; "data" (label-flip) and "reply" (malformed) attacks
    always act at the node.

    Parameters
    ----------
    name : str
        An attack name or dotted path (not checked here).

    Returns
    -------
    str
        "vector", "data" or "reply".
    """
    if name in DATA_ATTACKS:
        return "data"
    if name in REPLY_ATTACKS:
        return "reply"
    return "vector"


def all_attack_names() -> tuple[str, ...]:
    """Every built-in attack name: the vector, data and reply attacks."""
    return (*VECTOR_ATTACKS, *sorted(DATA_ATTACKS), *sorted(REPLY_ATTACKS))


def check_attack_name(name: str) -> None:
    """Fail with a message listing the valid names unless ``name`` is usable.

    Built-in names pass; a dotted path is imported (so that a typo fails when
    the run starts, not in round 1).

    Parameters
    ----------
    name : str
        An attack name or dotted path.
    """
    if not isinstance(name, str):
        raise ValueError(f"an attack name must be a string, got {name!r}")
    if name in DATA_ATTACKS or name in REPLY_ATTACKS or name in VECTOR_ATTACKS:
        return
    if not is_dotted_path(name):
        raise ValueError(
            f"unknown attack {name!r} in run-config 'attack': use one of "
            f"{', '.join(all_attack_names())}, a dotted path 'package.module:function' to "
            "your own, or several of these separated by commas"
        )
    get_vector_attack(name)


def parse_attack_names(text: str) -> tuple[str, ...]:
    """Split run-config ``attack`` at commas: ``"alie, ipm"`` -> ``("alie", "ipm")``.

    Parameters
    ----------
    text : str
        One name or dotted path, or several separated by commas.

    Returns
    -------
    tuple of str
        The stripped names (not validated here).
    """
    names = tuple(part.strip() for part in text.split(","))
    if any(not name for name in names):
        raise ValueError(
            f"run-config 'attack' = {text!r} has an empty entry; write one name, e.g. "
            '"gaussian", or names separated by single commas, e.g. "alie,ipm"'
        )
    return names


def apply_vector_attack(
    attack: VectorAttack, honest_updates: np.ndarray, context: AttackContext
) -> np.ndarray:
    """Run a vector attack and check what it returns.

    Parameters
    ----------
    attack : VectorAttack
        The attack.
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        The context.

    Returns
    -------
    np.ndarray
        The attack vector, shape ``(d,)``.

    Raises
    ------
    ValueError
        The attack returned something other than a numeric vector of shape ``(d,)``.
    """
    rows = np.asarray(honest_updates)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"honest updates must have shape (h, d) with h >= 1, got {rows.shape}")
    vector = np.asarray(attack(rows, context))
    if vector.shape != (rows.shape[1],):
        raise ValueError(
            f"attack {getattr(attack, '__name__', attack)!r} returned shape {vector.shape}, "
            f"expected ({rows.shape[1]},): a vector attack returns one update"
        )
    if not (np.issubdtype(vector.dtype, np.floating) or np.issubdtype(vector.dtype, np.integer)):
        raise ValueError(f"attack returned dtype {vector.dtype}, expected floating point")
    return vector


# --- validation helpers -------------------------------------------------------


def _is_number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
    )


def _check_number(
    value: object, key: str, *, minimum: float | None = None, strict: bool = False, hint: str = ""
) -> None:
    ok = _is_number(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum  # type: ignore[operator]
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{key} must be a finite number{bound}{extra}, got {value!r}")


def _check_integer(value: object, key: str, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} ({hint}), got {value!r}")


def _check_choice(value: object, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; set it to one of {', '.join(choices)}")

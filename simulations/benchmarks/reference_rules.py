"""Aggregation rules as pure functions on a stack of flat updates, for standalone studies.

Every rule has the signature ``rule(updates, num_byzantine, validation) -> aggregate``:
``updates`` is a float64 array of shape ``(k, d)``, ``num_byzantine`` the ``f`` the rule
is told, ``validation`` the server's trusted update (``(d,)``) or None, and the result a
``(d,)`` aggregate. Rules that have no use for the validation update ignore it.

Flower's rules are Flower's own code where it works on arrays (``trim_mean`` of
FedTrimmedAvg, ``aggregate_n_closest_weights`` of Bulyan) and otherwise the same
formula (Krum's score as in ``select_multikrum``, from ``clients.tailored``, whose
attacks simulate the same rules). The geometric median and NNM with
the trimmed mean are the references of ByzFL (Allouah et al., 2023; Farhadkhani et
al., 2022), written here from their definitions.
"""

from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from numpy.typing import NDArray

from clients.tailored import multikrum_selection
from dstar_flwr.aggregation import dstar_aggregate
from simulations.baselines.fltrust import fltrust_aggregate

Rule = Callable[[NDArray[np.float64], int, NDArray[np.float64] | None], NDArray[np.float64]]


def mean_rule(updates: NDArray[np.float64], num_byzantine: int, validation: object) -> NDArray:
    """The plain mean (FedAvg with equal example counts)."""
    return updates.mean(axis=0)


def median_rule(updates: NDArray[np.float64], num_byzantine: int, validation: object) -> NDArray:
    """The coordinate-wise median (FedMedian)."""
    return np.median(updates, axis=0)


def trimmed_mean_rule(
    updates: NDArray[np.float64], num_byzantine: int, validation: object
) -> NDArray:
    """FedTrimmedAvg with ``beta = f / k`` cut from each end of every coordinate."""
    return np.asarray(trim_mean(updates, num_byzantine / len(updates)))


def krum_rule(updates: NDArray[np.float64], num_byzantine: int, validation: object) -> NDArray:
    """Krum: the one update with the lowest score."""
    return updates[multikrum_selection(updates, num_byzantine, 1)[0]].copy()


def multikrum_rule(updates: NDArray[np.float64], num_byzantine: int, validation: object) -> NDArray:
    """MultiKrum: the mean of the ``k - f`` updates with the lowest scores."""
    keep = len(updates) - num_byzantine
    return updates[multikrum_selection(updates, num_byzantine, keep)].mean(axis=0)


def bulyan_rule(updates: NDArray[np.float64], num_byzantine: int, validation: object) -> NDArray:
    """Bulyan as Flower runs it: MultiKrum picks ``k - 2f``, then per coordinate the
    mean of the ``k - 4f`` values closest to their median. Needs ``k >= 4f + 3``;
    below that, Flower's strategy skips the round: here that is an all-NaN result,
    which the studies report as "skips"."""
    num_updates = len(updates)
    if num_updates < 4 * num_byzantine + 3:
        return np.full(updates.shape[1], np.nan)
    theta = num_updates - 2 * num_byzantine
    beta = theta - 2 * num_byzantine
    selected = updates[multikrum_selection(updates, num_byzantine, theta)]
    median = np.median(selected, axis=0)
    return np.asarray(aggregate_n_closest_weights([median], [[row] for row in selected], beta)[0])


def fltrust_rule(
    updates: NDArray[np.float64], num_byzantine: int, validation: NDArray[np.float64] | None
) -> NDArray:
    """FLTrust with the validation update as its root update (plain mean without one)."""
    if validation is None:
        return updates.mean(axis=0)
    return fltrust_aggregate(list(updates), validation)[0]


def geometric_median_rule(
    updates: NDArray[np.float64],
    num_byzantine: int,
    validation: object,
    iterations: int = 200,
    tolerance: float = 1e-8,
) -> NDArray:
    """The geometric median by smoothed Weiszfeld iterations (ByzFL's GeoMed)."""
    estimate = np.median(updates, axis=0)
    for _ in range(iterations):
        distances = np.maximum(np.linalg.norm(updates - estimate, axis=1), 1e-12)
        weights = 1.0 / distances
        following = weights @ updates / weights.sum()
        moved = np.linalg.norm(following - estimate)
        estimate = following
        if moved <= tolerance * (1.0 + np.linalg.norm(estimate)):
            break
    return estimate


def nnm_trimmed_mean_rule(
    updates: NDArray[np.float64], num_byzantine: int, validation: object
) -> NDArray:
    """Nearest-neighbour mixing, then the trimmed mean (ByzFL's NNM + TrMean).

    Each update is replaced by the mean of its ``k - f`` nearest updates (itself
    included); the mixed updates are averaged coordinate-wise with the ``f``
    largest and smallest values of each coordinate dropped.
    """
    num_updates = len(updates)
    norms = np.einsum("ij,ij->i", updates, updates)
    squared = norms[:, None] + norms[None, :] - 2 * updates @ updates.T
    nearest = np.argsort(squared, axis=1, kind="stable")[:, : num_updates - num_byzantine]
    mixed = updates[nearest].mean(axis=1)
    ordered = np.sort(mixed, axis=0)
    return ordered[num_byzantine : num_updates - num_byzantine].mean(axis=0)


def dstar_rule(
    updates: NDArray[np.float64],
    num_byzantine: int,
    validation: NDArray[np.float64] | None,
    **rule_kwargs: object,
) -> NDArray:
    """dSTAR (``dstar_flwr.dstar_aggregate``) with the given settings."""
    return dstar_aggregate(
        list(updates), num_byzantine=num_byzantine, validation=validation, **rule_kwargs
    ).aggregate.astype(np.float64)


def dstar_variant(*, use_validation: bool = True, **rule_kwargs: object) -> Rule:
    """A dSTAR rule with fixed settings, e.g. ``dstar_variant(variant="paper")``.

    ``use_validation=False``: the server has no validation update (it is ignored).
    """
    rule = partial(dstar_rule, **rule_kwargs)
    if use_validation:
        return rule

    def without_validation(updates: NDArray[np.float64], num_byzantine: int, _: object) -> NDArray:
        return rule(updates, num_byzantine, None)

    return without_validation


REFERENCE_RULES: Mapping[str, Rule] = {
    "dstar": dstar_variant(),
    "dstar-paper": dstar_variant(variant="paper"),
    "dstar-no-validation": dstar_variant(use_validation=False),
    "dstar-paper-no-validation": dstar_variant(variant="paper", use_validation=False),
    "dstar-no-norm-test": dstar_variant(norm_test=False),
    "dstar-z2.5": dstar_variant(max_robust_z=2.5),
    "dstar-z4": dstar_variant(max_robust_z=4.0),
    "mean": mean_rule,
    "median": median_rule,
    "trimmed-mean": trimmed_mean_rule,
    "krum": krum_rule,
    "multikrum": multikrum_rule,
    "bulyan": bulyan_rule,
    "fltrust": fltrust_rule,
    "geometric-median": geometric_median_rule,
    "nnm-trimmed-mean": nnm_trimmed_mean_rule,
}

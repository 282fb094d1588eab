"""Rule-tailored ("AGR-tailored") attacks: the attacker knows the aggregation rule.

Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Section IV-B.
The attacker knows the honest updates ``x_1 .. x_h`` (rows of an ``(h, d)``
array), their mean ``mu`` and population std ``sigma`` (as in
:mod:`clients.attack_vectors`), the number ``f >= 1`` of Byzantine vectors it
sends, and the rule. It sends ``f`` identical vectors

    ``x_m(gamma) = mu - gamma * p``,

``p`` from :func:`clients.attack_vectors.perturbation_direction` (``unit``:
``mu/||mu||``, ``sign``: ``sign(mu)``, ``std``: ``sigma``; the sent vector moves
along ``-p``, as Min-Max's does), and picks ``gamma >= 0`` for the rule by
simulating it on the ``f + h`` updates ``[f copies of x_m(gamma)] + rows``, the
copies first. Under the client threat model the rows are the node's own
estimate sample, so the rule is simulated on ``f + m`` updates, not on ``n``.

Two kinds of rule (:data:`RULES`):

- *selection rules* (``dstar``, ``krum``, ``multikrum``, ``bulyan``,
  ``fltrust``): gamma is the largest one whose copies the rule still accepts
  or selects, found by :func:`bracket_search`: from 10, doubled while
  accepted (the cap :data:`TAILORED_GAMMA_MAX` = 1e6 is returned when even it
  is accepted), else a geometric scan for an accepted gamma (the accepted set
  need not start at 0), then bisection to ``1e-5``; 0 when nothing is accepted;
- *objective rules* (``fedmedian``, ``fedtrimmedavg``): they select nothing, so
  gamma maximises the aggregate's shift along ``-p`` away from ``mu``,
  ``<mu - agg, p> / ||p||`` (the paper's objective ``||agg(attack) -
  benign||`` measured along the attack's direction): the smallest gamma with
  the largest shift, or the cap when the shift grows without bound (the rule
  keeps some copies); see :func:`plateau_search`.

The criterion of each rule:

- ``dstar``: every copy is in ``dstar_aggregate(updates, num_byzantine=f,
  validation=v, **rule_kwargs).accepted`` (:func:`dstar_accepts`). The attacker
  does not see the server's validation update: it draws ``S`` surrogates ``v ~
  N(mu, diag(sigma^2))`` (:func:`surrogate_updates`, ``S = 5`` by default,
  seeded) and counts a candidate accepted when it is accepted under at least
  ``quorum`` of them (default: a majority, ``S // 2 + 1``);
- ``krum``: a copy is the update Flower's Krum selects, ``argsort(scores)[:1]``
  with Flower's scores (:func:`krum_scores`, :func:`krum_selects`);
- ``multikrum``: all copies are among the ``m`` MultiKrum selects, ``m = k - f``
  by default (what ``simulations.app.experiment`` configures; Flower's own default
  of 1 is Krum), :func:`multikrum_selects`;
- ``bulyan``: all copies are among the ``theta = k - 2f`` updates that the
  selection stage of Flower's message-API ``Bulyan`` keeps: its default
  ``select_multikrum`` with ``num_nodes_to_select = theta``, one MultiKrum
  ranking (not the iterated Krum of the paper and of Flower's legacy
  ``aggregate_bulyan``); needs ``k >= 4f + 3`` (:func:`bulyan_selects`);
- ``fltrust``: FLTrust's trust ``ReLU(cos(x_m, g0)) > 0`` (:func:`fltrust_trust`),
  with surrogate root updates ``g0`` drawn like DStar's (FLTrust's root update
  is unknown to the attacker), under at least ``quorum`` of them
  (:func:`fltrust_accepts`);
- ``fedmedian``: Flower's coordinate-wise median (``np.median``), objective
  :func:`median_deviation`;
- ``fedtrimmedavg``: Flower's trimmed mean, ``int(beta * k)`` values cut at each
  end of every coordinate; ``beta = None`` cuts exactly ``f`` (``beta = f / k``),
  objective :func:`trimmed_mean_deviation`.

:func:`tailored_gamma` and :func:`tailored_attack` are the entry points;
:func:`tailored_vector_attack` adapts them to the vector-attack interface of
:mod:`clients.attack_vectors` (attacks ``tailored-<rule>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from clients.attack_vectors import (
    GAMMA_INIT,
    GAMMA_TOLERANCE,
    PERTURBATION_DIRECTIONS,
    AttackContext,
    _check_choice,
    _output,
    as_update_matrix,
    honest_statistics,
    perturbation_direction,
)
from dstar_flwr.aggregation import dstar_aggregate

TAILORED_GAMMA_MAX = 1e6
DEFAULT_SURROGATES = 5
# bracket_search's scan for a feasible gamma: successive gammas differ by this factor.
SCAN_RATIO = 2.0**0.25
# Relative slack when the objective search compares two deviations (rounding).
DEVIATION_RTOL = 1e-12

RuleKind = Literal["selection", "objective"]

# --- surrogates and quorums ----------------------------------------------------


def surrogate_updates(
    honest_updates: np.ndarray, num_surrogates: int = DEFAULT_SURROGATES, seed: int = 0
) -> np.ndarray:
    """The attacker's stand-ins for a server-side update: ``S`` draws of ``N(mu, diag(sigma^2))``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    num_surrogates : int
        S >= 1.
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    np.ndarray
        Shape ``(S, d)``, float64; rows equal ``mu`` where ``sigma = 0``.
    """
    _check_count(num_surrogates, "num_surrogates", minimum=1)
    mu, sigma = honest_statistics(honest_updates)
    return np.random.default_rng(seed).normal(mu, sigma, size=(num_surrogates, mu.size))


def majority_quorum(num_surrogates: int) -> int:
    """The default quorum: a strict majority of ``S`` surrogates, ``S // 2 + 1``."""
    _check_count(num_surrogates, "num_surrogates", minimum=1)
    return num_surrogates // 2 + 1


def _resolve_quorum(quorum: int | None, num_surrogates: int) -> int:
    if quorum is None or quorum == 0:
        return majority_quorum(num_surrogates)
    _check_count(quorum, "quorum", minimum=1)
    if quorum > num_surrogates:
        raise ValueError(f"quorum must be at most the {num_surrogates} surrogates, got {quorum}")
    return int(quorum)


def _quorum_holds(
    accepts: Callable[[np.ndarray], bool], surrogates: np.ndarray, quorum: int
) -> bool:
    """Whether ``accepts(v)`` holds for at least ``quorum`` rows ``v`` (stops early)."""
    yes, left = 0, len(surrogates)
    for surrogate in surrogates:
        yes += bool(accepts(surrogate))
        left -= 1
        if yes >= quorum:
            return True
        if yes + left < quorum:
            return False
    return yes >= quorum


def _with_copies(candidate: np.ndarray, honest: np.ndarray, num_byzantine: int) -> np.ndarray:
    """The ``(f + h, d)`` float64 stack ``[f copies of candidate] + honest rows``."""
    rows = as_update_matrix(honest)
    vector = np.asarray(candidate, dtype=np.float64)
    if vector.shape != (rows.shape[1],):
        raise ValueError(f"candidate has shape {vector.shape}, the honest rows ({rows.shape[1]},)")
    _check_count(num_byzantine, "num_byzantine (f)", minimum=1)
    return np.concatenate([np.broadcast_to(vector, (num_byzantine, vector.size)), rows])


# --- selection rules -----------------------------------------------------------


def dstar_accepts(
    candidate: np.ndarray,
    honest_updates: np.ndarray,
    num_byzantine: int,
    surrogates: np.ndarray,
    *,
    quorum: int | None = None,
    **rule_kwargs: Any,
) -> bool:
    """Whether DStar accepts all ``f`` copies under at least ``quorum`` surrogate validations.

    Per surrogate ``v``: ``dstar_aggregate([f copies] + honest, num_byzantine=f,
    validation=v, **rule_kwargs)`` and every copy index ``0 .. f-1`` in
    ``.accepted``. The server's own validation update is never an input.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    honest_updates : np.ndarray
        Shape ``(h, d)``; ``h >= f + 1`` (DStar needs ``k >= 2f + 1``).
    num_byzantine : int
        f >= 1, the copies sent and DStar's ``num_byzantine``.
    surrogates : np.ndarray
        Shape ``(S, d)``, see :func:`surrogate_updates`.
    quorum : int, optional
        Acceptances needed; None or 0: :func:`majority_quorum`.
    **rule_kwargs
        Passed to :func:`dstar_flwr.aggregation.dstar_aggregate` (any setting
        but ``validation`` and ``num_byzantine``).

    Returns
    -------
    bool
        Whether the copies are accepted under the quorum.
    """
    _check_dstar_kwargs(rule_kwargs)
    stack = _with_copies(candidate, honest_updates, num_byzantine)
    if stack.shape[0] < 2 * num_byzantine + 1:
        raise ValueError(
            f"tailored dstar simulates DStar on f + h updates and needs h >= f + 1 honest rows "
            f"(k >= 2f + 1), got h = {stack.shape[0] - num_byzantine} for f = {num_byzantine}; "
            "under threat-model 'client' raise attack-estimation-batches"
        )
    updates = list(stack)
    copies = set(range(num_byzantine))

    def accepts(validation: np.ndarray) -> bool:
        result = dstar_aggregate(
            updates, num_byzantine=num_byzantine, validation=validation, **rule_kwargs
        )
        return copies.issubset(result.accepted)

    surrogates = np.atleast_2d(np.asarray(surrogates, dtype=np.float64))
    return _quorum_holds(accepts, surrogates, _resolve_quorum(quorum, len(surrogates)))


def fltrust_trust(update: np.ndarray, root_update: np.ndarray) -> float:
    """FLTrust's trust score ``ReLU(cos(u, g0))`` (0 for a zero ``u`` or ``g0``).

    Parameters
    ----------
    update, root_update : np.ndarray
        ``u`` and ``g0``, shape ``(d,)``.

    Returns
    -------
    float
        The score in ``[0, 1]``, as ``simulations.baselines.fltrust.fltrust_aggregate``
        computes it.
    """
    u = np.asarray(update, dtype=np.float64)
    g0 = np.asarray(root_update, dtype=np.float64)
    norms = float(np.linalg.norm(u)) * float(np.linalg.norm(g0))
    return 0.0 if norms == 0.0 else max(0.0, min(1.0, float(np.dot(u, g0)) / norms))


def fltrust_accepts(
    candidate: np.ndarray, surrogates: np.ndarray, *, quorum: int | None = None
) -> bool:
    """Whether ``fltrust_trust(candidate, g0) > 0`` for at least ``quorum`` surrogate ``g0``.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    surrogates : np.ndarray
        Surrogate root updates, shape ``(S, d)``.
    quorum : int, optional
        Acceptances needed; None or 0: :func:`majority_quorum`.

    Returns
    -------
    bool
        Whether the candidate gets positive trust under the quorum.
    """
    surrogates = np.atleast_2d(np.asarray(surrogates, dtype=np.float64))
    return _quorum_holds(
        lambda root: fltrust_trust(candidate, root) > 0.0,
        surrogates,
        _resolve_quorum(quorum, len(surrogates)),
    )


def krum_scores(updates: np.ndarray, num_byzantine: int) -> np.ndarray:
    """Krum's scores exactly as Flower's ``select_multikrum`` computes them.

    Squared distances ``||x_i||^2 + ||x_j||^2 - 2 x_i . x_j``; each score is the
    sum of the squared distances to the ``max(1, k - f - 2)`` nearest others
    (``argsort(row)[1 : n + 1]``, the first entry taken to be the update itself).

    Parameters
    ----------
    updates : np.ndarray
        Shape ``(k, d)``.
    num_byzantine : int
        f, Krum's ``num_malicious_nodes``.

    Returns
    -------
    np.ndarray
        Shape ``(k,)``, float64.
    """
    rows = as_update_matrix(updates)
    norms = np.square(rows).sum(axis=1)
    distances = norms[:, None] + norms[None, :] - 2 * rows @ rows.T
    num_closest = max(1, len(rows) - num_byzantine - 2)
    return np.array(
        [np.sum(row[np.argsort(row)[1 : num_closest + 1]]) for row in distances],
        dtype=np.float64,
    )


def multikrum_selection(updates: np.ndarray, num_byzantine: int, num_selected: int) -> np.ndarray:
    """The indices Flower's ``select_multikrum`` keeps: ``argsort(scores)[:m]``.

    Parameters
    ----------
    updates : np.ndarray
        Shape ``(k, d)``.
    num_byzantine : int
        f.
    num_selected : int
        m >= 1 (1 = Krum).

    Returns
    -------
    np.ndarray
        The selected indices, best score first.
    """
    _check_count(num_selected, "num_selected", minimum=1)
    return np.argsort(krum_scores(updates, num_byzantine))[:num_selected]


def multikrum_selects(
    candidate: np.ndarray,
    honest_updates: np.ndarray,
    num_byzantine: int,
    *,
    num_selected: int | None = None,
) -> bool:
    """Whether MultiKrum keeps all ``f`` copies among the ``m`` updates it selects.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    num_byzantine : int
        f >= 1, the copies and MultiKrum's ``num_malicious_nodes``.
    num_selected : int, optional
        m; None: ``k - f`` (``k = f + h``), as ``simulations.app.experiment`` sets
        ``num_nodes_to_select`` (Flower's own default, 1, is Krum).

    Returns
    -------
    bool
        Whether every copy is selected.
    """
    stack = _with_copies(candidate, honest_updates, num_byzantine)
    m = len(stack) - num_byzantine if num_selected is None else num_selected
    selected = multikrum_selection(stack, num_byzantine, m)
    return set(range(num_byzantine)).issubset(selected.tolist())


def krum_selects(candidate: np.ndarray, honest_updates: np.ndarray, num_byzantine: int) -> bool:
    """Whether Krum (MultiKrum with ``m = 1``) selects one of the ``f`` copies.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    num_byzantine : int
        f >= 1.

    Returns
    -------
    bool
        Whether the update Krum returns is the attacker's.
    """
    stack = _with_copies(candidate, honest_updates, num_byzantine)
    return int(multikrum_selection(stack, num_byzantine, 1)[0]) < num_byzantine


def bulyan_selects(candidate: np.ndarray, honest_updates: np.ndarray, num_byzantine: int) -> bool:
    """Whether Bulyan's selection stage keeps all ``f`` copies.

    Flower's message-API ``Bulyan`` (``flwr.serverapp.strategy``, what the
    experiments run) selects ``theta = k - 2f`` updates with its default
    selection rule ``select_multikrum(contents, f, theta)``; the coordinate-wise
    stage then averages the ``theta - 2f`` values closest to the median of those.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    honest_updates : np.ndarray
        Shape ``(h, d)``, ``h >= 3f + 3`` (Bulyan needs ``k >= 4f + 3``).
    num_byzantine : int
        f >= 1.

    Returns
    -------
    bool
        Whether every copy is among the ``theta`` selected.
    """
    stack = _with_copies(candidate, honest_updates, num_byzantine)
    if len(stack) < 4 * num_byzantine + 3:
        raise ValueError(
            f"tailored bulyan simulates Bulyan on f + h updates and needs h >= 3f + 3 honest "
            f"rows (k >= 4f + 3), got h = {len(stack) - num_byzantine} for f = {num_byzantine}; "
            "under threat-model 'client' raise attack-estimation-batches"
        )
    theta = len(stack) - 2 * num_byzantine
    return multikrum_selects(candidate, honest_updates, num_byzantine, num_selected=theta)


# --- objective rules -----------------------------------------------------------


def aggregate_shift(aggregate: np.ndarray, mu: np.ndarray, direction: np.ndarray) -> float:
    """How far ``aggregate`` lies from ``mu`` along ``-p``: ``<mu - aggregate, p> / ||p||``.

    Parameters
    ----------
    aggregate, mu, direction : np.ndarray
        Shape ``(d,)``; ``direction`` is ``p``.

    Returns
    -------
    float
        The shift (0 when ``p = 0``).
    """
    p = np.asarray(direction, dtype=np.float64)
    norm = float(np.linalg.norm(p))
    if norm == 0.0:
        return 0.0
    return float(np.dot(np.asarray(mu, np.float64) - np.asarray(aggregate, np.float64), p)) / norm


def trim_count(num_updates: int, num_byzantine: int, beta: float | None = None) -> int:
    """Values FedTrimmedAvg cuts at each end: ``int(beta * k)`` as Flower computes it, or ``f``.

    Parameters
    ----------
    num_updates : int
        k.
    num_byzantine : int
        f, cut when ``beta`` is None (``beta = f / k`` without rounding).
    beta : float, optional
        Flower's ``beta`` (``proportiontocut``), in ``[0, 0.5)``.

    Returns
    -------
    int
        The cut per end, ``2 * cut < k``.
    """
    if beta is None:
        cut = int(num_byzantine)
    else:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"FedTrimmedAvg's beta must be in [0, 0.5), got {beta!r}")
        cut = int(beta * num_updates)
    if 2 * cut >= num_updates:
        raise ValueError(
            f"a trimmed mean of k = {num_updates} updates cannot cut {cut} at each end; "
            "lower beta or f"
        )
    return cut


def trimmed_mean(updates: np.ndarray, cut: int) -> np.ndarray:
    """Coordinate-wise mean of the values left after cutting ``cut`` at each end (Flower's)."""
    rows = as_update_matrix(updates)
    upper = len(rows) - cut
    ordered = np.partition(rows, (cut, upper - 1), axis=0)
    return ordered[cut:upper].mean(axis=0)


def median_deviation(
    candidate: np.ndarray, honest_updates: np.ndarray, num_byzantine: int, direction: np.ndarray
) -> float:
    """FedMedian's objective: :func:`aggregate_shift` of ``np.median([f copies] + honest)``.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    num_byzantine : int
        f >= 1.
    direction : np.ndarray
        ``p``.

    Returns
    -------
    float
        The median's shift from ``mu`` along ``-p``.
    """
    stack = _with_copies(candidate, honest_updates, num_byzantine)
    mu, _ = honest_statistics(honest_updates)
    return aggregate_shift(np.median(stack, axis=0), mu, direction)


def trimmed_mean_deviation(
    candidate: np.ndarray,
    honest_updates: np.ndarray,
    num_byzantine: int,
    direction: np.ndarray,
    *,
    beta: float | None = None,
) -> float:
    """FedTrimmedAvg's objective: :func:`aggregate_shift` of the trimmed mean.

    Parameters
    ----------
    candidate : np.ndarray
        ``x_m``, shape ``(d,)``.
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    num_byzantine : int
        f >= 1.
    direction : np.ndarray
        ``p``.
    beta : float, optional
        See :func:`trim_count` (None: cut ``f`` at each end).

    Returns
    -------
    float
        The trimmed mean's shift from ``mu`` along ``-p``.
    """
    stack = _with_copies(candidate, honest_updates, num_byzantine)
    mu, _ = honest_statistics(honest_updates)
    cut = trim_count(len(stack), num_byzantine, beta)
    return aggregate_shift(trimmed_mean(stack, cut), mu, direction)


# --- searches ------------------------------------------------------------------


def bracket_search(
    holds: Callable[[float], bool],
    gamma_init: float = GAMMA_INIT,
    tolerance: float = GAMMA_TOLERANCE,
    gamma_max: float = TAILORED_GAMMA_MAX,
) -> float:
    """The upper end of a feasible interval of ``holds`` in ``[0, gamma_max]``.

    Shejwalkar & Houmansadr's halving search
    (:func:`clients.attack_vectors.halving_search`) assumes a feasible set
    ``[0, b]``. Here it may also be unbounded, or an interval ``[a, b]`` with
    ``a > 0``: DStar's norm test, for one, rejects ``mu`` (it is shorter than
    the honest updates) and accepts copies only once gamma has lengthened them.
    The search:

    1. tries ``gamma_init``; while it holds, doubles it (at most to
       ``gamma_max``, which is returned, the cap, when it holds);
    2. if ``gamma_init`` fails, scans downwards, ``gamma_init / r^j`` with
       ``r = 2^(1/4)`` while above ``tolerance``, then 0, and stops at the
       first gamma that holds; if none does, scans upwards from
       ``gamma_init * r`` to ``gamma_max`` and continues as in 1 from the
       first one that holds;
    3. bisects the bracket ``[lo, hi]`` (``lo`` holds, ``hi`` was tried and
       failed) until ``hi - lo <= tolerance``, and returns ``lo``.

    With a feasible set ``[0, b]``, ``b >= gamma_init``, it tries 10, 20, ...
    then bisects, as the halving search does within ``[0, 20]``. A feasible
    interval narrower than the scan's ratio (about 19 %) can be missed. When
    nothing tried holds it returns 0 (the attack then sends ``mu``, which the
    rule rejects too). Otherwise ``holds(result)``, and a tried gamma in
    ``(result, result + tolerance]`` failed, unless ``result = gamma_max``.

    Parameters
    ----------
    holds : callable
        ``gamma -> bool``, true on one interval (or a few far apart).
    gamma_init : float
        The first gamma, > 0.
    tolerance : float
        The final bracket width, > 0.
    gamma_max : float
        The cap, > 0.

    Returns
    -------
    float
        gamma in ``[0, gamma_max]``.
    """
    settings = {"gamma_init": gamma_init, "tolerance": tolerance, "gamma_max": gamma_max}
    for name, value in settings.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    start = min(float(gamma_init), float(gamma_max))
    if holds(start):
        lo = start
    else:
        below = [*_geometric(start, tolerance, 1.0 / SCAN_RATIO), 0.0]
        above = _geometric(start * SCAN_RATIO, float(gamma_max), SCAN_RATIO)
        previous = start
        for gamma in below:
            if holds(gamma):
                return _bisect(holds, gamma, previous, tolerance)
            previous = gamma
        lo = next((gamma for gamma in above if holds(gamma)), -1.0)
        if lo < 0:
            return 0.0
    while lo < gamma_max:
        gamma = min(2.0 * lo, float(gamma_max))
        if not holds(gamma):
            return _bisect(holds, lo, gamma, tolerance)
        lo = gamma
    return float(gamma_max)


def _geometric(first: float, last: float, ratio: float) -> list[float]:
    """``first, first * ratio, ...`` while not past ``last`` (``last`` included at the top)."""
    values, gamma = [], first
    while (gamma >= last) if ratio < 1 else (gamma < last):
        values.append(gamma)
        gamma *= ratio
    if ratio > 1 and first <= last:
        values.append(last)
    return values


def _bisect(holds: Callable[[float], bool], lo: float, hi: float, tolerance: float) -> float:
    """Shrink ``[lo, hi]`` (``lo`` holds, ``hi`` fails) to ``tolerance``; return ``lo``."""
    while hi - lo > tolerance:
        middle = (lo + hi) / 2.0
        if holds(middle):
            lo = middle
        else:
            hi = middle
    return lo


def plateau_search(
    deviation: Callable[[float], float],
    gamma_far: float,
    tolerance: float = GAMMA_TOLERANCE,
    gamma_max: float = TAILORED_GAMMA_MAX,
    slack: float = 0.0,
) -> float:
    """The smallest gamma at which a non-decreasing ``deviation`` reaches its maximum.

    For FedMedian and FedTrimmedAvg the aggregate of ``[f copies of mu - gamma
    * p] + rows`` is, in each coordinate, an average of order statistics, and
    every order statistic is non-decreasing in each input; the copies move
    monotonically along ``-p``, so the shift :func:`aggregate_shift` is
    non-decreasing in gamma. Once the copies lie beyond every honest value in
    every coordinate where ``p != 0`` (``gamma >= gamma_far / 2``, see
    :func:`far_gamma`) the order no longer changes: either the shift is then
    constant (the rule discards or outvotes the copies: a plateau, the
    maximum), or it grows without bound (the copies are kept: then the cap
    ``gamma_max`` is returned). On a plateau, bisection finds the smallest gamma
    whose shift is within ``slack`` of the maximum, to ``tolerance``: every
    larger gamma moves the aggregate as far and only makes the copies more
    conspicuous.

    Parameters
    ----------
    deviation : callable
        ``gamma -> shift``, non-decreasing.
    gamma_far : float
        A gamma on the plateau, if there is one, >= 0.
    tolerance : float
        The final bracket width, > 0.
    gamma_max : float
        The cap, > 0.
    slack : float
        Rounding allowance when shifts are compared, >= 0.

    Returns
    -------
    float
        gamma in ``[0, gamma_max]``; ``deviation(gamma) >= max - slack``.
    """
    if gamma_far <= 0.0:
        return 0.0
    if gamma_far >= gamma_max:  # no plateau confirmed below the cap, whose shift is largest
        return float(gamma_max)
    far = deviation(gamma_far)
    if deviation(min(2.0 * gamma_far, gamma_max)) > far + slack:  # no plateau at all
        return float(gamma_max)
    target = far - slack
    if deviation(0.0) >= target:
        return 0.0
    lo, hi = 0.0, float(gamma_far)
    while hi - lo > tolerance:
        middle = (lo + hi) / 2.0
        if deviation(middle) >= target:
            hi = middle
        else:
            lo = middle
    return hi


def far_gamma(honest_updates: np.ndarray, direction: np.ndarray, tolerance: float) -> float:
    """Twice the gamma beyond which ``mu - gamma * p`` is outside the honest range everywhere.

    ``2 * max_j max_i |x_ij - mu_j| / |p_j|`` over coordinates with ``p_j != 0``,
    plus ``tolerance``; 0 when ``p = 0``.
    """
    rows = as_update_matrix(honest_updates)
    p = np.asarray(direction, dtype=np.float64)
    moving = p != 0
    if not moving.any():
        return 0.0
    mu = rows.mean(axis=0)
    reach = np.abs(rows[:, moving] - mu[moving]).max(axis=0) / np.abs(p[moving])
    return 2.0 * float(reach.max()) + tolerance


# --- the registry --------------------------------------------------------------


@dataclass(frozen=True)
class TailoredProblem:
    """One search's fixed inputs: the honest rows, f, ``mu``, ``p`` and the surrogates.

    Attributes
    ----------
    honest : np.ndarray
        The rows, float64 ``(h, d)``.
    num_byzantine : int
        f >= 1.
    mu : np.ndarray
        Their mean.
    direction : np.ndarray
        ``p``.
    surrogates : np.ndarray
        ``(S, d)`` surrogate server updates (``(0, d)`` for rules without).
    quorum : int
        Surrogate acceptances needed.
    rule_kwargs : Mapping[str, Any]
        The rule's settings.
    """

    honest: np.ndarray
    num_byzantine: int
    mu: np.ndarray
    direction: np.ndarray
    surrogates: np.ndarray
    quorum: int
    rule_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def candidate(self, gamma: float) -> np.ndarray:
        """``mu - gamma * p``."""
        return self.mu - gamma * self.direction


@dataclass(frozen=True)
class TailoredRule:
    """A rule the attack can be tailored to.

    Attributes
    ----------
    kind : str
        "selection" (``criterion`` returns whether the copies are accepted) or
        "objective" (it returns the shift to maximise).
    criterion : callable
        ``(candidate, problem) -> bool | float``.
    uses_surrogates : bool
        Whether the rule needs surrogate server updates.
    keywords : frozenset of str or None
        The ``rule_kwargs`` it takes (None: any, passed on to the rule).
    """

    kind: RuleKind
    criterion: Callable[[np.ndarray, TailoredProblem], Any]
    uses_surrogates: bool = False
    keywords: frozenset[str] | None = frozenset()


RULES: dict[str, TailoredRule] = {
    "dstar": TailoredRule(
        "selection",
        lambda x, q: dstar_accepts(
            x, q.honest, q.num_byzantine, q.surrogates, quorum=q.quorum, **q.rule_kwargs
        ),
        uses_surrogates=True,
        keywords=None,
    ),
    "fedmedian": TailoredRule(
        "objective", lambda x, q: median_deviation(x, q.honest, q.num_byzantine, q.direction)
    ),
    "fedtrimmedavg": TailoredRule(
        "objective",
        lambda x, q: trimmed_mean_deviation(
            x, q.honest, q.num_byzantine, q.direction, **q.rule_kwargs
        ),
        keywords=frozenset({"beta"}),
    ),
    "krum": TailoredRule("selection", lambda x, q: krum_selects(x, q.honest, q.num_byzantine)),
    "multikrum": TailoredRule(
        "selection",
        lambda x, q: multikrum_selects(x, q.honest, q.num_byzantine, **q.rule_kwargs),
        keywords=frozenset({"num_selected"}),
    ),
    "bulyan": TailoredRule("selection", lambda x, q: bulyan_selects(x, q.honest, q.num_byzantine)),
    "fltrust": TailoredRule(
        "selection",
        lambda x, q: fltrust_accepts(x, q.surrogates, quorum=q.quorum),
        uses_surrogates=True,
    ),
}
TAILORED_RULES: tuple[str, ...] = tuple(RULES)


def tailored_problem(
    honest_updates: np.ndarray,
    num_byzantine: int,
    rule: str,
    direction: str = "unit",
    *,
    num_surrogates: int = DEFAULT_SURROGATES,
    quorum: int = 0,
    seed: int = 0,
    **rule_kwargs: Any,
) -> TailoredProblem:
    """Check the inputs and fix what one search needs (the surrogates are drawn here).

    Parameters
    ----------
    honest_updates, num_byzantine, rule, direction, num_surrogates, quorum, seed, **rule_kwargs
        As in :func:`tailored_gamma`.

    Returns
    -------
    TailoredProblem
        The search's inputs.
    """
    _check_choice(rule, "tailored rule", TAILORED_RULES)
    _check_choice(direction, "tailored-direction", PERTURBATION_DIRECTIONS)
    _check_count(num_byzantine, "num_byzantine (f)", minimum=1)
    spec = RULES[rule]
    if rule == "dstar":
        _check_dstar_kwargs(rule_kwargs)
    elif spec.keywords is not None and set(rule_kwargs) - spec.keywords:
        unknown = ", ".join(sorted(set(rule_kwargs) - spec.keywords))
        allowed = ", ".join(sorted(spec.keywords)) or "none"
        raise ValueError(f"tailored {rule} takes no setting {unknown} (settings: {allowed})")
    rows = as_update_matrix(honest_updates)
    mu, _ = honest_statistics(rows)
    surrogates = (
        surrogate_updates(rows, num_surrogates, seed)
        if spec.uses_surrogates
        else np.empty((0, rows.shape[1]))
    )
    return TailoredProblem(
        honest=rows,
        num_byzantine=int(num_byzantine),
        mu=mu,
        direction=perturbation_direction(rows, direction),
        surrogates=surrogates,
        quorum=_resolve_quorum(quorum, num_surrogates),
        rule_kwargs=dict(rule_kwargs),
    )


def tailored_gamma(
    honest_updates: np.ndarray,
    num_byzantine: int,
    rule: str,
    direction: str = "unit",
    *,
    num_surrogates: int = DEFAULT_SURROGATES,
    quorum: int = 0,
    seed: int = 0,
    gamma_init: float = GAMMA_INIT,
    tolerance: float = GAMMA_TOLERANCE,
    gamma_max: float = TAILORED_GAMMA_MAX,
    **rule_kwargs: Any,
) -> float:
    """The gamma of the attack ``mu - gamma * p`` tailored to ``rule``.

    Selection rules: the largest gamma whose ``f`` copies the rule accepts
    (:func:`bracket_search`). Objective rules: the smallest gamma with the
    largest shift of the aggregate along ``-p`` (:func:`plateau_search`). See
    the module docstring for each rule's criterion. There is deliberately no
    parameter for the server's validation (or root) update: DStar and FLTrust
    are simulated with surrogates drawn from ``N(mu, diag(sigma^2))``.

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    num_byzantine : int
        f >= 1, the identical vectors sent (and the rules' Byzantine bound).
    rule : str
        One of :data:`TAILORED_RULES`.
    direction : str
        ``p``: "unit", "sign" or "std" (:func:`perturbation_direction`).
    num_surrogates : int
        S >= 1, surrogate server updates (``dstar``, ``fltrust``).
    quorum : int
        Surrogates under which the copies must be accepted; 0: a majority.
    seed : int
        Seed of the surrogates.
    gamma_init, tolerance : float
        Start and precision of the search (10 and ``1e-5``, as the paper's).
    gamma_max : float
        The cap, returned when even it is accepted (selection rules) or when
        the copies' effect grows without bound (objective rules).
    **rule_kwargs
        ``dstar``: any keyword of ``dstar_aggregate`` but ``validation`` and
        ``num_byzantine``; ``fedtrimmedavg``: ``beta`` (None: cut f);
        ``multikrum``: ``num_selected`` (None: ``k - f``); others: none.

    Returns
    -------
    float
        gamma in ``[0, gamma_max]``.
    """
    problem = tailored_problem(
        honest_updates,
        num_byzantine,
        rule,
        direction,
        num_surrogates=num_surrogates,
        quorum=quorum,
        seed=seed,
        **rule_kwargs,
    )
    spec = RULES[rule]
    if spec.kind == "selection":
        return bracket_search(
            lambda gamma: bool(spec.criterion(problem.candidate(gamma), problem)),
            gamma_init,
            tolerance,
            gamma_max,
        )

    def deviation(gamma: float) -> float:
        return float(spec.criterion(problem.candidate(gamma), problem))

    gamma_far = far_gamma(problem.honest, problem.direction, tolerance)
    return plateau_search(deviation, gamma_far, tolerance, gamma_max, _shift_slack(problem))


def tailored_attack(
    honest_updates: np.ndarray,
    num_byzantine: int,
    rule: str,
    direction: str = "unit",
    **options: Any,
) -> np.ndarray:
    """The vector ``mu - gamma * p`` with gamma from :func:`tailored_gamma`.

    Parameters
    ----------
    honest_updates, num_byzantine, rule, direction
        As in :func:`tailored_gamma`.
    **options
        Its keyword arguments (search settings and ``rule_kwargs``).

    Returns
    -------
    np.ndarray
        Shape ``(d,)``, the rows' float dtype (float32 at least).
    """
    rows = as_update_matrix(honest_updates)
    gamma = tailored_gamma(rows, num_byzantine, rule, direction, **options)
    mu, _ = honest_statistics(rows)
    return _output(mu - gamma * perturbation_direction(rows, direction), honest_updates)


def surrogate_seed(honest_updates: np.ndarray) -> int:
    """A seed from the honest rows' mean: equal rows give equal surrogates.

    Every Byzantine node that sees the same rows (the omniscient adversary's
    ``f`` calls in a round) thus draws the same surrogates and sends the same
    vector, as the attack assumes, without sharing any state.
    """
    mu, _ = honest_statistics(honest_updates)
    digest = hashlib.blake2b(np.ascontiguousarray(mu).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def tailored_vector_attack(
    honest_updates: np.ndarray, context: AttackContext, rule: str
) -> np.ndarray:
    """The ``tailored-<rule>`` vector attack: :func:`tailored_attack`, run-config settings.

    ``f = context.num_byzantine``; ``params.tailored_direction``,
    ``tailored_surrogates`` and ``tailored_quorum``; for ``fedtrimmedavg``
    ``beta = params.tailored_trim_beta`` (0: cut f). The surrogates are seeded
    by :func:`surrogate_seed`, not by ``context.rng``. DStar runs with the
    server's settings (:meth:`AttackParams.dstar_rule_kwargs`); the other rules
    with their defaults (MultiKrum: ``m = k - f``).

    Parameters
    ----------
    honest_updates : np.ndarray
        Shape ``(h, d)``.
    context : AttackContext
        f and the parameters.
    rule : str
        One of :data:`TAILORED_RULES`.

    Returns
    -------
    np.ndarray
        The attack vector.
    """
    params = context.params
    rule_kwargs: dict[str, Any] = {}
    if rule == "fedtrimmedavg":
        rule_kwargs["beta"] = params.tailored_trim_beta or None
    if rule == "dstar":
        rule_kwargs.update(params.dstar_rule_kwargs())
    return tailored_attack(
        honest_updates,
        context.num_byzantine,
        rule,
        params.tailored_direction,
        num_surrogates=params.tailored_surrogates,
        quorum=params.tailored_quorum,
        seed=surrogate_seed(honest_updates),
        **rule_kwargs,
    )


def _shift_slack(problem: TailoredProblem) -> float:
    """Rounding allowance for shifts: ``DEVIATION_RTOL`` x a bound on their terms' sum."""
    p = np.abs(problem.direction)
    norm = float(np.linalg.norm(p))
    if norm == 0.0:
        return 0.0
    spread = np.abs(problem.honest - problem.mu).max(axis=0)
    return DEVIATION_RTOL * float(spread @ p) / norm


# --- checks --------------------------------------------------------------------


def _check_dstar_kwargs(rule_kwargs: Mapping[str, Any]) -> None:
    if "validation" in rule_kwargs:
        raise ValueError(
            "tailored dstar never sees the server's validation update: it draws surrogates "
            "(num_surrogates, seed); drop 'validation'"
        )
    if "num_byzantine" in rule_kwargs:
        raise ValueError("tailored dstar passes num_byzantine = f itself; drop it")


def _check_count(value: object, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

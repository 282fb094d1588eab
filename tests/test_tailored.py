"""Rule-tailored attacks: each gamma checked against the rule itself, run independently.

Selection rules (DStar, Krum, MultiKrum, Bulyan, FLTrust): the gamma found is
accepted and ``gamma + GAMMA_TOLERANCE`` is not, both checked with the rule as
the server runs it (``dstar_aggregate``, Flower's ``select_multikrum``,
``fltrust_aggregate``). Objective rules (FedMedian, FedTrimmedAvg): the shift
of Flower's aggregate at the gamma found is at least that of every gamma on a
check grid, and ``gamma - GAMMA_TOLERANCE`` shifts it less.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

import clients.tailored as tailored
from clients.attack_vectors import (
    GAMMA_TOLERANCE,
    TAILORED_RULE_NAMES,
    VECTOR_ATTACKS,
    AttackContext,
    AttackParams,
    apply_vector_attack,
    honest_statistics,
    perturbation_direction,
)
from clients.tailored import (
    TAILORED_GAMMA_MAX,
    TAILORED_RULES,
    bracket_search,
    fltrust_trust,
    multikrum_selection,
    plateau_search,
    surrogate_updates,
    tailored_attack,
    tailored_gamma,
)
from dstar_flwr.aggregation import dstar_aggregate
from simulations.baselines.fltrust import fltrust_aggregate
from tests.node_support import run_config

H, D, SEED = 12, 200, 0
DIRECTIONS = ("unit", "sign", "std")


def honest_rows(seed: int = 1) -> np.ndarray:
    """Updates sharing a common direction (as FL updates do) plus per-node noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=D) + rng.normal(0.0, 0.3, size=(H, D))


HONEST = honest_rows()


def with_copies(candidate: np.ndarray, f: int) -> list[np.ndarray]:
    return [candidate.copy() for _ in range(f)] + list(HONEST)


def candidate(gamma: float, direction: str) -> np.ndarray:
    mu, _ = honest_statistics(HONEST)
    return mu - gamma * perturbation_direction(HONEST, direction)


def flower_selects(updates: list[np.ndarray], f: int, m: int) -> set[int]:
    contents = [
        RecordDict({"arrays": ArrayRecord({"w": Array(u)}), "metrics": MetricRecord({"i": i})})
        for i, u in enumerate(updates)
    ]
    return {int(c["metrics"]["i"]) for c in select_multikrum(contents, f, m)}  # type: ignore[index]


def accepted(rule: str, vector: np.ndarray, f: int) -> bool:
    """The rule's verdict on f copies of ``vector``, run as the server runs it."""
    updates = with_copies(vector, f)
    copies = set(range(f))
    k = len(updates)
    if rule in ("dstar", "fltrust"):
        votes = 0
        for surrogate in surrogate_updates(HONEST, 5, SEED):
            if rule == "dstar":
                result = dstar_aggregate(updates, num_byzantine=f, validation=surrogate)
                votes += copies <= set(result.accepted)
            else:
                votes += fltrust_aggregate([vector], surrogate)[1][0] > 0
        return votes >= 3
    if rule == "krum":
        return bool(flower_selects(updates, f, 1) & copies)
    if rule == "multikrum":
        return copies <= flower_selects(updates, f, k - f)
    assert rule == "bulyan"
    return copies <= flower_selects(updates, f, k - 2 * f)


SELECTION_CASES = [
    (rule, direction, f)
    for rule in ("dstar", "krum", "multikrum", "bulyan", "fltrust")
    for direction in DIRECTIONS
    for f in (3, 5)
    if not (rule == "bulyan" and f == 5)  # Bulyan needs k = 17 >= 4f + 3 = 23
]


@pytest.mark.parametrize(("rule", "direction", "f"), SELECTION_CASES)
def test_selection_rules_find_the_last_accepted_gamma(rule: str, direction: str, f: int) -> None:
    gamma = tailored_gamma(HONEST, f, rule, direction, seed=SEED)
    assert 0.0 <= gamma <= TAILORED_GAMMA_MAX
    assert accepted(rule, candidate(gamma, direction), f)
    if gamma < TAILORED_GAMMA_MAX:
        assert not accepted(rule, candidate(gamma + GAMMA_TOLERANCE, direction), f)


def test_bulyan_needs_4f_plus_3_updates_and_dstar_2f_plus_1() -> None:
    with pytest.raises(ValueError, match=r"needs h >= 3f \+ 3 honest rows.*h = 12 for f = 5"):
        tailored_gamma(HONEST, 5, "bulyan")
    with pytest.raises(ValueError, match=r"needs h >= f \+ 1 honest rows.*h = 3 for f = 3"):
        tailored_gamma(HONEST[:3], 3, "dstar")


def test_fltrust_accepting_every_gamma_returns_the_cap() -> None:
    # Surrogates g0 with <sigma, g0> < 0: cos(mu - gamma * sigma, g0) > 0 for every gamma.
    rows = -np.abs(HONEST)
    assert tailored_gamma(rows, 3, "fltrust", "std") == TAILORED_GAMMA_MAX
    assert tailored_gamma(rows, 3, "fltrust", "std", gamma_max=50.0) == 50.0


def flower_shift(rule: str, vector: np.ndarray, f: int, beta: float | None, p: np.ndarray) -> float:
    """<mu - agg, p> / ||p|| with Flower's own median and trimmed mean."""
    stack = np.stack(with_copies(vector, f))
    if rule == "fedmedian":
        aggregate = np.median(stack, axis=0)
    else:
        fraction = f / len(stack) if beta is None else beta
        if beta is None and int(fraction * len(stack)) < f:
            fraction = float(np.nextafter(fraction, 1.0))  # beta = None cuts exactly f
        aggregate = trim_mean(stack, fraction)
    return float(np.dot(HONEST.mean(axis=0) - aggregate, p)) / float(np.linalg.norm(p))


OBJECTIVE_CASES = [
    (rule, direction, f, beta)
    for rule, beta in (("fedmedian", None), ("fedtrimmedavg", None), ("fedtrimmedavg", 0.2))
    for direction in DIRECTIONS
    for f in (3, 5)
    if not (beta == 0.2 and f == 5)  # int(0.2 * 17) = 3 < 5 cut: no plateau (test below)
]


@pytest.mark.parametrize(("rule", "direction", "f", "beta"), OBJECTIVE_CASES)
def test_objective_rules_reach_the_largest_shift(
    rule: str, direction: str, f: int, beta: float | None
) -> None:
    kwargs = {"beta": beta} if rule == "fedtrimmedavg" else {}
    gamma = tailored_gamma(HONEST, f, rule, direction, **kwargs)
    p = perturbation_direction(HONEST, direction)

    def shift(g: float) -> float:
        return flower_shift(rule, candidate(g, direction), f, beta, p)

    assert 0.0 < gamma < TAILORED_GAMMA_MAX
    found = shift(gamma)
    grid = np.concatenate([np.linspace(0.0, 3.0 * gamma, 301), gamma * np.geomspace(1e-3, 1e3, 61)])
    best = max(shift(g) for g in grid)
    assert found >= best - 1e-10 * max(1.0, abs(best))  # rounding only
    assert shift(gamma - GAMMA_TOLERANCE) < best  # and gamma is the smallest such


def test_trimmed_mean_matches_flower() -> None:
    stack = np.stack(with_copies(candidate(1.0, "std"), 3))
    cut = 3
    np.testing.assert_allclose(tailored.trimmed_mean(stack, cut), trim_mean(stack, 3 / 15))
    assert tailored.trim_count(15, 3) == 3 and tailored.trim_count(17, 5, 0.2) == 3
    with pytest.raises(ValueError, match="cannot cut"):
        tailored.trim_count(6, 3)


@pytest.mark.parametrize(
    ("rule", "beta", "f"), [("fedtrimmedavg", 0.2, 5), ("fedmedian", None, 12)]
)
def test_objective_without_a_plateau_returns_the_cap(rule: str, beta: float | None, f: int) -> None:
    # Trimming 3 per end keeps 2 of 5 copies; 12 copies of 24 hold the median: the shift
    # grows with gamma without bound.
    kwargs = {"beta": beta} if rule == "fedtrimmedavg" else {}
    assert tailored_gamma(HONEST, f, rule, "std", **kwargs) == TAILORED_GAMMA_MAX


def test_bracket_search_edge_cases() -> None:
    tol = GAMMA_TOLERANCE
    assert 3.3 - tol <= bracket_search(lambda g: g <= 3.3) <= 3.3  # monotone [0, b]
    assert bracket_search(lambda g: g <= 3e-6) <= tol  # the feasible set starts (and ends) at 0
    assert bracket_search(lambda g: g <= 0.0) == 0.0
    assert bracket_search(lambda g: False) == 0.0  # nothing accepted: send mu
    assert bracket_search(lambda g: True) == TAILORED_GAMMA_MAX  # the cap
    assert bracket_search(lambda g: g <= 5e7) == TAILORED_GAMMA_MAX
    assert 1e4 - tol <= bracket_search(lambda g: g <= 1e4) <= 1e4  # beyond 2 * gamma_init
    assert 1.21 - tol <= bracket_search(lambda g: 0.97 <= g <= 1.21) <= 1.21  # [a, b], a > 0
    assert 70 - tol <= bracket_search(lambda g: 50 <= g <= 70) <= 70  # above gamma_init
    tried: list[float] = []
    bracket_search(lambda g: tried.append(g) or g <= 15.0)  # type: ignore[func-returns-value]
    assert tried[:3] == [10.0, 20.0, 15.0]  # as the halving search: 10, then bisect [10, 20]
    with pytest.raises(ValueError, match="tolerance must be a finite number > 0"):
        bracket_search(lambda g: True, tolerance=0.0)


def test_plateau_search_finds_where_the_maximum_starts() -> None:
    def ramp(g: float) -> float:
        return min(g, 2.5)

    assert 2.5 <= plateau_search(ramp, 10.0) <= 2.5 + GAMMA_TOLERANCE
    assert plateau_search(lambda g: g, 10.0) == TAILORED_GAMMA_MAX  # no plateau
    assert plateau_search(lambda g: 1.0, 10.0) == 0.0  # flat: gamma 0 is as good
    assert plateau_search(ramp, 0.0) == 0.0  # p = 0


def test_krum_selection_matches_flower() -> None:
    rows = np.random.default_rng(3).normal(size=(11, 30))
    for f, m in ((2, 1), (2, 9), (3, 5)):
        assert set(multikrum_selection(rows, f, m).tolist()) == flower_selects(list(rows), f, m)


def test_fltrust_trust_matches_fltrust_aggregate() -> None:
    rng = np.random.default_rng(4)
    updates = [rng.normal(size=20) for _ in range(6)] + [np.zeros(20)]
    root = rng.normal(size=20)
    _, trust = fltrust_aggregate(updates, root)
    np.testing.assert_allclose([fltrust_trust(u, root) for u in updates], trust)


def test_dstar_attack_never_sees_the_validation_update(monkeypatch: pytest.MonkeyPatch) -> None:
    for function in (tailored_gamma, tailored_attack, tailored.dstar_accepts):
        assert "validation" not in inspect.signature(function).parameters
    with pytest.raises(ValueError, match="never sees the server's validation update"):
        tailored_gamma(HONEST, 3, "dstar", validation=HONEST[0])
    seen: list[np.ndarray] = []

    def spy(updates, *, num_byzantine, validation=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(np.array(validation))
        return dstar_aggregate(
            updates, num_byzantine=num_byzantine, validation=validation, **kwargs
        )

    monkeypatch.setattr(tailored, "dstar_aggregate", spy)
    tailored_gamma(HONEST, 3, "dstar", "std", seed=7)
    surrogates = surrogate_updates(HONEST, 5, 7)
    assert seen and all(any(np.array_equal(v, s) for s in surrogates) for v in seen)
    mu, sigma = honest_statistics(HONEST)
    assert np.abs((surrogates - mu) / sigma).max() < 6  # draws of N(mu, diag(sigma^2))


def test_dstar_rule_settings_are_passed_through() -> None:
    if "max_robust_z" not in inspect.signature(dstar_aggregate).parameters:
        pytest.skip("dstar_aggregate has no max_robust_z setting")
    default = tailored_gamma(HONEST, 3, "dstar", "std")
    stricter = tailored_gamma(HONEST, 3, "dstar", "std", max_robust_z=1.0)
    assert stricter < default
    with pytest.raises(ValueError, match="takes no setting beta"):
        tailored_gamma(HONEST, 3, "krum", beta=0.1)


def test_surrogates_quorum() -> None:
    assert tailored.majority_quorum(5) == 3 and tailored.majority_quorum(4) == 3
    one = tailored_gamma(HONEST, 3, "dstar", "std", quorum=1)
    all_five = tailored_gamma(HONEST, 3, "dstar", "std", quorum=5)
    assert one >= tailored_gamma(HONEST, 3, "dstar", "std") >= all_five
    with pytest.raises(ValueError, match="quorum must be at most the 5 surrogates"):
        tailored_gamma(HONEST, 3, "dstar", quorum=6)


def test_registry_and_registered_attacks() -> None:
    assert TAILORED_RULES == TAILORED_RULE_NAMES
    rows = HONEST.astype(np.float32)
    params = AttackParams(
        attacks=("tailored-krum",), threat_model="omniscient", tailored_direction="sign"
    )
    context = AttackContext(15, 3, np.random.default_rng(0), params)
    out = apply_vector_attack(VECTOR_ATTACKS["tailored-krum"], rows, context)
    assert out.dtype == np.float32
    expected = tailored_attack(rows, 3, "krum", "sign", seed=tailored.surrogate_seed(rows))
    np.testing.assert_array_equal(out, expected)
    # Colluders that see the same rows send the same vector (surrogates seeded by the rows).
    for rule in TAILORED_RULES:
        attack = VECTOR_ATTACKS[f"tailored-{rule}"]
        first = attack(rows, AttackContext(15, 3, np.random.default_rng(1), params))
        second = attack(rows, AttackContext(15, 3, np.random.default_rng(2), params))
        np.testing.assert_array_equal(first, second)


def test_registered_trimmed_mean_attack_uses_the_trim_beta() -> None:
    params = AttackParams(attacks=("tailored-fedtrimmedavg",), threat_model="omniscient")
    context = AttackContext(15, 3, np.random.default_rng(0), params)
    out = VECTOR_ATTACKS["tailored-fedtrimmedavg"](HONEST, context)
    np.testing.assert_allclose(out, tailored_attack(HONEST, 3, "fedtrimmedavg", beta=0.2))


def test_registered_dstar_attack_simulates_the_servers_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The adversary knows the rule and its settings: tailored-dstar runs DStar with
    # the run config's dstar-variant, max-robust-z, ... (here the paper's reading).
    config = run_config(
        attack="tailored-dstar",
        threat_model="omniscient",
        dstar_variant="paper",
        threshold_factor=3.0,
        norm_test=False,
    )
    params = AttackParams.from_run_config(config)
    assert params.dstar_rule_kwargs() == {
        "variant": "paper",
        "max_robust_z": 3.0,
        "norm_test": False,
        "threshold_factor": 3.0,
        "scale": "median",
        "center": "ensemble",
    }
    seen: list[dict] = []

    def spy(updates, *, num_byzantine, validation=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return dstar_aggregate(
            updates, num_byzantine=num_byzantine, validation=validation, **kwargs
        )

    monkeypatch.setattr(tailored, "dstar_aggregate", spy)
    context = AttackContext(15, 3, np.random.default_rng(0), params)
    apply_vector_attack(VECTOR_ATTACKS["tailored-dstar"], HONEST, context)
    assert seen and all(kwargs["variant"] == "paper" for kwargs in seen)
    assert all(kwargs["threshold_factor"] == 3.0 for kwargs in seen)
    with pytest.raises(ValueError, match="dstar-variant"):
        AttackParams(dstar_variant="median")

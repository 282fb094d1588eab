"""Each vector attack against its published formula, on small hand-made vectors."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from clients.attack_vectors import (
    GAMMA_TOLERANCE,
    VECTOR_ATTACKS,
    AttackContext,
    AttackParams,
    alie,
    alie_z_baruch,
    alie_z_honest_share,
    apply_vector_attack,
    expected_gaussian_norm,
    gaussian,
    get_vector_attack,
    halving_search,
    honest_statistics,
    ipm,
    mimic,
    mimic_index,
    min_max,
    min_max_gamma,
    min_max_holds,
    min_sum,
    min_sum_gamma,
    min_sum_holds,
    no_attack,
    non_finite,
    perturbation_direction,
    sign_flip,
)

# Three honest updates in 3-D: mu = (2, 0, 1), sigma (ddof=0) = (sqrt(2/3), sqrt(8/3), 0).
X = np.array([[1.0, 2.0, 1.0], [2.0, -2.0, 1.0], [3.0, 0.0, 1.0]])
MU = np.array([2.0, 0.0, 1.0])
SIGMA = np.array([math.sqrt(2 / 3), math.sqrt(8 / 3), 0.0])


def context(n: int = 10, f: int = 2, seed: int = 0, **params: object) -> AttackContext:
    return AttackContext(n, f, np.random.default_rng(seed), AttackParams(**params))


def test_statistics_are_mean_and_population_std() -> None:
    mu, sigma = honest_statistics(X)
    np.testing.assert_allclose(mu, MU)
    np.testing.assert_allclose(sigma, SIGMA)
    _, single = honest_statistics(X[:1])
    assert not single.any()  # one row: sigma = 0


def test_registry_names() -> None:
    assert set(VECTOR_ATTACKS) == {
        "none", "sign-flip", "gaussian", "alie", "ipm", "mimic", "min-max", "min-sum",
        "non-finite", "tailored-dstar", "tailored-fedmedian", "tailored-fedtrimmedavg",
        "tailored-krum", "tailored-multikrum", "tailored-bulyan", "tailored-fltrust",
    }  # fmt: skip
    assert get_vector_attack("alie") is alie
    with pytest.raises(ValueError, match="unknown attack 'label-flip'"):
        get_vector_attack("label-flip")  # a data attack, not a vector function


def test_none_is_the_mean_and_keeps_float32() -> None:
    out = no_attack(X.astype(np.float32), context())
    np.testing.assert_array_equal(out, MU)
    assert out.dtype == np.float32


def test_sign_flip() -> None:
    np.testing.assert_allclose(sign_flip(X, context(attack_scale=2.0)), -2.0 * MU)
    own = np.array([[1.0, -2.0, 3.0]])
    np.testing.assert_allclose(sign_flip(own, context()), [-1.0, 2.0, -3.0])


def test_gaussian_fixed_is_n0_scale2() -> None:
    rows = np.full((2, 100_000), 1e6)
    out = gaussian(rows, context(seed=3, attack_scale=0.5))
    expected = np.random.default_rng(3).normal(0.0, 0.5, size=100_000)
    np.testing.assert_allclose(out, expected)
    assert abs(out.std() - 0.5) < 0.01


def test_gaussian_scaled_matches_the_mean_honest_norm() -> None:
    rows = np.zeros((2, 10_000))
    rows[0, 0], rows[1, 1] = 3.0, 5.0  # norms 3 and 5: mean 4
    out = gaussian(rows, context(seed=1, attack_scale=2.0, gaussian_mode="scaled"))
    assert np.linalg.norm(out) == pytest.approx(8.0, rel=0.02)
    std = 2.0 * 4.0 / expected_gaussian_norm(10_000)
    np.testing.assert_allclose(out, np.random.default_rng(1).normal(0.0, std, size=10_000))
    assert expected_gaussian_norm(1) == pytest.approx(math.sqrt(2 / math.pi))
    assert expected_gaussian_norm(2) == pytest.approx(math.sqrt(math.pi / 2))


def test_alie_z_both_formulas_at_20_4() -> None:
    # Baruch et al. 2019, Algorithm 1: s = floor(20/2 + 1) - 4 = 7, z = Phi^-1(13/20).
    assert alie_z_baruch(20, 4) == pytest.approx(0.385320466, abs=1e-8)
    assert alie_z_baruch(20, 4) == pytest.approx(NormalDist().inv_cdf(0.65))
    # Released code (epfml/byzantine-robust-noniid-optimizer): Phi^-1((20 - 4 - 7) / 16).
    assert alie_z_honest_share(20, 4) == pytest.approx(0.157310685, abs=1e-8)
    assert alie_z_honest_share(20, 4) == pytest.approx(NormalDist().inv_cdf(9 / 16))


def test_alie_z_undefined_says_to_set_alie_z() -> None:
    with pytest.raises(ValueError, match="set run-config 'alie-z'"):
        alie_z_baruch(10, 6)  # Byzantine majority: s < 0
    with pytest.raises(ValueError, match="alie-z"):
        alie_z_baruch(2, 0)


def test_alie_formula_with_computed_and_fixed_z() -> None:
    z = alie_z_baruch(20, 4)
    np.testing.assert_allclose(alie(X, context(20, 4)), MU + z * SIGMA)
    np.testing.assert_allclose(alie(X, context(20, 4, alie_z=1.5)), MU + 1.5 * SIGMA)
    np.testing.assert_allclose(alie(X[:1], context(20, 4)), X[0])  # one row: sigma = 0


@pytest.mark.parametrize("epsilon", [0.1, 100.0])
def test_ipm_is_minus_epsilon_mu(epsilon: float) -> None:
    np.testing.assert_allclose(ipm(X, context(ipm_epsilon=epsilon)), -epsilon * MU)


def test_mimic_copies_the_row_farthest_along_the_main_spread() -> None:
    # Rows spread mostly along e_1; row 3 is farthest out along it (centred: -6).
    rows = np.array(
        [[1.0, 0.1, 0.0], [2.0, -0.1, 0.0], [3.0, 0.0, 0.1], [-4.0, 0.0, 0.0], [3.0, 0.0, -0.1]]
    )
    assert mimic_index(rows) == 3
    np.testing.assert_array_equal(mimic(rows, context()), rows[3])
    # The row with the largest norm is not always the one: a big offset along e_2
    # shared by all rows adds no spread.
    shifted = rows + np.array([0.0, 100.0, 0.0])
    shifted[0, 1] += 0.5
    assert mimic_index(shifted) == 3
    assert mimic_index(rows[:1]) == 0 and mimic_index(np.ones((3, 2))) == 0


def test_perturbation_directions() -> None:
    np.testing.assert_allclose(perturbation_direction(X, "unit"), MU / np.linalg.norm(MU))
    np.testing.assert_array_equal(perturbation_direction(X, "sign"), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(perturbation_direction(X, "std"), SIGMA)
    assert not perturbation_direction(np.zeros((2, 3)), "unit").any()


# Honest rows for the Min-Max/Min-Sum searches: spread enough that gamma < 20.
HONEST = np.array(
    [
        [1.0, 0.5, 0.2, -0.3],
        [0.8, 0.9, -0.1, 0.0],
        [1.2, 0.4, 0.3, -0.2],
        [0.9, 0.6, 0.1, 0.4],
        [1.1, 0.2, 0.0, -0.1],
    ]
)


@pytest.mark.parametrize("direction", ["unit", "sign", "std"])
def test_min_max_gamma_is_the_largest_that_holds(direction: str) -> None:
    gamma = min_max_gamma(HONEST, direction)
    mu, _ = honest_statistics(HONEST)
    p = perturbation_direction(HONEST, direction)
    assert 0 < gamma < 19
    assert min_max_holds(HONEST, mu - gamma * p)
    assert not min_max_holds(HONEST, mu - (gamma + 2 * GAMMA_TOLERANCE) * p)
    # The bound: max_i ||x_m - x_i||^2 <= max_{i,j} ||x_i - x_j||^2, checked by hand.
    diameter = max(np.sum((a - b) ** 2) for a in HONEST for b in HONEST)
    farthest = max(np.sum((mu - gamma * p - x) ** 2) for x in HONEST)
    assert farthest <= diameter
    np.testing.assert_allclose(
        min_max(HONEST, context(min_max_direction=direction)), mu - gamma * p
    )


@pytest.mark.parametrize("direction", ["unit", "sign", "std"])
@pytest.mark.parametrize("bound", ["max", "min"])
def test_min_sum_gamma_is_the_largest_that_holds(direction: str, bound: str) -> None:
    gamma = min_sum_gamma(HONEST, direction, bound)
    mu, _ = honest_statistics(HONEST)
    p = perturbation_direction(HONEST, direction)
    assert 0 < gamma < 19
    assert min_sum_holds(HONEST, mu - gamma * p, bound)
    assert not min_sum_holds(HONEST, mu - (gamma + 2 * GAMMA_TOLERANCE) * p, bound)
    scores = [sum(np.sum((a - b) ** 2) for b in HONEST) for a in HONEST]
    total = sum(np.sum((mu - gamma * p - x) ** 2) for x in HONEST)
    assert total <= (max(scores) if bound == "max" else min(scores))
    out = min_sum(HONEST, context(min_max_direction=direction, min_sum_bound=bound))
    np.testing.assert_allclose(out, mu - gamma * p)


def test_min_sum_min_bound_is_stricter() -> None:
    assert min_sum_gamma(HONEST, "unit", "min") < min_sum_gamma(HONEST, "unit", "max")


def test_halving_search_follows_shejwalkar_updates() -> None:
    tried: list[float] = []

    def holds(gamma: float) -> bool:
        tried.append(gamma)
        return gamma <= 3.3

    gamma = halving_search(holds)
    assert tried[:4] == [10.0, 5.0, 2.5, 3.75]  # start 10, then -5, -2.5, +1.25
    assert 3.3 - 2 * GAMMA_TOLERANCE <= gamma <= 3.3
    assert halving_search(lambda g: True) == pytest.approx(20.0, abs=2e-5)  # never above 2 x 10
    assert halving_search(lambda g: False) == 0.0


def test_min_max_with_one_row_sends_it() -> None:
    # One row: diameter 0, so gamma stays 0 and the attacker sends its own update.
    np.testing.assert_allclose(min_max(X[:1], context()), X[0])


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize(("fraction", "count"), [(1.0, 10), (0.25, 3), (0.01, 1)])
def test_non_finite_fraction(value: str, fraction: float, count: int) -> None:
    rows = np.arange(20.0).reshape(2, 10)
    out = non_finite(rows, context(seed=5, non_finite_value=value, non_finite_fraction=fraction))
    bad = ~np.isfinite(out)
    assert bad.sum() == count  # ceil(fraction * d)
    assert np.isnan(out[bad]).all() if value == "nan" else np.isposinf(out[bad]).all()
    np.testing.assert_array_equal(out[~bad], rows.mean(axis=0)[~bad])


def test_every_attack_returns_one_vector_of_the_rows_dtype() -> None:
    # 12 rows: tailored-bulyan simulates Bulyan on f + h >= 4f + 3 updates.
    rows = np.random.default_rng(0).normal(size=(12, 7)).astype(np.float32)
    for name, attack in VECTOR_ATTACKS.items():
        out = apply_vector_attack(attack, rows, context(14, 2))
        assert out.shape == (7,), name
        assert out.dtype == np.float32, name


def test_apply_vector_attack_checks_the_shape() -> None:
    with pytest.raises(ValueError, match=r"returned shape \(2,\), expected \(3,\)"):
        apply_vector_attack(lambda rows, ctx: rows[0, :2], X, context())


def test_context_checks_n_and_f() -> None:
    with pytest.raises(ValueError, match="num_byzantine <= num_nodes"):
        context(3, 4)

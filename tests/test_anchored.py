"""The anchored dSTAR filter (the default): regressions for the paper's reading's holes."""

import numpy as np
import pytest

from dstar_flwr.aggregation import dstar_aggregate, qn_scale, robust_spread


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _round(num_updates: int, num_byzantine: int, seed: int, dimension: int = 1000):
    """Honest updates N(mu, I) with per-coordinate SNR 1, and a validation update."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(dimension)
    honest = mu + rng.standard_normal((num_updates - num_byzantine, dimension))
    validation = mu + rng.standard_normal(dimension)
    return honest, validation


@pytest.mark.parametrize("variant", ["anchored", "paper"])
def test_colluding_cluster_of_reversed_means(variant: str) -> None:
    # k = 15, f = 7: seven identical copies of -(honest mean). The paper's reading
    # accepts all seven plus one honest update (the copies drag the coordinate
    # median to themselves and the k - f cap keeps the smallest deviations).
    honest, validation = _round(15, 7, seed=3)
    honest_mean = honest.mean(axis=0)
    updates = [*np.tile(-honest_mean, (7, 1)), *honest]
    result = dstar_aggregate(updates, num_byzantine=7, validation=validation, variant=variant)  # type: ignore[arg-type]
    cosine = _cosine(result.aggregate, honest_mean)
    if variant == "paper":
        assert set(range(7)) <= set(result.accepted) and cosine < -0.9
    else:
        assert set(range(7)) <= set(result.rejected)
        assert len(result.accepted) >= 7  # of the 8 honest updates
        assert cosine > 0.99


def _largest_accepted_step(honest, validation, num_byzantine, **rule):
    """The largest step along -(honest mean) at which f copies are all accepted.

    The attacker here is stronger than any real one: it even knows the server's
    validation update. Bisection over [0, 20 ||mu_hat||].
    """
    honest_mean = honest.mean(axis=0)
    direction = honest_mean / np.linalg.norm(honest_mean)

    def accepted(step: float) -> bool:
        copies = np.tile(honest_mean - step * direction, (num_byzantine, 1))
        result = dstar_aggregate(
            [*copies, *honest], num_byzantine=num_byzantine, validation=validation, **rule
        )
        return set(range(num_byzantine)) <= set(result.accepted)

    low, high = 0.0, 20.0 * float(np.linalg.norm(honest_mean))
    if accepted(high):
        return high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if accepted(middle) else (low, middle)
    return low


@pytest.mark.parametrize(("num_updates", "num_byzantine"), [(15, 7), (20, 9)])
def test_largest_accepted_step_along_the_reversed_mean_does_not_reverse(
    num_updates: int, num_byzantine: int
) -> None:
    honest, validation = _round(num_updates, num_byzantine, seed=num_updates)
    honest_mean = honest.mean(axis=0)
    cosines = {}
    for variant in ("paper", "anchored"):
        step = _largest_accepted_step(honest, validation, num_byzantine, variant=variant)
        direction = honest_mean / np.linalg.norm(honest_mean)
        copies = np.tile(honest_mean - step * direction, (num_byzantine, 1))
        result = dstar_aggregate(
            [*copies, *honest], num_byzantine=num_byzantine, validation=validation, variant=variant
        )
        cosines[variant] = _cosine(result.aggregate, honest_mean)
    assert cosines["paper"] < 0  # the hole: the aggregate is reversed
    assert cosines["anchored"] > 0.9


@pytest.mark.parametrize("variant", ["anchored", "paper"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_zero_scale_still_accepts_an_update_one_rounding_error_away(
    variant: str, dtype: type
) -> None:
    # Bit-identical updates (and validation update): the deviations' scale is 0.
    # An update one rounding error, or 1e-30, away is not an outlier.
    for same in (np.zeros(8, dtype=dtype), np.ones(8, dtype=dtype)):
        nudged = same.copy()
        nudged[0] = np.nextafter(same[0], dtype(2)) if same[0] else dtype(1e-30)
        assert nudged[0] != same[0]
        for validation in (None, same):
            result = dstar_aggregate(
                [same] * 4 + [nudged],
                num_byzantine=0,
                validation=validation,
                variant=variant,  # type: ignore[arg-type]
            )
            assert 4 in result.accepted, (same, validation, result)


def test_no_attack_accepts_almost_every_honest_update() -> None:
    # No k - f cap: the squared error stays near the plain mean's (the paper's
    # reading drops f honest updates every round).
    errors = {"anchored": [], "paper": [], "mean": []}
    accepted = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        mu = rng.standard_normal(1000)
        honest = mu + rng.standard_normal((20, 1000))
        validation = mu + rng.standard_normal(1000)
        for variant in ("anchored", "paper"):
            result = dstar_aggregate(
                list(honest), num_byzantine=8, validation=validation, variant=variant
            )  # type: ignore[arg-type]
            errors[variant].append(np.sum((result.aggregate - mu) ** 2))
            if variant == "anchored":
                accepted += len(result.accepted)
        errors["mean"].append(np.sum((honest.mean(axis=0) - mu) ** 2))
    assert accepted >= 0.97 * 200
    assert np.mean(errors["anchored"]) <= 1.1 * np.mean(errors["mean"])
    assert np.mean(errors["paper"]) > 1.5 * np.mean(errors["mean"])


def test_at_least_half_is_accepted() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        count = int(rng.integers(3, 16))
        updates = list(rng.standard_normal((count, 30)) * rng.uniform(0.1, 10, size=(count, 1)))
        result = dstar_aggregate(updates, num_byzantine=(count - 1) // 2, norm_test=False)
        assert len(result.accepted) >= (count + 1) // 2


def test_a_norm_outlier_is_rejected() -> None:
    # Close to the validation update, but far shorter than any honest update:
    # a reversed honest mean scaled down so that its distance to v passes.
    honest, validation = _round(20, 8, seed=11)
    honest_mean = honest.mean(axis=0)
    # 0.05 mu_hat: as close to v as an honest update, but far shorter.
    short = 0.05 * honest_mean
    updates = [*np.tile(short, (8, 1)), *honest]
    without = dstar_aggregate(updates, num_byzantine=8, validation=validation, norm_test=False)
    with_test = dstar_aggregate(updates, num_byzantine=8, validation=validation)
    assert set(range(8)) <= set(without.accepted)
    assert set(range(8)) <= set(with_test.rejected)


def test_qn_estimates_a_normal_scale_and_far_values_cannot_inflate_it() -> None:
    rng = np.random.default_rng(0)
    sample = rng.normal(scale=2.0, size=2001)
    assert qn_scale(sample) == pytest.approx(2.0, rel=0.08)
    honest = rng.normal(size=11)
    far = np.concatenate([honest, np.full(9, 1e12)])
    spread_out = np.concatenate([honest, 1e6 * rng.normal(size=9)])
    for values in (far, spread_out):
        middle, spread = robust_spread(values)
        assert honest.min() <= middle <= 1e6 and spread <= 2.2219 * np.ptp(honest)
    assert robust_spread(np.array([1.0, 2.0, 3.0]))[0] == 2.0

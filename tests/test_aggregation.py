"""The dSTAR rule on flat arrays: hand-computed cases, outliers, invariances, errors.

The hand-computed cases of the paper's reading pass ``variant="paper"``; the
anchored default has its own in ``tests/test_anchored.py``.
"""

import numpy as np
import pytest

from dstar_flwr.aggregation import coordinate_median, deviation_scale, dstar_aggregate


def _vectors(*rows: list[float]) -> list[np.ndarray]:
    return [np.array(row, dtype=np.float32) for row in rows]


def test_hand_computed_outlier_case() -> None:
    # Coordinate medians of 4 rows: x = (1.0 + 1.2) / 2 = 1.1, y = 0.
    # Deviations: 0.1, 0.1, 0.3, |(98.9, 100)| = 140.65; scale = median = 0.2;
    # threshold = 2 * 0.2 = 0.4: rows 0-2 pass, the cap k - f = 3 keeps all three.
    updates = _vectors([1.0, 0.0], [1.2, 0.0], [0.8, 0.0], [100.0, 100.0])
    result = dstar_aggregate(updates, num_byzantine=1, threshold_factor=2.0, variant="paper")
    np.testing.assert_allclose(result.center, [1.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(result.deviations, [0.1, 0.1, 0.3, np.hypot(98.9, 100.0)], rtol=1e-5)
    assert result.scale == pytest.approx(0.2, rel=1e-5)
    assert result.threshold == pytest.approx(0.4, rel=1e-5)
    assert result.accepted == (0, 1, 2)
    assert result.rejected == (3,)
    np.testing.assert_allclose(result.aggregate, [1.0, 0.0], atol=1e-6)


def test_weights_are_taken_as_given() -> None:
    updates = _vectors([1.0, 0.0], [1.2, 0.0], [0.8, 0.0], [100.0, 100.0])
    result = dstar_aggregate(updates, num_byzantine=1, weights=[1, 1, 2, 1], variant="paper")
    np.testing.assert_allclose(result.aggregate, [(1.0 + 1.2 + 2 * 0.8) / 4, 0.0], atol=1e-6)


def test_validation_update_joins_the_ensemble_median() -> None:
    # Ensemble {1, 3, 5} + v = 3.5: median (3 + 3.5) / 2 = 3.25.
    updates = _vectors([1.0], [3.0], [5.0])
    result = dstar_aggregate(
        updates, num_byzantine=1, validation=np.array([3.5], np.float32), variant="paper"
    )
    np.testing.assert_allclose(result.center, [3.25])
    assert result.validation_deviation == pytest.approx(0.25)
    clients_only = dstar_aggregate(
        updates,
        num_byzantine=1,
        validation=np.array([3.5], np.float32),
        center="clients",
        variant="paper",
    )
    np.testing.assert_allclose(clients_only.center, [3.0])


def test_nothing_accepted_falls_back_to_the_center() -> None:
    # Deviations from 3.25: 2.25, 0.25, 1.75; scale = dv = 0.25; threshold 0.125.
    updates = _vectors([1.0], [3.0], [5.0])
    result = dstar_aggregate(
        updates,
        num_byzantine=1,
        validation=np.array([3.5], np.float32),
        scale="validation",
        threshold_factor=0.5,
        variant="paper",
    )
    assert result.accepted == ()
    assert result.source == "center"
    np.testing.assert_allclose(result.aggregate, [3.25])


def test_scale_options() -> None:
    deviations = np.array([1.0, 2.0, 3.0])
    assert deviation_scale(deviations, None, "validation") == 2.0  # falls back to median
    assert deviation_scale(deviations, 10.0, "median") == 2.5  # median of (1, 2, 3, 10)
    assert deviation_scale(deviations, 10.0, "validation") == 10.0
    assert deviation_scale(deviations, 0.5, "max") == 1.5  # max(median(.5,1,2,3), .5)


def test_cap_keeps_at_most_k_minus_f_smallest_deviations() -> None:
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=50).astype(np.float32) * 0.01 for _ in range(7)]
    result = dstar_aggregate(updates, num_byzantine=3, threshold_factor=100.0, variant="paper")
    assert len(result.accepted) == 4
    largest = set(np.argsort(result.deviations)[-3:].tolist())
    assert set(result.rejected) == largest


@pytest.mark.parametrize("variant", ["anchored", "paper"])
def test_byzantine_outliers_are_rejected(variant: str) -> None:
    rng = np.random.default_rng(1)
    mean = rng.normal(size=1000)
    honest = [(mean + 0.1 * rng.normal(size=1000)).astype(np.float32) for _ in range(8)]
    attackers = [
        rng.normal(scale=1.0, size=1000).astype(np.float32),  # Gaussian
        (-3.0 * mean).astype(np.float32),  # scaled sign flip
    ]
    updates = [*honest[:3], attackers[0], *honest[3:6], attackers[1], *honest[6:]]
    result = dstar_aggregate(updates, num_byzantine=2, variant=variant)  # type: ignore[arg-type]
    assert {3, 7} <= set(result.rejected)
    honest_mean = np.mean(honest, axis=0)
    assert np.linalg.norm(result.aggregate - honest_mean) < 0.1 * np.linalg.norm(honest_mean)


@pytest.mark.parametrize("variant", ["anchored", "paper"])
def test_permuting_the_inputs_leaves_the_result_unchanged(variant: str) -> None:
    rng = np.random.default_rng(2)
    updates = [rng.normal(size=200).astype(np.float32) for _ in range(9)]
    updates[4] = updates[4] * 50
    weights = rng.uniform(1, 3, size=9)
    validation = rng.normal(size=200).astype(np.float32)
    base = dstar_aggregate(
        updates,
        num_byzantine=2,
        weights=weights,
        validation=validation,
        variant=variant,  # type: ignore[arg-type]
    )
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(9)
        permuted = dstar_aggregate(
            [updates[i] for i in order],
            num_byzantine=2,
            weights=weights[order],
            validation=validation,
            variant=variant,  # type: ignore[arg-type]
        )
        np.testing.assert_allclose(permuted.aggregate, base.aggregate, rtol=1e-5, atol=1e-6)
        assert {int(order[i]) for i in permuted.accepted} == set(base.accepted)
        np.testing.assert_allclose(permuted.deviations, base.deviations[order], rtol=1e-6)


@pytest.mark.parametrize("variant", ["anchored", "paper"])
def test_non_finite_updates_are_rejected_never_averaged(variant: str) -> None:
    updates = _vectors([1.0, 1.0], [np.nan, 1.0], [1.1, 0.9], [np.inf, 0.0], [0.9, 1.1])
    result = dstar_aggregate(
        updates,
        num_byzantine=2,
        threshold_factor=10.0,
        max_robust_z=10.0,
        variant=variant,  # type: ignore[arg-type]
    )
    assert result.non_finite == (1, 3)
    assert {1, 3} <= set(result.rejected)
    assert np.all(np.isfinite(result.aggregate))
    np.testing.assert_allclose(result.aggregate, [1.0, 1.0], atol=1e-6)


def test_all_non_finite_gives_a_zero_update() -> None:
    updates = _vectors([np.nan], [np.inf], [np.nan])
    result = dstar_aggregate(updates, num_byzantine=1)
    assert result.source == "none"
    np.testing.assert_array_equal(result.aggregate, [0.0])


def test_non_finite_validation_is_ignored() -> None:
    updates = _vectors([1.0], [2.0], [3.0])
    result = dstar_aggregate(
        updates, num_byzantine=1, validation=np.array([np.nan], np.float32), variant="paper"
    )
    assert result.validation_deviation is None
    np.testing.assert_allclose(result.center, [2.0])


def test_k_below_2f_plus_1_is_refused_with_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"k >= 2f \+ 1.*k=4.*f=2.*at least 5"):
        dstar_aggregate(_vectors([1.0], [2.0], [3.0], [4.0]), num_byzantine=2)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "at least one update"),
        (_vectors([1.0, 2.0], [1.0]), "different lengths"),
        ([np.ones((2, 2), np.float32)], "1-D"),
        ([np.ones(3, dtype=np.int64)], "floating-point"),
    ],
)
def test_bad_inputs_raise_clear_errors(updates: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dstar_aggregate(updates, num_byzantine=0)


def test_bad_parameters_raise() -> None:
    updates = _vectors([1.0], [2.0], [3.0])
    with pytest.raises(ValueError, match="threshold_factor"):
        dstar_aggregate(updates, num_byzantine=1, threshold_factor=0)
    with pytest.raises(ValueError, match="scale"):
        dstar_aggregate(updates, num_byzantine=1, scale="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        dstar_aggregate(updates, num_byzantine=1, weights=[1, 2])
    with pytest.raises(ValueError, match="validation"):
        dstar_aggregate(updates, num_byzantine=1, validation=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="variant"):
        dstar_aggregate(updates, num_byzantine=1, variant="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_robust_z"):
        dstar_aggregate(updates, num_byzantine=1, max_robust_z=-1.0)


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 11])
def test_coordinate_median_matches_numpy(rows: int) -> None:
    stack = np.random.default_rng(rows).normal(size=(rows, 301)).astype(np.float32)
    np.testing.assert_allclose(coordinate_median(stack), np.median(stack, axis=0), rtol=1e-6)

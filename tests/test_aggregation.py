"""The dSTAR rule on flat arrays: hand-computed cases, outliers, invariances, errors.

The hand-computed cases of the paper's reading pass ``variant="paper"``; the
anchored default has its own in ``tests/test_anchored.py``.
"""

import threading

import numpy as np
import pytest

from dstar_flwr import aggregation
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


# --- the compiled pass: one pass when every update is accepted -------------------


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path on small inputs: several chunks, blocks and threads."""
    if aggregation._KERNELS is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(aggregation, "_CHUNK_ALIGN", 256)
    monkeypatch.setattr(aggregation, "_MAX_CHUNK", 768)
    monkeypatch.setattr(aggregation, "_LANES", 100)  # blocks that end inside a chunk
    monkeypatch.setattr(aggregation, "_ELEMENTS_PER_THREAD", 1)


def _honest_round(seed: int, num_updates: int = 11, dimension: int = 3001) -> tuple:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dimension)
    updates = [(mean + 0.1 * rng.normal(size=dimension)).astype(np.float32) for _ in range(11)]
    validation = (mean + 0.1 * rng.normal(size=dimension)).astype(np.float32)
    return updates[:num_updates], validation, rng.uniform(1, 5, size=num_updates)


def _plain_weighted_mean(updates: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    kept = weights / weights.sum()
    return (kept[:, None] * np.stack(updates).astype(np.float64)).sum(axis=0)


@pytest.mark.usefixtures("compiled")
def test_when_every_update_is_accepted_the_measuring_pass_gives_the_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates, validation, weights = _honest_round(0)

    def no_second_pass(*args: object) -> None:
        raise AssertionError("the weighted sum ran a second pass")

    kernels = aggregation._KERNELS._replace(weighted_sum=no_second_pass)  # type: ignore[union-attr]
    monkeypatch.setattr(aggregation, "_KERNELS", kernels)
    result = dstar_aggregate(updates, num_byzantine=2, validation=validation, weights=weights)
    assert result.accepted == tuple(range(11))
    expected = _plain_weighted_mean(updates, weights)
    np.testing.assert_allclose(result.aggregate, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("compiled")
def test_the_fused_mean_equals_the_second_pass() -> None:
    updates, validation, weights = _honest_round(1)
    fused = dstar_aggregate(updates, num_byzantine=2, validation=validation, weights=weights)
    rows = aggregation.host_rows(updates, validation)
    normalised = aggregation._mean_weights(aggregation._checked_weights(weights, 11))
    second = rows.weighted_mean(list(range(11)), normalised)
    np.testing.assert_array_equal(fused.aggregate, second)


@pytest.mark.usefixtures("compiled")
def test_a_rejected_update_is_left_out_of_the_mean() -> None:
    updates, validation, weights = _honest_round(2)
    updates[4] = updates[4] * 40
    result = dstar_aggregate(updates, num_byzantine=2, validation=validation, weights=weights)
    assert 4 in result.rejected
    kept = list(result.accepted)
    expected = _plain_weighted_mean([updates[i] for i in kept], weights[kept])
    np.testing.assert_allclose(result.aggregate, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_pass_measures_deviations_norms_and_finiteness(dtype: type) -> None:
    updates, validation, _ = _honest_round(3, num_updates=9)
    updates = [update.astype(dtype) for update in updates]
    updates[2][17] = np.inf
    updates[6][3000] = np.nan
    inputs = [*updates, validation.astype(dtype)]
    measured = aggregation._measure(inputs, [9], None)
    wide = [row.astype(np.float64) for row in inputs]
    center = wide[9]
    finite = [bool(np.isfinite(row).all()) for row in inputs]
    np.testing.assert_array_equal(measured.finite, finite)
    np.testing.assert_array_equal(measured.reference, inputs[9])
    ok = np.flatnonzero(finite)
    squares = [np.sum((inputs[i] - inputs[9]).astype(np.float64) ** 2) for i in ok]
    np.testing.assert_allclose(measured.squares[ok], squares, rtol=1e-12)
    np.testing.assert_allclose(
        measured.norms[ok], [np.dot(wide[i], wide[i]) for i in ok], rtol=1e-12
    )
    assert measured.reference_norm == pytest.approx(np.linalg.norm(center), rel=1e-12)


@pytest.mark.usefixtures("compiled")
def test_a_float32_row_near_the_maximum_is_finite_with_a_finite_norm() -> None:
    # Squares of float32 values never overflow in float64: only NaN and Inf are flagged.
    big = np.full(700, np.finfo(np.float32).max, dtype=np.float32)
    inputs = [big, -big, np.zeros(700, np.float32)]
    measured = aggregation._measure(inputs, [2], None)
    assert measured.finite.all()
    assert np.isfinite(measured.norms).all()


def test_the_threads_are_started_once_and_reused() -> None:
    seen: set[int] = set()
    lock = threading.Lock()

    def task(chunk: int, start: int, stop: int) -> None:
        with lock:
            seen.add(threading.get_ident())

    bounds = list(range(0, 65, 4))
    aggregation._run_chunks(task, bounds, work=1 << 40)
    pool = aggregation._thread_pool()
    aggregation._run_chunks(task, bounds, work=1 << 40)
    assert aggregation._thread_pool() is pool
    assert len(seen) <= aggregation._available_cores()


def test_an_error_in_a_chunk_reaches_the_caller() -> None:
    def task(chunk: int, start: int, stop: int) -> None:
        if chunk == 5:
            raise RuntimeError("chunk 5 failed")

    with pytest.raises(RuntimeError, match="chunk 5 failed"):
        aggregation._run_chunks(task, list(range(0, 41, 4)), work=1 << 40)


def test_a_forked_child_starts_its_own_threads() -> None:
    pool = aggregation._thread_pool()
    aggregation._forget_thread_pool()  # what the child runs after a fork
    try:
        assert aggregation._thread_pool() is not pool
    finally:
        aggregation._pool = pool

"""Properties of the dSTAR rule, checked with hypothesis on both code paths.

``dstar_aggregate`` has a compiled (numba) path for large inputs and a numpy path
for small ones; every property is checked on both (the compiled one forced onto
small inputs, split into several chunks shared by threads).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from dstar_flwr import aggregation
from dstar_flwr.aggregation import CENTERS, SCALES, VARIANTS, DStarAggregation, dstar_aggregate

# Cases per property: 100 in the default suite (Hypothesis' "default" profile),
# HYPOTHESIS_PROFILE=thorough for 1,000 (see tests/conftest.py).
PROPERTY_SETTINGS = settings(deadline=None)
PATHS = ("numpy", "kernel")
DTYPES = (np.float32, np.float64)


@contextmanager
def _forced(path: str) -> Iterator[None]:
    """Force the compiled path (tiny chunks, two threads) or the numpy one."""
    with pytest.MonkeyPatch.context() as patch:
        if path == "kernel":
            if aggregation._KERNELS is None:
                pytest.skip("numba is not installed")
            patch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 0)
            patch.setattr(aggregation, "_CHUNK_ALIGN", 1)
            patch.setattr(aggregation, "_MAX_CHUNK", 2)
            patch.setattr(aggregation, "_ELEMENTS_PER_THREAD", 1)
        else:
            patch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 1 << 62)
            patch.setattr(aggregation, "_NUMPY_BLOCK_ELEMENTS", 8)  # several blocks
        yield


def _aggregate(path: str, updates: list[NDArray[Any]], **kwargs: Any) -> DStarAggregation:
    with _forced(path):
        return dstar_aggregate(updates, **kwargs)


@st.composite
def _settings(draw: st.DrawFn, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """The rule's keyword arguments besides the inputs and f."""
    return {
        "variant": draw(st.sampled_from(variants)),
        "max_robust_z": draw(st.floats(0.0, 6.0)),
        "norm_test": draw(st.booleans()),
        "threshold_factor": draw(st.floats(0.25, 8.0)),
        "scale": draw(st.sampled_from(SCALES)),
        "center": draw(st.sampled_from(CENTERS)),
        "cap_accepted": draw(st.booleans()),
    }


@st.composite
def _problems(
    draw: st.DrawFn,
    dtype: type,
    elements: st.SearchStrategy[float],
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """n updates of length d (n <= 11, d <= 8), f, a validation update, weights, settings."""
    n = draw(st.integers(1, 11))
    d = draw(st.integers(1, 8))
    stack = draw(hnp.arrays(dtype, (n, d), elements=elements))
    validation = draw(st.none() | hnp.arrays(dtype, d, elements=elements))
    weights = draw(st.none() | hnp.arrays(np.float64, n, elements=st.floats(0.0, 100.0)))
    return {
        "updates": list(stack),
        "num_byzantine": draw(st.integers(0, (n - 1) // 2)),
        "validation": validation,
        "weights": weights,
        **draw(_settings(variants)),
    }


def _bounded(dtype: type, bound: float = 1e3) -> st.SearchStrategy[float]:
    """Finite values in [-bound, bound], none subnormal, representable in ``dtype``."""
    width = 32 if dtype == np.float32 else 64
    return st.floats(-bound, bound, width=width, allow_subnormal=False)


def _dyadic() -> st.SearchStrategy[float]:
    """Multiples of 1/8 in [-128, 128]: sums, halves and squares of them are exact."""
    return st.integers(-(2**10), 2**10).map(lambda k: k / 8)


def _cut_is_tied(result: DStarAggregation, num_updates: int, num_byzantine: int) -> bool:
    """Whether the k - f cap had to choose between equal deviations."""
    passing = np.sort(result.deviations[result.deviations <= result.threshold])
    keep = num_updates - num_byzantine
    return bool(passing.size > keep and passing[keep - 1] == passing[keep])


def _sum_tolerance(updates: list[NDArray[Any]], result: DStarAggregation, dtype: type) -> float:
    """Rounding allowance of a weighted mean of the accepted updates (float64 sums)."""
    accepted = [np.abs(updates[i]).max() for i in result.accepted] or [0.0]
    return 8 * float(np.finfo(dtype).eps) * max(1.0, float(max(accepted)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_the_order_of_the_inputs_does_not_matter(
    path: str, dtype: type, data: st.DataObject
) -> None:
    """Permutation invariance.

    For every permutation p of the n updates (and their weights): the deviations
    are permuted exactly, ``deviations'[j] == deviations[p[j]]``; center, scale and
    threshold are identical; the accepted set is the image of the original one,
    ``{p[j] for j in accepted'} == accepted``, unless the k - f cap had to choose
    between equal deviations (ties keep arrival order), in which case the multiset
    of accepted deviations is still the same; and when the sets correspond the
    aggregate agrees up to the rounding of a reordered float64 sum.
    """
    problem = data.draw(_problems(dtype, _bounded(dtype)))
    order = np.array(data.draw(st.permutations(range(len(problem["updates"])))), dtype=np.intp)
    base = _aggregate(path, **problem)
    weights = problem["weights"]
    permuted = _aggregate(
        path,
        **{
            **problem,
            "updates": [problem["updates"][i] for i in order],
            "weights": None if weights is None else weights[order],
        },
    )
    np.testing.assert_array_equal(permuted.deviations, base.deviations[order])
    np.testing.assert_array_equal(permuted.center, base.center)
    assert permuted.threshold == base.threshold
    assert permuted.validation_deviation == base.validation_deviation
    assert permuted.source == base.source
    np.testing.assert_array_equal(
        np.sort(permuted.deviations[list(permuted.accepted)]),
        np.sort(base.deviations[list(base.accepted)]),
    )
    n, f = len(order), problem["num_byzantine"]
    if problem["cap_accepted"] and _cut_is_tied(base, n, f):
        return
    assert {int(order[j]) for j in permuted.accepted} == set(base.accepted)
    tolerance = _sum_tolerance(problem["updates"], base, dtype)
    np.testing.assert_allclose(permuted.aggregate, base.aggregate, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_translating_every_input_translates_the_output(
    path: str, dtype: type, data: st.DataObject
) -> None:
    """Translation equivariance, exact in the filter.

    Adding a vector t to every update and to the validation update adds t to the
    center and to the aggregate, and changes neither the deviations, the scale,
    the threshold nor the accepted set. Inputs and t are multiples of 1/8 in
    [-128, 128], so that every sum, difference, half and square the rule computes
    is exact in float32 and float64: the filter's decisions must then be
    bitwise identical (boundary cases such as a deviation equal to the threshold
    included), and the aggregate equal up to the rounding of the weighted mean.
    """
    problem = data.draw(_problems(dtype, _dyadic(), variants=("paper",)))
    d = problem["updates"][0].shape[0]
    shift = data.draw(hnp.arrays(dtype, d, elements=_dyadic()))
    base = _aggregate(path, **problem)
    validation = problem["validation"]
    moved = _aggregate(
        path,
        **{
            **problem,
            "updates": [update + shift for update in problem["updates"]],
            "validation": None if validation is None else validation + shift,
        },
    )
    np.testing.assert_array_equal(moved.deviations, base.deviations)
    assert moved.validation_deviation == base.validation_deviation
    assert moved.threshold == base.threshold
    assert moved.accepted == base.accepted and moved.source == base.source
    np.testing.assert_array_equal(moved.center, base.center + shift)
    tolerance = _sum_tolerance([u + shift for u in problem["updates"]], base, dtype)
    np.testing.assert_allclose(moved.aggregate, base.aggregate + shift, rtol=0, atol=tolerance)


@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_translation_keeps_well_separated_decisions_for_any_floats(
    path: str, data: st.DataObject
) -> None:
    """Translation equivariance for arbitrary float64 inputs.

    With inputs and t anywhere in [-1000, 1000], translated values are rounded,
    so a deviation (and the threshold) moves by a few ulps of the largest value,
    about 1e-12 here. Every decision further than ``margin`` (1e-9 relative, far
    more than that) from the threshold or from a tie at the k - f cut must be
    kept; then the aggregate moves by t up to the rounding of the weighted mean,
    16 ulps of the largest value.
    """
    problem = data.draw(_problems(np.float64, _bounded(np.float64), variants=("paper",)))
    d = problem["updates"][0].shape[0]
    shift = data.draw(hnp.arrays(np.float64, d, elements=_bounded(np.float64)))
    base = _aggregate(path, **problem)
    validation = problem["validation"]
    moved = _aggregate(
        path,
        **{
            **problem,
            "updates": [update + shift for update in problem["updates"]],
            "validation": None if validation is None else validation + shift,
        },
    )
    largest = 1 + max(float(np.abs(u).max()) for u in problem["updates"])
    largest += float(np.abs(shift).max())
    margin = 1e-9 * largest * (1 + problem["threshold_factor"])
    gaps = np.abs(base.deviations - base.threshold)
    if problem["cap_accepted"]:
        gaps = np.concatenate([gaps, np.diff(np.sort(base.deviations))])
    if gaps.size and gaps.min() <= margin:
        return
    assert moved.accepted == base.accepted
    tolerance = 16 * float(np.finfo(np.float64).eps) * largest
    np.testing.assert_allclose(moved.aggregate, base.aggregate + shift, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_scaling_by_a_power_of_two_scales_the_output_exactly(
    path: str, dtype: type, data: st.DataObject
) -> None:
    """Scale equivariance (and odd symmetry): F(a u, a v) == a F(u, v).

    For a = +-2**j (|j| <= 8) every operation of the rule commutes exactly with
    the multiplication (no value leaves the normal range): the median selects the
    scaled values (a < 0 swaps the two middle ones), deviations and threshold
    scale by |a|, so the same updates are accepted, and the float64 weighted mean
    scales exactly. The result must be bitwise ``a`` times the original.
    """
    elements = _bounded(dtype).filter(lambda x: x == 0 or abs(x) > 1e-6)
    problem = data.draw(_problems(dtype, elements, variants=("paper",)))
    factor = data.draw(st.sampled_from([-1.0, 1.0])) * 2.0 ** data.draw(st.integers(-8, 8))
    a = dtype(factor)
    base = _aggregate(path, **problem)
    validation = problem["validation"]
    scaled = _aggregate(
        path,
        **{
            **problem,
            "updates": [a * update for update in problem["updates"]],
            "validation": None if validation is None else a * validation,
        },
    )
    assert scaled.accepted == base.accepted and scaled.source == base.source
    np.testing.assert_array_equal(scaled.deviations, abs(factor) * base.deviations)
    if base.scale == 0:  # the threshold is the absolute floor (eps): it does not scale
        assert scaled.threshold == base.threshold == np.finfo(dtype).eps
    else:
        assert scaled.threshold == abs(factor) * base.threshold
    np.testing.assert_array_equal(scaled.center, a * base.center)
    np.testing.assert_array_equal(scaled.aggregate, a * base.aggregate)


NON_FINITE = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def _with_non_finite_rows(draw: st.DrawFn, dtype: type) -> dict[str, Any]:
    """n updates of which at most f hold NaN/Inf; the finite ones may be huge."""
    problem = draw(_problems(dtype, st.floats(width=32 if dtype == np.float32 else 64)))
    updates = [np.nan_to_num(u, nan=0.0) for u in problem["updates"]]  # all finite first
    n, f = len(updates), problem["num_byzantine"]
    d = updates[0].shape[0]
    bad_rows = draw(st.sets(st.integers(0, n - 1), max_size=f))
    for row in bad_rows:
        positions = draw(st.sets(st.integers(0, d - 1), min_size=1))
        for position in positions:
            updates[row][position] = draw(NON_FINITE)
    validation = problem["validation"]
    if validation is not None and draw(st.booleans()):
        validation[draw(st.integers(0, d - 1))] = draw(NON_FINITE)
    return {**problem, "updates": updates, "validation": validation}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_the_output_is_finite_when_k_minus_f_inputs_are(
    path: str, dtype: type, data: st.DataObject
) -> None:
    """Finiteness: at least k - f finite updates give a finite aggregate and center.

    The other (at most f) updates hold NaN or +-Inf in some coordinates; the
    finite ones take any value of the dtype, up to +-max (so that sums of two
    middle values and differences can overflow), and so may the validation
    update, which may also be non-finite. The non-finite updates are reported as
    such and never accepted.
    """
    problem = data.draw(_with_non_finite_rows(dtype))
    result = _aggregate(path, **problem)
    finite_rows = {i for i, u in enumerate(problem["updates"]) if np.isfinite(u).all()}
    assert np.isfinite(result.aggregate).all()
    assert result.aggregate.dtype == dtype
    assert result.center is not None and np.isfinite(result.center).all()
    assert set(result.non_finite) == set(range(len(problem["updates"]))) - finite_rows
    assert set(result.accepted) <= finite_rows
    assert result.source in ("accepted", "center")


@st.composite
def _honest_and_byzantine(draw: st.DrawFn, dtype: type) -> dict[str, Any]:
    """h honest updates, b <= f arbitrary ones at random positions, n = h + b >= 2f + 1."""
    f = draw(st.integers(0, 4))
    b = draw(st.integers(0, f))
    h = draw(st.integers(max(f + 1, 2 * f + 1 - b), 2 * f + 5 - b))
    d = draw(st.integers(1, 8))
    honest = list(draw(hnp.arrays(dtype, (h, d), elements=_bounded(dtype, 100.0))))
    anything = st.floats(width=32 if dtype == np.float32 else 64)  # NaN, Inf, +-max too
    byzantine = list(draw(hnp.arrays(dtype, (b, d), elements=anything)))
    positions = draw(st.permutations(range(h + b)))
    updates: list[NDArray[Any]] = [np.empty(0)] * (h + b)
    for position, update in zip(positions, honest + byzantine, strict=True):
        updates[position] = update
    validation = draw(
        st.none()
        | hnp.arrays(dtype, d, elements=_bounded(dtype, 100.0))
        | hnp.arrays(dtype, d, elements=anything).filter(lambda v: not np.isfinite(v).all())
    )
    any_weight = st.floats(0.0, allow_infinity=False)  # up to the float64 maximum
    weights = draw(st.none() | hnp.arrays(np.float64, h + b, elements=any_weight))
    return {
        "problem": {
            "updates": updates,
            "num_byzantine": f,
            "validation": validation,
            "weights": weights,
            **draw(_settings(("paper",))),
        },
        "honest": np.array(honest, dtype=np.float64),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_distance_to_the_honest_mean_is_bounded_by_the_honest_spread(
    path: str, dtype: type, data: st.DataObject
) -> None:
    """||F - mu|| <= B + c (R + B) <= ((1 + c) sqrt(min(|S|, d)) + c) R with <= f arbitrary inputs.

    The paper's reading (``variant="paper"``); the anchored filter has its own
    bound below.

    Setting: n = h + b >= 2f + 1 updates, b <= f of them arbitrary (any value,
    NaN and Inf included, at any position, with any weight), the other h honest;
    the validation update v is trusted (or absent, or non-finite, and then
    ignored). mu is the honest updates' mean, S the honest updates plus v when it
    is finite, R = max_{s in S} ||s - mu|| and
    B = || (max_{s in S} |s_j - mu_j|)_j || (B <= sqrt(min(|S|, d)) R).

    Derivation, following the implementation:

    1. The center m is a coordinate-wise median over the finite updates (plus v
       for ``center="ensemble"``). S is a strict majority of the members
       (|S| >= h >= n - f >= f + 1 > b), so in every coordinate both middle order
       statistics lie in [min_S s_j, max_S s_j], and so does their mean. Hence
       |m_j - mu_j| <= max_S |s_j - mu_j| and ||m - mu|| <= B.
    2. The deviation of every s in S is ||s - m|| <= ||s - mu|| + ||m - mu||
       <= R + B. The scale s is the median of the finite deviations (plus v's),
       of which S's are a strict majority, or v's deviation, or the larger of the
       two: in every case s <= R + B, so the threshold is c s <= c (R + B).
    3. An accepted update u has ||u - m|| <= c s, so ||u - mu|| <= c (R + B) + B.
       F is a convex combination of accepted updates (the weights are clipped and
       normalised, never negative), or m when none is accepted: in both cases
       ||F - mu|| <= B + c (R + B).

    The bound does not depend on the arbitrary inputs at all. Checked with a
    rounding allowance (relative 1e-4 in float32, 1e-9 in float64).
    """
    drawn = data.draw(_honest_and_byzantine(dtype))
    problem, honest = drawn["problem"], drawn["honest"]
    result = _aggregate(path, **problem)
    mu = honest.mean(axis=0)
    trusted = [*honest]
    validation = problem["validation"]
    if validation is not None and np.isfinite(validation).all():
        trusted.append(validation.astype(np.float64))
    offsets = np.abs(np.array(trusted) - mu)
    box = float(np.linalg.norm(offsets.max(axis=0)))
    radius = float(np.linalg.norm(offsets, axis=1).max())
    c = problem["threshold_factor"]
    bound = box + c * (radius + box)
    assert box <= math.sqrt(min(len(trusted), mu.size)) * radius * (1 + 1e-12) + 1e-300
    distance = float(np.linalg.norm(result.aggregate.astype(np.float64) - mu))
    slack = (1e-4 if dtype == np.float32 else 1e-9) * (1 + c) * (1 + float(np.abs(honest).max()))
    assert distance <= bound + slack


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_anchored_aggregate_stays_within_the_honest_band_around_v(
    path: str, dtype: type, data: st.DataObject
) -> None:
    """The anchored filter with a finite v: ||F - v|| <= D_H + 2.2219 z R_H (+ the floor).

    D_H is the largest honest deviation ``||u_i - v||`` and R_H the range of the
    honest deviations. With b <= f < k / 2 arbitrary updates, the median of the
    k deviations is at most D_H, and Qn takes the C(h', 2)-th smallest pairwise
    difference, h' = k // 2 + 1 <= k - f: the honest deviations alone make that
    many pairs, each at most R_H apart, so Qn <= 2.2219 R_H (its small-sample
    correction is below 1). Every accepted update lies in the ball of that radius
    around v, and so does their weighted mean.
    """
    drawn = data.draw(_honest_and_byzantine(dtype))
    problem, honest = drawn["problem"], drawn["honest"]
    d = honest.shape[1]
    validation = data.draw(hnp.arrays(dtype, d, elements=_bounded(dtype, 100.0)))
    z = data.draw(st.floats(0.0, 6.0))
    problem = {
        **problem,
        "validation": validation,
        "variant": "anchored",
        "max_robust_z": z,
        "norm_test": data.draw(st.booleans()),
        "cap_accepted": data.draw(st.booleans()),
    }
    result = _aggregate(path, **problem)
    v = validation.astype(np.float64)
    honest_deviations = np.linalg.norm(honest - v, axis=1)
    largest = float(honest_deviations.max())
    spread = float(np.ptp(honest_deviations))
    eps = float(np.finfo(dtype).eps)
    floor = largest + math.sqrt(eps) * (largest + float(np.linalg.norm(v))) + eps
    radius = max(largest + 2.2219 * z * spread, floor)
    distance = float(np.linalg.norm(result.aggregate.astype(np.float64) - v))
    slack = (1e-4 if dtype == np.float32 else 1e-9) * (1 + z) * (1 + float(np.abs(honest).max()))
    assert set(result.accepted) <= {
        i for i, dev in enumerate(result.deviations) if dev <= radius + slack
    }
    assert distance <= radius + slack


@pytest.mark.parametrize("path", PATHS)
def test_the_center_of_huge_finite_values_does_not_overflow(path: str) -> None:
    """Regression: the mean of the two middle values was summed before halving.

    Three updates at the float32 maximum and v = 0: the ensemble median is the
    mean of two maxima, which overflowed to inf and made every deviation inf.
    """
    top = np.finfo(np.float32).max
    updates = [np.full(3, top, np.float32) for _ in range(3)]
    result = _aggregate(
        path, updates, num_byzantine=0, validation=np.zeros(3, np.float32), variant="paper"
    )
    np.testing.assert_array_equal(result.center, updates[0])
    np.testing.assert_array_equal(result.deviations, np.zeros(3))
    assert result.threshold == np.finfo(np.float32).eps  # the floor above a zero scale


@pytest.mark.parametrize("path", PATHS)
def test_weights_whose_sum_overflows_still_give_their_weighted_mean(path: str) -> None:
    """Regression: finite weights near the float64 maximum summed to inf, F to 0."""
    updates = [np.array([1.0, 50.0]), np.array([2.0, 50.0]), np.array([3.0, 50.0])]
    huge = np.finfo(np.float64).max
    result = _aggregate(
        path, updates, num_byzantine=0, weights=[huge, huge, huge / 2], variant="paper"
    )
    np.testing.assert_allclose(result.aggregate, [(1 + 2 + 1.5) / 2.5, 50.0], rtol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_a_mean_of_values_at_the_float64_maximum_stays_finite(path: str) -> None:
    """Regression: the rounded weights (0.4, 0.6) carried the mean of two maxima to inf."""
    top = np.finfo(np.float64).max
    updates = [np.array([top, -top]), np.array([top, -top])]
    result = _aggregate(path, updates, num_byzantine=0, weights=[1.0, 1.5], variant="paper")
    np.testing.assert_array_equal(result.aggregate, [top, -top])

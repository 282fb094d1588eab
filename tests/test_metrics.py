"""Client-metric aggregation: bounded weights, non-finite values dropped, trimmed."""

import math

import numpy as np
import pytest
from flwr.app import MetricRecord

from dstar_flwr.metrics import aggregate_metrics, trimmed_mean

TOP = np.finfo(np.float64).max


def test_trimmed_mean_without_trim_or_weights_is_the_mean() -> None:
    assert trimmed_mean([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert trimmed_mean([1.0, 3.0], weights=[3.0, 1.0]) == pytest.approx(1.5)


def test_trimmed_mean_drops_trim_values_at_each_end() -> None:
    assert trimmed_mean([0.9, 0.8, 1e10, -1e10, 0.85], trim=1) == pytest.approx(0.85)
    # The trim is by count: a heavy weight does not protect an extreme value.
    assert trimmed_mean([1.0, 1.0, 50.0], weights=[1, 1, 1e6], trim=1) == pytest.approx(1.0)


def test_trimmed_mean_with_too_few_values_keeps_at_least_one() -> None:
    assert trimmed_mean([5.0], trim=3) == 5.0
    assert trimmed_mean([1.0, 2.0, 100.0], trim=2) == 2.0  # the median
    assert trimmed_mean([1.0, 3.0], trim=1) == pytest.approx(2.0)


def test_trimmed_mean_drops_non_finite_values_and_unusable_weights() -> None:
    values = [0.9, math.nan, math.inf, -math.inf, 0.7]
    assert trimmed_mean(values) == pytest.approx(0.8)
    assert trimmed_mean([0.9, 0.7, 5.0], weights=[1.0, 1.0, 0.0]) == pytest.approx(0.8)
    assert trimmed_mean([0.9, 0.7, 5.0], weights=[1.0, 1.0, math.nan]) == pytest.approx(0.8)
    assert trimmed_mean([math.nan]) is None
    assert trimmed_mean([]) is None


def test_trimmed_mean_stays_within_its_values_at_the_float_limits() -> None:
    assert trimmed_mean([TOP, TOP, TOP]) == TOP
    assert trimmed_mean([TOP, -TOP]) == 0.0
    assert trimmed_mean([1.0, 2.0], weights=[TOP, TOP]) == pytest.approx(1.5)
    assert trimmed_mean([1e-300, 3e-300], weights=[1e-300, 1e-300]) == pytest.approx(2e-300)
    assert trimmed_mean([0.0, 0.0]) == 0.0


def test_trimmed_mean_checks_the_weights_length() -> None:
    with pytest.raises(ValueError, match="weights"):
        trimmed_mean([1.0, 2.0], weights=[1.0])


def test_aggregate_metrics_weighs_each_key_over_the_records_that_hold_it() -> None:
    """A record without a key does not dilute that key (the 3e-08 train-loss)."""
    records = [{"loss": 1.0, "n": 10}, {"loss": 1.0, "n": 10}, {"n": 1e9, "acc": 0.5}]
    assert aggregate_metrics(records, exclude={"n"}) == {"loss": 1.0, "acc": 0.5}
    weighted = aggregate_metrics([{"a": 1.0}, {"a": 4.0}], weights=[2.0, 1.0])
    assert weighted["a"] == pytest.approx(2.0)


def test_aggregate_metrics_cannot_be_moved_outside_the_honest_range() -> None:
    honest = [{"acc": value} for value in (0.8, 0.9, 0.85, 0.95)]
    for hostile in (1e10, -1e10, TOP, math.nan, math.inf):
        result = aggregate_metrics([*honest, {"acc": hostile}], trim=1)
        assert 0.8 <= result["acc"] <= 0.95


def test_aggregate_metrics_of_lists_is_element_wise_and_skips_odd_kinds() -> None:
    records = [
        MetricRecord({"curve": [1.0, 2.0], "tag": 1}),
        MetricRecord({"curve": [3.0, 4.0], "tag": 3}),
        {"curve": [5.0], "tag": "x"},  # another length; not a number
        {"curve": 7.0, "flag": True},  # a number where most send a list; a bool
    ]
    result = aggregate_metrics(records)
    assert result == {"curve": [2.0, 3.0], "tag": 2.0}
    assert isinstance(result["tag"], float)
    assert aggregate_metrics([{"x": math.nan}, {"x": math.inf}]) == {}
    assert aggregate_metrics([{"big": 10**400}, {"big": 2}]) == {"big": 2.0}


def test_aggregate_metrics_takes_numpy_numbers_and_checks_the_weights() -> None:
    result = aggregate_metrics([{"a": np.float32(0.5)}, {"a": np.int64(1)}])
    assert result == {"a": pytest.approx(0.75)}
    assert MetricRecord(result)["a"] == pytest.approx(0.75)  # a plain float
    with pytest.raises(ValueError, match="weights"):
        aggregate_metrics([{"a": 1.0}], weights=[1.0, 2.0])

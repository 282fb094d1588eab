"""Client metrics aggregated so that no single reply can steer them.

Flower's default weighs each reply's metrics by the example count the reply
claims: one node claiming 1e300 examples then sets every metric alone. Here each
metric key gets a trimmed mean: the weights are the strategy's bounded ones
(uniform by default), non-finite values are dropped, and the ``trim`` largest
and smallest values are left out before averaging, so up to ``trim`` hostile
values cannot move a metric outside the range of the others.
"""

from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

MetricValue = float | list[float]


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number (bools are not), else None."""
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return None


def trimmed_mean(
    values: Sequence[float], weights: Sequence[float] | None = None, trim: int = 0
) -> float | None:
    """Weighted mean of the finite ``values`` without the ``trim`` largest and smallest.

    Parameters
    ----------
    values : Sequence[float]
        The values; NaN and Inf are dropped first.
    weights : Sequence[float] | None (default: None)
        One non-negative, trusted weight per value; None: equal weights.
    trim : int (default: 0)
        Values dropped at each end (by count, not by weight). With fewer than
        ``2 * trim + 1`` finite values, ``(n - 1) // 2`` are dropped at each end,
        so that at least one value is left.

    Returns
    -------
    float | None
        The mean, within the range of the values it averages; None when no
        finite value with a positive weight is left.
    """
    array = np.asarray(values, dtype=np.float64)
    weight = np.ones_like(array) if weights is None else np.asarray(weights, dtype=np.float64)
    if weight.shape != array.shape:
        raise ValueError(f"{array.size} values but {weight.size} weights.")
    keep = np.isfinite(array) & np.isfinite(weight) & (weight > 0)
    array, weight = array[keep], weight[keep]
    if array.size == 0:
        return None
    cut = min(max(trim, 0), (array.size - 1) // 2)
    order = np.argsort(array, kind="stable")[cut : array.size - cut]
    array, weight = array[order], weight[order]
    low, high = float(array[0]), float(array[-1])
    # Scaled by the largest weight and the largest magnitude, so that neither the
    # sum of weights nor the weighted sum overflows.
    share = weight / weight.max()
    share /= share.sum()
    scale = float(np.max(np.abs(array)))
    if scale == 0.0:
        return 0.0
    mean = scale * float(np.sum(share * (array / scale)))
    return min(max(mean, low), high)


def _numbers(value: object) -> tuple[float, ...] | float | None:
    """A number as a float, a list of numbers as a tuple of floats, else None."""
    if isinstance(value, list | tuple):
        numbers = [_number(item) for item in value]
        if any(number is None for number in numbers):
            return None
        return tuple(number for number in numbers if number is not None)
    return _number(value)


def _kind(value: tuple[float, ...] | float) -> int:
    """-1 for a number, the length for a list."""
    return len(value) if isinstance(value, tuple) else -1


def aggregate_metrics(
    records: Sequence[Mapping[str, object]],
    weights: Sequence[float] | None = None,
    trim: int = 0,
    exclude: Collection[str] = (),
) -> dict[str, MetricValue]:
    """Per key, the :func:`trimmed_mean` of the records' values.

    Parameters
    ----------
    records : Sequence[Mapping[str, object]]
        One metrics mapping per reply (a MetricRecord, or legacy Metrics).
    weights : Sequence[float] | None (default: None)
        One trusted, bounded weight per record; None: equal weights. For each
        key the weights of the records that hold it are used.
    trim : int (default: 0)
        Values dropped at each end, per key (``num_byzantine``).
    exclude : Collection[str] (default: ())
        Keys left out (the example-count key).

    Returns
    -------
    dict[str, float | list[float]]
        A key whose values are numbers gives a number; one whose values are
        lists of numbers gives a list, averaged element-wise. Values that are
        neither (strings, bools) are left out, and so are the values of a key
        that are not of the kind most records send (a number where most send
        a list, a list of another length); a key with no finite value is left
        out.
    """
    if weights is not None and len(weights) != len(records):
        raise ValueError(f"{len(records)} records but {len(weights)} weights.")
    entries: dict[str, list[tuple[tuple[float, ...] | float, float]]] = {}
    for index, record in enumerate(records):
        weight = 1.0 if weights is None else float(weights[index])
        for key, value in record.items():
            numbers = None if key in exclude else _numbers(value)
            if numbers is not None:
                entries.setdefault(key, []).append((numbers, weight))
    aggregated: dict[str, MetricValue] = {}
    for key, pairs in entries.items():
        kind = Counter(_kind(value) for value, _ in pairs).most_common(1)[0][0]
        chosen = [(value, weight) for value, weight in pairs if _kind(value) == kind]
        chosen_weights = [weight for _, weight in chosen]
        rows = [value if isinstance(value, tuple) else (value,) for value, _ in chosen]
        columns = list(zip(*rows, strict=True))  # one column per list element
        means = [trimmed_mean(column, chosen_weights, trim) for column in columns]
        if any(mean is None for mean in means):
            continue
        finite = [float(mean) for mean in means if mean is not None]
        aggregated[key] = finite[0] if kind == -1 else finite
    return aggregated

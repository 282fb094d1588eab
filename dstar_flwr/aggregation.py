"""The dSTAR aggregation rule as pure functions on flat update vectors.

Nothing here knows about Flower: the inputs are 1-D float arrays (pseudo-gradients
``u_i = w_i - w``, in arrival order), the output is one aggregate update and the
filter's bookkeeping. First-k selection happens before this, in the strategy.

Two filters (``variant``). ``"anchored"``, the default: deviations from the
server's validation update, accepted within a robust z-score band (median and Qn
of the deviations, and of the norms), chosen by ``python -m simulations.benchmarks.robustness``
against rule-aware attacks. ``"paper"``: our reading of the paper (full text
unavailable, see the README), where every guess is a keyword argument:
``threshold_factor`` (c), ``scale`` (how the deviations' scale s is estimated),
``center`` (ensemble median with or without the validation update) and the
``k - f`` cap (``cap_accepted``). ``weights`` are trusted: bound any claim first.

Cost: the inputs are never stacked into an (n, d) copy. With numba (a dependency)
and inputs of at least ``_KERNEL_MIN_ELEMENTS`` values, one compiled pass computes
the center and all deviations, and a second one the weighted mean of the accepted
updates (see "the compiled path" below); smaller inputs take an equivalent numpy
path. ``simulations/benchmarks/bench_aggregation.py`` measures both against a plain mean and
Flower's robust aggregation functions.
"""

import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

ScaleName = Literal["median", "validation", "max"]
CenterName = Literal["ensemble", "clients"]
VariantName = Literal["anchored", "paper"]

SCALES: tuple[str, ...] = ("median", "validation", "max")
CENTERS: tuple[str, ...] = ("ensemble", "clients")
VARIANTS: tuple[str, ...] = ("anchored", "paper")

DEFAULT_MAX_ROBUST_Z = 3.0


@dataclass(frozen=True)
class DStarAggregation:
    """The result of one application of the dSTAR rule.

    Attributes
    ----------
    aggregate : NDArray
        The aggregate update (1-D, finite). The weighted mean of the accepted
        updates; the center when none is accepted; zeros when there is no finite
        input at all (``source == "none"``).
    center : NDArray | None
        The reference the deviations are measured from: the validation update
        (``"anchored"``; the clients' coordinate-wise median without one) or the
        ensemble median (``"paper"``); None when nothing was finite.
    deviations : NDArray
        ``||u_i - center||_2`` per input update (``inf`` for non-finite updates).
    validation_deviation : float | None
        ``||v - center||_2`` (0 when the center is ``v``), or None without a
        (finite) validation update.
    accepted : tuple[int, ...]
        Indices into the input updates that were averaged, ascending.
    rejected : tuple[int, ...]
        Indices that were filtered out (non-finite ones included), ascending.
    non_finite : tuple[int, ...]
        Indices rejected because they held NaN or Inf.
    threshold : float
        The deviation threshold: ``median + z * Qn`` (``"anchored"``) or ``c * s``
        (``"paper"``; ``inf`` when no scale was defined), never below a
        rounding-size floor.
    scale : float
        ``"anchored"``: the median deviation; ``"paper"``: the robust scale ``s``.
    source : str
        ``"accepted"``, ``"center"`` (nothing accepted) or ``"none"``.
    """

    aggregate: NDArray[np.floating]
    center: NDArray[np.floating] | None
    deviations: NDArray[np.float64]
    validation_deviation: float | None
    accepted: tuple[int, ...]
    rejected: tuple[int, ...]
    non_finite: tuple[int, ...] = field(default_factory=tuple)
    threshold: float = float("inf")
    scale: float = float("nan")
    source: str = "accepted"


def check_byzantine_bound(num_updates: int, num_byzantine: int) -> None:
    """Raise a ValueError unless ``num_updates >= 2 * num_byzantine + 1``.

    Parameters
    ----------
    num_updates : int
        k, the number of updates that take part in the round.
    num_byzantine : int
        f, the assumed bound on Byzantine updates among them.
    """
    if num_byzantine < 0:
        raise ValueError(f"num_byzantine (f) must be >= 0, got {num_byzantine}.")
    if num_updates < 2 * num_byzantine + 1:
        raise ValueError(
            f"dSTAR needs k >= 2f + 1 updates: got k={num_updates} with "
            f"f={num_byzantine}. Raise k (first-k, min-replies) to at least "
            f"{2 * num_byzantine + 1} or lower num-byzantine to at most "
            f"{max((num_updates - 1) // 2, 0)}."
        )


def _numpy_median(block: NDArray[np.floating]) -> NDArray[np.floating]:
    """Coordinate-wise median of the rows of ``block`` with one ``np.partition``.

    One pivot only: numpy's multi-pivot partition is several times slower, so for
    an even number of rows the lower middle value is the maximum of the rows
    left of the upper one. The two are halved before they are added, so that
    their mean cannot overflow (halving a normal number is exact: the result is
    otherwise the same).
    """
    num_rows = block.shape[0]
    if num_rows == 1:
        return block[0].copy()
    upper = num_rows // 2
    partitioned = np.partition(block, upper, axis=0)
    if num_rows % 2:
        return partitioned[upper]
    half = block.dtype.type(0.5)
    return partitioned[:upper].max(axis=0) * half + partitioned[upper] * half


def coordinate_median(stack: NDArray[np.floating]) -> NDArray[np.floating]:
    """Coordinate-wise median of the rows of ``stack``.

    Exact selection, never a sort: a compiled median network over blocks of
    coordinates when numba is available and the stack is large, else one
    ``np.partition`` per block. For an even number of rows it averages the two
    middle values, as ``np.median`` does.

    Parameters
    ----------
    stack : NDArray
        A 2-D array of shape (n, d), n >= 1, all finite.

    Returns
    -------
    NDArray
        The (d,) median, in ``stack``'s dtype.
    """
    stack = np.asarray(stack)
    rows = [_contiguous(row, stack.dtype) for row in stack]
    median, _, _ = _median_and_squares(rows, list(range(len(rows))), [])
    return median


def _distance(row: NDArray[np.floating], center: NDArray[np.floating]) -> float:
    difference = (row - center).astype(np.float64, copy=False)
    return float(np.sqrt(np.dot(difference, difference)))


# --- the compiled path -----------------------------------------------------------
#
# One pass over the inputs computes the center and every deviation: for a block of
# ``_LANES`` coordinates the members' values are copied into a small buffer (it
# stays in the core's cache), a median network (compare-exchange steps, each one
# vectorised across the block's coordinates) selects the middle order statistics,
# and the squared distance of every row to the block's median is accumulated in
# float64 while the rows are still cached. A second pass adds the accepted rows
# with their weights, in float64, block by block. Nothing of size n x d is ever
# allocated: the working set is O(d + n * _LANES) besides the inputs. Chunks of
# coordinates are shared out between threads (the kernels release the GIL);
# partial sums are added in chunk order, so results do not depend on the number
# of threads.

_LANES = 512  # coordinates per block of the median network
_SUM_LANES = 1 << 14  # coordinates per block of the weighted sum
_KERNEL_MIN_ELEMENTS = 1 << 18  # smaller inputs take the numpy path (no JIT)
_CHUNK_ALIGN = 1 << 13  # chunks (tasks handed to threads) are multiples of this ...
_MIN_CHUNKS = 16  # ... and as many as this, so that threads finish together ...
_MAX_CHUNK = 1 << 18  # ... but no larger than this (coordinates)
_ELEMENTS_PER_THREAD = 1 << 21  # below this much work per thread, fewer threads
_NUMPY_BLOCK_ELEMENTS = 1 << 22  # values per block in the numpy path


def _batcher_pairs(size: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs of Batcher's odd-even merge sort for ``size = 2**m``."""
    pairs: list[tuple[int, int]] = []

    def merge(low: int, length: int, gap: int) -> None:
        step = gap * 2
        if step < length:
            merge(low, length, step)
            merge(low + gap, length, step)
            pairs.extend((i, i + gap) for i in range(low + gap, low + length - gap, step))
        else:
            pairs.append((low, low + gap))

    def sort(low: int, length: int) -> None:
        if length > 1:
            half = length // 2
            sort(low, half)
            sort(low + half, half)
            merge(low, length, 1)

    sort(0, size)
    return pairs


@functools.lru_cache(maxsize=64)
def median_network(num_rows: int) -> NDArray[np.intp]:
    """A compare-exchange network that puts the middle order statistics in place.

    Batcher's sorting network for the next power of two, restricted to the first
    ``num_rows`` wires (the others would hold +inf: every step touching one is a
    no-op), then pruned backwards to the steps that can reach the output wires
    ``(num_rows - 1) // 2`` and ``num_rows // 2``.

    Returns
    -------
    NDArray
        Shape (steps, 2): after the steps, in order, each setting
        ``(x[a], x[b]) = (min, max)``, wire ``i`` of the two middle ones holds the
        ``i``-th smallest input.
    """
    size = 1
    while size < num_rows:
        size *= 2
    pairs = [(a, b) for a, b in _batcher_pairs(size) if b < num_rows]
    needed = {(num_rows - 1) // 2, num_rows // 2}
    kept = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    kept.reverse()
    network = np.array(kept, dtype=np.intp).reshape(-1, 2)
    network.flags.writeable = False
    return network


class _Kernels(NamedTuple):
    median_and_squares: Callable[..., None]
    weighted_sum: Callable[..., None]


try:
    from numba import carray, njit, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; numpy takes over
    njit = None

if njit is not None:

    @intrinsic
    def _pointer_to(typingctx, address, like):  # type: ignore[no-untyped-def]
        # An address (int) as a pointer to ``like``'s dtype: the inputs are
        # separate arrays, handed over as a vector of their data addresses.
        pointer_type = types.CPointer(like.dtype)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.inttoptr(args[0], context.get_value_type(pointer_type))

        return pointer_type(address, like), codegen

    @njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
    def _squared_distance(values, center, width):  # type: ignore[no-untyped-def]
        total = 0.0
        check = 0.0
        for lane in range(width):
            value = values[lane]
            difference = np.float64(value - center[lane])
            total += difference * difference
            check += np.float64(value - value)  # NaN iff a value is NaN or Inf
        return total, check

    @njit(nogil=True, cache=True)
    def _median_and_squares_kernel(
        member_addresses,
        row_addresses,
        network,
        half,
        dimension,
        start,
        stop,
        median,
        squares,
        checks,
    ):  # type: ignore[no-untyped-def]
        num_members = member_addresses.shape[0]
        lower = (num_members - 1) // 2
        upper = num_members // 2
        buffer = np.empty((max(num_members, 1), _LANES), dtype=half.dtype)
        for first in range(start, stop, _LANES):
            width = min(_LANES, stop - first)
            if num_members > 0:
                for member in range(num_members):
                    row = carray(_pointer_to(member_addresses[member], half), (dimension,))
                    block = row[first : first + width]
                    target = buffer[member]
                    for lane in range(width):
                        target[lane] = block[lane]
                for step in range(network.shape[0]):
                    a = buffer[network[step, 0]]
                    b = buffer[network[step, 1]]
                    for lane in range(width):
                        x = a[lane]
                        y = b[lane]
                        a[lane] = x if x < y else y
                        b[lane] = y if x < y else x
                center = median[first : first + width]
                low = buffer[lower]
                if lower == upper:
                    for lane in range(width):
                        center[lane] = low[lane]
                else:
                    high = buffer[upper]
                    for lane in range(width):
                        # Halved before the sum, which could overflow.
                        center[lane] = low[lane] * half[0] + high[lane] * half[0]
            center = median[first : first + width]
            for index in range(row_addresses.shape[0]):
                row = carray(_pointer_to(row_addresses[index], half), (dimension,))
                total, check = _squared_distance(row[first : first + width], center, width)
                squares[index] += total
                checks[index] += check

    @njit(nogil=True, cache=True)
    def _weighted_sum_kernel(addresses, weights, like, dimension, start, stop, out):  # type: ignore[no-untyped-def]
        # Four rows per sweep over the accumulator: a quarter of its traffic. The
        # additions stay in row order, as in a row-by-row sum.
        num_rows = addresses.shape[0]
        accumulator = np.empty(_SUM_LANES, dtype=np.float64)
        for first in range(start, stop, _SUM_LANES):
            width = min(_SUM_LANES, stop - first)
            accumulator[:width] = 0.0
            index = 0
            while index + 4 <= num_rows:
                row0 = carray(_pointer_to(addresses[index], like), (dimension,))
                row1 = carray(_pointer_to(addresses[index + 1], like), (dimension,))
                row2 = carray(_pointer_to(addresses[index + 2], like), (dimension,))
                row3 = carray(_pointer_to(addresses[index + 3], like), (dimension,))
                block0 = row0[first : first + width]
                block1 = row1[first : first + width]
                block2 = row2[first : first + width]
                block3 = row3[first : first + width]
                weight0 = weights[index]
                weight1 = weights[index + 1]
                weight2 = weights[index + 2]
                weight3 = weights[index + 3]
                for lane in range(width):
                    accumulator[lane] = (
                        accumulator[lane]
                        + weight0 * np.float64(block0[lane])
                        + weight1 * np.float64(block1[lane])
                        + weight2 * np.float64(block2[lane])
                        + weight3 * np.float64(block3[lane])
                    )
                index += 4
            while index < num_rows:
                row = carray(_pointer_to(addresses[index], like), (dimension,))
                block = row[first : first + width]
                weight = weights[index]
                for lane in range(width):
                    accumulator[lane] += weight * np.float64(block[lane])
                index += 1
            target = out[first : first + width]
            for lane in range(width):
                target[lane] = accumulator[lane]

    _KERNELS: _Kernels | None = _Kernels(_median_and_squares_kernel, _weighted_sum_kernel)
else:  # pragma: no cover
    _KERNELS = None


def deviation_scale(
    client_deviations: NDArray[np.float64],
    validation_deviation: float | None,
    scale: ScaleName,
) -> float:
    """The robust scale ``s`` of the deviations.

    Parameters
    ----------
    client_deviations : NDArray
        Deviations of the finite client updates from the center.
    validation_deviation : float | None
        Deviation of the validation update, if there is one.
    scale : {"median", "validation", "max"}
        ``"median"``: median of all ensemble deviations (clients and validation);
        ``"validation"``: the validation update's deviation alone (falls back to
        ``"median"`` without one); ``"max"``: the larger of the two.

    Returns
    -------
    float
        The scale; ``nan`` when there is nothing to measure.
    """
    ensemble = list(client_deviations)
    if validation_deviation is not None:
        ensemble.append(validation_deviation)
    if not ensemble:
        return float("nan")
    median_scale = float(np.median(ensemble))
    if validation_deviation is None or scale == "median":
        return median_scale
    if scale == "validation":
        return float(validation_deviation)
    return max(median_scale, float(validation_deviation))


def _use_kernels(rows: Sequence[NDArray[np.floating]]) -> Any:
    """The kernels when they apply to ``rows`` (float32/64, large enough), else None."""
    if not rows or rows[0].dtype not in (np.float32, np.float64):
        return None
    if len(rows) * rows[0].shape[0] < _KERNEL_MIN_ELEMENTS:
        return None
    return _KERNELS


def _chunk_bounds(dimension: int) -> list[int]:
    """Split ``range(dimension)`` into chunks: the tasks that threads take in turn.

    The chunks depend on ``dimension`` only, not on the number of threads, so the
    results do not either (partial sums are added chunk by chunk, in order).
    """
    size = -(-dimension // _MIN_CHUNKS)
    size = min(max(-(-size // _CHUNK_ALIGN) * _CHUNK_ALIGN, _CHUNK_ALIGN), _MAX_CHUNK)
    return [*range(0, dimension, size), dimension] if dimension else [0, 0]


def _run_chunks(task: Callable[[int, int, int], None], bounds: list[int], work: int) -> None:
    """Run ``task(chunk, start, stop)`` for every chunk, on up to one thread per core.

    Threads take the next chunk as they finish one (the kernels release the GIL),
    so a core that is busy with something else slows the call down less than a
    fixed split would.
    """
    num_chunks = len(bounds) - 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    num_threads = max(1, min(cores, num_chunks, work // _ELEMENTS_PER_THREAD))
    if num_threads == 1:
        for chunk in range(num_chunks):
            task(chunk, bounds[chunk], bounds[chunk + 1])
        return
    pending = iter(range(num_chunks))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            with lock:
                chunk = next(pending, None)
            if chunk is None:
                return
            try:
                task(chunk, bounds[chunk], bounds[chunk + 1])
            except BaseException as error:  # noqa: BLE001 - re-raised below
                errors.append(error)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(num_threads - 1)]
    for thread in threads:
        thread.start()
    worker()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _addresses(rows: Sequence[NDArray[np.floating]]) -> NDArray[np.intp]:
    return np.array([row.ctypes.data for row in rows], dtype=np.intp).reshape(-1)


def _median_and_squares(
    rows: Sequence[NDArray[np.floating]],
    members: Sequence[int],
    measured: Sequence[int],
) -> tuple[NDArray[np.floating], NDArray[np.float64], NDArray[np.bool_]]:
    """Median of ``rows[members]``, squared distances of ``rows[measured]`` to it.

    ``rows`` are C-contiguous 1-D arrays of one dtype and length; ``members`` is
    non-empty. One pass over the inputs. Returns the (d,) median, per measured row
    the sum of its squared differences to the median (differences in the rows'
    dtype, squared and summed in float64), and per measured row whether all its
    values are finite. Both are only meaningful when every member is finite: the
    caller checks that with the flags and calls again without the others.
    """
    kernels = _use_kernels(rows)
    if kernels is None:
        return _numpy_median_and_squares(rows, members, measured)
    dtype = rows[0].dtype
    dimension = rows[0].shape[0]
    member_addresses = _addresses([rows[i] for i in members])
    row_addresses = _addresses([rows[i] for i in measured])
    network = median_network(len(members))
    half = np.array([0.5], dtype=dtype)
    median = np.empty(dimension, dtype=dtype)
    bounds = _chunk_bounds(dimension)
    squares = np.zeros((len(bounds) - 1, len(measured)), dtype=np.float64)
    checks = np.zeros_like(squares)

    def task(chunk: int, start: int, stop: int) -> None:
        kernels.median_and_squares(
            member_addresses,
            row_addresses,
            network,
            half,
            dimension,
            start,
            stop,
            median,
            squares[chunk],
            checks[chunk],
        )

    _run_chunks(task, bounds, (len(members) + len(measured)) * dimension)
    return median, squares.sum(axis=0), np.isfinite(checks.sum(axis=0))


def _numpy_median_and_squares(
    rows: Sequence[NDArray[np.floating]],
    members: Sequence[int],
    measured: Sequence[int],
) -> tuple[NDArray[np.floating], NDArray[np.float64], NDArray[np.bool_]]:
    """:func:`_median_and_squares` in numpy, block by block of coordinates."""
    dimension = rows[0].shape[0]
    median = np.empty(dimension, dtype=rows[0].dtype)
    squares = np.zeros(len(measured), dtype=np.float64)
    finite = np.ones(len(measured), dtype=bool)
    width = max(1, _NUMPY_BLOCK_ELEMENTS // len(members))
    with np.errstate(all="ignore"):  # non-finite rows are reported, not warned about
        for first in range(0, dimension, width):
            last = min(first + width, dimension)
            center = _numpy_median(np.stack([rows[i][first:last] for i in members]))
            median[first:last] = center
            for position, index in enumerate(measured):
                block = rows[index][first:last]
                finite[position] &= bool(np.isfinite(block).all())
                difference = (block - center).astype(np.float64)
                squares[position] += np.dot(difference, difference)
    return median, squares, finite


def _weighted_sum(
    rows: Sequence[NDArray[np.floating]], weights: NDArray[np.float64]
) -> NDArray[np.floating]:
    """``sum(w_i * rows[i])`` accumulated in float64, returned in the rows' dtype."""
    dtype = rows[0].dtype
    dimension = rows[0].shape[0]
    kernels = _use_kernels(rows)
    out = np.empty(dimension, dtype=dtype)
    if kernels is None:
        total = np.zeros(dimension, dtype=np.float64)
        scratch = np.empty(dimension, dtype=np.float64)
        with np.errstate(over="ignore"):  # saturated below
            for row, weight in zip(rows, weights, strict=True):
                np.multiply(row, weight, out=scratch)
                total += scratch
        out[...] = total
    else:
        addresses = _addresses(rows)
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        like = np.zeros(1, dtype=dtype)

        def task(chunk: int, start: int, stop: int) -> None:
            kernels.weighted_sum(addresses, weights, like, dimension, start, stop, out)

        _run_chunks(task, _chunk_bounds(dimension), len(rows) * dimension)
    if dtype == np.float64:
        # Weights sum to 1 only up to rounding: a mean of values near the float64
        # maximum can round past it. It saturates instead (float32 rows cannot).
        limit = np.finfo(dtype).max
        np.clip(out, -limit, limit, out=out)
    return out


def _as_rows(
    updates: Sequence[NDArray[np.floating]],
) -> tuple[list[NDArray[np.floating]], int]:
    """Check the updates; return them as C-contiguous arrays of one float dtype."""
    if len(updates) == 0:
        raise ValueError("dstar_aggregate needs at least one update, got none.")
    arrays = [np.asarray(update) for update in updates]
    lengths = set()
    for index, array in enumerate(arrays):
        if array.ndim != 1:
            raise ValueError(
                f"Update {index} has shape {array.shape}: pass flat 1-D vectors "
                "(flatten each model's arrays and concatenate them)."
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"Update {index} has dtype {array.dtype}: pass floating-point vectors."
            )
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise ValueError(
            f"Updates have different lengths {sorted(lengths)}: every update must "
            "cover the same parameters."
        )
    dtype = np.result_type(*(array.dtype for array in arrays), np.float32)
    return [_contiguous(array, dtype) for array in arrays], lengths.pop()


def _contiguous(array: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[np.floating]:
    """``array`` as a C-contiguous, aligned, native-order array of ``dtype`` (no copy if it is)."""
    return np.require(np.asarray(array), dtype=dtype, requirements=("C", "A"))


def _checked_weights(weights: Sequence[float] | None, count: int) -> NDArray[np.float64]:
    if weights is None:
        return np.ones(count, dtype=np.float64)
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (count,):
        raise ValueError(f"weights has shape {array.shape}: give one weight per update ({count}).")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError("weights must be finite and non-negative.")
    # Only their ratios matter: at most 1, their sum and median cannot overflow.
    largest = float(array.max(initial=0.0))
    return array / largest if largest > 0 else array


def qn_scale(values: NDArray[np.float64]) -> float:
    """Rousseeuw and Croux's Qn: a robust scale from the pairwise differences.

    The ``h (h - 1) / 2``-th smallest of the ``|x_i - x_j|`` (``h = n // 2 + 1``),
    times 2.2219 and a small-sample correction, estimates a normal sample's
    standard deviation, with 82% efficiency (the MAD's is 37%, so a band from
    the MAD rejects more honest updates by chance). Values far out cannot
    blow it up: they only add large differences above the order statistic it
    takes. O(n^2) on the n deviations (not on the updates).
    """
    count = len(values)
    if count < 2:
        return 0.0
    differences = np.abs(values[:, None] - values[None, :])[np.triu_indices(count, 1)]
    half = count // 2 + 1
    rank = half * (half - 1) // 2
    order = float(np.partition(differences, rank - 1)[rank - 1])
    small = {2: 0.399, 3: 0.994, 4: 0.512, 5: 0.844, 6: 0.611, 7: 0.857, 8: 0.669, 9: 0.872}
    correction = small.get(count, count / (count + 1.4) if count % 2 else count / (count + 3.8))
    return 2.2219 * correction * order


def robust_spread(values: NDArray[np.float64]) -> tuple[float, float]:
    """The median of ``values`` and their Qn scale (see :func:`qn_scale`).

    Neither can be blown up by fewer than half of the values: with ``f < k / 2``
    Byzantine values both stay within what the honest values alone allow. A
    cluster of identical values can shrink the scale (it can for every robust
    scale), which makes the filter stricter: it costs honest updates, and gives
    the cluster, which must itself lie within the band, a larger share.
    """
    finite = values[np.isfinite(values)]
    return float(np.median(values)), qn_scale(finite) if len(finite) == len(values) else float(
        qn_scale(np.where(np.isfinite(values), values, np.finfo(np.float64).max))
    )


def threshold_floor(scale: float, magnitude: float, dtype: np.dtype[Any]) -> float:
    """The smallest threshold: a rounding-size margin above the scale.

    Without it, a scale of zero (most updates bit-identical) gives a threshold of
    zero, and an update that differs by one rounding error is rejected. The
    margin is ``sqrt(eps)`` of the dtype relative to the scale and ``magnitude``
    (the reference's norm), plus ``eps`` in absolute terms: far below any step
    that changes a model, and not set by any client.
    """
    info = np.finfo(dtype)
    return scale + float(np.sqrt(info.eps)) * (scale + magnitude) + float(info.eps)


def _squared_norm(row: NDArray[np.floating]) -> float:
    return float(np.einsum("i,i->", row, row, dtype=np.float64))


def _finite_validation(
    validation: NDArray[np.floating] | None, dimension: int, dtype: np.dtype[Any]
) -> NDArray[np.floating] | None:
    if validation is None:
        return None
    validation = np.asarray(validation)
    if validation.shape != (dimension,):
        raise ValueError(f"validation has shape {validation.shape}, the updates ({dimension},).")
    validation = _contiguous(validation, dtype)
    with np.errstate(all="ignore"):
        return validation if bool(np.isfinite(validation).all()) else None


def _reference_and_squares(
    rows: list[NDArray[np.floating]],
    validation: NDArray[np.floating] | None,
    members: list[int],
) -> tuple[NDArray[np.floating] | None, NDArray[np.float64], NDArray[np.bool_]]:
    """The median of ``measured[members]`` and every measured row's squared distance to it.

    ``measured`` is the updates followed by the validation update (when there is
    one). One pass; when a member was not finite, a second pass without it
    (rare). Returns None as the median when no member is finite.
    """
    measured = [*rows, validation] if validation is not None else list(rows)
    all_rows = list(range(len(measured)))
    median, squares, finite = _median_and_squares(measured, members, all_rows)
    if not finite[members].all():
        members = [i for i in members if finite[i]]
        if not members:
            return None, squares, finite
        median, squares = _median_and_squares(measured, members, all_rows)[:2]
    return median, squares, finite


# pylint: disable=too-many-arguments,too-many-locals,too-many-branches,too-many-statements
def dstar_aggregate(
    updates: Sequence[NDArray[np.floating]],
    *,
    num_byzantine: int,
    validation: NDArray[np.floating] | None = None,
    weights: Sequence[float] | None = None,
    variant: VariantName = "anchored",
    max_robust_z: float = DEFAULT_MAX_ROBUST_Z,
    threshold_factor: float = 2.0,
    scale: ScaleName = "median",
    center: CenterName = "ensemble",
    cap_accepted: bool | None = None,
    norm_test: bool = True,
) -> DStarAggregation:
    """Apply the dSTAR filter and average the surviving updates.

    Two variants (see the README, "Our reading of the paper" and "The hardened
    default"):

    ``"anchored"`` (default): the reference ``r`` is the server's validation
    update ``v`` (trusted: no client can move it), or the coordinate-wise median
    of the updates when there is no ``v``. Deviations ``d_i = ||u_i - r||``;
    ``u_i`` is accepted when ``d_i <= med(d) + z * 1.4826 * MAD(d)``, a robust
    z-score of at most ``max_robust_z``. The median and MAD of the deviations
    break down only at ``f >= k / 2``, so attackers cannot stretch the band
    beyond the honest deviations' range, and a colluding cluster gains nothing
    from dragging a coordinate median towards itself. Every update with a
    deviation at or below the median is accepted, so at least half are. No
    ``k - f`` cap by default: with no attack every honest update is averaged.

    ``"paper"``: our reading of the paper. The center ``m`` is the coordinate-wise
    median of the finite updates together with ``v``; ``d_i = ||u_i - m||``;
    ``u_i`` is accepted when ``d_i <= c * s`` (``s`` from
    :func:`deviation_scale`), at most ``k - f`` (the largest deviations are
    dropped first).

    The aggregate is the weighted mean of the accepted updates, or the reference
    when none is accepted.

    Parameters
    ----------
    updates : Sequence[NDArray]
        k flat update vectors of equal length, in arrival order.
    num_byzantine : int
        f, the assumed bound on Byzantine updates; ``k >= 2f + 1`` is required.
    validation : NDArray, optional
        The server's validation update ``v`` (same length). Ignored when it is
        not finite.
    weights : Sequence[float], optional
        One trusted non-negative weight per update; uniform if None. A weight
        derived from a client's claim must be bounded by the caller (see
        :meth:`dstar_flwr.DStarRule.example_weights`): here it is taken as is.
    variant : {"anchored", "paper"} (default: "anchored")
        The filter, see above.
    max_robust_z : float (default: 3.0)
        ``"anchored"``: the largest accepted robust z-score of a deviation.
        Chosen by ``python -m simulations.benchmarks.robustness``.
    threshold_factor : float (default: 2.0)
        ``"paper"``: c, the multiple of the scale up to which a deviation is
        accepted. A guess.
    scale : {"median", "validation", "max"} (default: "median")
        ``"paper"``: how ``s`` is estimated, see :func:`deviation_scale`. A guess.
    center : {"ensemble", "clients"} (default: "ensemble")
        ``"paper"``: ``"ensemble"`` takes the median over the updates and ``v``;
        ``"clients"`` over the updates alone (an ablation).
    cap_accepted : bool, optional
        Accept at most ``k - f`` updates. None: the variant's default (True for
        ``"paper"``, False for ``"anchored"``).

    Returns
    -------
    DStarAggregation
        The aggregate and the filter's bookkeeping.

    Raises
    ------
    ValueError
        No updates, unequal lengths, non-flat or non-float updates, ``k < 2f + 1``,
        or invalid parameters.
    """
    _check_filter_settings(variant, max_robust_z, threshold_factor, scale, center)
    rows, dimension = _as_rows(updates)
    num_updates = len(rows)
    dtype = rows[0].dtype
    check_byzantine_bound(num_updates, num_byzantine)
    weight_array = _checked_weights(weights, num_updates)
    validation = _finite_validation(validation, dimension, dtype)
    if cap_accepted is None:
        cap_accepted = variant == "paper"

    # One pass: the reference and every deviation (the validation update's too),
    # and which inputs hold NaN or Inf. Non-finite inputs never take part in a
    # median.
    members = _reference_members(num_updates, validation is not None, variant, center)
    reference, squares, finite = _reference_and_squares(rows, validation, members)
    non_finite = tuple(int(i) for i in np.flatnonzero(~finite[:num_updates]))
    finite_rows = np.flatnonzero(finite[:num_updates])
    if reference is None:
        return DStarAggregation(
            aggregate=np.zeros(dimension, dtype=dtype),
            center=None,
            deviations=np.full(num_updates, np.inf),
            validation_deviation=None,
            accepted=(),
            rejected=tuple(range(num_updates)),
            non_finite=non_finite,
            source="none",
        )

    deviations = np.full(num_updates, np.inf)
    deviations[finite_rows] = np.sqrt(squares[finite_rows])
    validation_deviation = float(np.sqrt(squares[num_updates])) if validation is not None else None
    if variant == "anchored":
        reference_norm = _distance(reference, np.zeros(1, dtype=dtype))
        scale_value, threshold = _anchored_threshold(
            deviations[finite_rows], reference_norm, max_robust_z, dtype
        )
    else:
        scale_value, threshold = _paper_threshold(
            deviations[finite_rows], validation_deviation, threshold_factor, scale, dtype
        )

    candidates = [int(i) for i in finite_rows if deviations[i] <= threshold]
    if variant == "anchored" and norm_test and candidates:
        within = _within_norm_band(rows, finite_rows, max_robust_z, dtype)
        candidates = [i for i in candidates if i in within]
    if cap_accepted:
        # Stable sort: ties keep arrival order, so the result does not depend on
        # anything but the updates' values and positions.
        candidates.sort(key=lambda i: (deviations[i], i))
        candidates = candidates[: num_updates - num_byzantine]
    accepted = tuple(sorted(candidates))
    accepted_set = set(accepted)
    if accepted:
        aggregate = _weighted_mean([rows[i] for i in accepted], weight_array[list(accepted)])
    else:
        aggregate = reference.copy()

    return DStarAggregation(
        aggregate=aggregate,
        center=reference,
        deviations=deviations,
        validation_deviation=validation_deviation,
        accepted=accepted,
        rejected=tuple(i for i in range(num_updates) if i not in accepted_set),
        non_finite=non_finite,
        threshold=float(threshold),
        scale=float(scale_value),
        source="accepted" if accepted else "center",
    )


def _check_filter_settings(
    variant: str, max_robust_z: float, threshold_factor: float, scale: str, center: str
) -> None:
    """Fail on a filter setting that cannot work, saying what was given."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    if threshold_factor <= 0 or not np.isfinite(threshold_factor):
        raise ValueError(f"threshold_factor must be > 0, got {threshold_factor}.")
    if not (max_robust_z >= 0 and np.isfinite(max_robust_z)):
        raise ValueError(f"max_robust_z must be >= 0 and finite, got {max_robust_z}.")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    if center not in CENTERS:
        raise ValueError(f"center must be one of {CENTERS}, got {center!r}.")


def _reference_members(
    num_updates: int, has_validation: bool, variant: str, center: str
) -> list[int]:
    """The inputs whose coordinate-wise median is the reference (index k: ``v``).

    The anchored reference is ``v`` itself, the "median" of ``v`` alone; without
    ``v``, and in the paper's reading, it is the median of the updates (with
    ``v`` for the ensemble center).
    """
    if variant == "anchored" and has_validation:
        return [num_updates]
    members = list(range(num_updates))
    if has_validation and variant == "paper" and center == "ensemble":
        members.append(num_updates)
    return members


def _anchored_threshold(
    finite_deviations: NDArray[np.float64],
    reference_norm: float,
    max_robust_z: float,
    dtype: np.dtype[Any],
) -> tuple[float, float]:
    """The anchored variant's scale (the median deviation) and band edge."""
    middle, spread = robust_spread(finite_deviations)
    threshold = max(middle + max_robust_z * spread, threshold_floor(middle, reference_norm, dtype))
    return middle, threshold


def _paper_threshold(
    finite_deviations: NDArray[np.float64],
    validation_deviation: float | None,
    threshold_factor: float,
    scale: ScaleName,
    dtype: np.dtype[Any],
) -> tuple[float, float]:
    """Our reading of the paper: the scale ``s`` and the threshold ``c * s``."""
    scale_value = deviation_scale(finite_deviations, validation_deviation, scale)
    if not np.isfinite(scale_value):
        return scale_value, np.inf
    # The floor leaves out the reference's norm: it keeps this variant exactly
    # translation-equivariant (``tests/test_properties.py``).
    return scale_value, max(
        threshold_factor * scale_value, threshold_floor(0.0, scale_value, dtype)
    )


def _within_norm_band(
    rows: Sequence[NDArray[np.floating]],
    finite_rows: NDArray[np.intp],
    max_robust_z: float,
    dtype: np.dtype[Any],
) -> set[int]:
    """The finite updates whose norm is no robust outlier among theirs."""
    norms = np.array([_squared_norm(rows[i]) for i in finite_rows]) ** 0.5
    middle, spread = robust_spread(norms)
    band = max(max_robust_z * spread, threshold_floor(0.0, middle, dtype))
    # Written as "within", not "not outside": an infinite norm minus an infinite
    # median is NaN, and such an update must not pass.
    return {
        int(i) for i, norm in zip(finite_rows, norms, strict=True) if abs(norm - middle) <= band
    }


def _weighted_mean(
    rows: Sequence[NDArray[np.floating]], weights: NDArray[np.float64]
) -> NDArray[np.floating]:
    """The mean of ``rows`` with ``weights`` normalised (all zero: equal weights)."""
    if weights.sum() <= 0:
        weights = np.ones(len(rows))
    return _weighted_sum(rows, weights / weights.sum())

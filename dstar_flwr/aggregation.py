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

Cost: the inputs are never stacked into an (n, d) copy, and only
:class:`UpdateRows` touches the d-length data. Numpy arrays: with numba (a
dependency) and inputs of at least ``_KERNEL_MIN_ELEMENTS`` values, one compiled
pass computes the reference, every deviation and norm and, when every update may
be accepted, their weighted mean; a second pass averages the accepted updates
only when some are rejected (see "the compiled path" below). Smaller inputs take
an equivalent numpy path. Torch tensors (or ``device=``) take the same steps with
torch on the tensors' device (:mod:`dstar_flwr.torch_aggregation`; torch is
imported only then). ``simulations/benchmarks/bench_aggregation.py`` measures
both against a plain mean and Flower's robust aggregation functions.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

import numpy as np
from numpy.typing import NDArray

ScaleName = Literal["median", "validation", "max"]
CenterName = Literal["ensemble", "clients"]
VariantName = Literal["anchored", "paper"]
# A d-length vector: a numpy array, or a torch tensor when the updates are tensors
# (torch is optional, so it is not named here).
Vector: TypeAlias = Any

SCALES: tuple[str, ...] = ("median", "validation", "max")
CENTERS: tuple[str, ...] = ("ensemble", "clients")
VARIANTS: tuple[str, ...] = ("anchored", "paper")

DEFAULT_MAX_ROBUST_Z = 3.0


@dataclass(frozen=True)
class DStarAggregation:
    """The result of one application of the dSTAR rule.

    Attributes
    ----------
    aggregate : NDArray | torch.Tensor
        The aggregate update (1-D, finite). The weighted mean of the accepted
        updates; the center when none is accepted; zeros when there is no finite
        input at all (``source == "none"``). A tensor on the updates' device when
        they are torch tensors, else a numpy array.
    center : NDArray | torch.Tensor | None
        The reference the deviations are measured from: the validation update
        (``"anchored"``; the clients' coordinate-wise median without one) or the
        ensemble median (``"paper"``); None when nothing was finite. Same kind
        as ``aggregate``.
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

    aggregate: Vector
    center: Vector | None
    deviations: NDArray[np.float64]
    validation_deviation: float | None
    accepted: tuple[int, ...]
    rejected: tuple[int, ...]
    non_finite: tuple[int, ...] = field(default_factory=tuple)
    threshold: float = float("inf")
    scale: float = float("nan")
    source: str = "accepted"


class Measurements(NamedTuple):
    """What one pass over the inputs gives the filter (see :meth:`UpdateRows.measure`).

    The inputs are the updates, then the validation update when there is one.

    Attributes
    ----------
    reference : Vector
        The coordinate-wise median of the members, in the inputs' dtype.
    reference_norm : float
        ``||reference||_2``.
    squares : NDArray[np.float64]
        Per input, ``||x - reference||^2``: differences in the inputs' dtype,
        squared and summed in float64.
    norms : NDArray[np.float64]
        Per input, ``||x||^2``, squared and summed in float64.
    finite : NDArray[np.bool_]
        Per input, whether all its values are finite. The reference and the sums
        are only meaningful when every member is.
    mean : Vector | None
        The weighted mean of all updates, when it was asked for and the pass
        computed it; None otherwise.
    """

    reference: Vector
    reference_norm: float
    squares: NDArray[np.float64]
    norms: NDArray[np.float64]
    finite: NDArray[np.bool_]
    mean: Vector | None = None


class UpdateRows(Protocol):
    """The updates and the validation update, where the rule's passes over them run.

    :func:`dstar_aggregate` touches the d-length data only through these
    methods; the filter works on the per-input numbers they return. Numpy
    arrays on the host take :class:`HostRows` (compiled kernels); torch tensors
    take :class:`dstar_flwr.torch_aggregation.TorchRows`, on their device.
    """

    num_updates: int
    has_validation: bool
    dtype: np.dtype[Any]

    def measure(
        self, members: Sequence[int], mean_weights: NDArray[np.float64] | None
    ) -> Measurements:
        """One pass: the median of ``members`` and every input's sums.

        ``members`` index the inputs (``num_updates`` is the validation update);
        with ``mean_weights`` (one per update, summing to 1) the pass may also
        return the weighted mean of all updates.
        """
        ...

    def weighted_mean(self, indices: Sequence[int], weights: NDArray[np.float64]) -> Vector:
        """``sum_j weights[j] * update[indices[j]]`` (weights summing to 1), in float64."""
        ...

    def zeros(self) -> Vector:
        """A zero vector of the updates' length and dtype."""
        ...

    def export(self, vector: Vector, copy: bool = False) -> Vector:
        """``vector`` in the form the rule returns (the inputs' kind), copied if ``copy``."""
        ...


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
    return _measure(rows, list(range(len(rows))), None, measure_rows=False).reference


# --- the compiled path -----------------------------------------------------------
#
# One pass over the inputs measures everything the filter needs. For a block of
# ``_LANES`` coordinates the reference is formed first: the validation update's
# values, or the members' values copied into a small buffer (it stays in the
# core's cache) and put through a median network (compare-exchange steps, each one
# vectorised across the block's coordinates). Then, four inputs per sweep over the
# block, every input's squared distance to it and squared norm are accumulated in
# float64 and, when every update may be accepted, their weighted sum too, into a
# float64 accumulator of one block: one read of each input does it all. Only when
# some update is rejected does a second pass add the accepted ones, block by block.
# Nothing of size n x d is ever allocated: the working set is O(d + n * _LANES)
# besides the inputs. Chunks of coordinates are shared out between the threads of
# a pool that lives as long as the process (the kernels release the GIL); partial
# sums are added in chunk order, so results do not depend on the number of threads.

_LANES = 2048  # coordinates per block of the measuring pass
_SUM_LANES = 1 << 14  # coordinates per block of the weighted sum
_KERNEL_MIN_ELEMENTS = 1 << 18  # smaller inputs take the numpy path (no JIT)
_CHUNK_ALIGN = 1 << 13  # chunks (tasks handed to threads) are multiples of this ...
_MIN_CHUNKS = 16  # ... and as many as this, so that threads finish together, ...
_MIN_CHUNK_ELEMENTS = 1 << 19  # ... unless that leaves fewer values (across the rows) ...
_MAX_CHUNK = 1 << 18  # ... and no larger than this (coordinates)
_ELEMENTS_PER_THREAD = 1 << 19  # below this much work per thread, fewer threads
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
    measure: Callable[..., None]
    weighted_sum: Callable[..., None]


try:
    from numba import carray, njit, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; numpy takes over
    njit = None

if njit is not None:
    # "contract" lets a * b + c be one fused multiply-add, in every kernel alike;
    # "reassoc" lets the sums over a block's lanes run in vector registers.
    _SUMS = {"reassoc", "contract"}

    @intrinsic
    def _pointer_to(typingctx, address, like):  # type: ignore[no-untyped-def]
        # An address (int) as a pointer to ``like``'s dtype: the inputs are
        # separate arrays, handed over as a vector of their data addresses.
        pointer_type = types.CPointer(like.dtype)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.inttoptr(args[0], context.get_value_type(pointer_type))

        return pointer_type(address, like), codegen

    @njit(nogil=True, cache=True, fastmath=_SUMS)
    def _one_row(row, center, weights, index, accumulator, squares, norms, checks):  # type: ignore[no-untyped-def]
        # Adds row ``index``'s ||x - center||^2 and ||x||^2 (float64) and its check
        # (NaN iff a value is NaN or Inf: a float64 square can overflow for finite
        # values) to the sums, and weights[index] * x to the accumulator.
        weight = weights[index]
        total = 0.0
        norm = 0.0
        check = row[0] - row[0]
        for lane in range(center.shape[0]):
            value = row[lane]
            difference = np.float64(value - center[lane])
            total += difference * difference
            wide = np.float64(value)
            norm += wide * wide
            check += value - value
            accumulator[lane] += weight * wide
        squares[index] += total
        norms[index] += norm
        checks[index] += check

    @njit(nogil=True, cache=True, fastmath=_SUMS)
    def _four_rows(
        row0, row1, row2, row3, center, weights, index, accumulator, squares, norms, checks
    ):  # type: ignore[no-untyped-def]
        # _one_row for rows index, ..., index + 3 in one sweep: a quarter of the
        # accumulator's traffic and loop overhead. Each row's sums are the same as
        # _one_row's, and the additions into the accumulator stay in row order.
        weight0 = weights[index]
        weight1 = weights[index + 1]
        weight2 = weights[index + 2]
        weight3 = weights[index + 3]
        total0 = total1 = total2 = total3 = 0.0
        norm0 = norm1 = norm2 = norm3 = 0.0
        check0 = row0[0] - row0[0]
        check1 = row1[0] - row1[0]
        check2 = row2[0] - row2[0]
        check3 = row3[0] - row3[0]
        for lane in range(center.shape[0]):
            reference = center[lane]
            value0 = row0[lane]
            value1 = row1[lane]
            value2 = row2[lane]
            value3 = row3[lane]
            difference0 = np.float64(value0 - reference)
            difference1 = np.float64(value1 - reference)
            difference2 = np.float64(value2 - reference)
            difference3 = np.float64(value3 - reference)
            total0 += difference0 * difference0
            total1 += difference1 * difference1
            total2 += difference2 * difference2
            total3 += difference3 * difference3
            wide0 = np.float64(value0)
            wide1 = np.float64(value1)
            wide2 = np.float64(value2)
            wide3 = np.float64(value3)
            norm0 += wide0 * wide0
            norm1 += wide1 * wide1
            norm2 += wide2 * wide2
            norm3 += wide3 * wide3
            check0 += value0 - value0
            check1 += value1 - value1
            check2 += value2 - value2
            check3 += value3 - value3
            accumulator[lane] = (
                accumulator[lane]
                + weight0 * wide0
                + weight1 * wide1
                + weight2 * wide2
                + weight3 * wide3
            )
        squares[index] += total0
        squares[index + 1] += total1
        squares[index + 2] += total2
        squares[index + 3] += total3
        norms[index] += norm0
        norms[index + 1] += norm1
        norms[index + 2] += norm2
        norms[index + 3] += norm3
        checks[index] += check0
        checks[index + 1] += check1
        checks[index + 2] += check2
        checks[index + 3] += check3

    @njit(nogil=True, cache=True, fastmath=_SUMS)
    def _block_squares(values):  # type: ignore[no-untyped-def]
        total = 0.0
        for lane in range(values.shape[0]):
            wide = np.float64(values[lane])
            total += wide * wide
        return total

    @njit(nogil=True, cache=True)
    def _block_of(address, like, dimension, first, width):  # type: ignore[no-untyped-def]
        # Coordinates [first, first + width) of the input at ``address``. A slice,
        # not row[first + lane] in the loops: that index is not known to be
        # non-negative, and its wraparound check keeps the loops scalar.
        return carray(_pointer_to(address, like), (dimension,))[first : first + width]

    @njit(nogil=True, cache=True)
    def _select_median(member_addresses, network, half, dimension, first, buffer, center):  # type: ignore[no-untyped-def]
        # The members' median of coordinates [first, first + len(center)) into center.
        num_members = member_addresses.shape[0]
        width = center.shape[0]
        if num_members == 1:
            source = _block_of(member_addresses[0], half, dimension, first, width)
            for lane in range(width):
                center[lane] = source[lane]
            return
        for member in range(num_members):
            source = _block_of(member_addresses[member], half, dimension, first, width)
            target = buffer[member]
            for lane in range(width):
                target[lane] = source[lane]
        for step in range(network.shape[0]):
            a = buffer[network[step, 0]]
            b = buffer[network[step, 1]]
            for lane in range(width):
                x = a[lane]
                y = b[lane]
                a[lane] = x if x < y else y
                b[lane] = y if x < y else x
        low = buffer[(num_members - 1) // 2]
        if num_members % 2:
            for lane in range(width):
                center[lane] = low[lane]
        else:
            high = buffer[num_members // 2]
            for lane in range(width):
                # Halved before the sum, which could overflow.
                center[lane] = low[lane] * half[0] + high[lane] * half[0]

    @njit(nogil=True, cache=True)
    def _measure_kernel(
        member_addresses,
        row_addresses,
        network,
        half,
        dimension,
        start,
        stop,
        lanes,
        median,
        squares,
        norms,
        checks,
        center_squares,
        weights,
        mean,
    ):  # type: ignore[no-untyped-def]
        # Coordinates [start, stop). Every row adds weights[row] * x into the
        # block's accumulator, written to ``mean`` unless it is empty. A row of
        # weight 0 adds 0: it leaves the sum as it is, the rows being finite
        # whenever the mean is used.
        num_rows = row_addresses.shape[0]
        buffer = np.empty((member_addresses.shape[0], lanes), dtype=half.dtype)
        accumulator = np.zeros(lanes, dtype=np.float64)
        for first in range(start, stop, lanes):
            width = min(lanes, stop - first)
            center = median[first : first + width]
            _select_median(member_addresses, network, half, dimension, first, buffer, center)
            center_squares[0] += _block_squares(center)
            block = accumulator[:width]
            index = 0
            while index + 4 <= num_rows:
                _four_rows(
                    _block_of(row_addresses[index], half, dimension, first, width),
                    _block_of(row_addresses[index + 1], half, dimension, first, width),
                    _block_of(row_addresses[index + 2], half, dimension, first, width),
                    _block_of(row_addresses[index + 3], half, dimension, first, width),
                    center,
                    weights,
                    index,
                    block,
                    squares,
                    norms,
                    checks,
                )
                index += 4
            while index < num_rows:
                row = _block_of(row_addresses[index], half, dimension, first, width)
                _one_row(row, center, weights, index, block, squares, norms, checks)
                index += 1
            if mean.shape[0]:
                target = mean[first : first + width]
                for lane in range(width):
                    target[lane] = block[lane]
            block[:] = 0.0

    @njit(nogil=True, cache=True, fastmath={"contract"})
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

    _KERNELS: _Kernels | None = _Kernels(_measure_kernel, _weighted_sum_kernel)
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
    half = count // 2 + 1
    rank = half * (half - 1) // 2
    # All n^2 differences, not the pairs i < j alone: sorted, they are the n zeros
    # of the diagonal, then every pair's difference twice, so the rank-th pair is
    # at n + 2 rank (no index arrays to build).
    position = count + 2 * rank - 1
    differences = np.abs(values[:, None] - values[None, :]).ravel()
    order = float(np.partition(differences, position)[position])
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


def _use_kernels(rows: Sequence[NDArray[np.floating]]) -> _Kernels | None:
    """The kernels when they apply to ``rows`` (float32/64, large enough), else None."""
    if not rows or rows[0].dtype not in (np.float32, np.float64):
        return None
    if len(rows) * rows[0].shape[0] < _KERNEL_MIN_ELEMENTS:
        return None
    return _KERNELS


def _chunk_bounds(dimension: int, num_rows: int) -> list[int]:
    """Split ``range(dimension)`` into chunks: the tasks that threads take in turn.

    The chunks depend on the inputs' shape only, not on the number of threads, so
    the results do not either (partial sums are added chunk by chunk, in order).
    ``_MIN_CHUNKS`` chunks of equal size, fewer where a chunk would hold fewer
    than ``_MIN_CHUNK_ELEMENTS`` values across the rows: a kernel call costs
    microseconds, which small chunks would not repay.
    """
    num_chunks = max(1, min(_MIN_CHUNKS, dimension * num_rows // _MIN_CHUNK_ELEMENTS))
    size = -(-dimension // num_chunks)
    size = min(max(-(-size // _CHUNK_ALIGN) * _CHUNK_ALIGN, _CHUNK_ALIGN), _MAX_CHUNK)
    return [*range(0, dimension, size), dimension] if dimension else [0, 0]


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    """The helper threads, started once: one per core besides the caller's."""
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = max(1, _available_cores() - 1)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="dstar-aggregation")
        return _pool


def _forget_thread_pool() -> None:
    # A forked child has none of its parent's threads (and maybe a lock one of
    # them held): it starts its own pool.
    global _pool, _pool_lock
    _pool_lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_thread_pool)


def _run_chunks(task: Callable[[int, int, int], None], bounds: list[int], work: int) -> None:
    """Run ``task(chunk, start, stop)`` for every chunk, on up to one thread per core.

    The caller and pooled threads take the next chunk as they finish one (the
    kernels release the GIL), so a core that is busy with something else slows
    the call down less than a fixed split would. Helpers that have not started
    when the caller runs out of chunks are cancelled, not waited for.
    """
    num_chunks = len(bounds) - 1
    num_threads = max(1, min(_available_cores(), num_chunks, work // _ELEMENTS_PER_THREAD))
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

    pool = _thread_pool()
    helpers = [pool.submit(worker) for _ in range(num_threads - 1)]
    worker()
    for helper in helpers:
        if not helper.cancel():
            helper.result()
    if errors:
        raise errors[0]


def _addresses(rows: Sequence[NDArray[np.floating]]) -> NDArray[np.intp]:
    return np.array([row.ctypes.data for row in rows], dtype=np.intp).reshape(-1)


def _measure(
    inputs: Sequence[NDArray[np.floating]],
    members: Sequence[int],
    mean_weights: NDArray[np.float64] | None,
    *,
    measure_rows: bool = True,
) -> Measurements:
    """:meth:`UpdateRows.measure` on C-contiguous arrays of one dtype and length.

    ``members`` is non-empty. With ``mean_weights`` (one per leading input) the
    compiled pass also returns their weighted mean; ``measure_rows=False`` computes
    the median alone (the sums are then empty).
    """
    kernels = _use_kernels(inputs)
    rows = inputs if measure_rows else []
    if kernels is None:
        return _numpy_measure(inputs, members, rows)
    dtype = inputs[0].dtype
    dimension = inputs[0].shape[0]
    addresses = _addresses(inputs)
    member_addresses = addresses[list(members)]
    row_addresses = addresses if measure_rows else addresses[:0]
    network = median_network(len(members))
    half = np.array([0.5], dtype=dtype)
    median = np.empty(dimension, dtype=dtype)
    summed = mean_weights is not None and measure_rows
    weights = np.zeros(len(rows), dtype=np.float64)
    if summed:
        weights[: len(mean_weights)] = mean_weights
    mean = np.empty(dimension if summed else 0, dtype=dtype)
    bounds = _chunk_bounds(dimension, len(members) + len(rows))
    sums = np.zeros((3, len(bounds) - 1, len(rows)), dtype=np.float64)
    center_squares = np.zeros(len(bounds) - 1, dtype=np.float64)

    def task(chunk: int, start: int, stop: int) -> None:
        kernels.measure(
            member_addresses,
            row_addresses,
            network,
            half,
            dimension,
            start,
            stop,
            _LANES,
            median,
            sums[0, chunk],
            sums[1, chunk],
            sums[2, chunk],
            center_squares[chunk : chunk + 1],
            weights,
            mean,
        )

    _run_chunks(task, bounds, (len(members) + len(rows)) * dimension)
    squares, norms, checks = sums.sum(axis=1)
    return Measurements(
        reference=median,
        reference_norm=float(np.sqrt(center_squares.sum())),
        squares=squares,
        norms=norms,
        finite=np.isfinite(checks),
        mean=_saturated(mean) if summed else None,
    )


def _numpy_measure(
    inputs: Sequence[NDArray[np.floating]],
    members: Sequence[int],
    rows: Sequence[NDArray[np.floating]],
) -> Measurements:
    """:func:`_measure` in numpy, block by block of coordinates (no mean)."""
    dimension = inputs[0].shape[0]
    median = np.empty(dimension, dtype=inputs[0].dtype)
    squares = np.zeros(len(rows), dtype=np.float64)
    norms = np.zeros(len(rows), dtype=np.float64)
    finite = np.ones(len(rows), dtype=bool)
    center_squares = 0.0
    width = max(1, _NUMPY_BLOCK_ELEMENTS // len(members))
    with np.errstate(all="ignore"):  # non-finite rows are reported, not warned about
        for first in range(0, dimension, width):
            last = min(first + width, dimension)
            center = _numpy_median(np.stack([inputs[i][first:last] for i in members]))
            median[first:last] = center
            center_squares += _squared_sum(center)
            for position, row in enumerate(rows):
                block = row[first:last]
                finite[position] &= bool(np.isfinite(block).all())
                squares[position] += _squared_sum(block - center)
                norms[position] += _squared_sum(block)
    return Measurements(
        reference=median,
        reference_norm=float(np.sqrt(center_squares)),
        squares=squares,
        norms=norms,
        finite=finite,
    )


def _squared_sum(values: NDArray[np.floating]) -> float:
    wide = values.astype(np.float64, copy=False)
    return float(np.dot(wide, wide))


def _saturated(vector: NDArray[np.floating]) -> NDArray[np.floating]:
    """``vector``, float64 values past the dtype's range clipped to it (in place).

    Weights sum to 1 only up to rounding: a mean of values near the float64
    maximum can round past it. It saturates instead (float32 rows cannot).
    """
    if vector.dtype == np.float64:
        limit = np.finfo(vector.dtype).max
        np.clip(vector, -limit, limit, out=vector)
    return vector


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

        _run_chunks(task, _chunk_bounds(dimension, len(rows)), len(rows) * dimension)
    return _saturated(out)


@dataclass(frozen=True)
class HostRows:
    """The updates (and the validation update) as numpy arrays on the host.

    :class:`UpdateRows` with the compiled kernels, or numpy for small inputs.
    ``inputs`` are C-contiguous arrays of one float dtype and length: the
    updates, then the validation update when ``has_validation``.
    """

    inputs: list[NDArray[np.floating]]
    has_validation: bool

    @property
    def num_updates(self) -> int:
        """k, the number of updates."""
        return len(self.inputs) - int(self.has_validation)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The inputs' dtype."""
        return self.inputs[0].dtype

    def measure(
        self, members: Sequence[int], mean_weights: NDArray[np.float64] | None
    ) -> Measurements:
        """See :meth:`UpdateRows.measure`: one compiled pass over all inputs."""
        return _measure(self.inputs, members, mean_weights)

    def weighted_mean(
        self, indices: Sequence[int], weights: NDArray[np.float64]
    ) -> NDArray[np.floating]:
        """See :meth:`UpdateRows.weighted_mean`."""
        return _weighted_sum([self.inputs[i] for i in indices], weights)

    def zeros(self) -> NDArray[np.floating]:
        """See :meth:`UpdateRows.zeros`."""
        return np.zeros(self.inputs[0].shape[0], dtype=self.dtype)

    def export(self, vector: Vector, copy: bool = False) -> Vector:
        """See :meth:`UpdateRows.export`: numpy arrays stay as they are."""
        return vector.copy() if copy else vector


def host_rows(
    updates: Sequence[NDArray[np.floating]], validation: NDArray[np.floating] | None
) -> HostRows:
    """Check the updates and the validation update; hold them as :class:`HostRows`.

    The validation update is dropped when it is not finite.

    Raises
    ------
    ValueError
        No updates, non-flat or non-float updates, unequal lengths, or a
        validation update of another length.
    """
    rows, dimension = _as_rows(updates)
    checked = _finite_validation(validation, dimension, rows[0].dtype)
    return HostRows(
        inputs=[*rows, checked] if checked is not None else rows, has_validation=checked is not None
    )


def _as_rows(
    updates: Sequence[NDArray[np.floating]],
) -> tuple[list[NDArray[np.floating]], int]:
    """Check the updates; return them as C-contiguous arrays of one float dtype."""
    arrays = [np.asarray(update) for update in updates]
    dimension = flat_length(arrays, lambda dtype: dtype.kind == "f")
    dtype = np.result_type(*(array.dtype for array in arrays), np.float32)
    return [_contiguous(array, dtype) for array in arrays], dimension


def flat_length(updates: Sequence[Any], is_floating: Callable[[Any], bool]) -> int:
    """The common length of the updates (numpy arrays or tensors), checked.

    Parameters
    ----------
    updates : Sequence
        Objects with ``ndim``, ``shape`` and ``dtype``.
    is_floating : Callable
        Whether a ``dtype`` is a floating-point type.

    Raises
    ------
    ValueError
        No updates, one that is not flat or not floating-point, or unequal lengths.
    """
    if len(updates) == 0:
        raise ValueError("dstar_aggregate needs at least one update, got none.")
    lengths = set()
    for index, update in enumerate(updates):
        if update.ndim != 1:
            raise ValueError(
                f"Update {index} has shape {tuple(update.shape)}: pass flat 1-D vectors "
                "(flatten each model's arrays and concatenate them)."
            )
        if not is_floating(update.dtype):
            raise ValueError(
                f"Update {index} has dtype {update.dtype}: pass floating-point vectors."
            )
        lengths.add(int(update.shape[0]))
    if len(lengths) != 1:
        raise ValueError(
            f"Updates have different lengths {sorted(lengths)}: every update must "
            "cover the same parameters."
        )
    return lengths.pop()


def check_validation_shape(shape: Sequence[int], dimension: int) -> None:
    """Raise a ValueError unless the validation update's ``shape`` is ``(dimension,)``."""
    if tuple(shape) != (dimension,):
        raise ValueError(f"validation has shape {tuple(shape)}, the updates ({dimension},).")


def _contiguous(array: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[np.floating]:
    """``array`` as a C-contiguous, aligned, native-order array of ``dtype`` (no copy if it is)."""
    array = np.asarray(array)
    flags = array.flags
    if array.dtype == dtype and flags.c_contiguous and flags.aligned:
        return array  # np.require's checks cost more than this, once per update
    return np.require(array, dtype=dtype, requirements=("C", "A"))


def _finite_validation(
    validation: NDArray[np.floating] | None, dimension: int, dtype: np.dtype[Any]
) -> NDArray[np.floating] | None:
    if validation is None:
        return None
    validation = np.asarray(validation)
    check_validation_shape(validation.shape, dimension)
    validation = _contiguous(validation, dtype)
    with np.errstate(all="ignore"):
        return validation if bool(np.isfinite(validation).all()) else None


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


def _mean_weights(weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """``weights`` normalised to sum to 1 (all zero: equal weights)."""
    if weights.sum() <= 0:
        weights = np.ones(len(weights))
    return weights / weights.sum()


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
    device: str | None = None,
) -> DStarAggregation:
    """Apply the dSTAR filter and average the surviving updates.

    Two variants (see the README, "Our reading of the paper" and "The hardened
    default"):

    ``"anchored"`` (default): the reference ``r`` is the server's validation
    update ``v`` (trusted: no client can move it), or the coordinate-wise median
    of the updates when there is no ``v``. Deviations ``d_i = ||u_i - r||``;
    ``u_i`` is accepted when ``d_i <= med(d) + z * Qn(d)``, a robust z-score of
    at most ``max_robust_z`` (see :func:`qn_scale`); with ``norm_test``, also
    when its norm's robust z-score among the updates' norms is at most
    ``max_robust_z``. The median and Qn of the deviations break down only at
    ``f >= k / 2``, so attackers cannot stretch the band
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
    norm_test : bool (default: True)
        ``"anchored"``: also reject an update whose norm is a robust outlier.
    device : str, optional
        Where the passes over the data run. None: where the updates are (torch
        tensors on their device, numpy arrays with the compiled kernels on the
        host). A torch device such as ``"cpu"`` or ``"cuda"``: with torch there
        (numpy updates are copied to it once; needs torch). The aggregate and
        the center come back in the updates' kind: tensors on the device for
        tensors, numpy arrays for numpy arrays.

    Returns
    -------
    DStarAggregation
        The aggregate and the filter's bookkeeping.

    Raises
    ------
    ValueError
        No updates, unequal lengths, non-flat or non-float updates, ``k < 2f + 1``,
        or invalid parameters.
    ImportError
        A ``device`` is given, or the updates are tensors, and torch is missing.
    """
    _check_filter_settings(variant, max_robust_z, threshold_factor, scale, center)
    rows = update_rows(updates, validation, device)
    num_updates = rows.num_updates
    check_byzantine_bound(num_updates, num_byzantine)
    weight_array = _checked_weights(weights, num_updates)
    if cap_accepted is None:
        cap_accepted = variant == "paper"

    # One pass: the reference, every deviation and norm (the validation update's
    # too), which inputs hold NaN or Inf and, when every update may be accepted,
    # their weighted mean. Non-finite inputs never take part in a median.
    members = _reference_members(num_updates, rows.has_validation, variant, center)
    mean_weights = None if cap_accepted else _mean_weights(weight_array)
    measured, has_reference = _measure_reference(rows, members, mean_weights)
    non_finite = tuple(int(i) for i in np.flatnonzero(~measured.finite[:num_updates]))
    finite_rows = np.flatnonzero(measured.finite[:num_updates])
    if not has_reference:
        return DStarAggregation(
            aggregate=rows.export(rows.zeros()),
            center=None,
            deviations=np.full(num_updates, np.inf),
            validation_deviation=None,
            accepted=(),
            rejected=tuple(range(num_updates)),
            non_finite=non_finite,
            source="none",
        )

    deviations = np.full(num_updates, np.inf)
    deviations[finite_rows] = np.sqrt(measured.squares[finite_rows])
    validation_deviation = (
        float(np.sqrt(measured.squares[num_updates])) if rows.has_validation else None
    )
    if variant == "anchored":
        scale_value, threshold = _anchored_threshold(
            deviations[finite_rows], measured.reference_norm, max_robust_z, rows.dtype
        )
    else:
        scale_value, threshold = _paper_threshold(
            deviations[finite_rows], validation_deviation, threshold_factor, scale, rows.dtype
        )

    candidates = [int(i) for i in finite_rows if deviations[i] <= threshold]
    if variant == "anchored" and norm_test and candidates:
        norms = measured.norms[finite_rows] ** 0.5
        within = _within_norm_band(norms, finite_rows, max_robust_z, rows.dtype)
        candidates = [i for i in candidates if i in within]
    if cap_accepted:
        # Stable sort: ties keep arrival order, so the result does not depend on
        # anything but the updates' values and positions.
        candidates.sort(key=lambda i: (deviations[i], i))
        candidates = candidates[: num_updates - num_byzantine]
    accepted = tuple(sorted(candidates))
    accepted_set = set(accepted)

    return DStarAggregation(
        aggregate=_aggregate(rows, measured, accepted, weight_array),
        center=rows.export(measured.reference),
        deviations=deviations,
        validation_deviation=validation_deviation,
        accepted=accepted,
        rejected=tuple(i for i in range(num_updates) if i not in accepted_set),
        non_finite=non_finite,
        threshold=float(threshold),
        scale=float(scale_value),
        source="accepted" if accepted else "center",
    )


def update_rows(
    updates: Sequence[Any], validation: Any | None, device: str | None = None
) -> UpdateRows:
    """The checked inputs, where the rule's passes over them will run.

    Torch tensors, or any inputs with a ``device``, go to
    :func:`dstar_flwr.torch_aggregation.torch_rows` (torch is imported only
    then); numpy arrays to :func:`host_rows`. A validation update that is not
    finite is dropped.
    """
    if device is not None or _holds_tensors([*updates, validation]):
        from .torch_aggregation import torch_rows  # torch is optional: imported here

        return torch_rows(updates, validation, device)
    return host_rows(updates, validation)


def check_aggregation_device(device: str | None) -> None:
    """Raise a ValueError unless ``device`` is None or a torch device this machine has.

    The ``device`` of :func:`dstar_aggregate` (and ``DStarRule.aggregation_device``):
    None is the compiled path on the host; a device needs torch.
    """
    if device is None:
        return
    if not isinstance(device, str):
        raise ValueError(f"aggregation device must be a string such as 'cuda', got {device!r}.")
    try:
        from .torch_aggregation import check_device  # torch is optional: imported here
    except ImportError as error:
        raise ValueError(
            f"aggregation device {device!r} needs torch, which is not installed: install "
            "torch, or leave the device unset (None: the compiled CPU path)."
        ) from error
    check_device(device)


def _holds_tensors(values: Sequence[Any]) -> bool:
    torch = sys.modules.get("torch")  # no tensor exists before torch is imported
    return torch is not None and any(isinstance(value, torch.Tensor) for value in values)


def _measure_reference(
    rows: UpdateRows, members: list[int], mean_weights: NDArray[np.float64] | None
) -> tuple[Measurements, bool]:
    """One pass; when a member was not finite, a second one without it (rare).

    Returns the measurements and whether any member was finite (else there is
    no reference).
    """
    measured = rows.measure(members, mean_weights)
    if measured.finite[members].all():
        return measured, True
    members = [i for i in members if measured.finite[i]]
    if not members:
        return measured, False
    return rows.measure(members, None), True


def _aggregate(
    rows: UpdateRows,
    measured: Measurements,
    accepted: tuple[int, ...],
    weights: NDArray[np.float64],
) -> Vector:
    """The weighted mean of the accepted updates; the reference when there are none.

    The pass's mean of all updates serves when all were accepted, with the
    same weights: no second pass.
    """
    if not accepted:
        return rows.export(measured.reference, copy=True)
    if measured.mean is not None and len(accepted) == rows.num_updates:
        return rows.export(measured.mean)
    kept = list(accepted)
    return rows.export(rows.weighted_mean(kept, _mean_weights(weights[kept])))


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
    norms: NDArray[np.float64],
    finite_rows: NDArray[np.intp],
    max_robust_z: float,
    dtype: np.dtype[Any],
) -> set[int]:
    """The finite updates (``finite_rows``, their ``norms``) whose norm is no robust outlier."""
    middle, spread = robust_spread(norms)
    band = max(max_robust_z * spread, threshold_floor(0.0, middle, dtype))
    # Written as "within", not "not outside": an infinite norm minus an infinite
    # median is NaN, and such an update must not pass.
    with np.errstate(invalid="ignore"):
        inside = np.abs(norms - middle) <= band
    return {int(i) for i in finite_rows[inside]}

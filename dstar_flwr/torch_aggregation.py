"""dSTAR's passes over the updates with torch, on the updates' device.

:func:`dstar_flwr.aggregation.dstar_aggregate` hands torch tensors here, and any
updates when it is given a ``device``. :class:`TorchRows` computes the reference
(the validation update, or a coordinate-wise median), every deviation and norm,
and the weighted mean of the accepted updates with torch operations on that
device: the d-length data never leaves it. Only the per-input sums (three
numbers per input) and the reference's norm come back to the host, where the
filter runs the same code as for numpy arrays.

The measuring pass takes the coordinates in blocks of about ``_BLOCK_ELEMENTS``
values across all inputs, so that its working set on the device stays a few
such blocks besides the inputs. Results agree with the numpy path up to float
rounding: medians are the same values, deviations and norms are float64 sums of
the same float64 squares (in another order), and the weighted mean adds the
accepted updates in the same order, in float64.

This module imports torch, which the library does not depend on: it is imported
only when torch tensors or a ``device`` are given.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .aggregation import Measurements, check_validation_shape, flat_length

# Values (inputs x coordinates) per block of the measuring pass: on a GPU, large
# blocks, few kernel launches; on the CPU, blocks whose temporaries stay in cache.
_BLOCK_ELEMENTS = 1 << 24
_CPU_BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class TorchRows:
    """The updates (and the validation update) as tensors on one device.

    :class:`dstar_flwr.aggregation.UpdateRows` with torch operations.

    Attributes
    ----------
    inputs : list[torch.Tensor]
        1-D tensors of one dtype (float32 or float64), length and device: the
        updates, then the validation update when ``has_validation``.
    has_validation : bool
        Whether the last input is the (finite) validation update.
    as_numpy : bool
        Return vectors as numpy arrays (the updates were numpy arrays), not as
        tensors on the device.
    """

    inputs: list[torch.Tensor]
    has_validation: bool
    as_numpy: bool = False

    @property
    def num_updates(self) -> int:
        """k, the number of updates."""
        return len(self.inputs) - int(self.has_validation)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The inputs' dtype, as numpy's."""
        return np.dtype(str(self.inputs[0].dtype).removeprefix("torch."))

    def measure(
        self, members: Sequence[int], mean_weights: NDArray[np.float64] | None
    ) -> Measurements:
        """See :meth:`dstar_flwr.aggregation.UpdateRows.measure` (never a mean)."""
        with torch.no_grad():
            return _measure(self.inputs, members)

    def weighted_mean(self, indices: Sequence[int], weights: NDArray[np.float64]) -> torch.Tensor:
        """See :meth:`dstar_flwr.aggregation.UpdateRows.weighted_mean`."""
        with torch.no_grad():
            return _weighted_mean([self.inputs[i] for i in indices], weights)

    def zeros(self) -> torch.Tensor:
        """See :meth:`dstar_flwr.aggregation.UpdateRows.zeros`."""
        first = self.inputs[0]
        return torch.zeros(first.shape[0], dtype=first.dtype, device=first.device)

    def export(self, vector: torch.Tensor, copy: bool = False) -> torch.Tensor | NDArray[Any]:
        """See :meth:`dstar_flwr.aggregation.UpdateRows.export`."""
        if copy:
            vector = vector.clone()
        return vector.cpu().numpy() if self.as_numpy else vector


def torch_rows(updates: Sequence[Any], validation: Any | None, device: Any = None) -> TorchRows:
    """Check the updates and the validation update; hold them as :class:`TorchRows`.

    Parameters
    ----------
    updates : Sequence
        Flat torch tensors or numpy arrays of equal length.
    validation : torch.Tensor | NDArray | None
        The validation update; dropped when it is not finite.
    device : str | torch.device | None
        Where to aggregate. None: the device of the first tensor among the
        updates (the CPU when there is none). Inputs elsewhere are copied there
        once; numpy arrays on the CPU are used without a copy.

    Raises
    ------
    ValueError
        As for numpy arrays: no updates, non-flat or non-float updates, unequal
        lengths, or a validation update of another length; or a ``device`` this
        machine does not have.
    """
    as_numpy = not any(isinstance(update, torch.Tensor) for update in updates)
    target = check_device(device) if device is not None else _first_device(updates)
    tensors = [_on_device(update, target) for update in updates]
    dimension = flat_length(tensors, lambda dtype: dtype.is_floating_point)
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    inputs = [tensor.to(dtype) for tensor in tensors]
    checked = _finite_validation(validation, dimension, dtype, target)
    return TorchRows(
        inputs=[*inputs, checked] if checked is not None else inputs,
        has_validation=checked is not None,
        as_numpy=as_numpy,
    )


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine.

    Raises
    ------
    ValueError
        Not a device torch knows, or one this machine does not have (e.g.
        ``"cuda"`` without a GPU).
    """
    try:
        parsed = torch.device(device)
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(
            f"aggregation device {str(device)!r} is not available here ({error}): use 'cpu', "
            "a device this machine has, or None (the compiled CPU path)."
        ) from error
    return parsed


def _first_device(updates: Sequence[Any]) -> torch.device:
    for update in updates:
        if isinstance(update, torch.Tensor):
            return update.device
    return torch.device("cpu")


def _on_device(value: Any, device: torch.device) -> torch.Tensor:
    """``value`` as a tensor on ``device`` (no copy when it is one there already)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    with warnings.catch_warnings():
        # A read-only array gives a read-only tensor: this module never writes to it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(value), device=device)


def _finite_validation(
    validation: Any | None, dimension: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    if validation is None:
        return None
    tensor = _on_device(validation, device)
    check_validation_shape(tensor.shape, dimension)
    tensor = tensor.to(dtype)
    return tensor if bool(torch.isfinite(tensor).all()) else None


def _measure(inputs: Sequence[torch.Tensor], members: Sequence[int]) -> Measurements:
    """:meth:`TorchRows.measure`, block by block of coordinates, on the inputs' device."""
    first = inputs[0]
    dimension, dtype, device = first.shape[0], first.dtype, first.device
    block_elements = _CPU_BLOCK_ELEMENTS if device.type == "cpu" else _BLOCK_ELEMENTS
    width = max(1, block_elements // len(inputs))
    median = torch.empty(dimension, dtype=dtype, device=device)
    # Per input: squared distance, squared norm, and a check that is NaN iff a
    # value is NaN or Inf (x - x; cheaper than isfinite, and a float64 square
    # can overflow for finite float64 values).
    sums = torch.zeros((3, len(inputs)), dtype=torch.float64, device=device)
    center_squares = torch.zeros((), dtype=torch.float64, device=device)
    member_index = torch.tensor(list(members), dtype=torch.long, device=device)
    for start in range(0, dimension, width):
        block = torch.stack([row[start : start + width] for row in inputs])
        center = median[start : start + width]
        center.copy_(_median(block.index_select(0, member_index)))
        wide_center = center.to(torch.float64)
        center_squares += torch.dot(wide_center, wide_center)
        difference = (block - center).to(torch.float64)
        sums[0] += torch.linalg.vecdot(difference, difference, dim=1)
        wide = block.to(torch.float64)
        sums[1] += torch.linalg.vecdot(wide, wide, dim=1)
        sums[2] += (block - block).sum(dim=1)
    squares, norms, checks = sums.cpu().numpy()
    return Measurements(
        reference=median,
        reference_norm=float(center_squares.sqrt()),
        squares=squares,
        norms=norms,
        finite=np.isfinite(checks),
    )


def _median(block: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of the rows of ``block``, as ``np.median`` takes it.

    For an even number of rows the two middle values are halved before they are
    added, as on the numpy path: their mean cannot overflow.
    """
    count = block.shape[0]
    if count == 1:
        return block[0]
    ordered = torch.sort(block, dim=0).values
    lower = ordered[(count - 1) // 2]
    if count % 2:
        return lower
    return lower * 0.5 + ordered[count // 2] * 0.5


def _weighted_mean(rows: Sequence[torch.Tensor], weights: NDArray[np.float64]) -> torch.Tensor:
    """``sum(w_i * rows[i])`` accumulated in float64 in row order, in the rows' dtype."""
    first = rows[0]
    total = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
    for row, weight in zip(rows, weights, strict=True):
        total.add_(row, alpha=float(weight))
    mean = total.to(first.dtype)
    if first.dtype == torch.float64:
        # As on the numpy path: a mean of values near the float64 maximum can
        # round past it, and saturates instead.
        limit = torch.finfo(torch.float64).max
        mean.clamp_(-limit, limit)
    return mean

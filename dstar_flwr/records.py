"""Between Flower records and flat update vectors: flattening and reply checks.

A reply is checked against the global model it was trained from, so that a
malformed or hostile reply is refused with a reason before it can touch the
aggregate: :func:`parse_train_reply` either returns the reply's flat update or
raises :class:`MalformedReply`.
"""

import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.constant import SType
from numpy.typing import NDArray

DEFAULT_MAX_NUM_EXAMPLES = 10**9
NON_FINITE_REASON = "the arrays hold NaN or Inf"


class MalformedReply(ValueError):
    """A reply that cannot be aggregated; ``str(error)`` is the reason."""


@dataclass(frozen=True)
class ArrayLayout:
    """Keys, shapes and dtypes of a model's arrays, in record order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @property
    def size(self) -> int:
        """Number of scalars over all arrays."""
        return sum(math.prod(shape) for shape in self.shapes)

    @cached_property
    def vector_dtype(self) -> np.dtype:
        """The float dtype of flat vectors: float32, or wider if a float array is."""
        floats = [dtype for dtype in self.dtypes if np.issubdtype(dtype, np.floating)]
        return np.result_type(*floats, np.float32)


@dataclass(frozen=True)
class TrainReply:
    """A checked training reply."""

    weights: NDArray[np.floating]
    num_examples: float
    metrics: MetricRecord


def layout_of(record: ArrayRecord) -> ArrayLayout:
    """The layout of ``record``'s arrays."""
    arrays = [record[key] for key in record]
    return ArrayLayout(
        keys=tuple(record.keys()),
        shapes=tuple(tuple(array.shape) for array in arrays),
        dtypes=tuple(np.dtype(array.numpy().dtype) for array in arrays),
    )


@lru_cache(maxsize=4096)
def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes | None:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array; None if it has none."""
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": shape,
    }
    for write in (np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0):
        buffer = io.BytesIO()
        try:
            write(buffer, header)
        except ValueError:  # too long for this format version
            continue
        return buffer.getvalue()
    return None


def decode_array(array: Array, shape: tuple[int, ...], dtype: np.dtype) -> NDArray[Any]:
    """``array.numpy()``, without parsing the header when it is the expected one.

    Flower's ``Array.numpy`` parses the ``.npy`` header of every array with
    ``ast.literal_eval``, which dominates decoding a small model. When the bytes
    are exactly the header ``np.save`` writes for ``shape`` and ``dtype`` followed
    by that many bytes of data, the array is read from them directly (a read-only
    view); any other bytes go to ``Array.numpy``, and the caller checks what it
    returns against the layout as before.
    """
    data = array.data
    if array.stype == SType.NUMPY and isinstance(data, bytes):
        header = _npy_header(shape, dtype)
        size = dtype.itemsize * math.prod(shape)
        if (
            header is not None
            and size > 0
            and len(data) == len(header) + size
            and data.startswith(header)
        ):
            return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
    return array.numpy()


def flatten_record(record: ArrayRecord, layout: ArrayLayout) -> NDArray[np.floating]:
    """Concatenate ``record``'s arrays, in ``layout``'s key order, to one float vector."""
    dtype = layout.vector_dtype
    parts = [
        np.asarray(decode_array(record[key], shape, array_dtype), dtype=dtype).ravel()
        for key, shape, array_dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def conform_to_layout(vector: NDArray[np.floating], layout: ArrayLayout) -> NDArray[np.floating]:
    """``vector`` as it reads back from :func:`unflatten_vector`'s arrays.

    The parts of integer and boolean arrays are rounded; those of a float dtype
    narrower than the vector's saturate at its largest finite value (instead of
    becoming inf) and are rounded to it.
    """
    if vector.shape != (layout.size,):
        raise ValueError(f"vector has shape {vector.shape}, layout size {layout.size}.")
    conformed = np.empty(layout.size, dtype=vector.dtype)
    offset = 0
    for shape, dtype in zip(layout.shapes, layout.dtypes, strict=True):
        count = math.prod(shape)
        part = vector[offset : offset + count]
        if not np.issubdtype(dtype, np.floating):
            part = np.rint(part)
        elif np.finfo(dtype).max < np.finfo(vector.dtype).max:
            part = np.clip(part, np.finfo(dtype).min, np.finfo(dtype).max)
        conformed[offset : offset + count] = np.asarray(part, dtype=dtype)
        offset += count
    return conformed


def unflatten_vector(vector: NDArray[np.floating], layout: ArrayLayout) -> ArrayRecord:
    """Split a flat vector back into an ArrayRecord of ``layout``'s arrays.

    Integer and boolean arrays (e.g. BatchNorm's ``num_batches_tracked``) are
    rounded back to their dtype; values beyond the range of a float dtype narrower
    than the vector's (float16, or float32 in a float64 vector) saturate at its
    largest finite value instead of becoming inf (see :func:`conform_to_layout`).
    """
    conformed = conform_to_layout(vector, layout)
    record = ArrayRecord()
    offset = 0
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        count = math.prod(shape)
        part = conformed[offset : offset + count].reshape(shape)
        record[key] = Array(np.asarray(part, dtype=dtype, order="C"))
        offset += count
    return record


def flatten_trusted(record: ArrayRecord, layout: ArrayLayout) -> NDArray[np.floating]:
    """Flatten arrays the server produced itself (the validation update).

    Names and shapes must match ``layout``; dtypes are cast (a float64 result of
    a float32 model is fine here); values must be finite.
    """
    keys = set(record.keys())
    if keys != set(layout.keys):
        raise ValueError(
            f"array names differ from the model's: missing {sorted(set(layout.keys) - keys)}, "
            f"unexpected {sorted(keys - set(layout.keys))}"
        )
    for key, shape in zip(layout.keys, layout.shapes, strict=True):
        if tuple(record[key].shape) != shape:
            raise ValueError(f"array '{key}' has shape {record[key].shape}, expected {shape}")
    vector = flatten_record(record, layout)
    if not np.all(np.isfinite(vector)):
        raise ValueError(NON_FINITE_REASON)
    return vector


def _single_record(content: RecordDict, kind: str) -> object:
    records = content.array_records if kind == "ArrayRecord" else content.metric_records
    if len(records) != 1:
        raise MalformedReply(f"expected exactly one {kind}, found {len(records)}")
    return next(iter(records.values()))


def check_num_examples(value: object, name: str, max_num_examples: float) -> float:
    """An example count, checked: a finite number in (0, max_num_examples].

    Takes any Python or numpy number (a legacy reply's count is unchecked), and
    ints beyond float range.
    """
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReply(f"'{name}' is {type(value).__name__}, not a number")
    shown = f"{value:.6g}" if isinstance(value, float) or abs(value) < 10**15 else "a huge int"
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise MalformedReply(f"'{name}' is {shown}, not a positive number")
    if value > max_num_examples:
        raise MalformedReply(f"'{name}' is {shown}, above the limit {max_num_examples:g}")
    return float(value)


def read_num_examples(
    metrics: MetricRecord, weighted_by_key: str, max_num_examples: float
) -> float:
    """The reply's example count, checked: a finite number in (0, max_num_examples]."""
    if weighted_by_key not in metrics:
        raise MalformedReply(f"the MetricRecord has no '{weighted_by_key}'")
    return check_num_examples(metrics[weighted_by_key], weighted_by_key, max_num_examples)


def parse_train_reply(
    content: RecordDict,
    layout: ArrayLayout,
    *,
    weighted_by_key: str = "num-examples",
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
) -> TrainReply:
    """Check a training reply against the global model's layout and flatten it.

    Parameters
    ----------
    content : RecordDict
        The reply's content.
    layout : ArrayLayout
        The layout of the global arrays the node trained from.
    weighted_by_key : str (default: "num-examples")
        The MetricRecord key holding the example count.
    max_num_examples : float
        Larger example counts are refused as absurd.

    Returns
    -------
    TrainReply
        The reply's weights as one flat vector, its example count and metrics.

    Raises
    ------
    MalformedReply
        With the reason: missing or extra records or arrays, wrong shapes or
        dtypes, undecodable arrays, NaN or Inf, a missing or absurd example count.
    """
    arrays = _single_record(content, "ArrayRecord")
    metrics = _single_record(content, "MetricRecord")
    assert isinstance(arrays, ArrayRecord) and isinstance(metrics, MetricRecord)
    num_examples = read_num_examples(metrics, weighted_by_key, max_num_examples)

    _check_names(arrays.keys(), layout)  # before decoding: no work for unexpected arrays
    decoded = {}
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        try:
            decoded[key] = decode_array(arrays[key], shape, dtype)
        except Exception as error:
            raise MalformedReply(f"array '{key}' cannot be decoded: {error}") from error
    weights = flatten_checked(decoded, layout)
    return TrainReply(weights=weights, num_examples=num_examples, metrics=metrics)


def flatten_checked(
    arrays: Mapping[str, NDArray[Any]], layout: ArrayLayout
) -> NDArray[np.floating]:
    """Check decoded arrays against ``layout`` and flatten them to one finite vector.

    Raises
    ------
    MalformedReply
        With the reason: missing or extra names, a wrong shape or dtype, NaN or Inf.
    """
    _check_names(arrays.keys(), layout)
    parts = []
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        array = arrays[key]
        if tuple(array.shape) != shape:
            raise MalformedReply(f"array '{key}' has shape {array.shape}, expected {shape}")
        if array.dtype != dtype:
            raise MalformedReply(f"array '{key}' has dtype {array.dtype}, expected {dtype}")
        parts.append(np.asarray(array, dtype=layout.vector_dtype).ravel())
    weights = np.concatenate(parts) if parts else np.zeros(0, layout.vector_dtype)
    if not np.all(np.isfinite(weights)):
        raise MalformedReply(NON_FINITE_REASON)
    return weights


def _check_names(names: Iterable[str], layout: ArrayLayout) -> None:
    keys = set(names)
    expected = set(layout.keys)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(keys - expected)
        raise MalformedReply(f"array names differ: missing {missing}, unexpected {extra}")

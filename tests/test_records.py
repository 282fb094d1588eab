"""Reply checks: every kind of malformed reply is refused with a reason."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from dstar_flwr.records import (
    MalformedReply,
    decode_array,
    flatten_record,
    layout_of,
    parse_train_reply,
    unflatten_vector,
)


def _global() -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "b": Array(np.zeros(2, dtype=np.float32)),
            "steps": Array(np.array(7, dtype=np.int64)),
        }
    )


def _reply(arrays: dict[str, np.ndarray] | None = None, **metrics: object) -> RecordDict:
    base = {key: _global()[key].numpy() for key in _global()}
    base.update(arrays or {})
    metric_values = {"num-examples": 10, **metrics}
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in base.items() if v is not None}),
            "metrics": MetricRecord({k: v for k, v in metric_values.items() if v is not None}),
        }
    )


def test_a_well_formed_reply_is_flattened_in_layout_order() -> None:
    reply = parse_train_reply(_reply(), layout_of(_global()))
    np.testing.assert_array_equal(reply.weights, [0, 1, 2, 3, 4, 5, 0, 0, 7])
    assert reply.num_examples == 10


def test_flatten_unflatten_round_trip_keeps_dtypes() -> None:
    layout = layout_of(_global())
    vector = flatten_record(_global(), layout)
    record = unflatten_vector(vector + 0.4, layout)
    assert record["steps"].numpy().dtype == np.int64
    assert int(record["steps"].numpy()) == 7
    np.testing.assert_allclose(record["w"].numpy(), np.arange(6).reshape(2, 3) + 0.4)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_reply({"b": None}), "missing \\['b'\\]"),
        (_reply({"extra": np.zeros(1, np.float32)}), "unexpected \\['extra'\\]"),
        (_reply({"w": np.zeros((3, 2), np.float32)}), "shape"),
        (_reply({"w": np.zeros((2, 3), np.float64)}), "dtype"),
        (_reply({"b": np.array([np.nan, 0], np.float32)}), "NaN or Inf"),
        (_reply({"b": np.array([np.inf, 0], np.float32)}), "NaN or Inf"),
        (_reply(**{"num-examples": None}), "no 'num-examples'"),
        (_reply(**{"num-examples": -3}), "not a positive number"),
        (_reply(**{"num-examples": 0}), "not a positive number"),
        (_reply(**{"num-examples": float("nan")}), "not a positive number"),
        (_reply(**{"num-examples": 10**12}), "above the limit"),
        (_reply(**{"num-examples": [1, 2]}), "not a number"),
        (RecordDict({"metrics": MetricRecord({"num-examples": 1})}), "one ArrayRecord"),
        (RecordDict({"arrays": _global()}), "one MetricRecord"),
        (
            RecordDict(
                {
                    "arrays": _global(),
                    "more": _global(),
                    "metrics": MetricRecord({"num-examples": 1}),
                }
            ),
            "one ArrayRecord, found 2",
        ),
        (
            RecordDict({"arrays": _global(), "config": ConfigRecord({"num-examples": 1})}),
            "one MetricRecord",
        ),
    ],
)
def test_malformed_replies_are_refused_with_a_reason(content: RecordDict, reason: str) -> None:
    with pytest.raises(MalformedReply, match=reason):
        parse_train_reply(content, layout_of(_global()), max_num_examples=1e9)


def test_undecodable_array_bytes_are_refused() -> None:
    content = _reply()
    array_record = content.array_records["arrays"]
    array_record["w"] = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=b"junk")
    with pytest.raises(MalformedReply, match=r"cannot be decoded|shape|dtype"):
        parse_train_reply(content, layout_of(_global()))


def test_check_num_examples_takes_any_python_or_numpy_number() -> None:
    """Legacy EvaluateRes counts are unchecked Python objects: a 400-digit int raised
    OverflowError in ``math.isfinite``."""
    from dstar_flwr.records import check_num_examples

    assert check_num_examples(np.int64(12), "n", 1e9) == 12.0
    assert check_num_examples(12.5, "n", 1e9) == 12.5
    for value, reason in [
        (10**400, "above the limit"),
        (-(10**400), "not a positive number"),
        (float("inf"), "not a positive number"),
        (np.bool_(True), "not a number"),
        (True, "not a number"),
        ("12", "not a number"),
    ]:
        with pytest.raises(MalformedReply, match=reason):
            check_num_examples(value, "n", 1e9)


def test_a_reply_given_non_finite_weights_is_malformed_like_a_checked_one() -> None:
    from flwr.app import Message

    from dstar_flwr.replies import ReplyStatus, check_train_reply

    layout = layout_of(_global())
    message = Message(_reply(), dst_node_id=3, message_type="train")
    checked = check_train_reply(message, layout)
    assert checked.is_valid
    finite = checked.with_weights(np.ones(checked.weights.size), layout)
    assert finite.is_valid and np.all(finite.weights == 1)
    vector = np.ones(checked.weights.size)
    vector[2] = np.nan
    replaced = checked.with_weights(vector, layout)
    assert replaced.status is ReplyStatus.MALFORMED and replaced.parsed is None
    assert replaced.reason == "the arrays hold NaN or Inf"
    # A strategy reading the message sees the replaced arrays, and the check agrees.
    assert check_train_reply(replaced.message, layout).status is ReplyStatus.MALFORMED


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _raw_array(data: bytes, dtype: str = "float32", shape: tuple[int, ...] = (2, 3)) -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


def _decoded_by_flower(array: Array) -> np.ndarray | type[Exception]:
    try:
        return array.numpy()
    except Exception as error:  # noqa: BLE001 (what Flower raises is the reference)
        return type(error)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.arange(6, dtype=np.float64).reshape(2, 3),
        np.arange(6, dtype=np.float32).reshape(3, 2),
        np.array(7, dtype=np.int64),
        np.zeros((0, 3), dtype=np.float32),
        np.zeros((2, 40_000), dtype=np.float32),
    ],
    ids=["c-order", "fortran", "big-endian", "float64", "other-shape", "scalar", "empty", "big"],
)
def test_decoding_gives_what_flower_decodes(array: np.ndarray) -> None:
    """Whatever the bytes hold, the decoded array is Flower's (then checked by the layout)."""
    wire = Array(array)
    decoded = decode_array(wire, (2, 3), np.dtype(np.float32))
    expected = wire.numpy()
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def test_the_expected_header_is_read_without_flower_and_is_read_only() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    decoded = decode_array(Array(array), (2, 3), np.dtype(np.float32))
    assert not decoded.flags.writeable  # a view of the reply's bytes
    np.testing.assert_array_equal(decoded, array)


@given(
    cut=st.integers(min_value=0, max_value=200),
    extra=st.binary(max_size=8),
    flip=st.integers(min_value=0, max_value=200),
)
def test_tampered_bytes_decode_as_flower_decodes_them(cut: int, extra: bytes, flip: int) -> None:
    data = bytearray(_npy_bytes(np.arange(6, dtype=np.float32).reshape(2, 3)))
    if flip < len(data):
        data[flip] ^= 0xFF
    tampered = bytes(data[: len(data) - cut % (len(data) + 1)]) + extra
    wire = _raw_array(tampered)
    expected = _decoded_by_flower(wire)
    try:
        decoded = decode_array(wire, (2, 3), np.dtype(np.float32))
    except Exception as error:  # noqa: BLE001 (it must raise what Flower raises)
        assert expected is type(error)
        return
    assert not isinstance(expected, type)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def test_a_fast_decoded_reply_still_refuses_non_finite_values() -> None:
    content = _reply({"w": np.full((2, 3), np.nan, np.float32)})
    with pytest.raises(MalformedReply, match="NaN or Inf"):
        parse_train_reply(content, layout_of(_global()))

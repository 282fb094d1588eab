"""Fuzzing the strategies' aggregation with random, mostly malformed, replies.

A seeded numpy Generator (the run is deterministic) drives many rounds of
``DStar.aggregate_train`` and of ``DStarLegacy.aggregate_fit``. Each round mixes
valid honest replies with replies broken in one way each: missing, extra or
renamed arrays, wrong shapes, wrong dtypes (integer, float16, complex, bool,
string, datetime, undecodable and pickled object bytes), NaN and Inf, empty
arrays, a missing or absurd example count, missing or extra records, error
replies; with valid but hostile replies (values near the dtype's maximum,
scaled sign flips), duplicate replies of one node and every count of replies,
none included. Per round: nothing raises, the new model is finite and keeps the
global model's layout, a round with enough valid replies moves it and one
without keeps it, and the round's report counts every malformed reply.

``pytest -s tests/test_fuzz.py`` prints how many replies of each kind were tried.
"""

import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import (
    Code,
    FitRes,
    NDArrays,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy

from dstar_flwr import DStar, DStarLegacy, DStarRule
from dstar_flwr.legacy import DroppedFitReply
from dstar_flwr.records import layout_of, unflatten_vector

from .fake_grid import FakeGrid, FakeNode

SEED = 20_241_107
MIN_REPLIES = 10_000

# A model's arrays: name, dtype, shape (record order).
Spec = tuple[tuple[str, Any, tuple[int, ...]], ...]
LAYOUTS: dict[str, Spec] = {
    "float32": (
        ("conv.weight", np.float32, (3, 2, 2)),
        ("conv.bias", np.float32, (3,)),
        ("fc.weight", np.float32, (2, 5)),
    ),
    "mixed": (
        ("embedding", np.float16, (4, 3)),
        ("fc.weight", np.float64, (3, 2)),
        ("fc.bias", np.float32, (2,)),
        ("bn.num_batches_tracked", np.int64, ()),
        ("unused", np.float32, (0,)),
        ("temperature", np.float32, ()),
    ),
}
OTHER_DTYPES = (
    np.int32,
    np.int64,
    np.uint8,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.complex128,
    np.bool_,
    np.dtype("<U4"),
    np.dtype("datetime64[s]"),
)
BAD_NUM_EXAMPLES: tuple[Any, ...] = (
    0,
    -1,
    -(10**6),
    0.0,
    -0.5,
    10**12,
    1e30,
    10**30,
    float("nan"),
    float("inf"),
    float("-inf"),
    [10],
    [1.0, 2.0],
    1e9 + 1,
)


# --- the model and honest replies --------------------------------------------------


def _is_float(dtype: Any) -> bool:
    return bool(np.issubdtype(np.dtype(dtype), np.floating))


def _random_model(spec: Spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    model = {}
    for key, dtype, shape in spec:
        values = rng.normal(scale=0.5, size=shape) if _is_float(dtype) else rng.integers(0, 9)
        model[key] = np.asarray(values, dtype=dtype)
    return model


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: record[key].numpy() for key in record}


@dataclass
class Round:
    """What one reply is built from: the global model and where honest nodes go."""

    rng: np.random.Generator
    spec: Spec
    model: dict[str, np.ndarray]
    target: dict[str, np.ndarray]

    def honest(self) -> dict[str, np.ndarray]:
        """A step towards the target plus noise; integer arrays count up by one."""
        arrays = {}
        for key, dtype, shape in self.spec:
            current = self.model[key]
            if _is_float(dtype):
                step = 0.3 * (self.target[key] - current) + 0.01 * self.rng.normal(size=shape)
                arrays[key] = np.asarray(current + step, dtype=dtype)
            else:
                arrays[key] = np.asarray(current + 1, dtype=dtype)
        return arrays

    def key(self, usable: Callable[[Any, tuple[int, ...]], bool] = lambda d, s: True) -> str:
        """A random array name among those whose (dtype, shape) is ``usable``."""
        keys = [key for key, dtype, shape in self.spec if usable(dtype, shape)]
        return keys[int(self.rng.integers(len(keys)))]

    def num_examples(self) -> int:
        return int(self.rng.integers(1, 500))


def _content(arrays: dict[str, np.ndarray] | ArrayRecord, **metrics: Any) -> RecordDict:
    record = arrays if isinstance(arrays, ArrayRecord) else _record(arrays)
    return RecordDict({"arrays": record, "metrics": MetricRecord({"train-loss": 0.5, **metrics})})


def _valid(context: Round, arrays: dict[str, np.ndarray]) -> RecordDict:
    return _content(arrays, **{"num-examples": context.num_examples()})


# --- reply kinds: each returns a reply's content (or an Error) ---------------------

Builder = Callable[[Round], RecordDict | Error]


def honest(context: Round) -> RecordDict:
    return _valid(context, context.honest())


def reordered_arrays(context: Round) -> RecordDict:
    arrays = context.honest()
    keys = list(arrays)
    return _valid(context, {key: arrays[key] for key in reversed(keys)})


def fractional_examples(context: Round) -> RecordDict:
    return _content(context.honest(), **{"num-examples": 12.5})


def maximal_examples(context: Round) -> RecordDict:
    return _content(context.honest(), **{"num-examples": 10**9})


def odd_metrics(context: Round) -> RecordDict:
    extra = [{"train-loss": float("nan")}, {"train-loss": [1.0, 2.0]}, {"accuracy": 0.5}]
    metrics = {"num-examples": context.num_examples(), **extra[int(context.rng.integers(3))]}
    return RecordDict({"arrays": _record(context.honest()), "metrics": MetricRecord(metrics)})


def huge_values(context: Round) -> RecordDict:
    """Valid but hostile: every value near the largest finite one of its dtype."""
    arrays = {}
    for key, dtype, shape in context.spec:
        sign = context.rng.choice([-1.0, 1.0])
        if _is_float(dtype):
            top = float(np.finfo(dtype).max)
            values = sign * top * context.rng.uniform(0.5, 1.0, size=shape)
        else:
            values = np.full(shape, sign * 2**40)
        arrays[key] = np.asarray(values, dtype=dtype)
    return _valid(context, arrays)


def sign_flip(context: Round) -> RecordDict:
    """Valid but hostile: the honest step reversed and scaled by 20 (kept finite)."""
    arrays = context.honest()
    flipped = {}
    for key, dtype, _ in context.spec:
        current = context.model[key].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # clipped below
            values = current - 20 * (arrays[key] - current)
        limits = np.finfo(dtype) if _is_float(dtype) else np.iinfo(dtype)
        flipped[key] = np.clip(values, limits.min, limits.max).astype(dtype)
    return _valid(context, flipped)


def missing_array(context: Round) -> RecordDict:
    arrays = context.honest()
    del arrays[context.key()]
    return _valid(context, arrays)


def extra_array(context: Round) -> RecordDict:
    arrays = context.honest()
    arrays["extra.weight"] = np.zeros(int(context.rng.integers(0, 4)), np.float32)
    return _valid(context, arrays)


def renamed_array(context: Round) -> RecordDict:
    arrays = context.honest()
    key = context.key()
    arrays[key.upper() + "_"] = arrays.pop(key)
    return _valid(context, arrays)


def wrong_shape(context: Round) -> RecordDict:
    arrays = context.honest()
    key = context.key()
    array = arrays[key]
    variants = [
        lambda: array[np.newaxis],  # an extra axis
        lambda: np.append(array.ravel(), array.dtype.type(0)),  # one value too many
        lambda: array.ravel()[:-1] if array.size > 1 else np.zeros((1, 1), array.dtype),
        lambda: np.zeros((0, *array.shape[1:]) if array.ndim else (0,), array.dtype),  # empty
    ]
    if array.ndim >= 2 and array.shape[0] != array.shape[-1]:
        variants.append(lambda: array.T.copy())
    candidates = [variant() for variant in variants]
    candidates = [candidate for candidate in candidates if candidate.shape != array.shape]
    arrays[key] = candidates[int(context.rng.integers(len(candidates)))]
    return _valid(context, arrays)


def wrong_dtype(context: Round) -> RecordDict:
    arrays = context.honest()
    key = context.key()
    expected = np.dtype(arrays[key].dtype)
    choices = [np.dtype(d) for d in OTHER_DTYPES if np.dtype(d) != expected]
    dtype = choices[int(context.rng.integers(len(choices)))]
    try:
        with np.errstate(invalid="ignore", over="ignore"):  # e.g. negative floats to uint8
            arrays[key] = arrays[key].astype(dtype)
    except (TypeError, ValueError):  # e.g. floats to datetime64
        arrays[key] = np.zeros(arrays[key].shape, dtype)
    return _valid(context, arrays)


def non_finite(context: Round) -> RecordDict:
    arrays = context.honest()
    key = context.key(lambda dtype, shape: _is_float(dtype) and 0 not in shape)
    array = arrays[key].copy()
    positions = context.rng.integers(array.size, size=int(context.rng.integers(1, 4)))
    array.reshape(-1)[positions] = context.rng.choice([np.nan, np.inf, -np.inf])
    arrays[key] = array
    return _valid(context, arrays)


def undecodable_array(context: Round) -> RecordDict:
    arrays = context.honest()
    record = _record(arrays)
    key = context.key()
    dtype, shape = str(arrays[key].dtype), tuple(arrays[key].shape)
    buffer = io.BytesIO()
    kind = int(context.rng.integers(4))
    if kind == 0:  # random bytes
        data = context.rng.bytes(int(context.rng.integers(0, 64)))
    elif kind == 1:  # a valid .npy of another shape, labelled with the expected one
        np.save(buffer, np.zeros(int(np.prod(shape)) + 3, dtype=arrays[key].dtype))
        data = buffer.getvalue()
    elif kind == 2:  # a truncated .npy
        np.save(buffer, arrays[key])
        data = buffer.getvalue()[: max(1, len(buffer.getvalue()) // 2)]
    else:  # an object array, which only unpickling could read
        np.save(buffer, np.array([{"w": 1}, None], dtype=object), allow_pickle=True)
        data, dtype = buffer.getvalue(), "object"
    record[key] = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    return _valid(context, record)  # type: ignore[arg-type]


def bad_num_examples(context: Round) -> RecordDict:
    value = BAD_NUM_EXAMPLES[int(context.rng.integers(len(BAD_NUM_EXAMPLES)))]
    return _content(context.honest(), **{"num-examples": value})


def missing_num_examples(context: Round) -> RecordDict:
    key = ["num_examples", "examples", "train-loss"][int(context.rng.integers(3))]
    return RecordDict({"arrays": _record(context.honest()), "metrics": MetricRecord({key: 10})})


def wrong_records(context: Round) -> RecordDict:
    arrays = _record(context.honest())
    metrics = MetricRecord({"num-examples": context.num_examples()})
    variants = [
        {"metrics": metrics},  # no ArrayRecord
        {"arrays": arrays},  # no MetricRecord
        {"arrays": arrays, "again": _record(context.honest()), "metrics": metrics},
        {"arrays": arrays, "metrics": metrics, "more": MetricRecord({"num-examples": 3})},
        {"arrays": arrays, "config": ConfigRecord({"num-examples": 10})},
        {"config": ConfigRecord({"lr": 0.1})},
        {},
    ]
    return RecordDict(variants[int(context.rng.integers(len(variants)))])


def error_reply(context: Round) -> Error:
    reasons = ["", "ClientAppException", "Traceback (most recent call last):\n  ...\nOOM"]
    reason = reasons[int(context.rng.integers(len(reasons)))]
    return Error(code=int(context.rng.integers(0, 1000)), reason=reason)


VALID: dict[str, Builder] = {
    "honest": honest,
    "reordered-arrays": reordered_arrays,
    "fractional-examples": fractional_examples,
    "maximal-examples": maximal_examples,
    "odd-metrics": odd_metrics,
}
HOSTILE: dict[str, Builder] = {"huge-values": huge_values, "sign-flip": sign_flip}
MALFORMED: dict[str, Builder] = {
    "missing-array": missing_array,
    "extra-array": extra_array,
    "renamed-array": renamed_array,
    "wrong-shape": wrong_shape,
    "wrong-dtype": wrong_dtype,
    "non-finite": non_finite,
    "undecodable-array": undecodable_array,
    "bad-num-examples": bad_num_examples,
    "missing-num-examples": missing_num_examples,
    "wrong-records": wrong_records,
}


BUILDERS: dict[str, Builder] = {**VALID, **HOSTILE, **MALFORMED, "error-reply": error_reply}
KINDS = {"valid": VALID, "hostile": HOSTILE, "malformed": MALFORMED, "error": ["error-reply"]}


# --- rounds ----------------------------------------------------------------------

MODES = ("normal", "overwhelmed", "too-few", "all-invalid", "empty")
MODE_ODDS = (0.5, 0.1, 0.15, 0.2, 0.05)


@dataclass
class Plan:
    """One round's replies: (category, kind) in arrival order."""

    mode: str
    replies: list[tuple[str, str]] = field(default_factory=list)


def _pick(rng: np.random.Generator, names: Any) -> str:
    names = list(names)
    return names[int(rng.integers(len(names)))]


def _plan(
    rng: np.random.Generator, num_byzantine: int, min_valid: int, kinds: dict[str, Any]
) -> Plan:
    """Draw a round: how many replies of each category (kinds' keys), in a random order."""
    mode = str(rng.choice(MODES, p=MODE_ODDS))
    good = hostile = duplicates = errors = 0
    malformed = int(rng.integers(0, 16))
    if mode == "normal":
        good = int(rng.integers(min_valid, min_valid + 8))
        hostile = int(rng.integers(0, num_byzantine + 1))
        duplicates = int(rng.integers(0, 3))
        errors = int(rng.integers(0, 3))
    elif mode == "overwhelmed":  # more hostile replies than f: beyond dSTAR's guarantee
        good = int(rng.integers(0, 4))
        hostile = int(rng.integers(num_byzantine + 1, num_byzantine + 8))
    elif mode == "too-few":
        good = int(rng.integers(0, min_valid))
        errors = int(rng.integers(0, 3))
    elif mode == "all-invalid":
        malformed = int(rng.integers(1, 25))
        errors = int(rng.integers(0, 4))
    else:
        malformed = 0
    replies = [("valid", _pick(rng, kinds["valid"])) for _ in range(good)]
    replies += [("hostile", _pick(rng, kinds["hostile"])) for _ in range(hostile)]
    replies += [("malformed", _pick(rng, kinds["malformed"])) for _ in range(malformed)]
    replies += [("error", _pick(rng, kinds["error"])) for _ in range(errors)]
    order = rng.permutation(len(replies))
    plan = Plan(mode, [replies[i] for i in order])
    if good and duplicates:
        # A second reply to the message of a node that sent a valid one.
        plan.replies += [("duplicate", "duplicate") for _ in range(duplicates)]
    return plan


def _check_layout(arrays: dict[str, np.ndarray], spec: Spec) -> None:
    assert list(arrays) == [key for key, _, _ in spec]
    for key, dtype, shape in spec:
        assert arrays[key].shape == shape and arrays[key].dtype == np.dtype(dtype), key
        assert np.all(np.isfinite(arrays[key])), f"{key} is not finite"


def _moved(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(before[key], after[key]) for key in before)


# --- DStar.aggregate_train ---------------------------------------------------------


def _validation_fn(spec: Spec, target: dict[str, np.ndarray], flaky: bool) -> Callable:
    calls = Counter[str]()

    def train(arrays: ArrayRecord) -> ArrayRecord:
        calls["n"] += 1
        model = _numpy(arrays)
        trained = {
            key: np.asarray(model[key] + 0.3 * (target[key] - model[key]), dtype=dtype)
            if _is_float(dtype)
            else model[key] + 1
            for key, dtype, _ in spec
        }
        if flaky and calls["n"] % 3 == 1:
            raise RuntimeError("validation data unavailable")
        if flaky and calls["n"] % 3 == 2:
            trained[spec[0][0]] = np.full(spec[0][2], np.nan, dtype=spec[0][1])
        return _record(trained)

    return train


# name, layout, DStar keywords, validation update ("honest", "flaky" or None), rounds
CONFIGS: tuple[tuple[str, str, dict[str, Any], str | None, int], ...] = (
    ("f0", "float32", {"num_byzantine": 0}, None, 150),
    ("f1-validation", "mixed", {"num_byzantine": 1}, "honest", 150),
    (
        "f2-clients-uniform-max",
        "float32",
        {"num_byzantine": 2, "center": "clients", "weighting": "uniform", "deviation_scale": "max"},
        "honest",
        150,
    ),
    (
        "f3-lr-nocap-flaky",
        "mixed",
        {
            "num_byzantine": 3,
            "server_learning_rate": 1.5,
            "deviation_scale": "validation",
            "cap_accepted": False,
        },
        "flaky",
        150,
    ),
    (
        "f1-min-replies-example-cap",
        "float32",
        {
            "num_byzantine": 1,
            "min_replies": 4,
            "weighting": "num-examples",
            "example_cap": 50.0,
            "threshold_factor": 1.0,
        },
        None,
        150,
    ),
)


def _fuzz_dstar(
    rng: np.random.Generator,
    layout: str,
    keywords: dict[str, Any],
    validation: str | None,
    rounds: int,
    tried: Counter[str],
) -> None:
    spec = LAYOUTS[layout]
    model = _random_model(spec, rng)
    target = _random_model(spec, rng)
    strategy = DStar(
        **keywords,
        validation_train_fn=(
            _validation_fn(spec, target, flaky=validation == "flaky") if validation else None
        ),
    )
    rule = strategy.rule
    for server_round in range(1, rounds + 1):
        plan = _plan(rng, rule.num_byzantine, rule.min_valid_replies, KINDS)
        # One node per reply (a duplicate answers a valid sender's message again), and
        # at least the two nodes Flower's sampling waits for.
        senders = sum(1 for category, _ in plan.replies if category != "duplicate")
        grid = FakeGrid({n: FakeNode(0.0, lambda _: None) for n in range(1, senders + 3)})
        global_arrays = _record(model)
        instructions = sorted(
            strategy.configure_train(server_round, global_arrays, ConfigRecord(), grid),
            key=lambda message: message.metadata.dst_node_id,
        )
        for index, message in enumerate(instructions):
            message.metadata.__dict__["_message_id"] = f"{server_round}-{index}"
        context = Round(rng, spec, model, target)
        replies, nodes = [], Counter[str]()
        valid_senders: list[Message] = []
        expected: dict[str, list[int]] = {
            "malformed": [],
            "error": [],
            "hostile": [],
            "duplicate": [],
        }
        for position, (category, kind) in enumerate(plan.replies):
            if category == "duplicate":
                instruction = valid_senders[int(rng.integers(len(valid_senders)))]
                content: RecordDict | Error = honest(context)
            else:
                instruction = instructions[position]
                content = BUILDERS[kind](context)
                if category == "valid":
                    valid_senders.append(instruction)
            replies.append(Message(content, reply_to=instruction))
            node_id = instruction.metadata.dst_node_id
            expected.setdefault(category, []).append(node_id)
            tried[kind] += 1
            nodes[category] += 1

        new_arrays, metrics = strategy.aggregate_train(server_round, replies)

        label = f"{layout} {keywords} round {server_round} ({plan.mode}: {plan.replies})"
        # A node has one vote per round: its repeated replies are dropped as malformed.
        num_valid = nodes["valid"] + nodes["hostile"]
        skipped = num_valid < rule.min_valid_replies
        assert metrics is not None, label
        assert metrics["num-received"] == len(replies), label
        assert metrics["num-malformed"] == nodes["malformed"] + nodes["duplicate"], label
        assert sorted(metrics["malformed-node-ids"]) == sorted(
            expected["malformed"] + expected["duplicate"]
        ), label
        assert sorted(metrics["failed-node-ids"]) == sorted(expected["error"]), label
        assert metrics["skipped"] == int(skipped), label
        unchanged = _numpy(global_arrays)  # the global arrays were not written to
        _check_layout(unchanged, spec)
        assert not _moved(model, unchanged), label
        if skipped:
            assert new_arrays is None, f"the model changed without enough valid replies: {label}"
            continue
        assert new_arrays is not None, label
        assert metrics["num-accepted"] + metrics["num-rejected"] == num_valid, label
        new_model = _numpy(new_arrays)
        _check_layout(new_model, spec)
        if plan.mode == "normal":
            assert _moved(model, new_model), f"enough valid replies, the model stayed: {label}"
            # At most f hostile replies among >= 2f + 1 valid ones: never accepted.
            assert set(expected["hostile"]) <= set(metrics["rejected-node-ids"]), label
        model = new_model


def test_dstar_aggregate_train_survives_random_malformed_replies() -> None:
    """Over 10,000 replies to ``DStar.aggregate_train``, five settings, two layouts."""
    rng = np.random.default_rng(SEED)
    tried: Counter[str] = Counter()
    for name, layout, keywords, validation, rounds in CONFIGS:
        before = sum(tried.values())
        _fuzz_dstar(rng, layout, keywords, validation, rounds, tried)
        print(f"DStar {name}: {rounds} rounds, {sum(tried.values()) - before} replies")
    total = sum(tried.values())
    print(f"DStar.aggregate_train: {total} replies in all; per kind:")
    for kind, count in sorted(tried.items()):
        print(f"  {kind:22s} {count:6d}")
    assert total >= MIN_REPLIES
    assert set(tried) == {*VALID, *HOSTILE, *MALFORMED, "error-reply", "duplicate"}


# --- DStarLegacy.aggregate_fit -----------------------------------------------------


_FROM_CONTENT = object()


def _fit_res(content: RecordDict, num_examples: Any = _FROM_CONTENT) -> FitRes:
    """A legacy FitRes with ``content``'s arrays (their raw bytes) in record order."""
    record = content.array_records["arrays"]
    if num_examples is _FROM_CONTENT:
        num_examples = content.metric_records["metrics"]["num-examples"]
    return FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=Parameters(tensors=[record[key].data for key in record], tensor_type=""),
        num_examples=num_examples,
        metrics={"train-loss": 0.5},
    )


def _legacy_reply(kind: str, context: Round) -> FitRes:
    if kind == "status-not-ok":
        code = [Code.FIT_NOT_IMPLEMENTED, Code.GET_PARAMETERS_NOT_IMPLEMENTED]
        return FitRes(
            Status(code[int(context.rng.integers(2))], "no"),
            ndarrays_to_parameters(list(context.honest().values())),
            10,
            {},
        )
    if kind == "bad-num-examples":
        odd = [*BAD_NUM_EXAMPLES, "10", None, True]
        return _fit_res(honest(context), num_examples=odd[int(context.rng.integers(len(odd)))])
    if kind == "reversed-arrays":
        arrays = context.honest()
        return _fit_res(_valid(context, {key: arrays[key] for key in reversed(arrays)}))
    return _fit_res(BUILDERS[kind](context))


LEGACY_KINDS = {
    "valid": ["honest", "fractional-examples", "maximal-examples", "odd-metrics"],
    "hostile": list(HOSTILE),
    "malformed": [
        "missing-array",
        "extra-array",
        "reversed-arrays",
        "wrong-shape",
        "wrong-dtype",
        "non-finite",
        "undecodable-array",
        "bad-num-examples",
        "status-not-ok",
    ],
    # A failed (proxy, FitRes), a reply the first-k workflow dropped, an exception.
    "error": ["failed-fit", "dropped-reply", "exception"],
}


def _fuzz_legacy(
    rng: np.random.Generator, layout: str, keywords: dict[str, Any], rounds: int, tried: Counter
) -> None:
    spec = LAYOUTS[layout]
    model = _random_model(spec, rng)
    target = _random_model(spec, rng)

    def validation(ndarrays: NDArrays) -> NDArrays:
        return [
            np.asarray(array + 0.3 * (target[key] - array), dtype=dtype)
            if _is_float(dtype)
            else array + 1
            for array, (key, dtype, _) in zip(ndarrays, spec, strict=True)
        ]

    strategy = DStarLegacy(**keywords, validation_train_fn=validation)
    rule = strategy.rule
    manager = SimpleClientManager()
    grid = FakeGrid({})
    for node_id in range(1, 60):
        assert manager.register(GridClientProxy(node_id, grid, run_id=1))
    for server_round in range(1, rounds + 1):
        plan = _plan(rng, rule.num_byzantine, rule.min_valid_replies, LEGACY_KINDS)
        parameters = ndarrays_to_parameters([model[key] for key, _, _ in spec])
        proxies = sorted(
            (proxy for proxy, _ in strategy.configure_fit(server_round, parameters, manager)),
            key=lambda proxy: proxy.node_id,
        )
        context = Round(rng, spec, model, target)
        results: list[Any] = []
        failures: list[Any] = []
        nodes, malformed_ids, failed_ids, hostile_ids = Counter[str](), [], [], []
        for position, (category, kind) in enumerate(plan.replies):
            if category == "duplicate":
                if results:  # one vote per node: a repeat is dropped as malformed
                    proxy = results[int(rng.integers(len(results)))][0]
                    malformed_ids.append(proxy.node_id)
                    nodes["repeat"] += 1
                else:
                    proxy = proxies[0]
                results.append((proxy, _fit_res(honest(context))))
            elif kind == "failed-fit":
                failures.append((proxies[position], _legacy_reply("status-not-ok", context)))
                failed_ids.append(proxies[position].node_id)
            elif kind == "dropped-reply":
                failures.append(DroppedFitReply(proxies[position].node_id, "not a FitRes"))
                malformed_ids.append(proxies[position].node_id)
            elif kind == "exception":
                failures.append(TimeoutError("lost"))
            else:
                results.append((proxies[position], _legacy_reply(kind, context)))
                if category == "malformed":
                    malformed_ids.append(proxies[position].node_id)
                if category == "hostile":
                    hostile_ids.append(proxies[position].node_id)
            tried[kind] += 1
            nodes[category] += 1

        new_parameters, metrics = strategy.aggregate_fit(server_round, results, failures)

        label = f"legacy {layout} {keywords} round {server_round} ({plan.mode}: {plan.replies})"
        num_valid = nodes["valid"] + nodes["hostile"] + nodes["duplicate"] - nodes["repeat"]
        skipped = num_valid < rule.min_valid_replies
        assert _ids(metrics["malformed-node-ids"]) == sorted(malformed_ids), label
        assert metrics["num-malformed"] == len(malformed_ids), label
        assert _ids(metrics["failed-node-ids"]) == sorted(failed_ids), label
        assert metrics["skipped"] == int(skipped), label
        if skipped:
            assert new_parameters is None, f"the model changed without valid replies: {label}"
            continue
        assert new_parameters is not None, label
        assert metrics["num-accepted"] + metrics["num-rejected"] == num_valid, label
        ndarrays = parameters_to_ndarrays(new_parameters)
        assert len(ndarrays) == len(spec), label
        new_model = {key: array for (key, _, _), array in zip(spec, ndarrays, strict=True)}
        _check_layout(new_model, spec)
        if plan.mode == "normal":
            assert _moved(model, new_model), f"enough valid replies, the model stayed: {label}"
            assert set(hostile_ids) <= set(_ids(metrics["rejected-node-ids"])), label
        model = new_model


def _ids(value: object) -> list[int]:
    """Node ids from a legacy report's comma-separated list, sorted."""
    return sorted(int(node_id) for node_id in str(value).split(",") if node_id)


def test_dstar_legacy_aggregate_fit_survives_random_malformed_replies() -> None:
    """The same rounds, as legacy FitRes results and failures, to ``aggregate_fit``."""
    rng = np.random.default_rng(SEED + 1)
    tried: Counter[str] = Counter()
    _fuzz_legacy(rng, "float32", {"num_byzantine": 1, "first_k": 3}, 80, tried)
    _fuzz_legacy(rng, "mixed", {"num_byzantine": 2, "server_learning_rate": 1.5}, 80, tried)
    total = sum(tried.values())
    print(f"DStarLegacy.aggregate_fit: {total} replies in all; per kind:")
    for kind, count in sorted(tried.items()):
        print(f"  {kind:22s} {count:6d}")
    assert total >= 2_000
    assert set(tried) == {*(k for kinds in LEGACY_KINDS.values() for k in kinds), "duplicate"}


# --- what the fuzzing found --------------------------------------------------------


def test_replies_at_the_float32_maximum_do_not_carry_the_model_to_inf() -> None:
    """Regression: w + (w_i - w) rounded past the float32 maximum (a tie, to even: inf).

    w_i - w is a multiple of ulp(w) that float32 rounds to a multiple of the twice
    larger ulp of the update; adding it back to w landed exactly halfway between
    the largest float32 and 2**128.
    """
    top = np.finfo(np.float32).max
    global_weights = np.array([-1.4897591e38, -1.3923488e38], dtype=np.float32)
    replies = [np.full(2, -top, np.float32) for _ in range(3)]
    outcome = DStarRule(num_byzantine=0).apply(global_weights, replies, [1.0, 1.0, 1.0])
    assert outcome.weights is not None
    np.testing.assert_array_equal(outcome.weights, [-top, -top])


def test_a_server_learning_rate_above_one_saturates_instead_of_overflowing() -> None:
    top = np.finfo(np.float64).max
    replies = [np.full(3, top / 2) for _ in range(3)]
    rule = DStarRule(num_byzantine=1, server_learning_rate=4.0)
    outcome = rule.apply(np.zeros(3), replies, [1.0, 1.0, 1.0])
    assert outcome.weights is not None
    np.testing.assert_array_equal(outcome.weights, [top, top, top])


def test_narrower_float_arrays_saturate_when_unflattened() -> None:
    """Regression: float16 and float32 parts of a wider vector overflowed to inf."""
    record = ArrayRecord(
        {
            "half": Array(np.zeros(2, np.float16)),
            "single": Array(np.zeros(1, np.float32)),
            "double": Array(np.zeros(1, np.float64)),
        }
    )
    layout = layout_of(record)
    vector = np.array([7e4, -1e5, 1e39, 1e300])
    arrays = _numpy(unflatten_vector(vector, layout))
    np.testing.assert_array_equal(arrays["half"], np.array([65504, -65504], np.float16))
    np.testing.assert_array_equal(arrays["single"], [np.finfo(np.float32).max])
    np.testing.assert_array_equal(arrays["double"], [1e300])

"""The rule on torch tensors: the same decisions and result as on numpy arrays.

Run on CPU tensors (the device path's code is the same on every device);
skipped where torch is not installed, since the library does not need it.
"""

from typing import Any

import numpy as np
import pytest

from dstar_flwr import DStar, DStarRule, aggregation
from dstar_flwr.aggregation import DStarAggregation, dstar_aggregate

torch = pytest.importorskip("torch")


def _round(
    seed: int,
    num_updates: int,
    dimension: int,
    dtype: type = np.float32,
    *,
    ties: bool = False,
    non_finite_rows: tuple[int, ...] = (),
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Honest updates, one outlier (row 1), a validation update and weights.

    ``ties``: small integers, so that medians, deviations and norms tie exactly
    and every sum is exact; two updates are copies of another.
    """
    rng = np.random.default_rng(seed)
    if ties:
        updates = [rng.integers(-3, 4, size=dimension).astype(dtype) for _ in range(num_updates)]
        updates[2] = updates[0].copy()
        updates[3] = updates[0].copy()
        validation = rng.integers(-3, 4, size=dimension).astype(dtype)
    else:
        mean = rng.normal(size=dimension)
        updates = [
            (mean + 0.3 * rng.normal(size=dimension)).astype(dtype) for _ in range(num_updates)
        ]
        validation = (mean + 0.3 * rng.normal(size=dimension)).astype(dtype)
    updates[1] = updates[1] * 25
    for position, row in enumerate(non_finite_rows):
        updates[row][rng.integers(dimension)] = np.nan if position % 2 == 0 else np.inf
    return updates, validation, rng.uniform(1, 5, size=num_updates)


def _tensors(arrays: list[np.ndarray]) -> list[Any]:
    return [torch.from_numpy(array.copy()) for array in arrays]


def _assert_same(on_torch: DStarAggregation, on_numpy: DStarAggregation, exact: bool) -> None:
    assert on_torch.accepted == on_numpy.accepted
    assert on_torch.rejected == on_numpy.rejected
    assert on_torch.non_finite == on_numpy.non_finite
    assert on_torch.source == on_numpy.source
    rtol = 0 if exact else 1e-10
    np.testing.assert_allclose(on_torch.deviations, on_numpy.deviations, rtol=rtol)
    assert on_torch.threshold == pytest.approx(on_numpy.threshold, rel=rtol, abs=0)
    assert on_torch.scale == pytest.approx(on_numpy.scale, rel=rtol, nan_ok=True)
    if on_numpy.validation_deviation is None:
        assert on_torch.validation_deviation is None
    else:
        assert on_torch.validation_deviation == pytest.approx(
            on_numpy.validation_deviation, rel=rtol
        )
    center = on_torch.center
    if on_numpy.center is None:
        assert center is None
    else:
        np.testing.assert_array_equal(center.numpy(), on_numpy.center)
    aggregate = on_torch.aggregate.numpy()
    assert aggregate.dtype == on_numpy.aggregate.dtype
    atol = 8 * float(np.finfo(aggregate.dtype).eps) * max(1.0, float(np.abs(aggregate).max()))
    np.testing.assert_allclose(aggregate, on_numpy.aggregate, rtol=0, atol=atol)


CASES = [
    # (seed, n, d, f, dtype, ties, non-finite rows, validation: "finite" | "none" | "nan")
    (0, 7, 3001, 2, np.float32, False, (), "finite"),
    (1, 8, 2500, 2, np.float32, False, (), "none"),  # even n: the median's mean
    (2, 10, 1200, 3, np.float32, False, (2, 5), "finite"),  # NaN and Inf rows
    (3, 9, 1000, 2, np.float64, False, (4,), "nan"),  # a non-finite validation update
    (4, 12, 777, 3, np.float64, True, (), "finite"),  # ties
    (5, 11, 500, 3, np.float32, True, (7,), "none"),  # ties, no validation update
    (6, 33, 4000, 8, np.float32, False, (), "finite"),
]
IDS = [
    f"seed{c[0]}-n{c[1]}-{np.dtype(c[4]).name}-{'ties' if c[5] else 'noise'}-v{c[7]}" for c in CASES
]


def _inputs(case: tuple) -> tuple[list[np.ndarray], int, np.ndarray | None, np.ndarray]:
    seed, n, d, f, dtype, ties, bad_rows, kind = case
    updates, validation, weights = _round(seed, n, d, dtype, ties=ties, non_finite_rows=bad_rows)
    if kind == "nan":
        validation[3] = np.nan
    return updates, f, None if kind == "none" else validation, weights


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(
    "settings",
    [
        {"variant": "anchored"},
        {"variant": "anchored", "norm_test": False, "max_robust_z": 1.0},
        {"variant": "paper"},
        {"variant": "paper", "center": "clients", "scale": "max"},
    ],
    ids=["anchored", "anchored-z1-no-norm", "paper", "paper-clients-max"],
)
@pytest.mark.parametrize("path", ["kernel", "numpy"])
def test_tensors_give_the_numpy_result(
    case: tuple, settings: dict[str, Any], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "kernel":
        if aggregation._KERNELS is None:
            pytest.skip("numba is not installed")
        monkeypatch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 0)
    else:
        monkeypatch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 1 << 62)
    updates, f, validation, weights = _inputs(case)
    on_numpy = dstar_aggregate(
        updates, num_byzantine=f, validation=validation, weights=weights, **settings
    )
    on_torch = dstar_aggregate(
        _tensors(updates),
        num_byzantine=f,
        validation=None if validation is None else torch.from_numpy(validation.copy()),
        weights=weights,
        **settings,
    )
    assert isinstance(on_torch.aggregate, torch.Tensor)
    _assert_same(on_torch, on_numpy, exact=case[5])


def test_small_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from dstar_flwr import torch_aggregation

    updates, f, _, weights = _inputs(CASES[2])
    whole = dstar_aggregate(_tensors(updates), num_byzantine=f, weights=weights)
    monkeypatch.setattr(torch_aggregation, "_CPU_BLOCK_ELEMENTS", 1000)  # 100 coordinates a block
    blocks = dstar_aggregate(_tensors(updates), num_byzantine=f, weights=weights)
    assert blocks.accepted == whole.accepted
    torch.testing.assert_close(blocks.center, whole.center, rtol=0, atol=0)
    np.testing.assert_allclose(blocks.deviations, whole.deviations, rtol=1e-12)


def test_numpy_updates_with_a_device_come_back_as_numpy() -> None:
    updates, f, validation, weights = _inputs(CASES[0])
    on_host = dstar_aggregate(updates, num_byzantine=f, validation=validation, weights=weights)
    on_device = dstar_aggregate(
        updates, num_byzantine=f, validation=validation, weights=weights, device="cpu"
    )
    assert isinstance(on_device.aggregate, np.ndarray) and isinstance(on_device.center, np.ndarray)
    assert on_device.accepted == on_host.accepted
    np.testing.assert_allclose(on_device.aggregate, on_host.aggregate, rtol=1e-6, atol=1e-7)


def test_only_per_update_numbers_leave_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every transfer to the host goes through .cpu(), .numpy() or .item().
    sizes: list[int] = []
    for name in ("cpu", "numpy", "item"):
        original = getattr(torch.Tensor, name)

        def recording(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            sizes.append(self.numel())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    updates, f, validation, weights = _inputs(CASES[2])
    for variant in ("anchored", "paper"):
        result = dstar_aggregate(
            _tensors(updates),
            num_byzantine=f,
            validation=torch.from_numpy(validation),
            weights=weights,
            variant=variant,  # type: ignore[arg-type]
        )
        assert isinstance(result.aggregate, torch.Tensor)
    assert sizes and max(sizes) <= 3 * (len(updates) + 1)


def test_the_result_stays_on_the_updates_device_and_dtype() -> None:
    updates, f, _, weights = _inputs(CASES[3])  # float64
    tensors = [tensor.requires_grad_() for tensor in _tensors(updates)]
    result = dstar_aggregate(tensors, num_byzantine=f, weights=weights)
    assert result.aggregate.device == tensors[0].device
    assert result.aggregate.dtype == torch.float64 and not result.aggregate.requires_grad
    half = [torch.from_numpy(update.astype(np.float16)) for update in updates]
    assert dstar_aggregate(half, num_byzantine=f).aggregate.dtype == torch.float32


def test_all_non_finite_tensors_give_zeros() -> None:
    tensors = [torch.full((50,), float("nan")) for _ in range(3)]
    result = dstar_aggregate(tensors, num_byzantine=1)
    assert result.source == "none" and result.center is None
    torch.testing.assert_close(result.aggregate, torch.zeros(50))


def test_a_mean_at_the_float64_maximum_stays_finite_on_tensors() -> None:
    top = np.finfo(np.float64).max
    tensors = [torch.full((4,), top, dtype=torch.float64) for _ in range(3)]
    result = dstar_aggregate(tensors, num_byzantine=1, weights=[1.0, 1.0, 3.0])
    assert torch.isfinite(result.aggregate).all()


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "at least one update"),
        ([torch.ones(2), torch.ones(1)], "different lengths"),
        ([torch.ones((2, 2))], "1-D"),
        ([torch.ones(3, dtype=torch.int64)], "floating-point"),
    ],
)
def test_bad_tensors_raise_the_numpy_errors(updates: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dstar_aggregate(updates, num_byzantine=0, device="cpu")


def test_a_validation_tensor_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError, match="validation"):
        dstar_aggregate([torch.ones(3)] * 3, num_byzantine=1, validation=torch.ones(2))


def test_a_device_this_machine_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        dstar_aggregate([np.ones(3, np.float32)] * 3, num_byzantine=1, device="no-such-device")


# --- the strategy setting ---------------------------------------------------------


def test_the_rule_aggregates_on_the_device_it_is_given() -> None:
    updates, f, validation, weights = _inputs(CASES[0])
    global_weights = np.zeros_like(updates[0])
    arguments = (global_weights, updates, weights, validation)
    on_host = DStarRule(num_byzantine=f, first_k=7).apply(*arguments)
    on_device = DStarRule(num_byzantine=f, first_k=7, aggregation_device="cpu").apply(*arguments)
    assert isinstance(on_device.weights, np.ndarray)
    assert on_device.aggregation is not None and on_host.aggregation is not None
    assert on_device.aggregation.accepted == on_host.aggregation.accepted
    np.testing.assert_allclose(on_device.weights, on_host.weights, rtol=1e-6, atol=1e-7)


def test_the_strategy_takes_the_setting_and_checks_it() -> None:
    assert DStar(num_byzantine=1, aggregation_device="cpu").rule.aggregation_device == "cpu"
    with pytest.raises(ValueError, match="not available"):
        DStarRule(aggregation_device="no-such-device")
    with pytest.raises(ValueError, match="string"):
        DStarRule(aggregation_device=0)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available here"):
            DStarRule(aggregation_device="cuda")

"""The aggregation benchmark's CLI, and the optimised rule against a plain reference."""

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from dstar_flwr import aggregation
from dstar_flwr.aggregation import coordinate_median, dstar_aggregate, median_network
from simulations.benchmarks import bench_aggregation as bench


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cli_runs_a_tiny_grid_with_every_method(tmp_path: Path) -> None:
    csv_path, markdown = tmp_path / "bench.csv", tmp_path / "bench.md"
    argv = ["--sizes", "5", "--dims", "1000", "--repeats", "1", "--no-progress"]
    assert bench.main([*argv, "--csv", str(csv_path), "--markdown", str(markdown)]) == 0
    rows = _read_rows(csv_path)
    assert [row["method"] for row in rows] == list(bench.METHODS)
    assert list(rows[0]) == list(bench.CSV_COLUMNS)
    for row in rows:
        assert (row["N"], row["d"], row["status"]) == ("5", "1000", "ok")
        assert float(row["seconds"]) > 0
        assert float(row["peak_mib"]) >= 0
        assert float(row["ratio_to_mean_stream"]) > 0 and float(row["ratio_to_dstar"]) > 0
    assert next(r for r in rows if r["method"] == "dstar")["ratio_to_dstar"] == "1"
    report = markdown.read_text(encoding="utf-8")
    assert "| N | d | mean-stream | dstar |" in report
    assert "### Targets in every cell (this run)" in report
    assert "- dstar / mean-stream <= 10: met in" in report or "MISSED" in report
    assert "Target check at N=50, d=1e6" in report
    assert "- command: python -m simulations.benchmarks.bench_aggregation --sizes 5" in report


def test_the_torch_path_is_timed_on_the_device_it_is_given(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    csv_path, markdown = tmp_path / "bench.csv", tmp_path / "bench.md"
    argv = ["--sizes", "5", "--dims", "1000", "--repeats", "1", "--no-progress"]
    argv += ["--methods", "mean-stream,dstar,dstar-torch", "--device", "cpu"]
    assert bench.main([*argv, "--csv", str(csv_path), "--markdown", str(markdown)]) == 0
    rows = {row["method"]: row for row in _read_rows(csv_path)}
    assert rows["dstar-torch"]["status"] == "ok" and float(rows["dstar-torch"]["seconds"]) > 0
    assert rows["dstar-torch"]["peak_mib"] == ""  # torch's CPU allocator is not traced
    assert "- dstar-torch: torch " in markdown.read_text(encoding="utf-8")


def test_stages_are_timed_beside_the_streaming_mean(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--stages", "--sizes", "5", "--dims", "2000", "--repeats", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "N=5, d=2000, float32, best of 1" in out
    assert "| mean-stream |" in out and "| 1.00 |" in out
    for name in bench.stage_calls(bench.make_inputs(5, 2000, 0)):
        assert f"| {name} |" in out


def test_the_target_table_checks_every_cell() -> None:
    def row(n: int, d: int, method: str, seconds: float) -> bench.Row:
        return bench.Row(n=n, d=d, method=method, f=0, seconds=seconds)

    rows = [
        row(10, 1000, "mean-stream", 1.0),
        row(10, 1000, "dstar", 4.0),
        row(10, 1000, "flwr-median", 40.0),
        row(50, 1000, "mean-stream", 1.0),
        row(50, 1000, "dstar", 12.0),
        row(50, 1000, "flwr-median", 24.0),
        row(50, 10_000, "mean-stream", 1.0),
        row(50, 10_000, "dstar", 2.0),
    ]
    text = "\n".join(bench.target_table(rows))
    assert "| 10 | 1e3 | 4.00 met | 10.00 met |" in text
    assert "| 50 | 1e3 | 12.00 MISSED | 2.00 MISSED |" in text
    assert "| 50 | 1e4 | 2.00 met | not measured |" in text
    assert "met in 2 of 3 cells (largest 12.00, at N=50, d=1e3)" in text
    assert "met in 1 of 2 cells where flwr-median ran (smallest 2.00, at N=50, d=1e3)" in text


def test_a_cell_over_the_memory_budget_is_skipped_with_the_reason(tmp_path: Path) -> None:
    csv_path = tmp_path / "bench.csv"
    argv = ["--sizes", "5", "--dims", "1e6", "--budget-gib", "0.001", "--no-progress"]
    bench.main([*argv, "--csv", str(csv_path), "--markdown", str(tmp_path / "bench.md")])
    rows = _read_rows(csv_path)
    assert len(rows) == len(bench.METHODS)
    for row in rows:
        assert row["status"].startswith("skipped: needs ~"), row["status"]
        assert "GiB" in row["status"] and row["seconds"] == ""
    assert bench.memory_skip("flwr-median", 10, 1000, budget=1 << 30) is None
    reason = bench.memory_skip("flwr-median", 200, 10_000_000, budget=16 << 30)
    assert reason is not None and "needs ~22" in reason


def test_a_run_estimated_over_max_seconds_is_skipped_with_the_reason() -> None:
    rows = bench.run_grid(
        [5],
        [1000, 4000],
        ["mean-stream", "flwr-krum"],
        repeats=1,
        max_seconds=1e-12,
        budget=1 << 30,
        seed=0,
        progress=False,
    )
    status = {(row.d, row.method): row.status for row in rows}
    assert status[(1000, "flwr-krum")] == "ok"  # nothing to scale from yet
    assert status[(4000, "flwr-krum")].startswith("skipped: estimated ~")
    assert "scaled from N=5, d=1e3" in status[(4000, "flwr-krum")]


def test_bulyan_gets_an_f_it_accepts() -> None:
    assert bench.method_bound("flwr-bulyan", 10) == 1  # floor(0.2 * 10) = 2 needs N >= 11
    assert bench.method_bound("flwr-bulyan", 50) == 10
    assert bench.method_bound("flwr-krum", 10) == 2


# --- the optimised rule against a straightforward reference -----------------------


def _stacked(
    updates: list[np.ndarray], validation: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The updates stacked, which rows are finite, and v (None when not finite)."""
    stack = np.stack(updates)
    if validation is not None and not np.all(np.isfinite(validation)):
        validation = None
    return stack, np.all(np.isfinite(stack), axis=1), validation


def _reference(
    updates: list[np.ndarray],
    num_byzantine: int,
    validation: np.ndarray | None,
    weights: np.ndarray | None,
    center: str = "ensemble",
) -> dict[str, object]:
    """The paper's reading as the README states it, with np.median, np.linalg.norm, np.stack."""
    stack, finite, validation = _stacked(updates, validation)
    dtype = stack.dtype
    members = stack[finite]
    if validation is not None and center == "ensemble":
        members = np.concatenate([members, validation[None, :].astype(dtype)])
    median = np.median(members, axis=0).astype(dtype)
    deviations = np.full(len(updates), np.inf)
    for i in np.flatnonzero(finite):
        deviations[i] = np.linalg.norm((stack[i] - median).astype(np.float64))
    validation_deviation = (
        float(np.linalg.norm((validation.astype(dtype) - median).astype(np.float64)))
        if validation is not None
        else None
    )
    ensemble = list(deviations[finite])
    if validation_deviation is not None:
        ensemble.append(validation_deviation)
    threshold = 2.0 * float(np.median(ensemble))
    candidates = sorted(
        (i for i in np.flatnonzero(finite) if deviations[i] <= threshold),
        key=lambda i: (deviations[i], i),
    )[: len(updates) - num_byzantine]
    accepted = tuple(sorted(int(i) for i in candidates))
    w = np.ones(len(updates)) if weights is None else np.asarray(weights, dtype=np.float64)
    kept = w[list(accepted)]
    kept = kept / kept.sum()
    aggregate = (kept[:, None] * stack[list(accepted)].astype(np.float64)).sum(axis=0)
    return {
        "center": median,
        "deviations": deviations,
        "validation_deviation": validation_deviation,
        "accepted": accepted,
        "non_finite": tuple(int(i) for i in np.flatnonzero(~finite)),
        "threshold": threshold,
        "aggregate": aggregate.astype(dtype),
    }


def _qn(values: np.ndarray) -> float:
    """Qn written out: every pairwise difference sorted, the C(h, 2)-th taken."""
    n = len(values)
    if n < 2:
        return 0.0
    differences = sorted(abs(values[i] - values[j]) for i in range(n) for j in range(i + 1, n))
    h = n // 2 + 1
    small = {2: 0.399, 3: 0.994, 4: 0.512, 5: 0.844, 6: 0.611, 7: 0.857, 8: 0.669, 9: 0.872}
    correction = small.get(n, n / (n + 1.4) if n % 2 else n / (n + 3.8))
    return 2.2219 * correction * differences[h * (h - 1) // 2 - 1]


def _anchored_reference(
    updates: list[np.ndarray],
    validation: np.ndarray | None,
    weights: np.ndarray | None,
    z: float = 3.0,
) -> dict[str, object]:
    """The anchored filter as the README states it, in plain numpy."""
    stack, finite, validation = _stacked(updates, validation)
    dtype = stack.dtype
    reference = (
        validation.astype(dtype)
        if validation is not None
        else np.median(stack[finite], axis=0).astype(dtype)
    )
    deviations = np.full(len(updates), np.inf)
    norms = np.full(len(updates), np.inf)
    for i in np.flatnonzero(finite):
        deviations[i] = np.linalg.norm((stack[i] - reference).astype(np.float64))
        norms[i] = np.linalg.norm(stack[i].astype(np.float64))
    eps = float(np.finfo(dtype).eps)
    middle = float(np.median(deviations[finite]))
    floor = middle + np.sqrt(eps) * (middle + np.linalg.norm(reference.astype(np.float64))) + eps
    threshold = max(middle + z * _qn(deviations[finite]), floor)
    norm_middle = float(np.median(norms[finite]))
    band = max(z * _qn(norms[finite]), np.sqrt(eps) * norm_middle + eps)
    accepted = tuple(
        int(i)
        for i in np.flatnonzero(finite)
        if deviations[i] <= threshold and abs(norms[i] - norm_middle) <= band
    )
    w = np.ones(len(updates)) if weights is None else np.asarray(weights, dtype=np.float64)
    kept = w[list(accepted)] / w[list(accepted)].sum()
    aggregate = (kept[:, None] * stack[list(accepted)].astype(np.float64)).sum(axis=0)
    return {
        "center": reference,
        "deviations": deviations,
        "accepted": accepted,
        "threshold": threshold,
        "aggregate": aggregate.astype(dtype),
    }


CASES = [
    # (n, d, f, validation, nan_rows, weighted, dtype, center)
    (7, 3000, 2, True, (), True, np.float32, "ensemble"),  # odd n, even with v
    (8, 3000, 2, True, (), False, np.float32, "ensemble"),  # even n, odd with v
    (9, 2500, 3, False, (), True, np.float32, "ensemble"),  # odd, no validation
    (10, 2500, 3, False, (2, 5), True, np.float32, "ensemble"),  # NaN and Inf rows
    (12, 1500, 3, True, (0,), True, np.float64, "ensemble"),  # float64
    (11, 2000, 2, True, (4,), False, np.float32, "clients"),  # validation not a member
    (33, 700, 8, True, (), True, np.float32, "ensemble"),
]


def _inputs(case: tuple) -> tuple:
    """A case's updates (row 1 an outlier, NaN/Inf rows), f, validation, weights, center."""
    n, d, f, with_validation, bad_rows, weighted, dtype, center = case
    rng = np.random.default_rng(n * 1000 + d)
    updates = [(rng.normal(size=d) * 0.1 + 1.0).astype(dtype) for _ in range(n)]
    updates[1] = updates[1] * 30  # an outlier the filter rejects
    for position, row in enumerate(bad_rows):
        updates[row][rng.integers(d)] = np.nan if position % 2 == 0 else np.inf
    validation = (rng.normal(size=d) * 0.1 + 1.0).astype(dtype) if with_validation else None
    weights = rng.uniform(1, 10, size=n) if weighted else None
    return updates, f, validation, weights, center


@pytest.fixture(params=["kernel", "numpy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force the compiled path (with small chunks and threads) or the numpy one."""
    if request.param == "kernel":
        if aggregation._KERNELS is None:
            pytest.skip("numba is not installed")
        monkeypatch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 0)
        monkeypatch.setattr(aggregation, "_CHUNK_ALIGN", 1000)  # several chunks, odd sizes
        monkeypatch.setattr(aggregation, "_MAX_CHUNK", 1000)
        monkeypatch.setattr(aggregation, "_ELEMENTS_PER_THREAD", 1)  # and threads
    else:
        monkeypatch.setattr(aggregation, "_KERNEL_MIN_ELEMENTS", 1 << 62)
        monkeypatch.setattr(aggregation, "_NUMPY_BLOCK_ELEMENTS", 5000)  # several blocks
    return str(request.param)


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}-{c[6].__name__}-{c[7]}" for c in CASES])
def test_optimised_rule_matches_the_reference(path: str, case: tuple) -> None:
    updates, f, validation, weights, center = _inputs(case)
    dtype = updates[0].dtype
    expected = _reference(updates, f, validation, weights, center)
    result = dstar_aggregate(
        updates,
        num_byzantine=f,
        validation=validation,
        weights=weights,
        center=center,  # type: ignore[arg-type]
        variant="paper",
    )
    np.testing.assert_allclose(result.center, expected["center"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.deviations, expected["deviations"], rtol=1e-6)
    assert result.accepted == expected["accepted"]
    assert 1 in result.rejected
    assert result.non_finite == expected["non_finite"]
    assert result.threshold == pytest.approx(expected["threshold"], rel=1e-6)
    if expected["validation_deviation"] is None:
        assert result.validation_deviation is None
    else:
        assert result.validation_deviation == pytest.approx(expected["validation_deviation"])
    assert result.aggregate.dtype == dtype
    np.testing.assert_allclose(result.aggregate, expected["aggregate"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}-{c[6].__name__}" for c in CASES])
def test_optimised_anchored_rule_matches_the_reference(path: str, case: tuple) -> None:
    updates, f, validation, weights, _ = _inputs(case)
    expected = _anchored_reference(updates, validation, weights)
    result = dstar_aggregate(updates, num_byzantine=f, validation=validation, weights=weights)
    np.testing.assert_allclose(result.center, expected["center"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.deviations, expected["deviations"], rtol=1e-6)
    assert result.accepted == expected["accepted"]
    assert 1 in result.rejected
    assert result.threshold == pytest.approx(expected["threshold"], rel=1e-6)
    np.testing.assert_allclose(result.aggregate, expected["aggregate"], rtol=1e-6, atol=1e-7)


def test_non_finite_validation_is_dropped_on_both_paths(path: str) -> None:
    rng = np.random.default_rng(3)
    updates = [rng.normal(size=2000).astype(np.float32) for _ in range(5)]
    validation = rng.normal(size=2000).astype(np.float32)
    validation[7] = np.inf
    result = dstar_aggregate(updates, num_byzantine=1, validation=validation, variant="paper")
    assert result.validation_deviation is None
    np.testing.assert_allclose(result.center, np.median(np.stack(updates), axis=0), rtol=1e-6)


def test_all_non_finite_on_both_paths(path: str) -> None:
    updates = [np.full(3000, np.nan, np.float32) for _ in range(3)]
    result = dstar_aggregate(updates, num_byzantine=1)
    assert result.source == "none" and result.center is None
    np.testing.assert_array_equal(result.aggregate, np.zeros(3000, np.float32))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16, 17, 50, 51, 201])
def test_coordinate_median_matches_numpy_on_both_paths(path: str, rows: int) -> None:
    stack = np.random.default_rng(rows).normal(size=(rows, 1500)).astype(np.float32)
    np.testing.assert_allclose(coordinate_median(stack), np.median(stack, axis=0), rtol=1e-6)


@pytest.mark.parametrize("num_rows", range(1, 15))
def test_median_network_selects_the_middle_on_every_zero_one_input(num_rows: int) -> None:
    # The 0-1 principle: a comparator network that selects the middle order
    # statistics of every 0/1 input does so for every input.
    inputs = np.array(list(itertools.product((0, 1), repeat=num_rows)), dtype=np.int8).T
    for a, b in median_network(num_rows):
        low, high = np.minimum(inputs[a], inputs[b]), np.maximum(inputs[a], inputs[b])
        inputs[a], inputs[b] = low, high
    ordered = np.sort(inputs, axis=0)
    for wire in {(num_rows - 1) // 2, num_rows // 2}:
        np.testing.assert_array_equal(inputs[wire], ordered[wire])

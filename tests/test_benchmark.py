"""The benchmark grid: cells, resumability, rows, the report, and a smoke grid on Flower."""

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from simulations.benchmarks import benchmark
from simulations.benchmarks.benchmark import GRIDS, Cell, Grid, collect_rows, row_of, write_rows
from simulations.benchmarks.benchmark_report import markdown_table, write_report


def _grid(**changes: object) -> Grid:
    base = {
        "strategies": ("dstar", "fedavg"),
        "attacks": ("alie", "ipm"),
        "byzantine_fractions": (0.0, 0.2),
        "stragglers": ("none", "slow-20"),
        "datasets": ("digits",),
        "seeds": (0,),
        "threat_models": ("omniscient",),
        "num_nodes": 10,
        "rounds": 3,
    }
    return Grid(**{**base, **changes})  # type: ignore[arg-type]


def test_no_attack_cells_run_once_per_setting() -> None:
    cells = _grid().cells()
    # 2 strategies x 2 straggler profiles x (1 clean + 2 attacked) = 12 cells.
    assert len(cells) == 12
    clean = [c for c in cells if c.byzantine_fraction == 0]
    assert {c.attack for c in clean} == {"none"}
    assert len({c.cell_id for c in cells}) == len(cells)


def test_cell_overrides_keep_k_at_least_2f_plus_1_and_skip_stragglers() -> None:
    cell = Cell("dstar", "alie", 0.3, "slow-20", "digits", 1, "omniscient")
    overrides = cell.overrides(num_nodes=10, rounds=4)
    assert overrides["num-byzantine-nodes"] == 3 and overrides["num-byzantine"] == 3
    assert overrides["num-stragglers"] == 2
    assert overrides["first-k"] == 8  # 10 nodes - 2 stragglers >= 2f + 1 = 7
    assert overrides["latency-model"] == "stragglers"
    heavy = Cell("dstar", "alie", 0.4, "slow-20", "digits", 1, "omniscient")
    assert heavy.overrides(num_nodes=10, rounds=4)["first-k"] == 9  # 2f + 1


def _fake_result(path: Path, strategy: str, attack: str, byzantine: int, accuracy: float) -> None:
    rounds = [
        {
            "server_round": r,
            "test_accuracy": accuracy * r / 3,
            "round_seconds": 0.5,
            "cosine_to_honest": 0.9,
            "rho": 0.8,
        }
        for r in (1, 2, 3)
    ]
    document = {
        "config": {"strategy": strategy, "attack": attack, "dataset": "digits", "seed": 0},
        "summary": {
            "final-test-accuracy": accuracy,
            "byzantine-rejection-rate": 1.0,
            "honest-rejection-rate": 0.0,
        },
        "byzantine-partitions": list(range(byzantine)),
        "straggler-partitions": [],
        "rounds": rounds,
    }
    path.write_text(json.dumps(document))


def test_rows_and_report_from_results_files(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_result(runs / "a.json", "dstar", "none", 0, 0.95)
    _fake_result(runs / "b.json", "dstar", "ipm", 2, 0.93)
    _fake_result(runs / "c.json", "fedavg", "none", 0, 0.94)
    _fake_result(runs / "d.json", "fedavg", "ipm", 2, 0.40)
    (runs / "e.failed.json").write_text("{}")
    rows = collect_rows(tmp_path)
    assert [r["cell"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[3]["final-accuracy"] == pytest.approx(0.40)
    assert rows[0]["mean-cosine"] == pytest.approx(0.9)
    write_rows(rows, tmp_path)
    with (tmp_path / "rows.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == 4
    report = tmp_path / "docs" / "bench.md"
    write_report(rows, report, command="python -m simulations.benchmarks.benchmark", machine="test")
    text = report.read_text()
    assert "| fedavg | 0.940 | 0.400 | 0.540 |" in text  # no attack, ipm, worst drop
    assert (tmp_path / "docs" / "figures" / "bench-accuracy-per-round.png").stat().st_size > 0
    assert (tmp_path / "docs" / "figures" / "bench-accuracy-vs-byzantine.png").exists()


def test_row_of_reads_a_real_results_layout(tmp_path: Path) -> None:
    _fake_result(tmp_path / "x.json", "krum", "alie", 1, 0.5)
    row = row_of(tmp_path / "x.json")
    assert row["strategy"] == "krum" and row["byzantine-nodes"] == 1
    assert row["accuracy-per-round"] == pytest.approx([0.5 / 3, 1 / 3, 0.5])


def test_markdown_table_formats_numbers() -> None:
    table = markdown_table(["a", "b"], [["x", 0.12345], ["y", float("nan")]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |", "| y | — |"]


def test_a_failed_cell_is_retried_recorded_and_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = replace(GRIDS["smoke"], strategies=("dstar", "fltrust", "fedavg"))
    attempts: list[str] = []

    def run_simulation(overrides: dict[str, object], **_: object) -> Path:
        name = str(overrides["run-name"])
        if name.startswith("fltrust") or (name.startswith("dstar") and name not in attempts):
            attempts.append(name)
            raise RuntimeError(f"`flwr run` failed (exit 1) for {name}")
        return _succeed(overrides, attempts)

    monkeypatch.setattr(benchmark, "run_simulation", run_simulation)
    monkeypatch.setattr(benchmark, "GRIDS", {**GRIDS, "smoke": grid})
    out = tmp_path / "grid"
    argv = ["--grid", "smoke", "--out", str(out), "--report", str(tmp_path / "r.md")]
    assert benchmark.main(argv) == 1
    dstar, fltrust, fedavg = (cell.cell_id for cell in grid.cells())
    # One retry each: DStar's second attempt succeeds, FLTrust fails both.
    assert attempts == [dstar, dstar, fltrust, fltrust, fedavg]
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        [f"{dstar}.json", f"{fltrust}.failed.json", f"{fedavg}.json"]
    )
    failure = json.loads((runs / f"{fltrust}.failed.json").read_text())
    assert len(failure["errors"]) == 2 and "exit 1" in failure["errors"][0]
    printed = capsys.readouterr()
    assert f"cell {dstar}: attempt 1 of 2 failed" in printed.out
    assert f"1 cells failed (run the command again to retry them): ['{fltrust}']" in printed.out
    assert len(json.loads((out / "rows.json").read_text())) == 2  # the others are reported

    # The next invocation runs only the failed cell; once it succeeds, its record goes.
    attempts.clear()
    monkeypatch.setattr(benchmark, "run_simulation", lambda o, **_: _succeed(o, attempts))
    assert benchmark.main([*argv, "--retries", "0"]) == 0
    assert attempts == [fltrust]
    assert not (runs / f"{fltrust}.failed.json").exists() and (runs / f"{fltrust}.json").exists()
    with pytest.raises(SystemExit):
        benchmark.main([*argv, "--retries", "-1"])


def _succeed(overrides: dict[str, object], attempts: list[str]) -> Path:
    """A stand-in for run_simulation that writes a results file and logs the attempt."""
    name = str(overrides["run-name"])
    attempts.append(name)
    path = Path(str(overrides["results-dir"])) / f"{name}.json"
    _fake_result(path, str(overrides["strategy"]), "sign-flip", 1, 0.9)
    return path


@pytest.mark.simulation
def test_smoke_grid_runs_resumes_and_reports(tmp_path: Path) -> None:
    out, report = tmp_path / "grid", tmp_path / "report.md"
    status = benchmark.main(["--grid", "smoke", "--out", str(out), "--report", str(report)])
    failures = {p.name: p.read_text() for p in (out / "runs").glob("*.failed.json")}
    assert not failures, failures
    assert status == 0
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == len(GRIDS["smoke"].cells()) == 2
    assert (out / "rows.csv").exists() and (out / "rows.json").exists()
    assert "## Accuracy under attack" in report.read_text()
    assert list((tmp_path / "figures").glob("*.png"))
    stamps = [path.stat().st_mtime for path in runs]
    assert benchmark.main(["--grid", "smoke", "--out", str(out), "--report", str(report)]) == 0
    assert [path.stat().st_mtime for path in runs] == stamps  # finished cells are skipped

    # The runs themselves, end to end on Flower's engine: 5 nodes, partition 0
    # Byzantine (omniscient sign-flip), partition 4 a 3 s straggler.
    for path in runs:
        results = json.loads(path.read_text())
        rounds = results["rounds"]
        explain = f"{path.name}: {json.dumps(rounds, indent=1)}"
        assert (results["byzantine-partitions"], results["straggler-partitions"]) == ([0], [4])
        assert [r["server_round"] for r in rounds] == [1, 2], explain
        for row in rounds:
            assert 0 <= row["test_accuracy"] <= 1, explain
            for key in ("cosine_to_honest", "rho", "relative_error"):
                assert row[key] is not None and math.isfinite(row[key]), explain
        if results["strategy"] == "dstar":
            # First k = 4: the straggler is late in round 1 and, busy with that
            # reply, not sent round 2; the Byzantine node is rejected.
            assert rounds[0]["late_partitions"] == [4], explain
            for row in rounds:
                assert 4 not in row["received_partitions"], explain
                assert 0 in row["rejected_partitions"], explain
                assert row["cosine_to_honest"] > 0.5, explain
                assert row["byzantine_recall"] == 1.0, explain
                assert 0 < row["byzantine_precision"] <= 1, explain
            assert results["summary"]["byzantine-rejection-rate"] == 1.0, explain
        else:
            # FLTrust waits for every node and gives the attacker (almost) no trust.
            assert results["strategy"] == "fltrust"
            for row in rounds:
                assert row["received_partitions"] == [0, 1, 2, 3, 4], explain
                assert row["cosine_to_honest"] > 0.9, explain
                assert row["round_seconds"] is not None and row["round_seconds"] > 0, explain


def test_axis_flags_replace_the_preset_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Grid] = []
    monkeypatch.setattr(benchmark, "run_grid", lambda grid, out, **_: seen.append(grid))
    argv = ["--grid", "strong", "--out", str(tmp_path), "--strategies", "dstar", "krum"]
    with pytest.raises(SystemExit):  # nothing ran, so there is nothing to report
        benchmark.main([*argv, "--byzantine-fractions", "0.1", "0.2", "--seeds", "3"])
    (grid,) = seen
    assert grid.strategies == ("dstar", "krum")
    assert grid.byzantine_fractions == (0.1, 0.2) and grid.seeds == (3,)
    assert grid.attacks == GRIDS["strong"].attacks  # the axes not named keep the preset's
    with pytest.raises(SystemExit):
        benchmark.main(["--out", str(tmp_path), "--byzantine-fractions", "1.0"])


def test_unavailable_datasets_are_skipped_with_their_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_grid(grid: Grid, out: Path, **_: object) -> None:
        raise AssertionError(f"nothing should run, got {grid.datasets}")

    monkeypatch.setattr(benchmark, "run_grid", run_grid)
    monkeypatch.setattr(benchmark, "dataset_unavailable", lambda name: f"{name} files missing")
    assert benchmark.main(["--grid", "paper", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "skipping every fashion-mnist cell: fashion-mnist files missing" in printed
    assert "skipping every cifar10 cell: cifar10 files missing" in printed
    assert "nothing to run" in printed


def test_paper_datasets_report_why_they_cannot_load_here() -> None:
    reasons = {name: benchmark.dataset_unavailable(name) for name in GRIDS["paper"].datasets}
    if all(reason is None for reason in reasons.values()):
        pytest.skip("torchvision and the Fashion-MNIST and CIFAR-10 files are present")
    for name, reason in reasons.items():
        if reason is not None:
            assert name in reason and ("torchvision" in reason or "not found" in reason)
    assert benchmark.dataset_unavailable("digits") is None

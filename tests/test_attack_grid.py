"""The attack grid's cells, their run configs, and a smoke run end to end."""

from __future__ import annotations

import json

import pytest

from simulations.benchmarks.attack_grid import (
    ATTACKS,
    PARTITIONS,
    PRESETS,
    STRATEGIES,
    TAILORED_RULE,
    Cell,
    Settings,
    collect_rows,
    main,
)
from simulations.federation.inprocess import default_run_config


def _cell(**changes: object) -> Cell:
    fields = {
        "dataset": "mnist1d",
        "partition": "dir0.5",
        "byzantine_fraction": 0.2,
        "attack": "alie",
        "strategy": "dstar",
        "f_estimate": "true",
        "seed": 0,
    }
    return Cell(**(fields | changes))  # type: ignore[arg-type]


def test_the_full_grid_has_every_axis_of_the_issue() -> None:
    cells = PRESETS["full"].cells()
    assert {c.dataset for c in cells} == {"mnist1d", "digits"}
    assert {c.partition for c in cells} == set(PARTITIONS)
    assert {c.byzantine_fraction for c in cells} == {0.0, 0.1, 0.2, 0.3, 0.4}
    assert {c.attack for c in cells} == set(ATTACKS)
    assert {c.strategy for c in cells} == set(STRATEGIES)
    assert {c.seed for c in cells} == {0, 1, 2}
    estimates = {(c.strategy, c.f_estimate, c.dataset, c.partition) for c in cells}
    assert ("dstar", "over", "mnist1d", "dir0.5") in estimates
    assert ("dstar", "under", "mnist1d", "dir0.5") in estimates
    assert all(
        s == "dstar" and (d, p) == ("mnist1d", "dir0.5") for s, e, d, p in estimates if e != "true"
    )
    assert len({c.cell_id for c in cells}) == len(cells)


def test_clean_cells_run_once_per_strategy_and_seed() -> None:
    clean = [c for c in PRESETS["headline"].cells() if c.attack == "none"]
    assert all(c.byzantine_fraction == 0.0 for c in clean)
    assert len(clean) == (len(STRATEGIES) + 2) * 3  # dstar under and over, 3 seeds


@pytest.mark.parametrize(
    ("estimate", "fraction", "expected"),
    [("true", 0.2, 4), ("under", 0.2, 2), ("over", 0.2, 6), ("under", 0.1, 0), ("over", 0.4, 9)],
)
def test_assumed_f_is_off_by_a_tenth_of_the_nodes_and_clipped(
    estimate: str, fraction: float, expected: int
) -> None:
    assert _cell(f_estimate=estimate, byzantine_fraction=fraction).assumed_f(20) == expected


def test_cells_that_cannot_run_say_why() -> None:
    assert "4f + 3" in (_cell(strategy="bulyan", byzantine_fraction=0.3).not_applicable(20) or "")
    assert _cell(strategy="bulyan", byzantine_fraction=0.2).not_applicable(20) is None
    assert "fedavg" in (_cell(strategy="fedavg", attack="tailored").not_applicable(20) or "")


def test_overrides_are_valid_run_config_for_every_strategy_and_attack() -> None:
    known = set(default_run_config())
    for strategy in STRATEGIES:
        for attack in ATTACKS:
            overrides = _cell(strategy=strategy, attack=attack).overrides(20, Settings())
            assert set(overrides) <= known, set(overrides) - known
            assert overrides["threat-model"] == "omniscient"
            assert overrides["num-byzantine-nodes"] == 4
            if attack == "tailored" and TAILORED_RULE[strategy]:
                assert overrides["attack"] == f"tailored-{TAILORED_RULE[strategy]}"
    paper = _cell(strategy="dstar-paper").overrides(20, Settings())
    assert paper["strategy"] == "dstar" and paper["dstar-variant"] == "paper"
    inflation = _cell(attack="inflation").overrides(20, Settings())
    assert inflation["claimed-num-examples"] == 1_000_000
    slow = _cell(stragglers=True).overrides(20, Settings())
    assert slow["latency-model"] == "log-normal" and slow["first-k"] == 0.8


def test_smoke_preset_runs_resumes_and_reports(tmp_path) -> None:
    report = tmp_path / "results.md"
    report.write_text("# Results\n\nkept text\n")
    argv = [
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "grid"),
        "--no-progress",
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    rows = collect_rows(tmp_path / "grid")
    assert len(rows) == len(PRESETS["smoke"].cells())
    ran = [r for r in rows if r["status"] == "ok"]
    assert ran and all(0.0 <= r["final-accuracy"] <= 1.0 for r in ran)
    assert all(len(r["accuracy-per-round"]) == 2 for r in ran)
    assert {r["status"] for r in rows} == {"ok", "not-applicable"}
    slow = {r["strategy"]: r for r in ran if r["stragglers"]}
    # first-k ends the round at the 8th of 10 log-normal delays, FedAvg at the 10th.
    assert slow["dstar"]["mean-round-seconds"] < slow["fedavg"]["mean-round-seconds"]
    text = report.read_text()
    assert "kept text" in text and "<!-- attack-grid:begin -->" in text
    # A second invocation finds every row and runs nothing.
    before = {p.name: p.stat().st_mtime for p in (tmp_path / "grid" / "rows").iterdir()}
    assert main([*argv, "--no-report"]) == 0
    after = {p.name: p.stat().st_mtime for p in (tmp_path / "grid" / "rows").iterdir()}
    assert before == after
    assert json.loads((tmp_path / "grid" / "rows.json").read_text()) == rows

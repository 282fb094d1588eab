"""The attack grid's report, on synthetic rows: drops, targets, stragglers, the report file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from simulations.benchmarks import attack_grid_report
from simulations.benchmarks.attack_grid_report import (
    BEGIN,
    END,
    HEADLINE,
    STRAGGLER_FIGURE,
    build_markdown,
    check_below,
    check_clean_parity,
    check_smallest_drop,
    curve_name,
    drop_table,
    format_drop,
    format_mean_std,
    heatmap_name,
    index_rows,
    replace_marked_block,
    time_to_accuracy,
    time_to_fedavg_accuracy,
    worst_case_drop,
    write_report,
)


def ok_row(
    strategy: str = "dstar",
    attack: str = "none",
    fraction: float = 0.0,
    accuracy: float = 0.8,
    *,
    seed: int = 0,
    dataset: str = "mnist1d",
    partition: str = "dir0.5",
    estimate: str = "true",
    stragglers: bool = False,
    per_round: list[float] | None = None,
    round_seconds: list[float] | None = None,
) -> dict[str, object]:
    """A finished cell's row."""
    per_round = per_round if per_round is not None else [accuracy / 2, accuracy]
    round_seconds = round_seconds if round_seconds is not None else [1.0] * len(per_round)
    return {
        "dataset": dataset,
        "partition": partition,
        "byzantine-fraction": fraction,
        "attack": attack,
        "strategy": strategy,
        "f-estimate": estimate,
        "seed": seed,
        "stragglers": stragglers,
        "status": "ok",
        "num-nodes": 20,
        "byzantine-nodes": round(fraction * 20),
        "assumed-f": round(fraction * 20),
        "rounds": len(per_round),
        "final-accuracy": accuracy,
        "accuracy-per-round": per_round,
        "round-seconds": round_seconds,
        "mean-round-seconds": sum(round_seconds) / len(round_seconds),
        "byzantine-rejection-rate": math.nan,
        "honest-rejection-rate": 0.0,
        "mean-cosine-to-honest": 0.9,
        "cell-seconds": 2.0,
    }


def na_row(strategy: str, attack: str, fraction: float, seed: int = 0) -> dict[str, object]:
    """A not-applicable cell's row."""
    return {
        "dataset": "mnist1d",
        "partition": "dir0.5",
        "byzantine-fraction": fraction,
        "attack": attack,
        "strategy": strategy,
        "f-estimate": "true",
        "seed": seed,
        "stragglers": False,
        "status": "not-applicable",
        "reason": "Bulyan needs N >= 4f + 3 = 27 replies, N = 20",
        "num-nodes": 20,
        "byzantine-nodes": round(fraction * 20),
        "assumed-f": round(fraction * 20),
    }


def seeds(strategy: str, attack: str, fraction: float, accuracy: float, n: int = 3) -> list:
    return [ok_row(strategy, attack, fraction, accuracy, seed=s) for s in range(n)]


def test_worst_case_drop_takes_the_largest_drop_and_names_its_attack() -> None:
    rows = [
        *seeds("dstar", "none", 0.0, 0.80),
        *seeds("dstar", "sign-flip", 0.2, 0.70),
        *seeds("dstar", "alie", 0.2, 0.50, n=2),
        *seeds("dstar", "gaussian", 0.2, 0.75),
        na_row("dstar", "tailored", 0.2),
    ]
    index = index_rows(rows)
    drop = worst_case_drop(index, HEADLINE, 0.2, "dstar")
    assert drop is not None
    assert drop.points == pytest.approx(30.0)
    assert drop.attack == "alie"
    assert drop.seeds == 2
    assert drop.attacks_run == 3
    assert drop.attacks_expected == 9  # ten attacks, the tailored one not applicable
    assert format_drop(drop) == "30.0 (alie; n=2; 3/9 attacks)"
    # A column with no attacked cell, and one without a clean baseline.
    assert worst_case_drop(index, HEADLINE, 0.4, "dstar") is None
    assert worst_case_drop(index, HEADLINE, 0.2, "fedavg") is None
    assert format_drop(None) == "—"
    assert format_drop(None, not_applicable=True) == "n/a"


def test_worst_case_drop_ignores_not_applicable_rows_and_tables_show_missing_cells() -> None:
    from simulations.benchmarks.attack_grid import ALL_ATTACKS

    attacks = [a for a in ALL_ATTACKS if a != "none"]
    rows = [
        *seeds("dstar", "none", 0.0, 0.80),
        *seeds("dstar", "alie", 0.1, 0.78),
        *seeds("fedavg", "none", 0.0, 0.82),
        *seeds("fedavg", "alie", 0.1, 0.30),
        *seeds("bulyan", "none", 0.0, 0.79),
        *(na_row("bulyan", a, 0.3) for a in attacks),
    ]
    index = index_rows(rows)
    table = drop_table(index, HEADLINE, ["dstar", "fedavg", "bulyan"])
    lines = table.splitlines()
    assert lines[2].startswith("| dstar | **2.0 (alie; 1/10 attacks)** | — | — | — |")
    assert lines[3].startswith("| fedavg | 52.0 (alie; 1/10 attacks) | — |")
    assert lines[4] == "| bulyan | — | — | n/a | — |"
    assert worst_case_drop(index, HEADLINE, 0.3, "bulyan") is None


def test_format_mean_std_over_seeds() -> None:
    assert format_mean_std([]) == "—"
    assert format_mean_std([80.0]) == "80.0 (n=1)"
    assert format_mean_std([80.0, 82.0]) == "81.0 ± 1.4 (n=2)"
    assert format_mean_std([80.0, 82.0, 84.0]) == "82.0 ± 2.0"


def test_marker_replacement_keeps_the_rest_and_is_idempotent() -> None:
    text = f"# Results\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## After\n\ntail\n"
    once = replace_marked_block(text, "new table")
    assert once == f"# Results\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\n## After\n\ntail\n"
    assert replace_marked_block(once, "new table") == once
    appended = replace_marked_block("# Results\n\nintro\n", "body")
    assert appended.startswith("# Results\n\nintro\n\n## The attack grid\n\n")
    assert appended.endswith(f"{BEGIN}\nbody\n{END}\n")
    assert replace_marked_block(appended, "body") == appended
    assert replace_marked_block("", "body").startswith("## The attack grid")
    with pytest.raises(ValueError, match="markers"):
        replace_marked_block(f"{END}\n{BEGIN}\n", "body")


def _two_strategy_grid(dstar_attacked: float) -> list[dict[str, object]]:
    rows = [
        *seeds("dstar", "none", 0.0, 0.80),
        *seeds("fedmedian", "none", 0.0, 0.80),
        *seeds("fedavg", "none", 0.0, 0.81),
    ]
    for fraction in (0.1, 0.2, 0.3, 0.4):
        rows += seeds("dstar", "alie", fraction, dstar_attacked)
        rows += seeds("fedmedian", "alie", fraction, 0.75)  # a 5-point drop
    return rows


def test_target_checks_say_not_met_when_another_strategy_drops_less() -> None:
    index = index_rows(_two_strategy_grid(dstar_attacked=0.70))  # a 10-point drop
    check = check_smallest_drop(index)
    assert check.status == "not met"
    assert "dstar 10.0 (alie) vs the smallest other 5.0 (fedmedian, alie)" in check.details[0]
    assert check_below(index).status == "not met"


def test_target_checks_say_met_when_dstar_drops_least() -> None:
    index = index_rows(_two_strategy_grid(dstar_attacked=0.77))  # a 3-point drop
    assert check_smallest_drop(index).status == "met"
    assert check_below(index).status == "met"
    assert check_smallest_drop(index).provisional  # only one of the attacks has run


def test_target_checks_without_the_cells_are_not_determined() -> None:
    index = index_rows(seeds("dstar", "none", 0.0, 0.8))
    assert check_smallest_drop(index).status == "not determined"
    assert check_below(index).status == "not determined"


def test_clean_parity_check() -> None:
    index = index_rows(_two_strategy_grid(0.77))
    check = check_clean_parity(index, settings=[HEADLINE])
    assert check.status == "met"  # 1.0 point below FedAvg
    assert "difference -1.0" in check.details[0]
    lower = index_rows([*seeds("dstar", "none", 0.0, 0.78), *seeds("fedavg", "none", 0.0, 0.81)])
    assert check_clean_parity(lower, settings=[HEADLINE]).status == "not met"


def test_time_to_fedavg_final_accuracy() -> None:
    assert time_to_accuracy([0.4, 0.6, 0.7], [1.0, 1.0, 1.0], 0.6) == pytest.approx(2.0)
    assert time_to_accuracy([0.4, 0.5], [1.0, 1.0], 0.6) is None
    slow = {"stragglers": True}
    rows = [
        # Seed 0: FedAvg ends at 0.6 after 6 s; DStar reaches 0.6 after 2 s.
        {**ok_row("fedavg", per_round=[0.3, 0.5, 0.6], round_seconds=[2, 2, 2]), **slow},
        {**ok_row("dstar", per_round=[0.4, 0.6, 0.7], round_seconds=[1, 1, 1]), **slow},
        # Seed 1: FedAvg ends at 0.9; DStar never gets there.
        {
            **ok_row("fedavg", seed=1, per_round=[0.5, 0.9], round_seconds=[3, 3]),
            "final-accuracy": 0.9,
        },
        ok_row("dstar", seed=1, per_round=[0.5, 0.8], round_seconds=[1, 1]),
        # Seed 2: no FedAvg run, left out.
        ok_row("dstar", seed=2),
    ]
    rows[0]["final-accuracy"] = 0.6
    ratios = time_to_fedavg_accuracy(rows, "dstar", "none")
    assert set(ratios) == {0, 1}
    assert ratios[0] == pytest.approx(2.0 / 6.0)
    assert ratios[1] is None


def _synthetic_rows() -> list[dict[str, object]]:
    rows = []
    for dataset in ("mnist1d", "digits"):
        for strategy, clean, attacked in (("dstar", 0.8, 0.7), ("fedavg", 0.81, 0.2)):
            for seed in (0, 1):
                rows.append(ok_row(strategy, dataset=dataset, accuracy=clean, seed=seed))
                for fraction in (0.2, 0.4):
                    rows.append(
                        ok_row(strategy, "alie", fraction, attacked, seed=seed, dataset=dataset)
                    )
    rows.append(ok_row("dstar", "alie", 0.2, 0.6, estimate="over"))
    rows.append(na_row("fedavg", "tailored", 0.2))
    for strategy in ("dstar", "fedavg"):
        for attack, fraction in (("none", 0.0), ("alie", 0.2)):
            for seed in (0, 1, 2):
                rows.append(
                    ok_row(
                        strategy,
                        attack,
                        fraction,
                        0.6,
                        seed=seed,
                        stragglers=True,
                        per_round=[0.3, 0.5, 0.6],
                        round_seconds=[1.0, 1.5, 1.2] if strategy == "dstar" else [3, 4, 3.5],
                    )
                )
    return rows


HEADINGS = (
    "### Setup",
    "### Clean accuracy",
    "### Worst-case drop",
    "### Accuracy per strategy and attack",
    "### Accuracy against f/N",
    "### DStar's assumed f",
    "### Findings, computed",
    "### Straggler slice",
)


def test_write_report_writes_figures_and_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _synthetic_rows()
    report = tmp_path / "results.md"
    report.write_text("# Results\n\nBefore.\n")
    figures = tmp_path / "figures"
    write_report(rows, report, figures=figures)
    expected = [
        heatmap_name(HEADLINE, 0.2),
        heatmap_name(HEADLINE, 0.4),
        heatmap_name(None, 0.2),
        heatmap_name(None, 0.4),
        curve_name(HEADLINE),
        curve_name(("digits", "dir0.5")),
        STRAGGLER_FIGURE,
    ]
    for name in expected:
        assert (figures / name).stat().st_size > 0, name
        assert f"(figures/{name})" in report.read_text()
    text = report.read_text()
    assert text.startswith("# Results\n\nBefore.\n")
    positions = [text.index(heading) for heading in HEADINGS]
    assert positions == sorted(positions)
    assert "| dstar − fedavg | -1.0 |" in text
    assert "61.0 (alie; n=2; 1/9 attacks)" in text  # FedAvg: its tailored cell is n/a
    assert "| dstar | none | 0 | 1.23 ± 0.00 |" in text
    # A second run leaves the file as it is (the figures, drawn again, are skipped).
    monkeypatch.setattr(attack_grid_report, "write_figures", lambda rows, figures: expected)
    write_report(rows, report, figures=figures)
    assert report.read_text() == text


def test_build_markdown_without_rows() -> None:
    text = build_markdown([], [])
    for heading in HEADINGS:
        assert heading in text
    assert "No straggler rows yet." in text
    assert "not determined" in text


def test_worst_case_accuracy_is_the_lowest_attacked_mean_and_the_table_bolds_the_best() -> None:
    from simulations.benchmarks.attack_grid_report import worst_accuracy_table, worst_case_accuracy

    rows = [
        ok_row("dstar", "alie", 0.2, 0.6),
        ok_row("dstar", "alie", 0.2, 0.4, seed=1),
        ok_row("dstar", "min-max", 0.2, 0.3),
        ok_row("fedmedian", "alie", 0.2, 0.45),
    ]
    rows += [na_row("bulyan", attack, 0.3) for attack in attack_grid_report.ATTACKED]
    index = index_rows(rows)
    assert worst_case_accuracy(index, HEADLINE, 0.2, "dstar") == pytest.approx((30.0, "min-max"))
    assert worst_case_accuracy(index, HEADLINE, 0.1, "dstar") is None
    table = worst_accuracy_table(index, HEADLINE, ["dstar", "fedmedian", "bulyan"], (0.2, 0.3))
    assert "**45.0 (alie)**" in table and "30.0 (min-max)" in table
    assert "| bulyan | — | n/a |" in table

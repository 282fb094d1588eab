"""The ablation report's tables."""

from simulations.benchmarks.ablation import ablation_tables


def _row(variant: str, attack: str, accuracy: float, byzantine: float, honest: float) -> dict:
    return {
        "cell": f"{variant}__{attack}",
        "final-accuracy": accuracy,
        "byzantine-rejection-rate": byzantine,
        "honest-rejection-rate": honest,
    }


def test_tables_put_variants_in_rows_and_attacks_in_columns() -> None:
    rows = [
        _row("default", "alie", 0.9, 0.0, 0.25),
        _row("default", "gaussian", 0.8, 1.0, 0.0),
        _row("paper-c=3", "alie", 0.7, 0.5, 0.125),
    ]
    text = ablation_tables(rows, ["alie", "gaussian"])
    sections = text.split("## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "Final test accuracy",
        "Byzantine replies rejected (share of those received)",
        "Honest replies rejected (share of those received)",
    ]
    accuracy_lines = [line for line in sections[0].splitlines() if line.startswith("| ")]
    assert "mean" in accuracy_lines[0] and "worst" in accuracy_lines[0]
    default = next(line for line in accuracy_lines if line.startswith("| default"))
    cells = [c.strip() for c in default.strip("|").split("|")]
    assert [float(c) for c in cells[1:]] == [0.9, 0.8, 0.85, 0.8]
    # A missing cell is NaN and left out of the mean and the worst.
    partial = next(line for line in accuracy_lines if line.startswith("| paper-c=3"))
    cells = [c.strip() for c in partial.strip("|").split("|")]
    assert float(cells[1]) == 0.7 and cells[2] == "—"
    assert float(cells[3]) == 0.7 and float(cells[4]) == 0.7
    honest = next(line for line in sections[2].splitlines() if line.startswith("| default"))
    assert [float(c) for c in honest.strip("|").split("|")[1:]] == [0.25, 0.0]

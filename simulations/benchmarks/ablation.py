"""Ablations of DStar: k, f, the threshold factor and scale, the validation update,
ensemble against plain median. Each variant runs under each attack on the same
setting; the table says which settings hold accuracy, and the defaults are
chosen from it (see docs/results.md).

Every (variant, attack) is one simulation, written as
``<out>/runs/<variant>__<attack>.json`` and skipped when it exists.

Usage::

    python -m simulations.benchmarks.ablation  # all variants x 5 attacks (~45 min)
    python -m simulations.benchmarks.ablation --variants default c=3 --attacks alie
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from simulations.benchmarks.benchmark import collect_rows, write_rows
from simulations.benchmarks.benchmark_report import markdown_table
from simulations.federation.launch import exit_on_sigterm, run_simulation

APP_DIR = Path(__file__).resolve().parents[2]

NUM_NODES = 10
BYZANTINE = 2
# The shared setting: 10 nodes, 2 of them Byzantine (omniscient), no stragglers.
BASE: dict[str, object] = {
    "strategy": "dstar",
    "num-server-rounds": 8,
    "num-byzantine-nodes": BYZANTINE,
    "threat-model": "omniscient",
    "num-stragglers": 0,
    "latency-model": "none",
    "num-byzantine": BYZANTINE,
    "first-k": 10,
}

_PAPER: dict[str, object] = {"dstar-variant": "paper"}
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "z=2.5": {"max-robust-z": 2.5},
    "z=4": {"max-robust-z": 4.0},
    "no-norm-test": {"norm-test": False},
    "no-validation": {"validation-update": False},
    "k=6": {"first-k": 6},
    "f=0": {"num-byzantine": 0},
    "f=4": {"num-byzantine": 4},
    "paper": _PAPER,
    "paper-c=1.5": {**_PAPER, "threshold-factor": 1.5},
    "paper-c=3": {**_PAPER, "threshold-factor": 3.0},
    "paper-c=5": {**_PAPER, "threshold-factor": 5.0},
    "paper-scale=validation": {**_PAPER, "deviation-scale": "validation"},
    "paper-scale=max": {**_PAPER, "deviation-scale": "max"},
    "paper-no-validation": {**_PAPER, "validation-update": False},
    "paper-center=clients": {**_PAPER, "dstar-center": "clients"},
}
ATTACKS: tuple[str, ...] = ("none", "gaussian", "alie", "ipm", "min-max")


def run_ablation(
    variants: Sequence[str], attacks: Sequence[str], out: Path, *, seed: int = 0
) -> None:
    """Run every (variant, attack) that has no results file yet."""
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    cells = [(variant, attack) for variant in variants for attack in attacks]
    for variant, attack in tqdm(cells, desc="ablation", unit="run"):
        name = f"{variant}__{attack}"
        if (runs / f"{name}.json").exists():
            continue
        overrides = {
            **BASE,
            **VARIANTS[variant],
            "attack": attack,
            "seed": seed,
            "results-dir": str(runs),
            "run-name": name,
        }
        run_simulation(overrides, num_supernodes=NUM_NODES, quiet=True)


def ablation_tables(rows: Sequence[dict[str, object]], attacks: Sequence[str]) -> str:
    """Three tables, variants as rows and attacks as columns: final accuracy (with
    the mean and the worst cell), the share of Byzantine replies rejected, and the
    share of honest replies rejected."""
    by_cell = {tuple(str(row["cell"]).split("__", 1)): row for row in rows}
    variants = [v for v in VARIANTS if any(key[0] == v for key in by_cell)]

    def values(variant: str, key: str) -> list[float]:
        cells = [by_cell.get((variant, attack)) for attack in attacks]
        return [float(c[key]) if c else float("nan") for c in cells]  # type: ignore[arg-type]

    accuracy_rows = []
    for variant in variants:
        accuracy = values(variant, "final-accuracy")
        measured = [a for a in accuracy if a == a]
        accuracy_rows.append(
            [
                variant,
                *accuracy,
                sum(measured) / len(measured) if measured else float("nan"),
                min(measured) if measured else float("nan"),
            ]
        )
    sections = [
        ("Final test accuracy", ["variant", *attacks, "mean", "worst"], accuracy_rows),
        (
            "Byzantine replies rejected (share of those received)",
            ["variant", *attacks],
            [[v, *values(v, "byzantine-rejection-rate")] for v in variants],
        ),
        (
            "Honest replies rejected (share of those received)",
            ["variant", *attacks],
            [[v, *values(v, "honest-rejection-rate")] for v in variants],
        ),
    ]
    return "\n\n".join(
        f"## {title}\n\n{markdown_table(headers, table_rows)}"
        for title, headers, table_rows in sections
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=APP_DIR / "results" / "ablation")
    parser.add_argument("--report", type=Path, default=APP_DIR / "docs" / "ablation.md")
    args = parser.parse_args(argv)
    run_ablation(args.variants, args.attacks, args.out, seed=args.seed)
    rows = collect_rows(args.out)
    write_rows(rows, args.out)
    command = " ".join(["python -m simulations.benchmarks.ablation", *(argv or sys.argv[1:])])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        "# DStar ablations\n\n"
        f"Generated by `{command}`: {NUM_NODES} nodes, {BYZANTINE} Byzantine (omniscient), "
        f"no stragglers, {BASE['num-server-rounds']} rounds, digits, seed {args.seed}. "
        "The default is k = 10 (every node), f = 2, c = 2, median scale, validation update "
        "on, ensemble median; each other row changes one setting.\n\n"
        + ablation_tables(rows, args.attacks)
        + "\n",
        encoding="utf-8",
    )
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

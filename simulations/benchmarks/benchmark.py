"""The benchmark grid: strategies x attacks x Byzantine fraction x stragglers x data x seeds.

Every cell is one simulation on Flower's engine (see :mod:`simulations.federation.launch`),
written as ``<out>/runs/<cell-id>.json``; a cell whose file exists is skipped,
so an interrupted grid resumes where it stopped. A cell whose simulation fails
is run again (``--retries``, default 1); one that still fails leaves its errors
in ``<out>/runs/<cell-id>.failed.json``, is tried again by the next invocation,
and makes the command exit with status 1 once the others are reported. The rows
(one per run) are gathered into ``<out>/rows.csv`` and ``<out>/rows.json``, and a markdown report
with tables and matplotlib figures is written.

Usage::

    python -m simulations.benchmarks.benchmark --grid small  # ~20 runs, < 30 min on 2 cores
    python -m simulations.benchmarks.benchmark --grid full                  # every combination
    python -m simulations.benchmarks.benchmark --grid paper  # Fashion-MNIST, CIFAR-10 (CNN)
    python -m simulations.benchmarks.benchmark --grid strong  # every strategy, 30% Byzantine
    python -m simulations.benchmarks.benchmark --grid smoke --out /tmp/b
    python -m simulations.benchmarks.benchmark --report-only                # rebuild the report
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path
from statistics import mean

from tqdm import tqdm

from clients.datasets import DATASET_NAMES, load_dataset
from simulations.federation.launch import exit_on_sigterm, run_simulation

APP_DIR = Path(__file__).resolve().parents[2]
DEFAULT_OUT = APP_DIR / "results" / "benchmark"
DEFAULT_REPORT = APP_DIR / "docs" / "benchmark.md"

# Straggler profiles: run-config overrides, with the share of slow nodes.
STRAGGLER_PROFILES: dict[str, dict[str, object]] = {
    "none": {"latency-model": "none", "num-stragglers": 0},
    "slow-20": {
        "latency-model": "stragglers",
        "num-stragglers": 0.2,
        "latency-seconds": 3.0,
        "straggler-slowdown": 1.0,
    },
    "log-normal": {"latency-model": "log-normal", "latency-seconds": 0.5, "latency-sigma": 1.0},
}


@dataclass(frozen=True)
class Cell:
    """One simulation of the grid."""

    strategy: str
    attack: str
    byzantine_fraction: float
    stragglers: str
    dataset: str
    seed: int
    threat_model: str

    @property
    def cell_id(self) -> str:
        """A readable, stable file name for the cell."""
        return (
            f"{self.strategy}__{self.attack}__b{self.byzantine_fraction:g}__{self.stragglers}"
            f"__{self.dataset}__{self.threat_model}__s{self.seed}"
        ).replace(":", "-")

    def overrides(self, num_nodes: int, rounds: int) -> dict[str, object]:
        """The cell's run-config overrides."""
        byzantine = round(self.byzantine_fraction * num_nodes)
        profile = dict(STRAGGLER_PROFILES[self.stragglers])
        if isinstance(profile.get("num-stragglers"), float):
            profile["num-stragglers"] = round(float(profile["num-stragglers"]) * num_nodes)
        stragglers = int(profile.get("num-stragglers", 0))  # type: ignore[call-overload]
        overrides: dict[str, object] = {
            "strategy": self.strategy,
            "dataset": self.dataset,
            "seed": self.seed,
            "num-server-rounds": rounds,
            "num-byzantine-nodes": byzantine,
            "attack": self.attack if byzantine else "none",
            "threat-model": self.threat_model,
            "attack-estimation-batches": 4,
            "num-byzantine": byzantine,
            # k: every node that is not a straggler, and at least 2f + 1.
            "first-k": max(num_nodes - stragglers, 2 * byzantine + 1),
            "num-stragglers": stragglers,
            **{k: v for k, v in profile.items() if k != "num-stragglers"},
        }
        return overrides


@dataclass(frozen=True)
class Grid:
    """The axes of a grid.

    ``max_parallel`` caps the nodes whose messages run at once (see
    :func:`~simulations.federation.launch.run_simulation`); None, as in every preset, runs
    every node at once, as round times under stragglers need. A cap starts faster
    and takes less memory, for grids of many nodes whose round times do not matter.
    """

    strategies: tuple[str, ...]
    attacks: tuple[str, ...]
    byzantine_fractions: tuple[float, ...]
    stragglers: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    threat_models: tuple[str, ...]
    num_nodes: int
    rounds: int
    max_parallel: int | None = None

    def cells(self) -> list[Cell]:
        """Every combination; with no Byzantine nodes the attack is moot, so it runs once."""
        cells: dict[str, Cell] = {}
        for strategy, attack, fraction, stragglers, dataset, seed, threat in product(
            self.strategies,
            self.attacks,
            self.byzantine_fractions,
            self.stragglers,
            self.datasets,
            self.seeds,
            self.threat_models,
        ):
            if round(fraction * self.num_nodes) == 0:
                attack, fraction, threat = "none", 0.0, "client"
            cell = Cell(strategy, attack, fraction, stragglers, dataset, seed, threat)
            cells.setdefault(cell.cell_id, cell)
        return list(cells.values())


ALL_STRATEGIES = (
    "dstar",
    "fedavg",
    "krum",
    "multikrum",
    "bulyan",
    "fedmedian",
    "fedtrimmedavg",
    "fltrust",
)
ALL_ATTACKS = (
    "sign-flip",
    "gaussian",
    "label-flip",
    "alie",
    "ipm",
    "mimic",
    "min-max",
    "min-sum",
)

GRIDS: dict[str, Grid] = {
    "smoke": Grid(
        strategies=("dstar", "fltrust"),
        attacks=("sign-flip",),
        byzantine_fractions=(0.2,),
        stragglers=("slow-20",),
        datasets=("digits",),
        seeds=(0,),
        threat_models=("omniscient",),
        num_nodes=5,
        rounds=2,
    ),
    "small": Grid(
        strategies=("dstar", "fedavg", "krum", "fedmedian", "fltrust"),
        attacks=("gaussian", "alie", "ipm"),
        byzantine_fractions=(0.0, 0.2),
        stragglers=("none",),
        datasets=("digits",),
        seeds=(0,),
        threat_models=("omniscient",),
        num_nodes=10,
        rounds=8,
    ),
    # The strongest setting of the full grid (30% Byzantine) on every strategy, against
    # the attacks built to pass robust rules: where a 40-50% drop would show first.
    "strong": Grid(
        strategies=ALL_STRATEGIES,
        attacks=("sign-flip", "alie", "ipm", "min-max"),
        byzantine_fractions=(0.3,),
        stragglers=("none",),
        datasets=("digits",),
        seeds=(0,),
        threat_models=("omniscient",),
        num_nodes=10,
        rounds=8,
    ),
    # Paper scale: Fashion-MNIST and CIFAR-10 with the CNN. Needs torchvision and the
    # data files (nothing is downloaded), and realistically a GPU.
    "paper": Grid(
        strategies=ALL_STRATEGIES,
        attacks=ALL_ATTACKS,
        byzantine_fractions=(0.0, 0.1, 0.2, 0.3),
        stragglers=("none", "slow-20"),
        datasets=("fashion-mnist", "cifar10"),
        seeds=(0, 1, 2),
        threat_models=("omniscient",),
        num_nodes=20,
        rounds=30,
    ),
    "full": Grid(
        strategies=ALL_STRATEGIES,
        attacks=ALL_ATTACKS,
        byzantine_fractions=(0.0, 0.1, 0.2, 0.3),
        stragglers=("none", "slow-20"),
        datasets=("digits", "mnist1d"),
        seeds=(0, 1, 2),
        threat_models=("omniscient",),
        num_nodes=10,
        rounds=10,
    ),
}


def dataset_unavailable(name: str) -> str | None:
    """Why ``name`` cannot be loaded here (torchvision or the files missing), or None."""
    try:
        load_dataset(name)
    except (RuntimeError, FileNotFoundError) as error:
        return str(error)
    return None


def run_grid(grid: Grid, out: Path, *, progress: bool = True, retries: int = 1) -> list[str]:
    """Run every cell that has no results file yet; return the ids of the cells that failed.

    A cell whose simulation fails (the run exits with an error or writes no results,
    as when the engine or the SuperLink dies under load) is run again, up to
    ``retries`` more times, and every failed attempt is printed. One that fails every
    time leaves its errors in ``<cell-id>.failed.json`` and the grid goes on: one
    failed cell must not lose the others, and the next invocation tries it again.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}.")
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    failed = []
    bar = tqdm(grid.cells(), desc="benchmark", unit="run", disable=not progress)
    for cell in bar:
        failure_path = runs / f"{cell.cell_id}.failed.json"
        if (runs / f"{cell.cell_id}.json").exists():
            continue
        bar.set_postfix_str(cell.cell_id, refresh=True)
        overrides = cell.overrides(grid.num_nodes, grid.rounds)
        overrides.update({"results-dir": str(runs), "run-name": cell.cell_id})
        errors = []
        for attempt in range(1, retries + 2):
            try:
                run_simulation(
                    overrides,
                    num_supernodes=grid.num_nodes,
                    quiet=True,
                    max_parallel=grid.max_parallel,
                )
            except RuntimeError as error:
                errors.append(str(error)[-2000:])
                tqdm.write(
                    f"cell {cell.cell_id}: attempt {attempt} of {retries + 1} failed:\n"
                    f"{errors[-1][-600:]}"
                )
                continue
            failure_path.unlink(missing_ok=True)
            break
        else:
            failure = {"cell": asdict(cell), "errors": errors}
            failure_path.write_text(json.dumps(failure, indent=2))
            tqdm.write(f"cell {cell.cell_id} failed; see {failure_path}")
            failed.append(cell.cell_id)
    return failed


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def row_of(path: Path) -> dict[str, object]:
    """One flat row from a run's results file."""
    results = json.loads(path.read_text())
    config = results["config"]
    summary = results["summary"]
    rounds = results["rounds"]
    seconds = [_number(r.get("round_seconds")) for r in rounds]
    cosines = [_number(r.get("cosine_to_honest")) for r in rounds]
    accuracy = [_number(r.get("test_accuracy")) for r in rounds]
    rhos = [_number(r.get("rho")) for r in rounds]
    return {
        "cell": path.stem,
        "strategy": config["strategy"],
        "attack": config["attack"],
        "threat-model": config.get("threat-model", "client"),
        "byzantine-nodes": len(results.get("byzantine-partitions", [])),
        "stragglers": len(results.get("straggler-partitions", [])),
        "dataset": config["dataset"],
        "seed": config["seed"],
        "rounds": len(rounds),
        "final-accuracy": _number(summary.get("final-test-accuracy")),
        "best-accuracy": max((a for a in accuracy if math.isfinite(a)), default=math.nan),
        "accuracy-per-round": accuracy,
        "mean-round-seconds": _finite_mean(seconds),
        "mean-round-seconds-2..": _finite_mean(seconds[1:]),
        "mean-cosine": _finite_mean(cosines),
        "min-rho": min(
            (x for x in rhos if math.isfinite(x)),
            default=math.nan,
        ),
        "byzantine-rejection-rate": _number(summary.get("byzantine-rejection-rate")),
        "honest-rejection-rate": _number(summary.get("honest-rejection-rate")),
        "wall-seconds": _number(config.get("wall-seconds")),
    }


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else math.nan


def collect_rows(out: Path) -> list[dict[str, object]]:
    """The rows of every finished run under ``out``, sorted by cell id."""
    paths = sorted(p for p in (out / "runs").glob("*.json") if not p.name.endswith(".failed.json"))
    return [row_of(path) for path in paths]


def write_rows(rows: Sequence[dict[str, object]], out: Path) -> None:
    """``rows.json`` (everything) and ``rows.csv`` (without the per-round list)."""
    (out / "rows.json").write_text(json.dumps(rows, indent=2, default=str))
    columns = [key for key in (rows[0] if rows else {}) if key != "accuracy-per-round"]
    with (out / "rows.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small", help="preset grid")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="runs and rows folder")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="markdown report")
    parser.add_argument("--report-only", action="store_true", help="rebuild rows and report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="run a failed cell again this many times before recording it as failed",
    )
    axes = parser.add_argument_group("axes", "replace one axis of the preset grid")
    axes.add_argument("--strategies", nargs="+", choices=ALL_STRATEGIES)
    axes.add_argument("--attacks", nargs="+", choices=(*ALL_ATTACKS, "none"))
    axes.add_argument("--byzantine-fractions", nargs="+", type=float)
    axes.add_argument("--datasets", nargs="+", choices=DATASET_NAMES)
    axes.add_argument("--seeds", nargs="+", type=int)
    args = parser.parse_args(argv)

    grid = replace(
        GRIDS[args.grid],
        **{
            axis: tuple(values)
            for axis in ("strategies", "attacks", "byzantine_fractions", "datasets", "seeds")
            if (values := getattr(args, axis)) is not None
        },
    )
    if any(not 0.0 <= fraction < 1.0 for fraction in grid.byzantine_fractions):
        parser.error("--byzantine-fractions are in [0, 1)")
    if not args.report_only:
        unavailable = {d: reason for d in grid.datasets if (reason := dataset_unavailable(d))}
        for dataset, reason in unavailable.items():
            print(f"skipping every {dataset} cell: {reason}")
        grid = replace(grid, datasets=tuple(d for d in grid.datasets if d not in unavailable))
        if not grid.datasets:
            print("no dataset of this grid is available here; nothing to run")
            return 0
    if args.retries < 0:
        parser.error("--retries is >= 0")
    started = time.monotonic()
    failed = (
        []
        if args.report_only
        else run_grid(grid, args.out, progress=not args.no_progress, retries=args.retries)
    )
    rows = collect_rows(args.out)
    if not rows:
        parser.error(f"no finished runs under {args.out}/runs")
    write_rows(rows, args.out)
    from simulations.benchmarks.benchmark_report import (
        write_report,  # matplotlib only when reporting
    )

    # The command that produces the runs (not this report-only or quiet invocation).
    flags = [a for a in (argv or sys.argv[1:]) if a not in ("--report-only", "--no-progress")]
    command = " ".join(["python -m simulations.benchmarks.benchmark", *flags])
    write_report(
        rows,
        args.report,
        command=command,
        machine=f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {_cpu_count()} CPU cores",
    )
    print(
        f"{len(rows)} runs in {args.out}; report {args.report} ({time.monotonic() - started:.0f} s)"
    )
    if failed:
        print(f"{len(failed)} cells failed (run the command again to retry them): {failed}")
        return 1
    return 0


def _cpu_count() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())

"""The attack grid: every strategy against every attack, non-IID data, up to 40% Byzantine.

Axes: data (MNIST-1D and digits, each Dirichlet(0.1), Dirichlet(0.5) and IID),
Byzantine fraction f/N, attack, strategy, DStar's assumed f (the true count, or
an under- or over-estimate by N/10), seed. Each cell is one run of the
project's ServerApp on :mod:`simulations.federation.inprocess` (the ClientApp's nodes in
this process, their local training batched), written as
``<out>/runs/<cell-id>.json``; a cell whose file exists is skipped, so an
interrupted grid resumes where it stopped, and cells run in ``--workers``
processes. The rows go to ``<out>/rows.json`` and the report, with
:mod:`simulations.benchmarks.attack_grid_report`, into ``docs/results.md``.

Every Byzantine node follows the omniscient threat model: the server-side
adversary crafts its update from all honest updates of the round. The
``tailored`` attack is the rule-tailored attack against the cell's own strategy
(:mod:`clients.tailored`; FedAvg has none). ``inflation`` sends sign-flipped
updates that claim 10^6 examples each. Bulyan needs N >= 4f + 3 replies; its
cells with more Byzantine nodes are not run and reported as not applicable.

The ``stragglers`` slice runs first-k against waiting for everyone: every node
waits a log-normal delay (median 0.5 s, sigma 1) after its training, on the real
wall clock. The nodes' compute does not contend (see
:mod:`simulations.federation.inprocess`): the delays dominate, as across a deployment's
links, so round times are what a deployment with these latencies would see.

Usage::

    python -m simulations.benchmarks.attack_grid --preset full
    python -m simulations.benchmarks.attack_grid --preset stragglers   # the straggler slice
    python -m simulations.benchmarks.attack_grid --preset smoke --out /tmp/g
    python -m simulations.benchmarks.attack_grid --report-only         # rebuild rows and report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

from tqdm import tqdm

APP_DIR = Path(__file__).resolve().parents[2]
DEFAULT_OUT = APP_DIR / "results" / "attack-grid"

# Attack presets: run-config overrides for the Byzantine nodes.
ATTACKS: dict[str, dict[str, object]] = {
    "none": {"attack": "none"},
    "sign-flip": {"attack": "sign-flip"},
    "gaussian": {"attack": "gaussian"},
    "label-flip": {"attack": "label-flip"},
    "alie": {"attack": "alie"},
    "ipm-0.1": {"attack": "ipm", "ipm-epsilon": 0.1},
    "ipm-100": {"attack": "ipm", "ipm-epsilon": 100.0},
    "min-max": {"attack": "min-max"},
    "min-sum": {"attack": "min-sum"},
    "tailored": {},  # tailored-<the cell's rule>, see Cell.overrides
    "inflation": {"attack": "sign-flip", "claimed-num-examples": 1_000_000},
}
# Strategy presets: the run config's strategy and its settings.
STRATEGIES: dict[str, dict[str, object]] = {
    "dstar": {"strategy": "dstar"},
    "dstar-paper": {"strategy": "dstar", "dstar-variant": "paper"},
    "fedavg": {"strategy": "fedavg"},
    "fedmedian": {"strategy": "fedmedian"},
    "fedtrimmedavg": {"strategy": "fedtrimmedavg"},
    "krum": {"strategy": "krum"},
    "multikrum": {"strategy": "multikrum"},
    "bulyan": {"strategy": "bulyan"},
    "fltrust": {"strategy": "fltrust"},
}
# The rule each strategy's tailored attack targets (FedAvg: none).
TAILORED_RULE: dict[str, str | None] = {
    "dstar": "dstar",
    "dstar-paper": "dstar",
    "fedavg": None,
    "fedmedian": "fedmedian",
    "fedtrimmedavg": "fedtrimmedavg",
    "krum": "krum",
    "multikrum": "multikrum",
    "bulyan": "bulyan",
    "fltrust": "fltrust",
}
PARTITIONS: dict[str, dict[str, object]] = {
    "dir0.1": {"partitioning": "dirichlet", "dirichlet-alpha": 0.1},
    "dir0.5": {"partitioning": "dirichlet", "dirichlet-alpha": 0.5},
    "iid": {"partitioning": "iid"},
}
F_ESTIMATES = ("true", "under", "over")
STRAGGLER_LATENCY: dict[str, object] = {
    "latency-model": "log-normal",
    "latency-seconds": 0.5,
    "latency-sigma": 1.0,
}


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    dataset: str
    partition: str
    byzantine_fraction: float
    attack: str
    strategy: str
    f_estimate: str
    seed: int
    stragglers: bool = False
    rounds: int | None = None  # None: the preset's

    @property
    def cell_id(self) -> str:
        """A readable, stable file name."""
        slow = "__stragglers" if self.stragglers else ""
        rounds = f"__r{self.rounds}" if self.rounds is not None else ""
        return (
            f"{self.dataset}__{self.partition}__b{self.byzantine_fraction:g}__{self.attack}"
            f"__{self.strategy}__f-{self.f_estimate}{slow}{rounds}__s{self.seed}"
        )

    @property
    def label(self) -> str:
        """The strategy, and its number of rounds where the cell sets its own."""
        return self.strategy if self.rounds is None else f"{self.strategy} ({self.rounds} rounds)"

    def byzantine_nodes(self, num_nodes: int) -> int:
        """The true number of Byzantine nodes."""
        return round(self.byzantine_fraction * num_nodes)

    def assumed_f(self, num_nodes: int) -> int:
        """The f the strategy is told: the true count, or DStar's under-/over-estimate.

        The estimate is off by N / 10 nodes, clipped to ``0 .. (N - 1) // 2`` so
        that 2f + 1 replies exist.
        """
        true_f = self.byzantine_nodes(num_nodes)
        shift = {"true": 0, "under": -1, "over": 1}[self.f_estimate] * round(num_nodes / 10)
        return min(max(true_f + shift, 0), (num_nodes - 1) // 2)

    def not_applicable(self, num_nodes: int) -> str | None:
        """Why the cell cannot run as asked, or None."""
        f = self.assumed_f(num_nodes)
        if self.strategy == "bulyan" and num_nodes < 4 * f + 3:
            return f"Bulyan needs N >= 4f + 3 = {4 * f + 3} replies, N = {num_nodes}"
        if self.attack == "tailored" and TAILORED_RULE[self.strategy] is None:
            return f"no rule-tailored attack against {self.strategy}"
        return None

    def overrides(self, num_nodes: int, settings: Settings) -> dict[str, object]:
        """The cell's run-config overrides."""
        byzantine = self.byzantine_nodes(num_nodes)
        attack = dict(ATTACKS[self.attack]) if byzantine else {"attack": "none"}
        if self.attack == "tailored" and byzantine:
            attack = {"attack": f"tailored-{TAILORED_RULE[self.strategy]}"}
        overrides: dict[str, object] = {
            **STRATEGIES[self.strategy],
            **PARTITIONS[self.partition],
            **attack,
            "dataset": self.dataset,
            "seed": self.seed,
            "num-server-rounds": self.rounds or settings.rounds,
            "local-epochs": settings.local_epochs,
            "batch-size": settings.batch_size,
            "learning-rate": settings.learning_rate,
            "num-byzantine-nodes": byzantine,
            "threat-model": "omniscient",
            "num-byzantine": self.assumed_f(num_nodes),
            "num-stragglers": 0,
            "device": "cpu",
        }
        if self.stragglers:
            overrides.update(STRAGGLER_LATENCY)
            overrides["first-k"] = settings.straggler_first_k
        else:
            overrides.update({"latency-model": "none", "first-k": num_nodes})
        return overrides


@dataclass(frozen=True)
class Settings:
    """What every run of a preset shares."""

    num_nodes: int = 20
    rounds: int = 15
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.3
    straggler_first_k: float = 0.8


@dataclass(frozen=True)
class Block:
    """A full product of axes (a preset is a list of blocks)."""

    datasets: tuple[str, ...]
    partitions: tuple[str, ...]
    byzantine_fractions: tuple[float, ...]
    attacks: tuple[str, ...]
    strategies: tuple[str, ...]
    f_estimates: tuple[str, ...]
    seeds: tuple[int, ...]
    stragglers: bool = False
    rounds: int | None = None

    def cells(self) -> list[Cell]:
        """Every combination; with no Byzantine node the attack is moot: it runs once."""
        cells = []
        for dataset, partition, fraction, attack, strategy, estimate, seed in product(
            self.datasets,
            self.partitions,
            self.byzantine_fractions,
            self.attacks,
            self.strategies,
            self.f_estimates,
            self.seeds,
        ):
            if fraction == 0.0 or attack == "none":
                fraction, attack = 0.0, "none"
            if estimate != "true" and strategy != "dstar":
                continue
            cells.append(
                Cell(
                    dataset,
                    partition,
                    fraction,
                    attack,
                    strategy,
                    estimate,
                    seed,
                    stragglers=self.stragglers,
                    rounds=self.rounds,
                )
            )
        return cells


@dataclass(frozen=True)
class Preset:
    """A named grid: its blocks and shared settings."""

    blocks: tuple[Block, ...]
    settings: Settings = Settings()

    def cells(self) -> list[Cell]:
        """The cells of every block, each once, in block order."""
        unique: dict[str, Cell] = {}
        for block in self.blocks:
            for cell in block.cells():
                unique.setdefault(cell.cell_id, cell)
        return list(unique.values())


ALL_ATTACKS = tuple(ATTACKS)
ALL_STRATEGIES = tuple(STRATEGIES)
FRACTIONS = (0.1, 0.2, 0.3, 0.4)
SEEDS = (0, 1, 2)
# The slice where the report's targets are set comes first, so that a partial run has it.
HEADLINE = Block(
    datasets=("mnist1d",),
    partitions=("dir0.5",),
    byzantine_fractions=FRACTIONS,
    attacks=ALL_ATTACKS,
    strategies=ALL_STRATEGIES,
    f_estimates=F_ESTIMATES,
    seeds=SEEDS,
)
STRAGGLER_SLICE = Block(
    datasets=("mnist1d",),
    partitions=("dir0.5",),
    byzantine_fractions=(0.2,),
    attacks=("none", "alie"),
    strategies=("dstar", "dstar-paper", "fedavg", "fedmedian", "krum", "fltrust"),
    f_estimates=("true",),
    seeds=SEEDS,
    stragglers=True,
)
# First-k rounds are shorter: the same wall-clock budget as FedAvg's 15 rounds buys DStar
# about three times as many, so accuracy against wall-clock time compares them over it.
STRAGGLER_LONG = replace(STRAGGLER_SLICE, strategies=("dstar", "dstar-paper"), rounds=45)
PRESETS: dict[str, Preset] = {
    "full": Preset(
        (
            HEADLINE,
            replace(HEADLINE, partitions=("dir0.1", "iid"), f_estimates=("true",)),
            replace(
                HEADLINE, datasets=("digits",), partitions=tuple(PARTITIONS), f_estimates=("true",)
            ),
        )
    ),
    "headline": Preset((HEADLINE,)),
    "stragglers": Preset((STRAGGLER_SLICE, STRAGGLER_LONG)),
    "smoke": Preset(
        (
            Block(
                datasets=("digits",),
                partitions=("dir0.5",),
                byzantine_fractions=(0.2,),
                attacks=("none", "tailored", "inflation"),
                strategies=("dstar", "fedavg", "bulyan"),
                f_estimates=("true", "over"),
                seeds=(0,),
            ),
            replace(STRAGGLER_SLICE, strategies=("dstar", "fedavg"), attacks=("none",), seeds=(0,)),
        ),
        Settings(num_nodes=10, rounds=2, local_epochs=1),
    ),
}


def run_cell(cell: Cell, settings: Settings, runs: Path) -> dict[str, object]:
    """Run one cell (in a worker process); return its row."""
    import gc

    import torch

    from simulations.federation.inprocess import run_inprocess

    torch.set_num_threads(1)
    # Flower's ArrayRecord.to_numpy_ndarrays(keep_input=False) runs gc.collect() per
    # record (Bulyan converts 20 a round). Freezing what is alive before the cell (the
    # modules, the caches) keeps each pass to the cell's own objects: milliseconds
    # instead of ~0.1 s, growing with every cell the worker has run.
    gc.collect()
    gc.freeze()
    overrides = cell.overrides(settings.num_nodes, settings)
    overrides.update({"results-dir": str(runs), "run-name": cell.cell_id})
    started = time.monotonic()
    path = run_inprocess(overrides, num_supernodes=settings.num_nodes, quiet=True)
    return row_of(cell, settings, json.loads(path.read_text()), time.monotonic() - started)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def row_of(
    cell: Cell, settings: Settings, results: dict[str, object], seconds: float
) -> dict[str, object]:
    """One flat row from a cell and its run's results."""
    rounds: list[dict[str, object]] = results["rounds"]  # type: ignore[assignment]
    summary: dict[str, object] = results["summary"]  # type: ignore[assignment]
    return {
        **{key.replace("_", "-"): value for key, value in asdict(cell).items()},
        "cell": cell.cell_id,
        "label": cell.label,
        "status": "ok",
        "num-nodes": settings.num_nodes,
        "byzantine-nodes": cell.byzantine_nodes(settings.num_nodes),
        "assumed-f": cell.assumed_f(settings.num_nodes),
        "rounds": len(rounds),
        "final-accuracy": _number(summary.get("final-test-accuracy")),
        "accuracy-per-round": [_number(r.get("test_accuracy")) for r in rounds],
        "round-seconds": [_number(r.get("round_seconds")) for r in rounds],
        "mean-round-seconds": _number(summary.get("mean-round-seconds")),
        "byzantine-rejection-rate": _number(summary.get("byzantine-rejection-rate")),
        "honest-rejection-rate": _number(summary.get("honest-rejection-rate")),
        "mean-cosine-to-honest": _number(summary.get("mean-cosine-to-honest")),
        "cell-seconds": seconds,
    }


def not_applicable_row(cell: Cell, settings: Settings, reason: str) -> dict[str, object]:
    """The row of a cell that is not run, with the reason."""
    return {
        **{key.replace("_", "-"): value for key, value in asdict(cell).items()},
        "cell": cell.cell_id,
        "label": cell.label,
        "status": "not-applicable",
        "reason": reason,
        "num-nodes": settings.num_nodes,
        "byzantine-nodes": cell.byzantine_nodes(settings.num_nodes),
        "assumed-f": cell.assumed_f(settings.num_nodes),
    }


def run_grid(
    preset: Preset, out: Path, *, workers: int = 2, progress: bool = True, retries: int = 1
) -> list[str]:
    """Run every cell without a row file in ``out/rows``; return the ids that failed.

    A cell's row is written to ``out/rows/<cell-id>.json`` as soon as it
    finishes, so a stopped grid loses at most the cells in flight. A cell that
    raises is tried ``retries`` more times, then recorded in
    ``<cell-id>.failed.json`` and tried again by the next invocation.
    """
    settings = preset.settings
    rows_dir = out / "rows"
    runs = out / "runs"
    rows_dir.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    todo = []
    for cell in preset.cells():
        row_path = rows_dir / f"{cell.cell_id}.json"
        if row_path.exists():
            continue
        reason = cell.not_applicable(settings.num_nodes)
        if reason is not None:
            row_path.write_text(json.dumps(not_applicable_row(cell, settings, reason)))
            continue
        todo.append(cell)
    failed: list[str] = []
    attempts = dict.fromkeys((c.cell_id for c in todo), 0)
    bar = tqdm(total=len(todo), desc="attack grid", unit="cell", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_cell, cell, settings, runs): cell for cell in todo}
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                cell = futures.pop(future)
                failure = rows_dir / f"{cell.cell_id}.failed.json"
                try:
                    row = future.result()
                except Exception as error:  # noqa: BLE001 - a failed cell must not stop the grid
                    attempts[cell.cell_id] += 1
                    tqdm.write(
                        f"cell {cell.cell_id} failed (attempt {attempts[cell.cell_id]}): "
                        f"{type(error).__name__}: {error}"
                    )
                    if attempts[cell.cell_id] <= retries:
                        futures[pool.submit(run_cell, cell, settings, runs)] = cell
                        continue
                    failure.write_text(json.dumps({"cell": asdict(cell), "error": repr(error)}))
                    failed.append(cell.cell_id)
                else:
                    failure.unlink(missing_ok=True)
                    (rows_dir / f"{cell.cell_id}.json").write_text(json.dumps(row))
                bar.update()
    bar.close()
    return failed


def collect_rows(out: Path) -> list[dict[str, object]]:
    """Every finished (or not applicable) cell's row under ``out``, by cell id."""
    paths = sorted(p for p in (out / "rows").glob("*.json") if not p.name.endswith(".failed.json"))
    return [json.loads(path.read_text()) for path in paths]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="which grid")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="rows and runs folder")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="cells run at once (processes)"
    )
    parser.add_argument("--retries", type=int, default=1, help="reruns of a failed cell")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report only")
    parser.add_argument("--no-report", action="store_true", help="run the cells, skip the report")
    parser.add_argument(
        "--report", type=Path, default=APP_DIR / "docs" / "results.md", help="markdown to update"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        build_parser().error("--workers is >= 1")
    if args.retries < 0:
        build_parser().error("--retries is >= 0")
    preset = PRESETS[args.preset]
    started = time.monotonic()
    failed: list[str] = []
    if not args.report_only:
        cells = preset.cells()
        print(f"{args.preset}: {len(cells)} cells, {args.workers} worker(s), out {args.out}")
        failed = run_grid(
            preset,
            args.out,
            workers=args.workers,
            progress=not args.no_progress,
            retries=args.retries,
        )
        print(f"ran in {time.monotonic() - started:.0f} s")
    rows = collect_rows(args.out)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    if not args.no_report:
        from simulations.benchmarks.attack_grid_report import write_report

        write_report(rows, args.report, figures=args.report.parent / "figures")
        print(f"{len(rows)} rows; report in {args.report}")
    if failed:
        print(f"{len(failed)} cells failed (run the command again to retry them): {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Many virtual nodes on Flower's simulation engine: the server's CPU time and memory per round.

DStar and Flower's FedAvg run one after the other on the same federation and
run config (only ``strategy`` differs): by default 1,000 virtual nodes, 100
sampled per round (``fraction-train`` = 0.1), DStar's k = 80, 20 rounds, 10% of
the nodes Byzantine (Gaussian noise), every node delayed by a log-normal latency
(median 0.05 s, sigma 1), digits with its MLP, one local epoch. Each node's
ClientApp work is small so that 2 cores can serve 1,000 of them; the simulation
runs ``--max-parallel`` of them at once (Ray actors), the others queue.

The ServerApp records its own CPU seconds per round by step and its memory after
each round (:mod:`simulations.app.server_costs`); this module reads them from the
two results files and prints, per round, the server's CPU time outside the
clients, DStar's validation update, the round's wall time and the server's RSS;
then DStar's time over FedAvg's (target <= 1.2) and the RSS's growth.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from simulations.benchmarks.scale.faults import fault_overrides
from simulations.benchmarks.scale.figures import (
    MIB,
    CostSummary,
    compare,
    format_costs_table,
    memory_is_flat,
    summarize_costs,
    write_costs_csv,
)
from simulations.federation.launch import run_simulation

STRATEGIES = ("dstar", "fedavg")


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class EngineSetting:
    """The federation and run config of the engine benchmark (defaults: the full sizes)."""

    num_nodes: int = 1000
    sampled: int = 100
    k: int = 80
    rounds: int = 20
    byzantine_fraction: float = 0.1
    num_byzantine: int | None = None  # f; None: byzantine_fraction x sampled
    latency_median: float = 0.05
    latency_sigma: float = 1.0
    dataset: str = "digits"
    max_parallel: int = 10
    # Rounds close long before; it is also how long the roll call of 1,000 nodes may take.
    round_timeout: float = 600.0
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.sampled <= self.num_nodes:
            raise ValueError(f"sampled must be in 1..{self.num_nodes}, got {self.sampled}")
        if not 0 < self.k <= self.sampled:
            raise ValueError(f"k must be in 1..{self.sampled} (the sampled nodes), got {self.k}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    @property
    def fraction_train(self) -> float:
        """The share of the nodes sampled per round."""
        return self.sampled / self.num_nodes

    @property
    def f(self) -> int:
        """The Byzantine replies a DStar round tolerates."""
        if self.num_byzantine is not None:
            return self.num_byzantine
        return max(1, round(self.byzantine_fraction * self.sampled))

    def overrides(self, strategy: str, results_dir: Path) -> dict[str, object]:
        """The run config of one strategy's run."""
        return {
            "strategy": strategy,
            "dataset": self.dataset,
            "num-server-rounds": self.rounds,
            "fraction-train": self.fraction_train,
            "first-k": self.k,
            "num-byzantine": self.f,
            **fault_overrides(self.byzantine_fraction, self.latency_median, self.latency_sigma),
            "round-timeout": self.round_timeout,
            "seed": self.seed,
            "results-dir": str(results_dir),
            "run-name": f"scale-engine-{strategy}",
        }


def model_bytes(dataset: str) -> int:
    """Bytes of the dataset's model as float32 (one reply's arrays)."""
    from clients.models import build_model  # torch: only when asked

    return 4 * sum(p.numel() for p in build_model(dataset).parameters())


def rounds_figures(results: Mapping[str, object]) -> dict[str, float | int]:
    """Rounds completed and skipped, late nodes per round, final accuracy."""
    rows: Sequence[Mapping[str, object]] = results["rounds"]  # type: ignore[assignment]
    late = [len(row["late_partitions"]) for row in rows]  # type: ignore[arg-type]
    summary: Mapping[str, object] = results["summary"]  # type: ignore[assignment]
    accuracy = summary.get("final-test-accuracy")
    return {
        "rounds": len(rows),
        "completed": sum(not row["skipped"] for row in rows),
        "skipped": sum(bool(row["skipped"]) for row in rows),
        "mean-late-per-round": sum(late) / len(late) if late else math.nan,
        "final-test-accuracy": math.nan if accuracy is None else float(accuracy),  # type: ignore[arg-type]
    }


def report(
    setting: EngineSetting,
    runs: Mapping[str, Mapping[str, object]],
    seconds: Mapping[str, float],
    target: float = 1.2,
) -> dict[str, object]:
    """The benchmark's figures from the runs' results (strategy -> results JSON)."""
    summaries: dict[str, CostSummary] = {
        name: summarize_costs(results["server-costs"])  # type: ignore[arg-type]
        for name, results in runs.items()
    }
    # A server that kept one round's late replies would grow by this much per round.
    late_replies = max(1, setting.sampled - setting.k) * model_bytes(setting.dataset)
    figures: dict[str, object] = {
        "setting": asdict(setting) | {"f": setting.f, "fraction-train": setting.fraction_train},
        "run-seconds": dict(seconds),
        "late-replies-of-a-round-mib": late_replies / MIB,
        "runs": {
            name: {
                **summaries[name].to_dict(),
                **rounds_figures(runs[name]),
                "memory-flat": memory_is_flat(summaries[name], late_replies),
            }
            for name in runs
        },
    }
    if "dstar" in summaries and "fedavg" in summaries:
        figures["dstar-over-fedavg"] = compare(
            summaries["dstar"], summaries["fedavg"], target
        ).to_dict()
    return figures


def format_report(figures: Mapping[str, object], runs: Mapping[str, Mapping[str, object]]) -> str:
    """The printed report: per-round table, per-run summary, the comparison."""
    setting: Mapping[str, object] = figures["setting"]  # type: ignore[assignment]
    lines = [
        f"{setting['num_nodes']} virtual nodes, {setting['sampled']} sampled per round, "
        f"k = {setting['k']}, f = {setting['f']}, {setting['rounds']} rounds, "
        f"{100 * float(setting['byzantine_fraction']):.0f}% Byzantine (gaussian), log-normal "
        f"latency (median {setting['latency_median']} s, sigma {setting['latency_sigma']}), "
        f"{setting['dataset']}, {setting['max_parallel']} ClientApps at once",
        "",
        "Per round: server CPU ms outside the clients (sampling, reply checks, rule, report, "
        "grid calls), validation update ms, round wall s, server RSS MiB after the round",
        format_costs_table({name: results["server-costs"] for name, results in runs.items()}),  # type: ignore[misc]
        "",
    ]
    per_run: Mapping[str, Mapping[str, float]] = figures["runs"]  # type: ignore[assignment]
    for name, values in per_run.items():
        lines.append(
            f"{name}: server CPU {1000 * values['server-cpu-s-per-round']:.1f} ms per round from "
            f"round 2 (median {1000 * values['server-cpu-s-median']:.1f}; round 1 "
            f"{1000 * values['server-cpu-s-round-1']:.1f}; all rounds "
            f"{1000 * values['server-cpu-s-all-rounds']:.1f}); validation update "
            f"{1000 * values['validation-update-cpu-s-per-round']:.1f} ms; wall "
            f"{values['wall-s-per-round']:.2f} s per round"
        )
        steps: Mapping[str, float] = values["server-cpu-ms-by-step"]  # type: ignore[assignment]
        lines.append(
            f"{'':{len(name)}}  server CPU ms by step: "
            + ", ".join(f"{step} {ms:.1f}" for step, ms in steps.items())
        )
        lines.append(
            f"{'':{len(name)}}  RSS {values['rss-mib-first']:.1f} MiB after round 1, "
            f"{values['rss-mib-last']:.1f} after the last (max {values['rss-mib-max']:.1f}); "
            f"slope {values['rss-slope-kib-per-round']:.1f} KiB per round from round 2 "
            f"(flat: {bool(values['memory-flat'])}: below a round's late replies, "
            f"{float(figures['late-replies-of-a-round-mib']):.2f} MiB)"  # type: ignore[arg-type]
        )
        lines.append(
            f"{'':{len(name)}}  {values['completed']} of {values['rounds']} rounds completed, "
            f"{values['skipped']} skipped; {values['mean-late-per-round']:.1f} late nodes per "
            f"round; final test accuracy {values['final-test-accuracy']:.4f}"
        )
    comparison = figures.get("dstar-over-fedavg")
    if isinstance(comparison, Mapping):
        lines += [
            "",
            f"DStar / FedAvg server CPU per round: {comparison['ratio']:.3f} from round 2 "
            f"(median {comparison['ratio-median']:.3f}; with DStar's validation update "
            f"{comparison['ratio-with-validation-update']:.3f}; all rounds "
            f"{comparison['ratio-all-rounds']:.3f}); target <= {comparison['target']}: "
            + ("met" if comparison["within-target"] else "MISSED"),
        ]
    return "\n".join(lines)


def run_engine(
    setting: EngineSetting,
    out_dir: Path,
    *,
    strategies: Sequence[str] = STRATEGIES,
    extra: Mapping[str, object] | None = None,
    target: float = 1.2,
    quiet: bool = True,
) -> dict[str, object]:
    """Run each strategy on the simulation engine, write and return the figures.

    Writes ``<out_dir>/scale-engine-<strategy>.json`` (the results),
    ``<out_dir>/scale-engine.json`` (the figures) and ``scale-engine.csv`` (the
    per-round costs).
    """
    out_dir = Path(out_dir).resolve()
    runs: dict[str, Mapping[str, object]] = {}
    seconds: dict[str, float] = {}
    for strategy in strategies:
        print(f"running {strategy} on {setting.num_nodes} virtual nodes ...", flush=True)
        started = time.monotonic()
        path = run_simulation(
            {**setting.overrides(strategy, out_dir), **(extra or {})},
            num_supernodes=setting.num_nodes,
            quiet=quiet,
            max_parallel=setting.max_parallel,
        )
        seconds[strategy] = time.monotonic() - started
        runs[strategy] = json.loads(path.read_text())
        print(f"  {path} ({seconds[strategy]:.0f} s)", flush=True)
    figures = report(setting, runs, seconds, target)
    (out_dir / "scale-engine.json").write_text(json.dumps(figures, indent=2) + "\n")
    write_costs_csv(
        out_dir / "scale-engine.csv",
        {name: results["server-costs"] for name, results in runs.items()},  # type: ignore[misc]
    )
    print(format_report(figures, runs), flush=True)
    return figures

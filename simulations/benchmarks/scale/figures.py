"""The scale benchmarks' figures, from the results files the ServerApp writes.

The ServerApp records, for every round it runs, its own CPU seconds by step and
its resident memory after the round (``server-costs`` in the results JSON, see
:mod:`simulations.app.server_costs`). The server's time outside the clients is
``server-cpu-seconds``: the strategy's own code and its Grid calls. Round 1
also pays one-time costs (DStar's rule compiles its kernels on first use, numba
JIT, once per ServerApp process), so the per-round figures are given from round
2 on, with round 1 and the mean over all rounds beside them.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median

MIB = 2**20
# Steps of the ServerApp's CPU time (simulations.app.server_costs), as CSV columns.
COST_COLUMNS = (
    "server-cpu-seconds",
    "strategy-cpu-seconds",
    "configure-cpu-seconds",
    "reply-checks-cpu-seconds",
    "aggregate-cpu-seconds",
    "grid-cpu-seconds",
    "validation-update-cpu-seconds",
    "harness-cpu-seconds",
    "evaluation-cpu-seconds",
    "wall-seconds",
    "rss-bytes",
)
# The steps of the server's own work (their sum is server-cpu-seconds).
SERVER_STEPS = ("configure", "reply-checks", "aggregate", "strategy", "grid")
# The per-round line DStar's report logs, and the reason of a skipped round.
_ROUND_LINE = re.compile(
    r"dstar round (\d+): [^\n]*?\| (?:nan|[0-9.]+)s(?: \| SKIPPED \((.*)\), model kept)?$",
    re.MULTILINE,
)


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else math.nan


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` against ``xs`` (NaN with fewer than 2 points)."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values, {len(ys)} y values")
    if len(xs) < 2:
        return math.nan
    x_mean, y_mean = mean(xs), mean(ys)
    spread = sum((x - x_mean) ** 2 for x in xs)
    if spread == 0:
        return math.nan
    return sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / spread


def _number(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CostSummary:
    """One run's server costs per round.

    ``steady`` figures are the means over rounds ``warmup + 1 ..`` (``steps``:
    those of :data:`SERVER_STEPS`, in seconds); ``first`` is round 1's; ``all``
    the mean over every round. Memory: the RSS after the first and the last
    round, its largest value, and its least-squares slope in bytes per round over
    the steady rounds.
    """

    rounds: int
    server_cpu_steady: float
    server_cpu_median: float
    server_cpu_first: float
    server_cpu_all: float
    grid_cpu_steady: float
    validation_cpu_steady: float
    validation_cpu_first: float
    harness_cpu_steady: float
    evaluation_cpu_steady: float
    wall_steady: float
    rss_first: int
    rss_last: int
    rss_max: int
    rss_slope: float
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def rss_growth(self) -> int:
        """RSS after the last round minus after the first (bytes)."""
        return self.rss_last - self.rss_first

    def to_dict(self) -> dict[str, object]:
        """The summary under kebab-case keys."""
        return {
            "rounds": self.rounds,
            "server-cpu-s-per-round": self.server_cpu_steady,
            "server-cpu-s-median": self.server_cpu_median,
            "server-cpu-s-round-1": self.server_cpu_first,
            "server-cpu-s-all-rounds": self.server_cpu_all,
            "server-cpu-ms-by-step": {step: 1000 * ms for step, ms in self.steps.items()},
            "grid-cpu-s-per-round": self.grid_cpu_steady,
            "validation-update-cpu-s-per-round": self.validation_cpu_steady,
            "validation-update-cpu-s-round-1": self.validation_cpu_first,
            "harness-cpu-s-per-round": self.harness_cpu_steady,
            "evaluation-cpu-s-per-round": self.evaluation_cpu_steady,
            "wall-s-per-round": self.wall_steady,
            "rss-mib-first": self.rss_first / MIB,
            "rss-mib-last": self.rss_last / MIB,
            "rss-mib-max": self.rss_max / MIB,
            "rss-growth-mib": self.rss_growth / MIB,
            "rss-slope-kib-per-round": self.rss_slope / 1024,
        }


def summarize_costs(costs: Sequence[Mapping[str, object]], warmup: int = 1) -> CostSummary:
    """Summarize a run's ``server-costs`` (one mapping per round, in round order).

    Parameters
    ----------
    costs : Sequence[Mapping[str, object]]
        The results JSON's ``server-costs``.
    warmup : int (default: 1)
        Leading rounds left out of the steady figures (all are kept when there
        are no more rounds than this).
    """
    if not costs:
        raise ValueError("no server costs: the results come from a ServerApp that records none")
    ordered = sorted(costs, key=lambda c: int(c["server-round"]))  # type: ignore[call-overload]
    steady = list(ordered[warmup:]) or list(ordered)

    def column(rows: Sequence[Mapping[str, object]], key: str) -> list[float]:
        return [_number(row.get(key)) for row in rows]

    rounds = [float(row["server-round"]) for row in steady]  # type: ignore[arg-type]
    rss = column(ordered, "rss-bytes")
    steps = {step: _finite_mean(column(steady, f"{step}-cpu-seconds")) for step in SERVER_STEPS}
    server = column(steady, "server-cpu-seconds")
    return CostSummary(
        rounds=len(ordered),
        server_cpu_steady=_finite_mean(server),
        server_cpu_median=median(server),
        server_cpu_first=column(ordered, "server-cpu-seconds")[0],
        server_cpu_all=_finite_mean(column(ordered, "server-cpu-seconds")),
        grid_cpu_steady=_finite_mean(column(steady, "grid-cpu-seconds")),
        validation_cpu_steady=_finite_mean(column(steady, "validation-update-cpu-seconds")),
        validation_cpu_first=column(ordered, "validation-update-cpu-seconds")[0],
        harness_cpu_steady=_finite_mean(column(steady, "harness-cpu-seconds")),
        evaluation_cpu_steady=_finite_mean(column(steady, "evaluation-cpu-seconds")),
        wall_steady=_finite_mean(column(steady, "wall-seconds")),
        rss_first=int(rss[0]),
        rss_last=int(rss[-1]),
        rss_max=int(max(rss)),
        rss_slope=slope(rounds, column(steady, "rss-bytes")),
        steps=steps,
    )


@dataclass(frozen=True)
class Comparison:
    """DStar's server CPU seconds per round against FedAvg's, in one federation.

    ``ratio`` compares the steady rounds' means of ``server-cpu-seconds``;
    ``ratio_with_validation`` adds DStar's validation update (its server-side
    training) to DStar's side; ``ratio_all_rounds`` takes every round's mean,
    round 1 included.
    """

    ratio: float
    ratio_median: float
    ratio_with_validation: float
    ratio_all_rounds: float
    target: float

    @property
    def within_target(self) -> bool:
        """Whether ``ratio`` is at most the target."""
        return self.ratio <= self.target

    def to_dict(self) -> dict[str, float | bool]:
        """The comparison under kebab-case keys."""
        return {
            "ratio": self.ratio,
            "ratio-median": self.ratio_median,
            "ratio-with-validation-update": self.ratio_with_validation,
            "ratio-all-rounds": self.ratio_all_rounds,
            "target": self.target,
            "within-target": self.within_target,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def compare(dstar: CostSummary, fedavg: CostSummary, target: float = 1.2) -> Comparison:
    """DStar's server CPU per round over FedAvg's (see :class:`Comparison`)."""
    return Comparison(
        ratio=_ratio(dstar.server_cpu_steady, fedavg.server_cpu_steady),
        ratio_median=_ratio(dstar.server_cpu_median, fedavg.server_cpu_median),
        ratio_with_validation=_ratio(
            dstar.server_cpu_steady + dstar.validation_cpu_steady, fedavg.server_cpu_steady
        ),
        ratio_all_rounds=_ratio(dstar.server_cpu_all, fedavg.server_cpu_all),
        target=target,
    )


def memory_is_flat(summary: CostSummary, limit_bytes_per_round: float) -> bool:
    """Whether the RSS grew by less than ``limit_bytes_per_round`` per steady round."""
    return math.isfinite(summary.rss_slope) and summary.rss_slope < limit_bytes_per_round


def write_costs_csv(path: Path, runs: Mapping[str, Sequence[Mapping[str, object]]]) -> Path:
    """One CSV row per run and round: the run's name, the round, then :data:`COST_COLUMNS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["run", "server-round", *COST_COLUMNS])
        for name, costs in runs.items():
            for row in costs:
                writer.writerow([name, row["server-round"], *(row.get(c) for c in COST_COLUMNS)])
    return path


def format_costs_table(runs: Mapping[str, Sequence[Mapping[str, object]]]) -> str:
    """Per round and run: server CPU ms, validation-update ms, wall s and RSS MiB."""
    names = list(runs)
    by_round: dict[int, dict[str, Mapping[str, object]]] = {}
    for name, costs in runs.items():
        for row in costs:
            by_round.setdefault(int(row["server-round"]), {})[name] = row  # type: ignore[call-overload]
    header = ["round"]
    for name in names:
        header += [f"{name} cpu ms", f"{name} valid. ms", f"{name} wall s", f"{name} RSS MiB"]
    lines = [" | ".join(f"{h:>14}" for h in header)]
    for server_round in sorted(by_round):
        cells = [f"{server_round:>14}"]
        for name in names:
            row = by_round[server_round].get(name)
            if row is None:
                cells += [f"{'-':>14}"] * 4
                continue
            cells += [
                f"{1000 * _number(row.get('server-cpu-seconds')):>14.1f}",
                f"{1000 * _number(row.get('validation-update-cpu-seconds')):>14.1f}",
                f"{_number(row.get('wall-seconds')):>14.2f}",
                f"{_number(row.get('rss-bytes')) / MIB:>14.1f}",
            ]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


# --- rounds of a run that was stopped and resumed ---------------------------------


def logged_rounds(log: str) -> dict[int, str | None]:
    """The rounds DStar reported in a run's log: round -> skip reason (None: completed)."""
    rounds: dict[int, str | None] = {}
    for match in _ROUND_LINE.finditer(log):
        rounds[int(match.group(1))] = match.group(2)
    return rounds


@dataclass(frozen=True)
class RoundOutcome:
    """One round of the results: completed, or skipped with the reason DStar logged."""

    server_round: int
    completed: bool
    skip_reason: str | None

    @property
    def accounted_for(self) -> bool:
        """Completed, or skipped with a reason."""
        return self.completed or bool(self.skip_reason)


def round_outcomes(
    rows: Sequence[Mapping[str, object]], reasons: Mapping[int, str | None], num_rounds: int
) -> list[RoundOutcome]:
    """Every round ``1..num_rounds``: from the results rows, skip reasons from the logs.

    A round missing from the results is neither completed nor skipped with a
    reason.
    """
    by_round = {int(row["server_round"]): row for row in rows}  # type: ignore[call-overload]
    outcomes = []
    for server_round in range(1, num_rounds + 1):
        row = by_round.get(server_round)
        if row is None:
            outcomes.append(RoundOutcome(server_round, False, None))
        elif row.get("skipped"):
            outcomes.append(RoundOutcome(server_round, False, reasons.get(server_round)))
        else:
            outcomes.append(RoundOutcome(server_round, True, None))
    return outcomes


def lost_rounds(
    checkpointed: Sequence[Mapping[str, object]],
    final: Sequence[Mapping[str, object]],
    keys: Sequence[str] = ("server_round", "received_partitions", "rejected_partitions"),
) -> list[int]:
    """Checkpointed rounds missing from the final results or different there, on ``keys``."""
    final_rows = {int(row["server_round"]): row for row in final}  # type: ignore[call-overload]
    lost = []
    for row in checkpointed:
        server_round = int(row["server_round"])  # type: ignore[call-overload]
        kept = final_rows.get(server_round)
        if kept is None or any(kept.get(key) != row.get(key) for key in keys):
            lost.append(server_round)
    return lost

"""The attack grid's report: tables, findings and figures from the grid's rows.

The report (the block between ``<!-- attack-grid:begin -->`` and
``<!-- attack-grid:end -->`` in the markdown file, e.g. ``docs/results.md``)
holds, from the cells without stragglers: what ran and what it cost; clean
accuracy per strategy and data split; each strategy's worst-case accuracy drop
over the attacks at every Byzantine fraction f/N; heatmaps of accuracy per
strategy and attack; accuracy against f/N; how DStar fares when its assumed f
is under- or over-estimated; and findings computed from the numbers (the large
drops of the baselines, where DStar loses, and the report's targets checked as
met or not met). From the straggler slice it holds round times, wall-clock
totals and the time each strategy takes to reach FedAvg's final accuracy.
Accuracy is in percentage points, mean ± std over seeds; a number that
averages fewer than three seeds says so with ``(n=k)``, and a cell not run yet
shows ``—``.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from simulations.benchmarks.attack_grid import ALL_ATTACKS, ALL_STRATEGIES, FRACTIONS, SEEDS

Row = Mapping[str, object]
# dataset, partition, f/N, attack, strategy, f-estimate
CellKey = tuple[str, str, float, str, str, str]
Setting = tuple[str, str]
# A figure's file name and alt text -> its markdown image, None when not written.
LinkFn = Callable[[str, str], str | None]

BEGIN = "<!-- attack-grid:begin -->"
END = "<!-- attack-grid:end -->"
SECTION_HEADING = "## The attack grid"
HEADLINE: Setting = ("mnist1d", "dir0.5")
SETTINGS: tuple[Setting, ...] = (
    HEADLINE,
    ("mnist1d", "dir0.1"),
    ("mnist1d", "iid"),
    ("digits", "dir0.5"),
    ("digits", "dir0.1"),
    ("digits", "iid"),
)
DATASET_NAMES = {"mnist1d": "MNIST-1D", "digits": "digits"}
ATTACKED = tuple(a for a in ALL_ATTACKS if a != "none")
FULL_SEEDS = len(SEEDS)
HEATMAP_FRACTIONS = (0.2, 0.4)
CURVE_SETTINGS: tuple[Setting, ...] = (HEADLINE, ("digits", "dir0.5"))
LARGE_DROP = 40.0
LOSS_MARGIN = 2.0
CLEAN_TOLERANCE = 1.0
TOP = 25
DPI = 100


# --------------------------------------------------------------------------- statistics


def fraction_key(value: object) -> float:
    """A Byzantine fraction as a dictionary key (0.1 and 0.1000000001 are one key)."""
    return round(float(value), 6)  # type: ignore[arg-type]


def finite(values: Iterable[object]) -> list[float]:
    """The finite numbers among ``values``, as floats."""
    return [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    ]


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean of ``values``, NaN when there is none."""
    return statistics.fmean(values) if values else math.nan


def seeds_note(count: int) -> str:
    """`` (n=k)`` when a number averages fewer seeds than the grid runs, else ``""``."""
    return f" (n={count})" if 0 < count < FULL_SEEDS else ""


def format_mean_std(values: Sequence[float], decimals: int = 1) -> str:
    """``mean ± std`` over seeds (std with ddof=1, only from two seeds), ``—`` if empty.

    Parameters
    ----------
    values
        One number per seed, already in the unit to print.
    decimals
        Decimals of mean and std.

    Returns
    -------
    str
        E.g. ``87.3 ± 1.2``, ``87.3 ± 1.2 (n=2)``, ``87.3 (n=1)`` or ``—``.
    """
    if not values:
        return "—"
    text = f"{statistics.fmean(values):.{decimals}f}"
    if len(values) >= 2:
        text += f" ± {statistics.stdev(values):.{decimals}f}"
    return text + seeds_note(len(values))


def format_signed(value: float, decimals: int = 1) -> str:
    """``+1.2`` / ``-0.4``; ``—`` for NaN."""
    return "—" if not math.isfinite(value) else f"{value:+.{decimals}f}"


def setting_name(setting: Setting) -> str:
    """``MNIST-1D dir0.5``."""
    dataset, partition = setting
    return f"{DATASET_NAMES.get(dataset, dataset)} {partition}"


def _ordered(values: Iterable[str], canonical: Sequence[str]) -> list[str]:
    present = set(values)
    return [v for v in canonical if v in present] + sorted(present - set(canonical))


# --------------------------------------------------------------------------- the grid's cells


@dataclass(frozen=True)
class GridIndex:
    """The final accuracies of the grid's cells.

    Attributes
    ----------
    accuracy
        Per cell, one final accuracy in points per seed that ran (finite values only).
    not_applicable
        The cells that cannot run (Bulyan with too few replies, FedAvg's tailored attack).
    """

    accuracy: Mapping[CellKey, Sequence[float]]
    not_applicable: frozenset[CellKey]

    def values(self, key: CellKey) -> Sequence[float]:
        """The per-seed accuracies of a cell (empty when not run)."""
        return self.accuracy.get(key, ())

    def mean(self, key: CellKey) -> float:
        """A cell's mean accuracy in points; NaN when it has not run."""
        return mean_or_nan(self.values(key))

    def strategies(self) -> list[str]:
        """The strategies with a row, in the grid's order."""
        keys = [*self.accuracy, *self.not_applicable]
        return _ordered((k[4] for k in keys), ALL_STRATEGIES)

    def attacks(self) -> list[str]:
        """The attacks (not ``none``) the grid has, in the grid's order, at least the presets."""
        keys = [*self.accuracy, *self.not_applicable]
        return _ordered({*ATTACKED, *(k[3] for k in keys if k[3] != "none")}, ATTACKED)


def cell_key(row: Row) -> CellKey:
    """A row's cell, without its seed."""
    return (
        str(row["dataset"]),
        str(row["partition"]),
        fraction_key(row["byzantine-fraction"]),
        str(row["attack"]),
        str(row["strategy"]),
        str(row.get("f-estimate", "true")),
    )


def index_rows(rows: Iterable[Row]) -> GridIndex:
    """Group rows into cells: accuracies (points) of the ok rows, the not-applicable cells."""
    accuracy: dict[CellKey, list[float]] = defaultdict(list)
    not_applicable = set()
    for row in rows:
        key = cell_key(row)
        if row.get("status") == "ok":
            accuracy[key].extend(100.0 * v for v in finite([row.get("final-accuracy")]))
        else:
            not_applicable.add(key)
    return GridIndex({k: v for k, v in accuracy.items() if v}, frozenset(not_applicable))


def clean_key(setting: Setting, strategy: str, estimate: str = "true") -> CellKey:
    """The cell without Byzantine nodes."""
    return (setting[0], setting[1], 0.0, "none", strategy, estimate)


def attacked_key(
    setting: Setting, fraction: float, attack: str, strategy: str, estimate: str = "true"
) -> CellKey:
    """An attacked cell."""
    return (setting[0], setting[1], fraction_key(fraction), attack, strategy, estimate)


@dataclass(frozen=True)
class Drop:
    """A strategy's worst-case accuracy drop in one column (setting, f/N).

    Attributes
    ----------
    points
        Clean mean accuracy minus the attacked mean accuracy, maximised over attacks.
    attack
        The attack that achieves it.
    seeds
        The fewest seeds behind either mean.
    attacks_run
        The attacks with a finished cell.
    attacks_expected
        The attacks that apply to the strategy (not-applicable ones excluded).
    """

    points: float
    attack: str
    seeds: int
    attacks_run: int
    attacks_expected: int


def attack_drop(
    index: GridIndex,
    setting: Setting,
    fraction: float,
    attack: str,
    strategy: str,
    *,
    estimate: str = "true",
    clean_estimate: str | None = None,
) -> float:
    """One attack's drop in points from the strategy's clean accuracy; NaN when missing."""
    clean = index.mean(clean_key(setting, strategy, clean_estimate or estimate))
    return clean - index.mean(attacked_key(setting, fraction, attack, strategy, estimate))


def worst_case_drop(
    index: GridIndex,
    setting: Setting,
    fraction: float,
    strategy: str,
    *,
    estimate: str = "true",
    clean_estimate: str | None = None,
    attacks: Sequence[str] | None = None,
) -> Drop | None:
    """The largest drop over attacks at one f/N, or None without a clean and an attacked cell.

    Parameters
    ----------
    index
        The grid's cells.
    setting
        Dataset and partition.
    fraction
        The Byzantine fraction f/N.
    strategy
        The strategy.
    estimate
        DStar's assumed f of the attacked cells (``true``, ``under``, ``over``).
    clean_estimate
        The assumed f of the clean baseline (default: ``estimate``).
    attacks
        The attacks to maximise over (default: every attack but ``none``).

    Returns
    -------
    Drop or None
        Not-applicable and missing cells are left out of the maximum.
    """
    clean = index.values(clean_key(setting, strategy, clean_estimate or estimate))
    attacks = list(attacks) if attacks is not None else index.attacks()
    keys = {a: attacked_key(setting, fraction, a, strategy, estimate) for a in attacks}
    expected = [a for a, k in keys.items() if k not in index.not_applicable]
    run = {a: index.values(k) for a, k in keys.items() if a in expected and index.values(k)}
    if not clean or not run:
        return None
    clean_mean = statistics.fmean(clean)
    drops = {a: clean_mean - statistics.fmean(v) for a, v in run.items()}
    worst = max(drops, key=lambda a: (drops[a], -attacks.index(a)))
    return Drop(drops[worst], worst, min(len(clean), len(run[worst])), len(run), len(expected))


def all_not_applicable(
    index: GridIndex, setting: Setting, fraction: float, strategy: str, estimate: str = "true"
) -> bool:
    """Whether no attack applies to the strategy at this f/N (e.g. Bulyan with 30% Byzantine)."""
    return all(
        attacked_key(setting, fraction, a, strategy, estimate) in index.not_applicable
        for a in index.attacks()
    )


def format_drop(drop: Drop | None, *, not_applicable: bool = False, bold: bool = False) -> str:
    """``23.4 (alie)``; seeds below three and attacks not yet run are noted; ``n/a`` or ``—``."""
    if drop is None:
        return "n/a" if not_applicable else "—"
    notes = [drop.attack]
    if drop.seeds < FULL_SEEDS:
        notes.append(f"n={drop.seeds}")
    if drop.attacks_run < drop.attacks_expected:
        notes.append(f"{drop.attacks_run}/{drop.attacks_expected} attacks")
    text = f"{drop.points:.1f} ({'; '.join(notes)})"
    return f"**{text}**" if bold else text


def drop_table(
    index: GridIndex,
    setting: Setting,
    strategies: Sequence[str],
    fractions: Sequence[float] = FRACTIONS,
) -> str:
    """Strategy × f/N of worst-case drops, the smallest per column in bold."""
    drops = {(s, f): worst_case_drop(index, setting, f, s) for s in strategies for f in fractions}
    smallest = {}
    for f in fractions:
        column = [round(d.points, 1) for s in strategies if (d := drops[s, f]) is not None]
        smallest[f] = min(column, default=None)
    table = []
    for s in strategies:
        cells = []
        for f in fractions:
            drop = drops[s, f]
            bold = drop is not None and round(drop.points, 1) == smallest[f]
            na = all_not_applicable(index, setting, f, s)
            cells.append(format_drop(drop, not_applicable=na, bold=bold))
        table.append([s, *cells])
    return markdown_table(["strategy", *(f"f/N = {f:g}" for f in fractions)], table)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table of already formatted cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class DropFinding:
    """One strategy's drop under one attack in one cell, with DStar's in the same cell."""

    setting: Setting
    fraction: float
    attack: str
    strategy: str
    drop: float
    dstar_drop: float


def baseline_drops(index: GridIndex) -> list[DropFinding]:
    """Every finished attacked cell of every strategy but DStar, largest drop first."""
    found = []
    for key in index.accuracy:
        dataset, partition, fraction, attack, strategy, estimate = key
        if strategy == "dstar" or estimate != "true" or attack == "none" or fraction == 0:
            continue
        setting = (dataset, partition)
        drop = attack_drop(index, setting, fraction, attack, strategy)
        if math.isfinite(drop):
            dstar = attack_drop(index, setting, fraction, attack, "dstar")
            found.append(DropFinding(setting, fraction, attack, strategy, drop, dstar))
    return sorted(found, key=lambda d: (-d.drop, d.setting, d.fraction, d.attack, d.strategy))


@dataclass(frozen=True)
class Comparison:
    """DStar against the best other strategy in one cell (setting, f/N, attack)."""

    setting: Setting
    fraction: float
    attack: str
    dstar: float
    best: float
    best_strategy: str

    @property
    def margin(self) -> float:
        """How many points the best other strategy is ahead of DStar (negative: behind)."""
        return self.best - self.dstar


def dstar_comparisons(index: GridIndex) -> list[Comparison]:
    """Every cell (clean ones included) where DStar and another strategy have finished."""
    cells: dict[tuple[Setting, float, str], dict[str, float]] = defaultdict(dict)
    for key in index.accuracy:
        dataset, partition, fraction, attack, strategy, estimate = key
        if estimate == "true":
            cells[(dataset, partition), fraction, attack][strategy] = index.mean(key)
    out = []
    for (setting, fraction, attack), means in cells.items():
        others = {s: m for s, m in means.items() if s != "dstar"}
        if "dstar" not in means or not others:
            continue
        best = max(others, key=lambda s: (others[s], s))
        out.append(Comparison(setting, fraction, attack, means["dstar"], others[best], best))
    return sorted(out, key=lambda c: (-c.margin, c.setting, c.fraction, c.attack))


@dataclass(frozen=True)
class TargetCheck:
    """A target of the report, checked against the numbers.

    Attributes
    ----------
    statement
        The target, in words.
    status
        ``met``, ``not met`` or ``not determined`` (a cell it needs has not run).
    details
        The numbers behind the verdict, one line each.
    provisional
        Whether some cells (attacks, seeds) are missing from the numbers.
    """

    statement: str
    status: str
    details: tuple[str, ...]
    provisional: bool = False


def _incomplete(drop: Drop | None) -> bool:
    return drop is None or drop.attacks_run < drop.attacks_expected or drop.seeds < FULL_SEEDS


def check_smallest_drop(
    index: GridIndex,
    setting: Setting = HEADLINE,
    fractions: Sequence[float] = (0.1, 0.2, 0.3),
    strategy: str = "dstar",
) -> TargetCheck:
    """Whether ``strategy``'s worst-case drop is the smallest of all (ties count) at each f/N."""
    statement = (
        f"On {setting_name(setting)}, {strategy}'s worst-case drop is the smallest of all "
        f"strategies at every f/N ≤ {max(fractions):g}"
    )
    details, verdicts, provisional = [], [], False
    for f in fractions:
        own = worst_case_drop(index, setting, f, strategy)
        others = {
            s: d
            for s in index.strategies()
            if s != strategy and (d := worst_case_drop(index, setting, f, s)) is not None
        }
        provisional |= _incomplete(own) or any(_incomplete(d) for d in others.values())
        if own is None or not others:
            details.append(f"f/N = {f:g}: not run yet")
            verdicts.append(None)
            continue
        best = min(others, key=lambda s: others[s].points)
        ok = own.points <= others[best].points
        verdicts.append(ok)
        details.append(
            f"f/N = {f:g}: {strategy} {own.points:.1f} ({own.attack}) vs the smallest other "
            f"{others[best].points:.1f} ({best}, {others[best].attack}): "
            + ("smallest" if ok else "not the smallest")
        )
    return TargetCheck(statement, _verdict(verdicts), tuple(details), provisional)


def check_below(
    index: GridIndex,
    other: str = "fedmedian",
    fraction: float = 0.4,
    setting: Setting = HEADLINE,
    strategy: str = "dstar",
) -> TargetCheck:
    """Whether ``strategy``'s worst-case drop is below ``other``'s at one f/N."""
    statement = (
        f"On {setting_name(setting)}, {strategy}'s worst-case drop is below {other}'s "
        f"at f/N = {fraction:g}"
    )
    own = worst_case_drop(index, setting, fraction, strategy)
    theirs = worst_case_drop(index, setting, fraction, other)
    provisional = _incomplete(own) or _incomplete(theirs)
    if own is None or theirs is None:
        return TargetCheck(statement, "not determined", ("not run yet",), provisional)
    ok = own.points < theirs.points
    detail = (
        f"{strategy} {own.points:.1f} ({own.attack}) vs {other} {theirs.points:.1f} "
        f"({theirs.attack})"
    )
    return TargetCheck(statement, "met" if ok else "not met", (detail,), provisional)


def check_clean_parity(
    index: GridIndex,
    settings: Sequence[Setting] = SETTINGS,
    tolerance: float = CLEAN_TOLERANCE,
    strategy: str = "dstar",
    reference: str = "fedavg",
) -> TargetCheck:
    """Whether ``strategy``'s clean accuracy is at most ``tolerance`` points below FedAvg's."""
    statement = (
        f"{strategy}'s clean accuracy is within {tolerance:g} point of {reference}'s at every "
        f"partition (met when it is at most {tolerance:g} point below; above it is fine)"
    )
    details, verdicts, provisional = [], [], False
    for setting in settings:
        own = index.values(clean_key(setting, strategy))
        ref = index.values(clean_key(setting, reference))
        provisional |= min(len(own), len(ref)) < FULL_SEEDS
        if not own or not ref:
            details.append(f"{setting_name(setting)}: not run yet")
            verdicts.append(None)
            continue
        diff = statistics.fmean(own) - statistics.fmean(ref)
        verdicts.append(diff >= -tolerance)
        details.append(
            f"{setting_name(setting)}: {statistics.fmean(own):.1f} vs "
            f"{statistics.fmean(ref):.1f}, difference {format_signed(diff)}"
        )
    return TargetCheck(statement, _verdict(verdicts), tuple(details), provisional)


def _verdict(verdicts: Sequence[bool | None]) -> str:
    if any(v is False for v in verdicts):
        return "not met"
    if not verdicts or any(v is None for v in verdicts):
        return "not determined"
    return "met"


# --------------------------------------------------------------------------- stragglers


def time_to_accuracy(
    accuracy_per_round: Sequence[float], round_seconds: Sequence[float], target: float
) -> float | None:
    """The cumulative wall time at the end of the first round whose accuracy is ≥ ``target``.

    Returns
    -------
    float or None
        Seconds; None when no round reaches the target.
    """
    elapsed = np.cumsum(np.asarray(round_seconds, dtype=float))
    for accuracy, seconds in zip(accuracy_per_round, elapsed, strict=False):
        if isinstance(accuracy, int | float) and accuracy >= target:
            return float(seconds)
    return None


def run_label(row: Row) -> str:
    """The row's strategy, with its own number of rounds where the cell set one."""
    return str(row.get("label") or row["strategy"])


def _by_seed(rows: Iterable[Row], strategy: str, attack: str) -> dict[int, Row]:
    """Per seed, the ok row whose run label (see :func:`run_label`) and attack match."""
    return {
        int(r["seed"]): r  # type: ignore[call-overload]
        for r in rows
        if r.get("status") == "ok" and run_label(r) == strategy and r["attack"] == attack
    }


def time_to_fedavg_accuracy(
    rows: Iterable[Row], strategy: str = "dstar", attack: str = "none"
) -> dict[int, float | None]:
    """Per seed: time for ``strategy`` to reach FedAvg's final clean accuracy, ÷ FedAvg's time.

    Parameters
    ----------
    rows
        The straggler slice's rows.
    strategy, attack
        The run to time (e.g. DStar without attack).

    Returns
    -------
    dict
        Seed → the cumulative wall time at which the run's accuracy first reaches
        FedAvg's final accuracy (same seed, attack ``none``), divided by FedAvg's
        total wall time (the sum of its round times); None when it never does.
        Seeds without both runs (or with FedAvg's accuracy or time unknown) are left out.
    """
    rows = list(rows)
    fedavg = _by_seed(rows, "fedavg", "none")
    runs = _by_seed(rows, strategy, attack)
    out: dict[int, float | None] = {}
    for seed in sorted(set(fedavg) & set(runs)):
        reference, run = fedavg[seed], runs[seed]
        target = float(reference["final-accuracy"])  # type: ignore[arg-type]
        total = float(np.sum(np.asarray(reference["round-seconds"], dtype=float)))
        if not (math.isfinite(target) and math.isfinite(total) and total > 0):
            continue
        reached = time_to_accuracy(
            run["accuracy-per-round"],  # type: ignore[arg-type]
            run["round-seconds"],  # type: ignore[arg-type]
            target,
        )
        out[seed] = None if reached is None else reached / total
    return out


@dataclass(frozen=True)
class RoundTimes:
    """One strategy's straggler-slice numbers under one attack, one value per seed."""

    mean_round: list[float]
    mean_round_after_first: list[float]
    total_wall: list[float]
    final_accuracy: list[float]


def round_times(rows: Iterable[Row], strategy: str, attack: str) -> RoundTimes:
    """Per seed: mean round seconds (all rounds; rounds 2..), total wall seconds, accuracy."""
    times = RoundTimes([], [], [], [])
    for _, row in sorted(_by_seed(rows, strategy, attack).items()):
        seconds = finite(row.get("round-seconds") or [])  # type: ignore[arg-type]
        if seconds:
            times.mean_round.append(statistics.fmean(seconds))
            times.total_wall.append(math.fsum(seconds))
        if len(seconds) > 1:
            times.mean_round_after_first.append(statistics.fmean(seconds[1:]))
        times.final_accuracy.extend(100.0 * v for v in finite([row.get("final-accuracy")]))
    return times


# --------------------------------------------------------------------------- markdown


def build_markdown(
    rows: Sequence[Row], figure_names: Collection[str], *, figure_dir: str = "figures"
) -> str:
    """The report's markdown (what goes between the markers).

    Parameters
    ----------
    rows
        Every row of the grid (the straggler slice included).
    figure_names
        The file names of the figures written; only those are linked.
    figure_dir
        The figures' folder relative to the report.

    Returns
    -------
    str
        Sections 1-8, separated by blank lines, without the markers.
    """
    grid = [r for r in rows if not r.get("stragglers")]
    slow = [r for r in rows if r.get("stragglers")]
    index = index_rows(grid)
    strategies = index.strategies() or list(ALL_STRATEGIES)

    def link(name: str, alt: str) -> str | None:
        return f"![{alt}]({figure_dir}/{name})" if name in figure_names else None

    parts = [
        setup_section(grid),
        clean_section(index, strategies),
        drop_section(index, strategies),
        heatmap_section(link),
        curve_section(link),
        estimate_section(index),
        findings_section(index),
        straggler_section(slow, link),
    ]
    return "\n\n".join(parts).rstrip() + "\n"


def setup_section(rows: Sequence[Row]) -> str:
    """What ran: cells, not-applicable cells and why, cost per cell, seeds."""
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    reasons = Counter(str(r.get("reason", "not applicable")) for r in skipped)
    seconds = finite(r.get("cell-seconds") for r in ok)
    per_dataset = []
    for dataset in _ordered({str(r["dataset"]) for r in ok}, ("mnist1d", "digits")):
        values = finite(r.get("cell-seconds") for r in ok if r["dataset"] == dataset)
        if values:
            per_dataset.append(
                f"{DATASET_NAMES.get(dataset, dataset)} {statistics.fmean(values):.1f} s "
                f"({len(values)} cells)"
            )
    seeds = sorted({int(r["seed"]) for r in rows})  # type: ignore[call-overload]
    nodes = sorted({int(r["num-nodes"]) for r in rows if "num-nodes" in r})  # type: ignore[call-overload]
    rounds = sorted({int(r["rounds"]) for r in ok if "rounds" in r})  # type: ignore[call-overload]
    why = "; ".join(f"{reason}: {count} cells" for reason, count in sorted(reasons.items()))
    text = (
        f"{len(ok)} cells run, {len(skipped)} not applicable"
        + (f" ({why})" if why else "")
        + f"; {math.fsum(seconds):.0f} cell-seconds in all ({math.fsum(seconds) / 3600:.2f} h)"
        + (f", per cell: {', '.join(per_dataset)}" if per_dataset else "")
        + f"; seeds {', '.join(map(str, seeds)) or 'none'}"
        + (f"; N = {', '.join(map(str, nodes))} nodes" if nodes else "")
        + (f", {', '.join(map(str, rounds))} rounds" if rounds else "")
        + ". Accuracy in points, mean ± std over seeds; (n=k): fewer than "
        f"{FULL_SEEDS} seeds; —: not run yet. Cells without stragglers; DStar told the true f "
        "unless stated."
    )
    return "### Setup\n\n" + text


def clean_section(index: GridIndex, strategies: Sequence[str]) -> str:
    """Clean final accuracy, strategy × dataset/partition, and DStar − FedAvg."""
    table = [
        [s, *(format_mean_std(index.values(clean_key(st, s))) for st in SETTINGS)]
        for s in strategies
    ]
    diffs = [
        format_signed(index.mean(clean_key(st, "dstar")) - index.mean(clean_key(st, "fedavg")))
        for st in SETTINGS
    ]
    table.append(["dstar − fedavg", *diffs])
    headers = ["strategy", *(setting_name(st) for st in SETTINGS)]
    return (
        "### Clean accuracy\n\nFinal test accuracy without Byzantine nodes (points).\n\n"
        + markdown_table(headers, table)
    )


def worst_case_accuracy(
    index: GridIndex, setting: Setting, fraction: float, strategy: str
) -> tuple[float, str] | None:
    """The lowest mean accuracy over the attacks that ran at one f/N, and its attack."""
    means = {
        attack: index.mean(attacked_key(setting, fraction, attack, strategy))
        for attack in index.attacks()
    }
    finite_means = {a: m for a, m in means.items() if math.isfinite(m)}
    if not finite_means:
        return None
    attack = min(finite_means, key=lambda a: finite_means[a])
    return finite_means[attack], attack


def worst_accuracy_table(
    index: GridIndex,
    setting: Setting,
    strategies: Sequence[str],
    fractions: Sequence[float] = FRACTIONS,
) -> str:
    """Strategy × f/N of the accuracy left under the worst attack, the highest in bold."""
    worst = {
        (s, f): worst_case_accuracy(index, setting, f, s) for s in strategies for f in fractions
    }
    best = {
        f: max((round(w[0], 1) for s in strategies if (w := worst[s, f])), default=None)
        for f in fractions
    }
    table = []
    for s in strategies:
        cells = []
        for f in fractions:
            w = worst[s, f]
            if w is None:
                na = all_not_applicable(index, setting, f, s)
                cells.append("n/a" if na else "—")
                continue
            text = f"{w[0]:.1f} ({w[1]})"
            cells.append(f"**{text}**" if round(w[0], 1) == best[f] else text)
        table.append([s, *cells])
    return markdown_table(["strategy", *(f"f/N = {f:g}" for f in fractions)], table)


def drop_section(index: GridIndex, strategies: Sequence[str]) -> str:
    """Per dataset/partition, MNIST-1D dir0.5 first: worst-case drop and worst-case accuracy."""
    parts = [
        "### Worst-case drop\n\nPer strategy and f/N: the largest drop over the attacks of the "
        "mean final accuracy from the strategy's own clean accuracy (points), with the attack "
        "that causes it; the smallest drop of each column in bold. n/a: no attack applies "
        "(Bulyan needs N ≥ 4f + 3); k/m attacks: only k of the m attacks have run. A rule "
        "that learns little even without attack (Krum, FLTrust here) has little to lose, so "
        "the second table of each setting gives the accuracy left under the worst attack "
        "(mean over seeds, points; the highest of each column in bold)."
    ]
    for setting in SETTINGS:
        name = setting_name(setting)
        parts.append(f"**{name}**: worst-case drop\n\n" + drop_table(index, setting, strategies))
        parts.append(
            f"**{setting_name(setting)}**: accuracy under the worst attack\n\n"
            + worst_accuracy_table(index, setting, strategies)
        )
    return "\n\n".join(parts)


def heatmap_name(setting: Setting | None, fraction: float) -> str:
    """``attack-grid-heatmap-mnist1d-dir0.5-f0.2.png`` (``-all-`` for every setting)."""
    where = "all" if setting is None else f"{setting[0]}-{setting[1]}"
    return f"attack-grid-heatmap-{where}-f{fraction:g}.png"


def curve_name(setting: Setting) -> str:
    """``attack-grid-accuracy-vs-f-mnist1d-dir0.5.png``."""
    return f"attack-grid-accuracy-vs-f-{setting[0]}-{setting[1]}.png"


STRAGGLER_FIGURE = "attack-grid-stragglers-accuracy-vs-time.png"


def heatmap_section(link: LinkFn) -> str:
    """The heatmaps' links."""
    lines = [
        "### Accuracy per strategy and attack",
        "Mean final accuracy (%) per strategy and attack; grey: not applicable or not run.",
    ]
    for fraction in HEATMAP_FRACTIONS:
        for setting, label in ((HEADLINE, setting_name(HEADLINE)), (None, "every data split")):
            image = link(heatmap_name(setting, fraction), f"accuracy, {label}, f/N {fraction:g}")
            lines.append(image or f"(no figure for {label} at f/N = {fraction:g} yet)")
    return "\n\n".join(lines)


def curve_section(link: LinkFn) -> str:
    """The accuracy-against-f/N figures' links."""
    lines = [
        "### Accuracy against f/N",
        "Mean final accuracy against the Byzantine fraction, one panel per attack "
        "(f/N = 0: clean accuracy); DStar is the thick line.",
    ]
    for setting in CURVE_SETTINGS:
        image = link(curve_name(setting), f"accuracy against f/N, {setting_name(setting)}")
        lines.append(image or f"(no figure for {setting_name(setting)} yet)")
    return "\n\n".join(lines)


def estimate_section(index: GridIndex, setting: Setting = HEADLINE) -> str:
    """DStar's worst-case drop when its assumed f is the true one, under or over it."""
    table = []
    for estimate in ("true", "under", "over"):
        clean = format_mean_std(index.values(clean_key(setting, "dstar", estimate)))
        drops = [
            format_drop(
                worst_case_drop(
                    index, setting, f, "dstar", estimate=estimate, clean_estimate="true"
                )
            )
            for f in FRACTIONS
        ]
        table.append([estimate, clean, *drops])
    headers = ["assumed f", "clean accuracy", *(f"f/N = {f:g}" for f in FRACTIONS)]
    return (
        f"### DStar's assumed f\n\nOn {setting_name(setting)}: DStar told the true f, "
        "f − N/10 (under) or f + N/10 (over). Drops are from DStar's clean accuracy with the "
        "true f, worst attack named.\n\n" + markdown_table(headers, table)
    )


def findings_section(index: GridIndex) -> str:
    """Large baseline drops, where DStar loses, and the targets."""
    return "\n\n".join(
        [
            "### Findings, computed",
            _large_drops_text(index),
            _losses_text(index),
            _targets_text(index),
        ]
    )


def _large_drops_text(index: GridIndex) -> str:
    drops = baseline_drops(index)
    large = [d for d in drops if d.drop >= LARGE_DROP]
    headers = ["data", "f/N", "attack", "strategy", "drop", "DStar's drop"]

    def table(found: Sequence[DropFinding]) -> str:
        return markdown_table(
            headers,
            [
                [
                    setting_name(d.setting),
                    f"{d.fraction:g}",
                    d.attack,
                    d.strategy,
                    f"{d.drop:.1f}",
                    "—" if not math.isfinite(d.dstar_drop) else f"{d.dstar_drop:.1f}",
                ]
                for d in found
            ],
        )

    head = f"**(a) Baselines that drop by ≥ {LARGE_DROP:g} points** from their own clean accuracy"
    if large:
        shown = min(len(large), TOP)
        return (
            f"{head}: {len(large)} (strategy, cell) pairs; the {shown} largest, with DStar's "
            f"drop under the same attack:\n\n" + table(large[:TOP])
        )
    if not drops:
        return f"{head}: none (no attacked cell has run yet)."
    return f"{head}: none. The 10 largest drops:\n\n" + table(drops[:10])


def _losses_text(index: GridIndex) -> str:
    comparisons = dstar_comparisons(index)
    losses = [c for c in comparisons if c.margin > LOSS_MARGIN]
    head = (
        f"**(b) Where DStar loses**: cells where the best other strategy's mean accuracy "
        f"exceeds DStar's by more than {LOSS_MARGIN:g} points"
    )
    if not comparisons:
        return head + ": no cell has both DStar and another strategy yet."
    parts = []
    if losses:
        shown = min(len(losses), TOP)
        rows = [
            [
                setting_name(c.setting),
                f"{c.fraction:g}",
                c.attack,
                f"{c.dstar:.1f}",
                f"{c.best:.1f} ({c.best_strategy})",
                f"{c.margin:.1f}",
            ]
            for c in losses[:TOP]
        ]
        parts.append(
            f"{head}: {len(losses)} of {len(comparisons)} cells; the {shown} largest margins:"
            "\n\n"
            + markdown_table(["data", "f/N", "attack", "DStar", "best other", "margin"], rows)
        )
    else:
        parts.append(f"{head}: none of {len(comparisons)} cells.")
    per_setting = []
    for setting in _ordered_settings({c.setting for c in comparisons}):
        mine = [c for c in comparisons if c.setting == setting]
        close = sum(c.margin <= LOSS_MARGIN for c in mine)
        per_setting.append([setting_name(setting), len(mine), close, len(mine) - close])
    parts.append(
        markdown_table(
            [
                "data",
                "cells compared",
                f"DStar within {LOSS_MARGIN:g} points of the best or better",
                "DStar behind",
            ],
            per_setting,
        )
    )
    return "\n\n".join(parts)


def _ordered_settings(settings: Iterable[Setting]) -> list[Setting]:
    present = set(settings)
    return [s for s in SETTINGS if s in present] + sorted(present - set(SETTINGS))


def _targets_text(index: GridIndex) -> str:
    lines = ["**(c) Targets**"]
    for check in (check_smallest_drop(index), check_below(index), check_clean_parity(index)):
        note = " (provisional: some cells or seeds have not run)" if check.provisional else ""
        lines.append(f"- {check.statement}: **{check.status}**{note}.")
        lines += [f"  - {detail}" for detail in check.details]
    return "\n".join(lines)


def straggler_section(rows: Sequence[Row], link: LinkFn) -> str:
    """Round times, wall-clock totals and time to FedAvg's accuracy with stragglers."""
    head = "### Straggler slice"
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return head + "\n\nNo straggler rows yet."
    strategies = _ordered({run_label(r) for r in ok}, ALL_STRATEGIES)
    attacks = _ordered({str(r["attack"]) for r in ok}, ALL_ATTACKS)
    fractions = {str(r["attack"]): f"{float(r['byzantine-fraction']):g}" for r in ok}  # type: ignore[arg-type]
    table = []
    for attack in attacks:
        fedavg = round_times(ok, "fedavg", attack)
        for strategy in strategies:
            times = round_times(ok, strategy, attack)
            if not times.final_accuracy and not times.mean_round:
                continue
            ratio = mean_or_nan(times.mean_round) / mean_or_nan(fedavg.mean_round)
            table.append(
                [
                    strategy,
                    attack,
                    fractions[attack],
                    format_mean_std(times.mean_round, 2),
                    format_mean_std(times.mean_round_after_first, 2),
                    format_mean_std(times.total_wall, 1),
                    format_mean_std(times.final_accuracy),
                    _ratio(ratio),
                ]
            )
    headers = [
        "strategy",
        "attack",
        "f/N",
        "mean round s",
        "mean round s (rounds 2..)",
        "total wall s",
        "final accuracy",
        "round time / FedAvg's",
    ]
    parts = [
        head,
        "Every node waits a log-normal delay (median 0.5 s, sigma 1) after training; DStar "
        "aggregates the first k replies, the others wait for all. Seconds per seed, then "
        "mean ± std over seeds; round time / FedAvg's: mean round time over FedAvg's under the "
        "same attack.",
        markdown_table(headers, table),
        _time_to_fedavg_text(ok, strategies, attacks),
    ]
    image = link(STRAGGLER_FIGURE, "accuracy against wall-clock time with stragglers")
    parts.append(image or "(no figure yet)")
    return "\n\n".join(parts)


def _ratio(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "—"


def _time_to_fedavg_text(
    rows: Sequence[Row], strategies: Sequence[str], attacks: Sequence[str]
) -> str:
    table = []
    for strategy in strategies:
        for attack in attacks:
            ratios = time_to_fedavg_accuracy(rows, strategy, attack)
            if not ratios:
                continue
            per_seed = ", ".join(
                f"seed {s}: " + ("never reached" if r is None else _ratio(r))
                for s, r in ratios.items()
            )
            reached = [r for r in ratios.values() if r is not None and math.isfinite(r)]
            summary = "never reached" if not reached else f"{statistics.fmean(reached):.2f}"
            if reached and len(reached) < len(ratios):
                summary += f" ({len(reached)} of {len(ratios)} seeds reached)"
            table.append([strategy, attack, per_seed, summary])
    text = (
        "**Time to FedAvg's final accuracy.** Per seed: the wall-clock time (cumulative round "
        "seconds) at which the strategy's test accuracy first reaches FedAvg's final clean "
        "accuracy (same seed), divided by FedAvg's total wall time; below 1 is faster."
    )
    if not table:
        return text + " No seed has both runs yet."
    return text + "\n\n" + markdown_table(["strategy", "attack", "per seed", "mean"], table)


# --------------------------------------------------------------------------- figures


def heatmap_matrix(
    index: GridIndex,
    setting: Setting,
    fraction: float,
    strategies: Sequence[str],
    attacks: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean final accuracy (points) strategy × attack, NaN where missing; the n/a mask."""
    values = np.full((len(strategies), len(attacks)), np.nan)
    na = np.zeros(values.shape, dtype=bool)
    for i, strategy in enumerate(strategies):
        for j, attack in enumerate(attacks):
            key = attacked_key(setting, fraction, attack, strategy)
            values[i, j] = index.mean(key)
            na[i, j] = key in index.not_applicable
    return values, na


def _draw_heatmap(
    axes: plt.Axes,
    index: GridIndex,
    setting: Setting,
    fraction: float,
    strategies: Sequence[str],
    attacks: Sequence[str],
    *,
    decimals: int,
    fontsize: float,
) -> matplotlib.image.AxesImage:
    values, na = heatmap_matrix(index, setting, fraction, strategies, attacks)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if math.isfinite(value):
            text, colour = f"{value:.{decimals}f}", "white" if value < 60 else "black"
        else:
            text, colour = ("n/a" if na[i, j] else ""), "dimgrey"
        axes.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    axes.set_xticks(range(len(attacks)), attacks, rotation=60, ha="right", fontsize=fontsize + 1)
    axes.set_yticks(range(len(strategies)), strategies, fontsize=fontsize + 1)
    axes.set_title(f"{setting_name(setting)}, f/N = {fraction:g}", fontsize=fontsize + 2)
    return image


def plot_heatmap(index: GridIndex, setting: Setting, fraction: float, path: Path) -> None:
    """One setting's strategy × attack heatmap of mean final accuracy at one f/N."""
    strategies, attacks = index.strategies() or list(ALL_STRATEGIES), index.attacks()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    image = _draw_heatmap(
        axes, index, setting, fraction, strategies, attacks, decimals=1, fontsize=8
    )
    figure.colorbar(image, ax=axes, label="final accuracy (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_heatmap_grid(index: GridIndex, fraction: float, path: Path) -> None:
    """Every setting's heatmap at one f/N, one panel each (datasets in rows)."""
    strategies, attacks = index.strategies() or list(ALL_STRATEGIES), index.attacks()
    figure, grid = plt.subplots(2, 3, figsize=(18, 9.5), sharex=True, sharey=True)
    image = None
    for axes, setting in zip(grid.flat, SETTINGS, strict=True):
        image = _draw_heatmap(
            axes, index, setting, fraction, strategies, attacks, decimals=0, fontsize=6.5
        )
    figure.tight_layout(rect=(0, 0, 0.95, 1))
    colorbar = figure.add_axes((0.955, 0.15, 0.012, 0.7))
    figure.colorbar(image, cax=colorbar, label="final accuracy (%)")
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def accuracy_curve(
    index: GridIndex,
    setting: Setting,
    attack: str,
    strategy: str,
    fractions: Sequence[float] = FRACTIONS,
) -> list[float]:
    """Mean final accuracy at f/N = 0 (clean) and each of ``fractions``; NaN where missing."""
    clean = index.mean(clean_key(setting, strategy))
    return [clean, *(index.mean(attacked_key(setting, f, attack, strategy)) for f in fractions)]


def plot_accuracy_vs_fraction(index: GridIndex, setting: Setting, path: Path) -> None:
    """One panel per attack: mean final accuracy against f/N, one line per strategy."""
    strategies, attacks = index.strategies() or list(ALL_STRATEGIES), index.attacks()
    columns = 5
    rows = max(1, math.ceil(len(attacks) / columns))
    figure, grid = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.8 * rows + 0.8), sharex=True, sharey=True
    )
    xs = [0.0, *FRACTIONS]
    colours = _colours(strategies)
    for axes, attack in zip(grid.flat, attacks, strict=False):
        for strategy in strategies:
            ys = accuracy_curve(index, setting, attack, strategy)
            thick = strategy == "dstar"
            axes.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                linewidth=3 if thick else 1.2,
                zorder=3 if thick else 2,
                color=colours[strategy],
                label=strategy,
            )
        axes.set_title(attack, fontsize=9)
        axes.set_ylim(0, 100)
        axes.set_xticks(xs)
        axes.grid(alpha=0.3)
    for axes in grid.flat[len(attacks) :]:
        axes.set_visible(False)
    for axes in grid[:, 0] if grid.ndim == 2 else grid[:1]:
        axes.set_ylabel("final accuracy (%)")
    handles, labels = grid.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(strategies), fontsize=8)
    figure.suptitle(f"{setting_name(setting)}: accuracy against f/N")
    figure.supxlabel("f/N", y=0.06)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _colours(strategies: Sequence[str]) -> dict[str, object]:
    """One colour per strategy (tab10), and others (longer runs) from a second palette."""
    palette, extra_palette = plt.get_cmap("tab10"), plt.get_cmap("Dark2")
    extra = [s for s in strategies if s not in ALL_STRATEGIES]
    return {
        s: palette(ALL_STRATEGIES.index(s) % 10)
        if s in ALL_STRATEGIES
        else extra_palette(extra.index(s) % 8)
        for s in strategies
    }


def plot_straggler_accuracy(rows: Sequence[Row], path: Path) -> None:
    """Accuracy against cumulative wall-clock seconds, one panel per attack.

    Each seed is a faint line; the bold line is the mean accuracy per round
    against the mean cumulative time per round over seeds.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    strategies = _ordered({run_label(r) for r in ok}, ALL_STRATEGIES)
    attacks = _ordered({str(r["attack"]) for r in ok}, ALL_ATTACKS)
    colours = _colours(strategies)
    figure, grid = plt.subplots(
        1, len(attacks), figsize=(6 * len(attacks), 4.5), sharey=True, squeeze=False
    )
    for axes, attack in zip(grid[0], attacks, strict=True):
        for strategy in strategies:
            runs = list(_by_seed(ok, strategy, attack).values())
            curves = [_time_curve(r) for r in runs]
            for times, accuracy in curves:
                axes.plot(times, accuracy, color=colours[strategy], alpha=0.25, linewidth=0.8)
            length = min((len(t) for t, _ in curves), default=0)
            if length:
                times = np.nanmean([t[:length] for t, _ in curves], axis=0)
                accuracy = np.nanmean([a[:length] for _, a in curves], axis=0)
                thick = strategy == "dstar" or strategy.startswith("dstar (")
                axes.plot(
                    times,
                    accuracy,
                    color=colours[strategy],
                    linewidth=2.8 if thick else 1.5,
                    label=strategy,
                    zorder=3 if thick else 2,
                )
        axes.set_title(f"attack: {attack}")
        axes.set_xlabel("wall-clock seconds")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    grid[0, 0].set_ylabel("test accuracy (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _time_curve(row: Row) -> tuple[np.ndarray, np.ndarray]:
    seconds = np.asarray(row.get("round-seconds") or [], dtype=float)
    accuracy = 100.0 * np.asarray(row.get("accuracy-per-round") or [], dtype=float)
    length = min(len(seconds), len(accuracy))
    return np.cumsum(seconds[:length]), accuracy[:length]


def write_figures(rows: Sequence[Row], figures: Path) -> list[str]:
    """Write every figure the rows allow into ``figures``; return the file names written."""
    figures.mkdir(parents=True, exist_ok=True)
    grid = [r for r in rows if not r.get("stragglers")]
    slow = [r for r in rows if r.get("stragglers") and r.get("status") == "ok"]
    index = index_rows(grid)
    present = {k[:2] for k in index.accuracy}
    written = []
    if index.accuracy:
        for fraction in HEATMAP_FRACTIONS:
            if HEADLINE in present:
                plot_heatmap(index, HEADLINE, fraction, figures / heatmap_name(HEADLINE, fraction))
                written.append(heatmap_name(HEADLINE, fraction))
            plot_heatmap_grid(index, fraction, figures / heatmap_name(None, fraction))
            written.append(heatmap_name(None, fraction))
    for setting in CURVE_SETTINGS:
        if setting in present:
            plot_accuracy_vs_fraction(index, setting, figures / curve_name(setting))
            written.append(curve_name(setting))
    if slow:
        plot_straggler_accuracy(slow, figures / STRAGGLER_FIGURE)
        written.append(STRAGGLER_FIGURE)
    return written


# --------------------------------------------------------------------------- the report file


def replace_marked_block(text: str, body: str) -> str:
    """Put ``body`` between the markers in ``text``; append a marked section when there are none.

    Everything outside the markers stays as it is, so the result of a second
    call with the same body is the same text.

    Raises
    ------
    ValueError
        When only one marker is present, or the end marker comes first.
    """
    inner = "\n" + body.strip("\n") + "\n"
    begin, end = text.find(BEGIN), text.find(END)
    if begin == -1 and end == -1:
        prefix = text.rstrip("\n") + "\n\n" if text.strip() else ""
        return f"{prefix}{SECTION_HEADING}\n\n{BEGIN}{inner}{END}\n"
    if begin == -1 or end == -1 or end < begin:
        raise ValueError(f"malformed attack-grid markers: need {BEGIN} before {END}")
    return text[: begin + len(BEGIN)] + inner + text[end:]


def write_report(rows: list[dict], report: Path, *, figures: Path) -> None:
    """Write the figures into ``figures`` and the markdown between the markers in ``report``.

    Parameters
    ----------
    rows
        The grid's rows (:func:`simulations.benchmarks.attack_grid.collect_rows`).
    report
        The markdown file; created when missing, text outside the markers kept.
    figures
        The folder for the PNG figures (linked relative to the report).
    """
    report = Path(report)
    names = write_figures(rows, Path(figures))
    link_dir = Path(os.path.relpath(Path(figures).resolve(), report.resolve().parent)).as_posix()
    body = build_markdown(rows, names, figure_dir=link_dir)
    text = report.read_text() if report.exists() else ""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(replace_marked_block(text, body))

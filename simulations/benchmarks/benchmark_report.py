"""The benchmark grid's markdown report: tables and matplotlib figures from the rows."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

Row = dict[str, object]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; floats with 3 decimals, NaN as '—'."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "—" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_over_seeds(rows: Sequence[Row], key: str) -> float:
    values = [float(r[key]) for r in rows if isinstance(r[key], float | int)]  # type: ignore[arg-type]
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else math.nan


def _group(rows: Sequence[Row], *keys: str) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def _ordered(values: set) -> list:
    return sorted(values, key=str)


def accuracy_tables(rows: Sequence[Row]) -> str:
    """Final accuracy per strategy and attack, with the drop from no attack."""
    sections = []
    by_setting = _group(rows, "dataset", "stragglers", "threat-model", "byzantine-nodes")
    baseline_groups = _group(
        [r for r in rows if r["byzantine-nodes"] == 0], "dataset", "stragglers", "strategy"
    )
    for (dataset, stragglers, threat, byzantine), group in sorted(by_setting.items(), key=str):
        if byzantine == 0:
            continue
        strategies = _ordered({r["strategy"] for r in group})
        attacks = _ordered({r["attack"] for r in group})
        cells = _group(group, "strategy", "attack")
        table_rows = []
        for strategy in strategies:
            clean = baseline_groups.get((dataset, stragglers, strategy), [])
            clean_accuracy = _mean_over_seeds(clean, "final-accuracy") if clean else math.nan
            accuracies = [
                _mean_over_seeds(cells.get((strategy, a), []), "final-accuracy") for a in attacks
            ]
            worst = min((a for a in accuracies if math.isfinite(a)), default=math.nan)
            table_rows.append([strategy, clean_accuracy, *accuracies, clean_accuracy - worst])
        sections.append(
            f"**{dataset}, {byzantine} Byzantine nodes, {threat} threat model, "
            f"{stragglers} straggler nodes.** Final test accuracy (mean over seeds); the last "
            "column is the largest drop from the no-attack run.\n\n"
            + markdown_table(["strategy", "no attack", *attacks, "worst drop"], table_rows)
        )
    return "\n\n".join(sections)


def diagnostics_table(rows: Sequence[Row]) -> str:
    """Resilience diagnostics and DStar's filter rates, per strategy and attack."""
    attacked = [r for r in rows if r["byzantine-nodes"]]
    groups = _group(attacked, "strategy", "attack")
    table_rows = [
        [
            strategy,
            attack,
            _mean_over_seeds(group, "mean-cosine"),
            _mean_over_seeds(group, "min-rho"),
            _mean_over_seeds(group, "byzantine-rejection-rate"),
            _mean_over_seeds(group, "honest-rejection-rate"),
        ]
        for (strategy, attack), group in sorted(groups.items(), key=str)
    ]
    return markdown_table(
        [
            "strategy",
            "attack",
            "mean cos(F, honest mean)",
            "min ρ",
            "Byzantine rejected",
            "honest rejected",
        ],
        table_rows,
    )


def round_time_table(rows: Sequence[Row]) -> str:
    """Mean training-round seconds per strategy and straggler setting."""
    groups = _group(rows, "strategy", "stragglers")
    table_rows = [
        [
            strategy,
            stragglers,
            _mean_over_seeds(group, "mean-round-seconds"),
            _mean_over_seeds(group, "mean-round-seconds-2.."),
        ]
        for (strategy, stragglers), group in sorted(groups.items(), key=str)
    ]
    return markdown_table(
        ["strategy", "straggler nodes", "mean round s", "mean round s, rounds 2.."], table_rows
    )


def plot_accuracy_per_round(rows: Sequence[Row], path: Path) -> None:
    """One panel per attack: test accuracy per round, a line per strategy."""
    attacked = [r for r in rows if r["byzantine-nodes"]]
    attacks = _ordered({r["attack"] for r in attacked})
    if not attacks:
        return
    figure, axes = plt.subplots(
        1, len(attacks), figsize=(4 * len(attacks), 3.2), squeeze=False, sharey=True
    )
    for axis, attack in zip(axes[0], attacks, strict=True):
        for (strategy,), group in sorted(
            _group([r for r in attacked if r["attack"] == attack], "strategy").items()
        ):
            curves = [r["accuracy-per-round"] for r in group]
            length = min(len(c) for c in curves)  # type: ignore[arg-type]
            curve = [
                _finite_mean(float(c[i]) for c in curves)  # type: ignore[index]
                for i in range(length)
            ]
            axis.plot(range(1, length + 1), curve, marker="o", markersize=3, label=strategy)
        axis.set_title(attack)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_accuracy_vs_fraction(rows: Sequence[Row], path: Path) -> bool:
    """Final accuracy against the number of Byzantine nodes, a panel per attack."""
    attacks = _ordered({r["attack"] for r in rows if r["byzantine-nodes"]})
    levels = {r["byzantine-nodes"] for r in rows}
    if len(levels) < 2 or not attacks:
        return False
    figure, axes = plt.subplots(
        1, len(attacks), figsize=(4 * len(attacks), 3.2), squeeze=False, sharey=True
    )
    for axis, attack in zip(axes[0], attacks, strict=True):
        for (strategy,), group in sorted(_group(rows, "strategy").items()):
            points = []
            for (byzantine,), cell in sorted(_group(group, "byzantine-nodes").items()):
                if byzantine and not any(r["attack"] == attack for r in cell):
                    continue
                chosen = [r for r in cell if not byzantine or r["attack"] == attack]
                points.append((byzantine, _mean_over_seeds(chosen, "final-accuracy")))
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=strategy)
        axis.set_title(attack)
        axis.set_xlabel("Byzantine nodes")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_round_time(rows: Sequence[Row], path: Path) -> None:
    """Mean round seconds per strategy (rounds 2..), one bar per straggler setting."""
    groups = _group(rows, "strategy", "stragglers")
    strategies = _ordered({k[0] for k in groups})
    settings = _ordered({k[1] for k in groups})
    figure, axis = plt.subplots(figsize=(1.2 * len(strategies) + 2, 3.2))
    width = 0.8 / max(1, len(settings))
    for index, setting in enumerate(settings):
        heights = [
            _mean_over_seeds(groups.get((s, setting), []), "mean-round-seconds-2..")
            for s in strategies
        ]
        positions = [i + index * width for i in range(len(strategies))]
        axis.bar(positions, heights, width=width, label=f"{setting} straggler nodes")
    axis.set_xticks([i + width * (len(settings) - 1) / 2 for i in range(len(strategies))])
    axis.set_xticklabels(strategies, rotation=20)
    axis.set_ylabel("mean round seconds (rounds 2..)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _finite_mean(values: object) -> float:
    finite = [v for v in values if math.isfinite(v)]  # type: ignore[attr-defined]
    return mean(finite) if finite else math.nan


def write_report(rows: Sequence[Row], path: Path, *, command: str, machine: str) -> None:
    """Write the markdown report and its figures (in ``<report dir>/figures``)."""
    figures = path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    per_round = figures / f"{stem}-accuracy-per-round.png"
    vs_fraction = figures / f"{stem}-accuracy-vs-byzantine.png"
    round_time = figures / f"{stem}-round-time.png"
    plot_accuracy_per_round(rows, per_round)
    has_fraction_plot = plot_accuracy_vs_fraction(rows, vs_fraction)
    plot_round_time(rows, round_time)
    seeds = sorted({r["seed"] for r in rows}, key=str)
    parts = [
        "# Benchmark grid",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} ({machine}); "
        f"{len(rows)} runs, seeds {seeds}. Each run is one simulation on Flower's engine; "
        "rerunning the command skips finished runs.",
        "",
        "## Accuracy under attack",
        "",
        accuracy_tables(rows),
        "",
        f"![accuracy per round](figures/{per_round.name})",
    ]
    if has_fraction_plot:
        parts += ["", f"![accuracy against Byzantine nodes](figures/{vs_fraction.name})"]
    parts += [
        "",
        "## Resilience diagnostics",
        "",
        "Per round, F is the applied update and g_H the mean of the honest replies the rule "
        "received; cos and ρ = ⟨F, g_H⟩/‖g_H‖² (mean and minimum over rounds). "
        "(α, f)-resilience asks ⟨E F, g⟩ > 0: a negative ρ means the step went against "
        "the honest direction.",
        "",
        diagnostics_table(rows),
        "",
        "## Round time",
        "",
        round_time_table(rows),
        "",
        f"![round time](figures/{round_time.name})",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")

"""Standalone robustness of aggregation rules: Gaussian updates, every attack, exact metrics.

The federated benchmark measures accuracy after training; this measures the rule
itself, where the honest mean is known exactly. Per trial:

- the true mean ``mu = snr * sigma * g`` (``g`` standard normal, drawn per trial),
  so that ``|mu_j| / sigma`` is ``snr`` in root mean square: the per-coordinate
  signal-to-noise ratio;
- ``k - f`` honest updates and the server's validation update, i.i.d.
  ``N(mu, sigma^2 I)`` in ``d`` dimensions (``sigma = 1``);
- ``f`` Byzantine updates from an attack that sees every honest update of the
  round (the omniscient threat model), first among the k (first-k keeps them);
- each rule aggregates the k updates (told the true ``f``) and is scored by the
  cosine between its aggregate and the honest mean.

Attacks: every vector attack of ``clients.attack_vectors`` at the parameters in
:data:`FIXED_ATTACKS`, the rule-tailored attack of ``clients.tailored`` against the
rule under test (acceptance-based, every direction), and a rule-aware search
(:func:`rule_aware_attack`): f identical vectors ``mu_hat - gamma * p`` where the
attacker simulates the rule on the honest updates it knows and picks the direction
and the ``gamma`` with the lowest cosine. For rules that use the server's
validation update the attacker cannot see it and draws surrogates
``N(mu_hat, sigma_hat^2)``. The worst attack per rule is the one with the lowest
mean cosine over the trials.

With no attack (all k honest, the rule still told ``f``) the squared error
``||F - mu||^2`` is compared with the plain mean's.

Run ``python -m simulations.benchmarks.robustness`` (about 10 minutes on 2 cores) or
``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from clients import tailored
from clients.attack_vectors import (
    AttackContext,
    AttackParams,
    apply_vector_attack,
    get_vector_attack,
)
from simulations.benchmarks.reference_rules import REFERENCE_RULES, Rule

# name -> (attack, AttackParams keywords): every vector attack at its usual settings
# and the settings the literature uses to break rules (IPM 100, ALIE z = 1.5).
FIXED_ATTACKS: dict[str, tuple[str, dict[str, object]]] = {
    "sign-flip": ("sign-flip", {"attack_scale": 1.0}),
    "sign-flip-x10": ("sign-flip", {"attack_scale": 10.0}),
    "gaussian": ("gaussian", {"attack_scale": 1.0}),
    "gaussian-scaled": ("gaussian", {"attack_scale": 1.0, "gaussian_mode": "scaled"}),
    "alie": ("alie", {}),
    "alie-z1.5": ("alie", {"alie_z": 1.5}),
    "ipm-0.1": ("ipm", {"ipm_epsilon": 0.1}),
    "ipm-100": ("ipm", {"ipm_epsilon": 100.0}),
    "mimic": ("mimic", {}),
    **{
        f"{search}-{direction}": (search, {"min_max_direction": direction})
        for search in ("min-max", "min-sum")
        for direction in ("unit", "sign", "std")
    },
}
DIRECTIONS: tuple[str, ...] = ("unit", "sign", "std", "orthogonal")
DEFAULT_RULES: tuple[str, ...] = (
    "dstar",
    "dstar-paper",
    "dstar-no-validation",
    "mean",
    "median",
    "trimmed-mean",
    "krum",
    "multikrum",
    "bulyan",
    "fltrust",
    "geometric-median",
    "nnm-trimmed-mean",
)


@dataclass(frozen=True)
class Setting:
    """One cell of the study: signal-to-noise ratio, k and f."""

    snr: float
    num_updates: int
    num_byzantine: int

    @property
    def fraction(self) -> float:
        """f / k."""
        return self.num_byzantine / self.num_updates


@dataclass(frozen=True)
class Outcome:
    """One rule under one attack in one setting: mean and minimum over the trials."""

    rule: str
    attack: str
    snr: float
    num_updates: int
    num_byzantine: int
    mean_cosine: float
    min_cosine: float
    squared_error_ratio: float  # against the plain mean's, no-attack rows only


def cosine(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Cosine similarity (0 when either vector is zero)."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else 0.0


def unit_direction(
    honest: NDArray[np.float64], direction: str, rng: np.random.Generator
) -> NDArray:
    """A unit perturbation direction ``p`` from the honest updates.

    ``unit``: the honest mean's direction; ``sign``: its sign vector; ``std``: the
    coordinate-wise standard deviation; ``orthogonal``: a random direction
    orthogonal to the honest mean (the one that turns the aggregate most per
    unit of length).
    """
    mean = honest.mean(axis=0)
    if direction == "unit":
        vector = mean
    elif direction == "sign":
        vector = np.sign(mean)
    elif direction == "std":
        vector = honest.std(axis=0)
    elif direction == "orthogonal":
        vector = rng.standard_normal(mean.shape)
        norm = float(np.dot(mean, mean))
        if norm > 0:
            vector -= (np.dot(vector, mean) / norm) * mean
    else:
        raise ValueError(f"unknown direction {direction!r}; choose from {DIRECTIONS}")
    length = float(np.linalg.norm(vector))
    return vector / length if length > 0 else vector


def surrogate_validations(
    honest: NDArray[np.float64], count: int, rng: np.random.Generator
) -> list[NDArray[np.float64]]:
    """Validation updates an attacker can draw: ``N(mu_hat, sigma_hat^2)``."""
    mean, std = honest.mean(axis=0), honest.std(axis=0)
    return [mean + std * rng.standard_normal(mean.shape) for _ in range(count)]


def rule_aware_attack(
    honest: NDArray[np.float64],
    num_byzantine: int,
    rule: Rule,
    rng: np.random.Generator,
    *,
    directions: Sequence[str] = DIRECTIONS,
    gammas: Iterable[float] = tuple(np.geomspace(0.02, 50.0, 36)),
    num_surrogates: int = 3,
) -> NDArray[np.float64]:
    """f identical vectors ``mu_hat - gamma * ||sigma_hat|| * p`` with the lowest simulated cosine.

    The attacker runs ``rule`` on its f candidates plus the honest updates, with
    surrogate validation updates, for every direction and ``gamma`` (in units of
    the honest spread ``||sigma_hat||``), and keeps the candidate whose mean
    cosine to ``mu_hat`` over the surrogates is lowest.

    Returns
    -------
    NDArray
        Shape ``(f, d)``.
    """
    mean = honest.mean(axis=0)
    radius = float(np.linalg.norm(honest.std(axis=0)))
    surrogates = surrogate_validations(honest, num_surrogates, rng)
    best, best_cosine = mean, math.inf
    for direction in directions:
        step = unit_direction(honest, direction, rng)
        for gamma in gammas:
            candidate = mean - gamma * radius * step
            stack = np.vstack([np.tile(candidate, (num_byzantine, 1)), honest])
            score = float(
                np.mean([cosine(rule(stack, num_byzantine, v), mean) for v in surrogates])
            )
            if score < best_cosine:
                best, best_cosine = candidate, score
    return np.tile(best, (num_byzantine, 1))


def fixed_attack(
    name: str, honest: NDArray[np.float64], setting: Setting, rng: np.random.Generator
) -> NDArray[np.float64]:
    """f Byzantine vectors from one of :data:`FIXED_ATTACKS` (one call per node)."""
    attack_name, keywords = FIXED_ATTACKS[name]
    params = AttackParams(attacks=(attack_name,), threat_model="omniscient", **keywords)
    context = AttackContext(
        num_nodes=setting.num_updates,
        num_byzantine=setting.num_byzantine,
        rng=rng,
        params=params,
    )
    attack = get_vector_attack(attack_name)
    return np.stack(
        [apply_vector_attack(attack, honest, context) for _ in range(setting.num_byzantine)]
    ).astype(np.float64)


def tailored_attack_vectors(
    rule_name: str, honest: NDArray[np.float64], setting: Setting, rng: np.random.Generator
) -> dict[str, NDArray[np.float64]]:
    """``clients.tailored``'s attack against ``rule_name``, one entry per direction.

    Empty when the rule has no tailored attack, or cannot run in this setting.
    """
    target = TAILORED_TARGETS.get(rule_name)
    if target is None:
        return {}
    rule_name_there, rule_kwargs = target
    vectors = {}
    for direction in ("unit", "sign", "std"):
        try:
            vector = tailored.tailored_attack(
                honest,
                setting.num_byzantine,
                rule_name_there,
                direction,
                seed=int(rng.integers(2**31)),
                **rule_kwargs,
            )
        except ValueError:  # the rule cannot run here (Bulyan needs k >= 4f + 3)
            return {}
        vectors[f"tailored-{direction}"] = np.tile(vector, (setting.num_byzantine, 1))
    return vectors


# rule name here -> (rule name in clients.tailored, its keyword arguments)
TAILORED_TARGETS: dict[str, tuple[str, dict[str, object]]] = {
    "dstar": ("dstar", {}),
    "dstar-paper": ("dstar", {"variant": "paper"}),
    "median": ("fedmedian", {}),
    "trimmed-mean": ("fedtrimmedavg", {}),
    "krum": ("krum", {}),
    "multikrum": ("multikrum", {}),
    "bulyan": ("bulyan", {}),
    "fltrust": ("fltrust", {}),
}


def run_setting(
    setting: Setting,
    rules: dict[str, Rule],
    *,
    dimension: int,
    trials: int,
    seed: int,
    attacks: Sequence[str],
    rule_aware: bool,
) -> list[Outcome]:
    """Every rule under every attack (and none) in one setting, over ``trials`` draws."""
    cosines: dict[tuple[str, str], list[float]] = {}
    errors: dict[str, list[float]] = {name: [] for name in rules}
    baseline_errors: list[float] = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, trial, setting.num_updates, setting.num_byzantine])
        true_mean = setting.snr * rng.standard_normal(dimension)
        num_honest = setting.num_updates - setting.num_byzantine
        everyone = true_mean + rng.standard_normal((setting.num_updates, dimension))
        validation = true_mean + rng.standard_normal(dimension)
        honest = everyone[:num_honest]
        honest_mean = honest.mean(axis=0)

        # No attack: all k updates honest.
        baseline_errors.append(float(np.sum((everyone.mean(axis=0) - true_mean) ** 2)))
        for name, rule in rules.items():
            aggregate = rule(everyone, setting.num_byzantine, validation)
            if not np.all(np.isfinite(aggregate)):
                continue  # the rule cannot run here (Bulyan below k = 4f + 3)
            errors[name].append(float(np.sum((aggregate - true_mean) ** 2)))
            cosines.setdefault((name, "none"), []).append(cosine(aggregate, everyone.mean(axis=0)))
        if setting.num_byzantine == 0:
            continue

        shared = {name: fixed_attack(name, honest, setting, rng) for name in attacks}
        for name, rule in rules.items():
            own = dict(shared)
            if rule_aware:
                own["rule-aware"] = rule_aware_attack(honest, setting.num_byzantine, rule, rng)
                own.update(tailored_attack_vectors(name, honest, setting, rng))
            for attack_name, byzantine in own.items():
                stack = np.vstack([byzantine, honest])
                aggregate = rule(stack, setting.num_byzantine, validation)
                if not np.all(np.isfinite(aggregate)):
                    continue
                cosines.setdefault((name, attack_name), []).append(cosine(aggregate, honest_mean))

    baseline = float(np.mean(baseline_errors))
    outcomes = []
    for (rule_name, attack_name), values in cosines.items():
        if not errors[rule_name]:
            continue
        outcomes.append(
            Outcome(
                rule=rule_name,
                attack=attack_name,
                snr=setting.snr,
                num_updates=setting.num_updates,
                num_byzantine=setting.num_byzantine,
                mean_cosine=float(np.mean(values)),
                min_cosine=float(np.min(values)),
                squared_error_ratio=(
                    float(np.mean(errors[rule_name])) / baseline
                    if attack_name == "none"
                    else math.nan
                ),
            )
        )
    return outcomes


def worst_cases(outcomes: Sequence[Outcome]) -> dict[tuple[str, float, int, int], Outcome]:
    """Per (rule, snr, k, f): the attack with the lowest mean cosine."""
    worst: dict[tuple[str, float, int, int], Outcome] = {}
    for outcome in outcomes:
        if outcome.attack == "none":
            continue
        key = (outcome.rule, outcome.snr, outcome.num_updates, outcome.num_byzantine)
        if key not in worst or outcome.mean_cosine < worst[key].mean_cosine:
            worst[key] = outcome
    return worst


def markdown_tables(outcomes: Sequence[Outcome], rules: Sequence[str]) -> str:
    """The worst-case cosine table per SNR and k, and the no-attack error ratios."""
    worst = worst_cases(outcomes)
    lines: list[str] = []
    cells = sorted({(o.snr, o.num_updates) for o in outcomes}, key=lambda c: (-c[0], c[1]))
    for snr, num_updates in cells:
        byzantine = sorted(
            {o.num_byzantine for o in outcomes if (o.snr, o.num_updates) == (snr, num_updates)}
            - {0}
        )
        lines.append(
            f"\nWorst-case cosine to the honest mean (mean over trials; worst attack), "
            f"SNR {snr:g}, k = {num_updates}:\n"
        )
        lines.append(
            "| rule | "
            + " | ".join(f"f/k = {f / num_updates:.2f} (f={f})" for f in byzantine)
            + " | no attack: error / mean's |"
        )
        lines.append("|---|" + "---|" * (len(byzantine) + 1))
        for rule in rules:
            row = [rule]
            for f in byzantine:
                outcome = worst.get((rule, snr, num_updates, f))
                row.append(
                    "skips" if outcome is None else f"{outcome.mean_cosine:.3f} ({outcome.attack})"
                )
            ratios = [
                o.squared_error_ratio
                for o in outcomes
                if o.rule == rule
                and o.attack == "none"
                and (o.snr, o.num_updates) == (snr, num_updates)
                and o.num_byzantine > 0
            ]
            row.append(f"{max(ratios):.3f} (worst f)" if ratios else "-")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.benchmarks.robustness", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rules", nargs="+", default=list(DEFAULT_RULES), choices=list(REFERENCE_RULES)
    )
    parser.add_argument(
        "--attacks", nargs="+", default=list(FIXED_ATTACKS), choices=list(FIXED_ATTACKS)
    )
    parser.add_argument("--snr", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--k", nargs="+", type=int, default=[20], dest="num_updates")
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=[0.1, 0.2, 0.3, 0.4, 0.45],
        help="f/k; f = round(fraction * k), kept only when k >= 2f + 1",
    )
    parser.add_argument("--dimension", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rule-aware", action="store_true", help="skip the rule-aware searches")
    parser.add_argument("--quick", action="store_true", help="k = 10, d = 200, 2 trials, SNR 1")
    parser.add_argument("--out", type=Path, default=None, help="write the outcomes as JSON here")
    return parser


def settings_for(
    snrs: Sequence[float], ks: Sequence[int], fractions: Sequence[float]
) -> list[Setting]:
    """The grid of settings; f rounds to nearest, cells with k < 2f + 1 are dropped."""
    cells = []
    for snr in snrs:
        for k in ks:
            counts = sorted({round(fraction * k) for fraction in fractions})
            cells.extend(Setting(snr, k, f) for f in counts if f > 0 and k >= 2 * f + 1)
    return cells


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Run the study and print its tables."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.num_updates, args.dimension, args.trials, args.snr = [10], 200, 2, [1.0]
    rules = {name: REFERENCE_RULES[name] for name in args.rules}
    settings = settings_for(args.snr, args.num_updates, args.fractions)
    outcomes: list[Outcome] = []
    for setting in tqdm(settings, desc="settings", unit="cell"):
        outcomes.extend(
            run_setting(
                setting,
                rules,
                dimension=args.dimension,
                trials=args.trials,
                seed=args.seed,
                attacks=args.attacks,
                rule_aware=not args.no_rule_aware,
            )
        )
    echo(
        f"d = {args.dimension}, {args.trials} trials per cell, seed {args.seed}, "
        f"attacks: {', '.join(args.attacks)}"
        + ("" if args.no_rule_aware else ", rule-aware, tailored")
    )
    echo(markdown_tables(outcomes, list(rules)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return outcomes


if __name__ == "__main__":
    main()

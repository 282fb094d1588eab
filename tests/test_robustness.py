"""The standalone robustness study: its attacks, its table and its command line."""

import json
from pathlib import Path

import numpy as np
import pytest

from simulations.benchmarks.reference_rules import REFERENCE_RULES
from simulations.benchmarks.robustness import (
    Setting,
    cosine,
    main,
    rule_aware_attack,
    run_setting,
    settings_for,
    unit_direction,
    worst_cases,
)


def test_settings_keep_k_at_least_2f_plus_1() -> None:
    cells = settings_for([1.0], [10, 20], [0.1, 0.4, 0.45, 0.5])
    assert {(c.num_updates, c.num_byzantine) for c in cells} == {
        (10, 1),
        (10, 4),
        (20, 2),
        (20, 8),
        (20, 9),
    }


@pytest.mark.parametrize("direction", ["unit", "sign", "std", "orthogonal"])
def test_directions_are_unit_vectors(direction: str) -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(1.0, 1.0, size=(6, 40))
    step = unit_direction(honest, direction, rng)
    assert np.linalg.norm(step) == pytest.approx(1.0)
    if direction == "orthogonal":
        assert abs(np.dot(step, honest.mean(axis=0))) < 1e-9


def test_rule_aware_attack_beats_the_mean_and_is_no_worse_than_the_fixed_grid() -> None:
    rng = np.random.default_rng(1)
    honest = rng.normal(1.0, 1.0, size=(8, 100))
    attack = rule_aware_attack(honest, 2, REFERENCE_RULES["mean"], rng)
    assert attack.shape == (2, 100)
    aggregate = REFERENCE_RULES["mean"](np.vstack([attack, honest]), 2, None)
    assert cosine(aggregate, honest.mean(axis=0)) < -0.9


def test_one_setting_scores_every_rule_under_every_attack() -> None:
    rules = {name: REFERENCE_RULES[name] for name in ("dstar", "mean", "median", "bulyan")}
    outcomes = run_setting(
        Setting(1.0, 10, 3),
        rules,
        dimension=200,
        trials=2,
        seed=0,
        attacks=["sign-flip-x10", "alie"],
        rule_aware=True,
    )
    worst = worst_cases(outcomes)
    # The mean is reversed by the scaled sign flip; the anchored filter holds.
    assert worst[("mean", 1.0, 10, 3)].mean_cosine < -0.5
    assert worst[("dstar", 1.0, 10, 3)].mean_cosine > 0.8
    attacks = {o.attack for o in outcomes if o.rule == "dstar"}
    assert {"none", "sign-flip-x10", "alie", "rule-aware", "tailored-unit"} <= attacks
    # Bulyan cannot run at k = 10, f = 3 (k < 4f + 3): reported as skipped, not scored.
    assert ("bulyan", 1.0, 10, 3) not in worst
    none = {o.rule: o for o in outcomes if o.attack == "none"}
    assert none["mean"].squared_error_ratio == pytest.approx(1.0)
    assert none["median"].squared_error_ratio > 1.2


def test_command_line_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "robustness.json"
    main(
        [
            "--rules",
            "dstar",
            "median",
            "--attacks",
            "sign-flip",
            "ipm-100",
            "--k",
            "7",
            "--fractions",
            "0.3",
            "--snr",
            "1",
            "--dimension",
            "50",
            "--trials",
            "1",
            "--out",
            str(out),
        ],
        echo=lines.append,
    )
    text = "\n".join(lines)
    assert "f/k = 0.29 (f=2)" in text and "| dstar |" in text and "| median |" in text
    rows = json.loads(out.read_text())
    assert {row["rule"] for row in rows} == {"dstar", "median"}

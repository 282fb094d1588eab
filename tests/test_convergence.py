"""The convergence study on L2-regularised least squares (simulations.benchmarks.convergence)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from simulations.benchmarks.convergence import (
    RunConfig,
    fit_rate,
    main,
    make_problem,
    resolve_attack,
    run,
    summarise,
    verdict,
)

CONFIG = RunConfig(num_workers=20, num_byzantine=4, iterations=150, seed=0)


@pytest.fixture(scope="module")
def problem():
    return make_problem(num_honest=CONFIG.num_workers - CONFIG.num_byzantine, seed=CONFIG.seed)


@pytest.fixture(scope="module")
def clean_floor(problem) -> float:
    trace = run(problem, resolve_attack("none"), "fedavg", CONFIG)
    return fit_rate(trace.distances).floor


def test_exact_optimum_has_zero_gradient(problem) -> None:
    gradient = problem.full_gradient(problem.x_star)
    assert np.linalg.norm(gradient) < 1e-10
    # and it is the minimum: any step away increases the objective
    rng = np.random.default_rng(1)
    best = problem.objective(problem.x_star)
    for _ in range(5):
        assert problem.objective(problem.x_star + 1e-3 * rng.normal(size=problem.dim)) > best


def test_stochastic_updates_are_unbiased_sgd_steps(problem) -> None:
    x = problem.x_star + 1.0
    rng = np.random.default_rng(2)
    mean = np.mean([problem.honest_updates(x, rng, 10, 0.3).mean(axis=0) for _ in range(2000)], 0)
    expected = -0.3 * problem.full_gradient(x)
    assert np.linalg.norm(mean - expected) < 0.05 * np.linalg.norm(expected)


@pytest.mark.parametrize("aggregator", ["dstar", "fedavg"])
def test_without_byzantine_both_converge_linearly(problem, clean_floor, aggregator) -> None:
    trace = run(problem, resolve_attack("none"), aggregator, CONFIG)
    row = summarise(trace, clean_floor)
    assert row["verdict"] == "converges"
    assert 0.0 < row["rate"] < 1.0
    # no slower than full-gradient descent's contraction (plus slack for the noise)
    assert row["rate"] < problem.gd_contraction(CONFIG.lr) + 0.05
    assert row["transient_iterations"] >= 10
    # the floor is far below the start: the geometric phase covers > 2 decades
    assert row["floor"] < row["start"] / 100


@pytest.mark.parametrize("attack", ["ipm-100", "sign-flip-10"])
def test_strong_attack_dstar_far_below_fedavg(problem, clean_floor, attack) -> None:
    spec = resolve_attack(attack)
    dstar = summarise(run(problem, spec, "dstar", CONFIG), clean_floor)
    fedavg = summarise(run(problem, spec, "fedavg", CONFIG), clean_floor)
    assert dstar["verdict"] == "converges"
    assert dstar["rate"] < 1.0
    assert fedavg["verdict"] == "diverges"
    assert fedavg["rate"] > 1.0
    assert dstar["floor"] <= 2 * clean_floor
    assert dstar["final"] < dstar["start"] / 50
    assert not math.isfinite(fedavg["final"]) or fedavg["final"] > 100 * dstar["final"]
    # Near the optimum the honest mean is far smaller than the gradient noise, and
    # -10x it lies inside the honest band around v: accepted there, and harmless
    # (the floor above is within 2x the clean one). IPM x100 is never inside it.
    assert dstar["byzantine_accepted"] < (0.1 if attack == "ipm-100" else 0.4)


def test_non_finite_attack_breaks_fedavg_only(problem, clean_floor) -> None:
    spec = resolve_attack("non-finite")
    fedavg = run(problem, spec, "fedavg", RunConfig(iterations=20))
    assert fedavg.diverged and fedavg.non_finite and fedavg.stopped_at == 1
    dstar = summarise(run(problem, spec, "dstar", CONFIG), clean_floor)
    assert dstar["verdict"] == "converges"


def test_first_k_random_arrival(problem, clean_floor) -> None:
    config = RunConfig(iterations=150, first_k=16)
    row = summarise(run(problem, resolve_attack("ipm-100"), "dstar", config), clean_floor)
    assert row["verdict"] == "converges"


def test_fit_recovers_a_known_rate() -> None:
    times = np.arange(200)
    distances = np.maximum(100 * 0.9**times, 0.01)
    fit = fit_rate(distances)
    assert fit.rate == pytest.approx(0.9, rel=1e-6)
    assert fit.floor == pytest.approx(0.01)
    growth = fit_rate(np.array([1.0, 2.0, 4.0, 8.0, np.nan]), diverged=True)
    assert growth.rate == pytest.approx(2.0)


def test_verdicts() -> None:
    fit = fit_rate(np.maximum(100 * 0.9 ** np.arange(100), 0.5))
    assert verdict(fit, 100.0, 0.5, False) == "converges"
    assert verdict(fit, 100.0, 0.2, False) == "raised floor"
    assert verdict(fit, 100.0, 0.01, False) == "stalls"
    assert verdict(fit, 100.0, 0.5, True) == "diverges"


def test_attack_labels() -> None:
    assert resolve_attack("ipm-100").params.ipm_epsilon == 100
    assert resolve_attack("gaussian:attack_scale=5").params.attack_scale == 5.0
    with pytest.raises(ValueError, match="unknown attack"):
        resolve_attack("nope")
    with pytest.raises(ValueError, match="field=value"):
        resolve_attack("ipm:epsilon=3")


def test_cli_quick_writes_outputs(tmp_path, capsys) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("convergence.csv", "convergence_traces.csv", "convergence.md", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 0
    with (tmp_path / "convergence.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["attack"], r["aggregator"]) for r in rows} == {
        (a, g) for a in ("none", "ipm-100", "alie") for g in ("dstar", "fedavg", "median")
    }
    assert (tmp_path / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| attack |" in (tmp_path / "convergence.md").read_text()
    assert "clean noise floor" in capsys.readouterr().out


def test_cli_rejects_unknown_attack(tmp_path, capsys) -> None:
    assert main(["--attacks", "bogus", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "unknown attack" in capsys.readouterr().err

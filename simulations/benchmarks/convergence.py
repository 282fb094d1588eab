"""Convergence of DStar vs FedAvg on a strongly convex problem with a known optimum.

The problem (pure NumPy, no Flower) is L2-regularised least squares over the
``H = N - f`` honest workers::

    F(x) = (1/H) sum_i (1 / (2m)) ||A_i x - b_i||^2 + (lambda / 2) ||x||^2

Worker ``i`` holds ``m`` rows ``A_i`` (features ``z * s``, ``z ~ N(0, I)``, column
scales ``s`` from 0.5 to 1.5, so the problem is not isotropic) and targets
``b_i = A_i (x_true + heterogeneity * zeta_i) + noise * eps`` (each worker has its
own optimum). The optimum is exact: ``x* = (P + lambda I)^-1 q`` with
``P = mean_i A_i^T A_i / m`` and ``q = mean_i A_i^T b_i / m``. ``F`` is
``mu``-strongly convex and ``L``-smooth with ``mu, L`` the extreme eigenvalues of
``P + lambda I``, so plain gradient descent with step ``eta`` contracts by
``max |1 - eta * lambda_j|`` per iteration (printed as ``r_GD``).

Each iteration every honest worker takes one SGD step from ``x_t`` on a
mini-batch of its rows and sends ``u_i = -eta * g_i`` (the project's pseudo-gradient
convention). The ``f`` Byzantine workers send what the project's vector attacks
(``clients.attack_vectors``) compute from all honest updates of the iteration
(omniscient). The server applies ``x_{t+1} = x_t + F(u_1 .. u_n)`` with:

- ``dstar``: ``dstar_flwr.dstar_aggregate`` with ``num_byzantine = f`` and a
  validation update: one SGD step on a mini-batch of a small trusted server set
  drawn from the problem's base distribution (``x_true``, no worker shift);
- ``fedavg``: the plain mean (a NaN/Inf update makes it non-finite: "diverges");
- ``median``: the coordinate-wise median of the finite updates (a reference;
  non-finite updates are dropped first, as ``DropMalformedReplies`` would).

With ``--first-k K < N`` the updates arrive in a random order each iteration and
every aggregator sees only the first K.

Attack ``none`` is the f = 0 baseline: the same H honest workers, no Byzantine
worker, DStar with ``num_byzantine = 0``. Its FedAvg run (plain mini-batch SGD on
the honest workers) sets the *clean noise floor* every verdict is measured against.

Per run we record ``||x_t - x*||`` and resilience diagnostics of the aggregate
``F`` against the honest mean ``g_H`` (the mean of the iteration's honest updates):
``cos(F, g_H)``, ``rho = <F, g_H> / ||g_H||^2`` and ``||F - g_H|| / ||g_H||``.
(alpha, f)-Byzantine resilience asks ``<E F, g> >= (1 - sin alpha) ||g||^2 > 0``,
i.e. ``rho`` bounded away from 0 in expectation.

Fits and verdicts:

- floor: median distance over the last 20% of the iterations;
- rate: ``r = exp(slope)`` of a least-squares line through ``log ||x_t - x*||``
  over the transient (from t = 0 to the first iterate within 2x the run's own
  floor); for a diverging run, over every finite iterate (then r > 1);
- verdict, against the clean floor ``F0``: ``converges`` (floor <= 2 F0),
  ``raised floor`` (2 F0 < floor <= 10 F0), ``stalls`` (floor > 10 F0 and not
  above the starting distance), ``diverges`` (non-finite, blown up, or a floor
  above the starting distance).

Usage::

    python -m simulations.benchmarks.convergence                    # all attacks, 300 iterations
    python -m simulations.benchmarks.convergence --quick --out /tmp/conv
    python -m simulations.benchmarks.convergence --attacks none,ipm-100,gaussian:attack_scale=5

An attack is a preset (see ``PRESETS``), a vector attack name, or
``name:field=value[:field=value]`` with fields of ``clients.attack_vectors.AttackParams``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.attack_vectors import (
    VECTOR_ATTACKS,
    AttackContext,
    AttackParams,
    apply_vector_attack,
    get_vector_attack,
)
from dstar_flwr.aggregation import dstar_aggregate

AGGREGATORS: tuple[str, ...] = ("dstar", "fedavg", "median")
PRESETS: dict[str, str] = {
    "sign-flip-10": "sign-flip:attack_scale=10",
    "gaussian-10": "gaussian:attack_scale=10",
    "ipm-0.1": "ipm:ipm_epsilon=0.1",
    "ipm-100": "ipm:ipm_epsilon=100",
}
DEFAULT_ATTACKS: tuple[str, ...] = (
    "none",
    "sign-flip",
    "sign-flip-10",
    "gaussian",
    "gaussian-10",
    "alie",
    "ipm-0.1",
    "ipm-100",
    "mimic",
    "min-max",
    "min-sum",
    "non-finite",
)
QUICK_ATTACKS: tuple[str, ...] = ("none", "ipm-100", "alie")
BASELINE = "none"
BLOW_UP = 1e12  # a run stops as "diverges" once ||x_t - x*|| > BLOW_UP * ||x_0 - x*||
FLOOR_SHARE = 0.2  # the floor is the median over the last 20% of the iterations
TRANSIENT_FACTOR = 2.0  # the transient ends at the first iterate within 2x the floor
CONVERGED_FACTOR = 2.0
RAISED_FACTOR = 10.0


# --- the problem ---------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """L2-regularised least squares over the honest workers, with its exact optimum.

    Attributes
    ----------
    features : np.ndarray
        ``(H, m, d)``: worker i's rows ``A_i``.
    targets : np.ndarray
        ``(H, m)``: worker i's targets ``b_i``.
    server_features, server_targets : np.ndarray
        The trusted server set, ``(m_v, d)`` and ``(m_v,)``.
    lam : float
        lambda, the L2 weight.
    x_star : np.ndarray
        The exact minimiser of the honest objective.
    hessian : np.ndarray
        ``P + lambda I``, the (constant) Hessian of the objective.
    """

    features: np.ndarray
    targets: np.ndarray
    server_features: np.ndarray
    server_targets: np.ndarray
    lam: float
    x_star: np.ndarray
    hessian: np.ndarray

    @property
    def num_honest(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def full_gradient(self, x: np.ndarray) -> np.ndarray:
        """``grad F(x)``, the exact gradient of the honest objective."""
        residuals = np.einsum("hmd,d->hm", self.features, x) - self.targets
        per_worker = np.einsum("hmd,hm->hd", self.features, residuals) / self.features.shape[1]
        return per_worker.mean(axis=0) + self.lam * x

    def objective(self, x: np.ndarray) -> float:
        residuals = np.einsum("hmd,d->hm", self.features, x) - self.targets
        data = 0.5 * float(np.mean(np.sum(residuals**2, axis=1) / self.features.shape[1]))
        return data + 0.5 * self.lam * float(x @ x)

    def honest_updates(
        self, x: np.ndarray, rng: np.random.Generator, batch_size: int, lr: float
    ) -> np.ndarray:
        """``(H, d)``: each honest worker's ``-lr * g_i``, g_i on a mini-batch of its rows."""
        num_workers, rows, _ = self.features.shape
        index = rng.integers(0, rows, size=(num_workers, batch_size))
        batch = self.features[np.arange(num_workers)[:, None], index]  # (H, B, d)
        residuals = (
            np.einsum("hbd,d->hb", batch, x) - self.targets[np.arange(num_workers)[:, None], index]
        )
        gradients = np.einsum("hbd,hb->hd", batch, residuals) / batch_size + self.lam * x
        return -lr * gradients

    def validation_update(
        self, x: np.ndarray, rng: np.random.Generator, batch_size: int, lr: float
    ) -> np.ndarray:
        """The server's update: one SGD step on a mini-batch of its trusted set."""
        rows = self.server_features.shape[0]
        index = rng.integers(0, rows, size=min(batch_size, rows))
        batch = self.server_features[index]
        residuals = batch @ x - self.server_targets[index]
        return -lr * (batch.T @ residuals / index.size + self.lam * x)

    def gd_contraction(self, lr: float) -> float:
        """``max_j |1 - lr * lambda_j|``: full-gradient descent's contraction factor."""
        eigenvalues = np.linalg.eigvalsh(self.hessian)
        return float(np.max(np.abs(1.0 - lr * eigenvalues)))


# pylint: disable=too-many-arguments,too-many-locals
def make_problem(
    *,
    num_honest: int,
    dim: int = 20,
    rows_per_worker: int = 100,
    server_rows: int = 50,
    lam: float = 0.1,
    heterogeneity: float = 0.5,
    noise: float = 1.0,
    seed: int = 0,
) -> Problem:
    """Draw a least-squares problem and solve it exactly (see the module docstring)."""
    if num_honest < 1:
        raise ValueError(f"need at least one honest worker, got {num_honest}")
    rng = np.random.default_rng([seed, 0])
    scales = np.linspace(0.5, 1.5, dim)
    x_true = rng.normal(size=dim)
    features = rng.normal(size=(num_honest, rows_per_worker, dim)) * scales
    shifts = heterogeneity * rng.normal(size=(num_honest, dim))
    targets = np.einsum("hmd,hd->hm", features, x_true + shifts)
    targets += noise * rng.normal(size=targets.shape)
    server_features = rng.normal(size=(server_rows, dim)) * scales
    server_targets = server_features @ x_true + noise * rng.normal(size=server_rows)

    second_moment = np.einsum("hmd,hme->de", features, features) / (num_honest * rows_per_worker)
    cross = np.einsum("hmd,hm->d", features, targets) / (num_honest * rows_per_worker)
    hessian = second_moment + lam * np.eye(dim)
    x_star = np.linalg.solve(hessian, cross)
    return Problem(
        features=features,
        targets=targets,
        server_features=server_features,
        server_targets=server_targets,
        lam=lam,
        x_star=x_star,
        hessian=hessian,
    )


# --- attacks -------------------------------------------------------------------


@dataclass(frozen=True)
class AttackSpec:
    """An attack label resolved to a vector attack and its parameters."""

    label: str
    name: str
    params: AttackParams

    @property
    def is_baseline(self) -> bool:
        return self.name == BASELINE


def resolve_attack(label: str) -> AttackSpec:
    """``"ipm-100"`` / ``"alie"`` / ``"gaussian:attack_scale=5"`` -> an AttackSpec.

    Raises
    ------
    ValueError
        Unknown attack or parameter; the message lists what is valid.
    """
    text = PRESETS.get(label, label)
    name, *assignments = text.split(":")
    if name not in VECTOR_ATTACKS:
        raise ValueError(
            f"unknown attack {label!r}: use one of {', '.join(DEFAULT_ATTACKS)}, a vector "
            f"attack ({', '.join(VECTOR_ATTACKS)}) or name:field=value"
        )
    fields = {f.name: f for f in dataclasses.fields(AttackParams)}
    overrides: dict[str, object] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields or key in ("attacks", "threat_model"):
            raise ValueError(
                f"attack {label!r}: {assignment!r} is not field=value with a field of "
                f"AttackParams ({', '.join(k for k in fields if k != 'attacks')})"
            )
        default = fields[key].default
        overrides[key] = type(default)(value) if not isinstance(default, str) else value
    params = AttackParams(attacks=(name,), threat_model="omniscient", **overrides)  # type: ignore[arg-type]
    return AttackSpec(label=label, name=name, params=params)


# --- one run -------------------------------------------------------------------


@dataclass
class RunConfig:
    """What every run shares."""

    num_workers: int = 20
    num_byzantine: int = 4
    iterations: int = 300
    lr: float = 0.3
    batch_size: int = 10
    init_distance: float = 100.0
    first_k: int = 0  # 0: all N updates
    seed: int = 0


@dataclass
class Trace:
    """One run's per-iteration record."""

    attack: str
    aggregator: str
    distances: np.ndarray  # (T + 1,), NaN after a blow-up
    cosine: np.ndarray  # (T,) diagnostics, NaN where undefined
    rho: np.ndarray
    rel_error: np.ndarray
    byz_accepted: np.ndarray = field(default_factory=lambda: np.array([]))  # DStar only
    honest_rejected: np.ndarray = field(default_factory=lambda: np.array([]))
    diverged: bool = False
    non_finite: bool = False  # the run stopped on a NaN/Inf iterate
    stopped_at: int | None = None


def _stable_seed(text: str) -> int:
    return zlib.crc32(text.encode())


def initial_point(problem: Problem, config: RunConfig) -> np.ndarray:
    """``x_0 = x* + init_distance * u`` for a fixed random unit vector u."""
    direction = np.random.default_rng([config.seed, 3]).normal(size=problem.dim)
    return problem.x_star + config.init_distance * direction / np.linalg.norm(direction)


def aggregate(
    aggregator: str,
    updates: np.ndarray,
    num_byzantine: int,
    validation: np.ndarray,
) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Apply one aggregator to the ``(k, d)`` updates; DStar also returns the accepted rows."""
    if aggregator == "dstar":
        result = dstar_aggregate(list(updates), num_byzantine=num_byzantine, validation=validation)
        return np.asarray(result.aggregate, dtype=np.float64), result.accepted
    if aggregator == "fedavg":
        with np.errstate(invalid="ignore", over="ignore"):
            return updates.mean(axis=0), None
    if aggregator == "median":
        finite = updates[np.all(np.isfinite(updates), axis=1)]
        if finite.shape[0] == 0:
            return np.zeros(updates.shape[1]), None
        return np.median(finite, axis=0), None
    raise ValueError(f"unknown aggregator {aggregator!r}: use one of {', '.join(AGGREGATORS)}")


def _diagnostics(update: np.ndarray, honest_mean: np.ndarray) -> tuple[float, float, float]:
    norm_h = float(np.linalg.norm(honest_mean))
    if not np.all(np.isfinite(update)) or norm_h == 0.0:
        return math.nan, math.nan, math.nan
    inner = float(update @ honest_mean)
    norm_f = float(np.linalg.norm(update))
    cosine = inner / (norm_f * norm_h) if norm_f > 0 else math.nan
    return cosine, inner / norm_h**2, float(np.linalg.norm(update - honest_mean)) / norm_h


def run(problem: Problem, spec: AttackSpec, aggregator: str, config: RunConfig) -> Trace:
    """Iterate ``x_{t+1} = x_t + F(updates)`` for ``config.iterations`` steps."""
    byzantine = 0 if spec.is_baseline else config.num_byzantine
    honest = problem.num_honest
    total = honest + byzantine
    keep = total if config.first_k <= 0 else min(config.first_k, total)
    # Common random numbers: every aggregator under one attack sees the same streams.
    sgd_rng = np.random.default_rng([config.seed, 1, _stable_seed(spec.label)])
    attack_rng = np.random.default_rng([config.seed, 2, _stable_seed(spec.label)])
    order_rng = np.random.default_rng([config.seed, 4, _stable_seed(spec.label)])
    attack = get_vector_attack(spec.name)
    context = AttackContext(total, byzantine, attack_rng, spec.params)

    x = initial_point(problem, config)
    iterations = config.iterations
    distances = np.full(iterations + 1, np.nan)
    distances[0] = np.linalg.norm(x - problem.x_star)
    diag = np.full((3, iterations), np.nan)
    byz_accepted = np.full(iterations, np.nan)
    honest_rejected = np.full(iterations, np.nan)
    trace = Trace(spec.label, aggregator, distances, diag[0], diag[1], diag[2])
    for t in range(iterations):
        honest_updates = problem.honest_updates(x, sgd_rng, config.batch_size, config.lr)
        validation = problem.validation_update(x, sgd_rng, config.batch_size, config.lr)
        rows = [honest_updates]
        if byzantine:
            rows.append(
                np.stack(
                    [apply_vector_attack(attack, honest_updates, context) for _ in range(byzantine)]
                ).astype(np.float64)
            )
        updates = np.concatenate(rows)
        is_byzantine = np.arange(total) >= honest
        if keep < total:
            arrived = order_rng.permutation(total)[:keep]
            updates, is_byzantine = updates[arrived], is_byzantine[arrived]
        assumed_f = byzantine if keep >= 2 * byzantine + 1 else (keep - 1) // 2
        step, accepted = aggregate(aggregator, updates, assumed_f, validation)
        diag[:, t] = _diagnostics(step, honest_updates.mean(axis=0))
        if accepted is not None:
            mask = np.zeros(updates.shape[0], dtype=bool)
            mask[list(accepted)] = True
            if is_byzantine.any():
                byz_accepted[t] = mask[is_byzantine].mean()
            honest_rejected[t] = 1.0 - mask[~is_byzantine].mean()
        with np.errstate(invalid="ignore", over="ignore"):
            x = x + step
            distance = float(np.linalg.norm(x - problem.x_star))
        if not math.isfinite(distance) or distance > BLOW_UP * distances[0]:
            trace.diverged, trace.stopped_at = True, t + 1
            trace.non_finite = not math.isfinite(distance)
            if math.isfinite(distance):
                distances[t + 1] = distance
            break
        distances[t + 1] = distance
    trace.byz_accepted, trace.honest_rejected = byz_accepted, honest_rejected
    return trace


# --- fits and verdicts ---------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """The fitted rate and floor of one trace."""

    rate: float  # per-iteration factor exp(slope); > 1 when it grows
    floor: float  # median distance over the last 20% (inf when it blew up)
    final: float  # last finite-run distance (inf when it blew up)
    transient: int  # iterates in the fit
    intercept: float  # log distance at t = 0 of the fitted line


def _line(times: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(times, np.log(values), 1)
    return float(slope), float(intercept)


def fit_rate(distances: np.ndarray, diverged: bool = False) -> Fit:
    """Fit ``log ||x_t - x*||`` over the transient (see the module docstring)."""
    finite = np.isfinite(distances) & (distances > 0)
    times = np.arange(distances.size)
    if diverged:
        floor = final = math.inf
        if finite.sum() >= 2:
            slope, intercept = _line(times[finite], distances[finite])
            return Fit(math.exp(slope), floor, final, int(finite.sum()), intercept)
        return Fit(math.nan, floor, final, 0, math.nan)
    tail = max(1, round(FLOOR_SHARE * distances.size))
    floor = float(np.median(distances[-tail:]))
    final = float(distances[-1])
    reached = np.flatnonzero(distances <= TRANSIENT_FACTOR * floor)
    end = int(reached[0]) if reached.size else distances.size
    if end < 3:
        return Fit(math.nan, floor, final, end, math.nan)
    slope, intercept = _line(times[:end], distances[:end])
    return Fit(math.exp(slope), floor, final, end, intercept)


def verdict(fit: Fit, start: float, clean_floor: float, diverged: bool) -> str:
    """``converges``, ``raised floor``, ``stalls`` or ``diverges`` (module docstring)."""
    if diverged or not math.isfinite(fit.floor) or fit.floor > start:
        return "diverges"
    if fit.floor <= CONVERGED_FACTOR * clean_floor:
        return "converges"
    if fit.floor <= RAISED_FACTOR * clean_floor:
        return "raised floor"
    return "stalls"


def _nan_stat(values: np.ndarray, how: str) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.min(values) if how == "min" else np.mean(values))


def summarise(trace: Trace, clean_floor: float) -> dict[str, object]:
    """One CSV row: rate, floor, final distance, verdict and diagnostic summaries."""
    fit = fit_rate(trace.distances, trace.diverged)
    start = float(trace.distances[0])
    transient = slice(0, max(fit.transient, 1))
    return {
        "attack": trace.attack,
        "aggregator": trace.aggregator,
        "verdict": verdict(fit, start, clean_floor, trace.diverged),
        "rate": fit.rate,
        "transient_iterations": fit.transient,
        "floor": fit.floor,
        "floor_over_clean": fit.floor / clean_floor,
        "final": fit.final,
        "start": start,
        "stopped_at": trace.stopped_at if trace.stopped_at is not None else "",
        "non_finite": trace.non_finite,
        "cos_min": _nan_stat(trace.cosine, "min"),
        "cos_mean": _nan_stat(trace.cosine, "mean"),
        "cos_mean_transient": _nan_stat(trace.cosine[transient], "mean"),
        "rho_min": _nan_stat(trace.rho, "min"),
        "rho_mean": _nan_stat(trace.rho, "mean"),
        "rho_mean_transient": _nan_stat(trace.rho[transient], "mean"),
        "rel_error_mean": _nan_stat(trace.rel_error, "mean"),
        "rel_error_mean_transient": _nan_stat(trace.rel_error[transient], "mean"),
        "byzantine_accepted": _nan_stat(trace.byz_accepted, "mean"),
        "honest_rejected": _nan_stat(trace.honest_rejected, "mean"),
    }


# --- the experiment ------------------------------------------------------------


@dataclass
class Experiment:
    """Everything one invocation produced."""

    problem: Problem
    config: RunConfig
    traces: dict[tuple[str, str], Trace]
    rows: list[dict[str, object]]
    clean_floor: float
    gd_rate: float


def run_experiment(
    attacks: Sequence[str],
    aggregators: Sequence[str],
    config: RunConfig,
    problem_kwargs: dict[str, object] | None = None,
    progress: bool = False,
) -> Experiment:
    """Run every (attack, aggregator) pair; the f = 0 FedAvg baseline always runs."""
    from tqdm import tqdm

    specs = [resolve_attack(label) for label in attacks]
    for aggregator in aggregators:
        if aggregator not in AGGREGATORS:
            raise ValueError(
                f"unknown aggregator {aggregator!r}: use one of {', '.join(AGGREGATORS)}"
            )
    honest = config.num_workers - config.num_byzantine
    if honest < 1 or config.num_byzantine < 0:
        raise ValueError(
            f"need 0 <= f < N, got N = {config.num_workers}, f = {config.num_byzantine}"
        )
    problem = make_problem(num_honest=honest, seed=config.seed, **(problem_kwargs or {}))
    baseline = resolve_attack(BASELINE)
    pairs = [(spec, agg) for spec in specs for agg in aggregators]
    traces: dict[tuple[str, str], Trace] = {}
    for spec, agg in tqdm(pairs, desc="convergence", unit="run", disable=not progress):
        traces[(spec.label, agg)] = run(problem, spec, agg, config)
    clean = traces.get((BASELINE, "fedavg")) or run(problem, baseline, "fedavg", config)
    clean_floor = fit_rate(clean.distances, clean.diverged).floor
    rows = [summarise(trace, clean_floor) for trace in traces.values()]
    return Experiment(problem, config, traces, rows, clean_floor, problem.gd_contraction(config.lr))


# --- output --------------------------------------------------------------------

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("attack", "attack"),
    ("aggregator", "aggregator"),
    ("verdict", "verdict"),
    ("rate", "rate r"),
    ("floor", "floor"),
    ("floor_over_clean", "floor / clean"),
    ("final", "final"),
    ("cos_mean", "cos mean"),
    ("rho_min", "rho min"),
    ("rho_mean", "rho mean"),
    ("rho_mean_transient", "rho mean (transient)"),
    ("rel_error_mean", "rel err mean"),
    ("byzantine_accepted", "byz acc"),
    ("honest_rejected", "hon rej"),
)


def _format(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(_format(row[key]) for key, _ in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def describe(experiment: Experiment) -> str:
    """The header printed above the table: problem, check of x*, reference rates."""
    problem, config = experiment.problem, experiment.config
    eigenvalues = np.linalg.eigvalsh(problem.hessian)
    gradient_norm = float(np.linalg.norm(problem.full_gradient(problem.x_star)))
    return "\n".join(
        [
            f"least squares + L2: N = {config.num_workers} workers, f = {config.num_byzantine} "
            f"Byzantine, H = {problem.num_honest} honest, d = {problem.dim}, "
            f"lambda = {problem.lam:g}",
            f"SGD: lr = {config.lr:g}, batch = {config.batch_size}, iterations = "
            f"{config.iterations}, first-k = {config.first_k or 'all'}, seed = {config.seed}, "
            f"||x_0 - x*|| = {config.init_distance:g}",
            f"exact optimum: ||grad F(x*)|| = {gradient_norm:.2e}; Hessian eigenvalues in "
            f"[{eigenvalues[0]:.3g}, {eigenvalues[-1]:.3g}]; full-gradient GD contraction "
            f"r_GD = max|1 - lr*lambda_j| = {experiment.gd_rate:.4f}",
            f"clean noise floor (f = 0, FedAvg = plain SGD): {experiment.clean_floor:.4g}",
        ]
    )


def write_csv(rows: Sequence[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_traces(traces: dict[tuple[str, str], Trace], path: Path) -> None:
    """Long format: attack, aggregator, iteration, distance (blank after a blow-up)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["attack", "aggregator", "iteration", "distance"])
        for (attack, aggregator), trace in traces.items():
            for t, distance in enumerate(trace.distances):
                writer.writerow(
                    [attack, aggregator, t, "" if np.isnan(distance) else repr(distance)]
                )


COLORS = {"dstar": "tab:blue", "fedavg": "tab:red", "median": "tab:gray"}


def plot(experiment: Experiment, path: Path) -> None:
    """One log-scale panel per attack: distance to x* per aggregator, DStar's fit dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(attack for attack, _ in experiment.traces))
    columns = min(4, len(attacks))
    rows_n = math.ceil(len(attacks) / columns)
    figure, axes = plt.subplots(
        rows_n, columns, figsize=(3.6 * columns, 2.9 * rows_n), sharex=True, squeeze=False
    )
    start = experiment.config.init_distance
    low = experiment.clean_floor / 5
    high = start * 1e2
    by_key = {(row["attack"], row["aggregator"]): row for row in experiment.rows}
    for axis, attack in zip(axes.flat, attacks, strict=False):
        for (name, aggregator), trace in experiment.traces.items():
            if name != attack:
                continue
            row = by_key[(name, aggregator)]
            distances = np.clip(trace.distances, low, None)
            label = f"{aggregator}: {row['verdict']}"
            if trace.non_finite:
                label += f" (NaN at t={trace.stopped_at})"
            axis.semilogy(
                distances,
                color=COLORS.get(aggregator),
                lw=1.1,
                label=label,
                zorder=3 if aggregator == "dstar" else 2,
            )
            if trace.diverged:
                last = int(np.flatnonzero(np.isfinite(trace.distances))[-1])
                axis.plot(
                    last, min(distances[last], high), marker="x", color=COLORS.get(aggregator)
                )
            if aggregator == "dstar" and math.isfinite(float(row["rate"])):
                fit = fit_rate(trace.distances, trace.diverged)
                times = np.arange(max(fit.transient, 2))
                axis.semilogy(
                    times,
                    np.exp(fit.intercept) * fit.rate**times,
                    ":",
                    color="k",
                    lw=1.4,
                    zorder=4,
                )
                axis.text(
                    0.97,
                    0.45,
                    f"DStar r = {fit.rate:.3f}",
                    transform=axis.transAxes,
                    ha="right",
                    va="center",
                    fontsize=8,
                )
        axis.axhline(experiment.clean_floor, color="tab:green", ls="--", lw=0.8)
        axis.set_ylim(low, high)
        axis.set_title(attack, fontsize=10)
        axis.legend(fontsize=7, loc="upper right")
        axis.grid(True, which="major", alpha=0.3)
    for axis in list(axes.flat)[len(attacks) :]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("iteration")
    for axis in axes[:, 0]:
        axis.set_ylabel("||x_t - x*||")
    config = experiment.config
    figure.suptitle(
        f"L2 least squares, N = {config.num_workers}, f = {config.num_byzantine}, "
        f"lr = {config.lr:g}; green dashed: clean SGD floor, dotted: DStar's fitted rate "
        f"(r_GD = {experiment.gd_rate:.3f})",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(experiment: Experiment, out: Path) -> dict[str, Path]:
    """Write the summary CSV, the traces CSV, the markdown table and the PNG."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "convergence.csv",
        "traces": out / "convergence_traces.csv",
        "markdown": out / "convergence.md",
        "png": out / "convergence.png",
    }
    write_csv(experiment.rows, paths["csv"])
    write_traces(experiment.traces, paths["traces"])
    paths["markdown"].write_text(
        "# Convergence: DStar vs FedAvg\n\n```\n"
        + describe(experiment)
        + "\n```\n\n"
        + markdown_table(experiment.rows)
        + "\n"
    )
    plot(experiment, paths["png"])
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.benchmarks.convergence", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/convergence"))
    parser.add_argument("--iterations", type=int, default=None, help="default 300 (quick: 60)")
    parser.add_argument("--num-workers", "-N", type=int, default=20)
    parser.add_argument("--num-byzantine", "-f", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attacks",
        default=None,
        help=f"comma-separated (default: {','.join(DEFAULT_ATTACKS)}; quick: "
        f"{','.join(QUICK_ATTACKS)})",
    )
    parser.add_argument("--aggregators", default=",".join(AGGREGATORS))
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--first-k", type=int, default=0, help="0: all N; else random arrival")
    parser.add_argument("--init-distance", type=float, default=100.0)
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--rows-per-worker", type=int, default=100)
    parser.add_argument("--server-rows", type=int, default=50)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--heterogeneity", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="60 iterations, 3 attacks")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    attacks = (
        args.attacks.split(",")
        if args.attacks
        else (QUICK_ATTACKS if args.quick else DEFAULT_ATTACKS)
    )
    iterations = args.iterations or (60 if args.quick else 300)
    config = RunConfig(
        num_workers=args.num_workers,
        num_byzantine=args.num_byzantine,
        iterations=iterations,
        lr=args.lr,
        batch_size=args.batch_size,
        init_distance=args.init_distance,
        first_k=args.first_k,
        seed=args.seed,
    )
    problem_kwargs: dict[str, object] = {
        "dim": args.dim,
        "rows_per_worker": args.rows_per_worker,
        "server_rows": args.server_rows,
        "lam": args.lam,
        "heterogeneity": args.heterogeneity,
        "noise": args.noise,
    }
    try:
        experiment = run_experiment(
            [a.strip() for a in attacks],
            [a.strip() for a in args.aggregators.split(",")],
            config,
            problem_kwargs,
            progress=not args.no_progress,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_outputs(experiment, args.out)
    print(describe(experiment))
    print()
    print(markdown_table(experiment.rows))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

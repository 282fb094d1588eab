"""Does the experiment fit the federation it runs on? Checked once, before round 1.

The run config describes an experiment for some number of nodes (the default one
for 10), but the federation decides how many there are: ``flwr run .`` on a fresh
Flower configuration simulates 2 SuperNodes. :func:`fit_to_federation` compares
the settings that depend on the node count N with the N nodes that answered the
roll call:

- it stops the run (:class:`FederationMismatch`, whose message gives the command
  that sets the number of SuperNodes) when no round could work: no node, role
  settings beyond the nodes (``num-byzantine-nodes``, ``num-stragglers``,
  ``byzantine-partitions``), no honest node, or fewer nodes than the replies a
  round needs (DStar: ``min-replies``, else 2f + 1 with ``num-byzantine`` = f;
  Bulyan: 4f + 3);
- it fits what the server alone decides and warns: a ``first-k`` count above N
  becomes N;
- it warns, changing nothing, when the first k replies of a round must include
  stragglers (DStar then waits for them every round).

:func:`check_federation` logs the warnings and the reason to stop; the ServerApp
calls it right after the roll call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from logging import ERROR, WARNING

from flwr.supercore import log

from clients.roles import ByzantineSelection
from clients.run_config import read
from dstar_flwr import resolve_first_k
from simulations.app.experiment import ExperimentConfig

DEFAULT_NUM_SUPERNODES = 10  # what the default experiment is meant for (and simulate.sh runs)
_SEARCH_LIMIT = 10_000  # largest federation the suggestion looks at


class FederationMismatch(ValueError):
    """The run config cannot run on the federation's nodes; the message says what to do."""


@dataclass(frozen=True)
class FederationFit:
    """The experiment as it will run on N nodes, and what was changed or is odd.

    Attributes
    ----------
    experiment : ExperimentConfig
        The settings to run with (the given ones, or fitted to N).
    warnings : tuple of str
        One line per change or oddity, saying what and why.
    """

    experiment: ExperimentConfig
    warnings: tuple[str, ...] = ()


def replies_needed(experiment: ExperimentConfig) -> int:
    """The fewest valid replies with which the strategy aggregates a round."""
    f = experiment.num_byzantine
    if experiment.strategy == "dstar":
        return experiment.min_replies or 2 * f + 1
    if experiment.strategy == "bulyan":
        return 4 * f + 3  # Flower's Bulyan skips a round with fewer
    return 1


def _roles(run_config: Mapping[str, object], num_nodes: int) -> tuple[int, int]:
    """(Byzantine, straggler) node counts on ``num_nodes`` nodes; ValueError if impossible."""
    byzantine = ByzantineSelection.from_run_config(run_config).partitions(num_nodes)
    num_stragglers = int(read(run_config, "num-stragglers"))
    if not 0 <= num_stragglers <= num_nodes:
        raise ValueError(
            f"num-stragglers = {num_stragglers} names more stragglers than the {num_nodes} nodes"
        )
    return len(byzantine), num_stragglers


def _problems(
    experiment: ExperimentConfig, run_config: Mapping[str, object], num_nodes: int
) -> list[str]:
    """Why no round could work on ``num_nodes`` nodes (empty: it can)."""
    if num_nodes < 1:
        return ["no node answered the roll call (a node whose run config fails says why above)"]
    try:
        num_byzantine_nodes, _ = _roles(run_config, num_nodes)
    except ValueError as error:
        return [str(error)]
    problems = []
    if num_byzantine_nodes >= num_nodes:
        problems.append(
            f"all {num_nodes} nodes are Byzantine ({_byzantine_setting(run_config)}): "
            "there is no honest node"
        )
    needed = replies_needed(experiment)
    if num_nodes < needed:
        why = (
            f"min-replies = {experiment.min_replies}"
            if experiment.strategy == "dstar" and experiment.min_replies
            else f"{'4f + 3' if experiment.strategy == 'bulyan' else '2f + 1'} with "
            f"num-byzantine = f = {experiment.num_byzantine}"
        )
        problems.append(
            f"strategy {experiment.strategy!r} needs {needed} replies a round ({why}), "
            f"more than the {num_nodes} nodes: every round would be skipped"
        )
    return problems


def _notes(
    experiment: ExperimentConfig, run_config: Mapping[str, object], num_nodes: int
) -> tuple[ExperimentConfig, list[str]]:
    """The settings fitted to ``num_nodes`` and the warnings (for a federation without problems)."""
    warnings: list[str] = []
    if experiment.strategy != "dstar":
        return experiment, warnings
    first_k = experiment.first_k
    if first_k >= 1 and first_k > num_nodes:
        warnings.append(
            f"first-k = {first_k:g} is more than the {num_nodes} nodes: using first-k = "
            f"{num_nodes}, every node's reply"
        )
        experiment = dataclasses.replace(experiment, first_k=float(num_nodes))
    needed = replies_needed(experiment)
    k = max(resolve_first_k(experiment.first_k, num_nodes), needed)
    _, num_stragglers = _roles(run_config, num_nodes)
    waited_for = k - (num_nodes - num_stragglers)
    if num_stragglers and waited_for > 0:
        raised = (
            f", raised to the {needed} replies a round needs"
            if resolve_first_k(experiment.first_k, num_nodes) < needed
            else ""
        )
        warnings.append(
            f"first-k = {experiment.first_k:g} keeps k = {k} of the {num_nodes} nodes' replies"
            f"{raised}, so every round waits for at least {waited_for} of the "
            f"{num_stragglers} stragglers (num-stragglers), which hold up every round; run "
            f"more nodes or lower first-k"
        )
    return experiment, warnings


def _byzantine_setting(run_config: Mapping[str, object]) -> str:
    selection = ByzantineSelection.from_run_config(run_config)
    if selection.partition_ids:
        return "byzantine-partitions = " + ",".join(map(str, selection.partition_ids))
    if selection.fraction > 0:
        return f"byzantine-fraction = {selection.fraction:g}"
    return f"num-byzantine-nodes = {selection.count}"


def smallest_federation(
    experiment: ExperimentConfig, run_config: Mapping[str, object], *, quiet: bool = False
) -> int | None:
    """The fewest nodes the run config can run on (``quiet``: with no warning either).

    None if no federation up to 10,000 nodes fits.
    """
    for num_nodes in range(1, _SEARCH_LIMIT + 1):
        if _problems(experiment, run_config, num_nodes):
            continue
        if not quiet or not _notes(experiment, run_config, num_nodes)[1]:
            return num_nodes
    return None


def fit_to_federation(
    experiment: ExperimentConfig, run_config: Mapping[str, object], num_nodes: int
) -> FederationFit:
    """The experiment fitted to the ``num_nodes`` nodes that answered the roll call.

    Parameters
    ----------
    experiment : ExperimentConfig
        The server's settings, read from ``run_config``.
    run_config : Mapping[str, object]
        ``context.run_config`` (the nodes' role settings are read from it).
    num_nodes : int
        N, the nodes that answered the roll call.

    Returns
    -------
    FederationFit
        The settings to run with and one warning per change or oddity.

    Raises
    ------
    FederationMismatch
        No round could work on N nodes; the message says why and gives the
        commands that set the number of SuperNodes.
    """
    problems = _problems(experiment, run_config, num_nodes)
    if problems:
        raise FederationMismatch(_stop_message(experiment, run_config, num_nodes, problems))
    fitted, warnings = _notes(experiment, run_config, num_nodes)
    return FederationFit(fitted, tuple(warnings))


def _stop_message(
    experiment: ExperimentConfig,
    run_config: Mapping[str, object],
    num_nodes: int,
    problems: list[str],
) -> str:
    smallest = smallest_federation(experiment, run_config)
    # The fewest nodes on which it runs without a warning, else the fewest it runs on.
    suggested = smallest_federation(experiment, run_config, quiet=True) or smallest
    needs = (
        f"it needs at least {smallest} nodes"
        if smallest is not None
        else "no federation size fits it: change the run config"
    )
    lines = [
        f"the run config does not fit this federation of {num_nodes} node(s); {needs}:",
        *(f"  - {problem}" for problem in problems),
    ]
    if suggested is not None:
        lines += [
            f"Run {suggested} SuperNodes (the default experiment is meant for "
            f"{DEFAULT_NUM_SUPERNODES}):",
            f'  flwr run . --federation-config "num-supernodes={suggested}"',
            f"  bash scripts/simulate.sh --num-supernodes {suggested}",
            "  (a deployment: start that many flower-supernode processes)",
        ]
    lines.append(
        'or fit the run config to the nodes, e.g. flwr run . --run-config "num-byzantine-nodes=0 '
        'num-stragglers=0 num-byzantine=0" (see docs/configuration.md).'
    )
    return "\n".join(lines)


def check_federation(
    experiment: ExperimentConfig, run_config: Mapping[str, object], num_nodes: int
) -> ExperimentConfig:
    """:func:`fit_to_federation`, with its warnings and its reason to stop logged.

    Returns the settings to run with; raises :class:`FederationMismatch` (logged
    as an ERROR first) when the run cannot work on ``num_nodes`` nodes.
    """
    try:
        fit = fit_to_federation(experiment, run_config, num_nodes)
    except FederationMismatch as error:
        log(ERROR, "%s", error)
        raise
    for warning in fit.warnings:
        log(WARNING, "federation of %s nodes: %s", num_nodes, warning)
    return fit.experiment


__all__ = [
    "DEFAULT_NUM_SUPERNODES",
    "FederationFit",
    "FederationMismatch",
    "check_federation",
    "fit_to_federation",
    "replies_needed",
    "smallest_federation",
]

"""What stands between a simulation's replies and its strategy.

- Under ``threat-model = "omniscient"``, an :class:`~simulations.app.omniscient.OmniscientAttack`
  replaces the Byzantine nodes' replies with vector attacks computed from all
  honest replies of the round (data and reply attacks still act at the node).
- Flower's built-in strategies end the ServerApp on one malformed reply; a
  :class:`~dstar_flwr.interception.DropMalformedReplies` guard in front of them
  drops such replies (with the reason in the log) so that the experiment goes
  on. DStar and FLTrust check replies themselves and need no guard.
- Last, for every strategy, a :class:`~simulations.app.diagnostics.HonestMeanProbe`
  records the mean honest update of the replies the strategy aggregates (after
  the attack and the guard) for the round's resilience diagnostics. It changes
  nothing.
"""

from collections.abc import Mapping

import numpy as np
from flwr.serverapp.strategy import Strategy

from clients.attack_vectors import (
    AttackContext,
    AttackParams,
    VectorAttack,
    apply_vector_attack,
    attack_kind,
    get_vector_attack,
)
from dstar_flwr import DStar
from dstar_flwr.interception import DropMalformedReplies, ReplyTransform, with_reply_transforms
from simulations.app.diagnostics import HonestMeanProbe
from simulations.app.omniscient import AttackVectorFn, OmniscientAttack
from simulations.app.results import NodeRoles
from simulations.baselines.fltrust import FLTrust


def _bind(attack: VectorAttack, params: AttackParams) -> AttackVectorFn:
    def attack_vector(
        honest_updates: np.ndarray, num_nodes: int, num_byzantine: int, rng: np.random.Generator
    ) -> np.ndarray:
        context = AttackContext(
            num_nodes=num_nodes, num_byzantine=num_byzantine, rng=rng, params=params
        )
        return apply_vector_attack(attack, honest_updates, context)

    return attack_vector


def omniscient_attacks(
    params: AttackParams, roles: NodeRoles
) -> Mapping[int, AttackVectorFn | None]:
    """Each Byzantine node's server-side attack (None where it attacks by itself)."""
    partitions = {node_id: roles.partition_of[node_id] for node_id in roles.byzantine}
    assigned = params.assign(set(partitions.values()))
    attacks: dict[int, AttackVectorFn | None] = {}
    for node_id, partition in partitions.items():
        name = assigned[partition]
        vector = attack_kind(name) == "vector"
        attacks[node_id] = _bind(get_vector_attack(name), params) if vector else None
    return attacks


def transform_log(strategy: Strategy) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Node ids per round: replies the omniscient adversary replaced, and the guard dropped."""
    replaced: dict[int, list[int]] = {}
    dropped: dict[int, list[int]] = {}
    for transform in getattr(strategy, "reply_transforms", []):
        if isinstance(transform, OmniscientAttack):
            replaced = transform.replaced_per_round
        elif isinstance(transform, DropMalformedReplies):
            dropped = transform.dropped_per_round
    return replaced, dropped


def probe_of(strategy: Strategy) -> HonestMeanProbe | None:
    """The :class:`HonestMeanProbe` among ``strategy``'s transforms, if any."""
    for transform in getattr(strategy, "reply_transforms", []):
        if isinstance(transform, HonestMeanProbe):
            return transform
    return None


def wrap_strategy(
    strategy: Strategy,
    run_config: Mapping[str, object],
    roles: NodeRoles,
    seed: int,
) -> Strategy:
    """``strategy`` behind its transforms, in this order.

    The omniscient adversary (under that threat model, with Byzantine nodes),
    the malformed-reply guard (for strategies that do not check replies
    themselves: all but DStar and FLTrust), and the honest-mean probe (always,
    last: it sees what the strategy aggregates). DStar and FLTrust take them
    as their own ``reply_transforms``; any other strategy is wrapped.
    """
    params = AttackParams.from_run_config(run_config)
    transforms: list[ReplyTransform] = []
    if params.threat_model == "omniscient" and roles.byzantine:
        transforms.append(OmniscientAttack(omniscient_attacks(params, roles), seed=seed))
    if not isinstance(strategy, DStar | FLTrust):
        transforms.append(DropMalformedReplies())
    transforms.append(HonestMeanProbe(roles.byzantine))
    return with_reply_transforms(strategy, transforms)

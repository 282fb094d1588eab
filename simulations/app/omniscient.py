"""The omniscient threat model: an adversary that sees every honest reply of a round.

:class:`OmniscientAttack` is a reply transform (see
:mod:`dstar_flwr.interception`): once a round's replies are in and checked, and
before the strategy aggregates them, it replaces the arrays of the Byzantine
nodes' replies with ``w + v``, where the attack vector ``v`` is computed from
all honest updates of that round. It works in front of any message-API
strategy (DStar and FLTrust take it as a reply transform; Flower's own ones
through :func:`~dstar_flwr.interception.with_reply_transforms`). This is the
stress test most robust-aggregation papers use; the Byzantine ClientApps
themselves train honestly under this threat model. It runs on the server, as
part of the experiment harness: the strategy never learns who is Byzantine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore import log

from dstar_flwr.records import ArrayLayout, flatten_record, layout_of
from dstar_flwr.replies import CheckedReply

# (honest updates (h, d), num_nodes, num_byzantine, rng) -> one attack vector (d,)
AttackVectorFn = Callable[[np.ndarray, int, int, np.random.Generator], np.ndarray]


class OmniscientAttack:
    """Replace Byzantine replies' arrays with attacks computed from the honest ones.

    Parameters
    ----------
    attacks : Mapping[int, AttackVectorFn | None]
        One entry per Byzantine node: the function that computes its attack
        vector from the round's honest updates ``u_i = w_i - w`` (rows), the
        number of replies and of Byzantine ones; None for a Byzantine node that
        attacks by itself (label flip, malformed replies), whose reply is left
        as it is but never counted as honest.
    seed : int (default: 0)
        Seed of the adversary's randomness.

    Attributes
    ----------
    replaced_per_round : dict[int, list[int]]
        The Byzantine node ids whose replies were replaced, per round.
    """

    def __init__(self, attacks: Mapping[int, AttackVectorFn | None], *, seed: int = 0) -> None:
        self.attacks = {int(node_id): fn for node_id, fn in attacks.items()}
        self.byzantine_node_ids = frozenset(self.attacks)
        self.rng = np.random.default_rng(seed)
        self._layout: ArrayLayout | None = None
        self._global_weights: np.ndarray | None = None
        self.replaced_per_round: dict[int, list[int]] = {}

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Remember the global arrays the round starts from."""
        self._layout = layout_of(arrays)
        self._global_weights = flatten_record(arrays, self._layout)

    def transform(self, server_round: int, replies: list[CheckedReply]) -> list[CheckedReply]:
        """Replace the valid Byzantine replies' arrays; return all replies in order."""
        if self._layout is None or self._global_weights is None:
            raise RuntimeError("configure must run before replies are attacked.")
        global_weights = self._global_weights
        byzantine = [r for r in replies if r.node_id in self.byzantine_node_ids and r.is_valid]
        honest = [
            r.weights for r in replies if r.node_id not in self.byzantine_node_ids and r.is_valid
        ]
        if not byzantine:
            return replies
        if not honest:
            log(WARNING, "omniscient adversary: no honest reply to learn from this round")
            return replies
        honest_updates = np.stack([weights - global_weights for weights in honest])
        attacked: dict[int, CheckedReply] = {}
        for reply in byzantine:
            attack = self.attacks[reply.node_id]
            if attack is None:
                continue
            try:
                vector = attack(
                    honest_updates, len(honest) + len(byzantine), len(byzantine), self.rng
                )
            except ValueError as error:  # e.g. ALIE's z is undefined for this n and f
                log(WARNING, "omniscient adversary: attack not applied this round: %s", error)
                continue
            weights = global_weights + vector.astype(global_weights.dtype)
            attacked[id(reply)] = reply.with_weights(weights, self._layout)
        self.replaced_per_round[server_round] = [r.node_id for r in attacked.values()]
        return [attacked.get(id(reply), reply) for reply in replies]

"""The omniscient threat model: an adversary that sees every honest reply of a round.

:class:`OmniscientAttack` is a reply transform (see
:mod:`dstar_flwr.interception`): once a round's replies are in and before the
strategy aggregates them, it replaces the arrays of the Byzantine nodes' replies
with ``w + v``, where the attack vector ``v`` is computed from all honest
updates of that round. :class:`OmniscientAdversary` puts it in front of any
Flower message-API strategy (DStar, FedAvg, Krum, MultiKrum, Bulyan, FedMedian,
FedTrimmedAvg, ...). This is the stress test most robust-aggregation papers
use; the Byzantine ClientApps themselves train honestly under this threat model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from dstar_flwr.interception import InterceptedStrategy
from dstar_flwr.records import (
    ArrayLayout,
    MalformedReply,
    flatten_record,
    layout_of,
    parse_train_reply,
    unflatten_vector,
)

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
    weighted_by_key : str (default: "num-examples")
        The MetricRecord key of the example count, used to check honest replies.
    """

    def __init__(
        self,
        attacks: Mapping[int, AttackVectorFn | None],
        *,
        seed: int = 0,
        weighted_by_key: str = "num-examples",
    ) -> None:
        self.attacks = {int(node_id): fn for node_id, fn in attacks.items()}
        self.byzantine_node_ids = frozenset(self.attacks)
        self.weighted_by_key = weighted_by_key
        self.rng = np.random.default_rng(seed)
        self._global_arrays: ArrayRecord | None = None
        self.replaced_per_round: dict[int, list[int]] = {}

    def configure(self, server_round: int, arrays: ArrayRecord) -> None:
        """Remember the global arrays the round starts from."""
        self._global_arrays = arrays

    def transform(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Rewrite the Byzantine replies in place; return all replies."""
        if self._global_arrays is None:
            raise RuntimeError("configure must run before replies are attacked.")
        layout = layout_of(self._global_arrays)
        global_weights = flatten_record(self._global_arrays, layout)
        byzantine = [
            r
            for r in replies
            if r.metadata.src_node_id in self.byzantine_node_ids and not r.has_error()
        ]
        if not byzantine:
            return replies
        honest = self._honest_weights(replies, layout)
        if not honest:
            log(WARNING, "omniscient adversary: no honest reply to learn from this round")
            return replies
        honest_updates = np.stack([weights - global_weights for weights in honest])
        replaced = []
        for reply in byzantine:
            attack = self.attacks[reply.metadata.src_node_id]
            if attack is None:
                continue
            try:
                vector = attack(
                    honest_updates, len(honest) + len(byzantine), len(byzantine), self.rng
                )
            except ValueError as error:  # e.g. ALIE's z is undefined for this n and f
                log(WARNING, "omniscient adversary: attack not applied this round: %s", error)
                continue
            attacked = unflatten_vector(
                global_weights + vector.astype(global_weights.dtype), layout
            )
            reply.content = _with_arrays(reply.content, attacked)
            replaced.append(reply.metadata.src_node_id)
        self.replaced_per_round[server_round] = replaced
        return replies

    def _honest_weights(self, replies: list[Message], layout: ArrayLayout) -> list[np.ndarray]:
        weights = []
        for reply in replies:
            if reply.metadata.src_node_id in self.byzantine_node_ids or reply.has_error():
                continue
            try:
                parsed = parse_train_reply(
                    reply.content, layout, weighted_by_key=self.weighted_by_key
                )
            except MalformedReply:
                continue
            weights.append(parsed.weights)
        return weights


class OmniscientAdversary(InterceptedStrategy):
    """``strategy`` with an :class:`OmniscientAttack` in front of its aggregation.

    Parameters
    ----------
    strategy : Strategy
        Any message-API strategy.
    byzantine_node_ids : Iterable[int]
        The nodes whose replies the adversary controls.
    attack_vector_fn : AttackVectorFn
        The attack of every one of them (see :class:`OmniscientAttack`).
    seed, weighted_by_key
        As in :class:`OmniscientAttack`.
    """

    def __init__(
        self,
        strategy: Strategy,
        byzantine_node_ids: Iterable[int],
        attack_vector_fn: AttackVectorFn,
        *,
        seed: int = 0,
        weighted_by_key: str = "num-examples",
    ) -> None:
        self.attack = OmniscientAttack(
            dict.fromkeys(byzantine_node_ids, attack_vector_fn),
            seed=seed,
            weighted_by_key=weighted_by_key,
        )
        super().__init__(strategy, [self.attack])

    @property
    def replaced_per_round(self) -> dict[int, list[int]]:
        """Byzantine node ids whose replies were replaced, per round."""
        return self.attack.replaced_per_round

    def attack_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Apply the attack to ``replies`` (outside a run, e.g. in tests)."""
        return self.attack.transform(server_round, list(replies))


def _with_arrays(content: RecordDict, arrays: ArrayRecord) -> RecordDict:
    """``content`` with its (only) ArrayRecord replaced by ``arrays``."""
    replaced = RecordDict()
    for key, record in content.items():
        replaced[key] = arrays if isinstance(record, ArrayRecord) else record
    return replaced

"""The dSTAR rule's settings, checked once, and its application to model weights.

Both Flower adapters (the message-API :class:`~dstar_flwr.DStar` and the legacy
:class:`~dstar_flwr.DStarLegacy`) hold one :class:`DStarRule`: it validates the
configuration up front (so a bad setting fails before the first round) and turns
the global weights plus the kept replies' weights into the next global weights.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .aggregation import (
    CENTERS,
    DEFAULT_MAX_ROBUST_Z,
    SCALES,
    VARIANTS,
    DStarAggregation,
    check_aggregation_device,
    dstar_aggregate,
)
from .first_k import resolve_first_k
from .records import DEFAULT_MAX_NUM_EXAMPLES

WEIGHTINGS: tuple[str, ...] = ("num-examples", "uniform")


@dataclass(frozen=True)
class RuleOutcome:
    """The next global weights (None: keep the model) and the filter's result."""

    weights: NDArray[np.floating] | None
    aggregation: DStarAggregation | None


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class DStarRule:
    """dSTAR's parameters, validated on construction.

    Parameters
    ----------
    num_byzantine : int (default: 0)
        f, the assumed bound on Byzantine replies per round.
    first_k : float (default: 0.8)
        k: a count (>= 1) or a fraction (< 1) of the sampled nodes. The round
        ends at the k-th valid reply.
    min_replies : int | None (default: None)
        Fewest valid replies with which a round that hit its timeout is still
        aggregated; fewer skip the round and keep the model. None: ``2f + 1``.
    variant : {"anchored", "paper"} (default: "anchored")
        The filter (see :func:`~dstar_flwr.aggregation.dstar_aggregate`):
        ``"anchored"`` measures deviations from the validation update and
        accepts robust z-scores up to ``max_robust_z``; ``"paper"`` is our
        reading of the paper (ensemble median, ``c * s``, ``k - f`` cap).
    max_robust_z : float (default: 3.0)
        ``"anchored"``: the largest accepted robust z-score of a deviation (and
        of an update's norm, with ``norm_test``).
    norm_test : bool (default: True)
        ``"anchored"``: also reject an update whose norm is a robust outlier.
    threshold_factor : float (default: 2.0)
        ``"paper"``: c, accept a deviation of at most ``c * s``. A guess.
    deviation_scale : {"median", "validation", "max"} (default: "median")
        ``"paper"``: how the scale s of the deviations is estimated. A guess.
    center : {"ensemble", "clients"} (default: "ensemble")
        ``"paper"``: median over the updates plus the validation update, or the
        updates alone.
    cap_accepted : bool | None (default: None)
        Accept at most ``k - f`` updates; None: the variant's default (True for
        ``"paper"``, False for ``"anchored"``).
    server_learning_rate : float (default: 1.0)
        eta in ``w_next = w + eta * aggregate``.
    weighting : {"uniform", "num-examples"} (default: "uniform")
        Weights of the accepted updates in the mean, and of the client metrics.
        ``"uniform"``: equal weights, as distributed SGD averages.
        ``"num-examples"``: each reply's claimed example count, bounded by
        ``example_cap``. A node's claim is its own word: without a bound,
        attackers claiming huge counts would take the aggregate over.
    example_cap : float | None (default: None)
        With ``weighting="num-examples"`` (required there): the operator's bound
        on an honest node's example count; each claim is used as
        ``min(claim, example_cap)``, so no reply weighs more than an honest
        node with ``example_cap`` examples. Ignored with ``"uniform"``.
    max_num_examples : float (default: 1e9)
        Replies that claim more examples are refused as malformed.
    aggregation_device : str | None (default: None)
        Where the rule's passes over the updates run. None: numpy's compiled
        kernels on the host. A torch device (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ...): torch on it, the updates copied there once per
        round (needs torch; checked on construction). The next weights come
        back as numpy arrays either way.

    Notes
    -----
    This is the one place where dSTAR's settings and their defaults are
    declared: :class:`~dstar_flwr.DStar` and :class:`~dstar_flwr.DStarLegacy`
    take a ``DStarRule`` or its fields as keyword arguments
    (:meth:`from_settings`).
    """

    num_byzantine: int = 0
    first_k: float = 0.8
    min_replies: int | None = None
    variant: str = "anchored"
    max_robust_z: float = DEFAULT_MAX_ROBUST_Z
    norm_test: bool = True
    threshold_factor: float = 2.0
    deviation_scale: str = "median"
    center: str = "ensemble"
    cap_accepted: bool | None = None
    server_learning_rate: float = 1.0
    weighting: str = "uniform"
    example_cap: float | None = None
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES
    aggregation_device: str | None = None

    def __post_init__(self) -> None:
        """Fail fast on a setting that cannot work, saying what to change."""
        if isinstance(self.num_byzantine, bool) or not isinstance(self.num_byzantine, int):
            raise ValueError(f"num_byzantine must be an int, got {self.num_byzantine!r}.")
        if self.num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {self.num_byzantine}.")
        resolve_first_k(self.first_k, 1)  # validates the form of first_k
        floor = 2 * self.num_byzantine + 1
        if self.first_k >= 1 and self.first_k < floor:
            raise ValueError(
                f"first_k={self.first_k:g} is below 2f + 1 = {floor} for "
                f"num_byzantine={self.num_byzantine}: raise first_k or lower "
                "num_byzantine."
            )
        if self.min_replies is not None and self.min_replies < floor:
            raise ValueError(
                f"min_replies={self.min_replies} is below 2f + 1 = {floor}: dSTAR "
                "cannot filter fewer replies. Raise it or set it to None."
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}.")
        if not (self.max_robust_z >= 0 and math.isfinite(self.max_robust_z)):
            raise ValueError(
                f"max_robust_z must be >= 0 and finite, got {self.max_robust_z}: "
                f"{DEFAULT_MAX_ROBUST_Z} is the measured default."
            )
        if not (self.threshold_factor > 0 and math.isfinite(self.threshold_factor)):
            raise ValueError(f"threshold_factor must be > 0, got {self.threshold_factor}.")
        if self.deviation_scale not in SCALES:
            raise ValueError(
                f"deviation_scale must be one of {SCALES}, got {self.deviation_scale!r}."
            )
        if self.center not in CENTERS:
            raise ValueError(f"center must be one of {CENTERS}, got {self.center!r}.")
        if not (self.server_learning_rate > 0 and math.isfinite(self.server_learning_rate)):
            raise ValueError(f"server_learning_rate must be > 0, got {self.server_learning_rate}.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}.")
        if self.example_cap is not None and not (
            self.example_cap > 0 and math.isfinite(self.example_cap)
        ):
            raise ValueError(
                f"example_cap must be a finite number > 0 or None, got {self.example_cap}."
            )
        if self.weighting == "num-examples" and self.example_cap is None:
            raise ValueError(
                "weighting='num-examples' needs example_cap, your bound on an honest "
                "node's example count (run config 'example-cap'): each claim is used as "
                "min(claim, example_cap), since a node can claim any count. Set it, or "
                "use weighting='uniform'."
            )
        if not self.max_num_examples > 0:
            raise ValueError(f"max_num_examples must be > 0, got {self.max_num_examples}.")
        check_aggregation_device(self.aggregation_device)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The names of the rule's settings."""
        return frozenset(field.name for field in fields(cls))

    @classmethod
    def from_settings(cls, rule: "DStarRule | None", settings: Mapping[str, Any]) -> "DStarRule":
        """``rule``, or a rule built from ``settings`` (keyword arguments of a strategy).

        Raises
        ------
        ValueError
            If both are given, or a setting is not a field of DStarRule.
        """
        if rule is not None and not isinstance(rule, DStarRule):
            raise TypeError(
                f"rule must be a DStarRule, got {type(rule).__name__}: pass the settings by "
                "name, e.g. DStar(num_byzantine=2, first_k=0.8)."
            )
        if rule is not None and settings:
            raise ValueError(
                f"pass the rule's settings either as rule=DStarRule(...) or as keyword "
                f"arguments, not both (got rule and {sorted(settings)})."
            )
        if rule is not None:
            return rule
        unknown = sorted(set(settings) - cls.field_names())
        if unknown:
            raise ValueError(
                f"unknown dSTAR setting(s) {unknown}; the settings are {sorted(cls.field_names())}."
            )
        return cls(**settings)

    @property
    def min_valid_replies(self) -> int:
        """Valid replies a round needs to be aggregated."""
        return self.min_replies or 2 * self.num_byzantine + 1

    def k_for(self, num_sampled: int) -> int | None:
        """k for a round with ``num_sampled`` nodes.

        ``first_k`` of them, raised to ``min_valid_replies`` when the fraction
        gives fewer (a round cannot be aggregated below it). None when fewer
        than ``min_valid_replies`` nodes were sampled: the round cannot be
        aggregated and is skipped.
        """
        if num_sampled < self.min_valid_replies:
            return None
        return max(resolve_first_k(self.first_k, num_sampled), self.min_valid_replies)

    def too_few_nodes(self, num_sampled: int) -> str:
        """Why a round with ``num_sampled`` nodes is skipped (see :meth:`k_for`)."""
        return (
            f"{num_sampled} nodes sampled, a round needs {self.min_valid_replies} "
            f"(2f + 1 with f={self.num_byzantine}, or min_replies)"
        )

    def example_weights(self, num_examples: Sequence[float]) -> NDArray[np.float64] | None:
        """The weights of replies with these claimed example counts; None: uniform.

        With ``weighting="num-examples"``, each claim is used as
        ``min(claim, example_cap)``: a node's count is its own claim, and only
        the operator's bound keeps one node from outweighing the others.
        """
        if self.weighting == "uniform":
            return None
        assert self.example_cap is not None  # checked on construction
        return np.minimum(np.asarray(num_examples, dtype=np.float64), self.example_cap)

    def apply(
        self,
        global_weights: NDArray[np.floating],
        reply_weights: Sequence[NDArray[np.floating]],
        num_examples: Sequence[float],
        validation_weights: NDArray[np.floating] | None = None,
    ) -> RuleOutcome:
        """Filter the replies and return the next global weights.

        Parameters
        ----------
        global_weights : NDArray
            The flat global weights ``w`` the replies were trained from.
        reply_weights : Sequence[NDArray]
            The kept replies' flat weights ``w_i``, in arrival order.
        num_examples : Sequence[float]
            Each reply's claimed example count (see :meth:`example_weights`).
        validation_weights : NDArray, optional
            The weights after the server's local training on its validation set.

        Returns
        -------
        RuleOutcome
            None weights (keep the model) when fewer than ``min_valid_replies``
            replies came in.
        """
        if len(reply_weights) < self.min_valid_replies:
            return RuleOutcome(weights=None, aggregation=None)
        with np.errstate(over="ignore"):  # an update that overflows is non-finite: rejected
            updates = [weights - global_weights for weights in reply_weights]
            validation = (
                validation_weights - global_weights if validation_weights is not None else None
            )
        aggregation = dstar_aggregate(
            updates,
            num_byzantine=self.num_byzantine,
            validation=validation,
            weights=self.example_weights(num_examples),
            variant=self.variant,  # type: ignore[arg-type]
            max_robust_z=self.max_robust_z,
            norm_test=self.norm_test,
            threshold_factor=self.threshold_factor,
            scale=self.deviation_scale,  # type: ignore[arg-type]
            center=self.center,  # type: ignore[arg-type]
            cap_accepted=self.cap_accepted,
            device=self.aggregation_device,
        )
        with np.errstate(over="ignore"):  # saturated below
            step = self.server_learning_rate * aggregation.aggregate
            next_weights = (global_weights + step.astype(global_weights.dtype)).astype(
                global_weights.dtype
            )
        # With replies near the dtype's largest value, w + eta * F can round (or, for
        # eta > 1, be carried) past it: the model saturates instead of turning to inf.
        limit = np.finfo(next_weights.dtype).max
        np.clip(next_weights, -limit, limit, out=next_weights)
        return RuleOutcome(weights=next_weights, aggregation=aggregation)

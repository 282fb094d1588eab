"""The dSTAR rule's settings, checked once, and its application to model weights.

Both Flower adapters (the message-API :class:`~dstar_flwr.DStar` and the legacy
:class:`~dstar_flwr.DStarLegacy`) hold one :class:`DStarRule`: it validates the
configuration up front (so a bad setting fails before the first round) and turns
the global weights plus the kept replies' weights into the next global weights.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .aggregation import CENTERS, SCALES, DStarAggregation, dstar_aggregate
from .first_k import resolve_first_k

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
    threshold_factor : float (default: 2.0)
        c: accept an update whose deviation is at most ``c * s``. A guess.
    deviation_scale : {"median", "validation", "max"} (default: "median")
        How the scale s of the deviations is estimated. A guess.
    center : {"ensemble", "clients"} (default: "ensemble")
        Median over the updates plus the validation update, or the updates alone.
    cap_accepted : bool (default: True)
        Accept at most ``k - f`` updates.
    server_learning_rate : float (default: 1.0)
        eta in ``w_next = w + eta * aggregate``.
    weighting : {"num-examples", "uniform"} (default: "num-examples")
        Weights of the accepted updates in the mean.
    weight_clip : float | None (default: 2.0)
        Clip each weight to this multiple of the accepted weights' median.
    max_num_examples : float (default: 1e9)
        Replies that claim more examples are refused as malformed.
    """

    num_byzantine: int = 0
    first_k: float = 0.8
    min_replies: int | None = None
    threshold_factor: float = 2.0
    deviation_scale: str = "median"
    center: str = "ensemble"
    cap_accepted: bool = True
    server_learning_rate: float = 1.0
    weighting: str = "num-examples"
    weight_clip: float | None = 2.0
    max_num_examples: float = 1e9

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
        if self.weight_clip is not None and not self.weight_clip >= 1:
            raise ValueError(f"weight_clip must be >= 1 or None, got {self.weight_clip}.")
        if not self.max_num_examples > 0:
            raise ValueError(f"max_num_examples must be > 0, got {self.max_num_examples}.")

    @property
    def min_valid_replies(self) -> int:
        """Valid replies a round needs to be aggregated."""
        return self.min_replies or 2 * self.num_byzantine + 1

    def k_for(self, num_sampled: int) -> int:
        """k for a round with ``num_sampled`` nodes, checked against ``2f + 1``."""
        k = resolve_first_k(self.first_k, num_sampled)
        if k < self.min_valid_replies:
            raise ValueError(
                f"first_k={self.first_k:g} gives k={k} of {num_sampled} sampled nodes, "
                f"below the {self.min_valid_replies} replies a round needs "
                f"(2f + 1 with f={self.num_byzantine}, or min_replies): sample more "
                "nodes, raise first_k or lower num_byzantine."
            )
        return k

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
            Each reply's example count.
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
            weights=num_examples if self.weighting == "num-examples" else None,
            threshold_factor=self.threshold_factor,
            scale=self.deviation_scale,  # type: ignore[arg-type]
            center=self.center,  # type: ignore[arg-type]
            cap_accepted=self.cap_accepted,
            weight_clip=self.weight_clip,
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

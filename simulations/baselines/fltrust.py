"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021) as a Flower message-API strategy.

The server computes a root update ``g_0`` from a small trusted data set (the
same server-side validation update DStar uses: the clients' local training run
from the global weights ``w`` on the server's trusted split, ``g_0 = w_v - w``).
Each client update ``u_i = w_i - w`` gets the trust score
``TS_i = ReLU(cos(u_i, g_0))`` and is rescaled to the norm of ``g_0``; the
aggregate is the trust-weighted mean of the rescaled updates::

    aggregate = sum_i TS_i * (||g_0|| / ||u_i||) * u_i / sum_i TS_i

(the zero update when every score is 0), and ``w_next = w + eta * aggregate``.
:func:`fltrust_aggregate` is the rule as a pure function; :class:`FLTrust`
wraps it as a strategy that subclasses Flower's ``FedAvg`` and, like Flower's
strategies, waits for every reply under the stock ``Strategy.start``.

Implemented here as a strategy from the paper's description; example counts
play no part in the rule (as in the paper). A zero update (or a zero root
update) has no direction: its score is 0.
"""

from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from numpy.typing import ArrayLike, NDArray

from dstar_flwr.interception import ReplyTransform, apply_transforms, configure_transforms
from dstar_flwr.records import (
    DEFAULT_MAX_NUM_EXAMPLES,
    ArrayLayout,
    flatten_record,
    flatten_trusted,
    layout_of,
    unflatten_vector,
)
from dstar_flwr.replies import ReplyStatus, check_train_replies, log_dropped
from dstar_flwr.report import merge_metric_records

RootTrainFn = Callable[[ArrayRecord], ArrayRecord]


def fltrust_aggregate(
    updates: Sequence[ArrayLike], root_update: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FLTrust's trust-weighted mean of norm-rescaled updates.

    Parameters
    ----------
    updates : Sequence[ArrayLike]
        The clients' updates ``u_i`` (flat, all of ``root_update``'s length).
    root_update : ArrayLike
        The server's root update ``g_0``.

    Returns
    -------
    tuple[NDArray[np.float64], NDArray[np.float64]]
        The aggregate update (float64; zeros when every trust score is 0) and the
        trust scores ``ReLU(cos(u_i, g_0))``, one per update, in order.

    Raises
    ------
    ValueError
        No updates, mismatched lengths, or NaN/Inf in an input.
    """
    root = np.asarray(root_update, dtype=np.float64).ravel()
    if not np.all(np.isfinite(root)):
        raise ValueError("the root update holds NaN or Inf.")
    if len(updates) == 0:
        raise ValueError("fltrust_aggregate needs at least one update.")
    root_norm = float(np.linalg.norm(root))
    trust = np.zeros(len(updates), dtype=np.float64)
    total = np.zeros_like(root)
    for i, update in enumerate(updates):
        vector = np.asarray(update, dtype=np.float64).ravel()
        if vector.shape != root.shape:
            raise ValueError(
                f"update {i} has {vector.size} values, the root update {root.size}: "
                "all updates must come from the same model."
            )
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"update {i} holds NaN or Inf; drop it before aggregating.")
        norm = float(np.linalg.norm(vector))
        if norm == 0.0 or root_norm == 0.0:
            continue
        cosine = min(1.0, float(np.dot(vector, root)) / (norm * root_norm))
        if cosine <= 0.0:
            continue
        trust[i] = cosine
        total += (cosine * root_norm / norm) * vector
    trust_sum = float(trust.sum())
    if trust_sum == 0.0:
        return np.zeros_like(root), trust
    return total / trust_sum, trust


class FLTrust(FedAvg):
    """FLTrust [Cao et al., NDSS 2021] as a message-API strategy.

    Each round: parse the replies (malformed and error replies are dropped with
    the reason in the log; they never end the run), compute the root update on
    the server's trusted data, score and rescale the updates with
    :func:`fltrust_aggregate`, and step ``w <- w + eta * aggregate``. The round
    waits for every reply under the stock ``Strategy.start`` as Flower's own
    strategies do.

    Parameters
    ----------
    validation_train_fn : Callable[[ArrayRecord], ArrayRecord]
        Runs the clients' local training from the given global arrays on the
        server's trusted (root) data set and returns the trained arrays; the
        root update is their difference to the global arrays. When it fails in a
        round, that round is skipped and the model kept (logged).
    server_learning_rate : float (default: 1.0)
        eta in ``w <- w + eta * aggregate``.
    max_num_examples : float (default: 1e9)
        Replies claiming more examples are dropped as malformed.
    reply_transforms : Sequence[ReplyTransform] (default: ())
        Applied in order to each round's checked replies before scoring (see
        :mod:`dstar_flwr.interception`), as DStar does.
    **fedavg_kwargs
        Any keyword of :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``,
        ``weighted_by_key``, ``train_metrics_aggr_fn``, ...).

    Notes
    -----
    Each round's MetricRecord holds the aggregated client metrics of the replies
    with positive trust and: ``num-received``, ``num-valid``, ``num-malformed``,
    ``num-failed``, ``num-zero-trust``, ``trust-mean``, ``trust-min``,
    ``trust-max``, ``root-update-norm``, ``skipped``, and the node-id lists
    ``received-node-ids`` (valid replies, aligned with ``trust-scores``),
    ``zero-trust-node-ids``, ``malformed-node-ids`` and ``failed-node-ids``.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        *,
        validation_train_fn: RootTrainFn,
        server_learning_rate: float = 1.0,
        max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
        reply_transforms: Sequence[ReplyTransform] = (),
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        if validation_train_fn is None or not callable(validation_train_fn):
            raise ValueError(
                "FLTrust needs validation_train_fn: the server's local training on its "
                "trusted data, which gives the root update."
            )
        if not np.isfinite(server_learning_rate) or server_learning_rate <= 0:
            raise ValueError(f"server_learning_rate must be > 0, got {server_learning_rate}.")
        self.validation_train_fn = validation_train_fn
        self.server_learning_rate = float(server_learning_rate)
        self.max_num_examples = max_num_examples
        self.reply_transforms = list(reply_transforms)
        self._global_arrays: ArrayRecord | None = None
        self._global_layout: ArrayLayout | None = None
        self.last_trust_scores: dict[int, float] = {}

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> FLTrust settings:")
        log(INFO, "\t│\t├── root update: the server's training on its trusted split")
        log(INFO, "\t│\t└── server lr: %g", self.server_learning_rate)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays, then configure the round as FedAvg does."""
        self._global_arrays = arrays
        self._global_layout = layout_of(arrays)
        configure_transforms(self.reply_transforms, server_round, arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _root_update(self, global_weights: NDArray[np.floating]) -> NDArray[np.floating] | None:
        assert self._global_arrays is not None and self._global_layout is not None
        try:
            trained = self.validation_train_fn(self._global_arrays)
            return flatten_trusted(trained, self._global_layout) - global_weights
        except Exception as error:  # noqa: BLE001 - a failing hook must not end the run
            log(
                WARNING,
                "fltrust: root update unavailable this round (%s: %s); model kept",
                type(error).__name__,
                error,
            )
            return None

    # pylint: disable=too-many-locals
    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Score the valid replies against the root update and aggregate them."""
        if self._global_arrays is None or self._global_layout is None:
            raise RuntimeError("configure_train must run before aggregate_train.")
        layout = self._global_layout
        node_ids: list[int] = []
        updates: list[NDArray[np.floating]] = []
        contents: list[RecordDict] = []
        malformed: list[int] = []
        failed: list[int] = []
        global_weights = flatten_record(self._global_arrays, layout)
        checked = check_train_replies(
            replies,
            layout,
            weighted_by_key=self.weighted_by_key,
            max_num_examples=self.max_num_examples,
        )
        for reply in apply_transforms(self.reply_transforms, server_round, checked):
            log_dropped(reply)
            if reply.status is ReplyStatus.FAILED:
                failed.append(reply.node_id)
            elif reply.status is ReplyStatus.MALFORMED:
                malformed.append(reply.node_id)
            else:
                node_ids.append(reply.node_id)
                updates.append(reply.weights - global_weights)
                contents.append(reply.message.content)

        root = self._root_update(global_weights) if updates else None
        if root is None:
            trust = np.zeros(0)
            node_ids_scored: list[int] = []
            arrays = None
            root_norm = float("nan")
        else:
            aggregate, trust = fltrust_aggregate(updates, root)
            node_ids_scored = node_ids
            step = self.server_learning_rate * aggregate
            new_weights = (global_weights + step).astype(global_weights.dtype)
            arrays = unflatten_vector(new_weights, layout)
            root_norm = float(np.linalg.norm(root))
        self.last_trust_scores = dict(zip(node_ids_scored, map(float, trust), strict=True))
        zero_trust = [n for n, score in zip(node_ids_scored, trust, strict=True) if score <= 0]
        report = MetricRecord(
            {
                "num-received": len(node_ids) + len(malformed) + len(failed),
                "num-valid": len(node_ids),
                "num-malformed": len(malformed),
                "num-failed": len(failed),
                "num-zero-trust": len(zero_trust),
                "trust-mean": float(np.mean(trust)) if trust.size else float("nan"),
                "trust-min": float(np.min(trust)) if trust.size else float("nan"),
                "trust-max": float(np.max(trust)) if trust.size else float("nan"),
                "root-update-norm": root_norm,
                "skipped": int(arrays is None),
                "received-node-ids": node_ids_scored,
                "trust-scores": [float(t) for t in trust],
                "zero-trust-node-ids": zero_trust,
                "malformed-node-ids": malformed,
                "failed-node-ids": failed,
            }
        )
        log(
            INFO,
            "fltrust round %s: %s valid, %s malformed, %s failed | trust mean %.4g min %.4g "
            "| zero trust: %s%s",
            server_round,
            len(node_ids),
            len(malformed),
            len(failed),
            report["trust-mean"],
            report["trust-min"],
            zero_trust or "-",
            " | SKIPPED, model kept" if arrays is None else "",
        )
        trusted = [c for c, score in zip(contents, trust, strict=False) if score > 0]
        return arrays, merge_metric_records(self._client_metrics(trusted), report)

    def _client_metrics(self, contents: list[RecordDict]) -> MetricRecord | None:
        if not contents:
            return None
        try:
            return self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        except Exception as error:  # noqa: BLE001 - client metrics are not essential
            log(WARNING, "fltrust: could not aggregate client train metrics: %s", error)
            return None

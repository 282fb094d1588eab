"""What a dSTAR round reports: who arrived, who was late, accepted, rejected."""

from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from .aggregation import DStarAggregation
from .first_k import CollectedRound


# pylint: disable=too-many-instance-attributes
@dataclass
class RoundReport:
    """One training round, as the strategy saw it.

    Node id lists hold Flower node ids; ``deviations`` is aligned with
    ``received_node_ids`` (the valid replies aggregated, in arrival order).
    ``k`` is the replies the round waited for (0: no round ran); a skipped
    round has its ``skip_reason``, and ``too_few_nodes`` when it was skipped
    before anything was sent because fewer nodes were sampled than it needs.
    """

    server_round: int
    num_sampled: int = 0
    k: int = 0
    received_node_ids: list[int] = field(default_factory=list)
    accepted_node_ids: list[int] = field(default_factory=list)
    rejected_node_ids: list[int] = field(default_factory=list)
    malformed_node_ids: list[int] = field(default_factory=list)
    failed_node_ids: list[int] = field(default_factory=list)
    late_node_ids: list[int] = field(default_factory=list)
    num_drained_late: int = 0
    deviations: list[float] = field(default_factory=list)
    validation_deviation: float | None = None
    threshold: float = float("nan")
    round_seconds: float = float("nan")
    skipped: bool = False
    skip_reason: str = ""
    too_few_nodes: bool = False

    def skip(self, reason: str, too_few_nodes: bool = False) -> None:
        """Mark the round skipped (the model kept), saying why."""
        self.skipped = True
        self.skip_reason = reason
        self.too_few_nodes = too_few_nodes

    def record_aggregation(self, node_ids: list[int], aggregation: DStarAggregation | None) -> None:
        """Fill in the filter's outcome for the valid replies of ``node_ids``."""
        self.received_node_ids = list(node_ids)
        if aggregation is None:
            self.skip(f"too few valid replies ({len(node_ids)})")
            return
        self.accepted_node_ids = [node_ids[i] for i in aggregation.accepted]
        self.rejected_node_ids = [node_ids[i] for i in aggregation.rejected]
        self.deviations = [float(d) for d in aggregation.deviations]
        self.validation_deviation = aggregation.validation_deviation
        self.threshold = aggregation.threshold

    def record_collection(self, k: int, collected: CollectedRound) -> None:
        """Fill in the first-k collection's figures: k, sampled, late, drained, seconds."""
        self.k = k
        self.num_sampled = collected.num_sampled
        self.late_node_ids = list(collected.late_node_ids)
        self.num_drained_late = sum(d.arrived for d in collected.drained)
        self.round_seconds = collected.seconds

    @property
    def num_received(self) -> int:
        """Replies the round received: valid, malformed and error replies."""
        return (
            len(self.received_node_ids) + len(self.malformed_node_ids) + len(self.failed_node_ids)
        )

    def _deviation_stats(self) -> tuple[float, float]:
        finite = [d for d in self.deviations if np.isfinite(d)]
        if not finite:
            return float("nan"), float("nan")
        return float(np.mean(finite)), float(np.max(finite))

    def scalars(self) -> dict[str, int | float]:
        """The round's numbers under kebab-case keys."""
        deviation_mean, deviation_max = self._deviation_stats()
        return {
            "num-sampled": self.num_sampled,
            "k": self.k,
            "num-received": self.num_received,
            "num-failed": len(self.failed_node_ids),
            "num-late": len(self.late_node_ids),
            "num-malformed": len(self.malformed_node_ids),
            "num-accepted": len(self.accepted_node_ids),
            "num-rejected": len(self.rejected_node_ids),
            "num-drained-late": self.num_drained_late,
            "deviation-mean": deviation_mean,
            "deviation-max": deviation_max,
            "validation-deviation": (
                float("nan") if self.validation_deviation is None else self.validation_deviation
            ),
            "threshold": float(self.threshold),
            "round-seconds": float(self.round_seconds),
            "skipped": int(self.skipped),
            "skipped-too-few-nodes": int(self.too_few_nodes),
        }

    def node_lists(self) -> dict[str, list[int]]:
        """The round's node id lists under kebab-case keys."""
        return {
            "accepted-node-ids": self.accepted_node_ids,
            "rejected-node-ids": self.rejected_node_ids,
            "malformed-node-ids": self.malformed_node_ids,
            "failed-node-ids": self.failed_node_ids,
            "late-node-ids": self.late_node_ids,
        }

    def to_metric_record(self) -> MetricRecord:
        """The report as a MetricRecord (message API)."""
        record = MetricRecord(self.scalars())
        for key, node_ids in self.node_lists().items():
            record[key] = [int(node_id) for node_id in node_ids]
        return record

    def to_legacy_metrics(self) -> dict[str, int | float | str]:
        """The report as legacy ``Metrics`` (lists become comma-separated strings)."""
        metrics: dict[str, int | float | str] = dict(self.scalars())
        for key, node_ids in self.node_lists().items():
            metrics[key] = ",".join(str(node_id) for node_id in node_ids)
        metrics["skip-reason"] = self.skip_reason
        return metrics

    def log(self) -> None:
        """Log the round in one block."""
        scalars = self.scalars()
        log(
            INFO,
            "dstar round %s: %s sampled, k %s, %s valid, %s malformed, %s failed, %s late | "
            "accepted %s, rejected %s | deviation mean %.4g max %.4g, threshold %.4g | %.2fs%s",
            self.server_round,
            self.num_sampled,
            self.k,
            len(self.received_node_ids),
            len(self.malformed_node_ids),
            len(self.failed_node_ids),
            len(self.late_node_ids),
            len(self.accepted_node_ids),
            len(self.rejected_node_ids),
            scalars["deviation-mean"],
            scalars["deviation-max"],
            scalars["threshold"],
            self.round_seconds,
            f" | SKIPPED ({self.skip_reason}), model kept" if self.skipped else "",
        )
        if self.rejected_node_ids:
            log(INFO, "\t├── rejected nodes: %s", self.rejected_node_ids)
        if self.malformed_node_ids:
            log(INFO, "\t├── malformed replies from nodes: %s", self.malformed_node_ids)
        if self.failed_node_ids:
            log(INFO, "\t├── failed nodes (error replies): %s", self.failed_node_ids)
        if self.late_node_ids:
            log(INFO, "\t└── late nodes: %s", self.late_node_ids)


@dataclass
class AggregatedRound:
    """A training round's outcome: the new global arrays, client metrics and report.

    Attributes
    ----------
    arrays : ArrayRecord | None
        The new global arrays; None keeps the model (a skipped round).
    client_metrics : MetricRecord | None
        The accepted replies' aggregated client metrics.
    report : RoundReport
        What the round saw and decided.
    """

    arrays: ArrayRecord | None
    client_metrics: MetricRecord | None
    report: RoundReport

    def metric_record(self) -> MetricRecord:
        """The client metrics and the report in one MetricRecord (the report's keys win)."""
        return merge_metric_records(self.client_metrics, self.report.to_metric_record())


def merge_metric_records(first: MetricRecord | None, second: MetricRecord) -> MetricRecord:
    """One MetricRecord with ``first``'s items, then ``second``'s (which win on a clash)."""
    merged = MetricRecord()
    for record in (first, second):
        for key, value in (record or MetricRecord()).items():
            merged[key] = value
    return merged

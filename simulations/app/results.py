"""A simulation's per-round record: table rows, summary rates and the JSON file."""

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO

from flwr.app import MetricRecord

from dstar_flwr.checkpoint import write_atomically
from simulations.app.diagnostics import filter_precision_recall


# pylint: disable=too-many-instance-attributes
@dataclass
class RoundRow:
    """One round of a run, with node roles resolved to partition ids.

    ``received_partitions`` are the valid replies that reached the aggregation
    (DStar: its first k valid ones), ``rejected_partitions`` those the strategy
    left out of the average (DStar: its filter; FLTrust: zero trust).
    ``cosine_to_honest``, ``rho`` and ``relative_error`` compare the round's
    aggregate with the mean honest update that reached the aggregation (see
    :mod:`simulations.app.diagnostics`); ``byzantine_precision`` and
    ``byzantine_recall`` score the rejections of DStar and FLTrust (NaN for the
    other strategies, and where undefined).
    """

    server_round: int
    test_accuracy: float = math.nan
    test_loss: float = math.nan
    round_seconds: float = math.nan
    num_accepted: int = 0
    received_partitions: list[int] = field(default_factory=list)
    rejected_partitions: list[int] = field(default_factory=list)
    late_partitions: list[int] = field(default_factory=list)
    malformed_partitions: list[int] = field(default_factory=list)
    failed_partitions: list[int] = field(default_factory=list)
    attacked_partitions: list[int] = field(default_factory=list)
    guard_dropped_partitions: list[int] = field(default_factory=list)
    skipped: bool = False
    cosine_to_honest: float = math.nan
    rho: float = math.nan
    relative_error: float = math.nan
    byzantine_precision: float = math.nan
    byzantine_recall: float = math.nan

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "RoundRow":
        """A row from its :func:`dataclasses.asdict` form; null floats are NaN."""
        values = {spec.name: data[spec.name] for spec in fields(cls) if spec.name in data}
        for spec in fields(cls):
            if isinstance(spec.default, float) and values.get(spec.name, 0.0) is None:
                values[spec.name] = math.nan
        return cls(**values)  # type: ignore[arg-type]

    def score_rejections(self, byzantine_partitions: set[int]) -> None:
        """Set the precision and recall of the rejections on the Byzantine replies."""
        self.byzantine_precision, self.byzantine_recall = filter_precision_recall(
            self.received_partitions, self.rejected_partitions, byzantine_partitions
        )


@dataclass
class NodeRoles:
    """The roll call's answer: node id -> partition id, and who is who."""

    partition_of: dict[int, int] = field(default_factory=dict)
    byzantine: set[int] = field(default_factory=set)
    stragglers: set[int] = field(default_factory=set)

    def partitions(self, node_ids: object) -> list[int]:
        """Partition ids of ``node_ids`` (unknown nodes as -1), sorted."""
        if not isinstance(node_ids, list):
            return []
        return sorted(self.partition_of.get(int(n), -1) for n in node_ids)


def row_from_dstar_metrics(server_round: int, metrics: MetricRecord, roles: NodeRoles) -> RoundRow:
    """A RoundRow from DStar's per-round MetricRecord."""
    accepted = roles.partitions(metrics.get("accepted-node-ids", []))
    rejected = roles.partitions(metrics.get("rejected-node-ids", []))
    return RoundRow(
        server_round=server_round,
        round_seconds=float(metrics.get("round-seconds", math.nan)),  # type: ignore[arg-type]
        num_accepted=len(accepted),
        received_partitions=sorted(accepted + rejected),
        rejected_partitions=rejected,
        late_partitions=roles.partitions(metrics.get("late-node-ids", [])),
        malformed_partitions=roles.partitions(metrics.get("malformed-node-ids", [])),
        failed_partitions=roles.partitions(metrics.get("failed-node-ids", [])),
        skipped=bool(metrics.get("skipped", 0)),
    )


def row_from_fltrust_metrics(
    server_round: int, metrics: MetricRecord, roles: NodeRoles, round_seconds: float
) -> RoundRow:
    """A RoundRow from FLTrust's per-round MetricRecord (zero trust counts as rejected)."""
    received = roles.partitions(metrics.get("received-node-ids", []))
    rejected = roles.partitions(metrics.get("zero-trust-node-ids", []))
    return RoundRow(
        server_round=server_round,
        round_seconds=round_seconds,
        num_accepted=len(received) - len(rejected),
        received_partitions=received,
        rejected_partitions=rejected,
        malformed_partitions=roles.partitions(metrics.get("malformed-node-ids", [])),
        failed_partitions=roles.partitions(metrics.get("failed-node-ids", [])),
        skipped=bool(metrics.get("skipped", 0)),
    )


def filter_rates(rows: list[RoundRow], byzantine: set[int]) -> dict[str, float]:
    """How often the filter rejected Byzantine and honest replies it received.

    A Byzantine rate of 1.0 means every Byzantine reply among the first k was
    rejected; the honest rate is the fraction of honest replies among the
    first k that were rejected.
    """
    byzantine_seen = byzantine_rejected = honest_seen = honest_rejected = 0
    for row in rows:
        rejected = set(row.rejected_partitions)
        for partition in row.received_partitions:
            if partition in byzantine:
                byzantine_seen += 1
                byzantine_rejected += partition in rejected
            else:
                honest_seen += 1
                honest_rejected += partition in rejected
    return {
        "byzantine-received": byzantine_seen,
        "byzantine-rejection-rate": (
            byzantine_rejected / byzantine_seen if byzantine_seen else math.nan
        ),
        "honest-received": honest_seen,
        "honest-rejection-rate": honest_rejected / honest_seen if honest_seen else math.nan,
    }


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean(values: list[float]) -> float:
    finite = _finite(values)
    return sum(finite) / len(finite) if finite else math.nan


def pooled_precision_recall(rows: list[RoundRow], byzantine: set[int]) -> dict[str, float]:
    """Precision and recall on Byzantine replies over all rounds of a rejecting strategy.

    Pooled over the rows whose precision or recall is defined (DStar's and
    FLTrust's rounds); NaN for the other strategies and where undefined.
    """
    scored = [
        row
        for row in rows
        if math.isfinite(row.byzantine_precision) or math.isfinite(row.byzantine_recall)
    ]
    hits = rejected = byzantine_received = 0
    for row in scored:
        received = set(row.received_partitions)
        rejected_set = set(row.rejected_partitions) & received
        byzantine_set = byzantine & received
        hits += len(rejected_set & byzantine_set)
        rejected += len(rejected_set)
        byzantine_received += len(byzantine_set)
    return {
        "byzantine-precision": hits / rejected if rejected else math.nan,
        "byzantine-recall": hits / byzantine_received if byzantine_received else math.nan,
    }


def summarize(rows: list[RoundRow], roles: NodeRoles) -> dict[str, float]:
    """Final accuracy, mean round time, filter rates and resilience of a run.

    ``mean-cosine-to-honest`` and ``mean-relative-error`` average the rounds where
    they are defined; ``min-rho`` is the worst round's rho.
    """
    times = [row.round_seconds for row in rows if math.isfinite(row.round_seconds)]
    final = rows[-1] if rows else RoundRow(server_round=0)
    byzantine = {roles.partition_of[n] for n in roles.byzantine}
    rhos = _finite([row.rho for row in rows])
    summary = {
        "final-test-accuracy": final.test_accuracy,
        "final-test-loss": final.test_loss,
        "mean-round-seconds": sum(times) / len(times) if times else math.nan,
        "rounds-skipped": sum(row.skipped for row in rows),
    }
    summary.update(filter_rates(rows, byzantine))
    summary.update(
        {
            "mean-cosine-to-honest": _mean([row.cosine_to_honest for row in rows]),
            "min-rho": min(rhos) if rhos else math.nan,
            "mean-relative-error": _mean([row.relative_error for row in rows]),
        }
    )
    summary.update(pooled_precision_recall(rows, byzantine))
    return summary


def format_row(row: RoundRow) -> str:
    """A compact, fixed-width line for the per-round table."""

    def ids(values: list[int]) -> str:
        return ",".join(map(str, values)) or "-"

    return (
        f"{row.server_round:>5} | {row.test_accuracy:>8.4f} | {row.test_loss:>7.4f} | "
        f"{row.round_seconds:>7.2f} | {row.num_accepted:>3} | {row.cosine_to_honest:>6.3f} | "
        f"{row.rho:>6.3f} | {ids(row.rejected_partitions):<9} | "
        f"{ids(row.late_partitions):<9}{' | skipped' if row.skipped else ''}"
    )


TABLE_HEADER = (
    "round | test-acc | loss    | round-s | acc | cos-H  | rho    | rejected  | late"
    "        (nodes by partition id; cos-H, rho: aggregate vs. honest mean)"
)


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    return value


def write_results(
    path: Path,
    *,
    run_config: dict[str, object],
    roles: NodeRoles,
    rows: list[RoundRow],
    resumed_after_round: int | None = None,
    server_costs: list[dict[str, object]] | None = None,
) -> Path:
    """Write the run's results as JSON, atomically; returns the absolute path.

    Top level: ``strategy``, ``threat-model`` and ``attack`` (copied from the
    run config for convenience), ``config`` (the whole run config),
    ``summary``, ``byzantine-partitions``, ``straggler-partitions``,
    ``resumed-after-round`` (the checkpoint's round a resumed run continued
    after; null for a run from round 1) and ``rounds`` (one :class:`RoundRow`
    each, restored rounds included), and ``server-costs``: per round this
    ServerApp ran, its CPU seconds by step and its memory (see
    :mod:`simulations.app.server_costs`; restored rounds have none). NaN and
    Inf are written as null.
    """
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "strategy": run_config.get("strategy"),
        "threat-model": run_config.get("threat-model"),
        "attack": run_config.get("attack"),
        "config": run_config,
        "summary": summarize(rows, roles),
        "byzantine-partitions": sorted(roles.partition_of[n] for n in roles.byzantine),
        "straggler-partitions": sorted(roles.partition_of[n] for n in roles.stragglers),
        "resumed-after-round": resumed_after_round,
        "rounds": [asdict(row) for row in rows],
        "server-costs": server_costs or [],
    }
    text = json.dumps(_json_safe(document), indent=2)

    def write(stream: IO[bytes]) -> None:
        stream.write(text.encode("utf-8"))

    write_atomically(path, write)
    return path

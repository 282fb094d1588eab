"""The roll call: ask every node which partition it holds, and leave nothing behind.

The harness maps node ids to partitions once per run, before the first round,
with a ``query`` message to every node. Flower's ``Grid.send_and_receive`` would
give up at its timeout and leave the unanswered queries (Flower's default TTL is
12 hours) in the SuperLink's state, where a reply that comes after the timeout
stays until the run ends. Here the queries expire with the roll call, and one
last pull after the deadline resolves them, so that a slow node's late answer is
neither waited for nor left in the SuperLink's state.
"""

from logging import INFO, WARNING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from dstar_flwr.first_k import FirstKCollector

ROLL_CALL_TIMEOUT = 120.0
POLL_INTERVAL = 0.2  # seconds between pulls (Flower's send_and_receive waits 3 s)


def roll_call(
    grid: Grid, timeout: float = ROLL_CALL_TIMEOUT, poll_interval: float = POLL_INTERVAL
) -> dict[int, tuple[int, int]]:
    """Ask every node for its partition: node id -> (partition id, number of partitions).

    Parameters
    ----------
    grid : Grid
        The run's Grid.
    timeout : float (default: 120.0)
        Seconds to wait for the answers; also the queries' TTL.
    poll_interval : float (default: 0.2)
        Seconds between pulls.

    Returns
    -------
    dict[int, tuple[int, int]]
        The nodes that answered in time with a partition, and their partitions. A
        node that failed, answered without one or did not answer is logged and left out.
    """
    node_ids = list(grid.get_node_ids())
    messages = [
        Message(RecordDict(), dst_node_id=node_id, message_type="query", ttl=timeout)
        for node_id in node_ids
    ]
    collector = FirstKCollector(grid, poll_interval=poll_interval)
    answered = collector.collect(messages, server_round=0, k=len(messages), timeout=timeout)
    # The queries' TTL has passed: this pull resolves the unanswered ones in the SuperLink.
    collector.drain(wait=False)
    partitions: dict[int, tuple[int, int]] = {}
    for checked in (*answered.kept, *answered.invalid):
        reply = checked.message
        if reply.has_error():
            log(WARNING, "roll call: node %s failed: %s", checked.node_id, reply.error)
            continue
        metrics = reply.content.metric_records.get("metrics")
        if metrics is None or "partition-id" not in metrics or "num-partitions" not in metrics:
            log(WARNING, "roll call: node %s answered without a partition", checked.node_id)
            continue
        partitions[checked.node_id] = (
            int(metrics["partition-id"]),  # type: ignore[arg-type]
            int(metrics["num-partitions"]),  # type: ignore[arg-type]
        )
    if answered.late_node_ids:
        log(
            WARNING,
            "roll call: nodes %s did not answer within %.0f s",
            sorted(answered.late_node_ids),
            timeout,
        )
    log(
        INFO,
        "roll call: %s of %s nodes answered in %.1f s",
        len(partitions),
        len(node_ids),
        answered.seconds,
    )
    return partitions

"""Reading a SuperLink's SQLite state (read-only): what a run left, whether a node is offline.

A run's messages should leave the SuperLink as their replies are pulled;
these functions let the deployment tests and benchmarks count what is left
without going through Flower's API (which would trigger the SuperLink's own
clean-up).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

# The SuperLink tables (Flower 1.42) whose rows belong to a run.
RUN_TABLES = ("message_ins", "message_res", "message", "task_message", "run_objects")
MESSAGE_TABLES = ("message_ins", "message_res")
_MESSAGE_COLUMNS = (
    "message_id, reply_to_message_id, message_type, group_id, src_node_id, "
    "dst_node_id, created_at, delivered_at, ttl"
)


def sint64(value: int) -> int:
    """``value`` as the SuperLink stores ids: a signed 64-bit integer."""
    return value - 2**64 if value >= 2**63 else value


def _connect(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)


def run_state(database: Path, run_id: int, tables: Iterable[str] = RUN_TABLES) -> dict[str, int]:
    """The run's rows in each of ``tables`` that the state has."""
    with _connect(database) as connection:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        present = {row[0] for row in connection.execute(query)}
        return {
            table: connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (sint64(run_id),)
            ).fetchone()[0]
            for table in tables
            if table in present
        }


def run_messages(database: Path, run_id: int) -> list[dict[str, object]]:
    """The run's messages left in the state, one dict per row (for diagnostics)."""
    with _connect(database) as connection:
        connection.row_factory = sqlite3.Row
        return [
            {"table": table, **dict(row)}
            for table in MESSAGE_TABLES
            for row in connection.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM {table} WHERE run_id = ?", (sint64(run_id),)
            )
        ]


def node_offline(database: Path, node_id: int, now: float | None = None) -> bool:
    """Whether the SuperLink counts the node offline (its heartbeat deadline has passed)."""
    with _connect(database) as connection:
        row = connection.execute(
            "SELECT status, online_until FROM node WHERE node_id = ?", (sint64(node_id),)
        ).fetchone()
    if row is None:
        return False
    status, online_until = row
    return status != "online" or (online_until or 0.0) < (time.time() if now is None else now)

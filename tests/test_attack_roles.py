"""Which partitions are Byzantine: by count, fraction or explicit ids, and the roll call."""

from __future__ import annotations

import time

import pytest
from flwr.app import DEFAULT_TTL, Message, Metadata, RecordDict

from clients.client_app import app
from clients.roles import (
    ByzantineSelection,
    byzantine_partitions,
    node_role,
    role_from_run_config,
)
from clients.run_config import parse_partition_ids
from simulations.app.roll_call import roll_call
from simulations.app.server_app import assign_roles
from simulations.federation.inprocess import InProcessGrid
from tests.node_support import node_context, run_config


def test_by_count_fraction_and_ids() -> None:
    assert byzantine_partitions(10, 3) == {0, 1, 2}
    assert byzantine_partitions(10, fraction=0.2) == {0, 1}
    assert byzantine_partitions(10, fraction=0.25) == {0, 1, 2}  # 2.5 rounds up
    assert byzantine_partitions(10, fraction=0.04) == set()  # 0.4 rounds down
    assert byzantine_partitions(4, fraction=1.0) == {0, 1, 2, 3}
    assert byzantine_partitions(10, partition_ids="9, 3,5") == {3, 5, 9}
    assert byzantine_partitions(10, partition_ids=[4]) == {4}
    assert byzantine_partitions(10) == set()


def test_parse_partition_ids() -> None:
    assert parse_partition_ids("") == () and parse_partition_ids("  ") == ()
    assert parse_partition_ids("5,0, 3") == (0, 3, 5)
    assert parse_partition_ids("0,,1,") == (0, 1)  # empty entries are skipped
    assert parse_partition_ids(3) == (3,)  # `--run-config byzantine-partitions=3` gives an int
    assert parse_partition_ids("1,4", "k", 5) == (1, 4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: ByzantineSelection(count=2, fraction=0.2),
            r"sets num-byzantine-nodes = 2 and byzantine-fraction = 0.2: choose the Byzantine "
            "partitions one way only; keep one of them",
        ),
        (
            lambda: ByzantineSelection(count=1, partition_ids="0,3"),
            'num-byzantine-nodes = 1 and byzantine-partitions = "0,3"',
        ),
        (
            lambda: ByzantineSelection(fraction=0.5, partition_ids=(1,)),
            "byzantine-fraction = 0.5 and byzantine-partitions",
        ),
        (
            lambda: ByzantineSelection(fraction=1.5),
            r"byzantine-fraction must be a number in \[0, 1\]",
        ),
        (lambda: ByzantineSelection(count=-1), "num-byzantine-nodes must be an integer >= 0"),
        (lambda: parse_partition_ids("0,a"), "'a' is not a partition id"),
        (lambda: parse_partition_ids("0;1"), "'0;1' is not a partition id"),
        (lambda: parse_partition_ids("2,2"), "lists partition 2 twice"),
        (lambda: parse_partition_ids("-1"), "partition ids are >= 0"),
        (lambda: parse_partition_ids("1,5", "k", 5), r"names partition 5.*0\.\.4"),
        (lambda: parse_partition_ids(3.0), 'must be a string of partition ids such as "0,3,5"'),
        (lambda: parse_partition_ids(True), 'must be a string of partition ids such as "0,3,5"'),
        (lambda: byzantine_partitions(4, partition_ids="1,7"), r"names \[7\].*0\.\.3"),
        (lambda: byzantine_partitions(4, 5), r"num-byzantine-nodes must be in 0\.\.4"),
    ],
)
def test_bad_selection_says_what_to_change(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_selection_from_run_config() -> None:
    config = run_config(byzantine_partitions="1,3")
    assert ByzantineSelection.from_run_config(config).partitions(4) == {1, 3}
    with pytest.raises(ValueError, match="one way only"):
        ByzantineSelection.from_run_config(
            run_config(num_byzantine_nodes=1, byzantine_fraction=0.5)
        )
    with pytest.raises(ValueError, match="'byzantine-partitions' must be a string"):
        ByzantineSelection.from_run_config(run_config() | {"byzantine-partitions": 3.0})
    single = ByzantineSelection.from_run_config(run_config() | {"byzantine-partitions": 3})
    assert single.partition_ids == (3,)


def test_node_role_has_rank_and_count() -> None:
    roles = [node_role(p, 6, 0, 1, byzantine_ids="1,4,5") for p in range(6)]
    assert [r.byzantine_rank for r in roles] == [-1, 0, -1, -1, 1, 2]
    assert all(r.num_byzantine == 3 for r in roles)
    assert [r.is_straggler for r in roles] == [False] * 5 + [True]
    assert node_role(1, 10, 0, 0, byzantine_fraction=0.3).byzantine_rank == 1


def query(partition_id: int, config: dict[str, object]) -> dict[str, object]:
    metadata = Metadata(
        run_id=1,
        message_id="query-message",
        src_node_id=0,
        dst_node_id=100 + partition_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type="query",
    )
    reply = app(
        Message(content=RecordDict(), metadata=metadata), node_context(partition_id, 4, config)
    )
    return dict(reply.content["metrics"])


@pytest.mark.parametrize(
    ("overrides", "byzantine"),
    [
        ({"byzantine_partitions": "1,3"}, {1, 3}),
        ({"byzantine_fraction": 0.5}, {0, 1}),
        ({"num_byzantine_nodes": 1}, {0}),
    ],
)
def test_the_roll_call_takes_the_byzantine_partitions_from_the_run_config(
    overrides: dict, byzantine: set[int]
) -> None:
    config = run_config(**overrides)
    assert all("is-byzantine" not in query(p, config) for p in range(4))  # nodes are not asked
    assert {p for p in range(4) if role_from_run_config(config, p, 4).is_byzantine} == byzantine
    grid = InProcessGrid(config, 4)
    roles = assign_roles(roll_call(grid), config)
    assert roles.partitions(sorted(roles.byzantine)) == sorted(byzantine)

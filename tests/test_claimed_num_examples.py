"""Example-count inflation: Byzantine nodes report run-config ``claimed-num-examples``."""

from __future__ import annotations

import pytest

from clients.client_app import train_reply_content
from clients.node import reported_num_examples, run_train_round
from tests.node_support import global_arrays, node_settings

CLAIM = 1_000_000


@pytest.mark.parametrize(
    ("threat_model", "attack"), [("client", "sign-flip"), ("omniscient", "tailored-krum")]
)
def test_byzantine_train_reply_carries_the_claim(threat_model: str, attack: str) -> None:
    overrides = {
        "num_byzantine_nodes": 1,
        "attack": attack,
        "threat_model": threat_model,
        "claimed_num_examples": CLAIM,
    }
    byzantine = node_settings(0, 4, **overrides)
    result = run_train_round(byzantine, global_arrays(), 1)
    assert result.num_examples == CLAIM
    content = train_reply_content(byzantine, result, 1)
    assert content["metrics"]["num-examples"] == CLAIM  # type: ignore[index]
    honest = node_settings(1, 4, **overrides)
    honest_result = run_train_round(honest, global_arrays(), 1)
    assert 0 < honest_result.num_examples < CLAIM  # honest nodes report their true count


def test_zero_claim_reports_the_true_count() -> None:
    byzantine = node_settings(0, 4, num_byzantine_nodes=1, attack="sign-flip")
    assert byzantine.attack.claimed_num_examples == 0
    assert reported_num_examples(byzantine, 37) == 37
    claiming = node_settings(0, 4, num_byzantine_nodes=1, claimed_num_examples=5)
    assert reported_num_examples(claiming, 37) == 5
    assert reported_num_examples(node_settings(1, 4, claimed_num_examples=5), 37) == 37

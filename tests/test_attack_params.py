"""Attack parameters from the run config: validation, attack lists, round-robin assignment."""

from __future__ import annotations

import pytest
from flwr.common.config import get_fused_config_from_dir

from clients.attack_vectors import (
    AttackParams,
    all_attack_names,
    attack_kind,
    check_attack_name,
    get_vector_attack,
    parse_attack_names,
)
from examples.custom_attack import noisy_mean
from tests.node_support import PROJECT_DIR, run_config

ATTACK_KEYS = {
    "num-byzantine-nodes", "byzantine-fraction", "byzantine-partitions", "attack",
    "threat-model", "attack-scale", "gaussian-mode", "alie-z", "ipm-epsilon",
    "min-max-direction", "min-sum-bound", "non-finite-value", "non-finite-fraction",
    "malformed-kind", "attack-estimation-batches", "tailored-direction", "tailored-surrogates",
    "tailored-quorum", "tailored-trim-beta", "claimed-num-examples",
}  # fmt: skip


def test_pyproject_has_every_attack_key_and_valid_defaults() -> None:
    defaults = dict(get_fused_config_from_dir(PROJECT_DIR, {}))
    assert set(defaults) >= ATTACK_KEYS
    params = AttackParams.from_run_config(defaults)
    assert params.attacks == ("gaussian",)
    assert params == AttackParams(attacks=("gaussian",))  # pyproject defaults = class defaults


def test_from_run_config_reads_every_key() -> None:
    config = run_config(
        attack="alie, ipm ,examples.custom_attack:noisy_mean",
        threat_model="omniscient",
        attack_scale=2,
        gaussian_mode="scaled",
        alie_z=1.5,
        ipm_epsilon=100,
        min_max_direction="std",
        min_sum_bound="min",
        non_finite_value="inf",
        non_finite_fraction=0.5,
        malformed_kind="wrong-names",
        attack_estimation_batches=4,
        tailored_direction="sign",
        tailored_surrogates=7,
        tailored_quorum=5,
        tailored_trim_beta=0.1,
        claimed_num_examples=10_000,
    )
    assert AttackParams.from_run_config(config) == AttackParams(
        attacks=("alie", "ipm", "examples.custom_attack:noisy_mean"),
        attack_scale=2.0,
        gaussian_mode="scaled",
        alie_z=1.5,
        ipm_epsilon=100.0,
        min_max_direction="std",
        min_sum_bound="min",
        non_finite_value="inf",
        non_finite_fraction=0.5,
        malformed_kind="wrong-names",
        estimation_batches=4,
        threat_model="omniscient",
        tailored_direction="sign",
        tailored_surrogates=7,
        tailored_quorum=5,
        tailored_trim_beta=0.1,
        claimed_num_examples=10_000,
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"attacks": ("Gaussian",)}, "unknown attack 'Gaussian'.*gaussian.*label-flip.*malformed"),
        ({"attacks": "alie,,ipm"}, "empty entry"),
        ({"attacks": ()}, "at least one attack"),
        ({"attacks": ("nope.module:f",)}, "cannot import module 'nope.module'"),
        ({"attacks": ("examples.custom_attack:missing",)}, "has no 'missing'"),
        ({"attack_scale": -1.0}, "attack-scale must be a finite number >= 0"),
        ({"attack_scale": float("nan")}, "attack-scale"),
        ({"gaussian_mode": "normal"}, "gaussian-mode.*fixed, scaled"),
        ({"alie_z": float("inf")}, "alie-z must be a finite number"),
        ({"ipm_epsilon": 0.0}, r"ipm-epsilon must be a finite number > 0 \(presets 0.1 and 100\)"),
        ({"min_max_direction": "unit_vec"}, "min-max-direction.*unit, sign, std"),
        ({"min_sum_bound": "mean"}, "min-sum-bound.*max, min"),
        ({"non_finite_value": "NaN"}, "non-finite-value.*nan, inf"),
        ({"non_finite_fraction": 0.0}, r"non-finite-fraction must be in \(0, 1\]"),
        ({"non_finite_fraction": 1.5}, "non-finite-fraction"),
        ({"malformed_kind": "garbage"}, "malformed-kind.*wrong-shape"),
        ({"estimation_batches": 0}, "attack-estimation-batches must be an integer >= 1"),
        ({"estimation_batches": 2.0}, "attack-estimation-batches must be an integer"),
        ({"threat_model": "server"}, "threat-model.*client, omniscient"),
        ({"tailored_direction": "-unit"}, "tailored-direction.*unit, sign, std"),
        ({"tailored_surrogates": 0}, "tailored-surrogates must be an integer >= 1"),
        ({"tailored_quorum": -1}, "tailored-quorum must be an integer >= 0"),
        ({"tailored_quorum": 6}, "tailored-quorum = 6 exceeds tailored-surrogates = 5"),
        ({"tailored_trim_beta": 0.5}, r"tailored-trim-beta must be in \[0, 0.5\)"),
        ({"claimed_num_examples": -5}, "claimed-num-examples must be an integer >= 0"),
        ({"claimed_num_examples": 1.5}, "claimed-num-examples must be an integer"),
        (
            {"attacks": ("tailored-dstar",)},
            "tailored-dstar under threat-model 'client'.*attack-estimation-batches to 2",
        ),
        (
            {"attacks": ("gaussian", "min-max")},
            "min-max under threat-model 'client'.*set attack-estimation-batches to 2 or more",
        ),
    ],
)
def test_bad_params_say_what_to_change(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttackParams(**params)


def test_spread_attacks_need_estimation_batches_only_at_the_client() -> None:
    AttackParams(attacks=("alie",), estimation_batches=2)
    AttackParams(attacks=("alie", "mimic"), threat_model="omniscient")


def test_run_config_types_are_checked() -> None:
    with pytest.raises(ValueError, match="'attack-estimation-batches' must be an integer"):
        AttackParams.from_run_config(run_config(attack_estimation_batches=2.0))
    with pytest.raises(ValueError, match="'attack' must be a string"):
        AttackParams.from_run_config(run_config() | {"attack": 3})
    with pytest.raises(ValueError, match="missing 'alie-z'"):
        AttackParams.from_run_config({k: v for k, v in run_config().items() if k != "alie-z"})


def test_round_robin_over_the_byzantine_partitions_in_id_order() -> None:
    params = AttackParams(attacks=("alie", "ipm", "sign-flip"), estimation_batches=2)
    assert [params.attack_for_rank(r) for r in range(5)] == [
        "alie", "ipm", "sign-flip", "alie", "ipm",
    ]  # fmt: skip
    assert params.assign({7, 1, 4, 9}) == {1: "alie", 4: "ipm", 7: "sign-flip", 9: "alie"}
    with pytest.raises(ValueError, match="rank"):
        params.attack_for_rank(-1)


def test_names_kinds_and_dotted_paths() -> None:
    assert parse_attack_names(" alie ,ipm") == ("alie", "ipm")
    assert attack_kind("label-flip") == "data"
    assert attack_kind("malformed") == "reply"
    assert attack_kind("alie") == attack_kind("examples.custom_attack:noisy_mean") == "vector"
    assert "label-flip" in all_attack_names() and "min-sum" in all_attack_names()
    check_attack_name("examples.custom_attack:noisy_mean")
    assert get_vector_attack("examples.custom_attack:noisy_mean") is noisy_mean

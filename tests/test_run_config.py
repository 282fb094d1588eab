"""Each run-config key is declared once (clients.run_config); pyproject, docs, readers agree."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from clients.attack_vectors import AttackParams, all_attack_names
from clients.data import DataConfig
from clients.datasets import DATASET_NAMES
from clients.faults import FaultConfig
from clients.latency import LATENCY_MODELS, LatencyConfig
from clients.malformed import MALFORMED_KINDS
from clients.partitioning import PARTITIONINGS
from clients.roles import ByzantineSelection
from clients.run_config import (
    NODE_CONFIG,
    RUN_CONFIG_KEYS,
    RUN_CONFIG_SECTIONS,
    Key,
    main,
    markdown,
    read,
    read_as,
    read_settings,
    setting,
    settings_of,
)
from clients.training import LocalTrainingConfig
from simulations.app.experiment import ExperimentConfig

PROJECT_DIR = Path(__file__).resolve().parents[1]
DOCS = PROJECT_DIR / "docs" / "configuration.md"
CONFIG_CLASSES = (
    DataConfig,
    LocalTrainingConfig,
    ByzantineSelection,
    AttackParams,
    LatencyConfig,
    FaultConfig,
    ExperimentConfig,
)
# Keys read outside the config classes, each by one call of `read`.
READ_DIRECTLY = {"device"}


def pyproject_config() -> dict[str, object]:
    with (PROJECT_DIR / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["tool"]["flwr"]["app"]["config"]


def defaults() -> dict[str, object]:
    return {name: key.default for name, key in RUN_CONFIG_KEYS.items()}


# --- pyproject.toml and docs/configuration.md -----------------------------------------


def test_pyproject_holds_exactly_the_declared_keys_in_order() -> None:
    assert list(pyproject_config()) == list(RUN_CONFIG_KEYS)


@pytest.mark.parametrize("name", list(RUN_CONFIG_KEYS))
def test_pyproject_value_is_the_declared_default_and_type(name: str) -> None:
    key, value = RUN_CONFIG_KEYS[name], pyproject_config()[name]
    assert type(value) is key.type, f"{name}: pyproject has {value!r}, declared {key.type}"
    assert value == key.default


def test_the_docs_are_generated_from_the_declarations() -> None:
    assert DOCS.read_text(encoding="utf-8") == markdown(), (
        "docs/configuration.md is stale: run "
        "`python -m clients.run_config --markdown > docs/configuration.md`"
    )


def test_the_docs_list_every_key_under_its_section() -> None:
    text = markdown()
    for section, keys in RUN_CONFIG_SECTIONS.items():
        body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
        assert all(f"| `{key.name}` |" in body for key in keys)


def test_the_command_line_prints_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--markdown"])
    assert capsys.readouterr().out == markdown()
    with pytest.raises(SystemExit):
        main([])


# --- the declarations ----------------------------------------------------------------


def test_every_key_sits_in_one_section() -> None:
    names = [key.name for keys in RUN_CONFIG_SECTIONS.values() for key in keys]
    assert len(names) == len(set(names)) == len(RUN_CONFIG_KEYS)


@pytest.mark.parametrize("key", [k for k in RUN_CONFIG_KEYS.values() if k.choices])
def test_a_choice_default_is_among_its_choices(key: Key) -> None:
    assert key.default in key.choices
    assert len(set(key.choices)) == len(key.choices)


def test_every_key_has_kebab_case_name_and_one_line_help() -> None:
    for key in RUN_CONFIG_KEYS.values():
        assert key.name == key.name.lower() and "_" not in key.name and " " not in key.name
        assert key.help and "\n" not in key.help and key.help.endswith(".")


def test_choices_match_what_the_modules_implement() -> None:
    from dstar_flwr.aggregation import CENTERS, DEFAULT_MAX_ROBUST_Z, SCALES, VARIANTS
    from dstar_flwr.rule import WEIGHTINGS

    expected = {
        "attack": all_attack_names(),
        "latency-model": tuple(LATENCY_MODELS),
        "malformed-kind": MALFORMED_KINDS,
        "partitioning": PARTITIONINGS,
        "dataset": DATASET_NAMES,
        "dstar-variant": VARIANTS,
        "deviation-scale": SCALES,
        "dstar-center": CENTERS,
        "weighting": WEIGHTINGS,
    }
    for name, choices in expected.items():
        assert set(RUN_CONFIG_KEYS[name].choices) == set(choices), name
    assert RUN_CONFIG_KEYS["max-robust-z"].default == DEFAULT_MAX_ROBUST_Z


def test_a_bad_declaration_fails_at_import() -> None:
    with pytest.raises(TypeError, match="int, float, str or bool"):
        Key("bad", list, [], "Help.")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only string keys have choices"):
        Key("bad", int, 1, "Help.", choices=("1",))
    with pytest.raises(KeyError, match=r"not declared; declare it in clients/run_config\.py"):
        setting("no-such-key")


# --- every key is read, each through its declaration ------------------------------------


def test_every_declared_key_is_read_by_a_config_class() -> None:
    read_keys = [name for cls in CONFIG_CLASSES for name in settings_of(cls).values()]
    assert set(read_keys) | READ_DIRECTLY == set(RUN_CONFIG_KEYS)


def test_the_defaults_build_every_config_class() -> None:
    config = defaults()
    for cls in CONFIG_CLASSES:
        assert dataclasses.is_dataclass(cls.from_run_config(config))


def test_read_settings_maps_fields_to_keys() -> None:
    values = read_settings(LocalTrainingConfig, defaults() | {"batch-size": 8})
    assert values == {"epochs": 5, "batch_size": 8, "learning_rate": 0.1}


# --- the reader ------------------------------------------------------------------------


def test_read_returns_the_declared_type() -> None:
    config = defaults() | {"latency-seconds": 2, "crash-partitions": "4, 1"}
    assert read(config, "latency-seconds") == 2.0 and isinstance(
        read(config, "latency-seconds"), float
    )
    assert read(config, "num-server-rounds") == 10
    assert read(config, "norm-test") is True
    assert read(config, "crash-partitions") == (1, 4)
    assert read(defaults() | {"crash-partitions": 3}, "crash-partitions") == (3,)
    with pytest.raises(ValueError, match="'crash-partitions' must be a string of partition ids"):
        read(defaults() | {"crash-partitions": 1.5}, "crash-partitions")
    with pytest.raises(ValueError, match=r"'crash-partitions' names partition 4.*0\.\.3"):
        read(config, "crash-partitions", num_partitions=4)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num-server-rounds", 2.0, r"run config 'num-server-rounds' must be an integer .*got 2\.0"),
        ("num-server-rounds", True, "'num-server-rounds' must be an integer"),
        ("learning-rate", "0.1", "run config 'learning-rate' must be a number, got '0.1'"),
        ("learning-rate", float("nan"), "'learning-rate' must be finite"),
        ("dataset", 3, "run config 'dataset' must be a string, got 3"),
        ("norm-test", 1, "run config 'norm-test' must be true or false, got 1"),
    ],
)
def test_read_rejects_a_wrong_type_naming_the_key(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        read(defaults() | {name: value}, name)
    assert "pyproject.toml" in str(error.value) and "--run-config" in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("strategy", "fedprox", "run config 'strategy' must be one of dstar, fedavg, .*'fedprox'"),
        (
            "threat-model",
            "server",
            "'threat-model' must be one of client, omniscient, got 'server'",
        ),
        ("weighting", "Uniform", "'weighting' must be one of uniform, num-examples"),
    ],
)
def test_read_rejects_an_unknown_choice_naming_the_key(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read(defaults() | {name: value}, name)


def test_open_choices_take_a_plugin_path() -> None:
    config = defaults() | {"latency-model": "examples.custom_latency:ramp", "attack": "alie,ipm"}
    assert read(config, "latency-model") == "examples.custom_latency:ramp"
    assert read(config, "attack") == "alie,ipm"


def test_missing_and_optional_keys() -> None:
    config = {k: v for k, v in defaults().items() if k not in {"seed", "data-dir", "device"}}
    with pytest.raises(ValueError, match=r"run config is missing 'seed'.*pyproject\.toml"):
        read(config, "seed")
    assert read(config, "data-dir") == "" and read(config, "device") == "auto"


def test_the_node_config_variant_says_where_to_fix_it() -> None:
    with pytest.raises(ValueError, match=r"node config 'device' must be a string.*--node-config"):
        read({"device": 0}, "device", source=NODE_CONFIG)
    with pytest.raises(ValueError, match=r"node config is missing 'partition-id'.*--node-config"):
        read_as({}, "partition-id", int, source=NODE_CONFIG)
    assert read_as({"partition-id": 3}, "partition-id", int, source=NODE_CONFIG) == 3


def test_reading_an_undeclared_key_says_to_declare_it() -> None:
    with pytest.raises(KeyError, match="'ramp-jitter' is not declared"):
        read({"ramp-jitter": 0.1}, "ramp-jitter")
    assert read_as({"ramp-jitter": 1}, "ramp-jitter", float) == 1.0
    with pytest.raises(ValueError, match=r"message config 'server-round'.*fix it in the message"):
        read_as({"server-round": "1"}, "server-round", int, source="message config")

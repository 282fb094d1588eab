"""Typed reads of Flower run-config and node-config values.

These helpers only check presence and type; each config dataclass checks its own
ranges, so that building it directly is validated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

RUN_CONFIG = "run config"
NODE_CONFIG = "node config"

_WHERE_TO_FIX = {
    RUN_CONFIG: (
        "set it under [tool.flwr.app.config] in pyproject.toml "
        "or pass it with `flwr run --run-config`"
    ),
    NODE_CONFIG: (
        "pass it with `--node-config` (the simulation engine sets "
        "partition-id and num-partitions itself)"
    ),
}


def _hint(source: str) -> str:
    return _WHERE_TO_FIX.get(source, f"fix it in the {source}")


def read_value(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> object:
    """Return ``config[key]``, failing with a ValueError that says where to set it.

    Parameters
    ----------
    config : Mapping[str, object]
        A Flower ``run_config``, ``node_config`` or ``ConfigRecord``.
    key : str
        The key to read.
    source : str
        What ``config`` is, used in the error message.

    Returns
    -------
    object
        The raw value.
    """
    if key not in config:
        raise ValueError(f"{source} is missing '{key}'; {_hint(source)}")
    return config[key]


def read_int(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> int:
    """Return ``config[key]`` as an int; bools and floats are rejected.

    Parameters
    ----------
    config : Mapping[str, object]
        The configuration to read from.
    key : str
        The key to read.
    source : str
        What ``config`` is, used in the error message.

    Returns
    -------
    int
        The value.
    """
    value = read_value(config, key, source=source)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{source} '{key}' must be an integer (e.g. 2, not 2.0 or \"2\"), "
            f"got {value!r}; {_hint(source)}"
        )
    return value


def read_float(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> float:
    """Return ``config[key]`` as a finite float; ints are accepted, bools are not.

    Parameters
    ----------
    config : Mapping[str, object]
        The configuration to read from.
    key : str
        The key to read.
    source : str
        What ``config`` is, used in the error message.

    Returns
    -------
    float
        The value.
    """
    value = read_value(config, key, source=source)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source} '{key}' must be a number, got {value!r}; {_hint(source)}")
    if not math.isfinite(value):
        raise ValueError(f"{source} '{key}' must be finite, got {value!r}; {_hint(source)}")
    return float(value)


def read_str(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> str:
    """Return ``config[key]`` as a str.

    Parameters
    ----------
    config : Mapping[str, object]
        The configuration to read from.
    key : str
        The key to read.
    source : str
        What ``config`` is, used in the error message.

    Returns
    -------
    str
        The value.
    """
    value = read_value(config, key, source=source)
    if not isinstance(value, str):
        raise ValueError(f"{source} '{key}' must be a string, got {value!r}; {_hint(source)}")
    return value


def read_bool(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> bool:
    """Return ``config[key]`` as a bool (true or false, not a number or a string).

    Parameters
    ----------
    config : Mapping[str, object]
        The configuration to read from.
    key : str
        The key to read.
    source : str
        What ``config`` is, used in the error message.

    Returns
    -------
    bool
        The value.
    """
    value = read_value(config, key, source=source)
    if not isinstance(value, bool):
        raise ValueError(f"{source} '{key}' must be true or false, got {value!r}; {_hint(source)}")
    return value


def read_optional_str(
    config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG
) -> str | None:
    """Return ``config[key]`` as a str, or None when it is absent or empty.

    Parameters
    ----------
    config : Mapping[str, object]
        The configuration to read from.
    key : str
        The key to read.
    source : str
        What ``config`` is, used in the error message.

    Returns
    -------
    str or None
        The value, or None.
    """
    if key not in config:
        return None
    return read_str(config, key, source=source) or None

"""Typed reads of config keys that :mod:`clients.run_config` does not declare.

A plug-in reads its own run-config keys with these (``from clients.config import
read_float``); each is :func:`clients.run_config.read_as` for one type. The
app's own keys are declared, and read with :func:`clients.run_config.read`.
"""

from __future__ import annotations

from collections.abc import Mapping

from clients.run_config import NODE_CONFIG, RUN_CONFIG, read_as

__all__ = ["NODE_CONFIG", "RUN_CONFIG", "read_bool", "read_float", "read_int", "read_str"]


def read_int(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> int:
    """Return ``config[key]`` as an int; bools and floats are rejected."""
    return read_as(config, key, int, source=source)


def read_float(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> float:
    """Return ``config[key]`` as a finite float; ints are accepted, bools are not."""
    return read_as(config, key, float, source=source)


def read_str(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> str:
    """Return ``config[key]`` as a str."""
    return read_as(config, key, str, source=source)


def read_bool(config: Mapping[str, object], key: str, *, source: str = RUN_CONFIG) -> bool:
    """Return ``config[key]`` as a bool (true or false, not a number or a string)."""
    return read_as(config, key, bool, source=source)

"""The app's run config, every key declared once, and its typed readers.

Each key under ``[tool.flwr.app.config]`` in ``pyproject.toml`` is a :class:`Key`
in :data:`RUN_CONFIG_KEYS`: its name, type, default, choices (where it has
some) and a one-line help, in sections. Everything else derives from these
declarations:

- :func:`read` reads one declared key, checked against its declaration;
  :func:`read_as` reads a key that is not declared here (the node config's
  ``partition-id``, a plug-in's own key) as a given type;
- :func:`setting` ties a config dataclass's field to its key, and
  :func:`read_settings` reads all such fields at once, so that a
  ``from_run_config`` is one call;
- ``python -m clients.run_config --markdown`` writes ``docs/configuration.md``;
- the tests check that ``pyproject.toml`` holds exactly these keys and defaults.

Both the ClientApp and the ServerApp read the run config, so this module lives
in ``clients/`` and imports nothing but the standard library.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

RUN_CONFIG = "run config"
NODE_CONFIG = "node config"

Value = int | float | str | bool
ValueType = type[int] | type[float] | type[str] | type[bool]

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

# What a value of each type must be, in error messages, and the Python types it may have
# (bools are never numbers).
_EXPECTED: dict[type, str] = {
    int: 'an integer (e.g. 2, not 2.0 or "2")',
    float: "a number",
    str: "a string",
    bool: "true or false",
}
_ACCEPTED: dict[type, type | tuple[type, ...]] = {
    int: int,
    float: (int, float),
    str: str,
    bool: bool,
}

# Dataclass-field metadata entries written by `setting`.
_KEY_NAME = "run-config key"
_CONVERT = "run-config convert"
_DECLARED = object()


@dataclass(frozen=True)
class Key:
    """One run-config key.

    Attributes
    ----------
    name : str
        The kebab-case name, as in ``pyproject.toml``.
    type : type
        ``int``, ``float``, ``str`` or ``bool``; a float key also takes an integer.
    default : int, float, str or bool
        The value in ``pyproject.toml``.
    help : str
        One line on what the key does.
    choices : tuple of str
        The values a string key allows; empty for any value.
    open_choices : bool
        The value may also be ``package.module:function`` (a plug-in), or a
        comma-separated list: :func:`read` leaves the check of the value to the
        module that resolves it, and ``choices`` are the built-in names.
    partition_ids : bool
        The value lists partition ids, ``"0,3,5"`` (or one id as an integer,
        as ``--run-config key=3`` gives); :func:`read` returns them parsed.
    optional : bool
        A config without the key reads as its default (the keys that hand-made
        configs may leave out); any other key must be present.
    """

    name: str
    type: ValueType
    default: Value
    help: str
    choices: tuple[str, ...] = ()
    open_choices: bool = False
    partition_ids: bool = False
    optional: bool = False

    def __post_init__(self) -> None:
        if self.type not in (int, float, str, bool):
            raise TypeError(f"key {self.name!r}: type must be int, float, str or bool")
        if self.choices and self.type is not str:
            raise TypeError(f"key {self.name!r}: only string keys have choices")


# The strategies simulations.app.experiment builds.
STRATEGIES: tuple[str, ...] = (
    "dstar", "fedavg", "fedavg-timeout", "fltrust", "krum", "multikrum", "bulyan", "fedmedian",
    "fedtrimmedavg",
)  # fmt: skip
# The perturbations of min-max, min-sum and the tailored-* attacks.
PERTURBATION_DIRECTIONS: tuple[str, ...] = ("unit", "sign", "std")
_TAILORED_RULES = ("dstar", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "fltrust")
_ATTACKS = (
    "none", "sign-flip", "gaussian", "alie", "ipm", "mimic", "min-max", "min-sum", "non-finite",
    *(f"tailored-{rule}" for rule in _TAILORED_RULES), "label-flip", "malformed",
)  # fmt: skip

RUN_CONFIG_SECTIONS: Mapping[str, tuple[Key, ...]] = {
    "Experiment": (
        Key("num-server-rounds", int, 10, "Federated rounds the ServerApp runs."),
        Key("strategy", str, "dstar", "The aggregation strategy.", choices=STRATEGIES),
        Key(
            "dataset", str, "digits", "The dataset; every node and the server split it alike.",
            choices=("digits", "mnist1d", "fashion-mnist", "cifar10"),
        ),
        Key(
            "partitioning", str, "iid",
            "How the client pool is cut: IID, or label-skewed by Dirichlet(alpha).",
            choices=("iid", "dirichlet"),
        ),
        Key("dirichlet-alpha", float, 0.5, "Dirichlet concentration, > 0; smaller: more skewed."),
        Key("seed", int, 42, "Run seed: data splits, training, attacks, latencies and faults."),
        Key(
            "server-validation-size", int, 100,
            "Examples in the trusted server split (dSTAR's validation update).",
        ),
        Key("test-fraction", float, 0.2, "Share of the pool held out for tests; no client has it."),
        Key(
            "data-dir", str, "",
            'Folder of the torchvision datasets; "" = $DSTAR_DATA_DIR or ~/.cache/dstar-flwr/data.',
            optional=True,
        ),
        Key(
            "results-dir", str, "results",
            "Where the run's JSON goes (relative: to the SuperLink's working directory).",
        ),
        Key(
            "run-name", str, "", 'The run\'s name; "" = `<strategy>-<dataset>-seed<seed>`.',
            optional=True,
        ),
        Key(
            "fraction-train", float, 1.0,
            "Share of the connected nodes sampled for each training round (at least 2; "
            "DStar: at least 2f + 1).",
            optional=True,
        ),
        Key(
            "fraction-evaluate", float, 0.0,
            "Share of nodes in federated evaluation; the test split is evaluated centrally.",
        ),
    ),
    "Local training": (
        Key("local-epochs", int, 5, "Passes over the local data per round (clients and server)."),
        Key("batch-size", int, 16, "Examples per SGD step."),
        Key("learning-rate", float, 0.1, "SGD step size."),
        Key(
            "device", str, "auto", "auto, cpu, cuda or cuda:N; a node's --node-config device wins.",
            optional=True,
        ),
    ),
    "Byzantine nodes": (
        Key("num-byzantine-nodes", int, 2, "The first B partitions are Byzantine (0 = unused)."),
        Key(
            "byzantine-fraction", float, 0.0,
            "Or the first round(x * N) partitions, halves up (0.0 = unused).",
        ),
        Key(
            "byzantine-partitions", str, "", 'Or these partition ids, e.g. "0,3,5" ("" = unused).',
            partition_ids=True,
        ),
    ),
    "Attacks": (
        Key(
            "attack", str, "gaussian",
            'What Byzantine nodes do; "a,b" assigns round-robin over them in ascending id order.',
            choices=_ATTACKS, open_choices=True,
        ),
        Key(
            "threat-model", str, "client",
            "client: own data only; omniscient: a server-side wrapper crafts vector attacks "
            "from all honest replies.",
            choices=("client", "omniscient"),
        ),
        Key(
            "attack-scale", float, 1.0,
            "gaussian: std (fixed) or norm factor (scaled); sign-flip: the factor.",
        ),
        Key(
            "gaussian-mode", str, "fixed",
            "fixed: N(0, scale^2); scaled: norm = scale x the mean honest norm.",
            choices=("fixed", "scaled"),
        ),
        Key("alie-z", float, 0.0, "ALIE's z; 0: from n and f (Baruch et al.), else e.g. 1.5."),
        Key("ipm-epsilon", float, 0.1, "IPM sends -epsilon x honest mean; presets 0.1, 100."),
        Key(
            "min-max-direction", str, "unit", "Perturbation of min-max and min-sum.",
            choices=PERTURBATION_DIRECTIONS,
        ),
        Key(
            "min-sum-bound", str, "max", "Min-sum's bound: max (the paper) or min (authors' code).",
            choices=("max", "min"),
        ),
        Key(
            "tailored-direction", str, "unit",
            "Perturbation p of the tailored-* attacks, which send mu - gamma p.",
            choices=PERTURBATION_DIRECTIONS,
        ),
        Key(
            "tailored-surrogates", int, 5,
            "tailored-dstar, -fltrust: S surrogate server updates ~ N(mu, sigma^2).",
        ),
        Key("tailored-quorum", int, 0, "Surrogates that must accept; 0 = a majority (S // 2 + 1)."),
        Key(
            "tailored-trim-beta", float, 0.2,
            "tailored-fedtrimmedavg: the server's beta (0.2 = Flower's); 0 = cut f per end.",
        ),
        Key(
            "non-finite-value", str, "nan", "What non-finite sends: NaN or +inf.",
            choices=("nan", "inf"),
        ),
        Key("non-finite-fraction", float, 1.0, "Share of coordinates made non-finite, in (0, 1]."),
        Key(
            "malformed-kind", str, "wrong-shape", "How malformed breaks its reply.",
            choices=(
                "wrong-shape", "wrong-dtype", "wrong-names", "missing-arrays", "missing-metrics",
                "absurd-num-examples", "negative-num-examples",
            ),
        ),
        Key(
            "attack-estimation-batches", int, 1,
            "Client threat model: m data chunks estimate mu and sigma; alie, mimic, min-max, "
            "min-sum and tailored-* need m >= 2.",
        ),
        Key(
            "claimed-num-examples", int, 0,
            "Byzantine nodes report this num-examples (0 = their true count).",
        ),
    ),
    "Stragglers": (
        Key("num-stragglers", int, 2, "The last S partitions are stragglers."),
        Key(
            "latency-model", str, "stragglers", "How long a node waits before it replies.",
            choices=("none", "constant", "stragglers", "exponential", "log-normal", "profile"),
            open_choices=True,
        ),
        Key(
            "latency-seconds", float, 3.0,
            "Delay (constant, stragglers), mean (exponential), median (log-normal); "
            "a node's --node-config latency-seconds wins.",
        ),
        Key("straggler-slowdown", float, 1.0, "Stragglers also take this x their compute time."),
        Key("latency-sigma", float, 1.0, "log-normal: std of log(delay); 1: heavy tail, 0: none."),
        Key(
            "latency-profile", str, "",
            'profile: "0:0.5,3:2.0" = partition:seconds; unlisted partitions wait 0 s.',
        ),
    ),
    "Faults": (
        Key(
            "crash-partitions", str, "",
            "These partitions may raise SimulatedCrash (an error reply).",
            partition_ids=True,
        ),
        Key(
            "crash-probability", float, 1.0,
            "Per-round crash chance of those partitions; 1.0 = always.",
        ),
        Key(
            "dropout-partitions", str, "",
            "These never reply: they wait round-timeout + margin, then give up.",
            partition_ids=True,
        ),
        Key("dropout-margin-seconds", float, 1.0, "How far past round-timeout a dropout waits."),
        Key(
            "intermittent-partitions", str, "",
            "These miss some rounds (they fail at once and are back the next round).",
            partition_ids=True,
        ),
        Key(
            "intermittent-probability", float, 0.5,
            "Per-round chance that such a partition misses the round.",
        ),
        Key(
            "fast-byzantine", bool, False,
            "Byzantine nodes skip the latency delay (and arrive among the first k).",
        ),
    ),
    "DStar": (
        Key(
            "first-k", float, 0.8,
            "Replies a round waits for: a count (>= 1) or a fraction (< 1) of the sampled nodes.",
        ),
        Key("num-byzantine", int, 2, "f, the bound on Byzantine nodes the strategies assume."),
        Key("round-timeout", float, 30.0, "Seconds: the round deadline and the message TTL."),
        Key("fedavg-timeout", float, 5.0, "fedavg-timeout: seconds a training round waits."),
        Key("min-replies", int, 0, "Fewest valid replies a round aggregates; 0 = 2f + 1."),
        Key(
            "dstar-variant", str, "anchored",
            "anchored: deviations from the validation update, robust z-score band; "
            "paper: our reading of the paper.",
            choices=("anchored", "paper"),
        ),
        Key("max-robust-z", float, 3.0, "anchored: largest accepted robust z of a deviation."),
        Key("norm-test", bool, True, "anchored: also reject robust outliers in update norm."),
        Key("threshold-factor", float, 2.0, "paper: accept a deviation <= c * s."),
        Key(
            "deviation-scale", str, "median", "paper: the deviation scale s.",
            choices=("median", "validation", "max"),
        ),
        Key(
            "dstar-center", str, "ensemble",
            "paper: the center, from the updates and the validation update, or the updates only.",
            choices=("ensemble", "clients"),
        ),
        Key("server-learning-rate", float, 1.0, "Server step size (DStar, FLTrust)."),
        Key(
            "weighting", str, "uniform",
            "How accepted updates are weighted; num-examples uses min(claim, example-cap).",
            choices=("uniform", "num-examples"),
        ),
        Key(
            "example-cap", float, 0.0,
            "num-examples: your bound on an honest node's example count (0 = unset).",
        ),
        Key(
            "validation-update", bool, True,
            "The server trains on its validation split each round (dSTAR's validation update).",
        ),
    ),
    "Checkpoint and resume": (
        Key(
            "checkpoint-dir", str, "",
            '"" = off; else `<checkpoint-dir>/<run-name>.ckpt.npz` after every round '
            "(strategy dstar only).",
        ),
        Key("resume", bool, False, "Continue the run-name's checkpoint after its last round."),
    ),
}  # fmt: skip
"""The run-config keys by section, in ``pyproject.toml`` order."""

RUN_CONFIG_KEYS: Mapping[str, Key] = {
    key.name: key for keys in RUN_CONFIG_SECTIONS.values() for key in keys
}
"""Every key of ``[tool.flwr.app.config]``, by name, in ``pyproject.toml`` order."""

if len(RUN_CONFIG_KEYS) != sum(len(keys) for keys in RUN_CONFIG_SECTIONS.values()):
    raise RuntimeError("clients/run_config.py declares a key twice")


def declared(name: str) -> Key:
    """Return the declaration of run-config key ``name``.

    Parameters
    ----------
    name : str
        A kebab-case key name.

    Returns
    -------
    Key
        Its declaration.

    Raises
    ------
    KeyError
        When ``name`` is not declared; the message says where to declare it.
    """
    try:
        return RUN_CONFIG_KEYS[name]
    except KeyError:
        raise KeyError(
            f"run-config key {name!r} is not declared; declare it in clients/run_config.py "
            "and add it to [tool.flwr.app.config] in pyproject.toml"
        ) from None


# --- reading ---------------------------------------------------------------------


def _hint(source: str) -> str:
    return _WHERE_TO_FIX.get(source, f"fix it in the {source}")


def _present(config: Mapping[str, object], name: str, source: str) -> object:
    if name not in config:
        raise ValueError(f"{source} is missing '{name}'; {_hint(source)}")
    return config[name]


def check_type(value: object, name: str, kind: ValueType, *, source: str = RUN_CONFIG) -> Value:
    """Return ``value`` as ``kind``, or fail with a message naming the key.

    Parameters
    ----------
    value : object
        The raw value.
    name : str
        The key, for the message.
    kind : type
        ``int`` (bools and floats rejected), ``float`` (finite; ints accepted,
        bools not), ``str`` or ``bool`` (true or false, not a number or a string).
    source : str
        What the value came from, for the message.

    Returns
    -------
    int, float, str or bool
        The value; an int read as a float is converted.
    """
    if kind not in _EXPECTED:
        raise TypeError(f"cannot read {source} '{name}' as {kind!r}: use int, float, str or bool")
    fits = kind is bool if isinstance(value, bool) else isinstance(value, _ACCEPTED[kind])
    if not fits:
        raise ValueError(
            f"{source} '{name}' must be {_EXPECTED[kind]}, got {value!r}; {_hint(source)}"
        )
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"{source} '{name}' must be finite, got {value!r}; {_hint(source)}")
        return float(value)  # type: ignore[arg-type]
    return value  # type: ignore[return-value]


def read_as(
    config: Mapping[str, object], name: str, kind: ValueType, *, source: str = RUN_CONFIG
) -> Any:
    """Return ``config[name]`` as ``kind``, for a key not declared here.

    For a plug-in's own keys, the node config's ``partition-id`` and
    ``num-partitions``, or a message's config; declared keys are read with
    :func:`read`.

    Parameters
    ----------
    config : Mapping[str, object]
        A Flower ``run_config``, ``node_config`` or ``ConfigRecord``.
    name : str
        The key to read.
    kind : type
        ``int``, ``float``, ``str`` or ``bool`` (see :func:`check_type`).
    source : str
        What ``config`` is, used in the error message (:data:`RUN_CONFIG`,
        :data:`NODE_CONFIG`, ...).

    Returns
    -------
    int, float, str or bool
        The value.

    Raises
    ------
    ValueError
        The key is missing or holds the wrong type; the message says where to fix it.
    """
    return check_type(_present(config, name, source), name, kind, source=source)


def read(
    config: Mapping[str, object],
    name: str,
    *,
    source: str = RUN_CONFIG,
    num_partitions: int | None = None,
) -> Any:
    """Return the value of declared key ``name``, checked against its declaration.

    Parameters
    ----------
    config : Mapping[str, object]
        ``context.run_config`` (or ``context.node_config``, for the keys a node
        may override: then pass ``source=NODE_CONFIG``).
    name : str
        A key of :data:`RUN_CONFIG_KEYS`.
    source : str
        What ``config`` is, used in the error message.
    num_partitions : int, optional
        For a partition-id key: every id must be below it.

    Returns
    -------
    int, float, str, bool or tuple of int
        The value, of the declared type (an integer given for a float key is
        converted); a partition-id key gives its sorted ids; an optional key
        that is absent gives its default.

    Raises
    ------
    ValueError
        The key is missing, holds the wrong type or a value outside its
        choices; the message names the key, the value and what to change.
    """
    key = declared(name)
    if key.optional and name not in config:
        return key.default
    value = _present(config, name, source)
    if key.partition_ids:
        return parse_partition_ids(value, name, num_partitions, source=source)
    value = check_type(value, name, key.type, source=source)
    if key.choices and not key.open_choices and value not in key.choices:
        raise ValueError(
            f"{source} '{name}' must be one of {', '.join(key.choices)}, got {value!r}; "
            f"{_hint(source)}"
        )
    return value


def parse_partition_ids(
    value: object,
    name: str = "byzantine-partitions",
    num_partitions: int | None = None,
    *,
    source: str = RUN_CONFIG,
) -> tuple[int, ...]:
    """Parse a list of partition ids: ``"5, 0,3"`` -> ``(0, 3, 5)``.

    Parameters
    ----------
    value : object
        Ids separated by commas (``""`` gives ``()``; empty entries are
        skipped), or one id as an integer, as ``--run-config key=3`` gives.
    name : str
        The key, for error messages.
    num_partitions : int, optional
        When given, every id must be below it.
    source : str
        What the value came from, for error messages.

    Returns
    -------
    tuple of int
        The ids, sorted.

    Raises
    ------
    ValueError
        Not a string, a non-integer entry, a negative, out-of-range or repeated id.
    """
    example = f'e.g. {name} = "0,3,5" (comma-separated partition ids; "" for none)'
    if isinstance(value, int) and not isinstance(value, bool):
        entries = [str(value)]
    elif isinstance(value, str):
        entries = [entry.strip() for entry in value.split(",")]
    else:
        raise ValueError(
            f"{source} '{name}' must be a string of partition ids such as \"0,3,5\", "
            f"got {value!r}; {example}"
        )
    ids: list[int] = []
    for entry in entries:
        if not entry:
            continue
        try:
            partition_id = int(entry)
        except ValueError:
            raise ValueError(
                f"{source} '{name}': {entry!r} is not a partition id; {example}"
            ) from None
        if partition_id < 0 or (num_partitions is not None and partition_id >= num_partitions):
            bound = f"0..{num_partitions - 1}" if num_partitions is not None else ">= 0"
            raise ValueError(
                f"{source} '{name}' names partition {partition_id}, but partition ids are "
                f"{bound}; remove it or run more nodes"
            )
        if partition_id in ids:
            raise ValueError(
                f"{source} '{name}' lists partition {partition_id} twice; list each id once"
            )
        ids.append(partition_id)
    return tuple(sorted(ids))


# --- config dataclasses ------------------------------------------------------------


def setting(
    name: str,
    *,
    default: object = _DECLARED,
    required: bool = False,
    convert: Callable[[Any], Any] | None = None,
) -> Any:
    """A dataclass field read from run-config key ``name`` by :func:`read_settings`.

    Parameters
    ----------
    name : str
        The declared key.
    default : object, optional
        The field's default when the dataclass is built directly; without it,
        the key's declared default.
    required : bool
        The field has no default.
    convert : callable, optional
        Turns the value read into what the field holds (e.g. ``""`` into None).

    Returns
    -------
    dataclasses.Field
        The field.
    """
    key = declared(name)
    metadata = {_KEY_NAME: name, _CONVERT: convert}
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(
        default=key.default if default is _DECLARED else default, metadata=metadata
    )


def settings_of(cls: type) -> dict[str, str]:
    """Return ``{field name: run-config key}`` of ``cls``'s :func:`setting` fields.

    Parameters
    ----------
    cls : type
        A dataclass.

    Returns
    -------
    dict of str to str
        The fields read from the run config, in field order.
    """
    return {
        field.name: field.metadata[_KEY_NAME]
        for field in dataclasses.fields(cls)
        if _KEY_NAME in field.metadata
    }


def read_settings(
    cls: type, config: Mapping[str, object], *, num_partitions: int | None = None
) -> dict[str, Any]:
    """Read every :func:`setting` field of dataclass ``cls`` from a run config.

    Parameters
    ----------
    cls : type
        A dataclass whose fields were declared with :func:`setting`.
    config : Mapping[str, object]
        ``context.run_config``.
    num_partitions : int, optional
        Passed to :func:`read` (bounds of the partition-id keys).

    Returns
    -------
    dict of str to object
        Keyword arguments for ``cls``: each field's value, read, checked and
        converted.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if _KEY_NAME not in field.metadata:
            continue
        value = read(config, field.metadata[_KEY_NAME], num_partitions=num_partitions)
        convert = field.metadata[_CONVERT]
        values[field.name] = value if convert is None else convert(value)
    return values


class RunConfigSettings:
    """Mixin for a dataclass of :func:`setting` fields: ``from_run_config`` reads them all."""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> Self:
        """Read and validate the settings of a Flower run config.

        Parameters
        ----------
        run_config : Mapping[str, object]
            ``context.run_config``.

        Returns
        -------
        Self
            The validated settings.
        """
        return cls(**read_settings(cls, run_config))


def none_if_empty(value: Value) -> Value | None:
    """``""``, ``0`` and ``0.0`` (a key's "unset") become None; other values pass."""
    return value or None


# --- documentation -----------------------------------------------------------------


def toml_value(value: Value) -> str:
    """Write a value as TOML does: ``"text"``, ``true``, ``3``, ``0.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _choices_cell(key: Key) -> str:
    names = ", ".join(f"`{choice}`" for choice in key.choices)
    if key.partition_ids:
        return 'partition ids, e.g. `"0,3,5"`'
    if key.open_choices:
        return f"{names}, or `package.module:function`"
    return names


def markdown() -> str:
    """The run-config reference: one table per section (``docs/configuration.md``).

    Returns
    -------
    str
        Markdown text, ending in a newline.
    """
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m clients.run_config --markdown > docs/configuration.md`"
        " from the declarations in clients/run_config.py; edit those, not this file. -->",
        "",
        "The app's run config: the keys under `[tool.flwr.app.config]` in `pyproject.toml`.",
        'Override them with `flwr run . --run-config "key=value ..."`. A node\'s',
        "`--node-config` may also set `device` and `latency-seconds`, for that node only.",
    ]
    for section, keys in RUN_CONFIG_SECTIONS.items():
        lines += [
            "",
            f"## {section}",
            "",
            "| Key | Type | Default | Choices | Help |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| `{key.name}` | {key.type.__name__} | `{toml_value(key.default)}` | "
            f"{_cell(_choices_cell(key))} | {_cell(key.help)} |"
            for key in keys
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m clients.run_config --markdown > docs/configuration.md``."""
    parser = argparse.ArgumentParser(
        prog="python -m clients.run_config", description="The app's run-config keys."
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the reference (docs/configuration.md)"
    )
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.error("nothing to print: pass --markdown")
    print(markdown(), end="")


if __name__ == "__main__":
    main()

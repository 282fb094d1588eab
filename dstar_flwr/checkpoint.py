"""Checkpoints of a strategy run: the global model, the Result so far and extras, in one file.

A checkpoint is one numpy ``.npz`` file (a zip of ``.npy`` arrays, read with
``allow_pickle=False``): the global arrays by position, each with its dtype and
shape, and one ``uint8`` entry holding UTF-8 JSON metadata (a format tag, the
last completed round, the arrays' names in record order, the Result's metric
dicts and the caller's ``state``). Metric values and ``state`` may hold NaN and
Inf (Python's JSON extension).

:func:`save_checkpoint` writes a temporary file in the target's folder, flushes
and fsyncs it, renames it over the target with ``os.replace`` and fsyncs the
folder: a crash at any point leaves the old checkpoint or the new one, never a
torn file. The zip's CRC-32 checks catch a corrupt file on load.
"""

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from .records import layout_of

FORMAT = "dstar-flwr-checkpoint"
VERSION = 1
_METADATA_KEY = "metadata"
_RESULT_FIELDS = (
    "train_metrics_clientapp",
    "evaluate_metrics_clientapp",
    "evaluate_metrics_serverapp",
)


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint; the message names the file."""


@dataclass
class Checkpoint:
    """The state of a run after its last completed round.

    Attributes
    ----------
    server_round : int
        The last completed round (0: none yet).
    arrays : ArrayRecord
        The global model after that round.
    result : Result
        The metrics of rounds ``1..server_round`` (and round 0's server-side
        evaluation, if any). Its ``arrays`` are not stored separately: on load
        they are ``arrays``.
    state : dict[str, Any]
        The caller's extras; anything ``json.dumps`` accepts.
    """

    server_round: int
    arrays: ArrayRecord
    result: Result = field(default_factory=Result)
    state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and durably; returns the path.

    Parameters
    ----------
    path : str | os.PathLike[str]
        The checkpoint file; its folder must exist.
    checkpoint : Checkpoint
        What to write.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        If ``checkpoint.state`` is not JSON-serializable.
    """
    path = Path(path)
    names = list(checkpoint.arrays.keys())
    metadata = _encode_metadata(checkpoint, names)
    arrays = {_array_key(i): checkpoint.arrays[name].numpy() for i, name in enumerate(names)}

    def write(stream: IO[bytes]) -> None:
        np.savez(stream, **{_METADATA_KEY: metadata}, **arrays)

    write_atomically(path, write)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str | os.PathLike[str]
        The checkpoint file.

    Returns
    -------
    Checkpoint
        The checkpoint; ``result.arrays`` is ``arrays``.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    CheckpointError
        If the file is corrupt, truncated or not a checkpoint of this format.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            if not zipfile.is_zipfile(stream):
                raise ValueError("not an .npz (zip) archive: truncated, or another kind of file")
            stream.seek(0)
            with np.load(stream, allow_pickle=False) as archive:
                if _METADATA_KEY not in archive.files:
                    raise ValueError(f"an .npz archive without {FORMAT} metadata")
                metadata = json.loads(bytes(archive[_METADATA_KEY]).decode("utf-8"))
                return _decode(metadata, archive)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is not a readable {FORMAT} file ({type(error).__name__}: {error}); "
            "delete it or point to another checkpoint to start afresh."
        ) from error


def layout_differences(expected: ArrayRecord, found: ArrayRecord) -> list[str]:
    """How ``found``'s arrays differ from ``expected``'s in names, shapes and dtypes.

    Parameters
    ----------
    expected : ArrayRecord
        The model the caller runs (e.g. ``initial_arrays``).
    found : ArrayRecord
        The model read from a checkpoint.

    Returns
    -------
    list[str]
        One line per difference; empty when the layouts match (order aside).
    """
    want, have = layout_of(expected), layout_of(found)
    want_by_name = dict(zip(want.keys, zip(want.shapes, want.dtypes, strict=True), strict=True))
    have_by_name = dict(zip(have.keys, zip(have.shapes, have.dtypes, strict=True), strict=True))
    differences = []
    missing = [name for name in want.keys if name not in have_by_name]
    extra = [name for name in have.keys if name not in want_by_name]
    if missing:
        differences.append(f"arrays missing from the checkpoint: {missing}")
    if extra:
        differences.append(f"arrays the model does not have: {extra}")
    for name in want.keys:
        if name not in have_by_name:
            continue
        (want_shape, want_dtype), (have_shape, have_dtype) = want_by_name[name], have_by_name[name]
        if want_shape != have_shape:
            differences.append(f"'{name}': shape {have_shape} in the checkpoint, {want_shape} here")
        if want_dtype != have_dtype:
            differences.append(f"'{name}': dtype {have_dtype} in the checkpoint, {want_dtype} here")
    return differences


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` with what ``write`` writes, all or nothing.

    The bytes go to a temporary file in ``path``'s folder, which is flushed,
    fsynced and renamed over ``path``; then the folder is fsynced so that the
    rename survives a power loss. On any error the temporary file is removed
    and ``path`` is left as it was.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _array_key(index: int) -> str:
    # By position: array names may hold characters a zip member name should not.
    return f"array-{index}"


def _encode_metadata(checkpoint: Checkpoint, names: list[str]) -> np.ndarray:
    if isinstance(checkpoint.server_round, bool) or checkpoint.server_round < 0:
        raise ValueError(f"server_round must be an int >= 0, got {checkpoint.server_round!r}.")
    result = checkpoint.result
    document = {
        "format": FORMAT,
        "version": VERSION,
        "server-round": int(checkpoint.server_round),
        "array-names": names,
        "result": {
            name: {str(r): dict(record.items()) for r, record in getattr(result, name).items()}
            for name in _RESULT_FIELDS
        },
        "state": checkpoint.state,
    }
    try:
        text = json.dumps(document)
    except TypeError as error:
        raise TypeError(f"checkpoint state must be JSON-serializable: {error}") from error
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _decode(metadata: object, archive: Mapping[str, np.ndarray]) -> Checkpoint:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"no '{FORMAT}' metadata")
    if metadata.get("version") != VERSION:
        raise ValueError(f"format version {metadata.get('version')!r}, this reads {VERSION}")
    server_round = metadata["server-round"]
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 0:
        raise ValueError(f"bad server round {server_round!r}")
    names = metadata["array-names"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("bad array names")
    arrays = ArrayRecord(
        {name: Array(np.asarray(archive[_array_key(i)])) for i, name in enumerate(names)}
    )
    result = Result(arrays=arrays)
    for name in _RESULT_FIELDS:
        rounds = metadata["result"][name]
        setattr(
            result,
            name,
            {int(r): MetricRecord(_metric_values(values)) for r, values in rounds.items()},
        )
    state = metadata["state"]
    if not isinstance(state, dict):
        raise ValueError("state is not a JSON object")
    return Checkpoint(server_round=server_round, arrays=arrays, result=result, state=state)


def _metric_values(values: Mapping[str, Any]) -> dict[str, Any]:
    # JSON keeps ints and floats apart; NaN and Inf come back as floats.
    return {
        key: [_number(v) for v in value] if isinstance(value, list) else _number(value)
        for key, value in values.items()
    }


def _number(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric value {value!r} is not a number")
    return value

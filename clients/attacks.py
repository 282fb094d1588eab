"""Byzantine behaviour at the node: from model weights to update vectors and back.

The attacks themselves are pure functions on update vectors, in
:mod:`clients.attack_vectors` (re-exported here). This module connects them to
Flower records: a Byzantine node computes its honest update(s) ``u = w_local -
w_global`` (floating arrays only, flattened in record order), runs the vector
attack on them (:func:`attack_arrays`) and sends ``w_global + vector``. It also
holds the data attack (:func:`flip_labels`) and the split of a node's data into
the chunks a client-side attacker estimates ``mu`` and ``sigma`` from
(:func:`estimation_chunks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from clients.attack_vectors import (
    DATA_ATTACKS,
    REPLY_ATTACKS,
    VECTOR_ATTACKS,
    AttackContext,
    AttackParams,
    VectorAttack,
    apply_vector_attack,
    attack_kind,
    get_vector_attack,
)
from dstar_flwr.records import ArrayLayout, flatten_record, layout_of, unflatten_vector

__all__ = [
    "DATA_ATTACKS",
    "REPLY_ATTACKS",
    "VECTOR_ATTACKS",
    "AttackContext",
    "AttackParams",
    "VectorAttack",
    "attack_arrays",
    "attack_kind",
    "estimation_chunks",
    "flatten_arrays",
    "flip_labels",
    "floating_layout",
    "get_vector_attack",
    "is_data_attack",
    "unflatten_like",
]


def is_data_attack(name: str) -> bool:
    """Return whether the attack poisons the local data (e.g. "label-flip").

    Parameters
    ----------
    name : str
        An attack name.

    Returns
    -------
    bool
        True for data attacks.
    """
    return attack_kind(name) == "data"


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Map each label ``c`` to ``num_classes - 1 - c`` (the label-flip attack).

    Parameters
    ----------
    y : np.ndarray
        Integer labels in ``0 .. num_classes - 1``.
    num_classes : int
        Number of classes.

    Returns
    -------
    np.ndarray
        The flipped labels.
    """
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} to be flipped")
    return num_classes - 1 - labels


def estimation_chunks(
    num_examples: int, num_chunks: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split example indices into ``num_chunks`` disjoint, near-equal random chunks.

    A client-side attacker trains from the global weights on each chunk and
    uses the resulting updates as its sample of honest updates.

    Parameters
    ----------
    num_examples : int
        The node's example count.
    num_chunks : int
        m, run-config ``attack-estimation-batches``, ``1 <= m <= num_examples``.
    rng : np.random.Generator
        Shuffles the indices.

    Returns
    -------
    list of np.ndarray
        m index arrays, sizes differing by at most one, together a permutation
        of ``range(num_examples)``.
    """
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"attack-estimation-batches must be an integer >= 1, got {num_chunks!r}")
    if num_chunks > num_examples:
        raise ValueError(
            f"attack-estimation-batches = {num_chunks} needs at least that many examples, but "
            f"this node has {num_examples}; lower attack-estimation-batches"
        )
    return np.array_split(rng.permutation(num_examples), num_chunks)


def floating_layout(record: ArrayRecord) -> ArrayLayout:
    """The layout of ``record``'s floating arrays only, in record order.

    Integer (and boolean) arrays, e.g. BatchNorm's ``num_batches_tracked``, are
    not parameters and are never attacked, so they are left out.

    Parameters
    ----------
    record : ArrayRecord
        Named arrays, e.g. a model's state dict.

    Returns
    -------
    ArrayLayout
        Keys, shapes and dtypes of the floating arrays.
    """
    layout = layout_of(record)
    kept = [i for i, dtype in enumerate(layout.dtypes) if np.issubdtype(dtype, np.floating)]
    return ArrayLayout(
        keys=tuple(layout.keys[i] for i in kept),
        shapes=tuple(layout.shapes[i] for i in kept),
        dtypes=tuple(layout.dtypes[i] for i in kept),
    )


def flatten_arrays(record: ArrayRecord) -> np.ndarray:
    """Concatenate the record's floating arrays, in record order, into one vector.

    Parameters
    ----------
    record : ArrayRecord
        Named arrays, e.g. a model's state dict.

    Returns
    -------
    np.ndarray
        1-D vector, float32 unless some array is wider (then that dtype); the
        integer arrays are left out (see :func:`floating_layout`).
    """
    return flatten_record(record, floating_layout(record))


def unflatten_like(vector: np.ndarray, template: ArrayRecord) -> ArrayRecord:
    """Inverse of :func:`flatten_arrays`: cut ``vector`` into ``template``'s arrays.

    Parameters
    ----------
    vector : np.ndarray
        1-D vector as long as all of ``template``'s floating arrays together.
    template : ArrayRecord
        Gives the keys, order, shapes and dtypes; its non-floating arrays are
        copied into the result unchanged.

    Returns
    -------
    ArrayRecord
        A new record with the same keys in the same order.
    """
    vector = np.asarray(vector)
    layout = floating_layout(template)
    if vector.shape != (layout.size,):
        raise ValueError(
            f"vector of shape {vector.shape} does not fit the template: its floating "
            f"arrays hold {layout.size} values"
        )
    floating = unflatten_vector(vector, layout)
    return ArrayRecord(
        {
            key: floating[key] if key in floating else Array(array.numpy())
            for key, array in template.items()
        }
    )


def attack_arrays(
    local: ArrayRecord | Sequence[ArrayRecord],
    global_arrays: ArrayRecord,
    attack: VectorAttack,
    context: AttackContext,
) -> ArrayRecord:
    """Return the weights a Byzantine node sends: ``w_global + attack(U)``.

    Parameters
    ----------
    local : ArrayRecord or sequence of ArrayRecord
        The node's honestly trained weights: one record (its full update) or
        one per estimation chunk. Row ``i`` of ``U`` is ``local[i] -
        global_arrays`` over the floating arrays. The integer buffers sent are
        the last record's.
    global_arrays : ArrayRecord
        The weights the round started from.
    attack : VectorAttack
        The vector attack.
    context : AttackContext
        n, f, the attack's randomness and parameters.

    Returns
    -------
    ArrayRecord
        The weights to send, with the local records' keys, order, shapes and dtypes.
    """
    records = [local] if isinstance(local, ArrayRecord) else list(local)
    if not records:
        raise ValueError("attack_arrays needs at least one trained record")
    for record in records:
        if list(record.keys()) != list(global_arrays.keys()):
            raise ValueError("local and global arrays must have the same names in the same order")
    base = flatten_arrays(global_arrays)
    honest = np.stack([flatten_arrays(record) - base for record in records])
    vector = apply_vector_attack(attack, honest, context)
    return unflatten_like(base + vector.astype(base.dtype, copy=False), records[-1])

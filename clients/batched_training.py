"""Many nodes' local training in one batched pass, step for step the same as each alone.

A simulation on one machine spends most of its time in the nodes' local SGD, and
for the small models of the offline datasets almost all of that is per-step
overhead. :func:`train_many` trains every node of a round at once: the models'
parameters are stacked along a leading node axis and one ``torch.func.vmap``-ed
gradient step advances them all. Each node keeps its own data, its own seeded
batch order (the permutation :func:`clients.training.train_model` draws) and its
own number of steps; a node whose epochs are done, and the padding of a short
last batch, get zero weight. An MLP runs as batched matrix products; any other
model through ``torch.func.vmap``. Plain SGD on each node's mean cross-entropy is
therefore exactly :func:`clients.training.train_from_arrays` per node, up to
float rounding (``tests/test_batched_training.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional

from clients.training import (
    Device,
    LabelMap,
    as_inputs,
    check_training_arguments,
    model_from_arrays,
    remap_labels,
)


@dataclass(frozen=True, eq=False)
class TrainingJob:
    """One node's local training in a batched pass.

    Attributes
    ----------
    x : np.ndarray
        The node's examples, shape ``(n, *input_shape)``.
    y : np.ndarray
        Its integer labels, shape ``(n,)``.
    seed : int
        Seeds its per-epoch shuffling, as ``train_model``'s ``seed``.
    label_map : np.ndarray or callable, optional
        Relabels ``y`` first (the label-flip attack), as in ``train_model``.
    """

    x: np.ndarray
    y: np.ndarray
    seed: int
    label_map: LabelMap | None = None


def batch_schedule(
    num_examples: int, *, epochs: int, batch_size: int, seed: int
) -> list[np.ndarray]:
    """The example positions of every SGD step, in order, as ``train_model`` draws them.

    Parameters
    ----------
    num_examples : int
        Size of the node's data.
    epochs, batch_size, seed : int
        As in :func:`clients.training.train_model`.

    Returns
    -------
    list of np.ndarray
        One index array per step; the last batch of an epoch may be smaller.
    """
    shuffler = np.random.default_rng(seed)
    steps = []
    for _ in range(epochs):
        order = shuffler.permutation(num_examples)
        steps.extend(np.array_split(order, range(batch_size, num_examples, batch_size)))
    return steps


def train_many(
    arrays: ArrayRecord,
    dataset: str,
    jobs: Sequence[TrainingJob],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: Device,
) -> list[tuple[ArrayRecord, float]]:
    """Run every job's local training from ``arrays`` in one batched pass.

    Parameters
    ----------
    arrays : ArrayRecord
        The starting weights (the global model), shared by every job.
    dataset : str
        Dataset name, which picks the architecture.
    jobs : sequence of TrainingJob
        One per node.
    epochs, batch_size, learning_rate, device
        As in :func:`clients.training.train_from_arrays`.

    Returns
    -------
    list of (ArrayRecord, float)
        Per job, in order: the trained weights (on the CPU, named and ordered as
        the model's state dict) and the mean training loss, as
        ``train_from_arrays`` returns them.
    """
    check_training_arguments(epochs, batch_size, learning_rate)
    if not jobs:
        return []
    device = torch.device(device)
    model = model_from_arrays(arrays, dataset).to(device)
    buffers = {name: buffer for name, buffer in model.named_buffers()}
    start = {name: p.detach() for name, p in model.named_parameters()}
    params = {
        name: p.unsqueeze(0).repeat(len(jobs), *([1] * p.dim())).contiguous()
        for name, p in start.items()
    }
    data, labels, positions, weights = _padded_steps(jobs, epochs, batch_size, device)

    step = _stacked_step(model, buffers)
    nodes = torch.arange(len(jobs), device=device)[:, None]
    loss_sums = torch.zeros(len(jobs), device=device)
    counts = (weights > 0).sum(dim=2)  # examples per node and step
    for s in range(positions.shape[0]):
        index = positions[s]
        grads, losses = step(params, data[nodes, index], labels[nodes, index], weights[s])
        with torch.no_grad():
            for name, gradient in grads.items():
                params[name].sub_(gradient, alpha=learning_rate)
            loss_sums += losses.detach() * counts[s]
    sizes = torch.tensor([len(job.y) for job in jobs], dtype=torch.float32, device=device)
    mean_losses = (loss_sums / (epochs * sizes)).tolist()
    names = list(model.state_dict())
    results = []
    for j, loss in enumerate(mean_losses):
        state = {
            name: (params[name][j] if name in params else buffers[name]).detach().cpu()
            for name in names
        }
        results.append((ArrayRecord(state), float(loss)))
    return results


StepFn = Callable[
    [dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[dict[str, torch.Tensor], torch.Tensor],
]


def _stacked_step(model: nn.Module, buffers: dict[str, torch.Tensor]) -> StepFn:
    """A function of stacked parameters and batches: every node's gradient and loss.

    Each node's loss is the sum of its examples' cross-entropies times their
    weights. A plain stack of ``Flatten``, ``Linear`` and ``ReLU`` layers (the MLP)
    runs as batched matrix products, about twice as fast as the general path:
    ``torch.func.vmap`` over ``functional_call`` of the model.
    """
    if isinstance(model, nn.Sequential) and all(
        isinstance(layer, nn.Flatten | nn.Linear | nn.ReLU) for layer in model
    ):
        layers = list(model.named_children())

        def stacked(params, x, y, weight):  # type: ignore[no-untyped-def]
            leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
            h = x.flatten(start_dim=2)
            for name, layer in layers:
                if isinstance(layer, nn.Linear):
                    bias = leaves.get(f"{name}.bias")
                    weight_t = leaves[f"{name}.weight"].transpose(1, 2)
                    h = h @ weight_t if bias is None else torch.baddbmm(bias[:, None], h, weight_t)
                elif isinstance(layer, nn.ReLU):
                    h = h.relu()
            losses = functional.cross_entropy(
                h.flatten(end_dim=1), y.flatten(), reduction="none"
            ).view_as(weight)
            per_node = (losses * weight).sum(dim=1)
            grads = torch.autograd.grad(per_node.sum(), list(leaves.values()))
            return dict(zip(leaves, grads, strict=True)), per_node

        return stacked

    def loss_of(
        node_params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        logits = functional_call(model, (node_params, buffers), (x,))
        return (functional.cross_entropy(logits, y, reduction="none") * weight).sum()

    return vmap(grad_and_value(loss_of))


def _padded_steps(
    jobs: Sequence[TrainingJob], epochs: int, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the jobs' data and their step schedules, padded to common shapes.

    Returns ``data`` ``(J, n_max + 1, ...)`` and ``labels`` ``(J, n_max + 1)``,
    whose last row is a zero padding example, ``positions`` ``(S, J, B)`` into
    them (padding points at the last row) and per-example ``weights``
    ``(S, J, B)``: 1 / batch size for a real example, 0 for padding.
    """
    inputs = []
    targets = []
    schedules = []
    for job in jobs:
        mapped = remap_labels(job.y, job.label_map)
        inputs.append(as_inputs(job.x, mapped))
        targets.append(torch.tensor(np.asarray(mapped), dtype=torch.int64))
        schedules.append(
            batch_schedule(len(mapped), epochs=epochs, batch_size=batch_size, seed=job.seed)
        )
    pad_row = max(len(t) for t in targets)
    feature_shape = inputs[0].shape[1:]
    data = torch.zeros((len(jobs), pad_row + 1, *feature_shape), dtype=torch.float32)
    labels = torch.zeros((len(jobs), pad_row + 1), dtype=torch.int64)
    for j, (x, y) in enumerate(zip(inputs, targets, strict=True)):
        data[j, : len(y)] = x
        labels[j, : len(y)] = y
    num_steps = max(len(schedule) for schedule in schedules)
    positions = np.full((num_steps, len(jobs), batch_size), pad_row, dtype=np.int64)
    weights = np.zeros((num_steps, len(jobs), batch_size), dtype=np.float32)
    for j, schedule in enumerate(schedules):
        for s, batch in enumerate(schedule):
            positions[s, j, : len(batch)] = batch
            weights[s, j, : len(batch)] = 1.0 / len(batch)
    return (
        data.to(device),
        labels.to(device),
        torch.from_numpy(positions).to(device),
        torch.from_numpy(weights).to(device),
    )

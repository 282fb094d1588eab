"""Local training and evaluation, shared by the clients and the server.

dSTAR's server-side validation update must be exactly the honest clients' local
training, so both call :func:`train_from_arrays`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.nn import functional

from clients.models import build_model
from clients.run_config import RunConfigSettings, setting

LabelMap = np.ndarray | Callable[[np.ndarray], np.ndarray]
Device = torch.device | str

_CUDA_DEVICE = re.compile(r"cuda(:\d+)?")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


@dataclass(frozen=True)
class LocalTrainingConfig(RunConfigSettings):
    """Local SGD settings (run-config ``local-epochs``, ``batch-size``, ``learning-rate``).

    Attributes
    ----------
    epochs : int
        Passes over the local data per round, >= 1.
    batch_size : int
        Examples per SGD step, >= 1.
    learning_rate : float
        SGD step size, > 0.
    """

    epochs: int = setting("local-epochs", required=True)
    batch_size: int = setting("batch-size", required=True)
    learning_rate: float = setting("learning-rate", required=True)

    def __post_init__(self) -> None:
        check_training_arguments(self.epochs, self.batch_size, self.learning_rate)


def select_device(preference: str = "auto") -> torch.device:
    """Turn a device setting into a torch device.

    Parameters
    ----------
    preference : str
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".

    Returns
    -------
    torch.device
        The device to train on.

    Raises
    ------
    ValueError
        If the setting is unknown, or asks for CUDA (or a CUDA index) that this
        machine does not have.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if not isinstance(preference, str) or not _CUDA_DEVICE.fullmatch(preference):
        raise ValueError(
            f"unknown device {preference!r}; set 'device' to one of {', '.join(DEVICE_CHOICES)}"
        )
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {preference!r} asks for CUDA, but CUDA is not available here "
            f'(torch {torch.__version__}); set \'device\' to "auto" or "cpu"'
        )
    device = torch.device(preference)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {preference!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
            f'cuda:{torch.cuda.device_count() - 1}, "cuda" or "auto"'
        )
    return device


def train_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: Device,
    seed: int,
    label_map: LabelMap | None = None,
) -> float:
    """Train ``model`` in place with plain mini-batch SGD on cross-entropy.

    Parameters
    ----------
    model : nn.Module
        The model; it is moved to ``device``.
    x : np.ndarray
        Examples, shape ``(N, *input_shape)``.
    y : np.ndarray
        Integer labels, shape ``(N,)``.
    epochs : int
        Passes over the data, >= 1.
    batch_size : int
        Examples per step, >= 1; the last batch of an epoch may be smaller.
    learning_rate : float
        SGD step size, > 0.
    device : torch.device or str
        Where to train.
    seed : int
        Seeds the per-epoch shuffling, the only randomness of training.
    label_map : np.ndarray or callable, optional
        Relabels ``y`` before training: an array indexed by label, or a function
        of the label array (the label-flip attack passes one).

    Returns
    -------
    float
        Mean training loss over every example of every epoch, each taken when its
        batch was processed.
    """
    check_training_arguments(epochs, batch_size, learning_rate)
    labels = remap_labels(y, label_map)
    inputs = as_inputs(x, labels)
    device = torch.device(device)
    model.to(device)
    model.train()
    inputs_on_device = inputs.to(device)
    labels_on_device = torch.tensor(labels, dtype=torch.int64, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    shuffler = np.random.default_rng(seed)
    num_examples = len(labels)
    loss_sum = torch.zeros((), device=device)
    for _ in range(epochs):
        order = torch.as_tensor(shuffler.permutation(num_examples), device=device)
        for batch in torch.split(order, batch_size):
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs_on_device[batch])
            loss = functional.cross_entropy(logits, labels_on_device[batch])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(batch)
    return float(loss_sum.item()) / (epochs * num_examples)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: Device,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Return the mean cross-entropy loss and the accuracy of ``model`` on (x, y).

    Parameters
    ----------
    model : nn.Module
        The model; it is moved to ``device`` and put in eval mode.
    x : np.ndarray
        Examples, shape ``(N, *input_shape)``, N >= 1.
    y : np.ndarray
        Integer labels, shape ``(N,)``.
    device : torch.device or str
        Where to evaluate.
    batch_size : int
        Examples per forward pass.

    Returns
    -------
    tuple of float
        ``(loss, accuracy)``, accuracy in [0, 1].
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    labels = np.asarray(y)
    inputs = as_inputs(x, labels)
    device = torch.device(device)
    model.to(device)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    targets = torch.tensor(labels, dtype=torch.int64)
    for start in range(0, len(labels), batch_size):
        batch_inputs = inputs[start : start + batch_size].to(device)
        batch_targets = targets[start : start + batch_size].to(device)
        logits = model(batch_inputs)
        loss_sum += functional.cross_entropy(logits, batch_targets, reduction="sum")
        correct += (logits.argmax(dim=1) == batch_targets).sum()
    return float(loss_sum.item()) / len(labels), int(correct.item()) / len(labels)


def model_from_arrays(arrays: ArrayRecord, dataset: str) -> nn.Module:
    """Build the dataset's model and load ``arrays`` into it.

    Parameters
    ----------
    arrays : ArrayRecord
        A state dict as sent in a Flower message.
    dataset : str
        Dataset name, which picks the architecture.

    Returns
    -------
    nn.Module
        The model, on the CPU.

    Raises
    ------
    ValueError
        If the arrays' names or shapes do not fit the model.
    """
    # The weights are replaced at once; a fixed seed leaves torch's global RNG alone.
    model = build_model(dataset, seed=0)
    try:
        model.load_state_dict(arrays.to_torch_state_dict())
    except (RuntimeError, KeyError, TypeError) as error:
        raise ValueError(
            f"the received arrays do not fit the {dataset!r} model: {error}"
        ) from error
    return model


def train_from_arrays(
    arrays: ArrayRecord,
    dataset: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: Device,
    seed: int,
    label_map: LabelMap | None = None,
) -> tuple[ArrayRecord, float]:
    """Run one node's local training from the given weights.

    Parameters
    ----------
    arrays : ArrayRecord
        Starting weights (the global model).
    dataset : str
        Dataset name, which picks the architecture.
    x, y : np.ndarray
        Local examples and labels.
    epochs, batch_size, learning_rate, device, seed, label_map
        As in :func:`train_model`.

    Returns
    -------
    tuple of (ArrayRecord, float)
        The trained weights (on the CPU, same names and order as the model's
        state dict) and the mean training loss.
    """
    model = model_from_arrays(arrays, dataset)
    loss = train_model(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        label_map=label_map,
    )
    return _to_array_record(model), loss


def evaluate_arrays(
    arrays: ArrayRecord,
    dataset: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: Device,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` of the given weights on (x, y).

    Parameters
    ----------
    arrays : ArrayRecord
        Weights to evaluate.
    dataset : str
        Dataset name, which picks the architecture.
    x, y : np.ndarray
        Examples and labels.
    device : torch.device or str
        Where to evaluate.
    batch_size : int
        Examples per forward pass.

    Returns
    -------
    tuple of float
        Mean cross-entropy loss and accuracy.
    """
    model = model_from_arrays(arrays, dataset)
    return evaluate_model(model, x, y, device=device, batch_size=batch_size)


def _to_array_record(model: nn.Module) -> ArrayRecord:
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return ArrayRecord(state)


def as_inputs(x: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """``x`` as a float32 tensor, after checking one label per example and some examples."""
    if labels.ndim != 1 or len(x) != len(labels):
        raise ValueError(
            f"need one label per example: x has {len(x)} examples, y has shape {labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("no examples: cannot train or evaluate on an empty set")
    # torch.tensor copies, so read-only (cached) arrays are fine.
    return torch.tensor(np.asarray(x, dtype=np.float32))


def remap_labels(y: np.ndarray, label_map: LabelMap | None) -> np.ndarray:
    """``y`` relabelled by ``label_map`` (an array indexed by label, or a function)."""
    labels = np.asarray(y)
    if label_map is None:
        return labels
    mapped = label_map(labels) if callable(label_map) else np.asarray(label_map)[labels]
    mapped = np.asarray(mapped)
    if mapped.shape != labels.shape:
        raise ValueError(f"label_map changed the label shape from {labels.shape} to {mapped.shape}")
    return mapped


def check_training_arguments(epochs: int, batch_size: int, learning_rate: float) -> None:
    """Raise ValueError naming the run-config key of an invalid local-training setting."""
    for key, value in (("local-epochs", epochs), ("batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not np.isfinite(learning_rate)
        or learning_rate <= 0
    ):
        raise ValueError(f"learning-rate must be a finite number > 0, got {learning_rate!r}")

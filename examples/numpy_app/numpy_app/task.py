"""The model and the data: linear regression y = X w + b + noise, all numpy.

Every partition draws its own examples from one true model (fixed seed), so the
federation can learn it; the model is the list ``[w, b]``.
"""

import numpy as np

NUM_FEATURES = 5
EXAMPLES_PER_PARTITION = 64
TRUE_WEIGHTS = np.linspace(-2.0, 2.0, NUM_FEATURES).astype(np.float32)
TRUE_BIAS = np.float32(0.5)


def initial_model() -> list[np.ndarray]:
    """Zero weights and bias."""
    return [np.zeros(NUM_FEATURES, dtype=np.float32), np.zeros(1, dtype=np.float32)]


def load_partition(partition_id: int, seed: int = 2024) -> tuple[np.ndarray, np.ndarray]:
    """The examples ``(X, y)`` of one partition."""
    rng = np.random.default_rng([seed, partition_id])
    x = rng.normal(size=(EXAMPLES_PER_PARTITION, NUM_FEATURES)).astype(np.float32)
    noise = rng.normal(scale=0.1, size=EXAMPLES_PER_PARTITION).astype(np.float32)
    return x, x @ TRUE_WEIGHTS + TRUE_BIAS + noise


def loss(model: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error."""
    weights, bias = model
    return float(np.mean((x @ weights + bias[0] - y) ** 2))


def train(
    model: list[np.ndarray], x: np.ndarray, y: np.ndarray, steps: int, learning_rate: float
) -> list[np.ndarray]:
    """Full-batch gradient descent on the mean squared error."""
    weights, bias = model[0].copy(), model[1].copy()
    for _ in range(steps):
        error = x @ weights + bias[0] - y
        weights -= learning_rate * (2.0 / len(y)) * (x.T @ error)
        bias -= learning_rate * 2.0 * np.mean(error)
    return [weights.astype(np.float32), bias.astype(np.float32)]


def distance_to_truth(model: list[np.ndarray]) -> float:
    """How far ``[w, b]`` is from the true model (Euclidean)."""
    weights, bias = model
    return float(np.sqrt(np.sum((weights - TRUE_WEIGHTS) ** 2) + (bias[0] - TRUE_BIAS) ** 2))

"""Batched local training is each node's own SGD, step for step."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from flwr.app import ArrayRecord

from clients.attacks import flatten_arrays, flip_labels
from clients.batched_training import TrainingJob, batch_schedule, train_many
from clients.models import build_model
from clients.training import train_from_arrays


def _jobs(rng: np.random.Generator, sizes: list[int], shape: tuple[int, ...]) -> list[TrainingJob]:
    jobs = []
    for i, size in enumerate(sizes):
        x = rng.normal(size=(size, *shape)).astype(np.float32)
        y = rng.integers(0, 10, size=size)
        label_map = functools.partial(flip_labels, num_classes=10) if i == 1 else None
        jobs.append(TrainingJob(x, y, seed=100 + i, label_map=label_map))
    return jobs


def _alone(arrays: ArrayRecord, dataset: str, job: TrainingJob, **kwargs: object):
    return train_from_arrays(
        arrays, dataset, job.x, job.y, seed=job.seed, label_map=job.label_map, **kwargs
    )


@pytest.mark.parametrize(
    ("dataset", "shape", "sizes"),
    [
        ("mnist1d", (40,), [37, 5, 64, 1, 90]),  # the MLP: batched matrix products
        ("fashion-mnist", (1, 28, 28), [9, 4, 13]),  # a CNN: torch.func.vmap
    ],
)
@pytest.mark.parametrize(("epochs", "batch_size"), [(1, 16), (3, 8)])
def test_train_many_matches_each_node_trained_alone(
    dataset: str, shape: tuple[int, ...], sizes: list[int], epochs: int, batch_size: int
) -> None:
    arrays = ArrayRecord(build_model(dataset, seed=3).state_dict())
    jobs = _jobs(np.random.default_rng(0), sizes, shape)
    settings = {"epochs": epochs, "batch_size": batch_size, "learning_rate": 0.1, "device": "cpu"}
    batched = train_many(arrays, dataset, jobs, **settings)
    assert len(batched) == len(jobs)
    for job, (weights, loss) in zip(jobs, batched, strict=True):
        expected_weights, expected_loss = _alone(arrays, dataset, job, **settings)
        assert list(weights.keys()) == list(expected_weights.keys())
        np.testing.assert_allclose(
            flatten_arrays(weights), flatten_arrays(expected_weights), rtol=0, atol=2e-6
        )
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        # Training moved the weights: the comparison is not of two untouched copies.
        assert np.abs(flatten_arrays(weights) - flatten_arrays(arrays)).max() > 1e-3


def test_nodes_do_not_leak_into_each_other() -> None:
    """A node's result does not depend on which other nodes share its pass."""
    arrays = ArrayRecord(build_model("mnist1d", seed=0).state_dict())
    jobs = _jobs(np.random.default_rng(1), [20, 70, 3], (40,))
    settings = {"epochs": 2, "batch_size": 8, "learning_rate": 0.5, "device": "cpu"}
    together = train_many(arrays, "mnist1d", jobs, **settings)
    alone = train_many(arrays, "mnist1d", jobs[2:], **settings)
    np.testing.assert_allclose(
        flatten_arrays(together[2][0]), flatten_arrays(alone[0][0]), rtol=0, atol=1e-6
    )


def test_batch_schedule_is_train_models_shuffle() -> None:
    steps = batch_schedule(10, epochs=2, batch_size=4, seed=7)
    assert [len(s) for s in steps] == [4, 4, 2, 4, 4, 2]
    shuffler = np.random.default_rng(7)
    first, second = shuffler.permutation(10), shuffler.permutation(10)
    np.testing.assert_array_equal(np.concatenate(steps[:3]), first)
    np.testing.assert_array_equal(np.concatenate(steps[3:]), second)


def test_no_jobs_and_bad_settings() -> None:
    arrays = ArrayRecord(build_model("digits", seed=0).state_dict())
    assert (
        train_many(arrays, "digits", [], epochs=1, batch_size=4, learning_rate=0.1, device="cpu")
        == []
    )
    job = TrainingJob(np.zeros((3, 64), np.float32), np.zeros(3, int), seed=0)
    with pytest.raises(ValueError, match="local-epochs"):
        train_many(arrays, "digits", [job], epochs=0, batch_size=4, learning_rate=0.1, device="cpu")

"""The simulations' run config: DStar's weighting keys."""

import pytest

from simulations.app.experiment import ExperimentConfig

from .node_support import run_config


def test_weighting_defaults_to_uniform_without_an_example_cap() -> None:
    config = ExperimentConfig.from_run_config(run_config())
    assert (config.weighting, config.example_cap) == ("uniform", None)


def test_num_examples_weighting_reads_the_example_cap() -> None:
    config = ExperimentConfig.from_run_config(
        run_config(weighting="num-examples", example_cap=600.0)
    )
    assert (config.weighting, config.example_cap) == ("num-examples", 600.0)


def test_num_examples_weighting_without_an_example_cap_fails_fast() -> None:
    with pytest.raises(ValueError, match="'example-cap'"):
        ExperimentConfig.from_run_config(run_config(weighting="num-examples"))

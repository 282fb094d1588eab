"""The server side of an experiment, read from the run config, and its strategy."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from clients.run_config import STRATEGIES, none_if_empty, read_settings, setting
from dstar_flwr import DStar
from simulations.baselines.fedavg_timeout import FedAvgTimeout
from simulations.baselines.fltrust import FLTrust


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class ExperimentConfig:
    """Server-side run config of a simulation (the clients read their own keys)."""

    # Each field is read from its run-config key (setting() is a dataclasses.field).
    strategy: str = setting("strategy", required=True)
    num_server_rounds: int = setting("num-server-rounds", required=True)
    round_timeout: float = setting("round-timeout", required=True)
    fedavg_timeout: float = setting("fedavg-timeout", required=True)
    dataset: str = setting("dataset", required=True)
    seed: int = setting("seed", required=True)
    results_dir: Path = setting("results-dir", required=True, convert=_path)  # noqa: RUF009
    # from_run_config turns "" into <strategy>-<dataset>-seed<seed>.
    run_name: str = setting("run-name", required=True)
    fraction_evaluate: float = setting("fraction-evaluate", required=True)
    first_k: float = setting("first-k", required=True)
    num_byzantine: int = setting("num-byzantine", required=True)
    min_replies: int | None = setting("min-replies", required=True, convert=none_if_empty)
    variant: str = setting("dstar-variant", required=True)
    max_robust_z: float = setting("max-robust-z", required=True)
    norm_test: bool = setting("norm-test", required=True)
    threshold_factor: float = setting("threshold-factor", required=True)
    deviation_scale: str = setting("deviation-scale", required=True)
    center: str = setting("dstar-center", required=True)
    server_learning_rate: float = setting("server-learning-rate", required=True)
    validation_update: bool = setting("validation-update", required=True)
    checkpoint_dir: Path | None = setting(  # noqa: RUF009
        "checkpoint-dir", default=None, convert=_optional_path
    )
    resume: bool = setting("resume")
    fraction_train: float = setting("fraction-train")
    weighting: str = setting("weighting")
    example_cap: float | None = setting("example-cap", default=None, convert=none_if_empty)

    def __post_init__(self) -> None:
        """Fail fast on settings that cannot work."""
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"run config 'strategy' must be one of {STRATEGIES}, got {self.strategy!r}."
            )
        if self.num_server_rounds < 1:
            raise ValueError("run config 'num-server-rounds' must be >= 1.")
        if self.round_timeout <= 0:
            raise ValueError("run config 'round-timeout' must be > 0 seconds.")
        if self.fedavg_timeout <= 0:
            raise ValueError("run config 'fedavg-timeout' must be > 0 seconds.")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError("run config 'fraction-train' must be in (0, 1].")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ValueError("run config 'fraction-evaluate' must be in [0, 1].")
        if self.weighting == "num-examples" and self.example_cap is None:
            raise ValueError(
                "run config 'weighting' = 'num-examples' needs 'example-cap' > 0: your bound "
                "on an honest node's example count (each claim is used as "
                "min(claim, example-cap)). Set it, or use weighting = 'uniform'."
            )
        if self.resume and self.checkpoint_dir is None:
            raise ValueError(
                "run config 'resume' = true needs 'checkpoint-dir': the folder holding "
                "the checkpoint of the run to resume."
            )
        if self.checkpoint_dir is not None and self.strategy != "dstar":
            raise ValueError(
                f"run config 'checkpoint-dir' and 'resume' work with strategy 'dstar' only, "
                f'not {self.strategy!r}: set checkpoint-dir = "" and resume = false, '
                "or use strategy 'dstar'."
            )

    @property
    def checkpoint_path(self) -> Path | None:
        """``<checkpoint-dir>/<run-name>.ckpt.npz``, or None without a checkpoint dir."""
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / f"{self.run_name}.ckpt.npz"

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> "ExperimentConfig":
        """Read and check the server's keys of ``context.run_config``."""
        values = read_settings(cls, run_config)
        if not values["run_name"]:
            values["run_name"] = f"{values['strategy']}-{values['dataset']}-seed{values['seed']}"
        return cls(**values)


def build_strategy(
    config: ExperimentConfig,
    validation_train_fn: Callable[[ArrayRecord], ArrayRecord] | None,
    num_nodes: int,
) -> Strategy:
    """The strategy the run config names, configured from it.

    Flower's built-in strategies are used as Flower ships them, with ``f``
    (run-config ``num-byzantine``) as their number of malicious nodes where they
    take one; MultiKrum selects ``N - f`` (Flower's default of 1 is plain Krum),
    FedTrimmedAvg trims Flower's default ``beta = 0.2`` at each end.
    ``fedavg-timeout`` is FedAvg whose training rounds end after run-config
    ``fedavg-timeout`` seconds (:class:`FedAvgTimeout`); ``fltrust`` is
    :class:`~simulations.baselines.fltrust.FLTrust` with ``validation_train_fn`` as its root
    update (required) and DStar's ``server-learning-rate``.
    """
    common = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
    }
    f = config.num_byzantine
    if config.strategy == "fedavg":
        return FedAvg(**common)
    if config.strategy == "fedavg-timeout":
        return FedAvgTimeout(train_timeout=config.fedavg_timeout, **common)
    if config.strategy == "fltrust":
        if validation_train_fn is None:
            raise ValueError("strategy 'fltrust' needs the server's validation_train_fn.")
        return FLTrust(
            validation_train_fn=validation_train_fn,
            server_learning_rate=config.server_learning_rate,
            **common,
        )
    if config.strategy == "krum":
        return Krum(num_malicious_nodes=f, **common)
    if config.strategy == "multikrum":
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=max(1, num_nodes - f), **common)
    if config.strategy == "bulyan":
        return Bulyan(num_malicious_nodes=f, **common)
    if config.strategy == "fedmedian":
        return FedMedian(**common)
    if config.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common)
    first_k = config.first_k
    return DStar(
        num_byzantine=config.num_byzantine,
        first_k=int(first_k) if first_k >= 1 else first_k,
        min_replies=config.min_replies,
        variant=config.variant,
        max_robust_z=config.max_robust_z,
        norm_test=config.norm_test,
        threshold_factor=config.threshold_factor,
        deviation_scale=config.deviation_scale,
        center=config.center,
        server_learning_rate=config.server_learning_rate,
        weighting=config.weighting,
        example_cap=config.example_cap,
        validation_train_fn=validation_train_fn if config.validation_update else None,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
    )

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

from clients.config import read_bool, read_float, read_int, read_str
from dstar_flwr import DStar
from simulations.baselines.fedavg_timeout import FedAvgTimeout
from simulations.baselines.fltrust import FLTrust

STRATEGIES: tuple[str, ...] = (
    "dstar",
    "fedavg",
    "fedavg-timeout",
    "fltrust",
    "krum",
    "multikrum",
    "bulyan",
    "fedmedian",
    "fedtrimmedavg",
)


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class ExperimentConfig:
    """Server-side run config of a simulation (the clients read their own keys)."""

    strategy: str
    num_server_rounds: int
    round_timeout: float
    fedavg_timeout: float
    dataset: str
    seed: int
    results_dir: Path
    run_name: str
    fraction_evaluate: float
    first_k: float
    num_byzantine: int
    min_replies: int | None
    variant: str
    max_robust_z: float
    norm_test: bool
    threshold_factor: float
    deviation_scale: str
    center: str
    server_learning_rate: float
    validation_update: bool
    checkpoint_dir: Path | None = None
    resume: bool = False
    weighting: str = "uniform"
    example_cap: float | None = None

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
        strategy = read_str(run_config, "strategy")
        dataset = read_str(run_config, "dataset")
        seed = read_int(run_config, "seed")
        run_name = str(run_config.get("run-name", "") or f"{strategy}-{dataset}-seed{seed}")
        checkpoint_dir = read_str(run_config, "checkpoint-dir")
        return cls(
            strategy=strategy,
            num_server_rounds=read_int(run_config, "num-server-rounds"),
            round_timeout=read_float(run_config, "round-timeout"),
            fedavg_timeout=read_float(run_config, "fedavg-timeout"),
            dataset=dataset,
            seed=seed,
            results_dir=Path(read_str(run_config, "results-dir")).expanduser(),
            run_name=run_name,
            fraction_evaluate=read_float(run_config, "fraction-evaluate"),
            first_k=read_float(run_config, "first-k"),
            num_byzantine=read_int(run_config, "num-byzantine"),
            min_replies=read_int(run_config, "min-replies") or None,
            variant=read_str(run_config, "dstar-variant"),
            max_robust_z=read_float(run_config, "max-robust-z"),
            norm_test=read_bool(run_config, "norm-test"),
            threshold_factor=read_float(run_config, "threshold-factor"),
            deviation_scale=read_str(run_config, "deviation-scale"),
            center=read_str(run_config, "dstar-center"),
            server_learning_rate=read_float(run_config, "server-learning-rate"),
            validation_update=read_bool(run_config, "validation-update"),
            checkpoint_dir=Path(checkpoint_dir).expanduser() if checkpoint_dir else None,
            resume=read_bool(run_config, "resume"),
            weighting=read_str(run_config, "weighting"),
            example_cap=read_float(run_config, "example-cap") or None,
        )


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
    common = {"fraction_train": 1.0, "fraction_evaluate": config.fraction_evaluate}
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
        fraction_train=1.0,
        fraction_evaluate=config.fraction_evaluate,
    )

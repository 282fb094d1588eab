"""Print the scale figures: many virtual nodes on the simulation engine, many SuperNodes deployed.

Defaults are the full sizes; the flags shrink them (the tests run a few nodes
and rounds). Both write their figures as JSON (and the engine its per-round
costs as CSV) into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulations.benchmarks.scale.deployment import DeploymentSetting, Kill, run_deployment
from simulations.benchmarks.scale.engine import STRATEGIES, EngineSetting, run_engine
from simulations.federation.deploy import DeploymentError
from simulations.federation.launch import exit_on_sigterm, parse_overrides

DEFAULT_OUT = Path("results/scale")


def _engine_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    defaults = EngineSetting()
    parser = commands.add_parser(
        "engine",
        help="DStar and FedAvg on Flower's simulation engine: server CPU per round, memory",
        description="DStar and FedAvg on the same federation on Flower's simulation engine: "
        "the server's CPU seconds per round outside the clients, and its memory per round.",
    )
    parser.add_argument("--num-nodes", type=int, default=defaults.num_nodes)
    parser.add_argument("--sampled", type=int, default=defaults.sampled, help="nodes per round")
    parser.add_argument("--k", type=int, default=defaults.k, help="DStar's first k")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--byzantine-fraction", type=float, default=defaults.byzantine_fraction)
    parser.add_argument("--f", type=int, help="DStar's f (default: byzantine-fraction x sampled)")
    parser.add_argument(
        "--latency-median", type=float, default=defaults.latency_median, help="seconds"
    )
    parser.add_argument("--latency-sigma", type=float, default=defaults.latency_sigma)
    parser.add_argument("--dataset", default=defaults.dataset, choices=("digits", "mnist1d"))
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=defaults.max_parallel,
        help="ClientApps running at once (Ray actors)",
    )
    parser.add_argument("--round-timeout", type=float, default=defaults.round_timeout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument(
        "--target", type=float, default=1.2, help="the largest DStar/FedAvg ratio that passes"
    )
    parser.add_argument(
        "-c", "--run-config", action="append", default=[], help="more run-config overrides"
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT / "engine")


def _deployment_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    defaults = DeploymentSetting()
    parser = commands.add_parser(
        "deployment",
        help="SuperNodes killed and restarted, a ServerApp stop and resume: rounds and leftovers",
        description="A local deployment with SuperNodes killed and restarted and the ServerApp "
        "stopped and resumed: every round accounted for, no completed round lost, nothing left "
        "in the SuperLink's state.",
    )
    parser.add_argument("--num-supernodes", type=int, default=defaults.num_supernodes)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument(
        "--kill",
        action="append",
        metavar="ROUND:NODE",
        help="kill SuperNode NODE when ROUND starts (repeatable; default: "
        + " ".join(f"{k.server_round}:{k.node}" for k in defaults.kills)
        + ")",
    )
    parser.add_argument(
        "--stop-after", type=int, default=defaults.stop_after, help="stop after this round"
    )
    parser.add_argument("--first-k", type=float, default=defaults.first_k)
    parser.add_argument("--f", type=int, default=defaults.num_byzantine)
    parser.add_argument("--byzantine-fraction", type=float, default=defaults.byzantine_fraction)
    parser.add_argument(
        "--latency-median", type=float, default=defaults.latency_median, help="seconds"
    )
    parser.add_argument("--round-timeout", type=float, default=defaults.round_timeout)
    parser.add_argument("--run-limit", type=float, default=defaults.run_limit, help="seconds")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--insecure", action="store_true", help="no TLS, no authentication")
    parser.add_argument(
        "--sqlite-busy-timeout",
        type=float,
        default=defaults.sqlite_busy_timeout,
        help="seconds the SuperLink's SQLite waits for a lock (0: Flower's own, 5 s)",
    )
    parser.add_argument(
        "--supernode-niceness",
        type=int,
        default=defaults.supernode_niceness,
        help="run the SuperNodes under nice -n this (0: not niced)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep the federation's files here")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT / "deployment")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(
        prog="python -m simulations.benchmarks.scale", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _engine_parser(commands)
    _deployment_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "engine":
        try:
            setting = EngineSetting(
                num_nodes=args.num_nodes,
                sampled=args.sampled,
                k=args.k,
                rounds=args.rounds,
                byzantine_fraction=args.byzantine_fraction,
                num_byzantine=args.f,
                latency_median=args.latency_median,
                latency_sigma=args.latency_sigma,
                dataset=args.dataset,
                max_parallel=args.max_parallel,
                round_timeout=args.round_timeout,
                seed=args.seed,
            )
        except ValueError as error:
            parser.error(str(error))
        figures = run_engine(
            setting,
            args.out_dir,
            strategies=args.strategies,
            extra=parse_overrides(parser, args.run_config),
            target=args.target,
        )
        comparison = figures.get("dstar-over-fedavg")
        return 0 if not isinstance(comparison, dict) or comparison["within-target"] else 1
    try:
        kills = (
            tuple(Kill.parse(text) for text in args.kill)
            if args.kill
            else DeploymentSetting().kills
        )
        deployment = DeploymentSetting(
            num_supernodes=args.num_supernodes,
            rounds=args.rounds,
            kills=kills,
            stop_after=args.stop_after,
            first_k=args.first_k,
            num_byzantine=args.f,
            byzantine_fraction=args.byzantine_fraction,
            latency_median=args.latency_median,
            round_timeout=args.round_timeout,
            run_limit=args.run_limit,
            seed=args.seed,
            insecure=args.insecure,
            sqlite_busy_timeout=args.sqlite_busy_timeout or None,
            supernode_niceness=args.supernode_niceness,
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        figures = run_deployment(deployment, args.out_dir, work_dir=args.work_dir)
    except DeploymentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

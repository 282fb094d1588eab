"""Run one setting with several strategies and print them side by side.

The default is the default experiment of pyproject.toml (digits, 10 nodes,
2 Byzantine nodes sending Gaussian noise, 2 stragglers delayed 3 s every round,
10 rounds) with DStar and with Flower's FedAvg. It prints each strategy's final
test accuracy, mean training-round time (over all rounds, and over rounds 2..,
since round 1 also warms up the nodes' workers), and how often the filter
rejected the Byzantine and the honest replies among the first k; then the
accuracy difference and the round-time ratio, all measured in this one run.

``--engine flower`` (the default) runs each strategy on Flower's simulation
engine, where every node's ClientApp trains on this machine's cores at once, so
with many nodes on few cores CPU contention, not the latency model, can set the
round time. ``--engine inprocess`` runs the same ServerApp against
:mod:`simulations.federation.inprocess`: the nodes' training is one batched pass whose time
is shared among them, so they do not contend, and their latency delays set the
round time, as across a deployment's links.

Usage::

    python -m simulations.benchmarks.compare
    python -m simulations.benchmarks.compare -c "attack='sign-flip' attack-scale=4.0" --rounds 5
    python -m simulations.benchmarks.compare --engine inprocess --num-supernodes 20
"""

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from statistics import mean

from simulations.app.experiment import STRATEGIES
from simulations.federation.inprocess import run_inprocess
from simulations.federation.launch import exit_on_sigterm, parse_overrides, run_simulation


def _mean(values: list[float]) -> float:
    return mean(values) if values else math.nan


def summarize_run(path: Path) -> dict[str, float]:
    """The comparison's numbers from one results file."""
    results = json.loads(path.read_text())
    seconds = [r["round_seconds"] for r in results["rounds"] if r["round_seconds"] is not None]
    summary = results["summary"]

    def number(key: str) -> float:
        value = summary.get(key)
        return math.nan if value is None else float(value)

    return {
        "final-accuracy": number("final-test-accuracy"),
        "mean-round-s": _mean(seconds),
        "mean-round-s-2..": _mean(seconds[1:]),
        "byzantine-rejected": number("byzantine-rejection-rate"),
        "honest-rejected": number("honest-rejection-rate"),
    }


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, one strategy a line."""
    columns = list(next(iter(rows.values())))
    lines = [" | ".join([f"{'strategy':<8}", *(f"{c:>18}" for c in columns)])]
    for strategy, values in rows.items():
        lines.append(" | ".join([f"{strategy:<8}", *(f"{values[c]:>18.4f}" for c in columns)]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=["dstar", "fedavg"],
        choices=STRATEGIES,
        help="strategies to run (default: dstar fedavg)",
    )
    parser.add_argument("--num-supernodes", type=int, default=10, help="nodes (default: 10)")
    parser.add_argument("--rounds", type=int, help="num-server-rounds (default: pyproject's)")
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="run-config overrides as TOML key=value pairs, as for simulations.federation.launch",
    )
    parser.add_argument("--keep", type=Path, help="keep the results files in this folder")
    parser.add_argument(
        "--engine",
        choices=("flower", "inprocess"),
        default="flower",
        help="Flower's simulation engine, or the in-process grid (nodes that do not contend)",
    )
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args.run_config)
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dstar-compare-") as scratch:
        results_dir = args.keep or Path(scratch)
        for strategy in args.strategies:
            print(f"running {strategy} ...", flush=True)
            run = run_simulation if args.engine == "flower" else run_inprocess
            path = run(
                {
                    **overrides,
                    "strategy": strategy,
                    "results-dir": str(results_dir),
                    "run-name": f"compare-{strategy}",
                },
                num_supernodes=args.num_supernodes,
                quiet=True,
            )
            rows[strategy] = summarize_run(path)

    print()
    print(
        f"{args.num_supernodes} nodes, engine {args.engine}; "
        f"run-config overrides: {overrides or 'none'}"
    )
    print(format_table(rows))
    if "dstar" in rows:
        for other in (s for s in rows if s != "dstar"):
            gap = rows["dstar"]["final-accuracy"] - rows[other]["final-accuracy"]
            ratio = rows["dstar"]["mean-round-s"] / rows[other]["mean-round-s"]
            ratio_steady = rows["dstar"]["mean-round-s-2.."] / rows[other]["mean-round-s-2.."]
            print(
                f"dstar - {other}: accuracy {gap:+.4f}; round time ratio {ratio:.3f} "
                f"(rounds 2..: {ratio_steady:.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

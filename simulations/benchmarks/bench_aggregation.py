"""Aggregation cost: DStar against a plain mean and Flower's own aggregation functions.

For every (N, d) cell of the grid it draws N random float32 updates (a fixed seed per
cell), a validation update and example counts, and times each method on the same
inputs (best of R runs, ``time.perf_counter``):

- ``mean-stream``: a plain mean in one streaming pass (accumulate in place, then
  divide), the memory-bandwidth floor;
- ``dstar``: ``dstar_aggregate`` with ``num_byzantine=f``, the validation update and
  the example counts as weights;
- ``dstar-torch`` (only when asked for, with ``--methods``): the same call on torch
  tensors that already lie on ``--device`` (default ``cpu``; ``cuda`` on a GPU), so
  the time is the device's aggregation, the copy to it left out; on CUDA the call is
  followed by ``torch.cuda.synchronize()``;
- ``flwr-mean``, ``flwr-median``, ``flwr-trimmed-mean`` (cut 0.2 at each end),
  ``flwr-krum``, ``flwr-multikrum`` (keeps N - f), ``flwr-bulyan`` (Krum inside):
  the functions of ``flwr.server.strategy.aggregate``, each update passed as a
  one-array NDArrays with its example count.

f = floor(0.2 N) everywhere, except Bulyan, which needs N >= 4f + 3 and gets
min(f, (N - 3) // 4) (the CSV's ``f`` column says which f each row used).

Peak memory is the largest amount of memory a method allocated on top of what was
allocated before it started, traced by ``tracemalloc`` in one extra, untimed run
(numpy reports its array buffers to tracemalloc; numba's kernel scratch buffers,
under 1 MiB per thread here, are not traced). For ``dstar-torch`` it is torch's
peak on a CUDA device (``torch.cuda.max_memory_allocated``), and not measured on
the CPU (torch's CPU allocator is not traced).

Cells whose inputs plus a method's working set (estimated up front) exceed the
memory budget are skipped, and so are runs whose time, estimated from the method's
largest smaller cell measured in this run, exceeds ``--max-seconds`` (Flower's Krum
and Bulyan compute all pairwise distances: O(N^2 d) and more). Each skip says why.
Timed repeats stop early once a method has used ``--max-seconds``.

Writes a CSV (one row per cell and method) and a markdown report, prints both
tables, the targets in every cell where they were measured (``dstar / mean-stream``
<= 10, ``flwr-median / dstar`` >= 5, both from this run) and the headline check at
N = 50, d = 1e6.

Usage::

    python -m simulations.benchmarks.bench_aggregation             # the full grid (long)
    python -m simulations.benchmarks.bench_aggregation --quick     # N {10, 50} x d {1e5, 1e6}
    python -m simulations.benchmarks.bench_aggregation --sizes 50 --dims 1e6 \\
        --methods mean-stream,dstar
    python -m simulations.benchmarks.bench_aggregation --sizes 50 --dims 1e6,1e7 \\
        --methods mean-stream,dstar,dstar-torch --device cuda     # on a GPU
    python -m simulations.benchmarks.bench_aggregation --stages   # where DStar's time goes

``--stages`` times DStar's stages one by one instead (at N = 50, d = 1e6 unless
``--sizes`` and ``--dims`` say otherwise; best of ``--repeats``, runs interleaved)
and prints them beside the streaming mean; it writes no files.
"""

import argparse
import csv
import math
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

METHODS: tuple[str, ...] = (
    "mean-stream",
    "dstar",
    "flwr-mean",
    "flwr-median",
    "flwr-trimmed-mean",
    "flwr-krum",
    "flwr-multikrum",
    "flwr-bulyan",
)
OPTIONAL_METHODS: tuple[str, ...] = ("dstar-torch",)  # run only when named in --methods
FULL_SIZES: tuple[int, ...] = (10, 50, 100, 200)
FULL_DIMS: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
QUICK_SIZES: tuple[int, ...] = (10, 50)
QUICK_DIMS: tuple[int, ...] = (100_000, 1_000_000)
BYZANTINE_FRACTION = 0.2  # f = floor(0.2 N); also the trimmed mean's cut at each end
TARGET_CELL = (50, 1_000_000)
TARGET_DSTAR_OVER_MEAN = 10.0
TARGET_MEDIAN_OVER_DSTAR = 5.0
ITEM = 4  # bytes per float32
GIB = 1 << 30
MIB = 1 << 20
CSV_COLUMNS = (
    "N",
    "d",
    "method",
    "seconds",
    "peak_mib",
    "ratio_to_mean_stream",
    "ratio_to_dstar",
    "status",
    "f",
    "repeats",
)


def byzantine_bound(num_updates: int) -> int:
    """f for N updates: floor(0.2 N)."""
    return int(BYZANTINE_FRACTION * num_updates)


def method_bound(method: str, num_updates: int) -> int:
    """The f a method runs with: Bulyan's is capped so that N >= 4f + 3."""
    bound = byzantine_bound(num_updates)
    if method == "flwr-bulyan":
        return max(0, min(bound, (num_updates - 3) // 4))
    return bound


def _bulyan_selected(num_updates: int, bound: int) -> int:
    return num_updates - 2 * bound  # theta: models Bulyan selects with Krum


def input_bytes(num_updates: int, dimension: int) -> int:
    """Memory of one cell's inputs: N updates and the validation update (float32)."""
    return (num_updates + 1) * dimension * ITEM


def working_bytes(method: str, num_updates: int, dimension: int) -> int:
    """Estimated peak memory a method allocates on top of the inputs (bytes).

    From the implementations: Flower's median and trimmed mean stack the updates
    (N x d) and partition a copy; Krum flattens every update and stacks them; Bulyan
    then takes the median of, and an argpartition (int64) over, the selected theta.
    """
    vector = dimension * ITEM
    stacked = num_updates * vector
    bound = method_bound(method, num_updates)
    if method == "mean-stream":
        return vector
    if method == "dstar":
        return 3 * vector + num_updates * 4096
    if method == "dstar-torch":  # the median, a float64 sum, float64 blocks of 2**24 values
        return 3 * vector + 6 * (1 << 24) * 8
    if method == "flwr-mean":
        return stacked + 2 * vector
    if method in ("flwr-median", "flwr-trimmed-mean"):
        return 2 * stacked + 2 * vector
    if method == "flwr-krum":
        return 2 * stacked
    if method == "flwr-multikrum":
        return 2 * stacked + (num_updates - bound) * vector
    if method == "flwr-bulyan":
        return max(2 * stacked, 5 * _bulyan_selected(num_updates, bound) * vector)
    raise ValueError(f"unknown method {method!r}")


def work_units(method: str, num_updates: int, dimension: int) -> float:
    """How a method's time grows with N and d, to extrapolate from a smaller cell."""
    if method in ("flwr-krum", "flwr-multikrum"):
        return float(num_updates) ** 2 * dimension
    if method == "flwr-bulyan":
        bound = method_bound(method, num_updates)
        theta = _bulyan_selected(num_updates, bound)
        pairs = sum(m * m for m in range(num_updates - theta + 1, num_updates + 1))
        return float(pairs) * dimension
    return float(num_updates) * dimension


@dataclass
class CellInputs:
    """The same random inputs for every method of one cell."""

    updates: list[np.ndarray]
    validation: np.ndarray
    num_examples: list[int]


def make_inputs(num_updates: int, dimension: int, seed: int) -> CellInputs:
    """N random float32 updates (1-D arrays), a validation update, example counts."""
    rng = np.random.default_rng([seed, num_updates, dimension])
    updates = [rng.standard_normal(dimension, dtype=np.float32) for _ in range(num_updates)]
    validation = rng.standard_normal(dimension, dtype=np.float32)
    num_examples = [int(count) for count in rng.integers(50, 150, size=num_updates)]
    return CellInputs(updates=updates, validation=validation, num_examples=num_examples)


def mean_stream(updates: Sequence[np.ndarray]) -> np.ndarray:
    """The plain mean in one pass: accumulate in place, then divide."""
    total = updates[0].copy()
    for update in updates[1:]:
        np.add(total, update, out=total)
    total /= len(updates)
    return total


def method_call(method: str, inputs: CellInputs, device: str = "cpu") -> Callable[[], Any]:
    """A zero-argument call of ``method`` on ``inputs`` (what is timed).

    ``dstar-torch`` copies the inputs to ``device`` here, before any timing.
    """
    from flwr.server.strategy import aggregate as flwr_aggregate

    from dstar_flwr import dstar_aggregate

    if method == "dstar-torch":
        return _torch_call(inputs, device)

    num_updates = len(inputs.updates)
    bound = method_bound(method, num_updates)
    results = [
        ([update], count) for update, count in zip(inputs.updates, inputs.num_examples, strict=True)
    ]
    calls: dict[str, Callable[[], Any]] = {
        "mean-stream": lambda: mean_stream(inputs.updates),
        "dstar": lambda: dstar_aggregate(
            inputs.updates,
            num_byzantine=bound,
            validation=inputs.validation,
            weights=inputs.num_examples,
        ),
        "flwr-mean": lambda: flwr_aggregate.aggregate(results),
        "flwr-median": lambda: flwr_aggregate.aggregate_median(results),
        "flwr-trimmed-mean": lambda: flwr_aggregate.aggregate_trimmed_avg(
            results, proportiontocut=BYZANTINE_FRACTION
        ),
        "flwr-krum": lambda: flwr_aggregate.aggregate_krum(results, num_malicious=bound, to_keep=0),
        "flwr-multikrum": lambda: flwr_aggregate.aggregate_krum(
            results, num_malicious=bound, to_keep=num_updates - bound
        ),
        # Bulyan pops from the list it is given: a fresh (shallow) copy every call.
        "flwr-bulyan": lambda: flwr_aggregate.aggregate_bulyan(
            list(results),
            num_malicious=bound,
            aggregation_rule=flwr_aggregate.aggregate_krum,
            to_keep=0,
        ),
    }
    return calls[method]


def _torch_call(inputs: CellInputs, device: str) -> Callable[[], Any]:
    """``dstar_aggregate`` on tensors already on ``device``; waits for the device."""
    import torch

    from dstar_flwr import dstar_aggregate

    updates = [torch.as_tensor(update, device=device) for update in inputs.updates]
    validation = torch.as_tensor(inputs.validation, device=device)
    bound = method_bound("dstar", len(updates))
    on_cuda = torch.device(device).type == "cuda"

    def call() -> Any:
        result = dstar_aggregate(
            updates, num_byzantine=bound, validation=validation, weights=inputs.num_examples
        )
        if on_cuda:
            torch.cuda.synchronize()
        return result

    return call


def device_peak(call: Callable[[], Any], device: str) -> tuple[int | None, float]:
    """Run ``call`` once: (torch's CUDA peak above the start, or None off CUDA; seconds)."""
    import torch

    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if on_cuda else 0
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - before if on_cuda else None
    del result
    return peak, seconds


def traced_peak(call: Callable[[], Any]) -> tuple[int, float]:
    """Run ``call`` once under tracemalloc: (peak bytes above the start, seconds)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return max(0, peak - before), seconds


def timed(call: Callable[[], Any], repeats: int, max_seconds: float) -> tuple[float, int]:
    """Best time of up to ``repeats`` runs; stops once ``max_seconds`` are used."""
    best = math.inf
    spent = 0.0
    runs = 0
    while runs < max(1, repeats):
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        del result
        best = min(best, seconds)
        spent += seconds
        runs += 1
        if spent > max_seconds:
            break
    return best, runs


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Row:
    """One (cell, method) result."""

    n: int
    d: int
    method: str
    f: int
    seconds: float | None = None
    peak_bytes: int | None = None
    repeats: int = 0
    status: str = "ok"
    ratio_to_mean_stream: float | None = None
    ratio_to_dstar: float | None = None

    def csv_record(self) -> dict[str, Any]:
        def number(value: float | None, digits: int) -> str:
            return "" if value is None else f"{value:.{digits}g}"

        return {
            "N": self.n,
            "d": self.d,
            "method": self.method,
            "seconds": number(self.seconds, 6),
            "peak_mib": "" if self.peak_bytes is None else f"{self.peak_bytes / MIB:.1f}",
            "ratio_to_mean_stream": number(self.ratio_to_mean_stream, 4),
            "ratio_to_dstar": number(self.ratio_to_dstar, 4),
            "status": self.status,
            "f": self.f,
            "repeats": self.repeats,
        }


@dataclass
class Estimator:
    """Per method, the largest cell measured so far, to extrapolate run times."""

    measured: dict[str, tuple[float, float, int, int]] = field(default_factory=dict)

    def record(self, method: str, n: int, d: int, seconds: float) -> None:
        units = work_units(method, n, d)
        if method not in self.measured or units >= self.measured[method][0]:
            self.measured[method] = (units, seconds, n, d)

    def estimate(self, method: str, n: int, d: int) -> tuple[float, str] | None:
        if method not in self.measured:
            return None
        units, seconds, base_n, base_d = self.measured[method]
        if units <= 0:
            return None
        return seconds * work_units(method, n, d) / units, f"N={base_n}, d={dim_text(base_d)}"


def memory_skip(method: str, n: int, d: int, budget: int) -> str | None:
    """Why a (cell, method) does not fit in ``budget`` bytes, or None if it does."""
    needed = input_bytes(n, d) + working_bytes(method, n, d)
    if needed > budget:
        return (
            f"skipped: needs ~{needed / GIB:.1f} GiB (inputs {input_bytes(n, d) / GIB:.1f} "
            f"+ working set), budget {budget / GIB:.1f} GiB"
        )
    return None


def dim_text(dimension: int) -> str:
    """``1e6`` for powers of ten, else the number."""
    exponent = round(math.log10(dimension)) if dimension > 0 else 0
    return f"1e{exponent}" if 10**exponent == dimension and exponent >= 3 else str(dimension)


def _dimension(text: str) -> int:
    value = float(text)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"dimension must be a positive integer, got {text!r}")
    return int(value)


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _dimension_list(text: str) -> list[int]:
    return [_dimension(part) for part in text.split(",") if part.strip()]


def _method_list(text: str) -> list[str]:
    methods = [part.strip() for part in text.split(",") if part.strip()]
    choices = (*METHODS, *OPTIONAL_METHODS)
    unknown = [m for m in methods if m not in choices]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; choose from {choices}")
    return methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small grid: N {10,50}, d {1e5,1e6}")
    parser.add_argument("--sizes", type=_int_list, help="N values, e.g. 10,50 (default: full)")
    parser.add_argument("--dims", type=_dimension_list, help="d values, e.g. 1e5,1e6")
    parser.add_argument(
        "--methods",
        type=_method_list,
        default=list(METHODS),
        help=f"comma-separated subset; also {', '.join(OPTIONAL_METHODS)} (default: the rest)",
    )
    parser.add_argument(
        "--device", default="cpu", help="dstar-torch's torch device, e.g. cuda (default: cpu)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="skip a method where one run is estimated to take longer, and stop its "
        "repeats once it used this much (default 60; 10 with --quick)",
    )
    parser.add_argument(
        "--budget-gib", type=float, default=16.0, help="memory budget for inputs + working set"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=Path("results/bench-aggregation.csv"))
    parser.add_argument("--markdown", type=Path, default=Path("results/bench-aggregation.md"))
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument(
        "--stages", action="store_true", help="time DStar's stages instead (writes no files)"
    )
    return parser


def _warm_up(methods: Sequence[str], device: str) -> None:
    """Load (or compile) DStar's kernels, and start torch's device, outside every measurement."""
    from dstar_flwr import dstar_aggregate

    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(1 << 16, dtype=np.float32) for _ in range(5)]
    dstar_aggregate(updates, num_byzantine=1, validation=updates[0], weights=[1] * 5)
    if "dstar-torch" in methods:
        inputs = CellInputs(updates=updates, validation=updates[0], num_examples=[1] * 5)
        _torch_call(inputs, device)()


def run_grid(
    sizes: Sequence[int],
    dims: Sequence[int],
    methods: Sequence[str],
    *,
    repeats: int,
    max_seconds: float,
    budget: int,
    seed: int,
    progress: bool = True,
    device: str = "cpu",
) -> list[Row]:
    """Measure every (cell, method); cells in order of size, so estimates exist."""
    cells = sorted(
        ((n, d) for n in sizes for d in dims), key=lambda cell: (cell[0] * cell[1], cell)
    )
    estimator = Estimator()
    rows: list[Row] = []
    bar = tqdm(
        total=len(cells) * len(methods), desc="aggregation", unit="run", disable=not progress
    )
    for n, d in cells:
        plan: dict[str, str | None] = {}
        for method in methods:
            reason = memory_skip(method, n, d, budget)
            if reason is None:
                estimate = estimator.estimate(method, n, d)
                if estimate is not None and estimate[0] > max_seconds:
                    reason = (
                        f"skipped: estimated ~{estimate[0]:.3g} s per run > --max-seconds "
                        f"{max_seconds:g} (scaled from {estimate[1]})"
                    )
            plan[method] = reason
        inputs = make_inputs(n, d, seed) if any(r is None for r in plan.values()) else None
        cell_rows: dict[str, Row] = {}
        for method in methods:
            row = Row(n=n, d=d, method=method, f=method_bound(method, n))
            bar.set_postfix_str(f"N={n} d={dim_text(d)} {method}")
            reason = plan[method]
            if reason is None and inputs is not None:
                free = available_bytes()
                need = working_bytes(method, n, d)
                if free is not None and need > free - GIB:
                    reason = (
                        f"skipped: needs ~{need / GIB:.1f} GiB more, "
                        f"{free / GIB:.1f} GiB available now"
                    )
            if reason is not None:
                row.status = reason
            else:
                assert inputs is not None
                try:
                    call = method_call(method, inputs, device)
                    if method == "dstar-torch":
                        row.peak_bytes, first = device_peak(call, device)
                    else:
                        row.peak_bytes, first = traced_peak(call)
                    budget_left = max(max_seconds - first, 0.0)
                    row.seconds, row.repeats = timed(call, repeats, budget_left)
                    estimator.record(method, n, d, row.seconds)
                except Exception as error:  # noqa: BLE001 - one method's failure is a row
                    row.status = f"error: {type(error).__name__}: {error}"
            cell_rows[method] = row
            rows.append(row)
            bar.update(1)
            tqdm.write(_row_line(row))
        floor = cell_rows.get("mean-stream")
        dstar = cell_rows.get("dstar")
        for row in cell_rows.values():
            if row.seconds is None:
                continue
            if floor is not None and floor.seconds:
                row.ratio_to_mean_stream = row.seconds / floor.seconds
            if dstar is not None and dstar.seconds:
                row.ratio_to_dstar = row.seconds / dstar.seconds
        del inputs
    bar.close()
    rows.sort(key=lambda row: (row.n, row.d, methods.index(row.method)))
    return rows


def _row_line(row: Row) -> str:
    if row.seconds is None:
        return f"N={row.n:<4d} d={dim_text(row.d):<8s} {row.method:<18s} {row.status}"
    peak = "n/a" if row.peak_bytes is None else f"{row.peak_bytes / MIB:.1f} MiB"
    return (
        f"N={row.n:<4d} d={dim_text(row.d):<8s} {row.method:<18s} {row.seconds:10.4f} s "
        f"(best of {row.repeats})  peak {peak:>13s}"
    )


def _cell_text(row: Row) -> str:
    if row.seconds is None:
        return "skipped" if row.status.startswith("skipped") else "error"
    ratio = "" if row.ratio_to_dstar is None else f" ({row.ratio_to_dstar:.3g}x)"
    return f"{_seconds_text(row.seconds)}{ratio}"


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 0.1 else f"{seconds * 1000:.3g} ms"


def markdown_report(rows: Sequence[Row], methods: Sequence[str], header: Sequence[str]) -> str:
    """Two tables: time per cell and method (x dstar), and every row in full."""
    lines = [*header, "", "### Time per run (best of the repeats; in brackets: x dstar)", ""]
    lines.append("| N | d | " + " | ".join(methods) + " |")
    lines.append("|---|---|" + "---|" * len(methods))
    cells = sorted({(row.n, row.d) for row in rows})
    by_key = {(row.n, row.d, row.method): row for row in rows}
    for n, d in cells:
        texts = [_cell_text(by_key[(n, d, m)]) if (n, d, m) in by_key else "" for m in methods]
        lines.append(f"| {n} | {dim_text(d)} | " + " | ".join(texts) + " |")
    lines += [
        "",
        "### All rows",
        "",
        "| N | d | method | f | seconds | repeats | peak MiB | x mean-stream | x dstar | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        record = row.csv_record()
        lines.append(
            f"| {row.n} | {dim_text(row.d)} | {row.method} | {row.f} | {record['seconds']} | "
            f"{row.repeats} | {record['peak_mib']} | {record['ratio_to_mean_stream']} | "
            f"{record['ratio_to_dstar']} | {row.status} |"
        )
    return "\n".join(lines) + "\n"


def _no_work(chunk: int, start: int, stop: int) -> None:
    del chunk, start, stop


def stage_calls(inputs: CellInputs) -> dict[str, Callable[[], Any]]:
    """DStar's stages on one cell's inputs, each a zero-argument call (``--stages``).

    The whole call is the benchmark's (anchored, with the validation update and
    weights); its stages are the checks, the measuring pass (reference,
    deviations, norms and the fused weighted mean), the second pass it takes only
    when an update is rejected, and the thread pool's dispatch of the chunks
    with no work. The paper's variant adds a median network to the pass.
    """
    from dstar_flwr import aggregation, dstar_aggregate

    num_updates, dimension = len(inputs.updates), len(inputs.validation)
    rows = aggregation.host_rows(inputs.updates, inputs.validation)
    weights = np.asarray(inputs.num_examples, dtype=np.float64)
    weights /= weights.sum()
    everyone = list(range(num_updates))
    bounds = aggregation._chunk_bounds(dimension, num_updates + 1)
    return {
        "mean-stream": lambda: mean_stream(inputs.updates),
        "dstar: the whole call": method_call("dstar", inputs),
        "- checks and conversions": lambda: aggregation.host_rows(
            inputs.updates, inputs.validation
        ),
        "- pass: reference, deviations, norms, mean": lambda: rows.measure([num_updates], weights),
        "- the same pass without the mean": lambda: rows.measure([num_updates], None),
        "- second pass (only when one is rejected)": lambda: rows.weighted_mean(everyone, weights),
        "- threads: dispatch of the chunks, no work": lambda: aggregation._run_chunks(
            _no_work, bounds, 1 << 40
        ),
        "dstar variant=paper: the whole call": lambda: dstar_aggregate(
            inputs.updates,
            num_byzantine=method_bound("dstar", num_updates),
            validation=inputs.validation,
            weights=inputs.num_examples,
            variant="paper",
        ),
        "- pass: median of N + 1, deviations, norms": lambda: rows.measure(
            [*everyone, num_updates], None
        ),
    }


def stage_lines(inputs: CellInputs, repeats: int) -> list[str]:
    """A markdown table of ``stage_calls``' best times (runs interleaved) and x mean-stream."""
    calls = stage_calls(inputs)
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, math.inf)
    for _ in range(max(1, repeats)):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    floor = best["mean-stream"]
    lines = ["| stage | time | x mean-stream |", "|---|---|---|"]
    lines += [f"| {name} | {_seconds_text(t)} | {t / floor:.2f} |" for name, t in best.items()]
    return lines


def target_lines(rows: Sequence[Row]) -> list[str]:
    """The issue's target check at N = 50, d = 1e6, from this run's rows."""
    n, d = TARGET_CELL
    by_method = {row.method: row for row in rows if (row.n, row.d) == (n, d)}
    floor, dstar, median = (by_method.get(m) for m in ("mean-stream", "dstar", "flwr-median"))
    lines = [f"Target check at N={n}, d={dim_text(d)} (float32 1-D arrays, this run):"]
    if dstar is None or dstar.seconds is None:
        return [*lines, "  not measured: the cell or dstar is not in this run"]
    if floor is not None and floor.seconds:
        ratio = dstar.seconds / floor.seconds
        verdict = "met" if ratio <= TARGET_DSTAR_OVER_MEAN else "MISSED"
        lines.append(
            f"  dstar / mean-stream = {ratio:.2f} (target <= {TARGET_DSTAR_OVER_MEAN:g}): "
            f"{verdict}  [{_seconds_text(dstar.seconds)} / {_seconds_text(floor.seconds)}]"
        )
    else:
        lines.append("  dstar / mean-stream: mean-stream not measured")
    if median is not None and median.seconds:
        ratio = median.seconds / dstar.seconds
        verdict = "met" if ratio >= TARGET_MEDIAN_OVER_DSTAR else "MISSED"
        lines.append(
            f"  flwr-median / dstar = {ratio:.2f} (target >= {TARGET_MEDIAN_OVER_DSTAR:g}): "
            f"{verdict}  [{_seconds_text(median.seconds)} / {_seconds_text(dstar.seconds)}]"
        )
    else:
        lines.append("  flwr-median / dstar: flwr-median not measured")
    return lines


def _ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    if numerator is None or denominator is None or not numerator.seconds:
        return None
    return numerator.seconds / denominator.seconds if denominator.seconds else None


def _verdict(ratio: float | None, met: bool) -> str:
    if ratio is None:
        return "not measured"
    return f"{ratio:.2f} {'met' if met else 'MISSED'}"


def target_table(rows: Sequence[Row]) -> list[str]:
    """Both targets in every cell where dstar was measured, and in how many they hold."""
    by_key = {(row.n, row.d, row.method): row for row in rows}
    cells = sorted({(r.n, r.d) for r in rows if r.method == "dstar" and r.seconds})
    lines = [
        "### Targets in every cell (this run)",
        "",
        f"| N | d | dstar / mean-stream (target <= {TARGET_DSTAR_OVER_MEAN:g}) "
        f"| flwr-median / dstar (target >= {TARGET_MEDIAN_OVER_DSTAR:g}) |",
        "|---|---|---|---|",
    ]
    over_mean: list[tuple[float, int, int]] = []
    over_dstar: list[tuple[float, int, int]] = []
    for n, d in cells:
        dstar = by_key[(n, d, "dstar")]
        slowdown = _ratio(dstar, by_key.get((n, d, "mean-stream")))
        speedup = _ratio(by_key.get((n, d, "flwr-median")), dstar)
        if slowdown is not None:
            over_mean.append((slowdown, n, d))
        if speedup is not None:
            over_dstar.append((speedup, n, d))
        first = _verdict(slowdown, slowdown is not None and slowdown <= TARGET_DSTAR_OVER_MEAN)
        second = _verdict(speedup, speedup is not None and speedup >= TARGET_MEDIAN_OVER_DSTAR)
        lines.append(f"| {n} | {dim_text(d)} | {first} | {second} |")
    lines.append("")
    if over_mean:
        met = sum(ratio <= TARGET_DSTAR_OVER_MEAN for ratio, _, _ in over_mean)
        worst, n, d = max(over_mean)
        lines.append(
            f"- dstar / mean-stream <= {TARGET_DSTAR_OVER_MEAN:g}: met in {met} of "
            f"{len(over_mean)} cells (largest {worst:.2f}, at N={n}, d={dim_text(d)})"
        )
    if over_dstar:
        met = sum(ratio >= TARGET_MEDIAN_OVER_DSTAR for ratio, _, _ in over_dstar)
        worst, n, d = min(over_dstar)
        lines.append(
            f"- flwr-median / dstar >= {TARGET_MEDIAN_OVER_DSTAR:g}: met in {met} of "
            f"{len(over_dstar)} cells where flwr-median ran (smallest {worst:.2f}, "
            f"at N={n}, d={dim_text(d)})"
        )
    return lines


def _cpu_text() -> str:
    """The CPU's model and widest vector extension, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return platform.processor() or "cpu"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        "cpu",
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({vector})"


def _load_text() -> str:
    try:
        return " / ".join(f"{load:.1f}" for load in os.getloadavg())
    except OSError:  # pragma: no cover - not available
        return "unknown"


def _torch_text(device: str) -> str:
    import torch

    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "CPU"
    return f"torch {torch.__version__} on {device} ({name})"


def _versions() -> str:
    import flwr

    try:
        import numba

        numba_version = numba.__version__
    except ImportError:  # pragma: no cover
        numba_version = "absent"
    return (
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"flwr {flwr.__version__}, numba {numba_version}"
    )


def _print_stages(sizes: Sequence[int], dims: Sequence[int], args: argparse.Namespace) -> int:
    _warm_up(["dstar"], args.device)
    print(f"machine: {platform.machine()}, {_cpu_text()}; {_versions()}")
    for n, d in ((n, d) for n in sizes for d in dims):
        print(
            f"\nN={n}, d={dim_text(d)}, float32, best of {args.repeats} "
            f"(load average {_load_text()} at the start):\n"
        )
        print("\n".join(stage_lines(make_inputs(n, d, args.seed), args.repeats)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stages:
        return _print_stages(args.sizes or [TARGET_CELL[0]], args.dims or [TARGET_CELL[1]], args)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    dims = args.dims or (QUICK_DIMS if args.quick else FULL_DIMS)
    max_seconds = (
        args.max_seconds if args.max_seconds is not None else (10.0 if args.quick else 60.0)
    )
    budget = int(args.budget_gib * GIB)
    free = available_bytes()
    if free is not None and free - GIB < budget:
        budget = max(free - GIB, 0)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    argv_text = sys.argv[1:] if argv is None else argv
    header = [
        "## Aggregation cost",
        "",
        f"- machine: {platform.machine()}, {cores} cores, {_cpu_text()}; {_versions()}; "
        f"load average {_load_text()} at the start",
        f"- command: python -m simulations.benchmarks.bench_aggregation {' '.join(argv_text)}",
        f"- grid: N {list(sizes)} x d {[dim_text(d) for d in dims]}; float32 updates as a list "
        "of 1-D arrays, one seed per cell",
        f"- f = floor({BYZANTINE_FRACTION} N) (Bulyan: min(f, (N - 3) // 4)); trimmed mean "
        f"cuts {BYZANTINE_FRACTION} at each end; MultiKrum keeps N - f",
        f"- time: best of {args.repeats} runs (fewer once a method used {max_seconds:g} s); "
        "peak: tracemalloc, one extra run",
        f"- memory budget: {budget / GIB:.1f} GiB (--budget-gib {args.budget_gib:g}, capped "
        "at available memory - 1 GiB)",
    ]
    if "dstar-torch" in args.methods:
        header.append(f"- dstar-torch: {_torch_text(args.device)}")
    print("\n".join(header), flush=True)
    _warm_up(args.methods, args.device)
    rows = run_grid(
        sizes,
        dims,
        args.methods,
        repeats=args.repeats,
        max_seconds=max_seconds,
        budget=budget,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
    )
    report = markdown_report(rows, args.methods, header)
    targets = ["", *target_table(rows), "", *target_lines(rows)]
    skipped = [row for row in rows if row.seconds is None]
    notes = ["", "### Skipped or failed", ""]
    notes += [f"- N={r.n}, d={dim_text(r.d)}, {r.method}: {r.status}" for r in skipped] or [
        "- none"
    ]
    report += "\n".join(notes) + "\n" + "\n".join(targets) + "\n"

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(row.csv_record() for row in rows)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(report, encoding="utf-8")
    print()
    print(report[len("\n".join(header)) :].strip("\n"))
    print(f"\nWrote {args.csv} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared timing helpers for the side-by-side benchmark scripts (they print, never assert)."""

import os
import statistics
import sys
import time

# Benchmarks compare against torch twins that live with the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jinterp import progress  # noqa: E402  (a bar per timing loop, on a terminal only)


def add_torch_threads(parser) -> None:
    """``--torch-threads N``: torch's intra-op threads (0 keeps torch's default, one per core). On a
    machine loaded by other processes torch's OpenMP barriers stall (2-core VM, one core busy: ResNet18
    at 64 px 106 ms/img with 2 threads, 3.9 with 1), so there 1 gives torch its best time."""
    parser.add_argument("--torch-threads", type=int, default=0, help="torch threads (0: torch's default)")


def set_torch_threads(n: int) -> None:
    """Apply ``--torch-threads`` (0: leave torch's default)."""
    import torch

    if n > 0:
        torch.set_num_threads(n)


def median_time(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds; ``fn`` must block until its result is ready."""
    times = []
    for _ in progress.bar(range(repeats), desc="timing", unit="call"):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_times(fns: dict, repeats: int = 5) -> dict[str, list[float]]:
    """Wall times in seconds of each ``fns[name]()`` over ``repeats`` rounds, the calls interleaved
    (a, b, a, b, ...) so load from other processes drifts over every side alike; each ``fn`` must
    block until its result is ready and should be warmed up (compiled) already."""
    times = {name: [] for name in fns}
    for _ in progress.bar(range(repeats), desc=" / ".join(fns), unit="round"):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (same-round pairs of alternating_times)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def print_table(header: list[str], rows: list[list], file=sys.stdout) -> None:
    """Print a Markdown table."""
    print("| " + " | ".join(header) + " |", file=file)
    print("|" + "|".join("---" for _ in header) + "|", file=file)
    for row in rows:
        cells = [f"{c:.3g}" if isinstance(c, float) else str(c) for c in row]
        print("| " + " | ".join(cells) + " |", file=file)

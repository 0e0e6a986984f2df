"""Shared timing helpers for the side-by-side benchmark scripts (they print, never assert)."""

import os
import statistics
import sys
import time

# Benchmarks compare against torch twins that live with the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_time(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds; ``fn`` must block until its result is ready."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(header: list[str], rows: list[list], file=sys.stdout) -> None:
    """Print a Markdown table."""
    print("| " + " | ".join(header) + " |", file=file)
    print("|" + "|".join("---" for _ in header) + "|", file=file)
    for row in rows:
        cells = [f"{c:.3g}" if isinstance(c, float) else str(c) for c in row]
        print("| " + " | ".join(cells) + " |", file=file)

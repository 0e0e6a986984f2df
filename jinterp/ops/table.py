"""Markdown tables: the one writer every report, sweep and protocol table goes through."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Format = str | Callable[[Any], str] | None


def format_cell(value: Any, fmt: Format = None, missing: str = "–") -> str:
    """One cell: ``missing`` for None / NaN, floats by ``fmt`` (a format spec, default ``".3f"``),
    anything else by ``str``; a callable ``fmt`` formats every non-missing value itself."""
    is_float = isinstance(value, (float, np.floating))
    if value is None or (is_float and np.isnan(value)):
        return missing
    if callable(fmt):
        return fmt(value)
    return format(float(value), fmt or ".3f") if is_float else str(value)


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: Format | Sequence[Format] = None,
    missing: str = "–",
) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline).

    Args:
      header: column titles.
      rows: one sequence of cells per row, as long as ``header``.
      fmt: how floats are written: a format spec (``".4f"``), a callable ``value -> str``, or one of
        those per column (None entries: the default ``".3f"``).
      missing: the text of None and NaN cells.

    Example::

      >>> print(markdown_table(["model", "acc"], [["cnn", 0.91234], ["hic", None]]))
      | model | acc |
      |---|---|
      | cnn | 0.912 |
      | hic | – |
    """
    header = [str(h) for h in header]
    per_column = isinstance(fmt, Sequence) and not isinstance(fmt, str)
    if per_column and len(fmt) != len(header):
        raise ValueError(f"fmt: expected one format per column ({len(header)}), got {len(fmt)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"rows[{i}]: expected {len(header)} cells (as header), got {len(row)}")
        fmts = fmt if per_column else [fmt] * len(row)
        lines.append(
            "| " + " | ".join(format_cell(v, f, missing) for v, f in zip(row, fmts, strict=True)) + " |"
        )
    return "\n".join(lines)

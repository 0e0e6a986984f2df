"""Shared numerics with no domain (clustering, first principal component, resize, spec strings) and
the Markdown table writer."""

from jinterp.ops import blur, clustering, principal, resize, spec
from jinterp.ops.table import format_cell, markdown_table

__all__ = ["blur", "clustering", "format_cell", "markdown_table", "principal", "resize", "spec"]

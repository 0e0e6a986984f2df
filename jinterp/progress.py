"""Progress bars (tqdm) for the long loops: training, evaluation, concept extraction, CLAM fitting,
sweeps, benchmarks.

A bar draws on standard error only when it is a terminal, so logs, CI and captured output stay the
plain progress lines they were. ``JINTERP_PROGRESS=1`` forces bars on (e.g. in a notebook, whose
stderr is not a TTY but renders them), ``JINTERP_PROGRESS=0`` turns them off everywhere. Lines that
share the terminal with a bar go through :func:`write`, which redraws the bar below them.
"""

import os
import sys

from tqdm import tqdm

ENV = "JINTERP_PROGRESS"


def enabled(stream=None) -> bool:
    """Whether bars draw: ``$JINTERP_PROGRESS`` (``0`` / ``1``) if set, else whether ``stream``
    (default ``sys.stderr``) is a terminal."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"${ENV}: expected 0 or 1, got {forced!r}")
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(
    iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0, file=None
):
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``) on ``file`` (default
    ``sys.stderr``), drawn only when :func:`enabled` for it; otherwise the same object, silent, so
    callers never branch. It clears itself when done."""
    file = sys.stderr if file is None else file
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, initial=initial, leave=False,
        disable=not enabled(file), file=file, dynamic_ncols=True,
    )  # fmt: skip


def write(text: str, file=None) -> None:
    """Print one line to ``file`` (default ``sys.stderr``) above any bar that is drawing."""
    file = sys.stderr if file is None else file
    if enabled(file):
        tqdm.write(text, file=file)
    else:
        print(text, file=file, flush=True)
